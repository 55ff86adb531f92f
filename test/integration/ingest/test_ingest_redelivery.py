"""
Broker redeliveries (issue 7): a QoS 1 message that Mosquitto delivers to
fleetd twice is appended to the stream, and stored, once.

fleetd writes a message's PUBACK only after the message is in the Redis
stream. When the worker dies, or its connection drops, after the append and
before the broker read the PUBACK, Mosquitto sends the message again on the
resumed session with the DUP flag. Every append records the packet id and a
hash of topic and payload in {prefix}dedup:{client id}; a DUP delivery whose
record matches is acknowledged without a second append and counted in
fleetd_mqtt_duplicates_total (worker/fl_mqtt.c has the reasoning).

fleetd talks to the broker through mqtt_proxy.MqttProxy, which can hold
(swallow) the PUBACKs fleetd sends, hold what the broker sends, and cut the
connections. Each test runs one worker (one MQTT session, so every message
goes to it), its own node_id, share group and redis.prefix. The messages
that rows are counted for carry distinct "ts" values, so that the row
count does not depend on how messages without "ts" are timed.
"""

import json
import os
import signal
import time

import pytest

import stack
from ingest_util import ingest, now_ms, to_bytes, uniq  # noqa: F401
from mqtt_proxy import MqttProxy

N = 40
RECEIVE_MAX = 50
SESSION_EXPIRY_MS = 24 * 3600 * 1000    # mqtt.session_expiry default (1d)
DEDUP_REFRESH_MS = 60000                # fl_mqtt.c


@pytest.fixture
def proxy(mosquitto):
    px = MqttProxy(mosquitto.host, mosquitto.port).start()
    yield px
    px.close()


def metric(ctx, name):
    v = ctx.metric_sum(name)
    return 0 if v is None else int(v)


def start(ingest, proxy, extra=None):
    """One worker through the proxy, pipeline up, and the intake quiet:
    wait_pipeline may have sent more than one canary, and counter deltas
    are taken from here on."""
    cfg = {"mqtt": {"uri": proxy.uri, "receive_max": RECEIVE_MAX}}
    if extra:
        cfg = stack.deep_merge(cfg, extra)
    ctx = ingest(cfg, prefix="it%s:" % uniq(), workers=1)
    state = {"last": None, "since": time.monotonic()}

    def quiet():
        rx = metric(ctx, "fleetd_mqtt_received_total")
        done = (metric(ctx, "fleetd_mqtt_enqueued_total") +
                metric(ctx, "fleetd_mqtt_duplicates_total"))
        now = time.monotonic()
        if rx != state["last"] or done != rx:
            state["last"], state["since"] = rx, now
        return now - state["since"] >= 0.5

    wait(ctx, proxy, quiet, 20, "the intake quiet after the canary")
    return ctx


def seq_rows(ctx, device):
    """{seq: number of rows} of the device's metric "seq"."""
    out = {}
    for (value,) in ctx.query(
            "SELECT value FROM telemetry WHERE device_id = %s AND "
            "metric = 'seq'", (device,)):
        out[int(value)] = out.get(int(value), 0) + 1
    return out


def stream_payloads(ctx, device):
    """{payload bytes: number of entries} in the ingest stream for the
    device's telemetry topic."""
    topic = ctx.topic(device).encode()
    out = {}
    for _, fields in ctx.redis.xrange(ctx.stream_key, "-", "+"):
        if fields.get(b"t") == topic:
            p = fields.get(b"p")
            out[p] = out.get(p, 0) + 1
    return out


def dedup_key(ctx):
    # node_id "it-{tag}", no mqtt.client_id: worker 0's client id
    return "%sdedup:fleetd-it-%s-w0" % (ctx.prefix, ctx.tag)


def why(ctx, proxy, extra=""):
    return "%s\nproxy: %r\n%s" % (extra, proxy.counters(), ctx.diagnostics(60))


def wait(ctx, proxy, fn, timeout, what):
    try:
        return stack.wait_until(fn, timeout, interval=0.1, what=what)
    except TimeoutError as e:
        raise AssertionError(why(ctx, proxy, str(e))) from None


def publish_held(ctx, proxy, device, base_ts):
    """Hold fleetd's PUBACKs, publish N messages {"ts", "seq"}, and wait
    until fleetd has written a PUBACK for each - which it does only after
    the append - so all N are in the stream and none is acknowledged to
    the broker. Returns the number of PUBACKs the publisher got."""
    proxy.hold_pubacks(True)
    acked = 0
    for i in range(N):
        ctx.send(device, {"ts": base_ts + i, "seq": i})   # waits for PUBACK
        acked += 1
    try:
        proxy.wait_for("held_pubacks", N, 30)
    except TimeoutError as e:
        raise AssertionError(why(ctx, proxy, str(e))) from None
    return acked


def check_stored_once(ctx, proxy, device, base_ts, dup0):
    """Every seq stored exactly once (rows and stream entries), and exactly
    N redeliveries recognised as duplicates."""
    def done():
        rows = seq_rows(ctx, device)
        return (len(rows) == N and
                metric(ctx, "fleetd_mqtt_duplicates_total") - dup0 >= N)

    wait(ctx, proxy, done, 45, "%d rows and %d duplicates" % (N, N))
    time.sleep(0.5)       # anything arriving late would show up now
    rows = seq_rows(ctx, device)
    assert rows == {i: 1 for i in range(N)}, why(ctx, proxy, repr(rows))
    assert ctx.count_rows(device) == N
    entries = stream_payloads(ctx, device)
    want = {to_bytes({"ts": base_ts + i, "seq": i}): 1 for i in range(N)}
    assert entries == want, why(ctx, proxy, "stream entries: %r" % entries)
    dups = metric(ctx, "fleetd_mqtt_duplicates_total") - dup0
    assert dups == N, why(ctx, proxy, "mqtt_duplicates grew by %d" % dups)
    assert proxy.get("dup_publishes") >= N, why(ctx, proxy)


def check_record(ctx):
    """The dedup hash of the session: at most N slots (255 for
    receive_max 50), and a TTL of 2 x session_expiry + 2 min at most."""
    key = dedup_key(ctx)
    ttl = ctx.redis.pttl(key)
    assert 0 < ttl <= 2 * SESSION_EXPIRY_MS + 2 * DEDUP_REFRESH_MS, (key, ttl)
    assert 0 < ctx.redis.hlen(key) <= 255, (key, ctx.redis.hlen(key))
    v = ctx.redis.hgetall(key)
    k, rec = next(iter(v.items()))
    mid, h = rec.decode().split(":")
    assert int(k) == int(mid) % 255 and len(h) == 16, (k, rec)


# ----------------------------------------------------------------- tests

@pytest.mark.timeout(120)
def test_kill9_between_append_and_puback_stores_once(proxy, ingest):
    """The worker appended 40 messages and wrote their PUBACKs, which the
    broker never got (the proxy held them); then it is killed. The
    respawned worker resumes the session, Mosquitto redelivers the 40 with
    DUP, and each is recognised: 40 rows, 40 duplicates."""
    ctx = start(ingest, proxy)
    f = ctx.f
    dev = ctx.dev("k9")
    base = now_ms() - 60000
    dup0 = metric(ctx, "fleetd_mqtt_duplicates_total")
    victim = f.worker_pids()[0]

    assert publish_held(ctx, proxy, dev, base) == N
    # all N PUBACKs are swallowed already: nothing more is on its way
    proxy.hold_pubacks(False)
    os.kill(victim, signal.SIGKILL)
    assert not stack.wait_pids_gone([victim], 5), "worker still alive"
    proxy.cut()

    def respawned():
        h = f.healthz(timeout=2)
        w0 = [w for w in h["workers"] if w["slot"] == 0][0]
        return w0["pid"] not in (victim, 0) and w0["state"] == "ready" and w0

    w0 = wait(ctx, proxy, respawned, 30, "slot 0 respawned")
    check_stored_once(ctx, proxy, dev, base, dup0)
    assert w0["restarts"] == 1, w0
    check_record(ctx)


@pytest.mark.timeout(120)
def test_connection_drop_between_append_and_puback_stores_once(proxy, ingest):
    """The same without a kill: the connection drops while the 40 PUBACKs
    are held; paho reconnects in the same process, the broker redelivers
    the 40 with DUP, none is appended again."""
    ctx = start(ingest, proxy)
    dev = ctx.dev("cut")
    base = now_ms() - 60000
    dup0 = metric(ctx, "fleetd_mqtt_duplicates_total")
    enq0 = metric(ctx, "fleetd_mqtt_enqueued_total")
    pid = ctx.f.worker_pids()[0]

    assert publish_held(ctx, proxy, dev, base) == N
    proxy.hold_pubacks(False)
    proxy.cut()
    check_stored_once(ctx, proxy, dev, base, dup0)
    assert metric(ctx, "fleetd_mqtt_enqueued_total") - enq0 == N
    assert ctx.f.worker_pids()[0] == pid, "the worker was not to restart"
    check_record(ctx)


@pytest.mark.timeout(150)
def test_dup_of_a_message_never_appended_is_stored(proxy, ingest,
                                                 redis_server):
    """The check is exact: a DUP copy whose first delivery never reached
    the stream is appended, even when another message with the same topic
    and payload is in the stream (no false positive from payload equality).

    Redis is stopped: the worker takes message k and retries its append.
    The proxy then holds what the broker sends, and more messages are
    published: the broker sends them (they are in flight, and will carry
    DUP next time) but fleetd never sees them. Among them: two identical
    payloads without "ts" back to back, and a copy of k's payload. The
    connection is cut, Redis comes back: k's append goes through, its
    PUBACK dies with the connection, and the reconnect brings all of them
    again with DUP. Only k is in the stream already; every other one is
    appended. (In one process k is always appended before its DUP: paho's
    receive thread stays in k's callback until the append succeeds.)"""
    ctx = start(ingest, proxy)
    dev = ctx.dev("exact")
    base = now_ms() - 60000
    m0 = {n: metric(ctx, n) for n in (
        "fleetd_mqtt_duplicates_total", "fleetd_mqtt_received_total",
        "fleetd_mqtt_enqueue_failures_total", "fleetd_mqtt_enqueued_total")}

    def grew(name):
        return metric(ctx, name) - m0[name]

    p_k = {"ts": base, "seq": 0}
    same = {"door": "open"}                  # no ts: the same bytes twice
    later = [p_k, same, same] + [{"ts": base + i, "seq": i}
                                 for i in range(1, 11)]
    t_stop = time.monotonic()
    redis_server.stop()
    try:
        ctx.send(dev, p_k)
        # the worker has k and cannot append it
        wait(ctx, proxy, lambda: grew("fleetd_mqtt_received_total") == 1 and
             grew("fleetd_mqtt_enqueue_failures_total") > 0, 20,
             "the worker retrying the append of message k")
        proxy.hold_downstream(True)
        for p in later:
            ctx.send(dev, p)
        proxy.wait_for("held_publishes", len(later), 20)
        proxy.cut()
        proxy.hold_downstream(False)
        assert grew("fleetd_mqtt_received_total") == 1, why(ctx, proxy)
    finally:
        redis_server.start()
    print("Redis down for %.1f s" % (time.monotonic() - t_stop))
    ctx.wait_deps_up(40)

    def stored():
        rows = seq_rows(ctx, dev)
        return len(rows) == 11 and grew("fleetd_mqtt_duplicates_total") >= 1

    wait(ctx, proxy, stored, 45, "11 seqs stored and k's DUP recognised")
    time.sleep(0.5)
    rows = seq_rows(ctx, dev)
    assert rows == {i: 1 for i in range(11)}, why(ctx, proxy, repr(rows))
    entries = stream_payloads(ctx, dev)
    want = {to_bytes(p_k): 2, to_bytes(same): 2}
    want.update({to_bytes(p): 1 for p in later[3:]})
    assert entries == want, why(ctx, proxy, "stream entries %r" % entries)
    # the DUP copies of the 13 never appended were appended, not counted
    assert grew("fleetd_mqtt_duplicates_total") == 1, why(ctx, proxy)
    assert grew("fleetd_mqtt_received_total") == 1 + 1 + len(later), \
        why(ctx, proxy)
    assert grew("fleetd_mqtt_enqueued_total") == 1 + len(later), \
        why(ctx, proxy)
    assert proxy.get("dup_publishes") >= 1 + len(later), why(ctx, proxy)
    # the door: two messages, two entries; rows do not tell (no ts)
    doors = ctx.query("SELECT count(*) FROM telemetry WHERE device_id = %s "
                      "AND metric = 'door'", (dev,))[0][0]
    assert doors >= 1


@pytest.mark.timeout(90)
def test_identical_payloads_back_to_back_are_both_appended(proxy, ingest):
    """Two different messages with the same topic and payload (no "ts"),
    published back to back, are two deliveries with two packet ids: both
    are appended, nothing counts as a duplicate - also when both come
    again as DUPs after a connection drop."""
    ctx = start(ingest, proxy)
    dev = ctx.dev("twins")
    dup0 = metric(ctx, "fleetd_mqtt_duplicates_total")
    payload = json.dumps({"temp": 21.5}).encode()
    ctx.send(dev, payload)
    ctx.send(dev, payload)
    wait(ctx, proxy, lambda: stream_payloads(ctx, dev).get(payload) == 2, 20,
         "two stream entries")
    assert metric(ctx, "fleetd_mqtt_duplicates_total") == dup0

    # the same pair again, both redelivered with DUP: each matches its own
    # record only
    proxy.hold_pubacks(True)
    ctx.send(dev, payload)
    ctx.send(dev, payload)
    proxy.wait_for("held_pubacks", 2, 20)
    proxy.hold_pubacks(False)
    proxy.cut()
    wait(ctx, proxy,
         lambda: metric(ctx, "fleetd_mqtt_duplicates_total") - dup0 == 2, 30,
         "the two DUPs recognised")
    time.sleep(0.5)
    assert stream_payloads(ctx, dev).get(payload) == 4, why(ctx, proxy)
    assert metric(ctx, "fleetd_mqtt_duplicates_total") - dup0 == 2


@pytest.mark.timeout(120)
def test_retired_slot_redeliveries_match_its_own_records(proxy, ingest):
    """Two workers append 40 messages between them; their PUBACKs never
    reach the broker, and fleetd stops. Started again with one worker, w0
    resumes its session and retires w1's (fleetd-{node}-w1): the broker
    redelivers both halves with DUP, and each is matched against the
    record of the session it was appended on."""
    cfg = {"mqtt": {"uri": proxy.uri, "receive_max": RECEIVE_MAX}}
    ctx = ingest(cfg, prefix="it%s:" % uniq(), workers=2)
    f = ctx.f
    dev = ctx.dev("retire")
    base = now_ms() - 60000

    assert publish_held(ctx, proxy, dev, base) == N
    proxy.hold_pubacks(False)
    key1 = dedup_key(ctx).replace("-w0", "-w1")
    assert ctx.redis.hlen(key1) > 0, "w1 appended nothing: %r" % (
        proxy.counters(),)
    f.stop()
    proxy.cut()
    f.write_config(stack.deep_merge(f.extra, {"workers": 1}))
    f.start(timeout=20)

    def done():
        return (len(seq_rows(ctx, dev)) == N and
                metric(ctx, "fleetd_mqtt_duplicates_total") >= N)

    wait(ctx, proxy, done, 45, "%d rows and %d duplicates after the "
         "restart with one worker" % (N, N))
    time.sleep(0.5)
    assert seq_rows(ctx, dev) == {i: 1 for i in range(N)}, why(ctx, proxy)
    want = {to_bytes({"ts": base + i, "seq": i}): 1 for i in range(N)}
    assert stream_payloads(ctx, dev) == want, why(ctx, proxy)
    assert metric(ctx, "fleetd_mqtt_duplicates_total") == N, why(ctx, proxy)
    wait(ctx, proxy, lambda: "retired the mqtt session \"fleetd-it-%s-w1\"" %
         ctx.tag in f.log_text(), 20, "slot 1 retired")
