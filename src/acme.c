/* acme.c — the RFC 8555 client: one small function per ACME request, and
 * acme_obtain, the driver that reads like RFC 8555 section 7.1 (see acme.h). */
#include "acme.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "challenge.h"
#include "clock.h"
#include "jws.h"
#include "log.h"
#include "mem.h"

#define BODY_MAX        (1 << 20)  /* a chain or a JSON object is a few KiB */
#define NONCE_MAX       256
#define NONCE_RETRIES   8          /* badNonce retries of one request (a CA rejects a few %) */
/* First wait before polling again, doubled each time: pebble validates in
 * ~3 ms and issues in ~10; Let's Encrypt takes ~1 s, which this reaches in
 * seven light requests before settling at POLL_MAX_MS. */
#define POLL_FIRST_MS   10
#define POLL_MAX_MS     2000       /* longest wait between polls without Retry-After */
#define RETRY_AFTER_MAX 60         /* seconds: a longer Retry-After ends the attempt */

/* The problem types the client reacts to (RFC 8555 section 6.7). */
#define PROBLEM_BAD_NONCE  "urn:ietf:params:acme:error:badNonce"
#define PROBLEM_NO_ACCOUNT "urn:ietf:params:acme:error:accountDoesNotExist"

struct acme_client {
    CURL *ac_curl;              /* one handle: keeps the connection to the CA open */
    char ac_curlerr[CURL_ERROR_SIZE];
    struct curl_slist *ac_hdr_jose;  /* Content-Type: application/jose+json */
    struct curl_slist *ac_hdr_pem;   /* the same plus Accept: application/pem-certificate-chain */
    char *ac_dir_url;           /* options, copied */
    char *ac_ca_file;
    char *ac_email;
    char *ac_certs_dir;
    unsigned ac_challenges;
    long ac_request_ms, ac_obtain_ms;
    char *ac_url_nonce;         /* from the directory; NULL until it is read */
    char *ac_url_account;
    char *ac_url_order;
    EVP_PKEY *ac_key;           /* account key; NULL until loaded */
    char *ac_thumb;             /* its RFC 7638 thumbprint, for key authorizations */
    char *ac_kid;               /* account URL; NULL until newAccount answered */
    char ac_nonce[NONCE_MAX];   /* the freshest Replay-Nonce; "" when used up */
    long ac_retry_after;        /* Retry-After of the last CA error, seconds */
    char ac_problem[128];       /* type of the last CA problem document; "" none */
    uint64_t ac_deadline_ms;      /* end of the current acme_obtain (clock_mono_ms) */
    atomic_bool ac_cancel;
    unsigned ac_use;            /* ACME_CHALLENGE_* bits the current acme_obtain may answer */
    unsigned ac_failed;         /* the challenge type whose validation failed; 0: none */
    acme_abort_fn *ac_abort;    /* NULL, or asked during an order whether to give it up */
    void *ac_abort_arg;
    const char *ac_domain;      /* the domain of the current acme_obtain, for ac_abort;
                                   NULL when it is not to be asked */
    uint64_t ac_abort_at_ms;    /* when ac_abort was last asked (clock_mono_ms) */
    bool ac_gave_up;            /* ac_abort said to give the current order up */
};

/* One HTTP answer. */
struct resp {
    long r_status;              /* HTTP status; 0 before an answer */
    char *r_body;               /* NUL-terminated; r_len bytes */
    size_t r_len;
    bool r_toolong;             /* the body passed BODY_MAX and was cut */
    char r_location[1024];
    char r_ctype[128];
    long r_retry_after;         /* seconds, -1 when absent */
};

/* An order and its last known state. */
struct order {
    char *o_url;
    json_t *o_obj;
};

static void resp_reset(struct resp *r)
{
    free(r->r_body);
    memset(r, 0, sizeof *r);
    r->r_retry_after = -1;
}

/* ---------------------------------------------------------------- time */

static bool past_deadline(const struct acme_client *c)
{
    return clock_mono_ms() >= c->ac_deadline_ms;
}

/* True when the current order is to be given up: acme_client_cancel, or
 * the owner's abort callback (asked at most every 50 ms: it may look
 * something up, and curl calls on_progress far more often). */
static bool stopped(struct acme_client *c)
{
    if (atomic_load(&c->ac_cancel))
        return true;
    if (!c->ac_abort || !c->ac_domain)
        return false;
    uint64_t t = clock_mono_ms();
    if (t - c->ac_abort_at_ms < 50)
        return false;
    c->ac_abort_at_ms = t;
    if (!c->ac_abort(c->ac_domain, c->ac_abort_arg))
        return false;
    c->ac_gave_up = true;   /* stays given up: later requests fail at once */
    return true;
}

/* True once the current order was given up (without asking again). */
static bool given_up(const struct acme_client *c)
{
    return atomic_load(&c->ac_cancel) || c->ac_gave_up;
}

/* Sleeps ms in 10 ms slices so acme_client_cancel ends it soon. -1 when
 * cancelled or given up. */
static int nap(struct acme_client *c, long ms)
{
    while (ms > 0 && !stopped(c)) {
        long step = ms < 10 ? ms : 10;
        struct timespec ts = { 0, step * 1000000L };
        nanosleep(&ts, NULL);
        ms -= step;
    }
    return given_up(c) || stopped(c) ? -1 : 0;
}

/* ---------------------------------------------------------------- HTTP */

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct resp *r = arg;
    size_t len = size * n;
    if (r->r_len + len > BODY_MAX) {
        r->r_toolong = true;
        return 0;   /* ends the transfer with CURLE_WRITE_ERROR */
    }
    r->r_body = xrealloc(r->r_body, r->r_len + len + 1);
    memcpy(r->r_body + r->r_len, p, len);
    r->r_len += len;
    r->r_body[r->r_len] = '\0';
    return len;
}

/* Copies a header's value, trimmed, into out if line is "name: value". */
static bool header_value(const char *line, size_t len, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    if (len <= nl || line[nl] != ':' || strncasecmp(line, name, nl) != 0)
        return false;
    const char *v = line + nl + 1, *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
        end--;
    size_t n = (size_t)(end - v) < cap - 1 ? (size_t)(end - v) : cap - 1;
    memcpy(out, v, n);
    out[n] = '\0';
    return true;
}

struct hdr_ctx {
    struct acme_client *c;
    struct resp *r;
};

static size_t on_header(char *line, size_t size, size_t n, void *arg)
{
    struct hdr_ctx *h = arg;
    size_t len = size * n;
    char v[128];

    /* RFC 8555 section 6.5: every response may carry a fresh nonce; keep
     * the newest so the next request needs no newNonce round trip. */
    header_value(line, len, "Replay-Nonce", h->c->ac_nonce, sizeof h->c->ac_nonce);
    header_value(line, len, "Location", h->r->r_location, sizeof h->r->r_location);
    header_value(line, len, "Content-Type", h->r->r_ctype, sizeof h->r->r_ctype);
    if (header_value(line, len, "Retry-After", v, sizeof v)) {
        /* Either delta-seconds or an HTTP-date (RFC 9110 section 10.2.3). */
        char *end;
        long secs = strtol(v, &end, 10);
        if (end == v || *end) {
            time_t when = curl_getdate(v, NULL);
            secs = when < 0 ? -1 : (long)(when - time(NULL));
        }
        h->r->r_retry_after = secs < 0 ? 0 : secs;
    }
    return len;
}

/* Makes curl abandon a transfer when the client is cancelled. */
static int on_progress(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    struct acme_client *c = arg;
    return given_up(c) || stopped(c) ? 1 : 0;
}

/* One HTTP exchange: method "GET", "HEAD" or "POST" (body: the JWS). Fills
 * r. Returns 0 when the CA answered (any status), -1 with err when it could
 * not be reached or the answer was unreadable. */
static int http_do(struct acme_client *c, const char *method, const char *url, const char *body,
                   bool want_pem, struct resp *r, char *err, size_t errlen)
{
    CURL *h = c->ac_curl;
    struct hdr_ctx hc = { c, r };

    resp_reset(r);
    c->ac_curlerr[0] = '\0';
    if (given_up(c)) {
        snprintf(err, errlen, "%s %s: cancelled", method, url);
        return -1;
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);   /* resets the method and NOBODY */
    if (strcmp(method, "HEAD") == 0) {
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    }
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, want_pem ? c->ac_hdr_pem : c->ac_hdr_jose);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &hc);
    CURLcode rc = curl_easy_perform(h);
    if (rc != CURLE_OK) {
        if (given_up(c))
            snprintf(err, errlen, "%s %s: cancelled", method, url);
        else if (r->r_toolong)
            snprintf(err, errlen, "%s %s: answer longer than %d bytes", method, url, BODY_MAX);
        else
            snprintf(err, errlen, "%s %s: %s (is the CA reachable and the directory URL "
                     "right?%s)", method, url, c->ac_curlerr[0] ? c->ac_curlerr : curl_easy_strerror(rc),
                     rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CACERT_BADFILE
                         ? " for a test CA, pass its root with --acme-ca" : "");
        log_warn("acme: %s", err);
        return -1;
    }
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->r_status);
    if (!r->r_body)
        r->r_body = xstrdup("");
    return 0;
}

/* ---------------------------------------------------------------- problems */

/* Turns a CA error answer into err and the log: the problem document's type
 * and detail (RFC 7807; RFC 8555 section 6.7) and each subproblem's. what
 * names the request ("newOrder"). Also records Retry-After. */
static void problem(struct acme_client *c, const char *what, const char *url,
                    const struct resp *r, char *err, size_t errlen)
{
    json_t *p = json_loads(r->r_body, 0, NULL);
    const char *type = json_string_value(json_object_get(p, "type"));
    const char *detail = json_string_value(json_object_get(p, "detail"));
    size_t off;

    c->ac_retry_after = r->r_retry_after > 0 ? r->r_retry_after : 0;
    snprintf(c->ac_problem, sizeof c->ac_problem, "%s", type ? type : "");
    if (type) {
        off = (size_t)snprintf(err, errlen, "%s %s: HTTP %ld, %s: %s", what, url, r->r_status,
                               type, detail ? detail : "(no detail)");
    } else {
        /* Not a problem document (a proxy's error page?): show its start. */
        off = (size_t)snprintf(err, errlen, "%s %s: HTTP %ld, %.120s", what, url, r->r_status,
                               r->r_body);
    }
    json_t *subs = json_object_get(p, "subproblems"), *s;
    size_t i;
    json_array_foreach(subs, i, s) {
        if (off >= errlen)
            break;
        off += (size_t)snprintf(err + off, errlen - off, "; %s: %s: %s",
            json_string_value(json_object_get(json_object_get(s, "identifier"), "value")) ?: "?",
            json_string_value(json_object_get(s, "type")) ?: "?",
            json_string_value(json_object_get(s, "detail")) ?: "");
    }
    if (c->ac_retry_after)
        log_warn("acme: %s (the CA asks to retry after %ld s)", err, c->ac_retry_after);
    else
        log_warn("acme: %s", err);
    json_decref(p);
}

static bool is_problem(const struct resp *r, const char *type)
{
    json_t *p = json_loads(r->r_body, 0, NULL);
    bool yes = p && json_is_string(json_object_get(p, "type")) &&
               strcmp(json_string_value(json_object_get(p, "type")), type) == 0;
    json_decref(p);
    return yes;
}

/* Parses a JSON object answer. NULL with err. */
static json_t *parse_object(const char *what, const char *url, const struct resp *r,
                            char *err, size_t errlen)
{
    json_error_t je;
    json_t *o = json_loads(r->r_body, 0, &je);
    if (!json_is_object(o)) {
        snprintf(err, errlen, "%s %s: the answer is not a JSON object (%s)", what, url,
                 o ? "other JSON" : je.text);
        log_warn("acme: %s", err);
        json_decref(o);
        return NULL;
    }
    return o;
}

/* ---------------------------------------------------------------- requests */

/* GET the directory (RFC 8555 section 7.1.1). */
static int dodirs(struct acme_client *c, char *err, size_t errlen)
{
    struct resp r = { 0 };
    json_t *d = NULL;
    int rc = -1;

    if (http_do(c, "GET", c->ac_dir_url, NULL, false, &r, err, errlen) < 0)
        goto out;
    if (r.r_status != 200) {
        problem(c, "directory", c->ac_dir_url, &r, err, errlen);
        goto out;
    }
    if (!(d = parse_object("directory", c->ac_dir_url, &r, err, errlen)))
        goto out;
    const char *nonce = json_string_value(json_object_get(d, "newNonce"));
    const char *acct = json_string_value(json_object_get(d, "newAccount"));
    const char *order = json_string_value(json_object_get(d, "newOrder"));
    if (!nonce || !acct || !order) {
        snprintf(err, errlen, "directory %s: newNonce, newAccount or newOrder missing "
                 "(is this an ACME v2 directory URL?)", c->ac_dir_url);
        log_warn("acme: %s", err);
        goto out;
    }
    c->ac_url_nonce = xstrdup(nonce);
    c->ac_url_account = xstrdup(acct);
    c->ac_url_order = xstrdup(order);
    log_info("acme: directory %s read", c->ac_dir_url);
    rc = 0;
out:
    json_decref(d);
    resp_reset(&r);
    return rc;
}

/* HEAD newNonce (section 7.2): on_header stores the Replay-Nonce. */
static int donewnonce(struct acme_client *c, char *err, size_t errlen)
{
    struct resp r = { 0 };
    int rc = -1;

    if (http_do(c, "HEAD", c->ac_url_nonce, NULL, false, &r, err, errlen) < 0)
        goto out;
    if (!c->ac_nonce[0]) {
        snprintf(err, errlen, "newNonce %s: HTTP %ld without a Replay-Nonce",
                 c->ac_url_nonce, r.r_status);
        log_warn("acme: %s", err);
        goto out;
    }
    log_debug("acme: newNonce %s: fresh nonce", c->ac_url_nonce);
    rc = 0;
out:
    resp_reset(&r);
    return rc;
}

/* A signed POST (section 6.2) of payload to url; "" is POST-as-GET. Signs
 * with the kid once the account is known, else with the jwk. A badNonce
 * refusal is retried with the nonce that came with it (section 6.5), up to
 * NONCE_RETRIES times. Returns 0 when the CA answered (any status). */
static int acme_post(struct acme_client *c, const char *url, const char *payload, bool want_pem,
                     struct resp *r, char *err, size_t errlen)
{
    for (int attempt = 0;; attempt++) {
        if (!c->ac_nonce[0] && donewnonce(c, err, errlen) < 0)
            return -1;
        char *jws = jws_sign(c->ac_key, c->ac_kid, c->ac_nonce, url, payload, err, errlen);
        if (!jws)
            return -1;
        c->ac_nonce[0] = '\0';   /* each nonce is good for one request */
        int rc = http_do(c, "POST", url, jws, want_pem, r, err, errlen);
        free(jws);
        if (rc < 0)
            return -1;
        if (r->r_status == 400 && attempt < NONCE_RETRIES && is_problem(r, PROBLEM_BAD_NONCE)) {
            log_info("acme: POST %s: badNonce, retrying with the nonce it came with", url);
            continue;
        }
        return 0;
    }
}

/* Loads the account key from the certs dir, or makes and saves one. */
static int doaccountkey(struct acme_client *c, char *err, size_t errlen)
{
    char path[4096];
    struct stat st;
    int rc;

    snprintf(path, sizeof path, "%s/%s", c->ac_certs_dir, ACME_ACCOUNT_KEY_FILE);
    if (stat(path, &st) == 0) {
        /* An unreadable key is an error, never replaced: it is the account. */
        if (!(c->ac_key = jws_key_load(path, err, errlen)))
            goto fail;
        log_info("acme: account key %s loaded", path);
    } else if (errno == ENOENT) {
        if (!(c->ac_key = jws_key_generate(err, errlen)) ||
            (rc = jws_key_save(path, c->ac_key, err, errlen)) < 0)
            goto fail;
        if (rc > 0)
            log_warn("acme: %s", err);
        log_info("acme: account key %s created", path);
    } else {
        snprintf(err, errlen, "account key %s: %s", path, strerror(errno));
        goto fail;
    }
    if (!(c->ac_thumb = jws_thumbprint(c->ac_key))) {
        snprintf(err, errlen, "account key %s: cannot compute its thumbprint", path);
        goto fail;
    }
    return 0;
fail:
    log_warn("acme: %s", err);
    EVP_PKEY_free(c->ac_key);
    c->ac_key = NULL;
    return -1;
}

/* POST newAccount (section 7.3): creates the account, or finds the one this
 * key already has (200 instead of 201). Either way Location is the kid. */
static int doaccount(struct acme_client *c, char *err, size_t errlen)
{
    struct resp r = { 0 };
    json_t *req = json_pack("{s:b}", "termsOfServiceAgreed", 1);
    char *payload = NULL;
    int rc = -1;

    if (c->ac_email && *c->ac_email) {
        char mailto[512];
        snprintf(mailto, sizeof mailto, "mailto:%s", c->ac_email);
        json_object_set_new(req, "contact", json_pack("[s]", mailto));
    }
    payload = json_dumps(req, JSON_COMPACT);
    if (acme_post(c, c->ac_url_account, payload, false, &r, err, errlen) < 0)
        goto out;
    if ((r.r_status != 200 && r.r_status != 201) || !r.r_location[0]) {
        problem(c, "newAccount", c->ac_url_account, &r, err, errlen);
        goto out;
    }
    c->ac_kid = xstrdup(r.r_location);
    log_info("acme: newAccount %s: %s account %s", c->ac_url_account,
             r.r_status == 201 ? "created" : "existing", c->ac_kid);
    rc = 0;
out:
    free(payload);
    json_decref(req);
    resp_reset(&r);
    return rc;
}

/* POST newOrder for one dNSName (section 7.4). */
static int doneworder(struct acme_client *c, const char *domain, struct order *o,
                      char *err, size_t errlen)
{
    struct resp r = { 0 };
    json_t *req = json_pack("{s:[{s:s,s:s}]}", "identifiers", "type", "dns", "value", domain);
    char *payload = json_dumps(req, JSON_COMPACT);
    int rc = -1;

    if (acme_post(c, c->ac_url_order, payload, false, &r, err, errlen) < 0)
        goto out;
    if (r.r_status != 201 || !r.r_location[0]) {
        problem(c, "newOrder", c->ac_url_order, &r, err, errlen);
        goto out;
    }
    if (!(o->o_obj = parse_object("newOrder", c->ac_url_order, &r, err, errlen)))
        goto out;
    o->o_url = xstrdup(r.r_location);
    log_info("acme: newOrder %s for %s: order %s, %s", c->ac_url_order, domain, o->o_url,
             json_string_value(json_object_get(o->o_obj, "status")) ?: "no status");
    rc = 0;
out:
    free(payload);
    json_decref(req);
    resp_reset(&r);
    return rc;
}

/* POST-as-GET of an order, authorization or challenge (section 7.1).
 * *obj receives the object. */
static int dofetch(struct acme_client *c, const char *what, const char *url, json_t **obj,
                   char *err, size_t errlen)
{
    struct resp r = { 0 };
    int rc = -1;

    if (acme_post(c, url, "", false, &r, err, errlen) < 0)
        goto out;
    if (r.r_status != 200) {
        problem(c, what, url, &r, err, errlen);
        goto out;
    }
    if (!(*obj = parse_object(what, url, &r, err, errlen)))
        goto out;
    c->ac_retry_after = r.r_retry_after > 0 ? r.r_retry_after : 0;
    rc = 0;
out:
    resp_reset(&r);
    return rc;
}

/* POST {} to the challenge URL: "ready, validate now" (section 7.5.1). */
static int dochngreq(struct acme_client *c, const char *url, char *err, size_t errlen)
{
    struct resp r = { 0 };
    int rc = -1;

    if (acme_post(c, url, "{}", false, &r, err, errlen) < 0)
        goto out;
    if (r.r_status != 200) {
        problem(c, "challenge", url, &r, err, errlen);
        goto out;
    }
    log_info("acme: challenge %s: the CA is validating", url);
    rc = 0;
out:
    resp_reset(&r);
    return rc;
}

/* Waits before the next poll: the CA's Retry-After when it sent one (a
 * value over RETRY_AFTER_MAX ends the attempt), else *wait_ms, which
 * doubles up to POLL_MAX_MS. -1 with err on cancel or deadline. */
static int poll_wait(struct acme_client *c, const char *what, const char *url, long *wait_ms,
                     char *err, size_t errlen)
{
    long ms = *wait_ms;
    if (c->ac_retry_after > RETRY_AFTER_MAX) {
        snprintf(err, errlen, "%s %s: the CA asks to retry after %ld s", what, url,
                 c->ac_retry_after);
        log_warn("acme: %s", err);
        return -1;
    }
    if (c->ac_retry_after > 0)
        ms = c->ac_retry_after * 1000;
    else
        *wait_ms = *wait_ms * 2 > POLL_MAX_MS ? POLL_MAX_MS : *wait_ms * 2;
    if (nap(c, ms) < 0) {
        snprintf(err, errlen, "%s %s: cancelled", what, url);
        return -1;
    }
    if (past_deadline(c)) {
        snprintf(err, errlen, "%s %s: still not done after %ld ms (the CA is slow or stuck)",
                 what, url, c->ac_obtain_ms);
        log_warn("acme: %s", err);
        return -1;
    }
    return 0;
}

/* Polls the authorization until it is no longer pending (section 7.5.1).
 * 0 when valid; -2 with the challenge's error when it ended otherwise
 * (the CA's validation failed); -1 with err when polling itself failed. */
static int dopollauthz(struct acme_client *c, const char *url, const char *domain,
                       char *err, size_t errlen)
{
    long wait_ms = POLL_FIRST_MS;
    json_t *a = NULL;
    int rc = -1;

    for (;;) {
        if (poll_wait(c, "authorization", url, &wait_ms, err, errlen) < 0 ||
            dofetch(c, "authorization", url, &a, err, errlen) < 0)
            goto out;
        const char *status = json_string_value(json_object_get(a, "status")) ?: "";
        if (strcmp(status, "valid") == 0)
            break;
        log_debug("acme: authorization %s for %s: %s", url, domain, status);
        if (strcmp(status, "pending") != 0) {
            /* The failed challenge carries the reason (section 7.1.5). */
            json_t *ch, *why = NULL;
            size_t i;
            json_array_foreach(json_object_get(a, "challenges"), i, ch)
                if (json_object_get(ch, "error"))
                    why = json_object_get(ch, "error");
            snprintf(err, errlen, "authorization %s for %s: %s, %s: %s", url, domain, status,
                     json_string_value(json_object_get(why, "type")) ?: "no error type",
                     json_string_value(json_object_get(why, "detail")) ?: "no detail");
            snprintf(c->ac_problem, sizeof c->ac_problem, "%s",
                     json_string_value(json_object_get(why, "type")) ?: "");
            log_warn("acme: %s", err);
            rc = -2;
            goto out;
        }
        json_decref(a);
        a = NULL;
    }
    log_info("acme: authorization %s for %s: valid", url, domain);
    rc = 0;
out:
    json_decref(a);
    return rc;
}

/* The challenge of authorization a to answer: tls-alpn-01 when offered and
 * enabled (answered on the https port, which serves anyway), else http-01.
 * NULL with err listing what the CA offered. */
static json_t *pick_challenge(struct acme_client *c, json_t *a, const char *url,
                              char *err, size_t errlen)
{
    static const struct { const char *type; unsigned bit; } pref[] = {
        { "tls-alpn-01", ACME_CHALLENGE_TLSALPN01 },
        { "http-01", ACME_CHALLENGE_HTTP01 },
    };
    json_t *chs = json_object_get(a, "challenges"), *ch;
    size_t i, off = 0;
    char offered[200] = "";

    for (size_t p = 0; p < sizeof pref / sizeof pref[0]; p++) {
        if (!(c->ac_use & pref[p].bit))
            continue;
        json_array_foreach(chs, i, ch)
            if (strcmp(json_string_value(json_object_get(ch, "type")) ?: "", pref[p].type) == 0 &&
                json_is_string(json_object_get(ch, "url")) &&
                json_is_string(json_object_get(ch, "token")))
                return ch;
    }
    json_array_foreach(chs, i, ch)
        if (off < sizeof offered)
            off += (size_t)snprintf(offered + off, sizeof offered - off, "%s%s", off ? ", " : "",
                                    json_string_value(json_object_get(ch, "type")) ?: "?");
    snprintf(err, errlen, "authorization %s: no challenge type to answer among those offered (%s); "
             "tried:%s%s", url, offered,
             c->ac_use & ACME_CHALLENGE_TLSALPN01 ? " tls-alpn-01" : "",
             c->ac_use & ACME_CHALLENGE_HTTP01 ? " http-01" : "");
    log_warn("acme: %s", err);
    return NULL;
}

/* One authorization (section 7.5): fetch it; unless already valid, publish
 * the answer to the chosen challenge in challenge.h, tell the CA to
 * validate, poll until done, and withdraw the answer. */
static int doauthz(struct acme_client *c, const char *url, const char *domain,
                   char *err, size_t errlen)
{
    json_t *a = NULL;
    char *keyauth = NULL;
    const char *type = NULL, *token = NULL;
    int rc = -1;

    if (dofetch(c, "authorization", url, &a, err, errlen) < 0)
        goto out;
    const char *status = json_string_value(json_object_get(a, "status")) ?: "";
    const char *ident = json_string_value(json_object_get(json_object_get(a, "identifier"), "value"));
    if (strcmp(status, "valid") == 0) {
        log_info("acme: authorization %s for %s: already valid", url, ident ?: domain);
        rc = 0;
        goto out;
    }
    if (strcmp(status, "pending") != 0 || !ident || strcasecmp(ident, domain) != 0) {
        snprintf(err, errlen, "authorization %s: %s for %s, expected pending for %s",
                 url, status, ident ?: "no identifier", domain);
        log_warn("acme: %s", err);
        goto out;
    }
    json_t *ch = pick_challenge(c, a, url, err, errlen);
    if (!ch) {
        c->ac_failed = c->ac_use;   /* the CA does not offer the type(s) tried */
        goto out;
    }
    type = json_string_value(json_object_get(ch, "type"));
    token = json_string_value(json_object_get(ch, "token"));
    const char *churl = json_string_value(json_object_get(ch, "url"));
    /* Key authorization = token "." base64url(JWK thumbprint), section 8.1. */
    size_t n = strlen(token) + strlen(c->ac_thumb) + 2;
    keyauth = xmalloc(n);
    snprintf(keyauth, n, "%s.%s", token, c->ac_thumb);
    if ((strcmp(type, "http-01") == 0 ? challenge_http_add(token, keyauth, err, errlen)
                                      : challenge_tls_alpn_add(domain, keyauth, err, errlen)) < 0) {
        log_warn("acme: %s", err);
        type = NULL;   /* nothing published */
        goto out;
    }
    log_info("acme: authorization %s for %s: answering %s", url, domain, type);
    /* A challenge already processing (a retried order) needs no new POST. */
    const char *chstatus = json_string_value(json_object_get(ch, "status")) ?: "";
    unsigned bit = strcmp(type, "http-01") == 0 ? ACME_CHALLENGE_HTTP01 : ACME_CHALLENGE_TLSALPN01;
    if (strcmp(chstatus, "pending") == 0 && dochngreq(c, churl, err, errlen) < 0) {
        if (!given_up(c) && c->ac_problem[0])
            c->ac_failed = bit;   /* the CA refused this challenge */
        goto out;
    }
    int polled = dopollauthz(c, url, domain, err, errlen);
    if (polled == -2)
        c->ac_failed = bit;   /* validated and refused: this type does not work here */
    if (polled < 0)
        goto out;
    rc = 0;
out:
    if (type && strcmp(type, "http-01") == 0)
        challenge_http_remove(token);
    else if (type)
        challenge_tls_alpn_remove(domain);
    free(keyauth);
    json_decref(a);
    return rc;
}

/* Polls the order until its status leaves "from" (section 7.1.6: pending
 * -> ready once authorized; processing -> valid once issued). 0 when it
 * reaches want. Polls at once first: the order usually moved already. */
static int dopollorder(struct acme_client *c, struct order *o, const char *want,
                       char *err, size_t errlen)
{
    long wait_ms = POLL_FIRST_MS;
    for (bool first = true;; first = false) {
        const char *status = json_string_value(json_object_get(o->o_obj, "status")) ?: "";
        if (strcmp(status, want) == 0)
            return 0;
        if (strcmp(status, "pending") != 0 && strcmp(status, "processing") != 0) {
            json_t *why = json_object_get(o->o_obj, "error");
            snprintf(err, errlen, "order %s: %s while waiting for %s, %s: %s", o->o_url, status,
                     want, json_string_value(json_object_get(why, "type")) ?: "no error type",
                     json_string_value(json_object_get(why, "detail")) ?: "no detail");
            log_warn("acme: %s", err);
            return -1;
        }
        json_t *obj = NULL;
        if ((!first && poll_wait(c, "order", o->o_url, &wait_ms, err, errlen) < 0) ||
            dofetch(c, "order", o->o_url, &obj, err, errlen) < 0)
            return -1;
        json_decref(o->o_obj);
        o->o_obj = obj;
        log_debug("acme: order %s: %s", o->o_url,
                  json_string_value(json_object_get(obj, "status")) ?: "no status");
    }
}

/* POST the CSR to the order's finalize URL (section 7.4). */
static int dofinalize(struct acme_client *c, struct order *o, const char *csr,
                      char *err, size_t errlen)
{
    const char *url = json_string_value(json_object_get(o->o_obj, "finalize"));
    struct resp r = { 0 };
    json_t *req = json_pack("{s:s}", "csr", csr), *obj = NULL;
    char *payload = json_dumps(req, JSON_COMPACT);
    int rc = -1;

    if (!url) {
        snprintf(err, errlen, "order %s: no finalize URL", o->o_url);
        log_warn("acme: %s", err);
        goto out;
    }
    if (acme_post(c, url, payload, false, &r, err, errlen) < 0)
        goto out;
    if (r.r_status != 200) {
        problem(c, "finalize", url, &r, err, errlen);
        goto out;
    }
    if (!(obj = parse_object("finalize", url, &r, err, errlen)))
        goto out;
    /* url points into the old order object: log before replacing it. */
    log_info("acme: finalize %s: order %s", url,
             json_string_value(json_object_get(obj, "status")) ?: "no status");
    json_decref(o->o_obj);
    o->o_obj = obj;
    c->ac_retry_after = r.r_retry_after > 0 ? r.r_retry_after : 0;
    rc = 0;
out:
    free(payload);
    json_decref(req);
    resp_reset(&r);
    return rc;
}

/* Checks that chain's first certificate is for domain and for key. */
static int check_chain(const char *chain, const char *domain, EVP_PKEY *key,
                       char *err, size_t errlen)
{
    BIO *b = BIO_new_mem_buf(chain, -1);
    X509 *leaf = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    int rc = -1;

    if (!leaf)
        snprintf(err, errlen, "the certificate chain is not PEM");
    else if (X509_check_private_key(leaf, key) != 1)
        snprintf(err, errlen, "the certificate is not for the key of the CSR");
    else if (X509_check_host(leaf, domain, 0, 0, NULL) != 1)
        snprintf(err, errlen, "the certificate does not name %s", domain);
    else
        rc = 0;
    ERR_clear_error();
    X509_free(leaf);
    BIO_free(b);
    return rc;
}

/* POST-as-GET the certificate chain (section 7.4.2). */
static int docert(struct acme_client *c, struct order *o, const char *domain, EVP_PKEY *key,
                  char **chain, char *err, size_t errlen)
{
    const char *url = json_string_value(json_object_get(o->o_obj, "certificate"));
    struct resp r = { 0 };
    int rc = -1;

    if (!url) {
        snprintf(err, errlen, "order %s: valid but no certificate URL", o->o_url);
        log_warn("acme: %s", err);
        goto out;
    }
    if (acme_post(c, url, "", true, &r, err, errlen) < 0)
        goto out;
    if (r.r_status != 200) {
        problem(c, "certificate", url, &r, err, errlen);
        goto out;
    }
    char why[200];
    if (check_chain(r.r_body, domain, key, why, sizeof why) < 0) {
        snprintf(err, errlen, "certificate %s: %s", url, why);
        log_warn("acme: %s", err);
        goto out;
    }
    *chain = r.r_body;
    r.r_body = NULL;
    log_info("acme: certificate %s for %s: downloaded, %zu bytes", url, domain, r.r_len);
    rc = 0;
out:
    resp_reset(&r);
    return rc;
}

/* POST {"status":"deactivated"} to an authorization (section 7.5.2), so a
 * failed or abandoned one is not left pending at the CA (Let's Encrypt
 * counts pending authorizations per account, and may hand a pending one
 * out again). Best effort: the outcome is logged, never an error of the
 * order; the CA may refuse to deactivate one that is already invalid. */
static void dodeactivate(struct acme_client *c, const char *url, const char *domain)
{
    struct resp r = { 0 };
    char err[512];

    if (acme_post(c, url, "{\"status\":\"deactivated\"}", false, &r, err, sizeof err) < 0) {
        log_info("acme: authorization %s for %s: not deactivated: %s", url, domain, err);
    } else if (r.r_status == 200) {
        log_info("acme: authorization %s for %s: deactivated", url, domain);
    } else {
        json_t *p = json_loads(r.r_body, 0, NULL);
        log_info("acme: authorization %s for %s: the CA did not deactivate it: HTTP %ld, %s: %s",
                 url, domain, r.r_status,
                 json_string_value(json_object_get(p, "type")) ?: "no problem type",
                 json_string_value(json_object_get(p, "detail")) ?: "no detail");
        json_decref(p);
    }
    resp_reset(&r);
}

/* ---------------------------------------------------------------- driver */

int acme_obtain(struct acme_client *c, const char *domain, char **key_pem, char **chain_pem,
                char *err, size_t errlen)
{
    return acme_obtain_via(c, domain, 0, key_pem, chain_pem, err, errlen);
}

int acme_obtain_via(struct acme_client *c, const char *domain, unsigned challenge,
                    char **key_pem, char **chain_pem, char *err, size_t errlen)
{
    struct order o = { 0 };
    EVP_PKEY *key = NULL;
    char *csr = NULL, *chain = NULL;
    uint64_t t0 = clock_mono_ms();
    json_t *authzs = NULL, *az;
    size_t i, failed_authz = 0;
    bool in_authz = false;
    int rc = -1;

    *key_pem = *chain_pem = NULL;
    c->ac_retry_after = 0;
    c->ac_problem[0] = '\0';
    c->ac_failed = 0;
    c->ac_gave_up = false;
    c->ac_abort_at_ms = 0;
    c->ac_domain = domain;
    c->ac_use = challenge ? challenge & c->ac_challenges : c->ac_challenges;
    if (atomic_load(&c->ac_cancel)) {
        snprintf(err, errlen, "cancelled");
        return -1;
    }
    if (!c->ac_use) {
        snprintf(err, errlen, "challenge type %s is not enabled (--acme-challenges)",
                 acme_challenge_name(challenge));
        return -1;
    }
    c->ac_deadline_ms = clock_mono_ms() + (uint64_t)c->ac_obtain_ms;
    log_info("acme: obtaining a certificate for %s from %s", domain, c->ac_dir_url);

    /* 7.1.1 directory, 7.3 account: once per client. */
    if (!c->ac_url_order && dodirs(c, err, errlen) < 0)
        goto out;
    if (!c->ac_key && doaccountkey(c, err, errlen) < 0)
        goto out;
    if (!c->ac_kid && doaccount(c, err, errlen) < 0)
        goto out;

    /* 7.4 order, 7.5 authorizations and challenges. A CA that no longer
     * knows the account (a test CA restarted; an account deactivated) gets
     * it registered again, once. */
    if (doneworder(c, domain, &o, err, errlen) < 0) {
        if (strcmp(c->ac_problem, PROBLEM_NO_ACCOUNT) != 0)
            goto out;
        log_info("acme: account %s unknown to the CA, registering the key again", c->ac_kid);
        free(c->ac_kid);
        c->ac_kid = NULL;
        if (doaccount(c, err, errlen) < 0 || doneworder(c, domain, &o, err, errlen) < 0)
            goto out;
    }
    authzs = json_object_get(o.o_obj, "authorizations");
    if (json_array_size(authzs) == 0) {
        snprintf(err, errlen, "order %s: no authorizations", o.o_url);
        log_warn("acme: %s", err);
        goto out;
    }
    in_authz = true;
    json_array_foreach(authzs, i, az) {
        failed_authz = i;
        if (doauthz(c, json_string_value(az) ?: "", domain, err, errlen) < 0)
            goto out;
    }
    in_authz = false;

    /* 7.4 finalize once the order is ready, then wait for issuance. */
    if (dopollorder(c, &o, "ready", err, errlen) < 0)
        goto out;
    if (jws_csr(domain, &key, &csr, err, errlen) < 0) {
        log_warn("acme: %s", err);
        goto out;
    }
    if (dofinalize(c, &o, csr, err, errlen) < 0 || dopollorder(c, &o, "valid", err, errlen) < 0)
        goto out;

    /* 7.4.2 download. */
    if (docert(c, &o, domain, key, &chain, err, errlen) < 0)
        goto out;
    if (!(*key_pem = jws_key_pem(key))) {
        snprintf(err, errlen, "encoding the certificate key as PEM failed");
        goto out;
    }
    *chain_pem = chain;
    chain = NULL;
    log_info("acme: certificate for %s obtained in %llu ms", domain,
             (unsigned long long)(clock_mono_ms() - t0));
    rc = 0;
out:
    c->ac_domain = NULL;   /* no more abort questions: the order is over */
    if (rc < 0 && in_authz && !atomic_load(&c->ac_cancel)) {
        /* The failed authorization and those after it, never answered:
         * deactivated, also when the owner gave the order up. */
        bool gave_up = c->ac_gave_up;
        c->ac_gave_up = false;
        json_array_foreach(authzs, i, az)
            if (i >= failed_authz && json_is_string(az))
                dodeactivate(c, json_string_value(az), domain);
        c->ac_gave_up = gave_up;
    }
    if (rc < 0)
        log_warn("acme: no certificate for %s after %llu ms", domain,
                 (unsigned long long)(clock_mono_ms() - t0));
    free(chain);
    free(csr);
    EVP_PKEY_free(key);
    json_decref(o.o_obj);
    free(o.o_url);
    return rc;
}

/* ---------------------------------------------------------------- setup */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

/* curl_global_init is not thread-safe in every libcurl: run it once. */
static void curl_init(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

struct acme_client *acme_client_new(const struct acme_options *o, char *err, size_t errlen)
{
    if (!o->directory_url || !o->certs_dir) {
        snprintf(err, errlen, "acme: a directory URL and a certs dir are required");
        return NULL;
    }
    /* Checked here, at startup, so a typo in --acme-ca is not reported as
     * a TLS failure at the first issuance. */
    if (o->ca_file && access(o->ca_file, R_OK) < 0) {
        snprintf(err, errlen, "--acme-ca %s: %s (a PEM file with the CA's root)", o->ca_file,
                 strerror(errno));
        return NULL;
    }
    pthread_once(&curl_once, curl_init);
    CURL *h = curl_init_rc == CURLE_OK ? curl_easy_init() : NULL;
    if (!h) {
        snprintf(err, errlen, "acme: libcurl initialisation failed");
        return NULL;
    }
    struct acme_client *c = xcalloc(1, sizeof *c);
    c->ac_curl = h;
    c->ac_dir_url = xstrdup(o->directory_url);
    c->ac_ca_file = o->ca_file ? xstrdup(o->ca_file) : NULL;
    c->ac_email = o->email && *o->email ? xstrdup(o->email) : NULL;
    c->ac_certs_dir = xstrdup(o->certs_dir);
    c->ac_challenges = o->challenges ? o->challenges
                                     : ACME_CHALLENGE_HTTP01 | ACME_CHALLENGE_TLSALPN01;
    c->ac_request_ms = o->request_timeout_ms > 0 ? o->request_timeout_ms : 30000;
    c->ac_obtain_ms = o->obtain_timeout_ms > 0 ? o->obtain_timeout_ms : 120000;
    atomic_init(&c->ac_cancel, false);

    c->ac_hdr_jose = curl_slist_append(NULL, "Content-Type: application/jose+json");
    c->ac_hdr_pem = curl_slist_append(NULL, "Content-Type: application/jose+json");
    c->ac_hdr_pem = curl_slist_append(c->ac_hdr_pem, "Accept: application/pem-certificate-chain");

    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, c->ac_curlerr);
    /* No signals: this runs on a thread, and SIGALRM-based DNS timeouts
     * would hit the wrong one. */
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, c->ac_request_ms);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, c->ac_request_ms < 10000 ? c->ac_request_ms : 10000L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "https,http");
    curl_easy_setopt(h, CURLOPT_USERAGENT, "core_server-acme/1");
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, c);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    /* CAINFO replaces the default bundle file; Debian's libcurl also reads
     * CAPATH (/etc/ssl/certs), which stays set, so public CAs remain
     * trusted alongside the extra one. */
    if (c->ac_ca_file)
        curl_easy_setopt(h, CURLOPT_CAINFO, c->ac_ca_file);
    return c;
}

long acme_retry_after(const struct acme_client *c)
{
    return c->ac_retry_after;
}

unsigned acme_failed_challenge(const struct acme_client *c)
{
    return c->ac_failed;
}

const char *acme_problem(const struct acme_client *c)
{
    return c->ac_problem;
}

unsigned acme_challenges(const struct acme_client *c)
{
    return c->ac_challenges;
}

bool acme_gave_up(const struct acme_client *c)
{
    return c->ac_gave_up;
}

void acme_client_set_abort(struct acme_client *c, acme_abort_fn *fn, void *arg)
{
    c->ac_abort = fn;
    c->ac_abort_arg = arg;
}

const char *acme_challenge_name(unsigned bit)
{
    switch (bit) {
    case ACME_CHALLENGE_HTTP01:    return "http-01";
    case ACME_CHALLENGE_TLSALPN01: return "tls-alpn-01";
    default:                       return "any enabled type";
    }
}

void acme_client_cancel(struct acme_client *c)
{
    atomic_store(&c->ac_cancel, true);
}

void acme_client_free(struct acme_client *c)
{
    if (!c)
        return;
    curl_easy_cleanup(c->ac_curl);
    curl_slist_free_all(c->ac_hdr_jose);
    curl_slist_free_all(c->ac_hdr_pem);
    free(c->ac_dir_url);
    free(c->ac_ca_file);
    free(c->ac_email);
    free(c->ac_certs_dir);
    free(c->ac_url_nonce);
    free(c->ac_url_account);
    free(c->ac_url_order);
    EVP_PKEY_free(c->ac_key);
    free(c->ac_thumb);
    free(c->ac_kid);
    free(c);
}
