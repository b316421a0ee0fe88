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

/* "./a//b/" -> "a/b"; NULL for an absolute name, a ".." component, or nothing at all. */
static char *
norm_name(const char *in)
{
    struct buf b;

    if (in == NULL || in[0] == '/')
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
        return NULL;
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

/* Checks the whole archive once every entry is known; the first bad entry refuses it all. */
static int
check_seen(struct seen_set *s, struct err **errp)
{
    if (s->n > 0)
        qsort(s->v, s->n, sizeof(*s->v), cmp_seen);
    for (size_t i = 0; i < s->n; i++) {
        const struct seen *e = &s->v[i];
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
    int fd;
    struct proto_alive alive;
    char *buf; /* TAR_BLOCK bytes */
};

static la_ssize_t
spool_read(struct archive *a, void *arg, const void **buf)
{
    struct spool *s = arg;
    ssize_t n;

    sandbox__proto_alive(&s->alive);
    do
        n = read(s->fd, s->buf, TAR_BLOCK);
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
    off_t from = lseek(s->fd, 0, SEEK_CUR);
    off_t to = from < 0 ? -1 : lseek(s->fd, request, SEEK_CUR);

    (void)a;
    return to < 0 ? 0 : to - from;
}

static la_int64_t
spool_seek(struct archive *a, void *arg, la_int64_t offset, int whence)
{
    struct spool *s = arg;
    off_t r = lseek(s->fd, offset, whence);

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
    if (lseek(s->fd, 0, SEEK_SET) < 0 || archive_read_open1(a) != ARCHIVE_OK) {
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
        rc = check_seen(&seen, errp);
    seen_free(&seen);
    archive_read_free(a);
    return rc;
}

static int
disk_fail(struct archive *disk, struct archive_entry *ent, struct err **errp)
{
    return err_set(errp, ERR_IO, archive_errno(disk), "extract %s: %s",
                   archive_entry_pathname(ent),
                   archive_error_string(disk) ? archive_error_string(disk) : "failed");
}

/* Second pass: write, with libarchive's own guards on as well (symlinks, "..", "/"). */
static int
extract_archive(struct spool *s, struct err **errp)
{
    struct archive *a = open_spool(s, errp);
    struct archive *disk;
    struct archive_entry *ent;
    int r, rc = 0;

    if (a == NULL)
        return -1;
    disk = archive_write_disk_new();
    archive_write_disk_set_options(disk, ARCHIVE_EXTRACT_SECURE_SYMLINKS |
                                             ARCHIVE_EXTRACT_SECURE_NODOTDOT |
                                             ARCHIVE_EXTRACT_SECURE_NOABSOLUTEPATHS |
                                             ARCHIVE_EXTRACT_TIME | ARCHIVE_EXTRACT_PERM |
                                             ARCHIVE_EXTRACT_UNLINK);
    while (rc == 0 &&
           ((r = archive_read_next_header(a, &ent)) == ARCHIVE_OK || r == ARCHIVE_WARN)) {
        const void *block;
        size_t size;
        la_int64_t off;

        if (archive_write_header(disk, ent) < ARCHIVE_WARN) {
            rc = disk_fail(disk, ent, errp);
            break;
        }
        while ((r = archive_read_data_block(a, &block, &size, &off)) == ARCHIVE_OK) {
            if (archive_write_data_block(disk, block, size, off) < ARCHIVE_WARN) {
                rc = disk_fail(disk, ent, errp);
                break;
            }
        }
        if (rc == 0 && r != ARCHIVE_EOF)
            rc = err_set(errp, ERR_INVALID, 0, "bad archive data for %s",
                         archive_entry_pathname(ent));
        if (rc == 0 && archive_write_finish_entry(disk) < ARCHIVE_WARN)
            rc = disk_fail(disk, ent, errp);
    }
    archive_read_free(a);
    archive_write_free(disk);
    return rc;
}

int
sandbox__handle_extract(int conn, json_t *req)
{
    struct pull p = {.conn = conn};
    cleanup_free char *dir = NULL;
    cleanup_free char *buf = NULL;
    cleanup_close int spool = -1;
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
    sp = (struct spool){ spool, { conn, 0 }, buf };
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
