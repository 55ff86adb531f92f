"""
RFC 6455 framing at /ws (issue 9, /tmp/ws-spec.md "Limits, slow clients,
closes"): after a good handshake, a client that breaks the protocol gets a
close frame with the right code and its TCP connection ends; the worker
stays up (same pid, /healthz 200) and serves other clients. Also the
frames a correct client may send (fragments, control frames between
fragments, pings with a payload, a clean close) and the JSON-level errors,
which keep the connection open.
"""

import json
import socket
import struct
import time

import pytest

from ws_util import (OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT,
                     WsClient, assert_node_ok, close_payload, frame,
                     metric_sum, wait_ws_conns, ws_metrics_text)

MAX_MESSAGE = 1024      # limits.ws_max_message in these tests

PING = json.dumps({"type": "ping"}).encode()


def bad(name, data, code):
    return pytest.param(data, code, id=name)


def _fragmented_ping():
    return frame(OP_PING, b"ab", fin=False)


BAD_FRAMES = [
    bad("unmasked", frame(OP_TEXT, PING, mask=False), 1002),
    bad("rsv1", frame(OP_TEXT, PING, rsv=4), 1002),
    bad("rsv2", frame(OP_TEXT, PING, rsv=2), 1002),
    bad("rsv3-on-ping", frame(OP_PING, b"x", rsv=1), 1002),
    bad("opcode3", frame(0x3, PING), 1002),
    bad("opcode0xB", frame(0xB, b""), 1002),
    bad("fragmented-ping", _fragmented_ping(), 1002),
    bad("ping-126-bytes", frame(OP_PING, b"p" * 126), 1002),
    bad("close-126-bytes", frame(OP_CLOSE, close_payload(1000, b"r" * 124)), 1002),
    bad("invalid-utf8-text", frame(OP_TEXT, b'{"type":"ping","x":"\xc3\x28"}'), 1007),
    bad("utf8-surrogate", frame(OP_TEXT, b'{"type":"ping","x":"\xed\xa0\x80"}'), 1007),
    bad("utf8-split-across-fragments-invalid",
        frame(OP_TEXT, b'{"type":"ping","x":"\xe2\x82', fin=False) +
        frame(OP_CONT, b'("}'), 1007),
    bad("close-reason-not-utf8", frame(OP_CLOSE, close_payload(1000, b"\xff\xfe")), 1007),
    bad("declared-length-over-limit-16bit",
        frame(OP_TEXT, b"", length=MAX_MESSAGE + 1), 1009),
    bad("declared-length-over-limit-64bit",
        frame(OP_TEXT, b"", length=1 << 32), 1009),
    bad("fragments-sum-over-limit",
        frame(OP_TEXT, b"x" * 700, fin=False) + frame(OP_CONT, b"y" * 700), 1009),
    bad("length-top-bit-set",
        struct.pack("!BBQ", 0x81, 0xFF, 1 << 63) + b"\0\0\0\0", 1002),
    bad("close-code-1005", frame(OP_CLOSE, close_payload(1005)), 1002),
    bad("close-code-999", frame(OP_CLOSE, close_payload(999)), 1002),
    bad("close-code-1006", frame(OP_CLOSE, close_payload(1006)), 1002),
    bad("close-code-2000", frame(OP_CLOSE, close_payload(2000)), 1002),
    bad("close-code-5000", frame(OP_CLOSE, close_payload(5000)), 1002),
    bad("close-1-byte", frame(OP_CLOSE, b"\x03"), 1002),
    bad("continuation-without-start", frame(OP_CONT, PING), 1002),
    bad("text-inside-fragmented-message",
        frame(OP_TEXT, b'{"type":', fin=False) + frame(OP_TEXT, PING), 1002),
    bad("binary-message", frame(OP_BINARY, b"\x00\x01\x02"), 1003),
    bad("binary-fragmented",
        frame(OP_BINARY, b"\x00", fin=False) + frame(OP_CONT, b"\x01"), 1003),
]


@pytest.fixture
def node(fleetd):
    f = fleetd({"limits": {"ws_max_message": MAX_MESSAGE}}, workers=1)
    return f


def check_bad_frame(f, pids, data, code):
    other = WsClient.connect(f)          # a bystander on the same worker
    try:
        other.subscribe(["bystander-dev"])
        before = metric_sum(f, "fleetd_ws_closes_total", code=str(code))
        c = WsClient.connect(f)
        try:
            c.ping()                     # the connection works
            c.send_raw(data)
            got, reason, eof = c.expect_close(timeout=5)
        finally:
            c.abort()
        assert got == code, "close code %r (reason %r), expected %d" % (
            got, reason, code)
        assert eof, "the server did not end the TCP connection after its " \
            "close frame"
        # the worker is fine and still serves: the bystander and a new client
        assert_node_ok(f, pids)
        other.ping()
        c2 = WsClient.connect(f)
        c2.ping()
        c2.close()
    finally:
        other.close()
    wait_ws_conns(f, 0)
    after = metric_sum(f, "fleetd_ws_closes_total", code=str(code))
    assert after >= before + 1, "fleetd_ws_closes_total{code=\"%d\"} %r -> %r" % (
        code, before, after)


@pytest.mark.timeout(90)
def test_bad_frames_close_with_code(node):
    """Every case of BAD_FRAMES on its own connection of one fleetd (one
    fleetd for all of them keeps the suite fast); all cases run, the
    failures are reported together."""
    f = node
    pids = f.worker_pids()
    failures = []
    for p in BAD_FRAMES:
        data, code = p.values
        try:
            check_bad_frame(f, pids, data, code)
        except (AssertionError, OSError, EOFError, Exception) as e:  # noqa: BLE001
            failures.append("%s (expected %d): %s" % (p.id, code, str(e)[:600]))
            try:
                pids = f.worker_pids()
                wait_ws_conns(f, 0, timeout=3)
            except Exception:  # noqa: BLE001
                pass
    assert not failures, "%d of %d bad-frame cases failed:\n  %s\n%s" % (
        len(failures), len(BAD_FRAMES), "\n  ".join(failures), ws_metrics_text(f))


@pytest.mark.timeout(30)
def test_declared_length_over_limit_closes_before_payload(node):
    """Only the header of a 16 MB frame is sent: the close must come
    without the server waiting for (or buffering) the payload."""
    f = node
    c = WsClient.connect(f)
    c.send_raw(frame(OP_TEXT, b"", length=16 << 20))
    t0 = time.monotonic()
    got, reason, eof = c.expect_close(timeout=3)
    assert got == 1009, (got, reason)
    assert time.monotonic() - t0 < 2.0
    c.abort()
    assert_node_ok(f)


@pytest.mark.timeout(30)
def test_frames_a_correct_client_may_send(node):
    f = node
    c = WsClient.connect(f)
    c.keep_frames = True
    # a ping with a payload: a pong with the same payload
    c.send_frame(OP_PING, b"hello-125" + b"x" * 116)
    fr = c.recv_frame(5)
    assert fr.opcode == OP_PONG and fr.payload == b"hello-125" + b"x" * 116, fr
    # an unsolicited pong is ignored
    c.send_frame(OP_PONG, b"unsolicited")
    # a text message in 3 fragments with a ping between them
    c.send_frame(OP_TEXT, b'{"type"', fin=False)
    c.send_frame(OP_PING, b"mid")
    c.send_frame(OP_CONT, b':"pi', fin=False)
    c.send_frame(OP_CONT, b'ng"}')
    fr = c.recv_frame(5)
    assert fr.opcode == OP_PONG and fr.payload == b"mid", fr
    assert c.pump(5) == {"type": "pong"}
    # a multi-byte character split between two fragments is fine
    c.send_frame(OP_TEXT, '{"type":"ping","x":"\u20ac'.encode()[:-1], fin=False)
    c.send_frame(OP_CONT, '\u20ac"}'.encode()[-3:])
    assert c.pump(5) == {"type": "pong"}
    # a message of exactly the limit is accepted (bad JSON, but not too big)
    body = b'{"type":"ping","pad":"' + b"p" * (MAX_MESSAGE - 24) + b'"}'
    assert len(body) == MAX_MESSAGE
    c.send_frame(OP_TEXT, body)
    r = c.pump(5)
    assert r.get("type") in ("pong", "error"), r
    # a frame written byte by byte
    for b in frame(OP_TEXT, PING):
        c.send_raw(bytes([b]))
        time.sleep(0.002)
    assert c.pump(5) == {"type": "pong"}
    # empty close frame: answered, then the TCP connection ends
    c.send_frame(OP_CLOSE, b"")
    fr = c.recv_frame(5)
    assert fr.opcode == OP_CLOSE, fr
    assert fr.close_code in (1000, 1005), fr
    assert c.wait_eof(5), "no EOF after the close handshake"
    c.abort()
    # a clean close with a code and reason: echoed
    c = WsClient.connect(f)
    c.send_frame(OP_CLOSE, close_payload(1000, "bye"))
    fr = c.recv_frame(5)
    assert fr.opcode == OP_CLOSE and fr.close_code == 1000, fr
    assert c.wait_eof(5)
    c.abort()
    # application codes 3000-4999 are valid
    c = WsClient.connect(f)
    c.send_frame(OP_CLOSE, close_payload(4000, "app"))
    fr = c.recv_frame(5)
    assert fr.opcode == OP_CLOSE and fr.close_code in (4000, 1000), fr
    c.abort()
    wait_ws_conns(f, 0)
    assert metric_sum(f, "fleetd_ws_closes_total", code="1002") == 0, ws_metrics_text(f)


@pytest.mark.timeout(30)
def test_tcp_reset_mid_frame_and_half_frames(node):
    """Clients that vanish mid-frame (RST, or FIN after half a header)
    are cleaned up: the connection count goes back to 0, the worker lives."""
    f = node
    pids = f.worker_pids()
    for i in range(20):
        c = WsClient.connect(f)
        data = frame(OP_TEXT, PING * 10)
        c.send_raw(data[:i % len(data) + 1])
        if i % 2:
            c.conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                   struct.pack("ii", 1, 0))     # RST
        c.abort()
    wait_ws_conns(f, 0)
    assert_node_ok(f, pids)


# ------------------------------------------------------------ JSON errors

@pytest.mark.timeout(30)
def test_bad_messages_get_error_and_connection_stays(fleetd):
    f = fleetd({"limits": {"ws_max_subscriptions": 3}}, workers=1)
    c = WsClient.connect(f)
    cases = [
        ("not json", "bad_json"),
        ("{\"type\":", "bad_json"),
        ("[1, 2]", "bad_json"),
        ("\"subscribe\"", "bad_json"),
        ("42", "bad_json"),
        (json.dumps({"type": "nope"}), "unknown_type"),
        (json.dumps({"devices": ["d1"]}), None),     # no type: bad_message or unknown_type
        (json.dumps({"type": 7}), None),
        (json.dumps({"type": "subscribe"}), "bad_message"),
        (json.dumps({"type": "subscribe", "devices": 5}), "bad_message"),
        (json.dumps({"type": "subscribe", "devices": [1]}), None),
        (json.dumps({"type": "subscribe", "devices": ["ok-1"], "since": "yesterday"}),
         "bad_message"),
        (json.dumps({"type": "subscribe", "devices": ["ok-1"], "since": 5}), "bad_message"),
        (json.dumps({"type": "subscribe", "devices": ["bad id!"]}), "bad_device"),
        (json.dumps({"type": "subscribe", "devices": ["a/b"]}), "bad_device"),
        (json.dumps({"type": "subscribe", "devices": ["x" * 65]}), "bad_device"),
        (json.dumps({"type": "subscribe", "devices": [""]}), "bad_device"),
        (json.dumps({"type": "unsubscribe"}), "bad_message"),
        (json.dumps({"type": "unsubscribe", "devices": ["bad id!"]}), "bad_device"),
        (json.dumps({"type": "subscribe", "devices": ["a", "b", "c", "d"]}),
         "too_many_subscriptions"),
    ]
    for text, code in cases:
        c.send_text(text)
        m = c.wait_for(lambda m: m.get("type") != "telemetry", 5,
                       "a reply to %r" % text)
        assert m.get("type") == "error", "%r answered %r" % (text, m)
        assert isinstance(m.get("message"), str) and m["message"], m
        if code is None:
            assert m.get("code") in ("bad_message", "unknown_type", "bad_device"), \
                "%r answered %r" % (text, m)
        else:
            assert m.get("code") == code, "%r answered %r, expected code %r" % (
                text, m, code)
        c.ping()                       # still open and answering
    # a refused subscribe is refused whole: nothing of it was kept
    r = c.subscribe(["a", "b", "c"])
    assert sorted(r["devices"]) == ["a", "b", "c"], r
    m = c.request({"type": "subscribe", "devices": ["d"]}, "subscribed")
    assert m["type"] == "error" and m["code"] == "too_many_subscriptions", m
    r = c.unsubscribe(["a"])
    assert r["devices"] == ["a"], r
    r = c.subscribe(["d"])              # room again
    assert r["devices"] == ["d"], r
    # a valid id of 64 characters of every allowed class
    long_id = ("Az09_.:-" * 8)[:64]
    c.unsubscribe("*")
    r = c.subscribe([long_id])
    assert r["devices"] == [long_id], r
    c.close()
    assert metric_sum(f, "fleetd_ws_client_errors_total") >= len(cases), \
        ws_metrics_text(f)


@pytest.mark.timeout(30)
def test_message_rate_limit(fleetd):
    f = fleetd({"limits": {"ws_msg_rate": 5}}, workers=1)
    c = WsClient.connect(f)
    data = b"".join(frame(OP_TEXT, PING) for _ in range(30))
    c.send_raw(data)
    c.drain(quiet=1.0, timeout=5)
    pongs = [m for m in c.log if m.get("type") == "pong"]
    limited = [m for m in c.log if m.get("type") == "error" and
               m.get("code") == "rate_limited"]
    assert limited, "30 messages at once with ws_msg_rate 5: no rate_limited " \
        "error; got %r" % c.log
    assert 1 <= len(pongs) <= 15, "%d pongs for 30 pings with ws_msg_rate 5" % len(pongs)
    # the connection is still open and, a second later, answers again
    time.sleep(1.2)
    c.ping()
    c.close()
