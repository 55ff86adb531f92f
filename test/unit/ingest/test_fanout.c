/*
 * test_fanout.c - the arguments the intake's append script takes for one
 * message (fl_fanout_message, worker/ingest/fl_fanout.h): what the script
 * reads by position, so a shift here is a wrong shadow or a wrong time on
 * every dashboard.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl_fanout.h"
#include "unit.h"

#define NOW_US 1764369000000000LL
#define SKEW   (300LL * 1000000)

typedef struct {
    char *a[64];
    int   n;
} args_t;

/* fl_resp_t's body: "$len\r\n" + bytes + "\r\n" per argument */
static void split(const fl_resp_t *r, args_t *out)
{
    const char *p = r->body.p, *end = r->body.p + r->body.len;

    out->n = 0;
    while (p < end && out->n < 64) {
        char  *nl;
        size_t len = strtoul(p + 1, &nl, 10);

        out->a[out->n] = strndup(nl + 2, len);
        out->n++;
        p = nl + 2 + len + 2;
    }
}

static void args_free(args_t *a)
{
    for (int i = 0; i < a->n; i++)
        free(a->a[i]);
}

#define SEEN "1764369000200"

static int build(const char *json, fl_resp_t *r, args_t *a)
{
    fl_telemetry_t t;
    fl_reject_t    why;

    memset(r, 0, sizeof(*r));
    if (fl_payload_parse(json, strlen(json), NOW_US, NULL, &t, &why) !=
        FL_OK)
        return 0;
    fl_fanout_message(r, "d-1", &t, NOW_US, SKEW, "fleetd:tele:3", SEEN);
    fl_telemetry_free(&t);
    split(r, a);
    return 1;
}

void test_fanout_message_args(void)
{
    fl_resp_t r;
    args_t    a;

    /* one point, its time given: "A" and ms; per metric the HSET's
     * v:, value, t:, time, then _t and last_seen: the script's common
     * case sets them as they stand */
    FL_REQUIRE(build("{\"ts\": 1764369000123, \"t\": 21.5, \"on\": true}", &r,
                     &a));
    FL_REQUIRE(a.n == 21);
    FL_CHECK_STR(a.a[0], "d-1");
    FL_CHECK_STR(a.a[1], "fleetd:tele:3");
    FL_CHECK_EQ_INT(atoi(a.a[2]), a.n - 3); /* na: all that follows */
    FL_CHECK_STR(a.a[3], "\",\"device\":\"d-1\",\"ts\":");
    FL_CHECK_STR(a.a[4], "1"); /* points */
    FL_CHECK_STR(a.a[5], "A");
    FL_CHECK_STR(a.a[6], "1764369000123");
    FL_CHECK_STR(a.a[7], ",\"values\":{\"t\":21.5,\"on\":true}}");
    FL_CHECK_STR(a.a[8], "2");
    FL_CHECK_STR(a.a[9], "v:t");
    FL_CHECK_STR(a.a[10], "21.5");
    FL_CHECK_STR(a.a[11], "t:t");
    FL_CHECK_STR(a.a[12], "1764369000123");
    FL_CHECK_STR(a.a[13], "v:on");
    FL_CHECK_STR(a.a[14], "true");
    FL_CHECK_STR(a.a[15], "t:on");
    FL_CHECK_STR(a.a[16], "1764369000123");
    FL_CHECK_STR(a.a[17], "_t");
    FL_CHECK_STR(a.a[18], "1764369000123");
    FL_CHECK_STR(a.a[19], "last_seen");
    FL_CHECK_STR(a.a[20], SEEN);
    args_free(&a);
    fl_resp_free(&r);

    /* a batch; a time near the skew (within FL_FANOUT_CLOCK_MARGIN_US of
     * it): "a" and us, checked by the script, its T empty; "A" on either
     * side of it; _t gets the last point's T */
    FL_REQUIRE(build("[{\"ts\": 1764369000100, \"x\": 1, \"y\": \"s\"},"
                     " {\"ts\": 1764369290000, \"y\": \"u\"},"
                     " {\"ts\": 1764369200000, \"x\": 2}]",
                     &r, &a));
    FL_REQUIRE(a.n == 37);
    FL_CHECK_STR(a.a[4], "3");
    FL_CHECK_STR(a.a[5], "A");
    FL_CHECK_STR(a.a[6], "1764369000100");
    FL_CHECK_STR(a.a[8], "2");
    FL_CHECK_STR(a.a[9], "v:x");
    FL_CHECK_STR(a.a[10], "1");
    FL_CHECK_STR(a.a[11], "t:x");
    FL_CHECK_STR(a.a[12], "1764369000100");
    FL_CHECK_STR(a.a[13], "v:y");
    FL_CHECK_STR(a.a[14], "\"s\"");
    FL_CHECK_STR(a.a[17], "a"); /* 290 s ahead: past skew - margin */
    FL_CHECK_STR(a.a[18], "1764369290000000");
    FL_CHECK_STR(a.a[19], ",\"values\":{\"y\":\"u\"}}");
    FL_CHECK_STR(a.a[20], "1");
    FL_CHECK_STR(a.a[21], "v:y");
    FL_CHECK_STR(a.a[22], "\"u\"");
    FL_CHECK_STR(a.a[23], "t:y");
    FL_CHECK_STR(a.a[24], "");
    FL_CHECK_STR(a.a[25], "A"); /* 200 s ahead: surely within */
    FL_CHECK_STR(a.a[26], "1764369200000");
    FL_CHECK_STR(a.a[29], "v:x");
    FL_CHECK_STR(a.a[30], "2");
    FL_CHECK_STR(a.a[32], "1764369200000");
    FL_CHECK_STR(a.a[33], "_t");
    FL_CHECK_STR(a.a[34], "1764369200000");
    FL_CHECK_STR(a.a[35], "last_seen");
    args_free(&a);
    fl_resp_free(&r);

    /* no time: "r" and the offset from the arrival */
    FL_REQUIRE(build("{\"t\": 1}", &r, &a));
    FL_REQUIRE(a.n == 17);
    FL_CHECK_STR(a.a[5], "r");
    FL_CHECK_STR(a.a[6], "0");
    FL_CHECK_STR(a.a[12], "");
    FL_CHECK_STR(a.a[14], "");
    args_free(&a);
    fl_resp_free(&r);

    /* a time of fewer than 13 digits in ms (before 2001-09-09) is never
     * compared as text: "a" */
    FL_REQUIRE(build("{\"ts\": 999999999999, \"t\": 1}", &r, &a));
    FL_REQUIRE(a.n == 17);
    FL_CHECK_STR(a.a[5], "a");
    FL_CHECK_STR(a.a[6], "999999999999000");
    FL_CHECK_STR(a.a[12], "");
    args_free(&a);
    fl_resp_free(&r);

    /* nothing to fan out: three empty head arguments */
    memset(&r, 0, sizeof(r));
    fl_fanout_message(&r, NULL, NULL, 0, 0, NULL, NULL);
    split(&r, &a);
    FL_REQUIRE(a.n == 3);
    FL_CHECK_STR(a.a[0], "");
    FL_CHECK_STR(a.a[1], "");
    FL_CHECK_STR(a.a[2], "0");
    args_free(&a);
    fl_resp_free(&r);
}

/* Many metrics: each its own four arguments, in the payload's order. */
void test_fanout_message_many_names(void)
{
    char      json[4096];
    size_t    n = 0;
    fl_resp_t r;
    args_t    a;

    n += (size_t)snprintf(json + n, sizeof(json) - n,
                          "{\"ts\": 1764369000000");
    for (int i = 0; i < 12; i++)
        n += (size_t)snprintf(json + n, sizeof(json) - n, ", \"m%d\": %d", i,
                              i);
    snprintf(json + n, sizeof(json) - n, "}");
    FL_REQUIRE(build(json, &r, &a));
    FL_REQUIRE(a.n == 9 + 4 * 12 + 4);
    FL_CHECK_STR(a.a[8], "12");
    for (int i = 0; i < 12; i++) {
        char want[16], val[8];

        snprintf(want, sizeof(want), "v:m%d", i);
        snprintf(val, sizeof(val), "%d", i);
        FL_CHECK_STR(a.a[9 + 4 * i], want);
        FL_CHECK_STR(a.a[10 + 4 * i], val);
        want[0] = 't';
        FL_CHECK_STR(a.a[11 + 4 * i], want);
        FL_CHECK_STR(a.a[12 + 4 * i], "1764369000000");
    }
    args_free(&a);
    fl_resp_free(&r);
}
