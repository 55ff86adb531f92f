/*
 * test_time.c - fl_rfc3339_us() and the calendar helpers (common/fl_time.c).
 */
#include <string.h>

#include "fl_core.h"
#include "fl_time.h"
#include "unit.h"

static int64_t t(const char *s, int flags)
{
    int64_t us = -1;

    if (fl_rfc3339_us(s, strlen(s), flags, &us) != FL_OK)
        return -1;
    return us;
}

void test_time_rfc3339(void)
{
    const int64_t base = 1764370000000000LL; /* 2025-11-28T22:46:40Z */

    FL_CHECK_EQ_INT(t("2025-11-28T22:46:40Z", 0), base);
    FL_CHECK_EQ_INT(t("2025-11-28t22:46:40.5z", 0), base + 500000);
    FL_CHECK_EQ_INT(t("2025-11-28 22:46:40.1234567Z", 0), base + 123456);
    FL_CHECK_EQ_INT(t("2025-11-28T23:46:40+01:00", 0), base);
    FL_CHECK_EQ_INT(t("2025-11-28T21:16:40-01:30", 0), base);
    FL_CHECK_EQ_INT(t("2025-11-28T22:46:60Z", 0), base + 20000000);
    FL_CHECK_EQ_INT(t("2024-02-29T00:00:00Z", 0), 1709164800000000LL);
    FL_CHECK_EQ_INT(t("1969-12-31T23:59:59.5Z", 0), -500000);
    /* no zone: refused unless the caller says UTC */
    FL_CHECK_EQ_INT(t("2025-11-28T22:46:40", 0), -1);
    FL_CHECK_EQ_INT(t("2025-11-28T22:46:40.5", 0), -1);
    FL_CHECK_EQ_INT(t("2025-11-28T22:46:40.5", FL_RFC3339_NO_ZONE_UTC),
                    base + 500000);
    /* a '+' a URL query turned into a space */
    FL_CHECK_EQ_INT(t("2025-11-28T23:46:40 01:00", 0), -1);
    FL_CHECK_EQ_INT(t("2025-11-28T23:46:40 01:00", FL_RFC3339_SPACE_PLUS),
                    base);
    /* malformed */
    FL_CHECK_EQ_INT(t("2025-02-29T00:00:00Z", 0), -1);
    FL_CHECK_EQ_INT(t("2025-13-01T00:00:00Z", 0), -1);
    FL_CHECK_EQ_INT(t("2025-11-28T24:00:00Z", 0), -1);
    FL_CHECK_EQ_INT(t("2025-11-28T22:46:40.Z", 0), -1);
    FL_CHECK_EQ_INT(t("2025-11-28T22:46:40+0100", 0), -1);
    FL_CHECK_EQ_INT(t("2025-11-28T22:46:40Zjunk", 0), -1);
    FL_CHECK_EQ_INT(t("2025-11-28", 0), -1);
    FL_CHECK_EQ_INT(fl_days_from_civil(1970, 1, 1), 0);
    FL_CHECK_EQ_INT(fl_days_from_civil(2000, 3, 1), 11017);
    FL_CHECK_EQ_INT(fl_days_in_month(2100, 2), 28);
    FL_CHECK_EQ_INT(fl_days_in_month(2000, 2), 29);
}
