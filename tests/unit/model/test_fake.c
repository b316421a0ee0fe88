/*
 * model_generate against tests/fakes/fake_model.py: a two-turn conversation (a thought and a
 * tool call, then the tool's result and a final text) in each of the three formats. It checks
 * that the client and the fake the agent's integration tests use agree on every format, and
 * that what goes back upstream in the second turn is the first turn's native message with
 * its signature. Skipped when /usr/bin/python3 is missing.
 */
#include <signal.h>
#include <sys/prctl.h>

#include <curl/curl.h>

#include "model_test.h"

#include "suites.h"

#define PYTHON "/usr/bin/python3"

struct fake {
    pid_t pid;
    int port;
};

/* The two steps of one conversation: a thought and a call, then a text. */
#define TWO_STEPS                                                          \
    "{'thought':'plan','calls':[{'name':'bash','args':{'command':'ls'}}]," \
    " 'usage':{'input':11,'output':7,'thought':3}}, {'text':'all done'}"

/* Starts the fake with script (a template) and reads its port from the first line. */
static void
fake_start(struct fake *f, const char *dir, const char *script)
{
    char *path = xasprintf("%s/script.json", dir);
    char *fake = xasprintf("%s/tests/fakes/fake_model.py", PADDOCK_SOURCE_DIR);
    json_t *s = jl(script);
    int p[2];
    char line[256];
    size_t n = 0;

    assert_int_equal(json_dump_file(s, path, 0), 0);
    json_decref(s);
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    f->pid = fork();
    assert_true(f->pid >= 0);
    if (f->pid == 0) {
        /* A failed assertion skips fake_stop(): the fake must not outlive the test. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        dup2(p[1], STDOUT_FILENO);
        execl(PYTHON, PYTHON, fake, "--port", "0", "--script", path, (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    while (n < sizeof(line) - 1 && read(p[0], &line[n], 1) == 1 && line[n] != '\n')
        n++;
    line[n] = '\0';
    close(p[0]);
    if (strncmp(line, "listening on http://127.0.0.1:", 30) != 0)
        fail_msg("the fake said: %s", line);
    f->port = (int)strtol(line + 30, NULL, 10);
    free(path);
    free(fake);
}

static void
fake_stop(struct fake *f)
{
    int status;

    kill(f->pid, SIGTERM);
    waitpid(f->pid, &status, 0);
}

static size_t
collect(char *data, size_t size, size_t n, void *arg)
{
    return buf_append(arg, data, size * n, NULL) < 0 ? 0 : size * n;
}

/* GET /_requests of the fake. Owned. */
static json_t *
fake_requests(const struct fake *f)
{
    char *url = xasprintf("http://127.0.0.1:%d/_requests", f->port);
    CURL *c = curl_easy_init();
    struct buf b;
    json_t *out;

    buf_init(&b, 16 * 1024 * 1024);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    curl_easy_cleanup(c);
    out = json_loadb(b.data, b.len, 0, NULL);
    assert_non_null(out);
    buf_free(&b);
    free(url);
    return out;
}

static void
run_two_turns(const struct model_config *cfg, const char *spec, json_t *conv)
{
    struct model_ref m;
    struct model_turn t;
    struct err *e = NULL;
    struct model_request req = { .model = &m, .system_instruction = "sys", .messages = conv };
    json_t *tools = jl("[{'name':'bash','description':'Run a command','parameters':"
                       "{'type':'object','properties':{'command':{'type':'string'}}}}]");

    req.tools = tools;
    ASSERT_NO_ERR(model_parse(spec, &m, &e), &e);
    ASSERT_NO_ERR(model_generate(cfg, &req, &t, &e), &e);
    assert_int_equal(t.finish, MODEL_FINISH_TOOLS);
    assert_int_equal(t.ncalls, 1);
    assert_string_equal(t.calls[0].name, "bash");
    ASSERT_JSON_EQ(t.calls[0].args, "{'command':'ls'}");
    assert_string_equal(t.thought, "plan");
    /* Chat completions has no signature for reasoning. */
    if (m.format != MODEL_OPENAI)
        assert_non_null(t.thought_signature);
    assert_int_equal(t.usage.input, 11);
    /* Anthropic reports thinking inside output_tokens. */
    assert_int_equal(t.usage.output + t.usage.thought, 10);
    json_array_append(conv, t.message);
    json_array_append_new(conv, json_pack("{s:s, s:s, s:s, s:s}", "role", "tool", "call_id",
                                          t.calls[0].id, "name", "bash", "output", "a.c"));
    model_turn_clear(&t);
    ASSERT_NO_ERR(model_generate(cfg, &req, &t, &e), &e);
    assert_int_equal(t.finish, MODEL_FINISH_STOP);
    assert_string_equal(t.text, "all done");
    assert_int_equal(t.ncalls, 0);
    model_turn_clear(&t);
    json_decref(tools);
}

static void
test_against_fake(void **state)
{
    static const char *const specs[] = { "gemini-2.5-pro", "openai:local", "anthropic:claude-x" };
    char *dir = unit_mkdtemp();
    struct model_config cfg = { 0 };
    json_t *convs[3], *reqs, *second;
    struct fake f;
    (void)state;

    if (access(PYTHON, X_OK) != 0)
        skip();
    /* One queue for the whole server: each format takes its two steps in turn. */
    fake_start(&f, dir, "[" TWO_STEPS "," TWO_STEPS "," TWO_STEPS "]");
    cfg.gemini_base = xasprintf("http://127.0.0.1:%d", f.port);
    cfg.openai_base = xasprintf("http://127.0.0.1:%d/v1", f.port);
    cfg.anthropic_base = xasprintf("http://127.0.0.1:%d", f.port);
    cfg.gemini_key = xstrdup("gk");
    cfg.anthropic_key = xstrdup("ak");
    cfg.timeout_ms = 10000;
    cfg.max_response = 1 << 20;
    for (size_t i = 0; i < ARRAY_LEN(specs); i++) {
        convs[i] = jl("[{'role':'user','text':'list the files'}]");
        run_two_turns(&cfg, specs[i], convs[i]);
    }
    reqs = fake_requests(&f);
    fake_stop(&f);
    assert_int_equal(json_array_size(reqs), 6);

    /* Gemini: the model turn went back verbatim, signature included. */
    second = json_object_get(json_array_get(reqs, 1), "body");
    assert_true(json_equal(
        json_array_get(json_object_get(second, "contents"), 1),
        json_object_get(json_object_get(json_array_get(convs[0], 1), "native"), "message")));
    assert_non_null(json_object_get(
        json_array_get(
            json_object_get(json_array_get(json_object_get(second, "contents"), 1), "parts"), 1),
        "thoughtSignature"));
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_array_get(reqs, 0), "headers"), "x-goog-api-key")),
                        "gk");
    /* OpenAI: no key, so no Authorization; the tool result refers to the call's id. */
    second = json_object_get(json_array_get(reqs, 3), "body");
    assert_null(
        json_object_get(json_object_get(json_array_get(reqs, 3), "headers"), "authorization"));
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(json_object_get(second, "messages"), 3),
                                          "tool_call_id")),
        json_string_value(json_object_get(
            json_array_get(json_object_get(json_array_get(convs[1], 1), "calls"), 0), "id")));
    /* Anthropic: the thinking block went back with its signature. */
    second = json_object_get(json_array_get(reqs, 5), "body");
    {
        json_t *blocks =
            json_object_get(json_array_get(json_object_get(second, "messages"), 1), "content");
        assert_string_equal(json_string_value(json_object_get(json_array_get(blocks, 0), "type")),
                            "thinking");
        assert_non_null(json_string_value(json_object_get(json_array_get(blocks, 0), "signature")));
    }
    for (size_t i = 0; i < ARRAY_LEN(specs); i++)
        json_decref(convs[i]);
    json_decref(reqs);
    model_config_clear(&cfg);
    unit_rm_rf(dir);
    free(dir);
}

int
test_fake_run(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_fake),
    };
    return cmocka_run_group_tests_name("fake", tests, NULL, NULL);
}
