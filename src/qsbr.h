/* qsbr.h — quiescent-state-based reclamation for immutable snapshots that the
 * worker threads read without locks (route table, certificate table).
 * A reader thread registers once and calls qsbr_quiescent() whenever it holds
 * no snapshot pointer (before each epoll_wait) and qsbr_offline() while it
 * sleeps. The single writer retires old snapshots with qsbr_retire(); they are
 * freed once every registered reader has passed a quiescent state since. */
#ifndef CORE_QSBR_H
#define CORE_QSBR_H
#include <stddef.h>

#define QSBR_MAX_READERS 1024   /* registering more aborts (a startup error) */

/* Reader side (each worker thread). Returns a reader id; the reader starts
 * online. A reader that sleeps without calling qsbr_offline() stalls
 * reclamation (nothing unsafe, just memory held). */
int qsbr_register(void);
void qsbr_quiescent(int reader);   /* holds no snapshot right now */
void qsbr_online(int reader);      /* about to read snapshots (after epoll_wait) */
void qsbr_offline(int reader);     /* sleeping: holds nothing until online */

/* Writer side: free(p) via fn once no reader can still hold it.
 * Thread-safe (takes a mutex; never on the request path). */
void qsbr_retire(void *p, void (*fn)(void *));
/* Frees whatever is safe now; called by writers after qsbr_retire and periodically. */
void qsbr_reclaim(void);
/* Entries retired but not yet freed (the writer re-arms a reclaim timer while
 * this is non-zero). */
size_t qsbr_pending(void);

#endif
