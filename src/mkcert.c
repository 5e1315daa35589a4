/* mkcert.c — runs the mkcert tool (found on PATH) to make a local-mode
 * certificate: posix_spawn without a shell, output captured through a pipe,
 * a 60 s bound, and the key made private afterwards. */
#include "mkcert.h"
#include "clock.h"
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MKCERT_TIMEOUT_MS 60000

extern char **environ;

static bool is_executable_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0;
}

int mkcert_find(char *out, size_t cap)
{
    const char *path = getenv("PATH");
    if (!path || !*path)
        path = "/usr/local/bin:/usr/bin:/bin";
    for (const char *p = path;; ) {
        const char *end = strchr(p, ':');
        size_t dlen = end ? (size_t)(end - p) : strlen(p);
        /* An empty PATH entry means the current directory (POSIX); we want
         * an absolute path, so resolve it. */
        char dir[4096];
        if (dlen == 0) {
            if (!getcwd(dir, sizeof dir))
                dir[0] = '\0';
        } else if (dlen < sizeof dir) {
            memcpy(dir, p, dlen);
            dir[dlen] = '\0';
        } else {
            dir[0] = '\0';
        }
        if (dir[0] == '/') {
            int n = snprintf(out, cap, "%s/mkcert", dir);
            if (n > 0 && (size_t)n < cap && is_executable_file(out))
                return 0;
        }
        if (!end)
            break;
        p = end + 1;
    }
    if (cap)
        out[0] = '\0';
    return -1;
}

/* Keeps the last non-empty line of everything read from fd in last[]. */
static void keep_last_line(char *tail, size_t *tail_len, size_t cap, const char *buf, size_t n,
                           char *last, size_t last_cap)
{
    for (size_t i = 0; i < n; i++) {
        char c = buf[i];
        if (c == '\n' || c == '\r') {
            if (*tail_len > 0) {
                size_t k = *tail_len < last_cap - 1 ? *tail_len : last_cap - 1;
                memcpy(last, tail, k);
                last[k] = '\0';
                *tail_len = 0;
            }
        } else if (*tail_len < cap) {
            tail[(*tail_len)++] = c;
        }
    }
}

/* Reads the child's output until EOF or the deadline; returns false on timeout. */
static bool drain_output(int fd, uint64_t deadline, char *last, size_t last_cap)
{
    char buf[1024], tail[4096];   /* a line as long as a path (mkcert -CAROOT) */
    size_t tail_len = 0;

    for (;;) {
        uint64_t now = clock_mono_ms();
        if (now >= deadline)
            return false;
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        int r = poll(&pfd, 1, (int)(deadline - now));
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0)
            return false;
        if (r < 0)
            break;   /* cannot happen with a valid fd; let waitpid decide */
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;   /* EOF: the child (and anything it spawned) closed its output */
        keep_last_line(tail, &tail_len, sizeof tail, buf, (size_t)n, last, last_cap);
    }
    if (tail_len > 0)   /* an unterminated last line */
        keep_last_line(tail, &tail_len, sizeof tail, "\n", 1, last, last_cap);
    return true;
}

/* Waits for pid until the deadline; kills it when the deadline passes.
 * Returns the wait status, or -1 on timeout (the child is reaped). */
static int wait_bounded(pid_t pid, uint64_t deadline)
{
    int status;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return status;
        if (r < 0 && errno != EINTR)
            return -1;
        if (clock_mono_ms() >= deadline)
            break;
        /* Output is already closed, so exit is imminent: a short sleep-poll
         * is simpler than a pidfd and costs nothing on this thread. */
        struct timespec ts = { 0, 10 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
    kill(pid, SIGKILL);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    return -1;
}

/* Runs mkcert with argv (no shell), its output through a pipe, bounded to
 * MKCERT_TIMEOUT_MS. what names the job in err ("mkcert DOMAIN"). The last
 * non-empty line of its output goes to last. Returns 0 when it exited 0,
 * else -1 with the exit status and that line in err. */
static int run_mkcert(const char *mkcert_path, char *const argv[], const char *what,
                      char *last, size_t last_cap, char *err, size_t errlen)
{
    int pipefd[2] = { -1, -1 };
    posix_spawn_file_actions_t fa;
    bool fa_ok = false;
    pid_t pid = -1;
    int ret = -1;

    last[0] = '\0';
    /* O_CLOEXEC: another thread spawning at the same moment must not inherit
     * our pipe, or EOF would never come. */
    if (pipe2(pipefd, O_CLOEXEC) < 0) {
        snprintf(err, errlen, "%s: pipe: %s", what, strerror(errno));
        goto out;
    }
    if (posix_spawn_file_actions_init(&fa) != 0) {
        snprintf(err, errlen, "%s: posix_spawn_file_actions_init failed", what);
        goto out;
    }
    fa_ok = true;
    /* stdin from /dev/null (it never prompts), stdout and stderr into the
     * pipe (mkcert logs to stderr; its last line is the cause of a failure),
     * and every other fd closed so the child cannot hold our listening
     * sockets open across a takeover. */
    if (posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0) != 0 ||
        posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1) != 0 ||
        posix_spawn_file_actions_adddup2(&fa, pipefd[1], 2) != 0 ||
        posix_spawn_file_actions_addclosefrom_np(&fa, 3) != 0) {
        snprintf(err, errlen, "%s: posix_spawn_file_actions failed", what);
        goto out;
    }
    int e = posix_spawn(&pid, mkcert_path, &fa, NULL, argv, environ);
    if (e != 0) {
        pid = -1;
        snprintf(err, errlen, "%s: cannot run %s: %s%s", what, mkcert_path, strerror(e),
                 e == ENOENT ? " (install it: apt-get install mkcert)" : "");
        goto out;
    }
    close(pipefd[1]);
    pipefd[1] = -1;

    uint64_t deadline = clock_mono_ms() + MKCERT_TIMEOUT_MS;
    bool drained = drain_output(pipefd[0], deadline, last, last_cap);
    int status = wait_bounded(pid, drained ? deadline : 0);
    pid = -1;
    if (status < 0) {
        snprintf(err, errlen, "%s: no result after %d s, killed", what, MKCERT_TIMEOUT_MS / 1000);
        goto out;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        if (WIFSIGNALED(status))
            snprintf(err, errlen, "%s: killed by signal %d: %s", what, WTERMSIG(status),
                     last[0] ? last : "(no output)");
        else
            snprintf(err, errlen, "%s: exit status %d: %s", what, WEXITSTATUS(status),
                     last[0] ? last : "(no output)");
        goto out;
    }
    ret = 0;
out:
    if (pid > 0)
        wait_bounded(pid, 0);
    if (fa_ok)
        posix_spawn_file_actions_destroy(&fa);
    if (pipefd[0] >= 0)
        close(pipefd[0]);
    if (pipefd[1] >= 0)
        close(pipefd[1]);
    return ret;
}

int mkcert_make(const char *mkcert_path, const char *domain, const char *cert_path,
                const char *key_path, char *err, size_t errlen)
{
    char last[256], what[300];

    snprintf(what, sizeof what, "mkcert %s", domain);
    /* -ecdsa: a P-256 key, as release mode's certificates: handshakes cost a
     * fraction of RSA-2048's, and every current browser accepts it. */
    char *argv[] = { "mkcert", "-ecdsa", "-cert-file", (char *)cert_path, "-key-file",
                     (char *)key_path, (char *)domain, NULL };
    if (run_mkcert(mkcert_path, argv, what, last, sizeof last, err, errlen) < 0)
        return -1;
    if (access(cert_path, F_OK) != 0 || access(key_path, F_OK) != 0) {
        snprintf(err, errlen, "mkcert %s: exited 0 but %s or %s is missing (%s)", domain,
                 cert_path, key_path, last[0] ? last : "no output");
        return -1;
    }
    /* mkcert already writes the key 0600; make sure, whatever its version. */
    if (chmod(key_path, 0600) < 0) {
        snprintf(err, errlen, "chmod 0600 %s: %s", key_path, strerror(errno));
        return -1;
    }
    return 0;
}

/* Whether CAROOT holds mkcert's CA (the certificate and its key). */
static bool ca_present(const char *caroot)
{
    char crt[4200], key[4200];
    snprintf(crt, sizeof crt, "%s/rootCA.pem", caroot);
    snprintf(key, sizeof key, "%s/rootCA-key.pem", caroot);
    return access(crt, R_OK) == 0 && access(key, R_OK) == 0;
}

int mkcert_ensure_ca(const char *mkcert_path, char *caroot, size_t cap, char *err, size_t errlen)
{
    char last[4096], tmpl[300], crt[320], key[320];
    const char *tmpdir = getenv("TMPDIR");
    char *argv_root[] = { "mkcert", "-CAROOT", NULL };

    if (run_mkcert(mkcert_path, argv_root, "mkcert -CAROOT", last, sizeof last, err, errlen) < 0)
        return -1;
    if (last[0] != '/' || strlen(last) >= cap) {
        snprintf(err, errlen, "mkcert -CAROOT: no absolute path in its answer (%s)", last);
        return -1;
    }
    snprintf(caroot, cap, "%s", last);
    if (ca_present(caroot))
        return 0;

    /* mkcert has no command that only creates its CA (-install also puts it
     * into the trust stores, which is the user's decision): making any
     * certificate creates it. A throwaway one, in a private directory. */
    if (!tmpdir || tmpdir[0] != '/' || strlen(tmpdir) > 256)
        tmpdir = "/tmp";
    snprintf(tmpl, sizeof tmpl, "%s/core_server-mkcert-XXXXXX", tmpdir);
    if (!mkdtemp(tmpl)) {
        snprintf(err, errlen, "creating mkcert's CA: mkdtemp %s: %s", tmpl, strerror(errno));
        return -1;
    }
    snprintf(crt, sizeof crt, "%s/c.pem", tmpl);
    snprintf(key, sizeof key, "%s/k.pem", tmpl);
    char *argv_make[] = { "mkcert", "-ecdsa", "-cert-file", crt, "-key-file", key,
                          "core-server-ca-check.invalid", NULL };
    int rc = run_mkcert(mkcert_path, argv_make, "creating mkcert's CA", last, sizeof last,
                        err, errlen);
    unlink(crt);
    unlink(key);
    rmdir(tmpl);
    if (rc < 0)
        return -1;
    if (!ca_present(caroot)) {
        snprintf(err, errlen, "creating mkcert's CA: mkcert exited 0 but %s/rootCA.pem or "
                 "rootCA-key.pem is missing (%s)", caroot, last[0] ? last : "no output");
        return -1;
    }
    return 1;
}
