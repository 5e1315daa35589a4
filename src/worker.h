/* worker.h — the worker threads: each runs its own event loop, accepts from
 * the shared listening sockets and serves its connections (proxy.h) without
 * sharing anything on the request path. Owns thread start/stop, accepting,
 * the connection cap and the drain at shutdown. */
#ifndef CORE_WORKER_H
#define CORE_WORKER_H
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include "buf.h"
#include "loop.h"

struct config;
struct conn_set;
struct h1_shared;
struct backend_pool;

struct listener {
    struct loop_fd lfd;      /* shared listening fd, watched by every worker */
    struct worker *w;
    bool tls;                /* https port */
};

struct worker {
    int id;
    pthread_t thread;
    struct loop *loop;
    const struct config *cfg;
    bool https_enabled;      /* local mode with mkcert, or release mode */
    struct listener listeners[2];
    int nlisteners;
    int qsbr_reader;
    struct buf_pool bufs;
    struct conn_set *conns;  /* this worker's client connections (conn.h) */
    struct h1_shared *h1;    /* HTTP/1 pools and scratch (client_h1.c) */
    struct backend_pool *bp; /* this worker's idle backend connections (backend.h) */
    unsigned nconns;         /* open client connections (this thread only) */
    bool draining;           /* shutdown: finish in-flight requests, accept none */
    bool drained_reported;
};

/* Starts cfg->workers threads serving the listening fds (http_fd plain,
 * https_fd TLS or -1). Returns 0 or -1 with err. */
int workers_start(const struct config *cfg, int http_fd, int https_fd, bool https_enabled,
                  char *err, size_t errlen);
/* Stops accepting everywhere, then waits until every in-flight request is
 * done or drain_ms passes. The listening fds are closed when this returns. */
void workers_drain(int drain_ms);
/* Stops the loops and joins the threads. */
void workers_stop(void);

/* Connection accounting, called by proxy.c on this worker's thread. */
void worker_conn_opened(struct worker *w);
void worker_conn_closed(struct worker *w);
/* Called when a drained worker has no connections left. */
void worker_report_drained(struct worker *w);
/* Connection cap across all workers (config max_conns). */
bool worker_may_accept(struct worker *w);

#endif
