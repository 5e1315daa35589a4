/* acme.h — an RFC 8555 (ACME) client: directory, nonces, account, order,
 * authorizations, http-01 and tls-alpn-01 challenges, finalize, certificate
 * download. Talks HTTPS to the CA with libcurl and parses JSON with jansson.
 * Owns the account key file "acme_account+key" in the certs dir (the name
 * and format of Go's autocert DirCache) and the ACME state of one client.
 * Does not store certificates, schedule renewals or back off between
 * attempts (certs.c does), and does not answer validation requests: it
 * publishes the answers in challenge.h, which the servers read.
 *
 * Blocking: acme_obtain runs for as long as the CA takes (well under a
 * second against pebble; seconds against Let's Encrypt), so it belongs on
 * the certificate thread, never on an event loop. One client is used by one
 * thread at a time; acme_client_cancel is the only function safe to call
 * from another thread. */
#ifndef CORE_ACME_H
#define CORE_ACME_H
#include <stdbool.h>
#include <stddef.h>

/* Let's Encrypt's directories (--acme-directory). */
#define ACME_LETSENCRYPT_PRODUCTION "https://acme-v02.api.letsencrypt.org/directory"
#define ACME_LETSENCRYPT_STAGING    "https://acme-staging-v02.api.letsencrypt.org/directory"

/* The account key file in the certs dir, as Go's autocert names it. */
#define ACME_ACCOUNT_KEY_FILE "acme_account+key"

/* Challenge types the client may answer (bits of acme_options.challenges). */
#define ACME_CHALLENGE_HTTP01    0x1   /* answered on the http port (port 80 for a real CA) */
#define ACME_CHALLENGE_TLSALPN01 0x2   /* answered on the https port with ALPN acme-tls/1 */

struct acme_options {
    const char *directory_url;  /* required: the CA's directory */
    const char *ca_file;        /* NULL, or a PEM bundle trusted for the CA's HTTPS API
                                   in addition to the system's (a test CA) */
    const char *email;          /* NULL or "": an account without contact */
    const char *certs_dir;      /* required, existing: holds ACME_ACCOUNT_KEY_FILE */
    unsigned challenges;        /* ACME_CHALLENGE_* bits; 0 means both */
    long request_timeout_ms;    /* one HTTP request; 0: 30 s */
    long obtain_timeout_ms;     /* one whole acme_obtain; 0: 120 s */
};

struct acme_client;

/* Copies the options and sets up the HTTP client; contacts nobody yet (the
 * directory and the account are fetched by the first acme_obtain). Checks
 * that ca_file is readable. The first call initialises libcurl globally.
 * Returns NULL with err. */
struct acme_client *acme_client_new(const struct acme_options *o, char *err, size_t errlen);

/* Obtains a certificate for domain (a canonical host name, no wildcard):
 * new order, authorizations through an enabled challenge type (tls-alpn-01
 * preferred when the CA offers both), finalize with a CSR for a fresh P-256
 * key, download. On the first call also reads the directory and loads or
 * creates the account key and the account.
 *
 * Returns 0 with *key_pem (the new private key, "EC PRIVATE KEY" PEM) and
 * *chain_pem (leaf first, then intermediates, PEM), both malloc'd and freed
 * by the caller (mem_wipe the key first). The chain has been checked to
 * match the key and to name domain. Returns -1 with the cause in err: the
 * step, the URL, and for a CA refusal its problem type and detail. Every
 * step is logged. */
int acme_obtain(struct acme_client *c, const char *domain, char **key_pem, char **chain_pem,
                char *err, size_t errlen);

/* Like acme_obtain, answering only with challenge (one ACME_CHALLENGE_*
 * bit, which must be enabled; 0: any enabled type, as acme_obtain). When
 * the order fails because the CA could not validate that type (or does not
 * offer it), acme_failed_challenge says so, and the caller may try the
 * other type with a new order. The failed authorization (and any not yet
 * answered) is deactivated before this returns (RFC 8555 section 7.5.2). */
int acme_obtain_via(struct acme_client *c, const char *domain, unsigned challenge,
                    char **key_pem, char **chain_pem, char *err, size_t errlen);

/* The challenge type (ACME_CHALLENGE_*) whose validation failed in the last
 * acme_obtain; 0 when it failed for another reason (the CA unreachable or
 * refusing the order, a timeout, a cancel) or succeeded. */
unsigned acme_failed_challenge(const struct acme_client *c);

/* The problem type (RFC 8555 section 6.7) that ended the last acme_obtain:
 * the CA's refusal or, for a failed validation, the challenge's error
 * ("urn:ietf:params:acme:error:connection"); "" when there was none. */
const char *acme_problem(const struct acme_client *c);

/* The enabled ACME_CHALLENGE_* bits (acme_options.challenges, 0 -> both). */
unsigned acme_challenges(const struct acme_client *c);

/* "http-01", "tls-alpn-01", or "any enabled type" for anything else. */
const char *acme_challenge_name(unsigned bit);

/* Asked on the obtaining thread, at most every 50 ms while an order waits
 * for the CA, whether to give the order for domain up (e.g. its route was
 * removed): true ends acme_obtain soon with "cancelled", and
 * acme_gave_up is then true. */
typedef bool acme_abort_fn(const char *domain, void *arg);
void acme_client_set_abort(struct acme_client *c, acme_abort_fn *fn, void *arg);
/* The last acme_obtain ended because the abort callback said so. */
bool acme_gave_up(const struct acme_client *c);

/* Seconds the CA asked to wait (Retry-After) with the error that ended the
 * last acme_obtain, e.g. with a rateLimited problem; 0 when it did not say. */
long acme_retry_after(const struct acme_client *c);

/* Makes a running acme_obtain give up soon with "cancelled": within 10 ms
 * when it is waiting between polls, within about a second when an HTTP
 * request is under way (libcurl's progress callback). Later calls fail at
 * once. Safe from any thread, e.g. at shutdown. */
void acme_client_cancel(struct acme_client *c);

void acme_client_free(struct acme_client *c);

#endif
