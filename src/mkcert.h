/* mkcert.h — local-mode certificates made by the mkcert tool. Blocking:
 * only the certificate thread (certs.c) calls mkcert_make. */
#ifndef CORE_MKCERT_H
#define CORE_MKCERT_H
#include <stddef.h>

/* Finds "mkcert" on PATH; writes its absolute path to out and returns 0, or -1. */
int mkcert_find(char *out, size_t cap);

/* Runs `mkcert -ecdsa -cert-file CERT -key-file KEY DOMAIN` (no shell), waits for
 * it (bounded, 60 s), and checks both files exist. Returns 0, or -1 with
 * mkcert's exit status and last stderr line in err. */
int mkcert_make(const char *mkcert_path, const char *domain, const char *cert_path,
                const char *key_path, char *err, size_t errlen);

#endif
