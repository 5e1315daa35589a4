/* main.c — entry point: subcommands or the server; flags, mode, wiring of
 * the modules, exit status. Fatal errors happen only here, at startup. */
#include "acme.h"
#include "certs.h"
#include "cli.h"
#include "cmd.h"
#include "instance.h"
#include "log.h"
#include "loop.h"
#include "mkcert.h"
#include "net.h"
#include "qsbr.h"
#include "routes.h"
#include "subcmd.h"
#include "tls.h"
#include "worker.h"
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct server {
    struct config cfg;
    struct loop *loop;          /* main thread: commands, signals */
    struct cmd_server *cmd;
    bool https;                 /* mkcert found (local) or release mode */
    bool stopping;
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

/* Shutdown, from the "shutdown" command or a signal: free the command port
 * at once (a new instance may be waiting for it), then stop the loop; main
 * drains the workers after. */
static void begin_shutdown(void *arg)
{
    struct server *s = arg;

    if (s->stopping)
        return;
    s->stopping = true;
    cmd_server_close(s->cmd);
    s->cmd = NULL;
    loop_stop(s->loop);
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

    if (certs_init_acme(cfg->certs_dir, &o, cfg->acme_backoff_s, err, errlen) < 0)
        return -1;
    if (tls_init(err, errlen) < 0)
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
    if (tls_init(err, errlen) < 0)
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

static int run_server(struct server *s)
{
    const struct config *cfg = &s->cfg;
    char err[1024];
    int http_fd, https_fd = -1, udp_fd;

    log_set_access(cfg->access_log);
    if (maybe_detach(cfg, err, sizeof err) < 0 || setup_logging(cfg, err, sizeof err) < 0)
        return fail(err);
    instance_block_signals();
    if (setup_https(s, err, sizeof err) < 0)
        return fail(err);
    /* TCP first, with SO_REUSEPORT: while an old instance still listens we
     * listen beside it, so no connection is refused during a takeover. */
    http_fd = net_listen_tcp(cfg->http_port, "http", "--http-port", err, sizeof err);
    if (http_fd < 0)
        return fail(err);
    if (s->https) {
        https_fd = net_listen_tcp(cfg->https_port, "https", "--https-port", err, sizeof err);
        if (https_fd < 0)
            return fail(err);
    }
    udp_fd = instance_claim_command_port(cfg->udp_port, err, sizeof err);
    if (udp_fd < 0)
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
    s->cmd = cmd_server_start(s->loop, udp_fd, cfg->routes_path, &hooks);
    if (!s->cmd)
        return fail("cannot start the UDP command channel");
    if (instance_watch_signals(s->loop, begin_shutdown, s) < 0)
        return fail("cannot watch signals");
    if (workers_start(cfg, http_fd, https_fd, s->https, err, sizeof err) < 0)
        return fail(err);
    char https_desc[64];
    if (s->https)
        snprintf(https_desc, sizeof https_desc, "https port %d", cfg->https_port);
    else
        snprintf(https_desc, sizeof https_desc, "no HTTPS");
    log_info("core_server %s (%s mode) ready: http port %d, %s, commands on UDP port %d, "
             "%d worker(s)", CORE_VERSION, cfg->release ? "release" : "local", cfg->http_port,
             https_desc, cfg->udp_port, cfg->workers);
    instance_daemonize_ready();   /* ports bound: the waiting parent exits 0 */
    loop_run(s->loop);

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
