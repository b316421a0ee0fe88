/*
 * Declarations shared by the files of src/model/ and its unit tests; no other module includes
 * this. The wire-format files (gemini.c, openai.c, anthropic.c) are pure: JSON in, JSON or a
 * struct model_turn out, no I/O; what they share is in neutral.c. model.c drives them and
 * http.c carries the bytes.
 */
#ifndef PADDOCK_MODEL_INT_H
#define PADDOCK_MODEL_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "model/model.h"

/* The defaults of struct model_config. */
#define MODEL_DEFAULT_TIMEOUT_MS   300000
#define MODEL_DEFAULT_RETRIES      4
#define MODEL_DEFAULT_BACKOFF_MS   500
#define MODEL_DEFAULT_MAX_RESPONSE (32u * 1024 * 1024)

/* The hosted endpoints used when no base URL is configured. */
#define MODEL_GEMINI_BASE    "https://generativelanguage.googleapis.com"
#define MODEL_OPENAI_BASE    "https://api.openai.com/v1"
#define MODEL_ANTHROPIC_BASE "https://api.anthropic.com"

/* Anthropic requires max_tokens; this is sent when the generation config has none. */
#define MODEL_ANTHROPIC_MAX_TOKENS 8192

/* Longest upstream error message carried into a struct err (bytes before escaping). */
#define MODEL_UPSTREAM_MSG_MAX 512

/* ------------------------------------------------------------ wire formats */

/** What the encoders need besides the request. */
struct model_enc {
    const struct model_request *req;
    bool hosted; /* the hosted endpoint of the format (OpenAI: max_completion_tokens) */
};

/**
 * The three formats behind one table (STYLE R-12). encode returns an owned request body,
 * or NULL with ERR_INVALID when the conversation is malformed. decode fills out from a 2xx
 * answer; it returns -1 with ERR_UPSTREAM (or ERR_INVALID for a refused prompt) when the
 * answer holds no usable turn, naming what is missing but never quoting the upstream's text:
 * that is why's, and only model.c puts it into an error, after redacting the key from it.
 * id_base is the number of calls already in the conversation: made-up call ids continue from
 * it, so they stay unique in one conversation.
 */
struct model_wire {
    const char *label;  /* "Gemini", "OpenAI-compatible", "Anthropic": for messages */
    const char *native; /* "gemini", "openai", "anthropic": native.format */
    json_t *(*encode)(const struct model_enc *enc, struct err **errp);
    int (*decode)(const struct model_ref *m, json_t *resp, size_t id_base, struct model_turn *out,
                  struct err **errp);
    /* The upstream's own words on why an answer (resp may be NULL or any JSON) is an error
     * or holds no turn, as received: not escaped, the key not redacted. Owned; NULL: none. */
    char *(*why)(const json_t *resp);
};

extern const struct model_wire model__gemini_wire;
extern const struct model_wire model__openai_wire;
extern const struct model_wire model__anthropic_wire;

/** The wire of a format; never NULL for a valid enum value. */
const struct model_wire *model__wire(enum model_format f);

json_t *model__gemini_encode(const struct model_enc *enc, struct err **errp);
int model__gemini_decode(const struct model_ref *m, json_t *resp, size_t id_base,
                         struct model_turn *out, struct err **errp);
json_t *model__openai_encode(const struct model_enc *enc, struct err **errp);
int model__openai_decode(const struct model_ref *m, json_t *resp, size_t id_base,
                         struct model_turn *out, struct err **errp);
json_t *model__anthropic_encode(const struct model_enc *enc, struct err **errp);
int model__anthropic_decode(const struct model_ref *m, json_t *resp, size_t id_base,
                            struct model_turn *out, struct err **errp);

/* ------------------------------------------------- helpers of the wire files */

/** The string member key of obj, or NULL (borrowed). */
const char *model__str(const json_t *obj, const char *key);

/**
 * A token count member: a JSON integer or real (truncated) cut to [0, MODEL_TOKENS_MAX]; 0
 * when absent or not a number. Sums of a few such counts cannot overflow.
 */
int64_t model__tokens(const json_t *obj, const char *key);

/**
 * Brings usage a decoder filled (each field a model__tokens value or a sum of a few) within
 * struct model_usage's rules: every field at most MODEL_TOKENS_MAX, cached at most input, and
 * a total of 0 (none reported) made input + output + thought.
 */
void model__usage_settle(struct model_usage *u);

/**
 * The native message of a neutral assistant message when it was made by the format named
 * native ("gemini", …), else NULL (borrowed).
 */
json_t *model__native(const json_t *msg, const char *native);

/** The arguments of a neutral call as an object: its "args", or an empty object. Owned. */
json_t *model__call_args(const json_t *call);

/** Counts the calls of the assistant messages of a conversation. */
size_t model__count_calls(const json_t *messages);

/** Checks the shape of one neutral message; ERR_INVALID naming the index and the field. */
int model__check_message(const json_t *msg, size_t index, struct err **errp);

/**
 * Appends a call to t. id NULL or empty makes "call_<id_base + ncalls + 1>". args_text is
 * the arguments as received; when args is NULL it is parsed from args_text (an empty text
 * is an empty object). Takes ownership of args.
 */
void model__turn_add_call(struct model_turn *t, const char *id, const char *name, json_t *args,
                          const char *args_text, size_t id_base);

/** One word of a format's finish reason and what it means. */
struct model_finish_word {
    const char *word;
    enum model_finish finish;
};

/**
 * Sets t->finish_reason to word (NULL: none given) and t->finish to what the n entries of map
 * say it means (none given: STOP; not in map: OTHER), made to agree with t's calls: a STOP
 * with calls is TOOLS, and TOOLS without calls (announced, none arrived) is MALFORMED.
 */
void model__turn_set_finish(struct model_turn *t, const char *word,
                            const struct model_finish_word *map, size_t n);

/** Appends text to *dst (owned, NULL when empty), without a separator. */
/**
 * Appends text to the turn's text (thought false) or thought summary, in amortised constant
 * time per byte: an answer may come in millions of small parts.
 */
void model__append_text(struct model_turn *t, bool thought, const char *text);

/**
 * Builds t->message, the neutral assistant message, from t's fields; takes a reference to
 * native (the provider's message, kept verbatim) tagged with the format name.
 */
void model__turn_finish(struct model_turn *t, const char *native_format, json_t *native);

/** How one generation_config field is carried into a request. */
enum model_gen_kind {
    MODEL_GEN_NUMBER = 0, /* a JSON number */
    MODEL_GEN_INTEGER,    /* a JSON integer */
    MODEL_GEN_STRINGS,    /* an array of strings */
};

struct model_gen_map {
    const char *from; /* the snake_case name of generation_config */
    const char *to;   /* the name in the request */
    enum model_gen_kind kind;
};

/** Copies the fields of gen named in map (n entries) into dst; wrong types are left out. */
void model__map_generation(const json_t *gen, const struct model_gen_map *map, size_t n,
                           json_t *dst);

/**
 * One declaration {"name", "description"?, schema_key: the tool's "parameters"} of a neutral
 * tool; when schema_required, a tool without parameters gets an empty object schema. Owned.
 */
json_t *model__tool_decl(const json_t *tool, const char *schema_key, bool schema_required);

/** The generation_config's tool_choice mode ("auto", "any", "none", "validated") or NULL. */
const char *model__tool_choice(const json_t *gen);

/** Escapes and caps text for an error message (not the upstream's: model__upstream_text). */
char *model__escape(const char *s, size_t len);

/**
 * The why of the OpenAI-compatible and Anthropic wires, and the fallback of Gemini's: the
 * message of an error body ({"error":{"message":…}}, {"error":"…"}, {"message":…},
 * {"detail":…}, or such an object first in an array). Owned; NULL when there is none.
 */
char *model__error_why(const json_t *resp);

/**
 * Text from an upstream (bytes s, len) for an error message: every occurrence of secret (the
 * key; NULL or shorter than 4 bytes: none looked for) replaced by "[redacted]", then escaped
 * and cut at max bytes, in that order so that no cut leaves a piece of the key. All upstream
 * text reaches an error through here. Owned.
 */
char *model__upstream_text(const char *s, size_t len, size_t max, const char *secret);

/* --------------------------------------------------------------- transport */

/** One HTTP request (borrowed strings). */
struct model_http_req {
    const char *url;
    const char *auth_name;  /* "x-goog-api-key", "Authorization", "x-api-key"; NULL none */
    const char *auth_value; /* the key, or "Bearer KEY" */
    const char *extra;      /* one more "Name: value" header, or NULL */
    const char *body;
    size_t body_len;
    int64_t timeout_ms;
    uint64_t max_response;
    const volatile int *cancel;
};

/** The outcome of one HTTP request that got an answer. */
struct model_http_resp {
    long status;
    char *body; /* owned, NUL-terminated */
    size_t len;
    int64_t retry_after_ms; /* from Retry-After / retry-after-ms; -1 when absent */
};

/**
 * Performs one POST. Returns 0 when an HTTP answer arrived (any status) and -1 with
 * ERR_TIMEOUT (timeout_ms passed), ERR_LIMIT (body over max_response), ERR_CONFLICT
 * ("cancelled") or ERR_UPSTREAM (connect or transfer failure). Never puts the key in errors.
 */
int model__http_post(const struct model_http_req *r, struct model_http_resp *out,
                     struct err **errp);
void model__http_resp_clear(struct model_http_resp *r);

/** The delay before retry number attempt (1-based): base * 2^(attempt-1), jittered ±25%, capped. */
int64_t model__backoff_ms(int64_t base_ms, unsigned attempt);

/** Parses a Retry-After / retry-after-ms header value into ms; -1 when not a plain number. */
int64_t model__parse_retry_after(const char *value, size_t len, bool in_ms);

/**
 * Parses a google.protobuf.Duration in JSON ("37s", "1.5s": seconds, up to 9 decimals, and
 * "s") into ms, rounded up; more than 10^9 s is taken as 10^9 s. -1 when s is NULL or not one.
 */
int64_t model__parse_duration_ms(const char *s);

/**
 * The retryDelay of the google.rpc.RetryInfo in an error body (Gemini's 429 and 503:
 * {"error":{"details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo",
 * "retryDelay":"37s"}, …]}}, or that object first in an array) in ms; -1 when there is none.
 */
int64_t model__retry_info_ms(const char *body, size_t len);

/**
 * json_loadb of an upstream's body, or NULL without parsing it when it holds more than
 * UTIL_JSON_VALUES_MAX values (its memory would be many times its bytes).
 */
json_t *model__load_capped(const char *body, size_t len, json_error_t *je);

/* ------------------------------------------------------------------ prices */

/** Drops the operator's table (tests). */
void model__prices_reset(void);

#endif
