/* Tests for src/common/log.c: escaping of untrusted bytes and the two line formats. */
#include <jansson.h>

#include "../unit.h"

#include "suites.h"

struct escape_case {
    const char *in;
    size_t len;
    size_t max;
    const char *want;
};

#define S(lit) lit, sizeof(lit) - 1

static void
test_log_escape(void **state)
{
    static const struct escape_case cases[] = {
        { S(""), 100, "" },
        { S("plain text 123 ~!@#$%^&*()"), 100, "plain text 123 ~!@#$%^&*()" },
        { S("a\nb"), 100, "a\\nb" },
        { S("a\tb"), 100, "a\\tb" },
        { S("back\\slash"), 100, "back\\\\slash" },
        { S("\r"), 100, "\\x0d" },
        { S("\x01\x02\x1f"), 100, "\\x01\\x02\\x1f" },
        { S("\x7f"), 100, "\\x7f" },
        { S("\x80\xff"), 100, "\\x80\\xff" },
        { S("\xc3\xa9"), 100, "\\xc3\\xa9" }, /* UTF-8 is escaped byte by byte */
        { S("\x1b[31mred\x1b[0m"), 100, "\\x1b[31mred\\x1b[0m" },
        { S("a\0b"), 100, "a\\x00b" }, /* embedded NUL */
        /* Cuts: at most max input bytes, then "...". */
        { S("abcdef"), 3, "abc..." },
        { S("abcdef"), 6, "abcdef" },
        { S("abcdef"), 7, "abcdef" },
        { S("abcdef"), 0, "..." },
        { S("\n\n\n\n"), 2, "\\n\\n..." },
        { S("\xff\xff\xff"), 1, "\\xff..." },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char *got = log_escape(cases[i].in, cases[i].len, cases[i].max);
        if (strcmp(got, cases[i].want) != 0)
            fail_msg("case %zu: log_escape = \"%s\", want \"%s\"", i, got, cases[i].want);
        free(got);
    }
}

static void
test_log_escape_all_bytes(void **state)
{
    unsigned char all[256];
    char *got;
    (void)state;

    for (int i = 0; i < 256; i++)
        all[i] = (unsigned char)i;
    got = log_escape(all, sizeof(all), sizeof(all));
    /* Whatever the input, the output is printable ASCII only. */
    for (const char *p = got; *p != '\0'; p++)
        if (*p < 0x20 || *p >= 0x7f)
            fail_msg("unprintable byte 0x%02x in escaped output", (unsigned char)*p);
    free(got);
}

/* Captures what fn writes to stderr; the result is owned. */
static char *
capture_stderr(void (*fn)(void))
{
    char *dir = unit_mkdtemp();
    char *path;
    int fd, saved;
    char *out = NULL;
    struct err *e = NULL;

    assert_non_null(dir);
    path = xasprintf("%s/stderr", dir);
    fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    fflush(stderr);
    saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    dup2(fd, STDERR_FILENO);
    fn();
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(fd);
    ASSERT_NO_ERR(util_read_file_at(AT_FDCWD, path, 65536, &out, NULL, &e), &e);
    unit_rm_rf(dir);
    free(path);
    free(dir);
    return out;
}

static void
log_text_lines(void)
{
    log_init("unit", LOG_LEVEL_WARN, LOG_FORMAT_TEXT);
    log_info("hidden %d", 1); /* below the level */
    log_debug("hidden %d", 2);
    log_warnx("shown %d", 3);
    errno = ENOENT;
    log_warn("open %s", "/nope");
    log_error("bad %s", "thing");
    /* Text from outside, quoted in a message: it can neither forge a line nor drive the
     * terminal, and a quote or UTF-8 in a plain message is left as it is. */
    log_warnx("the model stopped: %s", "weird\nunit: FORGED line \x1b[31mred");
    log_warnx("plain \"quoted\" caf\xc3\xa9");
    log_init("paddock", LOG_LEVEL_WARN, LOG_FORMAT_TEXT);
}

static void
test_log_text(void **state)
{
    char *got = capture_stderr(log_text_lines);
    char *want = xasprintf("unit: shown 3\nunit: open /nope: %s\nunit: bad thing\n"
                           "unit: the model stopped: weird\\nunit: FORGED line \\x1b[31mred\n"
                           "unit: plain \"quoted\" caf\xc3\xa9\n",
                           strerror(ENOENT));
    (void)state;

    assert_string_equal(got, want);
    free(got);
    free(want);
}

static const char json_msg[] = "quote\" back\\ nl\n ctl\x01 tab\t end";

static void
log_json_lines(void)
{
    struct err *e = NULL;

    log_init("unit", LOG_LEVEL_DEBUG, LOG_FORMAT_JSON);
    log_debug("%s", json_msg);
    err_set(&e, ERR_IO, 0, "%s", "from log_err");
    log_err(e);
    err_free(e);
    log_init("paddock", LOG_LEVEL_WARN, LOG_FORMAT_TEXT);
}

static void
test_log_json(void **state)
{
    char *got = capture_stderr(log_json_lines);
    char *line2 = strchr(got, '\n');
    json_error_t jerr;
    json_t *j;
    const char *t;
    (void)state;

    assert_non_null(line2);
    *line2++ = '\0';
    /* Each line is one JSON object whose msg decodes back to the original text. */
    j = json_loads(got, 0, &jerr);
    if (j == NULL)
        fail_msg("not JSON: %s (%s)", got, jerr.text);
    assert_string_equal(json_string_value(json_object_get(j, "level")), "debug");
    assert_string_equal(json_string_value(json_object_get(j, "msg")), json_msg);
    t = json_string_value(json_object_get(j, "time"));
    assert_non_null(t);
    assert_int_equal(strlen(t), 24);
    assert_int_equal(t[23], 'Z');
    json_decref(j);

    j = json_loads(line2, JSON_DISABLE_EOF_CHECK, &jerr);
    if (j == NULL)
        fail_msg("not JSON: %s (%s)", line2, jerr.text);
    assert_string_equal(json_string_value(json_object_get(j, "level")), "error");
    assert_string_equal(json_string_value(json_object_get(j, "msg")), "from log_err");
    json_decref(j);
    free(got);
}

int
test_log_run(void)
{
    static const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_log_escape),
        cmocka_unit_test(test_log_escape_all_bytes),
        cmocka_unit_test(test_log_text),
        cmocka_unit_test(test_log_json),
    };

    return cmocka_run_group_tests_name("common/log", tests, NULL, NULL);
}
