/*
 * fl_pg.h - the worker's asynchronous PostgreSQL connection: schema
 * migrations, partition upkeep and batched telemetry writes.
 *
 * libpq in non-blocking mode on the worker's loop (PQconnectStart /
 * PQconnectPoll, PQsendQuery, PQputCopyData, PQconsumeInput), so nothing
 * waits on the database. The connection reconnects with backoff; after
 * each connect it applies the versioned migrations (under an advisory
 * lock, so workers and nodes do not race) and makes sure partitions exist
 * for now .. now + partitions_ahead intervals; every partition_interval it
 * creates the next ones and drops those older than retention_days.
 *
 * A batch is a set of telemetry rows written in one transaction with
 * COPY straight into the telemetry table. When that fails because some of
 * the keys (device, metric, ts) are stored already (a batch written
 * twice, two messages with one ts) or a row has no partition, the batch is
 * written again, in a new transaction, through a temporary staging table
 * (missing partitions are created when it needs them): a key takes the
 * value of the latest message (the greatest src), a batch written twice
 * adds nothing, and the write reports what became of every row
 * (fl_pg_counts_t). The rows are built by fl_pg_batch_add() (fl_copy.h).
 */
#ifndef FL_PG_H
#define FL_PG_H

#include <event2/buffer.h>
#include <event2/event.h>

#include "fl_config.h"
#include "fl_copy.h" /* fl_pg_batch_t: the rows of a write */
#include "fl_payload.h"

typedef struct fl_pg_s fl_pg_t;

typedef enum {
    FL_PG_OK = 0,
    FL_PG_DOWN,     /* connection lost or not connected: retry later */
    FL_PG_REJECTED, /* the server refused the data (SQLSTATE class 22/23):
                       retrying the same rows will fail again */
} fl_pg_result_t;

/*
 * What a committed write did with the rows of its batch; every row is in
 * exactly one of these. Exact for inserted, updated and expired. lost and
 * duplicates are told apart against what the transaction sees after its
 * own writes, so a concurrent writer of the same keys (a claim while the
 * first consumer is still alive) can move a row from one to the other.
 */
typedef struct {
    size_t inserted;   /* new keys: rows the table did not have */
    size_t updated;    /* stored rows that took this batch's later value */
    size_t lost;       /* rows whose key holds another message's later,
                          different value (a stored one, or another row of
                          this batch) */
    size_t duplicates; /* rows whose key already holds the same value (the
                          same message written again, a repeat) */
    size_t expired;    /* rows not written: older than retention_days by
                          the time they were written */
} fl_pg_counts_t;

/* up: 1 connected and migrated, 0 lost */
typedef void (*fl_pg_state_cb)(fl_pg_t *pg, int up, void *ud);
/* err: the server's message for FL_PG_REJECTED / FL_PG_DOWN, else NULL;
 * counts: with FL_PG_OK, else NULL */
typedef void (*fl_pg_write_cb)(fl_pg_t *pg, fl_pg_result_t res, const char *err,
                               const fl_pg_counts_t *counts, void *ud);

/* Start connecting to cf->postgres.conninfo. Never NULL. */
fl_pg_t *fl_pg_new(struct event_base *base, const fl_config_t *cf,
                   fl_pg_state_cb on_state, void *ud);
int      fl_pg_ready(const fl_pg_t *pg); /* connected, migrated, idle or busy */
int      fl_pg_busy(const fl_pg_t *pg);  /* a write is in flight */

/*
 * Write b in one transaction. Only one write at a time: FL_AGAIN when
 * busy, FL_ERROR when not ready (cb not called in either case). FL_OK:
 * cb is called exactly once. b must stay untouched until then.
 */
int fl_pg_write(fl_pg_t *pg, fl_pg_batch_t *b, fl_pg_write_cb cb, void *ud);

/* Close and free; a write in flight gets FL_PG_DOWN first. */
void fl_pg_free(fl_pg_t *pg);

#endif
