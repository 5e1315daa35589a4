/* domain.h — host names: validation and canonical form (lower case, no
 * trailing dot, no port), for UDP commands, Host headers and TLS SNI.
 * Pure functions, no allocation. */
#ifndef CORE_DOMAIN_H
#define CORE_DOMAIN_H
#include <stdbool.h>
#include <stddef.h>

#define DOMAIN_MAX 253   /* longest canonical name, without the NUL */

/* Writes the canonical form of the host name in[0..len) into out (cap bytes,
 * NUL-terminated) and returns its length; -1 when it is not a valid DNS host
 * name (labels of 1..63 [a-z0-9-] not starting or ending with '-', total
 * <= 253; one trailing dot allowed; upper case folded), with *err set to a
 * short reason such as "label longer than 63 characters". */
int domain_canonicalize(const char *in, size_t len, char *out, size_t cap, const char **err);

/* Like domain_canonicalize, for the value of a Host header or an SNI name:
 * strips a ":port" suffix (and accepts "[v6]:port" literals, which never
 * match a route: returns -1). */
int domain_from_host_header(const char *in, size_t len, char *out, size_t cap);

#endif
