/* backend.h — connections to the backends (HTTP/1.1 on 127.0.0.1:PORT) and
 * the per-worker keep-alive pool of idle ones, by port. Owns the backend
 * fds, their readiness flags, their timers and the pool. Does not own what
 * travels over them: the owner (an HTTP/1 client connection in proxy.c or
 * an exchange in exchange.c) attaches itself with a backend_ops and is told
 * about readiness and timeouts through it, never called by name. Runs on
 * one worker's thread; nothing here is shared between threads. */
#ifndef CORE_BACKEND_H
#define CORE_BACKEND_H
#include <stdbool.h>
#include <stdint.h>
#include "loop.h"

struct worker;

/* How a backend tells its owner that something happened. */
struct backend_ops {
    void (*on_ready)(void *owner);     /* readiness changed: pump */
    void (*on_timeout)(void *owner);   /* no progress for the backend timeout */
};

struct backend {
    struct loop_fd be_lfd;            /* first: the fd callback recovers the backend */
    struct loop_timer be_timer;
    struct worker *be_w;
    void *be_owner;                   /* NULL while idle in the pool */
    const struct backend_ops *be_ops;
    struct backend *be_pool_prev, *be_pool_next;
    struct backend *be_reap_next;
    uint16_t be_port;
    bool be_connected;                /* connect() finished */
    bool be_rd_ready, be_wr_ready;    /* edge-triggered readiness seen, not yet used up */
    bool be_reused;                   /* came from the idle pool */
    bool be_eof;                      /* the backend closed its side */
    bool be_hup;                      /* an EOF is queued: never assume drained */
    bool be_dead;
};

struct backend_pool;

struct backend_pool *backend_pool_new(void);
/* Closes every idle connection and frees the pool (at worker exit). */
void backend_pool_free(struct backend_pool *bp);
/* Frees backends closed during this loop iteration. */
void backend_pool_reap(struct backend_pool *bp);
/* Closes the idle connections (shutdown: nothing will reuse them). */
void backend_pool_close_idle(struct backend_pool *bp);

/* A pooled idle connection to port (unless fresh), else a new non-blocking
 * connect, attached to owner. NULL with errno when the connect failed at
 * once. The backend timeout is armed. */
struct backend *backend_get(struct worker *w, uint16_t port, bool fresh, void *owner,
                            const struct backend_ops *ops);
/* Detaches the owner and keeps the connection for reuse (LIFO), or closes
 * it when the pool for that port is full or the worker is draining. */
void backend_put(struct backend *be);
/* Closes the connection; the owner hears nothing more from it. */
void backend_close(struct backend *be);
/* Re-arms the timer after progress (backend timeout while attached). */
void backend_touch(struct backend *be);
/* Whether the non-blocking connect has finished: 1 connected, 0 still in
 * progress, -1 failed with the cause in *err (an errno value). */
int backend_check_connected(struct backend *be, int *err);

#endif
