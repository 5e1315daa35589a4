/* instance.h — one core_server per command port: taking over from a running
 * instance (ask it to shut down, wait for its port), and the signals that
 * end this one (SIGTERM, SIGINT -> graceful shutdown; SIGPIPE ignored). */
#ifndef CORE_INSTANCE_H
#define CORE_INSTANCE_H
#include <stddef.h>

struct loop;

/* Binds the UDP command port. If another instance holds it, sends it
 * "shutdown" and waits (bounded) until the port is free. Returns the bound
 * fd, or -1 with the cause and the fix in err. */
int instance_claim_command_port(int port, char *err, size_t errlen);

/* Blocks SIGTERM/SIGINT/SIGHUP in this thread (call before starting threads,
 * so they inherit the mask) and ignores SIGPIPE. */
void instance_block_signals(void);
/* Watches the blocked signals on l; on_stop(arg) runs on l's thread for
 * SIGTERM or SIGINT. Returns 0 or -1. */
int instance_watch_signals(struct loop *l, void (*on_stop)(void *), void *arg);

#endif
