/*
 * fl_db.h - the worker's pool of PostgreSQL connections for queries that
 * answer someone: the REST API now, the rules later.
 *
 * Separate from the ingest writer's connection (fl_pg.c), so that a slow
 * history query never holds up a batch and a long batch never holds up an
 * answer. postgres.pool_size connections per worker, libpq non-blocking
 * on the worker's loop (nothing here waits on the server). Statements are
 * registered once at init (fl_db_stmt) and prepared on each connection
 * the first time it runs them: the server parses and plans a statement
 * once per connection, not once per request.
 *
 * A query waits in one FIFO for a free connection. At most
 * postgres.pool_queue wait (fl_db_query() says FL_AGAIN past it: the API
 * answers 503 rather than let a queue grow without bound), and one that
 * has not started within postgres.pool_wait fails. statement_timeout
 * (postgres.query_timeout) bounds a running query on the server; a
 * server that does not answer 5 s after that loses the connection.
 *
 * Callbacks run on the loop, exactly once per accepted query unless it
 * was cancelled (fl_db_cancel: the caller's request went away).
 */
#ifndef FL_DB_H
#define FL_DB_H

#include <event2/event.h>
#include <libpq-fe.h>

#include "fl_config.h"

typedef struct fl_db_s   fl_db_t;
typedef struct fl_db_q_s fl_db_q_t;

/*
 * res: the query's result (PGRES_TUPLES_OK or PGRES_COMMAND_OK), owned by
 * the pool, valid during the call. On failure res is NULL, err is one line
 * and sqlstate the server's code ("" when the failure is not the server's
 * answer: connection lost, no connection free in time, shutting down).
 */
typedef void (*fl_db_cb)(const PGresult *res, const char *err,
                         const char *sqlstate, void *ud);

/* Register a statement before the first fl_db_new(); returns its id.
 * name must be unique; sql uses $1, $2 ... */
int fl_db_stmt(const char *name, const char *sql);

/* ready 1: a first connection became ready (the pool was not before);
 * 0: the last ready one went away */
typedef void (*fl_db_state_cb)(fl_db_t *db, int ready, void *ud);

/* Start connecting postgres.pool_size connections. Never NULL. on_state
 * may be NULL; it never runs inside fl_db_new. */
fl_db_t *fl_db_new(struct event_base *base, const fl_config_t *cf,
                   fl_db_state_cb on_state, void *ud);

/* 1 when at least one connection is ready. */
int fl_db_ready(const fl_db_t *db);

/* Queries queued or running. */
int fl_db_busy(const fl_db_t *db);

/*
 * Run statement stmt with nparams text parameters (NULL = SQL NULL; the
 * pool copies them). FL_OK: cb runs later, exactly once, unless
 * cancelled; *handle (if not NULL) names the query for fl_db_cancel.
 * FL_AGAIN: the queue is full. FL_ERROR: no connection is up. cb does not
 * run for FL_AGAIN and FL_ERROR.
 */
int fl_db_query(fl_db_t *db, int stmt, int nparams, const char *const *params,
                fl_db_cb cb, void *ud, fl_db_q_t **handle);

/* Forget a query accepted by fl_db_query: its callback will not run. A
 * query already sent runs to its end and its result is dropped. */
void fl_db_cancel(fl_db_t *db, fl_db_q_t *q);

/* Close every connection; the callbacks of queued and running queries run
 * first, with err "shutting down". */
void fl_db_free(fl_db_t *db);

#endif
