/* proxy.c — client connections on one worker: accept, the TLS handshake
 * (parked while a certificate is made), ALPN dispatch to a client protocol
 * (client_h1.c, or client_h2.c through the adapter below), drain at
 * shutdown and takeover, resuming parked handshakes, deferred pumps and
 * reaping. Calls go one way: proxy -> client protocol -> exchange/backend. */
#include "proxy.h"
#include "backend.h"
#include "cli.h"
#include "client_h1.h"
#include "client_h2.h"
#include "conn.h"
#include "log.h"
#include "mem.h"
#include "net.h"
#include "transport.h"
#include "worker.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* setup                                                               */

void proxy_init(struct worker *w)
{
    w->conns = xcalloc(1, sizeof *w->conns);
    conn_set_init(w->conns);
    client_h1_init(w);
    w->bp = backend_pool_new();
}

void proxy_free(struct worker *w)
{
    struct conn_set *cs = w->conns;

    while (cs->clients.next != &cs->clients)
        conn_close(cs->clients.next, "shutdown");
    proxy_reap(w);
    backend_pool_free(w->bp);
    w->bp = NULL;
    client_h1_free(w);
    free(cs);
    w->conns = NULL;
}

void proxy_reap(struct worker *w)
{
    conn_reap(w->conns);
    backend_pool_reap(w->bp);
}

bool proxy_run_deferred(struct worker *w)
{
    return conn_run_deferred(w->conns);
}

/* ------------------------------------------------------------------ */
/* HTTP/2 adapter: client_h2.c knows no struct client                  */

static void on_h2_wake(void *owner)
{
    conn_defer(owner);
}

static const struct h2_conn_ops h2_ops = { on_h2_wake };

/* One pump of an HTTP/2 connection; the timer measures client progress.
 * The readiness edges seen since the last pump go to the session. */
static void h2_pump(struct client *cl)
{
    const char *why = NULL;

    client_h2_note_io(cl->h2, cl->rd_ready, cl->wr_ready);
    cl->rd_ready = cl->wr_ready = false;
    int r = client_h2_pump(cl->h2, &why);
    if (r == H2_PUMP_CLOSE)
        conn_close(cl, why);
    else if (r == H2_PUMP_PROGRESS)
        conn_arm(cl, (uint32_t)cl->w->cfg->client_timeout_ms);
}

static void h2_on_timeout(struct client *cl)
{
    const char *why = NULL;

    if (client_h2_timed_out(cl->h2, &why))
        conn_close(cl, why);
    else
        conn_arm(cl, (uint32_t)cl->w->cfg->client_timeout_ms);
}

static void h2_release(struct client *cl)
{
    client_h2_free(cl->h2);
    cl->h2 = NULL;
}

static void h2_drain(struct client *cl)
{
    client_h2_shutdown(cl->h2);
}

static const struct client_proto h2_proto = { h2_pump, h2_on_timeout, h2_release, h2_drain };

/* ALPN chose h2: the connection belongs to client_h2.c from now on. */
static void start_h2(struct client *cl)
{
    const char *err = NULL;

    cl->h2 = client_h2_start(cl->w, &cl->tr, cl->addr, transport_sni(&cl->tr), cl, &h2_ops, &err);
    if (!cl->h2) {
        log_warn("client %s: cannot start HTTP/2: %s", cl->addr, err);
        conn_close(cl, NULL);
        return;
    }
    cl->proto = &h2_proto;
    if (cl->w->draining)
        client_h2_shutdown(cl->h2);
    h2_pump(cl);
}

/* ------------------------------------------------------------------ */
/* the TLS handshake, then ALPN dispatch                               */

static void handshake_pump(struct client *cl)
{
    int r = transport_handshake(&cl->tr);

    if (r == 0) {
        if (transport_alpn_is_h2(&cl->tr))
            start_h2(cl);
        else
            client_h1_start(cl);
        return;
    }
    if (r == TRANSPORT_PARKED) {
        conn_park(cl);   /* proxy_resume_parked pumps it again */
        return;
    }
    if (r == TRANSPORT_ERROR) {
        log_debug("client %s: TLS handshake failed: %s", cl->addr, cl->tr.err);
        conn_close(cl, NULL);
    }
}

static void handshake_on_timeout(struct client *cl)
{
    conn_close(cl, "TLS handshake timed out");
}

/* A handshake in progress at shutdown finishes and serves its requests
 * with close (the protocols check w->draining once they start). */
static void handshake_drain(struct client *cl)
{
}

static const struct client_proto handshake_proto = { handshake_pump, handshake_on_timeout, NULL,
                                                     handshake_drain };

void proxy_accept(struct worker *w, int fd, const struct sockaddr *peer, bool tls)
{
    struct client *cl = xcalloc(1, sizeof *cl);

    cl->lfd.fd = fd;
    cl->lfd.cb = conn_on_event;
    cl->tr.fd = fd;
    cl->w = w;
    cl->tls = tls;
    net_addr_str(peer, cl->addr, sizeof cl->addr);
    if (tls && transport_start_tls(&cl->tr) < 0) {
        log_warn("client %s: cannot start TLS", cl->addr);
        close(fd);
        free(cl);
        return;
    }
    if (loop_add_fd(w->loop, &cl->lfd) < 0) {
        log_warn("client %s: epoll: %s", cl->addr, strerror(errno));
        transport_close(&cl->tr);
        free(cl);
        return;
    }
    conn_link(w->conns, cl, &handshake_proto);
    conn_arm(cl, (uint32_t)w->cfg->client_timeout_ms);
    /* Data often arrives with the connection (defer-accept-like): try now. */
    cl->rd_ready = cl->wr_ready = true;
    if (tls)
        handshake_pump(cl);
    else
        client_h1_start(cl);
}

/* ------------------------------------------------------------------ */
/* shutdown and parked handshakes                                      */

void proxy_drain(struct worker *w)
{
    struct conn_set *cs = w->conns;
    struct client *cl = cs->clients.next;

    while (cl != &cs->clients) {
        struct client *next = cl->next;
        cl->proto->drain(cl);
        cl = next;
    }
    backend_pool_close_idle(w->bp);
}

void proxy_resume_parked(void *arg)
{
    struct worker *w = arg;

    conn_resume_parked(w->conns);
}
