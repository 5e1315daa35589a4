/* loop.h — the event loop: one per thread, hides epoll. Owns fd readiness
 * dispatch, timers (uniform-duration deadline lists, O(1) set/cancel) and the
 * thread-safe task queue other threads use to run code on this loop's thread.
 * Does not own the fds it watches. */
#ifndef CORE_LOOP_H
#define CORE_LOOP_H
#include <stdbool.h>
#include <stdint.h>

struct loop;
struct loop_fd;

#define LOOP_READ  0x1u   /* readable, or peer closed its write side */
#define LOOP_WRITE 0x2u   /* writable */
#define LOOP_ERROR 0x4u   /* error or hang-up: the owner should close */
#define LOOP_RDHUP 0x8u   /* the peer closed its write side: an EOF is queued behind any data */

typedef void (*loop_fd_cb)(struct loop *l, struct loop_fd *h, uint32_t events);

/* Embedded in the owner's struct; the callback recovers the owner. */
struct loop_fd {
    int fd;
    loop_fd_cb cb;
};

struct loop_timer;
typedef void (*loop_timer_cb)(struct loop *l, struct loop_timer *t);

/* Embedded in the owner's struct. Zero-initialise before first use. */
struct loop_timer {
    struct loop_timer *prev, *next;  /* in the list of timers of the same duration */
    uint64_t deadline_ms;            /* 0: not armed */
    uint32_t list;                   /* which duration list it is in */
    loop_timer_cb cb;
};

typedef void (*loop_task_fn)(void *arg);

struct loop *loop_new(void);
void loop_free(struct loop *l);

/* Watches fd edge-triggered for both read and write readiness: the callback
 * gets LOOP_* bits as readiness arrives; owners keep their own "can read /
 * can write" flags. Returns 0, or -1 with errno. */
int loop_add_fd(struct loop *l, struct loop_fd *h);
/* Level-triggered read-only watch (listening and UDP sockets, eventfds). */
int loop_add_fd_level(struct loop *l, struct loop_fd *h, bool exclusive);
void loop_del_fd(struct loop *l, struct loop_fd *h);

/* Arms t to fire ms from now (re-arming moves it). Durations used by a loop
 * should be few (each distinct one gets a list); cb runs once, disarmed. */
void loop_timer_set(struct loop *l, struct loop_timer *t, uint32_t ms, loop_timer_cb cb);
void loop_timer_cancel(struct loop *l, struct loop_timer *t);
static inline bool loop_timer_armed(const struct loop_timer *t) { return t->deadline_ms != 0; }

/* Thread-safe: runs fn(arg) on l's thread during its next iteration. */
void loop_post(struct loop *l, loop_task_fn fn, void *arg);

/* before runs before every epoll_wait (returning true when it left work
 * queued, so the wait does not block), after runs right after it returns
 * (QSBR offline/online, deferred frees). Either may be NULL. */
void loop_set_sleep_hooks(struct loop *l, bool (*before)(void *), void (*after)(void *), void *arg);

/* Milliseconds on CLOCK_MONOTONIC, cached per iteration. */
uint64_t loop_now_ms(const struct loop *l);

/* Runs until loop_stop(). loop_stop is thread-safe. */
void loop_run(struct loop *l);
void loop_stop(struct loop *l);

#endif
