/*
 * fl_payload.h - MQTT topics and telemetry payloads (CONTRACT.md section 3).
 *
 * fl_topic_parse() splits "devices/{id}/telemetry|state|commands/ack".
 * fl_payload_parse() turns one telemetry payload into points, each a
 * timestamp and a list of metrics, fl_ack_parse() checks a device's answer
 * to a command, or either explains why it is refused with a reason from a
 * fixed list (stable names for /metrics labels and dead-letter entries).
 * Nothing is dropped silently; the only values skipped are JSON nulls, and
 * they are counted.
 *
 * Accepted payloads (UTF-8 JSON, strictly validated before cJSON sees it):
 *
 *   1. flat object  {"temperature": 21.5, "door": true, "ts": ...}
 *   2. values form  {"ts": ..., "values": {...}}: exactly the keys "values"
 *      (an object) and optionally "ts"; anything else is form 1, so
 *      {"values": {"a": 1}, "x": 2} gives the metrics values.a and x
 *   3. batch        a top-level array of form 1 / form 2 objects, one point
 *      per element in array order; each element is judged like a message
 *      of its own (an element with no metric refuses the batch)
 *   4. SenML JSON   RFC 8428, see "SenML" below
 *
 * Batch or SenML: a top-level array is SenML when at least one element is
 * an object with a "n" or "bn" key; otherwise it is a batch. Every record
 * of a SenML pack is then held to SenML (unknown label, wrong type or a
 * non-object element is bad_senml). So [{"v": 1, "t": 0}] is a batch with
 * the metrics v and t, and a batch element cannot have a top-level metric
 * called "n" or "bn" (write it as [{"values": {"n": 1}}]).
 *
 * Forms 1-3:
 *   - nested objects flatten with dots: {"gps": {"lat": 1}} is gps.lat; an
 *     empty nested object contributes nothing
 *   - numbers and booleans are metrics, strings are text values
 *   - null is skipped without error and counted in nulls_skipped; a message
 *     left with no metric is refused (no_metrics)
 *   - an array below the top level is refused (array_value): there is no
 *     index naming that both devices and dashboards would agree on
 *   - "ts" (top level of the object only; nested "ts" is a metric): epoch
 *     milliseconds as an integral JSON number, or an RFC 3339 string
 *     "2025-11-28T22:46:40.123456Z" / "...+01:00" ('T', 't' or ' ', 'Z' or
 *     'z', any number of fraction digits, truncated to the microsecond).
 *     Without "ts" the point is at now_us.
 *
 * SenML (RFC 8428): labels bn bt bu bv bs bver n u v vs vb vd s t ut; the
 * metadata labels l, ct, bct are accepted and ignored; any other label is
 * bad_senml. Base fields apply from their record on until replaced.
 *   - name = bn + n, non-empty, RFC 8428 charset ([A-Za-z0-9] first, then
 *     [A-Za-z0-9_.:/-]); the device stays the topic's, bn is not stripped
 *   - time = bt + t in seconds (fractions allowed, rounded to the us);
 *     below 2^28 it is relative to now_us (0 or absent: now)
 *   - v + bv is a number, vs a text value, vb a boolean, vd a text value
 *     (the base64 as sent); at most one of them per record
 *   - s + bs becomes the numeric metric "NAME.sum" (a different quantity
 *     from the value, so its own series)
 *   - u (or bu) is kept as the metric's unit
 *   - a record with neither value nor sum is refused, except one that only
 *     carries base fields (a "header" record), which is allowed
 *   - bver must be an integer 1..10
 *   - records are grouped by resolved time: one point per distinct time,
 *     points in ascending time, metrics of a point in record order
 *
 * Every form:
 *   - names are non-empty, at most max_name_len bytes after flattening,
 *     with no control character (C0, DEL, C1); a key that is "" anywhere
 *     is bad_name
 *   - a string containing U+0000 (written \u0000) is bad_string
 *   - numbers must be finite: NaN / Infinity tokens and literals that
 *     overflow a double (1e999) are bad_number
 *   - the same metric name twice at the same time (duplicate keys,
 *     {"a.b": 1, "a": {"b": 2}}, or two SenML records) is
 *     duplicate_metric rather than a silent "last one wins"
 *   - timestamps must lie in [min_ts_ms, now + max_future_ms]
 *
 * Times are epoch microseconds (the resolution PostgreSQL stores): a
 * point's time is exact to the millisecond when the payload gives one, and
 * now_us (or now_us plus a SenML offset) when it does not. The caller
 * passes an arrival time that no other message of the device has, so
 * that two messages without a time never share one (see fl_ingest.c).
 *   - a leading UTF-8 byte order mark is ignored (RFC 8259 section 8.1);
 *     trailing bytes other than JSON whitespace are invalid_json
 */
#ifndef FL_PAYLOAD_H
#define FL_PAYLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "fl_core.h"
#include "fl_scan.h" /* fl_utf8_valid() */

#define FL_DEVICE_ID_MAX     64
#define FL_REJECT_MSGLEN     192
#define FL_PAYLOAD_DEPTH_CAP 64             /* max_depth is clamped to it */
#define FL_PAYLOAD_TS_MIN_MS 946684800000LL /* 2000-01-01T00:00:00Z */

/* Why a topic or payload was refused. The names (fl_reject_name) are
 * stable: they are metric labels and dead-letter fields. Append only. */
typedef enum {
    FL_REJECT_NONE = 0,
    FL_REJECT_BAD_TOPIC,        /* not devices/{id}/telemetry|state|... */
    FL_REJECT_BAD_DEVICE_ID,    /* id not [A-Za-z0-9_.:-]{1,64} */
    FL_REJECT_EMPTY,            /* no bytes, or only whitespace */
    FL_REJECT_TOO_LARGE,        /* above max_payload_bytes */
    FL_REJECT_NOT_UTF8,         /* malformed UTF-8, unpaired surrogate */
    FL_REJECT_INVALID_JSON,     /* RFC 8259 syntax */
    FL_REJECT_TOO_DEEP,         /* nesting above max_depth */
    FL_REJECT_NOT_AN_OBJECT,    /* top level / batch element not an object */
    FL_REJECT_ARRAY_VALUE,      /* array below the top level */
    FL_REJECT_TOO_MANY_METRICS, /* above max_metrics in the message */
    FL_REJECT_NAME_TOO_LONG,    /* above max_name_len after flattening */
    FL_REJECT_BAD_NAME,         /* empty name, control character */
    FL_REJECT_DUPLICATE_METRIC, /* same name twice at the same time */
    FL_REJECT_BAD_TIMESTAMP,    /* type, format, not integral, range */
    FL_REJECT_BAD_NUMBER,       /* NaN, Infinity, overflow, > 63 chars */
    FL_REJECT_BAD_STRING,       /* U+0000 in a string */
    FL_REJECT_STRING_TOO_LONG,  /* text value above max_string_bytes */
    FL_REJECT_BATCH_TOO_LARGE,  /* top-level array above max_batch */
    FL_REJECT_BAD_SENML,        /* SenML rules (RFC 8428) */
    FL_REJECT_NO_METRICS,       /* nothing but nulls / empty objects */
    FL_REJECT_INTERNAL,         /* cJSON refused validated input (OOM) */
    FL_REJECT_BAD_ACK,          /* command ack without id / ok, wrong types */
    FL_REJECT_UNKNOWN_COMMAND,  /* ack for no command of that device */
    FL_REJECT_COUNT
} fl_reject_reason_t;

typedef struct {
    fl_reject_reason_t reason;
    char               msg[FL_REJECT_MSGLEN]; /* human, one line */
} fl_reject_t;

typedef enum {
    FL_TOPIC_TELEMETRY = 1,
    FL_TOPIC_STATE,
    FL_TOPIC_CMD_ACK, /* devices/{id}/commands/ack */
} fl_topic_kind_t;

typedef enum {
    FL_FORM_FLAT = 1,
    FL_FORM_VALUES,
    FL_FORM_BATCH,
    FL_FORM_SENML,
} fl_payload_form_t;

typedef enum {
    FL_METRIC_NUM = 1,
    FL_METRIC_BOOL,
    FL_METRIC_STR,
} fl_metric_type_t;

/* Defaults in brackets (fl_payload_limits_default). */
typedef struct {
    size_t max_payload_bytes; /* [65536] whole message */
    size_t max_metrics;       /* [1000] per message, across a batch */
    size_t max_name_len;      /* [128] bytes, after flattening / bn + n */
    int    max_depth;         /* [8] brackets around the deepest value:
                                 {"a": 1} is 1; clamped to 1..64 */
    size_t  max_batch;        /* [1000] elements of a top-level array */
    size_t  max_string_bytes; /* [1024] text value bytes, unescaped */
    int64_t min_ts_ms;        /* [2000-01-01] earliest timestamp */
    int64_t max_future_ms;    /* [86400000] latest is now_ms + this;
                                 negative: no upper bound */
} fl_payload_limits_t;

/* Strings are NUL-terminated valid UTF-8 without NUL inside; they live in
 * the fl_telemetry_t arena. */
typedef struct {
    const char      *name;
    const char      *unit; /* SenML u / bu, else NULL */
    fl_metric_type_t type;
    double           num; /* FL_METRIC_NUM, finite */
    int              b;   /* FL_METRIC_BOOL, 0 or 1 */
    const char      *str; /* FL_METRIC_STR */
    unsigned char    rel; /* its time is now_us (+ a SenML offset): no
                             "ts", or a relative SenML time */
} fl_metric_t;

typedef struct {
    int64_t      ts_us; /* epoch microseconds */
    fl_metric_t *metrics;
    size_t       nmetrics; /* >= 1 */
} fl_point_t;

typedef struct {
    fl_point_t       *points;
    size_t            npoints;       /* >= 1 when accepted */
    size_t            nmetrics;      /* over all points */
    size_t            nulls_skipped; /* null values seen */
    fl_payload_form_t form;
    void             *arena; /* private: every byte of the result */
} fl_telemetry_t;

/* The defaults documented in fl_payload_limits_t. */
void fl_payload_limits_default(fl_payload_limits_t *lim);

/*
 * Parse an MQTT topic of len bytes (not NUL-terminated; MQTT topics are
 * length-prefixed). On FL_OK device holds the NUL-terminated id and kind
 * the topic kind. On FL_ERROR why (if not NULL) says bad_topic or
 * bad_device_id. Nothing is allocated.
 */
int fl_topic_parse(const char *topic, size_t len,
                   char device[FL_DEVICE_ID_MAX + 1], fl_topic_kind_t *kind,
                   fl_reject_t *why);

/* 1 when id[0..len) matches [A-Za-z0-9_.:-]{1,64}, else 0. */
int fl_device_id_valid(const char *id, size_t len);

/*
 * Parse one telemetry payload of len bytes (need not be NUL-terminated).
 * now_us is the message's arrival time in epoch microseconds: the time of
 * points without one, the origin of SenML relative times and of the future
 * bound. lim NULL means the defaults.
 *
 * FL_OK: out holds the points; everything is in one arena that the caller
 * frees with fl_telemetry_free(out). FL_ERROR: out is left zeroed (freeing
 * it is harmless) and why (if not NULL) says why.
 */
int fl_payload_parse(const void *buf, size_t len, int64_t now_us,
                     const fl_payload_limits_t *lim, fl_telemetry_t *out,
                     fl_reject_t *why);

/* Free what fl_payload_parse() put in out and zero it. NULL is fine. */
void fl_telemetry_free(fl_telemetry_t *out);

/* What fl_telemetry_cut() took out on one side. */
typedef struct {
    size_t  npoints;
    size_t  nmetrics;
    int64_t first_us; /* ts_us of the first point taken out */
} fl_cut_t;

/*
 * Take out of t the points before lo_us (counted in *old) and after hi_us
 * (in *future): points a storage cannot keep (older than its retention)
 * or should not (a clock too far ahead). The others keep their order and
 * t->nmetrics follows. old and future are zeroed first; NULL is fine.
 * Returns the points left (0: nothing of the message is stored).
 */
size_t fl_telemetry_cut(fl_telemetry_t *t, int64_t lo_us, int64_t hi_us,
                        fl_cut_t *old, fl_cut_t *future);

/* A command id as the API makes them and paths carry them: the device id
 * syntax, [A-Za-z0-9_.:-]{1,64}. */
#define FL_COMMAND_ID_MAX 64

/*
 * A device's answer to a command (CONTRACT.md section 3), the payload of
 * devices/{id}/commands/ack: a JSON object with
 *
 *   "id"      the command's id (a string, the command id syntax)
 *   "ok"      true or false
 *   "result"  optional, any JSON value (absent is null)
 *
 * Other keys are ignored (a device may add a time or a reason); "id",
 * "ok" and "result" may each appear once. The payload is held to the same
 * strict JSON as telemetry (fl_scan: UTF-8, no \u0000, no NaN, nesting
 * at most max_depth) and to max_payload_bytes, so that its text can go
 * to PostgreSQL's jsonb as it is.
 */
typedef struct {
    char   id[FL_COMMAND_ID_MAX + 1];
    int    ok;         /* 0 or 1 */
    int    has_result; /* "result" present (possibly null) */
    size_t json_off;   /* the JSON text starts here (after a BOM and
                          whitespace) */
} fl_ack_t;

/*
 * Check one ack payload of len bytes (need not be NUL-terminated); lim
 * NULL means the defaults (max_payload_bytes and max_depth apply).
 * FL_OK: out is filled; nothing is allocated. FL_ERROR: why (if not NULL)
 * says why: too_large, empty, the fl_scan reasons, not_an_object, or
 * bad_ack for a missing, repeated or mistyped "id" / "ok" / "result".
 */
int fl_ack_parse(const void *buf, size_t len, const fl_payload_limits_t *lim,
                 fl_ack_t *out, fl_reject_t *why);

/* Stable snake_case names: "invalid_json", "too_deep", ... ("ok" for
 * FL_REJECT_NONE, "unknown" outside the enum). Static strings. */
const char *fl_reject_name(fl_reject_reason_t reason);
const char *fl_payload_form_name(fl_payload_form_t form);

#endif
