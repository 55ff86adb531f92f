/*
 * fl_time.h - calendar arithmetic and RFC 3339 date-times, for the
 * payload parser (device timestamps) and the history API (query times).
 */
#ifndef FL_TIME_H
#define FL_TIME_H

#include <stddef.h>
#include <stdint.h>

/* Days from 1970-01-01 to y-m-d, proleptic Gregorian (H. Hinnant). */
int64_t fl_days_from_civil(int64_t y, int m, int d);
/* Days in month m (1-12) of year y. */
int fl_days_in_month(int y, int m);

/* fl_rfc3339_us() flags */
#define FL_RFC3339_NO_ZONE_UTC 1 /* a time without an offset is UTC */
#define FL_RFC3339_SPACE_PLUS                  \
    2 /* ' ' before an offset means '+' (a URL \
         query decodes an unescaped '+' so) */

/*
 * An RFC 3339 date-time (section 5.6) of len bytes into epoch
 * microseconds. Accepts 'T', 't' or ' ' between date and time, 'Z', 'z'
 * or +hh:mm / -hh:mm, a second of 60 (it becomes the next second), any
 * number of fraction digits (truncated to the microsecond), and what the
 * flags allow. FL_OK, or FL_ERROR on anything else (no allocation).
 */
int fl_rfc3339_us(const char *s, size_t len, int flags, int64_t *out);

#endif
