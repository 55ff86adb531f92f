/*
 * fl_http.h - the worker's HTTP/1.1 server core.
 *
 * Connections are bufferevents; requests are parsed by http_parser with
 * fleetd's own limits (header bytes, body bytes, header and idle timeouts,
 * output held for a slow reader). Requests on one connection are answered
 * strictly in order: the next pipelined request is parsed only once the
 * current one has its response.
 *
 * A handler returns FL_OK when it has responded, or FL_AGAIN when it will
 * call fl_http_respond() later (the request stays valid until then, even
 * if the peer went away: see fl_http_req_t.gone).
 */
#ifndef FL_HTTP_H
#define FL_HTTP_H

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <http_parser.h>

#include "fl_core.h"

#define FL_HTTP_MAX_HEADERS 64

typedef struct fl_http_conn_s fl_http_conn_t;

typedef struct {
    const char *name;
    const char *value;
} fl_http_header_t;

typedef struct fl_http_req_s {
    fl_http_conn_t  *conn; /* NULL once the peer went away */
    int              gone;
    enum http_method method;
    const char      *method_name;
    char            *url;   /* as received, NUL-terminated */
    char            *path;  /* decoded-free path, before '?' */
    char            *query; /* after '?', or "" */
    fl_http_header_t headers[FL_HTTP_MAX_HEADERS];
    int              nheaders;
    struct evbuffer *body;
    int              keep_alive;
    int              upgrade;
    int              http_minor;

    /* response being built */
    struct evbuffer *out_headers;
    int              responded;
    int64_t          started_us;
} fl_http_req_t;

typedef int (*fl_http_handler_pt)(fl_http_req_t *req, void *ud);

/*
 * Register a route. method: "GET", "POST", ... or NULL for any. path: an
 * exact path, or a prefix ending in '*' (e.g. "/api/v1/devices/" + '*'). The
 * first match wins; a path that matches with another method gets 405 + Allow.
 */
void fl_http_route(const char *method, const char *path, fl_http_handler_pt fn,
                   void *ud);

/* Case-insensitive header lookup; NULL if absent. */
const char *fl_http_header(const fl_http_req_t *req, const char *name);
/* Value of a query parameter (not decoded) into buf; NULL if absent. */
const char *fl_http_query(const fl_http_req_t *req, const char *name, char *buf,
                          size_t len);

/* Add a response header before fl_http_respond(). */
void fl_http_add_header(fl_http_req_t *req, const char *name,
                        const char *value);
/* Send the response; frees req when the peer is gone. Takes a copy of
 * body. */
void fl_http_respond(fl_http_req_t *req, int status, const char *ctype,
                     const void *body, size_t len);
/* Same, moving the contents of buf (buf is left empty). */
void fl_http_respond_buffer(fl_http_req_t *req, int status, const char *ctype,
                            struct evbuffer *buf);
/* {"error": {"code": code, "message": message}}; both valid UTF-8, escaped
 * here */
void fl_http_respond_error(fl_http_req_t *req, int status, const char *code,
                           const char *message);

/*
 * Take the connection over after an Upgrade request (WebSocket). The
 * caller owns the returned bufferevent (with any bytes the client sent
 * after the request still in its input) and must write its own response;
 * the HTTP layer forgets the connection and frees req. EV_WRITE is
 * disabled on it (the HTTP core writes directly, see out_flush): enable
 * it, or write, as the new protocol needs.
 */
struct bufferevent *fl_http_upgrade(fl_http_req_t *req);

const char *fl_http_status_text(int status);

/* Serve HTTP on an accepted, connected socket (the listener's path; also
 * how the fuzz harness feeds bytes in). Takes ownership of fd. */
void fl_http_serve_fd(evutil_socket_t fd);

#endif
