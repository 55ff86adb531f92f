"""
The process model: master + workers, respawn, reload without failed
requests, signals, -s, -d, pid file; and the HTTP basics every route
relies on (/healthz, /metrics, 404, pipelining, limits, header timeout).
"""

import http.client
import json
import os
import re
import signal
import subprocess
import socket
import threading
import time

import pytest

import stack


def children_of(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = stack.pid_stat(int(d))
            if st and st[0] == pid and stack.pid_alive(int(d)):
                out.append(int(d))
    return sorted(out)


def served_by(f, timeout=2.0):
    status, h = f.healthz_status(timeout=timeout)
    return status, h["served_by"]["pid"], h["served_by"]["slot"]


# ---------------------------------------------------------------- startup

def binary_version(f):
    """The version the binary reports with -v ("fleetd X.Y.Z")."""
    out = subprocess.run([str(f.bin), "-v"], capture_output=True, text=True,
                         timeout=10).stdout.split()
    assert len(out) == 2 and out[0] == "fleetd", out
    return out[1]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("workers", [2, 3])
def test_healthz_one_entry_per_worker(fleetd, workers):
    f = fleetd(workers=workers)
    # ready workers may still be connecting to the broker, Redis and
    # PostgreSQL (a first failed attempt reads "down": 503): the node must
    # become healthy within a few seconds
    seen = []

    def healthy():
        seen[:] = [f.healthz_status()]
        return seen[0][0] == 200

    try:
        stack.wait_until(healthy, 10, what="/healthz 200")
    except TimeoutError:
        pass
    status, h = seen[0]
    assert status == 200, h
    assert h["status"] == "ok", h
    assert h["node"] == "it-node"
    assert h["version"] == binary_version(f)
    assert h["master_pid"] == f.pid
    ws = h["workers"]
    assert len(ws) == workers, "expected %d workers, /healthz lists %r" % (workers, ws)
    assert sorted(w["slot"] for w in ws) == list(range(workers))
    pids = [w["pid"] for w in ws]
    assert len(set(pids)) == workers, pids
    # each is a live child of the master
    assert sorted(pids) == sorted(p for p in children_of(f.pid) if p in pids), (
        pids, children_of(f.pid))
    for w in ws:
        assert w["state"] == "ready", w
        assert w["restarts"] == 0, w
        for q in ("p50", "p99", "max"):
            assert isinstance(w["loop_lag_ms"][q], (int, float)), w
        for k in ("ws", "http"):
            assert isinstance(w["connections"][k], int), w
    assert h["served_by"]["pid"] in pids
    assert ws[[w["slot"] for w in ws].index(h["served_by"]["slot"])]["pid"] == \
        h["served_by"]["pid"]
    assert set(h["queue"]) >= {"length", "pending"}, h
    for dep in ("mqtt", "redis", "postgres"):
        assert dep in h, h
    # pid file written in the foreground too
    assert f.read_pid_file() == f.pid
    # the startup line
    log = f.log_text()
    assert re.search(r"\[\w+\] \d+#\w+: fleetd %s node it-node listening on "
                     r"http://127\.0\.0\.1:%d, %d workers"
                     % (re.escape(binary_version(f)), f.port, workers), log), \
        "startup line missing:\n" + stack.tail(log)


@pytest.mark.timeout(20)
def test_livez(fleetd):
    f = fleetd(workers=1)
    status, hdrs, body = f.get("/livez")
    assert status == 200
    assert body == b"ok\n"
    assert hdrs["content-type"].startswith("text/plain"), hdrs


@pytest.mark.timeout(30)
def test_second_instance_refused_while_pid_file_is_live(fleetd):
    f = fleetd(workers=1)
    g = fleetd({"pid_file": str(f.pid_file)}, workers=1, start=False)
    g.start(wait_ready=False)
    rc = g.wait(10)
    assert rc not in (0, None), "second master with a live pid_file exited %r" % rc
    assert f.read_pid_file() == f.pid, "the running master's pid file was touched"
    assert f.healthz_status()[0] == 200


# ---------------------------------------------------------------- respawn

@pytest.mark.timeout(30)
def test_killed_worker_is_respawned(fleetd):
    f = fleetd(workers=2)
    h = f.healthz()
    old = {w["slot"]: w["pid"] for w in h["workers"]}
    victim = old[0]
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)

    new_pid = None
    errors = []
    while time.monotonic() - t0 < 1.0:
        try:
            status, pid, slot = served_by(f, timeout=max(0.05, 1.0 - (time.monotonic() - t0)))
        except (OSError, http.client.HTTPException, ValueError) as e:
            errors.append(repr(e))
            continue
        if pid not in old.values():
            new_pid = pid
            assert slot == 0, "new pid %d reports slot %d, killed slot 0" % (pid, slot)
            break
    elapsed = time.monotonic() - t0
    assert new_pid is not None, (
        "no response from a new worker within 1 s of kill -9 (errors: %s)\n%s"
        % (errors[:5], stack.tail(f.log_text())))

    h = stack.wait_until(
        lambda: (lambda h: h if {w["slot"]: w["pid"] for w in h["workers"]}.get(0) == new_pid
                 and all(w["state"] == "ready" for w in h["workers"]) else None)(f.healthz()),
        3, what="/healthz showing slot 0 = pid %d" % new_pid)
    w0 = [w for w in h["workers"] if w["slot"] == 0][0]
    w1 = [w for w in h["workers"] if w["slot"] == 1][0]
    assert w0["restarts"] == 1, w0
    assert w1["pid"] == old[1] and w1["restarts"] == 0, w1
    assert f.metric("fleetd_worker_restarts_total", worker="0") == 1
    assert f.metric("fleetd_worker_restarts_total", worker="1") == 0
    assert f.metric("fleetd_worker_up", worker="0") == 1
    assert re.search(r"worker w0 \(pid %d\) exited on signal 9" % victim, f.log_text()), \
        stack.tail(f.log_text())
    assert not stack.pid_alive(victim)
    print("respawned worker served after %.3f s" % elapsed)


def keepalive_to_slot(f, slot, tries=50):
    """A keep-alive HTTPConnection whose requests the worker of slot serves
    (connections land on a worker by the kernel's SO_REUSEPORT hash)."""
    for _ in range(tries):
        conn = http.client.HTTPConnection(f.host, f.port, timeout=5)
        conn.request("GET", "/healthz")
        r = conn.getresponse()
        h = json.loads(r.read())
        if h["served_by"]["slot"] == slot:
            return conn
        conn.close()
    raise AssertionError("no connection landed on slot %d in %d tries" % (slot, tries))


def healthz_on(conn):
    conn.request("GET", "/healthz")
    r = conn.getresponse()
    return r.status, json.loads(r.read())


@pytest.mark.timeout(40)
def test_worker_that_keeps_dying_backs_off(fleetd):
    """Killed again as soon as it is back: the respawn delay doubles
    (100, 200, 400, 800 ms) and while the slot waits /healthz is 503
    "degraded" with the slot in backoff."""
    f = fleetd(workers=2)
    conn = keepalive_to_slot(f, 1)      # watch slot 0 from slot 1's worker
    try:
        pid = f.worker_pids()[0]
        gaps = []
        degraded = []
        for i in range(4):
            os.kill(pid, signal.SIGKILL)
            t_kill = time.monotonic()
            while True:
                assert time.monotonic() - t_kill < 5, \
                    "slot 0 not respawned 5 s after kill %d" % i
                status, h = healthz_on(conn)
                w0 = [w for w in h["workers"] if w["slot"] == 0][0]
                if w0["pid"] not in (pid, 0) and w0["state"] == "ready":
                    break
                if w0["state"] == "backoff":
                    degraded.append((status, h["status"]))
                time.sleep(0.01)
            gaps.append(time.monotonic() - t_kill)
            pid = w0["pid"]
        assert degraded, "never saw slot 0 in state backoff (gaps %s)" % gaps
        assert set(degraded) == {(503, "degraded")}, set(degraded)
        assert gaps[-1] >= 0.6, "respawn delays %s do not grow toward 800 ms" % (
            ["%.3f" % g for g in gaps])
        assert gaps[-1] > gaps[0] * 3, "respawn delays %s do not double" % (
            ["%.3f" % g for g in gaps])
        status, h = healthz_on(conn)
        assert status == 200 and h["status"] == "ok", h
        assert [w for w in h["workers"] if w["slot"] == 0][0]["restarts"] == 4
        print("respawn delays: %s" % ["%.3f" % g for g in gaps])
    finally:
        conn.close()


# ----------------------------------------------------------------- reload

class KeepAliveClients:
    """N threads, each with one persistent connection doing GET path in a
    loop; reconnects only after a response with `Connection: close`. Any
    exception or non-200 is recorded as a failure."""

    def __init__(self, host, port, n=4, path="/livez"):
        self.host, self.port, self.path = host, port, path
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.failures = []
        self.ok = 0
        self.reconnects = 0
        self.t0 = time.monotonic()
        self.threads = [threading.Thread(target=self.run, name="client%d" % i,
                                         daemon=True) for i in range(n)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def run(self):
        conn = None
        while not self.stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
            try:
                conn.request("GET", self.path)
                resp = conn.getresponse()
                body = resp.read()
                close = (resp.getheader("connection") or "").lower() == "close"
                if resp.status != 200:
                    self.fail("status %d %r" % (resp.status, body[:100]))
                else:
                    with self.lock:
                        self.ok += 1
                if close:
                    conn.close()
                    conn = None
                    with self.lock:
                        self.reconnects += 1
            except Exception as e:  # noqa: BLE001 - every error is a failure
                self.fail(repr(e))
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def fail(self, what):
        with self.lock:
            self.failures.append("%s at +%.3fs: %s" % (
                threading.current_thread().name, time.monotonic() - self.t0, what))

    def finish(self, timeout=10):
        self.stop.set()
        for t in self.threads:
            t.join(timeout)
        alive = [t.name for t in self.threads if t.is_alive()]
        assert not alive, "client threads stuck: %s" % alive


@pytest.mark.timeout(60)
def test_reload_under_load_loses_no_request(fleetd):
    f = fleetd(workers=2)
    h0 = f.healthz()
    old_pids = {w["pid"] for w in h0["workers"]}
    gen0 = h0["generation"]

    clients = KeepAliveClients(f.host, f.port, n=4).start()
    try:
        time.sleep(1.0)
        before = clients.ok
        t_hup = time.monotonic()
        f.signal(signal.SIGHUP)
        f.wait_ready(timeout=10, generation_above=gen0)
        # keep the load on until the old generation is gone, and >= 3 s total
        stack.wait_until(lambda: not any(stack.pid_alive(p) for p in old_pids),
                         15, what="old workers %s exiting" % sorted(old_pids))
        rest = 3.0 - (time.monotonic() - t_hup)
        if rest > 0:
            time.sleep(rest)
        after = clients.ok
    finally:
        clients.finish()

    assert clients.failures == [], "%d failed request(s) across the reload:\n%s" % (
        len(clients.failures), "\n".join(clients.failures[:20]))
    assert before > 50, "client loop too slow before reload (%d requests)" % before
    assert after - before > 50, "few requests during reload (%d)" % (after - before)
    h = f.healthz()
    new_pids = {w["pid"] for w in h["workers"] if w.get("generation", h["generation"])
                == h["generation"]}
    assert len(new_pids) == 2
    assert not (new_pids & old_pids), "worker pids not all new: old %s new %s" % (
        old_pids, new_pids)
    assert h["generation"] > gen0
    assert f.metric("fleetd_reloads_total") == 1
    assert f.metric("fleetd_reloads_failed_total") == 0
    print("reload: %d requests ok, %d reconnects" % (clients.ok, clients.reconnects))


@pytest.mark.timeout(40)
def test_reload_with_broken_config_keeps_old_workers(fleetd):
    f = fleetd(workers=2)
    h0 = f.healthz()
    old_pids = sorted(w["pid"] for w in h0["workers"])
    good = f.config_path.read_text()
    f.write_config(text=good + "workers: \"lots\"\n" if "workers:" not in good
                   else re.sub(r"(?m)^workers:.*$", 'workers: "lots"', good))
    f.signal(signal.SIGHUP)
    pat = re.compile(re.escape(str(f.config_path)) + r":\d+:")
    stack.wait_until(lambda: pat.search(f.log_text()), 5,
                     what="log line naming %s:LINE:" % f.config_path)
    time.sleep(0.5)
    h = f.healthz()
    assert h["generation"] == h0["generation"], h
    assert sorted(w["pid"] for w in h["workers"]) == old_pids, h["workers"]
    assert all(w["state"] == "ready" for w in h["workers"]), h["workers"]
    assert f.alive()
    for _ in range(10):
        status, pid, _slot = served_by(f)
        assert status == 200 and pid in old_pids
    assert f.metric("fleetd_reloads_failed_total") == 1
    # fixed again, a reload goes through
    f.write_config(text=good)
    f.signal(signal.SIGHUP)
    f.wait_ready(10, generation_above=h0["generation"])
    new_pids = set(f.worker_pids())
    assert not (new_pids & set(old_pids)), (old_pids, new_pids)


# ---------------------------------------------------------------- signals

@pytest.mark.timeout(30)
@pytest.mark.parametrize("sig", [signal.SIGQUIT, signal.SIGTERM, signal.SIGINT],
                         ids=["QUIT", "TERM", "INT"])
def test_stop_signal_exits_zero(fleetd, sig):
    f = fleetd(workers=2)
    workers = f.worker_pids()
    f.signal(sig)
    rc = f.wait(10)
    assert rc == 0, "exit status %r after %s\n%s" % (rc, sig.name, stack.tail(f.log_text()))
    assert not f.pid_file.exists(), "pid file left after %s" % sig.name
    assert stack.wait_pids_gone(workers, 2) == [], "workers outlived the master"
    assert not stack.port_open(f.port), "port still accepting after exit"


@pytest.mark.timeout(30)
def test_quit_does_not_wait_for_idle_keepalive(fleetd):
    """An idle keep-alive client must not hold a graceful stop until
    shutdown_timeout: it is closed after http.drain_idle."""
    f = fleetd({"shutdown_timeout": "20s", "http": {"drain_idle": "500ms"}}, workers=1)
    conn = http.client.HTTPConnection(f.host, f.port, timeout=10)
    try:
        conn.request("GET", "/livez")
        r = conn.getresponse()
        assert r.status == 200 and r.read() == b"ok\n"
        t0 = time.monotonic()
        f.signal(signal.SIGQUIT)
        rc = f.wait(8)
        elapsed = time.monotonic() - t0
        assert rc == 0
        assert elapsed < 5, "graceful stop took %.1f s with one idle client" % elapsed
        conn.sock.settimeout(2)
        assert conn.sock.recv(1) == b"", "idle client not closed"
    finally:
        conn.close()


@pytest.mark.timeout(30)
def test_master_kill9_takes_workers_down(fleetd):
    f = fleetd(workers=2)
    workers = f.worker_pids()
    f.signal(signal.SIGKILL)
    assert f.wait(5) == -signal.SIGKILL
    t0 = time.monotonic()
    left = stack.wait_pids_gone(workers, 2)
    assert left == [], "workers %s still alive 2 s after the master was killed" % left
    print("workers gone %.3f s after master kill -9" % (time.monotonic() - t0))
    # a stale pid file (dead pid) does not prevent the next start
    assert f.pid_file.exists()
    f.start(timeout=10)
    assert f.healthz_status()[0] == 200


@pytest.mark.timeout(40)
def test_dash_s_reload_and_quit(fleetd):
    f = fleetd(workers=2)
    h0 = f.healthz()
    old = set(f.worker_pids())
    r = f.cli("-s", "reload")
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    f.wait_ready(10, generation_above=h0["generation"])
    assert not (set(f.worker_pids()) & old)
    r = f.cli("-s", "quit")
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert f.wait(10) == 0
    assert not f.pid_file.exists()
    # nothing to signal any more
    r = f.cli("-s", "reload")
    assert r.returncode != 0, "-s reload without a running master exited 0"
    assert r.stderr.strip(), "-s reload without a master printed no reason"


@pytest.mark.timeout(30)
def test_dash_s_stop(fleetd):
    f = fleetd(workers=1)
    r = f.cli("-s", "stop")
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert f.wait(10) == 0
    assert not f.pid_file.exists()


@pytest.mark.timeout(30)
def test_dash_s_reopen(fleetd):
    f = fleetd(workers=1)
    rotated = f.log_file.with_name("fleetd.log.1")
    os.rename(f.log_file, rotated)
    r = f.cli("-s", "reopen")
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    stack.wait_until(f.log_file.exists, 3, what="log file reopened after -s reopen")
    # and the running processes write into the new file
    f.signal(signal.SIGHUP)
    stack.wait_until(lambda: f.log_file.stat().st_size > 0, 5,
                     what="something logged into the reopened file")


@pytest.mark.timeout(30)
def test_daemonize(fleetd):
    t0 = time.monotonic()
    f = fleetd(workers=2, daemon=True)
    pid = f.read_pid_file()
    assert pid and stack.pid_alive(pid)
    h = f.healthz()
    assert h["master_pid"] == pid, (h["master_pid"], pid)
    ppid, pgrp, sid = stack.pid_stat(pid)
    assert ppid != os.getpid(), "-d master is still our child"
    assert sid != os.getsid(0), "-d master did not leave our session"
    assert time.monotonic() - t0 < 10
    workers = f.worker_pids()
    r = f.cli("-s", "quit")
    assert r.returncode == 0, (r.returncode, r.stderr)
    f.wait(10)
    assert not f.pid_file.exists()
    assert stack.wait_pids_gone(workers, 2) == []


# ------------------------------------------------------------------- HTTP

METRIC_NAMES = [
    "fleetd_info", "fleetd_uptime_seconds", "fleetd_workers_configured",
    "fleetd_worker_up", "fleetd_worker_restarts_total", "fleetd_loop_lag_seconds",
    "fleetd_connections", "fleetd_connections_accepted_total",
    "fleetd_connections_rejected_total", "fleetd_http_requests_total",
    "fleetd_reloads_total", "fleetd_reloads_failed_total",
]


@pytest.mark.timeout(30)
def test_metrics_prometheus_text(fleetd):
    f = fleetd(workers=2)
    for _ in range(5):
        f.get("/livez")
    status, hdrs, body = f.get("/metrics")
    assert status == 200
    ct = hdrs.get("content-type", "")
    assert ct.startswith("text/plain") and "version=0.0.4" in ct, ct
    text = body.decode()
    samples = stack.parse_prometheus(text)          # every line well-formed
    names = {n for n, _ in samples}
    missing = [n for n in METRIC_NAMES if n not in names]
    assert not missing, "missing metrics %s in:\n%s" % (missing, text)

    def get(name, **labels):
        want = frozenset((k, str(v)) for k, v in labels.items())
        vals = [v for (n, ls), v in samples.items() if n == name and want <= ls]
        assert vals, "no %s%s" % (name, labels)
        return vals[0]

    assert get("fleetd_info", node="it-node", version=binary_version(f)) == 1
    assert get("fleetd_workers_configured") == 2
    assert get("fleetd_uptime_seconds") >= 0
    for w in ("0", "1"):
        assert get("fleetd_worker_up", worker=w) == 1
        assert get("fleetd_worker_restarts_total", worker=w) == 0
        for q in ("0.5", "0.99", "1"):
            assert get("fleetd_loop_lag_seconds", worker=w, quantile=q) >= 0
        for kind in ("http", "ws"):
            assert get("fleetd_connections", worker=w, kind=kind) >= 0
        get("fleetd_connections_accepted_total", worker=w)
        get("fleetd_connections_rejected_total", worker=w)
    ok = sum(v for (n, ls), v in samples.items()
             if n == "fleetd_http_requests_total" and ("code", "200") in ls)
    assert ok >= 5, "fleetd_http_requests_total{code=200} = %r" % ok
    assert get("fleetd_reloads_total") == 0
    assert get("fleetd_reloads_failed_total") == 0
    # TYPE lines for the families
    for n in METRIC_NAMES:
        assert re.search(r"(?m)^# TYPE %s (counter|gauge|summary|untyped)$" % n, text), \
            "no # TYPE line for %s" % n


def loop_delay(f):
    """fleetd_loop_delay_seconds from /metrics: ({le: cumulative}, count, sum)."""
    samples = stack.parse_prometheus(f.metrics())
    le = {}
    for (n, ls), v in samples.items():
        if n == "fleetd_loop_delay_seconds_bucket":
            b = dict(ls)["le"]
            le[float("inf") if b == "+Inf" else float(b)] = v
    return (le, samples[("fleetd_loop_delay_seconds_count", frozenset())],
            samples[("fleetd_loop_delay_seconds_sum", frozenset())])


@pytest.mark.timeout(30)
def test_loop_delay_histogram_counts_every_tick_and_a_stall(fleetd):
    """The lag timer's ticks, counted for good: about 100 a second per
    worker, buckets cumulative, and a worker stopped for 300 ms shows up
    as one tick in the (0.25 s, 0.5 s] bucket (what an alert on
    'ticks later than X' sees)."""
    f = fleetd(workers=2)
    text = f.metrics()
    assert re.search(r"(?m)^# TYPE fleetd_loop_delay_seconds histogram$", text), text
    le0, n0, s0 = loop_delay(f)
    time.sleep(2.0)
    le1, n1, s1 = loop_delay(f)
    assert 2 * 100 * 2.0 * 0.5 <= n1 - n0 <= 2 * 100 * 2.0 * 1.05, (n0, n1)
    bounds = sorted(le1)
    assert bounds[-1] == float("inf") and le1[bounds[-1]] == n1
    assert 0.005 in bounds and 0.25 in bounds and 0.5 in bounds, bounds
    assert all(le1[a] <= le1[b] for a, b in zip(bounds, bounds[1:])), le1
    assert s1 >= s0 >= 0
    late0 = le1[0.5] - le1[0.25]
    pid = f.worker_pids()[1]
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(0.3)
    finally:
        os.kill(pid, signal.SIGCONT)
    time.sleep(0.3)
    le2, n2, s2 = loop_delay(f)
    assert le2[0.5] - le2[0.25] >= late0 + 1, (le1, le2)
    assert s2 - s1 >= 0.25, (s1, s2)
    assert f.get("/livez")[0] == 200


@pytest.mark.timeout(20)
def test_unknown_path_is_404_json(fleetd):
    f = fleetd(workers=1)
    status, hdrs, body = f.get("/no/such/thing")
    assert status == 404
    assert hdrs.get("content-type", "").startswith("application/json"), hdrs
    err = json.loads(body)["error"]
    assert err["code"] == "not_found"
    assert isinstance(err["message"], str) and err["message"]


def raw_connect(f, timeout=5):
    s = socket.create_connection((f.host, f.port), timeout=timeout)
    return s, s.makefile("rb")


@pytest.mark.timeout(20)
def test_pipelined_requests_answered_in_order(fleetd):
    f = fleetd(workers=1)
    s, rf = raw_connect(f)
    try:
        host = "Host: 127.0.0.1\r\n"
        s.sendall(("GET /livez HTTP/1.1\r\n" + host + "\r\n"
                   "GET /nope HTTP/1.1\r\n" + host + "\r\n"
                   "GET /healthz HTTP/1.1\r\n" + host + "\r\n"
                   "GET /livez HTTP/1.1\r\n" + host + "Connection: close\r\n\r\n").encode())
        got = [stack.read_http_response(rf) for _ in range(4)]
        assert [r.status for r in got] == [200, 404, 200, 200], got
        assert got[0].body == b"ok\n"
        assert got[1].json()["error"]["code"] == "not_found"
        assert "workers" in got[2].json()
        assert got[3].headers.get("connection", "").lower() == "close", got[3].headers
        assert rf.read(1) == b"", "connection not closed after Connection: close"
    finally:
        rf.close()
        s.close()


@pytest.mark.timeout(20)
def test_keepalive_reuses_connection(fleetd):
    f = fleetd(workers=1)
    conn = http.client.HTTPConnection(f.host, f.port, timeout=5)
    try:
        conn.connect()
        sock = conn.sock
        for _ in range(20):
            conn.request("GET", "/livez")
            r = conn.getresponse()
            assert r.status == 200 and r.read() == b"ok\n"
            assert conn.sock is sock, "server closed a keep-alive connection"
    finally:
        conn.close()


@pytest.mark.timeout(20)
def test_overlong_header_431_and_server_stays_up(fleetd):
    f = fleetd({"http": {"max_header_bytes": "4k"}}, workers=1)
    s, rf = raw_connect(f)
    try:
        s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8192 + b"\r\n\r\n")
        r = stack.read_http_response(rf)
        assert r is not None and r.status == 431, r
    finally:
        rf.close()
        s.close()
    assert f.get("/livez")[0] == 200
    assert f.healthz()["workers"][0]["restarts"] == 0


@pytest.mark.timeout(20)
def test_too_big_body_413_and_server_stays_up(fleetd):
    f = fleetd({"http": {"max_body_bytes": "1k"}}, workers=1)
    # announced by Content-Length: refused before the body is sent
    s, rf = raw_connect(f)
    try:
        s.sendall(b"POST /livez HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100000\r\n\r\n")
        r = stack.read_http_response(rf)
        assert r is not None and r.status == 413, r
    finally:
        rf.close()
        s.close()
    # chunked, growing past the limit
    s, rf = raw_connect(f)
    try:
        req = b"POST /livez HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        for _ in range(4):
            req += b"200\r\n" + b"x" * 512 + b"\r\n"
        req += b"0\r\n\r\n"
        s.sendall(req)
        r = stack.read_http_response(rf)
        assert r is not None and r.status == 413, r
    finally:
        rf.close()
        s.close()
    assert f.get("/livez")[0] == 200
    assert f.healthz()["workers"][0]["restarts"] == 0


@pytest.mark.timeout(20)
@pytest.mark.parametrize("sent", [b"", b"GET /livez HTTP/1.1\r\nHost: x\r\n"],
                         ids=["silent", "partial_header"])
def test_header_timeout_closes_connection(fleetd, sent):
    f = fleetd({"http": {"header_timeout": "1s"}}, workers=1)
    s = socket.create_connection((f.host, f.port), timeout=5)
    try:
        t0 = time.monotonic()
        if sent:
            s.sendall(sent)
        data = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
        except socket.timeout:
            pytest.fail("connection still open 5 s after connect (header_timeout 1s)")
        elapsed = time.monotonic() - t0
    finally:
        s.close()
    assert 0.8 <= elapsed <= 3.0, "closed after %.2f s, header_timeout is 1 s" % elapsed
    assert data == b"" or data.startswith(b"HTTP/1.1 408"), data[:200]
    assert f.get("/livez")[0] == 200


@pytest.mark.timeout(20)
def test_idle_timeout_closes_keepalive(fleetd):
    f = fleetd({"http": {"idle_timeout": "1s"}}, workers=1)
    conn = http.client.HTTPConnection(f.host, f.port, timeout=5)
    try:
        conn.request("GET", "/livez")
        r = conn.getresponse()
        assert r.status == 200 and r.read() == b"ok\n"
        t0 = time.monotonic()
        try:
            data = conn.sock.recv(1)
        except ConnectionResetError:
            data = b""
        elapsed = time.monotonic() - t0
        assert data == b"", data
        assert 0.8 <= elapsed <= 3.0, "idle connection closed after %.2f s" % elapsed
    finally:
        conn.close()


@pytest.mark.timeout(20)
def test_max_connections_rejects_and_recovers(fleetd):
    f = fleetd({"http": {"max_connections": 2}}, workers=1)
    held = []
    try:
        for _ in range(2):
            c = http.client.HTTPConnection(f.host, f.port, timeout=5)
            c.request("GET", "/livez")
            r = c.getresponse()
            assert r.status == 200 and r.read() == b"ok\n"
            held.append(c)
        s = socket.create_connection((f.host, f.port), timeout=5)
        try:
            s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            rf = s.makefile("rb")
            try:
                r = stack.read_http_response(rf)
            except (ConnectionResetError, ValueError):
                r = None
            rf.close()
        finally:
            s.close()
        assert r is None or r.status == 503, "third connection over max_connections 2: %r" % r
    finally:
        for c in held:
            c.close()
    # room again once the held ones are gone
    stack.wait_until(lambda: f.get("/livez", timeout=2)[0] == 200, 3,
                     what="a connection accepted after closing the held ones")
    assert f.metric("fleetd_connections_rejected_total", worker="0") >= 1
