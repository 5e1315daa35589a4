/* sslerr.c — OpenSSL's error queue as one caller-owned message. */
#include "sslerr.h"
#include <stdio.h>
#include <openssl/err.h>

void sslerr_format(char *err, size_t errlen, const char *what)
{
    /* The first error is the root cause; later entries are the callers
     * that passed it up. */
    unsigned long e = ERR_get_error();
    char buf[256];

    ERR_error_string_n(e, buf, sizeof buf);
    snprintf(err, errlen, "%s: %s", what, e ? buf : "unknown OpenSSL error");
    ERR_clear_error();
}
