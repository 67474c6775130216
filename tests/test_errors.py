"""The Python error model (docs/ERRORS.md): every zcn exception is also the
standard exception a Python user would catch for the same condition, keeps
.code/.detail/str() and a fixed errno where it is an OSError, survives
pickling (multiprocessing), and error_from_code maps every library code to
its class while errno values stay plain OSError subclasses."""
from __future__ import annotations

import copy
import errno
import multiprocessing
import os
import pickle
import re
from pathlib import Path

import pytest

import zcn
from zcn import _ffi
from zcn.errors import ERR_BASE, ERRNO_MAX, error_from_code

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(60)

#: class -> (C code, standard base, errno or None): the table in docs/ERRORS.md
MAPPING = {
    zcn.InvalidArgumentError: (ERR_BASE + 1, ValueError, None),
    zcn.ExhaustedError: (ERR_BASE + 2, OSError, errno.ENOBUFS),
    zcn.DoubleFreeError: (ERR_BASE + 3, ValueError, None),
    zcn.ForeignPointerError: (ERR_BASE + 4, ValueError, None),
    zcn.NotStartedError: (ERR_BASE + 5, RuntimeError, None),
    zcn.AlreadyStartedError: (ERR_BASE + 6, RuntimeError, None),
    zcn.ClosedError: (ERR_BASE + 7, ConnectionError, errno.ENOTCONN),
    zcn.QueueFullError: (ERR_BASE + 8, BlockingIOError, errno.EAGAIN),
    zcn.BusyError: (ERR_BASE + 9, RuntimeError, None),
    zcn.IoUringDisabledError: (ERR_BASE + 10, PermissionError, errno.EPERM),
    zcn.IoUringBlockedError: (ERR_BASE + 11, PermissionError, errno.EPERM),
    zcn.IoUringUnsupportedError: (ERR_BASE + 12, OSError, errno.ENOSYS),
    zcn.MemlockError: (ERR_BASE + 13, OSError, errno.ENOMEM),
    zcn.ZcnTimeoutError: (ERR_BASE + 14, TimeoutError, errno.ETIMEDOUT),
    zcn.WrongThreadError: (ERR_BASE + 15, RuntimeError, None),
}
CLASSES = list(MAPPING)
ALL_CLASSES = [zcn.ZcnError, zcn.IoUringUnavailableError] + CLASSES

#: Standard exceptions a library error must not be taken for: the ones a
#: caller catches to mean something else.
AVOIDED_BASES = (MemoryError, BufferError, NotImplementedError)


def make(cls, detail="the detail"):
    code = MAPPING[cls][0] if cls in MAPPING else 10099
    return cls(f"where: ZCN_ERR_X: text ({detail})", code=code, detail=detail)


def test_every_library_class_is_tabled():
    public = {obj for name, obj in vars(zcn).items()
              if isinstance(obj, type) and issubclass(obj, zcn.ZcnError)}
    assert public == set(ALL_CLASSES)
    assert set(zcn.errors.__all__) >= {cls.__name__ for cls in ALL_CLASSES}


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_caught_by_its_standard_base(cls):
    base = MAPPING[cls][1]
    with pytest.raises(base) as info:
        raise make(cls)
    assert type(info.value) is cls
    try:
        raise make(cls)
    except base:
        pass
    try:
        raise make(cls)
    except zcn.ZcnError:
        pass
    assert not isinstance(make(cls), AVOIDED_BASES)


def test_io_uring_family_is_one_oserror():
    for cls in (zcn.IoUringDisabledError, zcn.IoUringBlockedError,
                zcn.IoUringUnsupportedError, zcn.MemlockError):
        assert issubclass(cls, zcn.IoUringUnavailableError)
    assert issubclass(zcn.IoUringUnavailableError, OSError)
    exc = zcn.IoUringUnavailableError("no io_uring")
    assert exc.errno is None and exc.code == 0


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_errno_where_an_oserror(cls):
    _, base, want = MAPPING[cls]
    exc = make(cls)
    if want is None:
        assert not isinstance(exc, OSError)
        assert not hasattr(exc, "errno")
    else:
        assert isinstance(exc, OSError)
        assert exc.errno == want
        assert exc.strerror == os.strerror(want)
        assert exc.filename is None


def test_errno_checks_of_socket_code_work():
    exc = make(zcn.QueueFullError)
    assert exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
    assert make(zcn.ClosedError).errno == errno.ENOTCONN


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_str_code_detail(cls):
    exc = make(cls)
    # str() is the library's message, never OSError's "[Errno N] strerror"
    assert str(exc) == "where: ZCN_ERR_X: text (the detail)"
    assert exc.args == ("where: ZCN_ERR_X: text (the detail)",)
    assert exc.detail == "the detail"
    assert exc.code == (MAPPING[cls][0] if cls in MAPPING else 10099)
    assert repr(exc) == f"{cls.__name__}('where: ZCN_ERR_X: text (the detail)')"
    plain = cls("message only")  # how the Python layer raises them itself
    assert str(plain) == "message only" and plain.detail == ""
    assert plain.code == (MAPPING[cls][0] if cls in MAPPING else 0)


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_pickle_round_trip(cls):
    exc = make(cls)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(exc, protocol))
        assert_same(back, exc)
    assert_same(copy.copy(exc), exc)


def assert_same(back, exc):
    assert type(back) is type(exc)
    assert back.args == exc.args and str(back) == str(exc)
    assert back.code == exc.code and back.detail == exc.detail and back.name == exc.name
    assert getattr(back, "errno", "absent") == getattr(exc, "errno", "absent")
    assert getattr(back, "strerror", "absent") == getattr(exc, "strerror", "absent")


def test_pickle_keeps_a_name_from_a_newer_library():
    exc = error_from_code(ERR_BASE + 99, "call")
    assert type(exc) is zcn.ZcnError and exc.code == ERR_BASE + 99
    exc.name = "ZCN_ERR_FROM_THE_FUTURE"
    assert pickle.loads(pickle.dumps(exc)).name == "ZCN_ERR_FROM_THE_FUTURE"


def _raise_in_child(code):
    raise error_from_code(code, "child")


def test_crosses_a_process_boundary():
    """multiprocessing pickles the child's exception back to the parent."""
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        for cls in (zcn.QueueFullError, zcn.ClosedError, zcn.WrongThreadError):
            result = pool.apply_async(_raise_in_child, (MAPPING[cls][0],))
            with pytest.raises(cls) as info:
                result.get(timeout=30)
            assert info.value.code == MAPPING[cls][0]
            assert str(info.value).startswith(f"child: {cls.name}: ")
            assert isinstance(info.value, MAPPING[cls][1])


# --- error_from_code ----------------------------------------------------------

@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_error_from_code_gives_the_class(cls):
    code = MAPPING[cls][0]
    exc = error_from_code(code, "zcn_call")
    assert type(exc) is cls
    assert exc.code == code and cls.code == code
    assert exc.name == cls.name
    assert str(exc).startswith(f"zcn_call: {cls.name}: ")
    c_name = _ffi.zcn_error_name(code).decode()
    # The library may predate a code (ZCN_ERR_WRONG_THREAD): the bindings'
    # name is used then. Where it knows the code, the names agree.
    assert c_name in (cls.name, "ZCN_ERR_UNKNOWN")
    if cls is not zcn.WrongThreadError:
        assert c_name == cls.name


def test_error_from_code_carries_the_detail():
    with pytest.raises(zcn.InvalidArgumentError) as info:
        _ffi.zcn_pool_release(None, None)  # a real failure: the C detail is set
    exc = info.value
    assert exc.detail and exc.detail in str(exc)
    assert str(exc).startswith("zcn_pool_release: ZCN_ERR_INVALID_ARGUMENT: ")
    assert isinstance(exc, ValueError)


def test_unknown_library_code_is_a_plain_zcn_error():
    exc = error_from_code(ERR_BASE + 999)
    assert type(exc) is zcn.ZcnError
    assert exc.code == ERR_BASE + 999
    assert not isinstance(exc, OSError)


def test_errno_values_stay_plain_oserrors():
    """1..4095 give exactly what OSError(errno, ...) gives, as before."""
    for code in range(1, ERRNO_MAX + 1):
        exc = error_from_code(code, "call")
        assert type(exc) is type(OSError(code, "x")), code
        assert not isinstance(exc, zcn.ZcnError)
        assert exc.errno == code
    assert type(error_from_code(errno.ECONNRESET)) is ConnectionResetError
    assert type(error_from_code(errno.EAGAIN)) is BlockingIOError
    assert type(error_from_code(errno.EPERM)) is PermissionError
    assert type(error_from_code(errno.ETIMEDOUT)) is TimeoutError
    assert type(error_from_code(errno.EADDRINUSE)) is OSError


def test_closed_object_is_a_connection_error():
    """A real raise site: a closed pool."""
    pool = zcn.BufferPool(4096, 2)
    pool.close()
    with pytest.raises(ConnectionError) as info:
        pool.acquire()
    assert isinstance(info.value, zcn.ClosedError)
    assert info.value.errno == errno.ENOTCONN


# --- the documentation ----------------------------------------------------------

def test_errors_md_tables_every_class():
    text = (ROOT / "docs" / "ERRORS.md").read_text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `zcn\.(\w+)`.*$", text, re.M)}
    for cls in CLASSES:
        code, base, want = MAPPING[cls]
        row = rows.get(cls.__name__)
        assert row is not None, f"docs/ERRORS.md has no row for {cls.__name__}"
        assert str(code) in row and cls.name in row, row
        assert f"`{base.__name__}`" in row, row
        if want is not None:
            assert errno.errorcode[want] in row, row
