/*
 * Tests for src/api/codec.c: strict base64 (the inline file contents of requests), percent
 * decoding of paths and query strings, mime types by extension and id prefixes. Everything
 * here decodes bytes a client sent, so most cases are malformed input.
 */
#include <jansson.h>
#include <microhttpd.h>

#include "../unit.h"

#include "api/api_int.h"
#include "suites.h"

#define S(lit) lit, sizeof(lit) - 1

/* ----------------------------------------------------------------- base64 */

struct b64_case {
    const char *in;
    size_t len;
    const char *want; /* NULL: must be rejected */
    size_t want_len;
};

#define B64_OK(in, out)             \
    {                               \
        S(in), out, sizeof(out) - 1 \
    }
#define B64_BAD(in)    \
    {                  \
        S(in), NULL, 0 \
    }

/* Checks every case, printing each mismatch, then fails once if any did not match. */
static void
check_b64_cases(const struct b64_case *cases, size_t n_cases)
{
    int bad = 0;

    for (size_t i = 0; i < n_cases; i++) {
        char *out = NULL;
        size_t out_len = 12345;
        int rc = api_b64_decode(cases[i].in, cases[i].len, &out, &out_len);
        cleanup_free char *shown = log_escape(cases[i].in, cases[i].len, 64);

        if (cases[i].want == NULL) {
            if (rc != -1 || out != NULL || out_len != 12345) {
                print_error("case %zu: \"%s\" decoded (%zu bytes), want rejected\n", i, shown,
                            out_len);
                bad++;
            }
        } else if (rc != 0) {
            print_error("case %zu: \"%s\" rejected, want %zu bytes\n", i, shown, cases[i].want_len);
            bad++;
        } else if (out_len != cases[i].want_len || memcmp(out, cases[i].want, out_len) != 0) {
            print_error("case %zu: \"%s\" decoded to %zu bytes, want %zu\n", i, shown, out_len,
                        cases[i].want_len);
            bad++;
        }
        free(out);
    }
    if (bad > 0)
        fail_msg("%d of %zu base64 cases wrong", bad, n_cases);
}

static void
test_b64_decode_good(void **state)
{
    static const struct b64_case cases[] = {
        B64_OK("", ""),
        B64_OK("QQ==", "A"),
        B64_OK("QUI=", "AB"),
        B64_OK("QUJD", "ABC"),
        B64_OK("QUJDRA==", "ABCD"),
        B64_OK("QUJDREU=", "ABCDE"),
        B64_OK("QUJDREVG", "ABCDEF"),
        B64_OK("AAAA", "\0\0\0"),
        B64_OK("AA==", "\0"),
        B64_OK("+/+/", "\xfb\xff\xbf"),
        B64_OK("////", "\xff\xff\xff"),
        B64_OK("aGVsbG8gd29ybGQ=", "hello world"),
    };
    (void)state;

    check_b64_cases(cases, ARRAY_LEN(cases));
}

static void
test_b64_decode_bad(void **state)
{
    static const struct b64_case cases[] = {
        /* Lengths that are not a multiple of 4 (unpadded input included). */
        B64_BAD("Q"),
        B64_BAD("QQ"),
        B64_BAD("QQ="),
        B64_BAD("QUJ"),
        B64_BAD("QUJDR"),
        B64_BAD("QUJDRA"),
        B64_BAD("QUJDRA="),
        B64_BAD("QQ==="),
        /* Whitespace anywhere, which OpenSSL would skip. */
        B64_BAD("QQ==\n"),
        B64_BAD("\nQQ=="),
        B64_BAD("QU\nJD"),
        B64_BAD("QU\r\nJD"),
        B64_BAD("QU JD"),
        B64_BAD(" QUJDRA=="), /* multiple of 4 with the space */
        B64_BAD("QUJ\tD==="),
        B64_BAD("QUJ\v"),
        B64_BAD("QUJ\f"),
        /* Characters outside the alphabet, including the URL-safe ones and NUL. */
        B64_BAD("QUJ!"),
        B64_BAD("QUJ_"),
        B64_BAD("QU.D"),
        B64_BAD("QUJ\0"),
        B64_BAD("QUJ\x80"),
        B64_BAD("QUJ\xff"),
        B64_BAD("\xc3\xa9QQ"),
        /* Padding in the wrong place or too much of it. */
        B64_BAD("===="),
        B64_BAD("Q==="),
        B64_BAD("=QQQ"),
        B64_BAD("Q=QQ"),
        B64_BAD("QQ=A"),
        B64_BAD("QQ==QQ=="),
        B64_BAD("QUJD===="),
    };
    (void)state;

    check_b64_cases(cases, ARRAY_LEN(cases));
}

/*
 * Regression (found by this test): api_b64_decode accepted '-' and ignores what follows it. OpenSSL's EVP_DecodeUpdate
 * treats '-' as an end-of-data marker (for PEM), so after a complete quantum the rest is
 * dropped: "QUJD----", "QUJD-!!!" and "QUJD-QUJDREVG===" all decode to "ABC", and "----"
 * to zero bytes, instead of being rejected as characters outside the alphabet.
 */
static void
test_b64_decode_dash(void **state)
{
    static const struct b64_case cases[] = {
        B64_BAD("QUJD----"), B64_BAD("QUJD-!!!"), B64_BAD("QUJD-QUJDREVG==="),
        B64_BAD("QU-D"),     B64_BAD("----"),
    };
    (void)state;

    check_b64_cases(cases, ARRAY_LEN(cases));
}

static void
b64_roundtrip(const unsigned char *data, size_t len)
{
    char *enc = api_b64_encode(data, len);
    char *dec = NULL;
    size_t dec_len = 0;

    assert_non_null(enc);
    if (strlen(enc) != 4 * ((len + 2) / 3))
        fail_msg("len %zu: encoded length %zu, want %zu", len, strlen(enc), 4 * ((len + 2) / 3));
    if (api_b64_decode(enc, strlen(enc), &dec, &dec_len) != 0)
        fail_msg("len %zu: decoding \"%s\" failed", len, enc);
    if (dec_len != len || (len > 0 && memcmp(dec, data, len) != 0))
        fail_msg("len %zu: round trip gave %zu different bytes", len, dec_len);
    free(enc);
    free(dec);
}

static void
test_b64_roundtrip(void **state)
{
    unsigned char data[1024];
    struct err *e = NULL;
    (void)state;

    /* Every length up to 64 (all padding cases), then longer than OpenSSL's 64-char blocks. */
    for (size_t len = 0; len <= 64; len++) {
        for (size_t i = 0; i < len; i++)
            data[i] = (unsigned char)(i * 37 + len);
        b64_roundtrip(data, len);
        ASSERT_NO_ERR(util_random(data, len, &e), &e);
        b64_roundtrip(data, len);
    }
    for (int round = 0; round < 50; round++) {
        uint16_t r;
        ASSERT_NO_ERR(util_random(&r, sizeof(r), &e), &e);
        ASSERT_NO_ERR(util_random(data, sizeof(data), &e), &e);
        b64_roundtrip(data, r % (sizeof(data) + 1));
    }
    for (int i = 0; i < 256; i++)
        data[i] = (unsigned char)i;
    b64_roundtrip(data, 256);
}

static void
test_b64_encode_known(void **state)
{
    static const struct {
        const char *in;
        size_t len;
        const char *want;
    } cases[] = {
        { S(""), "" },
        { S("A"), "QQ==" },
        { S("AB"), "QUI=" },
        { S("ABC"), "QUJD" },
        { S("\xff\xff\xff"), "////" },
        { S("\xfb\xff\xbf"), "+/+/" },
        { S("\0"), "AA==" },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char *got = api_b64_encode(cases[i].in, cases[i].len);
        if (strcmp(got, cases[i].want) != 0)
            fail_msg("case %zu: encoded \"%s\", want \"%s\"", i, got, cases[i].want);
        free(got);
    }
}

/* ---------------------------------------------------------- percent codes */

struct pct_case {
    const char *in;
    size_t len;
    bool plus;
    const char *want; /* NULL: rejected */
};

static void
test_pct_decode(void **state)
{
    static const struct pct_case cases[] = {
        { S(""), false, "" },
        { S("abc"), false, "abc" },
        { S("%41"), false, "A" },
        { S("%4a%4A"), false, "JJ" }, /* either case of hex */
        { S("%c3%A9"), false, "\xc3\xa9" },
        { S("%ff"), false, NULL },            /* decodes to text that is not UTF-8 */
        { S("%c3"), false, NULL },            /* a sequence cut short */
        { S("\xc3\xa9"), false, "\xc3\xa9" }, /* raw UTF-8 passes */
        { S("\xe9"), false, NULL },           /* raw Latin-1 does not */
        { S("%ed%a0%80"), false, NULL },      /* a surrogate */
        { S("%c0%af"), false, NULL },         /* an overlong '/' */
        { S("%01%7f"), false, "\x01\x7f" },
        { S("a%20b"), false, "a b" },
        { S("a%2fb"), false, "a/b" },
        { S("%2541"), false, "%41" }, /* decoded once, never twice */
        { S("x%41"), false, "xA" },   /* an escape ending exactly at the end */
        { S("%41x"), false, "Ax" },
        /* plus_is_space */
        { S("a+b"), false, "a+b" },
        { S("a+b"), true, "a b" },
        { S("++"), true, "  " },
        { S("%2B"), true, "+" }, /* an escaped plus stays a plus */
        { S("%20+"), true, "  " },
        /* Truncated escapes. */
        { S("%"), false, NULL },
        { S("%4"), false, NULL },
        { S("a%"), false, NULL },
        { S("ab%4"), false, NULL },
        { S("%41%"), false, NULL },
        { S("%41%4"), true, NULL },
        /* Bad hex digits. */
        { S("%zz"), false, NULL },
        { S("%g0"), false, NULL },
        { S("%0g"), false, NULL },
        { S("% 1"), false, NULL },
        { S("%-1"), false, NULL },
        { S("%+1"), true, NULL },
        { S("%%41"), false, NULL },
        /* NUL, escaped or raw. */
        { S("%00"), false, NULL },
        { S("a%00b"), false, NULL },
        { S("a\0b"), false, NULL },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char *got = api_pct_decode(cases[i].in, cases[i].len, cases[i].plus);
        cleanup_free char *shown = log_escape(cases[i].in, cases[i].len, 64);
        if (cases[i].want == NULL) {
            if (got != NULL)
                fail_msg("case %zu: \"%s\" decoded, want rejected", i, shown);
            continue;
        }
        if (got == NULL)
            fail_msg("case %zu: \"%s\" rejected, want \"%s\"", i, shown, cases[i].want);
        if (strcmp(got, cases[i].want) != 0)
            fail_msg("case %zu: \"%s\" decoded wrong", i, shown);
        free(got);
    }
}

static void
test_pct_decode_len_bound(void **state)
{
    char *got;
    (void)state;

    /* Only len bytes are read: a valid escape past len does not rescue a truncated one. */
    got = api_pct_decode("%41xyz", 3, false);
    assert_non_null(got);
    assert_string_equal(got, "A");
    free(got);
    assert_null(api_pct_decode("ab%41", 4, false));
    assert_null(api_pct_decode("ab%41", 3, false));
    got = api_pct_decode("ab%41", 2, false);
    assert_non_null(got);
    assert_string_equal(got, "ab");
    free(got);

    /* Every ASCII byte except NUL survives an encode/decode round trip; no byte above is
     * UTF-8 alone. */
    {
        char enc[127 * 3 + 1], want[128];
        for (int c = 1; c < 128; c++) {
            snprintf(enc + (c - 1) * 3, 4, "%%%02X", c);
            want[c - 1] = (char)c;
        }
        want[127] = '\0';
        got = api_pct_decode(enc, strlen(enc), true);
        assert_non_null(got);
        assert_int_equal(strlen(got), 127);
        assert_memory_equal(got, want, 127);
        free(got);
        for (int c = 128; c < 256; c++) {
            snprintf(enc, 4, "%%%02X", c);
            assert_null(api_pct_decode(enc, 3, false));
        }
    }
}

/* ------------------------------------------------------------- mime types */

static void
test_mime_type(void **state)
{
    static const struct {
        const char *path;
        const char *want;
    } cases[] = {
        { "a.txt", "text/plain" },
        { "/workspace/notes.md", "text/markdown" },
        { "main.py", "text/x-python" },
        { "data.json", "application/json" },
        { "x.png", "image/png" },
        { "photo.JPG", "image/jpeg" }, /* case-insensitive */
        { "Photo.JpEg", "image/jpeg" },
        { "doc.pdf", "application/pdf" },
        { "archive.tar.gz", "application/gzip" }, /* the last extension counts */
        { "archive.tar", "application/x-tar" },
        { "site/index.html", "text/html" },
        { "a.yml", "application/yaml" },
        { "a.yaml", "application/yaml" },
        { "no_extension", "application/octet-stream" },
        { "", "application/octet-stream" },
        { "trailing.", "application/octet-stream" },
        { "a.unknown", "application/octet-stream" },
        { "a.txtx", "application/octet-stream" },
        { "a.tx", "application/octet-stream" },
        /* A dot in a directory name is not an extension of the file. */
        { "dir.json/file", "application/octet-stream" },
        { "/a.b/c.d/Makefile", "application/octet-stream" },
        { "dir.txt/file.c", "text/x-c" },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        const char *got = api_mime_type(cases[i].path);
        if (strcmp(got, cases[i].want) != 0)
            fail_msg("case %zu: mime of \"%s\" is %s, want %s", i, cases[i].path, got,
                     cases[i].want);
    }
}

/* ----------------------------------------------------------------- prefix */

static void
test_strip_prefix(void **state)
{
    static const struct {
        const char *s;
        const char *prefix;
        size_t want_off; /* the result is s + want_off (borrowed, not a copy) */
    } cases[] = {
        { "environments/env_1", "environments/", 13 },
        { "env_1", "environments/", 0 },
        { "environments/", "environments/", 13 },
        { "environments", "environments/", 0 },
        { "Environments/env_1", "environments/", 0 },
        { "environments/environments/x", "environments/", 13 }, /* only once */
        { "abc", "", 0 },
        { "", "x", 0 },
        { "", "", 0 },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        const char *got = api_strip_prefix(cases[i].s, cases[i].prefix);
        if (got != cases[i].s + cases[i].want_off)
            fail_msg("case %zu: strip \"%s\" from \"%s\" gave \"%s\"", i, cases[i].prefix,
                     cases[i].s, got);
    }
}

/* ------------------------------------------------------------ JSON errors */

/*
 * A parse error names what was wrong and where, and never quotes the body (it may hold a
 * secret, and the SDK puts the message into its exception).
 */
static void
test_json_error(void **state)
{
    static const struct {
        const char *body, *want;
    } cases[] = {
        { "{\"a\" 1}", "request body is not valid JSON: ':' expected (line 1, column 6)" },
        { "xsecret", "request body is not valid JSON: '[' or '{' expected (line 1, column" },
        { "[1,", "request body is not valid JSON: ']' expected (line 1, column 3)" },
        { "{\"k\": \"\\uD800secret\"}", "request body is not valid JSON: invalid Unicode" },
        { "{\"k\": tsecret}", "request body is not valid JSON: invalid token (line 1" },
        { "{\"k\": 1", "request body is not valid JSON: '}' expected" },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        json_error_t je;
        json_t *j = json_loads(cases[i].body, 0, &je);
        cleanup_free char *msg = NULL;

        assert_null(j);
        msg = api_json_error(&je);
        if (strncmp(msg, cases[i].want, strlen(cases[i].want)) != 0)
            fail_msg("case %zu: %s", i, msg);
        assert_null(strstr(msg, "secret"));
        assert_null(strstr(msg, "D800"));
    }
}

int
test_codec_run(void)
{
    static const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64_decode_good),      cmocka_unit_test(test_b64_decode_bad),
        cmocka_unit_test(test_b64_decode_dash),      cmocka_unit_test(test_b64_roundtrip),
        cmocka_unit_test(test_b64_encode_known),     cmocka_unit_test(test_pct_decode),
        cmocka_unit_test(test_pct_decode_len_bound), cmocka_unit_test(test_mime_type),
        cmocka_unit_test(test_strip_prefix),         cmocka_unit_test(test_json_error),
    };

    return cmocka_run_group_tests_name("api/codec", tests, NULL, NULL);
}
