/*
 * fl_history.h - the history of a metric, GET /api/v1/devices/{id}/
 * telemetry (fl_history.c), its argument helpers (fl_history_args.c,
 * pure, unit-tested) and the rollup refresh job (fl_rollup.c).
 *
 * Times are epoch microseconds throughout (telemetry.ts has microsecond
 * resolution); the API speaks epoch milliseconds, with a fraction when a
 * time has microseconds.
 */
#ifndef FL_HISTORY_H
#define FL_HISTORY_H

#include <stddef.h>
#include <stdint.h>

#include "fl_worker.h"

/* points in one answer: default for raw points, and the cap of both raw
 * points and buckets */
#define FL_HISTORY_LIMIT     1000
#define FL_HISTORY_LIMIT_MAX 10000
/* the widest bucket accepted */
#define FL_HISTORY_BUCKET_MAX_MS ((int64_t)3650 * 86400000)

/*
 * A time of the query string into epoch us: epoch milliseconds with up to
 * three fraction digits ("1764370000000", "1764370000000.25"), or an
 * RFC 3339 date-time ("2025-12-01T10:00:00Z", "...T10:00:00.5+01:00";
 * 't' or ' ' between date and time; a ' ' in place of the offset's '+',
 * which is what an unencoded '+' in a URL decodes to). Nothing before
 * 1970. FL_OK or FL_ERROR.
 */
int fl_history_time(const char *s, int64_t *us);

/* A bucket width ("10s", "1m", "1.5h", "1d", "2w", "500ms", bare
 * seconds) into ms, 1 ms .. FL_HISTORY_BUCKET_MAX_MS. */
int fl_history_bucket(const char *s, int64_t *ms);

/* "1d", "6h", "90s", "1500ms": the widest unit that divides ms. */
void fl_history_bucket_name(int64_t ms, char *buf, size_t len);

/* How many epoch-aligned buckets of ms meet [from_us, to_us). */
int64_t fl_history_nbuckets(int64_t from_us, int64_t to_us, int64_t ms);

/* For points=n: the narrowest bucket of the ladder (1s 2s 5s 10s 15s 30s
 * 1m 2m 5m 10m 15m 30m 1h 2h 3h 6h 12h 1d 2d 7d 14d 30d 90d 180d 365d),
 * not below min_ms, that cuts [from_us, to_us) into at most n buckets;
 * past the ladder, 365d doubled until it does. */
int64_t fl_history_pick_bucket(int64_t from_us, int64_t to_us, int n,
                               int64_t min_ms);

/* epoch us as the API writes it: ms, a fraction only when there are us */
void fl_history_ms(int64_t us, char *buf, size_t len);

/* ---- fl_rollup.c ---- */

/* The refresh job: on worker slot 0 of every node (postgres.rollup_refresh
 * > 0), one step of fleetd_rollup_refresh() every rollup_refresh, again
 * at once while it reports work left. After the API module. */
extern const fl_module_t fl_rollup_module;

/* Registers the job's statement; fl_history_init() calls it. */
void fl_rollup_init(void);

#endif
