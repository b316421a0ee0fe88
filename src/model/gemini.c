/*
 * Gemini generateContent: the neutral conversation as systemInstruction + contents (roles
 * user and model), tools as functionDeclarations, and the answer's first candidate back into
 * a struct model_turn. A model turn Gemini made is replayed verbatim: the first functionCall
 * of each turn must carry its thoughtSignature or Gemini answers 400, and parts this code does
 * not know must survive too.
 */
#include <string.h>

#include "model_int.h"

static const struct model_gen_map gen_map[] = {
    { "temperature", "temperature", MODEL_GEN_NUMBER },
    { "top_p", "topP", MODEL_GEN_NUMBER },
    { "seed", "seed", MODEL_GEN_INTEGER },
    { "max_output_tokens", "maxOutputTokens", MODEL_GEN_INTEGER },
    { "stop_sequences", "stopSequences", MODEL_GEN_STRINGS },
};

/* The state of encoding contents: the user turn of function responses being gathered, and
 * the call ids that were sent to Gemini (a response carries an id only when its call did). */
struct conv {
    json_t *contents;
    json_t *results; /* parts of the pending function-response turn, or NULL */
    json_t *sent_ids;
};

static void
flush_results(struct conv *cv)
{
    if (cv->results == NULL)
        return;
    json_array_append_new(cv->contents,
                          json_pack("{s:s, s:o}", "role", "user", "parts", cv->results));
    cv->results = NULL;
}

/* Notes the ids of the functionCall parts of a verbatim model turn. */
static void
note_native_ids(struct conv *cv, const json_t *native)
{
    size_t i;
    json_t *p;

    json_array_foreach(json_object_get(native, "parts"), i, p)
    {
        const char *id = model__str(json_object_get(p, "functionCall"), "id");
        if (id != NULL)
            json_object_set_new(cv->sent_ids, id, json_true());
    }
}

/* A model turn rebuilt from the neutral fields (it came from another format); NULL when it
 * would have no parts, which Gemini refuses. Thoughts of other models are not carried. */
static json_t *
rebuild_model_turn(struct conv *cv, const json_t *msg)
{
    json_t *parts = json_array(), *c;
    const char *text = model__str(msg, "text");
    size_t i;

    if (text != NULL && *text != '\0')
        json_array_append_new(parts, json_pack("{s:s}", "text", text));
    json_array_foreach(json_object_get(msg, "calls"), i, c)
    {
        const char *id = model__str(c, "id");
        json_t *fc =
            json_pack("{s:s, s:o}", "name", model__str(c, "name"), "args", model__call_args(c));
        json_object_set_new(fc, "id", json_string(id));
        json_object_set_new(cv->sent_ids, id, json_true());
        json_array_append_new(parts, json_pack("{s:o}", "functionCall", fc));
    }
    if (json_array_size(parts) == 0) {
        json_decref(parts);
        return NULL;
    }
    return json_pack("{s:s, s:o}", "role", "model", "parts", parts);
}

/* A model turn Gemini made, as it was; NULL when it has no parts (Gemini refuses those). An
 * answer whose content came without a role gets "model". */
static json_t *
replay_model_turn(json_t *native)
{
    json_t *turn;

    if (json_array_size(json_object_get(native, "parts")) == 0)
        return NULL;
    if (model__str(native, "role") != NULL)
        return json_incref(native);
    turn = json_copy(native);
    json_object_set_new(turn, "role", json_string("model"));
    return turn;
}

static json_t *
function_response(struct conv *cv, const json_t *msg)
{
    const char *id = model__str(msg, "call_id");
    const char *output = model__str(msg, "output");
    json_t *fr = json_pack("{s:s, s:{s:s}}", "name", model__str(msg, "name"), "response",
                           json_is_true(json_object_get(msg, "is_error")) ? "error" : "output",
                           output != NULL ? output : "");

    if (json_is_true(json_object_get(cv->sent_ids, id)))
        json_object_set_new(fr, "id", json_string(id));
    return json_pack("{s:o}", "functionResponse", fr);
}

/*
 * Gemini 3 refuses a model turn whose first functionCall part has no thoughtSignature (a 400
 * "missing a thought_signature"). A turn rebuilt from another format, or made by a Gemini
 * that did not think, has none: its first call gets the placeholder Gemini documents for
 * histories it did not make, "skip_thought_signature_validator". A signature the model gave
 * is never touched. Returns the turn (owned), a copy when it had to change.
 */
static json_t *
sign_first_call(json_t *turn)
{
    json_t *parts = json_object_get(turn, "parts"), *p, *copy;
    size_t i;

    json_array_foreach(parts, i, p) {
        if (json_object_get(p, "functionCall") == NULL)
            continue;
        if (json_object_get(p, "thoughtSignature") != NULL)
            return turn;
        copy = json_deep_copy(turn);
        json_decref(turn);
        json_object_set_new(json_array_get(json_object_get(copy, "parts"), i), "thoughtSignature",
                            json_string("skip_thought_signature_validator"));
        return copy;
    }
    return turn;
}

static json_t *
encode_contents(const json_t *messages, bool signed_calls, struct err **errp)
{
    struct conv cv = { .contents = json_array(), .sent_ids = json_object() };
    size_t i;
    json_t *m;

    json_array_foreach(messages, i, m)
    {
        const char *role = model__str(m, "role");
        json_t *native, *turn;

        if (model__check_message(m, i, errp) < 0) {
            json_decref(cv.results);
            json_decref(cv.sent_ids);
            json_decref(cv.contents);
            return NULL;
        }
        if (strcmp(role, "tool") == 0) {
            if (cv.results == NULL)
                cv.results = json_array();
            json_array_append_new(cv.results, function_response(&cv, m));
            continue;
        }
        flush_results(&cv);
        if (strcmp(role, "user") == 0) {
            turn = json_pack("{s:s, s:[{s:s}]}", "role", "user", "parts", "text",
                             model__str(m, "text"));
        } else if ((native = model__native(m, "gemini")) != NULL) {
            note_native_ids(&cv, native);
            turn = replay_model_turn(native);
        } else {
            turn = rebuild_model_turn(&cv, m);
        }
        if (turn != NULL && signed_calls && strcmp(role, "user") != 0)
            turn = sign_first_call(turn);
        if (turn != NULL)
            json_array_append_new(cv.contents, turn);
    }
    flush_results(&cv);
    json_decref(cv.sent_ids);
    return cv.contents;
}

static json_t *
encode_tools(const json_t *tools)
{
    json_t *decls = json_array(), *t;
    size_t i;

    json_array_foreach(tools, i, t)
        json_array_append_new(decls, model__tool_decl(t, "parameters", false));
    return json_pack("[{s:o}]", "functionDeclarations", decls);
}

static json_t *
tool_config(const json_t *gen)
{
    const char *tc = model__tool_choice(gen);
    const char *mode = "AUTO";

    if (tc != NULL && strcmp(tc, "any") == 0)
        mode = "ANY";
    else if (tc != NULL && strcmp(tc, "none") == 0)
        mode = "NONE";
    else if (tc != NULL && strcmp(tc, "validated") == 0)
        mode = "VALIDATED";
    return json_pack("{s:{s:s}}", "functionCallingConfig", "mode", mode);
}

/* Gemini 2.x takes a thinking budget in tokens; later models take thinkingLevel. */
static const struct {
    const char *level;
    json_int_t budget;
} budgets[] = {
    { "minimal", 512 },
    { "low", 1024 },
    { "medium", 8192 },
    { "high", 24576 },
};

static void
thinking_level(json_t *thinking, const char *level, const char *model)
{
    if (strncmp(model, "gemini-2.", 9) != 0) {
        json_object_set_new(thinking, "thinkingLevel", json_string(level));
        return;
    }
    for (size_t i = 0; i < sizeof(budgets) / sizeof(budgets[0]); i++)
        if (strcmp(level, budgets[i].level) == 0)
            json_object_set_new(thinking, "thinkingBudget", json_integer(budgets[i].budget));
}

static json_t *
generation_config(const json_t *gen, const char *model)
{
    json_t *gc = json_object(), *thinking = json_object();
    const char *level = model__str(gen, "thinking_level");
    const char *summaries = model__str(gen, "thinking_summaries");

    model__map_generation(gen, gen_map, sizeof(gen_map) / sizeof(gen_map[0]), gc);
    if (level != NULL)
        thinking_level(thinking, level, model);
    if (summaries != NULL)
        json_object_set_new(thinking, "includeThoughts", json_boolean(strcmp(summaries, "none")));
    if (json_object_size(thinking) > 0)
        json_object_set_new(gc, "thinkingConfig", thinking);
    else
        json_decref(thinking);
    return gc;
}

json_t *
model__gemini_encode(const struct model_enc *enc, struct err **errp)
{
    const struct model_request *req = enc->req;
    json_t *root, *contents, *gc;

    /* Gemini 2 takes calls without signatures; every later model wants them (as for
     * thinkingLevel below). */
    contents = encode_contents(req->messages, strncmp(req->model->name, "gemini-2.", 9) != 0, errp);
    if (contents == NULL)
        return NULL;
    root = json_object();
    if (req->system_instruction != NULL && *req->system_instruction != '\0')
        json_object_set_new(root, "systemInstruction",
                            json_pack("{s:[{s:s}]}", "parts", "text", req->system_instruction));
    json_object_set_new(root, "contents", contents);
    if (json_array_size(req->tools) > 0) {
        json_object_set_new(root, "tools", encode_tools(req->tools));
        json_object_set_new(root, "toolConfig", tool_config(req->generation));
    }
    gc = generation_config(req->generation, req->model->name);
    if (json_object_size(gc) > 0)
        json_object_set_new(root, "generationConfig", gc);
    else
        json_decref(gc);
    return root;
}

/* ----------------------------------------------------------------- decode */

static void
decode_parts(const json_t *parts, size_t id_base, struct model_turn *out)
{
    size_t i;
    json_t *p;

    json_array_foreach(parts, i, p)
    {
        const char *sig = model__str(p, "thoughtSignature");
        json_t *fc = json_object_get(p, "functionCall");
        const char *text = model__str(p, "text");

        if (sig != NULL && out->thought_signature == NULL)
            out->thought_signature = xstrdup(sig);
        if (json_is_object(fc)) {
            json_t *args = json_object_get(fc, "args");
            /* A function without parameters comes without args. */
            model__turn_add_call(out, model__str(fc, "id"), model__str(fc, "name"),
                                 args != NULL ? json_incref(args) : json_object(), NULL, id_base);
        } else if (text != NULL) {
            model__append_text(out, json_is_true(json_object_get(p, "thought")), text);
        }
    }
}

static void
decode_usage(const json_t *um, struct model_usage *u)
{
    u->input = model__tokens(um, "promptTokenCount") + model__tokens(um, "toolUsePromptTokenCount");
    u->output = model__tokens(um, "candidatesTokenCount");
    u->thought = model__tokens(um, "thoughtsTokenCount");
    u->cached = model__tokens(um, "cachedContentTokenCount");
    u->total = model__tokens(um, "totalTokenCount");
    model__usage_settle(u);
}

/* The error for an answer without a candidate; gemini_why says why a prompt was blocked. */
static int
no_candidate(const json_t *resp, struct err **errp)
{
    if (model__str(json_object_get(resp, "promptFeedback"), "blockReason") != NULL)
        return err_set(errp, ERR_INVALID, 0, "the prompt was blocked");
    return err_set(errp, ERR_UPSTREAM, 0, "the answer has no candidates");
}

/* A blocked prompt's reason and Gemini's message on it, else the message of an error body. */
static char *
gemini_why(const json_t *resp)
{
    const json_t *pf = json_object_get(resp, "promptFeedback");
    const char *reason = model__str(pf, "blockReason");
    const char *msg = model__str(pf, "blockReasonMessage");

    if (reason == NULL)
        return model__error_why(resp);
    return xasprintf("blockReason %s%s%s", reason, msg != NULL ? ": " : "", msg != NULL ? msg : "");
}

/* finishReason; SAFETY, RECITATION, PROHIBITED_CONTENT and the rest are MODEL_FINISH_OTHER.
 * A malformed call comes with no functionCall part, often with no content at all. */
static const struct model_finish_word finish_words[] = {
    { "STOP", MODEL_FINISH_STOP },
    { "MAX_TOKENS", MODEL_FINISH_LENGTH },
    { "MALFORMED_FUNCTION_CALL", MODEL_FINISH_MALFORMED },
    { "UNEXPECTED_TOOL_CALL", MODEL_FINISH_MALFORMED }, /* a call of a tool not offered */
};

int
model__gemini_decode(const struct model_ref *m, json_t *resp, size_t id_base,
                     struct model_turn *out, struct err **errp)
{
    json_t *cand = json_array_get(json_object_get(resp, "candidates"), 0);
    json_t *content = json_object_get(cand, "content");
    const char *fr = model__str(cand, "finishReason");

    (void)m;
    if (!json_is_object(resp))
        return err_set(errp, ERR_UPSTREAM, 0, "the answer is not a JSON object");
    if (!json_is_object(cand))
        return no_candidate(resp, errp);
    decode_parts(json_object_get(content, "parts"), id_base, out);
    model__turn_set_finish(out, fr, finish_words, sizeof(finish_words) / sizeof(finish_words[0]));
    decode_usage(json_object_get(resp, "usageMetadata"), &out->usage);
    if (json_is_object(content)) {
        model__turn_finish(out, "gemini", content);
    } else {
        json_t *empty = json_pack("{s:s, s:[]}", "role", "model", "parts");
        model__turn_finish(out, "gemini", empty);
        json_decref(empty);
    }
    return 0;
}

const struct model_wire model__gemini_wire = {
    .label = "Gemini",
    .native = "gemini",
    .encode = model__gemini_encode,
    .decode = model__gemini_decode,
    .why = gemini_why,
};
