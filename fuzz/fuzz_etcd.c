/* fuzz_etcd.c — libFuzzer target for what etcd sends the client (src/etcd.c):
 * the --store URL parser, the watch stream (objects cut anywhere across
 * write callbacks) and the decoders of range, txn, lease, keepalive, auth
 * and error answers. No crash, leak or UB (ASan/UBSan/LSan), plus:
 *   - a decoded kv keeps its promises: key and value non-NULL, the value
 *     NUL-terminated at value_len, the key a C string;
 *   - the watch stream gives the same events, result and last revision
 *     whether it arrives in one piece or cut at the fuzzer's offsets;
 *   - an accepted URL yields the endpoint list it was given; a refused one
 *     says why.
 *
 * Input: URL '\n' | ncuts (1 byte, & 15) | ncuts x 2-byte cut deltas |
 *        stop-after (1 byte: the watch callback returns false after that
 *        many events, 0: never) | start revision (1 byte) | stream bytes.
 * A missing part is empty. */
#include "etcd.h"
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void check_kv(const struct etcd_kv *kv)
{
    if (!kv->key || !kv->value)
        abort();
    if (kv->value[kv->value_len] != '\0')
        abort();
    (void)strlen(kv->key);   /* ASan: must be terminated inside its buffer */
}

struct events {
    size_t n, stop_after;
    uint64_t hash;
};

static uint64_t mix(uint64_t h, const void *p, size_t len)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < len; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static bool on_event(void *arg, const struct etcd_event *ev)
{
    struct events *e = arg;
    if (!ev->kv || (ev->type != ETCD_EVENT_PUT && ev->type != ETCD_EVENT_DELETE))
        abort();
    check_kv(ev->kv);
    e->n++;
    e->hash = mix(e->hash, &ev->type, sizeof ev->type);
    e->hash = mix(e->hash, ev->kv->key, strlen(ev->kv->key) + 1);
    e->hash = mix(e->hash, ev->kv->value, ev->kv->value_len);
    e->hash = mix(e->hash, &ev->kv->mod_revision, sizeof ev->kv->mod_revision);
    e->hash = mix(e->hash, &ev->kv->create_revision, sizeof ev->kv->create_revision);
    e->hash = mix(e->hash, &ev->kv->lease, sizeof ev->kv->lease);
    return e->stop_after == 0 || e->n < e->stop_after;
}

static void fuzz_url(const char *url)
{
    char out[128], err[512];
    err[0] = '\0';
    memset(out, 'x', sizeof out);
    if (etcd_parse_url(url, out, sizeof out, err, sizeof err) == 0) {
        size_t n = strnlen(out, sizeof out);
        const char *list = strstr(url, "://");
        if (n == sizeof out || n == 0 || !list || strcmp(list + 3, out) != 0)
            abort();
    } else if (strnlen(err, sizeof err) == 0 || strnlen(err, sizeof err) == sizeof err) {
        abort();
    }
}

static void fuzz_watch(const uint8_t *data, size_t len, const size_t *cuts, size_t ncuts,
                       size_t stop_after, int64_t start)
{
    struct events whole = { .stop_after = stop_after }, cut = { .stop_after = stop_after };
    int64_t last_whole = -7, last_cut = -7;
    char err1[512] = "", err2[512] = "";
    int r1 = etcd_watch_feed(data, len, NULL, 0, start, on_event, &whole, &last_whole, err1,
                             sizeof err1);
    int r2 = etcd_watch_feed(data, len, cuts, ncuts, start, on_event, &cut, &last_cut, err2,
                             sizeof err2);
    if (r1 < -1 || r1 > 1 || r1 != r2 || whole.n != cut.n || whole.hash != cut.hash ||
        last_whole != last_cut)
        abort();
    if (r1 < 0 && (err1[0] == '\0' || strcmp(err1, err2) != 0))
        abort();
}

static void fuzz_answers(const uint8_t *data, size_t len)
{
    static const enum etcd_answer_kind kinds[] = {
        ETCD_ANSWER_RANGE, ETCD_ANSWER_CREATE, ETCD_ANSWER_DELETE_IF, ETCD_ANSWER_LEASE_GRANT,
        ETCD_ANSWER_KEEPALIVE, ETCD_ANSWER_AUTH, ETCD_ANSWER_ERROR,
    };
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        struct etcd_answer a;
        char err[512] = "";
        long status = kinds[k] == ETCD_ANSWER_ERROR ? 400 + (long)(len % 200) : 200;
        if (etcd_decode_answer(kinds[k], (const char *)data, len, status, &a, err, sizeof err) < 0) {
            if (err[0] == '\0')
                abort();
            continue;
        }
        if ((a.n != 0) != (a.kvs != NULL))
            abort();
        if (kinds[k] == ETCD_ANSWER_CREATE && (a.n > 1 || (a.n && a.succeeded)))
            abort();
        for (size_t i = 0; i < a.n; i++)
            check_kv(&a.kvs[i]);
        if (kinds[k] == ETCD_ANSWER_LEASE_GRANT && a.lease == 0)
            abort();
        if (kinds[k] == ETCD_ANSWER_AUTH && (!a.token || !a.token[0]))
            abort();
        if (kinds[k] == ETCD_ANSWER_ERROR && (a.msg[0] == '\0' || !memchr(a.msg, 0, sizeof a.msg)))
            abort();
        etcd_answer_clear(&a);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size < 512 ? size : 512);
    size_t ulen = nl ? (size_t)(nl - data) : 0;
    char url[513];
    memcpy(url, data, ulen);
    url[ulen] = '\0';   /* an embedded NUL just ends the URL early */
    fuzz_url(url);

    size_t p = nl ? ulen + 1 : 0;
    size_t ncuts = p < size ? data[p++] & 15 : 0;
    size_t cuts[16], at = 0;
    for (size_t i = 0; i < ncuts; i++) {
        size_t d = 0;
        if (p + 2 <= size) {
            d = (size_t)data[p] | (size_t)data[p + 1] << 8;
            p += 2;
        }
        at += d % 1024;
        cuts[i] = at;
    }
    size_t stop_after = p < size ? data[p++] : 0;
    int64_t start = p < size ? data[p++] : 0;

    fuzz_watch(data + p, size - p, cuts, ncuts, stop_after, start);
    fuzz_answers(data + p, size - p);
    return 0;
}
