/* instance.c — the fallback takeovers (command port, signal via the pid
 * file), the pid file, detaching, and signal handling. */
#include "instance.h"
#include "cli.h"
#include "core_client.h"
#include "file.h"
#include "log.h"
#include "loop.h"
#include "net.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TAKEOVER_WAIT_MS 15000   /* the old instance frees its port before draining */
#define TAKEOVER_POLL_MS 20

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* ---- the pid file, and telling that a pid is the core_server it names ---- */

static void pidfile_path(const char *config_dir, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s", config_dir, INSTANCE_PIDFILE_NAME);
}

/* Field 22 of /proc/PID/stat (start time, clock ticks since boot) and the
 * state letter: with the pid, they name one process, never a later one that
 * reuses the pid. 0, or -1 when there is no such process. */
static int proc_stat(long pid, unsigned long long *start, char *state)
{
    char path[64], buf[1024];
    ssize_t n;
    int fd;

    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');   /* the command name may hold spaces and ')' */
    if (!p || p[1] != ' ')
        return -1;
    p += 2;
    *state = *p;
    for (int field = 3; field < 22 && *p; p++)
        if (*p == ' ')
            field++;
    *start = strtoull(p, NULL, 10);
    return 0;
}

int instance_write_pidfile(const char *config_dir, char *err, size_t errlen)
{
    char path[PATH_MAX], tmp[PATH_MAX + 32], text[64];
    unsigned long long start = 0;
    char state;

    if (file_mkdirs(config_dir, 0755, 0755, err, errlen) < 0)
        return -1;
    proc_stat((long)getpid(), &start, &state);
    pidfile_path(config_dir, path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid());
    int n = snprintf(text, sizeof text, "%ld %llu\n", (long)getpid(), start);
    int rc = file_write_atomic(path, tmp, text, (size_t)n, 0644, err, errlen);
    if (rc > 0) {   /* written; only the rename's durability is in doubt */
        log_warn("%s", err);
        rc = 0;
    }
    return rc;
}

static int read_pidfile(const char *config_dir, long *pid, unsigned long long *start)
{
    char path[PATH_MAX];
    FILE *f;
    int r;

    pidfile_path(config_dir, path, sizeof path);
    f = fopen(path, "re");
    if (!f)
        return -1;
    r = fscanf(f, "%ld %llu", pid, start) == 2 && *pid > 0 ? 0 : -1;
    fclose(f);
    return r;
}

void instance_remove_pidfile(const char *config_dir)
{
    char path[PATH_MAX];
    unsigned long long start;
    long pid;

    /* After a takeover the file names the new instance: leave it. */
    if (read_pidfile(config_dir, &pid, &start) == 0 && pid == (long)getpid()) {
        pidfile_path(config_dir, path, sizeof path);
        unlink(path);
    }
}

/* Adds to inodes the sockets of /proc/net/KIND bound to port (TCP: only
 * listening ones); returns the new count. */
static int port_inodes(const char *kind, int port, unsigned long *inodes, int n, int cap)
{
    char path[64], line[512];
    FILE *f;

    snprintf(path, sizeof path, "/proc/net/%s", kind);
    f = fopen(path, "re");
    if (!f)
        return n;
    while (n < cap && fgets(line, sizeof line, f)) {
        char local[128];
        unsigned st;
        unsigned long ino;
        /* sl local rem st tx:rx tr:when retrnsmt uid timeout inode */
        if (sscanf(line, "%*s %127s %*s %x %*s %*s %*s %*s %*s %lu", local, &st, &ino) != 3)
            continue;
        char *colon = strrchr(local, ':');
        if (!colon || strtol(colon + 1, NULL, 16) != port)
            continue;
        if (kind[0] == 't' && st != 0x0A)   /* TCP_LISTEN */
            continue;
        inodes[n++] = ino;
    }
    fclose(f);
    return n;
}

/* True when pid holds a socket bound to one of cfg's ports (the command port,
 * or a listening http/https port). */
static bool pid_holds_ports(long pid, const struct config *cfg)
{
    unsigned long inodes[64];
    int n = 0;
    char dirpath[64], link[128], target[64];
    struct dirent *de;
    DIR *d;
    bool found = false;

    n = port_inodes("udp", cfg->udp_port, inodes, n, 64);
    n = port_inodes("udp6", cfg->udp_port, inodes, n, 64);
    n = port_inodes("tcp", cfg->http_port, inodes, n, 64);
    n = port_inodes("tcp6", cfg->http_port, inodes, n, 64);
    n = port_inodes("tcp", cfg->https_port, inodes, n, 64);
    n = port_inodes("tcp6", cfg->https_port, inodes, n, 64);
    snprintf(dirpath, sizeof dirpath, "/proc/%ld/fd", pid);
    d = opendir(dirpath);
    if (!d)
        return false;
    while (!found && (de = readdir(d))) {
        snprintf(link, sizeof link, "%s/%.16s", dirpath, de->d_name);
        ssize_t k = readlink(link, target, sizeof target - 1);
        unsigned long ino;
        if (k <= 0)
            continue;
        target[k] = '\0';
        if (sscanf(target, "socket:[%lu]", &ino) != 1)
            continue;
        for (int i = 0; i < n && !found; i++)
            found = inodes[i] == ino;
    }
    closedir(d);
    return found;
}

/* The binary's name, without directory or " (deleted)" (it was rebuilt). */
static bool exe_name(const char *proc_exe, char *out, size_t cap)
{
    char buf[PATH_MAX];
    ssize_t k = readlink(proc_exe, buf, sizeof buf - 1);

    if (k <= 0)
        return false;
    buf[k] = '\0';
    char *del = strstr(buf, " (deleted)");
    if (del)
        *del = '\0';
    char *base = strrchr(buf, '/');
    snprintf(out, cap, "%s", base ? base + 1 : buf);
    return true;
}

static bool runs_our_binary(long pid)
{
    char path[64], theirs[PATH_MAX], ours[PATH_MAX];

    snprintf(path, sizeof path, "/proc/%ld/exe", pid);
    return exe_name(path, theirs, sizeof theirs) && exe_name("/proc/self/exe", ours, sizeof ours) &&
           strcmp(theirs, ours) == 0;
}

/* pid is gone (or a zombie: nothing left but its exit status) or is no
 * longer the process that wrote the pid file. */
static bool is_gone(long pid, unsigned long long start)
{
    unsigned long long now_start;
    char state;

    return proc_stat(pid, &now_start, &state) < 0 || now_start != start || state == 'Z' ||
           state == 'X';
}

/* Up to ms for pid to be gone or to hold none of cfg's ports. */
static bool wait_let_go(long pid, unsigned long long start, const struct config *cfg, int ms)
{
    for (int waited = 0; waited < ms; waited += TAKEOVER_POLL_MS) {
        if (is_gone(pid, start) || !pid_holds_ports(pid, cfg))
            return true;
        sleep_ms(TAKEOVER_POLL_MS);
    }
    return false;
}

int instance_end_unresponsive(const struct config *cfg, char *err, size_t errlen)
{
    unsigned long long start;
    long pid;

    if (read_pidfile(cfg->config_dir, &pid, &start) < 0) {
        snprintf(err, errlen, "no pid file %s/%s names it", cfg->config_dir, INSTANCE_PIDFILE_NAME);
        return -1;
    }
    if (pid == (long)getpid() || is_gone(pid, start)) {
        snprintf(err, errlen, "the pid file %s/%s names pid %ld, which is no longer running",
                 cfg->config_dir, INSTANCE_PIDFILE_NAME, pid);
        return -1;
    }
    if (!pid_holds_ports(pid, cfg) && !runs_our_binary(pid)) {
        snprintf(err, errlen, "the pid file %s/%s names pid %ld, which is not a core_server "
                 "holding these ports (not signalled)", cfg->config_dir, INSTANCE_PIDFILE_NAME, pid);
        return -1;
    }
    log_warn("the running core_server (pid %ld) does not answer: sending it SIGTERM", pid);
    /* A stopped process acts on SIGTERM only once continued; it then drains
     * as on any SIGTERM and lets go of its ports at once. */
    kill((pid_t)pid, SIGTERM);
    kill((pid_t)pid, SIGCONT);
    if (wait_let_go(pid, start, cfg, INSTANCE_TERM_WAIT_MS))
        return 0;
    log_warn("core_server pid %ld still holds its ports %d ms after SIGTERM: sending SIGKILL", pid,
             INSTANCE_TERM_WAIT_MS);
    kill((pid_t)pid, SIGKILL);
    if (wait_let_go(pid, start, cfg, INSTANCE_KILL_WAIT_MS))
        return 0;
    snprintf(err, errlen, "core_server pid %ld still holds its ports %d ms after SIGKILL", pid,
             INSTANCE_KILL_WAIT_MS);
    return -1;
}

/* ---- the command port ---- */

int instance_claim_command_port(const struct config *cfg, char *err, size_t errlen)
{
    char reply[256], why[512];
    int port = cfg->udp_port;
    int fd = net_bind_udp(port, err, errlen);

    if (fd != -2)
        return fd;
    /* Someone holds it: if it is a core_server, it answers "shutdown". */
    enum core_client_result r = core_client_command("shutdown", port, 2000, reply, sizeof reply);
    if (r == CORE_CLIENT_OK) {
        log_info("asked the running core_server on UDP port %d to shut down; waiting for its port", port);
    } else if (r == CORE_CLIENT_NO_ANSWER && instance_end_unresponsive(cfg, why, sizeof why) == 0) {
        log_info("the core_server that did not answer on UDP port %d is ending; waiting for its port", port);
    } else {
        if (r != CORE_CLIENT_NO_ANSWER)
            snprintf(why, sizeof why, "it answered \"%.64s\"", reply);
        snprintf(err, errlen,
                 "UDP port %d is in use by a program that did not answer \"shutdown\" as a "
                 "core_server would (%s; stop it, or use --udp-port)", port, why);
        return -1;
    }
    for (int waited = 0; waited < TAKEOVER_WAIT_MS; waited += TAKEOVER_POLL_MS) {
        fd = net_bind_udp(port, err, errlen);
        if (fd != -2)
            return fd;
        sleep_ms(TAKEOVER_POLL_MS);
    }
    snprintf(err, errlen,
             "the running core_server acknowledged shutdown but UDP port %d is still in use after "
             "%d s (is it stuck? find it with: ss -lunp | grep %d)", port, TAKEOVER_WAIT_MS / 1000, port);
    return -1;
}

void instance_block_signals(void)
{
    sigset_t set;

    signal(SIGPIPE, SIG_IGN);   /* a closed peer is an EPIPE, not a crash */
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
}

struct sigwatch {
    struct loop_fd lfd;
    void (*on_stop)(void *);
    void *arg;
};

static struct sigwatch sigwatch;   /* main thread only */

static void on_signal(struct loop *l, struct loop_fd *h, uint32_t ev)
{
    struct signalfd_siginfo si;

    while (read(h->fd, &si, sizeof si) == (ssize_t)sizeof si) {
        /* SIGHUP as OpenBSD httpd, SIGUSR1 as nginx: either reopens the log. */
        if (si.ssi_signo == SIGHUP || si.ssi_signo == SIGUSR1) {
            const char *name = si.ssi_signo == SIGHUP ? "SIGHUP" : "SIGUSR1";
            if (log_to_file()) {
                log_info("%s: reopening the log file (routes change over UDP)", name);
                log_reopen();
            } else {
                log_info("%s: logging to stderr, nothing to reopen (routes change over UDP)", name);
            }
            continue;
        }
        log_info("received %s: shutting down gracefully", strsignal((int)si.ssi_signo));
        sigwatch.on_stop(sigwatch.arg);
    }
}

int instance_watch_signals(struct loop *l, void (*on_stop)(void *), void *arg)
{
    sigset_t set;

    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1);
    sigwatch.lfd.fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sigwatch.lfd.fd < 0)
        return -1;
    sigwatch.lfd.cb = on_signal;
    sigwatch.on_stop = on_stop;
    sigwatch.arg = arg;
    return loop_add_fd_level(l, &sigwatch.lfd, false);
}

/* ---- detaching ---- */

static int ready_fd = -1;   /* child: write end of the parent's pipe, until ready */

/* The parent, after a failure: waits (bounded) for the child to exit, so that
 * its ports are free when we return. *status is -1 if it has not exited. */
static void reap_failed(pid_t child, int *status)
{
    for (int waited = 0; waited < TAKEOVER_WAIT_MS; waited += TAKEOVER_POLL_MS) {
        if (waitpid(child, status, WNOHANG) == child)
            return;
        sleep_ms(TAKEOVER_POLL_MS);
    }
    *status = -1;
}

/* The parent: waits for "ok\n" or an error line, then exits. */
static void __attribute__((noreturn)) wait_for_daemon(int rfd, pid_t child)
{
    char msg[1024];
    size_t n = 0;
    ssize_t r;
    int status;

    while (n < sizeof msg - 1 && (r = read(rfd, msg + n, sizeof msg - 1 - n)) != 0) {
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            break;
        n += (size_t)r;
        if (msg[n - 1] == '\n')
            break;   /* one line per report */
    }
    msg[n] = '\0';
    if (strcmp(msg, "ok\n") != 0)
        reap_failed(child, &status);
    if (!strcmp(msg, "ok\n")) {
        printf("core_server: running in the background as pid %ld\n", (long)child);
        fflush(stdout);
        _exit(0);
    }
    if (n > 0) {
        fprintf(stderr, "core_server: %s%s", msg, msg[n - 1] == '\n' ? "" : "\n");
    } else if (status != -1 && WIFSIGNALED(status)) {
        fprintf(stderr, "core_server: the server died during startup (%s)\n",
                strsignal(WTERMSIG(status)));
    } else {
        fprintf(stderr, "core_server: the server exited during startup without a reason "
                "(see its log file)\n");
    }
    _exit(1);
}

int instance_daemonize_begin(char *err, size_t errlen)
{
    int fds[2];
    pid_t pid;

    /* Cloexec: the mkcert children must not hold the parent's pipe open. */
    if (pipe2(fds, O_CLOEXEC) < 0) {
        snprintf(err, errlen, "detach: pipe: %s", strerror(errno));
        return -1;
    }
    fflush(NULL);   /* nothing buffered may be written twice */
    pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "detach: fork: %s (or run with --foreground)", strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid > 0) {
        close(fds[1]);
        wait_for_daemon(fds[0], pid);
    }
    close(fds[0]);
    ready_fd = fds[1];
    /* A new session: no controlling terminal, so the shell's hangup and
     * Ctrl-C never reach the daemon. One fork is enough: we never open a
     * terminal, so we cannot acquire one as session leader. */
    if (setsid() < 0) {
        snprintf(err, errlen, "detach: setsid: %s", strerror(errno));
        return -1;
    }
    return 0;
}

int instance_daemonize_stdio(char *err, size_t errlen)
{
    int fd;

    if (ready_fd < 0)
        return 0;
    fd = open("/dev/null", O_RDWR);
    if (fd < 0) {
        snprintf(err, errlen, "detach: open /dev/null: %s", strerror(errno));
        return -1;
    }
    for (int i = 0; i < 3; i++)
        if (fd != i)
            dup2(fd, i);
    if (fd > 2)
        close(fd);
    return 0;
}

static void report_to_parent(const char *line)
{
    size_t n = strlen(line);

    if (ready_fd < 0)
        return;
    while (write(ready_fd, line, n) < 0 && errno == EINTR)
        ;
    close(ready_fd);
    ready_fd = -1;
}

void instance_daemonize_ready(void)
{
    report_to_parent("ok\n");
}

bool instance_daemonize_fail(const char *msg)
{
    char line[1024];

    if (ready_fd < 0)
        return false;
    snprintf(line, sizeof line, "%s\n", msg);
    report_to_parent(line);
    return true;
}
