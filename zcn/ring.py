"""zcn.Ring: one io_uring instance, as Python sees it.

    import zcn
    with zcn.Ring(entries=256) as ring:
        ring.nop(1000, batch=32)
        print(ring.setup_flag_names(), ring.opcode_supported("SEND_ZC"))

Python cannot call liburing's inline helpers, so the ring is driven from C;
what Python gets is the ring's shape (sizes, flags, features, supported
opcodes) and ``nop()`` to test and benchmark the submit/complete path.
A Ring belongs to the thread that created it (the kernel enforces this
when the ring got IORING_SETUP_SINGLE_ISSUER).
"""
from __future__ import annotations

import enum
import threading

from . import _ffi
from ._util import HandleOwner
from ._util import int_arg as _int_arg

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from typing import Set, Type, Union

__all__ = ["Ring", "Opcode", "SetupFlag", "Feature", "NO_TUNING", "SQPOLL",
           "ENTRIES_MAX"]

#: zcn_ring_create flags (our own bits, not IORING_SETUP_*).
NO_TUNING = _ffi.RING_NO_TUNING
SQPOLL = _ffi.RING_SQPOLL
_KNOWN_FLAGS = NO_TUNING | SQPOLL

#: The kernel's SQ size limit (IORING_MAX_ENTRIES).
ENTRIES_MAX = 32768
_UINT32_MAX = 0xFFFFFFFF
_UINT64_MAX = 0xFFFFFFFFFFFFFFFF
_nop = _ffi.zcn_ring_nop  # module-level: one lookup less per nop() call


class Opcode(enum.IntEnum):
    """IORING_OP_* as numbered by Linux 6.18 (include/uapi/linux/io_uring.h)."""
    NOP = 0
    READV = 1
    WRITEV = 2
    FSYNC = 3
    READ_FIXED = 4
    WRITE_FIXED = 5
    POLL_ADD = 6
    POLL_REMOVE = 7
    SYNC_FILE_RANGE = 8
    SENDMSG = 9
    RECVMSG = 10
    TIMEOUT = 11
    TIMEOUT_REMOVE = 12
    ACCEPT = 13
    ASYNC_CANCEL = 14
    LINK_TIMEOUT = 15
    CONNECT = 16
    FALLOCATE = 17
    OPENAT = 18
    CLOSE = 19
    FILES_UPDATE = 20
    STATX = 21
    READ = 22
    WRITE = 23
    FADVISE = 24
    MADVISE = 25
    SEND = 26
    RECV = 27
    OPENAT2 = 28
    EPOLL_CTL = 29
    SPLICE = 30
    PROVIDE_BUFFERS = 31
    REMOVE_BUFFERS = 32
    TEE = 33
    SHUTDOWN = 34
    RENAMEAT = 35
    UNLINKAT = 36
    MKDIRAT = 37
    SYMLINKAT = 38
    LINKAT = 39
    MSG_RING = 40
    FSETXATTR = 41
    SETXATTR = 42
    FGETXATTR = 43
    GETXATTR = 44
    SOCKET = 45
    URING_CMD = 46
    SEND_ZC = 47
    SENDMSG_ZC = 48
    READ_MULTISHOT = 49
    WAITID = 50
    FUTEX_WAIT = 51
    FUTEX_WAKE = 52
    FUTEX_WAITV = 53
    FIXED_FD_INSTALL = 54
    FTRUNCATE = 55
    BIND = 56
    LISTEN = 57
    RECV_ZC = 58
    EPOLL_WAIT = 59
    READV_FIXED = 60
    WRITEV_FIXED = 61
    PIPE = 62


class SetupFlag(enum.IntFlag):
    """IORING_SETUP_* bits (Linux 6.18)."""
    IOPOLL = 1 << 0
    SQPOLL = 1 << 1
    SQ_AFF = 1 << 2
    CQSIZE = 1 << 3
    CLAMP = 1 << 4
    ATTACH_WQ = 1 << 5
    R_DISABLED = 1 << 6
    SUBMIT_ALL = 1 << 7
    COOP_TASKRUN = 1 << 8
    TASKRUN_FLAG = 1 << 9
    SQE128 = 1 << 10
    CQE32 = 1 << 11
    SINGLE_ISSUER = 1 << 12
    DEFER_TASKRUN = 1 << 13
    NO_MMAP = 1 << 14
    REGISTERED_FD_ONLY = 1 << 15
    NO_SQARRAY = 1 << 16
    HYBRID_IOPOLL = 1 << 17
    CQE_MIXED = 1 << 18


class Feature(enum.IntFlag):
    """IORING_FEAT_* bits (Linux 6.18)."""
    SINGLE_MMAP = 1 << 0
    NODROP = 1 << 1
    SUBMIT_STABLE = 1 << 2
    RW_CUR_POS = 1 << 3
    CUR_PERSONALITY = 1 << 4
    FAST_POLL = 1 << 5
    POLL_32BITS = 1 << 6
    SQPOLL_NONFIXED = 1 << 7
    EXT_ARG = 1 << 8
    NATIVE_WORKERS = 1 << 9
    RSRC_TAGS = 1 << 10
    CQE_SKIP = 1 << 11
    LINKED_FILE = 1 << 12
    REG_REG_RING = 1 << 13
    RECVSEND_BUNDLE = 1 << 14
    MIN_TIMEOUT = 1 << 15
    RW_ATTR = 1 << 16
    NO_IOWAIT = 1 << 17


def _names(enum_cls: Type[enum.IntFlag], value: int) -> Set[str]:
    """Names of the bits of `value`; bits newer than this table show as BIT<n>."""
    names: Set[str] = set()
    for bit in range(32):
        if value & (1 << bit):
            # Python 3.11+ gives a pseudo-member named None for a bit the
            # table lacks, older ones raise ValueError: BIT<n> either way.
            try:
                name = enum_cls(1 << bit).name
            except ValueError:
                name = None
            names.add(name if name is not None else f"BIT{bit}")
    return names


class Ring(HandleOwner):
    """One io_uring instance.

    ``entries`` (1..32768) is the SQ size, rounded up to a power of two by the
    kernel; the CQ is twice that. ``flags`` is 0, ``zcn.ring.NO_TUNING`` (no
    SINGLE_ISSUER/DEFER_TASKRUN/COOP_TASKRUN) and/or ``zcn.ring.SQPOLL``.

    Raises ``zcn.IoUringUnavailableError`` (a subclass per cause, with the
    reason in the message) when io_uring cannot be used here.
    """

    _kind = "zcn.Ring"

    def __init__(self, entries: int = 256, flags: int = 0) -> None:
        entries = _int_arg(entries, "entries", 1, ENTRIES_MAX)
        flags = _int_arg(flags, "flags")
        if flags & ~_KNOWN_FLAGS or flags < 0:
            raise ValueError(f"unknown Ring flags {flags:#x} (known: NO_TUNING=1, SQPOLL=2)")
        self._lock = threading.Lock()
        self._handle = _ffi.create(_ffi.zcn_ring_create, entries, flags)
        # Cached: nop() checks batch against it on every call.
        self._sq_entries = _ffi.zcn_ring_sq_entries(self._handle)

    # --- lifetime ---------------------------------------------------------
    def close(self) -> None:
        """Destroys the ring; pending requests are cancelled. Idempotent."""
        with self._lock:
            handle, self._handle = self._handle, None
        if handle:
            _ffi.zcn_ring_destroy(handle)

    def _finalize(self) -> None:
        if self._handle:  # also false when __init__ failed (the class default)
            self.close()

    def __repr__(self) -> str:
        if self._handle is None:
            return "<zcn.Ring closed>"
        return (f"<zcn.Ring sq_entries={self.sq_entries} cq_entries={self.cq_entries} "
                f"setup={'|'.join(sorted(self.setup_flag_names()))}>")

    # --- shape ------------------------------------------------------------
    @property
    def setup_flags(self) -> int:
        """The IORING_SETUP_* flags the ring was created with (int)."""
        return _ffi.zcn_ring_setup_flags(self._live())

    @property
    def features(self) -> int:
        """The IORING_FEAT_* bits the kernel reported (int)."""
        return _ffi.zcn_ring_features(self._live())

    @property
    def sq_entries(self) -> int:
        """The submission queue's size (entries rounded up to a power of two)."""
        return _ffi.zcn_ring_sq_entries(self._live())

    @property
    def cq_entries(self) -> int:
        """The completion queue's size."""
        return _ffi.zcn_ring_cq_entries(self._live())

    def setup_flag_names(self) -> Set[str]:
        """The setup flags as a set of names, e.g. {"SINGLE_ISSUER", ...}."""
        return _names(SetupFlag, self.setup_flags)

    def features_names(self) -> Set[str]:
        """The kernel's features as a set of names, e.g. {"NODROP", ...}."""
        return _names(Feature, self.features)

    def opcode_supported(self, op: Union[int, str]) -> bool:
        """True if the kernel supports the opcode: an int, an Opcode or a
        name such as "RECV" or "IORING_OP_SEND_ZC" (case-insensitive)."""
        handle = self._live()
        if isinstance(op, str):
            key = op.upper()
            if key.startswith("IORING_OP_"):
                key = key[len("IORING_OP_"):]
            try:
                op = Opcode[key]
            except KeyError:
                raise ValueError(f"unknown io_uring opcode name {op!r}") from None
        op = _int_arg(op, "op")
        if not 0 <= op <= 255:
            raise ValueError(f"opcode must be in 0..255, got {op}")
        return bool(_ffi.zcn_ring_opcode_supported(handle, op))

    # --- work -------------------------------------------------------------
    def nop(self, count: int = 1, batch: int = 1) -> None:
        """Submits `count` NOPs `batch` at a time (one io_uring_enter per
        batch) and waits for all of them. batch must be 1..sq_entries."""
        handle = self._handle
        # The fast path (plain ints in range, open ring) costs one check.
        if (type(count) is int and type(batch) is int and handle is not None
                and 0 <= count <= _UINT64_MAX and 1 <= batch <= self._sq_entries):
            _nop(handle, count, batch)
            return
        count = _int_arg(count, "count")
        batch = _int_arg(batch, "batch")
        if not 0 <= count <= _UINT64_MAX:
            raise ValueError(f"count must be >= 0, got {count}")
        handle = self._live()
        if not 1 <= batch <= self._sq_entries:
            raise ValueError(
                f"batch must be in 1..{self._sq_entries} (sq_entries), got {batch}")
        _nop(handle, count, batch)
