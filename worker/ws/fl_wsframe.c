/*
 * fl_wsframe.c - RFC 6455 framing, server side (see fl_wsframe.h).
 *
 * The reader goes frame by frame. A frame that lies whole in the bytes
 * fed is unmasked where it is and handed over; only a feed that ends
 * inside a frame has its tail copied, into rx->part: PART_HDR bytes while
 * the header is incomplete (the longest client header), then the whole
 * frame once the header says how long it is. The fragments of a message
 * are collected in rx->msg. Both are given back as soon as what they hold
 * has been handed over.
 *
 * A header is judged by hdr_parse() as far as its bytes go, in the same
 * order whether it came whole or in pieces, so a stream cut anywhere gives
 * the same callbacks and the same result as the stream in one piece; a
 * message over the limit is refused on its header, before any of its
 * payload is kept.
 *
 * The 32-bit counts of fl_wsrx_t hold a whole frame, header included, so
 * a message is at most MSG_MAX bytes (UINT32_MAX - 14) whatever
 * max_message says; a longer one is refused with 1009 like any other.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "fl_core.h"
#include "fl_scan.h"
#include "fl_wsframe.h"

#define PART_HDR 14 /* 2 + 8 length bytes + 4 mask bytes */
#define MSG_MAX  ((size_t)UINT32_MAX - PART_HDR)

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/* A frame header; plen and mask are set once the header is complete. */
typedef struct {
    size_t        hlen; /* header bytes, as far as they are known */
    uint64_t      plen; /* payload bytes */
    uint8_t       op;
    uint8_t       fin;
    unsigned char mask[4];
} hdr_t;

static int fail(const char **why, int code, const char *reason)
{
    if (why)
        *why = reason;
    return code;
}

static int known_op(unsigned op)
{
    return op <= FL_WS_OP_BINARY ||
           (op >= FL_WS_OP_CLOSE && op <= FL_WS_OP_PONG);
}

/*
 * Judge the header at p[0..n) as far as its n bytes go. Returns 0 and
 * sets h->hlen, the header's length as far as it is known (the header is
 * complete when n >= h->hlen), or a close code with *why.
 */
static int hdr_parse(const fl_wsrx_t *rx, size_t max, const unsigned char *p,
                     size_t n, hdr_t *h, const char **why)
{
    uint64_t len;
    size_t   ext, i;

    h->hlen = 2;
    if (n < 2)
        return 0;
    h->fin = p[0] >> 7;
    h->op = p[0] & 0x0f;
    len = p[1] & 0x7f;
    if (p[0] & 0x70)
        return fail(why, FL_WS_CLOSE_PROTOCOL, "reserved bits set");
    if (!known_op(h->op))
        return fail(why, FL_WS_CLOSE_PROTOCOL, "unknown opcode");
    if (!(p[1] & 0x80))
        return fail(why, FL_WS_CLOSE_PROTOCOL, "unmasked client frame");
    if (h->op & 0x8) {
        if (!h->fin)
            return fail(why, FL_WS_CLOSE_PROTOCOL, "fragmented control frame");
        if (len > 125)
            return fail(why, FL_WS_CLOSE_PROTOCOL,
                        "control frame over 125 bytes");
    } else if (h->op == FL_WS_OP_CONT && rx->msg_op == 0) {
        return fail(why, FL_WS_CLOSE_PROTOCOL,
                    "continuation without a message");
    } else if (h->op != FL_WS_OP_CONT && rx->msg_op != 0) {
        return fail(why, FL_WS_CLOSE_PROTOCOL,
                    "new message inside a fragmented one");
    }
    ext = len == 126 ? 2 : len == 127 ? 8 : 0;
    h->hlen = 2 + ext + 4;
    if (n < 2 + ext)
        return 0;
    if (ext) {
        len = 0;
        for (i = 0; i < ext; i++)
            len = len << 8 | p[2 + i];
        if (len >> 63)
            return fail(why, FL_WS_CLOSE_PROTOCOL, "length with top bit set");
    }
    /* msg_len < 2^32 and len < 2^63: the sum cannot wrap */
    if (!(h->op & 0x8) && rx->msg_len + len > max)
        return fail(why, FL_WS_CLOSE_TOO_BIG, "message too big");
    h->plen = len;
    if (n >= h->hlen)
        memcpy(h->mask, p + 2 + ext, 4);
    return 0;
}

static void unmask(unsigned char *p, size_t len, const unsigned char mask[4])
{
    size_t i;

    for (i = 0; i < len; i++)
        p[i] ^= mask[i & 3];
}

static void part_free(fl_wsrx_t *rx)
{
    free(rx->part);
    rx->part = NULL;
    rx->part_len = rx->part_cap = 0;
}

static void msg_free(fl_wsrx_t *rx)
{
    free(rx->msg);
    rx->msg = NULL;
    rx->msg_len = rx->msg_cap = 0;
    rx->msg_op = 0;
}

/* Add a fragment's payload to rx->msg; hdr_parse() has checked that
 * msg_len + len <= max. Capacity doubles, up to max. */
static void msg_append(fl_wsrx_t *rx, const unsigned char *p, size_t len,
                       size_t max)
{
    size_t need = (size_t)rx->msg_len + len, cap;

    if (len == 0)
        return;
    if (need > rx->msg_cap) {
        cap = fl_max(need, fl_min((size_t)rx->msg_cap * 2, max));
        rx->msg = fl_realloc(rx->msg, cap);
        rx->msg_cap = (uint32_t)cap;
    }
    memcpy(rx->msg + rx->msg_len, p, len);
    rx->msg_len = (uint32_t)need;
}

/* Hand over a whole text or binary message. */
static int deliver(int op, unsigned char *p, size_t len,
                   const fl_wsrx_ops_t *ops, void *ud, const char **why)
{
    if (op == FL_WS_OP_TEXT && !fl_utf8_valid(p, len))
        return fail(why, FL_WS_CLOSE_BAD_DATA, "text message is not UTF-8");
    return ops->on_message(ud, op, p, len) ? FL_WS_STOPPED : 0;
}

/* Section 7.4: the codes a peer may send. */
static int close_code_ok(int code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

static int close_frame(fl_wsrx_t *rx, unsigned char *p, size_t len,
                       const fl_wsrx_ops_t *ops, void *ud, const char **why)
{
    int code = FL_WS_CLOSE_NO_STATUS;

    if (len == 1)
        return fail(why, FL_WS_CLOSE_PROTOCOL, "close frame of 1 byte");
    if (len >= 2) {
        code = p[0] << 8 | p[1];
        if (!close_code_ok(code))
            return fail(why, FL_WS_CLOSE_PROTOCOL, "invalid close code");
        if (!fl_utf8_valid(p + 2, len - 2))
            return fail(why, FL_WS_CLOSE_BAD_DATA, "close reason is not UTF-8");
    }
    if (ops->on_close(ud, code, len ? (const char *)p + 2 : "",
                      len ? len - 2 : 0))
        return FL_WS_STOPPED;
    part_free(rx);
    msg_free(rx);
    rx->done = 1;
    return 0;
}

/* One whole frame: its header h, its masked payload at p. Returns 0,
 * FL_WS_STOPPED or a close code. */
static int frame(fl_wsrx_t *rx, size_t max, const hdr_t *h, unsigned char *p,
                 const fl_wsrx_ops_t *ops, void *ud, const char **why)
{
    size_t len = (size_t)h->plen;
    int    rc;

    unmask(p, len, h->mask);
    switch (h->op) {
    case FL_WS_OP_PING:
    case FL_WS_OP_PONG:
        return ops->on_control(ud, h->op, p, len) ? FL_WS_STOPPED : 0;
    case FL_WS_OP_CLOSE: return close_frame(rx, p, len, ops, ud, why);
    case FL_WS_OP_TEXT:
    case FL_WS_OP_BINARY:
        if (h->fin)
            return deliver(h->op, p, len, ops, ud, why);
        rx->msg_op = h->op;
        break;
    }
    /* the first fragment, or a continuation */
    msg_append(rx, p, len, max);
    if (!h->fin)
        return 0;
    /* a message of empty fragments has no buffer: p is as good */
    rc = deliver(rx->msg_op, rx->msg ? rx->msg : p, rx->msg_len, ops, ud, why);
    if (rc == 0)
        msg_free(rx);
    return rc;
}

/* Move bytes from data[*i..n) to rx->part until it holds upto bytes. */
static void part_take(fl_wsrx_t *rx, const unsigned char *data, size_t n,
                      size_t *i, size_t upto)
{
    size_t k = fl_min(upto - rx->part_len, n - *i);

    memcpy(rx->part + rx->part_len, data + *i, k);
    rx->part_len += (uint32_t)k;
    *i += k;
}

/* Go on with the frame in rx->part: take what it lacks from data[*i..n)
 * and, when it is whole, handle it and give part back. */
static int part_feed(fl_wsrx_t *rx, size_t max, const unsigned char *data,
                     size_t n, size_t *i, const fl_wsrx_ops_t *ops, void *ud,
                     const char **why)
{
    hdr_t  h;
    size_t total;
    int    rc;

    for (;;) {
        rc = hdr_parse(rx, max, rx->part, rx->part_len, &h, why);
        if (rc)
            return rc;
        if (rx->part_len >= h.hlen)
            break;
        if (*i == n)
            return 0;
        part_take(rx, data, n, i, h.hlen);
    }
    total = h.hlen + (size_t)h.plen;
    if (total > rx->part_cap) {
        rx->part = fl_realloc(rx->part, total);
        rx->part_cap = (uint32_t)total;
    }
    part_take(rx, data, n, i, total);
    if (rx->part_len < total)
        return 0;
    rc = frame(rx, max, &h, rx->part + h.hlen, ops, ud, why);
    if (rc != FL_WS_STOPPED)
        part_free(rx);
    return rc;
}

/* Keep p[0..n), the start of a frame, in a buffer of PART_HDR bytes while
 * its header is incomplete, else of the whole frame's size. */
static void part_start(fl_wsrx_t *rx, const hdr_t *h, const unsigned char *p,
                       size_t n)
{
    size_t cap = n >= h->hlen ? h->hlen + (size_t)h->plen : PART_HDR;

    rx->part = fl_alloc(cap);
    rx->part_cap = (uint32_t)cap;
    memcpy(rx->part, p, n);
    rx->part_len = (uint32_t)n;
}

/* After an error the reader holds nothing and takes nothing more. */
static int failed(fl_wsrx_t *rx, int rc)
{
    if (rc != FL_WS_STOPPED) {
        part_free(rx);
        msg_free(rx);
        rx->done = 1;
    }
    return rc;
}

int fl_wsrx_feed(fl_wsrx_t *rx, unsigned char *data, size_t n,
                 const fl_wsrx_ops_t *ops, void *ud, const char **why)
{
    size_t max = fl_min(ops->max_message, MSG_MAX), i = 0, avail;
    hdr_t  h;
    int    rc;

    if (rx->done)
        return 0;
    if (rx->part) {
        rc = part_feed(rx, max, data, n, &i, ops, ud, why);
        if (rc)
            return failed(rx, rc);
    }
    while (i < n && !rx->done) {
        avail = n - i;
        rc = hdr_parse(rx, max, data + i, avail, &h, why);
        if (rc)
            return failed(rx, rc);
        if (avail < h.hlen || avail - h.hlen < h.plen) {
            part_start(rx, &h, data + i, avail);
            return 0;
        }
        rc = frame(rx, max, &h, data + i + h.hlen, ops, ud, why);
        if (rc)
            return failed(rx, rc);
        i += h.hlen + (size_t)h.plen;
    }
    return 0;
}

void fl_wsrx_free(fl_wsrx_t *rx)
{
    free(rx->part);
    free(rx->msg);
    memset(rx, 0, sizeof(*rx));
}

size_t fl_wsrx_memory(const fl_wsrx_t *rx)
{
    return (size_t)rx->part_cap + rx->msg_cap;
}

/* ---- writers ---------------------------------------------------------- */

size_t fl_ws_header(unsigned char out[FL_WS_HEADER_MAX], int opcode,
                    uint64_t len)
{
    size_t n, i;

    out[0] = (unsigned char)(0x80 | (opcode & 0x0f));
    if (len < 126) {
        out[1] = (unsigned char)len;
        return 2;
    }
    if (len <= 0xffff) {
        out[1] = 126;
        n = 2;
    } else {
        out[1] = 127;
        n = 8;
    }
    for (i = 0; i < n; i++)
        out[2 + i] = (unsigned char)(len >> (8 * (n - 1 - i)));
    return 2 + n;
}

/* The reason is cut after its last whole UTF-8 sequence that fits, or
 * before its first malformed one: the peer refuses a reason that is not
 * UTF-8 (1007). */
size_t fl_ws_close_payload(unsigned char out[125], int code, const char *reason)
{
    const unsigned char *r = (const unsigned char *)(reason ? reason : "");
    size_t               len = strlen((const char *)r), n = 0, k;

    out[0] = (unsigned char)(code >> 8);
    out[1] = (unsigned char)code;
    while (n < len) {
        k = fl_utf8_seq(r + n, len - n);
        if (k == 0 || n + k > 123)
            break;
        n += k;
    }
    memcpy(out + 2, r, n);
    return 2 + n;
}

/* Spaces and tabs around the key are optional whitespace (RFC 9110). */
int fl_ws_accept(const char *key, char out[29])
{
    unsigned char buf[24 + sizeof(WS_GUID) - 1], md[EVP_MAX_MD_SIZE];
    size_t        len;
    unsigned int  mdlen;

    while (*key == ' ' || *key == '\t')
        key++;
    len = strlen(key);
    while (len && (key[len - 1] == ' ' || key[len - 1] == '\t'))
        len--;
    /* 16 bytes are 22 base64 characters and "=="; EVP_DecodeBlock()
     * takes '=' anywhere (as zero bits), so the padding is checked here */
    if (len != 24 || memchr(key, '=', 22) || key[22] != '=' || key[23] != '=')
        return -1;
    if (EVP_DecodeBlock(md, (const unsigned char *)key, 24) != 18)
        return -1;
    memcpy(buf, key, 24);
    memcpy(buf + 24, WS_GUID, sizeof(WS_GUID) - 1);
    if (!EVP_Digest(buf, sizeof(buf), md, &mdlen, EVP_sha1(), NULL) ||
        mdlen != 20)
        return -1;
    EVP_EncodeBlock((unsigned char *)out, md, 20);
    return 0;
}
