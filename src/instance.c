/* instance.c — takeover of a running instance, detaching, and signal handling. */
#include "instance.h"
#include "core_client.h"
#include "log.h"
#include "loop.h"
#include "net.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TAKEOVER_WAIT_MS 15000   /* the old instance frees its port before draining */
#define TAKEOVER_POLL_MS 20

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

int instance_claim_command_port(int port, char *err, size_t errlen)
{
    char reply[256];
    int fd = net_bind_udp(port, err, errlen);

    if (fd != -2)
        return fd;
    /* Someone holds it: if it is a core_server, it answers "shutdown". */
    enum core_client_result r = core_client_command("shutdown", port, 2000, reply, sizeof reply);
    if (r != CORE_CLIENT_OK) {
        snprintf(err, errlen,
                 "UDP port %d is in use by a program that did not answer \"shutdown\" as a "
                 "core_server would (stop it, or use --udp-port)", port);
        return -1;
    }
    log_info("asked the running core_server on UDP port %d to shut down; waiting for its port", port);
    for (int waited = 0; waited < TAKEOVER_WAIT_MS; waited += TAKEOVER_POLL_MS) {
        fd = net_bind_udp(port, err, errlen);
        if (fd != -2)
            return fd;
        sleep_ms(TAKEOVER_POLL_MS);
    }
    snprintf(err, errlen,
             "the running core_server acknowledged shutdown but UDP port %d is still in use after "
             "%d s (is it stuck? find it with: ss -lunp | grep %d)", port, TAKEOVER_WAIT_MS / 1000, port);
    return -1;
}

void instance_block_signals(void)
{
    sigset_t set;

    signal(SIGPIPE, SIG_IGN);   /* a closed peer is an EPIPE, not a crash */
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
}

struct sigwatch {
    struct loop_fd lfd;
    void (*on_stop)(void *);
    void *arg;
};

static struct sigwatch sigwatch;   /* main thread only */

static void on_signal(struct loop *l, struct loop_fd *h, uint32_t ev)
{
    struct signalfd_siginfo si;

    while (read(h->fd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (si.ssi_signo == SIGHUP) {
            if (log_to_file()) {
                log_info("SIGHUP: reopening the log file (routes change over UDP)");
                log_reopen();
            } else {
                log_info("SIGHUP: logging to stderr, nothing to reopen (routes change over UDP)");
            }
            continue;
        }
        log_info("received %s: shutting down gracefully", strsignal((int)si.ssi_signo));
        sigwatch.on_stop(sigwatch.arg);
    }
}

int instance_watch_signals(struct loop *l, void (*on_stop)(void *), void *arg)
{
    sigset_t set;

    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigwatch.lfd.fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sigwatch.lfd.fd < 0)
        return -1;
    sigwatch.lfd.cb = on_signal;
    sigwatch.on_stop = on_stop;
    sigwatch.arg = arg;
    return loop_add_fd_level(l, &sigwatch.lfd, false);
}

/* ---- detaching ---- */

static int ready_fd = -1;   /* child: write end of the parent's pipe, until ready */

/* The parent, after a failure: waits (bounded) for the child to exit, so that
 * its ports are free when we return. *status is -1 if it has not exited. */
static void reap_failed(pid_t child, int *status)
{
    for (int waited = 0; waited < TAKEOVER_WAIT_MS; waited += TAKEOVER_POLL_MS) {
        if (waitpid(child, status, WNOHANG) == child)
            return;
        sleep_ms(TAKEOVER_POLL_MS);
    }
    *status = -1;
}

/* The parent: waits for "ok\n" or an error line, then exits. */
static void __attribute__((noreturn)) wait_for_daemon(int rfd, pid_t child)
{
    char msg[1024];
    size_t n = 0;
    ssize_t r;
    int status;

    while (n < sizeof msg - 1 && (r = read(rfd, msg + n, sizeof msg - 1 - n)) != 0) {
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            break;
        n += (size_t)r;
        if (msg[n - 1] == '\n')
            break;   /* one line per report */
    }
    msg[n] = '\0';
    if (strcmp(msg, "ok\n") != 0)
        reap_failed(child, &status);
    if (!strcmp(msg, "ok\n")) {
        printf("core_server: running in the background as pid %ld\n", (long)child);
        fflush(stdout);
        _exit(0);
    }
    if (n > 0) {
        fprintf(stderr, "core_server: %s%s", msg, msg[n - 1] == '\n' ? "" : "\n");
    } else if (status != -1 && WIFSIGNALED(status)) {
        fprintf(stderr, "core_server: the server died during startup (%s)\n",
                strsignal(WTERMSIG(status)));
    } else {
        fprintf(stderr, "core_server: the server exited during startup without a reason "
                "(see its log file)\n");
    }
    _exit(1);
}

int instance_daemonize_begin(char *err, size_t errlen)
{
    int fds[2];
    pid_t pid;

    /* Cloexec: the mkcert children must not hold the parent's pipe open. */
    if (pipe2(fds, O_CLOEXEC) < 0) {
        snprintf(err, errlen, "detach: pipe: %s", strerror(errno));
        return -1;
    }
    fflush(NULL);   /* nothing buffered may be written twice */
    pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "detach: fork: %s (or run with --foreground)", strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid > 0) {
        close(fds[1]);
        wait_for_daemon(fds[0], pid);
    }
    close(fds[0]);
    ready_fd = fds[1];
    /* A new session: no controlling terminal, so the shell's hangup and
     * Ctrl-C never reach the daemon. One fork is enough: we never open a
     * terminal, so we cannot acquire one as session leader. */
    if (setsid() < 0) {
        snprintf(err, errlen, "detach: setsid: %s", strerror(errno));
        return -1;
    }
    return 0;
}

int instance_daemonize_stdio(char *err, size_t errlen)
{
    int fd;

    if (ready_fd < 0)
        return 0;
    fd = open("/dev/null", O_RDWR);
    if (fd < 0) {
        snprintf(err, errlen, "detach: open /dev/null: %s", strerror(errno));
        return -1;
    }
    for (int i = 0; i < 3; i++)
        if (fd != i)
            dup2(fd, i);
    if (fd > 2)
        close(fd);
    return 0;
}

static void report_to_parent(const char *line)
{
    size_t n = strlen(line);

    if (ready_fd < 0)
        return;
    while (write(ready_fd, line, n) < 0 && errno == EINTR)
        ;
    close(ready_fd);
    ready_fd = -1;
}

void instance_daemonize_ready(void)
{
    report_to_parent("ok\n");
}

bool instance_daemonize_fail(const char *msg)
{
    char line[1024];

    if (ready_fd < 0)
        return false;
    snprintf(line, sizeof line, "%s\n", msg);
    report_to_parent(line);
    return true;
}
