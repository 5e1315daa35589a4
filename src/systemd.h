/* systemd.h — the two pieces of systemd's protocol core_server speaks:
 * socket activation (LISTEN_FDS/LISTEN_PID, sd_listen_fds(3)) and readiness
 * notification (NOTIFY_SOCKET, sd_notify(3)). Written here rather than
 * linked from libsystemd: each is a few lines (read two variables; send one
 * datagram), and a new library dependency for that would not pay for itself.
 * Does not own which passed socket serves what: main.c matches them to the
 * ports by address (net_pool_take). */
#ifndef CORE_SYSTEMD_H
#define CORE_SYSTEMD_H
#include "net.h"

/* When LISTEN_PID is this process and LISTEN_FDS=N, puts fds 3..3+N-1 into
 * p (made non-blocking and close-on-exec) and unsets the variables so that
 * children (mkcert) do not take them for theirs. Call before forking: after
 * a fork LISTEN_PID no longer matches. Returns N, or 0 when not activated. */
int systemd_listen_fds(struct net_pool *p);

/* Sends state ("READY=1", "STOPPING=1", ...) to NOTIFY_SOCKET when set
 * (a path, or an abstract name when it starts with '@'). Best effort: a
 * failure is logged once and changes nothing. */
void systemd_notify(const char *state);

#endif
