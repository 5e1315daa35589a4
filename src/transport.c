/* transport.c — plain TCP and TLS behind one read/write interface. */
#include "transport.h"
#include "challenge.h"
#include "net.h"
#include "tls.h"
#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Watches the socket BIO's reads: a read that got less than it asked for
 * (or nothing) found the socket empty. With read-ahead, OpenSSL asks for
 * as much as its record buffer holds, so that is the signal that every byte
 * the peer had sent by then is in OpenSSL's hands. */
static long watch_socket_reads(BIO *b, int oper, const char *argp, size_t len, int argi,
                               long argl, int ret, size_t *processed)
{
    (void)argp;
    (void)argi;
    (void)argl;
    if (oper == (BIO_CB_READ | BIO_CB_RETURN)) {
        struct transport *t = (struct transport *)BIO_get_callback_arg(b);
        t->sock_short = ret <= 0 || (processed && *processed < len);
    }
    return ret;
}

int transport_start_tls(struct transport *t)
{
    t->ssl = tls_new_server(t->fd);
    if (!t->ssl)
        return -1;
    /* Read-ahead: one read(2) per burst of records instead of one for each
     * record header and one for its body. */
    SSL_set_read_ahead(t->ssl, 1);
    t->sock_short = false;
    BIO *rb = SSL_get_rbio(t->ssl);
    BIO_set_callback_arg(rb, (char *)t);
    BIO_set_callback_ex(rb, watch_socket_reads);
    /* Partial writes and moving buffers: the proxy writes from ring-less
     * buffers that compact between retries. RELEASE_BUFFERS: an idle TLS
     * keep-alive connection should not hold 2 x 16 KiB of record buffers.
     * IGNORE_UNEXPECTED_EOF: most clients close without close_notify; treat
     * it as the end of the stream, as plain TCP does. */
    SSL_set_mode(t->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                             SSL_MODE_RELEASE_BUFFERS);
    SSL_set_options(t->ssl, SSL_OP_IGNORE_UNEXPECTED_EOF);
    return 0;
}

bool transport_handshake_done(const struct transport *t)
{
    return !t->ssl || SSL_is_init_finished(t->ssl);
}

bool transport_alpn_is_h2(const struct transport *t)
{
    const unsigned char *p = NULL;
    unsigned int n = 0;

    if (!t->ssl)
        return false;
    SSL_get0_alpn_selected(t->ssl, &p, &n);
    return n == 2 && memcmp(p, "h2", 2) == 0;
}

const char *transport_sni(const struct transport *t)
{
    return t->ssl ? SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name) : NULL;
}

/* Maps an SSL_* failure to AGAIN/PARKED/ERROR, clearing the error queue so
 * one connection's failure never shows up in another's. */
static int ssl_result(struct transport *t, int r)
{
    int e = SSL_get_error(t->ssl, r);

    switch (e) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        return TRANSPORT_AGAIN;
    case SSL_ERROR_WANT_CLIENT_HELLO_CB:
        return TRANSPORT_PARKED;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        t->err = errno ? strerror(errno) : "connection closed during TLS";
        break;
    default: {
        unsigned long le = ERR_peek_error();
        t->err = le ? ERR_reason_error_string(le) : "TLS error";
        if (!t->err)
            t->err = "TLS error";
        break;
    }
    }
    ERR_clear_error();
    return TRANSPORT_ERROR;
}

/* A handshake that selected "acme-tls/1" served a tls-alpn-01 challenge
 * certificate (tls.c): RFC 8737 section 3 says nothing follows it, and it
 * must never reach the proxy as HTTP, so it ends here as an "error". */
static bool answered_acme_tls(struct transport *t)
{
    const unsigned char *p;
    unsigned int n;

    SSL_get0_alpn_selected(t->ssl, &p, &n);
    if (n != sizeof CHALLENGE_ALPN - 1 || memcmp(p, CHALLENGE_ALPN, n) != 0)
        return false;
    t->err = "tls-alpn-01 challenge answered (closed after the handshake)";
    return true;
}

int transport_handshake(struct transport *t)
{
    int r;

    if (!t->ssl)
        return 0;
    r = SSL_do_handshake(t->ssl);
    if (r == 1)
        return answered_acme_tls(t) ? TRANSPORT_ERROR : 0;
    r = ssl_result(t, r);
    return r == 0 ? TRANSPORT_ERROR : r;
}

ssize_t transport_read(struct transport *t, void *buf, size_t len)
{
    if (!t->ssl) {
        ssize_t n = net_recv(t->fd, buf, len);
        if (n >= 0)
            return n;
        if (errno == EAGAIN || errno == EINTR)
            return TRANSPORT_AGAIN;
        t->err = strerror(errno);
        return TRANSPORT_ERROR;
    }
    size_t got = 0;
    int r = SSL_read_ex(t->ssl, buf, len, &got);
    if (r == 1)
        return (ssize_t)got;
    return ssl_result(t, r);
}

bool transport_read_drained(const struct transport *t, size_t got, size_t asked)
{
    if (!t->ssl)
        return got < asked;
    return t->sock_short && got < asked && !SSL_has_pending(t->ssl);
}

ssize_t transport_writev(struct transport *t, const struct iovec *iov, int iovcnt)
{
    if (!t->ssl) {
        ssize_t n = net_sendv(t->fd, iov, iovcnt);
        if (n >= 0)
            return n;
        if (errno == EAGAIN || errno == EINTR)
            return TRANSPORT_AGAIN;
        t->err = strerror(errno);
        return TRANSPORT_ERROR;
    }
    /* TLS: one record per iovec entry; stop at the first partial write.
     * SSL_MODE_ENABLE_PARTIAL_WRITE and ACCEPT_MOVING_WRITE_BUFFER are set
     * by tls.c, so a retry may pass a different pointer. */
    ssize_t total = 0;
    for (int i = 0; i < iovcnt; i++) {
        size_t done = 0;
        if (iov[i].iov_len == 0)
            continue;
        int r = SSL_write_ex(t->ssl, iov[i].iov_base, iov[i].iov_len, &done);
        if (r != 1) {
            int e = ssl_result(t, r);
            return total ? total : (e == 0 ? TRANSPORT_ERROR : e);
        }
        total += (ssize_t)done;
        if (done < iov[i].iov_len)
            break;
    }
    return total;
}

void transport_shutdown_write(struct transport *t)
{
    if (t->ssl && SSL_is_init_finished(t->ssl)) {
        SSL_shutdown(t->ssl);
        ERR_clear_error();
    }
    shutdown(t->fd, SHUT_WR);
}

void transport_close(struct transport *t)
{
    if (t->ssl) {
        /* Best effort close_notify (non-blocking: never waits for the peer's). */
        if (SSL_is_init_finished(t->ssl) && !(SSL_get_shutdown(t->ssl) & SSL_SENT_SHUTDOWN))
            SSL_shutdown(t->ssl);
        ERR_clear_error();
        SSL_free(t->ssl);
        t->ssl = NULL;
    }
    if (t->fd >= 0) {
        close(t->fd);
        t->fd = -1;
    }
}
