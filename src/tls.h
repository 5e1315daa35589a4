/* tls.h — OpenSSL server side: the base SSL_CTX (TLS 1.2+, ALPN h2 and
 * http/1.1), contexts configured like it for certificates, and new SSL
 * objects for accepted fds. It does not choose certificates: the
 * client-hello callback given to tls_init does (sni.h), so this module
 * depends on no other. Only tls.c, sni.c, certs.c, challenge.c and
 * transport.c call SSL_* functions. */
#ifndef CORE_TLS_H
#define CORE_TLS_H
#include <stddef.h>
#include <openssl/ssl.h>

/* Builds the base context, with on_hello (sni_on_client_hello) as its
 * client-hello callback. Call once at startup after certs_init().
 * Returns 0, or -1 with the cause in err. */
int tls_init(SSL_client_hello_cb_fn on_hello, char *err, size_t errlen);
void tls_cleanup(void);

/* A new context configured exactly like the base one (protocol versions,
 * ciphers, groups, options, ALPN), without a certificate: certs.c loads one
 * into it. The client-hello callback (sni.c) switches a handshake to it with
 * SSL_set_SSL_CTX, after which OpenSSL reads the ALPN callback and the
 * certificate from it, so the two must agree. Returns NULL with err. */
SSL_CTX *tls_ctx_new(char *err, size_t errlen);

/* A new server-side SSL for the accepted, non-blocking fd. When its
 * handshake returns SSL_ERROR_WANT_CLIENT_HELLO_CB the certificate for its
 * SNI is being made: park the connection and call SSL_do_handshake again
 * after a certs_subscribe() notification. */
SSL *tls_new_server(int fd);

#endif
