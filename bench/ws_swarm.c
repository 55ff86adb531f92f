/*
 * ws_swarm.c - a swarm of WebSocket clients for bench/ws-bench.
 *
 * One thread, one epoll, non-blocking sockets, no WebSocket library: the
 * client handshake (RFC 6455 section 4.1, Sec-WebSocket-Accept checked
 * with the SHA-1 below) and masked client frames are written here.
 *
 * N connections to HOST:PORT/PATH?token=TOKEN, opened at R per second with
 * at most P handshakes in flight. Each socket is bound to one of the
 * source addresses (-b/-B, round-robin by connection number, with
 * IP_BIND_ADDRESS_NO_PORT) so that many connections to one server port do
 * not run out of ephemeral ports. RLIMIT_NOFILE is raised to the hard
 * limit; asking for more connections than it allows is a usage error
 * (run several processes with -o, as bench/ws-bench does).
 *
 * After the 101 each connection sends one subscribe message (-s):
 *   -s '*'                  {"type":"subscribe","devices":"*"}
 *   -s 'dev-%06d' -n M -k K  K device ids: connection i (i counted from
 *                           -o) takes ids FIRST + (i*K + j) % M, j < K
 *   -s ''                   nothing (a connection counts as subscribed
 *                           once it is open)
 * and waits for {"type":"subscribed"}; an {"type":"error"} answer
 * instead is a refused subscription.
 *
 * Modes:
 *   idle  connect, subscribe, hold. Prints a READY line once every
 *         connection is subscribed or has failed, then holds until -t
 *         seconds (from start), SIGINT/SIGTERM, or until no connection
 *         is left open.
 *   recv  the same, and every telemetry message is timed: latency =
 *         CLOCK_REALTIME now (taken when the read returned) - the value
 *         of "t_us" in the message (the publisher's send time in
 *         microseconds, e.g. devsim --t-us), into a histogram of 10 us
 *         buckets up to 10 s (beyond: one overflow bucket; max is exact).
 *         Also stops -i seconds after the last message (once one
 *         arrived) or after -e messages.
 * Server pings are answered with pongs; a close frame is answered with a
 * close frame carrying the same code, and counted by code. A connection
 * that ends without a close frame counts as 1006.
 *
 * Output on stdout, key=value, one line each:
 *   STAT t=... connected=... subscribed=... failed=... msgs=... ...
 *        every second (-Q: none); p50_ms/p99_ms/p999_ms are cumulative,
 *        ip50_ms/ip99_ms/ip999_ms over the last second only
 *   READY t=... ...    once, when no connection is pending any more
 *   RESULT t=... ...   at the end, cumulative; plus rate (telemetry
 *        messages per second between the first and the last one),
 *        first_rx_us/last_rx_us and cpu_s (own user + system CPU)
 * Counters: connected (101 received, Accept correct), subscribed,
 * failed (never opened: fail_connect, fail_timeout, fail_http with
 * http_NNN per status, fail_accept, fail_closed before the 101),
 * sub_failed (error answer to the subscribe, or no answer within the
 * handshake timeout), open (now), msgs (telemetry messages), conflated
 * (of those with "conflated":true), no_t_us, errors ({"type":"error"}),
 * gaps, other (other message types), pings/pongs, proto_err (a frame a
 * server must not send: masked, RSV bits, bad opcode or length),
 * close_CODE (closes by code, 1006 = no close frame).
 *
 * -D FILE: after the RESULT line, its counters and histograms go to FILE
 * (format above dump_write()). ws_swarm --merge FILE... adds such dumps
 * of several processes up and prints the one RESULT line a single process
 * holding all their clients would print: histograms summed (quantiles do
 * not average), cpu_s the sum, rate over the first to the last message of
 * any of them. One thread reading every socket in turn puts its own
 * per-delivery cost into the latency of the clients it reads last; spread
 * over processes, the clients are closer to separate browsers.
 *
 * Exit status 0; 1 when a connection failed or was closed by the server
 * (in recv mode: or no message arrived; --merge: in any of the dumps); 2
 * on a usage error (--merge: or a dump it cannot read, cut short, or whose
 * buckets do not add up).
 *
 * Build: cc -O2 -Wall -Wextra bench/ws_swarm.c -o build/bench/ws_swarm
 *        (or make -C bench)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define RBUF_SIZE   (4u << 20) /* largest server frame we accept, ~4 MB */
#define HDR_MAX     16384      /* largest handshake response */
#define HIST_BUCKET 10         /* us */
#define HIST_N      1000000    /* 10 us x 1e6 = 10 s; [HIST_N] overflow */
#define MAX_ADDRS   4096
#define CLOSE_CODES 5000

enum {
    S_IDLE = 0,   /* not started */
    S_CONNECTING, /* connect() in progress */
    S_HANDSHAKE,  /* request sent, waiting for the 101 */
    S_OPEN,       /* open, subscribe sent, no answer yet */
    S_SUBSCRIBED, /* subscribed (or open without -s) */
    S_REFUSED,    /* open, the subscribe refused or unanswered */
    S_DONE,       /* failed or closed */
};

typedef struct {
    int      fd;
    uint8_t  state;
    uint8_t  out;       /* EPOLLOUT armed */
    uint8_t  mop;       /* opcode of a fragmented message in progress */
    uint8_t  closing;   /* we sent a close frame */
    uint32_t rlen;      /* leftover bytes in rbuf */
    uint32_t mlen;      /* bytes of the fragmented message so far */
    uint32_t wlen, woff;
    double   t_start; /* mono time of connect() / of the subscribe */
    char    *rbuf;    /* partial frame / response left from the last read */
    char    *msg;     /* fragmented message so far */
    char    *wbuf;    /* unsent bytes */
    char     accept[29]; /* expected Sec-WebSocket-Accept */
} conn_t;

static struct {
    char        host[256];
    int         port;
    char        path[512];
    const char *token;
    const char *origin;
    int         conns;
    long        offset;
    struct in_addr addrs[MAX_ADDRS];
    int         naddrs;
    const char *sub; /* NULL/"" none, "*", or a pattern */
    long        sub_count;
    int         per_conn;
    long        first;
    double      rate;
    int         pending_max;
    int         recv;
    double      time_limit;
    double      idle;
    uint64_t    expect;
    double      hs_timeout;
    int         quiet;
    const char *dump; /* -D: write the merge's input here at the end */
    int         merge;
} opt = {
    .port = 80,
    .path = "/ws",
    .conns = 1,
    .per_conn = 1,
    .first = 1,
    .rate = 2000,
    .pending_max = 1000,
    .hs_timeout = 10,
};

static conn_t *cs;
static int     ep;
static char   *rbuf; /* shared read buffer, RBUF_SIZE + HDR_MAX + 1 */
static volatile sig_atomic_t stop_flag;
static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static int64_t  rx_now_us; /* CLOCK_REALTIME when the current read returned */

static struct {
    uint64_t started, connected, subscribed, failed, sub_failed, open;
    uint64_t fail_connect, fail_timeout, fail_http, fail_accept, fail_closed;
    uint64_t msgs, conflated, no_t_us, neg_lat, errors, gaps, other;
    uint64_t pings, pongs, proto_err, too_big;
    uint64_t close_code[CLOSE_CODES];
    uint64_t http[600];
    int64_t  first_rx_us, last_rx_us;
    int64_t  lat_max_us;
    uint64_t lat_n;
    uint64_t i_lat_n;
    int64_t  i_lat_max_us;
    uint32_t i_hi; /* highest interval bucket touched */
} st = {.first_rx_us = -1, .last_rx_us = -1};

static uint64_t *hist;   /* cumulative, HIST_N + 1 */
static uint32_t *i_hist; /* last interval */

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

static uint64_t rnd(void)
{
    /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

/* ---- SHA-1 and base64 (the handshake only) ------------------------------ */

static uint32_t rol(uint32_t v, int n)
{
    return (v << n) | (v >> (32 - n));
}

static void sha1_block(uint32_t h[5], const unsigned char *p)
{
    uint32_t w[80], a, b, c, d, e, f, k, t;

    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 80; i++)
        w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; i++) {
        if (i < 20)
            f = (b & c) | (~b & d), k = 0x5A827999;
        else if (i < 40)
            f = b ^ c ^ d, k = 0x6ED9EBA1;
        else if (i < 60)
            f = (b & c) | (b & d) | (c & d), k = 0x8F1BBCDC;
        else
            f = b ^ c ^ d, k = 0xCA62C1D6;
        t = rol(a, 5) + f + e + k + w[i];
        e = d, d = c, c = rol(b, 30), b = a, a = t;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e;
}

static void sha1(const void *data, size_t len, unsigned char out[20])
{
    uint32_t             h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE,
                                 0x10325476, 0xC3D2E1F0};
    const unsigned char *p = data;
    unsigned char        blk[64];
    size_t               n = len, r;
    uint64_t             bits = (uint64_t)len * 8;

    for (; n >= 64; n -= 64, p += 64)
        sha1_block(h, p);
    r = n;
    memcpy(blk, p, r);
    blk[r++] = 0x80;
    if (r > 56) {
        memset(blk + r, 0, 64 - r);
        sha1_block(h, blk);
        r = 0;
    }
    memset(blk + r, 0, 56 - r);
    for (int i = 0; i < 8; i++)
        blk[56 + i] = (unsigned char)(bits >> (56 - 8 * i));
    sha1_block(h, blk);
    for (int i = 0; i < 5; i++) {
        out[4 * i] = (unsigned char)(h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(h[i] >> 8);
        out[4 * i + 3] = (unsigned char)h[i];
    }
}

static void b64(const unsigned char *in, size_t len, char *out)
{
    static const char t[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i, o = 0;

    for (i = 0; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];

        out[o++] = t[v >> 18];
        out[o++] = t[(v >> 12) & 63];
        out[o++] = t[(v >> 6) & 63];
        out[o++] = t[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)in[i] << 16;

        if (i + 1 < len)
            v |= (uint32_t)in[i + 1] << 8;
        out[o++] = t[v >> 18];
        out[o++] = t[(v >> 12) & 63];
        out[o++] = i + 1 < len ? t[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
}

/* ---- latency histogram ---------------------------------------------------- */

/* The two parts of a latency, split at the message's id - the appender's
 * wall clock in us when it made the message (fleetd: Redis's TIME in its
 * append script; the floor bridge: its clock before the MULTI): t_us ->
 * id (broker, intake, append) and id -> read (Redis Pub/Sub, hub,
 * WebSocket). 10 us buckets up to 100 ms. */
#define SEG_N 10000
static uint64_t seg_hist[2][SEG_N + 1], seg_n;

static void seg_add(int64_t t_us, int64_t id, int64_t rx_us)
{
    int64_t part[2] = {id - t_us, rx_us - id};

    for (int k = 0; k < 2; k++) {
        int64_t b = part[k] < 0 ? 0 : part[k] / HIST_BUCKET;

        seg_hist[k][b >= SEG_N ? SEG_N : b]++;
    }
    seg_n++;
}

static void lat_add(int64_t us)
{
    uint32_t b;

    if (us < 0) {
        st.neg_lat++;
        us = 0;
    }
    b = us / HIST_BUCKET >= HIST_N ? HIST_N : (uint32_t)(us / HIST_BUCKET);
    hist[b]++;
    i_hist[b]++;
    if (b > st.i_hi)
        st.i_hi = b;
    st.lat_n++;
    st.i_lat_n++;
    if (us > st.lat_max_us)
        st.lat_max_us = us;
    if (us > st.i_lat_max_us)
        st.i_lat_max_us = us;
}

/* q-quantile in ms: the upper edge of the bucket it falls in; -1 if empty.
 * The overflow bucket reports 10000 (10 s). */
static double quantile_u64(const uint64_t *h, uint32_t hi, uint64_t n, double q)
{
    uint64_t want, seen = 0;

    if (n == 0)
        return -1;
    want = (uint64_t)ceil(q * (double)n);
    if (want < 1)
        want = 1;
    for (uint32_t i = 0; i <= hi; i++) {
        seen += h[i];
        if (seen >= want)
            return (double)(i + 1) * HIST_BUCKET / 1000.0;
    }
    return (double)(hi + 1) * HIST_BUCKET / 1000.0;
}

static double quantile_u32(const uint32_t *h, uint32_t hi, uint64_t n, double q)
{
    uint64_t want, seen = 0;

    if (n == 0)
        return -1;
    want = (uint64_t)ceil(q * (double)n);
    if (want < 1)
        want = 1;
    for (uint32_t i = 0; i <= hi; i++) {
        seen += h[i];
        if (seen >= want)
            return (double)(i + 1) * HIST_BUCKET / 1000.0;
    }
    return (double)(hi + 1) * HIST_BUCKET / 1000.0;
}

/* ---- sending -------------------------------------------------------------- */

static void conn_fail(conn_t *c, uint64_t *why);
static void conn_end(conn_t *c, int code);

static void arm(conn_t *c, int out)
{
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0),
                             .data.u32 = (uint32_t)(c - cs)};

    if (c->out == out)
        return;
    c->out = (uint8_t)out;
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Write what is queued, then data; queue what the socket does not take.
 * Returns -1 when the connection is broken (the caller ends it). */
static int conn_send(conn_t *c, const void *data, size_t len)
{
    ssize_t n;

    if (c->wlen > c->woff) { /* keep the order: queue behind */
        char *nb = realloc(c->wbuf, c->wlen + len);

        if (!nb)
            return -1;
        c->wbuf = nb;
        memcpy(c->wbuf + c->wlen, data, len);
        c->wlen += (uint32_t)len;
        return 0;
    }
    n = send(c->fd, data, len, MSG_NOSIGNAL);
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -1;
        n = 0;
    }
    if ((size_t)n < len) {
        free(c->wbuf);
        c->wbuf = malloc(len - (size_t)n);
        if (!c->wbuf)
            return -1;
        memcpy(c->wbuf, (const char *)data + n, len - (size_t)n);
        c->wlen = (uint32_t)(len - (size_t)n);
        c->woff = 0;
        arm(c, 1);
    }
    return 0;
}

static int conn_flush(conn_t *c)
{
    while (c->woff < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff,
                         MSG_NOSIGNAL);

        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            if (errno == EINTR)
                continue;
            return -1;
        }
        c->woff += (uint32_t)n;
    }
    free(c->wbuf);
    c->wbuf = NULL;
    c->wlen = c->woff = 0;
    arm(c, 0);
    return 0;
}

/* One masked client frame (FIN set). */
static int send_frame(conn_t *c, int op, const void *payload, size_t len)
{
    unsigned char  hdr[14], *f;
    size_t         h = 0;
    uint32_t       m = (uint32_t)rnd();
    unsigned char  mask[4] = {(unsigned char)m, (unsigned char)(m >> 8),
                              (unsigned char)(m >> 16),
                              (unsigned char)(m >> 24)};
    int            rc;

    hdr[h++] = (unsigned char)(0x80 | op);
    if (len < 126) {
        hdr[h++] = (unsigned char)(0x80 | len);
    } else if (len < 65536) {
        hdr[h++] = 0x80 | 126;
        hdr[h++] = (unsigned char)(len >> 8);
        hdr[h++] = (unsigned char)len;
    } else {
        hdr[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            hdr[h++] = (unsigned char)((uint64_t)len >> (8 * i));
    }
    memcpy(hdr + h, mask, 4);
    h += 4;
    f = malloc(h + len);
    if (!f)
        return -1;
    memcpy(f, hdr, h);
    for (size_t i = 0; i < len; i++)
        f[h + i] = ((const unsigned char *)payload)[i] ^ mask[i & 3];
    rc = conn_send(c, f, h + len);
    free(f);
    return rc;
}

/* ---- connection life ------------------------------------------------------ */

static void conn_release(conn_t *c)
{
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    free(c->rbuf);
    free(c->msg);
    free(c->wbuf);
    c->rbuf = c->msg = c->wbuf = NULL;
    c->rlen = c->mlen = c->wlen = c->woff = 0;
    c->state = S_DONE;
}

/* Never opened: counts as failed (why: which fail_* counter). */
static void conn_fail(conn_t *c, uint64_t *why)
{
    if (c->state == S_DONE)
        return;
    st.failed++;
    (*why)++;
    conn_release(c);
}

/* Ends an open connection; code: the close code it ended with. */
static void conn_end(conn_t *c, int code)
{
    if (c->state == S_DONE)
        return;
    if (c->state == S_OPEN) /* no answer to the subscribe */
        st.sub_failed++;
    if (code < 0 || code >= CLOSE_CODES)
        code = 0;
    st.close_code[code]++;
    st.open--;
    conn_release(c);
}

static void conn_subscribed(conn_t *c)
{
    c->state = S_SUBSCRIBED;
    st.subscribed++;
}

static int device_fmt_ok(const char *p)
{
    int n = 0;

    for (; *p; p++) {
        if (*p != '%')
            continue;
        if (p[1] == '%') {
            p++;
            continue;
        }
        p++;
        while (*p >= '0' && *p <= '9')
            p++;
        if (*p != 'd' && *p != 'u')
            return 0;
        n++;
    }
    return n == 1;
}

static int send_subscribe(conn_t *c)
{
    long   idx = opt.offset + (long)(c - cs);
    size_t cap = 64 + (size_t)opt.per_conn * 80, len;
    char  *m = malloc(cap);
    int    rc;

    if (!m)
        return -1;
    if (strcmp(opt.sub, "*") == 0) {
        len = (size_t)snprintf(m, cap, "{\"type\":\"subscribe\",\"devices\":\"*\"}");
    } else {
        len = (size_t)snprintf(m, cap, "{\"type\":\"subscribe\",\"devices\":[");
        for (int j = 0; j < opt.per_conn; j++) {
            long id = opt.first + ((idx * opt.per_conn + j) % opt.sub_count);
            char dev[72];

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
            snprintf(dev, sizeof(dev), opt.sub, id);
#pragma GCC diagnostic pop
            len += (size_t)snprintf(m + len, cap - len, "%s\"%s\"",
                                    j ? "," : "", dev);
        }
        len += (size_t)snprintf(m + len, cap - len, "]}");
    }
    rc = send_frame(c, 0x1, m, len);
    free(m);
    return rc;
}

static void start_conn(conn_t *c)
{
    long               idx = opt.offset + (long)(c - cs);
    struct sockaddr_in src = {.sin_family = AF_INET}, dst = {.sin_family = AF_INET};
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT,
                             .data.u32 = (uint32_t)(c - cs)};
    int                one = 1;
    unsigned char      key[16], digest[20];
    char               key64[32], buf[128];

    st.started++;
    c->t_start = mono_s();
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        if (st.fail_connect < 5)
            fprintf(stderr, "ws_swarm: socket(): %s\n", strerror(errno));
        conn_fail(c, &st.fail_connect);
        return;
    }
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (opt.naddrs > 0) {
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one,
                   sizeof(one));
        src.sin_addr = opt.addrs[idx % opt.naddrs];
        if (bind(c->fd, (struct sockaddr *)&src, sizeof(src)) != 0) {
            if (st.fail_connect < 5)
                fprintf(stderr, "ws_swarm: bind(%s): %s\n",
                        inet_ntoa(src.sin_addr), strerror(errno));
            conn_fail(c, &st.fail_connect);
            return;
        }
    }
    dst.sin_port = htons((uint16_t)opt.port);
    inet_pton(AF_INET, opt.host, &dst.sin_addr);
    if (connect(c->fd, (struct sockaddr *)&dst, sizeof(dst)) != 0 &&
        errno != EINPROGRESS) {
        if (st.fail_connect < 5)
            fprintf(stderr, "ws_swarm: connect(%s:%d): %s\n", opt.host,
                    opt.port, strerror(errno));
        conn_fail(c, &st.fail_connect);
        return;
    }
    c->state = S_CONNECTING;
    c->out = 1;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
        fprintf(stderr, "ws_swarm: epoll_ctl(): %s\n", strerror(errno));
        conn_fail(c, &st.fail_connect);
        return;
    }
    for (int i = 0; i < 16; i += 8) {
        uint64_t r = rnd();

        memcpy(key + i, &r, 8);
    }
    b64(key, 16, key64);
    snprintf(buf, sizeof(buf), "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11",
             key64);
    sha1(buf, strlen(buf), digest);
    b64(digest, 20, c->accept);
    /* the key goes into the request, written once connected: keep it in
     * rbuf (empty until the handshake answer arrives) */
    c->rbuf = strdup(key64);
}

static void send_handshake(conn_t *c)
{
    static char tok[1024];
    char        req[2048];
    int         n;

    if (!tok[0] && opt.token) { /* percent-encode once */
        size_t o = 0;

        for (const unsigned char *p = (const unsigned char *)opt.token;
             *p && o + 4 < sizeof(tok); p++) {
            if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
                (*p >= '0' && *p <= '9') || strchr("-._~", *p))
                tok[o++] = (char)*p;
            else
                o += (size_t)snprintf(tok + o, 4, "%%%02X", *p);
        }
        tok[o] = '\0';
    }
    n = snprintf(req, sizeof(req),
                 "GET %s%s%s%s HTTP/1.1\r\n"
                 "Host: %s:%d\r\n"
                 "Upgrade: websocket\r\n"
                 "Connection: Upgrade\r\n"
                 "Sec-WebSocket-Key: %s\r\n"
                 "Sec-WebSocket-Version: 13\r\n"
                 "%s%s%s"
                 "\r\n",
                 opt.path, opt.token ? (strchr(opt.path, '?') ? "&" : "?") : "",
                 opt.token ? "token=" : "", opt.token ? tok : "", opt.host,
                 opt.port, c->rbuf ? c->rbuf : "", opt.origin ? "Origin: " : "",
                 opt.origin ? opt.origin : "", opt.origin ? "\r\n" : "");
    free(c->rbuf);
    c->rbuf = NULL;
    c->state = S_HANDSHAKE;
    if (conn_send(c, req, (size_t)n) != 0)
        conn_fail(c, &st.fail_connect);
    else if (c->wlen == 0)
        arm(c, 0);
}

/* ---- receiving ------------------------------------------------------------ */

/* The number after "key": in a JSON text (strstr-level, no parser). */
static int json_num(const char *p, size_t len, const char *key, size_t klen,
                    double *out)
{
    const char *k = memmem(p, len, key, klen), *end = p + len;
    char        tmp[40];
    size_t      n = 0;

    if (!k)
        return -1;
    k += klen;
    while (k < end && (*k == ' ' || *k == ':' || *k == '\t'))
        k++;
    while (k < end && n < sizeof(tmp) - 1 &&
           ((*k >= '0' && *k <= '9') || *k == '-' || *k == '+' || *k == '.' ||
            *k == 'e' || *k == 'E'))
        tmp[n++] = *k++;
    if (n == 0)
        return -1;
    tmp[n] = '\0';
    *out = strtod(tmp, NULL);
    return 0;
}

/* The value of "type" in m, compared against the types we know. */
static void on_text(conn_t *c, const char *m, size_t len)
{
    const char *t;
    size_t      rest;

    if (len >= 20 && memcmp(m, "{\"type\":\"telemetry\"", 19) == 0) {
        t = m + 9; /* fleetd's form: the type first */
    } else {
        const char *k = memmem(m, len, "\"type\"", 6);

        t = "";
        if (k) {
            k += 6;
            while (k < m + len && (*k == ' ' || *k == ':'))
                k++;
            if (k < m + len && *k == '"')
                t = k + 1;
        }
    }
    rest = (size_t)(m + len - t);
    if (t[0] && rest >= 10 && memcmp(t, "telemetry\"", 10) == 0) {
        double v;

        st.msgs++;
        if (st.first_rx_us < 0)
            st.first_rx_us = rx_now_us;
        st.last_rx_us = rx_now_us;
        if (memmem(m, len, "\"conflated\":true", 16) ||
            memmem(m, len, "\"conflated\": true", 17))
            st.conflated++;
        if (opt.recv) {
            if (json_num(m, len, "\"t_us\"", 6, &v) == 0) {
                const char *q = memmem(m, len, "\"id\":\"", 6);

                lat_add(rx_now_us - (int64_t)v);
                if (q && q + 6 < m + len && q[6] >= '0' && q[6] <= '9')
                    seg_add((int64_t)v, strtoll(q + 6, NULL, 10), rx_now_us);
            } else
                st.no_t_us++;
        }
    } else if (t[0] && rest >= 11 && memcmp(t, "subscribed\"", 11) == 0) {
        if (c->state == S_OPEN)
            conn_subscribed(c);
    } else if (t[0] && rest >= 6 && memcmp(t, "error\"", 6) == 0) {
        st.errors++;
        if (c->state == S_OPEN) { /* the subscribe was refused */
            if (st.sub_failed < 5)
                fprintf(stderr, "ws_swarm: subscribe refused: %.*s\n",
                        (int)(len > 300 ? 300 : len), m);
            st.sub_failed++;
            c->state = S_REFUSED; /* stays open, holds nothing */
        }
    } else if (t[0] && rest >= 4 && memcmp(t, "gap\"", 4) == 0) {
        st.gaps++;
    } else {
        st.other++;
    }
}

/* Process frames in b[0..n); returns bytes consumed, or -1 when the
 * connection was ended. */
static long on_frames(conn_t *c, char *b, size_t n)
{
    size_t p = 0;

    while (n - p >= 2) {
        unsigned char b0 = (unsigned char)b[p], b1 = (unsigned char)b[p + 1];
        int           fin = b0 & 0x80, op = b0 & 0x0f, masked = b1 & 0x80;
        size_t        h = 2;
        uint64_t      len = b1 & 0x7f;
        char         *pl;

        if (len == 126)
            h += 2;
        else if (len == 127)
            h += 8;
        if (masked)
            h += 4;
        if (n - p < h)
            break;
        if (len == 126) {
            len = (uint64_t)(unsigned char)b[p + 2] << 8 | (unsigned char)b[p + 3];
        } else if (len == 127) {
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | (unsigned char)b[p + 2 + i];
        }
        if ((b0 & 0x70) || masked || (op > 2 && op < 8) || op > 10 ||
            (op >= 8 && (len > 125 || !fin))) {
            st.proto_err++;
            send_frame(c, 0x8, "\x03\xea", 2); /* 1002 */
            conn_end(c, 1002);
            return -1;
        }
        if (len > RBUF_SIZE - 64) {
            st.too_big++;
            send_frame(c, 0x8, "\x03\xf1", 2); /* 1009 */
            conn_end(c, 1009);
            return -1;
        }
        if (n - p < h + len)
            break;
        pl = b + p + h;
        if (masked) {
            const unsigned char *mk = (const unsigned char *)pl - 4;

            for (uint64_t i = 0; i < len; i++)
                pl[i] ^= (char)mk[i & 3];
        }
        p += h + len;
        switch (op) {
        case 0x8: { /* close: answer with the same code, then end */
            int code = len >= 2 ? ((unsigned char)pl[0] << 8 | (unsigned char)pl[1])
                                : 1005;

            if (!c->closing)
                send_frame(c, 0x8, pl, len >= 2 ? 2 : 0);
            conn_end(c, code);
            return -1;
        }
        case 0x9:
            st.pings++;
            if (send_frame(c, 0xA, pl, (size_t)len) != 0) {
                conn_end(c, 1006);
                return -1;
            }
            break;
        case 0xA: st.pongs++; break;
        case 0x0: /* continuation */
            if (!c->mop) {
                st.proto_err++;
                send_frame(c, 0x8, "\x03\xea", 2);
                conn_end(c, 1002);
                return -1;
            }
            if ((uint64_t)c->mlen + len > RBUF_SIZE) {
                st.too_big++;
                send_frame(c, 0x8, "\x03\xf1", 2);
                conn_end(c, 1009);
                return -1;
            } else {
                char *nm = realloc(c->msg, c->mlen + len + 1);

                if (!nm) {
                    conn_end(c, 1006);
                    return -1;
                }
                c->msg = nm;
                memcpy(c->msg + c->mlen, pl, (size_t)len);
                c->mlen += (uint32_t)len;
            }
            if (fin) {
                if (c->mop == 0x1)
                    on_text(c, c->msg, c->mlen);
                free(c->msg);
                c->msg = NULL;
                c->mlen = 0;
                c->mop = 0;
            }
            break;
        default: /* text or binary */
            if (c->mop) {
                st.proto_err++;
                send_frame(c, 0x8, "\x03\xea", 2);
                conn_end(c, 1002);
                return -1;
            }
            if (fin) {
                if (op == 0x1)
                    on_text(c, pl, (size_t)len);
                else
                    st.other++;
            } else {
                c->msg = malloc(len + 1);
                if (!c->msg) {
                    conn_end(c, 1006);
                    return -1;
                }
                memcpy(c->msg, pl, (size_t)len);
                c->mlen = (uint32_t)len;
                c->mop = (uint8_t)op;
            }
            break;
        }
        if (c->state == S_DONE)
            return -1;
    }
    return (long)p;
}

/* The handshake answer in b[0..n) (NUL-terminated by the caller). Returns
 * bytes consumed (0: not whole yet), or -1 when the connection ended. */
static long on_response(conn_t *c, char *b, size_t n)
{
    char *end = memmem(b, n, "\r\n\r\n", 4), *a;
    int   status = 0;

    if (!end) {
        if (n >= HDR_MAX) {
            conn_fail(c, &st.fail_http);
            return -1;
        }
        return 0;
    }
    end[2] = '\0'; /* headers end with the first CRLF of the pair */
    if (sscanf(b, "HTTP/1.%*d %d", &status) != 1 || status != 101) {
        if (status > 0 && status < 600)
            st.http[status]++;
        if (st.fail_http < 5) {
            char *body = end + 4;

            fprintf(stderr, "ws_swarm: handshake answered %d: %.*s\n",
                    status, (int)(n - (size_t)(body - b) > 200 ? 200 : n - (size_t)(body - b)),
                    body);
        }
        conn_fail(c, &st.fail_http);
        return -1;
    }
    a = strcasestr(b, "\r\nSec-WebSocket-Accept:");
    if (a) {
        a += 23;
        while (*a == ' ' || *a == '\t')
            a++;
    }
    if (!a || strncmp(a, c->accept, 28) != 0 ||
        (a[28] != '\r' && a[28] != ' ' && a[28] != '\t')) {
        if (st.fail_accept < 5)
            fprintf(stderr, "ws_swarm: wrong or missing Sec-WebSocket-Accept "
                    "(want %s)\n", c->accept);
        conn_fail(c, &st.fail_accept);
        return -1;
    }
    st.connected++;
    st.open++;
    c->state = S_OPEN;
    c->t_start = mono_s();
    if (opt.sub && opt.sub[0]) {
        if (send_subscribe(c) != 0) {
            conn_end(c, 1006);
            return -1;
        }
    } else {
        conn_subscribed(c);
    }
    return (long)(end + 4 - b);
}

static void on_readable(conn_t *c)
{
    for (;;) {
        size_t  off = c->rlen, total;
        ssize_t r;
        long    used;

        if (off)
            memcpy(rbuf, c->rbuf, off);
        r = recv(c->fd, rbuf + off, RBUF_SIZE + HDR_MAX - off, 0);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EINTR)
                continue;
        }
        if (r <= 0) { /* EOF or error without a close frame */
            if (c->state == S_HANDSHAKE)
                conn_fail(c, &st.fail_closed);
            else
                conn_end(c, 1006);
            return;
        }
        rx_now_us = wall_us();
        total = off + (size_t)r;
        rbuf[total] = '\0';
        used = 0;
        if (c->state == S_HANDSHAKE) {
            used = on_response(c, rbuf, total);
            if (used < 0)
                return;
            if (used > 0 && (size_t)used < total) {
                long more = on_frames(c, rbuf + used, total - (size_t)used);

                if (more < 0)
                    return;
                used += more;
            }
        } else {
            used = on_frames(c, rbuf, total);
            if (used < 0)
                return;
        }
        /* keep what is left for the next read */
        if ((size_t)used < total) {
            size_t left = total - (size_t)used;

            if (left > c->rlen || !c->rbuf) {
                char *nb = realloc(c->rbuf, left);

                if (!nb) {
                    conn_end(c, 1006);
                    return;
                }
                c->rbuf = nb;
            }
            memmove(c->rbuf, rbuf + used, left);
            c->rlen = (uint32_t)left;
        } else if (c->rlen) {
            free(c->rbuf);
            c->rbuf = NULL;
            c->rlen = 0;
        }
        if ((size_t)r < RBUF_SIZE + HDR_MAX - off)
            return; /* drained */
    }
}

static void on_event(conn_t *c, uint32_t ev)
{
    if (c->state == S_CONNECTING) {
        int       err = 0;
        socklen_t l = sizeof(err);

        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l) != 0)
            err = errno;
        if (err == 0 && (ev & (EPOLLERR | EPOLLHUP)))
            err = ECONNRESET;
        if (err) {
            if (st.fail_connect < 5)
                fprintf(stderr, "ws_swarm: connect(%s:%d): %s\n", opt.host,
                        opt.port, strerror(err));
            conn_fail(c, &st.fail_connect);
            return;
        }
        if (ev & EPOLLOUT) {
            send_handshake(c);
        }
        return;
    }
    if ((ev & EPOLLOUT) && c->state != S_DONE && conn_flush(c) != 0) {
        if (c->state == S_HANDSHAKE)
            conn_fail(c, &st.fail_closed);
        else
            conn_end(c, 1006);
        return;
    }
    if ((ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) && c->state != S_DONE)
        on_readable(c);
}

/* ---- reporting ------------------------------------------------------------ */

/* The final RESULT's cpu_s: our own user + system CPU, taken when the
 * RESULT is printed, or (--merge) set beforehand to the dumps' sum. -D
 * writes the value the RESULT printed. */
static double result_cpu_s = -1;

static double own_cpu_s(void)
{
    struct rusage ru;

    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return -1;
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void report(const char *tag, double t, int final)
{
    static uint64_t last_msgs;
    static double   last_t;
    char            closes[1024] = "", https[512] = "";
    size_t          o = 0;
    double          dt = t - last_t;

    for (int i = 0; i < CLOSE_CODES && o < sizeof(closes) - 32; i++)
        if (st.close_code[i])
            o += (size_t)snprintf(closes + o, sizeof(closes) - o,
                                  " close_%d=%" PRIu64, i, st.close_code[i]);
    o = 0;
    for (int i = 0; i < 600 && o < sizeof(https) - 32; i++)
        if (st.http[i])
            o += (size_t)snprintf(https + o, sizeof(https) - o,
                                  " http_%d=%" PRIu64, i, st.http[i]);
    printf("%s t=%.3f started=%" PRIu64 " connected=%" PRIu64
           " subscribed=%" PRIu64 " failed=%" PRIu64 " sub_failed=%" PRIu64
           " open=%" PRIu64 " msgs=%" PRIu64 " msgs_s=%.0f conflated=%" PRIu64
           " no_t_us=%" PRIu64 " errors=%" PRIu64 " gaps=%" PRIu64
           " other=%" PRIu64 " pings=%" PRIu64 " proto_err=%" PRIu64
           " fail_connect=%" PRIu64 " fail_timeout=%" PRIu64
           " fail_http=%" PRIu64 " fail_accept=%" PRIu64
           " fail_closed=%" PRIu64 "%s%s",
           tag, t, st.started, st.connected, st.subscribed, st.failed,
           st.sub_failed, st.open, st.msgs,
           final ? 0.0 : (dt > 0 ? (double)(st.msgs - last_msgs) / dt : 0.0),
           st.conflated, st.no_t_us, st.errors, st.gaps, st.other, st.pings,
           st.proto_err, st.fail_connect, st.fail_timeout, st.fail_http,
           st.fail_accept, st.fail_closed, https, closes);
    if (opt.recv) {
        printf(" lat_n=%" PRIu64 " p50_ms=%.2f p99_ms=%.2f p999_ms=%.2f"
               " max_ms=%.3f neg_lat=%" PRIu64,
               st.lat_n, quantile_u64(hist, HIST_N, st.lat_n, 0.50),
               quantile_u64(hist, HIST_N, st.lat_n, 0.99),
               quantile_u64(hist, HIST_N, st.lat_n, 0.999),
               st.lat_max_us / 1000.0, st.neg_lat);
        if (final && seg_n > 0)
            printf(" append_p50_ms=%.2f append_p99_ms=%.2f"
                   " deliver_p50_ms=%.2f deliver_p99_ms=%.2f",
                   quantile_u64(seg_hist[0], SEG_N, seg_n, 0.50),
                   quantile_u64(seg_hist[0], SEG_N, seg_n, 0.99),
                   quantile_u64(seg_hist[1], SEG_N, seg_n, 0.50),
                   quantile_u64(seg_hist[1], SEG_N, seg_n, 0.99));
        if (!final)
            printf(" ip50_ms=%.2f ip99_ms=%.2f ip999_ms=%.2f imax_ms=%.3f",
                   quantile_u32(i_hist, st.i_hi, st.i_lat_n, 0.50),
                   quantile_u32(i_hist, st.i_hi, st.i_lat_n, 0.99),
                   quantile_u32(i_hist, st.i_hi, st.i_lat_n, 0.999),
                   st.i_lat_max_us / 1000.0);
    }
    if (final) {
        double span = st.last_rx_us > st.first_rx_us
                          ? (st.last_rx_us - st.first_rx_us) / 1e6
                          : 0;

        if (result_cpu_s < 0)
            result_cpu_s = own_cpu_s();
        printf(" rate=%.1f first_rx_us=%" PRId64 " last_rx_us=%" PRId64
               " cpu_s=%.3f",
               span > 0 ? (double)(st.msgs - 1) / span : 0.0, st.first_rx_us,
               st.last_rx_us, result_cpu_s);
    }
    printf("\n");
    fflush(stdout);
    if (!final) {
        last_msgs = st.msgs;
        last_t = t;
        memset(i_hist, 0, ((size_t)st.i_hi + 1) * sizeof(*i_hist));
        st.i_hi = 0;
        st.i_lat_n = 0;
        st.i_lat_max_us = 0;
    }
}

/* ---- dump and merge ------------------------------------------------------- */

/* Clients spread over several processes (bench/ws-bench -j) give one
 * figure only if their histograms are added up: quantiles do not average.
 * -D FILE writes, after the RESULT line, everything that RESULT is made
 * of; --merge FILE... adds the dumps up into st, hist and seg_hist and
 * prints the RESULT with report(), so one process and a merge of many
 * share one definition of every figure. Text, one item a line:
 *   ws_swarm-dump 1        the format and its version, first line
 *   KEY=VALUE              recv, t, the counters of dump_ctr (RESULT's
 *                          names), first_rx_us, last_rx_us (-1: none),
 *                          lat_max_us, cpu_s, then the non-zero
 *                          close_CODE and http_NNN
 *   hist B N               N latencies in bucket B (10 us each from 0;
 *                          B = HIST_N: the overflow), non-zero only
 *   seg0 B N, seg1 B N     the same for seg_hist[0], [1] (B <= SEG_N)
 *   end                    last line: the dump is whole
 * Merged: the counters and buckets summed, first_rx_us the smallest,
 * last_rx_us, lat_max_us and t the largest, cpu_s summed; rate follows
 * from msgs and that span as in one process. */
static const struct {
    const char *name;
    uint64_t   *v;
} dump_ctr[] = {
    {"started", &st.started},         {"connected", &st.connected},
    {"subscribed", &st.subscribed},   {"failed", &st.failed},
    {"sub_failed", &st.sub_failed},   {"open", &st.open},
    {"fail_connect", &st.fail_connect}, {"fail_timeout", &st.fail_timeout},
    {"fail_http", &st.fail_http},     {"fail_accept", &st.fail_accept},
    {"fail_closed", &st.fail_closed}, {"msgs", &st.msgs},
    {"conflated", &st.conflated},     {"no_t_us", &st.no_t_us},
    {"neg_lat", &st.neg_lat},         {"errors", &st.errors},
    {"gaps", &st.gaps},               {"other", &st.other},
    {"pings", &st.pings},             {"pongs", &st.pongs},
    {"proto_err", &st.proto_err},     {"too_big", &st.too_big},
    {"lat_n", &st.lat_n},             {"seg_n", &seg_n},
};
#define DUMP_CTRS (sizeof(dump_ctr) / sizeof(dump_ctr[0]))

static int dump_write(const char *path, double t)
{
    FILE *f = fopen(path, "w");
    int   bad;

    if (!f) {
        fprintf(stderr, "ws_swarm: -D %s: %s\n", path, strerror(errno));
        return -1;
    }
    fprintf(f, "ws_swarm-dump 1\nrecv=%d\nt=%.6f\n", opt.recv, t);
    for (size_t i = 0; i < DUMP_CTRS; i++)
        fprintf(f, "%s=%" PRIu64 "\n", dump_ctr[i].name, *dump_ctr[i].v);
    /* cpu_s: getrusage's microseconds, all of them (RESULT rounds) */
    fprintf(f, "first_rx_us=%" PRId64 "\nlast_rx_us=%" PRId64
            "\nlat_max_us=%" PRId64 "\ncpu_s=%.6f\n", st.first_rx_us,
            st.last_rx_us, st.lat_max_us, result_cpu_s);
    for (int i = 0; i < CLOSE_CODES; i++)
        if (st.close_code[i])
            fprintf(f, "close_%d=%" PRIu64 "\n", i, st.close_code[i]);
    for (int i = 0; i < 600; i++)
        if (st.http[i])
            fprintf(f, "http_%d=%" PRIu64 "\n", i, st.http[i]);
    for (uint32_t i = 0; hist && i <= HIST_N; i++)
        if (hist[i])
            fprintf(f, "hist %" PRIu32 " %" PRIu64 "\n", i, hist[i]);
    for (int k = 0; k < 2; k++)
        for (int i = 0; i <= SEG_N; i++)
            if (seg_hist[k][i])
                fprintf(f, "seg%d %d %" PRIu64 "\n", k, i, seg_hist[k][i]);
    fputs("end\n", f);
    bad = ferror(f);
    if (fclose(f) != 0 || bad) {
        fprintf(stderr, "ws_swarm: -D %s: write failed\n", path);
        return -1;
    }
    return 0;
}

/* A whole number, all of s (no sign unless neg_ok). */
static int dump_int(const char *s, int neg_ok, int64_t *out)
{
    char *end;

    if (!*s || (*s == '-' && !neg_ok) || *s == '+')
        return -1;
    errno = 0;
    *out = strtoll(s, &end, 10);
    return errno || *end ? -1 : 0;
}

/* What the merge takes from the dumps besides sums. */
typedef struct {
    double  t, cpu_s;
    int64_t first_rx_us, last_rx_us, lat_max_us;
} merge_t;

/* Adds one dump to st, hist, seg_hist and m. The buckets must add up to
 * the dump's own lat_n and seg_n: a dump cut short or from another build
 * is refused, not merged. */
static int dump_read(const char *path, merge_t *m)
{
    FILE    *f = fopen(path, "r");
    char     line[256];
    int      ln = 0, whole = 0;
    uint64_t lat_n0 = st.lat_n, seg_n0 = seg_n, sum[3] = {0, 0, 0};
    double   d;
    int64_t  v;

    if (!f) {
        fprintf(stderr, "ws_swarm: --merge %s: %s\n", path, strerror(errno));
        return -1;
    }
    while (fgets(line, sizeof(line), f)) {
        char *val, *end;
        int   found = 0;

        ln++;
        if (!strchr(line, '\n'))
            goto bad;
        line[strcspn(line, "\n")] = '\0';
        if (ln == 1) {
            if (strcmp(line, "ws_swarm-dump 1") != 0)
                goto bad;
            continue;
        }
        if (whole)
            goto bad; /* nothing after "end" */
        if (strcmp(line, "end") == 0) {
            whole = 1;
            continue;
        }
        if (strncmp(line, "hist ", 5) == 0 || strncmp(line, "seg0 ", 5) == 0 ||
            strncmp(line, "seg1 ", 5) == 0) {
            int      k = line[0] == 'h' ? 0 : line[3] - '0' + 1;
            int64_t  b, n;
            uint64_t top = k == 0 ? HIST_N : SEG_N;

            val = strchr(line + 5, ' ');
            if (!val)
                goto bad;
            *val++ = '\0';
            if (dump_int(line + 5, 0, &b) || dump_int(val, 0, &n) ||
                (uint64_t)b > top)
                goto bad;
            if (k == 0)
                hist[b] += (uint64_t)n;
            else
                seg_hist[k - 1][b] += (uint64_t)n;
            sum[k] += (uint64_t)n;
            continue;
        }
        val = strchr(line, '=');
        if (!val)
            goto bad;
        *val++ = '\0';
        for (size_t i = 0; i < DUMP_CTRS && !found; i++)
            if (strcmp(line, dump_ctr[i].name) == 0) {
                if (dump_int(val, 0, &v))
                    goto bad;
                *dump_ctr[i].v += (uint64_t)v;
                found = 1;
            }
        if (found)
            continue;
        if (strcmp(line, "t") == 0 || strcmp(line, "cpu_s") == 0) {
            errno = 0;
            d = strtod(val, &end);
            if (errno || end == val || *end)
                goto bad;
            if (line[0] == 't')
                m->t = d > m->t ? d : m->t;
            else if (d > 0)
                m->cpu_s += d; /* -1: getrusage failed, nothing to add */
        } else if (strncmp(line, "close_", 6) == 0 ||
                   strncmp(line, "http_", 5) == 0) {
            int     is_close = line[0] == 'c';
            int64_t code;

            if (dump_int(line + (is_close ? 6 : 5), 0, &code) ||
                code >= (is_close ? CLOSE_CODES : 600) || dump_int(val, 0, &v))
                goto bad;
            if (is_close)
                st.close_code[code] += (uint64_t)v;
            else
                st.http[code] += (uint64_t)v;
        } else {
            if (dump_int(val, 1, &v))
                goto bad;
            if (strcmp(line, "recv") == 0 && (v == 0 || v == 1))
                opt.recv |= (int)v;
            else if (strcmp(line, "first_rx_us") == 0) {
                if (v >= 0 && (m->first_rx_us < 0 || v < m->first_rx_us))
                    m->first_rx_us = v;
            } else if (strcmp(line, "last_rx_us") == 0)
                m->last_rx_us = v > m->last_rx_us ? v : m->last_rx_us;
            else if (strcmp(line, "lat_max_us") == 0)
                m->lat_max_us = v > m->lat_max_us ? v : m->lat_max_us;
            else
                goto bad;
        }
    }
    fclose(f);
    if (!whole) {
        fprintf(stderr, "ws_swarm: --merge %s: no \"end\" line: cut short\n",
                path);
        return -1;
    }
    if (sum[0] != st.lat_n - lat_n0 || sum[1] != seg_n - seg_n0 ||
        sum[2] != seg_n - seg_n0) {
        fprintf(stderr, "ws_swarm: --merge %s: the buckets do not add up to "
                "lat_n/seg_n\n", path);
        return -1;
    }
    return 0;

bad:
    fprintf(stderr, "ws_swarm: --merge %s:%d: not a ws_swarm dump line: %.80s\n",
            path, ln, line);
    fclose(f);
    return -1;
}

/* Exit status of a run (or of a merge: of the runs together). */
static int exit_status(void)
{
    if (st.failed || st.sub_failed)
        return 1;
    for (int i = 0; i < CLOSE_CODES; i++)
        if (st.close_code[i])
            return 1;
    if (opt.recv && st.msgs == 0)
        return 1;
    return 0;
}

static int merge(char **files, int n)
{
    merge_t m = {.first_rx_us = -1, .last_rx_us = -1};

    hist = calloc(HIST_N + 1, sizeof(*hist));
    if (!hist) {
        fprintf(stderr, "ws_swarm: out of memory\n");
        return 1;
    }
    opt.recv = 0; /* a dump's recv=1 turns on the latency keys */
    for (int i = 0; i < n; i++)
        if (dump_read(files[i], &m) != 0)
            return 2;
    st.first_rx_us = m.first_rx_us;
    st.last_rx_us = m.last_rx_us;
    st.lat_max_us = m.lat_max_us;
    result_cpu_s = m.cpu_s;
    report("RESULT", m.t, 1);
    return exit_status();
}

/* ---- options -------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
"usage: ws_swarm [options] HOST:PORT | ws://HOST:PORT/PATH\n"
"  -c, --connections N    connections (1)\n"
"  -b, --bind LIST        source addresses, round-robin: comma-separated\n"
"                         IPv4 addresses or ranges of the last octet\n"
"                         (127.0.0.1-64, 127.0.0.1-127.0.0.64)\n"
"  -B, --bind-count N     same as -b 127.0.0.1-N\n"
"  -T, --token TOKEN      ?token=TOKEN on the request\n"
"  -O, --origin ORIGIN    send Origin: ORIGIN\n"
"  -s, --subscribe WHAT   '*', a device id pattern with one %%d (dev-%%06d),\n"
"                         or '' for no subscribe (default '')\n"
"  -n, --devices M        ids the pattern cycles through (connections x K)\n"
"  -k, --per-conn K       device ids per connection (1)\n"
"      --first F          number of the first id (1)\n"
"  -o, --offset O         number of this process's first connection (0):\n"
"                         picks the source address and the device ids\n"
"  -r, --rate R           connections opened per second, 0 = no limit (2000)\n"
"  -P, --pending P        handshakes in flight at most (1000)\n"
"  -m, --mode MODE        idle (default) or recv (time telemetry by t_us)\n"
"  -t, --time S           stop S seconds after the start (0 = never)\n"
"  -i, --idle S           recv: stop S s after the last message\n"
"  -e, --expect N         recv: stop after N telemetry messages\n"
"  -H, --handshake-timeout S  connect + 101 + subscribed within S s (10)\n"
"  -Q, --quiet            no STAT line every second\n"
"  -D, --dump FILE        after the RESULT, write its counters and\n"
"                         histograms to FILE, for --merge\n"
"  -h, --help\n"
"   or: ws_swarm --merge FILE...   (-M)\n"
"                         add up -D dumps of several processes: one RESULT\n"
"                         line as one process holding all their clients\n"
"                         would print (histograms summed, not quantiles\n"
"                         averaged; cpu_s summed)\n"
"Lines on stdout: STAT (every second), READY (all settled), RESULT (end),\n"
"all key=value.\n");
}

static int parse_num(const char *name, const char *s, double lo, double hi,
                     double *out)
{
    char  *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "ws_swarm: %s must be a number in [%g, %g], not '%s'\n",
                name, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int add_addr_range(const char *item)
{
    char           a[64], *dash;
    struct in_addr lo, hi;
    uint32_t       l, h;

    if (strlen(item) >= sizeof(a))
        return -1;
    strcpy(a, item);
    dash = strchr(a, '-');
    if (dash)
        *dash++ = '\0';
    if (inet_pton(AF_INET, a, &lo) != 1)
        return -1;
    hi = lo;
    if (dash) {
        if (strchr(dash, '.')) {
            if (inet_pton(AF_INET, dash, &hi) != 1)
                return -1;
        } else {
            char  *e;
            long   last = strtol(dash, &e, 10);

            if (*e || last < 0 || last > 255)
                return -1;
            hi.s_addr = htonl((ntohl(lo.s_addr) & 0xffffff00u) | (uint32_t)last);
        }
    }
    l = ntohl(lo.s_addr);
    h = ntohl(hi.s_addr);
    if (h < l)
        return -1;
    for (uint32_t x = l; x <= h; x++) {
        if (opt.naddrs >= MAX_ADDRS)
            return -1;
        opt.addrs[opt.naddrs++].s_addr = htonl(x);
        if (x == UINT32_MAX)
            break;
    }
    return 0;
}

static int parse_target(const char *s)
{
    const char *p = s, *slash, *colon;
    size_t      hl;
    double      v;
    char        port[16];

    if (strncmp(p, "ws://", 5) == 0)
        p += 5;
    else if (strstr(p, "://")) {
        fprintf(stderr, "ws_swarm: only ws:// targets\n");
        return -1;
    }
    slash = strchr(p, '/');
    if (slash) {
        if (strlen(slash) >= sizeof(opt.path))
            return -1;
        strcpy(opt.path, slash);
    } else {
        slash = p + strlen(p);
    }
    colon = memchr(p, ':', (size_t)(slash - p));
    if (!colon || (size_t)(slash - colon - 1) >= sizeof(port))
        return -1;
    hl = (size_t)(colon - p);
    if (hl == 0 || hl >= sizeof(opt.host))
        return -1;
    memcpy(opt.host, p, hl);
    opt.host[hl] = '\0';
    memcpy(port, colon + 1, (size_t)(slash - colon - 1));
    port[slash - colon - 1] = '\0';
    if (parse_num("the port", port, 1, 65535, &v))
        return -1;
    opt.port = (int)v;
    if (strcmp(opt.host, "localhost") == 0)
        strcpy(opt.host, "127.0.0.1");
    {
        struct in_addr x;

        if (inet_pton(AF_INET, opt.host, &x) != 1) {
            fprintf(stderr, "ws_swarm: the host must be an IPv4 address\n");
            return -1;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"connections", required_argument, NULL, 'c'},
        {"bind", required_argument, NULL, 'b'},
        {"bind-count", required_argument, NULL, 'B'},
        {"token", required_argument, NULL, 'T'},
        {"origin", required_argument, NULL, 'O'},
        {"subscribe", required_argument, NULL, 's'},
        {"devices", required_argument, NULL, 'n'},
        {"per-conn", required_argument, NULL, 'k'},
        {"first", required_argument, NULL, 'F'},
        {"offset", required_argument, NULL, 'o'},
        {"rate", required_argument, NULL, 'r'},
        {"pending", required_argument, NULL, 'P'},
        {"mode", required_argument, NULL, 'm'},
        {"time", required_argument, NULL, 't'},
        {"idle", required_argument, NULL, 'i'},
        {"expect", required_argument, NULL, 'e'},
        {"handshake-timeout", required_argument, NULL, 'H'},
        {"quiet", no_argument, NULL, 'Q'},
        {"dump", required_argument, NULL, 'D'},
        {"merge", no_argument, NULL, 'M'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct epoll_event *evs;
    struct rlimit       rl;
    struct sigaction    sa;
    double              v, t0, now, next_report, next_conn, tokens = 1;
    long                need;
    int                 ch, next = 0, ready = 0, rc = 0;

    while ((ch = getopt_long(argc, argv, "c:b:B:T:O:s:n:k:o:r:P:m:t:i:e:H:QD:Mh",
                             lo, NULL)) != -1) {
        switch (ch) {
        case 'c':
            if (parse_num("-c", optarg, 1, 10000000, &v)) return 2;
            opt.conns = (int)v;
            break;
        case 'b': {
            char *s = strdup(optarg), *save = NULL;

            for (char *it = strtok_r(s, ",", &save); it;
                 it = strtok_r(NULL, ",", &save)) {
                if (add_addr_range(it) != 0) {
                    fprintf(stderr, "ws_swarm: bad -b item '%s'\n", it);
                    return 2;
                }
            }
            free(s);
            break;
        }
        case 'B': {
            char r[32];

            if (parse_num("-B", optarg, 1, 254, &v)) return 2;
            snprintf(r, sizeof(r), "127.0.0.1-%d", (int)v);
            add_addr_range(r);
            break;
        }
        case 'T': opt.token = optarg; break;
        case 'O': opt.origin = optarg; break;
        case 's': opt.sub = optarg; break;
        case 'n':
            if (parse_num("-n", optarg, 1, 1e12, &v)) return 2;
            opt.sub_count = (long)v;
            break;
        case 'k':
            if (parse_num("-k", optarg, 1, 100000, &v)) return 2;
            opt.per_conn = (int)v;
            break;
        case 'F':
            if (parse_num("--first", optarg, 0, 1e12, &v)) return 2;
            opt.first = (long)v;
            break;
        case 'o':
            if (parse_num("-o", optarg, 0, 1e12, &v)) return 2;
            opt.offset = (long)v;
            break;
        case 'r':
            if (parse_num("-r", optarg, 0, 1e9, &v)) return 2;
            opt.rate = v;
            break;
        case 'P':
            if (parse_num("-P", optarg, 1, 10000000, &v)) return 2;
            opt.pending_max = (int)v;
            break;
        case 'm':
            if (strcmp(optarg, "recv") == 0)
                opt.recv = 1;
            else if (strcmp(optarg, "idle") == 0)
                opt.recv = 0;
            else {
                fprintf(stderr, "ws_swarm: -m is idle or recv\n");
                return 2;
            }
            break;
        case 't':
            if (parse_num("-t", optarg, 0, 1e9, &v)) return 2;
            opt.time_limit = v;
            break;
        case 'i':
            if (parse_num("-i", optarg, 0.01, 1e9, &v)) return 2;
            opt.idle = v;
            break;
        case 'e':
            if (parse_num("-e", optarg, 1, 1e18, &v)) return 2;
            opt.expect = (uint64_t)v;
            break;
        case 'H':
            if (parse_num("-H", optarg, 0.1, 1e6, &v)) return 2;
            opt.hs_timeout = v;
            break;
        case 'Q': opt.quiet = 1; break;
        case 'D': opt.dump = optarg; break;
        case 'M': opt.merge = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (opt.merge) { /* the other options do not apply */
        if (optind >= argc || opt.dump) {
            usage(stderr);
            return 2;
        }
        return merge(argv + optind, argc - optind);
    }
    if (optind != argc - 1) {
        usage(stderr);
        return 2;
    }
    if (parse_target(argv[optind]) != 0) {
        fprintf(stderr, "ws_swarm: bad target '%s' (HOST:PORT or "
                "ws://HOST:PORT/PATH)\n", argv[optind]);
        return 2;
    }
    if (opt.sub && opt.sub[0] && strcmp(opt.sub, "*") != 0) {
        if (!device_fmt_ok(opt.sub) || strlen(opt.sub) > 48) {
            fprintf(stderr, "ws_swarm: -s is '*' or a pattern with one %%d "
                    "(dev-%%06d), not '%s'\n", opt.sub);
            return 2;
        }
        if (opt.sub_count == 0)
            opt.sub_count = (long)opt.conns * opt.per_conn;
    }

    /* every fd we may hold: connections + epoll + stdio + slack */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    need = (long)opt.conns + 16;
    if (rl.rlim_cur != RLIM_INFINITY && (rlim_t)need > rl.rlim_cur) {
        fprintf(stderr, "ws_swarm: %d connections need %ld open files, the "
                "limit is %lu (hard); split them over several processes "
                "with -o\n", opt.conns, need, (unsigned long)rl.rlim_cur);
        return 2;
    }

    cs = calloc((size_t)opt.conns, sizeof(*cs));
    rbuf = malloc(RBUF_SIZE + HDR_MAX + 1);
    evs = calloc(1024, sizeof(*evs));
    if (opt.recv) {
        hist = calloc(HIST_N + 1, sizeof(*hist));
        i_hist = calloc(HIST_N + 1, sizeof(*i_hist));
    }
    if (!cs || !rbuf || !evs || (opt.recv && (!hist || !i_hist))) {
        fprintf(stderr, "ws_swarm: out of memory\n");
        return 1;
    }
    for (int i = 0; i < opt.conns; i++)
        cs[i].fd = -1;
    rng_state ^= (uint64_t)wall_us() * 0x9E3779B97F4A7C15ULL ^
                 (uint64_t)getpid() << 32;
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
        perror("ws_swarm: epoll_create1");
        return 1;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    fprintf(stderr, "ws_swarm: %d connections to ws://%s:%d%s from %d "
            "source address(es), subscribe %s, mode %s, open-files limit %lu\n",
            opt.conns, opt.host, opt.port, opt.path,
            opt.naddrs ? opt.naddrs : 1,
            opt.sub && opt.sub[0] ? opt.sub : "(none)",
            opt.recv ? "recv" : "idle", (unsigned long)rl.rlim_cur);

    t0 = mono_s();
    next_report = t0 + 1;
    next_conn = t0;
    while (!stop_flag) {
        int    n, timeout_ms;
        double wait;

        now = mono_s();
        /* open new connections: token bucket + in-flight bound */
        if (next < opt.conns) {
            uint64_t pending = st.started - st.failed - st.connected;

            if (opt.rate > 0) {
                tokens += (now - next_conn) * opt.rate;
                next_conn = now;
                if (tokens > opt.rate * 0.05 + 1)
                    tokens = opt.rate * 0.05 + 1;
            } else {
                tokens = 1e9;
            }
            while (next < opt.conns && tokens >= 1 &&
                   pending < (uint64_t)opt.pending_max) {
                start_conn(&cs[next++]);
                tokens -= 1;
                pending = st.started - st.failed - st.connected;
            }
        }
        wait = next_report - now;
        if (next < opt.conns)
            wait = wait < 0.002 ? wait : 0.002;
        timeout_ms = wait > 0 ? (int)(wait * 1000) + 1 : 0;
        n = epoll_wait(ep, evs, 1024, timeout_ms);
        if (n < 0 && errno != EINTR) {
            perror("ws_swarm: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++)
            on_event(&cs[evs[i].data.u32], evs[i].events);

        now = mono_s();
        if (opt.recv && opt.expect && st.msgs >= opt.expect)
            break;
        if (opt.recv && opt.idle > 0 && st.msgs > 0 &&
            (double)(wall_us() - st.last_rx_us) / 1e6 >= opt.idle)
            break;
        if (opt.time_limit > 0 && now - t0 >= opt.time_limit)
            break;
        /* everything started has failed or been closed: nothing to hold */
        if (next == opt.conns && st.open == 0 &&
            st.started == st.failed + st.connected)
            break;
        if (now >= next_report) {
            /* handshake and subscribe timeouts */
            for (int i = 0; i < next; i++) {
                conn_t *c = &cs[i];

                if ((c->state == S_CONNECTING || c->state == S_HANDSHAKE) &&
                    now - c->t_start > opt.hs_timeout)
                    conn_fail(c, &st.fail_timeout);
                else if (c->state == S_OPEN && now - c->t_start > opt.hs_timeout) {
                    st.sub_failed++;
                    c->state = S_REFUSED; /* settled: open, not subscribed */
                }
            }
            if (!opt.quiet)
                report("STAT", now - t0, 0);
            next_report += 1;
            if (next_report < now)
                next_report = now + 1;
        }
        if (!ready && next == opt.conns &&
            st.subscribed + st.sub_failed + st.failed >= (uint64_t)opt.conns) {
            ready = 1;
            printf("READY t=%.3f connected=%" PRIu64 " subscribed=%" PRIu64
                   " failed=%" PRIu64 " sub_failed=%" PRIu64 " open=%" PRIu64
                   "\n", now - t0, st.connected, st.subscribed, st.failed,
                   st.sub_failed, st.open);
            fflush(stdout);
        }
    }
    now = mono_s();
    report("RESULT", now - t0, 1);
    rc = exit_status();
    if (opt.dump && dump_write(opt.dump, now - t0) != 0)
        rc = 1;
    /* a close frame on every open connection, then the sockets go */
    for (int i = 0; i < next; i++) {
        conn_t *c = &cs[i];

        if (c->fd >= 0 && c->state != S_CONNECTING && c->state != S_HANDSHAKE &&
            c->state != S_DONE) {
            c->closing = 1;
            send_frame(c, 0x8, "\x03\xe8", 2); /* 1000 */
        }
        if (c->fd >= 0)
            close(c->fd);
    }
    return rc;
}
