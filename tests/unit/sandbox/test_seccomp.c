/*
 * Tests for src/sandbox/seccomp.c: the compiled program, and (unprivileged, with
 * no_new_privs in a forked child) what it refuses once loaded.
 */
#include <linux/bpf_common.h>
#include <pthread.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#include "../unit.h"

#include "sandbox/sandbox_int.h"
#include "suites.h"

#ifndef BPF_MAXINSNS
#define BPF_MAXINSNS 4096
#endif

static void
test_program_compiles(void **state)
{
    const struct sock_fprog *prog = NULL, *again = NULL;
    struct err *e = NULL;
    const struct sock_filter *first;
    (void)state;

    ASSERT_NO_ERR(sandbox__seccomp_program(&prog, &e), &e);
    assert_non_null(prog);
    assert_non_null(prog->filter);
    assert_true(prog->len > 0);
    assert_true(prog->len <= BPF_MAXINSNS); /* the kernel's limit */
    first = prog->filter;

    /* Cached: the same program, not a second compilation. */
    ASSERT_NO_ERR(sandbox__seccomp_program(&again, &e), &e);
    assert_ptr_equal(again, prog);
    assert_ptr_equal(again->filter, first);

    /* Every path of the program ends in a return: the last instruction is one. */
    assert_int_equal(BPF_CLASS(prog->filter[prog->len - 1].code), BPF_RET);
}

/* Exit codes of the child, one per check, so a failure names what went wrong. */
enum {
    SC_OK = 0,
    SC_SKIP = UNIT_SKIP,
    SC_PROG = 10,
    SC_UNSHARE_USER,
    SC_UNSHARE_NET,
    SC_UNSHARE_MNT,
    SC_CLONE_NS,
    SC_CLONE3,
    SC_TIOCSTI,
    SC_MOUNT,
    SC_BPF,
    SC_KEYCTL,
    SC_UNSHARE_NONE,
    SC_FORK,
    SC_THREAD,
    SC_GETPID,
};

static const char *const sc_names[] = {
    [SC_PROG] = "compile",
    [SC_UNSHARE_USER] = "unshare(CLONE_NEWUSER) not refused with EPERM",
    [SC_UNSHARE_NET] = "unshare(CLONE_NEWNET) not refused with EPERM",
    [SC_UNSHARE_MNT] = "unshare(CLONE_NEWNS|CLONE_FILES) not refused with EPERM",
    [SC_CLONE_NS] = "clone(CLONE_NEWUSER) not refused with EPERM",
    [SC_CLONE3] = "clone3 not refused with ENOSYS",
    [SC_TIOCSTI] = "ioctl(TIOCSTI) not refused with EPERM",
    [SC_MOUNT] = "mount not refused with EPERM",
    [SC_BPF] = "bpf not refused with EPERM",
    [SC_KEYCTL] = "keyctl not refused with EPERM",
    [SC_UNSHARE_NONE] = "unshare(0) refused",
    [SC_FORK] = "fork failed",
    [SC_THREAD] = "pthread_create failed",
    [SC_GETPID] = "getpid failed",
};

static bool
refused(long r, int want_errno)
{
    return r == -1 && errno == want_errno;
}

static void *
thread_fn(void *arg)
{
    return arg;
}

static int
filtered_child(void *arg)
{
    const struct sock_fprog *prog = NULL;
    char c = 'x';
    int fd, st;
    pid_t pid;
    pthread_t th;
    void *ret = NULL;
    long r;

    (void)arg;
    if (sandbox__seccomp_program(&prog, NULL) < 0)
        return SC_PROG;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 || sandbox__seccomp_load(prog) < 0)
        return SC_SKIP; /* no seccomp here */

    if (!refused(unshare(CLONE_NEWUSER), EPERM))
        return SC_UNSHARE_USER;
    if (!refused(unshare(CLONE_NEWNET), EPERM))
        return SC_UNSHARE_NET;
    /* A namespace flag among others is still caught. */
    if (!refused(unshare(CLONE_NEWNS | CLONE_FILES), EPERM))
        return SC_UNSHARE_MNT;
    /* Should the filter let it through, the clone makes a child: it leaves at once. */
    r = syscall(SYS_clone, (unsigned long)CLONE_NEWUSER | SIGCHLD, NULL, NULL, NULL, 0);
    if (r == 0)
        _exit(0);
    if (r > 0)
        waitpid((pid_t)r, NULL, 0);
    if (!refused(r, EPERM))
        return SC_CLONE_NS;
    if (!refused(syscall(SYS_clone3, NULL, (size_t)0), ENOSYS))
        return SC_CLONE3;
    fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (fd < 0 || !refused(ioctl(fd, TIOCSTI, &c), EPERM))
        return SC_TIOCSTI;
    close(fd);
    /* A target that does not exist: harmless (ENOENT) even as root without the filter. */
    if (!refused(mount("none", "/nonexistent-paddock-unit", "tmpfs", 0, NULL), EPERM))
        return SC_MOUNT;
    if (!refused(syscall(SYS_bpf, 0, NULL, 0), EPERM))
        return SC_BPF;
    if (!refused(syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3L, 0), EPERM))
        return SC_KEYCTL;

    /* Default allow: ordinary process life goes on. */
    if (unshare(0) != 0)
        return SC_UNSHARE_NONE;
    if (syscall(SYS_getpid) != getpid())
        return SC_GETPID;
    pid = fork();
    if (pid < 0)
        return SC_FORK;
    if (pid == 0)
        _exit(0);
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        return SC_FORK;
    /* glibc tries clone3 first and falls back to clone on ENOSYS. */
    if (pthread_create(&th, NULL, thread_fn, &c) != 0 || pthread_join(th, &ret) != 0 || ret != &c)
        return SC_THREAD;
    return SC_OK;
}

static void
test_filter_refuses(void **state)
{
    int st;
    (void)state;

    st = unit_run_in_child(filtered_child, NULL, false);
    if (WIFEXITED(st) && WEXITSTATUS(st) == SC_SKIP)
        skip();
    if (!WIFEXITED(st))
        fail_msg("filtered child died with signal %d", WIFSIGNALED(st) ? WTERMSIG(st) : -1);
    if (WEXITSTATUS(st) != SC_OK) {
        int c = WEXITSTATUS(st);
        fail_msg("filtered child: %s (exit %d)",
                 c >= SC_PROG && c < (int)ARRAY_LEN(sc_names) && sc_names[c] != NULL ? sc_names[c]
                                                                                     : "?",
                 c);
    }
}

int
test_seccomp_run(void)
{
    static const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_program_compiles),
        cmocka_unit_test(test_filter_refuses),
    };

    return cmocka_run_group_tests_name("sandbox/seccomp", tests, NULL, NULL);
}
