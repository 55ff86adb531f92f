/*
 * fl_log.c - the one logging function.
 *
 * Each line is formatted into a stack buffer and written with a single
 * write(2) on an O_APPEND descriptor, so lines from the master and the
 * workers never interleave mid-line.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "fl_log.h"

static int            log_fd = STDERR_FILENO;
static fl_log_level_t log_level = FL_LOG_INFO;
static char           log_path[4096];
static char           log_role[16] = "master";

static const char *level_names[] = {"debug", "info", "warn", "error", "crit"};

int fl_log_open(const char *path, fl_log_level_t level)
{
    int fd;

    log_level = level;
    if (path == NULL || path[0] == '\0') {
        log_path[0] = '\0';
        if (log_fd != STDERR_FILENO && log_fd != -1)
            close(log_fd);
        log_fd = STDERR_FILENO;
        return FL_OK;
    }

    fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd == -1)
        return FL_ERROR;

    if (log_fd != STDERR_FILENO && log_fd != -1)
        close(log_fd);
    log_fd = fd;
    snprintf(log_path, sizeof(log_path), "%s", path);
    return FL_OK;
}

/* Reopen the current file after logrotate moved it; keeps the old
 * descriptor when the new open fails, so no line is lost to nowhere. */
int fl_log_reopen(void)
{
    int fd;

    if (log_path[0] == '\0')
        return FL_OK;
    fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd == -1) {
        fl_log_errno(FL_LOG_ERROR, errno, "open() of log file \"%s\" failed",
                     log_path);
        return FL_ERROR;
    }
    if (log_fd != STDERR_FILENO)
        close(log_fd);
    log_fd = fd;
    return FL_OK;
}

void fl_log_set_level(fl_log_level_t level)
{
    log_level = level;
}

void fl_log_set_role(const char *role)
{
    snprintf(log_role, sizeof(log_role), "%s", role);
}

int fl_log_fd(void)
{
    return log_fd;
}

int fl_log_level_parse(const char *s, fl_log_level_t *out)
{
    for (size_t i = 0; i < fl_nelem(level_names); i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (fl_log_level_t)i;
            return FL_OK;
        }
    }
    if (strcasecmp(s, "warning") == 0) {
        *out = FL_LOG_WARN;
        return FL_OK;
    }
    return FL_ERROR;
}

const char *fl_log_level_name(fl_log_level_t level)
{
    if ((unsigned)level >= fl_nelem(level_names))
        return "?";
    return level_names[level];
}

static void log_write(fl_log_level_t level, int err, const char *fmt,
                      va_list ap)
{
    char           buf[2048];
    struct timeval tv;
    struct tm      tm;
    size_t         n;
    int            r;

    gettimeofday(&tv, NULL);
    localtime_r(&tv.tv_sec, &tm);
    n = strftime(buf, sizeof(buf), "%Y/%m/%d %H:%M:%S", &tm);
    r = snprintf(buf + n, sizeof(buf) - n,
                 ".%03d [%s] %d#%s: ", (int)(tv.tv_usec / 1000),
                 fl_log_level_name(level), (int)getpid(), log_role);
    n += (r > 0) ? (size_t)r : 0;

    r = vsnprintf(buf + n, sizeof(buf) - n, fmt, ap);
    if (r > 0)
        n = fl_min(n + (size_t)r, sizeof(buf) - 2);
    if (err && n < sizeof(buf) - 2) {
        r = snprintf(buf + n, sizeof(buf) - n, ": %s", strerror(err));
        if (r > 0)
            n = fl_min(n + (size_t)r, sizeof(buf) - 2);
    }
    buf[n++] = '\n';

    /* A failed log write has nowhere to be reported. */
    while (write(log_fd, buf, n) == -1 && errno == EINTR) {
    }
}

void fl_log(fl_log_level_t level, const char *fmt, ...)
{
    va_list ap;

    if (level < log_level)
        return;
    va_start(ap, fmt);
    log_write(level, 0, fmt, ap);
    va_end(ap);
}

void fl_log_errno(fl_log_level_t level, int err, const char *fmt, ...)
{
    va_list ap;

    if (level < log_level)
        return;
    va_start(ap, fmt);
    log_write(level, err, fmt, ap);
    va_end(ap);
}
