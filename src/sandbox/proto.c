/*
 * The control protocol between a paddock process and a sandbox's init: length-prefixed
 * frames on a unix stream socket. Each side caps frames and parses the other's JSON with
 * jansson, so a compromised init can at worst send a wrong answer, never overrun a buffer.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "sandbox_int.h"

/* The send or receive timeout set on fd, in seconds, for messages. */
static double
timeout_s(int fd, int optname)
{
    struct timeval tv = { 0, 0 };
    socklen_t n = sizeof(tv);

    if (getsockopt(fd, SOL_SOCKET, optname, &tv, &n) < 0)
        return 0;
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

/*
 * The calling thread's deadline (sandbox_deadline_set): an instant of util_mono_ns() past
 * which no send or receive of this thread waits, whatever keep-alives came; 0 for none.
 */
static _Thread_local int64_t deadline_ns;
static _Thread_local int64_t deadline_ms; /* its length, for errors */

void
sandbox_deadline_set(int64_t ms)
{
    deadline_ms = ms > 0 ? ms : 0;
    deadline_ns = ms > 0 ? util_mono_ns() + ms * 1000000 : 0;
}

/* The error for a call that reached the thread's deadline. */
static int
deadline_fail(struct err **errp)
{
    return err_set(errp, ERR_TIMEOUT, 0,
                   "the sandbox's control socket did not finish within the caller's limit of "
                   "%g s (its keep-alives do not extend it)",
                   (double)deadline_ms / 1000);
}

/*
 * Waits until fd is ready for events: at most the socket's own timeout (optname; none when
 * unset) and never past the thread's deadline. Returns 0 when ready, else -1 with errno
 * EAGAIN (the socket's timeout) or ETIME (the deadline).
 *
 * The socket's timeout is left to poll(), not to a blocking send or recv: the kernel counts
 * SO_RCVTIMEO from the start of a call, and a recv(MSG_WAITALL) that got part of a frame before
 * the peer stopped returns that part when the timeout runs out, so the next call waited the
 * whole timeout again: twice the limit after a stall midway through a frame.
 */
static int
wait_ready(int fd, short events, int optname)
{
    for (;;) {
        struct pollfd pfd = { .fd = fd, .events = events };
        int64_t left_ms = (deadline_ns - util_mono_ns() + 999999) / 1000000;
        int64_t sock_ms = (int64_t)(timeout_s(fd, optname) * 1000);
        bool by_sock = sock_ms > 0 && (deadline_ns == 0 || sock_ms < left_ms);
        int n;

        if (deadline_ns != 0 && left_ms <= 0) {
            errno = ETIME;
            return -1;
        }
        n = poll(&pfd, 1, by_sock ? (int)sock_ms : deadline_ns != 0 ? (int)left_ms : -1);
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return -1;
        if (n == 0 && by_sock) {
            errno = EAGAIN;
            return -1;
        }
        /* Interrupted, or the deadline came: the next round tells which. */
    }
}

/* -1 with errno ETIME once the thread's deadline has passed, even while bytes still flow. */
static int
deadline_check(void)
{
    if (deadline_ns != 0 && util_mono_ns() >= deadline_ns) {
        errno = ETIME;
        return -1;
    }
    return 0;
}

/*
 * One sendmsg() or recv() that takes what it can at once and otherwise waits for the socket
 * (wait_ready): at most the socket's timeout since the last byte moved, and never past the
 * thread's deadline. -1 with errno EAGAIN for the timeout, ETIME for the deadline.
 */
static ssize_t
send_some(int fd, struct msghdr *mh)
{
    for (;;) {
        ssize_t w;

        if (deadline_check() < 0)
            return -1;
        w = sendmsg(fd, mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w >= 0 || (errno != EINTR && errno != EAGAIN))
            return w;
        if (errno == EAGAIN && wait_ready(fd, POLLOUT, SO_SNDTIMEO) < 0)
            return -1;
    }
}

static ssize_t
recv_some(int fd, void *data, size_t len)
{
    for (;;) {
        ssize_t r;

        if (deadline_check() < 0)
            return -1;
        r = recv(fd, data, len, MSG_DONTWAIT);
        if (r >= 0 || (errno != EINTR && errno != EAGAIN))
            return r;
        if (errno == EAGAIN && wait_ready(fd, POLLIN, SO_RCVTIMEO) < 0)
            return -1;
    }
}

int
sandbox__proto_set_timeout(int fd, int timeout_ms, struct err **errp)
{
    struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };

    /* SO_SNDTIMEO also bounds a connect() that waits for room in a full listen queue. */
    if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0)
        return err_set(errp, ERR_IO, errno, "set the control socket's timeouts");
    return 0;
}

int
sandbox__proto_send(int fd, uint32_t type, const void *data, size_t len, struct err **errp)
{
    uint32_t hdr[2] = {type, (uint32_t)len};
    struct iovec iov[2] = {{hdr, sizeof(hdr)}, {(void *)(uintptr_t)data, len}};
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2};
    size_t total = sizeof(hdr) + len;

    ASSERT(len <= PROTO_MAX_FRAME);
    while (total > 0) {
        ssize_t w = send_some(fd, &mh);
        if (w < 0 && errno == ETIME)
            return deadline_fail(errp);
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return err_set(errp, ERR_TIMEOUT, 0,
                           "the sandbox's control socket took nothing for %g s (is its "
                           "handler stopped?)",
                           timeout_s(fd, SO_SNDTIMEO));
        if (w < 0)
            return err_set(errp, ERR_IO, errno, "send to sandbox init");
        total -= (size_t)w;
        while (w > 0 && mh.msg_iovlen > 0) {
            if ((size_t)w >= mh.msg_iov[0].iov_len) {
                w -= (ssize_t)mh.msg_iov[0].iov_len;
                mh.msg_iov++;
                mh.msg_iovlen--;
            } else {
                mh.msg_iov[0].iov_base = (char *)mh.msg_iov[0].iov_base + w;
                mh.msg_iov[0].iov_len -= (size_t)w;
                w = 0;
            }
        }
    }
    return 0;
}

int
sandbox__proto_send_json(int fd, uint32_t type, json_t *obj, struct err **errp)
{
    cleanup_free char *s = json_dumps(obj, JSON_COMPACT);

    if (s == NULL)
        return err_set(errp, ERR_INTERNAL, 0, "encode control message");
    if (strlen(s) > PROTO_MAX_FRAME)
        return err_set(errp, ERR_LIMIT, 0, "control message larger than %u bytes",
                       PROTO_MAX_FRAME);
    return sandbox__proto_send(fd, type, s, strlen(s), errp);
}

/*
 * Reads exactly len bytes. Each wait is at most the socket's receive timeout since the last
 * byte came, so the limit is on inactivity: a frame that arrives slowly but steadily is read to its
 * end, unless the thread's deadline passes first. Returns how many bytes came before the peer
 * closed, or -1 (errno set).
 */
static ssize_t
recv_full(int fd, void *data, size_t len)
{
    size_t got = 0;

    while (got < len) {
        ssize_t r = recv_some(fd, (char *)data + got, len - got);
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

/* The error for a failed recv_full(); what names the part of a frame that did not come. */
static int
recv_fail(int fd, const char *what, struct err **errp)
{
    if (errno == ETIME)
        return deadline_fail(errp);
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        return err_set(errp, ERR_TIMEOUT, 0,
                       "the sandbox's control socket did not answer within %g s (is its "
                       "handler stopped?)",
                       timeout_s(fd, SO_RCVTIMEO));
    return err_set(errp, ERR_IO, errno, "receive %s from sandbox init", what);
}

int
sandbox__proto_recv_header(int fd, uint32_t *type, uint32_t *len, struct err **errp)
{
    uint32_t hdr[2];
    ssize_t r;

    /* A keep-alive restarts the socket's timeout, as any byte does, but not the deadline. */
    do {
        r = recv_full(fd, hdr, sizeof(hdr));
        if (r < 0)
            return recv_fail(fd, "a frame", errp);
        if (r == 0)
            return err_set(errp, ERR_IO, 0, "sandbox init closed the connection");
        if ((size_t)r < sizeof(hdr))
            return err_set(errp, ERR_IO, 0, "short frame header from sandbox init");
        if (hdr[0] == PROTO_ALIVE && hdr[1] != 0)
            return err_set(errp, ERR_IO, 0, "keep-alive frame with a payload from sandbox init");
    } while (hdr[0] == PROTO_ALIVE);
    if (hdr[0] < PROTO_REQ || hdr[0] > PROTO_RESULT)
        return err_set(errp, ERR_IO, 0, "unknown frame type %u from sandbox init", hdr[0]);
    if (hdr[1] > PROTO_MAX_FRAME)
        return err_set(errp, ERR_LIMIT, 0, "frame of %u bytes exceeds the %u-byte cap", hdr[1],
                       PROTO_MAX_FRAME);
    *type = hdr[0];
    *len = hdr[1];
    return 0;
}

int
sandbox__proto_recv_payload(int fd, void *data, size_t len, struct err **errp)
{
    ssize_t r = recv_full(fd, data, len);

    if (r < 0)
        return recv_fail(fd, "a frame's payload", errp);
    if ((size_t)r < len)
        return err_set(errp, ERR_IO, 0, "truncated frame from sandbox init");
    return 0;
}

ssize_t
sandbox__proto_recv_some(int fd, void *data, size_t len, struct err **errp)
{
    ssize_t r = recv_some(fd, data, len);

    if (r < 0)
        return recv_fail(fd, "a frame's payload", errp);
    if (r == 0 && len > 0)
        return err_set(errp, ERR_IO, 0, "sandbox init broke off the stream");
    return r;
}

int
sandbox__proto_recv(int fd, struct proto_frame *f, struct err **errp)
{
    f->data = NULL;
    if (sandbox__proto_recv_header(fd, &f->type, &f->len, errp) < 0)
        return -1;
    f->data = xmalloc((size_t)f->len + 1);
    if (sandbox__proto_recv_payload(fd, f->data, f->len, errp) < 0) {
        sandbox__proto_frame_free(f);
        return -1;
    }
    f->data[f->len] = '\0';
    return 0;
}

void
sandbox__proto_alive(struct proto_alive *a)
{
    int64_t now = util_mono_ns();

    if (a->next_ns == 0)
        a->next_ns = now + PROTO_ALIVE_NS; /* the work starts: nothing to say yet */
    if (now < a->next_ns)
        return;
    /* A caller that went away is found out by the next frame that matters. */
    sandbox__proto_send(a->conn, PROTO_ALIVE, NULL, 0, NULL);
    a->next_ns = now + PROTO_ALIVE_NS;
}

void
sandbox__proto_frame_free(struct proto_frame *f)
{
    free(f->data);
    f->data = NULL;
}

json_t *
sandbox__proto_parse_json(const struct proto_frame *f, struct err **errp)
{
    json_error_t jerr;
    json_t *j = json_loadb(f->data, f->len, JSON_REJECT_DUPLICATES, &jerr);

    if (j == NULL) {
        err_set(errp, ERR_INVALID, 0, "bad control message: %s", jerr.text);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        err_set(errp, ERR_INVALID, 0, "bad control message: not an object");
        return NULL;
    }
    return j;
}

json_t *
sandbox__json_bytes(const char *s)
{
    static const char hex[] = "0123456789abcdef";
    json_t *j = json_string(s);
    size_t n;
    char *h;

    if (j != NULL)
        return j;
    n = strlen(s);
    h = xmalloc(2 * n + 1);
    for (size_t i = 0; i < n; i++) {
        h[2 * i] = hex[(unsigned char)s[i] >> 4];
        h[2 * i + 1] = hex[(unsigned char)s[i] & 15];
    }
    h[2 * n] = '\0';
    j = json_pack("{s:s}", "hex", h);
    free(h);
    return j;
}

char *
sandbox__bytes_from_json(json_t *j)
{
    const char *h;
    size_t n;
    char *out;

    if (json_is_string(j)) {
        if (strlen(json_string_value(j)) != json_string_length(j))
            return NULL; /* an embedded NUL */
        return xstrdup(json_string_value(j));
    }
    h = json_string_value(json_object_get(j, "hex"));
    if (h == NULL || (n = strlen(h)) % 2 != 0)
        return NULL;
    out = xmalloc(n / 2 + 1);
    for (size_t i = 0; i < n / 2; i++) {
        int hi = util_hexval(h[2 * i]), lo = util_hexval(h[2 * i + 1]);
        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
            free(out);
            return NULL;
        }
        out[i] = (char)(hi << 4 | lo);
    }
    out[n / 2] = '\0';
    return out;
}

int
sandbox__proto_send_error(int fd, const struct err *e)
{
    /* A message may quote a path that is not UTF-8, which JSON cannot carry: then it goes
     * escaped (the receiver escapes whatever it gets in any case). */
    json_t *m = json_string(e->msg);
    json_t *j;

    if (m == NULL) {
        cleanup_free char *esc = log_escape(e->msg, strlen(e->msg), 4096);
        m = json_string(esc);
    }
    j = json_pack("{s:b, s:s, s:i, s:o}", "ok", 0, "code", err_code_name(e->code), "errno",
                  e->errnum, "message", m);
    int r = sandbox__proto_send_json(fd, PROTO_RESULT, j, NULL);

    json_decref(j);
    return r;
}

int
sandbox__proto_result(const struct proto_frame *f, json_t **obj_out, struct err **errp)
{
    json_t *j;
    json_t *ok;

    if (f->type != PROTO_RESULT)
        return err_set(errp, ERR_IO, 0, "unexpected frame type %u from sandbox init", f->type);
    j = sandbox__proto_parse_json(f, errp);
    if (j == NULL)
        return -1;
    ok = json_object_get(j, "ok");
    if (!json_is_boolean(ok)) {
        json_decref(j);
        return err_set(errp, ERR_IO, 0, "bad result from sandbox init");
    }
    if (!json_is_true(ok)) {
        const char *code = json_string_value(json_object_get(j, "code"));
        const char *msg = json_string_value(json_object_get(j, "message"));
        cleanup_free char *esc = NULL;
        enum err_code c = err_code_from_name(code != NULL ? code : "internal");

        msg = msg != NULL ? msg : "unknown error";
        esc = log_escape(msg, strlen(msg), 1024);
        /* The message comes from inside the sandbox: it is escaped, never trusted. */
        err_set(errp, c, 0, "%s", esc);
        json_decref(j);
        return -1;
    }
    if (obj_out != NULL)
        *obj_out = j;
    else
        json_decref(j);
    return 0;
}

int
sandbox__connect(const char *env_dir, struct err **errp)
{
    cleanup_close int dirfd = open(env_dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    cleanup_close int sockfd = -1;
    cleanup_close int fd = -1;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int64_t timeout_ms = PROTO_TIMEOUT_MS;
    struct stat st;

    /* The connect() waits as long as the send timeout: within the deadline too. */
    if (deadline_ns != 0) {
        int64_t left_ms = (deadline_ns - util_mono_ns() + 999999) / 1000000;
        if (left_ms <= 0)
            return deadline_fail(errp);
        timeout_ms = left_ms < timeout_ms ? left_ms : timeout_ms;
    }
    if (dirfd < 0)
        return err_set(errp, errno == ENOENT ? ERR_NOT_FOUND : ERR_IO, errno, "open %s", env_dir);
    /* The socket itself, never a link in its place: the volume's directory is the sandbox
     * root's, and a link there would send this host process's requests to any socket. Going
     * through /proc/self/fd also keeps the path short whatever the data directory is. */
    sockfd = openat(dirfd, PROTO_SOCK_NAME, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (sockfd < 0 && errno == ENOENT)
        return err_set(errp, ERR_CONFLICT, 0, "sandbox is not running");
    if (sockfd < 0 || fstat(sockfd, &st) < 0 || !S_ISSOCK(st.st_mode))
        return err_set(errp, ERR_IO, sockfd < 0 ? errno : 0,
                       "the sandbox's control socket %s/%s is not a socket", env_dir,
                       PROTO_SOCK_NAME);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "/proc/self/fd/%d", sockfd);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return err_set(errp, ERR_IO, errno, "socket");
    if (sandbox__proto_set_timeout(fd, (int)timeout_ms, errp) < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        if (errno == ECONNREFUSED || errno == ENOENT)
            return err_set(errp, ERR_CONFLICT, 0, "sandbox is not running");
        if (errno == EAGAIN)
            return err_set(errp, ERR_TIMEOUT, 0,
                           "the sandbox's control socket accepted no connection within %g s",
                           timeout_s(fd, SO_SNDTIMEO));
        return err_set(errp, ERR_IO, errno, "connect to sandbox init");
    }
    return steal_fd(&fd);
}

void
sandbox__sendq_init(struct proto_sendq *q)
{
    buf_init(&q->b, 4 * (PROTO_MAX_FRAME + 8));
    q->off = 0;
}

int
sandbox__sendq_push(struct proto_sendq *q, uint32_t type, const void *data, size_t len,
                    struct err **errp)
{
    uint32_t hdr[2] = {type, (uint32_t)len};

    ASSERT(len <= PROTO_MAX_FRAME);
    if (buf_append(&q->b, hdr, sizeof(hdr), errp) < 0 || buf_append(&q->b, data, len, errp) < 0) {
        q->off = 0; /* the buffer was freed with what it held */
        return err_wrap(errp, "queue frame");
    }
    return 0;
}

int
sandbox__sendq_flush(struct proto_sendq *q, int fd, struct err **errp)
{
    while (q->off < q->b.len) {
        ssize_t w = send(fd, q->b.data + q->off, q->b.len - q->off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (w < 0)
            return err_set(errp, ERR_IO, errno, "send");
        q->off += (size_t)w;
    }
    q->b.len = 0;
    q->off = 0;
    return 0;
}

bool
sandbox__sendq_pending(const struct proto_sendq *q)
{
    return q->off < q->b.len;
}

void
sandbox__sendq_free(struct proto_sendq *q)
{
    buf_free(&q->b);
    q->off = 0;
}
