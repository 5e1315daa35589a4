/* tlsconn.c — bench client for case (e): a new TLS connection per request.
 *
 * C concurrent connections on one thread (epoll, non-blocking). Each one:
 * TCP connect, full TLS 1.3 handshake (no session resumption: every SSL gets
 * a fresh session, the client cache is off), one "GET PATH HTTP/1.1" with
 * "Connection: close", reads the response to its end (Content-Length or EOF),
 * closes, and starts over until the duration is up. The latency of a request
 * runs from connect() to the last byte of the response, so it includes the
 * handshake. wrk cannot do this (it would resume nothing but it keeps the
 * connection), and h2load reports no percentiles of connect+request time.
 *
 *   tlsconn HOST PORT SNI PATH CONNECTIONS SECONDS [WARMUP_SECONDS]
 *
 * Prints one line of key=value pairs on stdout:
 *   requests=N errors=N seconds=S rps=R p50_us=N p99_us=N non2xx=N
 * and, once, on stderr the protocol, cipher, group and server key of the
 * first completed handshake. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum state { ST_CONNECTING, ST_HANDSHAKE, ST_WRITING, ST_READING };

struct conn {
    int fd;
    SSL *ssl;
    enum state st;
    uint64_t t0;
    size_t sent;
    char hdr[4096];
    size_t hlen;
    bool have_head;
    long long body_left;   /* -1: read to EOF */
    int status;
};

static SSL_CTX *ctx;
static struct sockaddr_in addr;
static const char *sni;
static char req[1024];
static size_t req_len;
static int ep;
static uint64_t t_start, t_measure, t_end;
static uint64_t nreq, nerr, non2xx;
static bool printed_info;

#define HIST_MAX 10000000u   /* 10 s in µs; above: clamped */
static uint32_t *hist;       /* by 10 µs bucket */
#define HIST_BUCKETS (HIST_MAX / 10 + 1)

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void conn_start(struct conn *c);

static void conn_close(struct conn *c)
{
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
}

static void conn_fail(struct conn *c)
{
    if (now_us() >= t_measure)
        nerr++;
    conn_close(c);
    conn_start(c);
}

static void conn_done(struct conn *c)
{
    uint64_t t = now_us();
    if (t >= t_measure && c->t0 >= t_measure) {
        nreq++;
        if (c->status < 200 || c->status > 399)
            non2xx++;
        uint64_t d = t - c->t0;
        if (d > HIST_MAX)
            d = HIST_MAX;
        hist[d / 10]++;
    }
    if (!printed_info) {
        printed_info = true;
        EVP_PKEY *pk = SSL_get0_peer_certificate(c->ssl) ?
                       X509_get0_pubkey(SSL_get0_peer_certificate(c->ssl)) : NULL;
        int nid = SSL_get_negotiated_group(c->ssl);
        fprintf(stderr, "tlsconn: %s %s group=%s server_key=%s-%d\n", SSL_get_version(c->ssl),
                SSL_get_cipher_name(c->ssl), nid ? OBJ_nid2sn(nid) : "?",
                pk ? EVP_PKEY_get0_type_name(pk) : "?", pk ? EVP_PKEY_get_bits(pk) : 0);
    }
    conn_close(c);
    conn_start(c);
}

static void want(struct conn *c, uint32_t ev, int op)
{
    struct epoll_event e = { .events = ev, .data.ptr = c };
    if (epoll_ctl(ep, op, c->fd, &e) < 0 && op == EPOLL_CTL_MOD)
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e);
}

static void conn_start(struct conn *c)
{
    if (now_us() >= t_end)
        return;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        perror("socket");
        exit(1);
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->t0 = now_us();
    c->sent = 0;
    c->hlen = 0;
    c->have_head = false;
    c->body_left = -1;
    c->status = 0;
    c->ssl = NULL;
    int r = connect(c->fd, (struct sockaddr *)&addr, sizeof addr);
    if (r < 0 && errno != EINPROGRESS) {
        nerr++;
        close(c->fd);
        c->fd = -1;
        return;   /* dropped: the connection count shrinks (reported as errors) */
    }
    c->st = ST_CONNECTING;
    want(c, EPOLLOUT, EPOLL_CTL_ADD);
}

static void step(struct conn *c);

static void ssl_wait(struct conn *c, int r)
{
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ)
        want(c, EPOLLIN, EPOLL_CTL_MOD);
    else if (e == SSL_ERROR_WANT_WRITE)
        want(c, EPOLLOUT, EPOLL_CTL_MOD);
    else
        conn_fail(c);
}

/* Parses the head in c->hdr; returns false on a malformed one. */
static bool parse_head(struct conn *c, size_t head_end)
{
    if (head_end < 12 || memcmp(c->hdr, "HTTP/1.", 7) != 0)
        return false;
    c->status = atoi(c->hdr + 9);
    c->body_left = -1;
    for (char *p = c->hdr; p < c->hdr + head_end; ) {
        char *nl = memchr(p, '\n', (size_t)(c->hdr + head_end - p));
        if (!nl)
            break;
        if (strncasecmp(p, "content-length:", 15) == 0)
            c->body_left = atoll(p + 15);
        p = nl + 1;
    }
    return true;
}

static void step(struct conn *c)
{
    for (;;) {
        switch (c->st) {
        case ST_CONNECTING: {
            int err = 0;
            socklen_t l = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
            if (err) {
                conn_fail(c);
                return;
            }
            c->ssl = SSL_new(ctx);
            SSL_set_fd(c->ssl, c->fd);
            SSL_set_tlsext_host_name(c->ssl, sni);
            SSL_set_connect_state(c->ssl);
            c->st = ST_HANDSHAKE;
            continue;
        }
        case ST_HANDSHAKE: {
            int r = SSL_do_handshake(c->ssl);
            if (r != 1) {
                ssl_wait(c, r);
                return;
            }
            c->st = ST_WRITING;
            continue;
        }
        case ST_WRITING: {
            int r = SSL_write(c->ssl, req + c->sent, (int)(req_len - c->sent));
            if (r <= 0) {
                ssl_wait(c, r);
                return;
            }
            c->sent += (size_t)r;
            if (c->sent == req_len)
                c->st = ST_READING;
            continue;
        }
        case ST_READING: {
            char buf[65536];
            int r = SSL_read(c->ssl, buf, sizeof buf);
            if (r <= 0) {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_ZERO_RETURN || e == SSL_ERROR_SYSCALL) {
                    /* EOF: complete only when reading to EOF was the framing */
                    if (c->have_head && c->body_left < 0)
                        conn_done(c);
                    else if (c->have_head && c->body_left == 0)
                        conn_done(c);
                    else
                        conn_fail(c);
                    return;
                }
                ssl_wait(c, r);
                return;
            }
            size_t n = (size_t)r, off = 0;
            if (!c->have_head) {
                size_t take = n < sizeof c->hdr - 1 - c->hlen ? n : sizeof c->hdr - 1 - c->hlen;
                memcpy(c->hdr + c->hlen, buf, take);
                size_t old = c->hlen;
                c->hlen += take;
                c->hdr[c->hlen] = '\0';
                char *end = strstr(c->hdr, "\r\n\r\n");
                if (!end) {
                    if (c->hlen >= sizeof c->hdr - 1) {
                        conn_fail(c);
                        return;
                    }
                    continue;
                }
                size_t head_end = (size_t)(end - c->hdr) + 4;
                if (!parse_head(c, head_end)) {
                    conn_fail(c);
                    return;
                }
                c->have_head = true;
                off = head_end - old;   /* bytes of buf that belong to the body */
            }
            if (c->body_left >= 0) {
                c->body_left -= (long long)(n - off);
                if (c->body_left <= 0) {
                    conn_done(c);
                    return;
                }
            }
            continue;
        }
        }
    }
}

static uint64_t percentile(double p)
{
    uint64_t want_n = (uint64_t)((double)nreq * p / 100.0 + 0.5), acc = 0;
    if (want_n == 0)
        want_n = 1;
    for (uint32_t i = 0; i < HIST_BUCKETS; i++) {
        acc += hist[i];
        if (acc >= want_n)
            return (uint64_t)i * 10 + 5;
    }
    return HIST_MAX;
}

int main(int argc, char **argv)
{
    if (argc < 7) {
        fprintf(stderr, "usage: tlsconn HOST PORT SNI PATH CONNECTIONS SECONDS [WARMUP_SECONDS]\n");
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]);
    sni = argv[3];
    const char *path = argv[4];
    int nconn = atoi(argv[5]);
    double secs = atof(argv[6]);
    double warm = argc > 7 ? atof(argv[7]) : 0.0;

    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "tlsconn: HOST must be an IPv4 address\n");
        return 2;
    }
    req_len = (size_t)snprintf(req, sizeof req,
                               "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: tlsconn\r\n"
                               "Accept: */*\r\nConnection: close\r\n\r\n", path, sni, port);

    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn - 1);

    hist = calloc(HIST_BUCKETS, sizeof *hist);
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct conn *cs = calloc((size_t)nconn, sizeof *cs);
    t_start = now_us();
    t_measure = t_start + (uint64_t)(warm * 1e6);
    t_end = t_measure + (uint64_t)(secs * 1e6);
    for (int i = 0; i < nconn; i++) {
        cs[i].fd = -1;
        conn_start(&cs[i]);
    }
    struct epoll_event evs[256];
    for (;;) {
        uint64_t t = now_us();
        if (t >= t_end)
            break;
        int timeout = (int)((t_end - t) / 1000) + 1;
        int n = epoll_wait(ep, evs, 256, timeout);
        for (int i = 0; i < n; i++)
            step(evs[i].data.ptr);
    }
    double measured = (double)(now_us() - t_measure) / 1e6;
    printf("requests=%llu errors=%llu seconds=%.3f rps=%.1f p50_us=%llu p99_us=%llu non2xx=%llu\n",
           (unsigned long long)nreq, (unsigned long long)nerr, measured, (double)nreq / measured,
           (unsigned long long)percentile(50), (unsigned long long)percentile(99),
           (unsigned long long)non2xx);
    return 0;
}
