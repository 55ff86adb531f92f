/*
 * fl_core.c - clocks and allocation wrappers.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fl_core.h"

uint32_t fl_fnv1a(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint32_t             h = 2166136261u;

    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 16777619u;
    return h;
}

int64_t fl_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t fl_now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t fl_wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void fl_oom(size_t n)
{
    fprintf(stderr, "fleetd: out of memory allocating %zu bytes\n", n);
    abort();
}

void *fl_alloc(size_t n)
{
    void *p = malloc(n ? n : 1);

    if (p == NULL)
        fl_oom(n);
    return p;
}

void *fl_calloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);

    if (p == NULL)
        fl_oom(n * size);
    return p;
}

void *fl_realloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);

    if (q == NULL)
        fl_oom(n);
    return q;
}

char *fl_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char  *p = fl_alloc(n);

    memcpy(p, s, n);
    return p;
}

static const char    *fl_hooks;
static pthread_once_t fl_hooks_once = PTHREAD_ONCE_INIT;

static void fl_hooks_load(void)
{
    fl_hooks = getenv("FLEETD_TEST_HOOKS");
}

int64_t fl_test_hook(const char *name)
{
    size_t      n = strlen(name);
    const char *p;

    pthread_once(&fl_hooks_once, fl_hooks_load);
    for (p = fl_hooks; p && *p;
         p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL) {
        if (strncmp(p, name, n) == 0 && p[n] == '=')
            return strtoll(p + n + 1, NULL, 10);
    }
    return -1;
}
