/*
 * The sandbox's root file system, built by the child inside its new user and mount
 * namespaces. Its working directory is the environment's volume, so every path here is
 * relative to it and never walks the data directory (which the child could not read anyway).
 *
 *   lower/     idmapped read-only skeleton of the base image (attached from a detached mount)
 *   usrlower/  idmapped read-only host /usr
 *   rootfs/    overlay(lower, upper/root)          -> becomes /
 *   rootfs/usr overlay(usrlower, upper/usr)        -> /usr, writable, persistent
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "sandbox_int.h"

static int
do_mount(const char *src, const char *dst, const char *type, unsigned long flags,
         const char *data, struct err **errp)
{
    if (mount(src, dst, type, flags, data) < 0)
        return err_set(errp, ERR_INTERNAL, errno, "mount %s on %s",
                       type != NULL ? type : (src != NULL ? src : "remount"), dst);
    return 0;
}

int
sandbox__open_beneath(int at, const char *path, struct err **errp)
{
    struct open_how how = {
        .flags = O_PATH | O_DIRECTORY | O_CLOEXEC,
        .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS,
    };
    int fd = (int)syscall(SYS_openat2, at, path, &how, sizeof(how));

    if (fd < 0)
        return err_set(errp, ERR_INTERNAL, errno, "open %s without following a link", path);
    return fd;
}

/* The path by which the kernel reaches exactly what fd names, whatever links lie about. */
static char *
fd_path(int fd)
{
    return xasprintf("/proc/self/fd/%d", fd);
}

/*
 * Mounts on the directory path beneath at, found by sandbox__open_beneath(): a link in its
 * place is refused, not followed.
 */
static int
mount_beneath(const char *src, int at, const char *path, const char *type, unsigned long flags,
              const char *data, struct err **errp)
{
    cleanup_close int fd = sandbox__open_beneath(at, path, errp);
    cleanup_free char *target = NULL;

    if (fd < 0)
        return -1;
    target = fd_path(fd);
    if (mount(src, target, type, flags, data) < 0)
        return err_set(errp, ERR_INTERNAL, errno, "mount %s on %s", type, path);
    return 0;
}

static int
attach(int fd, const char *dst, struct err **errp)
{
    cleanup_close int to = sandbox__open_beneath(AT_FDCWD, dst, errp);

    if (to < 0)
        return -1;
    if (move_mount(fd, "", to, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0)
        return err_set(errp, ERR_INTERNAL, errno, "attach idmapped layer on %s", dst);
    return 0;
}

/*
 * Mounts an overlay of lower (a mount's root, by descriptor) and upper/NAME and work/NAME of
 * the volume vol on target beneath at. The options name every directory by descriptor, so
 * none of them is found through a link.
 */
static int
overlay(int lower, int vol, const char *name, int at, const char *target, struct err **errp)
{
    cleanup_free char *up = xasprintf("upper/%s", name), *wk = xasprintf("work/%s", name);
    cleanup_close int ufd = sandbox__open_beneath(vol, up, errp);
    cleanup_close int wfd = ufd < 0 ? -1 : sandbox__open_beneath(vol, wk, errp);
    cleanup_free char *opts = NULL;

    if (ufd < 0 || wfd < 0)
        return -1;
    /* userxattr: overlay in a user namespace keeps its metadata in user.* xattrs. */
    opts = xasprintf("lowerdir=/proc/self/fd/%d,upperdir=/proc/self/fd/%d,"
                     "workdir=/proc/self/fd/%d,userxattr",
                     lower, ufd, wfd);
    return mount_beneath("overlay", at, target, "overlay", MS_NODEV, opts, errp);
}

/* A file to bind a device node onto. */
static int
touch(const char *path, struct err **errp)
{
    int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0644);

    if (fd < 0)
        return err_set(errp, ERR_INTERNAL, errno, "create %s", path);
    close(fd);
    return 0;
}

static int
setup_dev(struct err **errp)
{
    static const char *const nodes[] = {"null", "zero", "full", "random", "urandom", "tty"};
    static const char *const links[][2] = {
        {"pts/ptmx", "dev/ptmx"},     {"/proc/self/fd", "dev/fd"},
        {"/proc/self/fd/0", "dev/stdin"}, {"/proc/self/fd/1", "dev/stdout"},
        {"/proc/self/fd/2", "dev/stderr"},
    };
    char src[64], dst[64];

    if (mount_beneath("tmpfs", AT_FDCWD, "dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=64k",
                      errp) < 0)
        return -1;
    for (size_t i = 0; i < sizeof(nodes) / sizeof(nodes[0]); i++) {
        snprintf(src, sizeof(src), "/dev/%s", nodes[i]);
        snprintf(dst, sizeof(dst), "dev/%s", nodes[i]);
        if (touch(dst, errp) < 0 || do_mount(src, dst, NULL, MS_BIND, NULL, errp) < 0)
            return -1;
    }
    if (mkdir("dev/pts", 0755) < 0 || mkdir("dev/shm", 01777) < 0)
        return err_set(errp, ERR_INTERNAL, errno, "mkdir dev/pts, dev/shm");
    if (do_mount("devpts", "dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
                 "newinstance,ptmxmode=0666,mode=620,gid=5", errp) < 0 ||
        do_mount("shm", "dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=256m", errp) <
            0)
        return -1;
    for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++)
        if (symlink(links[i][0], links[i][1]) < 0)
            return err_set(errp, ERR_INTERNAL, errno, "symlink %s", links[i][1]);
    return 0;
}

/*
 * Hides the parts of /proc that describe the host or poke the kernel, as docker and crun
 * do: files are covered with /dev/null, directories made read-only.
 */
static int
mask_proc(struct err **errp)
{
    static const char *const hide[] = {"proc/kcore", "proc/keys", "proc/timer_list",
                                       "proc/sched_debug", "proc/latency_stats",
                                       "proc/sysrq-trigger"};
    static const char *const ro[] = {"proc/sys", "proc/bus", "proc/fs", "proc/irq"};
    struct stat st;

    for (size_t i = 0; i < sizeof(hide) / sizeof(hide[0]); i++) {
        if (lstat(hide[i], &st) < 0)
            continue;
        if (do_mount("/dev/null", hide[i], NULL, MS_BIND, NULL, errp) < 0)
            return -1;
    }
    for (size_t i = 0; i < sizeof(ro) / sizeof(ro[0]); i++) {
        if (lstat(ro[i], &st) < 0)
            continue;
        if (do_mount(ro[i], ro[i], NULL, MS_BIND | MS_REC, NULL, errp) < 0 ||
            do_mount(NULL, ro[i], NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV |
                                            MS_NOEXEC,
                     NULL, errp) < 0)
            return -1;
    }
    return 0;
}

int
sandbox__rootfs_setup(int skel_fd, int usr_fd, struct err **errp)
{
    cleanup_close int vol = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC), root = -1;

    /* Nothing done here may propagate back to the host. */
    if (do_mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL, errp) < 0)
        return -1;
    if (vol < 0)
        return err_set(errp, ERR_INTERNAL, errno, "open the volume");
    /* Attached, each descriptor is the root of its mount where it stands. */
    if (attach(skel_fd, "lower", errp) < 0 || attach(usr_fd, "usrlower", errp) < 0 ||
        overlay(skel_fd, vol, "root", vol, "rootfs", errp) < 0)
        return -1;
    /* Opened again now that the overlay is on it, and made the cwd. */
    root = sandbox__open_beneath(vol, "rootfs", errp);
    if (root < 0)
        return -1;
    if (fchdir(root) < 0)
        return err_set(errp, ERR_INTERNAL, errno, "chdir rootfs");
    /* usr and proc are the sandbox's own entries: a link in their place is refused too. */
    if (overlay(usr_fd, vol, "usr", root, "usr", errp) < 0 ||
        mount_beneath("proc", root, "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, errp) <
            0 ||
        setup_dev(errp) < 0 || mask_proc(errp) < 0)
        return -1;
    /* pivot_root(".", ".") stacks the old root under the new one; detaching it leaves only
     * the sandbox's own tree visible. */
    if (syscall(SYS_pivot_root, ".", ".") < 0)
        return err_set(errp, ERR_INTERNAL, errno, "pivot_root");
    if (umount2(".", MNT_DETACH) < 0)
        return err_set(errp, ERR_INTERNAL, errno, "detach the old root");
    if (chdir("/") < 0)
        return err_set(errp, ERR_INTERNAL, errno, "chdir /");
    return 0;
}
