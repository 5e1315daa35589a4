/* test_routes.c — the route table (set, override, remove, probe runs, clone,
 * snapshots), 100,000-route lookups, the tolerant loader and the atomic save
 * (including failures that must leave the old file intact). */
#include "check.h"
#include "domain.h"
#include "log.h"
#include "qsbr.h"
#include "routes.h"
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char tmpdir[256];

static uint16_t look(const struct routes *r, const char *name)
{
    return routes_lookup(r, name, strlen(name));
}

static void set(struct routes *r, const char *name, uint16_t port)
{
    routes_set(r, name, strlen(name), port);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

/* The file's contents, in a static buffer ("" when missing). */
static const char *read_file(const char *path)
{
    static char buf[1 << 16];
    FILE *f = fopen(path, "r");
    size_t n = 0;
    if (f) {
        n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
    }
    buf[n] = '\0';
    return buf;
}

static void test_set_lookup_override_remove(void)
{
    struct routes *r = routes_new_empty();

    CHECK(routes_count(r) == 0);
    CHECK(look(r, "example.com") == 0);
    set(r, "example.com", 5665);
    CHECK(look(r, "example.com") == 5665);
    CHECK(look(r, "example.co") == 0);
    CHECK(look(r, "example.comx") == 0);
    CHECK(routes_count(r) == 1);
    set(r, "example.com", 6000);             /* a later add overrides */
    CHECK(look(r, "example.com") == 6000);
    CHECK(routes_count(r) == 1);
    CHECK(routes_remove(r, "example.com", 11) == 0);
    CHECK(routes_remove(r, "example.com", 11) == -1);
    CHECK(look(r, "example.com") == 0);
    CHECK(routes_count(r) == 0);
    CHECK(routes_lookup(r, "", 0) == 0);
    CHECK(routes_lookup(NULL, "a", 1) == 0);   /* nothing published yet */
    CHECK(routes_count(NULL) == 0);
    routes_free(r);
}

/* Removing from the middle of probe runs must keep every other name findable
 * (backward-shift deletion): insert many, remove every third, check all. */
static void test_remove_keeps_probe_runs(void)
{
    struct routes *r = routes_new_empty();
    char name[64];
    int bad = 0;

    for (int i = 0; i < 5000; i++) {
        snprintf(name, sizeof name, "h%d.test", i);
        set(r, name, (uint16_t)(1 + i));
    }
    for (int i = 0; i < 5000; i += 3) {
        snprintf(name, sizeof name, "h%d.test", i);
        bad += routes_remove(r, name, strlen(name)) != 0;
    }
    for (int i = 0; i < 5000; i++) {
        snprintf(name, sizeof name, "h%d.test", i);
        bad += look(r, name) != (i % 3 == 0 ? 0 : 1 + i);
    }
    CHECK(bad == 0);
    CHECK(routes_count(r) == 5000 - 1667);
    routes_free(r);
}

static void collect(const char *name, uint16_t port, void *arg)
{
    (*(size_t *)arg) += port;
}

static void test_clone_foreach_sorted(void)
{
    struct routes *r = routes_new_empty(), *c;
    size_t sum = 0, n;
    struct routes_entry *e;

    set(r, "b.test", 2);
    set(r, "a.test", 1);
    set(r, "c.test", 3);
    routes_remove(r, "c.test", 6);
    c = routes_clone(r);
    set(c, "d.test", 4);
    CHECK(look(r, "d.test") == 0);            /* the original is untouched */
    CHECK(look(c, "a.test") == 1 && look(c, "b.test") == 2 && look(c, "d.test") == 4);
    CHECK(look(c, "c.test") == 0);
    routes_foreach(c, collect, &sum);
    CHECK(sum == 7);
    e = routes_sorted(c, &n);
    CHECK(n == 3);
    CHECK_STR(e[0].name, "a.test");
    CHECK_STR(e[1].name, "b.test");
    CHECK_STR(e[2].name, "d.test");
    CHECK(e[2].len == 6 && e[2].port == 4);
    free(e);
    routes_free(r);
    routes_free(c);
}

static void test_publish_and_retire(void)
{
    int reader = qsbr_register();
    struct routes *a = routes_new_empty(), *b;

    set(a, "a.test", 1);
    routes_publish(a);
    CHECK(routes_current() == a);
    b = routes_clone(routes_current());
    set(b, "b.test", 2);
    routes_publish(b);
    CHECK(routes_current() == b);
    CHECK(look(routes_current(), "b.test") == 2);
    qsbr_reclaim();
    CHECK(qsbr_pending() == 1);               /* the reader has not passed a quiescent state */
    qsbr_quiescent(reader);
    qsbr_reclaim();
    CHECK(qsbr_pending() == 0);               /* a is freed (ASan would flag a leak otherwise) */
    qsbr_offline(reader);
    routes_publish(routes_clone(b));
    qsbr_reclaim();
    CHECK(qsbr_pending() == 0);               /* offline readers do not hold anything */
}

static atomic_bool stress_stop;
static atomic_long stress_bad, stress_reads;
static atomic_int stress_started;   /* readers that have read once */

/* A worker: reads the current snapshot, announces quiescent states between
 * reads, goes offline now and then (as around epoll_wait). */
static void *stress_reader(void *arg)
{
    int id = qsbr_register();
    long n = 0, bad = 0;

    while (!atomic_load(&stress_stop)) {
        const struct routes *r = routes_current();
        bad += look(r, "fixed.test") != 1;
        bad += routes_count(r) < 1;
        if (n++ == 0)
            atomic_fetch_add(&stress_started, 1);
        if (n % 64 == 0) {
            qsbr_offline(id);
            sched_yield();
            qsbr_online(id);
        } else {
            qsbr_quiescent(id);
        }
    }
    qsbr_offline(id);
    atomic_fetch_add(&stress_bad, bad);
    atomic_fetch_add(&stress_reads, n);
    return NULL;
}

/* Snapshots swapped under readers: ASan turns any early free into a failure. */
static void test_snapshots_under_concurrent_readers(void)
{
    pthread_t t[4];
    struct routes *r = routes_clone(routes_current());
    char name[32];

    set(r, "fixed.test", 1);
    routes_publish(r);
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, stress_reader, NULL);
    /* On a loaded machine the readers may not run before the writer is
     * done: swap snapshots only once every reader is reading. */
    while (atomic_load(&stress_started) < 4)
        sched_yield();
    for (int i = 0; i < 3000; i++) {
        r = routes_clone(routes_current());
        snprintf(name, sizeof name, "n%d.test", i % 50);
        if (routes_remove(r, name, strlen(name)) != 0)
            set(r, name, (uint16_t)(i + 1));
        routes_publish(r);
        qsbr_reclaim();
    }
    atomic_store(&stress_stop, true);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    qsbr_reclaim();
    CHECK(atomic_load(&stress_bad) == 0);
    CHECK(atomic_load(&stress_reads) > 0);
    CHECK(qsbr_pending() == 0);   /* every reader is offline: all freed */
}

static void test_100000_routes(void)
{
    char path[512], name[64], line[80];
    size_t bad = 0;
    double t0, t_load, t_look;
    FILE *f;
    struct routes *r;

    snprintf(path, sizeof path, "%s/big.txt", tmpdir);
    f = fopen(path, "w");
    for (int i = 0; i < 100000; i++)
        fprintf(f, "site-%d.example.com %d\n", i, 1 + i % 65535);
    fclose(f);

    t0 = now_s();
    r = routes_load_file(path, line, sizeof line);
    t_load = now_s() - t0;
    CHECK(r != NULL);
    CHECK(routes_count(r) == 100000);
    t0 = now_s();
    for (int round = 0; round < 10; round++)
        for (int i = 0; i < 100000; i++) {
            int n = snprintf(name, sizeof name, "site-%d.example.com", i);
            bad += routes_lookup(r, name, (size_t)n) != 1 + i % 65535;
            name[0] = 'x';
            bad += routes_lookup(r, name, (size_t)n) != 0;
        }
    t_look = now_s() - t0;
    CHECK(bad == 0);
    printf("100000 routes: load %.3f s, 2,000,000 lookups %.3f s\n", t_load, t_look);
    CHECK(t_load < 1.0);   /* generous for sanitizer builds; ~0.05 s optimised */

    snprintf(path, sizeof path, "%s/big-saved.txt", tmpdir);
    t0 = now_s();
    CHECK(routes_save_file(r, path, line, sizeof line) == 0);
    printf("100000 routes: save %.3f s\n", now_s() - t0);
    routes_free(r);
    r = routes_load_file(path, line, sizeof line);
    CHECK(r && routes_count(r) == 100000);
    CHECK(look(r, "site-99999.example.com") == 1 + 99999 % 65535);
    routes_free(r);
}

static void test_load_tolerates_and_skips(void)
{
    char path[512], err[256];
    struct routes *r;

    snprintf(path, sizeof path, "%s/mixed.txt", tmpdir);
    write_file(path,
               "example.com 5665\n"
               "\n"
               "   \t \n"
               "  Spaced.Example.COM.\t 6000  \r\n"
               "onlyonefield\n"
               "three fields here\n"
               "bad_name.com 80\n"
               "port.zero 0\n"
               "port.big 65536\n"
               "port.hex 0x50\n"
               "example.com 7000\n"          /* a later line overrides */
               "last.line 8080");             /* no final newline */
    r = routes_load_file(path, err, sizeof err);
    CHECK(r != NULL);
    CHECK(routes_count(r) == 3);
    CHECK(look(r, "example.com") == 7000);
    CHECK(look(r, "spaced.example.com") == 6000);
    CHECK(look(r, "last.line") == 8080);
    CHECK(look(r, "port.big") == 0 && look(r, "bad_name.com") == 0);
    routes_free(r);

    snprintf(path, sizeof path, "%s/missing.txt", tmpdir);
    r = routes_load_file(path, err, sizeof err);
    CHECK(r != NULL && routes_count(r) == 0);   /* first run */
    routes_free(r);

    /* A directory where the file should be: exists but cannot be read. */
    snprintf(path, sizeof path, "%s", tmpdir);
    err[0] = '\0';
    r = routes_load_file(path, err, sizeof err);
    CHECK(r == NULL);
    CHECK(strstr(err, "read ") == err && strstr(err, "Is a directory") != NULL);
}

static void test_save_sorted_format(void)
{
    char path[512], err[256];
    struct routes *r = routes_new_empty();

    set(r, "zeta.test", 3);
    set(r, "alpha.test", 65535);
    set(r, "mid.test", 1);
    snprintf(path, sizeof path, "%s/new/sub/dir/forward_targets.txt", tmpdir);
    CHECK(routes_save_file(r, path, err, sizeof err) == 0);   /* mkdir -p */
    CHECK_STR(read_file(path), "alpha.test 65535\nmid.test 1\nzeta.test 3\n");
    CHECK(access(path, F_OK) == 0);
    strcat(path, ".tmp");
    CHECK(access(path, F_OK) != 0);    /* no temp file left behind */
    routes_free(r);

    r = routes_new_empty();
    snprintf(path, sizeof path, "%s/new/sub/dir/forward_targets.txt", tmpdir);
    CHECK(routes_save_file(r, path, err, sizeof err) == 0);
    CHECK_STR(read_file(path), "");     /* empty table: empty file */
    routes_free(r);
}

static void test_save_failure_keeps_old_file(void)
{
    char dir[512], path[600], err[512];
    struct routes *r = routes_new_empty();

    set(r, "new.test", 2);
    snprintf(dir, sizeof dir, "%s/ro", tmpdir);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/forward_targets.txt", dir);
    write_file(path, "old.test 1\n");

    /* A read-only directory (root ignores modes, so only when not root). */
    if (geteuid() != 0) {
        chmod(dir, 0555);
        CHECK(routes_save_file(r, path, err, sizeof err) == -1);
        CHECK(strstr(err, "Permission denied") != NULL);
        CHECK_STR(read_file(path), "old.test 1\n");
        chmod(dir, 0755);
    }

    /* The temp file's name is taken by a directory: create fails. */
    snprintf(path, sizeof path, "%s/forward_targets.txt.tmp", dir);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/forward_targets.txt", dir);
    err[0] = '\0';
    CHECK(routes_save_file(r, path, err, sizeof err) == -1);
    CHECK(strstr(err, "create ") == err && strstr(err, "Is a directory") != NULL);
    CHECK_STR(read_file(path), "old.test 1\n");
    snprintf(path, sizeof path, "%s/forward_targets.txt.tmp", dir);
    rmdir(path);

    /* The target's name is a non-empty directory: the rename fails after the
     * temp file was written, which must be unlinked. */
    snprintf(path, sizeof path, "%s/isdir", dir);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/isdir/keep", dir);
    write_file(path, "x");
    snprintf(path, sizeof path, "%s/isdir", dir);
    err[0] = '\0';
    CHECK(routes_save_file(r, path, err, sizeof err) == -1);
    CHECK(strstr(err, "rename ") == err);
    strcat(path, ".tmp");
    CHECK(access(path, F_OK) != 0);

    /* A path under a regular file: the directory cannot be made. */
    snprintf(path, sizeof path, "%s/forward_targets.txt/sub/routes.txt", dir);
    err[0] = '\0';
    CHECK(routes_save_file(r, path, err, sizeof err) == -1);
    CHECK(strstr(err, "Not a directory") != NULL);
    snprintf(path, sizeof path, "%s/forward_targets.txt", dir);
    CHECK_STR(read_file(path), "old.test 1\n");

    /* A full disk: a symlink to /dev/full at the temp name makes the write
     * fail with ENOSPC after the create succeeded. */
    snprintf(path, sizeof path, "%s/full.txt.tmp", dir);
    if (symlink("/dev/full", path) == 0) {
        snprintf(path, sizeof path, "%s/full.txt", dir);
        write_file(path, "old.test 1\n");
        err[0] = '\0';
        CHECK(routes_save_file(r, path, err, sizeof err) == -1);
        CHECK(strstr(err, "No space left on device") != NULL);
        CHECK_STR(read_file(path), "old.test 1\n");
        snprintf(path, sizeof path, "%s/full.txt.tmp", dir);
        CHECK(access(path, F_OK) != 0);    /* the symlink (temp name) was unlinked */
    }
    routes_free(r);
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_routes.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    log_set_level(LOG_ERROR);   /* the loader's warnings are expected here */
    test_set_lookup_override_remove();
    test_remove_keeps_probe_runs();
    test_clone_foreach_sorted();
    test_publish_and_retire();
    test_snapshots_under_concurrent_readers();
    test_100000_routes();
    test_load_tolerates_and_skips();
    test_save_sorted_format();
    test_save_failure_keeps_old_file();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    return check_report("test_routes");
}
