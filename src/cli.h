/* cli.h — the server's command-line flags and the resulting configuration.
 * Owns flag parsing, defaults (which depend on the build's default mode) and
 * --help/--version text. Subcommands (add/remove/list/...) live in subcmd.h. */
#ifndef CORE_CLI_H
#define CORE_CLI_H
#include <stdbool.h>
#include <stddef.h>

#define CORE_VERSION "0.1.0"

struct config {
    bool release;            /* release mode (ACME); else local dev mode (mkcert) */
    int http_port;           /* --http-port, default 80 */
    int https_port;          /* --https-port, default 443 */
    int udp_port;            /* --udp-port, default 40608 */
    char config_dir[4096];   /* --config-dir: holds forward_targets.txt */
    char certs_dir[4096];    /* --certs-dir: local ./certs, release $HOME/certs */
    char routes_path[4200];  /* config_dir/forward_targets.txt */
    int workers;             /* --workers, default: online CPUs */
    bool access_log;         /* --no-access-log turns it off */
    int drain_ms;            /* --drain-timeout SECONDS: in-flight requests at shutdown */
    int max_conns;           /* --max-connections: per process, default 20000 */
    int client_timeout_ms;   /* --client-timeout SECONDS: head, idle keep-alive, stalled client (60) */
    int backend_timeout_ms;  /* --backend-timeout SECONDS: connect and response, else 504 (60) */
    char log_file[4096];     /* --log-file: "" = stderr; logs/core.log in release mode or --daemon */
    int log_max_bytes;       /* --log-max-bytes: the log file and its backups, at most (200000000) */
    bool foreground;         /* --foreground: release mode stays attached to the shell */
    bool daemon;             /* --daemon: local mode detaches too */
    char acme_directory[2048]; /* --acme-directory URL: the CA (default Let's Encrypt production) */
    char acme_ca[4096];      /* --acme-ca FILE: extra CA bundle for the CA's HTTPS API ("" = none) */
    char acme_email[320];    /* --acme-email ADDR: account contact ("" = none) */
    unsigned acme_challenges; /* --acme-challenges LIST: ACME_CHALLENGE_* bits (default both) */
    int acme_backoff_s;      /* --acme-backoff SECONDS: first retry after a failed order (60) */
    char store_url[1024];    /* --store etcd://HOST:PORT,...: shared state for several machines
                                ("" = the certs dir alone) */
    char store_prefix[256];  /* --store-prefix: key prefix in the store ("" = core_server/) */
    char store_ca[4096];     /* --store-ca FILE: CA bundle for etcd's TLS (https) */
    char store_cert[4096];   /* --store-cert FILE: client certificate for etcd */
    char store_key[4096];    /* --store-key FILE: its private key */
    char store_user[256];    /* --store-user USER: etcd user (password from --store-password-file) */
    char store_password_file[4096]; /* --store-password-file FILE */
    int store_lock_ttl_s;    /* --store-lock-ttl SECONDS: lease of an order's lock (10) */
};

#define CLI_ACME_DIRECTORY "https://acme-v02.api.letsencrypt.org/directory"
#define CLI_LOG_FILE_DEFAULT "logs/core.log"

struct store_options;
/* The --store flags as store.h takes them (strings point into cfg); node:
 * this node's name. */
void cli_store_options(const struct config *cfg, const char *node, struct store_options *so);

/* Release mode without --foreground, or --daemon. */
bool cli_detaches(const struct config *cfg);

/* Fills cfg from argv. Returns 0 to run, 1 when it printed --help/--version
 * (exit 0), -1 after printing one line naming the bad flag and the fix
 * (exit 2). */
int cli_parse(int argc, char **argv, struct config *cfg);

#endif
