/* store.h — the storage seam of release mode: where the state that several
 * machines must agree on is kept. Two implementations:
 *   - the certs dir alone (the default, nothing to set up): every function
 *     below is then a no-op that says "not shared" (store_enabled() false),
 *     and certs.c keeps everything in the certs dir as it always has;
 *   - etcd (--store etcd://HOST:PORT,...; store_etcd.c over etcd.h), where
 *     the certs dir stays a cache of what the store holds, so a node
 *     restarts and serves without the store.
 *
 * What the shared store holds, under --store-prefix (default "core_server/"):
 *   account                     the ACME account key (PEM), shared by the fleet
 *   certs/DOMAIN                the DOMAIN file's bytes (key, then chain)
 *   issued/DOMAIN               "NODE UNIX_TIME": who stored certs/DOMAIN, when
 *   ledger/DOMAIN               the domain's lines of the failures ledger
 *   locks/DOMAIN                "NODE": the node ordering DOMAIN, on its lease
 *   challenges/http-01/TOKEN    key authorization of a pending http-01
 *   challenges/tls-alpn-01/DOMAIN  key authorization of a pending tls-alpn-01
 *
 * Threads: the blocking calls (get/put/lock) are made by the certificate
 * thread only. store_etcd.c runs two threads of its own: the watcher (keeps
 * every node's copy of the challenge answers, lock holders and "issued"
 * records current, and tells certs.c through the callbacks when another
 * node stored a certificate or let go of a lock), and the monitor (lease
 * keepalive while a lock is held, and a health check once a second whose
 * changes are logged once and shown in status). store_status and
 * store_healthy may be called from any thread. */
#ifndef CORE_STORE_H
#define CORE_STORE_H
#include <stdbool.h>
#include <stddef.h>

#define STORE_PREFIX_DEFAULT "core_server/"
#define STORE_LOCK_TTL_DEFAULT 10   /* seconds a dead node's lock outlives it */

struct store_options {
    const char *url;            /* "etcd://HOST:PORT[,HOST:PORT...]" */
    const char *prefix;         /* NULL: STORE_PREFIX_DEFAULT */
    const char *ca_file;        /* TLS to etcd (https) when ca_file or cert_file is set */
    const char *cert_file, *key_file;
    const char *user;           /* etcd auth: user, with the password read from password_file */
    const char *password_file;
    const char *node;           /* this node's name, in locks/ and issued/ */
    long lock_ttl_s;            /* 0: STORE_LOCK_TTL_DEFAULT */
};

/* Told by the watcher thread; each must return quickly (queue work). */
struct store_callbacks {
    void (*cert_changed)(const char *domain, void *arg);   /* another node stored DOMAIN's cert */
    void (*lock_released)(const char *domain, void *arg);  /* locks/DOMAIN is gone */
    void (*store_back)(void *arg);                          /* the store became reachable again */
    void *arg;
};

/* Checks what can be checked without reading files or contacting etcd: the
 * URL, the prefix, and the flags that go in pairs (cert and key, user and
 * password file). -1 with err starting with the flag at fault ("--store:
 * ..."), for the command line to print. */
int store_check_options(const struct store_options *o, char *err, size_t errlen);

/* Checks the options (store_check_options, and the files: -1 with err naming
 * what), makes the clients and starts the threads. Never waits for etcd:
 * an unreachable store is logged (naming the URL) and retried in the
 * background. Returns 0, or -1 with err. */
int store_start(const struct store_options *o, const struct store_callbacks *cb,
                char *err, size_t errlen);
/* Stops the threads (releasing a held lock). Safe when never started. */
void store_stop(void);

/* lock_ttl_s as started (0 when no store). */
long store_lock_ttl(void);

/* A shared store is configured (store_start succeeded). Any thread. */
bool store_enabled(void);
/* The store answered its last health check (false when none is configured). */
bool store_healthy(void);

/* The blocking calls (certificate thread). Each returns 1 (found / done),
 * 0 (absent / not done, see each), or -1 with the store's error in err. */
int store_get(const char *key, char **val, size_t *len, char *err, size_t errlen);
int store_put(const char *key, const void *val, size_t len, char *err, size_t errlen);
int store_delete(const char *key, char *err, size_t errlen);
/* Puts key unless it exists: 1 put, 0 it existed (*existing, when not NULL,
 * gets its value, malloc'd). */
int store_create(const char *key, const void *val, size_t len, char **existing, size_t *elen,
                 char *err, size_t errlen);

/* Takes locks/DOMAIN on a lease of lock_ttl_s kept alive by the monitor.
 * 1: held by us; 0: held by another node (its name in holder); -1: the
 * store failed. One lock at a time (the certificate thread orders one
 * domain at a time). */
int store_lock(const char *domain, char *holder, size_t cap, char *err, size_t errlen);
/* Releases it (revokes the lease). No-op when not held. */
void store_unlock(const char *domain);

/* Publishes a challenge answer for every node (type "http-01" with the
 * token as id, "tls-alpn-01" with the domain), and returns only once this
 * node's watcher has seen the write come back (so the other nodes' watchers
 * have had it from the same commit): 1, or -1 with err. The answer is put
 * on the held lock's lease, so it goes when the lock does. */
int store_put_challenge(const char *type, const char *id, const char *key_authorization,
                        char *err, size_t errlen);
void store_delete_challenge(const char *type, const char *id);

/* "store: ..." and, for domain (when not NULL), "lock: ..." and "issued
 * by: ..." lines, each ending in '\n'. Returns the length (< cap); 0 when
 * no store is configured. Any thread. */
size_t store_status(const char *domain, char *buf, size_t cap);

#endif
