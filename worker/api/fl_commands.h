/*
 * fl_commands.h - commands to devices (fl_commands.c): what the rest of
 * the worker uses besides the routes (fl_routes.h). The module keeps the
 * command rows' status moving (publish outcomes, expiry, retention); the
 * stream consumer (fl_ingest.c) hands it the devices' answers.
 */
#ifndef FL_COMMANDS_H
#define FL_COMMANDS_H

#include <stddef.h>

#include "fl_worker.h"

extern const fl_module_t fl_commands_module;

/* What an answer did to its command. */
typedef enum {
    FL_ACK_APPLIED = 1,  /* the command is now acked / failed */
    FL_ACK_ANSWERED,     /* it had an answer already: nothing changed */
    FL_ACK_UNKNOWN,      /* no command has that id */
    FL_ACK_OTHER_DEVICE, /* the command is another device's */
} fl_ack_outcome_t;

/* One answer of a device, as fl_ack_parse() accepted it. */
typedef struct {
    const char      *device;  /* from the topic */
    const char      *id;      /* the command's id */
    int              ok;      /* 0 or 1 */
    const char      *json;    /* the ack payload, JSON text validated by */
    size_t           len;     /* fl_ack_parse (its "result" is stored) */
    fl_ack_outcome_t outcome; /* set when the call succeeds */
} fl_cmd_ack_t;

typedef struct fl_cmd_acks_s fl_cmd_acks_t;

/* rc FL_OK: every acks[i].outcome is set and committed. FL_AGAIN: the
 * database was away, busy or timed out: nothing or all of it was
 * applied, try again (applying twice is harmless: the second time finds
 * the commands answered). FL_ERROR: PostgreSQL refused the statement
 * (err): the same acks would fail again. */
typedef void (*fl_cmd_acks_cb)(int rc, const char *err, void *ud);

/*
 * Apply n answers in one statement on the API's pool (fl_api.db), in one
 * transaction: a command takes the first answer it gets (in array order)
 * while it has none; acks[] must stay valid until cb runs. FL_OK: cb runs
 * later on the loop, exactly once, unless cancelled; *handle names the
 * call for fl_commands_ack_cancel. FL_AGAIN: the pool has no connection
 * or its queue is full; cb does not run.
 */
int fl_commands_ack(fl_cmd_ack_t *acks, int n, fl_cmd_acks_cb cb, void *ud,
                    fl_cmd_acks_t **handle);

/* Forget a call accepted by fl_commands_ack: cb will not run (a
 * statement already sent still commits or not). */
void fl_commands_ack_cancel(fl_cmd_acks_t *h);

#endif
