"""
A device's state through the API (issue 8, item 4): the shadow (values,
reported, online, last_seen), desired state and its delta, and the delta
published on devices/{id}/desired, retained, as a device that connects
later sees it.
"""

import json
import threading
import time

import pytest

import stack
from api_util import ApiClient, error_code
from ingest_util import ingest, now_ms, uniq  # noqa: F401


@pytest.fixture
def api(ingest):
    ctx = ingest(prefix="st%s:" % uniq())
    return ApiClient(ctx.f), ctx


def retained(mq, topic, wait=1.5):
    """What a fresh subscriber to topic receives within `wait` seconds:
    [(payload bytes, retain flag)]."""
    import paho.mqtt.client as mqtt
    got = []
    ready = threading.Event()
    c = mqtt.Client(client_id="it-ret-" + uniq(), clean_session=True)

    def on_connect(cl, u, f, rc):
        cl.subscribe(topic, qos=1)

    def on_subscribe(cl, u, mid, qos):
        ready.set()

    c.on_connect = on_connect
    c.on_subscribe = on_subscribe
    c.on_message = lambda cl, u, m: got.append((m.payload, m.retain))
    c.connect(mq.host, mq.port, keepalive=30)
    c.loop_start()
    try:
        assert ready.wait(10), "no SUBACK"
        time.sleep(wait)
    finally:
        c.disconnect()
        c.loop_stop()
    return got


def wait_state(a, dev, pred, timeout=10):
    st = {}

    def ok():
        s, doc = a.get("/api/v1/devices/%s/state" % dev)
        st["last"] = (s, doc)
        return s == 200 and pred(doc)
    try:
        stack.wait_until(ok, timeout, what="state of %s" % dev)
    except TimeoutError as e:
        raise AssertionError("%s; last %r" % (e, st.get("last"))) from None
    return st["last"][1]


def test_state_from_the_shadow(api):
    a, ctx = api
    d = ctx.dev("s1")
    t = now_ms() - 2000
    ctx.send(d, {"ts": t, "temp": 21.5, "door": True, "fw": "1.0"})
    ctx.send(d, {"mode": "eco", "cfg": {"a": [1, 2]}}, kind="state")
    # with two workers the two messages may be taken by different workers,
    # in either order: wait for both
    doc = wait_state(a, d, lambda x: x["reported"].get("mode") == "eco" and
                     len(x["values"]) == 3)
    assert doc["device"] == d
    assert doc["values"] == {"temp": 21.5, "door": True, "fw": "1.0"}
    assert doc["value_ts"] == {"temp": t, "door": t, "fw": t}
    assert doc["ts"] == t
    assert doc["reported"] == {"mode": "eco", "cfg": {"a": [1, 2]}}
    assert doc["online"] is True and abs(doc["last_seen"] - now_ms()) < 30000
    assert doc["desired"] == {} and doc["delta"] == {}
    # a registered device without data: empty, not 404
    e = ctx.dev("empty")
    assert a.post("/api/v1/devices", {"id": e})[0] == 201
    s, doc = a.get("/api/v1/devices/%s/state" % e)
    assert s == 200, doc
    assert doc["values"] == {} and doc["online"] is False and \
        doc["last_seen"] is None and doc["ts"] is None
    s, doc = a.get("/api/v1/devices/nobody-%s/state" % uniq())
    assert s == 404 and error_code(doc) == "not_found"
    s, doc = a.get("/api/v1/devices/%s/state" % d, token=None)
    assert s == 401


def test_desired_delta_published_retained_and_cleared(api):
    """PUT desired -> delta against reported; the delta is retained on
    devices/{id}/desired for a device that connects later; when the
    device reports the desired values, the delta empties and the retained
    message is cleared."""
    a, ctx = api
    d = ctx.dev("dd")
    assert a.post("/api/v1/devices", {"id": d})[0] == 201
    ctx.send(d, {"fw": "1.0", "interval": 10}, kind="state")
    wait_state(a, d, lambda x: x["reported"].get("fw") == "1.0")
    s, doc = a.put("/api/v1/devices/%s/desired" % d,
                   {"fw": "2.0", "interval": 10, "led": {"on": True}})
    assert s == 200, doc
    assert doc["delta"] == {"fw": "2.0", "led": {"on": True}}, doc
    topic = "devices/%s/desired" % d
    # the 200 does not wait for the broker: a subscriber that comes before
    # the publish sees it live (retain flag 0); wait for a retained copy
    got = stack.wait_until(
        lambda: [m for m in retained(ctx.mq, topic, 0.5) if m[1]], 10,
        what="the retained delta")
    assert len(got) == 1
    assert json.loads(got[0][0]) == {"fw": "2.0", "led": {"on": True}}
    s, st = a.get("/api/v1/devices/%s/state" % d)
    assert st["desired"] == {"fw": "2.0", "interval": 10, "led": {"on": True}}
    assert st["delta"] == {"fw": "2.0", "led": {"on": True}}
    # the device catches up part of it: the retained delta follows
    ctx.send(d, {"fw": "2.0"}, kind="state")
    stack.wait_until(lambda: [json.loads(p) for p, r in
                              retained(ctx.mq, topic, 0.5)] ==
                     [{"led": {"on": True}}], 10, what="the smaller delta")
    # and all of it: the retained message is cleared
    ctx.send(d, {"led": {"on": True}}, kind="state")
    wait_state(a, d, lambda x: x["delta"] == {})
    stack.wait_until(lambda: retained(ctx.mq, topic, 0.7) == [], 10,
                     what="the retained delta cleared")
    # PUT of the same desired state changes no delta, publishes nothing new
    s, doc = a.put("/api/v1/devices/%s/desired" % d,
                   {"fw": "2.0", "led": {"on": True}})
    assert s == 200 and doc["delta"] == {}
    assert retained(ctx.mq, topic, 0.5) == []


def test_desired_errors(api):
    a, ctx = api
    d = ctx.dev("de")
    s, doc = a.put("/api/v1/devices/%s/desired" % d, {"x": 1})
    assert s == 404, doc
    assert a.post("/api/v1/devices", {"id": d})[0] == 201
    for body in ([1], "x", b"{bad", {"": 1}):
        s, doc = a.put("/api/v1/devices/%s/desired" % d, body)
        assert s == 400, (body, doc)
    s, doc = a.post("/api/v1/keys", {"scopes": ["read"]})
    ro = ApiClient(ctx.f, doc["token"])
    assert ro.put("/api/v1/devices/%s/desired" % d, {"x": 1})[0] == 403
    assert ro.get("/api/v1/devices/%s/state" % d)[0] == 200
    # null leaves a key out
    s, doc = a.put("/api/v1/devices/%s/desired" % d, {"x": 1, "y": None})
    assert s == 200 and doc["delta"] == {"x": 1}, doc
    s, st = a.get("/api/v1/devices/%s/state" % d)
    assert st["desired"] == {"x": 1}
