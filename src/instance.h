/* instance.h — one core_server per command port: taking over from a running
 * instance (ask it to shut down, wait for its port), detaching from the shell
 * (release mode, --daemon), and the signals (SIGTERM, SIGINT -> graceful
 * shutdown; SIGHUP -> reopen the log file; SIGPIPE ignored). */
#ifndef CORE_INSTANCE_H
#define CORE_INSTANCE_H
#include <stdbool.h>
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

/* Detaching. instance_daemonize_begin forks: the parent waits on a pipe and
 * exits 0 (printing the daemon's pid) once the child calls
 * instance_daemonize_ready, or exits 1 printing the line the child passed to
 * instance_daemonize_fail (or a note that it died) on stderr. It returns only
 * in the child, which is in a new session, with the working directory and
 * umask unchanged. Call before any thread starts: fork keeps only the calling
 * thread. Returns 0 in the child, or -1 with the cause in err (no fork). */
int instance_daemonize_begin(char *err, size_t errlen);
/* Points stdin, stdout and stderr at /dev/null (call once the log file is
 * open). No effect unless detaching. Returns 0 or -1 with the cause in err. */
int instance_daemonize_stdio(char *err, size_t errlen);
/* The ports are bound: releases the waiting parent with status 0. */
void instance_daemonize_ready(void);
/* Startup failed: the waiting parent prints "core_server: msg" and exits 1.
 * Returns false when no parent waits (not detaching, or already released). */
bool instance_daemonize_fail(const char *msg);

#endif
