/*
 * intake_pipe.c - the intake floor with pipelined appends, for
 * bench/ingest-bench (issue 10): what fleetd's mandatory work per message
 * (append to the Redis stream before the PUBACK) costs the broker, Redis
 * and the subscriber when the appends of all messages in flight go out
 * together, instead of one round trip per message from paho's receive
 * thread (devsim --lib paho --xadd, the floor fleetd has today).
 *
 * One thread, one libevent loop: one MQTT 5 connection, spoken with
 * fleetd's own codec (worker/ingest/fl_mqttpkt.c), subscribed at QoS 1
 * to $share/GROUP/TOPIC with Receive Maximum R, and one hiredis async
 * connection on the same loop. For each QoS 1 PUBLISH it queues what
 * worker/ingest/fl_mqtt.c sends for it - MULTI, XADD <stream> MAXLEN ~
 * <maxlen> * t <topic> p <payload> r <rx ms>, HSET <dedup key>
 * <id % N> "<id>:<hash>", PEXPIRE once a minute, EXEC - and writes the
 * PUBACK when its EXEC answered: a message is acknowledged only once it
 * is in the stream, as in fleetd. What one socket read brings goes to
 * Redis in one write; at most R messages are in flight (the broker keeps
 * to our Receive Maximum).
 *
 * Output as devsim --subscribe's, so that the driver reads both alike:
 * "devsim: subscribed ..." once the SUBACK came, then one line
 * "RESULT mode=subscribe received= elapsed_s= rate= first_ms= last_ms=
 * lat_p50_ms= lat_p99_ms= lat_max_ms= no_ts= connections=1
 * lost_connections= lib=pipe cpu_s= xadd= xadd_errors=" when nothing came
 * for -i seconds after the first message, or after -d seconds. Latency:
 * the payload's "ts" (the publisher's send time, ms) to the PUBACK.
 *
 * Usage: intake_pipe -u tcp://HOST:PORT --xadd HOST:PORT [-g GROUP]
 *        [-t TOPIC] [--xadd-stream S] [--xadd-maxlen N] [-R R] [-i S]
 *        [-d S] [-Q]
 * Exit status 0; 1 on a failed connection, a lost one, or an append that
 * failed.
 */
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "fl_core.h"
#include "fl_enc.h"
#include "fl_mqttpkt.h"

#define DEDUP_ID_SPACE  65535 /* as worker/ingest/fl_mqtt.c */
#define DEDUP_MAX_SLOTS 21845
#define DEDUP_REFRESH_S 60
#define DEDUP_TTL_MS    "120000"
#define LAT_BUCKETS     10000 /* 1 ms each */
#define KEEP_ALIVE_S    30

static struct {
    const char *uri, *group, *topic, *xadd, *stream, *maxlen;
    char        mq_host[256], rd_host[256];
    int         mq_port, rd_port, receive_max, idle_s, duration_s, quiet;
} opt = {
    .group = "bench",
    .topic = "devices/+/telemetry",
    .stream = "bench:ingest",
    .maxlen = "1000000",
    .receive_max = 100,
    .idle_s = 3,
    .duration_s = 600,
};

static struct event_base  *base;
static struct bufferevent *bev;
static redisAsyncContext  *rc;
static fl_mqttrx_t         rx;
static fl_sbuf_t           out;
static char                client_id[64], dedup_key[128];
static unsigned            dedup_slots;
static double              dedup_expire_at;
static int                 subscribed, lost, exit_code;
static uint64_t            received, xadd_ok, xadd_errors, no_ts, inflight;
static int64_t             first_ms, last_ms, lat_max;
static double              last_change;
static uint32_t            lat_hist[LAT_BUCKETS + 1];

static double mono_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int64_t wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void stop(int code)
{
    if (code > exit_code)
        exit_code = code;
    event_base_loopbreak(base);
}

/* N for R: the smallest divisor of 65535 not below R (fl_mqtt.c). */
static unsigned dedup_ring(int r)
{
    for (unsigned n = r > 1 ? (unsigned)r : 1; n < DEDUP_MAX_SLOTS; n++)
        if (DEDUP_ID_SPACE % n == 0)
            return n;
    return DEDUP_MAX_SLOTS;
}

/* FNV-1a 64 over topic, a 0 byte, payload (fl_mqtt.c). */
static uint64_t msg_hash(const void *topic, size_t tlen, const void *payload,
                         size_t plen)
{
    const unsigned char *p = topic;
    uint64_t             h = 0xcbf29ce484222325ULL;

    for (size_t i = 0; i < tlen; i++)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    h *= 0x100000001b3ULL;
    p = payload;
    for (size_t i = 0; i < plen; i++)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

static int64_t payload_ts(const unsigned char *p, size_t len)
{
    const char *k = memmem(p, len, "\"ts\"", 4), *end = (const char *)p + len;
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

static double lat_quantile(double q)
{
    uint64_t total = 0, seen = 0;

    for (int i = 0; i <= LAT_BUCKETS; i++)
        total += lat_hist[i];
    for (int i = 0; i <= LAT_BUCKETS && total; i++) {
        seen += lat_hist[i];
        if ((double)seen >= q * (double)total)
            return i;
    }
    return 0;
}

static void send_out(void)
{
    if (out.len && bufferevent_write(bev, out.p, out.len) != 0)
        stop(1);
    out.len = 0;
}

/* ---- the append, and the PUBACK once it is in ---- */

typedef struct {
    uint16_t packet_id;
    int64_t  ts; /* from the payload, -1 none */
} pending_t;

static void on_exec(redisAsyncContext *c, void *r, void *priv)
{
    redisReply *reply = r;
    pending_t  *p = priv;
    int64_t     now = wall_ms();

    (void)c;
    inflight--;
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY ||
        reply->elements < 2 || reply->element[0]->type != REDIS_REPLY_STRING) {
        if (xadd_errors++ < 10)
            fprintf(stderr, "intake_pipe: MULTI/XADD failed: %s\n",
                    reply && reply->type == REDIS_REPLY_ERROR
                        ? reply->str
                        : c->errstr[0] ? c->errstr : "unexpected reply");
        free(p);
        stop(1);
        return;
    }
    xadd_ok++;
    if (fl_mqtt_put_puback(&out, p->packet_id, 0) != FL_OK)
        stop(1);
    send_out();
    if (p->ts >= 0) {
        int64_t l = now - p->ts;

        if (l < 0)
            l = 0;
        lat_hist[l > LAT_BUCKETS ? LAT_BUCKETS : l]++;
        if (l > lat_max)
            lat_max = l;
    } else {
        no_ts++;
    }
    free(p);
}

static void on_publish(const fl_mqtt_packet_t *pk)
{
    char        rx_ms[24], field[12], value[40];
    const char *argv[12];
    size_t      lens[12];
    int         argc = 0;
    pending_t  *p;
    double      now = mono_s();

    received++;
    last_change = now;
    last_ms = wall_ms();
    if (first_ms == 0)
        first_ms = last_ms;
    if (pk->qos == 0 || pk->topic.len == 0)
        return; /* the bench publishes at QoS 1 without aliases */
    snprintf(rx_ms, sizeof(rx_ms), "%" PRId64, last_ms);
#define ARG(s, n) (argv[argc] = (s), lens[argc] = (n), argc++)
    ARG("XADD", 4);
    ARG(opt.stream, strlen(opt.stream));
    ARG("MAXLEN", 6);
    ARG("~", 1);
    ARG(opt.maxlen, strlen(opt.maxlen));
    ARG("*", 1);
    ARG("t", 1);
    ARG(pk->topic.p, pk->topic.len);
    ARG("p", 1);
    ARG(pk->payload.len ? (const char *)pk->payload.p : "", pk->payload.len);
    ARG("r", 1);
    ARG(rx_ms, strlen(rx_ms));
#undef ARG
    snprintf(field, sizeof(field), "%u", (unsigned)pk->packet_id % dedup_slots);
    snprintf(value, sizeof(value), "%u:%016" PRIx64, (unsigned)pk->packet_id,
             msg_hash(pk->topic.p, pk->topic.len, pk->payload.p,
                      pk->payload.len));
    {
        const char *multi[] = {"MULTI"}, *exec[] = {"EXEC"};
        const char *hset[] = {"HSET", dedup_key, field, value};
        const char *pexp[] = {"PEXPIRE", dedup_key, DEDUP_TTL_MS};
        size_t      hl[4] = {4, strlen(dedup_key), strlen(field),
                             strlen(value)};
        size_t      pl[3] = {7, strlen(dedup_key), strlen(DEDUP_TTL_MS)};

        p = fl_alloc(sizeof(*p));
        p->packet_id = pk->packet_id;
        p->ts = payload_ts(pk->payload.p, pk->payload.len);
        inflight++;
        if (redisAsyncCommandArgv(rc, NULL, NULL, 1, multi, NULL) !=
                REDIS_OK ||
            redisAsyncCommandArgv(rc, NULL, NULL, argc, argv, lens) !=
                REDIS_OK ||
            redisAsyncCommandArgv(rc, NULL, NULL, 4, hset, hl) != REDIS_OK ||
            (now >= dedup_expire_at &&
             redisAsyncCommandArgv(rc, NULL, NULL, 3, pexp, pl) !=
                 REDIS_OK) ||
            redisAsyncCommandArgv(rc, on_exec, p, 1, exec, NULL) != REDIS_OK) {
            fprintf(stderr, "intake_pipe: redis is gone\n");
            free(p);
            stop(1);
            return;
        }
        if (now >= dedup_expire_at)
            dedup_expire_at = now + DEDUP_REFRESH_S;
    }
}

/* ---- MQTT ---- */

static void subscribe(void)
{
    char          filter[512];
    fl_mqtt_sub_t s = {.qos = 1};

    snprintf(filter, sizeof(filter), "$share/%s/%s", opt.group, opt.topic);
    s.filter = (fl_mqtt_str_t){filter, strlen(filter)};
    if (fl_mqtt_put_subscribe(&out, 1, 0, &s, 1) != FL_OK) {
        fprintf(stderr, "intake_pipe: bad topic filter %s\n", filter);
        stop(1);
        return;
    }
    send_out();
}

static void on_packet(const fl_mqtt_packet_t *pk)
{
    switch (pk->type) {
    case FL_MQTT_CONNACK:
        if (pk->reason != 0) {
            fprintf(stderr, "intake_pipe: CONNACK reason 0x%02x\n",
                    pk->reason);
            stop(1);
            return;
        }
        subscribe();
        break;
    case FL_MQTT_SUBACK:
        if (pk->reasons.len != 1 || pk->reasons.p[0] > 1) {
            fprintf(stderr, "intake_pipe: subscription refused\n");
            stop(1);
            return;
        }
        subscribed = 1;
        last_change = mono_s();
        printf("devsim: subscribed $share/%s/%s on 1 connection(s), "
               "intake_pipe (fl_mqttpkt), MQTT 5, QoS 1, XADD to %s at %s\n",
               opt.group, opt.topic, opt.stream, opt.xadd);
        fflush(stdout);
        break;
    case FL_MQTT_PUBLISH:
        on_publish(pk);
        break;
    case FL_MQTT_DISCONNECT:
        fprintf(stderr, "intake_pipe: the broker disconnected, reason 0x%02x\n",
                pk->reason);
        lost = 1;
        stop(1);
        break;
    default:
        break;
    }
}

static void on_mqtt_read(struct bufferevent *b, void *arg)
{
    struct evbuffer  *in = bufferevent_get_input(b);
    size_t            n = evbuffer_get_length(in), used, taken = 0;
    unsigned char    *p = evbuffer_pullup(in, -1);
    fl_mqtt_packet_t  pk;
    int               rc_;

    (void)arg;
    while ((rc_ = fl_mqttrx_feed(&rx, p + taken, n - taken, &used, &pk)) ==
           FL_OK) {
        taken += used;
        on_packet(&pk);
    }
    evbuffer_drain(in, n);
    if (rc_ != FL_AGAIN) {
        fprintf(stderr, "intake_pipe: bad packet from the broker: 0x%02x %s\n",
                rc_, rx.why ? rx.why : "");
        stop(1);
    }
}

static void on_mqtt_event(struct bufferevent *b, short what, void *arg)
{
    fl_mqtt_connect_t c = {.keep_alive = KEEP_ALIVE_S,
                           .clean_start = 1,
                           .receive_max = (uint16_t)opt.receive_max};

    (void)b, (void)arg;
    if (what & BEV_EVENT_CONNECTED) {
        c.client_id = (fl_mqtt_str_t){client_id, strlen(client_id)};
        if (fl_mqtt_put_connect(&out, &c) != FL_OK)
            stop(1);
        send_out();
        return;
    }
    fprintf(stderr, "intake_pipe: broker connection %s\n",
            what & BEV_EVENT_EOF ? "closed" : "failed");
    lost = 1;
    stop(1);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    static double next_ping;
    double        now = mono_s();

    (void)fd, (void)what, (void)arg;
    if (now >= next_ping) {
        fl_mqtt_put_pingreq(&out);
        send_out();
        next_ping = now + KEEP_ALIVE_S / 2;
    }
    if (subscribed && received > 0 && inflight == 0 &&
        now - last_change >= opt.idle_s)
        stop(0);
}

static void on_redis_connect(const redisAsyncContext *c, int status)
{
    if (status != REDIS_OK) {
        fprintf(stderr, "intake_pipe: redis %s:%d: %s\n", opt.rd_host,
                opt.rd_port, c->errstr);
        stop(1);
    }
}

static void on_redis_disconnect(const redisAsyncContext *c, int status)
{
    (void)c;
    rc = NULL;
    if (status != REDIS_OK)
        stop(1);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    stop(0);
}

/* HOST:PORT, or tcp://HOST:PORT */
static int host_port(const char *s, char *host, size_t hlen, int *port)
{
    const char *c;

    if (strncmp(s, "tcp://", 6) == 0)
        s += 6;
    c = strrchr(s, ':');
    if (c == NULL || (size_t)(c - s) >= hlen || (*port = atoi(c + 1)) <= 0)
        return -1;
    memcpy(host, s, (size_t)(c - s));
    host[c - s] = '\0';
    return 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: intake_pipe -u tcp://HOST:PORT --xadd HOST:PORT [-g GROUP]"
            " [-t TOPIC]\n"
            "       [--xadd-stream S] [--xadd-maxlen N] [-R RECEIVE_MAX]"
            " [-i IDLE_S] [-d MAX_S] [-Q]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"xadd", required_argument, NULL, 'x'},
        {"xadd-stream", required_argument, NULL, 's'},
        {"xadd-maxlen", required_argument, NULL, 'm'},
        {NULL, 0, NULL, 0},
    };
    struct timeval tick = {0, 100000}, dl;
    struct event  *ev_tick, *ev_dl;
    struct rusage  ru;
    double         cpu = -1;
    int            ch;

    while ((ch = getopt_long(argc, argv, "u:g:t:R:i:d:Q", lo, NULL)) != -1) {
        switch (ch) {
        case 'u': opt.uri = optarg; break;
        case 'g': opt.group = optarg; break;
        case 't': opt.topic = optarg; break;
        case 'R': opt.receive_max = atoi(optarg); break;
        case 'i': opt.idle_s = atoi(optarg); break;
        case 'd': opt.duration_s = atoi(optarg); break;
        case 'Q': opt.quiet = 1; break;
        case 'x': opt.xadd = optarg; break;
        case 's': opt.stream = optarg; break;
        case 'm': opt.maxlen = optarg; break;
        default: usage();
        }
    }
    if (!opt.uri || !opt.xadd || opt.receive_max < 1 ||
        opt.receive_max > 65535 ||
        host_port(opt.uri, opt.mq_host, sizeof(opt.mq_host), &opt.mq_port) ||
        host_port(opt.xadd, opt.rd_host, sizeof(opt.rd_host), &opt.rd_port))
        usage();
    signal(SIGPIPE, SIG_IGN);
    snprintf(client_id, sizeof(client_id), "intake-pipe-%d", (int)getpid());
    snprintf(dedup_key, sizeof(dedup_key), "bench:dedup:%s", client_id);
    dedup_slots = dedup_ring(opt.receive_max);
    fl_mqttrx_init(&rx, 1u << 20, 0);

    base = event_base_new();
    rc = redisAsyncConnect(opt.rd_host, opt.rd_port);
    if (rc == NULL || rc->err) {
        fprintf(stderr, "intake_pipe: redis %s:%d: %s\n", opt.rd_host,
                opt.rd_port, rc ? rc->errstr : "no memory");
        return 1;
    }
    redisLibeventAttach(rc, base);
    redisAsyncSetConnectCallback(rc, on_redis_connect);
    redisAsyncSetDisconnectCallback(rc, on_redis_disconnect);

    bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(bev, on_mqtt_read, NULL, on_mqtt_event, NULL);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    if (bufferevent_socket_connect_hostname(bev, NULL, AF_INET, opt.mq_host,
                                            opt.mq_port) != 0) {
        fprintf(stderr, "intake_pipe: cannot connect to %s\n", opt.uri);
        return 1;
    }
    ev_tick = event_new(base, -1, EV_PERSIST, on_tick, NULL);
    event_add(ev_tick, &tick);
    dl.tv_sec = opt.duration_s;
    dl.tv_usec = 0;
    ev_dl = evtimer_new(base, on_deadline, NULL);
    evtimer_add(ev_dl, &dl);

    event_base_dispatch(base);

    if (getrusage(RUSAGE_SELF, &ru) == 0)
        cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
              (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    printf("RESULT mode=subscribe received=%" PRIu64 " elapsed_s=%.3f"
           " rate=%.1f first_ms=%" PRId64 " last_ms=%" PRId64
           " lat_p50_ms=%.0f lat_p99_ms=%.0f lat_max_ms=%" PRId64
           " no_ts=%" PRIu64 " connections=1 lost_connections=%d lib=pipe"
           " cpu_s=%.3f xadd=%" PRIu64 " xadd_errors=%" PRIu64 "\n",
           received, received > 1 ? (last_ms - first_ms) / 1000.0 : 0.0,
           received > 1 && last_ms > first_ms
               ? (double)(received - 1) * 1000.0 / (double)(last_ms - first_ms)
               : 0.0,
           first_ms, last_ms, lat_quantile(0.5), lat_quantile(0.99), lat_max,
           no_ts, lost, cpu, xadd_ok, xadd_errors);
    fflush(stdout);
    if (bev) {
        fl_mqtt_put_disconnect(&out, 0, NULL);
        send_out();
        bufferevent_flush(bev, EV_WRITE, BEV_FLUSH);
        bufferevent_free(bev);
    }
    if (rc)
        redisAsyncDisconnect(rc);
    fl_mqttrx_free(&rx);
    fl_sb_free(&out);
    event_free(ev_tick);
    event_free(ev_dl);
    event_base_free(base);
    return exit_code || lost || xadd_errors ? 1 : 0;
}
