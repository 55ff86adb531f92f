"""
/ws handshake and authentication (issue 9, /tmp/ws-spec.md "Handshake"):
what a client sees when it opens a WebSocket - 101 with the right
Sec-WebSocket-Accept, or the documented HTTP error with its JSON body and
headers - and what /metrics counts for it.
"""

import base64
import json
import os
import time

import pytest

import stack
from api_util import ApiClient
from conftest import ADMIN_TOKEN
from ws_util import (HandshakeFailed, WsClient, aconnect, metric_sum,
                     run_async, try_handshake, wait_ws_conns, ws_url)


def b64(n):
    return base64.b64encode(os.urandom(n)).decode()


def assert_error(resp, status, code, what):
    assert resp.status == status, "%s: expected %d, got %r" % (what, status, resp)
    assert resp.headers.get("content-type", "").startswith("application/json"), \
        "%s: error body is not JSON: %r" % (what, resp)
    assert resp.error_code == code, "%s: expected error code %r, got %r" % (
        what, code, resp)


# ------------------------------------------------------------ success

@pytest.mark.timeout(30)
def test_handshake_with_query_token(fleetd):
    f = fleetd(workers=1)
    # a browser-like request: an extension and a subprotocol are offered,
    # an Origin is sent (no allow-list configured: any origin is fine)
    resp, c = try_handshake(f, headers={
        "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits",
        "Sec-WebSocket-Protocol": "chat",
        "Origin": "https://anything.example.com",
        "Connection": "keep-alive, Upgrade",       # Firefox sends this
        "Upgrade": "WebSocket"})                     # token is case-insensitive
    assert c is not None, "handshake failed: %r" % resp
    try:
        assert resp.status == 101
        assert resp.headers.get("upgrade", "").lower() == "websocket", resp
        assert "upgrade" in resp.headers.get("connection", "").lower(), resp
        assert "sec-websocket-extensions" not in resp.headers, \
            "an extension was negotiated: %r" % resp
        assert "sec-websocket-protocol" not in resp.headers, \
            "a subprotocol was selected: %r" % resp
        c.ping()
        assert wait_ws_conns(f, 1) and metric_sum(f, "fleetd_ws_accepted_total") >= 1
        assert metric_sum(f, "fleetd_connections", kind="ws") == 1
    finally:
        c.close()
    wait_ws_conns(f, 0)
    assert metric_sum(f, "fleetd_connections", kind="ws") == 0


@pytest.mark.timeout(30)
def test_handshake_with_bearer_header_and_client_libraries(fleetd):
    import websocket   # websocket-client (sync)
    f = fleetd(workers=1)
    # our raw client, Authorization header
    c = WsClient.connect(f, bearer=True)
    c.ping()
    c.close()
    # websocket-client, Authorization header
    w = websocket.create_connection(ws_url(f, token=None), timeout=5,
                                    header=["Authorization: Bearer " + ADMIN_TOKEN])
    try:
        w.send(json.dumps({"type": "ping"}))
        assert json.loads(w.recv()) == {"type": "pong"}
    finally:
        w.close()

    # websockets (asyncio), query token, offering permessage-deflate
    async def go():
        ws = await aconnect(f, compression="deflate")
        try:
            assert ws.extensions == [], ws.extensions
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await asyncio_wait(ws.recv(), 5)) == {"type": "pong"}
        finally:
            await ws.close()
    run_async(go(), 15)


def asyncio_wait(c, t):
    import asyncio
    return asyncio.wait_for(c, t)


@pytest.mark.timeout(40)
def test_api_keys_with_read_scope(fleetd):
    """Any API key can open /ws (every scope includes read); a deleted key
    and a made-up flk_ token cannot."""
    f = fleetd(workers=1)
    api = ApiClient(f)
    keys = {}
    for scope in ("read", "write", "admin"):
        s, k = api.post("/api/v1/keys", {"name": "ws-" + scope, "scopes": [scope]})
        assert s == 201, k
        keys[scope] = k
    for scope, k in keys.items():
        for bearer in (False, True):
            try:
                c = WsClient.connect(f, token=k["token"], bearer=bearer)
            except HandshakeFailed as e:
                raise AssertionError("%s key (%s) refused: %r" % (
                    scope, "header" if bearer else "query", e.resp)) from None
            c.ping()
            c.close()
    assert api.delete("/api/v1/keys/" + keys["read"]["id"])[0] == 204

    def refused():
        resp, c = try_handshake(f, token=keys["read"]["token"])
        if c:
            c.abort()
        return resp.status == 401 and resp
    resp = stack.wait_until(refused, 8, what="the deleted key refused")
    assert resp.error_code == "unauthorized", resp
    resp, c = try_handshake(f, token="flk_" + "0" * 12 + "_" + "1" * 32)
    assert c is None
    assert_error(resp, 401, "unauthorized", "made-up API key")


# ------------------------------------------------------------ errors

@pytest.mark.timeout(40)
def test_handshake_errors(fleetd):
    f = fleetd(workers=1)
    acc0 = metric_sum(f, "fleetd_ws_accepted_total")

    def hs(**kw):
        resp, c = try_handshake(f, **kw)
        if c is not None:
            c.abort()
            raise AssertionError("handshake %r was accepted: %r" % (kw, resp))
        return resp

    # method
    for method in ("POST", "PUT", "DELETE"):
        r = hs(method=method)
        assert r.status == 405, "%s /ws: %r" % (method, r)
        assert "GET" in r.headers.get("allow", ""), "405 without Allow: GET: %r" % r
        assert r.error_code is not None, "405 without a JSON error body: %r" % r
    # no Upgrade
    r = hs(headers={"Upgrade": None})
    assert_error(r, 426, "upgrade_required", "no Upgrade header")
    assert r.headers.get("upgrade", "").lower() == "websocket", r
    r = hs(headers={"Upgrade": "h2c"})
    assert_error(r, 426, "upgrade_required", "Upgrade: h2c")
    # a plain GET /ws, as a browser's address bar sends it
    s, h, body = f.request("GET", "/ws?token=" + ADMIN_TOKEN)
    assert s == 426, (s, h, body)
    # version
    for v in ("8", "14", None, "abc"):
        r = hs(headers={"Sec-WebSocket-Version": v})
        assert_error(r, 426, "unsupported_version", "Sec-WebSocket-Version %r" % v)
        assert r.headers.get("sec-websocket-version", "").strip() == "13", \
            "426 for version %r without Sec-WebSocket-Version: 13: %r" % (v, r)
    # Connection without upgrade, bad keys
    r = hs(headers={"Connection": "keep-alive"})
    assert_error(r, 400, "bad_request", "Connection: keep-alive")
    r = hs(headers={"Connection": None})
    assert_error(r, 400, "bad_request", "no Connection header")
    for key in (None, "", "abc", b64(15), b64(17), b64(16)[:-4] + "!!!=",
                "x" * 24):
        r = hs(headers={"Sec-WebSocket-Key": key})
        assert_error(r, 400, "bad_request", "Sec-WebSocket-Key %r" % key)
    # tokens
    r = hs(token=None)
    assert_error(r, 401, "unauthorized", "no token")
    r = hs(token="wrong-token")
    assert_error(r, 401, "unauthorized", "wrong token")
    r = hs(token=None, headers={"Authorization": "Bearer wrong-token"})
    assert_error(r, 401, "unauthorized", "wrong Bearer token")
    r = hs(token="")
    assert_error(r, 401, "unauthorized", "empty ?token=")
    r = hs(token=None, headers={"Authorization": "Basic " +
                                base64.b64encode(b"a:b").decode()})
    assert_error(r, 401, "unauthorized", "Basic authorization")
    # the order of the checks: method, Upgrade, version, key, before the token
    assert hs(method="POST", token=None).status == 405
    assert hs(token=None, headers={"Upgrade": None}).status == 426
    assert hs(token=None, headers={"Sec-WebSocket-Version": "8"}).status == 426
    assert hs(token=None, headers={"Sec-WebSocket-Key": "abc"}).status == 400

    # nothing was accepted; the rejections are counted
    time.sleep(0.2)
    assert metric_sum(f, "fleetd_ws_accepted_total") == acc0
    assert metric_sum(f, "fleetd_ws_rejected_total", reason="handshake") > 0, \
        metric_text(f)
    assert metric_sum(f, "fleetd_ws_rejected_total", reason="auth") >= 5, \
        metric_text(f)
    # and a good handshake still works
    c = WsClient.connect(f)
    c.ping()
    c.close()


def metric_text(f):
    return "\n".join(ln for ln in f.metrics().splitlines()
                     if "fleetd_ws" in ln and not ln.startswith("#"))


@pytest.mark.timeout(30)
def test_origin_allow_list(fleetd):
    allowed = ["https://dash.example.com", "http://localhost:3000"]
    f = fleetd({"auth": {"ws_origins": allowed}}, workers=1)
    for origin in ("https://evil.example.com", "https://dash.example.com.evil.io",
                   "http://dash.example.com", "null", "https://DASH.example.com:443x"):
        resp, c = try_handshake(f, headers={"Origin": origin})
        if c:
            c.abort()
        assert_error(resp, 403, "forbidden_origin", "Origin %r" % origin)
    # before the token is looked at
    resp, c = try_handshake(f, token=None, headers={"Origin": "https://evil.example.com"})
    assert resp.status == 403, resp
    for origin in allowed:
        resp, c = try_handshake(f, headers={"Origin": origin})
        assert c is not None and resp.status == 101, "Origin %r: %r" % (origin, resp)
        c.ping()
        c.close()
    # no Origin (not a browser): allowed
    c = WsClient.connect(f)
    c.ping()
    c.close()
    assert metric_sum(f, "fleetd_ws_rejected_total", reason="origin") >= 6, \
        metric_text(f)


@pytest.mark.timeout(30)
def test_max_connections_per_worker(fleetd):
    f = fleetd({"limits": {"ws_max_connections": 3}}, workers=1)
    clients = [WsClient.connect(f) for _ in range(3)]
    try:
        wait_ws_conns(f, 3)
        for _ in range(2):
            resp, c = try_handshake(f)
            if c:
                c.abort()
            assert_error(resp, 503, "busy", "a 4th connection with ws_max_connections 3")
        # the limit comes before the token check
        resp, c = try_handshake(f, token=None)
        assert resp.status == 503, resp
        assert metric_sum(f, "fleetd_ws_rejected_total", reason="limit") >= 3, \
            metric_text(f)
        # the 3 still work, and plain HTTP is not limited by it
        for c in clients:
            c.ping()
        assert f.healthz_status()[0] == 200
        # one closes: there is room for one more
        clients.pop().close()
        wait_ws_conns(f, 2)
        clients.append(WsClient.connect(f))
        clients[-1].ping()
        resp, c = try_handshake(f)
        if c:
            c.abort()
        assert resp.status == 503, resp
        # an abrupt disconnect (no close frame) frees its slot too
        clients.pop().abort()
        wait_ws_conns(f, 2)
        clients.append(WsClient.connect(f))
        clients[-1].ping()
    finally:
        for c in clients:
            c.close()
    wait_ws_conns(f, 0)
