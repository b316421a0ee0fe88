/* Declarations shared by the files of src/agent/; no other module includes this. */
#ifndef PADDOCK_AGENT_INT_H
#define PADDOCK_AGENT_INT_H

#include <pthread.h>

#include "agent.h"

#define AGENT_STEPS_MAX 10000      /* steps one interaction may record */
#define AGENT_CHAIN_MAX         1000 /* interactions without a conversation a chain goes back through */
#define AGENT_BASE_DEPTH 8         /* base_agent chain */
#define AGENT_PROMPT_FILE_MAX (64u * 1024)
#define AGENT_SKILLS_MAX 64
#define AGENT_MODEL_RETRIES 2      /* model calls that failed after the client's own retries */
#define AGENT_FORMAT_ERRORS_MAX 3  /* malformed tool calls in a row before giving up */
/* Tool calls one model turn may make. Each is recorded as steps and answered, and pairing
 * calls with results costs calls x results: a turn of 200 000 calls took 30 s per result. */
#define AGENT_CALLS_PER_TURN_MAX 512
#define AGENT_FINISH_TRIES      5  /* tries of an interaction's final write, 1 to 8 s apart */
#define AGENT_CANCEL_WAIT_MS    30000 /* a cancel waits this long for the run to record its end */

/** What an interaction runs with, resolved from its request and its agent. */
struct agent_plan {
    struct model_ref model;
    json_t *system_instruction; /* string or NULL (borrowed from def) */
    json_t *def;                /* the merged agent definition (owned) */
    json_t *client_tools;       /* array of function tools (owned) */
    json_t *env_spec;           /* borrowed from the request or def; NULL: none/default */
    bool wants_env;             /* an agent always runs in an environment */
    int64_t max_steps;
    int64_t timeout_ms;
    int64_t max_tokens;         /* 0: none */
    double max_cost_usd;        /* 0: none */
    json_t *allowed_tools;      /* array of names or NULL (borrowed from def) */
    json_t *mcp;                /* mcp_server tool configs (owned) */
};

void agent__plan_free(struct agent_plan *p);
/**
 * Resolves request + stored agent into a plan. Errors name the field: ERR_INVALID,
 * ERR_NOT_FOUND (an agent, or a previous interaction), ERR_CONFLICT (no model configured).
 */
int agent__plan(struct store *s, const char *project, const char *default_model, json_t *req,
                struct agent_plan *out, struct err **errp);

/** One run of one interaction. */
struct agent_run {
    struct agent_service *svc; /* NULL on the CLI */
    const struct agent_options *o;
    struct env_ctx *ctx;
    struct store *st;
    struct store_interaction it;
    json_t *req;
    volatile int cancel;
    int64_t tool_ns;  /* time spent inside tools (sandbox exec, file ops, MCP calls) */
    int64_t model_ns; /* time spent in model calls */
    bool in_tx;  /* a burst of writes is open (agent__tx) */
    char **vars; /* the environment's variables for commands, once read (owned) */
    int64_t next_seq;
    int64_t next_step;
    char id[40];            /* for the service's list; set before the run is listed */
    struct agent_run *next; /* in the service's list of running runs */
};

/** Runs r to its end and records the final status. */
void agent__run(struct agent_run *r);

/**
 * Opens a burst of writes (one transaction for the steps and events of one step), and ends
 * it, announcing what it wrote. Every slow call (model, sandbox, network) is preceded by a
 * flush, so no transaction is held across one and readers see each step when it starts.
 */
void agent__tx(struct agent_run *r);
void agent__flush(struct agent_run *r);

/** Records an event (steals ev), shows it to the observer and wakes waiters. */
int agent__emit(struct agent_run *r, json_t *ev, struct err **errp);
/** Records r->it (its final status) and the interaction.completed event atomically; the
 * observer hears of it when it is recorded, or at the last try. */
int agent__finish(struct agent_run *r, bool last, struct err **errp);
/** Wakes everything waiting in agent_wait(). */
void agent__wake(struct agent_service *svc);

/** RFC 3339 of a time in ms. */
json_t *agent__time(int64_t ms);
/** The partial interaction carried by created/completed events. */
json_t *agent__brief(const struct store_interaction *it, json_t *req);

/** A valid UTF-8 copy of len bytes: each invalid byte becomes U+FFFD. Owned. */
char *agent__utf8(const char *s, size_t len);

/* mcp.c */
struct mcp_server;
/** Connects to an MCP server (initialize, tools/list) from its mcp_server tool config; a set
 * *cancel (may be NULL) ends it within a second, ERR_CONFLICT. */
int agent__mcp_open(const struct agent_options *o, json_t *cfg, const volatile int *cancel,
                    struct mcp_server **out, struct err **errp);
void agent__mcp_free(struct mcp_server *m);
const char *agent__mcp_name(const struct mcp_server *m);
/** Appends the server's tools as declarations {name, description, parameters}. */
void agent__mcp_declare(const struct mcp_server *m, json_t *decls);
bool agent__mcp_has(const struct mcp_server *m, const char *tool);
/** tools/call: *text (owned) is the result's text content; a set *cancel (may be NULL) ends
 * the call within a second, ERR_CONFLICT. */
int agent__mcp_call(const struct agent_options *o, struct mcp_server *m, const char *tool,
                    json_t *args, const volatile int *cancel, char **text, bool *is_error,
                    struct err **errp);

/** The calls of the conversation's last assistant message that have no result yet (owned). */
json_t *agent__pending_calls(json_t *history);

/** Text for the model from tool output: head and tail with a note when over max chars. */
char *agent__clip(const char *s, size_t len, size_t max);

#endif
