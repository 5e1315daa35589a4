/* routes.h — the domain -> backend port table.
 * Readers (workers, TLS callbacks) use the current immutable snapshot without
 * locks: routes_current() + routes_lookup(), protected by QSBR (qsbr.h).
 * One writer (the command thread) builds a new snapshot per batch of changes,
 * saves it and publishes it. Also owns the routes file: load and atomic save
 * in the original's format, one "DOMAIN PORT" per line. */
#ifndef CORE_ROUTES_H
#define CORE_ROUTES_H
#include <stddef.h>
#include <stdint.h>

struct routes;   /* immutable once published */

/* ---- readers (any thread that called qsbr_register) ---- */
/* NULL until the first routes_publish(); every reader function below
 * treats a NULL table as empty. */
const struct routes *routes_current(void);
/* Port for the canonical name (see domain.h), or 0 when not routed.
 * O(1): one hash and probe, no allocation. */
uint16_t routes_lookup(const struct routes *r, const char *name, size_t len);
size_t routes_count(const struct routes *r);
/* Calls fn for each route, in no particular order. */
void routes_foreach(const struct routes *r, void (*fn)(const char *name, uint16_t port, void *arg), void *arg);

struct routes_entry {
    const char *name;   /* NUL-terminated, points into r: valid while r is */
    size_t len;
    uint16_t port;
};
/* The routes sorted by name (byte order), in a new array the caller frees;
 * *n gets the count. NULL r is an empty table. */
struct routes_entry *routes_sorted(const struct routes *r, size_t *n);

/* ---- writer (one thread) ---- */
struct routes *routes_new_empty(void);
/* A mutable copy of r (NULL: empty), for building the next snapshot. */
struct routes *routes_clone(const struct routes *r);
/* Set or override name (canonical, len <= DOMAIN_MAX) -> port (1..65535);
 * remove returns 0 if it was there, -1 if not. Only on an unpublished table. */
void routes_set(struct routes *r, const char *name, size_t len, uint16_t port);
int routes_remove(struct routes *r, const char *name, size_t len);
void routes_free(struct routes *r);
/* Makes r the current snapshot (immutable from now on); the previous one is
 * retired through QSBR. The writer should call qsbr_reclaim() later. */
void routes_publish(struct routes *r);

/* Loads path into a new table. A missing file is an empty table. Bad lines
 * are skipped with a warning naming the file, line number and reason.
 * Returns NULL (and err) only when the file exists but cannot be read. */
struct routes *routes_load_file(const char *path, char *err, size_t errlen);
/* Writes r to path atomically, sorted by name: path.tmp, write loop, fsync,
 * rename, fsync of the directory; creates the directory (mkdir -p, 0755) if
 * needed; unlinks the temp file on failure. Returns 0, or -1 with the cause
 * in err (the old file is intact). A failed fsync of the directory after the
 * rename is only logged: the new file is in place and is what readers see. */
int routes_save_file(const struct routes *r, const char *path, char *err, size_t errlen);

#endif
