/*
 * The seccomp filter. It is compiled with libseccomp once per process, in the parent, and the
 * resulting BPF program is loaded by the child (STYLE R-31): nothing between clone and the
 * init loop allocates for it. Default allow, with the kernel's rarely needed and often
 * exploited surface closed (after docker's and crun's default profiles), and every
 * namespace-creating flag refused so there is no nested user namespace.
 */
#include <errno.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <seccomp.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "sandbox_int.h"

/* Refused with EPERM. */
static const char *const blocked[] = {
    /* kernel code and state */
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "create_module", "reboot", "swapon", "swapoff", "syslog", "acct", "lookup_dcookie",
    "iopl", "ioperm", "uselib", "ustat", "sysfs", "_sysctl", "nfsservctl", "vhangup",
    "quotactl", "quotactl_fd", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "stime", "get_kernel_syms", "query_module",
    /* attack surface with a history of privilege escalations */
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "open_by_handle_at",
    "name_to_handle_at", "fanotify_init",
    /* mounts and namespaces */
    "mount", "umount", "umount2", "pivot_root", "mount_setattr", "open_tree",
    "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "setns",
    "lsm_set_self_attr",
};

static const unsigned long ns_flags[] = {
    CLONE_NEWUSER, CLONE_NEWNS,  CLONE_NEWPID,    CLONE_NEWNET,
    CLONE_NEWUTS,  CLONE_NEWIPC, CLONE_NEWCGROUP, CLONE_NEWTIME,
};

static struct sock_fprog compiled;

static int
rule(scmp_filter_ctx ctx, uint32_t action, const char *name, unsigned n,
     const struct scmp_arg_cmp *args, struct err **errp)
{
    int nr = seccomp_syscall_resolve_name(name);
    int r;

    if (nr == __NR_SCMP_ERROR)
        return 0; /* not a syscall on this architecture */
    r = seccomp_rule_add_array(ctx, action, nr, n, args);
    if (r < 0 && r != -EEXIST)
        return err_set(errp, ERR_INTERNAL, -r, "seccomp rule for %s", name);
    return 0;
}

static int
build(scmp_filter_ctx ctx, struct err **errp)
{
    struct scmp_arg_cmp a;

    for (size_t i = 0; i < sizeof(blocked) / sizeof(blocked[0]); i++)
        if (rule(ctx, SCMP_ACT_ERRNO(EPERM), blocked[i], 0, NULL, errp) < 0)
            return -1;
    /* clone3 passes its flags in memory a filter cannot read: glibc falls back to clone. */
    if (rule(ctx, SCMP_ACT_ERRNO(ENOSYS), "clone3", 0, NULL, errp) < 0)
        return -1;
    for (size_t i = 0; i < sizeof(ns_flags) / sizeof(ns_flags[0]); i++) {
        a = SCMP_A0(SCMP_CMP_MASKED_EQ, ns_flags[i], ns_flags[i]);
        if (rule(ctx, SCMP_ACT_ERRNO(EPERM), "unshare", 1, &a, errp) < 0 ||
            rule(ctx, SCMP_ACT_ERRNO(EPERM), "clone", 1, &a, errp) < 0)
            return -1;
    }
    /* Faking terminal input into another session (CVE-2017-5226 in bubblewrap). */
    a = SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffu, TIOCSTI);
    if (rule(ctx, SCMP_ACT_ERRNO(EPERM), "ioctl", 1, &a, errp) < 0)
        return -1;
    a = SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffu, TIOCLINUX);
    if (rule(ctx, SCMP_ACT_ERRNO(EPERM), "ioctl", 1, &a, errp) < 0)
        return -1;
    return 0;
}

int
sandbox__seccomp_program(const struct sock_fprog **prog_out, struct err **errp)
{
    scmp_filter_ctx ctx;
    cleanup_close int mfd = -1;
    off_t size;
    int r;

    if (compiled.filter != NULL) {
        *prog_out = &compiled;
        return 0;
    }
    ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (ctx == NULL)
        return err_set(errp, ERR_INTERNAL, 0, "seccomp_init failed");
    /* Other architectures' system calls (i386, x32) are refused outright. */
    seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS);
    seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0);
    if (build(ctx, errp) < 0) {
        seccomp_release(ctx);
        return -1;
    }
    mfd = memfd_create("seccomp", MFD_CLOEXEC);
    if (mfd < 0) {
        seccomp_release(ctx);
        return err_set(errp, ERR_INTERNAL, errno, "memfd_create");
    }
    r = seccomp_export_bpf(ctx, mfd);
    seccomp_release(ctx);
    if (r < 0)
        return err_set(errp, ERR_INTERNAL, -r, "seccomp_export_bpf");
    size = lseek(mfd, 0, SEEK_END);
    if (size <= 0 || size % (off_t)sizeof(struct sock_filter) != 0 || size > 65536)
        return err_set(errp, ERR_INTERNAL, 0, "seccomp program has a bad size %lld",
                       (long long)size);
    compiled.filter = xmalloc((size_t)size);
    if (pread(mfd, compiled.filter, (size_t)size, 0) != size) {
        free(compiled.filter);
        compiled.filter = NULL;
        return err_set(errp, ERR_INTERNAL, errno, "read seccomp program");
    }
    compiled.len = (unsigned short)(size / (off_t)sizeof(struct sock_filter));
    *prog_out = &compiled;
    return 0;
}

int
sandbox__seccomp_load(const struct sock_fprog *prog)
{
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, prog);
}
