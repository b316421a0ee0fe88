/*
 * Tests for src/agent/ that need no sandbox and no model: the UTF-8 repair of tool output,
 * the head-and-tail cut of long output, and how a request and its stored agent resolve into
 * a plan (model, budgets, tools, base_agent chains), against a fresh store.
 */
#include "../store_fixture.h"

#include "agent/agent_int.h"

static void
test_utf8_repair(void **state)
{
    cleanup_free char *ok = agent__utf8("héllo ✓ 😀", strlen("héllo ✓ 😀"));
    cleanup_free char *bad = agent__utf8("a\xff"
                                         "b\xc3",
                                         4);
    cleanup_free char *nul = agent__utf8("a\0b", 3);
    cleanup_free char *overlong = agent__utf8("\xc0\xaf", 2);
    cleanup_free char *surrogate = agent__utf8("\xed\xa0\x80", 3);

    (void)state;
    assert_string_equal(ok, "héllo ✓ 😀");
    assert_string_equal(bad, "a\xef\xbf\xbd"
                             "b\xef\xbf\xbd");
    assert_string_equal(nul, "a\xef\xbf\xbd"
                             "b");
    assert_string_equal(overlong, "\xef\xbf\xbd\xef\xbf\xbd");
    assert_string_equal(surrogate, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
}

static void
test_clip(void **state)
{
    char big[25001];
    cleanup_free char *same = agent__clip("short", 5, 10000);
    cleanup_free char *cut = NULL;

    (void)state;
    assert_string_equal(same, "short");
    memset(big, 'x', sizeof(big) - 1);
    memcpy(big, "HEAD", 4);
    memcpy(big + sizeof(big) - 5, "TAIL", 4);
    big[sizeof(big) - 1] = '\0';
    cut = agent__clip(big, strlen(big), 10000);
    assert_true(strncmp(cut, "HEAD", 4) == 0);
    assert_non_null(strstr(cut, "TAIL"));
    assert_non_null(strstr(cut, "15000 characters cut"));
    assert_non_null(strstr(cut, "25000 characters"));
    assert_true(strlen(cut) < 10000 + 200);
}

static void
test_clip_keeps_characters_whole(void **state)
{
    /* 3-byte characters: a cut in the middle of one must move to its start. */
    struct buf b;
    cleanup_free char *cut = NULL;
    cleanup_free char *fixed = NULL;

    (void)state;
    buf_init(&b, 1u << 20);
    for (int i = 0; i < 6000; i++)
        buf_append(&b, "✓", 3, NULL);
    cut = agent__clip(b.data, b.len, 10001);
    fixed = agent__utf8(cut, strlen(cut));
    assert_string_equal(cut, fixed); /* nothing needed repair */
    buf_free(&b);
}

static json_t *
req(const char *text)
{
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);

    if (j == NULL)
        fail_msg("bad test JSON: %s", je.text);
    return j;
}

static void
test_plan_defaults_and_model(void **state)
{
    struct store_fixture *f = *state;
    struct agent_plan p;
    struct err *e = NULL;
    json_t *r = req("{\"agent\":\"antigravity-preview-05-2026\",\"input\":\"x\"}");

    ASSERT_NO_ERR(agent__plan(f->s, "p", "openai:local", r, &p, &e), &e);
    assert_int_equal(p.model.format, MODEL_OPENAI);
    assert_string_equal(p.model.name, "local");
    assert_int_equal(p.max_steps, AGENT_DEFAULT_MAX_STEPS);
    assert_int_equal(p.timeout_ms, (int64_t)AGENT_DEFAULT_TIMEOUT_S * 1000);
    assert_int_equal(p.max_tokens, 0);
    assert_true(p.wants_env);
    agent__plan_free(&p);
    /* no model anywhere: a 400 that names the settings */
    assert_int_equal(agent__plan(f->s, "p", NULL, r, &p, &e), -1);
    ASSERT_ERR_CONTAINS(&e, ERR_INVALID, "PADDOCK_MODEL");
    json_decref(r);
}

static void
test_plan_budgets(void **state)
{
    struct store_fixture *f = *state;
    struct agent_plan p;
    struct err *e = NULL;
    json_t *r = req("{\"agent\":\"antigravity-preview-09-2026\",\"agent_config\":{\"type\":"
                    "\"antigravity\",\"model\":\"anthropic:claude\",\"max_total_tokens\":\"5000\","
                    "\"max_steps\":3,\"timeout_s\":60,\"max_cost_usd\":0.5,\"allowed_tools\":"
                    "[\"bash\"]}}");
    static const char *const bad[] = {
        "{\"model\":\"gemini-x\",\"agent_config\":{\"max_steps\":0}}",
        "{\"model\":\"gemini-x\",\"agent_config\":{\"max_steps\":\"ten\"}}",
        "{\"model\":\"gemini-x\",\"agent_config\":{\"timeout_s\":-1}}",
        "{\"model\":\"gemini-x\",\"agent_config\":{\"max_cost_usd\":\"1\"}}",
        "{\"model\":\"gemini-x\",\"agent_config\":{\"allowed_tools\":\"bash\"}}",
        "{\"model\":\"gpt-4\"}",
        "{\"model\":\"gemini-x\",\"tools\":[{\"type\":\"google_search\"}]}",
        "{\"model\":\"gemini-x\",\"tools\":[{\"type\":\"function\",\"name\":\"bash\"}]}",
        "{\"model\":\"gemini-x\",\"tools\":[{\"type\":\"function\",\"name\":\"a b\"}]}",
        "{\"model\":\"gemini-x\",\"tools\":[{\"type\":\"mcp_server\",\"url\":\"ftp://x\"}]}",
        ("{\"model\":\"gemini-x\",\"tools\":[{\"type\":\"mcp_server\",\"url\":\"http://x\","
         "\"headers\":{\"a\":\"b\\r\\nc: d\"}}]}"),
    };

    ASSERT_NO_ERR(agent__plan(f->s, "p", NULL, r, &p, &e), &e);
    assert_int_equal(p.model.format, MODEL_ANTHROPIC);
    assert_int_equal(p.max_tokens, 5000);
    assert_int_equal(p.max_steps, 3);
    assert_int_equal(p.timeout_ms, 60000);
    assert_true(p.max_cost_usd > 0.49 && p.max_cost_usd < 0.51);
    assert_int_equal(json_array_size(p.allowed_tools), 1);
    agent__plan_free(&p);
    json_decref(r);
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        json_t *b = req(bad[i]);
        if (agent__plan(f->s, "p", NULL, b, &p, &e) == 0)
            fail_msg("accepted %s", bad[i]);
        ASSERT_ERR(&e, ERR_INVALID);
        json_decref(b);
    }
}

static void
put_agent(struct store *s, const char *project, const char *id, const char *body)
{
    struct store_agent a = { 0 };
    struct err *e = NULL;

    snprintf(a.project, sizeof(a.project), "%s", project);
    snprintf(a.id, sizeof(a.id), "%s", id);
    a.body = (char *)(uintptr_t)body;
    a.created_ms = a.updated_ms = util_now_ms();
    ASSERT_NO_ERR(store_agent_insert(s, &a, &e), &e);
}

static void
test_plan_stored_agent_chain(void **state)
{
    struct store_fixture *f = *state;
    struct agent_plan p;
    struct err *e = NULL;
    json_t *r;

    put_agent(f->s, "p", "base",
              "{\"id\":\"base\",\"system_instruction\":\"be careful\","
              "\"agent_config\":{\"model\":\"gemini-base\",\"max_steps\":7},"
              "\"tools\":[{\"type\":\"function\",\"name\":\"lookup\"}]}");
    put_agent(f->s, "p", "child",
              "{\"id\":\"child\",\"base_agent\":\"base\",\"agent_config\":"
              "{\"max_steps\":9},\"tools\":[{\"type\":\"function\","
              "\"name\":\"save\"}]}");
    put_agent(f->s, "p", "loop", "{\"id\":\"loop\",\"base_agent\":\"loop\"}");
    r = req("{\"agent\":\"child\",\"input\":\"x\"}");
    ASSERT_NO_ERR(agent__plan(f->s, "p", "openai:default", r, &p, &e), &e);
    assert_string_equal(p.model.name, "gemini-base"); /* inherited, over the default */
    assert_int_equal(p.max_steps, 9);                 /* overridden by the child */
    assert_string_equal(json_string_value(p.system_instruction), "be careful");
    assert_int_equal(json_array_size(p.client_tools), 2); /* tools add up */
    agent__plan_free(&p);
    json_decref(r);
    /* the request's settings go over the agent's */
    r = req("{\"agent\":\"child\",\"system_instruction\":\"be quick\",\"agent_config\":"
            "{\"max_steps\":2}}");
    ASSERT_NO_ERR(agent__plan(f->s, "p", NULL, r, &p, &e), &e);
    assert_int_equal(p.max_steps, 2);
    assert_string_equal(json_string_value(p.system_instruction), "be quick");
    agent__plan_free(&p);
    json_decref(r);
    /* another project does not see them; a cycle ends at the depth cap */
    r = req("{\"agent\":\"child\"}");
    assert_int_equal(agent__plan(f->s, "q", "gemini-x", r, &p, &e), -1);
    ASSERT_ERR(&e, ERR_NOT_FOUND);
    json_decref(r);
    r = req("{\"agent\":\"loop\"}");
    assert_int_equal(agent__plan(f->s, "p", "gemini-x", r, &p, &e), -1);
    ASSERT_ERR_CONTAINS(&e, ERR_INVALID, "base_agent chain");
    json_decref(r);
}

static void
test_agent_def_check(void **state)
{
    struct store_fixture *f = *state;
    struct err *e = NULL;
    json_t *out = NULL;
    json_t *b = req("{\"description\":\"d\",\"agent_config\":{\"type\":\"antigravity\","
                    "\"model\":\"openai:x\"}}");

    ASSERT_NO_ERR(agent_def_check(f->s, "p", b, &out, &e), &e);
    assert_true(strncmp(json_string_value(json_object_get(out, "id")), "agent_", 6) == 0);
    json_decref(out);
    json_decref(b);
    b = req("{\"id\":\"x\",\"instructions\":\"no such field\"}");
    assert_int_equal(agent_def_check(f->s, "p", b, &out, &e), -1);
    ASSERT_ERR_CONTAINS(&e, ERR_INVALID, "instructions");
    json_decref(b);
    b = req("{\"id\":\"antigravity-preview-05-2026\"}");
    assert_int_equal(agent_def_check(f->s, "p", b, &out, &e), -1);
    ASSERT_ERR(&e, ERR_CONFLICT);
    json_decref(b);
    b = req("{\"id\":\"y\",\"base_agent\":\"missing\"}");
    assert_int_equal(agent_def_check(f->s, "p", b, &out, &e), -1);
    ASSERT_ERR(&e, ERR_NOT_FOUND);
    json_decref(b);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8_repair),
        cmocka_unit_test(test_clip),
        cmocka_unit_test(test_clip_keeps_characters_whole),
        cmocka_unit_test_setup_teardown(test_plan_defaults_and_model, store_fixture_setup, store_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_plan_budgets, store_fixture_setup, store_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_plan_stored_agent_chain, store_fixture_setup, store_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_agent_def_check, store_fixture_setup, store_fixture_teardown),
    };

    return cmocka_run_group_tests_name("agent", tests, NULL, NULL);
}
