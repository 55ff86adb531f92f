/*
 * test_enc.c - fl_enc: JSON text and RESP commands.
 *
 * What goes out of these encoders is read by a JSON parser (dashboards,
 * via Redis Pub/Sub) or by Redis itself, so the checks are on exact bytes
 * worked out by hand, and on what cJSON / strtod read back.
 */
#include <cjson/cJSON.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "fl_core.h"
#include <string.h>

#include "fl_enc.h"
#include "unit.h"

/* b's bytes as a NUL-terminated string (freed by the caller). */
static char *sb_text(const fl_sbuf_t *b)
{
    char *s = malloc(b->len + 1);

    memcpy(s, b->p ? b->p : "", b->len);
    s[b->len] = '\0';
    return s;
}

static void check_jstr(const char *in, const char *want)
{
    fl_sbuf_t b = {0};
    char     *got;
    cJSON    *j;

    fl_sb_jstr(&b, in);
    got = sb_text(&b);
    FL_CHECK_STR(got, want);
    /* and a JSON parser gets the original back */
    j = cJSON_Parse(got);
    FL_CHECK(j != NULL && cJSON_IsString(j));
    if (j && cJSON_IsString(j))
        FL_CHECK_STR(j->valuestring, in);
    cJSON_Delete(j);
    free(got);
    fl_sb_free(&b);
}

void test_enc_json_strings(void)
{
    check_jstr("", "\"\"");
    check_jstr("plain", "\"plain\"");
    check_jstr("say \"hi\"", "\"say \\\"hi\\\"\"");
    check_jstr("a\\b", "\"a\\\\b\"");
    check_jstr("l1\nl2\r\tx", "\"l1\\nl2\\r\\tx\"");
    check_jstr("\x01\x1f\x7f", "\"\\u0001\\u001f\x7f\"");
    check_jstr("\b\f", "\"\\u0008\\u000c\"");
    check_jstr("/", "\"/\"");
    /* UTF-8 passes through untouched */
    check_jstr("h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80",
               "\"h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80\"");
    /* escapes at the start, the end, back to back */
    check_jstr("\"\"", "\"\\\"\\\"\"");
    check_jstr("\nx\n", "\"\\nx\\n\"");
}

void test_enc_json_strings_long(void)
{
    /* every byte 1..127, many times over: crosses the buffer's growth */
    char      in[127 * 40 + 1];
    fl_sbuf_t b = {0};
    char     *got;
    cJSON    *j;
    size_t    n = 0;

    for (int r = 0; r < 40; r++)
        for (int c = 1; c < 128; c++)
            in[n++] = (char)c;
    in[n] = '\0';
    fl_sb_lit(&b, "prefix:");
    fl_sb_jstr(&b, in);
    got = sb_text(&b);
    FL_CHECK_PREFIX(got, "prefix:\"");
    j = cJSON_Parse(got + 7);
    FL_REQUIRE(j != NULL && cJSON_IsString(j));
    FL_CHECK(strcmp(j->valuestring, in) == 0);
    cJSON_Delete(j);
    free(got);
    fl_sb_free(&b);
}

static void check_num(double d, const char *want)
{
    fl_sbuf_t b = {0};
    char     *got;

    fl_sb_num(&b, d);
    got = sb_text(&b);
    if (want)
        FL_CHECK_STR(got, want);
    /* reads back as the same double, bit for bit */
    {
        double back = strtod(got, NULL);
        FL_CHECK(memcmp(&back, &d, sizeof(d)) == 0 || (back == 0 && d == 0));
    }
    free(got);
    fl_sb_free(&b);
}

void test_enc_json_numbers(void)
{
    check_num(0, "0");
    check_num(40, "40");
    check_num(-3, "-3");
    check_num(21.5, "21.5");
    check_num(-350, "-350");
    check_num(12345678901.0, "12345678901");
    check_num(1764370000000.0, "1764370000000");
    check_num(0.1, "0.1");
    check_num(1e-7, "1e-07");
    check_num(1e20, "1e+20");
    check_num(1.0 / 3, "0.33333333333333331");
    check_num(4.35, "4.35"); /* %.15g reads back: no need for 17 */
    check_num(DBL_MAX, "1.7976931348623157e+308");
    check_num(DBL_MIN, "2.2250738585072014e-308");
    check_num(9007199254740993.0, NULL); /* 2^53 + 1 rounds; reads back */
    /* many values: all read back */
    {
        unsigned long long x = 88172645463325252ULL;
        for (int i = 0; i < 20000; i++) {
            double d;
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            memcpy(&d, &x, sizeof(d));
            if (isfinite(d))
                check_num(d, NULL);
        }
    }
}

void test_enc_i64(void)
{
    fl_sbuf_t b = {0};
    char     *got;

    fl_sb_i64(&b, 0);
    fl_sb_lit(&b, ",");
    fl_sb_i64(&b, -1);
    fl_sb_lit(&b, ",");
    fl_sb_i64(&b, INT64_MAX);
    fl_sb_lit(&b, ",");
    fl_sb_i64(&b, INT64_MIN);
    got = sb_text(&b);
    FL_CHECK_STR(got, "0,-1,9223372036854775807,-9223372036854775808");
    free(got);
    fl_sb_free(&b);
}

void test_enc_resp(void)
{
    fl_resp_t         r = {0};
    size_t            len = 0;
    char             *cmd;
    static const char want[] = "*4\r\n$7\r\nEVALSHA\r\n$0\r\n\r\n"
                               "$6\r\na\r\nb\0c\r\n$2\r\n-7\r\n";

    fl_resp_str(&r, "EVALSHA");
    fl_resp_arg(&r, "", 0);
    fl_resp_arg(&r, "a\r\nb\0c", 6); /* binary-safe: CRLF and NUL inside */
    fl_resp_i64(&r, -7);
    FL_CHECK_EQ_INT(r.argc, 4);
    cmd = fl_resp_finish(&r, &len);
    FL_CHECK_EQ_U64(len, sizeof(want) - 1);
    FL_CHECK(len == sizeof(want) - 1 && memcmp(cmd, want, len) == 0);
    /* finish resets the builder */
    FL_CHECK_EQ_INT(r.argc, 0);
    FL_CHECK(r.body.p == NULL && r.body.len == 0);
    free(cmd);
}

void test_enc_resp_append(void)
{
    fl_resp_t         head = {0}, keys = {0};
    size_t            len = 0;
    char             *cmd;
    static const char want[] = "*5\r\n$4\r\nEVAL\r\n$1\r\n2\r\n"
                               "$2\r\nk1\r\n$2\r\nk2\r\n$3\r\n100\r\n";

    fl_resp_str(&keys, "k1");
    fl_resp_str(&keys, "k2");
    fl_resp_str(&head, "EVAL");
    fl_resp_i64(&head, keys.argc);
    fl_resp_append(&head, &keys);
    fl_resp_i64(&head, 100);
    FL_CHECK_EQ_INT(keys.argc, 2); /* src unchanged */
    cmd = fl_resp_finish(&head, &len);
    FL_CHECK(len == sizeof(want) - 1 && memcmp(cmd, want, len) == 0);
    free(cmd);
    fl_resp_free(&keys);

    /* an empty command is just its header */
    cmd = fl_resp_finish(&head, &len);
    FL_CHECK(len == 4 && memcmp(cmd, "*0\r\n", 4) == 0);
    free(cmd);
}

void test_enc_resp_large(void)
{
    /* 3,000 arguments of growing size: lengths and order survive the
     * buffer's growth */
    fl_resp_t r = {0};
    size_t    len = 0, off;
    char     *cmd, arg[3000];
    int       ok = 1;

    memset(arg, 'x', sizeof(arg));
    for (int i = 0; i < 3000; i++)
        fl_resp_arg(&r, arg, (size_t)i);
    cmd = fl_resp_finish(&r, &len);
    FL_REQUIRE(len > 9 && memcmp(cmd, "*3000\r\n", 7) == 0);
    off = 7;
    for (int i = 0; i < 3000 && ok; i++) {
        char hdr[24];
        int  h = snprintf(hdr, sizeof(hdr), "$%d\r\n", i);

        ok = off + (size_t)h + (size_t)i + 2 <= len &&
             memcmp(cmd + off, hdr, (size_t)h) == 0 &&
             memcmp(cmd + off + h, arg, (size_t)i) == 0 &&
             memcmp(cmd + off + h + i, "\r\n", 2) == 0;
        off += (size_t)h + (size_t)i + 2;
    }
    FL_CHECK(ok);
    FL_CHECK_EQ_U64(off, len);
    free(cmd);
}

/* fl_fnv1a (fl_core.c): the published FNV-1a test vectors. The fan-out
 * shard of a device is this hash modulo redis.channel_shards, and every
 * node must compute the same one. */
void test_fnv1a_vectors(void)
{
    FL_CHECK_EQ_U64(fl_fnv1a("", 0), 0x811c9dc5u);
    FL_CHECK_EQ_U64(fl_fnv1a("a", 1), 0xe40c292cu);
    FL_CHECK_EQ_U64(fl_fnv1a("foobar", 6), 0xbf9cf968u);
}
