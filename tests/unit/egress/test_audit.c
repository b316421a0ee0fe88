/* The audit trail's writer (src/egress/audit.c): records queued by the proxy's loop, written
 * in batches by a thread of their own, open records completed by key. */
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../store_fixture.h"
#include "../unit.h"

#include "egress/egress_int.h"
#include "store/store.h"
#include "suites.h"

static struct store_egress
rec(const char *host, const char *reason, uint64_t up)
{
    struct store_egress r;

    memset(&r, 0, sizeof(r));
    snprintf(r.env_id, sizeof(r.env_id), "env_a");
    r.ts_ms = 1;
    snprintf(r.host, sizeof(r.host), "%s", host);
    r.port = 443;
    snprintf(r.method, sizeof(r.method), "CONNECT");
    snprintf(r.decision, sizeof(r.decision), "allow");
    snprintf(r.reason, sizeof(r.reason), "%s", reason);
    r.bytes_up = up;
    return r;
}

static struct egress_audit *
start(struct store_fixture *f)
{
    struct store *ws = NULL;
    struct egress_audit *a = NULL;
    struct err *e = NULL;
    cleanup_free char *db = xasprintf("%s/paddock.db", f->dir);

    ASSERT_NO_ERR(store_open(db, &ws, &e), &e);
    ASSERT_NO_ERR(egress_audit_start(ws, &a, &e), &e);
    return a;
}

/* Every record of env_a, oldest first; *n of them. */
static struct store_egress *
rows(struct store_fixture *f, size_t *n)
{
    struct store_egress *v = NULL;
    struct err *e = NULL;

    ASSERT_NO_ERR(store_egress_page(f->s, "env_a", NULL, 0, 100, &v, n, &e), &e);
    return v;
}

/*
 * Locks the database through raw, a connection of the test's own, and has the writer take a
 * record (first.test): the writer is then waiting for the lock, and what is queued next
 * waits behind it.
 */
static void
stall(sqlite3 *raw, struct egress_audit *a)
{
    struct store_egress r = rec("first.test", "allowed", 0);

    assert_int_equal(sqlite3_exec(raw, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    egress_audit_close(a, 0, &r);
    while (egress_audit_queued(a) > 0) /* taken */
        usleep(1000);
}

/* An open record is there before its connection ends, and the same record is completed. */
static void
test_open_then_completed(void **state)
{
    struct store_fixture *f = *state;
    struct egress_audit *a = start(f);
    struct store_egress r = rec("a.test", "allowed; open", 0), *v;
    uint64_t key = egress_audit_open(a, &r);
    size_t n = 0;

    assert_true(key != 0);
    egress_audit_sync(a, 5000);
    v = rows(f, &n);
    assert_int_equal(n, 1);
    assert_string_equal(v[0].reason, "allowed; open");
    free(v);
    r = rec("a.test", "allowed", 42);
    egress_audit_close(a, key, &r);
    egress_audit_close(a, 0, &(struct store_egress){ 0 });
    egress_audit_stop(a, 10000); /* writes what is queued */
    v = rows(f, &n);
    assert_int_equal(n, 1);
    assert_string_equal(v[0].reason, "allowed");
    assert_int_equal(v[0].bytes_up, 42);
    free(v);
}

/*
 * A batch whose transaction is rolled back (here a trigger refusing one record with ROLLBACK,
 * as a full disk would) is written again a record at a time, and the open records it made are
 * forgotten with the rollback: their ids were never committed and go to the next records, so
 * completing them by those ids would overwrite another connection's record.
 */
static void
test_rolled_back_batch_completes_the_right_records(void **state)
{
    struct store_fixture *f = *state;
    sqlite3 *raw = NULL;
    struct egress_audit *a;
    struct store_egress r, *v;
    uint64_t ka, kc;
    size_t n = 0;
    cleanup_free char *db = xasprintf("%s/paddock.db", f->dir);

    assert_int_equal(sqlite3_open(db, &raw), SQLITE_OK);
    sqlite3_busy_timeout(raw, 10000);
    assert_int_equal(sqlite3_exec(raw,
                                  "CREATE TRIGGER refuse BEFORE INSERT ON egress_log"
                                  " WHEN NEW.host = 'bad.test'"
                                  " BEGIN SELECT RAISE(ROLLBACK, 'refused'); END;",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    a = start(f);
    /* The next three queue up behind the first record: they are written as one batch. */
    stall(raw, a);
    r = rec("a.test", "allowed; open", 0);
    ka = egress_audit_open(a, &r);
    r = rec("bad.test", "refused by the trigger", 0);
    egress_audit_close(a, 0, &r);
    r = rec("c.test", "allowed; open", 0);
    kc = egress_audit_open(a, &r);
    assert_int_equal(sqlite3_exec(raw, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    egress_audit_sync(a, 10000);
    r = rec("a.test", "allowed", 1);
    egress_audit_close(a, ka, &r);
    r = rec("c.test", "allowed", 2);
    egress_audit_close(a, kc, &r);
    egress_audit_stop(a, 10000);
    sqlite3_close(raw);
    v = rows(f, &n);
    assert_int_equal(n, 3);
    assert_string_equal(v[0].host, "first.test");
    assert_string_equal(v[1].host, "a.test");
    assert_int_equal(v[1].bytes_up, 1);
    assert_string_equal(v[1].reason, "allowed");
    assert_string_equal(v[2].host, "c.test");
    assert_int_equal(v[2].bytes_up, 2);
    assert_string_equal(v[2].reason, "allowed");
    free(v);
}

/*
 * Stopping with the database locked by another process waits until the deadline, not the
 * busy timeout once per record (10 s each: a daemon that took minutes to exit), and says how
 * many records it could not write. Once the lock is gone the database holds none of them.
 */
static void
test_stop_with_the_database_locked_ends_at_its_deadline(void **state)
{
    struct store_fixture *f = *state;
    sqlite3 *raw = NULL;
    struct egress_audit *a;
    struct store_egress r, *v;
    size_t n = 0;
    int64_t t0;
    cleanup_free char *db = xasprintf("%s/paddock.db", f->dir);

    assert_int_equal(sqlite3_open(db, &raw), SQLITE_OK);
    a = start(f);
    stall(raw, a);
    for (int i = 0; i < 5; i++) {
        r = rec("later.test", "allowed", (uint64_t)i);
        egress_audit_close(a, 0, &r);
    }
    t0 = util_mono_ns();
    egress_audit_stop(a, 300);
    /* Not the 10 s busy timeout of the insert under way, nor one more for each record left. */
    assert_true(util_mono_ns() - t0 < 5 * 1000000000LL);
    assert_int_equal(sqlite3_exec(raw, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(raw);
    v = rows(f, &n);
    assert_int_equal(n, 0);
    free(v);
}

int
test_audit_run(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_open_then_completed, store_fixture_setup,
                                        store_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_rolled_back_batch_completes_the_right_records,
                                        store_fixture_setup, store_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_stop_with_the_database_locked_ends_at_its_deadline,
                                        store_fixture_setup, store_fixture_teardown),
    };
    return cmocka_run_group_tests_name("audit", tests, NULL, NULL);
}
