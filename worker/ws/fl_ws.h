/*
 * fl_ws.h - the WebSocket layer: what its two files share.
 *
 *   fl_ws.c     the module: the /ws handshake, connections (reading
 *               frames, the output queue, conflation, heartbeats,
 *               closes), the client protocol
 *   fl_wshub.c  fan-out: the device index (which connection watches
 *               which device), the worker's Redis Pub/Sub connection,
 *               and the subscribe flow (channels, snapshot, resume)
 *
 * A message from Pub/Sub becomes one frame (fl_ws_frame_t): header and
 * payload in one allocation, reference-counted. Every recipient's output
 * queue holds a pointer to it, and the socket is written with writev()
 * straight from it: no per-client copy or re-encoding. Frames made for
 * one client (answers, conflated values, replays) are the same type with
 * one reference.
 */
#ifndef FL_WS_H
#define FL_WS_H

#include <cjson/cJSON.h>
#include <event2/event.h>
#include <stddef.h>
#include <stdint.h>

#include "fl_enc.h"
#include "fl_wsframe.h"

typedef struct fl_ws_conn_s fl_ws_conn_t;
typedef struct fl_ws_dev_s  fl_ws_dev_t;
typedef struct fl_ws_op_s   fl_ws_op_t;

/* A telemetry message id: a decimal number, Redis's clock in µs when the
 * message was published, made strictly increasing (fl_ingest.c): ids
 * grow in the order every subscriber receives the messages. */
typedef uint64_t fl_ws_id_t;

typedef struct fl_ws_frame_s {
    uint32_t     refs;
    uint32_t     len;  /* bytes of data: header + payload */
    uint32_t     hlen; /* header bytes; the payload follows */
    fl_ws_dev_t *dev;  /* telemetry (live, conflated, replayed): its
                          device (a reference); NULL for other frames */
    fl_ws_id_t   id;   /* telemetry: its id */
    cJSON       *doc;  /* telemetry: parsed on demand (conflation) */
    unsigned char data[];
} fl_ws_frame_t;

/* A device someone on this worker watches. */
struct fl_ws_dev_s {
    fl_ws_dev_t   *hnext; /* hash chain */
    fl_ws_conn_t **subs;  /* the connections subscribed to it */
    uint32_t       nsubs, cap;
    uint32_t       refs; /* subscriptions + frames that point here */
    uint32_t       shard;
    char           id[];
};

/* ---- fl_ws.c, for the hub ---- */

/* A frame for payload (a text message), one reference. */
fl_ws_frame_t *fl_ws_frame_new(const void *payload, size_t len);
void           fl_ws_frame_unref(fl_ws_frame_t *f);

/* Queue telemetry frame f (shared) to c, or merge it into c's conflated
 * values when c is over limits.ws_send_buffer. */
void fl_ws_send_telemetry(fl_ws_conn_t *c, fl_ws_frame_t *f);
/* Queue f (not shared: c takes the reference). */
void fl_ws_send(fl_ws_conn_t *c, fl_ws_frame_t *f);
/* An {"type":"error"} message to c. */
void fl_ws_send_error(fl_ws_conn_t *c, const char *code, const char *fmt,
                      ...) fl_printf(3, 4);
/* Call fn for every open connection (not those closing). */
void fl_ws_each(void (*fn)(fl_ws_conn_t *c));
/* Write what the connections touched since the last call queued. */
void fl_ws_flush_dirty(void);

/* A subscribe starts for c: until fl_ws_op_done(), c's output is held
 * (what arrives is queued after a mark) and its further messages wait. */
void        fl_ws_op_begin(fl_ws_conn_t *c, fl_ws_op_t *op);
fl_ws_op_t *fl_ws_conn_op(const fl_ws_conn_t *c);
/* The op finished: splice its frames in front of what was held since it
 * started (dropping held telemetry the replay already covered), then let
 * c write and read again. */
void fl_ws_op_done(fl_ws_conn_t *c, fl_ws_frame_t **frames, int nframes,
                   fl_ws_dev_t *const *devs, const fl_ws_id_t *upto,
                   int ndevs);

/* The connection's subscriptions, kept by the hub. */
typedef struct {
    fl_ws_dev_t **devs;
    uint32_t      n, cap;
    uint32_t      star; /* 1 + its index in the hub's "*" list, or 0 */
} fl_ws_subs_t;
fl_ws_subs_t *fl_ws_conn_subs(fl_ws_conn_t *c);

/* ---- fl_wshub.c ---- */

int  fl_wshub_init(struct event_base *base);
void fl_wshub_destroy(void);

/* Handle a client's subscribe / unsubscribe (msg is the parsed message).
 * Answers itself (an error, or the op that ends in fl_ws_op_done). */
void fl_wshub_subscribe(fl_ws_conn_t *c, const cJSON *msg);
void fl_wshub_unsubscribe(fl_ws_conn_t *c, const cJSON *msg);
/* c is closing: drop its subscriptions and detach its op. */
void fl_wshub_conn_gone(fl_ws_conn_t *c);
/* once a tick: idle channels, ops waiting too long, the Pub/Sub
 * connection's heartbeat */
void fl_wshub_tick(int64_t now);

/* an id's text (1 to 20 digits, no sign) -> FL_OK */
int  fl_ws_id_parse(const char *s, size_t len, fl_ws_id_t *id);
void fl_ws_dev_unref(fl_ws_dev_t *d);

#endif
