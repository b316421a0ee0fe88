/*
 * OpenAI-compatible chat completions (OpenAI, llama.cpp llama-server, Ollama, vLLM): the
 * neutral conversation as messages (system, user, assistant with tool_calls, tool), and
 * choices[0] of the answer back into a struct model_turn. Local servers differ from the hosted
 * one in small ways this file absorbs: content null, no usage, tool calls without ids,
 * reasoning as reasoning_content or reasoning, arguments as an object instead of a string.
 */
#include <stdlib.h>
#include <string.h>

#include "model_int.h"

static const struct model_gen_map gen_map[] = {
    { "temperature", "temperature", MODEL_GEN_NUMBER },
    { "top_p", "top_p", MODEL_GEN_NUMBER },
    { "seed", "seed", MODEL_GEN_INTEGER },
    { "stop_sequences", "stop", MODEL_GEN_STRINGS },
};

/* True when a tool call's arguments are a string holding a JSON object. */
static bool
arguments_ok(const json_t *args)
{
    json_t *v;
    bool ok;

    if (!json_is_string(args))
        return false;
    v = model__load_capped(json_string_value(args), json_string_length(args), NULL);
    ok = json_is_object(v);
    json_decref(v);
    return ok;
}

/*
 * The fields of a response message that go back in a request. The hosted API refuses unknown
 * fields in messages ("Additional properties are not allowed"), and its responses carry some
 * (annotations, audio); reasoning_content and reasoning are kept for the local servers that
 * send them and want them back.
 */
static const char *const replay_fields[] = { "role",    "content",           "tool_calls", "name",
                                             "refusal", "reasoning_content", "reasoning" };

static bool
replay_field(const char *key)
{
    for (size_t i = 0; i < sizeof(replay_fields) / sizeof(replay_fields[0]); i++)
        if (strcmp(key, replay_fields[i]) == 0)
            return true;
    return false;
}

/* A tool call as it came, with the id made up for it when it had none (the tool message
 * refers to that one) and arguments the server can parse: llama-server renders its template
 * from parsed arguments and fails the whole request on a bad one (the model saw the error in
 * the tool result already). */
static json_t *
replay_call(const json_t *tc, const json_t *call)
{
    json_t *fn = json_object_get(tc, "function"), *a = json_object_get(fn, "arguments");
    const char *id = model__str(tc, "id");
    char *args = NULL;
    json_t *out;

    if (id == NULL || *id == '\0')
        id = model__str(call, "id");
    if (id == NULL)
        id = "call_0"; /* a native message with more calls than its neutral one */
    if (arguments_ok(a))
        args = xstrdup(json_string_value(a));
    else if (json_is_object(a))
        args = json_dumps(a, JSON_COMPACT);
    out = json_pack("{s:s, s:s, s:{s:s, s:s}}", "id", id, "type", "function", "function", "name",
                    model__str(fn, "name") != NULL ? model__str(fn, "name") : "", "arguments",
                    args != NULL ? args : "{}");
    free(args);
    return out;
}

/* An assistant message the server made, sent back as it was but for the fields a request may
 * not carry, null values, the repairs of replay_call(), and content null without tool calls
 * (refused) made "". */
static json_t *
replay_assistant(json_t *native, const json_t *msg)
{
    json_t *out = json_object(), *v, *tcs = json_array(), *tc;
    const char *key;
    size_t i;

    json_object_foreach(native, key, v)
    {
        if (replay_field(key) && !json_is_null(v) && strcmp(key, "tool_calls") != 0)
            json_object_set(out, key, v);
    }
    json_array_foreach(json_object_get(native, "tool_calls"), i, tc) json_array_append_new(
        tcs, replay_call(tc, json_array_get(json_object_get(msg, "calls"), i)));
    if (json_array_size(tcs) > 0) {
        json_object_set_new(out, "tool_calls", tcs);
        if (json_object_get(out, "content") == NULL)
            json_object_set_new(out, "content", json_null());
    } else {
        json_decref(tcs);
        if (!json_is_string(json_object_get(out, "content")) &&
            !json_is_array(json_object_get(out, "content")))
            json_object_set_new(out, "content", json_string(""));
    }
    json_object_set_new(out, "role", json_string("assistant"));
    return out;
}

/* An assistant message rebuilt from the neutral fields (it came from another format). */
static json_t *
rebuild_assistant(const json_t *msg)
{
    const char *text = model__str(msg, "text");
    json_t *calls = json_object_get(msg, "calls"), *c, *tcs = json_array();
    json_t *out = json_pack("{s:s}", "role", "assistant");
    size_t i;

    json_array_foreach(calls, i, c)
    {
        json_t *args = model__call_args(c);
        char *s = json_dumps(args, JSON_COMPACT);
        json_array_append_new(tcs, json_pack("{s:s, s:s, s:{s:s, s:s}}", "id", model__str(c, "id"),
                                             "type", "function", "function", "name",
                                             model__str(c, "name"), "arguments", s));
        free(s);
        json_decref(args);
    }
    if (text != NULL && *text != '\0')
        json_object_set_new(out, "content", json_string(text));
    else
        json_object_set_new(out, "content",
                            json_array_size(tcs) > 0 ? json_null() : json_string(""));
    if (json_array_size(tcs) > 0)
        json_object_set_new(out, "tool_calls", tcs);
    else
        json_decref(tcs);
    return out;
}

static json_t *
tool_message(const json_t *msg)
{
    const char *output = model__str(msg, "output");
    json_t *out =
        json_pack("{s:s, s:s}", "role", "tool", "tool_call_id", model__str(msg, "call_id"));

    if (output == NULL)
        output = "";
    /* The format has no error flag: the model learns it from the text. */
    if (json_is_true(json_object_get(msg, "is_error"))) {
        char *s = xasprintf("Error: %s", output);
        json_object_set_new(out, "content", json_string(s));
        free(s);
    } else {
        json_object_set_new(out, "content", json_string(output));
    }
    return out;
}

static json_t *
encode_messages(const struct model_request *req, struct err **errp)
{
    json_t *out = json_array(), *m, *native;
    size_t i;

    if (req->system_instruction != NULL && *req->system_instruction != '\0')
        json_array_append_new(
            out, json_pack("{s:s, s:s}", "role", "system", "content", req->system_instruction));
    json_array_foreach(req->messages, i, m)
    {
        const char *role = model__str(m, "role");
        if (model__check_message(m, i, errp) < 0) {
            json_decref(out);
            return NULL;
        }
        if (strcmp(role, "user") == 0)
            json_array_append_new(
                out, json_pack("{s:s, s:s}", "role", "user", "content", model__str(m, "text")));
        else if (strcmp(role, "tool") == 0)
            json_array_append_new(out, tool_message(m));
        else if ((native = model__native(m, "openai")) != NULL)
            json_array_append_new(out, replay_assistant(native, m));
        else
            json_array_append_new(out, rebuild_assistant(m));
    }
    return out;
}

static json_t *
encode_tools(const json_t *tools)
{
    json_t *out = json_array(), *t;
    size_t i;

    json_array_foreach(tools, i, t)
        json_array_append_new(out, json_pack("{s:s, s:o}", "type", "function", "function",
                                             model__tool_decl(t, "parameters", false)));
    return out;
}

json_t *
model__openai_encode(const struct model_enc *enc, struct err **errp)
{
    const struct model_request *req = enc->req;
    json_t *gen = req->generation, *max = json_object_get(gen, "max_output_tokens");
    const char *tc = model__tool_choice(gen), *level = model__str(gen, "thinking_level");
    json_t *root, *messages = encode_messages(req, errp);

    if (messages == NULL)
        return NULL;
    root =
        json_pack("{s:s, s:o, s:b}", "model", req->model->name, "messages", messages, "stream", 0);
    if (json_array_size(req->tools) > 0) {
        json_object_set_new(root, "tools", encode_tools(req->tools));
        json_object_set_new(root, "tool_choice",
                            json_string(tc == NULL                ? "auto"
                                        : strcmp(tc, "any") == 0  ? "required"
                                        : strcmp(tc, "none") == 0 ? "none"
                                                                  : "auto"));
    }
    model__map_generation(gen, gen_map, sizeof(gen_map) / sizeof(gen_map[0]), root);
    /* OpenAI's reasoning models refuse max_tokens; local servers may not know its successor. */
    if (json_is_integer(max))
        json_object_set(root, enc->hosted ? "max_completion_tokens" : "max_tokens", max);
    if (level != NULL)
        json_object_set_new(root, "reasoning_effort", json_string(level));
    return root;
}

/* ----------------------------------------------------------------- decode */

/* The text of content: a string, or an array of parts with "text" (some servers). */
static void
decode_content(const json_t *content, struct model_turn *out)
{
    size_t i;
    json_t *p;

    if (json_is_string(content)) {
        model__append_text(out, false, json_string_value(content));
        return;
    }
    json_array_foreach(content, i, p)
        model__append_text(out, false, model__str(p, "text"));
}

static void
decode_calls(const json_t *tcs, size_t id_base, struct model_turn *out)
{
    size_t i;
    json_t *tc;

    json_array_foreach(tcs, i, tc)
    {
        json_t *fn = json_object_get(tc, "function");
        json_t *a = json_object_get(fn, "arguments");
        const char *id = model__str(tc, "id"), *name = model__str(fn, "name");

        if (json_is_string(a))
            model__turn_add_call(out, id, name, NULL, json_string_value(a), id_base);
        else if (a == NULL || json_is_null(a))
            model__turn_add_call(out, id, name, NULL, "", id_base);
        else
            model__turn_add_call(out, id, name, json_incref(a), NULL, id_base);
    }
}

static void
decode_usage(const json_t *u, struct model_usage *out)
{
    int64_t reasoning =
        model__tokens(json_object_get(u, "completion_tokens_details"), "reasoning_tokens");
    int64_t completion = model__tokens(u, "completion_tokens");

    out->input = model__tokens(u, "prompt_tokens");
    out->thought = reasoning;
    out->output = completion > reasoning ? completion - reasoning : 0;
    out->cached = model__tokens(json_object_get(u, "prompt_tokens_details"), "cached_tokens");
    out->total = model__tokens(u, "total_tokens");
    model__usage_settle(out);
}

/* finish_reason; content_filter and the rest are MODEL_FINISH_OTHER. The format has no
 * word for a malformed call: calls announced and none sent is one (model__turn_set_finish). */
static const struct model_finish_word finish_words[] = {
    { "stop", MODEL_FINISH_STOP },
    { "length", MODEL_FINISH_LENGTH },
    { "tool_calls", MODEL_FINISH_TOOLS },
    { "function_call", MODEL_FINISH_TOOLS },
};

int
model__openai_decode(const struct model_ref *m, json_t *resp, size_t id_base,
                     struct model_turn *out, struct err **errp)
{
    json_t *choice = json_array_get(json_object_get(resp, "choices"), 0);
    json_t *msg = json_object_get(choice, "message");
    const char *fr = model__str(choice, "finish_reason");
    const char *reasoning;

    (void)m;
    if (!json_is_object(resp))
        return err_set(errp, ERR_UPSTREAM, 0, "the answer is not a JSON object");
    if (!json_is_object(msg))
        return err_set(errp, ERR_UPSTREAM, 0, "the answer has no choices[0].message");
    decode_content(json_object_get(msg, "content"), out);
    reasoning = model__str(msg, "reasoning_content");
    model__append_text(out, true, reasoning != NULL ? reasoning : model__str(msg, "reasoning"));
    decode_calls(json_object_get(msg, "tool_calls"), id_base, out);
    model__turn_set_finish(out, fr, finish_words, sizeof(finish_words) / sizeof(finish_words[0]));
    decode_usage(json_object_get(resp, "usage"), &out->usage);
    model__turn_finish(out, "openai", msg);
    return 0;
}

const struct model_wire model__openai_wire = {
    .label = "OpenAI-compatible",
    .native = "openai",
    .encode = model__openai_encode,
    .decode = model__openai_decode,
    .why = model__error_why,
};
