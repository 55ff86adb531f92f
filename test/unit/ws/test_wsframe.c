/*
 * test_wsframe.c - the RFC 6455 frame reader and writers (fl_wsframe.h).
 *
 * Client frames are built here by hand (cframe(): masked with the mask of
 * the RFC's examples, shortest length form) or written out byte by byte,
 * never with the writers under test. A recorder turns the callbacks into
 * one line of text ("text:Hello|ping:x|close:1000:bye|"), so a test states
 * the exact events it expects; the same stream fed whole, one byte at a
 * time and cut at every point must give the same line. Each piece fed is
 * a malloc'd copy of its own size, so under `make asan` a read past a
 * piece, or a callback's data used after the call, is caught.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl_core.h"
#include "fl_wsframe.h"
#include "unit.h"

#define FIN   0x80
#define TEXT  (FIN | FL_WS_OP_TEXT)
#define BIN   (FIN | FL_WS_OP_BINARY)
#define PING  (FIN | FL_WS_OP_PING)
#define PONG  (FIN | FL_WS_OP_PONG)
#define CLOSE (FIN | FL_WS_OP_CLOSE)

static const unsigned char MASK[4] = {0x37, 0xfa, 0x21, 0x3d};

/* ---- helpers ---- */

/* A masked client frame: first byte b0 (FIN, RSV bits, opcode), then the
 * shortest length form, MASK and the masked payload. Returns its length. */
static size_t cframe(unsigned char *out, unsigned b0, const void *payload,
                     size_t len)
{
    const unsigned char *p = payload;
    size_t               n = 0, i;

    out[n++] = (unsigned char)b0;
    if (len < 126) {
        out[n++] = (unsigned char)(0x80 | len);
    } else if (len <= 0xffff) {
        out[n++] = 0x80 | 126;
        out[n++] = (unsigned char)(len >> 8);
        out[n++] = (unsigned char)len;
    } else {
        out[n++] = 0x80 | 127;
        for (i = 0; i < 8; i++)
            out[n++] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
    }
    memcpy(out + n, MASK, 4);
    n += 4;
    for (i = 0; i < len; i++)
        out[n + i] = p[i] ^ MASK[i & 3];
    return n + len;
}

/* A close frame's payload: code, then reason. */
static size_t close_body(unsigned char *out, int code, const char *reason)
{
    out[0] = (unsigned char)(code >> 8);
    out[1] = (unsigned char)code;
    memcpy(out + 2, reason, strlen(reason));
    return 2 + strlen(reason);
}

/* What the callbacks saw. */
typedef struct {
    char                 log[4096];
    size_t               len;
    int                  events;
    int                  stop_at;  /* this event (from 1) returns 1 */
    fl_wsrx_t           *free_rx;  /* ... after freeing this heap rx */
    const unsigned char *last;     /* data of the last message */
    size_t               mem_seen; /* fl_wsrx_memory() in the last callback */
    fl_wsrx_t           *rx;       /* for mem_seen */
} rec_t;

static fl_printf(2, 3) void rec_add(rec_t *r, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    r->len +=
        (size_t)vsnprintf(r->log + r->len, sizeof(r->log) - r->len, fmt, ap);
    va_end(ap);
    if (r->len >= sizeof(r->log))
        abort();
}

/* Payloads up to 32 bytes as text (\xNN for other bytes), longer ones as
 * [length]fnv1a. */
static void rec_data(rec_t *r, const unsigned char *p, size_t len)
{
    size_t i;

    if (len > 32) {
        rec_add(r, "[%zu]%08x", len, fl_fnv1a(p, len));
        return;
    }
    for (i = 0; i < len; i++) {
        if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\\')
            rec_add(r, "%c", p[i]);
        else
            rec_add(r, "\\x%02x", p[i]);
    }
}

static int rec_end(rec_t *r)
{
    rec_add(r, "|");
    if (r->rx)
        r->mem_seen = fl_wsrx_memory(r->rx);
    if (++r->events != r->stop_at)
        return 0;
    if (r->free_rx) {
        fl_wsrx_free(r->free_rx);
        free(r->free_rx);
    }
    return 1;
}

static int on_message(void *ud, int op, unsigned char *data, size_t len)
{
    rec_t *r = ud;

    rec_add(r, "%s:", op == FL_WS_OP_TEXT ? "text" : "bin");
    rec_data(r, data, len);
    r->last = data;
    return rec_end(r);
}

static int on_control(void *ud, int op, unsigned char *data, size_t len)
{
    rec_t *r = ud;

    rec_add(r, "%s:", op == FL_WS_OP_PING ? "ping" : "pong");
    rec_data(r, data, len);
    return rec_end(r);
}

static int on_close(void *ud, int code, const char *reason, size_t len)
{
    rec_t *r = ud;

    rec_add(r, "close:%d:", code);
    rec_data(r, (const unsigned char *)reason, len);
    return rec_end(r);
}

static fl_wsrx_ops_t ops_max(size_t max)
{
    fl_wsrx_ops_t ops = {max, on_message, on_control, on_close};

    return ops;
}

/* Feed buf[0..n) in pieces of step bytes (0: whole), each a malloc'd copy
 * of its own size. Returns the first non-zero result (and feeds no more),
 * else 0. */
static int feed_step(fl_wsrx_t *rx, rec_t *r, const fl_wsrx_ops_t *ops,
                     const unsigned char *buf, size_t n, size_t step,
                     const char **why)
{
    size_t         off = 0, k;
    unsigned char *piece;
    int            rc = 0;

    if (step == 0)
        step = n ? n : 1;
    while (off < n && rc == 0) {
        k = fl_min(step, n - off);
        piece = malloc(k);
        if (piece == NULL)
            abort();
        memcpy(piece, buf + off, k);
        rc = fl_wsrx_feed(rx, piece, k, ops, r, why);
        free(piece);
        off += k;
    }
    return rc;
}

/* A fresh reader fed buf whole with max_message max: the result, the
 * events in r, nothing held afterwards when the reader is freed. */
static int run(rec_t *r, size_t max, const void *buf, size_t n,
               const char **why)
{
    fl_wsrx_t     rx;
    fl_wsrx_ops_t ops = ops_max(max);
    int           rc;

    memset(&rx, 0, sizeof(rx));
    memset(r, 0, sizeof(*r));
    *why = NULL;
    rc = feed_step(&rx, r, &ops, buf, n, 0, why);
    fl_wsrx_free(&rx);
    return rc;
}

/* buf fed whole gives the result code (an error with a reason fit for a
 * close frame, or 0) after exactly the events want. */
static void check_error(const char *file, int line, const void *buf, size_t n,
                        size_t max, int code, const char *want)
{
    rec_t       r;
    const char *why;
    int         rc = run(&r, max, buf, n, &why);

    if (rc != code)
        fl_test_fail(file, line, "result %d, want %d", rc, code);
    else if (code && (why == NULL || why[0] == '\0' || strlen(why) > 123))
        fl_test_fail(file, line, "no reason fit for a close frame");
    if (strcmp(r.log, want) != 0)
        fl_test_fail(file, line, "events \"%s\", want \"%s\"", r.log, want);
}

#define CHECK_ERROR(buf, n, code, want) \
    check_error(__FILE__, __LINE__, buf, n, 1 << 20, code, want)

/*
 * buf (it must contain no error) fed whole, one byte at a time, and cut
 * in two at every point gives exactly the events want, result 0, and
 * leaves nothing held.
 */
static void check_stream(const char *file, int line, const unsigned char *buf,
                         size_t n, const char *want)
{
    fl_wsrx_t     rx;
    fl_wsrx_ops_t ops = ops_max(1 << 20);
    rec_t         r;
    const char   *why = NULL;
    size_t        cut;
    int           rc;

    for (cut = 0; cut <= n + 1; cut++) {
        memset(&rx, 0, sizeof(rx));
        memset(&r, 0, sizeof(r));
        if (cut <= n) { /* in two at cut */
            rc = feed_step(&rx, &r, &ops, buf, cut, 0, &why);
            if (rc == 0)
                rc = feed_step(&rx, &r, &ops, buf + cut, n - cut, 0, &why);
        } else { /* byte by byte */
            rc = feed_step(&rx, &r, &ops, buf, n, 1, &why);
        }
        if (rc != 0 || strcmp(r.log, want) != 0 || fl_wsrx_memory(&rx)) {
            fl_test_fail(file, line,
                         "cut %zu%s: result %d, %zu bytes held, events "
                         "\"%s\", want \"%s\"",
                         cut, cut > n ? " (byte by byte)" : "", rc,
                         fl_wsrx_memory(&rx), r.log, want);
            fl_wsrx_free(&rx);
            return;
        }
        fl_wsrx_free(&rx);
    }
}

#define CHECK_STREAM(buf, n, want) \
    check_stream(__FILE__, __LINE__, buf, n, want)

/* ---- handshake and writers ---- */

void test_ws_accept(void)
{
    char out[29];

    /* RFC 6455 section 1.3 */
    memset(out, 'x', sizeof(out));
    FL_CHECK_EQ_INT(fl_ws_accept("dGhlIHNhbXBsZSBub25jZQ==", out), 0);
    FL_CHECK_STR(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");

    /* optional whitespace around the value */
    memset(out, 'x', sizeof(out));
    FL_CHECK_EQ_INT(fl_ws_accept("  dGhlIHNhbXBsZSBub25jZQ==\t ", out), 0);
    FL_CHECK_STR(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");

    /* the bytes 01 02 ... 10 as a key (worked out with Python's hashlib
     * and base64) */
    memset(out, 'x', sizeof(out));
    FL_CHECK_EQ_INT(fl_ws_accept("AQIDBAUGBwgJCgsMDQ4PEA==", out), 0);
    FL_CHECK_STR(out, "C/0nmHhBztSRGR1CwL6Tf4ZjwpY=");
}

void test_ws_accept_bad_keys(void)
{
    static const char *const bad[] = {
        "",
        "   ",
        "dGhlIHNhbXBsZSBub25jZQ=",   /* 23 characters */
        "dGhlIHNhbXBsZSBub25jZQ===", /* 25 */
        "dGhlIHNhbXBsZSBub25jZQ",    /* no padding */
        "AAAAAAAAAAAAAAAAAAAAAAAA",  /* 18 bytes */
        "dGhlIHNhbXBsZSBub25jZQ=A",  /* padding then data */
        "dGhlIHNhbXBsZSBub25j=Q==",  /* '=' inside */
        "dGhlIHNhbXBsZSBub25jZ===",  /* 15.5 bytes */
        "dGhlIHNhbXBs-SBub25jZQ==",  /* base64url alphabet */
        "dGhlIHNhbXBs_SBub25jZQ==",
        "dGhlIHNhbX Bs ZSBub25jZQ==",   /* space inside */
        "dGhlIHNhbXBsZSBub25jZQ==\r",   /* CR is not whitespace here */
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", /* 20 bytes */
        "dGhlIHNhbXBsZSBub25jZQ==dGhlIHNhbXBsZSBub25jZQ==",
    };
    char   out[29];
    size_t i;

    for (i = 0; i < fl_nelem(bad); i++) {
        if (fl_ws_accept(bad[i], out) != -1)
            fl_test_fail(__FILE__, __LINE__, "accepted \"%s\"", bad[i]);
    }
}

void test_ws_header(void)
{
    static const struct {
        uint64_t      len;
        size_t        n;
        unsigned char want[FL_WS_HEADER_MAX];
    } cases[] = {
        {0, 2, {0x81, 0}},
        {125, 2, {0x81, 125}},
        {126, 4, {0x81, 126, 0x00, 0x7e}},
        {65535, 4, {0x81, 126, 0xff, 0xff}},
        {65536, 10, {0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0}},
        {0x0123456789abcdefULL,
         10,
         {0x81, 127, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef}},
    };
    unsigned char out[FL_WS_HEADER_MAX];
    size_t        i, n;

    for (i = 0; i < fl_nelem(cases); i++) {
        n = fl_ws_header(out, FL_WS_OP_TEXT, cases[i].len);
        FL_CHECK_EQ_U64(n, cases[i].n);
        if (n == cases[i].n && memcmp(out, cases[i].want, n) != 0)
            fl_test_fail(__FILE__, __LINE__, "length %llu: wrong bytes",
                         (unsigned long long)cases[i].len);
    }
    /* the opcode goes in the low bits, FIN set, no RSV, no mask */
    FL_CHECK_EQ_U64(fl_ws_header(out, FL_WS_OP_CLOSE, 2), 2);
    FL_CHECK_EQ_INT(out[0], 0x88);
    FL_CHECK_EQ_INT(out[1], 2);
    fl_ws_header(out, FL_WS_OP_PONG, 5);
    FL_CHECK_EQ_INT(out[0], 0x8a);
    fl_ws_header(out, FL_WS_OP_BINARY, 300);
    FL_CHECK_EQ_INT(out[0], 0x82);
    FL_CHECK_EQ_INT(out[1], 126);
}

void test_ws_close_payload(void)
{
    unsigned char out[125];
    char          reason[200];
    size_t        n;

    n = fl_ws_close_payload(out, 1000, "bye");
    FL_CHECK_EQ_U64(n, 5);
    FL_CHECK(memcmp(out,
                    "\x03\xe8"
                    "bye",
                    5) == 0);

    n = fl_ws_close_payload(out, FL_WS_CLOSE_TOO_BIG, "");
    FL_CHECK_EQ_U64(n, 2);
    FL_CHECK(out[0] == 0x03 && out[1] == 0xf1);

    FL_CHECK_EQ_U64(fl_ws_close_payload(out, 4999, NULL), 2);
    FL_CHECK(out[0] == 0x13 && out[1] == 0x87);

    /* ASCII: cut at 123 bytes */
    memset(reason, 'a', 199);
    reason[199] = '\0';
    n = fl_ws_close_payload(out, 1001, reason);
    FL_CHECK_EQ_U64(n, 125);
    FL_CHECK(memcmp(out + 2, reason, 123) == 0);

    /* 122 bytes then a 2-byte character: it does not fit, so 122 */
    memset(reason, 'a', 122);
    memcpy(reason + 122, "\xc3\xa9z", 4);
    FL_CHECK_EQ_U64(fl_ws_close_payload(out, 1001, reason), 124);
    /* 121 + 2 bytes fit exactly */
    memset(reason, 'a', 121);
    memcpy(reason + 121, "\xc3\xa9z", 4);
    FL_CHECK_EQ_U64(fl_ws_close_payload(out, 1001, reason), 125);
    FL_CHECK(memcmp(out + 2 + 121, "\xc3\xa9", 2) == 0);
    /* 4-byte characters: 30 fit (120 bytes), the 31st does not */
    reason[0] = '\0';
    for (n = 0; n < 40; n++)
        strcat(reason, "\xf0\x9f\x98\x80");
    FL_CHECK_EQ_U64(fl_ws_close_payload(out, 1001, reason), 122);

    /* a reason that is not UTF-8 stops before its first bad byte */
    FL_CHECK_EQ_U64(fl_ws_close_payload(out, 1011,
                                        "ok\xff"
                                        "after"),
                    4);
    FL_CHECK_EQ_U64(fl_ws_close_payload(out, 1011, "ab\xe2\x82"), 4);
}

/* ---- reading ---- */

void test_wsrx_text_in_place(void)
{
    /* RFC 6455 section 5.7: a masked "Hello" */
    unsigned char frame[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                             0x7f, 0x9f, 0x4d, 0x51, 0x58};
    fl_wsrx_t     rx;
    fl_wsrx_ops_t ops = ops_max(1 << 20);
    rec_t         r;
    const char   *why = NULL;

    memset(&rx, 0, sizeof(rx));
    memset(&r, 0, sizeof(r));
    r.rx = &rx;
    FL_CHECK_EQ_INT(fl_wsrx_feed(&rx, frame, sizeof(frame), &ops, &r, &why), 0);
    FL_CHECK_STR(r.log, "text:Hello|");
    /* no copy: the payload was unmasked where it was */
    FL_CHECK(r.last == frame + 6);
    FL_CHECK(memcmp(frame + 6, "Hello", 5) == 0);
    FL_CHECK_EQ_U64(r.mem_seen, 0);
    FL_CHECK_EQ_U64(fl_wsrx_memory(&rx), 0);
    FL_CHECK(rx.part == NULL && rx.msg == NULL);
    fl_wsrx_free(&rx);

    /* nothing fed, nothing done */
    memset(&r, 0, sizeof(r));
    FL_CHECK_EQ_INT(fl_wsrx_feed(&rx, frame, 0, &ops, &r, &why), 0);
    FL_CHECK_STR(r.log, "");
}

void test_wsrx_split_anywhere(void)
{
    unsigned char buf[2048], big[300], body[64];
    size_t        n = 0, i;

    for (i = 0; i < sizeof(big); i++)
        big[i] = (unsigned char)(i * 7);
    n += cframe(buf + n, TEXT, "Hello", 5);
    n += cframe(buf + n, BIN, big, sizeof(big)); /* 16-bit length */
    n += cframe(buf + n, PING, "are you there", 13);
    n += cframe(buf + n, TEXT, "", 0);
    n += cframe(buf + n, FL_WS_OP_TEXT, "fr", 2);
    n += cframe(buf + n, PONG, "", 0);
    n += cframe(buf + n, FL_WS_OP_CONT, "ag", 2);
    n += cframe(buf + n, FIN | FL_WS_OP_CONT, "ments \xe2\x82\xac", 9);
    n += cframe(buf + n, BIN, "\x00\x01", 2);
    n += cframe(buf + n, CLOSE, body, close_body(body, 1000, "done"));
    {
        char want[512];

        snprintf(want, sizeof(want),
                 "text:Hello|bin:[300]%08x|ping:are you there|text:|pong:|"
                 "text:fragments \\xe2\\x82\\xac|bin:\\x00\\x01|"
                 "close:1000:done|",
                 fl_fnv1a(big, sizeof(big)));
        CHECK_STREAM(buf, n, want);
    }
}

void test_wsrx_fragments_with_ping(void)
{
    unsigned char buf[256];
    fl_wsrx_t     rx;
    fl_wsrx_ops_t ops = ops_max(1 << 20);
    rec_t         r;
    const char   *why = NULL;
    size_t        n;

    memset(&rx, 0, sizeof(rx));
    memset(&r, 0, sizeof(r));
    n = cframe(buf, FL_WS_OP_TEXT, "Hel", 3);
    FL_CHECK_EQ_INT(feed_step(&rx, &r, &ops, buf, n, 0, &why), 0);
    FL_CHECK_EQ_INT(rx.msg_op, FL_WS_OP_TEXT);
    FL_CHECK(fl_wsrx_memory(&rx) >= 3);
    FL_CHECK(rx.part == NULL);

    /* a ping in the middle is answered at once; then the rest */
    n = cframe(buf, PING, "p", 1);
    n += cframe(buf + n, FL_WS_OP_CONT, "", 0);
    n += cframe(buf + n, FIN | FL_WS_OP_CONT, "lo", 2);
    FL_CHECK_EQ_INT(feed_step(&rx, &r, &ops, buf, n, 0, &why), 0);
    FL_CHECK_STR(r.log, "ping:p|text:Hello|");
    FL_CHECK_EQ_U64(fl_wsrx_memory(&rx), 0);
    FL_CHECK_EQ_INT(rx.msg_op, 0);

    /* a binary message in four fragments, a pong and a ping between */
    n = cframe(buf, FL_WS_OP_BINARY, "a", 1);
    n += cframe(buf + n, PONG, "1", 1);
    n += cframe(buf + n, FL_WS_OP_CONT, "bc", 2);
    n += cframe(buf + n, PING, "2", 1);
    n += cframe(buf + n, FL_WS_OP_CONT, "def", 3);
    n += cframe(buf + n, FIN | FL_WS_OP_CONT, "g", 1);
    memset(&r, 0, sizeof(r));
    FL_CHECK_EQ_INT(feed_step(&rx, &r, &ops, buf, n, 0, &why), 0);
    FL_CHECK_STR(r.log, "pong:1|ping:2|bin:abcdefg|");
    FL_CHECK_EQ_U64(fl_wsrx_memory(&rx), 0);
    fl_wsrx_free(&rx);

    /* the same, cut everywhere */
    CHECK_STREAM(buf, n, "pong:1|ping:2|bin:abcdefg|");
}

void test_wsrx_lengths(void)
{
    static const size_t lens[] = {125, 126, 127, 65535, 65536, 70000};
    unsigned char      *buf = malloc(70000 + 14), *payload = malloc(70000);
    rec_t               r;
    const char         *why;
    char                want[64];
    size_t              i, k, n;

    FL_REQUIRE(buf && payload);
    for (k = 0; k < 70000; k++)
        payload[k] = (unsigned char)(k * 31 + 5);
    for (i = 0; i < fl_nelem(lens); i++) {
        n = cframe(buf, BIN, payload, lens[i]);
        FL_CHECK_EQ_U64(n, lens[i] + (lens[i] < 126     ? 6
                                      : lens[i] < 65536 ? 8
                                                        : 14));
        FL_CHECK_EQ_INT(run(&r, 70000, buf, n, &why), 0);
        snprintf(want, sizeof(want), "bin:[%zu]%08x|", lens[i],
                 fl_fnv1a(payload, lens[i]));
        FL_CHECK_STR(r.log, want);
    }
    /* a longer form than needed is accepted: 5 in 16 and in 64 bits */
    {
        unsigned char f16[] = {0x81, 0xfe, 0,   5,   0,   0,  0,
                               0,    'h',  'e', 'l', 'l', 'o'};
        unsigned char f64[] = {0x81, 0xff, 0, 0, 0,   0,   0,   0,   0,  5,
                               0,    0,    0, 0, 'h', 'e', 'l', 'l', 'o'};

        FL_CHECK_EQ_INT(run(&r, 100, f16, sizeof(f16), &why), 0);
        FL_CHECK_STR(r.log, "text:hello|");
        FL_CHECK_EQ_INT(run(&r, 100, f64, sizeof(f64), &why), 0);
        FL_CHECK_STR(r.log, "text:hello|");
    }
    free(buf);
    free(payload);
}

void test_wsrx_err_unmasked(void)
{
    unsigned char f[] = {0x81, 0x05, 'H', 'e', 'l', 'l', 'o'};
    unsigned char g[64];
    size_t        n;

    CHECK_ERROR(f, sizeof(f), 1002, "");
    /* decided on the first two bytes */
    CHECK_ERROR(f, 2, 1002, "");
    /* after a good frame, which is delivered */
    n = cframe(g, TEXT, "ok", 2);
    memcpy(g + n, f, sizeof(f));
    CHECK_ERROR(g, n + sizeof(f), 1002, "text:ok|");
}

void test_wsrx_err_rsv(void)
{
    static const unsigned rsv[] = {0x40, 0x20, 0x10, 0x70};
    unsigned char         f[64];
    size_t                i, n;

    for (i = 0; i < fl_nelem(rsv); i++) {
        n = cframe(f, TEXT | rsv[i], "x", 1);
        CHECK_ERROR(f, n, 1002, "");
        n = cframe(f, PING | rsv[i], "x", 1);
        CHECK_ERROR(f, n, 1002, "");
    }
}

void test_wsrx_err_opcode(void)
{
    static const unsigned ops[] = {3, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf};
    unsigned char         f[64];
    size_t                i, n;

    for (i = 0; i < fl_nelem(ops); i++) {
        n = cframe(f, FIN | ops[i], "x", 1);
        CHECK_ERROR(f, n, 1002, "");
        n = cframe(f, ops[i], "", 0);
        CHECK_ERROR(f, n, 1002, "");
    }
}

void test_wsrx_err_control(void)
{
    unsigned char f[256], body[200];
    char          want125[32];
    size_t        n;

    memset(body, 'c', sizeof(body));
    snprintf(want125, sizeof(want125), "ping:[125]%08x|", fl_fnv1a(body, 125));
    /* fragmented control frames */
    n = cframe(f, FL_WS_OP_PING, "x", 1);
    CHECK_ERROR(f, n, 1002, "");
    n = cframe(f, FL_WS_OP_PONG, "x", 1);
    CHECK_ERROR(f, n, 1002, "");
    n = cframe(f, FL_WS_OP_CLOSE, "\x03\xe8", 2);
    CHECK_ERROR(f, n, 1002, "");
    /* 125 bytes is the most; 126 is refused on the first two bytes */
    n = cframe(f, PING, body, 125);
    CHECK_ERROR(f, n, 0, want125);
    cframe(f, PING, body, 126);
    CHECK_ERROR(f, 2, 1002, "");
    n = cframe(f, PONG, body, 126);
    CHECK_ERROR(f, n, 1002, "");
    close_body(body, 1000, "");
    n = cframe(f, CLOSE, body, 126);
    CHECK_ERROR(f, n, 1002, "");
}

void test_wsrx_err_continuation(void)
{
    unsigned char f[256];
    size_t        n;

    /* nothing started */
    n = cframe(f, FIN | FL_WS_OP_CONT, "x", 1);
    CHECK_ERROR(f, n, 1002, "");
    n = cframe(f, FL_WS_OP_CONT, "x", 1);
    CHECK_ERROR(f, n, 1002, "");
    /* the message was finished */
    n = cframe(f, FL_WS_OP_TEXT, "a", 1);
    n += cframe(f + n, FIN | FL_WS_OP_CONT, "b", 1);
    n += cframe(f + n, FIN | FL_WS_OP_CONT, "c", 1);
    CHECK_ERROR(f, n, 1002, "text:ab|");
    /* a new data frame inside a fragmented message */
    n = cframe(f, FL_WS_OP_TEXT, "a", 1);
    n += cframe(f + n, TEXT, "b", 1);
    CHECK_ERROR(f, n, 1002, "");
    n = cframe(f, FL_WS_OP_BINARY, "a", 1);
    n += cframe(f + n, PING, "p", 1);
    n += cframe(f + n, FL_WS_OP_BINARY, "b", 1);
    CHECK_ERROR(f, n, 1002, "ping:p|");
}

void test_wsrx_err_length_top_bit(void)
{
    unsigned char f[] = {0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4};
    unsigned char g[] = {0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff,
                         0xff, 0xff, 0xff, 1,    2,    3,    4};
    rec_t         r;
    const char   *why;

    CHECK_ERROR(f, sizeof(f), 1002, "");
    /* decided on the length, without the mask */
    CHECK_ERROR(f, 10, 1002, "");
    /* 2^63 - 1 is a length, just too big */
    FL_CHECK_EQ_INT(run(&r, SIZE_MAX, g, sizeof(g), &why), 1009);
}

void test_wsrx_err_text_utf8(void)
{
    unsigned char f[256];
    size_t        n;

    n = cframe(f, TEXT, "ab\xff", 3);
    CHECK_ERROR(f, n, 1007, "");
    n = cframe(f, TEXT, "\xed\xa0\x80", 3); /* a surrogate */
    CHECK_ERROR(f, n, 1007, "");
    n = cframe(f, TEXT, "\xc0\xaf", 2); /* overlong */
    CHECK_ERROR(f, n, 1007, "");
    /* binary is not checked */
    n = cframe(f, BIN, "ab\xff", 3);
    CHECK_ERROR(f, n, 0, "bin:ab\\xff|");
    /* a character cut between fragments is fine ... */
    n = cframe(f, FL_WS_OP_TEXT, "\xe2\x82", 2);
    n += cframe(f + n, FIN | FL_WS_OP_CONT, "\xac", 1);
    CHECK_ERROR(f, n, 0, "text:\\xe2\\x82\\xac|");
    /* ... one that the message ends in is not */
    n = cframe(f, FL_WS_OP_TEXT, "ok", 2);
    n += cframe(f + n, FIN | FL_WS_OP_CONT, "\xe2\x82", 2);
    CHECK_ERROR(f, n, 1007, "");
}

void test_wsrx_too_big_on_header(void)
{
    unsigned char f[512], body[300];
    fl_wsrx_t     rx;
    fl_wsrx_ops_t ops = ops_max(100);
    rec_t         r;
    const char   *why = NULL;
    char          want[32];
    size_t        n;

    memset(body, 'b', sizeof(body));
    /* 100 is the limit, 101 is over it */
    n = cframe(f, BIN, body, 100);
    FL_CHECK_EQ_INT(run(&r, 100, f, n, &why), 0);
    n = cframe(f, BIN, body, 101);
    FL_CHECK_EQ_INT(run(&r, 100, f, n, &why), 1009);
    FL_CHECK_STR(r.log, "");

    /* decided on the two header bytes (7-bit length), nothing kept */
    memset(&rx, 0, sizeof(rx));
    memset(&r, 0, sizeof(r));
    FL_CHECK_EQ_INT(feed_step(&rx, &r, &ops, f, 2, 0, &why), 1009);
    FL_CHECK_EQ_U64(fl_wsrx_memory(&rx), 0);
    fl_wsrx_free(&rx);
    /* ... on four (16-bit length), fed one at a time */
    n = cframe(f, BIN, body, 300);
    memset(&r, 0, sizeof(r));
    FL_CHECK_EQ_INT(feed_step(&rx, &r, &ops, f, 3, 1, &why), 0);
    FL_CHECK_EQ_INT(feed_step(&rx, &r, &ops, f + 3, 1, 1, &why), 1009);
    FL_CHECK_EQ_U64(fl_wsrx_memory(&rx), 0);
    fl_wsrx_free(&rx);

    /* fragments summed: 60 + 40 fit, 60 + 41 do not (on the header) */
    n = cframe(f, FL_WS_OP_BINARY, body, 60);
    n += cframe(f + n, FIN | FL_WS_OP_CONT, body, 40);
    FL_CHECK_EQ_INT(run(&r, 100, f, n, &why), 0);
    snprintf(want, sizeof(want), "bin:[100]%08x|", fl_fnv1a(body, 100));
    FL_CHECK_STR(r.log, want);
    n = cframe(f, FL_WS_OP_BINARY, body, 60);
    n += cframe(f + n, FL_WS_OP_CONT, body, 41);
    FL_CHECK_EQ_INT(run(&r, 100, f, n - 41 - 4, &why), 1009);
    FL_CHECK_STR(why, "message too big");
    /* control frames are not messages: a 125-byte ping passes */
    n = cframe(f, PING, body, 125);
    FL_CHECK_EQ_INT(run(&r, 100, f, n, &why), 0);

    /* whatever max_message says, a frame (header included) must fit the
     * 32-bit counts: UINT32_MAX - 14 is the longest message */
    {
        unsigned char h[] = {0x82, 0xff, 0, 0, 0, 1, 0, 0, 0, 0};

        FL_CHECK_EQ_INT(run(&r, SIZE_MAX, h, sizeof(h), &why), 1009);
        h[5] = 0;
        memset(h + 6, 0xff, 4);
        h[9] = 0xf2; /* UINT32_MAX - 13 */
        FL_CHECK_EQ_INT(run(&r, SIZE_MAX, h, sizeof(h), &why), 1009);
        h[9] = 0xf1; /* UINT32_MAX - 14: no mask yet, 14 bytes held */
        memset(&rx, 0, sizeof(rx));
        ops.max_message = SIZE_MAX;
        FL_CHECK_EQ_INT(feed_step(&rx, &r, &ops, h, sizeof(h), 0, &why), 0);
        FL_CHECK_EQ_U64(fl_wsrx_memory(&rx), 14);
        fl_wsrx_free(&rx);
    }
}

void test_wsrx_memory(void)
{
    unsigned char f[2048], body[1000];
    fl_wsrx_t     rx;
    fl_wsrx_ops_t ops = ops_max(1 << 20);
    rec_t         r;
    const char   *why = NULL;
    char          want[32];
    size_t        n, m;

    memset(body, 'm', sizeof(body));
    snprintf(want, sizeof(want), "bin:[1000]%08x|", fl_fnv1a(body, 1000));
    memset(&rx, 0, sizeof(rx));
    memset(&r, 0, sizeof(r));
    r.rx = &rx;
    n = cframe(f, BIN, body, 1000); /* 8-byte header */

    /* one byte: a header buffer */
    FL_CHECK_EQ_INT(feed_step(&rx, &r, &ops, f, 1, 0, &why), 0);
    FL_CHECK_EQ_U64(fl_wsrx_memory(&rx), 14);
    /* the header whole: the frame's size, no more */
    FL_CHECK_EQ_INT(feed_step(&rx, &r, &ops, f + 1, 9, 0, &why), 0);
    FL_CHECK_EQ_U64(fl_wsrx_memory(&rx), 1008);
    FL_CHECK_EQ_INT(feed_step(&rx, &r, &ops, f + 10, n - 10 - 1, 0, &why), 0);
    FL_CHECK_EQ_U64(fl_wsrx_memory(&rx), 1008);
    FL_CHECK_STR(r.log, "");
    /* the last byte: delivered, given back */
    FL_CHECK_EQ_INT(feed_step(&rx, &r, &ops, f + n - 1, 1, 0, &why), 0);
    FL_CHECK_STR(r.log, want);
    FL_CHECK_EQ_U64(fl_wsrx_memory(&rx), 0);
    FL_CHECK(rx.part == NULL);

    /* a frame whose header arrived whole but not its payload */
    memset(&r, 0, sizeof(r));
    r.rx = &rx;
    n = cframe(f, TEXT, "abc", 3);
    FL_CHECK_EQ_INT(feed_step(&rx, &r, &ops, f, n - 1, 0, &why), 0);
    FL_CHECK_EQ_U64(fl_wsrx_memory(&rx), 9); /* the frame: 6 + 3 */
    FL_CHECK_EQ_INT(feed_step(&rx, &r, &ops, f + n - 1, 1, 0, &why), 0);
    FL_CHECK_STR(r.log, "text:abc|");
    FL_CHECK_EQ_U64(fl_wsrx_memory(&rx), 0);

    /* fragments: held while assembling, given back when delivered */
    memset(&r, 0, sizeof(r));
    r.rx = &rx;
    n = cframe(f, FL_WS_OP_BINARY, body, 500);
    FL_CHECK_EQ_INT(feed_step(&rx, &r, &ops, f, n, 0, &why), 0);
    m = fl_wsrx_memory(&rx);
    FL_CHECK(m >= 500 && m <= 1000);
    n = cframe(f, FIN | FL_WS_OP_CONT, body, 500);
    FL_CHECK_EQ_INT(feed_step(&rx, &r, &ops, f, n, 7, &why), 0);
    FL_CHECK_STR(r.log, want);
    FL_CHECK(r.mem_seen >= 1000); /* the message was in rx->msg */
    FL_CHECK_EQ_U64(fl_wsrx_memory(&rx), 0);

    /* the message buffer grows to max_message, not past it */
    memset(&r, 0, sizeof(r));
    r.rx = &rx;
    ops.max_message = 100;
    n = cframe(f, FL_WS_OP_BINARY, body, 60);
    n += cframe(f + n, FIN | FL_WS_OP_CONT, body, 40);
    FL_CHECK_EQ_INT(feed_step(&rx, &r, &ops, f, n, 0, &why), 0);
    FL_CHECK_EQ_U64(r.mem_seen, 100);
    ops.max_message = 1 << 20;

    /* an error gives everything back at once */
    n = cframe(f, FL_WS_OP_BINARY, body, 500);
    n += cframe(f + n, BIN, "x", 1);
    FL_CHECK_EQ_INT(feed_step(&rx, &r, &ops, f, n - 6, 0, &why), 0);
    FL_CHECK_EQ_U64(fl_wsrx_memory(&rx), 500 + 14);
    FL_CHECK_EQ_INT(feed_step(&rx, &r, &ops, f + n - 6, 6, 0, &why), 1002);
    FL_CHECK_EQ_U64(fl_wsrx_memory(&rx), 0);
    fl_wsrx_free(&rx);
}

void test_wsrx_stop(void)
{
    unsigned char f[256], body[16];
    fl_wsrx_t     rx;
    fl_wsrx_ops_t ops = ops_max(1 << 20);
    rec_t         r;
    const char   *why = NULL;
    size_t        n;
    int           ev;

    n = cframe(f, TEXT, "one", 3);
    n += cframe(f + n, PING, "two", 3);
    n += cframe(f + n, FL_WS_OP_TEXT, "th", 2);
    n += cframe(f + n, FIN | FL_WS_OP_CONT, "ree", 3);
    n += cframe(f + n, CLOSE, body, close_body(body, 1001, "four"));
    n += cframe(f + n, TEXT, "five", 4);

    /* each callback in turn asks to stop: nothing after it is called */
    for (ev = 1; ev <= 4; ev++) {
        static const char *const want[] = {
            "text:one|", "text:one|ping:two|", "text:one|ping:two|text:three|",
            "text:one|ping:two|text:three|close:1001:four|"};

        memset(&rx, 0, sizeof(rx));
        memset(&r, 0, sizeof(r));
        r.stop_at = ev;
        FL_CHECK_EQ_INT(feed_step(&rx, &r, &ops, f, n, 0, &why), FL_WS_STOPPED);
        FL_CHECK_STR(r.log, want[ev - 1]);
        FL_CHECK_EQ_INT(rx.done, 0);
        fl_wsrx_free(&rx);
        FL_CHECK_EQ_U64(fl_wsrx_memory(&rx), 0);
    }

    /* the callback frees the connection holding rx: the reader must not
     * touch it again (make asan checks) */
    for (ev = 1; ev <= 4; ev++) {
        fl_wsrx_t *heap = calloc(1, sizeof(*heap));

        FL_REQUIRE(heap != NULL);
        memset(&r, 0, sizeof(r));
        r.stop_at = ev;
        r.free_rx = heap;
        /* byte by byte, so that the fragmented message is in rx->msg */
        FL_CHECK_EQ_INT(feed_step(heap, &r, &ops, f, n, 1, &why),
                        FL_WS_STOPPED);
        FL_CHECK_EQ_INT(r.events, ev);
    }
}

void test_wsrx_close_codes(void)
{
    static const int good[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010,
                               1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999};
    static const int bad[] = {0,    1,    999,  1004, 1005, 1006, 1015,
                              1016, 1100, 2000, 2999, 5000, 5001, 65535};
    unsigned char    f[64], body[16];
    char             want[64];
    size_t           i, n;

    for (i = 0; i < fl_nelem(good); i++) {
        n = cframe(f, CLOSE, body, close_body(body, good[i], "r"));
        snprintf(want, sizeof(want), "close:%d:r|", good[i]);
        CHECK_ERROR(f, n, 0, want);
    }
    for (i = 0; i < fl_nelem(bad); i++) {
        n = cframe(f, CLOSE, body, close_body(body, bad[i], "r"));
        CHECK_ERROR(f, n, 1002, "");
        n = cframe(f, CLOSE, body, close_body(body, bad[i], ""));
        CHECK_ERROR(f, n, 1002, "");
    }
}

void test_wsrx_close_forms(void)
{
    unsigned char f[256], body[130];
    fl_wsrx_t     rx;
    fl_wsrx_ops_t ops = ops_max(1 << 20);
    rec_t         r;
    const char   *why = NULL;
    size_t        n;

    /* no payload: 1005 and no reason */
    n = cframe(f, CLOSE, "", 0);
    CHECK_ERROR(f, n, 0, "close:1005:|");
    /* 1 byte */
    n = cframe(f, CLOSE, "\x03", 1);
    CHECK_ERROR(f, n, 1002, "");
    /* a code alone */
    n = cframe(f, CLOSE, "\x03\xe8", 2);
    CHECK_ERROR(f, n, 0, "close:1000:|");
    /* reasons: UTF-8, not UTF-8, the longest */
    n = cframe(f, CLOSE, body, close_body(body, 1000, "gr\xc3\xbc\xc3\x9f"));
    CHECK_ERROR(f, n, 0, "close:1000:gr\\xc3\\xbc\\xc3\\x9f|");
    n = cframe(f, CLOSE, body, close_body(body, 1000, "bad\xc3"));
    CHECK_ERROR(f, n, 1007, "");
    n = cframe(f, CLOSE, body, close_body(body, 4000, "\xed\xbf\xbf"));
    CHECK_ERROR(f, n, 1007, "");
    close_body(body, 1000, "");
    memset(body + 2, 'z', 123);
    n = cframe(f, CLOSE, body, 125);
    FL_CHECK_EQ_INT(run(&r, 1 << 20, f, n, &why), 0);
    FL_CHECK_PREFIX(r.log, "close:1000:[123]");

    /* after a close the rest of the feed and later feeds are ignored */
    memset(&rx, 0, sizeof(rx));
    memset(&r, 0, sizeof(r));
    n = cframe(f, CLOSE, body, close_body(body, 1000, "bye"));
    n += cframe(f + n, TEXT, "late", 4);
    FL_CHECK_EQ_INT(feed_step(&rx, &r, &ops, f, n, 0, &why), 0);
    FL_CHECK_EQ_INT(rx.done, 1);
    n = cframe(f, TEXT, "later", 5);
    FL_CHECK_EQ_INT(feed_step(&rx, &r, &ops, f, n, 0, &why), 0);
    FL_CHECK_EQ_INT(
        feed_step(&rx, &r, &ops, (const unsigned char *)"\x81\x05", 2, 0, &why),
        0); /* even an unmasked frame */
    FL_CHECK_STR(r.log, "close:1000:bye|");
    FL_CHECK_EQ_U64(fl_wsrx_memory(&rx), 0);
    fl_wsrx_free(&rx);

    /* a close in the middle of a fragmented message; its buffer goes */
    memset(&rx, 0, sizeof(rx));
    memset(&r, 0, sizeof(r));
    n = cframe(f, FL_WS_OP_TEXT, "part", 4);
    n += cframe(f + n, CLOSE, body, close_body(body, 1001, ""));
    FL_CHECK_EQ_INT(feed_step(&rx, &r, &ops, f, n, 0, &why), 0);
    FL_CHECK_STR(r.log, "close:1001:|");
    FL_CHECK_EQ_U64(fl_wsrx_memory(&rx), 0);
    fl_wsrx_free(&rx);
}

void test_wsrx_after_error(void)
{
    unsigned char f[128];
    fl_wsrx_t     rx;
    fl_wsrx_ops_t ops = ops_max(1 << 20);
    rec_t         r;
    const char   *why = NULL;
    size_t        n;

    memset(&rx, 0, sizeof(rx));
    memset(&r, 0, sizeof(r));
    n = cframe(f, FL_WS_OP_TEXT, "frag", 4);
    n += cframe(f + n, TEXT | 0x40, "x", 1);
    FL_CHECK_EQ_INT(feed_step(&rx, &r, &ops, f, n, 0, &why), 1002);
    FL_CHECK_STR(why, "reserved bits set");
    FL_CHECK_EQ_INT(rx.done, 1);
    FL_CHECK_EQ_U64(fl_wsrx_memory(&rx), 0);
    /* good frames are ignored now */
    n = cframe(f, TEXT, "ignored", 7);
    FL_CHECK_EQ_INT(feed_step(&rx, &r, &ops, f, n, 0, &why), 0);
    FL_CHECK_STR(r.log, "");

    /* why may be NULL */
    fl_wsrx_free(&rx);
    f[0] = 0x81;
    f[1] = 0x00; /* unmasked */
    FL_CHECK_EQ_INT(fl_wsrx_feed(&rx, f, 2, &ops, &r, NULL), 1002);
    n = cframe(f, TEXT, "ignored", 7);

    /* free makes it new */
    fl_wsrx_free(&rx);
    FL_CHECK_EQ_INT(feed_step(&rx, &r, &ops, f, n, 0, &why), 0);
    FL_CHECK_STR(r.log, "text:ignored|");

    /* free in the middle of a frame and of a message */
    n = cframe(f, FL_WS_OP_TEXT, "abc", 3);
    n += cframe(f + n, FIN | FL_WS_OP_CONT, "def", 3);
    FL_CHECK_EQ_INT(feed_step(&rx, &r, &ops, f, n - 2, 0, &why), 0);
    FL_CHECK(rx.part != NULL && rx.msg != NULL);
    fl_wsrx_free(&rx);
    FL_CHECK_EQ_U64(fl_wsrx_memory(&rx), 0);
    FL_CHECK(rx.part == NULL && rx.msg == NULL && rx.msg_op == 0);
    memset(&r, 0, sizeof(r));
    n = cframe(f, TEXT, "fresh", 5);
    FL_CHECK_EQ_INT(feed_step(&rx, &r, &ops, f, n, 0, &why), 0);
    FL_CHECK_STR(r.log, "text:fresh|");
    fl_wsrx_free(&rx);
}

void test_wsrx_empty(void)
{
    unsigned char f[128];
    size_t        n;

    /* empty messages, one frame or several empty fragments */
    n = cframe(f, TEXT, "", 0);
    n += cframe(f + n, BIN, "", 0);
    n += cframe(f + n, FL_WS_OP_TEXT, "", 0);
    n += cframe(f + n, FL_WS_OP_CONT, "", 0);
    n += cframe(f + n, FIN | FL_WS_OP_CONT, "", 0);
    n += cframe(f + n, PING, "", 0);
    CHECK_STREAM(f, n, "text:|bin:|text:|ping:|");
    /* max_message 0 allows only those */
    CHECK_ERROR(f, n, 0, "text:|bin:|text:|ping:|");
    {
        rec_t       r;
        const char *why;

        FL_CHECK_EQ_INT(run(&r, 0, f, n, &why), 0);
        FL_CHECK_STR(r.log, "text:|bin:|text:|ping:|");
        n = cframe(f, TEXT, "x", 1);
        FL_CHECK_EQ_INT(run(&r, 0, f, n, &why), 1009);
    }
}
