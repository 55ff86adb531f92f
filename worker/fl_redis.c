/*
 * fl_redis.c - an asynchronous Redis connection on the worker's loop (see
 * fl_redis.h).
 *
 * hiredis 0.14 does the protocol and the socket; this file adds what that
 * version lacks. A connection moves through these states:
 *   DOWN        no context; ev_retry reconnects after the backoff
 *   CONNECTING  redisAsyncConnect() issued, TCP connect in progress
 *   HANDSHAKE   connected; AUTH (or PING without a password) sent, and
 *               nothing is reported up before its answer
 *   UP          commands accepted
 * One timer (ev_deadline) covers the connect deadline (connect + handshake)
 * and the command deadlines. Replies come back in the order the commands
 * were sent, so the commands sit in a FIFO and a command's deadline is the
 * later of its own and the one before it (a GET queued behind XREADGROUP
 * BLOCK cannot be answered before it). The FIFO is then sorted by
 * deadline and only its head is checked; the timer is re-armed lazily
 * when it fires.
 *
 * hiredis 0.14 frees a context on its own when the connection fails, and
 * redisAsyncFree() is only safe outside hiredis's call chain (inside a
 * reply callback it is deferred by REDIS_IN_CALLBACK, inside the connect
 * and disconnect callbacks it is a use-after-free). So this file frees a
 * context only from its own timer and event callbacks (conn_drop), and
 * decisions taken inside hiredis callbacks (a failed AUTH, fl_redis_free
 * from a user callback) are carried out by the one-shot ev_later event.
 *
 * Every command is sent with cmd_done() as its hiredis callback and a
 * cmd_t as privdata; hiredis calls each such callback exactly once (with
 * the reply, or NULL when the context is freed), which gives the
 * exactly-once guarantee of fl_redis_cmd.
 */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>

#include "fl_log.h"
#include "fl_redis.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define CMD_NAME_MAX   24

typedef enum { R_DOWN, R_CONNECTING, R_HANDSHAKE, R_UP } conn_state_t;

typedef struct cmd_s cmd_t;

struct cmd_s {
    fl_redis_t *r;
    fl_redis_cb cb;
    void       *ud;
    int64_t     timeout_ms; /* as asked, for the log */
    int64_t     deadline;   /* monotonic ms, >= the previous command's */
    int         internal;   /* the AUTH / PING of the handshake */
    char        name[CMD_NAME_MAX];
    cmd_t      *prev, *next;
};

struct fl_redis_s {
    struct event_base *base;
    char              *name; /* "ingest" */
    char              *host;
    int                port;
    char              *addr; /* "host:port" for the log */
    char              *password;
    int64_t            connect_timeout_ms;
    int64_t            command_timeout_ms;
    fl_redis_state_cb  on_state;
    void              *ud;

    redisAsyncContext *ac;
    conn_state_t       state;
    int64_t            connect_deadline;
    int64_t            backoff_ms;
    int                reported_up; /* on_state(r, 1) was the last call */

    cmd_t *head, *tail; /* sent, unanswered; oldest first */
    int    npending;    /* user commands in the FIFO */

    struct event *ev_deadline;
    int64_t       deadline_at; /* when ev_deadline fires, 0 = not armed */
    struct event *ev_retry;
    struct event *ev_later;

    int nest;           /* frames of this file on the stack for r */
    int dropping;       /* conn_drop() is freeing the context */
    int drop_requested; /* ev_later drops the connection */
    int free_requested; /* ev_later frees r */
};

static void conn_start(fl_redis_t *r);
static void conn_drop(fl_redis_t *r);
static void conn_down(fl_redis_t *r);
static int cmd_send(fl_redis_t *r, int64_t timeout_ms, fl_redis_cb cb, void *ud,
                    int internal, const char *buf, size_t len);
static void redis_destroy(fl_redis_t *r);

static struct event *event_or_die(struct event_base *base, int timer,
                                  event_callback_fn fn, void *arg)
{
    struct event *ev =
        timer ? evtimer_new(base, fn, arg) : event_new(base, -1, 0, fn, arg);

    if (ev == NULL) {
        fl_log(FL_LOG_CRIT, "event_new() for redis failed");
        abort();
    }
    return ev;
}

/* ---- deadlines ---- */

/* Make sure ev_deadline fires no later than at (monotonic ms). */
static void deadline_arm(fl_redis_t *r, int64_t at)
{
    int64_t        delta;
    struct timeval tv;

    if (r->deadline_at != 0 && r->deadline_at <= at)
        return;
    delta = at - fl_now_ms();
    if (delta < 0)
        delta = 0;
    tv.tv_sec = delta / 1000;
    tv.tv_usec = (delta % 1000) * 1000;
    evtimer_add(r->ev_deadline, &tv);
    r->deadline_at = at;
}

static void deadline_disarm(fl_redis_t *r)
{
    evtimer_del(r->ev_deadline);
    r->deadline_at = 0;
}

/* ev_deadline: the connect deadline or the oldest command's deadline has
 * passed (or the timer was armed for a command answered since). */
static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    fl_redis_t *r = arg;
    cmd_t      *c = r->head;
    int64_t     now = fl_now_ms();

    r->deadline_at = 0;
    if (r->ac == NULL || r->free_requested || r->drop_requested)
        return;

    if (r->state == R_CONNECTING) {
        if (now < r->connect_deadline) {
            deadline_arm(r, r->connect_deadline);
            return;
        }
        fl_error("connect() to redis %s (%s) timed out after %lld ms, "
                 "retrying in %lld ms",
                 r->addr, r->name, (long long)r->connect_timeout_ms,
                 (long long)r->backoff_ms);
        r->nest++;
        conn_drop(r);
        r->nest--;
        return;
    }

    if (c == NULL)
        return;
    if (now < c->deadline) {
        deadline_arm(r, c->deadline);
        return;
    }
    if (c->internal)
        fl_error("%s to redis %s (%s) timed out after %lld ms, retrying in "
                 "%lld ms",
                 c->name, r->addr, r->name, (long long)c->timeout_ms,
                 (long long)r->backoff_ms);
    else
        fl_error("redis command timed out after %lld ms on %s %s (%s, %d "
                 "pending), reconnecting in %lld ms",
                 (long long)c->timeout_ms, r->name, r->addr, c->name,
                 r->npending, (long long)r->backoff_ms);
    r->nest++;
    conn_drop(r);
    r->nest--;
}

/* ---- connection ---- */

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    fl_redis_t *r = arg;

    if (!r->free_requested && r->ac == NULL)
        conn_start(r);
}

static void retry_later(fl_redis_t *r)
{
    struct timeval tv;

    if (r->free_requested)
        return;
    tv.tv_sec = r->backoff_ms / 1000;
    tv.tv_usec = (r->backoff_ms % 1000) * 1000;
    evtimer_add(r->ev_retry, &tv);
    r->backoff_ms = fl_min(r->backoff_ms * 2, BACKOFF_MAX_MS);
}

/* The answer to the handshake (AUTH or PING): reported up on success. */
static void handshake_done(fl_redis_t *r, cmd_t *c, redisReply *reply)
{
    if (reply == NULL || r->free_requested)
        return; /* the disconnect path reports and retries */

    if (reply->type == REDIS_REPLY_ERROR) {
        fl_error("%s to redis %s (%s) failed: %s, retrying in %lld ms", c->name,
                 r->addr, r->name, reply->str, (long long)r->backoff_ms);
        /* inside hiredis: drop from ev_later */
        r->drop_requested = 1;
        event_active(r->ev_later, 0, 0);
        return;
    }

    r->state = R_UP;
    r->backoff_ms = BACKOFF_MIN_MS;
    r->reported_up = 1;
    fl_info("redis %s connected to %s", r->name, r->addr);
    if (r->on_state)
        r->on_state(r, 1, r->ud);
}

/* hiredis reply callback of every command: privdata is the cmd_t. Called
 * exactly once per command, with reply NULL when the context is freed. */
static void cmd_done(redisAsyncContext *ac, void *reply, void *privdata)
{
    cmd_t      *c = privdata;
    fl_redis_t *r = c->r;

    if (c->prev)
        c->prev->next = c->next;
    else
        r->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        r->tail = c->prev;

    r->nest++;
    if (c->internal) {
        handshake_done(r, c, reply);
    } else {
        r->npending--;
        if (c->cb)
            c->cb(r, r->free_requested ? NULL : reply, c->ud);
    }
    r->nest--;
    free(c);
}

/* hiredis connect callback, inside its write/read handler: the context
 * must not be freed here. On failure hiredis frees it after we return. */
static void on_connect(const redisAsyncContext *ac, int status)
{
    fl_redis_t *r = ac->data;
    const char *cmd;
    char       *buf;
    int         len;

    if (status != REDIS_OK) {
        r->ac = NULL;
        r->state = R_DOWN;
        deadline_disarm(r);
        if (!r->free_requested) {
            fl_error("connect() to redis %s (%s) failed: %s, retrying in "
                     "%lld ms",
                     r->addr, r->name, ac->errstr ? ac->errstr : "error",
                     (long long)r->backoff_ms);
            retry_later(r);
        }
        return;
    }
    if (r->free_requested)
        return;

    redisEnableKeepAlive(&r->ac->c);
    r->state = R_HANDSHAKE;
    if (r->password[0] != '\0') {
        cmd = "AUTH";
        len = redisFormatCommand(&buf, "AUTH %s", r->password);
    } else {
        cmd = "PING";
        len = redisFormatCommand(&buf, "PING");
    }
    if (len < 0 ||
        cmd_send(r, r->connect_timeout_ms, NULL, NULL, 1, buf, len) != FL_OK) {
        fl_error("sending %s to redis %s (%s) failed", cmd, r->addr, r->name);
        r->drop_requested = 1;
        event_active(r->ev_later, 0, 0);
    } else {
        /* connect + handshake share the connect deadline */
        r->tail->deadline = r->connect_deadline;
    }
    if (len >= 0)
        redisFreeCommand(buf);
}

/* hiredis disconnect callback, from inside its free of the context, after
 * the pending callbacks got NULL. Not called for a failed connect. */
static void on_disconnect(const redisAsyncContext *ac, int status)
{
    fl_redis_t *r = ac->data;

    r->ac = NULL;
    if (r->dropping || r->free_requested)
        return;

    fl_error("redis %s connection to %s lost: %s, reconnecting in %lld ms",
             r->name, r->addr, ac->err && ac->errstr ? ac->errstr : "closed",
             (long long)r->backoff_ms);
    r->nest++;
    conn_down(r);
    r->nest--;
}

/* Issue a non-blocking connect; on an immediate failure, retry later. */
static void conn_start(fl_redis_t *r)
{
    redisAsyncContext *ac;

    r->state = R_CONNECTING;
    r->connect_deadline = fl_now_ms() + r->connect_timeout_ms;
    ac = redisAsyncConnect(r->host, r->port);
    if (ac == NULL || ac->err) {
        fl_error("connect() to redis %s (%s) failed: %s, retrying in %lld ms",
                 r->addr, r->name, ac ? ac->errstr : "out of memory",
                 (long long)r->backoff_ms);
        if (ac)
            redisAsyncFree(ac);
        r->state = R_DOWN;
        retry_later(r);
        return;
    }
    ac->data = r;
    r->ac = ac;
    if (redisLibeventAttach(ac, r->base) != REDIS_OK) {
        fl_log(FL_LOG_CRIT, "redisLibeventAttach() failed");
        abort();
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    deadline_arm(r, r->connect_deadline);
    fl_debug("connecting to redis %s (%s)", r->addr, r->name);
}

/* The connection is gone (context freed or being freed by hiredis): tell
 * the owner once, and reconnect with backoff. */
static void conn_down(fl_redis_t *r)
{
    r->state = R_DOWN;
    deadline_disarm(r);
    if (r->reported_up && !r->free_requested) {
        r->reported_up = 0;
        if (r->on_state)
            r->on_state(r, 0, r->ud);
    }
    retry_later(r);
}

/* Free the context: every pending command gets NULL. Only from this
 * file's own event callbacks (never inside hiredis's call chain). */
static void conn_drop(fl_redis_t *r)
{
    redisAsyncContext *ac = r->ac;

    r->drop_requested = 0;
    if (ac == NULL)
        return;
    r->dropping = 1;
    redisAsyncFree(ac);
    r->dropping = 0;
    r->ac = NULL;
    conn_down(r);
}

/* ev_later: decisions taken inside hiredis, carried out outside it. */
static void on_later(evutil_socket_t fd, short what, void *arg)
{
    fl_redis_t *r = arg;

    if (r->free_requested) {
        redis_destroy(r);
        return;
    }
    if (r->drop_requested) {
        r->nest++;
        conn_drop(r);
        r->nest--;
        if (r->free_requested && r->nest == 0)
            redis_destroy(r);
    }
}

/* ---- API ---- */

fl_redis_t *fl_redis_new(struct event_base *base, const fl_config_t *cf,
                         const char *name, fl_redis_state_cb on_state, void *ud)
{
    fl_redis_t *r = fl_calloc(1, sizeof(*r));
    size_t      len;
    int         v6;

    r->base = base;
    r->name = fl_strdup(name);
    r->host = fl_strdup(cf->redis.host);
    r->port = cf->redis.port;
    r->password = fl_strdup(cf->redis.password ? cf->redis.password : "");
    r->connect_timeout_ms = cf->redis.connect_timeout_ms;
    r->command_timeout_ms = cf->redis.command_timeout_ms;
    r->on_state = on_state;
    r->ud = ud;
    r->backoff_ms = BACKOFF_MIN_MS;

    v6 = strchr(r->host, ':') != NULL;
    len = strlen(r->host) + 16;
    r->addr = fl_alloc(len);
    snprintf(r->addr, len, v6 ? "[%s]:%d" : "%s:%d", r->host, r->port);

    r->ev_deadline = event_or_die(base, 1, on_deadline, r);
    r->ev_retry = event_or_die(base, 1, on_retry, r);
    r->ev_later = event_or_die(base, 0, on_later, r);

    conn_start(r);
    return r;
}

int fl_redis_connected(const fl_redis_t *r)
{
    return r->state == R_UP && r->ac != NULL && !r->free_requested &&
           !r->drop_requested && !r->dropping &&
           !(r->ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING));
}

int fl_redis_pending(const fl_redis_t *r)
{
    return r->npending;
}

/*
 * Read the command name out of a formatted command ("*N\r\n$L\r\nNAME..")
 * into name (printable, truncated). Returns FL_ERROR for a command with
 * no arguments, which hiredis 0.14 would assert on.
 */
static int cmd_name(const char *buf, size_t len, char *name, size_t size)
{
    const char *end = buf + len, *p;
    long        n;
    size_t      i;

    p = memchr(buf, '\n', len);
    if (buf[0] != '*' || p == NULL || ++p >= end || *p != '$')
        return FL_ERROR;
    n = strtol(p + 1, NULL, 10);
    p = memchr(p, '\n', end - p);
    if (n <= 0 || p == NULL || ++p >= end)
        return FL_ERROR;
    for (i = 0; i < size - 1 && i < (size_t)n && p + i < end; i++)
        name[i] = isprint((unsigned char)p[i]) ? p[i] : '?';
    name[i] = '\0';
    return FL_OK;
}

/* Commands whose replies do not come back one per command: hiredis 0.14
 * keeps their callbacks for many replies (or none), which breaks the
 * exactly-once contract and the reply FIFO. */
static int cmd_refused(const char *name)
{
    static const char *const refused[] = {
        "subscribe",    "psubscribe",   "ssubscribe", "unsubscribe",
        "punsubscribe", "sunsubscribe", "monitor",
    };

    for (size_t i = 0; i < fl_nelem(refused); i++) {
        if (strcasecmp(name, refused[i]) == 0)
            return 1;
    }
    return 0;
}

/* Queue a formatted command (buf stays the caller's). FL_OK: cb will be
 * called exactly once. */
static int cmd_send(fl_redis_t *r, int64_t timeout_ms, fl_redis_cb cb, void *ud,
                    int internal, const char *buf, size_t len)
{
    cmd_t  *c = fl_calloc(1, sizeof(*c));
    int64_t now = fl_now_ms();

    if (cmd_name(buf, len, c->name, sizeof(c->name)) != FL_OK) {
        fl_error("redis command with no arguments refused (%s)", r->name);
        free(c);
        return FL_ERROR;
    }
    if (cmd_refused(c->name)) {
        fl_error("redis command %s refused on %s: not supported by "
                 "fl_redis",
                 c->name, r->name);
        free(c);
        return FL_ERROR;
    }
    c->r = r;
    c->cb = cb;
    c->ud = ud;
    c->internal = internal;
    c->timeout_ms = timeout_ms > 0 ? timeout_ms : r->command_timeout_ms;
    c->deadline = now + c->timeout_ms;
    if (r->tail && r->tail->deadline > c->deadline)
        c->deadline = r->tail->deadline;

    c->prev = r->tail;
    if (r->tail)
        r->tail->next = c;
    else
        r->head = c;
    r->tail = c;

    if (redisAsyncFormattedCommand(r->ac, cmd_done, c, buf, len) != REDIS_OK) {
        fl_error("redisAsyncFormattedCommand() of %s on redis %s (%s) "
                 "failed",
                 c->name, r->addr, r->name);
        r->tail = c->prev;
        if (r->tail)
            r->tail->next = NULL;
        else
            r->head = NULL;
        free(c);
        return FL_ERROR;
    }
    if (!internal)
        r->npending++;
    deadline_arm(r, c->deadline);
    return FL_OK;
}

int fl_redis_cmd(fl_redis_t *r, int64_t timeout_ms, fl_redis_cb cb, void *ud,
                 const char *fmt, ...)
{
    va_list ap;
    char   *buf;
    int     len, rc;

    if (!fl_redis_connected(r))
        return FL_ERROR;
    va_start(ap, fmt);
    len = redisvFormatCommand(&buf, fmt, ap);
    va_end(ap);
    if (len < 0) {
        fl_error("redisvFormatCommand(\"%s\") for redis %s failed", fmt,
                 r->name);
        return FL_ERROR;
    }
    rc = cmd_send(r, timeout_ms, cb, ud, 0, buf, len);
    redisFreeCommand(buf);
    return rc;
}

int fl_redis_cmdargv(fl_redis_t *r, int64_t timeout_ms, fl_redis_cb cb,
                     void *ud, int argc, const char **argv,
                     const size_t *argvlen)
{
    char *buf;
    int   len, rc;

    if (!fl_redis_connected(r))
        return FL_ERROR;
    len = redisFormatCommandArgv(&buf, argc, argv, argvlen);
    if (len < 0) {
        fl_error("redisFormatCommandArgv() for redis %s failed", r->name);
        return FL_ERROR;
    }
    rc = cmd_send(r, timeout_ms, cb, ud, 0, buf, len);
    redisFreeCommand(buf);
    return rc;
}

int fl_redis_cmdraw(fl_redis_t *r, int64_t timeout_ms, fl_redis_cb cb, void *ud,
                    const char *buf, size_t len)
{
    if (!fl_redis_connected(r))
        return FL_ERROR;
    return cmd_send(r, timeout_ms, cb, ud, 0, buf, len);
}

/* Free the context (pending callbacks get NULL) and r. Only outside
 * hiredis's call chain and outside r's callbacks. */
static void redis_destroy(fl_redis_t *r)
{
    int was_up = r->state == R_UP;

    r->free_requested = 1;
    r->nest++;
    if (r->ac) {
        r->dropping = 1;
        redisAsyncFree(r->ac);
        r->ac = NULL;
    }
    event_free(r->ev_deadline);
    event_free(r->ev_retry);
    event_free(r->ev_later);
    if (was_up)
        fl_info("redis %s connection to %s closed", r->name, r->addr);
    free(r->name);
    free(r->host);
    free(r->addr);
    free(r->password);
    free(r);
}

void fl_redis_free(fl_redis_t *r)
{
    if (r == NULL || r->free_requested)
        return;
    r->free_requested = 1;
    if (r->nest > 0) {
        /* inside one of r's callbacks: finish from ev_later */
        event_active(r->ev_later, 0, 0);
        return;
    }
    redis_destroy(r);
}
