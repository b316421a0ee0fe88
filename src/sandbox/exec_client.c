/* The caller's side of exec: send the request, relay stdin, hand output to a callback. */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "sandbox_int.h"

static json_t *
strv_json(const char *const *v)
{
    json_t *a = json_array();

    for (; v != NULL && *v != NULL; v++)
        json_array_append_new(a, sandbox__json_bytes(*v));
    return a;
}

static json_t *
exec_request(const struct sandbox_exec_opts *o)
{
    json_t *j = json_pack("{s:s, s:I, s:I, s:b}", "op", "exec", "timeout_ms",
                          (json_int_t)o->timeout_ms, "max_output", (json_int_t)o->max_output,
                          "stdin", o->stdin_fd >= 0);

    if (o->shell != NULL)
        json_object_set_new(j, "shell", sandbox__json_bytes(o->shell));
    else
        json_object_set_new(j, "argv", strv_json(o->argv));
    json_object_set_new(j, "env", strv_json(o->env));
    if (o->cwd != NULL)
        json_object_set_new(j, "cwd", sandbox__json_bytes(o->cwd));
    return j;
}

static int
fill_result(json_t *j, struct sandbox_exec_result *out)
{
    memset(out, 0, sizeof(*out));
    out->exited = json_is_true(json_object_get(j, "exited"));
    out->code = (int)json_integer_value(json_object_get(j, "code"));
    out->signal = (int)json_integer_value(json_object_get(j, "signal"));
    out->timed_out = json_is_true(json_object_get(j, "timed_out"));
    out->dropped[1] = (uint64_t)json_integer_value(json_object_get(j, "dropped_stdout"));
    out->dropped[2] = (uint64_t)json_integer_value(json_object_get(j, "dropped_stderr"));
    out->duration_ms = json_integer_value(json_object_get(j, "duration_ms"));
    return 0;
}

/* Reads the caller's stdin into a frame; closes it (and says so) at EOF. */
static int
pump_stdin(int *in_fd, struct proto_sendq *q, struct err **errp)
{
    char chunk[PROTO_CHUNK];
    ssize_t r = read(*in_fd, chunk, sizeof(chunk));

    if (r < 0 && (errno == EINTR || errno == EAGAIN))
        return 0;
    if (r <= 0) {
        *in_fd = -1;
        return sandbox__sendq_push(q, PROTO_STDIN_EOF, NULL, 0, errp);
    }
    return sandbox__sendq_push(q, PROTO_STDIN, chunk, (size_t)r, errp);
}

/* Handles one frame from init; 1 when it was the result. */
static int
on_frame(struct proto_frame *f, const struct sandbox_exec_opts *o, struct sandbox_exec_result *out,
         struct err **errp)
{
    json_t *j = NULL;

    switch (f->type) {
    case PROTO_STDOUT:
    case PROTO_STDERR:
        if (o->on_output != NULL &&
            o->on_output(f->type == PROTO_STDOUT ? 1 : 2, f->data, f->len, o->arg) < 0)
            return err_set(errp, ERR_IO, errno, "write command output");
        return 0;
    case PROTO_RESULT:
        if (sandbox__proto_result(f, &j, errp) < 0)
            return -1;
        fill_result(j, out);
        json_decref(j);
        return 1;
    case PROTO_REQ:
    case PROTO_STDIN:
    case PROTO_STDIN_EOF:
    case PROTO_DATA:
    case PROTO_DATA_EOF:
    case PROTO_ENTRY:
        break;
    }
    return err_set(errp, ERR_IO, 0, "unexpected frame %u from sandbox init", f->type);
}

/*
 * How long the next poll may wait. A command may run silent for as long as its timeout, so
 * exec has no limit on the wait for output; but the handler kills the command at its timeout
 * and answers right after, so a result that has not come PROTO_TIMEOUT_MS later never will
 * (a handler stopped by a process of the sandbox). Without a timeout there is no deadline.
 */
static int
poll_ms(const struct sandbox_exec_opts *o, int64_t deadline_ms)
{
    int64_t left;

    if (deadline_ms < 0)
        return o->cancel != NULL ? 100 : -1;
    left = deadline_ms - util_mono_ms();
    if (left < 0)
        left = 0;
    if (o->cancel != NULL && left > 100)
        left = 100; /* to see a cancel */
    return left > INT_MAX ? INT_MAX : (int)left;
}

int
sandbox_exec(const char *env_dir, const struct sandbox_exec_opts *o,
             struct sandbox_exec_result *out, struct err **errp)
{
    int64_t deadline_ms =
        o->timeout_ms > 0 ? util_mono_ms() + (int64_t)o->timeout_ms + PROTO_TIMEOUT_MS : -1;
    cleanup_close int conn = sandbox__connect(env_dir, errp);
    json_t *req;
    struct proto_sendq q;
    int in_fd = o->stdin_fd;
    int rc = -1;

    if (conn < 0)
        return err_wrap(errp, "exec");
    req = exec_request(o);
    rc = sandbox__proto_send_json(conn, PROTO_REQ, req, errp);
    json_decref(req);
    if (rc < 0)
        return err_wrap(errp, "exec");
    sandbox__sendq_init(&q);
    for (;;) {
        struct pollfd p[2] = {
            {conn, (short)(POLLIN | (sandbox__sendq_pending(&q) ? POLLOUT : 0)), 0},
            {in_fd, (short)(sandbox__sendq_pending(&q) ? 0 : POLLIN), 0},
        };
        struct proto_frame f;
        int n = poll(p, 2, poll_ms(o, deadline_ms));

        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = err_set(errp, ERR_IO, errno, "poll");
            break;
        }
        if (n == 0 && deadline_ms >= 0 && util_mono_ms() >= deadline_ms) {
            rc = err_set(errp, ERR_TIMEOUT, 0,
                         "the sandbox sent no result %d s after the command's %.1f s timeout "
                         "(is its handler stopped?)",
                         PROTO_TIMEOUT_MS / 1000, (double)o->timeout_ms / 1000);
            break;
        }
        if (o->cancel != NULL && *o->cancel) {
            /* Closing the connection makes init kill the command's whole tree. */
            rc = err_set(errp, ERR_CONFLICT, 0, "cancelled");
            break;
        }
        rc = -1;
        if ((p[1].revents & (POLLIN | POLLHUP | POLLERR)) && pump_stdin(&in_fd, &q, errp) < 0)
            break;
        if ((p[0].revents & POLLOUT || sandbox__sendq_pending(&q)) &&
            sandbox__sendq_flush(&q, conn, NULL) < 0) {
            /* The command finished without reading all its input: stop sending, and read
             * on for its result. */
            sandbox__sendq_free(&q);
            in_fd = -1;
        }
        rc = 0;
        if (!(p[0].revents & (POLLIN | POLLHUP | POLLERR)))
            continue;
        rc = -1;
        if (sandbox__proto_recv(conn, &f, errp) < 0)
            break;
        rc = on_frame(&f, o, out, errp);
        sandbox__proto_frame_free(&f);
        if (rc != 0)
            break;
    }
    sandbox__sendq_free(&q);
    return rc < 0 ? err_wrap(errp, "exec") : 0;
}
