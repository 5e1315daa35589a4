/* store_etcd.c — store.h over etcd (etcd.h): the blocking calls of the
 * certificate thread, the watcher that keeps this node's copy of the
 * challenge answers, lock holders and "issued" records, and the monitor
 * that keeps a held lock's lease alive and checks the store's health. With
 * no store configured every call is a no-op (store_enabled() false). */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "challenge.h"
#include "clock.h"
#include "domain.h"
#include "etcd.h"
#include "log.h"
#include "mem.h"

#define PREFIX_MAX      200
#define KEY_MAX         (PREFIX_MAX + 32 + DOMAIN_MAX + 300)
#define NODE_MAX        128
#define PASSWORD_MAX    1024
#define WATCH_IDLE_MS   30000   /* a silent watch is re-read this often (safety net) */
#define MONITOR_MS      1000    /* health check / keepalive period */
#define ECHO_WAIT_MS    2000    /* store_put_challenge waits this long for its echo */
#define RETRY_MS        500     /* a broken watch is opened again after this */

/* One domain's line in the watcher's tables (locks/ and issued/). */
struct note {
    char domain[DOMAIN_MAX + 1];
    char text[NODE_MAX + 32];   /* locks: "NODE"; issued: "NODE UNIX_TIME" */
    int64_t rev;                /* certs/: the mod_revision last reported */
};

struct table {
    struct note *v;
    size_t n;
};

static struct {
    bool enabled;                   /* set by store_start, read-only afterwards */
    char url[512];
    char prefix[PREFIX_MAX + 1];
    char node[NODE_MAX + 1];
    long ttl_s;
    struct store_callbacks cb;
    struct etcd_client *cli;        /* the certificate thread's */
    struct etcd_client *wcli;       /* the watcher's */
    struct etcd_client *mcli;       /* the monitor's */
    pthread_t watcher, monitor;
    bool threads;
    atomic_bool stop;

    pthread_mutex_t mu;             /* guards everything below */
    pthread_cond_t cv;              /* applied_rev grew, or stop (CLOCK_MONOTONIC) */
    int64_t applied_rev;            /* the watcher has applied every event up to here */
    int health;                     /* -1 not known yet, 0 unreachable, 1 healthy */
    time_t health_since;
    char health_err[512];
    int64_t lease;                  /* the held lock's lease; 0: none */
    char lock_domain[DOMAIN_MAX + 1];
    struct table locks, issued, certs;
} S = { .mu = PTHREAD_MUTEX_INITIALIZER, .health = -1 };

/* ---- small helpers ---- */

static void key_of(char *out, size_t cap, const char *rel)
{
    snprintf(out, cap, "%s%s", S.prefix, rel);
}

/* The part of a full key after the prefix and dir ("certs/"), or NULL. */
static const char *under(const char *key, const char *dir)
{
    size_t pl = strlen(S.prefix), dl = strlen(dir);
    if (strncmp(key, S.prefix, pl) != 0 || strncmp(key + pl, dir, dl) != 0)
        return NULL;
    return key + pl + dl;
}

static struct note *table_find(struct table *t, const char *domain)
{
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->v[i].domain, domain) == 0)
            return &t->v[i];
    return NULL;
}

/* Under S.mu. */
static struct note *table_put(struct table *t, const char *domain, const char *text, size_t len)
{
    struct note *n = table_find(t, domain);
    if (!n) {
        t->v = xrealloc(t->v, (t->n + 1) * sizeof t->v[0]);
        n = &t->v[t->n++];
        memset(n, 0, sizeof *n);
        snprintf(n->domain, sizeof n->domain, "%s", domain);
    }
    if (len >= sizeof n->text)
        len = sizeof n->text - 1;
    memcpy(n->text, text, len);
    n->text[len] = '\0';
    return n;
}

/* Under S.mu. */
static void table_del(struct table *t, const char *domain)
{
    struct note *n = table_find(t, domain);
    if (n)
        *n = t->v[--t->n];
}

static void table_clear(struct table *t)
{
    free(t->v);
    t->v = NULL;
    t->n = 0;
}


/* Sleeps ms, waking early at stop. */
static void nap(long ms)
{
    struct timespec ts = clock_deadline_ms(ms);
    pthread_mutex_lock(&S.mu);
    while (!atomic_load(&S.stop) &&
           pthread_cond_timedwait(&S.cv, &S.mu, &ts) != ETIMEDOUT)
        ;
    pthread_mutex_unlock(&S.mu);
}

/* Records the outcome of a call to the store; a change is logged once. */
static void set_health(bool ok, const char *cause)
{
    bool back = false;
    char t[32];
    pthread_mutex_lock(&S.mu);
    int was = S.health;
    if (was < 0 || ok != (was == 1)) {
        S.health = ok;
        S.health_since = time(NULL);
        snprintf(S.health_err, sizeof S.health_err, "%s", ok ? "" : cause);
        if (ok)
            log_info("store %s: reachable (%s)%s", S.url, clock_format_utc(S.health_since, t, sizeof t),
                     was == 0 ? "; pending certificate work resumes" : "");
        else
            log_warn("store %s: unreachable: %s; serving the certificates held (memory, %s), "
                     "ordering nothing until the store is back", S.url, cause,
                     "the certs dir");
        back = ok && was == 0;
    } else if (!ok) {
        snprintf(S.health_err, sizeof S.health_err, "%s", cause);
    }
    pthread_mutex_unlock(&S.mu);
    if (back && S.cb.store_back)
        S.cb.store_back(S.cb.arg);
}

/* ---- the watcher ---- */

/* Applies one key's new value (or its deletion: val NULL). Called on the
 * watcher thread for the first read and for every event after it. */
static void apply(const char *key, const char *val, size_t len, int64_t rev)
{
    const char *rest;

    if ((rest = under(key, "challenges/http-01/"))) {
        char err[256];
        if (val && challenge_http_learn(rest, val, err, sizeof err) < 0)
            log_warn("store: the http-01 answer for token %s from the store: %s", rest, err);
        else if (!val)
            challenge_http_forget(rest);
    } else if ((rest = under(key, "challenges/tls-alpn-01/"))) {
        if (val) {
            char err[256];
            if (challenge_tls_alpn_learn(rest, val, err, sizeof err) < 0)
                log_warn("store: the tls-alpn-01 answer for %s from the store: %s", rest, err);
        } else {
            challenge_tls_alpn_forget(rest);
        }
    } else if ((rest = under(key, "locks/"))) {
        pthread_mutex_lock(&S.mu);
        if (val)
            table_put(&S.locks, rest, val, len);
        else
            table_del(&S.locks, rest);
        pthread_mutex_unlock(&S.mu);
        if (!val && S.cb.lock_released)
            S.cb.lock_released(rest, S.cb.arg);
    } else if ((rest = under(key, "issued/"))) {
        pthread_mutex_lock(&S.mu);
        if (val)
            table_put(&S.issued, rest, val, len);
        else
            table_del(&S.issued, rest);
        pthread_mutex_unlock(&S.mu);
    } else if ((rest = under(key, "certs/"))) {
        bool changed = false;
        pthread_mutex_lock(&S.mu);
        struct note *n = table_find(&S.certs, rest);
        if (val && (!n || n->rev != rev)) {
            n = table_put(&S.certs, rest, "", 0);
            n->rev = rev;
            changed = true;
        } else if (!val) {
            table_del(&S.certs, rest);
        }
        pthread_mutex_unlock(&S.mu);
        if (changed && S.cb.cert_changed)
            S.cb.cert_changed(rest, S.cb.arg);
    }
}

static void advance(int64_t rev)
{
    pthread_mutex_lock(&S.mu);
    if (rev > S.applied_rev)
        S.applied_rev = rev;
    pthread_cond_broadcast(&S.cv);
    pthread_mutex_unlock(&S.mu);
}

static bool on_event(void *arg, const struct etcd_event *ev)
{
    const struct etcd_kv *kv = ev->kv;
    apply(kv->key, ev->type == ETCD_EVENT_PUT ? kv->value : NULL, kv->value_len,
          kv->mod_revision);
    advance(kv->mod_revision);
    return !atomic_load(&S.stop);
}

/* Reads the whole prefix, applies it (and forgets what is gone), and
 * returns the revision to watch after. -1 with err on failure. */
static int64_t resync(char *err, size_t errlen)
{
    struct etcd_kv *kvs = NULL;
    size_t n = 0;
    int64_t rev = 0;

    if (etcd_get_prefix(S.wcli, S.prefix, &kvs, &n, &rev, err, errlen) < 0)
        return -1;
    /* Locks and issued records not in the read are gone. */
    pthread_mutex_lock(&S.mu);
    struct table old_locks = S.locks;
    S.locks = (struct table){ 0 };
    table_clear(&S.issued);
    pthread_mutex_unlock(&S.mu);
    for (size_t i = 0; i < n; i++)
        apply(kvs[i].key, kvs[i].value, kvs[i].value_len, kvs[i].mod_revision);
    for (size_t i = 0; i < old_locks.n; i++) {
        pthread_mutex_lock(&S.mu);
        bool still = table_find(&S.locks, old_locks.v[i].domain) != NULL;
        pthread_mutex_unlock(&S.mu);
        if (!still && S.cb.lock_released)
            S.cb.lock_released(old_locks.v[i].domain, S.cb.arg);
    }
    table_clear(&old_locks);
    etcd_kvs_free(kvs, n);
    advance(rev);
    return rev;
}

static void *watcher_main(void *arg)
{
    char err[512];
    bool logged = false;

    while (!atomic_load(&S.stop)) {
        int64_t rev = resync(err, sizeof err);
        if (rev < 0) {
            if (!logged)
                log_debug("store %s: reading %s: %s", S.url, S.prefix, err);
            logged = true;
            nap(RETRY_MS);
            continue;
        }
        logged = false;
        int64_t last = rev;
        if (etcd_watch(S.wcli, S.prefix, rev + 1, WATCH_IDLE_MS, on_event, NULL, &last, err,
                       sizeof err) < 0 && !atomic_load(&S.stop)) {
            log_debug("store %s: watch ended: %s; reading the prefix again", S.url, err);
            nap(RETRY_MS / 5);
        }
    }
    return NULL;
}

/* ---- the monitor ---- */

static void *monitor_main(void *arg)
{
    char err[512];
    uint64_t last_keepalive = 0;

    while (!atomic_load(&S.stop)) {
        pthread_mutex_lock(&S.mu);
        int64_t lease = S.lease;
        pthread_mutex_unlock(&S.mu);
        uint64_t now = clock_mono_ms();
        int rc;
        if (lease && now - last_keepalive >= (uint64_t)S.ttl_s * 1000 / 3) {
            long left = 0;
            rc = etcd_lease_keepalive(S.mcli, lease, &left, err, sizeof err);
            last_keepalive = now;
            if (rc == 0 && left == 0) {
                pthread_mutex_lock(&S.mu);
                if (S.lease == lease) {
                    log_warn("store: the lock on %s was lost (its lease expired); another node "
                             "may order it now", S.lock_domain);
                    S.lease = 0;
                }
                pthread_mutex_unlock(&S.mu);
            }
        } else {
            struct etcd_kv kv = { 0 };
            bool found = false;
            char key[KEY_MAX];
            key_of(key, sizeof key, "health");
            rc = etcd_get(S.mcli, key, &kv, &found, err, sizeof err);
            etcd_kv_clear(&kv);
        }
        set_health(rc == 0, err);
        nap(MONITOR_MS);
    }
    return NULL;
}

/* ---- setup ---- */

static int read_password(const char *path, char *out, size_t cap, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "--store-password-file %s: %s", path, strerror(errno));
        return -1;
    }
    ssize_t n = read(fd, out, cap - 1);
    close(fd);
    if (n < 0) {
        snprintf(err, errlen, "--store-password-file %s: %s", path, strerror(errno));
        return -1;
    }
    out[n] = '\0';
    out[strcspn(out, "\r\n")] = '\0';
    if (!out[0]) {
        snprintf(err, errlen, "--store-password-file %s: empty (write the etcd user's password "
                 "on its first line)", path);
        return -1;
    }
    return 0;
}

/* A --store-prefix: 1 to PREFIX_MAX printable characters without spaces,
 * ending in '/'. */
static bool prefix_ok(const char *p)
{
    size_t n = strlen(p);
    if (n == 0 || n > PREFIX_MAX || p[n - 1] != '/')
        return false;
    for (const char *c = p; *c; c++)
        if ((unsigned char)*c <= ' ' || (unsigned char)*c >= 0x7f)
            return false;
    return true;
}

int store_check_options(const struct store_options *o, char *err, size_t errlen)
{
    char endpoints[512], why[400];

    if (etcd_parse_url(o->url, endpoints, sizeof endpoints, why, sizeof why) < 0) {
        snprintf(err, errlen, "--store: %s", why);
        return -1;
    }
    if (o->prefix && !prefix_ok(o->prefix)) {
        snprintf(err, errlen, "--store-prefix: must be 1 to %d printable characters without "
                 "spaces, ending in '/' (e.g. core_server/)", PREFIX_MAX);
        return -1;
    }
    if ((o->cert_file != NULL) != (o->key_file != NULL)) {
        snprintf(err, errlen, "%s: --store-cert and --store-key go together (the client "
                 "certificate and its private key)", o->cert_file ? "--store-cert" : "--store-key");
        return -1;
    }
    if ((o->user != NULL) != (o->password_file != NULL)) {
        snprintf(err, errlen, "%s: --store-user USER and --store-password-file FILE go "
                 "together", o->user ? "--store-user" : "--store-password-file");
        return -1;
    }
    return 0;
}

int store_start(const struct store_options *o, const struct store_callbacks *cb,
                char *err, size_t errlen)
{
    char endpoints[512], password[PASSWORD_MAX] = "";
    const char *prefix = o->prefix ? o->prefix : STORE_PREFIX_DEFAULT;

    if (store_check_options(o, err, errlen) < 0 ||
        etcd_parse_url(o->url, endpoints, sizeof endpoints, err, errlen) < 0)
        return -1;
    if (o->user && read_password(o->password_file, password, sizeof password, err, errlen) < 0)
        return -1;
    struct etcd_options eo = {
        .endpoints = endpoints, .ca_file = o->ca_file, .cert_file = o->cert_file,
        .key_file = o->key_file, .user = o->user, .password = o->user ? password : NULL,
        .timeout_ms = 2000,
    };
    if (!(S.cli = etcd_client_new(&eo, err, errlen)) ||
        !(S.wcli = etcd_client_new(&eo, err, errlen)) ||
        !(S.mcli = etcd_client_new(&eo, err, errlen))) {
        mem_wipe(password, sizeof password);
        store_stop();
        return -1;
    }
    mem_wipe(password, sizeof password);
    snprintf(S.url, sizeof S.url, "%s", o->url);
    snprintf(S.prefix, sizeof S.prefix, "%s", prefix);
    snprintf(S.node, sizeof S.node, "%s", o->node ? o->node : "node");
    S.ttl_s = o->lock_ttl_s > 0 ? o->lock_ttl_s : STORE_LOCK_TTL_DEFAULT;
    if (cb)
        S.cb = *cb;
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&S.cv, &a);
    pthread_condattr_destroy(&a);
    atomic_store(&S.stop, false);
    S.enabled = true;
    if (pthread_create(&S.watcher, NULL, watcher_main, NULL) != 0) {
        snprintf(err, errlen, "starting the store's watcher thread: %s", strerror(errno));
        S.enabled = false;
        store_stop();
        return -1;
    }
    if (pthread_create(&S.monitor, NULL, monitor_main, NULL) != 0) {
        snprintf(err, errlen, "starting the store's monitor thread: %s", strerror(errno));
        atomic_store(&S.stop, true);
        etcd_client_cancel(S.wcli);
        pthread_join(S.watcher, NULL);
        S.enabled = false;
        store_stop();
        return -1;
    }
    S.threads = true;
    log_info("store %s: prefix %s, this node is %s, lock lease %ld s", S.url, S.prefix, S.node,
             S.ttl_s);
    return 0;
}

void store_stop(void)
{
    if (S.threads) {
        atomic_store(&S.stop, true);
        pthread_mutex_lock(&S.mu);
        pthread_cond_broadcast(&S.cv);
        pthread_mutex_unlock(&S.mu);
        etcd_client_cancel(S.wcli);
        pthread_join(S.watcher, NULL);
        pthread_join(S.monitor, NULL);
        S.threads = false;
        if (S.lease) {
            char err[256];
            etcd_lease_revoke(S.cli, S.lease, err, sizeof err);
            S.lease = 0;
        }
    }
    etcd_client_free(S.cli);
    etcd_client_free(S.wcli);
    etcd_client_free(S.mcli);
    S.cli = S.wcli = S.mcli = NULL;
    pthread_mutex_lock(&S.mu);
    table_clear(&S.locks);
    table_clear(&S.issued);
    table_clear(&S.certs);
    pthread_mutex_unlock(&S.mu);
    S.enabled = false;
}

long store_lock_ttl(void)
{
    return S.enabled ? S.ttl_s : 0;
}

bool store_enabled(void)
{
    return S.enabled;
}

bool store_healthy(void)
{
    if (!S.enabled)
        return false;
    pthread_mutex_lock(&S.mu);
    bool ok = S.health == 1;
    pthread_mutex_unlock(&S.mu);
    return ok;
}

/* ---- the blocking calls ---- */

/* Records the health seen by a blocking call (rc < 0: err). */
static int seen(int rc, const char *err)
{
    set_health(rc >= 0, err);
    return rc;
}

int store_get(const char *rel, char **val, size_t *len, char *err, size_t errlen)
{
    char key[KEY_MAX];
    struct etcd_kv kv = { 0 };
    bool found = false;

    if (!S.enabled)
        return 0;
    key_of(key, sizeof key, rel);
    if (seen(etcd_get(S.cli, key, &kv, &found, err, errlen), err) < 0)
        return -1;
    if (!found)
        return 0;
    *val = kv.value;
    *len = kv.value_len;
    kv.value = NULL;
    etcd_kv_clear(&kv);
    return 1;
}

int store_put(const char *rel, const void *val, size_t len, char *err, size_t errlen)
{
    char key[KEY_MAX];
    if (!S.enabled)
        return 0;
    key_of(key, sizeof key, rel);
    return seen(etcd_put(S.cli, key, val, len, 0, err, errlen), err) < 0 ? -1 : 1;
}

int store_delete(const char *rel, char *err, size_t errlen)
{
    char key[KEY_MAX];
    if (!S.enabled)
        return 0;
    key_of(key, sizeof key, rel);
    return seen(etcd_delete(S.cli, key, err, errlen), err) < 0 ? -1 : 1;
}

int store_create(const char *rel, const void *val, size_t len, char **existing, size_t *elen,
                 char *err, size_t errlen)
{
    char key[KEY_MAX];
    struct etcd_kv cur = { 0 };
    bool created = false;

    if (!S.enabled)
        return 0;
    key_of(key, sizeof key, rel);
    if (seen(etcd_create(S.cli, key, val, len, 0, &created, &cur, err, errlen), err) < 0)
        return -1;
    if (!created && existing) {
        *existing = cur.value;
        *elen = cur.value_len;
        cur.value = NULL;
    }
    etcd_kv_clear(&cur);
    return created ? 1 : 0;
}

int store_lock(const char *domain, char *holder, size_t cap, char *err, size_t errlen)
{
    char key[KEY_MAX], rel[DOMAIN_MAX + 16];
    int64_t lease = 0;
    struct etcd_kv cur = { 0 };
    bool created = false;

    if (!S.enabled)
        return 1;
    snprintf(rel, sizeof rel, "locks/%s", domain);
    key_of(key, sizeof key, rel);
    if (seen(etcd_lease_grant(S.cli, S.ttl_s, &lease, err, errlen), err) < 0)
        return -1;
    if (seen(etcd_create(S.cli, key, S.node, strlen(S.node), lease, &created, &cur, err, errlen),
             err) < 0) {
        char e2[128];
        etcd_lease_revoke(S.cli, lease, e2, sizeof e2);
        return -1;
    }
    if (!created) {
        char e2[128];
        etcd_lease_revoke(S.cli, lease, e2, sizeof e2);
        snprintf(holder, cap, "%s", cur.value ? cur.value : "?");
        etcd_kv_clear(&cur);
        return 0;
    }
    etcd_kv_clear(&cur);
    pthread_mutex_lock(&S.mu);
    S.lease = lease;
    snprintf(S.lock_domain, sizeof S.lock_domain, "%s", domain);
    pthread_mutex_unlock(&S.mu);
    return 1;
}

void store_unlock(const char *domain)
{
    char err[256];
    if (!S.enabled)
        return;
    pthread_mutex_lock(&S.mu);
    int64_t lease = strcmp(S.lock_domain, domain) == 0 ? S.lease : 0;
    S.lease = 0;
    S.lock_domain[0] = '\0';
    pthread_mutex_unlock(&S.mu);
    if (lease && etcd_lease_revoke(S.cli, lease, err, sizeof err) < 0)
        log_warn("store: releasing the lock on %s: %s (it expires with its lease in %ld s)",
                 domain, err, S.ttl_s);
}

int store_put_challenge(const char *type, const char *id, const char *keyauth,
                        char *err, size_t errlen)
{
    char rel[DOMAIN_MAX + 300], key[KEY_MAX];
    struct etcd_kv kv = { 0 };
    bool found = false;

    if (!S.enabled)
        return 1;
    snprintf(rel, sizeof rel, "challenges/%s/%s", type, id);
    key_of(key, sizeof key, rel);
    /* On the lock's lease: if this node dies mid-order, its answers go
     * with its lock instead of staying in the store for good. */
    pthread_mutex_lock(&S.mu);
    int64_t lease = S.lease;
    pthread_mutex_unlock(&S.mu);
    if (seen(etcd_put(S.cli, key, keyauth, strlen(keyauth), lease, err, errlen), err) < 0 ||
        seen(etcd_get(S.cli, key, &kv, &found, err, errlen), err) < 0)
        return -1;
    int64_t rev = kv.mod_revision;
    etcd_kv_clear(&kv);
    /* Wait for our own watcher to see it: the write is then committed and
     * streaming to every watcher, which the other nodes also read from. */
    struct timespec deadline = clock_deadline_ms(ECHO_WAIT_MS);
    pthread_mutex_lock(&S.mu);
    while (S.applied_rev < rev && !atomic_load(&S.stop) &&
           pthread_cond_timedwait(&S.cv, &S.mu, &deadline) != ETIMEDOUT)
        ;   /* advance() broadcasts each time the watcher applies events */
    bool echoed = S.applied_rev >= rev;
    pthread_mutex_unlock(&S.mu);
    if (!echoed)
        log_warn("store: the %s answer for %s was written, but this node's watch did not see "
                 "it within %d ms; other nodes may not answer it yet", type, id, ECHO_WAIT_MS);
    return 1;
}

void store_delete_challenge(const char *type, const char *id)
{
    char rel[DOMAIN_MAX + 300], err[256];
    if (!S.enabled)
        return;
    snprintf(rel, sizeof rel, "challenges/%s/%s", type, id);
    if (store_delete(rel, err, sizeof err) < 0)
        log_warn("store: removing the %s answer for %s: %s", type, id, err);
}

size_t store_status(const char *domain, char *buf, size_t cap)
{
    char t[32];
    size_t n = 0;

    if (!S.enabled || cap == 0)
        return 0;
    buf[0] = '\0';
#define ADD(...) do { \
        int w_ = snprintf(buf + n, cap - n, __VA_ARGS__); \
        if (w_ > 0) n += (size_t)w_ < cap - n ? (size_t)w_ : cap - n - 1; \
    } while (0)
    pthread_mutex_lock(&S.mu);
    if (S.health < 0)
        ADD("store: %s %s, node %s, not reached yet\n", S.url, S.prefix, S.node);
    else if (S.health)
        ADD("store: %s %s, node %s, healthy since %s\n", S.url, S.prefix, S.node,
            clock_format_utc(S.health_since, t, sizeof t));
    else
        ADD("store: %s %s, node %s, unreachable since %s: %s\n", S.url, S.prefix, S.node,
            clock_format_utc(S.health_since, t, sizeof t), S.health_err);
    if (domain) {
        struct note *l = table_find(&S.locks, domain), *i = table_find(&S.issued, domain);
        if (l)
            ADD("lock: held by %s\n", l->text);
        else
            ADD("lock: none\n");
        if (i) {
            char node[NODE_MAX + 1];
            long long at = 0;
            if (sscanf(i->text, "%128s %lld", node, &at) == 2)
                ADD("issued by: %s at %s\n", node, clock_format_utc((time_t)at, t, sizeof t));
            else
                ADD("issued by: %s\n", i->text);
        } else {
            ADD("issued by: not known\n");
        }
    }
    pthread_mutex_unlock(&S.mu);
#undef ADD
    return n;
}
