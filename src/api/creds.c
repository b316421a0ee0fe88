/*
 * The Credentials API (spec §6.6) and the secrets behind it. A credential's secret fields are
 * sealed with AES-256-GCM under the installation's key (DATA/secret.key, 32 random bytes,
 * readable only by root, made on first use), with "project/id" as associated data so a
 * ciphertext cannot be moved to another row. Secrets are write-only on the wire, never logged,
 * and wiped from memory after use; the egress proxy receives them as headers to inject.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "api_int.h"

#define KEY_LEN   32
#define NONCE_LEN 12
#define TAG_LEN   16

/* ------------------------------------------------------------------ sealing */

static int
load_key(const char *data_dir, unsigned char key[KEY_LEN], struct err **errp)
{
    cleanup_free char *path = xasprintf("%s/secret.key", data_dir);

    return util_key_file(path, key, KEY_LEN, errp);
}

int
api_seal(const char *data_dir, const char *aad, const char *plain, void **out, size_t *out_len,
         struct err **errp)
{
    unsigned char key[KEY_LEN];
    size_t len = strlen(plain);
    unsigned char *blob = xmalloc(NONCE_LEN + len + TAG_LEN);
    EVP_CIPHER_CTX *ctx = NULL;
    int n = 0, fin = 0, rc = -1;

    if (load_key(data_dir, key, errp) < 0)
        goto out;
    ctx = EVP_CIPHER_CTX_new();
    if (RAND_bytes(blob, NONCE_LEN) != 1 || ctx == NULL ||
        EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, blob) != 1 ||
        EVP_EncryptUpdate(ctx, NULL, &n, (const unsigned char *)aad, (int)strlen(aad)) != 1 ||
        EVP_EncryptUpdate(ctx, blob + NONCE_LEN, &n, (const unsigned char *)plain, (int)len) !=
            1 ||
        EVP_EncryptFinal_ex(ctx, blob + NONCE_LEN + n, &fin) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, blob + NONCE_LEN + n + fin) !=
            1) {
        err_set(errp, ERR_INTERNAL, 0, "seal a secret");
        goto out;
    }
    *out = blob;
    *out_len = NONCE_LEN + (size_t)n + (size_t)fin + TAG_LEN;
    blob = NULL;
    rc = 0;
out:
    explicit_bzero(key, sizeof(key));
    EVP_CIPHER_CTX_free(ctx);
    free(blob);
    return rc;
}

int
api_unseal(const char *data_dir, const char *aad, const void *blob, size_t len, char **plain,
           struct err **errp)
{
    unsigned char key[KEY_LEN];
    const unsigned char *b = blob;
    size_t clen;
    char *out;
    EVP_CIPHER_CTX *ctx = NULL;
    int n = 0, fin = 0, rc = -1;

    if (len < NONCE_LEN + TAG_LEN)
        return err_set(errp, ERR_INTERNAL, 0, "a stored secret is truncated");
    clen = len - NONCE_LEN - TAG_LEN;
    out = xmalloc(clen + 1);
    if (load_key(data_dir, key, errp) < 0)
        goto out;
    ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL || EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, b) != 1 ||
        EVP_DecryptUpdate(ctx, NULL, &n, (const unsigned char *)aad, (int)strlen(aad)) != 1 ||
        EVP_DecryptUpdate(ctx, (unsigned char *)out, &n, b + NONCE_LEN, (int)clen) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN,
                            (void *)(uintptr_t)(b + NONCE_LEN + clen)) != 1 ||
        EVP_DecryptFinal_ex(ctx, (unsigned char *)out + n, &fin) <= 0) {
        err_set(errp, ERR_INTERNAL, 0, "a stored secret does not open (wrong key or tampered)");
        goto out;
    }
    out[n + fin] = '\0';
    *plain = out;
    out = NULL;
    rc = 0;
out:
    explicit_bzero(key, sizeof(key));
    EVP_CIPHER_CTX_free(ctx);
    if (out != NULL) {
        explicit_bzero(out, clen + 1);
        free(out);
    }
    return rc;
}

/* --------------------------------------------------------------- validation */

struct cred_type {
    const char *name;
    const char *const *fields;  /* every field it may carry, besides type and id */
    const char *const *secrets; /* which of them are secret (sealed, never returned) */
    const char *const *required;
};

static const char *const ev_fields[] = {"value", "injection_location", "trusted_domains", NULL};
static const char *const ev_secrets[] = {"value", NULL};
static const char *const ev_required[] = {"value", "injection_location", NULL};
static const char *const bt_fields[] = {"token", "header_name", "prefix", NULL};
static const char *const bt_secrets[] = {"token", NULL};
static const char *const bt_required[] = {"token", NULL};
static const char *const oa_fields[] = {"client_id", "client_secret", "refresh_token",
                                        "token_url", "scopes", NULL};
static const char *const oa_secrets[] = {"client_secret", "refresh_token", NULL};
static const char *const oa_required[] = {"client_id", "client_secret", "refresh_token",
                                          "token_url", NULL};

static const struct cred_type types[] = {
    {"environment_variable", ev_fields, ev_secrets, ev_required},
    {"bearer_token", bt_fields, bt_secrets, bt_required},
    {"oauth2", oa_fields, oa_secrets, oa_required},
};

static bool
in_list(const char *const *l, const char *s)
{
    for (; *l != NULL; l++)
        if (strcmp(*l, s) == 0)
            return true;
    return false;
}

static const struct cred_type *
type_of(const char *name)
{
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        if (name != NULL && strcmp(types[i].name, name) == 0)
            return &types[i];
    return NULL;
}

static bool
valid_cred_id(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > 127 || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
        return false; /* a path segment of its own: /credentials/.. is not a credential */
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '-' || s[i] == '_' || s[i] == '.'))
            return false;
    return true;
}

/* Checks one field's value. */
static int
check_field(const char *name, json_t *v, struct err **errp)
{
    if (strcmp(name, "injection_location") == 0) {
        size_t i, n = json_is_array(v) ? json_array_size(v) : 1;
        if (!json_is_string(v) && !(json_is_array(v) && n > 0))
            return err_set(errp, ERR_INVALID, 0,
                           "injection_location must be \"header\" or a list of locations");
        for (i = 0; i < n; i++) {
            json_t *e = json_is_array(v) ? json_array_get(v, i) : v;
            const char *s = json_string_value(e);
            if (s == NULL || (strcmp(s, "header") != 0 && strcmp(s, "query") != 0 &&
                              strcmp(s, "body") != 0))
                return err_set(errp, ERR_INVALID, 0,
                               "injection_location: each is header, query or body");
            if (strcmp(s, "header") != 0)
                return err_set(errp, ERR_INVALID, 0,
                               "injection_location: paddock injects into headers only; %s "
                               "injection is not supported",
                               s);
        }
        return 0;
    }
    if (strcmp(name, "trusted_domains") == 0 || strcmp(name, "scopes") == 0) {
        size_t i;
        json_t *e;
        if (!json_is_array(v) || json_array_size(v) > 64)
            return err_set(errp, ERR_INVALID, 0, "%s must be a list of at most 64 strings", name);
        json_array_foreach(v, i, e) {
            if (!json_is_string(e) || json_string_length(e) == 0 || json_string_length(e) > 253)
                return err_set(errp, ERR_INVALID, 0, "%s[%zu] must be a non-empty string", name,
                               i);
        }
        if (strcmp(name, "trusted_domains") == 0) {
            /* The same rules as an allowlist entry's domain. */
            json_t *net = json_pack("{s:[]}", "allowlist");
            struct egress_policy *p = NULL;
            int r;
            json_array_foreach(v, i, e)
                json_array_append_new(json_object_get(net, "allowlist"),
                                      json_pack("{s:O}", "domain", e));
            r = egress_policy_compile(net, &p, errp);
            json_decref(net);
            for (size_t k = 0; r == 0 && k < p->n; k++)
                if (p->rules[k].kind == EGRESS_RULE_ANY)
                    r = err_set(errp, ERR_INVALID, 0,
                                "\"*\" would trust every host with the secret; name the domains "
                                "it is for");
            egress_policy_free(p);
            if (r < 0)
                return err_wrap(errp, "trusted_domains");
        }
        return 0;
    }
    if (!json_is_string(v))
        return err_set(errp, ERR_INVALID, 0, "%s must be a string", name);
    /* Every string of a credential may end up in a request head: no control characters. */
    if (strlen(json_string_value(v)) != json_string_length(v) || json_string_length(v) > 16384 ||
        !egress_header_value_ok(json_string_value(v)))
        return err_set(errp, ERR_INVALID, 0,
                       "%s must be at most 16384 bytes, without control characters (CR, LF, "
                       "NUL...; tab is allowed)",
                       name);
    if (strcmp(name, "token_url") == 0 && !api_oauth_url_ok(json_string_value(v)))
        return err_set(errp, ERR_INVALID, 0,
                       "token_url must be an https:// URL without user:password@: the token "
                       "request carries the client secret, in its body");
    if (strcmp(name, "header_name") == 0) {
        if (!egress_header_name_ok(json_string_value(v)))
            return err_set(errp, ERR_INVALID, 0,
                           "header_name is not a header field name (a token of at most 64 "
                           "bytes)");
        if (!egress_header_injectable(json_string_value(v)))
            return err_set(errp, ERR_INVALID, 0,
                           "header_name '%s' frames, routes or belongs to one hop of a request "
                           "(Host, Content-Length, Transfer-Encoding, Connection, Proxy-*...); "
                           "it cannot carry a credential",
                           json_string_value(v));
    }
    return 0;
}

/* Whether the comma list mask names field k. */
static bool
mask_names(const char *mask, const char *k)
{
    for (const char *p = mask; *p != '\0';) {
        size_t n = strcspn(p, ",");
        if (strlen(k) == n && strncmp(p, k, n) == 0)
            return true;
        p += n;
        if (*p == ',')
            p++;
    }
    return false;
}

/*
 * Splits a validated body into the config (non-secret) and secret objects. With mask (a
 * PATCH), only the listed fields are taken from body into the existing config and secret, and
 * a listed field the body leaves out (or sets to null) is cleared: back to its default, or an
 * error if it is required (AIP-134). Without a mask, a null clears a field the same way.
 */
static int
split(const struct cred_type *t, json_t *body, const char *mask, json_t *config, json_t *secret,
      struct err **errp)
{
    const char *k;
    json_t *v;

    json_object_foreach(body, k, v) {
        if (strcmp(k, "type") == 0 || strcmp(k, "id") == 0)
            continue;
        if (!in_list(t->fields, k)) {
            cleanup_free char *ek = log_escape(k, strlen(k), 64);
            return err_set(errp, ERR_INVALID, 0, "unknown field '%s' for a %s credential", ek,
                           t->name);
        }
        if (!json_is_null(v) && check_field(k, v, errp) < 0)
            return -1;
        if (mask != NULL && !mask_names(mask, k))
            continue; /* only fields the mask names change */
        if (json_is_null(v)) {
            json_object_del(config, k);
            json_object_del(secret, k);
        } else {
            json_object_set(in_list(t->secrets, k) ? secret : config, k, v);
        }
    }
    if (mask != NULL) {
        for (const char *p = mask; *p != '\0';) {
            size_t n = strcspn(p, ",");
            cleanup_free char *f = xstrndup(p, n);
            if (n > 0 && !in_list(t->fields, f))
                return err_set(errp, ERR_INVALID, 0, "update_mask names '%s', not a field of a "
                               "%s credential", f, t->name);
            if (n > 0 && json_object_get(body, f) == NULL) {
                api_wipe_json(json_object_get(secret, f));
                json_object_del(config, f);
                json_object_del(secret, f);
            }
            p += n;
            if (*p == ',')
                p++;
        }
    }
    for (size_t i = 0; t->required[i] != NULL; i++)
        if (json_object_get(config, t->required[i]) == NULL &&
            json_object_get(secret, t->required[i]) == NULL)
            return err_set(errp, ERR_INVALID, 0, "%s is required for a %s credential",
                           t->required[i], t->name);
    return 0;
}

/* ------------------------------------------------------------------ routes */

static json_t *
cred_json(const struct store_cred *c)
{
    char a[40], b[40];

    util_format_time(c->created_ms, a, sizeof(a));
    util_format_time(c->updated_ms, b, sizeof(b));
    return json_pack("{s:s, s:s, s:s, s:s, s:s}", "id", c->id, "type", c->type, "status",
                     c->status, "create_time", a, "update_time", b);
}

static char *
aad_of(const char *project, const char *id)
{
    return xasprintf("%s/%s", project, id);
}

static json_t *
body_json(struct api_req *r, enum MHD_Result *res)
{
    json_error_t je;
    json_t *j = r->body.len == 0 ? json_object()
                                 : json_loadb(r->body.data, r->body.len, JSON_REJECT_DUPLICATES,
                                              &je);

    if (j == NULL) {
        /* Not jansson's text: it quotes up to 20 bytes of the body near the error, which may
         * be a piece of a secret, and the SDK puts the message into its exception. */
        cleanup_free char *why = api_json_error(&je);
        *res = api_reply_status(r, 400, "INVALID_ARGUMENT", "%s", why);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        *res = api_reply_status(r, 400, "INVALID_ARGUMENT", "request body must be a JSON object");
        return NULL;
    }
    return j;
}

/* Seals secret (a JSON object) into c->secret. Wipes the text. */
static int
seal_into(const char *data_dir, struct store_cred *c, json_t *secret, struct err **errp)
{
    char *text = json_dumps(secret, JSON_COMPACT);
    cleanup_free char *aad = aad_of(c->project, c->id);
    int rc;

    if (text == NULL)
        return err_set(errp, ERR_INTERNAL, 0, "encode a secret");
    rc = api_seal(data_dir, aad, text, &c->secret, &c->secret_len, errp);
    explicit_bzero(text, strlen(text));
    free(text);
    return rc;
}

/* The canonical text of a JSON object, for comparing two; free with free_wiped(). */
static char *
canonical(json_t *j)
{
    return json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
}

/*
 * Whether the stored credential c->id is the one this create asks for: same type, same
 * settings, same secret. Then the create is a repeat (the SDK sends a create again after a
 * connection error, and after any 409), and it answers with what is stored. The secrets are
 * compared in constant time.
 */
static bool
same_as_stored(struct api_req *r, struct env_ctx *ctx, const struct store_cred *c, json_t *config,
               json_t *secret, struct store_cred *stored)
{
    json_t *sconfig = NULL, *ssecret = NULL;
    char *a = NULL, *b = NULL;
    bool same = false;

    if (api_cred_secret(r->srv->cfg->data_dir, env_store(ctx), c->project, c->id, stored, &sconfig,
                        &ssecret, NULL) < 0)
        return false;
    if (strcmp(stored->type, c->type) == 0 && json_equal(sconfig, config)) {
        a = canonical(secret);
        b = canonical(ssecret);
        same =
            a != NULL && b != NULL && strlen(a) == strlen(b) && CRYPTO_memcmp(a, b, strlen(a)) == 0;
    }
    free_wiped(a);
    free_wiped(b);
    api_wipe_json(ssecret);
    json_decref(ssecret);
    json_decref(sconfig);
    if (!same)
        store_cred_clear(stored);
    return same;
}

static enum MHD_Result
create_cred(struct api_req *r, struct env_ctx *ctx)
{
    enum MHD_Result res;
    json_t *body = body_json(r, &res), *config = NULL, *secret = NULL;
    const struct cred_type *t;
    const char *id;
    struct store_cred c, stored;
    struct err *er = NULL;
    bool repeat = false;

    if (body == NULL)
        return res;
    memset(&c, 0, sizeof(c));
    t = type_of(json_string_value(json_object_get(body, "type")));
    id = json_string_value(json_object_get(body, "id"));
    if (t == NULL) {
        json_decref(body);
        return api_reply_status(r, 400, "INVALID_ARGUMENT",
                                "type must be environment_variable, bearer_token or oauth2");
    }
    if (id == NULL || !valid_cred_id(id)) {
        json_decref(body);
        return api_reply_status(r, 400, "INVALID_ARGUMENT",
                                "id is required: 1-127 letters, digits, '-', '_' or '.'");
    }
    config = json_object();
    secret = json_object();
    snprintf(c.project, sizeof(c.project), "%s", r->auth.project);
    snprintf(c.id, sizeof(c.id), "%s", id);
    snprintf(c.type, sizeof(c.type), "%s", t->name);
    snprintf(c.status, sizeof(c.status), "active");
    c.created_ms = c.updated_ms = util_now_ms();
    if (split(t, body, NULL, config, secret, &er) < 0) {
        json_decref(body);
        goto fail;
    }
    json_decref(body); /* config and secret hold what they took from it */
    if (seal_into(r->srv->cfg->data_dir, &c, secret, &er) < 0)
        goto fail;
    c.config = json_dumps(config, JSON_COMPACT);
    if (store_cred_put(env_store(ctx), &c, true, &er) < 0) {
        if (er->code != ERR_CONFLICT || !same_as_stored(r, ctx, &c, config, secret, &stored))
            goto fail;
        err_free(er);
        er = NULL;
        store_cred_clear(&c);
        c = stored;
        repeat = true;
    }
    api_wipe_json(secret);
    json_decref(config);
    json_decref(secret);
    {
        const char *kv[] = {"id", c.id, "type", c.type, "key", r->auth.name};
        log_fields(LOG_LEVEL_INFO,
                   repeat ? "credential create repeated: the same one exists"
                          : "credential created",
                   kv, 6);
    }
    /* Environments that name it pick it up at the next reconcile (within a second). */
    if (!repeat)
        api_oauth_forget(c.project, c.id);
    res = api_reply_json(r, 200, cred_json(&c));
    store_cred_clear(&c);
    return res;

fail:
    api_wipe_json(secret);
    json_decref(config);
    json_decref(secret);
    store_cred_clear(&c);
    return api_reply_err(r, er);
}

struct update {
    struct api_req *r;
    const char *id, *mask;
    json_t *body;
    struct store_cred c; /* the credential as written */
};

/* Reads, changes and writes the credential in one write transaction: two PATCHes at once
 * cannot write back what the other replaced (a rotated token undone), nor a delete and
 * re-create in between be overwritten with the old secret and type. */
static int
update_tx(struct store *s, void *arg, struct err **errp)
{
    struct update *u = arg;
    struct store_cred *c = &u->c;
    const struct cred_type *t;
    const char *ty = json_string_value(json_object_get(u->body, "type"));
    json_t *config = NULL, *secret = NULL;
    char *plain = NULL;
    cleanup_free char *aad = NULL;
    int rc = -1;

    if (store_cred_get(s, u->r->auth.project, u->id, c, errp) < 0)
        return -1;
    t = type_of(c->type);
    if (json_object_get(u->body, "type") != NULL && (ty == NULL || strcmp(ty, c->type) != 0))
        return err_set(errp, ERR_INVALID, 0, "type cannot change (this credential is %s)", c->type);
    if (json_object_get(u->body, "id") != NULL)
        return err_set(errp, ERR_INVALID, 0, "id cannot change");
    aad = aad_of(c->project, c->id);
    config = json_loads(c->config, 0, NULL);
    if (api_unseal(u->r->srv->cfg->data_dir, aad, c->secret, c->secret_len, &plain, errp) < 0)
        goto out;
    secret = json_loads(plain, 0, NULL);
    explicit_bzero(plain, strlen(plain));
    free(plain);
    if (config == NULL || secret == NULL) {
        err_set(errp, ERR_INTERNAL, 0, "stored credential is damaged");
        goto out;
    }
    free(c->config);
    c->config = NULL;
    explicit_bzero(c->secret, c->secret_len);
    free(c->secret);
    c->secret = NULL;
    c->updated_ms = util_now_ms();
    if (split(t, u->body, u->mask, config, secret, errp) < 0 ||
        seal_into(u->r->srv->cfg->data_dir, c, secret, errp) < 0)
        goto out;
    c->config = json_dumps(config, JSON_COMPACT);
    rc = store_cred_put(s, c, false, errp);
out:
    json_decref(config);
    json_decref(secret);
    return rc;
}

static enum MHD_Result
update_cred(struct api_req *r, struct env_ctx *ctx, const char *id)
{
    enum MHD_Result res;
    const char *mask = api_query(r, "update_mask");
    struct update u;
    struct err *er = NULL;

    memset(&u, 0, sizeof(u));
    u.r = r;
    u.id = id;
    u.mask = mask != NULL && mask[0] != '\0' ? mask : NULL;
    /* api_query() sees the first only: a second mask (a field to rotate) would be ignored
     * while the answer said 200. */
    if (api_query_count(r, "update_mask") > 1)
        return api_reply_status(r, 400, "INVALID_ARGUMENT",
                                "update_mask is given more than once: list the fields in one, "
                                "separated by commas");
    u.body = body_json(r, &res);
    if (u.body == NULL)
        return res;
    /* Spec §3.6: an update config carries type (the SDK always sends it). */
    if (!json_is_string(json_object_get(u.body, "type"))) {
        json_decref(u.body);
        return api_reply_status(r, 400, "INVALID_ARGUMENT",
                                "type is required: the credential's type, which cannot change");
    }
    if (store_tx(env_store(ctx), update_tx, &u, &er) < 0) {
        json_decref(u.body);
        store_cred_clear(&u.c);
        return api_reply_err(r, er);
    }
    json_decref(u.body);
    {
        const char *kv[] = { "id", u.c.id, "key", r->auth.name };
        log_fields(LOG_LEVEL_INFO, "credential updated", kv, 4);
    }
    api_oauth_forget(u.c.project, u.c.id);
    res = api_reply_json(r, 200, cred_json(&u.c));
    store_cred_clear(&u.c);
    return res;
}

static enum MHD_Result
list_creds(struct api_req *r, struct env_ctx *ctx)
{
    const char *tok = api_query(r, "page_token");
    struct store_cred *v = NULL;
    size_t n = 0, limit = API_PAGE_DEFAULT;
    struct err *er = NULL;
    json_t *arr, *res;

    if (api_page_size(r, API_PAGE_DEFAULT, &limit, &er) < 0)
        return api_reply_err(r, er);
    if (store_cred_page(env_store(ctx), r->auth.project, tok, limit + 1, &v, &n, &er) < 0)
        return api_reply_err(r, er);
    arr = json_array();
    for (size_t i = 0; i < n && i < limit; i++)
        json_array_append_new(arr, cred_json(&v[i]));
    res = json_pack("{s:o}", "credentials", arr);
    if (n > limit)
        json_object_set_new(res, "next_page_token", json_string(v[limit - 1].id));
    for (size_t i = 0; i < n; i++)
        store_cred_clear(&v[i]);
    free(v);
    return api_reply_json(r, 200, res);
}

enum MHD_Result
api_route_credentials(struct api_req *r)
{
    struct err *er = NULL;
    struct env_ctx *ctx = api_ctx(r, &er);
    bool get = strcmp(r->method, "GET") == 0 || strcmp(r->method, "HEAD") == 0;
    enum MHD_Result res;
    const char *id;

    if (ctx == NULL)
        return api_reply_err(r, er);
    if (r->nsegs == 1) {
        if (get)
            return api_require(r, "credentials.read", &res) ? list_creds(r, ctx) : res;
        if (strcmp(r->method, "POST") == 0)
            return api_require(r, "credentials.write", &res) ? create_cred(r, ctx) : res;
        return api_reply_status(r, 405, "INVALID_ARGUMENT", "%s is not allowed on credentials",
                                r->method);
    }
    if (r->nsegs != 2)
        return api_reply_status(r, 404, "NOT_FOUND", "no such route under credentials");
    id = api_strip_prefix(r->segs[1], "credentials/");
    if (get) {
        struct store_cred c;
        if (!api_require(r, "credentials.read", &res))
            return res;
        if (store_cred_get(env_store(ctx), r->auth.project, id, &c, &er) < 0)
            return api_reply_err(r, er);
        res = api_reply_json(r, 200, cred_json(&c));
        store_cred_clear(&c);
        return res;
    }
    if (strcmp(r->method, "PATCH") == 0)
        return api_require(r, "credentials.write", &res) ? update_cred(r, ctx, id) : res;
    if (strcmp(r->method, "DELETE") == 0) {
        if (!api_require(r, "credentials.write", &res))
            return res;
        if (store_cred_delete(env_store(ctx), r->auth.project, id, &er) < 0)
            return api_reply_err(r, er);
        {
            const char *kv[] = {"id", id, "key", r->auth.name};
            log_fields(LOG_LEVEL_INFO, "credential deleted", kv, 4);
        }
        api_oauth_forget(r->auth.project, id);
        return api_reply_json(r, 200, json_object());
    }
    return api_reply_status(r, 405, "INVALID_ARGUMENT", "%s is not allowed on a credential",
                            r->method);
}

/* -------------------------------------------------------- use by the proxy */

int
api_cred_secret(const char *data_dir, struct store *s, const char *project, const char *id,
                struct store_cred *meta, json_t **config, json_t **secret, struct err **errp)
{
    cleanup_free char *aad = aad_of(project, id);
    char *plain = NULL;

    if (store_cred_get(s, project, id, meta, errp) < 0)
        return -1;
    if (api_unseal(data_dir, aad, meta->secret, meta->secret_len, &plain, errp) < 0) {
        store_cred_clear(meta);
        return -1;
    }
    *secret = json_loads(plain, 0, NULL);
    explicit_bzero(plain, strlen(plain));
    free(plain);
    *config = json_loads(meta->config, 0, NULL);
    if (*secret == NULL || *config == NULL) {
        json_decref(*secret);
        json_decref(*config);
        store_cred_clear(meta);
        return err_set(errp, ERR_INTERNAL, 0, "credential %s is damaged", id);
    }
    return 0;
}

struct rotate {
    const char *data_dir, *project, *id, *field, *old, *new;
};

static int
rotate_tx(struct store *s, void *arg, struct err **errp)
{
    struct rotate *a = arg;
    struct store_cred c;
    cleanup_free char *aad = aad_of(a->project, a->id);
    char *plain = NULL;
    json_t *secret = NULL;
    const char *cur;
    int rc = -1;

    memset(&c, 0, sizeof(c));
    if (store_cred_get(s, a->project, a->id, &c, errp) < 0)
        return -1;
    if (api_unseal(a->data_dir, aad, c.secret, c.secret_len, &plain, errp) < 0)
        goto out;
    secret = json_loads(plain, 0, NULL);
    explicit_bzero(plain, strlen(plain));
    free(plain);
    cur = json_string_value(json_object_get(secret, a->field));
    if (cur == NULL) {
        err_set(errp, ERR_INTERNAL, 0, "stored credential is damaged");
        goto out;
    }
    if (strcmp(cur, a->old) != 0) {
        rc = 0; /* changed meanwhile (a PATCH): that value stays */
        goto out;
    }
    api_wipe_json(json_object_get(secret, a->field));
    json_object_set_new(secret, a->field, json_string(a->new));
    explicit_bzero(c.secret, c.secret_len);
    free(c.secret);
    c.secret = NULL;
    c.updated_ms = util_now_ms();
    if (seal_into(a->data_dir, &c, secret, errp) == 0)
        rc = store_cred_put(s, &c, false, errp);
out:
    api_wipe_json(secret);
    json_decref(secret);
    store_cred_clear(&c);
    return rc;
}

int
api_cred_rotate(const char *data_dir, struct store *s, const char *project, const char *id,
                const char *field, const char *old_value, const char *new_value, struct err **errp)
{
    struct rotate a = { data_dir, project, id, field, old_value, new_value };

    return store_tx(s, rotate_tx, &a, errp);
}
