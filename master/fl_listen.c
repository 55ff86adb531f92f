/*
 * fl_listen.c - the listening sockets, one per worker slot.
 *
 * Each slot has its own SO_REUSEPORT socket, created by the master before
 * any fork and kept open by it. A respawned worker inherits its slot's
 * socket, so the connections the kernel queued on it while the worker was
 * dead are accepted, not reset (nginx ngx_clone_listening). A reload on an
 * unchanged address keeps the same sockets for the same slots.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fl_log.h"
#include "fl_master.h"

static int listen_one(const fl_config_t *cf, int do_listen, char *err,
                      size_t errlen)
{
    struct addrinfo hints, *res = NULL;
    char            port[16];
    int             fd, one = 1, rc;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(port, sizeof(port), "%d", cf->listen_port);

    rc = getaddrinfo(cf->listen_host, port, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "%s:%d: listen %s: cannot resolve \"%s\": %s",
                 cf->file, cf->listen_line, cf->listen, cf->listen_host,
                 gai_strerror(rc));
        return -1;
    }

    fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        snprintf(err, errlen, "%s:%d: listen %s: socket() failed: %s", cf->file,
                 cf->listen_line, cf->listen, strerror(errno));
        freeaddrinfo(res);
        return -1;
    }
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) == -1) {
        snprintf(err, errlen, "%s:%d: listen %s: setsockopt() failed: %s",
                 cf->file, cf->listen_line, cf->listen, strerror(errno));
        goto fail;
    }
    if (res->ai_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));

    if (bind(fd, res->ai_addr, res->ai_addrlen) == -1) {
        snprintf(err, errlen, "%s:%d: listen %s: bind() failed: %s", cf->file,
                 cf->listen_line, cf->listen, strerror(errno));
        goto fail;
    }
    if (do_listen && listen(fd, cf->backlog) == -1) {
        snprintf(err, errlen, "%s:%d: listen %s: listen() failed: %s", cf->file,
                 cf->listen_line, cf->listen, strerror(errno));
        goto fail;
    }
    freeaddrinfo(res);
    return fd;

fail:
    close(fd);
    freeaddrinfo(res);
    return -1;
}

int fl_listeners_open(fl_listeners_t *ls, const fl_config_t *cf, int n,
                      fl_listeners_t *reuse, char *err, size_t errlen)
{
    int same = reuse && reuse->listen && strcmp(reuse->listen, cf->listen) == 0;

    memset(ls, 0, sizeof(*ls));
    ls->listen = fl_strdup(cf->listen);
    for (int i = 0; i < n; i++) {
        if (same && i < reuse->n) {
            ls->fd[i] = reuse->fd[i];
            /* backlog may have changed: listen() again updates it */
            listen(ls->fd[i], cf->backlog);
        } else {
            ls->fd[i] = listen_one(cf, 1, err, errlen);
            if (ls->fd[i] == -1) {
                ls->n = i;
                fl_listeners_close(ls, reuse);
                return FL_ERROR;
            }
        }
        ls->n = i + 1;
    }
    return FL_OK;
}

void fl_listeners_close(fl_listeners_t *ls, const fl_listeners_t *keep)
{
    for (int i = 0; i < ls->n; i++) {
        int kept = 0;

        for (int j = 0; keep && j < keep->n; j++)
            kept |= (keep->fd[j] == ls->fd[i]);
        if (!kept && ls->fd[i] != -1)
            close(ls->fd[i]);
        ls->fd[i] = -1;
    }
    ls->n = 0;
    free(ls->listen);
    ls->listen = NULL;
}

int fl_listeners_test(const fl_config_t *cf, char *err, size_t errlen)
{
    int fd = listen_one(cf, 0, err, errlen);

    if (fd == -1)
        return FL_ERROR;
    close(fd);
    return FL_OK;
}
