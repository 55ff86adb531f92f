/*
 * fuzz_utf8_ref.h - a UTF-8 decoder of the fuzzers' own, written from
 * RFC 3629 and independent of common/fl_scan.c, so that the harnesses can
 * check fleetd's validator against it (a header: each harness is one
 * translation unit).
 *
 * Decode code points one by one and check the shortest form, the range
 * and the surrogate gap.
 */
#ifndef FUZZ_UTF8_REF_H
#define FUZZ_UTF8_REF_H

#include <stddef.h>
#include <stdint.h>

/* The length of the longest valid prefix of s[0..n). */
static inline size_t fuzz_utf8_prefix(const unsigned char *s, size_t n)
{
    size_t   i = 0, k, len;
    uint32_t cp, min;

    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        if ((s[i] & 0xe0) == 0xc0) {
            len = 2, cp = s[i] & 0x1f, min = 0x80;
        } else if ((s[i] & 0xf0) == 0xe0) {
            len = 3, cp = s[i] & 0x0f, min = 0x800;
        } else if ((s[i] & 0xf8) == 0xf0) {
            len = 4, cp = s[i] & 0x07, min = 0x10000;
        } else {
            return i;
        }
        if (n - i < len)
            return i;
        for (k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return i;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return i;
        i += len;
    }
    return i;
}

/* 1 when all of s[0..n) is UTF-8. */
static inline int fuzz_utf8_ref(const unsigned char *s, size_t n)
{
    return fuzz_utf8_prefix(s, n) == n;
}

#endif
