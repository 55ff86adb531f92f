"""
Ingest under faults (issue 3): every QoS 1 message a device had
acknowledged is stored, none twice, while a worker is killed, Redis,
PostgreSQL or Mosquitto restart, or fleetd is stopped with SIGQUIT and
started again.

A thread publishes a numbered sequence at QoS 1 over a few devices
({"ts": base + seq, "seq": seq}, one row per message) and records which
messages got their PUBACK from the broker and when. After the fault and a
few seconds of traffic it stops, and the table must hold every
acknowledged seq exactly once at its own device and ts (ingest_util
.verify_sequence). Each test runs its own fleetd with its own node_id,
MQTT share group and redis.prefix, so streams, consumer groups and broker
sessions of other tests cannot interfere.
"""

import os
import signal
import time

import pytest

import stack
from ingest_util import ingest, stored_seqs, uniq, verify_sequence  # noqa: F401

# messages per second (FLEETD_IT_INGEST_RATE to stress harder)
RATE = int(os.environ.get("FLEETD_IT_INGEST_RATE", "300"))
NDEV = 8
FAULT_EXTRA = {"ingest": {"claim_idle": "2s"}}   # a dead consumer's entries
                                                 # are claimed quickly


def start_stream(ctx, rate=RATE):
    devices = [ctx.dev("s%d" % i) for i in range(NDEV)]
    pub = ctx.seq_publisher(devices, rate=rate).start()
    pub.mark("publishing at %d/s over %d devices" % (rate, NDEV))
    pub.wait_acked(int(rate * 1.5), timeout=20)
    try:
        stack.wait_until(lambda: len(stored_seqs(ctx, pub)) > rate // 2, 20,
                         what="the stream flowing into the table")
    except TimeoutError as e:
        raise AssertionError("%s\n%s" % (e, ctx.diagnostics())) from None
    pub.mark("flowing: %d acked, rows arriving" % pub.n_acked())
    return pub


def run_on(pub, seconds):
    """Keep publishing for `seconds` more, then stop the publisher."""
    time.sleep(seconds)
    pub.mark("stop publishing (%d sent, %d acked)" % (pub.n_sent(), pub.n_acked()))
    pub.stop()
    pub.mark("publisher stopped (%d acked)" % pub.n_acked())


def sample_health(ctx, seconds, interval=0.2):
    """[(t, status, deps, queue)] of /healthz over `seconds`."""
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        try:
            status, deps, h = ctx.deps()
            out.append((t, status, deps, h.get("queue")))
        except Exception as e:  # noqa: BLE001 - recorded
            out.append((t, None, repr(e), None))
        time.sleep(interval)
    return out


def show(samples, t0):
    return "\n".join("  %+7.3f s  %s %r %r" % (t - t0, s, d, q)
                     for t, s, d, q in samples)


# ----------------------------------------------------------------- tests

@pytest.mark.timeout(150)
def test_kill9_worker_mid_stream(ingest):
    ctx = ingest(FAULT_EXTRA, prefix="it%s:" % uniq())
    f = ctx.f
    pub = start_stream(ctx)
    t0 = pub.events[0][1]
    victim = f.worker_pids()[0]
    pub.mark("kill -9 worker w0 pid %d" % victim)
    os.kill(victim, signal.SIGKILL)

    def respawned():
        h = f.healthz(timeout=2)
        w0 = [w for w in h["workers"] if w["slot"] == 0][0]
        return w0["pid"] not in (victim, 0) and w0["state"] == "ready" and w0

    w0 = stack.wait_until(respawned, 15, what="slot 0 respawned")
    pub.mark("w0 respawned as pid %d" % w0["pid"])
    ctx.wait_deps_up(30)
    pub.mark("deps up")
    run_on(pub, 3)
    summary = verify_sequence(ctx, pub, timeout=90, t0=t0)
    print("kill -9 worker: %r\n%s" % (summary, pub.timeline(t0)))
    assert w0["restarts"] == 1, w0


@pytest.mark.timeout(150)
def test_redis_restart_mid_stream(ingest, redis_server):
    """A clean Redis restart: redis_server.stop() sends SIGTERM, which
    Redis handles like SHUTDOWN (the AOF is written and fsynced before it
    exits), then it starts again from the AOF. With appendfsync everysec a
    hard kill (or a machine crash) could lose up to about a second of
    entries Redis had accepted, and fleetd had acknowledged: that window
    is documented, not tested here. Redis stays down for 2 s: intake
    pauses (nothing acknowledged to the broker that is not queued), the
    broker keeps the messages, and everything is stored after."""
    ctx = ingest(FAULT_EXTRA, prefix="it%s:" % uniq())
    pub = start_stream(ctx)
    t0 = pub.events[0][1]
    pub.mark("redis stop (SIGTERM = SHUTDOWN)")
    redis_server.stop()
    pub.mark("redis stopped")
    samples = sample_health(ctx, 2.0)
    pub.mark("redis start")
    redis_server.start()
    pub.mark("redis started")
    ctx.wait_deps_up(40)
    pub.mark("fleetd /healthz: all up")
    run_on(pub, 3)
    print("/healthz while Redis was down:\n" + show(samples, t0))
    summary = verify_sequence(ctx, pub, timeout=90, t0=t0)
    print("redis restart: %r\n%s" % (summary, pub.timeline(t0)))
    assert any(s == 503 and isinstance(d, dict) and d.get("redis") == "down"
               for _, s, d, _ in samples), \
        "/healthz never said 503 / redis \"down\" while Redis was stopped:\n" + \
        show(samples, t0)


@pytest.mark.timeout(150)
def test_postgres_down_3s_mid_stream(ingest, postgres):
    """PostgreSQL stops (fast shutdown) for about 3 s: /healthz turns 503
    with postgres "down", the stream keeps taking messages (entries
    pending), and once PostgreSQL is back everything is written."""
    ctx = ingest(FAULT_EXTRA, prefix="it%s:" % uniq())
    pub = start_stream(ctx)
    t0 = pub.events[0][1]
    pub.mark("postgres stop")
    postgres.stop()
    pub.mark("postgres stopped")
    samples = sample_health(ctx, 3.0)
    pub.mark("postgres start")
    postgres.start()
    pub.mark("postgres started")
    ctx.wait_deps_up(45)
    pub.mark("fleetd /healthz: all up")
    run_on(pub, 3)
    print("/healthz while PostgreSQL was down:\n" + show(samples, t0))
    summary = verify_sequence(ctx, pub, timeout=90, t0=t0)
    print("postgres down: %r\n%s" % (summary, pub.timeline(t0)))

    down = [x for x in samples if x[1] == 503 and isinstance(x[2], dict)
            and x[2].get("postgres") == "down"]
    assert down, "/healthz never said 503 / postgres \"down\" while PostgreSQL " \
        "was stopped:\n" + show(samples, t0)
    queues = [q for _, _, _, q in samples if isinstance(q, dict)]
    assert any(isinstance(q.get("pending"), int) and q["pending"] > 0
               for q in queues), \
        "queue.pending never above 0 while PostgreSQL was down:\n" + show(samples, t0)
    assert any(isinstance(q.get("length"), int) and q["length"] > 0
               for q in queues), \
        "queue.length never above 0 while PostgreSQL was down:\n" + show(samples, t0)


MQTT_MARGIN = 1.0      # s after /healthz shows mqtt "up" again


@pytest.mark.timeout(150)
def test_mosquitto_restart_mid_stream(ingest, mosquitto):
    """Mosquitto restarts (SIGTERM, persistence on, then start).

    Known Mosquitto 2.0.11 limitation: $share subscriptions are not
    restored from persistence, so until fleetd subscribes again the broker
    drops what devices publish to the shared topics - after acknowledging
    it to them. So the test requires:
      - every message acknowledged before the broker was stopped is stored
        (whether fleetd had it, or it sat in fleetd's persistent session);
      - every message published later than MQTT_MARGIN after fleetd's
        /healthz shows mqtt "up" again is stored;
    and reports how many acknowledged messages fell in the window between
    (published after the stop, before re-subscription) and how many of
    those were lost. Nothing is stored twice."""
    ctx = ingest(FAULT_EXTRA, prefix="it%s:" % uniq())
    f = ctx.f
    pub = start_stream(ctx)
    t0 = pub.events[0][1]
    t_stop = pub.mark("mosquitto stop")
    mosquitto.stop()
    pub.mark("mosquitto stopped")
    samples = sample_health(ctx, 1.5, interval=0.1)
    pub.mark("mosquitto start")
    mosquitto.start()
    pub.mark("mosquitto started")
    state = {"seen_not_up": any(isinstance(d, dict) and d.get("mqtt") != "up"
                                for _, _, d, _ in samples)}

    def mqtt_up():
        status, deps, h = ctx.deps()
        if deps["mqtt"] != "up":
            state["seen_not_up"] = True
            return False
        return state["seen_not_up"] and status == 200

    try:
        stack.wait_until(mqtt_up, 40, interval=0.05,
                         what="/healthz mqtt \"up\" again after the restart")
    except TimeoutError as e:
        raise AssertionError("%s (seen not up: %s)\n%s\n%s" % (
            e, state["seen_not_up"], show(samples, t0), ctx.diagnostics())) from None
    t_up = pub.mark("fleetd /healthz mqtt up")
    run_on(pub, 4)

    acked = pub.acked()
    before = {s for s, (_, tp, ta) in acked.items() if ta < t_stop}
    after = {s for s, (_, tp, ta) in acked.items() if tp > t_up + MQTT_MARGIN}
    window = set(acked) - before - after
    print("/healthz while Mosquitto was down:\n" + show(samples, t0))
    assert before and after, (len(before), len(after))
    summary = verify_sequence(ctx, pub, must=before | after, timeout=90, t0=t0)
    stored = stored_seqs(ctx, pub)
    lost = sorted(window - set(stored))
    print("mosquitto restart: %r\n  acked before stop %d, after up+%.1fs %d, "
          "in the window %d, of which lost (dropped by the broker before "
          "fleetd re-subscribed) %d%s\n%s" % (
              summary, len(before), MQTT_MARGIN, len(after), len(window),
              len(lost), (" seqs %d..%d" % (lost[0], lost[-1])) if lost else "",
              pub.timeline(t0)))
    assert f.alive()


@pytest.mark.timeout(150)
def test_sigquit_mid_stream_then_restart(ingest):
    """SIGQUIT while messages flow: fleetd finishes what it has and exits
    0; entries it had not processed stay in the Redis stream and the broker
    keeps new messages in the workers' sessions; started again (same
    node_id: same client ids and consumer names), it stores all of them."""
    ctx = ingest(FAULT_EXTRA, prefix="it%s:" % uniq())
    f = ctx.f
    pub = start_stream(ctx)
    t0 = pub.events[0][1]
    pub.mark("SIGQUIT")
    f.signal(signal.SIGQUIT)
    try:
        rc = f.wait(20)
    except TimeoutError:
        raise AssertionError("fleetd still running 20 s after SIGQUIT\n%s" %
                             stack.tail(f.log_text(), 60)) from None
    pub.mark("fleetd exited %s" % rc)
    try:
        groups = ctx.redis.xinfo_groups(ctx.stream_key)
    except Exception as e:  # noqa: BLE001 - informational only
        groups = repr(e)
    time.sleep(1.5)                      # the broker queues for the sessions
    pub.mark("fleetd start again")
    f.start(timeout=20)
    ctx.wait_deps_up(40)
    pub.mark("fleetd ready")
    run_on(pub, 3)
    summary = verify_sequence(ctx, pub, timeout=90, t0=t0)
    print("SIGQUIT: %r\n  consumer groups after exit: %r\n%s" % (
        summary, groups, pub.timeline(t0)))
    assert rc == 0, "fleetd exited %r after SIGQUIT" % rc


@pytest.mark.timeout(150)
def test_fewer_workers_after_restart_loses_nothing(ingest):
    """fleetd ran with 3 workers, then is started with 2 (same node_id):
    the broker still holds the session of client fleetd-{node}-w2 with its
    shared subscription. Mosquitto keeps giving that offline member its
    share of the group's messages (queued for it, acknowledged to the
    devices), so unless fleetd takes care of sessions of slots it no longer
    runs, about a third of what devices send is never stored."""
    ctx = ingest(FAULT_EXTRA, prefix="it%s:" % uniq(), workers=3)
    f = ctx.f
    pub = start_stream(ctx)
    t0 = pub.events[0][1]
    pub.mark("stop fleetd (3 workers)")
    f.stop()
    f.write_config(stack.deep_merge(f.extra, {"workers": 2}))
    f.start(timeout=20)
    ctx.wait_deps_up(40)
    pub.mark("fleetd started with 2 workers")
    run_on(pub, 4)
    summary = verify_sequence(ctx, pub, timeout=60, t0=t0)
    print("3 -> 2 workers: %r\n%s" % (summary, pub.timeline(t0)))


@pytest.mark.timeout(90)
def test_reload_to_unreachable_redis_keeps_old_workers(ingest):
    """A reload whose new workers cannot reach Redis (the operator typed a
    wrong port) is refused after worker_ready_timeout: a worker is ready
    only once its Redis and PostgreSQL connections have been up. The old
    generation keeps serving and storing; fixing the config and reloading
    again goes through."""
    ctx = ingest(extra={"worker_ready_timeout": "3s"})
    f = ctx.f
    h0 = f.healthz()
    old_pids = sorted(w["pid"] for w in h0["workers"])
    good = f.extra
    f.write_config(extra=stack.deep_merge(
        good, {"redis": {"port": stack.free_port()}}))
    f.signal(signal.SIGHUP)
    stack.wait_until(lambda: f.metric("fleetd_reloads_failed_total") == 1, 15,
                     what="the reload refused")
    assert "not ready within worker_ready_timeout" in f.log_text()
    # the refused generation's workers are killed; until the master has
    # reaped them /healthz still lists them
    stack.wait_until(lambda: sorted(w["pid"] for w in f.healthz()["workers"])
                     == old_pids, 10, what="only the old workers listed")
    h = f.healthz()
    assert h["generation"] == h0["generation"], h
    assert all(w["state"] == "ready" for w in h["workers"]), h["workers"]
    dev = ctx.dev("after-bad-reload")
    t = int(time.time() * 1000) - 1000
    ctx.send(dev, {"ts": t, "temp": 1.5})
    assert len(ctx.wait_rows(dev, 1, timeout=15)) == 1
    # fixed again, a reload goes through and the new workers store
    f.write_config(extra=good)
    f.signal(signal.SIGHUP)
    f.wait_ready(20, generation_above=h0["generation"])
    assert not set(f.worker_pids()) & set(old_pids)
    dev2 = ctx.dev("after-good-reload")
    ctx.send(dev2, {"ts": t, "temp": 2.5})
    assert len(ctx.wait_rows(dev2, 1, timeout=15)) == 1
