/* routes.c — the domain -> port table: an open-addressing hash table (linear
 * probing, backward-shift deletion, no tombstones) whose names live in one
 * arena; published as immutable snapshots through an atomic pointer and
 * retired through QSBR. Also the routes file: tolerant loader, atomic save. */
#include "routes.h"
#include "file.h"
#include "domain.h"
#include "log.h"
#include "mem.h"
#include "qsbr.h"
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define MIN_SLOTS 16

struct slot {
    uint32_t tag;    /* high 32 bits of the name's hash: most misses end here */
    uint32_t off;    /* name's offset in the arena (NUL-terminated there) */
    uint16_t port;   /* 0: empty slot */
    uint8_t len;     /* name length, 1..DOMAIN_MAX */
};

struct routes {
    uint64_t rt_seed;        /* hash seed, per process */
    size_t rt_mask;          /* slots - 1; slots is a power of two */
    size_t rt_count;         /* routes in the table; kept <= slots / 2 */
    struct slot *rt_slots;
    char *rt_arena;          /* names, each followed by NUL */
    size_t rt_arena_len;
    size_t rt_arena_cap;
    bool rt_published;       /* immutable from then on */
};

static _Atomic(struct routes *) current_routes;

/* ---- hashing ---- */

static uint64_t process_seed(void)
{
    static uint64_t seed;   /* writer thread only */

    if (seed == 0) {
        /* Host headers are chosen by strangers: a seed they cannot know keeps
         * probe sequences unpredictable. Falls back to a fixed odd value. */
        if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != (ssize_t)sizeof seed)
            seed = 0x9e3779b97f4a7c15ull;
        seed |= 1;
    }
    return seed;
}

static uint64_t mix(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

static uint64_t hash_name(uint64_t seed, const char *s, size_t len)
{
    uint64_t h = seed ^ (len * 0x9e3779b97f4a7c15ull);
    uint64_t w;

    for (; len >= 8; s += 8, len -= 8) {
        memcpy(&w, s, 8);
        h = mix(h ^ w);
    }
    w = 0;
    memcpy(&w, s, len);
    return mix(h ^ w ^ 0x8000000000000000ull);
}

/* ---- table ---- */

static size_t slots_for(size_t count)
{
    size_t n = MIN_SLOTS;
    while (n / 2 < count)
        n *= 2;
    return n;
}

static struct routes *routes_new_sized(uint64_t seed, size_t count, size_t arena_bytes)
{
    struct routes *r = xcalloc(1, sizeof *r);
    size_t n = slots_for(count);

    r->rt_seed = seed;
    r->rt_mask = n - 1;
    r->rt_slots = xcalloc(n, sizeof *r->rt_slots);
    r->rt_arena_cap = arena_bytes < 256 ? 256 : arena_bytes;
    r->rt_arena = xmalloc(r->rt_arena_cap);
    return r;
}

struct routes *routes_new_empty(void)
{
    return routes_new_sized(process_seed(), 0, 0);
}

static const char *slot_name(const struct routes *r, const struct slot *s)
{
    return r->rt_arena + s->off;
}

/* Index of name's slot, or of the empty slot where it would go. */
static size_t find_slot(const struct routes *r, const char *name, size_t len, uint64_t h)
{
    uint32_t tag = (uint32_t)(h >> 32);
    size_t i = (size_t)h & r->rt_mask;

    for (;; i = (i + 1) & r->rt_mask) {
        const struct slot *s = &r->rt_slots[i];
        if (s->port == 0)
            return i;
        if (s->tag == tag && s->len == len && memcmp(slot_name(r, s), name, len) == 0)
            return i;
    }
}

uint16_t routes_lookup(const struct routes *r, const char *name, size_t len)
{
    if (!r || r->rt_count == 0 || len == 0 || len > DOMAIN_MAX)
        return 0;
    return r->rt_slots[find_slot(r, name, len, hash_name(r->rt_seed, name, len))].port;
}

size_t routes_count(const struct routes *r)
{
    return r ? r->rt_count : 0;
}

void routes_foreach(const struct routes *r, void (*fn)(const char *name, uint16_t port, void *arg), void *arg)
{
    if (!r)
        return;
    for (size_t i = 0; i <= r->rt_mask; i++)
        if (r->rt_slots[i].port != 0)
            fn(slot_name(r, &r->rt_slots[i]), r->rt_slots[i].port, arg);
}

static uint32_t arena_add(struct routes *r, const char *name, size_t len)
{
    uint32_t off;

    if (r->rt_arena_len + len + 1 > r->rt_arena_cap) {
        while (r->rt_arena_len + len + 1 > r->rt_arena_cap)
            r->rt_arena_cap *= 2;
        r->rt_arena = xrealloc(r->rt_arena, r->rt_arena_cap);
    }
    off = (uint32_t)r->rt_arena_len;
    memcpy(r->rt_arena + off, name, len);
    r->rt_arena[off + len] = '\0';
    r->rt_arena_len += len + 1;
    return off;
}

/* Doubles the slot array; names stay where they are in the arena. */
static void grow(struct routes *r)
{
    size_t old_n = r->rt_mask + 1;
    struct slot *old = r->rt_slots;

    r->rt_mask = old_n * 2 - 1;
    r->rt_slots = xcalloc(old_n * 2, sizeof *r->rt_slots);
    for (size_t i = 0; i < old_n; i++) {
        if (old[i].port == 0)
            continue;
        const char *name = r->rt_arena + old[i].off;
        size_t j = find_slot(r, name, old[i].len, hash_name(r->rt_seed, name, old[i].len));
        r->rt_slots[j] = old[i];
    }
    free(old);
}

void routes_set(struct routes *r, const char *name, size_t len, uint16_t port)
{
    uint64_t h = hash_name(r->rt_seed, name, len);
    size_t i;

    if (r->rt_published || len == 0 || len > DOMAIN_MAX || port == 0)
        abort();   /* contract violation by the caller, not a run-time error */
    i = find_slot(r, name, len, h);
    if (r->rt_slots[i].port != 0) {
        r->rt_slots[i].port = port;
        return;
    }
    if (r->rt_count + 1 > (r->rt_mask + 1) / 2) {
        grow(r);
        i = find_slot(r, name, len, h);
    }
    r->rt_slots[i] = (struct slot){ .tag = (uint32_t)(h >> 32), .off = arena_add(r, name, len),
                                     .port = port, .len = (uint8_t)len };
    r->rt_count++;
}

int routes_remove(struct routes *r, const char *name, size_t len)
{
    size_t i, j;

    if (r->rt_published)
        abort();
    if (len == 0 || len > DOMAIN_MAX)
        return -1;
    i = find_slot(r, name, len, hash_name(r->rt_seed, name, len));
    if (r->rt_slots[i].port == 0)
        return -1;
    /* Backward-shift deletion: move later members of the probe run into the
     * hole when their home slot is at or before it, so lookups never need
     * tombstones. The name's bytes stay in the arena until the next clone. */
    for (j = (i + 1) & r->rt_mask; r->rt_slots[j].port != 0; j = (j + 1) & r->rt_mask) {
        const struct slot *s = &r->rt_slots[j];
        size_t home = (size_t)hash_name(r->rt_seed, slot_name(r, s), s->len) & r->rt_mask;
        /* s may move to i when home is not cyclically within (i, j]. */
        if (((j - home) & r->rt_mask) >= ((j - i) & r->rt_mask)) {
            r->rt_slots[i] = *s;
            i = j;
        }
    }
    r->rt_slots[i].port = 0;
    r->rt_count--;
    return 0;
}

struct routes *routes_clone(const struct routes *r)
{
    struct routes *c;

    if (!r)
        return routes_new_empty();
    /* Re-inserting compacts the arena (removed names are dropped). */
    c = routes_new_sized(r->rt_seed, r->rt_count, r->rt_arena_len);
    for (size_t i = 0; i <= r->rt_mask; i++) {
        const struct slot *s = &r->rt_slots[i];
        if (s->port != 0)
            routes_set(c, slot_name(r, s), s->len, s->port);
    }
    return c;
}

void routes_free(struct routes *r)
{
    if (!r)
        return;
    free(r->rt_slots);
    free(r->rt_arena);
    free(r);
}

static void free_retired(void *p)
{
    routes_free(p);
}

const struct routes *routes_current(void)
{
    return atomic_load_explicit(&current_routes, memory_order_acquire);
}

void routes_publish(struct routes *r)
{
    struct routes *old;

    r->rt_published = true;
    old = atomic_exchange_explicit(&current_routes, r, memory_order_acq_rel);
    if (old)
        qsbr_retire(old, free_retired);
}

static int cmp_entry(const void *a, const void *b)
{
    const struct routes_entry *x = a, *y = b;
    return strcmp(x->name, y->name);
}

struct routes_entry *routes_sorted(const struct routes *r, size_t *n)
{
    size_t count = routes_count(r), k = 0;
    struct routes_entry *e = xmalloc((count ? count : 1) * sizeof *e);

    for (size_t i = 0; count && i <= r->rt_mask; i++) {
        const struct slot *s = &r->rt_slots[i];
        if (s->port != 0)
            e[k++] = (struct routes_entry){ slot_name(r, s), s->len, s->port };
    }
    qsort(e, k, sizeof *e, cmp_entry);
    *n = k;
    return e;
}

/* ---- the routes file: loading ---- */

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* Port from a decimal field, 1..65535; 0 when it is not one. */
static uint16_t parse_port(const char *s, size_t len)
{
    uint32_t v = 0;

    if (len == 0 || len > 5)
        return 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        v = v * 10 + (uint32_t)(s[i] - '0');
    }
    return v <= 65535 ? (uint16_t)v : 0;
}

/* Parses one line (without its '\n') into r; returns the reason it is bad,
 * or NULL (also for blank lines). */
static const char *load_line(struct routes *r, const char *p, const char *end)
{
    const char *f[3];
    size_t flen[3];
    int nf = 0;
    char name[DOMAIN_MAX + 1];
    const char *why;
    uint16_t port;
    int len;

    while (p < end && nf < 3) {
        while (p < end && is_space(*p))
            p++;
        if (p == end)
            break;
        f[nf] = p;
        while (p < end && !is_space(*p))
            p++;
        flen[nf] = (size_t)(p - f[nf]);
        nf++;
    }
    if (nf == 0)
        return NULL;
    if (nf != 2)
        return nf < 2 ? "expected \"DOMAIN PORT\", found one field" : "expected \"DOMAIN PORT\", found more than two fields";
    if ((len = domain_canonicalize(f[0], flen[0], name, sizeof name, &why)) < 0)
        return why;
    if ((port = parse_port(f[1], flen[1])) == 0)
        return "port is not a number 1..65535";
    routes_set(r, name, (size_t)len, port);
    return NULL;
}

/* Reads all of fd into a new buffer; returns NULL with errno on failure. */
static char *read_all(int fd, size_t *out_len)
{
    struct stat st;
    size_t cap, len = 0;
    char *buf;

    if (fstat(fd, &st) < 0)
        return NULL;
    cap = st.st_size > 0 ? (size_t)st.st_size + 1 : 4096;
    buf = xmalloc(cap);
    for (;;) {
        if (len == cap)
            buf = xrealloc(buf, cap *= 2);
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int saved = errno;
            free(buf);
            errno = saved;
            return NULL;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    *out_len = len;
    return buf;
}

struct routes *routes_load_file(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct routes *r;
    size_t len, lines = 0, lineno = 0;
    char *buf;

    if (fd < 0 && errno == ENOENT)
        return routes_new_empty();   /* first run: no routes yet */
    if (fd < 0) {
        snprintf(err, errlen, "open %s: %s", path, strerror(errno));
        return NULL;
    }
    buf = read_all(fd, &len);
    if (!buf) {
        snprintf(err, errlen, "read %s: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    close(fd);

    for (size_t i = 0; i < len; i++)
        lines += buf[i] == '\n';
    r = routes_new_sized(process_seed(), lines + 1, len + 1);
    for (const char *p = buf, *end = buf + len; p < end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *eol = nl ? nl : end;
        const char *why = load_line(r, p, eol);
        lineno++;
        if (why)
            log_warn("%s:%zu: skipped line \"%.*s\": %s", path, lineno,
                     (int)((eol - p) > 80 ? 80 : (eol - p)), p, why);
        p = nl ? nl + 1 : end;
    }
    free(buf);
    return r;
}

/* ---- the routes file: atomic save ---- */

/* The file's whole text, "DOMAIN PORT\n" per route, sorted by domain. */
static char *format_routes(const struct routes *r, size_t *out_len)
{
    size_t n, len = 0;
    struct routes_entry *e = routes_sorted(r, &n);
    char *buf = xmalloc(n * (DOMAIN_MAX + 8) + 1);

    for (size_t i = 0; i < n; i++) {
        memcpy(buf + len, e[i].name, e[i].len);
        len += e[i].len;
        len += (size_t)sprintf(buf + len, " %u\n", e[i].port);
    }
    free(e);
    *out_len = len;
    return buf;
}

int routes_save_file(const struct routes *r, const char *path, char *err, size_t errlen)
{
    size_t len;
    char *tmp = xmalloc(strlen(path) + 5), *dir = xstrdup(path), *text;
    char *slash = strrchr(dir, '/');
    int rc = -1;

    sprintf(tmp, "%s.tmp", path);   /* one writer: the command thread */
    if (slash == dir)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
    if (slash && file_mkdirs(dir, 0755, 0755, err, errlen) < 0)
        goto out;
    text = format_routes(r, &len);
    rc = file_write_atomic(path, tmp, text, len, 0644, err, errlen);
    if (rc > 0) {   /* saved; only the rename's durability is in doubt */
        log_warn("%s", err);
        rc = 0;
    }
    free(text);
out:
    free(dir);
    free(tmp);
    return rc;
}
