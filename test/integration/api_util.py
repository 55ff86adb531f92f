"""
api_util.py - a client for fleetd's REST API in integration tests.

    api = ApiClient(fleetd_instance, token=ADMIN_TOKEN)
    status, body = api.get("/api/v1/devices")        # body: parsed JSON or None
    status, body = api.post("/api/v1/devices", {"id": "d1"})
    api.call("GET", path, token=None)                # no Authorization header
    api.raw("GET", path, headers=..., body=b"...")   # (status, headers, bytes)

Every call is one keep-alive-free HTTP/1.1 request with a deadline.
"""

import json

from conftest import ADMIN_TOKEN

DEFAULT = object()


class ApiClient:
    def __init__(self, f, token=ADMIN_TOKEN):
        self.f = f
        self.token = token

    def raw(self, method, path, body=None, headers=None, timeout=10.0):
        return self.f.request(method, path, body=body, headers=headers or {},
                              timeout=timeout)

    def call(self, method, path, body=None, token=DEFAULT, headers=None,
             timeout=10.0):
        h = dict(headers or {})
        tok = self.token if token is DEFAULT else token
        if tok is not None:
            h["Authorization"] = "Bearer " + tok
        data = None
        if body is not None:
            data = body if isinstance(body, (bytes, str)) else \
                json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        status, hdrs, raw = self.raw(method, path, data, h, timeout)
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = raw
        self.last_headers = hdrs
        return status, doc

    def get(self, path, **kw):
        return self.call("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.call("POST", path, body, **kw)

    def put(self, path, body=None, **kw):
        return self.call("PUT", path, body, **kw)

    def patch(self, path, body=None, **kw):
        return self.call("PATCH", path, body, **kw)

    def delete(self, path, **kw):
        return self.call("DELETE", path, **kw)


def error_code(doc):
    """The code of an {"error": {"code", "message"}} body, or None."""
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        e = doc["error"]
        if isinstance(e.get("code"), str) and isinstance(e.get("message"), str):
            return e["code"]
    return None
