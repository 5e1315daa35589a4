/* test_tls.c — real handshakes against tls_new_server() over a socketpair:
 * an unregistered SNI (or none) is refused with unrecognized_name and gets no
 * certificate; a registered one parks the handshake (WANT_CLIENT_HELLO_CB)
 * until mkcert has made the certificate, then completes and verifies against
 * mkcert's CA with ALPN http/1.1; later handshakes are immediate, TLS 1.2
 * uses ECDHE, tickets resume; a failed certificate gets internal_error. */
#include "certs.h"
#include "check.h"
#include "log.h"
#include "loop.h"
#include "mkcert.h"
#include "qsbr.h"
#include "routes.h"
#include "sni.h"
#include "tls.h"
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <openssl/err.h>

static sem_t notified;
static int reader;
static char caroot[512];

static void on_certs_done(void *arg) { sem_post(&notified); }

static void *loop_thread(void *arg)
{
    loop_run(arg);
    return NULL;
}

static int wait_notified(int seconds)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += seconds;
    while (sem_timedwait(&notified, &ts) < 0)
        if (errno != EINTR)
            return -1;
    return 0;
}

static void fmt(char *out, size_t cap, const char *f, ...) __attribute__((format(printf, 3, 4)));
static void fmt(char *out, size_t cap, const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    vsnprintf(out, cap, f, ap);
    va_end(ap);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

/* The last alert the client received, from its info callback. */
static int alert_received;
static void on_client_info(const SSL *s, int where, int ret)
{
    if (where & SSL_CB_READ_ALERT)
        alert_received = ret & 0xff;
}

/* ClientHellos the client sent (2 after a HelloRetryRequest). */
static int client_hellos;
static void on_client_msg(int write_p, int version, int content_type, const void *buf,
                          size_t len, SSL *s, void *arg)
{
    if (write_p && content_type == SSL3_RT_HANDSHAKE && len > 0 &&
        ((const unsigned char *)buf)[0] == SSL3_MT_CLIENT_HELLO)
        client_hellos++;
}

/* One connection: a client SSL and the server SSL under test. */
struct pair {
    int fd[2];
    SSL *c, *s;
};

static SSL_CTX *client_ctx(int max_version)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    char ca[600];
    fmt(ca, sizeof ca, "%s/rootCA.pem", caroot);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    /* Absent until mkcert has run once; loaded again by pair_trust_ca. */
    SSL_CTX_load_verify_locations(ctx, ca, NULL);
    ERR_clear_error();
    if (max_version)
        SSL_CTX_set_max_proto_version(ctx, max_version);
    SSL_CTX_set_alpn_protos(ctx, (const unsigned char *)"\x02h2\x08http/1.1", 12);
    SSL_CTX_set_info_callback(ctx, on_client_info);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT);
    return ctx;
}

static void pair_open(struct pair *p, SSL_CTX *cctx, const char *sni)
{
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, p->fd) == 0);
    p->s = tls_new_server(p->fd[0]);
    p->c = SSL_new(cctx);
    SSL_set_fd(p->c, p->fd[1]);
    SSL_set_connect_state(p->c);
    if (sni) {
        SSL_set_tlsext_host_name(p->c, sni);
        SSL_set1_host(p->c, sni);
    }
    alert_received = -1;
}

static void pair_close(struct pair *p)
{
    SSL_free(p->c);
    SSL_free(p->s);
    close(p->fd[0]);
    close(p->fd[1]);
}

enum step { DONE, PARKED, FAILED };

/* Drives both ends until the handshake completes, the server parks it, or
 * either side fails. */
static enum step pump(struct pair *p)
{
    bool cdone = false, sdone = false;
    for (int i = 0; i < 50; i++) {
        if (!cdone) {
            int r = SSL_do_handshake(p->c);
            if (r == 1)
                cdone = true;
            else if (SSL_get_error(p->c, r) != SSL_ERROR_WANT_READ &&
                     SSL_get_error(p->c, r) != SSL_ERROR_WANT_WRITE)
                return FAILED;
        }
        if (!sdone) {
            int r = SSL_do_handshake(p->s);
            if (r == 1) {
                sdone = true;
            } else {
                int e = SSL_get_error(p->s, r);
                if (e == SSL_ERROR_WANT_CLIENT_HELLO_CB)
                    return PARKED;
                if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
                    SSL_do_handshake(p->c);   /* let the client read the alert */
                    return FAILED;
                }
            }
        }
        if (cdone && sdone)
            return DONE;
    }
    return FAILED;
}

static bool alpn_is(SSL *s, const char *want)
{
    const unsigned char *a;
    unsigned int n;
    SSL_get0_alpn_selected(s, &a, &n);
    return n == strlen(want) && memcmp(a, want, n) == 0;
}

static bool cert_file_exists(const char *dir, const char *name)
{
    char path[600];
    fmt(path, sizeof path, "%s/%s-cert.pem", dir, name);
    return access(path, F_OK) == 0;
}

static void test_refused_names(const char *dir, SSL_CTX *cctx)
{
    struct pair p;

    pair_open(&p, cctx, "unregistered.test");
    CHECK(pump(&p) == FAILED);
    CHECK(alert_received == SSL_AD_UNRECOGNIZED_NAME);
    pair_close(&p);

    pair_open(&p, cctx, NULL);   /* no SNI at all, as when connecting by IP */
    CHECK(pump(&p) == FAILED);
    CHECK(alert_received == SSL_AD_UNRECOGNIZED_NAME);
    pair_close(&p);

    ERR_clear_error();
    usleep(100 * 1000);
    CHECK(!cert_file_exists(dir, "unregistered.test"));
}

static void test_parked_until_cert_made(const char *dir, SSL_CTX *cctx)
{
    struct pair p;
    char ca[600];

    pair_open(&p, cctx, "Good.Test");   /* SNI is matched case-insensitively */
    CHECK(pump(&p) == PARKED);
    CHECK(pump(&p) == PARKED);   /* still parked: retrying does not queue twice */
    qsbr_quiescent(reader);
    CHECK(wait_notified(90) == 0);
    /* mkcert made its CA with the first certificate: trust it now. */
    fmt(ca, sizeof ca, "%s/rootCA.pem", caroot);
    CHECK(SSL_CTX_load_verify_locations(cctx, ca, NULL) == 1);
    CHECK(pump(&p) == DONE);
    CHECK(SSL_get_verify_result(p.c) == X509_V_OK);
    CHECK(alpn_is(p.c, "h2"));   /* the client offers h2 and http/1.1: ours first */
    CHECK(alpn_is(p.s, "h2"));
    CHECK(SSL_version(p.c) >= TLS1_2_VERSION);
    CHECK(cert_file_exists(dir, "good.test"));
    pair_close(&p);
}

/* Reads one byte written by the server: TLS 1.3 tickets arrive after the
 * handshake, so the client must read for SSL_get1_session to be resumable. */
static SSL_SESSION *exchange_and_keep_session(struct pair *p)
{
    char b = 0;
    CHECK(SSL_write(p->s, "x", 1) == 1);
    CHECK(SSL_read(p->c, &b, 1) == 1 && b == 'x');
    /* A client SSL freed without close_notify marks its session not
     * resumable (OpenSSL's ssl_clear_bad_session). */
    SSL_shutdown(p->c);
    return SSL_get1_session(p->c);
}

static void test_ready_handshakes(SSL_CTX *cctx)
{
    struct pair p;

    /* Immediate now; tickets issued by the switched-to context resume. */
    pair_open(&p, cctx, "good.test");
    CHECK(pump(&p) == DONE);
    CHECK(SSL_get_verify_result(p.c) == X509_V_OK);
    SSL_SESSION *sess = exchange_and_keep_session(&p);
    CHECK(sess != NULL);
    pair_close(&p);

    pair_open(&p, cctx, "good.test");
    SSL_set_session(p.c, sess);
    CHECK(pump(&p) == DONE);
    CHECK(SSL_session_reused(p.c) == 1);
    pair_close(&p);
    SSL_SESSION_free(sess);

    /* A key share the server does not take (ffdhe2048) makes it send a
     * HelloRetryRequest: the second ClientHello reaches the switched-to
     * context, which must finish the handshake the same way. */
    SSL_CTX *chrr = client_ctx(0);
    CHECK(SSL_CTX_set1_groups_list(chrr, "ffdhe2048:X25519") == 1);
    SSL_CTX_set_msg_callback(chrr, on_client_msg);
    client_hellos = 0;
    pair_open(&p, chrr, "good.test");
    CHECK(pump(&p) == DONE);
    CHECK(client_hellos == 2);
    CHECK(SSL_version(p.c) == TLS1_3_VERSION);
    CHECK(SSL_get_verify_result(p.c) == X509_V_OK);
    CHECK(alpn_is(p.c, "h2"));
    pair_close(&p);
    SSL_CTX_free(chrr);

    /* TLS 1.2: ECDHE key exchange, ALPN from the base settings. */
    SSL_CTX *c12 = client_ctx(TLS1_2_VERSION);
    pair_open(&p, c12, "good.test");
    CHECK(pump(&p) == DONE);
    CHECK(SSL_version(p.c) == TLS1_2_VERSION);
    CHECK(SSL_CIPHER_get_kx_nid(SSL_get_current_cipher(p.c)) == NID_kx_ecdhe);
    CHECK(SSL_get_verify_result(p.c) == X509_V_OK);
    CHECK(alpn_is(p.c, "h2"));
    pair_close(&p);

    /* A client that cannot do TLS 1.2 is refused. */
    SSL_CTX_set_min_proto_version(c12, TLS1_VERSION);
    SSL_CTX_set_max_proto_version(c12, TLS1_1_VERSION);
    SSL_CTX_set_security_level(c12, 0);
    pair_open(&p, c12, "good.test");
    CHECK(pump(&p) == FAILED);
    pair_close(&p);
    SSL_CTX_free(c12);
    ERR_clear_error();
}

/* mkcert cannot run: the parked handshake resumes into internal_error. */
static void test_failed_cert(const char *dir2, SSL_CTX *cctx, struct loop *l)
{
    char err[256];
    struct pair p;

    certs_shutdown();
    CHECK(certs_init(CERTS_MKCERT, dir2, "/nonexistent/mkcert", err, sizeof err) == 0);
    certs_subscribe(l, on_certs_done, NULL);
    pair_open(&p, cctx, "good.test");
    CHECK(pump(&p) == PARKED);
    qsbr_quiescent(reader);
    CHECK(wait_notified(30) == 0);
    CHECK(pump(&p) == FAILED);
    CHECK(alert_received == SSL_AD_INTERNAL_ERROR);
    pair_close(&p);
    ERR_clear_error();
}

int main(void)
{
    char tmpl[] = "/tmp/core_test_tls_XXXXXX";
    char mkcert[4096], dir[512], dir2[512], err[512] = "";
    pthread_t th;

    log_set_level(LOG_ERROR);
    if (!mkdtemp(tmpl) || mkcert_find(mkcert, sizeof mkcert) < 0) {
        fprintf(stderr, "test_tls: needs mkdtemp and mkcert on PATH (apt-get install mkcert)\n");
        return 1;
    }
    fmt(caroot, sizeof caroot, "%s/caroot", tmpl);
    fmt(dir, sizeof dir, "%s/certs", tmpl);
    fmt(dir2, sizeof dir2, "%s/certs2", tmpl);
    mkdir(caroot, 0700);
    setenv("CAROOT", caroot, 1);

    reader = qsbr_register();
    sem_init(&notified, 0, 0);
    struct routes *r = routes_new_empty();
    routes_set(r, "good.test", 9, 8080);
    routes_publish(r);

    struct loop *l = loop_new();
    CHECK(certs_init(CERTS_MKCERT, dir, mkcert, err, sizeof err) == 0);
    CHECK(tls_init(sni_on_client_hello, err, sizeof err) == 0);
    certs_subscribe(l, on_certs_done, NULL);
    pthread_create(&th, NULL, loop_thread, l);

    SSL_CTX *cctx = client_ctx(0);
    test_refused_names(dir, cctx);
    test_parked_until_cert_made(dir, cctx);
    test_ready_handshakes(cctx);
    test_failed_cert(dir2, cctx, l);
    SSL_CTX_free(cctx);

    qsbr_offline(reader);
    certs_shutdown();
    tls_cleanup();
    loop_stop(l);
    pthread_join(th, NULL);
    loop_free(l);
    qsbr_reclaim();
    nftw(tmpl, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return check_report("test_tls");
}
