/* Tests for src/store/store.c, each against a fresh database in a private temp directory. */
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

static int
setup(void **state)
{
    struct fixture *f = xcalloc(1, sizeof(*f));
    struct err *e = NULL;

    *state = f;
    f->dir = unit_mkdtemp();
    if (f->dir == NULL) {
        teardown(state); /* cmocka runs no teardown after a failed setup */
        return -1;
    }
    f->db = xasprintf("%s/paddock.db", f->dir);
    if (store_open(f->db, &f->s, &e) < 0) {
        fprintf(stderr, "store_open: %s\n", e->msg);
        err_free(e);
        teardown(state);
        return -1;
    }
    return 0;
}

static struct store_env
make_env(const char *id, int64_t created_ms)
{
    struct store_env e;

    memset(&e, 0, sizeof(e));
    snprintf(e.id, sizeof(e.id), "%s", id);
    e.state = STORE_ENV_CREATING;
    snprintf(e.network, sizeof(e.network), "disabled");
    snprintf(e.image, sizeof(e.image), "host");
    e.memory_bytes = 16ULL << 30;
    e.cpus_milli = 4000;
    e.pids = 4096;
    e.disk_bytes = 10ULL << 30;
    e.uid_slot = 999999; /* overwritten by the insert */
    e.created_ms = created_ms;
    e.updated_ms = created_ms;
    e.last_used_ms = created_ms;
    return e;
}

static void
insert_ok(struct store *s, struct store_env *env, uint32_t max_slots)
{
    struct err *e = NULL;

    ASSERT_NO_ERR(store_env_insert(s, env, NULL, max_slots, &e), &e);
}

static void
assert_env_equal(const struct store_env *a, const struct store_env *b)
{
    assert_string_equal(a->id, b->id);
    assert_int_equal(a->state, b->state);
    assert_string_equal(a->network, b->network);
    assert_string_equal(a->image, b->image);
    assert_int_equal(a->memory_bytes, b->memory_bytes);
    assert_int_equal(a->cpus_milli, b->cpus_milli);
    assert_int_equal(a->pids, b->pids);
    assert_int_equal(a->disk_bytes, b->disk_bytes);
    assert_int_equal(a->uid_slot, b->uid_slot);
    assert_int_equal(a->init_pid, b->init_pid);
    assert_int_equal(a->init_start, b->init_start);
    assert_int_equal(a->created_ms, b->created_ms);
    assert_int_equal(a->updated_ms, b->updated_ms);
    assert_int_equal(a->last_used_ms, b->last_used_ms);
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

    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

/* ------------------------------------------------------------------ tests */

static void
test_open_creates(void **state)
{
    struct fixture *f = *state;
    struct store_env *v = NULL;
    size_t n = 99;
    struct err *e = NULL;

    assert_int_equal(access(f->db, F_OK), 0);
    assert_int_equal(schema_version(f->db), STORE_SCHEMA_VERSION);
    ASSERT_NO_ERR(store_env_list(f->s, &v, &n, &e), &e);
    assert_int_equal(n, 0);
    free(v);
}

static void
test_open_bad_path(void **state)
{
    struct fixture *f = *state;
    struct store *s = NULL;
    struct err *e = NULL;
    char *path = xasprintf("%s/missing/dir/paddock.db", f->dir);

    assert_int_equal(store_open(path, &s, &e), -1);
    assert_null(s);
    ASSERT_ERR_CONTAINS(&e, ERR_IO, "missing/dir");
    free(path);
    store_close(NULL); /* accepts NULL */
}

static void
test_insert_get(void **state)
{
    struct fixture *f = *state;
    struct store_env in = make_env("env_aaaaaaaaaaaaaaaaaaaaaaaaaa", 1700000000000);
    struct store_env out;
    struct err *e = NULL;

    in.state = STORE_ENV_RUNNING;
    snprintf(in.network, sizeof(in.network), "open");
    in.memory_bytes = (1ULL << 63) + 5; /* above INT64_MAX: still round-trips */
    in.cpus_milli = 250;
    in.pids = 17;
    in.disk_bytes = 3ULL << 30;
    in.init_pid = 4242;
    in.init_start = 987654321;
    in.updated_ms = 1700000000001;
    in.last_used_ms = 1700000000002;
    insert_ok(f->s, &in, 16);
    assert_true(in.uid_slot < 16); /* written back */

    memset(&out, 0x5a, sizeof(out));
    ASSERT_NO_ERR(store_env_get(f->s, in.id, &out, &e), &e);
    assert_env_equal(&out, &in);
}

static void
test_get_missing(void **state)
{
    struct fixture *f = *state;
    struct store_env out;
    struct err *e = NULL;

    memset(&out, 0x5a, sizeof(out));
    assert_int_equal(store_env_get(f->s, "env_nope", &out, &e), -1);
    ASSERT_ERR_CONTAINS(&e, ERR_NOT_FOUND, "env_nope");
    assert_int_equal((unsigned char)out.id[0], 0x5a); /* untouched */

    /* Not found is about the id, never a prefix or a pattern. */
    {
        struct store_env a = make_env("env_abc", 1);
        insert_ok(f->s, &a, 16);
    }
    assert_int_equal(store_env_get(f->s, "env_ab", &out, &e), -1);
    ASSERT_ERR(&e, ERR_NOT_FOUND);
    assert_int_equal(store_env_get(f->s, "env_%", &out, &e), -1);
    ASSERT_ERR(&e, ERR_NOT_FOUND);
}

static void
test_insert_duplicate(void **state)
{
    struct fixture *f = *state;
    struct store_env a = make_env("env_dup", 100);
    struct store_env b = make_env("env_dup", 200);
    struct store_env out, *v = NULL;
    size_t n = 0;
    struct err *e = NULL;
    char msg[512];
    enum err_code code;

    insert_ok(f->s, &a, 16);
    b.cpus_milli = 1;
    assert_int_equal(store_env_insert(f->s, &b, NULL, 16, &e), -1);
    assert_non_null(e);
    code = e->code;
    snprintf(msg, sizeof(msg), "%s", e->msg);
    err_free(e);
    e = NULL;

    /* The first row is unchanged, and the failed insert left nothing behind. */
    ASSERT_NO_ERR(store_env_get(f->s, "env_dup", &out, &e), &e);
    assert_env_equal(&out, &a);
    ASSERT_NO_ERR(store_env_list(f->s, &v, &n, &e), &e);
    assert_int_equal(n, 1);
    free(v);
    /* The transaction was rolled back: the store still accepts writes. */
    b = make_env("env_other", 300);
    insert_ok(f->s, &b, 16);

    /* Checked last so the state checks above run either way. */
    if (code != ERR_CONFLICT)
        fail_msg("duplicate id: error code %s, want conflict (%s)", err_code_name(code), msg);
}

static void
test_list_order(void **state)
{
    struct fixture *f = *state;
    /* Oldest first; equal creation times in the order they were created, not by id. */
    struct store_env rows[] = {
        make_env("env_c", 300), make_env("env_a", 100), make_env("env_z", 200),
        make_env("env_b", 200), make_env("env_d", 50),
    };
    static const char *const want[] = { "env_d", "env_a", "env_z", "env_b", "env_c" };
    struct store_env *v = NULL;
    size_t n = 0;
    struct err *e = NULL;

    for (size_t i = 0; i < ARRAY_LEN(rows); i++)
        insert_ok(f->s, &rows[i], 64);
    ASSERT_NO_ERR(store_env_list(f->s, &v, &n, &e), &e);
    assert_int_equal(n, ARRAY_LEN(want));
    for (size_t i = 0; i < n; i++)
        assert_string_equal(v[i].id, want[i]);
    free(v);
}

static void
test_list_many(void **state)
{
    struct fixture *f = *state;
    enum {
        N = 40
    }; /* past the list's first allocation */
    struct store_env *v = NULL;
    size_t n = 0;
    struct err *e = NULL;

    for (int i = 0; i < N; i++) {
        char id[32];
        struct store_env env;
        snprintf(id, sizeof(id), "env_%02d", i);
        env = make_env(id, 1000 + i);
        insert_ok(f->s, &env, 1000);
    }
    ASSERT_NO_ERR(store_env_list(f->s, &v, &n, &e), &e);
    assert_int_equal(n, N);
    for (int i = 0; i < N; i++) {
        char id[32];
        snprintf(id, sizeof(id), "env_%02d", i);
        assert_string_equal(v[i].id, id);
        assert_int_equal(v[i].created_ms, 1000 + i);
    }
    free(v);
}

static void
test_set_state(void **state)
{
    struct fixture *f = *state;
    struct store_env a = make_env("env_s", 1000);
    struct store_env out;
    struct err *e = NULL;
    int64_t before;

    insert_ok(f->s, &a, 16);
    before = util_now_ms();
    ASSERT_NO_ERR(store_env_set_state(f->s, "env_s", STORE_ENV_RUNNING, 31337, 555, 7, &e), &e);
    ASSERT_NO_ERR(store_env_get(f->s, "env_s", &out, &e), &e);
    assert_int_equal(out.state, STORE_ENV_RUNNING);
    assert_int_equal(out.init_pid, 31337);
    assert_int_equal(out.init_start, 555);
    assert_int_equal(out.init_gen, 7);
    assert_true(out.updated_ms >= before);
    assert_true(out.last_used_ms >= before);
    /* The rest of the row is unchanged. */
    assert_int_equal(out.created_ms, 1000);
    assert_int_equal(out.uid_slot, a.uid_slot);
    assert_int_equal(out.memory_bytes, a.memory_bytes);

    ASSERT_NO_ERR(store_env_set_state(f->s, "env_s", STORE_ENV_STOPPED, 0, 0, 0, &e), &e);
    ASSERT_NO_ERR(store_env_get(f->s, "env_s", &out, &e), &e);
    assert_int_equal(out.state, STORE_ENV_STOPPED);
    assert_int_equal(out.init_pid, 0);
    assert_int_equal(out.init_start, 0);

    assert_int_equal(store_env_set_state(f->s, "env_missing", STORE_ENV_RUNNING, 1, 1, 0, &e), -1);
    ASSERT_ERR_CONTAINS(&e, ERR_NOT_FOUND, "env_missing");
}

static void
test_touch(void **state)
{
    struct fixture *f = *state;
    struct store_env a = make_env("env_t", 1000);
    struct store_env out;
    struct err *e = NULL;
    int64_t before;

    insert_ok(f->s, &a, 16);
    before = util_now_ms();
    ASSERT_NO_ERR(store_env_touch(f->s, "env_t", &e), &e);
    ASSERT_NO_ERR(store_env_get(f->s, "env_t", &out, &e), &e);
    assert_true(out.last_used_ms >= before);
    /* Activity is not a change of the row. */
    assert_int_equal(out.updated_ms, 1000);
    assert_int_equal(out.state, STORE_ENV_CREATING);

    assert_int_equal(store_env_touch(f->s, "env_missing", &e), -1);
    ASSERT_ERR(&e, ERR_NOT_FOUND);
}

static void
test_delete(void **state)
{
    struct fixture *f = *state;
    struct store_env a = make_env("env_d1", 1), b = make_env("env_d2", 2);
    struct store_env out, *v = NULL;
    size_t n = 0;
    struct err *e = NULL;

    insert_ok(f->s, &a, 16);
    insert_ok(f->s, &b, 16);
    ASSERT_NO_ERR(store_env_delete(f->s, "env_d1", &e), &e);
    assert_int_equal(store_env_get(f->s, "env_d1", &out, &e), -1);
    ASSERT_ERR(&e, ERR_NOT_FOUND);
    /* The other row is still there. */
    ASSERT_NO_ERR(store_env_get(f->s, "env_d2", &out, &e), &e);
    ASSERT_NO_ERR(store_env_list(f->s, &v, &n, &e), &e);
    assert_int_equal(n, 1);
    free(v);
    /* Twice: ERR_NOT_FOUND. */
    assert_int_equal(store_env_delete(f->s, "env_d1", &e), -1);
    ASSERT_ERR_CONTAINS(&e, ERR_NOT_FOUND, "env_d1");
}

static void
test_slots_unique(void **state)
{
    struct fixture *f = *state;
    enum {
        N = 32
    };
    bool seen[N] = { false };
    struct store_env extra = make_env("env_extra", 9999);
    struct store_env out;
    struct err *e = NULL;
    uint32_t freed;

    for (int i = 0; i < N; i++) {
        char id[32];
        struct store_env env;
        snprintf(id, sizeof(id), "env_%02d", i);
        env = make_env(id, i);
        insert_ok(f->s, &env, N);
        assert_true(env.uid_slot < N);
        if (seen[env.uid_slot])
            fail_msg("slot %u given twice", env.uid_slot);
        seen[env.uid_slot] = true;
    }
    /* Every slot is taken: the next insert is refused and writes nothing. */
    assert_int_equal(store_env_insert(f->s, &extra, NULL, N, &e), -1);
    ASSERT_ERR(&e, ERR_LIMIT);
    assert_int_equal(store_env_get(f->s, "env_extra", &out, &e), -1);
    ASSERT_ERR(&e, ERR_NOT_FOUND);

    /* Deleting one frees exactly its slot, which the next insert gets. */
    ASSERT_NO_ERR(store_env_get(f->s, "env_07", &out, &e), &e);
    freed = out.uid_slot;
    ASSERT_NO_ERR(store_env_delete(f->s, "env_07", &e), &e);
    insert_ok(f->s, &extra, N);
    assert_int_equal(extra.uid_slot, freed);

    /* A larger range still works, and avoids all the slots in use. */
    {
        struct store_env more = make_env("env_more", 10000);
        insert_ok(f->s, &more, N + 1);
        assert_int_equal(more.uid_slot, N);
    }
}

static void
test_slots_edge(void **state)
{
    struct fixture *f = *state;
    struct store_env a = make_env("env_one", 1), b = make_env("env_two", 2);
    struct err *e = NULL;

    /* No slots at all. */
    assert_int_equal(store_env_insert(f->s, &a, NULL, 0, &e), -1);
    ASSERT_ERR(&e, ERR_LIMIT);
    /* One slot: slot 0, then full. */
    insert_ok(f->s, &a, 1);
    assert_int_equal(a.uid_slot, 0);
    assert_int_equal(store_env_insert(f->s, &b, NULL, 1, &e), -1);
    ASSERT_ERR(&e, ERR_LIMIT);
}

static void
test_reopen_persists(void **state)
{
    struct fixture *f = *state;
    struct store_env a = make_env("env_p1", 10), b = make_env("env_p2", 20);
    struct store_env out;
    struct err *e = NULL;

    insert_ok(f->s, &a, 100);
    insert_ok(f->s, &b, 100);
    ASSERT_NO_ERR(store_env_set_state(f->s, "env_p2", STORE_ENV_STOPPED, 0, 0, 0, &e), &e);
    ASSERT_NO_ERR(store_env_get(f->s, "env_p2", &b, &e), &e);

    /* Reopening runs the migrations again: a no-op on an up-to-date database. */
    for (int round = 0; round < 2; round++) {
        store_close(f->s);
        f->s = NULL;
        assert_int_equal(schema_version(f->db), STORE_SCHEMA_VERSION);
        ASSERT_NO_ERR(store_open(f->db, &f->s, &e), &e);
        assert_int_equal(schema_version(f->db), STORE_SCHEMA_VERSION);
        ASSERT_NO_ERR(store_env_get(f->s, "env_p1", &out, &e), &e);
        assert_env_equal(&out, &a);
        ASSERT_NO_ERR(store_env_get(f->s, "env_p2", &out, &e), &e);
        assert_env_equal(&out, &b);
    }

    /* Two connections on one file at once (the CLI and the server). */
    {
        struct store *s2 = NULL;
        struct store_env c = make_env("env_p3", 30);
        ASSERT_NO_ERR(store_open(f->db, &s2, &e), &e);
        insert_ok(s2, &c, 100);
        ASSERT_NO_ERR(store_env_get(f->s, "env_p3", &out, &e), &e);
        assert_true(out.uid_slot != a.uid_slot && out.uid_slot != b.uid_slot);
        store_close(s2);
    }
}

static void
test_newer_schema_refused(void **state)
{
    struct fixture *f = *state;
    struct store *s = NULL;
    struct err *e = NULL;

    store_close(f->s);
    f->s = NULL;
    raw_exec(f->db, "PRAGMA user_version = 99");
    assert_int_equal(store_open(f->db, &s, &e), -1);
    assert_null(s);
    ASSERT_ERR_CONTAINS(&e, ERR_CONFLICT, "newer");
    /* Refusing changed nothing. */
    assert_int_equal(schema_version(f->db), 99);
}

static void
test_not_a_database(void **state)
{
    struct fixture *f = *state;
    struct store *s = NULL;
    struct err *e = NULL;
    char *path = xasprintf("%s/junk.db", f->dir);
    char junk[4096];
    FILE *fp = fopen(path, "w");

    memset(junk, 'j', sizeof(junk));
    assert_non_null(fp);
    assert_int_equal(fwrite(junk, 1, sizeof(junk), fp), sizeof(junk));
    fclose(fp);
    assert_int_equal(store_open(path, &s, &e), -1);
    assert_null(s);
    assert_non_null(e);
    err_free(e);
    free(path);
}

struct state_name_case {
    enum store_env_state st;
    const char *name;
};

static void
test_state_names(void **state)
{
    static const struct state_name_case cases[] = {
        { STORE_ENV_CREATING, "creating" },
        { STORE_ENV_RUNNING, "running" },
        { STORE_ENV_STOPPED, "stopped" },
        { (enum store_env_state)42, "unknown" },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++)
        assert_string_equal(store_env_state_name(cases[i].st), cases[i].name);
}

/*
 * An expired environment gives its uid range back in the same statement that records the
 * expiry: the ranges are few (16383) and expired rows stay for ever as records, so an
 * installation that kept them all would refuse every create one day.
 */
static void
test_expire_frees_the_slot(void **state)
{
    struct fixture *f = *state;
    struct store_env a = make_env("env_x1", 1000), b = make_env("env_x2", 2000),
                     c = make_env("env_x3", 3000), out;
    struct err *e = NULL;

    insert_ok(f->s, &a, 1);
    assert_int_equal(store_env_insert(f->s, &b, NULL, 1, &e), -1);
    ASSERT_ERR(&e, ERR_LIMIT);
    ASSERT_NO_ERR(store_env_set_counts(f->s, "env_x1", 7, 700, 5, &e), &e);
    ASSERT_NO_ERR(store_env_set_state(f->s, "env_x1", STORE_ENV_RUNNING, 11, 12, 1, &e), &e);
    ASSERT_NO_ERR(store_env_expire(f->s, "env_x1", &e), &e);
    ASSERT_NO_ERR(store_env_get(f->s, "env_x1", &out, &e), &e);
    assert_int_equal(out.state, STORE_ENV_EXPIRED);
    assert_int_equal(out.uid_slot, STORE_NO_SLOT);
    assert_int_equal(out.init_pid, 0);
    assert_int_equal(out.init_gen, 0);
    assert_int_equal(out.file_count, 0);
    assert_int_equal(out.size_bytes, 0);
    assert_true(out.counted_ms > 5);
    /* Its range is taken again; two expired rows do not collide over "no range". */
    insert_ok(f->s, &b, 1);
    assert_int_equal(b.uid_slot, 0);
    ASSERT_NO_ERR(store_env_expire(f->s, "env_x2", &e), &e);
    insert_ok(f->s, &c, 1);
    assert_int_equal(c.uid_slot, 0);
    assert_int_equal(store_env_expire(f->s, "env_missing", &e), -1);
    ASSERT_ERR(&e, ERR_NOT_FOUND);
}

int
test_store_run(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    static const struct CMUnitTest tests[] = {
        T(test_open_creates),
        T(test_open_bad_path),
        T(test_insert_get),
        T(test_get_missing),
        T(test_insert_duplicate),
        T(test_list_order),
        T(test_list_many),
        T(test_set_state),
        T(test_touch),
        T(test_delete),
        T(test_slots_unique),
        T(test_slots_edge),
        T(test_expire_frees_the_slot),
        T(test_reopen_persists),
        T(test_newer_schema_refused),
        T(test_not_a_database),
        cmocka_unit_test(test_state_names),
    };
#undef T

    return cmocka_run_group_tests_name("store", tests, NULL, NULL);
}
