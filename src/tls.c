/* tls.c — OpenSSL server contexts (protocol versions, ciphers, ALPN) and new
 * server-side SSL objects. Which certificate a handshake gets is decided by
 * the client-hello callback that tls_init installs (sni.c); this file knows
 * nothing about routes, certificates or challenges. */
#include "tls.h"
#include "sslerr.h"
#include <string.h>

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
 * only on a handshake that the client-hello callback (sni.c) switched to a
 * tls-alpn-01 challenge context, whose own ALPN callback offers nothing else; a normal
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
     * after the client-hello callback switched it: every context needs it. */
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn_select, NULL);
    return ctx;
}

int tls_init(SSL_client_hello_cb_fn on_hello, char *err, size_t errlen)
{
    base_ctx = tls_ctx_new(err, errlen);
    if (!base_ctx)
        return -1;
    /* Only the base context has the callback: once a handshake has switched
     * to a certificate context the choice is made. (A TLS 1.3 second
     * ClientHello after HelloRetryRequest must carry the same SNI.) */
    SSL_CTX_set_client_hello_cb(base_ctx, on_hello, NULL);
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
