/*
 * fl_api.c - the REST API module: routing, authentication, JSON in and
 * out (see fl_api.h).
 *
 * One HTTP route takes every /api/v1/ path. The rest of the path is split
 * at '/' and matched against the tables of the API files, in order: a
 * pattern segment "{}" takes a device, key or command id
 * ([A-Za-z0-9_.:-]{1,64}, the contract's device id syntax), any other
 * must be equal. A path that matches with another method answers 405 with
 * Allow; none answers 404. Then the token: the Authorization header only
 * (a token in the query string would end up in access logs and browser
 * history; WebSocket, which cannot send headers from a browser, is the
 * exception and lives elsewhere), 401 without one or with a wrong one,
 * 403 when its scopes lack the route's.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl_api.h"
#include "fl_auth.h"
#include "fl_log.h"
#include "fl_payload.h"
#include "fl_routes.h"
#include "fl_scan.h"
#include "fl_worker.h"

#define API_PREFIX   "/api/v1/"
#define MAX_SEGMENTS 8

/* ---- routing ---- */

/* Does the path (segments seg[0..nseg)) match pattern? Fills the ids. */
static int match(const char *pattern, char **seg, int nseg, char *id, char *id2)
{
    const char *p = pattern, *e;
    int         i = 0, nids = 0;

    for (; *p; p = e ? e + 1 : p + strlen(p), i++) {
        size_t n, l;

        e = strchr(p, '/');
        n = e ? (size_t)(e - p) : strlen(p);
        if (i >= nseg)
            return 0;
        l = strlen(seg[i]);
        if (n == 2 && p[0] == '{' && p[1] == '}') {
            if (!fl_device_id_valid(seg[i], l))
                return 0;
            memcpy(nids++ ? id2 : id, seg[i], l + 1); /* l <= ID_MAX */
        } else if (l != n || memcmp(p, seg[i], n) != 0) {
            return 0;
        }
    }
    return i == nseg;
}

static void on_auth(fl_api_req_t *r, int scopes)
{
    const fl_api_route_t *rt = r->route;

    r->scopes = scopes;
    if (scopes == 0) {
        fl_http_add_header(r->http, "WWW-Authenticate", "Bearer");
        fl_api_error(r, 401, "unauthorized", "the token is not valid");
        return;
    }
    if ((scopes & rt->scope) != rt->scope) {
        fl_api_error(r, 403, "forbidden", "this route needs the %s scope",
                     rt->scope & FL_SCOPE_ADMIN   ? "admin"
                     : rt->scope & FL_SCOPE_WRITE ? "write"
                                                  : "read");
        return;
    }
    rt->fn(r);
}

static int api(fl_http_req_t *req, void *ud)
{
    char                  path[512], *seg[MAX_SEGMENTS], *save = NULL, *p;
    char                  allow[128] = "";
    int                   nseg = 0;
    fl_api_req_t         *r;
    const fl_api_route_t *found = NULL;
    const char           *auth, *m;
    char                  tok[1024];
    int                   bad = 0;

    (void)ud;
    r = fl_api_begin(req, NULL);
    snprintf(path, sizeof(path), "%s", req->path + strlen(API_PREFIX));
    for (p = strtok_r(path, "/", &save); p && nseg < MAX_SEGMENTS;
         p = strtok_r(NULL, "/", &save))
        seg[nseg++] = p;
    if (p != NULL || strlen(req->path) >= sizeof(path) ||
        (nseg && req->path[strlen(req->path) - 1] == '/')) {
        fl_api_error(r, 404, "not_found", "no such route");
        return FL_OK;
    }
    m = req->method == HTTP_HEAD ? "GET" : req->method_name;
    for (int t = 0; fl_api_routes[t] && !found; t++) {
        for (const fl_api_route_t *rt = fl_api_routes[t]; rt->method; rt++) {
            if (!match(rt->pattern, seg, nseg, r->id, r->id2))
                continue;
            if (strcmp(rt->method, m) == 0) {
                found = rt;
                break;
            }
            if (strstr(allow, rt->method) == NULL &&
                strlen(allow) + strlen(rt->method) + 3 < sizeof(allow))
                snprintf(allow + strlen(allow), sizeof(allow) - strlen(allow),
                         "%s%s", allow[0] ? ", " : "", rt->method);
        }
    }
    if (found == NULL) {
        if (allow[0]) {
            fl_http_add_header(req, "Allow", allow);
            fl_api_error(r, 405, "method_not_allowed",
                         "%s is not allowed here (allowed: %s)", m, allow);
        } else {
            fl_api_error(r, 404, "not_found", "no such route");
        }
        return FL_OK;
    }
    r->route = found;
    if (fl_api_param(r, "token", tok, sizeof(tok), &bad) || bad) {
        if (!bad)
            fl_api_error(r, 401, "unauthorized",
                         "a token in the query string is not accepted by the "
                         "REST API: send Authorization: Bearer TOKEN");
        return FL_OK;
    }
    auth = fl_http_header(req, "Authorization");
    if (auth == NULL || strncasecmp(auth, "Bearer ", 7) != 0) {
        fl_http_add_header(req, "WWW-Authenticate", "Bearer");
        fl_api_error(r, 401, "unauthorized",
                     auth ? "the Authorization header must be Bearer TOKEN"
                          : "no Authorization: Bearer TOKEN header");
        return FL_OK;
    }
    for (auth += 7; *auth == ' '; auth++)
        ;
    fl_auth_check(r, auth, on_auth);
    return FL_AGAIN;
}

/* ---- module ---- */

/* readiness is the pool's and Redis's: check it whenever either changes */
static void on_redis_state(fl_redis_t *rd, int up, void *ud)
{
    (void)rd, (void)up, (void)ud;
    fl_worker_ready_check();
}

static void on_db_state(fl_db_t *db, int ready, void *ud)
{
    (void)db, (void)ready, (void)ud;
    fl_worker_ready_check();
}

static int api_init(fl_worker_t *w)
{
    fl_api.cf = w->cf;
    fl_auth_init(w->cf);
    fl_api_routes_init();
    fl_api.db = fl_db_new(w->base, w->cf, on_db_state, NULL);
    fl_api.redis = fl_redis_new(w->base, w->cf, "api", on_redis_state, NULL);
    fl_http_route(NULL, API_PREFIX "*", api, NULL);
    return FL_OK;
}

static void api_stop(fl_worker_t *w, int fast)
{
    (void)w, (void)fast;
}

static int api_busy(fl_worker_t *w)
{
    (void)w;
    return fl_api_inflight;
}

static int api_ready(fl_worker_t *w)
{
    (void)w;
    return fl_db_ready(fl_api.db) && fl_redis_connected(fl_api.redis);
}

static void api_destroy(fl_worker_t *w)
{
    (void)w;
    fl_db_free(fl_api.db);
    fl_redis_free(fl_api.redis);
    fl_api.db = NULL;
    fl_api.redis = NULL;
}

const fl_module_t fl_api_module = {
    "api", api_init, api_stop, api_busy, api_destroy, api_ready,
};
