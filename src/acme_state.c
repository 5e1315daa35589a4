/* acme_state.c — release mode's per-domain ACME records, when each is due,
 * and the failure ledger (see acme_state.h). */
#include "acme_state.h"
#include "acme.h"
#include "certs.h"
#include "file.h"
#include "log.h"
#include "mem.h"
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAILURES_FILE "core_server-acme-failures.txt"

/* Set by acme_state_init, read-only afterwards (until acme_state_clear). */
static char *dir;                   /* CERTS_DIR: where FAILURES_FILE lives */
static long backoff_first_s;        /* first retry delay */
static unsigned challenges_enabled; /* ACME_CHALLENGE_* bits */

static struct {
    pthread_mutex_t mu;            /* guards the records; taken after certs.c's q.mu,
                                      never before */
    struct acme_record **v;        /* freed only by acme_state_forget (certificate thread) and
                                      acme_state_clear: that thread may keep a pointer */
    size_t n;
} recs = { .mu = PTHREAD_MUTEX_INITIALIZER };

void acme_state_init(const char *certs_dir, long backoff_first, unsigned challenges)
{
    free(dir);
    dir = xstrdup(certs_dir);
    backoff_first_s = backoff_first;
    challenges_enabled = challenges;
}

void acme_state_clear(void)
{
    pthread_mutex_lock(&recs.mu);
    for (size_t i = 0; i < recs.n; i++)
        free(recs.v[i]);
    free(recs.v);
    recs.v = NULL;
    recs.n = 0;
    pthread_mutex_unlock(&recs.mu);
    free(dir);
    dir = NULL;
    challenges_enabled = 0;
}

void acme_state_lock(void)
{
    pthread_mutex_lock(&recs.mu);
}

void acme_state_unlock(void)
{
    pthread_mutex_unlock(&recs.mu);
}

/* ---- the challenge types ---- */

/* The two challenge types, in the order tried when none is known to work:
 * tls-alpn-01 first (answered on the https port, which serves anyway). */
static const unsigned challenge_order[2] = { ACME_CHALLENGE_TLSALPN01, ACME_CHALLENGE_HTTP01 };

int acme_state_challenge_slot(unsigned bit)
{
    return bit == ACME_CHALLENGE_HTTP01 ? 0 : 1;
}

static unsigned challenge_from_name(const char *s)
{
    if (strcmp(s, "http-01") == 0)
        return ACME_CHALLENGE_HTTP01;
    if (strcmp(s, "tls-alpn-01") == 0)
        return ACME_CHALLENGE_TLSALPN01;
    return 0;
}

/* The type that worked, when the ledger needs to keep it: only when it is
 * not the one tried first anyway (tls-alpn-01 when enabled), so a domain
 * for which the default works leaves no line behind. 0 otherwise. */
static unsigned worked_to_keep(const struct acme_record *r)
{
    unsigned enabled = challenges_enabled;
    unsigned first = enabled & challenge_order[0] ? challenge_order[0] : challenge_order[1];
    return r->worked && r->worked != first ? r->worked : 0;
}

/* True when the record holds something the ledger file keeps. */
static bool record_persists(const struct acme_record *r)
{
    return r->failures > 0 || worked_to_keep(r) || r->type_fail[0].tf_at || r->type_fail[1].tf_at;
}

int acme_state_challenge_plan(const struct acme_record *r, unsigned enabled, unsigned plan[2])
{
    int n = 0;
    if (r->worked & enabled)
        plan[n++] = r->worked;
    for (int k = 0; k < 2; k++)
        if ((challenge_order[k] & enabled) && challenge_order[k] != r->worked)
            plan[n++] = challenge_order[k];
    return n;
}

/* ---- the records ---- */

struct acme_record *acme_state_find_locked(const char *name, size_t len)
{
    for (size_t i = 0; i < recs.n; i++)
        if (strlen(recs.v[i]->name) == len && memcmp(recs.v[i]->name, name, len) == 0)
            return recs.v[i];
    return NULL;
}

struct acme_record *acme_state_get_locked(const char *name, size_t len)
{
    struct acme_record *r = acme_state_find_locked(name, len);
    if (r)
        return r;
    r = xcalloc(1, sizeof *r);
    memcpy(r->name, name, len);
    recs.v = xrealloc(recs.v, (recs.n + 1) * sizeof recs.v[0]);
    recs.v[recs.n++] = r;
    return r;
}

void acme_state_each_locked(void (*fn)(struct acme_record *r, void *arg), void *arg)
{
    for (size_t i = 0; i < recs.n; i++)
        fn(recs.v[i], arg);
}

bool acme_state_copy(const char *name, size_t len, struct acme_record *out)
{
    pthread_mutex_lock(&recs.mu);
    const struct acme_record *found = acme_state_find_locked(name, len);
    if (found)
        *out = *found;
    pthread_mutex_unlock(&recs.mu);
    return found != NULL;
}

/* Fewer than 30 days or a third of its lifetime left, whichever is less
 * (Let's Encrypt's 90-day certificates: at 60 days; short-lived ones: at
 * two thirds). */
time_t acme_state_renew_time(time_t nb, time_t na)
{
    time_t life = na > nb ? na - nb : 0;
    time_t before = life / 3 < CERTS_RENEW_MAX_S ? life / 3 : CERTS_RENEW_MAX_S;
    return na - before;
}

/* A renewal is never scheduled sooner than a minute (or a third of a short
 * lifetime) from now, so a CA handing out certificates that are due
 * already cannot make us loop. */
void acme_state_record_cert(const char *name, size_t len, time_t nb, time_t na)
{
    time_t now = time(NULL), life = na > nb ? na - nb : 0;
    time_t floor = now + (life / 3 < 60 ? life / 3 : 60);

    pthread_mutex_lock(&recs.mu);
    struct acme_record *r = acme_state_get_locked(name, len);
    r->not_before = nb;
    r->not_after = na;
    r->renew_at = acme_state_renew_time(nb, na) > floor ? acme_state_renew_time(nb, na) : floor;
    pthread_mutex_unlock(&recs.mu);
}

/* One order, or one per challenge type after a fallback. The delay:
 * CERTS_BACKOFF_FIRST_S (or the test value), times 4 per failure, at most
 * an hour, and never sooner than the CA's Retry-After. */
long acme_state_record_failure(const char *name, size_t len, const char *err, long retry_after)
{
    time_t now = time(NULL);
    long delay = backoff_first_s;

    pthread_mutex_lock(&recs.mu);
    struct acme_record *r = acme_state_get_locked(name, len);
    r->failures++;
    for (int i = 1; i < r->failures && delay < CERTS_BACKOFF_MAX_S; i++)
        delay *= CERTS_BACKOFF_FACTOR;
    if (delay > CERTS_BACKOFF_MAX_S)
        delay = CERTS_BACKOFF_MAX_S;
    if (retry_after > delay)
        delay = retry_after;
    r->last_fail = now;
    r->next_attempt = now + delay;
    /* Truncated on purpose: the record keeps the start of a long CA error. */
    size_t n = strnlen(err, sizeof r->last_err - 1);
    memcpy(r->last_err, err, n);
    r->last_err[n] = '\0';
    for (char *p = r->last_err; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';   /* one line in the record file and in the status reply */
    pthread_mutex_unlock(&recs.mu);
    return delay;
}

void acme_state_forget(const char *name, size_t len)
{
    pthread_mutex_lock(&recs.mu);
    for (size_t i = 0; i < recs.n; i++) {
        struct acme_record *r = recs.v[i];
        if (strlen(r->name) != len || memcmp(r->name, name, len) != 0)
            continue;
        r->not_before = r->not_after = r->renew_at = 0;
        r->dormant = true;   /* no renewal, no retry: an add wakes it */
        if (!record_persists(r) && !r->working) {
            recs.v[i] = recs.v[--recs.n];
            free(r);
        }
        break;
    }
    pthread_mutex_unlock(&recs.mu);
}

/* ---- when the certificate thread is needed ---- */

time_t acme_state_due_locked(const struct acme_record *r)
{
    if (r->dormant || r->working)
        return 0;
    if (r->not_after)
        return r->renew_at > r->next_attempt ? r->renew_at : r->next_attempt;
    if (r->failures)
        return r->next_attempt ? r->next_attempt : 1;
    return 0;
}

time_t acme_state_next_due(bool (*skip)(const char *name, size_t len))
{
    time_t due = 0;
    pthread_mutex_lock(&recs.mu);
    for (size_t i = 0; i < recs.n; i++) {
        /* A name waiting for the store or another node has its own time. */
        if (skip && skip(recs.v[i]->name, strlen(recs.v[i]->name)))
            continue;
        time_t t = acme_state_due_locked(recs.v[i]);
        if (t && (!due || t < due))
            due = t;
    }
    pthread_mutex_unlock(&recs.mu);
    return due;
}

/* ---- the ledger ---- */

/* The failure record as a text file, one line per failing domain:
 *   DOMAIN FAILURES LAST_FAIL NEXT_ATTEMPT LAST_ERROR
 * and, for the challenge fallback, lines that start with '@' (which no
 * domain does; an older core_server skips them as bad lines):
 *   @worked DOMAIN TYPE               the challenge type that validated last
 *   @failed DOMAIN TYPE TIME ERROR    that type's last failed validation
 * (times as Unix seconds; an error runs to the end of the line). Written
 * atomically after every change, so a crash loop keeps its backoff. */
/* The room record_lines needs for r at most. */
static size_t record_lines_max(const struct acme_record *r)
{
    return 3 * strlen(r->name) + strlen(r->last_err) + 2 * sizeof r->type_fail[0].tf_err + 200;
}

/* r's lines of the ledger (nothing when it keeps nothing) into buf, which
 * has record_lines_max(r) bytes. Returns their length. Under recs.mu. */
static size_t record_lines(const struct acme_record *r, char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    if (r->failures > 0)
        used += (size_t)snprintf(buf + used, cap - used, "%s %d %lld %lld %s\n", r->name,
                                 r->failures, (long long)r->last_fail,
                                 (long long)r->next_attempt, r->last_err);
    if (worked_to_keep(r))
        used += (size_t)snprintf(buf + used, cap - used, "@worked %s %s\n", r->name,
                                 acme_challenge_name(r->worked));
    for (int k = 0; k < 2; k++)
        if (r->type_fail[acme_state_challenge_slot(challenge_order[k])].tf_at)
            used += (size_t)snprintf(buf + used, cap - used, "@failed %s %s %lld %s\n",
                r->name, acme_challenge_name(challenge_order[k]),
                (long long)r->type_fail[acme_state_challenge_slot(challenge_order[k])].tf_at,
                r->type_fail[acme_state_challenge_slot(challenge_order[k])].tf_err);
    return used;
}

size_t acme_state_ledger_lines(const char *name, size_t len, char **text)
{
    pthread_mutex_lock(&recs.mu);
    struct acme_record *r = acme_state_find_locked(name, len);
    size_t cap = r ? record_lines_max(r) : 1, n = 0;
    *text = xmalloc(cap);
    if (r)
        n = record_lines(r, *text, cap);
    pthread_mutex_unlock(&recs.mu);
    return n;
}

void acme_state_ledger_save(void)
{
    char path[PATH_MAX], err[512];
    size_t cap = 256, used = 0;
    char *buf = xmalloc(cap);

    used = (size_t)snprintf(buf, cap, "# core_server ACME failures: DOMAIN FAILURES LAST_FAIL "
                            "NEXT_ATTEMPT LAST_ERROR (Unix seconds)\n");
    pthread_mutex_lock(&recs.mu);
    for (size_t i = 0; i < recs.n; i++) {
        const struct acme_record *r = recs.v[i];
        if (!record_persists(r))
            continue;
        size_t need = record_lines_max(r);
        if (used + need > cap) {
            cap = (used + need) * 2;
            buf = xrealloc(buf, cap);
        }
        used += record_lines(r, buf + used, cap - used);
    }
    pthread_mutex_unlock(&recs.mu);
    snprintf(path, sizeof path, "%s/%s", dir, FAILURES_FILE);
    int rc = file_write_atomic(path, NULL, buf, used, 0600, err, sizeof err);
    if (rc < 0)
        log_warn("certs: saving the ACME failure record: %s (backoff will not survive a restart)",
                 err);
    else if (rc > 0)
        log_warn("certs: %s", err);
    free(buf);
}

/* One '@' line of the ledger (see above). Returns 0: it is counted with
 * its domain's failure line, if any; a bad line is logged. */
static int ledger_line(const char *path, const char *line)
{
    char kind[16], name[DOMAIN_MAX + 2], type[16];
    long long at = 0;
    int off = 0;
    int got = sscanf(line, "@%15s %254s %15s %lld %n", kind, name, type, &at, &off);
    unsigned bit = got >= 3 ? challenge_from_name(type) : 0;
    bool worked = got >= 3 && strcmp(kind, "worked") == 0;
    bool failed = got >= 4 && off > 0 && strcmp(kind, "failed") == 0;

    if (!bit || strlen(name) > DOMAIN_MAX || (!worked && !failed)) {
        log_warn("certs: %s: skipping a bad line: %s", path, line);
        return 0;
    }
    pthread_mutex_lock(&recs.mu);
    struct acme_record *r = acme_state_get_locked(name, strlen(name));
    if (worked) {
        r->worked = bit;
    } else {
        r->type_fail[acme_state_challenge_slot(bit)].tf_at = (time_t)at;
        snprintf(r->type_fail[acme_state_challenge_slot(bit)].tf_err,
                 sizeof r->type_fail[0].tf_err, "%s", line + off);
    }
    pthread_mutex_unlock(&recs.mu);
    return 0;   /* counted with its domain's failure line, if any */
}

/* A line from the file, or from a domain's text in the shared store; an
 * '@' line, a comment, or a bad line (logged) returns 0. */
int acme_state_ledger_parse_line(const char *where, char *line)
{
    char name[DOMAIN_MAX + 2];
    int failures, off = 0;
    long long last, next;

    line[strcspn(line, "\n")] = '\0';
    if (line[0] == '#' || !line[0])
        return 0;
    if (line[0] == '@')
        return ledger_line(where, line);
    if (sscanf(line, "%254s %d %lld %lld %n", name, &failures, &last, &next, &off) < 4 ||
        strlen(name) > DOMAIN_MAX || failures <= 0) {
        log_warn("certs: %s: skipping a bad line: %s", where, line);
        return 0;
    }
    pthread_mutex_lock(&recs.mu);
    struct acme_record *r = acme_state_get_locked(name, strlen(name));
    r->failures = failures;
    r->last_fail = (time_t)last;
    r->next_attempt = (time_t)next;
    snprintf(r->last_err, sizeof r->last_err, "%s", line + off);
    pthread_mutex_unlock(&recs.mu);
    return 1;
}

void acme_state_ledger_load(void)
{
    char path[PATH_MAX], line[1024];
    size_t n = 0;

    snprintf(path, sizeof path, "%s/%s", dir, FAILURES_FILE);
    FILE *f = fopen(path, "re");
    if (!f) {
        if (errno != ENOENT)
            log_warn("certs: reading %s: %s (starting without a failure record)", path,
                     strerror(errno));
        return;
    }
    while (fgets(line, sizeof line, f))
        n += (size_t)acme_state_ledger_parse_line(path, line);
    fclose(f);
    if (n)
        log_info("certs: %zu domain(s) with failed ACME orders in %s; their backoff goes on", n,
                 path);
}
