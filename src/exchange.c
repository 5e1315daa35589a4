/* exchange.c — one request to an HTTP/1.1 backend, protocol-free (see
 * exchange.h).
 *
 * Request side: the head (written by http1_write_request_head from a
 * request the client protocol decoded) and then the body queue, written
 * with one writev per pass as segments in order: head, chunk size line,
 * chunk data, chunk CRLF, last chunk with trailers. Response side: one
 * 16 KiB buffer; the head is parsed at its start, then body bytes are
 * decoded in place (chunked) and counted as `ready` for the owner to read.
 * Reading from the backend stops while the buffer is full: a slow client
 * slows the backend. */
#include "exchange.h"
#include "backend.h"
#include "buf.h"
#include "cli.h"
#include "cmd.h"
#include "domain.h"
#include "log.h"
#include "mem.h"
#include "net.h"
#include "worker.h"
#include <errno.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#define TRAILERS_MAX 4096   /* trailer section bytes passed on; more drops them all */
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"   /* RFC 6455 1.3 */

enum resp_framing {
    RF_NONE,       /* no body */
    RF_LENGTH,     /* Content-Length */
    RF_CHUNKED,    /* chunked, decoded here */
    RF_CLOSE,      /* until the backend closes */
    RF_TUNNEL,     /* WebSocket after 101: raw bytes both ways */
};

/* Kinds of the write segments, in wire order. */
enum seg_kind { SEG_HEAD, SEG_FRAME, SEG_DATA, SEG_CRLF, SEG_TAIL };

struct exchange {
    struct worker *ex_w;
    void *ex_owner;
    const struct exchange_ops *ex_ops;
    struct backend *ex_be;
    uint64_t ex_start_ms;
    uint16_t ex_port;
    int ex_status;                 /* final status given to the owner */
    bool ex_websocket;
    bool ex_is_head;               /* HEAD: the response has no body */
    bool ex_retried;               /* replayed once on a fresh connection */
    bool ex_generated;             /* the response is made here */
    bool ex_head_done;             /* final response head given to the owner */
    bool ex_resp_done;             /* whole response body received */
    bool ex_backend_close;         /* the backend connection cannot be reused */
    bool ex_aborted;
    bool ex_in_kick;               /* re-entrancy guard for pump() */

    /* request out */
    char *ex_head;                 /* request head for the backend */
    size_t ex_head_len, ex_head_off;
    bool ex_req_chunked;           /* body sent chunked (no Content-Length) */
    bool ex_req_ended;             /* the client finished the request */
    bool ex_req_sent;              /* ... and all of it reached the backend */
    bool ex_body_started;          /* body bytes have left: no replay */
    char *ex_rq;                   /* request body queue (EXCHANGE_BODY_WINDOW bytes) */
    size_t ex_rq_start, ex_rq_end;
    char ex_frame[24];             /* chunk size line being sent */
    size_t ex_frame_len, ex_frame_off;
    size_t ex_chunk_left;          /* data bytes of the current chunk not yet sent */
    size_t ex_crlf_left;           /* bytes of the CRLF after the current chunk */
    char *ex_tail;                 /* last chunk and trailers */
    size_t ex_tail_len, ex_tail_off;

    /* response in */
    struct buf *ex_resp;
    uint8_t ex_rf;                 /* enum resp_framing */
    uint64_t ex_remaining;         /* RF_LENGTH: body bytes still expected */
    struct http1_chunked ex_ch;
    size_t ex_ready;               /* decoded body bytes at ex_resp's start */
    const char *ex_gen_body;       /* generated response body */
    size_t ex_gen_len, ex_gen_off;
    struct http1_header ex_fields[HTTP1_MAX_HEADERS + 2];
    char ex_gen_cl[24];
    char ex_ws_accept[32];         /* expected Sec-WebSocket-Accept */
    char *ex_trailers;             /* the chunked response's trailer lines (TRAILERS_MAX) */

    /* access log */
    char ex_host[DOMAIN_MAX + 1];
    char ex_method[16];
    char ex_target[256];
    char ex_addr[46];
    const char *ex_proto_label;
};

static void pump(struct exchange *ex);
static const struct backend_ops exchange_backend_ops;

/* ------------------------------------------------------------------ */
/* generated responses                                                 */

static void drop_backend(struct exchange *ex)
{
    if (ex->ex_be) {
        backend_close(ex->ex_be);
        ex->ex_be = NULL;
    }
}

/* Answers the request with a plain-text response made here. body must be
 * a string constant (it is read later, from exchange_read_body). */
static void respond_generated(struct exchange *ex, int status, const char *body)
{
    static const struct http1_slice ct_name = { "content-type", 12 };
    static const struct http1_slice ct_value = { "text/plain; charset=utf-8", 25 };
    static const struct http1_slice cl_name = { "content-length", 14 };
    struct exchange_head h = { .status = status, .headers = ex->ex_fields, .num_headers = 2 };

    drop_backend(ex);
    ex->ex_generated = true;
    ex->ex_head_done = true;
    ex->ex_resp_done = true;
    ex->ex_status = status;
    ex->ex_gen_body = body;
    ex->ex_gen_len = ex->ex_is_head ? 0 : strlen(body);
    ex->ex_gen_off = 0;
    int n = snprintf(ex->ex_gen_cl, sizeof ex->ex_gen_cl, "%zu", strlen(body));
    ex->ex_fields[0] = (struct http1_header){ ct_name, ct_value };
    ex->ex_fields[1] = (struct http1_header){ cl_name, { ex->ex_gen_cl, (size_t)n } };
    h.has_body = ex->ex_gen_len > 0;
    ex->ex_ops->on_head(ex->ex_owner, &h);
}

/* ------------------------------------------------------------------ */
/* request head                                                        */

/* A fresh Sec-WebSocket-Key (RFC 6455 4.1) into key (25 bytes), and the
 * Sec-WebSocket-Accept the backend must answer with into ex_ws_accept. */
static int make_ws_key(struct exchange *ex, char key[32])
{
    unsigned char nonce[16], digest[SHA_DIGEST_LENGTH];
    char cat[64];

    if (RAND_bytes(nonce, sizeof nonce) != 1)
        return -1;
    EVP_EncodeBlock((unsigned char *)key, nonce, sizeof nonce);
    int n = snprintf(cat, sizeof cat, "%s%s", key, WS_GUID);
    SHA1((const unsigned char *)cat, (size_t)n, digest);
    EVP_EncodeBlock((unsigned char *)ex->ex_ws_accept, digest, sizeof digest);
    return 0;
}

/* Builds the HTTP/1.1 request head for the backend (http1.c writes it:
 * hop-by-hop fields out, X-Forwarded-* in). Returns 0 or -1 (too large). */
static int build_request_head(struct exchange *ex, const struct exchange_req *r)
{
    static const struct http1_slice host_name = { "Host", 4 };
    static const struct http1_slice te_name = { "Transfer-Encoding", 17 }, te_value = { "chunked", 7 };
    static const struct http1_slice up_name = { "Upgrade", 7 }, up_value = { "websocket", 9 };
    static const struct http1_slice key_name = { "Sec-WebSocket-Key", 17 };
    struct http1_request reqbuf, *req = &reqbuf;   /* a few KiB of stack, no malloc per request */
    struct http1_forward fwd = { .client_addr = r->client_addr, .proto = "https" };
    char key[32];
    size_t cap = 1024 + r->authority.len * 2 + r->path.len + r->method.len;
    int rc = -1;

    /* Only the fields the head writer reads; the header array is filled
     * up to num_headers below. */
    req->absolute_form = false;
    req->num_headers = 0;
    req->error_status = 0;
    req->error = NULL;
    memset(&req->info, 0, sizeof req->info);
    req->method = ex->ex_websocket ? (struct http1_slice){ "GET", 3 } : r->method;
    req->path = r->path;
    req->target = r->path;
    req->minor_version = 1;
    req->info.content_length = r->content_length;
    req->info.host = r->authority;
    req->info.conn_upgrade = ex->ex_websocket;
    req->headers[req->num_headers++] = (struct http1_header){ host_name, r->authority };
    if (ex->ex_websocket) {
        if (make_ws_key(ex, key) < 0)
            goto out;
        req->headers[req->num_headers++] = (struct http1_header){ up_name, up_value };
        req->headers[req->num_headers++] =
            (struct http1_header){ key_name, { key, strlen(key) } };
    }
    for (size_t i = 0; i < r->num_headers; i++) {
        const struct http1_header *f = &r->headers[i];
        if (ex->ex_websocket && http1_slice_eq(f->name, "sec-websocket-key"))
            continue;   /* ours replaces any the client sent */
        if (req->num_headers + 1 >= HTTP1_HEADER_SLOTS)
            goto out;
        req->headers[req->num_headers++] = *f;
        cap += f->name.len + f->value.len + 4;
    }
    if (ex->ex_req_chunked)
        req->headers[req->num_headers++] = (struct http1_header){ te_name, te_value };
    ex->ex_head = xmalloc(cap);
    ssize_t n = http1_write_request_head(req, &fwd, ex->ex_head, cap);
    if (n < 0)
        goto out;
    ex->ex_head_len = (size_t)n;
    rc = 0;
out:
    return rc;
}

/* ------------------------------------------------------------------ */
/* start                                                               */

static bool connect_backend(struct exchange *ex, bool fresh)
{
    ex->ex_be = backend_get(ex->ex_w, ex->ex_port, fresh, ex, &exchange_backend_ops);
    if (!ex->ex_be) {
        log_warn("backend 127.0.0.1:%u for %s: connect: %s", ex->ex_port, ex->ex_host, strerror(errno));
        respond_generated(ex, 502, "Bad Gateway");
        return false;
    }
    return true;
}

struct exchange *exchange_start(struct worker *w, const struct exchange_req *r, void *owner,
                                const struct exchange_ops *ops)
{
    struct exchange *ex = xcalloc(1, sizeof *ex);
    char sni[DOMAIN_MAX + 1];
    int hl;

    ex->ex_w = w;
    ex->ex_owner = owner;
    ex->ex_ops = ops;
    ex->ex_start_ms = loop_now_ms(w->loop);
    ex->ex_websocket = r->websocket;
    ex->ex_is_head = http1_slice_eq(r->method, "head");
    ex->ex_proto_label = r->proto_label;
    ex->ex_req_chunked = r->has_body && r->content_length < 0 && !r->websocket;
    ex->ex_req_ended = !r->has_body;
    http1_slice_copy(ex->ex_method, sizeof ex->ex_method, r->method);
    http1_slice_copy(ex->ex_target, sizeof ex->ex_target, r->path);
    size_t al = strnlen(r->client_addr, sizeof ex->ex_addr - 1);
    memcpy(ex->ex_addr, r->client_addr, al);   /* no printf on the request path */
    ex->ex_addr[al] = '\0';

    hl = domain_from_host_header(r->authority.base, r->authority.len, ex->ex_host, sizeof ex->ex_host);
    if (hl <= 0) {
        http1_slice_copy(ex->ex_host, sizeof ex->ex_host, r->authority);
        respond_generated(ex, r->authority.len ? 404 : 400,
                          r->authority.len ? "Domain Not Recognized" : "Bad Request");
        return ex;
    }
    /* A connection reused for another name than its handshake's (RFC 9113
     * 9.1.1): the browser retries on a connection of its own on 421. */
    if (r->sni && (domain_from_host_header(r->sni, strlen(r->sni), sni, sizeof sni) != hl ||
                   memcmp(sni, ex->ex_host, (size_t)hl) != 0)) {
        respond_generated(ex, 421, "Misdirected Request");
        return ex;
    }
    ex->ex_port = cmd_lookup_route(ex->ex_host, (size_t)hl);   /* waits for a racing add */
    if (ex->ex_port == 0) {
        respond_generated(ex, 404, "Domain Not Recognized");
        return ex;
    }
    if (build_request_head(ex, r) < 0) {
        respond_generated(ex, 431, "Request Header Fields Too Large");
        return ex;
    }
    if (connect_backend(ex, false))
        pump(ex);
    return ex;
}

/* ------------------------------------------------------------------ */
/* request out                                                         */

size_t exchange_write_body(struct exchange *ex, const void *data, size_t len)
{
    size_t used, room;

    if (ex->ex_req_ended)
        return 0;
    if (ex->ex_generated || ex->ex_aborted ||
        (ex->ex_websocket && ex->ex_head_done && ex->ex_rf != RF_TUNNEL)) {
        /* Nobody will read it: take it so the client's window keeps moving. */
        ex->ex_ops->on_req_drained(ex->ex_owner, len);
        return len;
    }
    if (!ex->ex_rq)
        ex->ex_rq = xmalloc(EXCHANGE_BODY_WINDOW);
    used = ex->ex_rq_end - ex->ex_rq_start;
    if (ex->ex_rq_end + len > EXCHANGE_BODY_WINDOW && ex->ex_rq_start > 0) {
        memmove(ex->ex_rq, ex->ex_rq + ex->ex_rq_start, used);
        ex->ex_rq_start = 0;
        ex->ex_rq_end = used;
    }
    room = EXCHANGE_BODY_WINDOW - ex->ex_rq_end;
    if (len > room)
        len = room;
    memcpy(ex->ex_rq + ex->ex_rq_end, data, len);
    ex->ex_rq_end += len;
    return len;
}

void exchange_end_body(struct exchange *ex, const struct http1_header *trailers, size_t n)
{
    if (ex->ex_req_ended)
        return;
    ex->ex_req_ended = true;
    if (!ex->ex_req_chunked)
        return;
    size_t cap = 8;
    for (size_t i = 0; i < n; i++)
        cap += trailers[i].name.len + trailers[i].value.len + 4;
    ex->ex_tail = xmalloc(cap);
    size_t at = 0;
    memcpy(ex->ex_tail, "0\r\n", 3);
    at = 3;
    for (size_t i = 0; i < n; i++) {
        memcpy(ex->ex_tail + at, trailers[i].name.base, trailers[i].name.len);
        at += trailers[i].name.len;
        memcpy(ex->ex_tail + at, ": ", 2);
        at += 2;
        memcpy(ex->ex_tail + at, trailers[i].value.base, trailers[i].value.len);
        at += trailers[i].value.len;
        memcpy(ex->ex_tail + at, "\r\n", 2);
        at += 2;
    }
    memcpy(ex->ex_tail + at, "\r\n", 2);
    ex->ex_tail_len = at + 2;
}

struct seg {
    uint8_t kind;
    size_t len;
};

/* Collects what can be written now, in wire order. Returns the count. */
static int collect_segments(struct exchange *ex, struct iovec *iov, struct seg *seg)
{
    int n = 0;
    size_t queued = ex->ex_rq_end - ex->ex_rq_start;

#define ADD(k, p, l) do { iov[n] = (struct iovec){ (void *)(p), (l) }; seg[n] = (struct seg){ (k), (l) }; n++; } while (0)
    if (ex->ex_head_off < ex->ex_head_len) {
        ADD(SEG_HEAD, ex->ex_head + ex->ex_head_off, ex->ex_head_len - ex->ex_head_off);
        if (ex->ex_websocket)
            return n;   /* nothing goes before the backend's 101 */
    }
    if (ex->ex_websocket && ex->ex_rf != RF_TUNNEL)
        return n;
    if (!ex->ex_req_chunked) {
        if (queued)
            ADD(SEG_DATA, ex->ex_rq + ex->ex_rq_start, queued);
        return n;
    }
    if (ex->ex_frame_off == ex->ex_frame_len && ex->ex_chunk_left == 0 && ex->ex_crlf_left == 0 &&
        queued) {
        ex->ex_frame_len = (size_t)snprintf(ex->ex_frame, sizeof ex->ex_frame, "%zx\r\n", queued);
        ex->ex_frame_off = 0;
        ex->ex_chunk_left = queued;
        ex->ex_crlf_left = 2;
    }
    if (ex->ex_frame_off < ex->ex_frame_len)
        ADD(SEG_FRAME, ex->ex_frame + ex->ex_frame_off, ex->ex_frame_len - ex->ex_frame_off);
    size_t d = queued < ex->ex_chunk_left ? queued : ex->ex_chunk_left;
    if (d)
        ADD(SEG_DATA, ex->ex_rq + ex->ex_rq_start, d);
    if (d < ex->ex_chunk_left)
        return n;
    if (ex->ex_crlf_left)
        ADD(SEG_CRLF, &"\r\n"[2 - ex->ex_crlf_left], ex->ex_crlf_left);
    if (ex->ex_req_ended && queued == d && ex->ex_tail)
        ADD(SEG_TAIL, ex->ex_tail + ex->ex_tail_off, ex->ex_tail_len - ex->ex_tail_off);
#undef ADD
    return n;
}

/* Accounts for k written bytes over the segments, in order. */
static void advance_segments(struct exchange *ex, const struct seg *seg, int n, size_t k)
{
    size_t drained = 0;

    for (int i = 0; i < n && k > 0; i++) {
        size_t m = k < seg[i].len ? k : seg[i].len;
        k -= m;
        switch (seg[i].kind) {
        case SEG_HEAD: ex->ex_head_off += m; break;
        case SEG_FRAME: ex->ex_frame_off += m; break;
        case SEG_DATA:
            ex->ex_rq_start += m;
            if (ex->ex_req_chunked)
                ex->ex_chunk_left -= m;
            drained += m;
            break;
        case SEG_CRLF: ex->ex_crlf_left -= m; break;
        case SEG_TAIL: ex->ex_tail_off += m; break;
        }
    }
    if (ex->ex_rq_start == ex->ex_rq_end)
        ex->ex_rq_start = ex->ex_rq_end = 0;
    if (drained) {
        ex->ex_body_started = true;
        ex->ex_ops->on_req_drained(ex->ex_owner, drained);
    }
}

static bool request_all_sent(const struct exchange *ex)
{
    return ex->ex_req_ended && ex->ex_head_off == ex->ex_head_len && ex->ex_rq_start == ex->ex_rq_end &&
           ex->ex_chunk_left == 0 && ex->ex_crlf_left == 0 && ex->ex_tail_off == ex->ex_tail_len;
}

static void backend_failed(struct exchange *ex, const char *why);

/* Returns true when bytes moved. */
static bool write_backend(struct exchange *ex)
{
    struct backend *be = ex->ex_be;
    struct iovec iov[5];
    struct seg seg[5];
    ssize_t k;
    int n;

    if (!be || !be->be_connected || !be->be_wr_ready || ex->ex_req_sent)
        return false;
    n = collect_segments(ex, iov, seg);
    if (n == 0) {
        if (request_all_sent(ex)) {
            ex->ex_req_sent = true;
            if (ex->ex_rf == RF_TUNNEL)
                shutdown(be->be_lfd.fd, SHUT_WR);   /* the client ended its side */
        }
        return false;
    }
    k = net_sendv(be->be_lfd.fd, iov, n);
    if (k < 0) {
        if (errno == EAGAIN || errno == EINTR) {
            be->be_wr_ready = false;
            return false;
        }
        backend_failed(ex, strerror(errno));
        return true;
    }
    size_t want = 0;
    for (int i = 0; i < n; i++)
        want += iov[i].iov_len;
    if ((size_t)k < want)
        be->be_wr_ready = false;
    advance_segments(ex, seg, n, (size_t)k);
    backend_touch(be);
    return true;
}

/* ------------------------------------------------------------------ */
/* response in                                                         */

/* Failure before any response byte: replay a body-less request once on a
 * fresh connection when the pooled one was stale, else 502. */
static void backend_failed(struct exchange *ex, const char *why)
{
    bool replay = ex->ex_be && ex->ex_be->be_reused && !ex->ex_retried && !ex->ex_body_started &&
                  !ex->ex_head_done && (!ex->ex_resp || buf_len(ex->ex_resp) == 0);

    drop_backend(ex);
    if (ex->ex_head_done) {
        log_warn("backend 127.0.0.1:%u for %s: connection lost mid-response: %s", ex->ex_port,
                 ex->ex_host, why);
        ex->ex_aborted = true;
        ex->ex_ops->on_abort(ex->ex_owner, "backend connection lost mid-response");
        return;
    }
    if (replay) {
        ex->ex_retried = true;
        ex->ex_head_off = 0;
        if (connect_backend(ex, true))
            return;
        return;
    }
    log_warn("backend 127.0.0.1:%u for %s: %s", ex->ex_port, ex->ex_host, why);
    respond_generated(ex, 502, "Bad Gateway");
}

/* Copies the end-to-end fields of resp into ex_fields for the owner: the
 * hop-by-hop ones (http1.c's table and Connection), Transfer-Encoding (the
 * owner frames the body itself) and Sec-WebSocket-Accept (checked here)
 * stay behind. */
static size_t filter_fields(struct exchange *ex, const struct http1_response *resp)
{
    size_t n = http1_end_to_end_fields(resp->headers, resp->num_headers, ex->ex_fields), k = 0;

    for (size_t i = 0; i < n; i++) {
        struct http1_slice name = ex->ex_fields[i].name;
        if (http1_slice_eq(name, "sec-websocket-accept") ||
            (ex->ex_websocket && resp->status == 101 && http1_slice_eq(name, "content-length")))
            continue;
        ex->ex_fields[k++] = ex->ex_fields[i];
    }
    return k;
}

static bool ws_accept_ok(const struct exchange *ex, const struct http1_response *resp)
{
    for (size_t i = 0; i < resp->num_headers; i++)
        if (http1_slice_eq(resp->headers[i].name, "sec-websocket-accept"))
            return resp->headers[i].value.len == strlen(ex->ex_ws_accept) &&
                   memcmp(resp->headers[i].value.base, ex->ex_ws_accept, resp->headers[i].value.len) == 0;
    return false;
}

/* Parses the response head at the buffer's start. Returns true when
 * something changed. */
static bool parse_head(struct exchange *ex)
{
    struct http1_response resp;
    struct buf *b = ex->ex_resp;
    int n;

    if (ex->ex_head_done || !b || buf_len(b) == 0)
        return false;
    n = http1_parse_response(buf_head(b), buf_len(b), BUF_SIZE, &resp);
    if (n == HTTP1_INCOMPLETE) {
        if (buf_room(b) > 0)
            return false;
        resp.error = "too large";
        n = HTTP1_ERROR;
    }
    if (n == HTTP1_ERROR) {
        log_warn("backend 127.0.0.1:%u for %s: invalid response head: %s", ex->ex_port, ex->ex_host,
                 resp.error ? resp.error : "malformed");
        respond_generated(ex, 502, "Bad Gateway");
        return true;
    }
    struct exchange_head h = { .status = resp.status, .headers = ex->ex_fields };
    if (resp.status >= 100 && resp.status < 200 && resp.status != 101) {
        h.num_headers = filter_fields(ex, &resp);
        ex->ex_ops->on_interim(ex->ex_owner, &h);
        buf_consume(b, (uint32_t)n);
        return true;
    }
    if (resp.status == 101 && (!ex->ex_websocket || !ws_accept_ok(ex, &resp))) {
        log_warn("backend 127.0.0.1:%u for %s: 101 %s", ex->ex_port, ex->ex_host,
                 ex->ex_websocket ? "with a wrong Sec-WebSocket-Accept" : "to a request that asked for no upgrade");
        respond_generated(ex, 502, "Bad Gateway");
        return true;
    }
    bool has_body = http1_response_has_body((struct http1_slice){ ex->ex_method, strlen(ex->ex_method) },
                                            resp.status);
    if (resp.status == 101)
        ex->ex_rf = RF_TUNNEL;
    else if (!has_body)
        ex->ex_rf = RF_NONE;
    else if (resp.info.chunked) {
        ex->ex_rf = RF_CHUNKED;
        ex->ex_trailers = xmalloc(TRAILERS_MAX);
        ex->ex_ch.trailers = ex->ex_trailers;
        ex->ex_ch.trailers_cap = TRAILERS_MAX;
    }
    else if (resp.info.content_length >= 0)
        ex->ex_rf = RF_LENGTH;
    else
        ex->ex_rf = RF_CLOSE;
    ex->ex_remaining = resp.info.content_length >= 0 ? (uint64_t)resp.info.content_length : 0;
    ex->ex_backend_close = resp.info.conn_close || ex->ex_rf == RF_CLOSE || ex->ex_rf == RF_TUNNEL;
    ex->ex_resp_done = ex->ex_rf == RF_NONE || (ex->ex_rf == RF_LENGTH && ex->ex_remaining == 0);
    ex->ex_head_done = true;
    ex->ex_status = resp.status == 101 ? 200 : resp.status;   /* RFC 8441 5: 2xx for the tunnel */
    h.status = ex->ex_status;
    h.num_headers = filter_fields(ex, &resp);
    h.has_body = ex->ex_rf != RF_NONE;
    if (ex->ex_rf == RF_NONE && ex->ex_is_head)
        h.has_body = false;
    ex->ex_ops->on_head(ex->ex_owner, &h);
    /* The head's bytes are not needed any more: the owner copied the fields. */
    buf_consume(b, (uint32_t)n);
    if (ex->ex_rf == RF_NONE && buf_len(b) > 0) {
        ex->ex_backend_close = true;   /* bytes after a body-less response */
        b->start = b->end = 0;
    }
    return true;
}

/* Decodes / counts newly read body bytes past ex_ready. */
static bool scan_body(struct exchange *ex)
{
    struct buf *b = ex->ex_resp;
    size_t avail;

    if (!ex->ex_head_done || ex->ex_generated || !b)
        return false;
    avail = buf_len(b) - ex->ex_ready;
    if (avail == 0 || ex->ex_resp_done)
        return false;
    switch (ex->ex_rf) {
    case RF_LENGTH: {
        size_t n = avail < ex->ex_remaining ? avail : (size_t)ex->ex_remaining;
        ex->ex_remaining -= n;
        ex->ex_ready += n;
        if (ex->ex_remaining == 0) {
            ex->ex_resp_done = true;
            if (n < avail) {
                ex->ex_backend_close = true;   /* bytes after the declared end */
                b->end = b->start + (uint32_t)ex->ex_ready;
            }
        }
        return true;
    }
    case RF_CHUNKED: {
        char *p = buf_head(b) + ex->ex_ready;
        size_t data = 0;
        ssize_t k = http1_chunked_decode(&ex->ex_ch, p, avail, &data);
        if (k < 0) {
            log_warn("backend 127.0.0.1:%u for %s: malformed chunked response", ex->ex_port, ex->ex_host);
            drop_backend(ex);
            ex->ex_aborted = true;
            ex->ex_ops->on_abort(ex->ex_owner, "malformed chunked response");
            return true;
        }
        memmove(p + data, p + k, avail - (size_t)k);
        b->end -= (uint32_t)((size_t)k - data);
        ex->ex_ready += data;
        if (ex->ex_ch.done) {
            ex->ex_resp_done = true;
            if (buf_len(b) > ex->ex_ready) {
                ex->ex_backend_close = true;
                b->end = b->start + (uint32_t)ex->ex_ready;
            }
        }
        return (size_t)k > 0;
    }
    default:   /* RF_CLOSE, RF_TUNNEL: everything until EOF */
        ex->ex_ready += avail;
        return true;
    }
}

/* Reads from the backend into the response buffer while it has room. */
static bool read_backend(struct exchange *ex)
{
    struct backend *be = ex->ex_be;
    struct buf *b;
    ssize_t n;

    if (!be || !be->be_connected || !be->be_rd_ready || be->be_eof || ex->ex_resp_done)
        return false;
    if (ex->ex_websocket && !ex->ex_head_done && ex->ex_head_off < ex->ex_head_len)
        return false;
    if (!ex->ex_resp)
        ex->ex_resp = buf_get(&ex->ex_w->bufs);
    b = ex->ex_resp;
    if (buf_room(b) == 0 && b->start > 0)
        buf_compact(b);
    if (buf_room(b) == 0)
        return false;   /* the owner reads first: backpressure */
    n = net_recv(be->be_lfd.fd, buf_tail(b), buf_room(b));
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        be->be_rd_ready = false;
        return false;
    }
    if (n <= 0) {
        be->be_eof = true;
        if (!ex->ex_head_done && buf_len(b) == 0) {
            backend_failed(ex, n == 0 ? "closed the connection before responding" : strerror(errno));
            return true;
        }
        if (ex->ex_head_done && (ex->ex_rf == RF_CLOSE || ex->ex_rf == RF_TUNNEL) && n == 0) {
            ex->ex_resp_done = true;
            ex->ex_backend_close = true;
            return true;
        }
        if (!ex->ex_head_done) {
            log_warn("backend 127.0.0.1:%u for %s: closed mid-head", ex->ex_port, ex->ex_host);
            respond_generated(ex, 502, "Bad Gateway");
            return true;
        }
        backend_failed(ex, n == 0 ? "closed" : strerror(errno));
        return true;
    }
    if (!be->be_hup && (size_t)n < buf_room(b))
        be->be_rd_ready = false;
    b->end += (uint32_t)n;
    backend_touch(be);
    return true;
}

size_t exchange_read_body(struct exchange *ex, void *dst, size_t cap, bool *eof)
{
    size_t n;

    *eof = false;
    if (ex->ex_generated) {
        n = ex->ex_gen_len - ex->ex_gen_off;
        if (n > cap)
            n = cap;
        memcpy(dst, ex->ex_gen_body + ex->ex_gen_off, n);
        ex->ex_gen_off += n;
        *eof = ex->ex_gen_off == ex->ex_gen_len;
        return n;
    }
    n = ex->ex_ready < cap ? ex->ex_ready : cap;
    if (n) {
        memcpy(dst, buf_head(ex->ex_resp), n);
        buf_consume(ex->ex_resp, (uint32_t)n);
        ex->ex_ready -= n;
    }
    *eof = ex->ex_resp_done && ex->ex_ready == 0 && !ex->ex_aborted;
    return n;
}

/* ------------------------------------------------------------------ */
/* the pump and the backend's callbacks                               */

static void pump(struct exchange *ex)
{
    int e = 0;

    if (ex->ex_in_kick)
        return;
    ex->ex_in_kick = true;
    bool busy = true;   /* still moving when the rounds ran out */
    for (int rounds = 0; rounds < 32 && ex->ex_be && !ex->ex_aborted; rounds++) {
        bool moved = false;
        int c = backend_check_connected(ex->ex_be, &e);
        if (c < 0) {
            log_warn("backend 127.0.0.1:%u for %s: connect: %s", ex->ex_port, ex->ex_host, strerror(e));
            drop_backend(ex);
            respond_generated(ex, 502, "Bad Gateway");
            break;
        }
        if (c == 0) {
            busy = false;   /* the connect's completion is an event of its own */
            break;
        }
        size_t ready_before = ex->ex_ready;
        bool done_before = ex->ex_resp_done;
        moved |= write_backend(ex);
        if (!ex->ex_be)
            break;
        moved |= read_backend(ex);
        moved |= parse_head(ex);
        moved |= scan_body(ex);
        if (ex->ex_head_done && !ex->ex_generated && !ex->ex_aborted &&
            (ex->ex_ready > ready_before || (ex->ex_resp_done && !done_before)))
            ex->ex_ops->on_body(ex->ex_owner);
        if (!moved) {
            busy = false;
            break;
        }
    }
    ex->ex_in_kick = false;
    /* Edge-triggered readiness brings no new event for bytes we left: have
     * the owner kick us again soon (its on_body marks the exchange). */
    if (busy && ex->ex_be && !ex->ex_aborted && !ex->ex_generated)
        ex->ex_ops->on_body(ex->ex_owner);
}

void exchange_kick(struct exchange *ex)
{
    pump(ex);
}

static void on_backend_ready(void *owner)
{
    pump(owner);
}

static void on_backend_timeout(void *owner)
{
    struct exchange *ex = owner;

    log_warn("backend 127.0.0.1:%u for %s timed out after %d ms", ex->ex_port, ex->ex_host,
             ex->ex_w->cfg->backend_timeout_ms);
    drop_backend(ex);
    if (!ex->ex_head_done) {
        respond_generated(ex, 504, "Gateway Timeout");
        return;
    }
    ex->ex_aborted = true;
    ex->ex_ops->on_abort(ex->ex_owner, "backend timed out mid-response");
}

static const struct backend_ops exchange_backend_ops = { on_backend_ready, on_backend_timeout };

size_t exchange_trailers(struct exchange *ex, struct http1_header *out, size_t max)
{
    const char *p = ex->ex_trailers, *end = p + ex->ex_ch.trailers_len;
    size_t n = 0;

    if (ex->ex_rf != RF_CHUNKED || !ex->ex_resp_done || ex->ex_ch.trailers_cut)
        return 0;   /* cut trailers are dropped whole: half a set could mislead */
    while (p < end && n < max) {
        const char *eol = memchr(p, '\r', (size_t)(end - p));
        const char *colon = memchr(p, ':', (size_t)((eol ? eol : end) - p));
        if (!eol || !colon)
            break;
        struct http1_slice name = { p, (size_t)(colon - p) };
        const char *v = colon + 1, *ve = eol;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        out[n++] = (struct http1_header){ name, { v, (size_t)(ve - v) } };
        p = eol + 2;
    }
    /* Hop-by-hop fields never pass; framing and routing fields are not
     * allowed in trailers (RFC 9110 6.5.1). */
    struct http1_header kept[32];
    size_t k = 0, m = http1_end_to_end_fields(out, n < 32 ? n : 32, kept);
    for (size_t i = 0; i < m; i++)
        if (!http1_slice_eq(kept[i].name, "content-length") && !http1_slice_eq(kept[i].name, "host"))
            out[k++] = kept[i];
    return k;
}

bool exchange_waits_for_backend(const struct exchange *ex)
{
    if (ex->ex_generated || ex->ex_aborted || !ex->ex_be)
        return false;
    return (ex->ex_req_ended && !ex->ex_head_done) || ex->ex_rf == RF_TUNNEL;
}

int exchange_status(const struct exchange *ex)
{
    return ex->ex_status;
}

void exchange_free(struct exchange *ex, uint64_t bytes_out)
{
    if (!ex)
        return;
    if (ex->ex_status && log_access_enabled())
        log_info("access %s %s \"%s %s\" %d %llu %llums %s", ex->ex_addr, ex->ex_host[0] ? ex->ex_host : "-",
                 ex->ex_method, ex->ex_target, ex->ex_status, (unsigned long long)bytes_out,
                 (unsigned long long)(loop_now_ms(ex->ex_w->loop) - ex->ex_start_ms),
                 ex->ex_proto_label ? ex->ex_proto_label : "");
    if (ex->ex_be) {
        bool clean = ex->ex_resp_done && request_all_sent(ex) && !ex->ex_backend_close && !ex->ex_be->be_eof &&
                     ex->ex_ready == 0 && !ex->ex_aborted;
        if (clean)
            backend_put(ex->ex_be);
        else
            backend_close(ex->ex_be);
        ex->ex_be = NULL;
    }
    if (ex->ex_resp)
        buf_put(&ex->ex_w->bufs, ex->ex_resp);
    free(ex->ex_head);
    free(ex->ex_rq);
    free(ex->ex_tail);
    free(ex->ex_trailers);
    free(ex);
}
