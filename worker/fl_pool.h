/*
 * fl_pool.h - the worker's thread pool for CPU-heavy jobs.
 *
 * Jobs run on parse_threads threads; their completion runs back on the
 * loop, handed over through an eventfd (memcached thread.c). The loop
 * never waits on a job.
 */
#ifndef FL_POOL_H
#define FL_POOL_H

#include <event2/event.h>

typedef struct fl_pool_s fl_pool_t;

/* work runs on a pool thread; done runs on the loop afterwards. */
typedef void (*fl_pool_fn)(void *arg);

fl_pool_t *fl_pool_new(struct event_base *base, int threads);
void fl_pool_submit(fl_pool_t *p, fl_pool_fn work, fl_pool_fn done,
                    void *arg);
/* Jobs submitted and not yet done. */
int fl_pool_pending(const fl_pool_t *p);
/* Wait for running jobs, run the pending done callbacks, join, free. */
void fl_pool_free(fl_pool_t *p);

#endif
