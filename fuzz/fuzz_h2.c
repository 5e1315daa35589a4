/* fuzz_h2.c — libFuzzer target for the HTTP/2 client protocol: client_h2.c
 * and exchange.c behind it, on libnghttp2. A server session is started on
 * one end of a socketpair (plain transport, no TLS); the client preface,
 * then the fuzzer's bytes, are written to the other end and the session is
 * pumped until nothing moves. One route (fuzz.test) points at a listening
 * socket that never answers, so requests build backend heads and connect;
 * every other name gets a generated response (404, 421, 431, 501). The
 * session must never crash, leak or read out of bounds, whatever the bytes:
 * it answers, resets streams, or ends with GOAWAY. */
#include "backend.h"
#include "buf.h"
#include "cli.h"
#include "client_h2.h"
#include "loop.h"
#include "qsbr.h"
#include "routes.h"
#include "transport.h"
#include "worker.h"

#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                              "\x00\x00\x00\x04\x00\x00\x00\x00\x00";   /* empty SETTINGS */

static struct config cfg;
static struct worker w;
static bool woken;
static int backend_listen_fd = -1;

static void on_wake(void *owner)
{
    woken = true;
}

static const struct h2_conn_ops ops = { on_wake };

/* A listening socket on 127.0.0.1 that is never accepted from: connects to
 * it complete in the kernel, the backend just never answers. */
static int silent_backend_port(void)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);

    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 4096) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0)
        abort();
    backend_listen_fd = fd;
    return ntohs(a.sin_port);
}

static void setup_once(void)
{
    static bool done;

    if (done)
        return;
    done = true;
    cfg.client_timeout_ms = 60000;
    cfg.backend_timeout_ms = 60000;
    cfg.max_conns = 1000;
    w.cfg = &cfg;
    w.loop = loop_new();
    w.bufs.max_free = 64;
    w.bp = backend_pool_new();
    w.qsbr_reader = qsbr_register();
    struct routes *r = routes_new_empty();
    routes_set(r, "fuzz.test", 9, (uint16_t)silent_backend_port());
    routes_publish(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int sv[2];
    const char *err = NULL, *why = NULL;
    struct transport tr = { .fd = -1 };

    setup_once();
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) < 0)
        return 0;
    /* The peer's bytes all arrive before the first read; a buffer large
     * enough for any input keeps the write from blocking. */
    int big = 4 << 20;
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    tr.fd = sv[0];
    struct h2_conn *c = client_h2_start(&w, &tr, "192.0.2.1", "fuzz.test", NULL, &ops, &err);
    if (!c)
        abort();
    if (write(sv[1], preface, sizeof preface - 1) < 0 || (size && write(sv[1], data, size) < 0)) {
        /* a short socketpair buffer: fuzz what arrived */
    }
    shutdown(sv[1], SHUT_WR);
    for (int i = 0; i < 64; i++) {
        char sink[65536];
        woken = false;
        client_h2_note_io(c, true, true);
        int r = client_h2_pump(c, &why);
        while (read(sv[1], sink, sizeof sink) > 0) {
            /* drain what the session wrote, so its writes never block */
        }
        if (r == H2_PUMP_CLOSE || (!woken && r == H2_PUMP_IDLE))
            break;
    }
    client_h2_free(c);
    backend_pool_reap(w.bp);
    for (int fd; (fd = accept4(backend_listen_fd, NULL, NULL, SOCK_NONBLOCK)) >= 0;)
        close(fd);   /* keep the silent backend's accept queue short */
    close(sv[0]);
    close(sv[1]);
    return 0;
}
