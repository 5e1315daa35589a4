/* cli.c — server flags: defaults, parsing, --help and --version. */
#include "cli.h"
#include "acme.h"
#include "store.h"
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef CORE_DEFAULT_RELEASE
#define CORE_DEFAULT_RELEASE 0
#endif

static const char usage_text[] =
    "usage: core_server [flags]                 run the server (foreground in local mode)\n"
    "       core_server add DOMAIN PORT         route DOMAIN to 127.0.0.1:PORT\n"
    "       core_server remove DOMAIN           remove DOMAIN's route\n"
    "       core_server list                    print the routes, one \"DOMAIN PORT\" per line\n"
    "       core_server status DOMAIN           print DOMAIN's route (and certificate, release mode)\n"
    "       core_server shutdown                stop the running server gracefully\n"
    "  (subcommands take --udp-port N before or after their arguments)\n"
    "\n"
    "flags:\n"
    "  --http-port N          plain HTTP port (default 80)\n"
    "  --https-port N         HTTPS port (default 443)\n"
    "  --udp-port N           command port, loopback senders only (default 40608)\n"
    "  --config-dir DIR       where forward_targets.txt (the routes) lives\n"
    "                         (default $XDG_CONFIG_HOME/core-web-server, else ~/.config/core-web-server)\n"
    "  --certs-dir DIR        certificates (default ./certs in local mode, ~/certs in release mode)\n"
    "  --workers N            event-loop threads (default: number of CPUs)\n"
    "  --max-connections N    open client connections at most (default 20000)\n"
    "  --client-timeout S     seconds for a request head, an idle keep-alive connection or a\n"
    "                         stalled client (default 60)\n"
    "  --backend-timeout S    seconds for a backend to accept and answer, else 504 (default 60)\n"
    "  --drain-timeout S      seconds to finish in-flight requests at shutdown or takeover\n"
    "                         (default 30)\n"
    "  --no-access-log        do not log one line per request\n"
    "  --log-file PATH        log file (default logs/core.log in release mode or with\n"
    "                         --daemon, else stderr)\n"
    "  --log-max-bytes N      cap on the log file and its 4 backups together, in bytes\n"
    "                         (default 200000000)\n"
    "  --foreground           release mode: do not detach from the shell\n"
    "  --daemon               local mode: detach from the shell too\n"
    "  --acme-directory URL   ACME directory (default Let's Encrypt production,\n"
    "                         " CLI_ACME_DIRECTORY ";\n"
    "                         staging: https://acme-staging-v02.api.letsencrypt.org/directory)\n"
    "  --acme-ca FILE         extra CA bundle trusted for the ACME server's own HTTPS\n"
    "  --acme-email ADDR      contact address for the ACME account (default none)\n"
    "  --acme-challenges LIST challenge types to answer: tls-alpn-01,http-01 (default both)\n"
    "  --acme-backoff S       seconds before retrying a failed order, x4 per failure up to\n"
    "                         an hour (default 60; shorter only for tests)\n"
    "  --store etcd://HOST:PORT[,HOST:PORT...]\n"
    "                         release mode: share certificates, challenge answers and\n"
    "                         ACME state with other machines through etcd (default: the\n"
    "                         certs dir alone)\n"
    "  --store-prefix P       key prefix in etcd (default " STORE_PREFIX_DEFAULT ")\n"
    "  --store-ca FILE        CA bundle for etcd's TLS (https to the endpoints)\n"
    "  --store-cert FILE      client certificate for etcd (with --store-key)\n"
    "  --store-key FILE       its private key\n"
    "  --store-user USER      etcd user, with --store-password-file FILE (first line)\n"
    "  --store-password-file FILE\n"
    "  --store-lock-ttl S     seconds an order's lock outlives a node that died (default 10)\n"
    "  --local                local dev mode: HTTPS with mkcert when it is installed\n"
    "  --release              release mode: HTTPS with certificates from Let's Encrypt (ACME)\n"
    "  --version              print the version\n"
    "  --help                 print this help\n"
    "\n"
    "signals:\n"
    "  SIGTERM, SIGINT        shut down gracefully: stop accepting, finish in-flight requests\n"
    "                         (up to --drain-timeout), exit 0 (systemctl stop sends SIGTERM)\n"
    "  SIGHUP, SIGUSR1        reopen the log file (after an external logrotate)\n"
    "\n"
    "starting again (upgrade, restart): run core_server again with the same --config-dir.\n"
    "  The running instance passes its listening sockets to the new one over\n"
    "  CONFIG_DIR/handover.sock, then drains: no connection or command is lost. One\n"
    "  without that socket is asked to \"shutdown\" over the command port; one that does\n"
    "  not answer is ended by signal (found through CONFIG_DIR/core_server.pid).\n"
    "systemd: sockets passed by socket activation (LISTEN_FDS) are used instead of binding,\n"
    "  matched to the ports by address; READY=1 and STOPPING=1 go to NOTIFY_SOCKET\n"
    "  (units in systemd/).\n";

static void default_dirs(struct config *cfg)
{
    const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");

    if (xdg && *xdg)
        snprintf(cfg->config_dir, sizeof cfg->config_dir, "%s/core-web-server", xdg);
    else
        snprintf(cfg->config_dir, sizeof cfg->config_dir, "%s/.config/core-web-server",
                 home && *home ? home : ".");
    cfg->certs_dir[0] = '\0';   /* filled after parsing: depends on the mode */
}

static void defaults(struct config *cfg)
{
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

    memset(cfg, 0, sizeof *cfg);
    cfg->release = CORE_DEFAULT_RELEASE;
    cfg->http_port = 80;
    cfg->https_port = 443;
    cfg->udp_port = 40608;
    cfg->workers = ncpu > 0 ? (int)ncpu : 1;
    cfg->access_log = true;
    cfg->drain_ms = 30000;
    cfg->max_conns = 20000;
    cfg->client_timeout_ms = 60000;
    cfg->backend_timeout_ms = 60000;
    cfg->log_max_bytes = 200000000;
    snprintf(cfg->acme_directory, sizeof cfg->acme_directory, "%s", CLI_ACME_DIRECTORY);
    cfg->acme_challenges = ACME_CHALLENGE_HTTP01 | ACME_CHALLENGE_TLSALPN01;
    cfg->acme_backoff_s = 60;
    cfg->store_lock_ttl_s = STORE_LOCK_TTL_DEFAULT;
    default_dirs(cfg);
}

static int bad(const char *flag, const char *why)
{
    fprintf(stderr, "core_server: %s: %s (see ./core_server --help)\n", flag, why);
    return -1;
}

/* Parses a decimal integer in [lo, hi]; returns 0 or -1. */
static int parse_int(const char *s, long lo, long hi, int *out)
{
    char *end;
    long v;

    if (!s || !*s)
        return -1;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return -1;
    *out = (int)v;
    return 0;
}

struct int_flag {
    const char *name;
    long lo, hi;
    size_t offset;     /* into struct config */
    int scale;         /* seconds -> ms */
    const char *what;
};

static const struct int_flag int_flags[] = {
    { "--http-port", 1, 65535, offsetof(struct config, http_port), 1, "a port number 1-65535" },
    { "--https-port", 1, 65535, offsetof(struct config, https_port), 1, "a port number 1-65535" },
    { "--udp-port", 1, 65535, offsetof(struct config, udp_port), 1, "a port number 1-65535" },
    { "--workers", 1, 256, offsetof(struct config, workers), 1, "a thread count 1-256" },
    { "--max-connections", 1, 10000000, offsetof(struct config, max_conns), 1, "a count >= 1" },
    { "--client-timeout", 1, 86400, offsetof(struct config, client_timeout_ms), 1000, "seconds 1-86400" },
    { "--backend-timeout", 1, 86400, offsetof(struct config, backend_timeout_ms), 1000, "seconds 1-86400" },
    { "--drain-timeout", 0, 3600, offsetof(struct config, drain_ms), 1000, "seconds 0-3600" },
    { "--store-lock-ttl", 2, 3600, offsetof(struct config, store_lock_ttl_s), 1, "seconds 2-3600" },
    { "--acme-backoff", 1, 3600, offsetof(struct config, acme_backoff_s), 1, "seconds 1-3600" },
    { "--log-max-bytes", 100000, 2000000000, offsetof(struct config, log_max_bytes), 1,
      "a byte count 100000-2000000000" },
};

/* Flags that take a string, copied into struct config. */
struct str_flag {
    const char *name;
    size_t offset, cap;  /* into struct config */
    const char *what;    /* "needs WHAT" */
};

#define STR_FLAG(flag, field, what) \
    { flag, offsetof(struct config, field), sizeof ((struct config *)0)->field, what }

static const struct str_flag str_flags[] = {
    STR_FLAG("--config-dir", config_dir, "a directory"),
    STR_FLAG("--certs-dir", certs_dir, "a directory"),
    STR_FLAG("--log-file", log_file, "a file path"),
    STR_FLAG("--acme-directory", acme_directory, "a URL"),
    STR_FLAG("--acme-ca", acme_ca, "a file path"),
    STR_FLAG("--acme-email", acme_email, "an email address"),
    STR_FLAG("--store", store_url, "a URL etcd://HOST:PORT[,HOST:PORT...]"),
    STR_FLAG("--store-prefix", store_prefix, "a key prefix ending in '/'"),
    STR_FLAG("--store-ca", store_ca, "a file path"),
    STR_FLAG("--store-cert", store_cert, "a file path"),
    STR_FLAG("--store-key", store_key, "a file path"),
    STR_FLAG("--store-user", store_user, "a user name"),
    STR_FLAG("--store-password-file", store_password_file, "a file path"),
};

/* Splits "--flag=value"; returns the value or NULL, and the flag's length. */
static const char *split_eq(const char *arg, size_t *flen)
{
    const char *eq = strchr(arg, '=');
    *flen = eq ? (size_t)(eq - arg) : strlen(arg);
    return eq ? eq + 1 : NULL;
}

static int parse_str(const char *flag, const char *v, const struct str_flag *f, struct config *cfg)
{
    char why[64];

    if (!v || !*v) {
        snprintf(why, sizeof why, "needs %s", f->what);
        return bad(flag, why);
    }
    /* Room for the file names appended to directories. */
    if (strlen(v) >= f->cap - 64)
        return bad(flag, "too long");
    snprintf((char *)cfg + f->offset, f->cap, "%s", v);
    return 0;
}

/* "tls-alpn-01,http-01" (either or both) -> ACME_CHALLENGE_* bits. */
static int parse_challenges(const char *flag, const char *v, struct config *cfg)
{
    unsigned bits = 0;

    for (const char *p = v; p && *p;) {
        size_t n = strcspn(p, ",");
        if (n == 11 && !strncmp(p, "tls-alpn-01", 11))
            bits |= ACME_CHALLENGE_TLSALPN01;
        else if (n == 7 && !strncmp(p, "http-01", 7))
            bits |= ACME_CHALLENGE_HTTP01;
        else
            return bad(flag, "needs tls-alpn-01, http-01 or both, separated by a comma");
        p += n + (p[n] == ',');
    }
    if (!bits)
        return bad(flag, "needs tls-alpn-01, http-01 or both, separated by a comma");
    cfg->acme_challenges = bits;
    return 0;
}

/* One flag at argv[*i]; advances *i past its value. */
static int parse_one(int argc, char **argv, int *i, struct config *cfg)
{
    const char *arg = argv[*i];
    size_t flen;
    const char *v = split_eq(arg, &flen);
    char flag[64];

    snprintf(flag, sizeof flag, "%.*s", (int)(flen < 63 ? flen : 63), arg);
    for (size_t k = 0; k < sizeof int_flags / sizeof int_flags[0]; k++) {
        const struct int_flag *f = &int_flags[k];
        int val;
        if (strcmp(flag, f->name) != 0)
            continue;
        if (!v && *i + 1 < argc)
            v = argv[++*i];
        if (!v)
            return bad(flag, "needs a value");
        if (parse_int(v, f->lo, f->hi, &val) < 0) {
            char why[160];
            snprintf(why, sizeof why, "\"%s\" is not %s", v, f->what);
            return bad(flag, why);
        }
        *(int *)((char *)cfg + f->offset) = val * f->scale;
        return 0;
    }
    if (!strcmp(flag, "--acme-challenges")) {
        if (!v && *i + 1 < argc)
            v = argv[++*i];
        return parse_challenges(flag, v, cfg);
    }
    for (size_t k = 0; k < sizeof str_flags / sizeof str_flags[0]; k++) {
        if (strcmp(flag, str_flags[k].name) != 0)
            continue;
        if (!v && *i + 1 < argc)
            v = argv[++*i];
        return parse_str(flag, v, &str_flags[k], cfg);
    }
    if (v)
        return bad(flag, "takes no value");
    if (!strcmp(flag, "--no-access-log"))
        cfg->access_log = false;
    else if (!strcmp(flag, "--local"))
        cfg->release = false;
    else if (!strcmp(flag, "--release"))
        cfg->release = true;
    else if (!strcmp(flag, "--foreground"))
        cfg->foreground = true;
    else if (!strcmp(flag, "--daemon"))
        cfg->daemon = true;
    else
        return bad(flag, "unknown flag");
    return 0;
}

/* --store and its companions: a URL etcd.h accepts, in release mode; the
 * others only with --store. */
static int check_store_flags(const struct config *cfg)
{
    static const struct { const char *flag; size_t off; } needs_store[] = {
        { "--store-prefix", offsetof(struct config, store_prefix) },
        { "--store-ca", offsetof(struct config, store_ca) },
        { "--store-cert", offsetof(struct config, store_cert) },
        { "--store-key", offsetof(struct config, store_key) },
        { "--store-user", offsetof(struct config, store_user) },
        { "--store-password-file", offsetof(struct config, store_password_file) },
    };
    char err[512];
    struct store_options so;

    if (!cfg->store_url[0]) {
        for (size_t k = 0; k < sizeof needs_store / sizeof needs_store[0]; k++)
            if (((const char *)cfg + needs_store[k].off)[0])
                return bad(needs_store[k].flag, "needs --store etcd://HOST:PORT");
        return 0;
    }
    if (!cfg->release)
        return bad("--store", "is for release mode (--release): local mode's mkcert "
                   "certificates stay on each machine");
    cli_store_options(cfg, NULL, &so);
    if (store_check_options(&so, err, sizeof err) < 0) {
        fprintf(stderr, "core_server: %s (see ./core_server --help)\n", err);
        return -1;
    }
    return 0;
}

void cli_store_options(const struct config *cfg, const char *node, struct store_options *so)
{
#define OPT_STR(f) (cfg->f[0] ? cfg->f : NULL)
    *so = (struct store_options){
        .url = OPT_STR(store_url), .prefix = OPT_STR(store_prefix),
        .ca_file = OPT_STR(store_ca), .cert_file = OPT_STR(store_cert),
        .key_file = OPT_STR(store_key), .user = OPT_STR(store_user),
        .password_file = OPT_STR(store_password_file), .node = node,
        .lock_ttl_s = cfg->store_lock_ttl_s,
    };
#undef OPT_STR
}

int cli_parse(int argc, char **argv, struct config *cfg)
{
    defaults(cfg);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(usage_text, stdout);
            return 1;
        }
        if (!strcmp(argv[i], "--version")) {
            printf("core_server %s (%s mode by default)\n", CORE_VERSION,
                   CORE_DEFAULT_RELEASE ? "release" : "local");
            return 1;
        }
        if (strncmp(argv[i], "--", 2) != 0)
            return bad(argv[i], "unexpected argument (subcommands are add, remove, list, status, shutdown)");
        if (parse_one(argc, argv, &i, cfg) < 0)
            return -1;
    }
    if (cfg->http_port == cfg->https_port)
        return bad("--https-port", "must differ from --http-port");
    if (check_store_flags(cfg) < 0)
        return -1;
    if (!cfg->certs_dir[0]) {
        const char *home = getenv("HOME");
        if (cfg->release)
            snprintf(cfg->certs_dir, sizeof cfg->certs_dir, "%s/certs", home && *home ? home : ".");
        else
            snprintf(cfg->certs_dir, sizeof cfg->certs_dir, "certs");
    }
    snprintf(cfg->routes_path, sizeof cfg->routes_path, "%s/forward_targets.txt", cfg->config_dir);
    /* Release mode logs to a file, as the original did; so does --daemon,
     * whose stderr is /dev/null. */
    if (!cfg->log_file[0] && (cfg->release || cfg->daemon))
        snprintf(cfg->log_file, sizeof cfg->log_file, "%s", CLI_LOG_FILE_DEFAULT);
    return 0;
}

bool cli_detaches(const struct config *cfg)
{
    return cfg->daemon || (cfg->release && !cfg->foreground);
}
