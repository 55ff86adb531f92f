"""
Telemetry fan-out to WebSocket clients (issue 9, /tmp/ws-spec.md
"Client -> server" and "Server -> client"): every client receives exactly
the telemetry of the devices it subscribed to - each message once, none
missing, nothing else - whichever worker it is connected to and whichever
worker stored the message; unsubscribe stops delivery; subscribe answers
with a snapshot of the devices' latest state.

Devices publish with paho at QoS 1 (PUBACK awaited); every message has a
"seq" metric and a ts of its own.
"""

import asyncio
import time

import pytest

import stack
from api_util import ApiClient
from ingest_util import Publisher, ingest, now_ms  # noqa: F401
from ws_util import (AsyncSub, WsClient, check_telemetry_msg, gather_limited,
                     id_key, increasing, metric_sum, run_async, seq_of, wait_async,
                     wait_ws_conns, ws_conns, ws_metrics_text, ws_node)  # noqa: F401


def devices_of(k, devs):
    """The devices client k subscribes to: 3 of the 50, spread out."""
    n = len(devs)
    return sorted({devs[k % n], devs[(k * 7 + 3) % n], devs[(k * 13 + 11) % n]})


@pytest.mark.timeout(120)
def test_fanout_500_clients_two_workers(ws_node):
    ctx = ws_node(workers=2)
    f = ctx.f
    devs = [ctx.dev("f%02d" % i) for i in range(50)]
    per_dev = 4
    base_ts = now_ms() - 300000
    nclients = 500
    plan = {k: devices_of(k, devs) for k in range(nclients)}
    # published: message seq -> device
    msgs = [(devs[s % 50], s) for s in range(50 * per_dev)]
    expect = {d: set() for d in devs}
    for d, s in msgs:
        expect[d].add(s)

    async def main():
        subs = [AsyncSub("client %d" % k) for k in range(nclients)]
        star = AsyncSub("client *")
        await gather_limited([s.open(f) for s in subs + [star]], limit=64)
        replies = await gather_limited(
            [s.subscribe(plan[k]) for k, s in enumerate(subs)], limit=100)
        for k, r in enumerate(replies):
            assert sorted(r["devices"]) == plan[k], (k, r)
            assert r["snapshot"] == [], "no device has published yet: %r" % r
        r = await star.subscribe("*")
        assert r["snapshot"] == [], r
        # clients landed on both workers
        conns = await asyncio.get_running_loop().run_in_executor(None, ws_conns, f)
        assert sum(conns.values()) == nclients + 1, conns
        assert len(conns) == 2 and min(conns.values()) >= 50, \
            "WebSocket clients per worker %r: not spread over both" % conns
        m = await asyncio.get_running_loop().run_in_executor(
            None, lambda: metric_sum(f, "fleetd_connections", kind="ws"))
        assert m == nclients + 1, m

        # publish (PUBACK each) from a thread, while the loop reads
        def publish():
            pub = Publisher(ctx.mq)
            try:
                for d, s in msgs:
                    pub.send("devices/%s/telemetry" % d, {"ts": base_ts + s, "seq": s})
            finally:
                pub.close()
        t0 = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, publish)
        t_pub = time.monotonic() - t0

        want = {k: sum(len(expect[d]) for d in plan[k]) for k in range(nclients)}

        def all_in():
            return all(len(s.telemetry) >= want[k] for k, s in enumerate(subs)) \
                and len(star.telemetry) >= len(msgs)
        try:
            await wait_async(all_in, 30, "every client's messages")
        except AssertionError:
            pass                       # the exact check below says what is wrong
        await asyncio.sleep(1.0)       # anything extra or duplicated shows up
        for s in subs + [star]:
            await s.close()
        return subs, star, t_pub

    subs, star, t_pub = run_async(main(), 100)

    # every client: exactly its devices' messages, once each
    ids_of_seq = {}
    problems = []
    for k, s in enumerate(subs):
        if s.error:
            problems.append("client %d: %s" % (k, s.error))
        got = {}
        for _, m in s.telemetry:
            check_telemetry_msg(m, base_ts)
            got.setdefault((m["device"], seq_of(m)), []).append(m["id"])
            ids_of_seq.setdefault(seq_of(m), set()).add(m["id"])
        bad_order = increasing([m["id"] for _, m in s.telemetry])
        if bad_order:
            problems.append("client %d: ids not increasing in receive order "
                            "at %r" % (k, bad_order))
        want = {(d, x) for d in plan[k] for x in expect[d]}
        missing = want - set(got)
        extra = set(got) - want
        dups = {key: v for key, v in got.items() if len(v) > 1}
        if missing or extra or dups:
            problems.append("client %d (devices %s): %d received, %d missing %s, "
                            "%d not subscribed %s, %d twice %s" % (
                                k, [d[-3:] for d in plan[k]], len(s.telemetry),
                                len(missing), sorted(missing)[:5], len(extra),
                                sorted(extra)[:5], len(dups), list(dups.items())[:3]))
    canary = ctx.dev("canary")
    star_got = {}
    for _, m in star.telemetry:
        if m["device"] == canary:
            continue
        star_got.setdefault((m["device"], seq_of(m)), []).append(m["id"])
    all_want = {(d, s) for d, s in msgs}
    if set(star_got) != all_want or any(len(v) > 1 for v in star_got.values()):
        problems.append("client *: %d distinct of %d, missing %s, extra %s, twice %s" % (
            len(star_got), len(all_want), sorted(all_want - set(star_got))[:5],
            sorted(set(star_got) - all_want)[:5],
            [k for k, v in star_got.items() if len(v) > 1][:5]))
    # the same message has the same id on every client, and ids are unique
    multi = {s: v for s, v in ids_of_seq.items() if len(v) > 1}
    if multi:
        problems.append("messages with different ids on different clients: %r" %
                        list(multi.items())[:5])
    all_ids = [next(iter(v)) for v in ids_of_seq.values()]
    if len(set(all_ids)) != len(all_ids):
        problems.append("one id for different messages")
    if problems:
        raise AssertionError("%d problem(s):\n  %s\npublish took %.1f s\n%s\n%s" % (
            len(problems), "\n  ".join(problems[:30]), t_pub, ws_metrics_text(f),
            stack.tail(f.log_text(), 30)))
    total = sum(len(s.telemetry) for s in subs) + len(star.telemetry)
    # counted when written whole: what the clients really received
    assert metric_sum(f, "fleetd_ws_messages_total") == total, ws_metrics_text(f)
    wait_ws_conns(f, 0)
    print("fan-out: %d clients, %d messages delivered; publish %.1f s" % (
        nclients, total, t_pub))


@pytest.mark.timeout(60)
def test_unsubscribe_stops_delivery(ws_node):
    ctx = ws_node(workers=2)
    f = ctx.f
    d1, d2 = ctx.dev("u1"), ctx.dev("u2")
    base = now_ms() - 100000
    seq = iter(range(10000))
    c = WsClient.connect(f)
    witness = WsClient.connect(f)         # stays subscribed to both
    try:
        r = c.subscribe([d1, d2])
        assert sorted(r["devices"]) == sorted([d1, d2]), r
        witness.subscribe([d1, d2])

        def send(d, n):
            out = []
            for _ in range(n):
                s = next(seq)
                ctx.send(d, {"ts": base + s, "seq": s})
                out.append(s)
            return out
        a = send(d1, 2) + send(d2, 2)
        c.wait_telemetry(4)
        assert sorted(seq_of(m) for m in c.telemetry()) == sorted(a)

        r = c.unsubscribe([d1])
        assert r["devices"] == [d1], r
        b1, b2 = send(d1, 3), send(d2, 3)
        witness.wait_telemetry(len(a) + 6)
        c.wait_telemetry(4 + 3)
        c.drain(quiet=1.0)
        got = [(m["device"], seq_of(m)) for m in c.telemetry()][4:]
        assert sorted(got) == sorted((d2, s) for s in b2), \
            "after unsubscribing %s: received %r, expected only %r" % (
                d1, got, [(d2, s) for s in b2])
        assert not [m for m in c.telemetry(d1) if seq_of(m) in b1], b1

        # unsubscribing from something not subscribed is harmless
        r = c.unsubscribe([ctx.dev("never")])
        # "*" drops everything
        r = c.unsubscribe("*")
        n = len(c.telemetry())
        b3 = send(d1, 2) + send(d2, 2)
        witness.wait_telemetry(len(a) + 6 + 4)
        c.drain(quiet=1.0)
        assert len(c.telemetry()) == n, "after unsubscribe *: %r" % c.telemetry()[n:]
        c.ping()
        # subscribing again resumes delivery (live only: no "since")
        c.subscribe([d2])
        b4 = send(d2, 2)
        c.wait_telemetry(n + 2)
        c.drain(quiet=0.5)
        assert sorted(seq_of(m) for m in c.telemetry()[n:]) == sorted(b4)
        del b3
    finally:
        c.close()
        witness.close()


@pytest.mark.timeout(60)
def test_subscribe_snapshot(ws_node):
    ctx = ws_node(workers=2)
    f = ctx.f
    api = ApiClient(f)
    d = ctx.dev("snap")
    quiet = ctx.dev("quiet")                 # registered, never published
    nobody = ctx.dev("nobody")               # unknown
    assert api.post("/api/v1/devices", {"id": quiet})[0] == 201
    t1 = now_ms() - 5000
    ctx.send(d, {"ts": t1, "temperature": 20.5, "door": False, "fw": "1.0"})
    ctx.send(d, {"ts": t1 + 1000, "temperature": 21.5, "door": True})
    ctx.send(d, {"mode": "eco"}, kind="state")

    def state():
        s, doc = api.get("/api/v1/devices/%s/state" % d)
        # the three messages may be taken by both workers, in any order
        return s == 200 and doc["values"].get("door") is True and \
            "fw" in doc["values"] and \
            doc["reported"].get("mode") == "eco" and doc
    doc = stack.wait_until(state, 15, what="the device's state")

    c = WsClient.connect(f)
    try:
        r = c.subscribe([d, quiet, nobody])
        assert sorted(r["devices"]) == sorted([d, quiet, nobody]), r
        snap = r.get("snapshot")
        assert isinstance(snap, list), r
        mine = [e for e in snap if e.get("device") == d]
        assert len(mine) == 1, "snapshot %r: expected one entry for %s" % (snap, d)
        assert not [e for e in snap if e.get("device") in (nobody, quiet)], \
            "snapshot entries for devices without a shadow: %r" % snap
        e = mine[0]
        # same shape and content as GET /api/v1/devices/{id}/state
        for k in ("device", "ts", "values", "reported", "online"):
            assert k in e, "snapshot entry without %r: %r" % (k, e)
        assert e["values"] == doc["values"] == {
            "temperature": 21.5, "door": True, "fw": "1.0"}, (e, doc)
        assert e["ts"] == t1 + 1000, e
        assert e["reported"] == {"mode": "eco"}, e
        assert e["online"] is True, e
        if "value_ts" in e:
            assert e["value_ts"] == doc["value_ts"], (e, doc)
        if "last_seen" in e:
            assert e["last_seen"] == doc["last_seen"], (e, doc)
        # then live updates; a new subscribe shows the newer values
        ctx.send(d, {"ts": t1 + 2000, "temperature": 22.5})
        m = c.wait_telemetry(1)[0]
        assert m["device"] == d and m["values"] == {"temperature": 22.5} and \
            m["ts"] == t1 + 2000, m
        c2 = WsClient.connect(f)
        r = c2.subscribe([d])
        assert r["snapshot"] and r["snapshot"][0]["values"]["temperature"] == 22.5, r
        assert r["snapshot"][0]["ts"] == t1 + 2000, r
        # "*": no snapshot
        r = c2.subscribe("*")
        assert r["snapshot"] == [], r
        r = c2.subscribe(["*"])
        assert r["snapshot"] == [], r
        c2.close()
    finally:
        c.close()


@pytest.mark.timeout(60)
def test_batch_points_and_ids(ws_node):
    """A batch array gives one telemetry message per point, each with an
    id of its own, increasing; ts and values as published."""
    ctx = ws_node(workers=1)
    f = ctx.f
    d = ctx.dev("batch")
    c = WsClient.connect(f)
    try:
        c.subscribe([d])
        t = now_ms() - 10000
        ctx.send(d, [{"ts": t, "a": 1}, {"ts": t + 1, "a": 2, "s": "x"},
                     {"ts": t + 2, "values": {"b": {"c": True}}}])
        c.wait_telemetry(3)
        c.drain(quiet=0.5)
        ms = c.telemetry()
        assert len(ms) == 3, ms
        for m in ms:
            check_telemetry_msg(m)
        ids = [m["id"] for m in ms]
        assert increasing(ids) is None and len(set(ids)) == 3, ids
        assert [m["ts"] for m in ms] == [t, t + 1, t + 2], ms
        assert ms[0]["values"] == {"a": 1}
        assert ms[1]["values"] == {"a": 2, "s": "x"}
        assert len(ms[2]["values"]) == 1 and list(ms[2]["values"].values()) == [True], ms[2]
        # a later message has a larger id
        ctx.send(d, {"ts": t - 50000, "a": 3})      # an older ts: the id still grows
        m = c.wait_telemetry(4)[-1]
        assert id_key(m["id"]) > id_key(ids[-1]), (m, ids)
        assert m["ts"] == t - 50000
    finally:
        c.close()


@pytest.mark.timeout(90)
def test_dashboards_stay_live_while_postgres_is_stalled(ws_node):
    """PostgreSQL stalls (a session holds a SHARE lock on the telemetry
    table: COPY waits, reads go on). A worker's storer waits with its
    batch, but the worker goes on reading and fanning out the next one:
    a dashboard keeps getting every message, in order, none stored yet;
    when the lock goes, all of them are stored once and acknowledged.
    The stall outlasts ingest.claim_idle: the periodic claim must not take
    the entries the storer holds (they would be stored and shown twice)."""
    ctx = ws_node({"ingest": {"claim_idle": "1s"}}, workers=1)
    d = ctx.dev("stall")
    base_ts = now_ms() - 60000
    c = WsClient.connect(ctx.f)
    c.subscribe([d])
    locker = ctx.pg_service.connect()
    try:
        cur = locker.cursor()
        cur.execute("BEGIN")
        cur.execute("LOCK TABLE telemetry IN SHARE MODE")
        n = 12
        t0 = time.monotonic()
        for s in range(n):
            ctx.send(d, {"ts": base_ts + s, "seq": s})
            # well apart: separate batches (linger 20 ms); after the first,
            # longer than claim_idle with the next batch still empty
            time.sleep(2.0 if s == 0 else 0.1)
        got = c.wait_telemetry(n, device=d, timeout=10)
        took = time.monotonic() - t0
        assert [seq_of(m) for m in got] == list(range(n)), got
        assert increasing([m["id"] for m in got]) is None, got
        assert took < 2.0 + 1.2 * n * 0.1 + 3, "took %.1f s" % took
        assert ctx.count_rows(d) == 0, "stored while the table was locked"
        cur.execute("COMMIT")
    finally:
        locker.close()
    ctx.wait_rows(d, n)
    stack.wait_until(
        lambda: ctx.redis.xpending(ctx.stream_key, "fleetd")["pending"] == 0,
        20, what="every entry acknowledged")
    assert ctx.count_rows(d) == n
    c.drain(quiet=0.5)
    assert len(c.telemetry(d)) == n, "published again: %r" % c.telemetry(d)
    assert (ctx.metric_sum("fleetd_ingest_claimed_total") or 0) == 0
    assert (ctx.metric_sum("fleetd_ingest_duplicates_total") or 0) == 0
    assert ctx.metric_sum("fleetd_ingest_rows_total") >= n
    c.close()
