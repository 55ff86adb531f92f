"""
The history of a metric (issue 8, item 5): GET /api/v1/devices/{id}/
telemetry, raw points and buckets, against a real fleetd, PostgreSQL,
Redis and Mosquitto.

The known data sets are written straight into telemetry with psycopg2 (a
few thousand rows in one statement) and checked against what this file
computes from the same values; the tail, late points and overwrites come
in through MQTT, the way devices send them. fleetd runs its rollup
refresh every second here (postgres.rollup_refresh), so a test waits
seconds, with a deadline, for the rollups to take in what it wrote.
"""

import json
import math
import time
import urllib.parse

import pytest

import stack
from api_util import ApiClient, error_code
from conftest import ADMIN_TOKEN
from ingest_util import ingest, now_ms, uniq  # noqa: F401

MIN = 60000
HOUR = 3600000
DAY = 86400000
AGGS = ("avg", "min", "max", "sum", "count", "first", "last")


@pytest.fixture
def hist(ingest):
    """(ApiClient, Ingest) on a fresh fleetd of 2 workers that refreshes
    its rollups every second."""
    ctx = ingest(prefix="hi%s:" % uniq(),
                 extra={"postgres": {"rollup_refresh": "1s"}})
    return ApiClient(ctx.f), ctx


# ------------------------------------------------------------- helpers

def register(a, dev):
    s, doc = a.post("/api/v1/devices", {"id": dev})
    assert s == 201, doc


def ensure_partitions(ctx, lo_ms, hi_ms):
    ctx.query("SELECT fleetd_partition_ensure(86400000, 30, "
              "ARRAY(SELECT generate_series(%s::bigint, %s::bigint)))",
              (lo_ms // DAY, hi_ms // DAY))


def insert(ctx, dev, metric, points, kind="value"):
    """points: [(ts_us, value)] into telemetry in one statement; kind is
    the column (value, value_bool, value_text)."""
    ts = [p[0] for p in points]
    vals = [p[1] for p in points]
    cast = {"value": "float8", "value_bool": "boolean",
            "value_text": "text"}[kind]
    ctx.query("INSERT INTO telemetry (ts, %s, device_id, metric) "
              "SELECT 'epoch'::timestamptz + t * interval '1 microsecond', "
              "v, %%s, %%s FROM unnest(%%s::bigint[], %%s::%s[]) AS u(t, v)"
              % (kind, cast), (dev, metric, ts, vals))


def hist_path(dev, **q):
    return "/api/v1/devices/%s/telemetry?%s" % (
        dev, urllib.parse.urlencode(q))


def get_ok(a, dev, **q):
    s, doc = a.get(hist_path(dev, **q))
    assert s == 200, (q, s, doc)
    return doc


def expected(points, from_ms, to_ms, bucket_ms, agg):
    """[[bucket start ms, aggregate]] of points [(ts_us, value)] in
    [from_ms, to_ms), buckets aligned to the epoch."""
    groups = {}
    for ts_us, v in sorted(points):
        if from_ms * 1000 <= ts_us < to_ms * 1000:
            b = ts_us // 1000 // bucket_ms * bucket_ms
            groups.setdefault(b, []).append(float(v))
    out = []
    for b in sorted(groups):
        vs = groups[b]
        out.append([b, {"avg": sum(vs) / len(vs), "min": min(vs),
                        "max": max(vs), "sum": sum(vs), "count": len(vs),
                        "first": vs[0], "last": vs[-1]}[agg]])
    return out


def same(got, exp, ts_tol=0):
    """the same points; values within floating-point summation noise"""
    if len(got) != len(exp):
        return False
    for g, e in zip(got, exp):
        if abs(g[0] - e[0]) > ts_tol or not math.isclose(
                g[1], e[1], rel_tol=1e-9, abs_tol=1e-9):
            return False
    return True


LADDER = [s * 1000 for s in (1, 2, 5, 10, 15, 30)] + \
    [m * MIN for m in (1, 2, 5, 10, 15, 30)] + \
    [h * HOUR for h in (1, 2, 3, 6, 12)] + \
    [d * DAY for d in (1, 2, 7, 14, 30, 90, 180, 365)]


def nbuckets(lo, hi, ms):
    """epoch-aligned buckets of ms that meet [lo, hi) (ms, integers)"""
    return 0 if hi <= lo else (hi - 1) // ms - lo // ms + 1


def rollup_rows(ctx, dev, metric, table):
    return ctx.query("SELECT count(*) FROM %s WHERE device_id = %%s AND "
                     "metric = %%s" % table, (dev, metric))[0][0]


def wait_rollups(ctx, dev, metric, minutes, hours, timeout=30):
    """Until the refresh has aggregated the given numbers of minutes and
    hours of dev/metric and nothing of it is dirty any more."""
    def done():
        return (rollup_rows(ctx, dev, metric, "telemetry_1m") == minutes and
                rollup_rows(ctx, dev, metric, "telemetry_1h") == hours and
                ctx.query("SELECT count(*) FROM rollup_dirty_1m WHERE "
                          "device_id = %s", (dev,))[0][0] == 0 and
                ctx.query("SELECT count(*) FROM rollup_dirty_1h WHERE "
                          "device_id = %s", (dev,))[0][0] == 0)
    stack.wait_until(done, timeout, interval=0.2,
                     what="rollups of %s/%s (%d minutes, %d hours)" % (
                         dev, metric, minutes, hours))


def rfc3339(ms):
    t = time.gmtime(ms // 1000)
    frac = ms % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + (
        ".%03d" % frac if frac else "") + "Z"


def value(i):
    """a known value for point i: negatives, fractions, repeats"""
    return round(math.sin(i / 7.0) * 50.0 + (i % 13) * 0.125, 6)


def dataset(ctx, a, tag, hours=6, step_s=10):
    """A device with `hours` hours of numbers every step_s seconds from an
    hour boundary three days ago; returns (dev, t0_ms, [(ts_us, v)])."""
    dev = ctx.dev(tag)
    register(a, dev)
    t0 = (now_ms() - 3 * DAY) // HOUR * HOUR
    pts = [((t0 + i * step_s * 1000) * 1000, value(i))
           for i in range(hours * 3600 // step_s)]
    ensure_partitions(ctx, t0 - DAY, t0 + 2 * DAY)
    insert(ctx, dev, "temp", pts)
    return dev, t0, pts


# --------------------------------------------------------- raw points

def test_raw_points_types_order_limit_and_paging(hist):
    a, ctx = hist
    dev = ctx.dev("raw")
    register(a, dev)
    t0 = (now_ms() - 2 * DAY) // HOUR * HOUR
    ensure_partitions(ctx, t0 - DAY, t0 + DAY)
    nums = [((t0 + i * 1000) * 1000, value(i)) for i in range(2500)]
    insert(ctx, dev, "temp", nums)
    insert(ctx, dev, "door", [((t0 + i * 60000) * 1000, i % 3 == 0)
                              for i in range(10)], kind="value_bool")
    insert(ctx, dev, "status", [((t0 + i * 60000) * 1000, "s\"%d\u00e9" % i)
                                for i in range(5)], kind="value_text")
    # arrival times keep their microseconds: a fraction of a millisecond
    insert(ctx, dev, "fine", [((t0 + 5) * 1000 + 123, 1.5),
                              ((t0 + 5) * 1000 + 124, 2.5),
                              ((t0 + 6) * 1000, 3.0)])
    end = t0 + HOUR

    doc = get_ok(a, dev, metric="temp", **{"from": t0, "to": end})
    assert doc["device"] == dev and doc["metric"] == "temp"
    assert doc["from"] == t0 and doc["to"] == end
    assert "bucket" not in doc and "agg" not in doc
    assert len(doc["points"]) == 1000            # the default limit
    assert doc["points"][:3] == [[t0, value(0)], [t0 + 1000, value(1)],
                                 [t0 + 2000, value(2)]]
    # from for the next page: a microsecond after the last point
    assert math.isclose(doc["next"], t0 + 999000.001, rel_tol=0, abs_tol=1e-4)

    # every point exactly once, paging forward and backward
    for order in ("asc", "desc"):
        seen, q = [], {"from": t0, "to": end}
        for _ in range(20):
            doc = get_ok(a, dev, metric="temp", limit=700, order=order, **q)
            seen += doc["points"]
            if "next" not in doc:
                break
            q["from" if order == "asc" else "to"] = doc["next"]
        want = [[ts // 1000, v] for ts, v in nums]
        assert seen == (want if order == "asc" else want[::-1]), order

    doc = get_ok(a, dev, metric="temp", limit=3, order="desc",
                 **{"from": t0, "to": t0 + 10000})
    assert doc["points"] == [[t0 + 9000, value(9)], [t0 + 8000, value(8)],
                             [t0 + 7000, value(7)]]
    assert doc["next"] == t0 + 7000
    doc = get_ok(a, dev, metric="door", **{"from": t0, "to": end})
    assert doc["points"] == [[t0 + i * 60000, i % 3 == 0] for i in range(10)]
    doc = get_ok(a, dev, metric="status", **{"from": t0, "to": end})
    assert doc["points"] == [[t0 + i * 60000, "s\"%d\u00e9" % i]
                             for i in range(5)]
    doc = get_ok(a, dev, metric="fine", **{"from": t0, "to": end})
    assert same(doc["points"], [[t0 + 5.123, 1.5], [t0 + 5.124, 2.5],
                                [t0 + 6, 3.0]], ts_tol=1e-4), doc
    assert doc["points"][2][0] == t0 + 6   # whole ms stay integers
    # a fractional from/to selects at the microsecond
    doc = get_ok(a, dev, metric="fine", **{"from": "%d.124" % (t0 + 5),
                                           "to": "%d" % (t0 + 6)})
    assert same(doc["points"], [[t0 + 5.124, 2.5]], ts_tol=1e-4), doc


def test_from_to_forms_and_half_open_range(hist):
    a, ctx = hist
    dev = ctx.dev("forms")
    register(a, dev)
    t0 = (now_ms() - DAY) // HOUR * HOUR
    ensure_partitions(ctx, t0 - DAY, t0 + DAY)
    insert(ctx, dev, "v", [((t0 + i * MIN) * 1000, float(i))
                           for i in range(120)])
    want = [[t0 + i * MIN, float(i)] for i in range(10, 20)]
    lo, hi = t0 + 10 * MIN, t0 + 20 * MIN
    iso_lo = rfc3339(lo)
    # the same instant in +01:00, encoded, and with the '+' left raw in
    # the URL (it decodes to a space)
    t = time.gmtime(hi // 1000 + 3600)
    iso_hi_plus = time.strftime("%Y-%m-%dT%H:%M:%S", t) + "+01:00"
    for f, to in ((lo, hi), (iso_lo, rfc3339(hi)), (iso_lo, iso_hi_plus),
                  (str(lo) + ".000", iso_hi_plus.replace("T", " "))):
        doc = get_ok(a, dev, metric="v", **{"from": f, "to": to})
        assert doc["points"] == want, (f, to)
        assert doc["from"] == lo and doc["to"] == hi
    raw = "/api/v1/devices/%s/telemetry?metric=v&from=%s&to=%s" % (
        dev, iso_lo, iso_hi_plus)
    s, doc = a.get(raw)
    assert s == 200 and doc["points"] == want, doc
    # from == to: nothing; the point at `to` is not in [from, to)
    assert get_ok(a, dev, metric="v", **{"from": lo, "to": lo})["points"] == []
    doc = get_ok(a, dev, metric="v", **{"from": lo, "to": lo + 1})
    assert doc["points"] == [[lo, 10.0]]
    # without from and to: the 24 h before now
    dev2 = ctx.dev("recent")
    ctx.send(dev2, {"ts": now_ms() - 5000, "x": 1})
    ctx.send(dev2, {"ts": now_ms() - 2 * DAY, "x": 2})
    ctx.wait_rows(dev2, 2)
    doc = get_ok(a, dev2, metric="x")
    assert [p[1] for p in doc["points"]] == [1]
    assert abs(doc["to"] - now_ms()) < 60000
    assert doc["to"] - doc["from"] == DAY


def test_range_with_no_data(hist):
    a, ctx = hist
    dev, t0, pts = dataset(ctx, a, "empty", hours=1)
    lo, hi = t0 - 5 * DAY, t0 - 4 * DAY
    assert get_ok(a, dev, metric="temp",
                  **{"from": lo, "to": hi})["points"] == []
    for q in ({"bucket": "1m"}, {"bucket": "1h", "agg": "max"},
              {"points": 50}, {"bucket": "10s", "agg": "count"}):
        doc = get_ok(a, dev, metric="temp", **{"from": lo, "to": hi}, **q)
        assert doc["points"] == [], q


# ------------------------------------------------------------ buckets

def test_every_aggregation_matches_the_data(hist):
    """Buckets answered from telemetry_1h, telemetry_1m and the raw rows,
    whole and partial, against the same aggregates computed here."""
    a, ctx = hist
    dev, t0, pts = dataset(ctx, a, "agg")
    wait_rollups(ctx, dev, "temp", minutes=360, hours=6)
    end = t0 + 6 * HOUR
    ranges = [(t0, end),                                # hour-aligned
              (t0 + 25 * MIN + 7 * 1000 + 3, end - 57 * MIN - 11),
              (t0 - DAY, end + DAY)]                    # wider than the data
    for bucket, ms in (("1m", MIN), ("5m", 5 * MIN), ("1h", HOUR),
                       ("3h", 3 * HOUR), ("90s", 90000), ("10s", 10000),
                       ("1d", DAY), ("45m", 45 * MIN)):
        for lo, hi in ranges:
            if (hi - lo) // ms > 9000:
                continue
            for agg in AGGS:
                doc = get_ok(a, dev, metric="temp", bucket=bucket, agg=agg,
                             **{"from": lo, "to": hi})
                assert doc["bucket"] == bucket and doc["bucket_ms"] == ms
                assert doc["agg"] == agg
                exp = expected(pts, lo, hi, ms, agg)
                assert same(doc["points"], exp), (bucket, agg, lo, hi,
                                                  doc["points"][:4], exp[:4])
    # descending, and a limit on buckets
    doc = get_ok(a, dev, metric="temp", bucket="1h", agg="sum", order="desc",
                 limit=4, **{"from": t0, "to": end})
    exp = expected(pts, t0, end, HOUR, "sum")[::-1]
    assert same(doc["points"], exp[:4]) and doc["next"] == exp[3][0]
    # agg defaults to avg
    doc = get_ok(a, dev, metric="temp", bucket="1h", **{"from": t0, "to": end})
    assert doc["agg"] == "avg"
    assert same(doc["points"], expected(pts, t0, end, HOUR, "avg"))


def test_answers_come_from_the_rollups(hist):
    """A value planted in a rollup row shows in exactly the answers that
    the design reads that rollup for: hour multiples from telemetry_1h,
    minute multiples from telemetry_1m, the rest from the raw rows."""
    a, ctx = hist
    dev, t0, pts = dataset(ctx, a, "plant", hours=3)
    wait_rollups(ctx, dev, "temp", minutes=180, hours=3)
    end = t0 + 3 * HOUR
    ctx.query("UPDATE telemetry_1h SET max = 99999 WHERE device_id = %s "
              "AND bucket = 'epoch'::timestamptz + %s * interval '1 ms'",
              (dev, t0 + HOUR))
    ctx.query("UPDATE telemetry_1m SET min = -99999 WHERE device_id = %s "
              "AND bucket = 'epoch'::timestamptz + %s * interval '1 ms'",
              (dev, t0 + 2 * HOUR + 5 * MIN))
    q = {"from": t0, "to": end}
    assert [p[1] for p in get_ok(a, dev, metric="temp", bucket="1h",
                                 agg="max", **q)["points"]].count(99999) == 1
    assert 99999 not in [p[1] for p in get_ok(
        a, dev, metric="temp", bucket="30m", agg="max", **q)["points"]]
    assert -99999 in [p[1] for p in get_ok(
        a, dev, metric="temp", bucket="15m", agg="min", **q)["points"]]
    assert -99999 not in [p[1] for p in get_ok(
        a, dev, metric="temp", bucket="30s", agg="min", **q)["points"]]
    assert get_ok(a, dev, metric="temp", limit=1,
                  **q)["points"][0][1] == value(0)


def test_bucket_edges(hist):
    """A point on a bucket's start belongs to it; a bucket's time is its
    start, aligned to the epoch (UTC), not to `from`."""
    a, ctx = hist
    dev = ctx.dev("edges")
    register(a, dev)
    day = (now_ms() - 2 * DAY) // DAY * DAY
    ensure_partitions(ctx, day - DAY, day + 2 * DAY)
    pts = [((day + 10 * MIN - 1) * 1000, 1.0),       # last ms of a bucket
           ((day + 10 * MIN) * 1000, 2.0),           # first of the next
           ((day + 10 * MIN) * 1000 + 1, 4.0),       # a microsecond later
           ((day + 20 * MIN - 1) * 1000 + 999, 8.0),  # its last microsecond
           ((day + 20 * MIN) * 1000, 16.0),
           ((day + HOUR + 30 * 1000) * 1000, 32.0),
           ((day + 25 * HOUR) * 1000, 64.0)]          # the next UTC day
    insert(ctx, dev, "e", pts)
    wait_rollups(ctx, dev, "e", minutes=6, hours=3)
    q = {"from": day, "to": day + 2 * DAY}
    assert get_ok(a, dev, metric="e", bucket="10m", agg="sum",
                  **q)["points"] == [[day, 1.0], [day + 10 * MIN, 14.0],
                                     [day + 20 * MIN, 16.0],
                                     [day + HOUR, 32.0],
                                     [day + 25 * HOUR, 64.0]]
    assert get_ok(a, dev, metric="e", bucket="1d", agg="count",
                  **q)["points"] == [[day, 6], [day + DAY, 1]]
    # 7 m does not divide an hour: buckets still start at multiples of
    # 7 minutes since 1970-01-01T00:00:00Z
    doc = get_ok(a, dev, metric="e", bucket="7m", agg="count", **q)
    assert all(p[0] % (7 * MIN) == 0 for p in doc["points"])
    assert same(doc["points"], expected(pts, *q.values(), 7 * MIN, "count"))
    # from in the middle of a bucket: the bucket keeps its start and holds
    # only what is inside [from, to)
    doc = get_ok(a, dev, metric="e", bucket="10m", agg="sum",
                 **{"from": day + 10 * MIN + 0.001, "to": day + 20 * MIN})
    assert doc["points"] == [[day + 10 * MIN, 12.0]]
    # 1w buckets are aligned to the epoch too (a Thursday)
    doc = get_ok(a, dev, metric="e", bucket="1w", agg="count", **q)
    assert doc["bucket"] == "7d" and doc["bucket_ms"] == 7 * DAY
    assert doc["points"][0][0] % (7 * DAY) == 0
    assert sum(p[1] for p in doc["points"]) == 7


def test_points_n_picks_the_bucket(hist):
    a, ctx = hist
    dev, t0, pts = dataset(ctx, a, "pts")
    wait_rollups(ctx, dev, "temp", minutes=360, hours=6)
    end = t0 + 6 * HOUR
    # the narrowest step of the ladder that gives at most n buckets
    for n, lo, hi in ((100, t0, end), (1000, t0, end), (10, t0, end),
                      (3, t0, end), (2160, t0, end), (1, t0, end),
                      (7, t0 + 30 * MIN + 1, end - 30 * MIN),
                      (6, t0 + 30 * MIN, end - 30 * MIN)):
        doc = get_ok(a, dev, metric="temp", points=n, agg="max",
                     **{"from": lo, "to": hi})
        ms = doc["bucket_ms"]
        assert ms in LADDER and nbuckets(lo, hi, ms) <= n, (n, ms)
        i = LADDER.index(ms)
        assert i == 0 or nbuckets(lo, hi, LADDER[i - 1]) > n, (n, ms)
        assert 0 < len(doc["points"]) <= n
        assert same(doc["points"], expected(pts, lo, hi, ms, "max")), n
    assert get_ok(a, dev, metric="temp", points=100,
                  **{"from": t0, "to": end})["bucket_ms"] == 5 * MIN
    assert get_ok(a, dev, metric="temp", points=1000,
                  **{"from": t0, "to": end})["agg"] == "avg"
    # a range older than the raw rows (postgres.retention_days, 30) is
    # bucketed by at least a minute, the finest rollup that is kept
    old = now_ms() - 31 * DAY
    doc = get_ok(a, dev, metric="temp", points=10000,
                 **{"from": old, "to": old + DAY})
    assert doc["bucket_ms"] == MIN


# ------------------------------------------- the tail and late points

def test_tail_after_the_watermark_is_in_bucketed_answers(hist):
    """Points stored seconds ago are newer than any watermark (the refresh
    keeps a minute behind): they come from the raw rows, at once."""
    a, ctx = hist
    dev = ctx.dev("tail")
    t = now_ms()
    sent = [(t - 3000 + i * 100, float(i)) for i in range(20)]
    for ts, v in sent:
        ctx.send(dev, {"ts": ts, "t": v})
    ctx.wait_rows(dev, 20)
    wm = ctx.query("SELECT extract(epoch FROM wm_1m) * 1000 "
                   "FROM rollup_state")[0][0]
    assert wm <= sent[0][0]
    q = {"from": t - HOUR, "to": t + MIN}
    doc = get_ok(a, dev, metric="t", bucket="1h", agg="count", **q)
    assert sum(p[1] for p in doc["points"]) == 20, doc
    doc = get_ok(a, dev, metric="t", bucket="1m", agg="sum", **q)
    assert sum(p[1] for p in doc["points"]) == sum(range(20)), doc
    doc = get_ok(a, dev, metric="t", points=10, agg="last", **q)
    assert doc["points"][-1][1] == 19.0
    assert rollup_rows(ctx, dev, "t", "telemetry_1m") == 0


def test_late_points_and_overwrites_reach_the_rollups(hist):
    """Points behind the watermark, and a new value for a stored key,
    arriving through MQTT after their hours were rolled up: the next
    refresh aggregates those minutes and hours again."""
    a, ctx = hist
    dev, t0, pts = dataset(ctx, a, "late", hours=3)
    wait_rollups(ctx, dev, "temp", minutes=180, hours=3)
    end = t0 + 3 * HOUR
    q = {"from": t0, "to": end}
    late = [((t0 + HOUR + 5000 + i * 10000) * 1000, 1000.5 + i)
            for i in range(3)]
    for ts, v in late:
        ctx.send(dev, {"ts": ts // 1000, "temp": v})
    # a later message for a stored key wins (the ingest writer's UPDATE)
    ctx.send(dev, {"ts": t0 + 2 * HOUR + 30000, "temp": -777.25})
    pts = [p for p in pts if p[0] != (t0 + 2 * HOUR + 30000) * 1000]
    pts += late + [((t0 + 2 * HOUR + 30000) * 1000, -777.25)]

    def caught_up():
        doc = get_ok(a, dev, metric="temp", bucket="1h", agg="count", **q)
        mn = get_ok(a, dev, metric="temp", bucket="1h", agg="min", **q)
        return ([p[1] for p in doc["points"]] == [360, 363, 360] and
                mn["points"][2][1] == -777.25)
    stack.wait_until(caught_up, 20, interval=0.3,
                     what="late points and the overwrite in the hours")
    for bucket, ms in (("1h", HOUR), ("1m", MIN), ("15m", 15 * MIN),
                       ("20s", 20000)):
        for agg in AGGS:
            doc = get_ok(a, dev, metric="temp", bucket=bucket, agg=agg, **q)
            assert same(doc["points"], expected(pts, t0, end, ms, agg)), (
                bucket, agg)


def test_a_backlog_is_worked_off_in_steps(hist):
    """More dirty minutes than one step takes (5000 at first): the job
    keeps stepping until all are aggregated, and the answers agree with
    the data all along (the watermark never passes a dirty minute, so what
    is not aggregated yet is read raw)."""
    a, ctx = hist
    dev = ctx.dev("backlog")
    register(a, dev)
    t0 = (now_ms() - 10 * DAY) // DAY * DAY
    ensure_partitions(ctx, t0 - DAY, t0 + 10 * DAY)
    pts = [((t0 + i * MIN + 7000) * 1000, value(i)) for i in range(12000)]
    insert(ctx, dev, "b", pts)
    q = {"from": t0, "to": t0 + 9 * DAY}
    deadline = time.monotonic() + 60

    def done():
        return rollup_rows(ctx, dev, "b", "telemetry_1h") == 200
    while not done():
        assert time.monotonic() < deadline, "backlog not worked off in 60 s"
        # a day's rows (one partition) are seen by the refresh together:
        # an hour is there whole or not yet
        doc = get_ok(a, dev, metric="b", bucket="1h", agg="sum", **q)
        exp = dict((p[0], p) for p in expected(pts, *q.values(), HOUR, "sum"))
        assert same(doc["points"], [exp.get(p[0]) for p in doc["points"]])
        time.sleep(0.2)
    wait_rollups(ctx, dev, "b", minutes=12000, hours=200)
    for bucket, ms in (("1h", HOUR), ("1d", DAY), ("10m", 10 * MIN)):
        for agg in ("avg", "count", "first", "last"):
            doc = get_ok(a, dev, metric="b", bucket=bucket, agg=agg, **q)
            assert same(doc["points"], expected(pts, *q.values(), ms, agg))


def test_booleans_aggregate_as_0_and_1_text_does_not(hist):
    a, ctx = hist
    dev = ctx.dev("kinds")
    register(a, dev)
    t0 = (now_ms() - 2 * DAY) // HOUR * HOUR
    ensure_partitions(ctx, t0 - DAY, t0 + DAY)
    doors = [((t0 + i * 20000) * 1000, i % 4 == 0) for i in range(360)]
    insert(ctx, dev, "door", doors, kind="value_bool")
    insert(ctx, dev, "mode", [((t0 + i * 1000) * 1000, "m%d" % i)
                              for i in range(10)], kind="value_text")
    wait_rollups(ctx, dev, "door", minutes=120, hours=2)
    q = {"from": t0, "to": t0 + 2 * HOUR}
    nums = [(ts, 1.0 if v else 0.0) for ts, v in doors]
    for bucket, ms in (("1h", HOUR), ("10m", 10 * MIN), ("40s", 40000)):
        for agg in AGGS:
            doc = get_ok(a, dev, metric="door", bucket=bucket, agg=agg, **q)
            assert same(doc["points"], expected(nums, *q.values(), ms, agg))
    s, doc = a.get(hist_path(dev, metric="mode", bucket="1m", **q))
    assert s == 400 and error_code(doc) == "not_numeric", doc
    s, doc = a.get(hist_path(dev, metric="mode", points=10, agg="count", **q))
    assert s == 400 and error_code(doc) == "not_numeric", doc
    assert len(get_ok(a, dev, metric="mode", **q)["points"]) == 10


def test_purged_device_takes_its_rollups_along(hist):
    a, ctx = hist
    dev, t0, pts = dataset(ctx, a, "purge", hours=1)
    wait_rollups(ctx, dev, "temp", minutes=60, hours=1)
    s, _ = a.delete("/api/v1/devices/%s?purge=true" % dev)
    assert s == 204
    for t in ("telemetry", "telemetry_1m", "telemetry_1h",
              "telemetry_metrics"):
        assert ctx.query("SELECT count(*) FROM %s WHERE device_id = %%s" % t,
                         (dev,))[0][0] == 0, t
    register(a, dev)
    s, doc = a.get(hist_path(dev, metric="temp", bucket="1h",
                             **{"from": t0, "to": t0 + HOUR}))
    assert s == 400 and error_code(doc) == "unknown_metric", doc


# ------------------------------------------------------ errors, auth

def test_errors(hist):
    a, ctx = hist
    dev, t0, pts = dataset(ctx, a, "err", hours=1)
    insert(ctx, dev, "txt", [((t0 + 1000) * 1000, "x")], kind="value_text")
    base = {"metric": "temp", "from": t0, "to": t0 + HOUR}

    def bad(code="bad_request", status=400, raw=None, **q):
        path = raw or hist_path(dev, **q)
        s, doc = a.get(path)
        assert s == status and error_code(doc) == code, (path, s, doc)
        return doc["error"]["message"]

    assert "metric" in bad(**{k: v for k, v in base.items() if k != "metric"})
    bad(**dict(base, metric=""))
    bad(**dict(base, metric="x" * 129))
    assert "nope" in bad("unknown_metric", **dict(base, metric="nope"))
    assert "bukcet" in bad(**dict(base, bukcet="1h"))
    bad(raw=hist_path(dev, **base) + "&metric=temp")
    bad(raw=hist_path(dev, metric="temp") + "&from=%zz")
    for t in ("yesterday", "-5", "17643700000001234", "1.5.5", "1.1234",
              "2025-13-01T00:00:00Z", "2025-02-30T00:00:00Z",
              "2025-01-01T00:00:00", "2025-01-01", "1969-12-31T23:59:59Z",
              "2025-01-01T25:00:00Z", ""):
        bad(**dict(base, **{"from": t}))
        bad(**dict(base, to=t))
    assert "after" in bad(**dict(base, **{"from": t0 + 1, "to": t0}))
    for b in ("0", "0s", "abc", "1y", "-1m", "1.2.3h", "3651d", "0.1ms", ""):
        bad(**dict(base, bucket=b))
    for g in ("median", "AVG", ""):
        bad(**dict(base, bucket="1m", agg=g))
    bad(**dict(base, agg="avg"))
    for n in ("0", "10001", "x", "-1", "1.5", ""):
        bad(**dict(base, limit=n))
        bad(**dict(base, points=n))
    assert "not both" in bad(**dict(base, bucket="1m", points=10))
    bad(**dict(base, order="up"))
    assert "more than 10000" in bad(**dict(base, bucket="1s",
                                           **{"from": t0 - DAY}))
    bad("not_numeric", **dict(base, metric="txt", bucket="1m"))
    bad("not_found", 404, raw=hist_path(ctx.dev("ghost"), **base))
    s, doc = a.post(hist_path(dev, **base), {})
    assert s == 405 and a.last_headers.get("allow") == "GET", doc
    # the worker is fine afterwards
    assert len(get_ok(a, dev, **base)["points"]) == 360


def test_auth(hist):
    a, ctx = hist
    dev, t0, pts = dataset(ctx, a, "auth", hours=1)
    path = hist_path(dev, metric="temp", **{"from": t0, "to": t0 + HOUR})
    s, doc = a.get(path, token=None)
    assert s == 401 and error_code(doc) == "unauthorized", doc
    s, doc = a.get(path, token="wrong")
    assert s == 401 and error_code(doc) == "unauthorized", doc
    s, doc = a.get(path + "&token=" + ADMIN_TOKEN, token=None)
    assert s == 401, doc
    # the route needs the read scope, which every key has (write and
    # admin include it): a read key is enough, so no key gets 403 here
    s, k = a.post("/api/v1/keys", {"name": "reader", "scopes": ["read"]})
    assert s == 201, k
    s, doc = ApiClient(ctx.f, k["token"]).get(path)
    assert s == 200 and len(doc["points"]) == 360, doc
    # a read key cannot write: the 403 of the same key next door
    s, doc = ApiClient(ctx.f, k["token"]).post("/api/v1/devices",
                                               {"id": ctx.dev("x")})
    assert s == 403, doc
