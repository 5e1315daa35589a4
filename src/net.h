/* net.h — socket helpers: listening TCP and UDP sockets, non-blocking
 * loopback connects, address formatting. Functions return an fd or -1 with
 * a message in the caller's err buffer that names the address, the cause
 * and, where there is one, the fix. */
#ifndef CORE_NET_H
#define CORE_NET_H
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

/* Dual-stack [::]:port (0.0.0.0:port when IPv6 is unavailable), non-blocking,
 * SO_REUSEADDR and SO_REUSEPORT (so a new instance can listen before the old
 * one stops: takeover without refused connections). what names the port's
 * role and flag for messages ("http", "--http-port"). */
int net_listen_tcp(int port, const char *what, const char *flag, char *err, size_t errlen);

/* Dual-stack UDP socket bound to [::]:port, non-blocking. On EADDRINUSE
 * returns -2 (another instance may hold it). */
int net_bind_udp(int port, char *err, size_t errlen);

/* Starts a non-blocking connect to 127.0.0.1:port. Returns the fd (the
 * connect may still be in progress), or -1 with errno set. */
int net_connect_loopback(int port);

/* recv/sendmsg on a connected socket: like read/writev but without the
 * file-position locking read(2) and writev(2) do (measurably cheaper per
 * request). MSG_NOSIGNAL: a closed peer is EPIPE, not SIGPIPE. */
ssize_t net_recv(int fd, void *buf, size_t len);
ssize_t net_sendv(int fd, const struct iovec *iov, int iovcnt);

/* Sockets this process did not open itself: passed by systemd (socket
 * activation) or by the previous instance (handover.h). Matched to the ports
 * this instance wants by what the kernel says they are bound to, never by
 * their position, so a new instance with other ports takes what it can. */
#define NET_POOL_MAX 16
struct net_pool {
    int np_fds[NET_POOL_MAX];
    int np_n;
};
/* Adds fd (the pool owns it from now on); closes it when the pool is full.
 * Returns 0, or -1 when it was closed. */
int net_pool_add(struct net_pool *p, int fd);
/* Removes from the pool and returns the socket of type (SOCK_STREAM, which
 * must be listening, or SOCK_DGRAM) bound to port, or -1: the caller owns it. */
int net_pool_take(struct net_pool *p, int type, int port);
/* Closes every socket still in the pool; returns how many. */
int net_pool_close_rest(struct net_pool *p);

/* The local port fd is bound to, or -1 (not a bound IP socket). */
int net_local_port(int fd);

/* Formats the address (no port) into out; "?" when unknown. */
void net_addr_str(const struct sockaddr *sa, char *out, size_t cap);

#endif
