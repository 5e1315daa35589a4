/* clock.h — the one monotonic clock: CLOCK_MONOTONIC in milliseconds for
 * timeouts and durations, and absolute deadlines for condition variables
 * created with pthread_condattr_setclock(CLOCK_MONOTONIC); and the one
 * formatter of wall-clock times (time(2) values) for status and logs. */
#ifndef CORE_CLOCK_H
#define CORE_CLOCK_H
#include <stdint.h>
#include <time.h>

/* Milliseconds since an unspecified start (boot); never goes back. */
uint64_t clock_mono_ms(void);

/* CLOCK_MONOTONIC now plus ms, as the absolute time pthread_cond_timedwait
 * takes on a condition variable set to CLOCK_MONOTONIC. ms >= 0. */
struct timespec clock_deadline_ms(long ms);

/* t as "2025-01-31T12:00:00Z" (UTC, RFC 3339) in buf, or "@SECONDS" if it
 * cannot be formatted. Returns buf. */
const char *clock_format_utc(time_t t, char *buf, size_t cap);

#endif
