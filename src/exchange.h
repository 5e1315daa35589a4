/* exchange.h — one request to an HTTP/1.1 backend, protocol-free: routing
 * by host, the responses the proxy makes itself (404, 421, 431, 502, 504),
 * the request head and body out (chunked when the length is unknown, an
 * RFC 8441 WebSocket as an HTTP/1.1 Upgrade), the response head and body
 * back (chunked bodies decoded), replay on a stale pooled connection, and
 * the access log line. The client protocol that owns an exchange (today
 * client_h2.c; HTTP/1 keeps its own zero-copy relay in proxy.c) implements
 * exchange_ops and never sees a backend. Calls go one way: owner ->
 * exchange -> backend; the exchange reports back only through the ops.
 * Runs on one worker thread. */
#ifndef CORE_EXCHANGE_H
#define CORE_EXCHANGE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "http1.h"

struct worker;
struct exchange;

/* A request as the client protocol decoded it. Everything is copied by
 * exchange_start; nothing needs to outlive the call. */
struct exchange_req {
    struct http1_slice method;
    struct http1_slice path;          /* origin form, "/" at least */
    struct http1_slice authority;     /* host[:port] as the client sent it */
    const struct http1_header *headers; /* end-to-end fields (no pseudo-headers, no Host) */
    size_t num_headers;
    int64_t content_length;           /* -1 when not given */
    bool has_body;                    /* body bytes (or a tunnel) follow */
    bool websocket;                   /* RFC 8441: extended CONNECT, :protocol websocket */
    const char *client_addr;          /* for X-Forwarded-For and the log */
    const char *sni;                  /* TLS server name, NULL when none (no 421 check) */
    const char *proto_label;          /* for the access log: "HTTP/2" */
};

/* A response head for the client. Slices stay valid until the next call
 * into the exchange. Hop-by-hop and connection-specific fields are
 * already removed. */
struct exchange_head {
    int status;
    const struct http1_header *headers;
    size_t num_headers;
    bool has_body;                    /* body bytes follow (read with exchange_read_body) */
};

struct exchange_ops {
    /* A 1xx response (100, 103) before the final one. */
    void (*on_interim)(void *owner, const struct exchange_head *h);
    /* The final response head (from the backend or made here). */
    void (*on_head)(void *owner, const struct exchange_head *h);
    /* Body bytes or the body's end can be read now, or the exchange has
     * more to move: call exchange_kick from the owner's next pump. */
    void (*on_body)(void *owner);
    /* n request body bytes have been taken by the backend (give window back). */
    void (*on_req_drained)(void *owner, size_t n);
    /* The response cannot be completed (backend lost mid-response). */
    void (*on_abort)(void *owner, const char *why);
};

/* Starts the exchange: routes it and connects (or answers it at once, in
 * which case on_head runs before this returns). Never NULL. */
struct exchange *exchange_start(struct worker *w, const struct exchange_req *r, void *owner,
                                const struct exchange_ops *ops);
/* Queues request body bytes; returns how many were taken (all of them when
 * the owner keeps to the flow-control window of EXCHANGE_BODY_WINDOW). */
size_t exchange_write_body(struct exchange *ex, const void *data, size_t len);
/* The request is complete; trailers (may be 0) are sent after a chunked body. */
void exchange_end_body(struct exchange *ex, const struct http1_header *trailers, size_t n);
/* Copies up to cap decoded response body bytes into dst. *eof is set when
 * the body is complete and every byte has been read. */
size_t exchange_read_body(struct exchange *ex, void *dst, size_t cap, bool *eof);
/* The owner made room (read body bytes) or gave input: move bytes now. Call
 * it from the owner's own pump, never from inside an ops callback. */
void exchange_kick(struct exchange *ex);
/* After the body's end: the trailer fields of a chunked response (slices
 * valid until exchange_free), at most max of them. */
size_t exchange_trailers(struct exchange *ex, struct http1_header *out, size_t max);
/* Whether only the backend can move this exchange now: the request is
 * complete and the response head has not come, or it is a tunnel (whose
 * idle time the backend timeout bounds). */
bool exchange_waits_for_backend(const struct exchange *ex);
/* The response status for the log (0 before a head). */
int exchange_status(const struct exchange *ex);
/* Ends the exchange: writes the access log line (bytes_out: body bytes the
 * client got), returns the backend connection to the pool when it finished
 * cleanly, frees everything. No callback runs after this. */
void exchange_free(struct exchange *ex, uint64_t bytes_out);

/* Request body bytes buffered per exchange at most: the owner's per-stream
 * flow-control window must not exceed it. */
#define EXCHANGE_BODY_WINDOW 65535u

#endif
