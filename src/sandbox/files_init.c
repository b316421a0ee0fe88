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

enum err_code
sandbox__errno_code(int e)
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
    case ENAMETOOLONG: /* a caller's bad path */
    case ENXIO:        /* a device without a driver: not a file to read */
    case ENODEV:
    case ELOOP:
        return ERR_INVALID;
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
        return fail(conn, (err_set(&e, sandbox__errno_code(en), en, "read %s", path), e));
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
            return err_set(errp, sandbox__errno_code(errno), errno, "mkdir %s", p);
        *s = '/';
    }
    if (mkdir(p, 0755) < 0 && errno != EEXIST)
        return err_set(errp, sandbox__errno_code(errno), errno, "mkdir %s", p);
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
            return err_set(errp, sandbox__errno_code(en), en, "write");
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
    bool no_replace = json_is_true(json_object_get(req, "no_replace"));
    uint64_t n = 0;
    char rnd[8];

    if (req_path(req, &path, &e) < 0 || make_parents(path, &e) < 0)
        return fail(conn, e);
    if (no_replace && lstat(path, &st) == 0)
        return fail(conn, (err_set(&e, ERR_CONFLICT, 0, "write %s: exists", path), e));
    if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return fail(conn, (err_set(&e, ERR_CONFLICT, 0, "write %s: is a directory", path), e));
    if (util_random(rnd, sizeof(rnd), &e) < 0)
        return fail(conn, e);
    tmp = xasprintf("%s.paddock-%02x%02x%02x%02x", path, (unsigned char)rnd[0],
                    (unsigned char)rnd[1], (unsigned char)rnd[2], (unsigned char)rnd[3]);
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode ? mode : 0644);
    if (fd < 0) {
        int en = errno;
        return fail(conn, (err_set(&e, sandbox__errno_code(en), en, "write %s", path), e));
    }
    /* Tell the caller to send the content only once the target could be created. */
    /* Without replacing, the rename is the check: a file made while the content came in
     * is not overwritten (EEXIST). */
    if (sandbox__proto_send(conn, PROTO_DATA, NULL, 0, NULL) < 0 ||
        receive_into(conn, fd, max, &n, &e) < 0 || fchmod(fd, mode ? mode : 0644) < 0 ||
        renameat2(AT_FDCWD, tmp, AT_FDCWD, path, no_replace ? RENAME_NOREPLACE : 0) < 0) {
        int en = errno;
        unlink(tmp);
        if (e == NULL && en == EEXIST && no_replace)
            err_set(&e, ERR_CONFLICT, 0, "write %s: exists", path);
        else if (e == NULL)
            err_set(&e, sandbox__errno_code(en), en, "write %s", path);
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

/*
 * Compares two absolute paths component by component: '/' sorts before every other byte, so
 * a directory comes right before its own entries, the order of a sorted depth-first walk.
 */
static int
path_cmp(const char *a, const char *b)
{
    for (;; a++, b++) {
        unsigned ca = *a == '/' ? 1u : (unsigned char)*a + 1u;
        unsigned cb = *b == '/' ? 1u : (unsigned char)*b + 1u;
        if (*a == '\0')
            ca = 0;
        if (*b == '\0')
            cb = 0;
        if (ca != cb)
            return ca < cb ? -1 : 1;
        if (ca == 0)
            return 0;
    }
}

struct list_walk {
    int conn;
    struct proto_alive alive; /* for stretches that emit nothing (before a resume point) */
    bool recursive;
    const char *after; /* resume strictly after this path in walk order; NULL: from the start */
    size_t limit;      /* stop after this many entries; 0: no limit */
    size_t emitted;
    size_t scanned;
};

enum { LIST_STOP = 1 };

static int
cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int
sandbox__dir_names(DIR *d, const char *skip, size_t max, char ***names_out, size_t *n_out,
                   struct err **errp)
{
    struct dirent *de;
    char **names = NULL;
    size_t n = 0, cap = 0;

    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 ||
            (skip != NULL && strcmp(de->d_name, skip) == 0))
            continue;
        if (n == max) {
            sandbox__names_free(names, n);
            return err_set(errp, ERR_LIMIT, 0, "more than %zu entries to list", max);
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            names = xrealloc(names, cap * sizeof(*names));
        }
        names[n++] = xstrdup(de->d_name);
    }
    if (n > 0) /* qsort(NULL, 0, ...) is undefined */
        qsort(names, n, sizeof(*names), cmp_names);
    *names_out = names;
    *n_out = n;
    return 0;
}

void
sandbox__names_free(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* Never descended into by a recursive listing: kernel views, not files of the environment. */
static bool
pseudo_fs(const char *path)
{
    return strcmp(path, "/proc") == 0 || strcmp(path, "/sys") == 0 || strcmp(path, "/dev") == 0;
}

/*
 * Lists the entries of the directory open at dfd (named path) in sorted order, descending
 * when asked; returns LIST_STOP once the limit is reached.
 */
static int
list_dir(struct list_walk *w, int dfd, const char *path, int depth, struct err **errp)
{
    DIR *d = fdopendir(dfd);
    char **names = NULL;
    size_t n = 0;
    int rc = 0;

    if (d == NULL) {
        close(dfd);
        return err_set(errp, ERR_IO, errno, "list %s", path);
    }
    if (sandbox__dir_names(d, NULL, LIST_MAX_ENTRIES - w->scanned, &names, &n, errp) < 0) {
        closedir(d);
        return -1;
    }
    w->scanned += n;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        struct stat st;
        cleanup_free char *child =
            xasprintf("%s%s%s", path, strcmp(path, "/") == 0 ? "" : "/", names[i]);
        bool emit = true, descend = w->recursive;

        sandbox__proto_alive(&w->alive);
        if (w->after != NULL) {
            int c = path_cmp(child, w->after);
            size_t cl = strlen(child);
            if (c <= 0) {
                emit = false;
                /* Only the subtree that holds the resume point still has entries after it. */
                descend = descend && (c == 0 || (strncmp(w->after, child, cl) == 0 &&
                                                 w->after[cl] == '/'));
            }
        }
        if (!emit && !descend)
            continue;
        if (fstatat(dirfd(d), names[i], &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue; /* removed while listing */
        if (emit) {
            if (send_entry(w->conn, child, &st) < 0) {
                rc = err_set(errp, ERR_IO, 0, "caller went away");
                break;
            }
            if (w->limit > 0 && ++w->emitted >= w->limit) {
                rc = LIST_STOP;
                break;
            }
        }
        if (descend && S_ISDIR(st.st_mode) && depth < LIST_MAX_DEPTH && !pseudo_fs(child)) {
            int cfd = openat(dirfd(d), names[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (cfd >= 0)
                rc = list_dir(w, cfd, child, depth + 1, errp);
        }
    }
    sandbox__names_free(names, n);
    closedir(d);
    return rc;
}

int
sandbox__handle_list(int conn, json_t *req)
{
    cleanup_free char *path = NULL;
    cleanup_free char *after = NULL;
    struct err *e = NULL;
    struct stat st;
    struct list_walk w = { .conn = conn, .alive = { conn, 0 } };
    json_t *ja = json_object_get(req, "after");
    int dfd, rc;

    if (req_path(req, &path, &e) < 0)
        return fail(conn, e);
    if (ja != NULL && (after = sandbox__bytes_from_json(ja)) == NULL)
        return fail(conn, (err_set(&e, ERR_INVALID, 0, "bad resume position"), e));
    w.after = after;
    w.recursive = json_is_true(json_object_get(req, "recursive"));
    w.limit = (size_t)json_integer_value(json_object_get(req, "limit"));
    if (lstat(path, &st) < 0) {
        int en = errno;
        return fail(conn, (err_set(&e, sandbox__errno_code(en), en, "list %s", path), e));
    }
    if (!S_ISDIR(st.st_mode)) {
        if (after == NULL && send_entry(conn, path, &st) < 0)
            return 1;
        return ok(conn, json_pack("{s:i}", "count", after == NULL));
    }
    dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        int en = errno;
        return fail(conn, (err_set(&e, sandbox__errno_code(en), en, "list %s", path), e));
    }
    rc = list_dir(&w, dfd, path, 0, &e);
    if (rc < 0)
        return fail(conn, e);
    return ok(conn, json_pack("{s:I, s:b}", "count", (json_int_t)w.emitted, "more",
                              rc == LIST_STOP));
}

/*
 * Removes everything below the directory open at dfd without following any symlink; alive
 * keeps the caller waiting for as long as that takes.
 */
static int
remove_tree(int dfd, const char *path, int depth, struct proto_alive *alive, struct err **errp)
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
        sandbox__proto_alive(alive);
        if (unlinkat(dirfd(d), de->d_name, 0) == 0)
            continue;
        if (errno == EISDIR || errno == EPERM) {
            int cfd = openat(dirfd(d), de->d_name,
                             O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (cfd < 0) {
                rc = err_set(errp, sandbox__errno_code(errno), errno, "delete %s/%s", path, de->d_name);
                break;
            }
            rc = remove_tree(cfd, path, depth + 1, alive, errp);
            if (rc == 0 && unlinkat(dirfd(d), de->d_name, AT_REMOVEDIR) < 0)
                rc = err_set(errp, sandbox__errno_code(errno), errno, "delete %s/%s", path, de->d_name);
        } else if (errno != ENOENT) {
            rc = err_set(errp, sandbox__errno_code(errno), errno, "delete %s/%s", path, de->d_name);
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
    struct proto_alive alive = { conn, 0 };
    bool recursive = json_is_true(json_object_get(req, "recursive"));

    if (req_path(req, &path, &e) < 0)
        return fail(conn, e);
    if (strcmp(path, "/") == 0)
        return fail(conn, (err_set(&e, ERR_INVALID, 0, "refusing to delete /"), e));
    if (lstat(path, &st) < 0) {
        int en = errno;
        return fail(conn, (err_set(&e, sandbox__errno_code(en), en, "delete %s", path), e));
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
            return fail(conn, (err_set(&e, sandbox__errno_code(en), en, "delete %s", path), e));
        }
        if (recursive) {
            dfd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (dfd < 0 || remove_tree(dfd, path, 0, &alive, &e) < 0 || rmdir(path) < 0) {
                if (e == NULL)
                    err_set(&e, sandbox__errno_code(errno), errno, "delete %s", path);
                return fail(conn, e);
            }
        }
    } else if (unlink(path) < 0) {
        int en = errno;
        return fail(conn, (err_set(&e, sandbox__errno_code(en), en, "delete %s", path), e));
    }
    return ok(conn, json_object());
}
