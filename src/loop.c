/* loop.c — epoll event loop with uniform-duration timer lists and a
 * cross-thread task queue woken through an eventfd. */
#include "loop.h"
#include "clock.h"
#include "log.h"
#include "mem.h"
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define LOOP_MAX_EVENTS 256
#define LOOP_MAX_TIMER_LISTS 16

struct timer_list {
    uint32_t ms;                    /* the duration every timer in it was set for */
    struct loop_timer head;         /* sentinel: head.next is the earliest deadline */
};

struct task {
    struct task *next;
    loop_task_fn fn;
    void *arg;
};

struct loop {
    int epfd;
    uint64_t now_ms;
    atomic_bool stop;
    struct timer_list timers[LOOP_MAX_TIMER_LISTS];
    unsigned ntimer_lists;
    struct loop_fd wake;            /* eventfd: tasks posted or stop requested */
    pthread_mutex_t task_mu;        /* guards tasks: other threads post here */
    struct task *tasks, **tasks_tail;
    bool (*before_sleep)(void *);
    void (*after_wake)(void *);
    void *hook_arg;
};

static void run_tasks(struct loop *l)
{
    struct task *t;

    pthread_mutex_lock(&l->task_mu);
    t = l->tasks;
    l->tasks = NULL;
    l->tasks_tail = &l->tasks;
    pthread_mutex_unlock(&l->task_mu);
    while (t) {
        struct task *next = t->next;
        t->fn(t->arg);
        free(t);
        t = next;
    }
}

static void on_wake(struct loop *l, struct loop_fd *h, uint32_t events)
{
    uint64_t n;
    /* Reading resets the counter; EAGAIN just means someone else drained it. */
    while (read(h->fd, &n, sizeof n) < 0 && errno == EINTR)
        ;
    run_tasks(l);
}

struct loop *loop_new(void)
{
    struct loop *l = xcalloc(1, sizeof *l);

    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    l->wake.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (l->epfd < 0 || l->wake.fd < 0) {
        log_error("event loop: %s", strerror(errno));
        if (l->epfd >= 0)
            close(l->epfd);
        if (l->wake.fd >= 0)
            close(l->wake.fd);
        free(l);
        return NULL;
    }
    l->wake.cb = on_wake;
    pthread_mutex_init(&l->task_mu, NULL);
    l->tasks_tail = &l->tasks;
    l->now_ms = clock_mono_ms();
    loop_add_fd_level(l, &l->wake, false);
    return l;
}

void loop_free(struct loop *l)
{
    if (!l)
        return;
    run_tasks(l);
    close(l->wake.fd);
    close(l->epfd);
    pthread_mutex_destroy(&l->task_mu);
    free(l);
}

int loop_add_fd(struct loop *l, struct loop_fd *h)
{
    struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = h };
    return epoll_ctl(l->epfd, EPOLL_CTL_ADD, h->fd, &ev);
}

int loop_add_fd_level(struct loop *l, struct loop_fd *h, bool exclusive)
{
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = h };
    /* EPOLLEXCLUSIVE: a listening socket shared by several loops wakes one. */
    if (exclusive)
        ev.events |= EPOLLEXCLUSIVE;
    return epoll_ctl(l->epfd, EPOLL_CTL_ADD, h->fd, &ev);
}

void loop_del_fd(struct loop *l, struct loop_fd *h)
{
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, h->fd, NULL);
}

static struct timer_list *timer_list_for(struct loop *l, uint32_t ms)
{
    for (unsigned i = 0; i < l->ntimer_lists; i++)
        if (l->timers[i].ms == ms)
            return &l->timers[i];
    if (l->ntimer_lists == LOOP_MAX_TIMER_LISTS) {
        /* Programming error: too many distinct durations. Fall back to the
         * last list, which stays correct but may fire late. */
        log_error("event loop: too many timer durations (%u ms)", ms);
        return &l->timers[LOOP_MAX_TIMER_LISTS - 1];
    }
    struct timer_list *tl = &l->timers[l->ntimer_lists++];
    tl->ms = ms;
    tl->head.next = tl->head.prev = &tl->head;
    return tl;
}

void loop_timer_cancel(struct loop *l, struct loop_timer *t)
{
    if (!t->deadline_ms)
        return;
    t->prev->next = t->next;
    t->next->prev = t->prev;
    t->prev = t->next = NULL;
    t->deadline_ms = 0;
}

void loop_timer_set(struct loop *l, struct loop_timer *t, uint32_t ms, loop_timer_cb cb)
{
    struct timer_list *tl;

    loop_timer_cancel(l, t);
    tl = timer_list_for(l, ms);
    /* Every timer in tl has the same duration, so appending keeps it sorted. */
    t->deadline_ms = l->now_ms + ms;
    if (t->deadline_ms == 0)
        t->deadline_ms = 1;
    t->list = (uint32_t)(tl - l->timers);
    t->cb = cb;
    t->prev = tl->head.prev;
    t->next = &tl->head;
    tl->head.prev->next = t;
    tl->head.prev = t;
}

/* Fires expired timers; returns ms until the next deadline, or -1 if none. */
static int run_timers(struct loop *l)
{
    int wait = -1;

    for (unsigned i = 0; i < l->ntimer_lists; i++) {
        struct timer_list *tl = &l->timers[i];
        while (tl->head.next != &tl->head && tl->head.next->deadline_ms <= l->now_ms) {
            struct loop_timer *t = tl->head.next;
            loop_timer_cancel(l, t);
            t->cb(l, t);
        }
        if (tl->head.next != &tl->head) {
            uint64_t d = tl->head.next->deadline_ms - l->now_ms;
            if (wait < 0 || d < (uint64_t)wait)
                wait = (int)(d > 60000 ? 60000 : d);
        }
    }
    return wait;
}

void loop_post(struct loop *l, loop_task_fn fn, void *arg)
{
    struct task *t = xmalloc(sizeof *t);
    uint64_t one = 1;

    t->fn = fn;
    t->arg = arg;
    t->next = NULL;
    pthread_mutex_lock(&l->task_mu);
    *l->tasks_tail = t;
    l->tasks_tail = &t->next;
    pthread_mutex_unlock(&l->task_mu);
    /* A full counter (EAGAIN) still leaves the eventfd readable: fine. */
    if (write(l->wake.fd, &one, sizeof one) < 0 && errno != EAGAIN)
        log_error("event loop: wake: %s", strerror(errno));
}

void loop_set_sleep_hooks(struct loop *l, bool (*before)(void *), void (*after)(void *), void *arg)
{
    l->before_sleep = before;
    l->after_wake = after;
    l->hook_arg = arg;
}

uint64_t loop_now_ms(const struct loop *l)
{
    return l->now_ms;
}

void loop_stop(struct loop *l)
{
    uint64_t one = 1;
    atomic_store(&l->stop, true);
    if (write(l->wake.fd, &one, sizeof one) < 0 && errno != EAGAIN)
        log_error("event loop: wake: %s", strerror(errno));
}

void loop_run(struct loop *l)
{
    struct epoll_event evs[LOOP_MAX_EVENTS];

    while (!atomic_load(&l->stop)) {
        int wait, n;

        l->now_ms = clock_mono_ms();
        wait = run_timers(l);
        if (l->before_sleep && l->before_sleep(l->hook_arg))
            wait = 0;   /* more work queued: poll without sleeping */
        n = epoll_wait(l->epfd, evs, LOOP_MAX_EVENTS, wait);
        if (l->after_wake)
            l->after_wake(l->hook_arg);
        if (n < 0) {
            if (errno != EINTR)
                log_error("event loop: epoll_wait: %s", strerror(errno));
            continue;
        }
        l->now_ms = clock_mono_ms();
        for (int i = 0; i < n; i++) {
            struct loop_fd *h = evs[i].data.ptr;
            uint32_t e = evs[i].events, m = 0;
            if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                m |= LOOP_READ;
            if (e & EPOLLOUT)
                m |= LOOP_WRITE;
            if (e & (EPOLLERR | EPOLLHUP))
                m |= LOOP_ERROR;
            if (e & (EPOLLRDHUP | EPOLLHUP))
                m |= LOOP_RDHUP;
            h->cb(l, h, m);
        }
    }
}
