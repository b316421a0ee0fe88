/* Tests for src/api/oauth.c: the lifetime a token endpoint's expires_in gives. */
#include <jansson.h>
#include <microhttpd.h>

#include "../unit.h"

#include "api/api_int.h"
#include "suites.h"

static void
test_lifetime(void **state)
{
    static const struct {
        const char *json; /* the answer's expires_in, as JSON; NULL: missing */
        int64_t want;
    } cases[] = {
        { "120", 120 },
        { "\"3599\"", 3599 }, /* Azure AD v1 */
        { "299.0", 299 },
        { "\"299.5\"", 299 },
        { "\"2\"", 10 }, /* at least 10 s */
        { "0", 10 },
        { "-5", 10 },
        { "1e12", 86400 }, /* at most a day */
        { "9223372036854775807", 86400 },
        { NULL, 300 }, /* missing: a short default, not an hour */
        { "null", 300 },
        { "true", 300 },
        { "\"\"", 300 },
        { "\"soon\"", 300 },
        { "\"12s\"", 300 },
        { "\" 12\"", 300 },
        { "\"-12\"", 300 },
        { "\"0x20\"", 300 },
        { "[60]", 300 },
    };
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *v = cases[i].json != NULL ? json_loads(cases[i].json, JSON_DECODE_ANY, NULL) : NULL;
        if (cases[i].json != NULL)
            assert_non_null(v);
        if (api_oauth_lifetime_s(v) != cases[i].want)
            fail_msg("expires_in %s: %lld, want %lld", cases[i].json ? cases[i].json : "(none)",
                     (long long)api_oauth_lifetime_s(v), (long long)cases[i].want);
        json_decref(v);
    }
}

int
test_oauth_run(void)
{
    static const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lifetime),
    };

    return cmocka_run_group_tests_name("api/oauth", tests, NULL, NULL);
}
