/*
 * model — parsing a model setting, the upstream settings from the environment, and
 * model_generate's loop of attempts (retries with backoff, Retry-After or Gemini's RetryInfo,
 * the deadline and the cancel flag). The formats are in gemini.c, openai.c and anthropic.c, what
 * they share in neutral.c; bytes travel through http.c; prices are in prices.c.
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model_int.h"

/* A Retry-After or RetryInfo longer than this is cut to it: the deadline, not the upstream,
 * bounds a run. */
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
    int64_t end = util_mono_ms() + ms;

    for (;;) {
        int64_t left = end - util_mono_ms();
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

json_t *
model__load_capped(const char *body, size_t len, json_error_t *je)
{
    if (!util_json_values_within(body, len, UTIL_JSON_VALUES_MAX))
        return NULL;
    return json_loadb(body, len, 0, je);
}

/* The upstream's words in a body: its wire's why, else the body's start; the key redacted
 * (the upstream may echo the key it was sent). Owned. */
static char *
upstream_message(const struct endpoint *ep, const char *body, size_t len)
{
    json_t *root = model__load_capped(body, len, NULL);
    cleanup_free char *why = ep->wire->why(root);

    json_decref(root);
    if (why != NULL)
        return model__upstream_text(why, strlen(why), MODEL_UPSTREAM_MSG_MAX, ep->key);
    if (len == 0)
        return xstrdup("(empty body)");
    return model__upstream_text(body, len, 200, ep->key);
}

/* Adds the upstream's words on why a 2xx answer holds no turn (some proxies answer errors
 * with 200) to the decode error in *errp, which names only what was missing. */
static void
add_why(const struct endpoint *ep, const json_t *root, struct err **errp)
{
    cleanup_free char *why = ep->wire->why(root), *text = NULL;
    struct err *e;

    if (why == NULL || errp == NULL || *errp == NULL)
        return;
    text = model__upstream_text(why, strlen(why), MODEL_UPSTREAM_MSG_MAX, ep->key);
    e = *errp;
    *errp = NULL;
    err_set(errp, e->code, 0, "%s: %s", e->msg, text);
    err_free(e);
}

/* A retryDelay longer than this many seconds is taken as this long: past any deadline. */
#define DURATION_MAX_S 1000000000

int64_t
model__parse_duration_ms(const char *s)
{
    int64_t sec = 0, frac_ms = 0;
    bool below_ms = false;
    const char *p = s;
    int digits = 0;

    if (s == NULL || *p < '0' || *p > '9')
        return -1;
    for (; *p >= '0' && *p <= '9'; p++)
        sec = sec >= DURATION_MAX_S ? DURATION_MAX_S : sec * 10 + (*p - '0');
    if (sec > DURATION_MAX_S)
        sec = DURATION_MAX_S;
    if (*p == '.') {
        for (p++; *p >= '0' && *p <= '9'; p++, digits++) {
            if (digits < 3)
                frac_ms = frac_ms * 10 + (*p - '0');
            else if (*p != '0')
                below_ms = true;
        }
        if (digits == 0 || digits > 9)
            return -1;
        for (int i = digits; i < 3; i++)
            frac_ms *= 10;
    }
    if (p[0] != 's' || p[1] != '\0')
        return -1;
    /* What is below a millisecond rounds up: never a wait shorter than asked. */
    return sec * 1000 + frac_ms + (below_ms ? 1 : 0);
}

int64_t
model__retry_info_ms(const char *body, size_t len)
{
    json_t *root = model__load_capped(body, len, NULL);
    /* Some Google endpoints wrap the error object in an array. */
    const json_t *top = json_is_array(root) ? json_array_get(root, 0) : root;
    const json_t *details = json_object_get(json_object_get(top, "error"), "details"), *d;
    int64_t ms = -1;
    size_t i;

    json_array_foreach(details, i, d) {
        const char *type = model__str(d, "@type");
        if (type != NULL && strcmp(type, "type.googleapis.com/google.rpc.RetryInfo") == 0) {
            ms = model__parse_duration_ms(model__str(d, "retryDelay"));
            break;
        }
    }
    json_decref(root);
    return ms;
}

/* Turns a non-2xx answer into an error; true when it is worth another attempt. */
static bool
status_error(const struct endpoint *ep, const struct model_ref *m, const struct model_http_resp *r,
             struct err **errp)
{
    cleanup_free char *msg = upstream_message(ep, r->body, r->len);

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
 * The wait before the attempt after attempt: the upstream's hint (ms, -1 none: Retry-After,
 * retry-after-ms or Gemini's RetryInfo) cut to RETRY_AFTER_MAX_MS, else the backoff. -1 when
 * the wait would end past the deadline, with why (n bytes) saying so; a hint counts whole
 * there, as a retry before it would only be refused again.
 */
static int64_t
next_wait(const struct model_config *cfg, const struct model_request *req, unsigned attempt,
          int64_t hint, char *why, size_t n)
{
    int64_t wait = hint < 0                    ? model__backoff_ms(cfg->backoff_ms, attempt)
                   : hint < RETRY_AFTER_MAX_MS ? hint
                                               : RETRY_AFTER_MAX_MS;
    const char *cause = "; no time left for a retry before the deadline";

    if (req->deadline_ms <= 0 || util_now_ms() + (hint < 0 ? wait : hint) < req->deadline_ms)
        return wait;
    if (hint < 0)
        snprintf(why, n, "%s", cause);
    else if (hint % 1000 == 0)
        snprintf(why, n, "%s: the upstream asks to wait %lld s", cause, (long long)(hint / 1000));
    else
        snprintf(why, n, "%s: the upstream asks to wait %lld ms", cause, (long long)hint);
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
        int64_t hint = -1, wait, now = util_now_ms();
        bool by_deadline = false;
        char why[128];

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
            if (!status_error(ep, m, out, &e)) {
                model__http_resp_clear(out);
                *errp = e;
                return -1;
            }
            hint = out->retry_after_ms >= 0 ? out->retry_after_ms
                                            : model__retry_info_ms(out->body, out->len);
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
        wait = next_wait(cfg, req, attempt, hint, why, sizeof(why));
        if (wait < 0)
            return give_up(e, attempt, why, errp);
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
    root = model__load_capped(resp.body, resp.len, &je);
    if (root == NULL && !util_json_values_within(resp.body, resp.len, UTIL_JSON_VALUES_MAX)) {
        err_set(errp, ERR_UPSTREAM, 0,
                "%s model %s returned an answer of more than %u JSON values, more than any "
                "answer needs",
                ep.wire->label, m->spec, UTIL_JSON_VALUES_MAX);
    } else if (root == NULL) {
        cleanup_free char *start = model__upstream_text(resp.body, resp.len, 100, ep.key);
        err_set(errp, ERR_UPSTREAM, 0, "%s model %s returned a body that is not JSON: \"%s\"",
                ep.wire->label, m->spec, start);
    } else if (ep.wire->decode(m, root, model__count_calls(req->messages), out, errp) < 0) {
        model_turn_clear(out);
        add_why(&ep, root, errp);
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
