/*
 * test_hist.c - fl_hist_t and fl_window_t.
 */
#include <stdint.h>
#include <string.h>

#include "fl_hist.h"
#include "unit.h"

/* The exact q-quantile of 1..n: the value of rank ceil(q * n). */
static uint64_t exact_uniform(double q, uint64_t n)
{
    uint64_t rank = (uint64_t)(q * (double)n);

    if ((double)rank < q * (double)n)
        rank++;
    return rank == 0 ? 1 : rank;
}

void test_hist_empty(void)
{
    fl_hist_t h;

    memset(&h, 0xa5, sizeof(h));
    fl_hist_reset(&h);
    FL_CHECK_EQ_U64(h.count, 0);
    FL_CHECK_EQ_U64(h.sum, 0);
    FL_CHECK_EQ_U64(h.min, 0);
    FL_CHECK_EQ_U64(h.max, 0);
    FL_CHECK_EQ_U64(fl_hist_quantile(&h, 0.0), 0);
    FL_CHECK_EQ_U64(fl_hist_quantile(&h, 0.5), 0);
    FL_CHECK_EQ_U64(fl_hist_quantile(&h, 0.99), 0);
    FL_CHECK_EQ_U64(fl_hist_quantile(&h, 1.0), 0);
    for (int i = 0; i < FL_HIST_BUCKETS; i++) {
        if (h.bucket[i] != 0) {
            FL_CHECK_EQ_INT(h.bucket[i], 0);
            break;
        }
    }
}

void test_hist_single(void)
{
    fl_hist_t h;

    fl_hist_reset(&h);
    fl_hist_record(&h, 1234);
    FL_CHECK_EQ_U64(h.count, 1);
    FL_CHECK_EQ_U64(h.sum, 1234);
    FL_CHECK_EQ_U64(h.min, 1234);
    FL_CHECK_EQ_U64(h.max, 1234);
    /* one value: every quantile is that value (bucket bound clamped to max) */
    FL_CHECK_EQ_U64(fl_hist_quantile(&h, 0.0), 1234);
    FL_CHECK_EQ_U64(fl_hist_quantile(&h, 0.5), 1234);
    FL_CHECK_EQ_U64(fl_hist_quantile(&h, 1.0), 1234);

    fl_hist_reset(&h);
    fl_hist_record(&h, 0);
    FL_CHECK_EQ_U64(h.count, 1);
    FL_CHECK_EQ_U64(h.min, 0);
    FL_CHECK_EQ_U64(h.max, 0);
    FL_CHECK_EQ_U64(fl_hist_quantile(&h, 1.0), 0);
}

/* Values below FL_HIST_SUB have a bucket each and come back exactly. */
void test_hist_small_exact(void)
{
    fl_hist_t h;
    uint64_t  v;

    fl_hist_reset(&h);
    for (v = 0; v < FL_HIST_SUB; v++)
        fl_hist_record(&h, v);
    for (v = 0; v < FL_HIST_SUB; v++) {
        FL_CHECK_EQ_INT(h.bucket[v], 1);
        /* rank v + 1 of FL_HIST_SUB values is the value v */
        FL_CHECK_EQ_U64(fl_hist_quantile(&h, (double)(v + 1) / FL_HIST_SUB), v);
    }
    FL_CHECK_EQ_U64(fl_hist_quantile(&h, 0.0), 0);

    /* the first octave above is still exact: width 1 for 16..31 */
    fl_hist_reset(&h);
    fl_hist_record(&h, 17);
    fl_hist_record(&h, 31);
    FL_CHECK_EQ_U64(fl_hist_quantile(&h, 0.5), 17);
    FL_CHECK_EQ_U64(fl_hist_quantile(&h, 1.0), 31);
}

/* Each bucket's upper bound is >= any value in it and overstates it by
 * less than 1/FL_HIST_SUB; reported bounds never decrease with the value.
 * A larger second value keeps the clamp to max out of the way. */
void test_hist_bucket_bounds(void)
{
    fl_hist_t h;
    uint64_t  v, got, prev = 0;
    int       octave;
    int       bad = 0;

    for (octave = 0; octave < FL_HIST_OCTAVES + FL_HIST_SUB_BITS - 1;
         octave++) {
        uint64_t base = (uint64_t)1 << octave;
        uint64_t step = base / 64 ? base / 64 : 1;

        for (v = base; v < 2 * base; v += step) {
            fl_hist_reset(&h);
            fl_hist_record(&h, v);
            fl_hist_record(&h, UINT64_MAX / 2);
            got = fl_hist_quantile(&h, 0.5);
            if (got < v || got - v > v / FL_HIST_SUB || got < prev) {
                fl_test_fail(__FILE__, __LINE__,
                             "value %llu reported as %llu (previous %llu)",
                             (unsigned long long)v, (unsigned long long)got,
                             (unsigned long long)prev);
                if (++bad == 5)
                    return;
            }
            prev = got;
        }
    }
}

/* Quantiles of 1..10000 within the documented relative error. */
void test_hist_uniform(void)
{
    static const double qs[] = {0.001, 0.01, 0.1,  0.25,  0.5,   0.75,
                                0.9,   0.95, 0.99, 0.999, 0.9999};
    fl_hist_t           h;
    uint64_t            v, exact, got;
    size_t              i;

    fl_hist_reset(&h);
    for (v = 1; v <= 10000; v++)
        fl_hist_record(&h, v);
    FL_CHECK_EQ_U64(h.count, 10000);
    FL_CHECK_EQ_U64(h.sum, 10000ull * 10001 / 2);
    FL_CHECK_EQ_U64(h.min, 1);
    FL_CHECK_EQ_U64(h.max, 10000);

    for (i = 0; i < sizeof(qs) / sizeof(qs[0]); i++) {
        exact = exact_uniform(qs[i], 10000);
        got = fl_hist_quantile(&h, qs[i]);
        if (got < exact || (double)(got - exact) > (double)exact / FL_HIST_SUB)
            fl_test_fail(__FILE__, __LINE__, "q=%g: got %llu, exact %llu",
                         qs[i], (unsigned long long)got,
                         (unsigned long long)exact);
    }
    FL_CHECK_EQ_U64(fl_hist_quantile(&h, 1.0), 10000);
    /* out-of-range q is clamped */
    FL_CHECK_EQ_U64(fl_hist_quantile(&h, 2.0), 10000);
    FL_CHECK_EQ_U64(fl_hist_quantile(&h, -1.0), 1);
}

/* 1% of slow outliers: p99 sits at the edge, p50 ignores them. */
void test_hist_outliers(void)
{
    fl_hist_t h;
    uint64_t  got;
    int       i;

    fl_hist_reset(&h);
    for (i = 0; i < 990; i++)
        fl_hist_record(&h, 100);
    for (i = 0; i < 10; i++)
        fl_hist_record(&h, 1000000);

    got = fl_hist_quantile(&h, 0.5);
    FL_CHECK(got >= 100 && got <= 100 + 100 / FL_HIST_SUB);
    /* rank 990 is still a fast one */
    got = fl_hist_quantile(&h, 0.99);
    FL_CHECK(got >= 100 && got <= 100 + 100 / FL_HIST_SUB);
    /* rank 991 is an outlier, its bucket bound clamped to max */
    FL_CHECK_EQ_U64(fl_hist_quantile(&h, 0.991), 1000000);
    FL_CHECK_EQ_U64(fl_hist_quantile(&h, 1.0), 1000000);

    /* 2% outliers: p99 is one of them */
    for (i = 0; i < 10; i++)
        fl_hist_record(&h, 1000000);
    FL_CHECK_EQ_U64(h.count, 1010);
    FL_CHECK_EQ_U64(fl_hist_quantile(&h, 0.99), 1000000);
}

void test_hist_min_max(void)
{
    fl_hist_t h;

    fl_hist_reset(&h);
    fl_hist_record(&h, 500);
    fl_hist_record(&h, 7);
    fl_hist_record(&h, 90000);
    fl_hist_record(&h, 33);
    FL_CHECK_EQ_U64(h.count, 4);
    FL_CHECK_EQ_U64(h.sum, 500 + 7 + 90000 + 33);
    FL_CHECK_EQ_U64(h.min, 7);
    FL_CHECK_EQ_U64(h.max, 90000);
    FL_CHECK_EQ_U64(fl_hist_quantile(&h, 0.0), 7);
    FL_CHECK_EQ_U64(fl_hist_quantile(&h, 0.25), 7);
    FL_CHECK_EQ_U64(fl_hist_quantile(&h, 1.0), 90000);

    /* a zero after non-zero values becomes the min */
    fl_hist_record(&h, 0);
    FL_CHECK_EQ_U64(h.min, 0);
    FL_CHECK_EQ_U64(h.max, 90000);
}

void test_hist_merge(void)
{
    fl_hist_t a, b, all, empty, copy;
    uint64_t  v;

    fl_hist_reset(&a);
    fl_hist_reset(&b);
    fl_hist_reset(&all);
    fl_hist_reset(&empty);
    for (v = 1; v <= 10000; v++) {
        fl_hist_record(v % 3 ? &a : &b, v * 7);
        fl_hist_record(&all, v * 7);
    }

    fl_hist_merge(&a, &b);
    FL_CHECK_EQ_U64(a.count, all.count);
    FL_CHECK_EQ_U64(a.sum, all.sum);
    FL_CHECK_EQ_U64(a.min, all.min);
    FL_CHECK_EQ_U64(a.max, all.max);
    FL_CHECK(memcmp(&a, &all, sizeof(a)) == 0);
    FL_CHECK_EQ_U64(fl_hist_quantile(&a, 0.99), fl_hist_quantile(&all, 0.99));

    /* merging an empty histogram changes nothing */
    copy = a;
    fl_hist_merge(&a, &empty);
    FL_CHECK(memcmp(&a, &copy, sizeof(a)) == 0);

    /* into an empty one: a copy, min included (not min(0, ...)) */
    fl_hist_merge(&empty, &b);
    FL_CHECK(memcmp(&empty, &b, sizeof(b)) == 0);
    FL_CHECK_EQ_U64(empty.min, 21);
}

/* Values past the last octave land in the last bucket; sum saturates. */
void test_hist_huge_clamp(void)
{
    fl_hist_t h;
    uint64_t  top = ((uint64_t)1 << (FL_HIST_OCTAVES + FL_HIST_SUB_BITS)) - 1;

    fl_hist_reset(&h);
    fl_hist_record(&h, (uint64_t)1 << 50);
    fl_hist_record(&h, UINT64_MAX);
    FL_CHECK_EQ_U64(h.count, 2);
    FL_CHECK_EQ_INT(h.bucket[FL_HIST_BUCKETS - 1], 2);
    FL_CHECK_EQ_U64(h.max, UINT64_MAX);
    FL_CHECK_EQ_U64(h.min, (uint64_t)1 << 50);
    FL_CHECK_EQ_U64(h.sum, UINT64_MAX);
    FL_CHECK_EQ_U64(fl_hist_quantile(&h, 1.0), UINT64_MAX);
    FL_CHECK(fl_hist_quantile(&h, 0.5) >= (uint64_t)1 << 50);

    /* the largest value in range is in the last bucket too, the next lower
     * octave is not */
    fl_hist_reset(&h);
    fl_hist_record(&h, top);
    FL_CHECK_EQ_INT(h.bucket[FL_HIST_BUCKETS - 1], 1);
    FL_CHECK_EQ_U64(fl_hist_quantile(&h, 1.0), top);
    fl_hist_reset(&h);
    fl_hist_record(&h, top / 2);
    FL_CHECK_EQ_INT(h.bucket[FL_HIST_BUCKETS - 1], 0);
    FL_CHECK_EQ_INT(h.bucket[FL_HIST_BUCKETS - 1 - FL_HIST_SUB], 1);
}

/* A value stays in the window for FL_WINDOW_SLOTS periods, then is gone. */
void test_window_rotate(void)
{
    static fl_window_t w;
    fl_hist_t          all;
    int                i;

    fl_window_reset(&w);
    fl_window_merge(&w, &all);
    FL_CHECK_EQ_U64(all.count, 0);

    fl_window_record(&w, 5000);
    for (i = 1; i < FL_WINDOW_SLOTS; i++) {
        fl_window_rotate(&w);
        fl_window_record(&w, 10);
    }
    fl_window_merge(&w, &all);
    FL_CHECK_EQ_U64(all.count, FL_WINDOW_SLOTS);
    FL_CHECK_EQ_U64(all.max, 5000);
    FL_CHECK_EQ_U64(fl_hist_quantile(&all, 1.0), 5000);

    /* the FL_WINDOW_SLOTS-th rotation drops the oldest period */
    fl_window_rotate(&w);
    fl_window_merge(&w, &all);
    FL_CHECK_EQ_U64(all.count, FL_WINDOW_SLOTS - 1);
    FL_CHECK_EQ_U64(all.max, 10);
    FL_CHECK_EQ_U64(all.min, 10);

    /* a full round of empty periods empties the window */
    for (i = 0; i < FL_WINDOW_SLOTS; i++)
        fl_window_rotate(&w);
    fl_window_merge(&w, &all);
    FL_CHECK_EQ_U64(all.count, 0);
    FL_CHECK_EQ_U64(fl_hist_quantile(&all, 0.99), 0);

    /* merge resets out first */
    fl_window_record(&w, 3);
    all.count = 12345;
    fl_window_merge(&w, &all);
    FL_CHECK_EQ_U64(all.count, 1);
    FL_CHECK_EQ_U64(all.sum, 3);

    fl_window_reset(&w);
    fl_window_merge(&w, &all);
    FL_CHECK_EQ_U64(all.count, 0);
}
