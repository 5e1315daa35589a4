/* instance.c — takeover of a running instance, and signal handling. */
#include "instance.h"
#include "core_client.h"
#include "log.h"
#include "loop.h"
#include "net.h"
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>
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
            log_info("SIGHUP: nothing to reload (routes change over UDP)");
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
