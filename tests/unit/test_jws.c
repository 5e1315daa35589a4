/* test_jws.c — base64url vectors, the RFC 7515 A.3 key's JWK and RFC 7638
 * thumbprint byte for byte, ES256 signatures verified by OpenSSL, the JWS
 * layout, key files (0600, SEC 1 PEM, atomic), and CSRs. */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "check.h"
#include "jws.h"

static void test_b64url_vectors(void)
{
    /* RFC 4648 section 10, without padding. */
    static const char *in[] = { "", "f", "fo", "foo", "foob", "fooba", "foobar" };
    static const char *want[] = { "", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy" };
    for (size_t i = 0; i < 7; i++) {
        char *got = jws_b64url(in[i], strlen(in[i]));
        CHECK_STR(got, want[i]);
        unsigned char back[16];
        long n = jws_b64url_decode(got, strlen(got), back, sizeof back);
        CHECK(n == (long)strlen(in[i]) && memcmp(back, in[i], (size_t)n) == 0);
        free(got);
    }
    /* The URL-safe alphabet: 62 and 63 are '-' and '_'. */
    unsigned char hi[] = { 0xfb, 0xff, 0xbf };
    char *got = jws_b64url(hi, sizeof hi);
    CHECK_STR(got, "-_-_");
    free(got);
    unsigned char out[8];
    CHECK(jws_b64url_decode("Zm9v+g", 6, out, sizeof out) == -1);   /* '+' is not base64url */
    CHECK(jws_b64url_decode("Z", 1, out, sizeof out) == -1);        /* no whole byte */
    CHECK(jws_b64url_decode("Zm9vYmFy", 8, out, 5) == -1);          /* out too small */
    CHECK(jws_b64url_decode("Zg==", 4, out, sizeof out) == 1 && out[0] == 'f');
}

static void hex(const char *s, unsigned char *out)
{
    for (size_t i = 0; s[2 * i]; i++)
        sscanf(s + 2 * i, "%2hhx", &out[i]);
}

/* The P-256 key of RFC 7515 appendix A.3. */
static EVP_PKEY *rfc7515_key(void)
{
    unsigned char pub[65] = { 0x04 }, d[32];
    hex("7fcdce2770f6c45d4183cbee6fdb4b7b580733357be9ef13bacf6e3c7bd15445", pub + 1);
    hex("c7f144cd1bbd9b7e872cdfedb9eeb9f4b3695d6ea90b24ad8a4623288588e5ad", pub + 33);
    hex("8e9b109e719098bf980487df1f5d77e9c2d21b62e2cc2cd9c76672a896cac70a", d);
    BIGNUM *priv = BN_bin2bn(d, sizeof d, NULL);
    OSSL_PARAM_BLD *b = OSSL_PARAM_BLD_new();
    OSSL_PARAM_BLD_push_utf8_string(b, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0);
    OSSL_PARAM_BLD_push_octet_string(b, OSSL_PKEY_PARAM_PUB_KEY, pub, sizeof pub);
    OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_PRIV_KEY, priv);
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(b);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    EVP_PKEY *key = NULL;
    if (EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_KEYPAIR, params) != 1)
        key = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(b);
    BN_free(priv);
    return key;
}

static void test_jwk_and_thumbprint_exact(void)
{
    EVP_PKEY *key = rfc7515_key();
    CHECK(key != NULL);
    if (!key)
        return;
    char *jwk = jws_jwk(key), *tp = jws_thumbprint(key);
    CHECK_STR(jwk, "{\"crv\":\"P-256\",\"kty\":\"EC\","
                   "\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\","
                   "\"y\":\"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\"}");
    /* base64url(SHA-256(jwk)), computed independently with Python's hashlib. */
    CHECK_STR(tp, "oKIywvGUpTVTyxMQ3bwIIeQUudfr_CkLMjCE19ECD-U");
    free(jwk);
    free(tp);
    EVP_PKEY_free(key);
}

/* Verifies a raw r||s ES256 signature with OpenSSL (via DER). */
static int verify_es256(EVP_PKEY *key, const char *data, size_t len, const unsigned char sig[64])
{
    ECDSA_SIG *es = ECDSA_SIG_new();
    ECDSA_SIG_set0(es, BN_bin2bn(sig, 32, NULL), BN_bin2bn(sig + 32, 32, NULL));
    unsigned char *der = NULL;
    int derlen = i2d_ECDSA_SIG(es, &der);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
             EVP_DigestVerify(md, der, (size_t)derlen, (const unsigned char *)data, len) == 1;
    EVP_MD_CTX_free(md);
    OPENSSL_free(der);
    ECDSA_SIG_free(es);
    return ok;
}

static void test_es256_signature_verifies(void)
{
    char err[256];
    EVP_PKEY *key = jws_key_generate(err, sizeof err);
    unsigned char sig[64];
    /* Many signatures: r or s with leading zero bytes must still be 32 bytes. */
    int ok = 0;
    for (int i = 0; i < 64; i++) {
        char msg[32];
        int n = snprintf(msg, sizeof msg, "message %d", i);
        if (jws_es256(key, msg, (size_t)n, sig, err, sizeof err) == 0 &&
            verify_es256(key, msg, (size_t)n, sig))
            ok++;
    }
    CHECK(ok == 64);
    sig[5] ^= 1;
    CHECK(!verify_es256(key, "message 63", 10, sig));
    EVP_PKEY_free(key);
}

static char *decode_str(const char *b64)
{
    size_t len = strlen(b64);
    unsigned char *buf = malloc(len + 1);
    long n = jws_b64url_decode(b64, len, buf, len);
    if (n < 0) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    return (char *)buf;
}

static void test_jws_layout_jwk_then_kid(void)
{
    char err[256];
    EVP_PKEY *key = jws_key_generate(err, sizeof err);
    for (int with_kid = 0; with_kid < 2; with_kid++) {
        const char *kid = with_kid ? "https://ca.test/acct/1" : NULL;
        char *jws = jws_sign(key, kid, "nonce-\"1\"", "https://ca.test/new-order",
                             with_kid ? "" : "{\"a\":1}", err, sizeof err);
        json_t *o = jws ? json_loads(jws, 0, NULL) : NULL;
        CHECK(json_object_size(o) == 3);
        const char *prot = json_string_value(json_object_get(o, "protected"));
        const char *pay = json_string_value(json_object_get(o, "payload"));
        const char *sigb = json_string_value(json_object_get(o, "signature"));
        CHECK(prot && pay && sigb);
        if (!prot || !pay || !sigb)
            continue;
        char *hdr = decode_str(prot), *payload = decode_str(pay);
        json_t *h = hdr ? json_loads(hdr, 0, NULL) : NULL;
        CHECK_STR(json_string_value(json_object_get(h, "alg")), "ES256");
        CHECK_STR(json_string_value(json_object_get(h, "nonce")), "nonce-\"1\"");
        CHECK_STR(json_string_value(json_object_get(h, "url")), "https://ca.test/new-order");
        if (with_kid) {
            CHECK_STR(json_string_value(json_object_get(h, "kid")), kid);
            CHECK(json_object_get(h, "jwk") == NULL);
            CHECK_STR(payload, "");   /* POST-as-GET: empty payload */
            CHECK_STR(pay, "");
        } else {
            CHECK(json_object_get(h, "kid") == NULL);
            CHECK_STR(json_string_value(json_object_get(json_object_get(h, "jwk"), "crv")), "P-256");
            CHECK_STR(payload, "{\"a\":1}");
        }
        unsigned char sig[64];
        CHECK(jws_b64url_decode(sigb, strlen(sigb), sig, sizeof sig) == 64);
        char input[4096];
        int n = snprintf(input, sizeof input, "%s.%s", prot, pay);
        CHECK(verify_es256(key, input, (size_t)n, sig));
        json_decref(h);
        free(hdr);
        free(payload);
        json_decref(o);
        free(jws);
    }
    EVP_PKEY_free(key);
}

static void test_key_save_is_0600_sec1_and_loads_back(void)
{
    char dir[] = "/tmp/test_jws.XXXXXX", path[256], err[512];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/acme_account+key", dir);
    EVP_PKEY *key = jws_key_generate(err, sizeof err);
    CHECK(jws_key_save(path, key, err, sizeof err) == 0);
    struct stat st;
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
    FILE *f = fopen(path, "r");
    char line[64] = "";
    CHECK(f && fgets(line, sizeof line, f));
    if (f)
        fclose(f);
    CHECK_STR(line, "-----BEGIN EC PRIVATE KEY-----\n");
    EVP_PKEY *back = jws_key_load(path, err, sizeof err);
    CHECK(back && EVP_PKEY_eq(key, back) == 1);
    char *t1 = jws_thumbprint(key), *t2 = back ? jws_thumbprint(back) : NULL;
    CHECK_STR(t1, t2);
    free(t1);
    free(t2);
    EVP_PKEY_free(back);

    /* Overwriting leaves no temporary file behind. */
    CHECK(jws_key_save(path, key, err, sizeof err) == 0);
    DIR *d = opendir(dir);
    int entries = 0;
    for (struct dirent *e; d && (e = readdir(d));)
        if (e->d_name[0] != '.')
            entries++;
    if (d)
        closedir(d);
    CHECK(entries == 1);

    /* A directory that does not exist: an error naming the file. */
    char bad[300];
    snprintf(bad, sizeof bad, "%s/missing/key", dir);
    CHECK(jws_key_save(bad, key, err, sizeof err) == -1 && strstr(err, "missing/key"));

    /* Not a key, and not a P-256 key: refused with the path in err. */
    f = fopen(path, "w");
    fputs("garbage\n", f);
    fclose(f);
    CHECK(jws_key_load(path, err, sizeof err) == NULL && strstr(err, "not a PEM private key"));
    EVP_PKEY *p384 = EVP_EC_gen("P-384");
    f = fopen(path, "w");
    PEM_write_PrivateKey(f, p384, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    CHECK(jws_key_load(path, err, sizeof err) == NULL && strstr(err, "not an ECDSA P-256 key"));
    EVP_PKEY_free(p384);
    unlink(path);
    rmdir(dir);
    EVP_PKEY_free(key);
}

static void test_csr_one_dnsname_fresh_key(void)
{
    char err[256], *csr = NULL;
    EVP_PKEY *key = NULL, *key2 = NULL;
    char *csr2 = NULL;
    CHECK(jws_csr("www.example.test", &key, &csr, err, sizeof err) == 0);
    CHECK(jws_csr("www.example.test", &key2, &csr2, err, sizeof err) == 0);
    CHECK(key && key2 && EVP_PKEY_eq(key, key2) != 1);   /* a new key every time */
    unsigned char der[2048];
    long n = csr ? jws_b64url_decode(csr, strlen(csr), der, sizeof der) : -1;
    CHECK(n > 0);
    const unsigned char *p = der;
    X509_REQ *req = n > 0 ? d2i_X509_REQ(NULL, &p, n) : NULL;
    CHECK(req != NULL);
    if (req) {
        EVP_PKEY *pub = X509_REQ_get0_pubkey(req);
        CHECK(X509_REQ_verify(req, pub) == 1);
        CHECK(EVP_PKEY_eq(pub, key) == 1);
        STACK_OF(X509_EXTENSION) *exts = X509_REQ_get_extensions(req);
        GENERAL_NAMES *gens = X509V3_get_d2i(exts, NID_subject_alt_name, NULL, NULL);
        CHECK(sk_GENERAL_NAME_num(gens) == 1);
        GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, 0);
        CHECK(g && g->type == GEN_DNS);
        if (g && g->type == GEN_DNS)
            CHECK_STR((const char *)ASN1_STRING_get0_data(g->d.dNSName), "www.example.test");
        GENERAL_NAMES_free(gens);
        sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
        X509_REQ_free(req);
    }
    free(csr);
    free(csr2);
    EVP_PKEY_free(key);
    EVP_PKEY_free(key2);
}

int main(void)
{
    test_b64url_vectors();
    test_jwk_and_thumbprint_exact();
    test_es256_signature_verifies();
    test_jws_layout_jwk_then_kid();
    test_key_save_is_0600_sec1_and_loads_back();
    test_csr_one_dnsname_fresh_key();
    return check_report("test_jws");
}
