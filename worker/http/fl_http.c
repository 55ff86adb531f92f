/*
 * fl_http.c - the worker's HTTP/1.1 server core (see fl_http.h).
 *
 * Why not evhttp: libevent 2.1's evhttp cannot hand a connection over to
 * another protocol after an Upgrade, and it gives no control over how
 * pipelined input is bounded. This core keeps the parts that are easy to
 * get wrong in a well-kept parser (http_parser, packaged by Debian) and
 * owns the rest: limits, timeouts, ordering, back-pressure and hand-over.
 *
 * A connection moves through these states:
 *   IDLE     waiting for the first byte of a request (idle timer)
 *   READING  inside a request (header timer, absolute from its first byte)
 *   HANDLING the handler has the request; input is not parsed further
 *   CLOSING  the last response is being flushed; then the socket closes
 * Output that the peer does not read stops parsing (max_output_bytes), and
 * input is only read while parsing, so no buffer grows without a bound.
 */
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/listener.h>

#include "fl_enc.h"
#include "fl_http.h"
#include "fl_log.h"
#include "fl_worker.h"

#define MAX_ROUTES 64

typedef enum { C_IDLE, C_READING, C_HANDLING, C_CLOSING } conn_state_t;

struct fl_http_conn_s {
    struct bufferevent *bev;
    struct event       *timer;
    http_parser         parser;
    conn_state_t        state;
    fl_http_req_t      *req;
    /* url and header bytes of the request being parsed, NUL-separated;
     * offsets because hbuf may move while it grows */
    char           *hbuf;
    size_t          hlen, hcap;
    size_t          name_off[FL_HTTP_MAX_HEADERS];
    size_t          value_off[FL_HTTP_MAX_HEADERS];
    int             nheaders;
    int             last_cb; /* 0 none, 1 url, 2 field, 3 value */
    size_t          body_bytes;
    int             error_status; /* limit hit while parsing */
    int             message_done;
    int             processing; /* inside conn_process() */
    int             dead;
    fl_http_conn_t *prev, *next;
};

typedef struct {
    const char        *method;
    const char        *path;
    size_t             plen;
    int                prefix;
    fl_http_handler_pt fn;
    void              *ud;
} route_t;

static route_t                routes[MAX_ROUTES];
static int                    nroutes;
static struct evconnlistener *listener;
static struct event          *ev_accept_resume;

#define ACCEPT_PAUSE_MS 100
#define ACCEPT_LOG_MS   10000
static fl_http_conn_t        *conns;   /* live connections */
static fl_http_conn_t        *zombies; /* closed, freed by the reaper */
static struct event          *ev_reaper;
static http_parser_settings   settings;
static int                    nconns;
static size_t                 read_high_wm;
static char                   date_buf[40];
static time_t                 date_sec;

static void conn_process(fl_http_conn_t *c);
static void conn_close(fl_http_conn_t *c);
static void conn_arm(fl_http_conn_t *c, int64_t ms);

/* ---- routes ---- */

void fl_http_route(const char *method, const char *path, fl_http_handler_pt fn,
                   void *ud)
{
    route_t *r;
    size_t   len = strlen(path);

    if (nroutes == MAX_ROUTES) {
        fl_error("too many HTTP routes, \"%s\" not added", path);
        return;
    }
    r = &routes[nroutes++];
    r->method = method;
    r->prefix = len > 0 && path[len - 1] == '*';
    r->path = path;
    r->plen = r->prefix ? len - 1 : len;
    r->fn = fn;
    r->ud = ud;
}

static int route_match(const route_t *r, const char *path)
{
    if (r->prefix)
        return strncmp(path, r->path, r->plen) == 0;
    return strlen(path) == r->plen && memcmp(path, r->path, r->plen) == 0;
}

static void dispatch(fl_http_req_t *req)
{
    char        allow[128] = "";
    size_t      alen = 0;
    const char *m = req->method == HTTP_HEAD ? "GET" : req->method_name;

    for (int i = 0; i < nroutes; i++) {
        route_t *r = &routes[i];
        if (!route_match(r, req->path))
            continue;
        if (r->method == NULL || strcmp(r->method, m) == 0) {
            /* FL_AGAIN or not, nothing here may touch req afterwards: a
             * handler can answer (and so free it) before it returns.
             * Reading stays enabled while an answer is pending: on_read
             * parses nothing during C_HANDLING, the read watermark bounds
             * what a client can pipeline meanwhile, and a client that
             * goes away is noticed at once. */
            (void)r->fn(req, r->ud);
            return;
        }
        if (alen + strlen(r->method) + 3 < sizeof(allow) &&
            strstr(allow, r->method) == NULL)
            alen += snprintf(allow + alen, sizeof(allow) - alen, "%s%s",
                             alen ? ", " : "", r->method);
    }
    if (alen) {
        fl_http_add_header(req, "Allow", allow);
        fl_http_respond_error(req, 405, "method_not_allowed",
                              "method not allowed on this path");
        return;
    }
    fl_http_respond_error(req, 404, "not_found", "no such route");
}

/* ---- requests ---- */

static fl_http_req_t *req_new(fl_http_conn_t *c)
{
    fl_http_req_t *req = fl_calloc(1, sizeof(*req));

    req->conn = c;
    req->started_us = fl_now_us();
    return req;
}

static void req_free(fl_http_req_t *req)
{
    if (req->body)
        evbuffer_free(req->body);
    if (req->out_headers)
        evbuffer_free(req->out_headers);
    free(req->url);
    free(req);
}

const char *fl_http_header(const fl_http_req_t *req, const char *name)
{
    for (int i = 0; i < req->nheaders; i++) {
        if (strcasecmp(req->headers[i].name, name) == 0)
            return req->headers[i].value;
    }
    return NULL;
}

const char *fl_http_query(const fl_http_req_t *req, const char *name, char *buf,
                          size_t len)
{
    size_t      nlen = strlen(name);
    const char *p = req->query;

    while (p && *p) {
        const char *amp = strchr(p, '&');
        size_t      plen = amp ? (size_t)(amp - p) : strlen(p);

        if (plen >= nlen && strncmp(p, name, nlen) == 0 &&
            (plen == nlen || p[nlen] == '=')) {
            size_t vlen = plen > nlen ? plen - nlen - 1 : 0;
            if (vlen >= len)
                return NULL;
            memcpy(buf, p + nlen + (plen > nlen), vlen);
            buf[vlen] = '\0';
            return buf;
        }
        p = amp ? amp + 1 : NULL;
    }
    return NULL;
}

void fl_http_add_header(fl_http_req_t *req, const char *name, const char *value)
{
    if (req->out_headers == NULL)
        req->out_headers = evbuffer_new();
    evbuffer_add_printf(req->out_headers, "%s: %s\r\n", name, value);
}

const char *fl_http_status_text(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

static const char *http_date(void)
{
    time_t    now = time(NULL);
    struct tm tm;

    if (now != date_sec) {
        date_sec = now;
        gmtime_r(&now, &tm);
        strftime(date_buf, sizeof(date_buf), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    }
    return date_buf;
}

/*
 * Write what the output holds straight to the socket, as far as it takes
 * it. A connection runs with EV_WRITE disabled: the usual answer (a few
 * hundred bytes, the socket's buffer empty) then costs one writev and no
 * write event at all, where the bufferevent's own path costs two
 * epoll_ctl calls per answer (add the write event, remove it after).
 * What the socket does not take goes through the bufferevent (EV_WRITE
 * enabled until on_write sees the output drained). The output's start is
 * frozen by the bufferevent (only its write path may drain it), hence the
 * unfreeze around the write, as bufferevent_sock.c does itself.
 */
static void out_flush(fl_http_conn_t *c)
{
    struct evbuffer *out;

    if (c->dead || c->bev == NULL)
        return;
    out = bufferevent_get_output(c->bev);
    if (evbuffer_get_length(out) == 0)
        return;
    if (!(bufferevent_get_enabled(c->bev) & EV_WRITE)) {
        evbuffer_unfreeze(out, 1);
        /* an error other than EAGAIN leaves the data: the bufferevent's
         * own write then fails the same way and reports it (on_event) */
        (void)evbuffer_write(out, bufferevent_getfd(c->bev));
        evbuffer_freeze(out, 1);
        if (evbuffer_get_length(out) == 0)
            return;
    }
    bufferevent_enable(c->bev, EV_WRITE);
}

/*
 * Write status line and headers of req's response into the connection,
 * then the body (moved from body_buf, or copied from body/len). An answer
 * given inside conn_process() (synchronous, maybe one of several
 * pipelined requests) is flushed when conn_process() ends, so a pipeline
 * gets one write; a later one is written at once.
 */
static void respond(fl_http_req_t *req, int status, const char *ctype,
                    const void *body, size_t len, struct evbuffer *body_buf)
{
    fl_http_conn_t  *c = req->conn;
    struct evbuffer *out;
    char             head[512];
    int              keep, n;

    if (req->responded)
        return;
    req->responded = 1;
    if (status >= 0 && status < FL_SHM_STATUS_CODES)
        fl_shm_add(fl_worker.stats->http_requests[status], 1);

    if (c == NULL) { /* the peer went away meanwhile */
        req_free(req);
        return;
    }

    /* an Upgrade answered without upgrading (a refused WebSocket
     * handshake): what the client sends after it is not HTTP, so the
     * connection ends with this answer */
    keep = req->keep_alive && !req->upgrade && !c->error_status &&
           !fl_worker.draining;
    if (body_buf)
        len = evbuffer_get_length(body_buf);
    n = snprintf(
        head, sizeof(head),
        "HTTP/1.1 %d %s\r\nServer: fleetd\r\nDate: %s\r\n"
        "Content-Length: %zu\r\n%s%s%s%s",
        status, fl_http_status_text(status), http_date(), len,
        ctype ? "Content-Type: " : "", ctype ? ctype : "", ctype ? "\r\n" : "",
        keep ? (req->http_minor == 0 ? "Connection: keep-alive\r\n" : "")
             : "Connection: close\r\n");
    out = bufferevent_get_output(c->bev);
    evbuffer_add(out, head, n);
    if (req->out_headers)
        evbuffer_add_buffer(out, req->out_headers);
    evbuffer_add(out, "\r\n", 2);
    if (req->method != HTTP_HEAD) {
        if (body_buf)
            evbuffer_add_buffer(out, body_buf);
        else if (len)
            evbuffer_add(out, body, len);
    } else if (body_buf) {
        evbuffer_drain(body_buf, len);
    }

    c->req = NULL;
    req_free(req);
    if (!keep) {
        /* on_write closes the connection once the output is written */
        c->state = C_CLOSING;
        bufferevent_disable(c->bev, EV_READ);
        bufferevent_enable(c->bev, EV_WRITE);
        conn_arm(c, fl_worker.cf->http.idle_timeout_ms);
        return;
    }
    c->state = C_IDLE;
    conn_arm(c, fl_worker.draining ? fl_worker.cf->http.drain_idle_ms
                                   : fl_worker.cf->http.idle_timeout_ms);
    if (!c->processing) {
        /* an asynchronous answer: write it, then parse what the client
         * pipelined meanwhile */
        out_flush(c);
        conn_process(c);
    }
}

void fl_http_respond(fl_http_req_t *req, int status, const char *ctype,
                     const void *body, size_t len)
{
    respond(req, status, ctype, body, len, NULL);
}

void fl_http_respond_buffer(fl_http_req_t *req, int status, const char *ctype,
                            struct evbuffer *buf)
{
    respond(req, status, ctype, NULL, 0, buf);
}

void fl_http_respond_error(fl_http_req_t *req, int status, const char *code,
                           const char *message)
{
    fl_sbuf_t b = {0};

    fl_sb_lit(&b, "{\"error\":{\"code\":");
    fl_sb_jstr(&b, code);
    fl_sb_lit(&b, ",\"message\":");
    fl_sb_jstr(&b, message);
    fl_sb_lit(&b, "}}\n");
    respond(req, status, "application/json", b.p, b.len, NULL);
    fl_sb_free(&b);
}

struct bufferevent *fl_http_upgrade(fl_http_req_t *req)
{
    fl_http_conn_t     *c = req->conn;
    struct bufferevent *bev;

    if (c == NULL)
        return NULL;
    bev = c->bev;
    bufferevent_setcb(bev, NULL, NULL, NULL, NULL);
    bufferevent_setwatermark(bev, EV_READ, 0, 0);
    c->bev = NULL;
    c->req = NULL;
    req->responded = 1;
    fl_shm_add(fl_worker.stats->http_requests[101], 1);
    req_free(req);
    conn_close(c);
    return bev;
}

/* ---- parser callbacks ---- */

static int hbuf_append(fl_http_conn_t *c, int kind, const char *at, size_t len)
{
    size_t need;

    if (c->last_cb != kind) {
        /* a new element starts: terminate the previous one */
        if (c->last_cb != 0)
            c->hbuf[c->hlen++] = '\0';
        if (kind == 2) {
            if (c->nheaders == FL_HTTP_MAX_HEADERS) {
                c->error_status = 431;
                return -1;
            }
            c->name_off[c->nheaders] = c->hlen;
            c->value_off[c->nheaders] = c->hlen; /* until a value comes */
        } else if (kind == 3) {
            c->value_off[c->nheaders++] = c->hlen;
        }
        c->last_cb = kind;
    }
    need = c->hlen + len + 2;
    if (need > (size_t)fl_worker.cf->http.max_header_bytes) {
        c->error_status = kind == 1 ? 414 : 431;
        return -1;
    }
    if (need > c->hcap) {
        size_t cap = c->hcap ? c->hcap : 1024;
        while (cap < need)
            cap *= 2;
        c->hbuf = fl_realloc(c->hbuf, cap);
        c->hcap = cap;
    }
    memcpy(c->hbuf + c->hlen, at, len);
    c->hlen += len;
    return 0;
}

static int on_message_begin(http_parser *p)
{
    fl_http_conn_t *c = p->data;

    c->state = C_READING;
    c->hlen = 0;
    c->nheaders = 0;
    c->last_cb = 0;
    c->body_bytes = 0;
    c->message_done = 0;
    if (c->req == NULL)
        c->req = req_new(c);
    conn_arm(c, fl_worker.cf->http.header_timeout_ms);
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    return hbuf_append(p->data, 1, at, len);
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    return hbuf_append(p->data, 2, at, len);
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    return hbuf_append(p->data, 3, at, len);
}

static int on_headers_complete(http_parser *p)
{
    fl_http_conn_t *c = p->data;
    fl_http_req_t  *req = c->req;
    char           *q;

    if (c->last_cb == 2) /* a field without value */
        c->value_off[c->nheaders++] = c->hlen;
    if (hbuf_append(c, 4, "", 0) != 0) /* terminates the last element */
        return -1;
    c->hbuf[c->hlen++] = '\0';

    req->method = (enum http_method)p->method;
    req->method_name = http_method_str(req->method);
    req->http_minor = p->http_minor;
    req->keep_alive = http_should_keep_alive(p);
    req->upgrade = p->upgrade;
    req->url = fl_alloc(c->hlen);
    memcpy(req->url, c->hbuf, c->hlen); /* url, then headers */
    for (int i = 0; i < c->nheaders; i++) {
        req->headers[i].name = req->url + c->name_off[i];
        req->headers[i].value = req->url + c->value_off[i];
    }
    req->nheaders = c->nheaders;

    req->path = req->url;
    if (strncasecmp(req->path, "http://", 7) == 0 ||
        strncasecmp(req->path, "https://", 8) == 0) {
        char *slash = strchr(strstr(req->path, "//") + 2, '/');
        req->path = slash ? slash : (char *)"/";
    }
    q = strchr(req->path, '?');
    if (q) {
        *q = '\0';
        req->query = q + 1;
    } else {
        req->query = (char *)"";
    }

    if ((p->flags & F_CONTENTLENGTH) &&
        p->content_length > (uint64_t)fl_worker.cf->http.max_body_bytes) {
        c->error_status = 413;
        return -1;
    }
    if (p->content_length > 0 && p->content_length != ULLONG_MAX) {
        const char *expect = fl_http_header(req, "Expect");
        if (expect && strcasecmp(expect, "100-continue") == 0) {
            bufferevent_write(c->bev, "HTTP/1.1 100 Continue\r\n\r\n", 25);
            out_flush(c);
        }
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    fl_http_conn_t *c = p->data;

    c->body_bytes += len;
    if (c->body_bytes > (size_t)fl_worker.cf->http.max_body_bytes) {
        c->error_status = 413;
        return -1;
    }
    if (c->req->body == NULL)
        c->req->body = evbuffer_new();
    evbuffer_add(c->req->body, at, len);
    return 0;
}

static int on_message_complete(http_parser *p)
{
    fl_http_conn_t *c = p->data;

    c->message_done = 1;
    http_parser_pause(p, 1);
    return 0;
}

/* ---- connections ---- */

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    fl_http_conn_t *c = arg;

    (void)fd, (void)what;
    if (c->state == C_READING && c->req && !c->message_done) {
        c->error_status = 408;
        fl_http_respond_error(c->req, 408, "request_timeout",
                              "request not received in time");
        return;
    }
    if (c->state != C_HANDLING)
        conn_close(c);
}

static void conn_arm(fl_http_conn_t *c, int64_t ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

    evtimer_add(c->timer, &tv);
}

/* Parse what is buffered, one request at a time, until the input is
 * empty, a handler holds a request, or the output is over its bound. */
static void conn_process(fl_http_conn_t *c)
{
    struct evbuffer *in;

    if (c->dead)
        return;
    in = bufferevent_get_input(c->bev);
    c->processing = 1;
    while (!c->dead && (c->state == C_IDLE || c->state == C_READING)) {
        struct evbuffer_iovec v;
        size_t                n;
        enum http_errno       err;

        if (evbuffer_get_length(bufferevent_get_output(c->bev)) >
            (size_t)fl_worker.cf->http.max_output_bytes)
            break; /* resumes in on_write */
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
            break;

        n = http_parser_execute(&c->parser, &settings, v.iov_base, v.iov_len);
        err = HTTP_PARSER_ERRNO(&c->parser);
        evbuffer_drain(in, n);

        if (c->error_status || (err != HPE_OK && err != HPE_PAUSED)) {
            int  status = c->error_status ? c->error_status : 400;
            char msg[160];

            c->error_status = status;
            if (c->req == NULL)
                c->req = req_new(c);
            c->req->keep_alive = 0;
            if (!c->req->method_name)
                c->req->method = HTTP_GET;
            if (status == 400)
                snprintf(msg, sizeof(msg), "malformed request: %s",
                         http_errno_description(err));
            else
                snprintf(msg, sizeof(msg), "%s",
                         status == 413   ? "body larger than "
                                           "http.max_body_bytes"
                         : status == 408 ? "request not received in time"
                                         : "request line or headers larger "
                                           "than http.max_header_bytes");
            fl_http_respond_error(c->req, status,
                                  status == 413   ? "payload_too_large"
                                  : status == 400 ? "bad_request"
                                                  : "header_too_large",
                                  msg);
            break;
        }
        if (err == HPE_PAUSED)
            http_parser_pause(&c->parser, 0);
        if (c->message_done) {
            fl_http_req_t *req = c->req;

            c->message_done = 0;
            c->state = C_HANDLING;
            evtimer_del(c->timer);
            dispatch(req);
        }
    }
    c->processing = 0;
    out_flush(c);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    fl_http_conn_t *c = arg;

    (void)bev;
    if (c->state == C_CLOSING || c->state == C_HANDLING)
        return;
    conn_process(c);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    fl_http_conn_t *c = arg;

    (void)bev;
    if (c->state == C_CLOSING) {
        conn_close(c);
        return;
    }
    /* the output drained: back to direct writes (out_flush) */
    bufferevent_disable(c->bev, EV_WRITE);
    /* parse requests held back by max_output_bytes */
    if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0 &&
        (c->state == C_IDLE || c->state == C_READING))
        conn_process(c);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    fl_http_conn_t *c = arg;

    (void)bev;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        conn_close(c);
}

/* Mark c closed and queue it for the reaper: it may be deep in its own
 * callback chain right now (Redis freeClientAsync). */
static void conn_close(fl_http_conn_t *c)
{
    if (c->dead)
        return;
    c->dead = 1;
    if (c->req) {
        if (c->state == C_HANDLING && !c->req->responded) {
            c->req->conn = NULL; /* freed when the handler responds */
            c->req->gone = 1;
        } else {
            req_free(c->req);
        }
        c->req = NULL;
    }
    if (c->bev) {
        bufferevent_disable(c->bev, EV_READ | EV_WRITE);
        bufferevent_setcb(c->bev, NULL, NULL, NULL, NULL);
    }
    evtimer_del(c->timer);

    if (c->prev)
        c->prev->next = c->next;
    else
        conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->next = zombies;
    zombies = c;
    nconns--;
    fl_shm_store(fl_worker.stats->conns_http, (uint32_t)nconns);
    event_active(ev_reaper, EV_TIMEOUT, 0);
}

static void on_reap(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;

    while (zombies) {
        fl_http_conn_t *c = zombies;
        zombies = c->next;
        if (c->bev)
            bufferevent_free(c->bev);
        event_free(c->timer);
        free(c->hbuf);
        free(c);
    }
    fl_worker_drain_check();
}

void fl_http_serve_fd(evutil_socket_t fd)
{
    fl_http_conn_t *c;
    int             one = 1;

    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c = fl_calloc(1, sizeof(*c));
    c->bev = bufferevent_socket_new(fl_worker.base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (c->bev == NULL) {
        fl_error("bufferevent_socket_new() failed");
        close(fd);
        free(c);
        return;
    }
    c->timer = evtimer_new(fl_worker.base, on_timer, c);
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    c->state = C_IDLE;
    bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
    bufferevent_setwatermark(c->bev, EV_READ, 0, read_high_wm);
    /* EV_WRITE only while the socket did not take an answer (out_flush) */
    bufferevent_enable(c->bev, EV_READ);
    bufferevent_disable(c->bev, EV_WRITE);
    conn_arm(c, fl_worker.cf->http.header_timeout_ms);

    c->next = conns;
    if (conns)
        conns->prev = c;
    conns = c;
    nconns++;
    fl_shm_store(fl_worker.stats->conns_http, (uint32_t)nconns);
    fl_shm_add(fl_worker.stats->conns_accepted, 1);
}

static void reject(evutil_socket_t fd)
{
    static const char resp[] =
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json"
        "\r\nContent-Length: 81\r\nConnection: close\r\n\r\n"
        "{\"error\":{\"code\":\"overloaded\",\"message\":\"too many "
        "connections "
        "on this worker\"}}\n";

    /* best effort: the socket buffer of a fresh connection takes it */
    if (send(fd, resp, sizeof(resp) - 1, MSG_DONTWAIT | MSG_NOSIGNAL) == -1)
        fl_debug("send() of 503 to a rejected connection failed");
    close(fd);
    fl_shm_add(fl_worker.stats->conns_rejected, 1);
    fl_shm_add(fl_worker.stats->http_requests[503], 1);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd,
                      struct sockaddr *sa, int socklen, void *arg)
{
    (void)l, (void)sa, (void)socklen, (void)arg;

    if (nconns >= fl_worker.cf->http.max_connections) {
        reject(fd);
        return;
    }
    fl_http_serve_fd(fd);
}

static void on_accept_resume(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    if (listener && !fl_worker.draining)
        evconnlistener_enable(listener);
}

/*
 * accept() failed. Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS,
 * ENOMEM) the pending connection stays queued and the listening socket
 * stays readable: going on would spin on the same error at full CPU. So
 * accepting pauses for ACCEPT_PAUSE_MS (as nginx does), and the error is
 * logged once per ACCEPT_LOG_MS with how often it happened meanwhile.
 */
static void on_accept_error(struct evconnlistener *l, void *arg)
{
    static int64_t  last_log;
    static uint64_t failures;
    int             err = EVUTIL_SOCKET_ERROR();
    int64_t         now = fl_now_ms();
    struct timeval  tv = {0, ACCEPT_PAUSE_MS * 1000};

    (void)arg;
    failures++;
    if (now - last_log >= ACCEPT_LOG_MS) {
        fl_log_errno(FL_LOG_ERROR, err,
                     "accept() failed (%llu times since the last report), "
                     "accepting again in %d ms",
                     (unsigned long long)failures, ACCEPT_PAUSE_MS);
        last_log = now;
        failures = 0;
    }
    if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
        evconnlistener_disable(l);
        event_add(ev_accept_resume, &tv);
    }
}

/* ---- module ---- */

static int http_init(fl_worker_t *w)
{
    settings.on_message_begin = on_message_begin;
    settings.on_url = on_url;
    settings.on_header_field = on_header_field;
    settings.on_header_value = on_header_value;
    settings.on_headers_complete = on_headers_complete;
    settings.on_body = on_body;
    settings.on_message_complete = on_message_complete;
    read_high_wm = fl_max((size_t)w->cf->http.max_header_bytes, 65536);

    ev_reaper = event_new(w->base, -1, 0, on_reap, NULL);
    ev_accept_resume = event_new(w->base, -1, 0, on_accept_resume, NULL);
    if (w->listen_fd == -1)
        return FL_OK; /* fuzzing and tests feed fl_http_serve_fd */
    listener = evconnlistener_new(w->base, on_accept, NULL,
                                  LEV_OPT_CLOSE_ON_FREE, -1, w->listen_fd);
    if (listener == NULL) {
        fl_error("evconnlistener_new() on fd %d failed", w->listen_fd);
        return FL_ERROR;
    }
    evconnlistener_set_error_cb(listener, on_accept_error);
    return FL_OK;
}

/*
 * Draining: accept what is already queued on our socket (a connection
 * queued there would be reset when the last copy of the socket closes),
 * close the socket, answer in-flight requests with "Connection: close",
 * and give idle keep-alive connections http.drain_idle to send one more
 * request (a request racing the close would otherwise fail).
 */
static void http_stop(fl_worker_t *w, int fast)
{
    fl_http_conn_t *c, *next;

    if (listener) {
        evutil_socket_t fd = evconnlistener_get_fd(listener);
        evconnlistener_disable(listener);
        for (int i = 0; i < 4096; i++) {
            int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (cfd == -1)
                break;
            if (nconns >= w->cf->http.max_connections)
                reject(cfd);
            else
                fl_http_serve_fd(cfd);
        }
        evconnlistener_free(listener);
        listener = NULL;
    }
    for (c = conns; c; c = next) {
        next = c->next;
        if (c->state == C_IDLE && (fast || w->cf->http.drain_idle_ms == 0))
            conn_close(c);
        else if (c->state == C_IDLE)
            conn_arm(c, w->cf->http.drain_idle_ms);
    }
}

static int http_busy(fl_worker_t *w)
{
    (void)w;
    return nconns;
}

static void http_destroy(fl_worker_t *w)
{
    (void)w;
    while (conns)
        conn_close(conns);
    on_reap(-1, 0, NULL);
    if (listener)
        evconnlistener_free(listener);
    listener = NULL;
    event_free(ev_reaper);
    event_free(ev_accept_resume);
}

const fl_module_t fl_http_module = {
    "http", http_init, http_stop, http_busy, http_destroy, NULL,
};
