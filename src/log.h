/* log.h — log lines and where they go. Owns the destination: stderr (local
 * mode, one write(2) per line so threads never interleave) or a file with
 * rotation under a total size cap (release mode, --log-file), written by one
 * logger thread so that logging never blocks the request path; and the switch
 * for access logging. Does not own what gets logged. */
#ifndef CORE_LOG_H
#define CORE_LOG_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

/* The live file plus this many backups (PATH.1 .. PATH.4, PATH.4 oldest) share
 * the cap: each file holds at most max_total_bytes / (LOG_BACKUPS + 1). */
#define LOG_BACKUPS 4
/* Smallest cap accepted: every file must hold several maximal (2 KB) lines. */
#define LOG_MIN_TOTAL_BYTES 100000

/* Sends lines to fd (default 2). Call once at startup, before threads start. */
void log_set_fd(int fd);
void log_set_level(enum log_level min);
/* Access lines on or off (default on); read without a lock on the request path. */
void log_set_access(bool on);
bool log_access_enabled(void);

/* From now on lines go to the file at path (appended; its parent directories
 * are created), rotated so that the file and its backups stay at or under
 * max_total_bytes. Starts the logger thread: call once, before other threads
 * start and after any fork. Returns 0, or -1 with the cause and fix in err. */
int log_open_file(const char *path, uint64_t max_total_bytes, char *err, size_t errlen);
/* True once log_open_file succeeded (and until log_close). */
bool log_to_file(void);
/* Asks the logger thread to close and reopen the file by name (SIGHUP, after
 * an external logrotate moved it away). No effect when logging to stderr.
 * Never blocks on the disk. */
void log_reopen(void);
/* Writes every queued line, stops the logger thread and closes the file; later
 * lines go to stderr. No effect when logging to stderr. */
void log_close(void);

/* "2026-11-25T11:00:00.123Z info message\n". With a file destination the line
 * is formatted here and queued (a mutex held for one memcpy); when the queue
 * is full it is dropped and counted, and a "N log lines dropped" line follows
 * once the logger catches up. */
void log_msg(enum log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
