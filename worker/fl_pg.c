/*
 * fl_pg.c - the worker's asynchronous PostgreSQL connection (see fl_pg.h).
 *
 * libpq in non-blocking mode, driven by libevent events on PQsocket():
 * PQconnectStartParams + PQconnectPoll to connect, PQsendQuery for every
 * query, PQputCopyData for COPY, PQflush on write readiness and
 * PQconsumeInput / PQisBusy / PQgetResult on read readiness. Nothing here
 * waits on the server (no PQexec, no PQconnectdb, no PQgetResult while
 * PQisBusy). One caveat that libpq does not let us avoid: a host name in
 * the conninfo is resolved with a blocking getaddrinfo() inside
 * PQconnectPoll; use an address (host=127.0.0.1 or hostaddr=) or a socket
 * directory when that matters.
 *
 * A connection moves through these states:
 *   DOWN        no connection; ev_retry reconnects after the backoff
 *               (100 ms doubling to 5 s)
 *   CONNECTING  PQconnectPoll() steps on read / write readiness of a
 *               socket that may change between steps; ev_deadline ends
 *               it after postgres.connect_timeout
 *   SETUP       SET synchronous_commit, the migrations (fl_schema.h,
 * worker/sql) in one transaction under an advisory lock, partition upkeep;
 * nothing is reported up before it ends READY       on_state(1) was called;
 * writes are accepted In SETUP and READY exactly one query string (an op) is in
 * flight at a time; ev_deadline bounds it (QUERY_TIMEOUT_MS), after which the
 * connection is dropped. Partition upkeep (ev_upkeep, every
 * min(partition_interval / 4, 1 h)) runs between writes, never during
 * one: when it falls due during a write it runs right after it, before
 * the next write starts.
 *
 * A write. The fast path is one query string and one round trip:
 *
 *   BEGIN;
 *   COPY telemetry (ts, value, value_bool, device_id, metric, value_text,
 *                   unit, src) FROM STDIN (FORMAT binary);
 *                                         <- the batch, in 64 KiB chunks
 *   COMMIT
 *
 * COPY straight into the partitioned table: tuple routing puts every row
 * into its partition, the primary key refuses a row that is already
 * stored. Nearly every batch is new rows in partitions that upkeep made,
 * and for those this is the whole write. It fails on two things only:
 *   - 23505 unique_violation: a key of the batch is stored already, or
 *     twice in the batch. A batch written again after a crash, a claim or
 *     a lost COMMIT answer; a device that sent the same metric and ts
 *     twice (a resend, or two readings with one timestamp);
 *   - 23514 without a constraint name (missing_partition()): a row
 *     outside the partitions that upkeep made, see below.
 * Then the same batch (the same bytes: the COPY rows have the telemetry
 * table's columns, so one buffer serves both paths) is written again
 * through the staging table, in a new transaction (OP_WRITE_STAGE):
 *
 *   ROLLBACK;                               <- ends the failed fast path
 *   BEGIN; [CREATE TEMP TABLE IF NOT EXISTS fleetd_staging3 ...;]
 *   COPY fleetd_staging3 FROM STDIN (FORMAT binary);  <- the batch again
 *   SAVEPOINT fl_w;
 *   INSERT INTO telemetry SELECT DISTINCT ON (key) .. ORDER BY key,
 *     src DESC ON CONFLICT DO NOTHING;      <- new keys, newest version
 *   UPDATE telemetry .. FROM (the same) WHERE stored src < src AND the
 *     value differs;                        <- a later message's value
 *   SELECT count(*) .. staged rows whose key now holds another message's
 *     other value;                          <- lost
 *   COMMIT
 *
 * Of two messages with one key, the one later in the stream (greater
 * src, see fl_copy.h) keeps it, whichever commits first; an entry written
 * again (equal src) or a repeat of the same value changes nothing. Each
 * statement takes its own snapshot (READ COMMITTED), so inserted and
 * updated are exact even against a concurrent writer; rows staged - the
 * three counts are the duplicates (fl_pg_counts_t). The path creates
 * missing partitions too. The
 * ROLLBACK rides in front of the new transaction in the same query string
 * (one round trip less); it is left out when the failed string left no
 * transaction open. Why falling back is safe: the fast path's transaction
 * is rolled back whole, so it stored nothing, and the caller acknowledges
 * nothing before the write's callback, which runs once, with the result
 * of the path that ended the write. A fast path that fails costs only
 * time: one round trip and the batch sent twice. Any other error of the
 * fast path is the write's result as below (a CHECK violation, 23514 with
 * a constraint name, is the rows' fault: the staging path would refuse
 * them too).
 *
 * The staging table (ON COMMIT DELETE ROWS) is created by the first
 * fallback of a connection. Its name changes with its columns
 * (fleetd_staging: ts in epoch ms; fleetd_staging2: no src), so that a
 * session that somehow kept an older table (a connection pooler handing on
 * a session of an older fleetd) cannot COPY the new rows into the old
 * columns.
 *
 * Concurrent writers of overlapping rows: a batch redelivered after
 * claim_idle while its first consumer is still alive, so two workers write
 * the same keys at the same moment. A COPY that meets a key that another
 * transaction inserted and has not committed waits for it; when that one
 * commits, the COPY fails with 23505 and the batch takes the slow path.
 * Two fast paths insert in batch order, so each can wait for a key the
 * other holds: PostgreSQL breaks the cycle after deadlock_timeout by
 * failing one with 40P01. Class 40 (deadlock, serialization failure) is
 * FL_PG_DOWN, not FL_PG_REJECTED: the caller keeps the batch and writes it
 * again after its backoff, and that write finds the other's rows
 * committed (23505, slow path). The slow path's ORDER BY the key makes
 * slow-path writers take their index locks in the same order, so they
 * wait for each other instead of deadlocking; a fast path against a slow
 * one can still deadlock, with the same outcome. The batch's callback
 * runs after the COMMIT's answer: the caller acknowledges the stream
 * entries only then (see synchronous_commit in the README).
 *
 * Missing partition. There is no DEFAULT partition: a row outside the
 * partitions that upkeep made (late data from a device that was offline,
 * a clock ahead) fails the fast path's COPY and then the staging path's
 * INSERT with 23514 "no partition of relation found for row". The write
 * then rolls back to the savepoint, creates the partitions that the
 * staged rows need (fleetd_partition_ensure: only buckets not wholly older
 * than retention_days; rows of older buckets are counted, logged and not
 * stored - retention would drop them at the next upkeep anyway), and runs
 * the statements again, in the same transaction (OP_WRITE_RETRY). A second
 * 23514 is FL_PG_REJECTED. Why not a DEFAULT partition: rows that land in
 * it are never dropped by retention, and once it holds rows every new
 * partition must scan it under an ACCESS EXCLUSIVE lock (and cannot be
 * created at all if the default holds rows of its range).
 *
 * Errors (but the two that send a fast path to the staging path):
 * SQLSTATE classes 22 (data exception), 23 (integrity) and 54 (program
 * limit) are FL_PG_REJECTED, the rows themselves are refused; anything
 * else, class 40 included, is FL_PG_DOWN (retry later). A lost
 * connection, a query timeout, class 08 (connection), 57P (operator
 * intervention) and XX (internal) also drop the connection and reconnect.
 *
 * on_state(pg, 0) runs when a connection that was up is lost, and also
 * when the very first attempt fails (so the owner can tell "down" from
 * "not connected yet"); never twice in a row. No callback runs inside
 * fl_pg_new() or fl_pg_write(); fl_pg_free() calls the write callback of
 * a write in flight (FL_PG_DOWN) before it returns. Callbacks may call any
 * fl_pg function, fl_pg_free() included: the free is then finished from
 * ev_later once this file's frames are off the stack (nest).
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "fl_log.h"
#include "fl_pg.h"
#include "fl_pgutil.h"
#include "fl_schema.h"

#define BACKOFF_MIN_MS   100
#define BACKOFF_MAX_MS   5000
#define QUERY_TIMEOUT_MS 60000
#ifndef UPKEEP_MAX_MS
#define UPKEEP_MAX_MS 3600000 /* upkeep at least hourly (tests lower it) */
#endif
#define UPKEEP_RETRY_MS 60000 /* after a failed upkeep */
#define COPY_CHUNK      65536
#define ERRLEN          512
#define MAX_TUPLES      4 /* tuple results kept per op */

/* the columns of a COPY row (fl_pg_batch_add, fl_copy.c) */
#define COPY_COLUMNS FL_COPY_COLUMNS
#define STAGING      "fleetd_staging3" /* see "The staging table" above */
#define SQL_ROLLBACK "ROLLBACK;\n"

typedef enum { S_DOWN, S_CONNECTING, S_SETUP, S_READY } pg_state_t;

typedef enum {
    OP_NONE,
    OP_MIGRATE_BEGIN,  /* SET; BEGIN; lock; migrations table; versions */
    OP_MIGRATE_APPLY,  /* one migration + its fleetd_migrations row */
    OP_MIGRATE_COMMIT, /* COMMIT */
    OP_UPKEEP,         /* fleetd_partition_upkeep() */
    OP_WRITE,          /* BEGIN; COPY telemetry; COMMIT (the fast path) */
    OP_WRITE_STAGE,    /* [ROLLBACK;] BEGIN; COPY staging; SAVEPOINT;
                          INSERT; COMMIT */
    OP_WRITE_RETRY,    /* ROLLBACK TO SAVEPOINT; ensure; INSERT; COMMIT */
    OP_ROLLBACK,       /* after a failed write */
} pg_op_t;

struct fl_pg_s {
    struct event_base *base;
    fl_pg_state_cb     on_state;
    void              *ud;

    char   *conninfo;
    char    fallback_name[80]; /* application_name unless conninfo sets one */
    int64_t connect_timeout_ms;
    int64_t iv_ms; /* postgres.partition_interval */
    int     sync_commit;
    int     retention_days;
    int64_t upkeep_every_ms;
    char    addr[160]; /* "host:port/db" for the log */

    /* SQL built once from the config */
    char *sql_setup;
    char *sql_upkeep;
    char *sql_write;        /* the fast path */
    char *sql_stage;        /* staging path, the staging table exists */
    char *sql_stage_create; /* creates it first */
    char *sql_retry;

    PGconn       *conn;
    int           fd;    /* the socket ev_rd / ev_wr watch, -1 none */
    struct event *ev_rd; /* EV_READ | EV_PERSIST */
    struct event *ev_wr; /* EV_WRITE, added while output is pending */
    pg_state_t    state;
    int           reported; /* last on_state value, -1 none yet */
    int64_t       backoff_ms;
    unsigned      gen; /* connection generation: changes on every drop */
    int           staging_ready;
    int           mode_logged;
    int           schema_version; /* highest applied, for the log */

    struct event *ev_retry;
    struct event *ev_deadline;
    struct event *ev_upkeep;
    struct event *ev_later;
    int           upkeep_due;
    int64_t       upkeep_start_us;

    /* the op in flight */
    pg_op_t   op;
    int       mig_next; /* OP_MIGRATE_APPLY: index into fl_migrations */
    PGresult *err;      /* first error result of the op */
    PGresult *tuples[MAX_TUPLES];
    int       ntuples;
    int       savepoint; /* the SAVEPOINT ran: the INSERT was reached */
    long long inserted;  /* rows the COPY (fast path) or INSERT stored */
    long long updated;   /* rows the staging path's UPDATE changed */
    int       copying;   /* COPY IN started */
    int       copy_done; /* all data and the end sent and flushed */
    int       copy_end;  /* PQputCopyEnd accepted */
    size_t    copy_off;

    /* the write (wb != NULL from fl_pg_write until its callback) */
    fl_pg_batch_t *wb;
    fl_pg_write_cb wcb;
    void          *wud;
    int            wstarted;
    int64_t        wstart_us;
    fl_pg_result_t wres; /* decided result while ROLLBACK runs */
    char           werr[ERRLEN];

    int nest;           /* frames of this file on the stack */
    int free_requested; /* fl_pg_free() called */
};

static void conn_start(fl_pg_t *pg);
static void conn_drop(fl_pg_t *pg, const char *why);
static void pg_next(fl_pg_t *pg);
static void results_read(fl_pg_t *pg);
static void pg_destroy(fl_pg_t *pg);

/* ---- helpers ---- */

static struct event *event_or_die(struct event *ev)
{
    if (ev == NULL) {
        fl_log(FL_LOG_CRIT, "event_new() for postgres failed");
        abort();
    }
    return ev;
}

static void timer_add(struct event *ev, int64_t ms)
{
    struct timeval tv;

    if (ms < 0)
        ms = 0;
    tv.tv_sec = ms / 1000;
    tv.tv_usec = (ms % 1000) * 1000;
    evtimer_add(ev, &tv);
}

/* printf into a fresh allocation the caller frees. */
static char *str_printf(const char *fmt, ...) fl_printf(1, 2);

static char *str_printf(const char *fmt, ...)
{
    va_list ap;
    char   *s;
    int     n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    s = fl_alloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

/* 23514 without a constraint name, on telemetry: no partition for a row
 * (a CHECK violation names its constraint). */
static int missing_partition(const PGresult *res)
{
    const char *table = PQresultErrorField(res, PG_DIAG_TABLE_NAME);

    return fl_pg_sqlstate_is(res, "23514") &&
           PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME) == NULL &&
           table != NULL && strcmp(table, "telemetry") == 0;
}

/* FL_PG_REJECTED when the rows themselves are refused; *reconnect set
 * when the error says the session is no good. Class 40 (40P01 deadlock,
 * 40001 serialization failure) is FL_PG_DOWN without a reconnect: the
 * same rows succeed when written again (see "Concurrent writers"). */
static fl_pg_result_t classify(const PGresult *res, int *reconnect)
{
    *reconnect = 0;
    if (fl_pg_sqlstate_is(res, "22") || fl_pg_sqlstate_is(res, "23") ||
        fl_pg_sqlstate_is(res, "54"))
        return FL_PG_REJECTED;
    if (PQresultErrorField(res, PG_DIAG_SQLSTATE) == NULL ||
        fl_pg_sqlstate_is(res, "08") || fl_pg_sqlstate_is(res, "57P") ||
        fl_pg_sqlstate_is(res, "XX"))
        *reconnect = 1;
    return FL_PG_DOWN;
}

static void results_clear(fl_pg_t *pg)
{
    if (pg->err) {
        PQclear(pg->err);
        pg->err = NULL;
    }
    for (int i = 0; i < pg->ntuples; i++)
        PQclear(pg->tuples[i]);
    pg->ntuples = 0;
}

/* ---- events ---- */

static void want_write(fl_pg_t *pg)
{
    if (pg->ev_wr)
        event_add(pg->ev_wr, NULL);
}

/* Flush libpq's output; FL_OK all sent, FL_AGAIN waiting for write
 * readiness, FL_ERROR the connection failed (already dropped). */
static int out_flush(fl_pg_t *pg)
{
    int rc = PQflush(pg->conn);

    if (rc < 0) {
        conn_drop(pg, PQerrorMessage(pg->conn));
        return FL_ERROR;
    }
    if (rc > 0) {
        want_write(pg);
        return FL_AGAIN;
    }
    event_del(pg->ev_wr);
    return FL_OK;
}

/* ---- COPY ---- */

/* Send the batch from copy_off on, then the end of the COPY, as far as
 * the socket takes it; on write readiness again. When all is sent, read
 * the results that follow. copy_off counts in fl_copy_header, the batch's
 * rows, fl_copy_trailer, one after the other: the rows hold no header or
 * trailer (fl_copy.h), and the batch's evbuffer is only peeked at, so it
 * can be sent again by the staging path. */
static void copy_pump(fl_pg_t *pg)
{
    struct evbuffer      *buf = pg->wb->copy;
    size_t                hdr = sizeof(fl_copy_header);
    size_t                end = hdr + evbuffer_get_length(buf); /* rows' */
    size_t                total = end + sizeof(fl_copy_trailer);
    struct evbuffer_ptr   pos;
    struct evbuffer_iovec v;
    const void           *p;
    size_t                n;
    int                   rc;

    for (;;) {
        rc = out_flush(pg);
        if (rc != FL_OK)
            return;
        if (pg->copy_off < total) {
            if (pg->copy_off < hdr) {
                p = fl_copy_header + pg->copy_off;
                n = hdr - pg->copy_off;
            } else if (pg->copy_off >= end) {
                p = fl_copy_trailer + (pg->copy_off - end);
                n = total - pg->copy_off;
            } else {
                if (evbuffer_ptr_set(buf, &pos, pg->copy_off - hdr,
                                     EVBUFFER_PTR_SET) != 0 ||
                    evbuffer_peek(buf, -1, &pos, &v, 1) < 1) {
                    conn_drop(pg, "evbuffer_peek() of the batch failed");
                    return;
                }
                p = v.iov_base;
                n = fl_min(v.iov_len, (size_t)COPY_CHUNK);
                n = fl_min(n, end - pg->copy_off);
            }
            rc = PQputCopyData(pg->conn, p, (int)n);
            if (rc == 0) {
                want_write(pg);
                return;
            }
            if (rc < 0)
                break; /* the COPY ended early: the results say why */
            pg->copy_off += n;
            continue;
        }
        if (!pg->copy_end) {
            rc = PQputCopyEnd(pg->conn, NULL);
            if (rc == 0) {
                want_write(pg);
                return;
            }
            if (rc < 0)
                break;
            pg->copy_end = 1;
            continue;
        }
        break;
    }
    if (PQstatus(pg->conn) != CONNECTION_OK) {
        conn_drop(pg, PQerrorMessage(pg->conn));
        return;
    }
    pg->copy_done = 1;
    results_read(pg);
}

/* ---- queries ---- */

static void deadline_arm(fl_pg_t *pg, int64_t ms)
{
    timer_add(pg->ev_deadline, ms);
}

/* Send sql as the op in flight. FL_ERROR: the connection was dropped. */
static int op_send(fl_pg_t *pg, pg_op_t op, const char *sql)
{
    results_clear(pg);
    pg->savepoint = 0;
    pg->inserted = -1;
    pg->updated = 0;
    pg->copying = pg->copy_done = pg->copy_end = 0;
    pg->copy_off = 0;
    if (!PQsendQuery(pg->conn, sql)) {
        conn_drop(pg, PQerrorMessage(pg->conn));
        return FL_ERROR;
    }
    pg->op = op;
    deadline_arm(pg, QUERY_TIMEOUT_MS);
    if (out_flush(pg) == FL_ERROR)
        return FL_ERROR;
    return FL_OK;
}

/* ---- setup: migrations, upkeep ---- */

static void setup_failed(fl_pg_t *pg, const char *what)
{
    char msg[ERRLEN];

    if (pg->err)
        fl_pg_result_error(msg, sizeof(msg), pg->err);
    else
        fl_pg_one_line(msg, sizeof(msg), PQerrorMessage(pg->conn));
    fl_error("%s on postgres %s failed: %s", what, pg->addr, msg);
    conn_drop(pg, NULL);
}

/* Send the next migration that the database lacks, or the COMMIT. */
static void migrate_next(fl_pg_t *pg)
{
    const fl_migration_t *m;
    char                 *sql;

    while (pg->mig_next < fl_nmigrations) {
        m = &fl_migrations[pg->mig_next];
        if (m->version <= pg->schema_version) {
            pg->mig_next++;
            continue;
        }
        fl_info("postgres %s: applying migration %d (%s)", pg->addr, m->version,
                m->name);
        sql = str_printf("%s;\nINSERT INTO fleetd_migrations (version, name) "
                         "VALUES (%d, '%s')",
                         m->sql, m->version, m->name);
        op_send(pg, OP_MIGRATE_APPLY, sql);
        free(sql);
        return;
    }
    op_send(pg, OP_MIGRATE_COMMIT, "COMMIT");
}

/* The versions already applied: the last tuple result of the setup. */
static void migrate_begin_done(fl_pg_t *pg)
{
    const PGresult *res;
    int             known = fl_migrations[fl_nmigrations - 1].version;
    int             v;

    if (pg->err || pg->ntuples == 0) {
        setup_failed(pg, "reading fleetd_migrations");
        return;
    }
    res = pg->tuples[pg->ntuples - 1];
    pg->schema_version = 0;
    for (int i = 0; i < PQntuples(res); i++) {
        v = atoi(PQgetvalue(res, i, 0));
        if (v > pg->schema_version)
            pg->schema_version = v;
    }
    if (pg->schema_version > known)
        fl_warn("postgres %s: schema version %d is newer than this fleetd "
                "(%d); carrying on",
                pg->addr, pg->schema_version, known);
    pg->mig_next = 0;
    migrate_next(pg);
}

static void upkeep_start(fl_pg_t *pg)
{
    pg->upkeep_due = 0;
    pg->upkeep_start_us = fl_now_us();
    evtimer_del(pg->ev_upkeep);
    op_send(pg, OP_UPKEEP, pg->sql_upkeep);
}

/* Log what upkeep did; arm the next run. */
static void upkeep_done(fl_pg_t *pg)
{
    const PGresult *res;
    const char     *action, *item;
    char            msg[ERRLEN];
    int64_t         retry = fl_min(pg->upkeep_every_ms, UPKEEP_RETRY_MS);

    if (pg->err) {
        fl_pg_result_error(msg, sizeof(msg), pg->err);
        fl_error("partition upkeep on postgres %s failed: %s; retrying in "
                 "%" PRId64 " s",
                 pg->addr, msg, retry / 1000);
        timer_add(pg->ev_upkeep, retry);
        return;
    }
    timer_add(pg->ev_upkeep, pg->upkeep_every_ms);
    fl_debug("postgres %s: partition upkeep done in %" PRId64 " us", pg->addr,
             fl_now_us() - pg->upkeep_start_us);
    if (pg->ntuples == 0)
        return;
    res = pg->tuples[pg->ntuples - 1];
    for (int i = 0; i < PQntuples(res); i++) {
        action = PQgetvalue(res, i, 0);
        item = PQgetvalue(res, i, 1);
        if (strcmp(action, "mode") == 0) {
            if (!pg->mode_logged)
                fl_info("postgres %s: telemetry is %s", pg->addr,
                        strcmp(item, "native") == 0
                            ? "partitioned natively by time"
                            : "a TimescaleDB hypertable");
            pg->mode_logged = 1;
        } else if (strcmp(action, "created") == 0) {
            fl_info("postgres %s: created partition %s", pg->addr, item);
        } else {
            fl_info("postgres %s: dropped %s (older than retention_days %d)",
                    pg->addr, item, pg->retention_days);
        }
    }
}

/* ---- writes ---- */

/*
 * Send sql (a write's query string) for op, with the batch's devices
 * registered right after its BEGIN when it has any (auto-registration:
 * the rows and the registry entries of their devices commit together).
 */
static void write_send(fl_pg_t *pg, pg_op_t op, const char *sql)
{
    const char *begin = strstr(sql, "BEGIN;\n");
    char       *s;

    if (pg->wb->devices_len == 0 || begin == NULL) {
        op_send(pg, op, sql);
        return;
    }
    begin += strlen("BEGIN;\n");
    s = str_printf("%.*sINSERT INTO devices (id, auto) VALUES %s ON CONFLICT "
                   "DO NOTHING;\n%s",
                   (int)(begin - sql), sql, pg->wb->devices, begin);
    op_send(pg, op, s);
    free(s);
}

static void write_start(fl_pg_t *pg)
{
    pg->wstarted = 1;
    pg->wstart_us = fl_now_us();
    write_send(pg, OP_WRITE, pg->sql_write);
}

/* Hand the result to the write's owner. The connection is idle (or gone)
 * when this runs; pending upkeep starts before the callback, so that a
 * callback that writes again queues behind it. */
static void write_finish(fl_pg_t *pg, fl_pg_result_t res, const char *err,
                         const fl_pg_counts_t *counts)
{
    fl_pg_write_cb cb = pg->wcb;
    void          *ud = pg->wud;
    char           msg[ERRLEN];

    msg[0] = '\0';
    if (err)
        snprintf(msg, sizeof(msg), "%s", err);
    pg->wb = NULL;
    pg->wcb = NULL;
    pg->wud = NULL;
    pg->wstarted = 0;
    if (pg->op == OP_NONE && pg->state == S_READY && !pg->free_requested)
        pg_next(pg);
    if (cb) {
        pg->nest++;
        cb(pg, res, err ? msg : NULL, res == FL_PG_OK ? counts : NULL, ud);
        pg->nest--;
    }
}

/* A write failed with pg->err; roll back if a transaction is open, then
 * report (from rollback_done). */
static void write_failed(fl_pg_t *pg, fl_pg_result_t res)
{
    int reconnect = 0;
    int tx;

    fl_pg_result_error(pg->werr, sizeof(pg->werr), pg->err);
    if (res != FL_PG_REJECTED)
        res = classify(pg->err, &reconnect);
    pg->wres = res;
    if (pg->op != OP_WRITE)
        pg->staging_ready = 0; /* its CREATE may have been rolled back */
    fl_error("write of %zu rows to postgres %s %s: %s", pg->wb->rows, pg->addr,
             res == FL_PG_REJECTED ? "refused" : "failed", pg->werr);
    if (reconnect) {
        conn_drop(pg, pg->werr);
        return;
    }
    tx = PQtransactionStatus(pg->conn);
    if (tx == PQTRANS_INERROR || tx == PQTRANS_INTRANS) {
        op_send(pg, OP_ROLLBACK, "ROLLBACK");
        return;
    }
    pg->op = OP_NONE;
    write_finish(pg, res, pg->werr, NULL);
}

/* The fast path failed with pg->err, 23505 or a missing partition: write
 * the same batch through the staging table, in a new transaction whose
 * query string starts with the ROLLBACK of the failed one. */
static void stage_start(fl_pg_t *pg)
{
    const char *sql = pg->staging_ready ? pg->sql_stage : pg->sql_stage_create;
    char        msg[ERRLEN];

    switch (PQtransactionStatus(pg->conn)) {
    case PQTRANS_INERROR:
    case PQTRANS_INTRANS: break;
    case PQTRANS_IDLE: sql += sizeof(SQL_ROLLBACK) - 1; break;
    default:
        /* no answer to go by: the session is in an unknown state */
        fl_pg_result_error(msg, sizeof(msg), pg->err);
        conn_drop(pg, msg);
        return;
    }
    if (fl_pg_sqlstate_is(pg->err, "23505")) {
        fl_pg_result_error(msg, sizeof(msg), pg->err);
        fl_info("postgres %s: a batch of %zu rows holds keys that are "
                "stored already or repeated (%s); writing it through the "
                "staging table",
                pg->addr, pg->wb->rows, msg);
    } else {
        fl_debug("postgres %s: a row of a batch of %zu has no partition; "
                 "writing it again through the staging table",
                 pg->addr, pg->wb->rows);
    }
    write_send(pg, OP_WRITE_STAGE, sql);
}

static void write_done(fl_pg_t *pg)
{
    int64_t        us = fl_now_us() - pg->wstart_us;
    pg_op_t        op = pg->op;
    fl_pg_counts_t counts;
    size_t         used;

    if (pg->err) {
        if (op == OP_WRITE && (fl_pg_sqlstate_is(pg->err, "23505") ||
                               missing_partition(pg->err))) {
            stage_start(pg);
            return;
        }
        if (op == OP_WRITE_STAGE && pg->savepoint &&
            missing_partition(pg->err)) {
            op_send(pg, OP_WRITE_RETRY, pg->sql_retry);
            return;
        }
        write_failed(pg, op == OP_WRITE_RETRY && missing_partition(pg->err)
                             ? FL_PG_REJECTED
                             : FL_PG_DOWN);
        return;
    }
    memset(&counts, 0, sizeof(counts));
    counts.inserted = pg->inserted > 0 ? (size_t)pg->inserted : 0;
    if (op != OP_WRITE) {
        /* the last result is the count of lost rows (upsert_sql) */
        int lost_at = pg->ntuples - 1;

        pg->staging_ready = 1;
        counts.updated = pg->updated > 0 ? (size_t)pg->updated : 0;
        if (lost_at >= 0 && PQntuples(pg->tuples[lost_at]) == 1)
            counts.lost = (size_t)atoll(PQgetvalue(pg->tuples[lost_at], 0, 0));
    }
    if (op == OP_WRITE_RETRY && pg->ntuples >= 3) {
        const char *created = PQgetvalue(pg->tuples[0], 0, 0);
        long long   skipped = atoll(PQgetvalue(pg->tuples[1], 0, 0));

        if (created && *created)
            fl_info("postgres %s: created partition(s) %s for rows outside "
                    "the prepared range",
                    pg->addr, created);
        if (skipped > 0) {
            counts.expired = (size_t)skipped;
            fl_warn("postgres %s: %lld of %zu rows not stored: older than "
                    "postgres.retention_days (%d) when written",
                    pg->addr, skipped, pg->wb->rows, pg->retention_days);
        }
    }
    used = counts.inserted + counts.updated + counts.lost + counts.expired;
    counts.duplicates = pg->wb->rows > used ? pg->wb->rows - used : 0;
    fl_debug("postgres %s: batch of %zu rows committed (%zu new, %zu "
             "updated, %zu lost, %zu duplicate, %zu expired%s) in %" PRId64
             " us",
             pg->addr, pg->wb->rows, counts.inserted, counts.updated,
             counts.lost, counts.duplicates, counts.expired,
             op == OP_WRITE ? "" : ", through the staging table", us);
    pg->op = OP_NONE;
    write_finish(pg, FL_PG_OK, NULL, &counts);
}

/* A failed ROLLBACK leaves the session in an unknown state: the write
 * becomes FL_PG_DOWN and the connection starts afresh. */
static void rollback_done(fl_pg_t *pg)
{
    char msg[ERRLEN];

    if (pg->err) {
        fl_pg_result_error(msg, sizeof(msg), pg->err);
        conn_drop(pg, msg);
        return;
    }
    pg->op = OP_NONE;
    write_finish(pg, pg->wres, pg->werr, NULL);
}

/* ---- results ---- */

/* PQgetResult returned NULL: the op's query string is done. */
static void op_complete(fl_pg_t *pg)
{
    pg_op_t op = pg->op;

    evtimer_del(pg->ev_deadline);
    switch (op) {
    case OP_NONE: break;
    case OP_MIGRATE_BEGIN: migrate_begin_done(pg); break;
    case OP_MIGRATE_APPLY:
        if (pg->err) {
            char what[128];

            snprintf(what, sizeof(what), "migration %d (%s)",
                     fl_migrations[pg->mig_next].version,
                     fl_migrations[pg->mig_next].name);
            setup_failed(pg, what);
            return;
        }
        pg->schema_version = fl_migrations[pg->mig_next].version;
        pg->mig_next++;
        migrate_next(pg);
        break;
    case OP_MIGRATE_COMMIT:
        if (pg->err) {
            setup_failed(pg, "COMMIT of the migrations");
            return;
        }
        upkeep_start(pg);
        break;
    case OP_UPKEEP:
        pg->op = OP_NONE;
        upkeep_done(pg);
        if (pg->state == S_SETUP) {
            pg->state = S_READY;
            pg->backoff_ms = BACKOFF_MIN_MS;
            fl_info("postgres %s ready (schema version %d, "
                    "synchronous_commit %s)",
                    pg->addr, pg->schema_version,
                    pg->sync_commit ? "on" : "off");
            if (pg->reported != 1) {
                pg->reported = 1;
                if (pg->on_state) {
                    unsigned gen = pg->gen;

                    pg->nest++;
                    pg->on_state(pg, 1, pg->ud);
                    pg->nest--;
                    if (pg->free_requested || gen != pg->gen)
                        return;
                }
            }
        }
        if (pg->op == OP_NONE)
            pg_next(pg);
        break;
    case OP_WRITE:
    case OP_WRITE_STAGE:
    case OP_WRITE_RETRY: write_done(pg); break;
    case OP_ROLLBACK: rollback_done(pg); break;
    }
}

/* Read what the server sent and hand complete results to the op. */
static void results_read(fl_pg_t *pg)
{
    PGresult *res;
    PGnotify *n;

    if (!PQconsumeInput(pg->conn)) {
        conn_drop(pg, PQerrorMessage(pg->conn));
        return;
    }
    while ((n = PQnotifies(pg->conn)) != NULL)
        PQfreemem(n);
    if (pg->copying && !pg->copy_done)
        return; /* results follow the end of the COPY */
    while (pg->op != OP_NONE && !PQisBusy(pg->conn)) {
        res = PQgetResult(pg->conn);
        if (res == NULL) {
            op_complete(pg);
            return;
        }
        switch (PQresultStatus(res)) {
        case PGRES_COPY_IN:
            PQclear(res);
            if (pg->wb == NULL || pg->copying) {
                /* not ours: end it, the results say what happened */
                PQputCopyEnd(pg->conn, "unexpected COPY");
                continue;
            }
            pg->copying = 1;
            copy_pump(pg);
            return;
        case PGRES_TUPLES_OK:
            if (pg->ntuples < MAX_TUPLES)
                pg->tuples[pg->ntuples++] = res;
            else
                PQclear(res);
            break;
        case PGRES_COMMAND_OK:
            if (strcmp(PQcmdStatus(res), "SAVEPOINT") == 0)
                pg->savepoint = 1;
            else if (strncmp(PQcmdStatus(res), "INSERT ", 7) == 0 ||
                     (pg->op == OP_WRITE &&
                      strncmp(PQcmdStatus(res), "COPY ", 5) == 0))
                pg->inserted = atoll(PQcmdTuples(res));
            else if (strncmp(PQcmdStatus(res), "UPDATE ", 7) == 0)
                pg->updated = atoll(PQcmdTuples(res));
            PQclear(res);
            break;
        case PGRES_EMPTY_QUERY: PQclear(res); break;
        default:
            /* errors, and anything this file never asks for */
            if (pg->err == NULL)
                pg->err = res;
            else
                PQclear(res);
            break;
        }
    }
    if (pg->op == OP_NONE) {
        /* idle: drain anything unexpected without waiting */
        while (!PQisBusy(pg->conn) && (res = PQgetResult(pg->conn)) != NULL)
            PQclear(res);
    }
}

/* ---- connection ---- */

static void on_io(evutil_socket_t fd, short what, void *arg);

static void io_close(fl_pg_t *pg)
{
    if (pg->ev_rd) {
        event_free(pg->ev_rd);
        pg->ev_rd = NULL;
    }
    if (pg->ev_wr) {
        event_free(pg->ev_wr);
        pg->ev_wr = NULL;
    }
    pg->fd = -1;
}

/* Watch fd (PQsocket may change while connecting): re-create the events
 * when it differs from the one they watch. Freeing an event inside its
 * own callback is fine with libevent 2.1 (it keeps no reference to it
 * once the callback runs). */
static void io_watch(fl_pg_t *pg, int fd)
{
    if (fd == pg->fd && pg->ev_rd)
        return;
    io_close(pg);
    if (fd < 0)
        return;
    pg->fd = fd;
    pg->ev_rd =
        event_or_die(event_new(pg->base, fd, EV_READ | EV_PERSIST, on_io, pg));
    pg->ev_wr = event_or_die(event_new(pg->base, fd, EV_WRITE, on_io, pg));
}

static void retry_later(fl_pg_t *pg)
{
    if (pg->free_requested)
        return;
    timer_add(pg->ev_retry, pg->backoff_ms);
    pg->backoff_ms = fl_min(pg->backoff_ms * 2, BACKOFF_MAX_MS);
}

/*
 * Close the connection (if any) and reconnect after the backoff. why (if
 * not NULL) is logged. A write in flight gets FL_PG_DOWN, then on_state(0)
 * runs unless 0 was the last state reported. Either callback may free pg.
 */
static void conn_drop(fl_pg_t *pg, const char *why)
{
    pg_state_t was = pg->state;
    char       msg[ERRLEN];
    unsigned   gen;

    fl_pg_one_line(msg, sizeof(msg), why ? why : "closed");
    if (why) {
        if (was == S_CONNECTING)
            fl_error("connect() to postgres %s failed: %s, retrying in "
                     "%" PRId64 " ms",
                     pg->addr, msg, pg->backoff_ms);
        else
            fl_error("postgres %s connection lost: %s, reconnecting in "
                     "%" PRId64 " ms",
                     pg->addr, msg, pg->backoff_ms);
    } else if (was != S_DOWN) {
        fl_info("postgres %s: closing the connection, reconnecting in "
                "%" PRId64 " ms",
                pg->addr, pg->backoff_ms);
    }
    io_close(pg);
    if (pg->conn) {
        PQfinish(pg->conn);
        pg->conn = NULL;
    }
    results_clear(pg);
    evtimer_del(pg->ev_deadline);
    pg->op = OP_NONE;
    pg->state = S_DOWN;
    pg->staging_ready = 0;
    pg->gen++;
    gen = pg->gen;
    retry_later(pg);

    if (pg->wb) {
        write_finish(pg, FL_PG_DOWN, msg, NULL);
        if (pg->free_requested || gen != pg->gen)
            return;
    }
    if (pg->reported != 0 && !pg->free_requested) {
        pg->reported = 0;
        if (pg->on_state) {
            pg->nest++;
            pg->on_state(pg, 0, pg->ud);
            pg->nest--;
        }
    }
}

/* Notices (NOTICE "relation already exists, skipping", WARNING from a
 * migration) go to the log instead of stderr. */
static void on_notice(void *arg, const PGresult *res)
{
    fl_pg_t    *pg = arg;
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    char        msg[ERRLEN];

    fl_pg_one_line(msg, sizeof(msg), PQresultErrorMessage(res));
    if (sev && strcmp(sev, "WARNING") == 0)
        fl_warn("postgres %s: %s", pg->addr, msg);
    else
        fl_debug("postgres %s: %s", pg->addr, msg);
}

static void connected(fl_pg_t *pg)
{
    evtimer_del(pg->ev_deadline);
    if (PQsetnonblocking(pg->conn, 1) != 0) {
        conn_drop(pg, PQerrorMessage(pg->conn));
        return;
    }
    PQsetNoticeReceiver(pg->conn, on_notice, pg);
    io_watch(pg, PQsocket(pg->conn));
    event_del(pg->ev_wr);
    event_add(pg->ev_rd, NULL);
    pg->state = S_SETUP;
    fl_info("postgres %s connected (server %d, backend pid %d)", pg->addr,
            PQserverVersion(pg->conn), PQbackendPID(pg->conn));
    op_send(pg, OP_MIGRATE_BEGIN, pg->sql_setup);
}

/* One PQconnectPoll() step; wait for what it asks for. */
static void connect_poll(fl_pg_t *pg)
{
    switch (PQconnectPoll(pg->conn)) {
    case PGRES_POLLING_READING:
        io_watch(pg, PQsocket(pg->conn));
        event_del(pg->ev_wr);
        event_add(pg->ev_rd, NULL);
        return;
    case PGRES_POLLING_WRITING:
        io_watch(pg, PQsocket(pg->conn));
        event_del(pg->ev_rd);
        event_add(pg->ev_wr, NULL);
        return;
    case PGRES_POLLING_OK: connected(pg); return;
    default: conn_drop(pg, PQerrorMessage(pg->conn)); return;
    }
}

static void conn_start(fl_pg_t *pg)
{
    const char *kw[] = {"dbname", "fallback_application_name",
                        "client_encoding", NULL};
    const char *val[] = {pg->conninfo, pg->fallback_name, "UTF8", NULL};
    const char *host, *port, *db;

    pg->conn = PQconnectStartParams(kw, val, 1);
    if (pg->conn == NULL) {
        fl_log(FL_LOG_CRIT, "PQconnectStartParams() failed: out of memory");
        abort();
    }
    host = PQhost(pg->conn);
    port = PQport(pg->conn);
    db = PQdb(pg->conn);
    snprintf(pg->addr, sizeof(pg->addr), "%s:%s/%s",
             host && *host ? host : "localhost", port && *port ? port : "5432",
             db ? db : "?");
    pg->state = S_CONNECTING;
    if (PQstatus(pg->conn) == CONNECTION_BAD) {
        conn_drop(pg, PQerrorMessage(pg->conn));
        return;
    }
    timer_add(pg->ev_deadline, pg->connect_timeout_ms);
    /* libpq: start as if PQconnectPoll had said PGRES_POLLING_WRITING */
    io_watch(pg, PQsocket(pg->conn));
    event_add(pg->ev_wr, NULL);
    fl_debug("connecting to postgres %s", pg->addr);
}

/* ---- event callbacks ---- */

static void on_io(evutil_socket_t fd, short what, void *arg)
{
    fl_pg_t *pg = arg;
    unsigned gen = pg->gen;

    pg->nest++;
    if (pg->state == S_CONNECTING) {
        connect_poll(pg);
    } else if (pg->conn) {
        if (what & EV_WRITE) {
            if (pg->copying && !pg->copy_done)
                copy_pump(pg);
            else
                out_flush(pg);
        }
        if ((what & EV_READ) && gen == pg->gen && !pg->free_requested)
            results_read(pg);
    }
    pg->nest--;
    if (pg->free_requested && pg->nest == 0)
        pg_destroy(pg);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    fl_pg_t *pg = arg;
    char     msg[128];

    if (pg->conn == NULL)
        return;
    pg->nest++;
    if (pg->state == S_CONNECTING)
        snprintf(msg, sizeof(msg), "timed out after %" PRId64 " ms",
                 pg->connect_timeout_ms);
    else
        snprintf(msg, sizeof(msg), "no answer to a query within %d s",
                 QUERY_TIMEOUT_MS / 1000);
    conn_drop(pg, msg);
    pg->nest--;
    if (pg->free_requested && pg->nest == 0)
        pg_destroy(pg);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    fl_pg_t *pg = arg;

    if (pg->conn || pg->free_requested)
        return;
    pg->nest++;
    conn_start(pg);
    pg->nest--;
    if (pg->free_requested && pg->nest == 0)
        pg_destroy(pg);
}

static void on_upkeep(evutil_socket_t fd, short what, void *arg)
{
    fl_pg_t *pg = arg;

    pg->upkeep_due = 1;
    if (pg->state != S_READY || pg->op != OP_NONE)
        return; /* after the op in flight, or at the next connect */
    pg->nest++;
    pg_next(pg);
    pg->nest--;
    if (pg->free_requested && pg->nest == 0)
        pg_destroy(pg);
}

/* ev_later: the deferred free, and the start of a write that
 * fl_pg_write() accepted (never started inside it, so that its callback
 * cannot run before fl_pg_write returns). */
static void on_later(evutil_socket_t fd, short what, void *arg)
{
    fl_pg_t *pg = arg;

    if (pg->free_requested) {
        if (pg->nest == 0)
            pg_destroy(pg);
        return;
    }
    if (pg->state == S_READY && pg->op == OP_NONE) {
        pg->nest++;
        pg_next(pg);
        pg->nest--;
        if (pg->free_requested && pg->nest == 0)
            pg_destroy(pg);
    }
}

/* The connection is READY and idle: upkeep if due, else the queued
 * write. */
static void pg_next(fl_pg_t *pg)
{
    if (pg->upkeep_due)
        upkeep_start(pg);
    else if (pg->wb && !pg->wstarted)
        write_start(pg);
}

/* ---- API ---- */

/*
 * The staged rows into telemetry, three statements (see "A write" at the
 * top); cond (may be NULL) keeps only the staged rows it is true for. The
 * newest version of each key goes in key order, so that staging writers
 * take their index locks in the same order; the last statement's count is
 * the lost rows, which write_done() reads from the last result.
 */
static char *upsert_sql(const char *cond)
{
    const char *w = cond ? "\n  WHERE " : "", *c = cond ? cond : "";
    const char *a = cond ? " AND " : "";
    char       *newest, *sql;

    newest =
        str_printf("SELECT DISTINCT ON (device_id, metric, ts) " COPY_COLUMNS
                   "\n  FROM " STAGING "%s%s\n"
                   "  ORDER BY device_id, metric, ts, src DESC",
                   w, c);
    sql = str_printf(
        "INSERT INTO telemetry (" COPY_COLUMNS ")\n"
        "SELECT " COPY_COLUMNS " FROM (%s) s\n"
        "ON CONFLICT DO NOTHING;\n"
        "UPDATE telemetry t SET value = s.value, value_bool = s.value_bool,\n"
        "  value_text = s.value_text, unit = s.unit, src = s.src\n"
        "FROM (%s) s\n"
        "WHERE t.device_id = s.device_id AND t.metric = s.metric\n"
        "  AND t.ts = s.ts AND coalesce(t.src, 0) < s.src\n"
        "  AND (t.value, t.value_bool, t.value_text, t.unit) IS DISTINCT FROM\n"
        "      (s.value, s.value_bool, s.value_text, s.unit);\n"
        "SELECT count(*) FROM " STAGING " x\n"
        "  JOIN telemetry t USING (device_id, metric, ts)\n"
        "WHERE %s%scoalesce(t.src, 0) <> x.src\n"
        "  AND (t.value, t.value_bool, t.value_text, t.unit) IS DISTINCT FROM\n"
        "      (x.value, x.value_bool, x.value_text, x.unit)",
        newest, newest, c, a);
    free(newest);
    return sql;
}

static void build_sql(fl_pg_t *pg, const fl_config_t *cf)
{
    static const char staging[] =
        "CREATE TEMP TABLE IF NOT EXISTS " STAGING " (ts timestamptz, "
        "value double precision, value_bool boolean, device_id text, "
        "metric text, value_text text, unit text, src bigint) "
        "ON COMMIT DELETE ROWS;\n";
    char   *ins = upsert_sql(NULL);
    char   *ins_kept, *keep, *bucket, *expired;
    int64_t iv = pg->iv_ms;

    pg->sql_setup =
        str_printf("SET synchronous_commit TO %s;\n"
                   "BEGIN;\n"
                   "SELECT pg_advisory_xact_lock(" FL_PG_LOCK_MIGRATIONS ");\n"
                   "CREATE TABLE IF NOT EXISTS fleetd_migrations (\n"
                   "    version    integer PRIMARY KEY,\n"
                   "    name       text NOT NULL,\n"
                   "    applied_at timestamptz NOT NULL DEFAULT now());\n"
                   "SELECT version FROM fleetd_migrations ORDER BY version",
                   cf->postgres.synchronous_commit ? "on" : "off");
    pg->sql_upkeep = str_printf(
        "SELECT action, item FROM fleetd_partition_upkeep(%" PRId64 ", %d, %d)",
        iv, cf->postgres.partitions_ahead, pg->retention_days);
    pg->sql_write = fl_strdup("BEGIN;\n"
                              "COPY telemetry (" COPY_COLUMNS
                              ") FROM STDIN (FORMAT binary);\n"
                              "COMMIT");
    /* both start with SQL_ROLLBACK, which stage_start() may skip */
    pg->sql_stage = str_printf("%s"
                               "BEGIN;\n"
                               "COPY " STAGING " FROM STDIN (FORMAT binary);\n"
                               "SAVEPOINT fl_w;\n"
                               "%s;\n"
                               "COMMIT",
                               SQL_ROLLBACK, ins);
    pg->sql_stage_create =
        str_printf("%s"
                   "BEGIN;\n"
                   "%s"
                   "COPY " STAGING " FROM STDIN (FORMAT binary);\n"
                   "SAVEPOINT fl_w;\n"
                   "%s;\n"
                   "COMMIT",
                   SQL_ROLLBACK, staging, ins);
    /* the partition bucket of a row, as fleetd_partition_ensure() counts
     * them: floor(epoch ms / interval ms); the ms are exact (ts holds whole
     * ms), the numeric division floors right for times before 1970 too */
    bucket = str_printf("floor((extract(epoch FROM ts) * 1000)::bigint / "
                        "%" PRId64 ".0)::bigint",
                        iv);
    /* a bucket is expired when it ends before now - retention_days */
    expired = str_printf("(%s + 1) * %" PRId64 " <= extract(epoch FROM now() - "
                         "make_interval(days => %d)) * 1000",
                         bucket, iv, pg->retention_days);
    keep = str_printf("NOT (%s)", expired);
    ins_kept = upsert_sql(keep);
    pg->sql_retry =
        str_printf("ROLLBACK TO SAVEPOINT fl_w;\n"
                   "SELECT coalesce(string_agg(p, ' '), '') FROM "
                   "fleetd_partition_ensure(%" PRId64
                   ", %d, ARRAY(SELECT DISTINCT %s FROM " STAGING ")) p;\n"
                   "SELECT count(*) FROM " STAGING " WHERE %s;\n"
                   "%s;\n"
                   "COMMIT",
                   iv, pg->retention_days, bucket, expired, ins_kept);
    free(ins);
    free(ins_kept);
    free(keep);
    free(bucket);
    free(expired);
}

fl_pg_t *fl_pg_new(struct event_base *base, const fl_config_t *cf,
                   fl_pg_state_cb on_state, void *ud)
{
    fl_pg_t *pg = fl_calloc(1, sizeof(*pg));

    pg->base = base;
    pg->on_state = on_state;
    pg->ud = ud;
    pg->conninfo =
        fl_strdup(cf->postgres.conninfo ? cf->postgres.conninfo : "");
    snprintf(pg->fallback_name, sizeof(pg->fallback_name), "fleetd %s",
             cf->node_id ? cf->node_id : "");
    pg->connect_timeout_ms = cf->postgres.connect_timeout_ms;
    pg->iv_ms = cf->postgres.partition_interval_ms;
    pg->retention_days = cf->postgres.retention_days;
    pg->sync_commit = cf->postgres.synchronous_commit;
    pg->upkeep_every_ms = fl_min(pg->iv_ms / 4, (int64_t)UPKEEP_MAX_MS);
    pg->reported = -1;
    pg->backoff_ms = BACKOFF_MIN_MS;
    pg->fd = -1;
    snprintf(pg->addr, sizeof(pg->addr), "(not connected)");
    build_sql(pg, cf);

    pg->ev_retry = event_or_die(evtimer_new(base, on_retry, pg));
    pg->ev_deadline = event_or_die(evtimer_new(base, on_deadline, pg));
    pg->ev_upkeep = event_or_die(evtimer_new(base, on_upkeep, pg));
    pg->ev_later = event_or_die(event_new(base, -1, 0, on_later, pg));

    /* connect from the loop, so that no callback runs before the caller
     * has pg */
    timer_add(pg->ev_retry, 0);
    return pg;
}

int fl_pg_ready(const fl_pg_t *pg)
{
    return pg->state == S_READY && !pg->free_requested;
}

int fl_pg_busy(const fl_pg_t *pg)
{
    return pg->wb != NULL;
}

int fl_pg_write(fl_pg_t *pg, fl_pg_batch_t *b, fl_pg_write_cb cb, void *ud)
{
    if (!fl_pg_ready(pg))
        return FL_ERROR;
    if (pg->wb)
        return FL_AGAIN;
    pg->wb = b;
    pg->wcb = cb;
    pg->wud = ud;
    pg->wstarted = 0;
    /* started from the loop: by ev_later when the connection is idle,
     * else when the op in flight ends (pg_next) */
    if (pg->op == OP_NONE)
        event_active(pg->ev_later, 0, 0);
    return FL_OK;
}

/* Close the connection and free everything; only with no frame of this
 * file on the stack. */
static void pg_destroy(fl_pg_t *pg)
{
    io_close(pg);
    if (pg->conn)
        PQfinish(pg->conn);
    results_clear(pg);
    event_free(pg->ev_retry);
    event_free(pg->ev_deadline);
    event_free(pg->ev_upkeep);
    event_free(pg->ev_later);
    if (pg->state == S_READY || pg->state == S_SETUP)
        fl_info("postgres %s connection closed", pg->addr);
    free(pg->conninfo);
    free(pg->sql_setup);
    free(pg->sql_upkeep);
    free(pg->sql_write);
    free(pg->sql_stage);
    free(pg->sql_stage_create);
    free(pg->sql_retry);
    free(pg);
}

void fl_pg_free(fl_pg_t *pg)
{
    if (pg == NULL || pg->free_requested)
        return;
    pg->free_requested = 1;
    if (pg->wb)
        write_finish(pg, FL_PG_DOWN, "connection closed", NULL);
    if (pg->nest > 0) {
        event_active(pg->ev_later, 0, 0);
        return;
    }
    pg_destroy(pg);
}
