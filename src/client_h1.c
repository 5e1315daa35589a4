/* client_h1.c — the HTTP/1.x client protocol on one connection: request
 * heads parsed and routed, rewritten and relayed to an HTTP/1.1 backend
 * over the pool (backend.h), responses relayed back with keep-alive,
 * pipelining, 1xx, WebSocket tunnels, lingering close, and the zero-copy
 * paths (splice(2) for long plain-HTTP bodies, the response head rewritten
 * in place). Each connection is driven by one pump, h1_pump(), that makes
 * every step that is possible right now (read, parse, write) and loops
 * until nothing moves; the client's and the backend's fd events both call
 * it. Readiness is tracked in rd_ready/wr_ready flags because fds are
 * watched edge-triggered (no epoll_ctl per state change).
 *
 * Buffers (16 KiB, pooled per worker, held only while a request is active):
 *   in   bytes from the client. While a body-less request is in flight its
 *        head stays at in->start, so the request can be replayed on a fresh
 *        backend connection if a pooled one turns out to be closed.
 *   out  first the rewritten request head (staging for the backend), then
 *        the response for the client: head rewritten in place (headroom of
 *        OUT_HEADROOM bytes in front of it), then body bytes.
 * in_ok/out_ok count the bytes at the start of each buffer that belong to
 * the current message and may be forwarded; bytes after them are either
 * unscanned or the next pipelined request. */
#include "client_h1.h"
#include "backend.h"
#include "buf.h"
#include "challenge.h"
#include "conn.h"
#include "cli.h"
#include "cmd.h"
#include "domain.h"
#include "http1.h"
#include "log.h"
#include "mem.h"
#include "net.h"
#include "transport.h"
#include "worker.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define OUT_HEADROOM 64        /* room for the response head to grow in place */
#define MAX_REQUEST_LINE 8192
#define LINGER_MS 2000         /* reading and discarding after a closing response */
/* At shutdown or takeover, an idle keep-alive connection stays open this
 * long: a client in the middle of a sequence sends its next request, gets
 * it answered with "Connection: close", and reconnects (to the new
 * instance). Closing it at once would race that request (a reset, seen
 * from outside as a lost request). One second covers a page's follow-up
 * requests and a load generator's next one; longer only keeps the old
 * instance around for clients that were going to be idle anyway. */
#define DRAIN_IDLE_GRACE_MS 1000
#define TUNNEL_TIMEOUT_MS 600000
#define SPLICE_MIN (64u * 1024)  /* bodies at least this long go through splice(2) */
#define PIPE_SIZE (256 * 1024)   /* splice pipe capacity asked for */
#define PIPE_POOL 16             /* idle pipes kept per worker */


enum framing {
    F_NONE,        /* no body */
    F_LENGTH,      /* Content-Length */
    F_CHUNKED,     /* chunked, relayed verbatim */
    F_CLOSE,       /* until the backend closes (responses only) */
    F_TUNNEL,      /* everything (upgraded) */
    F_DECHUNK,     /* chunked from the backend, decoded for an HTTP/1.0 client */
};

/* Body framing of one direction of the current exchange. */
struct frame {
    uint8_t kind;              /* enum framing */
    bool done;                 /* the whole body has been scanned */
    uint64_t remaining;        /* F_LENGTH: bytes still expected */
    struct http1_chunked ch;   /* F_CHUNKED: scanner state */
};

/* The request in flight on a client connection; pooled per worker. */
struct h1_exchange {
    struct h1_exchange *next_free;
    uint64_t start_ms;
    int minor;                       /* client's HTTP minor version */
    int status;                      /* response status sent to the client */
    uint64_t bytes_out;              /* bytes sent to the client */
    uint32_t head_kept;              /* request head bytes kept at in->start (replay) */
    uint32_t head_out;               /* rewritten request head bytes still to send */
    uint16_t port;
    bool is_head;                    /* HEAD request: response has no body */
    bool client_close;               /* client asked for close (or HTTP/1.0) */
    bool upgrade;                    /* client asked for an upgrade */
    bool expect_continue;
    bool retried;                    /* already replayed once */
    bool resp_head_done;             /* response head parsed and queued */
    bool close_after;                /* close the client once the response is sent */
    bool backend_close;              /* backend said close / cannot be reused */
    bool generated;                  /* response made by the proxy, no backend */
    struct frame req, resp;
    int pipe[2];                     /* splice pipe while splicing, else -1 */
    uint32_t pipe_bytes;             /* body bytes sitting in the pipe */
    char host[DOMAIN_MAX + 1];
    char method[16];
    char target[256];
};


/* A worker's HTTP/1 pools and scratch (w->h1). */
struct h1_shared {
    struct h1_exchange *free_ex;
    unsigned nfree_ex;
    int pipes[PIPE_POOL][2];         /* idle splice pipes (empty), read and write ends */
    unsigned npipes;
    struct http1_request req;        /* parse scratch */
    struct http1_response resp;      /* parse scratch */
    char scratch[BUF_SIZE];          /* head rewriting scratch */
};

static void h1_pump(struct client *cl);

/* ------------------------------------------------------------------ */
/* setup                                                               */

void client_h1_init(struct worker *w)
{
    w->h1 = xcalloc(1, sizeof *w->h1);
}

void client_h1_free(struct worker *w)
{
    struct h1_shared *hs = w->h1;

    while (hs->free_ex) {
        struct h1_exchange *e = hs->free_ex;
        hs->free_ex = e->next_free;
        free(e);
    }
    while (hs->npipes) {
        hs->npipes--;
        close(hs->pipes[hs->npipes][0]);
        close(hs->pipes[hs->npipes][1]);
    }
    free(hs);
    w->h1 = NULL;
}

/* ------------------------------------------------------------------ */
/* exchanges and buffers                                               */

static struct h1_exchange *h1ex_get(struct worker *w)
{
    struct h1_shared *hs = w->h1;
    struct h1_exchange *ex = hs->free_ex;

    if (ex) {
        hs->free_ex = ex->next_free;
        hs->nfree_ex--;
    } else {
        ex = xmalloc(sizeof *ex);
    }
    memset(ex, 0, offsetof(struct h1_exchange, host));
    ex->pipe[0] = ex->pipe[1] = -1;
    ex->host[0] = ex->method[0] = ex->target[0] = '\0';
    ex->start_ms = loop_now_ms(w->loop);
    return ex;
}

/* Returns the exchange's splice pipe to the pool if it is empty (a pipe
 * with bytes left in it is closed: its contents belong to nobody now). */
static void pipe_release(struct worker *w, struct h1_exchange *ex)
{
    struct h1_shared *hs = w->h1;

    if (ex->pipe[0] < 0)
        return;
    if (ex->pipe_bytes == 0 && hs->npipes < PIPE_POOL) {
        hs->pipes[hs->npipes][0] = ex->pipe[0];
        hs->pipes[hs->npipes][1] = ex->pipe[1];
        hs->npipes++;
    } else {
        close(ex->pipe[0]);
        close(ex->pipe[1]);
    }
    ex->pipe[0] = ex->pipe[1] = -1;
    ex->pipe_bytes = 0;
}

static void h1ex_put(struct worker *w, struct h1_exchange *ex)
{
    struct h1_shared *hs = w->h1;

    pipe_release(w, ex);
    if (hs->nfree_ex >= 256) {
        free(ex);
        return;
    }
    ex->next_free = hs->free_ex;
    hs->free_ex = ex;
    hs->nfree_ex++;
}

static void ensure_in(struct client *cl)
{
    if (!cl->in)
        cl->in = buf_get(&cl->w->bufs);
}

static void ensure_out(struct client *cl)
{
    if (!cl->out)
        cl->out = buf_get(&cl->w->bufs);
}

/* Idle connections give their buffers back: an idle keep-alive client costs
 * only its struct (and the kernel's socket). */
static void release_idle_buffers(struct client *cl)
{
    if (cl->in && buf_len(cl->in) == 0) {
        buf_put(&cl->w->bufs, cl->in);
        cl->in = NULL;
    }
    if (cl->out && buf_len(cl->out) == 0) {
        buf_put(&cl->w->bufs, cl->out);
        cl->out = NULL;
    }
}

/* Scans newly arrived bytes of one direction; returns how many of them are
 * part of the message (-1 on malformed chunked framing). */
static ssize_t frame_scan(struct frame *f, const char *p, size_t len)
{
    switch (f->kind) {
    case F_NONE:
        f->done = true;
        return 0;
    case F_LENGTH: {
        size_t n = len < f->remaining ? len : (size_t)f->remaining;
        f->remaining -= n;
        if (f->remaining == 0)
            f->done = true;
        return (ssize_t)n;
    }
    case F_CHUNKED: {
        ssize_t n = http1_chunked_scan(&f->ch, p, len);
        if (n >= 0 && f->ch.done)
            f->done = true;
        return n;
    }
    default:   /* F_CLOSE, F_TUNNEL: everything until EOF */
        return (ssize_t)len;
    }
}

static void frame_init(struct frame *f, enum framing kind, int64_t length)
{
    memset(f, 0, sizeof *f);
    f->kind = (uint8_t)kind;
    if (kind == F_LENGTH) {
        f->remaining = (uint64_t)length;
        f->done = length == 0;
    }
    if (kind == F_NONE)
        f->done = true;
}




/* ------------------------------------------------------------------ */
/* access log and generated responses                                  */

static void log_access(struct client *cl)
{
    struct h1_exchange *ex = cl->ex;

    if (!log_access_enabled() || !ex || ex->status == 0)
        return;
    log_info("access %s %s \"%s %s\" %d %llu %llums HTTP/1.%d", cl->addr, ex->host[0] ? ex->host : "-",
             ex->method[0] ? ex->method : "-", ex->target[0] ? ex->target : "-", ex->status,
             (unsigned long long)ex->bytes_out,
             (unsigned long long)(loop_now_ms(cl->w->loop) - ex->start_ms), ex->minor);
}

static const char *status_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 307: return "Temporary Redirect";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 408: return "Request Timeout";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default:  return "Error";
    }
}

/* Replaces whatever the client would get next with a response made here.
 * close: close the connection after it (also forced when the request body
 * was not fully read). location: for redirects, else NULL. */
static void send_generated(struct client *cl, int status, const char *body, bool close,
                           const char *location)
{
    struct h1_exchange *ex = cl->ex;
    char loc[DOMAIN_MAX + 600];
    int n;

    if (!ex->req.done || ex->client_close || cl->w->draining)
        close = true;
    ex->close_after = close;
    ex->generated = true;
    ex->resp_head_done = true;
    ex->status = status;
    loc[0] = '\0';
    if (location)
        snprintf(loc, sizeof loc, "Location: %s\r\n", location);
    ensure_out(cl);
    cl->out->start = cl->out->end = 0;
    n = snprintf(cl->out->data, BUF_SIZE,
                 "HTTP/1.%d %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                 "Content-Length: %zu\r\n%sConnection: %s\r\n\r\n%s",
                 ex->minor, status, status_reason(status), strlen(body), loc,
                 close ? "close" : "keep-alive", body);
    if (n < 0 || n >= (int)BUF_SIZE)
        n = 0;
    cl->out->end = (uint32_t)n;
    cl->out_ok = (uint32_t)n;
    frame_init(&ex->resp, F_NONE, 0);
}

/* Closes the client's backend connection (an exchange that cannot finish
 * cleanly on it). */
static void drop_backend(struct client *cl)
{
    if (cl->be) {
        backend_close(cl->be);
        cl->be = NULL;
    }
}

/* ------------------------------------------------------------------ */
/* backend events (backend.h calls these through h1_backend_ops)        */

static void on_backend_ready(void *owner)
{
    h1_pump(owner);
}

static void on_backend_timeout(void *owner)
{
    struct client *cl = owner;

    log_warn("backend 127.0.0.1:%u for %s timed out after %d ms", cl->be->be_port, cl->ex->host,
             cl->w->cfg->backend_timeout_ms);
    drop_backend(cl);
    if (!cl->ex->resp_head_done) {
        cl->ex->backend_close = true;
        send_generated(cl, 504, "Gateway Timeout", false, NULL);
        h1_pump(cl);
    } else {
        conn_close(cl, "backend timed out mid-response");
    }
}

static const struct backend_ops h1_backend_ops = { on_backend_ready, on_backend_timeout };

/* ------------------------------------------------------------------ */
/* the connection's events (client_h1_proto)                          */

/* Closing: what the connection holds for HTTP/1 goes back. */
static void h1_release(struct client *cl)
{
    struct worker *w = cl->w;

    if (cl->state == C_TUNNEL)
        log_access(cl);   /* an upgraded exchange ends with its tunnel */
    if (cl->be)
        drop_backend(cl);
    if (cl->ex) {
        h1ex_put(w, cl->ex);
        cl->ex = NULL;
    }
    buf_put(&w->bufs, cl->in);
    buf_put(&w->bufs, cl->out);
    cl->in = cl->out = NULL;
}

static void h1_on_timeout(struct client *cl)
{
    switch (cl->state) {
    case C_HEAD:
        if (cl->in && buf_len(cl->in) > 0) {
            /* A partial head after the whole header timeout: slow client. */
            cl->state = C_EXCHANGE;
            cl->ex = h1ex_get(cl->w);
            cl->ex->req.done = false;   /* the head never ended: close after */
            cl->ex->minor = 1;
            buf_consume(cl->in, buf_len(cl->in));
            send_generated(cl, 408, "Request Timeout", true, NULL);
            h1_pump(cl);
        } else {
            conn_close(cl, "idle keep-alive connection timed out");
        }
        return;
    case C_EXCHANGE:
        /* Waiting on the backend is the backend timer's business. */
        if (cl->ex && cl->ex->req.done && !cl->ex->resp_head_done && cl->be) {
            conn_arm(cl, (uint32_t)cl->w->cfg->client_timeout_ms);
            return;
        }
        conn_close(cl, "client stalled during a request");
        return;
    case C_TUNNEL:
        conn_close(cl, "tunnel idle timeout");
        return;
    default:
        conn_close(cl, NULL);
        return;
    }
}

/* ------------------------------------------------------------------ */
/* request side                                                        */

/* Writes the rewritten head of the parsed request into out (staging for the
 * backend). Returns 0, or -1 when it does not fit. */
static int stage_request_head(struct client *cl, const struct http1_request *req)
{
    struct http1_forward fwd = { .client_addr = cl->addr, .proto = cl->tls ? "https" : "http" };
    ssize_t n;

    ensure_out(cl);
    cl->out->start = 0;
    n = http1_write_request_head(req, &fwd, cl->out->data, BUF_SIZE);
    if (n < 0) {
        cl->out->end = 0;
        return -1;
    }
    cl->out->end = (uint32_t)n;
    cl->ex->head_out = (uint32_t)n;
    return 0;
}

/* Attaches a backend connection (pooled or new) to the exchange; on an
 * immediate connect failure answers 502. */
static void connect_backend(struct client *cl, bool fresh)
{
    struct h1_exchange *ex = cl->ex;
    struct backend *up = backend_get(cl->w, ex->port, fresh, cl, &h1_backend_ops);

    if (!up) {
        log_warn("backend 127.0.0.1:%u for %s: connect: %s", ex->port, ex->host, strerror(errno));
        send_generated(cl, 502, "Bad Gateway", false, NULL);
        return;
    }
    cl->be = up;
}

/* Redirect plain HTTP to HTTPS (local mode with mkcert, release mode). */
static void send_https_redirect(struct client *cl, const struct http1_request *req)
{
    char loc[DOMAIN_MAX + 600];
    const struct config *cfg = cl->w->cfg;
    struct http1_slice t = req->path;
    int tl = (int)(t.len > 512 ? 512 : t.len);

    if (cfg->https_port == 443)
        snprintf(loc, sizeof loc, "https://%s%.*s", cl->ex->host, tl, t.base);
    else
        snprintf(loc, sizeof loc, "https://%s:%d%.*s", cl->ex->host, cfg->https_port, tl, t.base);
    send_generated(cl, 307, "Temporary Redirect", false, loc);
}

/* ACME http-01 (RFC 8555 8.3): the CA fetches
 * /.well-known/acme-challenge/TOKEN over plain HTTP and expects the key
 * authorization. Answered here (404 for an unknown token), never
 * redirected. Returns true if answered. */
static bool answer_http01(struct client *cl, const struct http1_request *req)
{
    static const char prefix[] = "/.well-known/acme-challenge/";
    const size_t plen = sizeof prefix - 1;
    char keyauth[512];
    struct http1_slice t = req->path;

    if (t.len <= plen || memcmp(t.base, prefix, plen) != 0)
        return false;
    if (challenge_http_lookup(t.base + plen, t.len - plen, keyauth, sizeof keyauth) < 0) {
        /* Not a token of ours: 404, never a redirect (as Go's autocert). */
        send_generated(cl, 404, "Not Found", false, NULL);
        return true;
    }
    log_info("acme: answered http-01 challenge for %s", cl->ex->host);
    send_generated(cl, 200, keyauth, false, NULL);
    return true;
}

/* Sets up the exchange for a parsed request: routing, framing, staging. */
static void start_request(struct client *cl, const struct http1_request *req, uint32_t head_len)
{
    struct h1_exchange *ex = cl->ex;
    const struct http1_info *inf = &req->info;
    char host[DOMAIN_MAX + 1];
    int hl = -1;

    ex->minor = req->minor_version;
    ex->is_head = http1_slice_eq(req->method, "head");
    ex->client_close = inf->conn_close;
    ex->upgrade = inf->conn_upgrade;
    ex->expect_continue = inf->expect_continue;
    http1_slice_copy(ex->method, sizeof ex->method, req->method);
    if (log_access_enabled())
        http1_slice_copy(ex->target, sizeof ex->target, req->target);
    if (inf->chunked)
        frame_init(&ex->req, F_CHUNKED, 0);
    else if (inf->content_length > 0)
        frame_init(&ex->req, F_LENGTH, inf->content_length);
    else
        frame_init(&ex->req, F_NONE, 0);

    if (inf->host.base)
        hl = domain_from_host_header(inf->host.base, inf->host.len, host, sizeof host);
    if (hl > 0)
        memcpy(ex->host, host, (size_t)hl + 1);
    else if (inf->host.base)
        http1_slice_copy(ex->host, sizeof ex->host, inf->host);
    ex->port = hl > 0 ? cmd_lookup_route(host, (size_t)hl) : 0;   /* waits for a racing add */

    /* The head leaves `in` now if a body follows it; a body-less request
     * keeps it there until the response starts, for a replay. */
    if (ex->req.kind == F_NONE) {
        ex->head_kept = head_len;
        cl->in_ok = 0;
    } else {
        buf_consume(cl->in, head_len);
        cl->in_ok = 0;
    }
    if (!cl->tls && cl->w->cfg->release && answer_http01(cl, req))
        return;
    if (req->method.len == 7 && memcmp(req->method.base, "CONNECT", 7) == 0) {
        /* A reverse proxy is no forward proxy: a CONNECT tunnel through to
         * a backend would desynchronise the connection after its 2xx. */
        send_generated(cl, 501, "CONNECT is not supported: core_server is a reverse proxy", true, NULL);
        return;
    }
    if (ex->port == 0) {
        send_generated(cl, 404, "Domain Not Recognized", false, NULL);
        return;
    }
    if (!cl->tls && cl->w->https_enabled && !ex->upgrade) {
        send_https_redirect(cl, req);
        return;
    }
    if (stage_request_head(cl, req) < 0) {
        send_generated(cl, 431, "Request Header Fields Too Large", true, NULL);
        return;
    }
    connect_backend(cl, false);
}

/* Parses a request head from `in` when state is C_HEAD. Returns true when
 * something changed. */
static bool parse_request(struct client *cl)
{
    struct h1_shared *hs = cl->w->h1;
    struct http1_request *req = &hs->req;
    int n;

    if (cl->state != C_HEAD || !cl->in || buf_len(cl->in) == 0)
        return false;
    n = http1_parse_request(buf_head(cl->in), buf_len(cl->in), BUF_SIZE, MAX_REQUEST_LINE, req);
    if (n == HTTP1_INCOMPLETE) {
        if (buf_room(cl->in) == 0 && cl->in->start > 0)
            buf_compact(cl->in);
        return false;
    }
    cl->state = C_EXCHANGE;
    cl->ex = h1ex_get(cl->w);
    if (n == HTTP1_ERROR) {
        log_info("client %s: bad request: %s", cl->addr, req->error ? req->error : "malformed");
        cl->ex->req.done = false;   /* forces close: the stream cannot be trusted */
        cl->ex->minor = 1;
        send_generated(cl, req->error_status ? req->error_status : 400,
                       status_reason(req->error_status ? req->error_status : 400), true, NULL);
        buf_consume(cl->in, buf_len(cl->in));
        return true;
    }
    conn_arm(cl, (uint32_t)cl->w->cfg->client_timeout_ms);
    start_request(cl, req, (uint32_t)n);
    return true;
}

/* Scans newly read request body bytes in `in`. */
static bool scan_request_body(struct client *cl)
{
    struct h1_exchange *ex = cl->ex;
    ssize_t k;

    if (!ex || ex->req.done || ex->head_kept || !cl->in || cl->in_ok >= buf_len(cl->in))
        return false;
    if (cl->state != C_EXCHANGE)
        return false;
    k = frame_scan(&ex->req, buf_head(cl->in) + cl->in_ok, buf_len(cl->in) - cl->in_ok);
    if (k < 0) {
        log_info("client %s: malformed chunked request body", cl->addr);
        if (ex->resp_head_done || ex->generated || (cl->out && cl->out_ok > 0 && !ex->head_out)) {
            conn_close(cl, "malformed chunked body");   /* a response has begun */
            return true;
        }
        /* Nothing of a response yet: say why, then close (the rest of the
         * stream cannot be trusted; the backend connection neither). */
        drop_backend(cl);
        buf_consume(cl->in, buf_len(cl->in));
        cl->in_ok = 0;
        ex->head_out = 0;
        send_generated(cl, 400, "Bad Request: malformed chunked body", true, NULL);
        return true;
    }
    cl->in_ok += (uint32_t)k;
    return k > 0 || ex->req.done;
}

static bool read_client(struct client *cl)
{
    ssize_t n;
    uint32_t room;

    if (!cl->rd_ready || cl->rd_eof)
        return false;
    /* Backpressure: when `in` is full (a body the backend is slow to take,
     * or pipelined requests waiting their turn) reading stops. Offsets into
     * `in` are relative to its start, so compacting is always safe. */
    ensure_in(cl);
    if (buf_room(cl->in) == 0 && cl->in->start > 0)
        buf_compact(cl->in);
    room = buf_room(cl->in);
    if (room == 0)
        return false;
    n = transport_read(&cl->tr, buf_tail(cl->in), room);
    if (n == TRANSPORT_AGAIN) {
        cl->rd_ready = false;
        return false;
    }
    if (n == TRANSPORT_ERROR) {
        conn_close(cl, cl->tr.err);
        return true;
    }
    if (n == 0) {
        cl->rd_eof = true;
        return true;
    }
    /* A short read drained the socket (and, for TLS, OpenSSL's buffers):
     * the next arrival is a new edge. Not so when the peer's FIN is already
     * queued (its edge has been seen). */
    if (!cl->hup && transport_read_drained(&cl->tr, (size_t)n, room))
        cl->rd_ready = false;
    cl->in->end += (uint32_t)n;
    if (cl->state == C_EXCHANGE || cl->state == C_TUNNEL)
        conn_arm(cl, cl->state == C_TUNNEL ? TUNNEL_TIMEOUT_MS : (uint32_t)cl->w->cfg->client_timeout_ms);
    return true;
}

/* ------------------------------------------------------------------ */
/* backend side                                                        */

static bool upstream_check_connected(struct client *cl)
{
    struct backend *up = cl->be;
    int e = 0;
    int r = backend_check_connected(up, &e);

    if (r == 0)
        return false;
    if (r < 0) {
        log_warn("backend 127.0.0.1:%u for %s: connect: %s", up->be_port, cl->ex->host, strerror(e));
        drop_backend(cl);
        cl->ex->backend_close = true;
        send_generated(cl, 502, "Bad Gateway", false, NULL);
        return false;
    }
    return true;
}

/* The backend failed before any response byte: replay the request on a
 * fresh connection if it was a reused one and the request is replayable,
 * else answer 502. */
static void backend_failed(struct client *cl, const char *why)
{
    struct h1_exchange *ex = cl->ex;
    struct backend *up = cl->be;
    bool replay = up && up->be_reused && !ex->retried && ex->head_kept > 0;

    if (up)
        drop_backend(cl);
    if (replay) {
        struct http1_request *req = &cl->w->h1->req;
        ex->retried = true;
        if (http1_parse_request(buf_head(cl->in), ex->head_kept, BUF_SIZE, MAX_REQUEST_LINE, req) ==
                (int)ex->head_kept &&
            stage_request_head(cl, req) == 0) {
            connect_backend(cl, true);
            return;
        }
    }
    log_warn("backend 127.0.0.1:%u for %s: %s", ex->port, ex->host, why);
    ex->backend_close = true;
    send_generated(cl, 502, "Bad Gateway", false, NULL);
}

static bool write_upstream(struct client *cl)
{
    struct backend *up = cl->be;
    struct h1_exchange *ex = cl->ex;
    struct iovec iov[2];
    int cnt = 0;
    ssize_t n;

    if (!up || !ex || ex->generated || !upstream_check_connected(cl) || !up->be_wr_ready)
        return false;
    if (cl->state == C_TUNNEL) {
        if (cl->in_ok == 0)
            return false;
        iov[cnt++] = (struct iovec){ buf_head(cl->in), cl->in_ok };
    } else {
        if (ex->head_out)
            iov[cnt++] = (struct iovec){ buf_head(cl->out), ex->head_out };
        if (!ex->head_kept && cl->in_ok)
            iov[cnt++] = (struct iovec){ buf_head(cl->in), cl->in_ok };
    }
    if (cnt == 0)
        return false;
    n = net_sendv(up->be_lfd.fd, iov, cnt);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) {
            up->be_wr_ready = false;
            return false;
        }
        if (cl->state == C_TUNNEL) {
            conn_close(cl, "backend write failed in tunnel");
            return true;
        }
        backend_failed(cl, strerror(errno));
        return true;
    }
    size_t want = iov[0].iov_len + (cnt > 1 ? iov[1].iov_len : 0);
    if ((size_t)n < want)
        up->be_wr_ready = false;
    if (cl->state != C_TUNNEL && ex->head_out) {
        uint32_t h = (uint32_t)n < ex->head_out ? (uint32_t)n : ex->head_out;
        buf_consume(cl->out, h);
        ex->head_out -= h;
        n -= h;
        if (ex->head_out == 0) {
            /* The response goes to `out` after a headroom for its head. */
            cl->out->start = cl->out->end = OUT_HEADROOM;
        }
    }
    if (n > 0) {
        buf_consume(cl->in, (uint32_t)n);
        cl->in_ok -= (uint32_t)n;
    }
    backend_touch(up);
    return true;
}

/* Handles a 1xx interim response at out->start; returns false when the
 * caller should stop (client closed). */
static void pass_interim(struct client *cl, int status, uint32_t hl)
{
    struct h1_exchange *ex = cl->ex;

    /* 100 Continue goes to clients that asked for it, other 1xx (103) to
     * HTTP/1.1 clients; RFC 9110 15.2: a proxy may drop them for 1.0. */
    if ((status == 100 && ex->expect_continue) || (status != 100 && ex->minor >= 1)) {
        cl->out_ok += hl;   /* sent verbatim, in order, before the final head */
        return;
    }
    memmove(buf_head(cl->out) + cl->out_ok, buf_head(cl->out) + cl->out_ok + hl,
            buf_len(cl->out) - cl->out_ok - hl);
    cl->out->end -= hl;
}

/* Parses the response head at out->start + out_ok and rewrites it in place. */
static bool parse_response(struct client *cl)
{
    struct h1_exchange *ex = cl->ex;
    struct http1_response *resp = &cl->w->h1->resp;
    uint32_t at;
    int n;

    if (!ex || ex->resp_head_done || ex->generated || ex->head_out || !cl->out)
        return false;
    at = cl->out->start + cl->out_ok;
    if (at >= cl->out->end)
        return false;
    n = http1_parse_response(cl->out->data + at, cl->out->end - at, BUF_SIZE - OUT_HEADROOM, resp);
    if (n == HTTP1_INCOMPLETE) {
        if (buf_room(cl->out) == 0)
            goto bad;
        return false;
    }
    if (n == HTTP1_ERROR)
        goto bad;
    if (resp->status >= 100 && resp->status < 200 && resp->status != 101) {
        pass_interim(cl, resp->status, (uint32_t)n);
        return true;
    }
    /* The final response has begun: the request can no longer be replayed. */
    if (ex->head_kept) {
        buf_consume(cl->in, ex->head_kept);
        ex->head_kept = 0;
    }
    bool tunnel = resp->status == 101 && ex->upgrade;
    bool has_body = http1_response_has_body((struct http1_slice){ ex->method, strlen(ex->method) },
                                            resp->status);
    if (tunnel)
        frame_init(&ex->resp, F_TUNNEL, 0);
    else if (!has_body)
        frame_init(&ex->resp, F_NONE, 0);
    else if (resp->info.chunked)
        frame_init(&ex->resp, ex->minor == 0 ? F_DECHUNK : F_CHUNKED, 0);
    else if (resp->info.content_length >= 0)
        frame_init(&ex->resp, F_LENGTH, resp->info.content_length);
    else
        frame_init(&ex->resp, F_CLOSE, 0);
    ex->backend_close = resp->info.conn_close || ex->resp.kind == F_CLOSE || !ex->req.done;
    ex->close_after = !tunnel && (ex->client_close || ex->resp.kind == F_CLOSE ||
                                  ex->resp.kind == F_DECHUNK || !ex->req.done || cl->w->draining);
    ex->status = resp->status;

    ssize_t hl = http1_write_response_head(resp, ex->close_after, ex->minor, cl->w->h1->scratch,
                                           sizeof cl->w->h1->scratch);
    /* The new head must end where the old one ended, right before the body
     * bytes; interim responses passed on (out_ok bytes) go right before it.
     * The headroom in front of `out` makes room when the head grows. */
    uint32_t end = at + (uint32_t)n;
    if (hl < 0 || end < (uint32_t)hl + cl->out_ok)
        goto bad;
    uint32_t new_at = end - (uint32_t)hl;
    if (cl->out_ok)
        memmove(cl->out->data + new_at - cl->out_ok, buf_head(cl->out), cl->out_ok);
    cl->out->start = new_at - cl->out_ok;
    memcpy(cl->out->data + new_at, cl->w->h1->scratch, (size_t)hl);
    cl->out_ok += (uint32_t)hl;
    ex->resp_head_done = true;
    if (tunnel) {
        cl->state = C_TUNNEL;
        cl->in_ok = cl->in ? buf_len(cl->in) : 0;
        conn_arm(cl, TUNNEL_TIMEOUT_MS);
    }
    return true;
bad:
    log_warn("backend 127.0.0.1:%u for %s: invalid response head: %s", ex->port, ex->host,
             resp->error ? resp->error : "too large");
    if (cl->be)
        drop_backend(cl);
    ex->backend_close = true;
    if (cl->out_ok == 0) {
        send_generated(cl, 502, "Bad Gateway", false, NULL);
        return true;
    }
    conn_close(cl, "invalid response from backend");
    return true;
}

/* Scans newly read response body bytes in `out`. */
static bool scan_response_body(struct client *cl)
{
    struct h1_exchange *ex = cl->ex;
    ssize_t k;

    if (!ex || !ex->resp_head_done || ex->generated || !cl->out)
        return false;
    if (ex->resp.done || cl->out_ok >= buf_len(cl->out))
        return false;
    if (ex->resp.kind == F_DECHUNK) {
        /* Decode in place: the chunk data moves left over the framing. */
        char *p = buf_head(cl->out) + cl->out_ok;
        size_t data = 0, avail = buf_len(cl->out) - cl->out_ok;
        k = http1_chunked_decode(&ex->resp.ch, p, avail, &data);
        if (k >= 0) {
            memmove(p + data, p + k, avail - (size_t)k);
            cl->out->end -= (uint32_t)((size_t)k - data);
            ex->resp.done = ex->resp.ch.done;
            k = (ssize_t)data;
        }
    } else {
        k = frame_scan(&ex->resp, buf_head(cl->out) + cl->out_ok, buf_len(cl->out) - cl->out_ok);
    }
    if (k < 0) {
        log_warn("backend 127.0.0.1:%u for %s: malformed chunked response", ex->port, ex->host);
        conn_close(cl, "malformed chunked response");
        return true;
    }
    cl->out_ok += (uint32_t)k;
    if (ex->resp.done && cl->out_ok < buf_len(cl->out)) {
        /* Bytes after the declared end: the backend cannot be trusted. */
        ex->backend_close = true;
        cl->out->end = cl->out->start + cl->out_ok;
    }
    return k > 0 || ex->resp.done;
}

static bool read_upstream(struct client *cl)
{
    struct backend *up = cl->be;
    struct h1_exchange *ex = cl->ex;
    ssize_t n;

    if (!up || !ex || ex->generated || ex->head_out || !up->be_connected || !up->be_rd_ready || up->be_eof ||
        ex->pipe[0] >= 0)
        return false;
    if (ex->resp_head_done && ex->resp.done && cl->state != C_TUNNEL)
        return false;
    if (buf_room(cl->out) == 0) {
        /* The headroom is only needed until the response head is placed. */
        if (cl->out->start > 0 && ex->resp_head_done)
            buf_compact(cl->out);
        else
            return false;
    }
    n = net_recv(up->be_lfd.fd, buf_tail(cl->out), buf_room(cl->out));
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) {
            up->be_rd_ready = false;
            return false;
        }
        n = -errno;
    }
    if (n <= 0) {
        /* EOF or error from the backend. */
        up->be_eof = true;
        if (cl->state == C_TUNNEL) {
            if (!cl->wr_shut && buf_len(cl->out) == 0) {
                transport_shutdown_write(&cl->tr);
                cl->wr_shut = true;
            }
            return true;
        }
        if (!ex->resp_head_done && cl->out_ok == 0 && buf_len(cl->out) == 0) {
            backend_failed(cl, n == 0 ? "closed the connection before responding" : strerror((int)-n));
            return true;
        }
        if (ex->resp_head_done && ex->resp.kind == F_CLOSE && n == 0) {
            ex->resp.done = true;
            ex->backend_close = true;
            return true;
        }
        log_warn("backend 127.0.0.1:%u for %s: connection lost mid-response", ex->port, ex->host);
        drop_backend(cl);
        if (!ex->resp_head_done && cl->out_ok == 0) {
            send_generated(cl, 502, "Bad Gateway", false, NULL);
            return true;
        }
        ex->close_after = true;
        ex->resp.done = true;   /* send what we have, then close */
        cl->out->end = cl->out->start + cl->out_ok;
        return true;
    }
    if (!up->be_hup && (size_t)n < buf_room(cl->out))
        up->be_rd_ready = false;
    cl->out->end += (uint32_t)n;
    if (cl->state == C_TUNNEL)
        cl->out_ok = buf_len(cl->out);
    backend_touch(up);
    return true;
}

/* ------------------------------------------------------------------ */
/* splice: long plain-HTTP bodies move backend -> pipe -> client inside   */
/* the kernel, without being copied through `out`.                      */

static bool pipe_get(struct worker *w, int fds[2])
{
    struct h1_shared *hs = w->h1;

    if (hs->npipes) {
        hs->npipes--;
        fds[0] = hs->pipes[hs->npipes][0];
        fds[1] = hs->pipes[hs->npipes][1];
        return true;
    }
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0)
        return false;
    /* A bigger pipe moves more per splice call; failure only costs speed. */
    fcntl(fds[1], F_SETPIPE_SZ, PIPE_SIZE);
    return true;
}

/* Starts splicing once the head and any buffered body bytes are out, for a
 * Content-Length body long enough to be worth a pipe. */
static bool maybe_start_splice(struct client *cl)
{
    struct h1_exchange *ex = cl->ex;

    if (cl->tls || !ex || !cl->be || ex->pipe[0] >= 0 || !ex->resp_head_done || ex->generated ||
        ex->resp.kind != F_LENGTH || ex->resp.done || ex->resp.remaining < SPLICE_MIN ||
        cl->state != C_EXCHANGE || (cl->out && buf_len(cl->out) > 0))
        return false;
    return pipe_get(cl->w, ex->pipe);
}

/* Moves body bytes backend -> pipe (only when the pipe is empty, so that
 * EAGAIN can only mean "no data yet") and pipe -> client. */
static bool splice_body(struct client *cl)
{
    struct h1_exchange *ex = cl->ex;
    struct backend *up = cl->be;
    bool moved = false;
    ssize_t n;

    if (!ex || ex->pipe[0] < 0)
        return false;
    if (ex->pipe_bytes == 0 && up && up->be_rd_ready && !ex->resp.done) {
        size_t want = ex->resp.remaining < PIPE_SIZE ? (size_t)ex->resp.remaining : PIPE_SIZE;
        n = splice(up->be_lfd.fd, NULL, ex->pipe[1], NULL, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n > 0) {
            ex->pipe_bytes = (uint32_t)n;
            ex->resp.remaining -= (uint64_t)n;
            if (ex->resp.remaining == 0)
                ex->resp.done = true;
            backend_touch(up);
            moved = true;
        } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            up->be_rd_ready = false;
        } else {
            log_warn("backend 127.0.0.1:%u for %s: connection lost mid-response%s%s", ex->port,
                     ex->host, n < 0 ? ": " : "", n < 0 ? strerror(errno) : "");
            conn_close(cl, "backend closed mid-body");
            return true;
        }
    }
    if (ex->pipe_bytes && cl->wr_ready) {
        n = splice(ex->pipe[0], NULL, cl->tr.fd, NULL, ex->pipe_bytes, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n > 0) {
            ex->pipe_bytes -= (uint32_t)n;
            ex->bytes_out += (uint64_t)n;
            conn_arm(cl, (uint32_t)cl->w->cfg->client_timeout_ms);
            moved = true;
        } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            cl->wr_ready = false;
        } else {
            conn_close(cl, n < 0 ? strerror(errno) : "client closed");
            return true;
        }
    }
    return moved;
}

/* ------------------------------------------------------------------ */
/* writing to the client and finishing exchanges                       */

static bool write_client(struct client *cl)
{
    struct iovec iov;
    ssize_t n;

    if (!cl->wr_ready || !cl->out || cl->out_ok == 0 || cl->wr_shut)
        return false;
    iov.iov_base = buf_head(cl->out);
    iov.iov_len = cl->out_ok;
    n = transport_writev(&cl->tr, &iov, 1);
    if (n == TRANSPORT_AGAIN) {
        cl->wr_ready = false;
        return false;
    }
    if (n < 0) {
        conn_close(cl, cl->tr.err ? cl->tr.err : "write failed");
        return true;
    }
    if (!cl->tls && (size_t)n < iov.iov_len)
        cl->wr_ready = false;
    buf_consume(cl->out, (uint32_t)n);
    cl->out_ok -= (uint32_t)n;
    if (cl->ex)
        cl->ex->bytes_out += (uint64_t)n;
    if (buf_len(cl->out) == 0 && cl->ex && cl->ex->resp_head_done && !cl->ex->generated)
        cl->out->start = cl->out->end = 0;
    conn_arm(cl, cl->state == C_TUNNEL ? TUNNEL_TIMEOUT_MS : (uint32_t)cl->w->cfg->client_timeout_ms);
    return true;
}

static void start_linger(struct client *cl)
{
    transport_shutdown_write(&cl->tr);
    cl->state = C_LINGER;
    if (cl->in)
        cl->in->start = cl->in->end = 0;
    conn_arm(cl, LINGER_MS);
}

/* The response has been fully sent: log, recycle the backend, then either
 * wait for the next request or close. */
static void finish_exchange(struct client *cl)
{
    struct h1_exchange *ex = cl->ex;
    struct backend *up = cl->be;

    log_access(cl);
    if (up) {
        cl->be = NULL;
        if (ex->backend_close || !ex->req.done || up->be_eof)
            backend_close(up);
        else
            backend_put(up);
    }
    if (ex->head_kept)
        buf_consume(cl->in, ex->head_kept);
    /* While draining, a response that did not say "Connection: close" (it
     * began before the drain) still leaves the connection open: the client
     * may already be sending its next request, which is answered with
     * close (DRAIN_IDLE_GRACE_MS). */
    bool close = ex->close_after || cl->rd_eof;
    bool req_done = ex->req.done;
    h1ex_put(cl->w, ex);
    cl->ex = NULL;
    cl->in_ok = cl->out_ok = 0;
    if (close) {
        /* Lingering (shut our side, read until the client's EOF) protects
         * the response from a reset when the client may still be sending:
         * an unread body or bytes already buffered. Otherwise close now, as
         * nginx's lingering_close heuristics do. */
        bool may_send_more = !req_done || (cl->in && buf_len(cl->in) > 0);
        if (may_send_more && !cl->rd_eof)
            start_linger(cl);
        else
            conn_close(cl, NULL);
        return;
    }
    cl->state = C_HEAD;
    release_idle_buffers(cl);
    conn_arm(cl, cl->w->draining ? DRAIN_IDLE_GRACE_MS : (uint32_t)cl->w->cfg->client_timeout_ms);
}

static bool check_done(struct client *cl)
{
    struct h1_exchange *ex = cl->ex;

    if (cl->state == C_TUNNEL) {
        struct backend *up = cl->be;
        /* Half-closes: pass each side's EOF on once its bytes are sent. */
        if (cl->rd_eof && up && cl->in_ok == 0 && !up->be_eof) {
            shutdown(up->be_lfd.fd, SHUT_WR);
        }
        if (up && up->be_eof && buf_len(cl->out) == 0 && !cl->wr_shut) {
            transport_shutdown_write(&cl->tr);
            cl->wr_shut = true;
        }
        if ((cl->rd_eof && up && up->be_eof && buf_len(cl->out) == 0) || !up) {
            conn_close(cl, "tunnel closed");
            return true;
        }
        return false;
    }
    if (cl->state != C_EXCHANGE || !ex)
        return false;
    if (ex->resp_head_done && ex->resp.done && cl->out_ok == 0 && ex->pipe_bytes == 0 &&
        (ex->req.done || ex->close_after)) {
        finish_exchange(cl);
        return true;
    }
    if (cl->rd_eof && !ex->req.done && !ex->generated) {
        conn_close(cl, "client closed during the request body");
        return true;
    }
    return false;
}

static bool linger_read(struct client *cl)
{
    char sink[4096];
    ssize_t n;

    if (cl->state != C_LINGER || !cl->rd_ready)
        return false;
    n = transport_read(&cl->tr, sink, sizeof sink);
    if (n == TRANSPORT_AGAIN) {
        cl->rd_ready = false;
        return false;
    }
    if (n <= 0) {
        conn_close(cl, NULL);
        return true;
    }
    return true;
}

static void h1_pump(struct client *cl)
{
    for (int rounds = 0; rounds < 64 && !cl->dead; rounds++) {
        bool moved = false;

        if (cl->state == C_LINGER) {
            if (!linger_read(cl))
                return;
            continue;
        }
        moved |= read_client(cl);
        if (cl->dead) return;
        moved |= parse_request(cl);
        if (cl->dead) return;
        moved |= scan_request_body(cl);
        if (cl->dead) return;
        if (cl->state == C_TUNNEL && cl->in)
            cl->in_ok = buf_len(cl->in);
        moved |= write_upstream(cl);
        if (cl->dead) return;
        moved |= read_upstream(cl);
        if (cl->dead) return;
        moved |= parse_response(cl);
        if (cl->dead) return;
        moved |= scan_response_body(cl);
        if (cl->dead) return;
        moved |= write_client(cl);
        if (cl->dead) return;
        if (maybe_start_splice(cl) || (cl->ex && cl->ex->pipe[0] >= 0)) {
            moved |= splice_body(cl);
            if (cl->dead) return;
        }
        moved |= check_done(cl);
        if (cl->dead) return;
        if (cl->state == C_HEAD && cl->rd_eof) {
            /* EOF before a complete head: nothing to answer. */
            conn_close(cl, "client closed");
            return;
        }
        if (!moved)
            return;
    }
    /* Still moving after many rounds (a fast stream): yield to the other
     * connections; the edge flags are still set, so come back before the
     * loop sleeps (proxy_run_deferred). */
    conn_defer(cl);
}

/* ------------------------------------------------------------------ */
/* drain and start                                                     */

/* Shutdown or takeover: an idle keep-alive connection gets a short grace
 * for one more request (answered with close); the others close after
 * their response (send_generated, parse_response, finish_exchange). */
static void h1_drain(struct client *cl)
{
    if (cl->state == C_HEAD && (!cl->in || buf_len(cl->in) == 0))
        conn_arm(cl, DRAIN_IDLE_GRACE_MS);
}

const struct client_proto client_h1_proto = { h1_pump, h1_on_timeout, h1_release, h1_drain };

void client_h1_start(struct client *cl)
{
    cl->proto = &client_h1_proto;
    cl->state = C_HEAD;
    cl->rd_ready = true;   /* records or bytes may already be buffered */
    h1_pump(cl);
}
