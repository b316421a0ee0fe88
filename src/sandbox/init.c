/*
 * paddock's init: pid 1 of every sandbox. It does two things: reap every process that ends
 * up as its child, and accept connections on the control socket, forking one handler per
 * connection. Handlers do the work (exec, file operations) inside the sandbox with the
 * sandbox's own credentials and filter, so init itself never parses a request and stays
 * small; a handler that crashes takes nothing else with it.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
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

static void
reap_all(void)
{
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
}

void
sandbox__init_main(int listen_fd)
{
    sigset_t mask;
    int sfd;
    struct pollfd p[2];

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
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0)
        _exit(1);
    p[0] = (struct pollfd){listen_fd, POLLIN, 0};
    p[1] = (struct pollfd){sfd, POLLIN, 0};
    for (;;) {
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            _exit(1);
        }
        if (p[1].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof(si)) > 0)
                ;
            reap_all();
        }
        if (p[0].revents & POLLIN) {
            int conn = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
            pid_t pid;
            if (conn < 0)
                continue;
            pid = fork();
            if (pid == 0) {
                close(listen_fd);
                close(sfd);
                sigprocmask(SIG_UNBLOCK, &mask, NULL);
                prctl(PR_SET_NAME, "paddock-handler", 0, 0, 0);
                /* A command that closes its stdin early must not take its handler along. */
                signal(SIGPIPE, SIG_IGN);
                _exit(handle_conn(conn));
            }
            if (pid < 0) {
                struct err *e = NULL;
                err_set(&e, ERR_LIMIT, errno, "sandbox cannot fork a handler (pids limit?)");
                sandbox__proto_send_error(conn, e);
                err_free(e);
            }
            close(conn);
        }
    }
}
