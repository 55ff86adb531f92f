/*
 * fl_pgutil.h - small helpers shared by the worker's libpq users (fl_pg.c,
 * the ingest writer; fl_db.c, the API pool).
 */
#ifndef FL_PGUTIL_H
#define FL_PGUTIL_H

#include <stddef.h>

#include <libpq-fe.h>

/* Copy msg into buf on one line: newlines become "; ", tabs a space,
 * trailing whitespace goes (libpq messages end with "\n"). NULL or ""
 * gives "unknown error". */
void fl_pg_one_line(char *buf, size_t len, const char *msg);

/* "primary message (DETAIL) [SQLSTATE]" of an error result, one line. */
void fl_pg_result_error(char *buf, size_t len, const PGresult *res);

/* 1 when res's SQLSTATE starts with prefix ("23505", "08", ...). */
int fl_pg_sqlstate_is(const PGresult *res, const char *prefix);

#endif
