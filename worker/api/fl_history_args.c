/*
 * fl_history_args.c - the arguments of the history API (fl_history.h):
 * times, bucket widths, the bucket ladder of points=N. Pure functions,
 * unit-tested (test/unit/api/test_history_args.c).
 */
#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "fl_config.h"
#include "fl_core.h"
#include "fl_history.h"
#include "fl_time.h"

#define MS_MINUTE ((int64_t)60000)
#define MS_HOUR   ((int64_t)3600000)
#define MS_DAY    ((int64_t)86400000)

int fl_history_time(const char *s, int64_t *us)
{
    size_t  len = strlen(s), i = 0, k;
    int64_t ms = 0, f = 0;

    if (len > 0 && len < 20 && isdigit((unsigned char)s[0])) {
        for (; isdigit((unsigned char)s[i]); i++) {
            if (i >= 15) /* year 33658 and later */
                return FL_ERROR;
            ms = ms * 10 + (s[i] - '0');
        }
        if (s[i] == '.') {
            for (i++, k = 0; isdigit((unsigned char)s[i]); i++, k++) {
                if (k == 3)
                    return FL_ERROR; /* below the microsecond */
                f = f * 10 + (s[i] - '0');
            }
            if (k == 0)
                return FL_ERROR;
            for (; k < 3; k++)
                f *= 10;
        }
        if (s[i] != '\0')
            return FL_ERROR;
        *us = ms * 1000 + f;
        return FL_OK;
    }
    if (fl_rfc3339_us(s, len, FL_RFC3339_SPACE_PLUS, us) != FL_OK || *us < 0)
        return FL_ERROR;
    return FL_OK;
}

int fl_history_bucket(const char *s, int64_t *ms)
{
    char    num[32];
    size_t  len = strlen(s);
    int64_t v;

    if (len >= 2 && len < sizeof(num) && s[len - 1] == 'w') {
        /* weeks, which config durations do not have */
        memcpy(num, s, len - 1);
        num[len - 1] = 'd';
        num[len] = '\0';
        if (fl_parse_duration_ms(num, &v) != FL_OK || v > INT64_MAX / 7)
            return FL_ERROR;
        v *= 7;
    } else if (fl_parse_duration_ms(s, &v) != FL_OK) {
        return FL_ERROR;
    }
    if (v < 1 || v > FL_HISTORY_BUCKET_MAX_MS)
        return FL_ERROR;
    *ms = v;
    return FL_OK;
}

void fl_history_bucket_name(int64_t ms, char *buf, size_t len)
{
    if (ms % MS_DAY == 0)
        snprintf(buf, len, "%" PRId64 "d", ms / MS_DAY);
    else if (ms % MS_HOUR == 0)
        snprintf(buf, len, "%" PRId64 "h", ms / MS_HOUR);
    else if (ms % MS_MINUTE == 0)
        snprintf(buf, len, "%" PRId64 "m", ms / MS_MINUTE);
    else if (ms % 1000 == 0)
        snprintf(buf, len, "%" PRId64 "s", ms / 1000);
    else
        snprintf(buf, len, "%" PRId64 "ms", ms);
}

int64_t fl_history_nbuckets(int64_t from_us, int64_t to_us, int64_t ms)
{
    int64_t w = ms * 1000;

    if (to_us <= from_us || w <= 0)
        return 0;
    /* times are never negative (fl_history_time) */
    return (to_us - 1) / w - from_us / w + 1;
}

int64_t fl_history_pick_bucket(int64_t from_us, int64_t to_us, int n,
                               int64_t min_ms)
{
    static const int64_t ladder[] = {
        1000,          2000,           5000,           10000,
        15000,         30000,          MS_MINUTE,      2 * MS_MINUTE,
        5 * MS_MINUTE, 10 * MS_MINUTE, 15 * MS_MINUTE, 30 * MS_MINUTE,
        MS_HOUR,       2 * MS_HOUR,    3 * MS_HOUR,    6 * MS_HOUR,
        12 * MS_HOUR,  MS_DAY,         2 * MS_DAY,     7 * MS_DAY,
        14 * MS_DAY,   30 * MS_DAY,    90 * MS_DAY,    180 * MS_DAY,
        365 * MS_DAY,
    };
    int64_t b;

    for (size_t i = 0; i < fl_nelem(ladder); i++) {
        if (ladder[i] >= min_ms &&
            fl_history_nbuckets(from_us, to_us, ladder[i]) <= n)
            return ladder[i];
    }
    for (b = 365 * MS_DAY; fl_history_nbuckets(from_us, to_us, b) > n;)
        b *= 2;
    return b;
}

void fl_history_ms(int64_t us, char *buf, size_t len)
{
    int64_t f = us % 1000;
    int     digits_ = 3;

    if (f == 0) {
        snprintf(buf, len, "%" PRId64, us / 1000);
        return;
    }
    while (f % 10 == 0) {
        f /= 10;
        digits_--;
    }
    snprintf(buf, len, "%" PRId64 ".%0*" PRId64, us / 1000, digits_, f);
}
