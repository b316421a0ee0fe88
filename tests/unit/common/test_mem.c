/* Tests for src/common/mem.c: capped buffers, allocation helpers and ownership macros. */
#include "../unit.h"

#include "suites.h"

#include <malloc.h>

static void
test_buf_init(void **state)
{
    struct buf b;
    (void)state;

    buf_init(&b, 100);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.max, 100);
    buf_free(&b); /* an unused buffer */
    assert_null(b.data);
    assert_int_equal(b.max, 100);
}

static void
test_buf_append(void **state)
{
    struct buf b;
    struct err *e = NULL;
    char big[300];
    (void)state;

    memset(big, 'x', sizeof(big));
    buf_init(&b, 1000);
    ASSERT_NO_ERR(buf_append(&b, "hello", 5, &e), &e);
    ASSERT_NO_ERR(buf_append(&b, ", ", 2, &e), &e);
    ASSERT_NO_ERR(buf_append(&b, "world", 5, &e), &e);
    assert_int_equal(b.len, 12);
    assert_string_equal(b.data, "hello, world");
    /* Growth past the first allocation keeps the content and the terminator. */
    for (int i = 0; i < 3; i++)
        ASSERT_NO_ERR(buf_append(&b, big, sizeof(big), &e), &e);
    assert_int_equal(b.len, 912);
    assert_memory_equal(b.data, "hello, world", 12);
    assert_memory_equal(b.data + 12, big, sizeof(big));
    assert_int_equal(b.data[b.len], '\0');
    /* Zero-length appends are no-ops. */
    ASSERT_NO_ERR(buf_append(&b, NULL, 0, &e), &e);
    assert_int_equal(b.len, 912);
    buf_free(&b);
}

static void
test_buf_append_binary(void **state)
{
    static const char bin[] = { 'a', '\0', 'b', '\xff', '\0' };
    struct buf b;
    struct err *e = NULL;
    (void)state;

    buf_init(&b, 64);
    ASSERT_NO_ERR(buf_append(&b, bin, sizeof(bin), &e), &e);
    assert_int_equal(b.len, sizeof(bin));
    assert_memory_equal(b.data, bin, sizeof(bin));
    buf_free(&b);
}

struct cap_case {
    size_t max;
    size_t first;  /* appended first, must fit */
    size_t second; /* then this much, which must not */
};

static void
test_buf_cap(void **state)
{
    static const struct cap_case cases[] = {
        { 0, 0, 1 },  { 1, 1, 1 },     { 10, 0, 11 },      { 10, 10, 1 },
        { 10, 5, 6 }, { 100, 64, 37 }, { 4096, 4000, 97 },
    };
    static char fill[5000];
    (void)state;

    memset(fill, 'z', sizeof(fill));
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct buf b;
        struct err *e = NULL;

        buf_init(&b, cases[i].max);
        ASSERT_NO_ERR(buf_append(&b, fill, cases[i].first, &e), &e);
        assert_int_equal(b.len, cases[i].first);
        assert_int_equal(buf_append(&b, fill, cases[i].second, &e), -1);
        ASSERT_ERR_CONTAINS(&e, ERR_LIMIT, "bytes");
        /* On the limit the buffer was freed (nothing to leak) and is empty again. */
        assert_null(b.data);
        assert_int_equal(b.len, 0);
        assert_int_equal(b.cap, 0);
        /* ...and usable, with the same cap. */
        assert_int_equal(b.max, cases[i].max);
        if (cases[i].max > 0) {
            ASSERT_NO_ERR(buf_append(&b, "q", 1, &e), &e);
            assert_string_equal(b.data, "q");
        }
        buf_free(&b);
    }
}

static void
test_buf_cap_huge_len(void **state)
{
    struct buf b;
    struct err *e = NULL;
    (void)state;

    /* A length that would overflow b->len + len must hit the cap, not wrap around. */
    buf_init(&b, 100);
    ASSERT_NO_ERR(buf_append(&b, "abc", 3, &e), &e);
    assert_int_equal(buf_append(&b, "x", SIZE_MAX, &e), -1);
    ASSERT_ERR(&e, ERR_LIMIT);
    assert_null(b.data);
}

static void
test_buf_printf(void **state)
{
    struct buf b;
    struct err *e = NULL;
    (void)state;

    buf_init(&b, 32);
    ASSERT_NO_ERR(buf_printf(&b, &e, "%s=%d", "n", 42), &e);
    ASSERT_NO_ERR(buf_printf(&b, &e, ";%05.1f", 3.14159), &e);
    assert_string_equal(b.data, "n=42;003.1");
    assert_int_equal(b.len, strlen("n=42;003.1"));
    /* Past the cap: ERR_LIMIT and the buffer freed. */
    assert_int_equal(buf_printf(&b, &e, "%040d", 1), -1);
    ASSERT_ERR(&e, ERR_LIMIT);
    assert_null(b.data);
    buf_free(&b);
}

static void
test_buf_steal(void **state)
{
    struct buf b;
    struct err *e = NULL;
    char *s;
    size_t len = 99;
    (void)state;

    buf_init(&b, 64);
    ASSERT_NO_ERR(buf_append(&b, "owned", 5, &e), &e);
    s = buf_steal(&b, &len);
    assert_string_equal(s, "owned");
    assert_int_equal(len, 5);
    /* The buffer is reset and keeps its cap. */
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.max, 64);
    free(s);

    /* Stealing from an unused buffer yields an owned "" (never NULL). */
    len = 99;
    s = buf_steal(&b, &len);
    assert_non_null(s);
    assert_string_equal(s, "");
    assert_int_equal(len, 0);
    free(s);

    /* len_out may be NULL; a 0-cap buffer still yields "". */
    buf_init(&b, 0);
    s = buf_steal(&b, NULL);
    assert_non_null(s);
    assert_string_equal(s, "");
    free(s);
}

static int
buf_unbounded(void *arg)
{
    struct buf b;
    char *s;
    int ok;

    (void)arg;
    buf_init(&b, SIZE_MAX); /* "no practical cap" */
    if (buf_append(&b, "hello, world", 12, NULL) < 0)
        return 2;
    s = buf_steal(&b, NULL);
    ok = strcmp(s, "hello, world") == 0;
    free(s);
    return ok ? 0 : 1;
}

static void
test_buf_max_size_max(void **state)
{
    int st;
    (void)state;

    /* In a child: the growth clamp computes b->max + 1, which wraps to 0 for SIZE_MAX. */
    st = unit_run_in_child(buf_unbounded, NULL, false);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

static void
test_xalloc(void **state)
{
    char *s;
    int *z;
    void *p;
    (void)state;

    s = xasprintf("%s-%03d", "id", 7);
    assert_string_equal(s, "id-007");
    free(s);
    s = xstrdup("copy");
    assert_string_equal(s, "copy");
    free(s);
    s = xstrndup("abcdef", 3);
    assert_string_equal(s, "abc");
    free(s);
    z = xcalloc(4, sizeof(*z));
    for (int i = 0; i < 4; i++)
        assert_int_equal(z[i], 0);
    z = xrealloc(z, 8 * sizeof(*z));
    assert_int_equal(z[3], 0);
    free(z);
    /* Zero-size requests return a usable pointer, never NULL. */
    p = xmalloc(0);
    assert_non_null(p);
    free(p);
    p = xcalloc(0, 0);
    assert_non_null(p);
    free(p);
}

static void
test_steal_helpers(void **state)
{
    int p[2];
    int fd, kept;
    char *owner = xstrdup("x");
    char *taken;
    (void)state;

    taken = steal_ptr(&owner);
    assert_null(owner);
    assert_string_equal(taken, "x");
    free(taken);

    assert_int_equal(pipe(p), 0);
    fd = p[0];
    kept = steal_fd(&fd);
    assert_int_equal(fd, -1);
    assert_int_equal(kept, p[0]);
    /* close_and_reset keeps errno and ignores -1. */
    errno = EDOM;
    close_and_reset(&kept);
    assert_int_equal(kept, -1);
    assert_int_equal(errno, EDOM);
    close_and_reset(&kept);
    {
        cleanup_close int c = p[1];
        (void)c;
    }
    /* The cleanup attribute closed p[1]. */
    assert_int_equal(fcntl(p[1], F_GETFD), -1);
    assert_int_equal(errno, EBADF);
}

/* Secret strings: formatted or encoded into one allocation of exactly their size. */
static void
test_secret_strings(void **state)
{
    static const struct {
        const char *in, *out;
    } pct[] = {
        { "", "" },
        { "abcXYZ019-._~", "abcXYZ019-._~" },
        { "a b+c&d=e/f", "a%20b%2Bc%26d%3De%2Ff" },
        { "\x01\xff%", "%01%FF%25" },
    };
    char big[3000];
    char *s;
    (void)state;

    for (size_t i = 0; i < sizeof(pct) / sizeof(pct[0]); i++) {
        s = pct_encode_secret(pct[i].in, strlen(pct[i].in));
        assert_string_equal(s, pct[i].out);
        free_wiped(s);
    }
    s = xasprintf_secret("%s %s", "Bearer", "tok");
    assert_string_equal(s, "Bearer tok");
    assert_true(malloc_usable_size(s) < 32); /* its size, not vasprintf's first 100 bytes */
    free_wiped(s);
    memset(big, 'k', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    s = xasprintf_secret("Bearer %s", big);
    assert_int_equal(strlen(s), 7 + sizeof(big) - 1);
    assert_true(malloc_usable_size(s) < 7 + sizeof(big) + 32);
    free_wiped(s);
    free_wiped(NULL);
}

int
test_mem_run(void)
{
    static const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf_init),
        cmocka_unit_test(test_buf_append),
        cmocka_unit_test(test_buf_append_binary),
        cmocka_unit_test(test_buf_cap),
        cmocka_unit_test(test_buf_cap_huge_len),
        cmocka_unit_test(test_buf_printf),
        cmocka_unit_test(test_buf_steal),
        cmocka_unit_test(test_buf_max_size_max),
        cmocka_unit_test(test_xalloc),
        cmocka_unit_test(test_steal_helpers),
        cmocka_unit_test(test_secret_strings),
    };

    return cmocka_run_group_tests_name("common/mem", tests, NULL, NULL);
}
