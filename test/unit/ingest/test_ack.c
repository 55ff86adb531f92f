/*
 * test_ack.c - fl_ack_parse(): a device's answer to a command
 * (devices/{id}/commands/ack), what it accepts and every reason it
 * refuses one for.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl_payload.h"
#include "unit.h"

/* Records a failure unless json is refused with the reason called
 * reason, a message, and a zeroed result. */
static void check_reject(const char *file, int line, const char *json,
                         size_t len, const fl_payload_limits_t *lim,
                         const char *reason)
{
    fl_ack_t    a;
    fl_reject_t why;

    if (fl_ack_parse(json, len, lim, &a, &why) == FL_OK) {
        fl_test_fail(file, line, "accepted, want %s: %.60s", reason, json);
        return;
    }
    if (strcmp(fl_reject_name(why.reason), reason) != 0)
        fl_test_fail(file, line, "%s (%s), want %s: %.60s",
                     fl_reject_name(why.reason), why.msg, reason, json);
    if (why.msg[0] == '\0' || !fl_utf8_valid(why.msg, strlen(why.msg)))
        fl_test_fail(file, line, "no or bad message for %s", reason);
    if (a.id[0] != '\0' || a.ok || a.has_result)
        fl_test_fail(file, line, "result not zeroed after a rejection");
}

#define REJECTS(json, reason) \
    check_reject(__FILE__, __LINE__, json, strlen(json), NULL, reason)

void test_ack_accepts(void)
{
    fl_ack_t    a;
    fl_reject_t why;
    const char *j;
    char       *big;

    j = "{\"id\": \"0190b6c2-7a3e-7001-8000-0123456789ab\", \"ok\": true, "
        "\"result\": {\"rebooted\": true, \"n\": 12345678901234567890}}";
    FL_REQUIRE(fl_ack_parse(j, strlen(j), NULL, &a, &why) == FL_OK);
    FL_CHECK_STR(a.id, "0190b6c2-7a3e-7001-8000-0123456789ab");
    FL_CHECK_EQ_INT(a.ok, 1);
    FL_CHECK_EQ_INT(a.has_result, 1);
    FL_CHECK_EQ_INT(a.json_off, 0);

    /* result is optional, may be any value; other keys are ignored */
    j = "{\"ok\": false, \"id\": \"c1\"}";
    FL_REQUIRE(fl_ack_parse(j, strlen(j), NULL, &a, &why) == FL_OK);
    FL_CHECK_STR(a.id, "c1");
    FL_CHECK_EQ_INT(a.ok, 0);
    FL_CHECK_EQ_INT(a.has_result, 0);
    j = "{\"id\": \"c1\", \"ok\": false, \"result\": null, \"ts\": 1, "
        "\"reason\": \"busy\"}";
    FL_REQUIRE(fl_ack_parse(j, strlen(j), NULL, &a, &why) == FL_OK);
    FL_CHECK_EQ_INT(a.has_result, 1);
    j = "{\"id\": \"c1\", \"ok\": true, \"result\": [1, \"two\", [3]]}";
    FL_CHECK_EQ_INT(fl_ack_parse(j, strlen(j), NULL, &a, &why), FL_OK);
    /* a number beyond a double is still JSON (and jsonb keeps it exact) */
    j = "{\"id\": \"c1\", \"ok\": true, \"result\": 1e999}";
    FL_CHECK_EQ_INT(fl_ack_parse(j, strlen(j), NULL, &a, &why), FL_OK);

    /* a byte order mark and whitespace are skipped: json_off says where
     * the JSON text starts */
    j = "\xef\xbb\xbf {\"id\": \"c1\", \"ok\": true}";
    FL_REQUIRE(fl_ack_parse(j, strlen(j), NULL, &a, &why) == FL_OK);
    FL_CHECK_EQ_INT(a.json_off, 4);

    /* the length counts, not a NUL */
    j = "{\"id\": \"c1\", \"ok\": true}garbage";
    FL_CHECK_EQ_INT(fl_ack_parse(j, 24, NULL, &a, &why), FL_OK);

    /* 64 bytes is the longest id */
    big = fl_test_repeat("{\"ok\": true, \"id\": \"", 'x', 64, "\"}");
    FL_CHECK_EQ_INT(fl_ack_parse(big, strlen(big), NULL, &a, &why), FL_OK);
    FL_CHECK_EQ_INT(strlen(a.id), 64);
    free(big);
}

void test_ack_rejects(void)
{
    fl_payload_limits_t lim;
    char               *big;

    REJECTS("", "empty");
    REJECTS(" \n", "empty");
    REJECTS("{", "invalid_json");
    REJECTS("{\"id\": \"c1\", \"ok\": tru}", "invalid_json");
    REJECTS("{\"id\": \"c1\", \"ok\": true} x", "invalid_json");
    REJECTS("{\"id\": \"c1\", \"ok\": true, \"result\": NaN}", "bad_number");
    REJECTS("{\"id\": \"c1\", \"ok\": true, \"result\": \"a\\u0000\"}",
            "bad_string");
    REJECTS("{\"id\": \"c1\", \"ok\": true, \"result\": \"\xff\"}", "not_utf8");
    REJECTS("[{\"id\": \"c1\", \"ok\": true}]", "not_an_object");
    REJECTS("\"c1\"", "not_an_object");
    REJECTS("null", "not_an_object");

    REJECTS("{}", "bad_ack");
    REJECTS("{\"ok\": true}", "bad_ack");
    REJECTS("{\"id\": \"c1\"}", "bad_ack");
    REJECTS("{\"id\": 7, \"ok\": true}", "bad_ack");
    REJECTS("{\"id\": null, \"ok\": true}", "bad_ack");
    REJECTS("{\"id\": \"\", \"ok\": true}", "bad_ack");
    REJECTS("{\"id\": \"a b\", \"ok\": true}", "bad_ack");
    REJECTS("{\"id\": \"a/b\", \"ok\": true}", "bad_ack");
    REJECTS("{\"id\": \"c1\", \"ok\": \"true\"}", "bad_ack");
    REJECTS("{\"id\": \"c1\", \"ok\": 1}", "bad_ack");
    REJECTS("{\"id\": \"c1\", \"ok\": null}", "bad_ack");
    REJECTS("{\"id\": \"c1\", \"id\": \"c2\", \"ok\": true}", "bad_ack");
    REJECTS("{\"id\": \"c1\", \"ok\": true, \"ok\": false}", "bad_ack");
    REJECTS("{\"id\": \"c1\", \"ok\": true, \"result\": 1, \"result\": 2}",
            "bad_ack");
    REJECTS("{\"ID\": \"c1\", \"OK\": true}", "bad_ack");
    big = fl_test_repeat("{\"ok\": true, \"id\": \"", 'x', 65, "\"}");
    REJECTS(big, "bad_ack");
    free(big);

    /* the payload limits apply */
    fl_payload_limits_default(&lim);
    lim.max_payload_bytes = 30;
    check_reject(__FILE__, __LINE__,
                 "{\"id\": \"c1\", \"ok\": true, \"result\": 1234}", 37, &lim,
                 "too_large");
    lim.max_payload_bytes = 65536;
    lim.max_depth = 2;
    check_reject(__FILE__, __LINE__,
                 "{\"id\": \"c1\", \"ok\": true, \"result\": [[1]]}", 39, &lim,
                 "too_deep");
}
