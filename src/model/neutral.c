/*
 * The neutral side shared by the three format files: reading and checking neutral messages,
 * building a struct model_turn (calls with parsed or refused arguments, the neutral assistant
 * message), the generation_config and tool mappings, and escaping upstream text for errors.
 */
#include <string.h>

#include "model_int.h"

void
model_turn_clear(struct model_turn *t)
{
    if (t == NULL)
        return;
    free(t->text);
    free(t->thought);
    free(t->thought_signature);
    for (size_t i = 0; i < t->ncalls; i++) {
        free(t->calls[i].id);
        free(t->calls[i].name);
        json_decref(t->calls[i].args);
        free(t->calls[i].args_text);
        free(t->calls[i].args_error);
    }
    free(t->calls);
    free(t->finish_reason);
    json_decref(t->message);
    memset(t, 0, sizeof(*t));
}

const char *
model__str(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

int64_t
model__tokens(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);

    /* Cut rather than refused: an absurd count still spends the budgets it is checked
     * against, and a negative one must not give any back. */
    if (json_is_integer(v)) {
        json_int_t n = json_integer_value(v);
        return n < 0 ? 0 : n > MODEL_TOKENS_MAX ? MODEL_TOKENS_MAX : (int64_t)n;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        return d > 0 ? (d < (double)MODEL_TOKENS_MAX ? (int64_t)d : MODEL_TOKENS_MAX) : 0;
    }
    return 0;
}

static int64_t
tokens_cut(int64_t n)
{
    return n < 0 ? 0 : n > MODEL_TOKENS_MAX ? MODEL_TOKENS_MAX : n;
}

void
model__usage_settle(struct model_usage *u)
{
    u->input = tokens_cut(u->input);
    u->output = tokens_cut(u->output);
    u->thought = tokens_cut(u->thought);
    u->cached = tokens_cut(u->cached);
    if (u->cached > u->input)
        u->cached = u->input;
    if (u->total <= 0)
        u->total = u->input + u->output + u->thought;
    u->total = tokens_cut(u->total);
}

json_t *
model__native(const json_t *msg, const char *native)
{
    json_t *n = json_object_get(msg, "native");
    const char *f = model__str(n, "format");
    json_t *m = json_object_get(n, "message");

    return f != NULL && strcmp(f, native) == 0 && json_is_object(m) ? m : NULL;
}

json_t *
model__call_args(const json_t *call)
{
    json_t *a = json_object_get(call, "args");

    return json_is_object(a) ? json_incref(a) : json_object();
}

size_t
model__count_calls(const json_t *messages)
{
    size_t i, n = 0;
    json_t *m;

    json_array_foreach(messages, i, m)
    {
        const char *role = model__str(m, "role");
        if (role != NULL && strcmp(role, "assistant") == 0)
            n += json_array_size(json_object_get(m, "calls"));
    }
    return n;
}

/* Checks that key of o is absent or a string (or, when must, present and a string). */
static int
check_string(const json_t *o, const char *key, bool must, size_t index, struct err **errp)
{
    json_t *v = json_object_get(o, key);

    if ((v == NULL && !must) || json_is_string(v))
        return 0;
    return err_set(errp, ERR_INVALID, 0, "messages[%zu].%s: %s", index, key,
                   v == NULL ? "missing" : "not a string");
}

static int
check_calls(const json_t *calls, size_t index, struct err **errp)
{
    size_t i;
    json_t *c;

    if (calls == NULL)
        return 0;
    if (!json_is_array(calls))
        return err_set(errp, ERR_INVALID, 0, "messages[%zu].calls: not an array", index);
    json_array_foreach(calls, i, c)
    {
        json_t *a = json_object_get(c, "args");
        if (!json_is_string(json_object_get(c, "id")) ||
            !json_is_string(json_object_get(c, "name")) || (a != NULL && !json_is_object(a)))
            return err_set(errp, ERR_INVALID, 0,
                           "messages[%zu].calls[%zu]: needs a string id and name, and args an "
                           "object when present",
                           index, i);
    }
    return 0;
}

int
model__check_message(const json_t *msg, size_t index, struct err **errp)
{
    const char *role = model__str(msg, "role");

    if (!json_is_object(msg))
        return err_set(errp, ERR_INVALID, 0, "messages[%zu]: not an object", index);
    if (role == NULL)
        return err_set(errp, ERR_INVALID, 0, "messages[%zu].role: missing", index);
    if (strcmp(role, "user") == 0)
        return check_string(msg, "text", true, index, errp);
    if (strcmp(role, "tool") == 0) {
        if (check_string(msg, "call_id", true, index, errp) < 0 ||
            check_string(msg, "name", true, index, errp) < 0 ||
            check_string(msg, "output", false, index, errp) < 0)
            return -1;
        return 0;
    }
    if (strcmp(role, "assistant") == 0) {
        json_t *n = json_object_get(msg, "native");
        if (check_string(msg, "text", false, index, errp) < 0 ||
            check_string(msg, "thought", false, index, errp) < 0 ||
            check_calls(json_object_get(msg, "calls"), index, errp) < 0)
            return -1;
        if (n != NULL && (!json_is_string(json_object_get(n, "format")) ||
                          !json_is_object(json_object_get(n, "message"))))
            return err_set(errp, ERR_INVALID, 0,
                           "messages[%zu].native: needs a string format and an object message",
                           index);
        return 0;
    }
    {
        cleanup_free char *e = model__escape(role, strlen(role));
        return err_set(errp, ERR_INVALID, 0,
                       "messages[%zu].role: \"%s\" is not user, assistant or tool", index, e);
    }
}

/* Parses the arguments text of a call into c->args, or says in c->args_error why not. */
static void
parse_args(struct model_call *c)
{
    const char *s = c->args_text;
    json_error_t je;
    json_t *v;

    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
        s++;
    if (*s == '\0') {
        /* Some servers send "" for a call without parameters. */
        c->args = json_object();
        return;
    }
    if (!util_json_values_within(s, strlen(s), UTIL_JSON_VALUES_MAX)) {
        c->args_error =
            xasprintf("the arguments hold more than %u JSON values", UTIL_JSON_VALUES_MAX);
        return;
    }
    v = json_loads(s, JSON_DECODE_ANY, &je);
    if (v == NULL) {
        cleanup_free char *e = model__escape(je.text, strlen(je.text));
        c->args_error =
            xasprintf("the arguments are not valid JSON: %s (at character %d)", e, je.position);
        return;
    }
    if (!json_is_object(v)) {
        c->args_error =
            xasprintf("the arguments are a JSON %s, not an object", json_is_array(v)    ? "array"
                                                                    : json_is_string(v) ? "string"
                                                                    : json_is_number(v) ? "number"
                                                                    : json_is_null(v)   ? "null"
                                                                                      : "boolean");
        json_decref(v);
        return;
    }
    c->args = v;
}

void
model__turn_add_call(struct model_turn *t, const char *id, const char *name, json_t *args,
                     const char *args_text, size_t id_base)
{
    struct model_call *c;

    t->calls = xrealloc(t->calls, (t->ncalls + 1) * sizeof(*t->calls));
    c = &t->calls[t->ncalls];
    memset(c, 0, sizeof(*c));
    c->id =
        id != NULL && *id != '\0' ? xstrdup(id) : xasprintf("call_%zu", id_base + t->ncalls + 1);
    c->name = xstrdup(name != NULL ? name : "");
    t->ncalls++;
    if (args != NULL) {
        char *text = json_dumps(args, JSON_COMPACT | JSON_ENCODE_ANY);
        c->args_text = xstrdup(text != NULL ? text : "");
        free(text);
        if (json_is_object(args)) {
            c->args = args;
            return;
        }
        json_decref(args);
    } else {
        c->args_text = xstrdup(args_text != NULL ? args_text : "");
    }
    parse_args(c);
}

void
model__turn_set_finish(struct model_turn *t, const char *word, const struct model_finish_word *map,
                       size_t n)
{
    enum model_finish f = word == NULL ? MODEL_FINISH_STOP : MODEL_FINISH_OTHER;

    for (size_t i = 0; word != NULL && i < n; i++)
        if (strcmp(word, map[i].word) == 0)
            f = map[i].finish;
    /* llama-server says "stop" with tool calls; a server whose parser could not read the
     * model's tool call may say "tool_calls" and send none. */
    if (f == MODEL_FINISH_STOP && t->ncalls > 0)
        f = MODEL_FINISH_TOOLS;
    else if (f == MODEL_FINISH_TOOLS && t->ncalls == 0)
        f = MODEL_FINISH_MALFORMED;
    t->finish = f;
    free(t->finish_reason);
    t->finish_reason = word != NULL ? xstrdup(word) : NULL;
}

/* The allocation model__append_text keeps for n bytes and a NUL: a power of two. */
static size_t
text_room(size_t n)
{
    size_t room = 64;

    while (room < n + 1)
        room *= 2;
    return room;
}

void
model__append_text(struct model_turn *t, bool thought, const char *text)
{
    char **dst = thought ? &t->thought : &t->text;
    size_t *len = thought ? &t->thought_len : &t->text_len;
    size_t n = text != NULL ? strlen(text) : 0;

    if (n == 0)
        return;
    if (*dst == NULL)
        *len = 0;
    /* The allocation is text_room(*len) and grows only when that power of two is passed. */
    if (*dst == NULL || text_room(*len + n) != text_room(*len))
        *dst = xrealloc(*dst, text_room(*len + n));
    memcpy(*dst + *len, text, n + 1);
    *len += n;
}

void
model__turn_finish(struct model_turn *t, const char *native_format, json_t *native)
{
    json_t *m = json_object();

    json_object_set_new(m, "role", json_string("assistant"));
    if (t->text != NULL)
        json_object_set_new(m, "text", json_string(t->text));
    if (t->thought != NULL)
        json_object_set_new(m, "thought", json_string(t->thought));
    if (t->ncalls > 0) {
        json_t *calls = json_array();
        for (size_t i = 0; i < t->ncalls; i++) {
            const struct model_call *c = &t->calls[i];
            json_t *o = json_pack("{s:s, s:s}", "id", c->id, "name", c->name);
            if (c->args != NULL) {
                json_object_set(o, "args", c->args);
            } else {
                json_object_set_new(o, "args_text", json_string(c->args_text));
                json_object_set_new(o, "args_error", json_string(c->args_error));
            }
            json_array_append_new(calls, o);
        }
        json_object_set_new(m, "calls", calls);
    }
    json_object_set_new(m, "native",
                        json_pack("{s:s, s:O}", "format", native_format, "message", native));
    json_decref(t->message);
    t->message = m;
}

char *
model__escape(const char *s, size_t len)
{
    return log_escape(s, len, MODEL_UPSTREAM_MSG_MAX);
}

char *
model__error_why(const json_t *resp)
{
    /* Some Google endpoints wrap the error object in an array. */
    const json_t *root = json_is_array(resp) ? json_array_get(resp, 0) : resp;
    const json_t *e = json_object_get(root, "error");
    const char *msg = NULL;

    if (json_is_string(e))
        msg = json_string_value(e);
    else if (json_is_object(e))
        msg = model__str(e, "message");
    if (msg == NULL)
        msg = model__str(root, "message");
    if (msg == NULL)
        msg = model__str(root, "detail");
    return msg != NULL ? xstrdup(msg) : NULL;
}

char *
model__upstream_text(const char *s, size_t len, size_t max, const char *secret)
{
    const char *const secrets[] = { secret, NULL };

    return log_escape_redact(s, len, max, secrets);
}

/* ------------------------------------------------------------- generation */

void
model__map_generation(const json_t *gen, const struct model_gen_map *map, size_t n, json_t *dst)
{
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_object_get(gen, map[i].from);
        bool ok = false;
        switch (map[i].kind) {
        case MODEL_GEN_NUMBER:
            ok = json_is_number(v);
            break;
        case MODEL_GEN_INTEGER:
            ok = json_is_integer(v);
            break;
        case MODEL_GEN_STRINGS: {
            size_t j;
            json_t *s;
            ok = json_is_array(v);
            json_array_foreach(v, j, s) ok = ok && json_is_string(s);
            break;
        }
        }
        if (ok)
            json_object_set(dst, map[i].to, v);
    }
}

json_t *
model__tool_decl(const json_t *tool, const char *schema_key, bool schema_required)
{
    const char *name = model__str(tool, "name");
    json_t *d = json_pack("{s:s}", "name", name != NULL ? name : "");
    json_t *schema = json_object_get(tool, "parameters");

    if (model__str(tool, "description") != NULL)
        json_object_set(d, "description", json_object_get(tool, "description"));
    if (json_is_object(schema))
        json_object_set(d, schema_key, schema);
    else if (schema_required)
        json_object_set_new(d, schema_key,
                            json_pack("{s:s, s:{}}", "type", "object", "properties"));
    return d;
}

const char *
model__tool_choice(const json_t *gen)
{
    json_t *tc = json_object_get(gen, "tool_choice");

    if (json_is_string(tc))
        return json_string_value(tc);
    /* {"allowed_tools": {"mode": …, "tools": […]}}: only the mode is carried. */
    return model__str(json_object_get(tc, "allowed_tools"), "mode");
}
