"""
Resuming a subscription with "since" (issue 9, /tmp/ws-spec.md
"Client -> server"): a client that reconnects with the id of the last
telemetry message it saw receives, right after "subscribed", exactly the
messages it missed, in id order, then live ones - nothing twice at the
seam; or {"type":"gap"} for devices whose missed range is no longer kept
(ws.resume_keep messages, ws.resume_ttl).

An observer client subscribed all along tells when the missed messages
have been fanned out (so the replay, not live delivery, must carry them)
and what their ids are.
"""

import time

import pytest

from ingest_util import ingest, now_ms  # noqa: F401
from ws_util import (WsClient, id_key, increasing, metric_sum, seq_of, summarize,
                     ws_metrics_text, ws_node)  # noqa: F401


class Seq:
    def __init__(self, ctx):
        self.ctx = ctx
        self.n = 0
        self.base = now_ms() - 200000

    def send(self, d, count=1):
        out = []
        for _ in range(count):
            s = self.n
            self.n += 1
            self.ctx.send(d, {"ts": self.base + s, "seq": s})
            out.append(s)
        return out


def after_subscribed(c):
    """The messages c received after its (first) "subscribed" reply."""
    types = [m.get("type") for m in c.log]
    assert "subscribed" in types, c.log
    i = types.index("subscribed")
    return c.log[i + 1:]


@pytest.mark.timeout(60)
def test_resume_replays_exactly_the_missed(ws_node):
    ctx = ws_node(workers=2)
    f = ctx.f
    d = ctx.dev("r1")
    other = ctx.dev("r2")
    sq = Seq(ctx)
    observer = WsClient.connect(f)
    observer.subscribe([d, other])
    c = WsClient.connect(f)
    c.subscribe([d])
    first = sq.send(d, 5)
    got = c.wait_telemetry(5)
    assert sorted(seq_of(m) for m in got) == first
    last = max((m["id"] for m in got), key=id_key)
    c.close()

    missed = sq.send(d, 7)
    sq.send(other, 2)                      # not subscribed: never replayed
    obs = observer.wait_telemetry(5 + 7, device=d)
    want_ids = {seq_of(m): m["id"] for m in obs}

    c2 = WsClient.connect(f)
    try:
        r = c2.subscribe([d], since=last)
        assert r["devices"] == [d], r
        c2.wait_telemetry(7, timeout=5)
        replay = [m for m in after_subscribed(c2) if m["type"] == "telemetry"][:7]
        assert sorted(seq_of(m) for m in replay) == missed, \
            "replay after since=%s: %s; expected seqs %r" % (
                last, summarize(c2.log), missed)
        # in id order, with the ids the live messages had
        want = sorted((want_ids[s] for s in missed), key=id_key)
        assert [m["id"] for m in replay] == want, \
            "replayed ids %r, expected (the live ones, in id order) %r" % (
                [m["id"] for m in replay], want)
        assert all(m["device"] == d for m in replay)
        assert not [m for m in c2.log if m["type"] == "gap"], c2.log
        # then live, nothing twice
        live = sq.send(d, 3)
        c2.wait_telemetry(10)
        c2.drain(quiet=0.7)
        seqs = [seq_of(m) for m in c2.telemetry()]
        assert sorted(seqs) == missed + live, \
            "after the replay: %r, expected %r" % (seqs, missed + live)
        assert metric_sum(f, "fleetd_ws_replayed_total") >= 7, ws_metrics_text(f)
    finally:
        c2.close()

    # since = the newest id: nothing to replay, no gap; then live
    newest = max((m["id"] for m in observer.wait_telemetry(15, device=d)), key=id_key)
    c3 = WsClient.connect(f)
    try:
        c3.subscribe([d], since=newest)
        c3.drain(quiet=0.7)
        assert after_subscribed(c3) == [], c3.log
        live = sq.send(d, 1)
        m = c3.wait_telemetry(1)[0]
        assert seq_of(m) == live[0], m
    finally:
        c3.close()
        observer.close()


@pytest.mark.timeout(60)
def test_resume_over_keep_gives_gap(ws_node):
    ctx = ws_node({"ws": {"resume_keep": 5}}, workers=2)
    f = ctx.f
    d1, d2 = ctx.dev("g1"), ctx.dev("g2")
    sq = Seq(ctx)
    observer = WsClient.connect(f)
    observer.subscribe([d1, d2])
    c = WsClient.connect(f)
    c.subscribe([d1, d2])
    sq.send(d1)
    sq.send(d2)
    got = c.wait_telemetry(2)
    since = max((m["id"] for m in got), key=id_key)
    c.close()
    missed1 = sq.send(d1, 8)               # more than resume_keep
    missed2 = sq.send(d2, 2)
    observer.wait_telemetry(12)
    gaps0 = metric_sum(f, "fleetd_ws_gaps_total")

    c2 = WsClient.connect(f)
    try:
        r = c2.subscribe([d1, d2], since=since)
        assert sorted(r["devices"]) == sorted([d1, d2]), r
        gap = c2.expect("gap", timeout=5)
        assert gap["devices"] == [d1], "gap %r: expected [%s] (only %s lost " \
            "messages)" % (gap, d1, d1)
        c2.wait_telemetry(2, device=d2, timeout=5)
        c2.drain(quiet=0.7)
        r2 = [seq_of(m) for m in c2.telemetry(d2)]
        assert sorted(r2) == missed2, "%s replay %r, expected %r" % (d2, r2, missed2)
        assert increasing([m["id"] for m in c2.telemetry()]) is None, c2.log
        r1 = [seq_of(m) for m in c2.telemetry(d1)]
        # whatever of d1 is replayed after a gap: only missed ones, once,
        # at most resume_keep of them
        assert len(r1) == len(set(r1)) and set(r1) <= set(missed1) and \
            len(r1) <= 5, "%s after its gap: %r (missed %r)" % (d1, r1, missed1)
        # the gap comes after "subscribed" and before the replay
        types = [m["type"] for m in c2.log]
        assert types.index("subscribed") < types.index("gap") < \
            types.index("telemetry"), types
        # live continues for both
        live = sq.send(d1) + sq.send(d2)
        c2.wait_for(lambda m: m.get("type") == "telemetry" and
                    seq_of(m) == live[1], 5, "live message of %s" % d2)
        c2.drain(quiet=0.5)
        assert [seq_of(m) for m in c2.telemetry(d1)][-1] == live[0]
        assert metric_sum(f, "fleetd_ws_gaps_total") >= gaps0 + 1, ws_metrics_text(f)
    finally:
        c2.close()

    # since with "*": resume is per listed device -> gap ["*"]
    c3 = WsClient.connect(f)
    try:
        c3.subscribe("*", since=since)
        gap = c3.expect("gap", timeout=5)
        assert gap["devices"] == ["*"], gap
        # and "*" is live
        live = sq.send(d2)
        c3.wait_for(lambda m: m.get("type") == "telemetry" and
                    seq_of(m) == live[0], 5, "live message on *")
    finally:
        c3.close()
        observer.close()


@pytest.mark.timeout(60)
def test_resume_after_ttl_gives_gap(ws_node):
    ctx = ws_node({"ws": {"resume_ttl": "1s"}}, workers=1)
    f = ctx.f
    d = ctx.dev("ttl")
    sq = Seq(ctx)
    observer = WsClient.connect(f)
    observer.subscribe([d])
    c = WsClient.connect(f)
    c.subscribe([d])
    sq.send(d)
    since = c.wait_telemetry(1)[0]["id"]
    c.close()
    sq.send(d, 2)
    observer.wait_telemetry(3)
    time.sleep(2.5)                        # past resume_ttl
    c2 = WsClient.connect(f)
    try:
        c2.subscribe([d], since=since)
        gap = c2.expect("gap", timeout=5)
        assert gap["devices"] == [d], gap
        c2.drain(quiet=0.5)
        assert c2.telemetry() == [], "messages older than resume_ttl replayed: %r" % (
            c2.telemetry(),)
    finally:
        c2.close()
        observer.close()


@pytest.mark.timeout(90)
def test_resume_list_trimmed_lazily_and_read_to_keep(ws_node):
    """A device's resume list may grow to resume_keep + resume_keep / 4
    before it is trimmed (fl_ingest.c saves an LTRIM per message so); a
    resume reads only its newest resume_keep entries, so what lies beyond
    them is a gap even while the list still holds it, and what lies within
    them replays exactly. The TTLs of the list and of the shadow are set
    again only when 1/64 of them has passed: both outlive the last message
    by at least 63/64 of the TTL."""
    ttl_ms = 64000
    ctx = ws_node({"ws": {"resume_keep": 8, "resume_ttl": "64s"},
                   "redis": {"shadow_ttl": "64s"}}, workers=1)
    f = ctx.f
    d = ctx.dev("lazy")
    rkey = ctx.prefix + "recent:" + d
    sq = Seq(ctx)
    observer = WsClient.connect(f)
    observer.subscribe([d])
    lens = []
    for i in range(40):
        sq.send(d)
        observer.wait_telemetry(i + 1, timeout=10)
        lens.append(ctx.redis.llen(rkey))
    t_last = time.monotonic()
    assert max(lens) <= 10 and lens[-1] >= 8, lens
    for key in (rkey, ctx.shadow_key(d)):
        pttl = ctx.redis.pttl(key)
        since_last = (time.monotonic() - t_last) * 1000
        assert ttl_ms * 63 / 64 - 500 <= pttl + since_last and pttl <= ttl_ms, \
            (key, pttl, since_last)
    ids = {seq_of(m): m["id"] for m in observer.telemetry()}
    assert sorted(ids) == list(range(40)), sorted(ids)

    # within the newest 8: exactly the missed ones, no gap
    c = WsClient.connect(f)
    try:
        c.subscribe([d], since=ids[33])
        c.wait_telemetry(6, timeout=5)
        c.drain(quiet=0.5)
        assert [seq_of(m) for m in c.telemetry()] == list(range(34, 40)), c.log
        assert not [m for m in c.log if m["type"] == "gap"], c.log
    finally:
        c.close()
    # beyond them: a gap, then at most the newest 8, once each
    c = WsClient.connect(f)
    try:
        c.subscribe([d], since=ids[29])
        gap = c.expect("gap", timeout=5)
        assert gap["devices"] == [d], gap
        c.drain(quiet=0.5)
        got = [seq_of(m) for m in c.telemetry()]
        assert got == list(range(32, 40)), c.log
    finally:
        c.close()
        observer.close()
