"""
/ws with real, widely used WebSocket clients (issue 9: "passes RFC 6455
sections 5-7 with real clients (python3-websockets, Node's ws from npm,
Chromium)"). The other ws tests speak the protocol through ws_util's own
frame writer; these check that fleetd interoperates with clients it did not
write: their handshakes (permessage-deflate offered and refused, Origin,
token in the query), their framing and masking, their fragmentation, their
automatic pong answers to fleetd's heartbeat pings, and their close
handshakes.

  Node   clients/node_client.js on `ws` 8 from npm, installed once per
         session into build/npm (NODE_PATH); node and npm come from
         scripts/deps.
  Chromium  clients/page.html served by a small HTTP server in this test;
         headless Chromium opens it, the page opens the WebSocket and POSTs
         what it saw back to that server. auth.ws_origins is checked with
         the page's real Origin.
  python3-websockets  the asyncio client's fragmented send (three text
         frames and an empty final continuation) with a ping between the
         fragments.

Every test asserts on what the client saw: telemetry published over MQTT
(ids, device, ts, values), replies, close codes.
"""

import asyncio
import fcntl
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import stack
from ingest_util import ingest, now_ms, uniq  # noqa: F401
from ws_util import (id_key, metric_sum, run_async, wait_ws_conns, ws_metrics_text,
                     ws_node, ws_url)  # noqa: F401

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENTS = os.path.join(HERE, "clients")
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
NPM_DIR = os.path.join(REPO, "build", "npm")
WS_NPM_SPEC = "ws@8"

N_SINGLE = 20          # single-point telemetry messages per test
BATCH = 3              # then one batch of this many points


# ------------------------------------------------------------ installing

def _apt_install(pkgs):
    """Install Debian packages when we can (root, apt-get, not disabled
    with FLEETD_IT_NO_APT); the result is checked by the caller."""
    if os.geteuid() != 0 or not shutil.which("apt-get") or \
            os.environ.get("FLEETD_IT_NO_APT"):
        return "not root or apt-get disabled"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends"] + list(pkgs)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True,
                       timeout=300)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True,
                           timeout=900)
    return "apt-get install %s: exit %d %s" % (" ".join(pkgs), r.returncode,
                                               r.stderr[-500:])


@pytest.fixture(scope="session")
def node_ws():
    """(node binary, NODE_PATH holding ws 8). Installs node/npm from
    Debian when they are missing (as scripts/deps does) and ws with npm
    into build/npm once; skips only when node cannot be had."""
    if not (shutil.which("node") and shutil.which("npm")):
        # as scripts/deps: Debian's npm only (a node from elsewhere stays;
        # NodeSource's nodejs bundles npm and conflicts with Debian's)
        why = _apt_install(["npm"] if shutil.which("node") else
                           ["nodejs", "npm"])
        if not (shutil.which("node") and shutil.which("npm")):
            pytest.skip("node/npm not installed and could not be installed "
                        "(%s); run scripts/deps" % why)
    node = shutil.which("node")
    mods = os.path.join(NPM_DIR, "node_modules")
    pkg = os.path.join(mods, "ws", "package.json")
    os.makedirs(NPM_DIR, exist_ok=True)
    with open(os.path.join(NPM_DIR, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)     # parallel pytest sessions
        if not _ws8_at(pkg):
            r = subprocess.run(
                ["npm", "install", "--prefix", NPM_DIR, "--no-audit",
                 "--no-fund", "--no-save", "--no-package-lock",
                 "--loglevel=error", WS_NPM_SPEC],
                capture_output=True, text=True, timeout=300)
            if r.returncode != 0 or not _ws8_at(pkg):
                pytest.fail("npm install %s into %s failed (exit %d): %s%s" % (
                    WS_NPM_SPEC, NPM_DIR, r.returncode, r.stdout[-1000:],
                    r.stderr[-2000:]), pytrace=False)
    return node, mods


def _ws8_at(pkg):
    try:
        with open(pkg) as fh:
            return json.load(fh)["version"].startswith("8.")
    except (OSError, ValueError, KeyError):
        return False


@pytest.fixture(scope="session")
def chromium():
    """The chromium binary; installs Debian's chromium when missing and
    possible, else skips (scripts/deps installs it)."""
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    why = _apt_install(["chromium"])
    if shutil.which("chromium"):
        return shutil.which("chromium")
    pytest.skip("chromium not installed and could not be installed (%s); "
                "run scripts/deps" % why)


# ------------------------------------------------------------ publishing

def publish_plan(ctx, dev, base_ts):
    """Publish N_SINGLE single messages and one batch of BATCH points to
    dev, each point with its own seq and ts; return {seq: (ts, values)}
    as a client must receive them."""
    want = {}
    for k in range(N_SINGLE):
        v = {"seq": k, "temp": 20.5 + k, "ok": k % 2 == 0,
             "note": "temp\u00e9rature \u2713 %d" % k}
        ctx.send(dev, dict(v, ts=base_ts + k))
        want[k] = (base_ts + k, v)
    batch = []
    for k in range(N_SINGLE, N_SINGLE + BATCH):
        v = {"seq": k, "temp": -1.25 * k}
        batch.append(dict(v, ts=base_ts + k))
        want[k] = (base_ts + k, v)
    ctx.send(dev, batch)
    return want


def check_received(telemetry, dev, want, who):
    """telemetry: the client's telemetry messages in arrival order. Each
    published point exactly once, on dev, with its ts and values; ids
    unique and increasing in arrival order (README: a client's last id is
    a complete watermark)."""
    got = {}
    for m in telemetry:
        assert m.get("device") == dev, "%s: telemetry of another device: %r" % (
            who, m)
        assert isinstance(m.get("id"), str) and m["id"], (who, m)
        assert not m.get("conflated"), "%s: conflated message %r" % (who, m)
        seq = m["values"].get("seq")
        assert seq not in got, "%s: seq %r received twice: %r and %r" % (
            who, seq, got.get(seq), m)
        got[seq] = m
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want), key=str)
    assert not missing and not extra, \
        "%s: missing seqs %r, unexpected %r; received %d: %s" % (
            who, missing, extra, len(telemetry), json.dumps(telemetry)[:1500])
    for seq, (ts, values) in want.items():
        m = got[seq]
        assert m["ts"] == ts, "%s: ts %r of seq %d, published %d" % (
            who, m["ts"], seq, ts)
        assert m["values"] == values, "%s: values %r of seq %d, published %r" % (
            who, m["values"], seq, values)
    ids = [m["id"] for m in telemetry]
    keys = []
    for i in ids:
        try:
            keys.append(id_key(i) if "-" in i else (int(i),))
        except ValueError:
            raise AssertionError("%s: telemetry id %r is not a number or "
                                 "MS-SEQ[:P]" % (who, i)) from None
    assert keys == sorted(keys) and len(set(keys)) == len(keys), \
        "%s: ids not increasing in arrival order: %r" % (who, ids)


# ------------------------------------------------------------ node

class NodeClient:
    """node_client.js as a child process; its stdout lines are JSON
    events, read by a thread into a queue."""

    def __init__(self, node_ws, cfg):
        node, mods = node_ws
        env = dict(os.environ, NODE_PATH=mods)
        self.cfg = cfg
        self.proc = subprocess.Popen(
            [node, os.path.join(CLIENTS, "node_client.js"), json.dumps(cfg)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=env, start_new_session=True)
        self.events = queue.Queue()
        self.stderr = b""
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                self.events.put({"event": "garbage", "line": line[:500]})
        self.events.put({"event": "eof"})

    def _read_err(self):
        self.stderr = self.proc.stderr.read()

    def expect(self, event, timeout):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                ev = self.events.get(timeout=max(0.01, left))
            except queue.Empty:
                ev = None
            if ev is not None and ev.get("event") == event:
                return ev
            if ev is None or ev.get("event") in ("eof", "result"):
                raise AssertionError(
                    "node client: no %r event within %.0f s (got %r)\n"
                    "stderr: %s" % (event, timeout, ev,
                                    self.stderr.decode("utf-8", "replace")[-2000:]))

    def finish(self, timeout=10):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("node client still running %.0f s after "
                                 "its result" % timeout) from None

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(5)


def run_node(node_ws, cfg, timeout=15):
    """Run a node client that needs no publishing; its result event."""
    c = NodeClient(node_ws, cfg)
    try:
        res = c.expect("result", timeout)
        rc = c.finish()
        assert rc == 0, "node client exited %r: %s" % (rc, c.stderr[-2000:])
        return res
    finally:
        c.kill()


@pytest.mark.timeout(45)
def test_node_ws_client(ws_node, node_ws):
    """Node's ws 8: handshake without extensions (ws offers
    permessage-deflate), a 30 KB subscribe (16-bit length, masked by ws),
    telemetry from both workers, the JSON ping, a protocol ping with a
    payload answered by a pong with that payload, fleetd's heartbeat pings
    answered by ws (the connection stays open over 3 intervals of silence;
    unanswered, fleetd closes it with 1001 after 2), and a clean close: the
    server's close frame carries the client's 1000."""
    ctx = ws_node(extra={"ws": {"ping_interval": "1s"}}, workers=2)
    f = ctx.f
    dev = ctx.dev("node")
    payload = "node-ping-" + uniq()
    cfg = {"url": ws_url(f), "mode": "main", "device": dev,
           "n": N_SINGLE + BATCH, "pad": 500, "idle_ms": 3000,
           "ping_payload": payload, "timeout_ms": 25000,
           "telemetry_ms": 15000}
    c = NodeClient(node_ws, cfg)
    try:
        ready = c.expect("ready", 10)
        sub = ready["subscribed"]
        assert sub.get("type") == "subscribed" and sub.get("devices") == [dev], sub
        assert sub.get("snapshot") == [], "no shadow yet, snapshot %r" % sub
        want = publish_plan(ctx, dev, now_ms() - 60000)
        res = c.expect("result", 25)
        rc = c.finish()
    finally:
        c.kill()
    who = "node ws %s (node %s)" % (res.get("ws_version"), res.get("node_version"))
    assert res["errors"] == [], "%s: errors %r, steps %r, other %r" % (
        who, res["errors"], res["steps"], res["other"])
    assert rc == 0, "%s: exit %r: %s" % (who, rc, c.stderr[-2000:])
    assert res["opened"] and res["upgrade_status"] == 101, res
    hdrs = res["upgrade_headers"]
    assert "sec-websocket-extensions" not in hdrs, \
        "%s offered permessage-deflate; fleetd must not accept it: %r" % (who, hdrs)
    assert "sec-websocket-protocol" not in hdrs, hdrs
    assert res["extensions"] == "" and res["protocol"] == "", res
    pad = res["padded"]
    assert pad["reply"] == "subscribed" and pad["devices"] == 500 and pad["same"], \
        "%s: 500-device subscribe of %d bytes answered %r" % (
            who, pad.get("sent_bytes", 0), pad)
    assert pad["sent_bytes"] > 20000, pad
    check_received(res["telemetry"], dev, want, who)
    assert res["json_pong"], res
    assert res["pong_payload"] == payload, \
        "%s: pong payload %r, pinged with %r" % (who, res["pong_payload"], payload)
    assert res["server_pings"] >= 2, \
        "%s: %d server pings with ping_interval 1s and 3 s of silence" % (
            who, res["server_pings"])
    assert res["close_code"] == 1000, \
        "%s: closed with 1000, the server's close frame said %r %r (steps %r)" % (
            who, res["close_code"], res["close_reason"], res["steps"])
    assert res["other"] == [], res["other"]
    wait_ws_conns(f, 0)
    assert metric_sum(f, "fleetd_ws_closes_total", code="1000") >= 1, \
        ws_metrics_text(f)


@pytest.mark.timeout(30)
def test_node_ws_origin_and_message_limit(fleetd, node_ws):
    """With auth.ws_origins set: ws without an Origin header (not a
    browser) connects, ws with an allowed Origin connects, ws with another
    Origin gets 403 forbidden_origin. A message over limits.ws_max_message
    sent by ws gets close 1009."""
    allowed = "http://dash.example:8080"
    f = fleetd({"auth": {"ws_origins": [allowed]},
                "limits": {"ws_max_message": "4k"}}, workers=1)
    base = {"url": ws_url(f), "mode": "toolarge", "timeout_ms": 8000}

    big = run_node(node_ws, dict(base, size=8000))
    assert big["opened"], big
    assert big["close_code"] == 1009, \
        "8000-byte message with ws_max_message 4k: close %r %r, errors %r" % (
            big["close_code"], big["close_reason"], big["errors"])

    ok = run_node(node_ws, dict(base, mode="main", device="origin-ok",
                                n=0, pad=0, origin=allowed,
                                ping_payload="p"))
    assert ok["opened"] and ok["errors"] == [], ok
    assert ok["subscribed"]["type"] == "subscribed", ok
    assert ok["close_code"] == 1000, ok

    bad = run_node(node_ws, dict(base, origin="http://evil.example"))
    assert not bad["opened"], bad
    ur = bad["unexpected_response"]
    assert ur and ur["status"] == 403, bad
    assert json.loads(ur["body"])["error"]["code"] == "forbidden_origin", ur
    assert metric_sum(f, "fleetd_ws_rejected_total", reason="origin") == 1, \
        ws_metrics_text(f)


def http_conns(f):
    return sum(w["connections"]["http"] for w in f.healthz()["workers"])


class ConnectionHeld(AssertionError):
    """The one failure the xfail below expects (any other is a failure)."""


@pytest.mark.timeout(30)
def test_refused_handshake_releases_its_connection(fleetd, node_ws):
    """ws refused for its Origin (403) and for its token (401): once the
    client has gone, fleetd's HTTP connection count is back where it was
    (the /healthz request itself is the one connection)."""
    f = fleetd({"auth": {"ws_origins": ["http://dash.example"]}}, workers=1)
    base = http_conns(f)
    bad_origin = run_node(node_ws, {"url": ws_url(f), "mode": "toolarge",
                                    "size": 10, "origin": "http://evil.example",
                                    "timeout_ms": 8000})
    assert (bad_origin["unexpected_response"] or {}).get("status") == 403, bad_origin
    bad_token = run_node(node_ws, {"url": ws_url(f, token="not-a-token"),
                                   "mode": "toolarge", "size": 10,
                                   "timeout_ms": 8000})
    assert (bad_token["unexpected_response"] or {}).get("status") == 401, bad_token
    last = {}

    def back():
        last["n"] = http_conns(f)
        return last["n"] <= base
    try:
        stack.wait_until(back, 10, interval=0.1, what="connections.http back")
    except TimeoutError:
        raise ConnectionHeld(
            "10 s after both refused clients exited, connections.http is %d "
            "(was %d)" % (last["n"], base)) from None


# ------------------------------------------------------------ chromium

class PageServer:
    """Serves clients/page.html on 127.0.0.1:port and records what pages
    POST to /event and /result."""

    def __init__(self, port=None):
        self.port = port or stack.free_port()
        self.origin = "http://127.0.0.1:%d" % self.port
        self.cond = threading.Condition()
        self.events = []
        self.results = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                path = urllib.parse.urlsplit(self.path).path
                if path != "/page.html":
                    self.send_error(404)
                    return
                with open(os.path.join(CLIENTS, "page.html"), "rb") as fh:
                    body = fh.read()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(n)
                try:
                    doc = json.loads(data)
                except ValueError:
                    doc = {"garbage": data[:500].decode("utf-8", "replace")}
                path = urllib.parse.urlsplit(self.path).path
                with owner.cond:
                    (owner.results if path == "/result" else owner.events).append(doc)
                    owner.cond.notify_all()
                self.send_response(204)
                self.end_headers()

            def do_HEAD(self):  # favicon probes and the like
                self.send_error(404)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       daemon=True, name="page-server")
        self.thread.start()

    def url(self, **params):
        return "%s/page.html?%s" % (self.origin, urllib.parse.urlencode(params))

    def wait(self, pred, timeout, what, browser=None, result_ends=False):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                hit = pred()
                if hit:
                    return hit
                if result_ends and self.results:
                    raise AssertionError(
                        "page on %s finished without a %s: events %r, "
                        "result %r" % (self.origin, what, self.events,
                                       self.results[0]))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        "page on %s: no %s within %.0f s; events %r%s" % (
                            self.origin, what, timeout, self.events,
                            "\n" + browser.diagnostics() if browser else ""))
                self.cond.wait(min(left, 0.2))

    def wait_event(self, stage, timeout, browser=None):
        return self.wait(lambda: next((e for e in self.events
                                       if e.get("stage") == stage), None),
                         timeout, "%r event" % stage, browser, result_ends=True)

    def wait_result(self, timeout, browser=None):
        return self.wait(lambda: self.results[0] if self.results else None,
                         timeout, "result", browser)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Browser:
    """Headless Chromium on one URL, in a session of its own; close()
    kills that process group."""

    def __init__(self, binary, url, work):
        os.makedirs(work, exist_ok=True)
        self.log_path = os.path.join(work, "chromium.log")
        self.url = url
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                [binary, "--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-dev-shm-usage", "--no-first-run",
                 "--no-default-browser-check", "--disable-extensions",
                 "--disable-background-networking", "--mute-audio",
                 "--user-data-dir=" + os.path.join(work, "profile"), url],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)
        finally:
            log.close()

    def diagnostics(self):
        rc = self.proc.poll()
        try:
            with open(self.log_path, "rb") as fh:
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            text = ""
        lines = [ln for ln in text.splitlines() if "dbus" not in ln.lower()]
        return "chromium %s on %s; log tail:\n%s" % (
            "running" if rc is None else "exited %r" % rc, self.url,
            "\n".join(lines[-30:]))

    def close(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture
def browsers(chromium, tmp_path):
    """Factory: browsers(url) -> Browser; every one is killed at teardown."""
    made = []

    def make(url):
        b = Browser(chromium, url, str(tmp_path / ("chromium%d" % len(made))))
        made.append(b)
        return b
    yield make
    for b in made:
        b.close()


@pytest.fixture
def page_servers():
    made = []

    def make():
        s = PageServer()
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


@pytest.mark.timeout(50)
def test_chromium_page(ws_node, browsers, page_servers):
    """A page in headless Chromium, its origin on auth.ws_origins, the
    token in the query: no extension negotiated (Chromium offers
    permessage-deflate), a 30 KB subscribe, every telemetry message
    published over MQTT with its id, ts and values (UTF-8 text included),
    the JSON ping after 3 s of silence with ping_interval 1s (Chromium
    answered fleetd's pings, or fleetd would have closed it with 1001), and a clean close with 1000."""
    page = page_servers()
    ctx = ws_node(extra={"auth": {"ws_origins": [page.origin]},
                         "ws": {"ping_interval": "1s"}}, workers=2)
    f = ctx.f
    dev = ctx.dev("chromium")
    b = browsers(page.url(ws=ws_url(f), device=dev, n=N_SINGLE + BATCH,
                          pad=500, idle_ms=3000, timeout_ms=30000))
    ev = page.wait_event("subscribed", 20, b)
    assert ev["reply"].get("type") == "subscribed" and \
        ev["reply"].get("devices") == [dev], ev
    want = publish_plan(ctx, dev, now_ms() - 60000)
    res = page.wait_result(20, b)
    who = "chromium page (%s)" % res.get("user_agent")
    assert res["errors"] == [] and not res["timed_out"], \
        "%s: errors %r, steps %r, other %r\n%s" % (
            who, res["errors"], res["steps"], res["other"], b.diagnostics())
    assert res["opened"] and not res["error_event"], res
    assert res["origin"] == page.origin, res
    assert res["extensions"] == "" and res["protocol"] == "", \
        "%s: extensions %r protocol %r negotiated" % (
            who, res["extensions"], res["protocol"])
    pad = res["padded"]
    assert pad["reply"] == "subscribed" and pad["devices"] == 500 and pad["same"], \
        "%s: 500-device subscribe answered %r" % (who, pad)
    assert res["subscribed"]["snapshot"] == [], res["subscribed"]
    check_received(res["telemetry"], dev, want, who)
    assert res["json_pong"], \
        "%s: no pong after the idle time (steps %r, close %r)" % (
            who, res["steps"], res["close"])
    assert res["close"]["code"] == 1000 and res["close"]["was_clean"], \
        "%s: close %r" % (who, res["close"])
    assert res["other"] == [], res["other"]
    assert metric_sum(f, "fleetd_ws_rejected_total") == 0, ws_metrics_text(f)
    wait_ws_conns(f, 0)


@pytest.mark.timeout(40)
def test_chromium_origin_allow_list(fleetd, browsers, page_servers):
    """auth.ws_origins with one page origin: the same page served from
    that origin connects, served from another port (another origin) it is
    refused: the browser reports an error and close 1006, fleetd counts one
    origin rejection and no other."""
    good, other = page_servers(), page_servers()
    f = fleetd({"auth": {"ws_origins": [good.origin]}}, workers=1)
    params = dict(ws=ws_url(f), device="origin-dev", n=0, timeout_ms=15000)
    b_good = browsers(good.url(**params))
    b_other = browsers(other.url(**params))
    r_good = good.wait_result(25, b_good)
    r_other = other.wait_result(25, b_other)

    assert r_good["origin"] == good.origin, r_good
    assert r_good["opened"] and not r_good["error_event"], \
        "allowed origin %s: %r\n%s" % (good.origin, r_good, b_good.diagnostics())
    assert r_good["subscribed"]["type"] == "subscribed", r_good
    assert r_good["json_pong"], r_good
    assert r_good["close"]["code"] == 1000 and r_good["close"]["was_clean"], r_good

    assert r_other["origin"] == other.origin, r_other
    assert not r_other["opened"], \
        "origin %s is not on auth.ws_origins %r but the page connected: %r" % (
            other.origin, [good.origin], r_other)
    assert r_other["error_event"] and r_other["close"]["code"] == 1006 and \
        not r_other["close"]["was_clean"], r_other
    assert metric_sum(f, "fleetd_ws_rejected_total", reason="origin") == 1, \
        ws_metrics_text(f)
    assert metric_sum(f, "fleetd_ws_rejected_total") == 1, ws_metrics_text(f)
    assert metric_sum(f, "fleetd_ws_accepted_total") == 1, ws_metrics_text(f)


# ------------------------------------------------------------ websockets

@pytest.mark.timeout(20)
def test_websockets_fragmented_messages_with_ping_inside(fleetd):
    """python3-websockets' fragmented send: each message goes as text
    frames with continuations and an empty final continuation. A ping with
    a payload is sent between fragments and its pong must come back
    before the message is finished; the reassembled messages are answered
    (subscribe -> subscribed, ping -> pong); a clean close echoes 1000."""
    import websockets
    f = fleetd(workers=1)
    dev = "frag-" + uniq()

    async def main():
        ws = await websockets.connect(ws_url(f), compression=None,
                                      ping_interval=None, open_timeout=10,
                                      close_timeout=3, max_size=None)
        seen = {}
        try:
            assert ws.response_headers.get("Sec-WebSocket-Extensions") is None
            pings = []

            async def fragments(parts, ping_after):
                for i, p in enumerate(parts):
                    yield p
                    if i == ping_after:
                        payload = ("mid-%d-" % len(pings)).encode() + os.urandom(4)
                        waiter = await ws.ping(payload)
                        # the server must answer a control frame that comes
                        # between the fragments of a message
                        await asyncio.wait_for(waiter, 5)
                        pings.append(payload)

            sub = json.dumps({"type": "subscribe", "devices": [dev]})
            await ws.send(fragments([sub[:5], sub[5:17], sub[17:]], 0))
            seen["subscribe"] = json.loads(await asyncio.wait_for(ws.recv(), 5))
            await ws.send(fragments(['{"type":', '"pi', 'ng"}'], 1))
            seen["ping"] = json.loads(await asyncio.wait_for(ws.recv(), 5))
            seen["pings"] = len(pings)
        finally:
            await asyncio.wait_for(ws.close(1000, "done"), 5)
        seen["close"] = (ws.close_code, ws.close_reason)
        return seen

    seen = run_async(main(), timeout=15)
    assert seen["subscribe"].get("type") == "subscribed" and \
        seen["subscribe"].get("devices") == [dev], seen
    assert seen["ping"] == {"type": "pong"}, seen
    assert seen["pings"] == 2, seen
    assert seen["close"][0] == 1000, seen
