/* etcd.c — a client for etcd's v3 JSON gateway (see etcd.h): requests with
 * endpoint failover and re-authentication, base64 keys and values, and the
 * watch stream parsed as it arrives. */
#include "etcd.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "mem.h"

#define ETCD_BODY_MAX (64 * 1024 * 1024)   /* one gateway answer; a bigger one is refused */
#define ETCD_ERR_MAX 512                   /* one endpoint's cause */
#define ETCD_MSG_MAX 256                   /* etcd's message in it */

struct etcd_client {
    char **ec_eps;              /* "HOST:PORT", ec_neps of them */
    size_t ec_neps;
    size_t ec_cur;              /* the endpoint that last answered: tried first */
    bool ec_tls;                /* https:// (a CA or a client certificate was given) */
    char *ec_ca, *ec_cert, *ec_key;
    char *ec_user, *ec_password;
    char *ec_token;             /* NULL until authenticated */
    long ec_timeout_ms;
    CURL *ec_curl;              /* one easy handle, driven through ec_multi */
    CURLM *ec_multi;            /* owns the connection cache (keep-alive) */
    char ec_curlerr[CURL_ERROR_SIZE];
    CURLcode ec_last_rc;        /* of the last transfer: tells a timeout from a refusal */
    atomic_bool ec_cancel;
};

/* One response body, accumulated; or, for a watch, parsed as it arrives. */
struct body {
    char *b_data;
    size_t b_len, b_cap;
    size_t b_total;             /* bytes received (a watch drains b_data as it parses) */
    bool b_toolong;
    /* watch only (b_watch != NULL): */
    struct watch *b_watch;
    /* The splitter's state over the value being received (see on_watch_data):
     * scanned up to b_scan, b_depth brackets open, inside a string, after a
     * backslash in it. */
    size_t b_scan, b_depth;
    bool b_instr, b_esc;
};

/* ---------------------------------------------------------------- time, base64 */

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Standard base64 (the gateway's proto3 JSON for bytes). Caller frees. */
static char *b64_encode(const void *data, size_t len)
{
    char *out = xmalloc(4 * ((len + 2) / 3) + 1);
    EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    return out;
}

/* Decodes standard base64 (padding optional; proto3 JSON parsers also accept
 * URL-safe, so '-' and '_' are mapped). Returns a malloc'd buffer
 * NUL-terminated after *len bytes, or NULL when it is not base64. */
static char *b64_decode(const char *s, size_t *len)
{
    size_t n = strlen(s);
    char *in = xmalloc(n + 4);
    memcpy(in, s, n);
    for (size_t i = 0; i < n; i++)
        in[i] = in[i] == '-' ? '+' : in[i] == '_' ? '/' : in[i];
    while (n % 4)
        in[n++] = '=';
    char *out = xmalloc(n / 4 * 3 + 1);
    int r = n ? EVP_DecodeBlock((unsigned char *)out, (unsigned char *)in, (int)n) : 0;
    if (r < 0) {
        free(in);
        free(out);
        return NULL;
    }
    /* EVP_DecodeBlock counts the padding as zero bytes: take them off. */
    size_t pad = (n && in[n - 1] == '=') + (n > 1 && in[n - 2] == '=');
    *len = (size_t)r - pad;
    out[*len] = '\0';
    free(in);
    return out;
}

/* int64 fields come as JSON strings in etcd 3.4's gateway output (proto3
 * JSON); integers are accepted too. Missing: 0 (proto3 omits zero values). */
static int64_t json_i64(const json_t *o, const char *name)
{
    json_t *v = json_object_get(o, name);
    if (json_is_integer(v))
        return (int64_t)json_integer_value(v);
    if (json_is_string(v))
        return (int64_t)strtoll(json_string_value(v), NULL, 10);
    return 0;
}

static json_t *json_i64_new(int64_t v)
{
    char s[24];
    snprintf(s, sizeof s, "%lld", (long long)v);
    return json_string(s);
}

static json_t *json_b64_new(const void *data, size_t len)
{
    char *s = b64_encode(data, len);
    json_t *j = json_string(s);
    free(s);
    return j;
}

/* prefix with its last byte + 1 (bytes 0xff dropped first): the range_end
 * that selects every key starting with prefix. "\0" (every key) when the
 * prefix is empty or all 0xff. Caller frees; *len gets the length. */
static char *prefix_end(const char *prefix, size_t *len)
{
    size_t n = strlen(prefix);
    char *end = xstrdup(prefix);
    while (n > 0 && (unsigned char)end[n - 1] == 0xff)
        n--;
    if (n == 0) {
        end[0] = '\0';
        *len = 1;
        return end;
    }
    end[n - 1] = (char)((unsigned char)end[n - 1] + 1);
    *len = n;
    return end;
}

/* ---------------------------------------------------------------- key-values */

void etcd_kv_clear(struct etcd_kv *kv)
{
    if (!kv)
        return;
    free(kv->key);
    free(kv->value);
    memset(kv, 0, sizeof *kv);
}

void etcd_kvs_free(struct etcd_kv *kvs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        etcd_kv_clear(&kvs[i]);
    free(kvs);
}

/* Fills kv from the gateway's mvccpb.KeyValue object. -1 when a key or
 * value is not base64. */
static int kv_from_json(const json_t *o, struct etcd_kv *kv)
{
    const char *k = json_string_value(json_object_get(o, "key"));
    const char *v = json_string_value(json_object_get(o, "value"));
    size_t klen = 0;
    memset(kv, 0, sizeof *kv);
    kv->key = b64_decode(k ? k : "", &klen);
    kv->value = b64_decode(v ? v : "", &kv->value_len);
    if (!kv->key || !kv->value) {
        etcd_kv_clear(kv);
        return -1;
    }
    kv->create_revision = json_i64(o, "create_revision");
    kv->mod_revision = json_i64(o, "mod_revision");
    kv->lease = json_i64(o, "lease");
    return 0;
}

/* ---------------------------------------------------------------- URL parsing */

/* Checks one "HOST:PORT" or "[V6]:PORT" of length n. 0, or -1 with err. */
static int check_endpoint(const char *ep, size_t n, char *err, size_t errlen)
{
    const char *colon;
    size_t hostlen;
    if (n == 0) {
        snprintf(err, errlen, "empty endpoint (want HOST:PORT[,HOST:PORT...])");
        return -1;
    }
    if (ep[0] == '[') {
        const char *close = memchr(ep, ']', n);
        if (!close || close == ep + 1) {
            snprintf(err, errlen, "endpoint \"%.*s\": bad IPv6 address (want [ADDR]:PORT)", (int)n, ep);
            return -1;
        }
        for (const char *p = ep + 1; p < close; p++)
            if (!isxdigit((unsigned char)*p) && *p != ':' && *p != '.') {
                snprintf(err, errlen, "endpoint \"%.*s\": bad IPv6 address", (int)n, ep);
                return -1;
            }
        colon = close + 1 < ep + n && close[1] == ':' ? close + 1 : NULL;
        hostlen = (size_t)(close - ep) + 1;
        if (!colon && close + 1 != ep + n) {
            snprintf(err, errlen, "endpoint \"%.*s\": junk after the address", (int)n, ep);
            return -1;
        }
    } else {
        colon = memchr(ep, ':', n);
        hostlen = colon ? (size_t)(colon - ep) : n;
        if (colon && memchr(colon + 1, ':', n - hostlen - 1)) {
            snprintf(err, errlen, "endpoint \"%.*s\": an IPv6 address needs brackets ([ADDR]:PORT)",
                     (int)n, ep);
            return -1;
        }
        for (size_t i = 0; i < hostlen; i++)
            if (!isalnum((unsigned char)ep[i]) && ep[i] != '-' && ep[i] != '.' && ep[i] != '_') {
                snprintf(err, errlen, "endpoint \"%.*s\": bad character '%c' in the host", (int)n,
                         ep, ep[i]);
                return -1;
            }
    }
    if (hostlen == 0) {
        snprintf(err, errlen, "endpoint \"%.*s\": empty host", (int)n, ep);
        return -1;
    }
    if (!colon) {
        snprintf(err, errlen, "endpoint \"%.*s\": no port (want HOST:PORT, e.g. 127.0.0.1:2379)",
                 (int)n, ep);
        return -1;
    }
    const char *port = colon + 1;
    size_t plen = (size_t)(ep + n - port);
    long v = 0;
    for (size_t i = 0; i < plen; i++) {
        if (!isdigit((unsigned char)port[i]) || v > 65535) {
            v = -1;
            break;
        }
        v = v * 10 + (port[i] - '0');
    }
    if (plen == 0 || v < 1 || v > 65535) {
        snprintf(err, errlen, "endpoint \"%.*s\": port \"%.*s\" is not a number in 1-65535",
                 (int)n, ep, (int)plen, port);
        return -1;
    }
    return 0;
}

/* Checks a whole "HOST:PORT[,HOST:PORT...]" list. 0, or -1 with err. */
static int check_endpoints(const char *list, char *err, size_t errlen)
{
    if (!*list) {
        snprintf(err, errlen, "no endpoint (want HOST:PORT[,HOST:PORT...])");
        return -1;
    }
    for (const char *p = list;;) {
        size_t n = strcspn(p, ",");
        if (check_endpoint(p, n, err, errlen) < 0)
            return -1;
        if (!p[n])
            return 0;
        p += n + 1;
    }
}

int etcd_parse_url(const char *url, char *out, size_t cap, char *err, size_t errlen)
{
    char why[256];
    const char *sep = strstr(url, "://");
    if (!sep) {
        snprintf(err, errlen, "store URL \"%s\": not a URL (want etcd://HOST:PORT[,HOST:PORT...])", url);
        return -1;
    }
    if ((size_t)(sep - url) != 4 || strncasecmp(url, "etcd", 4) != 0) {
        snprintf(err, errlen, "store URL \"%s\": scheme \"%.*s\" is not supported (want etcd://HOST:PORT[,HOST:PORT...])",
                 url, (int)(sep - url), url);
        return -1;
    }
    const char *list = sep + 3;
    size_t bad = strcspn(list, "/?#@");
    if (list[bad]) {
        const char *what = list[bad] == '/' ? "a path" : list[bad] == '@' ? "userinfo (use the user and password options)"
                                                                            : list[bad] == '?' ? "a query" : "a fragment";
        snprintf(err, errlen, "store URL \"%s\": %s is not allowed (want etcd://HOST:PORT[,HOST:PORT...])",
                 url, what);
        return -1;
    }
    if (check_endpoints(list, why, sizeof why) < 0) {
        snprintf(err, errlen, "store URL \"%s\": %s", url, why);
        return -1;
    }
    if (strlen(list) >= cap) {
        snprintf(err, errlen, "store URL \"%s\": too long", url);
        return -1;
    }
    memcpy(out, list, strlen(list) + 1);
    return 0;
}

/* ---------------------------------------------------------------- setup */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

/* curl_global_init is not thread-safe in every libcurl: run it once. */
static void curl_init(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static int check_file(const char *what, const char *path, char *err, size_t errlen)
{
    if (path && access(path, R_OK) < 0) {
        snprintf(err, errlen, "etcd %s %s: %s", what, path, strerror(errno));
        return -1;
    }
    return 0;
}

struct etcd_client *etcd_client_new(const struct etcd_options *o, char *err, size_t errlen)
{
    char why[256];
    if (!o->endpoints || check_endpoints(o->endpoints, why, sizeof why) < 0) {
        snprintf(err, errlen, "etcd endpoints \"%s\": %s", o->endpoints ? o->endpoints : "",
                 o->endpoints ? why : "none given");
        return NULL;
    }
    if (check_file("CA file", o->ca_file, err, errlen) < 0 ||
        check_file("client certificate", o->cert_file, err, errlen) < 0 ||
        check_file("client key", o->key_file, err, errlen) < 0)
        return NULL;
    if (!o->cert_file != !o->key_file) {
        snprintf(err, errlen, "etcd: a client certificate needs its key, and a key its certificate");
        return NULL;
    }
    if (o->user && !o->password) {
        snprintf(err, errlen, "etcd user %s: no password given", o->user);
        return NULL;
    }
    pthread_once(&curl_once, curl_init);
    CURL *h = curl_init_rc == CURLE_OK ? curl_easy_init() : NULL;
    CURLM *m = h ? curl_multi_init() : NULL;
    if (!m) {
        if (h)
            curl_easy_cleanup(h);
        snprintf(err, errlen, "etcd: libcurl initialisation failed");
        return NULL;
    }
    struct etcd_client *c = xcalloc(1, sizeof *c);
    c->ec_curl = h;
    c->ec_multi = m;
    atomic_init(&c->ec_cancel, false);
    for (const char *p = o->endpoints;;) {
        size_t n = strcspn(p, ",");
        c->ec_eps = xrealloc(c->ec_eps, (c->ec_neps + 1) * sizeof *c->ec_eps);
        c->ec_eps[c->ec_neps++] = xstrndup(p, n);
        if (!p[n])
            break;
        p += n + 1;
    }
    c->ec_tls = o->ca_file || o->cert_file;
    c->ec_ca = o->ca_file ? xstrdup(o->ca_file) : NULL;
    c->ec_cert = o->cert_file ? xstrdup(o->cert_file) : NULL;
    c->ec_key = o->key_file ? xstrdup(o->key_file) : NULL;
    c->ec_user = o->user ? xstrdup(o->user) : NULL;
    c->ec_password = o->password ? xstrdup(o->password) : NULL;
    c->ec_timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 2000;

    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, c->ec_curlerr);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);   /* runs on a thread: no SIGALRM */
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_USERAGENT, "core_server-etcd/1");
    /* The gateway speaks HTTP/1.1; no proxy from the environment. */
    curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, c->ec_timeout_ms);
    if (c->ec_ca)
        curl_easy_setopt(h, CURLOPT_CAINFO, c->ec_ca);
    if (c->ec_cert) {
        curl_easy_setopt(h, CURLOPT_SSLCERT, c->ec_cert);
        curl_easy_setopt(h, CURLOPT_SSLKEY, c->ec_key);
    }
    return c;
}

void etcd_client_free(struct etcd_client *c)
{
    if (!c)
        return;
    curl_easy_cleanup(c->ec_curl);
    curl_multi_cleanup(c->ec_multi);
    for (size_t i = 0; i < c->ec_neps; i++)
        free(c->ec_eps[i]);
    free(c->ec_eps);
    free(c->ec_ca);
    free(c->ec_cert);
    free(c->ec_key);
    free(c->ec_user);
    if (c->ec_password)
        mem_wipe(c->ec_password, strlen(c->ec_password));
    free(c->ec_password);
    if (c->ec_token)
        mem_wipe(c->ec_token, strlen(c->ec_token));
    free(c->ec_token);
    free(c);
}

void etcd_client_cancel(struct etcd_client *c)
{
    atomic_store(&c->ec_cancel, true);
    /* Wakes the curl_multi_poll of a running call (thread-safe in libcurl). */
    curl_multi_wakeup(c->ec_multi);
}

/* ---------------------------------------------------------------- one exchange */

/* Watch state, reached from the write callback. */
struct watch {
    struct etcd_client *w_c;
    etcd_watch_fn *w_fn;
    void *w_arg;
    int64_t w_start;            /* start_revision asked for */
    int64_t *w_last;
    bool w_created;             /* the created response arrived */
    bool w_done;                /* fn returned false */
    bool w_failed;              /* the stream said compacted / canceled / error */
    char w_err[ETCD_ERR_MAX - 64];
};

static int on_watch_data(struct body *b);

/* Appends len bytes to b; parse_watch: then runs the watch parser over
 * them. len, or 0 to end the transfer (too long, or the watch is done or
 * failed: said in b_watch). The write callback's body, shared with
 * etcd_watch_feed. */
static size_t body_write(struct body *b, const char *p, size_t len, bool parse_watch)
{
    if (b->b_len + len > ETCD_BODY_MAX) {
        b->b_toolong = true;
        return 0;
    }
    if (b->b_len + len + 1 > b->b_cap) {
        b->b_cap = (b->b_len + len + 1) * 2;
        b->b_data = xrealloc(b->b_data, b->b_cap);
    }
    memcpy(b->b_data + b->b_len, p, len);
    b->b_len += len;
    b->b_total += len;
    b->b_data[b->b_len] = '\0';
    if (parse_watch && on_watch_data(b) < 0)
        return 0;   /* ends the transfer: done or failed, said in b_watch */
    return len;
}

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct body *b = arg;
    long status = 0;
    if (b->b_watch)
        curl_easy_getinfo(b->b_watch->w_c->ec_curl, CURLINFO_RESPONSE_CODE, &status);
    /* A watch refused (not 200) keeps its body whole, for gateway_error. */
    return body_write(b, p, size * n, b->b_watch && status == 200);
}

/* Runs the prepared transfer on ec_multi, waking every 50 ms at most to
 * notice etcd_client_cancel; idle_ms > 0 ends it when no byte arrived for
 * that long (*idle set). Returns curl's result. */
static CURLcode do_transfer(struct etcd_client *c, struct body *b, long idle_ms, bool *idle)
{
    CURLcode rc = CURLE_OK;
    int running = 1;
    size_t seen = 0;
    double last = now_ms();

    *idle = false;
    curl_multi_add_handle(c->ec_multi, c->ec_curl);
    while (running) {
        if (curl_multi_perform(c->ec_multi, &running) != CURLM_OK)
            break;
        if (!running)
            break;
        if (atomic_load(&c->ec_cancel)) {
            rc = CURLE_ABORTED_BY_CALLBACK;
            break;
        }
        if (b->b_total != seen) {
            seen = b->b_total;
            last = now_ms();
        } else if (idle_ms > 0 && now_ms() - last >= (double)idle_ms) {
            *idle = true;
            rc = CURLE_OPERATION_TIMEDOUT;
            break;
        }
        curl_multi_poll(c->ec_multi, NULL, 0, 50, NULL);
    }
    if (running == 0) {
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(c->ec_multi, &left)))
            if (msg->msg == CURLMSG_DONE && msg->easy_handle == c->ec_curl)
                rc = msg->data.result;
    }
    curl_multi_remove_handle(c->ec_multi, c->ec_curl);
    return rc;
}

/* POSTs body to path on endpoint i. Returns 0 with *status and the answer
 * in b when the endpoint answered at all, -1 with err at a transport error.
 * watch: no overall timeout (the stream lasts), idle_ms instead. */
static int do_post(struct etcd_client *c, size_t i, const char *path, const char *json,
                   bool with_token, struct body *b, long idle_ms, long *status, char *err,
                   size_t errlen)
{
    CURL *h = c->ec_curl;
    char url[512], auth[1024];
    struct curl_slist *hdrs = curl_slist_append(NULL, "Content-Type: application/json");
    bool idle;

    /* gRPC metadata "hasleader: true" (the gateway forwards Grpc-Metadata-*
     * headers): a member that lost its leader refuses at once with "no
     * leader" (failing over) instead of holding a request for its 5 s +
     * 2 election timeouts, and ends a running watch. Without it, a watch on
     * a member cut off from the quorum stays open and keeps sending progress
     * notifications, so idle_ms could not notice. */
    hdrs = curl_slist_append(hdrs, "Grpc-Metadata-hasleader: true");

    if (with_token && c->ec_token) {
        snprintf(auth, sizeof auth, "Authorization: %s", c->ec_token);
        hdrs = curl_slist_append(hdrs, auth);
    }
    snprintf(url, sizeof url, "%s://%s%s", c->ec_tls ? "https" : "http", c->ec_eps[i], path);
    c->ec_curlerr[0] = '\0';
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(json));
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, json);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, b);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, b->b_watch ? 0L : c->ec_timeout_ms);
    CURLcode rc = do_transfer(c, b, idle_ms, &idle);
    c->ec_last_rc = rc;
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
    curl_slist_free_all(hdrs);
    *status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    if (rc == CURLE_OK)
        return 0;
    if (atomic_load(&c->ec_cancel))
        snprintf(err, errlen, "etcd %s: cancelled", c->ec_eps[i]);
    else if (idle)
        snprintf(err, errlen, "etcd %s: no progress for %ld ms", c->ec_eps[i], idle_ms);
    else if (b->b_toolong)
        snprintf(err, errlen, "etcd %s: answer longer than %d bytes", c->ec_eps[i], ETCD_BODY_MAX);
    else
        snprintf(err, errlen, "etcd %s: %s%s", c->ec_eps[i],
                 c->ec_curlerr[0] ? c->ec_curlerr : curl_easy_strerror(rc),
                 rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CACERT_BADFILE
                     ? " (is the etcd CA file the one that signed the members' certificates?)" : "");
    return -1;
}

/* etcd's message from a gateway error body ({"error": ..., "message": ...,
 * "code": N}, or a stream's {"error": {"message": ...}}), into msg. */
static void gateway_error(const char *body, long status, char *msg, size_t msglen)
{
    json_t *j = json_loads(body ? body : "", JSON_DISABLE_EOF_CHECK, NULL);
    json_t *e = json_object_get(j, "error");
    const char *s = json_string_value(json_object_get(j, "message"));
    if (!s || !*s)
        s = json_string_value(e);
    if ((!s || !*s) && json_is_object(e))
        s = json_string_value(json_object_get(e, "message"));
    if (s && *s)
        snprintf(msg, msglen, "%s", s);
    else
        snprintf(msg, msglen, "HTTP %ld from the gateway: %.200s", status, body ? body : "");
    json_decref(j);
}

/* A 200 answer's body as JSON (NULL with jerr when it is not). Only its
 * first value counts: the keepalive answer is a stream of one
 * {"result": ...}. */
static json_t *parse_answer(const char *body, size_t len, json_error_t *jerr)
{
    return json_loadb(body ? body : "", body ? len : 0, JSON_DISABLE_EOF_CHECK, jerr);
}

/* The token of an authenticate answer, malloc'd; NULL when it has none. */
static char *token_from_answer(const char *body, size_t len)
{
    json_error_t jerr;
    json_t *j = parse_answer(body, len, &jerr);
    const char *tok = json_string_value(json_object_get(j, "token"));
    char *t = tok && *tok ? xstrdup(tok) : NULL;
    json_decref(j);
    return t;
}

/* Errors after which another member may do better. */
static bool should_fail_over(long status, const char *msg)
{
    /* "context deadline exceeded": a put on a member without quorum (HTTP 500). */
    return status == 503 || strstr(msg, "no leader") || strstr(msg, "request timed out") ||
           strstr(msg, "context deadline exceeded") ||
           strstr(msg, "leader changed") || strstr(msg, "not capable") ||
           strstr(msg, "timed out due to leader");
}

static bool token_rejected(const char *msg)
{
    return strstr(msg, "invalid auth token") || strstr(msg, "user name is empty") ||
           strstr(msg, "auth token");
}

/* The causes of one call's failed endpoints, in the order tried. The
 * report leads with the last cause that etcd itself gave (a live member's
 * "no leader" says more than the refused connections around it), else the
 * last endpoint's; the others follow as "also tried: ...". */
#define TRIES_MAX 8
enum { TRY_REFUSED, TRY_TIMED_OUT, TRY_ANSWERED };
struct tries {
    char t_cause[TRIES_MAX][ETCD_ERR_MAX];
    int t_rank[TRIES_MAX];          /* TRY_* below: the highest leads the report */
    size_t t_n;
};

static void tries_note(struct tries *t, const char *cause, int rank)
{
    size_t i = t->t_n < TRIES_MAX ? t->t_n++ : TRIES_MAX - 1;
    snprintf(t->t_cause[i], sizeof t->t_cause[i], "%s", cause);
    t->t_rank[i] = rank;
}

/* A member that timed out is alive but stuck (no quorum, overloaded): its
 * cause says more than a refused connection. */
static int transport_rank(const struct etcd_client *c)
{
    return c->ec_last_rc == CURLE_OPERATION_TIMEDOUT ? TRY_TIMED_OUT : TRY_REFUSED;
}

static void tries_report(const struct tries *t, char *err, size_t errlen)
{
    if (t->t_n == 0) {
        snprintf(err, errlen, "etcd: no endpoint");
        return;
    }
    size_t head = t->t_n - 1;
    for (size_t i = 0; i < t->t_n; i++)
        if (t->t_rank[i] >= t->t_rank[head])
            head = i;
    int len = snprintf(err, errlen, "%s", t->t_cause[head]);
    for (size_t i = 0, k = 0; i < t->t_n && len >= 0 && (size_t)len < errlen; i++) {
        if (i == head)
            continue;
        len += snprintf(err + len, errlen - (size_t)len, "%s%s", k++ ? "; " : " (also tried: ",
                        t->t_cause[i]);
    }
    if (t->t_n > 1 && len >= 0 && (size_t)len < errlen)
        snprintf(err + len, errlen - (size_t)len, ")");
}

/* Gets a token from endpoint i. 0 (also when no user is set), 1 when the
 * endpoint is to be skipped (err set), -1 with err when etcd refused. */
static int authenticate(struct etcd_client *c, size_t i, char *err, size_t errlen)
{
    if (!c->ec_user || c->ec_token)
        return 0;
    json_t *req = json_pack("{s:s, s:s}", "name", c->ec_user, "password", c->ec_password);
    char *json = json_dumps(req, JSON_COMPACT);
    struct body b = { 0 };
    long status;
    char msg[ETCD_MSG_MAX];
    int r = do_post(c, i, "/v3/auth/authenticate", json, false, &b, 0, &status, err, errlen);
    mem_wipe(json, strlen(json));
    free(json);
    json_decref(req);
    if (r < 0) {
        r = 1;
    } else if (status != 200) {
        gateway_error(b.b_data, status, msg, sizeof msg);
        snprintf(err, errlen, "etcd %s: authenticate as %s: %s", c->ec_eps[i], c->ec_user, msg);
        r = should_fail_over(status, msg) ? 1 : -1;
    } else {
        c->ec_token = token_from_answer(b.b_data, b.b_len);
        if (!c->ec_token) {
            snprintf(err, errlen, "etcd %s: authenticate as %s: no token in the answer (is auth enabled?)",
                     c->ec_eps[i], c->ec_user);
            r = -1;
        }
    }
    free(b.b_data);
    return r;
}

/* Sends req (consumed) to path, failing over between endpoints (each once,
 * starting with the last that answered) and re-authenticating once when the
 * token is refused. 0 with *resp (caller decrefs), or -1 with err. */
static int call(struct etcd_client *c, const char *path, json_t *req, json_t **resp, char *err,
                size_t errlen)
{
    char *json = json_dumps(req, JSON_COMPACT);
    char one[ETCD_ERR_MAX], msg[ETCD_MSG_MAX];
    struct tries tr = { 0 };
    bool reauthed = false;
    int rc = -1;

    json_decref(req);
    *resp = NULL;
    for (size_t k = 0; k < c->ec_neps; k++) {
        size_t i = (c->ec_cur + k) % c->ec_neps;
        struct body b = { 0 };
        long status;
        if (atomic_load(&c->ec_cancel)) {
            snprintf(one, sizeof one, "etcd %s: cancelled", c->ec_eps[i]);
            tries_note(&tr, one, TRY_ANSWERED);
            break;
        }
        int a = authenticate(c, i, one, sizeof one);
        if (a < 0) {
            tries_note(&tr, one, TRY_ANSWERED);
            break;
        }
        if (a > 0 || do_post(c, i, path, json, true, &b, 0, &status, one, sizeof one) < 0) {
            free(b.b_data);
            tries_note(&tr, one, transport_rank(c));
            continue;
        }
        if (status == 200) {
            json_error_t jerr;
            *resp = parse_answer(b.b_data, b.b_len, &jerr);
            free(b.b_data);
            c->ec_cur = i;
            if (!*resp) {
                snprintf(one, sizeof one, "etcd %s: %s: unreadable answer: %s", c->ec_eps[i],
                         path, jerr.text);
                tries_note(&tr, one, TRY_ANSWERED);
                break;
            }
            rc = 0;
            break;
        }
        gateway_error(b.b_data, status, msg, sizeof msg);
        free(b.b_data);
        snprintf(one, sizeof one, "etcd %s: %s", c->ec_eps[i], msg);
        if (c->ec_user && token_rejected(msg) && !reauthed) {
            /* Simple tokens expire (--auth-token-ttl): get a new one, once. */
            reauthed = true;
            free(c->ec_token);
            c->ec_token = NULL;
            k--;
            continue;
        }
        tries_note(&tr, one, TRY_ANSWERED);
        if (!should_fail_over(status, msg)) {
            c->ec_cur = i;
            break;
        }
    }
    free(json);
    if (rc < 0)
        tries_report(&tr, err, errlen);
    return rc;
}

/* ---------------------------------------------------------------- KV */

static json_t *range_req(const char *key, bool prefix)
{
    json_t *req = json_pack("{s:o}", "key", json_b64_new(key, strlen(key)));
    if (prefix) {
        size_t n;
        char *end = prefix_end(key, &n);
        json_object_set_new(req, "range_end", json_b64_new(end, n));
        free(end);
    }
    return req;
}

/* The kvs array of a RangeResponse into a malloc'd array. */
static int kvs_from_json(const json_t *arr, struct etcd_kv **kvs, size_t *n, const char *ep,
                         char *err, size_t errlen)
{
    size_t cnt = json_array_size(arr);
    *kvs = cnt ? xcalloc(cnt, sizeof **kvs) : NULL;
    *n = 0;
    for (size_t i = 0; i < cnt; i++) {
        if (kv_from_json(json_array_get(arr, i), &(*kvs)[i]) < 0) {
            etcd_kvs_free(*kvs, i);
            *kvs = NULL;
            snprintf(err, errlen, "etcd %s: a key or value in the answer is not base64", ep);
            return -1;
        }
    }
    *n = cnt;
    return 0;
}

/* A RangeResponse: its kvs, and (revision not NULL) the store's revision. */
static int range_from_json(const json_t *resp, struct etcd_kv **kvs, size_t *n,
                           int64_t *revision, const char *ep, char *err, size_t errlen)
{
    int rc = kvs_from_json(json_object_get(resp, "kvs"), kvs, n, ep, err, errlen);
    if (revision)
        *revision = json_i64(json_object_get(resp, "header"), "revision");
    return rc;
}

static const char *cur_ep(const struct etcd_client *c)
{
    return c->ec_eps[c->ec_cur];
}

int etcd_get(struct etcd_client *c, const char *key, struct etcd_kv *out, bool *found,
             char *err, size_t errlen)
{
    json_t *resp;
    struct etcd_kv *kvs;
    size_t n;
    *found = false;
    if (call(c, "/v3/kv/range", range_req(key, false), &resp, err, errlen) < 0)
        return -1;
    int rc = range_from_json(resp, &kvs, &n, NULL, cur_ep(c), err, errlen);
    json_decref(resp);
    if (rc < 0)
        return -1;
    if (n > 0) {
        *out = kvs[0];
        memset(&kvs[0], 0, sizeof kvs[0]);
        *found = true;
    }
    etcd_kvs_free(kvs, n);
    return 0;
}

int etcd_get_prefix(struct etcd_client *c, const char *prefix, struct etcd_kv **kvs, size_t *n,
                    int64_t *revision, char *err, size_t errlen)
{
    json_t *resp;
    *kvs = NULL;
    *n = 0;
    if (call(c, "/v3/kv/range", range_req(prefix, true), &resp, err, errlen) < 0)
        return -1;
    int rc = range_from_json(resp, kvs, n, revision, cur_ep(c), err, errlen);
    json_decref(resp);
    return rc;
}

static json_t *put_req(const char *key, const void *value, size_t len, int64_t lease)
{
    json_t *req = json_pack("{s:o, s:o}", "key", json_b64_new(key, strlen(key)),
                            "value", json_b64_new(value, len));
    if (lease)
        json_object_set_new(req, "lease", json_i64_new(lease));
    return req;
}

int etcd_put(struct etcd_client *c, const char *key, const void *value, size_t len,
             int64_t lease, char *err, size_t errlen)
{
    json_t *resp;
    if (call(c, "/v3/kv/put", put_req(key, value, len, lease), &resp, err, errlen) < 0)
        return -1;
    json_decref(resp);
    return 0;
}

int etcd_delete(struct etcd_client *c, const char *key, char *err, size_t errlen)
{
    json_t *resp;
    if (call(c, "/v3/kv/deleterange", range_req(key, false), &resp, err, errlen) < 0)
        return -1;
    json_decref(resp);
    return 0;
}

/* proto3 JSON omits false: "succeeded" is there only when true. */
static bool txn_succeeded(const json_t *resp)
{
    return json_is_true(json_object_get(resp, "succeeded"));
}

/* etcd_create's TxnResponse: *created, and when not (current not NULL) the
 * existing key-value from the failure branch's range (zeroed when none). */
static int create_from_json(const json_t *resp, bool *created, struct etcd_kv *current,
                            const char *ep, char *err, size_t errlen)
{
    int rc = 0;
    *created = txn_succeeded(resp);
    if (!*created && current) {
        json_t *rr = json_object_get(json_array_get(json_object_get(resp, "responses"), 0),
                                     "response_range");
        struct etcd_kv *kvs;
        size_t n;
        memset(current, 0, sizeof *current);
        rc = kvs_from_json(json_object_get(rr, "kvs"), &kvs, &n, ep, err, errlen);
        if (rc == 0 && n > 0) {
            *current = kvs[0];
            memset(&kvs[0], 0, sizeof kvs[0]);
        }
        if (rc == 0)
            etcd_kvs_free(kvs, n);
    }
    return rc;
}

int etcd_create(struct etcd_client *c, const char *key, const void *value, size_t len,
                int64_t lease, bool *created, struct etcd_kv *current, char *err, size_t errlen)
{
    json_t *bkey = json_b64_new(key, strlen(key)), *resp;
    json_t *req = json_pack("{s:[{s:O, s:s, s:s, s:s}], s:[{s:o}], s:[{s:{s:O}}]}",
                            "compare", "key", bkey, "target", "CREATE", "result", "EQUAL",
                            "create_revision", "0",
                            "success", "request_put", put_req(key, value, len, lease),
                            "failure", "request_range", "key", bkey);
    json_decref(bkey);
    *created = false;
    if (call(c, "/v3/kv/txn", req, &resp, err, errlen) < 0)
        return -1;
    int rc = create_from_json(resp, created, current, cur_ep(c), err, errlen);
    json_decref(resp);
    return rc;
}

int etcd_delete_if(struct etcd_client *c, const char *key, const void *value, size_t len,
                   bool *deleted, char *err, size_t errlen)
{
    json_t *bkey = json_b64_new(key, strlen(key)), *resp;
    json_t *req = json_pack("{s:[{s:O, s:s, s:s, s:o}], s:[{s:{s:O}}]}",
                            "compare", "key", bkey, "target", "VALUE", "result", "EQUAL",
                            "value", json_b64_new(value, len),
                            "success", "request_delete_range", "key", bkey);
    json_decref(bkey);
    *deleted = false;
    if (call(c, "/v3/kv/txn", req, &resp, err, errlen) < 0)
        return -1;
    *deleted = txn_succeeded(resp);
    json_decref(resp);
    return 0;
}

/* ---------------------------------------------------------------- leases */

/* A LeaseGrantResponse: *lease, or -1 with err when it has no ID. */
static int grant_from_json(const json_t *resp, int64_t *lease, const char *ep, char *err,
                           size_t errlen)
{
    *lease = json_i64(resp, "ID");
    const char *e = json_string_value(json_object_get(resp, "error"));
    if (*lease == 0) {
        snprintf(err, errlen, "etcd %s: lease grant: %s", ep, e && *e ? e : "no lease ID in the answer");
        return -1;
    }
    return 0;
}

int etcd_lease_grant(struct etcd_client *c, long ttl_s, int64_t *lease, char *err, size_t errlen)
{
    json_t *resp;
    if (call(c, "/v3/lease/grant", json_pack("{s:o}", "TTL", json_i64_new(ttl_s)), &resp, err,
             errlen) < 0)
        return -1;
    int rc = grant_from_json(resp, lease, cur_ep(c), err, errlen);
    json_decref(resp);
    return rc;
}

static int keepalive_from_json(const json_t *resp, long *ttl_left, const char *ep, char *err,
                               size_t errlen);

int etcd_lease_keepalive(struct etcd_client *c, int64_t lease, long *ttl_left, char *err,
                         size_t errlen)
{
    json_t *resp;
    if (call(c, "/v3/lease/keepalive", json_pack("{s:o}", "ID", json_i64_new(lease)), &resp,
             err, errlen) < 0)
        return -1;
    int rc = keepalive_from_json(resp, ttl_left, cur_ep(c), err, errlen);
    json_decref(resp);
    return rc;
}

/* A keepalive stream's first message: {"result": {...}}, or {"error":
 * {...}} when it broke ("lease not found": *ttl_left 0, not an error). */
static int keepalive_from_json(const json_t *resp, long *ttl_left, const char *ep, char *err,
                               size_t errlen)
{
    char msg[ETCD_MSG_MAX];
    json_t *res = json_object_get(resp, "result");
    int rc = 0;
    if (res) {
        *ttl_left = (long)json_i64(res, "TTL");   /* omitted (0) when the lease is gone */
    } else {
        char *s = json_dumps(resp, JSON_COMPACT);
        gateway_error(s, 200, msg, sizeof msg);
        free(s);
        if (strstr(msg, "lease not found")) {
            *ttl_left = 0;
        } else {
            snprintf(err, errlen, "etcd %s: lease keepalive: %s", ep, msg);
            rc = -1;
        }
    }
    return rc;
}

int etcd_lease_revoke(struct etcd_client *c, int64_t lease, char *err, size_t errlen)
{
    json_t *resp;
    char one[ETCD_ERR_MAX];
    if (call(c, "/v3/lease/revoke", json_pack("{s:o}", "ID", json_i64_new(lease)), &resp, one,
             sizeof one) < 0) {
        /* Already expired or revoked: what the caller wanted. */
        if (strstr(one, "requested lease not found") && !strstr(one, "also tried:"))
            return 0;
        snprintf(err, errlen, "%s", one);
        return -1;
    }
    json_decref(resp);
    return 0;
}

/* ---------------------------------------------------------------- watch */

/* One {"result": WatchResponse} (or {"error": ...}) of the stream. Returns
 * 0 to go on, -1 to end the stream (w_done or w_failed set). */
static int on_watch_message(struct watch *w, json_t *msg)
{
    json_t *res = json_object_get(msg, "result");
    if (!res) {
        char m[ETCD_MSG_MAX];
        char *s = json_dumps(msg, JSON_COMPACT);
        gateway_error(s, 200, m, sizeof m);
        free(s);
        snprintf(w->w_err, sizeof w->w_err, "watch broke: %s", m);
        w->w_failed = true;
        return -1;
    }
    int64_t compact = json_i64(res, "compact_revision");
    if (json_is_true(json_object_get(res, "canceled")) || compact) {
        const char *why = json_string_value(json_object_get(res, "cancel_reason"));
        if (compact)
            snprintf(w->w_err, sizeof w->w_err, "watch from revision %lld: compacted (oldest "
                     "revision kept: %lld; re-read and watch again from there)",
                     (long long)w->w_start, (long long)compact);
        else
            snprintf(w->w_err, sizeof w->w_err, "watch canceled by etcd: %s",
                     why && *why ? why : "no reason given");
        w->w_failed = true;
        return -1;
    }
    json_t *events = json_object_get(res, "events");
    if (json_is_true(json_object_get(res, "created"))) {
        w->w_created = true;
        *w->w_last = w->w_start > 0 ? w->w_start - 1
                                    : json_i64(json_object_get(res, "header"), "revision");
    } else if (json_array_size(events) == 0) {
        /* A progress notification: every event up to header.revision was sent. */
        int64_t rev = json_i64(json_object_get(res, "header"), "revision");
        if (rev > *w->w_last)
            *w->w_last = rev;
    }
    for (size_t i = 0; i < json_array_size(events); i++) {
        json_t *e = json_array_get(events, i), *t = json_object_get(e, "type");
        struct etcd_kv kv;
        if (kv_from_json(json_object_get(e, "kv"), &kv) < 0) {
            snprintf(w->w_err, sizeof w->w_err, "watch: a key or value is not base64");
            w->w_failed = true;
            return -1;
        }
        /* proto3 JSON omits the default PUT (0); DELETE is "DELETE" or 1. */
        bool del = (json_is_string(t) && strcmp(json_string_value(t), "DELETE") == 0) ||
                   (json_is_integer(t) && json_integer_value(t) == 1);
        struct etcd_event ev = { del ? ETCD_EVENT_DELETE : ETCD_EVENT_PUT, &kv };
        bool more = w->w_fn(w->w_arg, &ev);
        *w->w_last = kv.mod_revision;
        etcd_kv_clear(&kv);
        if (!more) {
            w->w_done = true;
            return -1;
        }
    }
    return 0;
}

/* Parses every complete JSON value at the front of the stream buffer and
 * keeps the incomplete rest for the next write callback. The stream is
 * objects, newline-separated or not, cut anywhere by the transport: a value
 * ends where its outermost bracket closes (brackets inside strings do not
 * count). The scan resumes where the last callback stopped, so a big value
 * arriving in many pieces is scanned once; jansson parses only a complete
 * value (asking it about an incomplete one does not tell "cut" from
 * "wrong": a cut inside "true" or a "\u" escape reads as an invalid token). */
static int on_watch_data(struct body *b)
{
    struct watch *w = b->b_watch;
    size_t off = 0;
    int rc = 0;
    while (rc == 0) {
        if (b->b_depth == 0) {
            while (off < b->b_len && isspace((unsigned char)b->b_data[off]))
                off++;
            if (off == b->b_len)
                break;
            if (b->b_data[off] != '{' && b->b_data[off] != '[') {
                snprintf(w->w_err, sizeof w->w_err,
                         "watch: unreadable stream: '%c' where a JSON object should start",
                         isprint((unsigned char)b->b_data[off]) ? b->b_data[off] : '?');
                w->w_failed = true;
                return -1;
            }
            b->b_scan = off;
        }
        size_t i = b->b_scan;
        bool whole = false;
        for (; i < b->b_len && !whole; i++) {
            char ch = b->b_data[i];
            if (b->b_instr) {
                if (b->b_esc)
                    b->b_esc = false;
                else if (ch == '\\')
                    b->b_esc = true;
                else if (ch == '"')
                    b->b_instr = false;
            } else if (ch == '"') {
                b->b_instr = true;
            } else if (ch == '{' || ch == '[') {
                b->b_depth++;
            } else if (ch == '}' || ch == ']') {
                whole = --b->b_depth == 0;
            }
        }
        b->b_scan = i;
        if (!whole)
            break;   /* the rest of this value is still on its way */
        json_error_t jerr;
        json_t *msg = json_loadb(b->b_data + off, i - off, 0, &jerr);
        if (!msg) {
            snprintf(w->w_err, sizeof w->w_err, "watch: unreadable stream: %s", jerr.text);
            w->w_failed = true;
            return -1;
        }
        off = i;
        rc = on_watch_message(w, msg);
        json_decref(msg);
    }
    memmove(b->b_data, b->b_data + off, b->b_len - off);
    b->b_len -= off;
    b->b_scan -= off;
    b->b_data[b->b_len] = '\0';
    return rc;
}

int etcd_watch_feed(const void *data, size_t len, const size_t *cuts, size_t ncuts,
                    int64_t start_revision, etcd_watch_fn *fn, void *arg,
                    int64_t *last_revision, char *err, size_t errlen)
{
    struct watch w = { .w_fn = fn, .w_arg = arg, .w_start = start_revision,
                       .w_last = last_revision };
    struct body b = { .b_watch = &w };
    const char *p = data;
    size_t at = 0;
    *last_revision = start_revision > 0 ? start_revision - 1 : 0;
    for (size_t k = 0; k <= ncuts && !w.w_done && !w.w_failed && !b.b_toolong; k++) {
        size_t to = k < ncuts && cuts[k] < len ? cuts[k] : len;
        if (to < at)
            continue;
        body_write(&b, p + at, to - at, true);
        at = to;
    }
    free(b.b_data);
    if (w.w_failed || b.b_toolong) {
        snprintf(err, errlen, "%s", b.b_toolong ? "watch: a message longer than the limit" : w.w_err);
        return -1;
    }
    return w.w_done ? 1 : 0;
}

int etcd_watch(struct etcd_client *c, const char *prefix, int64_t start_revision,
               long idle_ms, etcd_watch_fn *fn, void *arg, int64_t *last_revision,
               char *err, size_t errlen)
{
    size_t n;
    char *end = prefix_end(prefix, &n);
    json_t *cr = json_pack("{s:o, s:o, s:b}", "key", json_b64_new(prefix, strlen(prefix)),
                           "range_end", json_b64_new(end, n), "progress_notify", 1);
    free(end);
    if (start_revision > 0)
        json_object_set_new(cr, "start_revision", json_i64_new(start_revision));
    json_t *req = json_pack("{s:o}", "create_request", cr);
    char *json = json_dumps(req, JSON_COMPACT);
    char one[ETCD_ERR_MAX], msg[ETCD_MSG_MAX];
    struct tries tr = { 0 };
    struct watch w = { .w_c = c, .w_fn = fn, .w_arg = arg, .w_start = start_revision,
                       .w_last = last_revision };
    bool reauthed = false;
    int rc = -1;

    json_decref(req);
    *last_revision = start_revision > 0 ? start_revision - 1 : 0;
    for (size_t k = 0; k < c->ec_neps; k++) {
        size_t i = (c->ec_cur + k) % c->ec_neps;
        struct body b = { .b_watch = &w };
        long status = 0;
        if (atomic_load(&c->ec_cancel)) {
            rc = 0;
            break;
        }
        int a = authenticate(c, i, one, sizeof one);
        if (a < 0) {
            tries_note(&tr, one, TRY_ANSWERED);
            break;
        }
        int t = a > 0 ? -1 : do_post(c, i, "/v3/watch", json, true, &b, idle_ms, &status, one,
                                     sizeof one);
        if (w.w_done || atomic_load(&c->ec_cancel)) {
            free(b.b_data);
            rc = 0;
            break;
        }
        if (w.w_failed) {
            snprintf(one, sizeof one, "etcd %s: %s", c->ec_eps[i], w.w_err);
            free(b.b_data);
            tries_note(&tr, one, TRY_ANSWERED);
            break;
        }
        if (t == 0 && status != 200) {
            gateway_error(b.b_data, status, msg, sizeof msg);
            snprintf(one, sizeof one, "etcd %s: watch: %s", c->ec_eps[i], msg);
        } else if (t == 0) {
            snprintf(one, sizeof one, "etcd %s: the watch stream ended", c->ec_eps[i]);
        }
        free(b.b_data);
        if (t == 0 && status != 200 && c->ec_user && token_rejected(msg) && !reauthed) {
            reauthed = true;
            free(c->ec_token);
            c->ec_token = NULL;
            k--;
            continue;
        }
        tries_note(&tr, one, t == 0 || w.w_created ? TRY_ANSWERED : transport_rank(c));
        if (w.w_created) {
            c->ec_cur = i;
            break;   /* it ran, then broke: the caller re-reads and watches again */
        }
        if (t == 0 && status != 200 && !should_fail_over(status, msg))
            break;
    }
    free(json);
    if (rc < 0)
        tries_report(&tr, err, errlen);
    return rc;
}

/* ---------------------------------------------------------------- decoding without a network */

void etcd_answer_clear(struct etcd_answer *a)
{
    etcd_kvs_free(a->kvs, a->n);
    free(a->token);
    memset(a, 0, sizeof *a);
}

int etcd_decode_answer(enum etcd_answer_kind kind, const char *body, size_t len, long status,
                       struct etcd_answer *a, char *err, size_t errlen)
{
    static const char ep[] = "(fed)";
    json_error_t jerr;
    memset(a, 0, sizeof *a);
    if (kind == ETCD_ANSWER_ERROR) {
        /* gateway_error reads a NUL-terminated body, as the transfer leaves it. */
        char *s = xmalloc(len + 1);
        memcpy(s, body, len);
        s[len] = '\0';
        gateway_error(s, status, a->msg, sizeof a->msg);
        free(s);
        return 0;
    }
    if (kind == ETCD_ANSWER_AUTH) {
        a->token = token_from_answer(body, len);
        if (!a->token) {
            snprintf(err, errlen, "etcd %s: no token in the answer", ep);
            return -1;
        }
        return 0;
    }
    json_t *resp = parse_answer(body, len, &jerr);
    if (!resp) {
        snprintf(err, errlen, "etcd %s: unreadable answer: %s", ep, jerr.text);
        return -1;
    }
    int rc = -1;
    switch (kind) {
    case ETCD_ANSWER_RANGE:
        rc = range_from_json(resp, &a->kvs, &a->n, &a->revision, ep, err, errlen);
        break;
    case ETCD_ANSWER_CREATE: {
        struct etcd_kv cur;
        rc = create_from_json(resp, &a->succeeded, &cur, ep, err, errlen);
        if (rc == 0 && !a->succeeded && cur.key) {
            a->kvs = xcalloc(1, sizeof *a->kvs);
            a->kvs[0] = cur;
            a->n = 1;
        }
        break;
    }
    case ETCD_ANSWER_DELETE_IF:
        a->succeeded = txn_succeeded(resp);
        rc = 0;
        break;
    case ETCD_ANSWER_LEASE_GRANT:
        rc = grant_from_json(resp, &a->lease, ep, err, errlen);
        break;
    case ETCD_ANSWER_KEEPALIVE:
        rc = keepalive_from_json(resp, &a->ttl, ep, err, errlen);
        break;
    default:
        snprintf(err, errlen, "etcd: unknown answer kind %d", (int)kind);
        break;
    }
    json_decref(resp);
    return rc;
}
