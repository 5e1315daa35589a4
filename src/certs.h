/* certs.h — the certificate store: domain -> ready SSL_CTX, read by the TLS
 * client-hello callback on the worker threads without blocking, and the
 * background thread that obtains missing certificates: from disk, or by
 * running mkcert (local mode), or from an ACME CA (release mode, acme.h),
 * which it also renews ahead of expiry and backs off from when it fails.
 * When a certificate becomes ready or fails, every subscribed loop is told
 * through loop_post() so parked handshakes can resume.
 *
 * Release-mode files in the certs dir (Go autocert's DirCache layout, so a
 * certs dir is shared both ways):
 *   DOMAIN            PEM private key, then the PEM chain (leaf first), 0600
 *   acme_account+key  the ACME account key (acme.h)
 *   core_server-acme-failures.txt  per-domain failed attempts and the time
 *                     of the next one, so a restart does not reset backoff,
 *                     and the challenge type that worked and each type's
 *                     last failed validation ('@' lines), for the challenge
 *                     fallback (the '_' cannot occur in a domain, so no
 *                     DOMAIN file ever has this name).
 *
 * Challenge fallback (release mode): an order answers one challenge type;
 * when the CA cannot validate it and another type is enabled, a new order
 * with that type follows at once, and only when every enabled type failed
 * does the domain back off. The type that worked is tried first next time.
 *
 * Removed routes: the command channel reports only additions, so the
 * certificate thread looks (every second, and every 50 ms during an order)
 * for domains whose route is gone: their order stops, they are neither
 * renewed nor retried, and their certificate leaves memory; the files stay.
 *
 * Local mode: certs_init makes sure mkcert's CA exists (mkcert.h) before
 * anything is served. */
#ifndef CORE_CERTS_H
#define CORE_CERTS_H
#include <stddef.h>
#include <openssl/ssl.h>

struct loop;

enum certs_source {
    CERTS_MKCERT,   /* local mode: CERTS_DIR/DOMAIN-cert.pem + DOMAIN-key.pem, made by mkcert */
    CERTS_ACME      /* release mode: CERTS_DIR/DOMAIN (autocert layout), from an ACME CA */
};

enum certs_result {
    CERTS_READY,    /* *ctx set: valid until the calling thread's next QSBR quiescent state */
    CERTS_PENDING,  /* being obtained; subscribers are told when it is done */
    CERTS_FAILED    /* the last attempt failed (it was logged) and the hold is not
                       over: 30 s for mkcert, the ACME backoff in release mode;
                       the handshake should fail. The next call after that retries. */
};

/* Release-mode tuning (certs_init_acme). */
#define CERTS_RENEW_MAX_S     (30 * 86400)  /* renew when less than this remains, or a
                                               third of the lifetime if that is less */
#define CERTS_BACKOFF_FIRST_S 60            /* first retry after a failed order ... */
#define CERTS_BACKOFF_FACTOR  4             /* ... then x4: 1, 4, 16 min, then hourly: */
#define CERTS_BACKOFF_MAX_S   3600          /* at most 4 orders per domain in any hour */

/* mkcert_path: absolute path of mkcert (local mode). Creates certs_dir
 * (mode 0700) if missing and starts the background thread. CERTS_ACME is
 * refused here (use certs_init_acme). Returns 0, or -1 with err. */
int certs_init(enum certs_source src, const char *certs_dir, const char *mkcert_path,
               char *err, size_t errlen);

struct acme_options;
struct store_options;
/* Release mode: like certs_init, with one ACME client (acme_client_new(acme),
 * its certs_dir replaced by certs_dir) owned by the certificate thread.
 * Loads the failure record of the certs dir. backoff_first_s: the first
 * retry delay (0: CERTS_BACKOFF_FIRST_S; tests make it short). Must be
 * called after the routes are published: the thread checks the route of
 * every name before it asks the CA (host policy). store: NULL (or no url)
 * for the certs dir alone; else the shared store (store.h) is started, the
 * challenge answers are shared through it, and every order runs under the
 * name's lock in it. Returns 0, or -1 with err. */
int certs_init_acme(const char *certs_dir, const struct acme_options *acme,
                    long backoff_first_s, const struct store_options *store,
                    char *err, size_t errlen);
/* Stops the background thread (cancelling an ACME order in flight) and retires the store through QSBR (safe
 * while workers still run; their certs_get then returns CERTS_FAILED).
 * Call it BEFORE freeing the subscribed loops: until it returns, a
 * certificate that finishes still posts to them. Waits for a certificate
 * being made (mkcert is bounded to 60 s). */
void certs_shutdown(void);

/* Called on a worker thread (from the client-hello callback) with a
 * canonical domain that has a route. Never blocks: on a miss it queues the
 * domain for the background thread (once, however many handshakes wait). */
enum certs_result certs_get(const char *domain, size_t len, SSL_CTX **ctx);

/* Queues domain (canonical) for the certificate thread at once, without a
 * handshake: called when a route is added and for every route at startup,
 * so the first visitor does not wait. Shares the queue entry with
 * handshakes for the same name. A no-op before certs_init or in local mode. */
void certs_request(const char *domain, size_t len);

/* Writes domain's certificate state into buf as "key: value" lines, each
 * ending in '\n': "certificate:" (none, or valid until TIME), "renewal:",
 * "state:" (idle, queued, obtaining, backoff, waiting (WHY) with a shared store), "last error:", "next
 * attempt:" (times in UTC, RFC 3339), "challenge:" (the type tried first)
 * and "TYPE last failure:" (none, or TIME ERROR) per enabled type. Any thread. Returns the length
 * (< cap, NUL-terminated); 0 before certs_init. */
size_t certs_status(const char *domain, size_t len, char *buf, size_t cap);

/* Registers fn(arg) to run on loop l whenever a certificate becomes ready or
 * fails. Call once per worker loop before serving. */
void certs_subscribe(struct loop *l, void (*fn)(void *arg), void *arg);

#endif
