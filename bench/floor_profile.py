"""Where a small message's CPU goes: zcn's C echo against the C epoll server,
sampled with perf and split into the kernel's TCP work, which any server
pays, and the server's own part (its event mechanism, system-call entry,
its user-space code).

    python bench/floor_profile.py [--build-dir build/bench] [--rounds 3]
                                  [--duration 3] [--conns 200] [--depth 1]
                                  [--size 64] [--servers zcn-c,epoll]

Each round runs every server (interleaved, order rotated per round): the
server pinned to CPU 1, bench/loadgen on CPU 0, and once the load
generator's window opens, `perf record -g` on the server for the window.
The server's CPU time over the window (from /proc) divided by the
messages echoed in it gives CPU per message; perf's samples split it into
the categories below. Medians over rounds. perf's own sampling adds a few
percent to every server alike. Needs perf (Debian package linux-perf) and
perf_event_paranoid <= 1 or root.

Categories (kernel symbols by name; user space by object):

* kernel TCP/IP: tcp_*, ip_*, skb_*, sock_*, softirq and loopback
  delivery (on loopback the sender's CPU runs the receiver's side too);
* copies: copying payload to and from user memory;
* kernel memory: skb and page allocation and freeing;
* scheduler: wake-ups of the peer, sleeping and waking, timers;
* event mechanism: io_uring's functions, or epoll's;
* syscall entry: entering and leaving the kernel, fd lookups;
* user: the server's own code and its libraries.

The first three are the floor: what a server that did no work of its own
would still cost per message on this machine.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVERS = {"zcn-c": "zcn_echo", "epoll": "epoll_echo"}
CATEGORIES = ("kernel TCP/IP", "copies", "kernel memory", "scheduler", "event mechanism",
              "syscall entry", "user")
FLOOR = ("kernel TCP/IP", "copies", "kernel memory")
FRAMEWORK = ("event mechanism", "syscall entry", "user")

_RULES = [
    ("event mechanism", r"(__)?io_|io_uring|__io|(ep_|do_epoll|__x64_sys_epoll)"),
    ("syscall entry", r"entry_SYSCALL|do_syscall|syscall_|__x64_sys_|x64_sys_call|__sys_|"
                      r"ksys_|f(d)?get|__f(d)?get|f?put|__fput|sockfd_lookup|exit_to_user|"
                      r"arch_exit|__rseq|rseq_"),
    ("scheduler", r"finish_task_switch|_*schedule|try_to_wake_up|ttwu|select_task_rq|"
                  r"enqueue|dequeue|pick_next|update_curr|update_load|__update|set_next_entity|"
                  r"put_prev|psi_|sched_|__wake_up|autoremove_wake|default_wake|"
                  r"_raw_spin_unlock_irqrestore|__raw_callee|__pv_queued|newidle|idle_|"
                  r"cpuidle|switch_mm|__switch_to|prepare_task_switch|reweight|place_entity|"
                  r"check_preempt|resched|wakeup_preempt|hrtick|avg_vruntime|task_tick|"
                  r"vruntime|rb_|timerqueue|hrtimer|tick_|clockevents|lapic|native_apic|"
                  r"read_tsc|ktime_get|__calc_delta"),
    ("copies", r"_copy_to_iter|_copy_from_iter|copy_user|rep_movs|memcpy|memmove|"
               r"__check_object_size|check_heap_object|__virt_addr_valid|simple_copy_to_iter|"
               r"skb_copy_datagram_iter|__skb_datagram_iter|copy_page"),
    ("kernel memory", r"kmem_cache|_*slab|kfree|__kmalloc|kmalloc|__alloc|alloc_pages|"
                      r"__free|free_|get_page_from|page_frag|skb_page_frag|mod_objcg|obj_cgroup|"
                      r"__memcg|memcg|refill_obj|rmqueue|__rmqueue|_*put_page|__folio|folio"),
]
_RULES = [(name, re.compile(rx)) for name, rx in _RULES]


def category(kernel, sym):
    if not kernel:
        return "user"
    for name, rx in _RULES:
        if rx.match(sym):
            return name
    return "kernel TCP/IP"


def split(data):
    """perf.data -> {category: share of samples (0..1)}."""
    out = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort",
                          "dso,sym", "-g", "none", "--percent-limit", "0", "--stdio"],
                         capture_output=True, text=True, timeout=300).stdout
    shares = collections.Counter()
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(\S+)", line)
        if m:
            shares[category(m.group(3) == "k", m.group(4))] += float(m.group(1)) / 100
    return shares


def proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_one(name, args, build, tmp):
    exe = build / "bench" / SERVERS[name]
    srv = subprocess.Popen([str(exe), "--port", "0"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True,
                           preexec_fn=lambda: os.sched_setaffinity(0, {args.server_cpu}))
    try:
        m = re.search(r":(\d+)", srv.stdout.readline())
        if not m:
            raise RuntimeError(f"{name} did not start")
        lg = subprocess.Popen([str(build / "bench" / "loadgen"), "--port", m.group(1),
                               "--conns", str(args.conns), "--depth", str(args.depth),
                               "--size", str(args.size), "--duration", str(args.duration),
                               "--warmup", str(args.warmup), "--cpu", str(args.client_cpu)],
                              stdout=subprocess.PIPE, text=True)
        data = Path(tmp) / f"{name}.data"
        perf = cpu0 = None
        result = None
        for line in lg.stdout:
            ev = json.loads(line)
            if ev.get("event") == "window_start":
                cpu0 = proc_cpu_s(srv.pid)
                perf = subprocess.Popen(["perf", "record", "-q", "-F", "1999", "-g", "-p",
                                         str(srv.pid), "-o", str(data), "--", "sleep",
                                         str(args.duration)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            elif ev.get("event") == "window_end":
                cpu_s = proc_cpu_s(srv.pid) - cpu0
            elif ev.get("event") == "result":
                result = ev
        lg.wait(timeout=60)
        if perf is not None:
            perf.wait(timeout=60)
        if not result or not result.get("ok") or not result.get("msgs"):
            raise RuntimeError(f"{name}: the load generator failed: {result}")
        us = cpu_s / result["msgs"] * 1e6
        return {"msgs_per_s": result["msgs_per_s"], "cpu_us_per_msg": us,
                "shares": dict(split(data))}
    finally:
        srv.terminate()
        srv.wait(timeout=10)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build-dir", default=os.environ.get("ZCN_BENCH_BUILD",
                                                         str(ROOT / "build" / "bench")))
    p.add_argument("--servers", default="zcn-c,epoll")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--conns", type=int, default=200)
    p.add_argument("--depth", type=int, default=1)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--server-cpu", type=int, default=1)
    p.add_argument("--client-cpu", type=int, default=0)
    p.add_argument("--json", help="write the rounds here")
    args = p.parse_args(argv)
    if shutil.which("perf") is None:
        print("floor_profile: perf not found (Debian package linux-perf)", file=sys.stderr)
        return 2
    build = Path(args.build_dir)
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    for n in names:
        if n not in SERVERS or not (build / "bench" / SERVERS[n]).exists():
            print(f"floor_profile: no server {n!r} in {build}/bench", file=sys.stderr)
            return 2
    import tempfile
    rounds = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for n in order:
                res = run_one(n, args, build, tmp)
                rounds[n].append(res)
                print(f"round {r + 1}/{args.rounds} {n:<6} {res['msgs_per_s']:>10,.0f} msg/s "
                      f"{res['cpu_us_per_msg']:.2f} us CPU/msg", flush=True)
    print(f"\n{args.conns} connections x depth {args.depth} x {args.size} B: server CPU per "
          f"message (us), by category, medians of {args.rounds} rounds")
    print(f"{'category':<18}" + "".join(f"{n:>16}" for n in names))
    med = {}
    for n in names:
        total = statistics.median(x["cpu_us_per_msg"] for x in rounds[n])
        med[n] = {c: statistics.median(x["shares"].get(c, 0.0) for x in rounds[n]) * total
                  for c in CATEGORIES}
        med[n]["total"] = total
    for c in (*CATEGORIES, "total"):
        print(f"{c:<18}" + "".join(f"{med[n][c]:>10.3f} {med[n][c] / med[n]['total']:>4.0%}"
                                   for n in names))
    floor = {n: sum(med[n][c] for c in FLOOR) for n in names}
    print(f"{'floor (first 3)':<18}" + "".join(f"{floor[n]:>10.3f} {floor[n] / med[n]['total']:>4.0%}"
                                               for n in names))
    if "zcn-c" in med and "epoll" in med:
        own = sum(med["zcn-c"][c] for c in FRAMEWORK)
        print(f"\nzcn-c / epoll CPU per message: {med['zcn-c']['total'] / med['epoll']['total']:.2f}x;"
              f" with zcn's own part ({', '.join(FRAMEWORK)}: {own:.3f} us) at zero it would be "
              f"{(med['zcn-c']['total'] - own) / med['epoll']['total']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rounds": rounds,
                                               "medians": med}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
