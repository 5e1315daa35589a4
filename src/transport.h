/* transport.h — one interface over a plain TCP socket and a TLS session, so
 * the proxy never knows which it has. Owns the fd and the SSL object of a
 * client connection. Only this module (with tls.c and certs.c) calls SSL_*. */
#ifndef CORE_TRANSPORT_H
#define CORE_TRANSPORT_H
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

typedef struct ssl_st SSL;

#define TRANSPORT_AGAIN  (-1)   /* would block: wait for readiness */
#define TRANSPORT_ERROR  (-2)   /* connection is broken: close it */
#define TRANSPORT_PARKED (-3)   /* TLS handshake waits for a certificate */

struct transport {
    int fd;
    SSL *ssl;          /* NULL for plain TCP */
    const char *err;   /* after TRANSPORT_ERROR: short cause for the log */
    /* TLS: the last socket read returned fewer bytes than asked (the socket
     * was empty then), kept up to date by a BIO callback. */
    bool sock_short;
};

/* Starts TLS on t (server side). Returns 0 or -1. */
int transport_start_tls(struct transport *t);
/* Drives the handshake: 0 when complete, TRANSPORT_AGAIN, TRANSPORT_PARKED
 * or TRANSPORT_ERROR. Always 0 for plain TCP. */
int transport_handshake(struct transport *t);
bool transport_handshake_done(const struct transport *t);
/* After the handshake: whether ALPN chose HTTP/2 ("h2"). */
bool transport_alpn_is_h2(const struct transport *t);
/* The TLS server name the client asked for (SNI), NULL when none or plain TCP. */
const char *transport_sni(const struct transport *t);

/* Bytes read (>0), 0 at end of stream, TRANSPORT_AGAIN or TRANSPORT_ERROR. */
ssize_t transport_read(struct transport *t, void *buf, size_t len);
/* After a read that returned fewer than `asked` bytes (> 0): true when no
 * byte is left anywhere (socket or TLS buffers), so an edge-triggered
 * caller may wait for the next readiness event instead of reading again
 * only to get TRANSPORT_AGAIN. */
bool transport_read_drained(const struct transport *t, size_t got, size_t asked);
/* Call on every read-readiness event: bytes may have arrived since the last
 * short socket read, so OpenSSL must go back to the socket before the
 * connection can count as drained. */
static inline void transport_note_readable(struct transport *t) { t->sock_short = false; }
/* Bytes written (>0), TRANSPORT_AGAIN or TRANSPORT_ERROR. */
ssize_t transport_writev(struct transport *t, const struct iovec *iov, int iovcnt);
/* Ends our side of the stream (TLS close_notify, then TCP FIN). */
void transport_shutdown_write(struct transport *t);
void transport_close(struct transport *t);

#endif
