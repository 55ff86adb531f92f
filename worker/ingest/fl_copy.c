/*
 * fl_copy.c - telemetry rows in COPY text format (see fl_copy.h).
 *
 * The text format, as the server parses it: one row per line ending in
 * \n, columns separated by a tab, \N for NULL, and in a text column a
 * backslash, tab, newline or carriage return written as \\, \t, \n, \r
 * (row_text()). Numbers are written so that float8 reads back the same
 * double (row_double()), timestamps as ISO text in UTC to the microsecond
 * (row_ts()).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl_copy.h"
#include "fl_log.h"

void fl_pg_batch_init(fl_pg_batch_t *b)
{
    b->copy = evbuffer_new();
    if (b->copy == NULL) {
        fl_log(FL_LOG_CRIT, "evbuffer_new() failed");
        abort();
    }
    b->rows = 0;
    b->ts_sec = INT64_MIN;
    b->ts_len = 0;
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

/* One COPY text row is assembled here and appended in one piece (long
 * text values go straight to the evbuffer). */
typedef struct {
    struct evbuffer *out;
    size_t           n;
    char             buf[1024];
} row_t;

static void row_flush(row_t *r)
{
    if (r->n) {
        evbuffer_add(r->out, r->buf, r->n);
        r->n = 0;
    }
}

/* a string literal, without its NUL */
#define row_lit(r, s) row_put(r, s, sizeof(s) - 1)

static void row_put(row_t *r, const char *p, size_t len)
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

/* A text field in COPY text format: backslash, tab, newline and carriage
 * return escaped; everything else (valid UTF-8 from the parser) as is. */
static void row_text(row_t *r, const char *s)
{
    const char *run = s;
    const char *esc;

    for (; *s; s++) {
        switch (*s) {
        case '\\': esc = "\\\\"; break;
        case '\t': esc = "\\t"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        default: continue;
        }
        row_put(r, run, (size_t)(s - run));
        row_put(r, esc, 2); /* the escapes are two bytes each */
        run = s + 1;
    }
    row_put(r, run, (size_t)(s - run));
}

static void row_int(row_t *r, int64_t v)
{
    char     tmp[24];
    char    *p = tmp + sizeof(tmp);
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;

    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--p = '-';
    row_put(r, p, (size_t)(tmp + sizeof(tmp) - p));
}

/* A float8 that reads back as the same double: integers as integers,
 * else %.17g; NaN and infinities in PostgreSQL's spelling. */
static void row_double(row_t *r, double v)
{
    char tmp[40];
    int  n;

    if (isnan(v)) {
        row_lit(r, "NaN");
    } else if (isinf(v)) {
        if (v > 0)
            row_lit(r, "Infinity");
        else
            row_lit(r, "-Infinity");
    } else if (v == 0) {
        if (signbit(v))
            row_lit(r, "-0");
        else
            row_lit(r, "0");
    } else if (v == floor(v) && fabs(v) < 1e15) {
        row_int(r, (int64_t)v);
    } else {
        n = snprintf(tmp, sizeof(tmp), "%.17g", v);
        row_put(r, tmp, (size_t)n);
    }
}

/* Days since 1970-01-01 -> proleptic Gregorian year, month, day, for any
 * day count (negative ones too). Counted in 400-year eras of 146,097 days
 * from 0000-03-01, so that the leap day is the last day of a year. */
static void civil_from_days(int64_t days, int64_t *y, int *m, int *d)
{
    int64_t z = days + 719468; /* days since 0000-03-01 */
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097; /* 0..146096 */
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100); /* 0..365 */
    int64_t mp = (5 * doy + 2) / 153; /* 0 = March .. 11 = February */

    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

static char *put2(char *p, int v)
{
    p[0] = (char)('0' + v / 10);
    p[1] = (char)('0' + v % 10);
    return p + 2;
}

/* "YYYY-MM-DD HH:MM:SS" of epoch second sec, UTC, into b's cache. The
 * year has at least four digits; a year before 1 is written as PostgreSQL
 * does, as 1 - year with " BC" after the zone (ts_bc). Years that
 * PostgreSQL cannot store still format, and the server refuses them
 * (22008, the row's fault), as it refused to_timestamp() of them before. */
static void ts_second(fl_pg_batch_t *b, int64_t sec)
{
    int64_t  days = sec / 86400, rem = sec % 86400, y;
    uint64_t uy;
    int      m, d, n = 0;
    char     tmp[24], *p = b->ts_text;

    if (rem < 0) {
        rem += 86400;
        days--;
    }
    civil_from_days(days, &y, &m, &d);
    b->ts_bc = y <= 0;
    uy = b->ts_bc ? (uint64_t)1 - (uint64_t)y : (uint64_t)y;
    do {
        tmp[n++] = (char)('0' + uy % 10);
        uy /= 10;
    } while (uy);
    while (n < 4)
        tmp[n++] = '0';
    while (n)
        *p++ = tmp[--n];
    *p++ = '-';
    p = put2(p, m);
    *p++ = '-';
    p = put2(p, d);
    *p++ = ' ';
    p = put2(p, (int)(rem / 3600));
    *p++ = ':';
    p = put2(p, (int)(rem / 60 % 60));
    *p++ = ':';
    p = put2(p, (int)(rem % 60));
    b->ts_len = (size_t)(p - b->ts_text);
    b->ts_sec = sec;
}

/* A timestamptz in ISO format, UTC, to the microsecond:
 * "2026-11-29 04:00:00.123+00", or "...00.123456+00" when the time is not
 * a whole millisecond. The server reads ISO year-month-day whatever the
 * session's DateStyle, and the explicit zone whatever its TimeZone. Rows
 * of one batch mostly share their second: its text is cached in the
 * batch, only the fraction is formatted per row. */
static void row_ts(row_t *r, fl_pg_batch_t *b, int64_t ts_us)
{
    int64_t sec = ts_us / 1000000;
    int     us = (int)(ts_us % 1000000);
    char    frac[10];
    size_t  n = 0;
    int     digits = 6, div = 100000;

    if (us < 0) {
        us += 1000000;
        sec--;
    }
    if (sec != b->ts_sec || b->ts_len == 0)
        ts_second(b, sec);
    row_put(r, b->ts_text, b->ts_len);
    if (us % 1000 == 0)
        digits = 3;
    frac[n++] = '.';
    for (int i = 0; i < digits; i++, div /= 10)
        frac[n++] = (char)('0' + us / div % 10);
    frac[n++] = '+';
    frac[n++] = '0';
    frac[n++] = '0';
    row_put(r, frac, n);
    if (b->ts_bc)
        row_lit(r, " BC");
}

/*
 * Columns of the telemetry table: ts, value, value_bool, device_id,
 * metric, value_text, unit, src (FL_COPY_COLUMNS). One row per metric of
 * every point; exactly one of the three value columns is set, the others
 * are \N. The fast path copies these rows into telemetry, the staging
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
            const char        *str = NULL;

            row_ts(&r, b, p->ts_us);
            switch (m->type) {
            case FL_METRIC_NUM:
                row_lit(&r, "\t");
                row_double(&r, m->num);
                row_lit(&r, "\t\\N\t");
                break;
            case FL_METRIC_BOOL:
                if (m->b)
                    row_lit(&r, "\t\\N\tt\t");
                else
                    row_lit(&r, "\t\\N\tf\t");
                break;
            default:
                row_lit(&r, "\t\\N\t\\N\t");
                str = m->str ? m->str : "";
                break;
            }
            row_text(&r, device);
            row_lit(&r, "\t");
            row_text(&r, m->name);
            row_lit(&r, "\t");
            if (str) {
                row_text(&r, str);
                row_lit(&r, "\t");
            } else {
                row_lit(&r, "\\N\t");
            }
            if (m->unit)
                row_text(&r, m->unit);
            else
                row_lit(&r, "\\N");
            row_lit(&r, "\t");
            row_int(&r, src);
            row_lit(&r, "\n");
            b->rows++;
        }
    }
    row_flush(&r);
}
