/*
 * Environments, their files, uploads and snapshots (docs/API.md). Every request body is
 * validated into plain values before anything is created; every file operation goes to
 * the sandbox's init through env/.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api_int.h"

#define SOURCES_MAX 64
#define ENV_VARS_MAX 256
#define ENV_VALUE_MAX (32u * 1024)
#define ALLOWLIST_MAX 256

/* ------------------------------------------------------------- validation */


/* Only the listed keys may appear in obj. */
static int
closed_object(json_t *obj, const char *field, const char *const *keys, struct err **errp)
{
    const char *k;
    json_t *v;

    json_object_foreach(obj, k, v) {
        bool known = false;
        (void)v;
        for (size_t i = 0; keys[i] != NULL; i++)
            known = known || strcmp(k, keys[i]) == 0;
        if (!known) {
            cleanup_free char *ek = log_escape(k, strlen(k), 64);
            return *field ? err_field(errp, field, "unknown field '%s'", ek)
                          : err_set(errp, ERR_INVALID, 0, "unknown field '%s'", ek);
        }
    }
    return 0;
}

/* A target: absolute, below "/", no ".." or "." component; normalised into *out. */
static int
check_target(const char *t, const char *field, char **out, struct err **errp)
{
    struct buf b;

    if (t[0] != '/')
        return err_field(errp, field, "must be an absolute path below / (got '%s')", t);
    if (strlen(t) > 4000)
        return err_field(errp, field, "longer than 4000 bytes");
    buf_init(&b, 4096);
    for (const char *p = t; *p != '\0';) {
        size_t n;
        while (*p == '/')
            p++;
        n = strcspn(p, "/");
        if (n == 0)
            break;
        if ((n == 2 && p[0] == '.' && p[1] == '.') || (n == 1 && p[0] == '.')) {
            buf_free(&b);
            return err_field(errp, field, "must not contain '.' or '..' components");
        }
        buf_append(&b, "/", 1, NULL);
        buf_append(&b, p, n, NULL);
        p += n;
    }
    if (b.len == 0) {
        buf_free(&b);
        return err_field(errp, field, "must be a path below /, not / itself");
    }
    *out = buf_steal(&b, NULL);
    return 0;
}

static bool
valid_var_name(const char *s)
{
    if (!((s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= 'a' && s[0] <= 'z') || s[0] == '_'))
        return false;
    for (size_t i = 1; s[i] != '\0'; i++)
        if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '_') ||
            i > 255)
            return false;
    return true;
}

static int
check_network(json_t *net, struct err **errp)
{
    static const char *const keys[] = {"allowlist", NULL};
    static const char *const entry_keys[] = {"domain", "transform", "credential", NULL};
    json_t *al, *e;
    size_t i;

    if (json_is_string(net)) {
        if (strcmp(json_string_value(net), "disabled") != 0)
            return err_field(errp, "network",
                             "must be \"disabled\" or an object with an allowlist");
        return 0;
    }
    if (!json_is_object(net))
        return err_field(errp, "network", "must be \"disabled\" or an object with an allowlist");
    if (closed_object(net, "network", keys, errp) < 0)
        return -1;
    al = json_object_get(net, "allowlist");
    if (al == NULL || (json_is_string(al) && strcmp(json_string_value(al), "disabled") == 0))
        return 0;
    if (!json_is_array(al))
        return err_field(errp, "network.allowlist",
                         "must be a list of {domain} entries or \"disabled\"");
    if (json_array_size(al) > ALLOWLIST_MAX)
        return err_field(errp, "network.allowlist", "more than %d entries", ALLOWLIST_MAX);
    json_array_foreach(al, i, e) {
        char field[64];
        json_t *d, *tr;
        snprintf(field, sizeof(field), "network.allowlist[%zu]", i);
        if (!json_is_object(e))
            return err_field(errp, field, "must be an object");
        if (closed_object(e, field, entry_keys, errp) < 0)
            return -1;
        d = json_object_get(e, "domain");
        if (!json_is_string(d) || json_string_length(d) == 0 || json_string_length(d) > 253 ||
            strpbrk(json_string_value(d), " \t\r\n/@") != NULL)
            return err_field(errp, field, "domain must be a host name, \"*.suffix\" or \"*\"");
        tr = json_object_get(e, "transform");
        if (tr != NULL && !json_is_object(tr) && !json_is_array(tr))
            return err_field(errp, field, "transform must be a map of headers or a list of maps");
        if (json_object_get(e, "credential") != NULL &&
            !json_is_string(json_object_get(e, "credential")))
            return err_field(errp, field, "credential must be a credential id");
    }
    return 0;
}

static int
check_env_vars(json_t *env, struct err **errp)
{
    static const char *const keys[] = {"value", "credential", NULL};
    const char *k;
    json_t *v;

    if (!json_is_object(env))
        return err_field(errp, "env", "must be a map of variable names to values");
    if (json_object_size(env) > ENV_VARS_MAX)
        return err_field(errp, "env", "more than %d variables", ENV_VARS_MAX);
    json_object_foreach(env, k, v) {
        cleanup_free char *field = NULL;
        cleanup_free char *ek = log_escape(k, strlen(k), 64);
        field = xasprintf("env.%s", ek);
        if (!valid_var_name(k))
            return err_field(errp, field, "not a valid variable name");
        if (json_is_string(v)) {
            if (json_string_length(v) > ENV_VALUE_MAX ||
                strlen(json_string_value(v)) != json_string_length(v))
                return err_field(errp, field, "value longer than %u bytes or holding NUL",
                                 ENV_VALUE_MAX);
        } else if (json_is_object(v)) {
            json_t *val = json_object_get(v, "value"), *cred = json_object_get(v, "credential");
            if (closed_object(v, field, keys, errp) < 0)
                return -1;
            if ((val != NULL && !json_is_string(val)) || (cred != NULL && !json_is_string(cred)))
                return err_field(errp, field, "value and credential must be strings");
            if (val == NULL && cred == NULL)
                return err_field(errp, field, "needs a value or a credential");
        } else {
            return err_field(errp, field, "must be a string or {value, credential}");
        }
    }
    return 0;
}

/* What decoding an environment config needs to know. */
struct env_decode {
    const struct api_config *cfg; /* NULL: no server (skill_registry sources refused) */
    struct store *store;
    const char *project;
};

/* A create request, validated and decoded; everything owned. */
struct create_req {
    struct env_create_opts opts;
    struct env_file files[SOURCES_MAX];
    struct env_dir_source dirs[SOURCES_MAX];
    struct env_fetch fetches[SOURCES_MAX];
    char *store[4 * SOURCES_MAX]; /* owned strings and buffers to free */
    size_t nstore;
    char from[40];
    json_t *config;
    bool net_disabled;
};

static char *
keep(struct create_req *c, char *p)
{
    c->store[c->nstore++] = p;
    return p;
}

static void
create_req_free(struct create_req *c)
{
    for (size_t i = 0; i < c->nstore; i++)
        free(c->store[i]);
    json_decref(c->config);
}

static int
check_source(const struct env_decode *r, struct create_req *c, json_t *src, size_t i,
             size_t *inline_total, json_t *echo, struct err **errp)
{
    static const char *const keys[] = {"type", "source", "target", "content", "encoding", NULL};
    char field[32];
    const char *type, *source, *target_raw;
    char *target = NULL;
    json_t *t = json_object_get(src, "type");

    snprintf(field, sizeof(field), "sources[%zu]", i);
    if (!json_is_object(src))
        return err_field(errp, field, "must be an object");
    if (closed_object(src, field, keys, errp) < 0)
        return -1;
    if (!json_is_string(t))
        return err_field(errp, field,
                         "type is required: inline, repository, gcs or skill_registry");
    type = json_string_value(t);
    source = json_string_value(json_object_get(src, "source"));
    target_raw = json_string_value(json_object_get(src, "target"));
    if (json_object_get(src, "source") != NULL && source == NULL)
        return err_field(errp, field, "source must be a string");
    if (json_object_get(src, "target") != NULL && target_raw == NULL)
        return err_field(errp, field, "target must be a string");
    if (target_raw != NULL) {
        char tf[48];
        snprintf(tf, sizeof(tf), "%s.target", field);
        if (check_target(target_raw, tf, &target, errp) < 0)
            return -1;
        keep(c, target);
    }
    if (strcmp(type, "inline") == 0) {
        json_t *content = json_object_get(src, "content");
        const char *enc = json_string_value(json_object_get(src, "encoding"));
        char *data;
        size_t len;

        if (target == NULL)
            return err_field(errp, field, "an inline source needs a target");
        if (!json_is_string(content))
            return err_field(errp, field, "an inline source needs content (a string)");
        if (json_object_get(src, "encoding") != NULL &&
            (enc == NULL || (strcmp(enc, "base64") != 0 && strcmp(enc, "utf-8") != 0 &&
                             strcmp(enc, "text") != 0)))
            return err_field(errp, field, "encoding must be \"base64\" (or absent for text)");
        if (enc != NULL && strcmp(enc, "base64") == 0) {
            if (api_b64_decode(json_string_value(content), json_string_length(content), &data,
                               &len) < 0)
                return err_field(errp, field, "content is not valid base64");
        } else {
            len = json_string_length(content);
            data = xmalloc(len + 1);
            memcpy(data, json_string_value(content), len);
        }
        keep(c, data);
        if (len > API_INLINE_FILE_MAX)
            return err_field(errp, field,
                             "inline content is %zu bytes; the limit is %u (1 MiB) a file", len,
                             API_INLINE_FILE_MAX);
        *inline_total += len;
        if (*inline_total > API_INLINE_TOTAL_MAX)
            return err_field(errp, field, "inline sources exceed %u bytes (2 MiB) in all",
                       API_INLINE_TOTAL_MAX);
        c->files[c->opts.n_files++] = (struct env_file){target, data, len};
    } else if (strcmp(type, "skill_registry") == 0) {
        const char *dir = r->cfg != NULL ? r->cfg->skills_dir : NULL;
        char *host, *tgt;
        struct stat st;

        if (source == NULL || source[0] == '\0')
            return err_field(errp, field,
                             "a skill_registry source needs source (the skill's name)");
        if (dir == NULL)
            return err_field(errp, field, "this server has no skills directory (--skills-dir)");
        if (source[0] == '/' || strstr(source, "..") != NULL || strlen(source) > 255)
            return err_field(errp, field, "source must be a skill name below the skills directory");
        host = keep(c, xasprintf("%s/%s", dir, source));
        if (lstat(host, &st) < 0 || !S_ISDIR(st.st_mode))
            return err_field(errp, field, "no skill '%s' in the skills directory", source);
        if (target == NULL) {
            const char *base = strrchr(source, '/');
            tgt = keep(c, xasprintf("/.agent/skills/%s", base != NULL ? base + 1 : source));
        } else {
            tgt = target;
        }
        c->dirs[c->opts.n_dirs++] = (struct env_dir_source){tgt, host};
    } else if (strcmp(type, "repository") == 0 || strcmp(type, "gcs") == 0) {
        struct env_fetch *f = &c->fetches[c->opts.n_fetches];
        bool git = strcmp(type, "repository") == 0;
        bool web = source != NULL && (strncmp(source, "https://", 8) == 0 ||
                                      strncmp(source, "http://", 7) == 0);
        if (source == NULL || source[0] == '\0' || strlen(source) > 2048 ||
            strpbrk(source, " \t\r\n\\") != NULL)
            return err_field(errp, field, "source must be a %s",
                             git ? "repository URL or host/org/repo"
                                 : "gs://bucket/prefix or https URL");
        if (c->net_disabled)
            return err_field(errp, field, "a %s source needs the network, and this environment's "
                       "network is disabled", type);
        memset(f, 0, sizeof(*f));
        if (git) {
            const char *first_slash = strchr(source, '/');
            f->kind = ENV_FETCH_GIT;
            f->max = ENV_GIT_MAX;
            if (web)
                f->url = keep(c, xstrdup(source)); /* the body is freed before the create */
            else if (strstr(source, "://") == NULL && source[0] != '-' && first_slash != NULL &&
                     memchr(source, '.', (size_t)(first_slash - source)) != NULL &&
                     strchr(source, ':') == NULL)
                f->url = keep(c, xasprintf("https://%s", source)); /* github.com/org/repo */
            else
                return err_field(errp, field,
                                 "source must be an http(s) URL or host/org/repo (other "
                                 "git transports are not allowed)");
            if (target == NULL) {
                const char *base = strrchr(source, '/');
                cleanup_free char *name = xstrdup(base != NULL ? base + 1 : source);
                size_t nl = strlen(name);
                if (nl > 4 && strcmp(name + nl - 4, ".git") == 0)
                    name[nl - 4] = '\0';
                if (name[0] == '\0' || name[0] == '.')
                    return err_field(errp, field, "give a target: no name to take from the URL");
                target = keep(c, xasprintf("/workspace/%s", name));
            }
        } else {
            f->max = ENV_GCS_MAX;
            if (strncmp(source, "gs://", 5) == 0 && source[5] != '\0' && source[5] != '/') {
                f->kind = ENV_FETCH_GCS;
                f->url = keep(c, xstrdup(source + 5));
            } else if (web) {
                f->kind = ENV_FETCH_URL;
                f->url = keep(c, xstrdup(source));
            } else {
                return err_field(errp, field, "source must be gs://bucket/prefix or an https URL");
            }
            if (target == NULL)
                return err_field(errp, field, "a gcs source needs a target");
        }
        f->target = target;
        c->opts.n_fetches++;
    } else {
        cleanup_free char *et = log_escape(type, strlen(type), 64);
        return err_field(errp, field, "unknown source type '%s' (inline, repository, gcs, "
                   "skill_registry)", et);
    }
    {
        json_t *e = json_pack("{s:s}", "type", type);
        if (source != NULL)
            json_object_set_new(e, "source", json_string(source));
        if (target != NULL)
            json_object_set_new(e, "target", json_string(target));
        if (json_object_get(src, "encoding") != NULL)
            json_object_set(e, "encoding", json_object_get(src, "encoding"));
        json_array_append_new(echo, e);
    }
    return 0;
}

static int
decode_create(const struct env_decode *r, json_t *body, bool inline_form, struct create_req *c,
              struct err **errp)
{
    static const char *const keys[] = {"sources", "network", "env", "from_environment", NULL};
    static const char *const inline_keys[] = {"type", "sources", "network", "env", NULL};
    json_t *sources = json_object_get(body, "sources");
    json_t *net = json_object_get(body, "network");
    json_t *env = json_object_get(body, "env");
    json_t *from = json_object_get(body, "from_environment");
    json_t *echo = json_array();
    size_t total = 0, i;
    json_t *s;

    c->config = json_object();
    json_object_set_new(c->config, "sources", echo);
    if (closed_object(body, "", inline_form ? inline_keys : keys, errp) < 0)
        return -1;
    if (inline_form) {
        const char *type = json_string_value(json_object_get(body, "type"));
        if (type != NULL && strcmp(type, "remote") != 0)
            return err_field(errp, "type", "must be \"remote\"");
    }
    if (sources != NULL && !json_is_array(sources) && !json_is_null(sources))
        return err_field(errp, "sources", "must be a list");
    if (json_array_size(sources) > SOURCES_MAX)
        return err_field(errp, "sources", "more than %d sources", SOURCES_MAX);
    c->net_disabled = json_is_string(net) ||
                      (json_is_object(net) && json_is_string(json_object_get(net, "allowlist")));
    json_array_foreach(sources, i, s)
        if (check_source(r, c, s, i, &total, echo, errp) < 0)
            return -1;
    if (net != NULL && !json_is_null(net)) {
        if (check_network(net, errp) < 0)
            return -1;
        json_object_set(c->config, "network", net);
    }
    if (env != NULL && !json_is_null(env)) {
        const char *k;
        json_t *v, *ph = json_object();
        if (check_env_vars(env, errp) < 0) {
            json_decref(ph);
            return -1;
        }
        json_object_set(c->config, "env", env);
        /* A variable naming a credential holds a placeholder inside the sandbox, useless
         * anywhere but in a request the proxy rewrites for the credential's domains. */
        json_object_foreach(env, k, v) {
            const char *cred = json_string_value(json_object_get(v, "credential"));
            struct store_cred meta;
            char p[64];
            if (cred == NULL)
                continue;
            if (store_cred_get(r->store, r->project, cred, &meta,
                               NULL) < 0) {
                json_decref(ph);
                cleanup_free char *ek = log_escape(k, strlen(k), 64);
                return err_set(errp, ERR_INVALID, 0, "env.%s: no credential '%s' in this project",
                               ek, cred);
            }
            store_cred_clear(&meta);
            if (util_id_new("paddock-credential-", p, sizeof(p), errp) < 0) {
                json_decref(ph);
                return -1;
            }
            json_object_set_new(ph, k, json_string(p));
        }
        if (json_object_size(ph) > 0)
            json_object_set_new(c->config, "_placeholders", ph);
        else
            json_decref(ph);
    }
    if (from != NULL && !json_is_null(from)) {
        const char *id;
        if (!json_is_string(from))
            return err_field(errp, "from_environment", "must be \"environments/ID\" or an id");
        id = api_strip_prefix(json_string_value(from), "environments/");
        if (!util_id_valid("env_", id))
            return err_set(errp, ERR_NOT_FOUND, 0, "from_environment: no environment '%s'", id);
        if (json_array_size(sources) > 0)
            return err_field(errp, "sources", "must be empty when from_environment is given");
        snprintf(c->from, sizeof(c->from), "%s", id);
        c->opts.from = c->from;
        json_object_set_new(c->config, "from_environment", json_sprintf("environments/%s", id));
    }
    c->opts.files = c->files;
    c->opts.dirs = c->dirs;
    c->opts.fetches = c->fetches;
    c->opts.project = r->project;
    {
        struct egress_policy *pol;
        if (egress_policy_compile(net, &pol, errp) < 0)
            return -1;
        c->opts.network = egress_mode_name(pol);
        egress_policy_free(pol);
    }
    return 0;
}

/* --------------------------------------------------------------- encoding */

static const char *
state_name(enum store_env_state st)
{
    switch (st) {
    case STORE_ENV_CREATING:
        return "creating";
    case STORE_ENV_RUNNING:
        return "running";
    case STORE_ENV_STOPPED:
        return "idle";
    case STORE_ENV_OFFLINE:
        return "offline";
    case STORE_ENV_EXPIRED:
        return "expired";
    case STORE_ENV_POOLED: /* never listed nor returned */
        break;
    }
    return "unknown";
}

static json_t *
time_json(int64_t ms)
{
    char t[40];

    util_format_time(ms, t, sizeof(t));
    return json_string(t);
}

static json_t *
env_json(struct env_ctx *ctx, const struct store_env *e)
{
    cleanup_free char *config = NULL;
    json_t *cfg = NULL;
    json_t *j = json_pack("{s:s, s:s, s:s, s:o, s:o, s:o, s:o, s:o}", "id", e->id, "status",
                          e->state == STORE_ENV_EXPIRED ? "expired" : "active", "state",
                          state_name(e->state), "created", time_json(e->created_ms), "updated",
                          time_json(e->updated_ms), "last_accessed", time_json(e->last_used_ms),
                          "file_count", json_sprintf("%llu", (unsigned long long)e->file_count),
                          "size_bytes", json_sprintf("%llu", (unsigned long long)e->size_bytes));

    if (env_config(ctx, e->id, &config, NULL) == 0)
        cfg = json_loads(config, 0, NULL);
    if (json_is_object(cfg)) {
        const char *k;
        json_t *v;
        json_object_foreach(cfg, k, v)
            if (k[0] != '_') /* paddock's own bookkeeping */
                json_object_set(j, k, v);
    }
    json_decref(cfg);
    return j;
}

/* ------------------------------------------------------------ environments */

int
api_env_create_json(const struct api_config *cfg, struct env_ctx *ctx, const char *project,
                    json_t *body, bool inline_form, bool check_only, struct store_env *out,
                    struct err **errp)
{
    struct create_req c;
    struct env_decode d = {cfg, env_store(ctx), project};
    cleanup_free char *config = NULL;
    bool recount;

    memset(&c, 0, sizeof(c));
    if (!json_is_object(body))
        return err_set(errp, ERR_INVALID, 0, "an environment config must be a JSON object");
    if (decode_create(&d, body, inline_form, &c, errp) < 0) {
        create_req_free(&c);
        return -1;
    }
    if (check_only) {
        create_req_free(&c);
        return 0;
    }
    config = json_dumps(c.config, JSON_COMPACT);
    c.opts.config = config;
    /* A copy or sources change the file count; a bare environment's is known to the janitor
     * soon enough, and counting costs a round trip into the sandbox. */
    recount = c.opts.from != NULL || c.opts.n_files > 0 || c.opts.n_dirs > 0 ||
              c.opts.n_fetches > 0;
    if (env_create(ctx, &c.opts, out, errp) < 0) {
        create_req_free(&c);
        return -1;
    }
    create_req_free(&c);
    {
        const char *kv[] = {"id", out->id, "project", out->project};
        log_fields(LOG_LEVEL_INFO, "environment created", kv, 4);
    }
    if (recount) {
        env_count(ctx, out->id, NULL);
        env_get(ctx, out->id, out, NULL);
    }
    return 0;
}

int
api_env_resolve(const void *arg, struct env_ctx *ctx, const char *project, json_t *spec,
                bool check_only, char *env_id, struct err **errp)
{
    const struct api_config *cfg = arg;
    struct store_env e;

    if (spec == NULL || (json_is_string(spec) && strcmp(json_string_value(spec), "remote") == 0)) {
        json_t *empty = json_object();
        int rc = api_env_create_json(cfg, ctx, project, empty, true, check_only, &e, errp);
        json_decref(empty);
        if (rc == 0 && !check_only)
            snprintf(env_id, 40, "%s", e.id);
        return rc;
    }
    if (json_is_string(spec)) {
        const char *id = api_strip_prefix(json_string_value(spec), "environments/");
        cleanup_free char *dir = NULL;
        if (!util_id_valid("env_", id) || env_get_owned(ctx, project, id, &e, NULL) < 0 ||
            e.state == STORE_ENV_EXPIRED) {
            cleanup_free char *eid = log_escape(id, strlen(id), 64);
            return err_set(errp, ERR_NOT_FOUND, 0, "no environment '%s'", eid);
        }
        if (check_only)
            return 0;
        if (env_use_owned(ctx, project, id, &dir, errp) < 0)
            return -1;
        snprintf(env_id, 40, "%s", id);
        return 0;
    }
    if (api_env_create_json(cfg, ctx, project, spec, true, check_only, &e, errp) < 0)
        return -1;
    if (!check_only)
        snprintf(env_id, 40, "%s", e.id);
    return 0;
}

static enum MHD_Result
create_env(struct api_req *r, struct env_ctx *ctx)
{
    enum MHD_Result res;
    struct store_env e;
    struct err *er = NULL;
    json_t *body;
    json_error_t jerr;
    int rc;

    if (r->body.len == 0) {
        body = json_object();
    } else {
        body = json_loadb(r->body.data, r->body.len, JSON_REJECT_DUPLICATES, &jerr);
        if (body == NULL) {
            cleanup_free char *why = api_json_error(&jerr);
            return api_reply_status(r, 400, "INVALID_ARGUMENT", "%s", why);
        }
    }
    if (!json_is_object(body)) {
        json_decref(body);
        return api_reply_status(r, 400, "INVALID_ARGUMENT", "request body must be a JSON object");
    }
    if (!api_may_bind_credentials(r, body, "", &res)) {
        json_decref(body);
        return res;
    }
    rc = api_env_create_json(r->srv->cfg, ctx, r->auth.project, body, false, false, &e, &er);
    json_decref(body);
    if (rc < 0)
        return api_reply_err(r, er);
    return api_reply_json(r, 200, env_json(ctx, &e));
}

/*
 * Page tokens are opaque to clients: base64 of "created_ms:seq", the position of the last
 * environment of the page in list order.
 */
static int
decode_env_token(const char *tok, int64_t *created, int64_t *seq)
{
    cleanup_free char *raw = NULL;
    size_t len;
    char *colon;
    uint64_t c, q;

    if (api_b64_decode(tok, strlen(tok), &raw, &len) < 0 || len > 64)
        return -1;
    raw = xrealloc(raw, len + 1);
    raw[len] = '\0';
    colon = strchr(raw, ':');
    if (colon == NULL || strlen(raw) != len)
        return -1;
    *colon = '\0';
    if (util_parse_u64(raw, INT64_MAX, &c, NULL) < 0 ||
        util_parse_u64(colon + 1, INT64_MAX, &q, NULL) < 0)
        return -1;
    *created = (int64_t)c;
    *seq = (int64_t)q;
    return 0;
}

int
api_page_size(struct api_req *r, size_t dflt, size_t *out, struct err **errp)
{
    const char *ps = api_query(r, "page_size");
    uint64_t v;

    *out = dflt;
    if (ps == NULL || ps[0] == '\0')
        return 0;
    if (util_parse_u64(ps, UINT32_MAX, &v, NULL) < 0)
        return err_set(errp, ERR_INVALID, 0, "page_size must be a non-negative integer");
    if (v > 0)
        *out = v > API_PAGE_MAX ? API_PAGE_MAX : (size_t)v;
    return 0;
}

static enum MHD_Result
list_envs(struct api_req *r, struct env_ctx *ctx)
{
    const char *tok = api_query(r, "page_token");
    int64_t after_created = 0, after_seq = 0;
    cleanup_free struct store_env *v = NULL;
    size_t n = 0, limit;
    struct err *er = NULL;
    json_t *arr, *res;

    if (api_page_size(r, API_PAGE_DEFAULT, &limit, &er) < 0)
        return api_reply_err(r, er);
    if (tok != NULL && tok[0] != '\0' && decode_env_token(tok, &after_created, &after_seq) < 0)
        return api_reply_status(r, 400, "INVALID_ARGUMENT", "page_token is not a valid token");
    if (env_page(ctx, r->auth.project, after_created, after_seq, limit + 1, &v, &n, &er) < 0)
        return api_reply_err(r, er);
    arr = json_array();
    for (size_t i = 0; i < n && i < limit; i++)
        json_array_append_new(arr, env_json(ctx, &v[i]));
    res = json_pack("{s:o}", "environments", arr);
    if (n > limit) {
        cleanup_free char *raw =
            xasprintf("%lld:%lld", (long long)v[limit - 1].created_ms, (long long)v[limit - 1].seq);
        cleanup_free char *t = api_b64_encode(raw, strlen(raw));
        json_object_set_new(res, "next_page_token", json_string(t));
    }
    return api_reply_json(r, 200, res);
}

static const char *
env_id_of(struct api_req *r)
{
    return api_strip_prefix(r->segs[1], "environments/");
}

static enum MHD_Result
get_env(struct api_req *r, struct env_ctx *ctx)
{
    struct store_env e;
    struct err *er = NULL;

    if (env_get_owned(ctx, r->auth.project, env_id_of(r), &e, &er) < 0)
        return api_reply_err(r, er);
    return api_reply_json(r, 200, env_json(ctx, &e));
}

static enum MHD_Result
delete_env(struct api_req *r, struct env_ctx *ctx)
{
    struct store_env e;
    struct err *er = NULL;
    const char *id = env_id_of(r);

    if (env_get_owned(ctx, r->auth.project, id, &e, &er) < 0 || env_destroy(ctx, id, &er) < 0)
        return api_reply_err(r, er);
    {
        const char *kv[] = {"id", id, "key", r->auth.name};
        log_fields(LOG_LEVEL_INFO, "environment deleted", kv, 4);
    }
    return api_reply_json(r, 200, json_object());
}

/* ------------------------------------------------------------------- files */

/* The absolute in-sandbox path of an API file path (relative to the sandbox's root). */
static int
file_path(const char *rest, char **out, struct err **errp)
{
    cleanup_free char *abs = xasprintf("/%s", rest);
    cleanup_free char *norm = NULL;

    if (strcmp(rest, "") == 0 || strspn(rest, "/") == strlen(rest)) {
        *out = xstrdup("/");
        return 0;
    }
    if (check_target(abs, "path", &norm, errp) < 0)
        return -1;
    *out = steal_ptr(&norm);
    return 0;
}

struct list_acc {
    json_t *arr;
    size_t n;    /* entries listed */
    size_t seen; /* entries taken from the sandbox: listed, or skipped (not UTF-8) */
    char *last;  /* path of the last entry taken, where the next page starts after */
    size_t limit;
    bool more;
};

static int
list_entry(const struct sandbox_file_entry *e, void *arg)
{
    struct list_acc *a = arg;
    const char *base = strrchr(e->path, '/');
    json_t *j;

    /* The sandbox sends limit + 1 entries: the last says there are more. A skipped entry
     * counts too, or a page with one would end without its token and lose the rest. */
    if (a->seen == a->limit) {
        a->more = true;
        return 0;
    }
    a->seen++;
    free(a->last);
    a->last = xstrdup(e->path);
    j = json_pack("{s:s, s:s, s:s, s:o}", "name", base != NULL ? base + 1 : e->path, "path",
                  e->path[0] == '/' ? e->path + 1 : e->path, "type",
                  e->type == SANDBOX_FILE_DIR    ? "directory"
                  : e->type == SANDBOX_FILE_LINK ? "symlink"
                  : e->type == SANDBOX_FILE_REG  ? "file"
                                                 : "other",
                  "modified", time_json(e->mtime_ms));
    if (j == NULL)
        return 0; /* a name that is not UTF-8 cannot be listed in JSON */
    if (e->type == SANDBOX_FILE_REG) {
        json_object_set_new(j, "size_bytes", json_sprintf("%llu", (unsigned long long)e->size));
        json_object_set_new(j, "mime_type", json_string(api_mime_type(e->path)));
    }
    json_array_append_new(a->arr, j);
    a->n++;
    return 0;
}

static enum MHD_Result
list_files(struct api_req *r, struct env_ctx *ctx, const char *dir, const char *path)
{
    const char *tok = api_query(r, "page_token");
    cleanup_free char *after = NULL;
    struct list_acc a = {.arr = json_array()};
    struct err *er = NULL;
    bool recursive = api_query_bool(r, "recursive", false, &er);
    json_t *res;

    (void)ctx;
    if (er != NULL || api_page_size(r, API_FILES_DEFAULT, &a.limit, &er) < 0) {
        json_decref(a.arr);
        return api_reply_err(r, er);
    }
    if (tok != NULL && tok[0] != '\0') {
        size_t len;
        if (api_b64_decode(tok, strlen(tok), &after, &len) < 0 || len == 0 || after[0] != '/' ||
            memchr(after, '\0', len) != NULL) {
            json_decref(a.arr);
            return api_reply_status(r, 400, "INVALID_ARGUMENT", "page_token is not a valid token");
        }
        after = xrealloc(after, len + 1);
        after[len] = '\0';
    }
    if (sandbox_file_list(dir, path, recursive, after, a.limit + 1, list_entry, &a, &er) < 0) {
        json_decref(a.arr);
        free(a.last);
        return api_reply_err(r, er);
    }
    res = json_pack("{s:o}", "files", a.arr);
    if (a.more && a.last != NULL) {
        cleanup_free char *t = api_b64_encode(a.last, strlen(a.last));
        json_object_set_new(res, "next_page_token", json_string(t));
    }
    free(a.last);
    return api_reply_json(r, 200, res);
}

/* A download in flight: the sandbox stream, and the request whose log line counts bytes
 * (libmicrohttpd reads the last block before it reports the request completed). */
struct download {
    struct sandbox_stream *s;
    struct api_req *r;
};

static ssize_t
stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct download *d = cls;
    struct err *e = NULL;
    ssize_t n;

    (void)pos;
    n = sandbox_stream_read(d->s, buf, max, &e);
    if (n < 0) {
        log_warnx("download broke off: %s", e->msg);
        err_free(e);
        return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    d->r->bytes_out += (uint64_t)n;
    return n == 0 ? MHD_CONTENT_READER_END_OF_STREAM : n;
}

static void
stream_free(void *cls)
{
    struct download *d = cls;

    sandbox_stream_close(d->s);
    free(d);
}

static enum MHD_Result
reply_stream(struct api_req *r, struct sandbox_stream *s, const char *type,
             const char *disposition)
{
    struct download *d = xcalloc(1, sizeof(*d));
    struct MHD_Response *resp;

    d->s = s;
    d->r = r;
    resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 256 * 1024, stream_reader, d,
                                             stream_free);

    MHD_add_response_header(resp, "Content-Type", type);
    if (disposition != NULL)
        MHD_add_response_header(resp, "Content-Disposition", disposition);
    return api_reply_response(r, 200, resp);
}

static enum MHD_Result
download_file(struct api_req *r, const char *dir, const char *path)
{
    struct sandbox_stream *s = NULL;
    struct err *er = NULL;

    if (sandbox_stream_open_read(dir, path, &s, &er) < 0) {
        if (er->code == ERR_NOT_FOUND) {
            err_free(er);
            return api_reply_status(r, 404, "NOT_FOUND", "no file %s", path);
        }
        return api_reply_err(r, er);
    }
    return reply_stream(r, s, api_mime_type(path), NULL);
}

/* ----------------------------------------------------------------- uploads */

static struct MHD_Response *
empty_response(void)
{
    static char none[1];

    return MHD_create_response_from_buffer(0, none, MHD_RESPMEM_PERSISTENT);
}

/* A media type as a header may carry one, and short enough to be stored whole. */
static bool
media_type_ok(const char *s, size_t cap)
{
    size_t n = strlen(s);

    if (n == 0 || n >= cap)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] > 0x7e)
            return false;
    return true;
}

static enum MHD_Result
upload_start(struct api_req *r, struct env_ctx *ctx, const char *id, const char *path)
{
    const char *cmd = api_header(r, "X-Goog-Upload-Command");
    const char *proto = api_header(r, "X-Goog-Upload-Protocol");
    const char *len = api_header(r, "X-Goog-Upload-Header-Content-Length");
    const char *type = api_header(r, "X-Goog-Upload-Header-Content-Type");
    struct store_upload u;
    struct store_env e;
    struct err *er = NULL;
    uint64_t total;
    bool overwrite = api_query_bool(r, "overwrite", true, &er);
    bool extract = api_query_bool(r, "extract", false, &er);
    cleanup_free char *dir = NULL;
    cleanup_free char *base = NULL;
    cleanup_free char *url = NULL;
    cleanup_free char *enc = NULL;
    struct MHD_Response *resp;

    if (er != NULL)
        return api_reply_err(r, er);
    if (proto == NULL || strcasecmp(proto, "resumable") != 0 || cmd == NULL ||
        strcasecmp(cmd, "start") != 0)
        return api_reply_status(r, 400, "INVALID_ARGUMENT",
                                "an upload starts with X-Goog-Upload-Protocol: resumable and "
                                "X-Goog-Upload-Command: start");
    if (len == NULL || util_parse_u64(len, UINT64_MAX, &total, NULL) < 0)
        return api_reply_status(r, 400, "INVALID_ARGUMENT",
                                "X-Goog-Upload-Header-Content-Length must give the size in bytes");
    if (total > r->srv->cfg->max_upload)
        return api_reply_status(r, 413, "RESOURCE_EXHAUSTED",
                                "upload of %llu bytes is over the limit of %llu bytes",
                                (unsigned long long)total,
                                (unsigned long long)r->srv->cfg->max_upload);
    if (strcmp(path, "/") == 0 && !extract)
        return api_reply_status(r, 400, "INVALID_ARGUMENT", "path: name a file to upload to");
    if (type != NULL && !media_type_ok(type, sizeof(u.mime)))
        return api_reply_status(r, 400, "INVALID_ARGUMENT",
                                "X-Goog-Upload-Header-Content-Type must be a media type: printable "
                                "ASCII, under %zu bytes",
                                sizeof(u.mime));
    if (env_get_owned(ctx, r->auth.project, id, &e, &er) < 0)
        return api_reply_err(r, er);
    if (e.state == STORE_ENV_EXPIRED)
        return api_reply_status(r, 404, "NOT_FOUND", "environment %s has expired", id);
    if (!overwrite && !extract) {
        struct list_acc a = {.arr = json_array(), .limit = 1};
        if (env_use_owned(ctx, r->auth.project, id, &dir, &er) < 0) {
            json_decref(a.arr);
            return api_reply_err(r, er);
        }
        if (sandbox_file_list(dir, path, false, NULL, 1, list_entry, &a, NULL) == 0 && a.seen > 0) {
            json_decref(a.arr);
            free(a.last);
            return api_reply_status(r, 400, "FAILED_PRECONDITION",
                                    "%s exists and overwrite is false", path);
        }
        json_decref(a.arr);
        free(a.last);
    }
    memset(&u, 0, sizeof(u));
    if (util_id_new("upl_", u.id, sizeof(u.id), &er) < 0)
        return api_reply_err(r, er);
    snprintf(u.env_id, sizeof(u.env_id), "%s", id);
    snprintf(u.project, sizeof(u.project), "%s", r->auth.project);
    snprintf(u.path, sizeof(u.path), "%s", path);
    snprintf(u.mime, sizeof(u.mime), "%s", type != NULL ? type : "application/octet-stream");
    u.total = total;
    u.overwrite = overwrite;
    u.extract = extract;
    u.created_ms = util_now_ms();
    if (env_upload_begin(ctx, &u, &er) < 0)
        return api_reply_err(r, er);
    base = api_base_url(r);
    {
        const char *q = strchr(r->raw_uri, '?');
        size_t plen = q != NULL ? (size_t)(q - r->raw_uri) : strlen(r->raw_uri);
        enc = xstrndup(r->raw_uri, plen);
    }
    url = xasprintf("%s%s?upload_id=%s", base, enc, u.id);
    resp = empty_response();
    MHD_add_response_header(resp, "X-Goog-Upload-URL", url);
    MHD_add_response_header(resp, "X-Goog-Upload-Status", "active");
    MHD_add_response_header(resp, "X-Goog-Upload-Chunk-Granularity", "262144");
    return api_reply_response(r, 200, resp);
}

void
api_upload_data(struct api_req *r, const char *data, size_t len)
{
    struct env_ctx *ctx;

    if (r->up_err != NULL)
        return;
    ctx = api_ctx(r, &r->up_err);
    if (ctx == NULL)
        return;
    if (env_upload_append(ctx, &r->up, r->up_offset, data, len, &r->up_err) == 0)
        r->up_offset += len;
}

static json_t *
uploaded_json(const struct store_upload *u)
{
    const char *base = strrchr(u->path, '/');
    json_t *f = json_pack("{s:s, s:s, s:s, s:o, s:s}", "name", base != NULL ? base + 1 : u->path,
                          "path", u->path + 1, "type", u->extract ? "directory" : "file",
                          "size_bytes", json_sprintf("%llu", (unsigned long long)u->total),
                          "mime_type", u->mime);

    return json_pack("{s:[o]}", "files", f);
}

/* A chunk POST: checked on its first call (before the body), answered on its last. */
static enum MHD_Result
upload_chunk(struct api_req *r, struct env_ctx *ctx)
{
    const char *id = api_query(r, "upload_id");
    const char *cmd = api_header(r, "X-Goog-Upload-Command");
    const char *off = api_header(r, "X-Goog-Upload-Offset");
    struct err *er = NULL;
    uint64_t received = 0, offset = 0;
    bool finalize, query, upload, cancel;
    struct MHD_Response *resp;
    char rec[32];

    if (id == NULL)
        return api_reply_status(r, 400, "INVALID_ARGUMENT", "upload_id is missing");
    if (cmd == NULL)
        return api_reply_status(r, 400, "INVALID_ARGUMENT", "X-Goog-Upload-Command is missing");
    finalize = strstr(cmd, "finalize") != NULL;
    query = strstr(cmd, "query") != NULL;
    upload = strstr(cmd, "upload") != NULL;
    cancel = strcasecmp(cmd, "cancel") == 0;
    if (!r->started || r->up.id[0] == '\0') {
        /* First call: headers only. */
        if (env_upload_get(ctx, r->auth.project, id, &r->up, &received, &er) < 0)
            return api_reply_err(r, er);
        if (cancel) {
            /* The resumable protocol's way to give a session up: its bytes go at once. */
            env_upload_abort(ctx, r->up.id);
            resp = empty_response();
            MHD_add_response_header(resp, "X-Goog-Upload-Status", "cancelled");
            return api_reply_response(r, 200, resp);
        }
        if (query) {
            snprintf(rec, sizeof(rec), "%llu", (unsigned long long)received);
            resp = empty_response();
            MHD_add_response_header(resp, "X-Goog-Upload-Status", "active");
            MHD_add_response_header(resp, "X-Goog-Upload-Size-Received", rec);
            return api_reply_response(r, 200, resp);
        }
        if (!upload && !finalize)
            return api_reply_status(r, 400, "INVALID_ARGUMENT",
                                    "X-Goog-Upload-Command must be upload, finalize, query or "
                                    "cancel");
        if (off == NULL || util_parse_u64(off, UINT64_MAX, &offset, NULL) < 0)
            return api_reply_status(r, 400, "INVALID_ARGUMENT",
                                    "X-Goog-Upload-Offset must give the byte offset");
        if (offset != received)
            return api_reply_status(r, 400, "INVALID_ARGUMENT",
                                    "X-Goog-Upload-Offset is %llu but %llu bytes were received",
                                    (unsigned long long)offset, (unsigned long long)received);
        r->up_offset = offset;
        return MHD_YES;
    }
    /* Last call: the body has been staged as it came. */
    if (r->up_err != NULL) {
        struct err *e = r->up_err;
        r->up_err = NULL;
        if (e->code == ERR_INVALID && strstr(e->msg, "more bytes") != NULL) {
            enum MHD_Result res = api_reply_status(r, 413, "RESOURCE_EXHAUSTED", "%s", e->msg);
            err_free(e);
            return res;
        }
        return api_reply_err(r, e);
    }
    if (!finalize) {
        snprintf(rec, sizeof(rec), "%llu", (unsigned long long)r->up_offset);
        resp = empty_response();
        MHD_add_response_header(resp, "X-Goog-Upload-Status", "active");
        MHD_add_response_header(resp, "X-Goog-Upload-Size-Received", rec);
        return api_reply_response(r, 200, resp);
    }
    if (env_upload_finish(ctx, &r->up, &er) < 0) {
        /* What the content caused (a bad archive, a conflict, a full disk, a path that cannot
         * be) ends the session. What it did not (the sandbox did not start or stopped
         * answering, an I/O error) keeps the staged bytes for a finalize sent again: up to
         * --max-upload bytes need not cross the network twice. An extraction is all or
         * nothing (docs/internals/SANDBOX.md): the environment's files are as they were. */
        bool content = er->code == ERR_CONFLICT || er->code == ERR_LIMIT ||
                       er->code == ERR_NOT_FOUND || er->code == ERR_PERM ||
                       (er->code == ERR_INVALID && strstr(er->msg, "upload ended after") == NULL);
        if (content)
            env_upload_abort(ctx, r->up.id);
        if (er->code == ERR_CONFLICT && !r->up.overwrite && !r->up.extract) {
            /* Made since the start was answered: as at the start, not a 409 to resend. */
            err_free(er);
            return api_reply_status(r, 400, "FAILED_PRECONDITION",
                                    "%s exists and overwrite is false", r->up.path);
        }
        return api_reply_err(r, er);
    }
    {
        const char *kv[] = {"env", r->up.env_id, "path", r->up.path, "key", r->auth.name};
        log_fields(LOG_LEVEL_INFO, "file uploaded", kv, 6);
    }
    return api_reply_json(r, 200, uploaded_json(&r->up));
}

/* ------------------------------------------------------------------ egress */

json_t *
api_egress_json(const struct store_egress *x)
{
    json_t *j = json_pack("{s:o, s:s, s:i, s:s, s:s, s:s, s:o, s:o}", "time", time_json(x->ts_ms),
                          "host", x->host, "port", x->port, "method", x->method, "decision",
                          x->decision, "reason", x->reason, "bytes_up",
                          json_sprintf("%llu", (unsigned long long)x->bytes_up), "bytes_down",
                          json_sprintf("%llu", (unsigned long long)x->bytes_down));

    if (j != NULL && x->interaction_id[0] != '\0')
        json_object_set_new(j, "interaction_id", json_string(x->interaction_id));
    return j;
}

static enum MHD_Result
list_egress(struct api_req *r, struct env_ctx *ctx)
{
    const char *tok = api_query(r, "page_token");
    const char *iid = api_query(r, "interaction_id");
    cleanup_free struct store_egress *v = NULL;
    struct store_env e;
    struct err *er = NULL;
    size_t n = 0, limit;
    int64_t after = 0;
    json_t *arr, *res;

    if (env_get_owned(ctx, r->auth.project, env_id_of(r), &e, &er) < 0 ||
        api_page_size(r, API_FILES_DEFAULT, &limit, &er) < 0)
        return api_reply_err(r, er);
    /* Only one interaction's records: "interactions/ID" is accepted as everywhere. */
    iid = iid != NULL && iid[0] != '\0' ? api_strip_prefix(iid, "interactions/") : NULL;
    if (iid != NULL && !util_id_valid("int_", iid))
        return api_reply_status(r, 400, "INVALID_ARGUMENT",
                                "interaction_id is not an interaction id");
    if (tok != NULL && tok[0] != '\0') {
        uint64_t v64;
        if (util_parse_u64(tok, INT64_MAX, &v64, NULL) < 0)
            return api_reply_status(r, 400, "INVALID_ARGUMENT", "page_token is not a valid token");
        after = (int64_t)v64;
    }
    api_egress_sync(); /* a connection that has ended is listed */
    if (store_egress_page(env_store(ctx), e.id, iid, after, limit + 1, &v, &n, &er) < 0)
        return api_reply_err(r, er);
    arr = json_array();
    for (size_t i = 0; i < n && i < limit; i++) {
        json_t *j = api_egress_json(&v[i]);
        if (j != NULL)
            json_array_append_new(arr, j);
    }
    res = json_pack("{s:o}", "records", arr);
    if (n > limit)
        json_object_set_new(res, "next_page_token", json_sprintf("%lld", (long long)v[limit - 1].id));
    return api_reply_json(r, 200, res);
}

/* ------------------------------------------------------------------ router */

static enum MHD_Result
route_files(struct api_req *r, struct env_ctx *ctx)
{
    const char *id = env_id_of(r);
    cleanup_free char *path = NULL;
    cleanup_free char *dir = NULL;
    struct err *er = NULL;
    enum MHD_Result res;
    const char *alt = api_query(r, "alt");
    bool write = r->upload_route;

    if (!api_require(r, write ? "environments.write" : "environments.read", &res))
        return res;
    if (file_path(r->rest, &path, &er) < 0)
        return api_reply_err(r, er);
    if (r->upload_route) {
        if (strcmp(r->method, "PUT") == 0)
            return upload_start(r, ctx, id, path);
        if (strcmp(r->method, "POST") == 0)
            return upload_chunk(r, ctx);
        return api_reply_status(r, 405, "INVALID_ARGUMENT", "uploads use PUT, then POST");
    }
    if (strcmp(r->method, "GET") != 0)
        return api_reply_status(r, 405, "INVALID_ARGUMENT", "%s is not allowed on files",
                                r->method);
    if (env_use_owned(ctx, r->auth.project, id, &dir, &er) < 0)
        return api_reply_err(r, er);
    if (alt != NULL && strcmp(alt, "media") == 0)
        return download_file(r, dir, path);
    return list_files(r, ctx, dir, path);
}

enum MHD_Result
api_route_environments(struct api_req *r)
{
    struct err *er = NULL;
    struct env_ctx *ctx = api_ctx(r, &er);
    enum MHD_Result res;
    bool get = strcmp(r->method, "GET") == 0 || strcmp(r->method, "HEAD") == 0;

    if (ctx == NULL)
        return api_reply_err(r, er);
    if (r->upload_route && !r->has_rest)
        return api_reply_status(r, 404, "NOT_FOUND", "uploads go to environments/ID/files/PATH");
    if (r->has_rest)
        return route_files(r, ctx);
    if (r->nsegs == 1) {
        if (get)
            return api_require(r, "environments.read", &res) ? list_envs(r, ctx) : res;
        if (strcmp(r->method, "POST") == 0)
            return api_require(r, "environments.write", &res) ? create_env(r, ctx) : res;
        return api_reply_status(r, 405, "INVALID_ARGUMENT", "%s is not allowed on environments",
                                r->method);
    }
    if (r->nsegs == 2) {
        if (get)
            return api_require(r, "environments.read", &res) ? get_env(r, ctx) : res;
        if (strcmp(r->method, "DELETE") == 0)
            return api_require(r, "environments.write", &res) ? delete_env(r, ctx) : res;
        return api_reply_status(r, 405, "INVALID_ARGUMENT", "%s is not allowed on an environment",
                                r->method);
    }
    if (r->nsegs == 3 && strcmp(r->segs[2], "egress") == 0) {
        if (!get)
            return api_reply_status(r, 405, "INVALID_ARGUMENT", "the egress log is read with GET");
        return api_require(r, "environments.read", &res) ? list_egress(r, ctx) : res;
    }
    return api_reply_status(r, 404, "NOT_FOUND", "no such route under environments");
}

enum MHD_Result
api_route_files_download(struct api_req *r)
{
    const char *name = r->segs[1];
    const char *suffix = ":download";
    size_t n = strlen(name), sn = strlen(suffix);
    cleanup_free char *id = NULL;
    cleanup_free char *dir = NULL;
    cleanup_free char *disp = NULL;
    struct sandbox_stream *s = NULL;
    struct err *er = NULL;
    struct env_ctx *ctx;
    enum MHD_Result res;

    if (strncmp(name, "environment-", 12) != 0 || n <= 12 + sn ||
        strcmp(name + n - sn, suffix) != 0)
        return api_reply_status(r, 404, "NOT_FOUND", "no such file; snapshots are "
                                "files/environment-ID:download");
    if (strcmp(r->method, "GET") != 0 && strcmp(r->method, "HEAD") != 0)
        return api_reply_status(r, 405, "INVALID_ARGUMENT", "snapshots are downloaded with GET");
    if (!api_require(r, "environments.read", &res))
        return res;
    ctx = api_ctx(r, &er);
    if (ctx == NULL)
        return api_reply_err(r, er);
    id = xstrndup(name + 12, n - 12 - sn);
    if (env_use_owned(ctx, r->auth.project, id, &dir, &er) < 0 ||
        sandbox_stream_open_snapshot(dir, &s, &er) < 0)
        return api_reply_err(r, er);
    disp = xasprintf("attachment; filename=\"environment-%s.tar\"", id);
    return reply_stream(r, s, "application/x-tar", disp);
}
