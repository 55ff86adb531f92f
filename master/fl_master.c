/*
 * fl_master.c - the master's process cycle.
 *
 * The master forks one worker per slot and then sleeps in sigsuspend(2);
 * signal handlers only set flags (nginx ngx_master_process_cycle). Timed
 * work (respawn backoff, reload readiness, drain deadlines) is driven by
 * setitimer(2) waking the same sigsuspend.
 *
 * Generations: `cur` serves; on SIGHUP a `next` generation is forked with
 * the new configuration; once every worker of it reported ready, `cur`
 * is told to drain (SIGQUIT) and becomes `old`, `next` becomes `cur`.
 * If `next` does not become ready in worker_ready_timeout, or one of its
 * workers dies while starting, it is killed and `cur` keeps serving.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../worker/fl_worker.h"
#include "fl_log.h"
#include "fl_master.h"
#include "fl_shm.h"

#define BACKOFF_MIN_MS  100
#define BACKOFF_MAX_MS  10000
#define STABLE_AFTER_MS 10000 /* a worker up this long resets its backoff */
#define FAILED_AFTER    5     /* consecutive quick deaths = "failed" */
#define KILL_GRACE_MS   2000  /* after a drain deadline, before SIGKILL */
#define POLL_MS         20    /* readiness polling while reloading */

typedef struct {
    pid_t   pid;
    int     slot;
    int     entry;
    int64_t started_ms; /* monotonic */
    int64_t respawn_at; /* 0 = not waiting for a respawn */
    int     failures;
} proc_t;

typedef struct {
    uint32_t       id;
    int            n;
    fl_config_t   *cf;
    fl_listeners_t ls;
    proc_t         proc[FL_MAX_WORKERS];
    int64_t        deadline; /* next: ready by; old: kill at */
    int            active;
    int            half; /* which half of the shm entries it uses */
} gen_t;

static volatile sig_atomic_t sig_reload, sig_quit, sig_term, sig_reopen,
    sig_child, sig_alarm;

static gen_t    g_cur, g_next, g_old;
static uint32_t gen_counter;
static int      stopping; /* 0, SIGQUIT or SIGTERM */
static int64_t  stop_deadline;
static int      reload_pending;

static void on_signal(int signo)
{
    switch (signo) {
    case SIGHUP: sig_reload = 1; break;
    case SIGQUIT: sig_quit = 1; break;
    case SIGTERM:
    case SIGINT: sig_term = 1; break;
    case SIGUSR1: sig_reopen = 1; break;
    case SIGCHLD: sig_child = 1; break;
    case SIGALRM: sig_alarm = 1; break;
    }
}

static void master_signals(sigset_t *waitmask)
{
    static const int sigs[] = {SIGHUP,  SIGQUIT, SIGTERM, SIGINT,
                               SIGUSR1, SIGCHLD, SIGALRM};
    struct sigaction sa;
    sigset_t         block;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigemptyset(&block);
    for (size_t i = 0; i < fl_nelem(sigs); i++) {
        sigaction(sigs[i], &sa, NULL);
        sigaddset(&block, sigs[i]);
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGUSR2, SIG_IGN);
    sigprocmask(SIG_BLOCK, &block, waitmask);
    sigdelset(waitmask, SIGHUP);
    for (size_t i = 0; i < fl_nelem(sigs); i++)
        sigdelset(waitmask, sigs[i]);
}

/* ---- forking ---- */

static void child_after_fork(gen_t *g, proc_t *p)
{
    sigset_t none;
    int      fd = g->ls.fd[p->slot];
    pid_t    master = getppid();
    char     role[16];
    gen_t   *all[] = {&g_cur, &g_next, &g_old};

    /* the worker dies with the master (HAProxy mworker does the same
     * through its pipe; the parent-death signal needs no polling) */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != master)
        _exit(0);

    for (size_t i = 0; i < fl_nelem(all); i++) {
        for (int s = 0; s < all[i]->ls.n; s++) {
            if (all[i]->ls.fd[s] != fd && all[i]->ls.fd[s] != -1)
                close(all[i]->ls.fd[s]);
        }
    }

    sigemptyset(&none);
    signal(SIGHUP, SIG_DFL);
    signal(SIGQUIT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGUSR1, SIG_DFL);
    signal(SIGCHLD, SIG_DFL);
    signal(SIGALRM, SIG_DFL);
    sigprocmask(SIG_SETMASK, &none, NULL);

    snprintf(role, sizeof(role), "w%d", p->slot);
    fl_log_set_role(role);
    _exit(fl_worker_main(g->cf, p->slot, g->id, p->entry, fd));
}

static int spawn(gen_t *g, proc_t *p, int fresh)
{
    fl_shm_worker_t *w = &fl_shm->w[p->entry];
    pid_t            pid;

    if (fresh) {
        memset((void *)w, 0, sizeof(*w));
    } else {
        /* a respawn keeps the slot's counters; gauges start over */
        fl_shm_store(w->ready, 0);
        fl_shm_store(w->conns_http, 0);
        fl_shm_store(w->conns_ws, 0);
        fl_shm_store(w->lag_p50_us, 0);
        fl_shm_store(w->lag_p99_us, 0);
        fl_shm_store(w->lag_max_us, 0);
    }
    w->slot = p->slot;
    w->generation = g->id;
    w->state = FL_W_STARTING;
    w->started_ms = fl_wall_ms();

    pid = fork();
    if (pid == -1) {
        fl_log_errno(FL_LOG_ERROR, errno, "fork() of worker w%d failed",
                     p->slot);
        return FL_ERROR;
    }
    if (pid == 0)
        child_after_fork(g, p);

    p->pid = pid;
    p->started_ms = fl_now_ms();
    p->respawn_at = 0;
    w->pid = pid;
    fl_info("started worker w%d (pid %d, generation %u)", p->slot, (int)pid,
            g->id);
    return FL_OK;
}

static int gen_start(gen_t *g, fl_config_t *cf, fl_listeners_t *ls)
{
    int half = g_cur.active && g != &g_cur ? !g_cur.half : 0;

    memset(g, 0, sizeof(*g));
    g->half = half;
    g->id = ++gen_counter;
    g->n = cf->workers;
    g->cf = cf;
    g->ls = *ls;
    g->active = 1;
    for (int i = 0; i < g->n; i++) {
        g->proc[i].slot = i;
        g->proc[i].entry = half * FL_MAX_WORKERS + i;
        if (spawn(g, &g->proc[i], 1) != FL_OK)
            return FL_ERROR;
    }
    return FL_OK;
}

static void gen_signal(gen_t *g, int signo)
{
    for (int i = 0; g->active && i < g->n; i++) {
        if (g->proc[i].pid > 0 && kill(g->proc[i].pid, signo) == -1 &&
            errno != ESRCH)
            fl_log_errno(FL_LOG_WARN, errno, "kill(%d, %d) failed",
                         (int)g->proc[i].pid, signo);
    }
}

static int gen_alive(const gen_t *g)
{
    int n = 0;

    for (int i = 0; g->active && i < g->n; i++)
        n += g->proc[i].pid > 0;
    return n;
}

static int gen_ready(const gen_t *g)
{
    for (int i = 0; i < g->n; i++) {
        if (g->proc[i].pid <= 0 ||
            !fl_shm_load(fl_shm->w[g->proc[i].entry].ready))
            return 0;
    }
    return 1;
}

/* Forget a generation whose workers are all gone: free its config and
 * close the sockets no other generation uses. */
static void gen_release(gen_t *g)
{
    if (!g->active)
        return;
    for (int i = 0; i < g->n; i++)
        memset((void *)&fl_shm->w[g->proc[i].entry], 0,
               sizeof(fl_shm_worker_t));
    if (g != &g_cur)
        fl_listeners_close(&g->ls, g_cur.active ? &g_cur.ls : NULL);
    if (g->cf != g_cur.cf)
        fl_config_free(g->cf);
    memset(g, 0, sizeof(*g));
}

/* ---- reload ---- */

static void reload_begin(void)
{
    char           err[FL_CONF_ERRLEN];
    fl_config_t   *cf;
    fl_listeners_t ls;

    if (g_next.active || g_old.active) {
        fl_info("reload requested while a reload is in progress: queued");
        reload_pending = 1;
        return;
    }
    reload_pending = 0;
    fl_info("reloading configuration from \"%s\"", g_cur.cf->file);

    cf = fl_config_load(g_cur.cf->file, err, sizeof(err));
    if (cf == NULL) {
        fl_error("reload failed, keeping the running workers: %s", err);
        fl_shm_add(fl_shm->reloads_failed, 1);
        return;
    }
    if (strcmp(cf->pid_file, g_cur.cf->pid_file) != 0)
        fl_warn("pid_file cannot change on reload, keeping \"%s\"",
                g_cur.cf->pid_file);
    free(cf->pid_file);
    cf->pid_file = fl_strdup(g_cur.cf->pid_file);

    if (fl_listeners_open(&ls, cf, cf->workers, &g_cur.ls, err, sizeof(err)) !=
        FL_OK) {
        fl_error("reload failed, keeping the running workers: %s", err);
        fl_shm_add(fl_shm->reloads_failed, 1);
        fl_config_free(cf);
        return;
    }
    fl_log_set_level(cf->log.level);
    if (strcmp(cf->log.file, g_cur.cf->log.file) != 0 &&
        fl_log_open(cf->log.file, cf->log.level) != FL_OK)
        fl_log_errno(FL_LOG_ERROR, errno, "open() of log file \"%s\" failed",
                     cf->log.file);

    if (gen_start(&g_next, cf, &ls) != FL_OK) {
        gen_signal(&g_next, SIGKILL);
        fl_shm_add(fl_shm->reloads_failed, 1);
        return;
    }
    g_next.deadline = fl_now_ms() + cf->worker_ready_timeout_ms;
}

static void reload_abort(const char *why)
{
    fl_error("reload failed, keeping generation %u: %s", g_cur.id, why);
    gen_signal(&g_next, SIGKILL);
    fl_shm_add(fl_shm->reloads_failed, 1);
    /* the workers are reaped and the generation released in reap() */
    g_next.deadline = 0;
}

static void reload_check(void)
{
    if (!g_next.active || g_next.deadline == 0)
        return;
    if (gen_ready(&g_next)) {
        fl_info("generation %u ready, draining generation %u", g_next.id,
                g_cur.id);
        g_old = g_cur;
        g_cur = g_next;
        memset(&g_next, 0, sizeof(g_next));
        fl_shm_store(fl_shm->generation, g_cur.id);
        fl_shm_store(fl_shm->workers, g_cur.n);
        fl_shm_add(fl_shm->reloads, 1);
        /* sockets of the old generation that the new one did not take
         * over: the old workers accept what is queued, then close them */
        fl_listeners_close(&g_old.ls, &g_cur.ls);
        for (int i = 0; i < g_old.n; i++) {
            if (g_old.proc[i].pid > 0)
                fl_shm_store(fl_shm->w[g_old.proc[i].entry].state,
                             FL_W_DRAINING);
            g_old.proc[i].respawn_at = 0;
        }
        gen_signal(&g_old, SIGQUIT);
        g_old.deadline =
            fl_now_ms() + g_old.cf->shutdown_timeout_ms + KILL_GRACE_MS;
        if (gen_alive(&g_old) == 0)
            gen_release(&g_old);
    } else if (fl_now_ms() >= g_next.deadline) {
        reload_abort("new workers not ready within worker_ready_timeout");
    }
}

/* ---- deaths and respawns ---- */

static proc_t *find_proc(pid_t pid, gen_t **gp)
{
    gen_t *all[] = {&g_cur, &g_next, &g_old};

    for (size_t i = 0; i < fl_nelem(all); i++) {
        for (int s = 0; all[i]->active && s < all[i]->n; s++) {
            if (all[i]->proc[s].pid == pid) {
                *gp = all[i];
                return &all[i]->proc[s];
            }
        }
    }
    return NULL;
}

static void log_exit(proc_t *p, int status, int expected)
{
    if (WIFSIGNALED(status))
        fl_log(expected ? FL_LOG_INFO : FL_LOG_ERROR,
               "worker w%d (pid %d) exited on signal %d%s", p->slot,
               (int)p->pid, WTERMSIG(status),
               WCOREDUMP(status) ? " (core dumped)" : "");
    else
        fl_log(expected || WEXITSTATUS(status) == 0 ? FL_LOG_INFO
                                                    : FL_LOG_ERROR,
               "worker w%d (pid %d) exited with code %d", p->slot, (int)p->pid,
               WEXITSTATUS(status));
}

static void schedule_respawn(proc_t *p)
{
    fl_shm_worker_t *w = &fl_shm->w[p->entry];
    int64_t          now = fl_now_ms(), delay = BACKOFF_MIN_MS;

    if (now - p->started_ms >= STABLE_AFTER_MS)
        p->failures = 0;
    p->failures++;
    for (int i = 1; i < p->failures && delay < BACKOFF_MAX_MS; i++)
        delay *= 2;
    if (delay > BACKOFF_MAX_MS)
        delay = BACKOFF_MAX_MS;

    p->respawn_at = now + delay;
    fl_shm_add(w->restarts, 1);
    fl_shm_store(w->consecutive_failures, p->failures);
    fl_shm_store(w->next_start_ms, fl_wall_ms() + delay);
    if (p->failures >= FAILED_AFTER) {
        fl_shm_store(w->state, FL_W_FAILED);
        fl_error("worker w%d keeps dying (%d times in a row), next start in "
                 "%lld ms",
                 p->slot, p->failures, (long long)delay);
    } else {
        fl_shm_store(w->state, FL_W_BACKOFF);
        fl_info("worker w%d restarts in %lld ms", p->slot, (long long)delay);
    }
}

static void reap(void)
{
    int   status;
    pid_t pid;

    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        gen_t  *g;
        proc_t *p = find_proc(pid, &g);

        if (p == NULL)
            continue;
        fl_shm_store(fl_shm->w[p->entry].pid, 0);
        fl_shm_store(fl_shm->w[p->entry].ready, 0);
        fl_shm_store(fl_shm->w[p->entry].last_exit, status);
        fl_shm_store(fl_shm->w[p->entry].conns_http, 0);
        fl_shm_store(fl_shm->w[p->entry].conns_ws, 0);

        if (g == &g_cur && !stopping) {
            log_exit(p, status, 0);
            p->pid = 0;
            schedule_respawn(p);
        } else if (g == &g_next) {
            log_exit(p, status, g->deadline == 0);
            p->pid = 0;
            if (g->deadline != 0)
                reload_abort("a new worker died while starting");
        } else {
            log_exit(p, status, WIFEXITED(status) && WEXITSTATUS(status) == 0);
            p->pid = 0;
        }
        if (g != &g_cur && gen_alive(g) == 0)
            gen_release(g);
    }
}

static void respawn_due(void)
{
    int64_t now = fl_now_ms();

    for (int i = 0; i < g_cur.n && !stopping; i++) {
        proc_t *p = &g_cur.proc[i];
        if (p->pid == 0 && p->respawn_at && p->respawn_at <= now)
            spawn(&g_cur, p, 0);
    }
}

/* ---- timers ---- */

static void arm_timer(void)
{
    int64_t          now = fl_now_ms(), next = 0;
    struct itimerval it;

    for (int i = 0; i < g_cur.n; i++) {
        int64_t t = g_cur.proc[i].respawn_at;
        if (g_cur.proc[i].pid == 0 && t && (next == 0 || t < next))
            next = t;
    }
    if (g_next.active && g_next.deadline)
        next = (next == 0 || now + POLL_MS < next) ? now + POLL_MS : next;
    if (g_old.active && (next == 0 || g_old.deadline < next))
        next = g_old.deadline;
    if (stopping && (next == 0 || stop_deadline < next))
        next = stop_deadline;

    memset(&it, 0, sizeof(it));
    if (next) {
        int64_t d = next - now;
        if (d < 1)
            d = 1;
        it.it_value.tv_sec = d / 1000;
        it.it_value.tv_usec = (d % 1000) * 1000;
    }
    setitimer(ITIMER_REAL, &it, NULL);
}

static void deadlines(void)
{
    int64_t now = fl_now_ms();

    if (g_old.active && now >= g_old.deadline) {
        fl_warn("generation %u did not drain in time, killing it", g_old.id);
        gen_signal(&g_old, SIGKILL);
        g_old.deadline = now + 60000;
    }
    if (stopping && now >= stop_deadline) {
        fl_warn("workers did not stop in time, killing them");
        gen_signal(&g_cur, SIGKILL);
        gen_signal(&g_next, SIGKILL);
        gen_signal(&g_old, SIGKILL);
        stop_deadline = now + 60000;
    }
}

static void stop_begin(int how)
{
    int64_t timeout;

    if (stopping == SIGTERM || stopping == how)
        return;
    stopping = how;
    timeout = how == SIGQUIT ? g_cur.cf->shutdown_timeout_ms
                             : g_cur.cf->fast_shutdown_timeout_ms;
    fl_info("%s: stopping workers",
            how == SIGQUIT ? "graceful stop" : "fast stop");
    stop_deadline = fl_now_ms() + timeout + KILL_GRACE_MS;
    for (int i = 0; i < g_cur.n; i++) {
        g_cur.proc[i].respawn_at = 0;
        if (g_cur.proc[i].pid > 0)
            fl_shm_store(fl_shm->w[g_cur.proc[i].entry].state, FL_W_DRAINING);
    }
    gen_signal(&g_cur, how);
    gen_signal(&g_next, SIGKILL);
    gen_signal(&g_old, how);

    /* The node is going away: once the workers have accepted what is
     * queued and closed their copies, new connections must be refused
     * (a load balancer retries elsewhere at once), not queued on the
     * master's copy and reset when it exits. */
    fl_listeners_close(&g_cur.ls, NULL);
    fl_listeners_close(&g_next.ls, NULL);
    fl_listeners_close(&g_old.ls, NULL);
}

int fl_master_cycle(fl_config_t *cf, fl_listeners_t *ls)
{
    sigset_t waitmask;
    char     pid_file[4096];

    snprintf(pid_file, sizeof(pid_file), "%s", cf->pid_file);
    master_signals(&waitmask);
    fl_shm->master_pid = getpid();
    fl_shm->master_started_ms = fl_wall_ms();

    if (gen_start(&g_cur, cf, ls) != FL_OK) {
        gen_signal(&g_cur, SIGKILL);
        fl_pidfile_remove(pid_file);
        return 1;
    }
    fl_shm->generation = g_cur.id;
    fl_shm->workers = g_cur.n;
    fl_info("fleetd %s node %s listening on http://%s:%d, %d workers",
            FL_VERSION, cf->node_id, cf->listen_host, cf->listen_port,
            cf->workers);

    for (;;) {
        arm_timer();
        if (!(sig_reload | sig_quit | sig_term | sig_reopen | sig_child |
              sig_alarm))
            sigsuspend(&waitmask);

        if (sig_child) {
            sig_child = 0;
            reap();
        }
        if (sig_term) {
            sig_term = 0;
            stop_begin(SIGTERM);
        }
        if (sig_quit) {
            sig_quit = 0;
            stop_begin(SIGQUIT);
        }
        if (sig_reopen) {
            sig_reopen = 0;
            fl_info("reopening log file");
            fl_log_reopen();
            gen_signal(&g_cur, SIGUSR1);
            gen_signal(&g_old, SIGUSR1);
        }
        if (sig_reload) {
            sig_reload = 0;
            if (!stopping)
                reload_begin();
        }
        sig_alarm = 0;

        if (stopping) {
            if (gen_alive(&g_cur) + gen_alive(&g_next) + gen_alive(&g_old) == 0)
                break;
        } else {
            reload_check();
            respawn_due();
            if (reload_pending && !g_next.active && !g_old.active)
                reload_begin();
        }
        deadlines();
    }

    fl_info("all workers stopped, exiting");
    fl_pidfile_remove(pid_file);
    gen_release(&g_old);
    gen_release(&g_next);
    fl_listeners_close(&g_cur.ls, NULL);
    fl_config_free(g_cur.cf);
    return 0;
}
