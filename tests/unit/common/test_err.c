/* Tests for src/common/err.c: error values, their context chain and code names. */
#include "../unit.h"

#include "suites.h"

static void
test_err_set(void **state)
{
    struct err *e = NULL;
    (void)state;

    assert_int_equal(err_set(&e, ERR_NOT_FOUND, 0, "no environment %s", "env_x"), -1);
    assert_non_null(e);
    assert_int_equal(e->code, ERR_NOT_FOUND);
    assert_int_equal(e->errnum, 0);
    assert_string_equal(e->msg, "no environment env_x");
    err_free(e);
}

struct errno_case {
    int errnum;
    enum err_code code;
};

static void
test_err_set_errno(void **state)
{
    static const struct errno_case cases[] = {
        { ENOENT, ERR_NOT_FOUND },
        { EACCES, ERR_PERM },
        { EIO, ERR_IO },
        { ENOSPC, ERR_LIMIT },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct err *e = NULL;
        char *want = xasprintf("open /x/%zu: %s", i, strerror(cases[i].errnum));

        assert_int_equal(err_set(&e, cases[i].code, cases[i].errnum, "open /x/%zu", i), -1);
        assert_non_null(e);
        assert_int_equal(e->code, cases[i].code);
        assert_int_equal(e->errnum, cases[i].errnum);
        assert_string_equal(e->msg, want);
        free(want);
        err_free(e);
    }
}

static void
test_err_set_null_errp(void **state)
{
    (void)state;
    /* The error is dropped, the return value still says failure. */
    assert_int_equal(err_set(NULL, ERR_IO, EIO, "dropped %d", 1), -1);
    assert_int_equal(err_wrap(NULL, "ctx"), -1);
}

static void
test_err_wrap_chain(void **state)
{
    struct err *e = NULL;
    char *want = xasprintf("start env_a: mount overlay: open /lower: %s", strerror(EACCES));
    (void)state;

    err_set(&e, ERR_PERM, EACCES, "open %s", "/lower");
    assert_int_equal(err_wrap(&e, "mount %s", "overlay"), -1);
    assert_int_equal(err_wrap(&e, "start %s", "env_a"), -1);
    assert_non_null(e);
    assert_string_equal(e->msg, want);
    /* Wrapping adds context only: the class and errno of the cause are kept. */
    assert_int_equal(e->code, ERR_PERM);
    assert_int_equal(e->errnum, EACCES);
    free(want);
    err_free(e);
}

static void
test_err_wrap_unset(void **state)
{
    struct err *e = NULL;
    (void)state;

    assert_int_equal(err_wrap(&e, "context %d", 1), -1);
    assert_null(e);
}

static void
test_err_free_null(void **state)
{
    (void)state;
    err_free(NULL);
}

static void
test_err_cleanup_attr(void **state)
{
    (void)state;
    {
        cleanup_err struct err *e = NULL;
        err_set(&e, ERR_IO, 0, "freed by the cleanup attribute");
    }
    {
        cleanup_err struct err *e = NULL;
        (void)e;
    }
}

struct code_case {
    enum err_code code;
    const char *name;
};

static void
test_err_code_names(void **state)
{
    static const struct code_case cases[] = {
        { ERR_INVALID, "invalid" },   { ERR_NOT_FOUND, "not_found" }, { ERR_CONFLICT, "conflict" },
        { ERR_PERM, "permission" },   { ERR_LIMIT, "limit" },         { ERR_IO, "io" },
        { ERR_UPSTREAM, "upstream" }, { ERR_TIMEOUT, "timeout" },     { ERR_INTERNAL, "internal" },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        assert_string_equal(err_code_name(cases[i].code), cases[i].name);
        assert_int_equal(err_code_from_name(cases[i].name), cases[i].code);
        /* Round trip both ways. */
        assert_int_equal(err_code_from_name(err_code_name(cases[i].code)), cases[i].code);
    }
}

static void
test_err_code_unknown(void **state)
{
    static const char *const names[] = {
        "", "bogus", "NOT_FOUND", "Invalid", "not_found ", "limits"
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(names); i++)
        assert_int_equal(err_code_from_name(names[i]), ERR_INTERNAL);
    assert_string_equal(err_code_name((enum err_code)0), "internal");
    assert_string_equal(err_code_name((enum err_code)99), "internal");
}

int
test_err_run(void)
{
    static const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_err_set),           cmocka_unit_test(test_err_set_errno),
        cmocka_unit_test(test_err_set_null_errp), cmocka_unit_test(test_err_wrap_chain),
        cmocka_unit_test(test_err_wrap_unset),    cmocka_unit_test(test_err_free_null),
        cmocka_unit_test(test_err_cleanup_attr),  cmocka_unit_test(test_err_code_names),
        cmocka_unit_test(test_err_code_unknown),
    };

    return cmocka_run_group_tests_name("common/err", tests, NULL, NULL);
}
