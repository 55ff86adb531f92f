/*
 * fl_redis.h - an asynchronous Redis connection on the worker's loop.
 *
 * hiredis 0.14's async API with its libevent adapter, plus what that
 * version lacks: a connect timeout, per-command timeouts (a command not
 * answered in time drops the connection, which fails every pending
 * command), AUTH, and reconnection with backoff (100 ms doubling to
 * reconnect_max). Commands are only accepted while connected; callers
 * decide what to do while it is down (ingest pauses, for instance).
 *
 * Callbacks run on the loop. A callback gets reply == NULL when the
 * command failed: connection lost, timeout, or the connection was freed;
 * the reply (if any) is owned by hiredis and valid only during the call.
 */
#ifndef FL_REDIS_H
#define FL_REDIS_H

#include <event2/event.h>
#include <hiredis/hiredis.h>

#include "fl_config.h"

typedef struct fl_redis_s fl_redis_t;

typedef void (*fl_redis_cb)(fl_redis_t *r, redisReply *reply, void *ud);
/* up: 1 connected (and authenticated), 0 lost */
typedef void (*fl_redis_state_cb)(fl_redis_t *r, int up, void *ud);

/* Start connecting to cf->redis.*; name appears in logs ("ingest",
 * "pubsub", ...). Never NULL. */
fl_redis_t *fl_redis_new(struct event_base *base, const fl_config_t *cf,
                         const char *name, fl_redis_state_cb on_state,
                         void *ud);

int fl_redis_connected(const fl_redis_t *r);

/*
 * Send a command. timeout_ms 0 = redis.command_timeout; a blocking
 * command (XREADGROUP BLOCK n) passes n plus a margin. Returns FL_OK
 * (cb will be called exactly once, unless cb is NULL) or FL_ERROR when
 * not connected (cb is not called).
 */
int fl_redis_cmd(fl_redis_t *r, int64_t timeout_ms, fl_redis_cb cb, void *ud,
                 const char *fmt, ...);
int fl_redis_cmdargv(fl_redis_t *r, int64_t timeout_ms, fl_redis_cb cb,
                     void *ud, int argc, const char **argv,
                     const size_t *argvlen);

/* Send a command already in the protocol's form (RESP, e.g. built on a
 * pool thread); buf is copied. Same contract as fl_redis_cmd(). */
int fl_redis_cmdraw(fl_redis_t *r, int64_t timeout_ms, fl_redis_cb cb, void *ud,
                    const char *buf, size_t len);

/* Commands sent and not yet answered. */
int fl_redis_pending(const fl_redis_t *r);

/* Close and free. Pending callbacks are called with reply NULL before it
 * returns. Safe to call from inside one of r's callbacks (the free is
 * deferred until the callback returns). */
void fl_redis_free(fl_redis_t *r);

#endif
