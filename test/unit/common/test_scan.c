/*
 * test_scan.c - fl_utf8_seq(), fl_utf8_valid() and the JSON pre-scan
 * fl_scan() on its own: every decision it makes, with the exact reason and
 * message (fl_payload_parse() passes the message on to the dead letters
 * unchanged, so a changed byte offset or wording is a contract change).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl_core.h"
#include "fl_scan.h"
#include "unit.h"

#define DEPTH 8 /* the default max_depth of fl_payload_limits_default() */

static const char *const err_names[] = {
    [FL_SCAN_OK] = "ok",
    [FL_SCAN_NOT_UTF8] = "not_utf8",
    [FL_SCAN_INVALID_JSON] = "invalid_json",
    [FL_SCAN_TOO_DEEP] = "too_deep",
    [FL_SCAN_BAD_NUMBER] = "bad_number",
    [FL_SCAN_BAD_STRING] = "bad_string",
};

static const char *err_name(fl_scan_err_t err)
{
    return (unsigned)err < fl_nelem(err_names) ? err_names[err] : "?";
}

/*
 * Scan buf[0..len) with max_depth depth. Records a failure unless it
 * fails with want (FL_SCAN_OK: succeeds with s.i at the end, no message
 * and nvalues scalars) and, on failure, exactly the message want_msg.
 */
static void check_scan(const char *file, int line, const void *buf, size_t len,
                       int depth, fl_scan_err_t want, const char *want_msg,
                       size_t nvalues)
{
    fl_scan_t s;
    char      msg[192];
    int       rc;

    memset(&s, 0, sizeof(s));
    s.p = buf;
    s.len = len;
    s.msg = msg;
    s.msg_size = sizeof(msg);
    msg[0] = '\0';
    rc = fl_scan(&s, depth);

    if (want == FL_SCAN_OK) {
        if (rc != FL_OK || s.err != FL_SCAN_OK) {
            fl_test_fail(file, line, "refused (%s: %s): %.60s", err_name(s.err),
                         msg, (const char *)buf);
            return;
        }
        if (s.i != len)
            fl_test_fail(file, line, "accepted with i %zu of %zu: %.60s", s.i,
                         len, (const char *)buf);
        if (s.nvalues != nvalues)
            fl_test_fail(file, line, "nvalues %zu, want %zu: %.60s", s.nvalues,
                         nvalues, (const char *)buf);
        if (msg[0] != '\0')
            fl_test_fail(file, line, "message on success: %s", msg);
        return;
    }
    if (rc != FL_ERROR) {
        fl_test_fail(file, line, "accepted, want %s: %.60s", err_name(want),
                     (const char *)buf);
        return;
    }
    if (s.err != want || strcmp(msg, want_msg) != 0)
        fl_test_fail(file, line, "%s \"%s\", want %s \"%s\": %.60s",
                     err_name(s.err), msg, err_name(want), want_msg,
                     (const char *)buf);
}

#define OK(json, nvalues)                                                 \
    check_scan(__FILE__, __LINE__, json, strlen(json), DEPTH, FL_SCAN_OK, \
               NULL, nvalues)
#define FAILS(json, err, msg)                                                \
    check_scan(__FILE__, __LINE__, json, strlen(json), DEPTH, FL_SCAN_##err, \
               msg, 0)
#define FAILS_N(buf, len, err, msg) \
    check_scan(__FILE__, __LINE__, buf, len, DEPTH, FL_SCAN_##err, msg, 0)

#define SEQ(s, n) fl_utf8_seq((const unsigned char *)(s), n)

void test_scan_utf8_seq(void)
{
    /* one sequence of each length, and the n that is available */
    FL_CHECK_EQ_INT(SEQ("a", 1), 1);
    FL_CHECK_EQ_INT(SEQ("\0", 1), 1);
    FL_CHECK_EQ_INT(SEQ("\x7f", 1), 1);
    FL_CHECK_EQ_INT(SEQ("\xc3\xa9", 2), 2);
    FL_CHECK_EQ_INT(SEQ("\xe2\x82\xac", 3), 3);
    FL_CHECK_EQ_INT(SEQ("\xf0\x9f\x98\x80", 4), 4);
    FL_CHECK_EQ_INT(SEQ("\xe2\x82\xac"
                        "abc",
                        6),
                    3); /* only the first */

    /* complete in memory but cut by n: truncated */
    FL_CHECK_EQ_INT(SEQ("\xc3\xa9", 1), 0);
    FL_CHECK_EQ_INT(SEQ("\xe2\x82\xac", 2), 0);
    FL_CHECK_EQ_INT(SEQ("\xf0\x9f\x98\x80", 3), 0);

    /* lone continuation bytes, overlong lead bytes, leads above F4 */
    FL_CHECK_EQ_INT(SEQ("\x80", 1), 0);
    FL_CHECK_EQ_INT(SEQ("\xbf", 1), 0);
    FL_CHECK_EQ_INT(SEQ("\xc0\x80", 2), 0);
    FL_CHECK_EQ_INT(SEQ("\xc1\xbf", 2), 0);
    FL_CHECK_EQ_INT(SEQ("\xf5\x80\x80\x80", 4), 0);
    FL_CHECK_EQ_INT(SEQ("\xff", 1), 0);

    /* the second-byte ranges of E0, ED, F0, F4 (table 3-7) */
    FL_CHECK_EQ_INT(SEQ("\xe0\x9f\xbf", 3), 0);     /* overlong U+07FF */
    FL_CHECK_EQ_INT(SEQ("\xe0\xa0\x80", 3), 3);     /* U+0800 */
    FL_CHECK_EQ_INT(SEQ("\xed\x9f\xbf", 3), 3);     /* U+D7FF */
    FL_CHECK_EQ_INT(SEQ("\xed\xa0\x80", 3), 0);     /* U+D800 */
    FL_CHECK_EQ_INT(SEQ("\xf0\x8f\xbf\xbf", 4), 0); /* overlong U+FFFF */
    FL_CHECK_EQ_INT(SEQ("\xf0\x90\x80\x80", 4), 4); /* U+10000 */
    FL_CHECK_EQ_INT(SEQ("\xf4\x8f\xbf\xbf", 4), 4); /* U+10FFFF */
    FL_CHECK_EQ_INT(SEQ("\xf4\x90\x80\x80", 4), 0); /* U+110000 */

    /* a byte that is not a continuation where one must be */
    FL_CHECK_EQ_INT(SEQ("\xc3"
                        "a",
                        2),
                    0);
    FL_CHECK_EQ_INT(SEQ("\xe2\x82"
                        "a",
                        3),
                    0);
    FL_CHECK_EQ_INT(SEQ("\xe2"
                        "a\xac",
                        3),
                    0);
    FL_CHECK_EQ_INT(SEQ("\xf0\x9f\x98"
                        "a",
                        4),
                    0);
    FL_CHECK_EQ_INT(SEQ("\xf0\x9f"
                        "a\x80",
                        4),
                    0);
    FL_CHECK_EQ_INT(SEQ("\xc3\xc3", 2), 0);
}

#define VALID(s)   FL_CHECK(fl_utf8_valid(s, sizeof(s) - 1))
#define INVALID(s) FL_CHECK(!fl_utf8_valid(s, sizeof(s) - 1))

void test_scan_utf8_valid(void)
{
    VALID("");
    VALID("plain ascii \t\n\x7f");
    VALID("a\0b"); /* U+0000 is well-formed UTF-8 */
    VALID("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
    /* the edges of every range of table 3-7 */
    VALID("\xc2\x80\xdf\xbf\xe0\xa0\x80\xe0\xbf\xbf\xe1\x80\x80\xec\xbf\xbf"
          "\xed\x80\x80\xed\x9f\xbf\xee\x80\x80\xef\xbf\xbf\xf0\x90\x80\x80"
          "\xf0\xbf\xbf\xbf\xf1\x80\x80\x80\xf3\xbf\xbf\xbf\xf4\x80\x80\x80"
          "\xf4\x8f\xbf\xbf");

    /* overlong forms */
    INVALID("\xc0\x80");         /* U+0000 in two bytes */
    INVALID("\xc0\xaf");         /* '/' in two bytes */
    INVALID("\xc1\xbf");         /* U+007F */
    INVALID("\xe0\x80\x80");     /* U+0000 in three */
    INVALID("\xe0\x9f\xbf");     /* U+07FF */
    INVALID("\xf0\x80\x80\x80"); /* U+0000 in four */
    INVALID("\xf0\x8f\xbf\xbf"); /* U+FFFF */

    /* surrogates, paired or not */
    INVALID("\xed\xa0\x80");
    INVALID("\xed\xaf\xbf");
    INVALID("\xed\xb0\x80");
    INVALID("\xed\xbf\xbf");
    INVALID("\xed\xa0\xbd\xed\xb8\x80"); /* CESU-8 U+1F600 */

    /* above U+10FFFF */
    INVALID("\xf4\x90\x80\x80");
    INVALID("\xf5\x80\x80\x80");
    INVALID("\xf7\xbf\xbf\xbf");
    INVALID("\xf8\x88\x80\x80\x80"); /* the old five-byte form */
    INVALID("\xfe");
    INVALID("\xff");

    /* truncated: at the end, or followed by something else */
    INVALID("\xc3");
    INVALID("\xe2\x82");
    INVALID("\xf0\x9f\x98");
    INVALID("ok\xf0\x9f\x98");
    INVALID("\xc3x");
    INVALID("\xe2\x82x");
    INVALID("\xf0\x9f\x98x");
    INVALID("\xe2\x82\xe2\x82\xac");

    /* stray continuation bytes */
    INVALID("\x80");
    INVALID("a\xbf");
    INVALID("\xc3\xa9\xa9");

    /* one bad byte spoils a long valid run, wherever it is */
    FL_CHECK(!fl_utf8_valid("caf\xc3\xa9\xff", 6));
    FL_CHECK(fl_utf8_valid("caf\xc3\xa9\xff", 5));
}

void test_scan_ws(void)
{
    fl_scan_t s;

    memset(&s, 0, sizeof(s));
    s.p = (const unsigned char *)" \t\r\n\f{";
    s.len = 6;
    fl_scan_ws(&s);
    FL_CHECK_EQ_U64(s.i, 4); /* form feed is not JSON whitespace */

    s.p = (const unsigned char *)"\v";
    s.len = 1;
    s.i = 0;
    fl_scan_ws(&s);
    FL_CHECK_EQ_U64(s.i, 0);

    s.p = (const unsigned char *)"x   ";
    s.len = 4;
    s.i = 1;
    fl_scan_ws(&s);
    FL_CHECK_EQ_U64(s.i, 4); /* stops at len */
    fl_scan_ws(&s);
    FL_CHECK_EQ_U64(s.i, 4);
}

void test_scan_values(void)
{
    fl_scan_t s;
    char      msg[64];

    OK("1", 1);
    OK("\"a\"", 1);
    OK("true", 1);
    OK("null", 1);
    OK("{}", 0);
    OK("[]", 0);
    OK(" \t\r\n{ \n} \r\n\t", 0);
    OK("[ ]", 0);
    OK("{\"a\":{}}", 0);
    OK("{\"a\":1}", 1);
    OK("{ \"a\" : 1 , \"b\" : [ true , false , null , \"x\" ] }", 5);
    OK("[1,\"a\",true,null,{\"k\":false},[],{}]", 5);
    OK("{\"a\":{\"b\":{\"c\":1}}}", 1); /* keys are not values */
    OK("[[[[1]]],[2]]", 2);
    OK("{\"a\":1,\"a\":2}", 2); /* duplicates are fl_payload.c's */
    OK("\"\\u0041 \\u00e9 \\uffff\"", 1);
    OK("{\"caf\xc3\xa9\":\"\xf0\x9f\x98\x80\"}", 1);

    FAILS("", INVALID_JSON,
          "byte 0: unexpected end of input, expected a value");
    FAILS("  \n", INVALID_JSON,
          "byte 3: unexpected end of input, expected a value");
    FAILS("{", INVALID_JSON,
          "byte 1: unexpected end of input, expected a string name");
    FAILS("[", INVALID_JSON,
          "byte 1: unexpected end of input, expected a value");
    FAILS("{\"a\":", INVALID_JSON,
          "byte 5: unexpected end of input, expected a value");
    FAILS("{\"a\":1", INVALID_JSON,
          "byte 6: unexpected end of input, expected ',' or '}'");
    FAILS("[1", INVALID_JSON,
          "byte 2: unexpected end of input, expected ',' or ']'");
    FAILS("[1}", INVALID_JSON, "byte 2: unexpected '}', expected ',' or ']'");
    FAILS("{\"a\":1]", INVALID_JSON,
          "byte 6: unexpected ']', expected ',' or '}'");
    FAILS("}", INVALID_JSON, "byte 0: unexpected '}', expected a value");
    FAILS("{a:1}", INVALID_JSON,
          "byte 1: unexpected 'a', expected a string name");
    FAILS("{1:1}", INVALID_JSON,
          "byte 1: unexpected '1', expected a string name");
    FAILS("{'a':1}", INVALID_JSON,
          "byte 1: unexpected ''', expected a string name");
    FAILS("{\"a\" 1}", INVALID_JSON, "byte 5: unexpected '1', expected ':'");
    FAILS("{\"a\"}", INVALID_JSON, "byte 4: unexpected '}', expected ':'");
    FAILS("{\"a\"", INVALID_JSON,
          "byte 4: unexpected end of input, expected ':'");
    FAILS("[\"a\":1]", INVALID_JSON,
          "byte 4: unexpected ':', expected ',' or ']'");
    /* '"' and '\' are shown as bytes: the message is quoted in JSON */
    FAILS("{\"a\":1 \"b\":2}", INVALID_JSON,
          "byte 7: unexpected byte 0x22, expected ',' or '}'");
    FAILS("[\\]", INVALID_JSON,
          "byte 1: unexpected byte 0x5c, expected a value");
    FAILS("\f1", INVALID_JSON,
          "byte 0: unexpected byte 0x0c, expected a value");
    FAILS("{\x01}", INVALID_JSON,
          "byte 1: unexpected byte 0x01, expected a string name");
    /* a non-ASCII byte outside a string: malformed or just misplaced */
    FAILS("[\xff]", NOT_UTF8, "byte 1: malformed UTF-8");
    FAILS("[\xc3]", NOT_UTF8, "byte 1: malformed UTF-8");
    FAILS("[\xc3\xa9]", INVALID_JSON,
          "byte 1: unexpected byte 0xc3, expected a value");

    /* a byte order mark is the caller's to skip (s.i) */
    FAILS("\xef\xbb\xbf{}", INVALID_JSON,
          "byte 0: unexpected byte 0xef, expected a value");
    memset(&s, 0, sizeof(s));
    s.p = (const unsigned char *)"\xef\xbb\xbf{\"a\":1}";
    s.len = 10;
    s.i = 3;
    s.msg = msg;
    s.msg_size = sizeof(msg);
    FL_CHECK_EQ_INT(fl_scan(&s, DEPTH), FL_OK);
    FL_CHECK_EQ_U64(s.i, 10);
    FL_CHECK_EQ_U64(s.nvalues, 1);
}

void test_scan_trailing(void)
{
    OK("{} ", 0);
    OK("1\r\n", 1);
    FAILS("{} x", INVALID_JSON,
          "byte 3: unexpected 'x', expected the end after the JSON value");
    FAILS("{}}", INVALID_JSON,
          "byte 2: unexpected '}', expected the end after the JSON value");
    FAILS("{}{}", INVALID_JSON,
          "byte 2: unexpected '{', expected the end after the JSON value");
    FAILS("[1],", INVALID_JSON,
          "byte 3: unexpected ',', expected the end after the JSON value");
    FAILS("1 2", INVALID_JSON,
          "byte 2: unexpected '2', expected the end after the JSON value");
    FAILS("truex", INVALID_JSON,
          "byte 4: unexpected 'x', expected the end after the JSON value");
    FAILS("nullnull", INVALID_JSON,
          "byte 4: unexpected 'n', expected the end after the JSON value");
    FAILS("\"a\"\"b\"", INVALID_JSON,
          "byte 3: unexpected byte 0x22, expected the end after the JSON "
          "value");
    FAILS_N("{}\0", 3, INVALID_JSON,
            "byte 2: unexpected byte 0x00, expected the end after the JSON "
            "value");
    FAILS("{}\xff", NOT_UTF8, "byte 2: malformed UTF-8");
    FAILS("{}\xc2\xa0", INVALID_JSON,
          "byte 2: unexpected byte 0xc2, expected the end after the JSON "
          "value");
}

void test_scan_commas(void)
{
    OK("[1,2]", 2);
    OK("{\"a\":1,\"b\":2}", 2);
    FAILS("{\"a\":1,,\"b\":2}", INVALID_JSON,
          "byte 7: unexpected ',', expected a string name");
    FAILS("[1,,2]", INVALID_JSON, "byte 3: unexpected ',', expected a value");
    FAILS("[,1]", INVALID_JSON, "byte 1: unexpected ',', expected a value");
    FAILS("{,\"a\":1}", INVALID_JSON,
          "byte 1: unexpected ',', expected a string name");
    FAILS("[1,]", INVALID_JSON, "byte 3: unexpected ']', expected a value");
    FAILS("[1, ]", INVALID_JSON, "byte 4: unexpected ']', expected a value");
    FAILS("{\"a\":1,}", INVALID_JSON,
          "byte 7: unexpected '}', expected a string name");
    FAILS("[1 2]", INVALID_JSON, "byte 3: unexpected '2', expected ',' or ']'");
    FAILS("{\"a\":1;\"b\":2}", INVALID_JSON,
          "byte 6: unexpected ';', expected ',' or '}'");
    FAILS("{\"a\"::1}", INVALID_JSON,
          "byte 5: unexpected ':', expected a value");
    FAILS("{\"a\":1:2}", INVALID_JSON,
          "byte 6: unexpected ':', expected ',' or '}'");
}

void test_scan_strings(void)
{
    OK("\"\\\" \\\\ \\/ \\b \\f \\n \\r \\t\"", 1);
    OK("\"\x7f\"", 1); /* DEL is not a JSON control character */
    OK("\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"", 1);
    OK("\"\xf4\x8f\xbf\xbf\"", 1);

    FAILS("\"\\x\"", INVALID_JSON, "byte 1: invalid escape");
    FAILS("\"\\a\"", INVALID_JSON, "byte 1: invalid escape");
    FAILS("\"\\'\"", INVALID_JSON, "byte 1: invalid escape");
    FAILS("\"\\U0041\"", INVALID_JSON, "byte 1: invalid escape");
    FAILS("\"ab\\0\"", INVALID_JSON, "byte 3: invalid escape");
    FAILS("{\"k\\e\":1}", INVALID_JSON, "byte 3: invalid escape");

    FAILS("\"abc", INVALID_JSON, "byte 0: unterminated string");
    FAILS("\"", INVALID_JSON, "byte 0: unterminated string");
    FAILS("\"\\", INVALID_JSON, "byte 0: unterminated string");
    FAILS("\"\\\"", INVALID_JSON, "byte 0: unterminated string");
    FAILS("{\"a\":\"b", INVALID_JSON, "byte 5: unterminated string");
    FAILS("{\"a", INVALID_JSON, "byte 1: unterminated string");

    FAILS("\"a\tb\"", INVALID_JSON,
          "byte 2: unescaped control character in a string");
    FAILS("\"a\nb\"", INVALID_JSON,
          "byte 2: unescaped control character in a string");
    FAILS("\"\x1f\"", INVALID_JSON,
          "byte 1: unescaped control character in a string");
    FAILS_N("\"a\0\"", 4, INVALID_JSON,
            "byte 2: unescaped control character in a string");
    FAILS("{\"a\x01\":1}", INVALID_JSON,
          "byte 3: unescaped control character in a string");

    FAILS("\"\xc3\"", NOT_UTF8, "byte 1: malformed UTF-8");
    FAILS("\"a\xc0\x80\"", NOT_UTF8, "byte 2: malformed UTF-8");
    FAILS("\"\xed\xa0\x80\"", NOT_UTF8, "byte 1: malformed UTF-8");
    FAILS("\"\xf4\x90\x80\x80\"", NOT_UTF8, "byte 1: malformed UTF-8");
    FAILS("\"\xe2\x82", NOT_UTF8, "byte 1: malformed UTF-8");
    FAILS("{\"\xff\":1}", NOT_UTF8, "byte 2: malformed UTF-8");
    FAILS("{\"a\":\"ok\",\"b\":\"x\x80\"}", NOT_UTF8,
          "byte 16: malformed UTF-8");
}

void test_scan_unicode_escapes(void)
{
    OK("\"\\u0041\"", 1);
    OK("\"\\uABCD\\uabcd\\u00E9\"", 1);
    OK("\"\\u0001\"", 1); /* escaped controls are fine, except U+0000 */
    OK("\"\\ud83d\\ude00\"", 1);
    OK("\"\\uD83D\\uDE00\"", 1);
    OK("\"\\udbff\\udfff\"", 1); /* U+10FFFF */
    OK("\"\\ud800\\udc00x\"", 1);
    OK("{\"\\u00e9\":1}", 1);

    FAILS("\"\\u12\"", INVALID_JSON, "byte 1: invalid \\u escape");
    FAILS("\"\\u12G4\"", INVALID_JSON, "byte 1: invalid \\u escape");
    FAILS("\"\\u 123\"", INVALID_JSON, "byte 1: invalid \\u escape");
    FAILS("\"\\u", INVALID_JSON, "byte 1: invalid \\u escape");
    FAILS("\"ab\\u-001\"", INVALID_JSON, "byte 3: invalid \\u escape");

    FAILS("\"\\u0000\"", BAD_STRING, "byte 1: \\u0000 in a string");
    FAILS("{\"\\u0000\":1}", BAD_STRING, "byte 2: \\u0000 in a string");
    FAILS("{\"a\":\"x\\u0000y\"}", BAD_STRING, "byte 7: \\u0000 in a string");

    /* a low surrogate first, a high one alone or followed by anything but
     * a low one (even a malformed escape): reported in lower case */
    FAILS("\"\\ude00\"", NOT_UTF8, "byte 1: unpaired surrogate \\ude00");
    FAILS("\"\\uDC00\\uD800\"", NOT_UTF8, "byte 1: unpaired surrogate \\udc00");
    FAILS("\"\\ud83d\"", NOT_UTF8, "byte 1: unpaired surrogate \\ud83d");
    FAILS("\"\\uD83D\"", NOT_UTF8, "byte 1: unpaired surrogate \\ud83d");
    FAILS("\"\\ud83dx\\ude00\"", NOT_UTF8,
          "byte 1: unpaired surrogate \\ud83d");
    FAILS("\"\\ud83d\\u0041\"", NOT_UTF8, "byte 1: unpaired surrogate \\ud83d");
    FAILS("\"\\ud83d\\ud83d\\ude00\"", NOT_UTF8,
          "byte 1: unpaired surrogate \\ud83d");
    FAILS("\"\\ud83d\\ue000\"", NOT_UTF8, "byte 1: unpaired surrogate \\ud83d");
    FAILS("\"\\ud83d\\uZZZZ\"", NOT_UTF8, "byte 1: unpaired surrogate \\ud83d");
    FAILS("\"\\ud83d\\n\"", NOT_UTF8, "byte 1: unpaired surrogate \\ud83d");
    FAILS("\"ok \\ud800\\udc00 \\udfff\"", NOT_UTF8,
          "byte 17: unpaired surrogate \\udfff");
    /* an escape cut by len, even with the rest of it in memory */
    FAILS_N("\"\\u1234\"", 6, INVALID_JSON, "byte 1: invalid \\u escape");
    FAILS_N("\"\\ud83d\\ude00\"", 12, NOT_UTF8,
            "byte 1: unpaired surrogate \\ud83d");
    /* a complete pair, then the end of input */
    FAILS("\"\\ud83d\\ude00", INVALID_JSON, "byte 0: unterminated string");
}

void test_scan_numbers(void)
{
    OK("0", 1);
    OK("-0", 1);
    OK("7", 1);
    OK("-12", 1);
    OK("1.5", 1);
    OK("-0.25", 1);
    OK("0e0", 1);
    OK("1e5", 1);
    OK("1E5", 1);
    OK("1e+5", 1);
    OK("1e-5", 1);
    OK("-1.5E-10", 1);
    OK("[0,-0,0.0,10]", 4);
    /* the grammar only: overflow is fl_payload.c's bad_number */
    OK("1e999", 1);
    OK("-1e999", 1);
    OK("1e-999", 1);
    OK("123456789012345678901234567890", 1);

    FAILS("01", INVALID_JSON,
          "byte 1: unexpected '1', expected the end after the JSON value");
    FAILS("[01]", INVALID_JSON, "byte 2: unexpected '1', expected ',' or ']'");
    FAILS("-01", INVALID_JSON,
          "byte 2: unexpected '1', expected the end after the JSON value");
    FAILS("1.", INVALID_JSON,
          "byte 2: unexpected end of input, expected a digit after '.'");
    FAILS("[1.]", INVALID_JSON,
          "byte 3: unexpected ']', expected a digit after '.'");
    FAILS("1.e5", INVALID_JSON,
          "byte 2: unexpected 'e', expected a digit after '.'");
    FAILS(".5", INVALID_JSON, "byte 0: unexpected '.', expected a value");
    FAILS("1e", INVALID_JSON,
          "byte 2: unexpected end of input, expected a digit in the exponent");
    FAILS("1e+", INVALID_JSON,
          "byte 3: unexpected end of input, expected a digit in the exponent");
    FAILS("[1e-]", INVALID_JSON,
          "byte 4: unexpected ']', expected a digit in the exponent");
    FAILS("1ex", INVALID_JSON,
          "byte 2: unexpected 'x', expected a digit in the exponent");
    FAILS("-", INVALID_JSON,
          "byte 1: unexpected end of input, expected a digit");
    FAILS("-a", INVALID_JSON, "byte 1: unexpected 'a', expected a digit");
    FAILS("--1", INVALID_JSON, "byte 1: unexpected '-', expected a digit");
    FAILS("- 1", INVALID_JSON,
          "byte 1: unexpected byte 0x20, expected a digit");
    FAILS("+1", INVALID_JSON, "byte 0: unexpected '+', expected a value");
    FAILS("0x10", INVALID_JSON,
          "byte 1: unexpected 'x', expected the end after the JSON value");
    FAILS("1.5.5", INVALID_JSON,
          "byte 3: unexpected '.', expected the end after the JSON value");
    FAILS("{\"a\":1,5}", INVALID_JSON,
          "byte 7: unexpected '5', expected a string name");
}

void test_scan_nonfinite(void)
{
    /* any case, and any word that starts like them */
    FAILS("NaN", BAD_NUMBER, "byte 0: NaN and Infinity are not JSON numbers");
    FAILS("nan", BAD_NUMBER, "byte 0: NaN and Infinity are not JSON numbers");
    FAILS("Infinity", BAD_NUMBER,
          "byte 0: NaN and Infinity are not JSON numbers");
    FAILS("INF", BAD_NUMBER, "byte 0: NaN and Infinity are not JSON numbers");
    FAILS("nanx", BAD_NUMBER, "byte 0: NaN and Infinity are not JSON numbers");
    FAILS("information", BAD_NUMBER,
          "byte 0: NaN and Infinity are not JSON numbers");
    /* after a minus, the offset is the minus's */
    FAILS("-Infinity", BAD_NUMBER,
          "byte 0: NaN and Infinity are not JSON numbers");
    FAILS("-nan", BAD_NUMBER, "byte 0: NaN and Infinity are not JSON numbers");
    FAILS("{\"a\":-inf}", BAD_NUMBER,
          "byte 5: NaN and Infinity are not JSON numbers");
    FAILS("{\"temp\": NaN}", BAD_NUMBER,
          "byte 9: NaN and Infinity are not JSON numbers");
    FAILS("[1, Infinity]", BAD_NUMBER,
          "byte 4: NaN and Infinity are not JSON numbers");

    /* too short to be one, or another word: plain syntax errors */
    FAILS("in", INVALID_JSON, "byte 0: unexpected 'i', expected a value");
    FAILS("[na]", INVALID_JSON, "byte 1: unexpected 'n', expected a value");
    FAILS("-in", INVALID_JSON, "byte 1: unexpected 'i', expected a digit");
    FAILS("tru", INVALID_JSON, "byte 0: unexpected 't', expected a value");
    FAILS("nul", INVALID_JSON, "byte 0: unexpected 'n', expected a value");
    FAILS("True", INVALID_JSON, "byte 0: unexpected 'T', expected a value");
    FAILS("NULL", INVALID_JSON, "byte 0: unexpected 'N', expected a value");
    FAILS("fals", INVALID_JSON, "byte 0: unexpected 'f', expected a value");
    FAILS("undefined", INVALID_JSON,
          "byte 0: unexpected 'u', expected a value");
}

void test_scan_number_length(void)
{
    char *s;

    /* at most 63 characters, sign, point and exponent included */
    s = fl_test_repeat("", '1', 63, "");
    OK(s, 1);
    free(s);
    s = fl_test_repeat("", '1', 64, "");
    FAILS(s, BAD_NUMBER, "byte 0: number literal longer than 63 characters");
    free(s);
    s = fl_test_repeat("-", '1', 62, "");
    OK(s, 1);
    free(s);
    s = fl_test_repeat("-", '1', 63, "");
    FAILS(s, BAD_NUMBER, "byte 0: number literal longer than 63 characters");
    free(s);
    s = fl_test_repeat("0.", '0', 57, "e+10");
    OK(s, 1);
    free(s);
    s = fl_test_repeat("0.", '0', 58, "e+10");
    FAILS(s, BAD_NUMBER, "byte 0: number literal longer than 63 characters");
    free(s);
    s = fl_test_repeat("{\"a\":[1, ", '2', 64, "]}");
    FAILS(s, BAD_NUMBER, "byte 9: number literal longer than 63 characters");
    free(s);
    /* the grammar is checked first */
    s = fl_test_repeat("", '1', 70, ".");
    FAILS(s, INVALID_JSON,
          "byte 71: unexpected end of input, expected a digit after '.'");
    free(s);
}

static void check_depth(const char *file, int line, const char *json, int depth,
                        fl_scan_err_t want, const char *want_msg,
                        size_t nvalues)
{
    check_scan(file, line, json, strlen(json), depth, want, want_msg, nvalues);
}

#define DEPTH_OK(json, depth, nvalues) \
    check_depth(__FILE__, __LINE__, json, depth, FL_SCAN_OK, NULL, nvalues)
#define DEPTH_FAILS(json, depth, err, msg) \
    check_depth(__FILE__, __LINE__, json, depth, FL_SCAN_##err, msg, 0)

void test_scan_depth(void)
{
    char  *s, *p;
    size_t i;

    /* a scalar is depth 0, {"a": 1} is 1; empty containers count too */
    DEPTH_OK("1", 1, 1);
    DEPTH_OK("{\"a\":1}", 1, 1);
    DEPTH_OK("[1,2,3]", 1, 3);
    DEPTH_OK("[[]]", 2, 0);
    DEPTH_OK("{\"a\":[1],\"b\":{\"c\":2}}", 2, 2);
    DEPTH_FAILS("{\"a\":{}}", 1, TOO_DEEP, "byte 5: nesting deeper than 1");
    DEPTH_FAILS("[[]]", 1, TOO_DEEP, "byte 1: nesting deeper than 1");
    DEPTH_FAILS("[1,[2]]", 1, TOO_DEEP, "byte 3: nesting deeper than 1");
    DEPTH_FAILS("{\"a\":[1],\"b\":{\"c\":{}}}", 2, TOO_DEEP,
                "byte 18: nesting deeper than 2");
    /* depth is checked when the bracket opens, before what follows */
    DEPTH_FAILS("[[[", 2, TOO_DEEP, "byte 2: nesting deeper than 2");
    DEPTH_FAILS("[[x", 2, INVALID_JSON,
                "byte 2: unexpected 'x', expected a value");

    /* 64 is the most: one bit per open container in a uint64_t */
    s = fl_test_repeat("", '[', 64, "");
    p = fl_test_repeat(s, ']', 64, "");
    DEPTH_OK(p, 64, 0);
    free(p);
    p = fl_test_repeat(s, '[', 1, "");
    DEPTH_FAILS(p, 64, TOO_DEEP, "byte 64: nesting deeper than 64");
    free(p);
    free(s);

    /* an object at depth 64 (bit 63), arrays around it: its closing
     * bracket is checked against its own kind */
    s = fl_test_repeat("", '[', 63, "{\"a\":1}");
    p = fl_test_repeat(s, ']', 63, "");
    DEPTH_OK(p, 64, 1);
    free(p);
    p = fl_test_repeat("", '[', 63, "{\"a\":1]");
    DEPTH_FAILS(p, 64, INVALID_JSON,
                "byte 69: unexpected ']', expected ',' or '}'");
    free(p);
    free(s);

    /* alternating objects and arrays 64 deep, closed in order */
    s = malloc(64 * 5 + 64 + 2);
    p = s;
    for (i = 0; i < 64; i++)
        p += sprintf(p, i % 2 ? "[" : "{\"k\":");
    /* the innermost container, at depth 64, is an array ("[") */
    *p++ = '1';
    for (i = 64; i-- > 0;)
        *p++ = i % 2 ? ']' : '}';
    *p = '\0';
    DEPTH_OK(s, 64, 1);
    DEPTH_FAILS(s, 63, TOO_DEEP, "byte 191: nesting deeper than 63");
    /* close the outermost object with ']' instead */
    p[-1] = ']';
    DEPTH_FAILS(s, 64, INVALID_JSON,
                "byte 256: unexpected ']', expected ',' or '}'");
    free(s);

    /* 10,000 deep fails at the first bracket too many, not the end */
    s = fl_test_repeat("", '[', 10000, "");
    DEPTH_FAILS(s, 8, TOO_DEEP, "byte 8: nesting deeper than 8");
    free(s);
    s = fl_test_repeat("{\"a\":", '[', 10000, "");
    DEPTH_FAILS(s, 8, TOO_DEEP, "byte 12: nesting deeper than 8");
    free(s);
}

void test_scan_first_error(void)
{
    /* the first problem in byte order wins, whatever its kind */
    FAILS("[NaN, \"\\u0000\"]", BAD_NUMBER,
          "byte 1: NaN and Infinity are not JSON numbers");
    FAILS("[\"\\u0000\", NaN]", BAD_STRING, "byte 2: \\u0000 in a string");
    FAILS("[1,,\"\xff\"]", INVALID_JSON,
          "byte 3: unexpected ',', expected a value");
    FAILS("[\"\xff\",,1]", NOT_UTF8, "byte 2: malformed UTF-8");
    FAILS("{\"a\":\"\\ud800\",}", NOT_UTF8,
          "byte 6: unpaired surrogate \\ud800");
    check_scan(__FILE__, __LINE__, "[[[\"\\u0000\"]]]", 14, 2, FL_SCAN_TOO_DEEP,
               "byte 2: nesting deeper than 2", 0);
}

void test_scan_message_buffer(void)
{
    fl_scan_t s;
    char      msg[10];

    /* the message is cut to the caller's buffer */
    memset(&s, 0, sizeof(s));
    s.p = (const unsigned char *)"[1,]";
    s.len = 4;
    s.msg = msg;
    s.msg_size = sizeof(msg);
    FL_CHECK_EQ_INT(fl_scan(&s, DEPTH), FL_ERROR);
    FL_CHECK_EQ_INT(s.err, FL_SCAN_INVALID_JSON);
    FL_CHECK_STR(msg, "byte 3: u");

    /* no buffer: the reason alone */
    memset(&s, 0, sizeof(s));
    s.p = (const unsigned char *)"[\"\\u0000\"]";
    s.len = 10;
    FL_CHECK_EQ_INT(fl_scan(&s, DEPTH), FL_ERROR);
    FL_CHECK_EQ_INT(s.err, FL_SCAN_BAD_STRING);

    /* a scan that fails leaves err set; one that succeeds leaves it 0 */
    memset(&s, 0, sizeof(s));
    s.p = (const unsigned char *)"[1]";
    s.len = 3;
    FL_CHECK_EQ_INT(fl_scan(&s, DEPTH), FL_OK);
    FL_CHECK_EQ_INT(s.err, FL_SCAN_OK);
}
