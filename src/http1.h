/* http1.h — incremental HTTP/1.x message-head parser, body framing and the
 * head rewriting a reverse proxy does. Allocates nothing: parsed fields are
 * slices pointing into the caller's buffer. Owns the protocol rules
 * (RFC 9110/9112): what is malformed, what is request smuggling, which
 * headers are hop-by-hop. Does not own sockets or buffers. */
#ifndef CORE_HTTP1_H
#define CORE_HTTP1_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define HTTP1_MAX_HEADERS 100   /* fields a parsed head may have */
/* Room in the header arrays: a proxy building a request from another
 * protocol (HTTP/2) adds a few fields of its own (Host, Upgrade, ...). */
#define HTTP1_HEADER_SLOTS (HTTP1_MAX_HEADERS + 8)
#define HTTP1_INCOMPLETE (-2)
#define HTTP1_ERROR      (-1)

struct http1_slice {
    const char *base;
    size_t len;
};

struct http1_header {
    struct http1_slice name;
    struct http1_slice value;   /* leading/trailing whitespace trimmed */
};

/* Facts about a message's framing and connection handling, derived from its
 * headers by http1_parse_*(). */
struct http1_info {
    int64_t content_length;     /* -1 when absent */
    bool chunked;               /* Transfer-Encoding ends in "chunked" */
    bool conn_close;            /* "Connection: close", or HTTP/1.0 without keep-alive */
    bool conn_upgrade;          /* Connection has the "upgrade" token and an Upgrade header exists */
    bool expect_continue;       /* "Expect: 100-continue" (requests only) */
    struct http1_slice host;    /* Host header value (requests only), base NULL when absent */
    struct http1_slice xff;     /* first X-Forwarded-For value (requests only), base NULL when absent */
};

struct http1_request {
    struct http1_slice method;
    struct http1_slice target;      /* as received */
    /* The target in origin form: `target` itself, or for an absolute-form
     * target ("http://host/path?q") its path and query, "/" when it has
     * none. With an absolute-form target, info.host is the URI's authority,
     * not the Host header (RFC 9112 3.2.2). */
    struct http1_slice path;
    bool absolute_form;
    int minor_version;          /* 0 or 1 */
    size_t num_headers;
    struct http1_header headers[HTTP1_HEADER_SLOTS];
    struct http1_info info;
    int error_status;           /* on HTTP1_ERROR: 400, 414 (request line too long) or 431 */
    const char *error;          /* on HTTP1_ERROR: short reason for the log */
};

struct http1_response {
    int minor_version;
    int status;
    struct http1_slice reason;
    size_t num_headers;
    struct http1_header headers[HTTP1_HEADER_SLOTS];
    struct http1_info info;
    const char *error;          /* on HTTP1_ERROR */
};

/* Parses the head of a request in buf[0..len). Returns the head's length
 * (through the blank line), HTTP1_INCOMPLETE when more bytes are needed, or
 * HTTP1_ERROR with error_status and error set. Stateless: call again with
 * the grown buffer; a prefix of the input never gets an answer other than
 * INCOMPLETE or the whole input's answer.
 * Limits: max_head is the most bytes a head may take (capped at INT_MAX):
 * when len >= max_head and the head is still incomplete it is an error, 414
 * while the request line is unfinished, else 431. A request line (without
 * its line end) longer than max_line is 414, decided as soon as max_line + 2
 * bytes of it have arrived. More than HTTP1_MAX_HEADERS headers is 431.
 * Rejected as 400 (smuggling shapes and malformed input): a CR not followed
 * by LF (CRLF and bare LF both end lines), obs-fold, whitespace before a
 * colon, invalid token characters in the method or a header name, control
 * characters in the target or a value, both Content-Length and
 * Transfer-Encoding, differing or invalid Content-Length values (identical
 * duplicates such as "5, 5" are accepted as 5), a Transfer-Encoding not
 * ending in "chunked", "chunked" anywhere but last or with parameters,
 * Transfer-Encoding in HTTP/1.0, a version other than HTTP/1.0 or 1.1, more
 * than one Host, HTTP/1.1 without Host, a Host value that is not
 * uri-host [":" port] (RFC 9112 3.2, RFC 3986 3.2.2: a reg-name of
 * unreserved, sub-delims and %XX, or a bracketed IPv6 address, then
 * optional ":" and digits; so "a b", "user@host", "a/b" are 400 while an
 * empty value is accepted). Empty lines before the request line
 * are skipped (RFC 9112 2.2). An absolute-form target (scheme http or
 * https) sets `path` and info.host from the URI; one with an empty authority,
 * userinfo ("user@host") or a host as invalid as above is 400. */
int http1_parse_request(const char *buf, size_t len, size_t max_head, size_t max_line,
                        struct http1_request *req);

/* Same for a response head (from a backend), with the same framing rules
 * (a bad one is an error: the backend connection cannot be trusted), except
 * that a Transfer-Encoding not ending in chunked means close-delimited
 * (chunked false, content_length -1). No Host rules, no max_line; the reason
 * phrase may be missing ("HTTP/1.1 200\r\n"). */
int http1_parse_response(const char *buf, size_t len, size_t max_head,
                         struct http1_response *resp);

/* Whether a response to this request/status carries a body at all:
 * false for HEAD, 1xx, 204 and 304 (RFC 9112 6.3). */
bool http1_response_has_body(struct http1_slice method, int status);

/* Incremental chunked-body scanner: the proxy relays chunked bodies verbatim
 * and only needs to know where they end. Zero-initialise. */
struct http1_chunked {
    int state;
    uint64_t remaining;   /* bytes left in the current chunk's data */
    size_t line_len;      /* bytes in the current size/trailer line (capped) */
    bool done;            /* the last chunk and trailers have been seen */
    /* Optional, set by the caller: the trailer section's lines (each with
     * its CRLF, without the final empty line) are copied here as they are
     * scanned, up to trailers_cap bytes (the rest is dropped, and
     * trailers_cut set). For a proxy that passes trailers on in another
     * framing (HTTP/2). */
    char *trailers;
    size_t trailers_cap, trailers_len;
    bool trailers_cut;
};
/* Scans buf[0..len): returns how many bytes belong to the body (stops right
 * after the end of the body, setting done; 0 once done), or -1 on malformed
 * framing: bad hex (including a sign or a "0x" prefix), a size above
 * INT64_MAX, missing CRLF after data, a size or trailer
 * line longer than 4 KiB with its CRLF, a line end other than CRLF, control
 * characters in extensions or trailers, a malformed trailer field. Strict on
 * purpose: the body is relayed verbatim, so anything the backend could read
 * differently is refused. After -1 every call returns -1. */
ssize_t http1_chunked_scan(struct http1_chunked *c, const char *buf, size_t len);

/* Like http1_chunked_scan, and also removes the chunk framing in place:
 * the chunk data of buf[0..return value) is moved to buf[0..*data_len).
 * Refuses exactly what http1_chunked_scan refuses.
 * For HTTP/1.0 clients, which cannot read chunked bodies. */
ssize_t http1_chunked_decode(struct http1_chunked *c, char *buf, size_t len, size_t *data_len);

/* What the proxy adds to a forwarded request. */
struct http1_forward {
    const char *client_addr;   /* "203.0.113.7" or "2001:db8::1" */
    const char *proto;         /* "http" or "https" */
};

/* Writes the request head for the backend into out[0..cap): the request
 * line with the target in origin form (`path`; HTTP/1.1 towards the
 * backend), for an absolute-form target "Host: <the URI's authority>" in
 * place of the received Host header, every end-to-end header
 * unchanged and in order as "Name: value\r\n" (Host included) except
 * Content-Length, which goes out once, where the first one was, as the
 * parsed number (identical duplicates and lists such as "5, 5" become one
 * "Content-Length: 5"; RFC 9110 8.6), without the
 * hop-by-hop headers (Connection, Keep-Alive, Proxy-Connection, TE, Trailer,
 * Upgrade, Proxy-Authenticate, Proxy-Authorization and any named in
 * Connection) except that Content-Length, Transfer-Encoding and Host are
 * always kept (the body is relayed verbatim: "Connection: content-length"
 * must not desync the backend) and, for an upgrade (info.conn_upgrade),
 * Upgrade is kept. Then, in this order: "Connection: upgrade" for an
 * upgrade; X-Forwarded-For with the client's non-empty values joined by ", "
 * and the client address appended (one combined header; the client's values
 * are dropped when Connection names X-Forwarded-For); X-Forwarded-Proto;
 * X-Forwarded-Host with info.host (only when there is one). Client
 * X-Forwarded-* headers are replaced, never passed on. Returns the length,
 * or -1 when it does not fit. */
ssize_t http1_write_request_head(const struct http1_request *req, const struct http1_forward *fwd,
                                 char *out, size_t cap);

/* Writes the response head for the client: status line ("HTTP/1.1 <status>
 * <reason>", the space kept when the reason is empty), end-to-end headers
 * unchanged and in order (Content-Length once, as for requests),
 * hop-by-hop ones removed as for requests
 * (Content-Length, Transfer-Encoding kept, except that Transfer-Encoding
 * is dropped for an HTTP/1.0 client: the caller decodes that body with
 * http1_chunked_decode and closes after it, so close must be true), then for 101 the Upgrade header kept and
 * "Connection: upgrade" written, otherwise "Connection: close" when close is
 * true (and "Connection: keep-alive" when the client spoke HTTP/1.0 and close
 * is false). Returns length, or -1 when it does not fit or the status is
 * outside 100..999. */
ssize_t http1_write_response_head(const struct http1_response *resp, bool close,
                                  int client_minor_version, char *out, size_t cap);

/* Copies the end-to-end fields of in[0..n) to out (room for n): without
 * the hop-by-hop ones (as for http1_write_*_head), those the Connection
 * field names, and Transfer-Encoding (for a protocol with its own framing,
 * HTTP/2). Returns how many were copied. */
size_t http1_end_to_end_fields(const struct http1_header *in, size_t n, struct http1_header *out);

/* Copies s into dst (cap bytes, cap >= 1) as a NUL-terminated string,
 * cut to fit. */
void http1_slice_copy(char *dst, size_t cap, struct http1_slice s);

/* Case-insensitive comparison of a slice with a NUL-terminated lower-case name. */
bool http1_slice_eq(struct http1_slice s, const char *lower);

#endif
