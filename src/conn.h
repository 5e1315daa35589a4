/* conn.h — the client connection object shared by the connection layer
 * (proxy.c: accept, handshake, ALPN dispatch, drain) and the client
 * protocols (client_h1.c; client_h2.c through proxy.c's adapter). Owns the
 * connection's fd, transport, timer, readiness flags, its place in the
 * worker's list, the deferred-pump list and closing/reaping. Knows no
 * protocol: it reaches the current one through struct client_proto.
 * Everything here runs on the connection's worker thread. */
#ifndef CORE_CONN_H
#define CORE_CONN_H
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include "loop.h"
#include "transport.h"

struct worker;
struct client;
struct buf;
struct backend;
struct h1_exchange;
struct h2_conn;

/* What the protocol speaking on a connection does on its events. */
struct client_proto {
    void (*pump)(struct client *cl);          /* readiness or queued work: move bytes */
    void (*on_timeout)(struct client *cl);    /* the connection's timer fired */
    void (*release)(struct client *cl);       /* closing: free the protocol's state */
    void (*drain)(struct client *cl);         /* shutdown or takeover began */
};

/* HTTP/1 states (client_h1.c); the handshake and HTTP/2 have their own proto. */
enum client_state {
    C_HEAD,        /* waiting for / reading a request head */
    C_EXCHANGE,    /* a request is in flight */
    C_TUNNEL,      /* upgraded: raw bytes both ways */
    C_LINGER,      /* response sent, write side shut: discarding input briefly */
};

struct client {
    struct loop_fd lfd;              /* first: the fd callback recovers the client */
    struct transport tr;
    struct loop_timer timer;
    struct worker *w;
    const struct client_proto *proto;
    struct client *prev, *next;      /* all clients of the worker */
    struct client *reap_next;
    bool tls;
    bool rd_ready, wr_ready;         /* readiness edges seen, not yet used up */
    bool rd_eof;                     /* client closed its write side */
    bool hup;                        /* an EOF is queued: never assume drained */
    bool parked;                     /* TLS handshake waits for a certificate */
    bool dead;
    bool deferred;                   /* on the deferred list (pump again soon) */
    struct client *deferred_next;
    struct client *parked_prev, *parked_next;   /* on the parked list while parked */
    char addr[INET6_ADDRSTRLEN];
    /* HTTP/1 (client_h1.c) */
    uint8_t state;                   /* enum client_state */
    bool wr_shut;                    /* we shut our write side (tunnel half-close) */
    struct buf *in, *out;
    uint32_t in_ok, out_ok;          /* forwardable bytes at the buffers' starts */
    struct backend *be;              /* attached backend connection, or NULL */
    struct h1_exchange *ex;          /* the request in flight */
    /* HTTP/2 (client_h2.c) */
    struct h2_conn *h2;
};

/* A worker's connections. */
struct conn_set {
    struct client clients;           /* list head (sentinel) */
    struct client *reap;             /* closed this iteration, freed before sleeping */
    struct client *deferred;         /* to pump again before sleeping */
    struct client parked;            /* handshakes waiting for a certificate (sentinel) */
};

void conn_set_init(struct conn_set *cs);
/* Registers a new connection (fd already watched) with its first proto. */
void conn_link(struct conn_set *cs, struct client *cl, const struct client_proto *proto);
/* Closes the connection (the proto releases its state first); freed at
 * conn_reap. why, when not NULL, goes to the debug log. */
void conn_close(struct client *cl, const char *why);
/* (Re-)arms the connection's timer; the proto's on_timeout runs when it fires. */
void conn_arm(struct client *cl, uint32_t ms);
/* The TLS handshake waits for a certificate: keep cl on the parked list
 * (and out of its fd events) until conn_resume_parked. */
void conn_park(struct client *cl);
/* A certificate became ready or failed: pump every parked handshake. */
void conn_resume_parked(struct conn_set *cs);
/* Pumps cl again before the loop sleeps. */
void conn_defer(struct client *cl);
/* Runs the deferred pumps; true if some were queued again. */
bool conn_run_deferred(struct conn_set *cs);
void conn_reap(struct conn_set *cs);
/* The fd callback of every client connection. */
void conn_on_event(struct loop *l, struct loop_fd *h, uint32_t ev);

#endif
