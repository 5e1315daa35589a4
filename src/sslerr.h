/* sslerr.h — the one formatter for OpenSSL's thread-local error queue: turns
 * "what failed" plus the queue's first error into a caller-owned message and
 * empties the queue, so that a later failure never reports a stale cause.
 * It does not log; the caller decides what to do with the message. */
#ifndef CORE_SSLERR_H
#define CORE_SSLERR_H
#include <stddef.h>

/* Writes "WHAT: <first error of the queue>" into err (cut, never overrun;
 * "WHAT: unknown OpenSSL error" when the queue is empty), then clears the
 * queue. */
void sslerr_format(char *err, size_t errlen, const char *what);

#endif
