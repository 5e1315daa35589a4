/* log.h — log lines: one write(2) per line so lines from several threads never
 * interleave. Owns the log destination (stderr in local mode; a file with
 * rotation in release mode, added by the release-mode work) and the switch for
 * access logging. Does not own what gets logged. */
#ifndef CORE_LOG_H
#define CORE_LOG_H
#include <stdbool.h>
#include <stdint.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Sends lines to fd (default 2). Call once at startup, before threads start. */
void log_set_fd(int fd);
void log_set_level(enum log_level min);
/* Access lines on or off (default on); read without a lock on the request path. */
void log_set_access(bool on);
bool log_access_enabled(void);

/* "2026-11-25T11:00:00.123Z info message\n" */
void log_msg(enum log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
