/*
 * fuzz_wsframe.c - libFuzzer harness for the RFC 6455 frame reader and
 * writers (fl_wsframe.h).
 *
 * Input: byte 0 picks max_message (low 3 bits), the callback that asks to
 * stop (next 3 bits, 0 for none) and byte-by-byte feeding (bit 6); bytes
 * 1-3 are three cut points; the rest is the client's stream. The stream
 * is fed once whole and once in pieces (at the cuts, or a byte at a
 * time), each piece a malloc'd copy of its own size so that ASan sees a
 * read past it. ASan/UBSan catch memory and arithmetic errors; on top of
 * that:
 *
 *   - both feedings give the same callbacks with the same data and the
 *     same result: a frame or a message cut anywhere reads the same;
 *   - and the same as model(), a plain reading of RFC 6455 written here;
 *   - a result is 0, FL_WS_STOPPED, or 1002, 1007, 1009 with a reason of
 *     printable ASCII that fits a close frame; after it the reader holds
 *     no memory, and later feeds return 0 without a callback;
 *   - a message is text or binary, at most max_message bytes, and text is
 *     UTF-8; a ping or pong is at most 125 bytes; a close has code 1005
 *     and no reason, or a code section 7.4 lets a peer send and a UTF-8
 *     reason of at most 123 bytes; nothing is called after a close;
 *   - the reader never holds more than a frame (max_message + 14, or 139
 *     for a control frame) and a message; fl_wsrx_free() gives it all
 *     back.
 *
 * UTF-8 is checked here with a decoder of its own, not fl_utf8_valid().
 * The input is also given to fl_ws_accept() as a key (accepted exactly
 * when it is 22 base64 characters and "==", spaces and tabs around), and
 * to fl_ws_close_payload() as a reason (the longest UTF-8 prefix of at
 * most 123 bytes); its first 8 bytes give fl_ws_header() a length.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fl_wsframe.h"
#include "fuzz_cuts.h"
#include "fuzz_utf8_ref.h"

static const size_t max_messages[8] = {0, 1, 7, 125, 126, 200, 1000, 65536};

/* The longest valid UTF-8 prefix (fuzz_utf8_ref.h). */
static size_t utf8_prefix(const unsigned char *s, size_t n)
{
    return fuzz_utf8_prefix(s, n);
}

static int utf8_ok(const unsigned char *s, size_t n)
{
    return utf8_prefix(s, n) == n;
}

/* One feeding: the events as bytes (kind, op or code, length, data). */
typedef struct {
    unsigned char *log;
    size_t         len, cap;
    size_t         max; /* max_message */
    int            events;
    int            stop_at; /* the callback of this event returns 1 */
    int            closed;  /* on_close returned 0 */
    int            failed;  /* an error was returned: no more callbacks */
    fl_wsrx_t     *rx;
} run_t;

static void log_add(run_t *r, const void *p, size_t n)
{
    if (r->len + n > r->cap) {
        r->cap = (r->len + n) * 2;
        r->log = realloc(r->log, r->cap);
        if (r->log == NULL)
            abort();
    }
    memcpy(r->log + r->len, p, n);
    r->len += n;
}

static void log_event(run_t *r, int kind, int what, const void *data,
                      size_t len)
{
    unsigned char head[2 + sizeof(int) + sizeof(size_t)];

    head[0] = (unsigned char)kind;
    head[1] = 0;
    memcpy(head + 2, &what, sizeof(int));
    memcpy(head + 2 + sizeof(int), &len, sizeof(size_t));
    log_add(r, head, sizeof(head));
    log_add(r, data, len);
}

/* Common to every callback: nothing after a close or an error, memory
 * within bounds; returns what the callback returns. */
static int event(run_t *r)
{
    size_t frame = (r->max > 125 ? r->max : 125) + 14;

    if (r->closed || r->failed)
        abort();
    if (fl_wsrx_memory(r->rx) > frame + r->max || r->rx->msg_cap > r->max)
        abort();
    return ++r->events == r->stop_at;
}

static int on_message(void *ud, int op, unsigned char *data, size_t len)
{
    run_t *r = ud;

    if ((op != FL_WS_OP_TEXT && op != FL_WS_OP_BINARY) || len > r->max ||
        (len && data == NULL))
        abort();
    if (op == FL_WS_OP_TEXT && !utf8_ok(data, len))
        abort();
    log_event(r, 'm', op, data, len);
    return event(r);
}

static int on_control(void *ud, int op, unsigned char *data, size_t len)
{
    run_t *r = ud;

    if ((op != FL_WS_OP_PING && op != FL_WS_OP_PONG) || len > 125 ||
        (len && data == NULL))
        abort();
    log_event(r, 'c', op, data, len);
    return event(r);
}

static int code_ok(int code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

static int on_close(void *ud, int code, const char *reason, size_t len)
{
    run_t *r = ud;
    int    rc;

    if (reason == NULL || len > 123)
        abort();
    if (code == FL_WS_CLOSE_NO_STATUS ? len != 0 : !code_ok(code))
        abort();
    if (!utf8_ok((const unsigned char *)reason, len))
        abort();
    log_event(r, 'x', code, reason, len);
    rc = event(r);
    r->closed = !rc;
    return rc;
}

static void check_result(const fl_wsrx_t *rx, int rc, const char *why)
{
    size_t i;

    if (rc == 0 || rc == FL_WS_STOPPED)
        return;
    if (rc != FL_WS_CLOSE_PROTOCOL && rc != FL_WS_CLOSE_BAD_DATA &&
        rc != FL_WS_CLOSE_TOO_BIG)
        abort();
    if (why == NULL || why[0] == '\0' || strlen(why) > 123)
        abort();
    for (i = 0; why[i]; i++) {
        if (why[i] < 0x20 || why[i] > 0x7e)
            abort();
    }
    if (!rx->done || fl_wsrx_memory(rx) != 0)
        abort();
}

/* The reader between feeds. */
static void check_idle(const fl_wsrx_t *rx, size_t max)
{
    if (rx->part_len > rx->part_cap || rx->msg_len > rx->msg_cap ||
        rx->msg_cap > max || (rx->part == NULL) != (rx->part_cap == 0) ||
        (rx->msg == NULL) != (rx->msg_cap == 0) ||
        (rx->msg_op != 0 && rx->msg_op != FL_WS_OP_TEXT &&
         rx->msg_op != FL_WS_OP_BINARY) ||
        (rx->msg != NULL && rx->msg_op == 0))
        abort();
}

/*
 * Feed s[0..n) in the pieces that end at cut[0..ncut) and at n, each a
 * malloc'd copy. Returns the first non-zero result, or 0. After an error
 * the rest is still fed and must be ignored.
 */
static int feed(run_t *r, const unsigned char *s, size_t n, const size_t *cut,
                size_t ncut)
{
    fl_wsrx_t      rx;
    fl_wsrx_ops_t  ops = {r->max, on_message, on_control, on_close};
    const char    *why;
    unsigned char *piece;
    size_t         from = 0, to, i;
    int            rc, first = 0;

    memset(&rx, 0, sizeof(rx));
    r->rx = &rx;
    for (i = 0; i <= ncut && first != FL_WS_STOPPED; i++) {
        to = i < ncut ? cut[i] : n;
        piece = malloc(to - from ? to - from : 1);
        if (piece == NULL)
            abort();
        memcpy(piece, s + from, to - from);
        why = NULL;
        rc = fl_wsrx_feed(&rx, piece, to - from, &ops, r, &why);
        free(piece);
        from = to;
        if (first) { /* after an error nothing happens */
            if (rc != 0)
                abort();
            continue;
        }
        check_result(&rx, rc, why);
        if (rc == 0)
            check_idle(&rx, r->max);
        first = rc;
        r->failed = rc != 0 && rc != FL_WS_STOPPED;
    }
    if (r->closed && (!rx.done || fl_wsrx_memory(&rx) != 0))
        abort();
    fl_wsrx_free(&rx);
    if (fl_wsrx_memory(&rx) != 0 || rx.part || rx.msg || rx.done || rx.msg_op)
        abort();
    return first;
}

static int b64_char(int c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           (c >= '0' && c <= '9') || c == '+' || c == '/';
}

/* fl_ws_accept() takes a key exactly when it is 22 base64 characters and
 * "==", with spaces and tabs around. */
static void check_accept(const uint8_t *data, size_t size)
{
    char        key[64], out[29];
    const char *k;
    size_t      n, i;
    int         want;

    n = size < sizeof(key) - 1 ? size : sizeof(key) - 1;
    memcpy(key, data, n);
    key[n] = '\0';
    for (k = key; *k == ' ' || *k == '\t'; k++)
        ;
    n = strlen(k);
    while (n && (k[n - 1] == ' ' || k[n - 1] == '\t'))
        n--;
    want = n == 24 && k[22] == '=' && k[23] == '=';
    for (i = 0; want && i < 22; i++)
        want = b64_char(k[i]);
    memset(out, 'x', sizeof(out));
    if (fl_ws_accept(key, out) != (want ? 0 : -1))
        abort();
    if (want) {
        if (strlen(out) != 28 || out[27] != '=')
            abort();
        for (i = 0; i < 27; i++) {
            if (!b64_char(out[i]))
                abort();
        }
    }
}

/* fl_ws_close_payload(): the code, then the longest UTF-8 prefix of the
 * reason that fits 123 bytes. */
static void check_close_payload(const uint8_t *data, size_t size)
{
    char          reason[256];
    unsigned char out[125];
    size_t        n, got, want;
    int           code = size ? data[0] << 8 | (size > 1 ? data[1] : 0) : 1000;

    n = size < sizeof(reason) - 1 ? size : sizeof(reason) - 1;
    memcpy(reason, data, n);
    reason[n] = '\0';
    n = strlen(reason);
    want = utf8_prefix((const unsigned char *)reason, n);
    while (want > 123) /* back to the start of a sequence */
        while ((reason[--want] & 0xc0) == 0x80)
            ;
    got = fl_ws_close_payload(out, code, reason);
    if (got != 2 + want || out[0] != (unsigned char)(code >> 8) ||
        out[1] != (unsigned char)code || memcmp(out + 2, reason, want) != 0)
        abort();
}

/*
 * The model: RFC 6455 read the plain way, the whole stream at once, each
 * frame's payload copied out and the message assembled in a buffer of its
 * own. Logs what the reader must call and returns what it must return.
 */
static int model(run_t *r, const unsigned char *s, size_t n)
{
    static unsigned char msg[65536], ctl[125];
    unsigned char       *pay;
    size_t               max = r->max, i = 0, hlen, k, mlen = 0;
    uint64_t             len;
    int                  op, fin, mop = 0, code;

    for (;;) {
        if (n - i < 2)
            return 0;
        fin = s[i] >> 7;
        op = s[i] & 15;
        len = s[i + 1] & 127;
        if ((s[i] & 0x70) || (op > 2 && op < 8) || op > 10 ||
            !(s[i + 1] & 0x80))
            return FL_WS_CLOSE_PROTOCOL;
        if (op >= 8 ? !fin || len > 125 : (op == 0) == (mop == 0))
            return FL_WS_CLOSE_PROTOCOL;
        hlen = len == 126 ? 4 : len == 127 ? 10 : 2;
        if (n - i < hlen)
            return 0;
        if (hlen > 2)
            for (len = 0, k = 2; k < hlen; k++)
                len = len << 8 | s[i + k];
        if (len >> 63)
            return FL_WS_CLOSE_PROTOCOL;
        if (op < 8 && mlen + len > max)
            return FL_WS_CLOSE_TOO_BIG;
        if (n - i - hlen < 4 || n - i - hlen - 4 < len)
            return 0;
        pay = op >= 8 ? ctl : msg + mlen; /* len fits, as checked */
        for (k = 0; k < len; k++)
            pay[k] = s[i + hlen + 4 + k] ^ s[i + hlen + (k & 3)];
        i += hlen + 4 + len;
        if (op == FL_WS_OP_CLOSE) {
            if (len == 1)
                return FL_WS_CLOSE_PROTOCOL;
            code = len ? pay[0] << 8 | pay[1] : FL_WS_CLOSE_NO_STATUS;
            if (len && !code_ok(code))
                return FL_WS_CLOSE_PROTOCOL;
            if (len && !utf8_ok(pay + 2, len - 2))
                return FL_WS_CLOSE_BAD_DATA;
            log_event(r, 'x', code, pay + 2, len ? len - 2 : 0);
            return ++r->events == r->stop_at ? FL_WS_STOPPED : 0;
        }
        if (op >= 8) {
            log_event(r, 'c', op, pay, len);
            if (++r->events == r->stop_at)
                return FL_WS_STOPPED;
            continue;
        }
        mlen += len;
        if (op)
            mop = op;
        if (!fin)
            continue;
        if (mop == FL_WS_OP_TEXT && !utf8_ok(msg, mlen))
            return FL_WS_CLOSE_BAD_DATA;
        log_event(r, 'm', mop, msg, mlen);
        if (++r->events == r->stop_at)
            return FL_WS_STOPPED;
        mop = 0;
        mlen = 0;
    }
}

/* fl_ws_header(): FIN, the opcode, no mask, the shortest length form. */
static void check_header(uint64_t len)
{
    unsigned char out[FL_WS_HEADER_MAX];
    size_t        n = fl_ws_header(out, FL_WS_OP_PONG, len), i;
    uint64_t      got = out[1];

    if (n != (len < 126 ? 2 : len <= 0xffff ? 4 : 10) || out[0] != 0x8a)
        abort();
    if (n > 2) {
        if (out[1] != (n == 4 ? 126 : 127))
            abort();
        for (got = 0, i = 2; i < n; i++)
            got = got << 8 | out[i];
    }
    if (got != len)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    run_t                whole, split, ref;
    const unsigned char *s = data + 4;
    size_t               n, cut[3], *cuts = cut, ncut = 3;
    int                  rc_whole, rc_split, rc_ref;

    check_accept(data, size);
    check_close_payload(data, size);
    if (size >= 8) {
        uint64_t len;

        memcpy(&len, data, 8);
        check_header(len >> (data[0] & 63));
    }
    if (size < 4)
        return 0;
    n = size - 4;

    memset(&whole, 0, sizeof(whole));
    whole.max = max_messages[data[0] & 7];
    whole.stop_at = (data[0] >> 3) & 7;
    split = ref = whole;

    /* bit 0x40: a byte at a time */
    fuzz_cuts(data + 1, n, (data[0] & 0x40) != 0, cut, &cuts, &ncut);

    rc_whole = feed(&whole, s, n, NULL, 0);
    rc_split = feed(&split, s, n, cuts, ncut);
    rc_ref = model(&ref, s, n);
    if (rc_whole != rc_split || whole.len != split.len ||
        whole.events != split.events ||
        (whole.len && memcmp(whole.log, split.log, whole.len) != 0))
        abort();
    if (rc_whole != rc_ref || whole.len != ref.len ||
        (whole.len && memcmp(whole.log, ref.log, whole.len) != 0))
        abort();

    if (cuts != cut)
        free(cuts);
    free(whole.log);
    free(split.log);
    free(ref.log);
    return 0;
}
