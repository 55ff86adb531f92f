/*
 * fl_history.c - the history of a metric: GET /api/v1/devices/{id}/
 * telemetry (read scope).
 *
 *   ?metric=M            required
 *   &from=T&to=T         epoch ms (a fraction for microseconds) or RFC 3339;
 *                        [from, to), default the 24 h before now
 *   &limit=N             at most N points (1..10000; 1000 for raw points,
 *                        10000 for buckets); "next" says where to go on
 *   &order=asc|desc      by time, asc by default
 *   &bucket=D&agg=A      epoch-aligned buckets of width D ("1m", "1h",
 *                        "90s", "1d", "2w"), agg avg (default), min, max,
 *                        sum, count, first or last; a bucket's time is its
 *                        start
 *   &points=N            instead of bucket: the narrowest bucket of a fixed
 *                        ladder that gives at most N buckets
 *
 *   {"device", "metric", "from", "to", ["bucket", "bucket_ms", "agg"],
 *    "points": [[ts_ms, value], ...], ["next"]}
 *
 * PostgreSQL does the work in one statement, fleetd_history()
 * (worker/sql/006_rollups.sql): it answers from the rollups where they
 * hold whole buckets (telemetry_1h for multiples of an hour, telemetry_1m
 * for multiples of a minute) and from the raw rows for the rest, the
 * not-yet-rolled-up tail included, and returns the points as JSON text
 * that goes out as it came. A bucketed request spans at most 10000 buckets
 * (400 beyond: a wider bucket or points=N). See the README, History, for
 * what a metric's type, late points and retention do to an answer.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl_api.h"
#include "fl_enc.h"
#include "fl_history.h"
#include "fl_log.h"
#include "fl_routes.h"

#define DAY_US     ((int64_t)86400000000)
#define METRIC_MAX 1024 /* limits.max_name_bytes is at most this */
#define HOUR_MS    ((int64_t)3600000)
#define MINUTE_MS  ((int64_t)60000)

static int st_history;

static const char *const params[] = {
    "metric", "from", "to", "bucket", "agg", "limit", "order", "points", NULL,
};

static const char *const aggs[] = {
    "avg", "min", "max", "sum", "count", "first", "last", NULL,
};

typedef struct {
    char    metric[METRIC_MAX + 1];
    int64_t from_us, to_us;
    int64_t bucket_ms; /* 0: raw points */
    int     limit;
    int     desc;
    int     agg; /* index into aggs[] */
} hq_t;

/* 400 for a parameter we do not know or one given twice: a typo
 * (?bukcet=1h) answers an error, not a silently raw history */
static int check_names(fl_api_req_t *r)
{
    const char *q = r->http->query;
    unsigned    seen = 0;

    while (q && *q) {
        const char *end = strchr(q, '&');
        size_t      seg = end ? (size_t)(end - q) : strlen(q);
        size_t      nlen = strcspn(q, "=&");
        int         i;

        if (nlen > seg)
            nlen = seg;
        for (i = 0; seg && params[i]; i++) {
            if (strlen(params[i]) == nlen && strncmp(q, params[i], nlen) == 0)
                break;
        }
        if (seg && params[i] == NULL) {
            fl_api_error(r, 400, "bad_request",
                         "unknown query parameter \"%.*s\" (known: metric, "
                         "from, to, bucket, agg, points, limit, order)",
                         (int)fl_min(nlen, (size_t)64), q);
            return FL_ERROR;
        }
        if (seg && (seen & 1u << i)) {
            fl_api_error(r, 400, "bad_request",
                         "query parameter \"%s\" given twice", params[i]);
            return FL_ERROR;
        }
        if (seg)
            seen |= 1u << i;
        q = end ? end + 1 : NULL;
    }
    return FL_OK;
}

/* an integer 1..max, or FL_ERROR */
static int count_arg(const char *s, int max, int *out)
{
    long v = 0;

    if (*s == '\0')
        return FL_ERROR;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || (v = v * 10 + (*s - '0')) > max)
            return FL_ERROR;
    }
    if (v < 1)
        return FL_ERROR;
    *out = (int)v;
    return FL_OK;
}

/* ---- the answer ---- */

static void on_history(fl_api_req_t *r, const PGresult *res, const char *err,
                       const char *sqlstate)
{
    hq_t       *h = r->ctx;
    const char *status;
    fl_sbuf_t   b = {0};
    char        tmp[48];
    int         n;

    if (res == NULL) {
        fl_api_db_error(r, err, sqlstate);
        return;
    }
    if (PQntuples(res) != 1) {
        fl_api_db_error(r, "history: not one row", "XX000");
        return;
    }
    status = PQgetvalue(res, 0, 0);
    if (strcmp(status, "no_device") == 0) {
        fl_api_error(r, 404, "not_found", "no device \"%s\"", r->id);
        return;
    }
    if (strcmp(status, "unknown_metric") == 0) {
        fl_api_error(r, 400, "unknown_metric",
                     "device \"%s\" has no metric \"%s\"", r->id, h->metric);
        return;
    }
    if (strcmp(status, "not_numeric") == 0) {
        fl_api_error(r, 400, "not_numeric",
                     "metric \"%s\" holds text: it has raw points only "
                     "(no bucket, points or agg)",
                     h->metric);
        return;
    }
    n = atoi(PQgetvalue(res, 0, 3));
    fl_sb_lit(&b, "{\"device\":");
    fl_sb_jstr(&b, r->id);
    fl_sb_lit(&b, ",\"metric\":");
    fl_sb_jstr(&b, h->metric);
    fl_history_ms(h->from_us, tmp, sizeof(tmp));
    fl_sb_lit(&b, ",\"from\":");
    fl_sb_put(&b, tmp, strlen(tmp));
    fl_history_ms(h->to_us, tmp, sizeof(tmp));
    fl_sb_lit(&b, ",\"to\":");
    fl_sb_put(&b, tmp, strlen(tmp));
    if (h->bucket_ms) {
        fl_history_bucket_name(h->bucket_ms, tmp, sizeof(tmp));
        fl_sb_lit(&b, ",\"bucket\":");
        fl_sb_jstr(&b, tmp);
        fl_sb_lit(&b, ",\"bucket_ms\":");
        fl_sb_i64(&b, h->bucket_ms);
        fl_sb_lit(&b, ",\"agg\":");
        fl_sb_jstr(&b, aggs[h->agg]);
    }
    fl_sb_lit(&b, ",\"points\":[");
    fl_sb_put(&b, PQgetvalue(res, 0, 2), (size_t)PQgetlength(res, 0, 2));
    fl_sb_lit(&b, "]");
    if (n > h->limit && !PQgetisnull(res, 0, 4)) {
        /* the limit cut the answer: where the next page starts (from for
         * asc, exclusive to for desc) */
        int64_t last = strtoll(PQgetvalue(res, 0, 4), NULL, 10);

        if (!h->desc)
            last += h->bucket_ms ? h->bucket_ms * 1000 : 1;
        fl_history_ms(last, tmp, sizeof(tmp));
        fl_sb_lit(&b, ",\"next\":");
        fl_sb_put(&b, tmp, strlen(tmp));
    }
    fl_sb_lit(&b, "}");
    fl_api_json_text(r, 200, b.p, b.len);
    fl_sb_free(&b);
}

/* ---- the request ---- */

/* Parse the query into h; FL_ERROR with the 400 sent. */
static int parse(fl_api_req_t *r, hq_t *h)
{
    const fl_config_t *cf = fl_api.cf;
    char               buf[80], bucket[80], agg[16], points[16];
    const char        *v;
    int                bad = 0, npoints = 0, have_bucket, have_agg, have_pts;
    int64_t            now_us = fl_wall_ms() * 1000, min_ms;

    if (check_names(r) != FL_OK)
        return FL_ERROR;
    v = fl_api_param(r, "metric", h->metric, sizeof(h->metric), &bad);
    if (bad)
        return FL_ERROR;
    if (v == NULL || v[0] == '\0' ||
        strlen(v) > (size_t)cf->limits.max_name_bytes) {
        fl_api_error(r, 400, "bad_request",
                     "metric=NAME is required (1 to %d bytes)",
                     cf->limits.max_name_bytes);
        return FL_ERROR;
    }
    h->to_us = now_us;
    v = fl_api_param(r, "to", buf, sizeof(buf), &bad);
    if (bad)
        return FL_ERROR;
    if (v && fl_history_time(v, &h->to_us) != FL_OK) {
        fl_api_error(r, 400, "bad_request",
                     "to must be epoch milliseconds or an RFC 3339 "
                     "date-time, not \"%s\"",
                     v);
        return FL_ERROR;
    }
    h->from_us = fl_max(h->to_us - DAY_US, (int64_t)0);
    v = fl_api_param(r, "from", buf, sizeof(buf), &bad);
    if (bad)
        return FL_ERROR;
    if (v && fl_history_time(v, &h->from_us) != FL_OK) {
        fl_api_error(r, 400, "bad_request",
                     "from must be epoch milliseconds or an RFC 3339 "
                     "date-time, not \"%s\"",
                     v);
        return FL_ERROR;
    }
    if (h->from_us > h->to_us) {
        fl_api_error(r, 400, "bad_request", "from is after to");
        return FL_ERROR;
    }
    v = fl_api_param(r, "order", buf, sizeof(buf), &bad);
    if (bad)
        return FL_ERROR;
    if (v && strcmp(v, "asc") != 0 && strcmp(v, "desc") != 0) {
        fl_api_error(r, 400, "bad_request", "order must be asc or desc");
        return FL_ERROR;
    }
    h->desc = v && strcmp(v, "desc") == 0;

    have_bucket = fl_api_param(r, "bucket", bucket, sizeof(bucket), &bad) != 0;
    if (bad)
        return FL_ERROR;
    have_pts = fl_api_param(r, "points", points, sizeof(points), &bad) != 0;
    if (bad)
        return FL_ERROR;
    have_agg = fl_api_param(r, "agg", agg, sizeof(agg), &bad) != 0;
    if (bad)
        return FL_ERROR;
    if (have_bucket && have_pts) {
        fl_api_error(r, 400, "bad_request", "give bucket or points, not both");
        return FL_ERROR;
    }
    if (have_agg && !have_bucket && !have_pts) {
        fl_api_error(r, 400, "bad_request", "agg needs bucket or points");
        return FL_ERROR;
    }
    h->agg = 0;
    if (have_agg) {
        for (h->agg = 0; aggs[h->agg]; h->agg++) {
            if (strcmp(aggs[h->agg], agg) == 0)
                break;
        }
        if (aggs[h->agg] == NULL) {
            fl_api_error(r, 400, "bad_request",
                         "agg must be avg, min, max, sum, count, first or "
                         "last");
            return FL_ERROR;
        }
    }
    h->bucket_ms = 0;
    if (have_bucket && fl_history_bucket(bucket, &h->bucket_ms) != FL_OK) {
        fl_api_error(r, 400, "bad_request",
                     "bucket must be a duration from 1ms to 3650d (\"10s\", "
                     "\"1m\", \"1h\", \"1d\", \"1w\"), not \"%s\"",
                     bucket);
        return FL_ERROR;
    }
    if (have_pts) {
        if (count_arg(points, FL_HISTORY_LIMIT_MAX, &npoints) != FL_OK) {
            fl_api_error(r, 400, "bad_request",
                         "points must be an integer from 1 to %d",
                         FL_HISTORY_LIMIT_MAX);
            return FL_ERROR;
        }
        /* not finer than what is kept for from: the raw rows, then the
         * per-minute rollups, then the per-hour ones */
        min_ms = 0;
        if (h->from_us < now_us - cf->postgres.retention_days * DAY_US)
            min_ms = MINUTE_MS;
        if (h->from_us < now_us - fl_max(cf->postgres.rollup_1m_retention_days,
                                         cf->postgres.retention_days) *
                                      DAY_US)
            min_ms = HOUR_MS;
        h->bucket_ms =
            fl_history_pick_bucket(h->from_us, h->to_us, npoints, min_ms);
    }
    h->limit = h->bucket_ms ? FL_HISTORY_LIMIT_MAX : FL_HISTORY_LIMIT;
    v = fl_api_param(r, "limit", buf, sizeof(buf), &bad);
    if (bad)
        return FL_ERROR;
    if (v && count_arg(v, FL_HISTORY_LIMIT_MAX, &h->limit) != FL_OK) {
        fl_api_error(r, 400, "bad_request",
                     "limit must be an integer from 1 to %d",
                     FL_HISTORY_LIMIT_MAX);
        return FL_ERROR;
    }
    if (h->bucket_ms &&
        fl_history_nbuckets(h->from_us, h->to_us, h->bucket_ms) >
            FL_HISTORY_LIMIT_MAX) {
        fl_api_error(r, 400, "bad_request",
                     "bucket=%s cuts [from, to) into %" PRId64
                     " buckets, more than %d: use a wider bucket or "
                     "points=N",
                     bucket,
                     fl_history_nbuckets(h->from_us, h->to_us, h->bucket_ms),
                     FL_HISTORY_LIMIT_MAX);
        return FL_ERROR;
    }
    return FL_OK;
}

static int history_get(fl_api_req_t *r)
{
    hq_t       *h = fl_calloc(1, sizeof(*h));
    char        from[24], to[24], bucket[24], limit[16];
    const char *p[8];

    r->ctx = h;
    if (parse(r, h) != FL_OK)
        return FL_OK;
    snprintf(from, sizeof(from), "%" PRId64, h->from_us);
    snprintf(to, sizeof(to), "%" PRId64, h->to_us);
    snprintf(bucket, sizeof(bucket), "%" PRId64, h->bucket_ms);
    snprintf(limit, sizeof(limit), "%d", h->limit);
    p[0] = r->id;
    p[1] = h->metric;
    p[2] = from;
    p[3] = to;
    p[4] = h->bucket_ms ? bucket : NULL;
    p[5] = aggs[h->agg];
    p[6] = limit;
    p[7] = h->desc ? "true" : "false";
    if (fl_api_query(r, st_history, 8, p, on_history) != FL_OK)
        return FL_OK;
    return FL_AGAIN;
}

const fl_api_route_t fl_history_routes[] = {
    {"GET", "devices/{}/telemetry", FL_SCOPE_READ, history_get},
    {NULL, NULL, 0, NULL},
};

void fl_history_init(void)
{
    st_history =
        fl_db_stmt("history", "SELECT status, kind, points, n, last_us FROM "
                              "fleetd_history($1, $2, $3::bigint, $4::bigint, "
                              "$5::bigint, $6, $7::int, $8::boolean)");
    fl_rollup_init();
}
