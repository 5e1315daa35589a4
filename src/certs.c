/* certs.c — the certificate store (domain -> SSL_CTX, an immutable snapshot
 * read lock-free) and the one background thread that fills it: from
 * CERTS_DIR, or by running mkcert, and tells the worker loops when done. */
#include "certs.h"
#include "domain.h"
#include "log.h"
#include "loop.h"
#include "mem.h"
#include "mkcert.h"
#include "qsbr.h"
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
    size_t len;
    char name[DOMAIN_MAX + 1];
};

struct subscriber {
    struct loop *l;
    void (*fn)(void *);
    void *arg;
};

static _Atomic(struct cert_table *) store;   /* NULL before certs_init */

static struct {
    pthread_mutex_t mu;               /* guards everything in this struct */
    pthread_cond_t cv;                /* signalled on a new pending name or stop */
    struct pending *head, **tail;
    bool stop;
    struct subscriber *subs;
    size_t nsubs;
} q = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };

/* Set by certs_init, read-only afterwards. */
static enum certs_source source;
static char *dir;
static char *mkcert_bin;
static pthread_t thread;
static bool thread_started;

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

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
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
    if (e->failed_until && mono_ms() < e->failed_until)
        return LOOKUP_FAILED;
    return LOOKUP_MISS;   /* expired, or the failure hold is over: try again */
}

enum certs_result certs_get(const char *domain, size_t len, SSL_CTX **ctx)
{
    struct cert_table *t = atomic_load_explicit(&store, memory_order_acquire);
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
    t = atomic_load_explicit(&store, memory_order_acquire);
    enum lookup again = t ? lookup(t, domain, len, ctx) : LOOKUP_FAILED;
    if (again == LOOKUP_READY) {
        r = CERTS_READY;
    } else if (again == LOOKUP_FAILED || q.stop) {
        r = CERTS_FAILED;
    } else {
        struct pending *p;
        for (p = q.head; p; p = p->next)
            if (p->len == len && memcmp(p->name, domain, len) == 0)
                break;
        if (!p && len <= DOMAIN_MAX) {
            p = xcalloc(1, sizeof *p);
            memcpy(p->name, domain, len);
            p->len = len;
            *q.tail = p;
            q.tail = &p->next;
            pthread_cond_signal(&q.cv);
        }
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
static void store_publish(const char *name, size_t len, SSL_CTX *ctx, time_t not_after,
                          uint64_t failed_until)
{
    struct cert_table *old = atomic_load_explicit(&store, memory_order_relaxed);
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

    atomic_store_explicit(&store, t, memory_order_release);
    /* Workers may still be reading old and prev: free them after every
     * worker has passed a quiescent state. The other entries live on in t. */
    qsbr_retire(old, free);
    if (prev)
        qsbr_retire(prev, entry_free);
    qsbr_reclaim();
}

/* ---- obtaining a certificate (certificate thread only) ---- */

static void openssl_cause(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    set_err(err, errlen, "%s: %s", what, e ? buf : "unknown OpenSSL error");
    ERR_clear_error();
}

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
        openssl_cause(err, errlen, what);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_path, SSL_FILETYPE_PEM) != 1) {
        snprintf(what, sizeof what, "loading %s", key_path);
        openssl_cause(err, errlen, what);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(what, sizeof what, "%s does not match %s", key_path, cert_path);
        openssl_cause(err, errlen, what);
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

static int fsync_path(const char *path, int flags)
{
    int fd = open(path, flags | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int r = fsync(fd);
    close(fd);
    return r;
}

/* Runs mkcert into temporary names, then moves them into place so a crash
 * never leaves a half-written pair: the key first, so a crash between the
 * two renames leaves a mismatched pair, which the next load rejects. */
static int make_pair(const char *name, const char *cert_path, const char *key_path,
                     char *err, size_t errlen)
{
    char cert_tmp[PATH_MAX + 8], key_tmp[PATH_MAX + 8];
    int ret = -1;

    snprintf(cert_tmp, sizeof cert_tmp, "%s.tmp", cert_path);
    snprintf(key_tmp, sizeof key_tmp, "%s.tmp", key_path);
    unlink(cert_tmp);   /* leftovers of a crash */
    unlink(key_tmp);
    if (mkcert_make(mkcert_bin, name, cert_tmp, key_tmp, err, errlen) < 0)
        goto out;
    if (fsync_path(cert_tmp, O_RDONLY) < 0 || fsync_path(key_tmp, O_RDONLY) < 0) {
        set_err(err, errlen, "fsync %s: %s", cert_tmp, strerror(errno));
        goto out;
    }
    if (rename(key_tmp, key_path) < 0) {
        set_err(err, errlen, "rename %s to %s: %s", key_tmp, key_path, strerror(errno));
        goto out;
    }
    if (rename(cert_tmp, cert_path) < 0) {
        set_err(err, errlen, "rename %s to %s: %s", cert_tmp, cert_path, strerror(errno));
        goto out;
    }
    fsync_path(dir, O_RDONLY | O_DIRECTORY);   /* makes the renames durable */
    ret = 0;
out:
    if (ret < 0) {
        unlink(cert_tmp);
        unlink(key_tmp);
    }
    return ret;
}

/* Makes a new certificate for name into the two files, by the source
 * chosen at startup. Blocking; returns 0, or -1 with the cause in err. */
static int make_new(const char *name, const char *cert_path, const char *key_path,
                    char *err, size_t errlen)
{
    switch (source) {
    case CERTS_MKCERT:
        return make_pair(name, cert_path, key_path, err, errlen);
    case CERTS_ACME:   /* the RFC 8555 client plugs in here (issue 3) */
    default:
        set_err(err, errlen, "release mode (ACME) is not implemented yet");
        return -1;
    }
}

/* Gets name's certificate from disk, or makes one, and publishes the
 * outcome. */
static void obtain(const char *name, size_t len)
{
    char cert_path[PATH_MAX], key_path[PATH_MAX], err[1024] = "";
    SSL_CTX *ctx = NULL, *unused;
    time_t not_after = 0;
    uint64_t t0 = mono_ms();

    /* Queued again in a race with a publish: nothing to do. */
    if (lookup(atomic_load_explicit(&store, memory_order_relaxed), name, len, &unused) == LOOKUP_READY)
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
    if (!ctx && make_new(name, cert_path, key_path, err, sizeof err) == 0) {
        ctx = load_pair(name, cert_path, key_path, &not_after, err, sizeof err);
        if (ctx)
            log_info("certs %s: made %s with mkcert in %llu ms", name, cert_path,
                     (unsigned long long)(mono_ms() - t0));
    }
    if (ctx) {
        store_publish(name, len, ctx, not_after, 0);
    } else {
        log_warn("certs %s: no certificate: %s (handshakes for it fail for %d s, then it is retried)",
                 name, err, CERTS_FAIL_HOLD_MS / 1000);
        store_publish(name, len, NULL, 0, mono_ms() + CERTS_FAIL_HOLD_MS);
    }
}

static void notify_subscribers(void)
{
    pthread_mutex_lock(&q.mu);
    for (size_t i = 0; i < q.nsubs; i++)
        loop_post(q.subs[i].l, q.subs[i].fn, q.subs[i].arg);
    pthread_mutex_unlock(&q.mu);
}

static void *cert_thread_main(void *arg)
{
    pthread_mutex_lock(&q.mu);
    for (;;) {
        while (!q.head && !q.stop)
            pthread_cond_wait(&q.cv, &q.mu);
        if (q.stop)
            break;
        char name[DOMAIN_MAX + 1];
        size_t len = q.head->len;
        memcpy(name, q.head->name, len);
        name[len] = '\0';
        pthread_mutex_unlock(&q.mu);

        obtain(name, len);   /* slow: disk, mkcert; no lock held */

        pthread_mutex_lock(&q.mu);
        struct pending *done = q.head;
        q.head = done->next;
        if (!q.head)
            q.tail = &q.head;
        free(done);
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
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) < 0 && errno != EEXIST) {
            set_err(err, errlen, "creating %s: %s", buf, strerror(errno));
            return -1;
        }
        *p = '/';
    }
    if (mkdir(buf, 0700) < 0 && errno != EEXIST) {
        set_err(err, errlen, "creating certs dir %s: %s", buf, strerror(errno));
        return -1;
    }
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

int certs_init(enum certs_source src, const char *certs_dir, const char *mkcert_path,
               char *err, size_t errlen)
{
    if (thread_started) {
        set_err(err, errlen, "certs: already initialised");
        return -1;
    }
    if (src == CERTS_ACME) {
        set_err(err, errlen, "release mode (ACME) is not implemented yet (use --local)");
        return -1;
    }
    if (!mkcert_path || !*mkcert_path) {
        set_err(err, errlen, "certs: no mkcert path given (install mkcert: apt-get install mkcert)");
        return -1;
    }
    /* Then "DIR/DOMAIN-cert.pem.tmp" always fits in PATH_MAX. */
    if (strlen(certs_dir) + DOMAIN_MAX + sizeof "/-cert.pem.tmp" > PATH_MAX) {
        set_err(err, errlen, "certs dir %s: path too long", certs_dir);
        return -1;
    }
    if (make_dir(certs_dir, err, errlen) < 0)
        return -1;

    source = src;
    dir = xstrdup(certs_dir);
    mkcert_bin = xstrdup(mkcert_path);
    q.head = NULL;
    q.tail = &q.head;
    q.stop = false;
    atomic_store_explicit(&store, table_new(CERTS_TABLE_MIN), memory_order_release);

    int e = pthread_create(&thread, NULL, cert_thread_main, NULL);
    if (e != 0) {
        set_err(err, errlen, "certs: starting the certificate thread: %s", strerror(e));
        free(atomic_exchange(&store, NULL));
        free(dir);
        free(mkcert_bin);
        dir = mkcert_bin = NULL;
        return -1;
    }
    thread_started = true;
    return 0;
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
    pthread_join(thread, NULL);
    thread_started = false;

    pthread_mutex_lock(&q.mu);
    while (q.head) {
        struct pending *p = q.head;
        q.head = p->next;
        free(p);
    }
    q.tail = &q.head;
    free(q.subs);
    q.subs = NULL;
    q.nsubs = 0;
    pthread_mutex_unlock(&q.mu);

    struct cert_table *t = atomic_exchange(&store, NULL);
    for (size_t i = 0; i < t->cap; i++)
        if (t->slot[i])
            qsbr_retire(t->slot[i], entry_free);
    qsbr_retire(t, free);
    qsbr_reclaim();
    free(dir);
    free(mkcert_bin);
    dir = mkcert_bin = NULL;
}
