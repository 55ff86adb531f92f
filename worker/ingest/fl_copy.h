/*
 * fl_copy.h - telemetry rows in PostgreSQL's COPY text format.
 *
 * A batch is the rows of one write (fl_pg_write()): one line per metric of
 * every point, tab-separated columns (FL_COPY_COLUMNS), text fields
 * escaped, NULL as \N, ts as UTC text to the microsecond (see fl_copy.c). The
 * buffer goes to the server as is, by COPY telemetry (FL_COPY_COLUMNS) FROM
 * STDIN or, on the staging path, into a table with the same columns. Pure
 * formatting: no connection, no event loop, so the unit tests drive it
 * directly.
 */
#ifndef FL_COPY_H
#define FL_COPY_H

#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>

#include "fl_payload.h"

/* the columns of a COPY row (fl_pg_batch_add). src orders the messages
 * that wrote a row: the stream entry id as ms * 1000000 + seq (see
 * fl_ingest.c), so that of two messages with one key the later wins. */
#define FL_COPY_COLUMNS \
    "ts, value, value_bool, device_id, metric, value_text, unit, src"

/* Rows of one write, accumulated in COPY text format. */
typedef struct {
    struct evbuffer *copy;
    size_t           rows;
    /* devices to register in the same transaction (auto-registration):
     * "('id',true),('id2',true)", ids of the contract's syntax only */
    char  *devices;
    size_t devices_len, devices_cap;
    /* fl_copy.c's cache: the formatted second of the last row's ts */
    int64_t ts_sec;
    size_t  ts_len;
    int     ts_bc;
    char    ts_text[32];
} fl_pg_batch_t;

void fl_pg_batch_init(fl_pg_batch_t *b);
/* Empty the rows; the buffer is kept for the next batch. */
void fl_pg_batch_reset(fl_pg_batch_t *b);
void fl_pg_batch_free(fl_pg_batch_t *b);
/* Register device (an id that fl_device_id_valid() accepts) with the
 * batch's rows. */
void fl_pg_batch_device(fl_pg_batch_t *b, const char *device);

/* Append one row per metric of every point of t for device, written by
 * the message src. */
void fl_pg_batch_add(fl_pg_batch_t *b, const char *device,
                     const fl_telemetry_t *t, int64_t src);

#endif
