/* jws.c — base64url, P-256 keys, JWK thumbprints, ES256 JWS and CSRs for the
 * ACME client (see jws.h). */
#include "jws.h"
#include "file.h"

#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "mem.h"
#include "sslerr.h"

#define P256_BYTES 32   /* size of a P-256 coordinate and of r and s */

/* ---------------------------------------------------------------- base64url */

static const char b64url_chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

char *jws_b64url(const void *in, size_t len)
{
    const unsigned char *p = in;
    char *out = xmalloc(len / 3 * 4 + 5), *o = out;
    size_t i = 0;

    for (; i + 3 <= len; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8 | p[i + 2];
        *o++ = b64url_chars[v >> 18 & 63];
        *o++ = b64url_chars[v >> 12 & 63];
        *o++ = b64url_chars[v >> 6 & 63];
        *o++ = b64url_chars[v & 63];
    }
    if (len - i == 1) {
        unsigned v = (unsigned)p[i] << 16;
        *o++ = b64url_chars[v >> 18 & 63];
        *o++ = b64url_chars[v >> 12 & 63];
    } else if (len - i == 2) {
        unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8;
        *o++ = b64url_chars[v >> 18 & 63];
        *o++ = b64url_chars[v >> 12 & 63];
        *o++ = b64url_chars[v >> 6 & 63];
    }
    *o = '\0';
    return out;
}

static int b64url_value(char c)
{
    const char *p = c ? strchr(b64url_chars, c) : NULL;
    return p ? (int)(p - b64url_chars) : -1;
}

long jws_b64url_decode(const char *in, size_t len, unsigned char *out, size_t cap)
{
    unsigned acc = 0;
    int bits = 0;
    size_t n = 0;

    while (len > 0 && in[len - 1] == '=')
        len--;
    if (len % 4 == 1)
        return -1;   /* one leftover character cannot encode a whole byte */
    for (size_t i = 0; i < len; i++) {
        int v = b64url_value(in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6 | (unsigned)v) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n >= cap)
                return -1;
            out[n++] = (unsigned char)(acc >> bits);
        }
    }
    return (long)n;
}

/* ---------------------------------------------------------------- keys */

EVP_PKEY *jws_key_generate(char *err, size_t errlen)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    if (!key)
        sslerr_format(err, errlen, "generating a P-256 key");
    return key;
}

static bool is_p256(EVP_PKEY *key)
{
    char group[32];
    size_t glen = 0;
    return EVP_PKEY_get_base_id(key) == EVP_PKEY_EC &&
           EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group,
                                          sizeof group, &glen) &&
           strcmp(group, "prime256v1") == 0;
}

EVP_PKEY *jws_key_load(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "open %s: %s", path, strerror(errno));
        return NULL;
    }
    EVP_PKEY *key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (!key) {
        char why[512];
        sslerr_format(why, sizeof why, "PEM_read_PrivateKey");
        snprintf(err, errlen, "%s: not a PEM private key (%s)", path, why);
        return NULL;
    }
    if (!is_p256(key)) {
        snprintf(err, errlen, "%s: not an ECDSA P-256 key (the only kind used for "
                 "ACME here; move it away to have a new one made)", path);
        EVP_PKEY_free(key);
        return NULL;
    }
    return key;
}

char *jws_key_pem(EVP_PKEY *key)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *out = NULL, *data = NULL;
    long n = 0;

    /* "Traditional" = SEC 1 "EC PRIVATE KEY", what Go's x509.MarshalECPrivateKey
     * (and so autocert's DirCache) writes. */
    if (b && PEM_write_bio_PrivateKey_traditional(b, key, NULL, NULL, 0, NULL, NULL) &&
        (n = BIO_get_mem_data(b, &data)) > 0) {
        out = xmalloc((size_t)n + 1);
        memcpy(out, data, (size_t)n);
        out[n] = '\0';
        /* The memory BIO held the key too: clear it before it is freed. */
        mem_wipe(data, (size_t)n);
    }
    BIO_free(b);
    ERR_clear_error();
    return out;
}

int jws_key_save(const char *path, EVP_PKEY *key, char *err, size_t errlen)
{
    char *pem = jws_key_pem(key);
    if (!pem) {
        snprintf(err, errlen, "%s: encoding the key as PEM failed", path);
        return -1;
    }
    size_t len = strlen(pem);
    int rc = file_write_atomic(path, NULL, pem, len, 0600, err, errlen);
    mem_wipe(pem, len);
    free(pem);
    return rc;
}

/* ---------------------------------------------------------------- JWK */

/* x and y of the public point, each left-padded to 32 bytes (RFC 7518
 * section 6.2.1.2: "the full coordinate", leading zeros kept). */
static int public_xy(EVP_PKEY *key, unsigned char x[P256_BYTES], unsigned char y[P256_BYTES])
{
    BIGNUM *bx = NULL, *by = NULL;
    int rc = -1;
    if (EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_PUB_X, &bx) &&
        EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_PUB_Y, &by) &&
        BN_bn2binpad(bx, x, P256_BYTES) == P256_BYTES &&
        BN_bn2binpad(by, y, P256_BYTES) == P256_BYTES)
        rc = 0;
    BN_free(bx);
    BN_free(by);
    ERR_clear_error();
    return rc;
}

char *jws_jwk(EVP_PKEY *key)
{
    unsigned char x[P256_BYTES], y[P256_BYTES];
    if (public_xy(key, x, y) < 0)
        return NULL;
    char *bx = jws_b64url(x, sizeof x), *by = jws_b64url(y, sizeof y);
    size_t cap = strlen(bx) + strlen(by) + 64;
    char *out = xmalloc(cap);
    /* RFC 7638 section 3.2: required members only, sorted, no whitespace. */
    snprintf(out, cap, "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"%s\",\"y\":\"%s\"}", bx, by);
    free(bx);
    free(by);
    return out;
}

char *jws_thumbprint(EVP_PKEY *key)
{
    unsigned char md[32];
    char *jwk = jws_jwk(key);
    if (!jwk)
        return NULL;
    SHA256((const unsigned char *)jwk, strlen(jwk), md);
    free(jwk);
    return jws_b64url(md, sizeof md);
}

/* ---------------------------------------------------------------- JWS */

int jws_es256(EVP_PKEY *key, const void *data, size_t len, unsigned char sig[64],
              char *err, size_t errlen)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char der[80];   /* DER ECDSA-Sig-Value for P-256 is at most 72 bytes */
    size_t derlen = sizeof der;
    ECDSA_SIG *es = NULL;
    int rc = -1;

    if (!md || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) != 1 ||
        EVP_DigestSign(md, der, &derlen, data, len) != 1) {
        sslerr_format(err, errlen, "ES256 signing");
        goto out;
    }
    /* JWS wants r||s as two fixed 32-byte big-endian integers, not DER. */
    const unsigned char *p = der;
    es = d2i_ECDSA_SIG(NULL, &p, (long)derlen);
    if (!es || BN_bn2binpad(ECDSA_SIG_get0_r(es), sig, P256_BYTES) != P256_BYTES ||
        BN_bn2binpad(ECDSA_SIG_get0_s(es), sig + P256_BYTES, P256_BYTES) != P256_BYTES) {
        sslerr_format(err, errlen, "converting the ECDSA signature to r||s");
        goto out;
    }
    rc = 0;
out:
    ECDSA_SIG_free(es);
    EVP_MD_CTX_free(md);
    return rc;
}

char *jws_sign(EVP_PKEY *key, const char *kid, const char *nonce, const char *url,
               const char *payload, char *err, size_t errlen)
{
    json_t *hdr = json_pack("{s:s, s:s, s:s}", "alg", "ES256", "nonce", nonce, "url", url);
    char *hdr_json = NULL, *phdr = NULL, *ppay = NULL, *psig = NULL, *input = NULL;
    char *out = NULL;
    unsigned char sig[64];

    if (!hdr) {
        snprintf(err, errlen, "building the JWS header failed (nonce or url not UTF-8?)");
        goto out;
    }
    if (kid) {
        json_object_set_new(hdr, "kid", json_string(kid));
    } else {
        char *jwk = jws_jwk(key);
        json_t *j = jwk ? json_loads(jwk, 0, NULL) : NULL;
        free(jwk);
        if (!j) {
            snprintf(err, errlen, "encoding the account key as a JWK failed");
            goto out;
        }
        json_object_set_new(hdr, "jwk", j);
    }
    hdr_json = json_dumps(hdr, JSON_COMPACT);
    phdr = jws_b64url(hdr_json, strlen(hdr_json));
    ppay = jws_b64url(payload, strlen(payload));
    /* RFC 7515 section 5.1: the signing input is ASCII(protected "." payload). */
    size_t ilen = strlen(phdr) + 1 + strlen(ppay);
    input = xmalloc(ilen + 1);
    snprintf(input, ilen + 1, "%s.%s", phdr, ppay);
    if (jws_es256(key, input, ilen, sig, err, errlen) < 0)
        goto out;
    psig = jws_b64url(sig, sizeof sig);
    size_t olen = strlen(phdr) + strlen(ppay) + strlen(psig) + 64;
    out = xmalloc(olen);
    snprintf(out, olen, "{\"protected\":\"%s\",\"payload\":\"%s\",\"signature\":\"%s\"}",
             phdr, ppay, psig);
out:
    free(psig);
    free(input);
    free(ppay);
    free(phdr);
    free(hdr_json);   /* jansson uses malloc by default */
    json_decref(hdr);
    return out;
}

/* ---------------------------------------------------------------- CSR */

int jws_csr(const char *domain, EVP_PKEY **key_out, char **csr_b64url,
            char *err, size_t errlen)
{
    X509_REQ *req = X509_REQ_new();
    X509_NAME *name = X509_NAME_new();
    STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
    EVP_PKEY *key = NULL;
    unsigned char *der = NULL;
    char san[300];
    int rc = -1, derlen;

    *key_out = NULL;
    *csr_b64url = NULL;
    if (snprintf(san, sizeof san, "DNS:%s", domain) >= (int)sizeof san) {
        snprintf(err, errlen, "CSR for %s: name too long", domain);
        goto out;
    }
    /* The certificate key is never the account key (RFC 8555 section 11.1:
     * the CA must reject that), so every certificate gets its own. */
    if (!(key = jws_key_generate(err, errlen)))
        goto out;
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, san);
    if (!req || !name || !exts || !ext || !sk_X509_EXTENSION_push(exts, ext)) {
        X509_EXTENSION_free(ext);
        sslerr_format(err, errlen, "building the CSR");
        goto out;
    }
    /* A 64-character CN limit (RFC 5280 ub-common-name): longer names go in
     * the SAN only, which is all the CA reads anyway. */
    if (strlen(domain) <= 64 &&
        !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)domain,
                                    -1, -1, 0)) {
        sslerr_format(err, errlen, "CSR subject");
        goto out;
    }
    if (!X509_REQ_set_version(req, 0) || !X509_REQ_set_subject_name(req, name) ||
        !X509_REQ_set_pubkey(req, key) || !X509_REQ_add_extensions(req, exts) ||
        !X509_REQ_sign(req, key, EVP_sha256())) {
        sslerr_format(err, errlen, "signing the CSR");
        goto out;
    }
    if ((derlen = i2d_X509_REQ(req, &der)) <= 0) {
        sslerr_format(err, errlen, "encoding the CSR");
        goto out;
    }
    *csr_b64url = jws_b64url(der, (size_t)derlen);
    *key_out = key;
    key = NULL;
    rc = 0;
out:
    OPENSSL_free(der);
    EVP_PKEY_free(key);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_NAME_free(name);
    X509_REQ_free(req);
    return rc;
}
