"""The benchmark's readings of processes: CPU seconds and RSS of a server
(psutil when installed, else /proc as psutil reads it on Linux), of a
process and all its descendants (pre-fork workers), and of the whole
machine (what other processes took during a window).

Private to zcn.bench and bench/*.py."""
from __future__ import annotations

import os
from dataclasses import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, List


def busy_s():
    """CPU seconds the whole machine has been busy (every CPU, user+system
    incl. interrupts)."""
    try:
        import psutil
    except ImportError:
        # /proc/stat's cpu line: user nice system idle iowait irq softirq ...
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:8]]
        return (ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]) / ProcProcess.TICK
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)


@dataclass
class _Times:
    user: float
    system: float


@dataclass
class _Memory:
    rss: int


class ProcProcess:
    """The two psutil.Process calls the harness makes, read from /proc as
    psutil does on Linux (psutil is optional: the bench extra)."""

    TICK = os.sysconf("SC_CLK_TCK")
    PAGE = os.sysconf("SC_PAGE_SIZE")

    def __init__(self, pid):
        self.pid = pid
        self.cpu_times()  # gone already: raises OSError, as psutil.Process does

    def cpu_times(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # fields from 3 (state) on
        return _Times(user=int(fields[11]) / self.TICK, system=int(fields[12]) / self.TICK)

    def memory_info(self):
        with open(f"/proc/{self.pid}/statm") as f:
            return _Memory(rss=int(f.read().split()[1]) * self.PAGE)


def descendants(pid):
    """The pids of a process's children, grandchildren, ... (from /proc)."""
    children: Dict[int, List[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for e in entries:
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(e))
    out, stack = [], [pid]
    while stack:
        for c in children.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def process(pid):
    """psutil.Process(pid), or the /proc reader when psutil is missing."""
    try:
        import psutil
    except ImportError:
        return ProcProcess(pid)
    return psutil.Process(pid)


def psutil_process(pid):
    try:
        return process(pid)
    except Exception:  # noqa: BLE001 - psutil.Error or OSError: gone already
        return None


def proc_cpu_s(p):
    """A process's user+system CPU seconds (0 once it is gone)."""
    if p is None:
        return 0.0
    try:
        t = p.cpu_times()
    except Exception:  # noqa: BLE001 - psutil.Error: gone already
        return 0.0
    return t.user + t.system


def tree_cpu_s(pid, include_root=True):
    """User+system CPU seconds of a process's descendants (and of the
    process itself unless include_root is False); 0 for those gone."""
    pids = descendants(pid) + ([pid] if include_root else [])
    return sum(proc_cpu_s(psutil_process(p)) for p in pids)
