/* qsbr.c — quiescent-state-based reclamation: per-reader epoch counters,
 * a global epoch, and a writer-side retire list under a mutex.
 *
 * The scheme: each retirement bumps the global epoch to E and tags the entry
 * with E. A reader at a quiescent state (or going online) copies the global
 * epoch into its own counter; 0 means offline. An entry tagged E is safe to
 * free once every online reader's counter is >= E: that reader has since
 * been at a point where it held no snapshot, after the old pointer had been
 * replaced. The seq_cst fences on both sides make "reader announces itself,
 * then loads the pointer" vs "writer swaps the pointer, then reads the
 * announcements" a Dekker pair: at least one side sees the other's store. */
#include "qsbr.h"
#include "log.h"
#include "mem.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

struct reader {
    _Alignas(64) _Atomic uint64_t seen;   /* epoch at last quiescent state; 0 offline */
    char pad[64 - sizeof(uint64_t)];      /* one cache line each: no false sharing */
};

struct retired {
    struct retired *next;
    void *ptr;
    void (*fn)(void *);
    uint64_t epoch;   /* global epoch right after this entry was retired */
};

static struct reader readers[QSBR_MAX_READERS];
static _Atomic int reader_count;
static _Atomic uint64_t global_epoch = 1;   /* starts at 1: 0 means offline */

static pthread_mutex_t retire_lock = PTHREAD_MUTEX_INITIALIZER;
static struct retired *retire_head;         /* newest first; under retire_lock */
static size_t retire_count;                 /* under retire_lock */

int qsbr_register(void)
{
    int id = atomic_fetch_add(&reader_count, 1);
    if (id >= QSBR_MAX_READERS) {
        /* Startup only (one per worker thread): a configuration error. */
        log_error("qsbr: more than %d reader threads (use fewer --workers)", QSBR_MAX_READERS);
        abort();
    }
    qsbr_online(id);   /* registered readers start online: the safe default */
    return id;
}

void qsbr_quiescent(int reader)
{
    qsbr_online(reader);   /* same store: "I hold nothing older than now" */
}

void qsbr_online(int reader)
{
    uint64_t e = atomic_load(&global_epoch);
    atomic_store(&readers[reader].seen, e);
    /* Pairs with the fence in qsbr_reclaim: the announcement is visible
     * before any snapshot pointer this thread loads afterwards. */
    atomic_thread_fence(memory_order_seq_cst);
}

void qsbr_offline(int reader)
{
    /* Release: every read of a snapshot happens before the writer sees 0. */
    atomic_store_explicit(&readers[reader].seen, 0, memory_order_release);
}

void qsbr_retire(void *p, void (*fn)(void *))
{
    struct retired *r = xmalloc(sizeof *r);

    r->ptr = p;
    r->fn = fn;
    /* The caller swapped the pointer before this call; readers that copy an
     * epoch >= this one did so after the swap. */
    r->epoch = atomic_fetch_add(&global_epoch, 1) + 1;
    pthread_mutex_lock(&retire_lock);
    r->next = retire_head;
    retire_head = r;
    retire_count++;
    pthread_mutex_unlock(&retire_lock);
}

/* The smallest epoch any online reader may still be behind; UINT64_MAX when
 * every reader is offline. */
static uint64_t min_online_epoch(void)
{
    uint64_t min = UINT64_MAX;
    int n = atomic_load(&reader_count);

    atomic_thread_fence(memory_order_seq_cst);
    for (int i = 0; i < n && i < QSBR_MAX_READERS; i++) {
        uint64_t seen = atomic_load_explicit(&readers[i].seen, memory_order_acquire);
        if (seen != 0 && seen < min)
            min = seen;
    }
    return min;
}

void qsbr_reclaim(void)
{
    struct retired *safe = NULL, **pp;
    uint64_t min;

    pthread_mutex_lock(&retire_lock);
    min = min_online_epoch();
    for (pp = &retire_head; *pp;) {
        struct retired *r = *pp;
        if (r->epoch <= min) {
            *pp = r->next;
            r->next = safe;
            safe = r;
            retire_count--;
        } else {
            pp = &r->next;
        }
    }
    pthread_mutex_unlock(&retire_lock);

    /* Free outside the lock: fn may be slow (a large table). */
    while (safe) {
        struct retired *next = safe->next;
        safe->fn(safe->ptr);
        free(safe);
        safe = next;
    }
}

size_t qsbr_pending(void)
{
    size_t n;

    pthread_mutex_lock(&retire_lock);
    n = retire_count;
    pthread_mutex_unlock(&retire_lock);
    return n;
}
