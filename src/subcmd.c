/* subcmd.c — the client subcommands of the core_server binary (add, remove,
 * list, shutdown, status): argument checks, one UDP command through
 * core_client.c, the reply printed, and the exit status. */
#include "subcmd.h"
#include "core_client.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SUBCMD_TIMEOUT_MS 2000       /* a save (fsync) can take a moment on slow disks */
#define SUBCMD_REPLY_MAX (64u << 20) /* list of a very large table */

enum { EXIT_OK = 0, EXIT_ERROR = 1, EXIT_NO_ANSWER = 2 };

static const struct subcmd_spec {
    const char *name;
    int nargs;
    const char *usage;
} subcmd_specs[] = {
    { "add",      2, "core_server add DOMAIN PORT [--udp-port N]" },
    { "remove",   1, "core_server remove DOMAIN [--udp-port N]" },
    { "list",     0, "core_server list [--udp-port N]" },
    { "shutdown", 0, "core_server shutdown [--udp-port N]" },
    { "status",   1, "core_server status DOMAIN [--udp-port N]" },
};

static const struct subcmd_spec *find_spec(const char *name)
{
    for (size_t i = 0; i < sizeof subcmd_specs / sizeof subcmd_specs[0]; i++)
        if (strcmp(subcmd_specs[i].name, name) == 0)
            return &subcmd_specs[i];
    return NULL;
}

bool subcmd_is_subcommand(int argc, char **argv)
{
    return argc >= 2 && find_spec(argv[1]) != NULL;
}

static int usage_error(const struct subcmd_spec *spec, const char *what)
{
    fprintf(stderr, "core_server %s: %s\nusage: %s\n", spec->name, what, spec->usage);
    return EXIT_ERROR;
}

/* --udp-port value: 1..65535 decimal; -1 when it is not one. */
static int parse_udp_port(const char *s)
{
    char *end;
    long v;

    if (!*s || *s < '0' || *s > '9')
        return -1;
    v = strtol(s, &end, 10);
    return (*end == '\0' && v >= 1 && v <= 65535) ? (int)v : -1;
}

/* Strips the final "ok" line of a list reply; prints the route lines. */
static void print_list(const char *reply)
{
    size_t len = strlen(reply);

    if (len >= 2 && strcmp(reply + len - 2, "ok") == 0)
        len -= 2;
    fwrite(reply, 1, len, stdout);
}

int subcmd_main(int argc, char **argv)
{
    const struct subcmd_spec *spec = find_spec(argv[1]);
    const char *args[2];
    char command[1024], what[512], *reply;
    int nargs = 0, udp_port = CORE_CLIENT_DEFAULT_PORT, status;
    size_t len;

    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *val = NULL;
        if (strcmp(a, "--udp-port") == 0) {
            if (i + 1 == argc)
                return usage_error(spec, "--udp-port needs a value");
            val = argv[++i];
        } else if (strncmp(a, "--udp-port=", 11) == 0) {
            val = a + 11;
        } else if (a[0] == '-' && a[1] == '-') {
            snprintf(what, sizeof what, "unknown flag %s", a);
            return usage_error(spec, what);
        } else if (nargs == spec->nargs) {
            snprintf(what, sizeof what, "unexpected argument \"%s\"", a);
            return usage_error(spec, what);
        } else if (!*a || strpbrk(a, " \t\r\n")) {
            snprintf(what, sizeof what, "argument \"%s\" is empty or contains whitespace", a);
            return usage_error(spec, what);
        } else {
            args[nargs++] = a;
            continue;
        }
        if ((udp_port = parse_udp_port(val)) < 0) {
            snprintf(what, sizeof what, "--udp-port must be 1..65535, got \"%s\"", val);
            return usage_error(spec, what);
        }
    }
    if (nargs != spec->nargs) {
        snprintf(what, sizeof what, "expected %d argument%s, got %d", spec->nargs,
                 spec->nargs == 1 ? "" : "s", nargs);
        return usage_error(spec, what);
    }

    len = (size_t)snprintf(command, sizeof command, "%s", spec->name);
    for (int i = 0; i < nargs && len < sizeof command; i++)
        len += (size_t)snprintf(command + len, sizeof command - len, " %s", args[i]);
    if (len >= sizeof command)
        return usage_error(spec, "arguments too long");

    reply = malloc(SUBCMD_REPLY_MAX);
    if (!reply) {
        fprintf(stderr, "core_server %s: out of memory\n", spec->name);
        return EXIT_ERROR;
    }
    switch (core_client_command(command, udp_port, SUBCMD_TIMEOUT_MS, reply, SUBCMD_REPLY_MAX)) {
    case CORE_CLIENT_OK:
        if (strcmp(spec->name, "list") == 0)
            print_list(reply);
        else
            printf("%s\n", reply);
        status = EXIT_OK;
        break;
    case CORE_CLIENT_ERROR:
        fprintf(stderr, "%s\n", reply);
        status = EXIT_ERROR;
        break;
    default:
        fprintf(stderr, "no core_server answered on 127.0.0.1:%d (is it running? start it "
                "with ./core_server)\n", udp_port);
        status = EXIT_NO_ANSWER;
        break;
    }
    free(reply);
    return status;
}
