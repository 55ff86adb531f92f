/*
 * fl_copy.h - telemetry rows in PostgreSQL's binary COPY format.
 *
 * A batch is the rows of one write (fl_pg_write()): one row per metric of
 * every point, the columns FL_COPY_COLUMNS in the server's binary
 * representation (see fl_copy.c). The buffer holds rows only, so that the
 * rows of several batches concatenate into one (fl_ingest.c): the sender
 * puts fl_copy_header before them and fl_copy_trailer after, and sends it
 * all by COPY telemetry (FL_COPY_COLUMNS) FROM STDIN (FORMAT binary) or,
 * on the staging path, into a table with the same columns. Pure encoding:
 * no connection, no event loop, so the unit tests drive it directly.
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

/* What goes before the first row and after the last of a binary COPY:
 * the signature "PGCOPY\n\377\r\n\0", flags 0 and no header extension;
 * the field count -1. */
#define FL_COPY_HEADER_LEN  19
#define FL_COPY_TRAILER_LEN 2
extern const unsigned char fl_copy_header[FL_COPY_HEADER_LEN];
extern const unsigned char fl_copy_trailer[FL_COPY_TRAILER_LEN];

/* Rows of one write, accumulated in binary COPY format, without the
 * header and trailer. */
typedef struct {
    struct evbuffer *copy;
    size_t           rows;
    /* devices to register in the same transaction (auto-registration):
     * "('id',true),('id2',true)", ids of the contract's syntax only */
    char  *devices;
    size_t devices_len, devices_cap;
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
