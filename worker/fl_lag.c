/*
 * fl_lag.c - event-loop lag monitor.
 *
 * A repeating timer asks to run every LAG_PERIOD_US; how late it actually
 * runs is time the loop spent elsewhere (a slow callback, a blocking call).
 * Lateness goes into a rolling window of one-second histograms
 * (FL_WINDOW_SLOTS seconds); once a second p50/p99/max of the window are
 * published in the shared segment, like Node's monitorEventLoopDelay but
 * rolling rather than reset on read.
 */
#include <string.h>

#include "fl_hist.h"
#include "fl_log.h"
#include "fl_worker.h"

#define LAG_PERIOD_US 10000

static struct event *ev_tick;
static fl_window_t   window;
static int64_t       expected_us;
static int64_t       next_publish_us;

static void lag_publish(void)
{
    fl_shm_worker_t *s = fl_worker.stats;
    fl_hist_t        h;

    fl_window_merge(&window, &h);
    fl_shm_store(s->lag_p50_us, (uint32_t)fl_hist_quantile(&h, 0.50));
    fl_shm_store(s->lag_p99_us, (uint32_t)fl_hist_quantile(&h, 0.99));
    fl_shm_store(s->lag_max_us, (uint32_t)(h.count ? h.max : 0));
    fl_shm_store(s->heartbeat_ms, fl_wall_ms());
    fl_window_rotate(&window);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    int64_t        now = fl_now_us(), late = now - expected_us;
    struct timeval tv = {0, LAG_PERIOD_US};

    (void)fd, (void)what, (void)arg;
    fl_window_record(&window, late > 0 ? (uint64_t)late : 0);
    if (now >= next_publish_us) {
        lag_publish();
        next_publish_us = now + 1000000;
    }
    expected_us = now + LAG_PERIOD_US;
    evtimer_add(ev_tick, &tv);
}

static int lag_init(fl_worker_t *w)
{
    struct timeval tv = {0, LAG_PERIOD_US};

    fl_window_reset(&window);
    ev_tick = evtimer_new(w->base, on_tick, NULL);
    expected_us = fl_now_us() + LAG_PERIOD_US;
    next_publish_us = fl_now_us() + 1000000;
    fl_shm_store(w->stats->heartbeat_ms, fl_wall_ms());
    evtimer_add(ev_tick, &tv);
    return FL_OK;
}

static void lag_destroy(fl_worker_t *w)
{
    (void)w;
    event_free(ev_tick);
}

const fl_module_t fl_lag_module = {
    "lag", lag_init, NULL, NULL, lag_destroy, NULL,
};
