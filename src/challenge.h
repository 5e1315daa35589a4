/* challenge.h — the answers to pending ACME challenges, published by the ACME
 * client (acme.c, on the certificate thread) and read by the worker threads
 * when the CA's validation request arrives: http-01 token -> key
 * authorization (RFC 8555 section 8.3), and tls-alpn-01 domain -> an SSL_CTX
 * holding the RFC 8737 challenge certificate. Owns those entries and the
 * challenge certificates; does not own sockets, routing or the decision to
 * answer (proxy.c and tls.c ask here).
 *
 * Thread-safety: every function may be called from any thread. One mutex
 * guards the store: lookups happen only when a CA validates (a handful of
 * requests per issuance), so a lock costs nothing on the request path,
 * and the lookups copy out (or up-reference) what they return. */
#ifndef CORE_CHALLENGE_H
#define CORE_CHALLENGE_H
#include <stddef.h>
#include <openssl/ssl.h>

/* ALPN protocol of tls-alpn-01, RFC 8737 section 6.2 (not length-prefixed). */
#define CHALLENGE_ALPN "acme-tls/1"

/* Publishes token -> key_authorization (replacing an entry with the same
 * token). Returns 0, or -1 with err when token is not base64url or either
 * string is too long. */
int challenge_http_add(const char *token, const char *key_authorization,
                       char *err, size_t errlen);
void challenge_http_remove(const char *token);
/* Copies the key authorization for token (the last path segment of
 * /.well-known/acme-challenge/TOKEN, len bytes, not NUL-terminated) into
 * out, NUL-terminated. Returns its length, or -1 when there is no such
 * token or cap is too small. */
int challenge_http_lookup(const char *token, size_t len, char *out, size_t cap);

/* Makes a self-signed certificate for domain (a fresh P-256 key, exactly one
 * dNSName, the critical id-pe-acmeIdentifier extension with
 * OCTET STRING(SHA-256(key_authorization))) and an SSL_CTX serving it whose
 * ALPN callback selects only "acme-tls/1"; publishes it under domain
 * (canonical form, replacing an earlier one). Returns 0, or -1 with err. */
int challenge_tls_alpn_add(const char *domain, const char *key_authorization,
                           char *err, size_t errlen);
void challenge_tls_alpn_remove(const char *domain);
/* The challenge context for domain (len bytes, canonical), up-referenced:
 * the caller passes it to SSL_set_SSL_CTX and then SSL_CTX_free()s it.
 * NULL when no tls-alpn-01 challenge is pending for domain. */
SSL_CTX *challenge_tls_alpn_ctx(const char *domain, size_t len);

/* Several machines (store.h): an answer added here by this node's ACME
 * client is also put to the shared store (put, blocking, on the certificate
 * thread; a failure fails the add), and removed from it; answers other
 * nodes put there arrive through *_learn and *_forget, which stay local.
 * Set once before the certificate thread starts; NULL: not shared. */
struct challenge_sharing {
    int (*put)(const char *type, const char *id, const char *key_authorization,
               char *err, size_t errlen);
    void (*del)(const char *type, const char *id);
};
void challenge_set_sharing(const struct challenge_sharing *sh);
int challenge_http_learn(const char *token, const char *key_authorization,
                         char *err, size_t errlen);
void challenge_http_forget(const char *token);
/* Makes the challenge certificate unless domain's entry answers the same
 * key authorization already (this node's own answer, seen again). */
int challenge_tls_alpn_learn(const char *domain, const char *key_authorization,
                             char *err, size_t errlen);
void challenge_tls_alpn_forget(const char *domain);

/* Drops every entry (at exit, or in tests). */
void challenge_clear(void);

#endif
