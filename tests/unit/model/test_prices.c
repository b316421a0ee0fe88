/*
 * Tests for src/model/prices.c: the built-in table (by spec, by name, by a dated name's
 * prefix), the operator's overlay (spec before name, overlay before built-in, cached price
 * defaulting to input), refused price files, and the cost of a usage.
 */
#include "model_test.h"

#include "suites.h"

static struct model_ref
ref(const char *spec)
{
    struct model_ref m;
    struct err *e = NULL;

    ASSERT_NO_ERR(model_parse(spec, &m, &e), &e);
    return m;
}

static void
test_builtin(void **state)
{
    static const struct {
        const char *spec;
        double input; /* < 0: unpriced */
    } cases[] = {
        { "gemini-2.5-pro", 1.25 },
        { "gemini-2.5-flash-lite", 0.10 },
        { "gemini-2.5-flash-preview-09-2025", 0.30 },
        { "openai:gpt-4o-mini", 0.15 },
        { "openai:gpt-4o-2024-08-06", 2.50 },
        { "anthropic:claude-sonnet-4-5-20250929", 3.00 },
        { "anthropic:claude-opus-4-1-20250805", 15.00 },
        { "openai:qwen2.5:7b", -1 },
        { "openai:gpt-4", -1 },
        { "gemini-2.5", -1 },
    };
    (void)state;

    model__prices_reset();
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct model_ref m = ref(cases[i].spec);
        struct model_price p;
        bool found = model_price_of(&m, &p);
        if (cases[i].input < 0) {
            if (found)
                fail_msg("%s should be unpriced", cases[i].spec);
            continue;
        }
        if (!found)
            fail_msg("%s should be priced", cases[i].spec);
        assert_float_equal(p.input, cases[i].input, 1e-9);
    }
}

static char *
write_prices(const char *dir, const char *name, const char *json)
{
    char *path = xasprintf("%s/%s", dir, name);
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    fputs(json, f);
    fclose(f);
    return path;
}

static void
test_overlay(void **state)
{
    char *dir = unit_mkdtemp();
    char *path = write_prices(dir, "p.json",
                              "{\"openai:qwen2.5:7b\": {\"input\": 0, \"output\": 0},"
                              " \"gpt-4o\": {\"input\": 1, \"output\": 2, \"cached\": 0.5},"
                              " \"openai:gpt-4o\": {\"input\": 3, \"output\": 4},"
                              " \"my-model\": {\"input\": 10, \"output\": 20}}");
    struct err *e = NULL;
    struct model_price p;
    struct model_ref m;
    (void)state;

    ASSERT_NO_ERR(model_prices_load(path, &e), &e);
    m = ref("openai:qwen2.5:7b");
    assert_true(model_price_of(&m, &p));
    assert_float_equal(p.output, 0, 1e-9);
    /* The spec wins over the name; the cached price defaults to the input price. */
    m = ref("openai:gpt-4o");
    assert_true(model_price_of(&m, &p));
    assert_float_equal(p.input, 3, 1e-9);
    assert_float_equal(p.cached, 3, 1e-9);
    /* By name, from any format; the overlay wins over the built-in table. */
    m = ref("anthropic:gpt-4o");
    assert_true(model_price_of(&m, &p));
    assert_float_equal(p.cached, 0.5, 1e-9);
    m = ref("openai:my-model");
    assert_true(model_price_of(&m, &p));
    assert_float_equal(p.input, 10, 1e-9);
    /* Untouched built-ins stay. */
    m = ref("gemini-2.5-pro");
    assert_true(model_price_of(&m, &p));
    assert_float_equal(p.output, 10, 1e-9);
    /* Cost: uncached input, cached input, and output with thoughts, per million. */
    {
        struct model_usage u = {
            .input = 1000000, .cached = 400000, .output = 100000, .thought = 100000
        };
        m = ref("openai:my-model");
        assert_float_equal(model_cost_usd(&m, &u), 0.6 * 10 + 0.4 * 10 + 0.2 * 20, 1e-9);
        m = ref("gemini-2.5-pro");
        assert_float_equal(model_cost_usd(&m, &u), 0.6 * 1.25 + 0.4 * 0.125 + 0.2 * 10, 1e-9);
        m = ref("openai:unknown-model");
        assert_float_equal(model_cost_usd(&m, &u), 0, 1e-12);
    }
    model__prices_reset();
    m = ref("openai:my-model");
    assert_false(model_price_of(&m, &p));
    free(path);
    unit_rm_rf(dir);
    free(dir);
}

static void
test_bad_files(void **state)
{
    static const struct {
        const char *json;
        enum err_code code;
        const char *why;
    } cases[] = {
        { "{\"a\": {\"input\": 1}}", ERR_INVALID, "input and output are required" },
        { "{\"a\": {\"input\": -1, \"output\": 1}}", ERR_INVALID, "\"a\".input: not a number" },
        { "{\"a\": {\"input\": \"1\", \"output\": 1}}", ERR_INVALID, "not a number" },
        { "{\"a\": {\"input\": 1, \"output\": 1, \"cache\": 1}}", ERR_INVALID,
          "\"a\".cache: unknown field" },
        { "{\"a\": 3}", ERR_INVALID, "\"a\": not an object" },
        { "[]", ERR_INVALID, "not a JSON object" },
        { "{\"a\": {\"input\": 1, \"output\": 1}, \"a\": {}}", ERR_INVALID, "duplicate" },
        { "{", ERR_INVALID, "line 1" },
    };
    char *dir = unit_mkdtemp();
    struct err *e = NULL;
    struct model_price p;
    struct model_ref m = ref("openai:kept");
    (void)state;

    {
        char *good = write_prices(dir, "good.json", "{\"kept\": {\"input\": 1, \"output\": 1}}");
        ASSERT_NO_ERR(model_prices_load(good, &e), &e);
        free(good);
    }
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char *path = write_prices(dir, "bad.json", cases[i].json);
        assert_int_equal(model_prices_load(path, &e), -1);
        ASSERT_ERR_CONTAINS(&e, cases[i].code, cases[i].why);
        free(path);
        /* A refused file leaves the table that was loaded before. */
        assert_true(model_price_of(&m, &p));
    }
    {
        char *missing = xasprintf("%s/none.json", dir);
        assert_int_equal(model_prices_load(missing, &e), -1);
        ASSERT_ERR(&e, ERR_NOT_FOUND);
        free(missing);
    }
    model__prices_reset();
    unit_rm_rf(dir);
    free(dir);
}

int
test_prices_run(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_builtin),
        cmocka_unit_test(test_overlay),
        cmocka_unit_test(test_bad_files),
    };
    return cmocka_run_group_tests_name("prices", tests, NULL, NULL);
}
