"""The threads profile of the echo benchmark (`python -m zcn bench
--threads`, docs/THREADS.md): `python -m zcn echo` with the C handler on one
loop against two loops (a ZCN_Group), and with the Python handler in one
process against two pre-fork workers and two threads; where each layout may
run, its command, its baseline row, the connection spread it printed, and
the goals.

Private to zcn.bench."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict

#: The threads profile (--threads, docs/THREADS.md): `python -m zcn echo`
#: with its C handler on one loop against two loops (a ZCN_Group), and its
#: Python handler in one process against pre-fork workers (run_workers).
#: name: (echo options, where the server's threads may run: "server" = the
#: server's CPU, "all" = every CPU, the load generator's too)
THREADS_LAYOUTS = {
    "zcn-c-1loop": (["--handler", "c", "--threads", "1", "--cpus", "{server}"], "server"),
    "zcn-c-2loops": (["--handler", "c", "--threads", "2", "--cpus", "{client},{server}"], "all"),
    "zcn-c-2loops-1cpu": (["--handler", "c", "--threads", "2", "--cpus", "{server},{server}"],
                          "server"),
    "zcn-py-1proc": (["--handler", "python"], "server"),
    "zcn-py-2workers": (["--handler", "python", "--workers", "2"], "all"),
    "zcn-py-2workers-1cpu": (["--handler", "python", "--workers", "2"], "server"),
    "zcn-py-2threads": (["--handler", "python", "--threads", "2", "--cpus", "{client},{server}"],
                        "all"),
    "zcn-py-2threads-1cpu": (["--handler", "python", "--threads", "2", "--cpus",
                              "{server},{server}"], "server"),
}
THREADS_SERVERS = tuple(THREADS_LAYOUTS)
THREADS_WORKLOADS = ("c200", "c50d16")
THREADS_DESCRIPTIONS = {
    "zcn-c-1loop": "python -m zcn echo --threads 1: the C handler on one loop, on the server's CPU",
    "zcn-c-2loops": "python -m zcn echo --threads 2: two loops, one per CPU (one shares the "
                    "load generator's)",
    "zcn-c-2loops-1cpu": "python -m zcn echo --threads 2, both loops on the server's CPU (what "
                         "splitting the connections costs, no CPU shared with the load)",
    "zcn-py-1proc": "python -m zcn echo --handler python: one process, on the server's CPU",
    "zcn-py-2workers": "python -m zcn echo --handler python --workers 2: two pre-fork "
                       "processes, free to use both CPUs",
    "zcn-py-2workers-1cpu": "the two workers, both on the server's CPU (what splitting the "
                            "connections over processes costs)",
    "zcn-py-2threads": "python -m zcn echo --handler python --threads 2: two loops, one per "
                       "CPU, in one process (parallel only on a free-threaded Python)",
    "zcn-py-2threads-1cpu": "the two Python threads, both on the server's CPU",
}
def threads_baseline(name):
    """The server a threads-profile row is compared with: one loop for the
    C handler, one process for the Python handler."""
    return "zcn-py-1proc" if name.startswith("zcn-py") else "zcn-c-1loop"

#: the CPUs of the threads profile's layouts, set by run()
_THREADS_CPUS: Dict[str, int] = {}


def set_threads_cpus(server, client):
    _THREADS_CPUS.update(server=server, client=client)


def threads_cpus():
    if not _THREADS_CPUS:
        cpus = sorted(os.sched_getaffinity(0))
        set_threads_cpus(server=cpus[-1], client=cpus[0])
    return _THREADS_CPUS


def threads_command(name, cfg, env):
    """(argv, env, config description) of a threads-profile server: `python
    -m zcn echo` with the layout's options and the workload's limits."""
    import zcn

    pkg_parent = str(Path(zcn.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = pkg_parent + os.pathsep + env.get("PYTHONPATH", "")
    opts, _ = THREADS_LAYOUTS[name]
    cpus = threads_cpus()
    argv = [sys.executable, "-m", "zcn", "echo", "--port", "0"] + [
        o.format(server=cpus["server"], client=cpus["client"]) for o in opts]
    for key in ("buffer_size", "buffer_pool_size", "connections_max", "backlog"):
        if key in cfg:
            argv += ["--" + key.replace("_", "-"), str(cfg[key])]
    return argv, env, dict(cfg, echo=" ".join(argv[3:]))


def threads_goals(goal, cpu_ratio):
    """Issue 16's goal, per workload: splitting the work over loops,
    workers or threads must not cost more than 1.10x per message.
    goal(text, value, target, cmp) records one; cpu_ratio(workload, server,
    base) is the ratio of their median CPU per message."""
    for key, label in (("c200", "200x1x64B"), ("c50d16", "50x16x64B")):
        for name in ("zcn-c-2loops", "zcn-c-2loops-1cpu"):
            goal(f"{name} CPU per message <= 1.10x zcn-c-1loop at {label}",
                 cpu_ratio(key, name, "zcn-c-1loop"), 1.10, "<=")
        for name in ("zcn-py-2workers", "zcn-py-2workers-1cpu", "zcn-py-2threads",
                     "zcn-py-2threads-1cpu"):
            goal(f"{name} CPU per message <= 1.10x zcn-py-1proc at {label}",
                 cpu_ratio(key, name, "zcn-py-1proc"), 1.10, "<=")


def spread_of(text):
    """'loop0=97 loop1=103' (or worker0=.. worker1=..) from what `python -m
    zcn echo` printed at exit, as a list of counts, or None."""
    m = re.search(r"connections per (?:loop|worker): (.*)$", text or "", re.M)
    if not m:
        return None
    return [int(v) for v in re.findall(r"=(\d+)", m.group(1))]
