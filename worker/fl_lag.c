/*
 * fl_lag.c - event-loop lag monitor.
 *
 * A repeating timer asks to run every LAG_PERIOD_US; how late it actually
 * runs is time the loop spent elsewhere (a slow callback, a blocking call).
 * Lateness goes into a rolling window of one-second histograms
 * (FL_WINDOW_SLOTS seconds); once a second p50/p99/max of the window are
 * published in the shared segment, like Node's monitorEventLoopDelay but
 * rolling rather than reset on read. Every tick is also counted for
 * good in fixed buckets (fl_shm_lag_le_us), which /metrics exports as a
 * Prometheus histogram: quantiles over any range, and the share of ticks
 * later than a bound, which a 10 s window's p99 cannot give.
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

/* Count one tick in the node-wide histogram (one writer per slot). */
static void lag_count(fl_shm_worker_t *s, uint64_t late)
{
    int i = 0;

    while (i < FL_SHM_LAG_BUCKETS && late > fl_shm_lag_le_us[i])
        i++;
    fl_shm_store(s->lag_ticks[i], fl_shm_load(s->lag_ticks[i]) + 1);
    fl_shm_store(s->lag_sum_us, fl_shm_load(s->lag_sum_us) + late);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    int64_t        now = fl_now_us(), late = now - expected_us;
    struct timeval tv = {0, LAG_PERIOD_US};

    (void)fd, (void)what, (void)arg;
    if (late < 0)
        late = 0;
    fl_window_record(&window, (uint64_t)late);
    lag_count(fl_worker.stats, (uint64_t)late);
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
