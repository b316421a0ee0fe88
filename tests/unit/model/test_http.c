/*
 * Tests for model_generate's transport and retry loop (src/model/model.c, http.c) against a
 * small HTTP server on 127.0.0.1:0 that runs in a thread of the test and answers from a
 * script: retries on 429 and 5xx with Retry-After or Gemini's RetryInfo, the attempt count, bodies
 * that are not JSON or too large, an upstream that never answers, refusals with their message, the
 * cancel flag during a backoff and during a request, the deadline, and where the key goes (and that
 * it stays out of errors, 2xx error answers included).
 */
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "model_test.h"

#include "suites.h"

#define KEY "sk-test-key-0123456789"

/* One scripted answer; the last step of a script repeats. */
struct step {
    int status;           /* 0: read the request and never answer */
    const char *headers;  /* extra header lines, each ending in \r\n, or NULL */
    const char *body;     /* NULL: "" */
    size_t repeat;        /* when > 0, the body is body repeated this many times */
    bool close_delimited; /* no Content-Length: the end of the body is the close */
};

struct srv {
    int fd;
    int port;
    int stop[2];
    pthread_t th;
    const struct step *steps;
    size_t nsteps;
    atomic_int requests;
    pthread_mutex_t lock;
    char *head; /* request line and headers of the last request */
    char *body; /* its body */
};

/* Reads one request (headers, then Content-Length bytes of body) from c. */
static int
read_request(int c, struct buf *b, size_t *head_len)
{
    char chunk[4096];
    char *end = NULL;
    size_t need = 0;

    for (;;) {
        ssize_t n;
        if (end == NULL && b->data != NULL && (end = strstr(b->data, "\r\n\r\n")) != NULL) {
            const char *cl = strcasestr(b->data, "\r\ncontent-length:");
            *head_len = (size_t)(end - b->data) + 4;
            need = *head_len + (cl != NULL ? strtoul(cl + 17, NULL, 10) : 0);
        }
        if (end != NULL && b->len >= need)
            return 0;
        n = recv(c, chunk, sizeof(chunk), 0);
        if (n <= 0 || buf_append(b, chunk, (size_t)n, NULL) < 0)
            return -1;
    }
}

/* Waits until the test stops the server or the client goes away. */
static void
hang(struct srv *s, int c)
{
    struct pollfd p[2] = { { .fd = s->stop[0], .events = POLLIN }, { .fd = c, .events = POLLIN } };
    char x;

    while (poll(p, 2, -1) > 0) {
        if (p[0].revents != 0)
            return;
        if (p[1].revents != 0 && recv(c, &x, 1, 0) <= 0)
            return;
    }
}

static void
answer(int c, const struct step *st)
{
    struct buf out;
    const char *body = st->body != NULL ? st->body : "";
    size_t blen = strlen(body) * (st->repeat > 0 ? st->repeat : 1);

    buf_init(&out, 64u * 1024 * 1024);
    buf_printf(&out, NULL, "HTTP/1.1 %d X\r\nContent-Type: application/json\r\n%s", st->status,
               st->headers != NULL ? st->headers : "");
    if (!st->close_delimited)
        buf_printf(&out, NULL, "Content-Length: %zu\r\n", blen);
    buf_printf(&out, NULL, "Connection: close\r\n\r\n");
    for (size_t i = 0; i < (st->repeat > 0 ? st->repeat : 1); i++)
        buf_append(&out, body, strlen(body), NULL);
    /* MSG_NOSIGNAL: a client that stops reading (the size cap) must not kill the test. */
    for (size_t off = 0; off < out.len;) {
        ssize_t n = send(c, out.data + off, out.len - off, MSG_NOSIGNAL);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    buf_free(&out);
}

static void *
serve(void *arg)
{
    struct srv *s = arg;
    struct pollfd p[2] = { { .fd = s->stop[0], .events = POLLIN },
                           { .fd = s->fd, .events = POLLIN } };

    while (poll(p, 2, -1) > 0 && p[0].revents == 0) {
        int c = accept4(s->fd, NULL, NULL, SOCK_CLOEXEC);
        struct buf b;
        size_t head_len = 0;
        int n;

        if (c < 0)
            continue;
        buf_init(&b, 16u * 1024 * 1024);
        if (read_request(c, &b, &head_len) == 0) {
            n = atomic_fetch_add(&s->requests, 1);
            pthread_mutex_lock(&s->lock);
            free(s->head);
            free(s->body);
            s->head = xstrndup(b.data, head_len);
            s->body = xstrdup(b.data + head_len);
            pthread_mutex_unlock(&s->lock);
            const struct step *st = &s->steps[(size_t)n < s->nsteps ? (size_t)n : s->nsteps - 1];
            if (st->status == 0)
                hang(s, c);
            else
                answer(c, st);
        }
        buf_free(&b);
        close(c);
    }
    return NULL;
}

static void
srv_start(struct srv *s, const struct step *steps, size_t nsteps)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t alen = sizeof(a);

    memset(s, 0, sizeof(*s));
    s->steps = steps;
    s->nsteps = nsteps;
    pthread_mutex_init(&s->lock, NULL);
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(s->fd >= 0);
    assert_int_equal(bind(s->fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(s->fd, 16), 0);
    assert_int_equal(getsockname(s->fd, (struct sockaddr *)&a, &alen), 0);
    s->port = ntohs(a.sin_port);
    assert_int_equal(pipe2(s->stop, O_CLOEXEC), 0);
    assert_int_equal(pthread_create(&s->th, NULL, serve, s), 0);
}

static void
srv_stop(struct srv *s)
{
    assert_int_equal(write(s->stop[1], "x", 1), 1);
    pthread_join(s->th, NULL);
    close(s->fd);
    close(s->stop[0]);
    close(s->stop[1]);
    free(s->head);
    free(s->body);
    pthread_mutex_destroy(&s->lock);
}

/* A config whose three bases point at port, with keys, no backoff and short timeouts. */
static void
config_for(struct model_config *cfg, int port)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->gemini_key = xstrdup(KEY);
    cfg->openai_key = xstrdup(KEY);
    cfg->anthropic_key = xstrdup(KEY);
    cfg->gemini_base = xasprintf("http://127.0.0.1:%d", port);
    cfg->openai_base = xasprintf("http://127.0.0.1:%d/v1/", port);
    cfg->anthropic_base = xasprintf("http://127.0.0.1:%d", port);
    cfg->timeout_ms = 5000;
    cfg->max_retries = 2;
    cfg->backoff_ms = 1;
    cfg->max_response = 1024 * 1024;
}

/* Runs model_generate for spec; returns its result, the elapsed ms in *ms. */
static int
generate(const struct model_config *cfg, const char *spec, const volatile int *cancel,
         int64_t deadline_ms, struct model_turn *t, int64_t *ms, struct err **errp)
{
    struct model_ref m;
    json_t *conv = jl("[{'role':'user','text':'hi'}]");
    struct model_request req = {
        .model = &m,
        .system_instruction = "sys",
        .messages = conv,
        .cancel = cancel,
        .deadline_ms = deadline_ms,
    };
    int64_t t0 = util_mono_ns();
    int rc;

    ASSERT_NO_ERR(model_parse(spec, &m, errp), errp);
    rc = model_generate(cfg, &req, t, errp);
    *ms = (util_mono_ns() - t0) / 1000000;
    json_decref(conv);
    return rc;
}

/* Checks the error like ASSERT_ERR_CONTAINS, and that the key is nowhere in it. */
static void
expect_err(struct err **e, enum err_code code, const char *substr)
{
    assert_non_null(*e);
    if (strstr((*e)->msg, KEY) != NULL)
        fail_msg("the key leaked into the error: %s", (*e)->msg);
    ASSERT_ERR_CONTAINS(e, code, substr);
}

static const char gemini_ok[] =
    "{\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"ok\"}]},"
    "\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":3}}";
static const char openai_ok[] =
    "{\"choices\":[{\"message\":{\"role\":\"assistant\",\"content\":\"ok\"},"
    "\"finish_reason\":\"stop\"}]}";
static const char anthropic_ok[] =
    "{\"content\":[{\"type\":\"text\",\"text\":\"ok\"}],\"stop_reason\":\"end_turn\"}";

/* Each format goes to its path with its key header, and its answer is decoded. */
static void
test_formats_and_keys(void **state)
{
    static const struct {
        const char *spec, *ok, *line, *auth, *extra;
    } cases[] = {
        { "gemini-2.5-pro", gemini_ok,
          "POST /v1beta/models/gemini-2.5-pro:generateContent HTTP/1.1\r\n",
          "x-goog-api-key: " KEY "\r\n", NULL },
        { "openai:local", openai_ok, "POST /v1/chat/completions HTTP/1.1\r\n",
          "Authorization: Bearer " KEY "\r\n", NULL },
        { "anthropic:claude-x", anthropic_ok, "POST /v1/messages HTTP/1.1\r\n",
          "x-api-key: " KEY "\r\n", "anthropic-version: 2023-06-01\r\n" },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct step st[] = { { .status = 200, .body = cases[i].ok } };
        struct model_config cfg;
        struct model_turn t;
        struct err *e = NULL;
        struct srv s;
        int64_t ms;
        json_t *body;

        srv_start(&s, st, 1);
        config_for(&cfg, s.port);
        ASSERT_NO_ERR(generate(&cfg, cases[i].spec, NULL, 0, &t, &ms, &e), &e);
        assert_string_equal(t.text, "ok");
        assert_int_equal(atomic_load(&s.requests), 1);
        assert_true(strncmp(s.head, cases[i].line, strlen(cases[i].line)) == 0);
        assert_non_null(strstr(s.head, cases[i].auth));
        if (cases[i].extra != NULL)
            assert_non_null(strstr(s.head, cases[i].extra));
        assert_non_null(strstr(s.head, "Content-Type: application/json\r\n"));
        body = json_loads(s.body, 0, NULL);
        assert_non_null(body);
        assert_non_null(strstr(s.body, "\"hi\""));
        json_decref(body);
        model_turn_clear(&t);
        model_config_clear(&cfg);
        srv_stop(&s);
    }
}

/* A local OpenAI-compatible server needs no key, and gets no Authorization header. */
static void
test_no_key(void **state)
{
    struct step st[] = { { .status = 200, .body = openai_ok } };
    struct model_config cfg;
    struct model_turn t;
    struct err *e = NULL;
    struct srv s;
    int64_t ms;
    (void)state;

    srv_start(&s, st, 1);
    config_for(&cfg, s.port);
    free(cfg.openai_key);
    cfg.openai_key = NULL;
    ASSERT_NO_ERR(generate(&cfg, "openai:local", NULL, 0, &t, &ms, &e), &e);
    assert_null(strcasestr(s.head, "authorization"));
    model_turn_clear(&t);
    /* A hosted endpoint without a key is refused before anything is sent. */
    free(cfg.anthropic_base);
    cfg.anthropic_base = NULL;
    free(cfg.anthropic_key);
    cfg.anthropic_key = NULL;
    assert_int_equal(generate(&cfg, "anthropic:claude-x", NULL, 0, &t, &ms, &e), -1);
    expect_err(&e, ERR_PERM, "ANTHROPIC_API_KEY is not set");
    assert_int_equal(atomic_load(&s.requests), 1);
    model_config_clear(&cfg);
    srv_stop(&s);
}

/* 429 with Retry-After: 0, then 200: one retry, one success. */
static void
test_retry_429(void **state)
{
    struct step st[] = {
        { .status = 429,
          .headers = "Retry-After: 0\r\n",
          .body = "{\"error\":{\"message\":\"slow\"}}" },
        { .status = 200, .body = gemini_ok },
    };
    struct model_config cfg;
    struct model_turn t;
    struct err *e = NULL;
    struct srv s;
    int64_t ms;
    (void)state;

    srv_start(&s, st, ARRAY_LEN(st));
    config_for(&cfg, s.port);
    cfg.backoff_ms = 10000; /* Retry-After wins over the backoff */
    ASSERT_NO_ERR(generate(&cfg, "gemini-x", NULL, 0, &t, &ms, &e), &e);
    assert_int_equal(atomic_load(&s.requests), 2);
    assert_true(ms < 2000);
    assert_string_equal(t.text, "ok");
    model_turn_clear(&t);
    model_config_clear(&cfg);
    srv_stop(&s);
}

/* 500 forever: ERR_UPSTREAM after 1 + max_retries attempts, with the upstream's message. */
static void
test_500_forever(void **state)
{
    struct step st[] = { { .status = 500, .body = "{\"error\":{\"message\":\"kaput\"}}" } };
    struct model_config cfg;
    struct model_turn t;
    struct err *e = NULL;
    struct srv s;
    int64_t ms;
    (void)state;

    srv_start(&s, st, 1);
    config_for(&cfg, s.port);
    cfg.max_retries = 3;
    assert_int_equal(generate(&cfg, "openai:x", NULL, 0, &t, &ms, &e), -1);
    assert_int_equal(atomic_load(&s.requests), 4);
    assert_non_null(strstr(e->msg, "HTTP 500"));
    expect_err(&e, ERR_UPSTREAM, "kaput (4 attempts)");
    assert_null(t.message);
    model_config_clear(&cfg);
    srv_stop(&s);
}

/* Answers that are final at once: a refusal carries the upstream's message (escaped, and
 * with the key cut out when the upstream echoes it), a body that is not JSON names the model,
 * a body over the cap is ERR_LIMIT whether or not its length was announced. */
static void
test_final_answers(void **state)
{
    static const struct step steps[][1] = {
        { { .status = 400,
            .body = "{\"error\":{\"code\":400,\"message\":\"bad \\\"temperature\\\"\\n for "
                    "key " KEY "\",\"status\":\"INVALID_ARGUMENT\"}}" } },
        { { .status = 401, .body = "{\"error\":\"no such key\"}" } },
        { { .status = 200, .body = "<html>gateway</html>" } },
        { { .status = 200, .body = "0123456789", .repeat = 500 } },
        { { .status = 200, .body = "0123456789", .repeat = 500, .close_delimited = true } },
    };
    static const struct {
        enum err_code code;
        const char *want;
    } expect[] = {
        { ERR_INVALID, "refused the request (HTTP 400): bad \\\"temperature\\\"\\n for key "
                       "[redacted]" },
        { ERR_INVALID, "(HTTP 401): no such key" },
        { ERR_UPSTREAM, "Gemini model gemini-x returned a body that is not JSON: "
                        "\"<html>gateway</html>\"" },
        { ERR_LIMIT, "larger than 1000 bytes" },
        { ERR_LIMIT, "larger than 1000 bytes" },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(steps); i++) {
        struct model_config cfg;
        struct model_turn t;
        struct err *e = NULL;
        struct srv s;
        int64_t ms;

        srv_start(&s, steps[i], 1);
        config_for(&cfg, s.port);
        cfg.max_response = 1000;
        assert_int_equal(generate(&cfg, "gemini-x", NULL, 0, &t, &ms, &e), -1);
        expect_err(&e, expect[i].code, expect[i].want);
        assert_int_equal(atomic_load(&s.requests), 1);
        model_config_clear(&cfg);
        srv_stop(&s);
    }
}

/* A 2xx answer that is an error (some proxies answer errors with 200) names what was missing
 * and the upstream's message, with the key redacted from it; a key across the cut of a long
 * message or of a body that is not JSON leaves nothing of itself. */
static void
test_key_in_answers(void **state)
{
    /* Puts the key across the cut at MODEL_UPSTREAM_MSG_MAX bytes. */
    char *long_msg =
        xasprintf("{\"error\":{\"message\":\"%0*d " KEY "\"}}", MODEL_UPSTREAM_MSG_MAX - 6, 0);
    char *long_body = xasprintf("%0*d " KEY, 100 - 6, 0);
    const struct {
        const char *spec;
        int status;
        const char *body;
        enum err_code code;
        const char *want;
    } cases[] = {
        { "openai:x", 200, "{\"error\":{\"message\":\"invalid key " KEY "\"}}", ERR_UPSTREAM,
          "no choices[0].message: invalid key [redacted]" },
        { "anthropic:x", 200,
          "{\"type\":\"error\",\"error\":{\"message\":\"bad x-api-key " KEY "\"}}", ERR_UPSTREAM,
          "no content: bad x-api-key [redacted]" },
        { "gemini-x", 200,
          "{\"promptFeedback\":{\"blockReason\":\"OTHER\",\"blockReasonMessage\":\"" KEY "\"}}",
          ERR_INVALID, "the prompt was blocked: blockReason OTHER: [redacted]" },
        { "gemini-x", 200, "[{\"error\":{\"message\":\"key " KEY " expired\"}}]", ERR_UPSTREAM,
          "not a JSON object: key [redacted] expired" },
        { "openai:x", 400, long_msg, ERR_INVALID, "(HTTP 400): 000" },
        { "openai:x", 200, long_msg, ERR_UPSTREAM, "no choices[0].message: 000" },
        { "anthropic:x", 200, long_body, ERR_UPSTREAM, "is not JSON: \"000" },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct step st[] = { { .status = cases[i].status, .body = cases[i].body } };
        struct model_config cfg;
        struct model_turn t;
        struct err *e = NULL;
        struct srv s;
        int64_t ms;

        srv_start(&s, st, 1);
        config_for(&cfg, s.port);
        assert_int_equal(generate(&cfg, cases[i].spec, NULL, 0, &t, &ms, &e), -1);
        assert_non_null(e);
        /* Not even the key's start: "sk-" is where it begins. */
        if (strstr(e->msg, "sk-") != NULL)
            fail_msg("a piece of the key is in the error: %s", e->msg);
        expect_err(&e, cases[i].code, cases[i].want);
        assert_null(t.message);
        model_config_clear(&cfg);
        srv_stop(&s);
    }
    free(long_msg);
    free(long_body);
}

/* A redirect is not followed: the key goes to the configured host and nowhere else. */
static void
test_no_redirect(void **state)
{
    struct step other_st[] = { { .status = 200, .body = gemini_ok } };
    struct model_config cfg;
    struct model_turn t;
    struct err *e = NULL;
    struct srv s, other;
    int64_t ms;
    (void)state;

    srv_start(&other, other_st, 1);
    {
        char *loc = xasprintf("Location: http://127.0.0.1:%d/v1beta/models/gemini-x:"
                              "generateContent\r\n",
                              other.port);
        struct step st[] = { { .status = 307, .headers = loc } };
        srv_start(&s, st, 1);
        config_for(&cfg, s.port);
        assert_int_equal(generate(&cfg, "gemini-x", NULL, 0, &t, &ms, &e), -1);
        expect_err(&e, ERR_UPSTREAM, "answered HTTP 307");
        assert_int_equal(atomic_load(&s.requests), 1);
        assert_non_null(strstr(s.head, "x-goog-api-key: " KEY));
        srv_stop(&s);
        free(loc);
    }
    assert_int_equal(atomic_load(&other.requests), 0);
    model_config_clear(&cfg);
    srv_stop(&other);
}

/* The settings come from the environment; the numeric knobs fall back to the defaults when
 * unset or not numbers; clearing frees (and wipes) the strings. */
static void
test_config_from_env(void **state)
{
    struct model_config cfg;
    (void)state;

    setenv("GEMINI_API_KEY", "gk", 1);
    setenv("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1", 1);
    setenv("OPENAI_API_KEY", "", 1);
    unsetenv("ANTHROPIC_API_KEY");
    setenv("PADDOCK_MODEL_MAX_RETRIES", "0", 1);
    setenv("PADDOCK_MODEL_TIMEOUT_MS", "soon", 1);
    model_config_from_env(&cfg);
    assert_string_equal(cfg.gemini_key, "gk");
    assert_string_equal(cfg.openai_base, "http://127.0.0.1:8080/v1");
    assert_null(cfg.openai_key);
    assert_null(cfg.anthropic_key);
    assert_int_equal(cfg.max_retries, 0);
    assert_int_equal(cfg.timeout_ms, MODEL_DEFAULT_TIMEOUT_MS);
    assert_int_equal(cfg.backoff_ms, MODEL_DEFAULT_BACKOFF_MS);
    assert_int_equal(cfg.max_response, MODEL_DEFAULT_MAX_RESPONSE);
    model_config_clear(&cfg);
    assert_null(cfg.gemini_key);
    assert_null(cfg.openai_base);
    model_config_clear(&cfg);
    unsetenv("GEMINI_API_KEY");
    unsetenv("OPENAI_BASE_URL");
    unsetenv("OPENAI_API_KEY");
    unsetenv("PADDOCK_MODEL_MAX_RETRIES");
    unsetenv("PADDOCK_MODEL_TIMEOUT_MS");
}

/* Base URLs and keys that cannot be sent are refused before anything is sent. */
static void
test_bad_settings(void **state)
{
    static const struct {
        const char *base, *key, *want;
    } cases[] = {
        { "ftp://127.0.0.1/", KEY, "OPENAI_BASE_URL must start with http:// or https://" },
        { "http://127.0.0.1:1/v1 x", KEY, "OPENAI_BASE_URL has a space" },
        { "http://127.0.0.1:1/v1", KEY "\r\nX-Evil: 1", "OPENAI_API_KEY has a control" },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct model_config cfg = { .openai_base = xstrdup(cases[i].base),
                                    .openai_key = xstrdup(cases[i].key) };
        struct model_turn t;
        struct err *e = NULL;
        int64_t ms;
        assert_int_equal(generate(&cfg, "openai:x", NULL, 0, &t, &ms, &e), -1);
        expect_err(&e, ERR_INVALID, cases[i].want);
        model_config_clear(&cfg);
    }
}

/* Nothing listens: transport errors are retried, then ERR_UPSTREAM naming the URL. */
static void
test_unreachable(void **state)
{
    struct model_config cfg;
    struct model_turn t;
    struct err *e = NULL;
    int64_t ms;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t alen = sizeof(a);
    (void)state;

    /* A port that was just free and is not listened on. */
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
    config_for(&cfg, ntohs(a.sin_port));
    assert_int_equal(generate(&cfg, "anthropic:x", NULL, 0, &t, &ms, &e), -1);
    close(fd);
    assert_non_null(strstr(e->msg, "request to http://127.0.0.1:"));
    expect_err(&e, ERR_UPSTREAM, "(3 attempts)");
    model_config_clear(&cfg);
}

/* A server that never answers: ERR_TIMEOUT after timeout_ms, not retried; the deadline cuts
 * the wait shorter. */
static void
test_timeout_and_deadline(void **state)
{
    struct step st[] = { { .status = 0 } };
    struct model_config cfg;
    struct model_turn t;
    struct err *e = NULL;
    struct srv s;
    int64_t ms;
    (void)state;

    srv_start(&s, st, 1);
    config_for(&cfg, s.port);
    cfg.timeout_ms = 300;
    assert_int_equal(generate(&cfg, "gemini-x", NULL, 0, &t, &ms, &e), -1);
    expect_err(&e, ERR_TIMEOUT, "within 300 ms");
    assert_true(ms >= 250 && ms < 2000);
    assert_int_equal(atomic_load(&s.requests), 1);

    cfg.timeout_ms = 20000;
    assert_int_equal(generate(&cfg, "gemini-x", NULL, util_now_ms() + 300, &t, &ms, &e), -1);
    expect_err(&e, ERR_TIMEOUT, "deadline");
    assert_true(ms < 2000);
    /* A deadline already past starts nothing. */
    assert_int_equal(generate(&cfg, "gemini-x", NULL, util_now_ms() - 1, &t, &ms, &e), -1);
    expect_err(&e, ERR_TIMEOUT, "deadline passed");
    assert_int_equal(atomic_load(&s.requests), 2);
    model_config_clear(&cfg);
    srv_stop(&s);
}

/* A Retry-After that would outlast the deadline ends the call at once. */
static void
test_retry_after_past_deadline(void **state)
{
    struct step st[] = { { .status = 503, .headers = "Retry-After: 30\r\n", .body = "busy" } };
    struct model_config cfg;
    struct model_turn t;
    struct err *e = NULL;
    struct srv s;
    int64_t ms;
    (void)state;

    srv_start(&s, st, 1);
    config_for(&cfg, s.port);
    assert_int_equal(generate(&cfg, "openai:x", NULL, util_now_ms() + 3000, &t, &ms, &e), -1);
    expect_err(&e, ERR_UPSTREAM, "no time left for a retry before the deadline");
    assert_true(ms < 1500);
    assert_int_equal(atomic_load(&s.requests), 1);
    model_config_clear(&cfg);
    srv_stop(&s);
}

/* A Gemini 429 or 503 body's RetryInfo: an error body with the delay in ms (%s: retryDelay). */
#define RETRY_INFO_BODY                                                                          \
    "{\"error\":{\"code\":429,\"message\":\"Quota exceeded\",\"status\":\"RESOURCE_EXHAUSTED\"," \
    "\"details\":[{\"@type\":\"type.googleapis.com/google.rpc.QuotaFailure\"},"                  \
    "{\"@type\":\"type.googleapis.com/google.rpc.RetryInfo\",\"retryDelay\":\"%s\"}]}}"

/* The body's RetryInfo is waited for when no header gives a delay; one past the deadline
 * ends the call at once, naming the delay; a header's delay wins over the body's. */
static void
test_retry_info(void **state)
{
    char *short_delay = xasprintf(RETRY_INFO_BODY, "0.3s");
    char *long_delay = xasprintf(RETRY_INFO_BODY, "37s");
    const struct {
        struct step st[2];
        int64_t deadline_in; /* ms from now; 0: none */
        int requests;
        int64_t min_ms, max_ms;
        const char *err; /* NULL: a turn */
    } cases[] = {
        { .st = { { .status = 429, .body = short_delay }, { .status = 200, .body = gemini_ok } },
          .requests = 2,
          .min_ms = 280,
          .max_ms = 2000 },
        { .st = { { .status = 503, .body = long_delay } },
          .deadline_in = 3000,
          .requests = 1,
          .max_ms = 1500,
          .err = "(1 attempt; no time left for a retry before the deadline: the upstream asks to "
                 "wait 37 s)" },
        { .st = { { .status = 429, .headers = "Retry-After: 0\r\n", .body = long_delay },
                  { .status = 200, .body = gemini_ok } },
          .deadline_in = 3000,
          .requests = 2,
          .max_ms = 1500 },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct model_config cfg;
        struct model_turn t;
        struct err *e = NULL;
        struct srv s;
        int64_t ms, deadline = cases[i].deadline_in > 0 ? util_now_ms() + cases[i].deadline_in : 0;
        int rc;

        srv_start(&s, cases[i].st, cases[i].st[1].status != 0 ? 2 : 1);
        config_for(&cfg, s.port);
        cfg.backoff_ms = 1; /* the body's delay, not the backoff */
        rc = generate(&cfg, "gemini-x", NULL, deadline, &t, &ms, &e);
        if (cases[i].err == NULL) {
            ASSERT_NO_ERR(rc, &e);
            assert_string_equal(t.text, "ok");
            model_turn_clear(&t);
        } else {
            assert_int_equal(rc, -1);
            expect_err(&e, ERR_UPSTREAM, cases[i].err);
        }
        assert_int_equal(atomic_load(&s.requests), cases[i].requests);
        if (ms < cases[i].min_ms || ms > cases[i].max_ms)
            fail_msg("case %zu took %lld ms, not %lld to %lld", i, (long long)ms,
                     (long long)cases[i].min_ms, (long long)cases[i].max_ms);
        model_config_clear(&cfg);
        srv_stop(&s);
    }
    free(short_delay);
    free(long_delay);
}

static void
test_retry_info_parse(void **state)
{
    static const struct {
        const char *v;
        int64_t want;
    } durations[] = {
        { "37s", 37000 },
        { "1.5s", 1500 },
        { "0.300s", 300 },
        { "0s", 0 },
        { "0.0001s", 1 },
        { "2.000000001s", 2001 },
        { "99999999999999999999999s", 1000000000000 },
        { "37", -1 },
        { "s", -1 },
        { "-1s", -1 },
        { " 3s", -1 },
        { "1.s", -1 },
        { "1.5sx", -1 },
        { "1.1234567891s", -1 },
        { "3m", -1 },
    };
    static const struct {
        const char *body;
        int64_t want;
    } bodies[] = {
        { "{'error':{'code':429,'details':[{'@type':'type.googleapis.com/google.rpc.QuotaFailure'},"
          "{'@type':'type.googleapis.com/google.rpc.RetryInfo','retryDelay':'37s'}]}}",
          37000 },
        { "[{'error':{'details':[{'@type':'type.googleapis.com/google.rpc.RetryInfo',"
          "'retryDelay':'1.5s'}]}}]",
          1500 },
        { "{'error':{'details':[{'@type':'type.googleapis.com/google.rpc.RetryInfo'}]}}", -1 },
        { "{'error':{'details':[{'@type':'type.googleapis.com/google.rpc.RetryInfo',"
          "'retryDelay':37}]}}",
          -1 },
        { "{'error':{'details':[{'@type':'type.googleapis.com/google.rpc.ErrorInfo',"
          "'retryDelay':'37s'}]}}",
          -1 },
        { "{'error':{'message':'slow'}}", -1 },
        { "{'details':[{'@type':'type.googleapis.com/google.rpc.RetryInfo','retryDelay':'9s'}]}",
          -1 },
        { "busy", -1 },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(durations); i++)
        assert_int_equal(model__parse_duration_ms(durations[i].v), durations[i].want);
    assert_int_equal(model__parse_duration_ms(NULL), -1);
    for (size_t i = 0; i < ARRAY_LEN(bodies); i++) {
        char *b = xstrdup(bodies[i].body);
        for (char *p = b; *p != '\0'; p++)
            if (*p == '\'')
                *p = '"';
        assert_int_equal(model__retry_info_ms(b, strlen(b)), bodies[i].want);
        free(b);
    }
}

struct canceller {
    volatile int *flag;
    int delay_ms;
};

static void *
cancel_later(void *arg)
{
    struct canceller *c = arg;

    usleep((useconds_t)c->delay_ms * 1000);
    *c->flag = 1;
    return NULL;
}

/* The cancel flag set by another thread ends the call promptly, during a backoff sleep and
 * during a request the upstream does not answer. */
static void
test_cancel(void **state)
{
    static const struct step during_backoff[] = { { .status = 500, .body = "x" } };
    static const struct step during_request[] = { { .status = 0 } };
    const struct step *scripts[] = { during_backoff, during_request };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(scripts); i++) {
        volatile int flag = 0;
        struct canceller c = { .flag = &flag, .delay_ms = 200 };
        struct model_config cfg;
        struct model_turn t;
        struct err *e = NULL;
        pthread_t th;
        struct srv s;
        int64_t ms;

        srv_start(&s, scripts[i], 1);
        config_for(&cfg, s.port);
        cfg.backoff_ms = 20000;
        cfg.timeout_ms = 20000;
        assert_int_equal(pthread_create(&th, NULL, cancel_later, &c), 0);
        assert_int_equal(generate(&cfg, "anthropic:x", &flag, 0, &t, &ms, &e), -1);
        pthread_join(th, NULL);
        expect_err(&e, ERR_CONFLICT, "cancelled");
        assert_true(ms >= 150 && ms < 1000);
        assert_int_equal(atomic_load(&s.requests), 1);
        model_config_clear(&cfg);
        srv_stop(&s);
    }
}

static void
test_retry_after_parse(void **state)
{
    static const struct {
        const char *v;
        bool ms;
        int64_t want;
    } cases[] = {
        { " 0\r\n", false, 0 },
        { " 2\r\n", false, 2000 },
        { "7", true, 7 },
        { " 1.5\r\n", true, 1 },
        { " 1.5\r\n", false, -1 },
        { " soon\r\n", false, -1 },
        { " Wed, 21 Oct 2015 07:28:00 GMT\r\n", false, -1 },
        { " \r\n", false, -1 },
        { " 99999999999999\r\n", false, -1 },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++)
        assert_int_equal(model__parse_retry_after(cases[i].v, strlen(cases[i].v), cases[i].ms),
                         cases[i].want);
    for (unsigned a = 1; a < 6; a++) {
        int64_t d = model__backoff_ms(100, a), base = 100ll << (a - 1);
        assert_true(d >= base - base / 4 && d <= base + base / 4);
    }
    assert_int_equal(model__backoff_ms(0, 3), 0);
    assert_true(model__backoff_ms(1000, 30) <= 75000);
}

int
test_http_run(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_formats_and_keys),
        cmocka_unit_test(test_no_key),
        cmocka_unit_test(test_retry_429),
        cmocka_unit_test(test_500_forever),
        cmocka_unit_test(test_final_answers),
        cmocka_unit_test(test_key_in_answers),
        cmocka_unit_test(test_no_redirect),
        cmocka_unit_test(test_config_from_env),
        cmocka_unit_test(test_bad_settings),
        cmocka_unit_test(test_unreachable),
        cmocka_unit_test(test_timeout_and_deadline),
        cmocka_unit_test(test_retry_after_past_deadline),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_retry_after_parse),
        cmocka_unit_test(test_retry_info),
        cmocka_unit_test(test_retry_info_parse),
    };
    return cmocka_run_group_tests_name("http", tests, NULL, NULL);
}
