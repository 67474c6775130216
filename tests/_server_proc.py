"""An echo server in its own process, and ServerProc, which tests drive it with.

    python _server_proc.py '{"handler": "c", "idle_timeout": 0.5, ...}'

Prints ``READY <port> <pid>`` once listening, then serves. Commands, one per
line on stdin:

    stats   -> one line: JSON of the server's stats (the C field names)
    quit    -> stops, destroys the server, prints the final stats, exits 0

EOF on stdin also quits. Config keys (all optional): handler ("c" or
"python"), nofile (RLIMIT_NOFILE soft limit set before the server is
created), and the zcn.TcpServer keywords connections_max, idle_timeout
(seconds), send_queue_max_bytes, buffer_pool_size, buffer_size, backlog,
io_uring_entries.

The server uses zcn.TcpServer when the package has it; otherwise it drives
the C API through zcn._ffi directly (the C echo handler, or a poll-mode echo
written in Python), so these tests run before and after the Python class
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

SERVER_KEYS = ("connections_max", "idle_timeout", "send_queue_max_bytes",
               "buffer_pool_size", "buffer_size", "backlog", "io_uring_entries")


class _FfiServer:
    """The same loop on the raw bindings (no zcn.TcpServer yet)."""

    def __init__(self, cfg):
        from zcn import _ffi
        self._ffi = _ffi
        c = _ffi.Config()
        c.address = b"127.0.0.1"
        c.port = 0
        for key in SERVER_KEYS:
            if cfg.get(key) is None:
                continue
            if key == "idle_timeout":
                c.idle_timeout_ms = int(cfg[key] * 1000)
            else:
                setattr(c, key, int(cfg[key]))
        self._s = _ffi.create(_ffi.zcn_server_create, ctypes.byref(c))
        self.python = cfg.get("handler", "c") == "python"
        if not self.python:
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
        return {name: getattr(st, name) for name, _ in st._fields_}

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
        self._pending = {}
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
        except zcn.QueueFullError:
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

    def run_once(self, timeout):
        self._srv.run_once(timeout=timeout)

    def stats(self):
        st = self._srv.stats()
        if isinstance(st, dict):
            return dict(st)
        import dataclasses
        return dataclasses.asdict(st)

    def close(self):
        self._srv.server_close()


def main():
    cfg = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    if cfg.get("nofile"):
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (int(cfg["nofile"]), hard))
    import zcn
    use_api = hasattr(zcn, "TcpServer") and not cfg.get("force_ffi")
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
