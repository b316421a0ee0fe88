/*
 * Operations on the environment's own layer, run by a handler inside the sandbox: the
 * snapshot (a tar of everything the environment added or changed over its base image),
 * the count of those files, and the extraction of an archive into a directory.
 *
 * The layer is the overlay's upper directories. init keeps them open as O_PATH descriptors
 * (SANDBOX_FD_UPPER_ROOT, SANDBOX_FD_UPPER_USR) from before pivot_root, so a handler walks
 * them with openat() relative to those fds, never following a symlink, and sees owners as
 * they are inside the sandbox because it runs in the sandbox's user namespace. Overlay
 * whiteouts (character devices 0:0) mark deletions of base files and are not files of the
 * environment; they are left out.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <search.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>

#include "sandbox_int.h"

/* Each level holds a directory open: well under the sandbox's descriptor limit (1024). */
#define WALK_MAX_DEPTH 512
#define TAR_BLOCK      (512u * 1024)

struct walk {
    int conn;
    struct proto_alive alive;
    struct archive *ar; /* NULL: only count */
    uint64_t files;
    uint64_t bytes;
    char *buf; /* file content, TAR_BLOCK bytes */
    struct err *e;
};

static ssize_t
tar_write_cb(struct archive *a, void *arg, const void *data, size_t len)
{
    struct walk *w = arg;

    (void)a;
    if (sandbox__proto_send(w->conn, PROTO_DATA, data, len, NULL) < 0)
        return -1;
    return (ssize_t)len;
}

static int
ar_fail(struct walk *w, const char *what, const char *path)
{
    if (w->e == NULL)
        err_set(&w->e, ERR_IO, archive_errno(w->ar), "%s %s: %s", what, path,
                archive_error_string(w->ar) ? archive_error_string(w->ar) : "failed");
    return -1;
}

/* Adds one entry (and, for a regular file, its content) to the archive. */
static int
add_entry(struct walk *w, int dfd, const char *name, const char *path, const struct stat *st)
{
    struct archive_entry *ent;
    cleanup_close int fd = -1;
    char target[4096];
    int rc = 0;

    if (S_ISCHR(st->st_mode) && st->st_rdev == makedev(0, 0))
        return 0; /* a whiteout: a base file this environment deleted */
    if (!S_ISDIR(st->st_mode)) {
        w->files++;
        if (S_ISREG(st->st_mode))
            w->bytes += (uint64_t)st->st_size;
    }
    if (w->ar == NULL)
        return 0;
    if (S_ISBLK(st->st_mode) || S_ISCHR(st->st_mode) || S_ISSOCK(st->st_mode))
        return 0;
    if (S_ISREG(st->st_mode)) {
        fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
            return 0; /* removed while we walked */
    }
    ent = archive_entry_new();
    archive_entry_copy_pathname(ent, path);
    archive_entry_copy_stat(ent, st);
    if (S_ISLNK(st->st_mode)) {
        ssize_t n = readlinkat(dfd, name, target, sizeof(target) - 1);
        if (n < 0) {
            archive_entry_free(ent);
            return 0;
        }
        target[n] = '\0';
        archive_entry_copy_symlink(ent, target);
    }
    /* A warning (a name that is not UTF-8, written as raw bytes) still wrote the entry. */
    if (archive_write_header(w->ar, ent) < ARCHIVE_WARN)
        rc = ar_fail(w, "archive", path);
    archive_entry_free(ent);
    if (rc < 0 || fd < 0)
        return rc;
    /* Exactly st_size bytes: a file that changes under us is cut or padded by libarchive. */
    for (uint64_t left = (uint64_t)st->st_size; left > 0;) {
        ssize_t n = read(fd, w->buf, left < TAR_BLOCK ? (size_t)left : TAR_BLOCK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (archive_write_data(w->ar, w->buf, (size_t)n) < 0)
            return ar_fail(w, "archive", path);
        left -= (uint64_t)n;
    }
    return 0;
}

/* Walks the directory open at dfd whose archive path is prefix ("" at the top). */
static int
walk_dir(struct walk *w, int dfd, const char *prefix, int depth, const char *skip)
{
    DIR *d;
    char **names = NULL;
    size_t n = 0;
    int rc = 0;

    if (depth > WALK_MAX_DEPTH) {
        close(dfd);
        return err_set(&w->e, ERR_LIMIT, 0, "snapshot: %s is deeper than %d levels", prefix,
                       WALK_MAX_DEPTH);
    }
    d = fdopendir(dfd);
    if (d == NULL) {
        close(dfd);
        return err_set(&w->e, ERR_IO, errno, "snapshot: open %s", prefix);
    }
    /* Sorted, so the same files always give the same archive. */
    if (sandbox__dir_names(d, skip, 1000000, &names, &n, &w->e) < 0) {
        closedir(d);
        return -1;
    }
    for (size_t i = 0; i < n && rc == 0; i++) {
        struct stat st;
        cleanup_free char *path = xasprintf("%s%s%s", prefix, *prefix ? "/" : "", names[i]);

        sandbox__proto_alive(&w->alive);
        if (fstatat(dirfd(d), names[i], &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue;
        rc = add_entry(w, dirfd(d), names[i], path, &st);
        if (rc == 0 && S_ISDIR(st.st_mode)) {
            int cfd = openat(dirfd(d), names[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (cfd >= 0)
                rc = walk_dir(w, cfd, path, depth + 1, NULL);
        }
    }
    sandbox__names_free(names, n);
    closedir(d);
    return rc;
}

/* Walks one upper layer: the root's (without its usr, which has a layer of its own) or usr. */
static int
walk_layer(struct walk *w, int layer_fd, const char *prefix, const char *skip)
{
    int dfd = openat(layer_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    struct stat st;

    if (dfd < 0)
        return err_set(&w->e, ERR_INTERNAL, errno, "snapshot: open layer");
    if (*prefix != '\0' && fstat(dfd, &st) == 0 && add_entry(w, dfd, ".", prefix, &st) < 0) {
        close(dfd);
        return -1;
    }
    return walk_dir(w, dfd, prefix, 0, skip);
}

int
sandbox__handle_snapshot(int conn, json_t *req)
{
    struct walk w = { .conn = conn, .alive = { conn, 0 } };
    bool count_only = json_is_true(json_object_get(req, "count_only"));
    cleanup_free char *buf = NULL;
    json_t *res;
    int rc;

    if (!count_only) {
        buf = xmalloc(TAR_BLOCK);
        w.buf = buf;
        w.ar = archive_write_new();
        if (archive_write_set_format_pax_restricted(w.ar) != ARCHIVE_OK ||
            archive_write_set_bytes_per_block(w.ar, (int)TAR_BLOCK) != ARCHIVE_OK ||
            archive_write_set_bytes_in_last_block(w.ar, 1) != ARCHIVE_OK ||
            archive_write_open2(w.ar, &w, NULL, tar_write_cb, NULL, NULL) != ARCHIVE_OK) {
            ar_fail(&w, "start", "archive");
            archive_write_free(w.ar);
            sandbox__proto_send_error(conn, w.e);
            err_free(w.e);
            return 1;
        }
    }
    rc = walk_layer(&w, SANDBOX_FD_UPPER_ROOT, "", "usr");
    if (rc == 0)
        rc = walk_layer(&w, SANDBOX_FD_UPPER_USR, "usr", NULL);
    if (w.ar != NULL) {
        if (rc == 0 && archive_write_close(w.ar) != ARCHIVE_OK)
            rc = ar_fail(&w, "finish", "archive");
        archive_write_free(w.ar);
    }
    if (rc < 0) {
        sandbox__proto_send_error(conn, w.e);
        err_free(w.e);
        return 1;
    }
    res = json_pack("{s:b, s:I, s:I}", "ok", 1, "files", (json_int_t)w.files, "bytes",
                    (json_int_t)w.bytes);
    rc = sandbox__proto_send_json(conn, PROTO_RESULT, res, NULL);
    json_decref(res);
    return rc < 0 ? 1 : 0;
}

/* ------------------------------------------------------------- extraction */

/* Reads the archive from DATA frames; libarchive pulls, the caller pushes. */
struct pull {
    int conn;
    struct proto_frame f;
    bool eof;
    uint64_t total;
    uint64_t max;
    struct err *e;
};

static ssize_t
pull_read(struct archive *a, void *arg, const void **buf)
{
    struct pull *p = arg;

    (void)a;
    sandbox__proto_frame_free(&p->f);
    if (p->eof)
        return 0;
    for (;;) {
        if (sandbox__proto_recv(p->conn, &p->f, &p->e) < 0)
            return -1;
        if (p->f.type == PROTO_DATA_EOF) {
            p->eof = true;
            sandbox__proto_frame_free(&p->f);
            return 0;
        }
        if (p->f.type != PROTO_DATA) {
            err_set(&p->e, ERR_INVALID, 0, "expected archive data");
            return -1;
        }
        p->total += p->f.len;
        if (p->max > 0 && p->total > p->max) {
            err_set(&p->e, ERR_LIMIT, 0, "archive larger than %llu bytes",
                    (unsigned long long)p->max);
            return -1;
        }
        if (p->f.len > 0) {
            *buf = p->f.data;
            return (ssize_t)p->f.len;
        }
        sandbox__proto_frame_free(&p->f);
    }
}

/* One entry as the first pass saw it. */
struct seen {
    char *name; /* normalised: no "." components, no trailing '/' */
    char kind;  /* 'f' file, 'd' directory, 'l' symlink, 'h' hard link, 'o' other */
    char *link; /* symlink or hard link target, as written */
};

struct seen_set {
    struct seen *v;
    size_t n, cap;
};

/*
 * "./a//b/" -> "a/b"; "." or "./" -> "" (the target directory itself); NULL for an absolute
 * name, a ".." component, or no name at all.
 */
static char *
norm_name(const char *in)
{
    struct buf b;

    if (in == NULL || in[0] == '/' || in[0] == '\0')
        return NULL;
    buf_init(&b, 8192);
    for (const char *p = in; *p != '\0';) {
        size_t seg = strcspn(p, "/");
        if (seg == 2 && p[0] == '.' && p[1] == '.') {
            buf_free(&b);
            return NULL;
        }
        if (seg > 0 && !(seg == 1 && p[0] == '.')) {
            if ((b.len > 0 && buf_append(&b, "/", 1, NULL) < 0) ||
                buf_append(&b, p, seg, NULL) < 0)
                return NULL;
        }
        p += seg;
        while (*p == '/')
            p++;
    }
    if (b.len == 0) {
        buf_free(&b);
        return xstrdup("");
    }
    return buf_steal(&b, NULL);
}

static int
cmp_seen(const void *a, const void *b)
{
    return strcmp(((const struct seen *)a)->name, ((const struct seen *)b)->name);
}

static const struct seen *
find_seen(const struct seen_set *s, const char *name)
{
    struct seen key = {(char *)(uintptr_t)name, 0, NULL};

    return s->n == 0 ? NULL : bsearch(&key, s->v, s->n, sizeof(*s->v), cmp_seen);
}

/* True when a proper prefix of path (a/b of a/b/c) is a symlink of the archive. */
static bool
through_link(const struct seen_set *s, const char *path)
{
    cleanup_free char *p = xstrdup(path);

    for (char *slash = strchr(p, '/'); slash != NULL; slash = strchr(slash + 1, '/')) {
        const struct seen *e;
        *slash = '\0';
        e = find_seen(s, p);
        *slash = '/';
        if (e != NULL && e->kind == 'l')
            return true;
    }
    return false;
}

/*
 * Where a symlink at name pointing to target leads, lexically, as a normalised path inside
 * the extraction directory; NULL when it leaves it (absolute, or climbing above) or when it
 * passes through another symlink of the archive on the way (a chain could lead anywhere).
 */
static char *
link_destination(const struct seen_set *s, const char *name, const char *target)
{
    struct buf b;
    const char *slash = strrchr(name, '/');

    if (target[0] == '/' || target[0] == '\0')
        return NULL;
    buf_init(&b, 16384);
    if (slash != NULL)
        buf_append(&b, name, (size_t)(slash - name), NULL);
    for (const char *p = target; *p != '\0';) {
        size_t seg = strcspn(p, "/");
        if (seg == 2 && p[0] == '.' && p[1] == '.') {
            char *last;
            if (b.len == 0) {
                buf_free(&b);
                return NULL;
            }
            last = strrchr(b.data, '/');
            b.len = last != NULL ? (size_t)(last - b.data) : 0;
            b.data[b.len] = '\0';
        } else if (seg > 0 && !(seg == 1 && p[0] == '.')) {
            const struct seen *e;
            if ((b.len > 0 && buf_append(&b, "/", 1, NULL) < 0) ||
                buf_append(&b, p, seg, NULL) < 0)
                return NULL;
            e = find_seen(s, b.data);
            if (e != NULL && e->kind == 'l' && p[seg] != '\0') {
                buf_free(&b);
                return NULL;
            }
        }
        p += seg;
        while (*p == '/')
            p++;
    }
    return buf_steal(&b, NULL);
}

/* True when an entry of the sorted set lies inside name ("name/..."). */
static bool
has_entries_inside(const struct seen_set *s, const char *name)
{
    cleanup_free char *key = xasprintf("%s/", name);
    size_t lo = 0, hi = s->n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(s->v[mid].name, key) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < s->n && strncmp(s->v[lo].name, key, strlen(key)) == 0;
}

/*
 * Checks the whole archive once every entry is known; the first bad entry refuses it all.
 * Keeps the caller waiting with keep-alives: an archive of a million entries takes seconds.
 */
static int
check_seen(struct seen_set *s, struct proto_alive *alive, struct err **errp)
{
    if (s->n > 0)
        qsort(s->v, s->n, sizeof(*s->v), cmp_seen);
    for (size_t i = 0; i < s->n; i++) {
        const struct seen *e = &s->v[i];
        sandbox__proto_alive(alive);
        if (i > 0 && strcmp(s->v[i - 1].name, e->name) == 0 && (e->kind == 'l' ||
                                                                s->v[i - 1].kind == 'l'))
            return err_set(errp, ERR_INVALID, 0, "archive entry '%s' is both a link and "
                           "something else", e->name);
        if (through_link(s, e->name))
            return err_set(errp, ERR_INVALID, 0,
                           "archive entry '%s' would be written through a symlink", e->name);
        if (e->kind == 'l') {
            cleanup_free char *dest = link_destination(s, e->name, e->link);
            if (dest == NULL)
                return err_set(errp, ERR_INVALID, 0,
                               "archive entry '%s' links outside the target (%s)", e->name,
                               e->link);
        } else if (e->kind == 'h') {
            cleanup_free char *t = norm_name(e->link);
            const struct seen *to = t != NULL ? find_seen(s, t) : NULL;
            if (to == NULL || to->kind != 'f' || through_link(s, t))
                return err_set(errp, ERR_INVALID, 0,
                               "archive entry '%s' hard-links to '%s', which is not a file of "
                               "the archive",
                               e->name, e->link);
        }
        /* A name that is a file and a directory has no one result; the second pass stages
         * every entry before any replaces another, so it could not order them as a tape. */
        if (e->kind != 'l' && ((i > 0 && strcmp(s->v[i - 1].name, e->name) == 0 &&
                                (e->kind == 'd') != (s->v[i - 1].kind == 'd')) ||
                               (e->kind != 'd' && has_entries_inside(s, e->name))))
            return err_set(errp, ERR_INVALID, 0,
                           "archive entry '%s' is both a directory and something else", e->name);
    }
    return 0;
}

static void
seen_free(struct seen_set *s)
{
    for (size_t i = 0; i < s->n; i++) {
        free(s->v[i].name);
        free(s->v[i].link);
    }
    free(s->v);
}

/* Records one entry of the first pass. */
static int
see_entry(struct seen_set *s, struct archive_entry *ent, struct err **errp)
{
    const char *raw = archive_entry_pathname(ent);
    const char *sym = archive_entry_symlink(ent);
    const char *hard = archive_entry_hardlink(ent);
    mode_t type = archive_entry_filetype(ent);
    char *name = norm_name(raw);
    char kind;

    if (name == NULL)
        return err_set(errp, ERR_INVALID, 0,
                       "archive entry '%s' has an absolute path, a '..' component or no name",
                       raw != NULL ? raw : "");
    if (name[0] == '\0') {
        /* "./", which tar -C dir -c . writes first: the target itself, which is left as it is
         * (its mode and times are the environment's, not the archive's). */
        free(name);
        if (type == AE_IFDIR && hard == NULL)
            return 0;
        return err_set(errp, ERR_INVALID, 0,
                       "archive entry '%s' names the target directory but is not a directory", raw);
    }
    if (hard != NULL)
        kind = 'h';
    else if (type == AE_IFLNK)
        kind = 'l';
    else if (type == AE_IFDIR)
        kind = 'd';
    else if (type == AE_IFREG)
        kind = 'f';
    else if (type == AE_IFIFO)
        kind = 'o';
    else {
        err_set(errp, ERR_INVALID, 0, "archive entry '%s' is a device or socket; not extracted",
                name);
        free(name);
        return -1;
    }
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 256;
        s->v = xrealloc(s->v, s->cap * sizeof(*s->v));
    }
    s->v[s->n].name = name;
    s->v[s->n].kind = kind;
    s->v[s->n].link = kind == 'l' ? xstrdup(sym != NULL ? sym : "")
                      : kind == 'h' ? xstrdup(hard) : NULL;
    s->n++;
    return 0;
}

/*
 * The spooled archive, read by both passes. Its reader is archive_read_open_fd()'s, plus a
 * keep-alive to the caller at every block: checking or extracting a large archive sends
 * nothing else until the result.
 */
struct spool {
    int *fd; /* the caller's: extract_archive closes it once read */
    struct proto_alive alive;
    char *buf; /* TAR_BLOCK bytes */
};

/*
 * True once the caller has gone (it gave up after PROTO_TIMEOUT_MS without a frame: the handler
 * was stopped, say). It sends nothing after the archive, so a readable connection is its end.
 */
static bool
caller_gone(int conn)
{
    struct pollfd pfd = { .fd = conn, .events = POLLIN | POLLRDHUP };
    int r = poll(&pfd, 1, 0);

    return r > 0 || (r < 0 && errno != EINTR);
}

/* Sends a keep-alive when one is due and then looks whether the caller is still there. */
static bool
alive_or_gone(struct proto_alive *a)
{
    int64_t due = a->next_ns;

    sandbox__proto_alive(a);
    return a->next_ns != due && caller_gone(a->conn);
}

static la_ssize_t
spool_read(struct archive *a, void *arg, const void **buf)
{
    struct spool *s = arg;
    ssize_t n;

    if (alive_or_gone(&s->alive)) {
        /* Nobody waits for the result: stop, and the extraction rolls back. */
        archive_set_error(a, ECONNRESET, "the caller went away");
        return -1;
    }
    do
        n = read(*s->fd, s->buf, TAR_BLOCK);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        archive_set_error(a, errno, "read the spooled archive");
    *buf = s->buf;
    return n;
}

/* Skips by seeking; 0 (nothing skipped) makes libarchive read through instead. */
static la_int64_t
spool_skip(struct archive *a, void *arg, la_int64_t request)
{
    struct spool *s = arg;
    off_t from = lseek(*s->fd, 0, SEEK_CUR);
    off_t to = from < 0 ? -1 : lseek(*s->fd, request, SEEK_CUR);

    (void)a;
    return to < 0 ? 0 : to - from;
}

static la_int64_t
spool_seek(struct archive *a, void *arg, la_int64_t offset, int whence)
{
    struct spool *s = arg;
    off_t r = lseek(*s->fd, offset, whence);

    if (r < 0) {
        archive_set_error(a, errno, "seek in the spooled archive");
        return ARCHIVE_FATAL;
    }
    return r;
}

/* Opens the archive on the spooled copy (rewound). */
static struct archive *
open_spool(struct spool *s, struct err **errp)
{
    struct archive *a = archive_read_new();

    archive_read_support_filter_all(a);
    archive_read_support_format_tar(a);
    archive_read_support_format_zip(a);
    archive_read_set_callback_data(a, s);
    archive_read_set_read_callback(a, spool_read);
    archive_read_set_skip_callback(a, spool_skip);
    archive_read_set_seek_callback(a, spool_seek);
    if (lseek(*s->fd, 0, SEEK_SET) < 0 || archive_read_open1(a) != ARCHIVE_OK) {
        err_set(errp, ERR_INVALID, 0, "not a tar or zip archive: %s",
                archive_error_string(a) ? archive_error_string(a) : "unreadable");
        archive_read_free(a);
        return NULL;
    }
    return a;
}

/*
 * First pass: every entry is checked before anything is written: names, types, and where
 * every link leads, with the whole archive's links known (a chain of them could otherwise
 * walk out of the target one innocent-looking step at a time).
 */
static int
check_archive(struct spool *s, uint64_t *entries, struct err **errp)
{
    struct archive *a = open_spool(s, errp);
    struct archive_entry *ent;
    int r;

    if (a == NULL)
        return -1;
    *entries = 0;
    struct seen_set seen = {NULL, 0, 0};
    int rc = 0;

    while ((r = archive_read_next_header(a, &ent)) == ARCHIVE_OK || r == ARCHIVE_WARN) {
        if (see_entry(&seen, ent, errp) < 0) {
            rc = -1;
            break;
        }
        (*entries)++;
    }
    if (rc == 0 && r != ARCHIVE_EOF)
        rc = err_set(errp, ERR_INVALID, 0, "bad archive: %s",
                     archive_error_string(a) ? archive_error_string(a) : "unreadable");
    if (rc == 0)
        rc = check_seen(&seen, &s->alive, errp);
    seen_free(&seen);
    archive_read_free(a);
    return rc;
}

/*
 * The second pass replaces nothing while it writes. Every file, link or fifo of the archive is
 * written under a temporary name in the directory it belongs in (the same file system, so a
 * rename(2) at the end replaces the old one atomically); a missing directory is made where it
 * belongs (it replaces nothing); a directory where the environment has a symlink, or a
 * non-directory the archive names as a directory, is made under a temporary name and
 * exchanged for it at the end. Only once the last entry has been written does stage_commit()
 * move everything into place; a failure before that removes every temporary and every
 * directory the extraction made, so the environment's files are as they were.
 */
enum stage_kind {
    STAGE_FILE,  /* tmp goes to dest, replacing a non-directory or an empty directory */
    STAGE_MKDIR, /* dest was made where it belongs; removed again if still empty */
    STAGE_XDIR,  /* tmp, a new directory, goes to dest, replacing a non-directory */
};

/* What a STAGE_FILE or STAGE_XDIR put in its place did with what was at dest. */
enum stage_old {
    STAGE_OLD_NONE,      /* nothing was there */
    STAGE_OLD_AT_TMP,    /* exchanged: the old non-directory is at tmp until the commit ends */
    STAGE_OLD_DIR_AT_TMP, /* exchanged: the old empty directory is at tmp until the commit ends */
    STAGE_OLD_EMPTY_DIR,  /* an empty directory of a lower layer, removed (made again on undo) */
    STAGE_OLD_LOWER,      /* a file of a lower layer: replaced by a rename, after the last check */
};

struct stage_op {
    enum stage_kind kind;
    char *tmp;   /* the temporary name; NULL once gone, or once in place for good */
    char *dest;  /* where it belongs, relative to the target directory */
    bool hidden; /* dest is inside a directory that is itself under a temporary name */
    size_t xdir; /* hidden: the STAGE_XDIR whose temporary directory dest is inside */
    bool placed; /* at dest, and undone (put back to tmp) if the commit fails */
    enum stage_old old;
    mode_t old_mode; /* STAGE_OLD_EMPTY_DIR: its permissions */
    ino_t ino;       /* what was placed, so an undo moves only that */
    dev_t dev;
};

/* A name of the archive, as far as the second pass has got with it. */
struct stage_node {
    char *name; /* normalised, as in struct seen */
    char *path; /* a directory: where it is until commit (inside a temporary one, maybe) */
    size_t op;  /* a non-directory: its STAGE_FILE */
    size_t xdir; /* hidden: the STAGE_XDIR whose temporary directory this is, or is inside */
    bool dir;
    bool hidden; /* a directory whose path is, or is inside, a temporary directory */
    bool meta;   /* a directory entry of the archive: its mode and time are set at commit */
    mode_t mode;
    struct timespec times[2];
};

struct stage {
    void *names; /* tsearch(3) tree of struct stage_node, by name */
    struct stage_op *ops;
    size_t n_ops, cap_ops;
    struct stage_node **metas;
    size_t n_metas, cap_metas;
    char tag[17]; /* random: a temporary name never meets a name of the archive */
    uint64_t seq;
    struct proto_alive *alive; /* the caller's keep-alives, borrowed from the spool */
    size_t undo_failed;        /* entries the commit could not put back */
    bool committed;            /* past the point of no return: nothing to roll back */
};

static int
cmp_node(const void *a, const void *b)
{
    return strcmp(((const struct stage_node *)a)->name, ((const struct stage_node *)b)->name);
}

static struct stage_node *
stage_find(struct stage *st, const char *name)
{
    struct stage_node key = { .name = (char *)(uintptr_t)name };
    struct stage_node **hit = tfind(&key, &st->names, cmp_node);

    return hit != NULL ? *hit : NULL;
}

static struct stage_node *
stage_add(struct stage *st, const char *name, bool dir)
{
    struct stage_node *n = xcalloc(1, sizeof(*n));

    n->name = xstrdup(name);
    n->dir = dir;
    ASSERT(tsearch(n, &st->names, cmp_node) != NULL); /* fails only without memory */
    return n;
}

/* Records one step in directory parent; takes ownership of tmp and dest. */
static size_t
stage_op_add(struct stage *st, const struct stage_node *parent, enum stage_kind kind, char *tmp,
             char *dest)
{
    if (st->n_ops == st->cap_ops) {
        st->cap_ops = st->cap_ops ? st->cap_ops * 2 : 64;
        st->ops = xrealloc(st->ops, st->cap_ops * sizeof(*st->ops));
    }
    st->ops[st->n_ops] = (struct stage_op){
        .kind = kind, .tmp = tmp, .dest = dest, .hidden = parent->hidden, .xdir = parent->xdir
    };
    return st->n_ops++;
}

/* "dir" and "base" -> "dir/base", where the target directory itself is ".". Owned. */
static char *
path_join(const char *dir, const char *base)
{
    return strcmp(dir, ".") == 0 ? xstrdup(base) : xasprintf("%s/%s", dir, base);
}

/* A fresh temporary name in directory dir. Owned. */
static char *
stage_tmp(struct stage *st, const char *dir)
{
    cleanup_free char *base =
        xasprintf(".paddock-extract-%s.%llu", st->tag, (unsigned long long)st->seq++);

    return path_join(dir, base);
}

/* Makes the directory name under a temporary name in parent, to replace what is at path
 * (owned) at commit. Returns the new node, borrowed from the stage. */
static struct stage_node *
stage_xdir(struct stage *st, const struct stage_node *parent, const char *name, char *path,
           struct err **errp)
{
    char *tmp = stage_tmp(st, parent->path);
    struct stage_node *n;
    size_t op;
    int en;

    if (mkdir(tmp, 0755) < 0) {
        en = errno;
        free(tmp);
        free(path);
        return err_set(errp, sandbox__errno_code(en), en, "extract: mkdir %s", name), NULL;
    }
    op = stage_op_add(st, parent, STAGE_XDIR, tmp, path);
    n = stage_add(st, name, true);
    n->path = xstrdup(tmp);
    n->hidden = true;
    n->xdir = op;
    return n;
}

/*
 * Finds or makes the directory name (base its last component) in parent, looking at what is
 * there without following it. A regular file in the way of a directory the archive only
 * implies is refused (400: sending the archive again would not help); a symlink, or any
 * non-directory where the archive has a directory entry, is replaced at commit (what
 * libarchive's ARCHIVE_EXTRACT_UNLINK does). Returns the node, borrowed from the stage.
 */
static struct stage_node *
stage_mkdir(struct stage *st, const struct stage_node *parent, const char *name, bool explicit,
            struct err **errp)
{
    const char *slash = strrchr(name, '/');
    cleanup_free char *path = path_join(parent->path, slash != NULL ? slash + 1 : name);
    struct stage_node *n;
    struct stat sb;
    int r = lstat(path, &sb);
    int en = errno;

    if (r == 0 && !S_ISDIR(sb.st_mode)) {
        if (!S_ISLNK(sb.st_mode) && !explicit)
            return err_set(errp, ERR_INVALID, ENOTDIR,
                           "extract: %s exists and is not a directory, but the archive has "
                           "entries in it",
                           name),
                   NULL;
        return stage_xdir(st, parent, name, steal_ptr(&path), errp);
    }
    if (r < 0) {
        if (en != ENOENT || mkdir(path, 0755) < 0) {
            en = en != ENOENT ? en : errno;
            return err_set(errp, sandbox__errno_code(en), en, "extract: mkdir %s", name), NULL;
        }
        stage_op_add(st, parent, STAGE_MKDIR, NULL, xstrdup(path));
    }
    n = stage_add(st, name, true);
    n->path = steal_ptr(&path);
    n->hidden = parent->hidden;
    n->xdir = parent->xdir;
    return n;
}

/*
 * The directory for the archive's name (normalised; "" is the target), found or made as the
 * second pass reaches it, parents first. Borrowed from the stage.
 */
static struct stage_node *
stage_dir(struct stage *st, const char *name, bool explicit, struct err **errp)
{
    struct stage_node *n = stage_find(st, name);
    struct stage_node *parent;
    cleanup_free char *pname = NULL;
    const char *slash = strrchr(name, '/');

    if (n != NULL) {
        if (!n->dir) /* check_seen refuses a name that is both */
            return err_set(errp, ERR_INTERNAL, 0, "extract %s: not a directory", name), NULL;
        return n;
    }
    if (name[0] == '\0') {
        n = stage_add(st, name, true);
        n->path = xstrdup(".");
        return n;
    }
    pname = slash != NULL ? xstrndup(name, (size_t)(slash - name)) : xstrdup("");
    parent = stage_dir(st, pname, false, errp);
    if (parent == NULL)
        return NULL;
    return stage_mkdir(st, parent, name, explicit, errp);
}

static int
disk_fail(struct archive *disk, const char *name, struct err **errp)
{
    int en = archive_errno(disk);

    return err_set(errp, en > 0 ? sandbox__errno_code(en) : ERR_IO, en, "extract %s: %s", name,
                   archive_error_string(disk) ? archive_error_string(disk) : "failed");
}

/* Writes one entry, header and data, where ent's (rewritten) pathname says. */
static int
write_entry(struct archive *a, struct archive *disk, struct archive_entry *ent, const char *name,
            struct err **errp)
{
    const void *block;
    size_t size;
    la_int64_t off;
    int r;

    if (archive_write_header(disk, ent) < ARCHIVE_WARN)
        return disk_fail(disk, name, errp);
    while ((r = archive_read_data_block(a, &block, &size, &off)) == ARCHIVE_OK) {
        if (archive_write_data_block(disk, block, size, off) < ARCHIVE_WARN)
            return disk_fail(disk, name, errp);
    }
    if (r != ARCHIVE_EOF)
        return err_set(errp, ERR_INVALID, 0, "bad archive data for %s: %s", name,
                       archive_error_string(a) ? archive_error_string(a) : "unreadable");
    if (archive_write_finish_entry(disk) < ARCHIVE_WARN)
        return disk_fail(disk, name, errp);
    return 0;
}

/* Points a hard link of the archive at the temporary of the member it names. */
static int
stage_hardlink(struct stage *st, struct archive_entry *ent, const char *name, struct err **errp)
{
    const char *hard = archive_entry_hardlink(ent);
    cleanup_free char *t = norm_name(hard);
    const struct stage_node *to = t != NULL ? stage_find(st, t) : NULL;

    if (to == NULL || to->dir || st->ops[to->op].tmp == NULL)
        return err_set(errp, ERR_INVALID, 0,
                       "archive entry '%s' hard-links to '%s', which is not an earlier file of "
                       "the archive",
                       name, hard);
    archive_entry_copy_hardlink(ent, st->ops[to->op].tmp);
    return 0;
}

/* True when path is a directory with nothing in it (it could then be replaced by a file). */
static bool
dir_is_empty(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *de;
    bool empty = d != NULL;

    while (empty && (de = readdir(d)) != NULL)
        empty = strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0;
    if (d != NULL)
        closedir(d);
    return empty;
}

/* Writes a file, link or fifo of the archive under a temporary name next to where it goes. */
static int
stage_file(struct stage *st, struct archive *a, struct archive *disk, struct archive_entry *ent,
           const char *name, struct err **errp)
{
    const char *slash = strrchr(name, '/');
    const char *base = slash != NULL ? slash + 1 : name;
    cleanup_free char *pname = slash != NULL ? xstrndup(name, (size_t)(slash - name)) : NULL;
    cleanup_free char *dest = NULL;
    struct stage_node *parent, *n;
    struct stat sb;
    char *tmp;

    /* Found now rather than by the rename at commit, when earlier entries are in place. */
    if (strlen(base) > NAME_MAX)
        return err_set(errp, ERR_INVALID, ENAMETOOLONG,
                       "archive entry '%s' has a name longer than %d bytes", name, NAME_MAX);
    parent = stage_dir(st, pname != NULL ? pname : "", false, errp);
    if (parent == NULL)
        return -1;
    dest = path_join(parent->path, base);
    if (strlen(dest) >= PATH_MAX)
        return err_set(errp, ERR_INVALID, ENAMETOOLONG, "archive entry '%s' is too deep", name);
    /* An empty directory is replaced at commit, as libarchive did; one with files in it would
     * lose them, and sending the archive again would not help: 400, not 409. */
    if (lstat(dest, &sb) == 0 && S_ISDIR(sb.st_mode) && !dir_is_empty(dest))
        return err_set(errp, ERR_INVALID, EISDIR,
                       "extract %s: a directory that is not empty is there, and the archive "
                       "has a file",
                       name);
    if (archive_entry_hardlink(ent) != NULL && stage_hardlink(st, ent, name, errp) < 0)
        return -1;
    n = stage_find(st, name);
    if (n == NULL) {
        n = stage_add(st, name, false);
    } else if (n->dir) {
        return err_set(errp, ERR_INTERNAL, 0, "extract %s: not a directory", name);
    } else {
        /* The same name again: the later entry wins, as on a tape. */
        unlink(st->ops[n->op].tmp);
        free(st->ops[n->op].tmp);
        st->ops[n->op].tmp = NULL;
    }
    tmp = stage_tmp(st, parent->path);
    n->op = stage_op_add(st, parent, STAGE_FILE, tmp, steal_ptr(&dest));
    archive_entry_copy_pathname(ent, tmp);
    return write_entry(a, disk, ent, name, errp);
}

/* Stages one entry of the second pass. */
static int
stage_entry(struct stage *st, struct archive *a, struct archive *disk, struct archive_entry *ent,
            struct err **errp)
{
    cleanup_free char *name = norm_name(archive_entry_pathname(ent));
    struct stage_node *n;

    if (name == NULL) /* the first pass refused it */
        return err_set(errp, ERR_INVALID, 0, "archive entry without a usable name");
    if (archive_entry_filetype(ent) != AE_IFDIR || archive_entry_hardlink(ent) != NULL) {
        if (name[0] == '\0') /* the first pass refused it */
            return err_set(errp, ERR_INVALID, 0, "archive entry '.' is not a directory");
        return stage_file(st, a, disk, ent, name, errp);
    }
    if (name[0] == '\0')
        return 0; /* "./": the target itself, left as it is (see_entry) */
    n = stage_dir(st, name, true, errp);
    if (n == NULL)
        return -1;
    if (!n->meta) {
        if (st->n_metas == st->cap_metas) {
            st->cap_metas = st->cap_metas ? st->cap_metas * 2 : 64;
            st->metas = xrealloc(st->metas, st->cap_metas * sizeof(*st->metas));
        }
        st->metas[st->n_metas++] = n;
        n->meta = true;
    }
    n->mode = archive_entry_perm(ent) & 07777;
    n->times[0].tv_nsec = n->times[1].tv_nsec = UTIME_OMIT;
    if (archive_entry_atime_is_set(ent))
        n->times[0] = (struct timespec){ archive_entry_atime(ent), archive_entry_atime_nsec(ent) };
    if (archive_entry_mtime_is_set(ent))
        n->times[1] = (struct timespec){ archive_entry_mtime(ent), archive_entry_mtime_nsec(ent) };
    return 0;
}

/*
 * Why o cannot go into place: what is at dest changed during the extraction (only the
 * sandbox's own processes can have done that; 409, as sending the archive again may well
 * succeed), or the file system refused.
 */
static int
place_fail(const struct stage_op *o, int en, struct err **errp)
{
    if (en == EISDIR || en == ENOTEMPTY || en == EEXIST)
        return err_set(errp, ERR_CONFLICT, en,
                       "%s changed during the extraction (a directory is there)", o->dest);
    /* Everything was there when it was staged: it or its directory was removed since. */
    if (en == ENOENT || en == ENOTDIR)
        return err_set(errp, ERR_CONFLICT, en,
                       "%s changed during the extraction (it or its directory went away)", o->dest);
    return err_set(errp, sandbox__errno_code(en), en, "moving %s into place", o->dest);
}

/*
 * Puts o back at tmp, and what it replaced back at dest, if o is still what is at dest (the
 * sandbox's processes could have replaced it: theirs is left alone). False when it could not
 * (what it replaced is then under the temporary name, or, for a removed empty directory, gone).
 */
static bool
op_undo(struct stage_op *o)
{
    struct stat sb;
    bool ok = false;

    if (!o->placed)
        return true;
    if (lstat(o->dest, &sb) < 0 || sb.st_ino != o->ino || sb.st_dev != o->dev)
        return false;
    switch (o->old) {
    case STAGE_OLD_AT_TMP:
    case STAGE_OLD_DIR_AT_TMP:
        ok = renameat2(AT_FDCWD, o->tmp, AT_FDCWD, o->dest, RENAME_EXCHANGE) == 0;
        break;
    case STAGE_OLD_NONE:
    case STAGE_OLD_LOWER: /* never placed before the commit's last check */
        ok = renameat2(AT_FDCWD, o->dest, AT_FDCWD, o->tmp, RENAME_NOREPLACE) == 0;
        break;
    case STAGE_OLD_EMPTY_DIR:
        if (renameat2(AT_FDCWD, o->dest, AT_FDCWD, o->tmp, RENAME_NOREPLACE) < 0)
            return false;
        /* o is back at tmp (removed with the temporaries); the directory is made again with
         * its mode (the overlay's lower one it was keeps its owner and times underneath). */
        o->placed = false;
        if (mkdir(o->dest, 0700) < 0)
            return false;
        chmod(o->dest, o->old_mode);
        return true;
    }
    if (ok)
        o->placed = false;
    return ok;
}

/*
 * True when old (at o's dest) is a non-directory that only a lower layer of the overlay has:
 * on the same mount as o's temporary (just made, so in the upper layer), yet another device.
 * Without metacopy, an exchange would copy it up, data and all, and a rollback would leave
 * the copy in the environment's layer; a rename only hides it. When the layers share a device
 * (or xino), this says false and the exchange is used: correct, only dearer.
 */
static bool
op_over_lower(const struct stage_op *o, const struct stat *old)
{
    struct statx t, d;

    if (o->kind != STAGE_FILE || old->st_dev == o->dev)
        return false;
    return statx(AT_FDCWD, o->tmp, AT_SYMLINK_NOFOLLOW, STATX_MNT_ID, &t) == 0 &&
           statx(AT_FDCWD, o->dest, AT_SYMLINK_NOFOLLOW, STATX_MNT_ID, &d) == 0 &&
           (t.stx_mask & d.stx_mask & STATX_MNT_ID) && t.stx_mnt_id == d.stx_mnt_id &&
           makedev(d.stx_dev_major, d.stx_dev_minor) == old->st_dev &&
           !(d.stx_attributes & STATX_ATTR_MOUNT_ROOT);
}

/*
 * An empty directory in the way of a file: exchanged out, so that it waits under the
 * temporary name with its owner and times until the commit ends. overlayfs cannot move a
 * directory of a lower layer (EXDEV): that one is removed, and made again on undo.
 */
static int
op_place_over_dir(struct stage *st, struct stage_op *o, const struct stat *old, struct err **errp)
{
    struct stat sb;
    int en;

    if (renameat2(AT_FDCWD, o->tmp, AT_FDCWD, o->dest, RENAME_EXCHANGE) == 0) {
        o->old = STAGE_OLD_DIR_AT_TMP;
        o->placed = true;
        /* A process of the sandbox may have put files in it since it was staged. */
        if (lstat(o->tmp, &sb) < 0 || !S_ISDIR(sb.st_mode) || !dir_is_empty(o->tmp)) {
            op_undo(o);
            return place_fail(o, ENOTEMPTY, errp);
        }
        return 0;
    }
    if (errno != EXDEV)
        return place_fail(o, errno, errp);
    if (rmdir(o->dest) < 0)
        return place_fail(o, errno, errp);
    if (renameat2(AT_FDCWD, o->tmp, AT_FDCWD, o->dest, RENAME_NOREPLACE) < 0) {
        en = errno;
        if (mkdir(o->dest, 0700) < 0)
            st->undo_failed++;
        else
            chmod(o->dest, old->st_mode & 07777);
        return place_fail(o, en, errp);
    }
    o->old = STAGE_OLD_EMPTY_DIR;
    o->old_mode = old->st_mode & 07777;
    o->placed = true;
    return 0;
}

/*
 * Puts one file or new directory in place so that it can be undone: a rename that replaces
 * nothing, or an exchange that keeps the old non-directory (or empty directory) at tmp until
 * the commit ends. A file of the overlay's lower layer is left for the commit's end
 * (op_over_lower). A directory anywhere else, which only the sandbox's own processes can have
 * put there since staging (a user's populated directory where a symlink was), stops the
 * commit: replacing it would hide the user's files under a temporary name.
 */
static int
op_place(struct stage *st, struct stage_op *o, struct err **errp)
{
    struct stat sb;
    bool retried = false;

    if (lstat(o->tmp, &sb) < 0)
        return place_fail(o, errno, errp);
    o->ino = sb.st_ino;
    o->dev = sb.st_dev;
    for (;;) {
        if (renameat2(AT_FDCWD, o->tmp, AT_FDCWD, o->dest, RENAME_NOREPLACE) == 0) {
            o->old = STAGE_OLD_NONE;
            o->placed = true;
            return 0;
        }
        if (errno != EEXIST)
            return place_fail(o, errno, errp);
        if (lstat(o->dest, &sb) == 0)
            break;
        /* Removed since the rename found it (by a process of the sandbox): once more. */
        if (errno != ENOENT || retried)
            return place_fail(o, errno, errp);
        retried = true;
    }
    if (S_ISDIR(sb.st_mode)) {
        if (o->kind == STAGE_XDIR)
            return place_fail(o, EISDIR, errp);
        return op_place_over_dir(st, o, &sb, errp);
    }
    if (op_over_lower(o, &sb)) {
        o->old = STAGE_OLD_LOWER;
        return 0;
    }
    if (renameat2(AT_FDCWD, o->tmp, AT_FDCWD, o->dest, RENAME_EXCHANGE) < 0)
        return place_fail(o, errno, errp);
    o->old = STAGE_OLD_AT_TMP;
    o->placed = true;
    /* What went out is what lstat saw, unless it was swapped for a directory since. */
    if (lstat(o->tmp, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        op_undo(o);
        return place_fail(o, EISDIR, errp);
    }
    return 0;
}

/*
 * Places the ops inside directories still under a temporary name (hidden), or the others.
 * Keeps the caller waiting, and stops as soon as it has gone: nobody would learn the result.
 */
static int
stage_place(struct stage *st, bool hidden, struct err **errp)
{
    for (size_t i = 0; i < st->n_ops; i++) {
        struct stage_op *o = &st->ops[i];
        if (o->kind == STAGE_MKDIR || o->tmp == NULL || o->hidden != hidden)
            continue;
        if (alive_or_gone(st->alive))
            return err_set(errp, ERR_TIMEOUT, ECONNRESET, "the caller went away");
        if (op_place(st, o, errp) < 0)
            return -1;
    }
    return 0;
}

/* Removes what the placed ops (hidden, or the others) replaced: the commit can no longer fail. */
static void
stage_drop_old(struct stage *st, bool hidden)
{
    for (size_t i = 0; i < st->n_ops; i++) {
        struct stage_op *o = &st->ops[i];
        if (o->kind == STAGE_MKDIR || !o->placed || o->hidden != hidden)
            continue;
        sandbox__proto_alive(st->alive);
        /* Checked after the exchange: a non-directory, or a directory that was empty (one a
         * process of the sandbox has filled since stays, under its temporary name). */
        if (o->old == STAGE_OLD_AT_TMP)
            unlink(o->tmp);
        else if (o->old == STAGE_OLD_DIR_AT_TMP)
            rmdir(o->tmp);
        o->old = STAGE_OLD_NONE;
        if (!hidden) {
            free(o->tmp);
            o->tmp = NULL;
            o->placed = false;
        }
    }
}

/*
 * After the point of no return: replaces the files of the overlay's lower layer, by renames
 * that copy nothing up. One that fails (only a change by the sandbox's own processes, or a
 * full disk, can make it) leaves that file as it was and its temporary removed; the rest of
 * the archive stays in place, and the error names the first and counts them.
 */
static int
stage_place_lower(struct stage *st, struct err **errp)
{
    size_t failed = 0;
    const char *first = NULL;
    int en = 0;

    for (size_t i = 0; i < st->n_ops; i++) {
        struct stage_op *o = &st->ops[i];
        if (o->kind != STAGE_FILE || o->tmp == NULL || o->old != STAGE_OLD_LOWER)
            continue;
        sandbox__proto_alive(st->alive);
        if (renameat2(AT_FDCWD, o->tmp, AT_FDCWD, o->dest, 0) < 0) {
            if (failed++ == 0) {
                en = errno;
                first = o->dest;
            }
            unlink(o->tmp);
        }
        free(o->tmp);
        o->tmp = NULL;
        o->old = STAGE_OLD_NONE;
    }
    if (failed == 0)
        return 0;
    return err_set(
        errp,
        en == ENOENT || en == ENOTDIR || en == EISDIR ? ERR_CONFLICT : sandbox__errno_code(en), en,
        "extract: the archive is in place except %zu entries over files of the "
        "base image, which are as they were; the first: %s",
        failed, first);
}

/* True when the caller is still there: a keep-alive goes out, and the connection is open. */
static bool
caller_still_there(const struct stage *st)
{
    return sandbox__proto_send(st->alive->conn, PROTO_ALIVE, NULL, 0, NULL) == 0 &&
           !caller_gone(st->alive->conn);
}

/*
 * Moves everything into place in two steps that can both be undone: first what goes inside the
 * directories still under a temporary name, then what the environment sees (files, and the
 * directories that replace a non-directory). Only when all of it is in place, and the caller
 * is still there to learn it, does it remove what was replaced and rename the archive's files
 * over those of the base image; then the directory entries get their mode and times (after
 * the renames, which change a directory's mtime; best effort, as libarchive's were). On
 * failure before that point everything placed is put back.
 */
static int
stage_commit(struct stage *st, struct err **errp)
{
    int rc = stage_place(st, true, errp);

    if (rc == 0) {
        stage_drop_old(st, true);
        rc = stage_place(st, false, errp);
    }
    if (rc == 0 && !caller_still_there(st))
        rc = err_set(errp, ERR_TIMEOUT, ECONNRESET, "the caller went away");
    if (rc < 0) {
        for (size_t i = st->n_ops; i-- > 0;) {
            sandbox__proto_alive(st->alive);
            if (!st->ops[i].hidden && !op_undo(&st->ops[i]))
                st->undo_failed++;
        }
        if (st->undo_failed == 0)
            return err_wrap(errp, "extract: nothing was replaced");
        return err_wrap(errp,
                        "extract: %zu entries could not be put back; what they replaced is "
                        "under .paddock-extract-%s.* names, or was an empty directory that "
                        "could not be made again",
                        st->undo_failed, st->tag);
    }
    st->committed = true;
    stage_drop_old(st, false);
    rc = stage_place_lower(st, errp);
    for (size_t i = st->n_metas; i-- > 0;) {
        const struct stage_node *n = st->metas[i];
        cleanup_close int fd = -1;
        sandbox__proto_alive(st->alive);
        fd = open(n->name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd >= 0 && fchmod(fd, n->mode) == 0)
            futimens(fd, n->times);
    }
    return rc;
}

/* True while a temporary directory that o is inside is at its destination, not put back: its
 * temporary name may then be what it replaced (a symlink, which must not be followed). */
static bool
op_under_placed_xdir(const struct stage *st, const struct stage_op *o)
{
    for (; o->hidden; o = &st->ops[o->xdir]) {
        if (st->ops[o->xdir].placed)
            return true;
    }
    return false;
}

/*
 * Removes every temporary and every directory the extraction made (if still empty), after a
 * failure before the commit or the commit's undo. An entry that could not be put back is left
 * where it is, and so is everything under a temporary directory that could not be.
 */
static void
stage_rollback(struct stage *st)
{
    if (st->committed)
        return;
    for (size_t i = st->n_ops; i-- > 0;) {
        const struct stage_op *o = &st->ops[i];
        const char *path;
        sandbox__proto_alive(st->alive);
        if (op_under_placed_xdir(st, o))
            continue;
        if (o->kind == STAGE_MKDIR)
            path = o->dest;
        else if (!o->placed)
            path = o->tmp;
        else if (o->hidden)
            path = o->dest;
        else
            continue;
        if (path == NULL)
            continue;
        if (o->kind == STAGE_FILE)
            unlink(path);
        else
            rmdir(path);
    }
}

static void
node_free(void *p)
{
    struct stage_node *n = p;

    free(n->name);
    free(n->path);
    free(n);
}

static void
stage_free(struct stage *st)
{
    tdestroy(st->names, node_free);
    for (size_t i = 0; i < st->n_ops; i++) {
        free(st->ops[i].tmp);
        free(st->ops[i].dest);
    }
    free(st->ops);
    free(st->metas);
}

/*
 * Second pass: write, with libarchive's own guards on as well (symlinks, "..", "/"), and
 * ARCHIVE_EXTRACT_NO_OVERWRITE: it only ever creates a temporary, never unlinks.
 */
static int
extract_archive(struct spool *s, struct err **errp)
{
    struct stage st = { 0 };
    struct archive *a = NULL, *disk;
    struct archive_entry *ent;
    unsigned char rnd[8];
    int r = ARCHIVE_OK, rc = 0;

    if (util_random(rnd, sizeof(rnd), errp) < 0)
        return -1;
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(st.tag + 2 * i, 3, "%02x", rnd[i]);
    st.alive = &s->alive;
    a = open_spool(s, errp);
    if (a == NULL)
        return -1;
    disk = archive_write_disk_new();
    archive_write_disk_set_options(
        disk, ARCHIVE_EXTRACT_SECURE_SYMLINKS | ARCHIVE_EXTRACT_SECURE_NODOTDOT |
                  ARCHIVE_EXTRACT_SECURE_NOABSOLUTEPATHS | ARCHIVE_EXTRACT_TIME |
                  ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_NO_OVERWRITE);
    while (rc == 0 && ((r = archive_read_next_header(a, &ent)) == ARCHIVE_OK || r == ARCHIVE_WARN))
        rc = stage_entry(&st, a, disk, ent, errp);
    if (rc == 0 && r != ARCHIVE_EOF)
        rc = err_set(errp, ERR_INVALID, 0, "bad archive: %s",
                     archive_error_string(a) ? archive_error_string(a) : "unreadable");
    /* Freed before commit: it may still hold fixups for the temporaries' names. */
    archive_write_free(disk);
    archive_read_free(a);
    /* The spool has been read. Closing it (it is unlinked) gives its room back to the quota
     * before the renames, which on btrfs reserve metadata space: with the quota full they
     * failed with EDQUOT (and so did an ftruncate). */
    close_and_reset(s->fd);
    if (rc == 0)
        rc = stage_commit(&st, errp);
    if (rc < 0)
        stage_rollback(&st);
    stage_free(&st);
    return rc;
}

int
sandbox__handle_extract(int conn, json_t *req)
{
    struct pull p = {.conn = conn};
    cleanup_free char *dir = NULL;
    cleanup_close int spool = -1;
    cleanup_free char *buf = NULL;
    struct spool sp;
    struct err *e = NULL;
    uint64_t entries = 0;
    bool made_dir = false;
    json_t *res;
    int r;

    p.max = (uint64_t)json_integer_value(json_object_get(req, "max"));
    {
        cleanup_free char *raw = sandbox__bytes_from_json(json_object_get(req, "path"));
        if (raw == NULL || sandbox_path_resolve(raw, &dir, &e) < 0) {
            if (e == NULL)
                err_set(&e, ERR_INVALID, 0, "missing or bad path");
            goto fail;
        }
    }
    if (mkdir(dir, 0755) == 0) {
        made_dir = true; /* removed again if the archive is refused */
    } else if (errno != EEXIST) {
        err_set(&e, sandbox__errno_code(errno), errno, "extract: mkdir %s", dir);
        goto fail;
    }
    if (chdir(dir) < 0) {
        err_set(&e, errno == ENOTDIR ? ERR_CONFLICT : sandbox__errno_code(errno), errno,
                "extract into %s", dir);
        goto fail;
    }
    /* Spool the archive (it counts against the environment's disk), so it can be read twice:
     * once to check every entry, once to write. An unlinked file leaves nothing behind. */
    spool = open(".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (spool < 0) {
        err_set(&e, ERR_IO, errno, "extract: spool");
        goto fail;
    }
    if (sandbox__proto_send(conn, PROTO_DATA, NULL, 0, NULL) < 0)
        return 1;
    for (;;) {
        const void *data;
        ssize_t n = pull_read(NULL, &p, &data);
        if (n < 0) {
            e = p.e;
            p.e = NULL;
            goto fail;
        }
        if (n == 0)
            break;
        if (util_write_all(spool, data, (size_t)n) < 0) {
            err_set(&e, ERR_LIMIT, errno, "extract: spool");
            goto fail;
        }
    }
    buf = xmalloc(TAR_BLOCK);
    sp = (struct spool){ &spool, { conn, 0 }, buf };
    if (check_archive(&sp, &entries, &e) < 0 || extract_archive(&sp, &e) < 0)
        goto fail;
    res = json_pack("{s:b, s:I}", "ok", 1, "entries", (json_int_t)entries);
    r = sandbox__proto_send_json(conn, PROTO_RESULT, res, NULL);
    json_decref(res);
    return r < 0 ? 1 : 0;

fail:
    if (made_dir && dir != NULL)
        rmdir(dir); /* only if still empty: a refused archive wrote nothing */
    sandbox__proto_frame_free(&p.f);
    err_free(p.e);
    sandbox__proto_send_error(conn, e);
    err_free(e);
    return 1;
}
