/* instance.h — one core_server per config dir and command port: the old
 * ways of taking over from a running instance (ask it to shut down over the
 * command port and wait for its port; end one that does not answer by
 * signal, found through the pid file), the pid file, detaching from the
 * shell (release mode, --daemon), and the signals (SIGTERM, SIGINT ->
 * graceful shutdown; SIGHUP, SIGUSR1 -> reopen the log file; SIGPIPE
 * ignored). The socket handover, tried first, is handover.h's. */
#ifndef CORE_INSTANCE_H
#define CORE_INSTANCE_H
#include <stdbool.h>
#include <stddef.h>

struct loop;
struct config;

#define INSTANCE_PIDFILE_NAME "core_server.pid"   /* in the config dir: "PID STARTTIME\n" */

/* Binds the UDP command port. If another instance holds it, sends it
 * "shutdown" and waits (bounded) until the port is free; if it does not
 * answer, ends it as instance_end_unresponsive does. Returns the bound fd,
 * or -1 with the cause and the fix in err. */
int instance_claim_command_port(const struct config *cfg, char *err, size_t errlen);

/* The instance named by the pid file in cfg's config dir does not answer
 * (stopped with SIGSTOP, wedged). Only when that pid is still the process
 * that wrote the file (same start time) and is a core_server (holds one of
 * cfg's ports, or runs a binary of our name): SIGTERM and SIGCONT, up to
 * INSTANCE_TERM_WAIT_MS for it to let go of the ports, then SIGKILL, up to
 * INSTANCE_KILL_WAIT_MS more. Never signals anything else. Returns 0 when
 * it is gone or holds none of cfg's ports, or -1 with the reason in err. */
#define INSTANCE_TERM_WAIT_MS 3000
#define INSTANCE_KILL_WAIT_MS 3000
int instance_end_unresponsive(const struct config *cfg, char *err, size_t errlen);

/* Writes the pid file (atomically, file.h). 0, or -1 with err. */
int instance_write_pidfile(const char *config_dir, char *err, size_t errlen);
/* Removes the pid file if it still names this process. */
void instance_remove_pidfile(const char *config_dir);

/* Blocks SIGTERM/SIGINT/SIGHUP/SIGUSR1 in this thread (call before starting threads,
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
