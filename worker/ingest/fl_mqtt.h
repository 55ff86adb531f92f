/*
 * fl_mqtt.h - MQTT intake: the worker's MQTT 5 client. For a plain-TCP
 * broker (mqtt.uri tcp:// or mqtt://) the native client on the worker's
 * loop (fl_mqttc.c), for TLS (ssl://, mqtts://) and WebSockets paho
 * MQTTAsync (fl_mqtt.c); both keep what this header says, and share the
 * stream entry, the dedup record and the slot handoff (fl_mqttsh.h).
 *
 * One client per worker, client id fleetd-{node_id}-w{slot} (or
 * mqtt.client_id + "-w{slot}"), clean start off with a session expiry, one
 * shared subscription $share/{mqtt.share_group}/{topic} per mqtt.topics
 * entry. Every message is appended to the Redis stream {redis.prefix}ingest
 * (fields t = topic, p = payload, r = arrival wall ms) before paho sends
 * its PUBACK; payloads over limits.max_payload_bytes go to {prefix}dead
 * instead. See fl_mqtt.c for what paho guarantees and why the design
 * depends on it, fl_mqttc.c for the native client's pipelined appends.
 *
 * Broker redeliveries (details at the top of fl_mqtt.c). The append of a
 * QoS 1 message is MULTI, XADD, HSET {prefix}dedup:{client id} <packet id
 * % N> "<packet id>:<FNV-1a 64 of topic, 0, payload>", EXEC: one round
 * trip, the record atomic with the entry. A delivery with DUP set (the
 * broker resends what it sent before a connection ended and saw no PUBACK
 * for) whose slot holds its own id and hash is in the stream already: it
 * is acknowledged, not appended, and counted in mqtt_duplicates. N, the
 * smallest divisor of 65535 not below mqtt.receive_max (at most 21845),
 * suffices because the messages whose PUBACK the broker may not have seen
 * are our last appends, at most receive_max consecutive packet ids, which
 * have distinct slots also across the id wrap. Not caught (stored twice,
 * never lost): a slot overwritten first (more than N appends
 * unacknowledged, as Mosquitto < 2.0.13 allows with a backlog), a record
 * gone (key expired, Redis lost it, receive_max changed by a reload), and
 * a device's re-publish, which reaches us as a new message without DUP. A
 * false positive needs a record of an older message with the same id,
 * topic and payload still in the slot while this one was never appended:
 * the records of an older session are deleted when a new one starts, and
 * within a session the slot's other ids overwrite it before the id comes
 * round again.
 *
 * The module publishes this worker's MQTT (and, on a failed append, Redis)
 * state in fl_worker.stats->dep[] and counts mqtt_received, mqtt_enqueued,
 * mqtt_oversize, mqtt_enqueue_failures, mqtt_connects, mqtt_duplicates.
 */
#ifndef FL_MQTT_H
#define FL_MQTT_H

#include <stddef.h>
#include <stdint.h>

#include "fl_worker.h"

extern const fl_module_t fl_mqtt_module;

/*
 * Publish a message through this worker's MQTT connection (commands to
 * devices). Safe from any thread; never blocks on paho or the network: the
 * message is copied into a bounded queue that the module's control thread
 * hands to paho, or (native client) that the loop writes out, taken over
 * from other threads through a locked inbox. qos is 0, 1 or 2 (the native
 * client sends 2 as 1); topic must not contain wildcards.
 *
 * Returns FL_OK when queued (delivery is asynchronous: a failure after
 * this point is logged, not reported), FL_ERROR when not connected, the
 * module is stopping, or the arguments are invalid, FL_AGAIN when the
 * queue is full. The caller keeps ownership of topic and payload.
 */
int fl_mqtt_publish(const char *topic, const void *payload, size_t len,
                    int qos);

/* A publish's outcome, called on the worker's loop: ok 1 when paho
 * reported it done (QoS 1: the broker's PUBACK), 0 with err when it
 * failed or was dropped (connection closed, worker exiting). */
typedef void (*fl_mqtt_pub_cb)(int ok, const char *err, void *ud);

/*
 * fl_mqtt_publish() with more: retain, an MQTT 5 Message Expiry Interval
 * of expiry_s seconds (0 = none: the broker keeps it for an offline
 * subscriber's session as long as the session lasts), and cb (may be
 * NULL), which runs exactly once for a publish accepted with FL_OK -
 * before fl_mqtt's destroy returns at the latest, unless paho still holds
 * the message then. An empty payload with retain clears the topic's
 * retained message.
 */
int fl_mqtt_publish_ex(const char *topic, const void *payload, size_t len,
                       int qos, int retain, uint32_t expiry_s,
                       fl_mqtt_pub_cb cb, void *ud);

#endif
