/*
 * fl_health.c - GET /livez, /healthz and /metrics for the whole node.
 *
 * Every worker reads the shared stats segment, so whichever worker the
 * kernel hands a connection to answers for all of them. /livez says only
 * that this process serves HTTP (load-balancer checks, benchmarks);
 * /healthz is 503 when the node cannot do its job: a worker slot of the
 * current generation has no live worker (dead, backing off, failing), a
 * worker's loop has not ticked for HEARTBEAT_STALE_MS, or a dependency
 * that a module uses is down.
 */
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>

#include "fl_http.h"
#include "fl_log.h"
#include "fl_payload.h"
#include "fl_worker.h"

#define HEARTBEAT_STALE_MS 5000

static const char *dep_name(int state)
{
    switch (state) {
    case FL_DEP_UP: return "up";
    case FL_DEP_DOWN: return "down";
    case FL_DEP_CONNECTING: return "connecting";
    default: return "unused";
    }
}

/* A dependency as the node sees it: down when any ready worker of the
 * current generation sees it down, connecting when any is connecting,
 * up when all are up, unused when no module uses it. */
static int dep_node(const fl_shm_t *s, uint32_t gen, int d)
{
    int up = 0, down = 0, connecting = 0;

    for (int i = 0; i < FL_SHM_ENTRIES; i++) {
        const fl_shm_worker_t *e = &s->w[i];
        if (fl_shm_load(e->state) != FL_W_READY ||
            fl_shm_load(e->generation) != gen)
            continue;
        switch (fl_shm_load(e->dep[d])) {
        case FL_DEP_UP: up++; break;
        case FL_DEP_DOWN: down++; break;
        case FL_DEP_CONNECTING: connecting++; break;
        }
    }
    if (down)
        return FL_DEP_DOWN;
    if (connecting)
        return FL_DEP_CONNECTING;
    return up ? FL_DEP_UP : FL_DEP_UNUSED;
}

static int livez(fl_http_req_t *req, void *ud)
{
    (void)ud;
    fl_http_respond(req, 200, "text/plain", "ok\n", 3);
    return FL_OK;
}

/* Is entry i a worker of the node right now, and is it healthy? */
static int entry_listed(const fl_shm_worker_t *e)
{
    return fl_shm_load(e->state) != FL_W_EMPTY;
}

static int entry_healthy(const fl_shm_worker_t *e, uint32_t gen, int64_t now)
{
    int st = fl_shm_load(e->state);

    if (fl_shm_load(e->generation) != gen)
        return 1; /* a draining or starting generation */
    if (st == FL_W_BACKOFF || st == FL_W_FAILED || fl_shm_load(e->pid) == 0)
        return 0;
    if (st == FL_W_READY &&
        now - fl_shm_load(e->heartbeat_ms) > HEARTBEAT_STALE_MS)
        return 0;
    return 1;
}

static cJSON *lag_json(const fl_shm_worker_t *e)
{
    cJSON *o = cJSON_CreateObject();

    cJSON_AddNumberToObject(o, "p50", fl_shm_load(e->lag_p50_us) / 1000.0);
    cJSON_AddNumberToObject(o, "p99", fl_shm_load(e->lag_p99_us) / 1000.0);
    cJSON_AddNumberToObject(o, "max", fl_shm_load(e->lag_max_us) / 1000.0);
    return o;
}

static int healthz(fl_http_req_t *req, void *ud)
{
    const fl_shm_t *s = fl_shm;
    uint32_t        gen = fl_shm_load(s->generation);
    int64_t         now = fl_wall_ms();
    int             ok = 1;
    cJSON          *root, *ws, *o;
    char           *text;

    (void)ud;
    root = cJSON_CreateObject();
    ws = cJSON_CreateArray();
    for (int i = 0; i < FL_SHM_ENTRIES; i++) {
        const fl_shm_worker_t *e = &s->w[i];
        int64_t                started;

        if (!entry_listed(e))
            continue;
        if (!entry_healthy(e, gen, now))
            ok = 0;
        o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "slot", fl_shm_load(e->slot));
        cJSON_AddNumberToObject(o, "pid", fl_shm_load(e->pid));
        cJSON_AddNumberToObject(o, "generation", fl_shm_load(e->generation));
        cJSON_AddStringToObject(o, "state",
                                fl_wstate_name(fl_shm_load(e->state)));
        cJSON_AddNumberToObject(o, "restarts", fl_shm_load(e->restarts));
        started = fl_shm_load(e->started_ms);
        cJSON_AddNumberToObject(o, "uptime_s",
                                started ? (now - started) / 1000 : 0);
        cJSON_AddItemToObject(o, "loop_lag_ms", lag_json(e));
        cJSON *c = cJSON_AddObjectToObject(o, "connections");
        cJSON_AddNumberToObject(c, "ws", fl_shm_load(e->conns_ws));
        cJSON_AddNumberToObject(c, "http", fl_shm_load(e->conns_http));
        cJSON *dp = cJSON_AddObjectToObject(o, "deps");
        cJSON_AddStringToObject(dp, "mqtt",
                                dep_name(fl_shm_load(e->dep[FL_DEP_MQTT])));
        cJSON_AddStringToObject(dp, "redis",
                                dep_name(fl_shm_load(e->dep[FL_DEP_REDIS])));
        cJSON_AddStringToObject(dp, "postgres",
                                dep_name(fl_shm_load(e->dep[FL_DEP_POSTGRES])));
        cJSON_AddItemToArray(ws, o);
    }
    if (kill(fl_shm_load(s->master_pid), 0) == -1)
        ok = 0; /* the master is gone: nobody respawns */
    for (int d = FL_DEP_MQTT; d <= FL_DEP_POSTGRES; d++) {
        if (dep_node(s, gen, d) == FL_DEP_DOWN)
            ok = 0;
    }

    cJSON_AddStringToObject(root, "status", ok ? "ok" : "degraded");
    cJSON_AddStringToObject(root, "node", fl_worker.cf->node_id);
    cJSON_AddStringToObject(root, "version", FL_VERSION);
    cJSON_AddNumberToObject(root, "master_pid", fl_shm_load(s->master_pid));
    cJSON_AddNumberToObject(root, "generation", gen);
    cJSON_AddNumberToObject(root, "uptime_s",
                            (now - fl_shm_load(s->master_started_ms)) / 1000);
    o = cJSON_AddObjectToObject(root, "served_by");
    cJSON_AddNumberToObject(o, "slot", fl_worker.slot);
    cJSON_AddNumberToObject(o, "pid", getpid());
    cJSON_AddItemToObject(root, "workers", ws);
    /* sampled every second by the consumers; null until the first sample
     * (Redis not reached yet), and "stale" past 5 s */
    o = cJSON_AddObjectToObject(root, "queue");
    if (fl_shm_load(s->queue_sampled_ms) == 0) {
        cJSON_AddNullToObject(o, "length");
        cJSON_AddNullToObject(o, "pending");
    } else {
        cJSON_AddNumberToObject(o, "length", fl_shm_load(s->queue_length));
        cJSON_AddNumberToObject(o, "pending", fl_shm_load(s->queue_pending));
        cJSON_AddNumberToObject(o, "age_ms",
                                now - fl_shm_load(s->queue_sampled_ms));
    }
    cJSON_AddStringToObject(root, "mqtt",
                            dep_name(dep_node(s, gen, FL_DEP_MQTT)));
    cJSON_AddStringToObject(root, "redis",
                            dep_name(dep_node(s, gen, FL_DEP_REDIS)));
    cJSON_AddStringToObject(root, "postgres",
                            dep_name(dep_node(s, gen, FL_DEP_POSTGRES)));

    text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    fl_http_add_header(req, "Cache-Control", "no-store");
    fl_http_respond(req, ok ? 200 : 503, "application/json", text,
                    strlen(text));
    cJSON_free(text);
    return FL_OK;
}

/* One counter series per worker slot, read from a uint64_t field of the
 * worker's stats entry at offset off. */
static void per_worker_u64(struct evbuffer              *b,
                           const fl_shm_worker_t *const *cur, int n,
                           const char *name, const char *help, size_t off)
{
    evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s counter\n", name, help,
                        name);
    for (int i = 0; i < n; i++) {
        const volatile uint64_t *v =
            (const volatile uint64_t *)((const char *)cur[i] + off);
        evbuffer_add_printf(b, "%s{worker=\"%d\"} %llu\n", name, cur[i]->slot,
                            (unsigned long long)fl_shm_load(*v));
    }
}

/* A histogram of microsecond values as a Prometheus histogram in
 * seconds (or in plain units when scale is 1), summed over workers. */
static void hist_prom(struct evbuffer *b, const fl_shm_worker_t *const *cur,
                      int n, const char *name, const char *help, size_t off,
                      const double *bounds, int nb, double scale)
{
    fl_hist_t h;

    fl_hist_reset(&h);
    for (int i = 0; i < n; i++)
        fl_hist_merge(&h, (const fl_hist_t *)((const char *)cur[i] + off));
    evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help,
                        name);
    for (int i = 0; i < nb; i++)
        evbuffer_add_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i],
                            (unsigned long long)fl_hist_count_le(
                                &h, (uint64_t)(bounds[i] * scale)));
    evbuffer_add_printf(b,
                        "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %g\n"
                        "%s_count %llu\n",
                        name, (unsigned long long)h.count, name,
                        (double)h.sum / scale, name,
                        (unsigned long long)h.count);
}

/* Every lag tick since each slot first started, summed over workers:
 * what fleetd_loop_lag_seconds shows for the last 10 s, for any range. */
static void lag_prom(struct evbuffer *b, const fl_shm_worker_t *const *cur,
                     int n)
{
    uint64_t le = 0, sum = 0;

    evbuffer_add_printf(b, "# HELP fleetd_loop_delay_seconds How late each "
                           "10 ms tick of the event-loop lag timer ran.\n"
                           "# TYPE fleetd_loop_delay_seconds histogram\n");
    for (int i = 0; i <= FL_SHM_LAG_BUCKETS; i++) {
        for (int w = 0; w < n; w++)
            le += fl_shm_load(cur[w]->lag_ticks[i]);
        if (i < FL_SHM_LAG_BUCKETS)
            evbuffer_add_printf(
                b, "fleetd_loop_delay_seconds_bucket{le=\"%g\"} %llu\n",
                fl_shm_lag_le_us[i] / 1e6, (unsigned long long)le);
    }
    for (int w = 0; w < n; w++)
        sum += fl_shm_load(cur[w]->lag_sum_us);
    evbuffer_add_printf(b,
                        "fleetd_loop_delay_seconds_bucket{le=\"+Inf\"} %llu\n"
                        "fleetd_loop_delay_seconds_sum %g\n"
                        "fleetd_loop_delay_seconds_count %llu\n",
                        (unsigned long long)le, (double)sum / 1e6,
                        (unsigned long long)le);
}

static void node_counter(struct evbuffer *b, const fl_shm_worker_t *const *cur,
                         int n, const char *name, const char *help, size_t off)
{
    uint64_t sum = 0;

    for (int i = 0; i < n; i++)
        sum += fl_shm_load(
            *(const volatile uint64_t *)((const char *)cur[i] + off));
    evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name,
                        help, name, name, (unsigned long long)sum);
}

/* WebSocket series, node-wide. */
static void ws_metrics(struct evbuffer *b, const fl_shm_worker_t *const *cur,
                       int n)
{
    static const char *const rej[FL_SHM_WS_REJECTS] = {"handshake", "origin",
                                                       "auth", "limit"};
    uint64_t                 sum;

#define WSC(f, name, help)                                                     \
    node_counter(b, cur, n, name, help, offsetof(fl_shm_worker_t, f))
    WSC(ws_accepted, "fleetd_ws_accepted_total",
        "WebSocket handshakes accepted.");
    WSC(ws_messages, "fleetd_ws_messages_total",
        "Telemetry messages written to WebSocket clients (live, conflated "
        "and replayed ones).");
    WSC(ws_frames_conflated, "fleetd_ws_frames_conflated_total",
        "Telemetry messages merged into a slow client's latest values "
        "instead of being queued.");
    WSC(ws_replayed, "fleetd_ws_replayed_total",
        "Telemetry messages resent to clients that resumed with since.");
    WSC(ws_gaps, "fleetd_ws_gaps_total",
        "Gap messages: a resumed client's missed range was not all kept.");
    WSC(ws_client_errors, "fleetd_ws_client_errors_total",
        "Error messages sent for bad client messages.");
    WSC(ws_pubsub_messages, "fleetd_ws_pubsub_messages_total",
        "Messages received from Redis Pub/Sub for WebSocket fan-out.");
#undef WSC
    sum = 0;
    for (int i = 0; i < n; i++)
        sum += fl_shm_load(cur[i]->ws_conflated);
    evbuffer_add_printf(b,
                        "# HELP fleetd_ws_conflated_connections WebSocket "
                        "clients over limits.ws_send_buffer now.\n"
                        "# TYPE fleetd_ws_conflated_connections gauge\n"
                        "fleetd_ws_conflated_connections %llu\n",
                        (unsigned long long)sum);
    evbuffer_add_printf(b, "# HELP fleetd_ws_rejected_total WebSocket "
                           "handshakes refused, by reason.\n"
                           "# TYPE fleetd_ws_rejected_total counter\n");
    for (int r = 0; r < FL_SHM_WS_REJECTS; r++) {
        sum = 0;
        for (int i = 0; i < n; i++)
            sum += fl_shm_load(cur[i]->ws_rejected[r]);
        evbuffer_add_printf(b, "fleetd_ws_rejected_total{reason=\"%s\"} %llu\n",
                            rej[r], (unsigned long long)sum);
    }
    evbuffer_add_printf(b, "# HELP fleetd_ws_closes_total WebSocket "
                           "connections closed, by close code (1006: the "
                           "peer went away without one; other: codes not "
                           "listed).\n"
                           "# TYPE fleetd_ws_closes_total counter\n");
    for (int k = 0; k < FL_SHM_WS_CLOSES; k++) {
        char code[16];

        sum = 0;
        for (int i = 0; i < n; i++)
            sum += fl_shm_load(cur[i]->ws_closes[k]);
        if (fl_shm_ws_close[k])
            snprintf(code, sizeof(code), "%d", fl_shm_ws_close[k]);
        else
            snprintf(code, sizeof(code), "other");
        evbuffer_add_printf(b, "fleetd_ws_closes_total{code=\"%s\"} %llu\n",
                            code, (unsigned long long)sum);
    }
}

/* MQTT intake and stream consumer series, node-wide. */
static void ingest_metrics(struct evbuffer              *b,
                           const fl_shm_worker_t *const *cur, int n)
{
    static const double lat[] = {0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
                                 0.25,  0.5,   1,     2.5,  5,     10};
    static const double rows[] = {1,    10,   50,   100,   500,
                                  1000, 2000, 5000, 10000, 50000};
    static const struct {
        const char *name, *help;
        size_t      off;
    } counters[] = {
#define C(n, h, f) {"fleetd_" n, h, offsetof(fl_shm_worker_t, f)}
        C("mqtt_received_total", "MQTT messages delivered by the broker.",
          mqtt_received),
        C("mqtt_enqueued_total",
          "MQTT messages appended to the stream, then acknowledged.",
          mqtt_enqueued),
        C("mqtt_oversize_total",
          "MQTT messages over limits.max_payload_bytes, dead-lettered.",
          mqtt_oversize),
        C("mqtt_enqueue_failures_total",
          "Stream appends that failed (message not acknowledged).",
          mqtt_enqueue_failures),
        C("mqtt_connects_total", "Connections to the broker.", mqtt_connects),
        C("mqtt_duplicates_total",
          "Broker redeliveries of messages already in the stream, "
          "acknowledged and not appended again.",
          mqtt_duplicates),
        C("ingest_read_total", "Stream entries read.", ingest_read),
        C("ingest_accepted_total", "Telemetry messages parsed.",
          ingest_accepted),
        C("ingest_state_total", "Reported-state messages merged.",
          ingest_state),
        C("ingest_stored_total",
          "Telemetry messages whose points were committed.", ingest_stored),
        C("ingest_rows_total",
          "Telemetry rows inserted: new (device, metric, ts) keys.",
          ingest_rows),
        C("ingest_overwritten_total",
          "Rows that met a row of another message with the same device, "
          "metric and ts and another value (the later one in queue order "
          "is kept).",
          ingest_overwritten),
        C("ingest_duplicates_total",
          "Rows whose device, metric and ts already held the same value "
          "(an entry stored again, a repeated message).",
          ingest_duplicates),
        C("ingest_batches_total", "Batches committed.", ingest_batches),
        C("ingest_dead_lettered_total",
          "Entries moved to the dead-letter "
          "stream.",
          ingest_dead_lettered),
        C("ingest_claimed_total", "Pending entries taken over.",
          ingest_claimed),
        C("ingest_storage_failures_total",
          "Batch writes that failed (retried).", ingest_pg_failures),
        C("ingest_published_total",
          "Points published for fan-out: by the stream consumer, counted "
          "once their batch is acknowledged (a batch published again after "
          "a failure counts once); by the intake's append script, counted "
          "when its reply comes.",
          ingest_published),
        C("ingest_fanout_failures_total",
          "Telemetry points (and state messages) whose shadow update and "
          "live fan-out failed in Redis, in the intake's script or the "
          "consumer's (a device's key of another type): stored all the "
          "same, not shown live.",
          ingest_fanout_failures),
#undef C
    };
    const fl_shm_t *s = fl_shm;

    for (size_t i = 0; i < fl_nelem(counters); i++)
        node_counter(b, cur, n, counters[i].name, counters[i].help,
                     counters[i].off);

    evbuffer_add_printf(b, "# HELP fleetd_ingest_rejected_total Messages "
                           "refused, by reason (dead-lettered).\n"
                           "# TYPE fleetd_ingest_rejected_total counter\n");
    for (int r = 1; r < FL_REJECT_COUNT; r++) {
        uint64_t sum = 0;
        for (int i = 0; i < n; i++) {
            sum += fl_shm_load(cur[i]->ingest_rejected[r]);
            /* oversize payloads are refused at intake, before the stream */
            if (r == FL_REJECT_TOO_LARGE)
                sum += fl_shm_load(cur[i]->mqtt_oversize);
        }
        evbuffer_add_printf(b,
                            "fleetd_ingest_rejected_total{reason=\"%s\"} "
                            "%llu\n",
                            fl_reject_name((fl_reject_reason_t)r),
                            (unsigned long long)sum);
    }

    evbuffer_add_printf(b, "# HELP fleetd_ingest_rows_dead_lettered_total "
                           "Metric values not stored for their time (older "
                           "than retention, or too far ahead), by reason.\n"
                           "# TYPE fleetd_ingest_rows_dead_lettered_total "
                           "counter\n");
    for (int r = 0; r < FL_SHM_ROW_REASONS; r++) {
        uint64_t sum = 0;
        for (int i = 0; i < n; i++)
            sum += fl_shm_load(cur[i]->ingest_rows_dead[r]);
        evbuffer_add_printf(b,
                            "fleetd_ingest_rows_dead_lettered_total{reason="
                            "\"%s\"} %llu\n",
                            r == FL_ROW_TOO_OLD ? "too_old" : "in_future",
                            (unsigned long long)sum);
    }

    hist_prom(b, cur, n, "fleetd_ingest_e2e_latency_seconds",
              "Broker arrival to committed, per message.",
              offsetof(fl_shm_worker_t, e2e_latency_us), lat,
              (int)fl_nelem(lat), 1e6);
    hist_prom(b, cur, n, "fleetd_ingest_batch_latency_seconds",
              "Stream read to committed, per batch.",
              offsetof(fl_shm_worker_t, batch_latency_us), lat,
              (int)fl_nelem(lat), 1e6);
    hist_prom(b, cur, n, "fleetd_ingest_batch_rows", "Rows per batch.",
              offsetof(fl_shm_worker_t, batch_rows), rows, (int)fl_nelem(rows),
              1);

    evbuffer_add_printf(b,
                        "# HELP fleetd_queue_length Entries in the ingest "
                        "stream.\n# TYPE fleetd_queue_length gauge\n"
                        "fleetd_queue_length %lld\n"
                        "# HELP fleetd_queue_pending Entries read and not yet "
                        "acknowledged.\n# TYPE fleetd_queue_pending gauge\n"
                        "fleetd_queue_pending %lld\n",
                        (long long)fl_shm_load(s->queue_length),
                        (long long)fl_shm_load(s->queue_pending));
    evbuffer_add_printf(b,
                        "# HELP fleetd_dependency_up 1 when every worker "
                        "reaches the dependency.\n# TYPE fleetd_dependency_up "
                        "gauge\n");
    for (int d = FL_DEP_MQTT; d <= FL_DEP_POSTGRES; d++) {
        static const char *names[] = {"mqtt", "redis", "postgres"};
        evbuffer_add_printf(
            b, "fleetd_dependency_up{dependency=\"%s\"} %d\n", names[d],
            dep_node(s, fl_shm_load(s->generation), d) == FL_DEP_UP);
    }
}

/*
 * Prometheus text exposition format 0.0.4. Per-worker series are labelled
 * by slot ("worker"); a slot keeps its counters across respawns, a reload
 * starts a new generation's counters at zero (a counter reset, which
 * rate() handles).
 */
static int metrics(fl_http_req_t *req, void *ud)
{
    const fl_shm_t        *s = fl_shm;
    struct evbuffer       *b = evbuffer_new();
    uint32_t               gen = fl_shm_load(s->generation);
    int64_t                now = fl_wall_ms();
    const fl_shm_worker_t *cur[FL_SHM_ENTRIES];
    int                    n = 0;

    (void)ud;
    for (int i = 0; i < FL_SHM_ENTRIES; i++) {
        if (entry_listed(&s->w[i]) && fl_shm_load(s->w[i].generation) == gen)
            cur[n++] = &s->w[i];
    }

#define HELP(name, type, help)                                               \
    evbuffer_add_printf(b, "# HELP " name " " help "\n# TYPE " name " " type \
                           "\n")

    HELP("fleetd_info", "gauge", "Build and node information.");
    evbuffer_add_printf(b, "fleetd_info{node=\"%s\",version=\"%s\"} 1\n",
                        fl_worker.cf->node_id, FL_VERSION);
    HELP("fleetd_uptime_seconds", "gauge", "Seconds since the master started.");
    evbuffer_add_printf(b, "fleetd_uptime_seconds %lld\n",
                        (long long)(now - s->master_started_ms) / 1000);
    HELP("fleetd_workers_configured", "gauge", "Worker slots configured.");
    evbuffer_add_printf(b, "fleetd_workers_configured %d\n",
                        fl_shm_load(s->workers));
    HELP("fleetd_reloads_total", "counter", "Successful reloads.");
    evbuffer_add_printf(b, "fleetd_reloads_total %llu\n",
                        (unsigned long long)fl_shm_load(s->reloads));
    HELP("fleetd_reloads_failed_total", "counter",
         "Reloads refused (bad config, bind error, workers not ready).");
    evbuffer_add_printf(b, "fleetd_reloads_failed_total %llu\n",
                        (unsigned long long)fl_shm_load(s->reloads_failed));

    HELP("fleetd_worker_up", "gauge", "1 when the slot has a live worker.");
    for (int i = 0; i < n; i++)
        evbuffer_add_printf(b, "fleetd_worker_up{worker=\"%d\"} %d\n",
                            cur[i]->slot,
                            entry_healthy(cur[i], gen, now) ? 1 : 0);
    per_worker_u64(b, cur, n, "fleetd_worker_restarts_total",
                   "Times the slot's worker died and was restarted.",
                   offsetof(fl_shm_worker_t, restarts));
    HELP("fleetd_loop_lag_seconds", "gauge",
         "Event-loop lag over the last 10 s (quantile 1 = max).");
    for (int i = 0; i < n; i++) {
        evbuffer_add_printf(
            b,
            "fleetd_loop_lag_seconds{worker=\"%d\",quantile=\"0.5\"} %.6f\n"
            "fleetd_loop_lag_seconds{worker=\"%d\",quantile=\"0.99\"} %.6f\n"
            "fleetd_loop_lag_seconds{worker=\"%d\",quantile=\"1\"} %.6f\n",
            cur[i]->slot, fl_shm_load(cur[i]->lag_p50_us) / 1e6, cur[i]->slot,
            fl_shm_load(cur[i]->lag_p99_us) / 1e6, cur[i]->slot,
            fl_shm_load(cur[i]->lag_max_us) / 1e6);
    }
    lag_prom(b, cur, n);
    HELP("fleetd_connections", "gauge", "Open client connections.");
    for (int i = 0; i < n; i++)
        evbuffer_add_printf(
            b,
            "fleetd_connections{worker=\"%d\",kind=\"http\"} %u\n"
            "fleetd_connections{worker=\"%d\",kind=\"ws\"} %u\n",
            cur[i]->slot, fl_shm_load(cur[i]->conns_http), cur[i]->slot,
            fl_shm_load(cur[i]->conns_ws));
    per_worker_u64(b, cur, n, "fleetd_connections_accepted_total",
                   "Connections accepted.",
                   offsetof(fl_shm_worker_t, conns_accepted));
    per_worker_u64(b, cur, n, "fleetd_connections_rejected_total",
                   "Connections refused over http.max_connections.",
                   offsetof(fl_shm_worker_t, conns_rejected));
    HELP("fleetd_http_requests_total", "counter",
         "HTTP responses sent, by status code.");
    for (int i = 0; i < n; i++) {
        for (int code = 100; code < FL_SHM_STATUS_CODES; code++) {
            uint64_t v = fl_shm_load(cur[i]->http_requests[code]);
            if (v)
                evbuffer_add_printf(b,
                                    "fleetd_http_requests_total"
                                    "{worker=\"%d\",code=\"%d\"} %llu\n",
                                    cur[i]->slot, code, (unsigned long long)v);
        }
    }
    ingest_metrics(b, cur, n);
    ws_metrics(b, cur, n);
#undef HELP

    fl_http_respond_buffer(req, 200, "text/plain; version=0.0.4", b);
    evbuffer_free(b);
    return FL_OK;
}

static int health_init(fl_worker_t *w)
{
    (void)w;
    fl_http_route("GET", "/livez", livez, NULL);
    fl_http_route("GET", "/healthz", healthz, NULL);
    fl_http_route("GET", "/metrics", metrics, NULL);
    return FL_OK;
}

const fl_module_t fl_health_module = {
    "health", health_init, NULL, NULL, NULL, NULL,
};
