/*
 * fl_worker.c - the worker process: libevent loop, signals, drain.
 *
 * Signals arrive through evsignal events, never in a raw handler:
 * SIGQUIT drains gracefully under shutdown_timeout, SIGTERM/SIGINT under
 * fast_shutdown_timeout, SIGUSR1 reopens the log. The worker also stops
 * when its master is gone (PR_SET_PDEATHSIG delivers SIGTERM; a 1 s check
 * of getppid() covers the window before prctl ran).
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fl_log.h"
#include "fl_worker.h"

fl_worker_t fl_worker;

static struct event *ev_sig[5];
static struct event *ev_parent;
static struct event *ev_drain;

static void drain_begin(int fast)
{
    fl_worker_t *w = &fl_worker;
    int64_t      timeout =
        fast ? w->cf->fast_shutdown_timeout_ms : w->cf->shutdown_timeout_ms;
    int64_t deadline = fl_now_ms() + timeout;

    if (w->draining >= (fast ? 2 : 1))
        return;
    if (w->draining == 0 || deadline < w->drain_deadline_ms)
        w->drain_deadline_ms = deadline;
    w->draining = fast ? 2 : 1;
    fl_info("%s drain, deadline %lld ms", fast ? "fast" : "graceful",
            (long long)(w->drain_deadline_ms - fl_now_ms()));

    for (int i = 0; fl_modules[i]; i++) {
        if (fl_modules[i]->stop)
            fl_modules[i]->stop(w, fast);
    }
    fl_worker_drain_check();
}

void fl_worker_drain_check(void)
{
    fl_worker_t   *w = &fl_worker;
    struct timeval tv = {0, 50000};
    int            busy = 0;

    if (!w->draining)
        return;
    for (int i = 0; fl_modules[i]; i++) {
        if (fl_modules[i]->busy)
            busy += fl_modules[i]->busy(w);
    }
    if (busy == 0) {
        event_base_loopbreak(w->base);
        return;
    }
    if (fl_now_ms() >= w->drain_deadline_ms) {
        fl_warn("drain deadline reached with %d units of work in flight", busy);
        event_base_loopbreak(w->base);
        return;
    }
    /* poll until done: modules need not report every completion */
    if (!evtimer_pending(ev_drain, NULL))
        evtimer_add(ev_drain, &tv);
}

void fl_worker_ready_check(void)
{
    fl_worker_t *w = &fl_worker;

    if (w->ready || w->draining || !w->inited)
        return;
    for (int i = 0; fl_modules[i]; i++) {
        if (fl_modules[i]->ready && !fl_modules[i]->ready(w))
            return;
    }
    w->ready = 1;
    fl_shm_store(w->stats->ready, 1);
    fl_shm_store(w->stats->state, FL_W_READY);
    fl_debug("worker ready");
}

static void on_drain_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    fl_worker_drain_check();
}

static void on_signal(evutil_socket_t signo, short what, void *arg)
{
    (void)what, (void)arg;

    switch (signo) {
    case SIGQUIT: drain_begin(0); break;
    case SIGTERM:
    case SIGINT: drain_begin(1); break;
    case SIGUSR1: fl_log_reopen(); break;
    case SIGHUP:
        /* the master reloads; a worker has nothing to re-read */
        break;
    }
}

static void on_parent_check(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;

    if (getppid() != fl_worker.master_pid && !fl_worker.draining) {
        fl_error("master (pid %d) is gone, stopping",
                 (int)fl_worker.master_pid);
        drain_begin(1);
    }
}

int fl_worker_main(fl_config_t *cf, int slot, uint32_t generation, int entry,
                   int listen_fd)
{
    static const int     sigs[] = {SIGQUIT, SIGTERM, SIGINT, SIGUSR1, SIGHUP};
    fl_worker_t         *w = &fl_worker;
    struct event_config *ecf;
    struct timeval       second = {1, 0};
    int                  i, inited = 0, rc = 0;

    memset(w, 0, sizeof(*w));
    w->cf = cf;
    w->slot = slot;
    w->generation = generation;
    w->listen_fd = listen_fd;
    w->master_pid = getppid();
    w->stats = &fl_shm->w[entry];
    signal(SIGPIPE, SIG_IGN);

    ecf = event_config_new();
    /* precise timers: the lag monitor measures sub-millisecond lateness */
    event_config_set_flag(ecf, EVENT_BASE_FLAG_PRECISE_TIMER);
    w->base = event_base_new_with_config(ecf);
    event_config_free(ecf);
    if (w->base == NULL) {
        fl_error("event_base_new() failed");
        return 2;
    }

    for (i = 0; i < (int)fl_nelem(sigs); i++) {
        ev_sig[i] = evsignal_new(w->base, sigs[i], on_signal, NULL);
        evsignal_add(ev_sig[i], NULL);
    }
    ev_parent = event_new(w->base, -1, EV_PERSIST, on_parent_check, NULL);
    evtimer_add(ev_parent, &second);
    ev_drain = evtimer_new(w->base, on_drain_tick, NULL);

    for (i = 0; fl_modules[i]; i++) {
        if (fl_modules[i]->init && fl_modules[i]->init(w) != FL_OK) {
            fl_error("module %s failed to start", fl_modules[i]->name);
            rc = 2;
            break;
        }
        inited = i + 1;
    }

    if (rc == 0) {
        w->inited = 1;
        fl_worker_ready_check();
        event_base_dispatch(w->base);
        fl_info("worker stopped");
    }

    for (i = inited - 1; i >= 0; i--) {
        if (fl_modules[i]->destroy)
            fl_modules[i]->destroy(w);
    }
    for (i = 0; i < (int)fl_nelem(sigs); i++)
        event_free(ev_sig[i]);
    event_free(ev_parent);
    event_free(ev_drain);
    event_base_free(w->base);
    fl_config_free(cf);
    return rc;
}
