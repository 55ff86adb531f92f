/*
 * fl_api_io.c - what the REST API's handlers share (fl_api.h): answering
 * in JSON, reading bodies and query parameters, running a prepared
 * statement for a request.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl_api.h"
#include "fl_log.h"
#include "fl_scan.h"
#include "fl_worker.h"

fl_api_t fl_api;
int      fl_api_inflight;

/* ---- answering ---- */

static void finish(fl_api_req_t *r)
{
    if (r->q)
        fl_db_cancel(fl_api.db, r->q);
    if (r->ctx && r->ctx_free)
        r->ctx_free(r->ctx);
    free(r->ctx);
    free(r);
    fl_api_inflight--;
    if (fl_worker.draining)
        fl_worker_drain_check();
}

fl_api_req_t *fl_api_begin(fl_http_req_t *req, const fl_api_route_t *rt)
{
    fl_api_req_t *r = fl_calloc(1, sizeof(*r));

    r->http = req;
    r->route = rt;
    r->start_us = fl_now_us();
    fl_api_inflight++;
    return r;
}

void fl_api_done(fl_api_req_t *r)
{
    finish(r);
}

void fl_api_json_text(fl_api_req_t *r, int status, const char *text, size_t len)
{
    fl_http_respond(r->http, status, "application/json", text, len);
    finish(r);
}

void fl_api_json(fl_api_req_t *r, int status, cJSON *doc)
{
    char *s = cJSON_PrintUnformatted(doc);

    cJSON_Delete(doc);
    if (s == NULL) {
        fl_http_respond_error(r->http, 500, "internal",
                              "cannot format the answer");
        finish(r);
        return;
    }
    fl_api_json_text(r, status, s, strlen(s));
    cJSON_free(s);
}

void fl_api_error(fl_api_req_t *r, int status, const char *code,
                  const char *fmt, ...)
{
    char    msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (!fl_utf8_valid(msg, strlen(msg)))
        snprintf(msg, sizeof(msg), "%s", code); /* cut inside a character */
    fl_http_respond_error(r->http, status, code, msg);
    finish(r);
}

void fl_api_no_content(fl_api_req_t *r)
{
    fl_http_respond(r->http, 204, NULL, NULL, 0);
    finish(r);
}

void fl_api_db_error(fl_api_req_t *r, const char *err, const char *sqlstate)
{
    if (sqlstate == NULL || sqlstate[0] == '\0' ||
        strncmp(sqlstate, "08", 2) == 0 || strncmp(sqlstate, "57", 2) == 0 ||
        strcmp(sqlstate, "53300") == 0) {
        fl_api_error(r, 503, "unavailable", "database unavailable: %s",
                     err ? err : "no connection");
        return;
    }
    fl_error("API %s %s: database error: %s", r->http->method_name,
             r->http->path, err ? err : "?");
    fl_api_error(r, 500, "internal", "database error");
}

/* ---- the database ---- */

static void on_db(const PGresult *res, const char *err, const char *sqlstate,
                  void *ud)
{
    fl_api_req_t *r = ud;

    r->q = NULL;
    r->db_cb(r, res, err, sqlstate);
}

int fl_api_query(fl_api_req_t *r, int stmt, int nparams,
                 const char *const *params, fl_api_db_cb cb)
{
    int rc;

    r->db_cb = cb;
    rc = fl_db_query(fl_api.db, stmt, nparams, params, on_db, r, &r->q);
    if (rc == FL_OK)
        return FL_OK;
    if (rc == FL_AGAIN)
        fl_api_error(r, 503, "busy",
                     "too many database queries waiting "
                     "(postgres.pool_queue)");
    else
        fl_api_error(r, 503, "unavailable", "no connection to the database");
    return FL_ERROR;
}

/* ---- input ---- */

cJSON *fl_api_body(fl_api_req_t *r, int want_array)
{
    struct evbuffer *b = r->http->body;
    size_t           len = b ? evbuffer_get_length(b) : 0;
    const char      *p;
    cJSON           *doc;

    if (len == 0) {
        fl_api_error(r, 400, "bad_request", "a JSON %s body is required",
                     want_array ? "array" : "object");
        return NULL;
    }
    p = (const char *)evbuffer_pullup(b, -1);
    if (!fl_utf8_valid(p, len)) {
        fl_api_error(r, 400, "bad_request", "the body is not UTF-8");
        return NULL;
    }
    doc = cJSON_ParseWithLength(p, len);
    if (doc == NULL) {
        fl_api_error(r, 400, "bad_json", "the body is not valid JSON");
        return NULL;
    }
    if (want_array ? !cJSON_IsArray(doc) : !cJSON_IsObject(doc)) {
        cJSON_Delete(doc);
        fl_api_error(r, 400, "bad_request", "the body must be a JSON %s",
                     want_array ? "array" : "object");
        return NULL;
    }
    return doc;
}

static int hexd(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

const char *fl_api_param(fl_api_req_t *r, const char *name, char *buf,
                         size_t len, int *bad)
{
    const char *q = r->http->query;
    size_t      nlen = strlen(name);

    while (q && *q) {
        const char *end = strchr(q, '&');
        size_t      seg = end ? (size_t)(end - q) : strlen(q);

        if (seg >= nlen && strncmp(q, name, nlen) == 0 &&
            (seg == nlen || q[nlen] == '=')) {
            const char *v = seg == nlen ? q + seg : q + nlen + 1;
            size_t      vlen = (size_t)(q + seg - v), o = 0;

            for (size_t i = 0; i < vlen; i++) {
                int c = (unsigned char)v[i];

                if (c == '+') {
                    c = ' ';
                } else if (c == '%') {
                    int hi = i + 2 < vlen ? hexd(v[i + 1]) : -1;
                    int lo = i + 2 < vlen ? hexd(v[i + 2]) : -1;

                    if (hi < 0 || lo < 0)
                        goto malformed;
                    c = hi << 4 | lo;
                    i += 2;
                }
                if (c == 0 || o + 1 >= len)
                    goto malformed;
                buf[o++] = (char)c;
            }
            buf[o] = '\0';
            if (!fl_utf8_valid(buf, o))
                goto malformed;
            return buf;
        malformed:
            fl_api_error(r, 400, "bad_request",
                         "query parameter \"%s\" is malformed or too long",
                         name);
            *bad = 1;
            return NULL;
        }
        q = end ? end + 1 : NULL;
    }
    return NULL;
}

/* ---- cursors ---- */

void fl_api_cursor(const char *id, char *out)
{
    static const char d[] = "0123456789abcdef";
    size_t            n = 0;

    *out++ = 'c';
    for (; *id && n < FL_API_ID_MAX; id++, n++) {
        *out++ = d[(unsigned char)*id >> 4];
        *out++ = d[(unsigned char)*id & 15];
    }
    *out = '\0';
}

int fl_api_cursor_id(const char *c, char *id)
{
    size_t n = strlen(c);

    if (n < 3 || c[0] != 'c' || (n - 1) % 2 || (n - 1) / 2 > FL_API_ID_MAX)
        return FL_ERROR;
    for (size_t i = 1; i < n; i += 2) {
        int v = 0;

        for (int k = 0; k < 2; k++) {
            char ch = c[i + k];

            v <<= 4;
            if (ch >= '0' && ch <= '9')
                v |= ch - '0';
            else if (ch >= 'a' && ch <= 'f')
                v |= ch - 'a' + 10;
            else
                return FL_ERROR;
        }
        if (v == 0)
            return FL_ERROR;
        *id++ = (char)v;
    }
    *id = '\0';
    return FL_OK;
}
