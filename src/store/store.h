/*
 * store — paddock's state in one SQLite database (WAL) under the data directory. It knows
 * neither HTTP nor sandboxes: it records what the other modules tell it, transactionally.
 * One connection per thread; several processes (CLI invocations, the server) may share the
 * file, so writers wait up to a busy timeout.
 */
#ifndef PADDOCK_STORE_H
#define PADDOCK_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include "common/common.h"

struct store;

/** How long a statement waits for a lock another connection holds before it fails. */
#define STORE_BUSY_MS 10000

/** The schema version this paddock writes (PRAGMA user_version): one per migration. */
#define STORE_SCHEMA_VERSION 10

/* The uid_slot of an environment that holds no id range any more (expired). */
#define STORE_NO_SLOT UINT32_MAX

enum store_env_state {
    STORE_ENV_CREATING = 0, /* row exists, the sandbox is being set up */
    STORE_ENV_RUNNING,      /* an init was started; liveness is checked by env/ */
    STORE_ENV_STOPPED,      /* no processes; files kept ("idle" on the API) */
    STORE_ENV_OFFLINE,      /* stopped and unused for longer; files kept */
    STORE_ENV_EXPIRED,      /* past retention: files deleted, the row stays as a record */
    STORE_ENV_POOLED,       /* a warm sandbox of the pool: nobody's yet, never listed */
};

/** One environment row. Strings are fixed-size so the struct copies by value. */
struct store_env {
    char id[40];
    enum store_env_state state;
    char network[16];      /* "disabled" or "open" */
    char image[32];        /* base image name, "host" */
    uint64_t memory_bytes; /* cgroup memory limit */
    uint32_t cpus_milli;   /* CPU quota in thousandths of a CPU */
    uint64_t pids;         /* pids cap */
    uint64_t disk_bytes;   /* disk cap */
    uint32_t uid_slot;     /* index of the env's 65536-id host range; STORE_NO_SLOT: none */
    int64_t init_pid;      /* host pid of the sandbox's init, 0 when none */
    uint64_t init_start;   /* its start time in clock ticks (guards against pid reuse) */
    uint32_t init_gen;     /* SANDBOX_INIT_GEN of the build that started it; 0 when older */
    int64_t created_ms;
    int64_t updated_ms;
    int64_t last_used_ms;
    char project[64];    /* owning project of the API key that created it */
    uint64_t file_count; /* the environment's own files, as last counted */
    uint64_t size_bytes;
    int64_t counted_ms; /* when they were counted, 0 never */
    /* Creation order, assigned by the store; 0 while pooled. One above the highest at the
     * time, so the newest's number is taken again once it is deleted: it orders the rows
     * that exist, it names nothing. */
    int64_t seq;
};

/**
 * Opens (creating when missing) the database at path, sets WAL, foreign keys and a busy
 * timeout, runs pending migrations and notes this boot (store_note_boot() with the kernel's
 * boot id, when it tells one). *out is owned; free with store_close().
 */
int store_open(const char *path, struct store **out, struct err **errp);

/**
 * Replaces the connection's busy timeout with fn, called on the thread running a statement
 * each time it finds a lock taken (count: how many times before, for this lock): nonzero to
 * try again, 0 to fail the statement. fn does its own waiting. fn NULL: fail at once.
 */
void store_busy_handler(struct store *s, int (*fn)(void *arg, int count), void *arg);

/**
 * Records that the database is used in the boot boot_id. The processes it names (a sandbox's
 * init, the process running an interaction) are named by pid and start time, which name one
 * process only within one boot: when the database was last used in another boot, every such
 * name is forgotten first (the inits' pids and start times become 0, the runners ""), so that
 * no process of the new boot is taken for one of them. The first boot recorded forgets
 * nothing. *forgot (may be NULL) is how many names were forgotten.
 */
int store_note_boot(struct store *s, const char *boot_id, int *forgot, struct err **errp);

/** Closes the database; accepts NULL. */
void store_close(struct store *s);

/** The printable name of a state ("creating", "running", "stopped"). Borrowed. */
const char *store_env_state_name(enum store_env_state st);

/**
 * Inserts env (state, limits, times as given) and picks a uid slot below max_slots that no
 * other environment holds, chosen at random; the slot is written back to env->uid_slot, and
 * the creation number (env->seq, the next one; 0 for a pooled row) too.
 * ERR_CONFLICT when the id exists, ERR_LIMIT when every slot is taken.
 */
int store_env_insert(struct store *s, struct store_env *env, const char *config,
                     uint32_t max_slots, struct err **errp);

/**
 * One page of a project's environments in (created_ms, seq) order, strictly after the given
 * position (0, 0 for the first page): oldest first, and equal times in the order they were
 * created. Pooled rows are never in it. *out is owned.
 */
int store_env_page(struct store *s, const char *project, int64_t after_created, int64_t after_seq,
                   size_t limit, struct store_env **out, size_t *n_out, struct err **errp);

/** The environment's stored configuration (JSON text). *out is owned. */
int store_env_config(struct store *s, const char *id, char **out, struct err **errp);

/** Records the counts of the environment's own files. */
/**
 * Records that the environment expired (its files are gone), in one statement: the state, no
 * init, zero counts as of now, and its uid range given back (STORE_NO_SLOT) for a new
 * environment to take. ERR_NOT_FOUND when missing.
 */
int store_env_expire(struct store *s, const char *id, struct err **errp);
int store_env_set_counts(struct store *s, const char *id, uint64_t files, uint64_t bytes,
                         int64_t counted_ms, struct err **errp);

/** Reads one environment. ERR_NOT_FOUND when there is none with that id. */
int store_env_get(struct store *s, const char *id, struct store_env *out, struct err **errp);

/**
 * Lists every environment, oldest first (equal times in creation order), pooled ones included. *out
 * is owned (free()); *n_out its length.
 */
int store_env_list(struct store *s, struct store_env **out, size_t *n_out, struct err **errp);

/** Lists the pooled environments, oldest first. *out is owned (free()). */
int store_env_list_pooled(struct store *s, struct store_env **out, size_t *n_out,
                          struct err **errp);

/**
 * Claims the pooled environment id for its user, in one statement: state, network, limits,
 * times, project and config become want's (and config's), and it takes the next creation
 * number (want->seq is not written back; read the row for it). ERR_CONFLICT when the row is
 * no longer pooled (or gone).
 */
int store_env_claim(struct store *s, const char *id, const struct store_env *want,
                    const char *config, struct err **errp);

/**
 * Records a new state and init identity (pid 0 when none) with the generation of the code
 * that runs it (init_gen). ERR_NOT_FOUND when missing.
 */
int store_env_set_state(struct store *s, const char *id, enum store_env_state st, int64_t init_pid,
                        uint64_t init_start, uint32_t init_gen, struct err **errp);

/** Records activity now. ERR_NOT_FOUND when missing. */
int store_env_touch(struct store *s, const char *id, struct err **errp);

/** Deletes one environment row. ERR_NOT_FOUND when missing. */
int store_env_delete(struct store *s, const char *id, struct err **errp);

/* ------------------------------------------------------------------ keys */

/** An API key; only a hash of the secret is stored. */
struct store_key {
    char name[64];
    char project[64];
    char scopes[256]; /* space-separated */
    char prefix[16];  /* the first characters of the key, to recognise it */
    int64_t created_ms;
    int64_t revoked_ms; /* 0 while active */
};

/** ERR_CONFLICT when a key of that name exists. hash is the hex SHA-256 of the secret. */
int store_key_insert(struct store *s, const struct store_key *k, const char *hash,
                     struct err **errp);
/** ERR_NOT_FOUND when no key has that hash (revoked keys are returned, marked). */
int store_key_by_hash(struct store *s, const char *hash, struct store_key *out,
                      struct err **errp);
int store_key_list(struct store *s, struct store_key **out, size_t *n_out, struct err **errp);
/** ERR_NOT_FOUND when there is no active key of that name. */
int store_key_revoke(struct store *s, const char *name, struct err **errp);

/* --------------------------------------------------------------- uploads */

/** A resumable upload session; its bytes are staged in DATA/uploads/<id>. */
struct store_upload {
    char id[40];
    char env_id[40];
    char project[64];
    char path[4096]; /* absolute inside the sandbox */
    uint64_t total;  /* bytes announced at start */
    bool overwrite;
    bool extract;
    char mime[128];
    int64_t created_ms;
};

int store_upload_insert(struct store *s, const struct store_upload *u, struct err **errp);
int store_upload_get(struct store *s, const char *id, struct store_upload *out,
                     struct err **errp);
int store_upload_list(struct store *s, struct store_upload **out, size_t *n_out,
                      struct err **errp);
int store_upload_delete(struct store *s, const char *id, struct err **errp);

/* ----------------------------------------------------------------- egress */

/** One decision of the egress proxy. */
struct store_egress {
    int64_t id;
    char env_id[40];
    char interaction_id[40];
    int64_t ts_ms;
    char host[260];
    int port;
    char method[16];
    char decision[8]; /* "allow" or "deny" */
    char reason[160];
    uint64_t bytes_up;
    uint64_t bytes_down;
};

/** Appends a record; *id_out (may be NULL) is its id. */
int store_egress_insert(struct store *s, const struct store_egress *r, int64_t *id_out,
                        struct err **errp);
/** Rewrites what a record knows only at its connection's end (decision, reason, bytes,
 * interaction, method); *found is false when the record is gone (purged). */
int store_egress_update(struct store *s, int64_t id, const struct store_egress *r, bool *found,
                        struct err **errp);

/* ------------------------------------------------------------ credentials */

/** A credential row. config is the non-secret part (JSON); secret is ciphertext. */
struct store_cred {
    char project[64];
    char id[128];
    char type[32];
    char status[16];
    char *config;  /* owned */
    void *secret;  /* owned, wiped by store_cred_clear() */
    size_t secret_len;
    int64_t created_ms;
    int64_t updated_ms;
};

void store_cred_clear(struct store_cred *c);
/** Inserts (create: ERR_CONFLICT when the id exists) or updates (ERR_NOT_FOUND). */
int store_cred_put(struct store *s, const struct store_cred *c, bool create, struct err **errp);
int store_cred_get(struct store *s, const char *project, const char *id, struct store_cred *out,
                   struct err **errp);
/** A project's credentials after after_id, in id order. *out owned (clear each, then free). */
int store_cred_page(struct store *s, const char *project, const char *after_id, size_t limit,
                    struct store_cred **out, size_t *n_out, struct err **errp);
int store_cred_delete(struct store *s, const char *project, const char *id, struct err **errp);
/**
 * Deletes at most limit of the records from before before_ms, oldest first, in one statement:
 * callers bound how long the proxy's inserts may wait. *n_out (may be NULL) counts them.
 */
int store_egress_purge(struct store *s, int64_t before_ms, size_t limit, size_t *n_out,
                       struct err **errp);

/**
 * The environment's records after id after_id, oldest first; only interaction_id's when it is
 * not NULL. *out is owned.
 */
int store_egress_page(struct store *s, const char *env_id, const char *interaction_id,
                      int64_t after_id, size_t limit, struct store_egress **out, size_t *n_out,
                      struct err **errp);

/* ----------------------------------------------------------------- agents */

/** A stored agent: its resource body as JSON text. */
struct store_agent {
    char project[64];
    char id[128];
    char *body; /* owned */
    int64_t created_ms;
    int64_t updated_ms;
};

void store_agent_clear(struct store_agent *a);
/** ERR_CONFLICT when the id exists in the project. */
int store_agent_insert(struct store *s, const struct store_agent *a, struct err **errp);
int store_agent_get(struct store *s, const char *project, const char *id, struct store_agent *out,
                    struct err **errp);
/** A project's agents after after_id, in id order. *out owned (clear each, then free). */
int store_agent_page(struct store *s, const char *project, const char *after_id, size_t limit,
                     struct store_agent **out, size_t *n_out, struct err **errp);
int store_agent_delete(struct store *s, const char *project, const char *id, struct err **errp);

/* ----------------------------------------------------------- interactions */

/** An interaction row; JSON members are text, owned, NULL when absent. */
struct store_interaction {
    char id[40];
    char project[64];
    char key_name[64];
    char status[24];
    char env_id[40];      /* "" until an environment is resolved */
    char previous_id[40]; /* "" when none */
    char *request;        /* the create body as accepted */
    char *history;        /* the conversation after the run (model/ neutral form) */
    char *usage;          /* Usage object */
    char *errors;         /* errors array */
    bool stored;          /* store: false rows go when their answer is delivered */
    char runner[48];      /* "PID:START" of the process running it, "" when none */
    int64_t created_ms;
    int64_t updated_ms;
};

void store_interaction_clear(struct store_interaction *it);

/**
 * Inserts a new interaction. With an idempotency key (NULL: none), a key of the same project
 * seen after not_before_ms makes it ERR_CONFLICT and copies that interaction's id into
 * existing (40 bytes); an older record of the key is replaced.
 */
int store_interaction_insert(struct store *s, const struct store_interaction *it,
                             const char *idem_key, int64_t not_before_ms, char *existing,
                             struct err **errp);
int store_interaction_get(struct store *s, const char *id, struct store_interaction *out,
                          struct err **errp);
/** Writes status, env_id, history, usage, errors, updated_ms and runner. */
int store_interaction_update(struct store *s, const struct store_interaction *it,
                             struct err **errp);
/**
 * Records a running interaction's conversation and usage so far, nothing else of its row: a
 * run that dies with its process leaves them for the interaction that continues it.
 */
int store_interaction_set_progress(struct store *s, const char *id, const char *history,
                                   const char *usage, struct err **errp);
/** Deletes an interaction with its steps and events. ERR_NOT_FOUND when missing. */
int store_interaction_delete(struct store *s, const char *id, struct err **errp);
/** Ids of the interactions in one status, oldest first. *out owned (char[40] each). */
int store_interaction_ids(struct store *s, const char *status, char (**out)[40], size_t *n_out,
                          struct err **errp);
/** Deletes up to limit ended interactions not updated since before_ms, oldest first, with their
 * steps and events; *n_out how many (may be NULL). */
int store_interaction_purge(struct store *s, int64_t before_ms, size_t limit, size_t *n_out,
                            struct err **errp);

/** Inserts or replaces step idx of an interaction. */
int store_step_put(struct store *s, const char *iid, int64_t idx, const char *step,
                   struct err **errp);
/** Every step, in order, as JSON text. *out owned (free each, then the array). */
int store_steps(struct store *s, const char *iid, char ***out, size_t *n_out, struct err **errp);

/** Appends event seq (the caller numbers them, from 1). */
int store_event_insert(struct store *s, const char *iid, int64_t seq, const char *data,
                       struct err **errp);

struct store_event {
    int64_t seq;
    char *data; /* owned */
};

/** Up to limit events after seq, in order. *out owned (free each data, then the array). */
int store_events_after(struct store *s, const char *iid, int64_t after, size_t limit,
                       struct store_event **out, size_t *n_out, struct err **errp);
/** The highest event seq of an interaction, 0 when none. */
int store_event_last(struct store *s, const char *iid, int64_t *out, struct err **errp);

/**
 * An explicit write transaction for a burst of writes (BEGIN IMMEDIATE … COMMIT): one WAL
 * commit instead of one per statement. Never hold one across anything slow.
 */
int store_begin(struct store *s, struct err **errp);
int store_commit(struct store *s, struct err **errp);
/** Rolls back the transaction store_begin() began (nothing when none is open). */
void store_rollback(struct store *s);

/** Runs fn inside one write transaction (BEGIN IMMEDIATE … COMMIT, rolled back on error). */
int store_tx(struct store *s, int (*fn)(struct store *s, void *arg, struct err **errp), void *arg,
             struct err **errp);

#endif
