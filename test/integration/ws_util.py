"""
ws_util.py - helpers for the WebSocket integration tests (issue 9, /ws).

What a user of /ws sees: the handshake's HTTP answer, the frames and JSON
messages the server sends, its close frames and codes, /healthz and
/metrics. Two kinds of client:

  WsClient   a synchronous RFC 6455 client on a plain socket, written here
             so tests can send anything (unmasked frames, RSV bits, bad
             lengths, half a frame) and read exactly what came back,
             frame by frame. It checks what a correct server must do:
             Sec-WebSocket-Accept, unmasked server frames, no RSV bits.
  AsyncSub   a client on python3-websockets 10.4 (asyncio) for the tests
             with hundreds of connections; it records every telemetry
             message with its arrival time.

Devices publish with paho (ingest_util.Publisher / RatePublisher below).
Every message a test publishes has a "seq" metric (and its own ts), so a
client's telemetry can be compared with what was published by
(device, seq) and by the id the server gave it (README, "Message ids and
resume").

Every wait has a deadline.
"""

import asyncio
import base64
import hashlib
import json
import os
import socket
import struct
import threading
import time

import pytest

import stack
from conftest import ADMIN_TOKEN
from ingest_util import now_ms, to_bytes, uniq

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA


def accept_for(key):
    """Sec-WebSocket-Accept the server must answer for key (str)."""
    return base64.b64encode(
        hashlib.sha1(key.encode("ascii") + GUID).digest()).decode("ascii")


def new_key():
    return base64.b64encode(os.urandom(16)).decode("ascii")


def ws_path(token=ADMIN_TOKEN, path="/ws"):
    return path if token is None else "%s?token=%s" % (path, token)


def ws_url(f, token=ADMIN_TOKEN, path="/ws"):
    return "ws://%s:%d%s" % (f.host, f.port, ws_path(token, path))


# ------------------------------------------------------------ framing

def frame(opcode, payload=b"", fin=True, rsv=0, mask=True, length=None,
          mask_key=None):
    """One client frame. rsv: the 3 RSV bits as a number 0..7 (4 = RSV1).
    length: the payload length to declare (default len(payload)); the
    payload is sent as given either way. mask=False sends it unmasked."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0xF)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return head + payload
    key = mask_key if mask_key is not None else os.urandom(4)
    return head + key + _xor(payload, key)


def _xor(data, key):
    if not data:
        return b""
    k = (key * (len(data) // 4 + 1))[:len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(
        len(data), "big")


def close_payload(code, reason=b""):
    if isinstance(reason, str):
        reason = reason.encode("utf-8")
    return struct.pack("!H", code) + reason


class Frame:
    def __init__(self, fin, rsv, opcode, payload):
        self.fin, self.rsv, self.opcode, self.payload = fin, rsv, opcode, payload

    @property
    def close_code(self):
        if self.opcode != OP_CLOSE:
            return None
        if len(self.payload) >= 2:
            return struct.unpack("!H", self.payload[:2])[0]
        return 1005

    @property
    def close_reason(self):
        return self.payload[2:].decode("utf-8", "replace")

    def __repr__(self):
        p = self.payload
        return "<frame fin=%d rsv=%d op=%#x len=%d %r%s>" % (
            self.fin, self.rsv, self.opcode, len(p), p[:120],
            "..." if len(p) > 120 else "")


class HandshakeFailed(AssertionError):
    def __init__(self, resp):
        self.resp = resp
        super().__init__("WebSocket handshake answered %d, not 101: %r" % (
            resp.status, resp))


class WsClosed(Exception):
    """The server sent a close frame (code, reason) or the connection ended
    (code None)."""

    def __init__(self, code, reason="", how="close frame"):
        self.code, self.reason, self.how = code, reason, how
        super().__init__("connection closed (%s): code %r reason %r" % (
            how, code, reason))


class Response:
    """An HTTP answer to a handshake: status, headers (lower-case names,
    repeated ones joined with ", "), body bytes."""

    def __init__(self, status, reason, headers, body):
        self.status, self.reason, self.headers, self.body = (
            status, reason, headers, body)

    def json(self):
        return json.loads(self.body)

    @property
    def error_code(self):
        try:
            e = self.json()["error"]
            assert isinstance(e["message"], str)
            return e["code"]
        except Exception:  # noqa: BLE001 - not the documented error body
            return None

    def __repr__(self):
        return "<HTTP %d %r %r>" % (self.status, self.headers, self.body[:300])


class Conn:
    """A socket with a read buffer and deadlines."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.eof = False

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("deadline passed")
        self.sock.settimeout(left)
        data = self.sock.recv(65536)
        if not data:
            self.eof = True
            raise EOFError("connection closed by the server")
        self.buf += data

    def read_exact(self, n, deadline):
        while len(self.buf) < n:
            self._fill(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_until(self, sep, deadline, limit=1 << 20):
        while sep not in self.buf:
            if len(self.buf) > limit:
                raise ValueError("no %r within %d bytes" % (sep, limit))
            self._fill(deadline)
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_to_eof(self, deadline):
        try:
            while True:
                self._fill(deadline)
        except EOFError:
            pass
        out, self.buf = self.buf, b""
        return out


def read_response(conn, deadline):
    head = conn.read_until(b"\r\n\r\n", deadline).decode("latin-1")
    lines = head.split("\r\n")
    parts = lines[0].split(" ", 2)
    assert parts[0].startswith("HTTP/1."), "bad status line %r" % lines[0]
    status = int(parts[1])
    reason = parts[2] if len(parts) > 2 else ""
    headers = {}
    for ln in lines[1:]:
        if not ln:
            continue
        name, _, value = ln.partition(":")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = headers[name] + ", " + value if name in headers else value
    body = b""
    if status != 101:
        if "content-length" in headers:
            body = conn.read_exact(int(headers["content-length"]), deadline)
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size = int(conn.read_until(b"\r\n", deadline).split(b";")[0], 16)
                if size == 0:
                    conn.read_until(b"\r\n", deadline)
                    break
                body += conn.read_exact(size, deadline)
                conn.read_until(b"\r\n", deadline)
        else:
            body = conn.read_to_eof(deadline)
    return Response(status, reason, headers, body)


def handshake_bytes(host, port, path, method="GET", headers=None, key=None):
    """The request text. headers: {name: value}; a value None leaves out
    that default header."""
    h = {"Host": "%s:%d" % (host, port), "Upgrade": "websocket",
         "Connection": "Upgrade", "Sec-WebSocket-Key": key or new_key(),
         "Sec-WebSocket-Version": "13"}
    for k, v in (headers or {}).items():
        for existing in list(h):
            if existing.lower() == k.lower():
                del h[existing]
        if v is not None:
            h[k] = v
    lines = ["%s %s HTTP/1.1" % (method, path)]
    lines += ["%s: %s" % (k, v) for k, v in h.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), h


def try_handshake(f, token=ADMIN_TOKEN, path="/ws", method="GET",
                  headers=None, timeout=5.0, rcvbuf=None):
    """Send a handshake; return (Response, WsClient or None). The client
    is returned (connected) only on 101; otherwise the socket is closed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    try:
        sock.connect((f.host, f.port))
        req, sent = handshake_bytes(f.host, f.port, ws_path(token, path),
                                    method, headers)
        sock.sendall(req)
        conn = Conn(sock)
        resp = read_response(conn, time.monotonic() + timeout)
    except BaseException:
        sock.close()
        raise
    if resp.status != 101:
        sock.close()
        return resp, None
    key = next((v for k, v in sent.items()
                if k.lower() == "sec-websocket-key"), None)
    c = WsClient(conn, resp)
    if key is not None:
        want = accept_for(key)
        if resp.headers.get("sec-websocket-accept") != want:
            c.abort()
            raise AssertionError("101 with Sec-WebSocket-Accept %r, expected %r: %r"
                                 % (resp.headers.get("sec-websocket-accept"),
                                    want, resp))
    return resp, c


class WsClient:
    """A synchronous client: WsClient.connect(f) or try_handshake().

    JSON messages the server sent are kept in .log, in arrival order, with
    their arrival time in .times; expect() and telemetry() look there."""

    def __init__(self, conn, resp):
        self.conn = conn
        self.resp = resp
        self.log = []              # every JSON message received
        self.times = []            # monotonic arrival time of each
        self._taken = set()        # indices of log handed out by expect()
        self.closed = None         # (code, reason) of a close frame
        self.pings = []            # payloads of server pings
        self.frames = []           # every frame received (with keep_frames)
        self.keep_frames = False
        self.auto_pong = True
        self._frag = None

    @classmethod
    def connect(cls, f, token=ADMIN_TOKEN, bearer=False, headers=None,
                timeout=5.0, rcvbuf=None):
        h = dict(headers or {})
        if bearer:
            h["Authorization"] = "Bearer " + token
        resp, c = try_handshake(f, None if bearer else token, headers=h,
                                timeout=timeout, rcvbuf=rcvbuf)
        if c is None:
            raise HandshakeFailed(resp)
        return c

    # -- sending
    def send_raw(self, data):
        self.conn.sock.sendall(data)

    def send_frame(self, opcode, payload=b"", **kw):
        self.send_raw(frame(opcode, payload, **kw))

    def send_text(self, text):
        self.send_frame(OP_TEXT, text)

    def send_json(self, obj):
        self.send_text(json.dumps(obj))

    # -- reading
    def recv_frame(self, timeout=5.0):
        """One frame, as sent (no reassembly, no automatic pong). Raises
        socket.timeout, or EOFError when the server closed the TCP
        connection."""
        deadline = time.monotonic() + timeout
        b0, b1 = self.conn.read_exact(2, deadline)
        fin, rsv, op = b0 >> 7, (b0 >> 4) & 7, b0 & 0xF
        assert not b1 & 0x80, "the server sent a masked frame (RFC 6455 5.1)"
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self.conn.read_exact(2, deadline))[0]
        elif n == 127:
            n = struct.unpack("!Q", self.conn.read_exact(8, deadline))[0]
        payload = self.conn.read_exact(n, deadline)
        fr = Frame(fin, rsv, op, payload)
        if self.keep_frames:
            self.frames.append(fr)
        assert rsv == 0, "server frame with RSV bits (no extension): %r" % fr
        return fr

    def pump(self, timeout=5.0):
        """Read until one whole JSON message arrives; append it to .log and
        return it. Answers pings (auto_pong), keeps pongs out. Raises
        WsClosed on a close frame (after answering it) or EOF,
        socket.timeout when nothing whole came in time."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                fr = self.recv_frame(max(0.0, deadline - time.monotonic()))
            except EOFError:
                if self.closed is None:
                    self.closed = (None, "")
                raise WsClosed(None, "", "TCP connection closed") from None
            if fr.opcode == OP_PING:
                self.pings.append(fr.payload)
                if self.auto_pong:
                    self._send_quiet(frame(OP_PONG, fr.payload))
                continue
            if fr.opcode == OP_PONG:
                continue
            if fr.opcode == OP_CLOSE:
                self.closed = (fr.close_code, fr.close_reason)
                self._send_quiet(frame(OP_CLOSE, fr.payload[:2]))
                raise WsClosed(fr.close_code, fr.close_reason)
            if fr.opcode == OP_CONT:
                assert self._frag is not None, "server continuation without start"
                self._frag += fr.payload
                if not fr.fin:
                    continue
                data, self._frag = self._frag, None
            else:
                assert fr.opcode == OP_TEXT, "server sent opcode %#x: %r" % (
                    fr.opcode, fr)
                assert self._frag is None, "server data frame inside a message"
                if not fr.fin:
                    self._frag = fr.payload
                    continue
                data = fr.payload
            msg = json.loads(data.decode("utf-8"))
            assert isinstance(msg, dict) and isinstance(msg.get("type"), str), \
                "server message is not an object with a type: %r" % data[:300]
            self.log.append(msg)
            self.times.append(time.monotonic())
            return msg

    def _send_quiet(self, data):
        try:
            self.send_raw(data)
        except OSError:
            pass

    def wait_for(self, pred, timeout=5.0, what="message"):
        """The first message in .log (not handed out yet) for which pred is
        true, reading more as needed. AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        i = 0
        while True:
            while i < len(self.log):
                if i not in self._taken and pred(self.log[i]):
                    self._taken.add(i)
                    return self.log[i]
                i += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no %s within %.1f s; received %s" % (
                    what, timeout, summarize(self.log)))
            try:
                self.pump(left)
            except socket.timeout:
                pass

    def expect(self, type_, timeout=5.0, **fields):
        def ok(m):
            return m.get("type") == type_ and all(
                m.get(k) == v for k, v in fields.items())
        return self.wait_for(ok, timeout, "%r message %s" % (type_, fields or ""))

    def request(self, obj, reply_type, timeout=5.0):
        """Send obj, return the next reply of reply_type (or an error)."""
        self.send_json(obj)
        return self.wait_for(lambda m: m.get("type") in (reply_type, "error"),
                             timeout, "%r or error reply to %r" % (reply_type, obj))

    def subscribe(self, devices, since=None, timeout=5.0):
        msg = {"type": "subscribe", "devices": devices}
        if since is not None:
            msg["since"] = since
        r = self.request(msg, "subscribed", timeout)
        assert r["type"] == "subscribed", "subscribe %r answered %r" % (msg, r)
        return r

    def unsubscribe(self, devices, timeout=5.0):
        r = self.request({"type": "unsubscribe", "devices": devices},
                         "unsubscribed", timeout)
        assert r["type"] == "unsubscribed", "unsubscribe %r answered %r" % (
            devices, r)
        return r

    def ping(self, timeout=5.0):
        r = self.request({"type": "ping"}, "pong", timeout)
        assert r["type"] == "pong", r
        return r

    def telemetry(self, device=None):
        return [m for m in self.log if m.get("type") == "telemetry" and
                (device is None or m.get("device") == device)]

    def wait_telemetry(self, n, device=None, timeout=10.0):
        """Read until at least n telemetry messages (of device) are in .log."""
        deadline = time.monotonic() + timeout
        while len(self.telemetry(device)) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    "%d telemetry messages%s within %.1f s, expected %d; got %s"
                    % (len(self.telemetry(device)),
                       " of %s" % device if device else "", timeout, n,
                       summarize(self.log)))
            try:
                self.pump(left)
            except socket.timeout:
                pass
        return self.telemetry(device)

    def drain(self, quiet=0.5, timeout=10.0):
        """Read until nothing came for `quiet` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.pump(min(quiet, max(0.01, deadline - time.monotonic())))
            except socket.timeout:
                return
        return

    def expect_close(self, timeout=5.0):
        """Read (and drop) frames until a close frame; then answer it and
        wait for the server to end the TCP connection. Returns (code,
        reason, eof) - eof True when the server closed the socket within
        timeout after its close frame."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                fr = self.recv_frame(max(0.0, deadline - time.monotonic()))
            except EOFError:
                raise WsClosed(None, "", "TCP connection closed without a "
                               "close frame") from None
            except socket.timeout:
                raise AssertionError("no close frame within %.1f s" %
                                     timeout) from None
            except ConnectionResetError:
                raise WsClosed(None, "", "connection reset without a close "
                               "frame") from None
            if fr.opcode == OP_CLOSE:
                break
        self.closed = (fr.close_code, fr.close_reason)
        self._send_quiet(frame(OP_CLOSE, fr.payload[:2]))
        eof = self.wait_eof(max(0.5, deadline - time.monotonic()))
        return fr.close_code, fr.close_reason, eof

    def wait_eof(self, timeout):
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.conn._fill(deadline)
                self.conn.buf = b""
        except EOFError:
            return True
        except ConnectionResetError:
            return True
        except (socket.timeout, OSError):
            return False

    def close(self, code=1000, timeout=3.0):
        """A clean close: send close, wait for the server's, then EOF."""
        try:
            self.send_frame(OP_CLOSE, close_payload(code))
            deadline = time.monotonic() + timeout
            while True:
                fr = self.recv_frame(max(0.0, deadline - time.monotonic()))
                if fr.opcode == OP_CLOSE:
                    self.closed = (fr.close_code, fr.close_reason)
                    break
            self.wait_eof(max(0.1, deadline - time.monotonic()))
        except (OSError, EOFError, AssertionError):
            pass
        finally:
            self.abort()

    def abort(self):
        try:
            self.conn.sock.close()
        except OSError:
            pass


def summarize(log, n=12):
    if len(log) <= n:
        return json.dumps(log)[:3000]
    return "%d messages, first %d: %s ..., last: %s" % (
        len(log), n, json.dumps(log[:n])[:2500], json.dumps(log[-2:])[:800])


# ------------------------------------------------------------ asyncio

def _websockets():
    import websockets
    return websockets


async def aconnect(f, token=ADMIN_TOKEN, **kw):
    ws = _websockets()
    opts = dict(ping_interval=None, compression=None, max_size=None,
                open_timeout=15, close_timeout=3, max_queue=None)
    opts.update(kw)
    return await ws.connect(ws_url(f, token), **opts)


class AsyncSub:
    """One asyncio client: a reader task files telemetry into .telemetry
    ((arrival monotonic, message)) and other messages into a queue that
    request() reads."""

    def __init__(self, name=""):
        self.name = name
        self.ws = None
        self.telemetry = []
        self.other = []
        self.replies = None
        self.close_code = None
        self.close_reason = None
        self.error = None
        self.task = None

    async def open(self, f, token=ADMIN_TOKEN, **kw):
        self.ws = await aconnect(f, token, **kw)
        self.replies = asyncio.Queue()
        self.task = asyncio.ensure_future(self._read())
        return self

    async def _read(self):
        websockets = _websockets()
        try:
            async for data in self.ws:
                t = time.monotonic()
                if isinstance(data, bytes):
                    self.error = "binary message from the server"
                    continue
                m = json.loads(data)
                if m.get("type") == "telemetry":
                    self.telemetry.append((t, m))
                else:
                    self.other.append(m)
                    self.replies.put_nowait(m)
        except websockets.ConnectionClosed:
            pass
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = repr(e)
        finally:
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason
            self.replies.put_nowait({"type": "_closed", "code": self.close_code})

    async def request(self, obj, want, timeout=10.0):
        await self.ws.send(json.dumps(obj))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("%s: no %r reply to %r within %.0f s" % (
                    self.name, want, obj, timeout))
            try:
                m = await asyncio.wait_for(self.replies.get(), left)
            except asyncio.TimeoutError:
                continue
            if m.get("type") in (want, "error", "_closed"):
                if m.get("type") != want:
                    raise AssertionError("%s: %r answered %r" % (self.name, obj, m))
                return m

    async def subscribe(self, devices, since=None, timeout=10.0):
        msg = {"type": "subscribe", "devices": devices}
        if since is not None:
            msg["since"] = since
        return await self.request(msg, "subscribed", timeout)

    async def unsubscribe(self, devices, timeout=10.0):
        return await self.request({"type": "unsubscribe", "devices": devices},
                                  "unsubscribed", timeout)

    def ids(self):
        return [m["id"] for _, m in self.telemetry]

    async def close(self):
        if self.ws is not None:
            try:
                await asyncio.wait_for(self.ws.close(), 5)
            except Exception:  # noqa: BLE001
                pass
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, 5)
            except Exception:  # noqa: BLE001
                pass


async def gather_limited(coros, limit=50):
    """Run coroutines with at most `limit` at once; results in order."""
    sem = asyncio.Semaphore(limit)

    async def one(c):
        async with sem:
            return await c
    return await asyncio.gather(*(one(c) for c in coros))


async def wait_async(pred, timeout, what, interval=0.05):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() >= deadline:
            raise AssertionError("%s not reached within %.1f s" % (what, timeout))
        await asyncio.sleep(interval)


# ------------------------------------------------------------ ids, seqs

def id_key(i):
    """Sort key of a telemetry id. README "Message ids and resume": a
    decimal string (Redis's clock in microseconds, made strictly
    increasing by {prefix}wsid), compared as a number. (The first spec,
    /tmp/ws-spec.md, had the stream entry id "MS-SEQ[:P]"; that form is
    still understood here.)"""
    if i.isdigit():
        return (int(i), 0, 0)
    base, _, p = i.partition(":")
    ms, _, seq = base.partition("-")
    return (int(ms), int(seq), int(p or 0))


def check_id(i):
    return isinstance(i, str) and i.isdigit() and len(i) <= 20


def increasing(ids):
    """The first place where ids (in receive order) do not strictly
    increase, as (index, previous, this), or None."""
    for n in range(1, len(ids)):
        if id_key(ids[n]) <= id_key(ids[n - 1]):
            return (n, ids[n - 1], ids[n])
    return None


# ------------------------------------------------------------ publishing

class RatePublisher:
    """Publishes from a thread, QoS 1, at `rate` per second, message k
    going to devices[k % n] with payload make(k) (default {"ts": base+k,
    "seq": k}). Records the monotonic time each was handed to paho (.t_pub)
    and which got their PUBACK. Stops after `count` messages, or stop()."""

    def __init__(self, mq, devices, rate=200.0, count=None, make=None,
                 base_ts=None):
        import paho.mqtt.client as mqtt
        self.devices = list(devices)
        self.rate = float(rate)
        self.count = count
        self.base_ts = base_ts if base_ts is not None else now_ms() - 600000
        self.make = make or (lambda k: {"ts": self.base_ts + k, "seq": k})
        self.lock = threading.Lock()
        self.sent = {}           # seq -> (device, t_pub, mid)
        self.mids = {}           # mid -> seq
        self.acked = set()       # seqs
        self._early = set()      # mids acknowledged before they were recorded
        self.errors = []
        self._stop = threading.Event()
        self.done = threading.Event()
        self.connected = threading.Event()
        self.client = mqtt.Client(client_id="it-wspub-" + uniq(),
                                  clean_session=True)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = lambda c, u, fl, rc: rc == 0 and self.connected.set()
        self.client.on_publish = self._on_publish
        self.client.connect(mq.host, mq.port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(10):
            self.client.loop_stop()
            raise AssertionError("publisher: no CONNACK within 10 s")
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name="ws-ratepub")

    def device(self, k):
        return self.devices[k % len(self.devices)]

    def _on_publish(self, c, u, mid):
        with self.lock:
            k = self.mids.get(mid)
            if k is not None:
                self.acked.add(k)
            else:
                self._early.add(mid)

    def start(self):
        self.thread.start()
        return self

    def _run(self):
        period = 1.0 / self.rate
        nxt = time.monotonic()
        k = 0
        try:
            while not self._stop.is_set() and (self.count is None or k < self.count):
                if k >= 60000:
                    self.errors.append("stopped at 60000 (16-bit message ids)")
                    break
                dev = self.device(k)
                data = to_bytes(self.make(k))
                # not under self.lock: paho's network thread holds its own
                # lock while it calls _on_publish, which takes self.lock
                t = time.monotonic()
                info = self.client.publish("devices/%s/telemetry" % dev,
                                           data, qos=1)
                with self.lock:
                    self.sent[k] = (dev, t, info.mid)
                    self.mids[info.mid] = k
                    if info.mid in self._early:      # PUBACK came first
                        self._early.discard(info.mid)
                        self.acked.add(k)
                k += 1
                nxt += period
                d = nxt - time.monotonic()
                if d > 0:
                    self._stop.wait(d)
                elif d < -1.0:
                    nxt = time.monotonic()
        except Exception as e:  # noqa: BLE001
            self.errors.append(repr(e))
        finally:
            self.done.set()

    def n_sent(self):
        with self.lock:
            return len(self.sent)

    def wait_sent(self, n, timeout=20.0):
        stack.wait_until(lambda: self.n_sent() >= n, timeout,
                         what="%d messages published" % n)

    def wait_done(self, timeout=60.0):
        if not self.done.wait(timeout):
            raise AssertionError("publisher not done within %.0f s" % timeout)

    def wait_acked(self, timeout=20.0):
        """Wait until every message handed to paho is acknowledged."""
        def ok():
            with self.lock:
                return len(self.acked) == len(self.sent)
        try:
            stack.wait_until(ok, timeout, what="every publish acknowledged")
        except TimeoutError:
            with self.lock:
                raise AssertionError("%d of %d publishes acknowledged" % (
                    len(self.acked), len(self.sent))) from None

    def stop(self, drain=10.0):
        """Stop publishing, wait up to drain s for the PUBACKs (raises if
        some are missing), disconnect. A second call does nothing."""
        if getattr(self, "_stopped", False):
            return
        self._stopped = True
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(10)
        try:
            self.wait_acked(drain)
        finally:
            self.client.disconnect()
            self.client.loop_stop()

    def by_device(self, acked_only=True):
        """{device: sorted [seq]}"""
        out = {d: [] for d in self.devices}
        with self.lock:
            for k, (dev, t, mid) in self.sent.items():
                if not acked_only or k in self.acked:
                    out[dev].append(k)
        for d in out:
            out[d].sort()
        return out


def publish_seqs(pub, ctx_dev_seq, base_ts):
    """Publish each (device, seq) with ingest_util.Publisher (PUBACK each):
    payload {"ts": base_ts + seq, "seq": seq}."""
    for dev, seq in ctx_dev_seq:
        pub.send("devices/%s/telemetry" % dev, {"ts": base_ts + seq, "seq": seq})


def check_telemetry_msg(m, base_ts=None):
    """Shape of one telemetry message (spec "Server -> client")."""
    assert m.get("type") == "telemetry", m
    assert isinstance(m.get("id"), str) and check_id(m["id"]), \
        "telemetry id %r is not a decimal string" % (m.get("id"),)
    assert isinstance(m.get("device"), str), m
    assert isinstance(m.get("ts"), int), m
    assert isinstance(m.get("values"), dict), m
    if base_ts is not None and "seq" in m["values"] and not m.get("conflated"):
        assert m["ts"] == base_ts + int(m["values"]["seq"]), \
            "ts %r of %r is not the published ts" % (m["ts"], m)


def seq_of(m):
    v = m["values"].get("seq")
    assert isinstance(v, (int, float)) and not isinstance(v, bool), m
    return int(v)


# ------------------------------------------------------------ the node

def metric_sum(f, name, **labels):
    """Sum of the samples of name whose labels include labels (0 when
    there is none)."""
    samples = stack.parse_prometheus(f.metrics())
    want = {(k, str(v)) for k, v in labels.items()}
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def metric_present(f, name):
    samples = stack.parse_prometheus(f.metrics())
    return any(n == name for (n, _) in samples)


def ws_metrics_text(f):
    try:
        return "\n".join(ln for ln in f.metrics().splitlines()
                         if ("fleetd_ws" in ln or 'kind="ws"' in ln)
                         and not ln.startswith("#"))
    except Exception as e:  # noqa: BLE001
        return "(no /metrics: %r)" % e


def ws_conns(f):
    """{worker pid: connections.ws} of the current generation."""
    h = f.healthz()
    gen = h.get("generation")
    return {w["pid"]: w["connections"]["ws"] for w in h["workers"]
            if w.get("generation", gen) == gen}


def wait_ws_conns(f, total, timeout=10.0):
    last = {}

    def ok():
        last["c"] = ws_conns(f)
        return sum(last["c"].values()) == total
    try:
        stack.wait_until(ok, timeout, interval=0.1,
                         what="connections.ws total %d" % total)
    except TimeoutError:
        raise AssertionError("connections.ws per worker %r, expected %d in total "
                             "within %.0f s" % (last.get("c"), total, timeout)) from None
    return last["c"]


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as fh:
        for ln in fh:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    return 0


def assert_node_ok(f, pids=None, what=""):
    """/healthz 200, every worker ready, and (when given) the same worker
    pids as before (no worker crashed and was respawned)."""
    status, h = f.healthz_status()
    assert status == 200, "%s/healthz %d: %r" % (what, status, h)
    now = f.worker_pids()
    if pids is not None:
        assert now == pids, "%sworker pids changed %r -> %r (a worker died)\n%s" % (
            what, pids, now, stack.tail(f.log_text(), 40))
    restarts = [w.get("restarts") for w in h["workers"]]
    assert not any(restarts), "%sworker restarts %r" % (what, restarts)


# ------------------------------------------------------------ fixture

@pytest.fixture
def ws_node(ingest):
    """Factory: ws_node(extra=None, workers=2, wait=True) -> Ingest with a
    redis.prefix of its own (its stream, shadows and fan-out channels
    are this test's alone), waiting until a canary message is stored, so
    MQTT shared subscriptions exist before the test publishes."""
    def make(extra=None, workers=2, wait=True, prefix=None):
        return ingest(extra=extra, prefix=prefix or "ws%s:" % uniq(),
                      workers=workers, wait=wait)
    return make


def run_async(coro, timeout=None):
    """Run a coroutine to completion on a fresh event loop."""
    loop = asyncio.new_event_loop()
    try:
        if timeout is not None:
            coro = asyncio.wait_for(coro, timeout)
        return loop.run_until_complete(coro)
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending,
                                                       return_exceptions=True))
        finally:
            loop.close()
