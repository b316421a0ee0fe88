/*
 * paddock's init: pid 1 of every sandbox. It does two things: reap every process that ends
 * up as its child, and accept connections on the control socket, forking one handler per
 * connection. Handlers do the work (exec, file operations) inside the sandbox with the
 * sandbox's own credentials and filter, so init itself never parses a request and stays
 * small; a handler that crashes takes nothing else with it.
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
#include <sys/wait.h>
#include <unistd.h>

#include "sandbox_int.h"

struct handler_entry {
    const char *op;
    int (*fn)(int conn, json_t *req);
};

/* The operations a connection may ask for (STYLE R-12: a table, not a switch). */
static const struct handler_entry handlers[] = {
    {"exec", sandbox__handle_exec},     {"read", sandbox__handle_read},
    {"write", sandbox__handle_write},   {"list", sandbox__handle_list},
    {"delete", sandbox__handle_delete}, {"snapshot", sandbox__handle_snapshot},
    {"extract", sandbox__handle_extract},
};

static int
handle_conn(int conn)
{
    struct proto_frame f;
    struct err *e = NULL;
    json_t *req;
    const char *op;
    int rc = 1;

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
 * A connection is served by a spare handler forked ahead of time and already blocked in
 * accept(), so no fork sits between a connect and the start of the work. The spare tells init
 * it took a connection by writing its pid on a pipe, and init forks the next spare at once.
 */
struct init_state {
    int listen_fd;
    int sfd;     /* signalfd for SIGCHLD */
    int took[2]; /* spares write their pid here when they take a connection */
    pid_t spare; /* the handler waiting in accept(), or -1 */
    sigset_t mask;
};

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

static void __attribute__((noreturn))
spare_main(struct init_state *st)
{
    pid_t self = getpid();
    int conn;

    close(st->sfd);
    close(st->took[0]);
    sigprocmask(SIG_UNBLOCK, &st->mask, NULL);
    /* Named apart from a working handler, so that activity checks from the host can tell an
     * idle sandbox (init and its spare) from a busy one (sandbox_busy()). */
    prctl(PR_SET_NAME, SANDBOX_SPARE_NAME, 0, 0, 0);
    /* A command that closes its stdin early must not take its handler along. */
    signal(SIGPIPE, SIG_IGN);
    spare_warm();
    do {
        conn = accept4(st->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    } while (conn < 0 && (errno == EINTR || errno == ECONNABORTED));
    if (conn < 0)
        _exit(1);
    close(st->listen_fd);
    prctl(PR_SET_NAME, "paddock-handler", 0, 0, 0);
    (void)!write(st->took[1], &self, sizeof(self));
    close(st->took[1]);
    _exit(handle_conn(conn));
}

/* Forks the next spare unless one is waiting; fails only when fork does (pids limit). */
static int
spare_ensure(struct init_state *st)
{
    pid_t pid;

    if (st->spare > 0)
        return 0;
    pid = fork();
    if (pid == 0)
        spare_main(st);
    if (pid < 0)
        return -1;
    st->spare = pid;
    return 0;
}

/* With no spare (fork failed), init answers a connection itself, with the reason. */
static void
refuse_conn(struct init_state *st, int fork_errno)
{
    struct err *e = NULL;
    int conn = accept4(st->listen_fd, NULL, NULL, SOCK_CLOEXEC);

    if (conn < 0)
        return;
    err_set(&e, ERR_LIMIT, fork_errno, "sandbox cannot fork a handler (pids limit?)");
    sandbox__proto_send_error(conn, e);
    err_free(e);
    close(conn);
}

static void
reap_all(struct init_state *st)
{
    pid_t pid;

    while ((pid = waitpid(-1, NULL, WNOHANG)) > 0)
        if (pid == st->spare)
            st->spare = -1; /* died before it took a connection */
}

static void
on_taken(struct init_state *st)
{
    pid_t pids[16];
    ssize_t r;

    while ((r = read(st->took[0], pids, sizeof(pids))) > 0)
        for (size_t i = 0; i < (size_t)r / sizeof(pid_t); i++)
            if (pids[i] == st->spare)
                st->spare = -1;
}

void
sandbox__init_main(int listen_fd)
{
    struct init_state st = {.listen_fd = listen_fd, .spare = -1};
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
    if (st.sfd < 0 || pipe2(st.took, O_CLOEXEC) < 0 || fcntl(st.took[0], F_SETFL, O_NONBLOCK) < 0)
        _exit(1);
    /* jansson seeds its hash function from /dev/urandom on first use: do it once here rather
     * than in every handler. */
    json_object_seed(0);
    for (;;) {
        spare_ensure(&st);
        p[0] = (struct pollfd){st.sfd, POLLIN, 0};
        p[1] = (struct pollfd){st.took[0], POLLIN, 0};
        p[2] = (struct pollfd){st.spare > 0 ? -1 : listen_fd, POLLIN, 0};
        if (poll(p, 3, -1) < 0) {
            if (errno == EINTR)
                continue;
            _exit(1);
        }
        if (p[1].revents & POLLIN)
            on_taken(&st);
        if (p[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(st.sfd, &si, sizeof(si)) > 0)
                ;
            reap_all(&st);
        }
        if (p[2].revents & POLLIN && spare_ensure(&st) < 0)
            refuse_conn(&st, errno);
    }
}
