/* core_client.h — the client API for web servers written in C: announce a
 * domain to the core_server on this machine. Self-contained (libc only):
 * copy core_client.c and core_client.h into your project.
 *
 *   if (core_client_announce("example.com", 5665) != 0) ... // not fatal: retry later
 */
#ifndef CORE_CLIENT_H
#define CORE_CLIENT_H
#include <stddef.h>

#define CORE_CLIENT_DEFAULT_PORT 40608

enum core_client_result {
    CORE_CLIENT_OK = 0,        /* reply was "ok" (or, for list, ended with "ok") */
    CORE_CLIENT_ERROR = 1,     /* reply was "error: ..." */
    CORE_CLIENT_NO_ANSWER = 2  /* no server answered in time, or a socket error */
};

/* Sends command (e.g. "add example.com 5665") to 127.0.0.1:udp_port and waits
 * up to timeout_ms for the whole reply, copied NUL-terminated into reply
 * (may be NULL; cut short when replycap is too small). For "list" the reply
 * datagrams are joined until the last line is "ok"; any other command's
 * reply is one datagram. Thread-safe; allocates 64 KiB for the call. A
 * refused port (no server) returns CORE_CLIENT_NO_ANSWER at once. */
enum core_client_result core_client_command(const char *command, int udp_port, int timeout_ms,
                                            char *reply, size_t replycap);

/* "add DOMAIN PORT" to the default command port, waiting up to 1 s. */
enum core_client_result core_client_announce(const char *domain, int port);

#endif
