/*
 * model — what the three wire formats share: parsing a model setting, the upstream settings
 * from the environment, the neutral-message helpers the format files use, and
 * model_generate's loop of attempts (retries with backoff, Retry-After, the deadline and the
 * cancel flag). The formats are in gemini.c, openai.c and anthropic.c; bytes travel through
 * http.c; prices are in prices.c.
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model_int.h"

/* A Retry-After longer than this is cut to it: the deadline, not the upstream, bounds a run. */
#define RETRY_AFTER_MAX_MS 300000
/* The cancel flag is polled this often while waiting between attempts. */
#define SLEEP_STEP_MS 10

/* ------------------------------------------------------------ model_parse */

/* True when name is non-empty and every byte is allowed: for a name that goes into a URL path
 * (Gemini) letters, digits, '.', '-' and '_'; else any printable ASCII but space. */
static bool
name_ok(const char *name, bool in_url)
{
    if (*name == '\0')
        return false;
    for (const unsigned char *p = (const unsigned char *)name; *p != '\0'; p++) {
        if (in_url ? !(isalnum(*p) || *p == '.' || *p == '-' || *p == '_')
                   : (*p <= 0x20 || *p >= 0x7f))
            return false;
    }
    return true;
}

int
model_parse(const char *spec, struct model_ref *out, struct err **errp)
{
    enum model_format f;
    const char *name;

    if (spec == NULL || *spec == '\0')
        return err_set(errp, ERR_INVALID, 0,
                       "model is empty: expected gemini-…, openai:NAME or anthropic:NAME");
    if (strlen(spec) >= sizeof(out->spec)) {
        cleanup_free char *e = model__escape(spec, 64);
        return err_set(errp, ERR_INVALID, 0, "model \"%s\" is longer than %zu characters", e,
                       sizeof(out->spec) - 1);
    }
    if (strncmp(spec, "gemini-", 7) == 0) {
        f = MODEL_GEMINI;
        name = spec;
    } else if (strncmp(spec, "openai:", 7) == 0) {
        f = MODEL_OPENAI;
        name = spec + 7;
    } else if (strncmp(spec, "anthropic:", 10) == 0) {
        f = MODEL_ANTHROPIC;
        name = spec + 10;
    } else {
        cleanup_free char *e = model__escape(spec, strlen(spec));
        return err_set(errp, ERR_INVALID, 0,
                       "model \"%s\" is unknown: expected gemini-…, openai:NAME or anthropic:NAME",
                       e);
    }
    if (!name_ok(name, f == MODEL_GEMINI) || (f == MODEL_GEMINI && name[7] == '\0')) {
        cleanup_free char *e = model__escape(spec, strlen(spec));
        return err_set(errp, ERR_INVALID, 0, "model \"%s\": %s", e,
                       *name == '\0' ? "the name after the prefix is empty"
                       : f == MODEL_GEMINI
                           ? "a Gemini model name is letters, digits, '.', '-' and '_'"
                           : "the name has a space or a character that is not printable ASCII");
    }
    memset(out, 0, sizeof(*out));
    out->format = f;
    snprintf(out->name, sizeof(out->name), "%s", name);
    snprintf(out->spec, sizeof(out->spec), "%s", spec);
    return 0;
}

/* ----------------------------------------------------------------- config */

static char *
env_dup(const char *name)
{
    const char *v = getenv(name);

    return v != NULL && *v != '\0' ? xstrdup(v) : NULL;
}

/* Sets *v from the environment variable name when it holds a number no larger than max. */
static void
env_u64(const char *name, uint64_t max, uint64_t *v)
{
    const char *s = getenv(name);
    uint64_t n;

    if (s != NULL && *s != '\0' && util_parse_u64(s, max, &n, NULL) == 0)
        *v = n;
}

void
model_config_from_env(struct model_config *cfg)
{
    uint64_t timeout = MODEL_DEFAULT_TIMEOUT_MS, retries = MODEL_DEFAULT_RETRIES,
             backoff = MODEL_DEFAULT_BACKOFF_MS, max = MODEL_DEFAULT_MAX_RESPONSE;

    memset(cfg, 0, sizeof(*cfg));
    cfg->gemini_key = env_dup("GEMINI_API_KEY");
    cfg->gemini_base = env_dup("GEMINI_BASE_URL");
    cfg->openai_key = env_dup("OPENAI_API_KEY");
    cfg->openai_base = env_dup("OPENAI_BASE_URL");
    cfg->anthropic_key = env_dup("ANTHROPIC_API_KEY");
    cfg->anthropic_base = env_dup("ANTHROPIC_BASE_URL");
    /* Not in model.h's list: knobs for tests and operators, named as DESIGN.md's config. */
    env_u64("PADDOCK_MODEL_TIMEOUT_MS", 24 * 3600 * 1000ull, &timeout);
    env_u64("PADDOCK_MODEL_MAX_RETRIES", 100, &retries);
    env_u64("PADDOCK_MODEL_BACKOFF_MS", 600000, &backoff);
    env_u64("PADDOCK_MODEL_MAX_RESPONSE", 1ull << 32, &max);
    cfg->timeout_ms = timeout > 0 ? (int64_t)timeout : MODEL_DEFAULT_TIMEOUT_MS;
    cfg->max_retries = (unsigned)retries;
    cfg->backoff_ms = (int64_t)backoff;
    cfg->max_response = max > 0 ? max : MODEL_DEFAULT_MAX_RESPONSE;
}

static void
wipe_free(char **p)
{
    if (*p != NULL) {
        explicit_bzero(*p, strlen(*p));
        free(*p);
        *p = NULL;
    }
}

void
model_config_clear(struct model_config *cfg)
{
    if (cfg == NULL)
        return;
    wipe_free(&cfg->gemini_key);
    wipe_free(&cfg->openai_key);
    wipe_free(&cfg->anthropic_key);
    free(cfg->gemini_base);
    free(cfg->openai_base);
    free(cfg->anthropic_base);
    cfg->gemini_base = cfg->openai_base = cfg->anthropic_base = NULL;
}

/* ------------------------------------------------------------------ turns */

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
model__int(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);

    if (json_is_integer(v))
        return (int64_t)json_integer_value(v);
    if (json_is_real(v) && json_real_value(v) > -9e18 && json_real_value(v) < 9e18)
        return (int64_t)json_real_value(v);
    return 0;
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
model__append_text(char **dst, const char *text)
{
    if (text == NULL || *text == '\0')
        return;
    if (*dst == NULL) {
        *dst = xstrdup(text);
    } else {
        char *s = xasprintf("%s%s", *dst, text);
        free(*dst);
        *dst = s;
    }
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
model__upstream_message(const char *body, size_t len)
{
    json_t *root = json_loadb(body != NULL ? body : "", len, 0, NULL);
    json_t *e = json_object_get(root, "error");
    const char *msg = NULL;
    char *out;

    if (json_is_string(e))
        msg = json_string_value(e);
    else if (json_is_object(e))
        msg = model__str(e, "message");
    if (msg == NULL)
        msg = model__str(root, "message");
    if (msg == NULL)
        msg = model__str(root, "detail");
    if (msg != NULL)
        out = model__escape(msg, strlen(msg));
    else if (len == 0)
        out = xstrdup("(empty body)");
    else
        out = model__escape(body, len < 200 ? len : 200);
    json_decref(root);
    return out;
}

/* --------------------------------------------------------------- endpoint */

const struct model_wire *
model__wire(enum model_format f)
{
    switch (f) {
    case MODEL_GEMINI:
        return &model__gemini_wire;
    case MODEL_OPENAI:
        return &model__openai_wire;
    case MODEL_ANTHROPIC:
        return &model__anthropic_wire;
    }
    ASSERT(!"unknown model format");
    return NULL;
}

/* Where one model call goes and how it authenticates. */
struct endpoint {
    const struct model_wire *wire;
    char *url;
    const char *auth_name;
    char *auth_value; /* holds the key: wiped */
    const char *key;  /* borrowed from the config, to keep it out of echoed messages */
    const char *extra;
    bool hosted;
};

static void
endpoint_clear(struct endpoint *ep)
{
    free(ep->url);
    wipe_free(&ep->auth_value);
}

/* The upstream of each format: settings, default base, the key's variable and header. */
struct upstream {
    const char *key, *base, *def, *key_var, *base_var, *auth_name, *auth_prefix, *extra;
};

static void
upstream_of(const struct model_config *cfg, enum model_format f, struct upstream *u)
{
    switch (f) {
    case MODEL_GEMINI:
        *u = (struct upstream){ cfg->gemini_key,
                                cfg->gemini_base,
                                MODEL_GEMINI_BASE,
                                "GEMINI_API_KEY",
                                "GEMINI_BASE_URL",
                                "x-goog-api-key",
                                "",
                                NULL };
        return;
    case MODEL_OPENAI:
        *u = (struct upstream){ cfg->openai_key,   cfg->openai_base,
                                MODEL_OPENAI_BASE, "OPENAI_API_KEY",
                                "OPENAI_BASE_URL", "Authorization",
                                "Bearer ",         NULL };
        return;
    case MODEL_ANTHROPIC:
        *u = (struct upstream){ cfg->anthropic_key,
                                cfg->anthropic_base,
                                MODEL_ANTHROPIC_BASE,
                                "ANTHROPIC_API_KEY",
                                "ANTHROPIC_BASE_URL",
                                "x-api-key",
                                "",
                                "anthropic-version: 2023-06-01" };
        return;
    }
    ASSERT(!"unknown model format");
}

static int
endpoint_resolve(const struct model_config *cfg, const struct model_ref *m, struct endpoint *ep,
                 struct err **errp)
{
    struct upstream u;
    const char *base;
    size_t blen;

    memset(ep, 0, sizeof(*ep));
    ep->wire = model__wire(m->format);
    upstream_of(cfg, m->format, &u);
    base = u.base != NULL && *u.base != '\0' ? u.base : u.def;
    blen = strlen(base);
    while (blen > 0 && base[blen - 1] == '/')
        blen--;
    if (strncmp(base, "http://", 7) != 0 && strncmp(base, "https://", 8) != 0)
        return err_set(errp, ERR_INVALID, 0, "%s must start with http:// or https://", u.base_var);
    for (size_t i = 0; i < blen; i++)
        if ((unsigned char)base[i] <= 0x20 || base[i] == 0x7f)
            return err_set(errp, ERR_INVALID, 0, "%s has a space or a control character",
                           u.base_var);
    ep->hosted = strlen(u.def) == blen && strncmp(base, u.def, blen) == 0;
    if (u.key != NULL && *u.key != '\0') {
        for (const char *p = u.key; *p != '\0'; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                return err_set(errp, ERR_INVALID, 0, "%s has a control character", u.key_var);
        ep->key = u.key;
        ep->auth_name = u.auth_name;
        ep->auth_value = xasprintf("%s%s", u.auth_prefix, u.key);
    } else if (ep->hosted) {
        return err_set(errp, ERR_PERM, 0, "%s model %s: %s is not set", ep->wire->label, m->spec,
                       u.key_var);
    }
    ep->extra = u.extra;
    if (m->format == MODEL_GEMINI)
        ep->url = xasprintf("%.*s/v1beta/models/%s:generateContent", (int)blen, base, m->name);
    else if (m->format == MODEL_OPENAI)
        ep->url = xasprintf("%.*s/chat/completions", (int)blen, base);
    else
        ep->url = xasprintf("%.*s/v1/messages", (int)blen, base);
    return 0;
}

/* --------------------------------------------------------------- attempts */

static bool
cancelled(const struct model_request *req)
{
    return req->cancel != NULL && *req->cancel != 0;
}

/* Sleeps ms, waking every SLEEP_STEP_MS to look at the cancel flag; -1 when it was set. */
static int
sleep_cancellable(int64_t ms, const struct model_request *req)
{
    int64_t end = util_mono_ns() / 1000000 + ms;

    for (;;) {
        int64_t left = end - util_mono_ns() / 1000000;
        struct timespec ts;
        if (cancelled(req))
            return -1;
        if (left <= 0)
            return 0;
        if (left > SLEEP_STEP_MS)
            left = SLEEP_STEP_MS;
        ts.tv_sec = 0;
        ts.tv_nsec = left * 1000000;
        nanosleep(&ts, NULL);
    }
}

int64_t
model__backoff_ms(int64_t base_ms, unsigned attempt)
{
    int64_t d = base_ms > 0 ? base_ms : 0;
    uint32_t r = 0;

    for (unsigned i = 1; i < attempt && d < 60000; i++)
        d *= 2;
    if (d > 60000)
        d = 60000;
    /* ±25% so that clients cut off together do not come back together. */
    if (d >= 4 && util_random(&r, sizeof(r), NULL) == 0)
        d = d - d / 4 + (int64_t)(r % (uint32_t)(d / 2 + 1));
    return d;
}

/* Replaces every occurrence of key in msg (owned) by "[redacted]": an upstream that echoes
 * the key it was sent must not put it into our errors and logs. */
static char *
redact(char *msg, const char *key)
{
    struct buf b;
    const char *p = msg, *hit;
    size_t klen = key != NULL ? strlen(key) : 0;

    if (klen < 4 || strstr(msg, key) == NULL)
        return msg;
    buf_init(&b, SIZE_MAX / 2);
    while ((hit = strstr(p, key)) != NULL) {
        buf_append(&b, p, (size_t)(hit - p), NULL);
        buf_append(&b, "[redacted]", 10, NULL);
        p = hit + klen;
    }
    buf_append(&b, p, strlen(p), NULL);
    explicit_bzero(msg, strlen(msg));
    free(msg);
    return buf_steal(&b, NULL);
}

/* Turns a non-2xx answer into an error; true when it is worth another attempt. */
static bool
status_error(const struct endpoint *ep, const struct model_ref *m, const struct model_http_resp *r,
             struct err **errp)
{
    cleanup_free char *msg = redact(model__upstream_message(r->body, r->len), ep->key);

    if (r->status == 429 || (r->status >= 500 && r->status <= 599)) {
        err_set(errp, ERR_UPSTREAM, 0, "%s model %s failed with HTTP %ld: %s", ep->wire->label,
                m->spec, r->status, msg);
        return true;
    }
    if (r->status >= 400 && r->status <= 499)
        err_set(errp, ERR_INVALID, 0, "%s model %s refused the request (HTTP %ld): %s",
                ep->wire->label, m->spec, r->status, msg);
    else
        err_set(errp, ERR_UPSTREAM, 0, "%s model %s answered HTTP %ld: %s", ep->wire->label,
                m->spec, r->status, msg);
    return false;
}

/* Hands e to errp with " (N attempts)" appended. */
static int
give_up(struct err *e, unsigned attempts, const char *why, struct err **errp)
{
    err_set(errp, e->code, 0, "%s (%u attempt%s%s)", e->msg, attempts, attempts == 1 ? "" : "s",
            why);
    err_free(e);
    return -1;
}

/*
 * Posts body until an attempt gets a 2xx answer (left in out) or a final error: anything but
 * 429, 5xx and transport failures is final at once; those are retried max_retries times.
 */
static int
run_attempts(const struct model_config *cfg, const struct model_request *req,
             const struct endpoint *ep, const char *body, struct model_http_resp *out,
             struct err **errp)
{
    const struct model_ref *m = req->model;
    int64_t timeout = cfg->timeout_ms > 0 ? cfg->timeout_ms : MODEL_DEFAULT_TIMEOUT_MS;
    struct model_http_req hr = {
        .url = ep->url,
        .auth_name = ep->auth_name,
        .auth_value = ep->auth_value,
        .extra = ep->extra,
        .body = body,
        .body_len = strlen(body),
        .max_response = cfg->max_response > 0 ? cfg->max_response : MODEL_DEFAULT_MAX_RESPONSE,
        .cancel = req->cancel,
    };

    for (unsigned attempt = 1;; attempt++) {
        struct err *e = NULL;
        int64_t wait = -1, now = util_now_ms();
        bool by_deadline = false;

        if (cancelled(req))
            return err_set(errp, ERR_CONFLICT, 0, "cancelled");
        hr.timeout_ms = timeout;
        if (req->deadline_ms > 0) {
            if (req->deadline_ms - now <= 0)
                return err_set(errp, ERR_TIMEOUT, 0, "%s model %s: the deadline passed",
                               ep->wire->label, m->spec);
            if (req->deadline_ms - now < timeout) {
                hr.timeout_ms = req->deadline_ms - now;
                by_deadline = true;
            }
        }
        if (model__http_post(&hr, out, &e) == 0) {
            if (out->status >= 200 && out->status <= 299)
                return 0;
            wait = out->retry_after_ms;
            if (!status_error(ep, m, out, &e)) {
                model__http_resp_clear(out);
                *errp = e;
                return -1;
            }
            model__http_resp_clear(out);
        } else if (e->code == ERR_CONFLICT) {
            *errp = e;
            return -1;
        } else if (e->code != ERR_UPSTREAM) {
            /* A timeout is not retried: the next attempt would wait as long again. */
            if (e->code == ERR_TIMEOUT && by_deadline)
                err_wrap(&e, "the deadline came");
            *errp = e;
            return err_wrap(errp, "%s model %s", ep->wire->label, m->spec);
        } else {
            err_wrap(&e, "%s model %s", ep->wire->label, m->spec);
        }
        if (attempt > cfg->max_retries)
            return give_up(e, attempt, "", errp);
        if (wait < 0)
            wait = model__backoff_ms(cfg->backoff_ms, attempt);
        else if (wait > RETRY_AFTER_MAX_MS)
            wait = RETRY_AFTER_MAX_MS;
        if (req->deadline_ms > 0 && util_now_ms() + wait >= req->deadline_ms)
            return give_up(e, attempt, "; no time left for a retry before the deadline", errp);
        err_free(e);
        if (sleep_cancellable(wait, req) < 0)
            return err_set(errp, ERR_CONFLICT, 0, "cancelled");
    }
}

int
model_generate(const struct model_config *cfg, const struct model_request *req,
               struct model_turn *out, struct err **errp)
{
    const struct model_ref *m = req->model;
    struct model_http_resp resp = { 0 };
    struct endpoint ep;
    struct model_enc enc = { .req = req };
    json_error_t je;
    json_t *root;
    char *body;
    int rc;

    ASSERT(m != NULL && out != NULL);
    memset(out, 0, sizeof(*out));
    if (!json_is_array(req->messages))
        return err_set(errp, ERR_INVALID, 0, "model %s: the conversation is not an array", m->spec);
    if (cancelled(req))
        return err_set(errp, ERR_CONFLICT, 0, "cancelled");
    if (endpoint_resolve(cfg, m, &ep, errp) < 0) {
        endpoint_clear(&ep);
        return -1;
    }
    enc.hosted = ep.hosted;
    root = ep.wire->encode(&enc, errp);
    if (root == NULL) {
        endpoint_clear(&ep);
        return err_wrap(errp, "%s model %s", ep.wire->label, m->spec);
    }
    body = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    ASSERT(body != NULL);
    rc = run_attempts(cfg, req, &ep, body, &resp, errp);
    free(body);
    if (rc < 0) {
        endpoint_clear(&ep);
        return -1;
    }
    root = json_loadb(resp.body, resp.len, 0, &je);
    if (root == NULL) {
        cleanup_free char *start =
            redact(model__escape(resp.body, resp.len < 100 ? resp.len : 100), ep.key);
        err_set(errp, ERR_UPSTREAM, 0, "%s model %s returned a body that is not JSON: \"%s\"",
                ep.wire->label, m->spec, start);
    } else if (ep.wire->decode(m, root, model__count_calls(req->messages), out, errp) < 0) {
        model_turn_clear(out);
        err_wrap(errp, "%s model %s", ep.wire->label, m->spec);
        rc = -1;
    }
    if (root == NULL)
        rc = -1;
    json_decref(root);
    model__http_resp_clear(&resp);
    endpoint_clear(&ep);
    return rc;
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
