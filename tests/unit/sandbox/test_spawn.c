/*
 * Tests for the unprivileged parts of src/sandbox/spawn.c: process start times from
 * /proc/PID/stat and the liveness check that guards against pid reuse.
 */
#include <linux/sockios.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "../unit.h"

#include "sandbox/sandbox_int.h"
#include "suites.h"

/* Forks a child that waits until its end of the pipe is closed, then exits. */
struct waiter {
    pid_t pid;
    int ctl; /* write end: closing it lets the child exit */
    int ack; /* read end: the child writes a byte after each step */
};

static struct waiter
start_waiter(const char *rename_to)
{
    struct waiter w;
    int go[2], ack[2];

    assert_int_equal(pipe2(go, O_CLOEXEC), 0);
    assert_int_equal(pipe2(ack, O_CLOEXEC), 0);
    fflush(stdout);
    w.pid = fork();
    assert_true(w.pid >= 0);
    if (w.pid == 0) {
        char c;
        close(go[1]);
        close(ack[0]);
        (void)!write(ack[1], "r", 1); /* running */
        if (read(go[0], &c, 1) == 1 && rename_to != NULL) {
            prctl(PR_SET_NAME, rename_to, 0, 0, 0);
            (void)!write(ack[1], "n", 1); /* renamed */
        }
        while (read(go[0], &c, 1) > 0)
            ;
        _exit(0);
    }
    close(go[0]);
    close(ack[1]);
    w.ctl = go[1];
    w.ack = ack[0];
    return w;
}

static void
wait_ack(const struct waiter *w)
{
    char c;

    assert_int_equal(read(w->ack, &c, 1), 1);
}

/* Lets the child exit and waits until it is a zombie, without reaping it. */
static void
stop_waiter_keep_zombie(struct waiter *w)
{
    siginfo_t si;

    close_and_reset(&w->ctl);
    memset(&si, 0, sizeof(si));
    assert_int_equal(waitid(P_PID, (id_t)w->pid, &si, WEXITED | WNOWAIT), 0);
    assert_int_equal(si.si_pid, w->pid);
}

static void
reap_waiter(struct waiter *w)
{
    int st = 0;

    close_and_reset(&w->ctl);
    close_and_reset(&w->ack);
    assert_int_equal(waitpid(w->pid, &st, 0), w->pid);
    assert_true(WIFEXITED(st));
}

static void
test_start_time_self(void **state)
{
    uint64_t a, b;
    (void)state;

    a = util_proc_start_time(getpid());
    b = util_proc_start_time(getpid());
    assert_true(a > 0);
    assert_int_equal(a, b); /* an identity: it never changes */
}

static void
test_start_time_child(void **state)
{
    struct waiter w = start_waiter(NULL);
    uint64_t self = util_proc_start_time(getpid());
    uint64_t child, zombie;
    (void)state;

    wait_ack(&w);
    child = util_proc_start_time(w.pid);
    assert_true(child > 0);
    assert_true(child >= self); /* clock ticks since boot: the child started later */

    /* A zombie is dead: if nobody reaps a killed init, it must not count as running. */
    stop_waiter_keep_zombie(&w);
    zombie = util_proc_start_time(w.pid);
    assert_int_equal(zombie, 0);

    /* Once reaped, the process is gone: 0. */
    reap_waiter(&w);
    assert_int_equal(util_proc_start_time(w.pid), 0);
}

static void
test_start_time_odd_comm(void **state)
{
    /* The command name may hold spaces and parentheses: fields start after the last ')'. */
    static const char *const names[] = { ") 1 2 3 4 5 6", "a) (b) c", "x y z", "))))))))" };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(names); i++) {
        struct waiter w = start_waiter(names[i]);
        uint64_t before, after;

        wait_ack(&w);
        before = util_proc_start_time(w.pid);
        assert_true(before > 0);
        assert_int_equal(write(w.ctl, "g", 1), 1);
        wait_ack(&w); /* renamed */
        after = util_proc_start_time(w.pid);
        if (after != before)
            fail_msg("comm \"%s\": start time %ju, was %ju", names[i], (uintmax_t)after,
                     (uintmax_t)before);
        reap_waiter(&w);
    }
}

static void
test_start_time_no_process(void **state)
{
    static const pid_t pids[] = { 0, -1, -12345, INT_MAX };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(pids); i++)
        assert_int_equal(util_proc_start_time(pids[i]), 0);
}

struct alive_case {
    const char *what;
    pid_t pid;
    int64_t start_delta; /* added to the real start time; INT64_MIN: start is 0 */
    bool want;
};

static void
test_alive(void **state)
{
    struct waiter w = start_waiter(NULL);
    uint64_t self_start = util_proc_start_time(getpid());
    uint64_t child_start;
    struct sandbox_init init;
    (void)state;

    wait_ack(&w);
    child_start = util_proc_start_time(w.pid);
    assert_true(self_start > 0 && child_start > 0);

    {
        /* Every case is in this process's pid namespace, so none is a sandbox's init, which is
         * the first process of a namespace of its own (test_alive_own_pid_ns). */
        const struct alive_case cases[] = {
            { "self", getpid(), 0, false },
            { "running child", w.pid, 0, false },
            { "self, later start", getpid(), 1, false },
            { "self, earlier start", getpid(), -1, false },
            { "self, start 0", getpid(), INT64_MIN, false },
            { "pid 0", 0, 0, false },
            { "negative pid", -1, 0, false },
            { "no such pid", INT_MAX, 0, false },
        };
        for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
            uint64_t base = cases[i].pid == w.pid ? child_start : self_start;
            init.pid = cases[i].pid;
            init.start =
                cases[i].start_delta == INT64_MIN ? 0 : base + (uint64_t)cases[i].start_delta;
            if (sandbox_alive(&init) != cases[i].want)
                fail_msg("sandbox_alive(%s: pid %d start %ju) != %s", cases[i].what, (int)init.pid,
                         (uintmax_t)init.start, cases[i].want ? "true" : "false");
        }
    }

    /* pid 0 with the start time 0 that /proc lookups return for "gone": still not alive. */
    init.pid = 0;
    init.start = 0;
    assert_false(sandbox_alive(&init));

    /* A reaped child is not alive, even with its right start time. */
    reap_waiter(&w);
    init.pid = w.pid;
    init.start = child_start;
    assert_false(sandbox_alive(&init));
}

static char ns_stack[64 * 1024] __attribute__((aligned(16)));

static int
ns_child(void *arg)
{
    const int *fds = arg; /* go[0], ack[1], and the parent's ends: go[1], ack[0] */
    char c;

    close(fds[2]); /* or the read below never sees the parent close its end */
    close(fds[3]);
    (void)!write(fds[1], "r", 1);
    while (read(fds[0], &c, 1) > 0)
        ;
    _exit(0);
}

/* A running process with the right start time is alive only as the first process of a pid
 * namespace of its own, as every sandbox's init is: after a reboot a stored pid and start time
 * can match a process of the host, which must be neither adopted nor killed. */
static void
test_alive_own_pid_ns(void **state)
{
    int go[2], ack[2], fds[4];
    struct sandbox_init init;
    pid_t pid;
    char c;
    (void)state;

    assert_int_equal(pipe2(go, O_CLOEXEC), 0);
    assert_int_equal(pipe2(ack, O_CLOEXEC), 0);
    fds[0] = go[0];
    fds[1] = ack[1];
    fds[2] = go[1];
    fds[3] = ack[0];
    fflush(stdout);
    pid = clone(ns_child, ns_stack + sizeof(ns_stack), CLONE_NEWPID | SIGCHLD, fds);
    if (pid < 0) {
        print_message("skipped: no pid namespace here (%s; root is needed)\n", strerror(errno));
        close(go[0]);
        close(go[1]);
        close(ack[0]);
        close(ack[1]);
        return;
    }
    close(go[0]);
    close(ack[1]);
    assert_int_equal(read(ack[0], &c, 1), 1);
    init.pid = pid;
    init.start = util_proc_start_time(pid);
    assert_true(init.start > 0);
    assert_true(sandbox_alive(&init));
    init.start++;
    assert_false(sandbox_alive(&init));
    close(go[1]);
    close(ack[0]);
    assert_int_equal(waitpid(pid, NULL, 0), pid);
    init.start--;
    assert_false(sandbox_alive(&init));
}

/* What a stand-in init holds at SANDBOX_FD_PROXY. */
enum kept {
    KEPT_SOCKET,  /* the proxy's port, bound, as spawn.c leaves it */
    KEPT_NOTHING, /* as in a sandbox of an older build... */
    KEPT_PIPE,    /* ...or its message pipe, which an older init had at that number */
};

/* A stand-in for a sandbox's init: its own pid and network namespaces, loopback up, and
 * what kept says at SANDBOX_FD_PROXY. Sent a byte, it connects to the proxy's port, reads
 * until the other side closes, and answers how many bytes came ('0'..'9'). */
struct netns_child {
    int go, ack, go_w, ack_r; /* the child's ends, and the parent's (closed in the child) */
    enum kept kept;
};

static int
netns_child(void *arg)
{
    const struct netns_child *a = arg;
    struct ifreq ifr = { .ifr_name = "lo" };
    struct sockaddr_in proxy = { .sin_family = AF_INET,
                                 .sin_port = htons(SANDBOX_PROXY_PORT),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    /* The pipes clear of SANDBOX_FD_PROXY, which may be one of them */
    int go = fcntl(a->go, F_DUPFD_CLOEXEC, SANDBOX_FD_PROXY + 1);
    int ack = fcntl(a->ack, F_DUPFD_CLOEXEC, SANDBOX_FD_PROXY + 1);
    int s;
    char c;

    close(a->go_w);
    close(a->ack_r);
    close(SANDBOX_FD_PROXY);
    s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (go < 0 || ack < 0 || s < 0 || ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
        return 1;
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
        return 1;
    close(s);
    if (a->kept == KEPT_SOCKET) {
        s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (s < 0 || bind(s, (struct sockaddr *)&proxy, sizeof(proxy)) < 0 ||
            dup3(s, SANDBOX_FD_PROXY, O_CLOEXEC) < 0)
            return 1;
        close(s);
    } else if (a->kept == KEPT_PIPE) {
        int p[2];
        if (pipe2(p, O_CLOEXEC) < 0 || dup3(p[0], SANDBOX_FD_PROXY, O_CLOEXEC) < 0)
            return 1;
        close(p[0]);
    }
    (void)!write(ack, "r", 1);
    while (read(go, &c, 1) > 0) {
        char buf[64], got = '0';
        ssize_t n;
        s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (s < 0 || connect(s, (struct sockaddr *)&proxy, sizeof(proxy)) < 0)
            return 1;
        while ((n = read(s, buf, sizeof(buf))) > 0)
            got = (char)(got + n < '9' ? got + n : '9');
        close(s);
        (void)!write(ack, &got, 1); /* how many bytes came, '0'..'9' */
    }
    return 0;
}

static bool
same_ns(int fd_ns, const char *path)
{
    struct stat a, b;

    return fstat(fd_ns, &a) == 0 && stat(path, &b) == 0 && a.st_dev == b.st_dev &&
           a.st_ino == b.st_ino;
}

/* An int socket option of fd (SO_REUSEADDR, SO_ACCEPTCONN). */
static int
opt(int fd, int name)
{
    int v = -1;
    socklen_t l = sizeof(v);

    assert_int_equal(getsockopt(fd, SOL_SOCKET, name, &v, &l), 0);
    return v;
}

/* Has the stand-in connect once; the connection is accepted on fd, sent "hi" when say, and
 * closed here first (its end waits in TIME_WAIT on the port). How many bytes the other end
 * read. */
static int
serve_once(int fd, int go, int ack, bool say)
{
    struct pollfd pf = { fd, POLLIN, 0 };
    int conn;
    char c;

    assert_int_equal(write(go, "c", 1), 1);
    assert_int_equal(poll(&pf, 1, 10000), 1);
    conn = accept(fd, NULL, NULL);
    assert_true(conn >= 0);
    if (say)
        assert_int_equal(write(conn, "hi", 2), 2);
    close(conn);
    assert_int_equal(read(ack, &c, 1), 1);
    return c - '0';
}

/*
 * The proxy's listener is the socket the sandbox's init keeps, in its namespace, made to
 * listen and to stop listening (the port stays bound), and to listen again while connections
 * it accepted wait in TIME_WAIT on the port. A sandbox whose init keeps none (nothing at that
 * number, or an older init's pipe) gets a socket made in its namespace.
 */
static void
test_proxy_listen(void **state)
{
    (void)state;
    for (int keep = KEPT_SOCKET; keep <= KEPT_PIPE; keep++) {
        int go[2], ack[2], fd, ns;
        struct netns_child a;
        struct sandbox_init init;
        struct err *e = NULL;
        char c, path[64];
        pid_t pid;

        assert_int_equal(pipe2(go, O_CLOEXEC), 0);
        assert_int_equal(pipe2(ack, O_CLOEXEC), 0);
        a = (struct netns_child){ go[0], ack[1], go[1], ack[0], (enum kept)keep };
        fflush(stdout);
        pid = clone(netns_child, ns_stack + sizeof(ns_stack), CLONE_NEWPID | CLONE_NEWNET | SIGCHLD,
                    &a);
        close(go[0]);
        close(ack[1]);
        if (pid < 0) {
            print_message("skipped: no pid and network namespaces here (%s; root is needed)\n",
                          strerror(errno));
            close(go[1]);
            close(ack[0]);
            return;
        }
        assert_int_equal(read(ack[0], &c, 1), 1);
        init.pid = pid;
        init.start = util_proc_start_time(pid);
        fd = sandbox_proxy_listen(&init, &e);
        if (fd < 0)
            fail_msg("sandbox_proxy_listen (kept %d): %s", keep, e->msg);
        snprintf(path, sizeof(path), "/proc/%d/ns/net", (int)pid);
        ns = ioctl(fd, SIOCGSKNS);
        assert_true(ns >= 0 && same_ns(ns, path));
        close(ns);
        assert_int_equal(opt(fd, SO_ACCEPTCONN), 1);
        if (keep == KEPT_SOCKET) {
            struct sockaddr_in sa;
            socklen_t sl = sizeof(sa);
            /* SO_REUSEADDR exactly while listening. */
            assert_int_equal(opt(fd, SO_REUSEADDR), 1);
            assert_int_equal(serve_once(fd, go[1], ack[0], true), 2);
            /* Unlistened, it is still bound to the port; and, with the connection of before
             * in TIME_WAIT there, it listens again. */
            sandbox_proxy_unlisten(fd);
            assert_int_equal(opt(fd, SO_ACCEPTCONN), 0);
            assert_int_equal(opt(fd, SO_REUSEADDR), 0);
            assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
            assert_int_equal(ntohs(sa.sin_port), SANDBOX_PROXY_PORT);
            assert_int_equal(sandbox_proxy_relisten(fd), 0);
            assert_int_equal(opt(fd, SO_ACCEPTCONN), 1);
            /* Refused through the init, as for a listener nobody holds, and again on a socket
             * no longer listening: a later listen still serves, bytes both ways. */
            ASSERT_NO_ERR(sandbox_proxy_refuse(&init, &e), &e);
            assert_int_equal(opt(fd, SO_ACCEPTCONN), 0);
            ASSERT_NO_ERR(sandbox_proxy_refuse(&init, &e), &e);
            sandbox_proxy_unlisten(fd);
            assert_int_equal(sandbox_proxy_relisten(fd), 0);
            assert_int_equal(serve_once(fd, go[1], ack[0], true), 2);
        } else {
            ASSERT_NO_ERR(sandbox_proxy_refuse(&init, &e), &e); /* nothing kept: nothing to do */
        }
        close(fd);
        close(go[1]);
        close(ack[0]);
        assert_int_equal(waitpid(pid, NULL, 0), pid);
        assert_int_equal(sandbox_proxy_listen(&init, &e), -1);
        ASSERT_ERR(&e, ERR_CONFLICT);
    }
}

int
test_spawn_run(void)
{
    static const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_start_time_self),
        cmocka_unit_test(test_start_time_child),
        cmocka_unit_test(test_start_time_odd_comm),
        cmocka_unit_test(test_start_time_no_process),
        cmocka_unit_test(test_alive),
        cmocka_unit_test(test_alive_own_pid_ns),
        cmocka_unit_test(test_proxy_listen),
    };

    return cmocka_run_group_tests_name("sandbox/spawn", tests, NULL, NULL);
}
