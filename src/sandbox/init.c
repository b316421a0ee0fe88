/*
 * paddock's init: pid 1 of every sandbox. It does two things: reap every process that ends
 * up as its child, and keep handler processes waiting for connections on the control socket.
 * Handlers do the work (exec, file operations) inside the sandbox with the sandbox's own
 * credentials and filter, one connection at a time each, so init itself never parses a
 * request and stays small; a handler that crashes takes nothing else with it.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sandbox_int.h"

/*
 * How many handlers may wait in accept() at once; one more that comes back leaves. Two, so
 * that back-to-back requests settle on forking nothing even when init forked a handler for a
 * connection that came before the last one was back: the two then take turns (accept() hands
 * a connection to the longest waiter).
 */
#define INIT_MAX_IDLE 2
/* A handler serves at most this many requests, so that whatever its heap keeps stays bounded. */
#define HANDLER_MAX_REQUESTS 1000
/*
 * When the last idle handler takes a connection, init waits this long for one to come back
 * before it forks another: a short command's handler is back well within it, and forking while
 * the command runs would take a CPU from it.
 */
#define INIT_SPARE_GRACE_NS (5 * 1000000LL)
/*
 * A connection that arrives while none waits gets a handler after at most this long: the one
 * that served the caller's previous request is usually about to come back (it goes back as soon
 * as its result is out, and a caller connects again right after reading it), and taking it is
 * cheaper than the fork.
 */
#define INIT_CONN_GRACE_NS (1000000LL)

struct handler_entry {
    const char *op;
    int (*fn)(int conn, json_t *req);
    /* The operation leaves the process as it found it (working directory, library state), so
     * its handler may serve another connection afterwards. */
    bool reusable;
};

/* The operations a connection may ask for (STYLE R-12: a table, not a switch). */
static const struct handler_entry handlers[] = {
    {"exec", sandbox__handle_exec, true},        {"read", sandbox__handle_read, true},
    {"write", sandbox__handle_write, true},      {"list", sandbox__handle_list, true},
    {"delete", sandbox__handle_delete, true},    {"snapshot", sandbox__handle_snapshot, false},
    {"extract", sandbox__handle_extract, false},
};

/* Serves one connection; *reusable_out says whether this process may serve another one. */
static int
handle_conn(int conn, bool *reusable_out)
{
    struct proto_frame f;
    struct err *e = NULL;
    json_t *req;
    const char *op;
    int rc = 1;

    *reusable_out = false;
    if (sandbox__proto_recv(conn, &f, &e) < 0)
        goto fail;
    if (f.type != PROTO_REQ) {
        sandbox__proto_frame_free(&f);
        err_set(&e, ERR_INVALID, 0, "the first frame must be a request");
        goto fail;
    }
    req = sandbox__proto_parse_json(&f, &e);
    sandbox__proto_frame_free(&f);
    if (req == NULL)
        goto fail;
    op = json_string_value(json_object_get(req, "op"));
    for (size_t i = 0; op != NULL && i < sizeof(handlers) / sizeof(handlers[0]); i++) {
        if (strcmp(op, handlers[i].op) == 0) {
            rc = handlers[i].fn(conn, req);
            json_decref(req);
            *reusable_out = handlers[i].reusable;
            return rc;
        }
    }
    json_decref(req);
    err_set(&e, ERR_INVALID, 0, "unknown operation");
fail:
    sandbox__proto_send_error(conn, e);
    err_free(e);
    return rc;
}

/*
 * Connections are served by handlers forked ahead of time and already blocked in accept(), so
 * no fork sits between a connect and the start of the work. A handler that has served a
 * request goes back to accept() for the next one, unless its operation changed the process or
 * left children behind: forking a handler from init (a copy of the whole paddock process) and
 * tearing it down again cost more CPU than running /bin/true, and on two CPUs it ran beside
 * the command it was meant to serve. Handlers tell init on a pipe when they take a connection
 * and when they are back; init forks a new one when none is waiting (see INIT_SPARE_GRACE_NS
 * and INIT_CONN_GRACE_NS).
 */
enum init_msg_kind {
    INIT_MSG_TOOK = 1, /* the handler took a connection */
    INIT_MSG_BACK,     /* the handler is about to wait in accept() again */
};

struct init_msg {
    pid_t pid;
    int32_t kind;
};

struct init_state {
    int listen_fd;
    int sfd;                   /* signalfd for SIGCHLD */
    int msgs[2];               /* handlers write struct init_msg here */
    pid_t idle[INIT_MAX_IDLE]; /* handlers waiting in accept() */
    size_t n_idle;
    int64_t fork_at;   /* with none idle: when to fork one anyway (monotonic ns) */
    bool conn_waiting; /* with none idle: a connection waits (and fork_at is near) */
    sigset_t mask;
};

/* Set by SIGUSR1: init has enough idle handlers; this one leaves after its current work. */
static volatile sig_atomic_t handler_quit;

static void
on_quit(int sig)
{
    (void)sig;
    handler_quit = 1;
}

/*
 * A fresh fork writes to no page without a copy-on-write or zero-fill fault first, and on a
 * virtual machine each costs microseconds. The spare takes those faults while it is idle: the
 * stack a handler uses (the relay's buffers are on it) and the allocator and JSON state a
 * request touches.
 */
static void __attribute__((noinline))
spare_warm(void)
{
    static const char sample[] = "{\"op\":\"exec\",\"argv\":[\"/bin/true\"],\"env\":[]}";
    char stack[PROTO_CHUNK + 16384];
    json_t *j = json_loads(sample, 0, NULL);

    memset(stack, 0, sizeof(stack));
    __asm__ volatile("" : : "r"(stack) : "memory"); /* keep the stores */
    free(json_dumps(j, JSON_COMPACT));
    json_decref(j);
}

static void
tell_init(int fd, pid_t self, enum init_msg_kind kind)
{
    struct init_msg m = {self, (int32_t)kind};

    (void)!write(fd, &m, sizeof(m));
}

/*
 * Waits for a connection; -1 when init asked this handler to leave. SIGUSR1 is let through
 * only here, so it never interrupts a request; one that lands just after accept() returned
 * is seen once the request is done.
 */
static int
take_conn(int listen_fd, const sigset_t *quit_mask)
{
    int conn = -1;

    sigprocmask(SIG_UNBLOCK, quit_mask, NULL);
    while (!handler_quit) {
        conn = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
        /* EAGAIN: init made the socket non-blocking for a moment (refuse_conn()). */
        if (conn >= 0 || (errno != EINTR && errno != ECONNABORTED && errno != EAGAIN))
            break;
    }
    sigprocmask(SIG_BLOCK, quit_mask, NULL);
    return conn;
}

/* True when the process has a child left (a command's background process): reaps zombies. */
static bool
has_children(void)
{
    pid_t p;

    while ((p = waitpid(-1, NULL, WNOHANG)) > 0)
        ;
    return p == 0;
}

/* Closes every descriptor but 0, 1, 2 and the n in keep (which must be sorted, all >= 3). */
static void
close_others(const int *keep, size_t n)
{
    unsigned lo = 3;

    for (size_t i = 0; i < n; i++) {
        if ((unsigned)keep[i] > lo)
            syscall(SYS_close_range, lo, (unsigned)keep[i] - 1, 0);
        lo = (unsigned)keep[i] + 1;
    }
    syscall(SYS_close_range, lo, ~0U, 0);
}

static int
cmp_int(const void *a, const void *b)
{
    return *(const int *)a - *(const int *)b;
}

static void __attribute__((noreturn))
spare_main(struct init_state *st)
{
    struct sigaction sa = {.sa_handler = on_quit}; /* no SA_RESTART: accept() must return */
    int keep[] = {st->listen_fd, SANDBOX_FD_UPPER_ROOT, SANDBOX_FD_UPPER_USR, st->msgs[1]};
    sigset_t quit_mask, base_mask;
    pid_t self = getpid();
    int rc = 0;

    close(st->sfd);
    close(st->msgs[0]);
    close(SANDBOX_FD_PROXY); /* init's alone */
    qsort(keep, sizeof(keep) / sizeof(keep[0]), sizeof(keep[0]), cmp_int);
    sigemptyset(&quit_mask);
    sigaddset(&quit_mask, SIGUSR1);
    sigaction(SIGUSR1, &sa, NULL);
    sigprocmask(SIG_UNBLOCK, &st->mask, NULL);
    sigprocmask(SIG_BLOCK, &quit_mask, &base_mask);
    sigaddset(&base_mask, SIGUSR1);
    /* A command that closes its stdin early must not take its handler along. */
    signal(SIGPIPE, SIG_IGN);
    spare_warm();
    for (int served = 0; served < HANDLER_MAX_REQUESTS; served++) {
        bool reusable;
        int conn;

        /* Named apart from a working handler, so that activity checks from the host can tell
         * an idle sandbox (init and idle handlers) from a busy one (sandbox_busy()). */
        prctl(PR_SET_NAME, SANDBOX_SPARE_NAME, 0, 0, 0);
        if (served > 0)
            tell_init(st->msgs[1], self, INIT_MSG_BACK);
        conn = take_conn(st->listen_fd, &quit_mask);
        if (conn < 0)
            _exit(handler_quit ? 0 : 1);
        prctl(PR_SET_NAME, "paddock-handler", 0, 0, 0);
        tell_init(st->msgs[1], self, INIT_MSG_TOOK);
        rc = handle_conn(conn, &reusable);
        close(conn);
        /* A child left behind (a daemon the command started) keeps this handler: its
         * descendants are its own until it exits, and the next command's timeout would kill
         * them. */
        if (!reusable || handler_quit || has_children())
            break;
        /* Back to the state a fresh spare has: only the descriptors init gave it, SIGCHLD
         * and SIGUSR1 as they were. */
        close_others(keep, sizeof(keep) / sizeof(keep[0]));
        sigprocmask(SIG_SETMASK, &base_mask, NULL);
    }
    _exit(rc);
}

/* Forks a handler to wait in accept(); fails only when fork does (pids limit). */
static int
spare_fork(struct init_state *st)
{
    pid_t pid = fork();

    if (pid == 0)
        spare_main(st);
    if (pid < 0)
        return -1;
    st->idle[st->n_idle++] = pid;
    return 0;
}

/*
 * With no handler waiting (fork failed), init answers a connection itself, with the reason.
 * A handler may have come back and taken the connection meanwhile: init must not block in
 * accept(), so the socket is non-blocking for the duration (a handler that calls accept() in
 * that window retries).
 */
static void
refuse_conn(struct init_state *st, int fork_errno)
{
    struct err *e = NULL;
    int flags = fcntl(st->listen_fd, F_GETFL);
    int conn;

    if (flags < 0 || fcntl(st->listen_fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return;
    conn = accept4(st->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    fcntl(st->listen_fd, F_SETFL, flags);
    if (conn < 0)
        return;
    err_set(&e, ERR_LIMIT, fork_errno, "sandbox cannot fork a handler (pids limit?)");
    sandbox__proto_send_error(conn, e);
    err_free(e);
    close(conn);
}

/* Forgets pid as idle; the last one gone starts the wait for a handler to come back. */
static void
idle_remove(struct init_state *st, pid_t pid)
{
    for (size_t i = 0; i < st->n_idle; i++) {
        if (st->idle[i] == pid) {
            st->idle[i] = st->idle[--st->n_idle];
            if (st->n_idle == 0) {
                st->fork_at = util_mono_ns() + INIT_SPARE_GRACE_NS;
                st->conn_waiting = false; /* look at the socket again */
            }
            return;
        }
    }
}

/*
 * Forks the next handler if none waits and it is due; returns the poll timeout until it is.
 * When the fork fails (pids limit), a waiting connection gets the error from init itself.
 */
static int
spare_due(struct init_state *st)
{
    int64_t now;

    if (st->n_idle > 0) {
        st->conn_waiting = false;
        return -1;
    }
    now = util_mono_ns();
    if (now < st->fork_at)
        return (int)((st->fork_at - now + 999999) / 1000000);
    if (spare_fork(st) == 0) {
        st->conn_waiting = false;
        return -1;
    }
    if (st->conn_waiting)
        refuse_conn(st, errno);
    st->conn_waiting = false;
    st->fork_at = now + INIT_SPARE_GRACE_NS; /* try again later */
    return (int)(INIT_SPARE_GRACE_NS / 1000000);
}

/* A connection waits and none is idle: a handler is due within INIT_CONN_GRACE_NS. */
static void
on_conn_waiting(struct init_state *st)
{
    int64_t due = util_mono_ns() + INIT_CONN_GRACE_NS;

    st->conn_waiting = true;
    if (st->fork_at > due)
        st->fork_at = due;
}

static void
reap_all(struct init_state *st)
{
    pid_t pid;

    while ((pid = waitpid(-1, NULL, WNOHANG)) > 0)
        idle_remove(st, pid); /* died while waiting for a connection */
}

enum child_state {
    CHILD_GONE,    /* exited (a zombie), or no longer a child */
    CHILD_STOPPED, /* stopped by a signal (SIGSTOP, SIGTSTP, ...) */
    CHILD_RUNNING,
};

/* Where a child of init stands, without reaping it or consuming its stop. */
static enum child_state
child_state(pid_t pid)
{
    siginfo_t si = {0};

    if (waitid(P_PID, (id_t)pid, &si, WEXITED | WSTOPPED | WNOHANG | WNOWAIT) < 0)
        return CHILD_GONE;
    if (si.si_pid == 0)
        return CHILD_RUNNING;
    return si.si_code == CLD_STOPPED ? CHILD_STOPPED : CHILD_GONE;
}

/*
 * Processes of the sandbox run as the handlers' uid and may stop them: `kill -STOP -1` reaches
 * every process but pid 1. A stopped handler takes no connection, and while init counted it
 * as waiting it forked no other, so connections would wait in the listen queue for ever. The
 * kernel tells init of the stop (SIGCHLD with CLD_STOPPED, on the signalfd it reads anyway):
 * init kills a stopped idle handler and forgets it, and the next spare is forked as for any
 * handler gone. A busy handler that is stopped is left alone: its caller times out.
 */
static void
idle_drop_stopped(struct init_state *st)
{
    for (size_t i = 0; i < st->n_idle;) {
        pid_t pid = st->idle[i];

        if (child_state(pid) != CHILD_STOPPED) {
            i++;
            continue;
        }
        kill(pid, SIGKILL);
        idle_remove(st, pid); /* moves the last one to i */
    }
}

/*
 * A handler that comes back joins the idle ones, or, when there are enough, is told to leave.
 * Messages come before the reaping in each turn of the loop, but a handler may write and die
 * in between: one that is no longer running is never counted.
 */
static void
on_msg(struct init_state *st, const struct init_msg *m)
{
    if (m->kind == INIT_MSG_TOOK) {
        idle_remove(st, m->pid);
    } else if (m->kind == INIT_MSG_BACK) {
        enum child_state cs = child_state(m->pid);

        idle_remove(st, m->pid);
        if (cs == CHILD_RUNNING && st->n_idle < INIT_MAX_IDLE)
            st->idle[st->n_idle++] = m->pid;
        else if (cs == CHILD_RUNNING)
            kill(m->pid, SIGUSR1);
        else if (cs == CHILD_STOPPED)
            kill(m->pid, SIGKILL); /* stopped on its way back: see idle_drop_stopped() */
    }
}

static void
read_msgs(struct init_state *st)
{
    struct init_msg m[16];
    ssize_t r;

    while ((r = read(st->msgs[0], m, sizeof(m))) > 0)
        for (size_t i = 0; i < (size_t)r / sizeof(m[0]); i++)
            on_msg(st, &m[i]);
}

void
sandbox__init_main(int listen_fd)
{
    struct init_state st = {.listen_fd = listen_fd, .n_idle = 0, .fork_at = 0,
                            .conn_waiting = false};
    struct pollfd p[3];

    prctl(PR_SET_NAME, "paddock-init", 0, 0, 0);
    /* Not dumpable: processes of the sandbox run as the same uid with the same capabilities,
     * and must not ptrace init or its handlers, or read their memory and descriptors through
     * /proc. Commands become dumpable again at execve. */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    /* Handlers inherited from the caller (a server's SIGTERM, a sanitizer's SIGSEGV) would
     * make pid 1 react to signals sent from inside the sandbox. With none installed, the
     * kernel drops every signal that processes of the namespace send to their init. */
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            signal(sig, SIG_DFL);
    sigemptyset(&st.mask);
    sigaddset(&st.mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &st.mask, NULL);
    st.sfd = signalfd(-1, &st.mask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (st.sfd < 0 || pipe2(st.msgs, O_CLOEXEC) < 0 || fcntl(st.msgs[0], F_SETFL, O_NONBLOCK) < 0)
        _exit(1);
    /* jansson seeds its hash function from /dev/urandom on first use: do it once here rather
     * than in every handler. */
    json_object_seed(0);
    for (;;) {
        int timeout = spare_due(&st);

        p[0] = (struct pollfd){st.sfd, POLLIN, 0};
        p[1] = (struct pollfd){st.msgs[0], POLLIN, 0};
        p[2] = (struct pollfd){st.n_idle > 0 || st.conn_waiting ? -1 : listen_fd, POLLIN, 0};
        if (poll(p, 3, timeout) < 0) {
            if (errno == EINTR)
                continue;
            _exit(1);
        }
        if (p[1].revents & POLLIN)
            read_msgs(&st);
        if (p[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(st.sfd, &si, sizeof(si)) > 0)
                ;
            reap_all(&st);
            idle_drop_stopped(&st);
        }
        if (p[2].revents & POLLIN && st.n_idle == 0)
            on_conn_waiting(&st);
    }
}
