/*
 * Tests for the leaf cache of src/egress/tls.c: an intercepted tunnel is served a leaf minted for
 * its host by the installation CA, and a cached leaf is reused only while it has half of its
 * validity left. A server that runs for days must never present an expired or not-yet-valid leaf.
 */
#include <stdlib.h>
#include <time.h>

#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "../unit.h"

#include "egress/egress_int.h"
#include "suites.h"

static char *dir;
static struct egress_tls *tls;

static int
setup(void **state)
{
    struct err *e = NULL;

    (void)state;
    dir = unit_mkdtemp();
    if (dir == NULL || egress_ca_ensure(dir, &e) < 0 || egress_tls_new(dir, NULL, &tls, &e) < 0) {
        err_free(e);
        return -1;
    }
    return 0;
}

static int
teardown(void **state)
{
    (void)state;
    egress_tls_free(tls);
    unit_rm_rf(dir);
    free(dir);
    return 0;
}

/* Whether x is valid at time at, by its own notBefore and notAfter. */
static bool
valid_at(X509 *x, time_t at)
{
    return X509_cmp_time(X509_get0_notBefore(x), &at) < 0 &&
           X509_cmp_time(X509_get0_notAfter(x), &at) > 0;
}

static void
test_leaf_reused_within_half_its_life(void **state)
{
    time_t t0 = time(NULL);
    X509 *a, *b;

    (void)state;
    a = egress_tls_leaf(tls, "reuse.test", false, t0);
    assert_non_null(a);
    assert_true(valid_at(a, t0));
    b = egress_tls_leaf(tls, "reuse.test", false, t0 + 11 * 3600);
    assert_ptr_equal(a, b);
    /* Another name is another leaf. */
    assert_ptr_not_equal(egress_tls_leaf(tls, "other.test", false, t0), a);
}

static void
test_leaf_reminted_before_it_expires(void **state)
{
    time_t t0 = time(NULL);
    time_t later = t0 + 12 * 3600;
    X509 *a, *b;

    (void)state;
    a = egress_tls_leaf(tls, "old.test", false, t0);
    assert_non_null(a);
    X509_up_ref(a); /* as an SSL in a handshake would hold it */
    /* The minted leaf would still be valid at 12 h but not at 25 h; the cache must not wait. */
    assert_true(valid_at(a, later));
    assert_false(valid_at(a, t0 + 25 * 3600));
    b = egress_tls_leaf(tls, "old.test", false, later);
    assert_non_null(b);
    assert_ptr_not_equal(a, b);
    assert_true(valid_at(b, later + 23 * 3600));
    /* The replaced leaf is still whole for whoever held it. */
    assert_true(valid_at(a, t0));
    X509_free(a);
    /* Days on, every lookup is served a leaf valid then. */
    for (int day = 1; day <= 5; day++) {
        time_t at = t0 + day * 24 * 3600;
        X509 *x = egress_tls_leaf(tls, "old.test", false, at);
        assert_non_null(x);
        assert_true(valid_at(x, at));
    }
}

static void
test_leaf_reminted_when_the_clock_goes_back(void **state)
{
    time_t t0 = time(NULL);
    X509 *a, *b;

    (void)state;
    a = egress_tls_leaf(tls, "skew.test", false, t0);
    assert_non_null(a);
    b = egress_tls_leaf(tls, "skew.test", false, t0 - 2 * 3600);
    assert_non_null(b);
    assert_ptr_not_equal(a, b);
    assert_true(valid_at(b, t0 - 2 * 3600));
}

static void
test_leaf_for_an_address(void **state)
{
    time_t t0 = time(NULL);
    X509 *x;

    (void)state;
    x = egress_tls_leaf(tls, "[2001:db8::1]", true, t0);
    assert_non_null(x);
    assert_int_equal(X509_check_ip_asc(x, "2001:db8::1", 0), 1);
    x = egress_tls_leaf(tls, "192.0.2.7", true, t0);
    assert_non_null(x);
    assert_int_equal(X509_check_ip_asc(x, "192.0.2.7", 0), 1);
    assert_int_equal(
        X509_check_host(egress_tls_leaf(tls, "name.test", false, t0), "name.test", 0, 0, NULL), 1);
}

int
test_tls_run(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_leaf_reused_within_half_its_life),
        cmocka_unit_test(test_leaf_reminted_before_it_expires),
        cmocka_unit_test(test_leaf_reminted_when_the_clock_goes_back),
        cmocka_unit_test(test_leaf_for_an_address),
    };
    return cmocka_run_group_tests_name("egress_tls", tests, setup, teardown);
}
