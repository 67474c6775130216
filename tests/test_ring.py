"""zcn.Ring through Python: shape, NOPs, bad input, closed rings, io_uring
made unavailable by a seccomp filter, and a leak check."""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap

import pytest

import zcn
from zcn.ring import ENTRIES_MAX, NO_TUNING, SQPOLL, Opcode


def _io_uring_unavailable_reason():
    try:
        zcn.Ring(8).close()
    except zcn.IoUringUnavailableError as exc:
        return str(exc)
    return None


_REASON = _io_uring_unavailable_reason()
needs_uring = pytest.mark.skipif(_REASON is not None,
                                 reason=f"io_uring unavailable: {_REASON}")


@pytest.fixture
def ring():
    with zcn.Ring(64) as r:
        yield r


# --- shape ------------------------------------------------------------------

@needs_uring
def test_defaults():
    with zcn.Ring() as r:
        assert r.sq_entries == 256
        assert r.cq_entries == 512
        assert {"CQSIZE", "CLAMP"} <= r.setup_flag_names()
        assert "NODROP" in r.features_names()
        assert isinstance(r.setup_flags, int) and isinstance(r.features, int)
        assert "sq_entries=256" in repr(r)


@needs_uring
def test_entries_rounded_up_to_power_of_two():
    with zcn.Ring(100) as r:
        assert (r.sq_entries, r.cq_entries) == (128, 256)
    with zcn.Ring(1) as r:
        assert r.sq_entries == 1
    with zcn.Ring(ENTRIES_MAX) as r:
        assert (r.sq_entries, r.cq_entries) == (ENTRIES_MAX, 2 * ENTRIES_MAX)


@needs_uring
def test_tuned_flags_where_kernel_has_them():
    with zcn.Ring(8) as r:
        names = r.setup_flag_names()
        if "DEFER_TASKRUN" in names:
            assert "SINGLE_ISSUER" in names  # the kernel requires the pair
        # SEND_ZC and SINGLE_ISSUER both arrived in Linux 6.0.
        if r.opcode_supported("SEND_ZC"):
            assert "SINGLE_ISSUER" in names
            assert names & {"DEFER_TASKRUN", "COOP_TASKRUN"}


@needs_uring
def test_no_tuning():
    with zcn.Ring(8, flags=NO_TUNING) as r:
        assert not r.setup_flag_names() & {"SINGLE_ISSUER", "DEFER_TASKRUN",
                                            "COOP_TASKRUN", "TASKRUN_FLAG"}
        r.nop(10, batch=4)


@needs_uring
def test_sqpoll():
    try:
        r = zcn.Ring(8, flags=SQPOLL)
    except PermissionError as exc:  # kernels before 5.11 want CAP_SYS_NICE
        pytest.skip(f"SQPOLL not allowed: {exc}")
    with r:
        assert "SQPOLL" in r.setup_flag_names()
        # The kernel refuses the task-run flags together with SQPOLL.
        assert not r.setup_flag_names() & {"DEFER_TASKRUN", "COOP_TASKRUN"}
        r.nop(100, batch=8)


# --- NOPs -------------------------------------------------------------------

@needs_uring
def test_nop_single(ring):
    ring.nop()
    ring.nop(1)
    ring.nop(0)  # a no-op
    ring.nop(100, batch=1)


@needs_uring
def test_nop_batched(ring):
    ring.nop(10000, batch=32)
    ring.nop(1001, batch=64)  # short last batch, full SQ per batch
    ring.nop(3, batch=64)     # count < batch


@needs_uring
def test_nop_bad_args(ring):
    for batch in (0, -1, 65, 2 ** 40):
        with pytest.raises(ValueError):
            ring.nop(1, batch=batch)
    with pytest.raises(ValueError):
        ring.nop(-1)
    with pytest.raises(ValueError):
        ring.nop(2 ** 64)
    for bad in (None, 1.0, "1", True, b"1"):
        with pytest.raises(TypeError):
            ring.nop(bad)
        with pytest.raises(TypeError):
            ring.nop(1, batch=bad)
    ring.nop(1)  # still usable


# --- opcodes ----------------------------------------------------------------

@needs_uring
def test_opcode_supported_int_enum_and_name(ring):
    assert ring.opcode_supported(0) is True
    assert ring.opcode_supported(Opcode.NOP) is True
    for name in ("RECV", "recv", "IORING_OP_RECV", "SEND", "ACCEPT", "NOP"):
        assert ring.opcode_supported(name) is True, name
    assert ring.opcode_supported(255) is False


@needs_uring
def test_opcode_bad_input(ring):
    with pytest.raises(ValueError):
        ring.opcode_supported("NO_SUCH_OP")
    for bad in (-1, 256, 2 ** 40):
        with pytest.raises(ValueError):
            ring.opcode_supported(bad)
    for bad in (None, 1.5, b"RECV", True):
        with pytest.raises(TypeError):
            ring.opcode_supported(bad)


@needs_uring
def test_opcode_enum_matches_kernel(ring):
    """Opcode numbers follow the 6.18 uapi header; on kernels at least that
    new, every one of them is known to the probe (PIPE is the newest)."""
    assert Opcode.PIPE == 62 and Opcode.SEND_ZC == 47 and Opcode.RECV == 27
    assert len(Opcode) == 63 and [int(o) for o in Opcode] == list(range(63))
    if ring.opcode_supported(Opcode.PIPE):
        assert all(ring.opcode_supported(op) for op in (Opcode.BIND, Opcode.LISTEN))


# --- bad construction and closed rings --------------------------------------

@pytest.mark.parametrize("entries", [0, -1, ENTRIES_MAX + 1, 2 ** 32, 2 ** 80])
def test_bad_entries(entries):
    with pytest.raises(ValueError):
        zcn.Ring(entries)


@pytest.mark.parametrize("entries", [None, 8.0, "8", True, [8]])
def test_wrong_entries_type(entries):
    with pytest.raises(TypeError):
        zcn.Ring(entries)


@pytest.mark.parametrize("flags", [4, 1 << 31, -1])
def test_bad_flags(flags):
    with pytest.raises(ValueError):
        zcn.Ring(8, flags)


def test_wrong_flags_type():
    with pytest.raises(TypeError):
        zcn.Ring(8, None)
    with pytest.raises(TypeError):
        zcn.Ring(8, "SQPOLL")


@needs_uring
def test_close_idempotent_and_closed_use():
    r = zcn.Ring(8)
    assert not r.closed
    r.close()
    r.close()
    assert r.closed
    assert "closed" in repr(r)
    for use in (lambda: r.nop(), lambda: r.setup_flags, lambda: r.features,
                lambda: r.sq_entries, lambda: r.cq_entries,
                lambda: r.opcode_supported("NOP"), lambda: r.setup_flag_names(),
                lambda: r.features_names()):
        with pytest.raises(zcn.ClosedError):
            use()
    with pytest.raises(zcn.ClosedError):
        with r:
            pass


@needs_uring
def test_context_manager_closes():
    with zcn.Ring(8) as r:
        r.nop()
    assert r.closed
    with pytest.raises(zcn.ClosedError):
        r.nop()


# --- io_uring unavailable ---------------------------------------------------

# A child process installs a seccomp filter that makes io_uring_setup fail
# with the given errno (as container runtimes do) and reports what zcn says.
_SECCOMP_CHILD = textwrap.dedent("""
    import ctypes, struct, sys
    errno_value = int(sys.argv[1])
    libc = ctypes.CDLL(None, use_errno=True)
    def stmt(code, k): return struct.pack("HBBI", code, 0, 0, k)
    def jump(code, k, jt, jf): return struct.pack("HBBI", code, jt, jf, k)
    LD_W_ABS, JEQ_K, RET_K = 0x20, 0x15, 0x06
    prog = b"".join([
        stmt(LD_W_ABS, 4),                  # seccomp_data.arch
        jump(JEQ_K, 0xC000003E, 0, 3),      # AUDIT_ARCH_X86_64 else allow
        stmt(LD_W_ABS, 0),                  # seccomp_data.nr
        jump(JEQ_K, 425, 0, 1),             # __NR_io_uring_setup
        stmt(RET_K, 0x00050000 | errno_value),  # SECCOMP_RET_ERRNO
        stmt(RET_K, 0x7FFF0000),            # SECCOMP_RET_ALLOW
    ])
    buf = ctypes.create_string_buffer(prog)
    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = SockFprog(len(prog) // 8, ctypes.addressof(buf))
    PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        print("SKIP no_new_privs"); sys.exit(0)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        print("SKIP seccomp"); sys.exit(0)
    import zcn
    try:
        zcn.Ring(8)
    except zcn.IoUringUnavailableError as exc:
        print(type(exc).__name__, "|", exc)
    else:
        print("CREATED")
""")


def _run_blocked(errno_value):
    if os.uname().machine != "x86_64":
        pytest.skip("the seccomp filter here is written for x86_64")
    out = subprocess.run([sys.executable, "-c", _SECCOMP_CHILD, str(errno_value)],
                         capture_output=True, text=True, timeout=60, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    if line.startswith("SKIP"):
        pytest.skip(f"cannot install a seccomp filter: {line}")
    return line


@needs_uring
def test_blocked_by_seccomp_names_the_cause():
    line = _run_blocked(1)  # EPERM, what Docker's default profile returns
    assert line.startswith("IoUringBlockedError |"), line
    assert "seccomp" in line


@needs_uring
def test_no_io_uring_in_kernel():
    line = _run_blocked(38)  # ENOSYS
    assert line.startswith("IoUringUnsupportedError |"), line
    assert "ENOSYS" in line


# --- leaks ------------------------------------------------------------------

@needs_uring
def test_no_fd_or_memory_leak_over_create_destroy_cycles():
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process()

    def cycle(n):
        for _ in range(n):
            with zcn.Ring(256) as r:
                r.nop(4, batch=4)
        gc.collect()

    cycle(200)  # warm-up: allocator arenas, ctypes caches
    fds_before, rss_before = proc.num_fds(), proc.memory_info().rss
    cycle(1000)
    fds_after, rss_after = proc.num_fds(), proc.memory_info().rss
    assert fds_after == fds_before
    # A leaked ring would keep its SQ/CQ mappings (tens of KiB each):
    # 1000 of them would be tens of MiB.
    assert rss_after - rss_before < 4 * 1024 * 1024, (rss_before, rss_after)


def test_bit_names_of_bits_newer_than_the_table():
    # A kernel bit the enum lacks is named BIT<n>, never None: on Python
    # 3.11+ IntFlag(unknown bit) is a pseudo-member whose name is None,
    # which made sorted(ring.features_names()) raise TypeError.
    from zcn.ring import _names
    import enum

    class Two(enum.IntFlag):
        A = 1
        B = 2

    assert _names(Two, 1 | 2 | (1 << 30)) == {"A", "B", "BIT30"}
    assert sorted(_names(Two, 1 << 31)) == ["BIT31"]
