/* file.h — durable file writes and directory creation, the one place that
 * implements "never a half-written file": temp file, write loop, fsync,
 * rename, fsync of the directory, temp file unlinked on any failure. Used by
 * the routes file, certificates and keys. Blocking: never call it from a
 * worker's event loop. */
#ifndef CORE_FILE_H
#define CORE_FILE_H
#include <stddef.h>
#include <sys/types.h>

/* Replaces path with data[0..len) atomically, writing through tmp_path (in
 * the same directory; the caller chooses its name: unique per writer when
 * several processes may write path at once). The file gets mode (created
 * with it: never a moment with wider permissions). Returns 0, or -1 with
 * "create|write|fsync|close|rename PATH: cause" in err; the previous file is
 * then intact. A failed directory fsync after the rename is only logged. */
int file_write_atomic(const char *path, const char *tmp_path, const void *data, size_t len,
                      mode_t mode, char *err, size_t errlen);

/* mkdir -p dir: missing parents with parent_mode, dir itself with
 * leaf_mode. Existing directories are left as they are. 0, or -1 with err. */
int file_mkdirs(const char *dir, mode_t parent_mode, mode_t leaf_mode, char *err, size_t errlen);

#endif
