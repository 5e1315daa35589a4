/* file.c — atomic file replacement and mkdir -p. */
#include "file.h"
#include "mem.h"
#include <limits.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int write_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* fsync of the directory makes the rename itself durable. 0, or 1 with the
 * warning in err (path has been replaced already: not a failure). */
static int sync_dir_of(const char *path, char *err, size_t errlen)
{
    char *copy = xstrdup(path);
    const char *dir = dirname(copy);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc = 0;

    if (fd < 0 || fsync(fd) < 0) {
        snprintf(err, errlen, "fsync of directory %s: %s (%s was replaced; a power loss now may "
                 "bring back the previous version)", dir, strerror(errno), path);
        rc = 1;
    }
    if (fd >= 0)
        close(fd);
    free(copy);
    return rc;
}

int file_rename_durable(const char *tmp_path, const char *path, char *err, size_t errlen)
{
    int fd = open(tmp_path, O_RDONLY | O_CLOEXEC);

    /* fsync before rename: otherwise a crash can leave path naming an empty
     * file (ext4 delayed allocation). */
    if (fd < 0 || fsync(fd) < 0) {
        snprintf(err, errlen, "fsync %s: %s", tmp_path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    if (rename(tmp_path, path) < 0) {
        snprintf(err, errlen, "rename %s to %s: %s", tmp_path, path, strerror(errno));
        return -1;
    }
    return sync_dir_of(path, err, errlen);
}

int file_write_atomic(const char *path, const char *tmp_path, const void *data, size_t len,
                      mode_t mode, char *err, size_t errlen)
{
    char own_tmp[PATH_MAX];

    if (!tmp_path) {
        /* pid and thread id: two writers of one path (an old and a new
         * instance during a takeover) never share a temp file. */
        if (snprintf(own_tmp, sizeof own_tmp, "%s.tmp.%ld.%ld", path, (long)getpid(),
                     (long)gettid()) >= (int)sizeof own_tmp) {
            snprintf(err, errlen, "%s: path too long", path);
            return -1;
        }
        tmp_path = own_tmp;
    }
    int fd = open(tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);

    if (fd < 0) {
        snprintf(err, errlen, "create %s: %s", tmp_path, strerror(errno));
        return -1;
    }
    if (write_all(fd, data, len) < 0) {
        snprintf(err, errlen, "write %s: %s", tmp_path, strerror(errno));
        goto fail;
    }
    /* fsync before rename: otherwise a crash can leave path naming an empty
     * file (ext4 delayed allocation). */
    if (fsync(fd) < 0) {
        snprintf(err, errlen, "fsync %s: %s", tmp_path, strerror(errno));
        goto fail;
    }
    if (close(fd) < 0) {
        fd = -1;
        snprintf(err, errlen, "close %s: %s", tmp_path, strerror(errno));
        goto fail;
    }
    fd = -1;
    if (rename(tmp_path, path) < 0) {
        snprintf(err, errlen, "rename %s to %s: %s", tmp_path, path, strerror(errno));
        goto fail;
    }
    return sync_dir_of(path, err, errlen);
fail:
    if (fd >= 0)
        close(fd);
    unlink(tmp_path);
    return -1;
}

int file_mkdirs(const char *dir, mode_t parent_mode, mode_t leaf_mode, char *err, size_t errlen)
{
    char *buf = xstrdup(dir);
    int rc = -1;

    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char c = *p;
        *p = '\0';
        if (mkdir(buf, c == '\0' ? leaf_mode : parent_mode) < 0 && errno != EEXIST) {
            snprintf(err, errlen, "create directory %s: %s", buf, strerror(errno));
            goto out;
        }
        *p = c;
        if (c == '\0')
            break;
    }
    rc = 0;
out:
    free(buf);
    return rc;
}
