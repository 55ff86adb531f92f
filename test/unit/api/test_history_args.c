/*
 * test_history_args.c - the history API's arguments (fl_history_args.c):
 * times, bucket widths, bucket counts, the points=N ladder, and how
 * times are written back. Expected epoch values are worked out by hand
 * (and checked against PostgreSQL 15: extract(epoch FROM
 * '2025-03-01T12:34:56.789Z'::timestamptz)).
 */
#include <stdint.h>
#include <string.h>

#include "fl_core.h"
#include "fl_history.h"
#include "unit.h"

#define MS  1000LL
#define MIN (60 * MS)
#define H   (60 * MIN)
#define D   (24 * H)

static int64_t t(const char *s)
{
    int64_t us = -42;

    if (fl_history_time(s, &us) != FL_OK)
        return -1;
    return us;
}

void test_history_time_epoch_ms(void)
{
    FL_CHECK_EQ_INT(t("0"), 0);
    FL_CHECK_EQ_INT(t("1764370000000"), 1764370000000000LL);
    FL_CHECK_EQ_INT(t("1764370000000.5"), 1764370000000500LL);
    FL_CHECK_EQ_INT(t("1764370000000.25"), 1764370000000250LL);
    FL_CHECK_EQ_INT(t("1764370000000.001"), 1764370000000001LL);
    FL_CHECK_EQ_INT(t("999999999999999"), 999999999999999000LL);
    FL_CHECK_EQ_INT(t("1764370000000.0001"), -1); /* below a us */
    FL_CHECK_EQ_INT(t("1764370000000."), -1);
    FL_CHECK_EQ_INT(t("1000000000000000"), -1); /* 16 digits */
    FL_CHECK_EQ_INT(t("-1"), -1);
    FL_CHECK_EQ_INT(t("+1"), -1);
    FL_CHECK_EQ_INT(t("1e3"), -1);
    FL_CHECK_EQ_INT(t("12 "), -1);
    FL_CHECK_EQ_INT(t(""), -1);
    FL_CHECK_EQ_INT(t(".5"), -1);
}

void test_history_time_rfc3339(void)
{
    /* 2025-03-01T12:34:56Z = 1740832496 */
    FL_CHECK_EQ_INT(t("2025-03-01T12:34:56Z"), 1740832496000000LL);
    FL_CHECK_EQ_INT(t("2025-03-01t12:34:56z"), 1740832496000000LL);
    FL_CHECK_EQ_INT(t("2025-03-01 12:34:56Z"), 1740832496000000LL);
    FL_CHECK_EQ_INT(t("2025-03-01T12:34:56.789Z"), 1740832496789000LL);
    FL_CHECK_EQ_INT(t("2025-03-01T12:34:56.7891234Z"), 1740832496789123LL);
    FL_CHECK_EQ_INT(t("2025-03-01T13:34:56+01:00"), 1740832496000000LL);
    FL_CHECK_EQ_INT(t("2025-03-01T13:34:56 01:00"), 1740832496000000LL);
    FL_CHECK_EQ_INT(t("2025-03-01T07:04:56-05:30"), 1740832496000000LL);
    FL_CHECK_EQ_INT(t("1970-01-01T00:00:00Z"), 0);
    FL_CHECK_EQ_INT(t("2024-02-29T00:00:00Z"), 1709164800000000LL);
    FL_CHECK_EQ_INT(t("2016-12-31T23:59:60Z"), 1483228800000000LL);
    FL_CHECK_EQ_INT(t("2025-02-29T00:00:00Z"), -1);
    FL_CHECK_EQ_INT(t("2025-13-01T00:00:00Z"), -1);
    FL_CHECK_EQ_INT(t("2025-03-01T24:00:00Z"), -1);
    FL_CHECK_EQ_INT(t("2025-03-01T12:34:56"), -1); /* no offset */
    FL_CHECK_EQ_INT(t("2025-03-01T12:34:56.Z"), -1);
    FL_CHECK_EQ_INT(t("2025-03-01T12:34:56+0100"), -1);
    FL_CHECK_EQ_INT(t("2025-03-01"), -1);
    FL_CHECK_EQ_INT(t("1969-12-31T23:59:59Z"), -1);
    FL_CHECK_EQ_INT(t("1970-01-01T00:30:00+01:00"), -1);
    FL_CHECK_EQ_INT(t("2025-03-01T12:34:56Zjunk"), -1);
}

void test_history_bucket(void)
{
    int64_t ms = 0;
    char    name[32];

    FL_CHECK(fl_history_bucket("1m", &ms) == FL_OK && ms == MIN);
    FL_CHECK(fl_history_bucket("90s", &ms) == FL_OK && ms == 90 * MS);
    FL_CHECK(fl_history_bucket("1.5h", &ms) == FL_OK && ms == 90 * MIN);
    FL_CHECK(fl_history_bucket("2w", &ms) == FL_OK && ms == 14 * D);
    FL_CHECK(fl_history_bucket("500ms", &ms) == FL_OK && ms == 500);
    FL_CHECK(fl_history_bucket("1ms", &ms) == FL_OK && ms == 1);
    FL_CHECK(fl_history_bucket("10", &ms) == FL_OK && ms == 10 * MS);
    FL_CHECK(fl_history_bucket("3650d", &ms) == FL_OK && ms == 3650 * D);
    FL_CHECK(fl_history_bucket("3651d", &ms) == FL_ERROR);
    FL_CHECK(fl_history_bucket("0", &ms) == FL_ERROR);
    FL_CHECK(fl_history_bucket("0.1ms", &ms) == FL_ERROR);
    FL_CHECK(fl_history_bucket("w", &ms) == FL_ERROR);
    FL_CHECK(fl_history_bucket("1y", &ms) == FL_ERROR);
    FL_CHECK(fl_history_bucket("-1m", &ms) == FL_ERROR);
    FL_CHECK(fl_history_bucket("", &ms) == FL_ERROR);

    fl_history_bucket_name(D, name, sizeof(name));
    FL_CHECK_STR(name, "1d");
    fl_history_bucket_name(14 * D, name, sizeof(name));
    FL_CHECK_STR(name, "14d");
    fl_history_bucket_name(6 * H, name, sizeof(name));
    FL_CHECK_STR(name, "6h");
    fl_history_bucket_name(90 * MIN, name, sizeof(name));
    FL_CHECK_STR(name, "90m");
    fl_history_bucket_name(90 * MS, name, sizeof(name));
    FL_CHECK_STR(name, "90s");
    fl_history_bucket_name(1500, name, sizeof(name));
    FL_CHECK_STR(name, "1500ms");
}

void test_history_nbuckets(void)
{
    int64_t day = 20000 * D * 1000; /* a UTC midnight, in us */

    FL_CHECK_EQ_INT(fl_history_nbuckets(day, day + D * 1000, H), 24);
    FL_CHECK_EQ_INT(fl_history_nbuckets(day, day + D * 1000 + 1, H), 25);
    FL_CHECK_EQ_INT(fl_history_nbuckets(day + 1, day + D * 1000, H), 24);
    FL_CHECK_EQ_INT(fl_history_nbuckets(day + 30 * MIN * 1000,
                                        day + (D + 30 * MIN) * 1000, H),
                    25);
    FL_CHECK_EQ_INT(fl_history_nbuckets(day, day, H), 0);
    FL_CHECK_EQ_INT(fl_history_nbuckets(day, day + 1, H), 1);
    FL_CHECK_EQ_INT(fl_history_nbuckets(day + 5, day + 1, H), 0);
}

void test_history_pick_bucket(void)
{
    int64_t day = 20000 * D * 1000, year = 365 * D * 1000;

    /* a year at 1000 points: 8.76 h a bucket, so 12 h (730) */
    FL_CHECK_EQ_INT(fl_history_pick_bucket(day, day + year, 1000, 0), 12 * H);
    /* 30 days: 1 h (720) */
    FL_CHECK_EQ_INT(fl_history_pick_bucket(day, day + 30 * D * 1000, 1000, 0),
                    H);
    /* a day: 2 m (720) */
    FL_CHECK_EQ_INT(fl_history_pick_bucket(day, day + D * 1000, 1000, 0),
                    2 * MIN);
    /* exactly fitting counts, unaligned ranges need one more */
    FL_CHECK_EQ_INT(fl_history_pick_bucket(day, day + D * 1000, 24, 0), H);
    FL_CHECK_EQ_INT(fl_history_pick_bucket(day + 1, day + D * 1000 + 1, 24, 0),
                    2 * H);
    /* the floor: not finer than min_ms */
    FL_CHECK_EQ_INT(fl_history_pick_bucket(day, day + 60 * MS * 1000, 1000, 0),
                    1000);
    FL_CHECK_EQ_INT(
        fl_history_pick_bucket(day, day + 60 * MS * 1000, 1000, MIN), MIN);
    FL_CHECK_EQ_INT(fl_history_pick_bucket(day, day + 60 * MS * 1000, 1000, H),
                    H);
    /* past the ladder: 365 d doubled */
    FL_CHECK_EQ_INT(fl_history_pick_bucket(0, 10 * year, 1, 0), 16 * 365 * D);
    FL_CHECK(fl_history_nbuckets(0, 10 * year,
                                 fl_history_pick_bucket(0, 10 * year, 3, 0)) <=
             3);
}

void test_history_ms(void)
{
    char b[32];

    fl_history_ms(1764370000000000LL, b, sizeof(b));
    FL_CHECK_STR(b, "1764370000000");
    fl_history_ms(1764370000000001LL, b, sizeof(b));
    FL_CHECK_STR(b, "1764370000000.001");
    fl_history_ms(1764370000000120LL, b, sizeof(b));
    FL_CHECK_STR(b, "1764370000000.12");
    fl_history_ms(1764370000000500LL, b, sizeof(b));
    FL_CHECK_STR(b, "1764370000000.5");
    fl_history_ms(0, b, sizeof(b));
    FL_CHECK_STR(b, "0");
    fl_history_ms(7, b, sizeof(b));
    FL_CHECK_STR(b, "0.007");
}
