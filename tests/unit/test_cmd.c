/* test_cmd.c — the command parser (every valid and invalid form, with the
 * exact error texts), and the UDP command server
 * end to end on a real loop and socket: replies, batching order, list
 * splitting, oversized datagrams, save failures, non-loopback sources. */
#include "check.h"
#include "cmd.h"
#include "core_client.h"
#include "log.h"
#include "loop.h"
#include "qsbr.h"
#include "routes.h"
#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- parser ---- */

static struct cmd_command cmd;
static char err[512];

static int parse(const char *msg)
{
    err[0] = '\0';
    return cmd_parse(msg, strlen(msg), &cmd, err, sizeof err);
}

/* Parses msg, expecting failure with exactly want (no "error: " prefix). */
#define CHECK_PARSE_ERR(msg, want) do { CHECK(parse(msg) == -1); CHECK_STR(err, want); } while (0)

static void test_parse_valid(void)
{
    CHECK(parse("add example.com 5665") == 0);
    CHECK(cmd.verb == CMD_ADD && cmd.port == 5665);
    CHECK_STR(cmd.domain, "example.com");
    CHECK(cmd.domain_len == 11);

    CHECK(parse("add Example.COM. 1\n") == 0);            /* case folded, root dot dropped */
    CHECK_STR(cmd.domain, "example.com");
    CHECK(cmd.port == 1);
    CHECK(parse("add a.b 65535\r\n") == 0 && cmd.port == 65535);
    CHECK(parse("  add \t x.test   080  ") == 0 && cmd.port == 80);   /* runs of blanks */
    CHECK(parse("add\tlocalhost\t8080") == 0 && cmd.port == 8080);
    CHECK_STR(cmd.domain, "localhost");

    CHECK(parse("remove example.com") == 0 && cmd.verb == CMD_REMOVE);
    CHECK_STR(cmd.domain, "example.com");
    CHECK(parse("list") == 0 && cmd.verb == CMD_LIST && cmd.domain[0] == '\0');
    CHECK(parse("list\n") == 0 && cmd.verb == CMD_LIST);
    CHECK(parse("shutdown\r\n") == 0 && cmd.verb == CMD_SHUTDOWN);
    CHECK(parse("status a-b.example") == 0 && cmd.verb == CMD_STATUS);
    CHECK_STR(cmd.domain, "a-b.example");
}

static void test_parse_errors(void)
{
    CHECK_PARSE_ERR("", "empty command; expected add, remove, list, shutdown or status");
    CHECK_PARSE_ERR("\n", "empty command; expected add, remove, list, shutdown or status");
    CHECK_PARSE_ERR(" \t ", "empty command; expected add, remove, list, shutdown or status");
    CHECK_PARSE_ERR("ADD example.com 80",
                    "unknown command \"ADD\"; expected add, remove, list, shutdown or status");
    CHECK_PARSE_ERR("delete x", "unknown command \"delete\"; expected add, remove, list, shutdown or status");
    CHECK_PARSE_ERR("add 5665", "add takes 2 arguments, got 1; usage: add DOMAIN PORT");
    CHECK_PARSE_ERR("add", "add takes 2 arguments, got 0; usage: add DOMAIN PORT");
    CHECK_PARSE_ERR("add a.com 1 2", "add takes 2 arguments, got 3; usage: add DOMAIN PORT");
    CHECK_PARSE_ERR("add a b c d e", "add takes 2 arguments, got 5; usage: add DOMAIN PORT");
    CHECK_PARSE_ERR("remove", "remove takes 1 argument, got 0; usage: remove DOMAIN");
    CHECK_PARSE_ERR("remove a b", "remove takes 1 argument, got 2; usage: remove DOMAIN");
    CHECK_PARSE_ERR("list all", "list takes 0 arguments, got 1; usage: list");
    CHECK_PARSE_ERR("shutdown now", "shutdown takes 0 arguments, got 1; usage: shutdown");
    CHECK_PARSE_ERR("status", "status takes 1 argument, got 0; usage: status DOMAIN");

    CHECK_PARSE_ERR("add a.com 0", "port must be 1..65535, got 0");
    CHECK_PARSE_ERR("add a.com 65536", "port must be 1..65535, got 65536");
    CHECK_PARSE_ERR("add a.com 70000", "port must be 1..65535, got 70000");
    CHECK_PARSE_ERR("add a.com 99999999999999999999", "port must be 1..65535, got 99999999999999999999");
    CHECK_PARSE_ERR("add a.com -1", "port must be a decimal number 1..65535, got \"-1\"");
    CHECK_PARSE_ERR("add a.com +80", "port must be a decimal number 1..65535, got \"+80\"");
    CHECK_PARSE_ERR("add a.com 0x50", "port must be a decimal number 1..65535, got \"0x50\"");
    CHECK_PARSE_ERR("add a.com 80a", "port must be a decimal number 1..65535, got \"80a\"");

    CHECK_PARSE_ERR("add bad_name.com 80", "invalid domain \"bad_name.com\": only letters, digits, "
                    "'-' and '.' are allowed; use a host name such as example.com");
    CHECK_PARSE_ERR("add -a.com 80", "invalid domain \"-a.com\": label starts with '-'; "
                    "use a host name such as example.com");
    CHECK_PARSE_ERR("remove a-.com", "invalid domain \"a-.com\": label ends with '-'; "
                    "use a host name such as example.com");
    CHECK_PARSE_ERR("status a..com", "invalid domain \"a..com\": empty label (two dots in a row, "
                    "or a leading dot); use a host name such as example.com");
    CHECK_PARSE_ERR("add . 80", "invalid domain \".\": empty name; use a host name such as example.com");
    CHECK_PARSE_ERR("add example.com:80 80", "invalid domain \"example.com:80\": only letters, "
                    "digits, '-' and '.' are allowed; use a host name such as example.com");

    /* Only one trailing newline; anything else is a control character. */
    CHECK_PARSE_ERR("add a.com 80\nremove a.com", "control character 0x0a at byte 12; send one "
                    "command per datagram as one line of text, e.g. \"add example.com 5665\"");
    CHECK_PARSE_ERR("list\n\n", "control character 0x0a at byte 4; send one command per datagram "
                    "as one line of text, e.g. \"add example.com 5665\"");
    CHECK(cmd_parse("list\0", 5, &cmd, err, sizeof err) == -1);
    CHECK(strstr(err, "control character 0x00 at byte 4") == err);

    /* Long pieces are shown cut at 64 bytes. */
    char msg[400];
    memset(msg, 'x', 100);
    strcpy(msg + 100, " a.com");
    CHECK(parse(msg) == -1);
    CHECK(strstr(err, "unknown command \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...\";") == err);
}

/* ---- the server, end to end ---- */

static char dir[256], routes_path[512];
static int srv_port;
static struct loop *srv_loop;
static struct cmd_server *srv;
static pthread_t srv_thread;
static int shutdowns, added_hooks;

static void on_shutdown(void *arg)
{
    shutdowns++;
}

static void on_route_added(const char *domain, void *arg)
{
    added_hooks++;
}

static void *run_loop(void *arg)
{
    loop_run(srv_loop);
    return NULL;
}

/* Server on 127.0.0.1:ephemeral, its loop on a thread. */
static void server_start(void)
{
    struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_ANY_INIT };
    socklen_t len = sizeof sin6;
    struct cmd_hooks hooks = { .on_shutdown = on_shutdown, .on_route_added = on_route_added };
    char e[256];
    int fd = socket(AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), off = 0;

    /* Dual-stack like the real server: IPv4 peers arrive as ::ffff:a.b.c.d. */
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
    CHECK(bind(fd, (struct sockaddr *)&sin6, sizeof sin6) == 0);
    getsockname(fd, (struct sockaddr *)&sin6, &len);
    srv_port = ntohs(sin6.sin6_port);
    routes_publish(routes_load_file(routes_path, e, sizeof e));
    srv_loop = loop_new();
    srv = cmd_server_start(srv_loop, fd, routes_path, &hooks);
    CHECK(srv != NULL);
}

static void server_run(void)
{
    pthread_create(&srv_thread, NULL, run_loop, NULL);
}

static void server_stop(void)
{
    loop_stop(srv_loop);
    pthread_join(srv_thread, NULL);
    cmd_server_close(srv);
    loop_free(srv_loop);
}

static char reply[1 << 20];

static enum core_client_result send_cmd(const char *command)
{
    return core_client_command(command, srv_port, 2000, reply, sizeof reply);
}

static const char *file_text(void)
{
    static char buf[4096];
    FILE *f = fopen(routes_path, "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = '\0';
    return buf;
}

static void test_server_commands(void)
{
    CHECK(send_cmd("list") == CORE_CLIENT_OK);
    CHECK_STR(reply, "ok");
    CHECK(send_cmd("add Example.com 5665\n") == CORE_CLIENT_OK);
    CHECK_STR(reply, "ok");
    CHECK_STR(file_text(), "example.com 5665\n");   /* durable before the ok */
    CHECK(routes_lookup(routes_current(), "example.com", 11) == 5665);
    CHECK(send_cmd("add example.com 5665") == CORE_CLIENT_OK);   /* identical: ok */
    CHECK(send_cmd("add example.com 6000") == CORE_CLIENT_OK);
    CHECK(send_cmd("add b.test 7000") == CORE_CLIENT_OK);
    CHECK(send_cmd("list") == CORE_CLIENT_OK);
    CHECK_STR(reply, "b.test 7000\nexample.com 6000\nok");
    CHECK_STR(file_text(), "b.test 7000\nexample.com 6000\n");
    CHECK(send_cmd("status example.com") == CORE_CLIENT_OK);
    CHECK_STR(reply, "example.com 6000");
    CHECK(send_cmd("status nope.test") == CORE_CLIENT_ERROR);
    CHECK_STR(reply, "error: no route for nope.test");
    CHECK(send_cmd("remove b.test") == CORE_CLIENT_OK);
    CHECK(send_cmd("remove b.test") == CORE_CLIENT_ERROR);
    CHECK_STR(reply, "error: no route for b.test; nothing to remove (list shows the routes)");
    CHECK(send_cmd("add x 0") == CORE_CLIENT_ERROR);
    CHECK_STR(reply, "error: port must be 1..65535, got 0");
    CHECK(send_cmd("ADD x 1") == CORE_CLIENT_ERROR);
    CHECK_STR(reply, "error: unknown command \"ADD\"; expected add, remove, list, shutdown or status");
    CHECK_STR(file_text(), "example.com 6000\n");
    CHECK(added_hooks == 3);   /* new, changed, new; not the identical add */
    CHECK(send_cmd("shutdown") == CORE_CLIENT_OK);
    CHECK_STR(reply, "ok");
    usleep(50 * 1000);
    CHECK(shutdowns == 1);
}

static void test_server_oversized(void)
{
    char big[CMD_DATAGRAM_MAX + 2];
    memset(big, ' ', sizeof big - 1);
    memcpy(big, "list", 4);
    big[sizeof big - 1] = '\0';
    CHECK(send_cmd(big) == CORE_CLIENT_ERROR);
    CHECK_STR(reply, "error: command of 1025 bytes is longer than the 1024-byte limit; send one "
              "command per datagram");
    big[CMD_DATAGRAM_MAX] = '\0';   /* exactly the limit: accepted */
    CHECK(send_cmd(big) == CORE_CLIENT_OK);
}

/* Sends "VERB host-I.... [PORT]" for i in 0..n-1 in bursts of 100 without
 * waiting (so the server batches them); returns how many replies were not "ok". */
static int send_burst(const char *verb, int n, bool with_port)
{
    struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons((uint16_t)srv_port) };
    int fd = socket(AF_INET, SOCK_DGRAM, 0), bad = 0;
    char c[300], buf[256];

    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connect(fd, (struct sockaddr *)&to, sizeof to);
    for (int base = 0; base < n; base += 100) {
        int k;
        for (k = base; k < n && k < base + 100; k++) {
            int len = snprintf(c, sizeof c, "%s host-%04d.a-rather-long-domain-name-for-splitting.example",
                               verb, k);
            if (with_port)
                len += snprintf(c + len, sizeof c - (size_t)len, " %d", 1000 + k);
            send(fd, c, (size_t)len, 0);
        }
        for (int j = base; j < k; j++) {
            struct pollfd p = { .fd = fd, .events = POLLIN };
            ssize_t r = poll(&p, 1, 2000) == 1 ? recv(fd, buf, sizeof buf, 0) : -1;
            bad += !(r == 2 && memcmp(buf, "ok", 2) == 0);
        }
    }
    close(fd);
    return bad;
}

/* A list of many routes spans datagrams; the client joins them. */
static void test_server_list_split(void)
{
    char *want = malloc(1 << 20);
    size_t len = 0;

    CHECK(send_burst("add", 3000, true) == 0);
    len += (size_t)sprintf(want + len, "example.com 6000\n");   /* from earlier tests */
    for (int i = 0; i < 3000; i++)
        len += (size_t)sprintf(want + len, "host-%04d.a-rather-long-domain-name-for-splitting.example %d\n", i, 1000 + i);
    strcpy(want + len, "ok");
    CHECK(len > 2 * CMD_REPLY_MAX);
    CHECK(send_cmd("list") == CORE_CLIENT_OK);
    CHECK(strcmp(reply, want) == 0);
    free(want);
    CHECK(send_burst("remove", 3000, false) == 0);
    CHECK(send_cmd("list") == CORE_CLIENT_OK);
    CHECK_STR(reply, "example.com 6000\nok");
}

/* Datagrams queued before the loop runs arrive as one batch: replies come in
 * order, and list sees exactly the commands before it. */
static void test_server_batch_order(void)
{
    const char *cmds[] = { "add one.test 1", "add two.test 2", "list", "remove one.test",
                           "bogus", "status one.test", "add two.test 2", "add three.test 3" };
    const char *want[] = { "ok", "ok", "example.com 6000\none.test 1\ntwo.test 2\nok", "ok",
                           "error: unknown command \"bogus\"; expected add, remove, list, shutdown or status",
                           "error: no route for one.test", "ok", "ok" };
    struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons((uint16_t)srv_port) };
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    char buf[4096];

    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (size_t i = 0; i < 8; i++)
        sendto(fd, cmds[i], strlen(cmds[i]), 0, (struct sockaddr *)&to, sizeof to);
    server_run();
    for (size_t i = 0; i < 8; i++) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        ssize_t n = poll(&p, 1, 2000) == 1 ? recv(fd, buf, sizeof buf - 1, 0) : -1;
        buf[n > 0 ? n : 0] = '\0';
        CHECK_STR(buf, want[i]);
    }
    close(fd);
    CHECK_STR(file_text(), "example.com 6000\nthree.test 3\ntwo.test 2\n");
}

/* A failed save answers every change of the segment with the error and
 * changes nothing, in memory or on disk. */
static void test_server_save_failure(void)
{
    char tmp[600];

    snprintf(tmp, sizeof tmp, "%s.tmp", routes_path);
    mkdir(tmp, 0755);   /* the temp file cannot be created */
    CHECK(send_cmd("add four.test 4") == CORE_CLIENT_ERROR);
    CHECK(strstr(reply, "error: could not save routes to ") == reply);
    CHECK(strstr(reply, "forward_targets.txt.tmp: Is a directory") != NULL);
    CHECK(send_cmd("status four.test") == CORE_CLIENT_ERROR);
    CHECK(routes_lookup(routes_current(), "four.test", 9) == 0);
    CHECK(send_cmd("add two.test 2") == CORE_CLIENT_OK);   /* no change: no save needed */
    CHECK_STR(file_text(), "example.com 6000\nthree.test 3\ntwo.test 2\n");
    rmdir(tmp);
    CHECK(send_cmd("add four.test 4") == CORE_CLIENT_OK);
}

/* ::1 is loopback too: the dual-stack socket answers it. */
static void test_server_accepts_ipv6_loopback(void)
{
    struct sockaddr_in6 to = { .sin6_family = AF_INET6, .sin6_port = htons((uint16_t)srv_port),
                               .sin6_addr = IN6ADDR_LOOPBACK_INIT };
    int fd = socket(AF_INET6, SOCK_DGRAM, 0);
    char buf[256];
    ssize_t n = -1;

    if (fd < 0 || connect(fd, (struct sockaddr *)&to, sizeof to) < 0) {
        printf("skipped IPv6 loopback test: no IPv6\n");
        if (fd >= 0)
            close(fd);
        return;
    }
    send(fd, "status two.test", 15, 0);
    struct pollfd p = { .fd = fd, .events = POLLIN };
    if (poll(&p, 1, 2000) == 1)
        n = recv(fd, buf, sizeof buf - 1, 0);
    buf[n > 0 ? n : 0] = '\0';
    CHECK_STR(buf, "two.test 2");
    close(fd);
}

/* A source address of this machine that is not loopback: the datagram goes
 * over lo but must be dropped without a reply. */
static void test_server_drops_non_loopback(void)
{
    struct ifaddrs *ifa, *i;
    struct sockaddr_in from = { 0 }, to = { .sin_family = AF_INET, .sin_port = htons((uint16_t)srv_port) };
    int fd;
    char buf[64];

    if (getifaddrs(&ifa) < 0)
        return;
    for (i = ifa; i; i = i->ifa_next)
        if (i->ifa_addr && i->ifa_addr->sa_family == AF_INET &&
            (ntohl(((struct sockaddr_in *)i->ifa_addr)->sin_addr.s_addr) >> 24) != 127) {
            from = *(struct sockaddr_in *)i->ifa_addr;
            break;
        }
    freeifaddrs(ifa);
    if (from.sin_family != AF_INET) {
        printf("skipped non-loopback source test: no non-loopback IPv4 address\n");
        return;
    }
    from.sin_port = 0;
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    fd = socket(AF_INET, SOCK_DGRAM, 0);
    CHECK(bind(fd, (struct sockaddr *)&from, sizeof from) == 0);
    sendto(fd, "add evil.test 1", 15, 0, (struct sockaddr *)&to, sizeof to);
    struct pollfd p = { .fd = fd, .events = POLLIN };
    CHECK(poll(&p, 1, 300) == 0);   /* no reply */
    (void)buf;
    close(fd);
    CHECK(routes_lookup(routes_current(), "evil.test", 9) == 0);
    CHECK(strstr(file_text(), "evil") == NULL);
}

int main(void)
{
    test_parse_valid();
    test_parse_errors();

    log_set_fd(open("/dev/null", O_WRONLY));   /* save failures are logged on purpose */
    snprintf(dir, sizeof dir, "/tmp/test_cmd.XXXXXX");
    if (!mkdtemp(dir))
        return 1;
    snprintf(routes_path, sizeof routes_path, "%s/conf/forward_targets.txt", dir);
    server_start();
    server_run();
    test_server_commands();
    test_server_oversized();
    test_server_list_split();
    server_stop();

    server_start();   /* restarts from the file; runs after queueing a batch */
    test_server_batch_order();
    test_server_save_failure();
    test_server_accepts_ipv6_loopback();
    test_server_drops_non_loopback();
    server_stop();
    qsbr_reclaim();

    char rm[300];
    snprintf(rm, sizeof rm, "rm -rf %s", dir);
    if (system(rm) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return check_report("test_cmd");
}
