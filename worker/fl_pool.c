/*
 * fl_pool.c - a fixed thread pool whose completions run on the loop.
 *
 * Submitted jobs wait in a mutex-protected FIFO; a thread runs work(arg),
 * appends the job to the done list and writes the eventfd; the loop's
 * event on that eventfd runs done(arg) for every finished job. Jobs hold
 * no reference to the loop, so a job can never block it.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "fl_log.h"
#include "fl_pool.h"

typedef struct job_s {
    fl_pool_fn    work;
    fl_pool_fn    done;
    void         *arg;
    struct job_s *next;
} job_t;

struct fl_pool_s {
    pthread_mutex_t lock;
    pthread_cond_t  cond;
    job_t          *wait_head, *wait_tail; /* submitted, not started */
    job_t          *done_head, *done_tail; /* finished, done() not run */
    int             stopping;
    int             pending; /* loop thread only */
    int             efd;
    struct event   *ev;
    int             nthreads;
    pthread_t      *threads;
};

/* Append j to the list head/tail; the caller holds the pool's lock. */
static void jobs_push(job_t **head, job_t **tail, job_t *j)
{
    j->next = NULL;
    if (*tail)
        (*tail)->next = j;
    else
        *head = j;
    *tail = j;
}

static void *pool_thread(void *arg)
{
    fl_pool_t *p = arg;
    uint64_t   one = 1;

    for (;;) {
        job_t *j;

        pthread_mutex_lock(&p->lock);
        while (p->wait_head == NULL && !p->stopping)
            pthread_cond_wait(&p->cond, &p->lock);
        if (p->wait_head == NULL) {
            pthread_mutex_unlock(&p->lock);
            return NULL;
        }
        j = p->wait_head;
        p->wait_head = j->next;
        if (p->wait_head == NULL)
            p->wait_tail = NULL;
        pthread_mutex_unlock(&p->lock);

        j->work(j->arg);

        pthread_mutex_lock(&p->lock);
        jobs_push(&p->done_head, &p->done_tail, j);
        pthread_mutex_unlock(&p->lock);
        if (write(p->efd, &one, sizeof(one)) == -1 && errno != EAGAIN)
            fl_log_errno(FL_LOG_ERROR, errno, "write() to pool eventfd failed");
    }
}

/* Run done() of every finished job, on the loop. */
static void pool_drain(fl_pool_t *p)
{
    job_t *j;

    pthread_mutex_lock(&p->lock);
    j = p->done_head;
    p->done_head = p->done_tail = NULL;
    pthread_mutex_unlock(&p->lock);

    while (j) {
        job_t *next = j->next;
        p->pending--;
        if (j->done)
            j->done(j->arg);
        free(j);
        j = next;
    }
}

static void on_eventfd(evutil_socket_t fd, short what, void *arg)
{
    uint64_t n;

    (void)what;
    if (read(fd, &n, sizeof(n)) == -1 && errno != EAGAIN)
        fl_log_errno(FL_LOG_ERROR, errno, "read() of pool eventfd failed");
    pool_drain(arg);
}

fl_pool_t *fl_pool_new(struct event_base *base, int threads)
{
    fl_pool_t *p = fl_calloc(1, sizeof(*p));

    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (p->efd == -1) {
        fl_log_errno(FL_LOG_CRIT, errno, "eventfd() failed");
        abort();
    }
    p->ev = event_new(base, p->efd, EV_READ | EV_PERSIST, on_eventfd, p);
    event_add(p->ev, NULL);
    p->threads = fl_calloc(threads, sizeof(pthread_t));
    for (int i = 0; i < threads; i++) {
        int rc = pthread_create(&p->threads[i], NULL, pool_thread, p);
        if (rc != 0) {
            fl_log_errno(FL_LOG_ERROR, rc, "pthread_create() failed");
            break;
        }
        p->nthreads++;
    }
    if (p->nthreads == 0)
        abort();
    return p;
}

void fl_pool_submit(fl_pool_t *p, fl_pool_fn work, fl_pool_fn done, void *arg)
{
    job_t *j = fl_alloc(sizeof(*j));

    j->work = work;
    j->done = done;
    j->arg = arg;
    p->pending++;
    pthread_mutex_lock(&p->lock);
    jobs_push(&p->wait_head, &p->wait_tail, j);
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

int fl_pool_pending(const fl_pool_t *p)
{
    return p->pending;
}

void fl_pool_free(fl_pool_t *p)
{
    if (p == NULL)
        return;
    pthread_mutex_lock(&p->lock);
    p->stopping = 1;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
    for (int i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    pool_drain(p);
    event_free(p->ev);
    close(p->efd);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->cond);
    free(p->threads);
    free(p);
}
