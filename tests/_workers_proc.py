"""A run_workers parent for the tests that signal or kill it from outside
(tests/test_workers.py). One JSON object per line on stdout:

    {"ready": {"port": P, "pids": [...]}}      every worker listens
    {"stats": {"index": i, "accepted": n}}     a worker's final counters came
    {"result": {...}}                          WorkersResult, as a dict; exit 0 if .ok else 3
    {"error": "...", "index": i}               WorkerError; exit 4

    python _workers_proc.py '{"workers": 2, "mode": "echo"}'

Modes: "echo" (a Python-handler echo through worker.serve_forever),
"ignore_term" (worker 0 ready, then deaf to SIGTERM: the parent must SIGKILL it).
"""
import dataclasses
import json
import sys
import time

import zcn


def emit(obj):
    print(json.dumps(obj), flush=True)


def main():
    cfg = json.loads(sys.argv[1])
    mode = cfg.get("mode", "echo")

    def serve(worker):
        if mode == "ignore_term" and worker.index == 0:
            worker.on_stop(lambda: None)
            worker.ready()
            while True:
                time.sleep(0.05)
        with zcn.TcpServer(worker.host, worker.port, reuse_port=True) as server:
            server.on_data = lambda fd, data: server.send(fd, data)
            worker.serve_forever(server)

    try:
        result = zcn.run_workers(
            serve, cfg.get("workers", 2), port=cfg.get("port", 0),
            shutdown_timeout=cfg.get("shutdown_timeout", 10.0),
            on_ready=lambda port, pids: emit({"ready": {"port": port, "pids": pids}}),
            on_worker_stats=lambda i, s: emit(
                {"stats": {"index": i, "accepted": s["connections_accepted"]}}))
    except zcn.WorkerError as exc:
        emit({"error": str(exc), "index": exc.index})
        return 4
    emit({"result": dataclasses.asdict(result)})
    return 0 if result.ok else 3


if __name__ == "__main__":
    sys.exit(main())
