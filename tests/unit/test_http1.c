/* test_http1.c — unit tests for the HTTP/1 head parser, the chunked scanner
 * and the head rewriting: one function per behaviour, exact bytes for what
 * goes on the wire. Inputs are copied into buffers of exactly their length so
 * AddressSanitizer catches any read past the end. */
#include "check.h"
#include "http1.h"

#include <stdlib.h>

#define LIT(s) (s), (sizeof(s) - 1)

enum { MAX_HEAD = 8192, MAX_LINE = 4096 };

static char *held;   /* the copy that the last parse's slices point into */

static const char *hold(const char *s, size_t n)
{
    free(held);
    held = malloc(n ? n : 1);
    memcpy(held, s, n);
    return held;
}

static int parse_req_limits(const char *s, size_t n, size_t max_head, size_t max_line,
                            struct http1_request *req)
{
    return http1_parse_request(hold(s, n), n, max_head, max_line, req);
}

static int parse_req(const char *s, size_t n, struct http1_request *req)
{
    return parse_req_limits(s, n, MAX_HEAD, MAX_LINE, req);
}

static int parse_resp(const char *s, size_t n, struct http1_response *resp)
{
    return http1_parse_response(hold(s, n), n, MAX_HEAD, resp);
}

static bool slice_is(struct http1_slice s, const char *want)
{
    return s.base && s.len == strlen(want) && memcmp(s.base, want, s.len) == 0;
}

/* Parses s as a request and checks it is rejected with status and reason. */
static void check_rejected(const char *s, size_t n, int status, const char *reason)
{
    struct http1_request req;
    int r = parse_req(s, n, &req);
    CHECK(r == HTTP1_ERROR);
    CHECK(req.error_status == status);
    CHECK_STR(req.error, reason);
}

#define REJECT(s, status, reason) check_rejected(LIT(s), (status), (reason))

/* Every proper prefix of a request is INCOMPLETE, or the same error the
 * whole input gets; the whole input gives `want`. */
static void check_prefixes(const char *s, size_t n, size_t max_head, size_t max_line, int want)
{
    struct http1_request full, part;
    int r = parse_req_limits(s, n, max_head, max_line, &full);
    CHECK(r == want);
    for (size_t k = 0; k < n; k++) {
        char *b = malloc(k ? k : 1);
        memcpy(b, s, k);
        int rk = http1_parse_request(b, k, max_head, max_line, &part);
        bool ok = rk == HTTP1_INCOMPLETE ||
                  (rk == HTTP1_ERROR && r == HTTP1_ERROR && part.error_status == full.error_status &&
                   strcmp(part.error, full.error) == 0);
        if (!ok)
            fprintf(stderr, "prefix %zu of %zu: got %d\n", k, n, rk);
        CHECK(ok);
        free(b);
    }
}

/* ---- Request parsing --------------------------------------------------------- */

static const char browser_get[] =
    "GET /index.html?q=1 HTTP/1.1\r\n"
    "Host: example.com\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n"
    "Accept: text/html,application/xhtml+xml;q=0.9,*/*;q=0.8\r\n"
    "Accept-Language: en-US,en;q=0.5\r\n"
    "Accept-Encoding: gzip, deflate, br\r\n"
    "Connection: keep-alive\r\n"
    "Cookie: a=b; c=d\r\n"
    "Upgrade-Insecure-Requests: 1\r\n"
    "Cache-Control: max-age=0\r\n"
    "\r\n";

static void test_parse_get_with_many_headers(void)
{
    struct http1_request req;
    int r = parse_req(LIT(browser_get), &req);
    CHECK(r == (int)sizeof(browser_get) - 1);
    CHECK(slice_is(req.method, "GET"));
    CHECK(slice_is(req.target, "/index.html?q=1"));
    CHECK(req.minor_version == 1);
    CHECK(req.num_headers == 9);
    CHECK(slice_is(req.headers[0].name, "Host"));
    CHECK(slice_is(req.headers[0].value, "example.com"));
    CHECK(slice_is(req.headers[2].value, "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"));
    CHECK(slice_is(req.headers[8].name, "Cache-Control"));
    CHECK(slice_is(req.headers[8].value, "max-age=0"));
    CHECK(slice_is(req.info.host, "example.com"));
    CHECK(req.info.content_length == -1);
    CHECK(!req.info.chunked);
    CHECK(!req.info.conn_close);
    CHECK(!req.info.conn_upgrade);
    CHECK(!req.info.expect_continue);
    CHECK(req.info.xff.base == NULL);
    CHECK(req.error == NULL);
}

static void test_parse_post_with_content_length(void)
{
    struct http1_request req;
    static const char s[] = "POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world";
    int r = parse_req(LIT(s), &req);
    CHECK(r == (int)(sizeof(s) - 1 - 11));
    CHECK(slice_is(req.method, "POST"));
    CHECK(req.info.content_length == 11);
    CHECK(!req.info.chunked);
}

static void test_parse_chunked_post(void)
{
    struct http1_request req;
    static const char s[] = "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    CHECK(parse_req(LIT(s), &req) == (int)sizeof(s) - 1);
    CHECK(req.info.chunked);
    CHECK(req.info.content_length == -1);
}

static void test_parse_gzip_then_chunked_is_chunked(void)
{
    struct http1_request req;
    static const char s[] = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n"
                            "Transfer-Encoding: Chunked\r\n\r\n";
    CHECK(parse_req(LIT(s), &req) == (int)sizeof(s) - 1);
    CHECK(req.info.chunked);
}

static void test_parse_lf_line_ends_accepted(void)
{
    struct http1_request req;
    static const char s[] = "GET / HTTP/1.1\nHost: a\nX: y\n\n";
    CHECK(parse_req(LIT(s), &req) == (int)sizeof(s) - 1);
    CHECK(req.num_headers == 2);
    CHECK(slice_is(req.headers[1].value, "y"));
}

static void test_parse_skips_empty_lines_before_request_line(void)
{
    struct http1_request req;
    static const char s[] = "\r\n\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    CHECK(parse_req(LIT(s), &req) == (int)sizeof(s) - 1);
    CHECK(slice_is(req.method, "GET"));
}

static void test_parse_trims_value_whitespace(void)
{
    struct http1_request req;
    static const char s[] = "GET / HTTP/1.1\r\nHost:a\r\nX-A: \t v w \t\r\nX-Empty:\r\nX-Blank:   \r\n\r\n";
    CHECK(parse_req(LIT(s), &req) == (int)sizeof(s) - 1);
    CHECK(req.num_headers == 4);
    CHECK(slice_is(req.headers[0].value, "a"));
    CHECK(slice_is(req.headers[1].value, "v w"));
    CHECK(req.headers[2].value.len == 0);
    CHECK(req.headers[3].value.len == 0);
}

static void test_parse_obs_text_in_value_accepted(void)
{
    struct http1_request req;
    static const char s[] = "GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\r\n\r\n";
    CHECK(parse_req(LIT(s), &req) == (int)sizeof(s) - 1);
    CHECK(slice_is(req.headers[1].value, "caf\xc3\xa9"));
}

static void test_parse_http10_defaults_to_close(void)
{
    struct http1_request req;
    CHECK(parse_req(LIT("GET / HTTP/1.0\r\n\r\n"), &req) > 0);
    CHECK(req.minor_version == 0);
    CHECK(req.info.conn_close);
    CHECK(req.info.host.base == NULL);
}

static void test_parse_http10_keep_alive(void)
{
    struct http1_request req;
    CHECK(parse_req(LIT("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"), &req) > 0);
    CHECK(!req.info.conn_close);
}

static void test_parse_connection_close(void)
{
    struct http1_request req;
    CHECK(parse_req(LIT("GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, CLOSE\r\n\r\n"), &req) > 0);
    CHECK(req.info.conn_close);
}

static void test_parse_connection_upgrade(void)
{
    struct http1_request req;
    CHECK(parse_req(LIT("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n"
                        "Upgrade: websocket\r\n\r\n"), &req) > 0);
    CHECK(req.info.conn_upgrade);
    CHECK(!req.info.conn_close);
}

static void test_parse_upgrade_needs_both_headers(void)
{
    struct http1_request req;
    CHECK(parse_req(LIT("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n"), &req) > 0);
    CHECK(!req.info.conn_upgrade);
    CHECK(parse_req(LIT("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n"), &req) > 0);
    CHECK(!req.info.conn_upgrade);
    CHECK(parse_req(LIT("GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"), &req) > 0);
    CHECK(!req.info.conn_upgrade);   /* RFC 9110 7.8: never for HTTP/1.0 */
}

static void test_parse_expect_continue(void)
{
    struct http1_request req;
    CHECK(parse_req(LIT("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n"),
                    &req) > 0);
    CHECK(req.info.expect_continue);
}

static void test_parse_xff_first_value(void)
{
    struct http1_request req;
    CHECK(parse_req(LIT("GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\n"
                        "x-forwarded-for: 2.2.2.2\r\n\r\n"), &req) > 0);
    CHECK(slice_is(req.info.xff, "1.1.1.1"));
}

static void test_parse_identical_content_lengths_accepted(void)
{
    struct http1_request req;
    CHECK(parse_req(LIT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n"), &req) > 0);
    CHECK(req.info.content_length == 5);
    CHECK(parse_req(LIT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 005\r\n\r\n"),
                    &req) > 0);
    CHECK(req.info.content_length == 5);
}

static void test_parse_pipelined_returns_head_length(void)
{
    struct http1_request req;
    static const char first[] = "GET /a HTTP/1.1\r\nHost: a\r\n\r\n";
    static const char both[] = "GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n";
    int r = parse_req(LIT(both), &req);
    CHECK(r == (int)sizeof(first) - 1);
    CHECK(slice_is(req.target, "/a"));
    int r2 = http1_parse_request(held + r, sizeof(both) - 1 - (size_t)r, MAX_HEAD, MAX_LINE, &req);
    CHECK(r2 == (int)sizeof(first) - 1);
    CHECK(slice_is(req.target, "/b"));
}

static void test_parse_head_completes_within_max_head_despite_more_data(void)
{
    struct http1_request req;
    static const char s[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\nXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX";
    int head = (int)(sizeof("GET / HTTP/1.1\r\nHost: a\r\n\r\n") - 1);
    CHECK(parse_req_limits(LIT(s), (size_t)head, MAX_LINE, &req) == head);
}

static void test_parse_every_split_is_incomplete_then_same(void)
{
    check_prefixes(LIT(browser_get), MAX_HEAD, MAX_LINE, (int)sizeof(browser_get) - 1);
    check_prefixes(LIT("\r\nPOST /x HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\n\n"), MAX_HEAD, MAX_LINE,
                   (int)sizeof("\r\nPOST /x HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\n\n") - 1);
    check_prefixes(LIT("GET / HTTP/1.0\r\n\r\n"), MAX_HEAD, MAX_LINE, (int)sizeof("GET / HTTP/1.0\r\n\r\n") - 1);
    /* Errors: a prefix is INCOMPLETE or already the same error. */
    check_prefixes(LIT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
                   MAX_HEAD, MAX_LINE, HTTP1_ERROR);
    check_prefixes(LIT("GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n"), MAX_HEAD, MAX_LINE, HTTP1_ERROR);
    check_prefixes(LIT("GET /0123456789 HTTP/1.1\r\nHost: a\r\n\r\n"), 4096, 16, HTTP1_ERROR);
    check_prefixes(LIT("GET /0123456789\x01 HTTP/1.1\r\nHost: a\r\n\r\n"), 4096, 16, HTTP1_ERROR);
    check_prefixes(LIT("GET / HTTP/1.1\r\nHost: a\r\nX: 0123456789\r\n\r\n"), 30, 16, HTTP1_ERROR);
    /* Found by the fuzzer: a byte right after max_line can still make it a 400. */
    check_prefixes(LIT("4\x02"), 2, 0, HTTP1_ERROR);
    for (size_t max_line = 13; max_line <= 17; max_line++)   /* the line is 15 bytes */
        check_prefixes(LIT("GET /a HTTP/1.1\r\nHost: a\r\n\r\n"), MAX_HEAD, max_line,
                       max_line < 15 ? HTTP1_ERROR : (int)sizeof("GET /a HTTP/1.1\r\nHost: a\r\n\r\n") - 1);
}

/* ---- Request smuggling and malformed input --------------------------------- */

static void test_reject_content_length_and_transfer_encoding(void)
{
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
           400, "both Content-Length and Transfer-Encoding");
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
           400, "both Content-Length and Transfer-Encoding");
}

static void test_reject_differing_content_lengths(void)
{
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
           400, "differing Content-Length values");
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", 400, "differing Content-Length values");
}

static void test_reject_invalid_content_length(void)
{
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400, "invalid Content-Length");
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400, "invalid Content-Length");
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5a\r\n\r\n", 400, "invalid Content-Length");
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", 400, "invalid Content-Length");
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\n", 400, "invalid Content-Length");
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", 400, "invalid Content-Length");
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,\r\n\r\n", 400, "invalid Content-Length");
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775808\r\n\r\n",
           400, "Content-Length too large");
    struct http1_request req;
    CHECK(parse_req(LIT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775807\r\n\r\n"), &req) > 0);
    CHECK(req.info.content_length == INT64_MAX);
}

static void test_reject_transfer_encoding_not_ending_in_chunked(void)
{
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
           400, "Transfer-Encoding does not end in chunked");
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
           400, "Transfer-Encoding does not end in chunked");
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n",
           400, "Transfer-Encoding does not end in chunked");
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
           400, "Transfer-Encoding does not end in chunked");
}

static void test_reject_chunked_before_last_coding(void)
{
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
           400, "chunked before the last transfer coding");
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
           400, "chunked before the last transfer coding");
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
           400, "chunked before the last transfer coding");
}

static void test_reject_invalid_transfer_coding(void)
{
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;x=1\r\n\r\n", 400, "invalid Transfer-Encoding");
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", 400, "invalid Transfer-Encoding");
}

static void test_reject_transfer_encoding_in_http10(void)
{
    REJECT("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "Transfer-Encoding in HTTP/1.0");
}

static void test_reject_obs_fold(void)
{
    REJECT("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400, "obsolete line folding");
    REJECT("GET / HTTP/1.1\r\n\tHost: a\r\n\r\n", 400, "obsolete line folding");
}

static void test_reject_whitespace_before_colon(void)
{
    REJECT("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", 400, "whitespace before colon");
    REJECT("GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", 400, "whitespace before colon");
}

static void test_reject_invalid_header_name(void)
{
    REJECT("GET / HTTP/1.1\r\nHost: a\r\nX(y): b\r\n\r\n", 400, "invalid character in header name");
    REJECT("GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", 400, "empty header name");
    REJECT("GET / HTTP/1.1\r\nHost: a\r\nno colon\r\n\r\n", 400, "whitespace before colon");
}

static void test_reject_control_characters_in_value(void)
{
    REJECT("GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", 400, "control character in header value");
    REJECT("GET / HTTP/1.1\r\nHost: a\r\nX: a\x01\r\n\r\n", 400, "control character in header value");
    REJECT("GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n", 400, "control character in header value");
}

static void test_reject_bare_cr(void)
{
    REJECT("GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400, "bare CR");
    REJECT("GET / HTTP/1.1\rHost: a\r\n\r\n", 400, "bare CR");
    REJECT("GET / HTTP/1.1\r\nHost: a\r\n\rX\r\n", 400, "bare CR");
    REJECT("\rGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bare CR");
}

static void test_reject_malformed_request_line(void)
{
    REJECT("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed request target");
    REJECT(" GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed request method");
    REJECT("G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed request method");
    REJECT("GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed request target");
    REJECT("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400, "malformed request line");
    REJECT("GET /\r\n\r\n", 400, "malformed request target");
}

static void test_reject_unsupported_version(void)
{
    REJECT("GET / HTTP/1.2\r\nHost: a\r\n\r\n", 400, "unsupported HTTP version");
    REJECT("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400, "unsupported HTTP version");
    REJECT("GET / http/1.1\r\nHost: a\r\n\r\n", 400, "unsupported HTTP version");
    REJECT("GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400, "malformed request line");
}

static void test_reject_duplicate_host(void)
{
    REJECT("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400, "more than one Host");
}

static void test_reject_duplicate_host_at_every_split(void)
{
    check_prefixes(LIT("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"), MAX_HEAD, MAX_LINE, HTTP1_ERROR);
    /* the same value twice is still two Host fields */
    REJECT("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400, "more than one Host");
    REJECT("GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", 400, "more than one Host");
}

/* Host values that are not uri-host [":" port] (RFC 9112 3.2, RFC 3986). */
static const char *const invalid_hosts[] = {
    "a b", "user@host", "u:p@host", "a/b", "a\\b", "a?b", "a#b", "a\"b", "a<b>", "a{b}", "a|b", "a^b",
    "a`b", "caf\xc3\xa9.test", "a%zz", "a%4", "a%", ":80", ":", "a:b", "a:80:90", "a:-1", "a:8 0",
    "[::1", "[::1]x", "[::1]:8a", "[::1]]", "[]", "[zz::1]", "[1.2.3.4]", "[::1%25eth0]", "[v1.x]",
    "::1", "a]b", "[a]",
};

static void test_reject_invalid_host(void)
{
    for (size_t i = 0; i < sizeof(invalid_hosts) / sizeof(invalid_hosts[0]); i++) {
        char s[256];
        int n = snprintf(s, sizeof s, "GET / HTTP/1.1\r\nX: 1\r\nHost: %s\r\nY: 2\r\n\r\n", invalid_hosts[i]);
        struct http1_request req;
        int r = parse_req(s, (size_t)n, &req);
        if (r != HTTP1_ERROR || req.error_status != 400 || !req.error || strcmp(req.error, "invalid Host") != 0)
            fprintf(stderr, "Host: %s: got %d\n", invalid_hosts[i], r);
        CHECK(r == HTTP1_ERROR && req.error_status == 400);
        CHECK_STR(req.error, "invalid Host");
        check_prefixes(s, (size_t)n, MAX_HEAD, MAX_LINE, HTTP1_ERROR);
    }
    /* HTTP/1.0 has no Host requirement, but a Host it sends must be valid. */
    REJECT("GET / HTTP/1.0\r\nHost: user@a.test\r\n\r\n", 400, "invalid Host");
    /* An invalid first Host is reported before the second one. */
    REJECT("GET / HTTP/1.1\r\nHost: a b\r\nHost: c\r\n\r\n", 400, "invalid Host");
}

static void test_parse_valid_host_forms(void)
{
    static const char *const valid[] = {
        "example.com", "Example.COM:8080", "a", "127.0.0.1", "127.0.0.1:80", "[::1]", "[::1]:8080",
        "[2001:DB8::ffff:1.2.3.4]:443", "a_b.test", "xn--caf-dma.test", "a%41.test", "a.test:",
        "a.test.", "a-b.test:65535", "!$&'()*+,;=~",
    };
    for (size_t i = 0; i < sizeof(valid) / sizeof(valid[0]); i++) {
        char s[256];
        int n = snprintf(s, sizeof s, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", valid[i]);
        struct http1_request req;
        int r = parse_req(s, (size_t)n, &req);
        if (r != n)
            fprintf(stderr, "Host: %s: got %d (%s)\n", valid[i], r, req.error ? req.error : "");
        CHECK(r == n);
        CHECK(slice_is(req.info.host, valid[i]));
        check_prefixes(s, (size_t)n, MAX_HEAD, MAX_LINE, n);
    }
    /* RFC 9112 3.2: an empty Host is what a client without an authority sends. */
    struct http1_request req;
    CHECK(parse_req(LIT("GET / HTTP/1.1\r\nHost:\r\n\r\n"), &req) > 0);
    CHECK(req.info.host.base != NULL && req.info.host.len == 0);
    CHECK(parse_req(LIT("GET / HTTP/1.1\r\nHost:   \r\n\r\n"), &req) > 0);
    CHECK(req.info.host.len == 0);
    /* Whitespace around the value is not part of it. */
    CHECK(parse_req(LIT("GET / HTTP/1.1\r\nHost: \t a.test \t\r\n\r\n"), &req) > 0);
    CHECK(slice_is(req.info.host, "a.test"));
}

static void test_reject_http11_without_host(void)
{
    REJECT("GET / HTTP/1.1\r\nX: y\r\n\r\n", 400, "HTTP/1.1 request without Host");
}

/* ---- Size limits ------------------------------------------------------------- */

static void test_request_line_longer_than_max_line_is_414(void)
{
    struct http1_request req;
    static const char s[] = "GET /0123456789 HTTP/1.1\r\nHost: a\r\n\r\n";   /* line: 24 bytes */
    CHECK(parse_req_limits(LIT(s), MAX_HEAD, 24, &req) == (int)sizeof(s) - 1);
    CHECK(parse_req_limits(LIT(s), MAX_HEAD, 23, &req) == HTTP1_ERROR);
    CHECK(req.error_status == 414);
    /* Unfinished but already too long: no need to wait for the rest. */
    CHECK(parse_req_limits("GET /0123456789", 15, MAX_HEAD, 10, &req) == HTTP1_ERROR);
    CHECK(req.error_status == 414);
}

static void test_unfinished_request_line_at_max_head_is_414(void)
{
    struct http1_request req;
    CHECK(parse_req_limits(LIT("GET /aaaaaaaaaaaaaaaaaaaa"), 16, MAX_LINE, &req) == HTTP1_ERROR);
    CHECK(req.error_status == 414);
}

static void test_head_larger_than_max_head_is_431(void)
{
    struct http1_request req;
    static const char s[] = "GET / HTTP/1.1\r\nHost: a\r\nX: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    CHECK(parse_req_limits(LIT(s), sizeof(s) - 1, MAX_LINE, &req) == (int)sizeof(s) - 1);
    CHECK(parse_req_limits(LIT(s), sizeof(s) - 2, MAX_LINE, &req) == HTTP1_ERROR);
    CHECK(req.error_status == 431);
    CHECK_STR(req.error, "request head too large");
    /* Below max_head it is just incomplete. */
    CHECK(parse_req_limits(s, 30, sizeof(s) - 2, MAX_LINE, &req) == HTTP1_INCOMPLETE);
}

static size_t build_headers(char *buf, size_t count)
{
    size_t n = (size_t)sprintf(buf, "GET / HTTP/1.1\r\nHost: a\r\n");
    for (size_t i = 1; i < count; i++)
        n += (size_t)sprintf(buf + n, "X-%zu: v\r\n", i);
    n += (size_t)sprintf(buf + n, "\r\n");
    return n;
}

static void test_too_many_headers_is_431(void)
{
    static char buf[4096];
    struct http1_request req;
    size_t n = build_headers(buf, HTTP1_MAX_HEADERS);
    CHECK(parse_req(buf, n, &req) == (int)n);
    CHECK(req.num_headers == HTTP1_MAX_HEADERS);
    n = build_headers(buf, HTTP1_MAX_HEADERS + 1);
    CHECK(parse_req(buf, n, &req) == HTTP1_ERROR);
    CHECK(req.error_status == 431);
    CHECK_STR(req.error, "too many headers");
}

/* ---- Responses ----------------------------------------------------------------- */

static void test_parse_response_basic(void)
{
    struct http1_response resp;
    static const char s[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";
    CHECK(parse_resp(LIT(s), &resp) == (int)sizeof(s) - 1 - 5);
    CHECK(resp.minor_version == 1);
    CHECK(resp.status == 200);
    CHECK(slice_is(resp.reason, "OK"));
    CHECK(resp.num_headers == 2);
    CHECK(resp.info.content_length == 5);
    CHECK(!resp.info.conn_close);
    CHECK(resp.error == NULL);
}

static void test_parse_response_reason_optional(void)
{
    struct http1_response resp;
    CHECK(parse_resp(LIT("HTTP/1.1 404\r\n\r\n"), &resp) > 0);
    CHECK(resp.status == 404);
    CHECK(resp.reason.len == 0);
    CHECK(parse_resp(LIT("HTTP/1.0 500 \r\n\r\n"), &resp) > 0);
    CHECK(resp.reason.len == 0);
    CHECK(resp.info.conn_close);
    CHECK(parse_resp(LIT("HTTP/1.1 500 Internal Server Error\r\n\r\n"), &resp) > 0);
    CHECK(slice_is(resp.reason, "Internal Server Error"));
}

static void test_parse_response_chunked(void)
{
    struct http1_response resp;
    CHECK(parse_resp(LIT("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), &resp) > 0);
    CHECK(resp.info.chunked);
}

static void test_parse_response_te_not_chunked_is_close_delimited(void)
{
    struct http1_response resp;
    CHECK(parse_resp(LIT("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"), &resp) > 0);
    CHECK(!resp.info.chunked);
    CHECK(resp.info.content_length == -1);
}

static void test_parse_response_rejects_framing_conflicts(void)
{
    struct http1_response resp;
    CHECK(parse_resp(LIT("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
                     &resp) == HTTP1_ERROR);
    CHECK_STR(resp.error, "both Content-Length and Transfer-Encoding");
    CHECK(parse_resp(LIT("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
                     &resp) == HTTP1_ERROR);
    CHECK_STR(resp.error, "differing Content-Length values");
}

static void test_parse_response_rejects_malformed_status(void)
{
    struct http1_response resp;
    CHECK(parse_resp(LIT("HTTP/1.1 20 OK\r\n\r\n"), &resp) == HTTP1_ERROR);
    CHECK(parse_resp(LIT("HTTP/1.1 099 OK\r\n\r\n"), &resp) == HTTP1_ERROR);
    CHECK(parse_resp(LIT("HTTP/1.1 2000 OK\r\n\r\n"), &resp) == HTTP1_ERROR);
    CHECK(parse_resp(LIT("HTTP/1.1  200 OK\r\n\r\n"), &resp) == HTTP1_ERROR);
    CHECK(parse_resp(LIT("HTTP/1.1 200 O\x01K\r\n\r\n"), &resp) == HTTP1_ERROR);
    CHECK(parse_resp(LIT("ICY 200 OK\r\n\r\n"), &resp) == HTTP1_ERROR);
}

static void test_parse_response_too_large(void)
{
    struct http1_response resp;
    CHECK(http1_parse_response(LIT("HTTP/1.1 200 OK\r\nX: y\r\n\r\n"), 20, &resp) == HTTP1_ERROR);
    CHECK_STR(resp.error, "response head too large");
}

static void test_parse_response_every_split(void)
{
    static const char s[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    struct http1_response resp;
    for (size_t k = 0; k < sizeof(s) - 1; k++) {
        char *b = malloc(k ? k : 1);
        memcpy(b, s, k);
        CHECK(http1_parse_response(b, k, MAX_HEAD, &resp) == HTTP1_INCOMPLETE);
        free(b);
    }
    CHECK(parse_resp(LIT(s), &resp) == (int)sizeof(s) - 1);
    CHECK(resp.status == 101);
    CHECK(resp.info.conn_upgrade);
}

static void test_response_has_body(void)
{
    struct http1_slice get = { "GET", 3 }, head = { "HEAD", 4 }, connect = { "CONNECT", 7 };
    CHECK(http1_response_has_body(get, 200));
    CHECK(http1_response_has_body(get, 404));
    CHECK(!http1_response_has_body(get, 100));
    CHECK(!http1_response_has_body(get, 101));
    CHECK(!http1_response_has_body(get, 204));
    CHECK(!http1_response_has_body(get, 304));
    CHECK(!http1_response_has_body(head, 200));
    CHECK(!http1_response_has_body(connect, 200));
    CHECK(http1_response_has_body(connect, 407));
}

/* ---- Chunked bodies ------------------------------------------------------------ */

/* Scans s in pieces split at `split` (0: one piece); returns the total
 * consumed, -1 on error; *done says whether the end was seen. */
static ssize_t scan_split(const char *s, size_t n, size_t split, bool *done)
{
    struct http1_chunked c = { 0 };
    size_t total = 0;
    size_t cuts[3] = { 0, split ? split : n, n };
    for (int i = 0; i < 2 && !c.done; i++) {
        size_t len = cuts[i + 1] - cuts[i];
        char *b = malloc(len ? len : 1);
        memcpy(b, s + cuts[i], len);
        ssize_t r = http1_chunked_scan(&c, b, len);
        free(b);
        if (r < 0) {
            *done = c.done;
            return -1;
        }
        CHECK((size_t)r <= len);
        total += (size_t)r;
    }
    *done = c.done;
    return (ssize_t)total;
}

static void test_chunked_simple_body(void)
{
    static const char s[] = "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    bool done;
    CHECK(scan_split(LIT(s), 0, &done) == (ssize_t)sizeof(s) - 1);
    CHECK(done);
}

static void test_chunked_stops_at_body_end(void)
{
    static const char s[] = "3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
    bool done;
    CHECK(scan_split(LIT(s), 0, &done) == (ssize_t)sizeof("3\r\nabc\r\n0\r\n\r\n") - 1);
    CHECK(done);
    /* Called again after the end: nothing more belongs to the body. */
    struct http1_chunked c = { 0 };
    CHECK(http1_chunked_scan(&c, LIT(s)) == (ssize_t)sizeof("3\r\nabc\r\n0\r\n\r\n") - 1);
    CHECK(http1_chunked_scan(&c, LIT("more")) == 0);
    CHECK(c.done);
}

static void test_chunked_extensions_and_trailers(void)
{
    static const char s[] = "A;name=value;q=\"a b\"\r\n0123456789\r\n1 ; x\r\nz\r\n"
                            "0;last\r\nExpires: never\r\nX-Sum: 1\r\n\r\n";
    bool done;
    CHECK(scan_split(LIT(s), 0, &done) == (ssize_t)sizeof(s) - 1);
    CHECK(done);
}

static void test_chunked_every_split_point(void)
{
    static const char s[] = "1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\nF\r\n0123456789abcde\r\n"
                            "0\r\nTrailer-A: x\r\n\r\nNEXT";
    const size_t body = sizeof(s) - 1 - 4;
    for (size_t k = 1; k < sizeof(s) - 1; k++) {
        bool done;
        ssize_t r = scan_split(LIT(s), k, &done);
        if (r != (ssize_t)body || !done)
            fprintf(stderr, "split %zu: got %zd\n", k, r);
        CHECK(r == (ssize_t)body && done);
    }
}

static void test_chunked_byte_by_byte(void)
{
    static const char s[] = "4\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n";
    struct http1_chunked c = { 0 };
    size_t total = 0;
    for (size_t i = 0; i < sizeof(s) - 1; i++) {
        CHECK(!c.done);
        ssize_t r = http1_chunked_scan(&c, s + i, 1);
        CHECK(r == 1);
        total += (size_t)r;
    }
    CHECK(c.done);
    CHECK(total == sizeof(s) - 1);
}

static void test_chunked_incomplete_is_not_done(void)
{
    bool done;
    CHECK(scan_split(LIT("5\r\nhel"), 0, &done) == 6);
    CHECK(!done);
    CHECK(scan_split(LIT("0\r\n\r"), 0, &done) == 4);
    CHECK(!done);
    CHECK(scan_split(LIT("0\r\nX: y\r\n"), 0, &done) == 9);
    CHECK(!done);
}

static void test_chunked_large_size_counts_down(void)
{
    struct http1_chunked c = { 0 };
    CHECK(http1_chunked_scan(&c, LIT("7fffffffffffffff\r\nabc")) == 21);
    CHECK(c.remaining == (uint64_t)INT64_MAX - 3);
    CHECK(!c.done);
    /* Leading zeros do not count towards the limit, only the value. */
    struct http1_chunked z = { 0 };
    CHECK(http1_chunked_scan(&z, LIT("000000000000000000001\r\nx\r\n0\r\n\r\n")) == 31);
    CHECK(z.done);
}

/* Decodes s in pieces split at `split` (0: one piece) into out; returns the
 * total consumed, -1 on error; *out_len is the data so far. */
static ssize_t decode_split(const char *s, size_t n, size_t split, char *out, size_t *out_len, bool *done)
{
    struct http1_chunked c = { 0 };
    size_t total = 0;
    size_t cuts[3] = { 0, split ? split : n, n };
    *out_len = 0;
    for (int i = 0; i < 2 && !c.done; i++) {
        size_t len = cuts[i + 1] - cuts[i], data = 0;
        char *b = malloc(len ? len : 1);
        memcpy(b, s + cuts[i], len);
        ssize_t r = http1_chunked_decode(&c, b, len, &data);
        if (r >= 0) {
            CHECK((size_t)r <= len && data <= (size_t)r);
            memcpy(out + *out_len, b, data);
            *out_len += data;
        }
        free(b);
        if (r < 0) {
            *done = c.done;
            return -1;
        }
        total += (size_t)r;
    }
    *done = c.done;
    return (ssize_t)total;
}

static void test_chunked_decode_removes_framing_at_every_split(void)
{
    static const char s[] = "4;x=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nT: 1\r\n\r\nNEXT";
    static const char data[] = "Wikipedia in\r\n\r\nchunks.";
    const size_t body = sizeof(s) - 1 - 4;
    for (size_t k = 0; k < sizeof(s) - 1; k++) {
        char out[sizeof(s)];
        size_t out_len;
        bool done;
        ssize_t r = decode_split(LIT(s), k, out, &out_len, &done);
        bool ok = r == (ssize_t)body && done && out_len == sizeof(data) - 1 && memcmp(out, data, out_len) == 0;
        if (!ok)
            fprintf(stderr, "decode split %zu: got %zd, %zu bytes\n", k, r, out_len);
        CHECK(ok);
    }
}

/* Malformed framing is -1 from the scanner and the decoder, whole and split
 * at every point (the pieces before the bad byte are accepted). */
static void check_chunked_rejected(const char *s, size_t n)
{
    for (size_t k = 0; k < (n ? n : 1); k++) {
        bool done;
        char *out = malloc(n ? n : 1);
        size_t out_len;
        ssize_t r = scan_split(s, n, k, &done);
        ssize_t d = decode_split(s, n, k, out, &out_len, &done);
        free(out);
        if (r != -1 || d != -1)
            fprintf(stderr, "chunked %.*s split %zu: scan %zd, decode %zd\n", (int)(n < 40 ? n : 40), s, k, r, d);
        CHECK(r == -1 && d == -1);
        CHECK(!done);
    }
}

static void test_chunked_rejects_malformed_framing(void)
{
    check_chunked_rejected(LIT("g\r\n"));                      /* bad hex */
    check_chunked_rejected(LIT("\r\n"));                       /* no size */
    check_chunked_rejected(LIT("-1\r\n"));
    check_chunked_rejected(LIT("0x5\r\nhello\r\n"));
    check_chunked_rejected(LIT("10000000000000000\r\n"));      /* 2^64: overflow */
    check_chunked_rejected(LIT("ffffffffffffffff\r\n"));       /* above INT64_MAX */
    check_chunked_rejected(LIT("8000000000000000\r\nabc"));    /* INT64_MAX + 1 */
    check_chunked_rejected(LIT("fffffffffffffffff\r\n"));      /* 17 digits */
    check_chunked_rejected(LIT("0X5\r\nhello\r\n"));
    check_chunked_rejected(LIT("x5\r\nhello\r\n"));
    check_chunked_rejected(LIT("+5\r\nhello\r\n"));
    check_chunked_rejected(LIT("-0\r\n\r\n"));
    check_chunked_rejected(LIT(" 5\r\nhello\r\n"));            /* leading whitespace */
    check_chunked_rejected(LIT("5\r\nhello\r\n\r\n"));        /* empty size line */
    check_chunked_rejected(LIT("5\r\nhello0\r\n\r\n"));       /* data longer than the size */
    check_chunked_rejected(LIT("5\r\nhello\n0\r\n\r\n"));     /* bare LF after data */
    check_chunked_rejected(LIT("5\r\nhello\r0\r\n\r\n"));     /* bare CR after data */
    check_chunked_rejected(LIT("5\r\nhello\r\r\n0\r\n\r\n")); /* CR CR LF after data */
    check_chunked_rejected(LIT("5\r\r\nhello\r\n"));          /* CR CR LF after size */
    check_chunked_rejected(LIT("5\n\r\nhello\r\n"));          /* LF before CRLF */
    check_chunked_rejected(LIT("5;a\rb\r\nhello\r\n"));       /* bare CR in extension */
    check_chunked_rejected(LIT("0\n\r\n"));                    /* bare LF after the last size */
    check_chunked_rejected(LIT("0\r\r\n"));                    /* bare CR after the last size */
    check_chunked_rejected(LIT("0\r\n\r\r\n"));               /* bare CR ends the body */
    check_chunked_rejected(LIT("0\r\nX: y\r\r\n"));           /* bare CR in trailer */
    check_chunked_rejected(LIT("3\r\nabcX\r\n"));              /* missing CRLF after data */
    check_chunked_rejected(LIT("3\r\nabc\n0\r\n\r\n"));        /* bare LF after data */
    check_chunked_rejected(LIT("3\nabc\r\n"));                 /* bare LF after size */
    check_chunked_rejected(LIT("3\rabc\r\n"));                 /* bare CR after size */
    check_chunked_rejected(LIT("3 \r\nabc\r\n"));              /* BWS not followed by ';' */
    check_chunked_rejected(LIT("3;a\x01\r\nabc\r\n"));         /* control character in extension */
    check_chunked_rejected(LIT("3;a\nabc\r\n"));               /* bare LF in extension */
    check_chunked_rejected(LIT("0\r\n\n"));                    /* bare LF ends the body */
    check_chunked_rejected(LIT("0\r\n X: y\r\n\r\n"));         /* folded trailer */
    check_chunked_rejected(LIT("0\r\nX : y\r\n\r\n"));         /* whitespace before colon */
    check_chunked_rejected(LIT("0\r\nX: \x7f\r\n\r\n"));       /* control character in trailer */
    check_chunked_rejected(LIT("0\r\nX: y\n\r\n"));            /* bare LF in trailer */
}

static void test_chunked_rejects_long_line(void)
{
    static char s[5000];
    size_t n = (size_t)sprintf(s, "1;");
    memset(s + n, 'a', 4092);
    n += 4092;
    memcpy(s + n, "\r\nx\r\n0\r\n\r\n", 10);
    bool done;
    CHECK(scan_split(s, n + 10, 0, &done) == (ssize_t)(n + 10));   /* 4096 with CRLF: fits */
    s[n] = 'a';
    memcpy(s + n + 1, "\r\nx\r\n0\r\n\r\n", 10);
    check_chunked_rejected(s, n + 11);
}

static void test_chunked_error_is_sticky(void)
{
    struct http1_chunked c = { 0 };
    CHECK(http1_chunked_scan(&c, LIT("z")) == -1);
    CHECK(http1_chunked_scan(&c, LIT("0\r\n\r\n")) == -1);
    struct http1_chunked d = { 0 };
    char b[8] = "z0\r\n\r\n";
    size_t data;
    CHECK(http1_chunked_decode(&d, b, 1, &data) == -1);
    CHECK(http1_chunked_decode(&d, b + 1, 5, &data) == -1);
}

/* ---- Rewriting ------------------------------------------------------------------- */

static const struct http1_forward fwd_http = { "203.0.113.7", "http" };

/* Parses a request, writes it for the backend and compares the exact bytes. */
static void check_request_rewrite(const char *in, size_t n, const struct http1_forward *fwd, const char *want)
{
    struct http1_request req;
    static char out[8192];
    CHECK(parse_req(in, n, &req) > 0);
    ssize_t w = http1_write_request_head(&req, fwd, out, sizeof(out) - 1);
    CHECK(w >= 0);
    out[w < 0 ? 0 : w] = '\0';
    CHECK_STR(out, want);
    CHECK(w == (ssize_t)strlen(want));
}

static void check_response_rewrite(const char *in, size_t n, bool close, int client_minor, const char *want)
{
    struct http1_response resp;
    static char out[8192];
    CHECK(parse_resp(in, n, &resp) > 0);
    ssize_t w = http1_write_response_head(&resp, close, client_minor, out, sizeof(out) - 1);
    CHECK(w >= 0);
    out[w < 0 ? 0 : w] = '\0';
    CHECK_STR(out, want);
}

/* ---- Absolute-form targets (RFC 9112 3.2.2) ---------------------------------------- */

static void test_absolute_form_host_comes_from_the_uri(void)
{
    struct http1_request req;
    CHECK(parse_req(LIT("GET http://App.Example:8080/a/b?c=d HTTP/1.1\r\nHost: other.test\r\n\r\n"), &req) > 0);
    CHECK(req.absolute_form);
    CHECK(slice_is(req.info.host, "App.Example:8080"));
    CHECK(slice_is(req.path, "/a/b?c=d"));
    CHECK(slice_is(req.target, "http://App.Example:8080/a/b?c=d"));
}

static void test_absolute_form_https_and_upper_case_scheme(void)
{
    struct http1_request req;
    CHECK(parse_req(LIT("GET HTTPS://a.test HTTP/1.1\r\nHost: a.test\r\n\r\n"), &req) > 0);
    CHECK(req.absolute_form);
    CHECK(slice_is(req.info.host, "a.test"));
    CHECK(slice_is(req.path, "/"));
    CHECK(parse_req(LIT("GET http://a.test?x=1 HTTP/1.1\r\nHost: a.test\r\n\r\n"), &req) > 0);
    CHECK(slice_is(req.path, "/"));
}

static void test_absolute_form_ipv6_authority(void)
{
    struct http1_request req;
    CHECK(parse_req(LIT("GET http://[::1]:8080/x HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n"), &req) > 0);
    CHECK(req.absolute_form);
    CHECK(slice_is(req.info.host, "[::1]:8080"));
    CHECK(slice_is(req.path, "/x"));
}

static void test_origin_form_path_is_the_target(void)
{
    struct http1_request req;
    CHECK(parse_req(LIT("GET /http://x HTTP/1.1\r\nHost: a\r\n\r\n"), &req) > 0);
    CHECK(!req.absolute_form);
    CHECK(slice_is(req.path, "/http://x"));
    CHECK(slice_is(req.info.host, "a"));
    CHECK(parse_req(LIT("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), &req) > 0);
    CHECK(!req.absolute_form);
    CHECK(slice_is(req.path, "*"));
}

static void test_absolute_form_without_host_or_with_userinfo_is_400(void)
{
    REJECT("GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", 400, "absolute-form target without a host");
    REJECT("GET http:// HTTP/1.1\r\nHost: a\r\n\r\n", 400, "absolute-form target without a host");
    REJECT("GET http://u:p@a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n", 400,
           "absolute-form target with userinfo");
    REJECT("GET http://a%zz/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid host in absolute-form target");
    REJECT("GET http://:80/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid host in absolute-form target");
    REJECT("GET http://[::1/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid host in absolute-form target");
    REJECT("GET http://a\\b/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid host in absolute-form target");
    REJECT("GET http://a.test:8x/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid host in absolute-form target");
    check_prefixes(LIT("GET http://a%zz/ HTTP/1.1\r\nHost: a\r\n\r\n"), MAX_HEAD, MAX_LINE, HTTP1_ERROR);
    /* The Host header is checked too, although the URI's authority wins. */
    REJECT("GET http://a.test/ HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "invalid Host");
    /* HTTP/1.1 still needs a Host header (RFC 9112 3.2). */
    REJECT("GET http://a.test/ HTTP/1.1\r\n\r\n", 400, "HTTP/1.1 request without Host");
}

static void test_write_request_absolute_form_goes_out_in_origin_form(void)
{
    check_request_rewrite(LIT("GET http://a.test:81/p?q HTTP/1.1\r\nAccept: */*\r\nHost: b.test\r\n\r\n"),
                          &fwd_http,
                          "GET /p?q HTTP/1.1\r\n"
                          "Host: a.test:81\r\n"
                          "Accept: */*\r\n"
                          "X-Forwarded-For: 203.0.113.7\r\n"
                          "X-Forwarded-Proto: http\r\n"
                          "X-Forwarded-Host: a.test:81\r\n"
                          "\r\n");
    /* HTTP/1.0 without a Host header gets one from the URI */
    check_request_rewrite(LIT("GET http://a.test HTTP/1.0\r\n\r\n"), &fwd_http,
                          "GET / HTTP/1.1\r\nHost: a.test\r\n"
                          "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: http\r\n"
                          "X-Forwarded-Host: a.test\r\n\r\n");
}

static void test_write_request_adds_forwarded_headers(void)
{
    check_request_rewrite(LIT("GET /p?q HTTP/1.1\r\nHost: Example.com:8080\r\nAccept: */*\r\n\r\n"), &fwd_http,
                          "GET /p?q HTTP/1.1\r\n"
                          "Host: Example.com:8080\r\n"
                          "Accept: */*\r\n"
                          "X-Forwarded-For: 203.0.113.7\r\n"
                          "X-Forwarded-Proto: http\r\n"
                          "X-Forwarded-Host: Example.com:8080\r\n"
                          "\r\n");
}

static void test_write_request_appends_to_x_forwarded_for(void)
{
    check_request_rewrite(LIT("GET / HTTP/1.1\r\nX-Forwarded-For: 198.51.100.1\r\nHost: a\r\n\r\n"), &fwd_http,
                          "GET / HTTP/1.1\r\nHost: a\r\n"
                          "X-Forwarded-For: 198.51.100.1, 203.0.113.7\r\n"
                          "X-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n\r\n");
}

static void test_write_request_combines_several_x_forwarded_for(void)
{
    const struct http1_forward v6 = { "2001:db8::1", "https" };
    check_request_rewrite(LIT("GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2\r\n"
                              "X-Forwarded-For:\r\nx-forwarded-for: 10.0.0.3\r\n\r\n"), &v6,
                          "GET / HTTP/1.1\r\nHost: a\r\n"
                          "X-Forwarded-For: 10.0.0.1, 10.0.0.2, 10.0.0.3, 2001:db8::1\r\n"
                          "X-Forwarded-Proto: https\r\nX-Forwarded-Host: a\r\n\r\n");
}

static void test_write_request_replaces_client_forwarded_proto_and_host(void)
{
    check_request_rewrite(LIT("GET / HTTP/1.1\r\nX-Forwarded-Proto: https\r\nHost: a\r\n"
                              "X-Forwarded-Host: evil.example\r\nX-Real: 1\r\n\r\n"), &fwd_http,
                          "GET / HTTP/1.1\r\nHost: a\r\nX-Real: 1\r\n"
                          "X-Forwarded-For: 203.0.113.7\r\n"
                          "X-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n\r\n");
}

static void test_write_request_removes_hop_by_hop_headers(void)
{
    check_request_rewrite(LIT("POST /f HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nKeep-Alive: 300\r\n"
                              "Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-Sum\r\n"
                              "Upgrade: h2c\r\nProxy-Authorization: Basic eA==\r\n"
                              "Proxy-Authenticate: Basic\r\nContent-Length: 3\r\nX-Keep: 1\r\n\r\n"), &fwd_http,
                          "POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nX-Keep: 1\r\n"
                          "X-Forwarded-For: 203.0.113.7\r\n"
                          "X-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n\r\n");
}

static void test_write_request_removes_headers_named_in_connection(void)
{
    check_request_rewrite(LIT("GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Secret , x-other\r\n"
                              "X-Secret: s\r\nX-Other: o\r\nX-Secretive: kept\r\n\r\n"), &fwd_http,
                          "GET / HTTP/1.1\r\nHost: a\r\nX-Secretive: kept\r\n"
                          "X-Forwarded-For: 203.0.113.7\r\n"
                          "X-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n\r\n");
}

static void test_write_request_removes_headers_named_in_many_connection_options(void)
{
    /* More names than the fast table holds: the fallback still finds them. */
    static char in[4096];
    size_t n = (size_t)sprintf(in, "GET / HTTP/1.1\r\nHost: a\r\nConnection: ");
    for (int i = 0; i < 40; i++)
        n += (size_t)sprintf(in + n, "%sx-%d", i ? ", " : "", i);
    n += (size_t)sprintf(in + n, "\r\nX-1: a\r\nX-39: b\r\nX-40: c\r\n\r\n");
    check_request_rewrite(in, n, &fwd_http,
                          "GET / HTTP/1.1\r\nHost: a\r\nX-40: c\r\n"
                          "X-Forwarded-For: 203.0.113.7\r\n"
                          "X-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n\r\n");
}

static void test_write_request_keeps_framing_headers_named_in_connection(void)
{
    /* "Connection: Content-Length" must not strip the framing the body
     * relay relies on, or the backend would read the body as a request. */
    check_request_rewrite(LIT("POST / HTTP/1.1\r\nHost: a\r\nConnection: content-length, host, transfer-encoding\r\n"
                              "Content-Length: 4\r\n\r\n"), &fwd_http,
                          "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                          "X-Forwarded-For: 203.0.113.7\r\n"
                          "X-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n\r\n");
    check_request_rewrite(LIT("POST / HTTP/1.1\r\nHost: a\r\nConnection: transfer-encoding\r\n"
                              "Transfer-Encoding: chunked\r\n\r\n"), &fwd_http,
                          "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                          "X-Forwarded-For: 203.0.113.7\r\n"
                          "X-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n\r\n");
}

static void test_write_request_drops_x_forwarded_for_named_in_connection(void)
{
    check_request_rewrite(LIT("GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Forwarded-For\r\n"
                              "X-Forwarded-For: 1.2.3.4\r\n\r\n"), &fwd_http,
                          "GET / HTTP/1.1\r\nHost: a\r\n"
                          "X-Forwarded-For: 203.0.113.7\r\n"
                          "X-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n\r\n");
}

static void test_write_request_upgrade_keeps_connection_upgrade(void)
{
    check_request_rewrite(LIT("GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                              "Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZQ==\r\n"
                              "Sec-WebSocket-Version: 13\r\n\r\n"), &fwd_http,
                          "GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                          "Sec-WebSocket-Key: dGhlIHNhbXBsZQ==\r\nSec-WebSocket-Version: 13\r\n"
                          "Connection: upgrade\r\n"
                          "X-Forwarded-For: 203.0.113.7\r\n"
                          "X-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n\r\n");
}

static void test_write_request_identical_content_lengths_go_out_as_one(void)
{
    /* RFC 9110 8.6: the list of one repeated value is replaced by the value,
     * where the first Content-Length was; never two lines. */
    check_request_rewrite(LIT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nX-A: 1\r\n"
                              "Content-Length: 5\r\n\r\n"), &fwd_http,
                          "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nX-A: 1\r\n"
                          "X-Forwarded-For: 203.0.113.7\r\n"
                          "X-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n\r\n");
    check_request_rewrite(LIT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n"), &fwd_http,
                          "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                          "X-Forwarded-For: 203.0.113.7\r\n"
                          "X-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n\r\n");
    check_request_rewrite(LIT("POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 005\r\n"
                              "Content-Length: 5,5 , 05\r\n\r\n"), &fwd_http,
                          "POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 5\r\n"
                          "X-Forwarded-For: 203.0.113.7\r\n"
                          "X-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n\r\n");
    check_request_rewrite(LIT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n"),
                          &fwd_http,
                          "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n"
                          "X-Forwarded-For: 203.0.113.7\r\n"
                          "X-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n\r\n");
    check_request_rewrite(LIT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775807\r\n"
                              "Content-Length: 9223372036854775807\r\n\r\n"), &fwd_http,
                          "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775807\r\n"
                          "X-Forwarded-For: 203.0.113.7\r\n"
                          "X-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n\r\n");
}

static void test_identical_content_lengths_at_every_split(void)
{
    static const char s[] = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5, 5\r\n\r\n";
    check_prefixes(LIT(s), MAX_HEAD, MAX_LINE, (int)sizeof(s) - 1);
    check_prefixes(LIT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
                   MAX_HEAD, MAX_LINE, HTTP1_ERROR);
    check_prefixes(LIT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n"),
                   MAX_HEAD, MAX_LINE, HTTP1_ERROR);
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", 400, "differing Content-Length values");
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5, 6\r\n\r\n", 400,
           "differing Content-Length values");
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,\r\n\r\n", 400, "invalid Content-Length");
}

static void test_write_request_http10_becomes_http11(void)
{
    check_request_rewrite(LIT("GET /old HTTP/1.0\r\nUser-Agent: x\r\n\r\n"), &fwd_http,
                          "GET /old HTTP/1.1\r\nUser-Agent: x\r\n"
                          "X-Forwarded-For: 203.0.113.7\r\n"
                          "X-Forwarded-Proto: http\r\n\r\n");
}

static void test_write_request_fails_when_it_does_not_fit(void)
{
    struct http1_request req;
    static char out[512];
    CHECK(parse_req(LIT("GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n"), &req) > 0);
    ssize_t full = http1_write_request_head(&req, &fwd_http, out, sizeof(out));
    CHECK(full > 0);
    bool all_fail = true;
    for (size_t cap = 0; cap < (size_t)full; cap++) {
        char *b = malloc(cap ? cap : 1);
        if (http1_write_request_head(&req, &fwd_http, b, cap) != -1)
            all_fail = false;
        free(b);
    }
    CHECK(all_fail);
    char *b = malloc((size_t)full);
    CHECK(http1_write_request_head(&req, &fwd_http, b, (size_t)full) == full);
    CHECK(memcmp(b, out, (size_t)full) == 0);
    free(b);
}

static void test_write_response_keeps_end_to_end_headers(void)
{
    check_response_rewrite(LIT("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 12\r\n"
                               "Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n"), false, 1,
                           "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 12\r\n"
                           "Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n");
}

static void test_write_response_identical_content_lengths_go_out_as_one(void)
{
    check_response_rewrite(LIT("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\nContent-Length: 2, 2\r\n\r\n"),
                           false, 1, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\n");
    check_response_rewrite(LIT("HTTP/1.1 200 OK\r\ncontent-length: 02\r\n\r\n"), true, 0,
                           "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nConnection: close\r\n\r\n");
}

static void test_write_response_removes_hop_by_hop_headers(void)
{
    check_response_rewrite(LIT("HTTP/1.1 404 Not Found\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n"
                               "X-Hop: 1\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\nUpgrade: h2\r\n"
                               "Proxy-Authenticate: Basic\r\nX-End: 2\r\n\r\n"), false, 1,
                           "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\nX-End: 2\r\n\r\n");
}

static void test_write_response_connection_close(void)
{
    check_response_rewrite(LIT("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), true, 1,
                           "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    check_response_rewrite(LIT("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), true, 0,
                           "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
}

static void test_write_response_keep_alive_for_http10_client(void)
{
    check_response_rewrite(LIT("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n"), false, 0,
                           "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n");
}

static void test_write_response_101_keeps_upgrade(void)
{
    check_response_rewrite(LIT("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                               "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"), true, 1,
                           "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                           "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                           "Connection: upgrade\r\n\r\n");
}

static void test_write_response_empty_reason(void)
{
    check_response_rewrite(LIT("HTTP/1.1 204\r\n\r\n"), false, 1, "HTTP/1.1 204 \r\n\r\n");
}

static void test_write_response_fails_when_it_does_not_fit(void)
{
    struct http1_response resp;
    char out[64];
    CHECK(parse_resp(LIT("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), &resp) > 0);
    CHECK(http1_write_response_head(&resp, true, 1, out, 20) == -1);
    CHECK(http1_write_response_head(&resp, true, 1, out, 56) == -1);
    CHECK(http1_write_response_head(&resp, true, 1, out, 57) == 57);
}

static void test_slice_eq_ignores_case(void)
{
    struct http1_slice s = { "Content-Length", 14 };
    CHECK(http1_slice_eq(s, "content-length"));
    CHECK(!http1_slice_eq(s, "content-lengt"));
    CHECK(!http1_slice_eq(s, "content-lengths"));
    CHECK(!http1_slice_eq((struct http1_slice){ "Host", 4 }, "hosx"));
}

int main(void)
{
    test_parse_get_with_many_headers();
    test_parse_post_with_content_length();
    test_parse_chunked_post();
    test_parse_gzip_then_chunked_is_chunked();
    test_parse_lf_line_ends_accepted();
    test_parse_skips_empty_lines_before_request_line();
    test_parse_trims_value_whitespace();
    test_parse_obs_text_in_value_accepted();
    test_parse_http10_defaults_to_close();
    test_parse_http10_keep_alive();
    test_parse_connection_close();
    test_parse_connection_upgrade();
    test_parse_upgrade_needs_both_headers();
    test_parse_expect_continue();
    test_parse_xff_first_value();
    test_parse_identical_content_lengths_accepted();
    test_parse_pipelined_returns_head_length();
    test_parse_head_completes_within_max_head_despite_more_data();
    test_parse_every_split_is_incomplete_then_same();

    test_reject_content_length_and_transfer_encoding();
    test_reject_differing_content_lengths();
    test_reject_invalid_content_length();
    test_reject_transfer_encoding_not_ending_in_chunked();
    test_reject_chunked_before_last_coding();
    test_reject_invalid_transfer_coding();
    test_reject_transfer_encoding_in_http10();
    test_reject_obs_fold();
    test_reject_whitespace_before_colon();
    test_reject_invalid_header_name();
    test_reject_control_characters_in_value();
    test_reject_bare_cr();
    test_reject_malformed_request_line();
    test_reject_unsupported_version();
    test_reject_duplicate_host();
    test_reject_duplicate_host_at_every_split();
    test_reject_invalid_host();
    test_parse_valid_host_forms();
    test_reject_http11_without_host();

    test_request_line_longer_than_max_line_is_414();
    test_unfinished_request_line_at_max_head_is_414();
    test_head_larger_than_max_head_is_431();
    test_too_many_headers_is_431();

    test_parse_response_basic();
    test_parse_response_reason_optional();
    test_parse_response_chunked();
    test_parse_response_te_not_chunked_is_close_delimited();
    test_parse_response_rejects_framing_conflicts();
    test_parse_response_rejects_malformed_status();
    test_parse_response_too_large();
    test_parse_response_every_split();
    test_response_has_body();

    test_chunked_simple_body();
    test_chunked_stops_at_body_end();
    test_chunked_extensions_and_trailers();
    test_chunked_every_split_point();
    test_chunked_byte_by_byte();
    test_chunked_incomplete_is_not_done();
    test_chunked_large_size_counts_down();
    test_chunked_decode_removes_framing_at_every_split();
    test_chunked_rejects_malformed_framing();
    test_chunked_rejects_long_line();
    test_chunked_error_is_sticky();

    test_absolute_form_host_comes_from_the_uri();
    test_absolute_form_https_and_upper_case_scheme();
    test_absolute_form_ipv6_authority();
    test_origin_form_path_is_the_target();
    test_absolute_form_without_host_or_with_userinfo_is_400();
    test_write_request_absolute_form_goes_out_in_origin_form();
    test_write_request_adds_forwarded_headers();
    test_write_request_appends_to_x_forwarded_for();
    test_write_request_combines_several_x_forwarded_for();
    test_write_request_replaces_client_forwarded_proto_and_host();
    test_write_request_removes_hop_by_hop_headers();
    test_write_request_removes_headers_named_in_connection();
    test_write_request_removes_headers_named_in_many_connection_options();
    test_write_request_keeps_framing_headers_named_in_connection();
    test_write_request_drops_x_forwarded_for_named_in_connection();
    test_write_request_upgrade_keeps_connection_upgrade();
    test_write_request_identical_content_lengths_go_out_as_one();
    test_identical_content_lengths_at_every_split();
    test_write_request_http10_becomes_http11();
    test_write_request_fails_when_it_does_not_fit();
    test_write_response_keeps_end_to_end_headers();
    test_write_response_identical_content_lengths_go_out_as_one();
    test_write_response_removes_hop_by_hop_headers();
    test_write_response_connection_close();
    test_write_response_keep_alive_for_http10_client();
    test_write_response_101_keeps_upgrade();
    test_write_response_empty_reason();
    test_write_response_fails_when_it_does_not_fit();
    test_slice_eq_ignores_case();

    free(held);
    return check_report("test_http1");
}
