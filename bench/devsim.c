/*
 * devsim.c - MQTT device simulator and bare subscriber for bench/ingest-bench.
 *
 * Publish mode (default): N simulated devices (dev-000001, dev-000002, ...)
 * publish telemetry on devices/{id}/telemetry at a fixed total rate R msg/s
 * for D seconds, over C MQTT connections (device i uses connection
 * i % C). Devices take turns in order, so each one publishes every N/R
 * seconds. The payload is
 *
 *     {"ts": <send time, epoch ms>, "temperature": 21.5, "humidity": 40,
 *      "seq": <per-device counter from 1>}
 *
 * (with --t-us also "t_us": <send time, epoch microseconds>, from the same
 * clock reading as ts, for bench/ws-bench's latency measurements)
 *
 * ts is the wall clock when the message is handed to the client library,
 * made strictly increasing per device (a device never sends two messages
 * with the same ts, which would collapse into one row under fleetd's
 * primary key (device_id, metric, ts)). A consumer that stores ts can
 * compute publish -> stored latency from it.
 *
 * Pacing is a token bucket (capacity 20 ms worth of tokens, at least 1), so
 * a stall is not caught up with a burst: the achieved rate is reported
 * instead. Each connection has at most W publishes awaiting their PUBACK
 * (QoS 1); when the next device's connection is full the generator waits.
 * R = 0 means "as fast as the windows allow" (the broker ceiling run).
 *
 * Subscribe mode (--subscribe): C connections (default 1) subscribe at QoS
 * 1 to $share/GROUP/FILTER (or FILTER with -g ""), acknowledge every
 * message at once and count them. It stops after --expect messages, after
 * --idle seconds without a message (once one arrived), after -d seconds,
 * or on SIGINT/SIGTERM. The publish -> delivered latency comes from the
 * payload's ts (1 ms buckets); with --t-us from its "t_us" instead (10 us
 * buckets up to 10 s, quantiles in ms with two decimals, and p99.9). This
 * measures the broker's own QoS 1 delivery ceiling to a subscriber that
 * does no work, and with --t-us the broker's publish -> deliver latency at
 * a given rate (bench/ws-bench's baseline).
 *
 * Intake floor (--subscribe --lib paho --xadd HOST:PORT): the broker
 * ceiling of a subscriber that does fleetd's mandatory per-message work:
 * paho + append before PUBACK. messageArrived, on paho's one receive
 * thread, sends what worker/fl_mqtt.c sends for every QoS 1 message, one
 * pipelined round trip (the append and its dedup record, atomically):
 *
 *     MULTI
 *     XADD <stream> MAXLEN ~ <maxlen> * t <topic> p <payload> r <arrival ms>
 *     HSET <prefix>dedup:<client id> <packet id % N> <packet id>:<hash>
 *     PEXPIRE <prefix>dedup:<client id> <ttl>       (once a minute)
 *     EXEC
 *
 * (a QoS 0 message: the XADD alone). <prefix> is the stream name without
 * its trailing "ingest" ("bench:" for bench:ingest; the stream name and
 * ":" when it does not end so), N the smallest divisor of 65535 not below
 * --receive-max (at most 21845), hash FNV-1a 64 over topic, a 0 byte and
 * payload in 16 hex digits, ttl 2 minutes (2 x a session expiry of 0, the
 * clean sessions used here, + 2 x the refresh interval). fleetd's read of
 * the record for a DUP delivery is not mirrored: a clean session gets no
 * redeliveries. The commands go synchronously (blocking hiredis context,
 * one per paho client, argv form so topic and payload go over as they
 * are); the reply must be EXEC's array with the entry id first (or the
 * id), and only then messageArrived returns 1, which is when paho sends
 * the PUBACK.
 * A failed append is printed and counted, and retried once on a new
 * connection; the message is acknowledged either way (fleetd would retry
 * until it succeeds; a benchmark reports the error instead of stalling).
 *
 * Fan-out floor (--xadd ... --ws-publish PREFIX:SHARDS, for bench/ws-bench
 * -F ...:floor): the same transaction also carries the PUBLISH that
 * fleetd's ingest script sends for the message to its WebSocket hubs,
 *
 *     PUBLISH <PREFIX>tele:<shard> {"type":"telemetry","id":"<id>",
 *             "device":"<device>","ts":<now ms>,"values":<payload>}
 *
 * after the XADD and HSET (PEXPIRE), before EXEC; a QoS 0 message then
 * goes as MULTI, XADD, PUBLISH, EXEC. device is the topic's second level,
 * shard FNV-1a 32 of it mod SHARDS (fleetd's fl_shadow_shard()), id the
 * wall clock in microseconds made strictly increasing across the process
 * (fleetd's ids also grow with every message), values the payload as
 * received (devsim's payloads are flat JSON objects of numbers). No
 * parsing, no shadow state: the least work between the broker and the
 * WebSocket layer. With --xadd-store ROOT (and --xadd-stream fleetd's
 * stream) the entry carries fleetd's topic and f=1, so fleetd's consumer
 * stores it in PostgreSQL without publishing it again: the storing that
 * fleetd must do competes for the same cores as in fleetd's own path.
 * The RESULT line adds ws_published=.
 * A publisher with --topic-root R publishes on R/<device>/telemetry
 * instead, so that fleetd (on devices/+/...) does not see the messages.
 *
 * Both modes end with one machine-readable line on stdout:
 *     RESULT mode=publish sent=... acked=... errors=... rate=... ...
 *     RESULT mode=subscribe received=... rate=... lat_p50_ms=... ...
 * The subscriber's line also has cpu_s (its own user + system CPU-seconds,
 * all threads) and, with --xadd, xadd= (entries added) and xadd_errors=.
 * Progress goes to stderr once a second (-Q: none).
 * Exit status: 0; 1 when a connection or subscription failed, a publish
 * or an XADD failed, or a PUBACK is still missing at the end; 2 on a usage
 * error.
 *
 * Two client libraries (--lib):
 *   mosquitto (default): libmosquitto (Debian libmosquitto-dev) driven by
 *     one thread: poll() over all sockets, mosquitto_loop_read/write, the
 *     publishes issued from the same thread. No locks are contended and no
 *     thread is woken per message.
 *   paho: paho-mqtt-c MQTTAsync, the library fleetd uses. Every
 *     MQTTAsync_sendMessage takes paho's global mutexes, wakes its send
 *     thread and scans the command, in-flight and response lists to pick a
 *     free message id (O(window) per publish). On the 2-core bench machine
 *     paho publishes at most ~15k msg/s at 76 us of CPU per message;
 *     libmosquitto 43k msg/s at 22 us, which leaves the cores to the
 *     broker and fleetd. paho is kept to measure the ceiling of a paho
 *     subscriber (what fleetd's intake can reach at best), with or
 *     without the XADD.
 *
 * Build: cc -O2 -Wall -Wextra bench/devsim.c -o build/bench/devsim \
 *            -lmosquitto -lpaho-mqtt3a -lhiredis -lpthread
 *        (or make -C bench)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <MQTTAsync.h>
#include <hiredis/hiredis.h>
#include <mosquitto.h>
#include <sys/resource.h>

#define LAT_BUCKETS 120001 /* 1 ms buckets, 0 .. 120 s; above: last one */
#define US_BUCKET   10      /* --t-us: 10 us buckets ... */
#define US_BUCKETS  1000001 /* ... 0 .. 10 s; above: last one */

typedef struct {
    MQTTAsync         paho;
    struct mosquitto *mosq;
    int               idx;
    char              client_id[64];
    atomic_int        state;      /* 0 connecting, 1 connected, -1 failed */
    atomic_int        subscribed; /* 0 pending, 1 granted, -1 refused */
    atomic_int        lost;       /* connection lost after connecting */
    atomic_uint_fast64_t sent;    /* handed to the library */
    atomic_uint_fast64_t acked;   /* PUBACK with a success reason */
    atomic_uint_fast64_t failed;  /* refused, or failed by the library */
    redisContext     *redis;      /* --xadd: used on paho's receive thread */
    char                 dedup_key[320]; /* --xadd: <prefix>dedup:<client id> */
    double               dedup_expire_at; /* mono_s() of the next PEXPIRE */
    char                *ws_buf; /* --ws-publish: the message, grown */
    size_t               ws_cap;
} conn_t;

static struct {
    const char *uri;
    char        host[256];
    int         port;
    int         paho; /* --lib paho */
    int         devices;
    double      rate;
    double      duration;
    int         conns;
    int         window;
    int         qos;
    int         version; /* 4 = MQTT 3.1.1, 5 */
    const char *prefix;
    int         first;
    double      drain;
    int         subscribe;
    const char *topic;
    const char *share;
    uint64_t    expect;
    double      idle;
    int         receive_max;
    int         quiet;
    int         t_us; /* --t-us: "t_us" in payloads, latency from it */
    const char *xadd; /* --xadd HOST:PORT, NULL = no XADD */
    char        xadd_host[256];
    int         xadd_port;
    const char *xadd_stream;
    const char *xadd_store; /* --xadd-store ROOT, or NULL */
    char        xadd_maxlen[24];
    char        dedup_prefix[256]; /* <prefix>dedup: */
    unsigned    dedup_slots;       /* N */
    const char *topic_root;        /* publish: <root>/<device>/telemetry */
    const char *ws_publish;        /* --ws-publish PREFIX:SHARDS, or NULL */
    char        ws_channel[256];   /* <PREFIX>tele: */
    unsigned    ws_shards;
} opt = {
    .uri = "tcp://127.0.0.1:1883",
    .devices = 1000,
    .rate = 10000,
    .duration = -1,
    .conns = -1,
    .window = 1000,
    .qos = 1,
    .version = -1,
    .prefix = "dev-",
    .first = 1,
    .drain = 10,
    .topic = "devices/+/telemetry",
    .share = "bench",
    .idle = 3,
    .receive_max = 1000,
    .xadd_stream = "bench:ingest",
    .xadd_maxlen = "1000000",
    .topic_root = "devices",
};

static volatile sig_atomic_t stop_flag;
static int                   stopping; /* our own disconnects follow */
static conn_t               *conns;

/* subscriber counters (paho delivers on its receive thread) */
static atomic_uint_fast64_t rx_count;
static atomic_int_fast64_t  rx_first_ms = -1;
static atomic_int_fast64_t  rx_last_ms;
static atomic_uint_fast64_t rx_no_ts;
static atomic_uint          lat_hist[LAT_BUCKETS];
static atomic_uint         *us_hist; /* --t-us, US_BUCKETS */
static atomic_int_fast64_t  us_max;
static atomic_uint_fast64_t xadd_ok;
static atomic_uint_fast64_t xadd_errors;
static atomic_uint_fast64_t ws_published; /* --ws-publish: PUBLISHes sent */
static atomic_int_fast64_t  ws_last_id;   /* the last message id given */

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static double mono_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int64_t wall_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_s(double s)
{
    struct timespec ts;

    if (s <= 0)
        return;
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR && !stop_flag)
        ;
}

static void count_ack(conn_t *c, int ok)
{
    if (ok)
        atomic_fetch_add_explicit(&c->acked, 1, memory_order_relaxed);
    else
        atomic_fetch_add_explicit(&c->failed, 1, memory_order_relaxed);
}

static void mark_lost(conn_t *c, const char *cause)
{
    if (!stopping && !atomic_load(&c->lost))
        fprintf(stderr, "devsim: connection %s to %s lost: %s\n",
                c->client_id, opt.uri, cause);
    atomic_store(&c->lost, 1);
}

/* "ts": <digits> anywhere in the payload -> epoch ms, or -1. */
static int64_t payload_ts(const char *p, size_t len)
{
    const char *k = memmem(p, len, "\"ts\"", 4);
    const char *end = p + len;
    int64_t     v = 0;
    int         digits = 0;

    if (!k)
        return -1;
    k += 4;
    while (k < end && (*k == ' ' || *k == ':'))
        k++;
    while (k < end && *k >= '0' && *k <= '9' && digits < 18) {
        v = v * 10 + (*k - '0');
        k++;
        digits++;
    }
    return digits ? v : -1;
}

/* "t_us": <digits> anywhere in the payload -> epoch us, or -1. */
static int64_t payload_t_us(const char *p, size_t len)
{
    const char *k = memmem(p, len, "\"t_us\"", 6);
    const char *end = p + len;
    int64_t     v = 0;
    int         digits = 0;

    if (!k)
        return -1;
    k += 6;
    while (k < end && (*k == ' ' || *k == ':'))
        k++;
    while (k < end && *k >= '0' && *k <= '9' && digits < 18) {
        v = v * 10 + (*k - '0');
        k++;
        digits++;
    }
    return digits ? v : -1;
}

/* Subscriber: one message delivered; count it and its latency. */
static void count_message(const void *payload, size_t len)
{
    int64_t now, ts, expected = -1;

    if (opt.t_us) {
        int64_t now_us = wall_us(), t = payload_t_us(payload, len), lat, max;

        now = now_us / 1000;
        atomic_compare_exchange_strong(&rx_first_ms, &expected, now);
        atomic_store_explicit(&rx_last_ms, now, memory_order_relaxed);
        atomic_fetch_add_explicit(&rx_count, 1, memory_order_relaxed);
        if (t < 0) {
            atomic_fetch_add_explicit(&rx_no_ts, 1, memory_order_relaxed);
            return;
        }
        lat = now_us - t;
        if (lat < 0)
            lat = 0;
        max = atomic_load_explicit(&us_max, memory_order_relaxed);
        while (lat > max && !atomic_compare_exchange_weak(&us_max, &max, lat))
            ;
        lat /= US_BUCKET;
        if (lat >= US_BUCKETS)
            lat = US_BUCKETS - 1;
        atomic_fetch_add_explicit(&us_hist[lat], 1, memory_order_relaxed);
        return;
    }
    now = wall_ms();
    ts = payload_ts(payload, len);

    atomic_compare_exchange_strong(&rx_first_ms, &expected, now);
    atomic_store_explicit(&rx_last_ms, now, memory_order_relaxed);
    atomic_fetch_add_explicit(&rx_count, 1, memory_order_relaxed);
    if (ts < 0) {
        atomic_fetch_add_explicit(&rx_no_ts, 1, memory_order_relaxed);
    } else {
        int64_t lat = now - ts;

        if (lat < 0)
            lat = 0;
        if (lat >= LAT_BUCKETS)
            lat = LAT_BUCKETS - 1;
        atomic_fetch_add_explicit(&lat_hist[lat], 1, memory_order_relaxed);
    }
}

/*
 * The client library behind a connection. connect() creates and connects
 * one connection (result reported through c->state); publish() hands one
 * message over (0, or -1 with the library's error text in err); service()
 * does the network work for up to max_s seconds (paho has its own threads
 * and just sleeps); subscribe() sends the SUBSCRIBE (result through
 * c->subscribed); close() disconnects and frees every connection.
 */
typedef struct {
    int  (*connect)(conn_t *c);
    int  (*publish)(conn_t *c, const char *topic, const char *payload,
                    int len, const char **err);
    void (*service)(double max_s);
    int  (*subscribe)(conn_t *c, const char *filter);
    void (*close)(void);
} backend_t;

/* ---- paho MQTTAsync (callbacks run on paho's threads) -------------------- */

static void paho_on_connect(void *ctx, MQTTAsync_successData *r)
{
    (void)r;
    atomic_store(&((conn_t *)ctx)->state, 1);
}

static void paho_on_connect5(void *ctx, MQTTAsync_successData5 *r)
{
    (void)r;
    atomic_store(&((conn_t *)ctx)->state, 1);
}

static void paho_on_connect_fail(void *ctx, MQTTAsync_failureData *r)
{
    conn_t *c = ctx;

    fprintf(stderr, "devsim: connect %s to %s failed: code %d %s\n",
            c->client_id, opt.uri, r ? r->code : 0,
            r && r->message ? r->message : "");
    atomic_store(&c->state, -1);
}

static void paho_on_connect_fail5(void *ctx, MQTTAsync_failureData5 *r)
{
    conn_t *c = ctx;

    fprintf(stderr, "devsim: connect %s to %s failed: code %d %s %s\n",
            c->client_id, opt.uri, r ? r->code : 0,
            r ? MQTTReasonCode_toString(r->reasonCode) : "",
            r && r->message ? r->message : "");
    atomic_store(&c->state, -1);
}

static void paho_on_lost(void *ctx, char *cause)
{
    mark_lost(ctx, cause ? cause : "(no cause)");
    MQTTAsync_free(cause);
}

static void paho_on_pub(void *ctx, MQTTAsync_successData *r)
{
    (void)r;
    count_ack(ctx, 1);
}

/* MQTT 5: a PUBACK reason >= 0x80 (quota exceeded, not authorized...) is
 * a refusal; 0x10 "no matching subscribers" is a success. */
static void paho_on_pub5(void *ctx, MQTTAsync_successData5 *r)
{
    count_ack(ctx, !(r && r->reasonCode >= 0x80));
}

static void paho_on_pub_fail(void *ctx, MQTTAsync_failureData *r)
{
    (void)r;
    count_ack(ctx, 0);
}

static void paho_on_pub_fail5(void *ctx, MQTTAsync_failureData5 *r)
{
    (void)r;
    count_ack(ctx, 0);
}

static void paho_on_sub(void *ctx, MQTTAsync_successData *r)
{
    conn_t *c = ctx;
    int     refused = r && r->alt.qos == 0x80;

    if (refused)
        fprintf(stderr, "devsim: subscribe %s refused\n", c->client_id);
    atomic_store(&c->subscribed, refused ? -1 : 1);
}

static void paho_on_sub5(void *ctx, MQTTAsync_successData5 *r)
{
    conn_t *c = ctx;
    int     refused = r && r->reasonCode >= 0x80;

    if (refused)
        fprintf(stderr, "devsim: subscribe %s refused: %s\n", c->client_id,
                MQTTReasonCode_toString(r->reasonCode));
    atomic_store(&c->subscribed, refused ? -1 : 1);
}

static void paho_on_sub_fail(void *ctx, MQTTAsync_failureData *r)
{
    conn_t *c = ctx;

    fprintf(stderr, "devsim: subscribe %s failed: code %d\n", c->client_id,
            r ? r->code : 0);
    atomic_store(&c->subscribed, -1);
}

static void paho_on_sub_fail5(void *ctx, MQTTAsync_failureData5 *r)
{
    conn_t *c = ctx;

    fprintf(stderr, "devsim: subscribe %s failed: code %d %s\n",
            c->client_id, r ? r->code : 0,
            r ? MQTTReasonCode_toString(r->reasonCode) : "");
    atomic_store(&c->subscribed, -1);
}

/* ---- --xadd: fleetd's per-message append (paho receive thread) -------- */

#define DEDUP_ID_SPACE  65535 /* as worker/fl_mqtt.c */
#define DEDUP_MAX_SLOTS 21845
#define DEDUP_REFRESH_S 60
#define DEDUP_TTL_MS    "120000" /* 2 x session expiry 0 + 2 x 60 s */

/* N for R = --receive-max: the smallest divisor of 65535 not below R. */
static unsigned dedup_ring(int r)
{
    for (unsigned n = r > 1 ? (unsigned)r : 1; n < DEDUP_MAX_SLOTS; n++)
        if (DEDUP_ID_SPACE % n == 0)
            return n;
    return DEDUP_MAX_SLOTS;
}

/* FNV-1a 64 over topic, a 0 byte, payload. */
static uint64_t msg_hash(const char *topic, size_t tlen, const void *payload,
                         size_t plen)
{
    const unsigned char *p = (const unsigned char *)topic;
    uint64_t             h = 0xcbf29ce484222325ULL;

    for (size_t i = 0; i < tlen; i++)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    h *= 0x100000001b3ULL; /* the 0 byte */
    p = payload;
    for (size_t i = 0; i < plen; i++)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

/* A blocking connection for c, with fleetd's default timeouts (redis.
 * connect_timeout 2 s, redis.command_timeout 5 s) and TCP keepalive. */
static int xadd_connect(conn_t *c)
{
    struct timeval connect_tv = {2, 0}, command_tv = {5, 0};

    c->redis = redisConnectWithTimeout(opt.xadd_host, opt.xadd_port,
                                       connect_tv);
    if (c->redis == NULL || c->redis->err) {
        fprintf(stderr, "devsim: connect() to redis %s:%d failed: %s\n",
                opt.xadd_host, opt.xadd_port,
                c->redis ? c->redis->errstr : "cannot allocate a context");
        goto fail;
    }
    if (redisSetTimeout(c->redis, command_tv) != REDIS_OK ||
        redisEnableKeepAlive(c->redis) != REDIS_OK) {
        fprintf(stderr, "devsim: setsockopt() on redis %s:%d failed: %s\n",
                opt.xadd_host, opt.xadd_port, c->redis->errstr);
        goto fail;
    }
    return 0;
fail:
    if (c->redis)
        redisFree(c->redis);
    c->redis = NULL;
    return -1;
}

/*
 * One append with its record (msgid > 0) as worker/fl_mqtt.c
 * redis_append_recorded() sends it: MULTI, XADD, HSET, PEXPIRE when due,
 * EXEC, written at once, then the replies. With pub_argc > 0 (--ws-publish)
 * that command (the PUBLISH of the WebSocket form) goes in the same
 * transaction after them, and msgid 0 (QoS 0) gives MULTI, XADD, PUBLISH,
 * EXEC. Returns the EXEC reply (the caller checks it) or NULL with
 * c->redis->err set.
 */
static redisReply *xadd_recorded(conn_t *c, int argc, const char **argv,
                                 const size_t *lens, int msgid, uint64_t hash,
                                 int pub_argc, const char **pub_argv,
                                 const size_t *pub_lens)
{
    char         field[12], value[32];
    const char  *multi[1] = {"MULTI"}, *exec[1] = {"EXEC"};
    const size_t multi_len[1] = {5}, exec_len[1] = {4};
    const char  *hset[4] = {"HSET", c->dedup_key, field, value};
    size_t       hset_lens[4];
    const char  *pexpire[3] = {"PEXPIRE", c->dedup_key, DEDUP_TTL_MS};
    size_t       pexpire_lens[3];
    double       now = mono_s();
    int          record = msgid > 0, expire = record && now >= c->dedup_expire_at;
    int          n = 3 + record + expire + (pub_argc > 0);
    redisReply  *r = NULL;

    snprintf(field, sizeof(field), "%u", (unsigned)msgid % opt.dedup_slots);
    snprintf(value, sizeof(value), "%d:%016" PRIx64, msgid, hash);
    hset_lens[0] = 4;
    hset_lens[1] = pexpire_lens[1] = strlen(c->dedup_key);
    hset_lens[2] = strlen(field);
    hset_lens[3] = strlen(value);
    pexpire_lens[0] = 7;
    pexpire_lens[2] = strlen(DEDUP_TTL_MS);
    if (redisAppendCommandArgv(c->redis, 1, multi, multi_len) != REDIS_OK ||
        redisAppendCommandArgv(c->redis, argc, argv, lens) != REDIS_OK ||
        (record &&
         redisAppendCommandArgv(c->redis, 4, hset, hset_lens) != REDIS_OK) ||
        (expire && redisAppendCommandArgv(c->redis, 3, pexpire, pexpire_lens) !=
                       REDIS_OK) ||
        (pub_argc > 0 && redisAppendCommandArgv(c->redis, pub_argc, pub_argv,
                                                pub_lens) != REDIS_OK) ||
        redisAppendCommandArgv(c->redis, 1, exec, exec_len) != REDIS_OK)
        return NULL;
    for (int i = 0; i < n; i++) {
        if (r)
            freeReplyObject(r);
        r = NULL;
        if (redisGetReply(c->redis, (void **)&r) != REDIS_OK)
            return NULL;
    }
    if (expire && r->type == REDIS_REPLY_ARRAY)
        c->dedup_expire_at = now + DEDUP_REFRESH_S;
    return r;
}

/* fleetd's shard of a device (common/fl_core.c fl_fnv1a(), worker/
 * fl_shadow.c fl_shadow_shard()): FNV-1a 32 of the id mod shards. */
static uint32_t fnv1a(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint32_t             h = 2166136261u;

    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 16777619u;
    return h;
}

/* A message id: wall-clock microseconds, strictly increasing across the
 * process (what fleetd's ingest script gives: an integer that grows with
 * every message). */
static int64_t ws_next_id(void)
{
    int64_t us = wall_us(), prev = atomic_load(&ws_last_id), next;

    do
        next = us > prev ? us : prev + 1;
    while (!atomic_compare_exchange_weak(&ws_last_id, &prev, next));
    return next;
}

/*
 * --ws-publish: the PUBLISH fleetd's ingest script sends for a message,
 * on <PREFIX>tele:<shard of the device> (device = the topic's second
 * level), the WebSocket form
 *   {"type":"telemetry","id":"<id>","device":"<device>","ts":<now ms>,
 *    "values":<the payload as received>}
 * into c->ws_buf. Returns the number of PUBLISH arguments (3), or 0 (no
 * PUBLISH) for a topic without a second level or when out of memory.
 */
static int ws_message(conn_t *c, const char *topic, size_t tlen,
                      const void *payload, size_t plen, char *chan,
                      size_t chan_size, size_t *chan_len, const char **msg,
                      size_t *msg_len)
{
    const char *dev = memchr(topic, '/', tlen), *end;
    size_t      dlen, need;
    int64_t     id = ws_next_id(), ts = wall_ms();
    int         n;

    if (dev == NULL)
        return 0;
    dev++;
    end = memchr(dev, '/', tlen - (size_t)(dev - topic));
    dlen = end ? (size_t)(end - dev) : tlen - (size_t)(dev - topic);
    if (dlen == 0)
        return 0;
    n = snprintf(chan, chan_size, "%s%u", opt.ws_channel,
                 fnv1a(dev, dlen) % opt.ws_shards);
    if (n < 0 || (size_t)n >= chan_size)
        return 0;
    *chan_len = (size_t)n;
    need = dlen + plen + 128;
    if (need > c->ws_cap) {
        char *b = realloc(c->ws_buf, need);

        if (b == NULL)
            return 0;
        c->ws_buf = b;
        c->ws_cap = need;
    }
    n = snprintf(c->ws_buf, c->ws_cap,
                 "{\"type\":\"telemetry\",\"id\":\"%" PRId64
                 "\",\"device\":\"%.*s\",\"ts\":%" PRId64 ",\"values\":",
                 id, (int)dlen, dev, ts);
    if (n < 0 || (size_t)n + plen + 2 > c->ws_cap)
        return 0;
    if (plen) {
        memcpy(c->ws_buf + n, payload, plen);
        n += (int)plen;
    } else {
        memcpy(c->ws_buf + n, "{}", 2);
        n += 2;
    }
    c->ws_buf[n++] = '}';
    *msg = c->ws_buf;
    *msg_len = (size_t)n;
    return 3;
}

/*
 * What worker/fl_mqtt.c on_message() does for a message within
 * limits.max_payload_bytes: r is the arrival time (wall ms) taken before
 * the command; a message with a packet id (QoS 1) is appended with its
 * record. On an error: print, count, drop the connection and try once
 * more on a new one.
 */
static void xadd_message(conn_t *c, const char *topic, size_t tlen,
                         const void *payload, size_t plen, int msgid)
{
    char        rx[24], stopic[300];
    const char *argv[14];
    size_t      lens[14];
    int         argc = 0;
    uint64_t    hash = msgid > 0 ? msg_hash(topic, tlen, payload, plen) : 0;
    redisReply *r;
    char        chan[300];
    const char *pub_argv[3] = {"PUBLISH", chan, NULL};
    size_t      pub_lens[3] = {7, 0, 0};
    int         pub_argc = 0;

    snprintf(rx, sizeof(rx), "%" PRId64, wall_ms());
#define ARG(s, n) (argv[argc] = (s), lens[argc] = (n), argc++)
    ARG("XADD", 4);
    ARG(opt.xadd_stream, strlen(opt.xadd_stream));
    ARG("MAXLEN", 6);
    ARG("~", 1);
    ARG(opt.xadd_maxlen, strlen(opt.xadd_maxlen));
    ARG("*", 1);
    ARG("t", 1);
    if (opt.xadd_store) {
        /* fleetd's topic, and marked fanned out: its consumer stores the
         * entry and does not publish it again */
        const char *rest = memchr(topic, '/', tlen);
        int         n = snprintf(stopic, sizeof(stopic), "%s%.*s",
                                 opt.xadd_store,
                                 rest ? (int)(tlen - (size_t)(rest - topic))
                                      : 0,
                                 rest ? rest : "");

        ARG(stopic, n > 0 && (size_t)n < sizeof(stopic) ? (size_t)n : 0);
    } else {
        ARG(topic, tlen);
    }
    ARG("p", 1);
    ARG(plen ? (const char *)payload : "", plen);
    ARG("r", 1);
    ARG(rx, strlen(rx));
    if (opt.xadd_store) {
        ARG("f", 1);
        ARG("1", 1);
    }
#undef ARG
    if (opt.ws_publish)
        pub_argc = ws_message(c, topic, tlen, payload, plen, chan,
                              sizeof(chan), &pub_lens[1], &pub_argv[2],
                              &pub_lens[2]);

    for (int attempt = 0; attempt < 2; attempt++) {
        const char *why;

        if (c->redis == NULL && xadd_connect(c) != 0) {
            atomic_fetch_add_explicit(&xadd_errors, 1, memory_order_relaxed);
            continue;
        }
        r = msgid > 0 || pub_argc > 0
                ? xadd_recorded(c, argc, argv, lens, msgid, hash, pub_argc,
                                pub_argv, pub_lens)
                : redisCommandArgv(c->redis, argc, argv, lens);
        if (r != NULL && (r->type == REDIS_REPLY_STRING ||
                          (r->type == REDIS_REPLY_ARRAY && r->elements >= 2 &&
                           r->element[0]->type == REDIS_REPLY_STRING &&
                           r->element[1]->type == REDIS_REPLY_INTEGER))) {
            freeReplyObject(r);
            atomic_fetch_add_explicit(&xadd_ok, 1, memory_order_relaxed);
            if (pub_argc > 0)
                atomic_fetch_add_explicit(&ws_published, 1,
                                          memory_order_relaxed);
            return;
        }
        why = r == NULL                      ? c->redis->errstr
              : r->type == REDIS_REPLY_ERROR ? r->str
                                             : "unexpected reply";
        /* the first ten: a dead Redis would print one line per message */
        if (atomic_fetch_add_explicit(&xadd_errors, 1, memory_order_relaxed) <
            10)
            fprintf(stderr, "devsim: %s %s to redis %s:%d failed: %s\n",
                    msgid > 0 || pub_argc > 0 ? "MULTI/XADD" : "XADD",
                    opt.xadd_stream,
                    opt.xadd_host, opt.xadd_port, why);
        if (r)
            freeReplyObject(r);
        redisFree(c->redis);
        c->redis = NULL;
    }
}

/* Returning 1 lets paho send the PUBACK: with --xadd, after the XADD. */
static int paho_on_message(void *ctx, char *topic, int topic_len,
                           MQTTAsync_message *m)
{
    if (opt.subscribe && opt.xadd)
        xadd_message(ctx, topic,
                     topic_len > 0 ? (size_t)topic_len : strlen(topic),
                     m->payload, m->payloadlen > 0 ? (size_t)m->payloadlen : 0,
                     m->qos > 0 ? m->msgid : 0);
    if (opt.subscribe)
        count_message(m->payload, (size_t)m->payloadlen);
    MQTTAsync_freeMessage(&m);
    MQTTAsync_free(topic);
    return 1;
}

static int paho_connect(conn_t *c)
{
    MQTTAsync_createOptions   co = MQTTAsync_createOptions_initializer;
    MQTTAsync_connectOptions  cn = MQTTAsync_connectOptions_initializer;
    MQTTAsync_connectOptions  cn5 = MQTTAsync_connectOptions_initializer5;
    MQTTAsync_connectOptions *use;
    MQTTProperties            props = MQTTProperties_initializer;
    MQTTProperty              p;
    int                       rc;

    /* Redis first: without it the subscriber would only measure paho */
    if (opt.subscribe && opt.xadd && xadd_connect(c) != 0)
        return -1;
    snprintf(c->dedup_key, sizeof(c->dedup_key), "%s%s", opt.dedup_prefix,
             c->client_id);
    c->dedup_expire_at = 0;
    co.MQTTVersion = opt.version == 5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1;
    /* publishes queued before paho's send thread writes them */
    co.maxBufferedMessages = opt.window + 1000;
    rc = MQTTAsync_createWithOptions(&c->paho, opt.uri, c->client_id,
                                     MQTTCLIENT_PERSISTENCE_NONE, NULL, &co);
    if (rc != MQTTASYNC_SUCCESS) {
        fprintf(stderr, "devsim: MQTTAsync_create(%s) failed: %s\n", opt.uri,
                MQTTAsync_strerror(rc));
        c->paho = NULL;
        return -1;
    }
    rc = MQTTAsync_setCallbacks(c->paho, c, paho_on_lost, paho_on_message,
                                NULL);
    if (rc != MQTTASYNC_SUCCESS) {
        fprintf(stderr, "devsim: MQTTAsync_setCallbacks failed: %s\n",
                MQTTAsync_strerror(rc));
        return -1;
    }
    if (opt.version == 5) {
        use = &cn5;
        cn5.cleanstart = 1;
        cn5.onSuccess5 = paho_on_connect5;
        cn5.onFailure5 = paho_on_connect_fail5;
        if (opt.subscribe) {
            memset(&p, 0, sizeof(p));
            p.identifier = MQTTPROPERTY_CODE_RECEIVE_MAXIMUM;
            p.value.integer2 = (unsigned short)opt.receive_max;
            MQTTProperties_add(&props, &p);
            cn5.connectProperties = &props;
        }
    } else {
        use = &cn;
        cn.cleansession = 1;
        cn.MQTTVersion = MQTTVERSION_3_1_1;
        cn.onSuccess = paho_on_connect;
        cn.onFailure = paho_on_connect_fail;
    }
    use->keepAliveInterval = 30;
    use->connectTimeout = 10;
    use->maxInflight = opt.window > 65535 ? 65535 : opt.window;
    use->context = c;
    rc = MQTTAsync_connect(c->paho, use);
    MQTTProperties_free(&props);
    if (rc != MQTTASYNC_SUCCESS) {
        fprintf(stderr, "devsim: MQTTAsync_connect(%s) failed: %s\n", opt.uri,
                MQTTAsync_strerror(rc));
        return -1;
    }
    return 0;
}

static int paho_publish(conn_t *c, const char *topic, const char *payload,
                        int len, const char **err)
{
    MQTTAsync_message         m = MQTTAsync_message_initializer;
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    int                       rc;

    m.payload = (void *)payload;
    m.payloadlen = len;
    m.qos = opt.qos;
    ro.context = c;
    if (opt.qos > 0 && opt.version == 5) {
        ro.onSuccess5 = paho_on_pub5;
        ro.onFailure5 = paho_on_pub_fail5;
    } else if (opt.qos > 0) {
        ro.onSuccess = paho_on_pub;
        ro.onFailure = paho_on_pub_fail;
    }
    rc = MQTTAsync_sendMessage(c->paho, topic, &m, &ro);
    if (rc != MQTTASYNC_SUCCESS) {
        *err = MQTTAsync_strerror(rc);
        return -1;
    }
    return 0;
}

static void paho_service(double max_s)
{
    sleep_s(max_s);
}

static int paho_subscribe(conn_t *c, const char *filter)
{
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    int                       rc;

    ro.context = c;
    if (opt.version == 5) {
        ro.onSuccess5 = paho_on_sub5;
        ro.onFailure5 = paho_on_sub_fail5;
    } else {
        ro.onSuccess = paho_on_sub;
        ro.onFailure = paho_on_sub_fail;
    }
    rc = MQTTAsync_subscribe(c->paho, filter, opt.qos, &ro);
    if (rc != MQTTASYNC_SUCCESS) {
        fprintf(stderr, "devsim: MQTTAsync_subscribe(%s) failed: %s\n",
                filter, MQTTAsync_strerror(rc));
        return -1;
    }
    return 0;
}

static void paho_close(void)
{
    for (int i = 0; i < opt.conns; i++) {
        MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer;
        MQTTAsync_disconnectOptions d5 =
            MQTTAsync_disconnectOptions_initializer5;

        if (conns[i].paho && MQTTAsync_isConnected(conns[i].paho)) {
            MQTTAsync_disconnectOptions *use = opt.version == 5 ? &d5 : &d;

            use->timeout = 1000;
            MQTTAsync_disconnect(conns[i].paho, use);
        }
    }
    /* let the DISCONNECT packets go out before the handles are destroyed */
    for (int k = 0; k < 100; k++) {
        int any = 0;

        for (int i = 0; i < opt.conns; i++)
            any |= conns[i].paho && MQTTAsync_isConnected(conns[i].paho);
        if (!any)
            break;
        sleep_s(0.01);
    }
    for (int i = 0; i < opt.conns; i++) {
        if (conns[i].paho)
            MQTTAsync_destroy(&conns[i].paho);
        /* no callback can run any more */
        if (conns[i].redis)
            redisFree(conns[i].redis);
        conns[i].redis = NULL;
        free(conns[i].ws_buf);
        conns[i].ws_buf = NULL;
        conns[i].ws_cap = 0;
    }
}

static const backend_t paho_backend = {
    paho_connect, paho_publish, paho_service, paho_subscribe, paho_close,
};

/* ---- libmosquitto, one thread (callbacks run inside service()) --------- */

static void mosq_on_connect(struct mosquitto *m, void *obj, int rc, int flags,
                            const mosquitto_property *props)
{
    conn_t *c = obj;

    (void)m;
    (void)flags;
    (void)props;
    if (rc != 0)
        fprintf(stderr, "devsim: connect %s to %s refused: %s\n",
                c->client_id, opt.uri,
                opt.version == 5 ? mosquitto_reason_string(rc)
                                 : mosquitto_connack_string(rc));
    atomic_store(&c->state, rc == 0 ? 1 : -1);
}

static void mosq_on_disconnect(struct mosquitto *m, void *obj, int rc,
                               const mosquitto_property *props)
{
    (void)m;
    (void)props;
    mark_lost(obj, rc == 0 ? "disconnected" : mosquitto_strerror(rc));
}

static void mosq_on_publish(struct mosquitto *m, void *obj, int mid,
                            int reason, const mosquitto_property *props)
{
    (void)m;
    (void)mid;
    (void)props;
    if (opt.qos > 0) /* QoS 0 was counted when it was handed over */
        count_ack(obj, reason < 0x80);
}

static void mosq_on_subscribe(struct mosquitto *m, void *obj, int mid,
                              int n, const int *granted,
                              const mosquitto_property *props)
{
    conn_t *c = obj;
    int     refused = n < 1 || granted[0] >= 0x80;

    (void)m;
    (void)mid;
    (void)props;
    if (refused)
        fprintf(stderr, "devsim: subscribe %s refused (%d)\n", c->client_id,
                n > 0 ? granted[0] : -1);
    atomic_store(&c->subscribed, refused ? -1 : 1);
}

static void mosq_on_message(struct mosquitto *m, void *obj,
                            const struct mosquitto_message *msg,
                            const mosquitto_property *props)
{
    (void)m;
    (void)obj;
    (void)props;
    count_message(msg->payload, (size_t)msg->payloadlen);
}

static int mosq_connect(conn_t *c)
{
    int rc;

    c->mosq = mosquitto_new(c->client_id, true, c);
    if (!c->mosq) {
        fprintf(stderr, "devsim: mosquitto_new(%s) failed: %s\n",
                c->client_id, strerror(errno));
        return -1;
    }
    mosquitto_int_option(c->mosq, MOSQ_OPT_PROTOCOL_VERSION,
                         opt.version == 5 ? MQTT_PROTOCOL_V5
                                          : MQTT_PROTOCOL_V311);
    /* like paho (and so fleetd), no Nagle: every packet leaves at once */
    mosquitto_int_option(c->mosq, MOSQ_OPT_TCP_NODELAY, 1);
    /* our own window decides; the library must not queue on its side */
    mosquitto_int_option(c->mosq, MOSQ_OPT_SEND_MAXIMUM,
                         opt.window > 65535 ? 65535 : opt.window);
    if (opt.version == 5 && opt.subscribe)
        mosquitto_int_option(c->mosq, MOSQ_OPT_RECEIVE_MAXIMUM,
                             opt.receive_max);
    mosquitto_connect_v5_callback_set(c->mosq, mosq_on_connect);
    mosquitto_disconnect_v5_callback_set(c->mosq, mosq_on_disconnect);
    mosquitto_publish_v5_callback_set(c->mosq, mosq_on_publish);
    mosquitto_subscribe_v5_callback_set(c->mosq, mosq_on_subscribe);
    mosquitto_message_v5_callback_set(c->mosq, mosq_on_message);
    rc = mosquitto_connect(c->mosq, opt.host, opt.port, 30);
    if (rc != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "devsim: connect() to %s:%d failed: %s\n", opt.host,
                opt.port,
                rc == MOSQ_ERR_ERRNO ? strerror(errno)
                                     : mosquitto_strerror(rc));
        return -1;
    }
    return 0;
}

static int mosq_publish(conn_t *c, const char *topic, const char *payload,
                        int len, const char **err)
{
    int rc = mosquitto_publish_v5(c->mosq, NULL, topic, len, payload, opt.qos,
                                  false, NULL);

    if (rc != MOSQ_ERR_SUCCESS) {
        *err = rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc);
        return -1;
    }
    return 0;
}

/* poll() every live socket for up to max_s, then read what arrived (acks,
 * messages: the callbacks run here) and write what is pending. */
static void mosq_service(double max_s)
{
    static struct pollfd *pfd;
    static int           *who;
    static double         next_misc;
    struct timespec       ts;
    int                   n = 0, rc;

    if (!pfd) {
        pfd = calloc((size_t)opt.conns, sizeof(*pfd));
        who = calloc((size_t)opt.conns, sizeof(*who));
        if (!pfd || !who) {
            fprintf(stderr, "devsim: out of memory\n");
            exit(1);
        }
    }
    for (int i = 0; i < opt.conns; i++) {
        int fd = conns[i].mosq ? mosquitto_socket(conns[i].mosq) : -1;

        if (fd < 0 || atomic_load(&conns[i].lost))
            continue;
        pfd[n].fd = fd;
        pfd[n].events = POLLIN;
        if (mosquitto_want_write(conns[i].mosq))
            pfd[n].events |= POLLOUT;
        pfd[n].revents = 0;
        who[n++] = i;
    }
    if (max_s < 0)
        max_s = 0;
    ts.tv_sec = (time_t)max_s;
    ts.tv_nsec = (long)((max_s - (double)ts.tv_sec) * 1e9);
    if (n == 0) {
        sleep_s(max_s);
        return;
    }
    if (ppoll(pfd, (nfds_t)n, &ts, NULL) < 0 && errno != EINTR) {
        fprintf(stderr, "devsim: poll() failed: %s\n", strerror(errno));
        exit(1);
    }
    for (int k = 0; k < n; k++) {
        conn_t *c = &conns[who[k]];

        if (pfd[k].revents & (POLLIN | POLLERR | POLLHUP)) {
            rc = mosquitto_loop_read(c->mosq, 1);
            if (rc != MOSQ_ERR_SUCCESS) {
                mark_lost(c, rc == MOSQ_ERR_ERRNO ? strerror(errno)
                                                  : mosquitto_strerror(rc));
                continue;
            }
        }
        if ((pfd[k].revents & POLLOUT) || mosquitto_want_write(c->mosq)) {
            rc = mosquitto_loop_write(c->mosq, 1);
            if (rc != MOSQ_ERR_SUCCESS)
                mark_lost(c, rc == MOSQ_ERR_ERRNO ? strerror(errno)
                                                  : mosquitto_strerror(rc));
        }
    }
    if (mono_s() >= next_misc) { /* keep-alive PINGREQs */
        for (int i = 0; i < opt.conns; i++)
            if (conns[i].mosq && !atomic_load(&conns[i].lost))
                mosquitto_loop_misc(conns[i].mosq);
        next_misc = mono_s() + 1;
    }
}

static int mosq_subscribe(conn_t *c, const char *filter)
{
    int rc = mosquitto_subscribe_v5(c->mosq, NULL, filter, opt.qos, 0, NULL);

    if (rc != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "devsim: mosquitto_subscribe(%s) failed: %s\n",
                filter, mosquitto_strerror(rc));
        return -1;
    }
    return 0;
}

static void mosq_close(void)
{
    double deadline = mono_s() + 1;

    for (int i = 0; i < opt.conns; i++)
        if (conns[i].mosq && !atomic_load(&conns[i].lost))
            mosquitto_disconnect_v5(conns[i].mosq, 0, NULL);
    /* flush the DISCONNECT packets */
    while (mono_s() < deadline) {
        int pending = 0;

        for (int i = 0; i < opt.conns; i++)
            pending |= conns[i].mosq && !atomic_load(&conns[i].lost) &&
                       mosquitto_want_write(conns[i].mosq);
        if (!pending)
            break;
        mosq_service(0.01);
    }
    for (int i = 0; i < opt.conns; i++)
        if (conns[i].mosq)
            mosquitto_destroy(conns[i].mosq);
}

static const backend_t mosq_backend = {
    mosq_connect, mosq_publish, mosq_service, mosq_subscribe, mosq_close,
};

static const backend_t *be;

/* ---- connections --------------------------------------------------------- */

/* Create and connect every connection; wait up to 10 s for all of them.
 * Returns 0 when all are connected, -1 otherwise (message printed). */
static int connect_all(const char *role)
{
    double deadline;

    conns = calloc((size_t)opt.conns, sizeof(conn_t));
    if (!conns) {
        fprintf(stderr, "devsim: out of memory\n");
        return -1;
    }
    for (int i = 0; i < opt.conns; i++) {
        conns[i].idx = i;
        snprintf(conns[i].client_id, sizeof(conns[i].client_id),
                 "devsim-%ld-%s%d", (long)getpid(), role, i);
        if (be->connect(&conns[i]) != 0)
            return -1;
    }
    deadline = mono_s() + 10;
    for (;;) {
        int up = 0, bad = 0;

        for (int i = 0; i < opt.conns; i++) {
            int s = atomic_load(&conns[i].state);

            up += s == 1;
            bad += s == -1 || atomic_load(&conns[i].lost);
        }
        if (bad)
            return -1;
        if (up == opt.conns)
            return 0;
        if (stop_flag || mono_s() > deadline) {
            fprintf(stderr, "devsim: %d of %d connections to %s up after "
                    "10 s\n", up, opt.conns, opt.uri);
            return -1;
        }
        be->service(0.005);
    }
}

static void close_all(void)
{
    if (!conns)
        return;
    stopping = 1;
    be->close();
    free(conns);
    conns = NULL;
}

static uint64_t sum_field(size_t off)
{
    uint64_t n = 0;

    for (int i = 0; i < opt.conns; i++)
        n += atomic_load_explicit(
            (atomic_uint_fast64_t *)((char *)&conns[i] + off),
            memory_order_relaxed);
    return n;
}

#define SUM(field) sum_field(offsetof(conn_t, field))

static int lost_connections(void)
{
    int n = 0;

    for (int i = 0; i < opt.conns; i++)
        n += atomic_load(&conns[i].lost);
    return n;
}

/* ---- publish mode -------------------------------------------------------- */

static int run_publish(void)
{
    char   **topics;
    int64_t *last_ts;
    uint64_t *seq;
    uint64_t send_errors = 0, window_waits = 0, i = 0;
    double   t0, t_end, now, tokens, cap, last_refill, next_report;
    double   elapsed, drain_end;
    int64_t  first_ts = -1, last_sent_ts = -1;
    uint64_t sent, acked, failed, last_report_sent = 0;
    int      lost, rc = 0, dead = 0;
    char     target[64];

    topics = calloc((size_t)opt.devices, sizeof(char *));
    last_ts = calloc((size_t)opt.devices, sizeof(int64_t));
    seq = calloc((size_t)opt.devices, sizeof(uint64_t));
    if (!topics || !last_ts || !seq) {
        fprintf(stderr, "devsim: out of memory for %d devices\n", opt.devices);
        return 1;
    }
    for (int d = 0; d < opt.devices; d++) {
        if (asprintf(&topics[d], "%s/%s%06d/telemetry", opt.topic_root,
                     opt.prefix, opt.first + d) < 0) {
            fprintf(stderr, "devsim: out of memory\n");
            return 1;
        }
    }
    if (connect_all("p") != 0) {
        close_all();
        return 1;
    }
    if (!opt.quiet)
        fprintf(stderr, "devsim: %d connections up (%s), %d devices, target "
                "%.0f msg/s (0 = max) for %.1f s\n", opt.conns,
                opt.paho ? "paho" : "libmosquitto", opt.devices, opt.rate,
                opt.duration);

    cap = opt.rate > 0 ? opt.rate * 0.02 : 0;
    if (cap < 1)
        cap = 1;
    tokens = 1;
    t0 = mono_s();
    t_end = t0 + opt.duration;
    last_refill = t0;
    next_report = t0 + 1;

    while (!stop_flag && !dead) {
        int budget, blocked = 0;

        now = mono_s();
        if (now >= t_end)
            break;
        if (now >= next_report) {
            sent = SUM(sent);
            if (!opt.quiet)
                fprintf(stderr, "devsim: t=%4.0fs sent %" PRIu64
                        " (%" PRIu64 "/s) acked %" PRIu64 " failed %" PRIu64
                        "\n", now - t0, sent, sent - last_report_sent,
                        SUM(acked), SUM(failed));
            last_report_sent = sent;
            next_report += 1;
        }
        if (opt.rate > 0) {
            tokens += (now - last_refill) * opt.rate;
            last_refill = now;
            if (tokens > cap)
                tokens = cap;
            if (tokens < 1) {
                double wait = (1 - tokens) / opt.rate;

                be->service(wait < 0.0002 ? 0.0002 : wait);
                continue;
            }
            budget = (int)tokens;
        } else {
            budget = 1000000;
        }
        /* at most 256 in a row, then read the PUBACKs that came in */
        if (budget > 256)
            budget = 256;
        for (int k = 0; k < budget; k++) {
            int         d = (int)(i % (uint64_t)opt.devices);
            conn_t     *c = &conns[d % opt.conns];
            char        payload[160];
            const char *err = NULL;
            int64_t     ts, t_us;
            int         len;

            if (atomic_load(&c->lost)) {
                dead = 1;
                break;
            }
            if (atomic_load_explicit(&c->sent, memory_order_relaxed) -
                    atomic_load_explicit(&c->acked, memory_order_relaxed) -
                    atomic_load_explicit(&c->failed, memory_order_relaxed) >=
                (uint64_t)opt.window) {
                blocked = 1;
                break;
            }
            t_us = wall_us();
            ts = t_us / 1000;
            if (ts <= last_ts[d])
                ts = last_ts[d] + 1;
            if (opt.t_us)
                len = snprintf(payload, sizeof(payload),
                               "{\"ts\": %" PRId64 ", \"t_us\": %" PRId64
                               ", \"temperature\": 21.5, \"humidity\": 40, "
                               "\"seq\": %" PRIu64 "}",
                               ts, t_us, seq[d] + 1);
            else
                len = snprintf(payload, sizeof(payload),
                               "{\"ts\": %" PRId64 ", \"temperature\": 21.5, "
                               "\"humidity\": 40, \"seq\": %" PRIu64 "}",
                               ts, seq[d] + 1);
            if (be->publish(c, topics[d], payload, len, &err) != 0) {
                if (send_errors++ < 5)
                    fprintf(stderr, "devsim: publish on %s failed: %s\n",
                            topics[d], err ? err : "?");
                if (send_errors > 1000) {
                    dead = 1;
                    break;
                }
                blocked = 1;
                break;
            }
            last_ts[d] = ts;
            seq[d]++;
            atomic_fetch_add_explicit(&c->sent, 1, memory_order_relaxed);
            if (opt.qos == 0)
                count_ack(c, 1);
            if (first_ts < 0)
                first_ts = ts;
            last_sent_ts = ts;
            i++;
            if (opt.rate > 0)
                tokens -= 1;
        }
        if (blocked)
            window_waits++;
        be->service(blocked ? 0.0002 : 0);
    }
    elapsed = mono_s() - t0;

    /* wait for the PUBACKs still due */
    drain_end = mono_s() + opt.drain;
    for (;;) {
        sent = SUM(sent);
        acked = SUM(acked);
        failed = SUM(failed);
        if (acked + failed >= sent || mono_s() > drain_end ||
            lost_connections() == opt.conns)
            break;
        be->service(0.01);
    }
    sent = SUM(sent);
    acked = SUM(acked);
    failed = SUM(failed);
    lost = lost_connections();
    close_all();

    if (opt.rate > 0)
        snprintf(target, sizeof(target), "%.0f msg/s", opt.rate);
    else
        snprintf(target, sizeof(target), "max rate (window %d)", opt.window);
    printf("devsim publish: %s, %d devices, %d connections, MQTT %s, QoS %d, "
           "%s, %.1f s\n", opt.paho ? "paho" : "libmosquitto", opt.devices,
           opt.conns, opt.version == 5 ? "5" : "3.1.1", opt.qos, target,
           opt.duration);
    printf("RESULT mode=publish sent=%" PRIu64 " acked=%" PRIu64
           " errors=%" PRIu64 " unacked=%" PRIu64 " elapsed_s=%.3f"
           " rate=%.1f target=%.0f devices=%d connections=%d"
           " first_ts_ms=%" PRId64 " last_ts_ms=%" PRId64
           " window_waits=%" PRIu64 " lost_connections=%d\n",
           sent, acked, failed + send_errors, sent - acked - failed, elapsed,
           elapsed > 0 ? (double)sent / elapsed : 0.0, opt.rate, opt.devices,
           opt.conns, first_ts, last_sent_ts, window_waits, lost);
    fflush(stdout);
    if (failed + send_errors > 0 || acked + failed < sent || lost > 0)
        rc = 1;
    for (int d = 0; d < opt.devices; d++)
        free(topics[d]);
    free(topics);
    free(last_ts);
    free(seq);
    return rc;
}

/* ---- subscribe mode ------------------------------------------------------ */

/* q-quantile of the latency histogram in ms; -1 when empty. */
static int64_t lat_quantile(double q)
{
    uint64_t total = 0, want, seen = 0;

    for (int i = 0; i < LAT_BUCKETS; i++)
        total += atomic_load(&lat_hist[i]);
    if (total == 0)
        return -1;
    want = (uint64_t)(q * (double)total + 0.5);
    if (want < 1)
        want = 1;
    for (int i = 0; i < LAT_BUCKETS; i++) {
        seen += atomic_load(&lat_hist[i]);
        if (seen >= want)
            return i;
    }
    return LAT_BUCKETS - 1;
}

/* --t-us: q-quantile in ms, the upper edge of its 10 us bucket; -1 when
 * empty */
static double us_quantile(double q)
{
    uint64_t total = 0, want, seen = 0;

    for (int i = 0; i < US_BUCKETS; i++)
        total += atomic_load(&us_hist[i]);
    if (total == 0)
        return -1;
    want = (uint64_t)(q * (double)total + 0.999999);
    if (want < 1)
        want = 1;
    for (int i = 0; i < US_BUCKETS; i++) {
        seen += atomic_load(&us_hist[i]);
        if (seen >= want)
            return (i + 1) * US_BUCKET / 1000.0;
    }
    return US_BUCKETS * US_BUCKET / 1000.0;
}

static int run_subscribe(void)
{
    char     filter[512];
    double   t0, deadline, next_report, last_change;
    uint64_t last_count = 0, prev = 0, n = 0;
    int64_t  first, last;
    int      rc = 0;
    struct rusage ru;
    double   cpu = -1;
    char     xadd[120] = "";

    if (opt.share[0])
        snprintf(filter, sizeof(filter), "$share/%s/%s", opt.share,
                 opt.topic);
    else
        snprintf(filter, sizeof(filter), "%s", opt.topic);

    if (connect_all("s") != 0) {
        close_all();
        return 1;
    }
    for (int i = 0; i < opt.conns; i++) {
        if (be->subscribe(&conns[i], filter) != 0) {
            close_all();
            return 1;
        }
    }
    deadline = mono_s() + 10;
    for (;;) {
        int ok = 0, bad = 0;

        for (int i = 0; i < opt.conns; i++) {
            ok += atomic_load(&conns[i].subscribed) == 1;
            bad += atomic_load(&conns[i].subscribed) == -1 ||
                   atomic_load(&conns[i].lost);
        }
        if (bad) {
            close_all();
            return 1;
        }
        if (ok == opt.conns)
            break;
        if (stop_flag || mono_s() > deadline) {
            fprintf(stderr, "devsim: subscription to %s not granted after "
                    "10 s\n", filter);
            close_all();
            return 1;
        }
        be->service(0.005);
    }
    /* the driver waits for this line before it starts publishing */
    printf("devsim: subscribed %s on %d connection(s), %s, MQTT %s, QoS %d"
           "%s%s%s%s%s%s\n",
           filter, opt.conns, opt.paho ? "paho" : "libmosquitto",
           opt.version == 5 ? "5" : "3.1.1", opt.qos,
           opt.xadd ? ", XADD to " : "", opt.xadd ? opt.xadd_stream : "",
           opt.xadd ? " at " : "", opt.xadd ? opt.xadd : "",
           opt.ws_publish ? ", PUBLISH on " : "",
           opt.ws_publish ? opt.ws_channel : "");
    fflush(stdout);

    t0 = mono_s();
    deadline = t0 + opt.duration;
    next_report = t0 + 1;
    last_change = t0;
    while (!stop_flag) {
        double now;

        be->service(0.01);
        now = mono_s();
        n = atomic_load(&rx_count);
        if (n != last_count)
            last_change = now;
        last_count = n;
        if (opt.expect && n >= opt.expect)
            break;
        if (n > 0 && now - last_change >= opt.idle)
            break;
        if (now >= deadline || lost_connections() == opt.conns)
            break;
        if (now >= next_report) {
            if (!opt.quiet)
                fprintf(stderr, "devsim: t=%4.0fs received %" PRIu64
                        " (%" PRIu64 "/s)\n", now - t0, n, n - prev);
            prev = n;
            next_report += 1;
        }
    }
    n = atomic_load(&rx_count);
    first = atomic_load(&rx_first_ms);
    last = atomic_load(&rx_last_ms);
    if (lost_connections() > 0 || atomic_load(&xadd_errors) > 0)
        rc = 1;
    /* the whole process, every thread, since it started: what a subscriber
     * costs per message (the driver divides by received) */
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
              (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    if (opt.xadd)
        snprintf(xadd, sizeof(xadd), " xadd=%" PRIu64 " xadd_errors=%" PRIu64,
                 atomic_load(&xadd_ok), atomic_load(&xadd_errors));
    if (opt.ws_publish)
        snprintf(xadd + strlen(xadd), sizeof(xadd) - strlen(xadd),
                 " ws_published=%" PRIu64, atomic_load(&ws_published));
    printf("RESULT mode=subscribe received=%" PRIu64 " elapsed_s=%.3f"
           " rate=%.1f first_ms=%" PRId64 " last_ms=%" PRId64,
           n, n > 1 ? (last - first) / 1000.0 : 0.0,
           n > 1 && last > first ? (double)(n - 1) * 1000.0 / (last - first)
                                 : 0.0,
           first, last);
    if (opt.t_us)
        printf(" lat_p50_ms=%.2f lat_p99_ms=%.2f lat_p999_ms=%.2f"
               " lat_max_ms=%.3f no_t_us=%" PRIu64,
               us_quantile(0.50), us_quantile(0.99), us_quantile(0.999),
               atomic_load(&us_max) / 1000.0, atomic_load(&rx_no_ts));
    else
        printf(" lat_p50_ms=%" PRId64 " lat_p99_ms=%" PRId64
               " lat_max_ms=%" PRId64 " no_ts=%" PRIu64,
               lat_quantile(0.50), lat_quantile(0.99), lat_quantile(1.0),
               atomic_load(&rx_no_ts));
    printf(" connections=%d lost_connections=%d lib=%s cpu_s=%.3f%s\n",
           opt.conns, lost_connections(), opt.paho ? "paho" : "mosquitto",
           cpu, xadd);
    fflush(stdout);
    close_all();
    return rc;
}

/* ---- main ---------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
"usage: devsim [options]                 publish telemetry as N devices\n"
"       devsim --subscribe [options]     count QoS 1 deliveries\n"
"  -u, --uri URI          broker, tcp://HOST:PORT (tcp://127.0.0.1:1883)\n"
"  -l, --lib LIB          mosquitto (default) or paho\n"
"  -n, --devices N        devices dev-000001.. (1000)\n"
"  -r, --rate R           total msg/s; 0 = as fast as the windows allow "
"(10000)\n"
"  -d, --duration S       seconds of publishing (30); subscribe: longest "
"wait (600)\n"
"  -c, --connections C    MQTT connections (publish 10, subscribe 1)\n"
"  -w, --window W         unacknowledged publishes per connection (1000)\n"
"  -q, --qos Q            0 or 1 (1)\n"
"  -V, --mqtt-version V   4 (3.1.1) or 5 (publish 4, subscribe 5)\n"
"  -p, --prefix P         device id prefix (dev-)\n"
"      --first K          number of the first device (1)\n"
"      --drain S          after publishing, wait up to S s for PUBACKs (10)\n"
"  -s, --subscribe        subscriber mode\n"
"  -t, --topic FILTER     subscribe filter (devices/+/telemetry)\n"
"  -g, --share GROUP      subscribe to $share/GROUP/FILTER; \"\" = plain "
"(bench)\n"
"  -e, --expect N         subscribe: stop after N messages\n"
"  -i, --idle S           subscribe: stop S s after the last message (3)\n"
"      --receive-max N    subscribe, MQTT 5: Receive Maximum (1000)\n"
"      --xadd HOST:PORT   subscribe, paho: append every message to this\n"
"                         Redis as fleetd does (MULTI, XADD, HSET of its\n"
"                         dedup record, EXEC) before returning from\n"
"                         messageArrived (the PUBACK follows the append)\n"
"      --xadd-stream KEY  stream for --xadd (bench:ingest)\n"
"      --xadd-maxlen N    XADD ... MAXLEN ~ N (1000000)\n"
"      --xadd-store ROOT  XADD the topic with its first level replaced by\n"
"                         ROOT and the field f 1: into fleetd's stream,\n"
"                         fleetd's consumer stores the entry and does not\n"
"                         fan it out again (the fan-out floor with\n"
"                         fleetd's storage work)\n"
"      --ws-publish PREFIX:SHARDS  with --xadd: also PUBLISH fleetd's\n"
"                         WebSocket form of the message on\n"
"                         PREFIXtele:<FNV-1a 32 of the device %% SHARDS>\n"
"                         in the same MULTI/EXEC (QoS 0 too)\n"
"      --topic-root R     publish: on R/<device>/telemetry (devices)\n"
"      --t-us             publish: add \"t_us\" (send time, epoch us) to\n"
"                         each payload; subscribe: latency from it (10 us\n"
"                         buckets, ms with 2 decimals, adds lat_p999_ms)\n"
"  -Q, --quiet            no progress lines on stderr\n"
"  -h, --help\n"
"Ends with one line on stdout: RESULT mode=... key=value ...\n");
}

static int parse_num(const char *name, const char *s, double lo, double hi,
                     double *out)
{
    char  *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "devsim: %s must be a number in [%g, %g], not '%s'\n",
                name, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* tcp://HOST:PORT, mqtt://HOST:PORT or HOST:PORT -> opt.host, opt.port */
static int parse_uri(const char *uri)
{
    const char *p = strstr(uri, "://");
    const char *colon;
    double      port;
    size_t      hl;

    if (p) {
        if (strncmp(uri, "tcp://", 6) != 0 && strncmp(uri, "mqtt://", 7)) {
            fprintf(stderr, "devsim: only tcp:// URIs are supported: %s\n",
                    uri);
            return -1;
        }
        p += 3;
    } else {
        p = uri;
    }
    colon = strrchr(p, ':');
    if (!colon) {
        opt.port = 1883;
        hl = strlen(p);
    } else {
        if (parse_num("the URI port", colon + 1, 1, 65535, &port))
            return -1;
        opt.port = (int)port;
        hl = (size_t)(colon - p);
    }
    if (hl == 0 || hl >= sizeof(opt.host)) {
        fprintf(stderr, "devsim: bad host in %s\n", uri);
        return -1;
    }
    memcpy(opt.host, p, hl);
    opt.host[hl] = '\0';
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"uri", required_argument, NULL, 'u'},
        {"lib", required_argument, NULL, 'l'},
        {"devices", required_argument, NULL, 'n'},
        {"rate", required_argument, NULL, 'r'},
        {"duration", required_argument, NULL, 'd'},
        {"connections", required_argument, NULL, 'c'},
        {"window", required_argument, NULL, 'w'},
        {"qos", required_argument, NULL, 'q'},
        {"mqtt-version", required_argument, NULL, 'V'},
        {"prefix", required_argument, NULL, 'p'},
        {"first", required_argument, NULL, 'F'},
        {"drain", required_argument, NULL, 'D'},
        {"subscribe", no_argument, NULL, 's'},
        {"topic", required_argument, NULL, 't'},
        {"share", required_argument, NULL, 'g'},
        {"expect", required_argument, NULL, 'e'},
        {"idle", required_argument, NULL, 'i'},
        {"receive-max", required_argument, NULL, 'R'},
        {"xadd", required_argument, NULL, 'X'},
        {"xadd-stream", required_argument, NULL, 'K'},
        {"xadd-store", required_argument, NULL, 'O'},
        {"xadd-maxlen", required_argument, NULL, 'M'},
        {"t-us", no_argument, NULL, 'U'},
        {"ws-publish", required_argument, NULL, 'W'},
        {"topic-root", required_argument, NULL, 'T'},
        {"quiet", no_argument, NULL, 'Q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct sigaction sa;
    double           v;
    int              ch, rc;

    while ((ch = getopt_long(argc, argv, "u:l:n:r:d:c:w:q:V:p:st:g:e:i:Qh",
                             longopts, NULL)) != -1) {
        switch (ch) {
        case 'u': opt.uri = optarg; break;
        case 'l':
            if (strcmp(optarg, "paho") == 0) {
                opt.paho = 1;
            } else if (strcmp(optarg, "mosquitto") == 0) {
                opt.paho = 0;
            } else {
                fprintf(stderr, "devsim: --lib is mosquitto or paho\n");
                return 2;
            }
            break;
        case 'n':
            if (parse_num("--devices", optarg, 1, 10000000, &v)) return 2;
            opt.devices = (int)v;
            break;
        case 'r':
            if (parse_num("--rate", optarg, 0, 1e9, &v)) return 2;
            opt.rate = v;
            break;
        case 'd':
            if (parse_num("--duration", optarg, 0.001, 86400, &v)) return 2;
            opt.duration = v;
            break;
        case 'c':
            if (parse_num("--connections", optarg, 1, 10000, &v)) return 2;
            opt.conns = (int)v;
            break;
        case 'w':
            if (parse_num("--window", optarg, 1, 65535, &v)) return 2;
            opt.window = (int)v;
            break;
        case 'q':
            if (parse_num("--qos", optarg, 0, 1, &v)) return 2;
            opt.qos = (int)v;
            break;
        case 'V':
            if (parse_num("--mqtt-version", optarg, 4, 5, &v)) return 2;
            opt.version = (int)v;
            break;
        case 'p': opt.prefix = optarg; break;
        case 'F':
            if (parse_num("--first", optarg, 0, 999999999, &v)) return 2;
            opt.first = (int)v;
            break;
        case 'D':
            if (parse_num("--drain", optarg, 0, 3600, &v)) return 2;
            opt.drain = v;
            break;
        case 's': opt.subscribe = 1; break;
        case 't': opt.topic = optarg; break;
        case 'g': opt.share = optarg; break;
        case 'e':
            if (parse_num("--expect", optarg, 0, 1e15, &v)) return 2;
            opt.expect = (uint64_t)v;
            break;
        case 'i':
            if (parse_num("--idle", optarg, 0.01, 86400, &v)) return 2;
            opt.idle = v;
            break;
        case 'R':
            if (parse_num("--receive-max", optarg, 1, 65535, &v)) return 2;
            opt.receive_max = (int)v;
            break;
        case 'X': opt.xadd = optarg; break;
        case 'O': opt.xadd_store = optarg; break;
        case 'K':
            if (!optarg[0]) {
                fprintf(stderr, "devsim: --xadd-stream must not be empty\n");
                return 2;
            }
            opt.xadd_stream = optarg;
            break;
        case 'M':
            if (parse_num("--xadd-maxlen", optarg, 1, 1e15, &v)) return 2;
            snprintf(opt.xadd_maxlen, sizeof(opt.xadd_maxlen), "%" PRIu64,
                     (uint64_t)v);
            break;
        case 'U': opt.t_us = 1; break;
        case 'W': opt.ws_publish = optarg; break;
        case 'T':
            if (!optarg[0] || strchr(optarg, '+') || strchr(optarg, '#')) {
                fprintf(stderr, "devsim: --topic-root must be a non-empty "
                        "topic without wildcards\n");
                return 2;
            }
            opt.topic_root = optarg;
            break;
        case 'Q': opt.quiet = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "devsim: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (parse_uri(opt.uri) != 0)
        return 2;
    if (opt.xadd) {
        const char *colon = strrchr(opt.xadd, ':');
        size_t      hl = colon ? (size_t)(colon - opt.xadd) : 0;

        if (!opt.subscribe || !opt.paho) {
            fprintf(stderr, "devsim: --xadd needs --subscribe --lib paho\n");
            return 2;
        }
        if (!colon || hl == 0 || hl >= sizeof(opt.xadd_host) ||
            parse_num("the --xadd port", colon + 1, 1, 65535, &v)) {
            fprintf(stderr, "devsim: --xadd is HOST:PORT, not '%s'\n",
                    opt.xadd);
            return 2;
        }
        memcpy(opt.xadd_host, opt.xadd, hl);
        opt.xadd_host[hl] = '\0';
        opt.xadd_port = (int)v;
        /* fleetd's {prefix}ingest -> {prefix}dedup: */
        hl = strlen(opt.xadd_stream);
        if (hl >= 6 && strcmp(opt.xadd_stream + hl - 6, "ingest") == 0)
            snprintf(opt.dedup_prefix, sizeof(opt.dedup_prefix),
                     "%.*sdedup:", (int)(hl - 6), opt.xadd_stream);
        else
            snprintf(opt.dedup_prefix, sizeof(opt.dedup_prefix),
                     "%s:dedup:", opt.xadd_stream);
        opt.dedup_slots = dedup_ring(opt.receive_max);
    }
    if (opt.ws_publish) {
        const char *colon = strrchr(opt.ws_publish, ':');
        size_t      pl = colon ? (size_t)(colon - opt.ws_publish) : 0;

        if (!opt.xadd) {
            fprintf(stderr, "devsim: --ws-publish needs --xadd\n");
            return 2;
        }
        if (!colon || pl + 5 >= sizeof(opt.ws_channel) ||
            parse_num("the --ws-publish shards", colon + 1, 1, 65536, &v) ||
            v != (unsigned)v) {
            fprintf(stderr, "devsim: --ws-publish is PREFIX:SHARDS, not '%s'\n",
                    opt.ws_publish);
            return 2;
        }
        snprintf(opt.ws_channel, sizeof(opt.ws_channel), "%.*stele:",
                 (int)pl, opt.ws_publish);
        opt.ws_shards = (unsigned)v;
    }
    if (opt.conns < 0)
        opt.conns = opt.subscribe ? 1 : 10;
    if (opt.version < 0)
        opt.version = opt.subscribe ? 5 : 4;
    if (opt.duration < 0)
        opt.duration = opt.subscribe ? 600 : 30;
    if (!opt.subscribe && opt.conns > opt.devices)
        opt.conns = opt.devices;

    if (opt.t_us && opt.subscribe) {
        us_hist = calloc(US_BUCKETS, sizeof(*us_hist));
        if (!us_hist) {
            fprintf(stderr, "devsim: out of memory\n");
            return 1;
        }
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    be = opt.paho ? &paho_backend : &mosq_backend;
    if (!opt.paho)
        mosquitto_lib_init();
    rc = opt.subscribe ? run_subscribe() : run_publish();
    if (!opt.paho)
        mosquitto_lib_cleanup();
    return rc;
}
