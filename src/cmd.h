/* cmd.h — the UDP command channel: parsing of command datagrams, and the
 * server that owns the UDP socket on the main thread's loop: loopback check,
 * batching, applying changes to the route table, durable save, replies.
 *
 * Protocol (one datagram = one command, trailing "\r\n" or "\n" tolerated):
 *   add DOMAIN PORT   -> "ok" | "error: <reason>"
 *   remove DOMAIN     -> "ok" | "error: <reason>"
 *   list              -> lines "DOMAIN PORT\n" sorted by domain, then a final
 *                        line "ok"; split over several datagrams at line
 *                        boundaries when longer than CMD_REPLY_MAX
 *   shutdown          -> "ok", then the server shuts down gracefully
 *   status DOMAIN     -> "DOMAIN PORT" | "error: no route for DOMAIN"; in
 *                        release mode "DOMAIN PORT" is followed by the
 *                        certificate's state, one "key: value" per line
 *                        (certificate, renewal, state, last error, next
 *                        attempt: see certs_status in certs.h)
 * An add identical to the current route is "ok" without a save; a remove of
 * a domain without a route is "error: no route for DOMAIN; ...".
 * Commands are applied in arrival order. Consecutive add/remove commands of
 * one recvmmsg batch are saved once; a list/status/shutdown first commits
 * what came before it, so it sees exactly that state. When a save fails,
 * every add/remove of that group is answered
 * "error: could not save routes to PATH: CAUSE" and nothing changes.
 * A datagram whose source is not loopback (127.0.0.0/8, ::1, ::ffff:127.x) is
 * dropped with a log line and no reply. */
#ifndef CORE_CMD_H
#define CORE_CMD_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "domain.h"

#define CMD_DATAGRAM_MAX 1024   /* longer command datagrams are refused */
#define CMD_REPLY_MAX    60000  /* payload bytes per reply datagram */

enum cmd_verb { CMD_ADD, CMD_REMOVE, CMD_LIST, CMD_SHUTDOWN, CMD_STATUS };

struct cmd_command {
    enum cmd_verb verb;
    char domain[DOMAIN_MAX + 1];   /* canonical (domain.h); "" when the verb has none */
    size_t domain_len;
    uint16_t port;                 /* CMD_ADD only */
};

/* Parses one datagram. Returns 0, or -1 with a reason for the sender in err
 * (without the "error: " prefix), e.g. "port must be 1..65535, got 70000". */
int cmd_parse(const char *msg, size_t len, struct cmd_command *out, char *err, size_t errlen);

struct loop;
struct cmd_server;

struct cmd_hooks {
    void (*on_shutdown)(void *arg);                        /* after the "ok" is sent and the
                                                              rest of the batch is handled; may
                                                              call cmd_server_close() */
    void (*on_route_added)(const char *domain, void *arg); /* after the change is durable; may be NULL */
    void *arg;
};

/* Takes ownership of udp_fd (bound, non-blocking) and watches it on l.
 * routes_path is the routes file that every change is saved to before it is
 * acknowledged. The current routes snapshot (routes.h) must be published. */
struct cmd_server *cmd_server_start(struct loop *l, int udp_fd, const char *routes_path,
                                    const struct cmd_hooks *hooks);
/* Stops reading datagrams at once, even one whose readiness the loop has
 * already collected in this iteration; the socket stays open, and what is
 * queued on it stays there for whoever holds it next (a takeover: the new
 * instance reads the same socket). Closing is still cmd_server_close's job,
 * which is safe to call only once the loop is no longer dispatching. */
void cmd_server_pause(struct cmd_server *s);
/* Stops watching and closes the UDP socket (takeover: frees the port).
 * While it runs, the server frees retired route snapshots on a 100 ms timer
 * (qsbr_reclaim) for as long as any are pending. */
void cmd_server_close(struct cmd_server *s);

/* ---- route misses racing a command (any thread but the command thread) ----
 * A request or handshake sent after an "add" datagram must be routed by it,
 * even when the command thread has not read the datagram yet. Before a name
 * is refused as unknown, cmd_sync_pending makes sure that every datagram the
 * kernel had received when it was called has been handled: read, applied,
 * saved and published (or refused, the failed save changing nothing), and
 * answered, by the command thread, as always. It returns at once, after one
 * recv(MSG_PEEK) returning EAGAIN, when no datagram waits and no batch is
 * being applied; otherwise it waits for that batch (the command thread
 * begins within SYNC_START_MS unless a handover blocks it; SYNC_MAX_MS in
 * all, see cmd.c). Never sleeps otherwise. Returns true when a batch ended
 * meanwhile, i.e. the routes may have changed: look the name up again.
 * Returns false at once when no server runs or it is paused (handed over). */
bool cmd_sync_pending(void);
/* The route lookup for a request or handshake (QSBR reader thread): the
 * current snapshot's port for the canonical name; on a miss,
 * cmd_sync_pending() and one more lookup. 0: unknown, refuse it. */
uint16_t cmd_lookup_route(const char *name, size_t len);

#endif
