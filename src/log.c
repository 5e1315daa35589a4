/* log.c — timestamped log lines: written directly to stderr, or queued for a
 * logger thread that appends them to a file and rotates it under a size cap.
 *
 * The queue is two byte buffers (double buffering): log_msg appends a whole
 * line to the front one under a mutex held only for the memcpy; the logger
 * swaps the buffers under the same mutex and writes the back one with no lock
 * held. A mutex rather than a lock-free ring because lines vary in length
 * (a lock-free MPSC ring of variable records needs a reserve/commit protocol
 * that is hard to get right), the critical section is a memcpy of at most
 * 2 KB, and the few worker threads rarely meet there. A full queue drops the
 * line and counts it: the request path never waits for the disk. */
#include "log.h"
#include "file.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_BYTES 2048
#define QUEUE_BYTES (2u << 20)   /* per buffer: ~10k access lines of slack */

static int log_fd = 2;                       /* set before threads start */
static enum log_level log_min = LOG_INFO;    /* set before threads start */
static atomic_bool access_on = true;

static const char *const level_names[] = { "debug", "info", "warn", "error" };

/* The file destination. q_* are shared (under q_lock); f_* belong to the
 * logger thread once it runs. */
static struct {
    pthread_mutex_t q_lock;
    pthread_cond_t q_wake;
    char *q_front, *q_back;      /* QUEUE_BYTES each; front receives lines */
    size_t q_len;                /* bytes in front */
    uint64_t q_dropped;          /* lines refused since the logger last looked */
    bool q_idle;                 /* logger waits on q_wake */
    bool q_reopen;               /* SIGHUP: reopen by name */
    bool q_stop;                 /* log_close: drain, then exit */
    atomic_bool on;              /* the logger thread runs: lines go to the queue */
    pthread_t thread;
    char f_path[PATH_MAX];
    int f_fd;                    /* -1 when an open failed; retried per batch */
    uint64_t f_size;             /* bytes in the live file */
    uint64_t f_cap;              /* per file: total cap / (LOG_BACKUPS + 1) */
    uint64_t f_lost;             /* lines the logger could not write */
} lf = { .q_lock = PTHREAD_MUTEX_INITIALIZER, .q_wake = PTHREAD_COND_INITIALIZER, .f_fd = -1 };

void log_set_fd(int fd) { log_fd = fd; }
void log_set_level(enum log_level min) { log_min = min; }
void log_set_access(bool on) { atomic_store_explicit(&access_on, on, memory_order_relaxed); }
bool log_access_enabled(void) { return atomic_load_explicit(&access_on, memory_order_relaxed); }
bool log_to_file(void) { return atomic_load(&lf.on); }

/* Formats one line ending in '\n' into line[LINE_MAX_BYTES]; returns its length. */
static size_t format_line(char *line, enum log_level lvl, const char *fmt, va_list ap)
{
    struct timespec ts;
    struct tm tm;
    size_t n;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = strftime(line, LINE_MAX_BYTES, "%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(line + n, LINE_MAX_BYTES - n, ".%03ldZ %s ", ts.tv_nsec / 1000000,
                          level_names[lvl]);
    int w = vsnprintf(line + n, LINE_MAX_BYTES - n, fmt, ap);
    if (w < 0)
        w = 0;
    n += (size_t)w;
    if (n > LINE_MAX_BYTES - 2)
        n = LINE_MAX_BYTES - 2;   /* truncated: still end the line */
    /* Control characters from peers must not forge log lines; this also
     * keeps '\n' the only line boundary, which rotation relies on. */
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)line[i] < 0x20 && line[i] != '\t')
            line[i] = '?';
    line[n++] = '\n';
    return n;
}

/* The logger thread's own lines (which it writes, never queues). */
static size_t format_notice(char *line, enum log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static size_t format_notice(char *line, enum log_level lvl, const char *fmt, ...)
{
    va_list ap;
    size_t n;

    va_start(ap, fmt);
    n = format_line(line, lvl, fmt, ap);
    va_end(ap);
    return n;
}

static void write_direct(int fd, const char *p, size_t n)
{
    while (write(fd, p, n) < 0 && errno == EINTR)
        ;
}

/* The logger thread cannot log its own trouble to the file: stderr it is. */
static void warn_stderr(const char *msg)
{
    char line[PATH_MAX + 256];
    int n = snprintf(line, sizeof line, "core_server: %s\n", msg);

    write_direct(2, line, n < (int)sizeof line ? (size_t)n : sizeof line - 1);
}

/* Queues a whole line, or counts it dropped. Returns false when the logger
 * is not running (the caller writes the line itself). */
static bool enqueue(const char *line, size_t n)
{
    bool queued = true;

    pthread_mutex_lock(&lf.q_lock);
    if (!atomic_load_explicit(&lf.on, memory_order_relaxed)) {
        queued = false;
    } else if (lf.q_len + n > QUEUE_BYTES) {
        lf.q_dropped++;
    } else {
        memcpy(lf.q_front + lf.q_len, line, n);
        lf.q_len += n;
        if (lf.q_idle) {
            lf.q_idle = false;
            pthread_cond_signal(&lf.q_wake);
        }
    }
    pthread_mutex_unlock(&lf.q_lock);
    return queued;
}

void log_msg(enum log_level lvl, const char *fmt, ...)
{
    char line[LINE_MAX_BYTES];
    size_t n;
    va_list ap;

    if (lvl < log_min)
        return;
    va_start(ap, fmt);
    n = format_line(line, lvl, fmt, ap);
    va_end(ap);
    if (log_to_file() && enqueue(line, n))
        return;
    write_direct(log_fd, line, n);
}

/* ---- the logger thread: file, rotation, reopen ---- */

/* Creates every missing directory above path ("logs/core.log" -> "logs"). */
static int make_parents(const char *path, char *err, size_t errlen)
{
    char dir[PATH_MAX], cause[PATH_MAX + 64];
    char *slash;

    snprintf(dir, sizeof dir, "%s", path);
    slash = strrchr(dir, '/');
    if (!slash || slash == dir)
        return 0;
    *slash = '\0';
    if (file_mkdirs(dir, 0755, 0755, cause, sizeof cause) < 0) {
        snprintf(err, errlen, "%s (use --log-file PATH in a writable directory)", cause);
        return -1;
    }
    return 0;
}

/* Opens the live file by name (appending); sets f_fd and f_size. */
static int open_live(char *err, size_t errlen)
{
    struct stat st;
    int fd = open(lf.f_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);

    if (fd < 0) {
        snprintf(err, errlen, "open log file %s: %s (use --log-file PATH in a writable "
                 "directory)", lf.f_path, strerror(errno));
        return -1;
    }
    lf.f_fd = fd;
    lf.f_size = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? (uint64_t)st.st_size : 0;
    return 0;
}

static void close_live(void)
{
    if (lf.f_fd >= 0)
        close(lf.f_fd);
    lf.f_fd = -1;
}

/* PATH -> PATH.1 -> ... -> PATH.LOG_BACKUPS; the oldest is overwritten by
 * rename(2), so at no moment are there more files than the cap allows. */
static void rotate(void)
{
    char from[PATH_MAX + 16], to[PATH_MAX + 16];
    char err[PATH_MAX + 128];

    close_live();
    for (int i = LOG_BACKUPS - 1; i >= 1; i--) {
        snprintf(from, sizeof from, "%s.%d", lf.f_path, i);
        snprintf(to, sizeof to, "%s.%d", lf.f_path, i + 1);
        rename(from, to);   /* ENOENT: that backup does not exist yet */
    }
    snprintf(to, sizeof to, "%s.1", lf.f_path);
    if (rename(lf.f_path, to) < 0 && errno != ENOENT) {
        snprintf(err, sizeof err, "rotate log file %s: %s (lines are dropped until it can be "
                 "renamed)", lf.f_path, strerror(errno));
        warn_stderr(err);
    }
    if (open_live(err, sizeof err) < 0)
        warn_stderr(err);
}

static size_t count_lines(const char *p, size_t n)
{
    size_t c = 0;
    for (const char *e = p + n; (p = memchr(p, '\n', (size_t)(e - p))) != NULL; p++)
        c++;
    return c;
}

/* Writes whole lines; on a write error the rest of buf is counted lost. */
static void write_all(const char *buf, size_t n)
{
    while (n > 0) {
        ssize_t w = write(lf.f_fd, buf, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            lf.f_lost += count_lines(buf, n);
            return;
        }
        lf.f_size += (uint64_t)w;
        buf += w;
        n -= (size_t)w;
    }
}

/* Writes buf (whole lines) to the live file, rotating between lines so that
 * no file grows past f_cap. */
static void write_lines(const char *buf, size_t len)
{
    char err[PATH_MAX + 128];

    if (lf.f_fd < 0 && open_live(err, sizeof err) < 0) {
        lf.f_lost += count_lines(buf, len);
        return;
    }
    while (len > 0 && lf.f_fd >= 0) {
        uint64_t room = lf.f_cap > lf.f_size ? lf.f_cap - lf.f_size : 0;
        size_t n = len;
        if (n > room) {
            /* The longest prefix of whole lines that fits. */
            const char *nl = room ? memrchr(buf, '\n', (size_t)room) : NULL;
            n = nl ? (size_t)(nl - buf) + 1 : 0;
        }
        if (n == 0) {
            if (lf.f_size > 0) {
                rotate();
                if (lf.f_fd >= 0 && lf.f_size == 0)
                    continue;
                /* The rename failed (the live file is still full) or the
                 * new file did not open: drop and count the rest rather
                 * than pass the cap or spin; the next batch tries again. */
                break;
            }
            /* A line longer than a whole file: cannot happen with
             * LOG_MIN_TOTAL_BYTES, but never loop on it. */
            n = (size_t)((const char *)memchr(buf, '\n', len) - buf) + 1;
        }
        write_all(buf, n);
        buf += n;
        len -= n;
    }
    if (len > 0)
        lf.f_lost += count_lines(buf, len);
}

static void write_drop_notice(uint64_t dropped)
{
    char line[LINE_MAX_BYTES];
    size_t n;

    n = format_notice(line, LOG_WARN, "%llu log lines dropped (the log queue was full: the disk is "
                  "slower than the log)", (unsigned long long)dropped);
    write_lines(line, n);
}

static void do_reopen(void)
{
    char err[PATH_MAX + 128];
    char line[LINE_MAX_BYTES];
    size_t n;

    close_live();
    if (open_live(err, sizeof err) < 0) {
        warn_stderr(err);
        return;
    }
    n = format_notice(line, LOG_INFO, "reopened the log file %s", lf.f_path);
    write_lines(line, n);
}

static void *logger_main(void *arg)
{
    pthread_mutex_lock(&lf.q_lock);
    for (;;) {
        while (lf.q_len == 0 && !lf.q_reopen && !lf.q_stop) {
            lf.q_idle = true;
            pthread_cond_wait(&lf.q_wake, &lf.q_lock);
        }
        lf.q_idle = false;
        if (lf.q_len == 0 && !lf.q_reopen) {
            /* Stopping, and everything is written: later lines go to stderr
             * (enqueue reads this under the lock, so none is left behind). */
            atomic_store(&lf.on, false);
            break;
        }
        bool reopen = lf.q_reopen;
        char *batch = lf.q_front;
        size_t len = lf.q_len;
        uint64_t dropped = lf.q_dropped;
        lf.q_front = lf.q_back;
        lf.q_back = batch;
        lf.q_len = 0;
        lf.q_dropped = 0;
        lf.q_reopen = false;
        pthread_mutex_unlock(&lf.q_lock);

        /* Lines queued before the SIGHUP still belong to the old file. */
        write_lines(batch, len);
        if (reopen)
            do_reopen();
        dropped += lf.f_lost;
        lf.f_lost = 0;
        if (dropped)
            write_drop_notice(dropped);

        pthread_mutex_lock(&lf.q_lock);
    }
    pthread_mutex_unlock(&lf.q_lock);
    return NULL;
}

int log_open_file(const char *path, uint64_t max_total_bytes, char *err, size_t errlen)
{
    sigset_t all, old;
    int rc;

    if (strlen(path) >= sizeof lf.f_path - 16) {
        snprintf(err, errlen, "log file path too long: %s", path);
        return -1;
    }
    if (max_total_bytes < LOG_MIN_TOTAL_BYTES)
        max_total_bytes = LOG_MIN_TOTAL_BYTES;
    snprintf(lf.f_path, sizeof lf.f_path, "%s", path);
    lf.f_cap = max_total_bytes / (LOG_BACKUPS + 1);
    if (make_parents(path, err, errlen) < 0 || open_live(err, errlen) < 0)
        return -1;
    lf.q_front = malloc(QUEUE_BYTES);
    lf.q_back = malloc(QUEUE_BYTES);
    if (!lf.q_front || !lf.q_back) {
        snprintf(err, errlen, "out of memory for the log queue");
        goto fail;
    }
    lf.q_len = 0;
    lf.q_dropped = 0;
    lf.q_stop = lf.q_reopen = false;
    /* The logger thread takes no signals: they belong to the main loop. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    atomic_store(&lf.on, true);
    rc = pthread_create(&lf.thread, NULL, logger_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        atomic_store(&lf.on, false);
        snprintf(err, errlen, "cannot start the logger thread: %s", strerror(rc));
        goto fail;
    }
    return 0;
fail:
    free(lf.q_back);
    free(lf.q_front);
    lf.q_front = lf.q_back = NULL;
    close_live();
    return -1;
}

void log_reopen(void)
{
    pthread_mutex_lock(&lf.q_lock);
    if (atomic_load(&lf.on)) {
        lf.q_reopen = true;
        pthread_cond_signal(&lf.q_wake);
    }
    pthread_mutex_unlock(&lf.q_lock);
}

void log_close(void)
{
    if (!log_to_file())
        return;
    pthread_mutex_lock(&lf.q_lock);
    lf.q_stop = true;
    pthread_cond_signal(&lf.q_wake);
    pthread_mutex_unlock(&lf.q_lock);
    pthread_join(lf.thread, NULL);
    close_live();
    free(lf.q_back);
    free(lf.q_front);
    lf.q_front = lf.q_back = NULL;
}
