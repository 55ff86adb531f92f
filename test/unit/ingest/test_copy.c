/*
 * test_copy.c - fl_pg_batch_t: telemetry rows in binary COPY format.
 *
 * The server reads these bytes as they are, so every check is on the
 * decoded fields: the field count and lengths, NULLs, the column layout,
 * text byte for byte, float8 bit for bit, bool bytes, int8 and the
 * timestamps. The decoder below follows the PostgreSQL docs ("COPY, Binary
 * Format"), not fl_copy.c; expected values are literals worked out by hand
 * (timestamps: unix us - 946684800000000, and their dates checked with
 * timegm()), never from the code under test.
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
enum { C_TS, C_VALUE, C_BOOL, C_DEVICE, C_METRIC, C_TEXT, C_UNIT, C_SRC };

/* 2000-01-01 00:00:00 UTC in unix microseconds */
#define PG_EPOCH_US 946684800000000LL

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

/* Adds one point at ts_us with metrics m[0..n) for device, from the
 * message src 7. */
static void add_point_us(fl_pg_batch_t *b, const char *device, int64_t ts_us,
                         fl_metric_t *m, size_t n)
{
    fl_point_t     p;
    fl_telemetry_t t;

    memset(&p, 0, sizeof(p));
    memset(&t, 0, sizeof(t));
    p.ts_us = ts_us;
    p.metrics = m;
    p.nmetrics = n;
    t.points = &p;
    t.npoints = 1;
    t.nmetrics = n;
    fl_pg_batch_add(b, device, &t, 7);
}

static void add_point(fl_pg_batch_t *b, const char *device, int64_t ts_ms,
                      fl_metric_t *m, size_t n)
{
    add_point_us(b, device, ts_ms * 1000, m, n);
}

/* Adds one row: number 1 at ts_us (for the timestamp tests). */
static void add_ts_us(fl_pg_batch_t *b, int64_t ts_us)
{
    fl_metric_t m = m_num("x", 1);

    add_point_us(b, "d", ts_us, &m, 1);
}

/* ---- the decoder ---- */

static uint64_t be(const unsigned char *p, int bytes)
{
    uint64_t v = 0;

    for (int i = 0; i < bytes; i++)
        v = v << 8 | p[i];
    return v;
}

typedef struct {
    int                  null;
    const unsigned char *p;
    size_t               len;
} field_t;

/* A batch's bytes split into rows of NCOLS fields. */
typedef struct {
    unsigned char *data;
    size_t         len;
    field_t       *f; /* row i, column c: f[i * NCOLS + c] */
    size_t         nrows;
} rows_t;

/* Splits data[0..len) into rows: an int16 field count that must be NCOLS
 * (so a header or trailer in the rows is a failure), then per field an
 * int32 length, -1 for NULL, and the bytes. Takes data (free()d by
 * rows_free()). 0 when all of it is well-formed rows. */
static int rows_split(const char *file, int line, unsigned char *data,
                      size_t len, rows_t *r)
{
    size_t off = 0, cap = 16;

    r->data = data;
    r->len = len;
    r->nrows = 0;
    r->f = malloc(cap * NCOLS * sizeof(*r->f));
    if (r->f == NULL)
        abort();
    while (off < len) {
        int16_t n;

        if (len - off < 2 || (n = (int16_t)be(data + off, 2)) != NCOLS) {
            fl_test_fail(file, line, "row %zu at byte %zu: field count %d",
                         r->nrows, off,
                         len - off < 2 ? -999 : (int16_t)be(data + off, 2));
            return -1;
        }
        off += 2;
        if (r->nrows == cap) {
            cap *= 2;
            r->f = realloc(r->f, cap * NCOLS * sizeof(*r->f));
            if (r->f == NULL)
                abort();
        }
        for (int c = 0; c < NCOLS; c++) {
            field_t *f = &r->f[r->nrows * NCOLS + c];
            int32_t  l;

            if (len - off < 4) {
                fl_test_fail(file, line, "row %zu field %d: cut short",
                             r->nrows, c);
                return -1;
            }
            l = (int32_t)be(data + off, 4);
            off += 4;
            f->null = l == -1;
            f->p = data + off;
            f->len = l < 0 ? 0 : (size_t)l;
            if (l < -1 || (l >= 0 && (size_t)l > len - off)) {
                fl_test_fail(file, line, "row %zu field %d: length %d",
                             r->nrows, c, (int)l);
                return -1;
            }
            off += f->len;
        }
        r->nrows++;
    }
    return 0;
}

static int rows_of(const char *file, int line, fl_pg_batch_t *b, rows_t *r)
{
    size_t         len = evbuffer_get_length(b->copy);
    unsigned char *data = malloc(len + 1);

    if (data == NULL)
        abort();
    evbuffer_copyout(b->copy, data, len);
    return rows_split(file, line, data, len, r);
}

static void rows_free(rows_t *r)
{
    free(r->data);
    free(r->f);
    memset(r, 0, sizeof(*r));
}

#define ROWS(b, r) rows_of(__FILE__, __LINE__, (b), (r))

static const field_t *fld(const rows_t *r, size_t row, int c)
{
    return &r->f[row * NCOLS + c];
}

/* The field is text want, byte for byte (NULL: the field is NULL). */
static void check_text(const char *file, int line, const rows_t *r, size_t row,
                       int c, const char *want)
{
    const field_t *f = fld(r, row, c);
    size_t         i;

    if (want == NULL || f->null) {
        if ((want == NULL) != f->null)
            fl_test_fail(file, line, "row %zu column %d: %s, want %s", row, c,
                         f->null ? "NULL" : "not NULL",
                         want ? "not NULL" : "NULL");
        return;
    }
    if (f->len == strlen(want) && memcmp(f->p, want, f->len) == 0)
        return;
    for (i = 0; i < f->len && want[i] && f->p[i] == (unsigned char)want[i]; i++)
        ;
    fl_test_fail(file, line,
                 "row %zu column %d: %zu bytes, want %zu; differ at byte %zu",
                 row, c, f->len, strlen(want), i);
}

/* The field is 8 bytes, the big-endian want. */
static void check_int8(const char *file, int line, const rows_t *r, size_t row,
                       int c, uint64_t want)
{
    const field_t *f = fld(r, row, c);

    if (f->null || f->len != 8) {
        fl_test_fail(file, line, "row %zu column %d: %s, %zu bytes", row, c,
                     f->null ? "NULL" : "not NULL", f->len);
        return;
    }
    if (be(f->p, 8) != want)
        fl_test_fail(file, line, "row %zu column %d: %lld, want %lld", row, c,
                     (long long)be(f->p, 8), (long long)want);
}

static void check_bool(const char *file, int line, const rows_t *r, size_t row,
                       int c, int want)
{
    const field_t *f = fld(r, row, c);

    if (f->null || f->len != 1 || f->p[0] != (want ? 1 : 0))
        fl_test_fail(file, line, "row %zu column %d: %s, %zu bytes, want %d",
                     row, c, f->null ? "NULL" : "not NULL", f->len, want);
}

#define CHECK_TEXT(r, row, c, want) \
    check_text(__FILE__, __LINE__, (r), (row), (c), (want))
#define CHECK_NULL(r, row, c) CHECK_TEXT(r, row, c, NULL)
#define CHECK_INT8(r, row, c, want) \
    check_int8(__FILE__, __LINE__, (r), (row), (c), (uint64_t)(want))
#define CHECK_BOOL(r, row, c, want) \
    check_bool(__FILE__, __LINE__, (r), (row), (c), (want))

/* A float8 field holds the bits of want. */
static void check_float8(const char *file, int line, const rows_t *r,
                         size_t row, int c, double want)
{
    uint64_t bits;

    memcpy(&bits, &want, 8);
    check_int8(file, line, r, row, c, bits);
}

#define CHECK_FLOAT8(r, row, c, want) \
    check_float8(__FILE__, __LINE__, (r), (row), (c), (want))

/* ---- header and trailer ---- */

/* The exported bytes, and a whole COPY stream as fl_pg.c sends it (header,
 * the rows of two batches joined as fl_ingest.c joins them, trailer)
 * read back: signature, flags 0, no extension, the rows, -1, the end. */
void test_copy_header(void)
{
    static const unsigned char want_header[19] = {
        'P', 'G', 'C', 'O', 'P', 'Y', '\n', 0xff, '\r', '\n', 0, /* signature */
        0,   0,   0,   0,                                        /* flags */
        0,   0,   0,   0, /* header extension length */
    };
    fl_pg_batch_t    a, b;
    fl_metric_t      m = m_num("x", 1);
    struct evbuffer *all;
    unsigned char   *data;
    size_t           len;
    rows_t           r;

    FL_CHECK_EQ_U64(sizeof(fl_copy_header), 19);
    FL_CHECK_EQ_U64(sizeof(fl_copy_trailer), 2);
    FL_CHECK(memcmp(fl_copy_header, want_header, 19) == 0);
    FL_CHECK(memcmp(fl_copy_header, "PGCOPY\n\377\r\n\0", 11) == 0);
    FL_CHECK_EQ_INT((int16_t)be(fl_copy_trailer, 2), -1);

    /* an empty batch has no bytes: the header is not in the rows */
    fl_pg_batch_init(&a);
    fl_pg_batch_init(&b);
    FL_CHECK_EQ_U64(evbuffer_get_length(a.copy), 0);

    add_point(&a, "d1", 1000, &m, 1);
    add_point(&b, "d2", 2000, &m, 1);
    add_point(&b, "d3", 3000, &m, 1);
    all = evbuffer_new();
    FL_REQUIRE(all != NULL);
    evbuffer_add(all, fl_copy_header, sizeof(fl_copy_header));
    evbuffer_add_buffer(all, a.copy); /* as handover() joins chunks */
    evbuffer_add_buffer(all, b.copy);
    evbuffer_add(all, fl_copy_trailer, sizeof(fl_copy_trailer));
    len = evbuffer_get_length(all);
    data = malloc(len);
    FL_REQUIRE(data != NULL);
    evbuffer_copyout(all, data, len);
    evbuffer_free(all);

    FL_REQUIRE(len >= 19 + 2);
    FL_CHECK(memcmp(data, "PGCOPY\n\377\r\n\0", 11) == 0);
    FL_CHECK_EQ_U64(be(data + 11, 4), 0); /* flags */
    FL_CHECK_EQ_U64(be(data + 15, 4), 0); /* header extension */
    FL_CHECK_EQ_INT((int16_t)be(data + len - 2, 2), -1);
    {
        unsigned char *rows = malloc(len - 21 + 1);

        FL_REQUIRE(rows != NULL);
        memcpy(rows, data + 19, len - 21);
        if (rows_split(__FILE__, __LINE__, rows, len - 21, &r) == 0) {
            FL_CHECK_EQ_U64(r.nrows, 3);
            if (r.nrows == 3) {
                CHECK_TEXT(&r, 0, C_DEVICE, "d1");
                CHECK_TEXT(&r, 1, C_DEVICE, "d2");
                CHECK_TEXT(&r, 2, C_DEVICE, "d3");
                CHECK_INT8(&r, 2, C_TS, 3000000 - PG_EPOCH_US);
            }
        }
        rows_free(&r);
    }
    free(data);
    fl_pg_batch_free(&a);
    fl_pg_batch_free(&b);
}

/* ---- text columns ---- */

/* Strings go out as their bytes: tabs, newlines, backslashes, "\N" and
 * UTF-8 unchanged, "" is the empty string (not NULL), a text metric
 * without a string is "", no unit is NULL. */
void test_copy_text_raw(void)
{
    fl_pg_batch_t b;
    fl_metric_t   m[5];
    rows_t        r;

    fl_pg_batch_init(&b);

    m[0] = m_str("a\tb\\c", "x\\y\tz\nw\rv");
    m[0].unit = "u\n\r\\\t";
    add_point(&b, "dev\\1\t2\n3\r4", 0, m, 1);
    FL_CHECK_EQ_U64(b.rows, 1);
    if (ROWS(&b, &r) == 0 && r.nrows == 1) {
        CHECK_INT8(&r, 0, C_TS, -PG_EPOCH_US);
        CHECK_NULL(&r, 0, C_VALUE);
        CHECK_NULL(&r, 0, C_BOOL);
        CHECK_TEXT(&r, 0, C_DEVICE, "dev\\1\t2\n3\r4");
        CHECK_TEXT(&r, 0, C_METRIC, "a\tb\\c");
        CHECK_TEXT(&r, 0, C_TEXT, "x\\y\tz\nw\rv");
        CHECK_TEXT(&r, 0, C_UNIT, "u\n\r\\\t");
        CHECK_INT8(&r, 0, C_SRC, 7);
    } else {
        fl_test_fail(__FILE__, __LINE__, "%zu rows", r.nrows);
    }
    rows_free(&r);

    fl_pg_batch_reset(&b);
    FL_CHECK_EQ_U64(evbuffer_get_length(b.copy), 0);
    m[0] = m_str("n", "\\N");
    m[0].unit = "\\N";
    m[1] = m_str("e", "");
    m[1].unit = "";
    m[2] = m_str("z", NULL);
    m[3] = m_str("temp\xc2\xb0", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 "
                                 "\"q\" 'a' ,;|");
    m[3].unit = "\302\260C"; /* degree sign, C */
    m[4] = m_num("\\N", 2);
    add_point(&b, "\\N", 0, m, 5);
    FL_CHECK_EQ_U64(b.rows, 5);
    if (ROWS(&b, &r) == 0 && r.nrows == 5) {
        for (size_t i = 0; i < 5; i++) {
            CHECK_INT8(&r, i, C_TS, -PG_EPOCH_US);
            CHECK_TEXT(&r, i, C_DEVICE, "\\N");
            CHECK_INT8(&r, i, C_SRC, 7);
        }
        CHECK_TEXT(&r, 0, C_METRIC, "n");
        CHECK_TEXT(&r, 0, C_TEXT, "\\N");
        CHECK_TEXT(&r, 0, C_UNIT, "\\N");
        CHECK_TEXT(&r, 1, C_TEXT, "");
        CHECK_TEXT(&r, 1, C_UNIT, "");
        CHECK_TEXT(&r, 2, C_TEXT, "");
        CHECK_NULL(&r, 2, C_UNIT);
        CHECK_TEXT(&r, 3, C_METRIC, "temp\xc2\xb0");
        CHECK_TEXT(&r, 3, C_TEXT,
                   "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \"q\" 'a' ,;|");
        CHECK_TEXT(&r, 3, C_UNIT, "\302\260C");
        CHECK_TEXT(&r, 4, C_METRIC, "\\N");
        CHECK_FLOAT8(&r, 4, C_VALUE, 2.0);
        CHECK_NULL(&r, 4, C_TEXT);
        CHECK_NULL(&r, 4, C_UNIT);
        for (size_t i = 0; i < 4; i++) {
            CHECK_NULL(&r, i, C_VALUE);
            CHECK_NULL(&r, i, C_BOOL);
        }
    } else {
        fl_test_fail(__FILE__, __LINE__, "%zu rows", r.nrows);
    }
    rows_free(&r);
    fl_pg_batch_free(&b);
}

/* Every byte 1..255 in every text column (the encoder does not look at
 * them; the parser guarantees UTF-8), values longer than the row buffer,
 * and values whose ends fall all around its 1024 bytes, come out byte for
 * byte with their exact length. */
void test_copy_text_roundtrip(void)
{
    fl_pg_batch_t b;
    fl_metric_t   m;
    char          all[256], *big;
    size_t        i, n, biglen = 5000;
    rows_t        r;

    for (i = 1; i < 256; i++)
        all[i - 1] = (char)i;
    all[255] = '\0';
    big = malloc(biglen + 1);
    FL_REQUIRE(big != NULL);
    for (i = 0; i < biglen; i++)
        big[i] = "ab\\\tc\n\rd\xc3\xa9"[i % 10];
    big[biglen] = '\0';

    fl_pg_batch_init(&b);
    m = m_str(all, all);
    m.unit = all;
    add_point(&b, all, 1, &m, 1);
    m = m_str(big, big);
    m.unit = big;
    add_point(&b, big, 2, &m, 1);
    for (n = 1; n < 1100; n += 97) { /* around the 1024-byte row buffer */
        char keep = big[n];

        big[n] = '\0';
        m = m_str("s", big);
        m.unit = big;
        add_point(&b, big, 3, &m, 1);
        big[n] = keep;
    }
    FL_CHECK_EQ_U64(b.rows, 2 + 12);

    if (ROWS(&b, &r) == 0 && r.nrows == 14) {
        for (i = 0; i < 2; i++) {
            const char *want = i == 0 ? all : big;

            CHECK_TEXT(&r, i, C_DEVICE, want);
            CHECK_TEXT(&r, i, C_METRIC, want);
            CHECK_TEXT(&r, i, C_TEXT, want);
            CHECK_TEXT(&r, i, C_UNIT, want);
            CHECK_INT8(&r, i, C_SRC, 7);
        }
        for (i = 2, n = 1; i < 14; i++, n += 97) {
            char keep = big[n];

            big[n] = '\0';
            CHECK_TEXT(&r, i, C_DEVICE, big);
            CHECK_TEXT(&r, i, C_METRIC, "s");
            CHECK_TEXT(&r, i, C_TEXT, big);
            CHECK_TEXT(&r, i, C_UNIT, big);
            CHECK_INT8(&r, i, C_TS, 3000 - PG_EPOCH_US);
            CHECK_INT8(&r, i, C_SRC, 7);
            big[n] = keep;
        }
    } else {
        fl_test_fail(__FILE__, __LINE__, "%zu rows", r.nrows);
    }
    rows_free(&r);
    fl_pg_batch_free(&b);
    free(big);
}

/* ---- numbers and booleans ---- */

/* float8 on the wire: the IEEE 754 bits, big-endian (the bits written out
 * by hand, so a byte order mistake shows) */
static const struct {
    double   v;
    uint64_t bits;
} numbers[] = {
    {0.0, 0x0000000000000000ull},
    {-0.0, 0x8000000000000000ull}, /* negative zero is kept */
    {1.0, 0x3ff0000000000000ull},
    {-1.0, 0xbff0000000000000ull},
    {42.0, 0x4045000000000000ull},
    {0.5, 0x3fe0000000000000ull},
    {-2.25, 0xc002000000000000ull},
    {0.1, 0x3fb999999999999aull},
    {1.0 / 3.0, 0x3fd5555555555555ull},
    {123.456, 0x405edd2f1a9fbe77ull},
    {9007199254740992.0, 0x4340000000000000ull}, /* 2^53 */
    {1e300, 0x7e37e43c8800759cull},
    {1e-300, 0x01a56e1fc2f8f359ull},
    {DBL_MAX, 0x7fefffffffffffffull},
    {-DBL_MAX, 0xffefffffffffffffull},
    {DBL_MIN, 0x0010000000000000ull},
    {4.9406564584124654e-324, 0x0000000000000001ull}, /* subnormal */
    {2.2250738585072009e-308, 0x000fffffffffffffull}, /* largest one */
    /* not from the parser (it keeps finite numbers only), but float8
     * takes them */
    {INFINITY, 0x7ff0000000000000ull},
    {-INFINITY, 0xfff0000000000000ull},
};

void test_copy_numbers(void)
{
    fl_pg_batch_t b;
    fl_metric_t   m;
    size_t        i;
    rows_t        r;

    fl_pg_batch_init(&b);
    for (i = 0; i < fl_nelem(numbers); i++) {
        m = m_num("v", numbers[i].v);
        add_point(&b, "d", 0, &m, 1);
    }
    m = m_num("v", NAN);
    add_point(&b, "d", 0, &m, 1);
    FL_CHECK_EQ_U64(b.rows, fl_nelem(numbers) + 1);
    if (ROWS(&b, &r) == 0 && r.nrows == fl_nelem(numbers) + 1) {
        for (i = 0; i < fl_nelem(numbers); i++) {
            CHECK_INT8(&r, i, C_VALUE, numbers[i].bits);
            CHECK_NULL(&r, i, C_BOOL);
            CHECK_NULL(&r, i, C_TEXT);
        }
        {
            const field_t *f = fld(&r, i, C_VALUE);
            uint64_t       bits;
            double         back;

            FL_REQUIRE(!f->null && f->len == 8);
            bits = be(f->p, 8);
            memcpy(&back, &bits, 8);
            FL_CHECK(isnan(back));
        }
    } else {
        fl_test_fail(__FILE__, __LINE__, "%zu rows", r.nrows);
    }
    rows_free(&r);
    fl_pg_batch_free(&b);
}

/* Doubles from all over the bit space (negative zero, subnormals, large
 * and small exponents among them) read back bit for bit. */
void test_copy_numbers_roundtrip(void)
{
    enum { N = 20000 };
    fl_pg_batch_t b;
    fl_metric_t   m;
    double       *v;
    uint64_t      x = 0x9e3779b97f4a7c15ull, bits;
    size_t        i, bad = 0;
    rows_t        r;

    v = malloc(N * sizeof(*v));
    FL_REQUIRE(v != NULL);
    for (i = 0; i < N; i++) {
        x ^= x << 13; /* xorshift64 */
        x ^= x >> 7;
        x ^= x << 17;
        switch (i % 6) {
        case 0: /* any bits */
            bits = x;
            memcpy(&v[i], &bits, 8);
            if (!isfinite(v[i]))
                v[i] = (double)(int64_t)x;
            break;
        case 1: /* integers up to 2^53 */
            v[i] = (double)(int64_t)(x >> 11) * (x & 1 ? -1 : 1);
            break;
        case 2: /* subnormals, either sign */
            bits = (x & 0x000fffffffffffffull) | (x & 1ull << 63);
            memcpy(&v[i], &bits, 8);
            break;
        case 3: /* the largest and smallest exponents */
            bits = (x & 0x800fffffffffffffull) |
                   (uint64_t)(x & 2 ? 0x7fe - (x >> 52 & 7) : 1 + (x >> 52 & 7))
                       << 52;
            memcpy(&v[i], &bits, 8);
            break;
        case 4:
            v[i] = x & 1 ? -0.0 : 0.0; /* both zeros */
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
    FL_CHECK_EQ_U64(b.rows, N);
    if (ROWS(&b, &r) == 0 && r.nrows == N) {
        for (i = 0; i < N && bad < 10; i++) {
            const field_t *f = fld(&r, i, C_VALUE);
            double         back;

            if (f->null || f->len != 8) {
                fl_test_fail(__FILE__, __LINE__, "row %zu: no float8", i);
                bad++;
                continue;
            }
            bits = be(f->p, 8);
            memcpy(&back, &bits, 8);
            if (memcmp(&back, &v[i], 8) != 0) {
                fl_test_fail(__FILE__, __LINE__, "%a came back as %a", v[i],
                             back);
                bad++;
            }
        }
    } else {
        fl_test_fail(__FILE__, __LINE__, "%zu rows", r.nrows);
    }
    rows_free(&r);
    fl_pg_batch_free(&b);
    free(v);
}

void test_copy_bool(void)
{
    fl_pg_batch_t b;
    fl_metric_t   m[3];
    rows_t        r;

    fl_pg_batch_init(&b);
    m[0] = m_bool("on", 1);
    m[1] = m_bool("off", 0);
    m[1].unit = "sw";
    m[2] = m_bool("odd", 5); /* any true is 1 on the wire */
    add_point(&b, "d1", 0, m, 3);
    FL_CHECK_EQ_U64(b.rows, 3);
    if (ROWS(&b, &r) == 0 && r.nrows == 3) {
        CHECK_BOOL(&r, 0, C_BOOL, 1);
        CHECK_BOOL(&r, 1, C_BOOL, 0);
        CHECK_BOOL(&r, 2, C_BOOL, 1);
        CHECK_NULL(&r, 0, C_UNIT);
        CHECK_TEXT(&r, 1, C_UNIT, "sw");
        for (size_t i = 0; i < 3; i++) {
            CHECK_INT8(&r, i, C_TS, -PG_EPOCH_US);
            CHECK_NULL(&r, i, C_VALUE);
            CHECK_NULL(&r, i, C_TEXT);
            CHECK_TEXT(&r, i, C_DEVICE, "d1");
            CHECK_TEXT(&r, i, C_METRIC, i == 0 ? "on" : i == 1 ? "off" : "odd");
            CHECK_INT8(&r, i, C_SRC, 7);
        }
    } else {
        fl_test_fail(__FILE__, __LINE__, "%zu rows", r.nrows);
    }
    rows_free(&r);
    fl_pg_batch_free(&b);
}

/* ---- the row layout ---- */

/* Rows of a mixed batch: 8 fields in telemetry's column order, exactly
 * one of the value columns set, the one of the metric's type. */
void test_copy_layout(void)
{
    fl_pg_batch_t  b;
    fl_metric_t    p1[3], p2[2];
    fl_point_t     pt[2];
    fl_telemetry_t t;
    rows_t         r;
    size_t         row;
    static const struct {
        int         type; /* 'n', 'b', 's' */
        double      value;
        int         value_bool;
        const char *metric, *value_text, *unit;
    } want[] = {
        {'n', 21.5, 0, "temp", NULL, "C"}, {'b', 0, 1, "door", NULL, NULL},
        {'s', 0, 0, "fw", "1.2.3", NULL},  {'n', -3, 0, "rssi", NULL, "dBm"},
        {'b', 0, 0, "door", NULL, NULL},
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

    if (ROWS(&b, &r) == 0 && r.nrows == fl_nelem(want)) {
        for (row = 0; row < r.nrows; row++) {
            int set = 0;

            /* 2026-11-29 04:00:00.123 and 04:00:01 UTC */
            CHECK_INT8(&r, row, C_TS,
                       row < 3 ? 849240000123000LL : 849240001000000LL);
            if (want[row].type == 'n')
                CHECK_FLOAT8(&r, row, C_VALUE, want[row].value);
            else
                CHECK_NULL(&r, row, C_VALUE);
            if (want[row].type == 'b')
                CHECK_BOOL(&r, row, C_BOOL, want[row].value_bool);
            else
                CHECK_NULL(&r, row, C_BOOL);
            CHECK_TEXT(&r, row, C_DEVICE, "dev-7");
            CHECK_TEXT(&r, row, C_METRIC, want[row].metric);
            CHECK_TEXT(&r, row, C_TEXT, want[row].value_text);
            CHECK_TEXT(&r, row, C_UNIT, want[row].unit);
            CHECK_INT8(&r, row, C_SRC, 1795924800123000042LL);
            /* one value column set, two NULL */
            set = !fld(&r, row, C_VALUE)->null + !fld(&r, row, C_BOOL)->null +
                  !fld(&r, row, C_TEXT)->null;
            FL_CHECK_EQ_INT(set, 1);
        }
    } else {
        fl_test_fail(__FILE__, __LINE__, "%zu rows", r.nrows);
    }
    rows_free(&r);
    fl_pg_batch_free(&b);
}

/* ---- timestamps ---- */

/* unix ms, the UTC date (for reading; checked with timegm()), and the
 * timestamptz on the wire: us since 2000-01-01 */
static const struct {
    int64_t     ms;
    const char *text;
    int64_t     pg;
} stamps[] = {
    {0, "1970-01-01 00:00:00.000", -946684800000000},
    {1, "1970-01-01 00:00:00.001", -946684799999000},
    {999, "1970-01-01 00:00:00.999", -946684799001000},
    {1000, "1970-01-01 00:00:01.000", -946684799000000},
    {1795924800123, "2026-11-29 04:00:00.123", 849240000123000},
    /* before 1970 */
    {-1, "1969-12-31 23:59:59.999", -946684800001000},
    {-999, "1969-12-31 23:59:59.001", -946684800999000},
    {-1000, "1969-12-31 23:59:59.000", -946684801000000},
    {-1001, "1969-12-31 23:59:58.999", -946684801001000},
    {-1500, "1969-12-31 23:59:58.500", -946684801500000},
    {-86400000, "1969-12-31 00:00:00.000", -946771200000000},
    {-86400001, "1969-12-30 23:59:59.999", -946771200001000},
    {-14182940000, "1969-07-20 20:17:40.000", -960867740000000},
    /* leap days, year and century boundaries; around PostgreSQL's epoch */
    {1709210096789, "2024-02-29 12:34:56.789", 762525296789000},
    {1709251199999, "2024-02-29 23:59:59.999", 762566399999000},
    {1709251200000, "2024-03-01 00:00:00.000", 762566400000000},
    {1767225599999, "2025-12-31 23:59:59.999", 820540799999000},
    {1767225600000, "2026-01-01 00:00:00.000", 820540800000000},
    {946684799999, "1999-12-31 23:59:59.999", -1000},
    {946684800000, "2000-01-01 00:00:00.000", 0},
    {946684800001, "2000-01-01 00:00:00.001", 1000},
    {951782400000, "2000-02-29 00:00:00.000", 5097600000000},
    {4107542399999, "2100-02-28 23:59:59.999", 3160857599999000},
    {4107542400000, "2100-03-01 00:00:00.000", 3160857600000000},
    {-2203891200001, "1900-02-28 23:59:59.999", -3150576000001000},
    {-2203891200000, "1900-03-01 00:00:00.000", -3150576000000000},
    /* far back and far ahead */
    {-46374396710990, "0500-06-15 07:08:09.010", -47321081510990000},
    {-62135596800000, "0001-01-01 00:00:00.000", -63082281600000000},
    {253402300799999, "9999-12-31 23:59:59.999", 252455615999999000},
    {253402300800000, "10000-01-01 00:00:00.000", 252455616000000000},
    /* BC: year y <= 0 is 1 - y BC; 1 BC (year 0) is a leap year */
    {-62135596800001, "0000-12-31 23:59:59.999", -63082281600001000},
    {-62162121600000, "0000-02-29 00:00:00.000", -63108806400000000},
    {-63517780800000, "-0043-03-15 12:00:00.000", -64464465600000000},
    /* 4714-11-24 BC, PostgreSQL's first day: its MIN_TIMESTAMP */
    {-210866803200000, "-4713-11-24 00:00:00.000", -211813488000000000},
};

/* The unix ms of "Y-MM-DD HH:MM:SS.mmm" (Y may be negative), by timegm(). */
static int64_t text_ms(const char *s)
{
    struct tm tm;
    long long y;
    int       mo, d, h, mi, sec, ms;

    if (sscanf(s, "%lld-%d-%d %d:%d:%d.%d", &y, &mo, &d, &h, &mi, &sec, &ms) !=
        7)
        return INT64_MIN;
    memset(&tm, 0, sizeof(tm));
    tm.tm_year = (int)(y - 1900);
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    return (int64_t)timegm(&tm) * 1000 + ms;
}

void test_copy_ts(void)
{
    fl_pg_batch_t b;
    rows_t        r;
    size_t        i;

    /* the table itself: its dates and its wire values agree */
    for (i = 0; i < fl_nelem(stamps); i++) {
        if (text_ms(stamps[i].text) != stamps[i].ms)
            fl_test_fail(__FILE__, __LINE__, "%s is %lld ms, not %lld",
                         stamps[i].text, (long long)text_ms(stamps[i].text),
                         (long long)stamps[i].ms);
        FL_CHECK_EQ_INT(stamps[i].pg, stamps[i].ms * 1000 - PG_EPOCH_US);
    }

    fl_pg_batch_init(&b);
    for (i = 0; i < fl_nelem(stamps); i++)
        add_ts_us(&b, stamps[i].ms * 1000);
    FL_CHECK_EQ_U64(b.rows, fl_nelem(stamps));
    if (ROWS(&b, &r) == 0 && r.nrows == fl_nelem(stamps)) {
        for (i = 0; i < fl_nelem(stamps); i++)
            CHECK_INT8(&r, i, C_TS, stamps[i].pg);
    } else {
        fl_test_fail(__FILE__, __LINE__, "%zu rows", r.nrows);
    }
    rows_free(&r);
    fl_pg_batch_free(&b);
}

/* A spread over years 1 .. 9999 (every time of day and day of the year in
 * turn), every ms around 1970 and 2000, and the ends of int64: a time
 * whose difference to 2000 does not fit is sent as INT64_MIN + 1 (out of
 * range, which the server refuses), never as INT64_MIN (-infinity). */
void test_copy_ts_range(void)
{
    fl_pg_batch_t b;
    int64_t      *us;
    size_t        i, cap = 120000, nts = 0, bad = 0;
    rows_t        r;
    static const struct {
        int64_t us, pg;
    } ends[] = {
        {INT64_MAX, INT64_MAX - PG_EPOCH_US},
        {INT64_MIN + PG_EPOCH_US + 1, INT64_MIN + 1},
        {INT64_MIN + PG_EPOCH_US + 2, INT64_MIN + 2},
        {INT64_MIN + PG_EPOCH_US, INT64_MIN + 1},
        {INT64_MIN + 1, INT64_MIN + 1},
        {INT64_MIN, INT64_MIN + 1},
    };

    us = malloc(cap * sizeof(*us));
    FL_REQUIRE(us != NULL);
    /* ~100,000 seconds 36 days and 14.8 hours apart, odd us */
    for (int64_t sec = -62135596800; sec < 253402300800 && nts < cap;
         sec += 3163614) {
        us[nts] = sec * 1000000 + (int64_t)(nts * 37013 % 1000000);
        nts++;
    }
    for (int64_t v = -3000; v <= 3000 && nts + 2 < cap; v++) {
        us[nts++] = v * 1000;
        us[nts++] = PG_EPOCH_US + v * 1000;
    }

    fl_pg_batch_init(&b);
    for (i = 0; i < nts; i++)
        add_ts_us(&b, us[i]);
    for (i = 0; i < fl_nelem(ends); i++)
        add_ts_us(&b, ends[i].us);
    FL_CHECK_EQ_U64(b.rows, nts + fl_nelem(ends));
    if (ROWS(&b, &r) == 0 && r.nrows == nts + fl_nelem(ends)) {
        for (i = 0; i < nts && bad < 10; i++) {
            const field_t *f = fld(&r, i, C_TS);

            if (f->null || f->len != 8 ||
                (int64_t)be(f->p, 8) != us[i] - PG_EPOCH_US) {
                fl_test_fail(__FILE__, __LINE__, "%lld us", (long long)us[i]);
                bad++;
            }
        }
        for (i = 0; i < fl_nelem(ends); i++)
            CHECK_INT8(&r, nts + i, C_TS, ends[i].pg);
    } else {
        fl_test_fail(__FILE__, __LINE__, "%zu rows", r.nrows);
    }
    rows_free(&r);
    fl_pg_batch_free(&b);
    free(us);
}

/* ---- rows ---- */

void test_copy_rows(void)
{
    fl_pg_batch_t  b;
    fl_metric_t    m[3];
    fl_point_t     pt[3];
    fl_telemetry_t t;
    rows_t         r;

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
    if (ROWS(&b, &r) == 0) {
        FL_CHECK_EQ_U64(r.nrows, 12);
        if (r.nrows == 12) {
            static const char *metric[6] = {"a", "a", "b", "a", "b", "c"};
            static const int   sec[6] = {0, 1, 1, 2, 2, 2};

            for (size_t i = 0; i < 12; i++) {
                CHECK_TEXT(&r, i, C_DEVICE, i < 6 ? "d" : "e");
                CHECK_TEXT(&r, i, C_METRIC, metric[i % 6]);
                CHECK_INT8(&r, i, C_TS, sec[i % 6] * 1000000LL - PG_EPOCH_US);
                CHECK_INT8(&r, i, C_SRC, i < 6 ? 1 : 2);
            }
        }
    }
    rows_free(&r);

    fl_pg_batch_reset(&b);
    FL_CHECK_EQ_U64(b.rows, 0);
    FL_CHECK_EQ_U64(evbuffer_get_length(b.copy), 0);
    t.npoints = 1;
    fl_pg_batch_add(&b, "d", &t, 4);
    FL_CHECK_EQ_U64(b.rows, 1);
    if (ROWS(&b, &r) == 0)
        FL_CHECK_EQ_U64(r.nrows, 1);
    rows_free(&r);

    fl_pg_batch_free(&b);
    FL_CHECK(b.copy == NULL);
    FL_CHECK_EQ_U64(b.rows, 0);
    fl_pg_batch_free(&b); /* twice is harmless */
}

/* Times keep their microseconds; src is the last column, as given, and
 * negative values go out in two's complement. */
void test_copy_ts_us(void)
{
    fl_pg_batch_t        b;
    fl_metric_t          m = m_num("x", 1);
    fl_point_t           p[4];
    fl_telemetry_t       t;
    rows_t               r;
    static const int64_t want[4] = {
        849240000123000LL,  /* 2026-11-29 04:00:00.123 */
        849240000123001LL,  /* .123001 */
        849240000999999LL,  /* .999999 */
        -946684800000001LL, /* 1969-12-31 23:59:59.999999 */
    };

    memset(p, 0, sizeof(p));
    memset(&t, 0, sizeof(t));
    p[0].ts_us = 1795924800123000LL;
    p[1].ts_us = 1795924800123001LL;
    p[2].ts_us = 1795924800999999LL;
    p[3].ts_us = -1;
    for (int i = 0; i < 4; i++) {
        p[i].metrics = &m;
        p[i].nmetrics = 1;
    }
    t.points = p;
    t.npoints = 4;
    t.nmetrics = 4;
    fl_pg_batch_init(&b);
    fl_pg_batch_add(&b, "d", &t, 1795924800123000005LL);
    fl_pg_batch_add(&b, "d", &t, -2);
    FL_CHECK_EQ_U64(b.rows, 8);
    if (ROWS(&b, &r) == 0 && r.nrows == 8) {
        for (size_t i = 0; i < 8; i++) {
            CHECK_INT8(&r, i, C_TS, want[i % 4]);
            CHECK_INT8(&r, i, C_SRC, i < 4 ? 1795924800123000005LL : -2);
        }
        /* the bytes of the int8 -2 */
        FL_CHECK(memcmp(fld(&r, 7, C_SRC)->p,
                        "\xff\xff\xff\xff\xff\xff\xff\xfe", 8) == 0);
    } else {
        fl_test_fail(__FILE__, __LINE__, "%zu rows", r.nrows);
    }
    rows_free(&r);
    fl_pg_batch_free(&b);
}
