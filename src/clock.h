/* clock.h — the one monotonic clock: CLOCK_MONOTONIC in milliseconds for
 * timeouts and durations, and absolute deadlines for condition variables
 * created with pthread_condattr_setclock(CLOCK_MONOTONIC). Wall-clock time
 * (log stamps, certificate expiry) is not here: that is time(2) or
 * CLOCK_REALTIME where it is used. */
#ifndef CORE_CLOCK_H
#define CORE_CLOCK_H
#include <stdint.h>
#include <time.h>

/* Milliseconds since an unspecified start (boot); never goes back. */
uint64_t clock_mono_ms(void);

/* CLOCK_MONOTONIC now plus ms, as the absolute time pthread_cond_timedwait
 * takes on a condition variable set to CLOCK_MONOTONIC. ms >= 0. */
struct timespec clock_deadline_ms(long ms);

#endif
