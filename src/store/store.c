/*
 * The SQLite store. Schema changes are numbered migrations applied in one transaction each,
 * tracked by PRAGMA user_version, so an old data directory upgrades in place and a crash in
 * the middle of one leaves the previous version intact.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "store.h"

struct store {
    sqlite3 *db;
};

static void
cleanup_stmt_fn(sqlite3_stmt **st)
{
    if (*st != NULL)
        sqlite3_finalize(*st);
}
#define cleanup_stmt __attribute__((cleanup(cleanup_stmt_fn)))

static const char *const migrations[] = {
    /* 1: environments */
    "CREATE TABLE environments ("
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
    ") STRICT;",
};

static int
db_err(struct store *s, struct err **errp, const char *what)
{
    int rc = sqlite3_errcode(s->db) & 0xff; /* extended codes are on (EXRESCODE) */
    enum err_code code = ERR_IO;

    if (rc == SQLITE_CONSTRAINT)
        code = ERR_CONFLICT;
    else if (rc == SQLITE_BUSY || rc == SQLITE_LOCKED)
        code = ERR_TIMEOUT;
    return err_set(errp, code, 0, "%s: %s", what, sqlite3_errmsg(s->db));
}

static int
exec_sql(struct store *s, const char *sql, struct err **errp)
{
    char *msg = NULL;

    if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        err_set(errp, ERR_IO, 0, "sql: %s", msg != NULL ? msg : sqlite3_errmsg(s->db));
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

static int
migrate(struct store *s, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;
    int version;
    size_t n = sizeof(migrations) / sizeof(migrations[0]);

    if (exec_sql(s, "BEGIN IMMEDIATE", errp) < 0)
        return err_wrap(errp, "migrate");
    if (sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        db_err(s, errp, "read schema version");
        exec_sql(s, "ROLLBACK", NULL);
        return -1;
    }
    version = sqlite3_column_int(st, 0);
    if (version < 0 || (size_t)version > n) {
        exec_sql(s, "ROLLBACK", NULL);
        return err_set(errp, ERR_CONFLICT, 0,
                       "database schema version %d is newer than this paddock (%zu)", version,
                       n);
    }
    for (size_t i = (size_t)version; i < n; i++) {
        if (exec_sql(s, migrations[i], errp) < 0) {
            exec_sql(s, "ROLLBACK", NULL);
            return err_wrap(errp, "migration %zu", i + 1);
        }
    }
    if ((size_t)version < n) {
        char sql[64];
        snprintf(sql, sizeof(sql), "PRAGMA user_version = %zu", n);
        if (exec_sql(s, sql, errp) < 0) {
            exec_sql(s, "ROLLBACK", NULL);
            return -1;
        }
    }
    return exec_sql(s, "COMMIT", errp);
}

int
store_open(const char *path, struct store **out, struct err **errp)
{
    struct store *s = xcalloc(1, sizeof(*s));

    if (sqlite3_open_v2(path, &s->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX |
                            SQLITE_OPEN_EXRESCODE,
                        NULL) != SQLITE_OK) {
        err_set(errp, ERR_IO, 0, "open database %s: %s", path,
                s->db != NULL ? sqlite3_errmsg(s->db) : "out of memory");
        store_close(s);
        return -1;
    }
    sqlite3_busy_timeout(s->db, 10000);
    if (exec_sql(s, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON",
                 errp) < 0 ||
        migrate(s, errp) < 0) {
        err_wrap(errp, "open database %s", path);
        store_close(s);
        return -1;
    }
    *out = s;
    return 0;
}

void
store_close(struct store *s)
{
    if (s == NULL)
        return;
    sqlite3_close_v2(s->db);
    free(s);
}

const char *
store_env_state_name(enum store_env_state st)
{
    switch (st) {
    case STORE_ENV_CREATING:
        return "creating";
    case STORE_ENV_RUNNING:
        return "running";
    case STORE_ENV_STOPPED:
        return "stopped";
    }
    return "unknown";
}

static const char env_cols[] =
    "id, state, network, image, memory_bytes, cpus_milli, pids, disk_bytes, uid_slot, init_pid,"
    " init_start, created_ms, updated_ms, last_used_ms";

static void
copy_text(char *dst, size_t dstlen, sqlite3_stmt *st, int col)
{
    const unsigned char *t = sqlite3_column_text(st, col);

    snprintf(dst, dstlen, "%s", t != NULL ? (const char *)t : "");
}

static void
row_to_env(sqlite3_stmt *st, struct store_env *e)
{
    memset(e, 0, sizeof(*e));
    copy_text(e->id, sizeof(e->id), st, 0);
    e->state = (enum store_env_state)sqlite3_column_int(st, 1);
    copy_text(e->network, sizeof(e->network), st, 2);
    copy_text(e->image, sizeof(e->image), st, 3);
    e->memory_bytes = (uint64_t)sqlite3_column_int64(st, 4);
    e->cpus_milli = (uint32_t)sqlite3_column_int64(st, 5);
    e->pids = (uint64_t)sqlite3_column_int64(st, 6);
    e->disk_bytes = (uint64_t)sqlite3_column_int64(st, 7);
    e->uid_slot = (uint32_t)sqlite3_column_int64(st, 8);
    e->init_pid = sqlite3_column_int64(st, 9);
    e->init_start = (uint64_t)sqlite3_column_int64(st, 10);
    e->created_ms = sqlite3_column_int64(st, 11);
    e->updated_ms = sqlite3_column_int64(st, 12);
    e->last_used_ms = sqlite3_column_int64(st, 13);
}

/* Picks a random slot no row holds; runs inside the caller's write transaction. */
static int
pick_slot(struct store *s, uint32_t max_slots, uint32_t *slot_out, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;
    cleanup_free unsigned char *used = xcalloc(max_slots, 1);
    uint32_t start, nused = 0;
    int rc;

    if (sqlite3_prepare_v2(s->db, "SELECT uid_slot FROM environments", -1, &st, NULL) !=
        SQLITE_OK)
        return db_err(s, errp, "list uid slots");
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t v = sqlite3_column_int64(st, 0);
        if (v >= 0 && v < max_slots && !used[v]) {
            used[v] = 1;
            nused++;
        }
    }
    if (rc != SQLITE_DONE)
        return db_err(s, errp, "list uid slots");
    if (nused >= max_slots)
        return err_set(errp, ERR_LIMIT, 0, "all %u uid ranges are in use", max_slots);
    if (util_random(&start, sizeof(start), errp) < 0)
        return -1;
    start %= max_slots;
    for (uint32_t i = 0; i < max_slots; i++) {
        uint32_t c = (start + i) % max_slots;
        if (!used[c]) {
            *slot_out = c;
            return 0;
        }
    }
    return err_set(errp, ERR_LIMIT, 0, "all %u uid ranges are in use", max_slots);
}

int
store_env_insert(struct store *s, struct store_env *env, uint32_t max_slots, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;
    cleanup_free char *sql = xasprintf("INSERT INTO environments (%s) VALUES "
                                       "(?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                                       env_cols);

    if (exec_sql(s, "BEGIN IMMEDIATE", errp) < 0)
        return err_wrap(errp, "insert environment");
    if (pick_slot(s, max_slots, &env->uid_slot, errp) < 0)
        goto rollback;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) {
        db_err(s, errp, "insert environment");
        goto rollback;
    }
    sqlite3_bind_text(st, 1, env->id, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, env->state);
    sqlite3_bind_text(st, 3, env->network, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, env->image, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, (int64_t)env->memory_bytes);
    sqlite3_bind_int64(st, 6, env->cpus_milli);
    sqlite3_bind_int64(st, 7, (int64_t)env->pids);
    sqlite3_bind_int64(st, 8, (int64_t)env->disk_bytes);
    sqlite3_bind_int64(st, 9, env->uid_slot);
    sqlite3_bind_int64(st, 10, env->init_pid);
    sqlite3_bind_int64(st, 11, (int64_t)env->init_start);
    sqlite3_bind_int64(st, 12, env->created_ms);
    sqlite3_bind_int64(st, 13, env->updated_ms);
    sqlite3_bind_int64(st, 14, env->last_used_ms);
    if (sqlite3_step(st) != SQLITE_DONE) {
        db_err(s, errp, "insert environment");
        goto rollback;
    }
    if (exec_sql(s, "COMMIT", errp) < 0)
        goto rollback;
    return 0;

rollback:
    exec_sql(s, "ROLLBACK", NULL);
    return -1;
}

int
store_env_get(struct store *s, const char *id, struct store_env *out, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;
    cleanup_free char *sql = xasprintf("SELECT %s FROM environments WHERE id = ?", env_cols);
    int rc;

    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
        return db_err(s, errp, "get environment");
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return err_set(errp, ERR_NOT_FOUND, 0, "no environment %s", id);
    if (rc != SQLITE_ROW)
        return db_err(s, errp, "get environment");
    row_to_env(st, out);
    return 0;
}

int
store_env_list(struct store *s, struct store_env **out, size_t *n_out, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;
    cleanup_free char *sql =
        xasprintf("SELECT %s FROM environments ORDER BY created_ms, id", env_cols);
    cleanup_free struct store_env *v = NULL;
    size_t n = 0, cap = 0;
    int rc;

    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
        return db_err(s, errp, "list environments");
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap == 0 ? 16 : cap * 2;
            v = xrealloc(v, cap * sizeof(*v));
        }
        row_to_env(st, &v[n++]);
    }
    if (rc != SQLITE_DONE)
        return db_err(s, errp, "list environments");
    *out = steal_ptr(&v);
    *n_out = n;
    return 0;
}

/* Runs a one-row UPDATE/DELETE bound by the callback; ERR_NOT_FOUND when no row changed. */
static int
change_one(struct store *s, sqlite3_stmt *st, const char *id, const char *what, struct err **errp)
{
    if (sqlite3_step(st) != SQLITE_DONE)
        return db_err(s, errp, what);
    if (sqlite3_changes(s->db) == 0)
        return err_set(errp, ERR_NOT_FOUND, 0, "no environment %s", id);
    return 0;
}

int
store_env_set_state(struct store *s, const char *id, enum store_env_state stt, int64_t init_pid,
                    uint64_t init_start, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;
    int64_t now = util_now_ms();

    if (sqlite3_prepare_v2(s->db,
                           "UPDATE environments SET state = ?, init_pid = ?, init_start = ?,"
                           " updated_ms = ?, last_used_ms = ? WHERE id = ?",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(s, errp, "update environment");
    sqlite3_bind_int(st, 1, stt);
    sqlite3_bind_int64(st, 2, init_pid);
    sqlite3_bind_int64(st, 3, (int64_t)init_start);
    sqlite3_bind_int64(st, 4, now);
    sqlite3_bind_int64(st, 5, now);
    sqlite3_bind_text(st, 6, id, -1, SQLITE_STATIC);
    return change_one(s, st, id, "update environment", errp);
}

int
store_env_touch(struct store *s, const char *id, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;

    if (sqlite3_prepare_v2(s->db, "UPDATE environments SET last_used_ms = ? WHERE id = ?", -1,
                           &st, NULL) != SQLITE_OK)
        return db_err(s, errp, "touch environment");
    sqlite3_bind_int64(st, 1, util_now_ms());
    sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
    return change_one(s, st, id, "touch environment", errp);
}

int
store_env_delete(struct store *s, const char *id, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;

    if (sqlite3_prepare_v2(s->db, "DELETE FROM environments WHERE id = ?", -1, &st, NULL) !=
        SQLITE_OK)
        return db_err(s, errp, "delete environment");
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    return change_one(s, st, id, "delete environment", errp);
}
