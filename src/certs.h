/* certs.h — the certificate store: domain -> ready SSL_CTX, read by the TLS
 * client-hello callback on the worker threads without blocking, and the
 * background thread that obtains missing certificates (from disk, or by
 * running mkcert in local mode; the ACME client plugs in here in release
 * mode). When a certificate becomes ready or fails, every subscribed loop is
 * told through loop_post() so parked handshakes can resume. */
#ifndef CORE_CERTS_H
#define CORE_CERTS_H
#include <stddef.h>
#include <openssl/ssl.h>

struct loop;

enum certs_source {
    CERTS_MKCERT,   /* local mode: CERTS_DIR/DOMAIN-cert.pem + DOMAIN-key.pem, made by mkcert */
    CERTS_ACME      /* release mode (not implemented yet) */
};

enum certs_result {
    CERTS_READY,    /* *ctx set: valid until the calling thread's next QSBR quiescent state */
    CERTS_PENDING,  /* being obtained; subscribers are told when it is done */
    CERTS_FAILED    /* the last attempt failed less than 30 s ago (it was logged);
                       the handshake should fail. The next call after that retries. */
};

/* mkcert_path: absolute path of mkcert (local mode). Creates certs_dir
 * (mode 0700) if missing and starts the background thread. CERTS_ACME is
 * refused for now. Returns 0, or -1 with err. */
int certs_init(enum certs_source src, const char *certs_dir, const char *mkcert_path,
               char *err, size_t errlen);
/* Stops the background thread and retires the store through QSBR (safe
 * while workers still run; their certs_get then returns CERTS_FAILED).
 * Call it BEFORE freeing the subscribed loops: until it returns, a
 * certificate that finishes still posts to them. Waits for a certificate
 * being made (mkcert is bounded to 60 s). */
void certs_shutdown(void);

/* Called on a worker thread (from the client-hello callback) with a
 * canonical domain that has a route. Never blocks: on a miss it queues the
 * domain for the background thread (once, however many handshakes wait). */
enum certs_result certs_get(const char *domain, size_t len, SSL_CTX **ctx);

/* Registers fn(arg) to run on loop l whenever a certificate becomes ready or
 * fails. Call once per worker loop before serving. */
void certs_subscribe(struct loop *l, void (*fn)(void *arg), void *arg);

#endif
