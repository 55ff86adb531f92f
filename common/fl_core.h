/*
 * fl_core.h - return codes and small helpers shared by every fleetd file.
 *
 * Every external symbol carries the fl_ prefix. Functions that can fail
 * return FL_OK, FL_ERROR, or FL_AGAIN (try again later / would block).
 */
#ifndef FL_CORE_H
#define FL_CORE_H

#include <stddef.h>
#include <stdint.h>

#define FL_OK    0
#define FL_ERROR -1
#define FL_AGAIN -2
#define FL_DONE  -4

#define FL_VERSION "0.2.1"

#define fl_nelem(a)  (sizeof(a) / sizeof((a)[0]))
#define fl_min(a, b) ((a) < (b) ? (a) : (b))
#define fl_max(a, b) ((a) > (b) ? (a) : (b))

#if defined(__GNUC__)
#define fl_unused       __attribute__((unused))
#define fl_printf(f, a) __attribute__((format(printf, f, a)))
#else
#define fl_unused
#define fl_printf(f, a)
/*
 * Test hooks: FLEETD_TEST_HOOKS="name=value,name=value" in the
 * environment. Returns the value of name, or -1 when it is not set.
 * Integration tests use them to hold a process inside a window they must
 * reach (for example between a commit and its acknowledgement); nothing
 * reads them unless the variable is set. Read once, cached.
 */
int64_t fl_test_hook(const char *name);

#endif

/* 32-bit FNV-1a of p[0..n): hash tables and the fan-out channel shard
 * (whose value is part of what nodes agree on: do not change it). */
uint32_t fl_fnv1a(const void *p, size_t n);

/* Monotonic clock in milliseconds / microseconds; wall clock in ms. */
int64_t fl_now_ms(void);
int64_t fl_now_us(void);
int64_t fl_wall_ms(void);

/* Allocation that aborts on exhaustion: a telemetry backend that cannot
 * allocate a few bytes has nothing better to do than restart. */
void *fl_alloc(size_t n);
void *fl_calloc(size_t n, size_t size);
void *fl_realloc(void *p, size_t n);
char *fl_strdup(const char *s);

/*
 * Test hooks: FLEETD_TEST_HOOKS="name=value,name=value" in the
 * environment. Returns the value of name, or -1 when it is not set.
 * Integration tests use them to hold a process inside a window they must
 * reach (for example between a commit and its acknowledgement); nothing
 * reads them unless the variable is set. Read once, cached.
 */
int64_t fl_test_hook(const char *name);

#endif
