/* jws.h — the cryptography the ACME client needs, on OpenSSL: base64url
 * (RFC 4648 section 5, no padding), ECDSA P-256 keys (generate, load, save
 * as PEM with an atomic 0600 write), the JWK of a public key and its RFC 7638
 * thumbprint, ES256 JWS in flattened JSON serialization (RFC 7515, as RFC
 * 8555 section 6.2 wants it), and CSRs for one dNSName. Owns no state and no
 * network; does not know what ACME resources are (acme.c does).
 *
 * Keys are EVP_PKEY *; the caller frees them with EVP_PKEY_free. Strings
 * returned as char * are malloc'd (xmalloc) and freed by the caller. */
#ifndef CORE_JWS_H
#define CORE_JWS_H
#include <stddef.h>
#include <openssl/evp.h>

/* base64url of len bytes, NUL-terminated, no '=' padding. */
char *jws_b64url(const void *in, size_t len);
/* Decodes base64url (padding optional, no whitespace) into out. Returns the
 * number of bytes, or -1 when the input is not base64url or out is too small. */
long jws_b64url_decode(const char *in, size_t len, unsigned char *out, size_t cap);

/* A fresh ECDSA P-256 key, or NULL with err. */
EVP_PKEY *jws_key_generate(char *err, size_t errlen);
/* Reads a PEM private key ("EC PRIVATE KEY" as Go's autocert writes it, or
 * PKCS#8 "PRIVATE KEY") and checks that it is ECDSA P-256. Returns NULL with
 * err (naming path) on any failure. */
EVP_PKEY *jws_key_load(const char *path, char *err, size_t errlen);
/* The private key as PEM in the "EC PRIVATE KEY" (SEC 1) form that Go's
 * autocert writes and reads, so a certs dir can be shared both ways.
 * Returns NULL only on an OpenSSL failure. The caller should mem_wipe it
 * before free. */
char *jws_key_pem(EVP_PKEY *key);
/* Writes jws_key_pem(key) to path atomically (file_write_atomic), mode
 * 0600. 0; 1 when saved but the directory fsync failed (the warning in err,
 * for the caller to log); or -1 with err. */
int jws_key_save(const char *path, EVP_PKEY *key, char *err, size_t errlen);

/* The public JWK of a P-256 key as canonical JSON: members in lexicographic
 * order, no whitespace, {"crv":"P-256","kty":"EC","x":"...","y":"..."} —
 * which is exactly the RFC 7638 thumbprint input. NULL on failure. */
char *jws_jwk(EVP_PKEY *key);
/* base64url(SHA-256(jws_jwk(key))), RFC 7638. NULL on failure. */
char *jws_thumbprint(EVP_PKEY *key);

/* A flattened JWS {"protected":..,"payload":..,"signature":..} signed with
 * ES256. The protected header holds alg, nonce, url, and kid when kid is not
 * NULL, else the jwk (RFC 8555 section 6.2: jwk only for newAccount and
 * revocation by certificate key). payload "" gives the POST-as-GET body
 * (empty payload); "{}" the challenge response. NULL with err on failure. */
char *jws_sign(EVP_PKEY *key, const char *kid, const char *nonce, const char *url,
               const char *payload, char *err, size_t errlen);

/* ES256 raw signature (r||s, 32 bytes each, RFC 7518 section 3.4) of data
 * with SHA-256: OpenSSL produces DER ECDSA-Sig-Value, which is converted.
 * Returns 0, or -1 with err. Exposed for the unit test. */
int jws_es256(EVP_PKEY *key, const void *data, size_t len, unsigned char sig[64],
              char *err, size_t errlen);

/* A certificate signing request for the single dNSName domain (in the
 * subjectAltName; the subject CN is the domain too, for old tools), signed
 * by a fresh P-256 key that is returned in *key_out. *csr_b64url is the DER
 * CSR in base64url, as newOrder's finalize wants it. 0, or -1 with err. */
int jws_csr(const char *domain, EVP_PKEY **key_out, char **csr_b64url,
            char *err, size_t errlen);

#endif
