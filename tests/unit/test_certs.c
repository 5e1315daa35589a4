/* test_certs.c — the certificate store against the real mkcert (CAROOT in a
 * temporary directory): a miss queues the name once, the background thread
 * makes DOMAIN-cert.pem / DOMAIN-key.pem (0600) and a READY context appears;
 * an existing pair is loaded without mkcert; a pair for another name is
 * replaced; a failure is held, not retried on every handshake. */
#include "certs.h"
#include "check.h"
#include "log.h"
#include "loop.h"
#include "mkcert.h"
#include "qsbr.h"
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <openssl/x509v3.h>

static sem_t notified;                /* posted by each certs notification */
static atomic_int notifications;
static int reader;                    /* this thread's QSBR reader id */

/* Runs on the loop thread, as a worker's "retry parked handshakes" would. */
static void on_certs_done(void *arg)
{
    atomic_fetch_add(&notifications, 1);
    sem_post(&notified);
}

static void *loop_thread(void *arg)
{
    loop_run(arg);
    return NULL;
}

static int wait_notified(int seconds)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += seconds;
    while (sem_timedwait(&notified, &ts) < 0)
        if (errno != EINTR)
            return -1;
    return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

/* snprintf whose truncation the compiler does not second-guess (test paths are short). */
static void fmt(char *out, size_t cap, const char *f, ...) __attribute__((format(printf, 3, 4)));
static void fmt(char *out, size_t cap, const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    vsnprintf(out, cap, f, ap);
    va_end(ap);
}

static bool exists(const char *path)
{
    return access(path, F_OK) == 0;
}

/* Asks for name until READY, waiting for notifications in between. */
static enum certs_result get_waiting(const char *name, SSL_CTX **ctx)
{
    enum certs_result r;
    for (int i = 0; i < 3; i++) {
        r = certs_get(name, strlen(name), ctx);
        if (r != CERTS_PENDING)
            return r;
        qsbr_quiescent(reader);   /* holds nothing while it waits */
        if (wait_notified(90) < 0)
            return CERTS_PENDING;
    }
    return certs_get(name, strlen(name), ctx);
}

static bool ctx_is_for(SSL_CTX *ctx, const char *name)
{
    X509 *x = SSL_CTX_get0_certificate(ctx);
    return x && X509_check_host(x, name, strlen(name), 0, NULL) == 1;
}

/* Release mode has its own entry point (certs_init_acme). */
static void test_acme_needs_init_acme(const char *dir)
{
    char err[256] = "";
    CHECK(certs_init(CERTS_ACME, dir, NULL, err, sizeof err) == -1);
    CHECK(strstr(err, "certs_init_acme") != NULL);
}

/* Worker threads asking for one name at once: it is made once, and every
 * one of them ends up with the same READY context. */
static _Atomic(SSL_CTX *) race_ctx[8];
static void *race_worker(void *arg)
{
    int id = qsbr_register();
    SSL_CTX *ctx = NULL;
    for (int i = 0; i < 200000; i++) {
        enum certs_result r = certs_get("race.test", 9, &ctx);
        if (r == CERTS_READY) {
            atomic_store(&race_ctx[(intptr_t)arg], ctx);
            break;
        }
        qsbr_quiescent(id);
        usleep(100);
    }
    qsbr_offline(id);
    return NULL;
}

static void test_concurrent_misses_queue_once(void)
{
    pthread_t th[8];
    atomic_store(&notifications, 0);
    for (intptr_t i = 0; i < 8; i++)
        pthread_create(&th[i], NULL, race_worker, (void *)i);
    for (int i = 0; i < 8; i++)
        pthread_join(th[i], NULL);
    usleep(200 * 1000);
    CHECK(atomic_load(&notifications) == 1);
    for (int i = 0; i < 8; i++)
        CHECK(atomic_load(&race_ctx[i]) != NULL && atomic_load(&race_ctx[i]) == atomic_load(&race_ctx[0]));
    while (sem_trywait(&notified) == 0)
        ;
}

static void test_mkcert_makes_pair(const char *dir, const char *mkcert)
{
    char err[512] = "", cert[512], key[512];
    SSL_CTX *ctx = NULL;
    struct stat st;

    CHECK(certs_init(CERTS_MKCERT, dir, mkcert, err, sizeof err) == 0);
    if (err[0])
        fprintf(stderr, "certs_init: %s\n", err);
    CHECK(stat(dir, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 0777) == 0700);

    atomic_store(&notifications, 0);
    /* Many handshakes waiting on one name queue it once. */
    CHECK(certs_get("made.test", 9, &ctx) == CERTS_PENDING);
    CHECK(certs_get("made.test", 9, &ctx) == CERTS_PENDING);
    CHECK(certs_get("made.test", 9, &ctx) == CERTS_PENDING);
    CHECK(wait_notified(90) == 0);
    CHECK(certs_get("made.test", 9, &ctx) == CERTS_READY);
    CHECK(ctx && ctx_is_for(ctx, "made.test"));
    usleep(200 * 1000);   /* a second (wrong) queueing would notify again */
    CHECK(atomic_load(&notifications) == 1);

    fmt(cert, sizeof cert, "%s/made.test-cert.pem", dir);
    fmt(key, sizeof key, "%s/made.test-key.pem", dir);
    CHECK(exists(cert));
    CHECK(stat(key, &st) == 0 && (st.st_mode & 0777) == 0600);
    fmt(cert, sizeof cert, "%s/made.test-cert.pem.tmp", dir);
    CHECK(!exists(cert));   /* made under a temporary name, then renamed */

    /* A pair on disk for another name is not used: it is made again. */
    char src[512], dst[512];
    fmt(src, sizeof src, "cp %s/made.test-cert.pem %s/other.test-cert.pem && "
             "cp %s/made.test-key.pem %s/other.test-key.pem", dir, dir, dir, dir);
    CHECK(system(src) == 0);
    ctx = NULL;
    CHECK(get_waiting("other.test", &ctx) == CERTS_READY);
    CHECK(ctx && ctx_is_for(ctx, "other.test"));
    fmt(dst, sizeof dst, "%s/other.test-cert.pem", dir);
    CHECK(exists(dst));

    test_concurrent_misses_queue_once();
    qsbr_quiescent(reader);
    certs_shutdown();
}

static void test_pair_on_disk_loaded_without_mkcert(const char *dir)
{
    char err[512] = "", path[512];
    SSL_CTX *ctx = NULL;

    /* mkcert cannot run: whatever becomes READY came from the disk. */
    CHECK(certs_init(CERTS_MKCERT, dir, "/nonexistent/mkcert", err, sizeof err) == 0);
    CHECK(get_waiting("made.test", &ctx) == CERTS_READY);
    CHECK(ctx && ctx_is_for(ctx, "made.test"));

    /* No pair and no mkcert: FAILED, held (no new attempt per handshake). */
    atomic_store(&notifications, 0);
    CHECK(get_waiting("missing.test", &ctx) == CERTS_FAILED);
    CHECK(atomic_load(&notifications) == 1);
    CHECK(certs_get("missing.test", 12, &ctx) == CERTS_FAILED);
    usleep(200 * 1000);
    CHECK(atomic_load(&notifications) == 1);
    fmt(path, sizeof path, "%s/missing.test-key.pem", dir);
    CHECK(!exists(path));
    fmt(path, sizeof path, "%s/missing.test-key.pem.tmp", dir);
    CHECK(!exists(path));

    qsbr_quiescent(reader);
    certs_shutdown();
    /* After shutdown nothing is served and nothing is queued. */
    CHECK(certs_get("made.test", 9, &ctx) == CERTS_FAILED);
}

/* A stand-in mkcert that fails: the error names the exit status and the
 * last line it printed; one that "succeeds" without files is an error too. */
static void test_mkcert_failure_reported(const char *tmp)
{
    char fake[512], cert[512], key[512], err[512] = "";
    FILE *f;

    fmt(fake, sizeof fake, "%s/fake-mkcert", tmp);
    fmt(cert, sizeof cert, "%s/f-cert.pem", tmp);
    fmt(key, sizeof key, "%s/f-key.pem", tmp);
    f = fopen(fake, "w");
    fputs("#!/bin/sh\necho 'Created a new local CA' >&2\necho \"ERROR: bad name $6\" >&2\nexit 3\n", f);
    fclose(f);
    chmod(fake, 0755);
    CHECK(mkcert_make(fake, "f.test", cert, key, err, sizeof err) == -1);
    CHECK(strstr(err, "exit status 3") != NULL);
    CHECK(strstr(err, "ERROR: bad name f.test") != NULL);

    f = fopen(fake, "w");
    fputs("#!/bin/sh\nexit 0\n", f);
    fclose(f);
    CHECK(mkcert_make(fake, "f.test", cert, key, err, sizeof err) == -1);
    CHECK(strstr(err, "missing") != NULL);
}

/* First run: an empty CAROOT gets mkcert's CA (created once, then found),
 * and `mkcert -CAROOT` answering something that is not a path is an error. */
static void test_mkcert_ensure_ca(const char *tmp, const char *mkcert)
{
    char caroot[512], got[4096], root[600], fake[512], err[512] = "";
    const char *saved = getenv("CAROOT");
    char *keep = saved ? strdup(saved) : NULL;

    fmt(caroot, sizeof caroot, "%s/caroot-first-run", tmp);
    mkdir(caroot, 0700);
    setenv("CAROOT", caroot, 1);
    fmt(root, sizeof root, "%s/rootCA.pem", caroot);
    CHECK(!exists(root));
    CHECK(mkcert_ensure_ca(mkcert, got, sizeof got, err, sizeof err) == 1);
    CHECK(strcmp(got, caroot) == 0);
    CHECK(exists(root));
    CHECK(mkcert_ensure_ca(mkcert, got, sizeof got, err, sizeof err) == 0);

    fmt(fake, sizeof fake, "%s/fake-caroot-mkcert", tmp);
    FILE *f = fopen(fake, "w");
    fputs("#!/bin/sh\necho not-a-path\n", f);
    fclose(f);
    chmod(fake, 0700);
    CHECK(mkcert_ensure_ca(fake, got, sizeof got, err, sizeof err) == -1);
    CHECK(strstr(err, "not-a-path") != NULL);

    if (keep)
        setenv("CAROOT", keep, 1);
    else
        unsetenv("CAROOT");
    free(keep);
}

int main(void)
{
    char tmpl[] = "/tmp/core_test_certs_XXXXXX";
    char mkcert[4096], caroot[512], dir[512], err[256];
    pthread_t th;

    log_set_level(LOG_WARN);
    if (!mkdtemp(tmpl)) {
        perror("mkdtemp");
        return 1;
    }
    if (mkcert_find(mkcert, sizeof mkcert) < 0) {
        fprintf(stderr, "test_certs: mkcert is not on PATH (apt-get install mkcert)\n");
        return 1;
    }
    fmt(caroot, sizeof caroot, "%s/caroot", tmpl);
    fmt(dir, sizeof dir, "%s/state/certs", tmpl);   /* made by certs_init */
    mkdir(caroot, 0700);
    setenv("CAROOT", caroot, 1);

    reader = qsbr_register();
    sem_init(&notified, 0, 0);
    struct loop *l = loop_new();
    certs_subscribe(l, on_certs_done, NULL);
    pthread_create(&th, NULL, loop_thread, l);

    test_acme_needs_init_acme(dir);
    test_mkcert_makes_pair(dir, mkcert);
    certs_subscribe(l, on_certs_done, NULL);   /* shutdown forgets subscribers */
    test_pair_on_disk_loaded_without_mkcert(dir);

    test_mkcert_failure_reported(tmpl);
    test_mkcert_ensure_ca(tmpl, mkcert);
    CHECK(mkcert_make("/nonexistent/mkcert", "x.test", "/tmp/x", "/tmp/y", err, sizeof err) == -1);
    CHECK(strstr(err, "/nonexistent/mkcert") != NULL);

    loop_stop(l);
    pthread_join(th, NULL);
    loop_free(l);
    qsbr_offline(reader);
    qsbr_reclaim();
    nftw(tmpl, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return check_report("test_certs");
}
