/* test_log.c — the file destination: rotation keeps whole lines and stays
 * under the cap, only the oldest lines are deleted, reopen after a rename,
 * and a full queue drops lines without blocking and says how many. */
#include "check.h"
#include "log.h"
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CAP 100000          /* the smallest cap: 20000 bytes per file */
#define PER_FILE (CAP / (LOG_BACKUPS + 1))

static char dir[] = "/tmp/core_test_log.XXXXXX";

struct slurp {
    char *data;
    size_t len;
};

static struct slurp slurp(const char *path)
{
    struct slurp s = { NULL, 0 };
    FILE *f = fopen(path, "rb");
    if (!f)
        return s;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    s.data = malloc((size_t)n + 1);
    s.len = fread(s.data, 1, (size_t)n, f);
    s.data[s.len] = '\0';
    fclose(f);
    return s;
}

/* Reads PATH.4 .. PATH.1, PATH (oldest first) and appends each "seq=N"
 * found to seqs; checks every file's size and that it ends with a newline. */
static size_t collect(const char *path, long *seqs, size_t max, size_t *total, int *files)
{
    size_t n = 0;
    *total = 0;
    *files = 0;
    for (int i = LOG_BACKUPS; i >= 0; i--) {
        char p[512];
        if (i)
            snprintf(p, sizeof p, "%s.%d", path, i);
        else
            snprintf(p, sizeof p, "%s", path);
        struct slurp s = slurp(p);
        if (!s.data)
            continue;
        (*files)++;
        *total += s.len;
        CHECK(s.len <= PER_FILE);
        CHECK(s.len == 0 || s.data[s.len - 1] == '\n');
        for (char *line = s.data; *line; ) {
            char *nl = strchr(line, '\n');
            CHECK(nl != NULL);
            if (!nl)
                break;
            *nl = '\0';
            CHECK(strlen(line) > 25 && line[4] == '-' && line[23] == 'Z');
            char *q = strstr(line, "seq=");
            if (q && n < max)
                seqs[n++] = strtol(q + 4, NULL, 10);
            line = nl + 1;
        }
        free(s.data);
    }
    return n;
}

static void test_rotation_keeps_every_line_under_the_cap(void)
{
    char path[256], err[256];
    static long seqs[10000];
    size_t total;
    int files;

    snprintf(path, sizeof path, "%s/a/logs/core.log", dir);   /* parents are created */
    CHECK(log_open_file(path, CAP, err, sizeof err) == 0);
    /* ~75 KB of lines: four rotations at most, nothing deleted. */
    for (int i = 0; i < 700; i++)
        log_info("access 127.0.0.1 example.test \"GET /marker/%d\" 200 12 0ms seq=%d", i, i);
    log_close();
    size_t n = collect(path, seqs, 10000, &total, &files);
    CHECK(files >= 4);
    CHECK(total <= CAP);
    CHECK(n == 700);
    for (size_t i = 0; i < n; i++)
        if (seqs[i] != (long)i) {
            CHECK(seqs[i] == (long)i);
            break;
        }
}

static void test_rotation_deletes_only_the_oldest_lines(void)
{
    char path[256], err[256];
    static long seqs[20000];
    size_t total;
    int files;
    const int lines = 5000;   /* ~430 KB through a 100 KB cap */

    snprintf(path, sizeof path, "%s/b/core.log", dir);
    CHECK(log_open_file(path, CAP, err, sizeof err) == 0);
    for (int i = 0; i < lines; i++)
        log_info("access 127.0.0.1 example.test \"GET /marker/%d\" 200 12 0ms seq=%d", i, i);
    log_close();
    size_t n = collect(path, seqs, 20000, &total, &files);
    CHECK(files == LOG_BACKUPS + 1);
    CHECK(total <= CAP);
    /* Four full files of the newest lines at least: a contiguous suffix. */
    CHECK(total > CAP * 4 / 5 - 4096);
    CHECK(n > 0 && seqs[n - 1] == lines - 1);
    for (size_t i = 1; i < n; i++)
        if (seqs[i] != seqs[i - 1] + 1) {
            CHECK(seqs[i] == seqs[i - 1] + 1);
            break;
        }
}

static void test_reopen_after_an_external_rename(void)
{
    char path[256], moved[300], err[256];

    snprintf(path, sizeof path, "%s/c/core.log", dir);
    snprintf(moved, sizeof moved, "%s/c/moved.log", dir);
    CHECK(log_open_file(path, CAP, err, sizeof err) == 0);
    for (int i = 0; i < 10; i++)
        log_info("before seq=%d", i);
    CHECK(rename(path, moved) == 0);
    log_reopen();
    usleep(100000);   /* the logger reopens between batches */
    for (int i = 10; i < 20; i++)
        log_info("after seq=%d", i);
    log_close();
    struct slurp old = slurp(moved), cur = slurp(path);
    CHECK(old.data && strstr(old.data, "before seq=9\n"));
    CHECK(cur.data && strstr(cur.data, "info reopened the log file"));
    CHECK(cur.data && strstr(cur.data, "after seq=10\n") && strstr(cur.data, "after seq=19\n"));
    CHECK(cur.data && !strstr(cur.data, "before"));
    free(old.data);
    free(cur.data);
}

struct reader {
    int fd;
    struct slurp got;
};

static void *read_fifo(void *arg)
{
    struct reader *r = arg;
    size_t cap = 1 << 20;
    r->got.data = malloc(cap);
    for (;;) {
        if (r->got.len + 65536 > cap)
            r->got.data = realloc(r->got.data, cap *= 2);
        ssize_t n = read(r->fd, r->got.data + r->got.len, 65536);
        if (n <= 0)
            break;
        r->got.len += (size_t)n;
    }
    r->got.data[r->got.len] = '\0';
    return NULL;
}

/* A FIFO nobody reads is a disk that does not keep up: log_msg must return
 * at once, count what it drops, and the count must add up. */
static void test_full_queue_drops_and_counts(void)
{
    char path[256], err[256];
    const int lines = 60000;   /* ~6 MB: more than the queue and the pipe hold */
    struct reader r = { -1, { NULL, 0 } };
    pthread_t t;

    snprintf(path, sizeof path, "%s/fifo", dir);
    CHECK(mkfifo(path, 0600) == 0);
    r.fd = open(path, O_RDONLY | O_NONBLOCK);   /* so the logger's open does not wait */
    CHECK(r.fd >= 0);
    CHECK(log_open_file(path, 2000000000u, err, sizeof err) == 0);
    fcntl(r.fd, F_SETFL, 0);
    for (int i = 0; i < lines; i++)
        log_info("access 127.0.0.1 example.test \"GET /a/rather/long/path/to/fill/the/queue"
                 "/quickly/%d\" 200 12 0ms seq=%d", i, i);
    pthread_create(&t, NULL, read_fifo, &r);
    log_close();   /* drains the queue into the FIFO, then closes: EOF */
    pthread_join(t, NULL);
    close(r.fd);

    long seen = 0, dropped = 0, last = -1;
    bool ordered = true;
    for (char *line = r.got.data; line && *line; ) {
        char *nl = strchr(line, '\n');
        CHECK(nl != NULL);
        if (!nl)
            break;
        *nl = '\0';
        char *q = strstr(line, "seq="), *d = strstr(line, " log lines dropped");
        if (q) {
            long s = strtol(q + 4, NULL, 10);
            ordered &= s > last;
            last = s;
            seen++;
        } else if (d) {
            CHECK(strstr(line, "Z warn "));
            dropped += strtol(strstr(line, "warn ") + 5, NULL, 10);
        }
        line = nl + 1;
    }
    CHECK(dropped > 0);
    CHECK(seen + dropped == lines);
    CHECK(ordered);
    free(r.got.data);
}

int main(void)
{
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_rotation_keeps_every_line_under_the_cap();
    test_rotation_deletes_only_the_oldest_lines();
    test_reopen_after_an_external_rename();
    test_full_queue_drops_and_counts();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return check_report("test_log");
}
