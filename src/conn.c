/* conn.c — client connections: list, timer, readiness, deferred pumps,
 * close and reap (see conn.h). */
#include "conn.h"
#include "log.h"
#include "worker.h"
#include <stddef.h>
#include <stdlib.h>

void conn_set_init(struct conn_set *cs)
{
    cs->clients.next = cs->clients.prev = &cs->clients;
    cs->reap = NULL;
    cs->deferred = NULL;
    cs->parked.parked_next = cs->parked.parked_prev = &cs->parked;
}

void conn_park(struct client *cl)
{
    struct conn_set *cs = cl->w->conns;

    if (cl->parked)
        return;
    cl->parked = true;
    cl->parked_next = cs->parked.parked_next;
    cl->parked_prev = &cs->parked;
    cs->parked.parked_next->parked_prev = cl;
    cs->parked.parked_next = cl;
}

static void unpark(struct client *cl)
{
    if (!cl->parked)
        return;
    cl->parked = false;
    cl->parked_prev->parked_next = cl->parked_next;
    cl->parked_next->parked_prev = cl->parked_prev;
    cl->parked_prev = cl->parked_next = NULL;
}

void conn_resume_parked(struct conn_set *cs)
{
    /* Detach the whole list first: a pump may park its client again. */
    struct client *cl = cs->parked.parked_next;

    if (cl == &cs->parked)
        return;
    cs->parked.parked_prev->parked_next = NULL;
    cs->parked.parked_next = cs->parked.parked_prev = &cs->parked;
    /* None of them is parked any more before any pump runs, so a close
     * during the walk never touches the detached chain. */
    for (struct client *p = cl; p; p = p->parked_next)
        p->parked = false;
    while (cl) {
        struct client *next = cl->parked_next;
        cl->parked_prev = cl->parked_next = NULL;
        if (!cl->dead)
            cl->proto->pump(cl);
        cl = next;
    }
}

void conn_link(struct conn_set *cs, struct client *cl, const struct client_proto *proto)
{
    cl->proto = proto;
    cl->next = cs->clients.next;
    cl->prev = &cs->clients;
    cs->clients.next->prev = cl;
    cs->clients.next = cl;
    worker_conn_opened(cl->w);
}

static struct conn_set *set_of(struct client *cl)
{
    return cl->w->conns;
}

void conn_close(struct client *cl, const char *why)
{
    struct conn_set *cs = set_of(cl);

    if (cl->dead)
        return;
    if (why)
        log_debug("client %s closed: %s", cl->addr, why);
    cl->dead = true;
    unpark(cl);
    if (cl->proto && cl->proto->release)
        cl->proto->release(cl);
    loop_timer_cancel(cl->w->loop, &cl->timer);
    /* Out of epoll before close: close alone does not remove it while a
     * child being spawned (mkcert, posix_spawn) still holds a copy of the
     * fd, and its events would then reach a freed connection. */
    loop_del_fd(cl->w->loop, &cl->lfd);
    transport_close(&cl->tr);
    cl->prev->next = cl->next;
    cl->next->prev = cl->prev;
    cl->reap_next = cs->reap;
    cs->reap = cl;
    worker_conn_closed(cl->w);
}

static void on_timer(struct loop *l, struct loop_timer *t)
{
    struct client *cl = (struct client *)((char *)t - offsetof(struct client, timer));

    cl->proto->on_timeout(cl);
}

void conn_arm(struct client *cl, uint32_t ms)
{
    loop_timer_set(cl->w->loop, &cl->timer, ms, on_timer);
}

void conn_defer(struct client *cl)
{
    struct conn_set *cs = set_of(cl);

    if (!cl->dead && !cl->deferred) {
        cl->deferred = true;
        cl->deferred_next = cs->deferred;
        cs->deferred = cl;
    }
}

bool conn_run_deferred(struct conn_set *cs)
{
    struct client *cl = cs->deferred;

    cs->deferred = NULL;
    while (cl) {
        struct client *next = cl->deferred_next;
        cl->deferred = false;
        if (!cl->dead && !cl->parked)
            cl->proto->pump(cl);
        cl = next;
    }
    return cs->deferred != NULL;
}

void conn_reap(struct conn_set *cs)
{
    while (cs->reap) {
        struct client *cl = cs->reap;
        cs->reap = cl->reap_next;
        free(cl);
    }
}

void conn_on_event(struct loop *l, struct loop_fd *h, uint32_t ev)
{
    struct client *cl = (struct client *)h;

    if (cl->dead)
        return;
    if (ev & LOOP_READ) {
        cl->rd_ready = true;
        transport_note_readable(&cl->tr);
    }
    if (ev & LOOP_RDHUP)
        cl->hup = true;
    if (ev & LOOP_WRITE)
        cl->wr_ready = true;
    if (cl->parked)
        return;
    cl->proto->pump(cl);
}
