"""A test server in its own process, and ServerProc, which tests drive it with.

    python _server_proc.py '{"handler": "c", "idle_timeout": 0.5, ...}'

Prints ``READY <port> <pid> <api|ffi>`` once listening, then serves. Commands,
one per line on stdin:

    stats   -> one line: JSON of the server's stats (the C field names), plus
               the handler's own counters (app_*, see below)
    slab    -> one line: JSON {"bytes": the buffer slab's size, "resident":
               how much of it is in RAM (mincore)}, so a test can tell the
               preallocated pool from memory that might leak
    conns   -> one line: JSON {fd: zcn.TcpServer.connection_info(fd) as a
               dict, plus app_pending_bytes: what the Python echo keeps for
               on_drain} for every open connection ({} for the raw loop)
    quit    -> stops, destroys the server, prints the final stats, exits 0

EOF on stdin also quits. Config keys (all optional): handler (below), nofile
(RLIMIT_NOFILE soft limit set before the server is created), lines_library
(handler "lines-c": the shared object built from lines_handler.c), and the
zcn.TcpServer keywords in SERVER_KEYS (timeouts in seconds).

Handlers:
    "c"        the built-in C echo (zcn.TcpServer(handler="c"))
    "python"   an echo in Python through zcn.TcpServer: sends the received
               view without copying; on QueueFullError (counted:
               app_echo_queue_full, the first one's reason kept in
               app_first_refusal) keeps copies in order and resumes on drain
    "lines"    Python through zcn.TcpServer: answers every line with a
               zero-copy slice of the received view holding the line without
               its newline (a partial line at the end of a view is answered
               as it stands), so the answer to a stream is the stream with
               its newlines removed and the slices of one buffer are not
               contiguous. A refused send is counted (app_refused, and
               app_refused_<exception> here), the first one's reason kept
               (app_first_refusal), and its slice dropped
    "lines-c"  the same written in C (lines_handler.c), run in C callback
               mode through the raw bindings: no Python per message

The echo handlers use zcn.TcpServer when the package has it; otherwise they
drive the C API through zcn._ffi directly (the C echo handler, or a poll-mode
echo written in Python), so these tests run before and after the Python class
exists.
"""
from __future__ import annotations

import ctypes
import json
import os
import resource
import select
import subprocess
import sys
import time
from collections import Counter

SERVER_KEYS = ("connections_max", "idle_timeout", "send_queue_max_bytes",
               "buffer_pool_size", "buffer_size", "backlog", "io_uring_entries",
               "buffer_reserve", "send_timeout", "conn_buffers_hard_max")
#: SERVER_KEYS given in seconds, and their ZCN_Config fields (milliseconds).
SECONDS_KEYS = {"idle_timeout": "idle_timeout_ms", "send_timeout": "send_timeout_ms"}
HANDLERS = ("c", "python", "lines", "lines-c")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]


def slab_info(address, size):
    """The slab's size and the bytes of it resident in RAM (mincore)."""
    page = os.sysconf("SC_PAGE_SIZE")
    vec = ctypes.create_string_buffer((size + page - 1) // page)
    if _libc.mincore(address, size, vec) != 0:
        raise OSError(ctypes.get_errno(), "mincore of the buffer slab")
    return {"bytes": size, "resident": page * sum(b & 1 for b in vec.raw)}


def split_lines(view):
    """The (start, end) of every line of ``view`` without its newline, and of
    the partial line after the last newline; empty lines are skipped."""
    raw = bytes(view)  # to search; the answers are slices of the view itself
    start = 0
    while start < len(raw):
        nl = raw.find(b"\n", start)
        end = len(raw) if nl < 0 else nl
        if end > start:
            yield start, end
        start = end + 1


class _FfiServer:
    """The same loop on the raw bindings: before zcn.TcpServer existed, and
    for handler "lines-c" (C callbacks, which the class does not expose)."""

    def __init__(self, cfg):
        from zcn import _ffi
        self._ffi = _ffi
        c = _ffi.Config()
        c.address = b"127.0.0.1"
        c.port = 0
        for key in SERVER_KEYS:
            if cfg.get(key) is None:
                continue
            if key in SECONDS_KEYS:
                setattr(c, SECONDS_KEYS[key], int(cfg[key] * 1000))
            else:
                setattr(c, key, int(cfg[key]))
        self._s = _ffi.create(_ffi.zcn_server_create, ctypes.byref(c))
        handler = cfg.get("handler", "c")
        self.python = handler == "python"
        self._lines = None
        if handler == "lines-c":
            self._lines = ctypes.CDLL(cfg["lines_library"])
            self._lines.lines_refused.restype = ctypes.c_uint64
            self._lines.lines_first_refusal.restype = ctypes.c_char_p
            self._lines.lines_init(ctypes.cast(_ffi.lib.zcn_server_send, ctypes.c_void_p),
                                   ctypes.cast(_ffi.lib.zcn_error_detail, ctypes.c_void_p))
            on_data = _ffi.OnData(ctypes.cast(self._lines.lines_on_data, ctypes.c_void_p).value)
            self._cfuncs = on_data  # alive as long as the server
            _ffi.zcn_server_set_callbacks(self._s, self._s, _ffi.OnAccept(), on_data,
                                          _ffi.OnClose())
        elif not self.python:
            _ffi.zcn_server_use_echo_handler(self._s)
        self._events = (_ffi.Event * 64)()
        _ffi.zcn_server_start(self._s)
        self.port = _ffi.zcn_server_port(self._s)

    def run_once(self, timeout):
        f = self._ffi
        ms = int(timeout * 1000)
        if not self.python:
            rc = f.zcn_server_run_once_timeout(self._s, ms, None)
            if rc not in (0, 4):  # 4 = EINTR
                raise OSError(rc, f.zcn_error_detail().decode())
            return
        n = ctypes.c_uint32(0)
        rc = f.zcn_server_poll(self._s, self._events, 64, ms, ctypes.byref(n))
        if rc not in (0, 4):
            raise OSError(rc, f.zcn_error_detail().decode())
        for i in range(n.value):
            ev = self._events[i]
            if ev.type == f.EVENT_DATA:
                data = ctypes.string_at(ev.data, ev.len)  # copy, like Python code
                rc = f.zcn_server_send(self._s, ev.fd, data, len(data))
                if rc != 0:
                    f.zcn_server_close(self._s, ev.fd)

    def stats(self):
        st = self._ffi.ServerStats()
        self._ffi.zcn_server_stats(self._s, ctypes.byref(st))
        out = {name: getattr(st, name) for name, _ in st._fields_}
        if self._lines is not None:
            out["app_refused"] = self._lines.lines_refused()
            out["app_first_refusal"] = self._lines.lines_first_refusal().decode()
        return out

    def conns(self):
        return {}  # the raw loop does not track its fds

    def slab(self):
        f = self._ffi
        base = f.zcn_server_buffer_base(self._s)
        return slab_info(base, f.zcn_server_buffer_size(self._s) * self.stats()["buffers_total"])

    def close(self):
        self._ffi.zcn_server_destroy(self._s)


class _ApiServer:
    """zcn.TcpServer, the class users run."""

    def __init__(self, cfg):
        import zcn
        kw = {k: cfg[k] for k in SERVER_KEYS if cfg.get(k) is not None}
        handler = cfg.get("handler", "c")
        if handler == "python":
            kw["on_data"] = self._on_data
            kw["on_drain"] = self._on_drain
            kw["on_close"] = lambda fd: self._pending.pop(fd, None)
        elif handler == "lines":
            kw["on_data"] = self._on_lines
            handler = "python"
        self._pending = {}
        self._app = Counter()
        self._first_refusal = ""
        self._srv = zcn.TcpServer("127.0.0.1", 0, handler=handler, **kw)
        self.port = self._srv.port

    # The echo a user of the Python API writes: send without copying; when
    # the queue is full keep copies in order and resume on drain.
    def _on_data(self, fd, data):
        import zcn
        pending = self._pending.get(fd)
        if pending:
            pending.append(bytes(data))
            return
        try:
            self._srv.send(fd, data)
        except zcn.QueueFullError as exc:
            self._app["app_echo_queue_full"] += 1
            self._first_refusal = self._first_refusal or f"{type(exc).__name__}: {exc}"
            self._pending[fd] = [bytes(data)]
        except zcn.ClosedError:
            pass  # reset by the peer in this batch: nothing to answer

    def _on_drain(self, fd):
        import zcn
        pending = self._pending.get(fd, [])
        while pending:
            try:
                self._srv.send(fd, pending[0])
            except zcn.QueueFullError:
                return
            except zcn.ClosedError:
                break
            pending.pop(0)

    def _on_lines(self, fd, data):
        import zcn
        send = self._srv.send
        for start, end in split_lines(data):
            try:
                send(fd, data[start:end])
            except zcn.ClosedError:
                return  # evicted or reset in this batch: nothing to answer (as _on_echo)
            except zcn.ZcnError as exc:
                self._app["app_refused_" + type(exc).__name__] += 1
                self._first_refusal = self._first_refusal or f"{type(exc).__name__}: {exc}"

    def run_once(self, timeout):
        self._srv.run_once(timeout=timeout)

    def stats(self):
        import dataclasses
        st = self._srv.stats()
        out = dict(st) if isinstance(st, dict) else dataclasses.asdict(st)
        out.update(self._app)
        out["app_refused"] = sum(n for k, n in self._app.items() if k.startswith("app_refused_"))
        out["app_first_refusal"] = self._first_refusal
        return out

    def conns(self):
        import dataclasses
        srv = self._srv
        out = {fd: dataclasses.asdict(srv.connection_info(fd)) for fd in srv.connections}
        for fd, info in out.items():
            info["app_pending_bytes"] = sum(map(len, self._pending.get(fd, ())))
        return out

    def slab(self):
        # The class maps the slab itself (zcn._util.MappedMemory); a test
        # helper may look at that private attribute.
        memory = self._srv._memory
        return slab_info(memory.address, len(memory.view))

    def close(self):
        self._srv.server_close()


def main():
    cfg = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    if cfg.get("handler", "c") not in HANDLERS:
        raise SystemExit(f"unknown handler {cfg['handler']!r}; one of {HANDLERS}")
    if cfg.get("nofile"):
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (int(cfg["nofile"]), hard))
    import zcn
    use_api = (hasattr(zcn, "TcpServer") and not cfg.get("force_ffi")
               and cfg.get("handler") != "lines-c")
    server = _ApiServer(cfg) if use_api else _FfiServer(cfg)
    print(f"READY {server.port} {os.getpid()} {'api' if use_api else 'ffi'}", flush=True)
    stdin = sys.stdin.fileno()
    while True:
        server.run_once(0.02)
        r, _, _ = select.select([stdin], [], [], 0)
        if not r:
            continue
        line = sys.stdin.readline()
        cmd = line.strip()
        if cmd == "stats":
            print(json.dumps(server.stats()), flush=True)
        elif cmd == "slab":
            print(json.dumps(server.slab()), flush=True)
        elif cmd == "conns":
            print(json.dumps(server.conns()), flush=True)
        elif cmd == "quit" or line == "":
            break
    final = server.stats()
    server.close()
    print(json.dumps(final), flush=True)


# --------------------------------------------------------------------------
# the test side
# --------------------------------------------------------------------------

class ServerProc:
    """Starts this file as a server process with ``cfg`` and talks to it.
    ``proc`` is its psutil.Process, for its fds, memory and CPU time."""

    def __init__(self, **cfg):
        import psutil
        from conftest import TESTS_DIR, zcn_subprocess_env

        self.p = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), json.dumps(cfg)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=zcn_subprocess_env(), cwd=TESTS_DIR)
        line = self.p.stdout.readline().split()
        if not line or line[0] != "READY":
            err = self.p.stderr.read()
            raise RuntimeError(f"server process did not start: {line} {err}")
        self.port = int(line[1])
        self.proc = psutil.Process(int(line[2]))
        self.mode = line[3]
        self.cfg = cfg

    def _ask(self, cmd):
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError("server process died: " + self.p.stderr.read())
        return json.loads(line)

    def stats(self):
        return self._ask("stats")

    def slab(self):
        return self._ask("slab")

    def conns(self):
        return self._ask("conns")

    def wait_stats(self, pred, timeout=10.0):
        """Polls the stats until pred(stats) holds; returns the last stats."""
        deadline = time.monotonic() + timeout
        st = self.stats()
        while not pred(st) and time.monotonic() < deadline:
            time.sleep(0.02)
            st = self.stats()
        return st

    def alive(self):
        return self.p.poll() is None

    def quit(self):
        if self.p.poll() is not None:
            return None
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.flush()
            out, err = self.p.communicate(timeout=15)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            self.p.kill()
            out, err = self.p.communicate()
        assert self.p.returncode == 0, err
        lines = out.strip().splitlines()
        return json.loads(lines[-1]) if lines else None


if __name__ == "__main__":
    main()
