/* tls.c — OpenSSL server contexts and the client-hello callback that picks
 * the certificate by SNI, refuses names without a route, and suspends the
 * handshake while the certificate thread obtains a certificate. */
#include "tls.h"
#include "certs.h"
#include "challenge.h"
#include "cmd.h"
#include "domain.h"
#include "log.h"
#include "sslerr.h"
#include <arpa/inet.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

static SSL_CTX *base_ctx;   /* every SSL starts here; owns the session ticket keys */

/* TLS 1.2 suites: forward secrecy (ECDHE) and AEAD only. TLS 1.3 suites are
 * OpenSSL's defaults, which are all ECDHE/AEAD already. */
#define TLS12_CIPHERS "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
                      "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:" \
                      "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define TLS_GROUPS    "X25519:P-256:P-384"
#define TLS_SID_CTX   "core_server"

/* ALPN protocols we speak, in our order of preference (wire format: a length
 * byte, then the name): HTTP/2 first (client_h2.c), then HTTP/1.1.
 * "acme-tls/1" (RFC 8737) is not in this list on purpose: it is selected
 * only on a handshake that on_client_hello switched to a tls-alpn-01
 * challenge context, whose own ALPN callback offers nothing else; a normal
 * certificate must never be served under acme-tls/1. */
static const struct {
    const unsigned char *name;   /* length-prefixed */
} alpn_protos[] = {
    { (const unsigned char *)"\x02h2" },
    { (const unsigned char *)"\x08http/1.1" },
};

/* Picks the first protocol of ours that the client offers. in is the
 * client's list in wire format. */
static int on_alpn_select(SSL *s, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned int inlen, void *arg)
{
    for (size_t i = 0; i < sizeof alpn_protos / sizeof alpn_protos[0]; i++) {
        const unsigned char *want = alpn_protos[i].name;
        for (unsigned int off = 0; off < inlen; off += 1u + in[off]) {
            unsigned int n = in[off];
            if (off + 1u + n > inlen)
                break;   /* malformed list; OpenSSL checks this too */
            if (n == want[0] && memcmp(in + off + 1, want + 1, n) == 0) {
                *out = in + off + 1;
                *outlen = (unsigned char)n;
                return SSL_TLSEXT_ERR_OK;
            }
        }
    }
    /* No overlap: RFC 7301 allows a no_application_protocol alert, but going
     * on without ALPN lets a client that offered only, say, "h2" still fall
     * back to HTTP/1.1 as browsers do; nginx behaves the same. */
    return SSL_TLSEXT_ERR_NOACK;
}

SSL_CTX *tls_ctx_new(char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        sslerr_format(err, errlen, "SSL_CTX_new");
        return NULL;
    }
    /* Options and modes are copied into each SSL at SSL_new (from the base
     * context) and survive SSL_set_SSL_CTX; setting them here too keeps the
     * two kinds of context identical, so nothing depends on that detail. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_NO_COMPRESSION);
    /* Partial writes and moving buffers: the transport writes from a ring
     * buffer and may retry from a different address. Releasing buffers keeps
     * idle keep-alive connections small. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
        !SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS) ||
        !SSL_CTX_set1_groups_list(ctx, TLS_GROUPS) ||
        !SSL_CTX_set_session_id_context(ctx, (const unsigned char *)TLS_SID_CTX,
                                        sizeof TLS_SID_CTX - 1)) {
        sslerr_format(err, errlen, "configuring the TLS context");
        SSL_CTX_free(ctx);
        return NULL;
    }
    /* Session tickets stay on (OpenSSL's default). Their keys live in the
     * SSL's session context, which is always the base context, so a ticket
     * is accepted whichever certificate context the handshake switched to.
     * Resumption needs nothing else: no server-side session cache (it would
     * take a lock and keep up to 20,000 sessions in memory), and one ticket
     * per full handshake instead of OpenSSL's two (one less encryption and
     * record per new connection). */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 1);
    /* OpenSSL reads the ALPN callback from the SSL's current context, i.e.
     * after on_client_hello switched it: every context needs it. */
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn_select, NULL);
    return ctx;
}

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

/* Runs on the worker thread, before OpenSSL has chosen anything. Returning
 * SSL_CLIENT_HELLO_RETRY suspends the handshake: SSL_do_handshake returns -1
 * with SSL_ERROR_WANT_CLIENT_HELLO_CB and calls us again on its next call. */
static int on_client_hello(SSL *s, int *al, void *arg)
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

int tls_init(char *err, size_t errlen)
{
    base_ctx = tls_ctx_new(err, errlen);
    if (!base_ctx)
        return -1;
    /* Only the base context has the callback: once a handshake has switched
     * to a certificate context the choice is made. (A TLS 1.3 second
     * ClientHello after HelloRetryRequest must carry the same SNI.) */
    SSL_CTX_set_client_hello_cb(base_ctx, on_client_hello, NULL);
    return 0;
}

void tls_cleanup(void)
{
    SSL_CTX_free(base_ctx);
    base_ctx = NULL;
}

SSL *tls_new_server(int fd)
{
    SSL *s = SSL_new(base_ctx);
    if (!s)
        return NULL;
    if (!SSL_set_fd(s, fd)) {
        SSL_free(s);
        return NULL;
    }
    SSL_set_accept_state(s);
    return s;
}
