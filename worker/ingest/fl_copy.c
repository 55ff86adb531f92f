/*
 * fl_copy.c - telemetry rows in binary COPY format (see fl_copy.h).
 *
 * The binary format, as the server reads it (PostgreSQL docs, COPY, "Binary
 * Format"): per row an int16 field count, then per field an int32 byte
 * length (-1 for NULL) and the value in the type's send/recv form; every
 * integer big-endian. The types of FL_COPY_COLUMNS: timestamptz is an
 * int64 of microseconds since 2000-01-01 00:00:00 UTC (row_ts()), float8
 * the IEEE 754 bits, bool one byte 0 or 1, int8 an int64, text the bytes
 * without a terminator. Nothing is formatted or escaped, and the server
 * parses nothing: no text to timestamp or to double on either side.
 *
 * Text is sent as is; the server checks its encoding (textrecv converts it
 * from the session's client_encoding, which fl_pg.c sets to UTF8). What
 * reaches it is valid UTF-8 without NUL, checked in fl_payload.c before any
 * row exists: fl_scan() refuses malformed UTF-8 (Unicode table 3-7: no
 * overlong forms, surrogates or code points above U+10FFFF), unpaired
 * surrogate escapes, raw control bytes in strings and \u0000 (bad_string);
 * names have no control character at all; device ids are
 * [A-Za-z0-9_.:-]{1,64}. The strings are C strings, so a NUL could not be
 * sent anyway, and none is longer than limits.max_payload_bytes (at most
 * 256 MiB), so every length fits the int32.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl_copy.h"
#include "fl_log.h"

/* float8 goes out as the bits of a C double */
_Static_assert(sizeof(double) == sizeof(uint64_t), "double is not 64 bits");

#define NFIELDS 8 /* FL_COPY_COLUMNS */

/* 2000-01-01 00:00:00 UTC, PostgreSQL's epoch, in Unix microseconds */
#define PG_EPOCH_US 946684800000000LL

const unsigned char fl_copy_header[FL_COPY_HEADER_LEN] = {
    'P', 'G', 'C', 'O', 'P', 'Y', '\n', 0xff, '\r', '\n', 0, /* signature */
    0,   0,   0,   0, /* flags: no OIDs */
    0,   0,   0,   0, /* header extension length */
};

const unsigned char fl_copy_trailer[FL_COPY_TRAILER_LEN] = {0xff, 0xff};

void fl_pg_batch_init(fl_pg_batch_t *b)
{
    b->copy = evbuffer_new();
    if (b->copy == NULL) {
        fl_log(FL_LOG_CRIT, "evbuffer_new() failed");
        abort();
    }
    b->rows = 0;
    b->devices = NULL;
    b->devices_len = b->devices_cap = 0;
}

void fl_pg_batch_reset(fl_pg_batch_t *b)
{
    evbuffer_drain(b->copy, evbuffer_get_length(b->copy));
    b->rows = 0;
    b->devices_len = 0;
    if (b->devices)
        b->devices[0] = '\0';
}

void fl_pg_batch_free(fl_pg_batch_t *b)
{
    if (b->copy)
        evbuffer_free(b->copy);
    b->copy = NULL;
    b->rows = 0;
    free(b->devices);
    b->devices = NULL;
    b->devices_len = b->devices_cap = 0;
}

void fl_pg_batch_device(fl_pg_batch_t *b, const char *device)
{
    size_t need = strlen(device) + 12;

    if (b->devices_len + need + 1 > b->devices_cap) {
        b->devices_cap = (b->devices_len + need + 1) * 2;
        b->devices = fl_realloc(b->devices, b->devices_cap);
    }
    /* the id syntax has no quote or backslash: a literal as it is */
    b->devices_len += (size_t)snprintf(
        b->devices + b->devices_len, b->devices_cap - b->devices_len,
        "%s('%s',true)", b->devices_len ? "," : "", device);
}

/* One row is assembled here and appended in one piece (long text values
 * go straight to the evbuffer). */
typedef struct {
    struct evbuffer *out;
    size_t           n;
    unsigned char    buf[1024];
} row_t;

static void row_flush(row_t *r)
{
    if (r->n) {
        evbuffer_add(r->out, r->buf, r->n);
        r->n = 0;
    }
}

static void row_put(row_t *r, const void *p, size_t len)
{
    if (r->n + len > sizeof(r->buf)) {
        row_flush(r);
        if (len > sizeof(r->buf)) {
            evbuffer_add(r->out, p, len);
            return;
        }
    }
    memcpy(r->buf + r->n, p, len);
    r->n += len;
}

/* The low bytes (1, 2, 4 or 8) of v, big-endian. */
static void row_be(row_t *r, uint64_t v, int bytes)
{
    unsigned char tmp[8];

    for (int i = bytes - 1; i >= 0; i--, v >>= 8)
        tmp[i] = (unsigned char)v;
    row_put(r, tmp, (size_t)bytes);
}

static void row_null(row_t *r)
{
    row_be(r, UINT32_MAX, 4); /* length -1 */
}

/* An int8 or float8 field: length 8, then the 64 bits. */
static void row_int8(row_t *r, uint64_t v)
{
    row_be(r, 8, 4);
    row_be(r, v, 8);
}

static void row_text(row_t *r, const char *s)
{
    size_t len = strlen(s);

    row_be(r, len, 4);
    row_put(r, s, len);
}

/* A timestamptz: microseconds since 2000-01-01 UTC. The parser keeps
 * times in years 2000 .. 9999 (limits.min_ts_ms, then retention and the
 * clock skew cut them further), but any int64 is written without
 * overflow: a time that PostgreSQL cannot store (before 4714 BC or after
 * 294276 AD) is refused by the server with 22008, the row's fault. The
 * two ends of int64 are -infinity and infinity to the server, which would
 * take them: a time so far back that its difference does not fit is sent
 * as INT64_MIN + 1, out of range, not as -infinity. */
static void row_ts(row_t *r, int64_t ts_us)
{
    int64_t pg = ts_us < INT64_MIN + 1 + PG_EPOCH_US ? INT64_MIN + 1
                                                     : ts_us - PG_EPOCH_US;

    row_int8(r, (uint64_t)pg);
}

/*
 * Columns of the telemetry table: ts, value, value_bool, device_id,
 * metric, value_text, unit, src (FL_COPY_COLUMNS). One row per metric of
 * every point; exactly one of the three value columns is set, the others
 * are NULL. The fast path copies these rows into telemetry, the staging
 * path into a temporary table with the same columns.
 */
void fl_pg_batch_add(fl_pg_batch_t *b, const char *device,
                     const fl_telemetry_t *t, int64_t src)
{
    row_t r;

    r.out = b->copy;
    r.n = 0;
    for (size_t i = 0; i < t->npoints; i++) {
        const fl_point_t *p = &t->points[i];

        for (size_t j = 0; j < p->nmetrics; j++) {
            const fl_metric_t *m = &p->metrics[j];
            uint64_t           bits;

            row_be(&r, NFIELDS, 2);
            row_ts(&r, p->ts_us);
            switch (m->type) {
            case FL_METRIC_NUM:
                memcpy(&bits, &m->num, sizeof(bits));
                row_int8(&r, bits);
                row_null(&r);
                break;
            case FL_METRIC_BOOL:
                row_null(&r);
                row_be(&r, 1, 4);
                row_be(&r, m->b ? 1 : 0, 1);
                break;
            default:
                row_null(&r);
                row_null(&r);
                break;
            }
            row_text(&r, device);
            row_text(&r, m->name);
            if (m->type == FL_METRIC_NUM || m->type == FL_METRIC_BOOL)
                row_null(&r);
            else /* a text metric without a string is "" */
                row_text(&r, m->str ? m->str : "");
            if (m->unit)
                row_text(&r, m->unit);
            else
                row_null(&r);
            row_int8(&r, (uint64_t)src);
            b->rows++;
        }
    }
    row_flush(&r);
}
