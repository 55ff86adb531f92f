"""
Every point of an accepted message is stored exactly once, and the
counters say what is in the table (issue 7, CONTRACT.md section 3).

- a burst of messages without "ts" from one device, faster than a
  millisecond apart, is never collapsed: each message gets a time of its
  own (the stream entry id, in microseconds), in publish order with one
  worker;
- an entry stored twice (a worker killed between COMMIT and XACK) adds no
  row; two different messages with one device, metric and ts: the later
  one in stream order wins, counted as overwritten; the same value again
  is a duplicate;
- points older than postgres.retention_days or further ahead than
  limits.max_clock_skew are dead letters (too_old / in_future), the rest
  of their message is stored;
- after a mixed run, fleetd_ingest_rows_total went up by exactly the rows
  that are in the table, and per device the table holds what the test
  computed.

Everything is observed as a user sees it: PostgreSQL rows, the dead-letter
stream, /metrics. Broker redeliveries (DUP) are in test_ingest_redelivery.py.
"""

import json
import os
import signal
import threading
import time

import pytest

import stack
from ingest_util import burst, ingest, now_ms, to_bytes, uniq  # noqa: F401

DAY = 86400000


def seq_rows(ctx, dev):
    """[(seq, ts_us)] of dev's "seq" rows, by seq."""
    return [(int(v), int(us)) for v, us in ctx.query(
        "SELECT value, (extract(epoch FROM ts) * 1000000)::bigint "
        "FROM telemetry WHERE device_id = %s AND metric = 'seq' "
        "ORDER BY value", (dev,))]


def counters(ctx):
    """The ingest counters that account for rows, node-wide."""
    def m(name, **labels):
        v = ctx.metric_sum(name, **labels)
        return 0 if v is None else int(v)
    return {
        "rows": m("fleetd_ingest_rows_total"),
        "overwritten": m("fleetd_ingest_overwritten_total"),
        "duplicates": m("fleetd_ingest_duplicates_total"),
        "too_old": m("fleetd_ingest_rows_dead_lettered_total",
                     reason="too_old"),
        "in_future": m("fleetd_ingest_rows_dead_lettered_total",
                       reason="in_future"),
        "stored": m("fleetd_ingest_stored_total"),
        "mqtt_duplicates": m("fleetd_mqtt_duplicates_total"),
    }


def delta(after, before):
    return {k: after[k] - before[k] for k in after}


def wait_count(ctx, dev, n, timeout=60.0):
    try:
        stack.wait_until(lambda: ctx.count_rows(dev) >= n, timeout,
                         interval=0.2, what="%d rows for %s" % (n, dev))
    except TimeoutError as e:
        raise AssertionError("%s (have %d)\n%s" % (
            e, ctx.count_rows(dev), ctx.diagnostics())) from None


def wait_idle(ctx, timeout=30.0, counted=True):
    """Until the stream has nothing pending and nothing unread, and every
    entry read is counted (the counters are added when the XACK's reply
    comes back, after XPENDING already shows 0). counted=False when a
    killed worker had read entries it never counted: then only a pause
    lets the counters catch up."""
    def idle():
        groups = ctx.redis.xinfo_groups(ctx.stream_key)
        g = [x for x in groups if x["name"] in (b"fleetd", "fleetd")]
        return g and g[0]["pending"] == 0 and g[0].get("lag", 0) in (0, None)
    stack.wait_until(idle, timeout, interval=0.1,
                     what="ingest stream drained and acknowledged")
    if counted:
        ctx.wait_idle(timeout)
    else:
        time.sleep(0.3)


def check_burst(ctx, dev, n, ordered):
    rows = seq_rows(ctx, dev)
    seqs = [s for s, _ in rows]
    assert seqs == list(range(n)), \
        "seq 0..%d each once expected; %d rows, missing %r, extra %r" % (
            n - 1, len(rows), sorted(set(range(n)) - set(seqs))[:20],
            [s for s in seqs if seqs.count(s) > 1][:20])
    ts = [t for _, t in rows]
    assert len(set(ts)) == n, "%d distinct timestamps for %d rows" % (
        len(set(ts)), n)
    if ordered:
        back = [(rows[i], rows[i + 1]) for i in range(n - 1)
                if rows[i][1] >= rows[i + 1][1]]
        assert not back, "timestamps not increasing in seq order: %r" % back[:5]
    # messages without ts take their arrival time: now, to the second
    assert abs(ts[0] // 1000 - now_ms()) < 120000, ts[0]


# ---------------------------------------------------------------- bursts

@pytest.mark.timeout(120)
def test_burst_without_ts_one_worker_keeps_every_message_in_order(ingest):
    """One device, 10,000 QoS 1 messages {"seq": i} without ts, 100 in
    flight: 10,000 rows, seq 0..9,999 once each, distinct timestamps,
    strictly increasing in seq order (one worker takes them in publish
    order). The counters agree with the table."""
    ctx = ingest(workers=1, prefix="bx%s:" % uniq())
    dev = ctx.dev("burst")
    n = 10000
    c0 = counters(ctx)
    burst(ctx.mq, ctx.topic(dev), [{"seq": i} for i in range(n)])
    wait_count(ctx, dev, n)
    wait_idle(ctx)
    check_burst(ctx, dev, n, ordered=True)
    d = delta(counters(ctx), c0)
    assert d["rows"] == n == ctx.count_rows(dev), d
    assert d["stored"] == n, d
    assert d["overwritten"] == d["duplicates"] == 0, d


@pytest.mark.timeout(150)
def test_burst_ten_devices_ten_clients_over_both_workers(ingest):
    """10 devices publishing 1,000 messages each without ts from 10
    clients at once, spread over both workers by the shared subscription:
    every message stored once, timestamps distinct per device; the rows
    counter equals the rows in the table."""
    ctx = ingest(workers=2, prefix="bm%s:" % uniq())
    devs = [ctx.dev("m%d" % i) for i in range(10)]
    n = 1000
    c0 = counters(ctx)
    errors = []

    def run(dev):
        try:
            burst(ctx.mq, ctx.topic(dev), [{"seq": i} for i in range(n)])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(d,)) for d in devs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors
    for dev in devs:
        wait_count(ctx, dev, n)
    wait_idle(ctx)
    for dev in devs:
        check_burst(ctx, dev, n, ordered=False)
    d = delta(counters(ctx), c0)
    total = ctx.query("SELECT count(*) FROM telemetry WHERE device_id = "
                      "ANY(%s)", (devs,))[0][0]
    assert total == 10 * n == d["rows"], (total, d)


@pytest.mark.timeout(60)
def test_batch_array_without_ts_is_refused_not_collapsed(ingest):
    """[{"a": 1}, {"a": 2}] without ts: both elements arrive at once, so
    they would be two values of one metric at one time. fleetd refuses
    the message as duplicate_metric (dead letter, counted) rather than
    inventing times or keeping one; elements with their own ts, or
    different metrics, are stored."""
    ctx = ingest(prefix="ba%s:" % uniq())
    dev = ctx.dev("arr")
    mark = ctx.dead_mark()
    ctx.send(dev, [{"a": 1}, {"a": 2}])
    t = now_ms() - 1000
    ctx.send(dev, [{"ts": t, "a": 1}, {"ts": t + 1, "a": 2}])
    ctx.send(dev, [{"b": 1}, {"c": 2}])
    rows = ctx.wait_rows(dev, 4)
    dead = stack.wait_until(lambda: ctx.dead_since(mark, ctx.topic(dev)), 10,
                            what="the dead letter")
    assert [d["reason"] for d in dead] == ["duplicate_metric"], dead
    assert "appears twice" in dead[0]["error"], dead
    assert sorted((r[0], r[2]) for r in rows) == [
        ("a", 1.0), ("a", 2.0), ("b", 1.0), ("c", 2.0)], rows


# ------------------------------------------------------ exactly once

@pytest.mark.timeout(120)
def test_kill9_between_commit_and_xack_adds_no_row(ingest):
    """The worker commits a batch and is killed before its XACK (held in
    that window by the test hook stall_before_xack, seen in the log). Its
    next life takes the entries back and stores them again: no row twice
    (messages without ts get the same time again: it comes from the entry
    id), none missing, the second write counted as duplicates."""
    ctx = ingest(workers=1, prefix="kx%s:" % uniq(),
                 env={"FLEETD_TEST_HOOKS": "stall_before_xack=3000"})
    dev = ctx.dev("k9")
    n = 200
    # the canary's batch is stalled too: wait for it to be acknowledged
    wait_idle(ctx, timeout=20)
    c0 = counters(ctx)
    log0 = len(ctx.f.log_text())
    burst(ctx.mq, ctx.topic(dev), [{"seq": i, "b": i % 2 == 0}
                                   for i in range(n)])
    stack.wait_until(lambda: "stall_before_xack" in ctx.f.log_text()[log0:],
                     10, what="the hook's log line")
    # inside the window: the batch is committed (its rows are there) and
    # pending (not acknowledged); the consumer may read the next batch
    # meanwhile (pending too) but commits nothing more
    pending = ctx.redis.xpending(ctx.stream_key, "fleetd")["pending"]
    committed = ctx.count_rows(dev)
    assert committed > 0 and committed % 2 == 0 and \
        committed <= 2 * pending, \
        "the window was not reached: %d pending, %d rows" % (pending,
                                                             committed)
    time.sleep(0.5)
    assert ctx.count_rows(dev) == committed, "a second batch was committed"
    pid = ctx.f.worker_pids()[0]
    os.kill(pid, signal.SIGKILL)
    stack.wait_until(lambda: ctx.f.worker_pids()[0] != pid, 10,
                     what="the worker respawned")
    ctx.f.wait_ready(15)
    wait_count(ctx, dev, 2 * n)
    wait_idle(ctx, timeout=60, counted=False)
    check_burst(ctx, dev, n, ordered=True)
    assert ctx.count_rows(dev) == 2 * n
    d = delta(counters(ctx), c0)
    assert d["rows"] == 2 * n, d
    # what the killed worker had committed came back: duplicates, each
    # row once more, and nothing else
    assert d["duplicates"] == committed, (d, committed)
    assert d["overwritten"] == 0, d
    assert d["stored"] == n, d
    log = ctx.f.log_text()[log0:]
    assert "took over" in log or "stored already" in log, stack.tail(log, 30)


@pytest.mark.timeout(60)
def test_same_ts_later_message_wins_and_is_counted(ingest):
    """Two different messages with the same device, metric and explicit
    ts: the later one wins, counted as overwritten (in one batch and in
    two). The same value again: one row, counted as a duplicate."""
    ctx = ingest(workers=1, prefix="ow%s:" % uniq())
    dev = ctx.dev("ow")
    t = now_ms() - 5000
    c0 = counters(ctx)
    ctx.send(dev, {"ts": t, "v": 1.0})
    ctx.wait_rows(dev, 1)
    wait_idle(ctx)
    ctx.send(dev, {"ts": t, "v": 2.0})          # a later batch: replaces
    stack.wait_until(lambda: ctx.rows(dev)[0][2] == 2.0, 10,
                     what="the later value")
    wait_idle(ctx)
    d = delta(counters(ctx), c0)
    assert d["rows"] == 1 and d["overwritten"] == 1, d
    ctx.send(dev, {"ts": t, "v": 2.0})          # same value: duplicate
    wait_idle(ctx)
    d = delta(counters(ctx), c0)
    assert d["rows"] == 1 and d["overwritten"] == 1 and \
        d["duplicates"] == 1, d
    # 50 versions in a burst (one worker: stream order is publish order):
    # the last published wins, each earlier one counted once
    burst(ctx.mq, ctx.topic(dev),
          [{"ts": t + 1, "v": float(i)} for i in range(50)], inflight=20)
    stack.wait_until(lambda: (("v", t + 1) in
                              {(r[0], r[1]) for r in ctx.rows(dev)}), 10,
                     what="the burst's row")
    wait_idle(ctx)
    rows = dict(((r[0], r[1]), r[2]) for r in ctx.rows(dev))
    assert rows == {("v", t): 2.0, ("v", t + 1): 49.0}, rows
    d = delta(counters(ctx), c0)
    assert d["rows"] == 2 and d["overwritten"] == 1 + 49, d
    assert d["duplicates"] == 1, d


@pytest.mark.timeout(90)
def test_earlier_message_stored_last_does_not_win(ingest, redis_server):
    """Queue order, not commit order: a message that a dead node held
    (pending on its consumer) is stored after a later message with the
    same key. The later one keeps the row; the earlier one is counted as
    overwritten. The stream is prepared by hand as the intake writes it
    (fields t, p, r) and the earlier entry is read by a consumer that
    never acknowledges (a node that died), so fleetd claims it only after
    ingest.claim_idle, well after it stored the later one."""
    prefix = "eo%s:" % uniq()
    r = redis_server.client()
    stream = prefix + "ingest"
    r.xgroup_create(stream, "fleetd", id="0", mkstream=True)
    tag = uniq()
    dev = "%s-eo" % tag
    t = now_ms() - 3000
    topic = "devices/%s/telemetry" % dev
    first = r.xadd(stream, {"t": topic, "p": json.dumps({"ts": t, "v": 1}),
                            "r": str(now_ms())})
    got = r.xreadgroup("fleetd", "dead-node-w0", {stream: ">"}, count=1)
    assert got[0][1][0][0] == first
    r.xadd(stream, {"t": topic, "p": json.dumps({"ts": t, "v": 2}),
                    "r": str(now_ms())})
    ctx = ingest(prefix=prefix, extra={"ingest": {"claim_idle": "6s"}},
                 wait=False)
    ctx.wait_deps_up()
    stack.wait_until(lambda: ctx.rows(dev), 15, what="the later message")
    assert ctx.rows(dev)[0][2] == 2.0
    # the row is visible before the worker has counted it (the counters
    # follow the commit's reply): the snapshot must include the later
    # message, or its row would show up in the delta
    ctx.wait_idle(15)
    c0 = counters(ctx)
    stack.wait_until(lambda: r.xpending(stream, "fleetd")["pending"] == 0,
                     30, what="the dead node's entry claimed and stored")
    ctx.wait_idle(15)
    rows = ctx.rows(dev)
    assert len(rows) == 1 and rows[0][2] == 2.0, rows
    d = delta(counters(ctx), c0)
    assert d["overwritten"] == 1 and d["rows"] == 0, d


# ------------------------------------------------------ storable range

@pytest.mark.timeout(60)
def test_points_out_of_range_are_dead_letters(ingest):
    """A point 400 days old and one 2 days ahead next to a valid one: the
    valid one is stored, the other two are dead-lettered as too_old and
    in_future (one dead letter each, saying what was kept), counted per
    reason and not as stored. A message with only such points stores
    nothing and is a dead letter as a whole."""
    ctx = ingest(prefix="rg%s:" % uniq())
    dev = ctx.dev("range")
    now = now_ms()
    old, ahead, ok = now - 400 * DAY, now + 2 * DAY, now - 1000
    c0 = counters(ctx)
    mark = ctx.dead_mark()
    ctx.send(dev, [{"ts": old, "x": 1, "y": 1}, {"ts": ahead, "x": 2},
                   {"ts": ok, "x": 3}])
    ctx.send(dev, {"ts": ahead, "x": 4})
    rows = ctx.wait_rows(dev, 1)
    dead = stack.wait_until(
        lambda: [d for d in ctx.dead_since(mark, ctx.topic(dev))] if
        len(ctx.dead_since(mark, ctx.topic(dev))) >= 3 else None, 10,
        what="three dead letters")
    wait_idle(ctx)
    rows = ctx.rows(dev)
    assert [(r[0], r[1], r[2]) for r in rows] == [("x", ok, 3.0)], rows
    reasons = sorted(d["reason"] for d in dead)
    assert reasons == ["in_future", "in_future", "too_old"], dead
    by = {(d["reason"], d["error"].split(";")[1].strip()): d for d in dead}
    assert ("too_old", "the other points were stored") in by, dead
    assert ("in_future", "nothing of the message was stored") in by, dead
    d = delta(counters(ctx), c0)
    assert d["rows"] == 1 and d["too_old"] == 2 and d["in_future"] == 2, d
    assert d["stored"] == 1, d


@pytest.mark.timeout(60)
def test_max_clock_skew_is_configurable(ingest):
    """limits.max_clock_skew 1m: a point 5 minutes ahead is in_future;
    one 30 s ahead is stored."""
    ctx = ingest(prefix="sk%s:" % uniq(),
                 extra={"limits": {"max_clock_skew": "1m"}})
    dev = ctx.dev("skew")
    now = now_ms()
    mark = ctx.dead_mark()
    ctx.send(dev, [{"ts": now + 300000, "x": 1}, {"ts": now + 30000, "x": 2}])
    rows = ctx.wait_rows(dev, 1)
    dead = stack.wait_until(lambda: ctx.dead_since(mark, ctx.topic(dev)), 10,
                            what="the dead letter")
    assert [d["reason"] for d in dead] == ["in_future"], dead
    assert [r[2] for r in rows] == [2.0]


# ---------------------------------------------------------- mixed run

@pytest.mark.timeout(150)
def test_mixed_run_counters_equal_the_table(ingest):
    """Bursts without ts, collisions on explicit ts, repeats, points out
    of range and a refused message, from several devices over both
    workers: per device the table holds exactly the rows the test
    expects, and fleetd_ingest_rows_total went up by the rows in the
    table; every accepted value is accounted for as a row, an overwrite,
    a duplicate or a dead letter."""
    ctx = ingest(workers=2, prefix="mx%s:" % uniq())
    now = now_ms()
    c0 = counters(ctx)
    expect = {}          # device -> rows expected
    values = 0           # values in accepted messages
    acct = {"overwritten": 0, "duplicates": 0, "too_old": 0, "in_future": 0}

    # bursts without ts, 3 devices at once: every message a row each
    bursts = [ctx.dev("b%d" % i) for i in range(3)]
    ths = [threading.Thread(target=burst, args=(
        ctx.mq, ctx.topic(d), [{"seq": i, "ok": True} for i in range(800)]))
        for d in bursts]
    for t in ths:
        t.start()
    # collisions: 20 ts values, each sent with 3 values, then once more
    # with the last value (a repeat). Each round waits for its PUBACKs, so
    # it is in the stream before the next (two workers take the messages
    # of one burst in no set order)
    col = ctx.dev("col")
    for v in (0, 1, 2, 2):
        msgs = [{"ts": now - 10000 + k, "v": float(10 * k + v)}
                for k in range(20)]
        burst(ctx.mq, ctx.topic(col), msgs, inflight=50)
        values += len(msgs)
    expect[col] = 20
    acct["overwritten"] += 20 * 2
    acct["duplicates"] += 20
    # out of range: 10 messages, each one valid point + one too old + one
    # ahead (two metrics each)
    rng = ctx.dev("rng")
    burst(ctx.mq, ctx.topic(rng), [
        [{"ts": now - 400 * DAY + i, "a": i, "b": i},
         {"ts": now + 3 * DAY + i, "a": i, "b": i},
         {"ts": now - 20000 + i, "a": i, "b": i}] for i in range(10)])
    expect[rng] = 20
    values += 60
    acct["too_old"] += 20
    acct["in_future"] += 20
    # a refused message: not a value of an accepted message
    ctx.send(rng, {"a": "x" * 5000})
    for t in ths:
        t.join(90)
    for d in bursts:
        expect[d] = 1600
        values += 1600
    for d, n in expect.items():
        wait_count(ctx, d, n)
    wait_idle(ctx, timeout=60)
    got = dict(ctx.query(
        "SELECT device_id, count(*) FROM telemetry WHERE device_id = ANY(%s) "
        "GROUP BY 1", (list(expect),)))
    assert got == expect, (got, expect)
    rows = dict(((r[0], r[1]), r[2]) for r in ctx.rows(col))
    assert rows == {("v", now - 10000 + k): float(10 * k + 2)
                    for k in range(20)}, rows
    d = delta(counters(ctx), c0)
    assert d["rows"] == sum(expect.values()), (d, expect)
    for k, v in acct.items():
        assert d[k] == v, (k, d, acct)
    assert d["rows"] + d["overwritten"] + d["duplicates"] + d["too_old"] + \
        d["in_future"] == values, (d, values)
