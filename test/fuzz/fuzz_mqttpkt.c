/*
 * fuzz_mqttpkt.c - libFuzzer harness for the MQTT 5.0 codec
 * (fl_mqttpkt.h).
 *
 * Input: byte 0 picks the reader's max_packet (bits 0-2), its
 * topic_alias_max (bits 3-4) and whether to feed one byte at a time (bit
 * 5); bytes 1-3 are where the stream is cut otherwise; the rest is what
 * a server sent.
 *
 * The stream is fed whole and in pieces, each a malloc'd copy of its own
 * size, and must give the same packets (every field and property, as
 * bytes) and the same result and reason. Checked on the way:
 *   - a result is FL_OK, FL_AGAIN or one of 0x81, 0x82, 0x94, 0x95 with
 *     a reason; after it the reader holds nothing and returns it again;
 *   - the reader never holds more than max_packet bytes, nothing once it
 *     asked for more after a packet, nothing after fl_mqttrx_free();
 *   - a packet is of a type a server sends, its pointers lie in the piece
 *     fed or in the reader, its strings are MQTT UTF-8, its topic has no
 *     wildcard, a packet id is not 0 where one is required, a SUBACK or
 *     UNSUBACK has reason codes, fl_mqtt_prop_next() walks its property
 *     block to the end;
 *   - a PUBLISH of QoS 0 or 1 with a topic and a PUBACK are written again
 *     with fl_mqtt_put_publish() / fl_mqtt_put_puback(), which must
 *     accept them, and read back to the same fields; when the original
 *     had no property (and, for a PUBACK, was in the shortest form) the
 *     bytes are the same.
 * The input is also given to fl_mqtt_vbi_decode() (what it accepts is
 * written back the same by fl_mqtt_vbi_encode()), to fl_mqtt_utf8_ok()
 * (against a decoder of its own here), and as a topic and a topic filter
 * to the writers (accepted exactly when fl_mqtt_topic_ok() /
 * fl_mqtt_filter_ok() say so).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fl_core.h"
#include "fl_enc.h"
#include "fl_mqttpkt.h"
#include "fuzz_cuts.h"
#include "fuzz_utf8_ref.h"

static const uint32_t max_packets[8] = {0,   2,   5,    16,
                                        127, 300, 4096, FL_MQTT_PACKET_MAX};
static const uint16_t alias_maxes[4] = {0, 1, 5, 65535};

/* ---- UTF-8 by a decoder of the fuzzers' own (fuzz_utf8_ref.h) ---- */

/* An MQTT string's content: UTF-8 without U+0000, at most 65535 bytes. */
static int utf8_ref(const unsigned char *s, size_t n)
{
    return n <= 65535 && (n == 0 || memchr(s, 0, n) == NULL) &&
           fuzz_utf8_ref(s, n);
}

/* ---- one feeding ---- */

typedef struct {
    unsigned char *log;
    size_t         len, cap;
    uint32_t       max;
    uint16_t       alias;
    int            packets;
} run_t;

static void log_add(run_t *r, const void *p, size_t n)
{
    if (r->len + n > r->cap) {
        r->cap = (r->len + n) * 2;
        r->log = realloc(r->log, r->cap);
        if (r->log == NULL)
            abort();
    }
    if (n)
        memcpy(r->log + r->len, p, n);
    r->len += n;
}

static void log_bytes(run_t *r, const void *p, size_t n)
{
    log_add(r, &n, sizeof(n));
    log_add(r, p, n);
}

/* p[0..n) lies in the piece fed or in the reader's body */
static void check_in(const void *p, size_t n, const unsigned char *piece,
                     size_t piece_n, const fl_mqttrx_t *rx)
{
    const unsigned char *q = p;

    if (n == 0)
        return;
    if (q == NULL)
        abort();
    if (q >= piece && q + n <= piece + piece_n)
        return;
    if (rx->body && q >= rx->body && q + n <= rx->body + rx->body_len)
        return;
    abort();
}

static void check_str(fl_mqtt_str_t s, const unsigned char *piece, size_t pn,
                      const fl_mqttrx_t *rx)
{
    check_in(s.p, s.len, piece, pn, rx);
    if (!utf8_ref((const unsigned char *)s.p, s.len))
        abort();
}

static void check_props(const fl_mqtt_props_t *pp, const unsigned char *piece,
                        size_t pn, const fl_mqttrx_t *rx, run_t *r)
{
    fl_mqtt_prop_t pr;
    size_t         off = 0;
    uint32_t       nuser = 0, nsub = 0;

    check_in(pp->raw.p, pp->raw.len, piece, pn, rx);
    while (fl_mqtt_prop_next(pp->raw, &off, &pr)) {
        if (!fl_mqtt_has(pp, pr.id))
            abort();
        nuser += pr.id == FL_MQTT_PROP_USER;
        nsub += pr.id == FL_MQTT_PROP_SUBSCRIPTION_ID;
        log_add(r, &pr.id, 1);
        log_add(r, &pr.num, sizeof(pr.num));
        log_bytes(r, pr.str.p, pr.str.len);
        log_bytes(r, pr.val.p, pr.val.len);
        log_bytes(r, pr.bin.p, pr.bin.len);
    }
    if (off != pp->raw.len || nuser != pp->nuser || nsub != pp->nsub_ids)
        abort();
    if ((pp->has & 1) || (pp->raw.len == 0 && pp->has != 0))
        abort();
    check_str(pp->content_type, piece, pn, rx);
    check_str(pp->response_topic, piece, pn, rx);
    check_str(pp->assigned_client_id, piece, pn, rx);
    check_str(pp->reason_string, piece, pn, rx);
    check_str(pp->server_reference, piece, pn, rx);
    check_str(pp->response_info, piece, pn, rx);
    check_str(pp->auth_method, piece, pn, rx);
    if (pp->receive_max == 0 || pp->max_qos > 2 || pp->retain_available > 1 ||
        pp->payload_format > 1 || (pp->nsub_ids && pp->sub_id == 0))
        abort();
    log_add(r, &pp->has, sizeof(pp->has));
}

/* Write p again with the client's writers and read it back. orig[0..n)
 * is the packet as it came, or NULL when it came in pieces. */
static void roundtrip(const fl_mqtt_packet_t *p, const unsigned char *orig,
                      size_t n)
{
    fl_sbuf_t        b = {0};
    fl_mqttrx_t      rx;
    fl_mqtt_packet_t q;
    size_t           used;
    int              same = 0;

    if (p->type == FL_MQTT_PUBLISH && p->qos <= 1 && p->topic.len) {
        if (fl_mqtt_put_publish(
                &b, p->topic, p->qos,
                (p->dup ? FL_MQTT_DUP : 0) | (p->retain ? FL_MQTT_RETAIN : 0),
                p->packet_id, p->payload.p, p->payload.len) != FL_OK)
            abort();
        same = p->props.raw.len == 0;
    } else if (p->type == FL_MQTT_PUBACK) {
        if (fl_mqtt_put_puback(&b, p->packet_id, p->reason) != FL_OK)
            abort();
        same = n == 4 || (n == 5 && p->reason != 0);
    } else {
        return;
    }
    if (orig && same && (b.len != n || memcmp(b.p, orig, n) != 0))
        abort();
    fl_mqttrx_init(&rx, FL_MQTT_PACKET_MAX, 0);
    if (fl_mqttrx_feed(&rx, (unsigned char *)b.p, b.len, &used, &q) != FL_OK ||
        used != b.len)
        abort();
    if (q.type != p->type || q.packet_id != p->packet_id || q.props.has != 0 ||
        q.props.raw.len != 0)
        abort();
    if (p->type == FL_MQTT_PUBACK && q.reason != p->reason)
        abort();
    if (p->type == FL_MQTT_PUBLISH &&
        (q.qos != p->qos || q.dup != p->dup || q.retain != p->retain ||
         q.topic.len != p->topic.len || q.payload.len != p->payload.len ||
         memcmp(q.topic.p, p->topic.p, p->topic.len) != 0 ||
         (p->payload.len &&
          memcmp(q.payload.p, p->payload.p, p->payload.len) != 0)))
        abort();
    fl_mqttrx_free(&rx);
    fl_sb_free(&b);
}

/* One packet, just reported; it took piece[at..at+used), its end. */
static void packet(run_t *r, const fl_mqttrx_t *rx, const fl_mqtt_packet_t *p,
                   const unsigned char *piece, size_t pn, size_t at,
                   size_t used)
{
    unsigned char vbi[4];
    size_t        i, total = 1 + fl_mqtt_vbi_encode(vbi, rx->rem) + rx->rem;

    switch (p->type) {
    case FL_MQTT_CONNACK:
    case FL_MQTT_PINGRESP:
    case FL_MQTT_DISCONNECT:
        if (p->packet_id != 0)
            abort();
        break;
    case FL_MQTT_PUBLISH:
        if (p->qos > 2 || (p->qos == 0) != (p->packet_id == 0) ||
            (p->qos == 0 && p->dup))
            abort();
        for (i = 0; i < p->topic.len; i++)
            if (p->topic.p[i] == '+' || p->topic.p[i] == '#')
                abort();
        if (p->topic.len == 0 &&
            !fl_mqtt_has(&p->props, FL_MQTT_PROP_TOPIC_ALIAS))
            abort();
        if (fl_mqtt_has(&p->props, FL_MQTT_PROP_TOPIC_ALIAS) &&
            (p->props.topic_alias == 0 || p->props.topic_alias > r->alias))
            abort();
        break;
    case FL_MQTT_SUBACK:
    case FL_MQTT_UNSUBACK:
        if (p->reasons.len == 0)
            abort();
        /* fall through */
    case FL_MQTT_PUBACK:
    case FL_MQTT_PUBREC:
    case FL_MQTT_PUBREL:
    case FL_MQTT_PUBCOMP:
        if (p->packet_id == 0)
            abort();
        break;
    default: abort();
    }
    if (p->type != FL_MQTT_PUBLISH && (p->topic.len || p->payload.len))
        abort();
    check_str(p->topic, piece, pn, rx);
    check_in(p->payload.p, p->payload.len, piece, pn, rx);
    check_in(p->reasons.p, p->reasons.len, piece, pn, rx);
    log_add(r, p, 8); /* type to packet_id */
    log_bytes(r, p->topic.p, p->topic.len);
    log_bytes(r, p->payload.p, p->payload.len);
    log_bytes(r, p->reasons.p, p->reasons.len);
    check_props(&p->props, piece, pn, rx, r);
    if (used > total || total > r->max || at + used > pn)
        abort();
    roundtrip(p, used == total ? piece + at : NULL, total);
    r->packets++;
}

/*
 * Feed s[0..n) in the pieces that end at cut[0..ncut) and at n. Returns
 * the result (FL_AGAIN when all was taken) and the reason in *why.
 */
static int feed(run_t *r, const unsigned char *s, size_t n, const size_t *cut,
                size_t ncut, const char **why)
{
    fl_mqttrx_t      rx;
    fl_mqtt_packet_t pkt;
    unsigned char   *piece;
    size_t           from = 0, to, i, at, used;
    int              rc = FL_AGAIN;

    fl_mqttrx_init(&rx, r->max, r->alias);
    *why = NULL;
    for (i = 0; i <= ncut && rc == FL_AGAIN; i++) {
        to = i < ncut ? cut[i] : n;
        piece = malloc(to - from ? to - from : 1);
        if (piece == NULL)
            abort();
        memcpy(piece, s + from, to - from);
        at = 0;
        while ((rc = fl_mqttrx_feed(&rx, piece + at, to - from - at, &used,
                                    &pkt)) == FL_OK) {
            if (used == 0 || used > to - from - at ||
                fl_mqttrx_memory(&rx) > r->max)
                abort();
            packet(r, &rx, &pkt, piece, to - from, at, used);
            at += used;
        }
        if (used != to - from - at || fl_mqttrx_memory(&rx) > r->max)
            abort();
        free(piece);
        from = to;
    }
    if (rc != FL_AGAIN) {
        if (rc != FL_MQTT_RC_MALFORMED && rc != FL_MQTT_RC_PROTOCOL &&
            rc != FL_MQTT_RC_TOPIC_ALIAS_INVALID &&
            rc != FL_MQTT_RC_PACKET_TOO_LARGE)
            abort();
        if (rx.why == NULL || rx.err != rc || fl_mqttrx_memory(&rx) != 0)
            abort();
        if (fl_mqttrx_feed(&rx, (const unsigned char *)"\xd0", 1, &used,
                           &pkt) != rc ||
            used != 1)
            abort();
        *why = rx.why;
    } else if (rx.hdr_len == 0 && !rx.hdr_done && fl_mqttrx_memory(&rx)) {
        abort(); /* between packets, nothing held */
    }
    fl_mqttrx_free(&rx);
    if (fl_mqttrx_memory(&rx) || rx.body || rx.hdr_len || rx.err)
        abort();
    return rc;
}

/* ---- the building blocks ---- */

static void check_vbi(const uint8_t *data, size_t size)
{
    unsigned char out[4];
    uint32_t      v = 0;
    size_t        len = 0, k;
    int           rc = fl_mqtt_vbi_decode(data, size < 6 ? size : 6, &v, &len);

    if (rc == FL_OK) {
        k = fl_mqtt_vbi_encode(out, v);
        if (v > FL_MQTT_VBI_MAX || k != len || memcmp(out, data, k) != 0)
            abort();
    } else if (rc == FL_AGAIN ? size >= 4 : rc != FL_ERROR) {
        abort();
    }
    if (size >= 4) {
        uint32_t w;

        memcpy(&v, data, 4);
        v >>= data[0] & 31;
        k = fl_mqtt_vbi_encode(out, v);
        if (v > FL_MQTT_VBI_MAX
                ? k != 0
                : k == 0 || fl_mqtt_vbi_decode(out, k, &w, &len) != FL_OK ||
                      w != v || len != k)
            abort();
    }
}

/* The writers take a topic or a filter exactly when the checks do. */
static void check_writers(const uint8_t *data, size_t size)
{
    fl_sbuf_t     b = {0};
    fl_mqtt_str_t s = {(const char *)data, size < 300 ? size : 300};
    fl_mqtt_sub_t sub = {s, 1, 0, 0, 0};
    int           ok;

    if (fl_mqtt_utf8_ok(data, size) != utf8_ref(data, size))
        abort();
    ok = fl_mqtt_topic_ok(s);
    if ((fl_mqtt_put_publish(&b, s, 0, 0, 0, "x", 1) == FL_OK) != ok)
        abort();
    ok = fl_mqtt_filter_ok(s);
    if ((fl_mqtt_put_subscribe(&b, 1, 0, &sub, 1) == FL_OK) != ok)
        abort();
    if ((fl_mqtt_put_unsubscribe(&b, 1, &s, 1) == FL_OK) != ok)
        abort();
    fl_sb_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    run_t                whole, split;
    const unsigned char *s = data + 4;
    const char          *why_whole, *why_split;
    size_t               n, cut[3], *cuts = cut, ncut = 3;
    int                  rc_whole, rc_split;

    check_vbi(data, size);
    check_writers(data, size);
    if (size < 4)
        return 0;
    n = size - 4;

    memset(&whole, 0, sizeof(whole));
    whole.max = max_packets[data[0] & 7];
    whole.alias = alias_maxes[(data[0] >> 3) & 3];
    split = whole;

    /* bit 0x20: a byte at a time */
    fuzz_cuts(data + 1, n, (data[0] & 0x20) != 0, cut, &cuts, &ncut);

    rc_whole = feed(&whole, s, n, NULL, 0, &why_whole);
    rc_split = feed(&split, s, n, cuts, ncut, &why_split);
    if (rc_whole != rc_split || why_whole != why_split ||
        whole.packets != split.packets || whole.len != split.len ||
        (whole.len && memcmp(whole.log, split.log, whole.len) != 0))
        abort();

    if (cuts != cut)
        free(cuts);
    free(whole.log);
    free(split.log);
    return 0;
}
