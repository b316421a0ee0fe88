/*
 * Declarations shared by the files of env/ (env.c, pool.c); no other module includes this.
 */
#ifndef PADDOCK_ENV_INT_H
#define PADDOCK_ENV_INT_H

#include "env.h"

/* An environment whose file count timed out, and when the janitor may count it again. */
struct count_backoff {
    char *id;
    int64_t until_ms; /* monotonic */
};

struct env_ctx {
    char *data_dir;
    char *envs_dir;
    char *images_dir;
    char *locks_dir;
    char *uploads_dir;
    char *image_host; /* set once storage is ready */
    uint64_t storage_size;
    struct store *store;
    /* The janitor's: counts that timed out (env.c, janitor_count()). */
    struct count_backoff *backoffs;
    size_t n_backoffs;
};

/** Takes the environment's lock (flock on DATA/locks/<id>): blocking, or -2 when busy and
 *  !wait. Returns the lock's fd (owned). */
int env__lock(struct env_ctx *c, const char *id, bool wait, struct err **errp);

/** DATA/envs/<id>, owned. */
char *env__volume_dir(struct env_ctx *c, const char *id);

/** Mounts the storage and builds the base image on first use. */
int env__ensure_storage(struct env_ctx *c, struct err **errp);

/** The identity of e's init as recorded. */
struct sandbox_init env__init_of(const struct store_env *e);

/**
 * Starts the sandbox of e (its lock held) and records its init with state st. Every start
 * but a pooled one runs the start hook (the egress proxy's listener).
 */
int env__start_locked(struct env_ctx *c, struct store_env *e, enum store_env_state st,
                      struct err **errp);

/** Runs the start hook (if any) for e, a sandbox that now belongs to a user. */
void env__run_start_hook(struct env_ctx *c, const struct store_env *e);

/**
 * Claims a pooled sandbox for want (limits, network, project, times and want->state as
 * decided by env_create(); config is its JSON): the sandbox gets want's cgroup and disk
 * limits, then one statement makes the row the user's. On success returns 1, fills want's
 * id, uid slot and init, and *lock_out holds the environment's lock. Returns 0 when no
 * pooled sandbox could be had (the caller starts a new one); dead or unusable pooled
 * sandboxes met on the way are removed.
 */
int env__pool_claim(struct env_ctx *c, struct store_env *want, const char *config, int *lock_out);

/** Wakes the refiller after a claim (a no-op in a process without one). */
void env__pool_kick(void);

/** Removes every pooled sandbox (teardown). */
int env__pool_drain(struct env_ctx *c, struct err **errp);

#endif
