/*
 * fl_mqttpkt.h - MQTT 5.0 packet codec, client side (OASIS MQTT 5.0).
 *
 * The reader turns what the server sent into whole packets; the writers
 * make the client's packets. No I/O, no libevent, no session state here:
 * the MQTT client feeds the reader what it reads from its socket, the
 * unit tests and the fuzz harness feed it anything. Packet ids in flight,
 * CONNACK-first, Receive Maximum and topic alias mappings are the
 * client's business.
 *
 * The reader costs nothing while the connection is idle: fl_mqttrx_t is a
 * few words, and memory is taken only for a packet that arrived in
 * pieces, at most its size (bounded by max_packet), grown as its bytes
 * come, and given back on the next call after it was reported. A packet
 * that lies whole in the bytes fed (its fixed header may have come
 * before) is decoded where it is: the strings, the properties and the
 * payload of the fl_mqtt_packet_t point into the caller's buffer.
 *
 * Errors are the reason code the client puts in its DISCONNECT:
 *   0x81 Malformed Packet: a variable byte integer (remaining length,
 *        property length or identifier, Subscription Identifier) of more
 *        than 4 bytes or not in its shortest form, a packet type a
 *        server may not send (CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ,
 *        0), reserved flag bits set, QoS 3, DUP on QoS 0, a packet id of
 *        0 where one is required, a string, property block or property
 *        running past its packet or property block, bytes left over, a
 *        string that is not UTF-8 or holds U+0000, a topic name with a
 *        wildcard, a property unknown or not allowed in the packet, a
 *        reason code that is not in the packet's table;
 *   0x82 Protocol Error (section 4.13 and the property definitions): a
 *        property present twice that may appear once, a value out of its
 *        range (Receive Maximum, Maximum Packet Size or Subscription
 *        Identifier 0; Maximum QoS, Retain Available, the three
 *        "available" bytes or Payload Format Indicator above 1), Session
 *        Present with a failed CONNACK, Session Expiry Interval in a
 *        server's DISCONNECT, an empty topic without a topic alias, a
 *        SUBACK or UNSUBACK without reason codes, any AUTH (the client
 *        sends no Authentication Method, so the server may not send one);
 *   0x94 Topic Alias invalid: a topic alias of 0 or above topic_alias_max;
 *   0x95 Packet Too Large: fixed header and remaining length over
 *        max_packet, refused on the fixed header before any body byte is
 *        kept.
 * After an error the reader holds nothing and takes nothing more.
 */
#ifndef FL_MQTTPKT_H
#define FL_MQTTPKT_H

#include <stddef.h>
#include <stdint.h>

#include "fl_enc.h" /* fl_sbuf_t */

/* Control packet types (fixed header bits 7-4). */
enum {
    FL_MQTT_CONNECT = 1,
    FL_MQTT_CONNACK = 2,
    FL_MQTT_PUBLISH = 3,
    FL_MQTT_PUBACK = 4,
    FL_MQTT_PUBREC = 5,
    FL_MQTT_PUBREL = 6,
    FL_MQTT_PUBCOMP = 7,
    FL_MQTT_SUBSCRIBE = 8,
    FL_MQTT_SUBACK = 9,
    FL_MQTT_UNSUBSCRIBE = 10,
    FL_MQTT_UNSUBACK = 11,
    FL_MQTT_PINGREQ = 12,
    FL_MQTT_PINGRESP = 13,
    FL_MQTT_DISCONNECT = 14,
    FL_MQTT_AUTH = 15,
};

/* The reason codes this module returns or writes by name. */
enum {
    FL_MQTT_RC_SUCCESS = 0x00,
    FL_MQTT_RC_NO_MATCHING_SUBSCRIBERS = 0x10,
    FL_MQTT_RC_UNSPECIFIED = 0x80,
    FL_MQTT_RC_MALFORMED = 0x81,
    FL_MQTT_RC_PROTOCOL = 0x82,
    FL_MQTT_RC_UNSUPPORTED_VERSION = 0x84,
    FL_MQTT_RC_TOPIC_ALIAS_INVALID = 0x94,
    FL_MQTT_RC_PACKET_TOO_LARGE = 0x95,
};

/* Property identifiers (section 2.2.2.2). */
enum {
    FL_MQTT_PROP_PAYLOAD_FORMAT = 0x01,
    FL_MQTT_PROP_MESSAGE_EXPIRY = 0x02,
    FL_MQTT_PROP_CONTENT_TYPE = 0x03,
    FL_MQTT_PROP_RESPONSE_TOPIC = 0x08,
    FL_MQTT_PROP_CORRELATION_DATA = 0x09,
    FL_MQTT_PROP_SUBSCRIPTION_ID = 0x0B,
    FL_MQTT_PROP_SESSION_EXPIRY = 0x11,
    FL_MQTT_PROP_ASSIGNED_CLIENT_ID = 0x12,
    FL_MQTT_PROP_SERVER_KEEP_ALIVE = 0x13,
    FL_MQTT_PROP_AUTH_METHOD = 0x15,
    FL_MQTT_PROP_AUTH_DATA = 0x16,
    FL_MQTT_PROP_REQUEST_PROBLEM_INFO = 0x17,
    FL_MQTT_PROP_WILL_DELAY = 0x18,
    FL_MQTT_PROP_REQUEST_RESPONSE_INFO = 0x19,
    FL_MQTT_PROP_RESPONSE_INFO = 0x1A,
    FL_MQTT_PROP_SERVER_REFERENCE = 0x1C,
    FL_MQTT_PROP_REASON_STRING = 0x1F,
    FL_MQTT_PROP_RECEIVE_MAX = 0x21,
    FL_MQTT_PROP_TOPIC_ALIAS_MAX = 0x22,
    FL_MQTT_PROP_TOPIC_ALIAS = 0x23,
    FL_MQTT_PROP_MAX_QOS = 0x24,
    FL_MQTT_PROP_RETAIN_AVAILABLE = 0x25,
    FL_MQTT_PROP_USER = 0x26,
    FL_MQTT_PROP_MAX_PACKET_SIZE = 0x27,
    FL_MQTT_PROP_WILDCARD_SUB_AVAILABLE = 0x28,
    FL_MQTT_PROP_SUB_ID_AVAILABLE = 0x29,
    FL_MQTT_PROP_SHARED_SUB_AVAILABLE = 0x2A,
};

#define FL_MQTT_VBI_MAX    268435455u /* largest variable byte integer */
#define FL_MQTT_PACKET_MAX (1u + 4u + FL_MQTT_VBI_MAX) /* whole packet */
#define FL_MQTT_STR_MAX    65535u /* UTF-8 string or binary data */

/* fl_mqtt_put_publish() flags, in their fixed header places */
#define FL_MQTT_RETAIN 0x01
#define FL_MQTT_DUP    0x08

/* A UTF-8 string (checked by the reader, not NUL-terminated) or binary
 * data; p is NULL only when len is 0. */
typedef struct {
    const char *p;
    size_t      len;
} fl_mqtt_str_t;

typedef struct {
    const unsigned char *p;
    size_t               len;
} fl_mqtt_bin_t;

/* 1 when property id was present in the packet. */
#define fl_mqtt_has(props, id) ((int)(((props)->has >> (id)) & 1))

/*
 * The properties of a decoded packet. A property that is absent has the
 * default the spec gives it (Receive Maximum 65535, Maximum QoS 2, the
 * four "available" bytes 1, numbers 0, strings empty); has tells which
 * were present. User Properties and Subscription Identifiers may repeat:
 * they are counted here and read with fl_mqtt_prop_next() from raw.
 */
typedef struct {
    uint64_t      has;             /* bit 1 << id per property present */
    fl_mqtt_bin_t raw;             /* the property block, length excluded */
    uint32_t      nuser;           /* User Properties */
    uint32_t      nsub_ids;        /* Subscription Identifiers */
    uint32_t      sub_id;          /* the first of them */
    uint32_t      message_expiry;  /* seconds */
    uint32_t      session_expiry;  /* seconds */
    uint32_t      max_packet_size; /* 0: none given, no limit */
    uint16_t      receive_max;
    uint16_t      topic_alias_max;
    uint16_t      topic_alias;
    uint16_t      server_keep_alive; /* seconds */
    uint8_t       payload_format;    /* 1: the payload is UTF-8 */
    uint8_t       max_qos;
    uint8_t       retain_available;
    uint8_t       wildcard_sub_available;
    uint8_t       sub_id_available;
    uint8_t       shared_sub_available;
    fl_mqtt_str_t content_type;
    fl_mqtt_str_t response_topic;
    fl_mqtt_bin_t correlation_data;
    fl_mqtt_str_t assigned_client_id;
    fl_mqtt_str_t reason_string;
    fl_mqtt_str_t response_info;
    fl_mqtt_str_t server_reference;
    fl_mqtt_str_t auth_method;
    fl_mqtt_bin_t auth_data;
} fl_mqtt_props_t;

/*
 * A decoded server packet: type says which fields mean something.
 *   CONNACK      session_present, reason, props. The MQTT 3.1.1 refusal
 *                of protocol level 5 (20 02 00 01, from a server that
 *                does not speak MQTT 5) is reported as reason 0x84
 *                Unsupported Protocol Version, so that it is logged as
 *                such and not as a malformed packet
 *   PUBLISH      qos, dup, retain, topic (empty when a topic alias
 *                stands for it), packet_id (QoS > 0), props, payload
 *   PUBACK, PUBREC, PUBREL, PUBCOMP
 *                packet_id, reason (0 when the short form omits it), props
 *   SUBACK, UNSUBACK
 *                packet_id, props, reasons (one code per topic filter,
 *                in the order of the request)
 *   PINGRESP     nothing
 *   DISCONNECT   reason (0 when the packet is empty), props
 */
typedef struct {
    uint8_t         type;
    uint8_t         reason;
    uint8_t         session_present;
    uint8_t         qos;
    uint8_t         dup;
    uint8_t         retain;
    uint16_t        packet_id;
    fl_mqtt_str_t   topic;
    fl_mqtt_bin_t   payload;
    fl_mqtt_bin_t   reasons;
    fl_mqtt_props_t props;
} fl_mqtt_packet_t;

/* One property, as fl_mqtt_prop_next() reads it: num for the integer
 * kinds, str (and val for a User Property's value) for strings, bin for
 * binary data. */
typedef struct {
    uint8_t       id;
    uint32_t      num;
    fl_mqtt_str_t str;
    fl_mqtt_str_t val;
    fl_mqtt_bin_t bin;
} fl_mqtt_prop_t;

/* The reader. Set up with fl_mqttrx_init(); the fields are its own. */
typedef struct {
    unsigned char *body;    /* a packet that did not arrive whole: its
                               body so far (after the fixed header) */
    uint32_t      body_len; /* bytes in body */
    uint32_t      body_cap;
    uint32_t      rem;        /* its remaining length, once hdr is whole */
    uint32_t      max_packet; /* whole packet, fixed header included */
    uint16_t      topic_alias_max;
    unsigned char hdr[5];   /* its fixed header so far */
    uint8_t       hdr_len;  /* bytes in hdr */
    uint8_t       hdr_done; /* hdr is whole, rem is known */
    uint8_t       reported; /* body was reported: free it next call */
    uint8_t       err;      /* the error returned, then every call */
    const char   *why;      /* with err: a short static English reason */
} fl_mqttrx_t;

/*
 * Set up rx for a new connection. max_packet is the Maximum Packet Size
 * the client sent in CONNECT (values above FL_MQTT_PACKET_MAX mean
 * FL_MQTT_PACKET_MAX); topic_alias_max the Topic Alias Maximum it sent (0
 * when absent: the server may then use no alias).
 */
void fl_mqttrx_init(fl_mqttrx_t *rx, uint32_t max_packet,
                    uint16_t topic_alias_max);

/*
 * Take bytes from data[0..n) up to the end of the next whole packet.
 * Returns
 *   FL_OK     *pkt is that packet; *used bytes were taken. Its pointers
 *             point into data or into rx, valid until the next call on rx
 *             (and as long as data is);
 *   FL_AGAIN  all n bytes were taken (*used = n), no packet is whole yet;
 *   0x81..    an error: the reason code (see the top of this file), with
 *             rx->why; *used = n. Every later call returns it again.
 * Call it until it returns something other than FL_OK, with what was not
 * taken (n may be 0): the last call gives back the memory of a packet
 * reported from pieces.
 *
 *     while ((rc = fl_mqttrx_feed(rx, p, n, &used, &pkt)) == FL_OK) {
 *         p += used, n -= used;
 *         handle(&pkt);
 *     }
 */
int fl_mqttrx_feed(fl_mqttrx_t *rx, const unsigned char *data, size_t n,
                   size_t *used, fl_mqtt_packet_t *pkt);

/* Give back rx's memory; rx is then as fl_mqttrx_init() left it. */
void fl_mqttrx_free(fl_mqttrx_t *rx);

/* Heap bytes rx holds now (0 when idle). */
size_t fl_mqttrx_memory(const fl_mqttrx_t *rx);

/*
 * The property at raw.p[*off] (raw from a decoded packet's props, *off
 * from 0): fills *prop (the fields its kind does not use are zero),
 * moves *off past it and returns 1; returns 0 at
 * the end of raw (or on bytes that are not a property).
 */
int fl_mqtt_prop_next(fl_mqtt_bin_t raw, size_t *off, fl_mqtt_prop_t *prop);

/* ---- building blocks ---------------------------------------------------
 *
 * fl_mqtt_vbi_encode(): v (at most FL_MQTT_VBI_MAX) in 1-4 bytes, the
 * shortest form; returns the length, or 0 when v is too big.
 * fl_mqtt_vbi_decode(): the integer at p[0..n): FL_OK with *v and *len,
 * FL_AGAIN when n bytes end inside it, FL_ERROR when it is not in its
 * shortest form or goes on past 4 bytes.
 */
size_t fl_mqtt_vbi_encode(unsigned char out[4], uint32_t v);
int    fl_mqtt_vbi_decode(const unsigned char *p, size_t n, uint32_t *v,
                          size_t *len);

/* 1 when s[0..len) is an MQTT UTF-8 string's content (section 1.5.4):
 * well-formed UTF-8 (fl_utf8_valid()) without U+0000, at most
 * FL_MQTT_STR_MAX bytes. Control characters and noncharacters are allowed
 * (the spec says SHOULD NOT, not MUST NOT). */
int fl_mqtt_utf8_ok(const void *s, size_t len);

/* 1 when s is a topic name a PUBLISH may carry: a non-empty UTF-8 string
 * without '+' or '#'. */
int fl_mqtt_topic_ok(fl_mqtt_str_t s);

/* 1 when s is a topic filter (section 4.7): a non-empty UTF-8 string
 * where '+' fills a whole level and '#' only the last one; or
 * "$share/NAME/FILTER" with a non-empty NAME free of '+', '#' and '/'. */
int fl_mqtt_filter_ok(fl_mqtt_str_t s);

/* ---- writers -------------------------------------------------------------
 *
 * Each appends one whole packet to b and returns FL_OK, or returns
 * FL_ERROR and leaves b as it was when an argument would make a malformed
 * packet. They do not know the server's Maximum Packet Size: the caller
 * compares it with the bytes added.
 */

/*
 * CONNECT: protocol "MQTT" level 5, no will. A property whose field is 0
 * is left out (its default applies: no session expiry, Receive Maximum
 * 65535, no packet size limit, Topic Alias Maximum 0). username and
 * password are sent when their p is not NULL (either may be empty).
 * Refused: a string that is not fl_mqtt_utf8_ok(), a password over
 * FL_MQTT_STR_MAX bytes.
 */
typedef struct {
    fl_mqtt_str_t client_id; /* empty: the server assigns one */
    fl_mqtt_str_t username;
    fl_mqtt_bin_t password;
    uint16_t      keep_alive; /* seconds, 0: none */
    uint8_t       clean_start;
    uint32_t      session_expiry;
    uint16_t      receive_max;
    uint32_t      max_packet_size;
    uint16_t      topic_alias_max;
} fl_mqtt_connect_t;

int fl_mqtt_put_connect(fl_sbuf_t *b, const fl_mqtt_connect_t *c);

/* One topic filter of a SUBSCRIBE and its options (section 3.8.3.1). */
typedef struct {
    fl_mqtt_str_t filter;
    uint8_t       qos;      /* maximum QoS, 0-2 */
    uint8_t       no_local; /* not on a $share/ filter */
    uint8_t       retain_as_published;
    uint8_t       retain_handling; /* 0-2 */
} fl_mqtt_sub_t;

/*
 * SUBSCRIBE of subs[0..n), n >= 1, with a Subscription Identifier when
 * sub_id is not 0 (at most FL_MQTT_VBI_MAX). Refused: packet_id 0, a
 * filter that is not fl_mqtt_filter_ok(), an option out of its range,
 * No Local on a shared subscription.
 */
int fl_mqtt_put_subscribe(fl_sbuf_t *b, uint16_t packet_id, uint32_t sub_id,
                          const fl_mqtt_sub_t *subs, size_t n);

/* UNSUBSCRIBE of filters[0..n), n >= 1; refused as SUBSCRIBE is. */
int fl_mqtt_put_unsubscribe(fl_sbuf_t *b, uint16_t packet_id,
                            const fl_mqtt_str_t *filters, size_t n);

/*
 * PUBLISH with an empty property set. flags: FL_MQTT_RETAIN, FL_MQTT_DUP.
 * Refused: qos other than 0 or 1 (this client has no QoS 2 flow), a
 * topic that is not fl_mqtt_topic_ok(), packet_id 0 with QoS 1, a
 * packet_id or DUP with QoS 0, a packet over FL_MQTT_PACKET_MAX.
 */
int fl_mqtt_put_publish(fl_sbuf_t *b, fl_mqtt_str_t topic, int qos,
                        unsigned flags, uint16_t packet_id, const void *payload,
                        size_t len);

/* fl_mqtt_put_publish() with a Message Expiry Interval of expiry_s
 * seconds in its properties (none when 0). */
int fl_mqtt_put_publish_expiry(fl_sbuf_t *b, fl_mqtt_str_t topic, int qos,
                               unsigned flags, uint16_t packet_id,
                               const void *payload, size_t len,
                               uint32_t expiry_s);

/* PUBACK: the 2-byte short form for reason 0, else 3 bytes. Refused:
 * packet_id 0, a reason not in the PUBACK table. */
int fl_mqtt_put_puback(fl_sbuf_t *b, uint16_t packet_id, int reason);

/* PINGREQ. */
int fl_mqtt_put_pingreq(fl_sbuf_t *b);

/*
 * DISCONNECT: empty for reason 0 without a property, else the reason
 * and, when session_expiry is not NULL, a Session Expiry Interval (a
 * client whose CONNECT had none may not set one here: the caller's
 * rule). Refused: a reason a client may not send.
 */
int fl_mqtt_put_disconnect(fl_sbuf_t *b, int reason,
                           const uint32_t *session_expiry);

#endif
