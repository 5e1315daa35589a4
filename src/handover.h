/* handover.h — passing the listening sockets from the running instance to a
 * new one over a Unix-domain socket (SCM_RIGHTS), so that during a takeover
 * no listening socket is ever closed: connections waiting in an accept queue
 * and datagrams waiting on the command socket are served by the new instance.
 * Owns the socket CONFIG_DIR/handover.sock, the protocol on it, and the
 * bounded waits. Does not own the sockets passed (the caller's), nor what each
 * instance does before and after (main.c), nor ending an instance that does
 * not answer (instance.h).
 *
 * Why a path in the config dir with mode 0600, not an abstract socket: the
 * config dir is already what makes an instance "the" instance (its routes
 * file lives there), the file mode lets the kernel enforce "same user" with
 * no peer-credential code to get right on both sides, and `ls` shows it. An
 * abstract name would need a name derived from the dir, SO_PEERCRED checks,
 * and is scoped to a network namespace rather than to the directory. A stale
 * file left by a killed instance is harmless: connect() gets ECONNREFUSED,
 * the new instance takes over the old way and replaces the file.
 *
 * Protocol, SOCK_SEQPACKET (one send = one message; fds travel with one):
 *   new -> old   "core_server handover 1"
 *   old -> new   "fds N pid PID" carrying N listening sockets (http, https,
 *                command). From here the old instance reads no command: its
 *                routes file is final (every change is saved before "ok").
 *   new -> old   "ready N" once it accepts and reads commands on the sockets
 *                (N = how many it took). Only then does the old one stop
 *                accepting, close its copies and drain.
 * The old instance waits HANDOVER_CONFIRM_MS for "ready"; without it (the new
 * one died or is stuck) it resumes reading commands and serves on. */
#ifndef CORE_HANDOVER_H
#define CORE_HANDOVER_H
#include <stddef.h>
#include <stdint.h>
#include "net.h"

#define HANDOVER_SOCKET_NAME "handover.sock"
#define HANDOVER_REPLY_MS   3000   /* new: an old instance that accepted answers within this */
#define HANDOVER_CONFIRM_MS 10000  /* old: the new one says "ready" within this */

struct loop;

/* ---- the new instance ---- */

enum handover_result {
    HANDOVER_NONE,          /* nobody offers a handover (no socket, refused, closed) */
    HANDOVER_RECEIVED,      /* sockets are in the pool: confirm with handover_confirm */
    HANDOVER_UNRESPONSIVE,  /* an instance holds the socket but did not answer in time */
};

struct handover_peer {
    int hp_fd;                 /* the connection to the old instance; -1: none */
    long hp_pid;               /* its pid, as it said */
    uint64_t hp_received_ms;   /* CLOCK_MONOTONIC when the sockets arrived */
};

/* Asks the instance serving config_dir for its listening sockets and adds
 * them to pool. On HANDOVER_NONE and HANDOVER_UNRESPONSIVE, why says what was
 * found (for the log). Blocks at most about HANDOVER_REPLY_MS. */
enum handover_result handover_request(const char *config_dir, struct net_pool *pool,
                                      struct handover_peer *peer, char *why, size_t whylen);
/* Tells the old instance that this one now serves (taken sockets), and
 * closes the connection. -1 with err when the old one can no longer be told
 * (it gave up waiting and serves on): the caller must not serve then. */
int handover_confirm(struct handover_peer *peer, int taken, char *err, size_t errlen);

/* ---- the running instance ---- */

struct handover_offer;

/* Listens on CONFIG_DIR/handover.sock (created under a temporary name, made
 * 0600, renamed into place) on l, offering fds[0..nfds) (not owned; they must
 * stay open until handover_offer_stop). After a confirmed handover
 * on_handed(arg, new_pid) runs on l's thread; it may call handover_offer_stop.
 * Returns NULL with the cause in err. */
struct handover_offer *handover_offer_start(struct loop *l, const char *config_dir,
                                            const int *fds, int nfds,
                                            void (*on_handed)(void *arg, long new_pid), void *arg,
                                            char *err, size_t errlen);
/* Stops listening. Removes the socket file unless a handover was confirmed
 * (the new instance has put its own in place) or it is no longer ours. */
void handover_offer_stop(struct handover_offer *o);

#endif
