/* client_h2.h — the HTTP/2 client protocol (RFC 9113) on one TLS client
 * connection, on libnghttp2: one server session per connection, driven from
 * the worker's event loop. Owns the session, its streams (each one an
 * exchange, exchange.h), flow control (window given back only for bytes the
 * backend took), header limits, abuse limits, GOAWAY at shutdown, and the
 * connection's reads and writes once ALPN chose h2. Does not own the fd,
 * the TLS session or the connection's timer: proxy.c does, and is told
 * through h2_conn_ops when to pump again or that the connection is over. */
#ifndef CORE_CLIENT_H2_H
#define CORE_CLIENT_H2_H
#include <stdbool.h>

struct worker;
struct transport;
struct h2_conn;

struct h2_conn_ops {
    /* Work is waiting (a backend delivered bytes): call client_h2_pump soon,
     * from the owner's own pump, not from inside this callback. */
    void (*on_wake)(void *owner);
};

/* Settings we send (README "HTTP/2"). */
#define H2_MAX_CONCURRENT_STREAMS 100
#define H2_MAX_HEADER_LIST 65536      /* decoded bytes (RFC 9113 6.5.2 counting) */
#define H2_MAX_FIELDS 100             /* regular fields per request (as HTTP/1), pseudo-headers apart */
#define H2_CONN_WINDOW (1u << 20)     /* connection-level receive window */

/* Starts the session on an established TLS connection whose ALPN is h2.
 * NULL (with the cause in *err) when nghttp2 cannot start. */
struct h2_conn *client_h2_start(struct worker *w, struct transport *tr, const char *peer_addr,
                                const char *sni, void *owner, const struct h2_conn_ops *ops,
                                const char **err);
/* Readiness seen on the connection's fd. */
void client_h2_note_io(struct h2_conn *c, bool readable, bool writable);

#define H2_PUMP_CLOSE    (-1)  /* the connection is over: close it (reason in *why) */
#define H2_PUMP_IDLE     0     /* nothing moved on the client socket */
#define H2_PUMP_PROGRESS 1     /* bytes moved on the client socket (re-arm timers) */
/* Reads, processes and writes as far as possible. */
int client_h2_pump(struct h2_conn *c, const char **why);

/* The connection's timer fired after a client timeout without progress:
 * true when the connection should be closed (idle, or a client that stopped
 * reading or sending), false when a stream is only waiting for its backend. */
bool client_h2_timed_out(struct h2_conn *c, const char **why);
/* Graceful shutdown: GOAWAY twice (RFC 9113 6.8: first with the highest
 * stream id, then, a second later, with the last one processed); streams in
 * flight complete, then pump reports H2_PUMP_CLOSE. */
void client_h2_shutdown(struct h2_conn *c);
/* Frees the session and ends every stream (their exchanges log and free). */
void client_h2_free(struct h2_conn *c);

#endif
