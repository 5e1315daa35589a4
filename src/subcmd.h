/* subcmd.h — the client subcommands of the core_server binary:
 *   core_server add DOMAIN PORT | remove DOMAIN | list | shutdown | status DOMAIN
 * each accepting --udp-port N before or after its arguments. */
#ifndef CORE_SUBCMD_H
#define CORE_SUBCMD_H
#include <stdbool.h>

/* True when argv[1] names a subcommand. */
bool subcmd_is_subcommand(int argc, char **argv);
/* Runs it: prints the reply (list: the route lines) to stdout, errors to
 * stderr; returns the exit status: 0 on "ok", 1 on an error reply or bad
 * usage, 2 when no server answered. */
int subcmd_main(int argc, char **argv);

#endif
