/* etcd.h — a client for etcd's v3 JSON gateway (etcd 3.4: /v3/kv/range,
 * /v3/kv/put, /v3/kv/deleterange, /v3/kv/txn, /v3/lease/grant,
 * /v3/lease/keepalive, /v3/lease/revoke, /v3/watch, /v3/auth/authenticate)
 * over libcurl, with jansson for the JSON. Keys and values are bytes (base64
 * on the wire); int64 fields arrive as JSON strings and are parsed here.
 * Owns the HTTP connections and the auth token of one client; knows nothing
 * about certificates (store_etcd.c gives the keys their meaning).
 *
 * Endpoints: "HOST:PORT[,HOST:PORT...]" (IPv6 as [ADDR]:PORT). A request that
 * fails at the transport (refused, timeout) or with a gateway error meaning
 * "no leader / request timed out / leader changed" (or HTTP 503) is tried on
 * the next endpoint, each at most once per call; the endpoint that last
 * answered is tried first next time. Every request carries the gRPC metadata
 * "hasleader: true", so a member cut off from the quorum answers "etcdserver:
 * no leader" at once (about an election timeout after it lost its leader)
 * instead of holding the request, and ends a watch it serves.
 *
 * Blocking: every call waits at most timeout_ms per endpoint. One client is
 * used by one thread at a time; etcd_client_cancel is the only function safe
 * from another thread (it ends a running etcd_watch). */
#ifndef CORE_ETCD_H
#define CORE_ETCD_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct etcd_options {
    const char *endpoints;  /* required: "HOST:PORT[,HOST:PORT...]" */
    const char *ca_file;    /* NULL, or PEM CA bundle: then https:// is used */
    const char *cert_file;  /* NULL, or client certificate PEM (with key_file): https:// */
    const char *key_file;
    const char *user;       /* NULL: no auth; else user + password (authenticate, token header) */
    const char *password;
    long timeout_ms;        /* one request on one endpoint; 0: 2000 */
};

/* Parses "etcd://HOST:PORT[,HOST:PORT...]" (what --store takes). Writes the
 * endpoint list (without the scheme) to out. Refuses, with a message naming
 * the offending part: no "etcd://" scheme (another scheme is named), an
 * empty list or endpoint, a missing or non-numeric port or one outside
 * 1-65535, an empty host, a path, query or userinfo. Returns 0, or -1 with err. */
int etcd_parse_url(const char *url, char *out, size_t cap, char *err, size_t errlen);

struct etcd_client;

/* Copies the options; checks the files are readable; contacts nobody.
 * The first call initialises libcurl globally. NULL with err. */
struct etcd_client *etcd_client_new(const struct etcd_options *o, char *err, size_t errlen);
void etcd_client_free(struct etcd_client *c);

struct etcd_kv {
    char *key;              /* malloc'd, NUL-terminated (keys are text here) */
    char *value;            /* malloc'd, NUL-terminated after value_len bytes */
    size_t value_len;
    int64_t create_revision, mod_revision, lease;
};
void etcd_kv_clear(struct etcd_kv *kv);                 /* frees key and value, zeroes */
void etcd_kvs_free(struct etcd_kv *kvs, size_t n);

/* Every call below returns 0 on success, or -1 with the cause in err:
 * "etcd HOST:PORT: <transport error>" or "etcd HOST:PORT: <etcd's error
 * message>", led by the last cause etcd itself gave (else the last endpoint
 * tried), the other endpoints' causes after it ("also tried: ..."). Reads
 * are linearizable (they need quorum), so a cluster without quorum fails
 * them within timeout_ms. */

/* *found false when key does not exist (out untouched). */
int etcd_get(struct etcd_client *c, const char *key, struct etcd_kv *out, bool *found,
             char *err, size_t errlen);
/* Every key starting with prefix, sorted by key; *revision: the store's
 * revision at the read (for a watch to start after it). */
int etcd_get_prefix(struct etcd_client *c, const char *prefix, struct etcd_kv **kvs, size_t *n,
                    int64_t *revision, char *err, size_t errlen);
/* lease: 0 for none. */
int etcd_put(struct etcd_client *c, const char *key, const void *value, size_t len,
             int64_t lease, char *err, size_t errlen);
int etcd_delete(struct etcd_client *c, const char *key, char *err, size_t errlen);
/* Puts key only if it does not exist (txn: create_revision == 0), attached
 * to lease. *created true when this call created it; otherwise *current
 * (when not NULL) gets the existing key-value (caller clears it). */
int etcd_create(struct etcd_client *c, const char *key, const void *value, size_t len,
                int64_t lease, bool *created, struct etcd_kv *current, char *err, size_t errlen);
/* Deletes key only if its value is exactly value (txn): *deleted says so. */
int etcd_delete_if(struct etcd_client *c, const char *key, const void *value, size_t len,
                   bool *deleted, char *err, size_t errlen);

int etcd_lease_grant(struct etcd_client *c, long ttl_s, int64_t *lease, char *err, size_t errlen);
/* One keepalive round; *ttl_left: seconds the lease now has, 0 when it
 * expired (or was revoked) — then whatever was attached to it is gone. */
int etcd_lease_keepalive(struct etcd_client *c, int64_t lease, long *ttl_left,
                         char *err, size_t errlen);
/* A lease already expired or revoked is not an error (it is gone, as asked). */
int etcd_lease_revoke(struct etcd_client *c, int64_t lease, char *err, size_t errlen);

enum etcd_event_type { ETCD_EVENT_PUT, ETCD_EVENT_DELETE };
struct etcd_event {
    enum etcd_event_type type;
    const struct etcd_kv *kv;   /* valid during the callback only; value empty for DELETE */
};
/* Return false to end the watch (etcd_watch then returns 0). */
typedef bool etcd_watch_fn(void *arg, const struct etcd_event *ev);

/* Watches every key under prefix from start_revision (0: from now), calling
 * fn for each event in order, on the calling thread. Returns 0 when fn
 * returned false or etcd_client_cancel was called; -1 with err when the
 * stream could not be opened or broke (the caller re-reads and watches
 * again from *last_revision + 1). *last_revision: the revision of the last
 * event delivered (or of the watch's creation). idle_ms > 0: also return
 * -1 ("no progress for N ms") when nothing at all arrived for that long
 * (the watch asks for progress notifications, so a healthy stream is
 * never silent for long — but etcd sends them only every
 * --experimental-watch-progress-notify-interval, 10 minutes by default:
 * idle_ms below that needs the members configured lower). A watch whose
 * member loses its leader ends with -1 ("no leader"); a compacted
 * start_revision or a watch canceled by etcd ends with -1 naming it. */
int etcd_watch(struct etcd_client *c, const char *prefix, int64_t start_revision,
               long idle_ms, etcd_watch_fn *fn, void *arg, int64_t *last_revision,
               char *err, size_t errlen);
/* Makes a running etcd_watch return 0 soon (within ~100 ms) and every
 * later call fail at once. Safe from any thread. */
void etcd_client_cancel(struct etcd_client *c);

/* ---- Exposed for tests/fuzzing (not used by the rest of the server): the
 * parsers of what etcd sends, fed from a buffer instead of the network.
 * They run exactly the code the client runs on a live answer. */

/* Runs the watch stream parser over data as libcurl's write callback would
 * deliver it from a 200 /v3/watch answer: in pieces ending at the offsets
 * cuts[0..ncuts) (ascending; offsets past len or below the previous one are
 * skipped), then the rest. fn, arg, start_revision and *last_revision behave
 * as in etcd_watch. Returns 0 when every byte was read (an incomplete last
 * message stays unread, as a live stream would wait for it), 1 when fn
 * returned false, -1 with err when the stream ended the watch (an error
 * message, compacted, canceled, not JSON, a key or value not base64). */
int etcd_watch_feed(const void *data, size_t len, const size_t *cuts, size_t ncuts,
                    int64_t start_revision, etcd_watch_fn *fn, void *arg,
                    int64_t *last_revision, char *err, size_t errlen);

enum etcd_answer_kind {
    ETCD_ANSWER_RANGE,          /* /v3/kv/range: kvs, n, revision (etcd_get, etcd_get_prefix) */
    ETCD_ANSWER_CREATE,         /* etcd_create's /v3/kv/txn: succeeded; else kvs[0] when n == 1 */
    ETCD_ANSWER_DELETE_IF,      /* etcd_delete_if's /v3/kv/txn: succeeded */
    ETCD_ANSWER_LEASE_GRANT,    /* lease */
    ETCD_ANSWER_KEEPALIVE,      /* ttl */
    ETCD_ANSWER_AUTH,           /* token */
    ETCD_ANSWER_ERROR,          /* a body of any status (status given): msg, never fails */
};
struct etcd_answer {
    struct etcd_kv *kvs;
    size_t n;
    int64_t revision;
    bool succeeded;
    int64_t lease;
    long ttl;
    char *token;
    char msg[256];
};
/* Decodes body (len bytes) as the client decodes that kind of answer.
 * 0 with *a filled (etcd_answer_clear frees it), or -1 with err (*a then
 * holds nothing to free). */
int etcd_decode_answer(enum etcd_answer_kind kind, const char *body, size_t len, long status,
                       struct etcd_answer *a, char *err, size_t errlen);
void etcd_answer_clear(struct etcd_answer *a);

#endif
