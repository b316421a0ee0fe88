/*
 * model — one client per model wire format (Gemini generateContent, OpenAI-compatible chat
 * completions, Anthropic Messages), all mapped onto one internal conversation and one turn
 * type. It knows nothing of tools' execution, sandboxes or HTTP serving; agent/ never sees a
 * wire format.
 *
 * The conversation is a JSON array (jansson) of neutral messages, built by agent/:
 *
 *   {"role":"user", "text":"..."}
 *   {"role":"assistant", "text":"..."?, "thought":"..."?,
 *    "calls":[{"id":"...", "name":"...", "args":{...}}]?,
 *    "native":{"format":"gemini"|"openai"|"anthropic", "message":{...}}?}
 *   {"role":"tool", "call_id":"...", "name":"...", "output":"...", "is_error":false}
 *
 * An assistant message is exactly the `message` of a struct model_turn. When its native
 * format is the one being spoken, the native message is sent back verbatim (Gemini's
 * thoughtSignature, Anthropic's thinking signatures and any unknown parts survive); otherwise
 * it is rebuilt from the neutral fields. Consecutive tool messages form one result turn.
 * A call whose arguments were not a JSON object has "args_text" (as received) and
 * "args_error" instead of "args"; a rebuild sends {} for it.
 *
 * Tools are a JSON array of {"name", "description", "parameters": JSON Schema object}.
 */
#ifndef PADDOCK_MODEL_H
#define PADDOCK_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "common/common.h"

struct curl_slist;

/**
 * Frees a libcurl header list after wiping every line: a line may hold a key or a token (the
 * model's, an MCP server's configured headers).
 */
void model_headers_free(struct curl_slist *h);

enum model_format {
    MODEL_GEMINI = 0, /* "gemini-…" */
    MODEL_OPENAI,     /* "openai:NAME" */
    MODEL_ANTHROPIC,  /* "anthropic:NAME" */
};

/** A model setting resolved to a client: format and the name sent upstream. */
struct model_ref {
    enum model_format format;
    char name[128]; /* upstream model name ("gemini-2.5-pro", "NAME" of "openai:NAME") */
    char spec[160]; /* the setting as given, for records and the price table */
};

/** Parses "gemini-…", "openai:NAME" or "anthropic:NAME"; ERR_INVALID naming what was wrong. */
int model_parse(const char *spec, struct model_ref *out, struct err **errp);

/** Upstream settings; strings owned. Keys are wiped by model_config_clear(). */
struct model_config {
    char *gemini_key, *gemini_base;       /* GEMINI_API_KEY / GEMINI_BASE_URL */
    char *openai_key, *openai_base;       /* OPENAI_API_KEY / OPENAI_BASE_URL */
    char *anthropic_key, *anthropic_base; /* ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL */
    int64_t timeout_ms;    /* one HTTP request; default 300 s */
    unsigned max_retries;  /* on 429, 5xx and transport errors; default 4 */
    int64_t backoff_ms; /* first retry delay, doubled each time (an upstream's delay wins); 500 */
    uint64_t max_response; /* bytes of one response body; default 32 MiB */
};

/** Fills cfg from the environment variables above, with the defaults for the rest. */
void model_config_from_env(struct model_config *cfg);
/** Frees the strings, wiping the keys first. */
void model_config_clear(struct model_config *cfg);

/*
 * The largest token count a turn reports in any field of struct model_usage: an upstream's
 * larger (or non-integer huge) count is cut to it, a negative one is 0. A trillion tokens is
 * far past any model's context; at this cap, 9 million turns of every count summed still fit
 * an int64_t, so totals over a run need no overflow check.
 */
#define MODEL_TOKENS_MAX 1000000000000LL

/* Token counts of one turn, each in [0, MODEL_TOKENS_MAX]; cached <= input. */
struct model_usage {
    int64_t input;   /* prompt tokens, cached ones included */
    int64_t output;  /* generated tokens, thoughts excluded */
    int64_t thought; /* thinking / reasoning tokens */
    int64_t cached;  /* prompt tokens served from a cache */
    int64_t total;   /* as reported, or input + output + thought */
};

struct model_call {
    char *id;         /* the provider's id, or one made up ("call_N") when it sends none */
    char *name;
    json_t *args;     /* an object; NULL when the arguments were not a JSON object */
    char *args_text;  /* the arguments as received (a JSON string for OpenAI) */
    char *args_error; /* why args is NULL, for the tool error the model sees; else NULL */
};

enum model_finish {
    MODEL_FINISH_STOP = 0,  /* the model is done */
    MODEL_FINISH_TOOLS,     /* it asked for tool calls */
    MODEL_FINISH_LENGTH,    /* cut at max output tokens, or at the context window */
    MODEL_FINISH_OTHER,     /* safety, refusal, …: finish_reason says which */
    MODEL_FINISH_MALFORMED, /* it tried to call a tool and the upstream could not read or
                               did not allow the call: a format error, not an answer */
};

/** One assistant turn. */
struct model_turn {
    char *text;              /* visible text, NULL when none */
    char *thought;           /* thought summary text, NULL when none */
    char *thought_signature; /* the first signature seen, NULL when none */
    struct model_call *calls;
    size_t ncalls;
    struct model_usage usage;
    enum model_finish finish;
    char *finish_reason;  /* the provider's word for it */
    json_t *message;      /* the neutral assistant message to append to the conversation */
    size_t text_len, thought_len; /* strlen of text and thought, for appending */
};

void model_turn_clear(struct model_turn *t);

struct model_request {
    const struct model_ref *model;
    /* The system instruction; NULL: none. (Not "system": common/banned.h poisons that
       identifier, so a member of that name cannot even be declared after common.h.) */
    const char *system_instruction;
    json_t *messages;       /* borrowed; the conversation */
    json_t *tools;          /* borrowed; may be NULL or empty */
    json_t *generation;     /* borrowed; the interaction's generation_config (temperature,
                               top_p, seed, max_output_tokens, stop_sequences), may be NULL */
    const volatile int *cancel; /* nonzero aborts at once with ERR_CONFLICT "cancelled" */
    int64_t deadline_ms;    /* util_now_ms() past which no request or retry starts; 0 none */
};

/**
 * One model call with retries: 429 and 5xx (honouring Retry-After and Gemini's RetryInfo; one
 * that would end past the deadline ends the call at once) and transport errors are
 * retried with backoff within max_retries and the deadline. Errors: ERR_INVALID (the
 * request was refused: 4xx other than 429, with the upstream's message), ERR_UPSTREAM
 * (unreachable, 5xx after retries, a body that is not the format's JSON), ERR_TIMEOUT,
 * ERR_LIMIT (a body over max_response), ERR_PERM (no key for a hosted endpoint).
 * The message names the upstream and carries its cause; it never contains a key.
 */
int model_generate(const struct model_config *cfg, const struct model_request *req,
                   struct model_turn *out, struct err **errp);

/* ------------------------------------------------------------------ prices */

/** USD per million tokens. */
struct model_price {
    double input, output, cached;
};

/**
 * Loads the operator's price table, a JSON object {"MODEL SPEC or NAME": {"input": USD/Mtok,
 * "output": …, "cached": …}}, over the built-in one. Thread-safe to call once at start.
 */
int model_prices_load(const char *path, struct err **errp);
/** The price of a model; false when it is in neither table. */
bool model_price_of(const struct model_ref *m, struct model_price *out);
/** The cost of usage on m in USD; 0 for an unpriced model. Thoughts are priced as output. */
double model_cost_usd(const struct model_ref *m, const struct model_usage *u);

#endif
