/* clock.c — CLOCK_MONOTONIC in milliseconds and as condvar deadlines;
 * wall-clock times formatted for status and logs. */
#include "clock.h"

#include <stdio.h>

uint64_t clock_mono_ms(void)
{
    struct timespec ts;
    /* CLOCK_MONOTONIC cannot fail with a valid pointer (clock_gettime(2)). */
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

struct timespec clock_deadline_ms(long ms)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += ms % 1000 * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

const char *clock_format_utc(time_t t, char *buf, size_t cap)
{
    struct tm tm;
    if (!gmtime_r(&t, &tm) || strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(buf, cap, "@%lld", (long long)t);
    return buf;
}
