/*
 * agent — interactions and the loop that runs them: validate a create request, store it,
 * run it on a bounded worker pool (model call, tool calls in the environment's sandbox,
 * steps and events recorded as they happen, budgets checked after every step), cancel it,
 * and show it as the API's Interaction object. It never sees a model's wire format (model/)
 * nor HTTP (api/); environments described by JSON are resolved through a callback the
 * caller provides, because their decoding belongs to the environments API.
 */
#ifndef PADDOCK_AGENT_H
#define PADDOCK_AGENT_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "common/common.h"
#include "env/env.h"
#include "model/model.h"
#include "store/store.h"

/** The built-in agents (spec §4.1); they run on the default model unless configured. */
#define AGENT_BUILTIN_A "antigravity-preview-05-2026"
#define AGENT_BUILTIN_B "antigravity-preview-09-2026"

#define AGENT_DEFAULT_MAX_STEPS 100
#define AGENT_DEFAULT_TIMEOUT_S (30 * 60)
#define AGENT_TOOL_VIEW_MAX 10000        /* characters of tool output the model sees */
#define AGENT_TOOL_KEEP_MAX (1u << 20)   /* bytes of tool output a step record keeps */
#define AGENT_BASH_TIMEOUT_S 120         /* a command's default timeout */
#define AGENT_RETENTION_DAYS 55
#define AGENT_IDEMPOTENCY_MS (24LL * 3600 * 1000)

/**
 * Resolves the environment of an interaction. spec is the request's `environment` (a
 * string: "remote" or an environment id; or an Environment object), or NULL for a fresh
 * default one. With check_only nothing is created: the spec is only validated (a bad one is
 * ERR_INVALID naming the field, an unknown id ERR_NOT_FOUND). Otherwise the environment is
 * created or resumed and its id written to env_id (40 bytes).
 */
typedef int agent_env_fn(const void *arg, struct env_ctx *ctx, const char *project, json_t *spec,
                         bool check_only, char *env_id, struct err **errp);

/** Called with every event as it is recorded (the CLI shows them); data is borrowed. */
typedef void agent_observer_fn(void *arg, const char *iid, json_t *event);

struct agent_options {
    const char *data_dir;
    uint64_t storage_size;
    unsigned workers;          /* concurrent runs; 0: 8 */
    unsigned per_key_max;      /* queued + running per API key; 0: 64 */
    const char *default_model; /* --model / PADDOCK_MODEL; NULL: none */
    const struct model_config *model;
    int64_t retention_ms;      /* 0: AGENT_RETENTION_DAYS */
    agent_env_fn *resolve_env;
    const void *resolve_arg;
    agent_observer_fn *observer;
    void *observer_arg;
    /* The operator's outbound rules for requests the daemon makes to URLs an API caller
     * chose (MCP servers): prepare applies them to a libcurl easy handle about to fetch url
     * and returns a state, why says what refused a connection (NULL: nothing did), release
     * frees the state. NULL: no rules (the CLI). */
    void *(*outbound_prepare)(void *curl, const char *url);
    const char *(*outbound_why)(void *state);
    void (*outbound_release)(void *state);
};

/** Who makes a request. */
struct agent_caller {
    const char *project;
    const char *key_name;
};

struct agent_service;

/**
 * Starts the worker pool. Interactions left queued by a previous process are queued again;
 * those left running are marked failed (their steps kept).
 */
int agent_service_start(const struct agent_options *o, struct agent_service **out,
                        struct err **errp);
/**
 * Stops the pool: running interactions are cancelled and recorded as failed (the server
 * stopped), waiters return at once, new creates are refused. The service stays valid for
 * the callers still holding it until agent_service_free().
 */
void agent_service_stop(struct agent_service *svc);
void agent_service_free(struct agent_service *svc);
/** True once agent_service_stop() has begun. */
bool agent_stopping(struct agent_service *svc);

/**
 * Validates and stores a new interaction from a create body, and queues it. id_out (40
 * bytes) receives its id. With an idempotency key already used by the project within 24
 * hours nothing new is made: id_out is that interaction and *existing is true.
 * ERR_LIMIT (the key has too many active interactions) says when to retry in *retry_after_s.
 */
int agent_create(struct agent_service *svc, struct env_ctx *ctx, const struct agent_caller *who,
                 json_t *body, const char *idem_key, char *id_out, bool *existing,
                 int *retry_after_s, struct err **errp);

/** Cancels a queued or running interaction (ERR_CONFLICT when it already ended). */
int agent_cancel(struct agent_service *svc, struct store *s, const char *project,
                 const char *id, struct err **errp);

/** Deletes an interaction of the project, cancelling it first when it runs. */
int agent_delete(struct agent_service *svc, struct store *s, const char *project,
                 const char *id, struct err **errp);

/**
 * Blocks until an event after seq is recorded for the interaction, or it ends, or
 * timeout_ms passes. Spurious returns are allowed: callers re-read the store.
 */
void agent_wait(struct agent_service *svc, const char *id, int64_t after_seq, int timeout_ms);

/**
 * A copy of a request's or an agent's tools as the API shows them: every mcp_server tool's
 * header values (its Authorization, typically) replaced by "[redacted]", the names kept.
 * The values are the MCP server's credentials: written by the caller, used by the run, never
 * read back. NULL for NULL.
 */
json_t *agent_tools_shown(json_t *tools);

/** The interaction of a project (ERR_NOT_FOUND for another project's) as the API shows it. */
int agent_interaction_json(struct store *s, const char *project, const char *id,
                           bool include_input, json_t **out, struct err **errp);

/**
 * Deletes interactions and egress records past the retention window: what paddock keeps about
 * activity, it keeps for --retention. Called every second by the janitor; interactions go at
 * most once an hour, egress records a batch per call until none past the window is left.
 */
void agent_housekeep(struct agent_service *svc, struct store *s);

/** True for the statuses after which nothing more happens until a new interaction. */
bool agent_status_final(const char *status);

/**
 * Runs one interaction on the calling thread, without a pool (the CLI): validates, stores
 * and runs it to its end. id_out receives its id.
 */
int agent_run_here(const struct agent_options *o, struct env_ctx *ctx,
                   const struct agent_caller *who, json_t *body, char *id_out,
                   struct err **errp);

/* ----------------------------------------------------------------- agents */

/**
 * Validates an Agent resource body (spec §6.1) for create, and gives it an id when it has
 * none. *out is the body to store (owned).
 */
int agent_def_check(struct store *s, const char *project, json_t *body, json_t **out,
                    struct err **errp);

#endif
