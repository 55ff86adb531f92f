"""
Ingest (issue 3, CONTRACT.md section 3): what devices publish over MQTT
ends up as rows in PostgreSQL and in the device shadow in Redis; what is
not a valid telemetry message ends up in the dead-letter stream with its
reason, counted in /metrics, and the server carries on.

Real Mosquitto, Redis and PostgreSQL (stack.py); devices publish with
paho-mqtt at QoS 1 and wait for the PUBACK. These tests use the default
redis.prefix "fleetd:" unless they say otherwise; each test has its own
device ids, node_id and MQTT share group (ingest_util.py says why).
"""

import datetime
import json
import re
import threading
import time

import pytest

import stack
from ingest_util import (Publisher, burst, ingest, now_ms, to_bytes,  # noqa: F401
                         uniq)

NOW_SLACK_MS = 1000     # clock reads around "time of arrival"


# -------------------------------------------------------------- helpers

def kind_value(row):
    """('num', x) / ('bool', b) / ('text', s) for a telemetry row, or
    ('mixed', (value, value_bool, value_text)) when not exactly one of the
    three value columns is set."""
    _, _, v, vb, vt = row
    present = [(k, x) for k, x in (("num", v), ("bool", vb), ("text", vt))
               if x is not None]
    if len(present) == 1:
        return present[0]
    return ("mixed", (v, vb, vt))


def num(x):
    return ("num", float(x))


def boolean(b):
    return ("bool", bool(b))


def text(s):
    return ("text", s)


def check_rows(rows, expected):
    """expected: [(metric, ts, kind_value)], ts an int (ms) or a (lo, hi)
    range. Returns a list of differences (empty when rows match exactly,
    in any order)."""
    got = sorted((r[0], int(r[1]), kind_value(r)) for r in rows)
    want = sorted(expected, key=lambda e: (e[0], e[1] if isinstance(e[1], int)
                                           else e[1][0]))
    diffs = []
    if len(got) != len(want):
        diffs.append("%d rows, expected %d" % (len(got), len(want)))
    left = list(got)
    for metric, ts, kv in want:
        hit = None
        for g in left:
            if g[0] != metric or g[2] != kv:
                continue
            if isinstance(ts, int) and g[1] == ts:
                hit = g
            elif not isinstance(ts, int) and ts[0] <= g[1] <= ts[1]:
                hit = g
            if hit:
                break
        if hit:
            left.remove(hit)
        else:
            diffs.append("missing %r at %r" % ((metric, kv), ts))
    for g in left:
        diffs.append("unexpected row %r" % (g,))
    return diffs


def assert_rows(ctx, dev, expected, timeout=20.0):
    rows = ctx.wait_rows(dev, len(expected), timeout)
    time.sleep(0.2)                 # anything extra would be in the same commit
    rows = ctx.rows(dev)
    diffs = check_rows(rows, expected)
    assert not diffs, "rows of %s differ:\n  %s\nrows: %r" % (
        dev, "\n  ".join(diffs), rows)
    return rows


def assert_shadow(ctx, dev, values, ts=None, timeout=10.0):
    """values: {metric: expected JSON value}; ts: {metric: ms} (or one int
    for all). Waits until the shadow shows them; returns the hash."""
    def ok(h):
        for m, v in values.items():
            if "v:" + m not in h or not same_json(json.loads(h["v:" + m]), v):
                return False
            want_ts = ts.get(m) if isinstance(ts, dict) else ts
            if want_ts is not None and h.get("t:" + m) != str(want_ts):
                return False
        return "last_seen" in h

    return ctx.wait_shadow(dev, ok, timeout,
                           what="shadow values %r ts %r + last_seen" % (values, ts))


def same_json(a, b):
    """a == b as JSON values: 40 and 40.0 are the same number, but true is
    not 1 (Python would say it is)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def recent_ts(back_ms=30000):
    """An epoch-ms timestamp a little in the past, on a whole ms."""
    return now_ms() - back_ms


def rfc3339(ms, offset_min=0, frac="", sep="T", zulu="Z"):
    """Format epoch ms (whole seconds used) as RFC 3339 with the given
    UTC offset in minutes and fraction digits string."""
    tz = datetime.timezone(datetime.timedelta(minutes=offset_min))
    d = datetime.datetime.fromtimestamp(ms // 1000, tz)
    s = d.strftime("%Y-%m-%d" + sep + "%H:%M:%S") + (("." + frac) if frac else "")
    if offset_min == 0 and zulu:
        return s + zulu
    sign = "+" if offset_min >= 0 else "-"
    return s + "%s%02d:%02d" % (sign, abs(offset_min) // 60, abs(offset_min) % 60)


# ------------------------------------------------------- payload forms

@pytest.mark.timeout(60)
def test_flat_object_with_ts(ingest):
    ctx = ingest()
    dev = ctx.dev("flat")
    t = recent_ts()
    t0 = now_ms()
    ctx.send(dev, {"temperature": 21.5, "humidity": 40, "pressure": -3.5e2,
                   "ts": t})
    assert_rows(ctx, dev, [("temperature", t, num(21.5)),
                           ("humidity", t, num(40)),
                           ("pressure", t, num(-350))])
    h = assert_shadow(ctx, dev, {"temperature": 21.5, "humidity": 40,
                                 "pressure": -350}, ts=t)
    # last_seen is when the message arrived (ms), not the reading's ts
    assert t0 - NOW_SLACK_MS <= int(h["last_seen"]) <= now_ms() + NOW_SLACK_MS, h
    # "ts" is the time of the point, not a metric
    assert "v:ts" not in h, h


@pytest.mark.timeout(60)
def test_flat_object_without_ts_is_time_of_arrival(ingest):
    ctx = ingest()
    dev = ctx.dev("nots")
    t0 = now_ms()
    ctx.send(dev, {"temperature": 20.25, "door": False})
    rows = ctx.wait_rows(dev, 2)
    t1 = now_ms()
    win = (t0 - NOW_SLACK_MS, t1 + NOW_SLACK_MS)
    diffs = check_rows(rows, [("temperature", win, num(20.25)),
                              ("door", win, boolean(False))])
    assert not diffs, "%s\nrows %r, arrival window %r" % (diffs, rows, win)
    assert rows[0][1] == rows[1][1], "one message, one time: %r" % rows
    assert_shadow(ctx, dev, {"temperature": 20.25, "door": False},
                  ts=int(rows[0][1]))


@pytest.mark.timeout(60)
def test_ts_and_values_form(ingest):
    ctx = ingest()
    dev = ctx.dev("values")
    t = recent_ts()
    ctx.send(dev, {"ts": t, "values": {"temperature": 19.5, "fan": False,
                                       "mode": "eco"}})
    assert_rows(ctx, dev, [("temperature", t, num(19.5)),
                           ("fan", t, boolean(False)),
                           ("mode", t, text("eco"))])
    h = assert_shadow(ctx, dev, {"temperature": 19.5, "fan": False,
                                 "mode": "eco"}, ts=t)
    assert not any(k.startswith("v:values") for k in h), h


@pytest.mark.timeout(60)
def test_batch_array_of_two(ingest):
    ctx = ingest()
    dev = ctx.dev("batch")
    t1 = recent_ts(40000)
    t2 = t1 + 1500
    ctx.send(dev, [{"ts": t1, "temperature": 18.0, "door": True},
                   {"ts": t2, "values": {"temperature": 18.5}}])
    assert_rows(ctx, dev, [("temperature", t1, num(18.0)),
                           ("door", t1, boolean(True)),
                           ("temperature", t2, num(18.5))])
    assert_shadow(ctx, dev, {"temperature": 18.5, "door": True},
                  ts={"temperature": t2, "door": t1})


@pytest.mark.timeout(60)
def test_senml_base_fields(ingest):
    """bn + n names, bt + t times (seconds, t relative to bt), bv added to
    every v, bu/u units accepted, vb booleans, vs strings."""
    ctx = ingest()
    dev = ctx.dev("senml")
    base_s = now_ms() // 1000 - 60
    bt = base_s + 0.25                 # exact in binary
    at = base_s * 1000 + 250
    ctx.send(dev, [
        {"bn": "urn:dev:x:", "bt": bt, "bu": "Cel", "bv": 20.0, "bver": 10,
         "n": "temp", "v": 1.5, "t": -10},
        {"n": "temp", "v": 2.5},
        {"n": "hum", "u": "%RH", "v": 40, "t": 0},
        {"n": "door", "vb": True},
        {"n": "fw", "vs": "1.2.3"},
    ])
    assert_rows(ctx, dev, [("urn:dev:x:temp", at - 10000, num(21.5)),
                           ("urn:dev:x:temp", at, num(22.5)),
                           ("urn:dev:x:hum", at, num(60)),
                           ("urn:dev:x:door", at, boolean(True)),
                           ("urn:dev:x:fw", at, text("1.2.3"))])
    assert_shadow(ctx, dev, {"urn:dev:x:temp": 22.5, "urn:dev:x:hum": 60,
                             "urn:dev:x:door": True, "urn:dev:x:fw": "1.2.3"},
                  ts=at)


@pytest.mark.timeout(60)
def test_senml_times_relative_to_now(ingest):
    """No bt and t below 2**28: relative to the time of arrival."""
    ctx = ingest()
    dev = ctx.dev("senrel")
    t0 = now_ms()
    ctx.send(dev, [{"n": "rel", "v": 3, "t": -5}, {"n": "now", "v": 4}])
    rows = ctx.wait_rows(dev, 2)
    t1 = now_ms()
    diffs = check_rows(rows, [
        ("rel", (t0 - 5000 - NOW_SLACK_MS, t1 - 5000 + NOW_SLACK_MS), num(3)),
        ("now", (t0 - NOW_SLACK_MS, t1 + NOW_SLACK_MS), num(4))])
    assert not diffs, "%s\nrows %r (sent at %d..%d)" % (diffs, rows, t0, t1)
    by = {r[0]: int(r[1]) for r in rows}
    assert by["now"] - by["rel"] == 5000, rows


@pytest.mark.timeout(60)
def test_nested_objects_flatten_with_dots(ingest):
    ctx = ingest()
    dev = ctx.dev("nested")
    t = recent_ts()
    ctx.send(dev, {"ts": t, "gps": {"lat": 52.37, "lon": 4.89,
                                    "fix": {"ok": True, "sats": 7}},
                   "battery": {"v": 3.7}, "empty": {}})
    assert_rows(ctx, dev, [("gps.lat", t, num(52.37)),
                           ("gps.lon", t, num(4.89)),
                           ("gps.fix.ok", t, boolean(True)),
                           ("gps.fix.sats", t, num(7)),
                           ("battery.v", t, num(3.7))])
    assert_shadow(ctx, dev, {"gps.lat": 52.37, "gps.fix.ok": True,
                             "battery.v": 3.7}, ts=t)


@pytest.mark.timeout(60)
def test_rfc3339_timestamps(ingest):
    """'Z' and '+01:00' offsets, fractions of any length truncated to the
    microsecond (not rounded; the table stores microseconds), lower-case
    'z' and a space separator. The shadow keeps milliseconds."""
    ctx = ingest()
    dev = ctx.dev("rfc")
    base = (now_ms() // 1000 - 120) * 1000000       # whole second, in us
    cases = [
        (rfc3339(base // 1000, 0, "123456"), base + 123456),
        (rfc3339(base // 1000 + 10000, 60, "5"), base + 10500000),
        (rfc3339(base // 1000 + 20000, -90, "9999999"), base + 20999999),
        (rfc3339(base // 1000 + 30000, 0, "", sep=" ", zulu="z"),
         base + 30000000),
        (rfc3339(base // 1000 + 40000, 330, "0421"), base + 40042100),
    ]
    for i, (s, _) in enumerate(cases):
        ctx.send(dev, {"ts": s, "temp": i})
    ctx.wait_rows(dev, len(cases))
    rows = ctx.query(
        "SELECT (extract(epoch FROM ts) * 1000000)::bigint, value "
        "FROM telemetry WHERE device_id = %s ORDER BY ts", (dev,))
    assert [(int(us), v) for us, v in rows] == \
        [(us, float(i)) for i, (_, us) in enumerate(cases)], \
        "sent %r\nrows %r" % (cases, rows)
    assert_shadow(ctx, dev, {"temp": len(cases) - 1},
                  ts=cases[-1][1] // 1000)


@pytest.mark.timeout(60)
def test_booleans_go_to_value_bool(ingest):
    ctx = ingest()
    dev = ctx.dev("bool")
    t = recent_ts()
    ctx.send(dev, {"ts": t, "door": True, "alarm": False})
    assert_rows(ctx, dev, [("door", t, boolean(True)),
                           ("alarm", t, boolean(False))])
    h = assert_shadow(ctx, dev, {"door": True, "alarm": False}, ts=t)
    assert h["v:door"].strip() == "true" and h["v:alarm"].strip() == "false", h


@pytest.mark.timeout(60)
def test_strings_go_to_value_text(ingest):
    ctx = ingest()
    dev = ctx.dev("text")
    t = recent_ts()
    note = "h\u00e9llo \u2713 \"quoted\" \\ \U0001F600"
    ctx.send(dev, {"ts": t, "status": "ok", "note": note, "blank": ""})
    assert_rows(ctx, dev, [("status", t, text("ok")),
                           ("note", t, text(note)),
                           ("blank", t, text(""))])
    assert_shadow(ctx, dev, {"status": "ok", "note": note, "blank": ""}, ts=t)


# -------------------------------------------------------------- fan-out

@pytest.mark.timeout(60)
def test_fanout_publishes_websocket_form(ingest):
    """Every stored point is published on {prefix}tele:{shard} in the
    WebSocket form of CONTRACT.md section 4, one message per point, with
    the point's own values (batch, strings with escapes, booleans)."""
    ctx = ingest()
    dev = ctx.dev("fan")
    t = recent_ts()
    note = "line\nbreak \"q\" \u00e9 \x01"
    rc = ctx.rd_service.client(decode_responses=True)
    ps = rc.pubsub()
    ps.psubscribe(ctx.prefix + "tele:*")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:          # the psubscribe reply
        m = ps.get_message(timeout=0.5)
        if m and m["type"] == "psubscribe":
            break
    ctx.send(dev, [{"ts": t, "values": {"temp": 21.5, "on": True,
                                        "note": note}},
                   {"ts": t + 1000, "values": {"temp": 1e-7,
                                               "n": 12345678901}}])
    got = []
    deadline = time.monotonic() + 15
    while len(got) < 2 and time.monotonic() < deadline:
        m = ps.get_message(timeout=0.5)
        if not m or m["type"] != "pmessage":
            continue
        msg = json.loads(m["data"])
        if msg.get("device") == dev:
            got.append((m["channel"], msg))
    ps.close()
    rc.close()
    assert len(got) == 2, "published for %s: %r (rows %r, dead %r)" % (
        dev, got, ctx.rows(dev), ctx.dead_for_devices([dev]))
    (ch0, a), (ch1, b) = got
    assert ch0 == ch1 and ch0.startswith(ctx.prefix + "tele:"), (ch0, ch1)
    assert 0 <= int(ch0.rsplit(":", 1)[1]) < 16, ch0
    for msg in (a, b):
        assert sorted(msg) == ["device", "id", "ts", "type", "values"], msg
        assert msg["type"] == "telemetry" and msg["device"] == dev, msg
    assert a["ts"] == t and b["ts"] == t + 1000, (a, b)
    assert same_json(a["values"], {"temp": 21.5, "on": True, "note": note}), a
    assert same_json(b["values"], {"temp": 1e-7, "n": 12345678901}), b
    # ids: Redis's clock in µs at publish, strictly increasing; the second
    # point of the message is published right after the first
    assert re.fullmatch(r"[1-9][0-9]{15}", a["id"]), a["id"]
    assert int(b["id"]) == int(a["id"]) + 1, (a["id"], b["id"])
    assert abs(int(a["id"]) / 1000 - time.time() * 1000) < 60000, a["id"]


@pytest.mark.timeout(120)
def test_burst_from_one_device_fanned_out_once_in_order(ingest):
    """A burst from one device puts many of its entries in one chunk, and
    the script gets them as one record (one HMGET, HSET and LPUSH): every
    message is still published once, with ids growing in stream order
    (one worker: publish order), the shadow holds the newest value of each
    metric - also when an older reading comes late in the burst - and the
    resume list holds the newest messages, newest first."""
    ctx = ingest(workers=1)
    dev = ctx.dev("burst")
    n, late = 600, 300
    base = recent_ts()
    payloads = [{"ts": base + i, "seq": i, "x": i} for i in range(n)]
    # an older reading in the middle of the burst, with a metric of its own
    payloads.insert(late, {"ts": base - 5000, "seq": n, "x": -1, "old": 7})
    rc = ctx.rd_service.client(decode_responses=True)
    ps = rc.pubsub()
    ps.psubscribe(ctx.prefix + "tele:*")
    stack.wait_until(lambda: (ps.get_message(timeout=0.2) or {}).get("type")
                     == "psubscribe", 10, what="the psubscribe reply")
    calls0 = ctx.redis.info("commandstats").get("cmdstat_evalsha",
                                                {}).get("calls", 0)
    burst(ctx.mq, ctx.topic(dev), payloads)
    got = []
    deadline = time.monotonic() + 60
    while len(got) < n + 1 and time.monotonic() < deadline:
        m = ps.get_message(timeout=0.5)
        if m and m["type"] == "pmessage":
            msg = json.loads(m["data"])
            if msg.get("device") == dev:
                got.append(msg)
    ps.close()
    rc.close()
    seqs = [m["values"]["seq"] for m in got]
    want = [p["seq"] for p in payloads]
    assert seqs == want, "published %d of %d; first difference at %r" % (
        len(seqs), len(want),
        next((i for i, (a, b) in enumerate(zip(seqs, want)) if a != b), None))
    ids = [int(m["id"]) for m in got]
    assert all(a < b for a, b in zip(ids, ids[1:])), "ids not increasing"
    h = ctx.wait_shadow(dev, lambda h: h.get("v:seq") == str(n - 1), 20)
    assert (h["v:x"], h["v:old"], h["t:x"]) == (str(n - 1), "7", str(base + n - 1)), h
    calls = ctx.redis.info("commandstats")["cmdstat_evalsha"]["calls"] - calls0
    print("burst of %d messages: %d script calls" % (n + 1, calls))
    lst = ctx.redis.lrange(ctx.prefix + "recent:" + dev, 0, 99)
    assert [json.loads(x)["values"]["seq"] for x in lst] == \
        list(reversed(want))[:100]
    ctx.wait_rows(dev, n + 1)


# --------------------------------------------------------------- shadow

@pytest.mark.timeout(60)
def test_state_messages_merge_into_reported_state(ingest):
    """devices/{id}/state: a JSON object shallow-merged into r:{key};
    null deletes the key; telemetry of the same device is kept alongside;
    state is not telemetry (no rows)."""
    ctx = ingest()
    dev = ctx.dev("state")
    ctx.send(dev, {"fw": "1.2.0", "cfg": {"rate": 5, "mode": "eco"},
                   "online": True, "n": 3}, kind="state")

    def reported(h):
        return {k[2:]: json.loads(v) for k, v in h.items() if k.startswith("r:")}

    ctx.wait_shadow(dev, lambda h: same_json(reported(h), {
        "fw": "1.2.0", "cfg": {"rate": 5, "mode": "eco"}, "online": True,
        "n": 3}), what="reported state after the first merge")

    ctx.send(dev, {"fw": "1.3.0", "cfg": None, "extra": [1, 2]}, kind="state")
    ctx.wait_shadow(dev, lambda h: same_json(reported(h), {
        "fw": "1.3.0", "online": True, "n": 3, "extra": [1, 2]}),
        what="reported state after merge with null (cfg deleted)")

    t = recent_ts()
    ctx.send(dev, {"ts": t, "temp": 7.5})
    ctx.wait_rows(dev, 1)
    h = ctx.wait_shadow(dev, lambda h: h.get("v:temp") is not None
                        and reported(h).get("fw") == "1.3.0",
                        what="telemetry next to reported state")
    assert json.loads(h["v:temp"]) == 7.5 and h["t:temp"] == str(t), h
    assert "last_seen" in h, h
    rows = ctx.rows(dev)
    assert [r[0] for r in rows] == ["temp"], \
        "state messages must not become telemetry rows: %r" % rows


@pytest.mark.timeout(60)
def test_shadow_keeps_newest_reading(ingest):
    """A reading older than the one in the shadow (a device uploading what
    it buffered while offline) is stored but does not replace the newer
    value in the shadow: the shadow holds the latest value by time."""
    ctx = ingest()
    dev = ctx.dev("order")
    t = recent_ts(60000)
    ctx.send(dev, {"ts": t + 5000, "temp": 2.0})
    assert_shadow(ctx, dev, {"temp": 2.0}, ts=t + 5000)
    seen0 = int(ctx.shadow(dev)["last_seen"])
    ctx.send(dev, {"ts": t, "temp": 1.0})
    assert_rows(ctx, dev, [("temp", t, num(1.0)), ("temp", t + 5000, num(2.0))])
    # the row says nothing about the shadow step: wait until the older
    # reading went through the shadow script (it moves last_seen, its
    # arrival time, forward) before checking it did not win
    h = ctx.wait_shadow(dev, lambda h: int(h.get("last_seen", 0)) > seen0,
                        timeout=20, what="last_seen of the older reading")
    assert json.loads(h["v:temp"]) == 2.0 and h["t:temp"] == str(t + 5000), \
        "an older reading replaced the newer one in the shadow: %r" % h


@pytest.mark.timeout(60)
def test_shadow_without_newest_time_field_keeps_newest_reading(ingest):
    """The intake compares a reading with the shadow's _t (the newest time
    it holds) instead of with each metric's time. A shadow written before
    _t existed (an upgrade) holds newer times than an arriving reading and
    no _t: that reading must still lose to them, a newer one win, and _t
    then cover every metric's time."""
    ctx = ingest()
    dev = ctx.dev("upgrade")
    key = ctx.prefix + "shadow:" + dev
    t = recent_ts(60000)
    # what an earlier release left: values, times, last_seen, no _t
    ctx.redis.hset(key, mapping={"v:temp": "2.0", "t:temp": str(t + 5000),
                                 "v:rh": "40", "t:rh": str(t - 9000),
                                 "last_seen": str(t - 1)})
    ctx.send(dev, {"ts": t, "temp": 1.0, "rh": 41})
    h = ctx.wait_shadow(dev, lambda h: h.get("v:rh") == "41", timeout=20,
                        what="the newer rh of the reading")
    assert (h["v:temp"], h["t:temp"]) == ("2.0", str(t + 5000)), \
        "an older reading replaced the newer one in the shadow: %r" % h
    assert h["t:rh"] == str(t) and int(h["_t"]) >= t + 5000, h
    ctx.send(dev, {"ts": t + 6000, "temp": 3.0})
    h = ctx.wait_shadow(dev, lambda h: h.get("v:temp") == "3", timeout=20,
                        what="the newer temp")
    assert (h["t:temp"], h["_t"]) == (str(t + 6000), str(t + 6000)), h
    # an older reading again, now against _t: temp stays, rh older too
    ctx.send(dev, {"ts": t + 1000, "temp": 0.5, "rh": 39})
    h = ctx.wait_shadow(dev, lambda h: h.get("v:rh") == "39", timeout=20,
                        what="rh of the reading between")
    assert (h["v:temp"], h["_t"]) == ("3", str(t + 6000)), h
    ctx.wait_rows(dev, 5)


# ------------------------------------------------------------ at scale

@pytest.mark.timeout(180)
def test_100_devices_50_messages_each_stored_exactly_once(ingest):
    ctx = ingest()
    ndev, nmsg, nclients = 100, 50, 4
    devices = [ctx.dev("d%03d" % i) for i in range(ndev)]
    base = now_ms() - 120000
    pubs = [Publisher(ctx.mq) for _ in range(nclients)]
    infos = [[] for _ in range(nclients)]
    errors = []

    def run(k):
        try:
            mine = devices[k::nclients]
            for i in range(nmsg):
                for dev in mine:
                    infos[k].append(pubs[k].client.publish(
                        "devices/%s/telemetry" % dev,
                        to_bytes({"ts": base + i, "seq": i}), qos=1))
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    t0 = time.monotonic()
    threads = [threading.Thread(target=run, args=(k,)) for k in range(nclients)]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert not errors, errors
        deadline = time.monotonic() + 60
        for lst in infos:
            for info in lst:
                info.wait_for_publish(max(0.01, deadline - time.monotonic()))
        unacked = sum(1 for lst in infos for i in lst if not i.is_published())
        assert unacked == 0, "%d of %d publishes not acknowledged by the broker" % (
            unacked, ndev * nmsg)
        t_acked = time.monotonic() - t0
    finally:
        for p in pubs:
            p.close()

    total = ndev * nmsg

    def count():
        return ctx.query("SELECT count(*) FROM telemetry WHERE device_id = ANY(%s)",
                         (devices,))[0][0]

    try:
        stack.wait_until(lambda: count() >= total, 90, interval=0.25,
                         what="%d rows" % total)
    except TimeoutError:
        raise AssertionError("%d of %d acknowledged messages stored after 90 s\n%s"
                             % (count(), total, ctx.diagnostics())) from None
    t_stored = time.monotonic() - t0
    time.sleep(1.0)                      # would anything arrive twice?
    assert count() == total
    dup = ctx.query(
        "SELECT device_id, ts, count(*) FROM telemetry WHERE device_id = ANY(%s) "
        "GROUP BY 1, 2 HAVING count(*) <> 1 LIMIT 10", (devices,))
    assert not dup, "(device, ts) not stored exactly once: %r" % dup
    per_dev = dict(ctx.query(
        "SELECT device_id, count(*) FROM telemetry WHERE device_id = ANY(%s) "
        "GROUP BY 1", (devices,)))
    assert sorted(per_dev) == sorted(devices) and set(per_dev.values()) == {nmsg}, \
        {d: c for d, c in per_dev.items() if c != nmsg}
    wrong = ctx.query(
        "SELECT device_id, ts, value FROM telemetry WHERE device_id = ANY(%s) AND "
        "(metric <> 'seq' OR (extract(epoch FROM ts) * 1000)::bigint - %s <> value) "
        "LIMIT 10", (devices, base))
    assert not wrong, "rows with the wrong metric/ts/value: %r" % wrong
    # rows and shadows are written at different steps: wait for the
    # shadows rather than assume the last batch's are there with its rows
    state = {}

    def shadows():
        state["no"] = [d for d in devices
                       if not ctx.redis.exists(ctx.shadow_key(d))]
        return not state["no"]
    try:
        stack.wait_until(shadows, 30, interval=0.2, what="every shadow")
    except TimeoutError:
        raise AssertionError("devices without a shadow: %r" %
                             state["no"][:10]) from None
    rejected = ctx.metric_sum("fleetd_ingest_rejected_total") or 0
    assert rejected == 0, ctx.ingest_metrics_text()
    print("5000 messages: acknowledged after %.2f s, all stored after %.2f s"
          % (t_acked, t_stored))


# ------------------------------------------------------------ bad input

BAD_LIMIT = 32 * 1024
BAD_LIMITS = {"limits": {"max_payload_bytes": "32k"}}


def _telemetry(dev):
    return "devices/%s/telemetry" % dev


def _oversize():
    head = b'{"a":1'
    return head + b" " * (BAD_LIMIT + 1 - len(head) - 1) + b"}"


# (id, accepted reasons, topic from device id, payload)
BAD = [
    ("malformed_json", {"invalid_json"}, _telemetry, b'{"temp": 21.5,'),
    # fl_payload.h: the first problem in byte order decides; 0x00 comes
    # first here, so invalid_json; a parser that checks UTF-8 up front
    # would say not_utf8, which is as right for "binary".
    ("binary_garbage", {"invalid_json", "not_utf8"}, _telemetry,
     bytes([0x00, 0x9f, 0x92, 0x96, 0xff, 0xfe, 0x08, 0x96, 0x01]) + b"bin\x01\x02"),
    ("invalid_utf8", {"not_utf8"}, _telemetry, b'{"t\xc3\x28mp": 1}'),
    ("oversize", {"too_large"}, _telemetry, _oversize()),
    ("nesting_10000_deep", {"too_deep"}, _telemetry,
     b'{"a":' + b"[" * 9999 + b"]" * 9999 + b"}"),
    ("number_1e999", {"bad_number"}, _telemetry, b'{"temp": 1e999}'),
    ("nan_token", {"bad_number"}, _telemetry, b'{"temp": NaN}'),
    ("invalid_device_id", {"bad_device_id"},
     lambda dev: "devices/%s$x/telemetry" % dev, b'{"temp": 1}'),
    ("device_id_65_chars", {"bad_device_id"},
     lambda dev: "devices/%s/telemetry" % (dev + "x" * 65)[:65], b'{"temp": 1}'),
    ("empty_payload", {"empty"}, _telemetry, b""),
    ("huge_metric_name", {"name_too_long"}, _telemetry,
     b'{"' + b"m" * 10000 + b'": 1}'),
    # more of fl_payload.h's reasons
    ("not_an_object", {"not_an_object"}, _telemetry, b"42"),
    ("array_value", {"array_value"}, _telemetry, b'{"temp": [1, 2]}'),
    ("duplicate_metric", {"duplicate_metric"}, _telemetry,
     b'{"gps.lat": 1, "gps": {"lat": 2}}'),
    ("bad_timestamp", {"bad_timestamp"}, _telemetry,
     b'{"ts": "yesterday", "temp": 1}'),
    ("bad_senml", {"bad_senml"}, _telemetry, b'[{"n": "temp", "v": 1, "zz": 2}]'),
    ("only_nulls", {"no_metrics"}, _telemetry, b'{"temp": null}'),
]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_is_dead_lettered_counted_and_server_carries_on(ingest, case):
    name, reasons, topic_of, payload = case
    ctx = ingest(BAD_LIMITS)
    f = ctx.f
    h0 = f.healthz()
    pids0 = sorted(w["pid"] for w in h0["workers"])
    dev = ctx.dev("bad")
    topic = topic_of(dev)
    before = {r: ctx.rejected(r) for r in reasons}
    mark = ctx.dead_mark()

    t0 = now_ms()
    ctx.send(topic, payload)
    try:
        entries = stack.wait_until(lambda: ctx.dead_since(mark, topic), 20,
                                   what="dead letter for %s" % topic)
    except TimeoutError as e:
        raise AssertionError("%s\nother dead letters since: %r\n%s" % (
            e, [{k: v for k, v in d.items() if k != "payload"}
                for d in ctx.dead_since(mark)][:5], ctx.diagnostics())) from None
    t1 = now_ms()
    e = entries[0]
    shown = {k: (v[:80] if k == "payload" else v) for k, v in e.items()}
    assert e.get("reason") in reasons, \
        "dead letter reason %r, expected one of %s: %r" % (
            e.get("reason"), sorted(reasons), shown)
    assert e.get("error", "").strip(), "no error message: %r" % shown
    assert set(e) >= {"topic", "reason", "error", "payload", "rx"}, shown
    rx = int(e["rx"])
    assert t0 - NOW_SLACK_MS <= rx <= t1 + NOW_SLACK_MS, \
        "rx %d not the arrival time (%d..%d): %r" % (rx, t0, t1, shown)
    p = e["payload"]
    assert len(p) <= 1024 and payload.startswith(p) and \
        len(p) >= min(len(payload), 1024) - 3, \
        "dead letter payload is not the (1 KiB-truncated) original: %r" % p[:80]

    reason = e["reason"]
    try:
        stack.wait_until(lambda: ctx.rejected(reason) == before[reason] + 1, 10,
                         what="fleetd_ingest_rejected_total{reason=%r} + 1" % reason)
    except TimeoutError as err:
        raise AssertionError("%s (was %r, now %r)\n%s" % (
            err, before[reason], ctx.rejected(reason),
            ctx.ingest_metrics_text())) from None

    # the server carries on: a valid message after it is stored
    good = dev if topic == _telemetry(dev) else ctx.dev("good")
    t = recent_ts()
    ctx.send(good, {"ts": t, "after": 1})
    rows = ctx.wait_rows(good, 1)
    assert [(r[0], int(r[1]), kind_value(r)) for r in rows] == \
        [("after", t, num(1))], \
        "only the valid message may be stored for %s: %r" % (good, rows)
    assert len(ctx.dead_since(mark, topic)) == 1, \
        "dead-lettered more than once: %r" % ctx.dead_since(mark, topic)
    h1 = f.healthz()
    assert sorted(w["pid"] for w in h1["workers"]) == pids0, (h0, h1)
    assert all(w["restarts"] == 0 for w in h1["workers"]), h1["workers"]
    assert f.alive()


# --------------------------------------------------------------- health

@pytest.mark.timeout(60)
def test_healthz_reports_dependencies_and_queue(ingest):
    ctx = ingest(prefix="it%s:" % uniq())
    status, h = ctx.f.healthz_status()
    assert status == 200 and h["status"] == "ok", h
    for dep in ("mqtt", "redis", "postgres"):
        assert h[dep] == "up", (dep, h)
    # sampled periodically: give the first sample a moment
    try:
        stack.wait_until(lambda: ctx.f.healthz()["queue"].get("length")
                         is not None, 20, what="queue numbers in /healthz")
    except TimeoutError:
        pass
    q = ctx.f.healthz()["queue"]
    for k in ("length", "pending"):
        assert isinstance(q.get(k), int) and not isinstance(q.get(k), bool) \
            and q[k] >= 0, "queue.%s is not a count: %r" % (k, q)
    # the canary went through this node's own stream: idle, nothing pending
    stack.wait_until(lambda: ctx.f.healthz()["queue"]["pending"] == 0, 20,
                     what="queue.pending back to 0 when idle")
    assert ctx.f.healthz()["queue"]["length"] >= 1 or \
        ctx.redis.xlen(ctx.stream_key) == 0, ctx.f.healthz()["queue"]


# ----------------------------------------------- written twice, late, old
#
# fl_pg.c writes a batch with COPY straight into telemetry and falls back
# to the staging table (INSERT .. ON CONFLICT DO NOTHING, partitions made
# on demand) when the COPY meets a row that is stored already or a row
# without a partition. These make both happen for real.

def _entry(topic, payload, rx_ms):
    """Stream entry fields as fl_mqtt.c writes them."""
    return {"t": topic, "p": to_bytes(payload), "r": str(rx_ms)}


def _pending(ctx):
    try:
        return ctx.redis.xpending(ctx.stream_key, "fleetd")["pending"]
    except Exception as e:  # noqa: BLE001 - the group may not exist yet
        return repr(e)


@pytest.mark.timeout(90)
def test_batch_written_again_adds_no_rows_and_is_acknowledged(ingest):
    """Entries whose rows are committed already go through the consumer
    again (copies of them appended to the stream, as a redelivery after a
    crash between COMMIT and XACK would do), together with new ones in the
    same batch: the new rows are stored once, the old ones not again, and
    every entry is acknowledged."""
    ctx = ingest(prefix="it%s:" % uniq())
    dev = ctx.dev("again")
    topic = ctx.topic(dev)
    base = recent_ts(60000)
    n_old, n_new = 20, 5
    for i in range(n_old):
        ctx.send(dev, {"ts": base + i, "a": i, "b": i % 2 == 0, "c": "s%d" % i})
    ctx.wait_rows(dev, 3 * n_old)
    stack.wait_until(lambda: _pending(ctx) == 0, 10,
                     what="the first entries acknowledged")
    old = [f for _, f in ctx.redis.xrange(ctx.stream_key, "-", "+")
           if f.get(b"t") == topic.encode()]
    assert len(old) == n_old, old
    mark = ctx.dead_mark()
    log0 = len(ctx.f.log_text())

    # one MULTI: the consumer's next XREADGROUP sees all of them at once
    pipe = ctx.redis.pipeline(transaction=True)
    for f in old:
        pipe.xadd(ctx.stream_key, f)
    for i in range(n_new):
        pipe.xadd(ctx.stream_key, _entry(topic, {"ts": base + 1000 + i,
                                                 "a": 100 + i}, now_ms()))
    pipe.execute()

    ctx.wait_rows(dev, 3 * n_old + n_new)
    stack.wait_until(lambda: _pending(ctx) == 0, 20,
                     what="every entry acknowledged (pending %r)" % _pending(ctx))
    time.sleep(0.3)
    expected = [(m, base + i, kv) for i in range(n_old) for m, kv in (
        ("a", num(i)), ("b", boolean(i % 2 == 0)), ("c", text("s%d" % i)))]
    expected += [("a", base + 1000 + i, num(100 + i)) for i in range(n_new)]
    diffs = check_rows(ctx.rows(dev), expected)
    assert not diffs, "rows of %s differ:\n  %s\n%s" % (
        dev, "\n  ".join(diffs), ctx.diagnostics())
    assert ctx.redis.xlen(ctx.stream_key) >= 2 * n_old + n_new
    assert ctx.dead_since(mark) == [], ctx.dead_since(mark)
    log = ctx.f.log_text()[log0:]
    assert "stored already" in log, \
        "the fast path did not fall back to the staging table:\n%s" % \
        stack.tail(log, 40)


@pytest.mark.timeout(90)
def test_late_rows_get_a_partition_and_expired_rows_are_dead_lettered(ingest):
    """One message with a point in a day that has no partition (late data),
    a point older than retention_days (30 by default) and a recent one: the
    partition is created and the late row stored, the expired point is
    dead-lettered as too_old (and counted, not as stored), the recent one
    stored, the entry acknowledged."""
    ctx = ingest(prefix="it%s:" % uniq())
    dev = ctx.dev("late")
    day = 86400000
    have = {int(r[0]) for r in ctx.query(
        "SELECT (extract(epoch FROM lo) * 1000)::bigint FROM fleetd_partitions()")}
    today = now_ms() // day * day
    # a day well inside the retention that no partition covers yet
    late_day = next((d for d in (today - k * day for k in range(5, 25))
                     if d not in have), None)
    assert late_day is not None, "every day of the last 25 has a partition"
    late = late_day + 12345
    old = today - 40 * day + 777
    recent = recent_ts()
    mark = ctx.dead_mark()
    log0 = len(ctx.f.log_text())
    too_old0 = ctx.metric_sum("fleetd_ingest_rows_dead_lettered_total",
                              reason="too_old")
    rows0 = ctx.metric_sum("fleetd_ingest_rows_total")
    ctx.send(dev, [{"ts": late, "x": 1}, {"ts": old, "x": 2},
                   {"ts": recent, "x": 3}])
    rows = ctx.wait_rows(dev, 2)
    stack.wait_until(lambda: _pending(ctx) == 0, 20,
                     what="the entry acknowledged (pending %r)" % _pending(ctx))
    # the counters are added when the XACK's reply is back, after
    # XPENDING shows 0 already
    ctx.wait_idle(20)
    rows = ctx.rows(dev)
    diffs = check_rows(rows, [("x", late, num(1)), ("x", recent, num(3))])
    assert not diffs, "rows of %s differ:\n  %s\n%s" % (
        dev, "\n  ".join(diffs), ctx.diagnostics())
    dead = ctx.dead_since(mark)
    assert [d["reason"] for d in dead] == ["too_old"], dead
    assert "1 of 3 points" in dead[0]["error"] and \
        "the other points were stored" in dead[0]["error"], dead
    assert ctx.metric_sum("fleetd_ingest_rows_dead_lettered_total",
                          reason="too_old") == too_old0 + 1
    assert ctx.metric_sum("fleetd_ingest_rows_total") == rows0 + 2
    log = ctx.f.log_text()[log0:]
    assert "created partition" in log, stack.tail(log, 40)


@pytest.mark.timeout(60)
def test_linger_gathers_a_trickle_into_one_batch(ingest):
    """ingest.linger: a batch whose first read brought a few entries keeps
    gathering for the linger time, so messages that trickle in are stored
    in one transaction (one batch), not one each; and none waits much
    longer than the linger."""
    ctx = ingest(extra={"ingest": {"linger": "1500ms"}}, workers=1,
                 prefix="lg%s:" % uniq())
    dev = ctx.dev("linger")
    t = recent_ts()
    before = ctx.f.metric("fleetd_ingest_batches_total")
    t0 = time.monotonic()
    for i in range(5):
        ctx.send(dev, {"ts": t + i, "temp": i})
        time.sleep(0.05)
    sent = time.monotonic() - t0
    assert sent < 1.2, "publishing took %.2fs, too slow for the test" % sent
    assert len(ctx.wait_rows(dev, 5, timeout=15)) == 5
    stored = time.monotonic() - t0
    stack.wait_until(lambda: ctx.f.metric("fleetd_ingest_batches_total")
                     >= before + 1, 20, what="the batch counted")
    time.sleep(0.3)
    assert ctx.f.metric("fleetd_ingest_batches_total") == before + 1, \
        "5 messages within %.2fs were not stored as one batch" % sent
    assert stored < 1.5 + 3.0, "stored %.2fs after the first send" % stored
