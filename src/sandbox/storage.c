/*
 * Storage: the disk cap. Overlayfs has no size limit of its own and this kernel has no
 * ext4/xfs project quotas (no CONFIG_QFMT_V2, no XFS_QUOTA), so each data directory gets one
 * btrfs file system in a sparse image, loop-mounted at DATA/envs with quotas on. Every
 * environment is a subvolume with a qgroup limit: writes past it fail with EDQUOT, the
 * host's disk never sees more than the image's size, a subvolume is created in about a
 * millisecond, and deleting one never walks (or follows) anything inside it.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <time.h>
#include <linux/btrfs.h>
#include <linux/loop.h>
#include <linux/magic.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sandbox_int.h"

static bool
is_our_mount(const char *envs, const char *dir)
{
    struct statfs sfs;
    struct stat a, b;

    if (statfs(envs, &sfs) < 0 || sfs.f_type != BTRFS_SUPER_MAGIC)
        return false;
    return stat(envs, &a) == 0 && stat(dir, &b) == 0 && a.st_dev != b.st_dev;
}

static int
run_mkfs(const char *image, struct err **errp)
{
    static char prog[] = "mkfs.btrfs", quiet[] = "-q", force[] = "-f";
    static char path_env[] = "PATH=/usr/sbin:/sbin:/usr/bin:/bin";
    cleanup_free char *img = xstrdup(image);
    char *const argv[] = {prog, quiet, force, img, NULL};
    char *const envp[] = {path_env, NULL};
    posix_spawn_file_actions_t fa;
    pid_t pid;
    int status, r;

    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    r = posix_spawnp(&pid, "mkfs.btrfs", &fa, NULL, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    if (r != 0)
        return err_set(errp, ERR_INTERNAL, r, "run mkfs.btrfs (install btrfs-progs)");
    if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return err_set(errp, ERR_INTERNAL, 0, "mkfs.btrfs %s failed", image);
    return 0;
}

/* Attaches image to a free loop device that detaches itself once unmounted. */
static int
loop_attach(int image_fd, char *dev, size_t devlen, struct err **errp)
{
    cleanup_close int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);

    if (ctl < 0)
        return err_set(errp, ERR_INTERNAL, errno, "open /dev/loop-control");
    for (int tries = 0; tries < 32; tries++) {
        struct loop_config cfg;
        int n = ioctl(ctl, LOOP_CTL_GET_FREE);
        int fd;
        if (n < 0)
            return err_set(errp, ERR_INTERNAL, errno, "find a free loop device");
        snprintf(dev, devlen, "/dev/loop%d", n);
        fd = open(dev, O_RDWR | O_CLOEXEC);
        if (fd < 0)
            return err_set(errp, ERR_INTERNAL, errno, "open %s", dev);
        memset(&cfg, 0, sizeof(cfg));
        cfg.fd = (uint32_t)image_fd;
        cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO;
        if (ioctl(fd, LOOP_CONFIGURE, &cfg) == 0)
            return fd;
        if (errno == EINVAL) { /* direct I/O not possible on this backing file */
            cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;
            if (ioctl(fd, LOOP_CONFIGURE, &cfg) == 0)
                return fd;
        }
        close(fd);
        if (errno != EBUSY)
            return err_set(errp, ERR_INTERNAL, errno, "configure %s", dev);
    }
    return err_set(errp, ERR_INTERNAL, EBUSY, "no free loop device");
}

static int
quota_enable(const char *envs, struct err **errp)
{
    cleanup_close int fd = open(envs, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    struct btrfs_ioctl_quota_ctl_args q = {.cmd = BTRFS_QUOTA_CTL_ENABLE};

    if (fd < 0 || ioctl(fd, BTRFS_IOC_QUOTA_CTL, &q) < 0)
        return err_set(errp, ERR_INTERNAL, errno, "enable btrfs quotas on %s", envs);
    return 0;
}

static int
mount_storage(const char *dir, const char *envs, uint64_t size_if_new, struct err **errp)
{
    cleanup_free char *image = xasprintf("%s/storage.img", dir);
    cleanup_close int image_fd = -1;
    cleanup_close int loop_fd = -1;
    char dev[64];
    bool fresh = false;

    image_fd = open(image, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (image_fd < 0 && errno == ENOENT) {
        image_fd = open(image, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (image_fd < 0 || ftruncate(image_fd, (off_t)size_if_new) < 0) {
            int e = errno;
            unlink(image);
            return err_set(errp, ERR_IO, e, "create %s", image);
        }
        if (run_mkfs(image, errp) < 0) {
            unlink(image);
            return -1;
        }
        fresh = true;
    }
    if (image_fd < 0)
        return err_set(errp, ERR_IO, errno, "open %s", image);
    if (mkdir(envs, 0700) < 0 && errno != EEXIST)
        return err_set(errp, ERR_IO, errno, "mkdir %s", envs);
    loop_fd = loop_attach(image_fd, dev, sizeof(dev), errp);
    if (loop_fd < 0)
        return -1;
    /* discard=async gives space freed inside back to the host as holes in the image. */
    if (mount(dev, envs, "btrfs", MS_NOSUID | MS_NODEV | MS_NOATIME, "discard=async") < 0)
        return err_set(errp, ERR_INTERNAL, errno, "mount %s on %s", dev, envs);
    chmod(envs, 0700);
    if (fresh && quota_enable(envs, errp) < 0) {
        umount2(envs, MNT_DETACH);
        return -1;
    }
    return 0;
}

int
sandbox_storage_ensure(const char *dir, uint64_t size_if_new, struct err **errp)
{
    cleanup_free char *envs = xasprintf("%s/envs", dir);
    cleanup_free char *lockp = xasprintf("%s/storage.lock", dir);
    cleanup_close int lock = -1;

    if (is_our_mount(envs, dir))
        return 0;
    lock = open(lockp, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (lock < 0 || flock(lock, LOCK_EX) < 0)
        return err_set(errp, ERR_IO, errno, "lock %s", lockp);
    if (is_our_mount(envs, dir))
        return 0;
    if (mount_storage(dir, envs, size_if_new, errp) < 0)
        return err_wrap(errp, "storage of %s", dir);
    return 0;
}

/* True when /sys/block/<name>/loop/backing_file names image (the kernel may add " (deleted)"). */
static bool
loop_backs(const char *name, const char *image)
{
    cleanup_free char *path = xasprintf("/sys/block/%s/loop/backing_file", name);
    cleanup_free char *text = NULL;
    size_t n = strlen(image);
    struct err *e = NULL;

    if (util_read_file_at(AT_FDCWD, path, PATH_MAX + 64, &text, NULL, &e) < 0) {
        err_free(e);
        return false;
    }
    return strncmp(text, image, n) == 0 && (text[n] == '\n' || text[n] == ' ' || text[n] == '\0');
}

/* The loop device (a /sys/block name) whose backing file is image, or false. */
static bool
loop_of(const char *image, char *name, size_t len)
{
    DIR *d = opendir("/sys/block");
    struct dirent *de;
    bool found = false;

    if (d == NULL)
        return false;
    while (!found && (de = readdir(d)) != NULL)
        if (strncmp(de->d_name, "loop", 4) == 0 && loop_backs(de->d_name, image)) {
            snprintf(name, len, "%s", de->d_name);
            found = true;
        }
    closedir(d);
    return found;
}

int
sandbox_storage_unmount(const char *dir, struct err **errp)
{
    cleanup_free char *envs = xasprintf("%s/envs", dir);
    cleanup_free char *image = xasprintf("%s/storage.img", dir);
    char real[PATH_MAX], loop[NAME_MAX + 1];
    bool attached;
    const struct timespec tick = {0, 5 * 1000 * 1000};

    if (!is_our_mount(envs, dir))
        return 0;
    attached = realpath(image, real) != NULL && loop_of(real, loop, sizeof(loop));
    if (umount2(envs, 0) < 0 && umount2(envs, MNT_DETACH) < 0)
        return err_set(errp, ERR_IO, errno, "unmount %s", envs);
    /*
     * The loop device detaches itself when the file system's last mount goes: the host's,
     * just now, and those of stopped sandboxes, whose mount namespaces the kernel may still
     * be tearing down after their init died; then btrfs closes (seconds on a loaded machine).
     * Teardown means nothing is left, so wait for it, within a bound.
     */
    for (int i = 0; attached && i < 2000; i++) {
        if (!loop_backs(loop, real))
            return 0;
        nanosleep(&tick, NULL);
    }
    if (attached && loop_backs(loop, real))
        return err_set(errp, ERR_TIMEOUT, EBUSY,
                       "unmounted %s, but /dev/%s still holds %s after 10 s (a process "
                       "still uses the file system)", envs, loop, real);
    return 0;
}

static int
limit_fd(int fd, uint64_t disk_bytes, struct err **errp)
{
    struct btrfs_ioctl_qgroup_limit_args q;

    memset(&q, 0, sizeof(q));
    q.qgroupid = 0; /* the subvolume fd refers to */
    q.lim.flags = BTRFS_QGROUP_LIMIT_MAX_RFER;
    q.lim.max_rfer = disk_bytes;
    if (ioctl(fd, BTRFS_IOC_QGROUP_LIMIT, &q) < 0)
        return err_set(errp, ERR_INTERNAL, errno, "set disk limit");
    return 0;
}

/*
 * Makes the directory path (relative to dfd; its parents made before it) unless it is there,
 * gives it to owner with mode, and returns it open; errors call it what. No link is followed on the
 * way: in a copied volume, upper/root is what a sandbox made of its /, so upper/root/etc may be a
 * link to anywhere on the host, and the server is the host's root here.
 */
static int
mkdir_owned(int dfd, const char *path, const char *what, unsigned mode, uint32_t owner,
            struct err **errp)
{
    cleanup_free char *p = xstrdup(path);
    char *save = NULL;
    int fd = -1;

    for (char *c = strtok_r(p, "/", &save); c != NULL; c = strtok_r(NULL, "/", &save)) {
        int at = fd >= 0 ? fd : dfd, next;
        if (mkdirat(at, c, mode) < 0 && errno != EEXIST) {
            int e = errno;
            if (fd >= 0)
                close(fd);
            return err_set(errp, ERR_IO, e, "mkdir %s", what);
        }
        next = openat(at, c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd >= 0)
            close(fd);
        if (next < 0) {
            if (errno == ELOOP || errno == ENOTDIR)
                /* 400, not 409: the SDK would send a 409 again, copy and all. */
                return err_set(errp, ERR_INVALID, 0, "%s is not a directory (a link?)", what);
            return err_set(errp, ERR_IO, errno, "open %s", what);
        }
        fd = next;
    }
    if (fd < 0)
        return err_set(errp, ERR_INVALID, 0, "empty directory path");
    if (fchown(fd, owner, owner) < 0 || fchmod(fd, mode) < 0) {
        int e = errno;
        close(fd);
        return err_set(errp, ERR_IO, e, "chown %s", what);
    }
    return fd;
}

static int
write_owned(int dfd, const char *name, const char *content, uint32_t owner, struct err **errp)
{
    /* No fsync: the volume is brand new, and a crash before btrfs commits loses the whole
     * half-made environment, which reconcile removes anyway. The file is made under a name
     * of its own (never through a link) and renamed over whatever name was: a copied
     * sandbox's hosts may be a link too. */
    if (util_write_file_at(dfd, name, content, strlen(content), 0644 | UTIL_WRITE_NOSYNC, errp) <
        0)
        return -1;
    if (fchownat(dfd, name, owner, owner, AT_SYMLINK_NOFOLLOW) < 0)
        return err_set(errp, ERR_IO, errno, "chown %s", name);
    return 0;
}

/* The layout a sandbox start expects in a fresh volume (see mounts.c), or in a copied one. */
static int
populate(int vfd, const char *id, uint32_t owner, struct err **errp)
{
    static const char *const dirs[] = { "upper",  "upper/root", "upper/usr",
                                        "work",   "work/root",  "work/usr",
                                        "rootfs", "lower",      "usrlower" };
    cleanup_free char *hosts = xasprintf("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost "
                                         "ip6-loopback\n127.0.1.1\t%s\n",
                                         id);
    cleanup_free char *hostname = xasprintf("%s\n", id);
    cleanup_close int etc = -1;

    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        int fd = mkdir_owned(vfd, dirs[i], dirs[i], 0755, owner, errp);
        if (fd < 0)
            return -1;
        close(fd);
    }
    /* The sandbox's /etc: a copy's may be anything its sandbox made it. */
    etc = mkdir_owned(vfd, "upper/root/etc", "the environment's /etc", 0755, owner, errp);
    if (etc < 0)
        return -1;
    if (write_owned(etc, "hosts", hosts, owner, errp) < 0 ||
        write_owned(etc, "hostname", hostname, owner, errp) < 0)
        return err_wrap(errp, "the environment's /etc");
    if (fchown(vfd, owner, owner) < 0 || fchmod(vfd, 0700) < 0)
        return err_set(errp, ERR_IO, errno, "chown volume");
    return 0;
}

static bool
valid_name(const char *id)
{
    return id[0] != '\0' && id[0] != '.' && strchr(id, '/') == NULL &&
           strlen(id) < BTRFS_PATH_NAME_MAX;
}

/* Opens envs_dir for a subvolume ioctl on the volume named id (validated into va). */
static int
open_parent(const char *envs_dir, const char *id, struct btrfs_ioctl_vol_args *va,
            struct err **errp)
{
    int efd;

    if (!valid_name(id))
        return err_set(errp, ERR_INVALID, 0, "bad volume name");
    efd = open(envs_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (efd < 0)
        return err_set(errp, ERR_IO, errno, "open %s", envs_dir);
    memset(va, 0, sizeof(*va));
    snprintf(va->name, sizeof(va->name), "%s", id);
    return efd;
}

int
sandbox_volume_create(const char *envs_dir, const char *id, uint32_t host_id,
                      uint64_t disk_bytes, struct err **errp)
{
    struct btrfs_ioctl_vol_args va;
    cleanup_close int efd = open_parent(envs_dir, id, &va, errp);
    cleanup_close int vfd = -1;

    if (efd < 0)
        return -1;
    if (ioctl(efd, BTRFS_IOC_SUBVOL_CREATE, &va) < 0)
        return err_set(errp, errno == EEXIST ? ERR_CONFLICT : ERR_INTERNAL, errno,
                       "create volume %s", id);
    vfd = openat(efd, id, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (vfd < 0 || (disk_bytes > 0 && limit_fd(vfd, disk_bytes, errp) < 0) ||
        populate(vfd, id, host_id, errp) < 0) {
        if (vfd < 0)
            err_set(errp, ERR_IO, errno, "open volume %s", id);
        sandbox_volume_destroy(envs_dir, id, NULL);
        return err_wrap(errp, "create volume %s", id);
    }
    return 0;
}

int
sandbox_volume_set_disk(const char *envs_dir, const char *id, uint64_t disk_bytes,
                        struct err **errp)
{
    struct btrfs_ioctl_vol_args va;
    cleanup_close int efd = open_parent(envs_dir, id, &va, errp);
    cleanup_close int vfd = -1;

    if (efd < 0)
        return -1;
    vfd = openat(efd, id, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (vfd < 0)
        return err_set(errp, ERR_IO, errno, "open volume %s", id);
    if (limit_fd(vfd, disk_bytes, errp) < 0)
        return err_wrap(errp, "volume %s", id);
    return 0;
}

int
sandbox_volume_destroy(const char *envs_dir, const char *id, struct err **errp)
{
    struct btrfs_ioctl_vol_args va;
    cleanup_close int efd = open_parent(envs_dir, id, &va, errp);

    if (efd < 0)
        return -1;
    if (ioctl(efd, BTRFS_IOC_SNAP_DESTROY, &va) < 0 && errno != ENOENT)
        return err_set(errp, ERR_IO, errno, "delete volume %s", id);
    return 0;
}

/* Empties the directory open at dfd without following symlinks (overlay's work dirs). */
static int
empty_dir(int dfd, int depth, struct err **errp)
{
    DIR *d = fdopendir(dfd);
    struct dirent *de;
    int rc = 0;

    if (d == NULL) {
        close(dfd);
        return err_set(errp, ERR_IO, errno, "open work directory");
    }
    while (rc == 0 && (de = readdir(d)) != NULL) {
        int cfd;
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (unlinkat(dirfd(d), de->d_name, 0) == 0)
            continue;
        if (depth > 16)
            rc = err_set(errp, ERR_LIMIT, 0, "work directory too deep");
        else if ((cfd = openat(dirfd(d), de->d_name,
                               O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0)
            rc = err_set(errp, ERR_IO, errno, "open %s", de->d_name);
        else if (empty_dir(cfd, depth + 1, errp) < 0)
            rc = -1;
        else if (unlinkat(dirfd(d), de->d_name, AT_REMOVEDIR) < 0)
            rc = err_set(errp, ERR_IO, errno, "remove %s", de->d_name);
    }
    closedir(d);
    return rc;
}

struct shift {
    uint32_t from, to;
    struct err **errp;
};

static uint32_t
shifted(const struct shift *s, uint32_t id)
{
    return id >= s->from && id - s->from < SANDBOX_ID_RANGE ? id - s->from + s->to : id;
}

/* Moves every owner of the tree at dfd from one id range to another, never following links. */
static int
shift_tree(const struct shift *s, int dfd, int depth)
{
    DIR *d;
    struct dirent *de;
    int rc = 0;

    if (depth > 512) {
        close(dfd);
        return err_set(s->errp, ERR_LIMIT, 0, "copy: deeper than 512 levels");
    }
    d = fdopendir(dfd);
    if (d == NULL) {
        close(dfd);
        return err_set(s->errp, ERR_IO, errno, "copy: open directory");
    }
    while (rc == 0 && (de = readdir(d)) != NULL) {
        struct stat st;
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            rc = err_set(s->errp, ERR_IO, errno, "copy: stat %s", de->d_name);
            break;
        }
        if (shifted(s, st.st_uid) != st.st_uid || shifted(s, st.st_gid) != st.st_gid) {
            if (fchownat(dirfd(d), de->d_name, shifted(s, st.st_uid), shifted(s, st.st_gid),
                         AT_SYMLINK_NOFOLLOW) < 0) {
                rc = err_set(s->errp, ERR_IO, errno, "copy: chown %s", de->d_name);
                break;
            }
            /* chown clears set-id bits; the copy keeps them, as the original had them. */
            if (S_ISREG(st.st_mode) && (st.st_mode & (S_ISUID | S_ISGID)) &&
                fchmodat(dirfd(d), de->d_name, st.st_mode & 07777, 0) < 0) {
                rc = err_set(s->errp, ERR_IO, errno, "copy: chmod %s", de->d_name);
                break;
            }
        }
        if (S_ISDIR(st.st_mode)) {
            int cfd = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (cfd < 0)
                rc = err_set(s->errp, ERR_IO, errno, "copy: open %s", de->d_name);
            else
                rc = shift_tree(s, cfd, depth + 1);
        }
    }
    closedir(d);
    return rc;
}

int
sandbox_volume_fork(const char *envs_dir, const char *src_id, const char *id, uint32_t src_host_id,
                    uint32_t host_id, uint64_t disk_bytes, void (*snapped)(void *arg), void *arg,
                    struct err **errp)
{
    struct btrfs_ioctl_vol_args va;
    struct btrfs_ioctl_vol_args_v2 args;
    cleanup_close int efd = open_parent(envs_dir, id, &va, errp);
    cleanup_close int sfd = -1;
    cleanup_close int vfd = -1;
    cleanup_close int wfd = -1;
    struct shift sh = {src_host_id, host_id, errp};
    int fd;

    if (efd < 0)
        return -1;
    if (!valid_name(src_id))
        return err_set(errp, ERR_INVALID, 0, "bad volume name");
    sfd = openat(efd, src_id, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (sfd < 0)
        return err_set(errp, ERR_NOT_FOUND, errno, "open volume %s", src_id);
    memset(&args, 0, sizeof(args));
    args.fd = sfd;
    snprintf(args.name, sizeof(args.name), "%s", id);
    if (ioctl(efd, BTRFS_IOC_SNAP_CREATE_V2, &args) < 0) {
        int e = errno;
        if (snapped != NULL)
            snapped(arg);
        return err_set(errp, e == EEXIST ? ERR_CONFLICT : ERR_INTERNAL, e, "snapshot volume %s",
                       src_id);
    }
    if (snapped != NULL)
        snapped(arg);
    vfd = openat(efd, id, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (vfd < 0) {
        err_set(errp, ERR_IO, errno, "open volume %s", id);
        goto fail;
    }
    /* A snapshot of a running volume carries its socket and overlay scratch; drop both. */
    unlinkat(vfd, "ctl.sock", 0);
    /* One component at a time, none a link: O_NOFOLLOW covers only the last one, and a
     * "work" made a link (the volume's directory is the sandbox's) would have this process,
     * the host's root, empty whatever directory it names. */
    wfd = openat(vfd, "work", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (wfd < 0) {
        err_set(errp, ERR_IO, errno, "open work directory");
        goto fail;
    }
    for (int i = 0; i < 2; i++) {
        fd = openat(wfd, i == 0 ? "root" : "usr", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 || empty_dir(fd, 0, errp) < 0) {
            if (fd < 0)
                err_set(errp, ERR_IO, errno, "open work directory");
            goto fail;
        }
    }
    fd = openat(vfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || shift_tree(&sh, fd, 0) < 0) {
        if (fd < 0)
            err_set(errp, ERR_IO, errno, "open volume %s", id);
        goto fail;
    }
    if ((disk_bytes > 0 && limit_fd(vfd, disk_bytes, errp) < 0) ||
        populate(vfd, id, host_id, errp) < 0)
        goto fail;
    return 0;

fail:
    sandbox_volume_destroy(envs_dir, id, NULL);
    return err_wrap(errp, "copy volume %s", src_id);
}
