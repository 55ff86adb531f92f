/*
 * fl_pidfile.c - the pid file that -s and init scripts find the master by.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fl_log.h"
#include "fl_master.h"

pid_t fl_pidfile_read(const char *path)
{
    char    buf[32];
    ssize_t n;
    long    v;
    char   *end;
    int     fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd == -1)
        return errno == ENOENT ? 0 : -1;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    v = strtol(buf, &end, 10);
    if (v <= 0 || (*end != '\n' && *end != '\0'))
        return -1;
    return (pid_t)v;
}

/* Written through a temporary file and rename(), so a reader never sees
 * a half-written pid. */
int fl_pidfile_write(const char *path)
{
    char tmp[4200], buf[32];
    int  fd, n;

    if (path[0] == '\0')
        return FL_OK;
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd == -1) {
        fl_log_errno(FL_LOG_CRIT, errno, "open() of pid file \"%s\" failed",
                     tmp);
        return FL_ERROR;
    }
    n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
    if (write(fd, buf, n) != n || close(fd) == -1) {
        fl_log_errno(FL_LOG_CRIT, errno, "write() of pid file \"%s\" failed",
                     tmp);
        unlink(tmp);
        return FL_ERROR;
    }
    if (rename(tmp, path) == -1) {
        fl_log_errno(FL_LOG_CRIT, errno,
                     "rename() of pid file to \"%s\" "
                     "failed",
                     path);
        unlink(tmp);
        return FL_ERROR;
    }
    return FL_OK;
}

/* Remove the pid file only if it still names this process: a newer master
 * may have taken it over. */
void fl_pidfile_remove(const char *path)
{
    if (path[0] == '\0')
        return;
    if (fl_pidfile_read(path) == getpid() && unlink(path) == -1)
        fl_log_errno(FL_LOG_WARN, errno, "unlink() of pid file \"%s\" failed",
                     path);
}
