/*
 * fl_master.h - what the master's files share: listening sockets, the pid
 * file and the process cycle. Runs only in the master process.
 */
#ifndef FL_MASTER_H
#define FL_MASTER_H

#include "fl_config.h"
#include <sys/types.h>

/* One SO_REUSEPORT listening socket per worker slot, all on one address. */
typedef struct {
    char *listen; /* the address as configured */
    int   n;
    int   fd[FL_MAX_WORKERS];
} fl_listeners_t;

/*
 * Open n sockets on cf->listen. Sockets of `reuse` (when it listens on the
 * same address) are taken over instead of opened again, so connections
 * queued on them survive a reload. On failure writes "FILE:LINE: ..." into
 * err, closes what it opened and returns FL_ERROR.
 */
int fl_listeners_open(fl_listeners_t *ls, const fl_config_t *cf, int n,
                      fl_listeners_t *reuse, char *err, size_t errlen);
/* Close every fd of ls that is not also in keep (keep may be NULL). */
void fl_listeners_close(fl_listeners_t *ls, const fl_listeners_t *keep);
/* Try to bind the configured address, as -t does. */
int fl_listeners_test(const fl_config_t *cf, char *err, size_t errlen);

/* Pid file: returns the pid written in path, 0 if none, -1 on error. */
pid_t fl_pidfile_read(const char *path);
int   fl_pidfile_write(const char *path);
void  fl_pidfile_remove(const char *path);

/* Run the master until it stops; returns the process exit code.
 * Takes ownership of cf and ls. */
int fl_master_cycle(fl_config_t *cf, fl_listeners_t *ls);

#endif
