/* http1.c — HTTP/1.x head parser, chunked-body scanner and the proxy's head
 * rewriting (contract in http1.h). Every call makes one linear pass over its
 * input, allocates nothing and classifies bytes through one table; header
 * names that matter are recognised by length, then a case-insensitive compare. */
#include "http1.h"

#include <arpa/inet.h>
#include <limits.h>
#include <string.h>

/* ---- Character classes ---------------------------------------------------- */

enum {
    C_TCHAR = 1,    /* token character (RFC 9110 5.6.2): method, field name, coding */
    C_VCHAR = 2,    /* visible ASCII or obs-text: request target, field value */
    C_WS    = 4,    /* SP or HTAB */
};

static const uint8_t cls[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    4, 3, 2, 3, 3, 3, 3, 3, 2, 2, 3, 3, 2, 3, 3, 2,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2,
    2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2, 3, 2, 3, 0,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
};

static inline bool is_class(char c, unsigned mask)
{
    return cls[(unsigned char)c] & mask;
}

static inline unsigned char to_lower(unsigned char c)
{
    return (unsigned char)(c - 'A') < 26 ? (unsigned char)(c | 0x20) : c;
}

/* Skips a run of plain bytes eight at a time (SWAR): stops at the first
 * word holding a byte below `lo` or DEL, from where the caller's byte loop
 * decides. Bytes >= 0x80 (obs-text) count as plain. lo must be <= 0x80. */
static inline const char *skip_plain(const char *p, const char *end, unsigned lo)
{
    const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
    while (end - p >= 8) {
        uint64_t w, d;
        memcpy(&w, p, 8);
        d = w ^ (ones * 0x7f);                       /* DEL bytes become zero */
        if (((w - ones * lo) & ~w & highs) | ((d - ones) & ~d & highs))
            break;
        p += 8;
    }
    return p;
}

/* Whether s[0..n) equals the lower-case lower[0..n), ignoring ASCII case. */
static bool eq_lower(const char *s, const char *lower, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (to_lower((unsigned char)s[i]) != (unsigned char)lower[i])
            return false;
    return true;
}

static bool slice_eq_ci(struct http1_slice a, struct http1_slice b)
{
    if (a.len != b.len)
        return false;
    for (size_t i = 0; i < a.len; i++)
        if (to_lower((unsigned char)a.base[i]) != to_lower((unsigned char)b.base[i]))
            return false;
    return true;
}

bool http1_slice_eq(struct http1_slice s, const char *lower)
{
    size_t n = strlen(lower);
    return s.len == n && eq_lower(s.base, lower, n);
}

#define SLICE_IS(s, lit) ((s).len == sizeof(lit) - 1 && eq_lower((s).base, lit, sizeof(lit) - 1))

/* Takes the next element of a comma-separated list (RFC 9110 5.6.1) from
 * *rest, OWS trimmed; false when the list is used up (rest->base NULL).
 * Empty elements come back with len 0. */
static bool list_next(struct http1_slice *rest, struct http1_slice *elem)
{
    if (!rest->base)
        return false;
    const char *p = rest->base, *end = p + rest->len;
    const char *comma = rest->len ? memchr(p, ',', rest->len) : NULL;
    const char *e = comma ? comma : end;
    while (p < e && is_class(*p, C_WS))
        p++;
    while (e > p && is_class(e[-1], C_WS))
        e--;
    *elem = (struct http1_slice){ p, (size_t)(e - p) };
    if (comma)
        *rest = (struct http1_slice){ comma + 1, (size_t)(end - comma - 1) };
    else
        *rest = (struct http1_slice){ NULL, 0 };
    return true;
}

static inline int hex_value(unsigned char c)
{
    if ((unsigned)(c - '0') < 10)
        return c - '0';
    c |= 0x20;
    if ((unsigned)(c - 'a') < 6)
        return c - 'a' + 10;
    return -1;
}

/* ---- Host values (RFC 9110 7.2, RFC 3986 3.2.2) ----------------------------- */

/* unreserved / sub-delims: what a reg-name holds besides pct-encoded. */
static bool is_reg_name_char(unsigned char c)
{
    if ((unsigned)(to_lower(c) - 'a') < 26 || (unsigned)(c - '0') < 10)
        return true;
    return c != '\0' && strchr("-._~!$&'()*+,;=", c) != NULL;
}

/* reg-name = *( unreserved / pct-encoded / sub-delims ); IPv4 addresses
 * are reg-names too. */
static bool reg_name_valid(const char *p, const char *end)
{
    while (p < end) {
        if (*p == '%') {
            if (end - p < 3 || hex_value((unsigned char)p[1]) < 0 || hex_value((unsigned char)p[2]) < 0)
                return false;
            p += 3;
        } else if (!is_reg_name_char((unsigned char)*p++)) {
            return false;
        }
    }
    return true;
}

/* The inside of "[...]": an IPv6 address, checked by inet_pton on a copy
 * (no zone identifier: RFC 3986 has none). IPvFuture ("[v1.x]") is refused:
 * no such address form exists, so no request could be routed by one. */
static bool ipv6_literal_valid(const char *p, size_t n)
{
    char text[INET6_ADDRSTRLEN];
    struct in6_addr addr;
    if (n >= sizeof text)
        return false;
    memcpy(text, p, n);
    text[n] = '\0';
    return inet_pton(AF_INET6, text, &addr) == 1;
}

/* Whether v is uri-host [ ":" port ] (RFC 9110 7.2), port being *DIGIT.
 * An empty value is valid (RFC 9112 3.2: what a client sends when the URI
 * has no authority); an empty host before a port (":80") is not, since an
 * http URI must not have an empty host (RFC 9110 4.2.1). */
static bool host_valid(struct http1_slice v)
{
    const char *p = v.base, *end = v.base + v.len, *host_end;
    if (v.len == 0)
        return true;
    if (*p == '[') {
        const char *close = memchr(p, ']', v.len);
        if (!close || !ipv6_literal_valid(p + 1, (size_t)(close - p - 1)))
            return false;
        host_end = close + 1;
    } else {
        host_end = memchr(p, ':', v.len);
        if (!host_end)
            host_end = end;
        if (host_end == p || !reg_name_valid(p, host_end))
            return false;
    }
    if (host_end == end)
        return true;
    if (*host_end != ':')
        return false;
    for (const char *d = host_end + 1; d < end; d++)
        if ((unsigned)(*d - '0') > 9)
            return false;
    return true;
}

/* ---- Header names the parser and the rewriting care about ----------------- */

enum hdr_id {
    H_OTHER, H_CONNECTION, H_CONTENT_LENGTH, H_EXPECT, H_HOST, H_KEEP_ALIVE,
    H_PROXY_AUTHENTICATE, H_PROXY_AUTHORIZATION, H_PROXY_CONNECTION, H_TE,
    H_TRAILER, H_TRANSFER_ENCODING, H_UPGRADE, H_X_FORWARDED_FOR,
    H_X_FORWARDED_HOST, H_X_FORWARDED_PROTO, H_COUNT
};

enum {
    F_HOP       = 1,  /* hop-by-hop: never forwarded as received */
    F_FRAMING   = 2,  /* framing or routing: kept even when Connection names it,
                         else "Connection: content-length" would desync the backend */
    F_FORWARDED = 4,  /* X-Forwarded-*: the proxy writes its own in requests */
};

static const struct {
    const char *name;   /* lower case */
    uint8_t len;
    uint8_t flags;
} hdr_table[H_COUNT] = {
    [H_OTHER]               = { "", 0, 0 },
    [H_CONNECTION]          = { "connection", 10, F_HOP },
    [H_CONTENT_LENGTH]      = { "content-length", 14, F_FRAMING },
    [H_EXPECT]              = { "expect", 6, 0 },
    [H_HOST]                = { "host", 4, F_FRAMING },
    [H_KEEP_ALIVE]          = { "keep-alive", 10, F_HOP },
    [H_PROXY_AUTHENTICATE]  = { "proxy-authenticate", 18, F_HOP },
    [H_PROXY_AUTHORIZATION] = { "proxy-authorization", 19, F_HOP },
    [H_PROXY_CONNECTION]    = { "proxy-connection", 16, F_HOP },
    [H_TE]                  = { "te", 2, F_HOP },
    [H_TRAILER]             = { "trailer", 7, F_HOP },
    [H_TRANSFER_ENCODING]   = { "transfer-encoding", 17, F_FRAMING },
    [H_UPGRADE]             = { "upgrade", 7, F_HOP },
    [H_X_FORWARDED_FOR]     = { "x-forwarded-for", 15, F_FORWARDED },
    [H_X_FORWARDED_HOST]    = { "x-forwarded-host", 16, F_FORWARDED },
    [H_X_FORWARDED_PROTO]   = { "x-forwarded-proto", 17, F_FORWARDED },
};

/* Known names by length; no length is shared by more than two. */
#define HDR_MAX_LEN 19
static const uint8_t hdr_by_len[HDR_MAX_LEN + 1][2] = {
    [2]  = { H_TE },
    [4]  = { H_HOST },
    [6]  = { H_EXPECT },
    [7]  = { H_UPGRADE, H_TRAILER },
    [10] = { H_CONNECTION, H_KEEP_ALIVE },
    [14] = { H_CONTENT_LENGTH },
    [15] = { H_X_FORWARDED_FOR },
    [16] = { H_PROXY_CONNECTION, H_X_FORWARDED_HOST },
    [17] = { H_TRANSFER_ENCODING, H_X_FORWARDED_PROTO },
    [18] = { H_PROXY_AUTHENTICATE },
    [19] = { H_PROXY_AUTHORIZATION },
};

static enum hdr_id hdr_lookup(struct http1_slice name)
{
    if (name.len > HDR_MAX_LEN)
        return H_OTHER;
    for (int i = 0; i < 2; i++) {
        unsigned id = hdr_by_len[name.len][i];
        if (id == H_OTHER)
            break;
        if (eq_lower(name.base, hdr_table[id].name, name.len))
            return (enum hdr_id)id;
    }
    return H_OTHER;
}

/* ---- Head parsing ---------------------------------------------------------- */

/* One parse call: the cursor, and what the headers said so far. */
struct head {
    const char *p, *end;        /* cursor and end of the window parsed */
    bool request;               /* request rules (Host, Expect, X-Forwarded-For) */
    int minor;                  /* HTTP/1.<minor> */
    struct http1_info *info;    /* filled as headers arrive */
    unsigned hosts;             /* Host headers seen */
    bool te_seen;               /* some Transfer-Encoding header */
    bool te_last_chunked;       /* the last transfer coding so far is chunked */
    bool te_chunked_early;      /* chunked followed by another coding */
    bool tok_close;             /* Connection: close */
    bool tok_keep_alive;        /* Connection: keep-alive */
    bool tok_upgrade;           /* Connection: upgrade */
    bool upgrade_seen;          /* an Upgrade header */
    int status;                 /* on error: 400, 414 or 431 */
    const char *err;            /* on error: the reason */
};

static int fail_status(struct head *h, int status, const char *err)
{
    h->status = status;
    h->err = err;
    return HTTP1_ERROR;
}

static int fail(struct head *h, const char *err)
{
    return fail_status(h, 400, err);
}

static void head_init(struct head *h, const char *buf, size_t len, size_t max_head,
                      bool request, struct http1_info *info)
{
    /* Heads are capped at max_head; the return value is an int. */
    size_t window = len < max_head ? len : max_head;
    if (window > INT_MAX)
        window = INT_MAX;
    *h = (struct head){ .p = buf, .end = buf + window, .request = request, .info = info };
    *info = (struct http1_info){ .content_length = -1 };
}

/* Consumes a CRLF or LF line end at the cursor; other bytes are the error
 * `what` (a CR not followed by LF is always "bare CR"). */
static int parse_eol(struct head *h, const char *what)
{
    const char *p = h->p;
    if (p == h->end)
        return HTTP1_INCOMPLETE;
    if (*p == '\n') {
        h->p = p + 1;
        return 0;
    }
    if (*p != '\r')
        return fail(h, what);
    if (p + 1 == h->end)
        return HTTP1_INCOMPLETE;
    if (p[1] != '\n')
        return fail(h, "bare CR");
    h->p = p + 2;
    return 0;
}

/* RFC 9112 2.2: a server SHOULD ignore at least one empty line before the
 * request line. All of them are skipped; they still count against max_head. */
static int skip_empty_lines(struct head *h)
{
    while (h->p < h->end && (*h->p == '\r' || *h->p == '\n')) {
        int r = parse_eol(h, "");
        if (r)
            return r;
    }
    return 0;
}

/* "HTTP/1.0" or "HTTP/1.1"; anything else is 400 (as the contract says). */
static int parse_version(struct head *h)
{
    static const char prefix[] = "HTTP/1.";
    const char *p = h->p;
    for (size_t i = 0; i < sizeof(prefix) - 1; i++, p++) {
        if (p == h->end)
            return HTTP1_INCOMPLETE;
        if (*p != prefix[i])
            return fail(h, "unsupported HTTP version");
    }
    if (p == h->end)
        return HTTP1_INCOMPLETE;
    if (*p != '0' && *p != '1')
        return fail(h, "unsupported HTTP version");
    h->minor = *p - '0';
    h->p = p + 1;
    return 0;
}

/* method SP request-target SP HTTP-version, up to (not through) the line end. */
static int parse_request_line(struct head *h, struct http1_request *req)
{
    const char *p = h->p, *end = h->end, *start = p;
    while (p < end && is_class(*p, C_TCHAR))
        p++;
    if (p == end)
        return HTTP1_INCOMPLETE;
    if (*p != ' ' || p == start)
        return fail(h, "malformed request method");
    req->method = (struct http1_slice){ start, (size_t)(p - start) };
    start = ++p;
    p = skip_plain(p, end, 0x21);
    while (p < end && is_class(*p, C_VCHAR))
        p++;
    if (p == end)
        return HTTP1_INCOMPLETE;
    if (*p != ' ' || p == start)
        return fail(h, "malformed request target");
    req->target = (struct http1_slice){ start, (size_t)(p - start) };
    h->p = p + 1;
    int r = parse_version(h);
    if (r)
        return r;
    req->minor_version = h->minor;
    return 0;
}

/* The request line under the max_line cap. The scan never looks past
 * max_line + 2 bytes (the longest line and its CRLF), so a longer line is 414
 * however it continues, and a prefix of the input never answers differently
 * from the whole. */
static int parse_request_line_capped(struct head *h, struct http1_request *req, size_t max_line)
{
    const char *line = h->p, *end = h->end;
    size_t avail = (size_t)(end - line);
    if (avail > 2 && avail - 2 > max_line)
        h->end = line + max_line + 2;
    int r = parse_request_line(h, req);
    if (r == 0) {
        size_t n = (size_t)(h->p - line);
        r = parse_eol(h, "malformed request line");
        if (r == 0 && n > max_line)
            r = fail_status(h, 414, "request line too long");
    }
    if (r == HTTP1_INCOMPLETE) {
        /* Only a full window proves the line too long: with one byte less,
         * that byte could still be the CR of a line of max_line, or a 400. */
        size_t seen = (size_t)(h->end - line);
        if (seen >= 2 && seen - 2 >= max_line)
            r = fail_status(h, 414, "request line too long");
    }
    h->end = end;
    return r;
}

/* HTTP-version SP 3DIGIT [SP reason-phrase] CRLF. The reason may be missing
 * altogether ("HTTP/1.1 200\r\n"): some backends send that. */
static int parse_status_line(struct head *h, struct http1_response *resp)
{
    int r = parse_version(h);
    if (r)
        return r;
    resp->minor_version = h->minor;
    const char *p = h->p, *end = h->end;
    if (p == end)
        return HTTP1_INCOMPLETE;
    if (*p++ != ' ')
        return fail(h, "malformed status line");
    int status = 0;
    for (int i = 0; i < 3; i++, p++) {
        if (p == end)
            return HTTP1_INCOMPLETE;
        if ((unsigned)(*p - '0') > 9)
            return fail(h, "malformed status code");
        status = status * 10 + (*p - '0');
    }
    if (status < 100)
        return fail(h, "malformed status code");
    resp->status = status;
    if (p == end)
        return HTTP1_INCOMPLETE;
    const char *reason = p;
    if (*p == ' ') {
        reason = ++p;
        while (p < end && is_class(*p, C_VCHAR | C_WS))
            p++;
    }
    resp->reason = (struct http1_slice){ reason, (size_t)(p - reason) };
    h->p = p;
    return parse_eol(h, "malformed status line");
}

static int on_content_length(struct head *h, struct http1_slice value)
{
    struct http1_slice rest = value, e;
    while (list_next(&rest, &e)) {
        if (e.len == 0)
            return fail(h, "invalid Content-Length");
        int64_t n = 0;
        for (size_t i = 0; i < e.len; i++) {
            unsigned d = (unsigned)(unsigned char)e.base[i] - '0';
            if (d > 9)
                return fail(h, "invalid Content-Length");
            if (n > (INT64_MAX - d) / 10)
                return fail(h, "Content-Length too large");
            n = n * 10 + d;
        }
        if (h->info->content_length >= 0 && h->info->content_length != n)
            return fail(h, "differing Content-Length values");
        h->info->content_length = n;
    }
    return 0;
}

/* Codings accumulate over every Transfer-Encoding header, in order. */
static int on_transfer_encoding(struct head *h, struct http1_slice value)
{
    struct http1_slice rest = value, e;
    h->te_seen = true;
    while (list_next(&rest, &e)) {
        if (e.len == 0)
            continue;
        size_t n = 0;
        while (n < e.len && is_class(e.base[n], C_TCHAR))
            n++;
        if (n == 0 || (n < e.len && e.base[n] != ';' && !is_class(e.base[n], C_WS)))
            return fail(h, "invalid Transfer-Encoding");
        bool chunked = n == 7 && eq_lower(e.base, "chunked", 7);
        if (chunked && n < e.len)
            return fail(h, "invalid Transfer-Encoding");  /* chunked takes no parameters */
        if (h->te_last_chunked)
            h->te_chunked_early = true;
        h->te_last_chunked = chunked;
    }
    return 0;
}

static void on_connection(struct head *h, struct http1_slice value)
{
    struct http1_slice rest = value, e;
    while (list_next(&rest, &e)) {
        if (SLICE_IS(e, "close"))
            h->tok_close = true;
        else if (SLICE_IS(e, "keep-alive"))
            h->tok_keep_alive = true;
        else if (SLICE_IS(e, "upgrade"))
            h->tok_upgrade = true;
    }
}

/* Records what one header says about framing and connection handling. */
static int on_header(struct head *h, const struct http1_header *f)
{
    switch (hdr_lookup(f->name)) {
    case H_CONTENT_LENGTH:
        return on_content_length(h, f->value);
    case H_TRANSFER_ENCODING:
        return on_transfer_encoding(h, f->value);
    case H_CONNECTION:
        on_connection(h, f->value);
        return 0;
    case H_UPGRADE:
        h->upgrade_seen = true;
        return 0;
    case H_HOST:
        if (!h->request)
            return 0;
        if (++h->hosts > 1)
            return fail(h, "more than one Host");
        /* RFC 9112 3.2: an invalid Host value is 400, like a missing one;
         * left to routing it would be a 404 for "user@host" or "a b". */
        if (!host_valid(f->value))
            return fail(h, "invalid Host");
        h->info->host = f->value;
        return 0;
    case H_EXPECT:
        if (h->request && SLICE_IS(f->value, "100-continue"))
            h->info->expect_continue = true;
        return 0;
    case H_X_FORWARDED_FOR:
        if (h->request && !h->info->xff.base)
            h->info->xff = f->value;
        return 0;
    default:
        return 0;
    }
}

/* field-name ":" OWS field-value OWS line-end, at the cursor. */
static int parse_field(struct head *h, struct http1_header *f)
{
    const char *p = h->p, *end = h->end, *start = p;
    while (p < end && is_class(*p, C_TCHAR))
        p++;
    if (p == end)
        return HTTP1_INCOMPLETE;
    if (*p != ':') {
        if (is_class(*p, C_WS))
            return fail(h, p == start ? "obsolete line folding" : "whitespace before colon");
        return fail(h, "invalid character in header name");
    }
    if (p == start)
        return fail(h, "empty header name");
    f->name = (struct http1_slice){ start, (size_t)(p - start) };
    p++;
    while (p < end && is_class(*p, C_WS))
        p++;
    start = p;
    p = skip_plain(p, end, 0x20);
    while (p < end && is_class(*p, C_VCHAR | C_WS))
        p++;
    if (p == end)
        return HTTP1_INCOMPLETE;
    const char *value_end = p;
    while (value_end > start && is_class(value_end[-1], C_WS))
        value_end--;
    f->value = (struct http1_slice){ start, (size_t)(value_end - start) };
    h->p = p;
    return parse_eol(h, "control character in header value");
}

/* Header lines through the blank line that ends the head. */
static int parse_fields(struct head *h, struct http1_header *headers, size_t *num)
{
    *num = 0;
    for (;;) {
        if (h->p == h->end)
            return HTTP1_INCOMPLETE;
        if (*h->p == '\r' || *h->p == '\n')
            return parse_eol(h, "");
        if (*num == HTTP1_MAX_HEADERS)
            return fail_status(h, 431, "too many headers");
        struct http1_header *f = &headers[*num];
        int r = parse_field(h, f);
        if (r == 0)
            r = on_header(h, f);
        if (r)
            return r;
        (*num)++;
    }
}

/* Rules that need the whole head: framing (RFC 9112 6.1, 6.3), Host (RFC
 * 9112 3.2), persistence (RFC 9112 9.3) and upgrade (RFC 9110 7.8). */
static int finish_head(struct head *h)
{
    struct http1_info *info = h->info;
    if (h->te_seen) {
        if (info->content_length >= 0)
            return fail(h, "both Content-Length and Transfer-Encoding");
        if (h->minor == 0)
            return fail(h, "Transfer-Encoding in HTTP/1.0");
        if (h->te_chunked_early)
            return fail(h, "chunked before the last transfer coding");
        if (h->te_last_chunked)
            info->chunked = true;
        else if (h->request)
            return fail(h, "Transfer-Encoding does not end in chunked");
    }
    if (h->request && h->minor == 1 && h->hosts == 0)
        return fail(h, "HTTP/1.1 request without Host");
    info->conn_close = h->tok_close || (h->minor == 0 && !h->tok_keep_alive);
    info->conn_upgrade = h->minor == 1 && h->tok_upgrade && h->upgrade_seen;
    return 0;
}

/* RFC 9112 3.2.2: with an absolute-form target the URI's authority is the
 * host, whatever the Host header says; the backend gets the origin form. */
static int apply_target_form(struct head *h, struct http1_request *req)
{
    static const char root[] = "/";
    struct http1_slice t = req->target;
    size_t skip;

    req->path = t;
    req->absolute_form = false;
    if (t.len >= 7 && eq_lower(t.base, "http://", 7))
        skip = 7;
    else if (t.len >= 8 && eq_lower(t.base, "https://", 8))
        skip = 8;
    else
        return 0;
    const char *a = t.base + skip, *end = t.base + t.len, *p = a;
    while (p < end && *p != '/' && *p != '?' && *p != '#')
        p++;
    if (p == a)
        return fail(h, "absolute-form target without a host");
    if (memchr(a, '@', (size_t)(p - a)))
        return fail(h, "absolute-form target with userinfo");
    if (!host_valid((struct http1_slice){ a, (size_t)(p - a) }))
        return fail(h, "invalid host in absolute-form target");
    req->absolute_form = true;
    req->info.host = (struct http1_slice){ a, (size_t)(p - a) };
    if (p == end || *p != '/') {
        /* "http://host" or "http://host?q": the path is "/" (RFC 9112 3.2.1);
         * a query without a path is rare enough to drop to "/". */
        req->path = (struct http1_slice){ root, 1 };
    } else {
        req->path = (struct http1_slice){ p, (size_t)(end - p) };
    }
    return 0;
}

int http1_parse_request(const char *buf, size_t len, size_t max_head, size_t max_line,
                        struct http1_request *req)
{
    struct head h;
    head_init(&h, buf, len, max_head, true, &req->info);
    req->num_headers = 0;
    req->error_status = 0;
    req->error = NULL;

    int r = skip_empty_lines(&h);
    if (r == 0)
        r = parse_request_line_capped(&h, req, max_line);
    if (r == HTTP1_INCOMPLETE && len >= max_head)
        r = fail_status(&h, 414, "request line too long");
    if (r == 0) {
        r = parse_fields(&h, req->headers, &req->num_headers);
        if (r == HTTP1_INCOMPLETE && len >= max_head)
            r = fail_status(&h, 431, "request head too large");
    }
    if (r == 0)
        r = finish_head(&h);
    if (r == 0)
        r = apply_target_form(&h, req);
    if (r == HTTP1_ERROR) {
        req->error_status = h.status;
        req->error = h.err;
    }
    return r ? r : (int)(h.p - buf);
}

int http1_parse_response(const char *buf, size_t len, size_t max_head,
                         struct http1_response *resp)
{
    struct head h;
    head_init(&h, buf, len, max_head, false, &resp->info);
    resp->num_headers = 0;
    resp->error = NULL;

    int r = parse_status_line(&h, resp);
    if (r == 0)
        r = parse_fields(&h, resp->headers, &resp->num_headers);
    if (r == HTTP1_INCOMPLETE && len >= max_head)
        r = fail(&h, "response head too large");
    if (r == 0)
        r = finish_head(&h);
    if (r == HTTP1_ERROR)
        resp->error = h.err;
    return r ? r : (int)(h.p - buf);
}

bool http1_response_has_body(struct http1_slice method, int status)
{
    /* Method names are case-sensitive (RFC 9110 9.1): "head" is not HEAD. */
    if (status < 200 || status == 204 || status == 304)
        return false;
    if (method.len == 4 && memcmp(method.base, "HEAD", 4) == 0)
        return false;
    if (status < 300 && method.len == 7 && memcmp(method.base, "CONNECT", 7) == 0)
        return false;
    return true;
}

/* ---- Chunked bodies (RFC 9112 7.1) ----------------------------------------- */

enum {
    CH_SIZE0,           /* first hex digit of a chunk size (zero state) */
    CH_SIZE,            /* further hex digits */
    CH_SIZE_WS,         /* BWS after the size: only ';' may follow */
    CH_EXT,             /* chunk extensions, up to CR */
    CH_SIZE_LF,         /* LF ending the size line */
    CH_DATA,            /* chunk data: `remaining` bytes */
    CH_DATA_CR,         /* CRLF after the data */
    CH_DATA_LF,
    CH_TRAILER,         /* start of a trailer line, or the final CRLF */
    CH_TRAILER_NAME,
    CH_TRAILER_VALUE,
    CH_TRAILER_LF,
    CH_END_LF,          /* LF of the final CRLF */
    CH_DONE,
    CH_ERROR,
};

#define CHUNK_LINE_MAX 4096   /* size line or trailer line, its CRLF included */

/* Advances the framing state machine by one byte outside chunk data;
 * false on malformed framing. Line ends must be CRLF exactly: the body is
 * relayed verbatim, so accepting what the backend might read differently
 * would open a desync. */
/* Keeps a byte of the trailer section for a caller that asked for them. */
static void chunked_keep_trailer(struct http1_chunked *c, unsigned char ch)
{
    if (c->trailers_len < c->trailers_cap)
        c->trailers[c->trailers_len++] = (char)ch;
    else
        c->trailers_cut = true;
}

static bool chunked_step(struct http1_chunked *c, unsigned char ch)
{
    if (++c->line_len > CHUNK_LINE_MAX)
        return false;
    if (c->trailers && c->state >= CH_TRAILER && c->state <= CH_TRAILER_LF &&
        !(c->state == CH_TRAILER && ch == '\r'))
        chunked_keep_trailer(c, ch);
    switch (c->state) {
    case CH_SIZE0:
    case CH_SIZE: {
        int d = hex_value(ch);
        if (d >= 0) {
            /* At most INT64_MAX, as nginx (off_t): a backend reading the
             * size into a signed 64-bit integer must not see it negative. */
            if (c->remaining > ((uint64_t)INT64_MAX >> 4))
                return false;
            c->remaining = c->remaining << 4 | (unsigned)d;
            c->state = CH_SIZE;
            return true;
        }
        if (c->state == CH_SIZE0)
            return false;
        if (ch == '\r')
            c->state = CH_SIZE_LF;
        else if (ch == ';')
            c->state = CH_EXT;
        else if (ch == ' ' || ch == '\t')
            c->state = CH_SIZE_WS;
        else
            return false;
        return true;
    }
    case CH_SIZE_WS:
        if (ch == ';')
            c->state = CH_EXT;
        return ch == ';' || ch == ' ' || ch == '\t';
    case CH_EXT:
        if (ch == '\r')
            c->state = CH_SIZE_LF;
        return ch == '\r' || is_class((char)ch, C_VCHAR | C_WS);
    case CH_SIZE_LF:
        c->state = c->remaining ? CH_DATA : CH_TRAILER;
        c->line_len = 0;
        return ch == '\n';
    case CH_DATA_CR:
        c->state = CH_DATA_LF;
        return ch == '\r';
    case CH_DATA_LF:
        c->state = CH_SIZE0;
        c->line_len = 0;
        return ch == '\n';
    case CH_TRAILER:
        if (ch == '\r') {
            c->state = CH_END_LF;
            return true;
        }
        c->state = CH_TRAILER_NAME;
        return is_class((char)ch, C_TCHAR);
    case CH_TRAILER_NAME:
        if (ch == ':')
            c->state = CH_TRAILER_VALUE;
        return ch == ':' || is_class((char)ch, C_TCHAR);
    case CH_TRAILER_VALUE:
        if (ch == '\r')
            c->state = CH_TRAILER_LF;
        return ch == '\r' || is_class((char)ch, C_VCHAR | C_WS);
    case CH_TRAILER_LF:
        c->state = CH_TRAILER;
        c->line_len = 0;
        return ch == '\n';
    case CH_END_LF:
        c->state = CH_DONE;
        c->done = true;
        return ch == '\n';
    default:
        return false;
    }
}

ssize_t http1_chunked_scan(struct http1_chunked *c, const char *buf, size_t len)
{
    const char *p = buf, *end = buf + len;
    if (c->state == CH_ERROR)
        return -1;
    while (p < end && c->state != CH_DONE) {
        if (c->state == CH_DATA) {
            size_t avail = (size_t)(end - p);
            size_t n = c->remaining < avail ? (size_t)c->remaining : avail;
            p += n;
            c->remaining -= n;
            if (c->remaining == 0)
                c->state = CH_DATA_CR;
            continue;
        }
        if (!chunked_step(c, (unsigned char)*p++)) {
            c->state = CH_ERROR;
            c->done = false;
            return -1;
        }
    }
    return p - buf;
}

ssize_t http1_chunked_decode(struct http1_chunked *c, char *buf, size_t len, size_t *data_len)
{
    char *p = buf, *end = buf + len, *w = buf;
    if (c->state == CH_ERROR)
        return -1;
    while (p < end && c->state != CH_DONE) {
        if (c->state == CH_DATA) {
            size_t avail = (size_t)(end - p);
            size_t n = c->remaining < avail ? (size_t)c->remaining : avail;
            memmove(w, p, n);   /* the data moves left over the framing */
            w += n;
            p += n;
            c->remaining -= n;
            if (c->remaining == 0)
                c->state = CH_DATA_CR;
            continue;
        }
        if (!chunked_step(c, (unsigned char)*p++)) {
            c->state = CH_ERROR;
            c->done = false;
            return -1;
        }
    }
    *data_len = (size_t)(w - buf);
    return p - buf;
}

/* ---- Head rewriting -------------------------------------------------------- */

/* Output under a capacity: once something does not fit, the result is -1. */
struct out {
    char *p, *end;
    bool full;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (n > (size_t)(o->end - o->p)) {
        o->full = true;
        return;
    }
    if (n) {
        memcpy(o->p, s, n);
        o->p += n;
    }
}

#define PUT_LIT(o, lit) put((o), (lit), sizeof(lit) - 1)

static void put_slice(struct out *o, struct http1_slice s)
{
    put(o, s.base, s.len);
}

static void put_str(struct out *o, const char *s)
{
    put(o, s, strlen(s));
}

static void put_header(struct out *o, const struct http1_header *f)
{
    put_slice(o, f->name);
    PUT_LIT(o, ": ");
    put_slice(o, f->value);
    PUT_LIT(o, "\r\n");
}

/* Content-Length as the parsed number, written for the first
 * Content-Length field only: identical duplicates ("5" twice, or "5, 5")
 * go on as one field (RFC 9110 8.6 lets a recipient replace the list with
 * the single value, as nginx and HAProxy do), never as two lines the next
 * hop could read differently. Returns false when f is another header, or
 * when the message carries no parsed length (a head built by hand). */
static bool put_content_length_once(struct out *o, const struct http1_header *f, enum hdr_id id,
                                    int64_t content_length, bool *written)
{
    if (id != H_CONTENT_LENGTH || content_length < 0)
        return false;
    if (!*written) {
        char digits[20];   /* INT64_MAX has 19 */
        size_t i = sizeof digits;
        uint64_t v = (uint64_t)content_length;
        do
            digits[--i] = (char)('0' + v % 10);
        while (v /= 10);
        put_slice(o, f->name);
        PUT_LIT(o, ": ");
        put(o, digits + i, sizeof digits - i);
        PUT_LIT(o, "\r\n");
        *written = true;
    }
    return true;
}

static ssize_t out_result(const struct out *o, const char *start)
{
    return o->full ? -1 : o->p - start;
}

/* The header names listed in Connection (RFC 9110 7.6.1), which are
 * hop-by-hop too. Kept as slices; past CONN_NAMES_MAX the lookup falls back
 * to re-reading the Connection headers, so no name is ever missed. */
#define CONN_NAMES_MAX 32
struct conn_names {
    struct http1_slice name[CONN_NAMES_MAX];
    size_t n;
    bool overflow;                      /* more names than fit in name[] */
    const struct http1_header *headers;
    size_t num_headers;
};

static void conn_names_collect(struct conn_names *cn, const struct http1_header *headers,
                               size_t num_headers)
{
    cn->n = 0;
    cn->overflow = false;
    cn->headers = headers;
    cn->num_headers = num_headers;
    for (size_t i = 0; i < num_headers; i++) {
        if (hdr_lookup(headers[i].name) != H_CONNECTION)
            continue;
        struct http1_slice rest = headers[i].value, e;
        while (list_next(&rest, &e)) {
            if (e.len == 0)
                continue;
            if (cn->n == CONN_NAMES_MAX) {
                cn->overflow = true;
                return;
            }
            cn->name[cn->n++] = e;
        }
    }
}

static bool conn_names_has(const struct conn_names *cn, struct http1_slice name)
{
    if (!cn->overflow) {
        for (size_t i = 0; i < cn->n; i++)
            if (slice_eq_ci(cn->name[i], name))
                return true;
        return false;
    }
    for (size_t i = 0; i < cn->num_headers; i++) {
        if (hdr_lookup(cn->headers[i].name) != H_CONNECTION)
            continue;
        struct http1_slice rest = cn->headers[i].value, e;
        while (list_next(&rest, &e))
            if (slice_eq_ci(e, name))
                return true;
    }
    return false;
}

/* Whether a received header goes on unchanged. `drop` are the flags that
 * remove a header in this direction; Upgrade survives when upgrading. */
static bool header_forwarded(const struct http1_header *f, unsigned drop, bool upgrade,
                             const struct conn_names *cn)
{
    enum hdr_id id = hdr_lookup(f->name);
    if (id == H_UPGRADE && upgrade)
        return true;
    if (hdr_table[id].flags & drop)
        return false;
    if (hdr_table[id].flags & F_FRAMING)
        return true;
    return !conn_names_has(cn, f->name);
}

/* "X-Forwarded-For: <client values, in order>, <client_addr>". Values from
 * the client are left out when Connection names X-Forwarded-For. */
static void put_forwarded_for(struct out *o, const struct http1_request *req,
                              const struct conn_names *cn, const char *client_addr)
{
    static const struct http1_slice xff = { "x-forwarded-for", 15 };
    PUT_LIT(o, "X-Forwarded-For: ");
    if (!conn_names_has(cn, xff)) {
        for (size_t i = 0; i < req->num_headers; i++) {
            const struct http1_header *f = &req->headers[i];
            if (f->value.len == 0 || hdr_lookup(f->name) != H_X_FORWARDED_FOR)
                continue;
            put_slice(o, f->value);
            PUT_LIT(o, ", ");
        }
    }
    put_str(o, client_addr);
    PUT_LIT(o, "\r\n");
}

ssize_t http1_write_request_head(const struct http1_request *req, const struct http1_forward *fwd,
                                 char *out, size_t cap)
{
    struct out o = { out, out + cap, false };
    bool upgrade = req->info.conn_upgrade;
    struct conn_names cn;
    conn_names_collect(&cn, req->headers, req->num_headers);

    put_slice(&o, req->method);
    PUT_LIT(&o, " ");
    put_slice(&o, req->path);
    PUT_LIT(&o, " HTTP/1.1\r\n");
    if (req->absolute_form) {
        PUT_LIT(&o, "Host: ");
        put_slice(&o, req->info.host);
        PUT_LIT(&o, "\r\n");
    }
    bool cl_written = false;
    for (size_t i = 0; i < req->num_headers; i++) {
        const struct http1_header *f = &req->headers[i];
        enum hdr_id id = hdr_lookup(f->name);
        if (req->absolute_form && id == H_HOST)
            continue;
        if (put_content_length_once(&o, f, id, req->info.content_length, &cl_written))
            continue;
        if (header_forwarded(f, F_HOP | F_FORWARDED, upgrade, &cn))
            put_header(&o, f);
    }
    if (upgrade)
        PUT_LIT(&o, "Connection: upgrade\r\n");
    put_forwarded_for(&o, req, &cn, fwd->client_addr);
    PUT_LIT(&o, "X-Forwarded-Proto: ");
    put_str(&o, fwd->proto);
    PUT_LIT(&o, "\r\n");
    if (req->info.host.base) {
        PUT_LIT(&o, "X-Forwarded-Host: ");
        put_slice(&o, req->info.host);
        PUT_LIT(&o, "\r\n");
    }
    PUT_LIT(&o, "\r\n");
    return out_result(&o, out);
}

void http1_slice_copy(char *dst, size_t cap, struct http1_slice s)
{
    size_t n = s.len < cap - 1 ? s.len : cap - 1;
    memcpy(dst, s.base, n);
    dst[n] = '\0';
}

size_t http1_end_to_end_fields(const struct http1_header *in, size_t n, struct http1_header *out)
{
    struct conn_names cn;
    size_t k = 0;

    conn_names_collect(&cn, in, n);
    for (size_t i = 0; i < n; i++) {
        enum hdr_id id = hdr_lookup(in[i].name);
        if ((hdr_table[id].flags & F_HOP) || id == H_TRANSFER_ENCODING || conn_names_has(&cn, in[i].name))
            continue;
        out[k++] = in[i];
    }
    return k;
}

ssize_t http1_write_response_head(const struct http1_response *resp, bool close,
                                  int client_minor_version, char *out, size_t cap)
{
    struct out o = { out, out + cap, false };
    int status = resp->status;
    bool upgrade = status == 101;
    if (status < 100 || status > 999)
        return -1;
    struct conn_names cn;
    conn_names_collect(&cn, resp->headers, resp->num_headers);

    char code[3] = { (char)('0' + status / 100), (char)('0' + status / 10 % 10),
                     (char)('0' + status % 10) };
    PUT_LIT(&o, "HTTP/1.1 ");
    put(&o, code, 3);
    PUT_LIT(&o, " ");
    put_slice(&o, resp->reason);
    PUT_LIT(&o, "\r\n");
    /* An HTTP/1.0 client cannot read chunked: the proxy decodes the body
     * (http1_chunked_decode) and ends it by closing the connection. */
    bool dechunk = client_minor_version == 0 && resp->info.chunked;
    bool cl_written = false;
    for (size_t i = 0; i < resp->num_headers; i++) {
        const struct http1_header *f = &resp->headers[i];
        enum hdr_id id = hdr_lookup(f->name);
        if (put_content_length_once(&o, f, id, resp->info.content_length, &cl_written))
            continue;
        if (header_forwarded(f, F_HOP, upgrade, &cn) && !(dechunk && id == H_TRANSFER_ENCODING))
            put_header(&o, f);
    }
    if (upgrade)
        PUT_LIT(&o, "Connection: upgrade\r\n");
    else if (close)
        PUT_LIT(&o, "Connection: close\r\n");
    else if (client_minor_version == 0)
        PUT_LIT(&o, "Connection: keep-alive\r\n");
    PUT_LIT(&o, "\r\n");
    return out_result(&o, out);
}
