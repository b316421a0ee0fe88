/* Tests for src/common/util.c: sizes, numbers, ids, time and the file helpers. */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../unit.h"

#include "suites.h"

/* ------------------------------------------------------------ util_parse_size */

struct size_case {
    const char *in;
    uint64_t want;
};

/* util_deadline(): on the monotonic clock, ms ahead, nanoseconds carried into seconds. */
static void
test_deadline(void **state)
{
    static const int64_t ms[] = { 0, 1, 999, 1000, 1001, 1500, 86400001 };
    struct timespec now, past = util_deadline(-1500);
    (void)state;
    for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++) {
        int64_t before = util_mono_ns();
        struct timespec ts = util_deadline(ms[i]);
        int64_t after = util_mono_ns();
        int64_t at = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
        assert_true(ts.tv_nsec >= 0 && ts.tv_nsec < 1000000000L);
        assert_true(at >= before + ms[i] * 1000000 && at <= after + ms[i] * 1000000);
    }
    /* util_mono_ms() is util_mono_ns() in milliseconds. */
    {
        int64_t a = util_mono_ns() / 1000000, m = util_mono_ms(), b = util_mono_ns() / 1000000;
        assert_true(a <= m && m <= b);
    }
    /* A negative wait is none: now, a valid time. */
    clock_gettime(CLOCK_MONOTONIC, &now);
    assert_true(past.tv_nsec >= 0 && past.tv_nsec < 1000000000L && past.tv_sec <= now.tv_sec);
    /* A timed wait on it ends by timing out (wake-ups without a signal may come first), on
     * the clock it was made for. */
    {
        pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
        pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
        struct timespec ts = util_deadline(20);
        int64_t t0 = util_mono_ns();
        int rc;
        pthread_mutex_lock(&mu);
        while ((rc = pthread_cond_clockwait(&cv, &mu, CLOCK_MONOTONIC, &ts)) == 0)
            ;
        pthread_mutex_unlock(&mu);
        assert_int_equal(rc, ETIMEDOUT);
        assert_true(util_mono_ns() - t0 >= 19 * 1000000);
    }
}

static void
test_parse_size_good(void **state)
{
    static const struct size_case cases[] = {
        { "0", 0 },
        { "1", 1 },
        { "007", 7 },
        { "4K", 4ULL << 10 },
        { "4k", 4ULL << 10 },
        { "16M", 16ULL << 20 },
        { "16m", 16ULL << 20 },
        { "2G", 2ULL << 30 },
        { "2g", 2ULL << 30 },
        { "1T", 1ULL << 40 },
        { "1t", 1ULL << 40 },
        { "1Ki", 1024 },
        { "1KiB", 1024 },
        { "1KB", 1024 },
        { "3MiB", 3ULL << 20 },
        { "0G", 0 },
        { "18446744073709551615", UINT64_MAX },
        { "16777215T", 16777215ULL << 40 },       /* the largest T value that fits */
        { "17179869183G", 17179869183ULL << 30 }, /* the largest G value that fits */
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct err *e = NULL;
        uint64_t v = 12345;
        int r = util_parse_size(cases[i].in, &v, &e);
        if (r != 0 || e != NULL)
            fail_msg("util_parse_size(\"%s\") failed: %s", cases[i].in, e != NULL ? e->msg : "?");
        if (v != cases[i].want)
            fail_msg("util_parse_size(\"%s\") = %ju, want %ju", cases[i].in, (uintmax_t)v,
                     (uintmax_t)cases[i].want);
    }
}

static void
test_parse_size_bad(void **state)
{
    static const char *const cases[] = {
        "",
        "-5",
        "+5",
        " 5",
        "5 ",
        "1 K",
        "12Q",
        "1.5G",
        "K",
        "KiB",
        "1B", /* B alone is not a suffix: only after K, M, G or T */
        "1i",
        "1Gx",
        "1GiBB",
        "1Gb",
        "1KBi",
        "0x10",
        "1e3",
        "99999999999999999999",
        "18446744073709551616",  /* UINT64_MAX + 1 */
        "18446744073709551615K", /* overflows in the multiplication */
        "16777216T",
        "17179869184G",
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct err *e = NULL;
        uint64_t v = 12345;
        int r = util_parse_size(cases[i], &v, &e);
        if (r != -1 || e == NULL)
            fail_msg("util_parse_size(\"%s\") accepted (%ju)", cases[i], (uintmax_t)v);
        if (e->code != ERR_INVALID)
            fail_msg("util_parse_size(\"%s\"): code %s", cases[i], err_code_name(e->code));
        assert_int_equal(v, 12345); /* *out untouched on failure */
        err_free(e);
    }
}

static void
test_parse_size_null(void **state)
{
    struct err *e = NULL;
    uint64_t v = 7;

    (void)state;
    assert_int_equal(util_parse_size(NULL, &v, &e), -1);
    ASSERT_ERR(&e, ERR_INVALID);
    assert_int_equal(v, 7);
    /* A NULL errp only drops the error. */
    assert_int_equal(util_parse_size("junk", &v, NULL), -1);
}

/* ------------------------------------------------------------- util_parse_u64 */

struct u64_case {
    const char *in;
    uint64_t max;
    bool ok;
    uint64_t want;
};

static void
test_parse_u64(void **state)
{
    static const struct u64_case cases[] = {
        { "0", UINT64_MAX, true, 0 },
        { "0", 0, true, 0 },
        { "1", 0, false, 0 },
        { "42", 42, true, 42 },
        { "43", 42, false, 0 },
        { "00042", 100, true, 42 },
        { "18446744073709551615", UINT64_MAX, true, UINT64_MAX },
        { "18446744073709551615", UINT64_MAX - 1, false, 0 },
        { "18446744073709551616", UINT64_MAX, false, 0 },
        { "99999999999999999999", UINT64_MAX, false, 0 },
        { "", UINT64_MAX, false, 0 },
        { "-1", UINT64_MAX, false, 0 },
        { "+1", UINT64_MAX, false, 0 },
        { " 1", UINT64_MAX, false, 0 },
        { "1 ", UINT64_MAX, false, 0 },
        { "1x", UINT64_MAX, false, 0 },
        { "0x10", UINT64_MAX, false, 0 },
        { "1e3", UINT64_MAX, false, 0 },
        { "1.0", UINT64_MAX, false, 0 },
        { "4K", UINT64_MAX, false, 0 },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct err *e = NULL;
        uint64_t v = 777;
        int r = util_parse_u64(cases[i].in, cases[i].max, &v, &e);
        if (cases[i].ok) {
            if (r != 0 || e != NULL)
                fail_msg("util_parse_u64(\"%s\", %ju) failed: %s", cases[i].in,
                         (uintmax_t)cases[i].max, e != NULL ? e->msg : "?");
            if (v != cases[i].want)
                fail_msg("util_parse_u64(\"%s\") = %ju, want %ju", cases[i].in, (uintmax_t)v,
                         (uintmax_t)cases[i].want);
        } else {
            if (r != -1 || e == NULL)
                fail_msg("util_parse_u64(\"%s\", %ju) accepted (%ju)", cases[i].in,
                         (uintmax_t)cases[i].max, (uintmax_t)v);
            assert_int_equal(e->code, ERR_INVALID);
            assert_int_equal(v, 777);
            err_free(e);
        }
    }
}

static void
test_parse_u64_null(void **state)
{
    struct err *e = NULL;
    uint64_t v = 3;

    (void)state;
    assert_int_equal(util_parse_u64(NULL, 10, &v, &e), -1);
    ASSERT_ERR(&e, ERR_INVALID);
    assert_int_equal(v, 3);
}

/* --------------------------------------------------------------------- ids */

#define ID_ALPHABET "abcdefghijklmnopqrstuvwxyz234567"

static void
test_id_new_form(void **state)
{
    static const char *const prefixes[] = { "env_", "", "x", "exec_" };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(prefixes); i++) {
        char out[64];
        struct err *e = NULL;
        size_t plen = strlen(prefixes[i]);

        memset(out, 'Z', sizeof(out));
        ASSERT_NO_ERR(util_id_new(prefixes[i], out, plen + 27, &e), &e);
        assert_int_equal(strlen(out), plen + 26);
        assert_memory_equal(out, prefixes[i], plen);
        assert_int_equal(strspn(out + plen, ID_ALPHABET), 26);
        assert_true(util_id_valid(prefixes[i], out));
        /* Nothing is written past the terminator. */
        assert_int_equal(out[plen + 27], 'Z');
    }
}

static int
cmp_str(const void *a, const void *b)
{
    return strcmp((const char *)a, (const char *)b);
}

static void
test_id_new_unique(void **state)
{
    enum {
        N = 1000,
        W = 4 + 27
    };
    char(*ids)[W] = xcalloc(N, W);
    (void)state;

    for (size_t i = 0; i < N; i++) {
        struct err *e = NULL;
        ASSERT_NO_ERR(util_id_new("env_", ids[i], W, &e), &e);
        assert_true(util_id_valid("env_", ids[i]));
    }
    qsort(ids, N, W, cmp_str);
    for (size_t i = 1; i < N; i++)
        if (strcmp(ids[i - 1], ids[i]) == 0)
            fail_msg("duplicate id %s", ids[i]);
    free(ids);
}

static int
id_new_short_buffer(void *arg)
{
    char out[4 + 26]; /* one byte short */

    (void)arg;
    util_id_new("env_", out, sizeof(out), NULL);
    return 0;
}

static void
test_id_new_short_buffer_aborts(void **state)
{
    int st;

    (void)state;
    st = unit_run_in_child(id_new_short_buffer, NULL, true);
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGABRT);
}

struct id_valid_case {
    const char *prefix;
    const char *s;
    bool valid;
};

static void
test_id_valid(void **state)
{
    static const struct id_valid_case cases[] = {
        { "env_", "env_abcdefghijklmnopqrstuvwxyz", true },
        { "env_", "env_234567abcdefghijklmnopqrst", true },
        { "env_", "env_aaaaaaaaaaaaaaaaaaaaaaaaaa", true },
        { "", "abcdefghijklmnopqrstuvwxyz", true },
        { "env_", "", false },
        { "env_", "env_", false },
        { "env_", "env_abcdefghijklmnopqrstuvwxy", false },   /* 25 */
        { "env_", "env_abcdefghijklmnopqrstuvwxyza", false }, /* 27 */
        { "env_", "ENV_abcdefghijklmnopqrstuvwxyz", false },
        { "env_", "exe_abcdefghijklmnopqrstuvwxyz", false },
        { "env_", "abcdefghijklmnopqrstuvwxyz", false }, /* no prefix */
        { "env_", "env_Abcdefghijklmnopqrstuvwxyz", false },
        { "env_", "env_0bcdefghijklmnopqrstuvwxyz", false },
        { "env_", "env_1bcdefghijklmnopqrstuvwxyz", false },
        { "env_", "env_8bcdefghijklmnopqrstuvwxyz", false },
        { "env_", "env_9bcdefghijklmnopqrstuvwxyz", false },
        { "env_", "env_abcdefghijklmnopqrstuvwxy=", false },
        { "env_", "env_abcdefghijklm-opqrstuvwxyz", false },
        { "env_", "env_abcdefghijklm opqrstuvwxyz", false },
        { "env_", "env_abcdefghijklm/opqrstuvwxyz", false },
        { "env_", "env_../../../../../../../../..", false },
        { "", "abcdefghijklmnopqrstuvwxy\xc3", false },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++)
        if (util_id_valid(cases[i].prefix, cases[i].s) != cases[i].valid)
            fail_msg("util_id_valid(\"%s\", \"%s\") != %s", cases[i].prefix, cases[i].s,
                     cases[i].valid ? "true" : "false");
}

static void
test_random(void **state)
{
    unsigned char a[32], b[32];
    struct err *e = NULL;
    (void)state;

    ASSERT_NO_ERR(util_random(a, sizeof(a), &e), &e);
    ASSERT_NO_ERR(util_random(b, sizeof(b), &e), &e);
    assert_memory_not_equal(a, b, sizeof(a));
    ASSERT_NO_ERR(util_random(a, 0, &e), &e);
}

/* ------------------------------------------------------------- util_format_size */

struct fmt_size_case {
    uint64_t in;
    const char *want;
};

static void
test_format_size(void **state)
{
    static const struct fmt_size_case cases[] = {
        { 0, "0 B" },
        { 1, "1 B" },
        { 1023, "1023 B" },
        { 1024, "1 KiB" },
        { 1536, "1.5 KiB" },
        { 4096, "4 KiB" },
        { 512ULL << 20, "512 MiB" },
        { (1ULL << 20) + (512ULL << 10), "1.5 MiB" },
        { 16ULL << 30, "16 GiB" },
        { (3ULL << 30) / 2, "1.5 GiB" },
        { 1ULL << 40, "1 TiB" },
        { 1ULL << 50, "1 PiB" },
        { 1ULL << 60, "1024 PiB" }, /* PiB is the largest unit */
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char out[32];
        util_format_size(cases[i].in, out, sizeof(out));
        if (strcmp(out, cases[i].want) != 0)
            fail_msg("util_format_size(%ju) = \"%s\", want \"%s\"", (uintmax_t)cases[i].in, out,
                     cases[i].want);
    }
}

static void
test_format_size_truncates(void **state)
{
    char out[4];
    (void)state;

    memset(out, 'Z', sizeof(out));
    util_format_size(16ULL << 30, out, sizeof(out));
    assert_string_equal(out, "16 ");
}

/* ------------------------------------------------------------- util_format_time */

struct fmt_time_case {
    int64_t ms;
    const char *want;
};

static void
check_format_time(const struct fmt_time_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char out[32];
        util_format_time(cases[i].ms, out, sizeof(out));
        if (strcmp(out, cases[i].want) != 0)
            fail_msg("util_format_time(%jd) = \"%s\", want \"%s\"", (intmax_t)cases[i].ms, out,
                     cases[i].want);
    }
}

static void
test_format_time(void **state)
{
    static const struct fmt_time_case cases[] = {
        { 0, "1970-01-01T00:00:00.000Z" },
        { 1, "1970-01-01T00:00:00.001Z" },
        { 999, "1970-01-01T00:00:00.999Z" },
        { 1000, "1970-01-01T00:00:01.000Z" },
        { 86399999, "1970-01-01T23:59:59.999Z" },
        { 951782400000, "2000-02-29T00:00:00.000Z" },
        { 1700000000123, "2023-11-14T22:13:20.123Z" },
        { 253402300799999, "9999-12-31T23:59:59.999Z" },
    };
    (void)state;

    check_format_time(cases, ARRAY_LEN(cases));
}

static void
test_format_time_before_epoch(void **state)
{
    /* Before the epoch the milliseconds still count forward within the second. */
    static const struct fmt_time_case cases[] = {
        { -1000, "1969-12-31T23:59:59.000Z" },
        { -1, "1969-12-31T23:59:59.999Z" },
        { -1500, "1969-12-31T23:59:58.500Z" },
    };
    (void)state;

    check_format_time(cases, ARRAY_LEN(cases));
}

static void
test_now_ms(void **state)
{
    char out[32];
    int64_t a, b;
    (void)state;

    a = util_now_ms();
    util_format_time(a, out, sizeof(out));
    assert_int_equal(strlen(out), 24);
    assert_true(a > 1600000000000LL); /* after 2020 */
    b = util_now_ms();
    assert_true(b >= a);
    a = util_mono_ns();
    b = util_mono_ns();
    assert_true(b >= a);
}

/* -------------------------------------------------------- read_exact, write_all */

static void
test_read_exact_write_all(void **state)
{
    int p[2];
    char in[5000], out[5000];
    (void)state;

    for (size_t i = 0; i < sizeof(in); i++)
        in[i] = (char)(i * 7);
    assert_int_equal(pipe(p), 0);
    assert_int_equal(util_write_all(p[1], in, sizeof(in)), 0);
    assert_int_equal(util_read_exact(p[0], out, sizeof(out)), 0);
    assert_memory_equal(in, out, sizeof(in));

    /* Fewer bytes than asked for, then EOF: -1 with EIO. */
    assert_int_equal(util_write_all(p[1], "abc", 3), 0);
    close(p[1]);
    errno = 0;
    assert_int_equal(util_read_exact(p[0], out, 10), -1);
    assert_int_equal(errno, EIO);
    close(p[0]);

    /* Writing to a bad fd reports its errno. */
    errno = 0;
    assert_int_equal(util_write_all(-1, "x", 1), -1);
    assert_int_equal(errno, EBADF);
}

/* ------------------------------------------------------------ file helpers */

struct tmp_state {
    char *dir;
    int dirfd;
};

static int
tmp_teardown(void **state)
{
    struct tmp_state *t = *state;

    if (t == NULL)
        return 0;
    if (t->dirfd >= 0)
        close(t->dirfd);
    unit_rm_rf(t->dir);
    free(t->dir);
    free(t);
    *state = NULL;
    return 0;
}

static int
tmp_setup(void **state)
{
    struct tmp_state *t = xcalloc(1, sizeof(*t));

    *state = t;
    t->dirfd = -1;
    t->dir = unit_mkdtemp();
    if (t->dir != NULL)
        t->dirfd = open(t->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (t->dirfd < 0) {
        tmp_teardown(state); /* cmocka runs no teardown after a failed setup */
        return -1;
    }
    return 0;
}

static void
put_file(int dirfd, const char *name, const void *data, size_t len)
{
    int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

    assert_true(fd >= 0);
    assert_int_equal(util_write_all(fd, data, len), 0);
    close(fd);
}

static void
test_read_file_at(void **state)
{
    struct tmp_state *t = *state;
    struct err *e = NULL;
    char *data = NULL;
    size_t len = 0;
    enum {
        BIG = 20000
    }; /* more than one internal read chunk */
    char *big = xmalloc(BIG);

    for (size_t i = 0; i < BIG; i++)
        big[i] = (char)('a' + i % 26);
    put_file(t->dirfd, "big", big, BIG);

    /* Exactly at the cap: read whole, NUL-terminated. */
    ASSERT_NO_ERR(util_read_file_at(t->dirfd, "big", BIG, &data, &len, &e), &e);
    assert_int_equal(len, BIG);
    assert_memory_equal(data, big, BIG);
    assert_int_equal(data[BIG], '\0');
    free(data);
    data = NULL;

    /* One byte past the cap: ERR_LIMIT, nothing handed out. */
    assert_int_equal(util_read_file_at(t->dirfd, "big", BIG - 1, &data, &len, &e), -1);
    assert_null(data);
    ASSERT_ERR_CONTAINS(&e, ERR_LIMIT, "big");

    /* Missing: ERR_NOT_FOUND with the errno. */
    assert_int_equal(util_read_file_at(t->dirfd, "missing", 100, &data, &len, &e), -1);
    assert_null(data);
    assert_non_null(e);
    assert_int_equal(e->errnum, ENOENT);
    ASSERT_ERR_CONTAINS(&e, ERR_NOT_FOUND, "missing");

    /* Empty file: "" and length 0, even with a 0 cap; len_out may be NULL. */
    put_file(t->dirfd, "empty", "", 0);
    ASSERT_NO_ERR(util_read_file_at(t->dirfd, "empty", 0, &data, &len, &e), &e);
    assert_int_equal(len, 0);
    assert_string_equal(data, "");
    free(data);
    data = NULL;
    ASSERT_NO_ERR(util_read_file_at(t->dirfd, "empty", 10, &data, NULL, &e), &e);
    free(data);
    data = NULL;

    /* A directory cannot be read: ERR_IO. */
    assert_int_equal(mkdirat(t->dirfd, "sub", 0700), 0);
    assert_int_equal(util_read_file_at(t->dirfd, "sub", 100, &data, &len, &e), -1);
    ASSERT_ERR(&e, ERR_IO);
    free(big);
}

static size_t
count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    size_t n = 0;

    assert_non_null(d);
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

static void
test_write_file_at(void **state)
{
    struct tmp_state *t = *state;
    struct err *e = NULL;
    struct stat st;
    char *data = NULL;
    size_t len = 0;
    char old[8] = { 0 };
    int oldfd;
    mode_t saved_umask = umask(077);

    /* Create: content and the exact mode (not reduced by the umask). */
    ASSERT_NO_ERR(util_write_file_at(t->dirfd, "f", "one", 3, 0640, &e), &e);
    assert_int_equal(fstatat(t->dirfd, "f", &st, 0), 0);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0640);
    ASSERT_NO_ERR(util_read_file_at(t->dirfd, "f", 100, &data, &len, &e), &e);
    assert_string_equal(data, "one");
    free(data);
    data = NULL;

    /* Replace atomically: a reader holding the old file still sees the old content. */
    oldfd = openat(t->dirfd, "f", O_RDONLY | O_CLOEXEC);
    assert_true(oldfd >= 0);
    ASSERT_NO_ERR(util_write_file_at(t->dirfd, "f", "second", 6, 0600, &e), &e);
    assert_int_equal(pread(oldfd, old, sizeof(old) - 1, 0), 3);
    assert_string_equal(old, "one");
    close(oldfd);
    assert_int_equal(fstatat(t->dirfd, "f", &st, 0), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    ASSERT_NO_ERR(util_read_file_at(t->dirfd, "f", 100, &data, &len, &e), &e);
    assert_int_equal(len, 6);
    assert_string_equal(data, "second");
    free(data);
    data = NULL;

    /* Empty content. */
    ASSERT_NO_ERR(util_write_file_at(t->dirfd, "f", "", 0, 0600, &e), &e);
    assert_int_equal(fstatat(t->dirfd, "f", &st, 0), 0);
    assert_int_equal(st.st_size, 0);

    /* No temporary file is left behind. */
    assert_int_equal(count_entries(t->dir), 1);

    /* A symlink at the path is replaced, and its target left alone. */
    put_file(t->dirfd, "target", "keep", 4);
    assert_int_equal(symlinkat("target", t->dirfd, "link"), 0);
    ASSERT_NO_ERR(util_write_file_at(t->dirfd, "link", "new", 3, 0600, &e), &e);
    assert_int_equal(fstatat(t->dirfd, "link", &st, AT_SYMLINK_NOFOLLOW), 0);
    assert_true(S_ISREG(st.st_mode));
    ASSERT_NO_ERR(util_read_file_at(t->dirfd, "target", 100, &data, &len, &e), &e);
    assert_string_equal(data, "keep");
    free(data);
    data = NULL;

    /* Missing parent directory: ERR_IO, nothing created. */
    assert_int_equal(util_write_file_at(t->dirfd, "nodir/f", "x", 1, 0600, &e), -1);
    ASSERT_ERR(&e, ERR_IO);
    assert_int_equal(count_entries(t->dir), 3);
    umask(saved_umask);
}

static void
test_mkdir_p(void **state)
{
    struct tmp_state *t = *state;
    struct err *e = NULL;
    struct stat st;
    mode_t saved_umask = umask(022);
    char *deep = xasprintf("%s/a/b/c", t->dir);
    char *slash = xasprintf("%s/x/y/", t->dir);
    char *dslash = xasprintf("%s//p//q", t->dir);
    char *through_file = xasprintf("%s/file/sub", t->dir);
    int cwd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    ASSERT_NO_ERR(util_mkdir_p(deep, 0700, &e), &e);
    assert_int_equal(stat(deep, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0700);
    assert_int_equal(fstatat(t->dirfd, "a", &st, 0), 0);
    assert_int_equal(st.st_mode & 0777, 0700);

    /* Idempotent. */
    ASSERT_NO_ERR(util_mkdir_p(deep, 0700, &e), &e);
    /* Trailing and doubled slashes. */
    ASSERT_NO_ERR(util_mkdir_p(slash, 0755, &e), &e);
    assert_int_equal(fstatat(t->dirfd, "x/y", &st, 0), 0);
    assert_true(S_ISDIR(st.st_mode));
    ASSERT_NO_ERR(util_mkdir_p(dslash, 0755, &e), &e);
    assert_int_equal(fstatat(t->dirfd, "p/q", &st, 0), 0);
    assert_true(S_ISDIR(st.st_mode));

    /* A component that is a file: ERR_IO naming it. */
    put_file(t->dirfd, "file", "x", 1);
    assert_int_equal(util_mkdir_p(through_file, 0700, &e), -1);
    ASSERT_ERR_CONTAINS(&e, ERR_IO, "file");

    /* Relative to the current directory. */
    assert_true(cwd >= 0);
    assert_int_equal(fchdir(t->dirfd), 0);
    ASSERT_NO_ERR(util_mkdir_p("rel/one", 0700, &e), &e);
    assert_int_equal(fchdir(cwd), 0);
    close(cwd);
    assert_int_equal(fstatat(t->dirfd, "rel/one", &st, 0), 0);
    assert_true(S_ISDIR(st.st_mode));

    umask(saved_umask);
    free(deep);
    free(slash);
    free(dslash);
    free(through_file);
}

static int
mkdir_p_empty(void *arg)
{
    struct err *e = NULL;
    int r;

    (void)arg;
    r = util_mkdir_p("", 0700, &e);
    err_free(e);
    /* Any clean answer is fine (mkdir("") is ENOENT); what matters is no invalid read. */
    return r == -1 || r == 0 ? 0 : 1;
}

static void
test_mkdir_p_empty(void **state)
{
    int st;
    (void)state;

    /* In a child: util_mkdir_p("") scans past the end of its 1-byte copy of the path. */
    st = unit_run_in_child(mkdir_p_empty, NULL, false);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

/* util_build_id() reads the same note readelf shows for this very executable. */
static void
test_build_id(void **state)
{
    char cmd[64], line[256], want[160] = "";
    FILE *f;

    (void)state;
    snprintf(cmd, sizeof(cmd), "readelf -n /proc/%d/exe 2>/dev/null", (int)getpid());
    f = popen(cmd, "r");
    assert_non_null(f);
    while (fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, " Build ID: %159s", want) == 1)
            break;
    pclose(f);
    if (want[0] == '\0') {
        /* The linker made no note (or readelf is missing): then the answer is "unknown". */
        assert_string_equal(util_build_id(), "unknown");
        return;
    }
    assert_string_equal(util_build_id(), want);
    assert_ptr_equal(util_build_id(), util_build_id()); /* read once */
}

static void
test_key_file(void **state)
{
    char *dir = unit_mkdtemp(), path[256], bad[256];
    unsigned char k1[32], k2[32], k3[16];
    struct stat st;
    struct err *e = NULL;
    int fd;

    (void)state;
    assert_non_null(dir);
    snprintf(path, sizeof(path), "%s/k", dir);
    assert_int_equal(util_key_file(path, k1, sizeof(k1), &e), 0);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(st.st_size, 32);
    /* Made once: the next caller reads the same key back. */
    assert_int_equal(util_key_file(path, k2, sizeof(k2), &e), 0);
    assert_memory_equal(k1, k2, sizeof(k1));
    /* A file of another size is an error naming it, and stays as it was. */
    assert_int_equal(util_key_file(path, k3, sizeof(k3), &e), -1);
    assert_non_null(strstr(e->msg, "16-byte key"));
    err_free(e);
    e = NULL;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 32);
    /* No temporary file is left behind. */
    snprintf(bad, sizeof(bad), "%s/k.%d", dir, (int)getpid());
    assert_int_equal(access(bad, F_OK), -1);
    /* An empty file (a maker that died mid-write under the old scheme) is refused too. */
    snprintf(bad, sizeof(bad), "%s/empty", dir);
    fd = open(bad, O_WRONLY | O_CREAT, 0600);
    close(fd);
    assert_int_equal(util_key_file(bad, k1, sizeof(k1), &e), -1);
    err_free(e);
    unit_rm_rf(dir);
    free(dir);
}

/* Values are counted outside strings only, and the count stops at the cap. */
static void
test_json_values_within(void **state)
{
    static const struct {
        const char *s;
        size_t max;
        bool ok;
    } cases[] = {
        { "{}", 1, true },
        { "[{},{}]", 4, true },
        { "[{},{}]", 3, false },
        { "[1,2,3]", 3, true },
        { "[1,2,3]", 2, false },
        { "\"a,b,c,[{\"", 1, true },            /* inside a string: not values */
        { "\"a\\\",[,[\"", 1, true },           /* an escaped quote keeps the string open */
        { "{\"k\":\"v\\\\\",[1,2]}", 4, true }, /* an escaped backslash ends nothing */
        { "{\"k\":\"v\\\\\",[1,2]}", 3, false },
        { "1", 0, true },
    };
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (util_json_values_within(cases[i].s, strlen(cases[i].s), cases[i].max) != cases[i].ok)
            fail_msg("case %zu (%s): want %s", i, cases[i].s, cases[i].ok ? "within" : "over");
    assert_true(util_json_values_within(NULL, 0, 1));
}

/* Well-formed UTF-8 only (RFC 3629): what JSON may carry. */
static void
test_utf8_valid(void **state)
{
    static const struct {
        const char *s;
        size_t len;
        bool ok;
    } cases[] = {
        { "", 0, true },
        { "plain ascii", 11, true },
        { "caf\xc3\xa9", 5, true },
        { "\xe2\x82\xac", 3, true },     /* U+20AC */
        { "\xf0\x9f\x98\x80", 4, true }, /* U+1F600 */
        { "\xf4\x8f\xbf\xbf", 4, true }, /* U+10FFFF, the last */
        { "\xff", 1, false },
        { "\x80", 1, false }, /* a continuation byte first */
        { "\xc3", 1, false }, /* cut short */
        { "\xe2\x82", 2, false },
        { "\xc3\x28", 2, false },         /* not a continuation */
        { "\xc0\xaf", 2, false },         /* overlong '/' */
        { "\xe0\x80\xaf", 3, false },     /* overlong '/' */
        { "\xf0\x80\x80\xaf", 4, false }, /* overlong '/' */
        { "\xed\xa0\x80", 3, false },     /* U+D800, a surrogate */
        { "\xf4\x90\x80\x80", 4, false }, /* above U+10FFFF */
        { "\xf5\x80\x80\x80", 4, false },
        { "ok\xe9", 3, false }, /* Latin-1 */
    };
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (util_utf8_valid(cases[i].s, cases[i].len) != cases[i].ok)
            fail_msg("case %zu: want %s", i, cases[i].ok ? "valid" : "invalid");
}

int
test_util_run(void)
{
    static const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_deadline),
        cmocka_unit_test(test_utf8_valid),
        cmocka_unit_test(test_json_values_within),
        cmocka_unit_test(test_parse_size_good),
        cmocka_unit_test(test_parse_size_bad),
        cmocka_unit_test(test_parse_size_null),
        cmocka_unit_test(test_parse_u64),
        cmocka_unit_test(test_parse_u64_null),
        cmocka_unit_test(test_id_new_form),
        cmocka_unit_test(test_id_new_unique),
        cmocka_unit_test(test_id_new_short_buffer_aborts),
        cmocka_unit_test(test_id_valid),
        cmocka_unit_test(test_random),
        cmocka_unit_test(test_key_file),
        cmocka_unit_test(test_format_size),
        cmocka_unit_test(test_format_size_truncates),
        cmocka_unit_test(test_format_time),
        cmocka_unit_test(test_format_time_before_epoch),
        cmocka_unit_test(test_now_ms),
        cmocka_unit_test(test_read_exact_write_all),
        cmocka_unit_test_setup_teardown(test_read_file_at, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_write_file_at, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_mkdir_p, tmp_setup, tmp_teardown),
        cmocka_unit_test(test_mkdir_p_empty),
        cmocka_unit_test(test_build_id),
    };

    return cmocka_run_group_tests_name("common/util", tests, NULL, NULL);
}
