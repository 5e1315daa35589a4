/* client_h1.h — the HTTP/1.x client protocol (client_h1.c): request heads,
 * routing by Host, rewriting, relaying to the backend pool with
 * backpressure, keep-alive and pipelining, generated responses
 * (400/404/408/414/431/501/502/504, the https redirect, ACME http-01),
 * WebSocket tunnels and the access log. Runs on the connection's worker. */
#ifndef CORE_CLIENT_H1_H
#define CORE_CLIENT_H1_H

struct worker;
struct client;

/* The per-worker pools and scratch (w->h1). */
void client_h1_init(struct worker *w);
void client_h1_free(struct worker *w);
/* The connection speaks HTTP/1 from now on (plain port, or TLS without h2). */
void client_h1_start(struct client *cl);

#endif
