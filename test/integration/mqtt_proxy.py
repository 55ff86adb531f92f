"""
mqtt_proxy.py - a TCP proxy between fleetd and the real Mosquitto that can
lose MQTT packets on purpose (the redelivery tests).

fleetd's mqtt.uri points at MqttProxy.uri; every connection accepted there
gets its own connection to the broker. Bytes go through unchanged, except:

- fleetd -> broker: the stream is cut into MQTT packets (fixed header byte,
  "remaining length" as a variable byte integer, then that many bytes).
  With hold_pubacks(True), PUBACK packets (first byte 0x40) are held: not
  forwarded, counted (held_pubacks) and their packet ids kept (held_ids).
  A held PUBACK is never sent: the broker goes on thinking the message is
  unacknowledged, as if the worker had died before writing it.
- broker -> fleetd: with hold_downstream(True) every packet is held the
  same way (counted in held_publishes when it is a PUBLISH), as if the
  connection had died with them on the wire.

cut() closes every connection, both sides, and drops what was held, so the
broker redelivers what it had not seen acknowledged once the client
reconnects (through the proxy: the listener stays open). Counters of the
PUBLISH packets the broker sent (publishes, dup_publishes: those with the
DUP flag, 0x08) tell a test what the broker redelivered.

One thread, selectors, non-blocking sockets; at most BUF_MAX bytes are
buffered towards a side before reading from the other side pauses.
Standard library only. Every wait has a deadline.
"""

import selectors
import socket
import threading
import time

BUF_MAX = 1 << 20
READ_SIZE = 65536

PUBLISH = 3
PUBACK_BYTE = 0x40


class ProtocolError(Exception):
    pass


class _Framer:
    """Cuts one direction of an MQTT byte stream into packets as the bytes
    come, without buffering whole packets: the fixed header is collected,
    then the rest of the packet is passed through (or held) as it arrives.
    feed() returns the bytes to forward. decide(first_byte), called once a
    packet's fixed header is complete, says whether the packet is held;
    done(first_byte, held, first2) is called at its end, first2 being its
    first two bytes after the fixed header (a PUBACK's packet id)."""

    def __init__(self, decide, done):
        self.decide = decide      # (first_byte) -> hold?
        self.done = done          # (first_byte, held, first2) at the end
        self.hdr = bytearray()
        self.remaining = 0
        self.in_packet = False
        self.holding = False
        self.first = 0
        self.first2 = bytearray()

    def feed(self, data):
        out = bytearray()
        i, n = 0, len(data)
        while i < n:
            if self.in_packet:
                take = min(self.remaining, n - i)
                chunk = data[i:i + take]
                if len(self.first2) < 2:
                    self.first2 += chunk[:2 - len(self.first2)]
                if not self.holding:
                    out += chunk
                i += take
                self.remaining -= take
                if self.remaining == 0:
                    self._end()
                continue
            b = data[i]
            i += 1
            self.hdr.append(b)
            if len(self.hdr) == 1:
                continue
            if b & 0x80:
                if len(self.hdr) >= 5:
                    raise ProtocolError("remaining length longer than 4 bytes")
                continue
            length, mult = 0, 1
            for x in self.hdr[1:]:
                length += (x & 0x7F) * mult
                mult *= 128
            self.first = self.hdr[0]
            self.holding = bool(self.decide(self.first))
            if not self.holding:
                out += self.hdr
            self.hdr = bytearray()
            self.remaining = length
            self.in_packet = True
            self.first2 = bytearray()
            if length == 0:
                self._end()
        return bytes(out)

    def _end(self):
        self.in_packet = False
        self.done(self.first, self.holding, bytes(self.first2))


class _Pair:
    """One proxied connection: fleetd's socket and ours to the broker."""

    def __init__(self, proxy, down, up):
        self.proxy = proxy
        self.down = down            # fleetd side
        self.up = up                # broker side
        self.to_up = bytearray()    # waiting to be written to the broker
        self.to_down = bytearray()  # waiting to be written to fleetd
        self.up_connected = False
        self.closed = False
        self.c2s = _Framer(proxy._decide_c2s, proxy._done_c2s)
        self.s2c = _Framer(proxy._decide_s2c, proxy._done_s2c)


class MqttProxy:
    def __init__(self, upstream_host, upstream_port, host="127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self._lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._lsock.bind((host, 0))
        self._lsock.listen(64)
        self._lsock.setblocking(False)
        self.port = self._lsock.getsockname()[1]
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._lock = threading.Lock()
        self._pairs = []
        self._requests = []         # (name, Event): run by the loop thread
        self._closed = False
        self._hold_pubacks = False
        self._hold_down = False
        # counters, under _lock
        self.accepted = 0
        self.held_pubacks = 0
        self.held_ids = []
        self.forwarded_pubacks = 0
        self.held_publishes = 0
        self.publishes = 0
        self.dup_publishes = 0
        self.cuts = 0
        self.errors = []
        self._thread = threading.Thread(target=self._run, name="mqtt-proxy",
                                        daemon=True)

    @property
    def uri(self):
        return "tcp://%s:%d" % (self.host, self.port)

    # ------------------------------------------------------ control (tests)

    def start(self):
        self._sel.register(self._lsock, selectors.EVENT_READ, ("listen", None))
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._thread.start()
        return self

    def hold_pubacks(self, on=True):
        """Hold (never forward) the PUBACKs fleetd sends from now on."""
        with self._lock:
            self._hold_pubacks = bool(on)

    def hold_downstream(self, on=True):
        """Hold (never forward) every packet the broker sends from now on."""
        with self._lock:
            self._hold_down = bool(on)

    def counters(self):
        with self._lock:
            return {"accepted": self.accepted, "cuts": self.cuts,
                    "held_pubacks": self.held_pubacks,
                    "forwarded_pubacks": self.forwarded_pubacks,
                    "held_publishes": self.held_publishes,
                    "publishes": self.publishes,
                    "dup_publishes": self.dup_publishes,
                    "open": len(self._pairs), "errors": list(self.errors[-5:])}

    def get(self, name):
        with self._lock:
            return getattr(self, name)

    def wait_for(self, name, n, timeout):
        """Wait until counter `name` is at least n; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.get(name)
            if v >= n or time.monotonic() >= deadline:
                if v < n:
                    raise TimeoutError("proxy: %s = %d, not %d, after %.1f s "
                                       "(%r)" % (name, v, n, timeout,
                                                 self.counters()))
                return v
            time.sleep(0.02)

    def cut(self, timeout=5.0):
        """Close every proxied connection, both sides; what was held is
        dropped. New connections are accepted as before."""
        self._request("cut", timeout)

    def close(self, timeout=5.0):
        """Close everything and stop the thread."""
        if not self._thread.is_alive():
            self._close_all_now()
            return
        try:
            self._request("stop", timeout)
        finally:
            self._thread.join(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def _request(self, name, timeout):
        ev = threading.Event()
        with self._lock:
            self._requests.append((name, ev))
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass                    # a wake-up is pending already
        if not ev.wait(timeout):
            raise TimeoutError("proxy: %s not done within %.1f s" % (
                name, timeout))

    # ------------------------------------------------ packet decisions

    def _decide_c2s(self, first):
        with self._lock:
            return self._hold_pubacks and first == PUBACK_BYTE

    def _done_c2s(self, first, held, first2):
        if first != PUBACK_BYTE:
            return
        with self._lock:
            if held:
                self.held_pubacks += 1
                if len(first2) == 2 and len(self.held_ids) < 100000:
                    self.held_ids.append(first2[0] << 8 | first2[1])
            else:
                self.forwarded_pubacks += 1

    def _decide_s2c(self, first):
        with self._lock:
            return self._hold_down

    def _done_s2c(self, first, held, first2):
        if first >> 4 != PUBLISH:
            return
        with self._lock:
            if held:
                self.held_publishes += 1
            else:
                self.publishes += 1
                if first & 0x08:
                    self.dup_publishes += 1

    # ------------------------------------------------------- the loop

    def _run(self):
        try:
            while True:
                for key, mask in self._sel.select(timeout=0.5):
                    kind, pair = key.data
                    if kind == "listen":
                        self._accept()
                    elif kind == "wake":
                        self._drain_wake()
                    elif pair is not None and not pair.closed:
                        self._service(pair, key.fileobj, mask)
                if self._run_requests():
                    break
        except Exception as e:  # noqa: BLE001 - recorded, then shut down
            with self._lock:
                self.errors.append("loop: %r" % e)
        finally:
            self._close_all_now()
            for name, ev in self._take_requests():
                ev.set()

    def _take_requests(self):
        with self._lock:
            reqs, self._requests = self._requests, []
        return reqs

    def _run_requests(self):
        stop = False
        for name, ev in self._take_requests():
            if name in ("cut", "stop"):
                n = len(self._pairs)
                for p in list(self._pairs):
                    self._close_pair(p)
                with self._lock:
                    self.cuts += n
            if name == "stop":
                stop = True
            ev.set()
        return stop

    def _drain_wake(self):
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _accept(self):
        while True:
            try:
                down, _ = self._lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            down.setblocking(False)
            down.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            up.setblocking(False)
            up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                up.connect(self.upstream)
            except BlockingIOError:
                pass
            except OSError as e:
                with self._lock:
                    self.errors.append("connect to broker: %r" % e)
                down.close()
                up.close()
                continue
            pair = _Pair(self, down, up)
            self._pairs.append(pair)
            with self._lock:
                self.accepted += 1
            # fleetd's bytes are read only once the broker side is up
            self._sel.register(up, selectors.EVENT_WRITE, ("up", pair))
            self._update(pair)

    def _update(self, pair):
        """(Re)compute what each socket waits for: read while the other
        side's buffer has room, write while ours has bytes."""
        if pair.closed:
            return
        up_ev = 0
        if not pair.up_connected:
            up_ev = selectors.EVENT_WRITE
        else:
            if len(pair.to_down) < BUF_MAX:
                up_ev |= selectors.EVENT_READ
            if pair.to_up:
                up_ev |= selectors.EVENT_WRITE
        down_ev = 0
        if pair.up_connected and len(pair.to_up) < BUF_MAX:
            down_ev |= selectors.EVENT_READ
        if pair.to_down:
            down_ev |= selectors.EVENT_WRITE
        self._set_events(pair.up, up_ev, ("up", pair))
        self._set_events(pair.down, down_ev, ("down", pair))

    def _set_events(self, sock, ev, data):
        try:
            if ev:
                self._sel.modify(sock, ev, data)
            else:
                self._sel.unregister(sock)
        except KeyError:
            if ev:
                self._sel.register(sock, ev, data)
        except ValueError:
            pass

    def _service(self, pair, sock, mask):
        try:
            if sock is pair.up and not pair.up_connected:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, "connect to broker failed")
                pair.up_connected = True
            if mask & selectors.EVENT_READ:
                data = sock.recv(READ_SIZE)
                if not data:
                    # the peer closed: pass on what it sent, best effort
                    other, buf = ((pair.up, pair.to_up) if sock is pair.down
                                  else (pair.down, pair.to_down))
                    try:
                        if buf:
                            other.send(buf)
                    except OSError:
                        pass
                    self._close_pair(pair)
                    return
                if sock is pair.down:
                    pair.to_up += pair.c2s.feed(data)
                else:
                    pair.to_down += pair.s2c.feed(data)
            if mask & selectors.EVENT_WRITE:
                buf = pair.to_up if sock is pair.up else pair.to_down
                if buf:
                    sent = sock.send(buf)
                    del buf[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except (OSError, ProtocolError) as e:
            with self._lock:
                self.errors.append(repr(e))
            self._close_pair(pair)
            return
        self._update(pair)

    def _close_pair(self, pair):
        if pair.closed:
            return
        pair.closed = True
        for s in (pair.down, pair.up):
            try:
                self._sel.unregister(s)
            except (KeyError, ValueError):
                pass
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        pair.to_up.clear()
        pair.to_down.clear()
        if pair in self._pairs:
            self._pairs.remove(pair)

    def _close_all_now(self):
        if self._closed:
            return
        self._closed = True
        for p in list(self._pairs):
            self._close_pair(p)
        for s in (self._lsock, self._wake_r, self._wake_w):
            try:
                self._sel.unregister(s)
            except (KeyError, ValueError):
                pass
            try:
                s.close()
            except OSError:
                pass
        try:
            self._sel.close()
        except (OSError, RuntimeError):
            pass
