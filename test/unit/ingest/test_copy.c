/*
 * test_copy.c - fl_pg_batch_t: telemetry rows in COPY text format.
 *
 * The server reads these bytes as they are, so every check is on the
 * exact text: escapes of the text columns, \N, numbers that read back as
 * the same double, t / f, the column layout, and the timestamps. Expected
 * texts are literals worked out by hand (and checked once against
 * PostgreSQL 15: extract(epoch FROM literal::timestamptz) gives the ms),
 * or come from gmtime_r() / strtod(), never from the code under test.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fl_copy.h"
#include "fl_core.h"
#include "unit.h"

/* columns of a row: ts, value, value_bool, device_id, metric, value_text,
 * unit, src */
#define NCOLS 8

/* ---- helpers ---- */

static fl_metric_t m_num(const char *name, double v)
{
    fl_metric_t m;

    memset(&m, 0, sizeof(m));
    m.name = name;
    m.type = FL_METRIC_NUM;
    m.num = v;
    return m;
}

static fl_metric_t m_bool(const char *name, int v)
{
    fl_metric_t m;

    memset(&m, 0, sizeof(m));
    m.name = name;
    m.type = FL_METRIC_BOOL;
    m.b = v;
    return m;
}

static fl_metric_t m_str(const char *name, const char *s)
{
    fl_metric_t m;

    memset(&m, 0, sizeof(m));
    m.name = name;
    m.type = FL_METRIC_STR;
    m.str = s;
    return m;
}

/* Adds one point at ts_ms with metrics m[0..n) for device, from the
 * message src 7. */
static void add_point(fl_pg_batch_t *b, const char *device, int64_t ts_ms,
                      fl_metric_t *m, size_t n)
{
    fl_point_t     p;
    fl_telemetry_t t;

    memset(&p, 0, sizeof(p));
    memset(&t, 0, sizeof(t));
    p.ts_us = ts_ms * 1000;
    p.metrics = m;
    p.nmetrics = n;
    t.points = &p;
    t.npoints = 1;
    t.nmetrics = n;
    fl_pg_batch_add(b, device, &t, 7);
}

/* Adds one row: number 1 at ts_ms (for the timestamp tests). */
static void add_ts(fl_pg_batch_t *b, int64_t ts_ms)
{
    fl_metric_t m = m_num("x", 1);

    add_point(b, "d", ts_ms, &m, 1);
}

/* The batch's bytes, NUL-terminated (free() it). */
static char *batch_text(fl_pg_batch_t *b)
{
    size_t len = evbuffer_get_length(b->copy);
    char  *s = malloc(len + 1);

    if (s == NULL)
        abort();
    evbuffer_copyout(b->copy, s, len);
    s[len] = '\0';
    return s;
}

/* s with its control characters made visible, into out, for messages. */
static const char *visible(const char *s, char *out, size_t size)
{
    size_t n = 0;

    for (; *s && n + 5 < size; s++) {
        unsigned char c = (unsigned char)*s;

        if (c == '\t')
            n += (size_t)snprintf(out + n, size - n, "<TAB>");
        else if (c == '\n')
            n += (size_t)snprintf(out + n, size - n, "<LF>");
        else if (c == '\r')
            n += (size_t)snprintf(out + n, size - n, "<CR>");
        else if (c < 0x20)
            n += (size_t)snprintf(out + n, size - n, "<%02x>", c);
        else
            out[n++] = (char)c;
    }
    out[n] = '\0';
    return out;
}

static void check_text(const char *file, int line, const char *got,
                       const char *want)
{
    char   g[1024], w[1024];
    size_t i;

    if (strcmp(got, want) == 0)
        return;
    for (i = 0; got[i] && got[i] == want[i]; i++)
        ;
    fl_test_fail(file, line,
                 "differ at byte %zu:\n    got  \"%s\"\n    want \"%s\"", i,
                 visible(got, g, sizeof(g)), visible(want, w, sizeof(w)));
}

/* The whole batch is exactly want. */
#define CHECK_BATCH(b, want)                           \
    do {                                               \
        char *fl_t_ = batch_text(b);                   \
        check_text(__FILE__, __LINE__, fl_t_, (want)); \
        free(fl_t_);                                   \
    } while (0)

/* Splits the row that starts at s (ends at '\n') into columns, in place:
 * the tabs and the '\n' become NULs. Returns the number of columns (up to
 * max stored in col) and sets *next to the byte after the '\n', or NULL
 * when the row has no '\n'. */
static int split_row(char *s, char **col, int max, char **next)
{
    int n = 0;

    for (;;) {
        if (n < max)
            col[n] = s;
        n++;
        s += strcspn(s, "\t\n");
        if (*s == '\t') {
            *s++ = '\0';
            continue;
        }
        if (*s == '\n') {
            *s = '\0';
            *next = s + 1;
        } else {
            *next = NULL;
        }
        return n;
    }
}

/* Column i of every row of the batch, in order; the rows must all have
 * NCOLS columns and end with '\n'. Returns the rows (fills col[i]) and the
 * text they point into (free() it). */
static char *batch_column(const char *file, int line, fl_pg_batch_t *b, int i,
                          const char **out, size_t max, size_t *nrows)
{
    char  *text = batch_text(b), *s = text, *next;
    char  *col[NCOLS + 1];
    size_t n = 0;
    int    nc;

    while (*s) {
        nc = split_row(s, col, NCOLS + 1, &next);
        if (nc != NCOLS || next == NULL) {
            fl_test_fail(file, line, "row %zu: %d columns%s", n, nc,
                         next ? "" : ", no newline");
            break;
        }
        if (n < max)
            out[n] = col[i];
        n++;
        s = next;
    }
    *nrows = n;
    return text;
}

/* A COPY text field back to its bytes, the way the server decodes the
 * escapes that fl_copy.c writes; NULL for \N. Any other backslash
 * sequence (the server would read \b, \v, octal...) is a failure. */
static char *copy_decode(const char *file, int line, const char *f)
{
    char  *out, *o;
    size_t len = strlen(f);

    if (strcmp(f, "\\N") == 0)
        return NULL;
    out = o = malloc(len + 1);
    if (out == NULL)
        abort();
    for (; *f; f++) {
        if (*f != '\\') {
            *o++ = *f;
            continue;
        }
        switch (*++f) {
        case '\\': *o++ = '\\'; break;
        case 't': *o++ = '\t'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        default:
            fl_test_fail(file, line, "unexpected escape \\%c", *f ? *f : '0');
            if (*f == '\0')
                f--;
            break;
        }
    }
    *o = '\0';
    return out;
}

/* ---- text columns ---- */

void test_copy_text_escapes(void)
{
    fl_pg_batch_t b;
    fl_metric_t   m[5];

    fl_pg_batch_init(&b);

    /* every escape in every text column */
    m[0] = m_str("a\tb\\c", "x\\y\tz\nw\rv");
    m[0].unit = "u\n\r\\\t";
    add_point(&b, "dev\\1\t2\n3\r4", 0, m, 1);
    CHECK_BATCH(&b, "1970-01-01 00:00:00.000+00\t\\N\t\\N\t"
                    "dev\\\\1\\t2\\n3\\r4\t"
                    "a\\tb\\\\c\t"
                    "x\\\\y\\tz\\nw\\rv\t"
                    "u\\n\\r\\\\\\t\t7\n");

    /* the text "\N" is not NULL; "" is the empty string, not NULL; a
     * text metric without a string is ""; no unit is NULL; UTF-8 and
     * other bytes pass as they are */
    fl_pg_batch_reset(&b);
    m[0] = m_str("n", "\\N");
    m[0].unit = "\\N";
    m[1] = m_str("e", "");
    m[1].unit = "";
    m[2] = m_str("z", NULL);
    m[3] = m_str("temp\xc2\xb0", "caf\xc3\xa9 \xe2\x82\xac \"q\" 'a' ,;|");
    m[3].unit = "\302\260C"; /* degree sign, C */
    m[4] = m_num("\\N", 2);
    add_point(&b, "\\N", 0, m, 5);
    CHECK_BATCH(
        &b, "1970-01-01 00:00:00.000+00\t\\N\t\\N\t\\\\N\tn\t\\\\N\t\\\\N\t7\n"
            "1970-01-01 00:00:00.000+00\t\\N\t\\N\t\\\\N\te\t\t\t7\n"
            "1970-01-01 00:00:00.000+00\t\\N\t\\N\t\\\\N\tz\t\t\\N\t7\n"
            "1970-01-01 00:00:00.000+00\t\\N\t\\N\t\\\\N\ttemp\xc2\xb0\t"
            "caf\xc3\xa9 \xe2\x82\xac \"q\" 'a' ,;|\t\302\260C\t7\n"
            "1970-01-01 00:00:00.000+00\t2\t\\N\t\\\\N\t\\\\N\t\\N\t\\N\t7\n");
    FL_CHECK_EQ_U64(b.rows, 5);

    fl_pg_batch_free(&b);
}

/* Every ASCII byte in every text column, and values longer than the row
 * buffer with escapes across its boundary, decode back to their bytes. */
void test_copy_text_roundtrip(void)
{
    fl_pg_batch_t b;
    fl_metric_t   m;
    char          all[128], *big;
    const char   *dev[16], *name[16], *val[16], *unit[16];
    size_t        i, n, nd, nn, nv, nu, biglen = 5000;
    char         *t1, *t2, *t3, *t4, *d;

    for (i = 1; i < 128; i++)
        all[i - 1] = (char)i;
    all[127] = '\0';
    big = malloc(biglen + 1);
    FL_REQUIRE(big != NULL);
    for (i = 0; i < biglen; i++)
        big[i] = "ab\\\tc\n\rd"[i % 8]; /* escapes at every offset mod 8 */
    big[biglen] = '\0';

    fl_pg_batch_init(&b);
    m = m_str(all, all);
    m.unit = all;
    add_point(&b, all, 1, &m, 1);
    m = m_str(big, big);
    m.unit = big;
    add_point(&b, big, 2, &m, 1);
    for (n = 1; n < 1100; n += 97) { /* around the 1024-byte row buffer */
        big[n] = '\0';
        m = m_str("s", big);
        add_point(&b, "d", 3, &m, 1);
        big[n] = "ab\\\tc\n\rd"[n % 8];
    }
    FL_CHECK_EQ_U64(b.rows, 2 + 12);

    t1 = batch_column(__FILE__, __LINE__, &b, 3, dev, 16, &nd);
    t2 = batch_column(__FILE__, __LINE__, &b, 4, name, 16, &nn);
    t3 = batch_column(__FILE__, __LINE__, &b, 5, val, 16, &nv);
    t4 = batch_column(__FILE__, __LINE__, &b, 6, unit, 16, &nu);
    FL_CHECK_EQ_U64(nd, 14);
    FL_CHECK_EQ_U64(nn, 14);
    FL_CHECK_EQ_U64(nv, 14);
    FL_CHECK_EQ_U64(nu, 14);
    if (nd >= 2 && nn >= 2 && nv >= 2 && nu >= 2) {
        for (i = 0; i < 2; i++) {
            const char *want = i == 0 ? all : big;
            const char *got[4] = {dev[i], name[i], val[i], unit[i]};

            for (int c = 0; c < 4; c++) {
                d = copy_decode(__FILE__, __LINE__, got[c]);
                if (d == NULL || strcmp(d, want) != 0)
                    fl_test_fail(__FILE__, __LINE__,
                                 "row %zu column %d does not decode back", i,
                                 c + 3);
                free(d);
            }
        }
    }

    /* the shorter values: value_text of rows 2.. is a prefix of big */
    for (i = 2, n = 1; i < nv && i < 16; i++, n += 97) {
        d = copy_decode(__FILE__, __LINE__, val[i]);
        if (d == NULL || strlen(d) != n || memcmp(d, big, n) != 0)
            fl_test_fail(__FILE__, __LINE__, "short value %zu (%zu bytes)", i,
                         n);
        free(d);
    }
    free(t1);
    free(t2);
    free(t3);
    free(t4);

    fl_pg_batch_free(&b);
    free(big);
}

/* ---- numbers and booleans ---- */

static const struct {
    double      v;
    const char *text;
} numbers[] = {
    /* integers as integers: no ".0", no exponent */
    {0.0, "0"},
    {1.0, "1"},
    {-1.0, "-1"},
    {42.0, "42"},
    {-7.0, "-7"},
    {999999999999999.0, "999999999999999"},
    {-999999999999999.0, "-999999999999999"},
    {1e15, "1000000000000000"},
    {-1e15, "-1000000000000000"},
    {9007199254740992.0, "9007199254740992"}, /* 2^53 */
    {1e16, "10000000000000000"},
    {1e20, "1e+20"},
    {9223372036854775808.0, "9.2233720368547758e+18"}, /* 2^63 */
    /* negative zero is kept */
    {-0.0, "-0"},
    /* fractions: 17 significant digits where the shortest would not do */
    {0.5, "0.5"},
    {-0.5, "-0.5"},
    {1.5, "1.5"},
    {-2.25, "-2.25"},
    {123.456, "123.456"},
    {0.1, "0.10000000000000001"},
    {4.35, "4.3499999999999996"},
    {1.0 / 3.0, "0.33333333333333331"},
    {999999999999999.5, "999999999999999.5"},
    {1000000000000000.5, "1000000000000000.5"},
    {-1e-5, "-1.0000000000000001e-05"},
    {1e-7, "9.9999999999999995e-08"},
    {1e23, "9.9999999999999992e+22"},
    {6.02214076e23, "6.0221407599999999e+23"},
    /* the ends of the range */
    {1e300, "1.0000000000000001e+300"},
    {1e-300, "1e-300"},
    {DBL_MAX, "1.7976931348623157e+308"},
    {-DBL_MAX, "-1.7976931348623157e+308"},
    {DBL_MIN, "2.2250738585072014e-308"},
    {4.9406564584124654e-324, "4.9406564584124654e-324"}, /* subnormal */
    /* not from the parser (it keeps finite numbers only), but spelled
     * the way float8 reads them */
    {NAN, "NaN"},
    {INFINITY, "Infinity"},
    {-INFINITY, "-Infinity"},
};

void test_copy_numbers(void)
{
    fl_pg_batch_t b;
    fl_metric_t   m;
    const char   *col[64];
    size_t        i, n;
    char         *text, *end;

    fl_pg_batch_init(&b);
    for (i = 0; i < fl_nelem(numbers); i++) {
        m = m_num("v", numbers[i].v);
        add_point(&b, "d", 0, &m, 1);
    }
    text = batch_column(__FILE__, __LINE__, &b, 1, col, 64, &n);
    FL_CHECK_EQ_U64(n, fl_nelem(numbers));
    for (i = 0; i < n && i < fl_nelem(numbers); i++) {
        double back;

        check_text(__FILE__, __LINE__, col[i], numbers[i].text);
        back = strtod(col[i], &end);
        if (*end != '\0')
            fl_test_fail(__FILE__, __LINE__, "\"%s\" is not a number", col[i]);
        if (isnan(numbers[i].v) ? !isnan(back)
                                : memcmp(&back, &numbers[i].v, 8) != 0)
            fl_test_fail(__FILE__, __LINE__, "%s reads back as %.17g", col[i],
                         back);
    }
    free(text);
    fl_pg_batch_free(&b);
}

/* Doubles from all over the bit space read back bit for bit; integral
 * ones below 1e15 are written as integers. */
void test_copy_numbers_roundtrip(void)
{
    enum { N = 20000 };
    fl_pg_batch_t b;
    fl_metric_t   m;
    const char  **col;
    double       *v;
    uint64_t      x = 0x9e3779b97f4a7c15ull, bits;
    size_t        i, n, bad = 0;
    char         *text, *end;

    col = malloc(N * sizeof(*col));
    v = malloc(N * sizeof(*v));
    FL_REQUIRE(col != NULL && v != NULL);
    for (i = 0; i < N; i++) {
        x ^= x << 13; /* xorshift64 */
        x ^= x >> 7;
        x ^= x << 17;
        switch (i % 4) {
        case 0: /* any bits */
            bits = x;
            memcpy(&v[i], &bits, 8);
            if (!isfinite(v[i]))
                v[i] = (double)(int64_t)x;
            break;
        case 1: /* integers up to 2^53 */
            v[i] = (double)(int64_t)(x >> 11) * (x & 1 ? -1 : 1);
            break;
        case 2: /* integers below 1e15 */
            v[i] = (double)(x % 1000000000000000ull) * (x & 1 ? -1 : 1);
            break;
        default: /* sensor-like: a few decimals */
            v[i] = (double)(int64_t)(x % 2000001) / 1000.0 - 1000.0;
            break;
        }
    }

    fl_pg_batch_init(&b);
    for (i = 0; i < N; i++) {
        m = m_num("v", v[i]);
        add_point(&b, "d", 0, &m, 1);
    }
    text = batch_column(__FILE__, __LINE__, &b, 1, col, N, &n);
    FL_CHECK_EQ_U64(n, N);
    for (i = 0; i < n && i < N && bad < 10; i++) {
        double back = strtod(col[i], &end);

        if (*end != '\0' || memcmp(&back, &v[i], 8) != 0) {
            fl_test_fail(__FILE__, __LINE__, "%a written as \"%s\"", v[i],
                         col[i]);
            bad++;
        }
        if (v[i] == floor(v[i]) && fabs(v[i]) < 1e15 &&
            strpbrk(col[i], ".eE") != NULL) {
            fl_test_fail(__FILE__, __LINE__, "integer %.17g written as \"%s\"",
                         v[i], col[i]);
            bad++;
        }
    }
    free(text);
    fl_pg_batch_free(&b);
    free(col);
    free(v);
}

void test_copy_bool(void)
{
    fl_pg_batch_t b;
    fl_metric_t   m[2];

    fl_pg_batch_init(&b);
    m[0] = m_bool("on", 1);
    m[1] = m_bool("off", 0);
    m[1].unit = "sw";
    add_point(&b, "d1", 0, m, 2);
    CHECK_BATCH(&b,
                "1970-01-01 00:00:00.000+00\t\\N\tt\td1\ton\t\\N\t\\N\t7\n"
                "1970-01-01 00:00:00.000+00\t\\N\tf\td1\toff\t\\N\tsw\t7\n");
    FL_CHECK_EQ_U64(b.rows, 2);
    fl_pg_batch_free(&b);
}

/* ---- the row layout ---- */

/* Rows of a mixed batch: 7 columns in telemetry's order, exactly one of
 * the value columns set, the one of the metric's type. */
void test_copy_layout(void)
{
    fl_pg_batch_t  b;
    fl_metric_t    p1[3], p2[2];
    fl_point_t     pt[2];
    fl_telemetry_t t;
    char          *text, *s, *next, *col[NCOLS + 1];
    size_t         row = 0;
    int            nc;
    static const struct {
        const char *value, *value_bool, *metric, *value_text, *unit;
    } want[] = {
        {"21.5", "\\N", "temp", "\\N", "C"},
        {"\\N", "t", "door", "\\N", "\\N"},
        {"\\N", "\\N", "fw", "1.2.3", "\\N"},
        {"-3", "\\N", "rssi", "\\N", "dBm"},
        {"\\N", "f", "door", "\\N", "\\N"},
    };

    FL_CHECK_STR(FL_COPY_COLUMNS, "ts, value, value_bool, device_id, metric, "
                                  "value_text, unit, src");

    p1[0] = m_num("temp", 21.5);
    p1[0].unit = "C";
    p1[1] = m_bool("door", 1);
    p1[2] = m_str("fw", "1.2.3");
    p2[0] = m_num("rssi", -3);
    p2[0].unit = "dBm";
    p2[1] = m_bool("door", 0);
    memset(pt, 0, sizeof(pt));
    memset(&t, 0, sizeof(t));
    pt[0].ts_us = 1795924800123000;
    pt[0].metrics = p1;
    pt[0].nmetrics = 3;
    pt[1].ts_us = 1795924801000000;
    pt[1].metrics = p2;
    pt[1].nmetrics = 2;
    t.points = pt;
    t.npoints = 2;
    t.nmetrics = 5;

    fl_pg_batch_init(&b);
    fl_pg_batch_add(&b, "dev-7", &t, 1795924800123000042LL);
    FL_CHECK_EQ_U64(b.rows, 5);

    text = batch_text(&b);
    for (s = text; *s; s = next, row++) {
        nc = split_row(s, col, NCOLS + 1, &next);
        FL_CHECK_EQ_INT(nc, NCOLS);
        if (nc != NCOLS || next == NULL || row >= fl_nelem(want)) {
            fl_test_fail(__FILE__, __LINE__, "row %zu malformed", row);
            break;
        }
        FL_CHECK_STR(col[0], row < 3 ? "2026-11-29 04:00:00.123+00"
                                     : "2026-11-29 04:00:01.000+00");
        FL_CHECK_STR(col[1], want[row].value);
        FL_CHECK_STR(col[2], want[row].value_bool);
        FL_CHECK_STR(col[3], "dev-7");
        FL_CHECK_STR(col[4], want[row].metric);
        FL_CHECK_STR(col[5], want[row].value_text);
        FL_CHECK_STR(col[6], want[row].unit);
        FL_CHECK_STR(col[7], "1795924800123000042");
        /* one value column set, two NULL */
        FL_CHECK_EQ_INT((strcmp(col[1], "\\N") != 0) +
                            (strcmp(col[2], "\\N") != 0) +
                            (strcmp(col[5], "\\N") != 0),
                        1);
    }
    FL_CHECK_EQ_U64(row, 5);
    free(text);
    fl_pg_batch_free(&b);
}

/* ---- timestamps ---- */

static const struct {
    int64_t     ms;
    const char *text;
} stamps[] = {
    {0, "1970-01-01 00:00:00.000+00"},
    {1, "1970-01-01 00:00:00.001+00"},
    {999, "1970-01-01 00:00:00.999+00"},
    {1000, "1970-01-01 00:00:01.000+00"},
    {1795924800123, "2026-11-29 04:00:00.123+00"},
    /* before 1970: the ms count up from the second below */
    {-1, "1969-12-31 23:59:59.999+00"},
    {-999, "1969-12-31 23:59:59.001+00"},
    {-1000, "1969-12-31 23:59:59.000+00"},
    {-1001, "1969-12-31 23:59:58.999+00"},
    {-1500, "1969-12-31 23:59:58.500+00"},
    {-86400000, "1969-12-31 00:00:00.000+00"},
    {-86400001, "1969-12-30 23:59:59.999+00"},
    {-14182940000, "1969-07-20 20:17:40.000+00"},
    /* leap days, year and century boundaries */
    {1709210096789, "2024-02-29 12:34:56.789+00"},
    {1709251199999, "2024-02-29 23:59:59.999+00"},
    {1709251200000, "2024-03-01 00:00:00.000+00"},
    {1767225599999, "2025-12-31 23:59:59.999+00"},
    {1767225600000, "2026-01-01 00:00:00.000+00"},
    {946684799999, "1999-12-31 23:59:59.999+00"},
    {946684800000, "2000-01-01 00:00:00.000+00"},
    {951782400000, "2000-02-29 00:00:00.000+00"},
    {4107542399999, "2100-02-28 23:59:59.999+00"},
    {4107542400000, "2100-03-01 00:00:00.000+00"},
    {-2203891200001, "1900-02-28 23:59:59.999+00"},
    {-2203891200000, "1900-03-01 00:00:00.000+00"},
    /* four-digit years, and more digits when needed */
    {-46374396710990, "0500-06-15 07:08:09.010+00"},
    {-62135596800000, "0001-01-01 00:00:00.000+00"},
    {253402300799999, "9999-12-31 23:59:59.999+00"},
    {253402300800000, "10000-01-01 00:00:00.000+00"},
    /* BC: year y <= 0 is 1 - y BC (no year 0); 1 BC is a leap year */
    {-62135596800001, "0001-12-31 23:59:59.999+00 BC"},
    {-62162121600000, "0001-02-29 00:00:00.000+00 BC"},
    {-63517780800000, "0044-03-15 12:00:00.000+00 BC"},
    {-210866803200000, "4714-11-24 00:00:00.000+00 BC"}, /* PG's first */
};

void test_copy_ts(void)
{
    fl_pg_batch_t b;
    const char   *col[64];
    size_t        i, n;
    char         *text;

    /* all in one batch (the cached second changes on every row) */
    fl_pg_batch_init(&b);
    for (i = 0; i < fl_nelem(stamps); i++)
        add_ts(&b, stamps[i].ms);
    text = batch_column(__FILE__, __LINE__, &b, 0, col, 64, &n);
    FL_CHECK_EQ_U64(n, fl_nelem(stamps));
    for (i = 0; i < n && i < fl_nelem(stamps); i++)
        check_text(__FILE__, __LINE__, col[i], stamps[i].text);
    free(text);

    /* each in a batch of its own (a cold cache) */
    for (i = 0; i < fl_nelem(stamps); i++) {
        fl_pg_batch_free(&b);
        fl_pg_batch_init(&b);
        add_ts(&b, stamps[i].ms);
        text = batch_column(__FILE__, __LINE__, &b, 0, col, 1, &n);
        FL_CHECK_EQ_U64(n, 1);
        if (n == 1)
            check_text(__FILE__, __LINE__, col[0], stamps[i].text);
        free(text);
    }
    fl_pg_batch_free(&b);
}

/* Against gmtime_r() over years 1 .. 9999, in steps that land on every
 * time of day and every day of the year in turn, and every ms around
 * 1970. */
void test_copy_ts_gmtime(void)
{
    fl_pg_batch_t b;
    const char  **col;
    int64_t      *ms;
    size_t        i, n, cap = 120000, nts = 0, bad = 0;
    char         *text, want[48];
    int64_t       sec;
    struct tm     tm;

    col = malloc(cap * sizeof(*col));
    ms = malloc(cap * sizeof(*ms));
    FL_REQUIRE(col != NULL && ms != NULL);
    /* ~100,000 seconds 36 days and 14.8 hours apart */
    for (sec = -62135596800; sec < 253402300800 && nts < cap; sec += 3163614) {
        ms[nts] = sec * 1000 + (int64_t)(nts * 37 % 1000);
        nts++;
    }
    for (int64_t v = -3000; v <= 3000 && nts < cap; v++)
        ms[nts++] = v;

    fl_pg_batch_init(&b);
    for (i = 0; i < nts; i++)
        add_ts(&b, ms[i]);
    text = batch_column(__FILE__, __LINE__, &b, 0, col, cap, &n);
    FL_CHECK_EQ_U64(n, nts);
    for (i = 0; i < n && i < nts && bad < 10; i++) {
        /* floor division: the second at or before ms */
        int64_t s = ms[i] / 1000 - (ms[i] % 1000 < 0);
        time_t  tt = (time_t)s;

        if (gmtime_r(&tt, &tm) == NULL) {
            fl_test_fail(__FILE__, __LINE__, "gmtime_r(%lld)", (long long)s);
            bad++;
            continue;
        }
        snprintf(want, sizeof(want), "%04d-%02d-%02d %02d:%02d:%02d.%03d+00",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                 tm.tm_min, tm.tm_sec, (int)(ms[i] - s * 1000));
        if (strcmp(col[i], want) != 0) {
            fl_test_fail(__FILE__, __LINE__, "%lld ms: \"%s\", want \"%s\"",
                         (long long)ms[i], col[i], want);
            bad++;
        }
    }
    free(text);
    fl_pg_batch_free(&b);
    free(col);
    free(ms);
}

/* The second cached in the batch: rows in one second, in different
 * seconds, back to an earlier second, BC then AD, across 1970, and after
 * a reset. */
void test_copy_ts_cache(void)
{
    fl_pg_batch_t b;
    fl_metric_t   m[2];

    fl_pg_batch_init(&b);
    add_ts(&b, 1795924800001);
    add_ts(&b, 1795924800999);            /* same second */
    add_ts(&b, 1795924801000);            /* the next */
    add_ts(&b, 1795924800500);            /* back to the first */
    add_ts(&b, 1795924800500 + 86400000); /* the next day */
    add_ts(&b, -62135596800001);          /* BC */
    add_ts(&b, -62135596800000);          /* AD again: no " BC" */
    add_ts(&b, -62135596800001);          /* BC again */
    add_ts(&b, -1);                       /* across 1970 */
    add_ts(&b, 0);
    add_ts(&b, -1000);
    CHECK_BATCH(&b, "2026-11-29 04:00:00.001+00\t1\t\\N\td\tx\t\\N\t\\N\t7\n"
                    "2026-11-29 04:00:00.999+00\t1\t\\N\td\tx\t\\N\t\\N\t7\n"
                    "2026-11-29 04:00:01.000+00\t1\t\\N\td\tx\t\\N\t\\N\t7\n"
                    "2026-11-29 04:00:00.500+00\t1\t\\N\td\tx\t\\N\t\\N\t7\n"
                    "2026-11-30 04:00:00.500+00\t1\t\\N\td\tx\t\\N\t\\N\t7\n"
                    "0001-12-31 23:59:59.999+00 BC\t1\t\\N\td\tx\t\\N\t\\N\t7\n"
                    "0001-01-01 00:00:00.000+00\t1\t\\N\td\tx\t\\N\t\\N\t7\n"
                    "0001-12-31 23:59:59.999+00 BC\t1\t\\N\td\tx\t\\N\t\\N\t7\n"
                    "1969-12-31 23:59:59.999+00\t1\t\\N\td\tx\t\\N\t\\N\t7\n"
                    "1970-01-01 00:00:00.000+00\t1\t\\N\td\tx\t\\N\t\\N\t7\n"
                    "1969-12-31 23:59:59.000+00\t1\t\\N\td\tx\t\\N\t\\N\t7\n");
    FL_CHECK_EQ_U64(b.rows, 11);

    /* after a reset: the same second, then another one */
    fl_pg_batch_reset(&b);
    FL_CHECK_EQ_U64(b.rows, 0);
    FL_CHECK_EQ_U64(evbuffer_get_length(b.copy), 0);
    add_ts(&b, -1999);
    add_ts(&b, 1709251199999);
    CHECK_BATCH(&b, "1969-12-31 23:59:58.001+00\t1\t\\N\td\tx\t\\N\t\\N\t7\n"
                    "2024-02-29 23:59:59.999+00\t1\t\\N\td\tx\t\\N\t\\N\t7\n");
    fl_pg_batch_reset(&b);
    add_ts(&b, 1709251199000);
    CHECK_BATCH(&b, "2024-02-29 23:59:59.000+00\t1\t\\N\td\tx\t\\N\t\\N\t7\n");

    /* one point, several metrics: one second for all its rows */
    fl_pg_batch_reset(&b);
    m[0] = m_num("a", 1);
    m[1] = m_bool("b", 1);
    add_point(&b, "d", -62162121600000, m, 2);
    CHECK_BATCH(&b,
                "0001-02-29 00:00:00.000+00 BC\t1\t\\N\td\ta\t\\N\t\\N\t7\n"
                "0001-02-29 00:00:00.000+00 BC\t\\N\tt\td\tb\t\\N\t\\N\t7\n");
    fl_pg_batch_free(&b);
}

/* ---- rows ---- */

void test_copy_rows(void)
{
    fl_pg_batch_t  b;
    fl_metric_t    m[3];
    fl_point_t     pt[3];
    fl_telemetry_t t;

    fl_pg_batch_init(&b);
    FL_REQUIRE(b.copy != NULL);
    FL_CHECK_EQ_U64(b.rows, 0);
    FL_CHECK_EQ_U64(evbuffer_get_length(b.copy), 0);

    m[0] = m_num("a", 1);
    m[1] = m_bool("b", 0);
    m[2] = m_str("c", "x");
    memset(pt, 0, sizeof(pt));
    memset(&t, 0, sizeof(t));
    for (int i = 0; i < 3; i++) {
        pt[i].ts_us = 1000000 * i;
        pt[i].metrics = m;
        pt[i].nmetrics = (size_t)i + 1; /* 1, 2, 3 metrics */
    }
    t.points = pt;
    t.npoints = 3;
    t.nmetrics = 6;
    fl_pg_batch_add(&b, "d", &t, 1);
    FL_CHECK_EQ_U64(b.rows, 6);
    fl_pg_batch_add(&b, "e", &t, 2); /* adds to the rows there are */
    FL_CHECK_EQ_U64(b.rows, 12);

    /* no points, no rows (and no bytes) */
    t.npoints = 0;
    fl_pg_batch_add(&b, "f", &t, 3);
    FL_CHECK_EQ_U64(b.rows, 12);
    {
        char  *text = batch_text(&b), *s;
        size_t lines = 0;

        for (s = text; *s; s++)
            lines += *s == '\n';
        FL_CHECK_EQ_U64(lines, 12);
        free(text);
    }

    fl_pg_batch_reset(&b);
    FL_CHECK_EQ_U64(b.rows, 0);
    FL_CHECK_EQ_U64(evbuffer_get_length(b.copy), 0);
    t.npoints = 1;
    fl_pg_batch_add(&b, "d", &t, 4);
    FL_CHECK_EQ_U64(b.rows, 1);

    fl_pg_batch_free(&b);
    FL_CHECK(b.copy == NULL);
    FL_CHECK_EQ_U64(b.rows, 0);
    fl_pg_batch_free(&b); /* twice is harmless */
}

/* Times that are not whole milliseconds keep their microseconds (six
 * fraction digits); whole milliseconds keep the short form; src is the
 * last column, as given. */
void test_copy_ts_us(void)
{
    fl_pg_batch_t  b;
    fl_metric_t    m = m_num("x", 1);
    fl_point_t     p[4];
    fl_telemetry_t t;

    memset(p, 0, sizeof(p));
    memset(&t, 0, sizeof(t));
    p[0].ts_us = 1795924800123000LL;
    p[1].ts_us = 1795924800123001LL;
    p[2].ts_us = 1795924800999999LL;
    p[3].ts_us = -1; /* 1969-12-31 23:59:59.999999 */
    for (int i = 0; i < 4; i++) {
        p[i].metrics = &m;
        p[i].nmetrics = 1;
    }
    t.points = p;
    t.npoints = 4;
    t.nmetrics = 4;
    fl_pg_batch_init(&b);
    fl_pg_batch_add(&b, "d", &t, 1795924800123000005LL);
    CHECK_BATCH(&b, "2026-11-29 04:00:00.123+00\t1\t\\N\td\tx\t\\N\t\\N\t"
                    "1795924800123000005\n"
                    "2026-11-29 04:00:00.123001+00\t1\t\\N\td\tx\t\\N\t\\N\t"
                    "1795924800123000005\n"
                    "2026-11-29 04:00:00.999999+00\t1\t\\N\td\tx\t\\N\t\\N\t"
                    "1795924800123000005\n"
                    "1969-12-31 23:59:59.999999+00\t1\t\\N\td\tx\t\\N\t\\N\t"
                    "1795924800123000005\n");
    fl_pg_batch_free(&b);
}
