/*
 * The SQLite store. Schema changes are numbered migrations applied in one transaction each,
 * tracked by PRAGMA user_version, so an old data directory upgrades in place and a crash in
 * the middle of one leaves the previous version intact.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sqlite3.h>

#include "store.h"

/* The statements of the hot paths (every API request runs some), prepared once. */
enum {
    Q_ENV_GET,
    Q_ENV_CONFIG,
    Q_KEY_BY_HASH,
    Q_ENV_TOUCH,
    Q_EGRESS_INSERT,
    Q_EGRESS_UPDATE,
    Q_EVENT_INSERT,
    Q_EVENTS_AFTER,
    Q_STEP_PUT,
    Q_INTERACTION_GET,
    Q_INTERACTION_UPDATE,
    Q_MAX,
};

struct store {
    sqlite3 *db;
    sqlite3_stmt *q[Q_MAX];
};

static void
cleanup_stmt_fn(sqlite3_stmt **st)
{
    if (*st != NULL)
        sqlite3_finalize(*st);
}
#define cleanup_stmt __attribute__((cleanup(cleanup_stmt_fn)))

/* Cached statements are reset, not finalized, when a function is done with them: a read
 * statement left mid-result would hold its read transaction open. */
static void
cleanup_reset_fn(sqlite3_stmt **st)
{
    if (*st != NULL) {
        sqlite3_reset(*st);
        sqlite3_clear_bindings(*st);
    }
}
#define cleanup_reset __attribute__((cleanup(cleanup_reset_fn)))

static sqlite3_stmt *
cached(struct store *s, int q, const char *sql)
{
    if (s->q[q] == NULL &&
        sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s->q[q], NULL) != SQLITE_OK)
        return NULL;
    return s->q[q];
}

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
    /* 2: the API server: projects, environment config and counts, keys, upload sessions */
    "ALTER TABLE environments ADD COLUMN project TEXT NOT NULL DEFAULT 'default';"
    "ALTER TABLE environments ADD COLUMN config TEXT NOT NULL DEFAULT '{}';"
    "ALTER TABLE environments ADD COLUMN file_count INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE environments ADD COLUMN size_bytes INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE environments ADD COLUMN counted_ms INTEGER NOT NULL DEFAULT 0;"
    "CREATE INDEX environments_by_project ON environments (project, created_ms, id);"
    "CREATE TABLE api_keys ("
    " name TEXT PRIMARY KEY,"
    " project TEXT NOT NULL,"
    " scopes TEXT NOT NULL,"
    " hash TEXT NOT NULL UNIQUE,"
    " prefix TEXT NOT NULL,"
    " created_ms INTEGER NOT NULL,"
    " revoked_ms INTEGER NOT NULL DEFAULT 0"
    ") STRICT;"
    "CREATE TABLE uploads ("
    " id TEXT PRIMARY KEY,"
    " env_id TEXT NOT NULL,"
    " project TEXT NOT NULL,"
    " path TEXT NOT NULL,"
    " total INTEGER NOT NULL,"
    " overwrite INTEGER NOT NULL,"
    " extract INTEGER NOT NULL,"
    " mime TEXT NOT NULL,"
    " created_ms INTEGER NOT NULL"
    ") STRICT;",
    /* 3: the egress audit trail */
    "CREATE TABLE egress_log ("
    " id INTEGER PRIMARY KEY,"
    " env_id TEXT NOT NULL,"
    " interaction_id TEXT NOT NULL DEFAULT '',"
    " ts_ms INTEGER NOT NULL,"
    " host TEXT NOT NULL,"
    " port INTEGER NOT NULL,"
    " method TEXT NOT NULL,"
    " decision TEXT NOT NULL,"
    " reason TEXT NOT NULL,"
    " bytes_up INTEGER NOT NULL,"
    " bytes_down INTEGER NOT NULL"
    ") STRICT;"
    "CREATE INDEX egress_log_by_env ON egress_log (env_id, id);",
    /* 4: credentials; secret holds only ciphertext (api/ encrypts) */
    "CREATE TABLE credentials ("
    " project TEXT NOT NULL,"
    " id TEXT NOT NULL,"
    " type TEXT NOT NULL,"
    " config TEXT NOT NULL,"
    " secret BLOB NOT NULL,"
    " status TEXT NOT NULL,"
    " created_ms INTEGER NOT NULL,"
    " updated_ms INTEGER NOT NULL,"
    " PRIMARY KEY (project, id)"
    ") STRICT;",
    /* 5: agents, interactions, their steps and events (the SSE log), idempotency keys */
    "CREATE TABLE agents ("
    " project TEXT NOT NULL,"
    " id TEXT NOT NULL,"
    " body TEXT NOT NULL,"
    " created_ms INTEGER NOT NULL,"
    " updated_ms INTEGER NOT NULL,"
    " PRIMARY KEY (project, id)"
    ") STRICT;"
    "CREATE TABLE interactions ("
    " id TEXT PRIMARY KEY,"
    " project TEXT NOT NULL,"
    " key_name TEXT NOT NULL,"
    " status TEXT NOT NULL,"
    " env_id TEXT NOT NULL,"
    " previous_id TEXT NOT NULL,"
    " request TEXT NOT NULL,"
    " history TEXT,"
    " usage TEXT,"
    " errors TEXT,"
    " stored INTEGER NOT NULL,"
    " created_ms INTEGER NOT NULL,"
    " updated_ms INTEGER NOT NULL,"
    " runner TEXT NOT NULL DEFAULT ''"
    ") STRICT;"
    "CREATE INDEX interactions_by_status ON interactions (status, created_ms);"
    "CREATE INDEX interactions_by_time ON interactions (updated_ms);"
    "CREATE TABLE interaction_steps ("
    " interaction_id TEXT NOT NULL REFERENCES interactions (id) ON DELETE CASCADE,"
    " idx INTEGER NOT NULL,"
    " step TEXT NOT NULL,"
    " PRIMARY KEY (interaction_id, idx)"
    ") STRICT, WITHOUT ROWID;"
    "CREATE TABLE interaction_events ("
    " interaction_id TEXT NOT NULL REFERENCES interactions (id) ON DELETE CASCADE,"
    " seq INTEGER NOT NULL,"
    " data TEXT NOT NULL,"
    " PRIMARY KEY (interaction_id, seq)"
    ") STRICT, WITHOUT ROWID;"
    "CREATE TABLE idempotency ("
    " project TEXT NOT NULL,"
    " key TEXT NOT NULL,"
    " interaction_id TEXT NOT NULL,"
    " created_ms INTEGER NOT NULL,"
    " PRIMARY KEY (project, key)"
    ") STRICT;",
    /*
     * 6: seq, the order environments were created in, so equal creation times list in that
     * order instead of by their random ids. NULL while pooled (5): a pooled row gets its seq
     * when it is claimed. Existing rows are numbered in the order they listed in until now.
     */
    "ALTER TABLE environments ADD COLUMN seq INTEGER;"
    "UPDATE environments SET seq = o.n FROM"
    " (SELECT id, row_number() OVER (ORDER BY created_ms, id) AS n FROM environments"
    "  WHERE state != 5) AS o WHERE environments.id = o.id;"
    "CREATE UNIQUE INDEX environments_by_seq ON environments (seq);"
    "DROP INDEX environments_by_project;"
    "CREATE INDEX environments_by_project ON environments (project, created_ms, seq);",
    /* 7: egress records are purged by age (the janitor, after --retention) */
    "CREATE INDEX egress_log_by_time ON egress_log (ts_ms);",
    /*
     * 8: egress record ids are never used twice. Without AUTOINCREMENT a purge that took the
     * newest rows (a quiet installation past its retention) let new records take ids at or
     * below a page token a client holds, and a client following the trail skipped them. The
     * table is copied with its ids; sqlite_sequence starts at the largest.
     */
    "CREATE TABLE egress_log_v8 ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " env_id TEXT NOT NULL,"
    " interaction_id TEXT NOT NULL DEFAULT '',"
    " ts_ms INTEGER NOT NULL,"
    " host TEXT NOT NULL,"
    " port INTEGER NOT NULL,"
    " method TEXT NOT NULL,"
    " decision TEXT NOT NULL,"
    " reason TEXT NOT NULL,"
    " bytes_up INTEGER NOT NULL,"
    " bytes_down INTEGER NOT NULL"
    ") STRICT;"
    "INSERT INTO egress_log_v8 (id, env_id, interaction_id, ts_ms, host, port, method, decision,"
    " reason, bytes_up, bytes_down) SELECT id, env_id, interaction_id, ts_ms, host, port, method,"
    " decision, reason, bytes_up, bytes_down FROM egress_log;"
    "DROP TABLE egress_log;"
    "ALTER TABLE egress_log_v8 RENAME TO egress_log;"
    "CREATE INDEX egress_log_by_env ON egress_log (env_id, id);"
    "CREATE INDEX egress_log_by_time ON egress_log (ts_ms);",
    /* 9: facts about the installation; first, the boot the database was last used in */
    "CREATE TABLE meta ("
    " key TEXT PRIMARY KEY,"
    " value TEXT NOT NULL"
    ") STRICT;",
    /* 10: the generation of the code inside each running sandbox (SANDBOX_INIT_GEN); a
     * sandbox started before builds recorded it has 0, the oldest there is */
    "ALTER TABLE environments ADD COLUMN init_gen INTEGER NOT NULL DEFAULT 0;",
};

_Static_assert(STORE_ENV_POOLED == 5, "migration 6 names the pooled state by its number");

_Static_assert(sizeof(migrations) / sizeof(migrations[0]) == STORE_SCHEMA_VERSION,
               "STORE_SCHEMA_VERSION counts the migrations");

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

/* Whether the last statement failed on a primary key or a unique index: a duplicate. */
static bool
duplicate(struct store *s)
{
    int rc = sqlite3_extended_errcode(s->db);

    return rc == SQLITE_CONSTRAINT_PRIMARYKEY || rc == SQLITE_CONSTRAINT_UNIQUE;
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
    sqlite3_reset(st); /* a statement still stepping locks the schema against DROP */
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

/*
 * Switching a new database to WAL needs its lock for a moment, and SQLite answers "locked"
 * at once, without its busy handler, when another process holds it (two paddock processes
 * opening a fresh data directory together): retry for up to the busy timeout.
 */
static int
set_wal(struct store *s, struct err **errp)
{
    for (int i = 0;; i++) {
        int rc = sqlite3_exec(s->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                                     " PRAGMA foreign_keys=ON",
                              NULL, NULL, NULL);
        struct timespec ts = {0, 10 * 1000 * 1000};
        if (rc == SQLITE_OK)
            return 0;
        rc &= 0xff;
        if ((rc != SQLITE_BUSY && rc != SQLITE_LOCKED) || i == 1000)
            return db_err(s, errp, "set WAL mode");
        nanosleep(&ts, NULL);
    }
}

int
store_open(const char *path, struct store **out, struct err **errp)
{
    struct store *s = xcalloc(1, sizeof(*s));
    char boot[37];

    if (sqlite3_open_v2(path, &s->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX |
                            SQLITE_OPEN_EXRESCODE,
                        NULL) != SQLITE_OK) {
        err_set(errp, ERR_IO, 0, "open database %s: %s", path,
                s->db != NULL ? sqlite3_errmsg(s->db) : "out of memory");
        store_close(s);
        return -1;
    }
    sqlite3_busy_timeout(s->db, STORE_BUSY_MS);
    if (set_wal(s, errp) < 0 || migrate(s, errp) < 0 ||
        (util_boot_id(boot) == 0 && store_note_boot(s, boot, NULL, errp) < 0)) {
        err_wrap(errp, "open database %s", path);
        store_close(s);
        return -1;
    }
    *out = s;
    return 0;
}

void
store_busy_handler(struct store *s, int (*fn)(void *arg, int count), void *arg)
{
    sqlite3_busy_handler(s->db, fn, arg);
}

#define BOOT_ID_MAX 64

/* The boot recorded last; "" when none is. */
static int
boot_get(struct store *s, char out[static BOOT_ID_MAX + 1], struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;
    int rc;

    out[0] = '\0';
    if (sqlite3_prepare_v2(s->db, "SELECT value FROM meta WHERE key = 'boot_id'", -1, &st, NULL) !=
        SQLITE_OK)
        return db_err(s, errp, "read the boot id");
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        snprintf(out, BOOT_ID_MAX + 1, "%s", (const char *)sqlite3_column_text(st, 0));
    else if (rc != SQLITE_DONE)
        return db_err(s, errp, "read the boot id");
    return 0;
}

struct boot_args {
    const char *boot_id;
    int forgot;
};

static int
note_boot_tx(struct store *s, void *arg, struct err **errp)
{
    struct boot_args *a = arg;
    cleanup_stmt sqlite3_stmt *st = NULL;
    char last[BOOT_ID_MAX + 1];

    if (boot_get(s, last, errp) < 0)
        return -1;
    if (strcmp(last, a->boot_id) == 0)
        return 0; /* another process noted it first */
    if (last[0] != '\0') {
        if (exec_sql(s,
                     "UPDATE environments SET init_pid = 0, init_start = 0, init_gen = 0 WHERE "
                     "init_pid != 0"
                     " OR init_start != 0",
                     errp) < 0)
            return -1;
        a->forgot = sqlite3_changes(s->db);
        /* Only a running interaction's runner is ever read (recovery); the column keeps the
         * last runner of every other, and rewriting those would be the whole table. */
        if (exec_sql(s,
                     "UPDATE interactions SET runner = '' WHERE status = 'in_progress'"
                     " AND runner != ''",
                     errp) < 0)
            return -1;
        a->forgot += sqlite3_changes(s->db);
    }
    if (sqlite3_prepare_v2(s->db,
                           "INSERT INTO meta (key, value) VALUES ('boot_id', ?1)"
                           " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(s, errp, "record the boot id");
    sqlite3_bind_text(st, 1, a->boot_id, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        return db_err(s, errp, "record the boot id");
    return 0;
}

int
store_note_boot(struct store *s, const char *boot_id, int *forgot, struct err **errp)
{
    struct boot_args a = { boot_id, 0 };
    char last[BOOT_ID_MAX + 1];

    if (forgot != NULL)
        *forgot = 0;
    if (boot_id[0] == '\0' || strlen(boot_id) > BOOT_ID_MAX)
        return err_set(errp, ERR_INVALID, 0, "a boot id is 1 to %d characters", BOOT_ID_MAX);
    /* Every open of the database comes here: the common case reads, and writes nothing. */
    if (boot_get(s, last, errp) < 0)
        return err_wrap(errp, "note this boot");
    if (strcmp(last, boot_id) == 0)
        return 0;
    if (store_tx(s, note_boot_tx, &a, errp) < 0)
        return err_wrap(errp, "note this boot");
    if (forgot != NULL)
        *forgot = a.forgot;
    return 0;
}

void
store_close(struct store *s)
{
    if (s == NULL)
        return;
    for (int i = 0; i < Q_MAX; i++)
        sqlite3_finalize(s->q[i]);
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
    case STORE_ENV_OFFLINE:
        return "offline";
    case STORE_ENV_EXPIRED:
        return "expired";
    case STORE_ENV_POOLED:
        return "pooled";
    }
    return "unknown";
}

/* The columns insert writes; ENV_COLS adds seq, which the store assigns itself. */
#define ENV_SET_COLS                                                                             \
    "id, state, network, image, memory_bytes, cpus_milli, pids, disk_bytes, uid_slot, init_pid," \
    " init_start, created_ms, updated_ms, last_used_ms, project, file_count, size_bytes, "       \
    "counted_ms, init_gen"
#define ENV_COLS ENV_SET_COLS ", seq"
static const char env_cols[] = ENV_COLS;

/* The next creation number; evaluated inside the statement that assigns it. */
#define NEXT_SEQ "(SELECT COALESCE(MAX(seq), 0) + 1 FROM environments)"

static void
copy_text(char *dst, size_t dstlen, sqlite3_stmt *st, int col)
{
    const unsigned char *t = sqlite3_column_text(st, col);

    snprintf(dst, dstlen, "%s", t != NULL ? (const char *)t : "");
}

/* copy_text() for text that came from outside (an egress record's host, method, reason): what
 * is read back is printable ASCII, whatever a row written by an older build holds, so it
 * prints safely on a terminal and is always valid JSON ('?' stands in). */
static void
copy_printable(char *dst, size_t dstlen, sqlite3_stmt *st, int col)
{
    copy_text(dst, dstlen, st, col);
    util_printable(dst);
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
    /* A range given back is stored as -seq: negative, and unique as seq is. */
    e->uid_slot =
        sqlite3_column_int64(st, 8) < 0 ? STORE_NO_SLOT : (uint32_t)sqlite3_column_int64(st, 8);
    e->init_pid = sqlite3_column_int64(st, 9);
    e->init_start = (uint64_t)sqlite3_column_int64(st, 10);
    e->created_ms = sqlite3_column_int64(st, 11);
    e->updated_ms = sqlite3_column_int64(st, 12);
    e->last_used_ms = sqlite3_column_int64(st, 13);
    copy_text(e->project, sizeof(e->project), st, 14);
    e->file_count = (uint64_t)sqlite3_column_int64(st, 15);
    e->size_bytes = (uint64_t)sqlite3_column_int64(st, 16);
    e->counted_ms = sqlite3_column_int64(st, 17);
    e->init_gen = (uint32_t)sqlite3_column_int64(st, 18);
    e->seq = sqlite3_column_int64(st, 19);
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
store_env_insert(struct store *s, struct store_env *env, const char *config, uint32_t max_slots,
                 struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;
    cleanup_free char *sql = xasprintf(
        "INSERT INTO environments (" ENV_SET_COLS ", config, seq) VALUES "
        "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?, CASE WHEN ?2 = %d THEN NULL ELSE " NEXT_SEQ
        " END) RETURNING seq",
        (int)STORE_ENV_POOLED);

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
    sqlite3_bind_text(st, 15, env->project[0] ? env->project : "default", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 16, (int64_t)env->file_count);
    sqlite3_bind_int64(st, 17, (int64_t)env->size_bytes);
    sqlite3_bind_int64(st, 18, env->counted_ms);
    sqlite3_bind_int64(st, 19, env->init_gen);
    sqlite3_bind_text(st, 20, config != NULL ? config : "{}", -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_ROW) {
        db_err(s, errp, "insert environment");
        goto rollback;
    }
    env->seq = sqlite3_column_int64(st, 0);
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
    cleanup_reset sqlite3_stmt *st =
        cached(s, Q_ENV_GET, "SELECT " ENV_COLS " FROM environments WHERE id = ?");
    int rc;

    if (st == NULL)
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

/* Rows matching the WHERE clause where (may be ""), oldest first. */
static int
list_where(struct store *s, const char *where, struct store_env **out, size_t *n_out,
           struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;
    cleanup_free char *sql =
        xasprintf("SELECT %s FROM environments %s ORDER BY created_ms, seq, id", env_cols, where);
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

int
store_env_list(struct store *s, struct store_env **out, size_t *n_out, struct err **errp)
{
    return list_where(s, "", out, n_out, errp);
}

int
store_env_list_pooled(struct store *s, struct store_env **out, size_t *n_out, struct err **errp)
{
    char where[64];

    snprintf(where, sizeof(where), "WHERE state = %d", (int)STORE_ENV_POOLED);
    return list_where(s, where, out, n_out, errp);
}

int
store_env_claim(struct store *s, const char *id, const struct store_env *want,
                const char *config, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;

    /* One statement is one transaction: the row is the pool's or the user's, never half. */
    if (sqlite3_prepare_v2(s->db,
                           "UPDATE environments SET state = ?, network = ?, memory_bytes = ?,"
                           " cpus_milli = ?, pids = ?, disk_bytes = ?, created_ms = ?,"
                           " updated_ms = ?, last_used_ms = ?, project = ?, config = ?,"
                           " file_count = 0, size_bytes = 0, counted_ms = 0, seq = " NEXT_SEQ
                           " WHERE id = ? AND state = ?",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(s, errp, "claim environment");
    sqlite3_bind_int(st, 1, want->state);
    sqlite3_bind_text(st, 2, want->network, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (int64_t)want->memory_bytes);
    sqlite3_bind_int64(st, 4, want->cpus_milli);
    sqlite3_bind_int64(st, 5, (int64_t)want->pids);
    sqlite3_bind_int64(st, 6, (int64_t)want->disk_bytes);
    sqlite3_bind_int64(st, 7, want->created_ms);
    sqlite3_bind_int64(st, 8, want->updated_ms);
    sqlite3_bind_int64(st, 9, want->last_used_ms);
    sqlite3_bind_text(st, 10, want->project[0] ? want->project : "default", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 11, config != NULL ? config : "{}", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 12, id, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 13, STORE_ENV_POOLED);
    if (sqlite3_step(st) != SQLITE_DONE)
        return db_err(s, errp, "claim environment");
    if (sqlite3_changes(s->db) == 0)
        return err_set(errp, ERR_CONFLICT, 0, "environment %s is not pooled", id);
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
                    uint64_t init_start, uint32_t init_gen, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;
    int64_t now = util_now_ms();

    /* Only a start counts as activity: the janitor's idle and offline moves must not. */
    if (sqlite3_prepare_v2(s->db,
                           "UPDATE environments SET state = ?, init_pid = ?, init_start = ?,"
                           " updated_ms = ?,"
                           " last_used_ms = CASE WHEN ?1 = 1 THEN ?4 ELSE last_used_ms END,"
                           " init_gen = ?6"
                           " WHERE id = ?5",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(s, errp, "update environment");
    _Static_assert(STORE_ENV_RUNNING == 1, "the SQL above says 1");
    sqlite3_bind_int(st, 1, stt);
    sqlite3_bind_int64(st, 2, init_pid);
    sqlite3_bind_int64(st, 3, (int64_t)init_start);
    sqlite3_bind_int64(st, 4, now);
    sqlite3_bind_text(st, 5, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, init_gen);
    return change_one(s, st, id, "update environment", errp);
}

int
store_env_touch(struct store *s, const char *id, struct err **errp)
{
    cleanup_reset sqlite3_stmt *st =
        cached(s, Q_ENV_TOUCH, "UPDATE environments SET last_used_ms = ? WHERE id = ?");

    if (st == NULL)
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

int
store_env_page(struct store *s, const char *project, int64_t after_created, int64_t after_seq,
               size_t limit, struct store_env **out, size_t *n_out, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;
    cleanup_free char *sql = xasprintf("SELECT %s FROM environments WHERE project = ?"
                                       " AND state != %d AND (created_ms, seq) > (?, ?)"
                                       " ORDER BY created_ms, seq LIMIT ?",
                                       env_cols, (int)STORE_ENV_POOLED);
    cleanup_free struct store_env *v = xcalloc(limit ? limit : 1, sizeof(*v));
    size_t n = 0;
    int rc = SQLITE_DONE;

    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
        return db_err(s, errp, "list environments");
    sqlite3_bind_text(st, 1, project, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, after_created);
    sqlite3_bind_int64(st, 3, after_seq);
    sqlite3_bind_int64(st, 4, (int64_t)limit);
    while (n < limit && (rc = sqlite3_step(st)) == SQLITE_ROW)
        row_to_env(st, &v[n++]);
    if (n < limit && rc != SQLITE_DONE)
        return db_err(s, errp, "list environments");
    *out = steal_ptr(&v);
    *n_out = n;
    return 0;
}

int
store_env_config(struct store *s, const char *id, char **out, struct err **errp)
{
    cleanup_reset sqlite3_stmt *st =
        cached(s, Q_ENV_CONFIG, "SELECT config FROM environments WHERE id = ?");
    int rc;

    if (st == NULL)
        return db_err(s, errp, "get environment config");
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return err_set(errp, ERR_NOT_FOUND, 0, "no environment %s", id);
    if (rc != SQLITE_ROW)
        return db_err(s, errp, "get environment config");
    *out = xstrdup((const char *)sqlite3_column_text(st, 0));
    return 0;
}

int
store_env_expire(struct store *s, const char *id, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;
    int64_t now = util_now_ms();

    if (sqlite3_prepare_v2(s->db,
                           "UPDATE environments SET state = ?, init_pid = 0, init_start = 0,"
                           " init_gen = 0, file_count = 0, size_bytes = 0, counted_ms = ?2,"
                           " updated_ms = ?2, uid_slot = -seq WHERE id = ?3",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(s, errp, "expire environment");
    sqlite3_bind_int(st, 1, STORE_ENV_EXPIRED);
    sqlite3_bind_int64(st, 2, now);
    sqlite3_bind_text(st, 3, id, -1, SQLITE_STATIC);
    return change_one(s, st, id, "expire environment", errp);
}

int
store_env_set_counts(struct store *s, const char *id, uint64_t files, uint64_t bytes,
                     int64_t counted_ms, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;

    if (sqlite3_prepare_v2(s->db,
                           "UPDATE environments SET file_count = ?, size_bytes = ?,"
                           " counted_ms = ? WHERE id = ?",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(s, errp, "count environment");
    sqlite3_bind_int64(st, 1, (int64_t)files);
    sqlite3_bind_int64(st, 2, (int64_t)bytes);
    sqlite3_bind_int64(st, 3, counted_ms);
    sqlite3_bind_text(st, 4, id, -1, SQLITE_STATIC);
    return change_one(s, st, id, "count environment", errp);
}

/* ------------------------------------------------------------------ keys */

static void
row_to_key(sqlite3_stmt *st, struct store_key *k)
{
    memset(k, 0, sizeof(*k));
    copy_text(k->name, sizeof(k->name), st, 0);
    copy_text(k->project, sizeof(k->project), st, 1);
    copy_text(k->scopes, sizeof(k->scopes), st, 2);
    copy_text(k->prefix, sizeof(k->prefix), st, 3);
    k->created_ms = sqlite3_column_int64(st, 4);
    k->revoked_ms = sqlite3_column_int64(st, 5);
}

#define KEY_COLS "name, project, scopes, prefix, created_ms, revoked_ms"

int
store_key_insert(struct store *s, const struct store_key *k, const char *hash, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;

    if (sqlite3_prepare_v2(s->db,
                           "INSERT INTO api_keys (" KEY_COLS ", hash) VALUES (?,?,?,?,?,0,?)",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(s, errp, "insert key");
    sqlite3_bind_text(st, 1, k->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, k->project, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, k->scopes, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, k->prefix, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, k->created_ms);
    sqlite3_bind_text(st, 6, hash, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) {
        if (duplicate(s))
            return err_set(errp, ERR_CONFLICT, 0, "a key named '%s' exists", k->name);
        return db_err(s, errp, "insert key");
    }
    return 0;
}

int
store_key_by_hash(struct store *s, const char *hash, struct store_key *out, struct err **errp)
{
    cleanup_reset sqlite3_stmt *st =
        cached(s, Q_KEY_BY_HASH, "SELECT " KEY_COLS " FROM api_keys WHERE hash = ?");
    int rc;

    if (st == NULL)
        return db_err(s, errp, "look up key");
    sqlite3_bind_text(st, 1, hash, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return err_set(errp, ERR_NOT_FOUND, 0, "no such key");
    if (rc != SQLITE_ROW)
        return db_err(s, errp, "look up key");
    row_to_key(st, out);
    return 0;
}

int
store_key_list(struct store *s, struct store_key **out, size_t *n_out, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;
    cleanup_free struct store_key *v = NULL;
    size_t n = 0, cap = 0;
    int rc;

    if (sqlite3_prepare_v2(s->db, "SELECT " KEY_COLS " FROM api_keys ORDER BY created_ms, name",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(s, errp, "list keys");
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap == 0 ? 16 : cap * 2;
            v = xrealloc(v, cap * sizeof(*v));
        }
        row_to_key(st, &v[n++]);
    }
    if (rc != SQLITE_DONE)
        return db_err(s, errp, "list keys");
    *out = steal_ptr(&v);
    *n_out = n;
    return 0;
}

int
store_key_revoke(struct store *s, const char *name, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;

    if (sqlite3_prepare_v2(s->db,
                           "UPDATE api_keys SET revoked_ms = ? WHERE name = ? AND revoked_ms = 0",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(s, errp, "revoke key");
    sqlite3_bind_int64(st, 1, util_now_ms());
    sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        return db_err(s, errp, "revoke key");
    if (sqlite3_changes(s->db) == 0)
        return err_set(errp, ERR_NOT_FOUND, 0, "no active key named '%s'", name);
    return 0;
}

/* --------------------------------------------------------------- uploads */

#define UPLOAD_COLS "id, env_id, project, path, total, overwrite, extract, mime, created_ms"

static void
row_to_upload(sqlite3_stmt *st, struct store_upload *u)
{
    memset(u, 0, sizeof(*u));
    copy_text(u->id, sizeof(u->id), st, 0);
    copy_text(u->env_id, sizeof(u->env_id), st, 1);
    copy_text(u->project, sizeof(u->project), st, 2);
    copy_text(u->path, sizeof(u->path), st, 3);
    u->total = (uint64_t)sqlite3_column_int64(st, 4);
    u->overwrite = sqlite3_column_int(st, 5) != 0;
    u->extract = sqlite3_column_int(st, 6) != 0;
    copy_text(u->mime, sizeof(u->mime), st, 7);
    u->created_ms = sqlite3_column_int64(st, 8);
}

int
store_upload_insert(struct store *s, const struct store_upload *u, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;

    if (sqlite3_prepare_v2(s->db,
                           "INSERT INTO uploads (" UPLOAD_COLS ") VALUES (?,?,?,?,?,?,?,?,?)", -1,
                           &st, NULL) != SQLITE_OK)
        return db_err(s, errp, "insert upload");
    sqlite3_bind_text(st, 1, u->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, u->env_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, u->project, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, u->path, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, (int64_t)u->total);
    sqlite3_bind_int(st, 6, u->overwrite);
    sqlite3_bind_int(st, 7, u->extract);
    sqlite3_bind_text(st, 8, u->mime, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 9, u->created_ms);
    if (sqlite3_step(st) != SQLITE_DONE)
        return db_err(s, errp, "insert upload");
    return 0;
}

int
store_upload_get(struct store *s, const char *id, struct store_upload *out, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;
    int rc;

    if (sqlite3_prepare_v2(s->db, "SELECT " UPLOAD_COLS " FROM uploads WHERE id = ?", -1, &st,
                           NULL) != SQLITE_OK)
        return db_err(s, errp, "get upload");
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return err_set(errp, ERR_NOT_FOUND, 0, "no upload session %s", id);
    if (rc != SQLITE_ROW)
        return db_err(s, errp, "get upload");
    row_to_upload(st, out);
    return 0;
}

int
store_upload_list(struct store *s, struct store_upload **out, size_t *n_out, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;
    cleanup_free struct store_upload *v = NULL;
    size_t n = 0, cap = 0;
    int rc;

    if (sqlite3_prepare_v2(s->db, "SELECT " UPLOAD_COLS " FROM uploads ORDER BY created_ms", -1,
                           &st, NULL) != SQLITE_OK)
        return db_err(s, errp, "list uploads");
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap == 0 ? 16 : cap * 2;
            v = xrealloc(v, cap * sizeof(*v));
        }
        row_to_upload(st, &v[n++]);
    }
    if (rc != SQLITE_DONE)
        return db_err(s, errp, "list uploads");
    *out = steal_ptr(&v);
    *n_out = n;
    return 0;
}

int
store_upload_delete(struct store *s, const char *id, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;

    if (sqlite3_prepare_v2(s->db, "DELETE FROM uploads WHERE id = ?", -1, &st, NULL) !=
        SQLITE_OK)
        return db_err(s, errp, "delete upload");
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        return db_err(s, errp, "delete upload");
    return 0;
}

/* ----------------------------------------------------------------- egress */

int
store_egress_insert(struct store *s, const struct store_egress *r, int64_t *id_out,
                    struct err **errp)
{
    cleanup_reset sqlite3_stmt *st = cached(s, Q_EGRESS_INSERT,
                                            "INSERT INTO egress_log (env_id, interaction_id,"
                                            " ts_ms, host, port, method, decision, reason,"
                                            " bytes_up, bytes_down)"
                                            " VALUES (?,?,?,?,?,?,?,?,?,?)");

    if (st == NULL)
        return db_err(s, errp, "record egress");
    sqlite3_bind_text(st, 1, r->env_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, r->interaction_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, r->ts_ms);
    sqlite3_bind_text(st, 4, r->host, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 5, r->port);
    sqlite3_bind_text(st, 6, r->method, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 7, r->decision, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 8, r->reason, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 9, (int64_t)r->bytes_up);
    sqlite3_bind_int64(st, 10, (int64_t)r->bytes_down);
    if (sqlite3_step(st) != SQLITE_DONE)
        return db_err(s, errp, "record egress");
    if (id_out != NULL)
        *id_out = sqlite3_last_insert_rowid(s->db);
    return 0;
}

int
store_egress_update(struct store *s, int64_t id, const struct store_egress *r, bool *found,
                    struct err **errp)
{
    cleanup_reset sqlite3_stmt *st =
        cached(s, Q_EGRESS_UPDATE,
               "UPDATE egress_log SET decision = ?2, reason = ?3, bytes_up = ?4, bytes_down = ?5,"
               " interaction_id = ?6, method = ?7 WHERE id = ?1");

    if (st == NULL)
        return db_err(s, errp, "update an egress record");
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_text(st, 2, r->decision, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, r->reason, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, (int64_t)r->bytes_up);
    sqlite3_bind_int64(st, 5, (int64_t)r->bytes_down);
    sqlite3_bind_text(st, 6, r->interaction_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 7, r->method, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        return db_err(s, errp, "update an egress record");
    *found = sqlite3_changes(s->db) > 0;
    return 0;
}

int
store_egress_purge(struct store *s, int64_t before_ms, size_t limit, size_t *n_out,
                   struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;

    if (n_out != NULL)
        *n_out = 0;
    if (sqlite3_prepare_v2(s->db,
                           "DELETE FROM egress_log WHERE id IN (SELECT id FROM egress_log"
                           " WHERE ts_ms < ? ORDER BY ts_ms LIMIT ?)",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(s, errp, "purge egress records");
    sqlite3_bind_int64(st, 1, before_ms);
    sqlite3_bind_int64(st, 2, (int64_t)limit);
    if (sqlite3_step(st) != SQLITE_DONE)
        return db_err(s, errp, "purge egress records");
    if (n_out != NULL)
        *n_out = (size_t)sqlite3_changes(s->db);
    return 0;
}

int
store_egress_page(struct store *s, const char *env_id, const char *interaction_id, int64_t after_id,
                  size_t limit, struct store_egress **out, size_t *n_out, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;
    cleanup_free struct store_egress *v = xcalloc(limit ? limit : 1, sizeof(*v));
    size_t n = 0;
    int rc = SQLITE_DONE;

    if (sqlite3_prepare_v2(s->db,
                           "SELECT id, env_id, interaction_id, ts_ms, host, port, method,"
                           " decision, reason, bytes_up, bytes_down FROM egress_log"
                           " WHERE env_id = ?1 AND id > ?2 AND (?4 IS NULL OR interaction_id = ?4)"
                           " ORDER BY id LIMIT ?3",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(s, errp, "list egress");
    sqlite3_bind_text(st, 1, env_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, after_id);
    sqlite3_bind_int64(st, 3, (int64_t)limit);
    if (interaction_id != NULL)
        sqlite3_bind_text(st, 4, interaction_id, -1, SQLITE_STATIC);
    while (n < limit && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct store_egress *r = &v[n++];
        r->id = sqlite3_column_int64(st, 0);
        copy_text(r->env_id, sizeof(r->env_id), st, 1);
        copy_printable(r->interaction_id, sizeof(r->interaction_id), st, 2);
        r->ts_ms = sqlite3_column_int64(st, 3);
        copy_printable(r->host, sizeof(r->host), st, 4);
        r->port = sqlite3_column_int(st, 5);
        copy_printable(r->method, sizeof(r->method), st, 6);
        copy_printable(r->decision, sizeof(r->decision), st, 7);
        copy_printable(r->reason, sizeof(r->reason), st, 8);
        r->bytes_up = (uint64_t)sqlite3_column_int64(st, 9);
        r->bytes_down = (uint64_t)sqlite3_column_int64(st, 10);
    }
    if (n < limit && rc != SQLITE_DONE)
        return db_err(s, errp, "list egress");
    *out = steal_ptr(&v);
    *n_out = n;
    return 0;
}

/* ------------------------------------------------------------ credentials */

#define CRED_COLS "project, id, type, config, secret, status, created_ms, updated_ms"

static void
row_to_cred(sqlite3_stmt *st, struct store_cred *c)
{
    const void *blob = sqlite3_column_blob(st, 4);
    int n = sqlite3_column_bytes(st, 4);

    memset(c, 0, sizeof(*c));
    copy_text(c->project, sizeof(c->project), st, 0);
    copy_text(c->id, sizeof(c->id), st, 1);
    copy_text(c->type, sizeof(c->type), st, 2);
    c->config = xstrdup(sqlite3_column_text(st, 3) != NULL
                            ? (const char *)sqlite3_column_text(st, 3)
                            : "{}");
    c->secret_len = n > 0 ? (size_t)n : 0;
    c->secret = xmalloc(c->secret_len + 1);
    if (n > 0)
        memcpy(c->secret, blob, (size_t)n);
    copy_text(c->status, sizeof(c->status), st, 5);
    c->created_ms = sqlite3_column_int64(st, 6);
    c->updated_ms = sqlite3_column_int64(st, 7);
}

void
store_cred_clear(struct store_cred *c)
{
    if (c == NULL)
        return;
    free(c->config);
    if (c->secret != NULL)
        explicit_bzero(c->secret, c->secret_len);
    free(c->secret);
    c->config = NULL;
    c->secret = NULL;
}

int
store_cred_put(struct store *s, const struct store_cred *c, bool create, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;
    const char *sql =
        create ? "INSERT INTO credentials (" CRED_COLS ") VALUES (?1,?2,?3,?4,?5,?6,?7,?8)"
               : "UPDATE credentials SET type = ?3, config = ?4, secret = ?5, status = ?6,"
                 " updated_ms = ?8 WHERE project = ?1 AND id = ?2";

    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
        return db_err(s, errp, "store credential");
    sqlite3_bind_text(st, 1, c->project, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, c->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, c->type, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, c->config, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 5, c->secret, (int)c->secret_len, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, c->status, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 7, c->created_ms);
    sqlite3_bind_int64(st, 8, c->updated_ms);
    if (sqlite3_step(st) != SQLITE_DONE) {
        if (duplicate(s))
            return err_set(errp, ERR_CONFLICT, 0, "credential %s already exists", c->id);
        return db_err(s, errp, "store credential");
    }
    if (!create && sqlite3_changes(s->db) == 0)
        return err_set(errp, ERR_NOT_FOUND, 0, "credential %s not found", c->id);
    return 0;
}

int
store_cred_get(struct store *s, const char *project, const char *id, struct store_cred *out,
               struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;
    int rc;

    if (sqlite3_prepare_v2(s->db,
                           "SELECT " CRED_COLS " FROM credentials WHERE project = ? AND id = ?",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(s, errp, "get credential");
    sqlite3_bind_text(st, 1, project, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return err_set(errp, ERR_NOT_FOUND, 0, "credential %s not found", id);
    if (rc != SQLITE_ROW)
        return db_err(s, errp, "get credential");
    row_to_cred(st, out);
    return 0;
}

int
store_cred_page(struct store *s, const char *project, const char *after_id, size_t limit,
                struct store_cred **out, size_t *n_out, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;
    struct store_cred *v = xcalloc(limit ? limit : 1, sizeof(*v));
    size_t n = 0;
    int rc = SQLITE_DONE;

    if (sqlite3_prepare_v2(s->db,
                           "SELECT " CRED_COLS " FROM credentials WHERE project = ? AND id > ?"
                           " ORDER BY id LIMIT ?",
                           -1, &st, NULL) != SQLITE_OK) {
        free(v);
        return db_err(s, errp, "list credentials");
    }
    sqlite3_bind_text(st, 1, project, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, after_id != NULL ? after_id : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (int64_t)limit);
    while (n < limit && (rc = sqlite3_step(st)) == SQLITE_ROW)
        row_to_cred(st, &v[n++]);
    if (n < limit && rc != SQLITE_DONE) {
        for (size_t i = 0; i < n; i++)
            store_cred_clear(&v[i]);
        free(v);
        return db_err(s, errp, "list credentials");
    }
    *out = v;
    *n_out = n;
    return 0;
}

int
store_cred_delete(struct store *s, const char *project, const char *id, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;

    if (sqlite3_prepare_v2(s->db, "DELETE FROM credentials WHERE project = ? AND id = ?", -1, &st,
                           NULL) != SQLITE_OK)
        return db_err(s, errp, "delete credential");
    sqlite3_bind_text(st, 1, project, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        return db_err(s, errp, "delete credential");
    if (sqlite3_changes(s->db) == 0)
        return err_set(errp, ERR_NOT_FOUND, 0, "credential %s not found", id);
    return 0;
}

/* ----------------------------------------------------------------- agents */

static char *
col_dup(sqlite3_stmt *st, int col)
{
    const unsigned char *t = sqlite3_column_text(st, col);

    return t != NULL ? xstrdup((const char *)t) : NULL;
}

void
store_agent_clear(struct store_agent *a)
{
    if (a == NULL)
        return;
    free(a->body);
    a->body = NULL;
}

#define AGENT_COLS "project, id, body, created_ms, updated_ms"

static void
row_to_agent(sqlite3_stmt *st, struct store_agent *a)
{
    memset(a, 0, sizeof(*a));
    copy_text(a->project, sizeof(a->project), st, 0);
    copy_text(a->id, sizeof(a->id), st, 1);
    a->body = col_dup(st, 2);
    if (a->body == NULL)
        a->body = xstrdup("{}");
    a->created_ms = sqlite3_column_int64(st, 3);
    a->updated_ms = sqlite3_column_int64(st, 4);
}

int
store_agent_insert(struct store *s, const struct store_agent *a, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;

    if (sqlite3_prepare_v2(s->db, "INSERT INTO agents (" AGENT_COLS ") VALUES (?,?,?,?,?)", -1,
                           &st, NULL) != SQLITE_OK)
        return db_err(s, errp, "store agent");
    sqlite3_bind_text(st, 1, a->project, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, a->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, a->body, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, a->created_ms);
    sqlite3_bind_int64(st, 5, a->updated_ms);
    if (sqlite3_step(st) != SQLITE_DONE) {
        if (duplicate(s))
            return err_set(errp, ERR_CONFLICT, 0, "agent %s already exists", a->id);
        return db_err(s, errp, "store agent");
    }
    return 0;
}

int
store_agent_get(struct store *s, const char *project, const char *id, struct store_agent *out,
                struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;
    int rc;

    if (sqlite3_prepare_v2(s->db, "SELECT " AGENT_COLS " FROM agents WHERE project = ? AND id = ?",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(s, errp, "get agent");
    sqlite3_bind_text(st, 1, project, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return err_set(errp, ERR_NOT_FOUND, 0, "agent %s not found", id);
    if (rc != SQLITE_ROW)
        return db_err(s, errp, "get agent");
    row_to_agent(st, out);
    return 0;
}

int
store_agent_page(struct store *s, const char *project, const char *after_id, size_t limit,
                 struct store_agent **out, size_t *n_out, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;
    struct store_agent *v = xcalloc(limit ? limit : 1, sizeof(*v));
    size_t n = 0;
    int rc = SQLITE_DONE;

    if (sqlite3_prepare_v2(s->db,
                           "SELECT " AGENT_COLS " FROM agents WHERE project = ? AND id > ?"
                           " ORDER BY id LIMIT ?",
                           -1, &st, NULL) != SQLITE_OK) {
        free(v);
        return db_err(s, errp, "list agents");
    }
    sqlite3_bind_text(st, 1, project, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, after_id != NULL ? after_id : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (int64_t)limit);
    while (n < limit && (rc = sqlite3_step(st)) == SQLITE_ROW)
        row_to_agent(st, &v[n++]);
    if (n < limit && rc != SQLITE_DONE) {
        for (size_t i = 0; i < n; i++)
            store_agent_clear(&v[i]);
        free(v);
        return db_err(s, errp, "list agents");
    }
    *out = v;
    *n_out = n;
    return 0;
}

int
store_agent_delete(struct store *s, const char *project, const char *id, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;

    if (sqlite3_prepare_v2(s->db, "DELETE FROM agents WHERE project = ? AND id = ?", -1, &st,
                           NULL) != SQLITE_OK)
        return db_err(s, errp, "delete agent");
    sqlite3_bind_text(st, 1, project, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        return db_err(s, errp, "delete agent");
    if (sqlite3_changes(s->db) == 0)
        return err_set(errp, ERR_NOT_FOUND, 0, "agent %s not found", id);
    return 0;
}

/* ----------------------------------------------------------- interactions */

#define INTERACTION_COLS                                                                            \
    "id, project, key_name, status, env_id, previous_id, request, history, usage, errors,"        \
    " stored, created_ms, updated_ms, runner"

void
store_interaction_clear(struct store_interaction *it)
{
    if (it == NULL)
        return;
    free(it->request);
    free(it->history);
    free(it->usage);
    free(it->errors);
    it->request = it->history = it->usage = it->errors = NULL;
}

static void
bind_text_or_null(sqlite3_stmt *st, int col, const char *v)
{
    if (v != NULL)
        sqlite3_bind_text(st, col, v, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, col);
}

int
store_begin(struct store *s, struct err **errp)
{
    return exec_sql(s, "BEGIN IMMEDIATE", errp);
}

void
store_rollback(struct store *s)
{
    if (!sqlite3_get_autocommit(s->db))
        exec_sql(s, "ROLLBACK", NULL);
}

int
store_commit(struct store *s, struct err **errp)
{
    if (exec_sql(s, "COMMIT", errp) < 0) {
        exec_sql(s, "ROLLBACK", NULL);
        return -1;
    }
    return 0;
}

int
store_tx(struct store *s, int (*fn)(struct store *s, void *arg, struct err **errp), void *arg,
         struct err **errp)
{
    if (exec_sql(s, "BEGIN IMMEDIATE", errp) < 0)
        return -1;
    if (fn(s, arg, errp) < 0) {
        exec_sql(s, "ROLLBACK", NULL);
        return -1;
    }
    if (exec_sql(s, "COMMIT", errp) < 0) {
        exec_sql(s, "ROLLBACK", NULL);
        return -1;
    }
    return 0;
}

struct insert_args {
    const struct store_interaction *it;
    const char *idem_key;
    int64_t not_before_ms;
    char *existing;
};

static int
insert_tx(struct store *s, void *arg, struct err **errp)
{
    struct insert_args *a = arg;
    const struct store_interaction *it = a->it;
    cleanup_stmt sqlite3_stmt *st = NULL;

    if (a->idem_key != NULL) {
        cleanup_stmt sqlite3_stmt *q = NULL;
        int rc;
        if (sqlite3_prepare_v2(s->db,
                               "SELECT i.interaction_id FROM idempotency i JOIN interactions x"
                               " ON x.id = i.interaction_id WHERE i.project = ? AND i.key = ?"
                               " AND i.created_ms >= ?",
                               -1, &q, NULL) != SQLITE_OK)
            return db_err(s, errp, "idempotency key");
        sqlite3_bind_text(q, 1, it->project, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 2, a->idem_key, -1, SQLITE_STATIC);
        sqlite3_bind_int64(q, 3, a->not_before_ms);
        rc = sqlite3_step(q);
        if (rc == SQLITE_ROW) {
            copy_text(a->existing, 40, q, 0);
            return err_set(errp, ERR_CONFLICT, 0, "idempotency key already used by %s",
                           a->existing);
        }
        if (rc != SQLITE_DONE)
            return db_err(s, errp, "idempotency key");
    }
    if (sqlite3_prepare_v2(s->db,
                           "INSERT INTO interactions (" INTERACTION_COLS
                           ") VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(s, errp, "store interaction");
    sqlite3_bind_text(st, 1, it->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, it->project, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, it->key_name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, it->status, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, it->env_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, it->previous_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 7, it->request != NULL ? it->request : "{}", -1, SQLITE_STATIC);
    bind_text_or_null(st, 8, it->history);
    bind_text_or_null(st, 9, it->usage);
    bind_text_or_null(st, 10, it->errors);
    sqlite3_bind_int(st, 11, it->stored ? 1 : 0);
    sqlite3_bind_int64(st, 12, it->created_ms);
    sqlite3_bind_int64(st, 13, it->updated_ms);
    sqlite3_bind_text(st, 14, it->runner, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        return db_err(s, errp, "store interaction");
    if (a->idem_key != NULL) {
        cleanup_stmt sqlite3_stmt *k = NULL;
        if (sqlite3_prepare_v2(s->db,
                               "INSERT OR REPLACE INTO idempotency (project, key, interaction_id,"
                               " created_ms) VALUES (?,?,?,?)",
                               -1, &k, NULL) != SQLITE_OK)
            return db_err(s, errp, "idempotency key");
        sqlite3_bind_text(k, 1, it->project, -1, SQLITE_STATIC);
        sqlite3_bind_text(k, 2, a->idem_key, -1, SQLITE_STATIC);
        sqlite3_bind_text(k, 3, it->id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(k, 4, it->created_ms);
        if (sqlite3_step(k) != SQLITE_DONE)
            return db_err(s, errp, "idempotency key");
    }
    return 0;
}

int
store_interaction_insert(struct store *s, const struct store_interaction *it,
                         const char *idem_key, int64_t not_before_ms, char *existing,
                         struct err **errp)
{
    struct insert_args a = {it, idem_key, not_before_ms, existing};

    return store_tx(s, insert_tx, &a, errp);
}

static void
row_to_interaction(sqlite3_stmt *st, struct store_interaction *it)
{
    memset(it, 0, sizeof(*it));
    copy_text(it->id, sizeof(it->id), st, 0);
    copy_text(it->project, sizeof(it->project), st, 1);
    copy_text(it->key_name, sizeof(it->key_name), st, 2);
    copy_text(it->status, sizeof(it->status), st, 3);
    copy_text(it->env_id, sizeof(it->env_id), st, 4);
    copy_text(it->previous_id, sizeof(it->previous_id), st, 5);
    it->request = col_dup(st, 6);
    it->history = col_dup(st, 7);
    it->usage = col_dup(st, 8);
    it->errors = col_dup(st, 9);
    it->stored = sqlite3_column_int(st, 10) != 0;
    it->created_ms = sqlite3_column_int64(st, 11);
    it->updated_ms = sqlite3_column_int64(st, 12);
    copy_text(it->runner, sizeof(it->runner), st, 13);
}

int
store_interaction_get(struct store *s, const char *id, struct store_interaction *out,
                      struct err **errp)
{
    cleanup_reset sqlite3_stmt *st = cached(
        s, Q_INTERACTION_GET, "SELECT " INTERACTION_COLS " FROM interactions WHERE id = ?");
    int rc;

    if (st == NULL)
        return db_err(s, errp, "get interaction");
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return err_set(errp, ERR_NOT_FOUND, 0, "interaction %s not found", id);
    if (rc != SQLITE_ROW)
        return db_err(s, errp, "get interaction");
    row_to_interaction(st, out);
    return 0;
}

int
store_interaction_update(struct store *s, const struct store_interaction *it, struct err **errp)
{
    cleanup_reset sqlite3_stmt *st =
        cached(s, Q_INTERACTION_UPDATE,
               "UPDATE interactions SET status = ?, env_id = ?, history = ?, usage = ?,"
               " errors = ?, updated_ms = ?, runner = ? WHERE id = ?");

    if (st == NULL)
        return db_err(s, errp, "update interaction");
    sqlite3_bind_text(st, 1, it->status, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, it->env_id, -1, SQLITE_STATIC);
    bind_text_or_null(st, 3, it->history);
    bind_text_or_null(st, 4, it->usage);
    bind_text_or_null(st, 5, it->errors);
    sqlite3_bind_int64(st, 6, it->updated_ms);
    sqlite3_bind_text(st, 7, it->runner, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 8, it->id, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        return db_err(s, errp, "update interaction");
    if (sqlite3_changes(s->db) == 0)
        return err_set(errp, ERR_NOT_FOUND, 0, "interaction %s not found", it->id);
    return 0;
}

int
store_interaction_set_progress(struct store *s, const char *id, const char *history,
                               const char *usage, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;

    if (sqlite3_prepare_v2(s->db, "UPDATE interactions SET history = ?, usage = ? WHERE id = ?", -1,
                           &st, NULL) != SQLITE_OK)
        return db_err(s, errp, "record interaction progress");
    bind_text_or_null(st, 1, history);
    bind_text_or_null(st, 2, usage);
    sqlite3_bind_text(st, 3, id, -1, SQLITE_STATIC);
    return change_one(s, st, id, "record interaction progress", errp);
}

int
store_interaction_delete(struct store *s, const char *id, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;

    if (sqlite3_prepare_v2(s->db, "DELETE FROM interactions WHERE id = ?", -1, &st, NULL) !=
        SQLITE_OK)
        return db_err(s, errp, "delete interaction");
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        return db_err(s, errp, "delete interaction");
    if (sqlite3_changes(s->db) == 0)
        return err_set(errp, ERR_NOT_FOUND, 0, "interaction %s not found", id);
    return 0;
}

int
store_interaction_ids(struct store *s, const char *status, char (**out)[40], size_t *n_out,
                      struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;
    char (*v)[40] = NULL;
    size_t n = 0, cap = 0;
    int rc;

    if (sqlite3_prepare_v2(s->db,
                           "SELECT id FROM interactions WHERE status = ? ORDER BY created_ms, id",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(s, errp, "list interactions");
    sqlite3_bind_text(st, 1, status, -1, SQLITE_STATIC);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            v = xrealloc(v, cap * sizeof(*v));
        }
        copy_text(v[n++], 40, st, 0);
    }
    if (rc != SQLITE_DONE) {
        free(v);
        return db_err(s, errp, "list interactions");
    }
    *out = v;
    *n_out = n;
    return 0;
}

int
store_interaction_purge(struct store *s, int64_t before_ms, size_t limit, size_t *n_out,
                        struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;

    if (n_out != NULL)
        *n_out = 0;
    if (sqlite3_prepare_v2(s->db,
                           "DELETE FROM interactions WHERE id IN (SELECT id FROM interactions"
                           " WHERE updated_ms < ? AND status NOT IN ('queued', 'in_progress')"
                           " ORDER BY updated_ms LIMIT ?)",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(s, errp, "purge interactions");
    sqlite3_bind_int64(st, 1, before_ms);
    sqlite3_bind_int64(st, 2, (int64_t)limit);
    if (sqlite3_step(st) != SQLITE_DONE)
        return db_err(s, errp, "purge interactions");
    if (n_out != NULL)
        *n_out = (size_t)sqlite3_changes(s->db);
    return 0;
}

int
store_step_put(struct store *s, const char *iid, int64_t idx, const char *step,
               struct err **errp)
{
    cleanup_reset sqlite3_stmt *st =
        cached(s, Q_STEP_PUT,
               "INSERT OR REPLACE INTO interaction_steps (interaction_id, idx, step)"
               " VALUES (?,?,?)");

    if (st == NULL)
        return db_err(s, errp, "store step");
    sqlite3_bind_text(st, 1, iid, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, idx);
    sqlite3_bind_text(st, 3, step, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        return db_err(s, errp, "store step");
    return 0;
}

int
store_steps(struct store *s, const char *iid, char ***out, size_t *n_out, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;
    char **v = NULL;
    size_t n = 0, cap = 0;
    int rc;

    if (sqlite3_prepare_v2(s->db,
                           "SELECT step FROM interaction_steps WHERE interaction_id = ?"
                           " ORDER BY idx",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(s, errp, "read steps");
    sqlite3_bind_text(st, 1, iid, -1, SQLITE_STATIC);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            v = xrealloc(v, cap * sizeof(*v));
        }
        v[n] = col_dup(st, 0);
        if (v[n] == NULL)
            v[n] = xstrdup("{}");
        n++;
    }
    if (rc != SQLITE_DONE) {
        for (size_t i = 0; i < n; i++)
            free(v[i]);
        free(v);
        return db_err(s, errp, "read steps");
    }
    *out = v;
    *n_out = n;
    return 0;
}

int
store_event_insert(struct store *s, const char *iid, int64_t seq, const char *data,
                   struct err **errp)
{
    cleanup_reset sqlite3_stmt *st = cached(
        s, Q_EVENT_INSERT,
        "INSERT INTO interaction_events (interaction_id, seq, data) VALUES (?,?,?)");

    if (st == NULL)
        return db_err(s, errp, "store event");
    sqlite3_bind_text(st, 1, iid, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, seq);
    sqlite3_bind_text(st, 3, data, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        return db_err(s, errp, "store event");
    return 0;
}

int
store_events_after(struct store *s, const char *iid, int64_t after, size_t limit,
                   struct store_event **out, size_t *n_out, struct err **errp)
{
    cleanup_reset sqlite3_stmt *st = cached(s, Q_EVENTS_AFTER,
                                            "SELECT seq, data FROM interaction_events WHERE"
                                            " interaction_id = ? AND seq > ? ORDER BY seq"
                                            " LIMIT ?");
    struct store_event *v = xcalloc(limit ? limit : 1, sizeof(*v));
    size_t n = 0;
    int rc = SQLITE_DONE;

    if (st == NULL) {
        free(v);
        return db_err(s, errp, "read events");
    }
    sqlite3_bind_text(st, 1, iid, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, after);
    sqlite3_bind_int64(st, 3, (int64_t)limit);
    while (n < limit && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        v[n].seq = sqlite3_column_int64(st, 0);
        v[n].data = col_dup(st, 1);
        if (v[n].data == NULL)
            v[n].data = xstrdup("{}");
        n++;
    }
    if (n < limit && rc != SQLITE_DONE) {
        for (size_t i = 0; i < n; i++)
            free(v[i].data);
        free(v);
        return db_err(s, errp, "read events");
    }
    *out = v;
    *n_out = n;
    return 0;
}

int
store_event_last(struct store *s, const char *iid, int64_t *out, struct err **errp)
{
    cleanup_stmt sqlite3_stmt *st = NULL;

    if (sqlite3_prepare_v2(s->db,
                           "SELECT COALESCE(MAX(seq), 0) FROM interaction_events WHERE"
                           " interaction_id = ?",
                           -1, &st, NULL) != SQLITE_OK)
        return db_err(s, errp, "read events");
    sqlite3_bind_text(st, 1, iid, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_ROW)
        return db_err(s, errp, "read events");
    *out = sqlite3_column_int64(st, 0);
    return 0;
}
