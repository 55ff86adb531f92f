/*
 * bare_state.c - the floor of GET /api/v1/devices/{id}/state for
 * bench/api-bench: the smallest libevent server that answers the same
 * request with the same Redis work at its core.
 *
 * One thread, one event loop, one evhttp, one hiredis (0.14) async
 * connection on the same loop (its libevent adapter). GET /state/{id} ->
 * one HGETALL {prefix}shadow:{id} (the hash ingest writes, see
 * worker/fl_shadow.h) -> 200 application/json with the fields as one flat
 * object, each value copied as the JSON text it already is (v:, r: are
 * JSON text, t: and last_seen are epoch ms):
 *
 *   {"v:temperature":21.5,"t:temperature":1700000000000,...,"last_seen":...}
 *
 * No authentication, no desired-state key, no registry lookup: what is left
 * of fleetd's GET state when everything but the Redis read is taken away.
 * An empty hash (no shadow) answers 404, so a bench that reads the wrong
 * keys fails instead of measuring empty answers. Concurrent requests share
 * the one connection, so their HGETALLs are pipelined the way fleetd's
 * are.
 *
 * GET /livez -> 200 "ok\n" (the readiness check). Anything else: 404.
 *
 * Usage: bare_state HOST:PORT REDIS_HOST:REDIS_PORT [PREFIX]
 *        PREFIX defaults to "fleetd:" (fleetd's redis.prefix default).
 * Exits 0 on SIGINT/SIGTERM; 1 on a bad argument, a failed bind, or when
 * the Redis connection fails or drops (a bench must not go on without it).
 *
 * Build: cc -O2 -Wall -Wextra bench/bare_state.c -o build/bench/bare_state \
 *            $(pkg-config --cflags --libs libevent) -lhiredis
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#define ID_MAX 64

static const char         livez_body[] = "ok\n";
static const char        *prefix = "fleetd:";
static redisAsyncContext *rc;
static struct event_base *base;
static int                redis_up;
static int                exit_code;

static void stop(int code)
{
    exit_code = code;
    event_base_loopbreak(base);
}

/* The contract's device id: [A-Za-z0-9_.:-]{1,64}. */
static int id_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > ID_MAX)
        return 0;
    return strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                     "0123456789_.:-") == n;
}

/* A JSON string literal of s[0..n) (field names are plain ASCII here, but
 * escape what JSON needs anyway). */
static void json_str(struct evbuffer *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t            run = 0;

    evbuffer_add(out, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char          esc[6] = {'\\', 'u', '0', '0', 0, 0};

        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        evbuffer_add(out, s + run, i - run);
        run = i + 1;
        if (c == '"' || c == '\\') {
            esc[1] = (char)c;
            evbuffer_add(out, esc, 2);
        } else {
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            evbuffer_add(out, esc, 6);
        }
    }
    evbuffer_add(out, s + run, n - run);
    evbuffer_add(out, "\"", 1);
}

static void on_hgetall(redisAsyncContext *c, void *r, void *privdata)
{
    struct evhttp_request *req = privdata;
    redisReply            *rep = r;
    struct evbuffer       *out;

    (void)c;
    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY) {
        /* NULL: the connection went away (on_disconnect stops the loop) */
        if (rep && rep->type == REDIS_REPLY_ERROR)
            fprintf(stderr, "bare_state: HGETALL: %s\n", rep->str);
        evhttp_send_error(req, 503, NULL);
        return;
    }
    if (rep->elements < 2) {
        evhttp_send_error(req, 404, NULL);
        return;
    }
    out = evhttp_request_get_output_buffer(req);
    evbuffer_add(out, "{", 1);
    for (size_t i = 0; i + 1 < rep->elements; i += 2) {
        const redisReply *k = rep->element[i], *v = rep->element[i + 1];

        if (i)
            evbuffer_add(out, ",", 1);
        json_str(out, k->str, k->len);
        evbuffer_add(out, ":", 1);
        /* the values are JSON text already; an empty one would not be */
        if (v->type == REDIS_REPLY_STRING && v->len > 0)
            evbuffer_add(out, v->str, v->len);
        else
            evbuffer_add(out, "null", 4);
    }
    evbuffer_add(out, "}", 1);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "application/json");
    evhttp_send_reply(req, 200, "OK", NULL);
}

static int only_get(struct evhttp_request *req)
{
    if (evhttp_request_get_command(req) == EVHTTP_REQ_GET)
        return 1;
    evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET");
    evhttp_send_error(req, 405, NULL);
    return 0;
}

/* GET /state/{id}; every other path but /livez lands here too */
static void gen_cb(struct evhttp_request *req, void *arg)
{
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    const char *id;

    (void)arg;
    if (path == NULL || strncmp(path, "/state/", 7) != 0 ||
        !id_ok(id = path + 7)) {
        evhttp_send_error(req, 404, NULL);
        return;
    }
    if (!only_get(req))
        return;
    if (!redis_up || redisAsyncCommand(rc, on_hgetall, req, "HGETALL %sshadow:%s",
                                       prefix, id) != REDIS_OK) {
        evhttp_send_error(req, 503, NULL);
        return;
    }
}

static void livez_cb(struct evhttp_request *req, void *arg)
{
    struct evbuffer *out;

    (void)arg;
    if (!only_get(req))
        return;
    if (!redis_up) {
        evhttp_send_error(req, 503, NULL);
        return;
    }
    out = evhttp_request_get_output_buffer(req);
    evbuffer_add_reference(out, livez_body, sizeof(livez_body) - 1, NULL, NULL);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain");
    evhttp_send_reply(req, 200, "OK", NULL);
}

static void on_connect(const redisAsyncContext *c, int status)
{
    if (status != REDIS_OK) {
        fprintf(stderr, "bare_state: redis connect: %s\n", c->errstr);
        stop(1);
        return;
    }
    redis_up = 1;
}

static void on_disconnect(const redisAsyncContext *c, int status)
{
    redis_up = 0;
    if (status != REDIS_OK) {
        fprintf(stderr, "bare_state: redis connection lost: %s\n", c->errstr);
        stop(1);
    }
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    (void)arg;
    stop(0);
}

/* "HOST:PORT" (last colon; brackets stripped) into host and port. */
static int split_addr(const char *s, char *host, size_t hostlen, int *port)
{
    const char *p = strrchr(s, ':');
    size_t      n;
    char       *end;
    long        v;

    if (p == NULL)
        return -1;
    n = (size_t)(p - s);
    if (n >= 2 && s[0] == '[' && s[n - 1] == ']') {
        s++;
        n -= 2;
    }
    if (n == 0 || n >= hostlen)
        return -1;
    memcpy(host, s, n);
    host[n] = '\0';
    errno = 0;
    v = strtol(p + 1, &end, 10);
    if (errno != 0 || p[1] == '\0' || *end != '\0' || v < 1 || v > 65535)
        return -1;
    *port = (int)v;
    return 0;
}

int main(int argc, char **argv)
{
    struct evhttp *http;
    struct event  *sigint, *sigterm;
    char           host[256], rhost[256];
    int            port, rport;

    if (argc < 3 || argc > 4 ||
        split_addr(argv[1], host, sizeof(host), &port) != 0 ||
        split_addr(argv[2], rhost, sizeof(rhost), &rport) != 0) {
        fprintf(stderr,
                "usage: %s HOST:PORT REDIS_HOST:REDIS_PORT [PREFIX]\n",
                argv[0]);
        return 1;
    }
    if (argc == 4)
        prefix = argv[3];

    signal(SIGPIPE, SIG_IGN);

    base = event_base_new();
    if (base == NULL) {
        fprintf(stderr, "event_base_new() failed\n");
        return 1;
    }

    rc = redisAsyncConnect(rhost, rport);
    if (rc == NULL || rc->err) {
        fprintf(stderr, "bare_state: redis: %s\n", rc ? rc->errstr : "oom");
        return 1;
    }
    redisLibeventAttach(rc, base);
    redisAsyncSetConnectCallback(rc, on_connect);
    redisAsyncSetDisconnectCallback(rc, on_disconnect);

    http = evhttp_new(base);
    if (http == NULL) {
        fprintf(stderr, "evhttp_new() failed\n");
        return 1;
    }
    evhttp_set_cb(http, "/livez", livez_cb, NULL);
    evhttp_set_gencb(http, gen_cb, NULL);
    if (evhttp_bind_socket(http, host, (unsigned short)port) != 0) {
        fprintf(stderr, "evhttp_bind_socket() to %s:%d failed: %s\n", host,
                port, strerror(errno));
        return 1;
    }

    sigint = evsignal_new(base, SIGINT, signal_cb, NULL);
    sigterm = evsignal_new(base, SIGTERM, signal_cb, NULL);
    if (sigint == NULL || sigterm == NULL || evsignal_add(sigint, NULL) != 0 ||
        evsignal_add(sigterm, NULL) != 0) {
        fprintf(stderr, "evsignal_new() failed\n");
        return 1;
    }

    printf("bare_state listening on http://%s:%d, redis %s:%d, keys "
           "%sshadow:{id}\n",
           host, port, rhost, rport, prefix);
    fflush(stdout);

    event_base_dispatch(base);

    /* in-flight requests get their callback now (NULL reply: 503) */
    if (redis_up)
        redisAsyncFree(rc);
    event_free(sigint);
    event_free(sigterm);
    evhttp_free(http);
    event_base_free(base);
    return exit_code;
}
