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

/* HTTP status codes counted per worker: index by fl_shm_status_index(). */
#define FL_SHM_STATUS_CODES 600

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
    volatile uint32_t conns_http;
    volatile uint32_t conns_ws;
    volatile uint64_t conns_accepted;
    volatile uint64_t conns_rejected; /* over http.max_connections */
    volatile uint64_t http_requests[FL_SHM_STATUS_CODES];
    volatile uint64_t http_bad_requests; /* parse errors before a status */
} fl_shm_worker_t;

typedef struct {
    volatile pid_t    master_pid;
    volatile int64_t  master_started_ms;
    volatile uint32_t generation; /* current (newest) generation */
    volatile int32_t  workers;    /* configured slots of it */
    volatile uint64_t reloads;
    volatile uint64_t reloads_failed;
    volatile int32_t  dep_state[4]; /* mqtt, redis, postgres, spare */
    fl_shm_worker_t   w[FL_SHM_ENTRIES];
} fl_shm_t;

enum { FL_DEP_MQTT = 0, FL_DEP_REDIS, FL_DEP_POSTGRES };

extern fl_shm_t *fl_shm;

int fl_shm_create(void);

#define fl_shm_add(field, n)   __atomic_fetch_add(&(field), (n), __ATOMIC_RELAXED)
#define fl_shm_store(field, v) __atomic_store_n(&(field), (v), __ATOMIC_RELAXED)
#define fl_shm_load(field)     __atomic_load_n(&(field), __ATOMIC_RELAXED)

const char *fl_wstate_name(int state);

#endif
