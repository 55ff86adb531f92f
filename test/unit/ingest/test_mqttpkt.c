/*
 * test_mqttpkt.c - the MQTT 5.0 packet codec (fl_mqttpkt.h).
 *
 * Every packet is written here as hex, worked out from the OASIS MQTT 5.0
 * text (fixed header, variable header, properties, payload), never with
 * the writers under test. A recorder turns the decoded packets into one
 * line of text ("connack:sp=0,rc=00|publish:q1,...|"), the properties
 * read back with fl_mqtt_prop_next(), so a test states exactly what it
 * expects; the same stream fed whole, one byte at a time and cut in two
 * at every point must give the same line and the same result. Each piece
 * fed is a malloc'd copy of its own size, so under `make asan` a read
 * past a piece is caught.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl_core.h"
#include "fl_enc.h"
#include "fl_mqttpkt.h"
#include "unit.h"

#define MAX_DEFAULT (1u << 20)

/* ---- helpers ---- */

typedef struct {
    unsigned char b[1024];
    size_t        n;
} hex_t;

/* "20 03 00 00 00" as bytes (spaces ignored). */
static hex_t hx(const char *s)
{
    hex_t    h;
    unsigned v;

    h.n = 0;
    while (*s) {
        if (*s == ' ') {
            s++;
            continue;
        }
        if (sscanf(s, "%2x", &v) != 1 || h.n == sizeof(h.b))
            abort();
        h.b[h.n++] = (unsigned char)v;
        s += 2;
    }
    return h;
}

/* What the reader reported. */
typedef struct {
    char             log[8192];
    size_t           len;
    int              packets;
    fl_mqtt_packet_t last;      /* the last packet, pointers valid only
                                   while its piece is */
    const unsigned char *piece; /* the piece fed when last came */
    size_t               piece_n;
    size_t               mem_seen; /* fl_mqttrx_memory() then */
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

/* Up to 32 bytes as text (\xNN for other bytes), longer as [len]fnv1a. */
static void rec_data(rec_t *r, const void *data, size_t len)
{
    const unsigned char *p = data;
    size_t               i;

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

/* The properties of section 2.2.2.2 by kind, as the spec lists them. */
static int prop_is_num(int id)
{
    return strchr("\x01\x02\x0b\x11\x13\x17\x18\x19\x21\x22\x23\x24\x25\x27"
                  "\x28\x29\x2a",
                  id) != NULL;
}

static void rec_props(rec_t *r, const fl_mqtt_props_t *pp)
{
    fl_mqtt_prop_t pr;
    size_t         off = 0;
    int            first = 1;

    while (fl_mqtt_prop_next(pp->raw, &off, &pr)) {
        rec_add(r, "%s%02x=", first ? "{" : ",", pr.id);
        first = 0;
        if (prop_is_num(pr.id)) {
            rec_add(r, "%u", pr.num);
        } else if (pr.id == FL_MQTT_PROP_CORRELATION_DATA ||
                   pr.id == FL_MQTT_PROP_AUTH_DATA) {
            rec_data(r, pr.bin.p, pr.bin.len);
        } else {
            rec_data(r, pr.str.p, pr.str.len);
            if (pr.id == FL_MQTT_PROP_USER) {
                rec_add(r, ":");
                rec_data(r, pr.val.p, pr.val.len);
            }
        }
    }
    if (off != pp->raw.len)
        rec_add(r, "{props left over}");
    if (!first)
        rec_add(r, "}");
}

static void rec_packet(rec_t *r, const fl_mqtt_packet_t *k)
{
    static const char *const names[16] = {
        [FL_MQTT_CONNACK] = "connack",   [FL_MQTT_PUBLISH] = "publish",
        [FL_MQTT_PUBACK] = "puback",     [FL_MQTT_PUBREC] = "pubrec",
        [FL_MQTT_PUBREL] = "pubrel",     [FL_MQTT_PUBCOMP] = "pubcomp",
        [FL_MQTT_SUBACK] = "suback",     [FL_MQTT_UNSUBACK] = "unsuback",
        [FL_MQTT_PINGRESP] = "pingresp", [FL_MQTT_DISCONNECT] = "disconnect",
    };
    size_t i;

    rec_add(r, "%s", names[k->type & 15] ? names[k->type & 15] : "?");
    switch (k->type) {
    case FL_MQTT_CONNACK:
        rec_add(r, ":sp=%d,rc=%02x", k->session_present, k->reason);
        break;
    case FL_MQTT_PUBLISH:
        rec_add(r, ":q%d,d%d,r%d,id=%u,t=", k->qos, k->dup, k->retain,
                k->packet_id);
        rec_data(r, k->topic.p, k->topic.len);
        rec_add(r, ",p=");
        rec_data(r, k->payload.p, k->payload.len);
        break;
    case FL_MQTT_SUBACK:
    case FL_MQTT_UNSUBACK:
        rec_add(r, ":id=%u,rc=", k->packet_id);
        for (i = 0; i < k->reasons.len; i++)
            rec_add(r, "%s%02x", i ? " " : "", k->reasons.p[i]);
        break;
    case FL_MQTT_PINGRESP: break;
    case FL_MQTT_DISCONNECT: rec_add(r, ":rc=%02x", k->reason); break;
    default: rec_add(r, ":id=%u,rc=%02x", k->packet_id, k->reason);
    }
    rec_props(r, &k->props);
    rec_add(r, "|");
}

/*
 * Feed buf[0..n) in pieces of step bytes (0: whole), each a malloc'd
 * copy, calling fl_mqttrx_feed() on each until it asks for more. Returns
 * the first error (and feeds no more), else 0.
 */
static int feed_step(fl_mqttrx_t *rx, rec_t *r, const unsigned char *buf,
                     size_t n, size_t step)
{
    fl_mqtt_packet_t pkt;
    size_t           off = 0, k, used, at;
    unsigned char   *piece;
    int              rc = FL_AGAIN;

    if (step == 0)
        step = n ? n : 1;
    while (off < n && rc == FL_AGAIN) {
        k = fl_min(step, n - off);
        piece = malloc(k);
        if (piece == NULL)
            abort();
        memcpy(piece, buf + off, k);
        at = 0;
        while ((rc = fl_mqttrx_feed(rx, piece + at, k - at, &used, &pkt)) ==
               FL_OK) {
            if (used > k - at)
                abort();
            at += used;
            rec_packet(r, &pkt);
            r->packets++;
            r->last = pkt;
            r->piece = piece;
            r->piece_n = k;
            r->mem_seen = fl_mqttrx_memory(rx);
        }
        if (used != k - at)
            fl_test_fail(__FILE__, __LINE__, "%zu bytes of %zu taken", used,
                         k - at);
        free(piece);
        off += k;
    }
    return rc == FL_AGAIN ? 0 : rc;
}

static const char *show_cut(size_t cut, size_t n)
{
    static char buf[64];

    if (cut > n)
        return " (byte by byte)";
    snprintf(buf, sizeof(buf), " (cut at %zu)", cut);
    return buf;
}

/*
 * The hex stream fed whole, cut in two at every point and one byte at a
 * time, to a reader of max_packet max and topic_alias_max alias, gives
 * result code (0 or a reason code) after exactly the packets want, and
 * leaves nothing held.
 */
static void check_feed(const char *file, int line, const char *hex,
                       uint32_t max, uint16_t alias, int code, const char *want)
{
    hex_t       h = hx(hex);
    fl_mqttrx_t rx;
    rec_t       r;
    size_t      cut, used;
    int         rc;

    for (cut = 0; cut <= h.n + 1; cut++) {
        fl_mqttrx_init(&rx, max, alias);
        memset(&r, 0, sizeof(r));
        if (cut <= h.n) {
            rc = feed_step(&rx, &r, h.b, cut, 0);
            if (rc == 0)
                rc = feed_step(&rx, &r, h.b + cut, h.n - cut, 0);
        } else {
            rc = feed_step(&rx, &r, h.b, h.n, 1);
        }
        if (rc != code || strcmp(r.log, want) != 0 ||
            fl_mqttrx_memory(&rx) != 0 || (code && rx.why == NULL)) {
            fl_test_fail(file, line,
                         "%s: result 0x%02x, want 0x%02x, %zu bytes held, "
                         "why \"%s\", packets \"%s\", want \"%s\"",
                         show_cut(cut, h.n), (unsigned)rc, (unsigned)code,
                         fl_mqttrx_memory(&rx), rx.why ? rx.why : "", r.log,
                         want);
            fl_mqttrx_free(&rx);
            return;
        }
        /* after an error the reader takes nothing more */
        if (code &&
            fl_mqttrx_feed(&rx, hx("d0 00").b, 2, &used, &r.last) != code) {
            fl_test_fail(file, line, "not stopped after 0x%02x", code);
            return;
        }
        fl_mqttrx_free(&rx);
    }
}

#define CHECK_STREAM(hex, want) \
    check_feed(__FILE__, __LINE__, hex, MAX_DEFAULT, 0, 0, want)
#define CHECK_ERROR(hex, code, want) \
    check_feed(__FILE__, __LINE__, hex, MAX_DEFAULT, 0, code, want)

/* The one packet of hex, fed whole. */
static int decode1(const char *hex, uint16_t alias, fl_mqtt_packet_t *pkt,
                   hex_t *h)
{
    fl_mqttrx_t rx;
    size_t      used;
    int         rc;

    *h = hx(hex);
    fl_mqttrx_init(&rx, MAX_DEFAULT, alias);
    rc = fl_mqttrx_feed(&rx, h->b, h->n, &used, pkt);
    if (rc == FL_OK && used != h->n)
        rc = FL_ERROR;
    fl_mqttrx_free(&rx);
    return rc;
}

/* What a writer appended to b equals hex. */
static void check_bytes(const char *file, int line, const fl_sbuf_t *b,
                        size_t from, const char *hex)
{
    hex_t  h = hx(hex);
    size_t i, n = b->len - from;

    if (n == h.n && memcmp(b->p + from, h.b, n) == 0)
        return;
    fl_test_fail(file, line, "%zu bytes, want %zu:", n, h.n);
    printf("    got ");
    for (i = 0; i < n; i++)
        printf("%02x ", (unsigned char)b->p[from + i]);
    printf("\n    want %s\n", hex);
}

#define CHECK_BYTES(b, hex) check_bytes(__FILE__, __LINE__, b, 0, hex)

static fl_mqtt_str_t S(const char *s)
{
    fl_mqtt_str_t v = {s, strlen(s)};

    return v;
}

/* ---- building blocks ---- */

void test_mqtt_vbi(void)
{
    static const struct {
        uint32_t    v;
        const char *hex;
    } cases[] = {
        {0, "00"},
        {127, "7f"},
        {128, "80 01"},
        {16383, "ff 7f"},
        {16384, "80 80 01"},
        {2097151, "ff ff 7f"},
        {2097152, "80 80 80 01"},
        {268435455, "ff ff ff 7f"},
    };
    unsigned char out[4];
    uint32_t      v;
    size_t        i, n, len;
    hex_t         h;

    for (i = 0; i < fl_nelem(cases); i++) {
        h = hx(cases[i].hex);
        n = fl_mqtt_vbi_encode(out, cases[i].v);
        if (n != h.n || memcmp(out, h.b, n) != 0)
            fl_test_fail(__FILE__, __LINE__, "encode %u", cases[i].v);
        v = 1;
        len = 0;
        FL_CHECK_EQ_INT(fl_mqtt_vbi_decode(h.b, h.n, &v, &len), FL_OK);
        FL_CHECK_EQ_U64(v, cases[i].v);
        FL_CHECK_EQ_U64(len, h.n);
        /* what follows is not read */
        h.b[h.n] = 0xff;
        FL_CHECK_EQ_INT(fl_mqtt_vbi_decode(h.b, h.n + 1, &v, &len), FL_OK);
        FL_CHECK_EQ_U64(len, h.n);
        /* every shorter prefix asks for more */
        for (n = 0; n < h.n; n++)
            FL_CHECK_EQ_INT(fl_mqtt_vbi_decode(h.b, n, &v, &len), FL_AGAIN);
    }
    FL_CHECK_EQ_U64(fl_mqtt_vbi_encode(out, 268435456), 0);
    FL_CHECK_EQ_U64(fl_mqtt_vbi_encode(out, UINT32_MAX), 0);

    /* five bytes, and longer forms than needed */
    h = hx("ff ff ff ff 7f");
    FL_CHECK_EQ_INT(fl_mqtt_vbi_decode(h.b, h.n, &v, &len), FL_ERROR);
    FL_CHECK_EQ_INT(fl_mqtt_vbi_decode(h.b, 4, &v, &len), FL_ERROR);
    h = hx("80 80 80 80 01");
    FL_CHECK_EQ_INT(fl_mqtt_vbi_decode(h.b, h.n, &v, &len), FL_ERROR);
    h = hx("80 00");
    FL_CHECK_EQ_INT(fl_mqtt_vbi_decode(h.b, h.n, &v, &len), FL_ERROR);
    h = hx("ff 00");
    FL_CHECK_EQ_INT(fl_mqtt_vbi_decode(h.b, h.n, &v, &len), FL_ERROR);
    h = hx("80 80 80 00");
    FL_CHECK_EQ_INT(fl_mqtt_vbi_decode(h.b, h.n, &v, &len), FL_ERROR);
}

void test_mqtt_utf8(void)
{
    char *big;

    FL_CHECK(fl_mqtt_utf8_ok("", 0));
    FL_CHECK(fl_mqtt_utf8_ok(NULL, 0));
    FL_CHECK(fl_mqtt_utf8_ok("hello", 5));
    FL_CHECK(fl_mqtt_utf8_ok("\xc3\xbc", 2));
    FL_CHECK(fl_mqtt_utf8_ok("\xf0\x9f\x98\x80", 4));
    FL_CHECK(fl_mqtt_utf8_ok("\x01\x7f", 2));     /* SHOULD NOT, not MUST NOT */
    FL_CHECK(fl_mqtt_utf8_ok("\xef\xbf\xbf", 3)); /* U+FFFF */
    FL_CHECK(!fl_mqtt_utf8_ok("a\0b", 3));        /* U+0000 */
    FL_CHECK(!fl_mqtt_utf8_ok("\xc0\x80", 2));    /* U+0000, overlong */
    FL_CHECK(!fl_mqtt_utf8_ok("\xed\xa0\x80", 3));     /* surrogate */
    FL_CHECK(!fl_mqtt_utf8_ok("\xc0\xaf", 2));         /* overlong '/' */
    FL_CHECK(!fl_mqtt_utf8_ok("\xf4\x90\x80\x80", 4)); /* above U+10FFFF */
    FL_CHECK(!fl_mqtt_utf8_ok("\xc3", 1));             /* cut */
    FL_CHECK(!fl_mqtt_utf8_ok("\xff", 1));
    big = fl_test_repeat("", 'a', 65536, "");
    FL_CHECK(fl_mqtt_utf8_ok(big, 65535));
    FL_CHECK(!fl_mqtt_utf8_ok(big, 65536));
    free(big);
}

void test_mqtt_topic_filter(void)
{
    static const char *const topics_ok[] = {"a",   "/",      "a/b",
                                            "a b", "$SYS/x", "\xc3\xbc/1"};
    static const char *const topics_bad[] = {"",    "a/+", "#",
                                             "a/#", "+",   "\xc3"};
    static const char *const filters_ok[] = {
        "#",     "+",          "+/+",        "a/+/b",      "/",
        "a//b",  "$SYS/#",     "sport/+/p1", "$share/g/#", "$share/g/a/+",
        "a/b/#", "+/tennis/#", "$share/g//", "$share/g/+"};
    static const char *const filters_bad[] = {
        "",          "a#",         "a/#/",        "a/b+",     "++",
        "#/",        "a/#/b",      "$share/",     "$share/g", "$share/g/",
        "$share//t", "$share/#/t", "$share/g+/t", "a/\xff"};
    fl_mqtt_str_t nul = {"a\0b", 3};
    size_t        i;

    for (i = 0; i < fl_nelem(topics_ok); i++)
        if (!fl_mqtt_topic_ok(S(topics_ok[i])))
            fl_test_fail(__FILE__, __LINE__, "topic \"%s\"", topics_ok[i]);
    for (i = 0; i < fl_nelem(topics_bad); i++)
        if (fl_mqtt_topic_ok(S(topics_bad[i])))
            fl_test_fail(__FILE__, __LINE__, "topic \"%s\"", topics_bad[i]);
    for (i = 0; i < fl_nelem(filters_ok); i++)
        if (!fl_mqtt_filter_ok(S(filters_ok[i])))
            fl_test_fail(__FILE__, __LINE__, "filter \"%s\"", filters_ok[i]);
    for (i = 0; i < fl_nelem(filters_bad); i++)
        if (fl_mqtt_filter_ok(S(filters_bad[i])))
            fl_test_fail(__FILE__, __LINE__, "filter \"%s\"", filters_bad[i]);
    FL_CHECK(!fl_mqtt_topic_ok(nul));
    FL_CHECK(!fl_mqtt_filter_ok(nul));
}

/* ---- writers ---- */

void test_mqtt_put_connect(void)
{
    fl_sbuf_t         b = {0};
    fl_mqtt_connect_t c;

    /* clean start, keep alive 60, "fleetd", no property */
    memset(&c, 0, sizeof(c));
    c.client_id = S("fleetd");
    c.clean_start = 1;
    c.keep_alive = 60;
    FL_CHECK_EQ_INT(fl_mqtt_put_connect(&b, &c), FL_OK);
    CHECK_BYTES(&b, "10 13 00 04 4d 51 54 54 05 02 00 3c 00"
                    " 00 06 66 6c 65 65 74 64");

    /* username, a binary password with a zero byte, three properties in
     * the order Session Expiry, Receive Maximum, Maximum Packet Size */
    memset(&c, 0, sizeof(c));
    c.client_id = S("c1");
    c.username = S("u");
    c.password.p = (const unsigned char *)"p\0";
    c.password.len = 2;
    c.keep_alive = 30;
    c.session_expiry = 3600;
    c.receive_max = 20;
    c.max_packet_size = 65536;
    b.len = 0;
    FL_CHECK_EQ_INT(fl_mqtt_put_connect(&b, &c), FL_OK);
    CHECK_BYTES(&b, "10 23 00 04 4d 51 54 54 05 c0 00 1e 0d"
                    " 11 00 00 0e 10 21 00 14 27 00 01 00 00"
                    " 00 02 63 31 00 01 75 00 02 70 00");

    /* empty client id (the server assigns one), Topic Alias Maximum */
    memset(&c, 0, sizeof(c));
    c.clean_start = 1;
    c.topic_alias_max = 10;
    b.len = 0;
    FL_CHECK_EQ_INT(fl_mqtt_put_connect(&b, &c), FL_OK);
    CHECK_BYTES(&b, "10 10 00 04 4d 51 54 54 05 02 00 00 03 22 00 0a 00 00");

    /* an empty password without a username (allowed in MQTT 5) */
    memset(&c, 0, sizeof(c));
    c.client_id = S("x");
    c.clean_start = 1;
    c.keep_alive = 10;
    c.password.p = (const unsigned char *)"";
    b.len = 0;
    FL_CHECK_EQ_INT(fl_mqtt_put_connect(&b, &c), FL_OK);
    CHECK_BYTES(&b, "10 10 00 04 4d 51 54 54 05 42 00 0a 00 00 01 78 00 00");
    fl_sb_free(&b);
}

void test_mqtt_put_connect_refused(void)
{
    fl_sbuf_t         b = {0};
    fl_mqtt_connect_t c;
    char             *big = fl_test_repeat("", 'a', 65536, "");

    memset(&c, 0, sizeof(c));
    c.client_id.p = "\xff";
    c.client_id.len = 1;
    FL_CHECK_EQ_INT(fl_mqtt_put_connect(&b, &c), FL_ERROR);
    c.client_id.p = "a\0b";
    c.client_id.len = 3;
    FL_CHECK_EQ_INT(fl_mqtt_put_connect(&b, &c), FL_ERROR);
    c.client_id.p = big;
    c.client_id.len = 65536;
    FL_CHECK_EQ_INT(fl_mqtt_put_connect(&b, &c), FL_ERROR);
    c.client_id = S("ok");
    c.username.p = "\xed\xa0\x80";
    c.username.len = 3;
    FL_CHECK_EQ_INT(fl_mqtt_put_connect(&b, &c), FL_ERROR);
    c.username = S("u");
    c.password.p = (const unsigned char *)big;
    c.password.len = 65536;
    FL_CHECK_EQ_INT(fl_mqtt_put_connect(&b, &c), FL_ERROR);
    FL_CHECK_EQ_U64(b.len, 0);
    /* the limits themselves are fine */
    c.password.len = 65535;
    c.client_id.p = big;
    c.client_id.len = 65535;
    FL_CHECK_EQ_INT(fl_mqtt_put_connect(&b, &c), FL_OK);
    /* 3 bytes of remaining length for 131088 */
    FL_CHECK_EQ_U64(b.len, 1 + 3 + 10 + 1 + 65537 + 3 + 65537);
    fl_sb_free(&b);
    free(big);
}

void test_mqtt_put_subscribe(void)
{
    fl_sbuf_t     b = {0};
    fl_mqtt_sub_t one = {S("a/+"), 1, 0, 0, 0};
    fl_mqtt_sub_t two[2] = {{S("$share/g/t/#"), 1, 0, 1, 2},
                            {S("#"), 2, 1, 0, 1}};

    FL_CHECK_EQ_INT(fl_mqtt_put_subscribe(&b, 1, 0, &one, 1), FL_OK);
    CHECK_BYTES(&b, "82 09 00 01 00 00 03 61 2f 2b 01");

    /* Subscription Identifier 200 (c8 01), options 0x29 and 0x16 */
    b.len = 0;
    FL_CHECK_EQ_INT(fl_mqtt_put_subscribe(&b, 0x1234, 200, two, 2), FL_OK);
    CHECK_BYTES(&b, "82 19 12 34 03 0b c8 01"
                    " 00 0c 24 73 68 61 72 65 2f 67 2f 74 2f 23 29"
                    " 00 01 23 16");

    /* the largest Subscription Identifier */
    b.len = 0;
    FL_CHECK_EQ_INT(fl_mqtt_put_subscribe(&b, 0xffff, 268435455, &one, 1),
                    FL_OK);
    CHECK_BYTES(&b, "82 0e ff ff 05 0b ff ff ff 7f 00 03 61 2f 2b 01");
    fl_sb_free(&b);
}

void test_mqtt_put_subscribe_refused(void)
{
    static const fl_mqtt_sub_t bad[] = {
        {{"", 0}, 0, 0, 0, 0},
        {{"a/#/b", 5}, 0, 0, 0, 0},
        {{"a+", 2}, 0, 0, 0, 0},
        {{"$share/g", 8}, 0, 0, 0, 0},
        {{"$share//t", 9}, 0, 0, 0, 0},
        {{"t", 1}, 3, 0, 0, 0},
        {{"t", 1}, 0, 0, 0, 3},
        {{"t", 1}, 0, 2, 0, 0},
        {{"t", 1}, 0, 0, 2, 0},
        {{"$share/g/t", 10}, 0, 1, 0, 0}, /* No Local, shared */
    };
    fl_sbuf_t     b = {0};
    fl_mqtt_sub_t ok = {S("t"), 0, 1, 0, 0}, two[2];
    size_t        i;

    for (i = 0; i < fl_nelem(bad); i++)
        if (fl_mqtt_put_subscribe(&b, 1, 0, &bad[i], 1) != FL_ERROR)
            fl_test_fail(__FILE__, __LINE__, "case %zu accepted", i);
    FL_CHECK_EQ_INT(fl_mqtt_put_subscribe(&b, 0, 0, &ok, 1), FL_ERROR);
    FL_CHECK_EQ_INT(fl_mqtt_put_subscribe(&b, 1, 0, &ok, 0), FL_ERROR);
    FL_CHECK_EQ_INT(fl_mqtt_put_subscribe(&b, 1, 268435456, &ok, 1), FL_ERROR);
    /* a bad second filter refuses the whole packet */
    two[0] = ok;
    two[1] = bad[1];
    FL_CHECK_EQ_INT(fl_mqtt_put_subscribe(&b, 1, 0, two, 2), FL_ERROR);
    FL_CHECK_EQ_U64(b.len, 0);
    /* No Local on a filter that is not shared is fine */
    FL_CHECK_EQ_INT(fl_mqtt_put_subscribe(&b, 1, 0, &ok, 1), FL_OK);
    CHECK_BYTES(&b, "82 07 00 01 00 00 01 74 04");
    fl_sb_free(&b);
}

void test_mqtt_put_unsubscribe(void)
{
    fl_sbuf_t     b = {0};
    fl_mqtt_str_t f[2] = {S("a/b"), S("c")}, bad[2] = {S("a"), S("a#")};

    FL_CHECK_EQ_INT(fl_mqtt_put_unsubscribe(&b, 2, f, 2), FL_OK);
    CHECK_BYTES(&b, "a2 0b 00 02 00 00 03 61 2f 62 00 01 63");
    b.len = 0;
    FL_CHECK_EQ_INT(fl_mqtt_put_unsubscribe(&b, 0, f, 2), FL_ERROR);
    FL_CHECK_EQ_INT(fl_mqtt_put_unsubscribe(&b, 2, f, 0), FL_ERROR);
    FL_CHECK_EQ_INT(fl_mqtt_put_unsubscribe(&b, 2, bad, 2), FL_ERROR);
    FL_CHECK_EQ_U64(b.len, 0);
    fl_sb_free(&b);
}

void test_mqtt_put_publish(void)
{
    fl_sbuf_t     b = {0};
    unsigned char big[200];

    FL_CHECK_EQ_INT(fl_mqtt_put_publish(&b, S("a/b"), 0, 0, 0, "hi", 2), FL_OK);
    CHECK_BYTES(&b, "30 08 00 03 61 2f 62 00 68 69");

    /* QoS 1, DUP, RETAIN, empty payload */
    b.len = 0;
    FL_CHECK_EQ_INT(fl_mqtt_put_publish(&b, S("t"), 1,
                                        FL_MQTT_DUP | FL_MQTT_RETAIN, 0x0102,
                                        NULL, 0),
                    FL_OK);
    CHECK_BYTES(&b, "3b 06 00 01 74 01 02 00");

    /* QoS 0 retained */
    b.len = 0;
    FL_CHECK_EQ_INT(
        fl_mqtt_put_publish(&b, S("t"), 0, FL_MQTT_RETAIN, 0, "x", 1), FL_OK);
    CHECK_BYTES(&b, "31 05 00 01 74 00 78");

    /* a remaining length of 206 takes two bytes: ce 01 */
    memset(big, 'x', sizeof(big));
    b.len = 0;
    FL_CHECK_EQ_INT(fl_mqtt_put_publish(&b, S("t"), 1, 0, 7, big, 200), FL_OK);
    FL_REQUIRE(b.len == 209);
    FL_CHECK(memcmp(b.p, "\x32\xce\x01\x00\x01t\x00\x07\x00", 9) == 0);
    FL_CHECK(memcmp(b.p + 9, big, 200) == 0);
    fl_sb_free(&b);
}

void test_mqtt_put_publish_refused(void)
{
    fl_sbuf_t     b = {0};
    fl_mqtt_str_t nul = {"a\0", 2}, bad = {"\xc3", 1}, huge;
    char         *big = fl_test_repeat("", 'a', 65536, "");

    huge.p = big;
    huge.len = 65536;
    FL_CHECK_EQ_INT(fl_mqtt_put_publish(&b, S("a/+"), 0, 0, 0, "", 0),
                    FL_ERROR);
    FL_CHECK_EQ_INT(fl_mqtt_put_publish(&b, S("a/#"), 0, 0, 0, "", 0),
                    FL_ERROR);
    FL_CHECK_EQ_INT(fl_mqtt_put_publish(&b, S(""), 0, 0, 0, "", 0), FL_ERROR);
    FL_CHECK_EQ_INT(fl_mqtt_put_publish(&b, nul, 0, 0, 0, "", 0), FL_ERROR);
    FL_CHECK_EQ_INT(fl_mqtt_put_publish(&b, bad, 0, 0, 0, "", 0), FL_ERROR);
    FL_CHECK_EQ_INT(fl_mqtt_put_publish(&b, huge, 0, 0, 0, "", 0), FL_ERROR);
    FL_CHECK_EQ_INT(fl_mqtt_put_publish(&b, S("t"), 2, 0, 1, "", 0), FL_ERROR);
    FL_CHECK_EQ_INT(fl_mqtt_put_publish(&b, S("t"), -1, 0, 0, "", 0), FL_ERROR);
    FL_CHECK_EQ_INT(fl_mqtt_put_publish(&b, S("t"), 1, 0, 0, "", 0), FL_ERROR);
    FL_CHECK_EQ_INT(fl_mqtt_put_publish(&b, S("t"), 0, 0, 5, "", 0), FL_ERROR);
    FL_CHECK_EQ_INT(fl_mqtt_put_publish(&b, S("t"), 0, FL_MQTT_DUP, 0, "", 0),
                    FL_ERROR);
    FL_CHECK_EQ_INT(fl_mqtt_put_publish(&b, S("t"), 0, 0x02, 0, "", 0),
                    FL_ERROR);
    /* over the largest remaining length (not read: refused on its size) */
    FL_CHECK_EQ_INT(
        fl_mqtt_put_publish(&b, S("t"), 0, 0, 0, big, FL_MQTT_VBI_MAX - 3),
        FL_ERROR);
    FL_CHECK_EQ_U64(b.len, 0);
    huge.len = 65535;
    FL_CHECK_EQ_INT(fl_mqtt_put_publish(&b, huge, 0, 0, 0, "", 0), FL_OK);
    fl_sb_free(&b);
    free(big);
}

void test_mqtt_put_puback(void)
{
    fl_sbuf_t b = {0};

    FL_CHECK_EQ_INT(fl_mqtt_put_puback(&b, 5, 0), FL_OK);
    CHECK_BYTES(&b, "40 02 00 05");
    b.len = 0;
    FL_CHECK_EQ_INT(fl_mqtt_put_puback(&b, 0xffff, 0x10), FL_OK);
    CHECK_BYTES(&b, "40 03 ff ff 10");
    b.len = 0;
    FL_CHECK_EQ_INT(fl_mqtt_put_puback(&b, 0x0102, 0x99), FL_OK);
    CHECK_BYTES(&b, "40 03 01 02 99");
    b.len = 0;
    FL_CHECK_EQ_INT(fl_mqtt_put_puback(&b, 0, 0), FL_ERROR);
    FL_CHECK_EQ_INT(fl_mqtt_put_puback(&b, 1, 0x92), FL_ERROR);
    FL_CHECK_EQ_INT(fl_mqtt_put_puback(&b, 1, 0x01), FL_ERROR);
    FL_CHECK_EQ_INT(fl_mqtt_put_puback(&b, 1, 0x100), FL_ERROR);
    FL_CHECK_EQ_INT(fl_mqtt_put_puback(&b, 1, -1), FL_ERROR);
    FL_CHECK_EQ_U64(b.len, 0);
    fl_sb_free(&b);
}

void test_mqtt_put_pingreq_disconnect(void)
{
    fl_sbuf_t b = {0};
    uint32_t  zero = 0, all = 0xffffffff;

    FL_CHECK_EQ_INT(fl_mqtt_put_pingreq(&b), FL_OK);
    CHECK_BYTES(&b, "c0 00");
    b.len = 0;
    FL_CHECK_EQ_INT(fl_mqtt_put_disconnect(&b, 0, NULL), FL_OK);
    CHECK_BYTES(&b, "e0 00");
    b.len = 0;
    FL_CHECK_EQ_INT(fl_mqtt_put_disconnect(&b, 0x04, NULL), FL_OK);
    CHECK_BYTES(&b, "e0 01 04");
    b.len = 0;
    FL_CHECK_EQ_INT(fl_mqtt_put_disconnect(&b, 0, &zero), FL_OK);
    CHECK_BYTES(&b, "e0 07 00 05 11 00 00 00 00");
    b.len = 0;
    FL_CHECK_EQ_INT(fl_mqtt_put_disconnect(&b, 0x81, &all), FL_OK);
    CHECK_BYTES(&b, "e0 07 81 05 11 ff ff ff ff");
    b.len = 0;
    /* codes only a server sends, and codes of no table */
    FL_CHECK_EQ_INT(fl_mqtt_put_disconnect(&b, 0x8b, NULL), FL_ERROR);
    FL_CHECK_EQ_INT(fl_mqtt_put_disconnect(&b, 0x8e, NULL), FL_ERROR);
    FL_CHECK_EQ_INT(fl_mqtt_put_disconnect(&b, 0x01, NULL), FL_ERROR);
    FL_CHECK_EQ_INT(fl_mqtt_put_disconnect(&b, -1, NULL), FL_ERROR);
    FL_CHECK_EQ_U64(b.len, 0);
    fl_sb_free(&b);
}

void test_mqtt_put_appends(void)
{
    fl_sbuf_t b = {0};

    fl_sb_lit(&b, "xy");
    FL_CHECK_EQ_INT(fl_mqtt_put_pingreq(&b), FL_OK);
    FL_CHECK_EQ_INT(fl_mqtt_put_puback(&b, 1, 0), FL_OK);
    FL_CHECK_EQ_INT(fl_mqtt_put_puback(&b, 0, 0), FL_ERROR);
    FL_CHECK_EQ_INT(fl_mqtt_put_publish(&b, S("#"), 0, 0, 0, "", 0), FL_ERROR);
    FL_CHECK_EQ_INT(fl_mqtt_put_disconnect(&b, 0, NULL), FL_OK);
    FL_REQUIRE(b.len == 10);
    FL_CHECK(memcmp(b.p, "xy\xc0\x00\x40\x02\x00\x01\xe0\x00", 10) == 0);
    fl_sb_free(&b);
}

/* What the writers make, the reader reads back the same. */
void test_mqtt_roundtrip(void)
{
    fl_sbuf_t        b = {0};
    fl_mqttrx_t      rx;
    fl_mqtt_packet_t pkt;
    size_t           used;

    fl_mqttrx_init(&rx, MAX_DEFAULT, 0);
    FL_CHECK_EQ_INT(fl_mqtt_put_publish(&b, S("d/1/t"), 1, FL_MQTT_RETAIN, 42,
                                        "{\"t\":1}", 7),
                    FL_OK);
    FL_CHECK_EQ_INT(fl_mqtt_put_puback(&b, 42, 0x10), FL_OK);
    FL_REQUIRE(fl_mqttrx_feed(&rx, (unsigned char *)b.p, b.len, &used, &pkt) ==
               FL_OK);
    FL_CHECK_EQ_INT(pkt.type, FL_MQTT_PUBLISH);
    FL_CHECK_EQ_INT(pkt.qos, 1);
    FL_CHECK_EQ_INT(pkt.retain, 1);
    FL_CHECK_EQ_INT(pkt.dup, 0);
    FL_CHECK_EQ_INT(pkt.packet_id, 42);
    FL_CHECK(pkt.topic.len == 5 && memcmp(pkt.topic.p, "d/1/t", 5) == 0);
    FL_CHECK(pkt.payload.len == 7 &&
             memcmp(pkt.payload.p, "{\"t\":1}", 7) == 0);
    FL_CHECK_EQ_U64(pkt.props.has, 0);
    FL_REQUIRE(fl_mqttrx_feed(&rx, (unsigned char *)b.p + used, b.len - used,
                              &used, &pkt) == FL_OK);
    FL_CHECK_EQ_INT(pkt.type, FL_MQTT_PUBACK);
    FL_CHECK_EQ_INT(pkt.packet_id, 42);
    FL_CHECK_EQ_INT(pkt.reason, 0x10);
    fl_mqttrx_free(&rx);
    fl_sb_free(&b);
}

/* ---- reading ---- */

void test_mqttrx_connack(void)
{
    CHECK_STREAM("20 03 00 00 00", "connack:sp=0,rc=00|");
    CHECK_STREAM("20 03 01 00 00", "connack:sp=1,rc=00|");
    CHECK_STREAM("20 03 00 87 00", "connack:sp=0,rc=87|");
    /* every property a CONNACK may carry that fleetd reads, and more */
    CHECK_STREAM("20 32 01 00 2f 21 00 0a 24 01 25 00 27 00 00 10 00"
                 " 12 00 03 61 62 63 22 00 05 1f 00 02 6f 6b 13 00 3c"
                 " 11 00 00 0e 10 28 00 29 01 2a 00 26 00 01 6b 00 01 76",
                 "connack:sp=1,rc=00{21=10,24=1,25=0,27=4096,12=abc,22=5,"
                 "1f=ok,13=60,11=3600,28=0,29=1,2a=0,26=k:v}|");
    /* skipped but validated: Response Information, Server Reference,
     * Authentication Method and Data */
    CHECK_STREAM("20 15 00 9c 12 1a 00 01 72 1c 00 02 68 32 15 00 01 6d"
                 " 16 00 02 00 ff",
                 "connack:sp=0,rc=9c{1a=r,1c=h2,15=m,16=\\x00\\xff}|");
}

void test_mqttrx_connack_props(void)
{
    fl_mqtt_packet_t pkt;
    hex_t            h;

    FL_REQUIRE(decode1("20 03 00 00 00", 0, &pkt, &h) == FL_OK);
    /* the defaults of absent properties */
    FL_CHECK_EQ_U64(pkt.props.has, 0);
    FL_CHECK_EQ_INT(pkt.props.receive_max, 65535);
    FL_CHECK_EQ_INT(pkt.props.max_qos, 2);
    FL_CHECK_EQ_INT(pkt.props.retain_available, 1);
    FL_CHECK_EQ_INT(pkt.props.wildcard_sub_available, 1);
    FL_CHECK_EQ_INT(pkt.props.sub_id_available, 1);
    FL_CHECK_EQ_INT(pkt.props.shared_sub_available, 1);
    FL_CHECK_EQ_U64(pkt.props.max_packet_size, 0);
    FL_CHECK_EQ_INT(pkt.props.topic_alias_max, 0);
    FL_CHECK(pkt.props.raw.len == 0 && pkt.props.raw.p == NULL);

    FL_REQUIRE(decode1("20 32 01 00 2f 21 00 0a 24 01 25 00 27 00 00 10 00"
                       " 12 00 03 61 62 63 22 00 05 1f 00 02 6f 6b 13 00 3c"
                       " 11 00 00 0e 10 28 00 29 01 2a 00 26 00 01 6b 00 01"
                       " 76",
                       0, &pkt, &h) == FL_OK);
    FL_CHECK_EQ_INT(pkt.type, FL_MQTT_CONNACK);
    FL_CHECK_EQ_INT(pkt.session_present, 1);
    FL_CHECK_EQ_INT(pkt.reason, 0);
    FL_CHECK_EQ_INT(pkt.props.receive_max, 10);
    FL_CHECK_EQ_INT(pkt.props.max_qos, 1);
    FL_CHECK_EQ_INT(pkt.props.retain_available, 0);
    FL_CHECK_EQ_U64(pkt.props.max_packet_size, 4096);
    FL_CHECK(pkt.props.assigned_client_id.len == 3 &&
             memcmp(pkt.props.assigned_client_id.p, "abc", 3) == 0);
    FL_CHECK_EQ_INT(pkt.props.topic_alias_max, 5);
    FL_CHECK(pkt.props.reason_string.len == 2 &&
             memcmp(pkt.props.reason_string.p, "ok", 2) == 0);
    FL_CHECK_EQ_INT(pkt.props.server_keep_alive, 60);
    FL_CHECK_EQ_U64(pkt.props.session_expiry, 3600);
    FL_CHECK_EQ_INT(pkt.props.wildcard_sub_available, 0);
    FL_CHECK_EQ_INT(pkt.props.sub_id_available, 1);
    FL_CHECK_EQ_INT(pkt.props.shared_sub_available, 0);
    FL_CHECK_EQ_U64(pkt.props.nuser, 1);
    FL_CHECK(fl_mqtt_has(&pkt.props, FL_MQTT_PROP_RECEIVE_MAX));
    FL_CHECK(fl_mqtt_has(&pkt.props, FL_MQTT_PROP_SHARED_SUB_AVAILABLE));
    FL_CHECK(!fl_mqtt_has(&pkt.props, FL_MQTT_PROP_AUTH_METHOD));
    /* the properties point into the packet: no copy */
    FL_CHECK(pkt.props.raw.p == h.b + 5 && pkt.props.raw.len == 47);
    FL_CHECK((const unsigned char *)pkt.props.assigned_client_id.p == h.b + 20);
}

/* A 3.1.1 server answers a level-5 CONNECT with its own refusal. */
void test_mqttrx_connack_v311(void)
{
    CHECK_STREAM("20 02 00 01", "connack:sp=0,rc=84|");
    /* other 2-byte CONNACKs are not MQTT 5 */
    CHECK_ERROR("20 02 00 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("20 02 00 05", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("20 02 01 01", FL_MQTT_RC_MALFORMED, "");
}

void test_mqttrx_publish(void)
{
    CHECK_STREAM("30 0b 00 03 61 2f 62 00 68 65 6c 6c 6f",
                 "publish:q0,d0,r0,id=0,t=a/b,p=hello|");
    CHECK_STREAM("31 05 00 01 74 00 78", "publish:q0,d0,r1,id=0,t=t,p=x|");
    CHECK_STREAM("32 08 00 01 74 ff fe 00 00 01",
                 "publish:q1,d0,r0,id=65534,t=t,p=\\x00\\x01|");
    CHECK_STREAM("34 06 00 01 71 00 01 00", "publish:q2,d0,r0,id=1,t=q,p=|");
    CHECK_STREAM("3d 06 00 01 71 00 02 00", "publish:q2,d1,r1,id=2,t=q,p=|");
    /* a UTF-8 topic; the payload is bytes, not checked */
    CHECK_STREAM("30 08 00 04 c3 bc 2f 31 00 ff",
                 "publish:q0,d0,r0,id=0,t=\\xc3\\xbc/1,p=\\xff|");
    /* the properties a PUBLISH may carry; User Property and Subscription
     * Identifier may repeat */
    CHECK_STREAM("3b 32 00 01 74 00 0a 2a 01 01 02 00 00 00 3c"
                 " 03 00 04 74 65 78 74 08 00 01 72 09 00 02 01 02"
                 " 26 00 01 61 00 01 62 26 00 01 61 00 01 63 0b 01 0b 80 01"
                 " 7b 7d",
                 "publish:q1,d1,r1,id=10,t=t,p={}{01=1,02=60,03=text,08=r,"
                 "09=\\x01\\x02,26=a:b,26=a:c,0b=1,0b=128}|");
}

void test_mqttrx_publish_props(void)
{
    fl_mqtt_packet_t pkt;
    fl_mqtt_prop_t   pr;
    hex_t            h;
    size_t           off = 0;
    int              n = 0;

    FL_REQUIRE(decode1("3b 32 00 01 74 00 0a 2a 01 01 02 00 00 00 3c"
                       " 03 00 04 74 65 78 74 08 00 01 72 09 00 02 01 02"
                       " 26 00 01 61 00 01 62 26 00 01 61 00 01 63 0b 01"
                       " 0b 80 01 7b 7d",
                       0, &pkt, &h) == FL_OK);
    FL_CHECK_EQ_INT(pkt.props.payload_format, 1);
    FL_CHECK_EQ_U64(pkt.props.message_expiry, 60);
    FL_CHECK(pkt.props.content_type.len == 4 &&
             memcmp(pkt.props.content_type.p, "text", 4) == 0);
    FL_CHECK(pkt.props.response_topic.len == 1 &&
             pkt.props.response_topic.p[0] == 'r');
    FL_CHECK(pkt.props.correlation_data.len == 2 &&
             pkt.props.correlation_data.p[1] == 2);
    FL_CHECK_EQ_U64(pkt.props.nuser, 2);
    FL_CHECK_EQ_U64(pkt.props.nsub_ids, 2);
    FL_CHECK_EQ_U64(pkt.props.sub_id, 1);
    FL_CHECK(!fl_mqtt_has(&pkt.props, FL_MQTT_PROP_TOPIC_ALIAS));
    /* the second Subscription Identifier through the iterator */
    while (fl_mqtt_prop_next(pkt.props.raw, &off, &pr))
        if (pr.id == FL_MQTT_PROP_SUBSCRIPTION_ID && n++ == 1)
            FL_CHECK_EQ_U64(pr.num, 128);
    FL_CHECK_EQ_INT(n, 2);
    FL_CHECK_EQ_U64(off, pkt.props.raw.len);
    /* past the end, and on bytes that are not a property */
    FL_CHECK_EQ_INT(fl_mqtt_prop_next(pkt.props.raw, &off, &pr), 0);
    {
        fl_mqtt_bin_t junk = {(const unsigned char *)"\x21\x00", 2};

        off = 0;
        FL_CHECK_EQ_INT(fl_mqtt_prop_next(junk, &off, &pr), 0);
        FL_CHECK_EQ_U64(off, 0);
    }
}

void test_mqttrx_publish_topic_alias(void)
{
    /* alias 2 with a topic (sets the mapping), then alone (uses it): the
     * mapping is the client's */
    check_feed(__FILE__, __LINE__,
               "30 08 00 01 61 03 23 00 02 78 30 07 00 00 03 23 00 02 79", 64,
               5, 0,
               "publish:q0,d0,r0,id=0,t=a,p=x{23=2}|"
               "publish:q0,d0,r0,id=0,t=,p=y{23=2}|");
    /* the largest alias allowed */
    check_feed(__FILE__, __LINE__, "30 07 00 00 03 23 00 05 78", 64, 5, 0,
               "publish:q0,d0,r0,id=0,t=,p=x{23=5}|");
    /* 0, and over the maximum the client sent */
    check_feed(__FILE__, __LINE__, "30 07 00 01 74 03 23 00 00", 64, 5,
               FL_MQTT_RC_TOPIC_ALIAS_INVALID, "");
    check_feed(__FILE__, __LINE__, "30 07 00 01 74 03 23 00 06", 64, 5,
               FL_MQTT_RC_TOPIC_ALIAS_INVALID, "");
    CHECK_ERROR("30 07 00 01 74 03 23 00 01", FL_MQTT_RC_TOPIC_ALIAS_INVALID,
                "");
    /* an empty topic needs an alias */
    CHECK_ERROR("30 03 00 00 00", FL_MQTT_RC_PROTOCOL, "");
    check_feed(__FILE__, __LINE__, "30 04 00 00 00 78", 64, 5,
               FL_MQTT_RC_PROTOCOL, "");
}

/* A PUBLISH that lies whole in what was fed is handed over where it is. */
void test_mqttrx_publish_zero_copy(void)
{
    hex_t            h = hx("d0 00 32 0a 00 03 61 2f 62 00 07 00 68 69"
                                       " d0 00");
    fl_mqttrx_t      rx;
    fl_mqtt_packet_t pkt;
    rec_t            r;
    size_t           used;

    fl_mqttrx_init(&rx, 64, 0);
    FL_CHECK_EQ_INT(fl_mqttrx_feed(&rx, h.b, h.n, &used, &pkt), FL_OK);
    FL_CHECK_EQ_U64(used, 2);
    FL_CHECK_EQ_INT(fl_mqttrx_feed(&rx, h.b + 2, h.n - 2, &used, &pkt), FL_OK);
    FL_CHECK_EQ_U64(used, 12);
    FL_CHECK_EQ_INT(pkt.type, FL_MQTT_PUBLISH);
    FL_CHECK((const unsigned char *)pkt.topic.p == h.b + 6);
    FL_CHECK(pkt.payload.p == h.b + 12 && pkt.payload.len == 2);
    FL_CHECK_EQ_U64(fl_mqttrx_memory(&rx), 0);
    fl_mqttrx_free(&rx);

    /* the fixed header in one read, the body in the next: no copy */
    fl_mqttrx_init(&rx, 64, 0);
    memset(&r, 0, sizeof(r));
    FL_CHECK_EQ_INT(feed_step(&rx, &r, h.b + 2, 2, 0), 0);
    FL_CHECK_EQ_U64(fl_mqttrx_memory(&rx), 0);
    FL_CHECK_EQ_INT(fl_mqttrx_feed(&rx, h.b + 4, 10, &used, &pkt), FL_OK);
    FL_CHECK(pkt.payload.p == h.b + 12);
    fl_mqttrx_free(&rx);

    /* cut in the body: kept, and handed over from the reader's copy */
    fl_mqttrx_init(&rx, 64, 0);
    memset(&r, 0, sizeof(r));
    FL_CHECK_EQ_INT(feed_step(&rx, &r, h.b + 2, 12, 7), 0);
    FL_CHECK_STR(r.log, "publish:q1,d0,r0,id=7,t=a/b,p=hi|");
    FL_CHECK(r.last.payload.p < r.piece || r.last.payload.p >= r.piece + 7);
    FL_CHECK(r.mem_seen >= 10);
    FL_CHECK_EQ_U64(fl_mqttrx_memory(&rx), 0);
    fl_mqttrx_free(&rx);
}

void test_mqttrx_acks(void)
{
    /* the short forms: no reason code (0), no property length */
    CHECK_STREAM("40 02 00 07", "puback:id=7,rc=00|");
    CHECK_STREAM("40 03 00 07 10", "puback:id=7,rc=10|");
    CHECK_STREAM("40 04 00 07 80 00", "puback:id=7,rc=80|");
    CHECK_STREAM("40 08 00 07 83 04 1f 00 01 78", "puback:id=7,rc=83{1f=x}|");
    CHECK_STREAM("40 0b 00 07 99 07 26 00 01 6b 00 01 76",
                 "puback:id=7,rc=99{26=k:v}|");
    CHECK_STREAM("50 02 00 08", "pubrec:id=8,rc=00|");
    CHECK_STREAM("50 03 ff ff 97", "pubrec:id=65535,rc=97|");
    CHECK_STREAM("62 02 00 09", "pubrel:id=9,rc=00|");
    CHECK_STREAM("62 03 00 09 92", "pubrel:id=9,rc=92|");
    CHECK_STREAM("70 03 00 0a 92", "pubcomp:id=10,rc=92|");
    CHECK_STREAM("70 04 00 0a 00 00", "pubcomp:id=10,rc=00|");
}

void test_mqttrx_suback_unsuback(void)
{
    CHECK_STREAM("90 05 00 01 00 00 01", "suback:id=1,rc=00 01|");
    CHECK_STREAM("90 07 00 02 00 02 80 87 a2", "suback:id=2,rc=02 80 87 a2|");
    CHECK_STREAM("90 08 00 02 04 1f 00 01 78 9e", "suback:id=2,rc=9e{1f=x}|");
    CHECK_STREAM("b0 04 00 03 00 11", "unsuback:id=3,rc=11|");
    CHECK_STREAM("b0 07 00 03 03 1f 00 00 00", "unsuback:id=3,rc=00{1f=}|");
    CHECK_STREAM("b0 06 00 03 00 00 8f 91", "unsuback:id=3,rc=00 8f 91|");
}

void test_mqttrx_pingresp_disconnect(void)
{
    CHECK_STREAM("d0 00", "pingresp|");
    /* remaining length 0 means reason 0 */
    CHECK_STREAM("e0 00", "disconnect:rc=00|");
    CHECK_STREAM("e0 01 8b", "disconnect:rc=8b|");
    CHECK_STREAM("e0 02 8e 00", "disconnect:rc=8e|");
    CHECK_STREAM("e0 0a 9c 08 1c 00 05 68 6f 73 74 32",
                 "disconnect:rc=9c{1c=host2}|");
    CHECK_STREAM("e0 09 98 07 1f 00 04 62 75 73 79",
                 "disconnect:rc=98{1f=busy}|");
}

void test_mqttrx_several_in_one_feed(void)
{
    const char *s = "20 03 00 00 00"
                    " 90 05 00 01 00 00 01"
                    " 30 0b 00 03 61 2f 62 00 68 65 6c 6c 6f"
                    " d0 00"
                    " 32 07 00 01 74 00 05 00 7a"
                    " 40 02 00 07"
                    " e0 01 8b";
    const char *want = "connack:sp=0,rc=00|suback:id=1,rc=00 01|"
                       "publish:q0,d0,r0,id=0,t=a/b,p=hello|pingresp|"
                       "publish:q1,d0,r0,id=5,t=t,p=z|puback:id=7,rc=00|"
                       "disconnect:rc=8b|";
    fl_mqttrx_t rx;
    rec_t       r;
    hex_t       h = hx(s);

    fl_mqttrx_init(&rx, MAX_DEFAULT, 0);
    memset(&r, 0, sizeof(r));
    FL_CHECK_EQ_INT(feed_step(&rx, &r, h.b, h.n, 0), 0);
    FL_CHECK_STR(r.log, want);
    FL_CHECK_EQ_INT(r.packets, 7);
    fl_mqttrx_free(&rx);
    CHECK_STREAM(s, want);
    /* packets before an error are reported, in order; nothing after it */
    CHECK_ERROR("d0 00 40 02 00 07 36 00 d0 00", FL_MQTT_RC_MALFORMED,
                "pingresp|puback:id=7,rc=00|");
}

/* PUBLISH of topic "t" and a remaining length of rem: 30, rem, 00 01 74,
 * 00, then rem - 4 payload bytes. */
static unsigned char *publish_of(uint32_t rem, const char *rl_hex, size_t *n)
{
    hex_t          rl = hx(rl_hex);
    unsigned char *p = malloc(1 + rl.n + rem), *q = p;
    uint32_t       i;

    if (p == NULL)
        abort();
    *q++ = 0x30;
    memcpy(q, rl.b, rl.n);
    q += rl.n;
    memcpy(q, "\x00\x01t\x00", 4);
    for (i = 0; i < rem - 4; i++)
        q[4 + i] = (unsigned char)(i * 13 + 1);
    *n = 1 + rl.n + rem;
    return p;
}

void test_mqttrx_remaining_length_bounds(void)
{
    static const struct {
        uint32_t    rem;
        const char *hex;
    } cases[] = {
        {127, "7f"},         {128, "80 01"},        {16383, "ff 7f"},
        {16384, "80 80 01"}, {2097151, "ff ff 7f"}, {2097152, "80 80 80 01"},
    };
    fl_mqttrx_t    rx;
    rec_t          r;
    unsigned char *p;
    char           want[128];
    size_t         i, j, n, cuts[6];
    int            rc;

    /* 0: the packets that have no body */
    CHECK_STREAM("d0 00", "pingresp|");
    CHECK_STREAM("e0 00", "disconnect:rc=00|");
    for (i = 0; i < fl_nelem(cases); i++) {
        p = publish_of(cases[i].rem, cases[i].hex, &n);
        snprintf(want, sizeof(want), "publish:q0,d0,r0,id=0,t=t,p=[%u]%08x|",
                 cases[i].rem - 4,
                 fl_fnv1a(p + n - (cases[i].rem - 4), cases[i].rem - 4));
        /* whole, and cut in the header, after it, in and near the end */
        cuts[0] = n, cuts[1] = 1, cuts[2] = 2, cuts[3] = n - cases[i].rem;
        cuts[4] = n / 2, cuts[5] = n - 1;
        for (j = 0; j < fl_nelem(cuts); j++) {
            fl_mqttrx_init(&rx, FL_MQTT_PACKET_MAX, 0);
            memset(&r, 0, sizeof(r));
            rc = feed_step(&rx, &r, p, cuts[j], 0);
            if (rc == 0)
                rc = feed_step(&rx, &r, p + cuts[j], n - cuts[j], 0);
            if (rc != 0 || strcmp(r.log, want) != 0 ||
                fl_mqttrx_memory(&rx) != 0)
                fl_test_fail(__FILE__, __LINE__,
                             "rem %u cut %zu: 0x%02x \"%s\" want \"%s\"",
                             cases[i].rem, cuts[j], (unsigned)rc, r.log, want);
            /* the body kept is no bigger than the packet */
            FL_CHECK_LE_U64(r.mem_seen, cases[i].rem);
            fl_mqttrx_free(&rx);
        }
        /* a maximum one byte short refuses it */
        fl_mqttrx_init(&rx, (uint32_t)n - 1, 0);
        memset(&r, 0, sizeof(r));
        FL_CHECK_EQ_INT(feed_step(&rx, &r, p, n, 0),
                        FL_MQTT_RC_PACKET_TOO_LARGE);
        fl_mqttrx_free(&rx);
        free(p);
    }

    /* 268435455, the largest: accepted on its header; what is kept grows
     * with the bytes that come, not with what was declared */
    fl_mqttrx_init(&rx, FL_MQTT_PACKET_MAX, 0);
    memset(&r, 0, sizeof(r));
    FL_CHECK_EQ_INT(feed_step(&rx, &r, hx("30 ff ff ff 7f").b, 5, 0), 0);
    FL_CHECK_EQ_U64(fl_mqttrx_memory(&rx), 0);
    FL_CHECK_EQ_INT(feed_step(&rx, &r, hx("00 01 74 00 61 62 63").b, 7, 0), 0);
    FL_CHECK_LE_U64(fl_mqttrx_memory(&rx), 64);
    FL_CHECK_EQ_INT(rx.err, 0);
    fl_mqttrx_free(&rx);
    check_feed(__FILE__, __LINE__, "30 ff ff ff 7f 00 01 74",
               FL_MQTT_PACKET_MAX - 1, 0, FL_MQTT_RC_PACKET_TOO_LARGE, "");

    /* 5 bytes of remaining length, and longer forms than needed */
    CHECK_ERROR("30 ff ff ff ff 7f", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("d0 80 80 80 80 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("d0 80 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("30 85 00 00 01 74 00 61", FL_MQTT_RC_MALFORMED, "");
}

/* 0x95 on the fixed header: nothing of the body is kept. */
void test_mqttrx_too_large_on_header(void)
{
    fl_mqttrx_t      rx;
    fl_mqtt_packet_t pkt;
    size_t           used;

    /* 2 + 98 = 100 bytes: fits a maximum of 100; 2 + 99 does not */
    fl_mqttrx_init(&rx, 100, 0);
    FL_CHECK_EQ_INT(fl_mqttrx_feed(&rx, hx("30 62").b, 2, &used, &pkt),
                    FL_AGAIN);
    fl_mqttrx_free(&rx);
    FL_CHECK_EQ_INT(fl_mqttrx_feed(&rx, hx("30 63").b, 2, &used, &pkt),
                    FL_MQTT_RC_PACKET_TOO_LARGE);
    FL_CHECK_EQ_U64(used, 2);
    FL_CHECK_EQ_U64(fl_mqttrx_memory(&rx), 0);
    FL_CHECK(rx.why != NULL);
    fl_mqttrx_free(&rx);

    /* a header that comes in pieces: judged once its length is whole */
    fl_mqttrx_init(&rx, 1000, 0);
    FL_CHECK_EQ_INT(fl_mqttrx_feed(&rx, hx("30").b, 1, &used, &pkt), FL_AGAIN);
    FL_CHECK_EQ_INT(fl_mqttrx_feed(&rx, hx("80 80").b, 2, &used, &pkt),
                    FL_AGAIN);
    FL_CHECK_EQ_INT(fl_mqttrx_feed(&rx, hx("01 00 01 74").b, 4, &used, &pkt),
                    FL_MQTT_RC_PACKET_TOO_LARGE);
    FL_CHECK_EQ_U64(fl_mqttrx_memory(&rx), 0);
    fl_mqttrx_free(&rx);

    /* any type, the body right behind the header or not */
    check_feed(__FILE__, __LINE__, "40 02 00 01", 3, 0,
               FL_MQTT_RC_PACKET_TOO_LARGE, "");
    check_feed(__FILE__, __LINE__, "d0 00 40 02 00 01", 3, 0,
               FL_MQTT_RC_PACKET_TOO_LARGE, "pingresp|");
    check_feed(__FILE__, __LINE__, "40 02 00 01", 4, 0, 0,
               "puback:id=1,rc=00|");
    check_feed(__FILE__, __LINE__, "d0 00", 1, 0, FL_MQTT_RC_PACKET_TOO_LARGE,
               "");
}

/* Memory: held only while a packet is in pieces, up to the call after it
 * was reported. */
void test_mqttrx_memory(void)
{
    hex_t            h = hx("30 0b 00 03 61 2f 62 00 68 65 6c 6c 6f d0 00");
    fl_mqttrx_t      rx;
    fl_mqtt_packet_t pkt;
    size_t           used;

    fl_mqttrx_init(&rx, 64, 0);
    FL_CHECK_EQ_INT(fl_mqttrx_feed(&rx, h.b, 6, &used, &pkt), FL_AGAIN);
    FL_CHECK_EQ_U64(used, 6);
    FL_CHECK(fl_mqttrx_memory(&rx) >= 4 && fl_mqttrx_memory(&rx) <= 11);
    FL_CHECK_EQ_INT(fl_mqttrx_feed(&rx, h.b + 6, h.n - 6, &used, &pkt), FL_OK);
    FL_CHECK_EQ_U64(used, 7);
    FL_CHECK(pkt.payload.len == 5 && memcmp(pkt.payload.p, "hello", 5) == 0);
    /* the packet's bytes live until the next call */
    FL_CHECK_EQ_U64(fl_mqttrx_memory(&rx), 11);
    FL_CHECK_EQ_INT(fl_mqttrx_feed(&rx, h.b + 13, 2, &used, &pkt), FL_OK);
    FL_CHECK_EQ_INT(pkt.type, FL_MQTT_PINGRESP);
    FL_CHECK_EQ_U64(fl_mqttrx_memory(&rx), 0);
    FL_CHECK_EQ_INT(fl_mqttrx_feed(&rx, NULL, 0, &used, &pkt), FL_AGAIN);
    FL_CHECK_EQ_U64(used, 0);

    /* freed in the middle of a packet, the reader starts over with its
     * settings */
    FL_CHECK_EQ_INT(fl_mqttrx_feed(&rx, h.b, 9, &used, &pkt), FL_AGAIN);
    FL_CHECK(fl_mqttrx_memory(&rx) > 0);
    fl_mqttrx_free(&rx);
    FL_CHECK_EQ_U64(fl_mqttrx_memory(&rx), 0);
    FL_CHECK_EQ_U64(rx.max_packet, 64);
    FL_CHECK_EQ_INT(fl_mqttrx_feed(&rx, h.b, h.n, &used, &pkt), FL_OK);
    FL_CHECK_EQ_INT(pkt.type, FL_MQTT_PUBLISH);
    fl_mqttrx_free(&rx);

    /* a header cut short holds no heap memory */
    fl_mqttrx_init(&rx, 64, 0);
    FL_CHECK_EQ_INT(fl_mqttrx_feed(&rx, hx("30").b, 1, &used, &pkt), FL_AGAIN);
    FL_CHECK_EQ_U64(fl_mqttrx_memory(&rx), 0);
    fl_mqttrx_free(&rx);
}

void test_mqttrx_err_property_length(void)
{
    /* the property length runs past the packet */
    CHECK_ERROR("40 04 00 01 00 05", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("20 03 00 00 01", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("30 05 00 01 74 02 01", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("30 06 00 01 74 ff ff 7f", FL_MQTT_RC_MALFORMED, "");
    /* a property runs past its block (and into the payload) */
    CHECK_ERROR("20 05 00 00 02 21 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("30 09 00 01 74 02 02 00 00 00 3c", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("40 09 00 01 00 05 1f 00 05 61 62", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("40 0a 00 01 00 06 26 00 01 6b 00 01", FL_MQTT_RC_MALFORMED,
                "");
    /* a property length not in its shortest form */
    CHECK_ERROR("40 05 00 01 00 80 00", FL_MQTT_RC_MALFORMED, "");
}

void test_mqttrx_err_duplicate_property(void)
{
    /* "It is a Protocol Error to include the ... more than once" */
    CHECK_ERROR("20 09 00 00 06 21 00 0a 21 00 0b", FL_MQTT_RC_PROTOCOL, "");
    CHECK_ERROR("20 07 00 00 04 24 00 24 00", FL_MQTT_RC_PROTOCOL, "");
    CHECK_ERROR("30 08 00 01 74 04 01 00 01 00", FL_MQTT_RC_PROTOCOL, "");
    CHECK_ERROR("40 0a 00 01 80 06 1f 00 00 1f 00 00", FL_MQTT_RC_PROTOCOL, "");
    CHECK_ERROR("e0 0a 80 08 1c 00 01 61 1c 00 01 62", FL_MQTT_RC_PROTOCOL, "");
    /* repeats allowed: User Property, Subscription Identifier */
    CHECK_STREAM("40 10 00 01 00 0c 26 00 01 61 00 00 26 00 01 61 00 00",
                 "puback:id=1,rc=00{26=a:,26=a:}|");
    CHECK_STREAM("30 08 00 01 74 04 0b 05 0b 05",
                 "publish:q0,d0,r0,id=0,t=t,p={0b=5,0b=5}|");
}

void test_mqttrx_err_utf8(void)
{
    /* topic: malformed, U+0000, a surrogate, overlong, cut */
    CHECK_ERROR("30 05 00 02 c3 28 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("30 05 00 02 61 00 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("30 06 00 03 ed a0 80 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("30 05 00 02 c0 af 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("30 04 00 01 c3 00", FL_MQTT_RC_MALFORMED, "");
    /* string properties */
    CHECK_ERROR("40 0a 00 01 80 06 1f 00 03 ed a0 80", FL_MQTT_RC_MALFORMED,
                "");
    CHECK_ERROR("20 09 00 00 06 12 00 03 61 00 62", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("30 0a 00 01 74 06 03 00 03 ff ff ff", FL_MQTT_RC_MALFORMED,
                "");
    /* a User Property's name, then its value */
    CHECK_ERROR("40 0b 00 01 00 07 26 00 01 ff 00 01 76", FL_MQTT_RC_MALFORMED,
                "");
    CHECK_ERROR("40 0b 00 01 00 07 26 00 01 6b 00 01 00", FL_MQTT_RC_MALFORMED,
                "");
    /* binary data may hold anything */
    CHECK_STREAM("30 0a 00 01 74 06 09 00 03 ff 00 c3",
                 "publish:q0,d0,r0,id=0,t=t,p={09=\\xff\\x00\\xc3}|");
}

void test_mqttrx_err_wildcard_topic(void)
{
    CHECK_ERROR("30 06 00 03 61 2f 23 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("30 04 00 01 2b 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("32 08 00 03 61 2b 62 00 01 00", FL_MQTT_RC_MALFORMED, "");
    /* in a Response Topic it is not a topic name the spec restricts here */
    CHECK_STREAM("30 09 00 01 74 05 08 00 02 61 2f",
                 "publish:q0,d0,r0,id=0,t=t,p={08=a/}|");
}

void test_mqttrx_err_qos_dup(void)
{
    /* QoS 3, with and without DUP and RETAIN: refused on the first byte */
    CHECK_ERROR("36 05 00 01 74 00 01 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("3f 05 00 01 74 00 01 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("36", FL_MQTT_RC_MALFORMED, "");
    /* DUP on QoS 0 (MQTT-3.3.1-2) */
    CHECK_ERROR("38 04 00 01 74 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("39 04 00 01 74 00", FL_MQTT_RC_MALFORMED, "");
}

void test_mqttrx_err_reserved_flags(void)
{
    static const char *const bad[] = {
        "21 03 00 00 00",
        "28 03 00 00 00",
        "41 02 00 01",
        "48 02 00 01",
        "52 02 00 01",
        "60 02 00 01",
        "63 02 00 01",
        "72 02 00 01",
        "92 04 00 01 00 00",
        "b1 04 00 01 00 00",
        "d1 00",
        "d8 00",
        "e2 00",
        "ef 00",
    };
    size_t i;

    for (i = 0; i < fl_nelem(bad); i++)
        check_feed(__FILE__, __LINE__, bad[i], MAX_DEFAULT, 0,
                   FL_MQTT_RC_MALFORMED, "");
    /* CONNACK's own reserved bits (Connect Acknowledge Flags 7-1) */
    CHECK_ERROR("20 03 02 00 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("20 03 80 00 00", FL_MQTT_RC_MALFORMED, "");
}

void test_mqttrx_err_packet_type(void)
{
    /* what only a client sends, and the reserved type 0 */
    CHECK_ERROR("10 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("82 05 00 01 00 00 01 74 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("a2 04 00 01 00 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("c0 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("00 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("d0 00 c0 00", FL_MQTT_RC_MALFORMED, "pingresp|");
    /* AUTH: the client sent no Authentication Method */
    CHECK_ERROR("f0 00", FL_MQTT_RC_PROTOCOL, "");
    CHECK_ERROR("f0 02 18 00", FL_MQTT_RC_PROTOCOL, "");
}

void test_mqttrx_err_packet_id_zero(void)
{
    CHECK_ERROR("32 06 00 01 74 00 00 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("34 06 00 01 74 00 00 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("40 02 00 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("50 02 00 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("62 02 00 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("70 02 00 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("90 04 00 00 00 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("b0 04 00 00 00 00", FL_MQTT_RC_MALFORMED, "");
    /* QoS 0 has no packet id: these bytes are the property length */
    CHECK_STREAM("30 06 00 01 74 00 00 00",
                 "publish:q0,d0,r0,id=0,t=t,p=\\x00\\x00|");
}

void test_mqttrx_err_protocol(void)
{
    /* values out of range (section 3.2.2.3) */
    CHECK_ERROR("20 06 00 00 03 21 00 00", FL_MQTT_RC_PROTOCOL, "");
    CHECK_ERROR("20 08 00 00 05 27 00 00 00 00", FL_MQTT_RC_PROTOCOL, "");
    CHECK_ERROR("20 05 00 00 02 24 02", FL_MQTT_RC_PROTOCOL, "");
    CHECK_ERROR("20 05 00 00 02 25 02", FL_MQTT_RC_PROTOCOL, "");
    CHECK_ERROR("20 05 00 00 02 28 02", FL_MQTT_RC_PROTOCOL, "");
    CHECK_ERROR("20 05 00 00 02 29 ff", FL_MQTT_RC_PROTOCOL, "");
    CHECK_ERROR("20 05 00 00 02 2a 02", FL_MQTT_RC_PROTOCOL, "");
    CHECK_ERROR("30 06 00 01 74 02 01 02", FL_MQTT_RC_PROTOCOL, "");
    CHECK_ERROR("30 06 00 01 74 02 0b 00", FL_MQTT_RC_PROTOCOL, "");
    /* Session Present on a refusal (MQTT-3.2.2-6) */
    CHECK_ERROR("20 03 01 80 00", FL_MQTT_RC_PROTOCOL, "");
    CHECK_STREAM("20 03 00 80 00", "connack:sp=0,rc=80|");
    /* Session Expiry Interval in a server's DISCONNECT (MQTT-3.14.2-2) */
    CHECK_ERROR("e0 07 00 05 11 00 00 00 01", FL_MQTT_RC_PROTOCOL, "");
    /* a SUBACK or UNSUBACK answers at least one topic filter */
    CHECK_ERROR("90 03 00 01 00", FL_MQTT_RC_PROTOCOL, "");
    CHECK_ERROR("b0 06 00 01 03 1f 00 00", FL_MQTT_RC_PROTOCOL, "");
}

void test_mqttrx_err_property_not_allowed(void)
{
    /* known, but not in this packet */
    CHECK_ERROR("40 07 00 01 00 03 23 00 01", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("30 07 00 01 74 03 21 00 01", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("40 09 00 01 00 05 11 00 00 00 01", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("20 05 00 00 02 17 01", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("20 08 00 00 05 18 00 00 00 01", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("30 06 00 01 74 02 24 01", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("90 06 00 01 02 0b 01 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("e0 04 00 02 0b 01", FL_MQTT_RC_MALFORMED, "");
    /* unknown identifiers, and one not in its shortest form */
    CHECK_ERROR("20 05 00 00 02 04 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("20 05 00 00 02 7f 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("20 05 00 00 02 00 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("20 06 00 00 03 80 01 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("20 07 00 00 04 a1 00 00 0a", FL_MQTT_RC_MALFORMED, "");
}

void test_mqttrx_err_reason_codes(void)
{
    CHECK_ERROR("20 03 00 01 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("20 03 00 8b 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("40 03 00 01 92", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("40 03 00 01 01", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("50 03 00 01 11", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("62 03 00 01 10", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("70 03 00 01 80", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("90 04 00 01 00 03", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("90 05 00 01 00 00 11", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("b0 04 00 01 00 01", FL_MQTT_RC_MALFORMED, "");
    /* 0x04 is a client's (Disconnect with Will Message) */
    CHECK_ERROR("e0 01 04", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("e0 01 05", FL_MQTT_RC_MALFORMED, "");
}

/* Bodies too short for their fields, or with bytes after their end. */
void test_mqttrx_err_lengths(void)
{
    CHECK_ERROR("d0 01 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("20 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("20 01 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("20 04 00 00 00 ff", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("40 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("40 01 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("40 05 00 01 00 00 ff", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("90 02 00 01", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("e0 03 00 00 ff", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("30 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("30 01 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("30 03 00 05 61", FL_MQTT_RC_MALFORMED, "");
    /* QoS 1: topic and packet id, then no property length */
    CHECK_ERROR("32 05 00 01 74 00 01", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("32 04 00 01 74 00", FL_MQTT_RC_MALFORMED, "");
    /* QoS 0: the property length is required too */
    CHECK_ERROR("30 03 00 01 74", FL_MQTT_RC_MALFORMED, "");
}

void test_mqttrx_after_error(void)
{
    hex_t            bad = hx("d0 00 36 00"), ok = hx("d0 00");
    fl_mqttrx_t      rx;
    fl_mqtt_packet_t pkt;
    size_t           used;

    fl_mqttrx_init(&rx, 64, 0);
    FL_CHECK_EQ_INT(fl_mqttrx_feed(&rx, bad.b, bad.n, &used, &pkt), FL_OK);
    FL_CHECK_EQ_INT(fl_mqttrx_feed(&rx, bad.b + 2, 2, &used, &pkt),
                    FL_MQTT_RC_MALFORMED);
    FL_CHECK_EQ_U64(used, 2);
    FL_CHECK_STR(rx.why, "QoS 3");
    /* the same error again, whatever comes, and nothing reported */
    memset(&pkt, 0x5a, sizeof(pkt));
    FL_CHECK_EQ_INT(fl_mqttrx_feed(&rx, ok.b, ok.n, &used, &pkt),
                    FL_MQTT_RC_MALFORMED);
    FL_CHECK_EQ_U64(used, 2);
    FL_CHECK_EQ_INT(pkt.type, 0x5a);
    FL_CHECK_EQ_INT(fl_mqttrx_feed(&rx, NULL, 0, &used, &pkt),
                    FL_MQTT_RC_MALFORMED);
    FL_CHECK_EQ_U64(fl_mqttrx_memory(&rx), 0);
    /* an error in a body takes what follows it too */
    fl_mqttrx_free(&rx);
    bad = hx("40 02 00 00 d0 00");
    FL_CHECK_EQ_INT(fl_mqttrx_feed(&rx, bad.b, bad.n, &used, &pkt),
                    FL_MQTT_RC_MALFORMED);
    FL_CHECK_EQ_U64(used, bad.n);
    CHECK_ERROR("40 02 00 00 d0 00", FL_MQTT_RC_MALFORMED, "");
    CHECK_ERROR("30 04 00 01 2b 00 d0 00", FL_MQTT_RC_MALFORMED, "");
    /* an error in the middle of a kept body gives the body back */
    fl_mqttrx_free(&rx);
    FL_CHECK_EQ_INT(rx.err, 0);
    bad = hx("30 0a 00 03 61 2f 23 00 00 00 00 00");
    FL_CHECK_EQ_INT(fl_mqttrx_feed(&rx, bad.b, 5, &used, &pkt), FL_AGAIN);
    FL_CHECK(fl_mqttrx_memory(&rx) > 0);
    FL_CHECK_EQ_INT(fl_mqttrx_feed(&rx, bad.b + 5, bad.n - 5, &used, &pkt),
                    FL_MQTT_RC_MALFORMED);
    FL_CHECK_EQ_U64(fl_mqttrx_memory(&rx), 0);
    FL_CHECK_STR(rx.why, "wildcard in a PUBLISH topic");
    fl_mqttrx_free(&rx);
}

/* PUBLISH with a Message Expiry Interval (desired deltas, commands with a
 * ttl): the property block holds 02 and the four bytes; 0 leaves it out. */
void test_mqtt_put_publish_expiry(void)
{
    fl_sbuf_t        b = {0};
    fl_mqttrx_t      rx;
    fl_mqtt_packet_t pkt;
    size_t           used;

    FL_CHECK_EQ_INT(fl_mqtt_put_publish_expiry(&b, S("t"), 1, FL_MQTT_RETAIN,
                                               7, "x", 1, 0x01020304),
                    FL_OK);
    CHECK_BYTES(&b, "33 0c 00 01 74 00 07 05 02 01 02 03 04 78");
    /* the reader takes it back (a server's PUBLISH has the same form) */
    fl_mqttrx_init(&rx, MAX_DEFAULT, 0);
    FL_REQUIRE(fl_mqttrx_feed(&rx, (const unsigned char *)b.p, b.len, &used,
                              &pkt) == FL_OK);
    FL_CHECK_EQ_U64(used, b.len);
    FL_CHECK(fl_mqtt_has(&pkt.props, FL_MQTT_PROP_MESSAGE_EXPIRY));
    FL_CHECK_EQ_U64(pkt.props.message_expiry, 0x01020304);
    FL_CHECK(pkt.retain == 1 && pkt.qos == 1 && pkt.packet_id == 7);
    FL_CHECK(pkt.payload.len == 1 && pkt.payload.p[0] == 'x');
    fl_mqttrx_free(&rx);

    b.len = 0;
    FL_CHECK_EQ_INT(
        fl_mqtt_put_publish_expiry(&b, S("a/b"), 0, 0, 0, "hi", 2, 0), FL_OK);
    CHECK_BYTES(&b, "30 08 00 03 61 2f 62 00 68 69");
    /* refused as fl_mqtt_put_publish() refuses */
    FL_CHECK_EQ_INT(
        fl_mqtt_put_publish_expiry(&b, S("a/+"), 0, 0, 0, "", 0, 60), FL_ERROR);
    FL_CHECK_EQ_INT(fl_mqtt_put_publish_expiry(&b, S("t"), 1, 0, 0, "", 0, 60),
                    FL_ERROR);
    fl_sb_free(&b);
}
