/*
 * The Interactions and Agents surfaces (spec §2, §3.1, §3.2, §5): create (unary, streaming
 * and background), get (JSON or SSE with resume), cancel and delete of interactions; CRUD
 * of stored agents. The runs themselves belong to agent/.
 */
#include <stdlib.h>
#include <string.h>

#include "agent/agent.h"
#include "api_int.h"

static struct agent_service *service;

void
api_set_agents(struct agent_service *svc)
{
    service = svc;
}

static json_t *
parse_body(struct api_req *r, enum MHD_Result *res)
{
    json_error_t jerr;
    json_t *body;

    if (r->body.len == 0) {
        body = json_object();
    } else {
        body = json_loadb(r->body.data, r->body.len, JSON_REJECT_DUPLICATES, &jerr);
        if (body == NULL) {
            cleanup_free char *why = api_json_error(&jerr);
            *res = api_reply_status(r, 400, "INVALID_ARGUMENT", "%s", why);
            return NULL;
        }
    }
    if (!json_is_object(body)) {
        json_decref(body);
        *res = api_reply_status(r, 400, "INVALID_ARGUMENT", "request body must be a JSON object");
        return NULL;
    }
    return body;
}

/* ------------------------------------------------------------------- SSE */

struct sse {
    struct api_req *r;
    struct env_ctx *ctx;
    char id[40];
    char project[64];
    int64_t cursor;
    struct buf out;
    size_t off;
    bool done;
    bool drop_after; /* store: false — the interaction goes when its stream ends */
    int64_t quiet_since; /* monotonic */
};

/* Keep-alive comments while nothing happens, so proxies keep the stream open. */
#define SSE_KEEPALIVE_MS 15000
#define SSE_BATCH_MAX    (64u << 20) /* bytes of events one fill holds */

static void
sse_fill(struct sse *x)
{
    struct store *s = env_store(x->ctx);
    struct store_interaction it = { 0 };
    struct store_event *v = NULL;
    size_t n = 0;
    bool final;

    buf_free(&x->out);
    buf_init(&x->out, SSE_BATCH_MAX);
    x->off = 0;
    for (;;) {
        /* The status first: once it is final every event is already stored. */
        if (store_interaction_get(s, x->id, &it, NULL) < 0) {
            buf_printf(&x->out, NULL,
                       "data: {\"event_type\":\"error\",\"error\":{\"code\":"
                       "\"not_found\",\"message\":\"the interaction is gone\"}}"
                       "\n\ndata: [DONE]\n\n");
            x->done = true;
            return;
        }
        final = agent_status_final(it.status);
        store_interaction_clear(&it);
        if (store_events_after(s, x->id, x->cursor, 64, &v, &n, NULL) < 0)
            n = 0;
        if (n > 0) {
            size_t i;
            for (i = 0; i < n; i++) {
                /* A batch ends before the event that would take it past its cap; that event
                 * opens the next one (the cursor stays before it). */
                if (x->out.len > 0 && strlen(v[i].data) + 32 > SSE_BATCH_MAX - x->out.len)
                    break;
                if (buf_printf(&x->out, NULL, "id: %lld\ndata: %s\n\n", (long long)v[i].seq,
                               v[i].data) < 0) {
                    /* One event over the whole cap: the stream says so, never skips it. */
                    buf_init(&x->out, SSE_BATCH_MAX);
                    buf_printf(&x->out, NULL,
                               "data: {\"event_type\":\"error\",\"error\":{\"code\":"
                               "\"internal\",\"message\":\"event %lld is larger than a "
                               "stream sends\"}}\n\ndata: [DONE]\n\n",
                               (long long)v[i].seq);
                    x->done = true;
                    break;
                }
                x->cursor = v[i].seq;
            }
            for (i = 0; i < n; i++)
                free(v[i].data);
            free(v);
            x->quiet_since = util_mono_ms();
            return;
        }
        free(v);
        if (final) {
            buf_printf(&x->out, NULL, "data: [DONE]\n\n");
            x->done = true;
            return;
        }
        if (agent_stopping(service)) {
            x->done = true; /* the server stops: the stream ends, a client resumes later */
            return;
        }
        if (util_mono_ms() - x->quiet_since >= SSE_KEEPALIVE_MS) {
            buf_printf(&x->out, NULL, ": keep-alive\n\n");
            x->quiet_since = util_mono_ms();
            return;
        }
        agent_wait(service, x->id, x->cursor, 1000);
    }
}

static ssize_t
sse_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct sse *x = cls;
    size_t n;

    (void)pos;
    if (x->off >= x->out.len) {
        if (x->done)
            return MHD_CONTENT_READER_END_OF_STREAM;
        sse_fill(x);
    }
    n = x->out.len - x->off;
    if (n > max)
        n = max;
    memcpy(buf, x->out.data + x->off, n);
    x->off += n;
    x->r->bytes_out += n;
    return (ssize_t)n;
}

static void
sse_free(void *cls)
{
    struct sse *x = cls;

    if (x->drop_after && x->done)
        store_interaction_delete(env_store(x->ctx), x->id, NULL);
    api_ctx_release(x->ctx);
    buf_free(&x->out);
    free(x);
}

static enum MHD_Result
reply_sse(struct api_req *r, struct env_ctx *ctx, const char *id, int64_t after, bool drop)
{
    struct sse *x = xcalloc(1, sizeof(*x));
    struct MHD_Response *resp;

    x->r = r;
    /* The stream owns the context from here: MHD frees the response (sse_free, which may
     * still write to the store) after the request has completed, when a context still
     * owned by the request would already be back in the pool and in another thread's hands
     * (SQLite connections are opened without a mutex: two threads on one corrupted reads,
     * "file is not a database", in CI). */
    x->ctx = ctx;
    if (r->ctx == ctx)
        r->ctx = NULL;
    snprintf(x->id, sizeof(x->id), "%s", id);
    snprintf(x->project, sizeof(x->project), "%s", r->auth.project);
    x->cursor = after;
    x->drop_after = drop;
    x->quiet_since = util_mono_ms();
    buf_init(&x->out, 64u << 20);
    resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 64 * 1024, sse_reader, x, sse_free);
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    return api_reply_response(r, 200, resp);
}

/* ----------------------------------------------------------- interactions */

static enum MHD_Result
reply_interaction(struct api_req *r, struct env_ctx *ctx, const char *id, bool include_input)
{
    json_t *j;
    struct err *er = NULL;

    if (agent_interaction_json(env_store(ctx), r->auth.project, id, include_input, &j, &er) < 0)
        return api_reply_err(r, er);
    return api_reply_json(r, 200, j);
}

static const char *
status_of(struct env_ctx *ctx, const char *id, char *buf, size_t len)
{
    struct store_interaction it = { 0 };

    if (store_interaction_get(env_store(ctx), id, &it, NULL) < 0)
        return NULL;
    snprintf(buf, len, "%s", it.status);
    store_interaction_clear(&it);
    return buf;
}

static enum MHD_Result
create_interaction(struct api_req *r, struct env_ctx *ctx)
{
    enum MHD_Result res;
    json_t *body = parse_body(r, &res);
    const char *idem = api_header(r, "Idempotency-Key");
    struct agent_caller who = { r->auth.project, r->auth.name };
    struct err *er = NULL;
    char id[40], st[24];
    bool existing = false, stream, background, stored;
    int retry = 0;

    if (body == NULL)
        return res;
    if (!api_may_bind_credentials(r, json_object_get(body, "environment"), "environment.", &res)) {
        json_decref(body);
        return res;
    }
    if (idem != NULL && (idem[0] == '\0' || strlen(idem) > 255)) {
        json_decref(body);
        return api_reply_status(r, 400, "INVALID_ARGUMENT",
                                "Idempotency-Key must be 1 to 255 characters");
    }
    stream = json_is_true(json_object_get(body, "stream"));
    background = json_is_true(json_object_get(body, "background"));
    stored = !json_is_false(json_object_get(body, "store"));
    if (agent_create(service, ctx, &who, body, idem, id, &existing, &retry, &er) < 0) {
        json_decref(body);
        if (er->code == ERR_LIMIT) {
            r->retry_after_s = retry > 0 ? (unsigned)retry : 1;
            res = api_reply_status(r, 429, "RESOURCE_EXHAUSTED", "%s", er->msg);
            err_free(er);
            return res;
        }
        return api_reply_err(r, er);
    }
    json_decref(body);
    {
        const char *kv[] = { "id", id, "key", r->auth.name, "replayed", existing ? "yes" : "no" };
        log_fields(LOG_LEVEL_INFO, "interaction created", kv, 6);
    }
    if (stream)
        return reply_sse(r, ctx, id, 0, !stored);
    if (background) {
        /* Answer at once; a free worker has usually picked it up by now. */
        for (int i = 0; i < 5; i++) {
            if (status_of(ctx, id, st, sizeof(st)) == NULL || strcmp(st, "queued") != 0)
                break;
            agent_wait(service, id, 0, 10);
        }
        return reply_interaction(r, ctx, id, false);
    }
    while (status_of(ctx, id, st, sizeof(st)) != NULL && !agent_status_final(st) &&
           !agent_stopping(service))
        agent_wait(service, id, 0, 1000);
    res = reply_interaction(r, ctx, id, false);
    if (!stored)
        store_interaction_delete(env_store(ctx), id, NULL);
    return res;
}

static enum MHD_Result
get_interaction(struct api_req *r, struct env_ctx *ctx, const char *id)
{
    struct err *er = NULL;
    bool stream = api_query_bool(r, "stream", false, &er);
    bool include_input = er == NULL ? api_query_bool(r, "include_input", false, &er) : false;
    const char *last = api_query(r, "last_event_id");
    uint64_t after = 0;
    json_t *j;

    if (er != NULL)
        return api_reply_err(r, er);
    if (!stream)
        return reply_interaction(r, ctx, id, include_input);
    if (last != NULL && last[0] != '\0' && util_parse_u64(last, INT64_MAX, &after, NULL) < 0)
        return api_reply_status(r, 400, "INVALID_ARGUMENT",
                                "last_event_id must be an event_id this server sent");
    /* Ownership and existence before the stream starts (a 404 is JSON, not SSE). */
    if (agent_interaction_json(env_store(ctx), r->auth.project, id, false, &j, &er) < 0)
        return api_reply_err(r, er);
    json_decref(j);
    return reply_sse(r, ctx, id, (int64_t)after, false);
}

static enum MHD_Result
route_interactions(struct api_req *r, struct env_ctx *ctx)
{
    bool get = strcmp(r->method, "GET") == 0 || strcmp(r->method, "HEAD") == 0;
    enum MHD_Result res;
    struct err *er = NULL;
    const char *id;

    if (r->nsegs == 1) {
        if (strcmp(r->method, "POST") == 0)
            return api_require(r, "interactions.write", &res) ? create_interaction(r, ctx) : res;
        return api_reply_status(r, 405, "INVALID_ARGUMENT", "%s is not allowed on interactions",
                                r->method);
    }
    id = r->segs[1];
    if (r->nsegs == 3 && strcmp(r->segs[2], "cancel") == 0) {
        if (strcmp(r->method, "POST") != 0)
            return api_reply_status(r, 405, "INVALID_ARGUMENT", "cancel is a POST");
        if (!api_require(r, "interactions.write", &res))
            return res;
        if (agent_cancel(service, env_store(ctx), r->auth.project, id, &er) < 0) {
            if (er->code != ERR_CONFLICT)
                return api_reply_err(r, er);
            err_free(er); /* already ended: the answer shows how */
        }
        return reply_interaction(r, ctx, id, false);
    }
    if (r->nsegs != 2)
        return api_reply_status(r, 404, "NOT_FOUND", "no such route under interactions");
    if (get)
        return api_require(r, "interactions.read", &res) ? get_interaction(r, ctx, id) : res;
    if (strcmp(r->method, "DELETE") == 0) {
        if (!api_require(r, "interactions.write", &res))
            return res;
        if (agent_delete(service, env_store(ctx), r->auth.project, id, &er) < 0)
            return api_reply_err(r, er);
        return api_reply_json(r, 200, json_object());
    }
    return api_reply_status(r, 405, "INVALID_ARGUMENT", "%s is not allowed on an interaction",
                            r->method);
}

/* ----------------------------------------------------------------- agents */

static json_t *
agent_json(const struct store_agent *a)
{
    json_t *j = json_loads(a->body, 0, NULL);

    if (!json_is_object(j)) {
        json_decref(j);
        j = json_object();
    }
    json_object_set_new(j, "id", json_string(a->id));
    if (json_object_get(j, "tools") != NULL)
        json_object_set_new(j, "tools", agent_tools_shown(json_object_get(j, "tools")));
    {
        char t[40];
        util_format_time(a->created_ms, t, sizeof(t));
        json_object_set_new(j, "create_time", json_string(t));
    }
    return j;
}

static enum MHD_Result
create_agent(struct api_req *r, struct env_ctx *ctx)
{
    enum MHD_Result res;
    json_t *body = parse_body(r, &res), *def = NULL;
    struct store_agent a;
    struct err *er = NULL;

    if (body == NULL)
        return res;
    if (!api_may_bind_credentials(r, json_object_get(body, "base_environment"), "base_environment.",
                                  &res)) {
        json_decref(body);
        return res;
    }
    if (agent_def_check(env_store(ctx), r->auth.project, body, &def, &er) < 0) {
        json_decref(body);
        return api_reply_err(r, er);
    }
    json_decref(body);
    {
        json_t *envspec = json_object_get(def, "base_environment");
        if (envspec != NULL && !json_is_null(envspec) &&
            api_env_resolve(r->srv->cfg, ctx, r->auth.project, envspec, true, NULL, &er) < 0) {
            json_decref(def);
            err_wrap(&er, "base_environment");
            return api_reply_err(r, er);
        }
    }
    memset(&a, 0, sizeof(a));
    snprintf(a.project, sizeof(a.project), "%s", r->auth.project);
    snprintf(a.id, sizeof(a.id), "%s", json_string_value(json_object_get(def, "id")));
    a.body = json_dumps(def, JSON_COMPACT);
    a.created_ms = a.updated_ms = util_now_ms();
    json_decref(def);
    if (store_agent_insert(env_store(ctx), &a, &er) < 0) {
        store_agent_clear(&a);
        return api_reply_err(r, er);
    }
    {
        const char *kv[] = { "id", a.id, "key", r->auth.name };
        log_fields(LOG_LEVEL_INFO, "agent created", kv, 4);
    }
    res = api_reply_json(r, 200, agent_json(&a));
    store_agent_clear(&a);
    return res;
}

static enum MHD_Result
list_agents(struct api_req *r, struct env_ctx *ctx)
{
    const char *tok = api_query(r, "page_token");
    struct store_agent *v = NULL;
    size_t n = 0, limit = API_PAGE_DEFAULT;
    struct err *er = NULL;
    json_t *arr, *res;

    if (api_page_size(r, API_PAGE_DEFAULT, &limit, &er) < 0)
        return api_reply_err(r, er);
    if (store_agent_page(env_store(ctx), r->auth.project, tok, limit + 1, &v, &n, &er) < 0)
        return api_reply_err(r, er);
    arr = json_array();
    for (size_t i = 0; i < n && i < limit; i++)
        json_array_append_new(arr, agent_json(&v[i]));
    res = json_pack("{s:o}", "agents", arr);
    if (n > limit)
        json_object_set_new(res, "next_page_token", json_string(v[limit - 1].id));
    for (size_t i = 0; i < n; i++)
        store_agent_clear(&v[i]);
    free(v);
    return api_reply_json(r, 200, res);
}

static enum MHD_Result
route_agents(struct api_req *r, struct env_ctx *ctx)
{
    bool get = strcmp(r->method, "GET") == 0 || strcmp(r->method, "HEAD") == 0;
    enum MHD_Result res;
    struct err *er = NULL;
    const char *id;

    if (r->nsegs == 1) {
        if (get)
            return api_require(r, "agents.read", &res) ? list_agents(r, ctx) : res;
        if (strcmp(r->method, "POST") == 0)
            return api_require(r, "agents.write", &res) ? create_agent(r, ctx) : res;
        return api_reply_status(r, 405, "INVALID_ARGUMENT", "%s is not allowed on agents",
                                r->method);
    }
    if (r->nsegs != 2)
        return api_reply_status(r, 404, "NOT_FOUND", "no such route under agents");
    id = api_strip_prefix(r->segs[1], "agents/");
    if (get) {
        struct store_agent a;
        if (!api_require(r, "agents.read", &res))
            return res;
        if (strcmp(id, AGENT_BUILTIN_A) == 0 || strcmp(id, AGENT_BUILTIN_B) == 0)
            return api_reply_json(r, 200,
                                  json_pack("{s:s, s:s, s:{s:s}}", "id", id, "description",
                                            "paddock's built-in agent: bash and file_system in "
                                            "a sandbox, on the server's default model",
                                            "agent_config", "type", "antigravity"));
        if (store_agent_get(env_store(ctx), r->auth.project, id, &a, &er) < 0)
            return api_reply_err(r, er);
        res = api_reply_json(r, 200, agent_json(&a));
        store_agent_clear(&a);
        return res;
    }
    if (strcmp(r->method, "DELETE") == 0) {
        if (!api_require(r, "agents.write", &res))
            return res;
        if (store_agent_delete(env_store(ctx), r->auth.project, id, &er) < 0)
            return api_reply_err(r, er);
        {
            const char *kv[] = { "id", id, "key", r->auth.name };
            log_fields(LOG_LEVEL_INFO, "agent deleted", kv, 4);
        }
        return api_reply_json(r, 200, json_object());
    }
    return api_reply_status(r, 405, "INVALID_ARGUMENT", "%s is not allowed on an agent", r->method);
}

enum MHD_Result
api_route_agents(struct api_req *r)
{
    struct err *er = NULL;
    struct env_ctx *ctx = api_ctx(r, &er);

    if (ctx == NULL)
        return api_reply_err(r, er);
    if (service == NULL)
        return api_reply_status(r, 503, "UNAVAILABLE", "the agent service is not running");
    if (strcmp(r->segs[0], "interactions") == 0)
        return route_interactions(r, ctx);
    return route_agents(r, ctx);
}
