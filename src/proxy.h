/* proxy.h — client <-> backend sessions on one worker: TLS handshake,
 * request head parsing and routing by Host, backend connect and keep-alive
 * pool, header rewriting, streaming of bodies both ways with backpressure,
 * WebSocket tunnels, errors (400/404/414/431/502/504), timeouts and the
 * access log. Everything here runs on the worker's own thread. */
#ifndef CORE_PROXY_H
#define CORE_PROXY_H
#include <stdbool.h>
#include <sys/socket.h>

struct worker;

void proxy_init(struct worker *w);
void proxy_free(struct worker *w);
/* Takes ownership of an accepted, non-blocking client fd. */
void proxy_accept(struct worker *w, int fd, const struct sockaddr *peer, bool tls);
/* Shutdown or takeover: idle keep-alive connections get a short grace for
 * one more request (answered with close), HTTP/2 connections get GOAWAY,
 * the others close after their response. */
void proxy_drain(struct worker *w);
/* A certificate became ready or failed: resume parked TLS handshakes. */
void proxy_resume_parked(void *worker);
/* Pumps connections that yielded after a long burst; true if some are
 * still waiting (the loop should not block). */
bool proxy_run_deferred(struct worker *w);
/* Frees connections closed during this loop iteration (before sleeping). */
void proxy_reap(struct worker *w);

#endif
