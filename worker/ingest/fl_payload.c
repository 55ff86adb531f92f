/*
 * fl_payload.c - MQTT topics and telemetry payloads into points.
 *
 * A payload goes through three steps:
 *
 *   1. fl_scan() (fl_scan.c): one O(n) pass, no allocation, no recursion,
 *      that checks the RFC 8259 grammar, strict UTF-8, \u escapes, the
 *      nesting depth and the number literals, and counts the scalar
 *      values. cJSON is lax (leading zeros, raw control bytes, "1." ...)
 *      and recursive (a 10,000-deep input would cost 10,000 frames before
 *      its own limit of 1000); after this pass it only sees documents it
 *      parses exactly.
 *   2. cJSON_ParseWithLengthOpts() builds the tree.
 *   3. The tree is walked into one arena (a chain of blocks, normally a
 *      single malloc sized from the scan), then cJSON's tree is freed: the
 *      result owns no cJSON memory.
 *
 * Rejections carry a reason and a one-line message that is always valid
 * UTF-8 without control characters, so it can go into a log line or a
 * JSON dead-letter entry as is.
 */
#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl_payload.h"
#include "fl_time.h"

#define FL_TS_MAX_US   253402300799999999LL /* 9999-12-31T23:59:59.999999Z */
#define FL_SENML_REL_S 268435456.0          /* 2^28: RFC 8428 section 4.5.3 */
#define FL_QUOTE_MAX   40                   /* bytes of a name in a message */
#define FL_ARENA_ALIGN 8
#define FL_ARENA_MIN   1024
#define FL_NO_REC      ((size_t)-1)

static const char *const fl_reject_names[FL_REJECT_COUNT] = {
    [FL_REJECT_NONE] = "ok",
    [FL_REJECT_BAD_TOPIC] = "bad_topic",
    [FL_REJECT_BAD_DEVICE_ID] = "bad_device_id",
    [FL_REJECT_EMPTY] = "empty",
    [FL_REJECT_TOO_LARGE] = "too_large",
    [FL_REJECT_NOT_UTF8] = "not_utf8",
    [FL_REJECT_INVALID_JSON] = "invalid_json",
    [FL_REJECT_TOO_DEEP] = "too_deep",
    [FL_REJECT_NOT_AN_OBJECT] = "not_an_object",
    [FL_REJECT_ARRAY_VALUE] = "array_value",
    [FL_REJECT_TOO_MANY_METRICS] = "too_many_metrics",
    [FL_REJECT_NAME_TOO_LONG] = "name_too_long",
    [FL_REJECT_BAD_NAME] = "bad_name",
    [FL_REJECT_DUPLICATE_METRIC] = "duplicate_metric",
    [FL_REJECT_BAD_TIMESTAMP] = "bad_timestamp",
    [FL_REJECT_BAD_NUMBER] = "bad_number",
    [FL_REJECT_BAD_STRING] = "bad_string",
    [FL_REJECT_STRING_TOO_LONG] = "string_too_long",
    [FL_REJECT_BATCH_TOO_LARGE] = "batch_too_large",
    [FL_REJECT_BAD_SENML] = "bad_senml",
    [FL_REJECT_NO_METRICS] = "no_metrics",
    [FL_REJECT_INTERNAL] = "internal",
    [FL_REJECT_BAD_ACK] = "bad_ack",
    [FL_REJECT_UNKNOWN_COMMAND] = "unknown_command",
};

const char *fl_reject_name(fl_reject_reason_t reason)
{
    if ((unsigned)reason >= FL_REJECT_COUNT)
        return "unknown";
    return fl_reject_names[reason];
}

const char *fl_payload_form_name(fl_payload_form_t form)
{
    switch (form) {
    case FL_FORM_FLAT: return "flat";
    case FL_FORM_VALUES: return "values";
    case FL_FORM_BATCH: return "batch";
    case FL_FORM_SENML: return "senml";
    }
    return "unknown";
}

void fl_payload_limits_default(fl_payload_limits_t *lim)
{
    lim->max_payload_bytes = 65536;
    lim->max_metrics = 1000;
    lim->max_name_len = 128;
    lim->max_depth = 8;
    lim->max_batch = 1000;
    lim->max_string_bytes = 1024;
    lim->min_ts_ms = FL_PAYLOAD_TS_MIN_MS;
    lim->max_future_ms = 86400000;
}

/* A message cut by vsnprintf may end inside a UTF-8 sequence: drop it. */
static void fl_msg_trim(char *msg)
{
    size_t n = strlen(msg), i = n, need;

    while (i > 0 && ((unsigned char)msg[i - 1] & 0xc0) == 0x80)
        i--;
    if (i == 0 || (unsigned char)msg[i - 1] < 0xc0)
        return;
    need = (unsigned char)msg[i - 1] >= 0xf0   ? 4
           : (unsigned char)msg[i - 1] >= 0xe0 ? 3
                                               : 2;
    if (n - (i - 1) < need)
        msg[i - 1] = '\0';
}

static fl_printf(3, 4) int fl_reject(fl_reject_t *why, fl_reject_reason_t r,
                                     const char *fmt, ...)
{
    va_list ap;

    why->reason = r;
    va_start(ap, fmt);
    vsnprintf(why->msg, sizeof(why->msg), fmt, ap);
    va_end(ap);
    fl_msg_trim(why->msg);
    return FL_ERROR;
}

/*
 * Copy s[0..n) into dst (size > FL_QUOTE_MAX + 4) for a message: at most
 * FL_QUOTE_MAX bytes of whole UTF-8 sequences, control characters and
 * malformed bytes as '?', "..." when cut. Returns dst.
 */
static const char *fl_quote(char *dst, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t               i = 0, o = 0, k;

    while (i < n && o < FL_QUOTE_MAX) {
        if (p[i] < 0x20 || p[i] == 0x7f || p[i] == '"' || p[i] == '\\') {
            dst[o++] = p[i] < 0x20 || p[i] == 0x7f ? '?' : '\'';
            i++;
            continue;
        }
        k = fl_utf8_seq(p + i, n - i);
        if (k == 0 || (k == 2 && p[i] == 0xc2 && p[i + 1] < 0xa0)) {
            dst[o++] = '?'; /* malformed, or a C1 control */
            i += k ? k : 1;
            continue;
        }
        if (o + k > FL_QUOTE_MAX)
            break;
        memcpy(dst + o, p + i, k);
        o += k;
        i += k;
    }
    if (i < n) {
        memcpy(dst + o, "...", 3);
        o += 3;
    }
    dst[o] = '\0';
    return dst;
}

/* The reject reason of a failed fl_scan(): the one of the same name. */
static fl_reject_reason_t fl_scan_reason(fl_scan_err_t err)
{
    switch (err) {
    case FL_SCAN_NOT_UTF8: return FL_REJECT_NOT_UTF8;
    case FL_SCAN_INVALID_JSON: return FL_REJECT_INVALID_JSON;
    case FL_SCAN_TOO_DEEP: return FL_REJECT_TOO_DEEP;
    case FL_SCAN_BAD_NUMBER: return FL_REJECT_BAD_NUMBER;
    case FL_SCAN_BAD_STRING: return FL_REJECT_BAD_STRING;
    case FL_SCAN_OK: break;
    }
    return FL_REJECT_INTERNAL;
}

/* ---- topics ----------------------------------------------------------- */

int fl_device_id_valid(const char *id, size_t len)
{
    size_t i;

    if (len == 0 || len > FL_DEVICE_ID_MAX)
        return 0;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)id[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '.' || c == ':' ||
              c == '-'))
            return 0;
    }
    return 1;
}

int fl_topic_parse(const char *topic, size_t len,
                   char device[FL_DEVICE_ID_MAX + 1], fl_topic_kind_t *kind,
                   fl_reject_t *why)
{
    static const char prefix[] = "devices/";
    const size_t      plen = sizeof(prefix) - 1;
    fl_reject_t       dummy;
    const char       *id, *slash, *rest;
    size_t            idlen, restlen;
    char              q[FL_QUOTE_MAX + 4];

    if (why == NULL)
        why = &dummy;
    why->reason = FL_REJECT_NONE;
    why->msg[0] = '\0';
    device[0] = '\0';

    if (len < plen || memcmp(topic, prefix, plen) != 0)
        return fl_reject(why, FL_REJECT_BAD_TOPIC,
                         "topic \"%s\" does not start with devices/",
                         fl_quote(q, topic, len));
    id = topic + plen;
    slash = memchr(id, '/', len - plen);
    if (slash == NULL)
        return fl_reject(why, FL_REJECT_BAD_TOPIC,
                         "topic \"%s\" has no /telemetry, /state or "
                         "/commands/ack",
                         fl_quote(q, topic, len));
    idlen = (size_t)(slash - id);
    rest = slash + 1;
    restlen = len - plen - idlen - 1;

    if (restlen == 9 && memcmp(rest, "telemetry", 9) == 0)
        *kind = FL_TOPIC_TELEMETRY;
    else if (restlen == 5 && memcmp(rest, "state", 5) == 0)
        *kind = FL_TOPIC_STATE;
    else if (restlen == 12 && memcmp(rest, "commands/ack", 12) == 0)
        *kind = FL_TOPIC_CMD_ACK;
    else
        return fl_reject(why, FL_REJECT_BAD_TOPIC,
                         "topic \"%s\": expected devices/ID/telemetry, "
                         "devices/ID/state or devices/ID/commands/ack",
                         fl_quote(q, topic, len));

    if (idlen == 0)
        return fl_reject(why, FL_REJECT_BAD_DEVICE_ID, "empty device id");
    if (idlen > FL_DEVICE_ID_MAX)
        return fl_reject(why, FL_REJECT_BAD_DEVICE_ID,
                         "device id is %zu bytes, limit %d", idlen,
                         FL_DEVICE_ID_MAX);
    if (!fl_device_id_valid(id, idlen))
        return fl_reject(why, FL_REJECT_BAD_DEVICE_ID,
                         "device id \"%s\" has a character outside "
                         "[A-Za-z0-9_.:-]",
                         fl_quote(q, id, idlen));

    memcpy(device, id, idlen);
    device[idlen] = '\0';
    return FL_OK;
}

/* ---- arena ------------------------------------------------------------ */

/* A block of the result arena; the newest block is the head. */
typedef struct fl_arena_blk_s fl_arena_blk_t;
struct fl_arena_blk_s {
    fl_arena_blk_t *next;
    size_t          size;
    size_t          used;
};

#define FL_ARENA_HDR                                 \
    ((sizeof(fl_arena_blk_t) + FL_ARENA_ALIGN - 1) & \
     ~(size_t)(FL_ARENA_ALIGN - 1))

/* Allocate a first block of size bytes (the scan's estimate). */
static void fl_arena_init(fl_arena_blk_t **head, size_t size)
{
    fl_arena_blk_t *b = fl_alloc(FL_ARENA_HDR + size);

    b->next = NULL;
    b->size = size;
    b->used = 0;
    *head = b;
}

/*
 * n bytes aligned to FL_ARENA_ALIGN (or unaligned when align is 0, for
 * strings). Never fails (fl_alloc aborts); a full block is followed by
 * one twice its size, so an underestimate costs O(log) mallocs.
 */
static void *fl_arena_alloc(fl_arena_blk_t **head, size_t n, int align)
{
    fl_arena_blk_t *b = *head;
    size_t          off = b->used, size;

    if (align)
        off = (off + FL_ARENA_ALIGN - 1) & ~(size_t)(FL_ARENA_ALIGN - 1);
    if (off > b->size || b->size - off < n) {
        size = b->size * 2 > n ? b->size * 2 : n;
        b = fl_alloc(FL_ARENA_HDR + size);
        b->next = *head;
        b->size = size;
        *head = b;
        off = 0;
    }
    b->used = off + n;
    return (char *)b + FL_ARENA_HDR + off;
}

static void fl_arena_free(fl_arena_blk_t *b)
{
    fl_arena_blk_t *next;

    for (; b != NULL; b = next) {
        next = b->next;
        free(b);
    }
}

/* ---- timestamps ------------------------------------------------------- */

/* ---- building the result ---------------------------------------------- */

typedef struct {
    const fl_payload_limits_t *lim;
    int64_t                    now_us;
    int64_t                    ts_lo, ts_hi; /* accepted timestamps, us */
    fl_arena_blk_t            *arena;
    fl_metric_t               *m;  /* metrics in the order found */
    int64_t                   *ts; /* their times, epoch us */
    size_t                     n, cap;
    char                      *name; /* name being built */
    size_t                     name_cap;
    size_t                     nulls;
    int                        senml; /* the payload is a SenML pack */
    unsigned char              rel;   /* the next metrics' time is relative */
    fl_reject_t               *why;
} fl_build_t;

static char *fl_build_strdup(fl_build_t *b, const char *s, size_t n)
{
    char *p = fl_arena_alloc(&b->arena, n + 1, 0);

    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

/* Reject us (epoch microseconds) outside [ts_lo, ts_hi]; rec is the
 * SenML record it comes from, or FL_NO_REC for a "ts" field. The message
 * speaks milliseconds, the unit of "ts". */
static int fl_ts_range(fl_build_t *b, double us, size_t rec)
{
    char   what[40] = "ts";
    double ms = us / 1000.0;

    if (us >= (double)b->ts_lo && us <= (double)b->ts_hi)
        return FL_OK;
    if (rec != FL_NO_REC)
        snprintf(what, sizeof(what), "record %zu: time", rec);
    if (us < (double)b->ts_lo)
        return fl_reject(b->why, FL_REJECT_BAD_TIMESTAMP,
                         "%s %.15g is before the earliest accepted %lld%s",
                         what, ms, (long long)(b->ts_lo / 1000),
                         rec == FL_NO_REC && ms >= 946684800.0 && ms < 1e11
                             ? " (seconds? ts is in milliseconds)"
                             : "");
    return fl_reject(b->why, FL_REJECT_BAD_TIMESTAMP,
                     "%s %.15g is after the latest accepted %lld", what, ms,
                     (long long)(b->ts_hi / 1000));
}

/* "ts" of forms 1 and 2: integral epoch ms or an RFC 3339 string. */
static int fl_ts_json(fl_build_t *b, const cJSON *v, int64_t *out)
{
    char   q[FL_QUOTE_MAX + 4];
    double d;

    if ((v->type & 0xff) == cJSON_Number) {
        d = v->valuedouble;
        if (!(d == d) || d - d != 0)
            return fl_reject(b->why, FL_REJECT_BAD_TIMESTAMP,
                             "ts is not a finite number");
        if (fl_ts_range(b, d * 1000.0, FL_NO_REC) != FL_OK)
            return FL_ERROR;
        *out = (int64_t)d;
        if ((double)*out != d)
            return fl_reject(b->why, FL_REJECT_BAD_TIMESTAMP,
                             "ts %.3f is not an integer number of "
                             "milliseconds",
                             d);
        *out *= 1000;
        return FL_OK;
    }
    if ((v->type & 0xff) == cJSON_String) {
        if (fl_rfc3339_us(v->valuestring, strlen(v->valuestring), 0, out) !=
            FL_OK)
            return fl_reject(
                b->why, FL_REJECT_BAD_TIMESTAMP,
                "ts \"%s\" is not an RFC 3339 date-time",
                fl_quote(q, v->valuestring, strlen(v->valuestring)));
        return fl_ts_range(b, (double)*out, FL_NO_REC);
    }
    return fl_reject(b->why, FL_REJECT_BAD_TIMESTAMP,
                     "ts must be epoch milliseconds or an RFC 3339 string");
}

/* Append a metric named b->name[0..nlen) at ts; NULL when over a limit. */
static fl_metric_t *fl_add(fl_build_t *b, size_t nlen, int64_t ts)
{
    fl_metric_t *m;

    if (b->n >= b->lim->max_metrics) {
        fl_reject(b->why, FL_REJECT_TOO_MANY_METRICS, "more than %zu metrics",
                  b->lim->max_metrics);
        return NULL;
    }
    if (b->n >= b->cap) {
        fl_reject(b->why, FL_REJECT_INTERNAL, "more metrics than values");
        return NULL;
    }
    m = &b->m[b->n];
    b->ts[b->n] = ts;
    b->n++;
    memset(m, 0, sizeof(*m));
    m->name = fl_build_strdup(b, b->name, nlen);
    m->rel = b->rel;
    return m;
}

static int fl_add_num(fl_build_t *b, size_t nlen, int64_t ts, double v,
                      const char *unit)
{
    fl_metric_t *m;
    char         q[FL_QUOTE_MAX + 4];

    if (!(v == v) || v - v != 0)
        return fl_reject(b->why, FL_REJECT_BAD_NUMBER,
                         "\"%s\" is not a finite number",
                         fl_quote(q, b->name, nlen));
    m = fl_add(b, nlen, ts);
    if (m == NULL)
        return FL_ERROR;
    m->type = FL_METRIC_NUM;
    m->num = v;
    m->unit = unit;
    return FL_OK;
}

static int fl_add_str(fl_build_t *b, size_t nlen, int64_t ts, const char *s,
                      const char *unit)
{
    fl_metric_t *m;
    size_t       n = strlen(s);
    char         q[FL_QUOTE_MAX + 4];

    if (n > b->lim->max_string_bytes)
        return fl_reject(b->why, FL_REJECT_STRING_TOO_LONG,
                         "\"%s\" is a %zu-byte string, limit %zu",
                         fl_quote(q, b->name, nlen), n,
                         b->lim->max_string_bytes);
    m = fl_add(b, nlen, ts);
    if (m == NULL)
        return FL_ERROR;
    m->type = FL_METRIC_STR;
    m->str = fl_build_strdup(b, s, n);
    m->unit = unit;
    return FL_OK;
}

/* 1 when s[0..n) holds a C0 control, DEL or a C1 control (U+0080-9F). */
static int fl_has_control(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t               i;

    for (i = 0; i < n; i++) {
        if (p[i] < 0x20 || p[i] == 0x7f)
            return 1;
        if (p[i] == 0xc2 && i + 1 < n && p[i + 1] >= 0x80 && p[i + 1] < 0xa0)
            return 1;
    }
    return 0;
}

/*
 * Emit the members of obj under the name prefix b->name[0..plen) at ts.
 * top: obj is the message object itself, whose "ts" is not a metric.
 * Recursion is bounded by the scan's depth cap.
 */
static int fl_flatten(fl_build_t *b, const cJSON *obj, size_t plen, int64_t ts,
                      int top)
{
    const cJSON *c;
    size_t       klen, nlen;
    char         q[FL_QUOTE_MAX + 4];
    int          rc;

    for (c = obj->child; c != NULL; c = c->next) {
        if (top && strcmp(c->string, "ts") == 0)
            continue;
        klen = strlen(c->string);
        if (klen == 0)
            return fl_reject(b->why, FL_REJECT_BAD_NAME,
                             plen ? "empty name under \"%s\"" : "empty name%s",
                             plen ? fl_quote(q, b->name, plen) : "");
        if (fl_has_control(c->string, klen))
            return fl_reject(b->why, FL_REJECT_BAD_NAME,
                             "name \"%s\" has a control character",
                             fl_quote(q, c->string, klen));
        nlen = plen + (plen ? 1 : 0) + klen;
        if (nlen > b->lim->max_name_len || nlen > b->name_cap)
            return fl_reject(
                b->why, FL_REJECT_NAME_TOO_LONG,
                "name \"%s\" is %zu bytes, limit %zu",
                fl_quote(q, plen ? b->name : c->string, plen ? plen : klen),
                nlen, b->lim->max_name_len);
        if (plen)
            b->name[plen] = '.';
        memcpy(b->name + nlen - klen, c->string, klen);
        b->name[nlen] = '\0';

        switch (c->type & 0xff) {
        case cJSON_Object: rc = fl_flatten(b, c, nlen, ts, 0); break;
        case cJSON_Number:
            rc = fl_add_num(b, nlen, ts, c->valuedouble, NULL);
            break;
        case cJSON_String:
            rc = fl_add_str(b, nlen, ts, c->valuestring, NULL);
            break;
        case cJSON_True:
        case cJSON_False:
            rc = FL_ERROR;
            if (fl_add(b, nlen, ts) != NULL) {
                b->m[b->n - 1].type = FL_METRIC_BOOL;
                b->m[b->n - 1].b = (c->type & 0xff) == cJSON_True;
                rc = FL_OK;
            }
            break;
        case cJSON_NULL:
            b->nulls++;
            rc = FL_OK;
            break;
        case cJSON_Array:
            return fl_reject(b->why, FL_REJECT_ARRAY_VALUE,
                             "\"%s\" is an array; arrays are only accepted "
                             "at the top level",
                             fl_quote(q, b->name, nlen));
        default:
            return fl_reject(b->why, FL_REJECT_INTERNAL,
                             "unexpected cJSON type %d", c->type);
        }
        if (rc != FL_OK)
            return FL_ERROR;
    }
    return FL_OK;
}

/*
 * One object of form 1 or 2 (the message or a batch element). Sets *form;
 * refuses an object that yields no metric.
 */
static int fl_object(fl_build_t *b, const cJSON *obj, fl_payload_form_t *form)
{
    const cJSON *c, *tsv = NULL, *values = NULL;
    size_t       nkeys = 0, nts = 0, start = b->n;
    int64_t      ts = b->now_us;

    for (c = obj->child; c != NULL; c = c->next) {
        nkeys++;
        if (strcmp(c->string, "ts") == 0) {
            tsv = c;
            nts++;
        } else if (strcmp(c->string, "values") == 0) {
            values = c;
        }
    }
    if (nts > 1)
        return fl_reject(b->why, FL_REJECT_BAD_TIMESTAMP,
                         "\"ts\" appears more than once");
    if (tsv != NULL && fl_ts_json(b, tsv, &ts) != FL_OK)
        return FL_ERROR;
    b->rel = tsv == NULL;

    if (values != NULL && (values->type & 0xff) == cJSON_Object &&
        nkeys == 1 + nts) {
        *form = FL_FORM_VALUES;
        if (fl_flatten(b, values, 0, ts, 0) != FL_OK)
            return FL_ERROR;
    } else {
        *form = FL_FORM_FLAT;
        if (fl_flatten(b, obj, 0, ts, 1) != FL_OK)
            return FL_ERROR;
    }
    if (b->n == start)
        return fl_reject(b->why, FL_REJECT_NO_METRICS, "no metrics%s",
                         b->nulls ? " (only nulls)" : "");
    return FL_OK;
}

/* ---- SenML ------------------------------------------------------------ */

enum {
    L_BN,
    L_BT,
    L_BU,
    L_BV,
    L_BS,
    L_BVER,
    L_N,
    L_U,
    L_V,
    L_VS,
    L_VB,
    L_VD,
    L_S,
    L_T,
    L_UT,
    L_L,
    L_CT,
    L_BCT,
    L_COUNT
};

static const struct {
    const char *label;
    int         type; /* cJSON type the value must have */
} fl_senml_labels[L_COUNT] = {
    [L_BN] = {"bn", cJSON_String}, [L_BT] = {"bt", cJSON_Number},
    [L_BU] = {"bu", cJSON_String}, [L_BV] = {"bv", cJSON_Number},
    [L_BS] = {"bs", cJSON_Number}, [L_BVER] = {"bver", cJSON_Number},
    [L_N] = {"n", cJSON_String},   [L_U] = {"u", cJSON_String},
    [L_V] = {"v", cJSON_Number},   [L_VS] = {"vs", cJSON_String},
    [L_VB] = {"vb", cJSON_True},   [L_VD] = {"vd", cJSON_String},
    [L_S] = {"s", cJSON_Number},   [L_T] = {"t", cJSON_Number},
    [L_UT] = {"ut", cJSON_Number}, [L_L] = {"l", cJSON_String},
    [L_CT] = {"ct", cJSON_String}, [L_BCT] = {"bct", cJSON_String},
};

/* Base fields in force (RFC 8428 section 4.5). */
typedef struct {
    const char *bn;
    size_t      bnlen;
    const char *bu;
    double      bt, bv, bs;
    const char *unit_src, *unit; /* last unit copied, and its copy */
} fl_senml_base_t;

static int fl_senml_label(const char *s)
{
    int i;

    /* every label starts with b, n, u, v, s, t, l or c: skip the strcmp
     * loop for the usual metric-like keys of a batch */
    if (strchr("bnuvstlc", s[0]) == NULL || s[0] == '\0')
        return -1;
    for (i = 0; i < L_COUNT; i++) {
        if (fl_senml_labels[i].label[0] == s[0] &&
            strcmp(s, fl_senml_labels[i].label) == 0)
            return i;
    }
    return -1;
}

/* RFC 8428 section 4.5.1: [A-Za-z0-9] then [A-Za-z0-9_.:/-]. */
static int fl_senml_name_ok(const char *s, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
            (c >= '0' && c <= '9'))
            continue;
        if (i == 0 ||
            (c != '-' && c != ':' && c != '.' && c != '/' && c != '_'))
            return 0;
    }
    return 1;
}

/* Collect the labels of record i into f[], checking names and types. */
static int fl_senml_fields(fl_build_t *b, const cJSON *rec, size_t i,
                           const cJSON *f[L_COUNT])
{
    static const char *const tname[] = {"a string", "a number", "a boolean"};
    const cJSON             *c;
    char                     q[FL_QUOTE_MAX + 4];
    int                      l, want, type;

    memset(f, 0, sizeof(*f) * L_COUNT);
    for (c = rec->child; c != NULL; c = c->next) {
        l = fl_senml_label(c->string);
        if (l < 0)
            return fl_reject(b->why, FL_REJECT_BAD_SENML,
                             "record %zu: unknown SenML label \"%s\"", i,
                             fl_quote(q, c->string, strlen(c->string)));
        if (f[l] != NULL)
            return fl_reject(b->why, FL_REJECT_BAD_SENML,
                             "record %zu: \"%s\" appears twice", i,
                             fl_senml_labels[l].label);
        want = fl_senml_labels[l].type;
        type = c->type & 0xff;
        if (type == cJSON_False)
            type = cJSON_True;
        if (type != want)
            return fl_reject(b->why, FL_REJECT_BAD_SENML,
                             "record %zu: \"%s\" must be %s", i,
                             fl_senml_labels[l].label,
                             tname[want == cJSON_String   ? 0
                                   : want == cJSON_Number ? 1
                                                          : 2]);
        if (type == cJSON_Number && (!(c->valuedouble == c->valuedouble) ||
                                     c->valuedouble - c->valuedouble != 0))
            return fl_reject(b->why, FL_REJECT_BAD_NUMBER,
                             "record %zu: \"%s\" is not a finite number", i,
                             fl_senml_labels[l].label);
        f[l] = c;
    }
    return FL_OK;
}

/* Resolved SenML time t (seconds) into epoch us: below 2^28 it is relative
 * to now (RFC 8428 section 4.5.3); rounded to the microsecond. */
static int fl_senml_time(fl_build_t *b, double t, size_t i, int64_t *out)
{
    double us;

    if (!(t == t) || t - t != 0)
        return fl_reject(b->why, FL_REJECT_BAD_TIMESTAMP,
                         "record %zu: time is not finite", i);
    us = t * 1000000.0;
    b->rel = t < FL_SENML_REL_S;
    if (b->rel)
        us += (double)b->now_us;
    /* range first (in double), so the conversion cannot overflow */
    if (fl_ts_range(b, us, i) != FL_OK)
        return FL_ERROR;
    *out = us < 0 ? -(int64_t)(0.5 - us) : (int64_t)(us + 0.5);
    if (*out < b->ts_lo || *out > b->ts_hi)
        return fl_ts_range(b, (double)*out + (*out < b->ts_lo ? -1 : 1), i);
    return FL_OK;
}

/*
 * One SenML record: update the base fields, then emit its value and sum.
 * A record with neither is allowed only when it holds nothing but base
 * fields (and ignored labels).
 */
static int fl_senml_record(fl_build_t *b, const cJSON *rec, size_t i,
                           fl_senml_base_t *base)
{
    const cJSON *f[L_COUNT];
    const char  *n, *unit;
    size_t       nlen, len;
    int64_t      ts = 0;
    double       ver;
    int          nval;
    char         q[FL_QUOTE_MAX + 4];
    fl_metric_t *m;

    if ((rec->type & 0xff) != cJSON_Object)
        return fl_reject(b->why, FL_REJECT_BAD_SENML,
                         "record %zu is not an object", i);
    if (fl_senml_fields(b, rec, i, f) != FL_OK)
        return FL_ERROR;

    if (f[L_BVER] != NULL) {
        ver = f[L_BVER]->valuedouble;
        if (ver < 1 || ver > 10 || ver != (double)(int)ver)
            return fl_reject(b->why, FL_REJECT_BAD_SENML,
                             "record %zu: unsupported bver %g (1 to 10)", i,
                             ver);
    }
    if (f[L_BN] != NULL) {
        base->bn = f[L_BN]->valuestring;
        base->bnlen = strlen(base->bn);
    }
    if (f[L_BU] != NULL)
        base->bu = f[L_BU]->valuestring;
    if (f[L_BT] != NULL)
        base->bt = f[L_BT]->valuedouble;
    if (f[L_BV] != NULL)
        base->bv = f[L_BV]->valuedouble;
    if (f[L_BS] != NULL)
        base->bs = f[L_BS]->valuedouble;

    nval = (f[L_V] != NULL) + (f[L_VS] != NULL) + (f[L_VB] != NULL) +
           (f[L_VD] != NULL);
    if (nval > 1)
        return fl_reject(b->why, FL_REJECT_BAD_SENML,
                         "record %zu has more than one value", i);
    if (nval == 0 && f[L_S] == NULL) {
        if (f[L_N] != NULL || f[L_U] != NULL || f[L_T] != NULL ||
            f[L_UT] != NULL)
            return fl_reject(b->why, FL_REJECT_BAD_SENML,
                             "record %zu has no value", i);
        return FL_OK; /* base fields only */
    }

    n = f[L_N] != NULL ? f[L_N]->valuestring : "";
    len = strlen(n);
    nlen = base->bnlen + len;
    if (nlen == 0)
        return fl_reject(b->why, FL_REJECT_BAD_SENML,
                         "record %zu has no name (bn + n)", i);
    if (nlen > b->lim->max_name_len || nlen + 4 > b->name_cap)
        return fl_reject(b->why, FL_REJECT_NAME_TOO_LONG,
                         "record %zu: name is %zu bytes, limit %zu", i, nlen,
                         b->lim->max_name_len);
    memcpy(b->name, base->bn, base->bnlen);
    memcpy(b->name + base->bnlen, n, len);
    b->name[nlen] = '\0';
    if (!fl_senml_name_ok(b->name, nlen))
        return fl_reject(b->why, FL_REJECT_BAD_SENML,
                         "record %zu: \"%s\" is not a SenML name", i,
                         fl_quote(q, b->name, nlen));

    if (fl_senml_time(b, base->bt + (f[L_T] ? f[L_T]->valuedouble : 0), i,
                      &ts) != FL_OK)
        return FL_ERROR;
    unit = f[L_U] != NULL ? f[L_U]->valuestring : base->bu;
    if (unit != NULL && unit != base->unit_src) {
        base->unit_src = unit;
        base->unit = fl_build_strdup(b, unit, strlen(unit));
    }
    if (unit != NULL)
        unit = base->unit;

    if (f[L_V] != NULL) {
        if (fl_add_num(b, nlen, ts, base->bv + f[L_V]->valuedouble, unit) !=
            FL_OK)
            return FL_ERROR;
    } else if (f[L_VS] != NULL || f[L_VD] != NULL) {
        if (fl_add_str(b, nlen, ts, (f[L_VS] ? f[L_VS] : f[L_VD])->valuestring,
                       unit) != FL_OK)
            return FL_ERROR;
    } else if (f[L_VB] != NULL) {
        m = fl_add(b, nlen, ts);
        if (m == NULL)
            return FL_ERROR;
        m->type = FL_METRIC_BOOL;
        m->b = (f[L_VB]->type & 0xff) == cJSON_True;
        m->unit = unit;
    }

    if (f[L_S] != NULL) {
        if (nlen + 4 > b->lim->max_name_len)
            return fl_reject(b->why, FL_REJECT_NAME_TOO_LONG,
                             "record %zu: name of the sum is %zu bytes, "
                             "limit %zu",
                             i, nlen + 4, b->lim->max_name_len);
        memcpy(b->name + nlen, ".sum", 5);
        if (fl_add_num(b, nlen + 4, ts, base->bs + f[L_S]->valuedouble, unit) !=
            FL_OK)
            return FL_ERROR;
    }
    return FL_OK;
}

/* ---- assembling the points -------------------------------------------- */

typedef struct {
    int64_t ts;
    size_t  seq;
} fl_sortent_t;

/* ts in us; the message gives it in ms, the unit of "ts" */
static int fl_duplicate(fl_build_t *b, const char *name, int64_t ts)
{
    char q[FL_QUOTE_MAX + 4], t[32];

    if (ts % 1000 == 0)
        snprintf(t, sizeof(t), "%lld", (long long)(ts / 1000));
    else
        snprintf(t, sizeof(t), "%.3f", (double)ts / 1000.0);
    return fl_reject(b->why, FL_REJECT_DUPLICATE_METRIC,
                     "metric \"%s\" appears twice at ts %s",
                     fl_quote(q, name, strlen(name)), t);
}

/*
 * The same name twice at the same time anywhere in the message: pairwise
 * for a few metrics, else an open-addressing set of (ts, name) hashes in
 * the arena, O(n).
 */
static int fl_check_duplicates(fl_build_t *b)
{
    uint64_t *hash, h;
    uint32_t *slot, mask, k;
    size_t    i, j, size;

    if (b->n <= 8) {
        for (i = 0; i < b->n; i++) {
            for (j = i + 1; j < b->n; j++) {
                if (b->ts[i] == b->ts[j] &&
                    strcmp(b->m[i].name, b->m[j].name) == 0)
                    return fl_duplicate(b, b->m[i].name, b->ts[i]);
            }
        }
        return FL_OK;
    }
    for (size = 16; size < 2 * b->n; size *= 2)
        ;
    mask = (uint32_t)size - 1;
    slot = fl_arena_alloc(&b->arena, size * sizeof(*slot), 1);
    hash = fl_arena_alloc(&b->arena, b->n * sizeof(*hash), 1);
    memset(slot, 0, size * sizeof(*slot));
    for (i = 0; i < b->n; i++) {
        const unsigned char *p = (const unsigned char *)b->m[i].name;

        /* FNV-1a over the name, then the time mixed in */
        for (h = 0xcbf29ce484222325ULL; *p; p++)
            h = (h ^ *p) * 0x100000001b3ULL;
        h ^= (uint64_t)b->ts[i] * 0x9e3779b97f4a7c15ULL;
        h ^= h >> 29;
        hash[i] = h;
        for (k = (uint32_t)h & mask; slot[k] != 0; k = (k + 1) & mask) {
            j = slot[k] - 1;
            if (hash[j] == h && b->ts[j] == b->ts[i] &&
                strcmp(b->m[j].name, b->m[i].name) == 0)
                return fl_duplicate(b, b->m[i].name, b->ts[i]);
        }
        slot[k] = (uint32_t)i + 1;
    }
    return FL_OK;
}

static int fl_sortent_lt(const fl_sortent_t *x, const fl_sortent_t *y)
{
    return x->ts < y->ts || (x->ts == y->ts && x->seq < y->seq);
}

/* Bottom-up merge sort of e[0..n) by (ts, seq), tmp of n entries; the
 * result is in e or tmp, returned. No malloc (glibc's qsort may). */
static fl_sortent_t *fl_sort_entries(fl_sortent_t *e, fl_sortent_t *tmp,
                                     size_t n)
{
    fl_sortent_t *src = e, *dst = tmp, *t;
    size_t        w, lo, mid, hi, i, j, k;

    for (w = 1; w < n; w *= 2) {
        for (lo = 0; lo < n; lo += 2 * w) {
            mid = fl_min(lo + w, n);
            hi = fl_min(lo + 2 * w, n);
            for (i = lo, j = mid, k = lo; k < hi; k++) {
                if (i < mid && (j >= hi || !fl_sortent_lt(&src[j], &src[i])))
                    dst[k] = src[i++];
                else
                    dst[k] = src[j++];
            }
        }
        t = src;
        src = dst;
        dst = t;
    }
    return src;
}

/*
 * SenML: order the metrics by (time, record order) and make one point per
 * distinct time. Returns the number of points written to pts.
 */
static size_t fl_group_by_time(fl_build_t *b, fl_point_t *pts)
{
    fl_sortent_t *e, *tmp;
    fl_metric_t  *m = b->m;
    size_t        i, np = 0;
    int           sorted = 1;

    for (i = 1; i < b->n && sorted; i++)
        sorted = b->ts[i - 1] <= b->ts[i];
    if (!sorted) {
        e = fl_arena_alloc(&b->arena, 2 * b->n * sizeof(*e), 1);
        tmp = e + b->n;
        for (i = 0; i < b->n; i++) {
            e[i].ts = b->ts[i];
            e[i].seq = i;
        }
        e = fl_sort_entries(e, tmp, b->n);
        m = fl_arena_alloc(&b->arena, b->n * sizeof(*m), 1);
        for (i = 0; i < b->n; i++) {
            m[i] = b->m[e[i].seq];
            b->ts[i] = e[i].ts; /* b->ts now follows m */
        }
    }
    for (i = 0; i < b->n; i++) {
        if (np == 0 || pts[np - 1].ts_us != b->ts[i]) {
            pts[np].ts_us = b->ts[i];
            pts[np].metrics = &m[i];
            pts[np].nmetrics = 0;
            np++;
        }
        pts[np - 1].nmetrics++;
    }
    return np;
}

/* ---- the entry point -------------------------------------------------- */

/* A top-level array is SenML when an element is an object with n or bn. */
static int fl_is_senml(const cJSON *arr)
{
    const cJSON *e, *c;

    for (e = arr->child; e != NULL; e = e->next) {
        if ((e->type & 0xff) != cJSON_Object)
            continue;
        for (c = e->child; c != NULL; c = c->next) {
            if (strcmp(c->string, "n") == 0 || strcmp(c->string, "bn") == 0)
                return 1;
        }
    }
    return 0;
}

/* Walk the tree into b and out (points allocated from b's arena). */
static int fl_walk(fl_build_t *b, const cJSON *root, fl_telemetry_t *out)
{
    fl_senml_base_t   base;
    const cJSON      *e;
    fl_payload_form_t f;
    fl_point_t       *pts;
    size_t            nelem = 0, i, start;
    char              msg[FL_REJECT_MSGLEN];

    if ((root->type & 0xff) == cJSON_Object) {
        if (fl_object(b, root, &out->form) != FL_OK)
            return FL_ERROR;
        if (fl_check_duplicates(b) != FL_OK)
            return FL_ERROR;
        pts = fl_arena_alloc(&b->arena, sizeof(*pts), 1);
        pts[0].ts_us = b->ts[0];
        pts[0].metrics = b->m;
        pts[0].nmetrics = b->n;
        out->points = pts;
        out->npoints = 1;
        return FL_OK;
    }
    if ((root->type & 0xff) != cJSON_Array)
        return fl_reject(b->why, FL_REJECT_NOT_AN_OBJECT,
                         "payload is a JSON scalar, not an object or array");

    for (e = root->child; e != NULL; e = e->next)
        nelem++;
    if (nelem == 0)
        return fl_reject(b->why, FL_REJECT_NO_METRICS, "empty array");
    if (nelem > b->lim->max_batch)
        return fl_reject(b->why, FL_REJECT_BATCH_TOO_LARGE,
                         "array of %zu elements, limit %zu", nelem,
                         b->lim->max_batch);

    if (b->senml) {
        out->form = FL_FORM_SENML;
        memset(&base, 0, sizeof(base));
        base.bn = "";
        for (e = root->child, i = 0; e != NULL; e = e->next, i++) {
            if (fl_senml_record(b, e, i, &base) != FL_OK)
                return FL_ERROR;
        }
        if (b->n == 0)
            return fl_reject(b->why, FL_REJECT_NO_METRICS,
                             "SenML pack has no value");
        if (fl_check_duplicates(b) != FL_OK)
            return FL_ERROR;
        pts = fl_arena_alloc(&b->arena, b->n * sizeof(*pts), 1);
        out->npoints = fl_group_by_time(b, pts);
        out->points = pts;
        return FL_OK;
    }

    out->form = FL_FORM_BATCH;
    pts = fl_arena_alloc(&b->arena, nelem * sizeof(*pts), 1);
    for (e = root->child, i = 0; e != NULL; e = e->next, i++) {
        if ((e->type & 0xff) != cJSON_Object)
            return fl_reject(b->why, FL_REJECT_NOT_AN_OBJECT,
                             "batch element %zu is not an object", i);
        start = b->n;
        if (fl_object(b, e, &f) != FL_OK) {
            memcpy(msg, b->why->msg, sizeof(msg));
            return fl_reject(b->why, b->why->reason, "batch element %zu: %s", i,
                             msg);
        }
        pts[i].ts_us = b->ts[start];
        pts[i].metrics = &b->m[start];
        pts[i].nmetrics = b->n - start;
    }
    if (fl_check_duplicates(b) != FL_OK)
        return FL_ERROR;
    out->points = pts;
    out->npoints = nelem;
    return FL_OK;
}

/*
 * What every document a device sends goes through before cJSON sees it
 * (what is named "payload" or "ack" in the messages): the size limit, a
 * leading UTF-8 BOM skipped, nothing but whitespace refused, then the
 * strict pre-scan (fl_scan) up to lim's depth. FL_OK with *start at the
 * first byte of the JSON text and s holding the scan (nvalues); FL_ERROR
 * with why set.
 */
static int fl_prescan(const void *buf, size_t len,
                      const fl_payload_limits_t *lim, const char *what,
                      fl_scan_t *s, size_t *start, fl_reject_t *why)
{
    int depth;

    if (len > lim->max_payload_bytes)
        return fl_reject(why, FL_REJECT_TOO_LARGE, "%s is %zu bytes, limit %zu",
                         what, len, lim->max_payload_bytes);
    memset(s, 0, sizeof(*s));
    s->p = buf;
    s->len = len;
    s->msg = why->msg;
    s->msg_size = sizeof(why->msg);
    if (len >= 3 && memcmp(s->p, "\xef\xbb\xbf", 3) == 0)
        s->i = 3;
    fl_scan_ws(s);
    if (s->i == len) {
        if (len)
            return fl_reject(why, FL_REJECT_EMPTY, "%s is only whitespace",
                             what);
        return fl_reject(why, FL_REJECT_EMPTY, "empty %s", what);
    }
    *start = s->i;
    depth =
        lim->max_depth < 1 ? 1 : fl_min(lim->max_depth, FL_PAYLOAD_DEPTH_CAP);
    if (fl_scan(s, depth) != FL_OK) {
        why->reason = fl_scan_reason(s->err);
        return FL_ERROR;
    }
    return FL_OK;
}

int fl_payload_parse(const void *buf, size_t len, int64_t now_us,
                     const fl_payload_limits_t *lim, fl_telemetry_t *out,
                     fl_reject_t *why)
{
    fl_payload_limits_t def;
    fl_reject_t         dummy;
    fl_scan_t           s;
    fl_build_t          b;
    cJSON              *root;
    size_t              start, estimate;
    int                 rc;

    memset(out, 0, sizeof(*out));
    if (why == NULL)
        why = &dummy;
    why->reason = FL_REJECT_NONE;
    why->msg[0] = '\0';
    if (lim == NULL) {
        fl_payload_limits_default(&def);
        lim = &def;
    }

    if (fl_prescan(buf, len, lim, "payload", &s, &start, why) != FL_OK)
        return FL_ERROR;

    root = cJSON_ParseWithLengthOpts((const char *)s.p + start, len - start,
                                     NULL, 0);
    if (root == NULL)
        return fl_reject(why, FL_REJECT_INTERNAL,
                         "cJSON refused a validated payload (out of memory?)");

    memset(&b, 0, sizeof(b));
    b.lim = lim;
    b.now_us = now_us;
    b.why = why;
    b.ts_lo = lim->min_ts_ms * 1000;
    b.ts_hi = FL_TS_MAX_US;
    if (lim->max_future_ms >= 0 &&
        now_us < FL_TS_MAX_US - lim->max_future_ms * 1000)
        b.ts_hi = now_us + lim->max_future_ms * 1000;
    /* every metric comes from a scalar of its own, a SenML record gives
     * at most two (value and sum) */
    b.cap = s.nvalues;
    if ((root->type & 0xff) == cJSON_Array && fl_is_senml(root)) {
        b.senml = 1;
        b.cap = fl_min(b.cap, 2 * (size_t)cJSON_GetArraySize(root));
    }
    b.cap = fl_min(b.cap, lim->max_metrics);
    /* a flattened name is a path of distinct keys of the payload, a SenML
     * name is bn + n: neither is longer than the payload (+ ".sum") */
    b.name_cap = fl_min(lim->max_name_len, len) + 8;

    /* per metric: itself, its time, a point, the duplicate check (and for
     * SenML the regrouping); then names and text values: normally all in
     * this one block */
    estimate = b.cap * (sizeof(fl_metric_t) + sizeof(int64_t) +
                        sizeof(fl_point_t) + 3 * sizeof(uint64_t)) +
               2 * len + b.name_cap + 8 * FL_ARENA_ALIGN;
    if (b.senml)
        estimate += b.cap * (2 * sizeof(fl_sortent_t) + sizeof(fl_metric_t));
    fl_arena_init(&b.arena, fl_max(estimate, (size_t)FL_ARENA_MIN));
    b.m = fl_arena_alloc(&b.arena, b.cap * sizeof(*b.m), 1);
    b.ts = fl_arena_alloc(&b.arena, b.cap * sizeof(*b.ts), 1);
    b.name = fl_arena_alloc(&b.arena, b.name_cap + 1, 0);

    rc = fl_walk(&b, root, out);
    cJSON_Delete(root);
    if (rc != FL_OK) {
        fl_arena_free(b.arena);
        memset(out, 0, sizeof(*out));
        return FL_ERROR;
    }
    out->nmetrics = b.n;
    out->nulls_skipped = b.nulls;
    out->arena = b.arena;
    return FL_OK;
}

void fl_telemetry_free(fl_telemetry_t *out)
{
    if (out == NULL)
        return;
    fl_arena_free(out->arena);
    memset(out, 0, sizeof(*out));
}

static void fl_cut_add(fl_cut_t *c, const fl_point_t *p)
{
    if (c == NULL)
        return;
    if (c->npoints == 0)
        c->first_us = p->ts_us;
    c->npoints++;
    c->nmetrics += p->nmetrics;
}

size_t fl_telemetry_cut(fl_telemetry_t *t, int64_t lo_us, int64_t hi_us,
                        fl_cut_t *old, fl_cut_t *future)
{
    size_t i, kept = 0;

    if (old)
        memset(old, 0, sizeof(*old));
    if (future)
        memset(future, 0, sizeof(*future));
    for (i = 0; i < t->npoints; i++) {
        const fl_point_t *p = &t->points[i];

        if (p->ts_us < lo_us) {
            fl_cut_add(old, p);
            t->nmetrics -= p->nmetrics;
        } else if (p->ts_us > hi_us) {
            fl_cut_add(future, p);
            t->nmetrics -= p->nmetrics;
        } else {
            t->points[kept++] = *p;
        }
    }
    t->npoints = kept;
    return kept;
}

/* ---- command acks ----------------------------------------------------- */

int fl_ack_parse(const void *buf, size_t len, const fl_payload_limits_t *lim,
                 fl_ack_t *out, fl_reject_t *why)
{
    fl_payload_limits_t def;
    fl_reject_t         dummy;
    fl_scan_t           s;
    cJSON              *root, *it, *id = NULL, *ok = NULL;
    int                 nresult = 0, rc = FL_OK;
    size_t              start;
    char                q[FL_QUOTE_MAX + 4];

    memset(out, 0, sizeof(*out));
    if (why == NULL)
        why = &dummy;
    why->reason = FL_REJECT_NONE;
    why->msg[0] = '\0';
    if (lim == NULL) {
        fl_payload_limits_default(&def);
        lim = &def;
    }
    /* the same strict pre-scan as telemetry: what passes is valid jsonb
     * input as it is (no \u0000, no NaN, strict UTF-8) */
    if (fl_prescan(buf, len, lim, "ack", &s, &start, why) != FL_OK)
        return FL_ERROR;
    out->json_off = start;
    root = cJSON_ParseWithLengthOpts((const char *)s.p + out->json_off,
                                     len - out->json_off, NULL, 0);
    if (root == NULL)
        return fl_reject(why, FL_REJECT_INTERNAL,
                         "cJSON refused a validated ack (out of memory?)");
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return fl_reject(why, FL_REJECT_NOT_AN_OBJECT,
                         "ack must be a JSON object {\"id\", \"ok\", "
                         "\"result\"}");
    }

    /* a repeated key would be read one way here and another way by
     * jsonb (which keeps the last): refuse it */
    cJSON_ArrayForEach(it, root)
    {
        const char *k = it->string;

        if (strcmp(k, "id") == 0) {
            if (id != NULL) {
                rc = fl_reject(why, FL_REJECT_BAD_ACK, "\"id\" twice");
                break;
            }
            id = it;
        } else if (strcmp(k, "ok") == 0) {
            if (ok != NULL) {
                rc = fl_reject(why, FL_REJECT_BAD_ACK, "\"ok\" twice");
                break;
            }
            ok = it;
        } else if (strcmp(k, "result") == 0) {
            if (++nresult > 1) {
                rc = fl_reject(why, FL_REJECT_BAD_ACK, "\"result\" twice");
                break;
            }
        }
    }
    if (rc == FL_OK && (id == NULL || !cJSON_IsString(id)))
        rc = fl_reject(why, FL_REJECT_BAD_ACK,
                       id ? "\"id\" must be a string"
                          : "ack without \"id\" (the command's id)");
    else if (rc == FL_OK &&
             !fl_device_id_valid(id->valuestring, strlen(id->valuestring)))
        rc = fl_reject(why, FL_REJECT_BAD_ACK,
                       "\"id\" \"%s\" is not a command id "
                       "([A-Za-z0-9_.:-]{1,64})",
                       fl_quote(q, id->valuestring, strlen(id->valuestring)));
    else if (rc == FL_OK && !cJSON_IsBool(ok))
        rc = fl_reject(why, FL_REJECT_BAD_ACK,
                       ok ? "\"ok\" must be true or false"
                          : "ack without \"ok\" (true or false)");
    if (rc == FL_OK) {
        snprintf(out->id, sizeof(out->id), "%s", id->valuestring);
        out->ok = cJSON_IsTrue(ok);
        out->has_result = nresult;
    } else {
        memset(out, 0, sizeof(*out));
    }
    cJSON_Delete(root);
    return rc;
}
