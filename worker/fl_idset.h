/*
 * fl_idset.h - a set of short strings (device ids) with the time each was
 * added, for "have I seen this id lately?" on the loop.
 *
 * Open addressing, grown by doubling at half full up to a cap; at the cap
 * it starts over empty (a forgotten id is only looked up again). Entries
 * older than the set's ttl count as absent. Not thread-safe.
 */
#ifndef FL_IDSET_H
#define FL_IDSET_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    char   **id;
    int64_t *at;
    size_t   cap, n, max;
    int64_t  ttl_ms;
} fl_idset_t;

/* max: entries before the set empties itself; ttl_ms: how long an entry
 * counts */
void fl_idset_init(fl_idset_t *s, size_t max, int64_t ttl_ms);
/* 1 when id was added within ttl_ms before now_ms */
int  fl_idset_has(const fl_idset_t *s, const char *id, int64_t now_ms);
void fl_idset_add(fl_idset_t *s, const char *id, int64_t now_ms);
void fl_idset_del(fl_idset_t *s, const char *id);
void fl_idset_free(fl_idset_t *s);

#endif
