/*
 * fl_mqttpkt.c - MQTT 5.0 packet codec, client side (see fl_mqttpkt.h).
 *
 * The reader goes packet by packet. The fixed header (1 to 5 bytes) is
 * judged by hdr_parse() as far as its bytes go, in the same order whether
 * it came whole or in pieces, so a stream cut anywhere gives the same
 * packets and the same error as the stream in one piece; a packet over
 * max_packet is refused there, before any of its body is kept. A header
 * that ends a feed is kept in rx->hdr; a body that does not lie whole in
 * one feed is collected in rx->body, grown as its bytes come (a peer that
 * declares 256 MB and sends 10 bytes costs 10 bytes), and decoded there.
 *
 * Bodies are decoded by one cursor that never reads past its end; every
 * string is checked where it is read, every property in the order it
 * comes, so the first fault in the packet decides the reason code.
 *
 * The writers compute the remaining length first, then reserve and write
 * the whole packet at once: a refused argument leaves the buffer as it
 * was.
 */
#include <stdlib.h>
#include <string.h>

#include "fl_core.h"
#include "fl_mqttpkt.h"
#include "fl_scan.h"

#define T(type) (1u << (type))

/* ---- building blocks ---------------------------------------------------- */

size_t fl_mqtt_vbi_encode(unsigned char out[4], uint32_t v)
{
    size_t n = 0;

    if (v > FL_MQTT_VBI_MAX)
        return 0;
    do {
        out[n] = (unsigned char)(v & 0x7f);
        v >>= 7;
        if (v)
            out[n] |= 0x80;
        n++;
    } while (v);
    return n;
}

/* A last byte of 0 after others adds nothing: the shortest form has no
 * such byte (section 1.5.5). */
int fl_mqtt_vbi_decode(const unsigned char *p, size_t n, uint32_t *v,
                       size_t *len)
{
    uint32_t val = 0;
    size_t   i;

    for (i = 0; i < 4; i++) {
        if (i == n)
            return FL_AGAIN;
        val |= (uint32_t)(p[i] & 0x7f) << (7 * i);
        if (!(p[i] & 0x80)) {
            if (i > 0 && p[i] == 0)
                return FL_ERROR;
            *v = val;
            *len = i + 1;
            return FL_OK;
        }
    }
    return FL_ERROR;
}

static size_t vbi_len(uint32_t v)
{
    return v < 128 ? 1 : v < 16384 ? 2 : v < 2097152 ? 3 : 4;
}

int fl_mqtt_utf8_ok(const void *s, size_t len)
{
    return len <= FL_MQTT_STR_MAX && (len == 0 || memchr(s, 0, len) == NULL) &&
           fl_utf8_valid(s, len);
}

int fl_mqtt_topic_ok(fl_mqtt_str_t s)
{
    return s.len > 0 && fl_mqtt_utf8_ok(s.p, s.len) &&
           memchr(s.p, '+', s.len) == NULL && memchr(s.p, '#', s.len) == NULL;
}

/* The wildcard rules of section 4.7.1 on p[0..n), n >= 1. */
static int filter_levels_ok(const char *p, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (p[i] != '+' && p[i] != '#')
            continue;
        if (i > 0 && p[i - 1] != '/')
            return 0;
        if (p[i] == '#' ? i != n - 1 : i + 1 < n && p[i + 1] != '/')
            return 0;
    }
    return 1;
}

int fl_mqtt_filter_ok(fl_mqtt_str_t s)
{
    const char *name, *slash;
    size_t      rest;

    if (s.len == 0 || !fl_mqtt_utf8_ok(s.p, s.len))
        return 0;
    if (s.len < 7 || memcmp(s.p, "$share/", 7) != 0)
        return filter_levels_ok(s.p, s.len);
    /* section 4.8.2: $share/{ShareName}/{filter} */
    name = s.p + 7;
    rest = s.len - 7;
    slash = memchr(name, '/', rest);
    if (slash == NULL || slash == name || (size_t)(slash - name) + 1 == rest)
        return 0;
    if (memchr(name, '+', (size_t)(slash - name)) ||
        memchr(name, '#', (size_t)(slash - name)))
        return 0;
    rest -= (size_t)(slash - name) + 1;
    return filter_levels_ok(slash + 1, rest);
}

/* ---- reason codes ------------------------------------------------------- */

static const unsigned char rc_connack[] = {
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
    0x8A, 0x8C, 0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F};
static const unsigned char rc_puback[] = {0x00, 0x10, 0x80, 0x83, 0x87,
                                          0x90, 0x91, 0x97, 0x99};
static const unsigned char rc_pubrel[] = {0x00, 0x92}; /* and PUBCOMP */
static const unsigned char rc_suback[] = {0x00, 0x01, 0x02, 0x80, 0x83, 0x87,
                                          0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2};
static const unsigned char rc_unsuback[] = {0x00, 0x11, 0x80, 0x83,
                                            0x87, 0x8F, 0x91};
/* DISCONNECT, the codes the server may send (section 3.14.2.1) */
static const unsigned char rc_disconnect_srv[] = {
    0x00, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E,
    0x8F, 0x90, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A,
    0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2};
/* ... and those the client may send */
static const unsigned char rc_disconnect_cli[] = {0x00, 0x04, 0x80, 0x81, 0x82,
                                                  0x83, 0x90, 0x93, 0x94, 0x95,
                                                  0x96, 0x97, 0x98, 0x99};

#define rc_in(tab, rc) (memchr(tab, (int)(rc), sizeof(tab)) != NULL)

/* ---- properties --------------------------------------------------------- */

enum { K_NONE, K_BYTE, K_U16, K_U32, K_VBI, K_STR, K_BIN, K_PAIR };

/* Each property's type and the packets it may appear in (section
 * 2.2.2.2; CONNECT ones included though the reader never sees them). */
static const struct {
    uint8_t  kind;
    uint16_t types;
} props[0x2B] = {
    [0x01] = {K_BYTE, T(FL_MQTT_PUBLISH)},
    [0x02] = {K_U32, T(FL_MQTT_PUBLISH)},
    [0x03] = {K_STR, T(FL_MQTT_PUBLISH)},
    [0x08] = {K_STR, T(FL_MQTT_PUBLISH)},
    [0x09] = {K_BIN, T(FL_MQTT_PUBLISH)},
    [0x0B] = {K_VBI, T(FL_MQTT_PUBLISH) | T(FL_MQTT_SUBSCRIBE)},
    [0x11] = {K_U32,
              T(FL_MQTT_CONNECT) | T(FL_MQTT_CONNACK) | T(FL_MQTT_DISCONNECT)},
    [0x12] = {K_STR, T(FL_MQTT_CONNACK)},
    [0x13] = {K_U16, T(FL_MQTT_CONNACK)},
    [0x15] = {K_STR, T(FL_MQTT_CONNECT) | T(FL_MQTT_CONNACK) | T(FL_MQTT_AUTH)},
    [0x16] = {K_BIN, T(FL_MQTT_CONNECT) | T(FL_MQTT_CONNACK) | T(FL_MQTT_AUTH)},
    [0x17] = {K_BYTE, T(FL_MQTT_CONNECT)},
    [0x18] = {K_U32, 0}, /* Will Properties only */
    [0x19] = {K_BYTE, T(FL_MQTT_CONNECT)},
    [0x1A] = {K_STR, T(FL_MQTT_CONNACK)},
    [0x1C] = {K_STR, T(FL_MQTT_CONNACK) | T(FL_MQTT_DISCONNECT)},
    [0x1F] = {K_STR, T(FL_MQTT_CONNACK) | T(FL_MQTT_PUBACK) |
                         T(FL_MQTT_PUBREC) | T(FL_MQTT_PUBREL) |
                         T(FL_MQTT_PUBCOMP) | T(FL_MQTT_SUBACK) |
                         T(FL_MQTT_UNSUBACK) | T(FL_MQTT_DISCONNECT) |
                         T(FL_MQTT_AUTH)},
    [0x21] = {K_U16, T(FL_MQTT_CONNECT) | T(FL_MQTT_CONNACK)},
    [0x22] = {K_U16, T(FL_MQTT_CONNECT) | T(FL_MQTT_CONNACK)},
    [0x23] = {K_U16, T(FL_MQTT_PUBLISH)},
    [0x24] = {K_BYTE, T(FL_MQTT_CONNACK)},
    [0x25] = {K_BYTE, T(FL_MQTT_CONNACK)},
    [0x26] = {K_PAIR, 0xfffe}, /* every packet */
    [0x27] = {K_U32, T(FL_MQTT_CONNECT) | T(FL_MQTT_CONNACK)},
    [0x28] = {K_BYTE, T(FL_MQTT_CONNACK)},
    [0x29] = {K_BYTE, T(FL_MQTT_CONNACK)},
    [0x2A] = {K_BYTE, T(FL_MQTT_CONNACK)},
};

/* A body being read: p[i..n). why is set with every error. */
typedef struct {
    const unsigned char *p;
    size_t               n, i;
    const char          *why;
} rd_t;

static int bad(rd_t *r, int rc, const char *why)
{
    r->why = why;
    return rc;
}

#define MALFORMED(r, why) bad(r, FL_MQTT_RC_MALFORMED, why)
#define PROTOCOL(r, why)  bad(r, FL_MQTT_RC_PROTOCOL, why)

static int rd_u8(rd_t *r, uint8_t *v)
{
    if (r->n - r->i < 1)
        return MALFORMED(r, "field past the end of its packet or properties");
    *v = r->p[r->i++];
    return 0;
}

static int rd_u16(rd_t *r, uint16_t *v)
{
    if (r->n - r->i < 2)
        return MALFORMED(r, "field past the end of its packet or properties");
    *v = (uint16_t)(r->p[r->i] << 8 | r->p[r->i + 1]);
    r->i += 2;
    return 0;
}

static int rd_u32(rd_t *r, uint32_t *v)
{
    const unsigned char *p = r->p + r->i;

    if (r->n - r->i < 4)
        return MALFORMED(r, "field past the end of its packet or properties");
    *v = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
         p[3];
    r->i += 4;
    return 0;
}

static int rd_vbi(rd_t *r, uint32_t *v)
{
    size_t len;

    if (fl_mqtt_vbi_decode(r->p + r->i, r->n - r->i, v, &len) != FL_OK)
        return MALFORMED(r, "bad variable byte integer");
    r->i += len;
    return 0;
}

static int rd_bin(rd_t *r, fl_mqtt_bin_t *b)
{
    uint16_t len;
    int      rc = rd_u16(r, &len);

    if (rc)
        return rc;
    if (r->n - r->i < len)
        return MALFORMED(r, "string or data past the end of its packet");
    b->p = len ? r->p + r->i : NULL;
    b->len = len;
    r->i += len;
    return 0;
}

static int rd_str(rd_t *r, fl_mqtt_str_t *s)
{
    fl_mqtt_bin_t b;
    int           rc = rd_bin(r, &b);

    if (rc)
        return rc;
    if (!fl_mqtt_utf8_ok(b.p, b.len))
        return MALFORMED(r, "string not UTF-8 or with U+0000");
    s->p = (const char *)b.p;
    s->len = b.len;
    return 0;
}

/* One property's value by its kind; r ends where the property block
 * does, so a value cut by the block's end is malformed. */
static int rd_prop(rd_t *r, fl_mqtt_prop_t *pr)
{
    uint8_t  b = 0;
    uint16_t u = 0;
    int      rc = 0;

    pr->num = 0;
    switch (props[pr->id].kind) {
    case K_BYTE:
        rc = rd_u8(r, &b);
        pr->num = b;
        break;
    case K_U16:
        rc = rd_u16(r, &u);
        pr->num = u;
        break;
    case K_U32: rc = rd_u32(r, &pr->num); break;
    case K_VBI: rc = rd_vbi(r, &pr->num); break;
    case K_STR: rc = rd_str(r, &pr->str); break;
    case K_BIN: rc = rd_bin(r, &pr->bin); break;
    case K_PAIR:
        rc = rd_str(r, &pr->str);
        if (rc == 0)
            rc = rd_str(r, &pr->val);
        break;
    }
    return rc;
}

/* A property identifier is a variable byte integer; every one defined
 * fits in a byte, so anything from 0x80 up is unknown (or not in its
 * shortest form). */
static int rd_prop_id(rd_t *r, uint8_t *id)
{
    uint32_t v;

    if (rd_vbi(r, &v) || v >= fl_nelem(props) || props[v].kind == K_NONE)
        return MALFORMED(r, "unknown property");
    *id = (uint8_t)v;
    return 0;
}

static void props_init(fl_mqtt_props_t *pp)
{
    memset(pp, 0, sizeof(*pp));
    pp->receive_max = 65535;
    pp->max_qos = 2;
    pp->retain_available = 1;
    pp->wildcard_sub_available = 1;
    pp->sub_id_available = 1;
    pp->shared_sub_available = 1;
}

/* The range checks of the property definitions (section 3.x.2.x), all
 * Protocol Errors; Payload Format Indicator is held to its two defined
 * values like the other bytes. */
static int prop_store(rd_t *r, fl_mqtt_props_t *pp, const fl_mqtt_prop_t *pr)
{
    uint32_t v = pr->num;

    switch (pr->id) {
    case FL_MQTT_PROP_PAYLOAD_FORMAT:
    case FL_MQTT_PROP_MAX_QOS:
    case FL_MQTT_PROP_RETAIN_AVAILABLE:
    case FL_MQTT_PROP_WILDCARD_SUB_AVAILABLE:
    case FL_MQTT_PROP_SUB_ID_AVAILABLE:
    case FL_MQTT_PROP_SHARED_SUB_AVAILABLE:
        if (v > 1)
            return PROTOCOL(r, "property byte other than 0 or 1");
        break;
    case FL_MQTT_PROP_RECEIVE_MAX:
    case FL_MQTT_PROP_MAX_PACKET_SIZE:
    case FL_MQTT_PROP_SUBSCRIPTION_ID:
        if (v == 0)
            return PROTOCOL(r, "property of value 0");
        break;
    }
    switch (pr->id) {
    case FL_MQTT_PROP_PAYLOAD_FORMAT: pp->payload_format = (uint8_t)v; break;
    case FL_MQTT_PROP_MESSAGE_EXPIRY: pp->message_expiry = v; break;
    case FL_MQTT_PROP_CONTENT_TYPE: pp->content_type = pr->str; break;
    case FL_MQTT_PROP_RESPONSE_TOPIC: pp->response_topic = pr->str; break;
    case FL_MQTT_PROP_CORRELATION_DATA: pp->correlation_data = pr->bin; break;
    case FL_MQTT_PROP_SUBSCRIPTION_ID:
        if (pp->nsub_ids++ == 0)
            pp->sub_id = v;
        break;
    case FL_MQTT_PROP_SESSION_EXPIRY: pp->session_expiry = v; break;
    case FL_MQTT_PROP_ASSIGNED_CLIENT_ID:
        pp->assigned_client_id = pr->str;
        break;
    case FL_MQTT_PROP_SERVER_KEEP_ALIVE:
        pp->server_keep_alive = (uint16_t)v;
        break;
    case FL_MQTT_PROP_AUTH_METHOD: pp->auth_method = pr->str; break;
    case FL_MQTT_PROP_AUTH_DATA: pp->auth_data = pr->bin; break;
    case FL_MQTT_PROP_RESPONSE_INFO: pp->response_info = pr->str; break;
    case FL_MQTT_PROP_SERVER_REFERENCE: pp->server_reference = pr->str; break;
    case FL_MQTT_PROP_REASON_STRING: pp->reason_string = pr->str; break;
    case FL_MQTT_PROP_RECEIVE_MAX: pp->receive_max = (uint16_t)v; break;
    case FL_MQTT_PROP_TOPIC_ALIAS_MAX: pp->topic_alias_max = (uint16_t)v; break;
    case FL_MQTT_PROP_TOPIC_ALIAS: pp->topic_alias = (uint16_t)v; break;
    case FL_MQTT_PROP_MAX_QOS: pp->max_qos = (uint8_t)v; break;
    case FL_MQTT_PROP_RETAIN_AVAILABLE:
        pp->retain_available = (uint8_t)v;
        break;
    case FL_MQTT_PROP_USER: pp->nuser++; break;
    case FL_MQTT_PROP_MAX_PACKET_SIZE: pp->max_packet_size = v; break;
    case FL_MQTT_PROP_WILDCARD_SUB_AVAILABLE:
        pp->wildcard_sub_available = (uint8_t)v;
        break;
    case FL_MQTT_PROP_SUB_ID_AVAILABLE:
        pp->sub_id_available = (uint8_t)v;
        break;
    case FL_MQTT_PROP_SHARED_SUB_AVAILABLE:
        pp->shared_sub_available = (uint8_t)v;
        break;
    }
    pp->has |= (uint64_t)1 << pr->id;
    return 0;
}

/* The property length and block of a packet of this type, at r. */
static int rd_props(rd_t *r, int type, fl_mqtt_props_t *pp)
{
    fl_mqtt_prop_t pr;
    uint32_t       len;
    rd_t           pb;
    int            rc;

    if (rd_vbi(r, &len))
        return MALFORMED(r, "bad property length");
    if (len > r->n - r->i)
        return MALFORMED(r, "property length beyond the packet");
    pb.p = r->p + r->i;
    pb.n = len;
    pb.i = 0;
    pb.why = NULL;
    pp->raw.p = len ? pb.p : NULL;
    pp->raw.len = len;
    r->i += len;
    while (pb.i < pb.n) {
        if ((rc = rd_prop_id(&pb, &pr.id)) != 0)
            break;
        if (!(props[pr.id].types & T(type))) {
            rc = MALFORMED(&pb, "property not allowed in this packet");
            break;
        }
        if (fl_mqtt_has(pp, pr.id) && pr.id != FL_MQTT_PROP_USER &&
            pr.id != FL_MQTT_PROP_SUBSCRIPTION_ID) {
            rc = PROTOCOL(&pb, "property included twice");
            break;
        }
        if ((rc = rd_prop(&pb, &pr)) != 0 || (rc = prop_store(&pb, pp, &pr)))
            break;
    }
    if (rc)
        r->why = pb.why;
    return rc;
}

int fl_mqtt_prop_next(fl_mqtt_bin_t raw, size_t *off, fl_mqtt_prop_t *prop)
{
    rd_t r = {raw.p, raw.len, *off, NULL};

    memset(prop, 0, sizeof(*prop));
    if (*off >= raw.len || rd_prop_id(&r, &prop->id) || rd_prop(&r, prop))
        return 0;
    *off = r.i;
    return 1;
}

/* ---- packet bodies ------------------------------------------------------ */

static int rd_end(rd_t *r)
{
    return r->i == r->n ? 0 : MALFORMED(r, "bytes after the packet's end");
}

static int rd_packet_id(rd_t *r, uint16_t *id)
{
    int rc = rd_u16(r, id);

    if (rc == 0 && *id == 0)
        return MALFORMED(r, "packet id 0");
    return rc;
}

static int connack(rd_t *r, fl_mqtt_packet_t *pkt)
{
    uint8_t flags;
    int     rc;

    /* a 3.1.1 server's "unacceptable protocol level" */
    if (r->n == 2 && r->p[0] == 0 && r->p[1] == 0x01) {
        pkt->reason = FL_MQTT_RC_UNSUPPORTED_VERSION;
        return 0;
    }
    if ((rc = rd_u8(r, &flags)) || (rc = rd_u8(r, &pkt->reason)))
        return rc;
    if (flags & 0xfe)
        return MALFORMED(r, "CONNACK reserved flags set");
    if (!rc_in(rc_connack, pkt->reason))
        return MALFORMED(r, "invalid CONNACK reason code");
    pkt->session_present = flags;
    if (flags && pkt->reason >= 0x80) /* MQTT-3.2.2-6 */
        return PROTOCOL(r, "session present on a refused CONNACK");
    if ((rc = rd_props(r, FL_MQTT_CONNACK, &pkt->props)))
        return rc;
    return rd_end(r);
}

static int publish(rd_t *r, uint16_t alias_max, fl_mqtt_packet_t *pkt)
{
    fl_mqtt_props_t *pp = &pkt->props;
    int              rc;

    if ((rc = rd_str(r, &pkt->topic)))
        return rc;
    if (pkt->topic.len && (memchr(pkt->topic.p, '+', pkt->topic.len) ||
                           memchr(pkt->topic.p, '#', pkt->topic.len)))
        return MALFORMED(r, "wildcard in a PUBLISH topic");
    if (pkt->qos && (rc = rd_packet_id(r, &pkt->packet_id)))
        return rc;
    if ((rc = rd_props(r, FL_MQTT_PUBLISH, pp)))
        return rc;
    if (fl_mqtt_has(pp, FL_MQTT_PROP_TOPIC_ALIAS) &&
        (pp->topic_alias == 0 || pp->topic_alias > alias_max))
        return bad(r, FL_MQTT_RC_TOPIC_ALIAS_INVALID, "invalid topic alias");
    if (pkt->topic.len == 0 && !fl_mqtt_has(pp, FL_MQTT_PROP_TOPIC_ALIAS))
        return PROTOCOL(r, "empty topic without a topic alias");
    pkt->payload.p = r->n > r->i ? r->p + r->i : NULL;
    pkt->payload.len = r->n - r->i;
    return 0;
}

/* PUBACK, PUBREC, PUBREL, PUBCOMP: the reason code and the property
 * length may be left out (sections 3.4.2.1, 3.4.2.2). */
static int ack(rd_t *r, int type, fl_mqtt_packet_t *pkt)
{
    int rc = rd_packet_id(r, &pkt->packet_id);

    if (rc || r->i == r->n || (rc = rd_u8(r, &pkt->reason)))
        return rc;
    if (type == FL_MQTT_PUBACK || type == FL_MQTT_PUBREC
            ? !rc_in(rc_puback, pkt->reason)
            : !rc_in(rc_pubrel, pkt->reason))
        return MALFORMED(r, "invalid acknowledgement reason code");
    if (r->i == r->n)
        return 0;
    if ((rc = rd_props(r, type, &pkt->props)))
        return rc;
    return rd_end(r);
}

static int suback(rd_t *r, int type, fl_mqtt_packet_t *pkt)
{
    size_t i;
    int    rc;

    if ((rc = rd_packet_id(r, &pkt->packet_id)) ||
        (rc = rd_props(r, type, &pkt->props)))
        return rc;
    if (r->i == r->n)
        return PROTOCOL(r, "no reason codes");
    pkt->reasons.p = r->p + r->i;
    pkt->reasons.len = r->n - r->i;
    for (i = r->i; i < r->n; i++) {
        if (type == FL_MQTT_SUBACK ? !rc_in(rc_suback, r->p[i])
                                   : !rc_in(rc_unsuback, r->p[i]))
            return MALFORMED(r, "invalid SUBACK or UNSUBACK reason code");
    }
    return 0;
}

static int disconnect(rd_t *r, fl_mqtt_packet_t *pkt)
{
    int rc;

    if (r->n == 0)
        return 0;
    if ((rc = rd_u8(r, &pkt->reason)))
        return rc;
    if (!rc_in(rc_disconnect_srv, pkt->reason))
        return MALFORMED(r, "invalid DISCONNECT reason code");
    if (r->i == r->n)
        return 0;
    if ((rc = rd_props(r, FL_MQTT_DISCONNECT, &pkt->props)))
        return rc;
    if (fl_mqtt_has(&pkt->props, FL_MQTT_PROP_SESSION_EXPIRY)) /* 3.14.2-2 */
        return PROTOCOL(r, "session expiry in a server's DISCONNECT");
    return rd_end(r);
}

/* The body p[0..len) of a packet whose first byte is b0 (hdr_parse() has
 * judged it). Returns 0 or a reason code with *why. */
static int body_parse(const fl_mqttrx_t *rx, unsigned b0,
                      const unsigned char *p, size_t len, fl_mqtt_packet_t *pkt,
                      const char **why)
{
    rd_t r = {p, len, 0, NULL};
    int  type = b0 >> 4, rc = 0;

    memset(pkt, 0, sizeof(*pkt));
    props_init(&pkt->props);
    pkt->type = (uint8_t)type;
    switch (type) {
    case FL_MQTT_CONNACK: rc = connack(&r, pkt); break;
    case FL_MQTT_PUBLISH:
        pkt->retain = b0 & 1;
        pkt->qos = (b0 >> 1) & 3;
        pkt->dup = (b0 >> 3) & 1;
        rc = publish(&r, rx->topic_alias_max, pkt);
        break;
    case FL_MQTT_PUBACK:
    case FL_MQTT_PUBREC:
    case FL_MQTT_PUBREL:
    case FL_MQTT_PUBCOMP: rc = ack(&r, type, pkt); break;
    case FL_MQTT_SUBACK:
    case FL_MQTT_UNSUBACK: rc = suback(&r, type, pkt); break;
    case FL_MQTT_PINGRESP: rc = rd_end(&r); break;
    case FL_MQTT_DISCONNECT: rc = disconnect(&r, pkt); break;
    }
    *why = r.why;
    return rc;
}

/* ---- the reader --------------------------------------------------------- */

/*
 * Judge the fixed header at p[0..n), n >= 1, as far as its n bytes go.
 * Returns 0 and sets *hlen, the header's length as far as it is known
 * (the header is whole when n >= *hlen, and then *rem is set), or a
 * reason code with *why.
 */
static int hdr_parse(const fl_mqttrx_t *rx, const unsigned char *p, size_t n,
                     size_t *hlen, uint32_t *rem, const char **why)
{
    /* the flags each type must have; PUBLISH's are its own */
    static const uint8_t flags[16] = {[FL_MQTT_PUBREL] = 2};
    unsigned             type = p[0] >> 4, f = p[0] & 0x0f;
    size_t               k;

    switch (type) {
    case 0:
    case FL_MQTT_CONNECT:
    case FL_MQTT_SUBSCRIBE:
    case FL_MQTT_UNSUBSCRIBE:
    case FL_MQTT_PINGREQ:
        *why = "packet type a server may not send";
        return FL_MQTT_RC_MALFORMED;
    case FL_MQTT_AUTH:
        *why = "AUTH without an authentication method";
        return FL_MQTT_RC_PROTOCOL;
    case FL_MQTT_PUBLISH:
        if ((f & 6) == 6) {
            *why = "QoS 3";
            return FL_MQTT_RC_MALFORMED;
        }
        if ((f & 8) && !(f & 6)) { /* MQTT-3.3.1-2 */
            *why = "DUP set on QoS 0";
            return FL_MQTT_RC_MALFORMED;
        }
        break;
    default:
        if (f != flags[type]) {
            *why = "reserved flag bits set";
            return FL_MQTT_RC_MALFORMED;
        }
    }
    switch (fl_mqtt_vbi_decode(p + 1, n - 1, rem, &k)) {
    case FL_AGAIN: *hlen = n + 1; return 0;
    case FL_ERROR: *why = "bad remaining length"; return FL_MQTT_RC_MALFORMED;
    }
    *hlen = 1 + k;
    if ((uint64_t)*hlen + *rem > rx->max_packet) {
        *why = "packet over the maximum packet size";
        return FL_MQTT_RC_PACKET_TOO_LARGE;
    }
    return 0;
}

static void body_free(fl_mqttrx_t *rx)
{
    free(rx->body);
    rx->body = NULL;
    rx->body_len = rx->body_cap = 0;
    rx->reported = 0;
}

/* After an error the reader holds nothing and takes nothing more. */
static int failed(fl_mqttrx_t *rx, int rc, const char *why)
{
    body_free(rx);
    rx->hdr_len = rx->hdr_done = 0;
    rx->err = (uint8_t)rc;
    rx->why = why;
    return rc;
}

/* Decode the packet whose header is in rx and body at p; rx is between
 * packets after it. */
static int deliver(fl_mqttrx_t *rx, const unsigned char *p,
                   fl_mqtt_packet_t *pkt)
{
    const char *why = NULL;
    int         rc = body_parse(rx, rx->hdr[0], p, rx->rem, pkt, &why);

    rx->hdr_len = rx->hdr_done = 0;
    if (rc)
        return failed(rx, rc, why);
    rx->reported = rx->body != NULL;
    return FL_OK;
}

/* Add data[0..k) to rx->body; capacity doubles, up to rem. */
static void body_add(fl_mqttrx_t *rx, const unsigned char *data, size_t k)
{
    size_t need = (size_t)rx->body_len + k, cap;

    if (k == 0)
        return;
    if (need > rx->body_cap) {
        cap = fl_max(need, fl_min((size_t)rx->body_cap * 2, (size_t)rx->rem));
        rx->body = fl_realloc(rx->body, cap);
        rx->body_cap = (uint32_t)cap;
    }
    memcpy(rx->body + rx->body_len, data, k);
    rx->body_len = (uint32_t)need;
}

void fl_mqttrx_init(fl_mqttrx_t *rx, uint32_t max_packet,
                    uint16_t topic_alias_max)
{
    memset(rx, 0, sizeof(*rx));
    rx->max_packet = fl_min(max_packet, FL_MQTT_PACKET_MAX);
    rx->topic_alias_max = topic_alias_max;
}

int fl_mqttrx_feed(fl_mqttrx_t *rx, const unsigned char *data, size_t n,
                   size_t *used, fl_mqtt_packet_t *pkt)
{
    const char *why = NULL;
    size_t      i = 0, hlen, k;
    uint32_t    rem;
    int         rc;

    *used = n;
    if (rx->err)
        return rx->err;
    if (rx->reported)
        body_free(rx);
    if (n == 0) /* nothing fed cannot end a packet */
        return FL_AGAIN;
    if (!rx->hdr_done && rx->hdr_len == 0) {
        /* between packets: judge the header where it is */
        rc = hdr_parse(rx, data, n, &hlen, &rem, &why);
        if (rc)
            return failed(rx, rc, why);
        k = fl_min(hlen, n);
        memcpy(rx->hdr, data, k);
        rx->hdr_len = (uint8_t)k;
        i = k;
        if (n >= hlen) {
            rx->hdr_done = 1;
            rx->rem = rem;
        }
    }
    while (!rx->hdr_done) { /* a header that came in pieces */
        if (i == n)
            return FL_AGAIN;
        rx->hdr[rx->hdr_len++] = data[i++];
        rc = hdr_parse(rx, rx->hdr, rx->hdr_len, &hlen, &rem, &why);
        if (rc)
            return failed(rx, rc, why);
        if (rx->hdr_len == hlen) {
            rx->hdr_done = 1;
            rx->rem = rem;
        }
    }
    if (rx->body_len == 0 && n - i >= rx->rem) { /* the body is here whole */
        k = i + rx->rem;
        rc = deliver(rx, data + i, pkt);
        if (rc == FL_OK)
            *used = k;
        return rc;
    }
    k = fl_min((size_t)(rx->rem - rx->body_len), n - i);
    body_add(rx, data + i, k);
    i += k;
    if (rx->body_len < rx->rem)
        return FL_AGAIN;
    rc = deliver(rx, rx->body, pkt);
    if (rc == FL_OK)
        *used = i;
    return rc;
}

void fl_mqttrx_free(fl_mqttrx_t *rx)
{
    uint32_t max = rx->max_packet;
    uint16_t alias = rx->topic_alias_max;

    free(rx->body);
    fl_mqttrx_init(rx, max, alias);
}

size_t fl_mqttrx_memory(const fl_mqttrx_t *rx)
{
    return rx->body_cap;
}

/* ---- writers ------------------------------------------------------------ */

/* Room for a packet of remaining length rem; returns where it goes. */
static unsigned char *put_start(fl_sbuf_t *b, unsigned b0, size_t rem)
{
    unsigned char *p;

    fl_sb_reserve(b, 1 + vbi_len((uint32_t)rem) + rem);
    p = (unsigned char *)b->p + b->len;
    *p++ = (unsigned char)b0;
    return p + fl_mqtt_vbi_encode(p, (uint32_t)rem);
}

static void put_end(fl_sbuf_t *b, const unsigned char *end)
{
    b->len = (size_t)((const char *)end - b->p);
}

static unsigned char *put_u16(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
    return p + 2;
}

static unsigned char *put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
    return p + 4;
}

static unsigned char *put_bytes(unsigned char *p, const void *s, size_t len)
{
    if (len)
        memcpy(p, s, len);
    return p + len;
}

/* A string or binary data: its length in 2 bytes, then its bytes. */
static unsigned char *put_str(unsigned char *p, const void *s, size_t len)
{
    return put_bytes(put_u16(p, (uint32_t)len), s, len);
}

int fl_mqtt_put_connect(fl_sbuf_t *b, const fl_mqtt_connect_t *c)
{
    size_t         plen = 0, rem;
    unsigned char *p, flags = c->clean_start ? 0x02 : 0;

    if (!fl_mqtt_utf8_ok(c->client_id.p, c->client_id.len) ||
        (c->username.p && !fl_mqtt_utf8_ok(c->username.p, c->username.len)) ||
        (c->password.p && c->password.len > FL_MQTT_STR_MAX))
        return FL_ERROR;
    plen += c->session_expiry ? 5 : 0;
    plen += c->receive_max ? 3 : 0;
    plen += c->max_packet_size ? 5 : 0;
    plen += c->topic_alias_max ? 3 : 0;
    rem = 10 + vbi_len((uint32_t)plen) + plen + 2 + c->client_id.len;
    if (c->username.p) {
        flags |= 0x80;
        rem += 2 + c->username.len;
    }
    if (c->password.p) {
        flags |= 0x40;
        rem += 2 + c->password.len;
    }
    p = put_start(b, FL_MQTT_CONNECT << 4, rem);
    p = put_str(p, "MQTT", 4);
    *p++ = 5;
    *p++ = flags;
    p = put_u16(p, c->keep_alive);
    *p++ = (unsigned char)plen;
    if (c->session_expiry) {
        *p++ = FL_MQTT_PROP_SESSION_EXPIRY;
        p = put_u32(p, c->session_expiry);
    }
    if (c->receive_max) {
        *p++ = FL_MQTT_PROP_RECEIVE_MAX;
        p = put_u16(p, c->receive_max);
    }
    if (c->max_packet_size) {
        *p++ = FL_MQTT_PROP_MAX_PACKET_SIZE;
        p = put_u32(p, c->max_packet_size);
    }
    if (c->topic_alias_max) {
        *p++ = FL_MQTT_PROP_TOPIC_ALIAS_MAX;
        p = put_u16(p, c->topic_alias_max);
    }
    p = put_str(p, c->client_id.p, c->client_id.len);
    if (c->username.p)
        p = put_str(p, c->username.p, c->username.len);
    if (c->password.p)
        p = put_str(p, c->password.p, c->password.len);
    put_end(b, p);
    return FL_OK;
}

static int sub_ok(const fl_mqtt_sub_t *s)
{
    if (!fl_mqtt_filter_ok(s->filter) || s->qos > 2 || s->retain_handling > 2 ||
        s->no_local > 1 || s->retain_as_published > 1)
        return 0;
    /* MQTT-3.8.3-4 */
    return !(s->no_local && s->filter.len >= 7 &&
             memcmp(s->filter.p, "$share/", 7) == 0);
}

int fl_mqtt_put_subscribe(fl_sbuf_t *b, uint16_t packet_id, uint32_t sub_id,
                          const fl_mqtt_sub_t *subs, size_t n)
{
    size_t         plen = 0, rem, i;
    unsigned char *p;

    if (packet_id == 0 || n == 0 || sub_id > FL_MQTT_VBI_MAX)
        return FL_ERROR;
    if (sub_id)
        plen = 1 + vbi_len(sub_id);
    rem = 2 + 1 + plen;
    for (i = 0; i < n; i++) {
        if (!sub_ok(&subs[i]))
            return FL_ERROR;
        rem += 2 + subs[i].filter.len + 1;
        if (rem > FL_MQTT_VBI_MAX)
            return FL_ERROR;
    }
    p = put_start(b, FL_MQTT_SUBSCRIBE << 4 | 2, rem);
    p = put_u16(p, packet_id);
    *p++ = (unsigned char)plen;
    if (sub_id) {
        *p++ = FL_MQTT_PROP_SUBSCRIPTION_ID;
        p += fl_mqtt_vbi_encode(p, sub_id);
    }
    for (i = 0; i < n; i++) {
        p = put_str(p, subs[i].filter.p, subs[i].filter.len);
        *p++ = (unsigned char)(subs[i].qos | subs[i].no_local << 2 |
                               subs[i].retain_as_published << 3 |
                               subs[i].retain_handling << 4);
    }
    put_end(b, p);
    return FL_OK;
}

int fl_mqtt_put_unsubscribe(fl_sbuf_t *b, uint16_t packet_id,
                            const fl_mqtt_str_t *filters, size_t n)
{
    size_t         rem = 2 + 1, i;
    unsigned char *p;

    if (packet_id == 0 || n == 0)
        return FL_ERROR;
    for (i = 0; i < n; i++) {
        if (!fl_mqtt_filter_ok(filters[i]))
            return FL_ERROR;
        rem += 2 + filters[i].len;
        if (rem > FL_MQTT_VBI_MAX)
            return FL_ERROR;
    }
    p = put_start(b, FL_MQTT_UNSUBSCRIBE << 4 | 2, rem);
    p = put_u16(p, packet_id);
    *p++ = 0;
    for (i = 0; i < n; i++)
        p = put_str(p, filters[i].p, filters[i].len);
    put_end(b, p);
    return FL_OK;
}

int fl_mqtt_put_publish(fl_sbuf_t *b, fl_mqtt_str_t topic, int qos,
                        unsigned flags, uint16_t packet_id, const void *payload,
                        size_t len)
{
    return fl_mqtt_put_publish_expiry(b, topic, qos, flags, packet_id, payload,
                                      len, 0);
}

int fl_mqtt_put_publish_expiry(fl_sbuf_t *b, fl_mqtt_str_t topic, int qos,
                               unsigned flags, uint16_t packet_id,
                               const void *payload, size_t len,
                               uint32_t expiry_s)
{
    size_t         rem, plen = expiry_s ? 5 : 0;
    unsigned char *p;

    if ((qos != 0 && qos != 1) || (flags & ~(FL_MQTT_RETAIN | FL_MQTT_DUP)) ||
        !fl_mqtt_topic_ok(topic) ||
        (qos ? packet_id == 0 : packet_id != 0 || (flags & FL_MQTT_DUP)))
        return FL_ERROR;
    rem = 2 + topic.len + (qos ? 2 : 0) + 1 + plen;
    if (len > FL_MQTT_VBI_MAX - rem)
        return FL_ERROR;
    rem += len;
    p = put_start(b, FL_MQTT_PUBLISH << 4 | flags | (unsigned)qos << 1, rem);
    p = put_str(p, topic.p, topic.len);
    if (qos)
        p = put_u16(p, packet_id);
    *p++ = (unsigned char)plen;
    if (expiry_s) {
        *p++ = FL_MQTT_PROP_MESSAGE_EXPIRY;
        p = put_u32(p, expiry_s);
    }
    p = put_bytes(p, payload, len);
    put_end(b, p);
    return FL_OK;
}

int fl_mqtt_put_puback(fl_sbuf_t *b, uint16_t packet_id, int reason)
{
    unsigned char *p;

    if (packet_id == 0 || reason < 0 || reason > 0xff ||
        !rc_in(rc_puback, reason))
        return FL_ERROR;
    p = put_start(b, FL_MQTT_PUBACK << 4, reason ? 3 : 2);
    p = put_u16(p, packet_id);
    if (reason)
        *p++ = (unsigned char)reason;
    put_end(b, p);
    return FL_OK;
}

int fl_mqtt_put_pingreq(fl_sbuf_t *b)
{
    put_end(b, put_start(b, FL_MQTT_PINGREQ << 4, 0));
    return FL_OK;
}

int fl_mqtt_put_disconnect(fl_sbuf_t *b, int reason,
                           const uint32_t *session_expiry)
{
    unsigned char *p;

    if (reason < 0 || reason > 0xff || !rc_in(rc_disconnect_cli, reason))
        return FL_ERROR;
    if (session_expiry) {
        p = put_start(b, FL_MQTT_DISCONNECT << 4, 7);
        *p++ = (unsigned char)reason;
        *p++ = 5;
        *p++ = FL_MQTT_PROP_SESSION_EXPIRY;
        p = put_u32(p, *session_expiry);
    } else {
        p = put_start(b, FL_MQTT_DISCONNECT << 4, reason ? 1 : 0);
        if (reason)
            *p++ = (unsigned char)reason;
    }
    put_end(b, p);
    return FL_OK;
}
