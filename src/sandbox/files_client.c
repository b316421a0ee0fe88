/* The caller's side of the file operations. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sandbox_int.h"

#define PATH_MAX_LEN 4095

int
sandbox_path_resolve(const char *path, char **abs_out, struct err **errp)
{
    size_t len = strlen(path);
    const char *p;

    if (len == 0)
        return err_set(errp, ERR_INVALID, 0, "path is empty");
    if (len > PATH_MAX_LEN)
        return err_set(errp, ERR_INVALID, 0, "path is longer than %d bytes", PATH_MAX_LEN);
    /* Reject any ".." component: a path names a place in the sandbox, it never climbs. */
    for (p = path; *p != '\0';) {
        size_t seg = strcspn(p, "/");
        if (seg == 2 && p[0] == '.' && p[1] == '.')
            return err_set(errp, ERR_INVALID, 0, "path '%s' must not contain '..'", path);
        p += seg;
        while (*p == '/')
            p++;
    }
    if (path[0] == '/')
        *abs_out = xstrdup(path);
    else
        *abs_out = xasprintf("/workspace/%s", path);
    /* Trailing slashes are dropped, except for "/" itself. */
    for (size_t n = strlen(*abs_out); n > 1 && (*abs_out)[n - 1] == '/'; n--)
        (*abs_out)[n - 1] = '\0';
    if (strlen(*abs_out) > PATH_MAX_LEN) {
        free(*abs_out);
        *abs_out = NULL;
        return err_set(errp, ERR_INVALID, 0, "path is longer than %d bytes", PATH_MAX_LEN);
    }
    return 0;
}

/*
 * A timeout from the control protocol names the socket, not what was asked of it: the
 * operation and its path are added here. Other errors already say both. Returns -1.
 */
static int
name_timeout(struct err **errp, const char *op, const char *path)
{
    if (errp != NULL && *errp != NULL && (*errp)->code == ERR_TIMEOUT)
        err_wrap(errp, "%s %s", op, path);
    return -1;
}

/* Connects and sends a request {op, path, ...extra}; returns the connection. */
static int
request(const char *env_dir, const char *op, const char *path, json_t *extra, struct err **errp)
{
    cleanup_free char *abs = NULL;
    cleanup_close int conn = -1;
    int r;

    if (sandbox_path_resolve(path, &abs, errp) < 0) {
        json_decref(extra);
        return -1;
    }
    conn = sandbox__connect(env_dir, errp);
    if (conn < 0) {
        json_decref(extra);
        return -1;
    }
    json_object_set_new(extra, "op", json_string(op));
    json_object_set_new(extra, "path", sandbox__json_bytes(abs));
    r = sandbox__proto_send_json(conn, PROTO_REQ, extra, errp);
    json_decref(extra);
    if (r < 0)
        return -1;
    return steal_fd(&conn);
}

/* Receives frames until the result; data and entries go to the callbacks. */
static int
until_result(int conn, sandbox_output_cb *data_cb, sandbox_entry_cb *entry_cb, void *arg,
             struct err **errp)
{
    for (;;) {
        struct proto_frame f;
        int r = 0;

        if (sandbox__proto_recv(conn, &f, errp) < 0)
            return -1;
        if (f.type == PROTO_RESULT) {
            r = sandbox__proto_result(&f, NULL, errp);
            sandbox__proto_frame_free(&f);
            return r;
        }
        if (f.type == PROTO_DATA && data_cb != NULL) {
            if (data_cb(1, f.data, f.len, arg) < 0)
                r = err_set(errp, ERR_IO, errno, "write file content");
        } else if (f.type == PROTO_ENTRY && entry_cb != NULL) {
            json_t *j = sandbox__proto_parse_json(&f, errp);
            cleanup_free char *path =
                j != NULL ? sandbox__bytes_from_json(json_object_get(j, "path")) : NULL;
            int type = (int)json_integer_value(json_object_get(j, "type"));
            struct sandbox_file_entry e = {
                .path = path,
                .type = type >= SANDBOX_FILE_REG && type <= SANDBOX_FILE_OTHER
                            ? (enum sandbox_file_type)type
                            : SANDBOX_FILE_OTHER,
                .size = (uint64_t)json_integer_value(json_object_get(j, "size")),
                .mode = (unsigned)json_integer_value(json_object_get(j, "mode")) & 07777,
                .mtime_ms = json_integer_value(json_object_get(j, "mtime_ms")),
            };
            if (j == NULL || path == NULL)
                r = j == NULL ? -1 : err_set(errp, ERR_IO, 0, "bad entry from sandbox init");
            else
                r = entry_cb(&e, arg);
            json_decref(j);
        } else {
            r = err_set(errp, ERR_IO, 0, "unexpected frame %u from sandbox init", f.type);
        }
        sandbox__proto_frame_free(&f);
        if (r < 0)
            return -1;
    }
}

int
sandbox_file_read(const char *env_dir, const char *path, uint64_t offset, uint64_t max,
                  sandbox_output_cb *cb, void *arg, struct err **errp)
{
    cleanup_close int conn = request(
        env_dir, "read", path,
        json_pack("{s:I, s:I}", "offset", (json_int_t)offset, "max", (json_int_t)max), errp);

    if (conn < 0 || until_result(conn, cb, NULL, arg, errp) < 0)
        return name_timeout(errp, "read", path);
    return 0;
}

/* Sends in_fd's content to a request that answers an empty DATA frame when it is ready. */
static int
send_content(const char *env_dir, const char *op, const char *path, json_t *extra, int in_fd,
             uint64_t max, struct err **errp)
{
    cleanup_close int conn = request(env_dir, op, path, extra, errp);
    struct proto_frame f;
    struct err *se = NULL;
    char chunk[PROTO_CHUNK];
    uint64_t n = 0;

    if (conn < 0)
        return -1;
    /* Init answers with an empty DATA frame when it is ready, or with an error. */
    if (sandbox__proto_recv(conn, &f, errp) < 0)
        return -1;
    if (f.type != PROTO_DATA) {
        int r = sandbox__proto_result(&f, NULL, errp);
        sandbox__proto_frame_free(&f);
        return r < 0 ? -1 : err_set(errp, ERR_IO, 0, "sandbox init did not accept the file");
    }
    sandbox__proto_frame_free(&f);
    for (;;) {
        ssize_t r = read(in_fd, chunk, sizeof(chunk));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return err_set(errp, ERR_IO, errno, "read input");
        if (r == 0)
            break;
        n += (uint64_t)r;
        if (max > 0 && n > max)
            return err_set(errp, ERR_LIMIT, 0, "input is larger than %llu bytes",
                           (unsigned long long)max);
        if (sandbox__proto_send(conn, PROTO_DATA, chunk, (size_t)r, &se) < 0) {
            /* A handler that stopped taking data has no result to wait for. */
            if (se->code == ERR_TIMEOUT) {
                if (errp != NULL)
                    *errp = se;
                else
                    err_free(se);
                return -1;
            }
            err_free(se);
            /* Init gave up (disk full, say): its result says why. */
            if (until_result(conn, NULL, NULL, NULL, errp) < 0)
                return -1;
            return err_set(errp, ERR_IO, 0, "sandbox init stopped reading the file");
        }
    }
    if (sandbox__proto_send(conn, PROTO_DATA_EOF, NULL, 0, errp) < 0)
        return -1;
    return until_result(conn, NULL, NULL, NULL, errp);
}

static int
write_file(const char *env_dir, const char *path, unsigned mode, int in_fd, uint64_t max,
           bool no_replace, struct err **errp)
{
    if (send_content(env_dir, "write", path,
                     json_pack("{s:i, s:I, s:b}", "mode", (int)(mode & 07777), "max",
                               (json_int_t)max, "no_replace", no_replace),
                     in_fd, max, errp) < 0)
        return name_timeout(errp, "write", path);
    return 0;
}

int
sandbox_file_write(const char *env_dir, const char *path, unsigned mode, int in_fd, uint64_t max,
                   struct err **errp)
{
    return write_file(env_dir, path, mode, in_fd, max, false, errp);
}

int
sandbox_file_create(const char *env_dir, const char *path, unsigned mode, int in_fd, uint64_t max,
                    struct err **errp)
{
    return write_file(env_dir, path, mode, in_fd, max, true, errp);
}

int
sandbox_extract(const char *env_dir, const char *dir, int in_fd, uint64_t max, struct err **errp)
{
    if (send_content(env_dir, "extract", dir, json_pack("{s:I}", "max", (json_int_t)max), in_fd,
                     max, errp) < 0)
        return name_timeout(errp, "extract into", dir);
    return 0;
}

int
sandbox_file_list(const char *env_dir, const char *path, bool recursive, const char *after,
                  size_t limit, sandbox_entry_cb *cb, void *arg, struct err **errp)
{
    json_t *extra = json_pack("{s:b, s:I}", "recursive", recursive, "limit", (json_int_t)limit);
    cleanup_close int conn = -1;

    if (after != NULL)
        json_object_set_new(extra, "after", sandbox__json_bytes(after));
    conn = request(env_dir, "list", path, extra, errp);
    if (conn < 0 || until_result(conn, NULL, cb, arg, errp) < 0)
        return name_timeout(errp, "list", path);
    return 0;
}

int
sandbox_snapshot(const char *env_dir, bool count_only, sandbox_output_cb *cb, void *arg,
                 uint64_t *files_out, uint64_t *bytes_out, struct err **errp)
{
    cleanup_close int conn = sandbox__connect(env_dir, errp);
    json_t *req, *res = NULL;
    struct proto_frame f;
    int r;

    if (conn < 0)
        return err_wrap(errp, "snapshot");
    req = json_pack("{s:s, s:b}", "op", "snapshot", "count_only", count_only);
    r = sandbox__proto_send_json(conn, PROTO_REQ, req, errp);
    json_decref(req);
    if (r < 0)
        return err_wrap(errp, "snapshot");
    for (;;) {
        if (sandbox__proto_recv(conn, &f, errp) < 0)
            return err_wrap(errp, "snapshot");
        if (f.type == PROTO_RESULT)
            break;
        if (f.type != PROTO_DATA || cb == NULL) {
            sandbox__proto_frame_free(&f);
            return err_set(errp, ERR_IO, 0, "unexpected frame from sandbox init");
        }
        r = cb(1, f.data, f.len, arg);
        sandbox__proto_frame_free(&f);
        if (r < 0)
            return err_set(errp, ERR_IO, errno, "snapshot: the reader went away");
    }
    r = sandbox__proto_result(&f, &res, errp);
    sandbox__proto_frame_free(&f);
    if (r < 0)
        return err_wrap(errp, "snapshot");
    if (files_out != NULL)
        *files_out = (uint64_t)json_integer_value(json_object_get(res, "files"));
    if (bytes_out != NULL)
        *bytes_out = (uint64_t)json_integer_value(json_object_get(res, "bytes"));
    json_decref(res);
    return 0;
}

int
sandbox_file_delete(const char *env_dir, const char *path, bool recursive, struct err **errp)
{
    cleanup_close int conn =
        request(env_dir, "delete", path, json_pack("{s:b}", "recursive", recursive), errp);

    if (conn < 0 || until_result(conn, NULL, NULL, NULL, errp) < 0)
        return name_timeout(errp, "delete", path);
    return 0;
}

/* ---------------------------------------------------------------- streams */

/*
 * A stream reads DATA payloads straight from the socket into the consumer's buffer: no frame
 * is allocated or copied on the way, which matters for a snapshot of gigabytes.
 */
struct sandbox_stream {
    int conn;
    char *what;    /* "read PATH" or "snapshot", for errors */
    uint32_t left; /* bytes of the current DATA frame not read yet */
    bool done;
};

/* Reads frame headers until DATA with a payload; a RESULT ends the stream (or fails it). */
static int
stream_next(struct sandbox_stream *s, struct err **errp)
{
    while (s->left == 0 && !s->done) {
        uint32_t type, len;
        if (sandbox__proto_recv_header(s->conn, &type, &len, errp) < 0)
            return err_wrap(errp, "%s", s->what);
        if (type == PROTO_DATA) {
            s->left = len;
        } else if (type == PROTO_RESULT) {
            struct proto_frame f = {type, len, xmalloc((size_t)len + 1)};
            int r = sandbox__proto_recv_payload(s->conn, f.data, len, errp);
            f.data[len] = '\0';
            s->done = true;
            r = r < 0 ? err_wrap(errp, "%s", s->what) : sandbox__proto_result(&f, NULL, errp);
            sandbox__proto_frame_free(&f);
            return r;
        } else {
            return err_set(errp, ERR_IO, 0, "unexpected frame %u from sandbox init", type);
        }
    }
    return 0;
}

/* Takes a connection with a request sent and waits for its first frame; takes what. */
static int
stream_start(int conn, char *what, struct sandbox_stream **out, struct err **errp)
{
    struct sandbox_stream *s = xcalloc(1, sizeof(*s));

    s->conn = conn;
    s->what = what;
    if (stream_next(s, errp) < 0) {
        sandbox_stream_close(s);
        return -1;
    }
    *out = s;
    return 0;
}

int
sandbox_stream_open_read(const char *env_dir, const char *path, struct sandbox_stream **out,
                         struct err **errp)
{
    int conn = request(env_dir, "read", path, json_pack("{s:I, s:I}", "offset", 0, "max", 0),
                       errp);

    if (conn < 0)
        return name_timeout(errp, "read", path);
    return stream_start(conn, xasprintf("read %s", path), out, errp);
}

int
sandbox_stream_open_snapshot(const char *env_dir, struct sandbox_stream **out, struct err **errp)
{
    int conn = sandbox__connect(env_dir, errp);
    json_t *req;

    if (conn < 0)
        return err_wrap(errp, "snapshot");
    req = json_pack("{s:s, s:b}", "op", "snapshot", "count_only", 0);
    if (sandbox__proto_send_json(conn, PROTO_REQ, req, errp) < 0) {
        json_decref(req);
        close(conn);
        return err_wrap(errp, "snapshot");
    }
    json_decref(req);
    return stream_start(conn, xstrdup("snapshot"), out, errp);
}

ssize_t
sandbox_stream_read(struct sandbox_stream *s, void *buf, size_t len, struct err **errp)
{
    ssize_t n;

    if (stream_next(s, errp) < 0)
        return -1;
    if (s->done)
        return 0;
    n = sandbox__proto_recv_some(s->conn, buf, len < s->left ? len : s->left, errp);
    if (n < 0)
        return err_wrap(errp, "%s", s->what);
    s->left -= (uint32_t)n;
    return n;
}

void
sandbox_stream_close(struct sandbox_stream *s)
{
    if (s == NULL)
        return;
    close(s->conn);
    free(s->what);
    free(s);
}
