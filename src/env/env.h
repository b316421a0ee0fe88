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
/* Free disk an upload's staging must leave beside what is promised (env_upload_begin). */
#define ENV_UPLOAD_RESERVE (256ULL << 20)
/* An upload session nothing was sent to for this long is ended by the janitor. */
#define ENV_UPLOAD_IDLE_MS (24LL * 3600 * 1000)

struct env_ctx;

/** A file placed into a new environment (an inline source). */
struct env_file {
    const char *target; /* absolute path inside the sandbox */
    const void *data;
    size_t len;
};

/** A host directory copied into a new environment (a skill_registry source). */
struct env_dir_source {
    const char *target;   /* absolute path inside the sandbox */
    const char *host_dir; /* trusted: under the server's skills directory */
};

/** A source fetched from the network by the sandbox itself, through the egress proxy. */
enum env_fetch_kind {
    ENV_FETCH_GIT = 0, /* git clone (repository) */
    ENV_FETCH_GCS,     /* every object under gs://bucket/prefix, by the GCS JSON API */
    ENV_FETCH_URL,     /* one https URL to one file */
};

struct env_fetch {
    enum env_fetch_kind kind;
    const char *url;    /* clone URL; "bucket/prefix" for GCS; the file's URL */
    const char *target; /* absolute path inside the sandbox */
    uint64_t max;       /* bytes */
};

#define ENV_GIT_MAX (500ULL << 20)
#define ENV_GCS_MAX (2ULL << 30)

/** What a new environment asks for; 0 fields take the defaults above. */
struct env_create_opts {
    const char *network; /* "disabled" (default) or "open" */
    uint64_t memory_bytes;
    uint32_t cpus_milli;
    uint64_t pids;
    uint64_t disk_bytes;
    const char *project; /* NULL: "default" */
    const char *config;  /* JSON kept for the API (sources, network, env); NULL: "{}" */
    const char *from;    /* copy this environment's files (same project); NULL: none */
    const struct env_file *files;
    size_t n_files;
    const struct env_dir_source *dirs;
    size_t n_dirs;
    const struct env_fetch *fetches;
    size_t n_fetches;
    bool no_pool; /* always start a new sandbox, never claim a warm one (benchmarks, tests) */
};

/** The egress CA and the trust bundle (system CAs + it) inside every sandbox. */
#define ENV_CA_FILE   "/etc/paddock/ca.pem"
#define ENV_CA_BUNDLE "/etc/paddock/ca-bundle.pem"
/* Makes node's built-in fetch use the proxy (src/env/node-proxy.cjs); in every base image. */
#define ENV_NODE_PROXY "/etc/paddock/node-proxy.cjs"

/**
 * Writes the installation's CA files into a running environment made before they existed
 * (newer environments get them at creation).
 */
int env_seed_trust(struct env_ctx *ctx, const char *id, struct err **errp);

/** Where the egress proxy listens inside every sandbox with a network (127.0.0.1). */
#define ENV_PROXY_PORT SANDBOX_PROXY_PORT

/** Largest directory source (all files together) copied into an environment. */
#define ENV_DIR_SOURCE_MAX (64ULL << 20)

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

/**
 * Like env_get(), but an environment of another project is ERR_NOT_FOUND, exactly as one
 * that does not exist.
 */
int env_get_owned(struct env_ctx *ctx, const char *project, const char *id,
                  struct store_env *out, struct err **errp);

/** Like env_use(), for the project's environment; an expired one is ERR_NOT_FOUND. */
int env_use_owned(struct env_ctx *ctx, const char *project, const char *id, char **dir_out,
                  struct err **errp);

/**
 * Up to limit of the project's environments after (created_ms, seq), reconciled (dead creates
 * dropped); fewer than limit only at the end of the list. *out is owned.
 */
int env_page(struct env_ctx *ctx, const char *project, int64_t after_created, int64_t after_seq,
             size_t limit, struct store_env **out, size_t *n_out, struct err **errp);

/** The stored configuration (JSON text) of an environment. *out is owned. */
int env_config(struct env_ctx *ctx, const char *id, char **out, struct err **errp);

/**
 * The variables every command in the environment gets, as "NAME=VALUE" strings
 * (NULL-terminated, owned: free each and the array): its `env` setting (a variable that
 * references a credential holds the placeholder the egress proxy replaces) and, with a
 * network, the proxy and its trust. With interaction_id (NULL: none), the proxy URL carries
 * the interaction and its env_proxy_tag() as user and password, which clients send to the
 * proxy (Proxy-Authorization: Basic), so the audit record names the interaction.
 */
int env_exec_vars(struct env_ctx *ctx, const char *id, const char *interaction_id, char ***out,
                  struct err **errp);

#define ENV_PROXY_TAG_LEN 32

/**
 * The tag that binds interaction_id to environment env_id in a proxy URL: hex HMAC-SHA256 (128
 * bits) under the installation's attribution key (DATA/egress-tag.key, made on first use), so
 * a sandbox can neither make one up nor use another environment's. out gets ENV_PROXY_TAG_LEN
 * characters and a NUL, or "" when there is no key (logged).
 */
void env_proxy_tag(const char *data_dir, const char *env_id, const char *interaction_id,
                   char out[ENV_PROXY_TAG_LEN + 1]);

/** True when tag is env_proxy_tag(data_dir, env_id, interaction_id) (constant-time compare). */
bool env_proxy_tag_ok(const char *data_dir, const char *env_id, const char *interaction_id,
                      const char *tag);

/**
 * Counts the environment's own files (when running) and stores the counts. The count takes
 * at most 60 s in all (ERR_TIMEOUT past it), whatever the sandbox does; the calling thread's
 * sandbox_deadline_set() is cleared on return.
 */
int env_count(struct env_ctx *ctx, const char *id, struct err **errp);

/** Lifecycle timings of the janitor, in milliseconds of inactivity. */
struct env_lifecycle {
    int64_t idle_ms;    /* running → stopped ("idle") */
    int64_t offline_ms; /* stopped → offline */
    int64_t expire_ms;  /* → expired: files deleted, the row kept */
    int64_t count_ms;   /* recount files of an active environment at most this often */
};

/**
 * One pass of the janitor over every environment: counts activity (processes still running
 * in a sandbox), idles, takes offline and expires as the timings say, refreshes file counts,
 * and removes abandoned upload sessions. Errors of one environment are logged, not fatal; an
 * environment whose count timed out is not counted again for 10 minutes (logged once).
 */
void env_janitor(struct env_ctx *ctx, const struct env_lifecycle *lc);

/* ------------------------------------------------------------------ uploads */

/** Starts an upload session; its bytes are staged under DATA/uploads until finish. */
int env_upload_begin(struct env_ctx *ctx, const struct store_upload *u, struct err **errp);
/** The session (of that project) and how many bytes it has received. */
int env_upload_get(struct env_ctx *ctx, const char *project, const char *id,
                   struct store_upload *out, uint64_t *received, struct err **errp);
/** Appends bytes at offset, which must equal what was received so far. */
int env_upload_append(struct env_ctx *ctx, const struct store_upload *u, uint64_t offset,
                      const void *data, size_t len, struct err **errp);
/**
 * Moves the staged bytes into the environment (written atomically, or extracted) and ends
 * the session. With nothing staged yet but the announced size, ERR_INVALID.
 */
int env_upload_finish(struct env_ctx *ctx, const struct store_upload *u, struct err **errp);
/** Ends a session and removes its staged bytes. */
void env_upload_abort(struct env_ctx *ctx, const char *id);
/**
 * Removes staged files that no session names: left by a process killed between creating one
 * and recording its session, or between ending a session and removing its file. For the
 * server's start, before it takes requests.
 */
int env_uploads_sweep(struct env_ctx *ctx, struct err **errp);

/** The store of this context (for keys); borrowed. */
struct store *env_store(struct env_ctx *ctx);

/**
 * Called in this process after every sandbox start (create, start, resume), with the row as
 * it then is: the server attaches the egress proxy there. NULL: none.
 */
typedef void env_start_hook(void *arg, struct env_ctx *ctx, const struct store_env *e);
void env_set_start_hook(env_start_hook *fn, void *arg);

/* --------------------------------------------------------------- warm pool */

/**
 * Starts the refiller: a thread (with its own connection to the data directory) that keeps
 * size pooled sandboxes ready for env_create() to claim, refilling after every claim and
 * checking the pool once a second. A multi-threaded caller must have started the spawner
 * (sandbox_spawner_start()) first. size 0 starts nothing. See docs/internals/ENV.md.
 */
int env_pool_start(const char *data_dir, uint64_t storage_size, size_t size, struct err **errp);

/** Stops the refiller, leaving the pooled sandboxes to the next one (or to teardown). */
void env_pool_stop(void);

/** True when the refiller's last pass left the pool full (benchmarks wait for it). */
bool env_pool_full(void);

/**
 * One pass of the refiller with ctx: removes pooled sandboxes whose init died and starts new
 * ones until size are ready, at most max_new of them in this pass (so that a caller can stop
 * between starts). *made (may be NULL) receives how many were started.
 */
int env_pool_fill(struct env_ctx *ctx, size_t size, size_t max_new, size_t *made,
                  struct err **errp);

/** Stops every environment, removes the pooled ones and unmounts the data directory's storage. */
int env_teardown(struct env_ctx *ctx, struct err **errp);

/** The host uid of root inside an environment. */
uint32_t env_host_id(const struct store_env *e);

#endif
