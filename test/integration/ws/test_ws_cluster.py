"""
Two fleetd nodes sharing Redis, Mosquitto and PostgreSQL (issue 9,
/tmp/ws-spec.md: telemetry reaches "every worker, every node sharing
Redis"): a WebSocket client on node B receives what devices publish to
node A.

Node B's mqtt.topics match nothing the devices publish, so only node A
receives device messages from the broker (B's fleetd_mqtt_received_total
stays 0). Both nodes' workers read the shared stream, so either may store
a message; each message is stored by one node, so a client on each node
receiving everything means every message crossed nodes to one of them.
"""

import pytest

from ingest_util import ingest, now_ms, uniq  # noqa: F401
from ws_util import (WsClient, id_key, metric_sum, seq_of, ws_metrics_text,
                     ws_node)  # noqa: F401


@pytest.mark.timeout(60)
def test_client_on_other_node_receives(ws_node, fleetd):
    prefix = "wsx%s:" % uniq()
    ctx = ws_node(workers=2, prefix=prefix)                 # node A
    a = ctx.f
    b = fleetd({"node_id": "it-b-" + uniq(),
                "mqtt": {"share_group": "g" + ctx.tag,
                         "topics": ["nowhere/+/telemetry"]},
                "redis": {"prefix": prefix}}, workers=1, timeout=20.0)
    assert a.healthz()["node"] != b.healthz()["node"]
    devs = [ctx.dev("x%d" % i) for i in range(3)]
    on_b = WsClient.connect(b)
    on_b.subscribe(devs)
    star_b = WsClient.connect(b)
    star_b.subscribe("*")
    on_a = WsClient.connect(a)
    on_a.subscribe(devs)
    base = now_ms() - 50000
    sent = []
    for k in range(60):
        ctx.send(devs[k % 3], {"ts": base + k, "seq": k})
        sent.append(k)
    try:
        for c in (on_b, on_a):
            c.wait_telemetry(len(sent), timeout=15)
        star_b.wait_telemetry(len(sent), timeout=15)
    finally:
        for c in (on_a, on_b, star_b):
            c.drain(quiet=0.7)
    diag = "\nnode A:\n%s\nnode B:\n%s" % (ws_metrics_text(a), ws_metrics_text(b))
    for name, c in (("client on B", on_b), ("client on A", on_a),
                    ("* on B", star_b)):
        ms = [m for m in c.telemetry() if m["device"] in devs]
        seqs = sorted(seq_of(m) for m in ms)
        assert seqs == sent, "%s: %d messages, missing %s, extra/twice %s%s" % (
            name, len(ms), sorted(set(sent) - set(seqs))[:10],
            sorted(s for s in seqs if seqs.count(s) > 1 or s not in sent)[:10], diag)
        assert all(m["device"] == devs[seq_of(m) % 3] for m in ms)
    # same ids on both nodes
    ids_a = {seq_of(m): m["id"] for m in on_a.telemetry()}
    ids_b = {seq_of(m): m["id"] for m in on_b.telemetry()}
    assert ids_a == ids_b, "ids differ between nodes"
    assert metric_sum(b, "fleetd_mqtt_received_total") == 0, \
        "node B received device messages from the broker"
    assert metric_sum(a, "fleetd_mqtt_received_total") >= len(sent)
    # resume on node B for messages node A ingested
    since = min(ids_b.values(), key=id_key)
    c = WsClient.connect(b)
    try:
        c.subscribe([devs[0]], since=since)
        want = sorted((k for k in sent if k % 3 == 0 and
                       id_key(ids_b[k]) > id_key(since)),
                      key=lambda k: id_key(ids_b[k]))      # replay: id order
        c.wait_telemetry(len(want), timeout=5)
        c.drain(quiet=0.5)
        assert [seq_of(m) for m in c.telemetry()] == want, c.log
    finally:
        c.close()
    for c in (on_a, on_b, star_b):
        c.close()
