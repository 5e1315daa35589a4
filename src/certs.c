/* certs.c — the certificate store (domain -> SSL_CTX, an immutable snapshot
 * read lock-free) and the one background thread that fills it: from
 * CERTS_DIR, by running mkcert, or from an ACME CA (with renewal and
 * per-domain backoff), and tells the worker loops when done. Release
 * mode's per-domain records and failure ledger live in acme_state.c. */
#include "certs.h"
#include "challenge.h"
#include "clock.h"
#include "file.h"
#include "acme.h"
#include "acme_state.h"
#include "domain.h"
#include "jws.h"
#include "log.h"
#include "loop.h"
#include "mem.h"
#include "mkcert.h"
#include "qsbr.h"
#include "routes.h"
#include "sslerr.h"
#include "store.h"
#include "tls.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#define CERTS_FAIL_HOLD_MS 30000   /* after a failure, handshakes fail fast this long */
#define CERTS_TABLE_MIN    16

/* Why a snapshot and not a pthread_rwlock: certs_get runs in every TLS
 * handshake on every worker. Even a read lock is a shared cache line that
 * all workers write, and a writer (the certificate thread publishing) would
 * stall them. Snapshots are published a few times per certificate, so
 * copying the table on write is cheap, and QSBR (qsbr.h) already tells us
 * when no worker can still hold an old one: readers do one atomic load and
 * one probe, with no lock and no shared write. Only a miss takes the queue
 * mutex, which the certificate thread holds just to push or pop a name,
 * never while it works. */

/* One domain's state. Immutable once published; replaced, never changed. */
struct cert_entry {
    SSL_CTX *ctx;            /* one reference owned; NULL if never obtained */
    time_t not_after;        /* wall clock: ctx's certificate expires then */
    uint64_t failed_until;   /* CLOCK_MONOTONIC ms: FAILED until then; 0 if none */
    size_t len;
    char name[];             /* canonical domain, NUL-terminated */
};

/* Open addressing with linear probing; cap is a power of two, at most half full. */
struct cert_table {
    size_t cap;
    size_t count;
    struct cert_entry *slot[];
};

/* A domain waiting for the certificate thread. The head stays queued while
 * it is being worked on, so handshakes arriving meanwhile do not queue it
 * again. The list is short (only routed names without a certificate), so a
 * linear duplicate check is fine. */
struct pending {
    struct pending *next;
    bool renew;              /* replace a valid certificate (release mode) */
    bool reload;             /* the shared store has a new one (store.h) */
    bool woken;              /* an event for it came while it was being worked on */
    time_t until;            /* q.waiting: looked at again then at the latest */
    size_t len;
    char name[DOMAIN_MAX + 1];
};

struct subscriber {
    struct loop *l;
    void (*fn)(void *);
    void *arg;
};

static _Atomic(struct cert_table *) snapshot;   /* NULL before certs_init */

static struct {
    pthread_mutex_t mu;               /* guards everything in this struct */
    pthread_cond_t cv;                /* signalled on a new pending name or stop */
    struct pending *head, **tail;
    struct pending *waiting;          /* release mode with a shared store: names whose
                                         order waits for another node or for the store;
                                         still "queued" for certs_get, so their
                                         handshakes stay parked */
    bool stop;
    struct subscriber *subs;
    size_t nsubs;
} q = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };

/* Set by certs_init, read-only afterwards. */
static enum certs_source source;
static char *dir;
static char *mkcert_bin;
static struct acme_client *acme;       /* release mode; used by the certificate thread only */
static pthread_t thread;
static bool thread_started;
static int qsbr_id = -1;               /* the certificate thread reads routes (host policy) */
static atomic_bool stopping;           /* certs_shutdown: an order failing now was cancelled */

/* snprintf into a caller's error buffer; a long message is cut, never overrun. */
static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static uint64_t hash_name(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603u;   /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211u;
    return h;
}

/* ---- snapshot: reading ---- */

static struct cert_entry *table_find(const struct cert_table *t, const char *name, size_t len)
{
    size_t mask = t->cap - 1;
    for (size_t i = hash_name(name, len) & mask;; i = (i + 1) & mask) {
        struct cert_entry *e = t->slot[i];
        if (!e)
            return NULL;
        if (e->len == len && memcmp(e->name, name, len) == 0)
            return e;
    }
}

enum lookup { LOOKUP_READY, LOOKUP_FAILED, LOOKUP_MISS };

static enum lookup lookup(const struct cert_table *t, const char *name, size_t len, SSL_CTX **ctx)
{
    struct cert_entry *e = table_find(t, name, len);
    if (!e)
        return LOOKUP_MISS;
    if (e->ctx && time(NULL) < e->not_after) {
        *ctx = e->ctx;
        return LOOKUP_READY;
    }
    if (e->failed_until && clock_mono_ms() < e->failed_until)
        return LOOKUP_FAILED;
    return LOOKUP_MISS;   /* expired, or the failure hold is over: try again */
}

/* name's entry in the list from p on, or NULL. Under q.mu. */
static struct pending *pending_find(struct pending *p, const char *name, size_t len)
{
    for (; p; p = p->next)
        if (p->len == len && memcmp(p->name, name, len) == 0)
            return p;
    return NULL;
}

/* Queues name unless it is queued or waiting already (one job per name,
 * however many handshakes, adds and renewals ask). Returns its entry (NULL
 * for a name that cannot be one). Under q.mu. */
static struct pending *queue_locked(const char *name, size_t len, bool renew)
{
    struct pending *p = pending_find(q.head, name, len);

    if (!p)
        p = pending_find(q.waiting, name, len);
    if (p || len == 0 || len > DOMAIN_MAX)
        return p;
    p = xcalloc(1, sizeof *p);
    memcpy(p->name, name, len);
    p->len = len;
    p->renew = renew;
    *q.tail = p;
    q.tail = &p->next;
    pthread_cond_signal(&q.cv);
    return p;
}

static bool queued_locked(const char *name, size_t len)
{
    return pending_find(q.head, name, len) || pending_find(q.waiting, name, len);
}

/* Moves waiting names back to the queue: name (NULL: all of them), or only
 * those whose time is up (due_only). reload marks a new certificate in the
 * store. Under q.mu. */
static void wake_waiting_locked(const char *name, bool due_only, bool reload)
{
    time_t now = time(NULL);
    if (!due_only)
        for (struct pending *p = q.head; p; p = p->next)
            if (!name || (strlen(name) == p->len && memcmp(p->name, name, p->len) == 0)) {
                p->woken = true;
                p->reload = p->reload || reload;
            }
    for (struct pending **pp = &q.waiting; *pp;) {
        struct pending *p = *pp;
        if ((name && (strlen(name) != p->len || memcmp(p->name, name, p->len) != 0)) ||
            (due_only && p->until > now)) {
            pp = &p->next;
            continue;
        }
        *pp = p->next;
        p->next = NULL;
        p->reload = p->reload || reload;
        *q.tail = p;
        q.tail = &p->next;
        pthread_cond_signal(&q.cv);
    }
}

/* The earliest time a waiting name must be looked at again, or 0. Under q.mu. */
static bool waiting_locked(const char *name, size_t len)
{
    return pending_find(q.waiting, name, len) != NULL;
}

static time_t waiting_due_locked(void)
{
    time_t due = 0;
    for (struct pending *p = q.waiting; p; p = p->next)
        if (!due || p->until < due)
            due = p->until;
    return due;
}

enum certs_result certs_get(const char *domain, size_t len, SSL_CTX **ctx)
{
    struct cert_table *t = atomic_load_explicit(&snapshot, memory_order_acquire);
    if (!t || len == 0 || len > DOMAIN_MAX)
        return CERTS_FAILED;   /* not initialised or shut down; or not a domain */

    switch (lookup(t, domain, len, ctx)) {
    case LOOKUP_READY:
        return CERTS_READY;
    case LOOKUP_FAILED:
        return CERTS_FAILED;
    case LOOKUP_MISS:
        break;
    }

    enum certs_result r = CERTS_PENDING;
    pthread_mutex_lock(&q.mu);
    /* Look again under the lock: the certificate thread publishes before it
     * dequeues (under this lock), so a name that just became ready is seen
     * here and is not queued a second time. */
    t = atomic_load_explicit(&snapshot, memory_order_acquire);
    enum lookup again = t ? lookup(t, domain, len, ctx) : LOOKUP_FAILED;
    if (again == LOOKUP_READY) {
        r = CERTS_READY;
    } else if (again == LOOKUP_FAILED || q.stop) {
        r = CERTS_FAILED;
    } else {
        queue_locked(domain, len, false);
    }
    pthread_mutex_unlock(&q.mu);
    return r;
}

/* ---- snapshot: writing (certificate thread only) ---- */

static struct cert_table *table_new(size_t cap)
{
    struct cert_table *t = xcalloc(1, sizeof *t + cap * sizeof t->slot[0]);
    t->cap = cap;
    return t;
}

static void table_put(struct cert_table *t, struct cert_entry *e)
{
    size_t mask = t->cap - 1;
    size_t i = hash_name(e->name, e->len) & mask;
    while (t->slot[i] && !(t->slot[i]->len == e->len && memcmp(t->slot[i]->name, e->name, e->len) == 0))
        i = (i + 1) & mask;
    if (!t->slot[i])
        t->count++;
    t->slot[i] = e;
}

static void entry_free(void *p)
{
    struct cert_entry *e = p;
    SSL_CTX_free(e->ctx);
    free(e);
}

/* Publishes a new snapshot in which name maps to a new entry. On success ctx
 * (whose reference passes to the entry) is set; on failure ctx is NULL and
 * the previous certificate, if any, is kept for as long as it is valid. */
static void snapshot_publish(const char *name, size_t len, SSL_CTX *ctx, time_t not_after,
                          uint64_t failed_until)
{
    struct cert_table *old = atomic_load_explicit(&snapshot, memory_order_relaxed);
    struct cert_entry *prev = table_find(old, name, len);
    struct cert_entry *e = xcalloc(1, sizeof *e + len + 1);

    memcpy(e->name, name, len);
    e->len = len;
    e->failed_until = failed_until;
    if (ctx) {
        e->ctx = ctx;
        e->not_after = not_after;
    } else if (prev && prev->ctx) {
        SSL_CTX_up_ref(prev->ctx);
        e->ctx = prev->ctx;
        e->not_after = prev->not_after;
    }

    size_t cap = old->cap;
    if (!prev && (old->count + 1) * 2 > cap)
        cap *= 2;
    struct cert_table *t = table_new(cap);
    for (size_t i = 0; i < old->cap; i++)
        if (old->slot[i] && old->slot[i] != prev)
            table_put(t, old->slot[i]);
    table_put(t, e);

    atomic_store_explicit(&snapshot, t, memory_order_release);
    /* Workers may still be reading old and prev: free them after every
     * worker has passed a quiescent state. The other entries live on in t. */
    qsbr_retire(old, free);
    if (prev)
        qsbr_retire(prev, entry_free);
    qsbr_reclaim();
}

/* Publishes a snapshot without name's entry, if it has one (a removed
 * route); the entry's context is freed once no worker can hold it. */
static void snapshot_drop(const char *name, size_t len)
{
    struct cert_table *old = atomic_load_explicit(&snapshot, memory_order_relaxed);
    struct cert_entry *prev = table_find(old, name, len);
    if (!prev)
        return;
    struct cert_table *t = table_new(old->cap);
    for (size_t i = 0; i < old->cap; i++)
        if (old->slot[i] && old->slot[i] != prev)
            table_put(t, old->slot[i]);
    atomic_store_explicit(&snapshot, t, memory_order_release);
    qsbr_retire(old, free);
    qsbr_retire(prev, entry_free);
    qsbr_reclaim();
}

/* ---- obtaining a certificate (certificate thread only) ---- */

static time_t asn1_to_time(const ASN1_TIME *a)
{
    struct tm tm;
    if (!ASN1_TIME_to_tm(a, &tm))
        return 0;
    return timegm(&tm);
}

/* Loads the pair into a new context after checking that the key matches,
 * the certificate is valid now, and it names the domain. Returns the
 * context (and its expiry in *not_after), or NULL with the cause in err. */
static SSL_CTX *load_pair(const char *name, const char *cert_path, const char *key_path,
                          time_t *not_after, char *err, size_t errlen)
{
    char what[PATH_MAX + 32];
    SSL_CTX *ctx = tls_ctx_new(err, errlen);
    if (!ctx)
        return NULL;
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_path) != 1) {
        snprintf(what, sizeof what, "loading %s", cert_path);
        sslerr_format(err, errlen, what);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_path, SSL_FILETYPE_PEM) != 1) {
        snprintf(what, sizeof what, "loading %s", key_path);
        sslerr_format(err, errlen, what);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(what, sizeof what, "%s does not match %s", key_path, cert_path);
        sslerr_format(err, errlen, what);
        goto fail;
    }
    X509 *x = SSL_CTX_get0_certificate(ctx);
    if (X509_cmp_current_time(X509_get0_notBefore(x)) >= 0) {
        set_err(err, errlen, "%s is not valid yet", cert_path);
        goto fail;
    }
    if (X509_cmp_current_time(X509_get0_notAfter(x)) <= 0) {
        set_err(err, errlen, "%s has expired", cert_path);
        goto fail;
    }
    if (X509_check_host(x, name, strlen(name), 0, NULL) != 1) {
        set_err(err, errlen, "%s is not for %s", cert_path, name);
        goto fail;
    }
    *not_after = asn1_to_time(X509_get0_notAfter(x));
    return ctx;
fail:
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return NULL;
}

/* Runs mkcert into temporary names, then moves them into place
 * (file_rename_durable) so a crash never leaves a half-written pair: the key
 * first, so a crash between the two renames leaves a mismatched pair, which
 * the next load rejects. */
static int make_pair(const char *name, const char *cert_path, const char *key_path,
                     char *err, size_t errlen)
{
    char cert_tmp[PATH_MAX + 8], key_tmp[PATH_MAX + 8];
    int ret = -1, rc;

    snprintf(cert_tmp, sizeof cert_tmp, "%s.tmp", cert_path);
    snprintf(key_tmp, sizeof key_tmp, "%s.tmp", key_path);
    unlink(cert_tmp);   /* leftovers of a crash */
    unlink(key_tmp);
    if (mkcert_make(mkcert_bin, name, cert_tmp, key_tmp, err, errlen) < 0)
        goto out;
    if ((rc = file_rename_durable(key_tmp, key_path, err, errlen)) < 0)
        goto out;
    if (rc > 0)
        log_warn("certs %s: %s", name, err);
    if ((rc = file_rename_durable(cert_tmp, cert_path, err, errlen)) < 0)
        goto out;
    if (rc > 0)
        log_warn("certs %s: %s", name, err);
    ret = 0;
out:
    if (ret < 0) {
        unlink(cert_tmp);
        unlink(key_tmp);
    }
    return ret;
}

/* Local mode: gets name's certificate from disk, or makes one with mkcert,
 * and publishes the outcome. */
static void obtain_local(const char *name, size_t len)
{
    char cert_path[PATH_MAX], key_path[PATH_MAX], err[1024] = "";
    SSL_CTX *ctx = NULL, *unused;
    time_t not_after = 0;
    uint64_t t0 = clock_mono_ms();

    /* Queued again in a race with a publish: nothing to do. */
    if (lookup(atomic_load_explicit(&snapshot, memory_order_relaxed), name, len, &unused) == LOOKUP_READY)
        return;

    snprintf(cert_path, sizeof cert_path, "%s/%s-cert.pem", dir, name);
    snprintf(key_path, sizeof key_path, "%s/%s-key.pem", dir, name);
    if (access(cert_path, F_OK) == 0 && access(key_path, F_OK) == 0) {
        ctx = load_pair(name, cert_path, key_path, &not_after, err, sizeof err);
        if (ctx) {
            log_info("certs %s: loaded %s", name, cert_path);
        } else {
            log_info("certs %s: not using the files on disk (%s); making new ones", name, err);
        }
    }
    if (!ctx && make_pair(name, cert_path, key_path, err, sizeof err) == 0) {
        ctx = load_pair(name, cert_path, key_path, &not_after, err, sizeof err);
        if (ctx)
            log_info("certs %s: made %s with mkcert in %llu ms", name, cert_path,
                     (unsigned long long)(clock_mono_ms() - t0));
    }
    if (ctx) {
        snapshot_publish(name, len, ctx, not_after, 0);
    } else {
        log_warn("certs %s: no certificate: %s (handshakes for it fail for %d s, then it is retried)",
                 name, err, CERTS_FAIL_HOLD_MS / 1000);
        snapshot_publish(name, len, NULL, 0, clock_mono_ms() + CERTS_FAIL_HOLD_MS);
    }
}

/* ---- release mode: helpers ---- */

#define PEM_FILE_MAX  (1 << 20)   /* a DOMAIN file is a few KiB; refuse anything absurd */


/* ---- release mode: obtaining (certificate thread only) ---- */

/* Host policy, checked again on this thread before anything reaches the
 * CA: the name must still have a route. The certificate thread is a QSBR
 * reader only for the instant of this lookup. */
static bool has_route(const char *name, size_t len)
{
    qsbr_online(qsbr_id);
    bool routed = routes_lookup(routes_current(), name, len) != 0;
    qsbr_offline(qsbr_id);
    return routed;
}

/* Reads a small file whole. NULL with err; err stays "" when it does not exist. */
static char *read_pem_file(const char *path, size_t *len, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    char *buf = NULL;

    if (fd < 0) {
        if (errno != ENOENT)
            set_err(err, errlen, "opening %s: %s", path, strerror(errno));
        return NULL;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > PEM_FILE_MAX) {
        set_err(err, errlen, "%s: not a regular file of at most %d bytes", path, PEM_FILE_MAX);
        goto out;
    }
    buf = xmalloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
        if (n <= 0) {
            set_err(err, errlen, "reading %s: %s", path, n < 0 ? strerror(errno) : "short read");
            mem_wipe(buf, (size_t)st.st_size);
            free(buf);
            buf = NULL;
            goto out;
        }
        got += (size_t)n;
    }
    buf[got] = '\0';
    *len = got;
out:
    close(fd);
    return buf;
}

/* A context serving the private key and chain in pem (autocert's DOMAIN
 * file: the key, then the chain, leaf first), after checking that the key
 * matches the leaf, the leaf is valid now and names name. Returns NULL with
 * the cause (naming what) in err. */
static SSL_CTX *ctx_from_pem(const char *name, const char *what, const char *pem, size_t len,
                             time_t *not_before, time_t *not_after, char *err, size_t errlen)
{
    /* Two readers over the same bytes: PEM_read_bio_* skip blocks of other
     * types, so the key and the certificates may come in any order. */
    BIO *kb = BIO_new_mem_buf(pem, (int)len), *cb = BIO_new_mem_buf(pem, (int)len);
    EVP_PKEY *key = NULL;
    X509 *leaf = NULL, *x;
    SSL_CTX *ctx = NULL;
    char buf[PATH_MAX + 64];

    if (!kb || !cb) {
        sslerr_format(err, errlen, "BIO_new_mem_buf");
        goto fail;
    }
    if (!(key = PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL))) {
        snprintf(buf, sizeof buf, "%s: no PEM private key", what);
        sslerr_format(err, errlen, buf);
        goto fail;
    }
    if (!(leaf = PEM_read_bio_X509(cb, NULL, NULL, NULL))) {
        snprintf(buf, sizeof buf, "%s: no PEM certificate", what);
        sslerr_format(err, errlen, buf);
        goto fail;
    }
    if (!(ctx = tls_ctx_new(err, errlen)))
        goto fail;
    if (SSL_CTX_use_certificate(ctx, leaf) != 1 || SSL_CTX_use_PrivateKey(ctx, key) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(buf, sizeof buf, "%s: the key does not match the certificate", what);
        sslerr_format(err, errlen, buf);
        goto fail;
    }
    while ((x = PEM_read_bio_X509(cb, NULL, NULL, NULL))) {
        if (SSL_CTX_add0_chain_cert(ctx, x) != 1) {   /* takes x on success */
            X509_free(x);
            sslerr_format(err, errlen, "adding an intermediate certificate");
            goto fail;
        }
    }
    ERR_clear_error();   /* the end of the PEM data is reported as an error */
    if (X509_cmp_current_time(X509_get0_notBefore(leaf)) > 0) {
        set_err(err, errlen, "%s is not valid yet", what);
        goto fail;
    }
    if (X509_cmp_current_time(X509_get0_notAfter(leaf)) <= 0) {
        set_err(err, errlen, "%s has expired", what);
        goto fail;
    }
    if (X509_check_host(leaf, name, strlen(name), 0, NULL) != 1) {
        set_err(err, errlen, "%s is not for %s", what, name);
        goto fail;
    }
    *not_before = asn1_to_time(X509_get0_notBefore(leaf));
    *not_after = asn1_to_time(X509_get0_notAfter(leaf));
    X509_free(leaf);
    EVP_PKEY_free(key);
    BIO_free(kb);
    BIO_free(cb);
    return ctx;
fail:
    ERR_clear_error();
    SSL_CTX_free(ctx);
    X509_free(leaf);
    EVP_PKEY_free(key);
    BIO_free(kb);
    BIO_free(cb);
    return NULL;
}

/* Copies err into a one-line, NUL-terminated field of cap bytes (a long CA
 * error keeps its start). */
static void copy_line(char *dst, size_t cap, const char *err)
{
    size_t n = strnlen(err, cap - 1);
    memcpy(dst, err, n);
    dst[n] = '\0';
    for (char *p = dst; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
}

/* True for a validation problem that concerns the name, so that the other
 * challenge type would fail the same way (RFC 8555 section 6.7): its DNS
 * lookup failed, CAA forbids the CA, or the CA refuses the identifier. */
static bool problem_about_name(const char *type)
{
    static const char *const about_name[] = {
        "urn:ietf:params:acme:error:dns",
        "urn:ietf:params:acme:error:caa",
        "urn:ietf:params:acme:error:rejectedIdentifier",
        "urn:ietf:params:acme:error:unsupportedIdentifier",
    };
    for (size_t i = 0; i < sizeof about_name / sizeof about_name[0]; i++)
        if (strcmp(type, about_name[i]) == 0)
            return true;
    return false;
}

/* Forgets what memory holds for a domain whose route is gone: its
 * certificate leaves the store (freed through QSBR), its record loses the
 * certificate and its renewal, and is freed unless the ledger file keeps
 * something of it (failures, the challenge type that worked). The files on
 * disk stay: a later add loads them without asking the CA. */
static void forget(const char *name, size_t len);

/* ---- release mode: the shared store (store.h), certificate thread only ---- */

static char node_name[160];   /* this node in the store: HOSTNAME:HTTPS_PORT */

/* After a new certificate: certs/DOMAIN for every node, and who issued it. */
static void share_cert(const char *name, const char *pem, size_t len)
{
    char key[DOMAIN_MAX + 16], who[sizeof node_name + 32], err[512];
    if (!store_enabled())
        return;
    snprintf(key, sizeof key, "certs/%s", name);
    if (store_put(key, pem, len, err, sizeof err) < 0) {
        log_warn("certs %s: the new certificate is served here, but the store did not take it: "
                 "%s (other nodes will order their own)", name, err);
        return;
    }
    snprintf(key, sizeof key, "issued/%s", name);
    snprintf(who, sizeof who, "%s %lld", node_name, (long long)time(NULL));
    if (store_put(key, who, strlen(who), err, sizeof err) < 0)
        log_warn("certs %s: recording the issuer in the store: %s", name, err);
}

/* The domain's ledger lines go to ledger/DOMAIN (deleted when it keeps
 * nothing), so every node backs off from a name the CA refused. */
static void share_ledger(const char *name, size_t len)
{
    char key[DOMAIN_MAX + 16], err[512];
    if (!store_enabled())
        return;
    char *text;
    size_t n = acme_state_ledger_lines(name, len, &text);
    snprintf(key, sizeof key, "ledger/%s", name);
    if ((n ? store_put(key, text, n, err, sizeof err) : store_delete(key, err, sizeof err)) < 0)
        log_warn("certs %s: saving its ACME failure record in the store: %s", name, err);
    free(text);
}

/* Reads ledger/DOMAIN into the record: another node's failed orders count
 * here too. Returns -1 when the store failed. */
static int merge_ledger(const char *name)
{
    char key[DOMAIN_MAX + 16], err[512], where[DOMAIN_MAX + 40];
    char *text = NULL;
    size_t len = 0;

    snprintf(key, sizeof key, "ledger/%s", name);
    int got = store_get(key, &text, &len, err, sizeof err);
    if (got <= 0)
        return got;
    snprintf(where, sizeof where, "the store's ledger/%s", name);
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        acme_state_ledger_parse_line(where, line);
    }
    free(text);
    return 1;
}

/* The ACME account is the fleet's: before this process's first order, the
 * store's key (if any) replaces the local file, which acme.c then loads;
 * after an order, a key that the store lacks is put there (the first node
 * to put it wins; the others adopt it at their next start). */
static bool account_synced;

static void account_from_store(void)
{
    char path[PATH_MAX], err[512];
    char *pem = NULL;
    size_t len = 0;

    if (!store_enabled() || account_synced)
        return;
    if (store_get("account", &pem, &len, err, sizeof err) <= 0)
        return;
    snprintf(path, sizeof path, "%s/%s", dir, ACME_ACCOUNT_KEY_FILE);
    int rc = file_write_atomic(path, NULL, pem, len, 0600, err, sizeof err);
    if (rc < 0)
        log_warn("certs: writing the store's ACME account key to %s: %s", path, err);
    else
        log_info("certs: using the fleet's ACME account key from the store");
    account_synced = true;
    mem_wipe(pem, len);
    free(pem);
}

static void account_to_store(void)
{
    char path[PATH_MAX], err[512];
    size_t len = 0;

    if (!store_enabled() || account_synced)
        return;
    snprintf(path, sizeof path, "%s/%s", dir, ACME_ACCOUNT_KEY_FILE);
    char *pem = read_pem_file(path, &len, err, sizeof err);
    if (!pem)
        return;
    int rc = store_create("account", pem, len, NULL, NULL, err, sizeof err);
    if (rc < 0)
        log_warn("certs: sharing the ACME account key through the store: %s", err);
    else
        account_synced = true;
    mem_wipe(pem, len);
    free(pem);
}

/* certs/DOMAIN from the store, when it holds one that is valid and newer
 * than what this node serves: written to the certs dir (the cache) and
 * served. Returns 1 with *nb and *na set when it did, 0 when the store has nothing
 * better, -1 when the store failed. */
static int load_from_store(const char *name, size_t len, const char *path, time_t *nb,
                           time_t *na)
{
    char key[DOMAIN_MAX + 16], err[1024], t1[32], who[200] = "another node";
    char *pem = NULL, *issuer = NULL;
    size_t plen = 0, ilen = 0;
    time_t held;

    snprintf(key, sizeof key, "certs/%s", name);
    int got = store_get(key, &pem, &plen, err, sizeof err);
    if (got <= 0)
        return got;
    acme_state_lock();
    struct acme_record *r = acme_state_find_locked(name, len);
    held = r ? r->not_after : 0;
    acme_state_unlock();
    SSL_CTX *ctx = ctx_from_pem(name, "the store's certificate", pem, plen, nb, na, err,
                                sizeof err);
    if (!ctx || *na <= held) {
        if (!ctx)
            log_warn("certs %s: not using the store's certificate: %s", name, err);
        SSL_CTX_free(ctx);
        mem_wipe(pem, plen);
        free(pem);
        return 0;
    }
    int rc = file_write_atomic(path, NULL, pem, plen, 0600, err, sizeof err);
    if (rc < 0)
        log_warn("certs %s: serving the store's certificate, but caching it in %s failed: %s",
                 name, path, err);
    mem_wipe(pem, plen);
    free(pem);
    snprintf(key, sizeof key, "issued/%s", name);
    if (store_get(key, &issuer, &ilen, err, sizeof err) > 0) {
        snprintf(who, sizeof who, "%.*s", (int)strcspn(issuer, " "), issuer);
        free(issuer);
    }
    snapshot_publish(name, len, ctx, *na, 0);
    acme_state_record_cert(name, len, *nb, *na);
    log_info("certs %s: loaded from the store (issued by %s), valid until %s", name, who,
             clock_format_utc(*na, t1, sizeof t1));
    return 1;
}

/* The order for name waits (the store is down, or another node orders it):
 * why goes to status and, when it changes, to the log. */
static void set_waiting(const char *name, size_t len, const char *why)
{
    acme_state_lock();
    struct acme_record *r = acme_state_get_locked(name, len);
    bool changed = strcmp(r->waiting, why) != 0;
    snprintf(r->waiting, sizeof r->waiting, "%s", why);
    acme_state_unlock();
    if (changed && why[0])
        log_info("certs %s: %s", name, why);
}

/* Runs one ACME order for name and publishes the outcome: on success the
 * new certificate (saved as CERTS_DIR/DOMAIN, key then chain, 0600), on
 * failure the backoff (the certificate held, if any, keeps serving).
 * Challenge fallback: when the CA could not validate one type and another
 * is enabled, a new order with that type follows at once; only when every
 * enabled type failed does the domain back off. */
static void issue(const char *name, size_t len, const char *path)
{
    char *key_pem = NULL, *chain_pem = NULL, *pem = NULL, err[1024] = "", t1[32], t2[32];
    char all_err[1024] = "";
    SSL_CTX *ctx = NULL;
    time_t nb = 0, na = 0;
    size_t pem_len = 0;
    bool had_failures, ledger_changed = false;
    uint64_t t0 = clock_mono_ms();
    unsigned plan[2], used = 0;
    int nplan, norders = 0;
    bool every_type_failed = false;

    acme_state_lock();
    struct acme_record *r = acme_state_get_locked(name, len);
    r->working = true;
    had_failures = r->failures > 0;
    nplan = acme_state_challenge_plan(r, acme_challenges(acme), plan);
    if (had_failures && nplan == 2 && r->type_fail[0].tf_at && r->type_fail[1].tf_at) {
        /* A retry after every type failed: one order, with the type that
         * failed longest ago, so the types alternate. The first hour then
         * sees at most 5 orders (2 at once, then after 1, 5 and 21 min),
         * within Let's Encrypt's 5 failed validations per name per hour. */
        if (r->type_fail[acme_state_challenge_slot(plan[1])].tf_at <
            r->type_fail[acme_state_challenge_slot(plan[0])].tf_at)
            plan[0] = plan[1];
        nplan = 1;
    }
    acme_state_unlock();

    for (int k = 0; k < nplan; k++) {
        used = plan[k];
        log_info("certs %s: ordering a certificate from the CA (challenge %s)", name,
                 acme_challenge_name(used));
        norders++;
        if (acme_obtain_via(acme, name, used, &key_pem, &chain_pem, err, sizeof err) == 0)
            break;
        unsigned failed = acme_failed_challenge(acme);
        if (atomic_load(&stopping) || acme_gave_up(acme) || !failed)
            break;
        bool about_name = problem_about_name(acme_problem(acme));
        acme_state_lock();
        r->type_fail[acme_state_challenge_slot(failed)].tf_at = time(NULL);
        copy_line(r->type_fail[acme_state_challenge_slot(failed)].tf_err,
                  sizeof r->type_fail[0].tf_err, err);
        acme_state_unlock();
        ledger_changed = true;
        size_t off = strlen(all_err);
        /* A long pair of CA errors is cut (the return value is looked at
         * so that the compiler accepts the cut as intended). */
        if (snprintf(all_err + off, sizeof all_err - off, "%s%s failed: %s", off ? "; " : "",
                     acme_challenge_name(failed), err) < 0)
            all_err[off] = '\0';
        if (k + 1 < nplan && about_name) {
            log_warn("certs %s: challenge %s failed: %s; not trying %s: the CA's problem is with "
                     "the name, not the challenge type", name, acme_challenge_name(failed), err,
                     acme_challenge_name(plan[k + 1]));
            break;
        }
        if (k + 1 < nplan)
            log_warn("certs %s: challenge %s failed: %s; trying %s at once with a new order", name,
                     acme_challenge_name(failed), err, acme_challenge_name(plan[k + 1]));
        else if (k > 0) {
            snprintf(err, sizeof err, "%s", all_err);
            every_type_failed = true;
        }
    }
    if (key_pem && chain_pem) {
        size_t kl = strlen(key_pem), cl = strlen(chain_pem);
        pem_len = kl + cl;
        pem = xmalloc(pem_len + 1);
        memcpy(pem, key_pem, kl);
        memcpy(pem + kl, chain_pem, cl + 1);
        ctx = ctx_from_pem(name, "the CA's certificate", pem, pem_len, &nb, &na, err, sizeof err);
        int rc = ctx ? file_write_atomic(path, NULL, pem, pem_len, 0600, err, sizeof err) : 0;
        if (rc < 0)
            log_warn("certs %s: serving the new certificate, but saving it failed: %s "
                     "(it will be ordered again after a restart)", name, err);
        else if (rc > 0)
            log_warn("certs %s: %s", name, err);
        if (ctx)
            share_cert(name, pem, pem_len);
    }
    if (ctx) {
        snapshot_publish(name, len, ctx, na, 0);
        acme_state_record_cert(name, len, nb, na);
        acme_state_lock();
        r->failures = 0;
        r->last_fail = r->next_attempt = 0;
        r->last_err[0] = '\0';
        r->working = false;
        if (r->worked != used || r->type_fail[acme_state_challenge_slot(used)].tf_at)
            ledger_changed = true;
        r->worked = used;   /* tried first at renewal */
        r->type_fail[acme_state_challenge_slot(used)].tf_at = 0;
        r->type_fail[acme_state_challenge_slot(used)].tf_err[0] = '\0';
        time_t renew_at = r->renew_at;
        acme_state_unlock();
        if (had_failures || ledger_changed)
            acme_state_ledger_save();
        log_info("certs %s: certificate obtained in %llu ms through %s, valid until %s, renewal "
                 "from %s; saved to %s", name, (unsigned long long)(clock_mono_ms() - t0),
                 acme_challenge_name(used), clock_format_utc(na, t1, sizeof t1),
                 clock_format_utc(renew_at, t2, sizeof t2), path);
    } else if (atomic_load(&stopping)) {
        /* Cancelled by certs_shutdown: not the CA's failure, no backoff. */
        log_info("certs %s: order abandoned at shutdown (%s)", name, err);
        acme_state_lock();
        r->working = false;
        acme_state_unlock();
        if (ledger_changed)
            acme_state_ledger_save();
    } else if (acme_gave_up(acme)) {
        /* The route was removed while the order ran: no backoff, no retry. */
        log_info("certs %s: route removed: order stopped (%s); forgetting its certificate state",
                 name, err);
        acme_state_lock();
        r->working = false;
        acme_state_unlock();
        forget(name, len);
        acme_state_ledger_save();
    } else {
        long delay = acme_state_record_failure(name, len, err, acme_retry_after(acme));
        acme_state_lock();
        int failures = r->failures;
        r->working = false;
        acme_state_unlock();
        acme_state_ledger_save();
        log_warn("certs %s: ACME order failed (attempt %d)%s: %s; next attempt at %s (in %ld s)%s",
                 name, failures, every_type_failed ? ", every enabled challenge type failed" : "",
                 err, clock_format_utc(time(NULL) + delay, t1, sizeof t1), delay,
                 had_failures || failures > 1 ? "" : "; handshakes for it fail until then");
        snapshot_publish(name, len, NULL, 0, clock_mono_ms() + (uint64_t)delay * 1000u);
    }
    if (key_pem)
        mem_wipe(key_pem, strlen(key_pem));
    if (pem)
        mem_wipe(pem, pem_len);
    free(key_pem);
    free(chain_pem);
    free(pem);
}

/* Release mode: name's certificate from CERTS_DIR/DOMAIN when it is there,
 * valid and not due for renewal; else (or for a renewal) from the CA, unless
 * name is backing off. */
#define WAIT_STORE_S 5   /* a name waiting for the store is looked at again this often */

static time_t wait_for_store(const char *name, size_t len)
{
    set_waiting(name, len, "not ordering: the store is unreachable; waiting for it");
    return time(NULL) + WAIT_STORE_S;
}

/* True when the record holds a certificate that is not due for renewal. */
static bool holds_fresh(const char *name, size_t len, time_t now)
{
    acme_state_lock();
    struct acme_record *r = acme_state_find_locked(name, len);
    bool fresh = r && r->not_after > now && now < r->renew_at;
    acme_state_unlock();
    return fresh;
}

/* Release mode: name's certificate from CERTS_DIR/DOMAIN when it is there,
 * valid and not due for renewal; with a shared store, from the store when it
 * holds a newer one (reload: it just told us so); else (or for a renewal)
 * from the CA, unless name is backing off, and with a shared store only
 * under the name's lock. Returns 0 when done, or the time by which to look
 * again when the order waits for the store or for another node's order
 * (the caller keeps name in q.waiting; an event may wake it sooner). */
static time_t obtain_acme(const char *name, size_t len, bool renew, bool reload)
{
    char path[PATH_MAX], err[1024] = "", t1[32], why[256];
    SSL_CTX *ctx = NULL, *unused;
    time_t nb = 0, na = 0, now = time(NULL);
    bool shared = store_enabled();
    bool ready = lookup(atomic_load_explicit(&snapshot, memory_order_relaxed), name, len,
                        &unused) == LOOKUP_READY;

    if (!renew && !reload && ready)
        return 0;   /* queued again in a race with a publish */
    acme_state_lock();
    struct acme_record *r = acme_state_get_locked(name, len);
    bool no_route = !has_route(name, len);
    r->dormant = no_route;   /* a request (handshake, add) wakes it */
    acme_state_unlock();
    if (no_route) {
        if (!reload)
            log_info("certs %s: no route: not obtaining a certificate", name);
        return 0;
    }

    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (!renew && !ready) {
        size_t plen = 0;
        char *pem = read_pem_file(path, &plen, err, sizeof err);
        if (pem) {
            ctx = ctx_from_pem(name, path, pem, plen, &nb, &na, err, sizeof err);
            mem_wipe(pem, plen);
            free(pem);
        }
        if (ctx) {
            snapshot_publish(name, len, ctx, na, 0);
            acme_state_record_cert(name, len, nb, na);
            log_info("certs %s: loaded %s, valid until %s", name, path, clock_format_utc(na, t1, sizeof t1));
            if (now < acme_state_renew_time(nb, na))
                return 0;
            log_info("certs %s: it is due for renewal: renewing while it serves", name);
        } else if (err[0]) {
            log_warn("certs %s: not using %s: %s", name, path, err);
        }
    }
    if (shared) {
        int got = load_from_store(name, len, path, &nb, &na);
        if (got < 0)
            return reload || holds_fresh(name, len, now) ? 0 : wait_for_store(name, len);
        if (holds_fresh(name, len, now)) {
            set_waiting(name, len, "");
            return 0;
        }
        if (merge_ledger(name) < 0)
            return wait_for_store(name, len);
    } else if (reload) {
        return 0;
    }

    acme_state_lock();
    time_t next = r->next_attempt;
    int failures = r->failures;
    char last_err[sizeof r->last_err];
    memcpy(last_err, r->last_err, sizeof last_err);
    bool held = r->not_after > now;
    acme_state_unlock();
    if (next > now) {
        if (!held && !renew) {
            log_warn("certs %s: no certificate, and not asking the CA again before %s "
                     "(%d failed order(s), the last: %s)", name, clock_format_utc(next, t1, sizeof t1),
                     failures, last_err);
            snapshot_publish(name, len, NULL, 0, clock_mono_ms() + (uint64_t)(next - now) * 1000u);
        }
        return 0;
    }
    if (shared) {
        char holder[160];
        int locked = store_lock(name, holder, sizeof holder, err, sizeof err);
        if (locked < 0)
            return wait_for_store(name, len);
        if (locked == 0) {
            snprintf(why, sizeof why, "%s holds the order lock; waiting for its certificate",
                     holder);
            set_waiting(name, len, why);
            return time(NULL) + store_lock_ttl() + 1;   /* its lease runs out by then */
        }
        set_waiting(name, len, "");
        /* Another node may have stored one between our read and the lock. */
        if (load_from_store(name, len, path, &nb, &na) == 1 && holds_fresh(name, len, now)) {
            store_unlock(name);
            return 0;
        }
        account_from_store();
    }
    issue(name, len, path);
    if (shared) {
        account_to_store();
        share_ledger(name, len);
        store_unlock(name);
    }
    return 0;
}

static void forget(const char *name, size_t len)
{
    snapshot_drop(name, len);
    acme_state_forget(name, len);
}

/* Forgets every domain that holds certificate state but no longer has a
 * route (removed with the command): runs on the certificate thread about
 * every SWEEP_S, in both modes. The command channel tells certs only of added routes,
 * so removals are found by looking. */
#define SWEEP_S 1

/* The names sweep_removed forgets. */
struct gone_list {
    const struct cert_table *t;
    char (*gone)[DOMAIN_MAX + 1];
    size_t n, cap;
};

static void gone_add(struct gone_list *gl, const char *name, size_t len)
{
    if (gl->n == gl->cap) {
        gl->cap = gl->cap ? gl->cap * 2 : 8;
        gl->gone = xrealloc(gl->gone, gl->cap * sizeof gl->gone[0]);
    }
    memcpy(gl->gone[gl->n], name, len);
    gl->gone[gl->n++][len] = '\0';
}

/* acme_state_each_locked: a record holding a certificate whose route is
 * gone, unless it is being worked on or the snapshot has it (counted
 * already). */
static void gone_record(struct acme_record *r, void *arg)
{
    struct gone_list *gl = arg;
    size_t len = strlen(r->name);
    if (!r->not_after || r->working || has_route(r->name, len) || table_find(gl->t, r->name, len))
        return;
    gone_add(gl, r->name, len);
}

static void sweep_removed(void)
{
    struct cert_table *t = atomic_load_explicit(&snapshot, memory_order_relaxed);
    if (!routes_current())
        return;   /* no route table published (unit tests): nothing is known removed */
    struct gone_list gl = { .t = t };

    for (size_t i = 0; i < t->cap; i++)
        if (t->slot[i] && !has_route(t->slot[i]->name, t->slot[i]->len))
            gone_add(&gl, t->slot[i]->name, t->slot[i]->len);
    acme_state_lock();
    acme_state_each_locked(gone_record, &gl);
    acme_state_unlock();
    for (size_t i = 0; i < gl.n; i++) {
        log_info("certs %s: route removed: its certificate is forgotten in memory%s "
                 "(the files in %s stay, a later add serves them)", gl.gone[i],
                 source == CERTS_ACME ? ", no renewal" : "", dir);
        forget(gl.gone[i], strlen(gl.gone[i]));
    }
    free(gl.gone);
}

/* acme_client_set_abort: an order whose route was removed stops. */
static bool route_gone(const char *domain, void *arg)
{
    return !has_route(domain, strlen(domain));
}

/* ---- the certificate thread ---- */

/* acme_state_each_locked, under q.mu: queues r if it is due (*arg: now);
 * one whose route is gone goes dormant instead. */
static void queue_if_due(struct acme_record *r, void *arg)
{
    time_t now = *(const time_t *)arg;
    time_t t = acme_state_due_locked(r);
    if (!t || t > now)
        return;
    size_t len = strlen(r->name);
    if (!has_route(r->name, len)) {
        r->dormant = true;
        return;
    }
    queue_locked(r->name, len, r->not_after > now);
}

/* Queues every record that is due (renewals, retries after backoff).
 * Under q.mu; takes the records' lock after it (acme_state.h). */
static void queue_due_locked(void)
{
    time_t now = time(NULL);
    acme_state_lock();
    acme_state_each_locked(queue_if_due, &now);
    acme_state_unlock();
}

static void notify_subscribers(void)
{
    pthread_mutex_lock(&q.mu);
    for (size_t i = 0; i < q.nsubs; i++)
        loop_post(q.subs[i].l, q.subs[i].fn, q.subs[i].arg);
    pthread_mutex_unlock(&q.mu);
}

/* Waits for a queued name, or (release mode) until a renewal or retry is
 * due, or the sweep for removed routes (*sweep_at, wall clock). Under q.mu. */
static void wait_for_work_locked(time_t sweep_at)
{
    while (!q.head && !q.stop) {
        time_t due = source == CERTS_ACME ? acme_state_next_due(waiting_locked) : 0;
        time_t wdue = waiting_due_locked();
        if (time(NULL) >= sweep_at)
            return;
        if (wdue && wdue <= time(NULL)) {
            wake_waiting_locked(NULL, true, false);
            continue;
        }
        if (wdue && (!due || wdue < due))
            due = wdue;
        if (!due || due > sweep_at)
            due = sweep_at;
        if (!due) {
            pthread_cond_wait(&q.cv, &q.mu);
        } else if (due <= time(NULL)) {
            queue_due_locked();
            if (!q.head)
                continue;   /* all went dormant: next_due no longer counts them */
        } else {
            struct timespec ts = { .tv_sec = due, .tv_nsec = 0 };
            pthread_cond_timedwait(&q.cv, &q.mu, &ts);   /* CLOCK_REALTIME, as due is */
        }
    }
}

static void *cert_thread_main(void *arg)
{
    if (qsbr_id >= 0)
        qsbr_offline(qsbr_id);   /* online only inside has_route() */
    time_t sweep_at = time(NULL) + SWEEP_S;
    pthread_mutex_lock(&q.mu);
    for (;;) {
        wait_for_work_locked(sweep_at);
        if (q.stop)
            break;
        if (time(NULL) >= sweep_at) {
            pthread_mutex_unlock(&q.mu);
            sweep_removed();
            sweep_at = time(NULL) + SWEEP_S;
            pthread_mutex_lock(&q.mu);
            continue;
        }
        if (!q.head)
            continue;
        char name[DOMAIN_MAX + 1];
        size_t len = q.head->len;
        bool renew = q.head->renew, reload = q.head->reload;
        q.head->woken = false;
        memcpy(name, q.head->name, len);
        name[len] = '\0';
        pthread_mutex_unlock(&q.mu);

        /* slow: disk, mkcert, the CA; no lock held */
        time_t wait_until = 0;
        if (source == CERTS_ACME)
            wait_until = obtain_acme(name, len, renew, reload);
        else
            obtain_local(name, len);

        pthread_mutex_lock(&q.mu);
        struct pending *done = q.head;
        q.head = done->next;
        if (!q.head)
            q.tail = &q.head;
        if (wait_until && !q.stop && done->woken) {
            /* What it waited for happened while it was being worked on. */
            done->next = NULL;
            *q.tail = done;
            q.tail = &done->next;
        } else if (wait_until && !q.stop) {
            /* Still pending for certs_get (its handshakes stay parked) until
             * the store, the lock holder or the time wakes it. */
            done->until = wait_until;
            done->reload = false;
            done->next = q.waiting;
            q.waiting = done;
        } else {
            free(done);
        }
        pthread_mutex_unlock(&q.mu);
        notify_subscribers();   /* parked handshakes retry, and see the new snapshot */
        pthread_mutex_lock(&q.mu);
    }
    pthread_mutex_unlock(&q.mu);
    return NULL;
}

/* ---- setup ---- */

/* mkdir -p, the last component 0700: it will hold private keys. */
static int make_dir(const char *path, char *err, size_t errlen)
{
    char buf[PATH_MAX];
    struct stat st;

    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) {
        set_err(err, errlen, "certs dir %s: path too long", path);
        return -1;
    }
    if (file_mkdirs(buf, 0755, 0700, err, errlen) < 0)
        return -1;
    if (stat(buf, &st) < 0 || !S_ISDIR(st.st_mode)) {
        set_err(err, errlen, "certs dir %s: not a directory", buf);
        return -1;
    }
    if (access(buf, W_OK | X_OK) < 0) {
        set_err(err, errlen, "certs dir %s: %s", buf, strerror(errno));
        return -1;
    }
    return 0;
}

/* Checks and creates certs_dir. 0, or -1 with err. */
static int check_dir(const char *certs_dir, char *err, size_t errlen)
{
    if (thread_started) {
        set_err(err, errlen, "certs: already initialised");
        return -1;
    }
    /* Then "DIR/DOMAIN-cert.pem.tmp" (and autocert's "DIR/DOMAIN" with
     * file_write_atomic's temporary suffix) always fit in PATH_MAX. */
    if (strlen(certs_dir) + DOMAIN_MAX + 64 > PATH_MAX) {
        set_err(err, errlen, "certs dir %s: path too long", certs_dir);
        return -1;
    }
    return make_dir(certs_dir, err, errlen);
}

static int start_thread(char *err, size_t errlen)
{
    q.head = NULL;
    q.tail = &q.head;
    q.stop = false;
    atomic_store(&stopping, false);
    atomic_store_explicit(&snapshot, table_new(CERTS_TABLE_MIN), memory_order_release);

    int e = pthread_create(&thread, NULL, cert_thread_main, NULL);
    if (e != 0) {
        set_err(err, errlen, "certs: starting the certificate thread: %s", strerror(e));
        free(atomic_exchange(&snapshot, NULL));
        return -1;
    }
    thread_started = true;
    return 0;
}

/* Local mode, before serving: mkcert's CA must exist so the first HTTPS
 * client can verify against it (on a first run CAROOT is empty, and the
 * CA would otherwise appear only with the first certificate). Says how to
 * trust it; installing it into a trust store is left to the user. A
 * failure is logged, not fatal: each certificate then reports mkcert's
 * own error. */
static void ensure_mkcert_ca(const char *mkcert_path)
{
    char caroot[PATH_MAX], err[1024];
    int r = mkcert_ensure_ca(mkcert_path, caroot, sizeof caroot, err, sizeof err);
    if (r < 0)
        log_warn("certs: mkcert's CA: %s (local HTTPS will fail until mkcert can create it)", err);
    else if (r == 1)
        log_info("certs: created mkcert's local CA in %s: HTTPS clients verify against "
                 "%s/rootCA.pem; to make this machine's browsers trust it, run: mkcert -install "
                 "(core_server never installs it)", caroot, caroot);
    else
        log_info("certs: mkcert's CA is %s/rootCA.pem (if browsers here do not trust it yet, "
                 "run: mkcert -install)", caroot);
}

int certs_init(enum certs_source src, const char *certs_dir, const char *mkcert_path,
               char *err, size_t errlen)
{
    if (src == CERTS_ACME) {
        set_err(err, errlen, "certs: release mode starts with certs_init_acme");
        return -1;
    }
    if (!mkcert_path || !*mkcert_path) {
        set_err(err, errlen, "certs: no mkcert path given (install mkcert: apt-get install mkcert)");
        return -1;
    }
    if (check_dir(certs_dir, err, errlen) < 0)
        return -1;
    ensure_mkcert_ca(mkcert_path);
    source = src;
    dir = xstrdup(certs_dir);
    mkcert_bin = xstrdup(mkcert_path);
    if (qsbr_id < 0)
        qsbr_id = qsbr_register();   /* the sweep for removed routes reads them */
    if (start_thread(err, errlen) < 0) {
        free(dir);
        free(mkcert_bin);
        dir = mkcert_bin = NULL;
        return -1;
    }
    return 0;
}

/* store.h callbacks, on the store's watcher thread: queue work, no more. */
static void on_store_cert(const char *domain, void *arg)
{
    size_t len = strlen(domain);
    pthread_mutex_lock(&q.mu);
    if (!q.stop) {
        wake_waiting_locked(domain, false, true);   /* back in the queue, marked reload */
        struct pending *p = queue_locked(domain, len, false);
        if (p)
            p->reload = true;
    }
    pthread_mutex_unlock(&q.mu);
}

static void on_lock_released(const char *domain, void *arg)
{
    pthread_mutex_lock(&q.mu);
    wake_waiting_locked(domain, false, false);
    pthread_mutex_unlock(&q.mu);
}

static void on_store_back(void *arg)
{
    pthread_mutex_lock(&q.mu);
    wake_waiting_locked(NULL, false, false);
    pthread_mutex_unlock(&q.mu);
}

static int start_store(const struct store_options *so, char *err, size_t errlen)
{
    static const struct store_callbacks cbs = {
        .cert_changed = on_store_cert, .lock_released = on_lock_released,
        .store_back = on_store_back,
    };
    static const struct challenge_sharing sharing = {
        .put = store_put_challenge, .del = store_delete_challenge,
    };
    if (!so || !so->url || !so->url[0])
        return 0;
    snprintf(node_name, sizeof node_name, "%s", so->node ? so->node : "node");
    if (store_start(so, &cbs, err, errlen) < 0)
        return -1;
    challenge_set_sharing(&sharing);
    return 0;
}

int certs_init_acme(const char *certs_dir, const struct acme_options *opts,
                    long backoff_first, const struct store_options *so, char *err, size_t errlen)
{
    struct acme_options o = *opts;

    if (check_dir(certs_dir, err, errlen) < 0)
        return -1;
    o.certs_dir = certs_dir;
    if (!(acme = acme_client_new(&o, err, errlen)))
        return -1;
    acme_client_set_abort(acme, route_gone, NULL);
    source = CERTS_ACME;
    dir = xstrdup(certs_dir);
    acme_state_init(certs_dir, backoff_first > 0 ? backoff_first : CERTS_BACKOFF_FIRST_S,
                    acme_challenges(acme));
    if (qsbr_id < 0)
        qsbr_id = qsbr_register();   /* the thread goes offline as it starts */
    acme_state_ledger_load();
    if (start_store(so, err, errlen) < 0 || start_thread(err, errlen) < 0) {
        challenge_set_sharing(NULL);
        store_stop();
        acme_state_clear();
        acme_client_free(acme);
        acme = NULL;
        free(dir);
        dir = NULL;
        return -1;
    }
    return 0;
}

void certs_request(const char *domain, size_t len)
{
    if (!thread_started || source != CERTS_ACME)
        return;
    pthread_mutex_lock(&q.mu);
    if (!q.stop)
        queue_locked(domain, len, false);
    pthread_mutex_unlock(&q.mu);
}

size_t certs_status(const char *domain, size_t len, char *buf, size_t cap)
{
    struct acme_record r = { .name = "" };
    char t1[32], t2[32];
    time_t now = time(NULL);
    size_t n = 0;

    if (cap)
        buf[0] = '\0';
    if (!thread_started || source != CERTS_ACME || cap == 0)
        return 0;
    pthread_mutex_lock(&q.mu);
    bool queued = queued_locked(domain, len);
    pthread_mutex_unlock(&q.mu);
    acme_state_copy(domain, len, &r);

#define ADD(...) do { \
        int w_ = snprintf(buf + n, cap - n, __VA_ARGS__); \
        n = w_ < 0 ? n : (size_t)w_ >= cap - n ? cap - 1 : n + (size_t)w_; \
    } while (0)
    if (!r.not_after)
        ADD("certificate: none\n");
    else if (r.not_after <= now)
        ADD("certificate: expired at %s\n", clock_format_utc(r.not_after, t1, sizeof t1));
    else
        ADD("certificate: valid until %s\n", clock_format_utc(r.not_after, t1, sizeof t1));
    if (r.renew_at)
        ADD("renewal: %s\n", clock_format_utc(r.renew_at, t1, sizeof t1));
    else
        ADD("renewal: -\n");
    if (r.waiting[0] && queued && !r.working)
        ADD("state: waiting (%s)\n", r.waiting);
    else
        ADD("state: %s\n", r.working ? "obtaining" : queued ? "queued" :
                           r.next_attempt > now ? "backoff" : "idle");
    if (r.failures)
        ADD("last error: %s %s\n", clock_format_utc(r.last_fail, t1, sizeof t1), r.last_err);
    else
        ADD("last error: none\n");
    if (r.failures)
        ADD("next attempt: %s (after %d failed order(s))\n",
            clock_format_utc(r.next_attempt > now ? r.next_attempt : now, t2, sizeof t2), r.failures);
    else
        ADD("next attempt: -\n");
    /* The challenge fallback: the type tried first, and each enabled
     * type's last failed validation. */
    unsigned enabled = acme_challenges(acme), plan[2];
    int nplan = acme_state_challenge_plan(&r, enabled, plan);
    ADD("challenge: %s first%s\n", acme_challenge_name(plan[0]),
        r.worked & enabled ? " (it worked last)" : "");
    for (int k = 0; k < nplan; k++) {
        int slot = acme_state_challenge_slot(plan[k]);
        if (r.type_fail[slot].tf_at)
            ADD("%s last failure: %s %s\n", acme_challenge_name(plan[k]),
                clock_format_utc(r.type_fail[slot].tf_at, t1, sizeof t1), r.type_fail[slot].tf_err);
        else
            ADD("%s last failure: none\n", acme_challenge_name(plan[k]));
    }
#undef ADD
    if (n + 1 < cap) {
        char d[DOMAIN_MAX + 1];
        snprintf(d, sizeof d, "%.*s", (int)len, domain);
        n += store_status(d, buf + n, cap - n);
    }
    return n;
}

void certs_subscribe(struct loop *l, void (*fn)(void *arg), void *arg)
{
    pthread_mutex_lock(&q.mu);
    q.subs = xrealloc(q.subs, (q.nsubs + 1) * sizeof q.subs[0]);
    q.subs[q.nsubs++] = (struct subscriber){ l, fn, arg };
    pthread_mutex_unlock(&q.mu);
}

/* Safe while workers still run: the store is unpublished and retired
 * through QSBR like any old snapshot, and once this returns no loop is
 * posted to, so the subscribed loops may be freed afterwards. Waits for a
 * certificate being made (mkcert is bounded to 60 s). */
void certs_shutdown(void)
{
    if (!thread_started)
        return;
    pthread_mutex_lock(&q.mu);
    q.stop = true;
    pthread_cond_signal(&q.cv);
    pthread_mutex_unlock(&q.mu);
    atomic_store(&stopping, true);
    if (acme)
        acme_client_cancel(acme);   /* an order in flight ends within about a second */
    pthread_join(thread, NULL);
    thread_started = false;
    challenge_set_sharing(NULL);
    store_stop();   /* releases a lock still held (the order was cancelled) */
    acme_client_free(acme);
    acme = NULL;
    acme_state_clear();

    pthread_mutex_lock(&q.mu);
    while (q.head) {
        struct pending *p = q.head;
        q.head = p->next;
        free(p);
    }
    while (q.waiting) {
        struct pending *p = q.waiting;
        q.waiting = p->next;
        free(p);
    }
    q.tail = &q.head;
    free(q.subs);
    q.subs = NULL;
    q.nsubs = 0;
    pthread_mutex_unlock(&q.mu);

    struct cert_table *t = atomic_exchange(&snapshot, NULL);
    for (size_t i = 0; i < t->cap; i++)
        if (t->slot[i])
            qsbr_retire(t->slot[i], entry_free);
    qsbr_retire(t, free);
    qsbr_reclaim();
    free(dir);
    free(mkcert_bin);
    dir = mkcert_bin = NULL;
}
