/*
 * test_idset.c - fl_idset (worker/fl_idset.c): membership, time to live,
 * growth past many ids, the cap that empties the set, deletion.
 */
#include <stdio.h>

#include "fl_idset.h"
#include "unit.h"

void test_idset_basic(void)
{
    fl_idset_t s;

    fl_idset_init(&s, 1000, 100);
    FL_CHECK(!fl_idset_has(&s, "a", 0));
    fl_idset_add(&s, "a", 0);
    fl_idset_add(&s, "b", 50);
    FL_CHECK(fl_idset_has(&s, "a", 100));
    FL_CHECK(!fl_idset_has(&s, "a", 101)); /* older than the ttl */
    FL_CHECK(fl_idset_has(&s, "b", 150));
    FL_CHECK(!fl_idset_has(&s, "c", 0));
    fl_idset_add(&s, "a", 120); /* refreshed */
    FL_CHECK(fl_idset_has(&s, "a", 200));
    FL_CHECK_EQ_U64(s.n, 2);
    fl_idset_del(&s, "a");
    FL_CHECK(!fl_idset_has(&s, "a", 120));
    FL_CHECK(fl_idset_has(&s, "b", 100)); /* its probe chain intact */
    fl_idset_add(&s, "a", 130);
    FL_CHECK(fl_idset_has(&s, "a", 130));
    FL_CHECK_EQ_U64(s.n, 2);
    fl_idset_free(&s);
    FL_CHECK(!fl_idset_has(&s, "b", 100));
}

void test_idset_many(void)
{
    fl_idset_t s;
    char       id[32];

    fl_idset_init(&s, 100000, 1000);
    for (int i = 0; i < 50000; i++) {
        snprintf(id, sizeof(id), "dev-%06d", i);
        fl_idset_add(&s, id, i % 7);
    }
    FL_CHECK_EQ_U64(s.n, 50000);
    FL_CHECK(2 * s.n <= s.cap);
    for (int i = 0; i < 50000; i++) {
        snprintf(id, sizeof(id), "dev-%06d", i);
        if (!fl_idset_has(&s, id, 10)) {
            fl_test_fail(__FILE__, __LINE__, "%s missing", id);
            break;
        }
    }
    FL_CHECK(!fl_idset_has(&s, "dev-050000", 10));
    fl_idset_free(&s);

    /* at the cap the set starts over rather than growing */
    fl_idset_init(&s, 100, 1000);
    for (int i = 0; i < 100; i++) {
        snprintf(id, sizeof(id), "d%d", i);
        fl_idset_add(&s, id, 0);
    }
    FL_CHECK_EQ_U64(s.n, 100);
    fl_idset_add(&s, "one more", 0);
    FL_CHECK_EQ_U64(s.n, 1);
    FL_CHECK(fl_idset_has(&s, "one more", 0));
    FL_CHECK(!fl_idset_has(&s, "d0", 0));
    fl_idset_free(&s);
}
