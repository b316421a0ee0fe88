/*
 * Tests for util_hexval() (the hex digits of percent-decoding) and log_fields() (the request
 * log line) from src/common/. log_fields() output is captured by pointing stderr at a temp
 * file; its values come from clients, so most cases are hostile bytes.
 */
#include <jansson.h>

#include "../unit.h"

#include "suites.h"

/* ----------------------------------------------------------------- hexval */

static void
test_hexval_all_bytes(void **state)
{
    static const char lower[] = "0123456789abcdef";
    static const char upper[] = "0123456789ABCDEF";
    (void)state;

    /* Every char value, signed ones included: only the 22 hex digits have a value. */
    for (int c = CHAR_MIN; c <= CHAR_MAX; c++) {
        int want = -1;
        for (int d = 0; d < 16; d++)
            if ((char)c == lower[d] || (char)c == upper[d])
                want = d;
        if (util_hexval((char)c) != want)
            fail_msg("util_hexval(0x%02x) = %d, want %d", (unsigned char)c, util_hexval((char)c),
                     want);
    }
}

static void
test_hexval_table(void **state)
{
    static const struct {
        char c;
        int want;
    } cases[] = {
        { '0', 0 },  { '9', 9 },  { 'a', 10 },  { 'f', 15 },        { 'A', 10 },
        { 'F', 15 }, { 'g', -1 }, { 'G', -1 },  { '/', -1 },        { ':', -1 },
        { '@', -1 }, { '`', -1 }, { ' ', -1 },  { '%', -1 },        { '+', -1 },
        { '-', -1 }, { 'x', -1 }, { '\0', -1 }, { (char)0xb0, -1 }, { (char)0xe1, -1 },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++)
        if (util_hexval(cases[i].c) != cases[i].want)
            fail_msg("case %zu: util_hexval('%c') = %d, want %d", i, cases[i].c,
                     util_hexval(cases[i].c), cases[i].want);
}

/* ------------------------------------------------------------- log_fields */

/* Runs fn with stderr on a temp file and returns what it wrote (owned). */
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
    assert_int_equal(dup2(fd, STDERR_FILENO), STDERR_FILENO);
    fn();
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(fd);
    ASSERT_NO_ERR(util_read_file_at(AT_FDCWD, path, 1u << 20, &out, NULL, &e), &e);
    unit_rm_rf(dir);
    free(path);
    free(dir);
    return out;
}

static void
log_reset(void)
{
    log_init("paddock", LOG_LEVEL_WARN, LOG_FORMAT_TEXT);
}

/* Fails unless every byte of s is printable ASCII or a line end. */
static void
assert_printable_lines(const char *s)
{
    for (const char *p = s; *p != '\0'; p++)
        if (*p != '\n' && (*p < 0x20 || *p >= 0x7f))
            fail_msg("raw byte 0x%02x at offset %td of the log output", (unsigned char)*p, p - s);
}

/* Splits out into lines (in place); returns how many, at most max. Each must end in \n. */
static size_t
split_lines(char *out, char **lines, size_t max)
{
    size_t n = 0;
    char *p = out;

    while (*p != '\0') {
        char *nl = strchr(p, '\n');
        if (nl == NULL)
            fail_msg("log output does not end with a newline: %s", p);
        *nl = '\0';
        if (n < max)
            lines[n] = p;
        n++;
        p = nl + 1;
    }
    return n;
}

/* Parses one line as exactly one JSON object. */
static json_t *
parse_line(const char *line)
{
    json_error_t jerr;
    json_t *j = json_loads(line, 0, &jerr);

    if (j == NULL)
        fail_msg("not one JSON value: %.300s (%s at column %d)", line, jerr.text, jerr.column);
    if (!json_is_object(j))
        fail_msg("not a JSON object: %.300s", line);
    return j;
}

static const char *
jstr(json_t *j, const char *key)
{
    const char *v = json_string_value(json_object_get(j, key));

    if (v == NULL)
        fail_msg("no string field \"%s\"", key);
    return v;
}

/* The fields of the cases below: key, value as given, text rendering of the pair. */
struct field_case {
    const char *key;
    const char *value;
    const char *text;
};

static const struct field_case field_cases[] = {
    { "method", "GET", "method=GET" },
    { "path", "/v1/environments", "path=/v1/environments" },
    { "spaced", "a b", "spaced=\"a b\"" },
    { "empty", "", "empty=\"\"" },
    { "eq", "k=v", "eq=\"k=v\"" },
    { "quote", "say \"hi\"", "quote=\"say \\\"hi\\\"\"" },
    { "bare_quote", "x\"y", "bare_quote=x\\\"y" },
    { "backslash", "a\\b", "backslash=a\\\\b" },
    { "newline", "a\nb", "newline=a\\nb" },
    { "crlf", "a\r\nFAKE level=error", "crlf=\"a\\x0d\\nFAKE level=error\"" },
    { "tab", "a\tb", "tab=a\\tb" },
    { "esc", "\x1b[31mred", "esc=\\x1b[31mred" },
    { "utf8", "caf\xc3\xa9", "utf8=caf\\xc3\\xa9" },
    { "high", "\x80\xff", "high=\\x80\\xff" },
    { "del", "\x7f", "del=\\x7f" },
};

static void
emit_field_cases(void)
{
    const char *kv[2 * ARRAY_LEN(field_cases)];

    for (size_t i = 0; i < ARRAY_LEN(field_cases); i++) {
        kv[2 * i] = field_cases[i].key;
        kv[2 * i + 1] = field_cases[i].value;
    }
    log_fields(LOG_LEVEL_INFO, "request", kv, ARRAY_LEN(kv));
}

static void
log_text_fields(void)
{
    log_init("unit", LOG_LEVEL_INFO, LOG_FORMAT_TEXT);
    emit_field_cases();
    log_reset();
}

static void
test_log_fields_text(void **state)
{
    char *got = capture_stderr(log_text_fields);
    struct buf want;
    (void)state;

    buf_init(&want, 1u << 16);
    buf_printf(&want, NULL, "unit: request");
    for (size_t i = 0; i < ARRAY_LEN(field_cases); i++)
        buf_printf(&want, NULL, " %s", field_cases[i].text);
    buf_printf(&want, NULL, "\n");
    assert_printable_lines(got);
    assert_string_equal(got, want.data);
    buf_free(&want);
    free(got);
}

static void
log_json_fields(void)
{
    log_init("unit", LOG_LEVEL_INFO, LOG_FORMAT_JSON);
    emit_field_cases();
    log_reset();
}

static void
test_log_fields_json(void **state)
{
    char *got = capture_stderr(log_json_fields);
    char *lines[4];
    json_t *j;
    const char *t;
    (void)state;

    assert_printable_lines(got); /* no raw control or non-ASCII byte reaches the log */
    assert_int_equal(split_lines(got, lines, ARRAY_LEN(lines)), 1);
    j = parse_line(lines[0]);
    assert_string_equal(jstr(j, "level"), "info");
    assert_string_equal(jstr(j, "msg"), "request");
    t = jstr(j, "time");
    assert_int_equal(strlen(t), 24); /* 2024-01-02T03:04:05.678Z */
    assert_int_equal(t[10], 'T');
    assert_int_equal(t[23], 'Z');
    assert_int_equal(json_object_size(j), 3 + ARRAY_LEN(field_cases));
    for (size_t i = 0; i < ARRAY_LEN(field_cases); i++) {
        const char *v = jstr(j, field_cases[i].key);
        bool ascii = true;
        for (const char *p = field_cases[i].value; *p != '\0'; p++)
            if ((unsigned char)*p >= 0x80)
                ascii = false;
        /* ASCII values, control characters included, decode back to exactly what was given. */
        if (ascii && strcmp(v, field_cases[i].value) != 0)
            fail_msg("field %s decoded to \"%s\"", field_cases[i].key, v);
    }
    /* Non-ASCII bytes are escaped one by one; the ASCII around them is intact. */
    assert_true(strncmp(jstr(j, "utf8"), "caf", 3) == 0);
    assert_true(strlen(jstr(j, "utf8")) > 3);
    assert_true(strlen(jstr(j, "high")) > 0);
    json_decref(j);
    free(got);
}

static void
log_json_msg_escaped(void)
{
    static const char *const kv[] = { "k", "v" };

    log_init("unit", LOG_LEVEL_DEBUG, LOG_FORMAT_JSON);
    log_fields(LOG_LEVEL_WARN, "msg \"quoted\"\nsecond\\line", kv, 2);
    log_fields(LOG_LEVEL_ERROR, "two", kv, 2);
    log_fields(LOG_LEVEL_DEBUG, "three", NULL, 0);
    log_reset();
}

static void
test_log_fields_json_lines(void **state)
{
    char *got = capture_stderr(log_json_msg_escaped);
    char *lines[8];
    static const char *const want_level[] = { "warn", "error", "debug" };
    static const char *const want_msg[] = { "msg \"quoted\"\nsecond\\line", "two", "three" };
    (void)state;

    /* One event per line, even when the message holds a newline. */
    assert_int_equal(split_lines(got, lines, ARRAY_LEN(lines)), 3);
    for (size_t i = 0; i < 3; i++) {
        json_t *j = parse_line(lines[i]);
        assert_string_equal(jstr(j, "level"), want_level[i]);
        assert_string_equal(jstr(j, "msg"), want_msg[i]);
        if (i < 2)
            assert_string_equal(jstr(j, "k"), "v");
        else
            assert_int_equal(json_object_size(j), 3);
        json_decref(j);
    }
    free(got);
}

static void
log_levels(void)
{
    static const char *const kv[] = { "n", "1" };

    log_init("unit", LOG_LEVEL_WARN, LOG_FORMAT_TEXT);
    log_fields(LOG_LEVEL_DEBUG, "hidden-debug", kv, 2);
    log_fields(LOG_LEVEL_INFO, "hidden-info", kv, 2);
    log_fields(LOG_LEVEL_WARN, "shown-warn", kv, 2);
    log_fields(LOG_LEVEL_ERROR, "shown-error", kv, 2);
    log_init("unit", LOG_LEVEL_ERROR, LOG_FORMAT_JSON);
    log_fields(LOG_LEVEL_WARN, "hidden-warn", kv, 2);
    log_reset();
}

static void
test_log_fields_level(void **state)
{
    char *got = capture_stderr(log_levels);
    (void)state;

    assert_string_equal(got, "unit: shown-warn n=1\nunit: shown-error n=1\n");
    free(got);
}

static void
log_odd_pairs(void)
{
    static const char *const kv[] = { "a", "1", "b", NULL, "dangling" };

    log_init("unit", LOG_LEVEL_INFO, LOG_FORMAT_TEXT);
    log_fields(LOG_LEVEL_INFO, "odd", kv, ARRAY_LEN(kv));
    log_fields(LOG_LEVEL_INFO, "none", NULL, 0);
    log_init("unit", LOG_LEVEL_INFO, LOG_FORMAT_JSON);
    log_fields(LOG_LEVEL_INFO, "odd", kv, ARRAY_LEN(kv));
    log_reset();
}

static void
test_log_fields_odd_and_null(void **state)
{
    char *got = capture_stderr(log_odd_pairs);
    char *lines[4];
    json_t *j;
    (void)state;

    /* A NULL value is logged as empty; a key without a value is dropped. */
    assert_int_equal(split_lines(got, lines, ARRAY_LEN(lines)), 3);
    assert_string_equal(lines[0], "unit: odd a=1 b=\"\"");
    assert_string_equal(lines[1], "unit: none");
    j = parse_line(lines[2]);
    assert_string_equal(jstr(j, "a"), "1");
    assert_string_equal(jstr(j, "b"), "");
    assert_null(json_object_get(j, "dangling"));
    json_decref(j);
    free(got);
}

static char long_value[3000];

static void
log_long_value(void)
{
    static const char *const kv[] = { "big", long_value, "after", "x" };

    memset(long_value, 'v', sizeof(long_value) - 1);
    long_value[sizeof(long_value) - 1] = '\0';
    log_init("unit", LOG_LEVEL_INFO, LOG_FORMAT_JSON);
    log_fields(LOG_LEVEL_INFO, "long", kv, ARRAY_LEN(kv));
    log_init("unit", LOG_LEVEL_INFO, LOG_FORMAT_TEXT);
    log_fields(LOG_LEVEL_INFO, "long", kv, ARRAY_LEN(kv));
    log_reset();
}

static void
test_log_fields_long_value(void **state)
{
    char *got = capture_stderr(log_long_value);
    char *lines[4];
    char want[1024 + 4];
    json_t *j;
    (void)state;

    /* A value is cut to its first 1024 bytes, marked "...", and later fields still follow. */
    memset(want, 'v', 1024);
    memcpy(want + 1024, "...", 4);
    assert_int_equal(split_lines(got, lines, ARRAY_LEN(lines)), 2);
    j = parse_line(lines[0]);
    assert_string_equal(jstr(j, "big"), want);
    assert_string_equal(jstr(j, "after"), "x");
    json_decref(j);
    assert_true(strncmp(lines[1], "unit: long big=", 15) == 0);
    assert_string_equal(lines[1] + 15 + 1027, " after=x");
    free(got);
}

static char hostile[1100];

static void
log_many_hostile_fields(void)
{
    enum {
        N = 12
    };
    static const char *const keys[N] = { "f0", "f1", "f2", "f3", "f4",  "f5",
                                         "f6", "f7", "f8", "f9", "f10", "f11" };
    const char *kv[2 * N];

    memset(hostile, 0xff, sizeof(hostile) - 1);
    hostile[sizeof(hostile) - 1] = '\0';
    for (size_t i = 0; i < N; i++) {
        kv[2 * i] = keys[i];
        kv[2 * i + 1] = hostile;
    }
    log_init("unit", LOG_LEVEL_INFO, LOG_FORMAT_JSON);
    log_fields(LOG_LEVEL_INFO, "many", kv, ARRAY_LEN(kv));
    log_reset();
}

/*
 * Regression (found by this test): when the escaped fields of one log_fields() call exceed its 64 KiB line buffer, the
 * buffer frees itself on the failed append but log_fields keeps appending to it, so
 * the line written is only the tail: the fields after the overflow and "}\n". Input: JSON
 * format, 12 fields each holding 1099 bytes of 0xff (escaped to 6 * 1024 + 3 bytes each).
 * Expected: one JSON object (all fields, or a cut marked as such); actual: the line
 * ',"f11":"\u00ff\u00ff...\u00ff..."}' (only the field after the overflow), which is not
 * JSON and has no time, level or msg. Text format fails the same way past 64 KiB.
 */
static void
test_log_fields_overflow(void **state)
{
    char *got;
    char *lines[4];
    json_t *j;
    (void)state;

    got = capture_stderr(log_many_hostile_fields);
    assert_printable_lines(got);
    assert_int_equal(split_lines(got, lines, ARRAY_LEN(lines)), 1);
    j = parse_line(lines[0]);
    assert_string_equal(jstr(j, "msg"), "many");
    assert_string_equal(jstr(j, "level"), "info");
    json_decref(j);
    free(got);
}

int
test_codec_log_run(void)
{
    static const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hexval_all_bytes),
        cmocka_unit_test(test_hexval_table),
        cmocka_unit_test(test_log_fields_text),
        cmocka_unit_test(test_log_fields_json),
        cmocka_unit_test(test_log_fields_json_lines),
        cmocka_unit_test(test_log_fields_level),
        cmocka_unit_test(test_log_fields_odd_and_null),
        cmocka_unit_test(test_log_fields_long_value),
        cmocka_unit_test(test_log_fields_overflow),
    };

    return cmocka_run_group_tests_name("common/codec_log", tests, NULL, NULL);
}
