/*
 * fl_mqttc.c - the native MQTT intake client: MQTT 5 over plain TCP on the
 * worker's libevent loop, spoken with fl_mqttpkt, appending to Redis
 * through an asynchronous hiredis connection of its own on the same loop.
 * fl_mqtt.c's paho client stays for TLS brokers; both follow the contract
 * written at the top of fl_mqtt.c (PUBACK after the append, the dedup
 * record, slot handoff, stop without unsubscribing), and share its pieces
 * through fl_mqttsh.h. What differs is how the work is scheduled:
 *
 * - The appends of all messages in flight are pipelined. paho hands one
 *   message at a time to a callback that must finish its Redis round trip
 *   before the next one is read; here the PUBLISHes that one socket read
 *   brings become one script call (fl_fanout_append_lua, up to
 *   APPEND_MAX_MESSAGES) at the end of the intake connection's output,
 *   which appends each to the stream, writes its dedup record and fans
 *   out its telemetry to the shadow, Pub/Sub and the resume list
 *   (fl_fanout.h) - a dashboard gets it without waiting for the
 *   consumer. The payload is parsed for that here, on the loop, up to
 *   ingest.parse_inline_max bytes (fan_prepare). Redis answers in order,
 *   so the messages sit in one FIFO (mc.head .. mc.tail) in delivery
 *   order: the answered ones leave from its head, the ones not yet sent
 *   start at mc.unsent. A dead letter (a payload over
 *   limits.max_payload_bytes) is a MULTI / XADD / HSET / [PEXPIRE] /
 *   EXEC of its own (send_append).
 * - A PUBACK is written when the reply says the message's XADD ran, never
 *   before: nothing is acknowledged that is not in the stream. Answers
 *   come in order, so PUBACKs leave in delivery order too.
 * - A DUP delivery first reads its slot (HGET). Its append may depend on
 *   the answer, so the FIFO stops sending at it until the answer came;
 *   the messages behind it wait in memory, and the stream order stays the
 *   delivery order. DUPs come only after a reconnect, a few at a time.
 * - Redis failing (a connection error, an error reply, no answer within
 *   redis.command_timeout) stops reading the MQTT socket: the broker then
 *   keeps at most our Receive Maximum of QoS 1 messages in flight to us
 *   and queues the rest in the session, as with paho. Unlike paho's
 *   receive thread, stuck in a callback, the loop goes on sending
 *   PINGREQs, so the broker keeps the connection (and its in-flight
 *   messages) however long Redis is away. The intake connection is made
 *   again with backoff (50 ms doubling to 1 s), and every message not
 *   answered is sent again in order with the look-up first: a failed
 *   answer may hide a transaction that ran.
 * - While reading is off, a PINGRESP cannot be read; the PINGRESP
 *   timeout only counts while the socket is read. A dead broker shows
 *   then as a failed write.
 * - Bounds: the broker may have at most mqtt.receive_max QoS 1 messages
 *   unacknowledged with us (we announce it). One more would be a protocol
 *   violation to answer with DISCONNECT 0x93, but Mosquitto before 2.0.13
 *   (Debian 12 ships 2.0.11) breaks it whenever a session has a backlog
 *   (upstream issue 2306, see fl_mqtt.c), and keeps those messages in
 *   flight across reconnects: a client that disconnects on it never gets
 *   past the first packets of the resumed session (seen in testing). So
 *   the limit is enforced by not reading: at receive_max unacknowledged
 *   messages reading stops until PUBACKs went out, and a broker that
 *   exceeds it is logged once per connection. QoS 0 messages have no such
 *   bound, so reading also stops while more than PENDING_MAX messages or
 *   PENDING_MAX_BYTES wait for Redis; with a socket read at a time past
 *   either bound, memory stays bounded. A packet is bounded by the
 *   Maximum Packet Size we announce (the codec refuses a larger one with
 *   0x95).
 * - A connection to the broker that ends leaves its messages in the FIFO:
 *   they are appended all the same (a QoS 0 message gets no second
 *   chance) but not acknowledged; the broker redelivers the QoS 1 ones
 *   with DUP on the next connection, behind them in the FIFO, and their
 *   records say they are in.
 * - Publishing (commands, desired deltas) goes out on the same
 *   connection. QoS 1 publishes take packet ids not used by a SUBSCRIBE or
 *   another publish in flight (the broker's ids for its PUBLISHes to us
 *   are a separate space), respect the broker's Receive Maximum, complete
 *   on PUBACK, and fail when the connection closes. QoS 2 is sent as QoS
 *   1 (no caller asks for it; the codec has no QoS 2 flow).
 *
 * Everything here runs on the loop but fl_mqttc_publish(), which a thread
 * other than the loop's hands over through a locked inbox and an eventfd.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>

#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "fl_enc.h"
#include "fl_fanout.h"
#include "fl_log.h"
#include "fl_mqttc.h"
#include "fl_mqttpkt.h"
#include "fl_mqttsh.h"
#include "fl_payload.h"
#include "fl_shadow.h"

#define TICK_MS               50   /* timers: keepalive, deadlines, backoff */
#define RECONNECT_MIN_MS      100
#define STABLE_CONNECTION_MS  5000 /* up this long: backoff starts over */
#define REDIS_BACKOFF_MIN_MS  50
#define REDIS_BACKOFF_MAX_MS  1000
#define REDIS_LOG_EVERY_MS    10000
#define OVERSIZE_LOG_EVERY_MS 1000
#define DEDUP_LOG_EVERY_MS    10000
#define DISCONNECT_TIMEOUT_MS 1000
#define FAST_DISCONNECT_MS    100
#define PUB_MAX_QUEUE         1000
#define PUB_MAX_BYTES         (16 * 1024 * 1024)
#define PENDING_MAX           10000 /* messages waiting for Redis */
#define PENDING_MAX_BYTES     (64 * 1024 * 1024)
#define MAX_PACKET_FACTOR     16 /* as fl_mqtt.c */
#define MAX_PACKET_FLOOR      (1024 * 1024)
#define MQTT_MAX_PACKET       268435455
#define RC_SESSION_TAKEN_OVER   0x8E
#define APPEND_MAX_MESSAGES   64 /* per script call */
#define APPEND_MAX_BYTES      (1024 * 1024)

typedef enum {
    C_IDLE,          /* not connected; next attempt at reconnect_at */
    C_CONNECTING,    /* TCP connect, CONNECT sent, waiting for CONNACK */
    C_UP,            /* CONNACK 0 received */
    C_DISCONNECTING, /* stopping: DISCONNECT written, flushing */
    C_CLOSED,        /* stopped */
} cstate_t;

typedef enum { E_MSG, E_DEL } ekind_t;

/* One job of the intake connection, in delivery order (see the top). */
typedef struct entry_s entry_t;
struct entry_s {
    entry_t           *next;
    ekind_t            kind;
    unsigned           conn;      /* the broker connection it came on */
    uint16_t           packet_id; /* 0: QoS 0, no record, no PUBACK */
    uint8_t            check;     /* look the record up before appending */
    uint8_t            looking;   /* HGET sent, its answer not yet here */
    uint8_t            tried;     /* an append of it failed before */
    uint8_t            multi_err; /* MULTI refused: the XADD ran alone */
    uint8_t            xadd_id;   /* ... and answered with an id */
    uint8_t            expire;    /* the transaction has a PEXPIRE */
    int                group;     /* messages its script call appends */
    int                oversize;
    int64_t            sent_at; /* monotonic ms, 0 = not sent */
    char               rx[24];  /* arrival wall ms */
    char              *topic;
    size_t             tlen;
    unsigned char     *payload;
    size_t             plen;
    fl_mqttsh_record_t rec;
    fl_resp_t          fan; /* its fan-out arguments, argc 0: none */
};

/* One publish of ours (commands, desired deltas). */
typedef struct pub_s pub_t;
struct pub_s {
    pub_t         *next;
    char          *topic;
    void          *payload;
    size_t         len;
    int            qos;
    int            retain;
    uint32_t       expiry_s;
    uint16_t       packet_id; /* in flight, QoS 1 */
    fl_mqtt_pub_cb cb;
    void          *ud;
};

static struct {
    /* from the config */
    struct event_base *base;
    fl_shm_worker_t   *stats;
    int                slot;
    uint32_t           generation;
    char              *uri;
    char               host[256];
    int                port;
    char              *client_id;
    char              *username;
    char              *password;
    char             **topics; /* as subscribed: $share/{group}/... */
    int                ntopics;
    int                qos;
    int64_t            keepalive_ms;
    int64_t            connect_timeout_ms;
    int64_t            reconnect_max_ms;
    int                receive_max;
    uint32_t           session_expiry_s;
    uint32_t           max_packet;
    char              *redis_host;
    int                redis_port;
    char              *redis_password;
    int64_t            redis_connect_ms;
    int64_t            redis_command_ms;
    char              *ingest_key, *dead_key;
    char               ingest_maxlen[24], dead_maxlen[24];
    fl_mqttsh_stream_t stream;
    char              *dedup_key; /* {prefix}dedup:{client id} */
    unsigned           dedup_slots;
    char               dedup_ttl[24];
    pthread_t          loop_thread;

    /* appending and fanning out in one script (fl_fanout.h) */
    int                 fan;     /* fan out at append (not FLEETD_...=0) */
    int64_t             fan_max; /* ingest.parse_inline_max */
    fl_payload_limits_t lim;
    int64_t             retention_ms;
    int64_t             skew_us; /* limits.max_clock_skew */
    int                 shards;
    char               *wsid_key, *channel_prefix;
    fl_resp_t           script_argv; /* ARGV[3] .. [8] */
    int                 script_cached; /* EVAL done on this connection */
    int                 appending;     /* an append call is in flight */
    char                script_sha[48];
    fl_fanout_log_t     fan_log; /* fan-outs that failed in the script */

    struct evdns_base *dns;
    struct event      *ev_tick;

    /* the broker connection */
    cstate_t            state;
    struct bufferevent *bev;
    fl_mqttrx_t         rx;
    fl_sbuf_t           out;
    unsigned            conn; /* connection serial */
    int                 reading;
    int64_t             connect_deadline;
    int64_t             reconnect_at;
    int64_t             backoff_ms;
    int64_t             up_since;
    int64_t             last_tx;
    int64_t             ping_at; /* PINGREQ outstanding since, 0 = none */
    int64_t             keepalive_eff;
    int64_t             disconnect_deadline;
    int                 inflight_in; /* broker's QoS 1 not acknowledged */
    int                 rm_warned;   /* ... more than receive_max: said so */
    int                 server_receive_max;
    uint32_t            server_max_packet;
    int                 sub_pending;
    int64_t             sub_at;
    int64_t             sub_backoff_ms;
    uint16_t            sub_id; /* SUBSCRIBE in flight, 0 = none */
    uint16_t            next_id;
    pid_t               waiting_for;
    unsigned            rand_state;
    int                 stopping;
    int                 fast;
    int64_t             stop_at;

    /* our publishes: queued, then (QoS 1) in flight until PUBACK */
    pub_t *pub_head, *pub_tail;
    pub_t *fly_head; /* in flight, any order */
    int    pub_count;   /* queued + in flight */
    size_t pub_bytes;
    int    fly_count;

    /* a publish from another thread (see fl_mqttc_publish) */
    pthread_mutex_t inbox_lock;
    pub_t          *inbox_head, *inbox_tail;
    int             inbox_count;
    int             open; /* atomic: publishes are accepted */
    int             inbox_fd;
    struct event   *ev_inbox;

    /* the intake's Redis connection and its FIFO */
    redisAsyncContext *redis;
    int                rd_ready;        /* connected (and AUTH answered) */
    int64_t            rd_connect_deadline;
    int64_t            rd_retry_at;     /* next connect, 0 = none due */
    int64_t            rd_backoff_ms;
    int                rd_resolving;
    struct evdns_getaddrinfo_request *rd_req;
    int64_t            fail_since; /* monotonic ms, 0 = Redis fine */
    int64_t            fail_logged_at;
    uint64_t           fail_attempts;
    char               err[512];
    entry_t           *head, *tail, *unsent;
    int                npending;
    size_t             pending_bytes;
    int64_t            expire_at; /* next PEXPIRE of the record */
    int64_t            oversize_logged_at;
    uint64_t           oversize_quiet;
    int64_t            unrecorded_logged_at;
    uint64_t           unrecorded_quiet;
} mc = {.inbox_lock = PTHREAD_MUTEX_INITIALIZER};

static void redis_pump(void);
static void redis_fail(int free_ctx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void conn_close(int reason, int takeover, const char *why);
static void read_update(void);
static void maybe_disconnect(void);
static void pub_flush(void);

/* ---- small helpers ---- */

static char *concat(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char  *s = fl_alloc(la + lb + 1);

    memcpy(s, a, la);
    memcpy(s + la, b, lb + 1);
    return s;
}

/* Write what the codec put in mc.out to the broker. */
static void mqtt_send(void)
{
    if (mc.out.len == 0)
        return;
    if (mc.bev && bufferevent_write(mc.bev, mc.out.p, mc.out.len) == 0)
        mc.last_tx = fl_now_ms();
    mc.out.len = 0;
}

/* Packet ids for our SUBSCRIBEs and QoS 1 publishes: 1..65535, skipping
 * those in flight. */
static uint16_t id_take(void)
{
    for (int tries = 0; tries < 65535; tries++) {
        uint16_t id = mc.next_id == 0 ? 1 : mc.next_id;
        int      used = id == mc.sub_id;

        mc.next_id = (uint16_t)(id + 1);
        for (pub_t *p = mc.fly_head; p && !used; p = p->next)
            used = p->packet_id == id;
        if (!used)
            return id;
    }
    return 0;
}

/* ---- publishes ---- */

static void pub_free(pub_t *p)
{
    free(p->topic);
    free(p->payload);
    free(p);
}

static void pub_fail_list(pub_t *list, const char *why)
{
    while (list) {
        pub_t *p = list;
        list = p->next;
        if (p->cb)
            p->cb(0, why, p->ud);
        pub_free(p);
    }
}

/* Fail every publish queued or in flight (the callbacks may publish
 * again: the lists are taken first). */
static void pub_fail_all(const char *why)
{
    pub_t *q = mc.pub_head, *f = mc.fly_head;
    int    n = mc.pub_count;

    mc.pub_head = mc.pub_tail = mc.fly_head = NULL;
    mc.pub_count = mc.fly_count = 0;
    mc.pub_bytes = 0;
    if (n)
        fl_warn("%d MQTT publishes not completed: %s", n, why);
    pub_fail_list(f, why);
    pub_fail_list(q, why);
}

/* Write the queued publishes the broker's Receive Maximum lets through. */
static void pub_flush(void)
{
    while (mc.state == C_UP && mc.pub_head &&
           (mc.pub_head->qos == 0 || mc.fly_count < mc.server_receive_max)) {
        pub_t        *p = mc.pub_head;
        fl_mqtt_str_t t = {p->topic, strlen(p->topic)};
        size_t        before = mc.out.len;
        int           qos = p->qos > 0 ? 1 : 0, rc;

        mc.pub_head = p->next;
        if (mc.pub_head == NULL)
            mc.pub_tail = NULL;
        p->next = NULL;
        p->packet_id = qos ? id_take() : 0;
        rc = fl_mqtt_put_publish_expiry(&mc.out, t, qos,
                                        p->retain ? FL_MQTT_RETAIN : 0,
                                        p->packet_id, p->payload, p->len,
                                        p->expiry_s);
        if (rc == FL_OK && mc.server_max_packet &&
            mc.out.len - before > mc.server_max_packet) {
            mc.out.len = before;
            rc = FL_ERROR;
        }
        if (rc != FL_OK || (qos && p->packet_id == 0)) {
            mc.pub_count--;
            mc.pub_bytes -= p->len;
            fl_warn("publish to %s via mqtt broker %s refused: %s", p->topic,
                    mc.uri,
                    rc != FL_OK ? "packet too large for the broker"
                                : "no packet id free");
            if (p->cb)
                p->cb(0, "the publish cannot be sent", p->ud);
            pub_free(p);
            continue;
        }
        mqtt_send();
        if (qos) {
            p->next = mc.fly_head;
            mc.fly_head = p;
            mc.fly_count++;
            continue;
        }
        mc.pub_count--;
        mc.pub_bytes -= p->len;
        if (p->cb)
            p->cb(1, NULL, p->ud);
        pub_free(p);
    }
}

static void pub_acked(uint16_t id, int reason)
{
    pub_t **pp = &mc.fly_head, *p;
    char    why[64];

    while (*pp && (*pp)->packet_id != id)
        pp = &(*pp)->next;
    if ((p = *pp) == NULL)
        return; /* not ours (any more): a PUBACK after a reconnect */
    *pp = p->next;
    mc.fly_count--;
    mc.pub_count--;
    mc.pub_bytes -= p->len;
    /* 0x10 No matching subscribers is a success */
    if (reason >= 0x80) {
        snprintf(why, sizeof(why), "the broker refused it: reason 0x%02x",
                 reason);
        fl_warn("publish to %s via mqtt broker %s: %s", p->topic, mc.uri, why);
    }
    if (p->cb)
        p->cb(reason < 0x80, reason < 0x80 ? NULL : why, p->ud);
    pub_free(p);
    pub_flush();
    if (mc.stopping)
        maybe_disconnect();
}

static void pub_enqueue(pub_t *p)
{
    if (mc.pub_tail)
        mc.pub_tail->next = p;
    else
        mc.pub_head = p;
    mc.pub_tail = p;
    mc.pub_count++;
    mc.pub_bytes += p->len;
    pub_flush();
}

/* Publishes handed over by other threads. */
static void on_inbox(evutil_socket_t fd, short what, void *arg)
{
    uint64_t n;
    pub_t   *list;

    (void)what, (void)arg;
    if (read(fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
        fl_log_errno(FL_LOG_ERROR, errno, "read() of the mqtt eventfd failed");
    pthread_mutex_lock(&mc.inbox_lock);
    list = mc.inbox_head;
    mc.inbox_head = mc.inbox_tail = NULL;
    mc.inbox_count = 0;
    pthread_mutex_unlock(&mc.inbox_lock);
    while (list) {
        pub_t *p = list;
        list = p->next;
        p->next = NULL;
        if (mc.state != C_UP || mc.stopping) {
            if (p->cb)
                p->cb(0, "the MQTT connection is closed", p->ud);
            pub_free(p);
        } else {
            pub_enqueue(p);
        }
    }
}

int fl_mqttc_publish(const char *topic, const void *payload, size_t len,
                     int qos, int retain, uint32_t expiry_s, fl_mqtt_pub_cb cb,
                     void *ud)
{
    pub_t   *p;
    int      rc = FL_OK;
    uint64_t one = 1;

    if (!__atomic_load_n(&mc.open, __ATOMIC_SEQ_CST))
        return FL_ERROR;
    p = fl_calloc(1, sizeof(*p));
    p->topic = fl_strdup(topic);
    p->payload = fl_alloc(len ? len : 1);
    if (len)
        memcpy(p->payload, payload, len);
    p->len = len;
    p->qos = qos;
    p->retain = retain != 0;
    p->expiry_s = expiry_s;
    p->cb = cb;
    p->ud = ud;

    if (pthread_equal(pthread_self(), mc.loop_thread)) {
        if (mc.state != C_UP || mc.stopping)
            rc = FL_ERROR;
        else if (mc.pub_count >= PUB_MAX_QUEUE ||
                 mc.pub_bytes + len > PUB_MAX_BYTES)
            rc = FL_AGAIN;
        if (rc != FL_OK) {
            pub_free(p);
            return rc;
        }
        pub_enqueue(p);
        return FL_OK;
    }
    pthread_mutex_lock(&mc.inbox_lock);
    if (mc.inbox_count >= PUB_MAX_QUEUE) {
        rc = FL_AGAIN;
    } else {
        if (mc.inbox_tail)
            mc.inbox_tail->next = p;
        else
            mc.inbox_head = p;
        mc.inbox_tail = p;
        mc.inbox_count++;
    }
    pthread_mutex_unlock(&mc.inbox_lock);
    if (rc != FL_OK) {
        pub_free(p);
        return rc;
    }
    if (write(mc.inbox_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        fl_log_errno(FL_LOG_ERROR, errno, "write() to the mqtt eventfd failed");
    return FL_OK;
}

/* Publishes are taken while connected and not stopping. */
static void open_update(void)
{
    __atomic_store_n(&mc.open, mc.state == C_UP && !mc.stopping,
                     __ATOMIC_SEQ_CST);
}

/* ---- the FIFO of appends ---- */

static void entry_free(entry_t *e)
{
    fl_resp_free(&e->fan);
    free(e); /* topic and payload are in the same block (on_publish) */
}

/* What an entry holds in memory, for PENDING_MAX_BYTES. */
static size_t entry_bytes(const entry_t *e)
{
    return e->tlen + e->plen + sizeof(*e) + e->fan.body.len;
}

static void entry_push(entry_t *e)
{
    if (mc.tail)
        mc.tail->next = e;
    else
        mc.head = e;
    mc.tail = e;
    if (mc.unsent == NULL)
        mc.unsent = e;
    mc.npending++;
    mc.pending_bytes += entry_bytes(e);
}

/* The head is answered: take it out. */
static void entry_pop(void)
{
    entry_t *e = mc.head;

    mc.head = e->next;
    if (mc.head == NULL)
        mc.tail = NULL;
    if (mc.unsent == e)
        mc.unsent = e->next;
    mc.npending--;
    mc.pending_bytes -= entry_bytes(e);
    entry_free(e);
}

/* At most one line per OVERSIZE_LOG_EVERY_MS: a device can send many. */
static void oversize_log(const entry_t *e)
{
    int64_t now = fl_now_ms();
    char    t[129];

    if (now - mc.oversize_logged_at < OVERSIZE_LOG_EVERY_MS) {
        mc.oversize_quiet++;
        return;
    }
    fl_warn("message on %s dead-lettered: payload of %zu bytes exceeds "
            "limits.max_payload_bytes (%" PRId64 ")%s",
            fl_mqttsh_safe_topic(t, sizeof(t), e->topic, e->tlen), e->plen,
            mc.stream.max_payload,
            mc.oversize_quiet ? " (and earlier ones not logged)" : "");
    mc.oversize_logged_at = now;
    mc.oversize_quiet = 0;
}

static void unrecorded_log(const char *why)
{
    int64_t now = fl_now_ms();

    if (mc.unrecorded_logged_at &&
        now - mc.unrecorded_logged_at < DEDUP_LOG_EVERY_MS) {
        mc.unrecorded_quiet++;
        return;
    }
    fl_warn("HSET %s on redis %s:%d failed: %s; the message is in the stream "
            "but a broker redelivery of it would be appended again%s",
            mc.dedup_key, mc.redis_host, mc.redis_port, why,
            mc.unrecorded_quiet ? " (and earlier ones not logged)" : "");
    mc.unrecorded_logged_at = now;
    mc.unrecorded_quiet = 0;
}

/* Redis answered after an outage: say so, read the broker again. */
static void redis_recovered(void)
{
    if (mc.fail_since == 0)
        return;
    fl_shm_store(mc.stats->dep[FL_DEP_REDIS], FL_DEP_UP);
    fl_info("redis %s:%d is back: MQTT intake resumed after %" PRId64
            " ms, %" PRIu64 " failed attempts",
            mc.redis_host, mc.redis_port, fl_now_ms() - mc.fail_since,
            mc.fail_attempts);
    mc.fail_since = 0;
    mc.fail_attempts = 0;
    mc.rd_backoff_ms = REDIS_BACKOFF_MIN_MS;
    read_update();
}

/*
 * The head message is in the stream (found: its record said so, without
 * an append by us this time): count it and acknowledge it, if the
 * connection it came on is still the one we have.
 */
static void entry_done(int found)
{
    entry_t *e = mc.head;
    char     t[129];

    if (e->kind == E_MSG) {
        if (found && !e->tried) {
            fl_shm_add(mc.stats->mqtt_duplicates, 1);
            fl_debug("message %u on %s redelivered by the broker to \"%s\" "
                     "is in the stream already: acknowledged, not appended "
                     "again",
                     e->packet_id,
                     fl_mqttsh_safe_topic(t, sizeof(t), e->topic, e->tlen),
                     mc.client_id);
        } else {
            if (found)
                fl_info("message %u on %s: the append whose reply was lost "
                        "had gone through; not appended again",
                        e->packet_id,
                        fl_mqttsh_safe_topic(t, sizeof(t), e->topic, e->tlen));
            if (e->oversize) {
                fl_shm_add(mc.stats->mqtt_oversize, 1);
                oversize_log(e);
            } else {
                fl_shm_add(mc.stats->mqtt_enqueued, 1);
            }
        }
        if (e->packet_id && e->conn == mc.conn && mc.bev &&
            (mc.state == C_UP || mc.state == C_CONNECTING)) {
            fl_mqtt_put_puback(&mc.out, e->packet_id, 0);
            mqtt_send();
            mc.inflight_in--;
        }
    }
    entry_pop();
    redis_recovered();
    read_update();
    if (mc.stopping) {
        maybe_disconnect();
        if (mc.npending == 0)
            fl_worker_drain_check();
    }
}

/* Is reply an answer of the current intake connection? A failed one's
 * late answers (NULL as hiredis frees it) are not. */
static int current(const redisAsyncContext *c)
{
    return c == mc.redis && mc.redis != NULL;
}

static void on_del(redisAsyncContext *c, void *r, void *priv)
{
    redisReply *reply = r;

    (void)priv;
    if (!current(c))
        return;
    if (reply == NULL || reply->type != REDIS_REPLY_INTEGER) {
        redis_fail(reply != NULL, "DEL %s to redis %s:%d failed: %s",
                   mc.dedup_key, mc.redis_host, mc.redis_port,
                   reply == NULL ? c->errstr
                   : reply->type == REDIS_REPLY_ERROR ? reply->str
                                                      : "unexpected reply");
        return;
    }
    if (reply->integer > 0)
        fl_info("new mqtt session \"%s\": the records of the old one deleted",
                mc.client_id);
    mc.expire_at = 0; /* the next HSET makes a key without a TTL */
    entry_done(0);
}

static void on_lookup(redisAsyncContext *c, void *r, void *priv)
{
    redisReply *reply = r;
    entry_t    *e = priv;
    int         found;

    if (!current(c))
        return;
    if (reply != NULL && reply->type == REDIS_REPLY_NIL)
        found = 0;
    else if (reply != NULL && reply->type == REDIS_REPLY_STRING)
        found = reply->len == strlen(e->rec.value) &&
                memcmp(reply->str, e->rec.value, reply->len) == 0;
    else if (reply != NULL && reply->type == REDIS_REPLY_ERROR &&
             strncmp(reply->str, "WRONGTYPE", 9) == 0)
        found = 0; /* not our key: no record; the append warns */
    else {
        redis_fail(reply != NULL, "HGET %s to redis %s:%d failed: %s",
                   mc.dedup_key, mc.redis_host, mc.redis_port,
                   reply == NULL ? c->errstr
                   : reply->type == REDIS_REPLY_ERROR ? reply->str
                                                      : "unexpected reply");
        return;
    }
    e->looking = 0;
    e->check = 0;
    if (found) {
        /* everything sent before it was answered before it: e is the
         * head, and the FIFO stopped sending at it */
        mc.unsent = e->next;
        entry_done(1);
    }
    redis_pump();
}

static void on_multi(redisAsyncContext *c, void *r, void *priv)
{
    redisReply *reply = r;
    entry_t    *e = priv;

    if (!current(c))
        return;
    if (reply == NULL) {
        redis_fail(0, "MULTI/XADD %s to redis %s:%d failed: %s",
                   e->oversize ? mc.dead_key : mc.ingest_key, mc.redis_host,
                   mc.redis_port, c->errstr);
        return;
    }
    e->multi_err = reply->type == REDIS_REPLY_ERROR;
}

static void on_xadd_in_multi(redisAsyncContext *c, void *r, void *priv)
{
    redisReply *reply = r;
    entry_t    *e = priv;

    if (!current(c) || reply == NULL)
        return; /* the EXEC's callback sees the failure too */
    e->xadd_id = reply->type == REDIS_REPLY_STRING;
}

/* The EXEC of a recorded append: as fl_mqtt.c redis_append_recorded(). */
static void on_exec(redisAsyncContext *c, void *r, void *priv)
{
    redisReply       *ex = r;
    entry_t          *e = priv;
    int               n = e->expire ? 3 : 2, appended, recorded;
    const redisReply *bad = NULL;

    if (!current(c))
        return;
    if (ex == NULL) {
        redis_fail(0, "MULTI/XADD %s to redis %s:%d failed: %s",
                   e->oversize ? mc.dead_key : mc.ingest_key, mc.redis_host,
                   mc.redis_port, c->errstr);
        return;
    }
    appended = (ex->type == REDIS_REPLY_ARRAY && ex->elements >= 1 &&
                ex->element[0]->type == REDIS_REPLY_STRING) ||
               (e->multi_err && e->xadd_id);
    recorded = ex->type == REDIS_REPLY_ARRAY && ex->elements == (size_t)n &&
               ex->element[1]->type == REDIS_REPLY_INTEGER;
    for (size_t i = 0;
         ex->type == REDIS_REPLY_ARRAY && i < ex->elements && bad == NULL; i++)
        if (ex->element[i]->type == REDIS_REPLY_ERROR)
            bad = ex->element[i];
    if (bad == NULL)
        bad = ex;
    if (!appended) {
        redis_fail(1, "MULTI/XADD %s to redis %s:%d failed: %s",
                   e->oversize ? mc.dead_key : mc.ingest_key, mc.redis_host,
                   mc.redis_port,
                   bad->type == REDIS_REPLY_ERROR ? bad->str
                                                  : "unexpected reply");
        return;
    }
    if (!recorded)
        unrecorded_log(bad->type == REDIS_REPLY_ERROR ? bad->str
                                                      : "unexpected reply");
    else if (e->expire)
        mc.expire_at = fl_now_ms() + FL_MQTTSH_DEDUP_REFRESH_MS;
    entry_done(0);
}

/* The bare XADD of a QoS 0 message. */
static void on_xadd(redisAsyncContext *c, void *r, void *priv)
{
    redisReply *reply = r;
    entry_t    *e = priv;

    if (!current(c))
        return;
    if (reply == NULL || reply->type != REDIS_REPLY_STRING) {
        redis_fail(reply != NULL, "XADD %s to redis %s:%d failed: %s",
                   e->oversize ? mc.dead_key : mc.ingest_key, mc.redis_host,
                   mc.redis_port,
                   reply == NULL ? c->errstr
                   : reply->type == REDIS_REPLY_ERROR ? reply->str
                                                      : "unexpected reply");
        return;
    }
    entry_done(0);
}

/* Send e's append: FL_OK, or FL_ERROR when hiredis refused the command
 * (the context is going away). */
static int send_append(entry_t *e)
{
    const char  *argv[FL_MQTTSH_ARGV_MAX];
    size_t       lens[FL_MQTTSH_ARGV_MAX];
    char         error[160];
    int          argc, oversize;
    const char  *multi[1] = {"MULTI"}, *exec[1] = {"EXEC"};
    const size_t multi_len[1] = {5}, exec_len[1] = {4};
    const char  *hset[4] = {"HSET", mc.dedup_key, e->rec.field, e->rec.value};
    const size_t hset_lens[4] = {4, strlen(mc.dedup_key), strlen(e->rec.field),
                                 strlen(e->rec.value)};
    const char  *pexp[3] = {"PEXPIRE", mc.dedup_key, mc.dedup_ttl};
    const size_t pexp_lens[3] = {7, strlen(mc.dedup_key),
                                 strlen(mc.dedup_ttl)};
    int64_t      now = fl_now_ms();

    argc = fl_mqttsh_xadd_argv(&mc.stream, e->topic, e->tlen, e->payload,
                               e->plen, e->rx, error, sizeof(error), argv,
                               lens, &oversize);
    e->multi_err = e->xadd_id = 0;
    if (e->packet_id == 0)
        return redisAsyncCommandArgv(mc.redis, on_xadd, e, argc, argv, lens) ==
                       REDIS_OK
                   ? FL_OK
                   : FL_ERROR;
    e->expire = now >= mc.expire_at;
    if (redisAsyncCommandArgv(mc.redis, on_multi, e, 1, multi, multi_len) !=
            REDIS_OK ||
        redisAsyncCommandArgv(mc.redis, on_xadd_in_multi, e, argc, argv,
                              lens) != REDIS_OK ||
        redisAsyncCommandArgv(mc.redis, NULL, NULL, 4, hset, hset_lens) !=
            REDIS_OK ||
        (e->expire && redisAsyncCommandArgv(mc.redis, NULL, NULL, 3, pexp,
                                            pexp_lens) != REDIS_OK) ||
        redisAsyncCommandArgv(mc.redis, on_exec, e, 1, exec, exec_len) !=
            REDIS_OK)
        return FL_ERROR;
    /* the PEXPIRE is due once a minute: not again for the next ones in
     * this pipeline (a failure makes it due again) */
    if (e->expire)
        mc.expire_at = now + FL_MQTTSH_DEDUP_REFRESH_MS;
    return FL_OK;
}

/* The reply of an append script call (fl_fanout.h): the messages of the
 * call leave the FIFO's head in order, up to one that failed. */
static void on_append(redisAsyncContext *c, void *r, void *priv)
{
    redisReply *reply = r;
    entry_t    *e = priv;
    int         n = e->group, expire = e->expire;
    uint64_t    failed, published;

    if (!current(c))
        return;
    mc.appending = 0;
    if (reply == NULL) {
        redis_fail(0, "append of %d message%s to redis %s:%d failed: %s", n,
                   n == 1 ? "" : "s", mc.redis_host, mc.redis_port,
                   c->errstr);
        return;
    }
    if (fl_fanout_reply_head(reply, &mc.fan_log, "intake", &failed,
                             &published) != 0) {
        redis_fail(1, "append of %d message%s to redis %s:%d failed: %s", n,
                   n == 1 ? "" : "s", mc.redis_host, mc.redis_port,
                   reply->type == REDIS_REPLY_ERROR ? reply->str
                                                    : "unexpected reply");
        return;
    }
    /* what the script published counts now: those messages are shown
     * whether or not they are ever stored (the consumer does not count
     * the entries marked f = 1); a fan-out that failed is counted as such */
    fl_shm_add(mc.stats->ingest_fanout_failures, failed);
    fl_shm_add(mc.stats->ingest_published, published);
    for (int i = 0; i < n && mc.head; i++) {
        const size_t      k = (size_t)i + FL_FANOUT_REPLY_HEAD;
        const redisReply *x = k < reply->elements ? reply->element[k] : NULL;

        if (x == NULL || x->type != REDIS_REPLY_STRING || x->str[0] == '!') {
            redis_fail(1, "XADD %s to redis %s:%d failed: %s", mc.ingest_key,
                       mc.redis_host, mc.redis_port,
                       x && x->type == REDIS_REPLY_STRING
                           ? x->str + 1
                           : "no answer for the message");
            return;
        }
        if (x->str[0] == 'U')
            unrecorded_log(x->str + 1);
        entry_done(0);
    }
    if (expire)
        mc.expire_at = fl_now_ms() + FL_MQTTSH_DEDUP_REFRESH_MS;
    redis_pump(); /* what came while it was in flight, in one call */
}

/* Can e go into an append script call? Not a look-up first, a deletion
 * or a dead letter (send_append). */
static int appendable(const entry_t *e)
{
    return e->kind == E_MSG && !e->check && !e->oversize;
}

/*
 * One script call (fl_fanout_append_lua) appending e0 and the appendable
 * messages after it, up to APPEND_MAX_MESSAGES / _BYTES: their XADDs,
 * records and fan-outs in one round trip. Returns the number of messages
 * it takes, or -1 when hiredis refused the command.
 */
static int send_script(entry_t *e0, int64_t now)
{
    fl_resp_t r = {0};
    entry_t  *e = e0;
    int       n = 0, rec = 0, rc;
    size_t    bytes = 0, len;
    char     *cmd;

    for (; e && appendable(e) && (n == 0 || (n < APPEND_MAX_MESSAGES &&
                                             bytes < APPEND_MAX_BYTES));
         e = e->next) {
        n++;
        bytes += e->tlen + e->plen + e->fan.body.len;
        rec |= e->packet_id != 0;
    }
    e0->group = n;
    e0->expire = rec && now >= mc.expire_at;
    fl_resp_str(&r, mc.script_cached ? "EVALSHA" : "EVAL");
    fl_resp_str(&r, mc.script_cached ? mc.script_sha : fl_fanout_append_lua);
    fl_resp_i64(&r, 3);
    fl_resp_str(&r, mc.ingest_key);
    fl_resp_str(&r, mc.dedup_key);
    fl_resp_str(&r, mc.wsid_key);
    fl_resp_str(&r, mc.ingest_maxlen);
    fl_resp_str(&r, e0->expire ? mc.dedup_ttl : "");
    fl_resp_append(&r, &mc.script_argv);
    fl_resp_i64(&r, n);
    e = e0;
    for (int i = 0; i < n; i++, e = e->next) {
        fl_resp_arg(&r, e->topic, e->tlen);
        fl_resp_arg(&r, e->plen ? (const char *)e->payload : "", e->plen);
        fl_resp_str(&r, e->rx);
        fl_resp_str(&r, e->packet_id ? e->rec.field : "");
        fl_resp_str(&r, e->packet_id ? e->rec.value : "");
        if (e->fan.argc)
            fl_resp_append(&r, &e->fan);
        else
            fl_fanout_message(&r, NULL, NULL, 0, 0, NULL, NULL);
        e->sent_at = now;
    }
    cmd = fl_resp_finish(&r, &len);
    rc = redisAsyncFormattedCommand(mc.redis, on_append, e0, cmd, len);
    free(cmd);
    if (rc != REDIS_OK)
        return -1;
    mc.script_cached = 1; /* EVAL ran first on this connection */
    mc.appending = 1;
    if (e0->expire)
        mc.expire_at = now + FL_MQTTSH_DEDUP_REFRESH_MS;
    return n;
}

/* Send what the FIFO holds, in order, up to a look-up in progress. */
static void redis_pump(void)
{
    while (mc.redis && mc.rd_ready && mc.unsent) {
        entry_t *e = mc.unsent;
        int      rc;

        if (e->looking)
            return; /* the messages behind it wait for its answer */
        /* one append call in flight at a time: the messages that come
         * meanwhile go in the next one, so a busy worker sends fewer,
         * bigger calls (each costs Redis a fixed part), and an idle one
         * sends each message at once */
        if (appendable(e) && mc.appending)
            return;
        e->sent_at = fl_now_ms();
        if (e->kind == E_DEL) {
            const char  *argv[2] = {"DEL", mc.dedup_key};
            const size_t lens[2] = {3, strlen(mc.dedup_key)};

            rc = redisAsyncCommandArgv(mc.redis, on_del, e, 2, argv, lens) ==
                         REDIS_OK
                     ? FL_OK
                     : FL_ERROR;
        } else if (e->check) {
            const char  *argv[3] = {"HGET", mc.dedup_key, e->rec.field};
            const size_t lens[3] = {4, strlen(mc.dedup_key),
                                    strlen(e->rec.field)};

            rc = redisAsyncCommandArgv(mc.redis, on_lookup, e, 3, argv,
                                       lens) == REDIS_OK
                     ? FL_OK
                     : FL_ERROR;
            if (rc == FL_OK) {
                e->looking = 1;
                return;
            }
        } else if (appendable(e)) {
            int n = send_script(e, e->sent_at);

            if (n < 0) {
                redis_fail(0, "redis %s:%d refused a command: %s",
                           mc.redis_host, mc.redis_port, mc.redis->errstr);
                return;
            }
            while (n-- > 0)
                mc.unsent = mc.unsent->next;
            continue;
        } else {
            rc = send_append(e);
        }
        if (rc != FL_OK) {
            redis_fail(0, "redis %s:%d refused a command: %s", mc.redis_host,
                       mc.redis_port, mc.redis->errstr);
            return;
        }
        mc.unsent = e->next;
    }
}

/* ---- the intake's Redis connection ---- */

/* The intake connection takes commands. With nothing waiting, Redis is
 * back as far as we can tell (dep[] must not stay down on an idle
 * worker); otherwise the first answer says so. */
static void redis_ready(void)
{
    mc.rd_ready = 1;
    mc.script_cached = 0; /* the first append call EVALs the script */
    mc.rd_connect_deadline = 0;
    if (mc.head == NULL)
        redis_recovered();
    redis_pump();
}

static void on_rd_connect(const redisAsyncContext *c, int status)
{
    if (c != mc.redis)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this */
        redis_fail(0, "connect() to redis %s:%d failed: %s", mc.redis_host,
                   mc.redis_port, c->errstr);
        return;
    }
    if (mc.redis_password[0] == '\0')
        redis_ready();
}

static void on_rd_disconnect(const redisAsyncContext *c, int status)
{
    if (c != mc.redis)
        return;
    redis_fail(0, "connection to redis %s:%d lost: %s", mc.redis_host,
               mc.redis_port, status == REDIS_OK ? "closed" : c->errstr);
}

static void on_auth(redisAsyncContext *c, void *r, void *priv)
{
    redisReply *reply = r;

    (void)priv;
    if (!current(c))
        return;
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        redis_fail(reply != NULL, "AUTH to redis %s:%d failed: %s",
                   mc.redis_host, mc.redis_port,
                   reply ? reply->str : c->errstr);
        return;
    }
    redis_ready();
}

static void redis_connect_addr(const char *ip)
{
    redisAsyncContext *c = redisAsyncConnect(ip, mc.redis_port);

    if (c == NULL || c->err) {
        char why[256];

        snprintf(why, sizeof(why), "%s",
                 c ? c->errstr : "cannot allocate a context");
        if (c)
            redisAsyncFree(c);
        redis_fail(0, "connect() to redis %s:%d failed: %s", mc.redis_host,
                   mc.redis_port, why);
        return;
    }
    redisLibeventAttach(c, mc.base);
    redisAsyncSetConnectCallback(c, on_rd_connect);
    redisAsyncSetDisconnectCallback(c, on_rd_disconnect);
    mc.redis = c;
    mc.rd_ready = 0;
    mc.rd_connect_deadline = fl_now_ms() + mc.redis_connect_ms;
    if (mc.redis_password[0]) {
        const char  *argv[2] = {"AUTH", mc.redis_password};
        const size_t lens[2] = {4, strlen(mc.redis_password)};

        redisAsyncCommandArgv(c, on_auth, NULL, 2, argv, lens);
    }
}

static void on_rd_resolved(int err, struct evutil_addrinfo *ai, void *arg)
{
    char ip[INET6_ADDRSTRLEN] = "";

    (void)arg;
    mc.rd_req = NULL;
    mc.rd_resolving = 0;
    if (err == EVUTIL_EAI_CANCEL)
        return;
    if (err == 0 && ai != NULL) {
        if (ai->ai_family == AF_INET)
            evutil_inet_ntop(AF_INET,
                             &((struct sockaddr_in *)ai->ai_addr)->sin_addr, ip,
                             sizeof(ip));
        else if (ai->ai_family == AF_INET6)
            evutil_inet_ntop(AF_INET6,
                             &((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr,
                             ip, sizeof(ip));
    }
    if (ai)
        evutil_freeaddrinfo(ai);
    if (ip[0] == '\0') {
        redis_fail(0, "cannot resolve redis host %s: %s", mc.redis_host,
                   err ? evutil_gai_strerror(err) : "no address");
        return;
    }
    redis_connect_addr(ip);
}

/* Make the intake connection: numeric hosts at once, names through
 * evdns (no blocking getaddrinfo on the loop). */
static void redis_connect(void)
{
    unsigned char          buf[sizeof(struct in6_addr)];
    struct evutil_addrinfo hints;

    mc.rd_retry_at = 0;
    if (evutil_inet_pton(AF_INET, mc.redis_host, buf) == 1 ||
        evutil_inet_pton(AF_INET6, mc.redis_host, buf) == 1) {
        redis_connect_addr(mc.redis_host);
        return;
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    mc.rd_resolving = 1;
    mc.rd_connect_deadline = fl_now_ms() + mc.redis_connect_ms;
    mc.rd_req = evdns_getaddrinfo(mc.dns, mc.redis_host, NULL, &hints,
                                  on_rd_resolved, NULL);
}

/*
 * The intake connection failed (or an answer says the append did not
 * go through): drop it - freeing the context when free_ctx and we are
 * not inside hiredis's own teardown -, stop reading the broker, and send
 * everything not answered again on the next connection, QoS 1 messages
 * with their look-up first.
 */
static void redis_fail(int free_ctx, const char *fmt, ...)
{
    redisAsyncContext *c = mc.redis;
    int64_t            now = fl_now_ms();
    va_list            ap;

    va_start(ap, fmt);
    vsnprintf(mc.err, sizeof(mc.err), fmt, ap);
    va_end(ap);

    mc.redis = NULL;
    mc.rd_ready = 0;
    mc.rd_connect_deadline = 0;
    if (c && free_ctx)
        redisAsyncFree(c); /* deferred by hiredis inside a reply callback */
    for (entry_t *e = mc.head; e && e != mc.unsent; e = e->next) {
        e->sent_at = 0;
        e->tried = 1;
        if (e->kind == E_MSG && e->packet_id)
            e->check = 1;
    }
    for (entry_t *e = mc.unsent; e; e = e->next)
        if (e->looking) {
            e->looking = 0;
            e->tried = 1;
        }
    mc.unsent = mc.head;
    mc.expire_at = 0;
    mc.appending = 0;

    fl_shm_add(mc.stats->mqtt_enqueue_failures, 1);
    fl_shm_store(mc.stats->dep[FL_DEP_REDIS], FL_DEP_DOWN);
    mc.fail_attempts++;
    if (mc.fail_since == 0) {
        mc.fail_since = now;
        mc.fail_logged_at = now;
        mc.rd_backoff_ms = REDIS_BACKOFF_MIN_MS;
        fl_error("%s; MQTT intake paused, %d message%s not acknowledged",
                 mc.err, mc.npending, mc.npending == 1 ? "" : "s");
    } else if (now - mc.fail_logged_at >= REDIS_LOG_EVERY_MS) {
        mc.fail_logged_at = now;
        fl_warn("%s; MQTT intake paused for %" PRId64 " ms, %" PRIu64
                " attempts",
                mc.err, now - mc.fail_since, mc.fail_attempts);
    }
    mc.rd_retry_at = now + mc.rd_backoff_ms;
    mc.rd_backoff_ms = fl_min(mc.rd_backoff_ms * 2, REDIS_BACKOFF_MAX_MS);
    read_update();
}

/* The tick's part for Redis: connect and command deadlines, reconnects. */
static void redis_tick(int64_t now)
{
    if (mc.redis && mc.rd_connect_deadline && now >= mc.rd_connect_deadline) {
        redis_fail(1, "connect() to redis %s:%d failed: timed out",
                   mc.redis_host, mc.redis_port);
        return;
    }
    if (mc.rd_resolving && now >= mc.rd_connect_deadline) {
        if (mc.rd_req)
            evdns_getaddrinfo_cancel(mc.rd_req); /* calls back: CANCEL */
        mc.rd_req = NULL;
        mc.rd_resolving = 0;
        redis_fail(0, "cannot resolve redis host %s: timed out",
                   mc.redis_host);
        return;
    }
    if (mc.redis && mc.rd_ready && mc.head && mc.head->sent_at &&
        now - mc.head->sent_at >= mc.redis_command_ms) {
        redis_fail(1, "redis %s:%d did not answer within %" PRId64 " ms",
                   mc.redis_host, mc.redis_port, mc.redis_command_ms);
        return;
    }
    if (mc.redis == NULL && !mc.rd_resolving && mc.rd_retry_at &&
        now >= mc.rd_retry_at)
        redis_connect();
}

/* ---- the broker connection ---- */

/* Read the broker while Redis keeps up, not past the FIFO's bounds.
 * While Redis is down, only until a message waits for it: as paho's
 * receive thread takes one message into its callback, so that the worker
 * holds what the broker sent, not more. While stopping, always: PUBLISHes
 * are then left to the session (on_publish), and the PUBACKs of our own
 * publishes must be read. */
static void read_update(void)
{
    int want;

    if (mc.bev == NULL)
        return;
    want = mc.state == C_CONNECTING || (mc.state == C_UP && mc.stopping) ||
           (mc.state == C_UP &&
            (mc.fail_since == 0 || mc.npending == 0) &&
            mc.inflight_in < mc.receive_max && mc.npending < PENDING_MAX &&
            mc.pending_bytes < PENDING_MAX_BYTES);
    if (want == mc.reading)
        return;
    mc.reading = want;
    if (want) {
        bufferevent_enable(mc.bev, EV_READ);
        if (mc.ping_at)
            mc.ping_at = fl_now_ms(); /* its answer could not be read */
        /* what was read but not taken when reading stopped calls no
         * callback by itself: ask for one (deferred: no re-entry) */
        if (evbuffer_get_length(bufferevent_get_input(mc.bev)) > 0)
            bufferevent_trigger(mc.bev, EV_READ, BEV_OPT_DEFER_CALLBACKS);
    } else {
        bufferevent_disable(mc.bev, EV_READ);
    }
}

static void sub_retry(void)
{
    mc.sub_pending = 1;
    mc.sub_at = fl_now_ms() + mc.sub_backoff_ms;
    mc.sub_backoff_ms = fl_min(mc.sub_backoff_ms * 2, mc.reconnect_max_ms);
}

static void subscribe(void)
{
    fl_mqtt_sub_t *subs;
    int            n = mc.ntopics, rc;
    uint16_t       id;

    mc.sub_pending = 0;
    if (n == 0)
        return;
    subs = fl_calloc((size_t)n, sizeof(*subs));
    for (int i = 0; i < n; i++) {
        subs[i].filter = (fl_mqtt_str_t){mc.topics[i], strlen(mc.topics[i])};
        subs[i].qos = (uint8_t)mc.qos;
        subs[i].no_local = 0; /* must be 0 on a shared subscription */
        subs[i].retain_as_published = 0;
        subs[i].retain_handling = 1; /* retained messages only when new */
    }
    id = id_take();
    rc = fl_mqtt_put_subscribe(&mc.out, id, 0, subs, (size_t)n);
    free(subs);
    if (rc != FL_OK) {
        fl_error("SUBSCRIBE to %s on mqtt broker %s: a topic filter is not "
                 "valid",
                 mc.topics[0], mc.uri);
        return;
    }
    mc.sub_id = id;
    mqtt_send();
}

static void on_suback(const fl_mqtt_packet_t *pk)
{
    int failed = 0;

    if (pk->packet_id != mc.sub_id)
        return;
    mc.sub_id = 0;
    for (size_t i = 0; i < pk->reasons.len && i < (size_t)mc.ntopics; i++) {
        int code = pk->reasons.p[i];

        if (code >= 0x80) {
            fl_error("SUBSCRIBE to %s on mqtt broker %s refused: reason "
                     "0x%02x",
                     mc.topics[i], mc.uri, code);
            failed++;
        } else if (code < mc.qos) {
            fl_warn("SUBSCRIBE to %s on mqtt broker %s granted QoS %d, not "
                    "%d",
                    mc.topics[i], mc.uri, code, mc.qos);
        }
    }
    if (failed) {
        sub_retry();
        fl_shm_store(mc.stats->dep[FL_DEP_MQTT], FL_DEP_DOWN);
        fl_warn("subscribing again in %" PRId64 " ms",
                mc.sub_at - fl_now_ms());
        return;
    }
    fl_shm_store(mc.stats->dep[FL_DEP_MQTT], FL_DEP_UP);
    fl_info("subscribed to %d topic%s on mqtt broker %s (%s%s) at QoS %d",
            mc.ntopics, mc.ntopics > 1 ? "s" : "", mc.uri, mc.topics[0],
            mc.ntopics > 1 ? ", ..." : "", mc.qos);
}

static void on_connack(const fl_mqtt_packet_t *pk)
{
    if (mc.state != C_CONNECTING) {
        conn_close(FL_MQTT_RC_PROTOCOL, 0, "a second CONNACK");
        return;
    }
    if (pk->reason != 0) {
        char why[128];

        snprintf(why, sizeof(why), "CONNACK refused: reason 0x%02x%s%.*s",
                 pk->reason, pk->props.reason_string.len ? ", " : "",
                 (int)fl_min(pk->props.reason_string.len, 80),
                 pk->props.reason_string.len ? pk->props.reason_string.p : "");
        conn_close(-1, 0, why);
        return;
    }
    mc.state = C_UP;
    mc.up_since = fl_now_ms();
    mc.server_receive_max = pk->props.receive_max ? pk->props.receive_max
                                                  : 65535;
    mc.server_max_packet = pk->props.max_packet_size;
    mc.keepalive_eff = mc.keepalive_ms;
    if (fl_mqtt_has(&pk->props, FL_MQTT_PROP_SERVER_KEEP_ALIVE))
        mc.keepalive_eff = (int64_t)pk->props.server_keep_alive * 1000;
    /* a new session: its packet ids start at 1 again, so the records of
     * the old one go before any of its messages is looked up (the DEL
     * sits in the FIFO ahead of them) */
    if (!pk->session_present) {
        entry_t *e = fl_calloc(1, sizeof(*e));

        e->kind = E_DEL;
        e->conn = mc.conn;
        entry_push(e);
        redis_pump();
    }
    /* subscribe on every connect, not only without a session: a reload
     * may have changed mqtt.topics (retain handling 1: no replay) */
    mc.sub_backoff_ms = RECONNECT_MIN_MS;
    subscribe();
    fl_shm_add(mc.stats->mqtt_connects, 1);
    fl_shm_store(mc.stats->dep[FL_DEP_MQTT], FL_DEP_UP);
    open_update();
    read_update();
    fl_info("connected to mqtt broker %s as \"%s\", session %s", mc.uri,
            mc.client_id, pk->session_present ? "resumed" : "new");
    if (mc.stopping)
        maybe_disconnect();
}

/*
 * Parse e for the fan-out at append (fl_fanout.h): telemetry up to
 * ingest.parse_inline_max bytes that the consumer will store. Anything
 * else (state, command answers, a payload it refuses, a bigger one, every
 * point older than the retention) is appended without, and the consumer
 * fans out or dead-letters it.
 */
static void fan_prepare(entry_t *e)
{
    fl_topic_kind_t kind;
    fl_reject_t     why;
    fl_telemetry_t  t;
    fl_cut_t        old, future;
    char            dev[FL_DEVICE_ID_MAX + 1], channel[160];
    int64_t         now_ms = fl_wall_ms();

    if (!mc.fan || e->oversize || (int64_t)e->plen > mc.fan_max ||
        fl_topic_parse(e->topic, e->tlen, dev, &kind, &why) != FL_OK ||
        kind != FL_TOPIC_TELEMETRY ||
        fl_payload_parse(e->payload, e->plen, now_ms * 1000, &mc.lim, &t,
                         &why) != FL_OK)
        return;
    fl_telemetry_cut(&t, (now_ms - mc.retention_ms) * 1000, INT64_MAX, &old,
                     &future);
    if (t.npoints > 0) {
        snprintf(channel, sizeof(channel), "%s%u", mc.channel_prefix,
                 fl_shadow_shard(dev, mc.shards));
        fl_fanout_message(&e->fan, dev, &t, now_ms * 1000, mc.skew_us,
                          channel, e->rx);
    }
    fl_telemetry_free(&t);
}

/* A PUBLISH from the broker: into the FIFO. FL_ERROR when the
 * connection was closed for it. */
static int on_publish(const fl_mqtt_packet_t *pk)
{
    entry_t *e;

    if (mc.state != C_UP) {
        conn_close(FL_MQTT_RC_PROTOCOL, 0, "PUBLISH before CONNACK");
        return FL_ERROR;
    }
    /* stopping: take no new work. Not acknowledged, a QoS 1 message stays
     * in the session, and the next worker of the slot gets it (DUP, its
     * look-up finds no record: appended) */
    if (mc.stopping)
        return FL_OK;
    if (pk->qos > 1) {
        conn_close(FL_MQTT_RC_PROTOCOL, 0, "QoS 2 PUBLISH on a QoS 1 "
                                           "subscription");
        return FL_ERROR;
    }
    if (pk->qos == 1 && ++mc.inflight_in > mc.receive_max &&
        !mc.rm_warned) {
        mc.rm_warned = 1;
        fl_warn("mqtt broker %s has more than our Receive Maximum (%d) QoS 1 "
                "messages unacknowledged with \"%s\" (Mosquitto < 2.0.13, "
                "upstream issue 2306): reading paused until they are "
                "acknowledged; a redelivery of some may be stored twice",
                mc.uri, mc.receive_max, mc.client_id);
    }
    fl_shm_add(mc.stats->mqtt_received, 1);
    /* one allocation: the entry, its topic (NUL-terminated), its payload */
    e = fl_alloc(sizeof(*e) + pk->topic.len + 1 + pk->payload.len);
    memset(e, 0, sizeof(*e));
    e->kind = E_MSG;
    e->conn = mc.conn;
    e->packet_id = pk->qos ? pk->packet_id : 0;
    e->check = pk->qos && pk->dup;
    snprintf(e->rx, sizeof(e->rx), "%" PRId64, fl_wall_ms());
    e->tlen = pk->topic.len;
    e->topic = (char *)(e + 1);
    memcpy(e->topic, pk->topic.p, e->tlen);
    e->topic[e->tlen] = '\0';
    e->plen = pk->payload.len;
    e->payload = (unsigned char *)e->topic + e->tlen + 1;
    if (e->plen)
        memcpy(e->payload, pk->payload.p, e->plen);
    e->oversize = (int64_t)e->plen > mc.stream.max_payload;
    if (e->packet_id)
        fl_mqttsh_record(&e->rec, mc.dedup_slots, e->packet_id, e->topic,
                         e->tlen, e->payload, e->plen);
    fan_prepare(e);
    entry_push(e);
    redis_pump();
    read_update();
    return FL_OK;
}

/* One packet from the broker; FL_ERROR when the connection is gone. */
static int on_packet(const fl_mqtt_packet_t *pk)
{
    char why[160];

    switch (pk->type) {
    case FL_MQTT_CONNACK: on_connack(pk); break;
    case FL_MQTT_PUBLISH: return on_publish(pk);
    case FL_MQTT_PUBACK:
        if (mc.state == C_UP || mc.state == C_DISCONNECTING)
            pub_acked(pk->packet_id, pk->reason);
        break;
    case FL_MQTT_SUBACK: on_suback(pk); break;
    case FL_MQTT_PINGRESP: mc.ping_at = 0; break;
    case FL_MQTT_DISCONNECT:
        snprintf(why, sizeof(why), "the broker disconnected us: reason 0x%02x%s%.*s",
                 pk->reason, pk->props.reason_string.len ? ", " : "",
                 (int)fl_min(pk->props.reason_string.len, 80),
                 pk->props.reason_string.len ? pk->props.reason_string.p : "");
        conn_close(-1, pk->reason == RC_SESSION_TAKEN_OVER, why);
        return FL_ERROR;
    default: break; /* UNSUBACK, QoS 2 acks: nothing of ours */
    }
    return mc.bev ? FL_OK : FL_ERROR;
}

static void on_mqtt_read(struct bufferevent *b, void *arg)
{
    struct evbuffer *in = bufferevent_get_input(b);
    unsigned         conn = mc.conn;

    (void)arg;
    while (mc.bev == b && mc.conn == conn && mc.reading) {
        struct evbuffer_iovec v;
        size_t                off = 0, used;
        fl_mqtt_packet_t      pk;
        int                   rc;

        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
            break;
        while ((rc = fl_mqttrx_feed(&mc.rx, (unsigned char *)v.iov_base + off,
                                    v.iov_len - off, &used, &pk)) == FL_OK) {
            off += used;
            if (on_packet(&pk) != FL_OK || mc.conn != conn)
                return; /* the connection (and b) is gone */
        }
        if (rc != FL_AGAIN) {
            char why[160];

            snprintf(why, sizeof(why), "bad packet from the broker: %s",
                     mc.rx.why ? mc.rx.why : "malformed");
            conn_close(rc, 0, why);
            return;
        }
        evbuffer_drain(in, v.iov_len);
    }
}

/* The output is flushed: a DISCONNECT of ours is out. */
static void on_mqtt_write(struct bufferevent *b, void *arg)
{
    (void)b, (void)arg;
    if (mc.state == C_DISCONNECTING)
        conn_close(-1, 0, NULL);
}

static void on_mqtt_event(struct bufferevent *b, short what, void *arg)
{
    fl_mqtt_connect_t c;
    char              why[512];

    (void)arg;
    if (what & BEV_EVENT_CONNECTED) {
        int one = 1;

        /* PUBACKs leave as soon as their appends are in, not behind
         * Nagle's wait for the broker's ACK of the one before */
        (void)setsockopt(bufferevent_getfd(b), IPPROTO_TCP, TCP_NODELAY, &one,
                         sizeof(one));
        memset(&c, 0, sizeof(c));
        c.client_id = (fl_mqtt_str_t){mc.client_id, strlen(mc.client_id)};
        if (mc.username[0])
            c.username = (fl_mqtt_str_t){mc.username, strlen(mc.username)};
        if (mc.password[0])
            c.password = (fl_mqtt_bin_t){(const unsigned char *)mc.password,
                                         strlen(mc.password)};
        c.keep_alive = (uint16_t)fl_min(mc.keepalive_ms / 1000, 65535);
        c.clean_start = 0;
        c.session_expiry = mc.session_expiry_s;
        /* the ring of dedup records is sized for it */
        c.receive_max = (uint16_t)mc.receive_max;
        c.max_packet_size = mc.max_packet;
        if (fl_mqtt_put_connect(&mc.out, &c) != FL_OK) {
            conn_close(-1, 0, "cannot make a CONNECT of this client id, "
                              "username or password");
            return;
        }
        mqtt_send();
        return;
    }
    if (what & BEV_EVENT_EOF)
        snprintf(why, sizeof(why), "closed by the broker");
    else if (bufferevent_socket_get_dns_error(b))
        snprintf(why, sizeof(why), "cannot resolve %s: %s", mc.host,
                 evutil_gai_strerror(bufferevent_socket_get_dns_error(b)));
    else
        snprintf(why, sizeof(why), "%s",
                 evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
    conn_close(-1, 0, why);
}

static void mqtt_connect(void)
{
    mc.conn++;
    mc.state = C_CONNECTING;
    mc.inflight_in = 0;
    mc.rm_warned = 0;
    mc.ping_at = 0;
    mc.sub_id = 0;
    mc.sub_pending = 0;
    mc.reading = 0;
    mc.connect_deadline = fl_now_ms() + mc.connect_timeout_ms;
    fl_mqttrx_init(&mc.rx, mc.max_packet, 0);
    mc.bev = bufferevent_socket_new(mc.base, -1, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(mc.bev, on_mqtt_read, on_mqtt_write, on_mqtt_event,
                      NULL);
    bufferevent_enable(mc.bev, EV_WRITE);
    read_update();
    fl_shm_store(mc.stats->dep[FL_DEP_MQTT], FL_DEP_CONNECTING);
    fl_debug("connecting to mqtt broker %s as \"%s\"", mc.uri, mc.client_id);
    if (bufferevent_socket_connect_hostname(mc.bev, mc.dns, AF_UNSPEC, mc.host,
                                            mc.port) != 0)
        conn_close(-1, 0, "connect() failed at once");
}

/*
 * End the broker connection: write a DISCONNECT with reason first when
 * reason >= 0 (best effort), free it, fail our publishes, and go back to
 * IDLE with the next attempt scheduled (the longest delay when the broker
 * gave our session to another client), or to CLOSED when stopping. The
 * FIFO keeps its messages: appended, not acknowledged (see the top).
 */
static void conn_close(int reason, int takeover, const char *why)
{
    int64_t  now = fl_now_ms(), delay = 0;
    cstate_t was = mc.state;

    if (mc.bev) {
        if (reason >= 0 && fl_mqtt_put_disconnect(&mc.out, reason, NULL) ==
                               FL_OK) {
            mqtt_send();
            /* one non-blocking attempt: it is a courtesy */
            evbuffer_write(bufferevent_get_output(mc.bev),
                           bufferevent_getfd(mc.bev));
        }
        bufferevent_free(mc.bev);
        mc.bev = NULL;
    }
    mc.out.len = 0;
    mc.reading = 0;
    fl_mqttrx_free(&mc.rx);
    mc.conn++; /* answers for the old connection acknowledge nothing */
    mc.ping_at = 0;
    mc.sub_id = 0;
    mc.sub_pending = 0;
    fl_shm_store(mc.stats->dep[FL_DEP_MQTT], FL_DEP_DOWN);
    if (mc.stopping) {
        mc.state = C_CLOSED;
    } else {
        if (mc.up_since && now - mc.up_since >= STABLE_CONNECTION_MS)
            mc.backoff_ms = RECONNECT_MIN_MS;
        delay = takeover ? mc.reconnect_max_ms
                         : fl_mqttsh_jitter(&mc.rand_state, mc.backoff_ms);
        mc.backoff_ms = fl_min(mc.backoff_ms * 2, mc.reconnect_max_ms);
        mc.state = C_IDLE;
        mc.reconnect_at = now + delay;
    }
    mc.up_since = 0;
    open_update();
    pub_fail_all("the MQTT connection closed");

    if (was == C_DISCONNECTING)
        fl_info("disconnected from mqtt broker %s; session \"%s\" kept for "
                "%u s",
                mc.uri, mc.client_id, mc.session_expiry_s);
    else if (mc.stopping)
        fl_info("connection to mqtt broker %s closed while stopping (%s)",
                mc.uri, why ? why : "closed");
    else if (takeover)
        fl_error("mqtt broker %s gave session \"%s\" to another client with "
                 "the same id (a reload's new worker, or two nodes with one "
                 "node_id); reconnecting in %" PRId64 " ms",
                 mc.uri, mc.client_id, delay);
    else if (was == C_CONNECTING)
        fl_warn("connect() to mqtt broker %s as \"%s\" failed: %s; retrying "
                "in %" PRId64 " ms",
                mc.uri, mc.client_id, why ? why : "closed", delay);
    else
        fl_warn("connection to mqtt broker %s lost (%s); reconnecting in "
                "%" PRId64 " ms",
                mc.uri, why ? why : "closed", delay);
    if (mc.stopping)
        fl_worker_drain_check();
}

/* Stopping: once every message of this connection is answered and its
 * PUBACK written, and our publishes are out and acknowledged (or the
 * DISCONNECT timeout since the stop passed: paho's disconnect waits as
 * long for them), say DISCONNECT (reason 0, the session kept) and close
 * when it is out. */
static void maybe_disconnect(void)
{
    int64_t wait_ms = mc.fast ? FAST_DISCONNECT_MS : DISCONNECT_TIMEOUT_MS;

    if (mc.state != C_UP)
        return;
    for (entry_t *e = mc.head; e; e = e->next)
        if (e->conn == mc.conn && e->kind == E_MSG && e->packet_id)
            return;
    if ((mc.pub_head || mc.fly_head) && fl_now_ms() - mc.stop_at < wait_ms)
        return;
    fl_mqtt_put_disconnect(&mc.out, 0, NULL);
    mqtt_send();
    mc.state = C_DISCONNECTING;
    mc.disconnect_deadline =
        fl_now_ms() + (mc.fast ? FAST_DISCONNECT_MS : DISCONNECT_TIMEOUT_MS);
    if (evbuffer_get_length(bufferevent_get_output(mc.bev)) == 0)
        conn_close(-1, 0, NULL);
}

/* Whether the next connect must wait for another worker of our slot
 * (fl_mqttsh_handoff_wait); if so, the attempt moves HANDOFF_POLL_MS on. */
static int handoff_wait(int64_t now)
{
    if (!fl_mqttsh_handoff_wait(mc.stats, mc.slot, mc.generation,
                                mc.client_id, &mc.waiting_for))
        return 0;
    mc.reconnect_at = now + FL_MQTTSH_HANDOFF_POLL_MS;
    return 1;
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    int64_t now = fl_now_ms();

    (void)fd, (void)what, (void)arg;
    redis_tick(now);
    switch (mc.state) {
    case C_IDLE:
        if (!mc.stopping && now >= mc.reconnect_at && !handoff_wait(now))
            mqtt_connect();
        break;
    case C_CONNECTING:
        if (now >= mc.connect_deadline)
            conn_close(-1, 0, "timed out");
        break;
    case C_UP:
        if (mc.ping_at && mc.reading && now - mc.ping_at >= mc.keepalive_eff &&
            mc.keepalive_eff > 0) {
            conn_close(-1, 0, "no PINGRESP within the keepalive");
            break;
        }
        /* a control packet at least every keepalive; PINGREQ when none
         * went out (PUBACKs count) */
        if (mc.keepalive_eff > 0 && now - mc.last_tx >= mc.keepalive_eff) {
            fl_mqtt_put_pingreq(&mc.out);
            mqtt_send();
            if (!mc.ping_at)
                mc.ping_at = now;
        }
        if (mc.sub_pending && now >= mc.sub_at && !mc.stopping)
            subscribe();
        if (mc.stopping)
            maybe_disconnect();
        break;
    case C_DISCONNECTING:
        if (now >= mc.disconnect_deadline)
            conn_close(-1, 0, "the DISCONNECT could not be written in time");
        break;
    case C_CLOSED: break;
    }
}

/* ---- the module (called by fl_mqtt.c) ---- */

static void conf_copy(const fl_worker_t *w)
{
    const fl_config_t *cf = w->cf;
    char               buf[300];
    int64_t            pk;

    mc.base = w->base;
    mc.stats = w->stats;
    mc.slot = w->slot;
    mc.generation = w->generation;
    mc.uri = fl_strdup(cf->mqtt.uri);
    if (cf->mqtt.client_id[0])
        snprintf(buf, sizeof(buf), "%s-w%d", cf->mqtt.client_id, w->slot);
    else
        snprintf(buf, sizeof(buf), "fleetd-%s-w%d", cf->node_id, w->slot);
    mc.client_id = fl_strdup(buf);
    mc.username = fl_strdup(cf->mqtt.username);
    mc.password = fl_strdup(cf->mqtt.password);
    mc.ntopics = cf->mqtt.topics.n;
    mc.topics = fl_calloc(mc.ntopics + 1, sizeof(char *));
    for (int i = 0; i < mc.ntopics; i++) {
        if (cf->mqtt.share_group[0]) {
            snprintf(buf, sizeof(buf), "$share/%s/", cf->mqtt.share_group);
            mc.topics[i] = concat(buf, cf->mqtt.topics.items[i]);
        } else {
            mc.topics[i] = fl_strdup(cf->mqtt.topics.items[i]);
        }
    }
    mc.qos = cf->mqtt.qos;
    /* whole seconds, as the CONNECT carries them */
    mc.keepalive_ms = fl_max(1, cf->mqtt.keepalive_ms / 1000) * 1000;
    mc.connect_timeout_ms = fl_max(100, cf->mqtt.connect_timeout_ms);
    mc.reconnect_max_ms = fl_max(cf->mqtt.reconnect_max_ms, RECONNECT_MIN_MS);
    mc.receive_max = cf->mqtt.receive_max;
    mc.session_expiry_s =
        (uint32_t)fl_min(cf->mqtt.session_expiry_ms / 1000, 0xfffffffeLL);
    pk = fl_max(cf->limits.max_payload_bytes * MAX_PACKET_FACTOR,
                MAX_PACKET_FLOOR);
    mc.max_packet = (uint32_t)fl_min(pk, MQTT_MAX_PACKET);

    mc.redis_host = fl_strdup(cf->redis.host);
    mc.redis_port = cf->redis.port;
    mc.redis_password = fl_strdup(cf->redis.password);
    mc.redis_connect_ms = fl_max(cf->redis.connect_timeout_ms, 100);
    mc.redis_command_ms = fl_max(cf->redis.command_timeout_ms, 100);
    mc.ingest_key = concat(cf->redis.prefix, "ingest");
    mc.dead_key = concat(cf->redis.prefix, "dead");
    snprintf(mc.ingest_maxlen, sizeof(mc.ingest_maxlen), "%" PRId64,
             cf->redis.stream_maxlen);
    snprintf(mc.dead_maxlen, sizeof(mc.dead_maxlen), "%" PRId64,
             cf->redis.dead_letter_maxlen);
    mc.stream.ingest_key = mc.ingest_key;
    mc.stream.dead_key = mc.dead_key;
    mc.stream.ingest_maxlen = mc.ingest_maxlen;
    mc.stream.dead_maxlen = mc.dead_maxlen;
    mc.stream.max_payload = cf->limits.max_payload_bytes;
    snprintf(buf, sizeof(buf), "%sdedup:%s", cf->redis.prefix, mc.client_id);
    mc.dedup_key = fl_strdup(buf);
    mc.dedup_slots = fl_mqttsh_dedup_ring(mc.receive_max);
    /* as fl_mqtt.c: 2 x session_expiry after the last append, at least */
    snprintf(mc.dedup_ttl, sizeof(mc.dedup_ttl), "%" PRId64,
             2 * cf->mqtt.session_expiry_ms + 2 * FL_MQTTSH_DEDUP_REFRESH_MS);

    /* FLEETD_INTAKE_FANOUT=0 leaves every fan-out to the consumer (for
     * comparisons; README "Benchmarks") */
    mc.fan = getenv("FLEETD_INTAKE_FANOUT") == NULL ||
             strcmp(getenv("FLEETD_INTAKE_FANOUT"), "0") != 0;
    mc.fan_max = cf->ingest.parse_inline_max;
    fl_fanout_limits(&mc.lim, cf);
    mc.retention_ms = (int64_t)cf->postgres.retention_days * 86400000LL;
    mc.skew_us = (int64_t)cf->limits.max_clock_skew_ms * 1000;
    mc.shards = cf->redis.channel_shards;
    mc.wsid_key = concat(cf->redis.prefix, "wsid");
    mc.channel_prefix = concat(cf->redis.prefix, "tele:");
    snprintf(buf, sizeof(buf), "%sshadow:", cf->redis.prefix);
    fl_resp_str(&mc.script_argv, buf);
    fl_resp_i64(&mc.script_argv, cf->redis.shadow_ttl_ms);
    snprintf(buf, sizeof(buf), "%srecent:", cf->redis.prefix);
    fl_resp_str(&mc.script_argv, buf);
    fl_resp_i64(&mc.script_argv, cf->ws.resume_keep);
    fl_resp_i64(&mc.script_argv, cf->ws.resume_ttl_ms);
    fl_resp_i64(&mc.script_argv, cf->limits.max_clock_skew_ms * 1000);
    fl_fanout_sha(mc.script_sha);
}

static void conf_free(void)
{
    free(mc.uri);
    free(mc.client_id);
    free(mc.username);
    free(mc.password);
    for (int i = 0; i < mc.ntopics; i++)
        free(mc.topics[i]);
    free(mc.topics);
    free(mc.redis_host);
    free(mc.redis_password);
    free(mc.ingest_key);
    free(mc.dead_key);
    free(mc.dedup_key);
    free(mc.wsid_key);
    free(mc.channel_prefix);
    fl_resp_free(&mc.script_argv);
    mc.topics = NULL;
    mc.ntopics = 0;
}

int fl_mqttc_init(fl_worker_t *w)
{
    struct timeval tick = {0, TICK_MS * 1000};

    conf_copy(w);
    if (fl_mqttsh_parse_uri(mc.uri, mc.host, sizeof(mc.host), &mc.port) !=
        FL_OK) {
        fl_error("mqtt.uri %s: not tcp://HOST[:PORT] or mqtt://HOST[:PORT]",
                 mc.uri);
        conf_free();
        return FL_ERROR;
    }
    mc.loop_thread = pthread_self();
    mc.dns = evdns_base_new(w->base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
    if (mc.dns == NULL) {
        /* no resolv.conf: names from /etc/hosts, numeric addresses */
        mc.dns = evdns_base_new(w->base, 0);
        if (mc.dns)
            evdns_base_load_hosts(mc.dns, NULL);
    }
    mc.inbox_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (mc.dns == NULL || mc.inbox_fd == -1) {
        fl_error("mqtt: cannot set up a resolver or an eventfd");
        if (mc.dns)
            evdns_base_free(mc.dns, 0);
        if (mc.inbox_fd != -1)
            close(mc.inbox_fd);
        conf_free();
        return FL_ERROR;
    }
    mc.ev_inbox =
        event_new(w->base, mc.inbox_fd, EV_READ | EV_PERSIST, on_inbox, NULL);
    event_add(mc.ev_inbox, NULL);
    mc.ev_tick = event_new(w->base, -1, EV_PERSIST, on_tick, NULL);
    event_add(mc.ev_tick, &tick);
    mc.state = C_IDLE;
    mc.stopping = mc.fast = 0;
    mc.reconnect_at = 0;
    mc.backoff_ms = RECONNECT_MIN_MS;
    mc.rd_backoff_ms = REDIS_BACKOFF_MIN_MS;
    mc.rand_state = (unsigned)getpid() ^ (unsigned)fl_now_us();
    mc.next_id = 1;
    fl_shm_store(w->stats->dep[FL_DEP_MQTT], FL_DEP_CONNECTING);
    redis_connect();
    fl_debug("mqtt intake (native): %s as \"%s\", %d topic%s, stream %s",
             mc.uri, mc.client_id, mc.ntopics, mc.ntopics == 1 ? "" : "s",
             mc.ingest_key);
    return FL_OK;
}

void fl_mqttc_stop(fl_worker_t *w, int fast)
{
    int was = mc.stopping;

    (void)w;
    if (!was)
        mc.stop_at = fl_now_ms();
    mc.stopping = 1;
    if (fast)
        mc.fast = 1;
    open_update();
    if (!was)
        fl_info("disconnecting from mqtt broker %s, keeping session \"%s\"",
                mc.uri, mc.client_id);
    switch (mc.state) {
    case C_IDLE:
        mc.state = C_CLOSED;
        fl_shm_store(mc.stats->dep[FL_DEP_MQTT], FL_DEP_DOWN);
        break;
    case C_CONNECTING: conn_close(-1, 0, "stopping before CONNACK"); break;
    case C_UP:
        read_update();
        maybe_disconnect();
        break;
    case C_DISCONNECTING:
        if (fast)
            mc.disconnect_deadline =
                fl_min(mc.disconnect_deadline, fl_now_ms() + FAST_DISCONNECT_MS);
        break;
    case C_CLOSED: break;
    }
}

int fl_mqttc_busy(fl_worker_t *w)
{
    (void)w;
    return mc.npending + (mc.stopping && mc.state != C_CLOSED);
}

void fl_mqttc_destroy(fl_worker_t *w)
{
    redisAsyncContext *c = mc.redis;

    (void)w;
    mc.stopping = 1;
    __atomic_store_n(&mc.open, 0, __ATOMIC_SEQ_CST);
    if (mc.bev) {
        bufferevent_free(mc.bev); /* unacknowledged: the broker resends */
        mc.bev = NULL;
    }
    mc.state = C_CLOSED;
    pub_fail_all("the worker is exiting");
    on_inbox(mc.inbox_fd, EV_READ, NULL);
    mc.redis = NULL; /* its callbacks, run by the free, are stale now */
    if (c)
        redisAsyncFree(c);
    if (mc.rd_req)
        evdns_getaddrinfo_cancel(mc.rd_req);
    mc.rd_req = NULL;
    if (mc.npending)
        fl_warn("%d messages from mqtt broker %s not acknowledged at exit: "
                "the broker delivers them again",
                mc.npending, mc.uri);
    while (mc.head)
        entry_pop();
    fl_mqttrx_free(&mc.rx);
    fl_sb_free(&mc.out);
    event_free(mc.ev_tick);
    event_free(mc.ev_inbox);
    close(mc.inbox_fd);
    evdns_base_free(mc.dns, 0);
    mc.ev_tick = mc.ev_inbox = NULL;
    mc.dns = NULL;
    conf_free();
}
