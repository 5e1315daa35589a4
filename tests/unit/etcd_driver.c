/* etcd_driver.c — runs etcd.h calls against a real etcd cluster for the
 * integration tests in tests/integration/test_etcd_client.py, until the
 * client is wired into core_server. Not a unit test (make unit does not run
 * it; pytest builds it with `make build/tests/etcd_driver`).
 *
 *   etcd_driver --endpoints E [--ca F] [--cert F --key F] [--user U --password P]
 *               [--timeout-ms N] COMMAND ARGS...
 *
 * Commands (a VALUE of "@FILE" is the contents of FILE; values are printed
 * in hex so that any bytes survive):
 *   get KEY                 "value HEX create=R mod=R lease=ID" or "absent"
 *   put KEY VALUE           "ok"
 *   delete KEY              "ok"
 *   create KEY VALUE TTL    lease of TTL s (0: none), then create-if-absent:
 *                           "created lease=ID" or "held HEX"
 *   delete-if KEY VALUE     "deleted" or "kept"
 *   prefix P                "revision R", then "KEY HEX" per key, sorted
 *   lease-cycle KEY         grant 5 s, put KEY on it, keepalive, revoke,
 *                           keepalive again, get: one line per step
 *   get-twice KEY MS        get, sleep MS, get again (outliving an auth token)
 *   watch PREFIX N [IDLE_MS [CANCEL_AFTER_MS [START]]]
 *                           reads the prefix's revision, prints "ready R",
 *                           watches from START (default R+1; a START given
 *                           skips the read and prints "ready START-1"), prints "last R" (etcd_watch's
 *                           *last_revision) at the end, and "PUT KEY HEX" or
 *                           "DELETE KEY" per event; exits 0 after N events
 *                           or when cancelled ("cancelled MS": how long the
 *                           watch took to return after etcd_client_cancel).
 * Exits 0, or 1 with "etcd_driver: <error>" on stderr, 2 on bad usage. */
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "etcd.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void print_hex(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        printf("%02x", (unsigned char)p[i]);
}

/* VALUE, or the bytes of FILE for "@FILE". Caller frees. */
static char *load_value(const char *arg, size_t *len)
{
    if (arg[0] != '@') {
        *len = strlen(arg);
        return strdup(arg);
    }
    FILE *f = fopen(arg + 1, "rb");
    if (!f) {
        perror(arg + 1);
        exit(2);
    }
    char *buf = NULL;
    size_t cap = 0, n = 0, r;
    do {
        if (n + 65536 > cap)
            buf = realloc(buf, cap = n + 65536);
        r = fread(buf + n, 1, cap - n, f);
        n += r;
    } while (r > 0);
    fclose(f);
    *len = n;
    return buf;
}

static int fail(const char *err)
{
    fprintf(stderr, "etcd_driver: %s\n", err);
    return 1;
}

/* ---------------------------------------------------------------- watch */

struct watch_ctx {
    long wc_left;               /* events still wanted */
};

static bool on_event(void *arg, const struct etcd_event *ev)
{
    struct watch_ctx *w = arg;
    if (ev->type == ETCD_EVENT_PUT) {
        printf("PUT %s ", ev->kv->key);
        print_hex(ev->kv->value, ev->kv->value_len);
        printf("\n");
    } else {
        printf("DELETE %s\n", ev->kv->key);
    }
    fflush(stdout);
    return --w->wc_left > 0;
}

struct canceller {
    struct etcd_client *cn_client;
    long cn_after_ms;
    double cn_at;               /* when etcd_client_cancel was called */
};

static void *do_cancel(void *arg)
{
    struct canceller *cn = arg;
    usleep((useconds_t)cn->cn_after_ms * 1000);
    cn->cn_at = now_ms();
    etcd_client_cancel(cn->cn_client);
    return NULL;
}

static int cmd_watch(struct etcd_client *c, char **argv, int argc, char *err, size_t errlen)
{
    struct watch_ctx w = { atol(argv[1]) };
    long idle_ms = argc > 2 ? atol(argv[2]) : 0;
    struct canceller cn = { c, argc > 3 ? atol(argv[3]) : 0, 0 };
    long long start = argc > 4 ? atoll(argv[4]) : -1;
    struct etcd_kv *kvs;
    size_t n;
    int64_t rev, last;
    pthread_t t;

    if (start >= 0) {
        rev = start - 1;   /* no read first: it would need quorum */
    } else {
        if (etcd_get_prefix(c, argv[0], &kvs, &n, &rev, err, errlen) < 0)
            return -1;
        etcd_kvs_free(kvs, n);
    }
    printf("ready %lld\n", (long long)rev);
    fflush(stdout);
    if (cn.cn_after_ms > 0)
        pthread_create(&t, NULL, do_cancel, &cn);
    int rc = etcd_watch(c, argv[0], start >= 0 ? start : rev + 1, idle_ms, on_event, &w, &last,
                        err, errlen);
    double done = now_ms();
    if (cn.cn_after_ms > 0)
        pthread_join(t, NULL);
    printf("last %lld\n", (long long)last);
    if (rc == 0 && cn.cn_at > 0)
        printf("cancelled %.0f\n", done - cn.cn_at);
    return rc;
}

/* ---------------------------------------------------------------- the rest */

static int cmd_lease_cycle(struct etcd_client *c, const char *key, char *err, size_t errlen)
{
    int64_t lease;
    long ttl;
    struct etcd_kv kv = { 0 };
    bool found;

    if (etcd_lease_grant(c, 5, &lease, err, errlen) < 0)
        return -1;
    printf("granted %lld\n", (long long)lease);
    if (etcd_put(c, key, "x", 1, lease, err, errlen) < 0 ||
        etcd_get(c, key, &kv, &found, err, errlen) < 0)
        return -1;
    printf("attached %lld\n", found ? (long long)kv.lease : 0LL);
    etcd_kv_clear(&kv);
    if (etcd_lease_keepalive(c, lease, &ttl, err, errlen) < 0)
        return -1;
    printf("keepalive %ld\n", ttl);
    if (etcd_lease_revoke(c, lease, err, errlen) < 0)
        return -1;
    printf("revoked\n");
    if (etcd_lease_keepalive(c, lease, &ttl, err, errlen) < 0)
        return -1;
    printf("keepalive %ld\n", ttl);
    if (etcd_lease_revoke(c, lease, err, errlen) < 0)   /* already gone: still 0 */
        return -1;
    if (etcd_get(c, key, &kv, &found, err, errlen) < 0)
        return -1;
    printf("%s\n", found ? "present" : "absent");
    etcd_kv_clear(&kv);
    return 0;
}

static int run(struct etcd_client *c, int argc, char **argv, char *err, size_t errlen)
{
    const char *cmd = argv[0];
    struct etcd_kv kv = { 0 };
    bool yes;
    size_t len;
    char *v = NULL;
    int rc = -1;

    if (strcmp(cmd, "get") == 0 && argc == 2) {
        if ((rc = etcd_get(c, argv[1], &kv, &yes, err, errlen)) == 0 && yes) {
            printf("value ");
            print_hex(kv.value, kv.value_len);
            printf(" create=%lld mod=%lld lease=%lld\n", (long long)kv.create_revision,
                   (long long)kv.mod_revision, (long long)kv.lease);
        } else if (rc == 0) {
            printf("absent\n");
        }
    } else if (strcmp(cmd, "put") == 0 && argc == 3) {
        v = load_value(argv[2], &len);
        if ((rc = etcd_put(c, argv[1], v, len, 0, err, errlen)) == 0)
            printf("ok\n");
    } else if (strcmp(cmd, "delete") == 0 && argc == 2) {
        if ((rc = etcd_delete(c, argv[1], err, errlen)) == 0)
            printf("ok\n");
    } else if (strcmp(cmd, "create") == 0 && argc == 4) {
        int64_t lease = 0;
        v = load_value(argv[2], &len);
        if (atol(argv[3]) > 0 && etcd_lease_grant(c, atol(argv[3]), &lease, err, errlen) < 0)
            goto out;
        if ((rc = etcd_create(c, argv[1], v, len, lease, &yes, &kv, err, errlen)) < 0)
            goto out;
        if (yes) {
            printf("created lease=%lld\n", (long long)lease);
        } else {
            printf("held ");
            print_hex(kv.value, kv.value_len);
            printf("\n");
        }
    } else if (strcmp(cmd, "delete-if") == 0 && argc == 3) {
        v = load_value(argv[2], &len);
        if ((rc = etcd_delete_if(c, argv[1], v, len, &yes, err, errlen)) == 0)
            printf("%s\n", yes ? "deleted" : "kept");
    } else if (strcmp(cmd, "prefix") == 0 && argc == 2) {
        struct etcd_kv *kvs;
        size_t n;
        int64_t rev;
        if ((rc = etcd_get_prefix(c, argv[1], &kvs, &n, &rev, err, errlen)) == 0) {
            printf("revision %lld\n", (long long)rev);
            for (size_t i = 0; i < n; i++) {
                printf("%s ", kvs[i].key);
                print_hex(kvs[i].value, kvs[i].value_len);
                printf("\n");
            }
            etcd_kvs_free(kvs, n);
        }
    } else if (strcmp(cmd, "lease-cycle") == 0 && argc == 2) {
        rc = cmd_lease_cycle(c, argv[1], err, errlen);
    } else if (strcmp(cmd, "get-twice") == 0 && argc == 3) {
        for (int i = 0; i < 2 && rc <= 0; i++) {
            if (i == 1)
                usleep((useconds_t)atol(argv[2]) * 1000);
            if ((rc = etcd_get(c, argv[1], &kv, &yes, err, errlen)) == 0)
                printf("%s\n", yes ? "found" : "absent");
            etcd_kv_clear(&kv);
            if (rc < 0)
                break;
        }
    } else if (strcmp(cmd, "watch") == 0 && argc >= 3 && argc <= 6) {
        rc = cmd_watch(c, argv + 1, argc - 1, err, errlen);
    } else {
        fprintf(stderr, "etcd_driver: unknown command or wrong arguments: %s\n", cmd);
        exit(2);
    }
out:
    etcd_kv_clear(&kv);
    free(v);
    return rc;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "endpoints", required_argument, NULL, 'e' }, { "ca", required_argument, NULL, 'a' },
        { "cert", required_argument, NULL, 'c' },      { "key", required_argument, NULL, 'k' },
        { "user", required_argument, NULL, 'u' },      { "password", required_argument, NULL, 'p' },
        { "timeout-ms", required_argument, NULL, 't' }, { NULL, 0, NULL, 0 },
    };
    struct etcd_options o = { 0 };
    char err[2048];
    int ch;

    while ((ch = getopt_long(argc, argv, "+", longopts, NULL)) != -1) {
        switch (ch) {
        case 'e': o.endpoints = optarg; break;
        case 'a': o.ca_file = optarg; break;
        case 'c': o.cert_file = optarg; break;
        case 'k': o.key_file = optarg; break;
        case 'u': o.user = optarg; break;
        case 'p': o.password = optarg; break;
        case 't': o.timeout_ms = atol(optarg); break;
        default: return 2;
        }
    }
    if (optind >= argc) {
        fprintf(stderr, "usage: etcd_driver --endpoints E [options] COMMAND ARGS...\n");
        return 2;
    }
    struct etcd_client *c = etcd_client_new(&o, err, sizeof err);
    if (!c)
        return fail(err);
    int rc = run(c, argc - optind, argv + optind, err, sizeof err);
    etcd_client_free(c);
    fflush(stdout);
    return rc < 0 ? fail(err) : 0;
}
