/*
 * fl_db.c - the worker's pool of PostgreSQL connections (see fl_db.h).
 *
 * Each connection goes DOWN -> CONNECTING (PQconnectStartParams +
 * PQconnectPoll on the socket's readiness, bounded by
 * postgres.connect_timeout) -> SETUP (SET statement_timeout) -> READY, and
 * back to DOWN on any failure, reconnecting after a backoff (100 ms
 * doubling to 5 s). A READY connection runs one query at a time: when the
 * statement is not yet prepared on it, PQsendPrepare first and then
 * PQsendQueryPrepared, two round trips the first time and one after.
 *
 * The queue is one FIFO for the whole pool, so a slow query occupies one
 * connection and the others keep serving (test_api: a 2 s query in
 * flight, other requests answer in milliseconds). A connection lost with
 * a query on it fails that query (it may or may not have run: the API
 * reports an error, it does not retry a write it cannot see); queued
 * queries wait for the next ready connection, and fail when none is left
 * connecting or ready.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl_db.h"
#include "fl_log.h"
#include "fl_pgutil.h"

#define MAX_STMTS      128
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define DEADLINE_GRACE 5000 /* ms past statement_timeout: connection lost */
#define WAIT_CHECK_MS  100
#define ERRLEN         512

typedef struct {
    char *name;
    char *sql;
} stmt_t;

static stmt_t stmts[MAX_STMTS];
static int    nstmts;

typedef enum { C_DOWN, C_CONNECTING, C_SETUP, C_READY } cstate_t;

struct fl_db_q_s {
    fl_db_q_t *next, *prev;
    int        stmt;
    int        nparams;
    char     **params;
    fl_db_cb   cb;
    void      *ud;
    int64_t    queued_ms;
    int        cancelled;
};

typedef struct {
    fl_db_t       *db;
    int            id;
    PGconn        *pg;
    int            fd;
    struct event  *ev_rd, *ev_wr, *ev_retry, *ev_deadline;
    cstate_t       state;
    int64_t        backoff_ms;
    unsigned char *prepared; /* per statement id */
    fl_db_q_t     *q;        /* the query running, or NULL */
    int            preparing;
    PGresult      *res; /* the result to hand over */
    PGresult      *err; /* the first error result */
} conn_t;

struct fl_db_s {
    struct event_base *base;
    char              *conninfo;
    char               app_name[80];
    char               setup_sql[128];
    int64_t            connect_timeout_ms;
    int64_t            query_timeout_ms;
    int64_t            wait_ms;
    int                queue_max;
    conn_t            *conns;
    int                nconns;
    fl_db_q_t         *head, *tail;
    int                queued;
    int                running;
    struct event      *ev_wait;
    int                freeing;
    fl_db_state_cb     on_state;
    void              *ud;
    int                was_ready;
};

static void conn_start(conn_t *c);
static void conn_drop(conn_t *c, const char *why);
static void dispatch(fl_db_t *db);

/* ---- statements ---- */

int fl_db_stmt(const char *name, const char *sql)
{
    for (int i = 0; i < nstmts; i++) {
        if (strcmp(stmts[i].name, name) == 0)
            return i;
    }
    if (nstmts == MAX_STMTS) {
        fl_log(FL_LOG_CRIT, "fl_db_stmt(): more than %d statements", MAX_STMTS);
        abort();
    }
    stmts[nstmts].name = fl_strdup(name);
    stmts[nstmts].sql = fl_strdup(sql);
    return nstmts++;
}

/* ---- helpers ---- */

static struct event *ev_or_die(struct event *ev)
{
    if (ev == NULL) {
        fl_log(FL_LOG_CRIT, "event_new() for the postgres pool failed");
        abort();
    }
    return ev;
}

static void timer_ms(struct event *ev, int64_t ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

    evtimer_add(ev, &tv);
}

static void q_free(fl_db_q_t *q)
{
    for (int i = 0; i < q->nparams; i++)
        free(q->params[i]);
    free(q->params);
    free(q);
}

static void q_unlink(fl_db_t *db, fl_db_q_t *q)
{
    if (q->prev)
        q->prev->next = q->next;
    else
        db->head = q->next;
    if (q->next)
        q->next->prev = q->prev;
    else
        db->tail = q->prev;
    q->next = q->prev = NULL;
    db->queued--;
}

/* Hand a query its outcome and free it. */
static void q_finish(fl_db_q_t *q, const PGresult *res, const char *err,
                     const char *sqlstate)
{
    if (!q->cancelled && q->cb)
        q->cb(res, err, sqlstate ? sqlstate : "", q->ud);
    q_free(q);
}

static void fail_queued(fl_db_t *db, const char *why)
{
    while (db->head) {
        fl_db_q_t *q = db->head;

        q_unlink(db, q);
        q_finish(q, NULL, why, "");
    }
}

static int any_state(const fl_db_t *db, cstate_t st)
{
    for (int i = 0; i < db->nconns; i++) {
        if (db->conns[i].state == st)
            return 1;
    }
    return 0;
}

/* Tell the owner when the pool became ready or stopped being. */
static void state_changed(fl_db_t *db)
{
    int ready = any_state(db, C_READY);

    if (ready == db->was_ready || db->freeing)
        return;
    db->was_ready = ready;
    if (db->on_state)
        db->on_state(db, ready, db->ud);
}

/* ---- one connection ---- */

static void results_clear(conn_t *c)
{
    if (c->res)
        PQclear(c->res);
    if (c->err)
        PQclear(c->err);
    c->res = c->err = NULL;
}

static int flush_out(conn_t *c)
{
    int rc = PQflush(c->pg);

    if (rc < 0) {
        conn_drop(c, PQerrorMessage(c->pg));
        return FL_ERROR;
    }
    if (rc > 0)
        event_add(c->ev_wr, NULL);
    else
        event_del(c->ev_wr);
    return FL_OK;
}

/* Send the running query's next step: prepare, or execute. */
static void q_send(conn_t *c)
{
    fl_db_q_t *q = c->q;
    int        ok;

    results_clear(c);
    c->preparing = !c->prepared[q->stmt];
    if (c->preparing)
        ok = PQsendPrepare(c->pg, stmts[q->stmt].name, stmts[q->stmt].sql, 0,
                           NULL);
    else
        ok = PQsendQueryPrepared(c->pg, stmts[q->stmt].name, q->nparams,
                                 (const char *const *)q->params, NULL, NULL, 0);
    if (!ok) {
        conn_drop(c, PQerrorMessage(c->pg));
        return;
    }
    timer_ms(c->ev_deadline, c->db->query_timeout_ms + DEADLINE_GRACE);
    flush_out(c);
}

/* The server finished what was sent last (PQgetResult said NULL). */
static void step_done(conn_t *c)
{
    fl_db_t    *db = c->db;
    fl_db_q_t  *q = c->q;
    char        msg[ERRLEN];
    const char *st;

    evtimer_del(c->ev_deadline);
    if (c->state == C_SETUP) {
        if (c->err) {
            fl_pg_result_error(msg, sizeof(msg), c->err);
            conn_drop(c, msg);
            return;
        }
        results_clear(c);
        c->state = C_READY;
        c->backoff_ms = BACKOFF_MIN_MS;
        fl_debug("postgres pool connection %d ready", c->id);
        state_changed(db);
        dispatch(db);
        return;
    }
    if (q == NULL)
        return;
    if (c->preparing && c->err == NULL) {
        c->prepared[q->stmt] = 1;
        q_send(c); /* now execute it */
        return;
    }
    c->q = NULL;
    db->running--;
    if (c->err) {
        fl_pg_result_error(msg, sizeof(msg), c->err);
        st = PQresultErrorField(c->err, PG_DIAG_SQLSTATE);
        q_finish(q, NULL, msg, st);
    } else {
        q_finish(q, c->res, NULL, NULL);
    }
    results_clear(c);
    dispatch(db);
}

static void results_read(conn_t *c)
{
    PGresult *res;

    if (!PQconsumeInput(c->pg)) {
        conn_drop(c, PQerrorMessage(c->pg));
        return;
    }
    while (!PQisBusy(c->pg)) {
        res = PQgetResult(c->pg);
        if (res == NULL) {
            if (c->state == C_SETUP || c->q)
                step_done(c);
            return;
        }
        switch (PQresultStatus(res)) {
        case PGRES_TUPLES_OK:
        case PGRES_COMMAND_OK:
            if (c->res)
                PQclear(c->res);
            c->res = res;
            break;
        default:
            if (c->err == NULL)
                c->err = res;
            else
                PQclear(res);
        }
    }
}

static void io_close(conn_t *c)
{
    if (c->ev_rd)
        event_free(c->ev_rd);
    if (c->ev_wr)
        event_free(c->ev_wr);
    c->ev_rd = c->ev_wr = NULL;
    c->fd = -1;
}

static void on_io(evutil_socket_t fd, short what, void *arg);

/* Watch fd; PQsocket() may change while connecting. */
static void io_watch(conn_t *c, int fd)
{
    if (fd == c->fd && c->ev_rd)
        return;
    io_close(c);
    if (fd < 0)
        return;
    c->fd = fd;
    c->ev_rd =
        ev_or_die(event_new(c->db->base, fd, EV_READ | EV_PERSIST, on_io, c));
    c->ev_wr = ev_or_die(event_new(c->db->base, fd, EV_WRITE, on_io, c));
}

/*
 * Close the connection and reconnect after the backoff. The query on it
 * fails; when no connection is left ready or connecting, so do the
 * queued ones (they would wait for pool_wait for nothing).
 */
static void conn_drop(conn_t *c, const char *why)
{
    fl_db_t   *db = c->db;
    fl_db_q_t *q = c->q;
    char       msg[ERRLEN];

    fl_pg_one_line(msg, sizeof(msg), why);
    if (!db->freeing)
        fl_warn("postgres pool connection %d %s: %s; again in %" PRId64 " ms",
                c->id, c->state == C_CONNECTING ? "failed" : "lost", msg,
                c->backoff_ms);
    io_close(c);
    if (c->pg)
        PQfinish(c->pg);
    c->pg = NULL;
    results_clear(c);
    evtimer_del(c->ev_deadline);
    c->state = C_DOWN;
    memset(c->prepared, 0, (size_t)nstmts);
    c->q = NULL;
    if (!db->freeing) {
        timer_ms(c->ev_retry, c->backoff_ms);
        c->backoff_ms = fl_min(c->backoff_ms * 2, (int64_t)BACKOFF_MAX_MS);
    }
    if (q) {
        db->running--;
        q_finish(q, NULL, "connection to the database lost", "");
    }
    if (!db->freeing && !any_state(db, C_READY) && !any_state(db, C_SETUP))
        fail_queued(db, "no connection to the database");
    state_changed(db);
}

static void connect_poll(conn_t *c)
{
    switch (PQconnectPoll(c->pg)) {
    case PGRES_POLLING_READING:
        io_watch(c, PQsocket(c->pg));
        event_del(c->ev_wr);
        event_add(c->ev_rd, NULL);
        return;
    case PGRES_POLLING_WRITING:
        io_watch(c, PQsocket(c->pg));
        event_del(c->ev_rd);
        event_add(c->ev_wr, NULL);
        return;
    case PGRES_POLLING_OK: break;
    default: conn_drop(c, PQerrorMessage(c->pg)); return;
    }
    evtimer_del(c->ev_deadline);
    if (PQsetnonblocking(c->pg, 1) != 0) {
        conn_drop(c, PQerrorMessage(c->pg));
        return;
    }
    io_watch(c, PQsocket(c->pg));
    event_del(c->ev_wr);
    event_add(c->ev_rd, NULL);
    c->state = C_SETUP;
    results_clear(c);
    if (!PQsendQuery(c->pg, c->db->setup_sql)) {
        conn_drop(c, PQerrorMessage(c->pg));
        return;
    }
    timer_ms(c->ev_deadline, c->db->connect_timeout_ms);
    flush_out(c);
}

static void conn_start(conn_t *c)
{
    fl_db_t    *db = c->db;
    const char *kw[] = {"dbname", "fallback_application_name",
                        "client_encoding", NULL};
    const char *val[] = {db->conninfo, db->app_name, "UTF8", NULL};

    c->pg = PQconnectStartParams(kw, val, 1);
    if (c->pg == NULL) {
        fl_log(FL_LOG_CRIT, "PQconnectStartParams() failed: out of memory");
        abort();
    }
    c->state = C_CONNECTING;
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        conn_drop(c, PQerrorMessage(c->pg));
        return;
    }
    timer_ms(c->ev_deadline, db->connect_timeout_ms);
    io_watch(c, PQsocket(c->pg));
    event_add(c->ev_wr, NULL);
}

static void on_io(evutil_socket_t fd, short what, void *arg)
{
    conn_t *c = arg;

    (void)fd;
    if (c->state == C_CONNECTING) {
        connect_poll(c);
        return;
    }
    if (c->pg == NULL)
        return;
    if ((what & EV_WRITE) && flush_out(c) != FL_OK)
        return;
    if (what & EV_READ)
        results_read(c);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    conn_t *c = arg;

    (void)fd, (void)what;
    conn_drop(c, c->state == C_CONNECTING
                     ? "connect timed out"
                     : "no answer within postgres.query_timeout + 5 s");
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    conn_t *c = arg;

    (void)fd, (void)what;
    if (c->state == C_DOWN && !c->db->freeing)
        conn_start(c);
}

/* ---- the queue ---- */

static void dispatch(fl_db_t *db)
{
    for (int i = 0; i < db->nconns && db->head; i++) {
        conn_t    *c = &db->conns[i];
        fl_db_q_t *q;

        if (c->state != C_READY || c->q)
            continue;
        q = db->head;
        q_unlink(db, q);
        c->q = q;
        db->running++;
        q_send(c);
    }
    if (db->head && !evtimer_pending(db->ev_wait, NULL))
        timer_ms(db->ev_wait, WAIT_CHECK_MS);
}

/* Queries that waited longer than postgres.pool_wait give up. */
static void on_wait(evutil_socket_t fd, short what, void *arg)
{
    fl_db_t *db = arg;
    int64_t  now = fl_now_ms();

    (void)fd, (void)what;
    while (db->head && now - db->head->queued_ms >= db->wait_ms) {
        fl_db_q_t *q = db->head;

        q_unlink(db, q);
        q_finish(q, NULL,
                 "no database connection free within "
                 "postgres.pool_wait",
                 "");
    }
    if (db->head)
        timer_ms(db->ev_wait, WAIT_CHECK_MS);
}

/* ---- API ---- */

fl_db_t *fl_db_new(struct event_base *base, const fl_config_t *cf,
                   fl_db_state_cb on_state, void *ud)
{
    fl_db_t *db = fl_calloc(1, sizeof(*db));

    db->base = base;
    db->on_state = on_state;
    db->ud = ud;
    db->conninfo =
        fl_strdup(cf->postgres.conninfo ? cf->postgres.conninfo : "");
    snprintf(db->app_name, sizeof(db->app_name), "fleetd %s api",
             cf->node_id ? cf->node_id : "");
    db->connect_timeout_ms = cf->postgres.connect_timeout_ms;
    db->query_timeout_ms = cf->postgres.query_timeout_ms;
    db->wait_ms = cf->postgres.pool_wait_ms;
    db->queue_max = cf->postgres.pool_queue;
    snprintf(db->setup_sql, sizeof(db->setup_sql),
             "SET statement_timeout = %" PRId64 "; SET TimeZone = 'UTC'",
             db->query_timeout_ms);
    db->nconns = cf->postgres.pool_size;
    db->conns = fl_calloc((size_t)db->nconns, sizeof(conn_t));
    db->ev_wait = ev_or_die(evtimer_new(base, on_wait, db));
    for (int i = 0; i < db->nconns; i++) {
        conn_t *c = &db->conns[i];

        c->db = db;
        c->id = i;
        c->fd = -1;
        c->backoff_ms = BACKOFF_MIN_MS;
        c->prepared = fl_calloc(MAX_STMTS, 1);
        c->ev_retry = ev_or_die(evtimer_new(base, on_retry, c));
        c->ev_deadline = ev_or_die(evtimer_new(base, on_deadline, c));
        /* connect from the loop, once every module registered its
         * statements */
        timer_ms(c->ev_retry, 0);
    }
    return db;
}

int fl_db_ready(const fl_db_t *db)
{
    return any_state(db, C_READY);
}

int fl_db_busy(const fl_db_t *db)
{
    return db->queued + db->running;
}

int fl_db_query(fl_db_t *db, int stmt, int nparams, const char *const *params,
                fl_db_cb cb, void *ud, fl_db_q_t **handle)
{
    fl_db_q_t *q;

    if (db->freeing || !fl_db_ready(db))
        return FL_ERROR;
    if (db->queued >= db->queue_max)
        return FL_AGAIN;
    q = fl_calloc(1, sizeof(*q));
    q->stmt = stmt;
    q->nparams = nparams;
    q->params = fl_calloc((size_t)nparams + 1, sizeof(char *));
    for (int i = 0; i < nparams; i++)
        q->params[i] = params[i] ? fl_strdup(params[i]) : NULL;
    q->cb = cb;
    q->ud = ud;
    q->queued_ms = fl_now_ms();
    q->prev = db->tail;
    if (db->tail)
        db->tail->next = q;
    else
        db->head = q;
    db->tail = q;
    db->queued++;
    if (handle)
        *handle = q;
    dispatch(db);
    return FL_OK;
}

void fl_db_cancel(fl_db_t *db, fl_db_q_t *q)
{
    for (int i = 0; i < db->nconns; i++) {
        if (db->conns[i].q == q) {
            q->cancelled = 1; /* runs to its end, result dropped */
            return;
        }
    }
    q_unlink(db, q);
    q_free(q);
}

void fl_db_free(fl_db_t *db)
{
    if (db == NULL)
        return;
    db->freeing = 1;
    for (int i = 0; i < db->nconns; i++) {
        conn_t *c = &db->conns[i];

        if (c->q) {
            fl_db_q_t *q = c->q;

            c->q = NULL;
            db->running--;
            q_finish(q, NULL, "shutting down", "");
        }
        conn_drop(c, "closing");
        event_free(c->ev_retry);
        event_free(c->ev_deadline);
        free(c->prepared);
    }
    fail_queued(db, "shutting down");
    event_free(db->ev_wait);
    free(db->conns);
    free(db->conninfo);
    free(db);
}
