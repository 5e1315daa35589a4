/* sni.c — picks the certificate for a ClientHello: by SNI, refusing names
 * without a route, answering tls-alpn-01 challenges, and suspending the
 * handshake while the certificate thread obtains a certificate. */
#include "sni.h"
#include "certs.h"
#include "challenge.h"
#include "cmd.h"
#include "domain.h"
#include "log.h"
#include <arpa/inet.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

/* The first host_name in the ClientHello's server_name extension (RFC 6066
 * section 3), canonicalised into name. Returns its length, or -1 when there
 * is none or it is not a valid host name. */
static int sni_from_hello(SSL *s, char *name, size_t cap)
{
    const unsigned char *p;
    size_t len;

    if (!SSL_client_hello_get0_ext(s, TLSEXT_TYPE_server_name, &p, &len) || len < 2)
        return -1;
    size_t list_len = ((size_t)p[0] << 8) | p[1];
    if (list_len != len - 2)
        return -1;
    p += 2;
    len -= 2;
    while (len >= 3) {
        unsigned type = p[0];
        size_t n = ((size_t)p[1] << 8) | p[2];
        if (n > len - 3)
            return -1;
        if (type == TLSEXT_NAMETYPE_host_name) {
            const char *why;
            return domain_canonicalize((const char *)p + 3, n, name, cap, &why);
        }
        p += 3 + n;
        len -= 3 + n;
    }
    return -1;
}

/* True when the client's ALPN list is exactly one protocol, "acme-tls/1":
 * a CA validating tls-alpn-01 (RFC 8737 section 3 requires it to offer
 * only that). A browser offering it among others gets a normal handshake. */
static bool wants_acme_tls(SSL *s)
{
    const unsigned char *p;
    size_t len, n = sizeof CHALLENGE_ALPN - 1;

    if (!SSL_client_hello_get0_ext(s, TLSEXT_TYPE_application_layer_protocol_negotiation, &p, &len))
        return false;
    /* ProtocolNameList: a 2-byte length, then one length-prefixed name. */
    return len == 3 + n && (((size_t)p[0] << 8) | p[1]) == 1 + n && p[2] == n &&
           memcmp(p + 3, CHALLENGE_ALPN, n) == 0;
}

/* "1.2.3.4:5678" for log lines; "?" when unknown. */
static void peer_str(SSL *s, char *out, size_t cap)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;

    snprintf(out, cap, "?");
    if (getpeername(SSL_get_fd(s), (struct sockaddr *)&ss, &sl) < 0)
        return;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        port = ntohs(a->sin_port);
        snprintf(out, cap, "%s:%u", host, port);
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        port = ntohs(a->sin6_port);
        snprintf(out, cap, "[%s]:%u", host, port);
    }
}

/* Runs on the worker thread, before OpenSSL has chosen anything (sni.h). */
int sni_on_client_hello(SSL *s, int *al, void *arg)
{
    char name[DOMAIN_MAX + 1], peer[64];
    int len = sni_from_hello(s, name, sizeof name);

    if (len < 0) {
        /* Scanners and clients connecting by IP address: no name, no cert. */
        peer_str(s, peer, sizeof peer);
        log_debug("tls %s: no usable SNI host name, refused with unrecognized_name", peer);
        *al = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_CLIENT_HELLO_ERROR;
    }
    /* tls-alpn-01 (RFC 8737): the CA offers only "acme-tls/1"; answer with
     * the challenge certificate when an order for this name is pending (so
     * only for names we ordered, which had a route), and never with the
     * real certificate. transport.c closes the connection once the
     * handshake is done: it must not reach the proxy. */
    if (wants_acme_tls(s)) {
        SSL_CTX *cctx = challenge_tls_alpn_ctx(name, (size_t)len);
        peer_str(s, peer, sizeof peer);
        if (!cctx) {
            log_info("tls %s: acme-tls/1 for %s, but no tls-alpn-01 challenge is pending: "
                     "refused with unrecognized_name", peer, name);
            *al = SSL_AD_UNRECOGNIZED_NAME;
            return SSL_CLIENT_HELLO_ERROR;
        }
        bool ok = SSL_set_SSL_CTX(s, cctx) != NULL;
        SSL_CTX_free(cctx);   /* the SSL holds its own reference now */
        if (!ok) {
            log_warn("tls %s: SSL_set_SSL_CTX failed for the tls-alpn-01 challenge of %s", peer, name);
            *al = SSL_AD_INTERNAL_ERROR;
            return SSL_CLIENT_HELLO_ERROR;
        }
        log_info("tls %s: answering the tls-alpn-01 challenge for %s", peer, name);
        return SSL_CLIENT_HELLO_SUCCESS;
    }
    if (cmd_lookup_route(name, (size_t)len) == 0) {   /* waits for a racing add (cmd.h) */
        /* A name without a route never gets a certificate made. */
        peer_str(s, peer, sizeof peer);
        log_info("tls %s: SNI %s has no route, refused with unrecognized_name", peer, name);
        *al = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_CLIENT_HELLO_ERROR;
    }

    SSL_CTX *ctx = NULL;
    switch (certs_get(name, (size_t)len, &ctx)) {
    case CERTS_READY:
        /* Takes its own reference to ctx, so the store may replace it. */
        if (!SSL_set_SSL_CTX(s, ctx)) {
            log_warn("tls %s: SSL_set_SSL_CTX failed (out of memory?)", name);
            *al = SSL_AD_INTERNAL_ERROR;
            return SSL_CLIENT_HELLO_ERROR;
        }
        return SSL_CLIENT_HELLO_SUCCESS;
    case CERTS_PENDING:
        return SSL_CLIENT_HELLO_RETRY;
    case CERTS_FAILED:
    default:
        /* The certificate thread logged the cause when it failed. */
        peer_str(s, peer, sizeof peer);
        log_debug("tls %s: no certificate for %s (recent failure), refused", peer, name);
        *al = SSL_AD_INTERNAL_ERROR;
        return SSL_CLIENT_HELLO_ERROR;
    }
}
