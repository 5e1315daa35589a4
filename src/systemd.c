/* systemd.c — socket activation and sd_notify without libsystemd. */
#include "systemd.h"
#include "log.h"
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define LISTEN_FDS_START 3   /* sd_listen_fds(3): passed sockets start at fd 3 */

static int parse_long(const char *s, long *out)
{
    char *end;

    if (!s || !*s)
        return -1;
    errno = 0;
    *out = strtol(s, &end, 10);
    return errno || *end ? -1 : 0;
}

int systemd_listen_fds(struct net_pool *p)
{
    long pid, n;
    int got = 0;

    if (parse_long(getenv("LISTEN_PID"), &pid) < 0 || parse_long(getenv("LISTEN_FDS"), &n) < 0)
        return 0;
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    if (pid != (long)getpid() || n <= 0 || n > NET_POOL_MAX)
        return 0;   /* meant for another process (the variables leaked to us) */
    for (int fd = LISTEN_FDS_START; fd < LISTEN_FDS_START + (int)n; fd++) {
        /* systemd passes them blocking and inheritable; the workers need
         * non-blocking accepts, and mkcert must not inherit them. */
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0)
            continue;
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        if (net_pool_add(p, fd) == 0)
            got++;
    }
    return got;
}

void systemd_notify(const char *state)
{
    static bool warned;
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    size_t len;
    int fd;

    if (!path || !*path)
        return;
    len = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || len >= sizeof a.sun_path) {
        if (!warned)
            log_warn("NOTIFY_SOCKET=%s: not a socket path or @abstract name; not notifying", path);
        warned = true;
        return;
    }
    memcpy(a.sun_path, path, len);
    if (path[0] == '@')
        a.sun_path[0] = '\0';   /* abstract namespace: the name's length counts, no NUL */
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&a,
                         (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)) < 0) {
        if (!warned)
            log_warn("sd_notify to %s: %s", path, strerror(errno));
        warned = true;
    }
    if (fd >= 0)
        close(fd);
}
