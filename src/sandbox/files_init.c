/*
 * File operations, carried out inside the sandbox by a handler running with the sandbox's
 * credentials, capabilities and seccomp filter, after pivot_root. Whatever a path or a
 * planted symlink says, it resolves inside the sandbox's own root: the host's file system
 * is not in this mount namespace at all.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sandbox_int.h"

#define LIST_MAX_ENTRIES 200000
#define LIST_MAX_DEPTH   64
#define DELETE_MAX_DEPTH 256

static int
fail(int conn, struct err *e)
{
    sandbox__proto_send_error(conn, e);
    err_free(e);
    return 1;
}

static int
ok(int conn, json_t *j)
{
    int r;

    json_object_set_new(j, "ok", json_true());
    r = sandbox__proto_send_json(conn, PROTO_RESULT, j, NULL);
    json_decref(j);
    return r < 0 ? 1 : 0;
}

static enum err_code
errno_code(int e)
{
    switch (e) {
    case ENOENT:
    case ENOTDIR:
        return ERR_NOT_FOUND;
    case EACCES:
    case EPERM:
    case EROFS:
        return ERR_PERM;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
        return ERR_LIMIT;
    case EISDIR:
    case EEXIST:
    case ENOTEMPTY:
        return ERR_CONFLICT;
    default:
        return ERR_IO;
    }
}

/* Validates the request's path again: the caller is trusted, but init does not rely on it. */
static int
req_path(json_t *req, char **out, struct err **errp)
{
    cleanup_free char *p = sandbox__bytes_from_json(json_object_get(req, "path"));

    if (p == NULL)
        return err_set(errp, ERR_INVALID, 0, "missing or bad path");
    return sandbox_path_resolve(p, out, errp);
}

int
sandbox__handle_read(int conn, json_t *req)
{
    cleanup_free char *path = NULL;
    cleanup_close int fd = -1;
    struct err *e = NULL;
    struct stat st;
    uint64_t off = (uint64_t)json_integer_value(json_object_get(req, "offset"));
    uint64_t max = (uint64_t)json_integer_value(json_object_get(req, "max"));
    uint64_t sent = 0;
    char chunk[PROTO_CHUNK];

    if (req_path(req, &path, &e) < 0)
        return fail(conn, e);
    /* O_NONBLOCK: a FIFO planted at the path must not hang the handler. */
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        int en = errno;
        return fail(conn, (err_set(&e, errno_code(en), en, "read %s", path), e));
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
        return fail(conn, (err_set(&e, ERR_INVALID, 0, "read %s: not a regular file", path), e));
    while (max == 0 || sent < max) {
        size_t want = sizeof(chunk);
        ssize_t r;
        if (max > 0 && max - sent < want)
            want = (size_t)(max - sent);
        r = pread(fd, chunk, want, (off_t)(off + sent));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int en = errno;
            return fail(conn, (err_set(&e, ERR_IO, en, "read %s", path), e));
        }
        if (r == 0)
            break;
        if (sandbox__proto_send(conn, PROTO_DATA, chunk, (size_t)r, NULL) < 0)
            return 1;
        sent += (uint64_t)r;
    }
    return ok(conn, json_pack("{s:I, s:I}", "size", (json_int_t)st.st_size, "bytes",
                              (json_int_t)sent));
}

/* mkdir -p of path's parent directories, inside the sandbox. */
static int
make_parents(const char *path, struct err **errp)
{
    cleanup_free char *p = xstrdup(path);
    char *slash = strrchr(p, '/');

    if (slash == NULL || slash == p)
        return 0;
    *slash = '\0';
    for (char *s = p + 1; *s != '\0'; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, 0755) < 0 && errno != EEXIST)
            return err_set(errp, errno_code(errno), errno, "mkdir %s", p);
        *s = '/';
    }
    if (mkdir(p, 0755) < 0 && errno != EEXIST)
        return err_set(errp, errno_code(errno), errno, "mkdir %s", p);
    return 0;
}

/* Receives DATA frames into fd until DATA_EOF; at most max bytes. */
static int
receive_into(int conn, int fd, uint64_t max, uint64_t *n_out, struct err **errp)
{
    uint64_t n = 0;

    for (;;) {
        struct proto_frame f;
        if (sandbox__proto_recv(conn, &f, errp) < 0)
            return -1;
        if (f.type == PROTO_DATA_EOF) {
            sandbox__proto_frame_free(&f);
            break;
        }
        if (f.type != PROTO_DATA) {
            sandbox__proto_frame_free(&f);
            return err_set(errp, ERR_INVALID, 0, "expected file data");
        }
        if (max > 0 && n + f.len > max) {
            sandbox__proto_frame_free(&f);
            return err_set(errp, ERR_LIMIT, 0, "file larger than %llu bytes",
                           (unsigned long long)max);
        }
        if (util_write_all(fd, f.data, f.len) < 0) {
            int en = errno;
            sandbox__proto_frame_free(&f);
            return err_set(errp, errno_code(en), en, "write");
        }
        n += f.len;
        sandbox__proto_frame_free(&f);
    }
    *n_out = n;
    return 0;
}

int
sandbox__handle_write(int conn, json_t *req)
{
    cleanup_free char *path = NULL;
    cleanup_free char *tmp = NULL;
    cleanup_close int fd = -1;
    struct err *e = NULL;
    struct stat st;
    unsigned mode = (unsigned)json_integer_value(json_object_get(req, "mode")) & 07777;
    uint64_t max = (uint64_t)json_integer_value(json_object_get(req, "max"));
    uint64_t n = 0;
    char rnd[8];

    if (req_path(req, &path, &e) < 0 || make_parents(path, &e) < 0)
        return fail(conn, e);
    if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return fail(conn, (err_set(&e, ERR_CONFLICT, 0, "write %s: is a directory", path), e));
    if (util_random(rnd, sizeof(rnd), &e) < 0)
        return fail(conn, e);
    tmp = xasprintf("%s.paddock-%02x%02x%02x%02x", path, (unsigned char)rnd[0],
                    (unsigned char)rnd[1], (unsigned char)rnd[2], (unsigned char)rnd[3]);
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode ? mode : 0644);
    if (fd < 0) {
        int en = errno;
        return fail(conn, (err_set(&e, errno_code(en), en, "write %s", path), e));
    }
    /* Tell the caller to send the content only once the target could be created. */
    if (sandbox__proto_send(conn, PROTO_DATA, NULL, 0, NULL) < 0 ||
        receive_into(conn, fd, max, &n, &e) < 0 || fchmod(fd, mode ? mode : 0644) < 0 ||
        rename(tmp, path) < 0) {
        unlink(tmp);
        if (e == NULL)
            err_set(&e, errno_code(errno), errno, "write %s", path);
        return fail(conn, e);
    }
    return ok(conn, json_pack("{s:I}", "bytes", (json_int_t)n));
}

static enum sandbox_file_type
type_of(mode_t m)
{
    if (S_ISREG(m))
        return SANDBOX_FILE_REG;
    if (S_ISDIR(m))
        return SANDBOX_FILE_DIR;
    if (S_ISLNK(m))
        return SANDBOX_FILE_LINK;
    return SANDBOX_FILE_OTHER;
}

static int
send_entry(int conn, const char *path, const struct stat *st)
{
    json_t *j = json_pack("{s:o, s:i, s:I, s:i, s:I}", "path", sandbox__json_bytes(path), "type",
                          type_of(st->st_mode),
                          "size", (json_int_t)st->st_size, "mode", (int)(st->st_mode & 07777),
                          "mtime_ms",
                          (json_int_t)st->st_mtim.tv_sec * 1000 + st->st_mtim.tv_nsec / 1000000);
    int r = sandbox__proto_send_json(conn, PROTO_ENTRY, j, NULL);

    json_decref(j);
    return r;
}

/* Lists the entries of the directory open at dfd (named path), descending when asked. */
static int
list_dir(int conn, int dfd, const char *path, bool recursive, int depth, size_t *count,
         struct err **errp)
{
    DIR *d = fdopendir(dfd);
    struct dirent *de;
    int rc = 0;

    if (d == NULL) {
        close(dfd);
        return err_set(errp, ERR_IO, errno, "list %s", path);
    }
    while (rc == 0 && (de = readdir(d)) != NULL) {
        struct stat st;
        cleanup_free char *child = NULL;
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue; /* removed while listing */
        if (++*count > LIST_MAX_ENTRIES) {
            rc = err_set(errp, ERR_LIMIT, 0, "more than %d entries", LIST_MAX_ENTRIES);
            break;
        }
        child = xasprintf("%s%s%s", path, strcmp(path, "/") == 0 ? "" : "/", de->d_name);
        if (send_entry(conn, child, &st) < 0) {
            rc = err_set(errp, ERR_IO, 0, "caller went away");
            break;
        }
        if (recursive && S_ISDIR(st.st_mode) && depth < LIST_MAX_DEPTH) {
            int cfd = openat(dirfd(d), de->d_name,
                             O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (cfd >= 0)
                rc = list_dir(conn, cfd, child, recursive, depth + 1, count, errp);
        }
    }
    closedir(d);
    return rc;
}

int
sandbox__handle_list(int conn, json_t *req)
{
    cleanup_free char *path = NULL;
    struct err *e = NULL;
    struct stat st;
    size_t count = 0;
    int dfd;

    if (req_path(req, &path, &e) < 0)
        return fail(conn, e);
    if (lstat(path, &st) < 0) {
        int en = errno;
        return fail(conn, (err_set(&e, errno_code(en), en, "list %s", path), e));
    }
    if (!S_ISDIR(st.st_mode)) {
        if (send_entry(conn, path, &st) < 0)
            return 1;
        return ok(conn, json_pack("{s:i}", "count", 1));
    }
    dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        int en = errno;
        return fail(conn, (err_set(&e, errno_code(en), en, "list %s", path), e));
    }
    if (list_dir(conn, dfd, path, json_is_true(json_object_get(req, "recursive")), 0, &count,
                 &e) < 0)
        return fail(conn, e);
    return ok(conn, json_pack("{s:I}", "count", (json_int_t)count));
}

/* Removes everything below the directory open at dfd without following any symlink. */
static int
remove_tree(int dfd, const char *path, int depth, struct err **errp)
{
    DIR *d;
    struct dirent *de;
    int rc = 0;

    if (depth > DELETE_MAX_DEPTH) {
        close(dfd);
        return err_set(errp, ERR_LIMIT, 0, "delete %s: deeper than %d levels", path,
                       DELETE_MAX_DEPTH);
    }
    d = fdopendir(dfd);
    if (d == NULL) {
        close(dfd);
        return err_set(errp, ERR_IO, errno, "delete %s", path);
    }
    while (rc == 0 && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (unlinkat(dirfd(d), de->d_name, 0) == 0)
            continue;
        if (errno == EISDIR || errno == EPERM) {
            int cfd = openat(dirfd(d), de->d_name,
                             O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (cfd < 0) {
                rc = err_set(errp, errno_code(errno), errno, "delete %s/%s", path, de->d_name);
                break;
            }
            rc = remove_tree(cfd, path, depth + 1, errp);
            if (rc == 0 && unlinkat(dirfd(d), de->d_name, AT_REMOVEDIR) < 0)
                rc = err_set(errp, errno_code(errno), errno, "delete %s/%s", path, de->d_name);
        } else if (errno != ENOENT) {
            rc = err_set(errp, errno_code(errno), errno, "delete %s/%s", path, de->d_name);
        }
    }
    closedir(d);
    return rc;
}

int
sandbox__handle_delete(int conn, json_t *req)
{
    cleanup_free char *path = NULL;
    struct err *e = NULL;
    struct stat st;
    bool recursive = json_is_true(json_object_get(req, "recursive"));

    if (req_path(req, &path, &e) < 0)
        return fail(conn, e);
    if (strcmp(path, "/") == 0)
        return fail(conn, (err_set(&e, ERR_INVALID, 0, "refusing to delete /"), e));
    if (lstat(path, &st) < 0) {
        int en = errno;
        return fail(conn, (err_set(&e, errno_code(en), en, "delete %s", path), e));
    }
    if (S_ISDIR(st.st_mode)) {
        int dfd;
        if (!recursive && rmdir(path) < 0) {
            int en = errno;
            if (en == ENOTEMPTY || en == EEXIST)
                return fail(conn, (err_set(&e, ERR_CONFLICT, 0,
                                           "delete %s: directory not empty (ask for recursive)",
                                           path),
                                   e));
            return fail(conn, (err_set(&e, errno_code(en), en, "delete %s", path), e));
        }
        if (recursive) {
            dfd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (dfd < 0 || remove_tree(dfd, path, 0, &e) < 0 || rmdir(path) < 0) {
                if (e == NULL)
                    err_set(&e, errno_code(errno), errno, "delete %s", path);
                return fail(conn, e);
            }
        }
    } else if (unlink(path) < 0) {
        int en = errno;
        return fail(conn, (err_set(&e, errno_code(en), en, "delete %s", path), e));
    }
    return ok(conn, json_object());
}
