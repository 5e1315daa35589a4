/* acme_state.h — release mode's per-domain ACME state: one record per
 * domain (the certificate held and its renewal time, failed orders and the
 * backoff, the challenge type that worked and each type's last failure),
 * when each record next needs the certificate thread, and the ledger that
 * keeps failures across restarts (CERTS_DIR/core_server-acme-failures.txt,
 * and one domain's lines for the shared store). It does not obtain
 * certificates, serve them or talk to the store: certs.c does, and is the
 * only user of this module.
 *
 * Locking: one mutex (acme_state_lock/unlock) guards every record. Names
 * ending in _locked want it held; the other functions take it themselves
 * and must be called without it. Lock order: certs.c's queue mutex (q.mu)
 * before this one, never the other way round (acme_state_next_due and the
 * walk in acme_state_each_locked run under q.mu).
 *
 * Who touches a struct acme_record: the certificate thread writes it, under
 * the lock; certs_status reads a copy (acme_state_copy). Records are freed
 * only by acme_state_forget (certificate thread) and acme_state_clear
 * (shutdown, after that thread has ended), so the certificate thread may
 * keep a pointer across an unlock; it still reads and writes the fields
 * only under the lock. */
#ifndef CORE_ACME_STATE_H
#define CORE_ACME_STATE_H
#include "domain.h"
#include <stdbool.h>
#include <stddef.h>
#include <time.h>

/* What the status command shows and what renewal and backoff are driven by. */
struct acme_record {
    char name[DOMAIN_MAX + 1];
    time_t not_before, not_after;  /* wall clock: the certificate held; 0: none */
    time_t renew_at;               /* wall clock: its renewal is due; 0: none */
    int failures;                  /* consecutive failed orders */
    time_t last_fail;              /* wall clock of the last failure; 0: none */
    time_t next_attempt;           /* wall clock: no order before then; 0: any time */
    bool working;                  /* an order is under way */
    bool dormant;                  /* due, but the route is gone: wait for a request */
    char waiting[200];             /* shared store: what the order waits for ("" none) */
    char last_err[512];
    unsigned worked;               /* ACME_CHALLENGE_* that validated last; 0: not known.
                                      Tried first at the next order (renewal). */
    struct {
        time_t tf_at;              /* wall clock of this type's last failed validation; 0: none */
        char tf_err[320];          /* the CA's problem type and detail */
    } type_fail[2];                /* [acme_state_challenge_slot(ACME_CHALLENGE_*)] */
};

/* Before any other call: where the ledger file lives, the first retry delay
 * (seconds), and the enabled challenge types (ACME_CHALLENGE_* bits). */
void acme_state_init(const char *certs_dir, long backoff_first_s, unsigned challenges);
/* Frees every record (certs_shutdown, the certificate thread ended). */
void acme_state_clear(void);

void acme_state_lock(void);
void acme_state_unlock(void);
/* name's record, or NULL. Under the lock. */
struct acme_record *acme_state_find_locked(const char *name, size_t len);
/* name's record, created empty if missing. Under the lock. */
struct acme_record *acme_state_get_locked(const char *name, size_t len);
/* Calls fn for every record, under the lock; fn must not add or free one. */
void acme_state_each_locked(void (*fn)(struct acme_record *r, void *arg), void *arg);
/* Copies name's record into *out. Returns false (and leaves *out) if none. */
bool acme_state_copy(const char *name, size_t len, struct acme_record *out);

/* When a certificate valid from nb to na is due for renewal (wall clock). */
time_t acme_state_renew_time(time_t nb, time_t na);
/* Records the certificate now held, and schedules its renewal. */
void acme_state_record_cert(const char *name, size_t len, time_t nb, time_t na);
/* Records a failed attempt; returns the seconds until the next one (the
 * backoff, never sooner than the CA's retry_after). */
long acme_state_record_failure(const char *name, size_t len, const char *err, long retry_after);
/* Drops name's certificate and renewal (the route is gone; it goes dormant)
 * and frees the record unless the ledger keeps something of it or an order
 * is under way. */
void acme_state_forget(const char *name, size_t len);

/* When r next needs the certificate thread (wall clock), or 0: a held
 * certificate's renewal, or the retry of a failing one. Under the lock. */
time_t acme_state_due_locked(const struct acme_record *r);
/* The earliest acme_state_due_locked of all records, or 0, skipping names
 * for which skip (called under q.mu and this lock) returns true. Called
 * under q.mu; takes the lock. */
time_t acme_state_next_due(bool (*skip)(const char *name, size_t len));

/* Index of a challenge type bit in acme_record.type_fail. */
int acme_state_challenge_slot(unsigned bit);
/* The challenge types to try for r, in order: the one that worked last
 * first, then the others enabled. Returns how many (1 or 2). Under the
 * lock, or on a copy. */
int acme_state_challenge_plan(const struct acme_record *r, unsigned enabled, unsigned plan[2]);

/* The ledger file: loaded once at start (acme_state_ledger_load), written
 * atomically after every change (acme_state_ledger_save; a failure is
 * logged). Both take the lock. */
void acme_state_ledger_load(void);
void acme_state_ledger_save(void);
/* One line of the ledger into its record (where names it in a warning).
 * Returns 1 for a domain's failure line, 0 otherwise. Takes the lock. */
int acme_state_ledger_parse_line(const char *where, char *line);
/* name's ledger lines (for the shared store): a malloc'd buffer in *text,
 * which the caller frees; returns their length, 0 when there are none. */
size_t acme_state_ledger_lines(const char *name, size_t len, char **text);

#endif
