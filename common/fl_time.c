/*
 * fl_time.c - calendar arithmetic and RFC 3339 date-times (fl_time.h).
 */
#include "fl_time.h"

#include "fl_core.h"

int64_t fl_days_from_civil(int64_t y, int m, int d)
{
    int64_t era, yoe, doy, doe;

    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

int fl_days_in_month(int y, int m)
{
    static const int days[12] = {31, 28, 31, 30, 31, 30,
                                 31, 31, 30, 31, 30, 31};

    if (m == 2 && (y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)))
        return 29;
    return days[m - 1];
}

/* n decimal digits at s into *v; -1 if one is not a digit. */
static int digits(const char *s, int n, int *v)
{
    *v = 0;
    for (int k = 0; k < n; k++) {
        if (s[k] < '0' || s[k] > '9')
            return -1;
        *v = *v * 10 + (s[k] - '0');
    }
    return 0;
}

int fl_rfc3339_us(const char *s, size_t len, int flags, int64_t *out)
{
    int    y, mo, d, h, mi, sec, oh = 0, om = 0, sign = 0, frac = 0;
    size_t i = 19, k;

    if (len < 19 || len > 64)
        return FL_ERROR;
    if (digits(s, 4, &y) || s[4] != '-' || digits(s + 5, 2, &mo) ||
        s[7] != '-' || digits(s + 8, 2, &d) ||
        (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
        digits(s + 11, 2, &h) || s[13] != ':' || digits(s + 14, 2, &mi) ||
        s[16] != ':' || digits(s + 17, 2, &sec))
        return FL_ERROR;
    if (i < len && s[i] == '.') {
        for (i++, k = 0; i < len && s[i] >= '0' && s[i] <= '9'; i++, k++) {
            if (k < 6)
                frac = frac * 10 + (s[i] - '0');
        }
        if (k == 0)
            return FL_ERROR;
        for (; k < 6; k++)
            frac *= 10;
    }
    if (i < len && (s[i] == 'Z' || s[i] == 'z')) {
        i++;
    } else if (i < len && (s[i] == '+' || s[i] == '-' ||
                           (s[i] == ' ' && (flags & FL_RFC3339_SPACE_PLUS)))) {
        sign = s[i] == '-' ? -1 : 1;
        if (len - i != 6 || digits(s + i + 1, 2, &oh) || s[i + 3] != ':' ||
            digits(s + i + 4, 2, &om))
            return FL_ERROR;
        i += 6;
    } else if (!(flags & FL_RFC3339_NO_ZONE_UTC)) {
        return FL_ERROR; /* RFC 3339 has no local times */
    }
    if (i != len || mo < 1 || mo > 12 || d < 1 || d > fl_days_in_month(y, mo) ||
        h > 23 || mi > 59 || sec > 60 || oh > 23 || om > 59)
        return FL_ERROR;
    *out = (((fl_days_from_civil(y, mo, d) * 24 + h) * 60 + mi) * 60 + sec) *
               1000000 +
           frac - (int64_t)sign * (oh * 60 + om) * 60000000;
    return FL_OK;
}
