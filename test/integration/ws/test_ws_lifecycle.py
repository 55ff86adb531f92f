"""
WebSocket connections across fleetd's process lifecycle (issue 9,
/tmp/ws-spec.md "Limits, slow clients, closes"): SIGQUIT, SIGTERM and a
reload (SIGHUP) close every WebSocket with 1001; clients that reconnect
with "since" across a reload under load miss nothing and get nothing
twice. Heartbeat: ws.ping_interval pings, a silent connection is closed.
"""

import asyncio
import signal
import time

import pytest

import stack
from ingest_util import ingest  # noqa: F401
from ws_util import (AsyncSub, RatePublisher, WsClient, id_key, increasing,
                     metric_sum,
                     run_async, seq_of, wait_async, wait_ws_conns,
                     ws_metrics_text, ws_node)  # noqa: F401


@pytest.mark.timeout(40)
@pytest.mark.parametrize("sig", [signal.SIGQUIT, signal.SIGTERM],
                         ids=["QUIT", "TERM"])
def test_stop_closes_every_websocket_with_1001(fleetd, sig):
    f = fleetd(workers=2)
    clients = [WsClient.connect(f) for _ in range(12)]
    for i, c in enumerate(clients):
        c.subscribe(["stop-dev-%d" % i])
    conns = wait_ws_conns(f, 12)
    assert len([n for n in conns.values() if n]) == 2, conns
    t0 = time.monotonic()
    f.signal(sig)
    codes = []
    for c in clients:
        try:
            code, reason, eof = c.expect_close(timeout=8)
            codes.append(code)
        except Exception as e:  # noqa: BLE001
            codes.append(repr(e)[:120])
        finally:
            c.abort()
    took = time.monotonic() - t0
    rc = f.wait(10)
    assert codes == [1001] * len(clients), \
        "close codes after %s: %r" % (sig.name, codes)
    assert rc == 0, "exit status %r after %s" % (rc, sig.name)
    # WebSockets are closed at once, not after a drain deadline
    assert took < 3.0, "closes took %.1f s" % took


@pytest.mark.timeout(40)
def test_heartbeat(fleetd):
    f = fleetd({"ws": {"ping_interval": "1s"}}, workers=1)
    alive = WsClient.connect(f)            # answers pings, sends nothing
    alive.subscribe(["hb-dev"])
    silent = WsClient.connect(f)           # never answers, never sends
    silent.auto_pong = False
    talker = WsClient.connect(f)           # no pongs, but sends messages
    talker.auto_pong = False
    t_end = time.monotonic() + 4.5
    while time.monotonic() < t_end:
        alive.drain(quiet=0.3, timeout=0.3)
        talker.ping()
        time.sleep(0.2)
    assert len(alive.pings) >= 1, "no ping in 4.5 s with ping_interval 1s"
    alive.ping()
    talker.ping()
    code, reason, eof = silent.expect_close(timeout=5)
    assert code == 1001, (code, reason)
    assert "heartbeat" in reason, reason
    silent.abort()
    wait_ws_conns(f, 2)
    alive.close()
    talker.close()


@pytest.mark.timeout(90)
def test_reload_under_load_with_resume(ws_node):
    """20 clients, each on one of 4 devices that publish 120 msg/s in all;
    SIGHUP; every client gets close 1001, reconnects with since = the
    newest id it saw; at the end every client has every acknowledged
    message of its device exactly once."""
    ctx = ws_node(workers=2)
    f = ctx.f
    h0 = f.healthz()
    gen0 = h0["generation"]
    old_pids = set(f.worker_pids())
    devs = [ctx.dev("hup%d" % i) for i in range(4)]
    nclients = 20
    pub = RatePublisher(ctx.mq, devs, rate=120)

    class Client:
        def __init__(self, k):
            self.k = k
            self.dev = devs[k % len(devs)]
            self.msgs = []            # every telemetry message, in order
            self.closes = []          # close codes seen
            self.gaps = []
            self.errors = []
            self.connects = 0
            self.starts = []          # (index in msgs, since) per connection

        def since(self):
            if not self.msgs:
                return None
            return max((m["id"] for m in self.msgs), key=id_key)

    async def run_client(cl, stopping):
        while not stopping.is_set():
            s = AsyncSub("client %d" % cl.k)
            try:
                await s.open(f)
            except Exception as e:  # noqa: BLE001 - mid-reload: try again
                cl.errors.append("connect: %r" % e)
                await asyncio.sleep(0.05)
                continue
            cl.connects += 1
            cl.starts.append((len(cl.msgs), cl.since()))
            try:
                await s.subscribe([cl.dev], since=cl.since())
            except AssertionError as e:
                cl.errors.append("subscribe: %s" % e)
            # move what arrives into cl.msgs until the connection ends
            while True:
                while s.telemetry:
                    cl.msgs.append(s.telemetry.pop(0)[1])
                cl.gaps += [m for m in s.other if m.get("type") == "gap"]
                s.other = [m for m in s.other if m.get("type") != "gap"]
                if s.task.done() or stopping.is_set():
                    break
                await asyncio.sleep(0.02)
            if stopping.is_set():
                await s.close()
                while s.telemetry:
                    cl.msgs.append(s.telemetry.pop(0)[1])
                return
            await s.close()
            while s.telemetry:
                cl.msgs.append(s.telemetry.pop(0)[1])
            cl.closes.append(s.close_code)

    async def main():
        stopping = asyncio.Event()
        clients = [Client(k) for k in range(nclients)]
        tasks = [asyncio.ensure_future(run_client(c, stopping)) for c in clients]
        await wait_async(lambda: all(c.connects for c in clients), 15,
                         "every client connected")
        await asyncio.sleep(0.5)
        pub.start()
        loop = asyncio.get_running_loop()
        await asyncio.sleep(1.5)
        f.signal(signal.SIGHUP)
        await loop.run_in_executor(None, lambda: f.wait_ready(
            15, generation_above=gen0))
        await loop.run_in_executor(None, lambda: stack.wait_until(
            lambda: not any(stack.pid_alive(p) for p in old_pids), 15,
            what="old workers exiting"))
        await asyncio.sleep(1.5)
        await loop.run_in_executor(None, pub.stop)
        want = pub.by_device(acked_only=True)

        def complete():
            return all({seq_of(m) for m in c.msgs} >= set(want[c.dev])
                       for c in clients)
        try:
            await wait_async(complete, 20, "every client has every message")
        except AssertionError:
            pass
        await asyncio.sleep(0.5)
        stopping.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
        return clients, want

    try:
        clients, want = run_async(main(), 80)
    finally:
        try:
            pub.stop(drain=0.5)          # a no-op when main() stopped it
        except AssertionError:
            pass
    published = pub.by_device(acked_only=False)
    problems = []
    for c in clients:
        seqs = [seq_of(m) for m in c.msgs]
        missing = sorted(set(want[c.dev]) - set(seqs))
        extra = sorted(set(seqs) - set(published[c.dev]))
        twice = sorted({s for s in seqs if seqs.count(s) > 1})
        if 1001 not in c.closes:
            problems.append("client %d: close codes %r, no 1001" % (c.k, c.closes))
        order = increasing([m["id"] for m in c.msgs])
        if missing or extra or twice or c.gaps or order:
            problems.append(
                "client %d (%s): %d received, missing %d %s, not of its device "
                "%s, twice %s, gaps %r; closes %r; ids not increasing at %r; "
                "connections (first message index, since) %r" % (
                    c.k, c.dev[-4:], len(seqs), len(missing), missing[:10],
                    extra[:5], [(s, [(i, m["id"]) for i, m in enumerate(c.msgs)
                                     if seq_of(m) == s]) for s in twice[:4]],
                    c.gaps[:2], c.closes, order, c.starts))
    total = sum(len(v) for v in want.values())
    assert total > 300, "only %d messages published" % total
    assert not problems, "%d problem(s) across the reload (%d messages):\n  %s\n%s" % (
        len(problems), total, "\n  ".join(problems[:25]), ws_metrics_text(f))
    assert metric_sum(f, "fleetd_reloads_total") == 1


@pytest.mark.timeout(60)
def test_pubsub_loss_sends_one_gap_then_live_again(ingest):
    """Redis drops the worker's Pub/Sub connection (CLIENT KILL TYPE
    pubsub): what is published until fleetd has subscribed again reaches
    no client, so each client gets one gap message naming what it
    watches, and then live telemetry again."""
    ctx = ingest(workers=1)
    d1, d2 = ctx.dev("gap1"), ctx.dev("gap2")
    c = WsClient.connect(ctx.f)
    c.subscribe([d1, d2])
    star = WsClient.connect(ctx.f)
    star.subscribe("*")
    killed = ctx.redis.client_kill_filter(_type="pubsub")
    assert killed >= 1, killed
    g = c.expect("gap", timeout=10)
    assert sorted(g["devices"]) == sorted([d1, d2]), g
    assert star.expect("gap", timeout=10)["devices"] == ["*"]
    # live again once the SUBSCRIBE is back
    deadline = time.monotonic() + 15
    k = 0
    while not c.telemetry(d1) and time.monotonic() < deadline:
        ctx.send(d1, {"v": k})
        k += 1
        try:
            c.pump(0.5)
        except Exception:  # noqa: BLE001 - socket timeout: try again
            pass
    assert c.telemetry(d1), "no telemetry after the reconnect: %r" % c.log[-5:]
    assert [m for m in c.log if m.get("type") == "gap"] == [g], c.log
    c.close()
    star.close()
