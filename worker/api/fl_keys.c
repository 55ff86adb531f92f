/*
 * fl_keys.c - API keys: /api/v1/keys[/{id}], admin scope only.
 *
 * POST {"name": "...", "scopes": ["read", "write", "admin"]} makes a key
 * and answers 201 with its token, the only time the token is shown:
 * PostgreSQL keeps the SHA-256 of its secret (fl_auth.c). GET lists the
 * keys (never a token), DELETE removes one; a removed key stops working
 * at once on this worker and within AUTH_CACHE_MS on the others.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl_api.h"
#include "fl_auth.h"
#include "fl_log.h"

#define KEY_NAME_MAX 256

static int st_list, st_create, st_get, st_delete;

#define KEY_JSON                                                              \
    "jsonb_build_object('id', id, 'name', name, 'scopes', to_jsonb(scopes), " \
    "'created_at', to_char(created_at AT TIME ZONE 'UTC', "                   \
    "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'))"

static void on_list(fl_api_req_t *r, const PGresult *res, const char *err,
                    const char *sqlstate)
{
    if (res == NULL) {
        fl_api_db_error(r, err, sqlstate);
        return;
    }
    fl_api_json_text(r, 200, PQgetvalue(res, 0, 0),
                     (size_t)PQgetlength(res, 0, 0));
}

static int key_list(fl_api_req_t *r)
{
    fl_api_query(r, st_list, 0, NULL, on_list);
    return FL_AGAIN;
}

static void on_key(fl_api_req_t *r, const PGresult *res, const char *err,
                   const char *sqlstate)
{
    if (res == NULL) {
        fl_api_db_error(r, err, sqlstate);
        return;
    }
    if (PQntuples(res) == 0) {
        fl_api_error(r, 404, "not_found", "no key \"%s\"", r->id);
        return;
    }
    fl_api_json_text(r, 200, PQgetvalue(res, 0, 0),
                     (size_t)PQgetlength(res, 0, 0));
}

static int key_get(fl_api_req_t *r)
{
    const char *p[1] = {r->id};

    fl_api_query(r, st_get, 1, p, on_key);
    return FL_AGAIN;
}

/* the created key's JSON plus its token */
static void on_created(fl_api_req_t *r, const PGresult *res, const char *err,
                       const char *sqlstate)
{
    cJSON *doc;

    if (res == NULL || PQntuples(res) != 1) {
        fl_api_db_error(r, err ? err : "no row", sqlstate);
        return;
    }
    doc = cJSON_Parse(PQgetvalue(res, 0, 0));
    if (doc == NULL) {
        fl_api_error(r, 500, "internal", "cannot read the new key");
        return;
    }
    cJSON_AddStringToObject(doc, "token", r->ctx);
    fl_info("API key %s created by %s", r->id,
            r->key_id[0] ? r->key_id : "an admin token");
    fl_api_json(r, 201, doc);
}

static int key_create(fl_api_req_t *r)
{
    cJSON      *body = fl_api_body(r, 0), *it, *name, *scopes;
    const char *names[8], *p[4];
    char        lit[64] = "{", id[17], hash[65];
    char       *token;
    int         n = 0;

    if (body == NULL)
        return FL_OK;
    cJSON_ArrayForEach(it, body)
    {
        if (strcmp(it->string, "name") != 0 &&
            strcmp(it->string, "scopes") != 0) {
            fl_api_error(r, 400, "bad_request", "unknown field \"%.64s\"",
                         it->string);
            cJSON_Delete(body); /* after: it->string is body's */
            return FL_OK;
        }
    }
    name = cJSON_GetObjectItemCaseSensitive(body, "name");
    scopes = cJSON_GetObjectItemCaseSensitive(body, "scopes");
    if ((name &&
         (!cJSON_IsString(name) || strlen(name->valuestring) > KEY_NAME_MAX)) ||
        !cJSON_IsArray(scopes) || cJSON_GetArraySize(scopes) == 0 ||
        cJSON_GetArraySize(scopes) > 3) {
        cJSON_Delete(body);
        fl_api_error(r, 400, "bad_request",
                     "expected {\"name\": string, \"scopes\": [\"read\" | "
                     "\"write\" | \"admin\", ...]}");
        return FL_OK;
    }
    cJSON_ArrayForEach(it, scopes)
    {
        if (!cJSON_IsString(it))
            break;
        names[n++] = it->valuestring;
    }
    if (n != cJSON_GetArraySize(scopes) || fl_auth_scopes(names, n) < 0) {
        cJSON_Delete(body);
        fl_api_error(r, 400, "bad_request",
                     "scopes are \"read\", \"write\" and \"admin\"");
        return FL_OK;
    }
    for (int i = 0; i < n; i++)
        snprintf(lit + strlen(lit), sizeof(lit) - strlen(lit), "%s%s",
                 i ? "," : "", names[i]);
    strcat(lit, "}");
    token = fl_alloc(FL_KEY_TOKEN_LEN + 1);
    if (fl_auth_new_key(token, id, hash) != FL_OK) {
        free(token);
        cJSON_Delete(body);
        fl_api_error(r, 503, "unavailable", "no randomness to make a key");
        return FL_OK;
    }
    r->ctx = token;
    snprintf(r->id, sizeof(r->id), "%s", id);
    p[0] = id;
    p[1] = name ? name->valuestring : "";
    p[2] = lit;
    p[3] = hash;
    fl_api_query(r, st_create, 4, p, on_created);
    cJSON_Delete(body);
    return FL_AGAIN;
}

static void on_deleted(fl_api_req_t *r, const PGresult *res, const char *err,
                       const char *sqlstate)
{
    if (res == NULL) {
        fl_api_db_error(r, err, sqlstate);
        return;
    }
    if (PQntuples(res) == 0) {
        fl_api_error(r, 404, "not_found", "no key \"%s\"", r->id);
        return;
    }
    fl_auth_forget(r->id);
    fl_info("API key %s deleted", r->id);
    fl_api_no_content(r);
}

static int key_delete(fl_api_req_t *r)
{
    const char *p[1] = {r->id};

    fl_api_query(r, st_delete, 1, p, on_deleted);
    return FL_AGAIN;
}

const fl_api_route_t fl_keys_routes[] = {
    {"GET", "keys", FL_SCOPE_ADMIN, key_list},
    {"POST", "keys", FL_SCOPE_ADMIN, key_create},
    {"GET", "keys/{}", FL_SCOPE_ADMIN, key_get},
    {"DELETE", "keys/{}", FL_SCOPE_ADMIN, key_delete},
    {NULL, NULL, 0, NULL},
};

void fl_keys_init(void)
{
    st_list = fl_db_stmt(
        "key_list",
        "SELECT jsonb_build_object('keys', coalesce(jsonb_agg(" KEY_JSON
        " ORDER BY created_at, id), '[]'))::text "
        "FROM api_keys");
    st_create = fl_db_stmt("key_create",
                           "INSERT INTO api_keys (id, name, scopes, hash) "
                           "VALUES ($1, $2, $3::text[], $4) RETURNING " KEY_JSON
                           "::text");
    st_get = fl_db_stmt("key_get", "SELECT " KEY_JSON
                                   "::text FROM api_keys WHERE id = $1");
    st_delete = fl_db_stmt("key_delete",
                           "DELETE FROM api_keys WHERE id = $1 RETURNING id");
}
