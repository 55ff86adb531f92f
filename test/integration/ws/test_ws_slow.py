"""
Slow WebSocket clients (issue 9, /tmp/ws-spec.md "Limits, slow clients,
closes"): a client that does not keep up is conflated past
limits.ws_send_buffer (latest value per device and metric, "conflated":
true), closed with 1013 when it stays behind for limits.ws_slow_timeout,
and never slows down the other clients of its worker.

The slow clients are plain sockets with a small SO_RCVBUF, so the kernel
cannot hide the backlog; the fast ones read in threads.
"""

import socket
import threading
import time

import pytest

import stack
from ingest_util import ingest, now_ms  # noqa: F401
from ws_util import (WsClient, RatePublisher, check_telemetry_msg, id_key,
                     metric_sum, seq_of, wait_ws_conns, ws_metrics_text,
                     ws_node, Frame, OP_CLOSE)  # noqa: F401

PAD = "p" * 400


def payload(base_ts):
    """message k: its seq, a 400-byte string and one of 5 metrics m0..m4
    (so the latest value per metric differs from the latest message)."""
    return lambda k: {"ts": base_ts + k, "seq": k, "pad": PAD, "m%d" % (k % 5): k}


class Reader:
    """Pumps a WsClient in a thread until stop()."""

    def __init__(self, c):
        self.c = c
        self.error = None
        self._stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.c.pump(0.2)
            except socket.timeout:
                continue
            except Exception as e:  # noqa: BLE001
                self.error = repr(e)
                return

    def stop(self):
        self._stop.set()
        self.t.join(5)


def latencies(c, pub):
    out = []
    with pub.lock:
        sent = dict(pub.sent)
    for m, t in zip(c.log, c.times):
        if m.get("type") == "telemetry":
            out.append(t - sent[seq_of(m)][1])
    return sorted(out)


def parse_frames(data):
    """Server frames in data (a prefix of a stream); a cut-off last frame
    is dropped."""
    out = []
    i = 0
    while i + 2 <= len(data):
        b0, b1 = data[i], data[i + 1]
        n = b1 & 0x7F
        j = i + 2
        if n == 126:
            if j + 2 > len(data):
                break
            n = int.from_bytes(data[j:j + 2], "big")
            j += 2
        elif n == 127:
            if j + 8 > len(data):
                break
            n = int.from_bytes(data[j:j + 8], "big")
            j += 8
        if j + n > len(data):
            break
        out.append(Frame(b0 >> 7, (b0 >> 4) & 7, b0 & 0xF, data[j:j + n]))
        i = j + n
    return out


@pytest.mark.timeout(90)
def test_never_reading_client_is_conflated_then_closed_1013(ws_node):
    ctx = ws_node({"limits": {"ws_send_buffer": "64k", "ws_slow_timeout": "3s"}},
                  workers=1)
    f = ctx.f
    d = ctx.dev("slow")
    base = now_ms() - 100000
    fast = [WsClient.connect(f) for _ in range(3)]
    for c in fast:
        c.subscribe([d])
    slow = WsClient.connect(f, rcvbuf=4096)
    slow.subscribe([d])                       # and never reads again
    readers = [Reader(c) for c in fast]
    closes0 = metric_sum(f, "fleetd_ws_closes_total", code="1013")
    pub = RatePublisher(ctx.mq, [d], rate=400, make=payload(base)).start()
    t0 = time.monotonic()
    seen = {"conflated_at": None, "closed_at": None, "max_gauge": 0,
            "frames_conflated": 0}
    try:
        while time.monotonic() - t0 < 25:
            g = metric_sum(f, "fleetd_ws_conflated_connections")
            fc = metric_sum(f, "fleetd_ws_frames_conflated_total")
            cl = metric_sum(f, "fleetd_ws_closes_total", code="1013") - closes0
            seen["max_gauge"] = max(seen["max_gauge"], g)
            seen["frames_conflated"] = fc
            now = time.monotonic() - t0
            if (g >= 1 or fc > 0) and seen["conflated_at"] is None:
                seen["conflated_at"] = now
            if cl >= 1:
                seen["closed_at"] = now
                break
            time.sleep(0.2)
        time.sleep(1.0)                   # fast clients go on after the close
    finally:
        pub.stop()
    sent = pub.by_device(acked_only=False)[d]
    acked = pub.by_device()[d]
    try:
        stack.wait_until(lambda: all(max((seq_of(m) for m in c.telemetry()),
                                         default=-1) >= acked[-1] for c in fast),
                         15, what="fast clients have the last message")
    except TimeoutError:
        pass
    for r in readers:
        r.stop()
    # what the never-reading client gets when it finally reads: whatever
    # was in flight, then (if it fit) close 1013, then the end
    slow.conn.sock.settimeout(5)
    data = slow.conn.buf
    try:
        while True:
            chunk = slow.conn.sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, socket.timeout) as e:
        ended = not isinstance(e, socket.timeout)
    else:
        ended = True
    slow.abort()
    frames = parse_frames(data)
    closes = [fr for fr in frames if fr.opcode == OP_CLOSE]

    diag = "\nmetrics seen %r (t=0 publisher start)\n%s" % (seen, ws_metrics_text(f))
    assert seen["conflated_at"] is not None, \
        "the never-reading client was not conflated (gauge and " \
        "frames_conflated_total stayed 0) after %d messages of ~500 bytes%s" % (
            len(sent), diag)
    assert seen["closed_at"] is not None, \
        "no close with 1013 within 25 s of publishing%s" % diag
    took = seen["closed_at"] - seen["conflated_at"]
    assert 2.0 <= took <= 10.0, \
        "closed %.1f s after it was first seen conflated (ws_slow_timeout 3s)%s" % (
            took, diag)
    assert ended, "the slow client's TCP connection was not closed"
    if closes:
        assert closes[-1].close_code == 1013, closes[-1]
    wait_ws_conns(f, 3)
    assert metric_sum(f, "fleetd_ws_conflated_connections") == 0, ws_metrics_text(f)

    # the fast clients: everything, once, never conflated, with low latency
    for i, (c, r) in enumerate(zip(fast, readers)):
        assert r.error is None, "fast client %d: %s" % (i, r.error)
        ms = c.telemetry()
        seqs = [seq_of(m) for m in ms]
        assert not [m for m in ms if m.get("conflated")], \
            "fast client %d got conflated messages" % i
        missing = sorted(set(acked) - set(seqs))
        assert not missing and len(seqs) == len(set(seqs)), \
            "fast client %d: %d received of %d, missing %s, %d twice" % (
                i, len(seqs), len(acked), missing[:10], len(seqs) - len(set(seqs)))
        for m in ms[:50]:
            check_telemetry_msg(m, base)
        lat = latencies(c, pub)
        p99 = lat[int(len(lat) * 0.99) - 1]
        assert p99 < 1.0 and lat[-1] < 2.0, \
            "fast client %d latency p50 %.3f p99 %.3f max %.3f s" % (
                i, lat[len(lat) // 2], p99, lat[-1])
    for c in fast:
        c.close()
    print("never-reading client: conflated at %.1f s, closed at %.1f s; %d messages"
          % (seen["conflated_at"], seen["closed_at"], len(sent)))


@pytest.mark.timeout(90)
def test_slow_reader_gets_conflated_current_values(ws_node):
    ctx = ws_node({"limits": {"ws_send_buffer": "16k", "ws_slow_timeout": "60s"}},
                  workers=1)
    f = ctx.f
    d = ctx.dev("slowr")
    base = now_ms() - 100000
    fast = WsClient.connect(f)
    fast.subscribe([d])
    fr = Reader(fast)
    slow = WsClient.connect(f, rcvbuf=4096)
    slow.subscribe([d])
    stop = threading.Event()
    lock = threading.Lock()

    def trickle():                       # 2 KB every 0.1 s
        while not stop.is_set():
            try:
                slow.conn.sock.settimeout(0.1)
                chunk = slow.conn.sock.recv(2048)
            except socket.timeout:
                continue
            except OSError:
                return
            if not chunk:
                return
            with lock:
                slow.conn.buf += chunk
            time.sleep(0.1)
    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    pub = RatePublisher(ctx.mq, [d], rate=400, count=1200, make=payload(base)).start()
    try:
        pub.wait_done(30)
    finally:
        pub.stop()
    acked = pub.by_device()[d]
    assert acked and acked[-1] == 1199, "publisher: %d acked" % len(acked)
    last = acked[-1]
    stop.set()
    t.join(5)
    # now read at full speed until the newest values are in
    try:
        slow.wait_for(lambda m: m.get("type") == "telemetry" and
                      m["values"].get("seq") == last, 20,
                      "the last message's values on the slow client")
    finally:
        try:
            stack.wait_until(lambda: any(seq_of(m) == last for m in fast.telemetry()),
                             10, what="fast client has the last message")
        finally:
            fr.stop()
    slow.drain(quiet=0.5)
    slow.ping()                                      # still open
    assert slow.closed is None

    ms = slow.telemetry()
    by_id = {m["id"]: m for m in fast.telemetry()}
    conflated = [m for m in ms if m.get("conflated") is True]
    diag = "slow client: %d messages, %d conflated, of %d published\n%s" % (
        len(ms), len(conflated), len(acked), ws_metrics_text(f))
    assert conflated, "no conflated message for a client reading 20 KB/s of " \
        "~200 KB/s: " + diag
    assert len(ms) < len(acked), diag
    ids = [m["id"] for m in ms]
    assert ids == sorted(ids, key=id_key) and len(set(ids)) == len(ids), \
        "slow client's ids not increasing: %s" % ids[:40]
    for m in ms:
        check_telemetry_msg(m)
        assert m["device"] == d
        assert m["id"] in by_id, "id %s that the fast client never saw" % m["id"]
        if m.get("conflated"):
            # id = the newest message merged; its values are that message's
            # or older ones' latest
            newest = by_id[m["id"]]
            assert m["values"]["seq"] == newest["values"]["seq"], (m, newest)
            for k, v in m["values"].items():
                if k.startswith("m"):
                    assert v <= newest["values"]["seq"] and v % 5 == int(k[1:]), (k, m)
        else:
            assert m["values"] == by_id[m["id"]]["values"], (m, by_id[m["id"]])
    # merging what it got, in order, gives the device's current values
    merged = {}
    for m in ms:
        merged.update(m["values"])
    want = {"seq": last, "pad": PAD}
    for j in range(5):
        want["m%d" % j] = max(k for k in acked if k % 5 == j)
    assert merged == want, "slow client's latest values %r, expected %r" % (
        {k: v for k, v in merged.items() if k != "pad"},
        {k: v for k, v in want.items() if k != "pad"})
    assert metric_sum(f, "fleetd_ws_frames_conflated_total") > 0, ws_metrics_text(f)
    assert metric_sum(f, "fleetd_ws_closes_total", code="1013") == 0, ws_metrics_text(f)
    # the fast one got everything, unconflated
    seqs = [seq_of(m) for m in fast.telemetry()]
    assert sorted(seqs) == acked, "fast client: %d of %d" % (len(seqs), len(acked))
    slow.close()
    fast.close()
