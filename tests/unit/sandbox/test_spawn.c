/*
 * Tests for the unprivileged parts of src/sandbox/spawn.c: process start times from
 * /proc/PID/stat and the liveness check that guards against pid reuse.
 */
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
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
    };

    return cmocka_run_group_tests_name("sandbox/spawn", tests, NULL, NULL);
}
