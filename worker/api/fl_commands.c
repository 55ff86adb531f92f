/*
 * fl_commands.c - commands to devices: POST and GET
 * /api/v1/devices/{id}/commands[/{cid}], the devices' answers
 * (fl_commands_ack, from the stream consumer) and the module that keeps
 * the rows' status moving (migration 5, commands).
 *
 * The life of a command:
 *
 *   POST      the body (a JSON object, without "id") is checked and the
 *             row is INSERTed as pending in one statement that also
 *             checks the registry (404 for an unknown device). Only once
 *             that committed is {"id": ..., body...} handed to the MQTT
 *             client (fl_mqtt_publish_ex, QoS 1, not retained, with
 *             ttl_s as the MQTT 5 Message Expiry Interval): so an answer
 *             can never arrive before its row exists. 202 with the row.
 *   sent      paho reports the broker's PUBACK on the loop: UPDATE to
 *             sent (only from pending: an answer may have come first).
 *             A publish paho reports failed becomes failed with error.
 *   acked /   the device answers on devices/{id}/commands/ack; the stream
 *   failed    consumer validates it (fl_ack_parse) and calls
 *             fl_commands_ack() before it acknowledges the stream entry.
 *   expired   slot 0 of every node runs, every second, an UPDATE of the
 *             open commands whose expires_at passed (idempotent, SKIP
 *             LOCKED: nodes do not wait on each other).
 *
 * MQTT not connected (or its publish queue full) when the row is in:
 * the row becomes failed with error and the answer is 503, with the
 * failed command beside the error object. A 503 command is never
 * published later and never left pending.
 *
 * Status updates that find the pool busy or down are retried by the
 * module's timer (TICK_MS) for UPD_ATTEMPTS ticks, then dropped with a
 * warning: the command keeps its older status (a device's answer still
 * moves it on). A worker that exits before a PUBACK came back leaves its
 * command pending (the broker may have it: the answer still counts; with
 * ttl_s it expires).
 *
 * Commands older than postgres.retention_days are deleted (slot 0, once
 * an hour); deleting a device leaves its commands to that.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "fl_api.h"
#include "fl_commands.h"
#include "fl_enc.h"
#include "fl_log.h"
#include "fl_mqtt.h"
#include "fl_payload.h"
#include "fl_routes.h"
#include "fl_scan.h"
#include "fl_worker.h"

#define LIST_DEFAULT 100
#define LIST_MAX     1000
#define TTL_MAX      2147483647L /* seconds: PostgreSQL integer */
#define BODY_DEPTH   64          /* nesting of a command body */
#define UUID_LEN     36
#define TICK_MS      1000
#define PURGE_MS     3600000 /* retention job period */
#define EXPIRE_BATCH "1000"  /* commands expired per statement */
#define UPD_ATTEMPTS 30      /* ticks a status update is retried */

static int st_create, st_fail, st_sent, st_get, st_list, st_ack, st_expire,
    st_purge;

/* ---- small helpers ---- */

/*
 * A new command id: a UUIDv7 (RFC 9562) in lowercase hex, 36 bytes + NUL.
 * The first 48 bits are the wall clock in ms, so ids sort by creation time
 * (the list's order); within a millisecond the 12-bit rand_a field counts
 * up (RFC 9562 method 1) node-wide - the last id's ms and count live in
 * fl_shm, taken by compare-and-swap - so two commands created in one
 * millisecond on two workers still list in the order they were created;
 * 62 random bits follow. A clock step back keeps the order, and a 4,097th
 * id in one millisecond borrows the next one. FL_ERROR when the system has
 * no randomness to give.
 */
static int command_id(char *out)
{
    volatile uint64_t *clk = &fl_shm->command_clock;
    unsigned char     b[16];
    size_t            got = 0;
    uint64_t          want = (uint64_t)fl_wall_ms() << 12, last, next;
    int64_t           ms;
    uint32_t          seq;
    static const char d[] = "0123456789abcdef";

    while (got < 10) {
        ssize_t n = getrandom(b + 6 + got, 10 - got, 0);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            fl_error("getrandom() failed: %s", strerror(errno));
            return FL_ERROR;
        }
        got += (size_t)n;
    }
    last = __atomic_load_n(clk, __ATOMIC_RELAXED);
    do
        next = want > last ? want : last + 1;
    while (!__atomic_compare_exchange_n(clk, &last, next, 0, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED));
    ms = (int64_t)(next >> 12);
    seq = (uint32_t)(next & 0xfff);
    for (int i = 0; i < 6; i++)
        b[i] = (unsigned char)(ms >> (40 - 8 * i));
    b[6] = (unsigned char)(0x70 | (seq >> 8));
    b[7] = (unsigned char)(seq & 0xff);
    b[8] = (unsigned char)(0x80 | (b[8] & 0x3f));
    for (int i = 0, o = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = d[b[i] >> 4];
        out[o++] = d[b[i] & 15];
        out[o] = '\0';
    }
    return FL_OK;
}

static int is_ws(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

/* A failure of the pool that another try may not meet: no answer from
 * the server, connection, resources, operator (statement_timeout), lock
 * and transaction-rollback (deadlock) classes. */
static int transient(const char *sqlstate)
{
    return sqlstate == NULL || sqlstate[0] == '\0' ||
           strncmp(sqlstate, "08", 2) == 0 || strncmp(sqlstate, "40", 2) == 0 ||
           strncmp(sqlstate, "53", 2) == 0 || strncmp(sqlstate, "55", 2) == 0 ||
           strncmp(sqlstate, "57", 2) == 0;
}

/* ---- the module's state ---- */

/* A status update that is not a request's: it runs on the pool when it
 * can, and is retried on the next ticks when it cannot. */
typedef struct upd_s upd_t;
struct upd_s {
    upd_t     *next;
    int        stmt; /* st_sent or st_fail */
    char       id[FL_COMMAND_ID_MAX + 1];
    char      *err; /* st_fail's error text */
    int        attempts;
    fl_db_q_t *q; /* in flight, or NULL: waiting for a tick */
};

/* A publish whose outcome paho has not reported yet. Not the request:
 * the outcome comes after the answer. */
typedef struct pubw_s pubw_t;
struct pubw_s {
    pubw_t *prev, *next;
    char    id[FL_COMMAND_ID_MAX + 1];
};

static struct {
    struct event *tick;
    upd_t        *upds;
    int           inflight; /* upds with a query running */
    pubw_t       *pubs;
    fl_db_q_t    *expire_q, *purge_q;
    int64_t       next_purge_ms;
    int           janitor; /* this worker runs expiry and retention */
} cm;

static void on_upd(const PGresult *res, const char *err, const char *sqlstate,
                   void *ud)
{
    upd_t *u = ud;

    u->q = NULL;
    cm.inflight--;
    if (fl_worker.draining)
        fl_worker_drain_check();
    if (res == NULL && transient(sqlstate) && u->attempts < UPD_ATTEMPTS)
        return; /* the next tick tries again */
    if (res == NULL)
        fl_warn("command %s: status update dropped: %s", u->id,
                err ? err : "?");
    u->attempts = -1; /* done: the next tick frees it */
}

static void upd_run(upd_t *u)
{
    const char *p[2] = {u->id, u->err};

    u->attempts++;
    if (fl_db_query(fl_api.db, u->stmt, u->stmt == st_fail ? 2 : 1, p, on_upd,
                    u, &u->q) == FL_OK)
        cm.inflight++;
    else if (u->attempts >= UPD_ATTEMPTS) {
        fl_warn("command %s: status update dropped: database unavailable",
                u->id);
        u->attempts = -1;
    }
}

static void upd_new(int stmt, const char *id, const char *err)
{
    upd_t *u = fl_calloc(1, sizeof(*u));

    u->stmt = stmt;
    snprintf(u->id, sizeof(u->id), "%s", id);
    u->err = err ? fl_strdup(err) : NULL;
    u->next = cm.upds;
    cm.upds = u;
    upd_run(u);
}

static void upd_free(upd_t *u)
{
    if (u->q)
        fl_db_cancel(fl_api.db, u->q);
    free(u->err);
    free(u);
}

/* paho's outcome of a command's publish, on the loop */
static void on_publish(int ok, const char *err, void *ud)
{
    pubw_t *w = ud;
    char    why[256];

    if (w->prev)
        w->prev->next = w->next;
    else
        cm.pubs = w->next;
    if (w->next)
        w->next->prev = w->prev;
    if (ok) {
        upd_new(st_sent, w->id, NULL);
    } else {
        snprintf(why, sizeof(why), "not delivered to the broker: %s",
                 err ? err : "publish failed");
        fl_warn("command %s: %s", w->id, why);
        upd_new(st_fail, w->id, why);
    }
    free(w);
}

/* ---- POST /devices/{id}/commands ---- */

typedef struct {
    char    *payload; /* {"id": ..., body...}: what the device gets */
    size_t   len;
    uint32_t ttl_s;
    char     id[UUID_LEN + 1];
    char     why[96]; /* the 503's reason */
} post_t;

static void post_free(void *p)
{
    post_t *c = p;

    free(c->payload);
}

static void on_failed(fl_api_req_t *r, const PGresult *res, const char *err,
                      const char *sqlstate)
{
    post_t *c = r->ctx;
    cJSON  *doc = cJSON_CreateObject(), *e = cJSON_CreateObject(), *cmd;
    char    msg[256];

    (void)err, (void)sqlstate;
    snprintf(msg, sizeof(msg), "%s: command %s not sent (recorded as failed)",
             c->why, c->id);
    cJSON_AddStringToObject(e, "code", "unavailable");
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddItemToObject(doc, "error", e);
    /* the failed row, so that the caller knows the id it may look up */
    if (res && PQntuples(res) == 1 &&
        (cmd = cJSON_Parse(PQgetvalue(res, 0, 0))) != NULL)
        cJSON_AddItemToObject(doc, "command", cmd);
    fl_api_json(r, 503, doc);
}

static void on_created(fl_api_req_t *r, const PGresult *res, const char *err,
                       const char *sqlstate)
{
    post_t     *c = r->ctx;
    pubw_t     *w;
    char        topic[FL_API_ID_MAX + 32], loc[2 * FL_API_ID_MAX + 64];
    const char *p[2];
    int         rc;

    if (res == NULL) {
        fl_api_db_error(r, err, sqlstate);
        return;
    }
    if (PQntuples(res) == 0) {
        fl_api_error(r, 404, "not_found", "no device \"%s\"", r->id);
        return;
    }
    snprintf(topic, sizeof(topic), "devices/%s/commands", r->id);
    w = fl_calloc(1, sizeof(*w));
    snprintf(w->id, sizeof(w->id), "%s", c->id);
    rc = fl_mqtt_publish_ex(topic, c->payload, c->len, 1, 0, c->ttl_s,
                            on_publish, w);
    if (rc == FL_OK) {
        w->next = cm.pubs;
        if (cm.pubs)
            cm.pubs->prev = w;
        cm.pubs = w;
        snprintf(loc, sizeof(loc), "/api/v1/devices/%s/commands/%s", r->id,
                 c->id);
        fl_http_add_header(r->http, "Location", loc);
        fl_api_json_text(r, 202, PQgetvalue(res, 0, 0),
                         (size_t)PQgetlength(res, 0, 0));
        return;
    }
    free(w);
    snprintf(c->why, sizeof(c->why), "%s",
             rc == FL_AGAIN ? "the MQTT publish queue is full"
                            : "not connected to the MQTT broker");
    p[0] = c->id;
    p[1] = c->why;
    fl_api_query(r, st_fail, 2, p, on_failed);
}

/* ?ttl_s=N: 1..TTL_MAX seconds. FL_ERROR with the 400 sent. */
static int ttl_param(fl_api_req_t *r, uint32_t *ttl)
{
    char buf[24], *end;
    int  bad = 0;
    long v;

    *ttl = 0;
    if (fl_api_param(r, "ttl_s", buf, sizeof(buf), &bad) == NULL)
        return bad ? FL_ERROR : FL_OK;
    errno = 0;
    v = strtol(buf, &end, 10);
    if (buf[0] < '0' || buf[0] > '9' || *end || errno || v < 1 || v > TTL_MAX) {
        fl_api_error(r, 400, "bad_request",
                     "ttl_s must be a whole number of seconds, 1 to %ld",
                     TTL_MAX);
        return FL_ERROR;
    }
    *ttl = (uint32_t)v;
    return FL_OK;
}

static int command_post(fl_api_req_t *r)
{
    const fl_config_t *cf = fl_api.cf;
    cJSON             *body;
    post_t            *c;
    fl_scan_t          s;
    char               msg[FL_REJECT_MSGLEN], ttl_s[16];
    const char        *raw, *rest, *p[4];
    size_t             len, end, restlen;
    uint32_t           ttl;

    if (ttl_param(r, &ttl) != FL_OK)
        return FL_OK;
    if ((body = fl_api_body(r, 0)) == NULL)
        return FL_OK;
    if (cJSON_GetObjectItemCaseSensitive(body, "id") != NULL) {
        cJSON_Delete(body);
        fl_api_error(r, 400, "bad_request",
                     "\"id\" is set by fleetd: leave it out of the body");
        return FL_OK;
    }
    cJSON_Delete(body);

    /* The body goes to the device as it came (exact numbers, key order),
     * so it is held to strict JSON first: cJSON alone accepts more. */
    raw = (const char *)evbuffer_pullup(r->http->body, -1);
    len = evbuffer_get_length(r->http->body);
    memset(&s, 0, sizeof(s));
    s.p = (const unsigned char *)raw;
    s.len = len;
    s.msg = msg;
    s.msg_size = sizeof(msg);
    if (fl_scan(&s, BODY_DEPTH) != FL_OK) {
        fl_api_error(r, 400, "bad_json", "the body is not strict JSON: %s",
                     msg);
        return FL_OK;
    }
    /* {"id":"...", then what followed the body's '{' (the scan passed:
     * whitespace, then '{', then the members or '}') */
    for (end = len; end > 0 && is_ws(raw[end - 1]); end--)
        ;
    for (rest = raw; rest < raw + end && *rest != '{'; rest++)
        ;
    for (rest++; rest < raw + end && is_ws(*rest); rest++)
        ;
    restlen = (size_t)(raw + end - rest);

    c = fl_calloc(1, sizeof(*c));
    r->ctx = c;
    r->ctx_free = post_free;
    if (command_id(c->id) != FL_OK) {
        fl_api_error(r, 500, "internal", "cannot make a command id");
        return FL_OK;
    }
    c->ttl_s = ttl;
    c->payload = fl_alloc(restlen + UUID_LEN + 16);
    c->len = (size_t)sprintf(c->payload, "{\"id\":\"%s\"%s", c->id,
                             restlen > 0 && *rest == '}' ? "" : ",");
    memcpy(c->payload + c->len, rest, restlen);
    c->len += restlen;
    c->payload[c->len] = '\0';
    if ((int64_t)c->len > cf->limits.max_payload_bytes) {
        fl_api_error(r, 413, "too_large",
                     "a command with its id is %zu bytes, more than "
                     "limits.max_payload_bytes (%lld)",
                     c->len, (long long)cf->limits.max_payload_bytes);
        return FL_OK;
    }

    snprintf(ttl_s, sizeof(ttl_s), "%u", ttl);
    p[0] = c->id;
    p[1] = r->id;
    p[2] = c->payload; /* the statement stores it without the "id" */
    p[3] = ttl ? ttl_s : NULL;
    fl_api_query(r, st_create, 4, p, on_created);
    return FL_AGAIN;
}

/* ---- GET /devices/{id}/commands[/{cid}] ---- */

static void on_one(fl_api_req_t *r, const PGresult *res, const char *err,
                   const char *sqlstate)
{
    if (res == NULL) {
        fl_api_db_error(r, err, sqlstate);
        return;
    }
    if (PQntuples(res) == 0) {
        fl_api_error(r, 404, "not_found", "no command \"%s\" for device \"%s\"",
                     r->id2, r->id);
        return;
    }
    fl_api_json_text(r, 200, PQgetvalue(res, 0, 0),
                     (size_t)PQgetlength(res, 0, 0));
}

static int command_get(fl_api_req_t *r)
{
    const char *p[2] = {r->id, r->id2};

    fl_api_query(r, st_get, 2, p, on_one);
    return FL_AGAIN;
}

/* rows: (device exists, command JSON or NULL, command id, limit) */
static void on_list(fl_api_req_t *r, const PGresult *res, const char *err,
                    const char *sqlstate)
{
    fl_sbuf_t b = {0};
    int       n, k = 0;

    if (res == NULL) {
        fl_api_db_error(r, err, sqlstate);
        return;
    }
    n = PQntuples(res);
    if (n == 0 || strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
        fl_api_error(r, 404, "not_found", "no device \"%s\"", r->id);
        return;
    }
    fl_sb_lit(&b, "{\"device\":");
    fl_sb_jstr(&b, r->id);
    fl_sb_lit(&b, ",\"commands\":[");
    for (int i = 0; i < n; i++) {
        if (PQgetisnull(res, i, 1))
            continue;
        if (k++)
            fl_sb_lit(&b, ",");
        fl_sb_put(&b, PQgetvalue(res, i, 1), (size_t)PQgetlength(res, i, 1));
    }
    fl_sb_lit(&b, "],\"next\":");
    if (k > 0 && k == atoi(PQgetvalue(res, 0, 3))) {
        /* a full page: there may be older ones after its last id */
        char next[FL_API_CURSOR_MAX];

        fl_api_cursor(PQgetvalue(res, n - 1, 2), next);
        fl_sb_jstr(&b, next);
    } else {
        fl_sb_lit(&b, "null");
    }
    fl_sb_lit(&b, "}");
    fl_api_json_text(r, 200, b.p, b.len);
    fl_sb_free(&b);
}

static int command_list(fl_api_req_t *r)
{
    static const char *const statuses[] = {"pending", "sent", "acked", "failed",
                                           "expired"};
    char        cur[2 * FL_API_ID_MAX + 4], after[FL_API_ID_MAX + 1];
    char        status[16], lim[16], limit_s[16];
    const char *p[4];
    int         bad = 0, limit = LIST_DEFAULT, known = 0;

    p[0] = r->id;
    p[1] = fl_api_param(r, "cursor", cur, sizeof(cur), &bad);
    if (bad)
        return FL_OK;
    if (p[1]) {
        if (fl_api_cursor_id(cur, after) != FL_OK) {
            fl_api_error(r, 400, "bad_request",
                         "cursor is not one this API gave");
            return FL_OK;
        }
        p[1] = after;
    }
    p[2] = fl_api_param(r, "status", status, sizeof(status), &bad);
    if (bad)
        return FL_OK;
    for (size_t i = 0; p[2] && i < fl_nelem(statuses); i++)
        known |= strcmp(p[2], statuses[i]) == 0;
    if (p[2] && !known) {
        fl_api_error(r, 400, "bad_request",
                     "status must be pending, sent, acked, failed or "
                     "expired");
        return FL_OK;
    }
    if (fl_api_param(r, "limit", lim, sizeof(lim), &bad)) {
        char *end;
        long  v = strtol(lim, &end, 10);

        if (lim[0] == '\0' || *end || v < 1 || v > LIST_MAX) {
            fl_api_error(r, 400, "bad_request", "limit must be 1 to %d",
                         LIST_MAX);
            return FL_OK;
        }
        limit = (int)v;
    }
    if (bad)
        return FL_OK;
    snprintf(limit_s, sizeof(limit_s), "%d", limit);
    p[3] = limit_s;
    fl_api_query(r, st_list, 4, p, on_list);
    return FL_AGAIN;
}

const fl_api_route_t fl_commands_routes[] = {
    {"GET", "devices/{}/commands", FL_SCOPE_READ, command_list},
    {"POST", "devices/{}/commands", FL_SCOPE_WRITE, command_post},
    {"GET", "devices/{}/commands/{}", FL_SCOPE_READ, command_get},
    {NULL, NULL, 0, NULL},
};

/* ---- the devices' answers ---- */

struct fl_cmd_acks_s {
    fl_db_q_t     *q;
    fl_cmd_ack_t  *acks;
    int            n;
    fl_cmd_acks_cb cb;
    void          *ud;
};

/* rows: (index into acks, outcome) */
static void on_acks(const PGresult *res, const char *err, const char *sqlstate,
                    void *ud)
{
    fl_cmd_acks_t *h = ud;
    fl_cmd_acks_cb cb = h->cb;
    void          *cud = h->ud;
    int            rc = FL_OK;
    char           why[256];

    if (res == NULL) {
        rc = transient(sqlstate) ? FL_AGAIN : FL_ERROR;
        snprintf(why, sizeof(why), "%s", err ? err : "database error");
    } else {
        for (int i = 0; i < PQntuples(res); i++) {
            int         k = atoi(PQgetvalue(res, i, 0));
            const char *o = PQgetvalue(res, i, 1);

            if (k < 0 || k >= h->n)
                continue;
            h->acks[k].outcome = strcmp(o, "applied") == 0   ? FL_ACK_APPLIED
                                 : strcmp(o, "unknown") == 0 ? FL_ACK_UNKNOWN
                                 : strcmp(o, "other") == 0 ? FL_ACK_OTHER_DEVICE
                                                           : FL_ACK_ANSWERED;
        }
    }
    free(h);
    cb(rc, rc == FL_OK ? NULL : why, cud);
}

int fl_commands_ack(fl_cmd_ack_t *acks, int n, fl_cmd_acks_cb cb, void *ud,
                    fl_cmd_acks_t **handle)
{
    fl_sbuf_t      b = {0};
    fl_cmd_acks_t *h;
    const char    *p[1];
    int            rc;

    /* one jsonb parameter: [{"i", "id", "device", "ok", "p": payload}] */
    fl_sb_lit(&b, "[");
    for (int i = 0; i < n; i++) {
        acks[i].outcome = FL_ACK_ANSWERED;
        if (i)
            fl_sb_lit(&b, ",");
        fl_sb_lit(&b, "{\"i\":");
        fl_sb_i64(&b, i);
        fl_sb_lit(&b, ",\"id\":");
        fl_sb_jstr(&b, acks[i].id);
        fl_sb_lit(&b, ",\"device\":");
        fl_sb_jstr(&b, acks[i].device);
        if (acks[i].ok)
            fl_sb_lit(&b, ",\"ok\":true,\"p\":");
        else
            fl_sb_lit(&b, ",\"ok\":false,\"p\":");
        fl_sb_put(&b, acks[i].json, acks[i].len);
        fl_sb_lit(&b, "}");
    }
    fl_sb_put(&b, "]", 2); /* and the NUL */
    h = fl_calloc(1, sizeof(*h));
    h->acks = acks;
    h->n = n;
    h->cb = cb;
    h->ud = ud;
    p[0] = b.p;
    rc = fl_db_query(fl_api.db, st_ack, 1, p, on_acks, h, &h->q);
    fl_sb_free(&b);
    if (rc != FL_OK) {
        free(h);
        return FL_AGAIN;
    }
    *handle = h;
    return FL_OK;
}

void fl_commands_ack_cancel(fl_cmd_acks_t *h)
{
    if (h == NULL)
        return;
    fl_db_cancel(fl_api.db, h->q);
    free(h);
}

/* ---- the module: retries, expiry, retention ---- */

static void on_expired(const PGresult *res, const char *err,
                       const char *sqlstate, void *ud)
{
    (void)sqlstate, (void)ud;
    cm.expire_q = NULL;
    if (res == NULL)
        fl_warn("expiring commands failed: %s", err ? err : "?");
    else if (strcmp(PQcmdTuples((PGresult *)res), "0") != 0)
        fl_info("%s commands expired", PQcmdTuples((PGresult *)res));
}

static void on_purged(const PGresult *res, const char *err,
                      const char *sqlstate, void *ud)
{
    (void)sqlstate, (void)ud;
    cm.purge_q = NULL;
    if (res == NULL)
        fl_warn("deleting old commands failed: %s", err ? err : "?");
    else if (strcmp(PQcmdTuples((PGresult *)res), "0") != 0)
        fl_info("%s commands older than postgres.retention_days deleted",
                PQcmdTuples((PGresult *)res));
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    upd_t     **up = &cm.upds;
    char        days[16];
    const char *p[1];

    (void)fd, (void)what, (void)arg;
    while (*up) {
        upd_t *u = *up;

        if (u->attempts < 0) {
            *up = u->next;
            upd_free(u);
            continue;
        }
        if (u->q == NULL && fl_db_ready(fl_api.db))
            upd_run(u);
        up = &u->next;
    }
    if (!cm.janitor || !fl_db_ready(fl_api.db))
        return;
    if (cm.expire_q == NULL &&
        fl_db_query(fl_api.db, st_expire, 0, NULL, on_expired, NULL,
                    &cm.expire_q) != FL_OK)
        cm.expire_q = NULL;
    if (cm.purge_q == NULL && fl_now_ms() >= cm.next_purge_ms) {
        cm.next_purge_ms = fl_now_ms() + PURGE_MS;
        snprintf(days, sizeof(days), "%d",
                 fl_worker.cf->postgres.retention_days);
        p[0] = days;
        if (fl_db_query(fl_api.db, st_purge, 1, p, on_purged, NULL,
                        &cm.purge_q) != FL_OK)
            cm.purge_q = NULL;
    }
}

static int commands_init(fl_worker_t *w)
{
    struct timeval tv = {TICK_MS / 1000, (TICK_MS % 1000) * 1000};

    memset(&cm, 0, sizeof(cm));
    /* one worker per node is enough for the idempotent jobs; slot 0 is
     * always there (it is restarted when it dies) */
    cm.janitor = w->slot == 0;
    cm.tick = event_new(w->base, -1, EV_PERSIST, on_tick, NULL);
    evtimer_add(cm.tick, &tv);
    return FL_OK;
}

static void commands_stop(fl_worker_t *w, int fast)
{
    (void)w, (void)fast;
}

/* status updates running: a drain lets them commit */
static int commands_busy(fl_worker_t *w)
{
    (void)w;
    return cm.inflight;
}

/* After fl_mqtt's destroy (no publish outcome comes any more) and before
 * the API's (the pool is still there to cancel on). */
static void commands_destroy(fl_worker_t *w)
{
    (void)w;
    event_free(cm.tick);
    while (cm.upds) {
        upd_t *u = cm.upds;

        cm.upds = u->next;
        if (u->attempts >= 0 && u->q == NULL)
            fl_warn("command %s: status update not written (worker "
                    "exiting)",
                    u->id);
        upd_free(u);
    }
    while (cm.pubs) {
        pubw_t *pw = cm.pubs;

        cm.pubs = pw->next;
        free(pw);
    }
    if (cm.expire_q)
        fl_db_cancel(fl_api.db, cm.expire_q);
    if (cm.purge_q)
        fl_db_cancel(fl_api.db, cm.purge_q);
    memset(&cm, 0, sizeof(cm));
}

const fl_module_t fl_commands_module = {
    "commands",    commands_init,    commands_stop,
    commands_busy, commands_destroy, NULL,
};

/* ---- statements ---- */

void fl_commands_init(void)
{
    /* the row only for a device in the registry; the body without the
     * "id" fleetd put in front of it */
    st_create = fl_db_stmt(
        "cmd_create",
        "INSERT INTO commands AS c (id, device_id, body, ttl_s, expires_at) "
        "SELECT $1, d.id, $3::jsonb - 'id', $4::int, "
        "now() + make_interval(secs => $4::int) "
        "FROM devices d WHERE d.id = $2 "
        "RETURNING fleetd_command_json(c)::text");
    st_fail = fl_db_stmt("cmd_fail",
                         "UPDATE commands c SET status = 'failed', error = $2 "
                         "WHERE id = $1 AND status = 'pending' "
                         "RETURNING fleetd_command_json(c)::text");
    st_sent = fl_db_stmt(
        "cmd_sent",
        "UPDATE commands SET sent_at = coalesce(sent_at, now()), "
        "status = CASE WHEN status = 'pending' THEN 'sent' ELSE status END "
        "WHERE id = $1");
    st_get = fl_db_stmt("cmd_get",
                        "SELECT fleetd_command_json(c)::text FROM commands c "
                        "WHERE c.id = $2 AND c.device_id = $1");
    st_list = fl_db_stmt(
        "cmd_list",
        "SELECT d.id IS NOT NULL, c.j, c.id, $4::int "
        "FROM (SELECT $1::text AS dev) a "
        "LEFT JOIN devices d ON d.id = a.dev "
        "LEFT JOIN LATERAL (SELECT fleetd_command_json(x)::text AS j, x.id "
        "  FROM commands x WHERE x.device_id = a.dev "
        "  AND ($2::text IS NULL OR x.id < $2::text) "
        "  AND ($3::text IS NULL OR x.status = $3::text) "
        "  ORDER BY x.id DESC LIMIT $4::int) c ON true "
        "ORDER BY c.id DESC");
    /* The answers of a batch: each command takes the first one (lowest
     * i) while it has none. The outcome of each answer is read from the
     * rows as they were before the UPDATE (one snapshot). */
    st_ack = fl_db_stmt(
        "cmd_ack", "WITH x AS (SELECT (e->>'i')::int AS i, e->>'id' AS id, "
                   "  e->>'device' AS device, (e->>'ok')::boolean AS ok, "
                   "  e->'p'->'result' AS result "
                   "  FROM jsonb_array_elements($1::jsonb) AS e), "
                   "a AS (SELECT DISTINCT ON (id, device) * FROM x "
                   "  ORDER BY id, device, i), "
                   "u AS (UPDATE commands c SET "
                   "  status = CASE WHEN a.ok THEN 'acked' ELSE 'failed' END, "
                   "  result = a.result, error = NULL, answered_at = now(), "
                   "  sent_at = coalesce(c.sent_at, now()) "
                   "  FROM a WHERE c.id = a.id AND c.device_id = a.device "
                   "  AND c.answered_at IS NULL RETURNING a.i) "
                   "SELECT x.i, CASE WHEN u.i IS NOT NULL THEN 'applied' "
                   "  WHEN c.id IS NULL THEN 'unknown' "
                   "  WHEN c.device_id <> x.device THEN 'other' "
                   "  ELSE 'answered' END "
                   "FROM x LEFT JOIN u ON u.i = x.i "
                   "LEFT JOIN commands c ON c.id = x.id");
    st_expire = fl_db_stmt(
        "cmd_expire",
        "UPDATE commands SET status = 'expired' WHERE id IN ("
        "SELECT id FROM commands WHERE status IN ('pending', 'sent') "
        "AND expires_at <= now() ORDER BY expires_at "
        "LIMIT " EXPIRE_BATCH " FOR UPDATE SKIP LOCKED)");
    st_purge = fl_db_stmt("cmd_purge",
                          "DELETE FROM commands WHERE created_at < now() - "
                          "make_interval(days => $1::int)");
}
