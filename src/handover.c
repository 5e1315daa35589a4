/* handover.c — listening sockets from the running instance to a new one
 * (protocol and choices in handover.h). */
#include "handover.h"
#include "clock.h"
#include "file.h"
#include "log.h"
#include "loop.h"
#include "mem.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define HELLO "core_server handover 1"
#define HANDOVER_REQUEST_MS 1000   /* old: a connecting instance sends its request within this */
#define CONFIRM_MARGIN_MS   2000   /* new: do not confirm this close to the old one's deadline */
#define MSG_MAX 128

struct handover_offer {
    struct loop_fd ho_lfd;            /* the listening socket; first, for the callback */
    struct loop *ho_loop;
    char ho_path[PATH_MAX];           /* CONFIG_DIR/handover.sock */
    dev_t ho_dev;                     /* the file we put there: removed at stop only if */
    ino_t ho_ino;                     /*   it is still this one */
    bool ho_handed;                   /* a handover was confirmed: the file is the new one's */
    int ho_fds[NET_POOL_MAX];         /* offered, not owned */
    int ho_nfds;
    void (*ho_on_handed)(void *arg, long new_pid);
    void *ho_arg;
};

static void set_timeouts(int fd, int ms)
{
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);   /* bounds connect() too */
}

/* The address of DIR/NAME. sun_path holds 108 bytes: a deeper dir is reached
 * through /proc/self/fd/N of an O_PATH descriptor (*dirfd, to be closed by
 * the caller after bind/connect). 0, or -1 with err. */
static int make_addr(const char *dir, const char *name, struct sockaddr_un *sa, int *dirfd,
                     char *err, size_t errlen)
{
    *dirfd = -1;
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    if ((size_t)snprintf(sa->sun_path, sizeof sa->sun_path, "%s/%s", dir, name) < sizeof sa->sun_path)
        return 0;
    *dirfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (*dirfd < 0) {
        snprintf(err, errlen, "open %s: %s", dir, strerror(errno));
        return -1;
    }
    snprintf(sa->sun_path, sizeof sa->sun_path, "/proc/self/fd/%d/%s", *dirfd, name);
    return 0;
}

/* ---- the new instance ---- */

/* Receives "fds N pid PID" with its fds into pool. 1 done, 0 no answer in
 * time, -1 closed or malformed (why says which). */
static int recv_fds(int fd, struct net_pool *pool, long *pid, char *why, size_t whylen)
{
    char text[MSG_MAX + 1], ctl[CMSG_SPACE(NET_POOL_MAX * sizeof(int))];
    struct iovec iov = { text, MSG_MAX };
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl,
                        .msg_controllen = sizeof ctl };
    int nfds = 0, got = 0;
    ssize_t n;

    /* MSG_CMSG_CLOEXEC: mkcert, started later, must not inherit them. */
    while ((n = recvmsg(fd, &m, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR)
        ;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        snprintf(why, whylen, "it accepted the connection but did not answer within %d ms",
                 HANDOVER_REPLY_MS);
        return 0;
    }
    if (n <= 0) {
        snprintf(why, whylen, "it closed the connection without answering%s%s",
                 n < 0 ? ": " : "", n < 0 ? strerror(errno) : "");
        return -1;
    }
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int fds[NET_POOL_MAX];
        memcpy(fds, CMSG_DATA(c), (size_t)k * sizeof(int));
        for (int i = 0; i < k; i++)
            got += net_pool_add(pool, fds[i]) == 0;
    }
    text[n] = '\0';
    if (sscanf(text, "fds %d pid %ld", &nfds, pid) != 2 || nfds != got ||
        (m.msg_flags & MSG_CTRUNC)) {
        net_pool_close_rest(pool);
        snprintf(why, whylen, "it answered \"%.*s\" with %d socket(s): not a handover", 64, text, got);
        return -1;
    }
    return 1;
}

enum handover_result handover_request(const char *config_dir, struct net_pool *pool,
                                      struct handover_peer *peer, char *why, size_t whylen)
{
    struct sockaddr_un sa;
    enum handover_result res = HANDOVER_NONE;
    char cause[256];
    int dirfd, fd = -1;

    peer->hp_fd = -1;
    peer->hp_pid = 0;
    if (make_addr(config_dir, HANDOVER_SOCKET_NAME, &sa, &dirfd, why, whylen) < 0)
        return HANDOVER_NONE;
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(why, whylen, "socket: %s", strerror(errno));
        goto out;
    }
    set_timeouts(fd, HANDOVER_REPLY_MS);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        /* A full backlog that does not drain within the timeout: the holder
         * is stuck (or stopped). Anything else: nobody offers a handover. */
        if (e == EAGAIN || e == ETIMEDOUT)
            res = HANDOVER_UNRESPONSIVE;
        snprintf(why, whylen, "connect %s/%s: %s", config_dir, HANDOVER_SOCKET_NAME, strerror(e));
        goto out;
    }
    if (send(fd, HELLO, strlen(HELLO), MSG_NOSIGNAL) < 0) {
        snprintf(why, whylen, "send to %s/%s: %s", config_dir, HANDOVER_SOCKET_NAME, strerror(errno));
        goto out;
    }
    int r = recv_fds(fd, pool, &peer->hp_pid, cause, sizeof cause);
    if (r <= 0) {
        res = r == 0 ? HANDOVER_UNRESPONSIVE : HANDOVER_NONE;
        snprintf(why, whylen, "%s/%s: %s", config_dir, HANDOVER_SOCKET_NAME, cause);
        goto out;
    }
    peer->hp_fd = fd;
    peer->hp_received_ms = clock_mono_ms();
    fd = -1;
    res = HANDOVER_RECEIVED;
out:
    if (fd >= 0)
        close(fd);
    if (dirfd >= 0)
        close(dirfd);
    return res;
}

int handover_confirm(struct handover_peer *peer, int taken, char *err, size_t errlen)
{
    char msg[32];
    int r = 0;

    if (peer->hp_fd < 0)
        return 0;
    /* Past this point the old instance may have given up and resumed: a
     * late "ready" could leave two instances reading commands. */
    if (clock_mono_ms() - peer->hp_received_ms > HANDOVER_CONFIRM_MS - CONFIRM_MARGIN_MS) {
        snprintf(err, errlen, "handover: starting took longer than %d ms after the running "
                 "instance (pid %ld) passed its sockets; it serves on (try again)",
                 HANDOVER_CONFIRM_MS - CONFIRM_MARGIN_MS, peer->hp_pid);
        r = -1;
    } else if (snprintf(msg, sizeof msg, "ready %d", taken),
               send(peer->hp_fd, msg, strlen(msg), MSG_NOSIGNAL) < 0) {
        snprintf(err, errlen, "handover: confirming to the running instance (pid %ld): %s; it "
                 "serves on (try again)", peer->hp_pid, strerror(errno));
        r = -1;
    }
    close(peer->hp_fd);
    peer->hp_fd = -1;
    return r;
}

/* ---- the running instance ---- */

static int send_fds(int c, const int *fds, int nfds)
{
    char text[MSG_MAX], ctl[CMSG_SPACE(NET_POOL_MAX * sizeof(int))];
    int len = snprintf(text, sizeof text, "fds %d pid %ld", nfds, (long)getpid());
    struct iovec iov = { text, (size_t)len };
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };

    memset(ctl, 0, sizeof ctl);
    if (nfds > 0) {
        m.msg_control = ctl;
        m.msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int));
        struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
        memcpy(CMSG_DATA(cm), fds, (size_t)nfds * sizeof(int));
    }
    return sendmsg(c, &m, MSG_NOSIGNAL) < 0 ? -1 : 0;
}

/* One handover on connection c, start to end, blocking this (main) thread
 * for at most HANDOVER_REQUEST_MS + HANDOVER_CONFIRM_MS: while it blocks no
 * command is read, which is the point. Returns the new instance's pid once
 * it confirmed, or -1 (logged) when this instance serves on. */
static long serve_handover(struct handover_offer *o, int c)
{
    char msg[MSG_MAX + 1];
    struct ucred cred = { 0 };
    socklen_t clen = sizeof cred;
    ssize_t n;

    getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &clen);   /* for the log only */
    set_timeouts(c, HANDOVER_REQUEST_MS);
    n = recv(c, msg, MSG_MAX, 0);
    if (n <= 0 || (size_t)n != strlen(HELLO) || memcmp(msg, HELLO, (size_t)n) != 0) {
        log_warn("handover: pid %ld connected to %s but sent no handover request: ignored",
                 (long)cred.pid, o->ho_path);
        return -1;
    }
    if (send_fds(c, o->ho_fds, o->ho_nfds) < 0) {
        log_warn("handover: passing the sockets to pid %ld: %s; serving on", (long)cred.pid,
                 strerror(errno));
        return -1;
    }
    log_info("handover: passed %d listening socket(s) to the new instance (pid %ld); reading "
             "no commands until it confirms", o->ho_nfds, (long)cred.pid);
    set_timeouts(c, HANDOVER_CONFIRM_MS);
    while ((n = recv(c, msg, MSG_MAX, 0)) < 0 && errno == EINTR)
        ;
    if (n <= 0 || strncmp(msg, "ready ", 6) != 0) {
        log_warn("handover: the new instance (pid %ld) %s; reading commands again and serving on",
                 (long)cred.pid, n == 0 ? "closed the connection without confirming"
                 : n < 0 ? "did not confirm in time" : "sent something else than a confirmation");
        return -1;
    }
    return cred.pid > 0 ? (long)cred.pid : 1;
}

static void on_connection(struct loop *l, struct loop_fd *h, uint32_t events)
{
    struct handover_offer *o = (struct handover_offer *)h;   /* ho_lfd is the first member */
    int c = accept4(h->fd, NULL, NULL, SOCK_CLOEXEC);        /* blocking, with timeouts */
    long pid;

    if (c < 0)
        return;
    pid = serve_handover(o, c);
    close(c);
    if (pid < 0)
        return;
    o->ho_handed = true;
    o->ho_on_handed(o->ho_arg, pid);   /* may free o: nothing after this */
}

/* Binds the listening socket at a temporary name, makes it 0600 and renames
 * it into place, so the final name never has wider permissions and a stale
 * file of a killed instance is replaced atomically. */
static int listen_at(struct handover_offer *o, const char *config_dir, char *err, size_t errlen)
{
    char tmpname[64], tmppath[PATH_MAX];
    struct sockaddr_un sa;
    struct stat st;
    int dirfd = -1, fd, r = -1;

    snprintf(tmpname, sizeof tmpname, "%s.%ld.tmp", HANDOVER_SOCKET_NAME, (long)getpid());
    snprintf(tmppath, sizeof tmppath, "%s/%s", config_dir, tmpname);
    if (file_mkdirs(config_dir, 0755, 0755, err, errlen) < 0)
        return -1;
    if (make_addr(config_dir, tmpname, &sa, &dirfd, err, errlen) < 0)
        return -1;
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "handover socket: %s", strerror(errno));
        goto out;
    }
    unlink(tmppath);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || chmod(tmppath, 0600) < 0 ||
        listen(fd, 8) < 0 || rename(tmppath, o->ho_path) < 0 || stat(o->ho_path, &st) < 0) {
        snprintf(err, errlen, "handover socket %s: %s", o->ho_path, strerror(errno));
        unlink(tmppath);
        close(fd);
        goto out;
    }
    o->ho_lfd.fd = fd;
    o->ho_dev = st.st_dev;
    o->ho_ino = st.st_ino;
    r = 0;
out:
    if (dirfd >= 0)
        close(dirfd);
    return r;
}

struct handover_offer *handover_offer_start(struct loop *l, const char *config_dir,
                                            const int *fds, int nfds,
                                            void (*on_handed)(void *arg, long new_pid), void *arg,
                                            char *err, size_t errlen)
{
    struct handover_offer *o = xcalloc(1, sizeof *o);

    o->ho_loop = l;
    o->ho_on_handed = on_handed;
    o->ho_arg = arg;
    for (int i = 0; i < nfds && o->ho_nfds < NET_POOL_MAX; i++)
        if (fds[i] >= 0)
            o->ho_fds[o->ho_nfds++] = fds[i];
    if ((size_t)snprintf(o->ho_path, sizeof o->ho_path, "%s/%s", config_dir,
                         HANDOVER_SOCKET_NAME) >= sizeof o->ho_path) {
        snprintf(err, errlen, "handover socket: config dir path too long");
        free(o);
        return NULL;
    }
    if (listen_at(o, config_dir, err, errlen) < 0) {
        free(o);
        return NULL;
    }
    o->ho_lfd.cb = on_connection;
    if (loop_add_fd_level(l, &o->ho_lfd, false) < 0) {
        snprintf(err, errlen, "handover socket: epoll: %s", strerror(errno));
        unlink(o->ho_path);
        close(o->ho_lfd.fd);
        free(o);
        return NULL;
    }
    return o;
}

void handover_offer_stop(struct handover_offer *o)
{
    struct stat st;

    if (!o)
        return;
    loop_del_fd(o->ho_loop, &o->ho_lfd);
    close(o->ho_lfd.fd);
    /* After a confirmed handover the new instance renames its own socket
     * over ours, at about this moment: removing "ours" could remove its. */
    if (!o->ho_handed && stat(o->ho_path, &st) == 0 && st.st_dev == o->ho_dev &&
        st.st_ino == o->ho_ino)
        unlink(o->ho_path);
    free(o);
}
