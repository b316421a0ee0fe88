/* The caller's side of the file operations. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
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

    if (conn < 0)
        return -1;
    return until_result(conn, cb, NULL, arg, errp);
}

int
sandbox_file_write(const char *env_dir, const char *path, unsigned mode, int in_fd, uint64_t max,
                   struct err **errp)
{
    cleanup_close int conn = request(
        env_dir, "write", path,
        json_pack("{s:i, s:I}", "mode", (int)(mode & 07777), "max", (json_int_t)max), errp);
    struct proto_frame f;
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
        if (sandbox__proto_send(conn, PROTO_DATA, chunk, (size_t)r, NULL) < 0) {
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

int
sandbox_file_list(const char *env_dir, const char *path, bool recursive, sandbox_entry_cb *cb,
                  void *arg, struct err **errp)
{
    cleanup_close int conn =
        request(env_dir, "list", path, json_pack("{s:b}", "recursive", recursive), errp);

    if (conn < 0)
        return -1;
    return until_result(conn, NULL, cb, arg, errp);
}

int
sandbox_file_delete(const char *env_dir, const char *path, bool recursive, struct err **errp)
{
    cleanup_close int conn =
        request(env_dir, "delete", path, json_pack("{s:b}", "recursive", recursive), errp);

    if (conn < 0)
        return -1;
    return until_result(conn, NULL, NULL, NULL, errp);
}
