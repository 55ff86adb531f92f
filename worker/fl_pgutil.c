/*
 * fl_pgutil.c - helpers shared by the worker's libpq users (fl_pgutil.h).
 */
#include <stdio.h>
#include <string.h>

#include "fl_pgutil.h"

/* Copy msg into buf on one line: newlines become "; ", trailing
 * whitespace goes. libpq messages end with "\n". */
void fl_pg_one_line(char *buf, size_t len, const char *msg)
{
    size_t i = 0;

    if (msg == NULL || *msg == '\0')
        msg = "unknown error";
    for (; *msg && i + 3 < len; msg++) {
        if (*msg == '\n') {
            if (msg[1] == '\0')
                break;
            buf[i++] = ';';
            buf[i++] = ' ';
        } else if (*msg == '\t') {
            if (i > 0 && buf[i - 1] != ' ')
                buf[i++] = ' ';
        } else if (*msg != '\r') {
            buf[i++] = *msg;
        }
    }
    while (i > 0 && (buf[i - 1] == ' ' || buf[i - 1] == ';'))
        i--;
    buf[i] = '\0';
}

/* "primary message (DETAIL) [SQLSTATE]" of an error result. */
void fl_pg_result_error(char *buf, size_t len, const PGresult *res)
{
    const char *prim = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    const char *det = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
    const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    char        tmp[1024];

    if (prim == NULL) {
        fl_pg_one_line(buf, len, PQresultErrorMessage(res));
        return;
    }
    snprintf(tmp, sizeof(tmp), "%s%s%s%s [%s]", prim, det ? " (" : "",
             det ? det : "", det ? ")" : "", st ? st : "?");
    fl_pg_one_line(buf, len, tmp);
}

int fl_pg_sqlstate_is(const PGresult *res, const char *prefix)
{
    const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);

    return st != NULL && strncmp(st, prefix, strlen(prefix)) == 0;
}
