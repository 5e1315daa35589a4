/* test_challenge.c — the challenge answer store: http-01 lookups (exact
 * token, replace, remove, refusals), the RFC 8737 certificate's contents
 * byte for byte, real in-memory TLS handshakes offering and not offering
 * acme-tls/1, a context outliving its removal, and lookups racing updates. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "challenge.h"
#include "check.h"

static void test_http_lookup_exact_token(void)
{
    char out[256], err[256];
    CHECK(challenge_http_add("tok_A-1", "tok_A-1.thumb", err, sizeof err) == 0);
    CHECK(challenge_http_lookup("tok_A-1", 7, out, sizeof out) == 13);
    CHECK_STR(out, "tok_A-1.thumb");
    /* Length-delimited: a prefix or a longer slice is a different token. */
    CHECK(challenge_http_lookup("tok_A-1", 6, out, sizeof out) == -1);
    CHECK(challenge_http_lookup("tok_A-1x", 8, out, sizeof out) == -1);
    /* cap too small: refused rather than truncated. */
    CHECK(challenge_http_lookup("tok_A-1", 7, out, 13) == -1);
    /* Replacing keeps one entry with the new value. */
    CHECK(challenge_http_add("tok_A-1", "tok_A-1.other", err, sizeof err) == 0);
    CHECK(challenge_http_lookup("tok_A-1", 7, out, sizeof out) == 13);
    CHECK_STR(out, "tok_A-1.other");
    challenge_http_remove("tok_A-1");
    CHECK(challenge_http_lookup("tok_A-1", 7, out, sizeof out) == -1);
    /* Tokens that are not base64url never enter the store. */
    CHECK(challenge_http_add("../etc", "x", err, sizeof err) == -1 && strstr(err, "base64url"));
    CHECK(challenge_http_add("", "x", err, sizeof err) == -1);
}

static X509 *ctx_cert(const char *domain)
{
    SSL_CTX *ctx = challenge_tls_alpn_ctx(domain, strlen(domain));
    X509 *x = ctx ? SSL_CTX_get0_certificate(ctx) : NULL;
    if (x)
        X509_up_ref(x);
    SSL_CTX_free(ctx);
    return x;
}

static void test_tls_alpn_certificate_contents(void)
{
    char err[256];
    const char *ka = "token123.thumbprint456";
    CHECK(challenge_tls_alpn_add("a.example.test", ka, err, sizeof err) == 0);
    CHECK(challenge_tls_alpn_ctx("b.example.test", 14) == NULL);
    X509 *x = ctx_cert("a.example.test");
    CHECK(x != NULL);
    if (!x)
        return;
    /* Exactly one dNSName, the domain. */
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    CHECK(sk_GENERAL_NAME_num(gens) == 1);
    GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, 0);
    CHECK(g && g->type == GEN_DNS &&
          strcmp((const char *)ASN1_STRING_get0_data(g->d.dNSName), "a.example.test") == 0);
    GENERAL_NAMES_free(gens);
    /* id-pe-acmeIdentifier: critical, extnValue = DER OCTET STRING(SHA-256(ka)). */
    ASN1_OBJECT *oid = OBJ_txt2obj("1.3.6.1.5.5.7.1.31", 1);
    int idx = X509_get_ext_by_OBJ(x, oid, -1);
    CHECK(idx >= 0);
    X509_EXTENSION *ext = idx >= 0 ? X509_get_ext(x, idx) : NULL;
    CHECK(ext && X509_EXTENSION_get_critical(ext) == 1);
    unsigned char want[34] = { 0x04, 0x20 };
    SHA256((const unsigned char *)ka, strlen(ka), want + 2);
    ASN1_OCTET_STRING *v = ext ? X509_EXTENSION_get_data(ext) : NULL;
    CHECK(v && ASN1_STRING_length(v) == 34 && memcmp(ASN1_STRING_get0_data(v), want, 34) == 0);
    ASN1_OBJECT_free(oid);
    /* Self-signed by its own key. */
    CHECK(X509_verify(x, X509_get0_pubkey(x)) == 1);
    X509_free(x);
    challenge_tls_alpn_remove("a.example.test");
    CHECK(challenge_tls_alpn_ctx("a.example.test", 14) == NULL);
}

/* A handshake over a BIO pair: a server SSL from a plain context whose SNI
 * switch mimics tls.c, a client offering alpn. Returns the negotiated
 * protocol ("" none) or NULL when the handshake failed. */
static int on_hello(SSL *s, int *al, void *arg)
{
    const unsigned char *p;
    size_t len;
    if (!SSL_client_hello_get0_ext(s, TLSEXT_TYPE_server_name, &p, &len) || len < 5)
        return SSL_CLIENT_HELLO_ERROR;
    SSL_CTX *ctx = challenge_tls_alpn_ctx((const char *)p + 5, (size_t)p[3] << 8 | p[4]);
    if (!ctx) {
        *al = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_CLIENT_HELLO_ERROR;
    }
    SSL_set_SSL_CTX(s, ctx);
    SSL_CTX_free(ctx);
    return SSL_CLIENT_HELLO_SUCCESS;
}

static const char *handshake(const char *sni, const unsigned char *alpn, unsigned alpnlen,
                             char *proto, size_t cap)
{
    SSL_CTX *sctx = SSL_CTX_new(TLS_server_method()), *cctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_client_hello_cb(sctx, on_hello, NULL);
    SSL *srv = SSL_new(sctx), *cli = SSL_new(cctx);
    BIO *bs, *bc;
    BIO_new_bio_pair(&bs, 0, &bc, 0);
    SSL_set_bio(srv, bs, bs);
    SSL_set_bio(cli, bc, bc);
    SSL_set_accept_state(srv);
    SSL_set_connect_state(cli);
    SSL_set_tlsext_host_name(cli, sni);
    SSL_set_alpn_protos(cli, alpn, alpnlen);
    const char *res = NULL;
    for (int i = 0; i < 20; i++) {
        int rc = SSL_do_handshake(cli), rs = SSL_do_handshake(srv);
        if (rc == 1 && rs == 1) {
            const unsigned char *pr;
            unsigned prlen;
            SSL_get0_alpn_selected(cli, &pr, &prlen);
            snprintf(proto, cap, "%.*s", (int)prlen, pr ? (const char *)pr : "");
            res = proto;
            break;
        }
        if ((rc != 1 && SSL_get_error(cli, rc) == SSL_ERROR_SSL) ||
            (rs != 1 && SSL_get_error(srv, rs) == SSL_ERROR_SSL))
            break;
    }
    ERR_clear_error();
    SSL_free(cli);
    SSL_free(srv);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
    return res;
}

static void test_tls_alpn_handshakes(void)
{
    char err[256], proto[32];
    CHECK(challenge_tls_alpn_add("h.example.test", "t.k", err, sizeof err) == 0);
    const unsigned char acme[] = "\x0a" "acme-tls/1", h1[] = "\x08" "http/1.1";
    CHECK_STR(handshake("h.example.test", acme, sizeof acme - 1, proto, sizeof proto), "acme-tls/1");
    /* Without acme-tls/1 the challenge certificate is never served. */
    CHECK(handshake("h.example.test", h1, sizeof h1 - 1, proto, sizeof proto) == NULL);
    /* A name without a pending challenge gets nothing. */
    CHECK(handshake("other.example.test", acme, sizeof acme - 1, proto, sizeof proto) == NULL);

    /* A context taken before the remove stays usable (it is up-referenced). */
    SSL_CTX *held = challenge_tls_alpn_ctx("h.example.test", 14);
    challenge_tls_alpn_remove("h.example.test");
    CHECK(held && SSL_CTX_get0_certificate(held) != NULL);
    SSL_CTX_free(held);
}

static atomic_bool stop;

static void *reader(void *arg)
{
    char out[128];
    long hits = 0;
    while (!atomic_load(&stop)) {
        if (challenge_http_lookup("racetok", 7, out, sizeof out) >= 0) {
            if (strncmp(out, "racetok.", 8) != 0)
                return (void *)-1L;   /* a torn value */
            hits++;
        }
        SSL_CTX *c = challenge_tls_alpn_ctx("race.example.test", 17);
        SSL_CTX_free(c);
    }
    return (void *)hits;
}

static void test_lookups_race_updates(void)
{
    pthread_t t[4];
    char err[256];
    atomic_store(&stop, false);
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, reader, NULL);
    for (int i = 0; i < 200; i++) {
        char ka[64];
        snprintf(ka, sizeof ka, "racetok.%d", i);
        challenge_http_add("racetok", ka, err, sizeof err);
        if (i % 20 == 0)
            challenge_tls_alpn_add("race.example.test", ka, err, sizeof err);
        if (i % 3 == 0)
            challenge_http_remove("racetok");
        if (i % 40 == 0)
            challenge_tls_alpn_remove("race.example.test");
    }
    atomic_store(&stop, true);
    int torn = 0;
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(t[i], &r);
        if ((long)r < 0)
            torn++;
    }
    CHECK(torn == 0);
    challenge_clear();
    char out[64];
    CHECK(challenge_http_lookup("racetok", 7, out, sizeof out) == -1);
}

int main(void)
{
    test_http_lookup_exact_token();
    test_tls_alpn_certificate_contents();
    test_tls_alpn_handshakes();
    test_lookups_race_updates();
    return check_report("test_challenge");
}
