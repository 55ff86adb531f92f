#!/usr/bin/python3
"""ws_fake.py - a stand-in for fleetd's /ws to test bench/ws_swarm without
fleetd (python3-websockets, Debian 12: 10.4).

usage: bench/ws_fake.py PORT [--token T] [--rate R] [--devices N]
                            [--max-conns M] [--ping S] [--close-after S]

GET /ws?token=T (401 without it, 503 over --max-conns); answers
{"type":"subscribe","devices":[...]|"*"} with {"type":"subscribed",...},
{"type":"ping"} with {"type":"pong"}, anything else with
{"type":"error","code":"unknown_type"}. A generator sends telemetry for
--devices devices (dev-000001 ...) at --rate messages/s in fleetd's form,
with "values":{"t_us":<send time us>,...}, to every connection subscribed
to the device or to "*". --close-after S: every connection gets close 1001
after S s (tests the close counting). SIGTERM/SIGINT: close 1001 to all.
"""
import argparse
import asyncio
import json
import signal
import time
from http import HTTPStatus
from urllib.parse import parse_qs, urlparse

import websockets

ap = argparse.ArgumentParser()
ap.add_argument("port", type=int)
ap.add_argument("--token", default="bench-token")
ap.add_argument("--rate", type=float, default=0.0)
ap.add_argument("--devices", type=int, default=1000)
ap.add_argument("--max-conns", type=int, default=100000)
ap.add_argument("--ping", type=float, default=30.0)
ap.add_argument("--close-after", type=float, default=0.0)
args = ap.parse_args()

subs_all = set()
subs = {}          # device -> set(ws)
conns = set()


def err(status, code):
    body = json.dumps({"error": {"code": code, "message": code}}).encode()
    return status, [("Content-Type", "application/json")], body


async def process_request(path, headers):
    u = urlparse(path)
    if u.path != "/ws":
        return err(HTTPStatus.NOT_FOUND, "not_found")
    if parse_qs(u.query).get("token", [None])[0] != args.token:
        return err(HTTPStatus.UNAUTHORIZED, "unauthorized")
    if len(conns) >= args.max_conns:
        return err(HTTPStatus.SERVICE_UNAVAILABLE, "busy")
    return None


async def handler(ws, path=None):
    conns.add(ws)
    mine = set()
    try:
        if args.close_after > 0:
            asyncio.get_running_loop().call_later(
                args.close_after, lambda: asyncio.ensure_future(ws.close(1001, "bye")))
        async for raw in ws:
            try:
                m = json.loads(raw)
            except ValueError:
                await ws.send(json.dumps({"type": "error", "code": "bad_json", "message": "x"}))
                continue
            t = m.get("type")
            if t == "subscribe":
                d = m.get("devices")
                if d == "*" or d == ["*"]:
                    subs_all.add(ws)
                    mine.add("*")
                    await ws.send(json.dumps({"type": "subscribed", "devices": "*", "snapshot": []}))
                elif isinstance(d, list):
                    for x in d:
                        subs.setdefault(x, set()).add(ws)
                        mine.add(x)
                    await ws.send(json.dumps({"type": "subscribed", "devices": d, "snapshot": []}))
                else:
                    await ws.send(json.dumps({"type": "error", "code": "bad_message", "message": "x"}))
            elif t == "ping":
                await ws.send('{"type":"pong"}')
            else:
                await ws.send(json.dumps({"type": "error", "code": "unknown_type", "message": "x"}))
    except websockets.ConnectionClosed:
        pass
    finally:
        conns.discard(ws)
        subs_all.discard(ws)
        for x in mine:
            subs.get(x, set()).discard(ws)


async def generator():
    if args.rate <= 0:
        return
    i = 0
    seq = 0
    period = 1.0 / args.rate
    nxt = time.monotonic()
    while True:
        nxt += period
        d = "dev-%06d" % (i % args.devices + 1)
        i += 1
        seq += 1
        now_ms = int(time.time() * 1000)
        msg = ('{"type":"telemetry","id":"%d-%d","device":"%s","ts":%d,"values":'
               '{"t_us":%d,"temperature":21.5,"seq":%d}}'
               % (now_ms, seq, d, now_ms, time.time_ns() // 1000, seq))
        targets = subs_all | subs.get(d, set())
        if targets:
            websockets.broadcast(targets, msg)
        delay = nxt - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


async def main():
    stop = asyncio.get_running_loop().create_future()
    for s in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(s, stop.set_result, None)
    async with websockets.serve(handler, "127.0.0.1", args.port, process_request=process_request,
                                ping_interval=args.ping, max_queue=None,
                                compression=None, backlog=4096):
        print("ws_fake: listening on 127.0.0.1:%d" % args.port, flush=True)
        g = asyncio.ensure_future(generator())
        await stop
        g.cancel()
        await asyncio.gather(*(c.close(1001, "going away") for c in list(conns)),
                             return_exceptions=True)


asyncio.run(main())
