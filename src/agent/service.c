/*
 * Interactions around the loop: checking a create request and resolving its agent, the
 * worker pool and its queue, events (stored, then announced to waiters), cancel, delete,
 * recovery after a restart, and the Interaction object as the API shows it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "agent_int.h"

/* ------------------------------------------------------------------ utf-8 */

char *
agent__utf8(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    char *out = xmalloc(len * 3 + 1), *o = out;
    size_t i = 0;

    while (i < len) {
        unsigned char c = p[i];
        size_t n = c < 0x80             ? 1
                   : (c & 0xe0) == 0xc0 ? 2
                   : (c & 0xf0) == 0xe0 ? 3
                   : (c & 0xf8) == 0xf0 ? 4
                                        : 0;
        bool ok = n > 0 && i + n <= len && c != 0;
        uint32_t cp = n == 1 ? c : n == 2 ? c & 0x1f : n == 3 ? c & 0x0f : c & 0x07;

        for (size_t k = 1; ok && k < n; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                ok = false;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        /* Overlong forms, surrogates and values past U+10FFFF are invalid too. */
        if (ok && ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
                   (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff))
            ok = false;
        if (ok) {
            memcpy(o, p + i, n);
            o += n;
            i += n;
        } else {
            memcpy(o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        }
    }
    *o = '\0';
    return out;
}

/* ------------------------------------------------------------------ check */

bool
agent_status_final(const char *status)
{
    static const char *const open[] = { "queued", "in_progress", NULL };

    for (size_t i = 0; open[i] != NULL; i++)
        if (strcmp(status, open[i]) == 0)
            return false;
    return true;
}

static bool
is_builtin(const char *name)
{
    return strcmp(name, AGENT_BUILTIN_A) == 0 || strcmp(name, AGENT_BUILTIN_B) == 0;
}

static bool
valid_tool_name(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '-' || s[i] == '.'))
            return false;
    return true;
}

/* Tools of a request or an agent: function tools become client tools; code_execution is the
 * sandbox's own bash; what paddock cannot run is refused rather than silently ignored. */
static int
check_mcp(json_t *t, const char *f, struct err **errp)
{
    const char *url = json_string_value(json_object_get(t, "url"));
    const char *name = json_string_value(json_object_get(t, "name"));
    json_t *h = json_object_get(t, "headers"), *v;
    const char *k;

    if (url == NULL || (strncmp(url, "https://", 8) != 0 && strncmp(url, "http://", 7) != 0) ||
        strlen(url) > 2048)
        return err_field(errp, f, "an mcp_server tool needs an http(s) url");
    if (json_object_get(t, "name") != NULL && (name == NULL || !valid_tool_name(name)))
        return err_field(errp, f, "name must be letters, digits, _ - . (at most 64)");
    if (h != NULL && !json_is_null(h) && !json_is_object(h))
        return err_field(errp, f, "headers must be an object of strings");
    json_object_foreach(h, k, v)
        if (!json_is_string(v) || strpbrk(k, " :\r\n") != NULL ||
            strpbrk(json_string_value(v), "\r\n") != NULL)
            return err_field(errp, f, "headers must be an object of strings (no line breaks)");
    v = json_object_get(t, "allowed_tools");
    if (v != NULL && !json_is_null(v) && !json_is_array(v))
        return err_field(errp, f, "allowed_tools must be a list of {mode, tools}");
    return 0;
}

static int
check_tools(json_t *tools, const char *field, json_t *client, json_t *mcp, struct err **errp)
{
    size_t i;
    json_t *t;

    if (tools == NULL || json_is_null(tools))
        return 0;
    if (!json_is_array(tools))
        return err_field(errp, field, "must be a list");
    json_array_foreach(tools, i, t) {
        const char *type = json_string_value(json_object_get(t, "type"));
        char f[64];
        snprintf(f, sizeof(f), "%s[%zu]", field, i);
        if (!json_is_object(t) || type == NULL)
            return err_field(errp, f, "must be an object with a type");
        if (strcmp(type, "function") == 0) {
            const char *name = json_string_value(json_object_get(t, "name"));
            json_t *params = json_object_get(t, "parameters");
            if (name == NULL || !valid_tool_name(name))
                return err_field(errp, f,
                                 "a function tool needs a name of letters, digits, _ - . "
                                 "(at most 64)");
            if (strcmp(name, "bash") == 0 || strcmp(name, "file_system") == 0)
                return err_field(errp, f, "%s is the name of a built-in tool", name);
            if (params != NULL && !json_is_object(params))
                return err_field(errp, f, "parameters must be a JSON Schema object");
            json_array_append_new(
                client, json_pack("{s:s, s:s, s:o}", "name", name, "description",
                                  json_is_string(json_object_get(t, "description"))
                                      ? json_string_value(json_object_get(t, "description"))
                                      : "",
                                  "parameters",
                                  params != NULL ? json_incref(params)
                                                 : json_pack("{s:s}", "type", "object")));
        } else if (strcmp(type, "code_execution") == 0) {
            /* the built-in bash tool */
        } else if (strcmp(type, "mcp_server") == 0) {
            if (check_mcp(t, f, errp) < 0)
                return -1;
            json_array_append(mcp, t);
        } else {
            return err_field(errp, f,
                             "tool type '%s' is not supported by this server (function, "
                             "code_execution and mcp_server are)",
                             type);
        }
    }
    return 0;
}

/* Merges b over a (both objects): b's members win. Owned. */
static json_t *
merged(json_t *a, json_t *b)
{
    json_t *m = json_is_object(a) ? json_deep_copy(a) : json_object();

    if (json_is_object(b))
        json_object_update(m, b);
    return m;
}

/* The definition of a named agent, its base_agent chain folded in. Owned. */
static int
load_def(struct store *s, const char *project, const char *name, int depth, json_t **out,
         struct err **errp)
{
    struct store_agent a;
    json_t *body, *base, *def;

    if (is_builtin(name)) {
        *out = json_object();
        return 0;
    }
    if (depth >= AGENT_BASE_DEPTH)
        return err_set(errp, ERR_INVALID, 0, "agent %s: base_agent chain longer than %d", name,
                       AGENT_BASE_DEPTH);
    if (store_agent_get(s, project, name, &a, errp) < 0)
        return -1;
    body = json_loads(a.body, 0, NULL);
    store_agent_clear(&a);
    if (body == NULL)
        return err_set(errp, ERR_INTERNAL, 0, "agent %s: stored body is not JSON", name);
    base = json_object_get(body, "base_agent");
    if (json_is_string(base)) {
        json_t *parent;
        if (load_def(s, project, json_string_value(base), depth + 1, &parent, errp) < 0) {
            json_decref(body);
            return err_wrap(errp, "agent %s: base_agent", name);
        }
        def = merged(parent, body);
        /* agent_config merges member by member; tools add up */
        json_object_set_new(
            def, "agent_config",
            merged(json_object_get(parent, "agent_config"), json_object_get(body, "agent_config")));
        if (json_is_array(json_object_get(parent, "tools"))) {
            json_t *tools = json_deep_copy(json_object_get(parent, "tools"));
            if (json_is_array(json_object_get(body, "tools")))
                json_array_extend(tools, json_object_get(body, "tools"));
            json_object_set_new(def, "tools", tools);
        }
        json_decref(parent);
        json_decref(body);
    } else {
        def = body;
    }
    *out = def;
    return 0;
}

static int64_t
int_field(json_t *v, const char *field, int64_t dflt, int64_t max, struct err **errp, bool *bad_out)
{
    int64_t n;

    *bad_out = false;
    if (v == NULL || json_is_null(v))
        return dflt;
    if (json_is_integer(v)) {
        n = json_integer_value(v);
    } else if (json_is_string(v)) { /* int64 travels as a string in the spec */
        char *end;
        errno = 0;
        n = strtoll(json_string_value(v), &end, 10);
        if (errno != 0 || *end != '\0' || end == json_string_value(v)) {
            *bad_out = true;
            err_field(errp, field, "must be an integer");
            return 0;
        }
    } else {
        *bad_out = true;
        err_field(errp, field, "must be an integer");
        return 0;
    }
    if (n <= 0 || n > max) {
        *bad_out = true;
        err_field(errp, field, "must be between 1 and %lld", (long long)max);
        return 0;
    }
    return n;
}

void
agent__plan_free(struct agent_plan *p)
{
    json_decref(p->def);
    json_decref(p->client_tools);
    json_decref(p->mcp);
    memset(p, 0, sizeof(*p));
}

int
agent__plan(struct store *s, const char *project, const char *default_model, json_t *req,
            struct agent_plan *p, struct err **errp)
{
    const char *agent = json_string_value(json_object_get(req, "agent"));
    const char *model = json_string_value(json_object_get(req, "model"));
    json_t *cfg, *v;
    bool b;

    memset(p, 0, sizeof(*p));
    p->client_tools = json_array();
    p->mcp = json_array();
    if (agent != NULL) {
        if (load_def(s, project, agent, 0, &p->def, errp) < 0)
            goto fail;
        p->wants_env = true;
    } else {
        p->def = json_object();
    }
    /* The request's own settings go over the agent's. */
    cfg = merged(json_object_get(p->def, "agent_config"), json_object_get(req, "agent_config"));
    json_object_set_new(p->def, "agent_config", cfg);
    if (json_is_string(json_object_get(req, "system_instruction")))
        json_object_set(p->def, "system_instruction", json_object_get(req, "system_instruction"));
    p->system_instruction = json_object_get(p->def, "system_instruction");
    if (p->system_instruction != NULL && !json_is_string(p->system_instruction) &&
        !json_is_null(p->system_instruction)) {
        err_field(errp, "system_instruction", "must be a string");
        goto fail;
    }
    if (check_tools(json_object_get(p->def, "tools"), "agent.tools", p->client_tools, p->mcp,
                    errp) < 0 ||
        check_tools(json_object_get(req, "tools"), "tools", p->client_tools, p->mcp, errp) < 0)
        goto fail;
    if (model == NULL)
        model = json_string_value(json_object_get(cfg, "model"));
    if (model == NULL)
        model = default_model;
    if (model == NULL) {
        err_set(errp, ERR_INVALID, 0,
                "no model: this server has no default model (start it with --model or "
                "PADDOCK_MODEL, e.g. gemini-2.5-flash, openai:NAME or anthropic:NAME) and the "
                "request names none (agent_config.model)");
        goto fail;
    }
    if (model_parse(model, &p->model, errp) < 0)
        goto fail;
    p->max_steps = int_field(json_object_get(cfg, "max_steps"), "agent_config.max_steps",
                             AGENT_DEFAULT_MAX_STEPS, 100000, errp, &b);
    if (b)
        goto fail;
    p->timeout_ms = 1000 * int_field(json_object_get(cfg, "timeout_s"), "agent_config.timeout_s",
                                     AGENT_DEFAULT_TIMEOUT_S, 7 * 24 * 3600, errp, &b);
    if (b)
        goto fail;
    p->max_tokens = int_field(json_object_get(cfg, "max_total_tokens"),
                              "agent_config.max_total_tokens", 0, INT64_MAX / 2, errp, &b);
    if (b)
        goto fail;
    v = json_object_get(cfg, "max_cost_usd");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_number(v) || json_number_value(v) <= 0) {
            err_field(errp, "agent_config.max_cost_usd", "must be a positive number");
            goto fail;
        }
        p->max_cost_usd = json_number_value(v);
    }
    v = json_object_get(cfg, "allowed_tools");
    if (v != NULL && !json_is_null(v)) {
        size_t i;
        json_t *x;
        if (!json_is_array(v)) {
            err_field(errp, "agent_config.allowed_tools", "must be a list of tool names");
            goto fail;
        }
        json_array_foreach(v, i, x)
            if (!json_is_string(x)) {
                err_field(errp, "agent_config.allowed_tools", "must be a list of tool names");
                goto fail;
            }
        p->allowed_tools = v;
    }
    p->env_spec = json_object_get(req, "environment");
    if (p->env_spec == NULL || json_is_null(p->env_spec))
        p->env_spec = json_object_get(p->def, "base_environment");
    if (json_is_null(p->env_spec))
        p->env_spec = NULL;
    return 0;
fail:
    agent__plan_free(p);
    return -1;
}

static const char *const content_types[] = { "text", NULL };

static int
check_content(json_t *c, const char *field, struct err **errp)
{
    const char *type = json_string_value(json_object_get(c, "type"));

    if (!json_is_object(c) || type == NULL)
        return err_field(errp, field, "must be a Content object with a type");
    for (size_t i = 0; content_types[i] != NULL; i++)
        if (strcmp(type, content_types[i]) == 0) {
            if (!json_is_string(json_object_get(c, "text")))
                return err_field(errp, field, "text content needs a text string");
            return 0;
        }
    return err_field(errp, field, "content type '%s' is not supported by this server (text is)",
                     type);
}

static int
check_input(json_t *input, bool *has_results, struct err **errp)
{
    size_t i;
    json_t *x;

    *has_results = false;
    if (input == NULL || json_is_null(input))
        return err_field(errp, "input", "is required");
    if (json_is_string(input))
        return 0;
    if (json_is_object(input))
        return check_content(input, "input", errp);
    if (!json_is_array(input) || json_array_size(input) == 0)
        return err_field(errp, "input",
                         "must be a string, a Content, or a non-empty list of Content "
                         "or steps");
    json_array_foreach(input, i, x) {
        const char *type = json_string_value(json_object_get(x, "type"));
        char f[48];
        snprintf(f, sizeof(f), "input[%zu]", i);
        if (type != NULL && strcmp(type, "user_input") == 0) {
            size_t k;
            json_t *c;
            if (!json_is_array(json_object_get(x, "content")))
                return err_field(errp, f, "user_input needs a content list");
            json_array_foreach(json_object_get(x, "content"), k, c)
                if (check_content(c, f, errp) < 0)
                    return -1;
        } else if (type != NULL && strcmp(type, "function_result") == 0) {
            json_t *res = json_object_get(x, "result");
            if (!json_is_string(json_object_get(x, "call_id")))
                return err_field(errp, f, "function_result needs a call_id");
            if (res == NULL)
                return err_field(errp, f, "function_result needs a result");
            *has_results = true;
        } else if (check_content(x, f, errp) < 0) {
            return -1;
        }
    }
    return 0;
}

/* The function_result steps of input answer exactly the calls waiting in history. */
static int
check_results(json_t *input, const char *history, struct err **errp)
{
    json_t *h = history != NULL ? json_loads(history, 0, NULL) : NULL;
    json_t *pending = agent__pending_calls(json_is_array(h) ? h : NULL);
    size_t i, k;
    json_t *x, *c;
    int rc = 0;

    json_array_foreach(input, i, x) {
        const char *id = json_string_value(json_object_get(x, "call_id"));
        bool found = false;
        if (strcmp(json_string_value(json_object_get(x, "type")), "function_result") != 0)
            continue;
        json_array_foreach(pending, k, c)
            if (strcmp(json_string_value(json_object_get(c, "id")), id) == 0)
                found = true;
        if (!found) {
            char f[48];
            cleanup_free char *eid = log_escape(id, strlen(id), 64);
            snprintf(f, sizeof(f), "input[%zu].call_id", i);
            rc = err_field(errp, f, "'%s' is not a call waiting for a result", eid);
            goto out;
        }
    }
    json_array_foreach(pending, k, c) {
        bool answered = false;
        json_array_foreach(input, i, x)
            if (json_equal(json_object_get(x, "call_id"), json_object_get(c, "id")))
                answered = true;
        if (!answered) {
            rc = err_field(errp, "input", "no function_result for call %s (%s)",
                           json_string_value(json_object_get(c, "id")),
                           json_string_value(json_object_get(c, "name")));
            goto out;
        }
    }
out:
    json_decref(pending);
    json_decref(h);
    return rc;
}

/* Everything about a create body that can be known before it runs. */
static int
check_create(const struct agent_options *o, struct env_ctx *ctx, struct store *s,
             const char *project, json_t *body, struct store_interaction *it, struct err **errp)
{
    json_t *agent = json_object_get(body, "agent"), *model = json_object_get(body, "model");
    json_t *prev = json_object_get(body, "previous_interaction_id");
    json_t *st = json_object_get(body, "store"), *bg = json_object_get(body, "background");
    json_t *env = json_object_get(body, "environment");
    struct agent_plan plan;
    bool has_results;

    if ((agent == NULL) == (model == NULL))
        return err_field(errp, agent == NULL ? "model" : "agent",
                         "exactly one of model and agent is required");
    if (agent != NULL && !json_is_string(agent))
        return err_field(errp, "agent", "must be a string");
    if (model != NULL && !json_is_string(model))
        return err_field(errp, "model", "must be a string");
    if (st != NULL && !json_is_boolean(st))
        return err_field(errp, "store", "must be a boolean");
    if (bg != NULL && !json_is_boolean(bg))
        return err_field(errp, "background", "must be a boolean");
    if (json_is_string(json_object_get(body, "continuation_token")))
        return err_field(errp, "continuation_token",
                         "this server never issues continuation tokens");
    if (json_is_false(st) && json_is_true(bg))
        return err_field(errp, "store",
                         "store: false cannot be combined with background: true (a "
                         "background interaction is read back later, so it must be "
                         "stored)");
    if (json_is_false(st) && prev != NULL && !json_is_null(prev))
        return err_field(errp, "store",
                         "store: false cannot be combined with "
                         "previous_interaction_id (the conversation it continues "
                         "lives in the store)");
    if (check_input(json_object_get(body, "input"), &has_results, errp) < 0)
        return -1;
    it->stored = !json_is_false(st);
    if (prev != NULL && !json_is_null(prev)) {
        struct store_interaction p = { 0 };
        const char *pid = json_string_value(prev);
        if (pid == NULL)
            return err_field(errp, "previous_interaction_id", "must be a string");
        if (store_interaction_get(s, pid, &p, NULL) < 0 || strcmp(p.project, project) != 0) {
            cleanup_free char *epid = log_escape(pid, strlen(pid), 64);
            store_interaction_clear(&p);
            return err_set(errp, ERR_NOT_FOUND, 0, "previous_interaction_id: no interaction '%s'",
                           epid);
        }
        if (!agent_status_final(p.status)) {
            store_interaction_clear(&p);
            return err_set(errp, ERR_CONFLICT, 0,
                           "previous_interaction_id: interaction %s is still %s", pid, p.status);
        }
        if (has_results && strcmp(p.status, "requires_action") == 0 &&
            check_results(json_object_get(body, "input"), p.history, errp) < 0) {
            store_interaction_clear(&p);
            return -1;
        }
        if (has_results && strcmp(p.status, "requires_action") != 0) {
            store_interaction_clear(&p);
            return err_field(errp, "input",
                             "function_result steps answer an interaction that "
                             "requires action; %s is %s",
                             pid, p.status);
        }
        snprintf(it->previous_id, sizeof(it->previous_id), "%s", pid);
        /* The conversation goes on in the same environment unless another is named. */
        if (env == NULL || json_is_null(env))
            snprintf(it->env_id, sizeof(it->env_id), "%s", p.env_id);
        store_interaction_clear(&p);
    } else if (has_results) {
        return err_field(errp, "input", "function_result steps need previous_interaction_id");
    }
    if (agent__plan(s, project, o->default_model, body, &plan, errp) < 0)
        return -1;
    if (plan.env_spec != NULL && it->env_id[0] == '\0' &&
        o->resolve_env(o->resolve_arg, ctx, project, plan.env_spec, true, NULL, errp) < 0) {
        agent__plan_free(&plan);
        return err_wrap(errp, "environment");
    }
    if (json_is_string(plan.env_spec) && strcmp(json_string_value(plan.env_spec), "remote") != 0 &&
        it->env_id[0] == '\0')
        snprintf(it->env_id, sizeof(it->env_id), "%s", json_string_value(plan.env_spec));
    agent__plan_free(&plan);
    return 0;
}

/* ------------------------------------------------------------------ views */

json_t *
agent__time(int64_t ms)
{
    char t[40];

    util_format_time(ms, t, sizeof(t));
    return json_string(t);
}

json_t *
agent__brief(const struct store_interaction *it, json_t *req)
{
    json_t *j = json_pack("{s:s, s:s, s:s, s:o, s:o}", "id", it->id, "object", "interaction",
                          "status", it->status, "created", agent__time(it->created_ms), "updated",
                          agent__time(it->updated_ms));
    json_t *u = it->usage != NULL ? json_loads(it->usage, 0, NULL) : NULL;

    if (json_object_get(req, "model") != NULL)
        json_object_set(j, "model", json_object_get(req, "model"));
    if (json_object_get(req, "agent") != NULL)
        json_object_set(j, "agent", json_object_get(req, "agent"));
    if (it->env_id[0] != '\0')
        json_object_set_new(j, "environment_id", json_string(it->env_id));
    if (u != NULL)
        json_object_set_new(j, "usage", u);
    if (it->errors != NULL) {
        json_t *e = json_loads(it->errors, 0, NULL);
        if (e != NULL)
            json_object_set_new(j, "errors", e);
    }
    return j;
}

/* Request members echoed on the Interaction. */
static const char *const echoed[] = { "model",
                                      "agent",
                                      "agent_config",
                                      "environment",
                                      "previous_interaction_id",
                                      "system_instruction",
                                      "tools",
                                      "generation_config",
                                      "response_format",
                                      "response_mime_type",
                                      "response_modalities",
                                      "safety_settings",
                                      "service_tier",
                                      "labels",
                                      "webhook_config",
                                      "background",
                                      "store",
                                      NULL };

json_t *
agent_tools_shown(json_t *tools)
{
    json_t *out = json_deep_copy(tools), *t, *h, *v;
    const char *k;
    size_t i;

    if (!json_is_array(out))
        return out;
    json_array_foreach(out, i, t) {
        const char *type = json_string_value(json_object_get(t, "type"));
        h = json_object_get(t, "headers");
        if (type == NULL || strcmp(type, "mcp_server") != 0 || !json_is_object(h))
            continue;
        json_object_foreach(h, k, v)
            json_object_set_new(h, k, json_string("[redacted]"));
    }
    return out;
}

int
agent_interaction_json(struct store *s, const char *project, const char *id, bool include_input,
                       json_t **out, struct err **errp)
{
    struct store_interaction it = { 0 };
    json_t *req, *j, *steps;
    char **v = NULL;
    size_t n = 0;

    if (store_interaction_get(s, id, &it, errp) < 0)
        return -1;
    if (strcmp(it.project, project) != 0) {
        store_interaction_clear(&it);
        return err_set(errp, ERR_NOT_FOUND, 0, "interaction %s not found", id);
    }
    if (store_steps(s, id, &v, &n, errp) < 0) {
        store_interaction_clear(&it);
        return -1;
    }
    req = json_loads(it.request, 0, NULL);
    j = agent__brief(&it, req);
    for (size_t i = 0; echoed[i] != NULL; i++) {
        json_t *x = json_object_get(req, echoed[i]);
        if (x == NULL || json_object_get(j, echoed[i]) != NULL)
            continue;
        if (strcmp(echoed[i], "tools") == 0)
            json_object_set_new(j, echoed[i], agent_tools_shown(x));
        else
            json_object_set(j, echoed[i], x);
    }
    if (include_input && json_object_get(req, "input") != NULL)
        json_object_set(j, "input", json_object_get(req, "input"));
    steps = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *st = json_loads(v[i], 0, NULL);
        if (st != NULL)
            json_array_append_new(steps, st);
        free(v[i]);
    }
    free(v);
    json_object_set_new(j, "steps", steps);
    json_decref(req);
    store_interaction_clear(&it);
    *out = j;
    return 0;
}

/* ---------------------------------------------------------------- service */

struct keycount {
    char key[160];
    unsigned n;
    struct keycount *next;
};

struct job {
    char id[40];
    struct keycount *count; /* its key's count of queued + running, released when it ends */
    struct job *next;
};

/*
 * What retention deletes goes a batch per janitor tick (a second) until none is left past it:
 * every run and the proxy's audit writer wait while a delete holds the database, so a backlog
 * (the first purge after an upgrade, or a week of busy agents) is taken a small bite at a time,
 * never in one long run of deletes. An interaction takes its steps and events with it (up to
 * tens of thousands of rows), so its batches are small.
 */
#define INTERACTION_PURGE_BATCH 10
#define EGRESS_PURGE_BATCH      1000

struct purge {
    const char *what;
    int (*fn)(struct store *, int64_t, size_t, size_t *, struct err **);
    size_t batch;
    bool behind; /* some past retention remain to be deleted */
    size_t done; /* deleted so far in this round */
};

struct agent_service {
    struct agent_options o;
    pthread_mutex_t mu;
    pthread_cond_t work; /* a job was queued, or stopping */
    pthread_cond_t news; /* an event was recorded */
    uint64_t gen;
    struct job *head, *tail;
    struct agent_run *running;
    struct keycount *counts;
    pthread_t *threads;
    unsigned nthreads;
    bool stopping;
    int64_t last_purge_ms; /* monotonic; the janitor thread (and recovery) */
    struct purge purges[2]; /* janitor: interactions, egress records */
};

void
agent__wake(struct agent_service *svc)
{
    if (svc == NULL)
        return;
    pthread_mutex_lock(&svc->mu);
    svc->gen++;
    pthread_cond_broadcast(&svc->news);
    pthread_mutex_unlock(&svc->mu);
}

void
agent__tx(struct agent_run *r)
{
    struct err *e = NULL;

    if (r->in_tx)
        return;
    if (store_begin(r->st, &e) < 0) {
        /* Writes still happen, one commit each. */
        log_warnx("interaction %s: %s", r->it.id, e->msg);
        err_free(e);
        return;
    }
    r->in_tx = true;
}

void
agent__flush(struct agent_run *r)
{
    struct err *e = NULL;

    if (!r->in_tx)
        return;
    r->in_tx = false;
    if (store_commit(r->st, &e) < 0) {
        log_warnx("interaction %s: %s", r->it.id, e->msg);
        err_free(e);
    }
    agent__wake(r->svc);
}

int
agent__emit(struct agent_run *r, json_t *ev, struct err **errp)
{
    cleanup_free char *text = NULL;
    int rc;

    if (ev == NULL)
        return err_set(errp, ERR_INTERNAL, 0, "event could not be built");
    json_object_set_new(ev, "event_id", json_sprintf("%lld", (long long)r->next_seq));
    text = json_dumps(ev, JSON_COMPACT);
    rc = store_event_insert(r->st, r->it.id, r->next_seq, text, errp);
    if (rc == 0)
        r->next_seq++;
    if (r->o->observer != NULL)
        r->o->observer(r->o->observer_arg, r->it.id, ev);
    json_decref(ev);
    agent__wake(r->svc);
    return rc;
}

struct fin {
    struct agent_run *r;
    const char *text;
};

static int
fin_tx(struct store *s, void *arg, struct err **errp)
{
    struct fin *f = arg;

    if (store_interaction_update(s, &f->r->it, errp) < 0)
        return -1;
    return store_event_insert(s, f->r->it.id, f->r->next_seq, f->text, errp);
}

int
agent__finish(struct agent_run *r, bool last, struct err **errp)
{
    json_t *ev = json_pack("{s:s, s:o}", "event_type", "interaction.completed", "interaction",
                           agent__brief(&r->it, r->req));
    cleanup_free char *text = NULL;
    struct fin f = { r, NULL };
    int rc;

    /* The final status and its event in one transaction: a reader that sees the status
     * final finds every event stored. */
    agent__flush(r);
    json_object_set_new(ev, "event_id", json_sprintf("%lld", (long long)r->next_seq));
    text = json_dumps(ev, JSON_COMPACT);
    f.text = text;
    rc = store_tx(r->st, fin_tx, &f, errp);
    if (rc == 0)
        r->next_seq++;
    if (r->o->observer != NULL && (rc == 0 || last))
        r->o->observer(r->o->observer_arg, r->it.id, ev);
    json_decref(ev);
    if (!r->in_tx)
        agent__wake(r->svc); /* else at the flush, when readers can see it */
    return rc;
}

void
agent_wait(struct agent_service *svc, const char *id, int64_t after_seq, int timeout_ms)
{
    struct timespec ts = util_deadline(timeout_ms);
    uint64_t gen;

    (void)id;
    (void)after_seq;
    pthread_mutex_lock(&svc->mu);
    gen = svc->gen;
    while (gen == svc->gen && !svc->stopping)
        if (pthread_cond_clockwait(&svc->news, &svc->mu, CLOCK_MONOTONIC, &ts) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&svc->mu);
}

static struct keycount *
count_of(struct agent_service *svc, const char *project, const char *key)
{
    char k[160];
    struct keycount *c;

    snprintf(k, sizeof(k), "%s/%s", project, key);
    for (c = svc->counts; c != NULL; c = c->next)
        if (strcmp(c->key, k) == 0)
            return c;
    c = xcalloc(1, sizeof(*c));
    snprintf(c->key, sizeof(c->key), "%s", k);
    c->next = svc->counts;
    svc->counts = c;
    return c;
}

static void
enqueue_locked(struct agent_service *svc, const char *id, struct keycount *count)
{
    struct job *j = xcalloc(1, sizeof(*j));

    snprintf(j->id, sizeof(j->id), "%s", id);
    j->count = count;
    if (svc->tail != NULL)
        svc->tail->next = j;
    else
        svc->head = j;
    svc->tail = j;
    pthread_cond_signal(&svc->work);
}

/* Loads a stored interaction into a run (request parsed, event numbering continued). */
static int
run_open(struct agent_run *r, const char *id, struct err **errp)
{
    int64_t last = 0;

    if (store_interaction_get(r->st, id, &r->it, errp) < 0)
        return -1;
    r->req = json_loads(r->it.request, 0, NULL);
    if (r->req == NULL) {
        store_interaction_clear(&r->it);
        return err_set(errp, ERR_INTERNAL, 0, "interaction %s: stored request is not JSON", id);
    }
    if (store_event_last(r->st, id, &last, errp) < 0) {
        json_decref(r->req);
        store_interaction_clear(&r->it);
        return -1;
    }
    r->next_seq = last + 1;
    {
        char **v = NULL;
        size_t n = 0;
        if (store_steps(r->st, id, &v, &n, NULL) == 0) {
            for (size_t i = 0; i < n; i++)
                free(v[i]);
            free(v);
        }
        r->next_step = (int64_t)n;
    }
    return 0;
}

static void
run_close(struct agent_run *r)
{
    json_decref(r->req);
    store_interaction_clear(&r->it);
    if (r->vars != NULL) {
        for (char **v = r->vars; *v != NULL; v++)
            free(*v);
        free(r->vars);
        r->vars = NULL;
    }
}

/* store: false interactions go once their answer is out; the API deletes them then. */

static void *
worker(void *arg)
{
    struct agent_service *svc = arg;
    struct env_ctx *ctx = NULL;
    struct err *e = NULL;

    if (env_ctx_open(svc->o.data_dir, svc->o.storage_size, &ctx, &e) < 0) {
        log_warnx("agent worker: %s", e->msg);
        err_free(e);
        return NULL;
    }
    for (;;) {
        struct job *j;
        struct agent_run r;

        pthread_mutex_lock(&svc->mu);
        while (svc->head == NULL && !svc->stopping)
            pthread_cond_wait(&svc->work, &svc->mu);
        if (svc->stopping) {
            pthread_mutex_unlock(&svc->mu);
            break;
        }
        j = svc->head;
        svc->head = j->next;
        if (svc->head == NULL)
            svc->tail = NULL;
        memset(&r, 0, sizeof(r));
        r.svc = svc;
        r.o = &svc->o;
        r.ctx = ctx;
        r.st = env_store(ctx);
        snprintf(r.id, sizeof(r.id), "%s", j->id); /* cancel finds it from now on */
        r.next = svc->running;
        svc->running = &r;
        pthread_mutex_unlock(&svc->mu);

        if (run_open(&r, j->id, &e) < 0) {
            log_warnx("interaction %s: %s", j->id, e->msg);
            err_free(e);
            e = NULL;
        } else {
            if (strcmp(r.it.status, "queued") == 0)
                agent__run(&r);
            run_close(&r);
        }
        pthread_mutex_lock(&svc->mu);
        if (j->count != NULL)
            j->count->n--;
        pthread_mutex_unlock(&svc->mu);
        pthread_mutex_lock(&svc->mu);
        for (struct agent_run **p = &svc->running; *p != NULL; p = &(*p)->next)
            if (*p == &r) {
                *p = r.next;
                break;
            }
        svc->gen++;
        pthread_cond_broadcast(&svc->news);
        pthread_mutex_unlock(&svc->mu);
        free(j);
    }
    env_ctx_close(ctx);
    return NULL;
}

/* Ends an interaction that never ran or whose run died with the process before. */
static int
end_unrun(struct store *s, const char *id, const char *status, const char *why, struct err **errp)
{
    struct agent_run r;
    struct agent_options o = { 0 };
    json_t *errs;

    memset(&r, 0, sizeof(r));
    r.o = &o;
    r.st = s;
    if (run_open(&r, id, errp) < 0)
        return -1;
    snprintf(r.it.status, sizeof(r.it.status), "%s", status);
    r.it.updated_ms = util_now_ms();
    errs = r.it.errors != NULL ? json_loads(r.it.errors, 0, NULL) : NULL;
    if (!json_is_array(errs)) {
        json_decref(errs);
        errs = json_array();
    }
    if (why != NULL) {
        json_array_append_new(
            errs, json_pack("{s:s, s:s}", "code", "paddock/interrupted", "message", why));
        free(r.it.errors);
        r.it.errors = json_dumps(errs, JSON_COMPACT);
    }
    json_decref(errs);
    if (agent__finish(&r, true, errp) < 0) {
        run_close(&r);
        return -1;
    }
    run_close(&r);
    return 0;
}

/* Whether another process (a paddock run) is running it now, by the runner it recorded. */
static bool
runner_alive(const struct store_interaction *it)
{
    int pid = 0;
    unsigned long long start = 0;

    return sscanf(it->runner, "%d:%llu", &pid, &start) == 2 && pid != (int)getpid() && start != 0 &&
           util_proc_start_time(pid) == start;
}

static int
recover(struct agent_service *svc, struct store *s, struct err **errp)
{
    char(*ids)[40] = NULL;
    size_t n = 0;

    if (store_interaction_ids(s, "in_progress", &ids, &n, errp) < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        struct store_interaction it = { 0 };
        bool alive = false;
        if (store_interaction_get(s, ids[i], &it, NULL) == 0) {
            alive = runner_alive(&it);
            store_interaction_clear(&it);
        }
        if (!alive) /* else another process (paddock run) is running it now */
            end_unrun(s, ids[i], "failed",
                      "the process running this interaction stopped; its steps so far are kept",
                      NULL);
    }
    free(ids);
    if (store_interaction_ids(s, "queued", &ids, &n, errp) < 0)
        return -1;
    pthread_mutex_lock(&svc->mu);
    for (size_t i = 0; i < n; i++) {
        struct store_interaction it = { 0 };
        struct keycount *c = NULL;
        if (store_interaction_get(s, ids[i], &it, NULL) == 0) {
            c = count_of(svc, it.project, it.key_name);
            c->n++;
            store_interaction_clear(&it);
        }
        enqueue_locked(svc, ids[i], c);
    }
    pthread_mutex_unlock(&svc->mu);
    free(ids);
    agent_housekeep(svc, s);
    return 0;
}

/* Takes one bite of what p deletes; the round ends when a bite comes back short. */
static void
purge_bite(struct purge *p, struct store *s, int64_t before_ms)
{
    size_t purged = 0;
    struct err *e = NULL;

    if (!p->behind)
        return;
    if (p->fn(s, before_ms, p->batch, &purged, &e) < 0) {
        log_warnx("janitor: purge %s: %s", p->what, e->msg); /* again in an hour */
        err_free(e);
        p->behind = false;
        return;
    }
    p->done += purged;
    if (purged < p->batch) {
        if (p->done > 0)
            log_info("purged %zu %s past retention", p->done, p->what);
        p->done = 0;
        p->behind = false;
    }
}

void
agent_housekeep(struct agent_service *svc, struct store *s)
{
    int64_t keep =
        svc->o.retention_ms > 0 ? svc->o.retention_ms : (int64_t)AGENT_RETENTION_DAYS * 86400000LL;
    int64_t now = util_now_ms(), mono = util_mono_ms();

    /* Hourly by the monotonic clock; what is past retention, by the wall clock (stored times). */
    if (svc->last_purge_ms == 0 || mono - svc->last_purge_ms >= 3600 * 1000) {
        svc->last_purge_ms = mono;
        for (size_t i = 0; i < sizeof(svc->purges) / sizeof(svc->purges[0]); i++)
            svc->purges[i].behind = true;
    }
    for (size_t i = 0; i < sizeof(svc->purges) / sizeof(svc->purges[0]); i++)
        purge_bite(&svc->purges[i], s, now - keep);
}

int
agent_service_start(const struct agent_options *o, struct agent_service **out, struct err **errp)
{
    struct agent_service *svc = xcalloc(1, sizeof(*svc));
    struct env_ctx *ctx = NULL;

    svc->o = *o;
    svc->purges[0] = (struct purge){ "interactions", store_interaction_purge,
                                     INTERACTION_PURGE_BATCH, false, 0 };
    svc->purges[1] =
        (struct purge){ "egress records", store_egress_purge, EGRESS_PURGE_BATCH, false, 0 };
    if (svc->o.workers == 0)
        svc->o.workers = 8;
    if (svc->o.per_key_max == 0)
        svc->o.per_key_max = 64;
    pthread_mutex_init(&svc->mu, NULL);
    pthread_cond_init(&svc->work, NULL);
    pthread_cond_init(&svc->news, NULL);
    if (env_ctx_open(o->data_dir, o->storage_size, &ctx, errp) < 0)
        goto fail;
    if (recover(svc, env_store(ctx), errp) < 0) {
        env_ctx_close(ctx);
        goto fail;
    }
    env_ctx_close(ctx);
    svc->threads = xcalloc(svc->o.workers, sizeof(*svc->threads));
    for (unsigned i = 0; i < svc->o.workers; i++) {
        if (pthread_create(&svc->threads[i], NULL, worker, svc) != 0)
            break;
        svc->nthreads++;
    }
    if (svc->nthreads == 0) {
        err_set(errp, ERR_INTERNAL, errno, "start agent workers");
        goto fail;
    }
    *out = svc;
    return 0;
fail:
    free(svc->threads);
    free(svc);
    return -1;
}

void
agent_service_stop(struct agent_service *svc)
{
    if (svc == NULL)
        return;
    pthread_mutex_lock(&svc->mu);
    svc->stopping = true;
    for (struct agent_run *r = svc->running; r != NULL; r = r->next)
        r->cancel = 1;
    pthread_cond_broadcast(&svc->work);
    pthread_cond_broadcast(&svc->news);
    pthread_mutex_unlock(&svc->mu);
    for (unsigned i = 0; i < svc->nthreads; i++)
        pthread_join(svc->threads[i], NULL);
    svc->nthreads = 0;
}

bool
agent_stopping(struct agent_service *svc)
{
    bool s;

    pthread_mutex_lock(&svc->mu);
    s = svc->stopping;
    pthread_mutex_unlock(&svc->mu);
    return s;
}

void
agent_service_free(struct agent_service *svc)
{
    struct job *j;

    if (svc == NULL)
        return;
    agent_service_stop(svc);
    /* Queued jobs stay queued in the store and run after the next start. */
    while ((j = svc->head) != NULL) {
        svc->head = j->next;
        free(j);
    }
    while (svc->counts != NULL) {
        struct keycount *c = svc->counts;
        svc->counts = c->next;
        free(c);
    }
    free(svc->threads);
    pthread_mutex_destroy(&svc->mu);
    pthread_cond_destroy(&svc->work);
    pthread_cond_destroy(&svc->news);
    free(svc);
}

static int
store_new(const struct agent_options *o, struct env_ctx *ctx, struct store *s,
          const struct agent_caller *who, json_t *body, const char *idem_key, char *id_out,
          bool *existing, struct err **errp)
{
    struct store_interaction it = { 0 };
    struct agent_run r;
    json_t *req;
    int rc;

    memset(&it, 0, sizeof(it));
    *existing = false;
    if (check_create(o, ctx, s, who->project, body, &it, errp) < 0)
        return -1;
    if (util_id_new("int_", it.id, sizeof(it.id), errp) < 0)
        return -1;
    snprintf(it.project, sizeof(it.project), "%s", who->project);
    snprintf(it.key_name, sizeof(it.key_name), "%s", who->key_name);
    snprintf(it.status, sizeof(it.status), "queued");
    req = json_deep_copy(body);
    json_object_del(req, "stream");
    it.request = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    it.created_ms = it.updated_ms = util_now_ms();
    rc = store_interaction_insert(s, &it, idem_key, it.created_ms - AGENT_IDEMPOTENCY_MS, id_out,
                                  errp);
    free(it.request);
    if (rc < 0) {
        if ((*errp)->code == ERR_CONFLICT && idem_key != NULL && id_out[0] != '\0') {
            err_free(*errp);
            *errp = NULL;
            *existing = true;
            return 0;
        }
        return -1;
    }
    snprintf(id_out, 40, "%s", it.id);
    /* The first event: the interaction exists. */
    memset(&r, 0, sizeof(r));
    r.o = o;
    r.st = s;
    if (run_open(&r, it.id, errp) < 0)
        return -1;
    agent__emit(&r,
                json_pack("{s:s, s:o}", "event_type", "interaction.created", "interaction",
                          agent__brief(&r.it, r.req)),
                NULL);
    run_close(&r);
    return 0;
}

int
agent_create(struct agent_service *svc, struct env_ctx *ctx, const struct agent_caller *who,
             json_t *body, const char *idem_key, char *id_out, bool *existing, int *retry_after_s,
             struct err **errp)
{
    struct keycount *c;

    id_out[0] = '\0';
    pthread_mutex_lock(&svc->mu);
    if (svc->stopping) {
        pthread_mutex_unlock(&svc->mu);
        return err_set(errp, ERR_UPSTREAM, 0, "the server is shutting down; retry shortly");
    }
    c = count_of(svc, who->project, who->key_name);
    if (c->n >= svc->o.per_key_max) {
        pthread_mutex_unlock(&svc->mu);
        *retry_after_s = 5;
        return err_set(errp, ERR_LIMIT, 0,
                       "key %s already has %u interactions queued or running (the cap); retry "
                       "later",
                       who->key_name, svc->o.per_key_max);
    }
    c->n++; /* held while the row is made, so racing requests cannot pass the cap */
    pthread_mutex_unlock(&svc->mu);
    if (store_new(&svc->o, ctx, env_store(ctx), who, body, idem_key, id_out, existing, errp) < 0 ||
        *existing) {
        pthread_mutex_lock(&svc->mu);
        c->n--;
        pthread_mutex_unlock(&svc->mu);
        return *existing ? 0 : -1;
    }
    pthread_mutex_lock(&svc->mu);
    enqueue_locked(svc, id_out, c);
    pthread_mutex_unlock(&svc->mu);
    return 0;
}

/* Whether the run of id (if any) has ended, waiting up to ms for it. */
static bool
ended_within(struct agent_service *svc, const char *id, int ms)
{
    int64_t until = util_mono_ms() + ms;

    for (;;) {
        bool running = false;
        int64_t left;
        pthread_mutex_lock(&svc->mu);
        for (struct agent_run *r = svc->running; r != NULL; r = r->next)
            if (strcmp(r->id, id) == 0)
                running = true;
        pthread_mutex_unlock(&svc->mu);
        left = until - util_mono_ms();
        if (!running || left <= 0 || agent_stopping(svc)) /* stopping: agent_wait waits no more */
            return !running;
        agent_wait(svc, id, 0, left < 100 ? (int)left : 100);
    }
}

int
agent_cancel(struct agent_service *svc, struct store *s, const char *project, const char *id,
             struct err **errp)
{
    struct store_interaction it = { 0 };
    bool found = false;

    if (store_interaction_get(s, id, &it, errp) < 0)
        return -1;
    if (strcmp(it.project, project) != 0) {
        store_interaction_clear(&it);
        return err_set(errp, ERR_NOT_FOUND, 0, "interaction %s not found", id);
    }
    if (agent_status_final(it.status)) {
        int rc = err_set(errp, ERR_CONFLICT, 0, "interaction %s already ended (%s)", id, it.status);
        store_interaction_clear(&it);
        return rc;
    }
    store_interaction_clear(&it);
    pthread_mutex_lock(&svc->mu);
    for (struct agent_run *r = svc->running; r != NULL; r = r->next)
        if (strcmp(r->id, id) == 0) {
            r->cancel = 1;
            found = true;
        }
    if (found) { /* a run pausing between tries waits in agent_wait() */
        svc->gen++;
        pthread_cond_broadcast(&svc->news);
    }
    if (!found) {
        /* Still queued: take it out of the queue and end it here. */
        for (struct job **p = &svc->head; *p != NULL; p = &(*p)->next)
            if (strcmp((*p)->id, id) == 0) {
                struct job *j = *p;
                *p = j->next;
                if (svc->tail == j) {
                    svc->tail = NULL;
                    for (struct job *k = svc->head; k != NULL; k = k->next)
                        svc->tail = k;
                }
                if (j->count != NULL)
                    j->count->n--;
                free(j);
                found = true;
                break;
            }
        pthread_mutex_unlock(&svc->mu);
        if (found)
            return end_unrun(s, id, "cancelled", NULL, errp);
        return 0;
    }
    pthread_mutex_unlock(&svc->mu);
    /* Wait (briefly) for the run to record its end, so the answer shows it. */
    (void)ended_within(svc, id, AGENT_CANCEL_WAIT_MS);
    return 0;
}

int
agent_delete(struct agent_service *svc, struct store *s, const char *project, const char *id,
             struct err **errp)
{
    struct store_interaction it = { 0 };

    if (store_interaction_get(s, id, &it, errp) < 0)
        return -1;
    if (strcmp(it.project, project) != 0) {
        store_interaction_clear(&it);
        return err_set(errp, ERR_NOT_FOUND, 0, "interaction %s not found", id);
    }
    if (!agent_status_final(it.status) && runner_alive(&it)) {
        int rc = err_set(errp, ERR_CONFLICT, 0,
                         "interaction %s is being run by another paddock process (%s); cancel "
                         "it there first",
                         id, it.runner);
        store_interaction_clear(&it);
        return rc;
    }
    if (!agent_status_final(it.status)) {
        agent_cancel(svc, s, project, id, NULL);
        /* A run that goes on would record into rows that are gone. */
        if (!ended_within(svc, id, 0)) {
            store_interaction_clear(&it);
            return err_set(errp, ERR_CONFLICT, 0,
                           "interaction %s is still stopping its current step; delete it again "
                           "once it has ended",
                           id);
        }
    }
    store_interaction_clear(&it);
    return store_interaction_delete(s, id, errp);
}

int
agent_run_here(const struct agent_options *o, struct env_ctx *ctx, const struct agent_caller *who,
               json_t *body, char *id_out, struct err **errp)
{
    struct agent_run r;
    bool existing;
    struct store *s = env_store(ctx);

    if (store_new(o, ctx, s, who, body, NULL, id_out, &existing, errp) < 0)
        return -1;
    memset(&r, 0, sizeof(r));
    r.o = o;
    r.ctx = ctx;
    r.st = s;
    if (run_open(&r, id_out, errp) < 0)
        return -1;
    agent__run(&r);
    run_close(&r);
    return 0;
}

/* ----------------------------------------------------------------- agents */

int
agent_def_check(struct store *s, const char *project, json_t *body, json_t **out, struct err **errp)
{
    static const char *const keys[] = { "id",
                                        "description",
                                        "system_instruction",
                                        "base_agent",
                                        "agent_config",
                                        "base_environment",
                                        "tools",
                                        NULL };
    const char *k;
    json_t *v, *cfg, *scratch;
    const char *id = json_string_value(json_object_get(body, "id"));
    char gen[40];

    json_object_foreach(body, k, v) {
        size_t i;
        for (i = 0; keys[i] != NULL && strcmp(keys[i], k) != 0; i++)
            ;
        if (keys[i] == NULL) {
            cleanup_free char *ek = log_escape(k, strlen(k), 64);
            return err_field(errp, ek, "unknown field of an Agent");
        }
    }
    if (json_object_get(body, "id") != NULL && id == NULL)
        return err_field(errp, "id", "must be a string");
    if (id != NULL) {
        size_t n = strlen(id);
        if (n == 0 || n > 63 || !valid_tool_name(id))
            return err_field(errp, "id", "must be 1-63 letters, digits, _ - .");
        if (is_builtin(id))
            return err_set(errp, ERR_CONFLICT, 0, "agent %s already exists (built in)", id);
    }
    for (size_t i = 0; i < 3; i++) {
        static const char *const strs[] = { "description", "system_instruction", "base_agent" };
        v = json_object_get(body, strs[i]);
        if (v != NULL && !json_is_string(v) && !json_is_null(v))
            return err_field(errp, strs[i], "must be a string");
    }
    v = json_object_get(body, "base_agent");
    if (json_is_string(v)) {
        json_t *d;
        if (load_def(s, project, json_string_value(v), 1, &d, errp) < 0)
            return err_wrap(errp, "base_agent");
        json_decref(d);
    }
    cfg = json_object_get(body, "agent_config");
    if (cfg != NULL && !json_is_null(cfg)) {
        const char *type = json_string_value(json_object_get(cfg, "type"));
        if (!json_is_object(cfg))
            return err_field(errp, "agent_config", "must be an object");
        if (type != NULL && strcmp(type, "antigravity") != 0)
            return err_field(errp, "agent_config.type", "a stored agent's config is antigravity");
        v = json_object_get(cfg, "model");
        if (v != NULL) {
            struct model_ref m;
            if (!json_is_string(v))
                return err_field(errp, "agent_config.model", "must be a string");
            if (model_parse(json_string_value(v), &m, errp) < 0)
                return err_wrap(errp, "agent_config.model");
        }
    }
    scratch = json_array();
    {
        json_t *m = json_array();
        int rc = check_tools(json_object_get(body, "tools"), "tools", scratch, m, errp);
        json_decref(m);
        json_decref(scratch);
        if (rc < 0)
            return -1;
    }
    v = json_object_get(body, "base_environment");
    if (v != NULL && !json_is_null(v) && !json_is_string(v) && !json_is_object(v))
        return err_field(errp, "base_environment", "must be an Environment object or an id");
    *out = json_deep_copy(body);
    if (id == NULL) {
        if (util_id_new("agent_", gen, sizeof(gen), errp) < 0) {
            json_decref(*out);
            return -1;
        }
        json_object_set_new(*out, "id", json_string(gen));
    }
    return 0;
}
