/*
 * fl_api.h - the REST API (/api/v1/...): what its route files share.
 *
 * fl_api.c owns the module: it registers one HTTP route for /api/v1/,
 * matches the rest of the path against the route table of every API file
 * (fl_routes.c), checks the bearer token and its scope (fl_auth.c),
 * and then calls the route's handler with an fl_api_req_t. Handlers answer
 * with fl_api_json() / fl_api_error() now or after a PostgreSQL or Redis
 * reply (return FL_AGAIN); either way exactly once. The request stays
 * valid until then, even when the client went away.
 *
 * Errors are {"error": {"code": "...", "message": "..."}} with the status
 * the contract names: 400 bad input, 401 no or wrong token, 403 a scope
 * that is not enough, 404, 405 (+ Allow), 409, 413, 429, 503.
 */
#ifndef FL_API_H
#define FL_API_H

#include <cjson/cJSON.h>

#include "fl_db.h"
#include "fl_http.h"
#include "fl_redis.h"

/* scopes of a token; admin implies write implies read */
enum { FL_SCOPE_READ = 1, FL_SCOPE_WRITE = 2, FL_SCOPE_ADMIN = 4 };

#define FL_API_ID_MAX 64

typedef struct fl_api_req_s fl_api_req_t;
typedef int (*fl_api_handler_pt)(fl_api_req_t *r);
typedef void (*fl_api_db_cb)(fl_api_req_t *r, const PGresult *res,
                             const char *err, const char *sqlstate);

/* One route: method, a pattern of path segments after /api/v1/ where
 * "{}" matches an id ([A-Za-z0-9_.:-]{1,64}), and the scope it needs. */
typedef struct {
    const char       *method;
    const char       *pattern;
    int               scope;
    fl_api_handler_pt fn;
} fl_api_route_t;

struct fl_api_req_s {
    fl_http_req_t        *http;
    const fl_api_route_t *route;
    char                  id[FL_API_ID_MAX + 1];  /* the first {} of the path */
    char                  id2[FL_API_ID_MAX + 1]; /* the second, if any */
    int                   scopes;                 /* granted by the token */
    char         key_id[FL_API_ID_MAX + 1];       /* API key used, "" admin */
    fl_db_q_t   *q;     /* the query in flight, if any */
    fl_api_db_cb db_cb; /* its callback */
    void        *ctx;   /* the handler's own, freed with free() when r
                           is finished, after ctx_free(ctx) if set */
    void (*ctx_free)(void *ctx);
    int64_t start_us;
};

/* The pool, the Redis connection and the config the handlers use. */
typedef struct {
    fl_db_t           *db;
    fl_redis_t        *redis;
    const fl_config_t *cf;
} fl_api_t;

extern fl_api_t fl_api;

/* The helpers below are fl_api_io.c's. */

/* Respond with a JSON document (deleted here) and finish r. */
void fl_api_json(fl_api_req_t *r, int status, cJSON *doc);
/* Respond with JSON text already built (copied) and finish r. */
void fl_api_json_text(fl_api_req_t *r, int status, const char *text,
                      size_t len);
/* An error (see the top); message is printf-like, UTF-8. */
void fl_api_error(fl_api_req_t *r, int status, const char *code,
                  const char *fmt, ...) fl_printf(4, 5);
/* 204, no body. */
void fl_api_no_content(fl_api_req_t *r);

/*
 * The request body as a JSON object (or array when want_array): NULL with
 * the 400 already sent when it is missing, not UTF-8, not JSON or not of
 * that type. The caller deletes the result.
 */
cJSON *fl_api_body(fl_api_req_t *r, int want_array);

/* Query parameter name, URL-decoded into buf (a NUL-terminated UTF-8
 * string). NULL when absent; "" when present and empty. A value that
 * does not fit or decodes to invalid UTF-8 or a NUL answers 400 and
 * sets *bad. */
const char *fl_api_param(fl_api_req_t *r, const char *name, char *buf,
                         size_t len, int *bad);

/*
 * Run a prepared statement of the pool for r; cb gets r back. On
 * FL_AGAIN (queue full) or FL_ERROR (no connection) the 503 is already
 * sent and r finished: the caller returns FL_OK.
 */
int fl_api_query(fl_api_req_t *r, int stmt, int nparams,
                 const char *const *params, fl_api_db_cb cb);

/* A database failure as the answer: 503 when the database is away or
 * busy, 500 otherwise (logged). */
void fl_api_db_error(fl_api_req_t *r, const char *err, const char *sqlstate);

/*
 * Keyset pagination: a page's cursor names the last id it holds ('c' and
 * the id's bytes in hex: opaque to clients, and no character of it needs
 * escaping in a URL). fl_api_cursor() writes one for id (at most
 * FL_API_ID_MAX bytes) into out; fl_api_cursor_id() reads one back into
 * id (FL_API_ID_MAX + 1 bytes), FL_ERROR when it is not one of ours.
 */
#define FL_API_CURSOR_MAX (2 * FL_API_ID_MAX + 2)
void fl_api_cursor(const char *id, char *out);
int  fl_api_cursor_id(const char *cursor, char *id);

/* A request for route rt outside the API's own routing (/ws uses the
 * API's token check): finished like any other, or by fl_api_done(). */
fl_api_req_t *fl_api_begin(fl_http_req_t *req, const fl_api_route_t *rt);
/* Finish r without an answer: its connection was taken over (an
 * Upgrade), r->http is no longer used. */
void fl_api_done(fl_api_req_t *r);

/* requests not yet answered (the module's busy count) */
extern int fl_api_inflight;

#endif
