/* main.c — entry point: subcommands or the server; flags, mode, wiring of
 * the modules, exit status. Fatal errors happen only here, at startup. */
#include "acme.h"
#include "certs.h"
#include "cli.h"
#include "cmd.h"
#include "handover.h"
#include "instance.h"
#include "log.h"
#include "loop.h"
#include "mkcert.h"
#include "net.h"
#include "qsbr.h"
#include "routes.h"
#include "sni.h"
#include "store.h"
#include "subcmd.h"
#include "systemd.h"
#include "tls.h"
#include "worker.h"
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct server {
    struct config cfg;
    struct loop *loop;          /* main thread: commands, signals */
    struct cmd_server *cmd;
    struct handover_offer *offer;   /* offers the listening sockets to a new instance */
    bool https;                 /* mkcert found (local) or release mode */
    bool stopping;
    int http_fd, https_fd, udp_fd;  /* the listening sockets (udp_fd owned by cmd) */
    int from_systemd;           /* sockets passed by systemd (socket activation) */
};

/* A fatal startup error: on stderr, in the log file, and to the parent that
 * waits for a detaching server (it prints the line and exits non-zero). */
static int fail(const char *msg)
{
    if (log_to_file())
        log_error("%s", msg);
    if (!instance_daemonize_fail(msg))
        fprintf(stderr, "core_server: %s\n", msg);
    return 1;
}

/* Shutdown, from the "shutdown" command, a signal or a confirmed handover:
 * read no more commands (even one whose readiness this loop iteration has
 * already collected), then stop the loop. run_server closes the command
 * port as soon as the loop returns, at the end of this iteration (a new
 * instance may be waiting for it), and drains the workers after. */
static void begin_shutdown(void *arg)
{
    struct server *s = arg;

    if (s->stopping)
        return;
    s->stopping = true;
    systemd_notify("STOPPING=1");
    cmd_server_pause(s->cmd);
    loop_stop(s->loop);
}

/* The new instance confirmed that it accepts and reads commands on our
 * sockets: only now do we stop accepting and drain. */
static void on_handed_over(void *arg, long new_pid)
{
    log_info("handover: the new instance (pid %ld) serves on our sockets; shutting down "
             "gracefully", new_pid);
    begin_shutdown(arg);
}

static int load_routes(const struct config *cfg)
{
    char err[512];
    struct routes *r = routes_load_file(cfg->routes_path, err, sizeof err);

    if (!r) {
        fail(err);
        return -1;
    }
    log_info("loaded %zu route(s) from %s", routes_count(r), cfg->routes_path);
    routes_publish(r);
    return 0;
}

/* Release mode: HTTPS always, certificates from the ACME CA. */
static int setup_acme(struct server *s, char *err, size_t errlen)
{
    const struct config *cfg = &s->cfg;
    struct acme_options o = {
        .directory_url = cfg->acme_directory,
        .ca_file = cfg->acme_ca[0] ? cfg->acme_ca : NULL,
        .email = cfg->acme_email,
        .certs_dir = cfg->certs_dir,
        .challenges = cfg->acme_challenges,
    };

    char host[128] = "node", node[200];
    if (gethostname(host, sizeof host) < 0)
        snprintf(host, sizeof host, "node");
    host[sizeof host - 1] = '\0';
    snprintf(node, sizeof node, "%s:%d", host, cfg->https_port);
    struct store_options so;
    cli_store_options(cfg, node, &so);
    if (certs_init_acme(cfg->certs_dir, &o, cfg->acme_backoff_s, &so, err, errlen) < 0)
        return -1;
    if (tls_init(sni_on_client_hello, err, errlen) < 0)
        return -1;
    s->https = true;
    log_info("HTTPS with certificates from %s (ACME), kept in %s", cfg->acme_directory,
             cfg->certs_dir);
    return 0;
}

/* cmd hook: a new route gets its certificate at once, not at the first visit. */
static void on_route_added(const char *domain, void *arg)
{
    certs_request(domain, strlen(domain));
}

static void request_cert(const char *name, uint16_t port, void *arg)
{
    certs_request(name, strlen(name));
}

static int setup_https(struct server *s, char *err, size_t errlen)
{
    char mkcert[PATH_MAX];

    if (s->cfg.release)
        return setup_acme(s, err, errlen);

    if (mkcert_find(mkcert, sizeof mkcert) < 0) {
        log_info("mkcert not found on PATH: serving plain HTTP only (install mkcert for local HTTPS)");
        return 0;
    }
    if (certs_init(CERTS_MKCERT, s->cfg.certs_dir, mkcert, err, errlen) < 0)
        return -1;
    if (tls_init(sni_on_client_hello, err, errlen) < 0)
        return -1;
    s->https = true;
    log_info("HTTPS with certificates from %s in %s", mkcert, s->cfg.certs_dir);
    return 0;
}

/* Release mode (unless --foreground) and --daemon detach from the shell,
 * before any thread starts: fork keeps only the calling thread. */
static int maybe_detach(const struct config *cfg, char *err, size_t errlen)
{
    if (!cli_detaches(cfg))
        return 0;
    return instance_daemonize_begin(err, errlen);
}

/* Opens the log file, if any (in the daemon: the logger thread must be
 * started after the fork); then a daemon's stdio can go to /dev/null. */
static int setup_logging(const struct config *cfg, char *err, size_t errlen)
{
    if (!cfg->log_file[0])
        return 0;
    if (log_open_file(cfg->log_file, (uint64_t)cfg->log_max_bytes, err, errlen) < 0)
        return -1;
    log_info("core_server %s logging to %s (with %d backups, at most %d bytes in all)",
             CORE_VERSION, cfg->log_file, LOG_BACKUPS, cfg->log_max_bytes);
    return instance_daemonize_stdio(err, errlen);
}

/* Asks a running instance for its sockets (before binding anything). One
 * that accepts but does not answer is ended by signal (instance.h). Fills
 * pool; *peer is to be confirmed once this instance serves. */
static int take_sockets(struct server *s, struct net_pool *pool, struct handover_peer *peer)
{
    const struct config *cfg = &s->cfg;
    char why[1024], err[1024];

    switch (handover_request(cfg->config_dir, pool, peer, why, sizeof why)) {
    case HANDOVER_RECEIVED:
        log_info("handover: received %d listening socket(s) from the running instance (pid %ld)",
                 pool->np_n, peer->hp_pid);
        return 0;
    case HANDOVER_NONE:
        log_info("no running instance offers its sockets (%s): binding the ports", why);
        return 0;
    case HANDOVER_UNRESPONSIVE:
        log_warn("the running instance does not answer the handover (%s)", why);
        if (instance_end_unresponsive(cfg, err, sizeof err) < 0) {
            char msg[sizeof err + sizeof cfg->config_dir + 200];
            snprintf(msg, sizeof msg, "the core_server holding %s/%s does not answer, and it "
                     "cannot be ended: %s (stop it yourself)", cfg->config_dir,
                     HANDOVER_SOCKET_NAME, err);
            return fail(msg);
        }
        return 0;
    }
    return 0;
}

/* One TCP listener: the same socket passed by systemd or the previous
 * instance when one is bound to port, else a new one. */
static int open_listener(struct net_pool *pool, int port, const char *what, const char *flag,
                         char *err, size_t errlen)
{
    int fd = net_pool_take(pool, SOCK_STREAM, port);

    if (fd >= 0) {
        log_info("%s port %d: serving on the inherited listening socket", what, port);
        return fd;
    }
    /* SO_REUSEPORT: while an old instance that did not hand over still
     * listens, we listen beside it, so no connection is refused. */
    return net_listen_tcp(port, what, flag, err, errlen);
}

/* Every socket this instance serves on, inherited where possible. The ones
 * inherited but not wanted (other ports) are closed in this process only:
 * the old instance closes its own copies after our confirmation. */
static int open_sockets(struct server *s, struct net_pool *pool, char *err, size_t errlen)
{
    const struct config *cfg = &s->cfg;

    s->http_fd = open_listener(pool, cfg->http_port, "http", "--http-port", err, errlen);
    if (s->http_fd < 0)
        return -1;
    if (s->https) {
        s->https_fd = open_listener(pool, cfg->https_port, "https", "--https-port", err, errlen);
        if (s->https_fd < 0)
            return -1;
    }
    s->udp_fd = net_pool_take(pool, SOCK_DGRAM, cfg->udp_port);
    if (s->udp_fd >= 0)
        log_info("commands: reading the inherited socket of UDP port %d", cfg->udp_port);
    else
        s->udp_fd = instance_claim_command_port(cfg, err, errlen);
    if (s->udp_fd < 0)
        return -1;
    int unused = net_pool_close_rest(pool);
    if (unused)
        log_info("%d inherited socket(s) not used by this instance's ports: closed here", unused);
    return 0;
}

/* From now on a newer instance can take our sockets. Not fatal: without
 * it, a new instance takes over through the command port. */
static void offer_sockets(struct server *s)
{
    char err[1024];
    int fds[3] = { s->http_fd, s->https_fd, s->udp_fd };

    s->offer = handover_offer_start(s->loop, s->cfg.config_dir, fds, 3, on_handed_over, s,
                                    err, sizeof err);
    if (!s->offer)
        log_warn("%s: a new instance will take over through the command port instead", err);
}

static void log_ready(const struct server *s)
{
    const struct config *cfg = &s->cfg;
    char https_desc[64], status[256];

    if (s->https)
        snprintf(https_desc, sizeof https_desc, "https port %d", cfg->https_port);
    else
        snprintf(https_desc, sizeof https_desc, "no HTTPS");
    log_info("core_server %s (%s mode) ready: http port %d, %s, commands on UDP port %d, "
             "%d worker(s)", CORE_VERSION, cfg->release ? "release" : "local", cfg->http_port,
             https_desc, cfg->udp_port, cfg->workers);
    snprintf(status, sizeof status, "READY=1\nMAINPID=%ld\nSTATUS=http port %d, %s, commands on "
             "UDP port %d", (long)getpid(), cfg->http_port, https_desc, cfg->udp_port);
    systemd_notify(status);
}

static int run_server(struct server *s)
{
    const struct config *cfg = &s->cfg;
    struct net_pool pool = { .np_n = 0 };
    struct handover_peer peer = { .hp_fd = -1 };
    char err[1024];

    s->http_fd = s->https_fd = s->udp_fd = -1;
    log_set_access(cfg->access_log);
    /* Before the fork: LISTEN_PID names the process systemd started. */
    s->from_systemd = systemd_listen_fds(&pool);
    if (maybe_detach(cfg, err, sizeof err) < 0 || setup_logging(cfg, err, sizeof err) < 0)
        return fail(err);
    instance_block_signals();
    if (setup_https(s, err, sizeof err) < 0)
        return fail(err);
    /* Here, in the process that will serve (after a detach), and before
     * binding anything: the sockets of systemd, else of a running instance. */
    if (s->from_systemd)
        log_info("socket activation: %d socket(s) passed by systemd", s->from_systemd);
    else if (take_sockets(s, &pool, &peer) != 0)
        return 1;
    if (open_sockets(s, &pool, err, sizeof err) < 0)
        return fail(err);
    /* Routes are read after the takeover: the old instance saved its last. */
    if (load_routes(cfg) < 0)
        return 1;
    s->loop = loop_new();
    if (!s->loop)
        return fail("cannot create the main event loop");
    struct cmd_hooks hooks = { .on_shutdown = begin_shutdown, .arg = s };
    if (cfg->release) {
        hooks.on_route_added = on_route_added;
        /* Every route's certificate: loaded from disk, or ordered now. */
        routes_foreach(routes_current(), request_cert, NULL);
    }
    s->cmd = cmd_server_start(s->loop, s->udp_fd, cfg->routes_path, &hooks);
    if (!s->cmd)
        return fail("cannot start the UDP command channel");
    if (instance_watch_signals(s->loop, begin_shutdown, s) < 0)
        return fail("cannot watch signals");
    if (workers_start(cfg, s->http_fd, s->https_fd, s->https, err, sizeof err) < 0)
        return fail(err);
    /* The pid file before the confirmation: the old instance removes the
     * file at its exit only while it still names the old instance, so
     * writing ours before it can drain leaves no window in which its
     * read-then-unlink could remove ours. */
    if (instance_write_pidfile(cfg->config_dir, err, sizeof err) < 0)
        log_warn("%s (if this instance ever hangs, the next one cannot end it)", err);
    /* We accept, and read commands once the loop runs: the old instance may
     * stop accepting now. */
    if (handover_confirm(&peer, 2 + s->https, err, sizeof err) < 0)
        return fail(err);
    /* Offer at once: a newer instance started right after us finds the
     * socket (else it would fall back to the command port). */
    offer_sockets(s);
    log_ready(s);
    instance_daemonize_ready();   /* ports bound: the waiting parent exits 0 */
    loop_run(s->loop);

    /* The socket file first, the command port after: a new instance that
     * waits for the port puts its own socket file in place only then. */
    handover_offer_stop(s->offer);
    s->offer = NULL;
    cmd_server_close(s->cmd);
    s->cmd = NULL;
    log_info("draining in-flight requests (up to %d ms)", cfg->drain_ms);
    workers_drain(cfg->drain_ms);
    /* The certificate thread posts to the worker loops: stop it first. */
    if (s->https)
        certs_shutdown();
    workers_stop();
    if (s->https)
        tls_cleanup();
    qsbr_reclaim();
    loop_free(s->loop);
    instance_remove_pidfile(cfg->config_dir);
    log_info("core_server stopped");
    return 0;
}

int main(int argc, char **argv)
{
    static struct server s;
    int r;

    if (subcmd_is_subcommand(argc, argv))
        return subcmd_main(argc, argv);
    r = cli_parse(argc, argv, &s.cfg);
    if (r != 0)
        return r > 0 ? 0 : 2;
    r = run_server(&s);
    log_close();   /* writes the queued lines */
    return r;
}
