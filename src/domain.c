/* domain.c — host-name validation and canonical form (lower case, no trailing
 * dot, no port). Pure functions over caller-owned buffers; no allocation. */
#include "domain.h"
#include <string.h>

#define LABEL_MAX 63

static bool is_label_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
}

static unsigned char fold_lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c - 'A' + 'a') : c;
}

/* Checks one label out[start..end) (already lower-cased). */
static const char *check_label(const char *out, size_t start, size_t end)
{
    if (end == start)
        return "empty label (two dots in a row, or a leading dot)";
    if (end - start > LABEL_MAX)
        return "label longer than 63 characters";
    if (out[start] == '-')
        return "label starts with '-'";
    if (out[end - 1] == '-')
        return "label ends with '-'";
    return NULL;
}

int domain_canonicalize(const char *in, size_t len, char *out, size_t cap, const char **err)
{
    const char *why = NULL;
    size_t label_start = 0;

    if (len > 0 && in[len - 1] == '.')   /* one trailing dot: the root, same name */
        len--;
    if (len == 0) {
        why = "empty name";
        goto fail;
    }
    if (len > DOMAIN_MAX) {
        why = "name longer than 253 characters";
        goto fail;
    }
    if (cap < len + 1) {
        why = "name does not fit the output buffer";
        goto fail;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = fold_lower((unsigned char)in[i]);
        if (c == '.') {
            if ((why = check_label(out, label_start, i)) != NULL)
                goto fail;
            label_start = i + 1;
        } else if (!is_label_char(c)) {
            why = "only letters, digits, '-' and '.' are allowed";
            goto fail;
        }
        out[i] = (char)c;
    }
    if ((why = check_label(out, label_start, len)) != NULL)
        goto fail;
    out[len] = '\0';
    if (err)
        *err = NULL;
    return (int)len;

fail:
    if (cap > 0)
        out[0] = '\0';
    if (err)
        *err = why;
    return -1;
}

int domain_from_host_header(const char *in, size_t len, char *out, size_t cap)
{
    size_t name_len = len;

    /* IP-literal ("[::1]:8080"): never a route name. */
    if (len > 0 && in[0] == '[')
        goto fail;
    /* RFC 3986 authority: host [ ":" *DIGIT ]; the port may be empty. */
    const char *colon = memchr(in, ':', len);
    if (colon) {
        name_len = (size_t)(colon - in);
        for (const char *p = colon + 1; p < in + len; p++)
            if (*p < '0' || *p > '9')
                goto fail;
    }
    return domain_canonicalize(in, name_len, out, cap, NULL);

fail:
    if (cap > 0)
        out[0] = '\0';
    return -1;
}
