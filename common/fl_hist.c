/*
 * fl_hist.c - fixed-size log-linear latency histogram.
 *
 * Bucket layout (FL_HIST_SUB_BITS = 4, FL_HIST_SUB = 16):
 *
 *   values 0..15      bucket = value (exact)
 *   value v >= 16     msb    = floor(log2(v))            (4 .. 43)
 *                     octave = msb - FL_HIST_SUB_BITS + 1 (1 .. 40)
 *                     sub    = the FL_HIST_SUB_BITS bits under the top bit
 *                     bucket = octave * FL_HIST_SUB + sub
 *
 * A bucket of octave o >= 1 is 2^(o-1) wide and starts at (16 + sub) << (o-1),
 * so its width is at most 1/16 of any value in it: reporting the upper bound
 * overstates a value by less than 1/FL_HIST_SUB. Values at or above
 * 2^(FL_HIST_OCTAVES + FL_HIST_SUB_BITS) (about 17.6e12 us, 203 days) land in
 * the last bucket, whose upper bound is taken as unbounded; quantiles are
 * clamped to the recorded max anyway.
 */
#include <math.h>
#include <string.h>

#include "fl_core.h"
#include "fl_hist.h"

#define FL_HIST_LAST (FL_HIST_BUCKETS - 1)

/* Index of the highest set bit of v; v must be non-zero. */
static int fl_hist_msb(uint64_t v)
{
    return 63 - __builtin_clzll(v);
}

/* Bucket index for any value, the last bucket for values beyond the range. */
static int fl_hist_index(uint64_t v)
{
    int      msb, octave, shift;
    unsigned sub;

    if (v < FL_HIST_SUB)
        return (int)v;

    msb = fl_hist_msb(v);
    octave = msb - FL_HIST_SUB_BITS + 1;
    if (octave > FL_HIST_OCTAVES)
        return FL_HIST_LAST;

    shift = msb - FL_HIST_SUB_BITS;
    sub = (unsigned)(v >> shift) & (FL_HIST_SUB - 1);
    return octave * FL_HIST_SUB + (int)sub;
}

/* Largest value that maps to bucket i; UINT64_MAX for the clamping bucket. */
static uint64_t fl_hist_upper(int i)
{
    int      octave, shift;
    uint64_t sub;

    if (i < FL_HIST_SUB)
        return (uint64_t)i;
    if (i == FL_HIST_LAST)
        return UINT64_MAX;

    octave = i / FL_HIST_SUB;
    sub = (uint64_t)(i % FL_HIST_SUB);
    shift = octave - 1;
    return ((FL_HIST_SUB + sub + 1) << shift) - 1;
}

static uint64_t fl_add_sat64(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static uint32_t fl_add_sat32(uint32_t a, uint32_t b)
{
    return a > UINT32_MAX - b ? UINT32_MAX : a + b;
}

/* Empty the histogram: count, sum, min and max become 0. */
void fl_hist_reset(fl_hist_t *h)
{
    memset(h, 0, sizeof(*h));
}

/* Count one value. sum saturates at UINT64_MAX instead of wrapping, and so
 * does each bucket at UINT32_MAX. */
void fl_hist_record(fl_hist_t *h, uint64_t value)
{
    int i = fl_hist_index(value);

    if (h->count == 0 || value < h->min)
        h->min = value;
    if (value > h->max)
        h->max = value;
    h->count++;
    h->sum = fl_add_sat64(h->sum, value);
    h->bucket[i] = fl_add_sat32(h->bucket[i], 1);
}

/* dst += src. An empty src leaves dst unchanged; dst and src may not be the
 * same histogram. */
void fl_hist_merge(fl_hist_t *dst, const fl_hist_t *src)
{
    int i;

    if (src->count == 0)
        return;

    if (dst->count == 0 || src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
    dst->count = fl_add_sat64(dst->count, src->count);
    dst->sum = fl_add_sat64(dst->sum, src->sum);
    for (i = 0; i < FL_HIST_BUCKETS; i++)
        dst->bucket[i] = fl_add_sat32(dst->bucket[i], src->bucket[i]);
}

/* q is clamped to [0,1] (NaN counts as 0). Returns the upper bound of the
 * bucket holding the value of rank ceil(q * count) (at least rank 1),
 * clamped to max, so q = 1 gives max exactly; 0 for an empty histogram. */
uint64_t fl_hist_quantile(const fl_hist_t *h, double q)
{
    uint64_t rank, seen;
    double   r;
    int      i;

    if (h->count == 0)
        return 0;

    if (!(q > 0.0))
        q = 0.0;
    else if (q > 1.0)
        q = 1.0;

    r = ceil(q * (double)h->count);
    rank = r >= (double)h->count ? h->count : (uint64_t)r;
    if (rank == 0)
        rank = 1;

    seen = 0;
    for (i = 0; i < FL_HIST_BUCKETS; i++) {
        seen += h->bucket[i];
        if (seen >= rank)
            return fl_min(fl_hist_upper(i), h->max);
    }

    /* Only reached when saturated buckets no longer add up to count. */
    return h->max;
}

/* Empty every slot; slot 0 becomes current. */
void fl_window_reset(fl_window_t *w)
{
    memset(w, 0, sizeof(*w));
}

/* Count one value in the current period. */
void fl_window_record(fl_window_t *w, uint64_t value)
{
    fl_hist_record(&w->slot[w->current % FL_WINDOW_SLOTS], value);
}

/* Start a new period: the slot after current is the oldest; it is emptied
 * and becomes current, so a value stays in the window for FL_WINDOW_SLOTS
 * periods (the one it was recorded in and FL_WINDOW_SLOTS - 1 more). */
void fl_window_rotate(fl_window_t *w)
{
    w->current = (w->current + 1) % FL_WINDOW_SLOTS;
    fl_hist_reset(&w->slot[w->current]);
}

/* out = the sum of every slot; out is reset first and must not be a slot
 * of w. */
void fl_window_merge(const fl_window_t *w, fl_hist_t *out)
{
    int i;

    fl_hist_reset(out);
    for (i = 0; i < FL_WINDOW_SLOTS; i++)
        fl_hist_merge(out, &w->slot[i]);
}

/*
 * Number of recorded values known to be <= v: the buckets whose whole
 * range lies at or below v (a Prometheus "le" bucket, rounded down to
 * bucket resolution).
 */
uint64_t fl_hist_count_le(const fl_hist_t *h, uint64_t v)
{
    uint64_t n = 0;

    for (int i = 0; i < FL_HIST_BUCKETS && fl_hist_upper(i) <= v; i++)
        n += h->bucket[i];
    return n;
}
