/*
 * fl_hist.h - fixed-size log-linear latency histogram.
 *
 * Values are unsigned microseconds. Buckets are log-linear (like HdrHistogram
 * with FL_HIST_SUB_BITS significant bits): each power of two is split into
 * FL_HIST_SUB linear sub-buckets, so a recorded value is reported with a
 * relative error below 1/FL_HIST_SUB. Values from 2^44 us on share the last
 * bucket. No allocation: a histogram is a plain
 * struct that can live in shared memory, be copied, merged and reset.
 *
 * fl_window_t keeps a rolling window of FL_WINDOW_SLOTS histograms, each
 * covering one period; quantiles are taken over the whole window (like
 * Node's monitorEventLoopDelay, but rolling instead of reset-on-read).
 */
#ifndef FL_HIST_H
#define FL_HIST_H

#include <stdint.h>

#define FL_HIST_SUB_BITS 4 /* 16 sub-buckets per octave */
#define FL_HIST_SUB      (1 << FL_HIST_SUB_BITS)
#define FL_HIST_OCTAVES  40
#define FL_HIST_BUCKETS  (FL_HIST_SUB * (FL_HIST_OCTAVES + 1))

typedef struct {
    uint64_t count;
    uint64_t sum;
    uint64_t max;
    uint64_t min;
    uint32_t bucket[FL_HIST_BUCKETS];
} fl_hist_t;

void fl_hist_reset(fl_hist_t *h);
void fl_hist_record(fl_hist_t *h, uint64_t value);
/* dst += src */
void fl_hist_merge(fl_hist_t *dst, const fl_hist_t *src);
/* q in [0,1]. Returns an upper bound of the bucket holding the q-quantile,
 * clamped to the recorded max; 0 for an empty histogram. */
uint64_t fl_hist_quantile(const fl_hist_t *h, double q);

/* Values known to be <= v (whole buckets only): Prometheus "le" counts. */
uint64_t fl_hist_count_le(const fl_hist_t *h, uint64_t v);

#define FL_WINDOW_SLOTS 10

typedef struct {
    fl_hist_t slot[FL_WINDOW_SLOTS];
    unsigned  current;
} fl_window_t;

void fl_window_reset(fl_window_t *w);
void fl_window_record(fl_window_t *w, uint64_t value);
/* Start a new period: the oldest slot is cleared and becomes current. */
void fl_window_rotate(fl_window_t *w);
/* Merge every slot into out (out is reset first). */
void fl_window_merge(const fl_window_t *w, fl_hist_t *out);

#endif
