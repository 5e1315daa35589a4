/* core_client.c — tell the core_server on this machine which domain to send
 * to which local port, over its UDP command port. libc only: copy this file
 * and core_client.h into your project. */
#include "core_client.h"
#include "clock.h"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CLIENT_DATAGRAM_MAX 65536
#define CLIENT_RCVBUF (4 << 20)   /* list replies arrive as a burst of datagrams */

/* "list" is the one command answered over several datagrams. */
static bool is_list(const char *command)
{
    while (*command == ' ' || *command == '\t')
        command++;
    return strncmp(command, "list", 4) == 0 &&
           (command[4] == '\0' || command[4] == ' ' || command[4] == '\t' ||
            command[4] == '\r' || command[4] == '\n');
}

/* True when the joined reply's last line is "ok". */
static bool ends_with_ok(const char *d, size_t len)
{
    return (len == 2 && memcmp(d, "ok", 2) == 0) ||
           (len > 2 && memcmp(d + len - 3, "\nok", 3) == 0);
}

static void append(char *reply, size_t replycap, size_t *used, const char *d, size_t len)
{
    if (!reply || replycap == 0)
        return;
    if (len > replycap - 1 - *used)
        len = replycap - 1 - *used;   /* keep reading: only the copy is cut short */
    memcpy(reply + *used, d, len);
    *used += len;
    reply[*used] = '\0';
}

/* A connected UDP socket to 127.0.0.1:udp_port: only the server's replies
 * are received, and "port unreachable" comes back as ECONNREFUSED. */
static int open_socket(int udp_port)
{
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)udp_port) };
    int fd, size = CLIENT_RCVBUF;

    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    /* Best effort (capped by net.core.rmem_max). */
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    if (connect(fd, (struct sockaddr *)&sin, sizeof sin) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

enum core_client_result core_client_command(const char *command, int udp_port, int timeout_ms,
                                            char *reply, size_t replycap)
{
    char *dgram = NULL;   /* heap: callers' threads may have small stacks */
    enum core_client_result result = CORE_CLIENT_NO_ANSWER;
    long long deadline = (long long)clock_mono_ms() + timeout_ms;
    bool multi = is_list(command);
    size_t used = 0;
    int fd;

    if (reply && replycap > 0)
        reply[0] = '\0';
    if (udp_port < 1 || udp_port > 65535 || (fd = open_socket(udp_port)) < 0)
        return CORE_CLIENT_NO_ANSWER;
    if (!(dgram = malloc(CLIENT_DATAGRAM_MAX)))
        goto out;
    if (send(fd, command, strlen(command), 0) < 0)
        goto out;
    for (;;) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        long long left = deadline - (long long)clock_mono_ms();
        int rc;
        ssize_t n;

        if (left <= 0)
            goto out;
        rc = poll(&pfd, 1, (int)left);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0)
            goto out;
        n = recv(fd, dgram, CLIENT_DATAGRAM_MAX, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            goto out;   /* ECONNREFUSED: nothing listens on the port */
        if ((size_t)n >= 6 && memcmp(dgram, "error:", 6) == 0) {
            used = 0;   /* an error replaces whatever came before */
            append(reply, replycap, &used, dgram, (size_t)n);
            result = CORE_CLIENT_ERROR;
            goto out;
        }
        append(reply, replycap, &used, dgram, (size_t)n);
        if (!multi || ends_with_ok(dgram, (size_t)n)) {
            result = CORE_CLIENT_OK;
            goto out;
        }
    }
out:
    free(dgram);
    close(fd);
    return result;
}

enum core_client_result core_client_announce(const char *domain, int port)
{
    char command[512];
    int n = snprintf(command, sizeof command, "add %s %d", domain, port);

    if (n < 0 || (size_t)n >= sizeof command)
        return CORE_CLIENT_ERROR;
    return core_client_command(command, CORE_CLIENT_DEFAULT_PORT, 1000, NULL, 0);
}
