/* fuzz_http1.c — libFuzzer target for http1.c. The input is parsed as a
 * request and as a response, whole and as a prefix (which must answer
 * INCOMPLETE or the same); parsed heads are rewritten and the output parsed
 * again (it must be a valid head with the same framing, one Host and at
 * most one Content-Length); a parsed Host holds no byte a host cannot; the
 * input, and the body after a chunked request head, are scanned as chunked
 * bodies in random pieces (which must agree with one pass) and decoded
 * (which must agree with the scan). Limits and split points come
 * from a PRNG seeded by the input, so every run is reproducible. */
#include "http1.h"

#include <stdlib.h>
#include <string.h>

#define ASSERT(c) do { if (!(c)) __builtin_trap(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t rng_next(uint64_t *s)
{
    /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static uint64_t seed_of(const uint8_t *d, size_t n)
{
    uint64_t h = 0xcbf29ce484222325u;   /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ d[i]) * 0x100000001b3u;
    return h;
}

/* A copy of exactly n bytes, so that reading past the end is caught. */
static char *copy_of(const char *s, size_t n)
{
    char *b = malloc(n ? n : 1);
    if (n)
        memcpy(b, s, n);
    return b;
}

static bool within(struct http1_slice s, const char *buf, size_t len)
{
    return s.base >= buf && s.base + s.len <= buf + len;
}

static bool is_hop_by_hop(struct http1_slice name)
{
    static const char *const names[] = { "connection", "keep-alive", "proxy-connection", "te", "trailer",
                                         "proxy-authenticate", "proxy-authorization" };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (http1_slice_eq(name, names[i]))
            return true;
    return false;
}

/* Whether a parsed Host value holds only bytes a uri-host [":" port] can
 * (RFC 3986: reg-name, %XX, "[v6]"): an oracle apart from the parser's own
 * grammar, for "a b", "user@host" and their like. */
static bool host_bytes_plausible(struct http1_slice h)
{
    for (size_t i = 0; i < h.len; i++) {
        unsigned char c = (unsigned char)h.base[i];
        if (c <= 0x20 || c >= 0x7f || strchr("@/\\?#\"<>^`{|}", c))
            return false;
    }
    return true;
}

/* How many headers of a parsed message are named `lower`. */
static size_t count_named(const struct http1_header *headers, size_t n, const char *lower)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += http1_slice_eq(headers[i].name, lower);
    return k;
}

/* Decoding in one pass must stop where scanning does, with the same
 * outcome, and yield no more data than it consumed. */
static void fuzz_chunked_decode(const char *body, size_t n, ssize_t whole, bool done)
{
    struct http1_chunked c = { 0 };
    char *b = copy_of(body, n);
    size_t data = 0;
    ssize_t r = http1_chunked_decode(&c, b, n, &data);
    ASSERT(r == whole && c.done == done);
    ASSERT(r < 0 || data <= (size_t)r);
    free(b);
}

/* Scans body as chunked in one pass, then in up to 8 random pieces:
 * both must stop at the same byte with the same outcome. */
static void fuzz_chunked(const char *body, size_t n, uint64_t *rng)
{
    struct http1_chunked one = { 0 };
    ssize_t whole = http1_chunked_scan(&one, body, n);
    ASSERT(whole == -1 || (whole >= 0 && (size_t)whole <= n));
    ASSERT(whole == -1 || one.done || (size_t)whole == n);
    ASSERT(one.remaining <= (uint64_t)INT64_MAX);   /* larger sizes are refused */
    fuzz_chunked_decode(body, n, whole, one.done);

    struct http1_chunked c = { 0 };
    size_t pos = 0, total = 0;
    ssize_t r = 0;
    for (int piece = 0; piece < 8 && pos < n && !c.done; piece++) {
        size_t len = piece == 7 ? n - pos : (size_t)(rng_next(rng) % (n - pos + 1));
        char *b = copy_of(body + pos, len);
        r = http1_chunked_scan(&c, b, len);
        free(b);
        if (r < 0)
            break;
        ASSERT((size_t)r <= len);
        ASSERT(c.done || (size_t)r == len);
        total += (size_t)r;
        pos += len;
    }
    if (pos < n && !c.done && r >= 0) {   /* the loop may stop early on empty pieces */
        char *b = copy_of(body + pos, n - pos);
        r = http1_chunked_scan(&c, b, n - pos);
        free(b);
        if (r >= 0)
            total += (size_t)r;
    }
    if (whole < 0)
        ASSERT(r < 0);
    else
        ASSERT(r >= 0 && total == (size_t)whole && c.done == one.done);
}

static void fuzz_request_rewrite(const struct http1_request *req, int head_len, uint64_t *rng)
{
    static const struct http1_forward fwd = { "2001:db8::1", "https" };
    size_t cap = 3 * (size_t)head_len + 256;
    char *out = malloc(cap);
    ssize_t w = http1_write_request_head(req, &fwd, out, cap);
    ASSERT(w > 0);
    size_t small = (size_t)(rng_next(rng) % (size_t)w);
    char *tight = malloc(small ? small : 1);
    ASSERT(http1_write_request_head(req, &fwd, tight, small) == -1);
    free(tight);

    /* HTTP/1.0 without Host becomes HTTP/1.1 without Host; up to four
     * headers are added. Otherwise the output must parse back. */
    if (req->info.host.base && req->num_headers <= HTTP1_MAX_HEADERS - 4) {
        static struct http1_request again;
        char *b = copy_of(out, (size_t)w);
        int r = http1_parse_request(b, (size_t)w, (size_t)w, (size_t)w, &again);
        ASSERT(r == (int)w);
        ASSERT(again.minor_version == 1);
        ASSERT(again.method.len == req->method.len && memcmp(again.method.base, req->method.base, req->method.len) == 0);
        /* The backend gets the origin form, and the authority of an
         * absolute-form target as its Host. */
        ASSERT(!again.absolute_form);
        ASSERT(again.target.len == req->path.len && memcmp(again.target.base, req->path.base, req->path.len) == 0);
        ASSERT(again.info.content_length == req->info.content_length);
        ASSERT(again.info.chunked == req->info.chunked);
        ASSERT(again.info.conn_upgrade == req->info.conn_upgrade);
        ASSERT(again.info.host.len == req->info.host.len &&
               memcmp(again.info.host.base, req->info.host.base, req->info.host.len) == 0);
        /* One Host and at most one Content-Length go out, whatever came in
         * (identical duplicates and "5, 5" are sent as one field). */
        ASSERT(count_named(again.headers, again.num_headers, "host") == 1);
        ASSERT(count_named(again.headers, again.num_headers, "content-length") ==
               (req->info.content_length >= 0 ? 1u : 0u));
        for (size_t i = 0; i < again.num_headers; i++) {
            const struct http1_header *f = &again.headers[i];
            if (req->info.conn_upgrade && http1_slice_eq(f->name, "connection"))
                ASSERT(http1_slice_eq(f->value, "upgrade"));
            else
                ASSERT(!is_hop_by_hop(f->name));
            if (!req->info.conn_upgrade)
                ASSERT(!http1_slice_eq(f->name, "upgrade"));
        }
        free(b);
    }
    free(out);
}

static void fuzz_request(const char *buf, size_t n, uint64_t *rng)
{
    static struct http1_request req, part;
    size_t max_head = rng_next(rng) & 1 ? 8192 : 1 + (size_t)(rng_next(rng) % (n + 16));
    size_t max_line = rng_next(rng) & 1 ? 4096 : (size_t)(rng_next(rng) % (n + 16));
    int r = http1_parse_request(buf, n, max_head, max_line, &req);
    if (r == HTTP1_ERROR) {
        ASSERT(req.error != NULL);
        ASSERT(req.error_status == 400 || req.error_status == 414 || req.error_status == 431);
    } else if (r != HTTP1_INCOMPLETE) {
        ASSERT(r > 0 && (size_t)r <= n && (size_t)r <= max_head);
        ASSERT(within(req.method, buf, (size_t)r) && within(req.target, buf, (size_t)r));
        ASSERT(req.minor_version == 0 || req.minor_version == 1);
        ASSERT(req.num_headers <= HTTP1_MAX_HEADERS);
        for (size_t i = 0; i < req.num_headers; i++)
            ASSERT(within(req.headers[i].name, buf, (size_t)r) && within(req.headers[i].value, buf, (size_t)r));
        ASSERT(!(req.info.chunked && req.info.content_length >= 0));
        ASSERT(!req.info.host.base || host_bytes_plausible(req.info.host));
        ASSERT(count_named(req.headers, req.num_headers, "host") <= 1);
    }

    /* A prefix answers INCOMPLETE or exactly what the whole input does. */
    if (n) {
        size_t k = (size_t)(rng_next(rng) % n);
        char *b = copy_of(buf, k);
        int rk = http1_parse_request(b, k, max_head, max_line, &part);
        ASSERT(rk == HTTP1_INCOMPLETE || rk == r);
        if (rk == HTTP1_ERROR)
            ASSERT(part.error_status == req.error_status && strcmp(part.error, req.error) == 0);
        if (r > 0 && (size_t)r <= k)
            ASSERT(rk == r);
        free(b);
    }

    if (r > 0) {
        fuzz_request_rewrite(&req, r, rng);
        if (req.info.chunked)
            fuzz_chunked(buf + r, n - (size_t)r, rng);
    }
}

static void fuzz_response_rewrite(const struct http1_response *resp, int head_len, uint64_t *rng)
{
    bool close = rng_next(rng) & 1;
    int client_minor = (int)(rng_next(rng) & 1);
    size_t cap = 2 * (size_t)head_len + 64;
    char *out = malloc(cap);
    ssize_t w = http1_write_response_head(resp, close, client_minor, out, cap);
    ASSERT(w > 0);
    if (resp->num_headers < HTTP1_MAX_HEADERS) {
        static struct http1_response again;
        char *b = copy_of(out, (size_t)w);
        int r = http1_parse_response(b, (size_t)w, (size_t)w, &again);
        ASSERT(r == (int)w);
        ASSERT(again.status == resp->status);
        ASSERT(again.info.content_length == resp->info.content_length);
        ASSERT(count_named(again.headers, again.num_headers, "content-length") ==
               (resp->info.content_length >= 0 ? 1u : 0u));
        /* HTTP/1.0 clients get the chunked body decoded: no Transfer-Encoding. */
        ASSERT(again.info.chunked == (resp->info.chunked && client_minor == 1));
        if (close && resp->status != 101)
            ASSERT(again.info.conn_close);
        free(b);
    }
    free(out);
}

static void fuzz_response(const char *buf, size_t n, uint64_t *rng)
{
    static struct http1_response resp, part;
    size_t max_head = rng_next(rng) & 1 ? 8192 : 1 + (size_t)(rng_next(rng) % (n + 16));
    int r = http1_parse_response(buf, n, max_head, &resp);
    if (r == HTTP1_ERROR)
        ASSERT(resp.error != NULL);
    else if (r != HTTP1_INCOMPLETE) {
        ASSERT(r > 0 && (size_t)r <= n && (size_t)r <= max_head);
        ASSERT(resp.status >= 100 && resp.status <= 999);
        ASSERT(within(resp.reason, buf, (size_t)r));
        for (size_t i = 0; i < resp.num_headers; i++)
            ASSERT(within(resp.headers[i].name, buf, (size_t)r) && within(resp.headers[i].value, buf, (size_t)r));
    }
    if (n) {
        size_t k = (size_t)(rng_next(rng) % n);
        char *b = copy_of(buf, k);
        int rk = http1_parse_response(b, k, max_head, &part);
        ASSERT(rk == HTTP1_INCOMPLETE || rk == r);
        if (rk == HTTP1_ERROR)
            ASSERT(strcmp(part.error, resp.error) == 0);
        if (r > 0 && (size_t)r <= k)
            ASSERT(rk == r);
        free(b);
    }
    if (r > 0) {
        fuzz_response_rewrite(&resp, r, rng);
        (void)http1_response_has_body((struct http1_slice){ "HEAD", 4 }, resp.status);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t rng = seed_of(data, size);
    char *buf = copy_of((const char *)data, size);
    fuzz_request(buf, size, &rng);
    fuzz_response(buf, size, &rng);
    fuzz_chunked(buf, size, &rng);
    free(buf);
    return 0;
}
