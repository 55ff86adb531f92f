"""
The REST API's device registry, keys and auth (issue 8), through HTTP as a
client sees them, against a real fleetd, PostgreSQL and Redis.
"""

import json
import os
import socket
import threading
import time

import pytest

import stack
from api_util import ApiClient, error_code
from conftest import ADMIN_TOKEN
from ingest_util import ingest, now_ms, uniq  # noqa: F401


@pytest.fixture
def api(ingest):
    """(ApiClient with the admin token, the Ingest context) on a fresh
    fleetd with 2 workers."""
    ctx = ingest(prefix="ap%s:" % uniq())
    return ApiClient(ctx.f), ctx


def dev_id(ctx, name):
    return ctx.dev(name)


# ------------------------------------------------------------------ auth

def test_auth_missing_wrong_query_and_scopes(api):
    a, ctx = api
    path = "/api/v1/devices"
    s, doc = a.get(path, token=None)
    assert s == 401 and error_code(doc) == "unauthorized", doc
    assert a.last_headers.get("www-authenticate") == "Bearer"
    s, doc = a.get(path, token="wrong")
    assert s == 401 and error_code(doc) == "unauthorized", doc
    s, doc = a.get(path, headers={"Authorization": "Basic abc"}, token=None)
    assert s == 401, doc
    # a well-formed key that does not exist
    s, doc = a.get(path, token="flk_" + "0" * 16 + "_" + "1" * 64)
    assert s == 401, doc
    # the token in the query string is refused, even a valid one
    s, doc = a.get(path + "?token=" + ADMIN_TOKEN, token=None)
    assert s == 401 and "query string" in doc["error"]["message"], doc
    s, doc = a.get(path)
    assert s == 200, doc


def test_keys_scopes_and_deletion(api):
    a, ctx = api
    keys = {}
    for scope in ("read", "write", "admin"):
        s, k = a.post("/api/v1/keys", {"name": "k-" + scope,
                                       "scopes": [scope]})
        assert s == 201, k
        assert k["token"].startswith("flk_") and k["scopes"] == [scope]
        keys[scope] = k
    ro, rw, ad = (ApiClient(ctx.f, keys[s]["token"])
                  for s in ("read", "write", "admin"))
    d = dev_id(ctx, "scoped")
    assert ro.get("/api/v1/devices")[0] == 200
    s, doc = ro.post("/api/v1/devices", {"id": d})
    assert s == 403 and error_code(doc) == "forbidden", doc
    assert rw.post("/api/v1/devices", {"id": d})[0] == 201
    s, doc = rw.get("/api/v1/keys")
    assert s == 403, doc
    s, doc = ad.get("/api/v1/keys")
    assert s == 200
    listed = {k["id"] for k in doc["keys"]}
    assert {keys[s]["id"] for s in keys} <= listed
    assert all("token" not in k and "hash" not in k for k in doc["keys"])
    s, one = a.get("/api/v1/keys/" + keys["read"]["id"])
    assert s == 200 and one["name"] == "k-read" and "token" not in one
    # the secret is stored hashed
    h = ctx.query("SELECT hash FROM api_keys WHERE id = %s",
                  (keys["read"]["id"],))[0][0]
    assert keys["read"]["token"].split("_")[2] not in h and len(h) == 64
    # a deleted key stops working (the other worker within 5 s)
    assert a.delete("/api/v1/keys/" + keys["read"]["id"])[0] == 204
    stack.wait_until(lambda: all(ro.get("/api/v1/devices")[0] == 401
                                 for _ in range(4)), 8,
                     what="the deleted key refused by every worker")
    assert a.delete("/api/v1/keys/" + keys["read"]["id"])[0] == 404
    # bad bodies
    for body in ({"scopes": ["root"]}, {"name": 1, "scopes": ["read"]},
                 {"scopes": []}, {"scopes": "read"}, {"x": 1, "scopes": ["read"]},
                 [1]):
        s, doc = a.post("/api/v1/keys", body)
        assert s == 400 and error_code(doc) == "bad_request", (body, doc)


# --------------------------------------------------------------- devices

def test_device_crud(api):
    a, ctx = api
    d = dev_id(ctx, "pump")
    body = {"id": d, "name": "Pump 1", "type": "pump", "tags": ["site-a", "v2"],
            "metadata": {"fw": "1.2", "loc": {"lat": 52.1}}}
    s, doc = a.post("/api/v1/devices", body)
    assert s == 201, doc
    for k in ("id", "name", "type", "tags", "metadata"):
        assert doc[k] == body[k], (k, doc)
    assert doc["auto"] is False
    assert doc["created_at"].endswith("Z") and doc["created_at"] == \
        doc["updated_at"]
    s, doc2 = a.post("/api/v1/devices", {"id": d})
    assert s == 409 and error_code(doc2) == "exists", doc2
    s, got = a.get("/api/v1/devices/" + d)
    assert s == 200 and got == doc
    s, p = a.patch("/api/v1/devices/" + d,
                   {"name": "Pump one", "metadata": {"fw": None, "hw": 3}})
    assert s == 200, p
    assert p["name"] == "Pump one" and p["type"] == "pump"
    assert p["metadata"] == {"loc": {"lat": 52.1}, "hw": 3}
    assert p["updated_at"] >= p["created_at"]
    s, p = a.patch("/api/v1/devices/" + d, {"tags": []})
    assert s == 200 and p["tags"] == []
    assert a.patch("/api/v1/devices/nope-" + uniq(), {"name": "x"})[0] == 404
    assert a.get("/api/v1/devices/nope-" + uniq())[0] == 404
    assert a.delete("/api/v1/devices/" + d)[0] == 204
    assert a.get("/api/v1/devices/" + d)[0] == 404
    assert a.delete("/api/v1/devices/" + d)[0] == 404


@pytest.mark.parametrize("body", [
    {"name": "no id"},
    {"id": ""},
    {"id": "bad id"},
    {"id": "x" * 65},
    {"id": 5},
    {"id": "ok", "name": 5},
    {"id": "ok", "type": "t" * 65},
    {"id": "ok", "tags": "a"},
    {"id": "ok", "tags": ["bad tag"]},
    {"id": "ok", "tags": ["t%d" % i for i in range(33)]},
    {"id": "ok", "metadata": [1]},
    {"id": "ok", "unknown": 1},
    [{"id": "ok"}],
    "just a string",
])
def test_device_bad_bodies(api, body):
    a, ctx = api
    s, doc = a.post("/api/v1/devices", body)
    assert s == 400 and error_code(doc) in ("bad_request", "bad_json"), doc


def test_bad_input_costs_nothing_else(api):
    """Invalid JSON, a body over http.max_body_bytes (413), a wrong
    method (405 + Allow), an unknown route (404), a PATCH of the id: clear
    errors; the worker stays up and the next request is answered."""
    a, ctx = api
    s, doc = a.post("/api/v1/devices", b"{\"id\": ")
    assert s == 400 and error_code(doc) == "bad_json"
    s, doc = a.post("/api/v1/devices", b"\xff\xfe{}")
    assert s == 400
    # a body over http.max_body_bytes (1m): 413 as soon as the length is
    # known, then the connection closes
    with socket.create_connection((ctx.f.host, ctx.f.port), timeout=5) as sk:
        sk.sendall(b"POST /api/v1/devices HTTP/1.1\r\nHost: x\r\n"
                   b"Authorization: Bearer " + ADMIN_TOKEN.encode() +
                   b"\r\nContent-Type: application/json\r\n"
                   b"Content-Length: 2097152\r\n\r\n{\"id\": \"x\"")
        resp = stack.read_http_response(sk.makefile("rb"))
    assert resp.status == 413 and error_code(resp.json()) == \
        "payload_too_large", resp
    s, doc = a.call("PUT", "/api/v1/devices")
    assert s == 405 and error_code(doc) == "method_not_allowed"
    assert set(a.last_headers["allow"].split(", ")) == {"GET", "POST"}
    s, doc = a.call("POST", "/api/v1/devices/x")
    assert s == 405 and "PATCH" in a.last_headers["allow"]
    for path in ("/api/v1/nothing", "/api/v1/devices/a/b/c/d", "/api/v1/",
                 "/api/v1/devices/bad%20id", "/api/v1/devices/"):
        s, doc = a.get(path)
        assert s == 404 and error_code(doc) == "not_found", (path, doc)
    d = dev_id(ctx, "keepid")
    assert a.post("/api/v1/devices", {"id": d})[0] == 201
    s, doc = a.patch("/api/v1/devices/" + d, {"id": "other"})
    assert s == 400
    assert a.get("/api/v1/devices/" + d)[0] == 200
    assert ctx.f.healthz_status()[0] == 200


def test_list_filters_and_cursor_stable_under_inserts(api):
    a, ctx = api
    tag = "t" + uniq()
    ids = [dev_id(ctx, "l%03d" % i) for i in range(25)]
    for i, d in enumerate(ids):
        s, _ = a.post("/api/v1/devices", {
            "id": d, "name": ("Alpha %d" if i % 2 else "Beta %d") % i,
            "type": "meter" if i % 3 else "valve", "tags": [tag]})
        assert s == 201
    # pages of 7 while devices are being added in between
    seen, cursor, pages = [], None, 0
    extra = []
    while True:
        path = "/api/v1/devices?limit=7&tag=" + tag + \
            ("&cursor=" + cursor if cursor else "")
        s, doc = a.get(path)
        assert s == 200, doc
        seen += [d["id"] for d in doc["devices"]]
        pages += 1
        # insert one before and one after the cursor: the first never
        # shows, the second shows once
        if pages == 2:
            for name in ("l000a", "l999"):
                d = dev_id(ctx, name)
                assert a.post("/api/v1/devices", {"id": d,
                                                  "tags": [tag]})[0] == 201
                extra.append(d)
        cursor = doc["next"]
        if cursor is None:
            break
        assert pages < 20
    assert len(seen) == len(set(seen)), "a device listed twice"
    assert seen == sorted(seen)
    assert set(ids) <= set(seen)
    assert extra[1] in seen and extra[0] not in seen
    s, doc = a.get("/api/v1/devices?limit=1000&tag=" + tag + "&type=valve")
    assert {d["id"] for d in doc["devices"]} == \
        {d for i, d in enumerate(ids) if i % 3 == 0}
    s, doc = a.get("/api/v1/devices?limit=1000&tag=" + tag + "&q=Alpha%201")
    assert sorted(d["name"] for d in doc["devices"]) == \
        sorted("Alpha %d" % i for i in range(25) if i % 2 and
               str(i).startswith("1"))
    s, doc = a.get("/api/v1/devices?q=%25&tag=" + tag)
    assert doc["devices"] == []         # % is a character, not a wildcard
    for q in ("limit=0", "limit=1001", "limit=x", "cursor=zz", "online=maybe",
              "type=%ZZ"):
        s, doc = a.get("/api/v1/devices?" + q)
        assert s == 400, (q, doc)


def test_device_that_publishes_is_listed_online(api):
    """A device that publishes before it was registered still gets its
    rows and shadow, and the list shows it (auto), online."""
    a, ctx = api
    d = dev_id(ctx, "auto")
    ctx.send(d, {"temp": 1})
    ctx.wait_rows(d, 1)
    # online comes from the shadow's last_seen, written at another step
    # than the row: wait for it too
    ctx.wait_shadow(d, lambda h: "last_seen" in h, timeout=20)
    s, doc = a.get("/api/v1/devices/" + d)
    assert s == 200 and doc["auto"] is True, doc
    s, doc = a.get("/api/v1/devices?online=true&limit=1000")
    assert d in {x["id"] for x in doc["devices"]}
    got = [x for x in doc["devices"] if x["id"] == d][0]
    assert got["online"] is True and abs(got["last_seen"] - now_ms()) < 60000
    # registering it takes it over
    s, doc = a.post("/api/v1/devices", {"id": d, "name": "adopted"})
    assert s == 201 and doc["auto"] is False and doc["name"] == "adopted"


def test_delete_removes_shadow_keeps_or_purges_history(api):
    a, ctx = api
    keep, purge = dev_id(ctx, "keep"), dev_id(ctx, "purge")
    for d in (keep, purge):
        assert a.post("/api/v1/devices", {"id": d})[0] == 201
        ctx.send(d, {"ts": now_ms() - 1000, "v": 1})
        ctx.wait_rows(d, 1)
        ctx.wait_shadow(d, lambda h: "v:v" in h)
    assert a.delete("/api/v1/devices/" + keep)[0] == 204
    assert a.delete("/api/v1/devices/" + purge + "?purge=true")[0] == 204
    assert ctx.count_rows(keep) == 1 and ctx.count_rows(purge) == 0
    assert ctx.shadow(keep) == {} and ctx.shadow(purge) == {}
    assert a.delete("/api/v1/devices/x?purge=maybe")[0] == 400


def test_slow_query_does_not_delay_other_requests(ingest):
    """One worker. A PATCH waits 2 s on a row lock the test holds; while
    it is in flight, /healthz and GET of another device answer in
    milliseconds (the loop never waits on the database, and the pool has
    other connections)."""
    ctx = ingest(workers=1, prefix="sl%s:" % uniq())
    a = ApiClient(ctx.f)
    d1, d2 = dev_id(ctx, "locked"), dev_id(ctx, "free")
    for d in (d1, d2):
        assert a.post("/api/v1/devices", {"id": d})[0] == 201
    lock = ctx.pg_service.connect(autocommit=False)
    cur = lock.cursor()
    cur.execute("SELECT 1 FROM devices WHERE id = %s FOR UPDATE", (d1,))
    done = {}

    def slow():
        t = time.monotonic()
        done["patch"] = a.patch("/api/v1/devices/" + d1, {"name": "x"},
                                timeout=15)
        done["t"] = time.monotonic() - t

    th = threading.Thread(target=slow)
    th.start()
    # the PATCH is waiting on the lock (not merely started: the thread
    # or the request may be late on a loaded machine)
    stack.wait_until(lambda: ctx.query(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
        "'Lock' AND query ILIKE 'UPDATE%%devices%%'")[0][0] > 0, 15,
        interval=0.02, what="the PATCH waiting on the row lock")
    worst = 0.0
    t_end = time.monotonic() + 1.5
    n = 0
    while time.monotonic() < t_end:
        t = time.monotonic()
        assert a.get("/api/v1/devices/" + d2)[0] == 200
        assert ctx.f.healthz_status()[0] == 200
        worst = max(worst, time.monotonic() - t)
        n += 1
    assert "patch" not in done, "the PATCH did not wait"
    lock.rollback()
    lock.close()
    th.join(10)
    assert done["patch"][0] == 200 and done["t"] >= 1.5, done
    assert worst < 0.25, "a request took %.3f s while the query waited" % worst
    assert n > 10
