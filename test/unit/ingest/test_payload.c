/*
 * test_payload.c - fl_topic_parse() and fl_payload_parse().
 *
 * Every accepted form (CONTRACT.md section 3), the SenML base fields and
 * times, the SenML-or-batch rule, and one or more payloads for every
 * rejection reason. Times are relative to NOW, 2025-11-28T22:46:40Z.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl_payload.h"
#include "unit.h"

#define NOW    1764370000000LL /* ms */
#define NOW_US (NOW * 1000)

/* Parse a NUL-terminated payload with the default limits. */
static int parse(const char *json, fl_telemetry_t *t, fl_reject_t *why)
{
    return fl_payload_parse(json, strlen(json), NOW_US, NULL, t, why);
}

/* The metric called name in p, or NULL. */
static const fl_metric_t *metric(const fl_point_t *p, const char *name)
{
    size_t i;

    for (i = 0; i < p->nmetrics; i++) {
        if (strcmp(p->metrics[i].name, name) == 0)
            return &p->metrics[i];
    }
    return NULL;
}

/* Records a failure unless buf is refused with the reason called reason,
 * a message, and a zeroed result. */
static void check_reject(const char *file, int line, const void *buf,
                         size_t len, const fl_payload_limits_t *lim,
                         const char *reason)
{
    fl_telemetry_t t;
    fl_reject_t    why;
    int            rc;

    rc = fl_payload_parse(buf, len, NOW_US, lim, &t, &why);
    if (rc == FL_OK) {
        fl_test_fail(file, line, "accepted, want %s: %.60s", reason,
                     (const char *)buf);
        fl_telemetry_free(&t);
        return;
    }
    if (strcmp(fl_reject_name(why.reason), reason) != 0)
        fl_test_fail(file, line, "%s (%s), want %s: %.60s",
                     fl_reject_name(why.reason), why.msg, reason,
                     (const char *)buf);
    if (why.msg[0] == '\0' || !fl_utf8_valid(why.msg, strlen(why.msg)))
        fl_test_fail(file, line, "no or bad message for %s", reason);
    if (t.points != NULL || t.arena != NULL || t.npoints != 0)
        fl_test_fail(file, line, "result not zeroed after a rejection");
}

#define REJECTS(json, reason) \
    check_reject(__FILE__, __LINE__, json, strlen(json), NULL, reason)
#define REJECTS_LIM(json, lim, reason) \
    check_reject(__FILE__, __LINE__, json, strlen(json), lim, reason)

/* ts of the single point json parses to; INT64_MIN (and a failure) if it
 * does not parse to exactly one point. */
static int64_t ts_of(const char *file, int line, const char *json)
{
    fl_telemetry_t t;
    fl_reject_t    why;
    int64_t        ts;

    if (parse(json, &t, &why) != FL_OK) {
        fl_test_fail(file, line, "%s: %s (%s)", json,
                     fl_reject_name(why.reason), why.msg);
        return INT64_MIN;
    }
    if (t.npoints != 1) {
        fl_test_fail(file, line, "%s: %zu points", json, t.npoints);
        fl_telemetry_free(&t);
        return INT64_MIN;
    }
    ts = t.points[0].ts_us;
    fl_telemetry_free(&t);
    return ts;
}

#define TS_OF(json) ts_of(__FILE__, __LINE__, json)

void test_payload_topic(void)
{
    char            dev[FL_DEVICE_ID_MAX + 1];
    fl_topic_kind_t kind = 0;
    fl_reject_t     why;
    char           *t;
    static const struct {
        const char *topic;
        const char *reason;
    } bad[] = {
        {"", "bad_topic"},
        {"devices", "bad_topic"},
        {"devices/a", "bad_topic"},
        {"device/a/telemetry", "bad_topic"},
        {"/devices/a/telemetry", "bad_topic"},
        {"Devices/a/telemetry", "bad_topic"},
        {"devices/a/commands", "bad_topic"},
        {"devices/a/commands/", "bad_topic"},
        {"devices/a/commands/ack/x", "bad_topic"},
        {"devices/a/commands/acks", "bad_topic"},
        {"devices/a/command/ack", "bad_topic"},
        {"devices/a/commands/Ack", "bad_topic"},
        {"devices/a/ack", "bad_topic"},
        {"devices//commands/ack", "bad_device_id"},
        {"devices/+/commands/ack", "bad_device_id"},
        {"devices/a/telemetry/x", "bad_topic"},
        {"devices/a/b/telemetry", "bad_topic"},
        {"devices/a/", "bad_topic"},
        {"devices//telemetry", "bad_device_id"},
        {"devices/a b/state", "bad_device_id"},
        {"devices/+/telemetry", "bad_device_id"},
        {"devices/#/telemetry", "bad_device_id"},
        {"devices/d\xc3\xa9v/telemetry", "bad_device_id"},
        {"devices/a,b/telemetry", "bad_device_id"},
    };
    size_t i;

    FL_CHECK_EQ_INT(
        fl_topic_parse("devices/dev-1/telemetry", 23, dev, &kind, &why), FL_OK);
    FL_CHECK_STR(dev, "dev-1");
    FL_CHECK_EQ_INT(kind, FL_TOPIC_TELEMETRY);

    FL_CHECK_EQ_INT(
        fl_topic_parse("devices/a.b:c_d-E9/state", 24, dev, &kind, NULL),
        FL_OK);
    FL_CHECK_STR(dev, "a.b:c_d-E9");
    FL_CHECK_EQ_INT(kind, FL_TOPIC_STATE);

    /* a device's answers to commands */
    FL_CHECK_EQ_INT(
        fl_topic_parse("devices/dev-1/commands/ack", 26, dev, &kind, &why),
        FL_OK);
    FL_CHECK_STR(dev, "dev-1");
    FL_CHECK_EQ_INT(kind, FL_TOPIC_CMD_ACK);
    FL_CHECK_EQ_INT(
        fl_topic_parse("devices/dev-1/commands/ackX", 26, dev, &kind, &why),
        FL_OK);
    FL_CHECK_EQ_INT(kind, FL_TOPIC_CMD_ACK);

    /* the length counts, not a NUL */
    FL_CHECK_EQ_INT(
        fl_topic_parse("devices/x/telemetryXYZ", 19, dev, &kind, &why), FL_OK);
    FL_CHECK_STR(dev, "x");
    FL_CHECK_EQ_INT(
        fl_topic_parse("devices/a\0b/telemetry", 21, dev, &kind, &why),
        FL_ERROR);
    FL_CHECK_STR(fl_reject_name(why.reason), "bad_device_id");

    /* 64 bytes is the longest id */
    t = fl_test_repeat("devices/", 'x', 64, "/telemetry");
    FL_CHECK_EQ_INT(fl_topic_parse(t, strlen(t), dev, &kind, &why), FL_OK);
    FL_CHECK_EQ_INT(strlen(dev), 64);
    free(t);
    t = fl_test_repeat("devices/", 'x', 65, "/telemetry");
    FL_CHECK_EQ_INT(fl_topic_parse(t, strlen(t), dev, &kind, &why), FL_ERROR);
    FL_CHECK_STR(fl_reject_name(why.reason), "bad_device_id");
    FL_CHECK_CONTAINS(why.msg, "65 bytes");
    free(t);

    for (i = 0; i < fl_nelem(bad); i++) {
        why.reason = FL_REJECT_NONE;
        if (fl_topic_parse(bad[i].topic, strlen(bad[i].topic), dev, &kind,
                           &why) != FL_ERROR) {
            fl_test_fail(__FILE__, __LINE__, "accepted topic \"%s\"",
                         bad[i].topic);
            continue;
        }
        if (strcmp(fl_reject_name(why.reason), bad[i].reason) != 0)
            fl_test_fail(__FILE__, __LINE__, "\"%s\": %s, want %s",
                         bad[i].topic, fl_reject_name(why.reason),
                         bad[i].reason);
        FL_CHECK(why.msg[0] != '\0');
        FL_CHECK(fl_utf8_valid(why.msg, strlen(why.msg)));
        FL_CHECK_STR(dev, "");
    }

    FL_CHECK(fl_device_id_valid("A-z_0.9:x", 9));
    FL_CHECK(!fl_device_id_valid("", 0));
    FL_CHECK(!fl_device_id_valid("a/b", 3));
}

void test_payload_flat(void)
{
    fl_telemetry_t     t;
    fl_reject_t        why;
    const fl_metric_t *m;

    FL_REQUIRE(parse("{\"temperature\": 21.5, \"door\": true, \"open\": false,"
                     " \"status\": \"ok\", \"gps\": {\"lat\": 1.25, \"lon\": "
                     "-2, \"fix\": {\"q\": 3}}, \"missing\": null, \"e\": {}}",
                     &t, &why) == FL_OK);
    FL_CHECK_EQ_INT(t.form, FL_FORM_FLAT);
    FL_CHECK_STR(fl_payload_form_name(t.form), "flat");
    FL_REQUIRE(t.npoints == 1);
    FL_CHECK_EQ_INT(t.points[0].ts_us, (NOW)*1000);
    FL_CHECK_EQ_INT(t.nmetrics, 7);
    FL_CHECK_EQ_INT(t.points[0].nmetrics, 7);
    FL_CHECK_EQ_INT(t.nulls_skipped, 1);

    /* document order, dotted names */
    FL_CHECK_STR(t.points[0].metrics[0].name, "temperature");
    FL_CHECK_STR(t.points[0].metrics[4].name, "gps.lat");
    FL_CHECK_STR(t.points[0].metrics[6].name, "gps.fix.q");

    m = metric(&t.points[0], "temperature");
    FL_REQUIRE(m != NULL);
    FL_CHECK_EQ_INT(m->type, FL_METRIC_NUM);
    FL_CHECK(m->num == 21.5);
    FL_CHECK(m->unit == NULL);
    m = metric(&t.points[0], "door");
    FL_REQUIRE(m != NULL);
    FL_CHECK_EQ_INT(m->type, FL_METRIC_BOOL);
    FL_CHECK_EQ_INT(m->b, 1);
    m = metric(&t.points[0], "open");
    FL_REQUIRE(m != NULL);
    FL_CHECK_EQ_INT(m->type, FL_METRIC_BOOL);
    FL_CHECK_EQ_INT(m->b, 0);
    m = metric(&t.points[0], "status");
    FL_REQUIRE(m != NULL);
    FL_CHECK_EQ_INT(m->type, FL_METRIC_STR);
    FL_CHECK_STR(m->str, "ok");
    m = metric(&t.points[0], "gps.lon");
    FL_REQUIRE(m != NULL);
    FL_CHECK(m->num == -2);
    m = metric(&t.points[0], "gps.fix.q");
    FL_REQUIRE(m != NULL);
    FL_CHECK(m->num == 3);
    FL_CHECK(metric(&t.points[0], "missing") == NULL);
    FL_CHECK(metric(&t.points[0], "e") == NULL);
    fl_telemetry_free(&t);
    FL_CHECK(t.points == NULL && t.arena == NULL);
    fl_telemetry_free(&t); /* twice is harmless */
    fl_telemetry_free(NULL);

    /* a nested "ts" is a metric; keys with dots are kept as they are */
    FL_REQUIRE(parse("{\"a\": {\"ts\": 5}, \"b.c\": 1}", &t, &why) == FL_OK);
    FL_CHECK(metric(&t.points[0], "a.ts") != NULL);
    FL_CHECK(metric(&t.points[0], "b.c") != NULL);
    fl_telemetry_free(&t);

    /* escapes and UTF-8 come out decoded */
    FL_REQUIRE(parse("{\"t\\u00e9mp\": \"\\ud83d\\ude00 caf\xc3\xa9\\n\"}", &t,
                     &why) == FL_OK);
    FL_REQUIRE(t.nmetrics == 1);
    FL_CHECK_STR(t.points[0].metrics[0].name, "t\xc3\xa9mp");
    FL_CHECK_STR(t.points[0].metrics[0].str, "\xf0\x9f\x98\x80 caf\xc3\xa9\n");
    fl_telemetry_free(&t);

    /* whitespace around, a byte order mark, 1e-999 underflows to 0 */
    FL_REQUIRE(parse("\xef\xbb\xbf \r\n\t{\"a\" : 1e-999 }\n ", &t, &why) ==
               FL_OK);
    FL_CHECK(t.points[0].metrics[0].num == 0);
    fl_telemetry_free(&t);
}

void test_payload_values_form(void)
{
    fl_telemetry_t t;
    fl_reject_t    why;

    FL_REQUIRE(parse("{\"ts\": 1764369000000, \"values\": {\"a\": 1, "
                     "\"gps\": {\"lat\": 2}}}",
                     &t, &why) == FL_OK);
    FL_CHECK_EQ_INT(t.form, FL_FORM_VALUES);
    FL_CHECK_EQ_INT(t.points[0].ts_us, (1764369000000LL) * 1000);
    FL_CHECK_EQ_INT(t.nmetrics, 2);
    FL_CHECK(metric(&t.points[0], "a") != NULL);
    FL_CHECK(metric(&t.points[0], "gps.lat") != NULL);
    fl_telemetry_free(&t);

    /* ts is optional; order does not matter */
    FL_REQUIRE(parse("{\"values\": {\"a\": 1}}", &t, &why) == FL_OK);
    FL_CHECK_EQ_INT(t.form, FL_FORM_VALUES);
    FL_CHECK_EQ_INT(t.points[0].ts_us, (NOW)*1000);
    FL_CHECK_STR(t.points[0].metrics[0].name, "a");
    fl_telemetry_free(&t);
    FL_REQUIRE(
        parse("{\"values\": {\"a\": 1}, \"ts\": \"2025-11-28T22:00:00Z\"}", &t,
              &why) == FL_OK);
    FL_CHECK_EQ_INT(t.form, FL_FORM_VALUES);
    FL_CHECK_EQ_INT(t.points[0].ts_us, (1764367200000LL) * 1000);
    fl_telemetry_free(&t);

    /* another key, or values not an object: form 1 */
    FL_REQUIRE(parse("{\"values\": {\"a\": 1}, \"x\": 2}", &t, &why) == FL_OK);
    FL_CHECK_EQ_INT(t.form, FL_FORM_FLAT);
    FL_CHECK(metric(&t.points[0], "values.a") != NULL);
    FL_CHECK(metric(&t.points[0], "x") != NULL);
    fl_telemetry_free(&t);
    FL_REQUIRE(parse("{\"ts\": 1764369000000, \"values\": 5}", &t, &why) ==
               FL_OK);
    FL_CHECK_EQ_INT(t.form, FL_FORM_FLAT);
    FL_CHECK(metric(&t.points[0], "values") != NULL);
    fl_telemetry_free(&t);

    REJECTS("{\"ts\": 1764369000000, \"values\": {}}", "no_metrics");
    REJECTS("{\"values\": {\"a\": null}}", "no_metrics");
    REJECTS("{\"ts\": 1764369000000, \"values\": [1]}", "array_value");
}

void test_payload_ts_epoch_ms(void)
{
    FL_CHECK_EQ_INT(TS_OF("{\"ts\": 1764369000000, \"a\": 1}"),
                    (1764369000000LL) * 1000);
    FL_CHECK_EQ_INT(TS_OF("{\"a\": 1, \"ts\": 1764369000123}"),
                    (1764369000123LL) * 1000);
    /* integral in any spelling */
    FL_CHECK_EQ_INT(TS_OF("{\"ts\": 1764369000000.0, \"a\": 1}"),
                    (1764369000000LL) * 1000);
    FL_CHECK_EQ_INT(TS_OF("{\"ts\": 1.764369e12, \"a\": 1}"),
                    (1764369000000LL) * 1000);
    /* the bounds themselves are accepted */
    FL_CHECK_EQ_INT(TS_OF("{\"ts\": 946684800000, \"a\": 1}"),
                    (946684800000LL) * 1000);
    FL_CHECK_EQ_INT(TS_OF("{\"ts\": 1764456400000, \"a\": 1}"),
                    (NOW + 86400000) * 1000);
    FL_CHECK_EQ_INT(TS_OF("{\"a\": 1}"), (NOW)*1000);
}

void test_payload_ts_rfc3339(void)
{
    FL_CHECK_EQ_INT(TS_OF("{\"ts\": \"2025-11-28T22:46:40Z\", \"a\": 1}"),
                    (NOW)*1000);
    FL_CHECK_EQ_INT(TS_OF("{\"ts\": \"2025-11-28T22:46:40.123Z\", \"a\": 1}"),
                    (NOW + 123) * 1000);
    FL_CHECK_EQ_INT(TS_OF("{\"ts\": \"2025-11-28T22:46:40.5Z\", \"a\": 1}"),
                    (NOW + 500) * 1000);
    /* up to 6 fraction digits are kept (the storage's microseconds),
     * more are truncated */
    FL_CHECK_EQ_INT(
        TS_OF("{\"ts\": \"2025-11-28t22:46:40.123999999z\", \"a\": 1}"),
        NOW_US + 123999);
    FL_CHECK_EQ_INT(
        TS_OF("{\"ts\": \"2025-11-28T22:46:40.000001Z\", \"a\": 1}"),
        NOW_US + 1);
    FL_CHECK_EQ_INT(TS_OF("{\"ts\": \"2025-11-28T23:46:40+01:00\", \"a\": 1}"),
                    (NOW)*1000);
    FL_CHECK_EQ_INT(
        TS_OF("{\"ts\": \"2025-11-28T21:16:40.5-01:30\", \"a\": 1}"),
        (NOW + 500) * 1000);
    FL_CHECK_EQ_INT(TS_OF("{\"ts\": \"2025-11-28 22:46:40Z\", \"a\": 1}"),
                    (NOW)*1000);
    FL_CHECK_EQ_INT(TS_OF("{\"ts\": \"2024-02-29T00:00:00Z\", \"a\": 1}"),
                    (1709164800000LL) * 1000);
    FL_CHECK_EQ_INT(TS_OF("{\"ts\": \"2000-01-01T00:00:00Z\", \"a\": 1}"),
                    (946684800000LL) * 1000);
    /* a leap second becomes the next second */
    FL_CHECK_EQ_INT(TS_OF("{\"ts\": \"2016-12-31T23:59:60Z\", \"a\": 1}"),
                    (1483228800000LL) * 1000);
}

void test_payload_ts_rejects(void)
{
    static const char *const bad[] = {
        /* epoch ms */
        "{\"ts\": -5, \"a\": 1}",
        "{\"ts\": 0, \"a\": 1}",
        "{\"ts\": 1764370000, \"a\": 1}", /* seconds */
        "{\"ts\": 1764369000000.5, \"a\": 1}",
        "{\"ts\": 1764456400001, \"a\": 1}", /* a day + 1 ms ahead */
        "{\"ts\": 1e300, \"a\": 1}",
        "{\"ts\": 1e999, \"a\": 1}",
        "{\"ts\": true, \"a\": 1}",
        "{\"ts\": null, \"a\": 1}",
        "{\"ts\": {}, \"a\": 1}",
        "{\"ts\": 1764369000000, \"ts\": 1764369000000, \"a\": 1}",
        /* RFC 3339 */
        "{\"ts\": \"1764369000000\", \"a\": 1}",
        "{\"ts\": \"\", \"a\": 1}",
        "{\"ts\": \"2025-11-28T22:46:40\", \"a\": 1}",
        "{\"ts\": \"2025-11-28\", \"a\": 1}",
        "{\"ts\": \"2025-02-29T00:00:00Z\", \"a\": 1}",
        "{\"ts\": \"2025-13-01T00:00:00Z\", \"a\": 1}",
        "{\"ts\": \"2025-00-01T00:00:00Z\", \"a\": 1}",
        "{\"ts\": \"2025-11-31T00:00:00Z\", \"a\": 1}",
        "{\"ts\": \"2025-11-28T24:00:00Z\", \"a\": 1}",
        "{\"ts\": \"2025-11-28T22:60:00Z\", \"a\": 1}",
        "{\"ts\": \"2025-11-28T22:46:40.Z\", \"a\": 1}",
        "{\"ts\": \"2025-11-28T22:46:40+0100\", \"a\": 1}",
        "{\"ts\": \"2025-11-28T22:46:40+24:00\", \"a\": 1}",
        "{\"ts\": \"2025-11-28T22:46:40Z \", \"a\": 1}",
        "{\"ts\": \"2025-11-28X22:46:40Z\", \"a\": 1}",
        "{\"ts\": \"+2025-11-28T22:46:40Z\", \"a\": 1}",
        "{\"ts\": \"1999-12-31T23:59:59.999Z\", \"a\": 1}",
        "{\"ts\": \"2025-11-30T22:46:40Z\", \"a\": 1}",
    };
    fl_telemetry_t t;
    fl_reject_t    why;
    size_t         i;

    for (i = 0; i < fl_nelem(bad); i++)
        REJECTS(bad[i], "bad_timestamp");

    /* a value that looks like seconds says so */
    FL_CHECK_EQ_INT(parse("{\"ts\": 1764370000, \"a\": 1}", &t, &why),
                    FL_ERROR);
    FL_CHECK_CONTAINS(why.msg, "seconds?");

    /* the bounds come from the limits */
    {
        fl_payload_limits_t lim;
        const char         *j;

        fl_payload_limits_default(&lim);
        lim.max_future_ms = -1;
        lim.min_ts_ms = 0;
        j = "{\"ts\": 4102444800000, \"a\": 1}";
        FL_REQUIRE(fl_payload_parse(j, strlen(j), NOW_US, &lim, &t, &why) ==
                   FL_OK);
        FL_CHECK_EQ_INT(t.points[0].ts_us, (4102444800000LL) * 1000);
        fl_telemetry_free(&t);
        j = "{\"ts\": 5, \"a\": 1}";
        FL_REQUIRE(fl_payload_parse(j, strlen(j), NOW_US, &lim, &t, &why) ==
                   FL_OK);
        FL_CHECK_EQ_INT(t.points[0].ts_us, (5) * 1000);
        fl_telemetry_free(&t);
        lim.max_future_ms = 0;
        REJECTS_LIM("{\"ts\": 1764370000001, \"a\": 1}", &lim, "bad_timestamp");
    }
}

void test_payload_batch(void)
{
    fl_telemetry_t      t;
    fl_reject_t         why;
    fl_payload_limits_t lim;

    FL_REQUIRE(parse("[{\"ts\": 1764369000000, \"a\": 1, \"s\": \"x\"},"
                     " {\"ts\": \"2025-11-28T22:31:00Z\", \"values\": "
                     "{\"a\": 2, \"gps\": {\"lat\": 1.5}}}]",
                     &t, &why) == FL_OK);
    FL_CHECK_EQ_INT(t.form, FL_FORM_BATCH);
    FL_REQUIRE(t.npoints == 2);
    FL_CHECK_EQ_INT(t.nmetrics, 4);
    FL_CHECK_EQ_INT(t.points[0].ts_us, (1764369000000LL) * 1000);
    FL_CHECK_EQ_INT(t.points[0].nmetrics, 2);
    FL_CHECK_EQ_INT(t.points[1].ts_us, (1764369060000LL) * 1000);
    FL_CHECK_EQ_INT(t.points[1].nmetrics, 2);
    FL_CHECK(metric(&t.points[0], "a")->num == 1);
    FL_CHECK_STR(metric(&t.points[0], "s")->str, "x");
    FL_CHECK(metric(&t.points[1], "a")->num == 2);
    FL_CHECK(metric(&t.points[1], "gps.lat")->num == 1.5);
    fl_telemetry_free(&t);

    /* one element; array order is kept even when times go backwards */
    FL_REQUIRE(parse("[{\"a\": 1}]", &t, &why) == FL_OK);
    FL_CHECK_EQ_INT(t.npoints, 1);
    FL_CHECK_EQ_INT(t.points[0].ts_us, (NOW)*1000);
    fl_telemetry_free(&t);
    FL_REQUIRE(parse("[{\"ts\": 1764369000002, \"a\": 1}, {\"ts\": "
                     "1764369000001, \"a\": 2}]",
                     &t, &why) == FL_OK);
    FL_CHECK_EQ_INT(t.points[0].ts_us, (1764369000002LL) * 1000);
    FL_CHECK_EQ_INT(t.points[1].ts_us, (1764369000001LL) * 1000);
    fl_telemetry_free(&t);

    REJECTS("[]", "no_metrics");
    REJECTS("[{\"a\": 1}, {}]", "no_metrics");
    REJECTS("[{\"a\": 1}, {\"b\": null}]", "no_metrics");
    REJECTS("[{\"a\": 1}, 2]", "not_an_object");
    REJECTS("[[{\"a\": 1}]]", "not_an_object");
    REJECTS("[{\"a\": [1]}]", "array_value");
    /* two readings of a at the same time (both "now") */
    REJECTS("[{\"a\": 1}, {\"a\": 2}]", "duplicate_metric");
    REJECTS("[{\"a\": 1}, {\"ts\": 1e999, \"a\": 2}]", "bad_timestamp");

    fl_payload_limits_default(&lim);
    lim.max_batch = 2;
    REJECTS_LIM("[{\"a\": 1}, {\"b\": 1}, {\"c\": 1}]", &lim,
                "batch_too_large");
    lim.max_metrics = 3;
    REJECTS_LIM("[{\"a\": 1, \"b\": 2}, {\"c\": 1, \"d\": 2}]", &lim,
                "too_many_metrics");
}

void test_payload_senml_basic(void)
{
    fl_telemetry_t     t;
    fl_reject_t        why;
    const fl_metric_t *m;

    /* RFC 8428 section 5.1.2 */
    FL_REQUIRE(parse("[{\"bn\":\"urn:dev:ow:10e2073a01080063:\","
                     "\"n\":\"voltage\",\"u\":\"V\",\"v\":120.1},"
                     "{\"n\":\"current\",\"u\":\"A\",\"v\":1.2}]",
                     &t, &why) == FL_OK);
    FL_CHECK_EQ_INT(t.form, FL_FORM_SENML);
    FL_CHECK_STR(fl_payload_form_name(t.form), "senml");
    FL_REQUIRE(t.npoints == 1);
    FL_CHECK_EQ_INT(t.points[0].ts_us, (NOW)*1000);
    FL_REQUIRE(t.points[0].nmetrics == 2);
    m = &t.points[0].metrics[0];
    FL_CHECK_STR(m->name, "urn:dev:ow:10e2073a01080063:voltage");
    FL_CHECK_STR(m->unit, "V");
    FL_CHECK(m->num == 120.1);
    m = &t.points[0].metrics[1];
    FL_CHECK_STR(m->name, "urn:dev:ow:10e2073a01080063:current");
    FL_CHECK_STR(m->unit, "A");
    fl_telemetry_free(&t);

    /* every value kind, and the sum */
    FL_REQUIRE(parse("[{\"bn\":\"m/\",\"n\":\"status\",\"vs\":\"ok\"},"
                     "{\"n\":\"door\",\"vb\":true},"
                     "{\"n\":\"blob\",\"vd\":\"aGk\"},"
                     "{\"n\":\"energy\",\"s\":100,\"bs\":5,\"u\":\"Wh\"},"
                     "{\"n\":\"flow\",\"v\":2,\"s\":30}]",
                     &t, &why) == FL_OK);
    FL_REQUIRE(t.npoints == 1);
    FL_CHECK_EQ_INT(t.nmetrics, 6);
    m = metric(&t.points[0], "m/status");
    FL_REQUIRE(m != NULL);
    FL_CHECK_EQ_INT(m->type, FL_METRIC_STR);
    FL_CHECK_STR(m->str, "ok");
    m = metric(&t.points[0], "m/door");
    FL_REQUIRE(m != NULL);
    FL_CHECK_EQ_INT(m->type, FL_METRIC_BOOL);
    FL_CHECK_EQ_INT(m->b, 1);
    m = metric(&t.points[0], "m/blob");
    FL_REQUIRE(m != NULL);
    FL_CHECK_STR(m->str, "aGk");
    FL_CHECK(metric(&t.points[0], "m/energy") == NULL);
    m = metric(&t.points[0], "m/energy.sum");
    FL_REQUIRE(m != NULL);
    FL_CHECK(m->num == 105);
    FL_CHECK_STR(m->unit, "Wh");
    m = metric(&t.points[0], "m/flow");
    FL_REQUIRE(m != NULL);
    FL_CHECK(m->num == 2);
    m = metric(&t.points[0], "m/flow.sum");
    FL_REQUIRE(m != NULL);
    FL_CHECK(m->num == 35); /* bs stays in force */
    fl_telemetry_free(&t);

    /* a record with only base fields is a header, bn alone is a name */
    FL_REQUIRE(parse("[{\"bn\":\"dev/\",\"bt\":1764369000,\"bver\":10},"
                     "{\"n\":\"a\",\"v\":1},{\"bn\":\"solo\",\"v\":2},"
                     "{\"l\":\"x\",\"ct\":\"60\"}]",
                     &t, &why) == FL_OK);
    FL_CHECK_EQ_INT(t.nmetrics, 2);
    FL_CHECK_EQ_INT(t.points[0].ts_us, (1764369000000LL) * 1000);
    FL_CHECK(metric(&t.points[0], "dev/a") != NULL);
    FL_CHECK(metric(&t.points[0], "solo") != NULL);
    fl_telemetry_free(&t);
}

void test_payload_senml_base_fields(void)
{
    fl_telemetry_t     t;
    fl_reject_t        why;
    const fl_metric_t *m;
    const int64_t      bt = 1764369000000LL;

    /* RFC 8428 section 5.1.3, with bv joining at the fourth record */
    FL_REQUIRE(parse("[{\"bn\":\"dev1/\",\"bt\":1.764369e9,\"bu\":\"A\","
                     "\"bver\":5,\"n\":\"voltage\",\"u\":\"V\",\"v\":120.1},"
                     "{\"n\":\"current\",\"t\":-5,\"v\":1.2},"
                     "{\"n\":\"current\",\"t\":-4,\"v\":1.3},"
                     "{\"n\":\"current\",\"t\":-3,\"v\":1.4,\"bv\":10},"
                     "{\"n\":\"current\",\"t\":-2,\"v\":1.5}]",
                     &t, &why) == FL_OK);
    FL_REQUIRE(t.npoints == 5);
    FL_CHECK_EQ_INT(t.nmetrics, 5);
    /* ascending time */
    FL_CHECK_EQ_INT(t.points[0].ts_us, (bt - 5000) * 1000);
    FL_CHECK_EQ_INT(t.points[1].ts_us, (bt - 4000) * 1000);
    FL_CHECK_EQ_INT(t.points[2].ts_us, (bt - 3000) * 1000);
    FL_CHECK_EQ_INT(t.points[3].ts_us, (bt - 2000) * 1000);
    FL_CHECK_EQ_INT(t.points[4].ts_us, (bt)*1000);
    m = &t.points[0].metrics[0];
    FL_CHECK_STR(m->name, "dev1/current");
    FL_CHECK_STR(m->unit, "A"); /* bu */
    FL_CHECK(m->num == 1.2);
    FL_CHECK(t.points[2].metrics[0].num == 11.4); /* bv + v */
    FL_CHECK(t.points[3].metrics[0].num == 11.5);
    m = &t.points[4].metrics[0];
    FL_CHECK_STR(m->name, "dev1/voltage");
    FL_CHECK_STR(m->unit, "V"); /* u wins over bu */
    fl_telemetry_free(&t);

    /* a later bn replaces the earlier one */
    FL_REQUIRE(
        parse("[{\"bn\":\"a/\",\"n\":\"x\",\"v\":1},"
              "{\"bn\":\"b/\",\"n\":\"x\",\"v\":2},{\"n\":\"y\",\"v\":3}]",
              &t, &why) == FL_OK);
    FL_CHECK(metric(&t.points[0], "a/x")->num == 1);
    FL_CHECK(metric(&t.points[0], "b/x")->num == 2);
    FL_CHECK(metric(&t.points[0], "b/y")->num == 3);
    fl_telemetry_free(&t);
}

void test_payload_senml_time(void)
{
    fl_telemetry_t t;
    fl_reject_t    why;

    /* below 2^28 seconds: relative to now, fractions to the ms */
    FL_REQUIRE(parse("[{\"n\":\"temp\",\"v\":20,\"t\":-60},"
                     "{\"n\":\"temp\",\"v\":21},"
                     "{\"n\":\"temp\",\"v\":19,\"t\":-1.5}]",
                     &t, &why) == FL_OK);
    FL_REQUIRE(t.npoints == 3);
    FL_CHECK_EQ_INT(t.points[0].ts_us, (NOW - 60000) * 1000);
    FL_CHECK(t.points[0].metrics[0].num == 20);
    FL_CHECK_EQ_INT(t.points[1].ts_us, (NOW - 1500) * 1000);
    FL_CHECK(t.points[1].metrics[0].num == 19);
    FL_CHECK_EQ_INT(t.points[2].ts_us, (NOW)*1000);
    fl_telemetry_free(&t);

    /* bt + t, both relative */
    FL_REQUIRE(parse("[{\"bt\":-120,\"n\":\"a\",\"v\":1,\"t\":30}]", &t,
                     &why) == FL_OK);
    FL_CHECK_EQ_INT(t.points[0].ts_us, (NOW - 90000) * 1000);
    fl_telemetry_free(&t);

    /* absolute, with a fraction of a second */
    FL_REQUIRE(parse("[{\"n\":\"a\",\"v\":1,\"t\":1764369000.25}]", &t, &why) ==
               FL_OK);
    FL_CHECK_EQ_INT(t.points[0].ts_us, (1764369000250LL) * 1000);
    fl_telemetry_free(&t);

    /* grouping: records at the same resolved time share a point, in record
     * order; distinct times come out ascending */
    FL_REQUIRE(parse("[{\"bn\":\"d/\",\"bt\":1764369000,\"n\":\"a\",\"v\":1},"
                     "{\"n\":\"b\",\"v\":2,\"t\":-10},"
                     "{\"n\":\"c\",\"v\":3},"
                     "{\"n\":\"a\",\"v\":4,\"t\":-10}]",
                     &t, &why) == FL_OK);
    FL_REQUIRE(t.npoints == 2);
    FL_CHECK_EQ_INT(t.points[0].ts_us, (1764368990000LL) * 1000);
    FL_REQUIRE(t.points[0].nmetrics == 2);
    FL_CHECK_STR(t.points[0].metrics[0].name, "d/b");
    FL_CHECK_STR(t.points[0].metrics[1].name, "d/a");
    FL_CHECK(t.points[0].metrics[1].num == 4);
    FL_CHECK_EQ_INT(t.points[1].ts_us, (1764369000000LL) * 1000);
    FL_REQUIRE(t.points[1].nmetrics == 2);
    FL_CHECK_STR(t.points[1].metrics[0].name, "d/a");
    FL_CHECK_STR(t.points[1].metrics[1].name, "d/c");
    fl_telemetry_free(&t);

    REJECTS("[{\"n\":\"a\",\"v\":1,\"t\":-1e300}]", "bad_timestamp");
    REJECTS("[{\"n\":\"a\",\"v\":1,\"bt\":1e300}]", "bad_timestamp");
    REJECTS("[{\"n\":\"a\",\"v\":1,\"t\":946684799}]", "bad_timestamp");
    REJECTS("[{\"n\":\"a\",\"v\":1,\"t\":86401}]", "bad_timestamp");
    REJECTS("[{\"n\":\"a\",\"v\":1,\"bt\":1e308,\"t\":1e308}]",
            "bad_timestamp");
}

void test_payload_senml_rejects(void)
{
    static const struct {
        const char *json;
        const char *reason;
    } bad[] = {
        {"[{\"n\":\"a\",\"v\":1,\"foo\":2}]", "bad_senml"},
        {"[{\"n\":\"a\",\"v\":1,\"x_\":2}]", "bad_senml"}, /* must-understand */
        {"[{\"n\":\"a\",\"v\":\"1\"}]", "bad_senml"},
        {"[{\"n\":\"a\",\"vb\":1}]", "bad_senml"},
        {"[{\"n\":\"a\",\"vs\":1}]", "bad_senml"},
        {"[{\"n\":\"a\",\"v\":1,\"t\":\"now\"}]", "bad_senml"},
        {"[{\"n\":\"a\",\"v\":null}]", "bad_senml"},
        {"[{\"n\":\"a\",\"v\":1,\"vs\":\"x\"}]", "bad_senml"},
        {"[{\"n\":\"a\"}]", "bad_senml"},
        {"[{\"n\":\"a\",\"u\":\"V\"}]", "bad_senml"},
        {"[{\"bn\":\"\",\"n\":\"\",\"v\":1}]", "bad_senml"},
        {"[{\"n\":\"-a\",\"v\":1}]", "bad_senml"},
        {"[{\"n\":\"a b\",\"v\":1}]", "bad_senml"},
        {"[{\"n\":\"caf\xc3\xa9\",\"v\":1}]", "bad_senml"},
        {"[{\"n\":\"a\",\"v\":1},5]", "bad_senml"},
        {"[{\"n\":\"a\",\"v\":1},[]]", "bad_senml"},
        {"[{\"bver\":11,\"n\":\"a\",\"v\":1}]", "bad_senml"},
        {"[{\"bver\":1.5,\"n\":\"a\",\"v\":1}]", "bad_senml"},
        {"[{\"n\":\"a\",\"v\":1,\"n\":\"b\"}]", "bad_senml"},
        {"[{\"n\":\"a\",\"v\":{}}]", "bad_senml"},
        {"[{\"bn\":\"x\",\"bt\":1764369000}]", "no_metrics"},
        {"[{\"n\":\"a\",\"v\":1},{\"n\":\"a\",\"v\":2}]", "duplicate_metric"},
        {"[{\"n\":\"a\",\"v\":1,\"s\":1},{\"n\":\"a.sum\",\"v\":2}]",
         "duplicate_metric"},
        {"[{\"n\":\"a\",\"v\":1e999}]", "bad_number"},
        {"[{\"n\":\"a\",\"bv\":1e308,\"v\":1e308}]", "bad_number"},
        {"[{\"n\":\"a\",\"v\":1,\"ut\":-1e999}]", "bad_number"},
    };
    fl_payload_limits_t lim;
    size_t              i;

    for (i = 0; i < fl_nelem(bad); i++)
        REJECTS(bad[i].json, bad[i].reason);

    fl_payload_limits_default(&lim);
    lim.max_name_len = 8;
    REJECTS_LIM("[{\"bn\":\"abcde/\",\"n\":\"xyz\",\"v\":1}]", &lim,
                "name_too_long");
    REJECTS_LIM("[{\"n\":\"abcde\",\"s\":1}]", &lim, "name_too_long");
    lim.max_string_bytes = 3;
    REJECTS_LIM("[{\"n\":\"a\",\"vs\":\"abcd\"}]", &lim, "string_too_long");
    lim.max_batch = 2;
    REJECTS_LIM("[{\"n\":\"a\",\"v\":1},{\"n\":\"b\",\"v\":1},{\"n\":\"c\","
                "\"v\":1}]",
                &lim, "batch_too_large");
    fl_payload_limits_default(&lim);
    lim.max_metrics = 2;
    REJECTS_LIM("[{\"n\":\"a\",\"v\":1,\"s\":2},{\"n\":\"b\",\"v\":1}]", &lim,
                "too_many_metrics");
}

/* The documented rule: SenML when an element is an object with n or bn. */
void test_payload_senml_or_batch(void)
{
    fl_telemetry_t t;
    fl_reject_t    why;

    /* no n / bn anywhere: a batch, even with SenML-looking keys */
    FL_REQUIRE(parse("[{\"v\": 1, \"t\": 0}]", &t, &why) == FL_OK);
    FL_CHECK_EQ_INT(t.form, FL_FORM_BATCH);
    FL_CHECK(metric(&t.points[0], "v") != NULL);
    FL_CHECK(metric(&t.points[0], "t") != NULL);
    FL_CHECK_EQ_INT(t.points[0].ts_us, (NOW)*1000);
    fl_telemetry_free(&t);

    /* a metric called n goes under values */
    FL_REQUIRE(parse("[{\"values\": {\"n\": 1}}]", &t, &why) == FL_OK);
    FL_CHECK_EQ_INT(t.form, FL_FORM_BATCH);
    FL_CHECK(metric(&t.points[0], "n") != NULL);
    fl_telemetry_free(&t);

    /* a top-level object is never SenML */
    FL_REQUIRE(parse("{\"n\": \"x\", \"v\": 1}", &t, &why) == FL_OK);
    FL_CHECK_EQ_INT(t.form, FL_FORM_FLAT);
    FL_CHECK_STR(metric(&t.points[0], "n")->str, "x");
    fl_telemetry_free(&t);

    /* one element with n or bn makes the whole array SenML */
    FL_REQUIRE(parse("[{\"bn\": \"d/\", \"n\": \"a\", \"v\": 1}]", &t, &why) ==
               FL_OK);
    FL_CHECK_EQ_INT(t.form, FL_FORM_SENML);
    fl_telemetry_free(&t);
    FL_REQUIRE(parse("[{\"bn\": \"d/\", \"bt\": 1764369000}, {\"v\": 1}]", &t,
                     &why) == FL_OK);
    FL_CHECK_EQ_INT(t.form, FL_FORM_SENML);
    FL_CHECK(metric(&t.points[0], "d/") != NULL);
    fl_telemetry_free(&t);
    REJECTS("[{\"temp\": 1}, {\"n\": \"x\", \"v\": 2}]", "bad_senml");
    REJECTS("[{\"ts\": 1764369000000, \"n\": 5}]", "bad_senml");
    REJECTS("[{\"n\": 5}]", "bad_senml");
    REJECTS("[1, {\"n\": \"x\", \"v\": 1}]", "bad_senml");
    /* nested n does not count */
    FL_REQUIRE(parse("[{\"a\": {\"n\": 1}}]", &t, &why) == FL_OK);
    FL_CHECK_EQ_INT(t.form, FL_FORM_BATCH);
    FL_CHECK(metric(&t.points[0], "a.n") != NULL);
    fl_telemetry_free(&t);
}

void test_payload_rej_empty(void)
{
    check_reject(__FILE__, __LINE__, "", 0, NULL, "empty");
    check_reject(__FILE__, __LINE__, NULL, 0, NULL, "empty");
    REJECTS(" \r\n\t ", "empty");
    REJECTS("\xef\xbb\xbf", "empty");
    REJECTS("{}", "no_metrics");
    REJECTS("{\"ts\": 1764369000000}", "no_metrics");
    REJECTS("{\"a\": null, \"b\": {}}", "no_metrics");
    REJECTS("[{}]", "no_metrics");
}

void test_payload_rej_too_large(void)
{
    fl_payload_limits_t lim;
    char               *big;

    big = fl_test_repeat("{\"a\": \"", 'x', 65536, "\"}");
    REJECTS(big, "too_large");
    free(big);

    fl_payload_limits_default(&lim);
    lim.max_payload_bytes = 10;
    REJECTS_LIM("{\"ab\": 1.5}", &lim, "too_large");
    {
        fl_telemetry_t t;
        fl_reject_t    why;

        FL_CHECK_EQ_INT(
            fl_payload_parse("{\"a\": 1.5}", 10, NOW_US, &lim, &t, &why),
            FL_OK);
        fl_telemetry_free(&t);
    }
}

void test_payload_rej_invalid_json(void)
{
    static const char *const bad[] = {
        "{",
        "}",
        "{\"a\":1",
        "{\"a\" 1}",
        "{\"a\":}",
        "{\"a\":1,}",
        "{,\"a\":1}",
        "[{\"a\":1},]",
        "{'a':1}",
        "{a:1}",
        "{\"a\":01}",
        "{\"a\":1.}",
        "{\"a\":.5}",
        "{\"a\":+1}",
        "{\"a\":-}",
        "{\"a\":1e}",
        "{\"a\":1e+}",
        "{\"a\":0x10}",
        "{\"a\":1}x",
        "{\"a\":1}{\"b\":2}",
        "{\"a\":1} 2",
        "{\"a\":tru}",
        "{\"a\":True}",
        "{\"a\":nul}",
        "{\"a\":\"x\\q\"}",
        "{\"a\":\"\\u12\"}",
        "{\"a\":\"\\u12g4\"}",
        "{\"a\":\"tab\there\"}",
        "{\"a\":\"nl\nhere\"}",
        "{\"a\":\"unterminated}",
        "{\"a\":\"ends with backslash\\",
        "{\"a\":1 /* comment */}",
        "{\"a\"\x0b:1}",
        "\"a\":1",
    };
    size_t i;

    for (i = 0; i < fl_nelem(bad); i++)
        REJECTS(bad[i], "invalid_json");
    /* embedded NUL byte */
    check_reject(__FILE__, __LINE__, "{\"a\":1}\0", 8, NULL, "invalid_json");
    check_reject(__FILE__, __LINE__, "{\"a\0\":1}", 8, NULL, "invalid_json");
    REJECTS("{\"a\": \"x\\u0000y\"}", "bad_string");
    REJECTS("{\"a\\u0000b\": 1}", "bad_string");

    /* valid JSON, not an object or array */
    REJECTS("42", "not_an_object");
    REJECTS("\"text\"", "not_an_object");
    REJECTS("true", "not_an_object");
    REJECTS("null", "not_an_object");
}

void test_payload_rej_binary(void)
{
    static const unsigned char garbage[] = {0x00, 0xff, 0xfe, 0x7b, 0x22,
                                            0x80, 0x01, 0x22, 0x3a, 0x7d};
    unsigned char              buf[64];
    uint32_t                   x = 12345;
    fl_telemetry_t             t;
    fl_reject_t                why;
    size_t                     i, j, n;

    check_reject(__FILE__, __LINE__, garbage, sizeof(garbage), NULL,
                 "invalid_json");
    check_reject(__FILE__, __LINE__, garbage + 1, sizeof(garbage) - 1, NULL,
                 "not_utf8");
    check_reject(__FILE__, __LINE__, "\x1f\x8b\x08\x00", 4, NULL,
                 "invalid_json"); /* gzip */

    /* random bytes: all refused, none as internal */
    for (i = 0; i < 2000; i++) {
        n = 1 + i % sizeof(buf);
        for (j = 0; j < n; j++) {
            x = x * 1103515245 + 12345;
            buf[j] = (unsigned char)(x >> 16);
        }
        if (fl_payload_parse(buf, n, NOW_US, NULL, &t, &why) == FL_OK) {
            fl_test_fail(__FILE__, __LINE__, "random buffer %zu accepted", i);
            fl_telemetry_free(&t);
            continue;
        }
        FL_CHECK(why.reason != FL_REJECT_INTERNAL);
        FL_CHECK(why.msg[0] != '\0');
    }
}

void test_payload_rej_utf8(void)
{
    static const char *const bad[] = {
        "{\"a\": \"\xc3\x28\"}",             /* bad continuation */
        "{\"a\": \"\xc0\xaf\"}",             /* overlong '/' */
        "{\"a\": \"\xe0\x80\xaf\"}",         /* overlong, 3 bytes */
        "{\"a\": \"\xed\xa0\x80\"}",         /* encoded surrogate */
        "{\"a\": \"\xf4\x90\x80\x80\"}",     /* above U+10FFFF */
        "{\"a\": \"\xf8\x88\x80\x80\x80\"}", /* 5 bytes */
        "{\"a\": \"\xe2\x82\"}",             /* truncated */
        "{\"a\": \"\x80\"}",                 /* lone continuation */
        "{\"\xff\": 1}",                     /* in a name */
        "{\"a\": \"x\xe2\x82",               /* truncated at the end */
        "{\"a\": 1}\xff",                    /* after the value */
        "{\"a\": \"\\ud800\"}",              /* unpaired high */
        "{\"a\": \"\\udc00\"}",              /* unpaired low */
        "{\"a\": \"\\ud800\\u0041\"}",       /* high + non-low */
        "{\"a\": \"\\ud800x\"}",
        "\xef\xbb{\"a\":1}", /* cut byte order mark */
    };
    fl_telemetry_t t;
    fl_reject_t    why;
    size_t         i;

    for (i = 0; i < fl_nelem(bad); i++)
        REJECTS(bad[i], "not_utf8");

    /* the edges of the valid ranges */
    FL_REQUIRE(parse("{\"a\": \"\xc2\x80\xdf\xbf\xe0\xa0\x80\xed\x9f\xbf"
                     "\xee\x80\x80\xf0\x90\x80\x80\xf4\x8f\xbf\xbf\"}",
                     &t, &why) == FL_OK);
    fl_telemetry_free(&t);

    FL_CHECK(fl_utf8_valid("", 0));
    FL_CHECK(fl_utf8_valid("\xe2\x82\xac", 3));
    FL_CHECK(!fl_utf8_valid("\xe2\x82", 2));
    FL_CHECK(!fl_utf8_valid("\xed\xbf\xbf", 3));
}

void test_payload_rej_deep(void)
{
    fl_payload_limits_t lim;
    fl_telemetry_t      t;
    fl_reject_t         why;
    char               *deep, *arr, *p;
    int64_t             t0, us;
    size_t              i;

    /* 10,000 levels of arrays, then of objects: refused at level 9, in
     * microseconds (the bound leaves room for a sanitizer build on a busy
     * machine), with no recursion */
    arr = fl_test_repeat("", '[', 10000, "");
    deep = malloc(10000 * 5 + 2 + 10000 + 1);
    for (p = deep, i = 0; i < 10000; i++, p += 5)
        memcpy(p, "{\"a\":", 5);
    *p++ = '1';
    memset(p, '}', 10000);
    p[10000] = '\0';
    t0 = fl_now_us();
    REJECTS(arr, "too_deep");
    REJECTS(deep, "too_deep");
    us = fl_now_us() - t0;
    FL_CHECK_LE_U64(us, 100000);
    free(arr);
    free(deep);

    /* the limit itself: 8 levels pass, 9 do not */
    FL_REQUIRE(parse("{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":"
                     "1}}}}}}}}",
                     &t, &why) == FL_OK);
    FL_CHECK_STR(t.points[0].metrics[0].name, "a.a.a.a.a.a.a.a");
    fl_telemetry_free(&t);
    REJECTS("{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":"
            "1}}}}}}}}}",
            "too_deep");
    REJECTS("[[[[[[[[[]]]]]]]]]", "too_deep");

    /* the cap: max_depth above 64 is 64 */
    fl_payload_limits_default(&lim);
    lim.max_depth = 100000;
    deep = fl_test_repeat("", '[', 65, "");
    REJECTS_LIM(deep, &lim, "too_deep");
    free(deep);
    deep = malloc(64 * 5 + 2 + 64 + 1);
    for (p = deep, i = 0; i < 64; i++, p += 5)
        memcpy(p, "{\"a\":", 5);
    *p++ = '1';
    memset(p, '}', 64);
    p[64] = '\0';
    FL_CHECK_EQ_INT(
        fl_payload_parse(deep, strlen(deep), NOW_US, &lim, &t, &why), FL_OK);
    fl_telemetry_free(&t);
    free(deep);
}

void test_payload_rej_numbers(void)
{
    char *lit;

    REJECTS("{\"a\": 1e999}", "bad_number");
    REJECTS("{\"a\": -1e999}", "bad_number");
    REJECTS("{\"a\": {\"b\": 2e308}}", "bad_number");
    REJECTS("{\"a\": NaN}", "bad_number");
    REJECTS("{\"a\": nan}", "bad_number");
    REJECTS("{\"a\": Infinity}", "bad_number");
    REJECTS("{\"a\": -Infinity}", "bad_number");
    REJECTS("{\"a\": inf}", "bad_number");
    REJECTS("[{\"a\": 1}, {\"b\": NaN}]", "bad_number");
    /* cJSON reads at most 63 characters of a number */
    lit = fl_test_repeat("{\"a\": 1.", '0', 62, "1}");
    REJECTS(lit, "bad_number");
    free(lit);
    lit = fl_test_repeat("{\"a\": 1.", '0', 60, "1}");
    {
        fl_telemetry_t t;
        fl_reject_t    why;

        FL_CHECK_EQ_INT(parse(lit, &t, &why), FL_OK);
        fl_telemetry_free(&t);
    }
    free(lit);
}

void test_payload_rej_names(void)
{
    fl_payload_limits_t lim;
    fl_telemetry_t      t;
    fl_reject_t         why;
    char               *j;

    /* 128 bytes pass, 129 do not, 60,000 neither */
    j = fl_test_repeat("{\"", 'n', 128, "\": 1}");
    FL_CHECK_EQ_INT(parse(j, &t, &why), FL_OK);
    fl_telemetry_free(&t);
    free(j);
    j = fl_test_repeat("{\"", 'n', 129, "\": 1}");
    REJECTS(j, "name_too_long");
    free(j);
    j = fl_test_repeat("{\"", 'n', 60000, "\": 1}");
    REJECTS(j, "name_too_long");
    free(j);
    /* after flattening: 100 + 1 + 28 */
    j = fl_test_repeat("{\"", 'p', 100,
                       "\": {\"abcdefghijklmnopqrstuvwxyzab\": 1}}");
    REJECTS(j, "name_too_long");
    free(j);

    REJECTS("{\"\": 1}", "bad_name");
    REJECTS("{\"a\": {\"\": 1}}", "bad_name");
    REJECTS("{\"a\\nb\": 1}", "bad_name");
    REJECTS("{\"a\\u001fb\": 1}", "bad_name");
    REJECTS("{\"a\\u007fb\": 1}", "bad_name");
    REJECTS("{\"a\\u0085b\": 1}", "bad_name");
    REJECTS("{\"gps\": {\"\\t\": 1}}", "bad_name");
    /* other non-ASCII is fine */
    FL_CHECK_EQ_INT(parse("{\"\\u00a0x\\u2028\": 1}", &t, &why), FL_OK);
    fl_telemetry_free(&t);

    fl_payload_limits_default(&lim);
    lim.max_name_len = 3;
    REJECTS_LIM("{\"a\": {\"bc\": 1}}", &lim, "name_too_long");
    j = "{\"a\": {\"b\": 1}}";
    FL_CHECK_EQ_INT(fl_payload_parse(j, strlen(j), NOW_US, &lim, &t, &why),
                    FL_OK);
    fl_telemetry_free(&t);
}

void test_payload_rej_metrics(void)
{
    fl_telemetry_t t;
    fl_reject_t    why;
    char          *j, *p;
    size_t         i;

    /* 1000 metrics pass, 1001 do not */
    j = malloc(1001 * 16 + 16);
    for (p = j, i = 0; i < 1001; i++)
        p += sprintf(p, "%s\"m%zu\":%zu", i ? "," : "{", i, i);
    strcpy(p, "}");
    REJECTS(j, "too_many_metrics");
    p = strrchr(j, ',');
    strcpy(p, "}");
    FL_REQUIRE(parse(j, &t, &why) == FL_OK);
    FL_CHECK_EQ_INT(t.nmetrics, 1000);
    FL_CHECK_STR(t.points[0].metrics[999].name, "m999");
    FL_CHECK(t.points[0].metrics[999].num == 999);
    fl_telemetry_free(&t);
    free(j);

    /* long flattened names outgrow the first arena block */
    j = malloc(130 + 500 * 16 + 16);
    p = j + sprintf(j, "{\"%0120d\": {", 0);
    for (i = 0; i < 500; i++)
        p += sprintf(p, "%s\"a%zu\":%zu", i ? "," : "", i, i);
    strcpy(p, "}}");
    FL_REQUIRE(parse(j, &t, &why) == FL_OK);
    FL_CHECK_EQ_INT(t.nmetrics, 500);
    FL_CHECK_EQ_INT(strlen(t.points[0].metrics[499].name), 125);
    FL_CHECK(t.points[0].metrics[499].num == 499);
    FL_CHECK_EQ_INT(strlen(t.points[0].metrics[0].name), 123);
    fl_telemetry_free(&t);
    free(j);

    /* nulls do not count */
    j = malloc(2000 * 16 + 16);
    for (p = j, i = 0; i < 2000; i++)
        p += sprintf(p, "%s\"n%zu\":null", i ? "," : "{", i);
    strcpy(p, ",\"x\":1}");
    FL_REQUIRE(parse(j, &t, &why) == FL_OK);
    FL_CHECK_EQ_INT(t.nmetrics, 1);
    FL_CHECK_EQ_INT(t.nulls_skipped, 2000);
    fl_telemetry_free(&t);
    free(j);
}

void test_payload_rej_values(void)
{
    fl_telemetry_t t;
    fl_reject_t    why;
    char          *j;

    REJECTS("{\"a\": [1, 2]}", "array_value");
    REJECTS("{\"a\": []}", "array_value");
    REJECTS("{\"a\": {\"b\": [{\"c\": 1}]}}", "array_value");

    /* 1024 bytes pass, 1025 do not; the limit is on unescaped bytes */
    j = fl_test_repeat("{\"a\": \"", 'x', 1024, "\"}");
    FL_CHECK_EQ_INT(parse(j, &t, &why), FL_OK);
    fl_telemetry_free(&t);
    free(j);
    j = fl_test_repeat("{\"a\": \"", 'x', 1025, "\"}");
    REJECTS(j, "string_too_long");
    free(j);
    j = malloc(1024 * 2 + 16);
    strcpy(j, "{\"a\": \"");
    for (int i = 0; i < 1024; i++)
        strcat(j, "\\n");
    strcat(j, "\"}");
    FL_CHECK_EQ_INT(parse(j, &t, &why), FL_OK);
    FL_CHECK_EQ_INT(strlen(t.points[0].metrics[0].str), 1024);
    fl_telemetry_free(&t);
    free(j);
}

void test_payload_rej_duplicates(void)
{
    char  *j, *p;
    size_t i;

    REJECTS("{\"a\": 1, \"a\": 2}", "duplicate_metric");
    REJECTS("{\"a\": 1, \"a\": null, \"a\": true}", "duplicate_metric");
    REJECTS("{\"a.b\": 1, \"a\": {\"b\": 2}}", "duplicate_metric");
    REJECTS("{\"values\": {\"a\": 1, \"a\": 2}}", "duplicate_metric");

    /* more than 16 metrics take the sorting path */
    j = malloc(40 * 16 + 16);
    for (p = j, i = 0; i < 40; i++)
        p += sprintf(p, "%s\"m%zu\":1", i ? "," : "{", i);
    strcpy(p, ",\"m7\":2}");
    REJECTS(j, "duplicate_metric");
    free(j);
}

void test_payload_reject_names(void)
{
    int i, k;

    FL_CHECK_STR(fl_reject_name(FL_REJECT_NONE), "ok");
    FL_CHECK_STR(fl_reject_name(FL_REJECT_TOO_DEEP), "too_deep");
    FL_CHECK_STR(fl_reject_name(FL_REJECT_COUNT), "unknown");
    FL_CHECK_STR(fl_reject_name((fl_reject_reason_t)-1), "unknown");
    for (i = 0; i < FL_REJECT_COUNT; i++) {
        const char *n = fl_reject_name((fl_reject_reason_t)i);

        FL_CHECK(n != NULL && strcmp(n, "unknown") != 0);
        FL_CHECK(strspn(n, "abcdefghijklmnopqrstuvwxyz0123456789_") ==
                 strlen(n));
        for (k = 0; k < i; k++)
            FL_CHECK(strcmp(n, fl_reject_name((fl_reject_reason_t)k)) != 0);
    }
}

/* A point without a time takes now_us to the microsecond (the caller's
 * unique arrival time), and so does a SenML time relative to now; times
 * the payload gives stay whole milliseconds. */
void test_payload_arrival_us(void)
{
    fl_telemetry_t t;
    fl_reject_t    why;
    const char    *j;

    j = "{\"a\": 1}";
    FL_REQUIRE(fl_payload_parse(j, strlen(j), NOW_US + 37, NULL, &t, &why) ==
               FL_OK);
    FL_CHECK_EQ_INT(t.points[0].ts_us, NOW_US + 37);
    fl_telemetry_free(&t);

    j = "{\"ts\": 1764369000001, \"a\": 1}";
    FL_REQUIRE(fl_payload_parse(j, strlen(j), NOW_US + 37, NULL, &t, &why) ==
               FL_OK);
    FL_CHECK_EQ_INT(t.points[0].ts_us, 1764369000001000LL);
    fl_telemetry_free(&t);

    /* relative SenML: now - 1 s and now; absolute bt stays exact */
    j = "[{\"n\": \"a\", \"v\": 1, \"t\": -1}, {\"n\": \"a\", \"v\": 2}]";
    FL_REQUIRE(fl_payload_parse(j, strlen(j), NOW_US + 37, NULL, &t, &why) ==
               FL_OK);
    FL_REQUIRE(t.npoints == 2);
    FL_CHECK_EQ_INT(t.points[0].ts_us, NOW_US + 37 - 1000000);
    FL_CHECK_EQ_INT(t.points[1].ts_us, NOW_US + 37);
    fl_telemetry_free(&t);

    /* which times came from the arrival (fl_fanout.h sends them as an
     * offset): a relative SenML time, a missing "ts"; not a given one */
    j = "[{\"n\": \"a\", \"v\": 1, \"t\": -2},"
        " {\"n\": \"b\", \"v\": 2, \"t\": -1},"
        " {\"bt\": 1764369000, \"n\": \"c\", \"v\": 3}]";
    FL_REQUIRE(fl_payload_parse(j, strlen(j), NOW_US + 37, NULL, &t, &why) ==
               FL_OK);
    FL_REQUIRE(t.npoints == 3);
    FL_CHECK_EQ_INT(t.points[0].ts_us, 1764369000000000LL);
    FL_CHECK_EQ_INT(t.points[0].metrics[0].rel, 0);
    FL_CHECK_EQ_INT(t.points[1].ts_us, NOW_US + 37 - 2000000);
    FL_CHECK_EQ_INT(t.points[1].metrics[0].rel, 1);
    FL_CHECK_EQ_INT(t.points[2].ts_us, NOW_US + 37 - 1000000);
    FL_CHECK_EQ_INT(t.points[2].metrics[0].rel, 1);
    fl_telemetry_free(&t);
    j = "[{\"ts\": 1764369000001, \"a\": 1}, {\"b\": 2, \"c\": {\"d\": 3}}]";
    FL_REQUIRE(fl_payload_parse(j, strlen(j), NOW_US, NULL, &t, &why) ==
               FL_OK);
    FL_REQUIRE(t.npoints == 2 && t.points[1].nmetrics == 2);
    FL_CHECK_EQ_INT(t.points[0].metrics[0].rel, 0);
    FL_CHECK_EQ_INT(t.points[1].metrics[0].rel, 1);
    FL_CHECK_EQ_INT(t.points[1].metrics[1].rel, 1);
    fl_telemetry_free(&t);

    /* two arrivals one microsecond apart are two distinct times */
    j = "{\"a\": 1}";
    FL_REQUIRE(fl_payload_parse(j, strlen(j), NOW_US + 38, NULL, &t, &why) ==
               FL_OK);
    FL_CHECK_EQ_INT(t.points[0].ts_us, NOW_US + 38);
    fl_telemetry_free(&t);

    /* a batch of elements without a time all arrive at once: the same
     * metric twice at one time is refused, not collapsed */
    j = "[{\"a\": 1}, {\"a\": 2}]";
    FL_CHECK_EQ_INT(fl_payload_parse(j, strlen(j), NOW_US, NULL, &t, &why),
                    FL_ERROR);
    FL_CHECK_STR(fl_reject_name(why.reason), "duplicate_metric");
}

/* fl_telemetry_cut(): points outside [lo, hi] out, counted per side with
 * their metrics and the first one's time; the rest in order. */
void test_payload_cut(void)
{
    fl_telemetry_t t;
    fl_reject_t    why;
    fl_cut_t       old, fut;
    const char    *j = "[{\"ts\": 1000000000000, \"a\": 1, \"b\": 2},"
                       " {\"ts\": 1764369000000, \"a\": 3},"
                       " {\"ts\": 1000000000001, \"a\": 4},"
                       " {\"ts\": 1764369000001, \"a\": 5, \"c\": true},"
                       " {\"ts\": 1764540000000, \"a\": 6}]";

    fl_payload_limits_t lim;

    fl_payload_limits_default(&lim);
    lim.max_future_ms = -1; /* the way fl_ingest.c parses: cut() judges */
    FL_REQUIRE(fl_payload_parse(j, strlen(j), NOW_US, &lim, &t, &why) == FL_OK);
    FL_CHECK_EQ_INT(t.nmetrics, 7);
    FL_CHECK_EQ_INT(fl_telemetry_cut(&t, 1764300000000000LL, 1764400000000000LL,
                                     &old, &fut),
                    2);
    FL_CHECK_EQ_INT(t.npoints, 2);
    FL_CHECK_EQ_INT(t.nmetrics, 3);
    FL_CHECK_EQ_INT(t.points[0].ts_us, 1764369000000000LL);
    FL_CHECK(metric(&t.points[0], "a")->num == 3);
    FL_CHECK_EQ_INT(t.points[1].ts_us, 1764369000001000LL);
    FL_CHECK(metric(&t.points[1], "a")->num == 5);
    FL_CHECK_EQ_INT(old.npoints, 2);
    FL_CHECK_EQ_INT(old.nmetrics, 3);
    FL_CHECK_EQ_INT(old.first_us, 1000000000000000LL);
    FL_CHECK_EQ_INT(fut.npoints, 1);
    FL_CHECK_EQ_INT(fut.nmetrics, 1);
    FL_CHECK_EQ_INT(fut.first_us, 1764540000000000LL);

    /* the bounds are inside; everything out leaves no point */
    FL_CHECK_EQ_INT(fl_telemetry_cut(&t, 1764369000000000LL, 1764369000001000LL,
                                     NULL, NULL),
                    2);
    FL_CHECK_EQ_INT(
        fl_telemetry_cut(&t, 1764369000001001LL, INT64_MAX, &old, &fut), 0);
    FL_CHECK_EQ_INT(t.nmetrics, 0);
    FL_CHECK_EQ_INT(old.npoints, 2);
    FL_CHECK_EQ_INT(fut.npoints, 0);
    fl_telemetry_free(&t);
}
