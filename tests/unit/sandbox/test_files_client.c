/* Tests for src/sandbox/files_client.c: checking and resolving paths given by callers. */
#include "../unit.h"

#include "sandbox/sandbox_int.h"
#include "suites.h"

struct path_case {
    const char *in;
    const char *want; /* NULL: rejected with ERR_INVALID */
};

static void
test_path_resolve(void **state)
{
    static const struct path_case cases[] = {
        /* Absolute paths are kept. */
        { "/", "/" },
        { "/etc/hosts", "/etc/hosts" },
        { "/workspace", "/workspace" },
        { "/a b/c\td", "/a b/c\td" },
        /* Relative paths are under /workspace. */
        { "a", "/workspace/a" },
        { "src/main.c", "/workspace/src/main.c" },
        /* Trailing slashes are dropped, except for "/" itself. */
        { "a/", "/workspace/a" },
        { "a/b///", "/workspace/a/b" },
        { "/tmp/", "/tmp" },
        { "//", "/" },
        { "///", "/" },
        /* Only a whole ".." component climbs: names that merely contain dots are fine. */
        { "a/..b", "/workspace/a/..b" },
        { "..b", "/workspace/..b" },
        { "b..", "/workspace/b.." },
        { "...", "/workspace/..." },
        { "/x/.../y", "/x/.../y" },
        { ".hidden", "/workspace/.hidden" },
        /* Rejected. */
        { "", NULL },
        { "..", NULL },
        { "../x", NULL },
        { "a/../b", NULL },
        { "a/..", NULL },
        { "a/../", NULL },
        { "/..", NULL },
        { "/../etc/passwd", NULL },
        { "/a/b/..", NULL },
        { "//..//", NULL },
        { "a//..//b", NULL },
        { "/workspace/../../etc", NULL },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char *abs = NULL;
        struct err *e = NULL;
        int r = sandbox_path_resolve(cases[i].in, &abs, &e);

        if (cases[i].want != NULL) {
            if (r != 0 || e != NULL)
                fail_msg("sandbox_path_resolve(\"%s\") failed: %s", cases[i].in,
                         e != NULL ? e->msg : "?");
            if (strcmp(abs, cases[i].want) != 0)
                fail_msg("sandbox_path_resolve(\"%s\") = \"%s\", want \"%s\"", cases[i].in, abs,
                         cases[i].want);
            free(abs);
        } else {
            if (r != -1)
                fail_msg("sandbox_path_resolve(\"%s\") accepted: \"%s\"", cases[i].in,
                         abs != NULL ? abs : "");
            assert_null(abs); /* nothing handed out */
            ASSERT_ERR(&e, ERR_INVALID);
        }
    }
}

/* A path of n bytes: "/" then n - 1 letters, with a slash every 100 bytes. */
static char *
long_path(size_t n, bool absolute)
{
    char *p = xmalloc(n + 1);

    for (size_t i = 0; i < n; i++)
        p[i] = i % 100 == 0 ? '/' : 'x';
    if (!absolute)
        p[0] = 'x';
    p[n] = '\0';
    return p;
}

static void
test_path_resolve_length(void **state)
{
    char *abs = NULL;
    struct err *e = NULL;
    char *p;
    (void)state;

    /* 4095 bytes is the most a path may have. */
    p = long_path(4095, true);
    ASSERT_NO_ERR(sandbox_path_resolve(p, &abs, &e), &e);
    assert_string_equal(abs, p);
    free(abs);
    abs = NULL;
    free(p);

    p = long_path(4096, true);
    assert_int_equal(sandbox_path_resolve(p, &abs, &e), -1);
    assert_null(abs);
    ASSERT_ERR(&e, ERR_INVALID);
    free(p);

    p = long_path(100000, false);
    assert_int_equal(sandbox_path_resolve(p, &abs, &e), -1);
    assert_null(abs);
    ASSERT_ERR(&e, ERR_INVALID);
    free(p);
}

int
test_files_client_run(void)
{
    static const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_path_resolve),
        cmocka_unit_test(test_path_resolve_length),
    };

    return cmocka_run_group_tests_name("sandbox/files_client", tests, NULL, NULL);
}
