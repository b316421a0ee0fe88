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

static int
attach(int fd, const char *dst, struct err **errp)
{
    if (move_mount(fd, "", AT_FDCWD, dst, MOVE_MOUNT_F_EMPTY_PATH) < 0)
        return err_set(errp, ERR_INTERNAL, errno, "attach idmapped layer on %s", dst);
    return 0;
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

    if (do_mount("tmpfs", "dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=64k", errp) < 0)
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
    /* Nothing done here may propagate back to the host. */
    if (do_mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL, errp) < 0)
        return -1;
    if (attach(skel_fd, "lower", errp) < 0 || attach(usr_fd, "usrlower", errp) < 0)
        return -1;
    /* userxattr: overlay in a user namespace keeps its metadata in user.* xattrs. */
    if (do_mount("overlay", "rootfs", "overlay", MS_NODEV,
                 "lowerdir=lower,upperdir=upper/root,workdir=work/root,userxattr", errp) < 0 ||
        do_mount("overlay", "rootfs/usr", "overlay", MS_NODEV,
                 "lowerdir=usrlower,upperdir=upper/usr,workdir=work/usr,userxattr", errp) < 0)
        return -1;
    if (chdir("rootfs") < 0)
        return err_set(errp, ERR_INTERNAL, errno, "chdir rootfs");
    if (do_mount("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, errp) < 0 ||
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
