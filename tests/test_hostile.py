"""Hostile peers (issue 11): whatever some peers do, the server keeps
answering the others, and gives back what the attack took once it is over.

The server runs in its own process (tests/_server_proc.py), measured with
psutil; the attackers are driven here by one thread (Swarm), the
well-behaved clients by the test's own thread. Every scenario:

1. starts a server and opens the *old* connection, then takes the baseline:
   buffers_in_use at idle, the server's fds, its RSS outside the buffer slab;
2. starts the attack and waits until it has an effect, which is asserted
   (the scenario's saturation check), so a test cannot pass vacuously;
3. while the attack is in full force, the old connection and a *new* one
   opened then get their answers within LIVENESS_S (one second, the issue's
   bound and the only timing asserted);
4. stops the attackers and asserts that buffers (buffers_held 0,
   buffers_in_use back to its idle value), fds and RSS return, and that the
   old connection still works.

Memory: the buffer slab (buffer_pool_size x buffer_size, 16 MiB by default)
is allocated at create time and its pages become resident as an attack first
touches them; they stay so, by design and bounded by the config. What could
leak is everything else, so RSS is compared as RSS minus the resident part of
the slab (mincore, _server_proc.py): plain RSS grows by up to the slab's size
(16 MiB) in an attack that leaks nothing. Measured growth outside the slab,
every scenario, both handlers: 0 to 0.02 MiB (the accept flood: the pages
of the connection table and the Python handler's fd set that 750
connections at once touched). RSS_SLACK_BYTES allows 2 MiB, for allocator
noise (a pymalloc arena is 1 MiB); a leak of one buffer per round of the
reset scenario (4 MiB requests) or of 1 KiB per connection of the accept
flood would exceed it, and leaked pool buffers show in buffers_in_use.

Each test carries a timeout mark and its traffic bound (TRAFFIC in its
docstring). Every attack runs against both echo handlers ("c": the built-in
C echo, "python": an echo in Python through zcn.TcpServer) -- the zero-copy
slice scenario against its own line handlers -- and the buffer scenarios with
the default config and with 256 x 4 KiB buffers.
"""
from __future__ import annotations

import os
import resource
import selectors
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter

import pytest

from _peers import connect, pattern, recv_exact, reset
from conftest import TESTS_DIR

pytest.importorskip("psutil")  # the server fixture measures the server with it

#: The issue's bound: a well-behaved connection is answered within a second.
LIVENESS_S = 1.0
#: A socket timeout for the well-behaved clients, so a wedged server fails
#: the assertion with its stats instead of the test's timeout.
CLIENT_TIMEOUT_S = 10.0
#: How long an attack may take to take effect, or the server to recover
#: (wait loops only; never asserted as timing).
SETTLE_S = 20.0
#: A stalled reader whose sends got EAGAIN, with nothing accepted since, for
#: this long (and at least BLOCKED_EAGAINS times in a row) is blocked.
BLOCKED_S = 0.3
BLOCKED_EAGAINS = 3
RSS_SLACK_BYTES = 2 << 20
#: The traffic cap of an attack that saturates the server, per peer.
TRAFFIC_PER_PEER_BYTES = 64 << 20
#: SO_RCVBUF of attackers that never read, and SO_SNDBUF of those that only
#: flood: the server's sends to them stall at once and little waits in their
#: own kernel buffers, which bounds the traffic an attack needs to saturate.
ATTACKER_RCVBUF = 4096
ATTACKER_SNDBUF = 64 << 10

HANDLERS = ["c", "python"]
LINE_HANDLERS = ["lines", "lines-c"]
CONFIGS = {
    "default": {},
    "256x4k": {"buffer_pool_size": 256, "buffer_size": 4096},
}
SEND_QUEUE_MAX_BYTES = 1 << 20  # zcn.TcpServer's default


def describe(st):
    """The buffer policy's stats, for assertion messages."""
    keys = ("connections_active", "buffers_in_use", "buffers_total", "buffers_held",
            "buffer_budget", "buffer_waiters", "evictions", "send_timeouts",
            "hard_limit_aborts", "sends_coalesced", "eofs", "app_refused")
    return ", ".join(f"{k}={st[k]}" for k in keys if k in st)


def wait_until(pred, timeout=SETTLE_S, interval=0.02):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


# --------------------------------------------------------------------------
# the well-behaved side: a server, its old connection, the baseline
# --------------------------------------------------------------------------

@pytest.fixture
def scenes(server):
    """scenes(handler, config="default", **cfg) starts a server process and
    returns its Scene; the old connections are closed at the end."""
    made = []

    def make(handler, config="default", **cfg):
        made.append(Scene(server(handler=handler, **CONFIGS[config], **cfg)))
        return made[-1]

    yield make
    for scene in made:
        scene.old.close()


class Scene:
    """A server process (ServerProc), the old connection opened before any
    attack and the baseline taken then. `answer(msg)` is what the handler
    sends back for msg."""

    def __init__(self, srv):
        self.srv = srv
        handler = srv.cfg["handler"]
        if handler in LINE_HANDLERS:
            self.answer = lambda msg: msg.replace(b"\n", b"")
        else:
            self.answer = lambda msg: msg
        self.probes = 0
        self.latencies = []
        self.old = connect(self.srv.port, timeout=CLIENT_TIMEOUT_S)
        self._exchange(self.old)  # warm: the first answer costs more
        self._take_baseline()

    def _take_baseline(self):
        srv = self.srv
        # Poll mode gives the last batch's buffers back at the next poll.
        st = srv.wait_stats(lambda s: s["buffers_held"] == 0 and s["connections_active"] == 1)
        assert st["buffers_held"] == 0 and st["connections_active"] == 1, describe(st)
        self.base_stats = st
        self.base_fds = srv.proc.num_fds()
        self.base_rss = self.rss_outside_slab()

    def rss_outside_slab(self):
        slab = self.srv.slab()
        return self.srv.proc.memory_info().rss - slab["resident"]

    def conn_cap(self):
        """The most buffers one connection may hold (ZCN_Config): its send
        queue's worth, at most a quarter of the budget."""
        size = -(-self.srv.cfg.get("buffer_size", 16384) // 4096) * 4096
        budget = self.base_stats["buffer_budget"]
        return min(SEND_QUEUE_MAX_BYTES // size + 1, budget // 4)

    def _message(self):
        self.probes += 1
        lines = (b"probe %d line %d %s\n" % (self.probes, i, pattern(40, seed=i))
                 for i in range(24))
        return b"".join(lines)

    def _exchange(self, sock, t0=None):
        """Sends a message, reads its answer; returns the seconds from t0
        (default: now) to the answer's last byte."""
        msg = self._message()
        want = self.answer(msg)
        t0 = time.monotonic() if t0 is None else t0
        sock.sendall(msg)
        got = recv_exact(sock, len(want))
        elapsed = time.monotonic() - t0
        assert got == want, f"answer {len(got)}/{len(want)} bytes, differs: {got[:60]!r}"
        return elapsed

    def assert_served(self, what, probes=3):
        """`probes` times: the old connection and a new one (connected
        then) are answered within LIVENESS_S. `what` describes the attack,
        for the messages. Returns the stats after the last probe."""
        for _ in range(probes):
            st = self._probe(what)
        return st

    def _probe(self, what):
        try:
            old_s = self._exchange(self.old)
            t0 = time.monotonic()
            with connect(self.srv.port, timeout=CLIENT_TIMEOUT_S) as new:
                new_s = self._exchange(new, t0)
        except (OSError, AssertionError) as exc:
            raise AssertionError(f"{what}: a well-behaved connection failed: {exc!r}; "
                                 f"{describe(self.srv.stats())}") from exc
        self.latencies.append((round(old_s, 3), round(new_s, 3)))
        st = self.srv.stats()
        assert old_s <= LIVENESS_S, f"{what}: old connection answered after {old_s:.3f} s; " \
                                    f"{describe(st)}"
        assert new_s <= LIVENESS_S, f"{what}: new connection connected and answered after " \
                                    f"{new_s:.3f} s; {describe(st)}"
        return st

    def assert_recovered(self, what, *swarms, **stages):
        """Stops the swarms (if still running), then asserts that buffers,
        fds and RSS are back to the baseline and the old connection still
        works. The messages name `what`, the stats of each stage given
        (at_saturation=stats, during=...) and what the swarms did."""
        notes = [f"{stage.replace('_', ' ')}: {describe(st)}" for stage, st in stages.items()]
        notes += [swarm.stop() for swarm in swarms]
        if notes:
            what = f"{what} [{'; '.join(notes)}]"
        srv = self.srv
        assert srv.alive(), f"{what}: the server process died"
        idle_in_use = self.base_stats["buffers_in_use"]
        st = srv.wait_stats(lambda s: s["connections_active"] == 1 and s["buffers_held"] == 0
                            and s["buffers_in_use"] <= idle_in_use, timeout=SETTLE_S)
        assert st["connections_active"] == 1, \
            f"{what}: connections left: {describe(st)}; first refusal: " \
            f"{st.get('app_first_refusal')!r}; {srv.conns()}"
        assert st["buffers_held"] == 0, f"{what}: buffers still held: {describe(st)}"
        assert st["buffers_in_use"] <= idle_in_use, \
            f"{what}: buffers_in_use {st['buffers_in_use']} > idle {idle_in_use}: {describe(st)}"
        wait_until(lambda: srv.proc.num_fds() <= self.base_fds, timeout=5)
        fds = srv.proc.num_fds()
        assert fds == self.base_fds, f"{what}: server fds {fds}, before the attack " \
                                     f"{self.base_fds}"
        rss = self.rss_outside_slab()
        assert rss - self.base_rss <= RSS_SLACK_BYTES, \
            f"{what}: RSS outside the slab grew {(rss - self.base_rss) / 2**20:.1f} MiB " \
            f"({self.base_rss >> 20} -> {rss >> 20} MiB)"
        self._exchange(self.old)
        # Shown by pytest -rP (or -s): what the attack did, for tuning bounds.
        print(f"{what}\n  after: {describe(st)}; fds {fds}/{self.base_fds}; RSS outside "
              f"the slab {(rss - self.base_rss) / 2**20:+.2f} MiB; latencies {self.latencies}")
        return st


# --------------------------------------------------------------------------
# the hostile side: peers driven by one thread
# --------------------------------------------------------------------------

class Peer:
    """One attacking connection. The Swarm's thread calls on_read/on_write
    when the socket is ready for what `interest` asks, and tick() every
    turn."""

    interest = selectors.EVENT_WRITE
    rcvbuf = sndbuf = None

    def __init__(self, swarm, index):
        self.swarm = swarm
        self.index = index
        self.sock = connect(swarm.port, timeout=CLIENT_TIMEOUT_S, rcvbuf=self.rcvbuf,
                            sndbuf=self.sndbuf)
        self.sock.setblocking(False)
        self.last_try = self.last_ok = time.monotonic()
        self.eagains = 0          # EAGAINs in a row

    def on_read(self):
        pass

    def on_write(self):
        pass

    def tick(self, now):
        pass

    def blocked(self, now):
        return self.eagains >= BLOCKED_EAGAINS and now - self.last_ok >= BLOCKED_S

    def send(self, data):
        """Sends what the socket takes of data; 0 when it takes nothing
        (EAGAIN, the swarm's traffic cap, or the server dropped us)."""
        swarm = self.swarm
        if swarm.count["sent"] >= swarm.cap_bytes:
            swarm.count["capped"] += 1
            swarm.set_interest(self, self.interest & ~selectors.EVENT_WRITE)
            return 0
        self.last_try = time.monotonic()
        try:
            n = self.sock.send(data)
        except BlockingIOError:
            swarm.count["eagain"] += 1
            self.eagains += 1
            return 0
        except OSError as exc:
            swarm.lost(self, exc)
            return 0
        swarm.count["sent"] += n
        self.last_ok = self.last_try
        self.eagains = 0
        return n

    def recv(self):
        """What arrived (b"" if nothing yet); None at EOF (the caller
        decides what follows) or when the server dropped us (the peer is
        then replaced: Swarm.lost)."""
        try:
            data = self.sock.recv(1 << 16)
        except BlockingIOError:
            return b""
        except OSError as exc:
            self.swarm.lost(self, exc)
            return None
        if not data:
            return None
        self.swarm.count["received"] += len(data)
        return data


class Swarm:
    """`count` peers of class `kind`, connected at once and then driven by
    one thread until stop(). A peer the server drops (an eviction, a reset)
    is replaced while `reconnects` last; a peer may also replace itself
    (replace()) to start another round. The peers send at most cap_bytes
    in all (the traffic bound)."""

    def __init__(self, port, kind, count, reconnects=0, cap_bytes=1 << 30, **kw):
        self.port = port
        self.kind = kind
        self.kw = kw
        self.cap_bytes = cap_bytes
        self.reconnects_left = reconnects
        self.count = Counter()
        self.errors = Counter()
        self.sel = selectors.DefaultSelector()
        self.peers = set()
        self.failure = None
        self._stop = threading.Event()
        self._next_index = 0
        for _ in range(count):
            self._add()
        self._thread = threading.Thread(target=self._run, name="swarm", daemon=True)
        self._thread.start()

    def _add(self):
        peer = self.kind(self, self._next_index, **self.kw)
        self._next_index += 1
        self.peers.add(peer)
        if peer.interest:
            self.sel.register(peer.sock, peer.interest, peer)
        return peer

    def set_interest(self, peer, events):
        if peer not in self.peers:
            return
        try:
            key = self.sel.get_key(peer.sock)
        except KeyError:
            key = None
        if key is not None and not events:
            self.sel.unregister(peer.sock)
        elif key is not None:
            self.sel.modify(peer.sock, events, peer)
        elif events:
            self.sel.register(peer.sock, events, peer)

    def retire(self, peer, how=None):
        """Closes peer (how=reset: with a RST) and forgets it."""
        if peer not in self.peers:
            return
        self.set_interest(peer, 0)
        self.peers.discard(peer)
        if how == "reset":
            reset(peer.sock)
        else:
            peer.sock.close()

    def replace(self, peer, how=None):
        """Retires peer and connects another while reconnects last."""
        self.retire(peer, how)
        if self.reconnects_left > 0 and not self._stop.is_set():
            self.reconnects_left -= 1
            self.count["reconnects"] += 1
            self._add()

    def lost(self, peer, exc):
        """The server dropped peer (ECONNRESET after an eviction, EPIPE...)."""
        self.count["lost"] += 1
        self.errors[type(exc).__name__] += 1
        self.replace(peer)

    def _run(self):
        try:
            while not self._stop.is_set():
                for key, mask in self.sel.select(timeout=0.01):
                    peer = key.data
                    if mask & selectors.EVENT_READ:
                        peer.on_read()
                    if mask & selectors.EVENT_WRITE and peer in self.peers:
                        peer.on_write()
                now = time.monotonic()
                for peer in list(self.peers):
                    if peer in self.peers:
                        peer.tick(now)
        except BaseException as exc:  # reported by stop()
            self.failure = exc

    def running(self):
        return self._thread.is_alive()

    def all_blocked(self, count):
        """All `count` peers are connected (fewer once the reconnects ran
        out) and blocked (see Peer.blocked)."""
        now = time.monotonic()
        peers = list(self.peers)
        full = len(peers) == count or (peers and self.reconnects_left == 0)
        return full and all(p.blocked(now) for p in peers)

    def summary(self):
        return f"peers={len(self.peers)} {dict(self.count)} errors={dict(self.errors)}"

    def stop(self):
        """Stops the thread and closes every peer (a peer with unread data
        sends a RST, as a process that goes away would). Returns the
        summary as it was at the end. Idempotent."""
        if self._stop.is_set():
            return self.summary_at_stop
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "the swarm thread did not stop"
        self.summary_at_stop = self.summary()
        for peer in list(self.peers):
            self.retire(peer)
        self.sel.close()
        if self.failure is not None:
            raise self.failure
        return self.summary_at_stop


@pytest.fixture
def swarms():
    """swarm(port, kind, count, ...) starts a Swarm; all are stopped at the
    end of the test, also when it fails."""
    started = []

    def start(*args, **kw):
        s = Swarm(*args, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def probe_while_going(scene, swarm, counter, at_least, what):
    """For attacks made of rounds: probes the well-behaved connections
    while the swarm's `counter` goes on growing, lets it reach `at_least`,
    stops the swarm. Asserts that the counter grew during the probes (they
    ran during the attack, not after it) and reached at_least before the
    swarm's reconnects ran out. Returns (the stats after the probes, the
    growth during them, the swarm's summary)."""
    before = swarm.count[counter]
    during = scene.assert_served(what)
    grown = swarm.count[counter] - before
    wait_until(lambda: swarm.count[counter] >= at_least)
    attack = swarm.stop()
    assert grown > 0 and swarm.reconnects_left > 0, \
        f"{what}: the probes did not run while {counter} went up: {attack}"
    assert swarm.count[counter] >= at_least, f"{what}: {attack}"
    return during, grown, attack


# --------------------------------------------------------------------------
# 1. stalled readers
# --------------------------------------------------------------------------

class StalledReader(Peer):
    """Sends as fast as the socket takes it and never reads. Also tries
    every 50 ms when the socket is not reported writable (it may still take
    some: writable means half the send buffer is free), so a stalled one
    fills its send buffer and then sees EAGAIN again and again."""

    rcvbuf = ATTACKER_RCVBUF
    sndbuf = ATTACKER_SNDBUF
    chunk = pattern(1 << 16)

    def on_write(self):
        for _ in range(64):
            if not self.send(self.chunk):
                return

    def tick(self, now):
        if now - self.last_try >= 0.05:
            self.on_write()


def saturated(scene, st, peers):
    """The stalled peers hold what the policy lets them, or were evicted:
    buffers_held is at least 3/4 of min(peers x the per-connection cap, the
    budget, peers x their fair share under pressure), or evictions > 0.
    The fair share (docs/BUFFERS.md rule 4: the budget over the holders
    plus one) is what 64 peers on a 256 x 4 KiB pool may hold: 2 buffers
    each, 128 of the 192. Without it the check asked for 144, which only
    receives in flight past the caps could bring (140 was seen)."""
    budget = st["buffer_budget"]
    fair = max(1, budget // (peers + 1))
    want = min(peers * scene.conn_cap(), budget, peers * fair) * 3 // 4
    return st["buffers_held"] >= want or st["evictions"] > 0


class Settled:
    """Called with stats again and again: true once the server's delivery
    counters (DELIVERY_KEYS) have not moved for BLOCKED_S, i.e. it has
    finished with what the stuck attackers sent. Until then a slow handler
    may still be working through their backlog (see
    test_line_flood_ramp_up_delays_others)."""

    DELIVERY_KEYS = ("recv_ops", "sends_zero_copy", "sends_copied", "sends_coalesced")

    def __init__(self):
        self.values = None
        self.since = time.monotonic()

    def __call__(self, st):
        values = tuple(st[k] for k in self.DELIVERY_KEYS)
        now = time.monotonic()
        if values != self.values:
            self.values, self.since = values, now
        return now - self.since >= BLOCKED_S


def start_saturating(scene, swarms, kind, peers, what, settle=False, **kw):
    """Starts `peers` peers of kind (each replaced once if the server drops
    it, unless kw says otherwise; at most TRAFFIC_PER_PEER_BYTES each) and
    waits until they are all blocked and the server's stats show they took
    effect (asserted). settle=True waits for the server to settle as well
    (Settled): for handlers slow enough that working through the attack's
    backlog takes a while. Not by default: evicted peers reconnect, so
    with evictions the server never settles until the reconnects run
    out."""
    kw.setdefault("reconnects", peers)
    kw.setdefault("cap_bytes", peers * TRAFFIC_PER_PEER_BYTES)
    swarm = swarms(scene.srv.port, kind, peers, **kw)
    settled = Settled() if settle else (lambda st: True)

    def in_force(st):
        return settled(st) and swarm.all_blocked(peers) and saturated(scene, st, peers)

    st = scene.srv.wait_stats(in_force, timeout=SETTLE_S)
    assert swarm.all_blocked(peers) and saturated(scene, st, peers), \
        f"{what}: no saturation after {SETTLE_S} s: {describe(st)}; {swarm.summary()}"
    assert settled(st), f"{what}: the server did not settle in {SETTLE_S} s: {describe(st)}; " \
                        f"{swarm.summary()}"
    assert swarm.count["capped"] == 0, f"{what}: the traffic cap, not the server, stopped " \
                                       f"the attack: {swarm.summary()}"
    return swarm, st


@pytest.mark.timeout(60)
@pytest.mark.parametrize("peers", [1, 16, pytest.param(64, marks=pytest.mark.slow)])
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("handler", HANDLERS)
def test_stalled_readers(scenes, swarms, handler, config, peers):
    """Peers that send as fast as they can and never read (SO_RCVBUF 4 KiB)
    until every one is blocked and the server holds what its policy lets
    them hold (or evicted some); evicted peers reconnect (up to `peers`
    times) to keep the pressure on. Before the buffer policy, 16 such peers
    took all 1024 buffers and the server stopped for everyone (5 with
    256 x 4 KiB). TRAFFIC: at most 64 MiB per peer (measured: 3 to 7 MiB
    per peer to saturate)."""
    scene = scenes(handler, config)
    what = f"{peers} stalled readers ({handler}, {config})"
    swarm, st = start_saturating(scene, swarms, StalledReader, peers, what)
    during = scene.assert_served(what)
    assert swarm.running() and swarm.peers, f"{what}: the attack ended early: {swarm.summary()}"
    scene.assert_recovered(what, swarm, at_saturation=st, during=during)


# --------------------------------------------------------------------------
# 2. slowloris
# --------------------------------------------------------------------------

class Slowloris(Peer):
    """Sends one byte every 100 ms and never reads."""

    interest = 0
    period_s = 0.1

    def __init__(self, swarm, index):
        super().__init__(swarm, index)
        self.due = time.monotonic() + self.period_s * (index % 10) / 10  # spread out

    def tick(self, now):
        if now >= self.due:
            self.send(b"x")
            self.due = now + self.period_s


@pytest.mark.timeout(60)
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("handler", HANDLERS)
def test_slowloris(scenes, swarms, handler, config):
    """200 peers that each send one byte every 100 ms and never read; in
    force once all are connected and the server has received at least 5
    bytes from each. TRAFFIC: at most 1 MiB (measured: 200 peers x 10
    bytes/s for ~1 s, ~2 KB)."""
    peers = 200
    scene = scenes(handler, config)
    srv = scene.srv
    what = f"slowloris x{peers} ({handler}, {config})"
    before = srv.stats()["bytes_received"]
    swarm = swarms(srv.port, Slowloris, peers, cap_bytes=1 << 20)

    def in_force(st):
        return (st["connections_active"] == peers + 1
                and st["bytes_received"] - before >= 5 * peers)

    st = srv.wait_stats(in_force, timeout=SETTLE_S)
    assert in_force(st), f"{what}: not in force: {describe(st)}; {swarm.summary()}"
    during = scene.assert_served(what)
    assert swarm.count["lost"] == 0, f"{what}: the server dropped a peer that was sending: " \
                                     f"{swarm.summary()}"
    scene.assert_recovered(what, swarm, in_force=st, during=during)


# --------------------------------------------------------------------------
# 3. floods of 1-byte segments
# --------------------------------------------------------------------------

class ByteFlood(StalledReader):
    """TCP_NODELAY (connect() sets it) and one-byte send() calls as fast as
    it can; reads everything that comes back, or (reads=False) never."""

    chunk = b"x"

    def __init__(self, swarm, index, reads):
        self.interest = selectors.EVENT_WRITE | (selectors.EVENT_READ if reads else 0)
        self.rcvbuf = None if reads else ATTACKER_RCVBUF
        self.sndbuf = None
        super().__init__(swarm, index)

    def on_read(self):
        if self.recv() is None and self in self.swarm.peers:  # EOF: the server closed
            self.swarm.count["eof"] += 1
            self.swarm.replace(self)


FLOOD_PEERS = 8
FLOOD_S = 2.0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("reads", [True, False], ids=["reading", "never-reads"])
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("handler", HANDLERS)
def test_one_byte_segment_flood(scenes, swarms, handler, config, reads):
    """8 peers sending 1-byte segments as fast as they can for 2 s, reading
    the echo or never reading; buffers_in_use is sampled all along and must
    stay below buffers_total. In force: the peers sent 10000+ one-byte
    segments and the server's receives averaged under 64 bytes. TRAFFIC: 2 s, at most 16 MiB (measured
    ~0.5 MB: one thread's 1-byte sends)."""
    scene = scenes(handler, config)
    srv = scene.srv
    what = f"1-byte flood x{FLOOD_PEERS} {'reading' if reads else 'never reading'} " \
           f"({handler}, {config})"
    before = srv.stats()
    swarm = swarms(srv.port, ByteFlood, FLOOD_PEERS, cap_bytes=16 << 20, reads=reads)
    samples, during = [], None
    deadline = time.monotonic() + FLOOD_S
    next_probe = time.monotonic() + FLOOD_S / 4
    while time.monotonic() < deadline:
        samples.append(srv.stats())
        if time.monotonic() >= next_probe:
            during = scene.assert_served(what, probes=1)
            next_probe += FLOOD_S / 4
        time.sleep(0.01)
    peak = max(samples, key=lambda st: st["buffers_in_use"])
    last = samples[-1]
    attack = swarm.stop()
    segments = last["recv_ops"] - before["recv_ops"]
    got = last["bytes_received"] - before["bytes_received"]
    info = f"{what}: {len(samples)} samples, peak {describe(peak)}; {segments} receives of " \
           f"{got} bytes; {attack}"
    assert during is not None, info
    assert peak["buffers_in_use"] < peak["buffers_total"], info
    if reads:  # nothing lets the server drop a peer that reads what it is sent
        assert swarm.count["lost"] == swarm.count["eof"] == 0, info
    # In force: 10000+ one-byte sends, and the server's receives tiny on
    # average. How many receives they make is the backend's: io_uring posts
    # about one per segment, epoll's level-triggered recv takes what has
    # queued since the last one (a few bytes), so fewer but as tiny.
    assert swarm.count["sent"] >= 10_000, f"not in force: {info}"
    assert segments >= 1_000 and got < 64 * segments, f"not in force: {info}"
    scene.assert_recovered(info, during=during)


# --------------------------------------------------------------------------
# 4. many tiny zero-copy slices
# --------------------------------------------------------------------------

@pytest.fixture(scope="session")
def lines_library(tmp_path_factory):
    """tests/lines_handler.c built as a shared object (for handler
    "lines-c"); skips without a C compiler."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build tests/lines_handler.c")
    out = tmp_path_factory.mktemp("lines") / "liblines_handler.so"
    include = os.path.join(os.path.dirname(TESTS_DIR), "include")
    subprocess.run([cc, "-std=c11", "-O2", "-Wall", "-Werror", "-shared", "-fPIC",
                    "-I", include, os.path.join(TESTS_DIR, "lines_handler.c"), "-o", str(out)],
                   check=True, capture_output=True, timeout=60)
    return str(out)


def start_line_flood(scenes, swarms, lines_library, handler, config, peers):
    """A line handler's server, its baseline, and `peers` LineFloods that
    saturate it: (scene, swarm, stats at saturation, what)."""
    cfg = {"lines_library": lines_library} if handler == "lines-c" else {}
    scene = scenes(handler, config, **cfg)
    what = f"{peers} line flooders ({handler}, {config})"
    swarm, st = start_saturating(scene, swarms, LineFlood, peers, what, settle=True)
    return scene, swarm, st, what


class LineFlood(StalledReader):
    """Floods 16-byte lines (each one answer slice of 15 bytes) and never
    reads."""

    chunk = b"".join(b"%015d\n" % i for i in range(4096))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("peers", [1, pytest.param(4, marks=pytest.mark.slow)])
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("handler", LINE_HANDLERS)
def test_tiny_zero_copy_slices(scenes, swarms, lines_library, handler, config, peers):
    """A handler that answers every line with a zero-copy slice of the
    received buffer (the line without its newline: slices of one buffer
    are not contiguous), attacked by peers that flood 16-byte lines and
    never read. Before the fix, one such peer filled the server-wide send
    chunk table and other connections' sends failed ("send chunk table
    full"); now chunks are capped per connection and small slices packed:
    sends_coalesced > 0 is asserted, and the other connections get every
    answer. TRAFFIC: at most 64 MiB per peer (measured: ~5 MiB)."""
    scene, swarm, st, what = start_line_flood(scenes, swarms, lines_library, handler, config,
                                              peers)
    during = scene.assert_served(what)
    assert during["sends_coalesced"] > 0, f"{what}: no small slice was packed: " \
                                          f"{describe(during)}"
    scene.assert_recovered(what, swarm, at_saturation=st, during=during)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_slice_answers_are_never_refused(scenes, swarms, lines_library):
    """zcn_server_send's contract: "While a connection is over its limits
    its received data is not delivered, so a handler that sends at most
    what it received per callback never sees this error" (QUEUE_FULL). The
    line handlers send less than they received, as slices of it; under the
    flood of test_tiny_zero_copy_slices (4 peers) some of the flooders'
    slices used to be refused all the same ("a 15-byte send would exceed
    its buffer cap (802810 bytes in 65 buffers queued; limits 1048576
    bytes, 65 buffers now)", or "its chunk cap" with 18 of 48 buffers
    queued): an answer can reference the delivered buffer and pack pieces
    into a new one, two buffers where the delivery gate counted one, and
    the cap can shrink to a fair share meanwhile. Whether an attack hits it
    depends on timing (seen with both handlers and both configs, in 50-90%
    of attacks before the fix), so this runs up to 8 attacks, alternating
    handlers and configs, and fails at the first refusal. TRAFFIC: at most 8 x 4 x 64 MiB (measured ~20 MiB per attack)."""
    peers = 4
    for attempt in range(8):
        handler = LINE_HANDLERS[attempt % 2]
        config = list(CONFIGS)[attempt // 2 % 2]
        scene, swarm, st, what = start_line_flood(scenes, swarms, lines_library, handler,
                                                  config, peers)
        attack = swarm.stop()
        assert st["app_refused"] == 0, f"attack {attempt + 1}, {what}: {st['app_refused']} " \
                                       f"sends refused, the first: {st['app_first_refusal']}; " \
                                       f"{describe(st)}; {attack}"
        scene.srv.quit()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_line_flood_ramp_up_delays_others(scenes, swarms):
    """Liveness while a line flood ramps up, before the flooders' receives
    pause: 16 peers flood 16-byte lines at the Python line handler, which
    spends ~11 ms of Python on each 16 KiB buffer (1024 slices). A poll
    batch used to carry up to 256 events in completion order, nearly all
    the flooders' (one run_once measured 2.9 s for 254 events), and the old
    connection's line waited behind one or two such batches: answered after
    4.7-7.7 s in every run with 16 flooders (1.3-7.2 s with 8). A batch
    carries at most 2 buffers of one connection now. The probes
    (old and new connection) run every 0.1 s for 10 s and each must be
    answered within LIVENESS_S. test_tiny_zero_copy_slices probes only once
    the server has settled, so it passes. TRAFFIC: at most 16 x 64 MiB
    (measured ~45 MB)."""
    peers = 16
    scene = scenes("lines")
    what = f"{peers} line flooders ramping up (lines, default)"
    swarm = swarms(scene.srv.port, LineFlood, peers, reconnects=peers,
                   cap_bytes=peers * TRAFFIC_PER_PEER_BYTES)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        during = scene.assert_served(what, probes=1)
        time.sleep(0.1)
    scene.assert_recovered(what, swarm, during=during)


# --------------------------------------------------------------------------
# 5. resets in the middle of large sends
# --------------------------------------------------------------------------

class ResetMidEcho(Peer):
    """Sends a 4 MiB request while reading its echo and, after `part`
    bytes of the echo (64 KiB .. 3 MiB, by index), resets (SO_LINGER {1, 0}
    + close) while the server is still sending; a new peer starts the next
    round."""

    interest = selectors.EVENT_READ | selectors.EVENT_WRITE
    rcvbuf = 64 << 10           # the rest of the echo waits in the server
    request = pattern(4 << 20)

    def __init__(self, swarm, index):
        super().__init__(swarm, index)
        self.sent = self.got = 0
        self.part = (64 << 10) + index * 397_123 % (3 << 20)

    def on_write(self):
        self.sent += self.send(memoryview(self.request)[self.sent:self.sent + (256 << 10)])
        if self.sent == len(self.request):
            self.swarm.set_interest(self, selectors.EVENT_READ)

    def on_read(self):
        data = self.recv()
        if data is None:
            if self in self.swarm.peers:  # EOF: the server closed on us
                self.swarm.count["eof"] += 1
                self.swarm.replace(self)
            return
        self.got += len(data)
        if self.got >= self.part:
            self.swarm.count["resets"] += 1
            self.swarm.count["reset_at_bytes"] += self.got
            self.swarm.replace(self, how="reset")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("handler", HANDLERS)
def test_resets_mid_large_send(scenes, swarms, handler, config):
    """8 peers at a time, each round a 4 MiB request, part of its echo read
    (SO_RCVBUF 64 KiB: the rest waits in the server), then a reset
    mid-transfer, round after round. The well-behaved connections are
    probed while rounds go on (asserted: resets happened during the
    probes); at least 48 rounds in all, every one ended by our reset (none
    closed by the server, none reset by it but those it evicted). TRAFFIC: at most 200 rounds x (4 MiB
    sent + 3.1 MiB read); measured 48 to 60 rounds, ~320 MB."""
    at_once, rounds_min, rounds_max = 8, 48, 200
    scene = scenes(handler, config)
    what = f"resets mid-echo, {at_once} at a time ({handler}, {config})"
    swarm = swarms(scene.srv.port, ResetMidEcho, at_once, reconnects=rounds_max - at_once)
    assert wait_until(lambda: swarm.count["resets"] >= at_once), \
        f"{what}: not in force: {swarm.summary()}"
    during, resets_during, attack = probe_while_going(scene, swarm, "resets", rounds_min, what)
    # None closed by the server, and none reset by it but the ones its buffer
    # policy evicted: a peer that stopped reading for 100 ms while others
    # waited for buffers (docs/BUFFERS.md, rule 7).
    evicted = scene.srv.stats()["evictions"]
    assert swarm.count["eof"] == 0 and swarm.count["lost"] <= evicted, \
        f"{what}: {attack}; evictions {evicted}"
    scene.assert_recovered(f"{what}, {resets_during} resets during the probes", swarm,
                           during=during)


# --------------------------------------------------------------------------
# 6. half-closes
# --------------------------------------------------------------------------

class HalfCloser(Peer):
    """Sends a request and shutdown(SHUT_WR) right after its last byte.
    reads=True: reads the echo until EOF and checks it (count "complete" or
    "bad_answer"), then a new peer starts the next round; reads=False:
    never reads."""

    def __init__(self, swarm, index, reads, size):
        self.reads = reads
        self.interest = selectors.EVENT_WRITE | (selectors.EVENT_READ if reads else 0)
        self.rcvbuf = None if reads else ATTACKER_RCVBUF
        super().__init__(swarm, index)
        self.request = pattern(size, seed=index % 251)
        self.sent = 0
        self.answer = bytearray()

    def on_write(self):
        self.sent += self.send(memoryview(self.request)[self.sent:])
        if self.sent == len(self.request) and self in self.swarm.peers:
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                self.swarm.lost(self, exc)
                return
            self.swarm.count["half_closed"] += 1
            self.swarm.set_interest(self, selectors.EVENT_READ if self.reads else 0)

    def tick(self, now):
        if not self.reads and self.sent < len(self.request) and now - self.last_try >= 0.05:
            self.on_write()  # blocked: retried, so it counts its EAGAINs

    def blocked(self, now):
        return self.sent == len(self.request)  # half-closed: all it will do

    def on_read(self):
        data = self.recv()
        if data is None:
            if self in self.swarm.peers:  # EOF after the echo
                ok = self.answer == self.request
                self.swarm.count["complete" if ok else "bad_answer"] += 1
                self.swarm.replace(self)
            return
        self.answer += data


@pytest.mark.timeout(60)
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("handler", HANDLERS)
def test_half_close_then_read(scenes, swarms, handler, config):
    """200 peers at a time, 1000 rounds in all: a 32 KiB request, SHUT_WR at
    once, then the whole echo (the server answers after the FIN) and EOF.
    Probed while the rounds run. TRAFFIC: 1000 x 32 KiB each way (64 MiB)."""
    at_once, rounds, size = 200, 1000, 32 << 10
    scene = scenes(handler, config)
    srv = scene.srv
    what = f"half-close {at_once} at a time, {rounds} rounds ({handler}, {config})"
    before = srv.stats()
    swarm = swarms(srv.port, HalfCloser, at_once, reconnects=rounds - at_once, reads=True,
                   size=size)
    ok = wait_until(lambda: swarm.count["complete"] >= at_once)
    assert ok, f"{what}: not in force: {swarm.summary()}"
    during = scene.assert_served(what)
    done = wait_until(lambda: not swarm.peers)
    attack = swarm.stop()
    assert done and swarm.count["complete"] == rounds, f"{what}: {attack}"
    assert swarm.count["bad_answer"] == swarm.count["lost"] == 0, f"{what}: {attack}"
    st = scene.assert_recovered(what, swarm, during=during)
    probes = 3  # each probe's new connection closes too
    assert st["eofs"] - before["eofs"] >= rounds, f"{what}: {describe(st)}"
    assert st["connections_closed"] - before["connections_closed"] == rounds + probes, \
        f"{what}: {describe(st)}"



@pytest.mark.timeout(60)
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("handler", HANDLERS)
def test_half_close_never_read(scenes, swarms, handler, config):
    """64 peers that send a 4 MiB request, SHUT_WR once it is all in their
    send buffer, and never read (SO_RCVBUF 4 KiB). Their echoes cannot
    leave, so the server holds what its policy lets them hold; in force
    once every peer has half-closed and the server is saturated (as for
    stalled readers; an evicted peer is replaced, up to 64 times). A
    smaller request would not do: the server's kernel send buffer
    (autotuned up to 4 MiB) takes a 1 MiB echo whole, and the server closes
    the connection with nothing held. They leave with a RST (unread data).
    TRAFFIC: at most 128 x 4 MiB. With the Python echo and 256 x 4 KiB, a
    connection used to get stuck here about one run in five: the echo of a
    small slice refused (its cap counted its deferred receives), then an
    empty send queue, deferred data and no receive armed for good."""
    peers = 64
    scene = scenes(handler, config)
    what = f"{peers} half-closers that never read ({handler}, {config})"
    swarm, st = start_saturating(scene, swarms, HalfCloser, peers, what, reads=False,
                                 size=4 << 20)
    during = scene.assert_served(what)
    scene.assert_recovered(what, swarm, at_saturation=st, during=during)


# --------------------------------------------------------------------------
# 7. idle peers and accept floods
# --------------------------------------------------------------------------

class Idle(Peer):
    """Connects and sends nothing."""

    interest = 0


class Flash(Peer):
    """A non-blocking connect; once it is established, closes (odd index:
    with a RST) and a new one starts, so `count` connects are always in
    flight."""

    def __init__(self, swarm, index):
        self.swarm = swarm
        self.index = index
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.connect_ex(("127.0.0.1", swarm.port))

    def on_write(self):
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self.swarm.count["connected" if err == 0 else os.strerror(err)] += 1
        self.swarm.replace(self, how="reset" if self.index % 2 else None)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("handler", HANDLERS)
def test_accept_flood_among_idle_peers(scenes, swarms, handler):
    """500 idle peers stay connected; then connects, 256 in flight at any
    time, each closed (half with a RST) once established, until 3000 are
    through. In force once the server has accepted 1000 of them; the probes
    run while the flood goes on (asserted: connects completed during the
    probes). TRAFFIC: no data; at most 500 + 20000 connections (measured
    ~3500)."""
    idle, at_once, flashes_min, flashes_max = 500, 256, 3000, 20_000
    scene = scenes(handler)
    srv = scene.srv
    what = f"{idle} idle peers, accept flood ({handler})"
    need = idle + at_once + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    before = srv.stats()["connections_accepted"]
    idlers = swarms(srv.port, Idle, idle)
    st = srv.wait_stats(lambda st: st["connections_active"] == idle + 1)
    assert st["connections_active"] == idle + 1, f"{what}: {describe(st)}"
    flood = swarms(srv.port, Flash, at_once, reconnects=flashes_max - at_once)
    st = srv.wait_stats(lambda st: st["connections_accepted"] - before >= idle + 1000)
    assert st["connections_accepted"] - before >= idle + 1000, f"{what}: {describe(st)}"
    during, connected_during, attack = probe_while_going(scene, flood, "connected",
                                                         flashes_min, what)
    assert set(flood.count) <= {"connected", "reconnects"}, f"{what}: connects failed: {attack}"
    assert idlers.count["lost"] == 0, f"{what}: idle peers dropped: {idlers.summary()}"
    scene.assert_recovered(f"{what}, {connected_during} connects during the probes", flood,
                           idlers, during=during)
    st = srv.stats()
    assert st["connections_rejected"] == 0, f"{what}: {describe(st)}"
