/*
 * fl_devices.c - the device registry: /api/v1/devices[/{id}].
 *
 * Rows live in PostgreSQL (migration 4, devices); PostgreSQL also builds
 * each device's JSON (fleetd_device_json), so a read is one prepared
 * statement and the text goes out as it came. Whether a device is online
 * comes from its shadow in Redis (last_seen within ingest.online_window),
 * read with one HMGET per listed device, pipelined.
 *
 * Choices where the contract is silent (README):
 * - POST of an id that only exists because the device published first
 *   (auto = true) takes it over (201, auto becomes false); of a
 *   registered one, 409.
 * - PATCH merges: name, type and tags are replaced when given; metadata
 *   keys are merged, a key set to null is removed (RFC 7386 at the top
 *   level). A PATCH also ends auto.
 * - DELETE removes the row, the shadow and the desired state; the
 *   history stays until retention unless ?purge=true.
 * - GET /devices: ?type=, ?tag=, ?q= (name prefix), ?online=true|false,
 *   ?limit= (1..1000, default 100), ?cursor= (the "next" of the page
 *   before). Pages follow the id; with ?online a page may hold fewer
 *   devices than the limit (the filter needs Redis): follow "next" until
 *   it is null.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl_api.h"
#include "fl_log.h"

#define LIST_DEFAULT 100
#define LIST_MAX     1000
#define NAME_MAX_LEN 256
#define TYPE_MAX_LEN 64
#define TAGS_MAX     32
#define META_MAX     (64 * 1024)

static int st_get, st_create, st_patch, st_delete, st_purge, st_list;

/* ---- small helpers ---- */

/* A tag: the device id syntax. */
static int tag_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > FL_API_ID_MAX)
        return 0;
    return strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                     "0123456789_.:-") == n;
}

/* "{a,b}" for a text[] parameter (tags are id-like: nothing to quote) */
static void tags_literal(const cJSON *tags, char *out, size_t len)
{
    const cJSON *t;
    size_t       o = 0;

    out[o++] = '{';
    cJSON_ArrayForEach(t, tags)
    {
        o += (size_t)snprintf(out + o, len - o, "%s%s", o > 1 ? "," : "",
                              t->valuestring);
    }
    snprintf(out + o, len - o, "}");
}

/*
 * Check the fields a POST or PATCH may carry and turn them into the
 * statement's text parameters (NULL when absent). FL_ERROR with the 400
 * sent.
 */
typedef struct {
    const char *name, *type;
    char        tags[TAGS_MAX * (FL_API_ID_MAX + 1) + 3];
    int         has_tags;
    char       *metadata; /* cJSON_Print, freed by the caller */
} fields_t;

static int fields_from(fl_api_req_t *r, const cJSON *body, fields_t *f,
                       int patch)
{
    const cJSON *it, *t;

    memset(f, 0, sizeof(*f));
    cJSON_ArrayForEach(it, body)
    {
        const char *k = it->string;

        if (strcmp(k, "id") == 0) {
            if (patch) {
                fl_api_error(r, 400, "bad_request", "\"id\" cannot be changed");
                return FL_ERROR;
            }
        } else if (strcmp(k, "name") == 0 || strcmp(k, "type") == 0) {
            size_t max = k[0] == 'n' ? NAME_MAX_LEN : TYPE_MAX_LEN;

            if (!cJSON_IsString(it) || strlen(it->valuestring) > max) {
                fl_api_error(r, 400, "bad_request",
                             "\"%s\" must be a string of at most %zu bytes", k,
                             max);
                return FL_ERROR;
            }
            if (k[0] == 'n')
                f->name = it->valuestring;
            else
                f->type = it->valuestring;
        } else if (strcmp(k, "tags") == 0) {
            int n = 0;

            if (!cJSON_IsArray(it)) {
                fl_api_error(r, 400, "bad_request",
                             "\"tags\" must be an array of strings");
                return FL_ERROR;
            }
            cJSON_ArrayForEach(t, it)
            {
                if (!cJSON_IsString(t) || !tag_ok(t->valuestring) ||
                    ++n > TAGS_MAX) {
                    fl_api_error(r, 400, "bad_request",
                                 "\"tags\": at most %d tags, each "
                                 "[A-Za-z0-9_.:-]{1,64}",
                                 TAGS_MAX);
                    return FL_ERROR;
                }
            }
            tags_literal(it, f->tags, sizeof(f->tags));
            f->has_tags = 1;
        } else if (strcmp(k, "metadata") == 0) {
            if (!cJSON_IsObject(it)) {
                fl_api_error(r, 400, "bad_request",
                             "\"metadata\" must be a JSON object");
                return FL_ERROR;
            }
            f->metadata = cJSON_PrintUnformatted(it);
            if (f->metadata == NULL || strlen(f->metadata) > META_MAX) {
                free(f->metadata);
                f->metadata = NULL;
                fl_api_error(r, 400, "bad_request",
                             "\"metadata\" is larger than %d bytes", META_MAX);
                return FL_ERROR;
            }
        } else {
            fl_api_error(r, 400, "bad_request", "unknown field \"%.64s\"", k);
            return FL_ERROR;
        }
    }
    return FL_OK;
}

/* ---- one device ---- */

/* A statement answered with the device's JSON in row 0 (or no row). */
static void on_device(fl_api_req_t *r, const PGresult *res, const char *err,
                      const char *sqlstate)
{
    int status = r->http->method == HTTP_POST ? 201 : 200;

    if (res == NULL) {
        if (sqlstate && strcmp(sqlstate, "23514") == 0)
            fl_api_error(r, 400, "bad_request", "invalid device: %s", err);
        else
            fl_api_db_error(r, err, sqlstate);
        return;
    }
    if (PQntuples(res) == 0) {
        if (r->http->method == HTTP_POST)
            fl_api_error(r, 409, "exists", "device \"%s\" exists", r->id);
        else
            fl_api_error(r, 404, "not_found", "no device \"%s\"", r->id);
        return;
    }
    fl_api_json_text(r, status, PQgetvalue(res, 0, 0),
                     (size_t)PQgetlength(res, 0, 0));
}

static int device_get(fl_api_req_t *r)
{
    const char *p[1] = {r->id};

    fl_api_query(r, st_get, 1, p, on_device);
    return FL_AGAIN;
}

static int device_create(fl_api_req_t *r)
{
    cJSON      *body = fl_api_body(r, 0), *id;
    fields_t    f;
    const char *p[5];

    if (body == NULL)
        return FL_OK;
    id = cJSON_GetObjectItemCaseSensitive(body, "id");
    if (!cJSON_IsString(id) ||
        strspn(id->valuestring, "abcdefghijklmnopqrstuvwxyz"
                                "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-") !=
            strlen(id->valuestring) ||
        strlen(id->valuestring) == 0 ||
        strlen(id->valuestring) > FL_API_ID_MAX) {
        cJSON_Delete(body);
        fl_api_error(r, 400, "bad_request",
                     "\"id\" must be a device id, [A-Za-z0-9_.:-]{1,64}");
        return FL_OK;
    }
    if (fields_from(r, body, &f, 0) != FL_OK) {
        cJSON_Delete(body);
        return FL_OK;
    }
    snprintf(r->id, sizeof(r->id), "%s", id->valuestring);
    p[0] = r->id;
    p[1] = f.name ? f.name : "";
    p[2] = f.type ? f.type : "";
    p[3] = f.has_tags ? f.tags : "{}";
    p[4] = f.metadata ? f.metadata : "{}";
    fl_api_query(r, st_create, 5, p, on_device);
    free(f.metadata);
    cJSON_Delete(body);
    return FL_AGAIN;
}

static int device_patch(fl_api_req_t *r)
{
    cJSON      *body = fl_api_body(r, 0);
    fields_t    f;
    const char *p[5];

    if (body == NULL)
        return FL_OK;
    if (fields_from(r, body, &f, 1) != FL_OK) {
        cJSON_Delete(body);
        return FL_OK;
    }
    p[0] = r->id;
    p[1] = f.name;
    p[2] = f.type;
    p[3] = f.has_tags ? f.tags : NULL;
    p[4] = f.metadata;
    fl_api_query(r, st_patch, 5, p, on_device);
    free(f.metadata);
    cJSON_Delete(body);
    return FL_AGAIN;
}

/* ---- delete ---- */

static void on_purged(fl_api_req_t *r, const PGresult *res, const char *err,
                      const char *sqlstate)
{
    if (res == NULL) {
        fl_api_db_error(r, err, sqlstate);
        return;
    }
    fl_info("device %s deleted, %s rows of history purged", r->id,
            PQcmdTuples((PGresult *)res));
    fl_api_no_content(r);
}

static void on_shadow_deleted(fl_redis_t *rd, redisReply *reply, void *ud)
{
    (void)rd, (void)reply, (void)ud;
}

static void on_deleted(fl_api_req_t *r, const PGresult *res, const char *err,
                       const char *sqlstate)
{
    const fl_config_t *cf = fl_api.cf;
    char               purge[8];
    int                bad = 0;
    const char        *p[1] = {r->id};

    if (res == NULL) {
        fl_api_db_error(r, err, sqlstate);
        return;
    }
    if (PQntuples(res) == 0) {
        fl_api_error(r, 404, "not_found", "no device \"%s\"", r->id);
        return;
    }
    /* the shadow and the desired state go with the row; when Redis is
     * away they expire (shadow) or stay until the next delete */
    fl_redis_cmd(fl_api.redis, 0, on_shadow_deleted, NULL,
                 "DEL %sshadow:%s %sdesired:%s", cf->redis.prefix, r->id,
                 cf->redis.prefix, r->id);
    if (fl_api_param(r, "purge", purge, sizeof(purge), &bad) &&
        strcmp(purge, "true") == 0) {
        fl_api_query(r, st_purge, 1, p, on_purged);
        return;
    }
    fl_api_no_content(r);
}

static int device_delete(fl_api_req_t *r)
{
    char        purge[8];
    int         bad = 0;
    const char *p[1] = {r->id};

    if (fl_api_param(r, "purge", purge, sizeof(purge), &bad) &&
        strcmp(purge, "true") != 0 && strcmp(purge, "false") != 0) {
        fl_api_error(r, 400, "bad_request", "purge must be true or false");
        return FL_OK;
    }
    if (bad)
        return FL_OK;
    fl_api_query(r, st_delete, 1, p, on_deleted);
    return FL_AGAIN;
}

/* ---- list ---- */

typedef struct {
    cJSON  *devices; /* the page, in id order */
    cJSON **items;
    int     n;
    int     replies;                 /* HMGETs outstanding */
    int     online;                  /* -1 any, 0, 1 */
    char    next[FL_API_CURSOR_MAX]; /* "" = last page */
} list_t;

static void list_answer(fl_api_req_t *r)
{
    list_t *l = r->ctx;
    cJSON  *doc = cJSON_CreateObject(), *out = cJSON_CreateArray();

    for (int i = 0; i < l->n; i++) {
        cJSON *on = cJSON_GetObjectItemCaseSensitive(l->items[i], "online");

        if (l->online >= 0 && cJSON_IsTrue(on) != l->online)
            continue;
        cJSON_AddItemReferenceToArray(out, l->items[i]);
    }
    cJSON_AddItemToObject(doc, "devices", out);
    if (l->next[0])
        cJSON_AddStringToObject(doc, "next", l->next);
    else
        cJSON_AddNullToObject(doc, "next");
    fl_api_json(r, 200, doc);
}

typedef struct {
    fl_api_req_t *r;
    int           i;
} seen_t;

static void on_seen(fl_redis_t *rd, redisReply *reply, void *ud)
{
    seen_t       *s = ud;
    fl_api_req_t *r = s->r;
    list_t       *l = r->ctx;
    int64_t       seen = 0;

    (void)rd;
    if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 1 &&
        reply->element[0]->type == REDIS_REPLY_STRING)
        seen = atoll(reply->element[0]->str);
    cJSON_AddBoolToObject(l->items[s->i], "online",
                          seen > 0 && fl_wall_ms() - seen <=
                                          fl_api.cf->ingest.online_window_ms);
    if (seen > 0)
        cJSON_AddNumberToObject(l->items[s->i], "last_seen", (double)seen);
    else
        cJSON_AddNullToObject(l->items[s->i], "last_seen");
    free(s);
    if (--l->replies == 0)
        list_answer(r);
}

static void list_free(void *p)
{
    list_t *l = p;

    cJSON_Delete(l->devices);
    free(l->items);
}

static void on_list(fl_api_req_t *r, const PGresult *res, const char *err,
                    const char *sqlstate)
{
    list_t *l = r->ctx;
    int     n;

    if (res == NULL) {
        fl_api_db_error(r, err, sqlstate);
        return;
    }
    n = PQntuples(res);
    l->devices = cJSON_CreateArray();
    l->items = fl_calloc((size_t)n + 1, sizeof(cJSON *));
    for (int i = 0; i < n; i++) {
        cJSON *d = cJSON_ParseWithLength(PQgetvalue(res, i, 0),
                                         (size_t)PQgetlength(res, i, 0));
        if (d == NULL)
            continue;
        cJSON_AddItemToArray(l->devices, d);
        l->items[l->n++] = d;
    }
    if (n > 0 && n == atoi(PQgetvalue(res, 0, 2))) {
        /* a full page: there may be more after its last id */
        fl_api_cursor(PQgetvalue(res, n - 1, 1), l->next);
    }
    if (l->n == 0 || !fl_redis_connected(fl_api.redis)) {
        /* no shadows to read: online unknown, say false */
        for (int i = 0; i < l->n; i++) {
            cJSON_AddBoolToObject(l->items[i], "online", 0);
            cJSON_AddNullToObject(l->items[i], "last_seen");
        }
        list_answer(r);
        return;
    }
    for (int i = 0; i < l->n; i++) {
        cJSON  *id = cJSON_GetObjectItemCaseSensitive(l->items[i], "id");
        seen_t *s = fl_alloc(sizeof(*s));

        s->r = r;
        s->i = i;
        if (fl_redis_cmd(fl_api.redis, 0, on_seen, s,
                         "HMGET %sshadow:%s last_seen", fl_api.cf->redis.prefix,
                         id->valuestring) != FL_OK) {
            free(s);
            cJSON_AddBoolToObject(l->items[i], "online", 0);
            cJSON_AddNullToObject(l->items[i], "last_seen");
            continue;
        }
        l->replies++;
    }
    if (l->replies == 0)
        list_answer(r);
}

/* LIKE pattern of a prefix: % _ and \ escaped */
static void like_prefix(const char *s, char *out, size_t len)
{
    size_t o = 0;

    for (; *s && o + 3 < len; s++) {
        if (*s == '%' || *s == '_' || *s == '\\')
            out[o++] = '\\';
        out[o++] = *s;
    }
    out[o++] = '%';
    out[o] = '\0';
}

static int device_list(fl_api_req_t *r)
{
    char type[TYPE_MAX_LEN + 1], tag[FL_API_ID_MAX + 1], q[NAME_MAX_LEN + 1];
    char like[2 * NAME_MAX_LEN + 2], lim[16], cur[2 * FL_API_ID_MAX + 4];
    char after[FL_API_ID_MAX + 1], online[8], limit_s[16];
    const char *p[6];
    int         bad = 0, limit = LIST_DEFAULT;
    list_t     *l;

    p[0] = fl_api_param(r, "cursor", cur, sizeof(cur), &bad);
    if (bad)
        return FL_OK;
    if (p[0]) {
        if (fl_api_cursor_id(cur, after) != FL_OK) {
            fl_api_error(r, 400, "bad_request",
                         "cursor is not one this API "
                         "gave");
            return FL_OK;
        }
        p[0] = after;
    }
    p[1] = fl_api_param(r, "type", type, sizeof(type), &bad);
    if (bad)
        return FL_OK;
    p[2] = fl_api_param(r, "tag", tag, sizeof(tag), &bad);
    if (bad)
        return FL_OK;
    p[3] = fl_api_param(r, "q", q, sizeof(q), &bad);
    if (bad)
        return FL_OK;
    if (p[3]) {
        like_prefix(q, like, sizeof(like));
        p[3] = like;
    }
    if (fl_api_param(r, "limit", lim, sizeof(lim), &bad)) {
        char *end;
        long  v = strtol(lim, &end, 10);

        if (*end || v < 1 || v > LIST_MAX) {
            fl_api_error(r, 400, "bad_request", "limit must be 1 to %d",
                         LIST_MAX);
            return FL_OK;
        }
        limit = (int)v;
    }
    if (bad)
        return FL_OK;
    l = fl_calloc(1, sizeof(*l));
    l->online = -1;
    if (fl_api_param(r, "online", online, sizeof(online), &bad)) {
        if (strcmp(online, "true") != 0 && strcmp(online, "false") != 0) {
            free(l);
            fl_api_error(r, 400, "bad_request", "online must be true or false");
            return FL_OK;
        }
        l->online = online[0] == 't';
    }
    if (bad) {
        free(l);
        return FL_OK;
    }
    r->ctx = l;
    r->ctx_free = list_free;
    snprintf(limit_s, sizeof(limit_s), "%d", limit);
    p[4] = limit_s;
    fl_api_query(r, st_list, 5, p, on_list);
    return FL_AGAIN;
}

const fl_api_route_t fl_devices_routes[] = {
    {"GET", "devices", FL_SCOPE_READ, device_list},
    {"POST", "devices", FL_SCOPE_WRITE, device_create},
    {"GET", "devices/{}", FL_SCOPE_READ, device_get},
    {"PATCH", "devices/{}", FL_SCOPE_WRITE, device_patch},
    {"DELETE", "devices/{}", FL_SCOPE_WRITE, device_delete},
    {NULL, NULL, 0, NULL},
};

void fl_devices_init(void)
{
    st_get = fl_db_stmt("dev_get", "SELECT fleetd_device_json(d)::text FROM "
                                   "devices d WHERE id = $1");
    st_create = fl_db_stmt(
        "dev_create",
        "INSERT INTO devices AS d (id, name, type, tags, metadata) "
        "VALUES ($1, $2, $3, $4::text[], $5::jsonb) "
        "ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
        "type = excluded.type, tags = excluded.tags, "
        "metadata = excluded.metadata, auto = false, updated_at = now() "
        "WHERE d.auto RETURNING fleetd_device_json(d)::text");
    st_patch = fl_db_stmt(
        "dev_patch",
        "UPDATE devices d SET name = coalesce($2, name), "
        "type = coalesce($3, type), tags = coalesce($4::text[], tags), "
        "metadata = CASE WHEN $5::jsonb IS NULL THEN metadata ELSE "
        "(SELECT coalesce(jsonb_object_agg(k, v), '{}') FROM "
        "jsonb_each(metadata || $5::jsonb) AS e(k, v) "
        "WHERE jsonb_typeof(v) <> 'null') END, "
        "auto = false, updated_at = now() "
        "WHERE id = $1 RETURNING fleetd_device_json(d)::text");
    st_delete = fl_db_stmt("dev_delete",
                           "DELETE FROM devices WHERE id = $1 RETURNING id");
    /* the rollups (migration 6) go with the rows; the count is the raw
     * rows' */
    st_purge =
        fl_db_stmt("dev_purge",
                   "WITH m AS (DELETE FROM telemetry_1m WHERE device_id = $1), "
                   "h AS (DELETE FROM telemetry_1h WHERE device_id = $1), "
                   "k AS (DELETE FROM telemetry_metrics WHERE device_id = $1) "
                   "DELETE FROM telemetry WHERE device_id = $1");
    st_list = fl_db_stmt(
        "dev_list",
        "SELECT fleetd_device_json(d)::text, id, $5::int FROM devices d "
        "WHERE ($1::text IS NULL OR id > $1) "
        "AND ($2::text IS NULL OR type = $2) "
        "AND ($3::text IS NULL OR tags @> ARRAY[$3::text]) "
        "AND ($4::text IS NULL OR name LIKE $4) "
        "ORDER BY id LIMIT $5::int");
}
