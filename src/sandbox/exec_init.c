/*
 * The exec handler, inside the sandbox. It is a subreaper, so every process the command
 * leaves behind, even one that daemonized, stays its descendant until it exits: a timeout
 * or a vanished caller then kills the whole tree. Output is relayed with backpressure (a
 * full socket stops the reading of the pipes, never the handler's clock).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sandbox_int.h"

#define EXEC_MAX_ARGS    4096
#define EXEC_MAX_ENV     4096
#define EXEC_WAIT_DELAY_MS 250 /* how long output may trail the command's exit */

static const char *const default_env[] = {
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "USER=root",
    "LOGNAME=root",
    "SHELL=/bin/bash",
    "LANG=C.UTF-8",
    "TERM=xterm",
};

struct exec_req {
    char **argv;
    char **envp;
    char *cwd;
    int64_t timeout_ms;
    uint64_t max_output;
    bool has_stdin;
};

static void
free_strv(char **v)
{
    if (v == NULL)
        return;
    for (char **p = v; *p != NULL; p++)
        free(*p);
    free(v);
}

/* Copies a JSON array of strings into a NULL-terminated vector. */
static int
strv_from_json(json_t *arr, size_t max, size_t extra, char ***out, size_t *n_out,
               struct err **errp)
{
    size_t n = json_array_size(arr);
    char **v;

    if (n > max)
        return err_set(errp, ERR_LIMIT, 0, "more than %zu entries", max);
    v = xcalloc(n + extra + 1, sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        v[i] = sandbox__bytes_from_json(json_array_get(arr, i));
        if (v[i] == NULL) {
            free_strv(v);
            return err_set(errp, ERR_INVALID, 0, "entry %zu is not a string", i);
        }
    }
    *out = v;
    *n_out = n;
    return 0;
}

/* Defaults first, then the caller's variables, each replacing a default of the same name. */
static char **
build_env(json_t *user, struct err **errp)
{
    size_t nd = sizeof(default_env) / sizeof(default_env[0]);
    size_t nu = 0;
    char **u = NULL;
    char **v;
    size_t n = 0;

    if (user != NULL && strv_from_json(user, EXEC_MAX_ENV, 0, &u, &nu, errp) < 0)
        return NULL;
    v = xcalloc(nd + nu + 1, sizeof(char *));
    for (size_t i = 0; i < nd; i++) {
        size_t klen = strcspn(default_env[i], "=") + 1;
        bool overridden = false;
        for (size_t j = 0; j < nu; j++)
            if (strncmp(u[j], default_env[i], klen) == 0)
                overridden = true;
        if (!overridden)
            v[n++] = xstrdup(default_env[i]);
    }
    for (size_t j = 0; j < nu; j++)
        v[n++] = steal_ptr(&u[j]);
    free(u);
    return v;
}

/* A handler serves many requests: everything a request allocates is freed. */
static void
exec_req_free(struct exec_req *r)
{
    free_strv(r->argv);
    free_strv(r->envp);
    free(r->cwd);
}

/* Fills *r (zeroed first, so exec_req_free() is safe whatever happens). */
static int
parse_req(json_t *req, struct exec_req *r, struct err **errp)
{
    json_t *argv = json_object_get(req, "argv");
    cleanup_free char *shell = NULL;
    size_t n;

    memset(r, 0, sizeof(*r));
    if (json_object_get(req, "shell") != NULL &&
        (shell = sandbox__bytes_from_json(json_object_get(req, "shell"))) == NULL)
        return err_set(errp, ERR_INVALID, 0, "bad shell command");
    if (shell != NULL) {
        r->argv = xcalloc(4, sizeof(char *));
        r->argv[0] = xstrdup("/bin/sh");
        r->argv[1] = xstrdup("-c");
        r->argv[2] = steal_ptr(&shell);
    } else if (json_is_array(argv) && json_array_size(argv) > 0) {
        if (strv_from_json(argv, EXEC_MAX_ARGS, 0, &r->argv, &n, errp) < 0)
            return err_wrap(errp, "argv");
    } else {
        return err_set(errp, ERR_INVALID, 0, "exec needs argv or shell");
    }
    r->envp = build_env(json_object_get(req, "env"), errp);
    if (r->envp == NULL)
        return err_wrap(errp, "env");
    r->cwd = json_object_get(req, "cwd") != NULL
                 ? sandbox__bytes_from_json(json_object_get(req, "cwd"))
                 : xstrdup("/workspace");
    if (r->cwd == NULL)
        return err_set(errp, ERR_INVALID, 0, "bad cwd");
    r->timeout_ms = json_integer_value(json_object_get(req, "timeout_ms"));
    r->max_output = (uint64_t)json_integer_value(json_object_get(req, "max_output"));
    r->has_stdin = json_is_true(json_object_get(req, "stdin"));
    return 0;
}

/*
 * The command's side of vfork(): it shares the handler's memory until execve, so it writes
 * to nothing but its own stack (signal dispositions and the fd table are its own copies).
 */
static void __attribute__((noreturn))
run_child(const struct exec_req *r, int in_fd, int out_fd, int err_fd, const cpu_set_t *cpus)
{
    const char *what = "chdir";
    sigset_t none;

    setsid();
    if (dup2(in_fd, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(err_fd, 2) < 0)
        _exit(126);
    syscall(SYS_close_range, 3, ~0U, 0);
    /* The handler blocks SIGCHLD (into its signalfd) and SIGUSR1 (init's request to leave,
     * let through only between connections); the command starts with no signal blocked. */
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0);
    if (cpus != NULL)
        sched_setaffinity(0, sizeof(*cpus), cpus);
    if (chdir(r->cwd) == 0) {
        what = r->argv[0];
        execvpe(r->argv[0], r->argv, r->envp);
    }
    {
        int e = errno;
        char msg[512];
        int n = snprintf(msg, sizeof(msg), "paddock: %s: %s: %s\n",
                         what == r->argv[0] ? "cannot run" : "cannot change to directory",
                         what == r->argv[0] ? r->argv[0] : r->cwd, strerror(e));
        (void)!write(2, msg, (size_t)n < sizeof(msg) ? (size_t)n : sizeof(msg) - 1);
        _exit(e == ENOENT && what == r->argv[0] ? 127 : 126);
    }
}

/*
 * Pins the handler to the CPU it runs on, saving its CPUs in *cpus; false if it could not.
 * The vfork child inherits the pin: the handler sleeps until the child's execve, so this CPU
 * is free for it, whereas the scheduler's placement of a new task often picks the other CPU,
 * which means waking an idle virtual CPU (tens of microseconds) or queueing behind whatever
 * runs there. Both sides restore the CPU set right after, the command before its execve.
 */
static bool
pin_here(cpu_set_t *cpus)
{
    cpu_set_t one;
    int cpu = sched_getcpu();

    if (cpu < 0 || cpu >= CPU_SETSIZE || sched_getaffinity(0, sizeof(*cpus), cpus) < 0)
        return false;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    return sched_setaffinity(0, sizeof(one), &one) == 0;
}

struct exec_state {
    pid_t pid;
    int status;
    bool exited;
    int64_t exit_ns;
    bool timed_out;
};

/* Reaps one child (blocking unless WNOHANG), recording the command's own status. */
static pid_t
reap_one(struct exec_state *st, int flags)
{
    int status;
    pid_t p = waitpid(-1, &status, flags);

    if (p > 0 && p == st->pid && !st->exited) {
        st->exited = true;
        st->status = status;
        st->exit_ns = util_mono_ns();
    }
    return p;
}

static void
reap(struct exec_state *st)
{
    while (reap_one(st, WNOHANG) > 0)
        ;
}

/* Appends the pids listed in /proc/PID/task/ * /children to v. */
static void
children_of(pid_t pid, pid_t *v, size_t *n, size_t cap)
{
    char path[64];
    cleanup_dir DIR *d = NULL;
    struct dirent *de;

    snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
    d = opendir(path);
    if (d == NULL)
        return;
    while ((de = readdir(d)) != NULL) {
        char cpath[320];
        cleanup_fclose FILE *f = NULL;
        long c;
        if (de->d_name[0] == '.')
            continue;
        snprintf(cpath, sizeof(cpath), "/proc/%d/task/%s/children", (int)pid, de->d_name);
        f = fopen(cpath, "re");
        if (f == NULL)
            continue;
        while (*n < cap && fscanf(f, "%ld", &c) == 1)
            v[(*n)++] = (pid_t)c;
    }
}

/*
 * Kills every descendant. A process that forks while it is being killed leaves children
 * that are reparented to this subreaper, so the sweep repeats until nothing is left.
 */
static void
kill_tree(struct exec_state *st)
{
    enum { CAP = 8192 };
    pid_t *v = xmalloc(CAP * sizeof(pid_t));

    for (int round = 0; round < 10000; round++) {
        size_t n = 0;
        children_of(getpid(), v, &n, CAP);
        if (n == 0 && reap_one(st, WNOHANG) < 0)
            break;
        /* Breadth-first over the tree: v grows while it is walked. */
        for (size_t i = 0; i < n; i++) {
            kill(v[i], SIGKILL);
            children_of(v[i], v, &n, CAP);
        }
        for (size_t i = 0; i < n; i++)
            kill(v[i], SIGKILL);
        reap(st);
        if (n == 0 && reap_one(st, 0) < 0) /* only exiting processes left: wait for one */
            break;
    }
    free(v);
}

struct relay {
    int conn;
    int fds[3]; /* [0] stdin write end, [1] stdout read end, [2] stderr read end */
    struct proto_sendq q;
    struct buf in_pending;
    size_t in_off;
    uint64_t sent[3];
    uint64_t dropped[3];
    bool conn_gone;
};

/* Moves one chunk from an output pipe to the queue; false at EOF. */
static bool
pump_output(struct relay *x, int stream, uint64_t max_output)
{
    char chunk[PROTO_CHUNK];
    ssize_t r = read(x->fds[stream], chunk, sizeof(chunk));
    size_t keep;

    if (r < 0 && (errno == EINTR || errno == EAGAIN))
        return true;
    if (r <= 0)
        return false;
    keep = (size_t)r;
    if (x->sent[stream] + keep > max_output)
        keep = (size_t)(max_output - x->sent[stream]);
    x->dropped[stream] += (uint64_t)r - keep;
    x->sent[stream] += keep;
    if (keep > 0 && !x->conn_gone &&
        sandbox__sendq_push(&x->q, stream == 1 ? PROTO_STDOUT : PROTO_STDERR, chunk, keep,
                            NULL) < 0)
        x->conn_gone = true;
    return true;
}

/* Reads one frame from the caller: stdin data or its end. */
static void
pump_input(struct relay *x)
{
    struct proto_frame f;

    if (sandbox__proto_recv(x->conn, &f, NULL) < 0) {
        x->conn_gone = true;
        return;
    }
    if (f.type == PROTO_STDIN && x->fds[0] >= 0) {
        buf_free(&x->in_pending);
        x->in_off = 0;
        buf_append(&x->in_pending, f.data, f.len, NULL);
    } else if (f.type == PROTO_STDIN_EOF) {
        close_and_reset(&x->fds[0]);
    }
    sandbox__proto_frame_free(&f);
}

static void
flush_stdin(struct relay *x)
{
    while (x->in_off < x->in_pending.len) {
        ssize_t w = write(x->fds[0], x->in_pending.data + x->in_off, x->in_pending.len - x->in_off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            return;
        if (w < 0) { /* the command closed its stdin: drop what it will never read */
            close_and_reset(&x->fds[0]);
            break;
        }
        x->in_off += (size_t)w;
    }
    buf_free(&x->in_pending);
    x->in_off = 0;
}

/* One turn of the relay loop; returns the poll timeout to use, or -2 when done. */
static int
relay_loop(struct relay *x, struct exec_state *st, int sfd, const struct exec_req *r,
           int64_t deadline_ns)
{
    struct pollfd p[5];
    int64_t now, wait_ms = -1;
    int np;

    for (;;) {
        bool want_out = !sandbox__sendq_pending(&x->q) || x->conn_gone;
        now = util_mono_ns();
        if (st->exited && ((x->fds[1] < 0 && x->fds[2] < 0) ||
                           now - st->exit_ns > (int64_t)EXEC_WAIT_DELAY_MS * 1000000))
            return 0;
        if (!st->exited && deadline_ns > 0 && now >= deadline_ns) {
            st->timed_out = true;
            kill_tree(st);
            return 0;
        }
        if (x->conn_gone && !st->exited) {
            kill_tree(st);
            return 0;
        }
        wait_ms = -1;
        if (deadline_ns > 0 && !st->exited)
            wait_ms = (deadline_ns - now) / 1000000 + 1;
        if (st->exited)
            wait_ms = EXEC_WAIT_DELAY_MS - (now - st->exit_ns) / 1000000 + 1;
        np = 0;
        p[np++] = (struct pollfd){sfd, POLLIN, 0};
        p[np++] = (struct pollfd){x->conn,
                                  (short)((x->in_pending.len == 0 && !x->conn_gone ? POLLIN : 0) |
                                          (sandbox__sendq_pending(&x->q) ? POLLOUT : 0)),
                                  0};
        p[np++] = (struct pollfd){x->fds[1], want_out ? POLLIN : 0, 0};
        p[np++] = (struct pollfd){x->fds[2], want_out ? POLLIN : 0, 0};
        p[np++] = (struct pollfd){x->fds[0], x->in_pending.len > 0 ? POLLOUT : 0, 0};
        if (poll(p, (nfds_t)np, (int)wait_ms) < 0 && errno != EINTR)
            return -1;
        if (p[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof(si)) > 0)
                ;
            reap(st);
        }
        if (p[1].revents & POLLOUT && sandbox__sendq_flush(&x->q, x->conn, NULL) < 0)
            x->conn_gone = true;
        if (p[1].revents & (POLLIN | POLLHUP | POLLERR))
            pump_input(x);
        for (int s = 1; s <= 2; s++)
            if (p[1 + s].revents & (POLLIN | POLLHUP | POLLERR) && !pump_output(x, s, r->max_output))
                close_and_reset(&x->fds[s]);
        if (p[4].revents & (POLLOUT | POLLERR | POLLHUP))
            flush_stdin(x);
    }
}

/*
 * After the result went out: keep draining the output of leftover background processes, so
 * they never get SIGPIPE.
 */
static void
drain(struct relay *x)
{
    char chunk[PROTO_CHUNK];
    struct pollfd p[2];

    while (x->fds[1] >= 0 || x->fds[2] >= 0) {
        for (int i = 0; i < 2; i++)
            p[i] = (struct pollfd){x->fds[1 + i], POLLIN, 0};
        if (poll(p, 2, -1) < 0 && errno != EINTR)
            break;
        for (int i = 0; i < 2; i++)
            if (p[i].revents & (POLLIN | POLLHUP | POLLERR) &&
                read(x->fds[1 + i], chunk, sizeof(chunk)) <= 0)
                close_and_reset(&x->fds[1 + i]);
        while (waitpid(-1, NULL, WNOHANG) > 0)
            ;
    }
}

static int
send_result(struct relay *x, const struct exec_state *st, int64_t start_ns)
{
    json_t *j;
    int rc;

    sandbox__sendq_free(&x->q);
    j = json_pack("{s:b, s:b, s:i, s:i, s:b, s:I, s:I, s:I}", "ok", 1, "exited",
                  WIFEXITED(st->status), "code", WIFEXITED(st->status) ? WEXITSTATUS(st->status) : 0,
                  "signal", WIFSIGNALED(st->status) ? WTERMSIG(st->status) : 0, "timed_out",
                  st->timed_out, "dropped_stdout", (json_int_t)x->dropped[1], "dropped_stderr",
                  (json_int_t)x->dropped[2], "duration_ms",
                  (json_int_t)((util_mono_ns() - start_ns) / 1000000));
    rc = sandbox__proto_send_json(x->conn, PROTO_RESULT, j, NULL);
    json_decref(j);
    return rc;
}

/* Answers a request that could not start its command; descriptors are left to the caller. */
static int
exec_fail(int conn, struct exec_req *r, struct err *e)
{
    sandbox__proto_send_error(conn, e);
    err_free(e);
    exec_req_free(r);
    return 1;
}

int
sandbox__handle_exec(int conn, json_t *req)
{
    struct exec_req r;
    struct exec_state st = {0};
    struct relay x = {.conn = conn, .fds = {-1, -1, -1}};
    struct err *e = NULL;
    int in[2], out[2], errp_[2];
    int64_t start_ns = util_mono_ns(), deadline = 0;
    sigset_t mask;
    cpu_set_t cpus;
    bool pinned;
    int sfd;

    if (parse_req(req, &r, &e) < 0) {
        exec_req_free(&r);
        sandbox__proto_send_error(conn, e);
        err_free(e);
        return 1;
    }
    if (r.max_output == 0)
        r.max_output = UINT64_MAX;
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0 || pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 ||
        pipe2(errp_, O_CLOEXEC) < 0) {
        err_set(&e, ERR_LIMIT, errno, "exec: create pipes");
        return exec_fail(conn, &r, e);
    }
    /* vfork: no copy of the handler's page tables to make, and none to tear down at execve. */
    pinned = pin_here(&cpus);
    st.pid = vfork();
    if (pinned)
        sched_setaffinity(0, sizeof(cpus), &cpus);
    if (st.pid < 0) {
        err_set(&e, ERR_LIMIT, errno, "exec: fork");
        return exec_fail(conn, &r, e);
    }
    if (st.pid == 0)
        run_child(&r, in[0], out[1], errp_[1], pinned ? &cpus : NULL);
    close(in[0]);
    close(out[1]);
    close(errp_[1]);
    x.fds[0] = in[1];
    x.fds[1] = out[0];
    x.fds[2] = errp_[0];
    for (int i = 0; i < 3; i++)
        fcntl(x.fds[i], F_SETFL, O_NONBLOCK);
    if (!r.has_stdin)
        close_and_reset(&x.fds[0]);
    sandbox__sendq_init(&x.q);
    buf_init(&x.in_pending, PROTO_MAX_FRAME);
    if (r.timeout_ms > 0)
        deadline = start_ns + r.timeout_ms * 1000000;
    relay_loop(&x, &st, sfd, &r, deadline);
    /* Flush the output already queued before the result. */
    while (sandbox__sendq_pending(&x.q) && !x.conn_gone) {
        struct pollfd p = {conn, POLLOUT, 0};
        if (poll(&p, 1, 1000) <= 0 || sandbox__sendq_flush(&x.q, conn, NULL) < 0)
            break;
    }
    /*
     * The caller is not waited for: stdin it still sends (that the command never read) is
     * refused from here on, and what was sent stays readable for it on a unix socket even
     * after the close, ahead of any error. So the handler is free as soon as the result is out,
     * and the caller's close wakes nothing.
     */
    if (!x.conn_gone && send_result(&x, &st, start_ns) == 0)
        shutdown(conn, SHUT_RDWR);
    else
        x.conn_gone = true;
    close_and_reset(&x.fds[0]);
    drain(&x);
    close(sfd);
    buf_free(&x.in_pending);
    sandbox__sendq_free(&x.q);
    exec_req_free(&r);
    return 0;
}
