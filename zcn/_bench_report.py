"""The echo benchmark's results: summaries of the rounds (medians with
min/max), the table of a workload, the goals each profile reports (never
enforces) and the PNG plots.

Private to zcn.bench and bench/*.py."""
from __future__ import annotations

import statistics

from ._bench_threads import threads_goals


METRICS = ("msgs_per_s", "mb_per_s", "cpu_us_per_msg", "server_cpu_util", "client_cpu_util",
           "other_cpu_util",
           "connect_per_s", "setup_per_s", "rss_per_conn", "rss_before")
RTT_METRICS = ("p50", "p99", "p999", "mean")
#: the share of a CPU that processes other than the server and the load
#: generator (the loopback softirq work in ksoftirqd among them) may use
#: before a table says the machine was busy
OTHER_CPU_WARN = 0.10
#: --retry-busy waits this long before running a busy round again
RETRY_PAUSE_S = 2.0


def _mmm(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def summarize(rounds):
    s = {}
    for m in METRICS:
        v = _mmm([r.get(m) for r in rounds])
        if v is not None:
            s[m] = v
    for m in RTT_METRICS:
        v = _mmm([(r.get("rtt_ns") or {}).get(m) for r in rounds if
                  (r.get("rtt_ns") or {}).get("count")])
        if v is not None:
            s["rtt_" + m + "_ns"] = v
    s["ok"] = all(r.get("ok") for r in rounds) and bool(rounds)
    s["bytes_verified"] = sum(r.get("bytes_verified") or 0 for r in rounds)
    s["verify_errors"] = sum(r.get("verify_errors") or 0 for r in rounds)
    return s


def _fmt(v, digits=1):
    if v is None:
        return "-"
    if abs(v) >= 10000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def _range(s, key, scale=1.0, digits=1):
    m = s.get(key)
    if m is None:
        return "-"
    return (f"{_fmt(m['median'] * scale, digits)} "
            f"[{_fmt(m['min'] * scale, digits)}..{_fmt(m['max'] * scale, digits)}]")


def _med(s, key):
    m = (s or {}).get(key)
    return None if m is None else m["median"]


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def table(wl, results, baseline_of=None):
    """The workload's table. baseline_of(name) is the server each row's
    ratios are against (default: epoll for every row)."""
    lines = [f"\n== {wl.label()}: {wl.title}"]
    baseline_of = baseline_of or (lambda name: "epoll")
    width = max([8] + [len(n) for n in results])
    if wl.mode == "connect":
        hdr = (f"{'server':8} {'setup conns/s':>26} {'connect/s':>12} "
               f"{'RSS/conn KiB':>22} {'idle RSS MiB':>12}  ok")
        lines.append(hdr)
        for name, r in results.items():
            s = r.get("summary")
            if s is None:
                lines.append(f"{name:8} skipped: {r.get('note')}")
                continue
            lines.append(f"{name:8} {_range(s, 'setup_per_s', 1, 0):>26} "
                         f"{_fmt(_med(s, 'connect_per_s'), 0):>12} "
                         f"{_range(s, 'rss_per_conn', 1 / 1024, 2):>22} "
                         f"{_fmt((_med(s, 'rss_before') or 0) / 2**20, 1):>12}  "
                         f"{'yes' if s['ok'] else 'NO'}")
        return "\n".join(lines)
    bases = sorted({baseline_of(n) for n in results})
    bname = bases[0] if len(bases) == 1 else "base"
    cw = max(11, len(bname) + 6)
    hdr = (f"{'server':{width}} {'msgs/s median [min..max]':>30} {'MB/s':>8} "
           f"{'CPU us/msg [min..max]':>24} {'srv%':>5} {'cli%':>5} "
           f"{'p50 us':>8} {'p99 us':>8} {'p99.9us':>8} {'x ' + bname + ' thr':>{cw}} "
           f"{'x ' + bname + ' cpu':>{cw}}  ok")
    lines.append(hdr)
    for name, r in results.items():
        s = r.get("summary")
        if s is None:
            lines.append(f"{name:{width}} skipped: {r.get('note')}")
            continue
        base = results.get(baseline_of(name), {}).get("summary")
        thr_ratio = _ratio(_med(s, "msgs_per_s"), _med(base, "msgs_per_s"))
        cpu_ratio = _ratio(_med(s, "cpu_us_per_msg"), _med(base, "cpu_us_per_msg"))
        lines.append(
            f"{name:{width}} {_range(s, 'msgs_per_s', 1, 0):>30} {_fmt(_med(s, 'mb_per_s'), 1):>8} "
            f"{_range(s, 'cpu_us_per_msg', 1, 2):>24} "
            f"{_fmt((_med(s, 'server_cpu_util') or 0) * 100, 0):>5} "
            f"{_fmt((_med(s, 'client_cpu_util') or 0) * 100, 0):>5} "
            f"{_fmt((_med(s, 'rtt_p50_ns') or 0) / 1e3, 1):>8} "
            f"{_fmt((_med(s, 'rtt_p99_ns') or 0) / 1e3, 1):>8} "
            f"{_fmt((_med(s, 'rtt_p999_ns') or 0) / 1e3, 1):>8} "
            f"{_fmt(thr_ratio, 2):>{cw}} {_fmt(cpu_ratio, 2):>{cw}}  {'yes' if s['ok'] else 'NO'}")
    others = [_med(r.get("summary"), "other_cpu_util") for r in results.values()]
    others = [o for o in others if o is not None]
    if others and max(others) > OTHER_CPU_WARN:
        lines.append(f"(note: other processes kept up to {max(others) * 100:.0f}% of a CPU busy "
                     "during the windows (median per server): the machine was not idle, so "
                     "read the ratios with care)")
    if bname == "base":
        lines.append("(ratios: " + ", ".join(
            f"{n} x {baseline_of(n)}" for n in results if baseline_of(n) != n) + ")")
    return "\n".join(lines)


def latency_ratios(results, base_name):
    """Each server's p50, p99 and p99.9 round trip and server CPU use as
    ratios of base_name's (the busy-poll profile's lines under its table)."""
    base = (results.get(base_name) or {}).get("summary")
    lines = [f"latency against {base_name} (medians of the rounds; srv% = the server's "
             f"CPU use during the window):"]
    for name, r in results.items():
        s = r.get("summary")
        if s is None:
            continue
        parts = []
        for key, label in (("rtt_p50_ns", "p50"), ("rtt_p99_ns", "p99"),
                           ("rtt_p999_ns", "p99.9")):
            parts.append(f"{label} {_fmt((_med(s, key) or 0) / 1e3, 1)} us "
                         f"({_fmt(_ratio(_med(s, key), _med(base, key)), 2)}x)")
        parts.append(f"srv {_fmt((_med(s, 'server_cpu_util') or 0) * 100, 0)}%")
        lines.append(f"  {name:12} " + ", ".join(parts))
    return "\n".join(lines)


def evaluate_goals(report):
    by_key = {w["key"]: w for w in report["workloads"]}

    def med(wkey, server, metric):
        w = by_key.get(wkey)
        s = (w or {}).get("results", {}).get(server, {}).get("summary")
        return _med(s, metric)

    goals = []

    def goal(text, value, target, cmp):
        met = None if value is None else (value <= target if cmp == "<=" else value >= target)
        goals.append({"goal": text, "measured": value, "target": f"{cmp} {target}", "met": met})

    if report.get("threads"):
        threads_goals(goal, lambda key, name, base: _ratio(med(key, name, "cpu_us_per_msg"),
                                                            med(key, base, "cpu_us_per_msg")))
        return goals
    if report.get("busy_poll"):
        # the goal for busy polling: a spinning loop against a sleeping epoll server
        goal("zcn-c-busy 1-connection p50 RTT <= 0.6x epoll (blocking)",
             _ratio(med("ping", "zcn-c-busy", "rtt_p50_ns"), med("ping", "epoll", "rtt_p50_ns")),
             0.6, "<=")
        goal("zcn-c-busy 1-connection p50 RTT <= 1.0x epoll-spin",
             _ratio(med("ping", "zcn-c-busy", "rtt_p50_ns"),
                    med("ping", "epoll-spin", "rtt_p50_ns")), 1.0, "<=")
        return goals
    if report.get("epoll"):
        # the goals of the epoll backend: no abstraction tax over a plain epoll loop
        for key, label in (("c200", "200x1x64B"), ("c50d16", "50x16x64B")):
            goal(f"zcn-c-epoll CPU per message <= 1.05x epoll at {label}",
                 _ratio(med(key, "zcn-c-epoll", "cpu_us_per_msg"),
                        med(key, "epoll", "cpu_us_per_msg")), 1.05, "<=")
        goal("zcn-c-epoll throughput >= 0.95x epoll at 10x1x16KiB",
             _ratio(med("c10x16k", "zcn-c-epoll", "msgs_per_s"),
                    med("c10x16k", "epoll", "msgs_per_s")), 0.95, ">=")
        return goals
    if report.get("asyncio"):
        # the goals for zcn's asyncio loop, against uvloop
        for key, label in (("c200", "200x1x64B"), ("c50d16", "50x16x64B")):
            goal(f"zcn-aio CPU per message <= 0.85x uvloop at {label}",
                 _ratio(med(key, "zcn-aio", "cpu_us_per_msg"),
                        med(key, "uvloop", "cpu_us_per_msg")), 0.85, "<=")
            goal(f"zcn-aio throughput >= 1.0x uvloop at {label}",
                 _ratio(med(key, "zcn-aio", "msgs_per_s"), med(key, "uvloop", "msgs_per_s")),
                 1.0, ">=")
            goal(f"zcn-aio-streams CPU per message <= 0.90x uvloop-streams at {label}",
                 _ratio(med(key, "zcn-aio-streams", "cpu_us_per_msg"),
                        med(key, "uvloop-streams", "cpu_us_per_msg")), 0.90, "<=")
        return goals

    goal("zcn-c CPU per message <= 0.80x epoll at 200x1x64B",
         _ratio(med("c200", "zcn-c", "cpu_us_per_msg"), med("c200", "epoll", "cpu_us_per_msg")),
         0.80, "<=")
    for w in report["workloads"]:
        if w["mode"] != "echo":
            continue
        goal(f"zcn-c throughput >= 1.0x epoll at {w['label']}",
             _ratio(med(w["key"], "zcn-c", "msgs_per_s"), med(w["key"], "epoll", "msgs_per_s")),
             1.0, ">=")
    goal("zcn-py CPU per message <= 0.85x uvloop at 200x1x64B",
         _ratio(med("c200", "zcn-py", "cpu_us_per_msg"), med("c200", "uvloop", "cpu_us_per_msg")),
         0.85, "<=")
    goal("zcn-c 1-connection p50 RTT <= 1.0x epoll",
         _ratio(med("ping", "zcn-c", "rtt_p50_ns"), med("ping", "epoll", "rtt_p50_ns")),
         1.0, "<=")
    return goals


def goals_text(goals):
    out = ["\n== goals (reported, never enforced)"]
    for g in goals:
        state = {True: "met", False: "MISSED", None: "n/a"}[g["met"]]
        out.append(f"  {state:6} {g['goal']}: measured {_fmt(g['measured'], 2)}x "
                   f"(target {g['target']})")
    return "\n".join(out)


def make_plots(report, stem, server_order):
    """PNG plots next to `stem` (a path without extension), one bar per
    server of `server_order` that has results, in that order; returns the
    paths written or a note why none were."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "matplotlib not installed (pip install .[bench]): no plots"
    echo = [w for w in report["workloads"] if w["mode"] == "echo"]
    servers = [s for s in server_order
               if any(w["results"].get(s, {}).get("summary") for w in echo)]
    if not echo or not servers:
        return [], "nothing to plot"
    paths = []
    width = 0.8 / len(servers)
    for metric, ylabel, fname, log in (
            ("msgs_per_s", "messages/s (median, min-max bars)", "throughput", True),
            ("cpu_us_per_msg", "server CPU us per message (median, min-max bars)", "cpu", True)):
        fig, ax = plt.subplots(figsize=(9, 4.2), dpi=90)
        for i, srv in enumerate(servers):
            xs, ys, lo, hi = [], [], [], []
            for j, w in enumerate(echo):
                s = w["results"].get(srv, {}).get("summary") or {}
                m = s.get(metric)
                if m is None:
                    continue
                xs.append(j + (i - (len(servers) - 1) / 2) * width)
                ys.append(m["median"])
                lo.append(m["median"] - m["min"])
                hi.append(m["max"] - m["median"])
            ax.bar(xs, ys, width, yerr=[lo, hi], label=srv, capsize=2)
        ax.set_xticks(range(len(echo)))
        labels = [w["label"] for w in echo]
        # two workloads of one shape (c1x64k and stream): the key tells them apart
        ax.set_xticklabels([lb if labels.count(lb) == 1 else f"{lb}\n{w['key']}"
                            for lb, w in zip(labels, echo)])
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.set_title(f"echo {fname}: {report['machine']['cpu_model']}, "
                     f"{report['machine']['cpus']} CPUs, {report['profile']} run")
        ax.legend(fontsize=8, ncol=len(servers))
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = f"{stem}-{fname}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths, None
