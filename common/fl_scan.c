/*
 * fl_scan.c - strict UTF-8 and the JSON pre-scan of telemetry payloads.
 *
 * fl_scan() is one O(n) pass, no allocation, no recursion, that checks the
 * RFC 8259 grammar, strict UTF-8, \u escapes, the nesting depth and the
 * number literals, and counts the scalar values. cJSON is lax (leading
 * zeros, raw control bytes, "1." ...) and recursive (a 10,000-deep input
 * would cost 10,000 frames before its own limit of 1000); after this pass
 * it only sees documents it parses exactly. What the scan lets through is
 * judged by fl_payload.c: value types, names, limits, numbers that
 * overflow a double (1e999 is a valid literal here).
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "fl_core.h"
#include "fl_scan.h"

#define FL_NUM_MAX_CHAR 63 /* cJSON copies at most 63 */

/* ---- UTF-8 ------------------------------------------------------------ */

/*
 * Length (1-4) of the well-formed UTF-8 sequence at p (n bytes available),
 * or 0 when it is malformed: Unicode table 3-7, so no overlong form, no
 * surrogate, nothing above U+10FFFF.
 */
size_t fl_utf8_seq(const unsigned char *p, size_t n)
{
    unsigned c = p[0], lo = 0x80, hi = 0xbf;

    if (c < 0x80)
        return 1;
    if (c < 0xc2)
        return 0;
    if (c < 0xe0)
        return n >= 2 && (p[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c < 0xf0) {
        if (n < 3 || (p[2] & 0xc0) != 0x80)
            return 0;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
        return p[1] >= lo && p[1] <= hi ? 3 : 0;
    }
    if (c < 0xf5) {
        if (n < 4 || (p[2] & 0xc0) != 0x80 || (p[3] & 0xc0) != 0x80)
            return 0;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
        return p[1] >= lo && p[1] <= hi ? 4 : 0;
    }
    return 0;
}

int fl_utf8_valid(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    size_t               i = 0, k;

    while (i < len) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        k = fl_utf8_seq(p + i, len - i);
        if (k == 0)
            return 0;
        i += k;
    }
    return 1;
}

/* ---- strict pre-scan -------------------------------------------------- */

/*
 * Record why the scan failed and return FL_ERROR. Every message is ASCII
 * (a byte that is not printable is shown in hex), so one cut to fit the
 * caller's buffer is still valid UTF-8 without control characters.
 */
static fl_printf(3, 4) int fl_scan_fail(fl_scan_t *s, fl_scan_err_t err,
                                        const char *fmt, ...)
{
    va_list ap;

    s->err = err;
    va_start(ap, fmt);
    vsnprintf(s->msg, s->msg_size, fmt, ap);
    va_end(ap);
    return FL_ERROR;
}

void fl_scan_ws(fl_scan_t *s)
{
    while (s->i < s->len && (s->p[s->i] == ' ' || s->p[s->i] == '\n' ||
                             s->p[s->i] == '\r' || s->p[s->i] == '\t'))
        s->i++;
}

/* The byte at s->i is not what the grammar wants: say which. */
static int fl_scan_unexpected(fl_scan_t *s, const char *expected)
{
    unsigned c;

    if (s->i == s->len)
        return fl_scan_fail(s, FL_SCAN_INVALID_JSON,
                            "byte %zu: unexpected end of input, expected %s",
                            s->i, expected);
    c = s->p[s->i];
    if (c >= 0x80 && fl_utf8_seq(s->p + s->i, s->len - s->i) == 0)
        return fl_scan_fail(s, FL_SCAN_NOT_UTF8, "byte %zu: malformed UTF-8",
                            s->i);
    if (c > 0x20 && c < 0x7f && c != '"' && c != '\\')
        return fl_scan_fail(s, FL_SCAN_INVALID_JSON,
                            "byte %zu: unexpected '%c', expected %s", s->i, c,
                            expected);
    return fl_scan_fail(s, FL_SCAN_INVALID_JSON,
                        "byte %zu: unexpected byte 0x%02x, expected %s", s->i,
                        c, expected);
}

/* Value of 4 hex digits at p (n bytes available), or -1. */
static long fl_hex4(const unsigned char *p, size_t n)
{
    long   v = 0;
    size_t k;

    if (n < 4)
        return -1;
    for (k = 0; k < 4; k++) {
        unsigned c = p[k];

        if (c >= '0' && c <= '9')
            v = v * 16 + (c - '0');
        else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
            v = v * 16 + ((c | 0x20) - 'a' + 10);
        else
            return -1;
    }
    return v;
}

/*
 * A string starting at the quote at s->i: escapes, no raw control byte,
 * strict UTF-8, paired surrogate escapes, no \u0000 (cJSON would cut the
 * string there). Leaves s->i after the closing quote.
 */
static int fl_scan_string(fl_scan_t *s)
{
    const unsigned char *p = s->p;
    size_t               i = s->i + 1, n = s->len, k;
    long                 cp, lo;

    while (i < n) {
        unsigned c = p[i];

        if (c == '"') {
            s->i = i + 1;
            return FL_OK;
        }
        if (c == '\\') {
            if (i + 1 == n)
                break;
            c = p[i + 1];
            if (c != 'u') {
                if (c != '"' && c != '\\' && c != '/' && c != 'b' && c != 'f' &&
                    c != 'n' && c != 'r' && c != 't') {
                    s->i = i;
                    return fl_scan_fail(s, FL_SCAN_INVALID_JSON,
                                        "byte %zu: invalid escape", i);
                }
                i += 2;
                continue;
            }
            cp = fl_hex4(p + i + 2, n - i - 2);
            if (cp < 0)
                return fl_scan_fail(s, FL_SCAN_INVALID_JSON,
                                    "byte %zu: invalid \\u escape", i);
            if (cp == 0)
                return fl_scan_fail(s, FL_SCAN_BAD_STRING,
                                    "byte %zu: \\u0000 in a string", i);
            if (cp >= 0xdc00 && cp <= 0xdfff)
                return fl_scan_fail(s, FL_SCAN_NOT_UTF8,
                                    "byte %zu: unpaired surrogate \\u%04lx", i,
                                    cp);
            if (cp >= 0xd800 && cp <= 0xdbff) {
                lo = -1;
                if (n - i >= 12 && p[i + 6] == '\\' && p[i + 7] == 'u')
                    lo = fl_hex4(p + i + 8, 4);
                if (lo < 0xdc00 || lo > 0xdfff)
                    return fl_scan_fail(s, FL_SCAN_NOT_UTF8,
                                        "byte %zu: unpaired surrogate \\u%04lx",
                                        i, cp);
                i += 12;
                continue;
            }
            i += 6;
            continue;
        }
        if (c < 0x20)
            return fl_scan_fail(s, FL_SCAN_INVALID_JSON,
                                "byte %zu: unescaped control character in a "
                                "string",
                                i);
        if (c < 0x80) {
            i++;
            continue;
        }
        k = fl_utf8_seq(p + i, n - i);
        if (k == 0)
            return fl_scan_fail(s, FL_SCAN_NOT_UTF8,
                                "byte %zu: malformed UTF-8", i);
        i += k;
    }
    return fl_scan_fail(s, FL_SCAN_INVALID_JSON,
                        "byte %zu: unterminated string", s->i);
}

static int fl_is_digit(const fl_scan_t *s, size_t i)
{
    return i < s->len && s->p[i] >= '0' && s->p[i] <= '9';
}

/* NaN, Infinity and friends at s->i (any case): a number JSON lacks. */
static int fl_scan_nonfinite(fl_scan_t *s, size_t at)
{
    size_t rest = s->len - at;

    if ((rest >= 3 && strncasecmp((const char *)s->p + at, "nan", 3) == 0) ||
        (rest >= 3 && strncasecmp((const char *)s->p + at, "inf", 3) == 0))
        return fl_scan_fail(s, FL_SCAN_BAD_NUMBER,
                            "byte %zu: NaN and Infinity are not JSON numbers",
                            s->i);
    return 0;
}

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?, at most 63 bytes. */
static int fl_scan_number(fl_scan_t *s)
{
    size_t start = s->i, i = s->i;

    if (s->p[i] == '-')
        i++;
    if (i < s->len && s->p[i] == '0') {
        i++;
    } else if (fl_is_digit(s, i)) {
        while (fl_is_digit(s, i))
            i++;
    } else {
        if (i < s->len && fl_scan_nonfinite(s, i) != 0)
            return FL_ERROR;
        s->i = i;
        return fl_scan_unexpected(s, "a digit");
    }
    if (i < s->len && s->p[i] == '.') {
        i++;
        if (!fl_is_digit(s, i)) {
            s->i = i;
            return fl_scan_unexpected(s, "a digit after '.'");
        }
        while (fl_is_digit(s, i))
            i++;
    }
    if (i < s->len && (s->p[i] == 'e' || s->p[i] == 'E')) {
        i++;
        if (i < s->len && (s->p[i] == '+' || s->p[i] == '-'))
            i++;
        if (!fl_is_digit(s, i)) {
            s->i = i;
            return fl_scan_unexpected(s, "a digit in the exponent");
        }
        while (fl_is_digit(s, i))
            i++;
    }
    if (i - start > FL_NUM_MAX_CHAR)
        return fl_scan_fail(
            s, FL_SCAN_BAD_NUMBER,
            "byte %zu: number literal longer than %d characters", start,
            FL_NUM_MAX_CHAR);
    s->i = i;
    return FL_OK;
}

static int fl_scan_literal(fl_scan_t *s, const char *lit, size_t n)
{
    if (s->len - s->i < n || memcmp(s->p + s->i, lit, n) != 0) {
        if (fl_scan_nonfinite(s, s->i) != 0)
            return FL_ERROR;
        return fl_scan_unexpected(s, "a value");
    }
    s->i += n;
    return FL_OK;
}

/* A scalar value at s->i (whitespace skipped). */
static int fl_scan_scalar(fl_scan_t *s)
{
    if (s->i == s->len)
        return fl_scan_unexpected(s, "a value");
    switch (s->p[s->i]) {
    case '"': return fl_scan_string(s);
    case 't': return fl_scan_literal(s, "true", 4);
    case 'f': return fl_scan_literal(s, "false", 5);
    case 'n': return fl_scan_literal(s, "null", 4);
    case '-': return fl_scan_number(s);
    }
    if (fl_is_digit(s, s->i))
        return fl_scan_number(s);
    if (fl_scan_nonfinite(s, s->i) != 0)
        return FL_ERROR;
    return fl_scan_unexpected(s, "a value");
}

/* An object key and its colon (whitespace around skipped). */
static int fl_scan_key(fl_scan_t *s)
{
    fl_scan_ws(s);
    if (s->i == s->len || s->p[s->i] != '"')
        return fl_scan_unexpected(s, "a string name");
    if (fl_scan_string(s) != FL_OK)
        return FL_ERROR;
    fl_scan_ws(s);
    if (s->i == s->len || s->p[s->i] != ':')
        return fl_scan_unexpected(s, "':'");
    s->i++;
    return FL_OK;
}

/*
 * Validate the JSON text s->p[s->i..len) (one value, whitespace around)
 * without recursion: the open containers are bits of one word, hence the
 * depth cap of 64. Fails at the first problem, in byte order, so a
 * 10,000-deep input costs max_depth steps.
 */
int fl_scan(fl_scan_t *s, int max_depth)
{
    uint64_t obj = 0; /* bit d: the container at depth d + 1 is an object */
    int      depth = 0, want_value = 1, is_obj;
    unsigned c;

    for (;;) {
        fl_scan_ws(s);
        if (want_value) {
            c = s->i < s->len ? s->p[s->i] : 0;
            if (c != '{' && c != '[') {
                if (fl_scan_scalar(s) != FL_OK)
                    return FL_ERROR;
                s->nvalues++;
                want_value = 0;
                continue;
            }
            if (depth == max_depth)
                return fl_scan_fail(s, FL_SCAN_TOO_DEEP,
                                    "byte %zu: nesting deeper than %d", s->i,
                                    max_depth);
            if (c == '{')
                obj |= (uint64_t)1 << depth;
            else
                obj &= ~((uint64_t)1 << depth);
            depth++;
            s->i++;
            fl_scan_ws(s);
            if (s->i < s->len && s->p[s->i] == (c == '{' ? '}' : ']')) {
                s->i++;
                depth--;
                want_value = 0;
                continue;
            }
            if (c == '{' && fl_scan_key(s) != FL_OK)
                return FL_ERROR;
            continue;
        }

        if (depth == 0) {
            if (s->i != s->len)
                return fl_scan_unexpected(s, "the end after the JSON value");
            return FL_OK;
        }
        is_obj = (int)((obj >> (depth - 1)) & 1);
        c = s->i < s->len ? s->p[s->i] : 0;
        if (c == ',') {
            s->i++;
            if (is_obj && fl_scan_key(s) != FL_OK)
                return FL_ERROR;
            want_value = 1;
        } else if (c == (is_obj ? '}' : ']')) {
            s->i++;
            depth--;
        } else {
            return fl_scan_unexpected(s, is_obj ? "',' or '}'" : "',' or ']'");
        }
    }
}
