/*
 * fl_log.h - the one logging function.
 *
 * Lines look like nginx's: "2026/11/29 01:30:00 [info] 1234#w0: message".
 * The destination is stderr or log.file (opened O_APPEND, shared by master
 * and workers); fl_log_reopen() re-opens it after rotation (SIGUSR1).
 */
#ifndef FL_LOG_H
#define FL_LOG_H

#include "fl_core.h"

typedef enum {
    FL_LOG_DEBUG = 0,
    FL_LOG_INFO,
    FL_LOG_WARN,
    FL_LOG_ERROR,
    FL_LOG_CRIT,
} fl_log_level_t;

/* path NULL or "" = stderr. Returns FL_OK or FL_ERROR (errno set). */
int  fl_log_open(const char *path, fl_log_level_t level);
int  fl_log_reopen(void);
void fl_log_set_level(fl_log_level_t level);
/* Names the process in every line: "master", "w0", "w1"... */
void        fl_log_set_role(const char *role);
int         fl_log_fd(void);
int         fl_log_level_parse(const char *s, fl_log_level_t *out);
const char *fl_log_level_name(fl_log_level_t level);

void fl_log(fl_log_level_t level, const char *fmt, ...) fl_printf(2, 3);
/* Same, with ": strerror(err)" appended. */
void fl_log_errno(fl_log_level_t level, int err, const char *fmt, ...)
    fl_printf(3, 4);

#define fl_debug(...) fl_log(FL_LOG_DEBUG, __VA_ARGS__)
#define fl_info(...)  fl_log(FL_LOG_INFO, __VA_ARGS__)
#define fl_warn(...)  fl_log(FL_LOG_WARN, __VA_ARGS__)
#define fl_error(...) fl_log(FL_LOG_ERROR, __VA_ARGS__)

#endif
