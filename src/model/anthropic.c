/*
 * Anthropic Messages: the neutral conversation as system + messages of content blocks (text,
 * tool_use in assistant turns; tool_result and text in user turns), and the answer's content
 * blocks back into a struct model_turn. An assistant turn Claude made is replayed with its
 * content blocks as they were: thinking blocks must come back with their signatures, and
 * redacted_thinking blocks untouched.
 */
#include <stdlib.h>
#include <string.h>

#include "model_int.h"

/* Thinking budgets for generation_config.thinking_level; Anthropic's minimum is 1024. */
static const struct {
    const char *level;
    int64_t budget;
} budgets[] = {
    { "minimal", 1024 },
    { "low", 4096 },
    { "medium", 10000 },
    { "high", 24000 },
};

static const struct model_gen_map gen_map[] = {
    { "temperature", "temperature", MODEL_GEN_NUMBER },
    { "top_p", "top_p", MODEL_GEN_NUMBER },
    { "stop_sequences", "stop_sequences", MODEL_GEN_STRINGS },
};

/* Anthropic's tool_use ids match ^[a-zA-Z0-9_-]+$; ids from other formats may not. Owned. */
static char *
tool_id(const char *id)
{
    char *s = xstrdup(id != NULL && *id != '\0' ? id : "call");

    for (char *p = s; *p != '\0'; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '-'))
            *p = '_';
    return s;
}

/* The content array of the last message when it is a user message this encoder built, so that
 * tool results and a following user text share one user turn; else a new user message. */
static json_t *
user_blocks(json_t *out)
{
    json_t *last = json_array_get(out, json_array_size(out) - 1);
    json_t *content;

    if (last != NULL && strcmp(model__str(last, "role"), "user") == 0)
        return json_object_get(last, "content");
    content = json_array();
    json_array_append_new(out, json_pack("{s:s, s:o}", "role", "user", "content", content));
    return content;
}

/* A tool_result block. An empty result goes without content (content is optional, and an
 * empty one is refused with is_error). */
static json_t *
tool_result(const json_t *msg)
{
    cleanup_free char *id = tool_id(model__str(msg, "call_id"));
    const char *output = model__str(msg, "output");
    bool is_error = json_is_true(json_object_get(msg, "is_error"));
    json_t *b = json_pack("{s:s, s:s, s:b}", "type", "tool_result", "tool_use_id", id, "is_error",
                          is_error);

    if (output != NULL && *output != '\0')
        json_object_set_new(b, "content", json_string(output));
    else if (is_error)
        json_object_set_new(b, "content", json_string("(no output)"));
    return b;
}

/* An assistant turn rebuilt from the neutral fields; NULL when it would be empty (refused).
 * A thought from another model has no signature Anthropic would accept: it is left out. */
static json_t *
rebuild_assistant(const json_t *msg)
{
    const char *text = model__str(msg, "text");
    json_t *blocks = json_array(), *c;
    size_t i;

    if (text != NULL && *text != '\0')
        json_array_append_new(blocks, json_pack("{s:s, s:s}", "type", "text", "text", text));
    json_array_foreach(json_object_get(msg, "calls"), i, c)
    {
        cleanup_free char *id = tool_id(model__str(c, "id"));
        json_array_append_new(blocks, json_pack("{s:s, s:s, s:s, s:o}", "type", "tool_use", "id",
                                                id, "name", model__str(c, "name"), "input",
                                                model__call_args(c)));
    }
    if (json_array_size(blocks) == 0) {
        json_decref(blocks);
        return NULL;
    }
    return json_pack("{s:s, s:o}", "role", "assistant", "content", blocks);
}

static json_t *
encode_messages(const json_t *messages, struct err **errp)
{
    json_t *out = json_array(), *m, *native, *turn;
    size_t i;

    json_array_foreach(messages, i, m)
    {
        const char *role = model__str(m, "role");
        if (model__check_message(m, i, errp) < 0) {
            json_decref(out);
            return NULL;
        }
        if (strcmp(role, "user") == 0) {
            json_array_append_new(user_blocks(out), json_pack("{s:s, s:s}", "type", "text", "text",
                                                              model__str(m, "text")));
            continue;
        }
        if (strcmp(role, "tool") == 0) {
            json_array_append_new(user_blocks(out), tool_result(m));
            continue;
        }
        native = model__native(m, "anthropic");
        if (native != NULL && json_array_size(json_object_get(native, "content")) > 0)
            turn = json_pack("{s:s, s:O}", "role", "assistant", "content",
                             json_object_get(native, "content"));
        else if (native != NULL)
            turn = NULL;
        else
            turn = rebuild_assistant(m);
        if (turn != NULL)
            json_array_append_new(out, turn);
    }
    return out;
}

static json_t *
encode_tools(const json_t *tools)
{
    json_t *out = json_array(), *t;
    size_t i;

    /* input_schema is required. */
    json_array_foreach(tools, i, t)
        json_array_append_new(out, model__tool_decl(t, "input_schema", true));
    return out;
}

/* Sampling and thinking: thinking refuses a changed temperature or top_p, and recent models
 * refuse temperature and top_p together, so top_p gives way to temperature. */
static void
encode_generation(const json_t *gen, json_t *root, int64_t max_tokens)
{
    const char *level = model__str(gen, "thinking_level");
    int64_t budget = 0;

    model__map_generation(gen, gen_map, sizeof(gen_map) / sizeof(gen_map[0]), root);
    if (json_object_get(root, "temperature") != NULL)
        json_object_del(root, "top_p");
    for (size_t i = 0; level != NULL && i < sizeof(budgets) / sizeof(budgets[0]); i++)
        if (strcmp(level, budgets[i].level) == 0)
            budget = budgets[i].budget;
    if (budget >= max_tokens)
        budget = max_tokens - 1;
    if (budget >= 1024) {
        json_object_set_new(
            root, "thinking",
            json_pack("{s:s, s:I}", "type", "enabled", "budget_tokens", (json_int_t)budget));
        json_object_del(root, "temperature");
        json_object_del(root, "top_p");
    }
}

json_t *
model__anthropic_encode(const struct model_enc *enc, struct err **errp)
{
    const struct model_request *req = enc->req;
    json_t *max = json_object_get(req->generation, "max_output_tokens");
    int64_t max_tokens = json_is_integer(max) && json_integer_value(max) > 0
                             ? (int64_t)json_integer_value(max)
                             : MODEL_ANTHROPIC_MAX_TOKENS;
    const char *tc = model__tool_choice(req->generation);
    json_t *root, *messages = encode_messages(req->messages, errp);

    if (messages == NULL)
        return NULL;
    root = json_pack("{s:s, s:I}", "model", req->model->name, "max_tokens", (json_int_t)max_tokens);
    if (req->system_instruction != NULL && *req->system_instruction != '\0')
        json_object_set_new(root, "system", json_string(req->system_instruction));
    json_object_set_new(root, "messages", messages);
    if (json_array_size(req->tools) > 0) {
        json_object_set_new(root, "tools", encode_tools(req->tools));
        if (tc != NULL && (strcmp(tc, "any") == 0 || strcmp(tc, "none") == 0))
            json_object_set_new(root, "tool_choice", json_pack("{s:s}", "type", tc));
    }
    encode_generation(req->generation, root, max_tokens);
    json_object_set_new(root, "stream", json_false());
    return root;
}

/* ----------------------------------------------------------------- decode */

static void
decode_blocks(const json_t *blocks, size_t id_base, struct model_turn *out)
{
    size_t i;
    json_t *b;

    json_array_foreach(blocks, i, b)
    {
        const char *type = model__str(b, "type");
        if (type == NULL)
            continue;
        if (strcmp(type, "text") == 0) {
            model__append_text(out, false, model__str(b, "text"));
        } else if (strcmp(type, "thinking") == 0) {
            const char *sig = model__str(b, "signature");
            model__append_text(out, true, model__str(b, "thinking"));
            if (sig != NULL && out->thought_signature == NULL)
                out->thought_signature = xstrdup(sig);
        } else if (strcmp(type, "tool_use") == 0) {
            json_t *input = json_object_get(b, "input");
            model__turn_add_call(out, model__str(b, "id"), model__str(b, "name"),
                                 input != NULL ? json_incref(input) : json_object(), NULL, id_base);
        }
        /* redacted_thinking and unknown blocks live on in the native message only. */
    }
}

static void
decode_usage(const json_t *u, struct model_usage *out)
{
    int64_t read = model__tokens(u, "cache_read_input_tokens");

    /* input_tokens counts only what came after the last cache breakpoint. */
    out->input =
        model__tokens(u, "input_tokens") + read + model__tokens(u, "cache_creation_input_tokens");
    out->cached = read;
    out->output = model__tokens(u, "output_tokens"); /* thinking included: not reported apart */
    out->thought = 0;
    out->total = 0; /* none reported: input + output */
    model__usage_settle(out);
}

/* stop_reason; refusal, pause_turn and the rest are MODEL_FINISH_OTHER. A tool_use block
 * whose input is not an object is a call with args_error, not a finish. */
static const struct model_finish_word finish_words[] = {
    { "end_turn", MODEL_FINISH_STOP },
    { "stop_sequence", MODEL_FINISH_STOP },
    { "tool_use", MODEL_FINISH_TOOLS },
    { "max_tokens", MODEL_FINISH_LENGTH },
    /* The prompt and the answer filled the context window: the answer is cut as well. */
    { "model_context_window_exceeded", MODEL_FINISH_LENGTH },
};

int
model__anthropic_decode(const struct model_ref *m, json_t *resp, size_t id_base,
                        struct model_turn *out, struct err **errp)
{
    json_t *content = json_object_get(resp, "content");
    const char *sr = model__str(resp, "stop_reason");
    json_t *native;

    (void)m;
    if (!json_is_object(resp))
        return err_set(errp, ERR_UPSTREAM, 0, "the answer is not a JSON object");
    if (!json_is_array(content))
        return err_set(errp, ERR_UPSTREAM, 0, "the answer has no content");
    decode_blocks(content, id_base, out);
    model__turn_set_finish(out, sr, finish_words, sizeof(finish_words) / sizeof(finish_words[0]));
    decode_usage(json_object_get(resp, "usage"), &out->usage);
    native = json_pack("{s:s, s:O}", "role", "assistant", "content", content);
    model__turn_finish(out, "anthropic", native);
    json_decref(native);
    return 0;
}

const struct model_wire model__anthropic_wire = {
    .label = "Anthropic",
    .native = "anthropic",
    .encode = model__anthropic_encode,
    .decode = model__anthropic_decode,
    .why = model__error_why,
};
