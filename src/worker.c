/* worker.c — worker threads: one event loop each, accepting from the shared
 * listening sockets, connection cap, drain at shutdown.
 *
 * Threads share: the listening fds (each loop watches them with
 * EPOLLEXCLUSIVE), the connection counter (atomic), and the drain state
 * below (mutex + condition variable, used only at shutdown). */
#include "worker.h"
#include "certs.h"
#include "cli.h"
#include "log.h"
#include "mem.h"
#include "proxy.h"
#include "qsbr.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define ACCEPT_BATCH 64

static struct worker *workers;
static int nworkers;
static int listen_fds[2] = { -1, -1 };
static atomic_int total_conns;       /* open client connections, all workers */

static pthread_mutex_t drain_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t drain_cv = PTHREAD_COND_INITIALIZER;
static int drained_count;            /* guarded by drain_mu */
static int stopped_accepting;        /* guarded by drain_mu */

bool worker_may_accept(struct worker *w)
{
    return atomic_load_explicit(&total_conns, memory_order_relaxed) < w->cfg->max_conns;
}

static void on_listener(struct loop *l, struct loop_fd *h, uint32_t ev)
{
    struct listener *ls = (struct listener *)h;
    struct worker *w = ls->w;

    for (int i = 0; i < ACCEPT_BATCH && !w->draining; i++) {
        struct sockaddr_storage peer;
        socklen_t len = sizeof peer;
        int fd = accept4(h->fd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE)
                log_error("accept: %s (raise the open-files limit: ulimit -n)", strerror(errno));
            return;   /* EAGAIN: another worker took it, or none left */
        }
        if (!worker_may_accept(w)) {
            /* Over the cap: refuse this one rather than let it wait unseen. */
            static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                       "Connection: close\r\n\r\n";
            if (!ls->tls && write(fd, busy, sizeof busy - 1) < 0) {
                /* nothing to do: the connection is closed next */
            }
            close(fd);
            log_warn("connection cap (%d) reached: refused a connection", w->cfg->max_conns);
            continue;
        }
        proxy_accept(w, fd, (struct sockaddr *)&peer, ls->tls);
    }
}

void worker_conn_opened(struct worker *w)
{
    w->nconns++;
    atomic_fetch_add_explicit(&total_conns, 1, memory_order_relaxed);
}

void worker_conn_closed(struct worker *w)
{
    w->nconns--;
    atomic_fetch_sub_explicit(&total_conns, 1, memory_order_relaxed);
    if (w->draining && w->nconns == 0)
        worker_report_drained(w);
}

static bool before_sleep(void *arg)
{
    struct worker *w = arg;
    bool busy = proxy_run_deferred(w);

    proxy_reap(w);
    /* This thread holds no route or certificate snapshot while it sleeps. */
    qsbr_offline(w->qsbr_reader);
    return busy;
}

static void after_wake(void *arg)
{
    struct worker *w = arg;
    qsbr_online(w->qsbr_reader);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;

    w->qsbr_reader = qsbr_register();
    qsbr_online(w->qsbr_reader);
    loop_run(w->loop);
    qsbr_offline(w->qsbr_reader);
    return NULL;
}

static int worker_setup(struct worker *w, int id, const struct config *cfg, int http_fd,
                        int https_fd, bool https_enabled, char *err, size_t errlen)
{
    w->id = id;
    w->cfg = cfg;
    w->https_enabled = https_enabled;
    w->bufs.max_free = 1024;
    w->loop = loop_new();
    if (!w->loop) {
        snprintf(err, errlen, "worker %d: cannot create an event loop", id);
        return -1;
    }
    proxy_init(w);
    int fds[2] = { http_fd, https_fd };
    for (int i = 0; i < 2; i++) {
        if (fds[i] < 0)
            continue;
        struct listener *ls = &w->listeners[w->nlisteners++];
        ls->lfd.fd = fds[i];
        ls->lfd.cb = on_listener;
        ls->w = w;
        ls->tls = i == 1;
        if (loop_add_fd_level(w->loop, &ls->lfd, true) < 0) {
            snprintf(err, errlen, "worker %d: epoll: %s", id, strerror(errno));
            return -1;
        }
    }
    loop_set_sleep_hooks(w->loop, before_sleep, after_wake, w);
    if (https_enabled)
        certs_subscribe(w->loop, proxy_resume_parked, w);
    return 0;
}

int workers_start(const struct config *cfg, int http_fd, int https_fd, bool https_enabled,
                  char *err, size_t errlen)
{
    nworkers = cfg->workers;
    workers = xcalloc((size_t)nworkers, sizeof *workers);
    listen_fds[0] = http_fd;
    listen_fds[1] = https_fd;
    for (int i = 0; i < nworkers; i++)
        if (worker_setup(&workers[i], i, cfg, http_fd, https_fd, https_enabled, err, errlen) < 0)
            return -1;
    for (int i = 0; i < nworkers; i++) {
        int e = pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]);
        if (e) {
            snprintf(err, errlen, "worker %d: pthread_create: %s", i, strerror(e));
            return -1;
        }
    }
    return 0;
}

void worker_report_drained(struct worker *w)
{
    if (w->drained_reported)
        return;
    w->drained_reported = true;
    pthread_mutex_lock(&drain_mu);
    drained_count++;
    pthread_cond_broadcast(&drain_cv);
    pthread_mutex_unlock(&drain_mu);
}

/* Runs on each worker's thread: stop accepting, close idle connections. */
static void do_drain(void *arg)
{
    struct worker *w = arg;

    /* Take what is already queued on the listening sockets first: those
     * clients connected to us and should be served, not reset. */
    for (int i = 0; i < w->nlisteners; i++) {
        on_listener(w->loop, &w->listeners[i].lfd, LOOP_READ);
        loop_del_fd(w->loop, &w->listeners[i].lfd);
    }
    w->draining = true;
    pthread_mutex_lock(&drain_mu);
    stopped_accepting++;
    pthread_cond_broadcast(&drain_cv);
    pthread_mutex_unlock(&drain_mu);
    proxy_drain(w);
    if (w->nconns == 0)
        worker_report_drained(w);
}

static void deadline_in(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

void workers_drain(int drain_ms)
{
    struct timespec until;

    for (int i = 0; i < nworkers; i++)
        loop_post(workers[i].loop, do_drain, &workers[i]);
    /* Close the listening sockets only once no worker can be in accept(). */
    pthread_mutex_lock(&drain_mu);
    while (stopped_accepting < nworkers)
        pthread_cond_wait(&drain_cv, &drain_mu);
    pthread_mutex_unlock(&drain_mu);
    for (int i = 0; i < 2; i++)
        if (listen_fds[i] >= 0) {
            close(listen_fds[i]);
            listen_fds[i] = -1;
        }
    deadline_in(&until, drain_ms);
    pthread_mutex_lock(&drain_mu);
    while (drained_count < nworkers)
        if (pthread_cond_timedwait(&drain_cv, &drain_mu, &until) == ETIMEDOUT)
            break;
    int left = nworkers - drained_count;
    pthread_mutex_unlock(&drain_mu);
    if (left)
        log_warn("drain timeout (%d ms): closing %d connection(s) still in flight", drain_ms,
                 atomic_load(&total_conns));
}

void workers_stop(void)
{
    for (int i = 0; i < nworkers; i++)
        loop_stop(workers[i].loop);
    for (int i = 0; i < nworkers; i++)
        pthread_join(workers[i].thread, NULL);
    for (int i = 0; i < nworkers; i++) {
        proxy_free(&workers[i]);
        buf_pool_drain(&workers[i].bufs);
        loop_free(workers[i].loop);
    }
    free(workers);
    workers = NULL;
}
