/*
 * fl_shm.h - the node-wide stats segment.
 *
 * One anonymous MAP_SHARED mapping created by the master before the first
 * fork and inherited by every worker. The master owns the slot table
 * (pid, state, restarts); each worker owns the fields of its own entry
 * (lag, connections, counters) and writes them with relaxed atomic stores.
 * Any worker can therefore answer /healthz and /metrics for the node.
 *
 * There are FL_SHM_ENTRIES entries: during a reload two generations run
 * side by side, so an entry is not a slot: each generation takes the half
 * the other one does not use, entry = half * FL_MAX_WORKERS + slot.
 *
 * State is the master's to write, except STARTING -> READY, which the
 * worker writes itself when its modules are initialised.
 */
#ifndef FL_SHM_H
#define FL_SHM_H

#include "fl_config.h"
#include "fl_hist.h"
#include <stdint.h>
#include <sys/types.h>

#define FL_SHM_ENTRIES (2 * FL_MAX_WORKERS)

typedef enum {
    FL_W_EMPTY = 0, /* entry unused */
    FL_W_STARTING,  /* forked, not yet serving */
    FL_W_READY,     /* serving */
    FL_W_DRAINING,  /* told to stop, finishing in-flight work */
    FL_W_BACKOFF,   /* died, master waits before respawning */
    FL_W_FAILED,    /* keeps crashing: respawned only at the cap delay */
} fl_wstate_t;

/* HTTP status codes counted per worker, indexed by the code itself. */
#define FL_SHM_STATUS_CODES 600
/* ingest rejections by fl_reject_reason_t (worker/fl_payload.h) */
#define FL_SHM_REJECT_REASONS 32
/* rows (metric values) dead-lettered for their time */
enum { FL_ROW_TOO_OLD = 0, FL_ROW_IN_FUTURE, FL_SHM_ROW_REASONS };

/* WebSocket handshakes refused, by reason */
enum {
    FL_WS_REJ_HANDSHAKE = 0, /* 400, 405, 426 */
    FL_WS_REJ_ORIGIN,        /* 403 origin */
    FL_WS_REJ_AUTH,          /* 401, 403 scope */
    FL_WS_REJ_LIMIT,         /* 503 */
    FL_SHM_WS_REJECTS
};
/* WebSocket closes counted by code; fl_shm_ws_close[i] is the code of
 * ws_closes[i] (1006: the peer went away without a close frame) */
#define FL_SHM_WS_CLOSES 11
static const int fl_shm_ws_close[FL_SHM_WS_CLOSES] = {
    1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1011, 1013, 0,
};

/* Upper bounds (us) of the loop-lag histogram's buckets (lag_ticks[i]
 * counts ticks late by more than bound i-1 and at most bound i; the
 * last slot, past the table, is +Inf). Fixed bounds rather than an
 * fl_hist_t: Prometheus "le" counts must be exact at 5 ms, the bound
 * operators alert on. */
#define FL_SHM_LAG_BUCKETS 26
static const uint32_t fl_shm_lag_le_us[FL_SHM_LAG_BUCKETS] = {
    100,   250,   500,   1000,   1500,   2000,   2500,   3000,   3500,
    4000,  4500,  5000,  6000,   7000,   8000,   9000,   10000,  15000,
    20000, 30000, 50000, 100000, 250000, 500000, 1000000, 2500000,
};

/* Dependency states published by the modules that own a connection. */
typedef enum {
    FL_DEP_UNUSED = 0, /* no module of this build uses it yet */
    FL_DEP_UP,
    FL_DEP_DOWN,
    FL_DEP_CONNECTING,
} fl_dep_state_t;

typedef struct {
    /* written by the master */
    volatile pid_t    pid;
    volatile int32_t  slot;
    volatile int32_t  state; /* fl_wstate_t */
    volatile uint32_t generation;
    volatile int64_t  started_ms;    /* wall clock */
    volatile int64_t  next_start_ms; /* BACKOFF/FAILED: when it restarts */
    volatile uint64_t restarts;      /* of this slot since the master started */
    volatile int32_t  consecutive_failures;
    volatile int32_t  last_exit; /* wait status of the last death */

    /* written by the worker */
    volatile int32_t  ready;        /* worker finished init */
    volatile int64_t  heartbeat_ms; /* wall clock, every lag period */
    volatile uint32_t lag_p50_us;
    volatile uint32_t lag_p99_us;
    volatile uint32_t lag_max_us;
    /* every lag tick since the slot's first start, by fl_shm_lag_le_us */
    volatile uint64_t lag_ticks[FL_SHM_LAG_BUCKETS + 1];
    volatile uint64_t lag_sum_us;
    volatile uint32_t conns_http;
    volatile uint32_t conns_ws;
    volatile uint64_t conns_accepted;
    volatile uint64_t conns_rejected; /* over http.max_connections */
    volatile uint64_t http_requests[FL_SHM_STATUS_CODES];
    volatile uint64_t http_bad_requests; /* parse errors before a status */

    /* dependencies as this worker sees them (fl_dep_state_t by FL_DEP_*) */
    volatile int32_t dep[4];

    /* MQTT intake (fl_mqtt.c) */
    volatile uint64_t mqtt_received; /* messages delivered by the broker */
    volatile uint64_t mqtt_enqueued; /* in the stream, then acknowledged */
    volatile uint64_t mqtt_oversize; /* dead-lettered at intake */
    volatile uint64_t mqtt_enqueue_failures; /* XADD failed: not acked */
    volatile uint64_t mqtt_connects;
    volatile uint64_t mqtt_duplicates; /* broker redeliveries (DUP) of
                                          messages already in the stream:
                                          acknowledged, not appended */

    /* stream consumer (fl_ingest.c) */
    volatile uint64_t ingest_read;     /* stream entries read */
    volatile uint64_t ingest_accepted; /* telemetry messages parsed */
    volatile uint64_t ingest_state;    /* state messages merged */
    volatile uint64_t ingest_rejected[FL_SHM_REJECT_REASONS];
    volatile uint64_t ingest_stored;      /* messages committed */
    volatile uint64_t ingest_rows;        /* rows inserted (new keys) */
    volatile uint64_t ingest_overwritten; /* rows that met another
                                             message's row with the same
                                             key and another value */
    volatile uint64_t ingest_duplicates;  /* rows whose key already held
                                             the same value (replays) */
    volatile uint64_t ingest_rows_dead[FL_SHM_ROW_REASONS];
    volatile uint64_t ingest_batches;
    volatile uint64_t ingest_dead_lettered;
    volatile uint64_t ingest_claimed; /* taken over from dead consumers */
    volatile uint64_t ingest_pg_failures;
    volatile uint64_t ingest_published; /* points fanned out: by the
                                           consumer once acknowledged, by
                                           the intake's script at once */
    volatile uint64_t ingest_fanout_failures; /* points whose shadow and
                                                 fan-out failed in a script
                                                 (stored, not shown live) */

    /* WebSocket (worker/ws/) */
    volatile uint64_t ws_accepted;
    volatile uint64_t ws_rejected[FL_SHM_WS_REJECTS];
    volatile uint64_t ws_messages;    /* telemetry messages written to
                                         clients, whole */
    volatile uint32_t ws_conflated;   /* connections conflated now */
    volatile uint64_t ws_frames_conflated; /* messages merged, not sent */
    volatile uint64_t ws_closes[FL_SHM_WS_CLOSES]; /* by fl_shm_ws_close */
    volatile uint64_t ws_replayed;    /* messages resent on resume */
    volatile uint64_t ws_gaps;        /* gap messages sent */
    volatile uint64_t ws_client_errors; /* error messages sent */
    volatile uint64_t ws_pubsub_messages; /* from Redis Pub/Sub */

    fl_hist_t         batch_rows;       /* rows per committed batch */
    fl_hist_t         batch_latency_us; /* read -> committed */
    fl_hist_t         e2e_latency_us;   /* broker arrival -> committed */
} fl_shm_worker_t;

typedef struct {
    volatile pid_t    master_pid;
    volatile int64_t  master_started_ms;
    volatile uint32_t generation; /* current (newest) generation */
    volatile int32_t  workers;    /* configured slots of it */
    volatile uint64_t reloads;
    volatile uint64_t reloads_failed;
    volatile int32_t  dep_state[4]; /* unused: see fl_shm_worker_t.dep */
    /* the ingest stream, sampled by the workers' consumers */
    volatile int64_t queue_length;
    volatile int64_t queue_pending;
    volatile int64_t queue_sampled_ms; /* 0: never sampled */
    /* the last command id given on this node: its ms << 12 | its 12-bit
     * sequence (fl_commands.c), so ids grow across the workers */
    volatile uint64_t command_clock;
    fl_shm_worker_t  w[FL_SHM_ENTRIES];
} fl_shm_t;

enum { FL_DEP_MQTT = 0, FL_DEP_REDIS, FL_DEP_POSTGRES };

extern fl_shm_t *fl_shm;

int fl_shm_create(void);

#define fl_shm_add(field, n)   __atomic_fetch_add(&(field), (n), __ATOMIC_RELAXED)
#define fl_shm_store(field, v) __atomic_store_n(&(field), (v), __ATOMIC_RELAXED)
#define fl_shm_load(field)     __atomic_load_n(&(field), __ATOMIC_RELAXED)

const char *fl_wstate_name(int state);

#endif
