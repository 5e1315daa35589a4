/* net.c — socket helpers. */
#include "net.h"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void fmt_bind_error(int port, const char *proto, const char *what, const char *flag, int e,
                           char *err, size_t errlen)
{
    if (e == EACCES)
        snprintf(err, errlen,
                 "bind %s port %d (%s): %s (ports below 1024 need a capability: run "
                 "sudo setcap CAP_NET_BIND_SERVICE=+eip ./core_server, or use %s with a port above 1023)",
                 proto, port, what, strerror(e), flag);
    else if (e == EADDRINUSE)
        snprintf(err, errlen,
                 "bind %s port %d (%s): %s: another program is listening on it (stop it, or use %s)",
                 proto, port, what, strerror(e), flag);
    else
        snprintf(err, errlen, "bind %s port %d (%s): %s", proto, port, what, strerror(e));
}

static int bind_any(int fd, int port, bool v6)
{
    if (v6) {
        struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port),
                                  .sin6_addr = IN6ADDR_ANY_INIT };
        int off = 0;
        /* Dual-stack: one socket takes IPv4 (as ::ffff:a.b.c.d) and IPv6. */
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
        return bind(fd, (struct sockaddr *)&a, sizeof a);
    }
    struct sockaddr_in a4 = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_ANY) };
    return bind(fd, (struct sockaddr *)&a4, sizeof a4);
}

/* Opens a socket of type, trying IPv6 dual-stack first. */
static int open_socket(int type, bool *v6)
{
    int fd = socket(AF_INET6, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    *v6 = fd >= 0;
    if (fd < 0)
        fd = socket(AF_INET, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    return fd;
}

int net_listen_tcp(int port, const char *what, const char *flag, char *err, size_t errlen)
{
    bool v6;
    int one = 1, fd = open_socket(SOCK_STREAM, &v6);

    if (fd < 0) {
        snprintf(err, errlen, "socket for %s port %d: %s", what, port, strerror(errno));
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (bind_any(fd, port, v6) < 0) {
        fmt_bind_error(port, "TCP", what, flag, errno, err, errlen);
        close(fd);
        return -1;
    }
    /* Wake us only when the client's first bytes (request or ClientHello)
     * are there: saves a wake-up and a read that would find nothing. */
    int defer_s = 5;
    setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer_s, sizeof defer_s);
    /* Accepted sockets inherit TCP_NODELAY from the listener (the kernel
     * clones the listening socket): no setsockopt per connection. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (listen(fd, 4096) < 0) {
        snprintf(err, errlen, "listen on TCP port %d (%s): %s", port, what, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

int net_bind_udp(int port, char *err, size_t errlen)
{
    bool v6;
    int fd = open_socket(SOCK_DGRAM, &v6);

    if (fd < 0) {
        snprintf(err, errlen, "socket for UDP port %d: %s", port, strerror(errno));
        return -1;
    }
    /* A burst of thousands of "add"s (one per web server at boot) must not
     * overflow the default ~200 KiB receive buffer: ask for 8 MiB, beyond
     * net.core.rmem_max when we have CAP_NET_ADMIN (FORCE), else as much as
     * the limit allows. */
    int rcvbuf = 8 << 20;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    if (bind_any(fd, port, v6) < 0) {
        int e = errno;
        fmt_bind_error(port, "UDP", "commands", "--udp-port", e, err, errlen);
        close(fd);
        return e == EADDRINUSE ? -2 : -1;
    }
    return fd;
}

int net_connect_loopback(int port)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

ssize_t net_recv(int fd, void *buf, size_t len)
{
    return recv(fd, buf, len, 0);
}

ssize_t net_sendv(int fd, const struct iovec *iov, int iovcnt)
{
    if (iovcnt == 1)
        return send(fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL);
    struct msghdr m = { .msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)iovcnt };
    return sendmsg(fd, &m, MSG_NOSIGNAL);
}

void net_addr_str(const struct sockaddr *sa, char *out, size_t cap)
{
    const char *r = NULL;

    if (sa->sa_family == AF_INET) {
        r = inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)cap);
    } else if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        /* Show IPv4 clients of the dual-stack socket as plain IPv4. */
        if (IN6_IS_ADDR_V4MAPPED(a6))
            r = inet_ntop(AF_INET, &a6->s6_addr[12], out, (socklen_t)cap);
        else
            r = inet_ntop(AF_INET6, a6, out, (socklen_t)cap);
    }
    if (!r)
        snprintf(out, cap, "?");
}

int net_local_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;

    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -1;
}

int net_pool_add(struct net_pool *p, int fd)
{
    if (p->np_n == NET_POOL_MAX) {
        close(fd);
        return -1;
    }
    p->np_fds[p->np_n++] = fd;
    return 0;
}

/* True when fd is a socket of type bound to port (and listening, for TCP). */
static bool socket_is(int fd, int type, int port)
{
    int t = 0, acc = 0;
    socklen_t len = sizeof t;

    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &t, &len) < 0 || t != type)
        return false;
    len = sizeof acc;
    if (type == SOCK_STREAM &&
        (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) < 0 || !acc))
        return false;
    return net_local_port(fd) == port;
}

int net_pool_take(struct net_pool *p, int type, int port)
{
    for (int i = 0; i < p->np_n; i++) {
        int fd = p->np_fds[i];
        if (!socket_is(fd, type, port))
            continue;
        p->np_fds[i] = p->np_fds[--p->np_n];
        return fd;
    }
    return -1;
}

int net_pool_close_rest(struct net_pool *p)
{
    int n = p->np_n;

    for (int i = 0; i < n; i++)
        close(p->np_fds[i]);
    p->np_n = 0;
    return n;
}
