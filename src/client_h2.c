/* client_h2.c — HTTP/2 for clients on libnghttp2 (see client_h2.h).
 *
 * nghttp2 parses frames, keeps the HPACK state and the streams, enforces
 * RFC 9113's message rules (pseudo-headers, connection-specific fields,
 * content-length against DATA) and the flood limits built into it (outbound
 * ack queue, rapid reset, CONTINUATION). This file turns each request
 * stream into an exchange, feeds request body bytes to it and gives window
 * back only for what the backend took (automatic WINDOW_UPDATE is off),
 * serves response bodies through a deferred data source that resumes as
 * backend bytes arrive, and gathers the frames of one pass into one write.
 *
 * Re-entrancy: nghttp2 callbacks run only inside nghttp2_session_mem_recv
 * and _mem_send, which only client_h2_pump calls; exchange callbacks only
 * submit, resume or mark, and ask the owner for another pump (on_wake).
 * So a stream is freed only from on_stream_close, inside the pump. */
#include "client_h2.h"
#include "exchange.h"
#include "log.h"
#include "loop.h"
#include "mem.h"
#include "transport.h"
#include "worker.h"
#include <nghttp2/nghttp2.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WBUF_SIZE (64u * 1024)        /* frames of one pass, written at once */
#define RBUF_SIZE (16u * 1024)
#define GOAWAY_STEP_MS 1000           /* between the two GOAWAYs: about an RTT, generously */
#define HEADER_OFFENCES_MAX 8         /* oversized header lists before GOAWAY */
#define CHEAP_FRAMES_PER_SEC 20000    /* control / tiny DATA frames per second before GOAWAY */

struct h2_field {
    uint32_t name_off, name_len, value_off, value_len;
};

struct h2_stream {
    struct h2_conn *st_conn;
    int32_t st_id;
    struct exchange *st_ex;
    struct h2_stream *st_prev, *st_next;   /* the connection's open streams */
    char *st_arena;                        /* decoded fields: name bytes, value bytes */
    size_t st_arena_len, st_arena_cap;
    struct h2_field st_fields[H2_MAX_FIELDS + 8];   /* + pseudo-headers (nghttp2 allows 5 kinds) */
    unsigned st_npseudo;
    unsigned st_nfields;
    unsigned st_trailer_start;             /* first field of the trailers */
    size_t st_list_bytes;                  /* RFC 9113 6.5.2 size of the current list */
    size_t st_unconsumed;                  /* body bytes received, window not yet given back */
    uint64_t st_bytes_out;                 /* response body bytes given to nghttp2 */
    bool st_too_large;                     /* over H2_MAX_HEADER_LIST / H2_MAX_FIELDS */
    bool st_started;                       /* exchange started */
    bool st_deferred;                      /* data source returned DEFERRED */
    bool st_kick;                          /* the exchange should move bytes */
    bool st_end_pending;                   /* END_STREAM seen before the exchange started */
};

struct h2_conn {
    struct worker *c_w;
    struct transport *c_tr;
    nghttp2_session *c_session;
    void *c_owner;
    const struct h2_conn_ops *c_ops;
    struct h2_stream c_streams;            /* list head (sentinel) */
    unsigned c_nstreams;
    struct loop_timer c_goaway_timer;
    char *c_wbuf;                          /* NULL while nothing waits to be written */
    size_t c_wlen, c_woff;
    const uint8_t *c_pend;                 /* output of mem_send not yet copied */
    size_t c_pend_len;
    unsigned c_header_offences;
    unsigned c_cheap_frames;
    uint64_t c_cheap_window_ms;
    bool c_rd_ready, c_wr_ready;
    bool c_shutdown;                       /* first GOAWAY sent */
    bool c_goaway_final;                   /* second GOAWAY sent */
    bool c_progress;                       /* bytes moved on the socket this pump */
    bool c_fatal;                          /* close after flushing (GOAWAY queued) */
    bool c_in_pump;                        /* client_h2_pump is running */
    bool c_again;                          /* work was queued during this pump */
    const char *c_why;
    char c_sni[256];
    char c_addr[46];
};

/* The callback table: built once (pthread_once), then only read by every
 * worker thread. */
static nghttp2_session_callbacks *callbacks;
static pthread_once_t callbacks_once = PTHREAD_ONCE_INIT;

/* ------------------------------------------------------------------ */
/* streams                                                             */

static struct h2_stream *stream_new(struct h2_conn *c, int32_t id)
{
    struct h2_stream *st = xcalloc(1, sizeof *st);

    st->st_conn = c;
    st->st_id = id;
    st->st_next = c->c_streams.st_next;
    st->st_prev = &c->c_streams;
    c->c_streams.st_next->st_prev = st;
    c->c_streams.st_next = st;
    c->c_nstreams++;
    return st;
}

static void stream_free(struct h2_stream *st)
{
    struct h2_conn *c = st->st_conn;

    exchange_free(st->st_ex, st->st_bytes_out);
    if (st->st_unconsumed && c->c_session)
        nghttp2_session_consume_connection(c->c_session, st->st_unconsumed);
    st->st_prev->st_next = st->st_next;
    st->st_next->st_prev = st->st_prev;
    c->c_nstreams--;
    free(st->st_arena);
    free(st);
}

static struct h2_stream *stream_of(nghttp2_session *s, int32_t id)
{
    return nghttp2_session_get_stream_user_data(s, id);
}

/* Asks for another pump: at once when one is running, else from the
 * owner (never a pump nested inside an exchange callback). */
static void wake(struct h2_conn *c)
{
    if (c->c_in_pump)
        c->c_again = true;
    else
        c->c_ops->on_wake(c->c_owner);
}

/* ------------------------------------------------------------------ */
/* request headers                                                     */

static bool arena_add(struct h2_stream *st, const uint8_t *p, size_t n, uint32_t *off)
{
    if (st->st_arena_len + n > st->st_arena_cap) {
        size_t cap = st->st_arena_cap ? st->st_arena_cap : 1024;
        while (cap < st->st_arena_len + n)
            cap *= 2;
        st->st_arena = xrealloc(st->st_arena, cap);
        st->st_arena_cap = cap;
    }
    memcpy(st->st_arena + st->st_arena_len, p, n);
    *off = (uint32_t)st->st_arena_len;
    st->st_arena_len += n;
    return true;
}

static struct http1_slice field_name(const struct h2_stream *st, unsigned i)
{
    return (struct http1_slice){ st->st_arena + st->st_fields[i].name_off, st->st_fields[i].name_len };
}

static struct http1_slice field_value(const struct h2_stream *st, unsigned i)
{
    return (struct http1_slice){ st->st_arena + st->st_fields[i].value_off, st->st_fields[i].value_len };
}

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *frame, void *user)
{
    struct h2_conn *c = user;

    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct h2_stream *st = stream_new(c, frame->hd.stream_id);
    nghttp2_session_set_stream_user_data(s, frame->hd.stream_id, st);
    return 0;
}

/* Keeps a decoded field; over the caps the list is only counted (HPACK
 * bombs: nothing past the cap is stored, however it was encoded). */
static int on_header(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *user)
{
    struct h2_stream *st = stream_of(s, frame->hd.stream_id);

    if (!st || frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    st->st_list_bytes += namelen + valuelen + 32;
    if (st->st_too_large)
        return 0;
    bool pseudo = namelen && name[0] == ':';
    if (st->st_list_bytes > H2_MAX_HEADER_LIST ||
        (!pseudo && st->st_nfields - st->st_npseudo >= H2_MAX_FIELDS) ||
        (pseudo && st->st_npseudo >= 8)) {
        st->st_too_large = true;
        return 0;
    }
    struct h2_field *f = &st->st_fields[st->st_nfields++];
    st->st_npseudo += pseudo;
    arena_add(st, name, namelen, &f->name_off);
    arena_add(st, value, valuelen, &f->value_off);
    f->name_len = (uint32_t)namelen;
    f->value_len = (uint32_t)valuelen;
    return 0;
}

/* Answers a stream with a body-less response made here (431 and the like,
 * decided before an exchange exists). */
static void respond_plain(struct h2_conn *c, int32_t id, const char *status)
{
    nghttp2_nv nv[] = {
        { (uint8_t *)":status", (uint8_t *)status, 7, strlen(status), NGHTTP2_NV_FLAG_NONE },
        { (uint8_t *)"content-length", (uint8_t *)"0", 14, 1, NGHTTP2_NV_FLAG_NONE },
    };
    nghttp2_submit_response(c->c_session, id, nv, 2, NULL);
}

static void go_away(struct h2_conn *c, uint32_t code, const char *why)
{
    if (c->c_fatal)
        return;
    log_info("client %s: HTTP/2 connection ended: %s", c->c_addr, why);
    nghttp2_submit_goaway(c->c_session, NGHTTP2_FLAG_NONE,
                          nghttp2_session_get_last_proc_stream_id(c->c_session), code, NULL, 0);
    c->c_fatal = true;
    c->c_why = why;
}

static const struct exchange_ops stream_exchange_ops;

/* The request head is complete: build the protocol-free request. */
static void start_exchange(struct h2_conn *c, struct h2_stream *st, bool end_stream)
{
    struct http1_header fields[H2_MAX_FIELDS];
    struct exchange_req r = { .content_length = -1, .client_addr = c->c_addr, .proto_label = "HTTP/2" };
    struct http1_slice protocol = { NULL, 0 }, host = { NULL, 0 };
    char *cookie = NULL;
    size_t nf = 0, cookie_len = 0;

    for (unsigned i = 0; i < st->st_nfields; i++) {
        struct http1_slice n = field_name(st, i), v = field_value(st, i);
        if (n.len && n.base[0] == ':') {
            if (http1_slice_eq(n, ":method")) r.method = v;
            else if (http1_slice_eq(n, ":path")) r.path = v;
            else if (http1_slice_eq(n, ":authority")) r.authority = v;
            else if (http1_slice_eq(n, ":protocol")) protocol = v;
            continue;
        }
        if (http1_slice_eq(n, "host")) {
            host = v;
            continue;
        }
        if (http1_slice_eq(n, "cookie")) {
            /* RFC 9113 8.2.3: cookie crumbs become one field for HTTP/1.1. */
            cookie = xrealloc(cookie, cookie_len + v.len + 2);
            if (cookie_len) {
                memcpy(cookie + cookie_len, "; ", 2);
                cookie_len += 2;
            }
            memcpy(cookie + cookie_len, v.base, v.len);
            cookie_len += v.len;
            continue;
        }
        if (http1_slice_eq(n, "content-length")) {
            char tmp[24];
            size_t l = v.len < sizeof tmp - 1 ? v.len : sizeof tmp - 1;
            memcpy(tmp, v.base, l);
            tmp[l] = '\0';
            r.content_length = strtoll(tmp, NULL, 10);   /* nghttp2 checked it is digits */
        }
        fields[nf++] = (struct http1_header){ n, v };
    }
    if (cookie)
        fields[nf++] = (struct http1_header){ { "Cookie", 6 }, { cookie, cookie_len } };
    if (!r.authority.base)
        r.authority = host;
    r.headers = fields;
    r.num_headers = nf;
    r.has_body = !end_stream;
    r.sni = c->c_sni[0] ? c->c_sni : NULL;
    st->st_started = true;
    if (protocol.base) {
        /* RFC 8441 extended CONNECT: only WebSocket is bridged. */
        if (!http1_slice_eq(protocol, "websocket")) {
            respond_plain(c, st->st_id, "501");
            free(cookie);
            return;
        }
        r.websocket = true;
    } else if (http1_slice_eq(r.method, "connect")) {
        /* A reverse proxy is no forward proxy (as for HTTP/1.1). */
        respond_plain(c, st->st_id, "501");
        free(cookie);
        return;
    }
    if (!r.path.base)
        r.path = (struct http1_slice){ "/", 1 };
    st->st_ex = exchange_start(c->c_w, &r, st, &stream_exchange_ops);
    free(cookie);
}

static void end_request(struct h2_stream *st)
{
    struct http1_header tr[H2_MAX_FIELDS];
    size_t n = 0;

    for (unsigned i = st->st_trailer_start; i < st->st_nfields; i++)
        tr[n++] = (struct http1_header){ field_name(st, i), field_value(st, i) };
    exchange_end_body(st->st_ex, tr, n);
    st->st_kick = true;
}

/* Counts frames that cost us work but carry little (control frames, tiny
 * DATA): a client that sends a flood of them is sent away. */
static void count_cheap_frame(struct h2_conn *c)
{
    uint64_t now = loop_now_ms(c->c_w->loop);

    if (now - c->c_cheap_window_ms >= 1000) {
        c->c_cheap_window_ms = now;
        c->c_cheap_frames = 0;
    }
    if (++c->c_cheap_frames > CHEAP_FRAMES_PER_SEC)
        go_away(c, NGHTTP2_ENHANCE_YOUR_CALM, "flood of small frames");
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *frame, void *user)
{
    struct h2_conn *c = user;
    struct h2_stream *st = frame->hd.stream_id ? stream_of(s, frame->hd.stream_id) : NULL;
    bool end = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;

    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        if (!st)
            return 0;
        if (st->st_too_large && st->st_started) {
            /* Oversized trailers: the request cannot be completed. */
            nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, st->st_id, NGHTTP2_REFUSED_STREAM);
            return 0;
        }
        if (st->st_too_large) {
            st->st_started = true;
            log_info("client %s: HTTP/2 request header list over %u bytes or %u fields", c->c_addr,
                     H2_MAX_HEADER_LIST, H2_MAX_FIELDS);
            respond_plain(c, st->st_id, "431");
            if (++c->c_header_offences > HEADER_OFFENCES_MAX)
                go_away(c, NGHTTP2_ENHANCE_YOUR_CALM, "repeated oversized header lists");
            return 0;
        }
        if (!st->st_started) {
            st->st_trailer_start = st->st_nfields;
            st->st_list_bytes = 0;
            start_exchange(c, st, end);
            return 0;
        }
        if (st->st_ex && end)
            end_request(st);
        return 0;
    case NGHTTP2_DATA:
        if (frame->hd.length < 64 && !end)
            count_cheap_frame(c);
        if (st && st->st_ex && end)
            end_request(st);
        return 0;
    case NGHTTP2_SETTINGS:
    case NGHTTP2_PING:
    case NGHTTP2_WINDOW_UPDATE:
    case NGHTTP2_PRIORITY:
    case NGHTTP2_RST_STREAM:
        count_cheap_frame(c);
        return 0;
    default:
        return 0;
    }
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                         void *user)
{
    struct h2_stream *st = stream_of(s, id);

    if (!st || !st->st_ex) {
        nghttp2_session_consume(s, id, len);   /* nobody reads it */
        return 0;
    }
    st->st_unconsumed += len;
    size_t took = exchange_write_body(st->st_ex, data, len);
    if (took < len) {
        /* More than the window we gave: the client broke flow control. */
        nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, id, NGHTTP2_FLOW_CONTROL_ERROR);
    }
    st->st_kick = true;
    return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t code, void *user)
{
    struct h2_stream *st = stream_of(s, id);

    if (st) {
        nghttp2_session_set_stream_user_data(s, id, NULL);
        stream_free(st);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* responses (exchange_ops)                                            */

/* Builds the nghttp2 name/value list: :status, then the fields with their
 * names in lower case (RFC 9113 8.2.1) in c's scratch. */
static size_t build_nv(const struct exchange_head *h, nghttp2_nv *nv, char *status, char *names,
                       size_t names_cap)
{
    size_t n = 0, at = 0;

    snprintf(status, 4, "%03d", h->status);
    nv[n++] = (nghttp2_nv){ (uint8_t *)":status", (uint8_t *)status, 7, 3, NGHTTP2_NV_FLAG_NONE };
    for (size_t i = 0; i < h->num_headers; i++) {
        const struct http1_header *f = &h->headers[i];
        if (at + f->name.len > names_cap)
            break;
        for (size_t k = 0; k < f->name.len; k++) {
            char ch = f->name.base[k];
            names[at + k] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
        }
        nv[n++] = (nghttp2_nv){ (uint8_t *)names + at, (uint8_t *)f->value.base, f->name.len, f->value.len,
                                NGHTTP2_NV_FLAG_NONE };
        at += f->name.len;
    }
    return n;
}

/* The backend's trailers, if any, go in a HEADERS frame that ends the
 * stream (nghttp2 sends it after the last DATA). */
static void submit_trailers(struct h2_stream *st, uint32_t *flags)
{
    struct http1_header tr[32];
    struct exchange_head h = { .headers = tr };
    nghttp2_nv nv[33];
    char status[4], names[4096];

    h.num_headers = exchange_trailers(st->st_ex, tr, 32);
    if (h.num_headers == 0)
        return;
    size_t n = build_nv(&h, nv, status, names, sizeof names);
    if (nghttp2_submit_trailer(st->st_conn->c_session, st->st_id, nv + 1, n - 1) == 0)
        *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
}

static ssize_t read_body(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                         nghttp2_data_source *src, void *user)
{
    struct h2_stream *st = src->ptr;
    bool eof;

    if (!st->st_ex)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    size_t n = exchange_read_body(st->st_ex, buf, len, &eof);
    if (n) {
        st->st_bytes_out += n;
        st->st_kick = true;   /* room in the exchange's buffer: read the backend again */
    }
    if (eof) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        submit_trailers(st, flags);
        return (ssize_t)n;
    }
    if (n == 0) {
        st->st_deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)n;
}

static void submit_head(struct h2_stream *st, const struct exchange_head *h, bool final)
{
    struct h2_conn *c = st->st_conn;
    nghttp2_nv nv[HTTP1_MAX_HEADERS + 3];
    char status[4];
    char names[8192];
    size_t n = build_nv(h, nv, status, names, sizeof names);

    if (!final) {
        nghttp2_submit_headers(c->c_session, NGHTTP2_FLAG_NONE, st->st_id, NULL, nv, n, NULL);
    } else if (h->has_body) {
        nghttp2_data_provider prd = { .source.ptr = st, .read_callback = read_body };
        nghttp2_submit_response(c->c_session, st->st_id, nv, n, &prd);
    } else {
        nghttp2_submit_response(c->c_session, st->st_id, nv, n, NULL);
    }
    wake(c);
}

static void on_ex_interim(void *owner, const struct exchange_head *h)
{
    submit_head(owner, h, false);
}

static void on_ex_head(void *owner, const struct exchange_head *h)
{
    submit_head(owner, h, true);
}

static void on_ex_body(void *owner)
{
    struct h2_stream *st = owner;

    st->st_kick = true;   /* the exchange may have more to move (see exchange.c pump) */
    if (st->st_deferred) {
        st->st_deferred = false;
        nghttp2_session_resume_data(st->st_conn->c_session, st->st_id);
    }
    wake(st->st_conn);
}

static void on_ex_req_drained(void *owner, size_t n)
{
    struct h2_stream *st = owner;

    if (n > st->st_unconsumed)
        n = st->st_unconsumed;
    st->st_unconsumed -= n;
    nghttp2_session_consume(st->st_conn->c_session, st->st_id, n);
    wake(st->st_conn);
}

static void on_ex_abort(void *owner, const char *why)
{
    struct h2_stream *st = owner;

    log_debug("client %s: stream %d reset: %s", st->st_conn->c_addr, st->st_id, why);
    nghttp2_submit_rst_stream(st->st_conn->c_session, NGHTTP2_FLAG_NONE, st->st_id, NGHTTP2_INTERNAL_ERROR);
    wake(st->st_conn);
}

static const struct exchange_ops stream_exchange_ops = {
    on_ex_interim, on_ex_head, on_ex_body, on_ex_req_drained, on_ex_abort,
};

/* ------------------------------------------------------------------ */
/* session setup                                                       */

static void make_callbacks(void)
{
    nghttp2_session_callbacks_new(&callbacks);
    nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, on_stream_close);
}

static nghttp2_session_callbacks *get_callbacks(void)
{
    pthread_once(&callbacks_once, make_callbacks);
    return callbacks;
}

struct h2_conn *client_h2_start(struct worker *w, struct transport *tr, const char *peer_addr,
                                const char *sni, void *owner, const struct h2_conn_ops *ops,
                                const char **err)
{
    struct h2_conn *c = xcalloc(1, sizeof *c);
    nghttp2_option *opt;
    nghttp2_settings_entry iv[] = {
        { NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, H2_MAX_CONCURRENT_STREAMS },
        { NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, EXCHANGE_BODY_WINDOW },
        { NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, H2_MAX_HEADER_LIST },
        { NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1 },
    };

    c->c_w = w;
    c->c_tr = tr;
    c->c_owner = owner;
    c->c_ops = ops;
    c->c_streams.st_next = c->c_streams.st_prev = &c->c_streams;
    c->c_rd_ready = c->c_wr_ready = true;
    snprintf(c->c_addr, sizeof c->c_addr, "%s", peer_addr);
    snprintf(c->c_sni, sizeof c->c_sni, "%s", sni ? sni : "");
    if (nghttp2_option_new(&opt) != 0) {
        *err = "nghttp2_option_new failed";
        free(c);
        return NULL;
    }
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_settings(opt, 32);          /* entries per SETTINGS frame */
    nghttp2_option_set_max_outbound_ack(opt, 1000);    /* SETTINGS/PING acks queued unread */
    nghttp2_option_set_stream_reset_rate_limit(opt, 1000, 33);   /* rapid reset */
    /* RFC 9113 deprecated priorities: no closed streams kept for the tree. */
    nghttp2_option_set_no_closed_streams(opt, 1);
    int rv = nghttp2_session_server_new2(&c->c_session, get_callbacks(), c, opt);
    nghttp2_option_del(opt);
    if (rv != 0) {
        *err = nghttp2_strerror(rv);
        free(c);
        return NULL;
    }
    nghttp2_submit_settings(c->c_session, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]);
    nghttp2_session_set_local_window_size(c->c_session, NGHTTP2_FLAG_NONE, 0, (int32_t)H2_CONN_WINDOW);
    return c;
}

void client_h2_free(struct h2_conn *c)
{
    if (!c)
        return;
    loop_timer_cancel(c->c_w->loop, &c->c_goaway_timer);
    while (c->c_streams.st_next != &c->c_streams) {
        struct h2_stream *st = c->c_streams.st_next;
        nghttp2_session_set_stream_user_data(c->c_session, st->st_id, NULL);
        stream_free(st);
    }
    nghttp2_session_del(c->c_session);
    free(c->c_wbuf);
    free(c);
}

/* ------------------------------------------------------------------ */
/* I/O                                                                 */

void client_h2_note_io(struct h2_conn *c, bool readable, bool writable)
{
    if (readable)
        c->c_rd_ready = true;
    if (writable)
        c->c_wr_ready = true;
}

/* Reads what the client sent and hands it to nghttp2. Returns -1 when the
 * connection is over. Reading pauses while our output is stuck: a client
 * that does not read gets no more work done for it. */
static int read_input(struct h2_conn *c, bool *moved)
{
    uint8_t buf[RBUF_SIZE];

    if (!c->c_rd_ready || c->c_fatal || c->c_wlen > c->c_woff)
        return 0;
    ssize_t n = transport_read(c->c_tr, buf, sizeof buf);
    if (n == TRANSPORT_AGAIN) {
        c->c_rd_ready = false;
        return 0;
    }
    if (n == TRANSPORT_ERROR) {
        c->c_why = c->c_tr->err ? c->c_tr->err : "read failed";
        return -1;
    }
    if (n == 0) {
        c->c_why = "client closed";
        return -1;
    }
    if (transport_read_drained(c->c_tr, (size_t)n, sizeof buf))
        c->c_rd_ready = false;
    c->c_progress = true;
    *moved = true;
    ssize_t r = nghttp2_session_mem_recv(c->c_session, buf, (size_t)n);
    if (r < 0) {
        /* nghttp2 queued a GOAWAY for protocol errors and floods; send it. */
        log_info("client %s: HTTP/2: %s", c->c_addr, nghttp2_strerror((int)r));
        c->c_fatal = true;
        c->c_why = nghttp2_strerror((int)r);
    }
    return 0;
}

/* Gathers frames into the write buffer and writes them. Returns -1 when
 * the connection is broken. */
static int flush_output(struct h2_conn *c, bool *moved)
{
    for (;;) {
        if (!c->c_wbuf)
            c->c_wbuf = xmalloc(WBUF_SIZE);
        while (c->c_wlen < WBUF_SIZE) {
            if (!c->c_pend_len) {
                ssize_t n = nghttp2_session_mem_send(c->c_session, &c->c_pend);
                if (n < 0) {
                    c->c_why = nghttp2_strerror((int)n);
                    return -1;
                }
                if (n == 0)
                    break;
                c->c_pend_len = (size_t)n;
            }
            size_t k = WBUF_SIZE - c->c_wlen < c->c_pend_len ? WBUF_SIZE - c->c_wlen : c->c_pend_len;
            memcpy(c->c_wbuf + c->c_wlen, c->c_pend, k);
            c->c_wlen += k;
            c->c_pend += k;
            c->c_pend_len -= k;
        }
        if (c->c_wlen == c->c_woff)
            break;
        if (!c->c_wr_ready)
            return 0;
        struct iovec iov = { c->c_wbuf + c->c_woff, c->c_wlen - c->c_woff };
        ssize_t w = transport_writev(c->c_tr, &iov, 1);
        if (w == TRANSPORT_AGAIN) {
            c->c_wr_ready = false;
            return 0;
        }
        if (w < 0) {
            c->c_why = c->c_tr->err ? c->c_tr->err : "write failed";
            return -1;
        }
        c->c_progress = true;
        *moved = true;
        c->c_woff += (size_t)w;
        if (c->c_woff < c->c_wlen)
            continue;
        c->c_woff = c->c_wlen = 0;
    }
    /* Nothing waits: an idle connection keeps no write buffer. */
    free(c->c_wbuf);
    c->c_wbuf = NULL;
    c->c_wlen = c->c_woff = 0;
    return 0;
}

static void kick_streams(struct h2_conn *c)
{
    for (struct h2_stream *st = c->c_streams.st_next; st != &c->c_streams; st = st->st_next) {
        if (st->st_kick && st->st_ex) {
            st->st_kick = false;
            exchange_kick(st->st_ex);
        }
    }
}

int client_h2_pump(struct h2_conn *c, const char **why)
{
    int rc = H2_PUMP_CLOSE;

    c->c_progress = false;
    c->c_in_pump = true;
    bool busy = true;   /* still moving when the rounds ran out */
    for (int rounds = 0; rounds < 64; rounds++) {
        bool moved = c->c_again;
        c->c_again = false;
        if (read_input(c, &moved) < 0)
            goto closed;
        kick_streams(c);
        if (flush_output(c, &moved) < 0)
            goto closed;
        bool pending = c->c_wlen > c->c_woff;
        if (!pending && (c->c_fatal || (!nghttp2_session_want_read(c->c_session) &&
                                        !nghttp2_session_want_write(c->c_session)))) {
            if (!c->c_why)
                c->c_why = c->c_goaway_final ? "shut down (GOAWAY sent)" : "HTTP/2 session ended";
            goto closed;
        }
        if (!moved && !c->c_again) {
            busy = false;
            break;
        }
    }
    rc = c->c_progress ? H2_PUMP_PROGRESS : H2_PUMP_IDLE;
    c->c_in_pump = false;
    /* Still busy after many rounds: yield to the other connections and come
     * back before the loop sleeps. Needed, not only fair: bytes already in
     * the socket or in OpenSSL's buffers bring no new readiness edge. */
    if (busy || c->c_again) {
        c->c_again = false;
        c->c_ops->on_wake(c->c_owner);
    }
    return rc;
closed:
    c->c_in_pump = false;
    *why = c->c_why;
    return rc;
}

/* ------------------------------------------------------------------ */
/* timeouts and shutdown                                               */

bool client_h2_timed_out(struct h2_conn *c, const char **why)
{
    if (c->c_nstreams == 0) {
        *why = "idle HTTP/2 connection timed out";
        return true;
    }
    if (c->c_wlen > c->c_woff || nghttp2_session_want_write(c->c_session)) {
        *why = "HTTP/2 client stopped reading";
        return true;
    }
    /* Streams open: those waiting for their backend are the backend
     * timer's business; a client that opened streams and sends nothing
     * more for a whole timeout is gone. */
    for (struct h2_stream *st = c->c_streams.st_next; st != &c->c_streams; st = st->st_next)
        if (st->st_ex && exchange_waits_for_backend(st->st_ex))
            return false;
    *why = "HTTP/2 client stalled";
    return true;
}

static void on_goaway_step(struct loop *l, struct loop_timer *t)
{
    struct h2_conn *c = (struct h2_conn *)((char *)t - offsetof(struct h2_conn, c_goaway_timer));

    if (!c->c_goaway_final) {
        c->c_goaway_final = true;
        nghttp2_submit_goaway(c->c_session, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(c->c_session), NGHTTP2_NO_ERROR,
                              NULL, 0);
    }
    wake(c);
}

void client_h2_shutdown(struct h2_conn *c)
{
    if (c->c_shutdown)
        return;
    c->c_shutdown = true;
    nghttp2_submit_shutdown_notice(c->c_session);
    loop_timer_set(c->c_w->loop, &c->c_goaway_timer, GOAWAY_STEP_MS, on_goaway_step);
    wake(c);
}
