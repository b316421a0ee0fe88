/*
 * Tests for what migration 2 added to src/store/store.c for the API server: projects and
 * keyset pagination, stored configs and file counts, the offline and expired states, API
 * keys and upload sessions, and the in-place upgrade of a version-1 database. Each test
 * runs against a fresh database in a private temp directory.
 */
#include <sqlite3.h>

#include "../unit.h"

#include "store/store.h"
#include "suites.h"

struct fixture {
    char *dir;
    char *db;
    struct store *s;
};

static int
teardown(void **state)
{
    struct fixture *f = *state;

    if (f == NULL)
        return 0;
    store_close(f->s);
    unit_rm_rf(f->dir);
    free(f->dir);
    free(f->db);
    free(f);
    *state = NULL;
    return 0;
}

/* Makes the temp directory only; the database is opened by setup() or by the test. */
static int
setup_dir(void **state)
{
    struct fixture *f = xcalloc(1, sizeof(*f));

    *state = f;
    f->dir = unit_mkdtemp();
    if (f->dir == NULL) {
        teardown(state); /* cmocka runs no teardown after a failed setup */
        return -1;
    }
    f->db = xasprintf("%s/paddock.db", f->dir);
    return 0;
}

static int
setup(void **state)
{
    struct fixture *f;
    struct err *e = NULL;

    if (setup_dir(state) < 0)
        return -1;
    f = *state;
    if (store_open(f->db, &f->s, &e) < 0) {
        fprintf(stderr, "store_open: %s\n", e->msg);
        err_free(e);
        teardown(state);
        return -1;
    }
    return 0;
}

static struct store_env
make_env(const char *id, const char *project, int64_t created_ms)
{
    struct store_env e;

    memset(&e, 0, sizeof(e));
    snprintf(e.id, sizeof(e.id), "%s", id);
    snprintf(e.project, sizeof(e.project), "%s", project);
    e.state = STORE_ENV_CREATING;
    snprintf(e.network, sizeof(e.network), "disabled");
    snprintf(e.image, sizeof(e.image), "host");
    e.memory_bytes = 1ULL << 30;
    e.cpus_milli = 1000;
    e.pids = 512;
    e.disk_bytes = 1ULL << 30;
    e.created_ms = created_ms;
    e.updated_ms = created_ms;
    e.last_used_ms = created_ms;
    return e;
}

static void
insert_env(struct store *s, const char *id, const char *project, int64_t created_ms,
           const char *config)
{
    struct store_env env = make_env(id, project, created_ms);
    struct err *e = NULL;

    ASSERT_NO_ERR(store_env_insert(s, &env, config, 1000, &e), &e);
}

/* Reads PRAGMA user_version with a separate connection. */
static int
schema_version(const char *path)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int v = -1;

    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static void
raw_exec(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    char *msg = NULL;

    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL),
                     SQLITE_OK);
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        char *copy = xstrdup(msg != NULL ? msg : "?");
        sqlite3_free(msg);
        sqlite3_close(db);
        fail_msg("raw sql failed: %s", copy);
    }
    sqlite3_close(db);
}

/* Checks that one page holds exactly the ids of want, in order. */
static void
assert_page(const struct store_env *v, size_t n, const char *const *want, size_t n_want)
{
    if (n != n_want)
        fail_msg("page has %zu rows, want %zu", n, n_want);
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i].id, want[i]) != 0)
            fail_msg("row %zu is %s, want %s", i, v[i].id, want[i]);
}

/* ------------------------------------------------------------- pagination */

static void
test_page_project_order(void **state)
{
    struct fixture *f = *state;
    static const char *const want_a[] = { "env_a0", "env_a1", "env_a2", "env_a3" };
    struct store_env *v = NULL;
    size_t n = 99;
    struct err *e = NULL;

    /* Inserted out of order, interleaved with another project. */
    insert_env(f->s, "env_a2", "alpha", 200, NULL);
    insert_env(f->s, "env_b0", "beta", 50, NULL);
    insert_env(f->s, "env_a0", "alpha", 100, NULL);
    insert_env(f->s, "env_a3", "alpha", 300, NULL);
    insert_env(f->s, "env_b1", "beta", 150, NULL);
    insert_env(f->s, "env_a1", "alpha", 150, NULL);

    ASSERT_NO_ERR(store_env_page(f->s, "alpha", 0, 0, 100, &v, &n, &e), &e);
    assert_page(v, n, want_a, ARRAY_LEN(want_a));
    for (size_t i = 0; i < n; i++)
        assert_string_equal(v[i].project, "alpha");
    free(v);

    /* A project with no rows, and one that differs only by case, are empty. */
    v = NULL;
    ASSERT_NO_ERR(store_env_page(f->s, "gamma", 0, 0, 100, &v, &n, &e), &e);
    assert_int_equal(n, 0);
    free(v);
    v = NULL;
    ASSERT_NO_ERR(store_env_page(f->s, "ALPHA", 0, 0, 100, &v, &n, &e), &e);
    assert_int_equal(n, 0);
    free(v);
}

static void
test_page_walk_ties(void **state)
{
    struct fixture *f = *state;
    /* Three rows share created_ms 200: the order they were created in breaks the tie (not
     * their ids, which are random in paddock), also across a page edge. */
    static const char *const want[] = { "env_1", "env_4", "env_2", "env_3", "env_5", "env_6" };
    static const char *const page1[] = { "env_1", "env_4" };
    static const char *const page2[] = { "env_2", "env_3" };
    static const char *const page3[] = { "env_5", "env_6" };
    static const char *const *const pages[] = { page1, page2, page3 };
    struct store_env *v = NULL;
    size_t n = 0;
    int64_t after_created = 0, after_seq = 0, seq_of_4 = 0;
    struct err *e = NULL;

    insert_env(f->s, "env_6", "p", 300, NULL);
    insert_env(f->s, "env_4", "p", 200, NULL);
    insert_env(f->s, "env_2", "p", 200, NULL);
    insert_env(f->s, "env_1", "p", 100, NULL);
    insert_env(f->s, "env_3", "p", 200, NULL);
    insert_env(f->s, "env_5", "p", 250, NULL);

    ASSERT_NO_ERR(store_env_page(f->s, "p", 0, 0, 100, &v, &n, &e), &e);
    assert_page(v, n, want, ARRAY_LEN(want));
    for (size_t i = 1; i < n; i++)
        if (v[i].created_ms == v[i - 1].created_ms && v[i].seq <= v[i - 1].seq)
            fail_msg("%s (seq %lld) after %s (seq %lld)", v[i].id, (long long)v[i].seq, v[i - 1].id,
                     (long long)v[i - 1].seq);
    seq_of_4 = v[1].seq;
    free(v);

    for (size_t p = 0; p < ARRAY_LEN(pages); p++) {
        v = NULL;
        ASSERT_NO_ERR(store_env_page(f->s, "p", after_created, after_seq, 2, &v, &n, &e), &e);
        assert_page(v, n, pages[p], 2);
        after_created = v[n - 1].created_ms;
        after_seq = v[n - 1].seq;
        free(v);
    }
    /* Past the last row: an empty page, not an error. */
    v = NULL;
    ASSERT_NO_ERR(store_env_page(f->s, "p", after_created, after_seq, 2, &v, &n, &e), &e);
    assert_int_equal(n, 0);
    free(v);

    /* The position is strictly exclusive: starting at env_4 gives env_2 first. */
    v = NULL;
    ASSERT_NO_ERR(store_env_page(f->s, "p", 200, seq_of_4, 1, &v, &n, &e), &e);
    assert_int_equal(n, 1);
    assert_string_equal(v[0].id, "env_2");
    free(v);
    /* A position no row holds (a deleted one) works too. */
    ASSERT_NO_ERR(store_env_delete(f->s, "env_4", &e), &e);
    v = NULL;
    ASSERT_NO_ERR(store_env_page(f->s, "p", 200, seq_of_4, 10, &v, &n, &e), &e);
    assert_int_equal(n, 4);
    assert_string_equal(v[0].id, "env_2");
    free(v);
}

/* Creation numbers are assigned by the store, one up each time, and never to a pooled row
 * until it is claimed, when it takes the next one: a claimed row lists after the rows
 * created before its claim, though it was inserted earlier. */
static void
test_seq_creation_order(void **state)
{
    struct fixture *f = *state;
    static const char *const want[] = { "env_first", "env_second", "env_warm" };
    struct store_env warm = make_env("env_warm", "", 500), a = make_env("env_first", "p", 500),
                     b = make_env("env_second", "p", 500), got, *v = NULL;
    size_t n = 0;
    struct err *e = NULL;

    warm.state = STORE_ENV_POOLED;
    ASSERT_NO_ERR(store_env_insert(f->s, &warm, NULL, 1000, &e), &e);
    assert_int_equal(warm.seq, 0);
    ASSERT_NO_ERR(store_env_get(f->s, "env_warm", &got, &e), &e);
    assert_int_equal(got.seq, 0);
    ASSERT_NO_ERR(store_env_insert(f->s, &a, NULL, 1000, &e), &e);
    ASSERT_NO_ERR(store_env_insert(f->s, &b, NULL, 1000, &e), &e);
    assert_true(a.seq > 0);
    assert_int_equal(b.seq, a.seq + 1);

    warm = make_env("env_warm", "p", 500);
    warm.state = STORE_ENV_CREATING;
    ASSERT_NO_ERR(store_env_claim(f->s, "env_warm", &warm, NULL, &e), &e);
    ASSERT_NO_ERR(store_env_get(f->s, "env_warm", &got, &e), &e);
    assert_int_equal(got.seq, b.seq + 1);
    ASSERT_NO_ERR(store_env_page(f->s, "p", 0, 0, 10, &v, &n, &e), &e);
    assert_page(v, n, want, ARRAY_LEN(want));
    free(v);
}

static void
test_page_stable_under_inserts(void **state)
{
    struct fixture *f = *state;
    static const char *const rest[] = { "env_c", "env_d" };
    struct store_env *v = NULL;
    size_t n = 0;
    int64_t after_created, after_seq;
    struct err *e = NULL;

    insert_env(f->s, "env_a", "p", 10, NULL);
    insert_env(f->s, "env_b", "p", 20, NULL);
    insert_env(f->s, "env_c", "p", 30, NULL);
    insert_env(f->s, "env_d", "p", 40, NULL);

    ASSERT_NO_ERR(store_env_page(f->s, "p", 0, 0, 2, &v, &n, &e), &e);
    assert_int_equal(n, 2);
    after_created = v[1].created_ms;
    after_seq = v[1].seq;
    free(v);

    /* Rows added before the position, and a deleted row, do not shift the next page. */
    insert_env(f->s, "env_0", "p", 5, NULL);
    insert_env(f->s, "env_bb", "p", 20, NULL); /* same time as env_b, created after it */
    ASSERT_NO_ERR(store_env_delete(f->s, "env_a", &e), &e);
    v = NULL;
    ASSERT_NO_ERR(store_env_page(f->s, "p", after_created, after_seq, 10, &v, &n, &e), &e);
    if (n != 3 || strcmp(v[0].id, "env_bb") != 0)
        fail_msg("after env_b want env_bb first (3 rows), got %zu rows", n);
    assert_page(v + 1, n - 1, rest, ARRAY_LEN(rest));
    free(v);
}

static void
test_page_limits(void **state)
{
    struct fixture *f = *state;
    struct store_env *v = NULL;
    size_t n = 99;
    struct err *e = NULL;

    insert_env(f->s, "env_x", "p", 1, NULL);
    insert_env(f->s, "env_y", "p", 2, NULL);

    /* limit 0: an empty page and an owned (freeable) array. */
    ASSERT_NO_ERR(store_env_page(f->s, "p", 0, 0, 0, &v, &n, &e), &e);
    assert_int_equal(n, 0);
    free(v);
    /* limit 1: exactly one. */
    v = NULL;
    ASSERT_NO_ERR(store_env_page(f->s, "p", 0, 0, 1, &v, &n, &e), &e);
    assert_int_equal(n, 1);
    assert_string_equal(v[0].id, "env_x");
    free(v);
    /* A limit past the end: the rest. */
    v = NULL;
    ASSERT_NO_ERR(store_env_page(f->s, "p", 0, 0, 5, &v, &n, &e), &e);
    assert_int_equal(n, 2);
    free(v);
}

static void
test_page_many(void **state)
{
    struct fixture *f = *state;
    enum {
        N = 57,
        PAGE = 10
    };
    bool seen[N] = { false };
    size_t total = 0;
    struct err *e = NULL;

    for (int i = 0; i < N; i++) {
        char id[32];
        snprintf(id, sizeof(id), "env_%03d", (i * 37) % N); /* ids not in time order */
        insert_env(f->s, id, i % 2 == 0 ? "even" : "odd", 1000 + i / 3, NULL);
    }
    /* Walking both projects page by page sees every row once, each page in order. */
    for (int proj = 0; proj < 2; proj++) {
        const char *project = proj == 0 ? "even" : "odd";
        int64_t after_created = 0, after_seq = 0;
        for (;;) {
            struct store_env *v = NULL;
            size_t n = 0;
            ASSERT_NO_ERR(store_env_page(f->s, project, after_created, after_seq, PAGE, &v, &n, &e),
                          &e);
            assert_true(n <= PAGE);
            for (size_t i = 0; i < n; i++) {
                long idx = strtol(v[i].id + 4, NULL, 10);
                assert_true(idx >= 0 && idx < N);
                if (seen[idx])
                    fail_msg("%s returned twice", v[i].id);
                seen[idx] = true;
                assert_string_equal(v[i].project, project);
                if (v[i].created_ms < after_created ||
                    (v[i].created_ms == after_created && v[i].seq <= after_seq))
                    fail_msg("%s is not after (%lld, %lld)", v[i].id, (long long)after_created,
                             (long long)after_seq);
                after_created = v[i].created_ms;
                after_seq = v[i].seq;
                total++;
            }
            free(v);
            if (n < PAGE)
                break;
        }
    }
    assert_int_equal(total, N);
}

/* ----------------------------------------------------- config and counts */

static void
test_project_default_and_config(void **state)
{
    struct fixture *f = *state;
    static const char cfg[] =
        "{\"networking\":{\"type\":\"unrestricted\"},\"name\":\"\xc3\xa9 'q'\"}";
    struct store_env out;
    char *got = NULL;
    struct err *e = NULL;

    insert_env(f->s, "env_cfg", "proj-1", 10, cfg);
    insert_env(f->s, "env_nocfg", "", 20, NULL); /* empty project, no config */

    ASSERT_NO_ERR(store_env_config(f->s, "env_cfg", &got, &e), &e);
    assert_string_equal(got, cfg);
    free(got);
    got = NULL;
    ASSERT_NO_ERR(store_env_config(f->s, "env_nocfg", &got, &e), &e);
    assert_string_equal(got, "{}");
    free(got);
    got = NULL;
    assert_int_equal(store_env_config(f->s, "env_missing", &got, &e), -1);
    ASSERT_ERR_CONTAINS(&e, ERR_NOT_FOUND, "env_missing");
    assert_null(got); /* nothing handed out */

    ASSERT_NO_ERR(store_env_get(f->s, "env_cfg", &out, &e), &e);
    assert_string_equal(out.project, "proj-1");
    ASSERT_NO_ERR(store_env_get(f->s, "env_nocfg", &out, &e), &e);
    assert_string_equal(out.project, "default");
    /* New rows have never been counted unless the caller says so. */
    assert_int_equal(out.file_count, 0);
    assert_int_equal(out.size_bytes, 0);
    assert_int_equal(out.counted_ms, 0);
}

static void
test_set_counts(void **state)
{
    struct fixture *f = *state;
    struct store_env in = make_env("env_cnt", "p", 10), out;
    struct err *e = NULL;

    in.file_count = 3;
    in.size_bytes = 4;
    in.counted_ms = 5;
    ASSERT_NO_ERR(store_env_insert(f->s, &in, NULL, 16, &e), &e);
    ASSERT_NO_ERR(store_env_get(f->s, "env_cnt", &out, &e), &e);
    assert_int_equal(out.file_count, 3);
    assert_int_equal(out.size_bytes, 4);
    assert_int_equal(out.counted_ms, 5);

    ASSERT_NO_ERR(
        store_env_set_counts(f->s, "env_cnt", 123456, (1ULL << 63) + 7, 1700000000123, &e), &e);
    ASSERT_NO_ERR(store_env_get(f->s, "env_cnt", &out, &e), &e);
    assert_int_equal(out.file_count, 123456);
    assert_true(out.size_bytes == (1ULL << 63) + 7); /* above INT64_MAX: round-trips */
    assert_int_equal(out.counted_ms, 1700000000123);
    /* Counting is not a change of state, activity or configuration. */
    assert_int_equal(out.state, STORE_ENV_CREATING);
    assert_int_equal(out.updated_ms, 10);
    assert_int_equal(out.last_used_ms, 10);
    assert_int_equal(out.uid_slot, in.uid_slot);

    assert_int_equal(store_env_set_counts(f->s, "env_nope", 1, 1, 1, &e), -1);
    ASSERT_ERR_CONTAINS(&e, ERR_NOT_FOUND, "env_nope");
}

/* ----------------------------------------------------------------- states */

struct state_case {
    enum store_env_state st;
    bool bumps_last_used;
};

static void
test_set_state_last_used(void **state)
{
    struct fixture *f = *state;
    static const struct state_case cases[] = {
        { STORE_ENV_STOPPED, false },  { STORE_ENV_OFFLINE, false }, { STORE_ENV_EXPIRED, false },
        { STORE_ENV_CREATING, false }, { STORE_ENV_RUNNING, true },
    };
    struct err *e = NULL;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char id[32];
        struct store_env out;
        int64_t before;

        snprintf(id, sizeof(id), "env_state_%zu", i);
        insert_env(f->s, id, "p", 1000, NULL); /* created, updated, last used at 1000 */
        before = util_now_ms();
        ASSERT_NO_ERR(store_env_set_state(f->s, id, cases[i].st, 77, 88, 0, &e), &e);
        ASSERT_NO_ERR(store_env_get(f->s, id, &out, &e), &e);
        assert_int_equal(out.state, cases[i].st);
        assert_int_equal(out.init_pid, 77);
        assert_int_equal(out.init_start, 88);
        if (out.updated_ms < before)
            fail_msg("%s: updated_ms %lld not bumped", store_env_state_name(cases[i].st),
                     (long long)out.updated_ms);
        if (cases[i].bumps_last_used && out.last_used_ms < before)
            fail_msg("%s: last_used_ms %lld not bumped", store_env_state_name(cases[i].st),
                     (long long)out.last_used_ms);
        if (!cases[i].bumps_last_used && out.last_used_ms != 1000)
            fail_msg("%s: last_used_ms changed to %lld", store_env_state_name(cases[i].st),
                     (long long)out.last_used_ms);
    }
}

static void
test_state_names_new(void **state)
{
    static const struct {
        enum store_env_state st;
        const char *name;
    } cases[] = {
        { STORE_ENV_CREATING, "creating" },        { STORE_ENV_RUNNING, "running" },
        { STORE_ENV_STOPPED, "stopped" },          { STORE_ENV_OFFLINE, "offline" },
        { STORE_ENV_EXPIRED, "expired" },          { STORE_ENV_POOLED, "pooled" },
        { (enum store_env_state)6, "unknown" },
        { (enum store_env_state) - 1, "unknown" },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++)
        assert_string_equal(store_env_state_name(cases[i].st), cases[i].name);
}

static void
test_new_states_persist(void **state)
{
    struct fixture *f = *state;
    struct store_env in = make_env("env_exp", "p", 1), out;
    struct err *e = NULL;

    in.state = STORE_ENV_EXPIRED;
    ASSERT_NO_ERR(store_env_insert(f->s, &in, NULL, 4, &e), &e);
    store_close(f->s);
    f->s = NULL;
    ASSERT_NO_ERR(store_open(f->db, &f->s, &e), &e);
    ASSERT_NO_ERR(store_env_get(f->s, "env_exp", &out, &e), &e);
    assert_int_equal(out.state, STORE_ENV_EXPIRED);
    ASSERT_NO_ERR(store_env_set_state(f->s, "env_exp", STORE_ENV_OFFLINE, 0, 0, 0, &e), &e);
    ASSERT_NO_ERR(store_env_get(f->s, "env_exp", &out, &e), &e);
    assert_int_equal(out.state, STORE_ENV_OFFLINE);
}

/* ------------------------------------------------------------- warm pool */

/* Pooled rows: listed only by store_env_list_pooled(), never in a project's page; a claim
 * turns one into the user's row in one statement, and only once. */
static void
test_pool_claim(void **state)
{
    struct fixture *f = *state;
    struct store_env pool = make_env("env_pool1", "default", 10), want, out;
    struct store_env *v = NULL;
    size_t n = 0;
    struct err *e = NULL;
    cleanup_free char *config = NULL;

    pool.state = STORE_ENV_POOLED;
    pool.init_pid = 4242;
    pool.init_start = 99;
    ASSERT_NO_ERR(store_env_insert(f->s, &pool, NULL, 1000, &e), &e);
    insert_env(f->s, "env_user1", "default", 20, NULL);
    ASSERT_NO_ERR(store_env_list_pooled(f->s, &v, &n, &e), &e);
    assert_int_equal(n, 1);
    assert_string_equal(v[0].id, "env_pool1");
    free(v);
    ASSERT_NO_ERR(store_env_page(f->s, "default", 0, 0, 10, &v, &n, &e), &e);
    assert_int_equal(n, 1);
    assert_string_equal(v[0].id, "env_user1");
    free(v);

    want = make_env("ignored", "proj", 500);
    want.state = STORE_ENV_RUNNING;
    snprintf(want.network, sizeof(want.network), "open");
    want.memory_bytes = 96 << 20;
    want.cpus_milli = 500;
    want.pids = 64;
    want.disk_bytes = 32 << 20;
    ASSERT_NO_ERR(store_env_claim(f->s, "env_pool1", &want, "{\"env\":{}}", &e), &e);
    ASSERT_NO_ERR(store_env_get(f->s, "env_pool1", &out, &e), &e);
    assert_int_equal(out.state, STORE_ENV_RUNNING);
    assert_string_equal(out.project, "proj");
    assert_string_equal(out.network, "open");
    assert_int_equal(out.memory_bytes, 96 << 20);
    assert_int_equal(out.cpus_milli, 500);
    assert_int_equal(out.pids, 64);
    assert_int_equal(out.disk_bytes, 32 << 20);
    assert_int_equal(out.created_ms, 500);
    assert_int_equal(out.init_pid, 4242); /* the sandbox is the pooled one */
    assert_int_equal(out.init_start, 99);
    assert_int_equal(out.uid_slot, pool.uid_slot);
    ASSERT_NO_ERR(store_env_config(f->s, "env_pool1", &config, &e), &e);
    assert_string_equal(config, "{\"env\":{}}");
    ASSERT_NO_ERR(store_env_list_pooled(f->s, &v, &n, &e), &e);
    assert_int_equal(n, 0);
    free(v);
    ASSERT_NO_ERR(store_env_page(f->s, "proj", 0, 0, 10, &v, &n, &e), &e);
    assert_int_equal(n, 1);
    free(v);

    /* Claimed once: a second claim, or a claim of a user's row, is refused. */
    assert_int_equal(store_env_claim(f->s, "env_pool1", &want, NULL, &e), -1);
    assert_int_equal(e->code, ERR_CONFLICT);
    err_free(e);
    e = NULL;
    assert_int_equal(store_env_claim(f->s, "env_user1", &want, NULL, &e), -1);
    assert_int_equal(e->code, ERR_CONFLICT);
    err_free(e);
    e = NULL;
    assert_int_equal(store_env_claim(f->s, "env_none", &want, NULL, &e), -1);
    assert_int_equal(e->code, ERR_CONFLICT);
    err_free(e);
}

/* ------------------------------------------------------------------- keys */

static struct store_key
make_key(const char *name, const char *project, const char *scopes, int64_t created_ms)
{
    struct store_key k;

    memset(&k, 0, sizeof(k));
    snprintf(k.name, sizeof(k.name), "%s", name);
    snprintf(k.project, sizeof(k.project), "%s", project);
    snprintf(k.scopes, sizeof(k.scopes), "%s", scopes);
    snprintf(k.prefix, sizeof(k.prefix), "pdk_%.6s", name);
    k.created_ms = created_ms;
    return k;
}

/* A distinct fake 64-hex-digit hash per n. */
static void
fake_hash(int n, char out[65])
{
    for (int i = 0; i < 64; i++)
        out[i] = "0123456789abcdef"[(n * 7 + i) % 16];
    out[0] = "0123456789abcdef"[n % 16];
    out[1] = "0123456789abcdef"[(n / 16) % 16];
    out[64] = '\0';
}

static void
assert_key_equal(const struct store_key *a, const struct store_key *b)
{
    assert_string_equal(a->name, b->name);
    assert_string_equal(a->project, b->project);
    assert_string_equal(a->scopes, b->scopes);
    assert_string_equal(a->prefix, b->prefix);
    assert_int_equal(a->created_ms, b->created_ms);
    assert_int_equal(a->revoked_ms, b->revoked_ms);
}

static void
test_key_insert_lookup(void **state)
{
    struct fixture *f = *state;
    struct store_key k = make_key("ci", "proj", "environments.read environments.write", 1234);
    struct store_key out;
    char h[65], other[65];
    struct err *e = NULL;

    fake_hash(1, h);
    fake_hash(2, other);
    ASSERT_NO_ERR(store_key_insert(f->s, &k, h, &e), &e);
    memset(&out, 0x5a, sizeof(out));
    ASSERT_NO_ERR(store_key_by_hash(f->s, h, &out, &e), &e);
    assert_key_equal(&out, &k);

    /* Another hash, a prefix of the hash, or the name are not lookups of this key. */
    memset(&out, 0x5a, sizeof(out));
    assert_int_equal(store_key_by_hash(f->s, other, &out, &e), -1);
    ASSERT_ERR(&e, ERR_NOT_FOUND);
    assert_int_equal((unsigned char)out.name[0], 0x5a);
    h[63] = '\0';
    assert_int_equal(store_key_by_hash(f->s, h, &out, &e), -1);
    ASSERT_ERR(&e, ERR_NOT_FOUND);
    assert_int_equal(store_key_by_hash(f->s, "ci", &out, &e), -1);
    ASSERT_ERR(&e, ERR_NOT_FOUND);
    assert_int_equal(store_key_by_hash(f->s, "%", &out, &e), -1);
    ASSERT_ERR(&e, ERR_NOT_FOUND);
}

static void
test_key_duplicate_name(void **state)
{
    struct fixture *f = *state;
    struct store_key a = make_key("dup", "one", "environments.read", 1);
    struct store_key b = make_key("dup", "two", "environments.write", 2);
    struct store_key out, *v = NULL;
    size_t n = 0;
    char ha[65], hb[65];
    struct err *e = NULL;

    fake_hash(10, ha);
    fake_hash(11, hb);
    ASSERT_NO_ERR(store_key_insert(f->s, &a, ha, &e), &e);
    assert_int_equal(store_key_insert(f->s, &b, hb, &e), -1);
    ASSERT_ERR_CONTAINS(&e, ERR_CONFLICT, "dup");
    /* The first key is unchanged and the second hash authenticates nothing. */
    ASSERT_NO_ERR(store_key_by_hash(f->s, ha, &out, &e), &e);
    assert_key_equal(&out, &a);
    assert_int_equal(store_key_by_hash(f->s, hb, &out, &e), -1);
    ASSERT_ERR(&e, ERR_NOT_FOUND);
    ASSERT_NO_ERR(store_key_list(f->s, &v, &n, &e), &e);
    assert_int_equal(n, 1);
    free(v);

    /* Revoking does not free the name: it stays a record. */
    ASSERT_NO_ERR(store_key_revoke(f->s, "dup", &e), &e);
    assert_int_equal(store_key_insert(f->s, &b, hb, &e), -1);
    ASSERT_ERR(&e, ERR_CONFLICT);
}

static void
test_key_list_order(void **state)
{
    struct fixture *f = *state;
    static const char *const want[] = { "early", "b-same", "c-same", "late" };
    struct store_key keys[] = {
        make_key("late", "p", "environments.read", 300),
        make_key("c-same", "p", "environments.read", 200),
        make_key("early", "q", "environments.write", 100),
        make_key("b-same", "p", "environments.read", 200),
    };
    struct store_key *v = NULL;
    size_t n = 99;
    struct err *e = NULL;

    ASSERT_NO_ERR(store_key_list(f->s, &v, &n, &e), &e);
    assert_int_equal(n, 0);
    free(v);
    for (size_t i = 0; i < ARRAY_LEN(keys); i++) {
        char h[65];
        fake_hash((int)i + 20, h);
        ASSERT_NO_ERR(store_key_insert(f->s, &keys[i], h, &e), &e);
    }
    v = NULL;
    ASSERT_NO_ERR(store_key_list(f->s, &v, &n, &e), &e);
    assert_int_equal(n, ARRAY_LEN(want));
    for (size_t i = 0; i < n; i++)
        assert_string_equal(v[i].name, want[i]);
    assert_string_equal(v[0].project, "q");
    assert_string_equal(v[0].scopes, "environments.write");
    free(v);
}

static void
test_key_list_many(void **state)
{
    struct fixture *f = *state;
    enum {
        N = 40 /* past the list's first allocation */
    };
    struct store_key *v = NULL;
    size_t n = 0;
    struct err *e = NULL;

    for (int i = 0; i < N; i++) {
        char name[32], h[65];
        struct store_key k;
        snprintf(name, sizeof(name), "key-%02d", i);
        k = make_key(name, "p", "environments.read", 1000 + i);
        snprintf(h, sizeof(h), "%064d", i);
        ASSERT_NO_ERR(store_key_insert(f->s, &k, h, &e), &e);
    }
    ASSERT_NO_ERR(store_key_list(f->s, &v, &n, &e), &e);
    assert_int_equal(n, N);
    for (int i = 0; i < N; i++) {
        char name[32];
        snprintf(name, sizeof(name), "key-%02d", i);
        assert_string_equal(v[i].name, name);
    }
    free(v);
}

static void
test_key_revoke(void **state)
{
    struct fixture *f = *state;
    struct store_key a = make_key("a", "p", "environments.read", 1);
    struct store_key b = make_key("b", "p", "environments.read", 2);
    struct store_key out, *v = NULL;
    size_t n = 0;
    char ha[65], hb[65];
    int64_t before;
    struct err *e = NULL;

    fake_hash(30, ha);
    fake_hash(31, hb);
    ASSERT_NO_ERR(store_key_insert(f->s, &a, ha, &e), &e);
    ASSERT_NO_ERR(store_key_insert(f->s, &b, hb, &e), &e);
    before = util_now_ms();
    ASSERT_NO_ERR(store_key_revoke(f->s, "a", &e), &e);

    /* A revoked key is still found by its hash, marked, so auth can say "revoked". */
    ASSERT_NO_ERR(store_key_by_hash(f->s, ha, &out, &e), &e);
    assert_string_equal(out.name, "a");
    assert_true(out.revoked_ms >= before);
    /* The other key is untouched. */
    ASSERT_NO_ERR(store_key_by_hash(f->s, hb, &out, &e), &e);
    assert_int_equal(out.revoked_ms, 0);
    /* It stays in the list. */
    ASSERT_NO_ERR(store_key_list(f->s, &v, &n, &e), &e);
    assert_int_equal(n, 2);
    assert_true(v[0].revoked_ms >= before);
    assert_int_equal(v[1].revoked_ms, 0);
    free(v);

    /* Twice, or a name never made: ERR_NOT_FOUND naming the key. */
    assert_int_equal(store_key_revoke(f->s, "a", &e), -1);
    ASSERT_ERR_CONTAINS(&e, ERR_NOT_FOUND, "'a'");
    assert_int_equal(store_key_revoke(f->s, "nobody", &e), -1);
    ASSERT_ERR_CONTAINS(&e, ERR_NOT_FOUND, "nobody");
    /* The name is matched exactly. */
    assert_int_equal(store_key_revoke(f->s, "B", &e), -1);
    ASSERT_ERR(&e, ERR_NOT_FOUND);
    assert_int_equal(store_key_revoke(f->s, "%", &e), -1);
    ASSERT_ERR(&e, ERR_NOT_FOUND);
    ASSERT_NO_ERR(store_key_by_hash(f->s, hb, &out, &e), &e);
    assert_int_equal(out.revoked_ms, 0);
}

/* ---------------------------------------------------------------- uploads */

static struct store_upload
make_upload(const char *id, const char *env_id, int64_t created_ms)
{
    struct store_upload u;

    memset(&u, 0, sizeof(u));
    snprintf(u.id, sizeof(u.id), "%s", id);
    snprintf(u.env_id, sizeof(u.env_id), "%s", env_id);
    snprintf(u.project, sizeof(u.project), "proj");
    snprintf(u.path, sizeof(u.path), "/workspace/%s.bin", id);
    snprintf(u.mime, sizeof(u.mime), "application/octet-stream");
    u.total = 1000;
    u.created_ms = created_ms;
    return u;
}

static void
assert_upload_equal(const struct store_upload *a, const struct store_upload *b)
{
    assert_string_equal(a->id, b->id);
    assert_string_equal(a->env_id, b->env_id);
    assert_string_equal(a->project, b->project);
    assert_string_equal(a->path, b->path);
    assert_true(a->total == b->total);
    assert_int_equal(a->overwrite, b->overwrite);
    assert_int_equal(a->extract, b->extract);
    assert_string_equal(a->mime, b->mime);
    assert_int_equal(a->created_ms, b->created_ms);
}

static void
test_upload_roundtrip(void **state)
{
    struct fixture *f = *state;
    struct store_upload in = make_upload("upl_1", "env_1", 500);
    struct store_upload in2 = make_upload("upl_2", "env_1", 600);
    static struct store_upload out; /* 4 KiB path: keep it off the stack */
    struct err *e = NULL;

    /* Every field, including the longest path and a size above INT64_MAX. */
    memset(in.path, 'p', sizeof(in.path) - 1);
    in.path[0] = '/';
    in.path[sizeof(in.path) - 1] = '\0';
    in.total = UINT64_MAX;
    in.overwrite = true;
    in.extract = false;
    snprintf(in.mime, sizeof(in.mime), "application/x-tar; charset=\"x\"");
    in2.overwrite = false;
    in2.extract = true;
    in2.total = 0;

    ASSERT_NO_ERR(store_upload_insert(f->s, &in, &e), &e);
    ASSERT_NO_ERR(store_upload_insert(f->s, &in2, &e), &e);
    memset(&out, 0x5a, sizeof(out));
    ASSERT_NO_ERR(store_upload_get(f->s, "upl_1", &out, &e), &e);
    assert_upload_equal(&out, &in);
    ASSERT_NO_ERR(store_upload_get(f->s, "upl_2", &out, &e), &e);
    assert_upload_equal(&out, &in2);

    memset(&out, 0x5a, sizeof(out));
    assert_int_equal(store_upload_get(f->s, "upl_3", &out, &e), -1);
    ASSERT_ERR_CONTAINS(&e, ERR_NOT_FOUND, "upl_3");
    assert_int_equal((unsigned char)out.id[0], 0x5a);
}

static void
test_upload_duplicate(void **state)
{
    struct fixture *f = *state;
    struct store_upload a = make_upload("upl_d", "env_a", 1);
    struct store_upload b = make_upload("upl_d", "env_b", 2);
    static struct store_upload out;
    struct err *e = NULL;

    ASSERT_NO_ERR(store_upload_insert(f->s, &a, &e), &e);
    assert_int_equal(store_upload_insert(f->s, &b, &e), -1);
    ASSERT_ERR(&e, ERR_CONFLICT);
    ASSERT_NO_ERR(store_upload_get(f->s, "upl_d", &out, &e), &e);
    assert_upload_equal(&out, &a);
}

static void
test_upload_list_delete(void **state)
{
    struct fixture *f = *state;
    static const char *const want[] = { "upl_a", "upl_b", "upl_c" };
    struct store_upload rows[] = {
        make_upload("upl_c", "env", 30),
        make_upload("upl_a", "env", 10),
        make_upload("upl_b", "env", 20),
    };
    struct store_upload *v = NULL;
    static struct store_upload out;
    size_t n = 99;
    struct err *e = NULL;

    ASSERT_NO_ERR(store_upload_list(f->s, &v, &n, &e), &e);
    assert_int_equal(n, 0);
    free(v);
    for (size_t i = 0; i < ARRAY_LEN(rows); i++)
        ASSERT_NO_ERR(store_upload_insert(f->s, &rows[i], &e), &e);
    v = NULL;
    ASSERT_NO_ERR(store_upload_list(f->s, &v, &n, &e), &e);
    assert_int_equal(n, ARRAY_LEN(want));
    for (size_t i = 0; i < n; i++)
        assert_string_equal(v[i].id, want[i]);
    assert_string_equal(v[0].path, "/workspace/upl_a.bin");
    free(v);

    ASSERT_NO_ERR(store_upload_delete(f->s, "upl_b", &e), &e);
    assert_int_equal(store_upload_get(f->s, "upl_b", &out, &e), -1);
    ASSERT_ERR(&e, ERR_NOT_FOUND);
    v = NULL;
    ASSERT_NO_ERR(store_upload_list(f->s, &v, &n, &e), &e);
    assert_int_equal(n, 2);
    assert_string_equal(v[0].id, "upl_a");
    assert_string_equal(v[1].id, "upl_c");
    free(v);
    /* The others are intact. */
    ASSERT_NO_ERR(store_upload_get(f->s, "upl_c", &out, &e), &e);
    assert_upload_equal(&out, &rows[0]);
}

static void
test_upload_list_many(void **state)
{
    struct fixture *f = *state;
    enum {
        N = 35
    };
    struct store_upload *v = NULL;
    size_t n = 0;
    struct err *e = NULL;

    for (int i = 0; i < N; i++) {
        char id[32];
        struct store_upload u;
        snprintf(id, sizeof(id), "upl_%02d", i);
        u = make_upload(id, "env", 100 + i);
        ASSERT_NO_ERR(store_upload_insert(f->s, &u, &e), &e);
    }
    ASSERT_NO_ERR(store_upload_list(f->s, &v, &n, &e), &e);
    assert_int_equal(n, N);
    for (int i = 0; i < N; i++)
        assert_int_equal(v[i].created_ms, 100 + i);
    free(v);
}

/* ----------------------------------------------------------------- egress */

static void
insert_egress_by(struct store *s, const char *env_id, const char *iid, int64_t ts_ms)
{
    struct store_egress r;
    struct err *e = NULL;

    memset(&r, 0, sizeof(r));
    snprintf(r.env_id, sizeof(r.env_id), "%s", env_id);
    snprintf(r.interaction_id, sizeof(r.interaction_id), "%s", iid);
    r.ts_ms = ts_ms;
    snprintf(r.host, sizeof(r.host), "h.test");
    r.port = 443;
    snprintf(r.method, sizeof(r.method), "CONNECT");
    snprintf(r.decision, sizeof(r.decision), "allow");
    ASSERT_NO_ERR(store_egress_insert(s, &r, NULL, &e), &e);
}

static void
insert_egress(struct store *s, const char *env_id, int64_t ts_ms)
{
    insert_egress_by(s, env_id, "", ts_ms);
}

/* The newest record's id, 0 when none. */
static int64_t
last_egress_id(struct store *s)
{
    struct store_egress *v = NULL;
    size_t n = 0;
    int64_t id;
    struct err *e = NULL;

    ASSERT_NO_ERR(store_egress_page(s, "env_a", NULL, 0, 100, &v, &n, &e), &e);
    id = n > 0 ? v[n - 1].id : 0;
    free(v);
    return id;
}

/* Record ids are never used twice, so a page token a client holds never skips a record: not
 * after a purge took the newest rows, and not after migration 8 copied a table that had none
 * of AUTOINCREMENT's bookkeeping (it starts past the largest id). */
static void
test_egress_ids_never_reused(void **state)
{
    struct fixture *f = *state;
    struct err *e = NULL;
    size_t n = 0;
    int64_t top;

    for (int i = 0; i < 3; i++)
        insert_egress(f->s, "env_a", i);
    top = last_egress_id(f->s);
    ASSERT_NO_ERR(store_egress_purge(f->s, 1000, 100, &n, &e), &e);
    assert_int_equal(n, 3);
    assert_int_equal(last_egress_id(f->s), 0);
    insert_egress(f->s, "env_a", 5);
    assert_true(last_egress_id(f->s) > top);
    top = last_egress_id(f->s);

    /* The same table as schema 7 made it, then opened again: migration 8 keeps the ids. */
    store_close(f->s);
    f->s = NULL;
    raw_exec(f->db, "CREATE TABLE e7 (id INTEGER PRIMARY KEY, env_id TEXT NOT NULL,"
                    " interaction_id TEXT NOT NULL DEFAULT '', ts_ms INTEGER NOT NULL,"
                    " host TEXT NOT NULL, port INTEGER NOT NULL, method TEXT NOT NULL,"
                    " decision TEXT NOT NULL, reason TEXT NOT NULL, bytes_up INTEGER NOT NULL,"
                    " bytes_down INTEGER NOT NULL) STRICT;"
                    "INSERT INTO e7 SELECT * FROM egress_log; DROP TABLE egress_log;"
                    "ALTER TABLE e7 RENAME TO egress_log;"
                    "CREATE INDEX egress_log_by_env ON egress_log (env_id, id);"
                    "CREATE INDEX egress_log_by_time ON egress_log (ts_ms);"
                    "DELETE FROM sqlite_sequence WHERE name = 'egress_log';"
                    "DROP TABLE meta;"
                    "ALTER TABLE environments DROP COLUMN init_gen;"
                    "PRAGMA user_version = 7;");
    ASSERT_NO_ERR(store_open(f->db, &f->s, &e), &e);
    assert_int_equal(schema_version(f->db), STORE_SCHEMA_VERSION);
    assert_int_equal(last_egress_id(f->s), top);
    ASSERT_NO_ERR(store_egress_purge(f->s, 1000, 100, &n, &e), &e);
    assert_int_equal(n, 1);
    insert_egress(f->s, "env_a", 6);
    assert_true(last_egress_id(f->s) > top);
}

/* A record written when its connection is allowed is completed when it ends: same id, same
 * place in the order; a record purged meanwhile is reported gone. */
static void
test_egress_update(void **state)
{
    struct fixture *f = *state;
    struct store_egress r, *v = NULL;
    int64_t id = 0;
    size_t n = 0;
    bool found = false;
    struct err *e = NULL;

    memset(&r, 0, sizeof(r));
    snprintf(r.env_id, sizeof(r.env_id), "env_a");
    r.ts_ms = 5;
    snprintf(r.host, sizeof(r.host), "h.test");
    r.port = 443;
    snprintf(r.method, sizeof(r.method), "CONNECT");
    snprintf(r.decision, sizeof(r.decision), "allow");
    snprintf(r.reason, sizeof(r.reason), "open");
    ASSERT_NO_ERR(store_egress_insert(f->s, &r, &id, &e), &e);
    assert_true(id > 0);
    insert_egress(f->s, "env_a", 6);
    snprintf(r.decision, sizeof(r.decision), "deny");
    snprintf(r.reason, sizeof(r.reason), "SNI mismatch");
    snprintf(r.interaction_id, sizeof(r.interaction_id), "int_q");
    r.bytes_up = 7;
    r.bytes_down = 11;
    ASSERT_NO_ERR(store_egress_update(f->s, id, &r, &found, &e), &e);
    assert_true(found);
    ASSERT_NO_ERR(store_egress_page(f->s, "env_a", NULL, 0, 10, &v, &n, &e), &e);
    assert_int_equal(n, 2);
    assert_int_equal(v[0].id, id);
    assert_string_equal(v[0].decision, "deny");
    assert_string_equal(v[0].reason, "SNI mismatch");
    assert_string_equal(v[0].interaction_id, "int_q");
    assert_int_equal(v[0].bytes_up, 7);
    assert_int_equal(v[0].bytes_down, 11);
    assert_int_equal(v[0].ts_ms, 5);
    free(v);
    ASSERT_NO_ERR(store_egress_update(f->s, id + 1000, &r, &found, &e), &e);
    assert_false(found);
}

/* One interaction's records of an environment, in order and across pages; none of another
 * environment's, even under the same interaction id. */
static void
test_egress_page_by_interaction(void **state)
{
    struct fixture *f = *state;
    struct store_egress *v = NULL;
    size_t n = 0;
    int64_t after = 0;
    struct err *e = NULL;

    for (int i = 0; i < 9; i++)
        insert_egress_by(f->s, "env_a", i % 3 == 0 ? "int_x" : i % 3 == 1 ? "" : "int_y", i);
    insert_egress_by(f->s, "env_b", "int_x", 100);
    ASSERT_NO_ERR(store_egress_page(f->s, "env_a", "int_x", 0, 2, &v, &n, &e), &e);
    assert_int_equal(n, 2);
    assert_int_equal(v[0].ts_ms, 0);
    assert_int_equal(v[1].ts_ms, 3);
    after = v[1].id;
    free(v);
    v = NULL;
    ASSERT_NO_ERR(store_egress_page(f->s, "env_a", "int_x", after, 2, &v, &n, &e), &e);
    assert_int_equal(n, 1);
    assert_int_equal(v[0].ts_ms, 6);
    assert_string_equal(v[0].env_id, "env_a");
    free(v);
    v = NULL;
    ASSERT_NO_ERR(store_egress_page(f->s, "env_a", NULL, 0, 100, &v, &n, &e), &e);
    assert_int_equal(n, 9);
    free(v);
}

/* Records older than the cut go, at most limit per call and oldest first, whatever their
 * environment; one at the cut and younger ones stay, in their order. */
static void
test_egress_purge(void **state)
{
    struct fixture *f = *state;
    static const size_t rounds[] = {10, 10, 5, 0};
    struct store_egress *v = NULL;
    size_t n = 0, purged = 99;
    struct err *e = NULL;

    /* 25 old records (written newest first), interleaved with 5 young ones, across two
     * environments, and one exactly at the cut. */
    for (int i = 0; i < 30; i++)
        insert_egress(f->s, i % 2 ? "env_a" : "env_b", i % 6 == 5 ? 1001 + i : 900 - i);
    insert_egress(f->s, "env_b", 1000);
    for (size_t r = 0; r < sizeof(rounds) / sizeof(rounds[0]); r++) {
        ASSERT_NO_ERR(store_egress_purge(f->s, 1000, 10, &purged, &e), &e);
        if (purged != rounds[r])
            fail_msg("round %zu purged %zu, want %zu", r, purged, rounds[r]);
        /* Oldest first: after the first round, nothing older than the 16 youngest old. */
        if (r == 0) {
            ASSERT_NO_ERR(store_egress_page(f->s, "env_b", NULL, 0, 100, &v, &n, &e), &e);
            for (size_t i = 0; i < n; i++)
                if (v[i].ts_ms < 900 - 29 + 10)
                    fail_msg("record at %lld outlived the 10 oldest purge",
                             (long long)v[i].ts_ms);
            free(v);
            v = NULL;
        }
    }
    ASSERT_NO_ERR(store_egress_page(f->s, "env_a", NULL, 0, 100, &v, &n, &e), &e);
    assert_int_equal(n, 5);
    for (size_t i = 0; i < n; i++) {
        assert_true(v[i].ts_ms > 1000);
        if (i > 0)
            assert_true(v[i].id > v[i - 1].id);
    }
    free(v);
    v = NULL;
    ASSERT_NO_ERR(store_egress_page(f->s, "env_b", NULL, 0, 100, &v, &n, &e), &e);
    assert_int_equal(n, 1);
    assert_int_equal(v[0].ts_ms, 1000);
    free(v);
}

/* -------------------------------------------------------------- migration */

/* Schema version 1 exactly as store.c's migrations[0] created it. */
static const char v1_schema[] = "CREATE TABLE environments ("
                                " id TEXT PRIMARY KEY,"
                                " state INTEGER NOT NULL,"
                                " network TEXT NOT NULL,"
                                " image TEXT NOT NULL,"
                                " memory_bytes INTEGER NOT NULL,"
                                " cpus_milli INTEGER NOT NULL,"
                                " pids INTEGER NOT NULL,"
                                " disk_bytes INTEGER NOT NULL,"
                                " uid_slot INTEGER NOT NULL UNIQUE,"
                                " init_pid INTEGER NOT NULL DEFAULT 0,"
                                " init_start INTEGER NOT NULL DEFAULT 0,"
                                " created_ms INTEGER NOT NULL,"
                                " updated_ms INTEGER NOT NULL,"
                                " last_used_ms INTEGER NOT NULL"
                                ") STRICT;"
                                "PRAGMA user_version = 1;";

static void
test_migrate_v1(void **state)
{
    struct fixture *f = *state;
    struct store_env out, *v = NULL;
    size_t n = 0;
    char *cfg = NULL;
    char h[65];
    struct store_key k = make_key("after-upgrade", "default", "environments.read", 5);
    struct store_upload u = make_upload("upl_m", "env_old", 6);
    struct err *e = NULL;

    raw_exec(f->db, v1_schema);
    raw_exec(f->db, "INSERT INTO environments VALUES ('env_old', 2, 'open', 'host', 1073741824,"
                    " 1500, 64, 2147483648, 7, 4321, 99, 1600000000000, 1600000000001,"
                    " 1600000000002);");
    assert_int_equal(schema_version(f->db), 1);

    ASSERT_NO_ERR(store_open(f->db, &f->s, &e), &e);
    assert_int_equal(schema_version(f->db), STORE_SCHEMA_VERSION);

    /* The old row is intact and belongs to the default project. */
    ASSERT_NO_ERR(store_env_get(f->s, "env_old", &out, &e), &e);
    assert_string_equal(out.id, "env_old");
    assert_int_equal(out.state, STORE_ENV_STOPPED);
    assert_string_equal(out.network, "open");
    assert_string_equal(out.image, "host");
    assert_int_equal(out.memory_bytes, 1073741824);
    assert_int_equal(out.cpus_milli, 1500);
    assert_int_equal(out.pids, 64);
    assert_int_equal(out.disk_bytes, 2147483648ULL);
    assert_int_equal(out.uid_slot, 7);
    assert_int_equal(out.init_pid, 4321);
    assert_int_equal(out.init_start, 99);
    assert_int_equal(out.created_ms, 1600000000000);
    assert_int_equal(out.updated_ms, 1600000000001);
    assert_int_equal(out.last_used_ms, 1600000000002);
    assert_string_equal(out.project, "default");
    assert_int_equal(out.file_count, 0);
    assert_int_equal(out.size_bytes, 0);
    assert_int_equal(out.counted_ms, 0);
    ASSERT_NO_ERR(store_env_config(f->s, "env_old", &cfg, &e), &e);
    assert_string_equal(cfg, "{}");
    free(cfg);

    /* The new index, tables and columns work on the upgraded file. */
    ASSERT_NO_ERR(store_env_page(f->s, "default", 0, 0, 10, &v, &n, &e), &e);
    assert_int_equal(n, 1);
    assert_string_equal(v[0].id, "env_old");
    assert_int_equal(v[0].seq, 1);
    free(v);
    ASSERT_NO_ERR(store_env_set_counts(f->s, "env_old", 2, 3, 4, &e), &e);
    fake_hash(40, h);
    ASSERT_NO_ERR(store_key_insert(f->s, &k, h, &e), &e);
    ASSERT_NO_ERR(store_upload_insert(f->s, &u, &e), &e);
    /* The old row keeps its uid slot: a new environment gets another one. */
    {
        struct store_env fresh = make_env("env_new", "", 7);
        ASSERT_NO_ERR(store_env_insert(f->s, &fresh, NULL, 16, &e), &e);
        assert_true(fresh.uid_slot != 7);
        assert_int_equal(fresh.seq, 2);
    }

    /* Reopening does not migrate again. */
    store_close(f->s);
    f->s = NULL;
    ASSERT_NO_ERR(store_open(f->db, &f->s, &e), &e);
    assert_int_equal(schema_version(f->db), STORE_SCHEMA_VERSION);
    ASSERT_NO_ERR(store_env_get(f->s, "env_old", &out, &e), &e);
    assert_int_equal(out.file_count, 2);
    assert_string_equal(out.project, "default");
}

static void
test_migrate_v1_failure_keeps_v1(void **state)
{
    struct fixture *f = *state;
    struct store_env out;
    struct err *e = NULL;

    /* A v1 file that already has a table named like one migration 2 creates: the migration
     * fails, and its transaction leaves version 1 and the data as they were. */
    raw_exec(f->db, v1_schema);
    raw_exec(f->db, "INSERT INTO environments VALUES ('env_keep', 0, 'disabled', 'host', 1, 1,"
                    " 1, 1, 3, 0, 0, 10, 10, 10);"
                    "CREATE TABLE uploads (x INTEGER);");
    assert_int_equal(store_open(f->db, &f->s, &e), -1);
    assert_null(f->s);
    ASSERT_ERR_CONTAINS(&e, ERR_IO, "migration 2");
    assert_int_equal(schema_version(f->db), 1);

    /* Once the obstacle is gone, the upgrade goes through with the row intact. */
    raw_exec(f->db, "DROP TABLE uploads;");
    ASSERT_NO_ERR(store_open(f->db, &f->s, &e), &e);
    assert_int_equal(schema_version(f->db), STORE_SCHEMA_VERSION);
    ASSERT_NO_ERR(store_env_get(f->s, "env_keep", &out, &e), &e);
    assert_string_equal(out.project, "default");
    assert_int_equal(out.uid_slot, 3);
}

/* Migration 6 numbers the rows a version-5 file holds in the order they listed in then
 * (created_ms, then id), leaves pooled rows unnumbered, and later rows continue the count. */
static void
test_migrate_numbers_old_rows(void **state)
{
    struct fixture *f = *state;
    static const char *const want[] = { "env_a", "env_m", "env_z", "env_c", "env_new" };
    struct store_env out, *v = NULL, fresh = make_env("env_new", "default", 300);
    size_t n = 0;
    struct err *e = NULL;

    ASSERT_NO_ERR(store_open(f->db, &f->s, &e), &e);
    store_close(f->s);
    f->s = NULL;
    /* Back to version 5 as it was: no meta table, no seq column, the old index, no egress
     * time index. */
    raw_exec(f->db, "DROP TABLE meta;"
                    "DROP INDEX egress_log_by_time;"
                    "DROP INDEX environments_by_seq;"
                    "DROP INDEX environments_by_project;"
                    "ALTER TABLE environments DROP COLUMN seq;"
                    "ALTER TABLE environments DROP COLUMN init_gen;"
                    "CREATE INDEX environments_by_project ON environments"
                    " (project, created_ms, id);"
                    "PRAGMA user_version = 5;");
    raw_exec(f->db, "INSERT INTO environments (id, state, network, image, memory_bytes,"
                    " cpus_milli, pids, disk_bytes, uid_slot, created_ms, updated_ms,"
                    " last_used_ms, project) VALUES"
                    " ('env_c', 2, 'open', 'host', 1, 1, 1, 1, 1, 300, 300, 300, 'default'),"
                    " ('env_z', 2, 'open', 'host', 1, 1, 1, 1, 2, 200, 200, 200, 'default'),"
                    " ('env_pool', 5, 'open', 'host', 1, 1, 1, 1, 3, 150, 150, 150, 'default'),"
                    " ('env_m', 2, 'open', 'host', 1, 1, 1, 1, 4, 200, 200, 200, 'default'),"
                    " ('env_a', 2, 'open', 'host', 1, 1, 1, 1, 5, 100, 100, 100, 'default');");

    ASSERT_NO_ERR(store_open(f->db, &f->s, &e), &e);
    assert_int_equal(schema_version(f->db), STORE_SCHEMA_VERSION);
    ASSERT_NO_ERR(store_env_get(f->s, "env_pool", &out, &e), &e);
    assert_int_equal(out.seq, 0);
    assert_int_equal(out.init_gen, 0); /* the oldest generation: a newer build stops it */
    ASSERT_NO_ERR(store_env_insert(f->s, &fresh, NULL, 16, &e), &e);
    assert_int_equal(fresh.seq, 5);
    ASSERT_NO_ERR(store_env_page(f->s, "default", 0, 0, 10, &v, &n, &e), &e);
    assert_page(v, n, want, ARRAY_LEN(want));
    for (size_t i = 0; i + 1 < n; i++)
        assert_int_equal(v[i].seq, (int64_t)i + 1);
    free(v);
}

/* ------------------------------------------------------------------------ */

int
test_store_api_run(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    static const struct CMUnitTest tests[] = {
        T(test_page_project_order),
        T(test_page_walk_ties),
        T(test_egress_purge),
        T(test_egress_page_by_interaction),
        T(test_egress_update),
        T(test_egress_ids_never_reused),
        T(test_seq_creation_order),
        T(test_page_stable_under_inserts),
        T(test_page_limits),
        T(test_page_many),
        T(test_project_default_and_config),
        T(test_set_counts),
        T(test_set_state_last_used),
        cmocka_unit_test(test_state_names_new),
        cmocka_unit_test_setup_teardown(test_pool_claim, setup, teardown),
        T(test_new_states_persist),
        T(test_key_insert_lookup),
        T(test_key_duplicate_name),
        T(test_key_list_order),
        T(test_key_list_many),
        T(test_key_revoke),
        T(test_upload_roundtrip),
        T(test_upload_duplicate),
        T(test_upload_list_delete),
        T(test_upload_list_many),
        cmocka_unit_test_setup_teardown(test_migrate_v1, setup_dir, teardown),
        cmocka_unit_test_setup_teardown(test_migrate_v1_failure_keeps_v1, setup_dir, teardown),
        cmocka_unit_test_setup_teardown(test_migrate_numbers_old_rows, setup_dir, teardown),
    };
#undef T

    return cmocka_run_group_tests_name("store/api", tests, NULL, NULL);
}
