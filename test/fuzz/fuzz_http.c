/*
 * fuzz_http.c - libFuzzer harness for the HTTP core.
 *
 * The input is written into one end of a socketpair whose other end is
 * served by the real connection code (fl_http_serve_fd) on a real event
 * loop with the /livez, /healthz, /metrics routes; the loop runs until the
 * connection is closed or the input is consumed. Memory errors, leaks and
 * UB in parsing, limits, pipelining and error paths show up here.
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fl_config.h"
#include "fl_http.h"
#include "fl_log.h"
#include "fl_shm.h"
#include "fl_worker.h"

extern const fl_module_t fl_http_module;
extern const fl_module_t fl_health_module;

/* the worker's module table is not linked in: provide an empty one */
const fl_module_t *const fl_modules[] = {NULL};

static int setup(void)
{
    char              err[FL_CONF_ERRLEN];
    static const char yaml[] = "http: {max_header_bytes: 2k, "
                               "max_body_bytes: 4k, max_output_bytes: 8k}\n";

    fl_log_open(NULL, FL_LOG_CRIT);
    signal(SIGPIPE, SIG_IGN);
    if (fl_shm_create() != FL_OK)
        abort();
    memset(&fl_worker, 0, sizeof(fl_worker));
    fl_worker.cf =
        fl_config_load_string("fuzz", yaml, sizeof(yaml) - 1, err, sizeof(err));
    if (fl_worker.cf == NULL)
        abort();
    fl_worker.base = event_base_new();
    fl_worker.listen_fd = -1;
    fl_worker.stats = &fl_shm->w[0];
    fl_shm->w[0].state = FL_W_READY;
    if (fl_http_module.init(&fl_worker) != FL_OK ||
        fl_health_module.init(&fl_worker) != FL_OK)
        abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    int        sv[2];
    char       sink[65536];
    size_t     off = 0;
    int        idle = 0;

    if (!ready)
        ready = setup() == 0;
    if (size > 32768)
        return 0;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == -1)
        abort();
    fl_http_serve_fd(sv[0]);

    for (int rounds = 0; rounds < 200; rounds++) {
        ssize_t n;

        if (off < size) {
            n = write(sv[1], data + off, size - off);
            if (n > 0)
                off += (size_t)n;
            if (off == size)
                shutdown(sv[1], SHUT_WR);
        }
        event_base_loop(fl_worker.base, EVLOOP_NONBLOCK);
        n = read(sv[1], sink, sizeof(sink));
        if (n == 0 && off == size)
            break; /* the server closed */
        if (n < 0 && off == size && ++idle > 3)
            break; /* nothing more will happen */
    }
    close(sv[1]);
    /* close whatever is left (timers, pending) through the module */
    fl_http_module.stop(&fl_worker, 1);
    event_base_loop(fl_worker.base, EVLOOP_NONBLOCK);
    return 0;
}
