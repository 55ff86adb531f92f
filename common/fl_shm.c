/*
 * fl_shm.c - the node-wide stats segment (see fl_shm.h).
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "fl_log.h"
#include "fl_shm.h"

fl_shm_t *fl_shm;

/* Map the segment once, in the master, before the first fork. */
int fl_shm_create(void)
{
    void *p = mmap(NULL, sizeof(fl_shm_t), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);

    if (p == MAP_FAILED) {
        fl_log_errno(FL_LOG_CRIT, errno, "mmap() of %zu bytes failed",
                     sizeof(fl_shm_t));
        return FL_ERROR;
    }
    memset(p, 0, sizeof(fl_shm_t));
    fl_shm = p;
    return FL_OK;
}

const char *fl_wstate_name(int state)
{
    static const char *names[] = {"empty",    "starting", "ready",
                                  "draining", "backoff",  "failed"};

    if (state < 0 || (size_t)state >= fl_nelem(names))
        return "unknown";
    return names[state];
}
