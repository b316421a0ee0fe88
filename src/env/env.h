/*
 * env — environment lifecycle over the store and the sandbox runtime: create, start, stop,
 * destroy, and the truth about state after any crash (an environment whose init died is
 * shown stopped). It decides policy (defaults, limits) and hands sandbox/ a resolved spec.
 * The CLI and, later, the API server are both clients of this module.
 */
#ifndef PADDOCK_ENV_H
#define PADDOCK_ENV_H

#include <stdbool.h>
#include <stdint.h>

#include "common/common.h"
#include "sandbox/sandbox.h"
#include "store/store.h"

#define ENV_DEFAULT_MEMORY (16ULL << 30)
#define ENV_DEFAULT_CPUS_MILLI 4000u
#define ENV_DEFAULT_PIDS 4096u
#define ENV_DEFAULT_DISK (10ULL << 30)
#define ENV_DEFAULT_STORAGE (64ULL << 30)

struct env_ctx;

/** What a new environment asks for; 0 fields take the defaults above. */
struct env_create_opts {
    const char *network; /* "disabled" (default) or "open" */
    uint64_t memory_bytes;
    uint32_t cpus_milli;
    uint64_t pids;
    uint64_t disk_bytes;
};

/**
 * Opens the data directory (created 0700 when missing) and its database. storage_size is
 * the size of the storage image made on first use (0: ENV_DEFAULT_STORAGE, capped at half
 * of the free space). *out is owned; free with env_ctx_close().
 */
int env_ctx_open(const char *data_dir, uint64_t storage_size, struct env_ctx **out,
                 struct err **errp);
void env_ctx_close(struct env_ctx *ctx);

/** Creates and starts an environment. *out receives its row. */
int env_create(struct env_ctx *ctx, const struct env_create_opts *opts, struct store_env *out,
               struct err **errp);

/** Reads one environment, first reconciling its state with reality. */
int env_get(struct env_ctx *ctx, const char *id, struct store_env *out, struct err **errp);

/** Lists every environment, reconciled. *out is owned (free()). */
int env_list(struct env_ctx *ctx, struct store_env **out, size_t *n_out, struct err **errp);

/** Starts a stopped environment (a no-op when it runs). */
int env_start(struct env_ctx *ctx, const char *id, struct store_env *out, struct err **errp);

/** Stops a running environment, keeping its files (a no-op when stopped). */
int env_stop(struct env_ctx *ctx, const char *id, struct err **errp);

/** Stops and deletes an environment and all its files. */
int env_destroy(struct env_ctx *ctx, const char *id, struct err **errp);

/**
 * Returns the volume directory of a running environment, starting it first when it is
 * stopped (any use resumes an environment). *dir_out is owned.
 */
int env_use(struct env_ctx *ctx, const char *id, char **dir_out, struct err **errp);

/** Stops every environment and unmounts the data directory's storage. */
int env_teardown(struct env_ctx *ctx, struct err **errp);

/** The host uid of root inside an environment. */
uint32_t env_host_id(const struct store_env *e);

#endif
