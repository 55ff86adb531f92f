/*
 * main.c - fleetd's command line.
 *
 *   fleetd -c FILE            run master + workers in the foreground
 *   fleetd -c FILE -t         validate the configuration (binds included)
 *   fleetd -c FILE -d         daemonize, write pid_file
 *   fleetd -c FILE -s SIGNAL  reload | stop | quit | reopen the running master
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fl_log.h"
#include "fl_master.h"
#include "fl_shm.h"

#define DEFAULT_CONF "conf/fleetd.yaml"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: fleetd [-c FILE] [-t] [-d] [-s reload|stop|quit|reopen]\n"
            "  -c FILE   configuration file (default " DEFAULT_CONF ")\n"
            "  -t        validate the configuration and exit\n"
            "  -d        run as a daemon, writing pid_file\n"
            "  -s SIG    signal the running master found through pid_file\n"
            "  -v        print the version\n");
}

static int send_signal(const fl_config_t *cf, const char *name)
{
    static const struct {
        const char *name;
        int         signo;
    } sigs[] = {
        {"reload", SIGHUP},
        {"stop", SIGTERM},
        {"quit", SIGQUIT},
        {"reopen", SIGUSR1},
    };
    pid_t pid;

    for (size_t i = 0; i < fl_nelem(sigs); i++) {
        if (strcmp(sigs[i].name, name) != 0)
            continue;
        pid = fl_pidfile_read(cf->pid_file);
        if (pid <= 0) {
            fprintf(stderr, "fleetd: no running master: pid file \"%s\" %s\n",
                    cf->pid_file, pid == 0 ? "does not exist" : "is invalid");
            return 1;
        }
        if (kill(pid, sigs[i].signo) == -1) {
            fprintf(stderr, "fleetd: kill(%d, %s) failed: %s\n", (int)pid, name,
                    strerror(errno));
            return 1;
        }
        return 0;
    }
    fprintf(stderr,
            "fleetd: unknown signal \"%s\" (reload, stop, quit, "
            "reopen)\n",
            name);
    return 1;
}

/*
 * Detach from the terminal. The parent waits on a pipe until the daemon
 * reports that it started (or why it did not), so `fleetd -d` exits 0
 * only when a master is really running.
 */
static int daemonize(int *ready_fd)
{
    int   pfd[2], fd;
    pid_t pid;
    char  c;

    if (pipe(pfd) == -1) {
        perror("fleetd: pipe()");
        return FL_ERROR;
    }
    pid = fork();
    if (pid == -1) {
        perror("fleetd: fork()");
        return FL_ERROR;
    }
    if (pid > 0) {
        close(pfd[1]);
        if (read(pfd[0], &c, 1) == 1 && c == 'k')
            _exit(0);
        fprintf(stderr, "fleetd: the daemon failed to start, see the log\n");
        _exit(1);
    }
    close(pfd[0]);
    if (setsid() == -1)
        return FL_ERROR;
    umask(022);
    fd = open("/dev/null", O_RDWR);
    if (fd != -1) {
        dup2(fd, STDIN_FILENO);
        dup2(fd, STDOUT_FILENO);
        /* with log.file empty the log stays on the inherited stderr */
        if (fl_log_fd() != STDERR_FILENO)
            dup2(fd, STDERR_FILENO);
        if (fd > STDERR_FILENO)
            close(fd);
    }
    *ready_fd = pfd[1];
    return FL_OK;
}

int main(int argc, char **argv)
{
    const char    *conf = DEFAULT_CONF, *sig = NULL;
    int            test = 0, daemon_mode = 0, opt, ready_fd = -1;
    char           err[FL_CONF_ERRLEN];
    fl_config_t   *cf;
    fl_listeners_t ls;
    pid_t          other;

    while ((opt = getopt(argc, argv, "c:tds:hv")) != -1) {
        switch (opt) {
        case 'c': conf = optarg; break;
        case 't': test = 1; break;
        case 'd': daemon_mode = 1; break;
        case 's': sig = optarg; break;
        case 'v': printf("fleetd %s\n", FL_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 1;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 1;
    }

    cf = fl_config_load(conf, err, sizeof(err));
    if (cf == NULL) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (sig) {
        int rc = send_signal(cf, sig);
        fl_config_free(cf);
        return rc;
    }
    if (test) {
        int rc = fl_listeners_test(cf, err, sizeof(err));
        if (rc == FL_OK)
            printf("ok\n");
        else
            fprintf(stderr, "%s\n", err);
        fl_config_free(cf);
        return rc == FL_OK ? 0 : 1;
    }

    other = fl_pidfile_read(cf->pid_file);
    if (other > 0 && other != getpid() && kill(other, 0) == 0) {
        fprintf(stderr,
                "fleetd: already running as pid %d (pid file \"%s\")"
                "\n",
                (int)other, cf->pid_file);
        fl_config_free(cf);
        return 1;
    }

    if (fl_log_open(cf->log.file, cf->log.level) != FL_OK) {
        fprintf(stderr, "fleetd: open() of log file \"%s\" failed: %s\n",
                cf->log.file, strerror(errno));
        fl_config_free(cf);
        return 1;
    }
    if (daemon_mode && cf->log.file[0] == '\0')
        fprintf(stderr, "fleetd: warning: log.file is empty, the daemon "
                        "keeps logging to this stderr\n");

    /* bind before daemonizing so that a busy port fails the command */
    if (fl_listeners_open(&ls, cf, cf->workers, NULL, err, sizeof(err)) !=
        FL_OK) {
        fprintf(stderr, "%s\n", err);
        fl_log(FL_LOG_CRIT, "%s", err);
        fl_config_free(cf);
        return 1;
    }
    if (daemon_mode && daemonize(&ready_fd) != FL_OK)
        return 1;

    if (fl_shm_create() != FL_OK || fl_pidfile_write(cf->pid_file) != FL_OK) {
        fl_listeners_close(&ls, NULL);
        fl_config_free(cf);
        return 1;
    }
    if (ready_fd != -1) {
        if (write(ready_fd, "k", 1) != 1)
            fl_warn("write() to the starting parent failed");
        close(ready_fd);
    }
    return fl_master_cycle(cf, &ls);
}
