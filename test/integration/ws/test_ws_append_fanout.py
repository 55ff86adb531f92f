"""
Fan-out at append (worker/ingest/fl_fanout.h): the native MQTT intake
appends each socket read's messages to the stream and fans out the
telemetry among them in one Redis script call; the stream entry carries
f = 1 and the consumer stores it without fanning it out again. What a
dashboard must see:

- every message once, ids growing, whether the intake or the consumer
  fanned it out (FLEETD_INTAKE_FANOUT=0 leaves it all to the consumer);
- the same time as the stored row and the shadow, also for points whose
  time is the arrival (no "ts", relative SenML times), which the script
  takes from the stream entry id;
- nothing of what the consumer refuses or cuts (a point beyond
  limits.max_clock_skew, an invalid payload);
- messages while PostgreSQL holds the consumer back: with the table
  locked and small batches the consumer soon stops reading, but the
  intake keeps fanning out;
- across a worker killed with SIGKILL in the middle of a burst, a
  message is shown as many times as the stream holds it: a broker
  redelivery that the dedup record catches is neither appended nor shown
  again;
- a device whose shadow update Redis refuses costs only its own live
  updates, in either script: stored, acknowledged, counted as a failure.
"""

import json
import os
import signal
import socket
import threading

import pytest

import stack
from ingest_util import ingest, now_ms, to_bytes, uniq  # noqa: F401
from ws_util import (WsClient, check_telemetry_msg, increasing, seq_of,
                     ws_conns)

NO_FANOUT = {"FLEETD_INTAKE_FANOUT": "0"}


def entries(ctx, device):
    """[(fields)] of the device's stream entries, as {str: bytes}."""
    out = []
    for _, fields in ctx.redis.xrange(ctx.stream_key, "-", "+"):
        t = fields.get(b"t", b"").decode()
        if t.startswith("devices/%s/" % device):
            out.append({k.decode(): v for k, v in fields.items()})
    return out


def node(ingest, env=None, extra=None, workers=2):  # noqa: F811
    return ingest(extra=extra, prefix="wa%s:" % uniq(), workers=workers,
                  env=env)


@pytest.mark.parametrize("env", [None, NO_FANOUT], ids=["append", "consumer"])
@pytest.mark.timeout(90)
def test_times_match_the_stored_rows(ingest, env):  # noqa: F811
    """Messages without ts, with a relative SenML time, a batch mixing
    both, one with a point beyond max_clock_skew and an invalid one: the
    dashboard gets each accepted point once with the time PostgreSQL
    stored, the shadow agrees; the cut point and the invalid message are
    not shown; telemetry entries are marked f=1 exactly when the intake
    fanned them out."""
    ctx = node(ingest, env)
    d = ctx.dev("times")
    ctx.wait_idle()
    pub0 = ctx.metric_sum("fleetd_ingest_published_total") or 0
    c = WsClient.connect(ctx.f)
    c.subscribe([d])
    far = now_ms() + 2 * 86400 * 1000     # past the 1 d default skew
    sent = [
        {"seq": 0},
        {"seq": 1, "s": "x"},
        [{"n": "seq", "v": 2, "t": -1.5}, {"n": "q", "v": 7, "t": -1.5}],
        [{"seq": 3}, {"ts": now_ms() - 1000, "seq": 4}],
        [{"ts": far, "seq": 5}, {"seq": 6}],
    ]
    for p in sent:
        ctx.send(d, p)
    ctx.send(d, b"{not json")
    ctx.send(d, {"fw": "1.2"}, kind="state")
    got = c.wait_telemetry(6, device=d, timeout=15)
    ctx.wait_rows(d, 8)                   # seq 0..4, 6 + s + q
    ctx.wait_idle()
    c.drain(quiet=0.5)
    got = c.telemetry(d)
    for m in got:
        check_telemetry_msg(m)
    seqs = [seq_of(m) for m in got]
    assert sorted(seqs) == [0, 1, 2, 3, 4, 6], got
    assert increasing([m["id"] for m in got]) is None, got
    rows = {(metric, ts) for metric, ts, *_ in ctx.rows(d)}
    stored_seq = {}
    for metric, ts, value, _, _ in ctx.rows(d):
        if metric == "seq":
            stored_seq[int(value)] = ts
    for m in got:
        assert stored_seq[seq_of(m)] == m["ts"], \
            "seq %d: shown at %d, stored at %d" % (
                seq_of(m), m["ts"], stored_seq[seq_of(m)])
        for k in m["values"]:
            assert (k, m["ts"]) in rows, (k, m, sorted(rows))
    sh = ctx.shadow(d)
    newest = max(got, key=lambda m: (m["ts"], int(m["id"])))
    assert int(sh["t:seq"]) == max(stored_seq.values()), (sh, stored_seq)
    assert int(sh["t:q"]) == stored_seq[2], (sh, stored_seq)
    assert newest["ts"] == max(stored_seq.values())
    # marks: telemetry with points fanned out at append carries f=1
    es = entries(ctx, d)
    tele = [e for e in es if e["t"].endswith(b"/telemetry")]
    state = [e for e in es if e["t"].endswith(b"/state")]
    assert len(tele) == 6 and len(state) == 1, es
    marked = [e for e in tele if e.get("f") == b"1"]
    if env is None:
        assert len(marked) == 5, tele      # all but the invalid one
        assert all(b"not json" not in e["p"] for e in marked), marked
    else:
        assert marked == [], tele
    assert "f" not in state[0]
    assert ctx.metric_sum("fleetd_ingest_published_total") - pub0 == 6
    c.close()


@pytest.mark.parametrize("env", [None, NO_FANOUT], ids=["append", "consumer"])
@pytest.mark.timeout(120)
def test_dashboards_live_while_the_consumer_is_held_back(ingest, env):  # noqa: F811
    """The telemetry table is locked and batches hold 5 entries: the
    consumer stores nothing and, its two batches full, reads no more. With
    the fan-out at append the dashboard still gets all 40 messages, in
    order; left to the consumer it gets only what the two batches hold.
    Unlocked, all 40 are stored once and nothing is shown twice."""
    ctx = node(ingest, env, extra={"ingest": {"batch": 5}}, workers=1)
    d = ctx.dev("held")
    ctx.wait_idle()
    pub0 = ctx.metric_sum("fleetd_ingest_published_total") or 0
    base_ts = now_ms() - 60000
    c = WsClient.connect(ctx.f)
    c.subscribe([d])
    n = 40
    locker = ctx.pg_service.connect()
    try:
        cur = locker.cursor()
        cur.execute("BEGIN")
        cur.execute("LOCK TABLE telemetry IN SHARE MODE")
        for s in range(n):
            ctx.send(d, {"ts": base_ts + s, "seq": s})
        if env is None:
            got = c.wait_telemetry(n, device=d, timeout=15)
            assert [seq_of(m) for m in got] == list(range(n)), got
            assert increasing([m["id"] for m in got]) is None, got
        else:
            c.drain(quiet=1.0)
            shown = len(c.telemetry(d))
            assert 0 < shown <= 10 + 5, \
                "the consumer showed %d of %d with its batches full" % (
                    shown, n)
        assert ctx.count_rows(d) == 0, "stored while the table was locked"
        cur.execute("COMMIT")
    finally:
        locker.close()
    ctx.wait_rows(d, n, timeout=30)
    ctx.wait_idle()
    c.drain(quiet=0.5)
    got = c.telemetry(d)
    assert sorted(seq_of(m) for m in got) == list(range(n)), got
    assert ctx.count_rows(d) == n
    assert ctx.metric_sum("fleetd_ingest_published_total") - pub0 == n
    c.close()


@pytest.mark.timeout(150)
def test_sigkill_mid_burst_shows_each_entry_once(ingest):  # noqa: F811
    """2,000 messages from 20 devices as fast as the broker takes them; a
    worker is killed with SIGKILL in the middle. Every message is stored,
    and the dashboard on "*" shows each message exactly as many times as
    the stream holds it (a redelivery caught by its record is neither
    appended nor shown again; one the record missed is both)."""
    ctx = node(ingest)
    devs = [ctx.dev("k%02d" % i) for i in range(20)]
    c = WsClient.connect(ctx.f)
    c.subscribe("*")
    assert sorted(ws_conns(ctx.f).values()) == [0, 1]
    base_ts = now_ms() - 60000
    n = 2000
    import paho.mqtt.client as mqtt
    pub = mqtt.Client(client_id="it-wa-" + uniq(), clean_session=True)
    pub.max_inflight_messages_set(200)
    pub.connect(ctx.mq.host, ctx.mq.port, keepalive=30)
    pub.loop_start()
    infos = []
    # the worker that does not hold the dashboard's connection
    victim = [pid for pid, k in ws_conns(ctx.f).items() if k == 0][0]
    done = threading.Event()

    def read():                    # the dashboard reads all along
        while not done.is_set():
            try:
                c.pump(timeout=0.2)
            except socket.timeout:
                pass
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        for s in range(n):
            infos.append(pub.publish("devices/%s/telemetry" % devs[s % 20],
                                     to_bytes({"ts": base_ts + s, "seq": s}),
                                     qos=1))
            if s == n // 3:
                os.kill(victim, signal.SIGKILL)
        for info in infos:
            info.wait_for_publish(30)
    finally:
        done.set()
        reader.join(5)
        pub.loop_stop()
        pub.disconnect()

    def stored():
        return ctx.query("SELECT count(DISTINCT ts) FROM telemetry WHERE "
                         "device_id = ANY(%s) AND metric = 'seq'",
                         (devs,))[0][0] == n
    stack.wait_until(stored, 60, what="all %d messages stored" % n)
    ctx.wait_idle(timeout=60, counted=False)  # the killed worker read some
    c.drain(quiet=1.0, timeout=30)
    shown = {}
    for m in c.telemetry():
        assert not m.get("conflated"), m
        if m["device"] in devs:
            shown[seq_of(m)] = shown.get(seq_of(m), 0) + 1
    in_stream = {}
    for d in devs:
        for e in entries(ctx, d):
            if e.get("f") == b"1":
                s = json.loads(e["p"])["seq"]
                in_stream[s] = in_stream.get(s, 0) + 1
    assert set(shown) == set(range(n)), \
        "not shown: %r" % sorted(set(range(n)) - set(shown))[:20]
    diff = {s: (shown.get(s), in_stream.get(s)) for s in range(n)
            if shown.get(s) != in_stream.get(s)}
    assert not diff, "shown vs in the stream (f=1): %r" % (
        list(diff.items())[:20],)
    c.close()


@pytest.mark.parametrize("env", [None, NO_FANOUT], ids=["append", "consumer"])
@pytest.mark.timeout(90)
def test_failed_fanout_is_stored_counted_and_costs_no_other_device(
        ingest, env):  # noqa: F811
    """A device whose shadow key holds a foreign value (a plain string,
    as an operator's stray SET leaves it) makes its shadow update and
    fan-out fail with WRONGTYPE, and its reported state's merge. Interleaved
    with a healthy device's messages: every message of both is stored and
    acknowledged, the healthy device's are shown and its shadow kept, the
    failed ones are counted as failures (a state message as one) and not
    as published, the log says so, and once the key is cleared the device
    is shown again."""
    ctx = node(ingest, env, workers=1)
    good, bad = ctx.dev("fgood"), ctx.dev("fbad")
    ctx.wait_idle()
    pub0 = ctx.metric_sum("fleetd_ingest_published_total") or 0
    fail0 = ctx.metric_sum("fleetd_ingest_fanout_failures_total") or 0
    ctx.redis.set(ctx.shadow_key(bad), "not a hash")
    c = WsClient.connect(ctx.f)
    c.subscribe([good, bad])
    base_ts = now_ms() - 60000
    n = 10
    for s in range(n):
        ctx.send(good, {"ts": base_ts + s, "seq": s})
        ctx.send(bad, {"ts": base_ts + s, "seq": s})
    ctx.send(bad, {"fw": "9"}, kind="state")
    ctx.send(good, {"fw": "9"}, kind="state")
    ctx.wait_shadow(good, lambda h: h.get("r:fw") == '"9"')
    ctx.wait_rows(good, n)
    ctx.wait_rows(bad, n)
    got = c.wait_telemetry(n, device=good, timeout=15)
    assert [seq_of(m) for m in got] == list(range(n)), got
    ctx.wait_idle()
    c.drain(quiet=0.5)
    assert c.telemetry(bad) == [], "shown without its shadow update"
    assert len(c.telemetry(good)) == n
    assert int(ctx.shadow(good)["v:seq"]) == n - 1
    assert ctx.redis.get(ctx.shadow_key(bad)) == b"not a hash"
    assert ctx.metric_sum("fleetd_ingest_published_total") - pub0 == n
    assert ctx.metric_sum("fleetd_ingest_fanout_failures_total") - fail0 \
        == n + 1
    assert "WRONGTYPE" in ctx.f.log_text()
    assert ctx.count_rows(good) == n and ctx.count_rows(bad) == n
    assert ctx.redis.xpending(ctx.stream_key, "fleetd")["pending"] == 0
    # cleared, the device is shown and has a shadow again
    ctx.redis.delete(ctx.shadow_key(bad))
    ctx.send(bad, {"ts": base_ts + n, "seq": n})
    got = c.wait_telemetry(1, device=bad, timeout=15)
    assert [seq_of(m) for m in got] == [n], got
    ctx.wait_shadow(bad, lambda h: h.get("v:seq") == str(n))
    c.close()
