/* sni.h — picks the certificate for a ClientHello. The callback reads the
 * SNI host name and: refuses a missing or invalid name, or one without a
 * route (cmd_lookup_route, which waits for a racing add), with an
 * unrecognized_name alert; switches a CA's acme-tls/1-only hello to the
 * pending tls-alpn-01 challenge context (challenge.h); otherwise switches
 * the handshake to the name's certificate context (certs.h), or suspends it
 * while the certificate thread obtains one. It owns no state: contexts
 * belong to certs.c and challenge.c, the base context to tls.c. */
#ifndef CORE_SNI_H
#define CORE_SNI_H
#include <openssl/ssl.h>

/* An SSL_client_hello_cb_fn, for tls_init(). Runs on the worker thread.
 * Returns SSL_CLIENT_HELLO_SUCCESS with the SSL switched to the chosen
 * context; SSL_CLIENT_HELLO_ERROR with the alert in *al; or
 * SSL_CLIENT_HELLO_RETRY while the certificate is being made, which makes
 * SSL_do_handshake return -1 with SSL_ERROR_WANT_CLIENT_HELLO_CB and call
 * this again on its next call (after a certs_subscribe() notification). */
int sni_on_client_hello(SSL *s, int *al, void *arg);

#endif
