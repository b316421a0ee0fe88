/*
 * Tests for src/sandbox/proto.c: the framing protocol over a socketpair, RESULT frames and
 * their error rebuilding, JSON parsing and the non-blocking send queue. The peer is treated
 * as untrusted, so most of these write raw bytes the way a compromised init could.
 */
#include <poll.h>
#include <sys/socket.h>

#include "../unit.h"

#include "sandbox/sandbox_int.h"
#include "suites.h"

struct pair {
    int a; /* the side under test */
    int b; /* the peer */
};

static int
pair_setup(void **state)
{
    struct pair *p;
    int sv[2];

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return -1;
    p = xcalloc(1, sizeof(*p));
    p->a = sv[0];
    p->b = sv[1];
    *state = p;
    return 0;
}

static int
pair_teardown(void **state)
{
    struct pair *p = *state;

    close_and_reset(&p->a);
    close_and_reset(&p->b);
    free(p);
    return 0;
}

static void
raw_write(int fd, const void *data, size_t len)
{
    assert_int_equal(util_write_all(fd, data, len), 0);
}

static void
raw_header(int fd, uint32_t type, uint32_t len)
{
    uint32_t hdr[2] = { type, len };

    raw_write(fd, hdr, sizeof(hdr));
}

/* Sends one frame from a child process, so frames larger than the socket buffer work. */
struct child_send {
    int fd;
    uint32_t type;
    const void *data;
    size_t len;
};

static int
child_send_fn(void *arg)
{
    const struct child_send *c = arg;

    return sandbox__proto_send(c->fd, c->type, c->data, c->len, NULL) == 0 ? 0 : 1;
}

static pid_t
send_in_child(int fd, uint32_t type, const void *data, size_t len)
{
    struct child_send c = { fd, type, data, len };
    pid_t pid;

    fflush(stdout);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(child_send_fn(&c));
    return pid;
}

static void
reap_ok(pid_t pid)
{
    int st = 0;

    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

/* --------------------------------------------------------- send/recv round trip */

struct roundtrip_case {
    uint32_t type;
    size_t len;
};

static void
test_roundtrip(void **state)
{
    struct pair *p = *state;
    static const struct roundtrip_case cases[] = {
        { PROTO_REQ, 0 },
        { PROTO_STDIN_EOF, 0 },
        { PROTO_DATA_EOF, 0 },
        { PROTO_STDIN, 1 },
        { PROTO_STDOUT, 100 },
        { PROTO_STDERR, 4096 },
        { PROTO_DATA, PROTO_CHUNK }, /* 64 KiB */
        { PROTO_DATA, PROTO_CHUNK + 1 },
        { PROTO_ENTRY, 300000 },
        { PROTO_RESULT, PROTO_MAX_FRAME }, /* exactly the cap */
    };
    unsigned char *payload = xmalloc(PROTO_MAX_FRAME);

    for (size_t i = 0; i < PROTO_MAX_FRAME; i++)
        payload[i] = (unsigned char)((i * 131) ^ (i >> 8));
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct proto_frame f = { 0 };
        struct err *e = NULL;
        pid_t pid = send_in_child(p->b, cases[i].type, payload, cases[i].len);

        ASSERT_NO_ERR(sandbox__proto_recv(p->a, &f, &e), &e);
        reap_ok(pid);
        assert_int_equal(f.type, cases[i].type);
        assert_int_equal(f.len, cases[i].len);
        assert_non_null(f.data);
        assert_memory_equal(f.data, payload, cases[i].len);
        assert_int_equal(f.data[f.len], '\0'); /* NUL-terminated for convenience */
        sandbox__proto_frame_free(&f);
        assert_null(f.data);
    }
    free(payload);
}

static void
test_roundtrip_sequence(void **state)
{
    struct pair *p = *state;
    struct err *e = NULL;
    struct proto_frame f = { 0 };

    /* Several small frames back to back are read one at a time, in order. */
    ASSERT_NO_ERR(sandbox__proto_send(p->b, PROTO_STDOUT, "out", 3, &e), &e);
    ASSERT_NO_ERR(sandbox__proto_send(p->b, PROTO_STDERR, "err!", 4, &e), &e);
    ASSERT_NO_ERR(sandbox__proto_send(p->b, PROTO_DATA_EOF, NULL, 0, &e), &e);

    ASSERT_NO_ERR(sandbox__proto_recv(p->a, &f, &e), &e);
    assert_int_equal(f.type, PROTO_STDOUT);
    assert_string_equal(f.data, "out");
    sandbox__proto_frame_free(&f);
    ASSERT_NO_ERR(sandbox__proto_recv(p->a, &f, &e), &e);
    assert_int_equal(f.type, PROTO_STDERR);
    assert_string_equal(f.data, "err!");
    sandbox__proto_frame_free(&f);
    ASSERT_NO_ERR(sandbox__proto_recv(p->a, &f, &e), &e);
    assert_int_equal(f.type, PROTO_DATA_EOF);
    assert_int_equal(f.len, 0);
    assert_string_equal(f.data, "");
    sandbox__proto_frame_free(&f);
}

static void
test_send_json(void **state)
{
    struct pair *p = *state;
    struct err *e = NULL;
    struct proto_frame f = { 0 };
    json_t *req = json_pack("{s:s, s:s, s:i}", "op", "read", "path", "/etc/hosts", "max", 42);
    json_t *got;

    ASSERT_NO_ERR(sandbox__proto_send_json(p->b, PROTO_REQ, req, &e), &e);
    json_decref(req);
    ASSERT_NO_ERR(sandbox__proto_recv(p->a, &f, &e), &e);
    assert_int_equal(f.type, PROTO_REQ);
    got = sandbox__proto_parse_json(&f, &e);
    assert_non_null(got);
    assert_string_equal(json_string_value(json_object_get(got, "op")), "read");
    assert_string_equal(json_string_value(json_object_get(got, "path")), "/etc/hosts");
    assert_int_equal(json_integer_value(json_object_get(got, "max")), 42);
    json_decref(got);
    sandbox__proto_frame_free(&f);
}

/* ------------------------------------------------------------- bad frames */

static void
test_recv_unknown_type(void **state)
{
    struct pair *p = *state;
    static const uint32_t bad[] = { 0, PROTO_ALIVE + 1, 100, 0x80000000u, 0xffffffffu };

    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        struct proto_frame f;
        struct err *e = NULL;

        memset(&f, 0x5a, sizeof(f));
        raw_header(p->b, bad[i], 0);
        assert_int_equal(sandbox__proto_recv(p->a, &f, &e), -1);
        assert_null(f.data);
        ASSERT_ERR_CONTAINS(&e, ERR_IO, "unknown frame type");
    }
}

static void
test_recv_oversize(void **state)
{
    struct pair *p = *state;
    static const uint32_t lens[] = { PROTO_MAX_FRAME + 1, PROTO_MAX_FRAME * 2, 0xffffffffu };

    for (size_t i = 0; i < ARRAY_LEN(lens); i++) {
        struct proto_frame f;
        struct err *e = NULL;

        memset(&f, 0x5a, sizeof(f));
        /* Only the header: the cap must be enforced before any payload is awaited. */
        raw_header(p->b, PROTO_STDOUT, lens[i]);
        assert_int_equal(sandbox__proto_recv(p->a, &f, &e), -1);
        assert_null(f.data);
        ASSERT_ERR(&e, ERR_LIMIT);
    }
}

static void
test_recv_truncated_payload(void **state)
{
    struct pair *p = *state;
    struct proto_frame f;
    struct err *e = NULL;

    raw_header(p->b, PROTO_DATA, 100);
    raw_write(p->b, "0123456789", 10);
    close_and_reset(&p->b); /* the peer dies mid-payload */
    assert_int_equal(sandbox__proto_recv(p->a, &f, &e), -1);
    assert_null(f.data);
    ASSERT_ERR_CONTAINS(&e, ERR_IO, "truncated");
}

static void
test_recv_truncated_at_cap(void **state)
{
    struct pair *p = *state;
    struct proto_frame f;
    struct err *e = NULL;

    /* A frame of exactly the cap is allowed, so a missing payload is a truncation. */
    raw_header(p->b, PROTO_DATA, PROTO_MAX_FRAME);
    close_and_reset(&p->b);
    assert_int_equal(sandbox__proto_recv(p->a, &f, &e), -1);
    assert_null(f.data);
    ASSERT_ERR_CONTAINS(&e, ERR_IO, "truncated");
}

static void
test_recv_short_header(void **state)
{
    struct pair *p = *state;
    struct proto_frame f;
    struct err *e = NULL;
    uint32_t type = PROTO_STDOUT;

    raw_write(p->b, &type, sizeof(type)); /* half a header */
    close_and_reset(&p->b);
    assert_int_equal(sandbox__proto_recv(p->a, &f, &e), -1);
    assert_null(f.data);
    ASSERT_ERR(&e, ERR_IO);
}

static void
test_recv_clean_eof(void **state)
{
    struct pair *p = *state;
    struct proto_frame f;
    struct err *e = NULL;

    close_and_reset(&p->b);
    assert_int_equal(sandbox__proto_recv(p->a, &f, &e), -1);
    assert_null(f.data);
    assert_non_null(e);
    assert_int_equal(e->errnum, 0);
    ASSERT_ERR_CONTAINS(&e, ERR_IO, "closed");
}

static void
test_send_to_closed_peer(void **state)
{
    struct pair *p = *state;
    struct err *e = NULL;

    /* EPIPE is an error, never a SIGPIPE that kills the process. */
    close_and_reset(&p->b);
    assert_int_equal(sandbox__proto_send(p->a, PROTO_STDOUT, "x", 1, &e), -1);
    assert_non_null(e);
    assert_int_equal(e->errnum, EPIPE);
    ASSERT_ERR(&e, ERR_IO);
}

/* ----------------------------------------------------- timeouts and keep-alives */

/* A peer that sends nothing: every read gives up after the socket's timeout, as ERR_TIMEOUT. */
static void
test_recv_timeout(void **state)
{
    struct pair *p = *state;
    struct proto_frame f;
    struct err *e = NULL;
    int64_t t0;

    ASSERT_NO_ERR(sandbox__proto_set_timeout(p->a, 100, &e), &e);
    t0 = util_mono_ms();
    assert_int_equal(sandbox__proto_recv(p->a, &f, &e), -1);
    assert_true(util_mono_ms() - t0 >= 90);
    assert_null(f.data);
    ASSERT_ERR_CONTAINS(&e, ERR_TIMEOUT, "did not answer within 0.1 s");

    /* Stalled in the middle of a payload: the same, and what came is not taken for a frame. */
    raw_header(p->b, PROTO_DATA, 100);
    raw_write(p->b, "0123456789", 10);
    assert_int_equal(sandbox__proto_recv(p->a, &f, &e), -1);
    assert_null(f.data);
    ASSERT_ERR(&e, ERR_TIMEOUT);
}

/*
 * From a child, one step every every_ms: a keep-alive (alive), after n of them a STDOUT frame
 * "late"; or else one byte of an n-byte DATA frame. Returns the child.
 */
static pid_t
child_trickle(int fd, bool alive, int n, int every_ms)
{
    uint32_t ka[2] = { PROTO_ALIVE, 0 }, hdr[2] = { PROTO_DATA, (uint32_t)n };
    pid_t pid;

    fflush(stdout);
    pid = fork();
    assert_true(pid >= 0);
    if (pid != 0)
        return pid;
    if (!alive)
        (void)!write(fd, hdr, sizeof(hdr));
    for (int i = 0; i < n; i++) {
        usleep((useconds_t)every_ms * 1000);
        if (alive)
            (void)!write(fd, ka, sizeof(ka));
        else
            (void)!write(fd, "x", 1);
    }
    if (alive)
        sandbox__proto_send(fd, PROTO_STDOUT, "late", 4, NULL);
    _exit(0);
}

/* A payload that arrives slowly but steadily is read to its end: the limit is on inactivity. */
static void
test_recv_slow_payload_is_not_a_timeout(void **state)
{
    struct pair *p = *state;
    struct proto_frame f = { 0 };
    struct err *e = NULL;
    pid_t pid;

    ASSERT_NO_ERR(sandbox__proto_set_timeout(p->a, 200, &e), &e);
    /* 480 ms in all, each byte well within the timeout. */
    pid = child_trickle(p->b, false, 8, 60);
    ASSERT_NO_ERR(sandbox__proto_recv(p->a, &f, &e), &e);
    reap_ok(pid);
    assert_int_equal(f.len, 8);
    assert_string_equal(f.data, "xxxxxxxx");
    sandbox__proto_frame_free(&f);
}

/*
 * A peer that stops midway through a payload it was sending steadily: the read gives up the
 * socket's timeout after the last byte, not later. (Left to a blocking recv(MSG_WAITALL),
 * whose timeout the kernel counts from the start of the call, it took up to twice as long:
 * the call that saw the last byte ran out its own time with what it had, and the next call
 * waited the whole timeout again.)
 */
static void
test_recv_stall_midway_times_out_once(void **state)
{
    struct pair *p = *state;
    struct proto_frame f = { 0 };
    struct err *e = NULL;
    int64_t last_ms = 0, failed_ms;
    int clock[2];
    pid_t pid;

    assert_int_equal(pipe2(clock, O_CLOEXEC), 0);
    ASSERT_NO_ERR(sandbox__proto_set_timeout(p->a, 1000, &e), &e);
    fflush(stdout);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        uint32_t hdr[2] = { PROTO_DATA, 100 };

        (void)!write(p->b, hdr, sizeof(hdr));
        /* 25 bytes 50 ms apart, then nothing: the peer is stopped 1.25 s into the frame. */
        for (int i = 0; i < 25; i++) {
            usleep(50 * 1000);
            (void)!write(p->b, "x", 1);
        }
        last_ms = util_mono_ms();
        (void)!write(clock[1], &last_ms, sizeof(last_ms));
        pause();
        _exit(0);
    }
    close(clock[1]);
    assert_int_equal(sandbox__proto_recv(p->a, &f, &e), -1);
    failed_ms = util_mono_ms();
    kill(pid, SIGKILL);
    assert_int_equal(waitpid(pid, NULL, 0), pid);
    assert_int_equal(read(clock[0], &last_ms, sizeof(last_ms)), (ssize_t)sizeof(last_ms));
    close(clock[0]);
    assert_null(f.data);
    ASSERT_ERR_CONTAINS(&e, ERR_TIMEOUT, "did not answer within 1 s");
    /* The old way gave up 1.75 s after the last byte here. */
    assert_in_range(failed_ms - last_ms, 950, 1400);
}

/* A peer that takes nothing: a send gives up after the socket's timeout. */
static void
test_send_timeout(void **state)
{
    struct pair *p = *state;
    struct err *e = NULL;
    char *payload = xcalloc(1, PROTO_MAX_FRAME);
    int r = 0;

    ASSERT_NO_ERR(sandbox__proto_set_timeout(p->a, 100, &e), &e);
    /* A few frames of the cap fill any socket buffer; the peer never reads. */
    for (int i = 0; i < 16 && r == 0; i++)
        r = sandbox__proto_send(p->a, PROTO_DATA, payload, PROTO_MAX_FRAME, &e);
    assert_int_equal(r, -1);
    ASSERT_ERR_CONTAINS(&e, ERR_TIMEOUT, "took nothing for 0.1 s");
    free(payload);
}

/* Keep-alives are read past; one with a payload is refused (it is not a frame to skip). */
static void
test_recv_skips_alive(void **state)
{
    struct pair *p = *state;
    struct proto_frame f = { 0 };
    struct err *e = NULL;

    raw_header(p->b, PROTO_ALIVE, 0);
    raw_header(p->b, PROTO_ALIVE, 0);
    ASSERT_NO_ERR(sandbox__proto_send(p->b, PROTO_STDOUT, "out", 3, &e), &e);
    ASSERT_NO_ERR(sandbox__proto_recv(p->a, &f, &e), &e);
    assert_int_equal(f.type, PROTO_STDOUT);
    assert_string_equal(f.data, "out");
    sandbox__proto_frame_free(&f);

    raw_header(p->b, PROTO_ALIVE, 3);
    raw_write(p->b, "abc", 3);
    assert_int_equal(sandbox__proto_recv(p->a, &f, &e), -1);
    assert_null(f.data);
    ASSERT_ERR_CONTAINS(&e, ERR_IO, "keep-alive");
}

/*
 * Keep-alives restart the socket's timeout but never the thread's deadline: a handler that
 * says it is alive for ever (stopped and resumed in turn) is given up on at the deadline, and
 * so is a payload trickling in byte by byte. Without a deadline both are waited through.
 */
static void
test_deadline_not_extended(void **state)
{
    static const struct {
        bool alive;      /* keep-alives, else a slow DATA payload */
        int deadline_ms; /* 0: none */
        const char *msg; /* the error, or NULL for a frame received */
    } cases[] = {
        { true, 0, NULL },
        { true, 500, "caller's limit of 0.5 s" },
        { false, 0, NULL },
        { false, 400, "caller's limit of 0.4 s" },
    };
    struct pair *p = *state;
    struct err *e = NULL;
    int sv[2];

    ASSERT_NO_ERR(sandbox__proto_set_timeout(p->a, 200, &e), &e);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct proto_frame f = { 0 };
        /* 40 steps of 50 ms: 2 s in all, each well within the socket's timeout. */
        pid_t pid = child_trickle(p->b, cases[i].alive, 40, 50);
        int64_t t0 = util_mono_ms();
        int r;

        sandbox_deadline_set(cases[i].deadline_ms);
        r = sandbox__proto_recv(p->a, &f, &e);
        sandbox_deadline_set(0);
        if (cases[i].msg == NULL) {
            ASSERT_NO_ERR(r, &e);
            assert_int_equal(f.len, cases[i].alive ? 4 : 40);
            sandbox__proto_frame_free(&f);
        } else {
            assert_int_equal(r, -1);
            assert_true(util_mono_ms() - t0 >= cases[i].deadline_ms - 10);
            assert_true(util_mono_ms() - t0 < cases[i].deadline_ms + 1000);
            assert_null(f.data);
            ASSERT_ERR_CONTAINS(&e, ERR_TIMEOUT, cases[i].msg);
        }
        reap_ok(pid); /* it ends on its own after its 2 s */
        /* What the child sent after the deadline is still queued: start afresh. */
        close_and_reset(&p->a);
        close_and_reset(&p->b);
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        p->a = sv[0];
        p->b = sv[1];
        ASSERT_NO_ERR(sandbox__proto_set_timeout(p->a, 200, &e), &e);
    }
}

/* A send waits no longer than the deadline for a peer that takes nothing. */
static void
test_deadline_bounds_send(void **state)
{
    struct pair *p = *state;
    struct err *e = NULL;
    char *payload = xcalloc(1, PROTO_MAX_FRAME);
    int64_t t0 = util_mono_ms();
    int r = 0;

    ASSERT_NO_ERR(sandbox__proto_set_timeout(p->a, 5000, &e), &e);
    sandbox_deadline_set(200);
    for (int i = 0; i < 16 && r == 0; i++)
        r = sandbox__proto_send(p->a, PROTO_DATA, payload, PROTO_MAX_FRAME, &e);
    sandbox_deadline_set(0);
    assert_int_equal(r, -1);
    assert_true(util_mono_ms() - t0 < 1500);
    ASSERT_ERR_CONTAINS(&e, ERR_TIMEOUT, "caller's limit of 0.2 s");
    free(payload);
}

/* The first call only starts the clock; one that is due sends an empty PROTO_ALIVE. */
static void
test_alive(void **state)
{
    struct pair *p = *state;
    struct proto_alive a = { p->b, 0 };
    uint32_t hdr[2];

    sandbox__proto_alive(&a);
    assert_true(a.next_ns > util_mono_ns());
    assert_true(a.next_ns <= util_mono_ns() + PROTO_ALIVE_NS);
    sandbox__proto_alive(&a); /* not due */
    a.next_ns = 1;            /* due */
    sandbox__proto_alive(&a);
    assert_true(a.next_ns > util_mono_ns());
    assert_int_equal(recv(p->a, hdr, sizeof(hdr), MSG_DONTWAIT), (ssize_t)sizeof(hdr));
    assert_int_equal(hdr[0], PROTO_ALIVE);
    assert_int_equal(hdr[1], 0);
    assert_int_equal(recv(p->a, hdr, sizeof(hdr), MSG_DONTWAIT), -1); /* only the one */
}

/* ---------------------------------------------------------------- JSON */

static struct proto_frame
frame_of(uint32_t type, const char *text)
{
    struct proto_frame f;

    f.type = type;
    f.len = (uint32_t)strlen(text);
    f.data = xstrdup(text);
    return f;
}

struct json_case {
    const char *text;
    bool ok;
};

static void
test_parse_json(void **state)
{
    static const struct json_case cases[] = {
        { "{}", true },
        { "{\"op\":\"exec\",\"argv\":[\"ls\"]}", true },
        { " {\"a\":1} ", true },
        { "", false },
        { "{", false },
        { "garbage", false },
        { "[1,2]", false }, /* not an object */
        { "\"str\"", false },
        { "42", false },
        { "null", false },
        { "{\"a\":1,\"a\":2}", false }, /* duplicate keys are ambiguous: refused */
        { "{} {}", false },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct proto_frame f = frame_of(PROTO_REQ, cases[i].text);
        struct err *e = NULL;
        json_t *j = sandbox__proto_parse_json(&f, &e);

        if (cases[i].ok) {
            if (j == NULL || e != NULL)
                fail_msg("'%s' rejected: %s", cases[i].text, e != NULL ? e->msg : "?");
            assert_true(json_is_object(j));
            json_decref(j);
        } else {
            if (j != NULL)
                fail_msg("'%s' accepted", cases[i].text);
            ASSERT_ERR(&e, ERR_INVALID);
        }
        sandbox__proto_frame_free(&f);
    }
}

static void
test_parse_json_len_bounded(void **state)
{
    struct proto_frame f = frame_of(PROTO_REQ, "{\"a\":1}trailing");
    struct err *e = NULL;
    json_t *j;
    (void)state;

    /* Only f.len bytes count, whatever follows in memory. */
    f.len = 7;
    j = sandbox__proto_parse_json(&f, &e);
    assert_non_null(j);
    assert_null(e);
    json_decref(j);
    sandbox__proto_frame_free(&f);
}

/* -------------------------------------------------------------- RESULT */

static void
test_result_ok(void **state)
{
    struct proto_frame f = frame_of(PROTO_RESULT, "{\"ok\":true,\"code\":0,\"size\":12}");
    struct err *e = NULL;
    json_t *j = NULL;
    (void)state;

    ASSERT_NO_ERR(sandbox__proto_result(&f, &j, &e), &e);
    assert_non_null(j);
    assert_true(json_is_true(json_object_get(j, "ok")));
    assert_int_equal(json_integer_value(json_object_get(j, "size")), 12);
    json_decref(j);
    /* obj_out may be NULL: the object is dropped (no leak under LSan). */
    ASSERT_NO_ERR(sandbox__proto_result(&f, NULL, &e), &e);
    sandbox__proto_frame_free(&f);
}

struct result_err_case {
    const char *json;
    enum err_code code;
    const char *msg; /* the exact rebuilt message */
};

static void
test_result_error(void **state)
{
    static const struct result_err_case cases[] = {
        { "{\"ok\":false,\"code\":\"not_found\",\"message\":\"no such file /x\"}", ERR_NOT_FOUND,
          "no such file /x" },
        { "{\"ok\":false,\"code\":\"limit\",\"message\":\"too big\"}", ERR_LIMIT, "too big" },
        { "{\"ok\":false,\"code\":\"invalid\",\"message\":\"bad\"}", ERR_INVALID, "bad" },
        { "{\"ok\":false,\"code\":\"permission\",\"message\":\"denied\"}", ERR_PERM, "denied" },
        { "{\"ok\":false,\"code\":\"conflict\",\"message\":\"busy\"}", ERR_CONFLICT, "busy" },
        { "{\"ok\":false,\"code\":\"timeout\",\"message\":\"slow\"}", ERR_TIMEOUT, "slow" },
        /* Unknown or missing parts fall back to internal / a fixed text. */
        { "{\"ok\":false,\"code\":\"bogus\",\"message\":\"m\"}", ERR_INTERNAL, "m" },
        { "{\"ok\":false,\"code\":7,\"message\":\"m\"}", ERR_INTERNAL, "m" },
        { "{\"ok\":false,\"code\":\"io\"}", ERR_IO, "unknown error" },
        { "{\"ok\":false}", ERR_INTERNAL, "unknown error" },
        /* The message comes from inside the sandbox: control characters are escaped. */
        { "{\"ok\":false,\"code\":\"io\",\"message\":\"a\\u001b[2Jb\\nc\\rd\\u007f\"}", ERR_IO,
          "a\\x1b[2Jb\\nc\\x0dd\\x7f" },
        { "{\"ok\":false,\"code\":\"io\",\"message\":\"caf\\u00e9\"}", ERR_IO, "caf\\xc3\\xa9" },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct proto_frame f = frame_of(PROTO_RESULT, cases[i].json);
        struct err *e = NULL;
        json_t *j = NULL;

        assert_int_equal(sandbox__proto_result(&f, &j, &e), -1);
        assert_null(j);
        assert_non_null(e);
        if (e->code != cases[i].code)
            fail_msg("%s: code %s, want %s", cases[i].json, err_code_name(e->code),
                     err_code_name(cases[i].code));
        assert_string_equal(e->msg, cases[i].msg);
        assert_int_equal(e->errnum, 0);
        err_free(e);
        sandbox__proto_frame_free(&f);
    }
}

static void
test_result_long_message_cut(void **state)
{
    enum {
        LEN = 5000
    };
    char *msg = xmalloc(LEN + 1);
    char *json;
    struct proto_frame f;
    struct err *e = NULL;
    (void)state;

    memset(msg, 'm', LEN);
    msg[LEN] = '\0';
    json = xasprintf("{\"ok\":false,\"code\":\"io\",\"message\":\"%s\"}", msg);
    f = frame_of(PROTO_RESULT, json);
    assert_int_equal(sandbox__proto_result(&f, NULL, &e), -1);
    assert_non_null(e);
    assert_true(strlen(e->msg) < LEN);
    assert_int_equal(strncmp(e->msg, "mmmm", 4), 0);
    assert_string_equal(e->msg + strlen(e->msg) - 3, "...");
    err_free(e);
    sandbox__proto_frame_free(&f);
    free(json);
    free(msg);
}

struct result_bad_case {
    uint32_t type;
    const char *json;
    enum err_code code;
};

static void
test_result_bad(void **state)
{
    static const struct result_bad_case cases[] = {
        { PROTO_RESULT, "", ERR_INVALID },
        { PROTO_RESULT, "garbage", ERR_INVALID },
        { PROTO_RESULT, "{\"ok\":tru", ERR_INVALID },
        { PROTO_RESULT, "[{\"ok\":true}]", ERR_INVALID },
        { PROTO_RESULT, "true", ERR_INVALID },
        { PROTO_RESULT, "{\"ok\":true,\"ok\":false}", ERR_INVALID },
        { PROTO_RESULT, "{}", ERR_IO },
        { PROTO_RESULT, "{\"ok\":1}", ERR_IO },
        { PROTO_RESULT, "{\"ok\":\"true\"}", ERR_IO },
        { PROTO_RESULT, "{\"ok\":null}", ERR_IO },
        /* A well-formed result in a frame of another type is not a result. */
        { PROTO_STDOUT, "{\"ok\":true}", ERR_IO },
        { PROTO_REQ, "{\"ok\":true}", ERR_IO },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct proto_frame f = frame_of(cases[i].type, cases[i].json);
        struct err *e = NULL;
        json_t *j = NULL;

        if (sandbox__proto_result(&f, &j, &e) != -1)
            fail_msg("type %u '%s' accepted", cases[i].type, cases[i].json);
        assert_null(j);
        assert_non_null(e);
        if (e->code != cases[i].code)
            fail_msg("type %u '%s': code %s, want %s", cases[i].type, cases[i].json,
                     err_code_name(e->code), err_code_name(cases[i].code));
        err_free(e);
        sandbox__proto_frame_free(&f);
    }
}

static void
test_send_error_roundtrip(void **state)
{
    struct pair *p = *state;
    static const enum err_code codes[] = { ERR_INVALID,  ERR_NOT_FOUND, ERR_CONFLICT,
                                           ERR_PERM,     ERR_LIMIT,     ERR_IO,
                                           ERR_UPSTREAM, ERR_TIMEOUT,   ERR_INTERNAL };

    for (size_t i = 0; i < ARRAY_LEN(codes); i++) {
        struct err *sent = NULL, *e = NULL;
        struct proto_frame f = { 0 };

        err_set(&sent, codes[i], 0, "failure %zu in /workspace/x", i);
        assert_int_equal(sandbox__proto_send_error(p->b, sent), 0);
        ASSERT_NO_ERR(sandbox__proto_recv(p->a, &f, &e), &e);
        assert_int_equal(f.type, PROTO_RESULT);
        assert_int_equal(sandbox__proto_result(&f, NULL, &e), -1);
        assert_non_null(e);
        assert_int_equal(e->code, codes[i]);
        assert_string_equal(e->msg, sent->msg);
        err_free(e);
        err_free(sent);
        sandbox__proto_frame_free(&f);
    }
}

/* ------------------------------------------------------------ send queue */

static void
recv_expect(int fd, uint32_t type, const void *data, size_t len)
{
    struct proto_frame f = { 0 };
    struct err *e = NULL;

    ASSERT_NO_ERR(sandbox__proto_recv(fd, &f, &e), &e);
    assert_int_equal(f.type, type);
    assert_int_equal(f.len, len);
    assert_memory_equal(f.data, data, len);
    sandbox__proto_frame_free(&f);
}

static void
test_sendq_basic(void **state)
{
    struct pair *p = *state;
    struct proto_sendq q;
    struct err *e = NULL;

    sandbox__sendq_init(&q);
    assert_false(sandbox__sendq_pending(&q));
    /* Flushing an empty queue is a no-op. */
    ASSERT_NO_ERR(sandbox__sendq_flush(&q, p->a, &e), &e);

    ASSERT_NO_ERR(sandbox__sendq_push(&q, PROTO_STDOUT, "hello", 5, &e), &e);
    assert_true(sandbox__sendq_pending(&q));
    ASSERT_NO_ERR(sandbox__sendq_push(&q, PROTO_STDERR, "oops", 4, &e), &e);
    ASSERT_NO_ERR(sandbox__sendq_push(&q, PROTO_STDIN_EOF, NULL, 0, &e), &e);
    ASSERT_NO_ERR(sandbox__sendq_flush(&q, p->a, &e), &e);
    assert_false(sandbox__sendq_pending(&q));

    recv_expect(p->b, PROTO_STDOUT, "hello", 5);
    recv_expect(p->b, PROTO_STDERR, "oops", 4);
    recv_expect(p->b, PROTO_STDIN_EOF, "", 0);

    /* The queue is reusable after a full flush. */
    ASSERT_NO_ERR(sandbox__sendq_push(&q, PROTO_DATA, "again", 5, &e), &e);
    ASSERT_NO_ERR(sandbox__sendq_flush(&q, p->a, &e), &e);
    assert_false(sandbox__sendq_pending(&q));
    recv_expect(p->b, PROTO_DATA, "again", 5);
    sandbox__sendq_free(&q);
    assert_false(sandbox__sendq_pending(&q));
}

static void
test_sendq_partial_flush(void **state)
{
    struct pair *p = *state;
    struct proto_sendq q;
    struct err *e = NULL;
    size_t len = PROTO_MAX_FRAME;
    unsigned char *payload = xmalloc(len);
    struct buf got;
    int sndbuf = 4096;
    int rounds = 0;

    for (size_t i = 0; i < len; i++)
        payload[i] = (unsigned char)(i * 7 + (i >> 12));
    assert_int_equal(setsockopt(p->a, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)), 0);
    sandbox__sendq_init(&q);
    ASSERT_NO_ERR(sandbox__sendq_push(&q, PROTO_DATA, payload, len, &e), &e);
    ASSERT_NO_ERR(sandbox__sendq_push(&q, PROTO_DATA_EOF, NULL, 0, &e), &e);

    /* The first flush cannot send 1 MiB into a 4 KiB buffer: it returns without blocking. */
    ASSERT_NO_ERR(sandbox__sendq_flush(&q, p->a, &e), &e);
    assert_true(sandbox__sendq_pending(&q));

    /* Alternate draining the peer and flushing until everything went through. */
    buf_init(&got, 2 * PROTO_MAX_FRAME);
    while (sandbox__sendq_pending(&q) || rounds == 0) {
        char chunk[65536];
        ssize_t r;

        while ((r = recv(p->b, chunk, sizeof(chunk), MSG_DONTWAIT)) > 0)
            ASSERT_NO_ERR(buf_append(&got, chunk, (size_t)r, &e), &e);
        ASSERT_NO_ERR(sandbox__sendq_flush(&q, p->a, &e), &e);
        assert_true(++rounds < 1000000);
    }
    for (;;) {
        char chunk[65536];
        ssize_t r = recv(p->b, chunk, sizeof(chunk), MSG_DONTWAIT);
        if (r <= 0)
            break;
        ASSERT_NO_ERR(buf_append(&got, chunk, (size_t)r, &e), &e);
    }
    assert_true(rounds > 1);

    /* The byte stream is exactly the two frames. */
    assert_int_equal(got.len, 8 + len + 8);
    {
        uint32_t hdr[2];
        memcpy(hdr, got.data, 8);
        assert_int_equal(hdr[0], PROTO_DATA);
        assert_int_equal(hdr[1], len);
        assert_memory_equal(got.data + 8, payload, len);
        memcpy(hdr, got.data + 8 + len, 8);
        assert_int_equal(hdr[0], PROTO_DATA_EOF);
        assert_int_equal(hdr[1], 0);
    }
    buf_free(&got);
    sandbox__sendq_free(&q);
    free(payload);
}

static void
test_sendq_limit(void **state)
{
    struct proto_sendq q;
    struct err *e = NULL;
    char *payload = xcalloc(1, PROTO_MAX_FRAME);
    int pushed = 0;
    (void)state;

    /* With nobody flushing, the queue takes a few full frames and then refuses. */
    sandbox__sendq_init(&q);
    while (pushed < 64 && sandbox__sendq_push(&q, PROTO_STDOUT, payload, PROTO_MAX_FRAME, &e) == 0)
        pushed++;
    assert_true(pushed >= 2);
    assert_true(pushed <= 8);
    assert_false(sandbox__sendq_pending(&q));
    ASSERT_ERR(&e, ERR_LIMIT);
    sandbox__sendq_free(&q);
    free(payload);
}

static void
test_sendq_closed_peer(void **state)
{
    struct pair *p = *state;
    struct proto_sendq q;
    struct err *e = NULL;

    sandbox__sendq_init(&q);
    ASSERT_NO_ERR(sandbox__sendq_push(&q, PROTO_STDOUT, "x", 1, &e), &e);
    close_and_reset(&p->b);
    /* EPIPE is an error, not a SIGPIPE. */
    assert_int_equal(sandbox__sendq_flush(&q, p->a, &e), -1);
    assert_non_null(e);
    assert_int_equal(e->errnum, EPIPE);
    ASSERT_ERR(&e, ERR_IO);
    sandbox__sendq_free(&q);
}

int
test_proto_run(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, pair_setup, pair_teardown)
    static const struct CMUnitTest tests[] = {
        T(test_roundtrip),
        T(test_roundtrip_sequence),
        T(test_send_json),
        T(test_recv_unknown_type),
        T(test_recv_oversize),
        T(test_recv_truncated_payload),
        T(test_recv_truncated_at_cap),
        T(test_recv_short_header),
        T(test_recv_clean_eof),
        T(test_send_to_closed_peer),
        T(test_recv_timeout),
        T(test_recv_slow_payload_is_not_a_timeout),
        T(test_recv_stall_midway_times_out_once),
        T(test_send_timeout),
        T(test_recv_skips_alive),
        T(test_alive),
        T(test_deadline_not_extended),
        T(test_deadline_bounds_send),
        cmocka_unit_test(test_parse_json),
        cmocka_unit_test(test_parse_json_len_bounded),
        cmocka_unit_test(test_result_ok),
        cmocka_unit_test(test_result_error),
        cmocka_unit_test(test_result_long_message_cut),
        cmocka_unit_test(test_result_bad),
        T(test_send_error_roundtrip),
        T(test_sendq_basic),
        T(test_sendq_partial_flush),
        cmocka_unit_test(test_sendq_limit),
        T(test_sendq_closed_peer),
    };
#undef T

    return cmocka_run_group_tests_name("sandbox/proto", tests, NULL, NULL);
}
