"""
ingest_util.py - helpers for the ingest integration tests (issue 3).

What a user of fleetd can see after a device publishes: rows in the
PostgreSQL table telemetry(device_id, metric, ts, value, value_bool,
value_text), the Redis shadow hash {prefix}shadow:{device}, the dead-letter
stream {prefix}dead, /metrics and /healthz. Devices publish with paho-mqtt
1.6.1 at QoS 1; "acknowledged" means the broker's PUBACK reached the
publisher (paho's on_publish).

Isolation: every fleetd started here gets its own node_id (so its MQTT
client ids and stream consumer names are new) and its own MQTT share group.
A persistent session left on the broker by an earlier fleetd (clean start
off, 1 day expiry) stays a member of its share group while offline, and
Mosquitto keeps handing that member its share of the messages (queued for
a client that never comes back); with a group of its own a test never
loses messages to another test's leftover session. Device ids start with a
fresh random tag per test, so rows, shadows and dead letters of one test
are told apart from everybody else's.

Every wait has a deadline.
"""

import json
import threading
import time
import uuid

import pytest

import stack

DEFAULT_PREFIX = "fleetd:"


def uniq():
    """A short random tag: device ids, node ids, share groups."""
    return uuid.uuid4().hex[:10]


def now_ms():
    return int(time.time() * 1000)


def to_bytes(payload):
    if payload is None:
        return b""
    if isinstance(payload, (bytes, bytearray)):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


def ingest_config(tag, prefix=None, extra=None):
    """Config overlay for one fleetd under test: its own node_id and share
    group (see the module docstring), the given redis.prefix (None keeps the
    default "fleetd:"), plus extra deep-merged in."""
    cfg = {"node_id": "it-" + tag, "mqtt": {"share_group": "g" + tag}}
    if prefix is not None:
        cfg["redis"] = {"prefix": prefix}
    if extra:
        cfg = stack.deep_merge(cfg, extra)
    return cfg


# ------------------------------------------------------------------ MQTT

def _mqtt():
    import paho.mqtt.client as mqtt
    return mqtt


class Publisher:
    """A device-side MQTT client (3.1.1, clean session) that publishes at
    QoS 1 and waits for the broker's PUBACK."""

    def __init__(self, mq, client_id=None):
        mqtt = _mqtt()
        self.client = mqtt.Client(client_id=client_id or "it-pub-" + uniq(),
                                  clean_session=True)
        self.client.max_inflight_messages_set(200)
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
        self.connected = threading.Event()

        def on_connect(c, u, flags, rc):
            if rc == 0:
                self.connected.set()

        def on_disconnect(c, u, rc):
            self.connected.clear()

        self.client.on_connect = on_connect
        self.client.on_disconnect = on_disconnect
        self.client.connect(mq.host, mq.port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(10):
            self.close()
            raise AssertionError("publisher: no CONNACK from %r within 10 s" % mq)

    def send(self, topic, payload, timeout=10.0):
        """Publish at QoS 1 and wait for the PUBACK; AssertionError if it
        does not come within timeout."""
        info = self.client.publish(topic, to_bytes(payload), qos=1)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise AssertionError("no PUBACK for a QoS 1 publish on %r within "
                                 "%.0f s" % (topic, timeout))
        return info

    def close(self):
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


class SeqPublisher:
    """Publishes a numbered sequence at QoS 1 from a thread, at `rate`
    messages per second, round-robin over `devices`: message seq goes to
    devices[seq % n] as {"ts": base_ts + seq, "seq": seq} (every message
    has its own (device, ts), one row). It records when each message was
    handed to paho and when its PUBACK arrived (monotonic clock), and keeps
    publishing through broker restarts (paho reconnects and resends what is
    not acknowledged; a resent message may be stored twice by the broker
    path, which the table's dedup must absorb)."""

    def __init__(self, mq, devices, rate=300.0, base_ts=None):
        mqtt = _mqtt()
        self.devices = list(devices)
        self.rate = float(rate)
        self.base_ts = base_ts if base_ts is not None else now_ms() - 120000
        self.lock = threading.Lock()
        self.sent = []            # (seq, device, t_pub, mid)
        self.acks = {}            # mid -> t_ack
        self.events = []          # (name, t)
        self.errors = []
        self._stop = threading.Event()
        self._stopped = False
        self.connected = threading.Event()
        self.disconnects = 0
        self.client = mqtt.Client(client_id="it-seq-" + uniq(),
                                  clean_session=True)
        self.client.max_inflight_messages_set(500)
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
        self.client.on_publish = self._on_publish
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.connect(mq.host, mq.port, keepalive=10)
        self.client.loop_start()
        if not self.connected.wait(10):
            self.client.loop_stop()
            raise AssertionError("sequence publisher: no CONNACK within 10 s")
        self.thread = threading.Thread(target=self._run, name="seqpub",
                                       daemon=True)

    # -- paho callbacks (network thread)
    def _on_publish(self, c, u, mid):
        t = time.monotonic()
        with self.lock:
            self.acks.setdefault(mid, t)

    def _on_connect(self, c, u, flags, rc):
        if rc == 0:
            self.connected.set()
            self.mark("publisher connected")

    def _on_disconnect(self, c, u, rc):
        self.connected.clear()
        self.disconnects += 1
        self.mark("publisher disconnected (rc %s)" % rc)

    # -- publishing thread
    def start(self):
        self.thread.start()
        return self

    def topic(self, seq):
        return "devices/%s/telemetry" % self.devices[seq % len(self.devices)]

    def ts(self, seq):
        return self.base_ts + seq

    def _run(self):
        period = 1.0 / self.rate
        next_t = time.monotonic()
        seq = 0
        while not self._stop.is_set():
            if seq >= 65000:
                # paho message ids are 16 bit: past this, mids repeat and
                # acks could no longer be matched to messages
                self.errors.append("sequence publisher stopped at 65000")
                break
            dev = self.devices[seq % len(self.devices)]
            payload = to_bytes({"ts": self.ts(seq), "seq": seq})
            t = time.monotonic()
            try:
                info = self.client.publish("devices/%s/telemetry" % dev,
                                           payload, qos=1)
            except Exception as e:  # noqa: BLE001 - recorded, keep going
                self.errors.append(repr(e))
                self._stop.wait(0.05)
                continue
            with self.lock:
                self.sent.append((seq, dev, t, info.mid))
            seq += 1
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            elif delay < -1.0:
                next_t = time.monotonic()     # no burst after a stall

    def mark(self, name):
        t = time.monotonic()
        with self.lock:
            self.events.append((name, t))
        return t

    def n_acked(self):
        with self.lock:
            return len(self.acks)

    def n_sent(self):
        with self.lock:
            return len(self.sent)

    def wait_acked(self, n, timeout=20.0):
        """Wait until at least n messages have been acknowledged."""
        return stack.wait_until(lambda: self.n_acked() >= n, timeout,
                                what="%d acknowledged publishes (have %d)" % (
                                    n, self.n_acked()))

    def stop(self, drain=15.0):
        """Stop publishing; give outstanding PUBACKs up to `drain` seconds,
        then disconnect. Calling it again does nothing."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(10)
        deadline = time.monotonic() + drain
        while time.monotonic() < deadline:
            with self.lock:
                outstanding = sum(1 for s in self.sent if s[3] not in self.acks)
            if not outstanding:
                break
            time.sleep(0.05)
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    def acked(self):
        """{seq: (device, t_pub, t_ack)} of the acknowledged messages."""
        with self.lock:
            return {seq: (dev, t, self.acks[mid])
                    for seq, dev, t, mid in self.sent if mid in self.acks}

    def published(self):
        with self.lock:
            return {seq: (dev, t) for seq, dev, t, mid in self.sent}

    def timeline(self, t0=None):
        with self.lock:
            ev = list(self.events)
        if not ev:
            return ""
        t0 = t0 if t0 is not None else ev[0][1]
        return "\n".join("  %+8.3f s  %s" % (t - t0, name) for name, t in ev)


# --------------------------------------------------------------- checks

def burst(mq, topic, payloads, inflight=100, timeout=60.0):
    """Publish payloads at QoS 1 on topic as fast as one paho client can
    with `inflight` messages in flight; return once every PUBACK is in."""
    import paho.mqtt.client as mqtt
    c = mqtt.Client(client_id="it-burst-" + uniq(), clean_session=True)
    c.max_inflight_messages_set(inflight)
    c.max_queued_messages_set(0)
    c.connect(mq.host, mq.port, keepalive=30)
    c.loop_start()
    try:
        infos = [c.publish(topic, to_bytes(p), qos=1) for p in payloads]
        deadline = time.monotonic() + timeout
        for i in infos:
            i.wait_for_publish(max(0.1, deadline - time.monotonic()))
            if not i.is_published():
                raise AssertionError("no PUBACK for a burst message within "
                                     "%.0f s" % timeout)
    finally:
        c.disconnect()
        c.loop_stop()


class Ingest:
    """One fleetd under test and the ways to look at what it stored."""

    def __init__(self, f, tag, prefix, mq, rd, pg):
        self.f = f
        self.tag = tag
        self.prefix = prefix if prefix is not None else DEFAULT_PREFIX
        self.mq = mq
        self.rd_service = rd
        self.pg_service = pg
        self.redis = rd.client()
        self._pg = None
        self._pub = None
        self.closers = []

    # -- names
    def dev(self, name):
        """A device id unique to this test."""
        return "%s-%s" % (self.tag, name)

    @staticmethod
    def topic(device, kind="telemetry"):
        return "devices/%s/%s" % (device, kind)

    @property
    def stream_key(self):
        return self.prefix + "ingest"

    @property
    def dead_key(self):
        return self.prefix + "dead"

    def shadow_key(self, device):
        return "%sshadow:%s" % (self.prefix, device)

    # -- publishing
    @property
    def pub(self):
        if self._pub is None:
            self._pub = Publisher(self.mq)
        return self._pub

    def send(self, device_or_topic, payload, kind="telemetry", timeout=10.0):
        """Publish one QoS 1 message and wait for its PUBACK."""
        topic = (device_or_topic if device_or_topic.startswith("devices/")
                 else self.topic(device_or_topic, kind))
        return self.pub.send(topic, payload, timeout=timeout)

    def seq_publisher(self, devices, rate=300.0, base_ts=None):
        p = SeqPublisher(self.mq, devices, rate=rate, base_ts=base_ts)
        self.closers.append(lambda: p.stop(drain=0))
        return p

    # -- PostgreSQL
    def query(self, sql, args=()):
        """Run a query on a (re)connected autocommit session; rows."""
        import psycopg2
        for attempt in (0, 1):
            if self._pg is None or self._pg.closed:
                self._pg = self.pg_service.connect()
            try:
                cur = self._pg.cursor()
                cur.execute(sql, args)
                rows = cur.fetchall() if cur.description else []
                cur.close()
                return rows
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                try:
                    self._pg.close()
                except Exception:  # noqa: BLE001
                    pass
                self._pg = None
                if attempt:
                    raise

    def rows(self, device):
        """[(metric, ts_ms, value, value_bool, value_text)] ordered by
        metric, ts."""
        return [tuple(r) for r in self.query(
            "SELECT metric, (extract(epoch FROM ts) * 1000)::bigint, value, "
            "value_bool, value_text FROM telemetry WHERE device_id = %s "
            "ORDER BY metric, ts", (device,))]

    def count_rows(self, device):
        return self.query("SELECT count(*) FROM telemetry WHERE device_id = %s",
                          (device,))[0][0]

    def wait_rows(self, device, n, timeout=20.0):
        """Wait until device has at least n rows; return rows(device)."""
        state = {}

        def enough():
            state["rows"] = self.rows(device)
            return len(state["rows"]) >= n

        self.wait_or_explain(enough, timeout,
                             "%d telemetry rows for %s" % (n, device),
                             lambda: "rows so far: %r" % (state.get("rows"),))
        return state["rows"]

    # -- Redis
    def shadow(self, device):
        """The shadow hash as {field: str}."""
        h = self.redis.hgetall(self.shadow_key(device))
        return {k.decode(): v.decode() for k, v in h.items()}

    def wait_shadow(self, device, pred, timeout=10.0, what="shadow"):
        state = {}

        def ok():
            state["h"] = self.shadow(device)
            return pred(state["h"])

        self.wait_or_explain(ok, timeout, "%s of %s" % (what, device),
                             lambda: "shadow %s = %r" % (
                                 self.shadow_key(device), state.get("h")))
        return state["h"]

    def dead_mark(self):
        """The id of the newest dead-letter entry now ("0-0" if none)."""
        last = self.redis.xrevrange(self.dead_key, "+", "-", count=1)
        return last[0][0].decode() if last else "0-0"

    def dead_since(self, mark, topic=None):
        """Dead-letter entries after mark, as dicts (payload stays bytes,
        other fields str), optionally only those for topic."""
        out = []
        for eid, fields in self.redis.xrange(self.dead_key, "(" + mark, "+"):
            d = {"id": eid.decode()}
            for k, v in fields.items():
                k = k.decode()
                d[k] = v if k == "payload" else v.decode("utf-8", "replace")
            if topic is None or d.get("topic") == topic:
                out.append(d)
        return out

    def dead_for_devices(self, devices, count=2000):
        """Recent dead letters whose topic names one of devices."""
        topics = {self.topic(d) for d in devices} | \
                 {self.topic(d, "state") for d in devices}
        out = []
        try:
            entries = self.redis.xrevrange(self.dead_key, "+", "-", count=count)
        except Exception as e:  # noqa: BLE001
            return ["(could not read %s: %r)" % (self.dead_key, e)]
        for eid, fields in entries:
            f = {k.decode(): v for k, v in fields.items()}
            t = f.get("topic", b"").decode("utf-8", "replace")
            if t in topics:
                out.append({"id": eid.decode(), "topic": t,
                            "reason": f.get("reason", b"").decode(),
                            "error": f.get("error", b"").decode("utf-8", "replace")})
        return out

    # -- /metrics and /healthz
    def metric_sum(self, name, **labels):
        """Sum of every sample of name whose labels include labels; None
        when there is no such sample at all."""
        samples = stack.parse_prometheus(self.f.metrics())
        want = {(k, str(v)) for k, v in labels.items()}
        vals = [v for (n, ls), v in samples.items() if n == name and want <= ls]
        return sum(vals) if vals else None

    def rejected(self, reason):
        v = self.metric_sum("fleetd_ingest_rejected_total", reason=reason)
        return 0 if v is None else v

    def ingest_metrics_text(self):
        try:
            return "\n".join(
                ln for ln in self.f.metrics().splitlines()
                if any(w in ln for w in ("ingest", "mqtt", "queue", "dependency"))
                and not ln.startswith("#") and "_bucket" not in ln
                and not ln.endswith(" 0"))
        except Exception as e:  # noqa: BLE001
            return "(no /metrics: %r)" % e

    def deps(self):
        status, h = self.f.healthz_status(timeout=2.0)
        return status, {k: h.get(k) for k in ("mqtt", "redis", "postgres")}, h

    def wait_deps_up(self, timeout=30.0):
        state = {}

        def up():
            status, deps, h = self.deps()
            state["last"] = (status, deps, h.get("queue"))
            return status == 200 and all(v == "up" for v in deps.values())

        self.wait_or_explain(up, timeout,
                             "/healthz 200 with mqtt, redis, postgres up",
                             lambda: "last %r" % (state.get("last"),), 0.1)

    def wait_pipeline(self, timeout=40.0):
        """Dependencies up, then a canary message goes all the way into
        the table (so the shared subscriptions exist: a message published
        before them would be dropped by the broker, not by fleetd)."""
        self.wait_deps_up(timeout)
        dev = self.dev("canary")
        deadline = time.monotonic() + timeout
        i = 0
        while True:
            self.send(dev, {"ts": now_ms(), "canary": i})
            i += 1
            end = min(deadline, time.monotonic() + 1.0)
            while time.monotonic() < end:
                try:
                    stored = self.count_rows(dev) > 0
                except Exception:  # noqa: BLE001 - table not created yet
                    stored = False
                if stored:
                    # an earlier canary may still be on its way (sent
                    # before this one was stored): let it finish, or a
                    # test's counter snapshot would count it later
                    self.wait_idle(max(15.0, deadline - time.monotonic()))
                    return
                time.sleep(0.05)
            if time.monotonic() >= deadline:
                raise AssertionError(
                    "no canary row for %s within %.0f s (%d sent)\n%s" % (
                        dev, timeout, i, self.diagnostics()))

    def idle_state(self):
        """(lag, pending of this node's consumers, read - counted): all
        zero once every entry in the stream was read by this node and
        acknowledged, and every one read was counted (stored, dead
        letter or state). Command answers are read but not counted."""
        groups = self.redis.xinfo_groups(self.stream_key)
        g = [x for x in groups if x["name"] in (b"fleetd", "fleetd")]
        if not g:
            return None
        lag = g[0].get("lag", 0) or 0
        me = "it-%s-w" % self.tag
        pending = sum(c["pending"] for c in
                      self.redis.xinfo_consumers(self.stream_key, "fleetd")
                      if (c["name"].decode() if isinstance(c["name"], bytes)
                          else c["name"]).startswith(me))

        def m(name):
            return int(self.metric_sum(name) or 0)
        unc = m("fleetd_ingest_read_total") - (
            m("fleetd_ingest_stored_total") +
            m("fleetd_ingest_dead_lettered_total") +
            m("fleetd_ingest_state_total"))
        return lag, pending, unc

    def wait_idle(self, timeout=30.0, counted=True):
        """Until this node has read and acknowledged everything in the
        stream and (counted) its counters took in every entry it read
        (they are added after the XACK's reply, so a pending count of 0
        alone does not say so). counted=False after a worker was killed
        or command answers were read: then read and counted differ."""
        state = {}

        def idle():
            st = state["st"] = self.idle_state()
            return st is not None and st[0] == 0 and st[1] == 0 and \
                (not counted or st[2] == 0)
        self.wait_or_explain(idle, timeout,
                             "ingest idle (lag, pending, uncounted)",
                             lambda: "last %r" % (state.get("st"),), 0.1)

    def wait_or_explain(self, pred, timeout, what, last, interval=None):
        """stack.wait_until(pred), failing with an AssertionError that says
        what was seen last (last()) and the node's diagnostics."""
        kw = {} if interval is None else {"interval": interval}
        try:
            stack.wait_until(pred, timeout, what=what, **kw)
        except TimeoutError as e:
            raise AssertionError("%s; %s\n%s" % (
                e, last(), self.diagnostics())) from None

    def diagnostics(self, n=40):
        out = []
        try:
            out.append("/healthz: %r" % (self.deps()[0:2],))
        except Exception as e:  # noqa: BLE001
            out.append("/healthz: %r" % e)
        out.append("ingest metrics:\n" + self.ingest_metrics_text())
        out.append("--- fleetd log tail ---\n" + stack.tail(self.f.log_text(), n))
        return "\n".join(out)

    def close(self):
        for c in self.closers:
            try:
                c()
            except Exception:  # noqa: BLE001
                pass
        if self._pub is not None:
            try:
                self._pub.close()
            except Exception:  # noqa: BLE001
                pass
        if self._pg is not None:
            try:
                self._pg.close()
            except Exception:  # noqa: BLE001
                pass
        try:
            self.redis.close()
        except Exception:  # noqa: BLE001
            pass


@pytest.fixture
def ingest(fleetd, mosquitto, redis_server, postgres):
    """Factory: ingest(extra=None, prefix=None, workers=2, wait=True,
    env=None) -> Ingest. Starts fleetd with ingest_config() (own node_id,
    share group, given redis.prefix; None = the default "fleetd:") and the
    extra environment env (e.g. FLEETD_TEST_HOOKS) and, with wait, waits
    until a canary message is stored."""
    made = []

    def make(extra=None, prefix=None, workers=2, wait=True, env=None):
        tag = uniq()
        f = fleetd(ingest_config(tag, prefix, extra), workers=workers,
                   timeout=20.0, env=env)
        ctx = Ingest(f, tag, prefix, mosquitto, redis_server, postgres)
        made.append(ctx)
        if wait:
            ctx.wait_pipeline()
        return ctx

    yield make
    for ctx in made:
        ctx.close()


# ------------------------------------------------------- sequence checks

def stored_seqs(ctx, pub):
    """{seq: [(device, ts_ms), ...]} of the rows stored for pub's devices."""
    rows = ctx.query(
        "SELECT device_id, (extract(epoch FROM ts) * 1000)::bigint, value "
        "FROM telemetry WHERE device_id = ANY(%s) AND metric = 'seq'",
        (pub.devices,))
    out = {}
    for dev, ts, value in rows:
        out.setdefault(int(value), []).append((dev, int(ts)))
    return out


def duplicate_keys(ctx, devices):
    """(device, metric, ts) that have more than one row."""
    return ctx.query(
        "SELECT device_id, metric, ts, count(*) FROM telemetry "
        "WHERE device_id = ANY(%s) GROUP BY 1, 2, 3 HAVING count(*) > 1 "
        "LIMIT 20", (list(devices),))


def verify_sequence(ctx, pub, must=None, timeout=60.0, t0=None):
    """Wait until every seq in must (default: every acknowledged one) is
    stored, then check none is stored twice and each row is at its own
    device and ts. Returns a summary dict. AssertionError with the missing
    seqs, the timeline, dead letters and the log on failure."""
    acked = pub.acked()
    must = set(acked) if must is None else set(must)
    deadline = time.monotonic() + timeout
    stored = {}
    while True:
        try:
            stored = stored_seqs(ctx, pub)
        except Exception:  # noqa: BLE001 - PostgreSQL coming back
            stored = stored or {}
        missing = sorted(must - set(stored))
        if not missing or time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    published = pub.published()
    twice = {s: r for s, r in stored.items() if len(r) > 1}
    misplaced = {s: r for s, r in stored.items()
                 if s not in published or
                 any(r_ != (pub.devices[s % len(pub.devices)], pub.ts(s))
                     for r_ in r)}
    summary = {
        "published": len(published), "acked": len(acked),
        "must": len(must), "stored": len(stored),
        "stored_not_acked": len(set(stored) - set(acked)),
        "missing": len(missing),
    }
    if missing or twice or misplaced:
        t0 = t0 if t0 is not None else (pub.events[0][1] if pub.events else 0)

        def when(s):
            a = acked.get(s)
            p = published.get(s)
            return "seq %d pub %+.3f ack %s" % (
                s, (p[1] - t0) if p else float("nan"),
                "%+.3f" % (a[2] - t0) if a else "-")

        msg = ["sequence check failed: %r" % summary]
        if missing:
            msg.append("acknowledged but not stored (%d, first 20):\n  %s" % (
                len(missing), "\n  ".join(when(s) for s in missing[:20])))
            runs = _runs(missing)
            msg.append("missing ranges: %s" % runs[:20])
        if twice:
            msg.append("stored more than once: %r" % dict(list(twice.items())[:10]))
        if misplaced:
            msg.append("rows at the wrong device/ts: %r" %
                       dict(list(misplaced.items())[:10]))
        msg.append("timeline:\n" + pub.timeline(t0))
        msg.append("dead letters for these devices: %r" %
                   ctx.dead_for_devices(pub.devices)[:10])
        msg.append(ctx.diagnostics(80))
        raise AssertionError("\n".join(msg))
    dups = duplicate_keys(ctx, pub.devices)
    assert not dups, "duplicate (device, metric, ts) rows: %r" % dups
    return summary


def _runs(seqs):
    """[a, a+1, ..., b, d, ...] -> [(a, b), (d, d), ...]"""
    out = []
    for s in seqs:
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out

