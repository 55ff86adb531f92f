/*
 * fl_state.c - a device's state: GET /api/v1/devices/{id}/state and
 * PUT /api/v1/devices/{id}/desired.
 *
 * GET reads the shadow and the desired state from Redis (two HGETALLs,
 * pipelined: one round trip) and writes the answer without a JSON tree:
 * the values are JSON text already (fl_shadow.h), so they are copied as
 * they are.
 *
 *   {"device": id, "ts": newest value time | null, "online": bool,
 *    "last_seen": ms | null, "values": {metric: value},
 *    "value_ts": {metric: ms}, "reported": {...}, "desired": {...},
 *    "delta": {...}}
 *
 * A device with neither shadow nor desired state is looked up in the
 * registry: registered, it answers 200 with empty objects; unknown, 404.
 *
 * PUT replaces the desired state with the body (an object; a null value
 * leaves its key out), in one script run that also computes the delta
 * against the reported state; when the delta changed it is published on
 * devices/{id}/desired, retained (fl_shadow.h). The device must be in
 * the registry (404 otherwise).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl_api.h"
#include "fl_enc.h"
#include "fl_log.h"
#include "fl_shadow.h"

#define DESIRED_MAX_BYTES (64 * 1024)

static int st_exists;

static const char desired_lua[] = FL_DELTA_LUA
    /* KEYS[1] desired hash, KEYS[2] shadow hash; ARGV: key, json, ...
     * Replaces the d: fields, keeps _delta; returns {delta or false,
     * the delta now} */
    "local old = redis.call('HGET', KEYS[1], '_delta')\n"
    "redis.call('DEL', KEYS[1])\n"
    "if old then redis.call('HSET', KEYS[1], '_delta', old) end\n"
    "for i = 1, #ARGV, 2 do\n"
    "  redis.call('HSET', KEYS[1], 'd:' .. ARGV[i], ARGV[i + 1])\n"
    "end\n"
    "local changed = fl_delta(KEYS[1], KEYS[2])\n"
    "return {changed, redis.call('HGET', KEYS[1], '_delta') or '{}'}\n";

/* ---- GET state ---- */

typedef struct {
    fl_kv_t shadow, desired;
    int  replies, failed;
} get_t;

static void get_free(void *p)
{
    get_t *g = p;

    fl_kv_free(&g->shadow);
    fl_kv_free(&g->desired);
}

static void state_answer(fl_api_req_t *r)
{
    get_t    *g = r->ctx;
    fl_sbuf_t b = {0};

    fl_shadow_state_json(&b, r->id, &g->shadow, &g->desired,
                         fl_api.cf->ingest.online_window_ms);
    fl_api_json_text(r, 200, b.p, b.len);
    fl_sb_free(&b);
}

static void on_exists(fl_api_req_t *r, const PGresult *res, const char *err,
                      const char *sqlstate)
{
    if (res == NULL) {
        fl_api_db_error(r, err, sqlstate);
        return;
    }
    if (PQntuples(res) == 0) {
        fl_api_error(r, 404, "not_found", "no device \"%s\"", r->id);
        return;
    }
    state_answer(r);
}

static void on_hash(fl_redis_t *rd, redisReply *reply, void *ud)
{
    fl_api_req_t *r = ud;
    get_t        *g = r->ctx;
    const char   *p[1] = {r->id};

    (void)rd;
    /* replies come in order: the shadow's first */
    if (fl_kv_from(g->replies == 2 ? &g->shadow : &g->desired, reply) != FL_OK)
        g->failed = 1;
    if (--g->replies > 0)
        return;
    if (g->failed) {
        fl_api_error(r, 503, "unavailable", "redis unavailable");
        return;
    }
    if (g->shadow.n == 0 && g->desired.n == 0) {
        fl_api_query(r, st_exists, 1, p, on_exists);
        return;
    }
    state_answer(r);
}

static int state_get(fl_api_req_t *r)
{
    const char *pfx = fl_api.cf->redis.prefix;
    get_t      *g = fl_calloc(1, sizeof(*g));
    char        key[2][200];
    const char *argv[2][2] = {{"HGETALL", key[0]}, {"HGETALL", key[1]}};
    size_t      lens[2][2];

    r->ctx = g;
    r->ctx_free = get_free;
    g->replies = 2;
    snprintf(key[0], sizeof(key[0]), "%sshadow:%s", pfx, r->id);
    snprintf(key[1], sizeof(key[1]), "%sdesired:%s", pfx, r->id);
    for (int i = 0; i < 2; i++) {
        lens[i][0] = 7;
        lens[i][1] = strlen(key[i]);
    }
    /* replies come back in order: shadow first (on_hash) */
    if (fl_redis_cmdargv(fl_api.redis, 0, on_hash, r, 2, argv[0], lens[0]) !=
        FL_OK) {
        fl_api_error(r, 503, "unavailable", "redis unavailable");
        return FL_OK;
    }
    if (fl_redis_cmdargv(fl_api.redis, 0, on_hash, r, 2, argv[1], lens[1]) !=
        FL_OK) {
        /* the first reply will come (with an error when the connection
         * went away): let it answer */
        g->failed = 1;
        g->replies = 1;
    }
    return FL_AGAIN;
}

/* ---- PUT desired ---- */

typedef struct {
    cJSON *body;
    char  *delta; /* the delta now, for the answer */
} put_t;

static void put_free(void *p)
{
    put_t *u = p;

    cJSON_Delete(u->body);
    free(u->delta);
}

static void on_desired(fl_redis_t *rd, redisReply *reply, void *ud)
{
    fl_api_req_t *r = ud;
    put_t        *u = r->ctx;
    cJSON        *doc, *delta;

    (void)rd;
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY ||
        reply->elements != 2 || reply->element[1]->type != REDIS_REPLY_STRING) {
        if (reply && reply->type == REDIS_REPLY_ERROR)
            fl_error("desired state script: %s", reply->str);
        fl_api_error(r, 503, "unavailable", "redis unavailable");
        return;
    }
    if (reply->element[0]->type == REDIS_REPLY_STRING)
        fl_shadow_publish_delta(r->id, reply->element[0]->str,
                                reply->element[0]->len);
    delta = cJSON_Parse(reply->element[1]->str);
    doc = cJSON_CreateObject();
    cJSON_AddStringToObject(doc, "device", r->id);
    cJSON_AddItemToObject(doc, "desired", u->body);
    u->body = NULL;
    cJSON_AddItemToObject(doc, "delta", delta ? delta : cJSON_CreateObject());
    fl_api_json(r, 200, doc);
}

static void on_put_exists(fl_api_req_t *r, const PGresult *res, const char *err,
                          const char *sqlstate)
{
    put_t       *u = r->ctx;
    const char  *pfx = fl_api.cf->redis.prefix;
    int          n = cJSON_GetArraySize(u->body), argc = 0;
    const char **argv;
    size_t      *lens;
    char         keys[2][200];
    char       **vals;
    cJSON       *it;

    if (res == NULL) {
        fl_api_db_error(r, err, sqlstate);
        return;
    }
    if (PQntuples(res) == 0) {
        fl_api_error(r, 404, "not_found", "no device \"%s\"", r->id);
        return;
    }
    argv = fl_calloc((size_t)(5 + 2 * n), sizeof(char *));
    lens = fl_calloc((size_t)(5 + 2 * n), sizeof(size_t));
    vals = fl_calloc((size_t)n + 1, sizeof(char *));
    snprintf(keys[0], sizeof(keys[0]), "%sdesired:%s", pfx, r->id);
    snprintf(keys[1], sizeof(keys[1]), "%sshadow:%s", pfx, r->id);
    argv[argc++] = "EVAL";
    argv[argc++] = desired_lua;
    argv[argc++] = "2";
    argv[argc++] = keys[0];
    argv[argc++] = keys[1];
    cJSON_ArrayForEach(it, u->body)
    {
        if (cJSON_IsNull(it))
            continue;
        vals[(argc - 5) / 2] = cJSON_PrintUnformatted(it);
        argv[argc] = it->string;
        argv[argc + 1] = vals[(argc - 5) / 2];
        argc += 2;
    }
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    if (fl_redis_cmdargv(fl_api.redis, 0, on_desired, r, argc, argv, lens) !=
        FL_OK)
        fl_api_error(r, 503, "unavailable", "redis unavailable");
    for (int i = 0; i < n; i++)
        free(vals[i]);
    free(vals);
    free(argv);
    free(lens);
}

static int desired_put(fl_api_req_t *r)
{
    cJSON      *body = fl_api_body(r, 0), *it;
    put_t      *u;
    const char *p[1] = {r->id};
    char       *text;
    int         n = 0;

    if (body == NULL)
        return FL_OK;
    text = cJSON_PrintUnformatted(body);
    if (text == NULL || strlen(text) > DESIRED_MAX_BYTES) {
        free(text);
        cJSON_Delete(body);
        fl_api_error(r, 400, "bad_request",
                     "desired state larger than %d bytes", DESIRED_MAX_BYTES);
        return FL_OK;
    }
    free(text);
    cJSON_ArrayForEach(it, body)
    {
        if (it->string[0] == '\0' || strlen(it->string) > 1000 ||
            ++n > fl_api.cf->limits.max_metrics) {
            cJSON_Delete(body);
            fl_api_error(r, 400, "bad_request",
                         "desired keys must be non-empty, at most %d of them",
                         fl_api.cf->limits.max_metrics);
            return FL_OK;
        }
    }
    u = fl_calloc(1, sizeof(*u));
    u->body = body;
    r->ctx = u;
    r->ctx_free = put_free;
    fl_api_query(r, st_exists, 1, p, on_put_exists);
    return FL_AGAIN;
}

const fl_api_route_t fl_state_routes[] = {
    {"GET", "devices/{}/state", FL_SCOPE_READ, state_get},
    {"PUT", "devices/{}/desired", FL_SCOPE_WRITE, desired_put},
    {NULL, NULL, 0, NULL},
};

void fl_state_init(void)
{
    st_exists = fl_db_stmt("dev_exists", "SELECT 1 FROM devices WHERE id = $1");
}
