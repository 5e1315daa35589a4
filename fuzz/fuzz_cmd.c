/* fuzz_cmd.c — libFuzzer target for the command parser and the host-name
 * functions: no crash, no out-of-bounds access, and the results keep their
 * contracts (canonical names re-canonicalise to themselves, ports in range,
 * error texts NUL-terminated and non-empty). Inputs starting with 'T' also
 * drive the route table (set/remove/lookup) against a plain-array model. */
#include "cmd.h"
#include "domain.h"
#include "routes.h"
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void check_canonical(const char *name, size_t len)
{
    char again[DOMAIN_MAX + 1];
    const char *why;

    if (len == 0 || len > DOMAIN_MAX || strlen(name) != len)
        abort();
    for (size_t i = 0; i < len; i++)
        if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9') ||
              name[i] == '-' || name[i] == '.'))
            abort();
    if (domain_canonicalize(name, len, again, sizeof again, &why) != (int)len || memcmp(again, name, len) != 0)
        abort();
}

static void fuzz_parse(const char *data, size_t size)
{
    struct cmd_command c;
    char err[256];

    err[0] = '\0';
    if (cmd_parse(data, size, &c, err, sizeof err) == 0) {
        if (c.verb == CMD_ADD && c.port == 0)
            abort();
        if (c.verb == CMD_ADD || c.verb == CMD_REMOVE || c.verb == CMD_STATUS)
            check_canonical(c.domain, c.domain_len);
        else if (c.domain_len != 0)
            abort();
    } else if (err[0] == '\0' || memchr(err, '\0', sizeof err) == NULL) {
        abort();
    }
}

static void fuzz_names(const char *data, size_t size)
{
    char out[DOMAIN_MAX + 1];
    const char *why = NULL;
    int n = domain_canonicalize(data, size, out, sizeof out, &why);

    if (n >= 0)
        check_canonical(out, (size_t)n);
    else if (!why)
        abort();
    n = domain_from_host_header(data, size, out, sizeof out);
    if (n >= 0)
        check_canonical(out, (size_t)n);
}

struct model {
    char name[DOMAIN_MAX + 1];
    uint16_t port;
};

/* Each line "NAME" sets NAME, "-NAME" removes it, on both the table and a
 * plain array model; after each step every model entry must be found with
 * its port and the counts must agree. */
static void fuzz_table(const char *data, size_t size)
{
    static struct model m[64];
    struct routes *r = routes_new_empty();
    size_t nm = 0, step = 0;

    for (const char *p = data, *end = data + size; p < end && step < 64; step++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *eol = nl ? nl : end;
        bool del = p < eol && *p == '-';
        char name[DOMAIN_MAX + 1];
        int n = domain_canonicalize(p + del, (size_t)(eol - p - del), name, sizeof name, NULL);
        size_t i;

        p = nl ? nl + 1 : end;
        if (n < 0)
            continue;
        for (i = 0; i < nm && strcmp(m[i].name, name) != 0; i++)
            ;
        if (del) {
            if (routes_remove(r, name, (size_t)n) != (i < nm ? 0 : -1))
                abort();
            if (i < nm)
                m[i] = m[--nm];
        } else {
            routes_set(r, name, (size_t)n, (uint16_t)(step + 1));
            if (i == nm)
                memcpy(m[nm++].name, name, (size_t)n + 1);
            m[i].port = (uint16_t)(step + 1);
        }
        if (routes_count(r) != nm)
            abort();
        for (i = 0; i < nm; i++)
            if (routes_lookup(r, m[i].name, strlen(m[i].name)) != m[i].port)
                abort();
    }
    routes_free(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_parse((const char *)data, size);
    fuzz_names((const char *)data, size);
    if (size > 0 && data[0] == 'T')
        fuzz_table((const char *)data + 1, size - 1);
    return 0;
}
