/*
 * lag_probe.c - the event-loop lag of a loop that does nothing, for
 * bench/ingest-bench: the floor under fleetd's /healthz loop_lag_ms.
 *
 * fleetd's lag monitor (worker/fl_lag.c) asks a libevent timer to run
 * every 10 ms and records how late it runs. Lateness has two causes: time
 * the loop spends in callbacks (fleetd's to drive down), and time the
 * process waits for a CPU (the machine's: on two cores that also run the
 * broker, Redis, PostgreSQL and the publisher, a woken process can queue
 * behind them). This probe runs the same timer, on the same kind of base
 * (EVENT_BASE_FLAG_PRECISE_TIMER), with nothing else on its loop, so its
 * lateness is only the second kind, measured in the same window as
 * fleetd's.
 *
 * Runs until SIGTERM / SIGINT or -d seconds, then prints one line:
 * "RESULT samples= p50_ms= p99_ms= max_ms= win_p99_ms=": the quantiles
 * of all samples, and what ingest-bench's lag_p99 column is for fleetd -
 * the highest p99 of a 10 s window ending on any whole second, from 10 s
 * after the start (fleetd publishes the p99 of its last 10 s once a
 * second; the bench keeps the highest it sampled from 10 s into the step).
 *
 * -o FILE: also write every sample (us late, one a line) to FILE, so that
 * ingest-bench can put several probes' samples into the buckets of
 * fleetd's fleetd_loop_delay_seconds histogram and take the step's p99 of
 * both the same way.
 *
 * Usage: lag_probe [-d S] [-o FILE]
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#define PERIOD_US   10000
#define MAX_SAMPLES (3600 * 100)

static int64_t       expected_us, samples[MAX_SAMPLES], at[MAX_SAMPLES],
    win[MAX_SAMPLES];
static size_t        n;
static struct event *tick;

static int64_t now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    int64_t        now = now_us(), late = now - expected_us;
    struct timeval tv = {0, PERIOD_US};

    (void)fd, (void)what, (void)arg;
    if (n < MAX_SAMPLES) {
        at[n] = now;
        samples[n++] = late > 0 ? late : 0;
    }
    expected_us = now + PERIOD_US;
    evtimer_add(tick, &tv);
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    event_base_loopbreak(arg);
}

static int cmp(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    struct event_config *cf = event_config_new();
    struct event_base   *base;
    struct timeval       tv = {0, PERIOD_US}, end = {0, 0};
    struct event        *s1, *s2, *stop;
    int                  opt;
    const char          *dump = NULL;

    while ((opt = getopt(argc, argv, "d:o:")) != -1) {
        if (opt == 'd') {
            end.tv_sec = atoi(optarg);
        } else if (opt == 'o') {
            dump = optarg;
        } else {
            fprintf(stderr, "usage: lag_probe [-d S] [-o FILE]\n");
            return 2;
        }
    }
    event_config_set_flag(cf, EVENT_BASE_FLAG_PRECISE_TIMER);
    base = event_base_new_with_config(cf);
    event_config_free(cf);
    if (base == NULL)
        return 1;
    tick = evtimer_new(base, on_tick, NULL);
    s1 = evsignal_new(base, SIGTERM, on_stop, base);
    s2 = evsignal_new(base, SIGINT, on_stop, base);
    evsignal_add(s1, NULL);
    evsignal_add(s2, NULL);
    if (end.tv_sec > 0) {
        stop = evtimer_new(base, on_stop, base);
        evtimer_add(stop, &end);
    }
    expected_us = now_us() + PERIOD_US;
    evtimer_add(tick, &tv);
    event_base_dispatch(base);
    /* the highest p99 of the 10 s windows ending on whole seconds, from
     * the first window that is full */
    int64_t wmax = 0;

    for (int64_t t = n ? at[0] + 10000000 : 0; n && t <= at[n - 1] + 999999;
         t += 1000000) {
        size_t k = 0;

        for (size_t i = 0; i < n; i++) {
            if (at[i] <= t && at[i] > t - 10000000)
                win[k++] = samples[i];
        }
        if (k == 0)
            continue;
        qsort(win, k, sizeof(win[0]), cmp);
        if (win[(size_t)((double)(k - 1) * 0.99)] > wmax)
            wmax = win[(size_t)((double)(k - 1) * 0.99)];
    }
    if (dump != NULL) {
        FILE *f = fopen(dump, "w");

        if (f == NULL) {
            perror(dump);
            return 1;
        }
        for (size_t i = 0; i < n; i++)
            fprintf(f, "%lld\n", (long long)samples[i]);
        if (fclose(f) != 0) {
            perror(dump);
            return 1;
        }
    }
    qsort(samples, n, sizeof(samples[0]), cmp);
    printf("RESULT samples=%zu p50_ms=%.2f p99_ms=%.2f max_ms=%.2f "
           "win_p99_ms=%.2f\n",
           n, n ? samples[n / 2] / 1000.0 : 0,
           n ? samples[(size_t)((double)(n - 1) * 0.99)] / 1000.0 : 0,
           n ? samples[n - 1] / 1000.0 : 0, wmax / 1000.0);
    return 0;
}
