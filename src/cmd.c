/* cmd.c — the UDP command channel: the command parser, and the server on the
 * main thread's loop that checks the source, applies a batch of commands to a
 * clone of the route table, saves it once, publishes it and replies.
 *
 * Batch semantics (the server's ordering guarantee): commands are handled in
 * arrival order, as if one by one. Consecutive mutating commands (add,
 * remove) form a segment that is applied to one clone and saved once; a
 * list, status or shutdown first commits the open segment (save + publish),
 * so it sees exactly the state its position implies. Replies go out in
 * arrival order. If a segment's save fails, every mutating command in it is
 * answered with the save error and the clone is discarded: memory and file
 * never disagree.
 *
 * Route misses racing a command (cmd_sync_pending, any worker thread): only
 * the command thread ever reads the socket; a worker that is about to refuse
 * a name peeks at the socket and, when a datagram waits there or a batch is
 * being applied, waits for the command thread's next batch to end. See the
 * section "route misses" below for why the worker does not read itself. */
#include "cmd.h"
#include "clock.h"
#include "certs.h"
#include "log.h"
#include "loop.h"
#include "mem.h"
#include "qsbr.h"
#include "routes.h"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- parsing ---- */

#define VERB_LIST "add, remove, list, shutdown or status"
#define MAX_FIELDS 4   /* one more than any verb takes: enough to count "too many" */
#define SHOW_MAX 64    /* longest piece of a bad datagram echoed in an error */

/* The grammar, one row per verb. */
static const struct verb_spec {
    const char *name;
    enum cmd_verb verb;
    int nargs;
    const char *usage;
} verb_specs[] = {
    { "add",      CMD_ADD,      2, "add DOMAIN PORT" },
    { "remove",   CMD_REMOVE,   1, "remove DOMAIN" },
    { "list",     CMD_LIST,     0, "list" },
    { "shutdown", CMD_SHUTDOWN, 0, "shutdown" },
    { "status",   CMD_STATUS,   1, "status DOMAIN" },
};

struct field {
    const char *base;
    size_t len;
};

/* Prints at most SHOW_MAX bytes of a field, marking the cut. */
#define SHOW(f) (int)((f).len > SHOW_MAX ? SHOW_MAX : (f).len), (f).base, ((f).len > SHOW_MAX ? "..." : "")

static const struct verb_spec *find_verb(struct field f)
{
    for (size_t i = 0; i < sizeof verb_specs / sizeof verb_specs[0]; i++)
        if (strlen(verb_specs[i].name) == f.len && memcmp(verb_specs[i].name, f.base, f.len) == 0)
            return &verb_specs[i];
    return NULL;
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* Splits msg on runs of spaces and tabs; returns the number of fields (the
 * first MAX_FIELDS are stored). */
static int split_fields(const char *p, const char *end, struct field *f)
{
    int n = 0;

    for (;;) {
        while (p < end && is_blank(*p))
            p++;
        if (p == end)
            return n;
        const char *start = p;
        while (p < end && !is_blank(*p))
            p++;
        if (n < MAX_FIELDS)
            f[n] = (struct field){ start, (size_t)(p - start) };
        n++;
    }
}

static int parse_port(struct field f, uint16_t *port, char *err, size_t errlen)
{
    uint32_t v = 0;

    for (size_t i = 0; i < f.len; i++) {
        if (f.base[i] < '0' || f.base[i] > '9') {
            snprintf(err, errlen, "port must be a decimal number 1..65535, got \"%.*s%s\"", SHOW(f));
            return -1;
        }
        if (v <= 65535)
            v = v * 10 + (uint32_t)(f.base[i] - '0');
    }
    if (v < 1 || v > 65535) {
        snprintf(err, errlen, "port must be 1..65535, got %.*s%s", SHOW(f));
        return -1;
    }
    *port = (uint16_t)v;
    return 0;
}

static int parse_domain(struct field f, struct cmd_command *out, char *err, size_t errlen)
{
    const char *why;
    int n = domain_canonicalize(f.base, f.len, out->domain, sizeof out->domain, &why);

    if (n < 0) {
        snprintf(err, errlen, "invalid domain \"%.*s%s\": %s; use a host name such as example.com",
                 SHOW(f), why);
        return -1;
    }
    out->domain_len = (size_t)n;
    return 0;
}

int cmd_parse(const char *msg, size_t len, struct cmd_command *out, char *err, size_t errlen)
{
    struct field f[MAX_FIELDS];
    const struct verb_spec *spec;
    int n;

    memset(out, 0, sizeof *out);
    /* One trailing "\n" or "\r\n" is tolerated: echo and netcat add them. */
    if (len > 0 && msg[len - 1] == '\n')
        len--;
    if (len > 0 && msg[len - 1] == '\r')
        len--;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)msg[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f) {
            snprintf(err, errlen, "control character 0x%02x at byte %zu; send one command per "
                     "datagram as one line of text, e.g. \"add example.com 5665\"", c, i);
            return -1;
        }
    }
    n = split_fields(msg, msg + len, f);
    if (n == 0) {
        snprintf(err, errlen, "empty command; expected " VERB_LIST);
        return -1;
    }
    if (!(spec = find_verb(f[0]))) {
        snprintf(err, errlen, "unknown command \"%.*s%s\"; expected " VERB_LIST, SHOW(f[0]));
        return -1;
    }
    if (n - 1 != spec->nargs) {
        snprintf(err, errlen, "%s takes %d argument%s, got %d; usage: %s", spec->name, spec->nargs,
                 spec->nargs == 1 ? "" : "s", n - 1, spec->usage);
        return -1;
    }
    out->verb = spec->verb;
    if (spec->nargs >= 1 && parse_domain(f[1], out, err, errlen) < 0)
        return -1;
    if (spec->nargs >= 2 && parse_port(f[2], &out->port, err, errlen) < 0)
        return -1;
    return 0;
}

/* ---- the server ---- */

/* Batches, for route misses on other threads (cmd_sync_pending). sync_mu
 * guards exactly the variables below and the cs_paused flag of the server;
 * the rest of struct cmd_server belongs to the command thread alone (the
 * batch itself runs without the lock). The command thread takes it for an
 * instant at the start and end of each batch, at pause and at close; a
 * worker holds it while it peeks at the socket and while it waits on
 * sync_cv (which releases it). Lock order: nothing is taken under sync_mu
 * (recv with MSG_DONTWAIT is the only call made under it). */
static pthread_mutex_t sync_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t sync_cv;             /* CLOCK_MONOTONIC; broadcast at a batch's end,
                                              at pause and at close */
static pthread_once_t sync_once = PTHREAD_ONCE_INIT;
static struct cmd_server *sync_server;     /* the running server; NULL before start, after close */
static uint64_t sync_started, sync_done;   /* batches begun / finished (read, applied, saved,
                                              published, answered) */
static bool sync_last_full;                /* the last finished batch read BATCH_MAX datagrams */

#define BATCH_MAX 256          /* datagrams drained per readiness event */
#define REPLY_TEXT_MAX 512     /* longest single-datagram reply (errors, status) */
#define RECLAIM_MS 100         /* retry freeing retired snapshots this often */

enum item_state {
    ITEM_READY,     /* reply text is final */
    ITEM_PENDING,   /* mutating: reply text unless the segment's save fails */
    ITEM_UNSAVED,   /* mutating, its segment's save failed: reply cs_save_err */
    ITEM_SENT,      /* replied already (list, status, shutdown), or dropped */
};

struct item {
    struct sockaddr_storage it_src;
    char it_buf[CMD_DATAGRAM_MAX];
    struct cmd_command it_cmd;
    enum item_state it_state;
    char it_reply[REPLY_TEXT_MAX];
};

struct change {
    size_t ch_item;       /* the command that made it */
    uint16_t ch_old;      /* 0: the route is new */
    uint16_t ch_new;      /* 0: the route was removed */
};

struct cmd_server {
    struct loop_fd cs_lfd;             /* the UDP socket; first, for the callback */
    struct loop *cs_loop;
    char *cs_path;                     /* routes file */
    struct cmd_hooks cs_hooks;
    struct loop_timer cs_reclaim;      /* armed while retired snapshots wait */
    struct item *cs_items;             /* BATCH_MAX receive slots */
    struct mmsghdr cs_msgs[BATCH_MAX];
    struct iovec cs_iov[BATCH_MAX];
    size_t cs_sent;                    /* items [0, cs_sent) of this batch are answered */
    struct routes *cs_work;            /* the open segment's clone; NULL: no segment */
    struct change cs_changes[BATCH_MAX];
    size_t cs_nchanges;
    bool cs_shutdown;                  /* a shutdown was answered in this batch */
    bool cs_paused;                    /* cmd_server_pause: read no more datagrams; written
                                          under sync_mu (workers read it there) */
    uint64_t cs_drop_log_ms;           /* when a non-loopback drop was last logged */
    unsigned long cs_drops_unlogged;   /* drops since then, not logged one by one */
    char cs_save_err[8192];            /* reply for ITEM_UNSAVED commands */
    char cs_list[CMD_REPLY_MAX];       /* list reply datagram being filled */
};

static bool is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        return (ntohl(sin->sin_addr.s_addr) >> 24) == 127;
    }
    if (ss->ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
        /* A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d. */
        return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return false;
}

/* "192.0.2.1:5000" or "[2001:db8::1]:5000", for log lines. */
static const char *format_addr(const struct sockaddr_storage *ss, char *buf, size_t cap)
{
    char host[INET6_ADDRSTRLEN] = "?";

    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &sin->sin_addr, host, sizeof host);
        snprintf(buf, cap, "%s:%u", host, ntohs(sin->sin_port));
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {   /* an IPv4 peer on a dual-stack socket */
            inet_ntop(AF_INET, &sin6->sin6_addr.s6_addr[12], host, sizeof host);
            snprintf(buf, cap, "%s:%u", host, ntohs(sin6->sin6_port));
        } else {
            inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof host);
            snprintf(buf, cap, "[%s]:%u", host, ntohs(sin6->sin6_port));
        }
    } else {
        snprintf(buf, cap, "(address family %d)", ss->ss_family);
    }
    return buf;
}

static socklen_t addr_len(const struct sockaddr_storage *ss)
{
    return ss->ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
}

static void send_reply(struct cmd_server *s, const struct item *it, const char *text, size_t len)
{
    char addr[80];

    /* A full send buffer on loopback is the client's problem: log and go on. */
    if (sendto(s->cs_lfd.fd, text, len, MSG_DONTWAIT, (const struct sockaddr *)&it->it_src,
               addr_len(&it->it_src)) < 0)
        log_warn("command reply to %s: %s", format_addr(&it->it_src, addr, sizeof addr),
                 strerror(errno));
}

static void send_text(struct cmd_server *s, const struct item *it, const char *text)
{
    send_reply(s, it, text, strlen(text));
}

/* Sends the replies of items [cs_sent, upto) in order. */
static void send_ready(struct cmd_server *s, size_t upto)
{
    for (; s->cs_sent < upto; s->cs_sent++) {
        struct item *it = &s->cs_items[s->cs_sent];
        if (it->it_state == ITEM_UNSAVED)
            send_text(s, it, s->cs_save_err);
        else if (it->it_state != ITEM_SENT)
            send_text(s, it, it->it_reply);
        it->it_state = ITEM_SENT;
    }
}

static void on_reclaim(struct loop *l, struct loop_timer *t)
{
    qsbr_reclaim();
    if (qsbr_pending() > 0)
        loop_timer_set(l, t, RECLAIM_MS, on_reclaim);
}

static void log_change(const struct change *ch, const struct cmd_command *c)
{
    if (ch->ch_old == 0)
        log_info("route added %s -> 127.0.0.1:%u", c->domain, ch->ch_new);
    else if (ch->ch_new == 0)
        log_info("route removed %s (was 127.0.0.1:%u)", c->domain, ch->ch_old);
    else
        log_info("route changed %s port %u -> %u", c->domain, ch->ch_old, ch->ch_new);
}

/* Commits the open segment: save once, publish, log, hooks; on a failed save
 * every mutating command of the segment gets the error. Then sends every
 * reply before item `upto`. */
static void commit_segment(struct cmd_server *s, size_t upto)
{
    char cause[4600];

    if (s->cs_work && s->cs_nchanges > 0) {
        if (routes_save_file(s->cs_work, s->cs_path, cause, sizeof cause) == 0) {
            routes_publish(s->cs_work);
            for (size_t i = 0; i < s->cs_nchanges; i++)
                log_change(&s->cs_changes[i], &s->cs_items[s->cs_changes[i].ch_item].it_cmd);
            for (size_t i = 0; i < s->cs_nchanges && s->cs_hooks.on_route_added; i++)
                if (s->cs_changes[i].ch_new != 0)
                    s->cs_hooks.on_route_added(s->cs_items[s->cs_changes[i].ch_item].it_cmd.domain,
                                               s->cs_hooks.arg);
            qsbr_reclaim();
            if (qsbr_pending() > 0 && !loop_timer_armed(&s->cs_reclaim))
                loop_timer_set(s->cs_loop, &s->cs_reclaim, RECLAIM_MS, on_reclaim);
        } else {
            log_error("could not save routes to %s: %s; %zu change%s not applied", s->cs_path,
                      cause, s->cs_nchanges, s->cs_nchanges == 1 ? "" : "s");
            routes_free(s->cs_work);
            snprintf(s->cs_save_err, sizeof s->cs_save_err,
                     "error: could not save routes to %s: %s", s->cs_path, cause);
            for (size_t i = s->cs_sent; i < upto; i++)
                if (s->cs_items[i].it_state == ITEM_PENDING)
                    s->cs_items[i].it_state = ITEM_UNSAVED;
        }
    } else {
        routes_free(s->cs_work);   /* only no-op adds or failed removes: nothing to save */
    }
    s->cs_work = NULL;
    s->cs_nchanges = 0;
    send_ready(s, upto);
}

/* add/remove against the open segment's clone. */
static void apply_mutation(struct cmd_server *s, size_t idx)
{
    struct item *it = &s->cs_items[idx];
    const struct cmd_command *c = &it->it_cmd;
    uint16_t old;

    if (!s->cs_work)
        s->cs_work = routes_clone(routes_current());
    old = routes_lookup(s->cs_work, c->domain, c->domain_len);
    it->it_state = ITEM_PENDING;
    snprintf(it->it_reply, REPLY_TEXT_MAX, "ok");
    if (c->verb == CMD_ADD) {
        if (old == c->port)
            return;   /* identical to the current route: ok, nothing to save */
        routes_set(s->cs_work, c->domain, c->domain_len, c->port);
        s->cs_changes[s->cs_nchanges++] = (struct change){ idx, old, c->port };
    } else if (old == 0) {
        snprintf(it->it_reply, REPLY_TEXT_MAX,
                 "error: no route for %s; nothing to remove (list shows the routes)", c->domain);
    } else {
        routes_remove(s->cs_work, c->domain, c->domain_len);
        s->cs_changes[s->cs_nchanges++] = (struct change){ idx, old, 0 };
    }
}

/* "DOMAIN PORT\n" lines sorted, then "ok", in datagrams of at most
 * CMD_REPLY_MAX bytes split at line boundaries. */
static void reply_list(struct cmd_server *s, const struct item *it)
{
    size_t n, len = 0;
    struct routes_entry *e = routes_sorted(routes_current(), &n);
    char line[DOMAIN_MAX + 16];

    for (size_t i = 0; i < n; i++) {
        int w = snprintf(line, sizeof line, "%s %u\n", e[i].name, e[i].port);
        if (len + (size_t)w > sizeof s->cs_list) {
            send_reply(s, it, s->cs_list, len);
            len = 0;
        }
        memcpy(s->cs_list + len, line, (size_t)w);
        len += (size_t)w;
    }
    if (len + 2 > sizeof s->cs_list) {
        send_reply(s, it, s->cs_list, len);
        len = 0;
    }
    memcpy(s->cs_list + len, "ok", 2);
    send_reply(s, it, s->cs_list, len + 2);
    free(e);
}

static void reply_status(struct cmd_server *s, const struct item *it)
{
    const struct cmd_command *c = &it->it_cmd;
    uint16_t port = routes_lookup(routes_current(), c->domain, c->domain_len);
    char text[REPLY_TEXT_MAX + 2048];

    /* Release mode adds the certificate's state as "key: value" lines
     * (certs_status); local mode answers the route alone. */
    if (port) {
        int n = snprintf(text, sizeof text, "%s %u\n", c->domain, port);
        size_t extra = certs_status(c->domain, c->domain_len, text + n, sizeof text - (size_t)n);
        text[n + (int)extra - 1] = '\0';   /* no trailing newline: "\n" or the last line's */
    } else {
        snprintf(text, sizeof text, "error: no route for %s", c->domain);
    }
    send_text(s, it, text);
}

/* One received datagram: source check, size check, parse, then apply or
 * answer at its position. */
static void handle_datagram(struct cmd_server *s, size_t idx, size_t len, int flags)
{
    struct item *it = &s->cs_items[idx];
    char err[REPLY_TEXT_MAX - 8], addr[80];

    if (!is_loopback(&it->it_src)) {
        /* The only access control: never answer, never act. Logged at most
         * once a second, so a flood from outside cannot flood the log. */
        uint64_t now = loop_now_ms(s->cs_loop);
        it->it_state = ITEM_SENT;
        if (s->cs_drop_log_ms != 0 && now - s->cs_drop_log_ms < 1000) {
            s->cs_drops_unlogged++;
            return;
        }
        char more[64] = "";
        if (s->cs_drops_unlogged)
            snprintf(more, sizeof more, "; %lu more dropped since the last such line",
                     s->cs_drops_unlogged);
        log_warn("dropped command datagram from %s: not a loopback address (commands are "
                 "accepted from this machine only)%s", format_addr(&it->it_src, addr, sizeof addr), more);
        s->cs_drop_log_ms = now ? now : 1;
        s->cs_drops_unlogged = 0;
        return;
    }
    it->it_state = ITEM_READY;
    if ((flags & MSG_TRUNC) || len > CMD_DATAGRAM_MAX) {
        snprintf(it->it_reply, REPLY_TEXT_MAX, "error: command of %zu bytes is longer than the "
                 "%d-byte limit; send one command per datagram", len, CMD_DATAGRAM_MAX);
        return;
    }
    if (cmd_parse(it->it_buf, len, &it->it_cmd, err, sizeof err) < 0) {
        snprintf(it->it_reply, REPLY_TEXT_MAX, "error: %s", err);
        return;
    }
    switch (it->it_cmd.verb) {
    case CMD_ADD:
    case CMD_REMOVE:
        apply_mutation(s, idx);
        return;
    case CMD_LIST:
        commit_segment(s, idx);
        reply_list(s, it);
        break;
    case CMD_STATUS:
        commit_segment(s, idx);
        reply_status(s, it);
        break;
    case CMD_SHUTDOWN:
        commit_segment(s, idx);
        send_text(s, it, "ok");
        log_info("shutdown requested over the command port");
        s->cs_shutdown = true;
        break;
    }
    it->it_state = ITEM_SENT;
    s->cs_sent = idx + 1;
}

/* sync_cv measures its timeouts on the monotonic clock (a wall-clock step
 * must not stretch or cut a wait). */
static void sync_init(void)
{
    pthread_condattr_t a;

    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&sync_cv, &a);
    pthread_condattr_destroy(&a);
}

static void batch_begin(void)
{
    pthread_mutex_lock(&sync_mu);
    sync_started++;
    pthread_mutex_unlock(&sync_mu);
}

static void batch_end(bool full)
{
    pthread_mutex_lock(&sync_mu);
    sync_done++;
    sync_last_full = full;
    pthread_cond_broadcast(&sync_cv);
    pthread_mutex_unlock(&sync_mu);
}

static void on_readable(struct loop *l, struct loop_fd *h, uint32_t events)
{
    struct cmd_server *s = (struct cmd_server *)h;   /* cs_lfd is the first member */
    int n;

    if (s->cs_paused)
        return;   /* an event from the batch that was already returned by epoll */
    batch_begin();
    for (int i = 0; i < BATCH_MAX; i++) {
        s->cs_iov[i] = (struct iovec){ s->cs_items[i].it_buf, CMD_DATAGRAM_MAX };
        s->cs_msgs[i].msg_hdr = (struct msghdr){
            .msg_name = &s->cs_items[i].it_src, .msg_namelen = sizeof s->cs_items[i].it_src,
            .msg_iov = &s->cs_iov[i], .msg_iovlen = 1 };
    }
    /* MSG_TRUNC: msg_len is the datagram's real length, so an oversized
     * command is detected and refused rather than parsed cut short. */
    n = recvmmsg(h->fd, s->cs_msgs, BATCH_MAX, MSG_DONTWAIT | MSG_TRUNC, NULL);
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            log_warn("command port: recvmmsg: %s", strerror(errno));
        batch_end(false);
        return;
    }
    s->cs_sent = 0;
    for (int i = 0; i < n; i++)
        handle_datagram(s, (size_t)i, s->cs_msgs[i].msg_len, s->cs_msgs[i].msg_hdr.msg_flags);
    commit_segment(s, (size_t)n);
    batch_end(n == BATCH_MAX);   /* published and answered: waiting route misses look again */
    if (s->cs_shutdown) {
        s->cs_shutdown = false;
        if (s->cs_hooks.on_shutdown)
            s->cs_hooks.on_shutdown(s->cs_hooks.arg);   /* may call cmd_server_close(s) */
    }
}

struct cmd_server *cmd_server_start(struct loop *l, int udp_fd, const char *routes_path,
                                    const struct cmd_hooks *hooks)
{
    struct cmd_server *s = xcalloc(1, sizeof *s);

    s->cs_lfd = (struct loop_fd){ .fd = udp_fd, .cb = on_readable };
    s->cs_loop = l;
    s->cs_path = xstrdup(routes_path);
    if (hooks)
        s->cs_hooks = *hooks;
    s->cs_items = xcalloc(BATCH_MAX, sizeof *s->cs_items);
    if (loop_add_fd_level(l, &s->cs_lfd, false) < 0) {
        log_error("command port: watching the UDP socket: %s", strerror(errno));
        close(udp_fd);
        free(s->cs_items);
        free(s->cs_path);
        free(s);
        return NULL;
    }
    pthread_once(&sync_once, sync_init);
    pthread_mutex_lock(&sync_mu);
    sync_server = s;
    pthread_mutex_unlock(&sync_mu);
    return s;
}

void cmd_server_pause(struct cmd_server *s)
{
    if (!s || s->cs_paused)
        return;
    /* Under sync_mu: a worker waiting for our next batch stops waiting. */
    pthread_mutex_lock(&sync_mu);
    s->cs_paused = true;
    pthread_cond_broadcast(&sync_cv);
    pthread_mutex_unlock(&sync_mu);
    loop_del_fd(s->cs_loop, &s->cs_lfd);
}

void cmd_server_close(struct cmd_server *s)
{
    if (!s)
        return;
    if (!s->cs_paused)
        loop_del_fd(s->cs_loop, &s->cs_lfd);
    /* Before the socket is closed: no worker peeks at it from now on. */
    pthread_mutex_lock(&sync_mu);
    if (sync_server == s)
        sync_server = NULL;
    pthread_cond_broadcast(&sync_cv);
    pthread_mutex_unlock(&sync_mu);
    close(s->cs_lfd.fd);
    if (loop_timer_armed(&s->cs_reclaim))
        loop_timer_cancel(s->cs_loop, &s->cs_reclaim);
    qsbr_reclaim();
    free(s->cs_items);
    free(s->cs_path);
    free(s);
}

/* ---- route misses (any thread but the command thread) ----
 *
 * Why the worker asks the command thread rather than reading the socket
 * itself: the command thread is the only reader the rest of the server
 * knows about. A handover (handover.c) relies on it: while it blocks the
 * command thread, no command is read, so the routes file the new instance
 * loads is the last one; a worker applying a datagram then would save a
 * route the new instance never sees. The hooks (shutdown, a route's
 * certificate) and the reclaim timer also belong on the command thread's
 * loop. And the datagram that races a request has usually woken the
 * command thread already (the socket is level-triggered on its loop), so
 * the wait is mostly the batch itself, which a worker doing it would pay
 * too.
 *
 * Why peek first: an unknown name with nothing pending (the common case:
 * scanners, typos) costs one recv(MSG_PEEK) returning EAGAIN, no wake-up
 * and no wait. Only a datagram waiting in the socket, or a batch being
 * applied, makes the worker wait, and then for that batch only:
 * SYNC_START_MS for the command thread to begin reading (generous: a loaded
 * machine can leave it unscheduled for tens of ms; it is blocked
 * only by a handover, when commands must not be read anyway), SYNC_MAX_MS
 * in all (a slow fsync). */

#define SYNC_START_MS 250    /* the command thread begins reading a waiting datagram within this */
#define SYNC_MAX_MS   2000   /* cap on one cmd_sync_pending, whatever the disk does */

static bool before(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

/* A datagram waits in the socket. MSG_PEEK leaves it for the command
 * thread; an empty datagram returns 0 and counts too. Under sync_mu. */
static bool datagram_waiting(int fd)
{
    char c;
    return recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) >= 0;
}

bool cmd_sync_pending(void)
{
    struct timespec cap, start, limit;
    uint64_t done0, target = 0;   /* target: the batch that must finish (begun after a peek) */
    bool changed;

    pthread_once(&sync_once, sync_init);
    cap = start = clock_deadline_ms(SYNC_MAX_MS);
    pthread_mutex_lock(&sync_mu);
    done0 = sync_done;
    for (;;) {
        struct cmd_server *s = sync_server;
        if (!s || s->cs_paused)
            break;   /* no server, or another instance reads the commands now */
        /* A batch begun after we saw a datagram ended without filling up:
         * it drained the socket, so it read every datagram sent before us. */
        if (target && sync_done >= target && !sync_last_full)
            break;
        if (sync_started == sync_done) {   /* no batch being applied */
            if (!datagram_waiting(s->cs_lfd.fd))
                break;   /* nothing received that no finished batch has handled */
            if (!target || sync_done >= target) {
                target = sync_started + 1;   /* the next batch reads it */
                start = clock_deadline_ms(SYNC_START_MS);
            }
        }
        limit = sync_started < target && before(&start, &cap) ? start : cap;
        if (pthread_cond_timedwait(&sync_cv, &sync_mu, &limit) == ETIMEDOUT) {
            log_debug("route lookup: a command is pending but its batch did not end in time "
                      "(a handover blocking the command port, or a slow disk): not waiting longer");
            break;
        }
    }
    changed = sync_done != done0;
    pthread_mutex_unlock(&sync_mu);
    return changed;
}

uint16_t cmd_lookup_route(const char *name, size_t len)
{
    uint16_t port = routes_lookup(routes_current(), name, len);

    if (port == 0 && cmd_sync_pending())
        port = routes_lookup(routes_current(), name, len);
    return port;
}
