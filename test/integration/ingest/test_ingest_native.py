"""
The native MQTT intake (worker/ingest/fl_mqttc.c, plain-TCP brokers): what
it does that paho's path could not, on top of the contract the other ingest
tests hold both paths to.

- Redis stopped in the middle of a stream of messages: no PUBACK leaves
  while Redis is down (a PUBACK only follows the EXEC that put the message
  in the stream), and once Redis is back every message is stored once:
  the appends that were pending are sent again with the dedup look-up
  first, in order.
- While Redis is down the loop keeps sending PINGREQs, so the broker keeps
  the connection past 1.5 x keepalive: no reconnect, no redelivery.

FLEETD_MQTT_PAHO=1 runs fleetd with paho on plain TCP too: the first test
passes there as well, the second is skipped (paho fails it).

fleetd talks to the broker through mqtt_proxy.MqttProxy, which counts the
PUBACKs fleetd writes, the connections it makes and the PUBLISHes the
broker (re)sends.
"""

import os
import time

import pytest

from ingest_util import ingest, now_ms, to_bytes, uniq  # noqa: F401
from test_ingest_redelivery import (metric, proxy, seq_rows,  # noqa: F401
                                    start, stream_payloads, wait)

N = 300


def test_redis_stopped_mid_stream_no_puback_before_the_stream(
        proxy, ingest, redis_server):
    """N messages published at ~300/s; Redis stops after about a third of
    them. While it is down fleetd writes no PUBACK; every PUBACK written
    before the stop is for a message the stream holds after the restart;
    at the end each message is in the stream once and stored once."""
    ctx = start(ingest, proxy)
    dev = ctx.dev("midstream")
    base = now_ms() - 60000
    client = ctx.pub.client
    infos = []

    def publish(i):
        infos.append(client.publish(ctx.topic(dev),
                                    to_bytes({"ts": base + i, "seq": i}),
                                    qos=1))

    for i in range(N // 3):
        publish(i)
        time.sleep(0.003)
    redis_server.stop()
    try:
        # what was on its way to Redis when it stopped is answered (with
        # an error) within moments; from then on nothing is acknowledged
        time.sleep(0.5)
        acked_at_stop = proxy.get("forwarded_pubacks")
        for i in range(N // 3, N):
            publish(i)
            time.sleep(0.003)
        time.sleep(1.0)
        assert proxy.get("forwarded_pubacks") == acked_at_stop, \
            "PUBACKs written while Redis was down: %r" % proxy.counters()
        assert metric(ctx, "fleetd_mqtt_enqueue_failures_total") > 0
    finally:
        redis_server.start()
    # entries only grow: the ones acknowledged before the stop are there
    assert len(stream_payloads(ctx, dev)) >= acked_at_stop - 1, \
        "acknowledged before the stop but not in the stream"
    for info in infos:
        info.wait_for_publish(10)
    ctx.wait_deps_up(40)

    def stored():
        return len(seq_rows(ctx, dev)) == N

    wait(ctx, proxy, stored, 60, "%d seqs stored" % N)
    time.sleep(0.5)
    rows = seq_rows(ctx, dev)
    assert rows == {i: 1 for i in range(N)}, repr(rows)
    entries = stream_payloads(ctx, dev)
    want = {to_bytes({"ts": base + i, "seq": i}): 1 for i in range(N)}
    assert entries == want, "stream entries not once each: %r" % {
        k: v for k, v in entries.items() if v != 1}
    # every delivery the broker made was acknowledged in the end, and the
    # connection never dropped: nothing was redelivered
    wait(ctx, proxy, lambda: proxy.get("forwarded_pubacks") >=
         proxy.get("publishes") - 1, 20, "every delivery acknowledged")
    assert proxy.get("accepted") == 1, proxy.counters()
    assert proxy.get("dup_publishes") == 0, proxy.counters()


@pytest.mark.skipif(os.environ.get("FLEETD_MQTT_PAHO") == "1",
                    reason="paho's receive thread sends no PINGREQ while its "
                    "callback waits for Redis: the broker drops it")
@pytest.mark.parametrize("keepalive_s", [2])
def test_pingreqs_go_on_while_redis_is_down(proxy, ingest, redis_server,
                                            keepalive_s):
    """With Redis down and a message waiting for it, fleetd stops reading
    the broker but goes on sending PINGREQs: the broker (which closes a
    connection silent for 1.5 x keepalive) keeps it for 3 x keepalive, and
    the held message is acknowledged on that same connection once Redis
    is back, not redelivered."""
    ctx = start(ingest, proxy, {"mqtt": {"keepalive": "%ds" % keepalive_s}})
    dev = ctx.dev("keepalive")
    base = now_ms() - 60000
    connects0 = metric(ctx, "fleetd_mqtt_connects_total")
    acked0 = proxy.get("forwarded_pubacks")
    down_s = 3 * keepalive_s
    redis_server.stop()
    try:
        ctx.send(dev, {"ts": base, "seq": 0})
        wait(ctx, proxy,
             lambda: metric(ctx, "fleetd_mqtt_enqueue_failures_total") > 0,
             20, "the worker holding a message it cannot append")
        time.sleep(down_s)
        assert proxy.get("forwarded_pubacks") == acked0, proxy.counters()
        assert proxy.get("accepted") == 1 and proxy.counters()["open"] == 1, \
            "the broker dropped the connection: %r" % proxy.counters()
    finally:
        redis_server.start()
    ctx.wait_deps_up(40)
    wait(ctx, proxy, lambda: seq_rows(ctx, dev) == {0: 1}, 30,
         "the held message stored")
    wait(ctx, proxy, lambda: proxy.get("forwarded_pubacks") == acked0 + 1,
         10, "the held message acknowledged")
    assert proxy.get("accepted") == 1, proxy.counters()
    assert proxy.get("dup_publishes") == 0, proxy.counters()
    assert metric(ctx, "fleetd_mqtt_connects_total") == connects0
