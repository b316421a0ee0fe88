/*
 * Tests for the attribution tag of src/env/env.c: env_proxy_tag() binds an interaction to an
 * environment in the proxy URL an interaction's commands get, and the egress proxy accepts a
 * claimed interaction only when env_proxy_tag_ok() says the tag is that pair's
 * (docs/EGRESS.md "Audit").
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../unit.h"

#include "env/env.h"
#include "suites.h"

static const char ENV_A[] = "env_aaaaaaaaaaaaaaaaaaaaaaaaaa";
static const char ENV_B[] = "env_bbbbbbbbbbbbbbbbbbbbbbbbbb";
static const char INT_1[] = "int_11111111111111111111111111";
static const char INT_2[] = "int_22222222222222222222222222";

static char *dir_a, *dir_b;

static int
make_dirs(void **state)
{
    (void)state;
    dir_a = unit_mkdtemp();
    dir_b = unit_mkdtemp();
    return dir_a == NULL || dir_b == NULL ? -1 : 0;
}

static int
remove_dirs(void **state)
{
    (void)state;
    unit_rm_rf(dir_a);
    unit_rm_rf(dir_b);
    free(dir_a);
    free(dir_b);
    return 0;
}

static void
test_tag_form(void **state)
{
    char t[ENV_PROXY_TAG_LEN + 1], again[ENV_PROXY_TAG_LEN + 1];

    (void)state;
    env_proxy_tag(dir_a, ENV_A, INT_1, t);
    assert_int_equal(strlen(t), ENV_PROXY_TAG_LEN);
    for (size_t i = 0; i < ENV_PROXY_TAG_LEN; i++)
        assert_true(isxdigit((unsigned char)t[i]) && !isupper((unsigned char)t[i]));
    env_proxy_tag(dir_a, ENV_A, INT_1, again);
    assert_string_equal(t, again);
}

static void
test_tag_key_file(void **state)
{
    char a[ENV_PROXY_TAG_LEN + 1], b[ENV_PROXY_TAG_LEN + 1], again[ENV_PROXY_TAG_LEN + 1];
    char path[512];
    struct stat st;

    (void)state;
    env_proxy_tag(dir_a, ENV_A, INT_1, a);
    snprintf(path, sizeof(path), "%s/egress-tag.key", dir_a);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600); /* the daemon's alone */
    assert_int_equal(st.st_size, 32);
    /* Another installation, another key: its tags mean nothing here. */
    env_proxy_tag(dir_b, ENV_A, INT_1, b);
    assert_int_equal(strlen(b), ENV_PROXY_TAG_LEN);
    assert_string_not_equal(a, b);
    assert_false(env_proxy_tag_ok(dir_a, ENV_A, INT_1, b));
    /* Back to the first: the key is read from its file again, so the tags agree (a restarted
     * server, or `paddock run` beside it). */
    env_proxy_tag(dir_a, ENV_A, INT_1, again);
    assert_string_equal(a, again);
    assert_true(env_proxy_tag_ok(dir_b, ENV_A, INT_1, b));
}

static void
test_tag_binds_both(void **state)
{
    char a1[ENV_PROXY_TAG_LEN + 1], a2[ENV_PROXY_TAG_LEN + 1], b1[ENV_PROXY_TAG_LEN + 1];
    char glued[ENV_PROXY_TAG_LEN + 1];

    (void)state;
    env_proxy_tag(dir_a, ENV_A, INT_1, a1);
    env_proxy_tag(dir_a, ENV_A, INT_2, a2);
    env_proxy_tag(dir_a, ENV_B, INT_1, b1);
    assert_string_not_equal(a1, a2);
    assert_string_not_equal(a1, b1);
    assert_true(env_proxy_tag_ok(dir_a, ENV_A, INT_1, a1));
    assert_false(env_proxy_tag_ok(dir_a, ENV_B, INT_1, a1)); /* another environment's tag */
    assert_false(env_proxy_tag_ok(dir_a, ENV_A, INT_2, a1)); /* another interaction's */
    /* The two fields are separated: moving characters across the boundary is another pair. */
    env_proxy_tag(dir_a, "env_a", "aint_1", glued);
    assert_false(env_proxy_tag_ok(dir_a, "env_aa", "int_1", glued));
}

static void
test_tag_rejects_near_misses(void **state)
{
    char t[ENV_PROXY_TAG_LEN + 1], bad[ENV_PROXY_TAG_LEN + 2];

    (void)state;
    env_proxy_tag(dir_a, ENV_A, INT_1, t);
    assert_false(env_proxy_tag_ok(dir_a, ENV_A, INT_1, ""));
    memcpy(bad, t, ENV_PROXY_TAG_LEN - 1);
    bad[ENV_PROXY_TAG_LEN - 1] = '\0';
    assert_false(env_proxy_tag_ok(dir_a, ENV_A, INT_1, bad)); /* one short */
    snprintf(bad, sizeof(bad), "%s0", t);
    assert_false(env_proxy_tag_ok(dir_a, ENV_A, INT_1, bad)); /* one long */
    memcpy(bad, t, sizeof(t));
    bad[5] = bad[5] == '0' ? '1' : '0';
    assert_false(env_proxy_tag_ok(dir_a, ENV_A, INT_1, bad)); /* one digit off */
    memcpy(bad, t, sizeof(t));
    for (size_t i = 0; i < ENV_PROXY_TAG_LEN; i++)
        bad[i] = (char)toupper((unsigned char)bad[i]);
    if (strcmp(bad, t) != 0)
        assert_false(env_proxy_tag_ok(dir_a, ENV_A, INT_1, bad)); /* exactly as issued */
}

int
test_tag_run(void)
{
    static const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tag_form),
        cmocka_unit_test(test_tag_key_file),
        cmocka_unit_test(test_tag_binds_both),
        cmocka_unit_test(test_tag_rejects_near_misses),
    };

    return cmocka_run_group_tests_name("egress/tag", tests, make_dirs, remove_dirs);
}
