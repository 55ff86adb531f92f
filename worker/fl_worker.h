/*
 * fl_worker.h - one worker process: its event loop and its modules.
 *
 * A module is a struct of operations that the worker calls in a fixed
 * order (nginx ngx_module_t): init after fork, stop when draining begins,
 * busy while draining (how much in-flight work remains), destroy last.
 * The list of modules is the static table in fl_modules.c; a new
 * subsystem plugs in there without touching the loop.
 */
#ifndef FL_WORKER_H
#define FL_WORKER_H

#include <event2/event.h>
#include <sys/types.h>

#include "fl_config.h"
#include "fl_shm.h"

typedef struct fl_worker_s fl_worker_t;

typedef struct {
    const char *name;
    /* FL_OK or FL_ERROR (the worker then exits and the master backs off) */
    int (*init)(fl_worker_t *w);
    /* stop taking new work; fast = SIGTERM or master gone */
    void (*stop)(fl_worker_t *w, int fast);
    /* units of in-flight work left; the worker exits when all are 0 */
    int (*busy)(fl_worker_t *w);
    void (*destroy)(fl_worker_t *w);
    /* optional: 1 once the module can do its job (its dependencies have
     * been reached once); the worker reports ready when all say so */
    int (*ready)(fl_worker_t *w);
} fl_module_t;

extern const fl_module_t *const fl_modules[];

struct fl_worker_s {
    struct event_base *base;
    fl_config_t       *cf;
    int                slot;
    uint32_t           generation;
    int                listen_fd;
    pid_t              master_pid;
    fl_shm_worker_t   *stats;    /* this worker's entry in fl_shm */
    int                draining; /* 0, 1 graceful, 2 fast */
    int                inited;   /* every module's init succeeded */
    int                ready;    /* reported ready (stays so) */
    int64_t            drain_deadline_ms;
};

extern fl_worker_t fl_worker;

/* Called by the master right after fork; returns the exit code. */
int fl_worker_main(fl_config_t *cf, int slot, uint32_t generation, int entry,
                   int listen_fd);

/* A module's ready() may have changed: report the worker ready once every
 * module is. Readiness is what a reload waits for before it drains the
 * old generation; it is reported once and never taken back (a dependency
 * lost later shows in /healthz deps). Cheap; safe to call at any time. */
void fl_worker_ready_check(void);

/* A module finished some in-flight work while draining: re-check whether
 * the worker can exit now. Cheap; safe to call at any time. */
void fl_worker_drain_check(void);

#endif
