/*
 * probe: a small, statically linked program that the integration tests push into a sandbox and run
 * there to look at the sandbox from the inside. Each subcommand prints one line of JSON on stdout
 * and exits 0 when the probe itself ran; the tests decide whether the result is acceptable.
 * `connect`, `connect-unix`, `write` and `openw` also exit 1 when the operation failed.
 *
 * Nothing here is clever on purpose: every check is a plain syscall whose result is reported as an
 * errno name ("OK" on success), so a failing test shows exactly what the sandbox allowed. Where
 * nothing blocks them these checks really mount, unshare and fork, so the attack subcommands
 * refuse to run as root on the host itself unless PROBE_ON_HOST=1 is set.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/swap.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <sys/wait.h>

#include <linux/bpf.h>
#include <linux/io_uring.h>
#include <linux/keyctl.h>
#include <linux/perf_event.h>
#include <linux/userfaultfd.h>

/* Namespace flags that older headers may lack. */
#ifndef CLONE_NEWCGROUP
#define CLONE_NEWCGROUP 0x02000000
#endif
#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

/* The clone3 argument block, version 0 (64 bytes); declared here to avoid header clashes. */
struct probe_clone_args {
    uint64_t flags;
    uint64_t pidfd;
    uint64_t child_tid;
    uint64_t parent_tid;
    uint64_t exit_signal;
    uint64_t stack;
    uint64_t stack_size;
    uint64_t tls;
};

struct errname {
    int code;
    const char *name;
};

static const struct errname errnames[] = {
    { EPERM, "EPERM" },
    { ENOENT, "ENOENT" },
    { ESRCH, "ESRCH" },
    { EINTR, "EINTR" },
    { EIO, "EIO" },
    { ENXIO, "ENXIO" },
    { E2BIG, "E2BIG" },
    { ENOEXEC, "ENOEXEC" },
    { EBADF, "EBADF" },
    { ECHILD, "ECHILD" },
    { EAGAIN, "EAGAIN" },
    { ENOMEM, "ENOMEM" },
    { EACCES, "EACCES" },
    { EFAULT, "EFAULT" },
    { EBUSY, "EBUSY" },
    { EEXIST, "EEXIST" },
    { EXDEV, "EXDEV" },
    { ENODEV, "ENODEV" },
    { ENOTDIR, "ENOTDIR" },
    { EISDIR, "EISDIR" },
    { EINVAL, "EINVAL" },
    { ENFILE, "ENFILE" },
    { EMFILE, "EMFILE" },
    { ENOTTY, "ENOTTY" },
    { ETXTBSY, "ETXTBSY" },
    { EFBIG, "EFBIG" },
    { ENOSPC, "ENOSPC" },
    { ESPIPE, "ESPIPE" },
    { EROFS, "EROFS" },
    { EMLINK, "EMLINK" },
    { EPIPE, "EPIPE" },
    { ERANGE, "ERANGE" },
    { ENAMETOOLONG, "ENAMETOOLONG" },
    { ENOSYS, "ENOSYS" },
    { ENOTEMPTY, "ENOTEMPTY" },
    { ELOOP, "ELOOP" },
    { ENOKEY, "ENOKEY" },
    { EOPNOTSUPP, "EOPNOTSUPP" },
    { EAFNOSUPPORT, "EAFNOSUPPORT" },
    { EADDRINUSE, "EADDRINUSE" },
    { EADDRNOTAVAIL, "EADDRNOTAVAIL" },
    { ENETDOWN, "ENETDOWN" },
    { ENETUNREACH, "ENETUNREACH" },
    { ECONNRESET, "ECONNRESET" },
    { ETIMEDOUT, "ETIMEDOUT" },
    { ECONNREFUSED, "ECONNREFUSED" },
    { EHOSTUNREACH, "EHOSTUNREACH" },
    { EDQUOT, "EDQUOT" },
    { ESTALE, "ESTALE" },
};

/* Returns a stable name for an errno value ("OK" for 0), or "E<number>" for unknown values. */
static const char *
errname(int e)
{
    static char buf[32];

    if (e == 0)
        return "OK";
    if (e > 1000) {
        snprintf(buf, sizeof(buf), "SIGNAL_%d", e - 1000);
        return buf;
    }
    if (e == 199)
        return "CREATED_NOT_OPENABLE";
    if (e >= 200 && e < 256) {
        snprintf(buf, sizeof(buf), "SETUP_FAILED_%d", e);
        return buf;
    }
    for (size_t i = 0; i < sizeof(errnames) / sizeof(errnames[0]); i++) {
        if (errnames[i].code == e)
            return errnames[i].name;
    }
    snprintf(buf, sizeof(buf), "E%d", e);
    return buf;
}

/* Prints s as a JSON string literal, escaping everything outside printable ASCII. */
static void
jstr(const char *s)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p == '\n')
            fputs("\\n", stdout);
        else if (*p == '\t')
            fputs("\\t", stdout);
        else if (*p < 0x20 || *p >= 0x7f)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}

/* Prints `"key":"value"` with a leading comma unless it is the first member. */
static void
jkv(int *first, const char *key, const char *value)
{
    if (!*first)
        putchar(',');
    *first = 0;
    jstr(key);
    putchar(':');
    jstr(value);
}

/* Reads a whole (small) file into a static-size buffer; returns bytes read or -1 with errno. */
static ssize_t
read_small(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    size_t len = 0;

    if (fd < 0)
        return -1;
    while (len + 1 < cap) {
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n < 0) {
            int saved = errno;
            close(fd);
            errno = saved;
            return -1;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    close(fd);
    return (ssize_t)len;
}

/* Runs fn in a forked child and returns the errno it reported through its exit status. */
static int
in_child(int (*fn)(void))
{
    int status = 0;
    pid_t pid;

    fflush(stdout);
    pid = fork();
    if (pid < 0)
        return errno;
    if (pid == 0)
        _exit(fn() & 0xff);
    if (waitpid(pid, &status, 0) < 0)
        return errno;
    if (WIFSIGNALED(status))
        return 1000 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

/* ---- uidmap, hostname ---- */

/* Prints the lines of an id map file as a JSON array of [inside, outside, count] triples. */
static void
print_idmap(const char *path)
{
    char buf[4096];
    const char *p = buf;
    int first = 1;

    putchar('[');
    if (read_small(path, buf, sizeof(buf)) >= 0) {
        while (*p) {
            unsigned long long in, out, count;
            int used = 0;
            if (sscanf(p, "%llu %llu %llu%n", &in, &out, &count, &used) != 3)
                break;
            printf("%s[%llu,%llu,%llu]", first ? "" : ",", in, out, count);
            first = 0;
            p += used;
            while (*p == '\n' || *p == ' ')
                p++;
        }
    }
    putchar(']');
}

static int
cmd_uidmap(void)
{
    printf("{\"uid_map\":");
    print_idmap("/proc/self/uid_map");
    printf(",\"gid_map\":");
    print_idmap("/proc/self/gid_map");
    printf(",\"uid\":%u,\"euid\":%u,\"gid\":%u,\"egid\":%u}\n", getuid(), geteuid(), getgid(),
           getegid());
    return 0;
}

static int
cmd_hostname(void)
{
    struct utsname u;
    int first = 1;

    if (uname(&u) < 0)
        return 2;
    putchar('{');
    jkv(&first, "hostname", u.nodename);
    jkv(&first, "domainname", u.domainname);
    printf("}\n");
    return 0;
}

/* ---- seccomp and kernel attack surface ---- */

static int
try_mount(void)
{
    /* A fresh tmpfs on a fresh directory: this succeeds for anyone with CAP_SYS_ADMIN in the
     * user namespace that owns the mount namespace, so a blocked result really means blocked. */
    const char *dir = "/tmp/.probe-mnt";
    long rc;

    mkdir(dir, 0700);
    rc = mount("probe", dir, "tmpfs", 0, "size=1m");
    if (rc == 0) {
        umount2(dir, MNT_DETACH);
        rmdir(dir);
        return 0;
    }
    rmdir(dir);
    return errno;
}

static int
try_umount2(void)
{
    /* Unknown flags: the kernel itself says EINVAL, so anything else came from the filter. */
    return syscall(SYS_umount2, "/proc", 0x80000000) < 0 ? errno : 0;
}

static int
try_pivot_root(void)
{
    /* Paths that do not exist, so even an unfiltered call cannot change anything. */
    return syscall(SYS_pivot_root, "/.probe-none-new", "/.probe-none-old") < 0 ? errno : 0;
}

static int
try_io_uring_setup(void)
{
    struct io_uring_params p;
    long fd;

    memset(&p, 0, sizeof(p));
    fd = syscall(SYS_io_uring_setup, 4, &p);
    if (fd >= 0) {
        close((int)fd);
        return 0;
    }
    return errno;
}

static int
try_bpf(void)
{
    union bpf_attr attr;
    long fd;

    memset(&attr, 0, sizeof(attr));
    attr.map_type = BPF_MAP_TYPE_ARRAY;
    attr.key_size = 4;
    attr.value_size = 4;
    attr.max_entries = 1;
    fd = syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof(attr));
    if (fd >= 0) {
        close((int)fd);
        return 0;
    }
    return errno;
}

static int
try_perf_event_open(void)
{
    struct perf_event_attr attr;
    long fd;

    memset(&attr, 0, sizeof(attr));
    attr.size = sizeof(attr);
    attr.type = PERF_TYPE_SOFTWARE;
    attr.config = PERF_COUNT_SW_TASK_CLOCK;
    attr.exclude_kernel = 1;
    attr.exclude_hv = 1;
    fd = syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0);
    if (fd >= 0) {
        close((int)fd);
        return 0;
    }
    return errno;
}

static int
try_userfaultfd(void)
{
    long fd = syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);

    if (fd >= 0) {
        close((int)fd);
        return 0;
    }
    return errno;
}

static int
try_open_by_handle_at(void)
{
    union {
        struct file_handle fh;
        char buf[sizeof(struct file_handle) + MAX_HANDLE_SZ];
    } h;
    int mount_id = 0;
    long fd;

    memset(&h, 0, sizeof(h));
    h.fh.handle_bytes = MAX_HANDLE_SZ;
    if (name_to_handle_at(AT_FDCWD, "/", &h.fh, &mount_id, 0) < 0) {
        /* Still try with an empty handle: the filter must reject the call itself. */
        h.fh.handle_bytes = 8;
        h.fh.handle_type = 1;
    }
    fd = open_by_handle_at(AT_FDCWD, &h.fh, O_RDONLY);
    if (fd >= 0) {
        close((int)fd);
        return 0;
    }
    return errno;
}

/* Opens a pty pair, makes the slave our controlling terminal and pushes a byte with TIOCSTI. */
static int
try_tiocsti_child(void)
{
    int master, slave;
    char c = '#';

    if (setsid() < 0)
        return 200;
    master = posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0)
        return 201;
    if (grantpt(master) < 0 || unlockpt(master) < 0)
        return 202;
    slave = open(ptsname(master), O_RDWR);
    if (slave < 0)
        return 203;
    ioctl(slave, TIOCSCTTY, 0);
    return ioctl(slave, TIOCSTI, &c) < 0 ? errno : 0;
}

static int
try_setns(void)
{
    int fd = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    long rc;

    if (fd < 0)
        return 210;
    rc = syscall(SYS_setns, fd, CLONE_NEWNET);
    close(fd);
    return rc < 0 ? errno : 0;
}

static int
try_mknod_blk(void)
{
    const char *path = "/tmp/.probe-blk";
    int rc = mknod(path, S_IFBLK | 0600, makedev(7, 0));

    if (rc == 0) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        int e = fd < 0 ? errno : 0;
        if (fd >= 0)
            close(fd);
        unlink(path);
        /* Creating the node is harmless as long as it cannot be opened. */
        return e == 0 ? 0 : 199;
    }
    return errno;
}

/* The namespace flags that no sandbox process may create. */
static const struct {
    int flag;
    const char *name;
} ns_flags[] = {
    { CLONE_NEWUSER, "user" },     { CLONE_NEWNS, "mnt" },    { CLONE_NEWPID, "pid" },
    { CLONE_NEWNET, "net" },       { CLONE_NEWUTS, "uts" },   { CLONE_NEWIPC, "ipc" },
    { CLONE_NEWCGROUP, "cgroup" }, { CLONE_NEWTIME, "time" }, /* clone(2) cannot express it (it
                                                                 overlaps CSIGNAL). */
};

static int current_ns_flag;

static int
unshare_child(void)
{
    return unshare(current_ns_flag) < 0 ? errno : 0;
}

/* clone(2) with a namespace flag, fork-like (no new stack); returns the errno name. */
static int
clone_ns(int flag)
{
    int status = 0;
    long pid = syscall(SYS_clone, (unsigned long)flag | SIGCHLD, 0, 0, 0, 0);

    if (pid < 0)
        return errno;
    if (pid == 0)
        _exit(0);
    waitpid((pid_t)pid, &status, 0);
    return 0;
}

static int
clone3_flags(uint64_t flags)
{
    struct probe_clone_args args;
    int status = 0;
    long pid;

    memset(&args, 0, sizeof(args));
    args.flags = flags;
    args.exit_signal = SIGCHLD;
    pid = syscall(SYS_clone3, &args, sizeof(args));
    if (pid < 0)
        return errno;
    if (pid == 0)
        _exit(0);
    waitpid((pid_t)pid, &status, 0);
    return 0;
}

static int
clone_child(void)
{
    return clone_ns(current_ns_flag);
}

static int
clone3_child(void)
{
    return clone3_flags((uint64_t)current_ns_flag);
}

/* Prints "unshare_<ns>", "clone_<ns>" and "clone3_<ns>" results for every namespace flag. */
static void
print_ns_results(int *first)
{
    char key[64];

    for (size_t i = 0; i < sizeof(ns_flags) / sizeof(ns_flags[0]); i++) {
        current_ns_flag = ns_flags[i].flag;
        snprintf(key, sizeof(key), "unshare_%s", ns_flags[i].name);
        jkv(first, key, errname(in_child(unshare_child)));
        if (ns_flags[i].flag != CLONE_NEWTIME) {
            snprintf(key, sizeof(key), "clone_%s", ns_flags[i].name);
            jkv(first, key, errname(in_child(clone_child)));
        }
        snprintf(key, sizeof(key), "clone3_%s", ns_flags[i].name);
        jkv(first, key, errname(in_child(clone3_child)));
    }
}

static int
try_swapon(void)
{
    return swapon("/.probe-no-swap", 0) < 0 ? errno : 0;
}

static int
try_swapoff(void)
{
    return swapoff("/.probe-no-swap") < 0 ? errno : 0;
}

static int
try_init_module(void)
{
    static char image[64];

    return syscall(SYS_init_module, image, sizeof(image), "") < 0 ? errno : 0;
}

static int
try_finit_module(void)
{
    return syscall(SYS_finit_module, -1, "", 0) < 0 ? errno : 0;
}

static int
try_delete_module(void)
{
    return syscall(SYS_delete_module, "probe_no_such_module", O_NONBLOCK) < 0 ? errno : 0;
}

static int
try_kexec_load(void)
{
    /* Unknown flag bits: an unfiltered privileged call gets EINVAL and loads nothing. */
    return syscall(SYS_kexec_load, 0UL, 0UL, NULL, 0xf0UL) < 0 ? errno : 0;
}

static int
try_kexec_file_load(void)
{
    return syscall(SYS_kexec_file_load, -1, -1, 0UL, "", 0UL) < 0 ? errno : 0;
}

static int
try_keyctl(void)
{
    return syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0) < 0 ? errno : 0;
}

static int
try_add_key(void)
{
    return syscall(SYS_add_key, "user", "probe", "x", 1, KEY_SPEC_PROCESS_KEYRING) < 0 ? errno : 0;
}

static int
try_request_key(void)
{
    /* Unfiltered, this looks for a key that does not exist: ENOKEY. */
    return syscall(SYS_request_key, "user", "probe-none", NULL, 0) < 0 ? errno : 0;
}

static int
try_io_uring_enter(void)
{
    return syscall(SYS_io_uring_enter, -1, 0, 0, 0, NULL, 0) < 0 ? errno : 0;
}

static int
try_io_uring_register(void)
{
    return syscall(SYS_io_uring_register, -1, 0, NULL, 0) < 0 ? errno : 0;
}

static int
try_getpid(void)
{
    return getpid() > 0 ? 0 : EINVAL;
}

static int
try_fork(void)
{
    int status = 0;
    pid_t pid = fork();

    if (pid < 0)
        return errno;
    if (pid == 0)
        _exit(0);
    return waitpid(pid, &status, 0) < 0 ? errno : 0;
}

static int
try_clone3_plain(void)
{
    return clone3_flags(0);
}

static const struct attempt {
    const char *name;
    int (*fn)(void);
} attempts[] = {
    { "mount", try_mount },
    { "umount2", try_umount2 },
    { "pivot_root", try_pivot_root },
    { "swapon", try_swapon },
    { "swapoff", try_swapoff },
    { "init_module", try_init_module },
    { "finit_module", try_finit_module },
    { "delete_module", try_delete_module },
    { "kexec_load", try_kexec_load },
    { "kexec_file_load", try_kexec_file_load },
    { "bpf", try_bpf },
    { "perf_event_open", try_perf_event_open },
    { "keyctl", try_keyctl },
    { "add_key", try_add_key },
    { "request_key", try_request_key },
    { "userfaultfd", try_userfaultfd },
    { "open_by_handle_at", try_open_by_handle_at },
    { "io_uring_setup", try_io_uring_setup },
    { "io_uring_enter", try_io_uring_enter },
    { "io_uring_register", try_io_uring_register },
    { "setns", try_setns },
    { "tiocsti", try_tiocsti_child },
    { "mknod_blk", try_mknod_blk },
    /* Controls: ordinary calls that must keep working. */
    { "getpid", try_getpid },
    { "fork", try_fork },
    { "clone3_plain", try_clone3_plain },
};

/* Every attempt runs in its own child, so a filter that kills (SIGSYS) shows up as a result
 * ("SIGNAL_31") instead of ending the probe. */
static int
cmd_seccomp(void)
{
    int first = 1;

    putchar('{');
    for (size_t i = 0; i < sizeof(attempts) / sizeof(attempts[0]); i++) {
        jkv(&first, attempts[i].name, errname(in_child(attempts[i].fn)));
    }
    print_ns_results(&first);
    printf("}\n");
    return 0;
}

static int
cmd_userns(void)
{
    char buf[64] = "";
    int first = 1;

    current_ns_flag = CLONE_NEWUSER;
    putchar('{');
    jkv(&first, "unshare", errname(in_child(unshare_child)));
    jkv(&first, "clone", errname(in_child(clone_child)));
    jkv(&first, "clone3", errname(in_child(clone3_child)));
    if (read_small("/proc/sys/user/max_user_namespaces", buf, sizeof(buf)) > 0)
        buf[strcspn(buf, "\n")] = '\0';
    jkv(&first, "max_user_namespaces", buf);
    printf("}\n");
    return 0;
}

static int
cmd_tiocsti(void)
{
    printf("{\"tiocsti\":\"%s\"}\n", errname(in_child(try_tiocsti_child)));
    return 0;
}

/* ---- caps, fds, procs ---- */

static int
cmd_caps(void)
{
    static const char *const keys[] = { "CapInh", "CapPrm",     "CapEff",  "CapBnd",
                                        "CapAmb", "NoNewPrivs", "Seccomp", "Seccomp_filters",
                                        "Uid",    "Gid" };
    char buf[8192];
    int first = 1;

    if (read_small("/proc/self/status", buf, sizeof(buf)) < 0)
        return 2;
    putchar('{');
    for (char *line = buf; *line;) {
        char *nl = strchr(line, '\n');
        char *colon = strchr(line, ':');
        if (nl)
            *nl = '\0';
        if (colon) {
            *colon = '\0';
            for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
                if (strcmp(line, keys[i]) == 0) {
                    char *v = colon + 1;
                    while (*v == ' ' || *v == '\t')
                        v++;
                    jkv(&first, keys[i], v);
                }
            }
        }
        if (!nl)
            break;
        line = nl + 1;
    }
    printf("}\n");
    return 0;
}

/* Lists the open fds of a process (default: self), excluding the one used for the listing. */
static int
cmd_fds(int argc, char **argv)
{
    char dir[64], link[PATH_MAX + 1], path[384];
    const char *pid = argc > 0 ? argv[0] : "self";
    DIR *d;
    struct dirent *e;
    int first = 1;

    snprintf(dir, sizeof(dir), "/proc/%s/fd", pid);
    d = opendir(dir);
    if (!d) {
        printf("{\"error\":\"%s\"}\n", errname(errno));
        return 0;
    }
    printf("{\"fds\":[");
    while ((e = readdir(d)) != NULL) {
        ssize_t n;
        if (e->d_name[0] == '.')
            continue;
        if (strcmp(pid, "self") == 0 && strtol(e->d_name, NULL, 10) == dirfd(d))
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        n = readlink(path, link, sizeof(link) - 1);
        link[n < 0 ? 0 : n] = '\0';
        printf("%s{\"fd\":%s,\"target\":", first ? "" : ",", e->d_name);
        jstr(link);
        putchar('}');
        first = 0;
    }
    closedir(d);
    printf("]}\n");
    return 0;
}

static int
cmd_procs(void)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    int first = 1;

    if (!d) {
        printf("{\"error\":\"%s\"}\n", errname(errno));
        return 0;
    }
    printf("{\"self\":%d,\"procs\":[", (int)getpid());
    while ((e = readdir(d)) != NULL) {
        char path[300], comm[64] = "", stat[512] = "", cmdline[4096] = "";
        char state = '?';
        ssize_t n;
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof(path), "/proc/%s/comm", e->d_name);
        n = read_small(path, comm, sizeof(comm));
        if (n > 0 && comm[n - 1] == '\n')
            comm[n - 1] = '\0';
        snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
        if (read_small(path, stat, sizeof(stat)) > 0) {
            char *rp = strrchr(stat, ')');
            if (rp && rp[1] == ' ')
                state = rp[2];
        }
        printf("%s{\"pid\":%s,\"state\":\"%c\",\"comm\":", first ? "" : ",", e->d_name, state);
        jstr(comm);
        snprintf(path, sizeof(path), "/proc/%s/cmdline", e->d_name);
        n = read_small(path, cmdline, sizeof(cmdline));
        for (ssize_t i = 0; i + 1 < n; i++) {
            if (cmdline[i] == '\0')
                cmdline[i] = ' ';
        }
        printf(",\"cmdline\":");
        jstr(n > 0 ? cmdline : "");
        putchar('}');
        first = 0;
    }
    closedir(d);
    printf("]}\n");
    return 0;
}

/* ---- paths ---- */

/* FNV-1a 64 over a file's content, so tests can compare it with a host file without copying. */
static int
fnv_file(const char *path, uint64_t *hash_out, long long *size_out)
{
    unsigned char buf[65536];
    uint64_t h = 1469598103934665603ULL;
    long long size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    ssize_t n;

    if (fd < 0)
        return errno;
    while ((n = read(fd, buf, sizeof(buf))) > 0) {
        for (ssize_t i = 0; i < n; i++) {
            h ^= buf[i];
            h *= 1099511628211ULL;
        }
        size += n;
        if (size > (64LL << 20))
            break;
    }
    if (n < 0) {
        int e = errno;
        close(fd);
        return e;
    }
    close(fd);
    *hash_out = h;
    *size_out = size;
    return 0;
}

static const char *
type_name(mode_t m)
{
    if (S_ISREG(m))
        return "file";
    if (S_ISDIR(m))
        return "dir";
    if (S_ISLNK(m))
        return "symlink";
    if (S_ISSOCK(m))
        return "socket";
    if (S_ISFIFO(m))
        return "fifo";
    if (S_ISCHR(m))
        return "chr";
    if (S_ISBLK(m))
        return "blk";
    return "other";
}

/* Prints the entries of a directory (at most 200) as a JSON array of names. */
static void
print_entries(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *e;
    int first = 1, count = 0;

    putchar('[');
    if (d) {
        while ((e = readdir(d)) != NULL && count < 200) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            if (!first)
                putchar(',');
            jstr(e->d_name);
            first = 0;
            count++;
        }
        closedir(d);
    }
    putchar(']');
}

/* Describes one path: lstat result, type, owner, mode, and for files a content hash, for
 * directories their entries. */
static void
print_path(const char *path)
{
    struct stat st;

    jstr(path);
    putchar(':');
    if (lstat(path, &st) < 0) {
        printf("{\"exists\":false,\"errno\":\"%s\"}", errname(errno));
        return;
    }
    printf("{\"exists\":true,\"type\":\"%s\",\"uid\":%u,\"gid\":%u,\"mode\":\"%04o\"",
           type_name(st.st_mode), st.st_uid, st.st_gid, (unsigned)(st.st_mode & 07777));
    if (S_ISREG(st.st_mode)) {
        uint64_t h = 0;
        long long size = 0;
        int e = fnv_file(path, &h, &size);
        if (e == 0)
            printf(",\"fnv\":\"%016llx\",\"size\":%lld", (unsigned long long)h, size);
        else
            printf(",\"read\":\"%s\"", errname(e));
    } else if (S_ISDIR(st.st_mode)) {
        printf(",\"entries\":");
        print_entries(path);
    } else if (S_ISLNK(st.st_mode)) {
        char target[PATH_MAX + 1];
        ssize_t n = readlink(path, target, sizeof(target) - 1);
        target[n < 0 ? 0 : n] = '\0';
        printf(",\"target\":");
        jstr(target);
    }
    putchar('}');
}

static int
cmd_paths(int argc, char **argv)
{
    static const char *const defaults[] = { "/root",        "/home",
                                            "/etc/shadow",  "/etc/gshadow",
                                            "/var",         "/run",
                                            "/tmp",         "/mnt",
                                            "/media",       "/srv",
                                            "/boot",        "/sys",
                                            "/dev",         "/var/run/docker.sock",
                                            "/run/systemd", "/var/lib",
                                            "/proc/1/root", "/lost+found" };
    int first = 1;

    printf("{\"paths\":{");
    for (size_t i = 0; i < sizeof(defaults) / sizeof(defaults[0]); i++) {
        if (!first)
            putchar(',');
        first = 0;
        print_path(defaults[i]);
    }
    for (int i = 0; i < argc; i++) {
        putchar(',');
        print_path(argv[i]);
    }
    printf("}}\n");
    return 0;
}

/* ---- network ---- */

/* Connects fd to addr with a 2 s timeout; returns 0 or an errno value. */
static int
connect_timeout(int fd, const struct sockaddr *addr, socklen_t len)
{
    struct pollfd pfd = { .fd = fd, .events = POLLOUT };
    int err = 0;
    socklen_t errlen = sizeof(err);
    int flags = fcntl(fd, F_GETFL);

    fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    if (connect(fd, addr, len) == 0)
        return 0;
    if (errno != EINPROGRESS)
        return errno;
    if (poll(&pfd, 1, 2000) == 0)
        return ETIMEDOUT;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &errlen) < 0)
        return errno;
    return err;
}

static int
cmd_connect(int argc, char **argv)
{
    struct sockaddr_storage ss;
    socklen_t len;
    char host[256];
    const char *colon;
    long port;
    int fd, e;

    if (argc < 1 || !(colon = strrchr(argv[0], ':')) || (size_t)(colon - argv[0]) >= sizeof(host))
        return 2;
    memcpy(host, argv[0], (size_t)(colon - argv[0]));
    host[colon - argv[0]] = '\0';
    port = strtol(colon + 1, NULL, 10);
    memset(&ss, 0, sizeof(ss));
    if (host[0] == '[') {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        host[strcspn(host, "]")] = '\0';
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host + 1, &s6->sin6_addr) != 1)
            return 2;
        len = sizeof(*s6);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &s4->sin_addr) != 1)
            return 2;
        len = sizeof(*s4);
    }
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    e = fd < 0 ? errno : connect_timeout(fd, (struct sockaddr *)&ss, len);
    printf("{\"connect\":\"%s\"}\n", errname(e));
    return e == 0 ? 0 : 1;
}

/* Connects to a unix socket path; a leading '@' means the abstract namespace. */
static int
cmd_connect_unix(int argc, char **argv)
{
    struct sockaddr_un sun;
    socklen_t len;
    size_t n;
    int fd, e;

    if (argc < 1 || (n = strlen(argv[0])) >= sizeof(sun.sun_path))
        return 2;
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    memcpy(sun.sun_path, argv[0], n);
    if (sun.sun_path[0] == '@')
        sun.sun_path[0] = '\0';
    len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    e = fd < 0 ? errno : connect_timeout(fd, (struct sockaddr *)&sun, len);
    printf("{\"connect\":\"%s\"}\n", errname(e));
    return e == 0 ? 0 : 1;
}

/* Prints the network interfaces (from /proc/net/dev) and the IPv4/IPv6 routes. */
static int
cmd_net(void)
{
    static char buf[65536];
    int first = 1, routes = 0;
    char *p;

    printf("{\"ifaces\":[");
    if (read_small("/proc/net/dev", buf, sizeof(buf)) > 0) {
        p = strchr(buf, '\n');
        p = p ? strchr(p + 1, '\n') : NULL;
        while (p && *++p) {
            char name[64];
            if (sscanf(p, " %63[^:]:", name) == 1) {
                printf("%s", first ? "" : ",");
                jstr(name);
                first = 0;
            }
            p = strchr(p, '\n');
        }
    }
    printf("],\"ipv4_routes\":[");
    first = 1;
    if (read_small("/proc/net/route", buf, sizeof(buf)) > 0) {
        p = strchr(buf, '\n');
        while (p && *++p) {
            char name[64], dst[16];
            if (sscanf(p, "%63s %15s", name, dst) == 2) {
                printf("%s[", first ? "" : ",");
                jstr(name);
                putchar(',');
                jstr(dst);
                putchar(']');
                first = 0;
                routes++;
            }
            p = strchr(p, '\n');
        }
    }
    printf("],\"ipv6_routes\":[");
    first = 1;
    if (read_small("/proc/net/ipv6_route", buf, sizeof(buf)) > 0) {
        for (p = buf; p && *p;) {
            char f[10][64];
            if (sscanf(p, "%63s %63s %63s %63s %63s %63s %63s %63s %63s %63s", f[0], f[1], f[2],
                       f[3], f[4], f[5], f[6], f[7], f[8], f[9]) == 10) {
                printf("%s[", first ? "" : ",");
                jstr(f[9]);
                putchar(',');
                jstr(f[0]);
                putchar(']');
                first = 0;
            }
            p = strchr(p, '\n');
            if (p)
                p++;
        }
    }
    printf("]}\n");
    return 0;
}

/* ---- files ---- */

static int
cmd_write(int argc, char **argv)
{
    const char *content = argc > 1 ? argv[1] : "probe\n";
    size_t len = strlen(content);
    int fd, e = 0;

    if (argc < 1)
        return 2;
    fd = open(argv[0], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        e = errno;
    else if (write(fd, content, len) != (ssize_t)len)
        e = errno ? errno : EIO;
    if (fd >= 0 && close(fd) < 0 && e == 0)
        e = errno;
    printf("{\"write\":\"%s\"}\n", errname(e));
    return e == 0 ? 0 : 1;
}

/* Appends a line to a file (never truncates), for checks on files that must stay intact. */
static int
cmd_append(int argc, char **argv)
{
    int fd, e = 0;
    size_t len;

    if (argc < 2)
        return 2;
    len = strlen(argv[1]);
    fd = open(argv[0], O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0)
        e = errno;
    else if (write(fd, argv[1], len) != (ssize_t)len)
        e = errno ? errno : EIO;
    if (fd >= 0)
        close(fd);
    printf("{\"append\":\"%s\"}\n", errname(e));
    return e == 0 ? 0 : 1;
}

/* Opens a path for writing without writing anything (safe for /proc/sysrq-trigger & co). */
static int
cmd_openw(int argc, char **argv)
{
    int first = 1;

    putchar('{');
    for (int i = 0; i < argc; i++) {
        int fd = open(argv[i], O_WRONLY | O_CLOEXEC | O_NOCTTY);
        jkv(&first, argv[i], fd < 0 ? errname(errno) : "OK");
        if (fd >= 0)
            close(fd);
    }
    printf("}\n");
    return 0;
}

static int
cmd_stat(int argc, char **argv)
{
    int first = 1;

    printf("{\"paths\":{");
    for (int i = 0; i < argc; i++) {
        if (!first)
            putchar(',');
        first = 0;
        print_path(argv[i]);
    }
    printf("}}\n");
    return 0;
}

/* ---- mounts, cgroup ---- */

static int
cmd_mounts(void)
{
    static char buf[1 << 18];
    int first = 1;

    if (read_small("/proc/self/mountinfo", buf, sizeof(buf)) < 0) {
        printf("{\"error\":\"%s\"}\n", errname(errno));
        return 0;
    }
    printf("{\"mounts\":[");
    for (char *line = buf; *line;) {
        char *nl = strchr(line, '\n');
        char root[1024], mnt[1024], opts[256], fstype[64], source[1024];
        char *sep;
        if (nl)
            *nl = '\0';
        sep = strstr(line, " - ");
        if (sep && sscanf(line, "%*s %*s %*s %1023s %1023s %255s", root, mnt, opts) == 3 &&
            sscanf(sep + 3, "%63s %1023s", fstype, source) == 2) {
            printf("%s{\"mountpoint\":", first ? "" : ",");
            jstr(mnt);
            printf(",\"root\":");
            jstr(root);
            printf(",\"fstype\":");
            jstr(fstype);
            printf(",\"source\":");
            jstr(source);
            printf(",\"options\":");
            jstr(opts);
            putchar('}');
            first = 0;
        }
        if (!nl)
            break;
        line = nl + 1;
    }
    printf("]}\n");
    return 0;
}

static int
cmd_cgroup(void)
{
    char buf[8192];
    int first = 1;

    printf("{\"cgroup\":[");
    if (read_small("/proc/self/cgroup", buf, sizeof(buf)) >= 0) {
        for (char *line = buf; *line;) {
            char *nl = strchr(line, '\n');
            if (nl)
                *nl = '\0';
            if (*line) {
                printf("%s", first ? "" : ",");
                jstr(line);
                first = 0;
            }
            if (!nl)
                break;
            line = nl + 1;
        }
    }
    printf("]}\n");
    return 0;
}

/* ---- bombs ---- */

/* Forks children that just wait, until fork fails; holds them for HOLD seconds (default 0), then
 * kills them and reports how many it got. */
static int
cmd_forkbomb(int argc, char **argv)
{
    long max = argc > 0 ? strtol(argv[0], NULL, 10) : 100000;
    long hold = argc > 1 ? strtol(argv[1], NULL, 10) : 0;
    pid_t *pids = calloc((size_t)max, sizeof(pid_t));
    long n = 0;
    int e = 0;

    if (!pids)
        return 2;
    while (n < max) {
        pid_t pid = fork();
        if (pid < 0) {
            e = errno;
            break;
        }
        if (pid == 0) {
            for (;;)
                pause();
        }
        pids[n++] = pid;
    }
    if (hold > 0)
        sleep((unsigned)hold);
    for (long i = 0; i < n; i++)
        kill(pids[i], SIGKILL);
    for (long i = 0; i < n; i++)
        waitpid(pids[i], NULL, 0);
    printf("{\"forked\":%ld,\"errno\":\"%s\"}\n", n, errname(e));
    free(pids);
    return 0;
}

/* Allocates and touches memory 1 MiB at a time, up to a cap (MiB) so a missing limit cannot take
 * the host down. Exits 0 only if the whole cap was allocated, which means no limit held. */
static int
cmd_membomb(int argc, char **argv)
{
    long cap = argc > 0 ? strtol(argv[0], NULL, 10) : 1024;
    long got = 0;

    for (; got < cap; got++) {
        char *p = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            printf("{\"allocated_mb\":%ld,\"errno\":\"%s\"}\n", got, errname(errno));
            return 0;
        }
        for (size_t i = 0; i < (1 << 20); i += 4096)
            p[i] = (char)(i + 1);
    }
    printf("{\"allocated_mb\":%ld,\"errno\":\"OK\"}\n", got);
    return 0;
}

/* Writes incompressible data to PATH in 1 MiB blocks until a write (or the final fsync) fails or
 * the cap (MiB, default 1024) is reached. */
static int
cmd_diskfill(int argc, char **argv)
{
    static uint64_t block[(1 << 20) / sizeof(uint64_t)];
    long cap = argc > 1 ? strtol(argv[1], NULL, 10) : 1024;
    uint64_t x = 0x9e3779b97f4a7c15ULL ^ (uint64_t)getpid();
    long long written = 0;
    const char *where = "write";
    int fd, e = 0;

    if (argc < 1)
        return 2;
    fd = open(argv[0], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        printf("{\"written\":0,\"errno\":\"%s\",\"where\":\"open\"}\n", errname(errno));
        return 0;
    }
    while (written < ((long long)cap << 20)) {
        size_t off = 0;
        for (size_t i = 0; i < sizeof(block) / sizeof(block[0]); i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            block[i] = x;
        }
        while (off < sizeof(block)) {
            ssize_t n = write(fd, (const char *)block + off, sizeof(block) - off);
            if (n < 0) {
                e = errno;
                break;
            }
            off += (size_t)n;
            written += n;
        }
        if (e)
            break;
    }
    if (e == 0 && fsync(fd) < 0) {
        e = errno;
        where = "fsync";
    }
    if (close(fd) < 0 && e == 0) {
        e = errno;
        where = "close";
    }
    printf("{\"written\":%lld,\"errno\":\"%s\",\"where\":\"%s\"}\n", written, errname(e), where);
    return 0;
}

/* Starts a classic double-forked daemon (new session, stdio on /dev/null, ignores SIGTERM and
 * SIGHUP, comm "pdk_daemon") that writes its pid to FILE, and returns at once. */
static int
cmd_daemonize(int argc, char **argv)
{
    pid_t pid;
    int status = 0;

    if (argc < 1)
        return 2;
    pid = fork();
    if (pid < 0)
        return 2;
    if (pid == 0) {
        if (setsid() < 0)
            _exit(3);
        pid = fork();
        if (pid != 0)
            _exit(pid < 0 ? 4 : 0);
        int fd = open("/dev/null", O_RDWR);
        if (fd >= 0) {
            dup2(fd, 0);
            dup2(fd, 1);
            dup2(fd, 2);
            if (fd > 2)
                close(fd);
        }
        signal(SIGTERM, SIG_IGN);
        signal(SIGHUP, SIG_IGN);
        signal(SIGINT, SIG_IGN);
        prctl(PR_SET_NAME, "pdk_daemon", 0, 0, 0);
        char buf[32];
        int n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
        fd = open(argv[0], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd >= 0) {
            if (write(fd, buf, (size_t)n) < 0)
                _exit(5);
            close(fd);
        }
        for (;;)
            pause();
    }
    waitpid(pid, &status, 0);
    printf("{\"daemonized\":%s}\n",
           WIFEXITED(status) && WEXITSTATUS(status) == 0 ? "true" : "false");
    return 0;
}

/* Sleeps forever under a recognisable name (comm NAME, default "pdk_sleeper"), ignoring SIGTERM
 * and SIGHUP so that only SIGKILL ends it. */
static int
cmd_sleeper(int argc, char **argv)
{
    prctl(PR_SET_NAME, argc > 0 ? argv[0] : "pdk_sleeper", 0, 0, 0);
    signal(SIGTERM, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    for (;;)
        pause();
    return 0;
}

/* ---- ptrace and /proc/PID/exe ---- */

/* Tries to attach to every other process in the sandbox that is not our own descendant (init and
 * paddock's handlers), and to open their /proc/PID/exe; reports errno names per pid. */
static int
cmd_ptrace(int argc, char **argv)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    int first = 1;
    pid_t self = getpid(), parent = getppid();

    (void)argc;
    (void)argv;
    if (!d) {
        printf("{\"error\":\"%s\"}\n", errname(errno));
        return 0;
    }
    printf("{\"procs\":[");
    while ((e = readdir(d)) != NULL) {
        char path[300], comm[64] = "";
        long pid;
        int attach, exe_r, exe_w, fd;
        ssize_t n;

        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        pid = strtol(e->d_name, NULL, 10);
        if (pid == self || pid == parent)
            continue;
        snprintf(path, sizeof(path), "/proc/%ld/comm", pid);
        n = read_small(path, comm, sizeof(comm));
        if (n > 0 && comm[n - 1] == '\n')
            comm[n - 1] = '\0';
        attach = ptrace(PTRACE_ATTACH, (pid_t)pid, NULL, NULL) < 0 ? errno : 0;
        if (attach == 0) {
            waitpid((pid_t)pid, NULL, __WALL);
            ptrace(PTRACE_DETACH, (pid_t)pid, NULL, NULL);
        }
        snprintf(path, sizeof(path), "/proc/%ld/exe", pid);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        exe_r = fd < 0 ? errno : 0;
        if (fd >= 0)
            close(fd);
        fd = open(path, O_WRONLY | O_CLOEXEC);
        exe_w = fd < 0 ? errno : 0;
        if (fd >= 0)
            close(fd);
        printf("%s{\"pid\":%ld,\"comm\":", first ? "" : ",", pid);
        jstr(comm);
        printf(",\"attach\":\"%s\"", errname(attach));
        printf(",\"exe_read\":\"%s\"", errname(exe_r));
        printf(",\"exe_write\":\"%s\"}", errname(exe_w));
        first = 0;
    }
    closedir(d);
    printf("]}\n");
    return 0;
}

/* ---- compat syscall entry points (x86-64 only) ---- */

#if defined(__x86_64__)
/* The i386 entry (int 0x80) from a 64-bit process: a filter that only knows x86-64 numbers would
 * let these through. Arguments must be 32-bit addresses, hence the MAP_32BIT buffer. */
static long
int80(long nr, long a, long b, long c, long d, long e)
{
    long ret;

    __asm__ volatile("int $0x80"
                     : "=a"(ret)
                     : "a"(nr), "b"(a), "c"(b), "d"(c), "S"(d), "D"(e)
                     : "memory", "r8", "r9", "r10", "r11");
    return (int)ret;
}

static char *low_buf; /* 64 KiB below 4 GiB */

/* i386 syscall numbers. */
enum {
    I386_MOUNT = 21,
    I386_UMOUNT2 = 52,
    I386_CLONE = 120,
    I386_INIT_MODULE = 128,
    I386_PIVOT_ROOT = 217,
    I386_KEXEC_LOAD = 283,
    I386_ADD_KEY = 286,
    I386_KEYCTL = 288,
    I386_UNSHARE = 310,
    I386_PERF_EVENT_OPEN = 336,
    I386_SETNS = 346,
    I386_BPF = 357,
    I386_USERFAULTFD = 374,
    I386_IO_URING_SETUP = 425,
    I386_CLONE3 = 435,
};

static int
rc_errno(long rc)
{
    if (rc >= 0) {
        if (rc > 2 && rc < 1024)
            close((int)rc);
        return 0;
    }
    return (int)-rc;
}

static int
i386_mount(void)
{
    char *src = low_buf, *dst = low_buf + 64, *type = low_buf + 128;

    long rc;

    /* A fresh directory, as in try_mount(): success changes nothing anyone else sees. */
    memcpy(src, "probe", sizeof("probe"));
    memcpy(dst, "/tmp/.probe-mnt32", sizeof("/tmp/.probe-mnt32"));
    memcpy(type, "tmpfs", sizeof("tmpfs"));
    mkdir(dst, 0700);
    rc = int80(I386_MOUNT, (long)src, (long)dst, (long)type, 0, 0);
    if (rc == 0)
        umount2(dst, MNT_DETACH);
    rmdir(dst);
    return rc_errno(rc);
}

static int
i386_umount2(void)
{
    memcpy(low_buf, "/proc", sizeof("/proc"));
    return rc_errno(int80(I386_UMOUNT2, (long)low_buf, 0x80000000L, 0, 0, 0));
}

static int
i386_unshare_user(void)
{
    return rc_errno(int80(I386_UNSHARE, CLONE_NEWUSER, 0, 0, 0, 0));
}

static int
i386_unshare_mnt(void)
{
    return rc_errno(int80(I386_UNSHARE, CLONE_NEWNS, 0, 0, 0, 0));
}

static int
i386_clone_user(void)
{
    long rc = int80(I386_CLONE, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);

    if (rc == 0)
        _exit(0);
    if (rc > 0) {
        waitpid((pid_t)rc, NULL, 0);
        return 0;
    }
    return (int)-rc;
}

static int
i386_clone3_user(void)
{
    struct probe_clone_args *args = (struct probe_clone_args *)(void *)low_buf;
    long rc;

    memset(args, 0, sizeof(*args));
    args->flags = CLONE_NEWUSER;
    args->exit_signal = SIGCHLD;
    rc = int80(I386_CLONE3, (long)args, sizeof(*args), 0, 0, 0);
    if (rc == 0)
        _exit(0);
    if (rc > 0) {
        waitpid((pid_t)rc, NULL, 0);
        return 0;
    }
    return (int)-rc;
}

static int
i386_keyctl(void)
{
    return rc_errno(int80(I386_KEYCTL, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0, 0, 0));
}

static int
i386_add_key(void)
{
    memcpy(low_buf, "user", sizeof("user"));
    memcpy(low_buf + 16, "probe", sizeof("probe"));
    memcpy(low_buf + 32, "x", sizeof("x"));
    return rc_errno(int80(I386_ADD_KEY, (long)low_buf, (long)(low_buf + 16), (long)(low_buf + 32),
                          1, KEY_SPEC_PROCESS_KEYRING));
}

static int
i386_bpf(void)
{
    union bpf_attr *attr = (union bpf_attr *)(void *)low_buf;

    memset(attr, 0, sizeof(*attr));
    attr->map_type = BPF_MAP_TYPE_ARRAY;
    attr->key_size = 4;
    attr->value_size = 4;
    attr->max_entries = 1;
    return rc_errno(int80(I386_BPF, BPF_MAP_CREATE, (long)attr, sizeof(*attr), 0, 0));
}

static int
i386_perf_event_open(void)
{
    struct perf_event_attr *attr = (struct perf_event_attr *)(void *)low_buf;

    memset(attr, 0, sizeof(*attr));
    attr->size = sizeof(*attr);
    attr->type = PERF_TYPE_SOFTWARE;
    attr->config = PERF_COUNT_SW_TASK_CLOCK;
    attr->exclude_kernel = 1;
    attr->exclude_hv = 1;
    return rc_errno(int80(I386_PERF_EVENT_OPEN, (long)attr, 0, -1, -1, 0));
}

static int
i386_userfaultfd(void)
{
    return rc_errno(int80(I386_USERFAULTFD, O_CLOEXEC | UFFD_USER_MODE_ONLY, 0, 0, 0, 0));
}

static int
i386_io_uring_setup(void)
{
    struct io_uring_params *p = (struct io_uring_params *)(void *)low_buf;

    memset(p, 0, sizeof(*p));
    return rc_errno(int80(I386_IO_URING_SETUP, 4, (long)p, 0, 0, 0));
}

static int
i386_setns(void)
{
    int fd = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return 210;
    return rc_errno(int80(I386_SETNS, fd, CLONE_NEWNET, 0, 0, 0));
}

static int
i386_init_module(void)
{
    return rc_errno(int80(I386_INIT_MODULE, (long)low_buf, 64, (long)(low_buf + 128), 0, 0));
}

static int
i386_kexec_load(void)
{
    return rc_errno(int80(I386_KEXEC_LOAD, 0, 0, 0, 0xf0, 0));
}

static int
i386_pivot_root(void)
{
    memcpy(low_buf, "/.probe-none-new", sizeof("/.probe-none-new"));
    memcpy(low_buf + 64, "/.probe-none-old", sizeof("/.probe-none-old"));
    return rc_errno(int80(I386_PIVOT_ROOT, (long)low_buf, (long)(low_buf + 64), 0, 0, 0));
}

#define X32_BIT 0x40000000L

/* The x32 ABI: x86-64 numbers with bit 30 set (most kernels refuse them with ENOSYS). */
static int
x32_unshare_user(void)
{
    return syscall(X32_BIT | SYS_unshare, CLONE_NEWUSER) < 0 ? errno : 0;
}

static int
x32_keyctl(void)
{
    return syscall(X32_BIT | SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0) < 0
               ? errno
               : 0;
}

static int
x32_userfaultfd(void)
{
    long fd = syscall(X32_BIT | SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);

    if (fd >= 0) {
        close((int)fd);
        return 0;
    }
    return errno;
}

static int
x32_io_uring_setup(void)
{
    struct io_uring_params *p = (struct io_uring_params *)(void *)low_buf;
    long fd;

    memset(p, 0, sizeof(*p));
    fd = syscall(X32_BIT | SYS_io_uring_setup, 4, p);
    if (fd >= 0) {
        close((int)fd);
        return 0;
    }
    return errno;
}

static int
i386_getpid(void)
{
    /* Control: tells whether the i386 entry exists at all (20 is getpid). */
    return int80(20, 0, 0, 0, 0, 0) > 0 ? 0 : EINVAL;
}

static const struct attempt compat_attempts[] = {
    { "i386_getpid", i386_getpid },
    { "i386_mount", i386_mount },
    { "i386_umount2", i386_umount2 },
    { "i386_pivot_root", i386_pivot_root },
    { "i386_unshare_user", i386_unshare_user },
    { "i386_unshare_mnt", i386_unshare_mnt },
    { "i386_clone_user", i386_clone_user },
    { "i386_clone3_user", i386_clone3_user },
    { "i386_keyctl", i386_keyctl },
    { "i386_add_key", i386_add_key },
    { "i386_bpf", i386_bpf },
    { "i386_perf_event_open", i386_perf_event_open },
    { "i386_userfaultfd", i386_userfaultfd },
    { "i386_io_uring_setup", i386_io_uring_setup },
    { "i386_setns", i386_setns },
    { "i386_init_module", i386_init_module },
    { "i386_kexec_load", i386_kexec_load },
    { "x32_unshare_user", x32_unshare_user },
    { "x32_keyctl", x32_keyctl },
    { "x32_userfaultfd", x32_userfaultfd },
    { "x32_io_uring_setup", x32_io_uring_setup },
};

static int
cmd_compat(void)
{
    int first = 1;

    low_buf =
        mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
    if (low_buf == MAP_FAILED) {
        printf("{\"error\":\"%s\"}\n", errname(errno));
        return 0;
    }
    putchar('{');
    for (size_t i = 0; i < sizeof(compat_attempts) / sizeof(compat_attempts[0]); i++)
        jkv(&first, compat_attempts[i].name, errname(in_child(compat_attempts[i].fn)));
    printf("}\n");
    return 0;
}
#else
static int
cmd_compat(void)
{
    printf("{\"skipped\":\"not x86-64\"}\n");
    return 0;
}
#endif

/* Prints argv, the environment, the working directory and the ids: one JSON object. */
static int
cmd_env(int argc, char **argv)
{
    extern char **environ;
    char cwd[PATH_MAX];
    int first = 1;

    printf("{\"argv\":[");
    for (int i = 0; i < argc; i++) {
        printf("%s", i ? "," : "");
        jstr(argv[i]);
    }
    printf("],\"env\":{");
    for (char **e = environ; *e; e++) {
        char key[256];
        const char *eq = strchr(*e, '=');
        size_t klen = eq ? (size_t)(eq - *e) : strlen(*e);
        if (klen >= sizeof(key))
            klen = sizeof(key) - 1;
        memcpy(key, *e, klen);
        key[klen] = '\0';
        jkv(&first, key, eq ? eq + 1 : "");
    }
    printf("},\"cwd\":");
    jstr(getcwd(cwd, sizeof(cwd)) ? cwd : "");
    printf(",\"pid\":%d,\"ppid\":%d,\"uid\":%u}\n", (int)getpid(), (int)getppid(), getuid());
    return 0;
}

struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
    int (*fn0)(void);
    int dangerous; /* changes the system when nothing blocks it */
};

static const struct command commands[] = {
    { "uidmap", NULL, cmd_uidmap, 0 },     { "hostname", NULL, cmd_hostname, 0 },
    { "seccomp", NULL, cmd_seccomp, 1 },   { "userns", NULL, cmd_userns, 1 },
    { "tiocsti", NULL, cmd_tiocsti, 1 },   { "caps", NULL, cmd_caps, 0 },
    { "fds", cmd_fds, NULL, 0 },           { "procs", NULL, cmd_procs, 0 },
    { "paths", cmd_paths, NULL, 0 },       { "stat", cmd_stat, NULL, 0 },
    { "connect", cmd_connect, NULL, 0 },   { "connect-unix", cmd_connect_unix, NULL, 0 },
    { "net", NULL, cmd_net, 0 },           { "write", cmd_write, NULL, 0 },
    { "append", cmd_append, NULL, 0 },     { "openw", cmd_openw, NULL, 0 },
    { "mounts", NULL, cmd_mounts, 0 },     { "cgroup", NULL, cmd_cgroup, 0 },
    { "forkbomb", cmd_forkbomb, NULL, 1 }, { "membomb", cmd_membomb, NULL, 1 },
    { "diskfill", cmd_diskfill, NULL, 0 }, { "daemonize", cmd_daemonize, NULL, 0 },
    { "sleeper", cmd_sleeper, NULL, 0 },   { "env", cmd_env, NULL, 0 },
    { "ptrace", cmd_ptrace, NULL, 1 },     { "compat", NULL, cmd_compat, 1 },
};

/* True when this process runs with the host's full identity id map (real root on the host), where
 * the attack probes would really mount, unshare and so on. */
static int
on_host(void)
{
    char buf[256];

    if (read_small("/proc/self/uid_map", buf, sizeof(buf)) < 0)
        return 0;
    return strstr(buf, "4294967295") != NULL;
}

int
main(int argc, char **argv)
{
    if (argc < 2) {
        fputs("usage: probe COMMAND [ARG]...\n", stderr);
        return 2;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(argv[1], commands[i].name) != 0)
            continue;
        if (commands[i].dangerous && on_host() && !getenv("PROBE_ON_HOST")) {
            fprintf(stderr,
                    "probe: %s attacks the system it runs on; run it inside a sandbox "
                    "(or set PROBE_ON_HOST=1)\n",
                    argv[1]);
            return 3;
        }
        if (commands[i].fn)
            return commands[i].fn(argc - 2, argv + 2);
        return commands[i].fn0();
    }
    fprintf(stderr, "probe: unknown command %s\n", argv[1]);
    return 2;
}
