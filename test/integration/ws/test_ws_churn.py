"""
Subscription churn (issue 9): many clients connecting, subscribing,
unsubscribing and leaving (cleanly, abruptly, mid-handshake) at a high
rate while devices publish. Afterwards a fresh client still receives
everything of its devices, the workers are the same processes, their
connection counts are back to the live clients, and their memory is back
near where it was.
"""

import asyncio
import random
import time

import pytest

from ingest_util import Publisher, ingest, now_ms  # noqa: F401
from ws_util import (AsyncSub, RatePublisher, WsClient, assert_node_ok,
                     metric_sum, rss_kb, run_async, seq_of, wait_ws_conns,
                     ws_conns, ws_metrics_text, ws_node)  # noqa: F401


async def churn(f, devs, seconds, ntasks=30, seed=1):
    rnd = random.Random(seed)
    stats = {"connects": 0, "subscribes": 0, "unsubscribes": 0,
             "aborts": 0, "half": 0, "errors": []}
    end = time.monotonic() + seconds

    async def half_handshake():
        # a TCP connection that sends half a handshake and goes away
        r, w = await asyncio.open_connection(f.host, f.port)
        w.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        await w.drain()
        w.transport.abort()
        stats["half"] += 1

    async def one(i):
        while time.monotonic() < end:
            try:
                if rnd.random() < 0.05:
                    await half_handshake()
                    continue
                s = AsyncSub("churn %d" % i)
                await s.open(f)
                stats["connects"] += 1
                for _ in range(rnd.randint(1, 4)):
                    pick = rnd.sample(devs, rnd.randint(1, 8))
                    await s.subscribe(pick)
                    stats["subscribes"] += 1
                    if rnd.random() < 0.5:
                        await s.unsubscribe(pick[:rnd.randint(1, len(pick))])
                        stats["unsubscribes"] += 1
                    if rnd.random() < 0.2:
                        await s.subscribe("*")
                        stats["subscribes"] += 1
                    await asyncio.sleep(rnd.random() * 0.05)
                if rnd.random() < 0.3:
                    # gone without a close frame
                    s.ws.transport.abort()
                    stats["aborts"] += 1
                    await asyncio.wait_for(s.task, 5)
                else:
                    await s.close()
            except Exception as e:  # noqa: BLE001 - counted, reported
                stats["errors"].append(repr(e)[:200])
    await asyncio.gather(*(one(i) for i in range(ntasks)))
    return stats


@pytest.mark.timeout(120)
def sanitized(path):
    """An AddressSanitizer build keeps freed memory in quarantine: its
    RSS says nothing about leaks (LeakSanitizer checks those at exit)."""
    with open(path, "rb") as fh:
        return b"__asan_init" in fh.read()


def test_churn_then_fresh_client_and_baseline(ws_node, fleetd_bin):
    ctx = ws_node(workers=2)
    f = ctx.f
    pids = f.worker_pids()
    devs = [ctx.dev("c%02d" % i) for i in range(40)]
    base = now_ms() - 200000
    steady = WsClient.connect(f)            # a live client through it all
    steady.subscribe(devs[:2])
    pub = RatePublisher(ctx.mq, devs, rate=150,
                        make=lambda k: {"ts": base + k, "seq": k}).start()
    try:
        # warm-up round: first-use allocations happen here
        s1 = run_async(churn(f, devs, 2.0, seed=1), 30)
        wait_ws_conns(f, 1, timeout=15)
        time.sleep(0.5)
        rss0 = {p: rss_kb(p) for p in pids}
        s2 = run_async(churn(f, devs, 5.0, seed=2), 40)
    finally:
        pub.stop()
    conns = wait_ws_conns(f, 1, timeout=15)
    time.sleep(1.0)
    rss1 = {p: rss_kb(p) for p in pids}
    assert_node_ok(f, pids, "after churn: ")
    stats = {k: s1[k] + s2[k] for k in s1}
    assert stats["connects"] > 300, "churn too slow: %r" % {
        k: v for k, v in stats.items() if k != "errors"}
    # errors of the churning clients (handshake refused, subscribe failed)
    assert not stats["errors"], "%d churn errors: %s" % (
        len(stats["errors"]), stats["errors"][:10])

    # the steady client got every message of its 2 devices, once
    want = pub.by_device()
    w = sorted(want[devs[0]] + want[devs[1]])
    steady.wait_telemetry(len(w), timeout=15)
    steady.drain(quiet=0.5)
    got = sorted(seq_of(m) for m in steady.telemetry())
    assert got == w, "steady client: %d of %d, missing %s, extra %s" % (
        len(got), len(w), sorted(set(w) - set(got))[:10], sorted(set(got) - set(w))[:10])

    # a fresh client receives everything of its devices
    fresh = WsClient.connect(f)
    fresh.subscribe(devs[10:15])
    p = Publisher(ctx.mq)
    try:
        sent = []
        for k in range(100000, 100050):
            dv = devs[10 + k % 5]
            p.send("devices/%s/telemetry" % dv, {"ts": base + k, "seq": k})
            sent.append(k)
    finally:
        p.close()
    fresh.wait_telemetry(len(sent), timeout=15)
    fresh.drain(quiet=0.5)
    got = sorted(seq_of(m) for m in fresh.telemetry())
    assert got == sent, "fresh client: %d of %d" % (len(got), len(sent))
    assert sum(ws_conns(f).values()) == 2
    assert metric_sum(f, "fleetd_connections", kind="ws") == 2, ws_metrics_text(f)
    assert metric_sum(f, "fleetd_ws_conflated_connections") == 0, ws_metrics_text(f)
    fresh.close()
    steady.close()
    wait_ws_conns(f, 0)

    grow = {p: rss1[p] - rss0[p] for p in pids}
    print("churn: %r; rss before %r after %r (kB); conns %r" % (
        {k: v for k, v in stats.items() if k != "errors"}, rss0, rss1, conns))
    for p in pids:
        if sanitized(fleetd_bin):
            break
        assert grow[p] < max(8192, rss0[p] // 5), \
            "worker %d RSS grew %d kB over %d connections of churn (%d -> %d kB)" % (
                p, grow[p], s2["connects"], rss0[p], rss1[p])
