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

/* Makes sure mkcert's CA exists, so the first local HTTPS client can
 * already verify against CAROOT/rootCA.pem: asks mkcert where it keeps it
 * (`mkcert -CAROOT`, written to caroot) and, when rootCA.pem or
 * rootCA-key.pem is missing there, runs mkcert once to make a throwaway
 * certificate in a temporary directory, which creates the CA. Never
 * installs it into a trust store (`mkcert -install` is the user's call).
 * Blocking (bounded like mkcert_make): call at startup. Returns 1 when it
 * created the CA, 0 when it was there, -1 with the cause in err. */
int mkcert_ensure_ca(const char *mkcert_path, char *caroot, size_t cap, char *err, size_t errlen);

#endif
