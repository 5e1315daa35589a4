/* backend.c — backend connections and the per-port keep-alive pool (see
 * backend.h). The pool is a LIFO list per port: the most recently used
 * connection is the least likely to have been closed by the backend. */
#include "backend.h"
#include "cli.h"
#include "mem.h"
#include "net.h"
#include "worker.h"
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

/* Idle backend connections kept per port per worker: enough for the
 * requests one worker keeps in flight (50 HTTP/2 clients with 100 streams
 * each are 5,000), so a busy port does not connect and close a connection
 * per request (which also runs the ephemeral ports into TIME_WAIT). An idle
 * one costs an fd and a small struct, and goes after BACKEND_IDLE_MS. */
#define IDLE_POOL_PER_PORT 8192
/* How long an idle pooled connection is kept: shorter than the keep-alive
 * timeouts of common backend servers is not needed, because a connection
 * the backend closed is noticed (EPOLLIN/RDHUP) and dropped at once, and a
 * request that meets one anyway is replayed (proxy.c, exchange.c). */
#define BACKEND_IDLE_MS 30000

struct backend_pool {
    struct backend *bp_idle[65536];     /* idle connections by port */
    uint16_t bp_count[65536];
    struct backend *bp_reap;            /* closed this iteration */
};

struct backend_pool *backend_pool_new(void)
{
    return xcalloc(1, sizeof(struct backend_pool));
}

void backend_pool_close_idle(struct backend_pool *bp)
{
    for (int p = 0; p < 65536; p++)
        while (bp->bp_idle[p])
            backend_close(bp->bp_idle[p]);
}

void backend_pool_free(struct backend_pool *bp)
{
    if (!bp)
        return;
    backend_pool_close_idle(bp);
    backend_pool_reap(bp);
    free(bp);
}

void backend_pool_reap(struct backend_pool *bp)
{
    while (bp->bp_reap) {
        struct backend *be = bp->bp_reap;
        bp->bp_reap = be->be_reap_next;
        free(be);
    }
}

static void on_backend_timeout(struct loop *l, struct loop_timer *t)
{
    struct backend *be = (struct backend *)((char *)t - offsetof(struct backend, be_timer));

    if (!be->be_owner) {   /* idle too long in the pool */
        backend_close(be);
        return;
    }
    be->be_ops->on_timeout(be->be_owner);
}

void backend_touch(struct backend *be)
{
    uint32_t ms = be->be_owner ? (uint32_t)be->be_w->cfg->backend_timeout_ms : BACKEND_IDLE_MS;
    loop_timer_set(be->be_w->loop, &be->be_timer, ms, on_backend_timeout);
}

static void pool_remove(struct backend *be)
{
    struct backend_pool *bp = be->be_w->bp;

    if (be->be_pool_prev)
        be->be_pool_prev->be_pool_next = be->be_pool_next;
    else if (bp->bp_idle[be->be_port] == be)
        bp->bp_idle[be->be_port] = be->be_pool_next;
    else
        return;   /* not in the pool */
    if (be->be_pool_next)
        be->be_pool_next->be_pool_prev = be->be_pool_prev;
    be->be_pool_prev = be->be_pool_next = NULL;
    bp->bp_count[be->be_port]--;
}

void backend_close(struct backend *be)
{
    struct backend_pool *bp = be->be_w->bp;

    if (be->be_dead)
        return;
    be->be_dead = true;
    pool_remove(be);
    loop_timer_cancel(be->be_w->loop, &be->be_timer);
    be->be_owner = NULL;
    loop_del_fd(be->be_w->loop, &be->be_lfd);   /* see conn_close: spawned children hold fds */
    close(be->be_lfd.fd);
    be->be_reap_next = bp->bp_reap;
    bp->bp_reap = be;
}

void backend_put(struct backend *be)
{
    struct backend_pool *bp = be->be_w->bp;

    be->be_owner = NULL;
    be->be_ops = NULL;
    if (bp->bp_count[be->be_port] >= IDLE_POOL_PER_PORT || be->be_w->draining) {
        backend_close(be);
        return;
    }
    be->be_pool_prev = NULL;
    be->be_pool_next = bp->bp_idle[be->be_port];
    if (be->be_pool_next)
        be->be_pool_next->be_pool_prev = be;
    bp->bp_idle[be->be_port] = be;
    bp->bp_count[be->be_port]++;
    backend_touch(be);
}

static void on_backend_event(struct loop *l, struct loop_fd *h, uint32_t ev)
{
    struct backend *be = (struct backend *)h;

    if (be->be_dead)
        return;
    if (ev & LOOP_READ)
        be->be_rd_ready = true;
    if (ev & LOOP_RDHUP)
        be->be_hup = true;
    if (ev & LOOP_WRITE)
        be->be_wr_ready = true;
    if (!be->be_owner) {
        /* Idle in the pool: any readiness to read means the backend closed
         * it (or sent bytes nobody asked for). */
        if (ev & (LOOP_READ | LOOP_ERROR))
            backend_close(be);
        return;
    }
    be->be_ops->on_ready(be->be_owner);
}

struct backend *backend_get(struct worker *w, uint16_t port, bool fresh, void *owner,
                            const struct backend_ops *ops)
{
    struct backend_pool *bp = w->bp;
    struct backend *be = fresh ? NULL : bp->bp_idle[port];

    if (be) {
        pool_remove(be);
        be->be_reused = true;
    } else {
        int fd = net_connect_loopback(port);
        if (fd < 0)
            return NULL;
        be = xcalloc(1, sizeof *be);
        be->be_lfd.fd = fd;
        be->be_lfd.cb = on_backend_event;
        be->be_w = w;
        be->be_port = port;
        if (loop_add_fd(w->loop, &be->be_lfd) < 0) {
            int e = errno;
            close(fd);
            free(be);
            errno = e;
            return NULL;
        }
    }
    be->be_owner = owner;
    be->be_ops = ops;
    backend_touch(be);
    return be;
}

int backend_check_connected(struct backend *be, int *err)
{
    int e = 0;
    socklen_t len = sizeof e;

    if (be->be_connected)
        return 1;
    if (!be->be_wr_ready && !be->be_rd_ready)
        return 0;
    getsockopt(be->be_lfd.fd, SOL_SOCKET, SO_ERROR, &e, &len);
    if (e == EINPROGRESS || e == EALREADY)
        return 0;
    if (e != 0) {
        *err = e;
        return -1;
    }
    be->be_connected = true;
    return 1;
}
