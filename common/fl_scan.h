/*
 * fl_scan.h - strict UTF-8 and the JSON pre-scan of telemetry payloads.
 *
 * fl_scan() is the first step of fl_payload_parse(): one pass over the
 * JSON text that refuses what cJSON would accept too leniently, before
 * cJSON sees it. It knows nothing of payload forms or limits other than
 * the nesting depth; it says why it failed with an fl_scan_err_t, which
 * fl_payload.c turns into the fl_reject_reason_t of the same name, and a
 * message written into a buffer of the caller's.
 */
#ifndef FL_SCAN_H
#define FL_SCAN_H

#include <stddef.h>

#include "fl_core.h"

/* Why fl_scan() refused a text. */
typedef enum {
    FL_SCAN_OK = 0,
    FL_SCAN_NOT_UTF8,     /* malformed UTF-8, unpaired surrogate escape */
    FL_SCAN_INVALID_JSON, /* RFC 8259 syntax */
    FL_SCAN_TOO_DEEP,     /* nesting above max_depth */
    FL_SCAN_BAD_NUMBER,   /* NaN, Infinity, literal above 63 characters */
    FL_SCAN_BAD_STRING,   /* \u0000 in a string */
} fl_scan_err_t;

/* Zero it, then set p, len, msg, msg_size (and i to skip a prefix). msg
 * may be NULL with msg_size 0: the reason without a message. */
typedef struct {
    const unsigned char *p;
    size_t               len;
    size_t               i;        /* next byte to look at */
    size_t               nvalues;  /* scalars that are not object keys */
    fl_scan_err_t        err;      /* set when fl_scan() fails */
    char                *msg;      /* caller's buffer for the message */
    size_t               msg_size; /* its size: the message is cut to fit */
} fl_scan_t;

/*
 * Length (1-4) of the well-formed UTF-8 sequence at p (n >= 1 bytes
 * available), or 0 when it is malformed.
 */
size_t fl_utf8_seq(const unsigned char *p, size_t n);

/* 1 when buf[0..len) is well-formed UTF-8 (Unicode 15 table 3-7: no
 * overlong forms, no surrogates, nothing above U+10FFFF), else 0. */
int fl_utf8_valid(const void *buf, size_t len);

/* Advance s->i over JSON whitespace (space, \n, \r, \t). */
void fl_scan_ws(fl_scan_t *s);

/*
 * Validate the JSON text s->p[s->i..len): one value with optional
 * whitespace around it, strict UTF-8, nesting at most max_depth (1..64)
 * brackets deep. FL_OK: s->nvalues counts the scalar values. FL_ERROR:
 * s->err says why and s->msg (prefixed "byte N: ") where.
 */
int fl_scan(fl_scan_t *s, int max_depth);

#endif
