/*
 * The default base image, "host": a skeleton directory that becomes the sandbox's root under
 * the overlay, while /usr comes from the host (idmapped, read-only, with its own overlay).
 * /etc is synthesized: a few files are written here, and a short allowlist of harmless host
 * configuration (loader cache, alternatives, CA bundle, time zone) is copied. Nothing else
 * of the host's /etc, and nothing of /root, /home, /var or /run, ever reaches a sandbox.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sandbox_int.h"

#define IMAGE_VERSION "1"
#define COPY_MAX_FILE (16u << 20)
#define COPY_MAX_DEPTH 4

/* Host /etc entries copied into the image: configuration, never credentials. */
static const char *const etc_allow[] = {
    "alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone",
    "ca-certificates.conf", "ssl/certs/ca-certificates.crt", "ssl/openssl.cnf", "python3",
    "python3.11", "perl", "gdb", "mime.types", "protocols", "services", "bash.bashrc",
    "profile", "inputrc", "shells", "os-release", "debian_version", "gai.conf", "magic",
    "magic.mime", "ethertypes", "rpc", "networks", "login.defs", "npmrc", "vim", "gitconfig",
};

static const struct {
    const char *name;
    const char *content;
} etc_files[] = {
    {"passwd", "root:x:0:0:root:/root:/bin/bash\n"
               "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
               "bin:x:2:2:bin:/bin:/usr/sbin/nologin\n"
               "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"},
    {"group", "root:x:0:\ndaemon:x:1:\nbin:x:2:\nsys:x:3:\nadm:x:4:\ntty:x:5:\ndisk:x:6:\n"
              "staff:x:50:\nusers:x:100:\nnogroup:x:65534:\n"},
    {"hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"},
    {"resolv.conf", "# paddock: this sandbox has no network of its own\nnameserver 127.0.0.1\n"},
    {"nsswitch.conf", "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"
                      "networks: files\nprotocols: files\nservices: files\nethers: files\n"
                      "rpc: files\n"},
    {"hostname", "sandbox\n"},
    {"motd", ""},
};

static const char *const root_links[][2] = {
    {"usr/bin", "bin"}, {"usr/sbin", "sbin"}, {"usr/lib", "lib"},
    {"usr/lib64", "lib64"}, {"usr/lib32", "lib32"}, {"usr/libx32", "libx32"},
};

static const struct {
    const char *name;
    unsigned mode;
} root_dirs[] = {
    {"usr", 0755},     {"etc", 0755},      {"dev", 0755},     {"proc", 0555},
    {"sys", 0555},     {"tmp", 01777},     {"run", 0755},     {"root", 0700},
    {"home", 0755},    {"workspace", 0755}, {"mnt", 0755},    {"opt", 0755},
    {"srv", 0755},     {"media", 0755},    {"var", 0755},     {"var/tmp", 01777},
    {"var/log", 0755}, {"var/cache", 0755}, {"var/lib", 0755}, {"etc/ssl", 0755},
    {"etc/ssl/certs", 0755}, {".agent", 0755}, {".agent/skills", 0755},
};

static int copy_entry(int sfd, int dfd, const char *name, int depth, struct err **errp);

/* Copies a directory's entries, recursing into subdirectories, never following a link. */
static int
copy_dir(int sfd, int dfd, const char *name, mode_t mode, int depth, struct err **errp)
{
    cleanup_close int src = openat(sfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    cleanup_close int dst = -1;
    DIR *d;
    struct dirent *de;
    int rc = 0;

    if (src < 0 || depth > COPY_MAX_DEPTH)
        return 0;
    if (mkdirat(dfd, name, mode & 0755) < 0 && errno != EEXIST)
        return err_set(errp, ERR_IO, errno, "mkdir %s", name);
    dst = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    d = fdopendir(steal_fd(&src));
    if (dst < 0 || d == NULL)
        return err_set(errp, ERR_IO, errno, "copy %s", name);
    while (rc == 0 && (de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            rc = copy_entry(dirfd(d), dst, de->d_name, depth + 1, errp);
    closedir(d);
    return rc;
}

static int
copy_entry(int sfd, int dfd, const char *name, int depth, struct err **errp)
{
    struct stat st;
    char target[4096];
    ssize_t n;

    if (fstatat(sfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return 0; /* absent on this host */
    if (S_ISLNK(st.st_mode)) {
        n = readlinkat(sfd, name, target, sizeof(target) - 1);
        if (n < 0)
            return err_set(errp, ERR_IO, errno, "readlink %s", name);
        target[n] = '\0';
        if (symlinkat(target, dfd, name) < 0 && errno != EEXIST)
            return err_set(errp, ERR_IO, errno, "symlink %s", name);
        return 0;
    }
    if (S_ISDIR(st.st_mode))
        return copy_dir(sfd, dfd, name, st.st_mode, depth, errp);
    if (S_ISREG(st.st_mode) && (st.st_mode & 0004) && st.st_size <= COPY_MAX_FILE) {
        /* Only world-readable files: anything restricted on the host stays there. */
        cleanup_free char *data = NULL;
        size_t len;
        if (util_read_file_at(sfd, name, COPY_MAX_FILE, &data, &len, errp) < 0)
            return -1;
        return util_write_file_at(dfd, name, data, len, st.st_mode & 0755, errp);
    }
    return 0;
}

/* Copies etc_allow[i], which may name a file below a subdirectory ("ssl/certs/x"). */
static int
copy_allowed(int host_etc, int img_etc, const char *rel, struct err **errp)
{
    cleanup_free char *dir = xstrdup(rel);
    char *slash = strrchr(dir, '/');
    cleanup_close int s = -1;
    cleanup_close int d = -1;

    if (slash == NULL)
        return copy_entry(host_etc, img_etc, rel, 0, errp);
    *slash = '\0';
    s = openat(host_etc, dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    d = openat(img_etc, dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (s < 0 || d < 0)
        return 0;
    return copy_entry(s, d, slash + 1, 0, errp);
}

static int
build(const char *tmp, struct err **errp)
{
    cleanup_close int root = -1;
    cleanup_close int etc = -1;
    cleanup_close int host_etc = -1;
    struct stat st;
    char target[64];

    if (mkdir(tmp, 0755) < 0)
        return err_set(errp, ERR_IO, errno, "mkdir %s", tmp);
    root = open(tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root < 0)
        return err_set(errp, ERR_IO, errno, "open %s", tmp);
    for (size_t i = 0; i < sizeof(root_dirs) / sizeof(root_dirs[0]); i++)
        if (mkdirat(root, root_dirs[i].name, 0700) < 0 ||
            fchmodat(root, root_dirs[i].name, root_dirs[i].mode, 0) < 0)
            return err_set(errp, ERR_IO, errno, "mkdir %s", root_dirs[i].name);
    for (size_t i = 0; i < sizeof(root_links) / sizeof(root_links[0]); i++) {
        snprintf(target, sizeof(target), "/%s", root_links[i][0]);
        if (stat(target, &st) < 0)
            continue; /* e.g. no /usr/libx32 on this host */
        if (symlinkat(root_links[i][0], root, root_links[i][1]) < 0)
            return err_set(errp, ERR_IO, errno, "symlink %s", root_links[i][1]);
    }
    etc = openat(root, "etc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    host_etc = open("/etc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (etc < 0 || host_etc < 0)
        return err_set(errp, ERR_IO, errno, "open etc");
    for (size_t i = 0; i < sizeof(etc_allow) / sizeof(etc_allow[0]); i++)
        if (copy_allowed(host_etc, etc, etc_allow[i], errp) < 0)
            return err_wrap(errp, "copy /etc/%s", etc_allow[i]);
    for (size_t i = 0; i < sizeof(etc_files) / sizeof(etc_files[0]); i++)
        if (util_write_file_at(etc, etc_files[i].name, etc_files[i].content,
                               strlen(etc_files[i].content), 0644, errp) < 0)
            return -1;
    if (symlinkat("/proc/self/mounts", etc, "mtab") < 0)
        return err_set(errp, ERR_IO, errno, "symlink etc/mtab");
    return util_write_file_at(root, ".paddock-image", IMAGE_VERSION "\n", 2, 0644, errp);
}

/* Removes a half-built image directory from an earlier failure (tree of plain entries). */
static void
remove_partial(int dfd, const char *name)
{
    cleanup_close int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    DIR *d;
    struct dirent *de;

    if (fd >= 0 && (d = fdopendir(steal_fd(&fd))) != NULL) {
        while ((de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                continue;
            if (unlinkat(dirfd(d), de->d_name, 0) < 0 && errno == EISDIR)
                remove_partial(dirfd(d), de->d_name);
        }
        closedir(d);
    }
    unlinkat(dfd, name, AT_REMOVEDIR);
}

int
sandbox_image_ensure_host(const char *images_dir, char **path_out, struct err **errp)
{
    cleanup_free char *path = xasprintf("%s/host", images_dir);
    cleanup_free char *marker = xasprintf("%s/.paddock-image", path);
    cleanup_free char *tmp = NULL;
    cleanup_close int dfd = -1;
    struct stat st;

    if (stat(marker, &st) == 0) {
        *path_out = steal_ptr(&path);
        return 0;
    }
    if (mkdir(images_dir, 0700) < 0 && errno != EEXIST)
        return err_set(errp, ERR_IO, errno, "mkdir %s", images_dir);
    dfd = open(images_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return err_set(errp, ERR_IO, errno, "open %s", images_dir);
    /* Named by thread id (unique on the host at any instant): a server's threads (a create
     * and the warm pool's refiller) may build at the same time, as processes may. */
    tmp = xasprintf("%s/.host.tmp.%d", images_dir, (int)gettid());
    remove_partial(dfd, strrchr(tmp, '/') + 1);
    if (build(tmp, errp) < 0) {
        remove_partial(dfd, strrchr(tmp, '/') + 1);
        return err_wrap(errp, "build image 'host'");
    }
    /* Another process may have won the race; then its image stays and ours goes. */
    if (rename(tmp, path) < 0) {
        remove_partial(dfd, strrchr(tmp, '/') + 1);
        if (stat(marker, &st) < 0)
            return err_set(errp, ERR_IO, errno, "install image %s", path);
    }
    *path_out = steal_ptr(&path);
    return 0;
}

int
sandbox_image_put(const char *image_dir, const char *rel, const void *data, size_t len,
                  struct err **errp)
{
    cleanup_free char *path = xasprintf("%s/%s", image_dir, rel);
    cleanup_free char *old = NULL;
    cleanup_free char *parent = NULL;
    size_t oldlen = 0;
    char *slash;

    if (rel[0] == '/' || strstr(rel, "..") != NULL)
        return err_set(errp, ERR_INTERNAL, 0, "bad image path %s", rel);
    if (util_read_file_at(AT_FDCWD, path, len + 1, &old, &oldlen, NULL) == 0 && oldlen == len &&
        memcmp(old, data, len) == 0)
        return 0;
    parent = xstrdup(path);
    slash = strrchr(parent, '/');
    *slash = '\0';
    if (util_mkdir_p(parent, 0755, errp) < 0)
        return -1;
    {
        cleanup_close int dfd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
            return err_set(errp, ERR_IO, errno, "open %s", parent);
        return util_write_file_at(dfd, slash + 1, data, len, 0644, errp);
    }
}
