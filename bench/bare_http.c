/*
 * bare_http.c - the "bare libevent server" baseline for bench/http-bench.
 *
 * The smallest evhttp program that answers the same request fleetd's
 * trivial route answers: GET /livez -> 200 "ok\n" text/plain, HTTP/1.1
 * keep-alive, one thread, one event loop. Whatever fleetd costs on top of
 * this (routing, accounting, metrics, connection limits) shows up as the
 * ratio printed by http-bench.
 *
 * Usage: bare_http HOST:PORT     (or: bare_http HOST PORT)
 * Exits 0 on SIGINT/SIGTERM, 1 on a bad argument or a failed bind.
 *
 * Build: cc -O2 -Wall -Wextra bench/bare_http.c -o build/bench/bare_http \
 *            $(pkg-config --cflags --libs libevent)
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

static const char livez_body[] = "ok\n";

/* GET /livez (HEAD is answered by evhttp without a body). */
static void livez_cb(struct evhttp_request *req, void *arg)
{
    struct evbuffer *out;

    (void)arg;

    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET &&
        evhttp_request_get_command(req) != EVHTTP_REQ_HEAD) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow",
                          "GET, HEAD");
        evhttp_send_error(req, 405, NULL);
        return;
    }

    out = evhttp_request_get_output_buffer(req);
    evbuffer_add_reference(out, livez_body, sizeof(livez_body) - 1, NULL, NULL);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain");
    evhttp_send_reply(req, 200, "OK", NULL);
}

/* Anything else: 404, so a mistyped bench URL is not measured silently. */
static void notfound_cb(struct evhttp_request *req, void *arg)
{
    (void)arg;
    evhttp_send_error(req, 404, NULL);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    event_base_loopbreak(arg);
}

/*
 * Split "HOST:PORT" (last colon, so "[::1]:8080" and "::1:8080" both work
 * for the port part; brackets are stripped). Returns 0 on success.
 */
static int parse_addr(int argc, char **argv, char *host, size_t hostlen,
                      unsigned short *port)
{
    const char *h, *p;
    size_t      n;
    char       *end;
    long        v;

    if (argc == 3) {
        h = argv[1];
        n = strlen(h);
        p = argv[2];
    } else if (argc == 2) {
        h = argv[1];
        p = strrchr(h, ':');
        if (p == NULL)
            return -1;
        n = (size_t)(p - h);
        p++;
    } else {
        return -1;
    }

    if (n >= 2 && h[0] == '[' && h[n - 1] == ']') {
        h++;
        n -= 2;
    }
    if (n == 0 || n >= hostlen)
        return -1;
    memcpy(host, h, n);
    host[n] = '\0';

    errno = 0;
    v = strtol(p, &end, 10);
    if (errno != 0 || *p == '\0' || *end != '\0' || v < 1 || v > 65535)
        return -1;
    *port = (unsigned short)v;
    return 0;
}

int main(int argc, char **argv)
{
    struct event_base *base;
    struct evhttp     *http;
    struct event      *sigint, *sigterm;
    char               host[256];
    unsigned short     port;

    if (parse_addr(argc, argv, host, sizeof(host), &port) != 0) {
        fprintf(stderr, "usage: %s HOST:PORT | HOST PORT\n", argv[0]);
        return 1;
    }

    /* A peer that closes mid-write must not kill the baseline. */
    signal(SIGPIPE, SIG_IGN);

    base = event_base_new();
    if (base == NULL) {
        fprintf(stderr, "event_base_new() failed\n");
        return 1;
    }
    http = evhttp_new(base);
    if (http == NULL) {
        fprintf(stderr, "evhttp_new() failed\n");
        return 1;
    }
    evhttp_set_cb(http, "/livez", livez_cb, NULL);
    evhttp_set_gencb(http, notfound_cb, NULL);

    if (evhttp_bind_socket(http, host, port) != 0) {
        fprintf(stderr, "evhttp_bind_socket() to %s:%u failed: %s\n", host,
                (unsigned)port, strerror(errno));
        return 1;
    }

    sigint = evsignal_new(base, SIGINT, signal_cb, base);
    sigterm = evsignal_new(base, SIGTERM, signal_cb, base);
    if (sigint == NULL || sigterm == NULL || evsignal_add(sigint, NULL) != 0 ||
        evsignal_add(sigterm, NULL) != 0) {
        fprintf(stderr, "evsignal_new() failed\n");
        return 1;
    }

    printf("bare_http listening on http://%s:%u\n", host, (unsigned)port);
    fflush(stdout);

    event_base_dispatch(base);

    event_free(sigint);
    event_free(sigterm);
    evhttp_free(http);
    event_base_free(base);
    return 0;
}
