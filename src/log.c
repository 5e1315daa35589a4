/* log.c — timestamped log lines, each written with one write(2). */
#include "log.h"
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int log_fd = 2;                       /* set before threads start */
static enum log_level log_min = LOG_INFO;    /* set before threads start */
static atomic_bool access_on = true;

static const char *const level_names[] = { "debug", "info", "warn", "error" };

void log_set_fd(int fd) { log_fd = fd; }
void log_set_level(enum log_level min) { log_min = min; }
void log_set_access(bool on) { atomic_store_explicit(&access_on, on, memory_order_relaxed); }
bool log_access_enabled(void) { return atomic_load_explicit(&access_on, memory_order_relaxed); }

void log_msg(enum log_level lvl, const char *fmt, ...)
{
    char line[2048];
    struct timespec ts;
    struct tm tm;
    size_t n;
    va_list ap;

    if (lvl < log_min)
        return;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(line + n, sizeof line - n, ".%03ldZ %s ", ts.tv_nsec / 1000000,
                          level_names[lvl]);
    va_start(ap, fmt);
    int w = vsnprintf(line + n, sizeof line - n, fmt, ap);
    va_end(ap);
    if (w < 0)
        w = 0;
    n += (size_t)w;
    if (n > sizeof line - 2)
        n = sizeof line - 2;   /* truncated: still end the line */
    /* Control characters from peers must not forge log lines. */
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)line[i] < 0x20 && line[i] != '\t')
            line[i] = '?';
    line[n++] = '\n';
    while (write(log_fd, line, n) < 0 && errno == EINTR)
        ;
}
