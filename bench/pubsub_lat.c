/*
 * pubsub_lat.c - Redis Pub/Sub publish -> receive latency, the baseline of
 * bench/ws-bench (what fleetd's fan-out rides on: the ingest PUBLISHes
 * every point on {prefix}tele:{shard}, the WebSocket layer delivers it).
 *
 * One publisher PUBLISHes on CHANNEL at R messages/s for D seconds (token
 * bucket as devsim's, one synchronous round trip per message, hiredis
 * blocking context). Each message has the form of fleetd's WebSocket
 * telemetry message, with the send time in microseconds as a metric:
 *
 *   {"type":"telemetry","id":"<id>","device":"dev-000001","ts":<ms>,
 *    "values":{"t_us":<CLOCK_REALTIME us>,"temperature":21.5,
 *              "humidity":40,"seq":<n>}}
 *
 * for N devices in turn. <id> is what fleetd's ingest script gives a
 * message it publishes (worker/ingest/fl_ingest.c): an integer that grows
 * with every message, there Redis's clock in microseconds; here the send
 * time in microseconds, made strictly increasing. fleetd's hub ignores a
 * message whose head is not exactly {"type":"telemetry","id":"<digits>",
 * "device":"...". With --shards K, CHANNEL is a prefix and each
 * message goes to CHANNEL<shard>, shard = FNV-1a 32 of the device id mod K
 * (fleetd's fl_shadow_shard: -C fleetd:tele: --shards 16 feeds fleetd's
 * WebSocket hub directly, without MQTT, the ingest and PostgreSQL; then
 * -S 0, and the clients measure). S subscriber processes (fork, default 1) each
 * SUBSCRIBE to CHANNEL before the first publish and time every message:
 * latency = CLOCK_REALTIME now (when the read returned) - t_us, into one
 * histogram shared by all of them (10 us buckets up to 10 s). After the
 * last message the publisher sends "END"; a subscriber stops on it, on
 * SIGINT/SIGTERM, or -i s after its last message.
 *
 * Ends with one line on stdout:
 *   RESULT mode=redis-pubsub published=... rate=... subscribers=S
 *          received=... expected=... lat_p50_ms=... lat_p99_ms=...
 *          lat_p999_ms=... lat_max_ms=... pub_cpu_s=... sub_cpu_s=...
 * (expected = published x S; cpu: the publisher's own and the
 * subscribers' summed user + system CPU-seconds).
 * Exit status 0; 1 when a Redis command failed or received < expected;
 * 2 on a usage error.
 *
 * Build: cc -O2 -Wall -Wextra bench/pubsub_lat.c -o build/bench/pubsub_lat \
 *            -lhiredis   (or make -C bench)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#define US_BUCKET  10
#define US_BUCKETS 1000001 /* 0 .. 10 s, then the overflow bucket */

static struct {
    const char *host;
    int         port;
    const char *channel;
    double      rate;
    double      duration;
    int         devices;
    int         subs;
    unsigned    shards;
    double      idle;
    int         quiet;
} opt = {
    .host = "127.0.0.1",
    .port = 6379,
    .channel = "bench:tele:0",
    .rate = 1000,
    .duration = 10,
    .devices = 1000,
    .subs = 1,
    .idle = 5,
};

typedef struct {
    atomic_uint_fast64_t received;
    atomic_uint_fast64_t no_t_us;
    atomic_int_fast64_t  max_us;
    atomic_int           errors;
    atomic_uint_fast64_t cpu_us; /* subscribers' CPU, summed */
    atomic_uint          hist[US_BUCKETS];
} shared_t;

static shared_t *sh;
static volatile sig_atomic_t stop_flag;

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

static double cpu_self(void)
{
    struct rusage ru;

    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static redisContext *connect_redis(void)
{
    struct timeval tv = {5, 0};
    redisContext  *c = redisConnectWithTimeout(opt.host, opt.port, tv);

    if (!c || c->err) {
        fprintf(stderr, "pubsub_lat: connect to redis %s:%d failed: %s\n",
                opt.host, opt.port, c ? c->errstr : "out of memory");
        if (c)
            redisFree(c);
        return NULL;
    }
    return c;
}

/* "t_us": digits -> us, or -1 */
static int64_t t_us_of(const char *p, size_t len)
{
    const char *k = memmem(p, len, "\"t_us\"", 6), *end = p + len;
    int64_t     v = 0;
    int         n = 0;

    if (!k)
        return -1;
    k += 6;
    while (k < end && (*k == ' ' || *k == ':'))
        k++;
    while (k < end && *k >= '0' && *k <= '9' && n < 18)
        v = v * 10 + (*k++ - '0'), n++;
    return n ? v : -1;
}

static void count(const char *p, size_t len, int64_t now)
{
    int64_t t = t_us_of(p, len), lat, max;

    atomic_fetch_add(&sh->received, 1);
    if (t < 0) {
        atomic_fetch_add(&sh->no_t_us, 1);
        return;
    }
    lat = now - t;
    if (lat < 0)
        lat = 0;
    max = atomic_load(&sh->max_us);
    while (lat > max && !atomic_compare_exchange_weak(&sh->max_us, &max, lat))
        ;
    lat /= US_BUCKET;
    if (lat >= US_BUCKETS)
        lat = US_BUCKETS - 1;
    atomic_fetch_add_explicit(&sh->hist[lat], 1, memory_order_relaxed);
}

/* A subscriber process: writes one byte to ready_fd once subscribed. */
static int subscriber(int ready_fd)
{
    redisContext *c = connect_redis();
    redisReply   *r;
    double        last = mono_s();
    int           rc = 0;

    if (!c)
        return 1;
    r = opt.shards ? redisCommand(c, "PSUBSCRIBE %s*", opt.channel)
                   : redisCommand(c, "SUBSCRIBE %s", opt.channel);
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        fprintf(stderr, "pubsub_lat: SUBSCRIBE failed: %s\n",
                r ? (r->type == REDIS_REPLY_ERROR ? r->str : "?") : c->errstr);
        return 1;
    }
    freeReplyObject(r);
    if (write(ready_fd, "s", 1) != 1)
        return 1;
    close(ready_fd);
    while (!stop_flag) {
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        void         *rep = NULL;
        int           n = poll(&pfd, 1, 100);
        int64_t       now;

        if (n < 0 && errno != EINTR) {
            rc = 1;
            break;
        }
        if (n <= 0) {
            if (mono_s() - last > opt.idle)
                break;
            continue;
        }
        if (redisBufferRead(c) != REDIS_OK) {
            fprintf(stderr, "pubsub_lat: subscriber read: %s\n", c->errstr);
            rc = 1;
            break;
        }
        now = wall_us();
        last = mono_s();
        for (;;) {
            redisReply *m;

            if (redisReaderGetReply(c->reader, &rep) != REDIS_OK) {
                rc = 1;
                stop_flag = 1;
                break;
            }
            if (!rep)
                break;
            m = rep;
            if (m->type == REDIS_REPLY_ARRAY && m->elements >= 3 &&
                m->element[m->elements - 1]->type == REDIS_REPLY_STRING) {
                redisReply *p = m->element[m->elements - 1];

                if (p->len == 3 && memcmp(p->str, "END", 3) == 0)
                    stop_flag = 1;
                else
                    count(p->str, p->len, now);
            }
            freeReplyObject(rep);
        }
    }
    atomic_fetch_add(&sh->cpu_us, (uint64_t)(cpu_self() * 1e6));
    redisFree(c);
    if (rc)
        atomic_fetch_add(&sh->errors, 1);
    return rc;
}

static double quantile(double q, uint64_t total)
{
    uint64_t want, seen = 0;

    if (total == 0)
        return -1;
    want = (uint64_t)ceil(q * (double)total);
    if (want < 1)
        want = 1;
    for (int i = 0; i < US_BUCKETS; i++) {
        seen += atomic_load(&sh->hist[i]);
        if (seen >= want)
            return (i + 1) * US_BUCKET / 1000.0;
    }
    return US_BUCKETS * US_BUCKET / 1000.0;
}

static int parse_num(const char *name, const char *s, double lo, double hi,
                     double *out)
{
    char  *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "pubsub_lat: %s must be a number in [%g, %g], not "
                "'%s'\n", name, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f,
"usage: pubsub_lat [options]\n"
"  -H, --host HOST        redis host (127.0.0.1)\n"
"  -p, --port PORT        redis port (6379)\n"
"  -C, --channel NAME     channel (bench:tele:0)\n"
"  -r, --rate R           messages/s (1000)\n"
"  -d, --duration S       seconds of publishing (10)\n"
"  -n, --devices N        devices taking turns (1000)\n"
"  -S, --subscribers S    subscriber processes (1; 0 = publish only)\n"
"  -K, --shards K         publish on CHANNEL<shard of the device> (fleetd's\n"
"                         FNV-1a mod K); subscribers then PSUBSCRIBE CHANNEL*\n"
"  -i, --idle S           a subscriber stops S s after its last message (5)\n"
"  -Q, --quiet            no progress lines on stderr\n"
"Ends with: RESULT mode=redis-pubsub key=value ...\n");
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"host", required_argument, NULL, 'H'},
        {"port", required_argument, NULL, 'p'},
        {"channel", required_argument, NULL, 'C'},
        {"rate", required_argument, NULL, 'r'},
        {"duration", required_argument, NULL, 'd'},
        {"devices", required_argument, NULL, 'n'},
        {"subscribers", required_argument, NULL, 'S'},
        {"shards", required_argument, NULL, 'K'},
        {"idle", required_argument, NULL, 'i'},
        {"quiet", no_argument, NULL, 'Q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct sigaction sa;
    redisContext    *c;
    pid_t           *kids;
    int              pipefd[2], ch, rc = 0, ready = 0, pub_errors = 0;
    double           v, t0, t_end, tokens = 1, cap, last, now, next_report;
    double           elapsed, pub_cpu;
    uint64_t         sent = 0, last_sent = 0, total, expected;
    int64_t          last_id = 0;

    while ((ch = getopt_long(argc, argv, "H:p:C:r:d:n:S:K:i:Qh", lo, NULL)) != -1) {
        switch (ch) {
        case 'H': opt.host = optarg; break;
        case 'p':
            if (parse_num("--port", optarg, 1, 65535, &v)) return 2;
            opt.port = (int)v;
            break;
        case 'C': opt.channel = optarg; break;
        case 'r':
            if (parse_num("--rate", optarg, 1, 1e7, &v)) return 2;
            opt.rate = v;
            break;
        case 'd':
            if (parse_num("--duration", optarg, 0.01, 86400, &v)) return 2;
            opt.duration = v;
            break;
        case 'n':
            if (parse_num("--devices", optarg, 1, 1e7, &v)) return 2;
            opt.devices = (int)v;
            break;
        case 'S':
            if (parse_num("--subscribers", optarg, 0, 10000, &v)) return 2;
            opt.subs = (int)v;
            break;
        case 'K':
            if (parse_num("--shards", optarg, 1, 100000, &v)) return 2;
            opt.shards = (unsigned)v;
            break;
        case 'i':
            if (parse_num("--idle", optarg, 0.1, 3600, &v)) return 2;
            opt.idle = v;
            break;
        case 'Q': opt.quiet = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 2;
    }
    sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
              MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    kids = calloc((size_t)opt.subs, sizeof(*kids));
    if (sh == MAP_FAILED || !kids || pipe(pipefd) != 0) {
        perror("pubsub_lat");
        return 1;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    for (int i = 0; i < opt.subs; i++) {
        kids[i] = fork();
        if (kids[i] < 0) {
            perror("pubsub_lat: fork");
            return 1;
        }
        if (kids[i] == 0) {
            close(pipefd[0]);
            _exit(subscriber(pipefd[1]));
        }
    }
    close(pipefd[1]);
    while (ready < opt.subs) { /* every subscriber subscribed */
        char b;
        ssize_t n = read(pipefd[0], &b, 1);

        if (n == 1)
            ready++;
        else if (n == 0 || (n < 0 && errno != EINTR))
            break;
        if (stop_flag)
            break;
    }
    close(pipefd[0]);
    if (ready < opt.subs) {
        fprintf(stderr, "pubsub_lat: %d of %d subscribers ready\n", ready,
                opt.subs);
        for (int i = 0; i < opt.subs; i++)
            kill(kids[i], SIGTERM);
        return 1;
    }
    c = connect_redis();
    if (!c)
        return 1;

    cap = opt.rate * 0.02 < 1 ? 1 : opt.rate * 0.02;
    t0 = last = mono_s();
    t_end = t0 + opt.duration;
    next_report = t0 + 1;
    while (!stop_flag && (now = mono_s()) < t_end) {
        char        msg[320], dev[32], chan[256];
        redisReply *r;
        int64_t     us;
        int         len;

        tokens += (now - last) * opt.rate;
        last = now;
        if (tokens > cap)
            tokens = cap;
        if (tokens < 1) {
            double          w = (1 - tokens) / opt.rate;
            struct timespec ts = {(time_t)w, (long)((w - (time_t)w) * 1e9)};

            nanosleep(&ts, NULL);
            continue;
        }
        tokens -= 1;
        snprintf(dev, sizeof(dev), "dev-%06d", (int)(sent % (uint64_t)opt.devices) + 1);
        us = wall_us();
        last_id = us > last_id ? us : last_id + 1;
        len = snprintf(msg, sizeof(msg),
                       "{\"type\":\"telemetry\",\"id\":\"%" PRId64
                       "\",\"device\":\"%s\",\"ts\":%" PRId64
                       ",\"values\":{\"t_us\":%" PRId64
                       ",\"temperature\":21.5,\"humidity\":40,\"seq\":%" PRIu64
                       "}}",
                       last_id, dev, us / 1000, us, sent + 1);
        if (opt.shards) {
            uint32_t h = 2166136261u; /* FNV-1a, as fleetd's shard_of */

            for (const unsigned char *p = (const unsigned char *)dev; *p; p++)
                h = (h ^ *p) * 16777619u;
            snprintf(chan, sizeof(chan), "%s%u", opt.channel, h % opt.shards);
        }
        r = redisCommand(c, "PUBLISH %s %b", opt.shards ? chan : opt.channel,
                         msg, (size_t)len);
        if (!r || r->type != REDIS_REPLY_INTEGER) {
            if (pub_errors++ < 5)
                fprintf(stderr, "pubsub_lat: PUBLISH failed: %s\n",
                        r ? (r->type == REDIS_REPLY_ERROR ? r->str : "?")
                          : c->errstr);
            if (!r)
                break;
        }
        if (r)
            freeReplyObject(r);
        sent++;
        if (!opt.quiet && now >= next_report) {
            fprintf(stderr, "pubsub_lat: t=%4.0fs published %" PRIu64
                    " (%" PRIu64 "/s) received %" PRIu64 "\n", now - t0, sent,
                    sent - last_sent, (uint64_t)atomic_load(&sh->received));
            last_sent = sent;
            next_report += 1;
        }
    }
    elapsed = mono_s() - t0;
    /* the subscribers' end marker (none without subscribers: fleetd's hub
     * would take it for a message) */
    for (unsigned s = 0; opt.subs && s < (opt.shards ? opt.shards : 1); s++) {
        redisReply *r = opt.shards
                            ? redisCommand(c, "PUBLISH %s%u END", opt.channel, s)
                            : redisCommand(c, "PUBLISH %s END", opt.channel);

        if (r)
            freeReplyObject(r);
        if (opt.shards && opt.subs) /* PSUBSCRIBE: one END is enough */
            break;
    }
    redisFree(c);
    pub_cpu = cpu_self();
    for (int i = 0; i < opt.subs; i++) {
        int status;

        if (stop_flag)
            kill(kids[i], SIGTERM);
        while (waitpid(kids[i], &status, 0) < 0 && errno == EINTR)
            kill(kids[i], SIGTERM);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            rc = 1;
    }
    total = atomic_load(&sh->received);
    expected = sent * (uint64_t)opt.subs;
    if (pub_errors || total < expected)
        rc = 1;
    printf("RESULT mode=redis-pubsub published=%" PRIu64 " elapsed_s=%.3f"
           " rate=%.1f target=%.0f subscribers=%d received=%" PRIu64
           " expected=%" PRIu64 " no_t_us=%" PRIu64 " lat_p50_ms=%.2f"
           " lat_p99_ms=%.2f lat_p999_ms=%.2f lat_max_ms=%.3f errors=%d"
           " pub_cpu_s=%.3f sub_cpu_s=%.3f\n",
           sent, elapsed, elapsed > 0 ? (double)sent / elapsed : 0.0,
           opt.rate, opt.subs, total, expected,
           (uint64_t)atomic_load(&sh->no_t_us), quantile(0.50, total),
           quantile(0.99, total), quantile(0.999, total),
           atomic_load(&sh->max_us) / 1000.0,
           pub_errors + atomic_load(&sh->errors), pub_cpu,
           atomic_load(&sh->cpu_us) / 1e6);
    return rc;
}
