/*
 * fl_mqtt.h - MQTT intake: the worker's MQTT 5 client (paho MQTTAsync).
 *
 * One client per worker, client id fleetd-{node_id}-w{slot} (or
 * mqtt.client_id + "-w{slot}"), clean start off with a session expiry, one
 * shared subscription $share/{mqtt.share_group}/{topic} per mqtt.topics
 * entry. Every message is appended to the Redis stream {redis.prefix}ingest
 * (fields t = topic, p = payload, r = arrival wall ms) before paho sends
 * its PUBACK; payloads over limits.max_payload_bytes go to {prefix}dead
 * instead. See fl_mqtt.c for what paho guarantees and why the design
 * depends on it.
 *
 * The module publishes this worker's MQTT (and, on a failed XADD, Redis)
 * state in fl_worker.stats->dep[] and counts mqtt_received, mqtt_enqueued,
 * mqtt_oversize, mqtt_enqueue_failures, mqtt_connects.
 */
#ifndef FL_MQTT_H
#define FL_MQTT_H

#include <stddef.h>

#include "fl_worker.h"

extern const fl_module_t fl_mqtt_module;

/*
 * Publish a message through this worker's MQTT connection (commands to
 * devices). Safe from any thread; never blocks on paho or the network: the
 * message is copied into a bounded queue that the module's control thread
 * hands to paho. qos is 0, 1 or 2; topic must not contain wildcards.
 *
 * Returns FL_OK when queued (delivery is asynchronous: a failure after
 * this point is logged, not reported), FL_ERROR when not connected, the
 * module is stopping, or the arguments are invalid, FL_AGAIN when the
 * queue is full. The caller keeps ownership of topic and payload.
 */
int fl_mqtt_publish(const char *topic, const void *payload, size_t len,
                    int qos);

#endif
