/*
 * fl_idset.c - a set of device ids with times (see fl_idset.h).
 */
#include <stdlib.h>
#include <string.h>

#include "fl_core.h"
#include "fl_idset.h"

#define MIN_CAP 64

static size_t hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ULL;

    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    return (size_t)(h ^ (h >> 31));
}

void fl_idset_init(fl_idset_t *s, size_t max, int64_t ttl_ms)
{
    memset(s, 0, sizeof(*s));
    s->max = max < MIN_CAP ? MIN_CAP : max;
    s->ttl_ms = ttl_ms;
}

/* the slot of id, or of the empty slot where it would go */
static size_t slot(const fl_idset_t *s, const char *id)
{
    size_t i = hash(id) & (s->cap - 1);

    while (s->id[i] && strcmp(s->id[i], id) != 0)
        i = (i + 1) & (s->cap - 1);
    return i;
}

int fl_idset_has(const fl_idset_t *s, const char *id, int64_t now_ms)
{
    size_t i;

    if (s->cap == 0)
        return 0;
    i = slot(s, id);
    return s->id[i] && now_ms - s->at[i] <= s->ttl_ms;
}

static void clear(fl_idset_t *s)
{
    for (size_t i = 0; i < s->cap; i++)
        free(s->id[i]);
    free(s->id);
    free(s->at);
    s->id = NULL;
    s->at = NULL;
    s->cap = s->n = 0;
}

static void grow(fl_idset_t *s, size_t cap)
{
    fl_idset_t old = *s;

    s->id = fl_calloc(cap, sizeof(char *));
    s->at = fl_calloc(cap, sizeof(int64_t));
    s->cap = cap;
    s->n = 0;
    for (size_t i = 0; i < old.cap; i++) {
        if (old.id[i]) {
            size_t j = slot(s, old.id[i]);

            s->id[j] = old.id[i];
            s->at[j] = old.at[i];
            s->n++;
        }
    }
    free(old.id);
    free(old.at);
}

void fl_idset_add(fl_idset_t *s, const char *id, int64_t now_ms)
{
    size_t i;

    if (s->n >= s->max)
        clear(s);
    if (s->cap == 0 || 2 * (s->n + 1) > s->cap)
        grow(s, s->cap ? 2 * s->cap : MIN_CAP);
    i = slot(s, id);
    if (s->id[i] == NULL) {
        s->id[i] = fl_strdup(id);
        s->n++;
    }
    s->at[i] = now_ms;
}

void fl_idset_del(fl_idset_t *s, const char *id)
{
    if (s->cap == 0)
        return;
    /* deleting from open addressing would break probe chains: age the
     * entry out instead */
    size_t i = slot(s, id);
    if (s->id[i])
        s->at[i] = INT64_MIN / 2;
}

void fl_idset_free(fl_idset_t *s)
{
    clear(s);
}
