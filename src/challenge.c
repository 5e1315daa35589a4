/* challenge.c — pending ACME challenge answers: http-01 key authorizations
 * and tls-alpn-01 challenge contexts, behind one mutex (see challenge.h). */
#include "challenge.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "jws.h"
#include "mem.h"
#include "sslerr.h"
#include "tls.h"

#define TOKEN_MAX   256    /* RFC 8555 tokens are 128+ bits of base64url: ~43 chars */
#define KEYAUTH_MAX 512    /* token "." 43-char thumbprint */
#define NAME_MAX_   253

/* id-pe-acmeIdentifier, RFC 8737 section 6.1. */
#define OID_ACME_IDENTIFIER "1.3.6.1.5.5.7.1.31"

enum entry_kind { ENTRY_HTTP, ENTRY_TLS_ALPN };

struct entry {
    enum entry_kind e_kind;
    char *e_name;           /* http-01: the token; tls-alpn-01: the domain */
    char *e_keyauth;        /* http-01: the body to serve */
    SSL_CTX *e_ctx;         /* tls-alpn-01: holds the certificate; one reference */
    struct entry *e_next;
};

static pthread_mutex_t store_lock = PTHREAD_MUTEX_INITIALIZER;
static struct entry *store;   /* a few entries at most: a list is enough */
static struct challenge_sharing sharing;   /* set once before the certificate thread starts */

static void entry_free(struct entry *e)
{
    free(e->e_name);
    if (e->e_keyauth) {
        mem_wipe(e->e_keyauth, strlen(e->e_keyauth));
        free(e->e_keyauth);
    }
    SSL_CTX_free(e->e_ctx);
    free(e);
}

/* Unlinks the entry of that kind and name; the caller frees it outside the
 * lock. Call with store_lock held. */
static struct entry *unlink_entry(enum entry_kind kind, const char *name, size_t len)
{
    for (struct entry **pp = &store; *pp; pp = &(*pp)->e_next) {
        struct entry *e = *pp;
        if (e->e_kind == kind && strlen(e->e_name) == len && memcmp(e->e_name, name, len) == 0) {
            *pp = e->e_next;
            return e;
        }
    }
    return NULL;
}

/* Publishes e, replacing an entry of the same kind and name. */
static void publish(struct entry *e)
{
    pthread_mutex_lock(&store_lock);
    struct entry *old = unlink_entry(e->e_kind, e->e_name, strlen(e->e_name));
    e->e_next = store;
    store = e;
    pthread_mutex_unlock(&store_lock);
    if (old)
        entry_free(old);
}

static void remove_entry(enum entry_kind kind, const char *name)
{
    pthread_mutex_lock(&store_lock);
    struct entry *e = unlink_entry(kind, name, strlen(name));
    pthread_mutex_unlock(&store_lock);
    if (e)
        entry_free(e);
}

/* ---------------------------------------------------------------- http-01 */

static bool is_b64url(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') ||
              (*s >= '0' && *s <= '9') || *s == '-' || *s == '_'))
            return false;
    return true;
}

void challenge_set_sharing(const struct challenge_sharing *sh)
{
    sharing = sh ? *sh : (struct challenge_sharing){ 0 };
}

/* After a local add: publishes the answer for the other nodes too. On
 * failure the local entry is removed again (the order must not go on with
 * an answer only this node knows). */
static int share_answer(enum entry_kind kind, const char *id, const char *keyauth, char *err,
                 size_t errlen)
{
    if (!sharing.put)
        return 0;
    const char *type = kind == ENTRY_HTTP ? "http-01" : "tls-alpn-01";
    if (sharing.put(type, id, keyauth, err, errlen) < 0) {
        remove_entry(kind, id);
        return -1;
    }
    return 0;
}

static void withdraw_answer(enum entry_kind kind, const char *id)
{
    if (sharing.del)
        sharing.del(kind == ENTRY_HTTP ? "http-01" : "tls-alpn-01", id);
}

int challenge_http_add(const char *token, const char *key_authorization,
                       char *err, size_t errlen)
{
    if (challenge_http_learn(token, key_authorization, err, errlen) < 0)
        return -1;
    return share_answer(ENTRY_HTTP, token, key_authorization, err, errlen);
}

int challenge_http_learn(const char *token, const char *key_authorization,
                         char *err, size_t errlen)
{
    /* The token ends up in a URL path we match byte for byte: RFC 8555
     * section 8.1 restricts it to base64url, so anything else is refused. */
    if (strlen(token) > TOKEN_MAX || !is_b64url(token)) {
        snprintf(err, errlen, "http-01 token \"%.40s\" is not base64url", token);
        return -1;
    }
    if (strlen(key_authorization) > KEYAUTH_MAX) {
        snprintf(err, errlen, "http-01 key authorization too long");
        return -1;
    }
    struct entry *e = xcalloc(1, sizeof *e);
    e->e_kind = ENTRY_HTTP;
    e->e_name = xstrdup(token);
    e->e_keyauth = xstrdup(key_authorization);
    publish(e);
    return 0;
}

void challenge_http_remove(const char *token)
{
    remove_entry(ENTRY_HTTP, token);
    withdraw_answer(ENTRY_HTTP, token);
}

void challenge_http_forget(const char *token)
{
    remove_entry(ENTRY_HTTP, token);
}

int challenge_http_lookup(const char *token, size_t len, char *out, size_t cap)
{
    int rc = -1;
    pthread_mutex_lock(&store_lock);
    for (struct entry *e = store; e; e = e->e_next) {
        if (e->e_kind != ENTRY_HTTP || strlen(e->e_name) != len ||
            memcmp(e->e_name, token, len) != 0)
            continue;
        size_t n = strlen(e->e_keyauth);
        if (n < cap) {
            memcpy(out, e->e_keyauth, n + 1);
            rc = (int)n;
        }
        break;
    }
    pthread_mutex_unlock(&store_lock);
    return rc;
}

/* ---------------------------------------------------------------- tls-alpn-01 */

/* RFC 8737 section 3: the server "MUST" negotiate acme-tls/1; a client that
 * did not offer it gets a no_application_protocol alert rather than a
 * challenge certificate it would misread as the site's. */
static int on_alpn_acme(SSL *s, const unsigned char **out, unsigned char *outlen,
                        const unsigned char *in, unsigned int inlen, void *arg)
{
    const size_t n = sizeof CHALLENGE_ALPN - 1;
    for (unsigned int off = 0; off < inlen; off += 1u + in[off]) {
        if (off + 1u + in[off] > inlen)
            break;
        if (in[off] == n && memcmp(in + off + 1, CHALLENGE_ALPN, n) == 0) {
            *out = in + off + 1;
            *outlen = (unsigned char)n;
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* The critical acmeIdentifier extension: its extnValue is the DER encoding
 * of OCTET STRING(SHA-256(key authorization)), i.e. an OCTET STRING inside
 * the extension's own OCTET STRING (RFC 8737 section 3). */
static X509_EXTENSION *acme_identifier_ext(const char *key_authorization)
{
    unsigned char der[2 + SHA256_DIGEST_LENGTH] = { 0x04, SHA256_DIGEST_LENGTH };
    SHA256((const unsigned char *)key_authorization, strlen(key_authorization), der + 2);
    ASN1_OBJECT *oid = OBJ_txt2obj(OID_ACME_IDENTIFIER, 1);
    ASN1_OCTET_STRING *val = ASN1_OCTET_STRING_new();
    X509_EXTENSION *ext = NULL;
    if (oid && val && ASN1_OCTET_STRING_set(val, der, sizeof der))
        ext = X509_EXTENSION_create_by_OBJ(NULL, oid, 1, val);
    ASN1_OCTET_STRING_free(val);
    ASN1_OBJECT_free(oid);
    return ext;
}

/* Self-signed challenge certificate for domain with key. NULL with err. */
static X509 *challenge_cert(const char *domain, const char *key_authorization, EVP_PKEY *key,
                            char *err, size_t errlen)
{
    X509 *x = X509_new();
    X509_EXTENSION *san = NULL, *id = NULL;
    unsigned char serial[16];
    BIGNUM *bn = NULL;
    char sanval[NAME_MAX_ + 8];

    snprintf(sanval, sizeof sanval, "DNS:%s", domain);
    if (!x || RAND_bytes(serial, sizeof serial) != 1)
        goto fail;
    serial[0] &= 0x7f;   /* a positive INTEGER */
    bn = BN_bin2bn(serial, sizeof serial, NULL);
    X509_NAME *name = X509_get_subject_name(x);
    /* Validity: an hour back for clock skew; a week is plenty for a challenge. */
    if (!bn || !X509_set_version(x, X509_VERSION_3) ||
        !BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) ||
        !X509_gmtime_adj(X509_getm_notBefore(x), -3600) ||
        !X509_gmtime_adj(X509_getm_notAfter(x), 7 * 86400) ||
        !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                    (const unsigned char *)"ACME tls-alpn-01 challenge", -1, -1, 0) ||
        !X509_set_issuer_name(x, name) || !X509_set_pubkey(x, key))
        goto fail;
    /* Exactly one dNSName, the domain being validated (section 3). */
    san = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, sanval);
    id = acme_identifier_ext(key_authorization);
    if (!san || !id || !X509_add_ext(x, san, -1) || !X509_add_ext(x, id, -1) ||
        !X509_sign(x, key, EVP_sha256()))
        goto fail;
    X509_EXTENSION_free(san);
    X509_EXTENSION_free(id);
    BN_free(bn);
    return x;
fail:
    sslerr_format(err, errlen, "making the tls-alpn-01 certificate");
    X509_EXTENSION_free(san);
    X509_EXTENSION_free(id);
    BN_free(bn);
    X509_free(x);
    return NULL;
}

int challenge_tls_alpn_add(const char *domain, const char *key_authorization,
                           char *err, size_t errlen)
{
    if (challenge_tls_alpn_learn(domain, key_authorization, err, errlen) < 0)
        return -1;
    return share_answer(ENTRY_TLS_ALPN, domain, key_authorization, err, errlen);
}

/* True when domain's tls-alpn-01 entry answers key_authorization already. */
static bool tls_alpn_has(const char *domain, const char *key_authorization)
{
    bool has = false;
    pthread_mutex_lock(&store_lock);
    for (struct entry *e = store; e; e = e->e_next)
        if (e->e_kind == ENTRY_TLS_ALPN && strcmp(e->e_name, domain) == 0) {
            has = e->e_keyauth && strcmp(e->e_keyauth, key_authorization) == 0;
            break;
        }
    pthread_mutex_unlock(&store_lock);
    return has;
}

int challenge_tls_alpn_learn(const char *domain, const char *key_authorization,
                             char *err, size_t errlen)
{
    EVP_PKEY *key = NULL;
    X509 *x = NULL;
    SSL_CTX *ctx = NULL;
    int rc = -1;

    if (strlen(domain) > NAME_MAX_ || strlen(key_authorization) > KEYAUTH_MAX) {
        snprintf(err, errlen, "tls-alpn-01 for %.64s: name or key authorization too long", domain);
        return -1;
    }
    if (tls_alpn_has(domain, key_authorization))
        return 0;   /* our own answer, seen again through the store */
    if (!(key = jws_key_generate(err, errlen)) ||
        !(x = challenge_cert(domain, key_authorization, key, err, errlen)))
        goto out;
    /* tls_ctx_new: same protocol versions, ciphers and options as every
     * other context the client-hello callback may switch to. */
    if (!(ctx = tls_ctx_new(err, errlen)))
        goto out;
    if (SSL_CTX_use_certificate(ctx, x) != 1 || SSL_CTX_use_PrivateKey(ctx, key) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        sslerr_format(err, errlen, "loading the tls-alpn-01 certificate");
        goto out;
    }
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn_acme, NULL);
    struct entry *e = xcalloc(1, sizeof *e);
    e->e_kind = ENTRY_TLS_ALPN;
    e->e_name = xstrdup(domain);
    e->e_keyauth = xstrdup(key_authorization);
    e->e_ctx = ctx;
    ctx = NULL;
    publish(e);
    rc = 0;
out:
    SSL_CTX_free(ctx);
    X509_free(x);
    EVP_PKEY_free(key);
    return rc;
}

void challenge_tls_alpn_remove(const char *domain)
{
    remove_entry(ENTRY_TLS_ALPN, domain);
    withdraw_answer(ENTRY_TLS_ALPN, domain);
}

void challenge_tls_alpn_forget(const char *domain)
{
    remove_entry(ENTRY_TLS_ALPN, domain);
}

SSL_CTX *challenge_tls_alpn_ctx(const char *domain, size_t len)
{
    SSL_CTX *ctx = NULL;
    pthread_mutex_lock(&store_lock);
    for (struct entry *e = store; e; e = e->e_next) {
        if (e->e_kind == ENTRY_TLS_ALPN && strlen(e->e_name) == len &&
            memcmp(e->e_name, domain, len) == 0) {
            /* The reference keeps the context alive after a concurrent remove. */
            if (SSL_CTX_up_ref(e->e_ctx))
                ctx = e->e_ctx;
            break;
        }
    }
    pthread_mutex_unlock(&store_lock);
    return ctx;
}

void challenge_clear(void)
{
    pthread_mutex_lock(&store_lock);
    struct entry *all = store;
    store = NULL;
    pthread_mutex_unlock(&store_lock);
    while (all) {
        struct entry *next = all->e_next;
        entry_free(all);
        all = next;
    }
}
