/*
 * fl_mqttsh.h - what both MQTT intake clients share: the paho client for
 * TLS brokers (fl_mqtt.c) and the native client on the worker's loop
 * (fl_mqttc.c). One definition of the stream entry, of the dedup record
 * (ring size, hash, field and value) and of the slot handoff, so that a
 * worker of either kind reads the other's records and yields to it.
 *
 * Pure functions except fl_mqttsh_slot_holder(), which reads the shared
 * stats segment.
 */
#ifndef FL_MQTTSH_H
#define FL_MQTTSH_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "fl_shm.h"

#define FL_MQTTSH_DEDUP_ID_SPACE  65535 /* packet ids 1 .. 65535, then 1 */
#define FL_MQTTSH_DEDUP_MAX_SLOTS 21845 /* 65535 / 3: >= 3 ids a slot */
#define FL_MQTTSH_DEDUP_REFRESH_MS 60000 /* PEXPIRE at most this often */
#define FL_MQTTSH_DEAD_PAYLOAD    1024  /* payload bytes a dead letter keeps */
#define FL_MQTTSH_ARGV_MAX        16
#define FL_MQTTSH_HANDOFF_POLL_MS 50

/* Where and how entries are appended (from the config). */
typedef struct {
    const char *ingest_key;    /* {prefix}ingest */
    const char *dead_key;      /* {prefix}dead */
    const char *ingest_maxlen; /* MAXLEN ~ values, decimal */
    const char *dead_maxlen;
    int64_t     max_payload; /* limits.max_payload_bytes */
} fl_mqttsh_stream_t;

/* The XADD of one message, argv/lens of at least FL_MQTTSH_ARGV_MAX:
 * to the ingest stream (t, p, r), or for a payload over max_payload to the
 * dead-letter stream (topic, reason too_large, error, payload cut to
 * FL_MQTTSH_DEAD_PAYLOAD, rx). rx is the arrival wall ms in decimal, error
 * a buffer for the dead letter's text; both must outlive argv. Returns
 * argc; *oversize tells which stream. */
int fl_mqttsh_xadd_argv(const fl_mqttsh_stream_t *s, const char *topic,
                        size_t tlen, const void *payload, size_t plen,
                        const char *rx, char *error, size_t errlen,
                        const char **argv, size_t *lens, int *oversize);

/* N for R = mqtt.receive_max: the smallest divisor of 65535 not below R,
 * at most 21845 (fl_mqtt.c explains why). */
unsigned fl_mqttsh_dedup_ring(int receive_max);

/* FNV-1a 64 over topic, a 0 byte, payload. */
uint64_t fl_mqttsh_hash(const char *topic, size_t tlen, const void *payload,
                        size_t plen);

/* The record of a QoS 1 message: HSET field "<id % N>" and value
 * "<id>:<hash in 16 hex digits>". */
typedef struct {
    char field[12];
    char value[32];
} fl_mqttsh_record_t;

void fl_mqttsh_record(fl_mqttsh_record_t *rec, unsigned slots, int packet_id,
                      const char *topic, size_t tlen, const void *payload,
                      size_t plen);

/* A delay in [ms/2, ms] from *state (an LCG), so that the workers of a
 * node and the nodes of a fleet do not reconnect in step. */
int64_t fl_mqttsh_jitter(unsigned *state, int64_t ms);

/* A topic for a log line: cut to size - 1 bytes, control characters
 * replaced (it is the device's). */
const char *fl_mqttsh_safe_topic(char *buf, size_t size, const char *topic,
                                 size_t tlen);

/*
 * The worker of another generation that owns slot's client id for now: a
 * newer one (we are being replaced) or an older one still connected or
 * connecting (we replace it and wait until it has disconnected). Returns
 * its pid and sets *newer, or 0. self is the caller's own entry.
 */
pid_t fl_mqttsh_slot_holder(const fl_shm_worker_t *self, int slot,
                            uint32_t generation, int *newer);

/*
 * Whether the next connect must wait for another worker of the slot
 * (fl_mqttsh_slot_holder): 1 if so, after logging a change of holder
 * (*waiting_for remembers it) and reporting MQTT connecting - or down,
 * when yielding to a newer worker, so that it does not wait for us in
 * turn; the caller tries again HANDOFF_POLL_MS later. 0 when the slot is
 * free.
 */
int fl_mqttsh_handoff_wait(fl_shm_worker_t *self, int slot,
                           uint32_t generation, const char *client_id,
                           pid_t *waiting_for);

/* Split a plain-TCP broker uri, tcp://HOST[:PORT] or mqtt://HOST[:PORT]
 * (HOST may be [v6]), port 1883 by default. FL_OK, or FL_ERROR for
 * another scheme or a malformed uri. */
int fl_mqttsh_parse_uri(const char *uri, char *host, size_t hlen, int *port);

/* 1 when uri names a broker the native client speaks to (plain TCP). */
int fl_mqttsh_uri_native(const char *uri);

#endif
