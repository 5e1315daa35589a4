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
 * several processes may write path at once). NULL tmp_path means
 * "PATH.tmp.PID.TID", unique per thread of every process. The file gets
 * mode (created with it: never a moment with wider permissions).
 * Returns 0; or 1 when path was replaced but the directory fsync that makes
 * the rename durable failed, with "fsync of directory DIR: cause (PATH was
 * replaced; ...)" in err for the caller to log as a warning; or -1 with
 * "create|write|fsync|close|rename PATH: cause" in err, the previous file
 * then intact and the temporary file unlinked. */
int file_write_atomic(const char *path, const char *tmp_path, const void *data, size_t len,
                      mode_t mode, char *err, size_t errlen);

/* The second half of file_write_atomic, for a temporary file that another
 * program wrote (mkcert): fsyncs tmp_path, renames it over path and fsyncs
 * the directory. Same returns as file_write_atomic; on -1 tmp_path is left
 * for the caller to unlink. */
int file_rename_durable(const char *tmp_path, const char *path, char *err, size_t errlen);

/* mkdir -p dir: missing parents with parent_mode, dir itself with
 * leaf_mode. Existing directories are left as they are. 0, or -1 with err. */
int file_mkdirs(const char *dir, mode_t parent_mode, mode_t leaf_mode, char *err, size_t errlen);

#endif
