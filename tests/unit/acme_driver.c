/* acme_driver.c — drives the ACME client against a real CA (pebble) for the
 * integration tests in tests/integration/test_acme_client.py, until the
 * client is wired into core_server. Not a unit test (make unit does not run
 * it; pytest builds it with `make build/tests/acme_driver`).
 *
 * It answers the CA's validation requests from challenge.h the way
 * core_server will: plain HTTP on --http-port (GET
 * /.well-known/acme-challenge/TOKEN), TLS on --tls-port (client-hello
 * callback switching to the tls-alpn-01 context for the SNI), one thread
 * per connection. Then it calls acme_obtain for each --domain and writes
 * OUT_DIR/DOMAIN.key and OUT_DIR/DOMAIN.crt. --pause-between prints
 * "waiting" and reads a line from stdin before each domain after the first;
 * --cancel-after-ms calls acme_client_cancel from another thread.
 *
 *   acme_driver --directory URL [--ca FILE] --certs-dir DIR --out-dir DIR
 *               [--http-port N] [--tls-port N] [--challenges http-01,tls-alpn-01]
 *               [--email ADDR] [--timeout-ms N] [--cancel-after-ms N] [--pause-between]
 *               --domain NAME [--domain NAME...]
 *
 * Prints "obtained DOMAIN MS" per certificate on stdout; exits 0 when all
 * were obtained, 1 with the client's error on stderr otherwise. */
#include <arpa/inet.h>
#include <getopt.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "acme.h"
#include "challenge.h"
#include "log.h"
#include "mem.h"

#define PREFIX "/.well-known/acme-challenge/"

static SSL_CTX *base_ctx;

static int listen_on(int port)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 64) < 0) {
        fprintf(stderr, "acme_driver: listen 127.0.0.1:%d: %m\n", port);
        exit(2);
    }
    return fd;
}

/* ---------------------------------------------------------------- http-01 */

static void *on_http_conn(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char req[8192], body[600], resp[1024];
    size_t n = 0;
    ssize_t r;

    while (n < sizeof req - 1 && (r = read(fd, req + n, sizeof req - 1 - n)) > 0) {
        n += (size_t)r;
        req[n] = '\0';
        if (strstr(req, "\r\n\r\n"))
            break;
    }
    req[n] = '\0';
    int len = -1;
    if (strncmp(req, "GET " PREFIX, 4 + strlen(PREFIX)) == 0) {
        const char *tok = req + 4 + strlen(PREFIX);
        size_t toklen = strcspn(tok, " ?\r\n");
        len = challenge_http_lookup(tok, toklen, body, sizeof body);
    }
    if (len >= 0)
        n = (size_t)snprintf(resp, sizeof resp, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                             "Content-Length: %d\r\nConnection: close\r\n\r\n%s", len, body);
    else
        n = (size_t)snprintf(resp, sizeof resp, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n"
                             "Connection: close\r\n\r\n");
    fprintf(stderr, "acme_driver: http-01 request answered %s\n", len >= 0 ? "200" : "404");
    if (write(fd, resp, n) < 0)
        perror("acme_driver: write");
    close(fd);
    return NULL;
}

/* ---------------------------------------------------------------- tls-alpn-01 */

/* What tls.c's on_client_hello will do for tls-alpn-01: find the SNI and
 * switch to the challenge context. */
static int on_client_hello(SSL *s, int *al, void *arg)
{
    const unsigned char *p;
    size_t len;
    if (!SSL_client_hello_get0_ext(s, TLSEXT_TYPE_server_name, &p, &len) || len < 5 ||
        p[2] != TLSEXT_NAMETYPE_host_name) {
        *al = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_CLIENT_HELLO_ERROR;
    }
    size_t nlen = (size_t)p[3] << 8 | p[4];
    if (nlen + 5 > len) {
        *al = SSL_AD_DECODE_ERROR;
        return SSL_CLIENT_HELLO_ERROR;
    }
    SSL_CTX *ctx = challenge_tls_alpn_ctx((const char *)p + 5, nlen);
    if (!ctx) {
        fprintf(stderr, "acme_driver: tls-alpn-01 for %.*s: no challenge pending\n",
                (int)nlen, p + 5);
        *al = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_CLIENT_HELLO_ERROR;
    }
    SSL_set_SSL_CTX(s, ctx);
    SSL_CTX_free(ctx);   /* the SSL holds its own reference now */
    return SSL_CLIENT_HELLO_SUCCESS;
}

static void *on_tls_conn(void *arg)
{
    int fd = (int)(intptr_t)arg;
    SSL *s = SSL_new(base_ctx);
    SSL_set_fd(s, fd);
    int rc = SSL_accept(s);
    fprintf(stderr, "acme_driver: tls-alpn-01 handshake %s\n", rc == 1 ? "done" : "failed");
    if (rc == 1)
        SSL_shutdown(s);
    ERR_clear_error();
    SSL_free(s);
    close(fd);
    return NULL;
}

struct acceptor {
    int fd;
    void *(*fn)(void *);
};

static void *accept_loop(void *arg)
{
    struct acceptor *a = arg;
    for (;;) {
        int cfd = accept4(a->fd, NULL, NULL, SOCK_CLOEXEC);
        if (cfd < 0)
            continue;
        /* 5 s is plenty for a validation request; a stuck peer ends there. */
        struct timeval tv = { 5, 0 };
        setsockopt(cfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(cfd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        pthread_t t;
        if (pthread_create(&t, NULL, a->fn, (void *)(intptr_t)cfd) == 0)
            pthread_detach(t);
        else
            close(cfd);
    }
    return NULL;
}

static void start_acceptor(int port, void *(*fn)(void *))
{
    static struct acceptor as[2];
    static int n;
    pthread_t t;
    as[n] = (struct acceptor){ listen_on(port), fn };
    if (pthread_create(&t, NULL, accept_loop, &as[n++]) != 0)
        exit(2);
    pthread_detach(t);
}

/* ---------------------------------------------------------------- main */

struct canceller {
    struct acme_client *cl;
    long ms;
};

static void *cancel_later(void *arg)
{
    struct canceller *cn = arg;
    struct timespec ts = { cn->ms / 1000, cn->ms % 1000 * 1000000L };
    nanosleep(&ts, NULL);
    fprintf(stderr, "acme_driver: cancelling\n");
    acme_client_cancel(cn->cl);
    return NULL;
}

static int write_out(const char *dir, const char *domain, const char *ext, const char *data)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.%s", dir, domain, ext);
    FILE *f = fopen(path, "w");
    if (!f || fputs(data, f) == EOF || fclose(f) != 0) {
        fprintf(stderr, "acme_driver: write %s: %m\n", path);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "directory", required_argument, NULL, 'd' }, { "ca", required_argument, NULL, 'a' },
        { "certs-dir", required_argument, NULL, 'c' }, { "out-dir", required_argument, NULL, 'o' },
        { "http-port", required_argument, NULL, 'h' }, { "tls-port", required_argument, NULL, 't' },
        { "challenges", required_argument, NULL, 'C' }, { "email", required_argument, NULL, 'e' },
        { "timeout-ms", required_argument, NULL, 'T' }, { "domain", required_argument, NULL, 'n' },
        { "cancel-after-ms", required_argument, NULL, 'X' },
        { "pause-between", no_argument, NULL, 'P' },
        { NULL, 0, NULL, 0 },
    };
    struct acme_options o = { 0 };
    const char *out_dir = ".", *domains[16];
    int ndomains = 0, http_port = 0, tls_port = 0, c;
    long cancel_after_ms = 0;
    bool pause_between = false;
    struct canceller cn;
    pthread_t cancel_thread;
    char err[1024];

    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'd': o.directory_url = optarg; break;
        case 'a': o.ca_file = optarg; break;
        case 'c': o.certs_dir = optarg; break;
        case 'o': out_dir = optarg; break;
        case 'h': http_port = atoi(optarg); break;
        case 't': tls_port = atoi(optarg); break;
        case 'e': o.email = optarg; break;
        case 'X': cancel_after_ms = atol(optarg); break;
        case 'P': pause_between = true; break;
        case 'T': o.obtain_timeout_ms = o.request_timeout_ms = atol(optarg); break;
        case 'C':
            if (strstr(optarg, "http-01"))
                o.challenges |= ACME_CHALLENGE_HTTP01;
            if (strstr(optarg, "tls-alpn-01"))
                o.challenges |= ACME_CHALLENGE_TLSALPN01;
            break;
        case 'n':
            if (ndomains < 16)
                domains[ndomains++] = optarg;
            break;
        default: return 2;
        }
    }
    if (!o.directory_url || !o.certs_dir || ndomains == 0) {
        fprintf(stderr, "usage: acme_driver --directory URL --certs-dir DIR --domain NAME ...\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    log_set_level(LOG_DEBUG);

    base_ctx = SSL_CTX_new(TLS_server_method());
    SSL_CTX_set_client_hello_cb(base_ctx, on_client_hello, NULL);
    if (http_port)
        start_acceptor(http_port, on_http_conn);
    if (tls_port)
        start_acceptor(tls_port, on_tls_conn);

    struct acme_client *cl = acme_client_new(&o, err, sizeof err);
    if (!cl) {
        fprintf(stderr, "acme_driver: %s\n", err);
        return 1;
    }
    if (cancel_after_ms > 0) {
        /* What certs_shutdown will do: cancel from another thread. */
        cn = (struct canceller){ cl, cancel_after_ms };
        if (pthread_create(&cancel_thread, NULL, cancel_later, &cn) != 0)
            return 2;
    }
    int rc = 0;
    for (int i = 0; i < ndomains && rc == 0; i++) {
        char *key = NULL, *chain = NULL;
        struct timespec t0, t1;
        if (pause_between && i > 0) {
            /* The test changes the CA (restarts it) and then sends a line. */
            char line[16];
            printf("waiting\n");
            fflush(stdout);
            if (!fgets(line, sizeof line, stdin))
                break;
        }
        clock_gettime(CLOCK_MONOTONIC, &t0);
        if (acme_obtain(cl, domains[i], &key, &chain, err, sizeof err) < 0) {
            fprintf(stderr, "acme_driver: %s: %s\n", domains[i], err);
            rc = 1;
            break;
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        printf("obtained %s %.1f\n", domains[i],
               (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
        fflush(stdout);
        if (write_out(out_dir, domains[i], "key", key) < 0 ||
            write_out(out_dir, domains[i], "crt", chain) < 0)
            rc = 1;
        mem_wipe(key, strlen(key));
        free(key);
        free(chain);
    }
    if (cancel_after_ms > 0)
        pthread_join(cancel_thread, NULL);   /* it uses cl */
    acme_client_free(cl);
    challenge_clear();
    SSL_CTX_free(base_ctx);
    return rc;
}
