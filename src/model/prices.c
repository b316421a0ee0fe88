/*
 * Model prices in USD per million tokens, for the cost budget of interactions. The built-in
 * table holds the public list prices of a few well-known models as of this writing (the base
 * tier: Gemini's prompts up to 200k tokens, no batch discounts). They are defaults only: prices
 * change, and the operator overrides them, or prices any other model, with model_prices_load().
 *
 * Lookup: the operator's table by spec, then by name; the built-in table by spec, then by
 * name, then by the longest built-in name that is a prefix of the name followed by '-' (so
 * "claude-sonnet-4-5-20250929" finds "claude-sonnet-4-5").
 */
#include <fcntl.h>
#include <pthread.h>
#include <string.h>

#include "model_int.h"

/* The operator's price file is small; this caps what is read of it. */
#define PRICES_FILE_MAX (1024 * 1024)

struct price_entry {
    const char *name; /* a spec ("openai:gpt-4o") or a bare name ("gpt-4o") */
    struct model_price p;
};

/* Defaults the operator overrides: list prices per Mtok (input, output, cached input). */
static const struct price_entry builtin[] = {
    { "gemini-3-pro-preview", { 2.00, 12.00, 0.20 } },
    { "gemini-2.5-pro", { 1.25, 10.00, 0.125 } },
    { "gemini-2.5-flash", { 0.30, 2.50, 0.03 } },
    { "gemini-2.5-flash-lite", { 0.10, 0.40, 0.01 } },
    { "gemini-2.0-flash", { 0.10, 0.40, 0.025 } },
    { "gemini-2.0-flash-lite", { 0.075, 0.30, 0.075 } },
    { "openai:gpt-5", { 1.25, 10.00, 0.125 } },
    { "openai:gpt-5-mini", { 0.25, 2.00, 0.025 } },
    { "openai:gpt-5-nano", { 0.05, 0.40, 0.005 } },
    { "openai:gpt-4.1", { 2.00, 8.00, 0.50 } },
    { "openai:gpt-4.1-mini", { 0.40, 1.60, 0.10 } },
    { "openai:gpt-4.1-nano", { 0.10, 0.40, 0.025 } },
    { "openai:gpt-4o", { 2.50, 10.00, 1.25 } },
    { "openai:gpt-4o-mini", { 0.15, 0.60, 0.075 } },
    { "openai:o3", { 2.00, 8.00, 0.50 } },
    { "openai:o3-mini", { 1.10, 4.40, 0.55 } },
    { "openai:o4-mini", { 1.10, 4.40, 0.275 } },
    { "anthropic:claude-opus-4-5", { 5.00, 25.00, 0.50 } },
    { "anthropic:claude-opus-4-1", { 15.00, 75.00, 1.50 } },
    { "anthropic:claude-opus-4", { 15.00, 75.00, 1.50 } },
    { "anthropic:claude-sonnet-4-5", { 3.00, 15.00, 0.30 } },
    { "anthropic:claude-sonnet-4", { 3.00, 15.00, 0.30 } },
    { "anthropic:claude-haiku-4-5", { 1.00, 5.00, 0.10 } },
    { "anthropic:claude-3-5-haiku", { 0.80, 4.00, 0.08 } },
};

static pthread_mutex_t prices_lock = PTHREAD_MUTEX_INITIALIZER;
static json_t *overlay; /* the operator's table, checked; under prices_lock */

void
model__prices_reset(void)
{
    pthread_mutex_lock(&prices_lock);
    json_decref(overlay);
    overlay = NULL;
    pthread_mutex_unlock(&prices_lock);
}

/* Checks one entry of the operator's table. */
static int
check_entry(const char *key, json_t *v, struct err **errp)
{
    static const char *const fields[] = { "input", "output", "cached" };
    cleanup_free char *k = model__escape(key, strlen(key));
    const char *f;
    json_t *x;

    if (!json_is_object(v))
        return err_set(errp, ERR_INVALID, 0, "\"%s\": not an object", k);
    json_object_foreach(v, f, x)
    {
        bool known = false;
        for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
            known = known || strcmp(f, fields[i]) == 0;
        if (!known) {
            cleanup_free char *ef = model__escape(f, strlen(f));
            return err_set(errp, ERR_INVALID, 0, "\"%s\".%s: unknown field", k, ef);
        }
        if (!json_is_number(x) || json_number_value(x) < 0 || json_number_value(x) > 1e6)
            return err_set(errp, ERR_INVALID, 0,
                           "\"%s\".%s: not a number of USD per million tokens", k, f);
    }
    if (json_object_get(v, "input") == NULL || json_object_get(v, "output") == NULL)
        return err_set(errp, ERR_INVALID, 0, "\"%s\": input and output are required", k);
    return 0;
}

int
model_prices_load(const char *path, struct err **errp)
{
    cleanup_free char *data = NULL;
    json_error_t je;
    const char *key;
    json_t *root, *v;
    size_t len = 0;

    if (util_read_file_at(AT_FDCWD, path, PRICES_FILE_MAX, &data, &len, errp) < 0)
        return err_wrap(errp, "price table %s", path);
    root = json_loadb(data, len, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(root)) {
        json_decref(root);
        return err_set(errp, ERR_INVALID, 0, "price table %s: %s (line %d)", path,
                       root == NULL ? je.text : "not a JSON object", root == NULL ? je.line : 1);
    }
    json_object_foreach(root, key, v)
    {
        if (check_entry(key, v, errp) < 0) {
            json_decref(root);
            return err_wrap(errp, "price table %s", path);
        }
    }
    pthread_mutex_lock(&prices_lock);
    json_decref(overlay);
    overlay = root;
    pthread_mutex_unlock(&prices_lock);
    return 0;
}

/* The operator's price of key; the cached price defaults to the input price. */
static bool
overlay_get(const char *key, struct model_price *out)
{
    json_t *v = json_object_get(overlay, key);
    json_t *cached;

    if (v == NULL)
        return false;
    cached = json_object_get(v, "cached");
    out->input = json_number_value(json_object_get(v, "input"));
    out->output = json_number_value(json_object_get(v, "output"));
    out->cached = cached != NULL ? json_number_value(cached) : out->input;
    return true;
}

/* The built-in entry for a spec or a name: exact first, then the longest '-' prefix. */
static const struct price_entry *
builtin_get(const struct model_ref *m)
{
    const struct price_entry *best = NULL;
    size_t best_len = 0;

    for (size_t i = 0; i < sizeof(builtin) / sizeof(builtin[0]); i++)
        if (strcmp(builtin[i].name, m->spec) == 0)
            return &builtin[i];
    for (size_t i = 0; i < sizeof(builtin) / sizeof(builtin[0]); i++) {
        const char *colon = strchr(builtin[i].name, ':');
        const char *bare = colon != NULL ? colon + 1 : builtin[i].name;
        size_t n = strlen(bare);
        if (strcmp(bare, m->name) == 0)
            return &builtin[i];
        if (strncmp(bare, m->name, n) == 0 && m->name[n] == '-' && n > best_len) {
            best = &builtin[i];
            best_len = n;
        }
    }
    return best;
}

bool
model_price_of(const struct model_ref *m, struct model_price *out)
{
    const struct price_entry *e;
    bool found;

    pthread_mutex_lock(&prices_lock);
    found = overlay_get(m->spec, out) || overlay_get(m->name, out);
    pthread_mutex_unlock(&prices_lock);
    if (found)
        return true;
    e = builtin_get(m);
    if (e == NULL)
        return false;
    *out = e->p;
    return true;
}

double
model_cost_usd(const struct model_ref *m, const struct model_usage *u)
{
    struct model_price p;
    int64_t cached = u->cached < u->input ? u->cached : u->input;

    if (!model_price_of(m, &p))
        return 0;
    if (cached < 0)
        cached = 0;
    return ((double)(u->input - cached) * p.input + (double)cached * p.cached +
            (double)(u->output + u->thought) * p.output) /
           1e6;
}
