/*
 * fl_rollup.c - the rollup refresh job: per-minute and per-hour
 * aggregates of telemetry for the history API (fl_history.h; the SQL and
 * the whole design are in worker/sql/006_rollups.sql).
 *
 * Worker slot 0 of each node calls fleetd_rollup_refresh() every
 * postgres.rollup_refresh on the API's pool. The function takes
 * pg_try_advisory_xact_lock(FL_PG_LOCK_ROLLUPS) and answers 'busy' at
 * once when another node holds it, so one session in the cluster does the
 * work at a time; it never blocks the loop (it is one asynchronous
 * statement like any other) and never a writer (it reads telemetry and
 * writes only the rollup tables).
 *
 * One call is one bounded step: the pass over new rows stops after
 * BUDGET_MS of partitions, and at most `batch` dirty minutes and hours
 * are aggregated. While a step reports work left (a first pass over a big
 * table, a bulk import, a backlog after an outage) the next one follows
 * after AGAIN_MS instead of the full interval. `batch` adapts so that a
 * step takes about a second or two whatever the rate of the metrics:
 * halved after a slow step (a quarter after one that hit the pool's
 * statement_timeout), doubled after a quick one that left work.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl_api.h"
#include "fl_history.h"
#include "fl_log.h"
#include "fl_worker.h"

#define LAG_MS         60000 /* the watermark stays this far behind a pass */
#define BUDGET_MS      2000  /* of the pass over new rows, per step */
#define BATCH_START    5000
#define BATCH_MIN      100
#define BATCH_MAX      50000
#define SLOW_MS        5000 /* a step slower than this halves the batch */
#define QUICK_MS       1000 /* one quicker than this that left work doubles it */
#define AGAIN_MS       200  /* between steps while work is left */
#define RETRY_MS       1000 /* while the pool is not connected yet */
#define BACKLOG_LOG_MS 30000

static int st_refresh;

static struct {
    struct event *tick;
    fl_db_q_t    *q;
    int           enabled;
    int           batch;
    int64_t       started_us;
    int64_t       logged_ms; /* the last "catching up" line */
} ru;

static void schedule(int64_t ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

    if (ru.enabled)
        evtimer_add(ru.tick, &tv);
}

static void on_refresh(const PGresult *res, const char *err,
                       const char *sqlstate, void *ud)
{
    const fl_config_t *cf = fl_worker.cf;
    int64_t            took_ms = (fl_now_us() - ru.started_us) / 1000;
    int                more, done_1m, done_1h;

    (void)ud;
    ru.q = NULL;
    if (res == NULL) {
        if (strcmp(sqlstate, "57014") == 0) {
            /* statement_timeout (postgres.query_timeout) */
            ru.batch = fl_max(ru.batch / 4, BATCH_MIN);
            fl_warn("rollup refresh: a step exceeded postgres.query_timeout, "
                    "%d buckets a step from now on",
                    ru.batch);
        } else if (strcmp(sqlstate, "42883") == 0 ||
                   strcmp(sqlstate, "42P01") == 0) {
            fl_debug("rollup refresh: the schema is not migrated yet (%s)",
                     err);
        } else {
            fl_warn("rollup refresh failed: %s", err ? err : "?");
        }
        schedule(cf->postgres.rollup_refresh_ms);
        return;
    }
    if (PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, 0), "busy") == 0) {
        schedule(cf->postgres.rollup_refresh_ms);
        return;
    }
    more = strcmp(PQgetvalue(res, 0, 1), "t") == 0;
    done_1m = atoi(PQgetvalue(res, 0, 3));
    done_1h = atoi(PQgetvalue(res, 0, 4));
    if (took_ms > SLOW_MS)
        ru.batch = fl_max(ru.batch / 2, BATCH_MIN);
    else if (more && took_ms < QUICK_MS)
        ru.batch = fl_min(ru.batch * 2, BATCH_MAX);
    if (more && fl_now_ms() - ru.logged_ms >= BACKLOG_LOG_MS) {
        ru.logged_ms = fl_now_ms();
        fl_info("rollups catching up: watermarks %s (minutes) and %s (hours),"
                " %d minutes and %d hours aggregated in %" PRId64 " ms",
                PQgetvalue(res, 0, 6), PQgetvalue(res, 0, 7), done_1m, done_1h,
                took_ms);
    } else {
        fl_debug("rollup refresh: %s partitions read, %d minutes and %d "
                 "hours aggregated, %s rows expired, in %" PRId64 " ms",
                 PQgetvalue(res, 0, 2), done_1m, done_1h, PQgetvalue(res, 0, 5),
                 took_ms);
    }
    schedule(more ? AGAIN_MS : cf->postgres.rollup_refresh_ms);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    const fl_config_t *cf = fl_worker.cf;
    char               a[6][16];
    const char        *p[6];

    (void)fd, (void)what, (void)arg;
    if (ru.q || !fl_db_ready(fl_api.db)) {
        schedule(RETRY_MS);
        return;
    }
    snprintf(a[0], sizeof(a[0]), "%d", cf->postgres.retention_days);
    snprintf(a[1], sizeof(a[1]), "%d", cf->postgres.rollup_1m_retention_days);
    snprintf(a[2], sizeof(a[2]), "%d", cf->postgres.rollup_1h_retention_days);
    snprintf(a[3], sizeof(a[3]), "%d", LAG_MS);
    snprintf(a[4], sizeof(a[4]), "%d", BUDGET_MS);
    snprintf(a[5], sizeof(a[5]), "%d", ru.batch);
    for (int i = 0; i < 6; i++)
        p[i] = a[i];
    ru.started_us = fl_now_us();
    if (fl_db_query(fl_api.db, st_refresh, 6, p, on_refresh, NULL, &ru.q) !=
        FL_OK) {
        ru.q = NULL;
        schedule(RETRY_MS);
    }
}

static int rollup_init(fl_worker_t *w)
{
    memset(&ru, 0, sizeof(ru));
    ru.batch = BATCH_START;
    /* one worker per node: the lock picks one node; slot 0 is always
     * there (it is restarted when it dies) */
    ru.enabled = w->slot == 0 && w->cf->postgres.rollup_refresh_ms > 0;
    ru.tick = evtimer_new(w->base, on_tick, NULL);
    if (ru.tick == NULL) {
        fl_error("evtimer_new() for the rollup refresh failed");
        return FL_ERROR;
    }
    schedule(RETRY_MS);
    return FL_OK;
}

/* A step in flight is not waited for: cancelled at destroy, the server
 * finishes or rolls it back on its own, and the next step redoes it. */
static void rollup_stop(fl_worker_t *w, int fast)
{
    (void)w, (void)fast;
    ru.enabled = 0;
    if (ru.tick)
        evtimer_del(ru.tick);
}

static int rollup_busy(fl_worker_t *w)
{
    (void)w;
    return 0;
}

/* before the API's destroy: the pool is still there to cancel on */
static void rollup_destroy(fl_worker_t *w)
{
    (void)w;
    if (ru.q)
        fl_db_cancel(fl_api.db, ru.q);
    if (ru.tick)
        event_free(ru.tick);
    memset(&ru, 0, sizeof(ru));
}

const fl_module_t fl_rollup_module = {
    "rollup", rollup_init, rollup_stop, rollup_busy, rollup_destroy, NULL,
};

void fl_rollup_init(void)
{
    st_refresh = fl_db_stmt(
        "rollup_refresh",
        "SELECT status, more, partitions, done_1m, done_1h, expired, "
        "wm_1m, wm_1h FROM fleetd_rollup_refresh($1::int, $2::int, $3::int, "
        "$4::int, $5::int, $6::int)");
}
