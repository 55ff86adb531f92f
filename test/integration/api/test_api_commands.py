"""
Commands to devices through the API (issue 8, item 6): POST publishes the
body plus "id" on devices/{id}/commands at QoS 1 (a real subscriber sees
it), the row goes pending -> sent (the broker's PUBACK) -> acked / failed
(the device answers on devices/{id}/commands/ack) or expired (ttl_s, which
is also the MQTT 5 Message Expiry Interval: the broker drops the command
for a sleeping device once it passed). List and get, errors, bad answers
as dead letters, answers surviving a PostgreSQL outage.

Devices here are MQTT 5 clients (paho 1.6.1); a "sleeping" device has a
persistent session (clean start off, session expiry) and is disconnected.
Every wait has a deadline.
"""

import calendar
import json
import threading
import time

import pytest

import stack
from api_util import ApiClient, error_code
from ingest_util import ingest, now_ms, uniq  # noqa: F401


@pytest.fixture
def api(ingest):
    ctx = ingest(prefix="cm%s:" % uniq())
    return ApiClient(ctx.f), ctx


class Device:
    """A device-side MQTT 5 client: subscribes to devices/{id}/commands at
    QoS 1, records what arrives, and answers on .../commands/ack.
    persistent: clean start off with a session that outlives a disconnect
    (the broker queues commands for it while it sleeps)."""

    def __init__(self, mq, device, persistent=False):
        import paho.mqtt.client as mqtt
        self.mq = mq
        self.device = device
        self.persistent = persistent
        self.client_id = "it-dev-" + uniq()
        self.topic = "devices/%s/commands" % device
        self.lock = threading.Lock()
        self.got = []                   # (payload bytes, qos, properties)
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.session_present = None
        self.c = mqtt.Client(client_id=self.client_id,
                             protocol=mqtt.MQTTv5)
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda c, u, mid, rc, p: self.subscribed.set()
        self.c.on_message = self._on_message
        self.c.on_disconnect = lambda c, u, rc, p=None: self.connected.clear()

    def _on_connect(self, c, u, flags, rc, props):
        if rc == 0:
            self.session_present = bool(flags.get("session present"))
            self.connected.set()

    def _on_message(self, c, u, m):
        with self.lock:
            self.got.append((m.payload, m.qos, m.properties))

    def connect(self, subscribe=True):
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600 if self.persistent else 0
        self.connected.clear()
        self.subscribed.clear()
        self.c.connect(self.mq.host, self.mq.port, keepalive=30,
                       clean_start=not self.persistent, properties=props)
        self.c.loop_start()
        assert self.connected.wait(10), "device %s: no CONNACK" % self.device
        if subscribe:
            self.c.subscribe(self.topic, qos=1)
            assert self.subscribed.wait(10), "device %s: no SUBACK" % \
                self.device
        return self

    def disconnect(self):
        self.c.disconnect()
        self.c.loop_stop()

    def commands(self):
        """[(parsed JSON, raw bytes, qos, properties)] received so far."""
        with self.lock:
            return [(json.loads(p), p, q, pr) for p, q, pr in self.got]

    def wait_commands(self, n, timeout=10.0):
        return stack.wait_until(
            lambda: len(self.commands()) >= n and self.commands(), timeout,
            what="%d commands at device %s" % (n, self.device))

    def answer(self, payload, device=None, timeout=10.0):
        """Publish an answer (a dict, or raw bytes) at QoS 1 and wait for
        the broker's PUBACK."""
        topic = "devices/%s/commands/ack" % (device or self.device)
        data = payload if isinstance(payload, bytes) else \
            json.dumps(payload).encode()
        info = self.c.publish(topic, data, qos=1)
        info.wait_for_publish(timeout)
        assert info.is_published(), "no PUBACK for the answer on " + topic


def register(a, dev):
    s, doc = a.post("/api/v1/devices", {"id": dev})
    assert s == 201, doc


def send(a, dev, body, ttl=None):
    path = "/api/v1/devices/%s/commands" % dev
    if ttl is not None:
        path += "?ttl_s=%s" % ttl
    s, doc = a.post(path, body)
    assert s == 202, (s, doc)
    return doc


def get_cmd(a, dev, cid):
    s, doc = a.get("/api/v1/devices/%s/commands/%s" % (dev, cid))
    assert s == 200, (s, doc)
    return doc


def wait_status(a, dev, cid, status, timeout=10.0):
    last = {}

    def ok():
        last["doc"] = get_cmd(a, dev, cid)
        return last["doc"]["status"] == status and last["doc"]
    try:
        return stack.wait_until(ok, timeout, what="command %s %s" % (
            cid, status))
    except TimeoutError as e:
        raise AssertionError("%s; last %r" % (e, last.get("doc"))) from None


def dead_reasons(ctx, mark, topic):
    return sorted(d["reason"] for d in ctx.dead_since(mark, topic))


# --------------------------------------------------------------- the path

def test_command_published_sent_and_answered(api):
    """POST -> 202 pending; a real subscriber gets body + id at QoS 1, the
    numbers exactly as sent; PUBACK -> sent; ok true -> acked with the
    result, ok false -> failed; a second answer changes nothing; answers
    are not telemetry."""
    a, ctx = api
    d = ctx.dev("cmd")
    register(a, d)
    dev = Device(ctx.mq, d).connect()
    try:
        body = {"action": "reboot", "delay_s": 5,
                "big": 12345678901234567890, "args": {"force": True}}
        t0 = now_ms()
        doc = send(a, d, body)
        assert doc["device"] == d and doc["status"] == "pending", doc
        cid = doc["id"]
        assert a.last_headers.get("location") == \
            "/api/v1/devices/%s/commands/%s" % (d, cid)
        assert doc["body"] == body and doc["ttl_s"] is None and \
            doc["expires_at"] is None and doc["result"] is None, doc
        got = dev.wait_commands(1)
        assert len(got) == 1
        msg, raw, qos, props = got[0]
        assert qos == 1
        assert msg == dict(body, id=cid), msg
        assert b"12345678901234567890" in raw, raw      # not through a double
        assert not hasattr(props, "MessageExpiryInterval")
        sent = wait_status(a, d, cid, "sent")
        assert sent["sent_at"] is not None and sent["answered_at"] is None

        rows0 = ctx.metric_sum("fleetd_ingest_rows_total") or 0
        stored0 = ctx.metric_sum("fleetd_ingest_stored_total") or 0
        mark = ctx.dead_mark()
        dev.answer({"id": cid, "ok": True, "result": {"uptime_s": 3}})
        acked = wait_status(a, d, cid, "acked")
        assert acked["result"] == {"uptime_s": 3}, acked
        assert acked["answered_at"] is not None and acked["error"] is None

        # ok false -> failed, with what the device said
        c2 = send(a, d, {"action": "update", "url": "http://x/fw.bin"})["id"]
        wait_status(a, d, c2, "sent")
        dev.answer({"id": c2, "ok": False, "result": "busy", "ts": 1})
        failed = wait_status(a, d, c2, "failed")
        assert failed["result"] == "busy", failed

        # the first answer wins; a later one is ignored, not a dead letter
        dev.answer({"id": cid, "ok": False, "result": "late"})
        c3 = send(a, d, {"action": "ping"})["id"]
        dev.answer({"id": c3, "ok": True})      # no result: null
        wait_status(a, d, c3, "acked")
        assert get_cmd(a, d, cid)["result"] == {"uptime_s": 3}
        assert get_cmd(a, d, cid)["status"] == "acked"
        assert get_cmd(a, d, c3)["result"] is None
        assert ctx.dead_since(mark, "devices/%s/commands/ack" % d) == []

        # answers are no telemetry: no row, nothing counted as stored
        assert ctx.count_rows(d) == 0
        assert (ctx.metric_sum("fleetd_ingest_rows_total") or 0) == rows0
        assert (ctx.metric_sum("fleetd_ingest_stored_total") or 0) == stored0
        assert ctx.shadow(d) == {}
        created = calendar.timegm(time.strptime(doc["created_at"][:19],
                                                "%Y-%m-%dT%H:%M:%S"))
        assert abs(created * 1000 - t0) < 60000, doc["created_at"]
    finally:
        dev.disconnect()


@pytest.mark.timeout(90)
def test_ttl_expires_and_broker_drops_it(api):
    """ttl_s=2: to a device that never connects, and to a sleeping device
    with a persistent session: both expire after about 2 s, and the
    sleeping device, when it wakes, does not get the expired command
    (the broker dropped it) but does get the one sent without ttl_s. A
    late answer to an expired command still counts."""
    a, ctx = api
    never, sleepy = ctx.dev("never"), ctx.dev("sleepy")
    register(a, never)
    register(a, sleepy)
    dev = Device(ctx.mq, sleepy, persistent=True).connect()
    dev.disconnect()                    # asleep, its session kept

    t0 = time.monotonic()
    c_never = send(a, never, {"action": "blink"}, ttl=2)
    c_ttl = send(a, sleepy, {"action": "blink"}, ttl=2)
    c_keep = send(a, sleepy, {"action": "report"})
    for c in (c_never, c_ttl):
        assert c["ttl_s"] == 2 and c["expires_at"] is not None, c
    wait_status(a, sleepy, c_keep["id"], "sent")
    for dv, c in ((never, c_never), (sleepy, c_ttl)):
        doc = wait_status(a, dv, c["id"], "expired", timeout=15)
        assert doc["answered_at"] is None and doc["sent_at"] is not None
    elapsed = time.monotonic() - t0
    assert 1.5 <= elapsed < 15, elapsed
    assert get_cmd(a, sleepy, c_keep["id"])["status"] == "sent"

    # Mosquitto keeps expiry times in whole seconds and drops a message
    # once its second is over: up to ~1 s after the 2 s (fleetd may mark
    # it expired a little before; an answer in that gap still counts)
    time.sleep(max(0.0, 4.5 - (time.monotonic() - t0)))
    dev.connect(subscribe=False)        # wakes up: the session's queue
    try:
        assert dev.session_present, "the broker lost the device's session"
        got = dev.wait_commands(1)
        time.sleep(1.5)                 # anything else queued comes now
        ids = [m["id"] for m, _, _, _ in dev.commands()]
        assert ids == [c_keep["id"]], (ids, got)
        dev.answer({"id": c_keep["id"], "ok": True, "result": 1})
        assert wait_status(a, sleepy, c_keep["id"], "acked")["result"] == 1
        # an answer after the expiry: the device did run it
        dev.answer({"id": c_ttl["id"], "ok": True, "result": "late"})
        assert wait_status(a, sleepy, c_ttl["id"], "acked")["result"] == \
            "late"
    finally:
        dev.disconnect()
    # the expiry interval went out with the publish
    dev2 = Device(ctx.mq, sleepy).connect()
    try:
        c4 = send(a, sleepy, {"action": "x"}, ttl=30)
        _, _, qos, props = dev2.wait_commands(1)[0]
        assert qos == 1
        assert 25 <= getattr(props, "MessageExpiryInterval", 0) <= 30, props
        assert get_cmd(a, sleepy, c4["id"])["status"] in ("pending", "sent")
    finally:
        dev2.disconnect()


def test_commands_list_in_creation_order_across_workers(api):
    """Commands sent one after another, as fast as the API answers, land on
    both workers and often several in one millisecond: the list shows them
    newest first in exactly the order they were created (the id's count
    within a millisecond is node-wide, fl_shm)."""
    a, ctx = api
    d = ctx.dev("order")
    register(a, d)
    n = 300
    made = [send(a, d, {"n": i})["id"] for i in range(n)]
    s, doc = a.get("/api/v1/devices/%s/commands?limit=1000" % d)
    assert s == 200 and len(doc["commands"]) == n, doc
    got = [c["body"]["n"] for c in doc["commands"]]
    assert got == list(range(n - 1, -1, -1)), \
        "first out of order at %r" % next(i for i, (x, y) in enumerate(
            zip(got, range(n - 1, -1, -1))) if x != y)
    assert [c["id"] for c in doc["commands"]] == sorted(made, reverse=True)
    ms = [c[:8] + c[9:13] for c in made]
    print("%d commands in %d distinct milliseconds" % (n, len(set(ms))))


def test_list_and_get_with_pagination(api):
    a, ctx = api
    d, other = ctx.dev("lst"), ctx.dev("other")
    register(a, d)
    register(a, other)
    made = []
    for i in range(7):
        made.append(send(a, d, {"n": i})["id"])
    base = "/api/v1/devices/%s/commands" % d

    s, doc = a.get(base)
    assert s == 200 and doc["device"] == d and doc["next"] is None, doc
    assert [c["id"] for c in doc["commands"]] == sorted(made, reverse=True)
    assert [c["body"]["n"] for c in doc["commands"]] == list(range(6, -1, -1))

    seen, pages, cursor = [], 0, None
    while True:
        path = base + "?limit=3" + ("&cursor=" + cursor if cursor else "")
        s, doc = a.get(path)
        assert s == 200, doc
        seen += [c["id"] for c in doc["commands"]]
        pages += 1
        if pages == 1:
            # a command created while paging does not shift the pages
            made.append(send(a, d, {"n": 7})["id"])
        cursor = doc["next"]
        if cursor is None:
            break
        assert pages < 10
    assert pages == 3 and seen == sorted(made[:7], reverse=True), seen
    s, doc = a.get(base + "?limit=1")
    assert [c["id"] for c in doc["commands"]] == [made[7]]

    for cid in made:
        wait_status(a, d, cid, "sent")
    s, doc = a.get(base + "?status=sent&limit=1000")
    assert s == 200 and len(doc["commands"]) == 8, doc
    s, doc = a.get(base + "?status=acked")
    assert s == 200 and doc["commands"] == [] and doc["next"] is None

    one = get_cmd(a, d, made[0])
    assert one["id"] == made[0] and one["body"] == {"n": 0} and \
        one["status"] == "sent"
    s, doc = a.get("/api/v1/devices/%s/commands/%s" % (other, made[0]))
    assert s == 404 and error_code(doc) == "not_found", doc
    s, doc = a.get(base + "/nope-" + uniq())
    assert s == 404 and error_code(doc) == "not_found", doc
    s, doc = a.get("/api/v1/devices/%s/commands" % other)
    assert s == 200 and doc["commands"] == [] and doc["next"] is None
    s, doc = a.get("/api/v1/devices/nobody-%s/commands" % uniq())
    assert s == 404 and error_code(doc) == "not_found", doc
    for q in ("?limit=0", "?limit=1001", "?limit=x", "?limit=",
              "?cursor=zz", "?cursor=c", "?cursor=c00", "?status=done"):
        s, doc = a.get(base + q)
        assert s == 400 and error_code(doc) == "bad_request", (q, s, doc)


def test_errors_and_auth(api):
    a, ctx = api
    d = ctx.dev("err")
    register(a, d)
    base = "/api/v1/devices/%s/commands" % d
    s, doc = a.post("/api/v1/devices/nobody-%s/commands" % uniq(), {"a": 1})
    assert s == 404 and error_code(doc) == "not_found", doc
    for body in (None, b"", b"[1]", b"\"x\"", b"3", b"null", b"{bad",
                 b"{\"a\": 01}", b"{\"a\": NaN}", b"{\"a\": \"\\u0000\"}",
                 b"{\"a\": 1} x", b"\xff", {"id": "mine", "a": 1}):
        s, doc = a.post(base, body)
        assert s == 400 and error_code(doc) in ("bad_request", "bad_json"), \
            (body, s, doc)
    for ttl in ("0", "-1", "x", "1.5", "", "2147483648",
                "99999999999999999999", "%201"):
        s, doc = a.post(base + "?ttl_s=" + ttl, {"a": 1})
        assert s == 400 and error_code(doc) == "bad_request", (ttl, s, doc)
    s, doc = a.post(base, {"blob": "x" * 70000})
    assert s == 413 and error_code(doc) == "too_large", (s, doc)
    s, doc = a.call("DELETE", base)
    assert s == 405 and "POST" in a.last_headers.get("allow", ""), doc
    s, doc = a.call("PUT", base + "/abc")
    assert s == 405, doc

    s, doc = a.post(base, {"a": 1}, token=None)
    assert s == 401 and error_code(doc) == "unauthorized"
    s, doc = a.post(base, {"a": 1}, token="wrong")
    assert s == 401
    s, doc = a.get(base + "?token=" + "x", token=None)
    assert s == 401
    s, k = a.post("/api/v1/keys", {"scopes": ["read"]})
    ro = ApiClient(ctx.f, k["token"])
    s, doc = ro.post(base, {"a": 1})
    assert s == 403 and error_code(doc) == "forbidden", doc
    assert ro.get(base)[0] == 200
    s, k = a.post("/api/v1/keys", {"scopes": ["write"]})
    rw = ApiClient(ctx.f, k["token"])
    s, doc = rw.post(base + "?ttl_s=60", {})
    assert s == 202 and doc["body"] == {} and doc["ttl_s"] == 60, doc
    # nothing was recorded for the refused ones
    s, doc = a.get(base)
    assert s == 200 and len(doc["commands"]) == 1, doc
    assert ctx.query("SELECT count(*) FROM commands WHERE device_id = %s",
                     (d,))[0][0] == 1


def test_mqtt_down_503_recorded_failed(fleetd, postgres):
    """No broker: 503, and the command is recorded as failed with the
    reason (never left pending, never published later)."""
    # one worker: with two, the API answering on one says nothing of the
    # other's database pool, still connecting under a slow (ASan) start
    f = fleetd({"node_id": "it-" + uniq(),
                "mqtt": {"uri": "tcp://127.0.0.1:%d" % stack.free_port()}},
               workers=1, wait_ready=False)
    a = ApiClient(f)
    d = "nomq-" + uniq()
    # /healthz stays 503 (mqtt down): wait for the API instead
    stack.wait_until(lambda: a.post("/api/v1/devices", {"id": d})[0] == 201,
                     20, interval=0.2, what="the API answering")
    # a loaded machine may answer "database unavailable" (no command row
    # then) while the worker's pool still connects: try again
    last = {}

    def refused_for_mqtt():
        s, doc = a.post("/api/v1/devices/%s/commands" % d, {"a": 1})
        last["r"] = (s, doc)
        assert s == 503 and error_code(doc) == "unavailable", (s, doc)
        return "command" in doc
    stack.wait_until(refused_for_mqtt, 20, interval=0.5,
                     what="a 503 with the failed command")
    s, doc = last["r"]
    cmd = doc["command"]
    assert cmd["status"] == "failed" and "MQTT" in cmd["error"], cmd
    assert cmd["id"] in doc["error"]["message"]
    assert get_cmd(a, d, cmd["id"])["status"] == "failed"
    s, doc = a.post("/api/v1/devices/nobody-%s/commands" % uniq(), {"a": 1})
    assert s == 404, doc


def test_bad_answers_are_dead_letters_and_the_stream_flows(api):
    """Answers that are not JSON, lack a field, name no command or another
    device's command: dead letters with their reason, counted; the
    command of the other device is unchanged; good answers and telemetry
    behind them go through."""
    a, ctx = api
    d, e = ctx.dev("bad"), ctx.dev("else")
    register(a, d)
    register(a, e)
    cd = send(a, d, {"a": 1})["id"]
    ce = send(a, e, {"a": 2})["id"]
    wait_status(a, e, ce, "sent")
    before = {r: ctx.rejected(r) for r in ("invalid_json", "bad_ack",
                                           "unknown_command", "empty",
                                           "not_an_object")}
    mark = ctx.dead_mark()
    dev = Device(ctx.mq, d).connect(subscribe=False)
    try:
        for p in (b"not json", b"", b"[1]", b"{\"id\": 5, \"ok\": true}",
                  b"{\"id\": \"%s\"}" % cd.encode(),
                  json.dumps({"id": "nope-" + uniq(), "ok": True}).encode(),
                  json.dumps({"id": ce, "ok": False}).encode()):
            dev.answer(p)
        dev.answer({"id": cd, "ok": True, "result": [1, 2]})
        ctx.send(d, {"ts": now_ms(), "temp": 20.5})
        assert wait_status(a, d, cd, "acked")["result"] == [1, 2]
        ctx.wait_rows(d, 1)
        topic = "devices/%s/commands/ack" % d
        want = sorted(["invalid_json", "empty", "not_an_object", "bad_ack",
                       "bad_ack", "unknown_command", "unknown_command"])
        stack.wait_until(lambda: dead_reasons(ctx, mark, topic) == want, 10,
                         what="dead letters %r (have %r)" % (
                             want, dead_reasons(ctx, mark, topic)))
        letters = ctx.dead_since(mark, topic)
        other = [x for x in letters if ce in x["error"]]
        assert other and "another device" in other[0]["error"], letters
        assert all(x["error"] for x in letters)
        assert get_cmd(a, e, ce)["status"] == "sent"
        assert ctx.count_rows(d) == 1
        after = {r: ctx.rejected(r) for r in before}
        assert after["unknown_command"] - before["unknown_command"] == 2
        assert after["bad_ack"] - before["bad_ack"] == 2
        assert after["invalid_json"] - before["invalid_json"] == 1
    finally:
        dev.disconnect()


@pytest.mark.timeout(120)
def test_answer_kept_while_postgres_is_down(api, postgres):
    """An answer that arrives while PostgreSQL is down waits in the
    stream (not acknowledged, not dead-lettered) and is applied once it is
    back."""
    a, ctx = api
    d = ctx.dev("pgdown")
    register(a, d)
    cid = send(a, d, {"a": 1})["id"]
    wait_status(a, d, cid, "sent")
    mark = ctx.dead_mark()
    dev = Device(ctx.mq, d).connect(subscribe=False)
    try:
        topic = ("devices/%s/commands/ack" % d).encode()

        def in_stream():
            return any(f.get(b"t") == topic for _, f in
                       ctx.redis.xrevrange(ctx.stream_key, count=20))
        postgres.stop()
        try:
            dev.answer({"id": cid, "ok": True, "result": "while down"})
            stack.wait_until(in_stream, 10, what="the answer in the stream")
            time.sleep(1.0)
        finally:
            postgres.start()
        ctx.wait_deps_up(45)
        doc = wait_status(a, d, cid, "acked", timeout=30)
        assert doc["result"] == "while down"
        assert ctx.dead_since(mark, "devices/%s/commands/ack" % d) == []
        stack.wait_until(
            lambda: ctx.redis.xpending(ctx.stream_key, "fleetd")
            ["pending"] == 0, 15, what="nothing pending")
    finally:
        dev.disconnect()
