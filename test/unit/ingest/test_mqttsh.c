/*
 * test_mqttsh.c - what the paho and the native MQTT intake share
 * (fl_mqttsh.h): the stream entry's argv, the dedup ring, hash and record,
 * the reconnect jitter and the broker uri. The hash vectors are FNV-1a 64
 * worked out independently (Python, the published algorithm).
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "fl_core.h"
#include "fl_mqttsh.h"
#include "unit.h"

void test_mqttsh_dedup_ring(void)
{
    /* the divisors of 65535 = 3 x 5 x 17 x 257 */
    FL_CHECK_EQ_INT(fl_mqttsh_dedup_ring(0), 1);
    FL_CHECK_EQ_INT(fl_mqttsh_dedup_ring(1), 1);
    FL_CHECK_EQ_INT(fl_mqttsh_dedup_ring(2), 3);
    FL_CHECK_EQ_INT(fl_mqttsh_dedup_ring(20), 51);
    FL_CHECK_EQ_INT(fl_mqttsh_dedup_ring(100), 255);
    FL_CHECK_EQ_INT(fl_mqttsh_dedup_ring(255), 255);
    FL_CHECK_EQ_INT(fl_mqttsh_dedup_ring(256), 257);
    FL_CHECK_EQ_INT(fl_mqttsh_dedup_ring(4370), 13107);
    /* capped: every slot serves at least three ids */
    FL_CHECK_EQ_INT(fl_mqttsh_dedup_ring(13108), 21845);
    FL_CHECK_EQ_INT(fl_mqttsh_dedup_ring(65535), 21845);
}

void test_mqttsh_hash_record(void)
{
    fl_mqttsh_record_t r;
    const char        *t = "devices/d1/telemetry", *p = "{\"t\":1}";

    FL_CHECK_EQ_U64(fl_mqttsh_hash("", 0, NULL, 0), 0xaf63bd4c8601b7dfULL);
    FL_CHECK_EQ_U64(fl_mqttsh_hash("a", 1, "b", 1), 0xe5d29919042666b2ULL);
    FL_CHECK_EQ_U64(fl_mqttsh_hash(t, strlen(t), p, strlen(p)),
                    0x4bb26d6394b9b1f3ULL);
    /* topic and payload are told apart by the 0 byte between them */
    FL_CHECK(fl_mqttsh_hash("ab", 2, "", 0) != fl_mqttsh_hash("a", 1, "b", 1));

    fl_mqttsh_record(&r, 255, 300, t, strlen(t), p, strlen(p));
    FL_CHECK_STR(r.field, "45");
    FL_CHECK_STR(r.value, "300:4bb26d6394b9b1f3");
    fl_mqttsh_record(&r, 255, 65535, "a", 1, "b", 1);
    FL_CHECK_STR(r.field, "0");
    FL_CHECK_STR(r.value, "65535:e5d29919042666b2");
    fl_mqttsh_record(&r, 21845, 1, "", 0, NULL, 0);
    FL_CHECK_STR(r.field, "1");
    FL_CHECK_STR(r.value, "1:af63bd4c8601b7df");
}

static const fl_mqttsh_stream_t st = {"p:ingest", "p:dead", "1000", "50", 8};

void test_mqttsh_xadd_argv(void)
{
    const char *argv[FL_MQTTSH_ARGV_MAX];
    size_t      lens[FL_MQTTSH_ARGV_MAX];
    char        err[160], big[2000];
    int         argc, over = -1;
    static const char *want[] = {"XADD", "p:ingest", "MAXLEN", "~", "1000",
                                 "*",    "t",        "top",    "p", "12345678",
                                 "r",    "99"};

    argc = fl_mqttsh_xadd_argv(&st, "top", 3, "12345678", 8, "99", err,
                               sizeof(err), argv, lens, &over);
    FL_REQUIRE(argc == 12);
    FL_CHECK_EQ_INT(over, 0);
    for (int i = 0; i < argc; i++) {
        FL_CHECK_EQ_U64(lens[i], strlen(want[i]));
        FL_CHECK(memcmp(argv[i], want[i], lens[i]) == 0);
    }
    /* an empty payload is an empty field, not a NULL pointer */
    argc = fl_mqttsh_xadd_argv(&st, "top", 3, NULL, 0, "99", err, sizeof(err),
                               argv, lens, &over);
    FL_CHECK(argv[9] != NULL && lens[9] == 0);

    /* one byte over: the dead-letter stream, payload cut to 1 KiB */
    memset(big, 'x', sizeof(big));
    argc = fl_mqttsh_xadd_argv(&st, "top", 3, big, 9, "99", err, sizeof(err),
                               argv, lens, &over);
    FL_CHECK_EQ_INT(over, 1);
    FL_REQUIRE(argc == 16);
    FL_CHECK(memcmp(argv[1], "p:dead", 6) == 0);
    FL_CHECK(memcmp(argv[4], "50", 2) == 0);
    FL_CHECK(memcmp(argv[9], "too_large", 9) == 0);
    FL_CHECK_STR(argv[11], "payload of 9 bytes exceeds "
                           "limits.max_payload_bytes (8)");
    FL_CHECK_EQ_U64(lens[13], 9);
    argc = fl_mqttsh_xadd_argv(&st, "top", 3, big, sizeof(big), "99", err,
                               sizeof(err), argv, lens, &over);
    FL_CHECK_EQ_U64(lens[13], FL_MQTTSH_DEAD_PAYLOAD);
    FL_CHECK(memcmp(argv[15], "99", 2) == 0);
}

void test_mqttsh_jitter(void)
{
    unsigned s = 12345;
    int64_t  lo = 1000, hi = 0;

    for (int i = 0; i < 10000; i++) {
        int64_t d = fl_mqttsh_jitter(&s, 1000);
        FL_REQUIRE(d >= 500 && d <= 1000);
        lo = fl_min(lo, d);
        hi = fl_max(hi, d);
    }
    /* it spreads: both ends of the range are reached closely */
    FL_CHECK(lo < 510 && hi > 990);
    /* the smallest backoff still lands in its range */
    for (int i = 0; i < 100; i++) {
        int64_t d = fl_mqttsh_jitter(&s, 100);
        FL_REQUIRE(d >= 50 && d <= 100);
    }
}

void test_mqttsh_parse_uri(void)
{
    char host[64];
    int  port;

    FL_CHECK_EQ_INT(fl_mqttsh_parse_uri("tcp://127.0.0.1:1884", host,
                                        sizeof(host), &port),
                    FL_OK);
    FL_CHECK_STR(host, "127.0.0.1");
    FL_CHECK_EQ_INT(port, 1884);
    FL_CHECK_EQ_INT(
        fl_mqttsh_parse_uri("mqtt://broker.local", host, sizeof(host), &port),
        FL_OK);
    FL_CHECK_STR(host, "broker.local");
    FL_CHECK_EQ_INT(port, 1883);
    FL_CHECK_EQ_INT(
        fl_mqttsh_parse_uri("tcp://[::1]:2000/", host, sizeof(host), &port),
        FL_OK);
    FL_CHECK_STR(host, "::1");
    FL_CHECK_EQ_INT(port, 2000);
    FL_CHECK_EQ_INT(
        fl_mqttsh_parse_uri("tcp://[::1]", host, sizeof(host), &port), FL_OK);
    FL_CHECK_EQ_INT(port, 1883);

    static const char *bad[] = {
        "ssl://h:8883", "mqtts://h",     "ws://h:80",    "h:1883",
        "tcp://",       "tcp://:1883",   "tcp://h:",     "tcp://h:0",
        "tcp://h:65536", "tcp://h:12x",  "tcp://h:1/x",  "tcp://[::1",
        "tcp://[::1]x", "tcp://[]:1",
    };
    for (size_t i = 0; i < fl_nelem(bad); i++)
        if (fl_mqttsh_parse_uri(bad[i], host, sizeof(host), &port) != FL_ERROR)
            fl_test_fail(__FILE__, __LINE__, "%s accepted", bad[i]);
    /* a host that does not fit is refused, not cut */
    FL_CHECK_EQ_INT(fl_mqttsh_parse_uri("tcp://abcdefgh:1", host, 8, &port),
                    FL_ERROR);
    FL_CHECK(fl_mqttsh_uri_native("tcp://h"));
    FL_CHECK(fl_mqttsh_uri_native("mqtt://h"));
    FL_CHECK(!fl_mqttsh_uri_native("ssl://h"));
    FL_CHECK(!fl_mqttsh_uri_native("mqtts://h"));
    FL_CHECK(!fl_mqttsh_uri_native("wss://h"));
}
