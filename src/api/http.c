/*
 * The HTTP side of the server, over libmicrohttpd in thread-per-connection mode: every
 * request handler may block on a sandbox (a create, an upload, a snapshot stream) without
 * holding up any other connection.
 *
 * Routing works on the raw request URI (captured before libmicrohttpd unescapes it), so an
 * id sent as "environments%2Fenv_x" stays one segment and a file path keeps its own
 * slashes. Any "/{v}/" version segment routes to the same handlers, after any path prefix.
 *
 * Slow clients: libmicrohttpd's timeout is an idle timeout, which a client sending one byte a
 * second never trips. A watchdog thread therefore gives each connection a deadline for the
 * headers of its next request and shuts down the socket of one that misses it.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <time.h>

#include <openssl/evp.h>

#include "agent/agent.h"
#include "api_int.h"

/* ------------------------------------------------------------ context pool */

#define POOL_MAX 64

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static struct env_ctx *pool[POOL_MAX];
static size_t npool;

struct env_ctx *
api_ctx(struct api_req *r, struct err **errp)
{
    const struct api_config *cfg = r->srv->cfg;

    if (r->ctx != NULL)
        return r->ctx;
    pthread_mutex_lock(&pool_lock);
    if (npool > 0)
        r->ctx = pool[--npool];
    pthread_mutex_unlock(&pool_lock);
    if (r->ctx == NULL && env_ctx_open(cfg->data_dir, cfg->storage_size, &r->ctx, errp) < 0)
        return NULL;
    return r->ctx;
}

void
api_ctx_release(struct env_ctx *c)
{
    if (c == NULL)
        return;
    pthread_mutex_lock(&pool_lock);
    if (npool < POOL_MAX) {
        pool[npool++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&pool_lock);
    env_ctx_close(c);
}

/* ------------------------------------------------------- connection deadlines */

struct track {
    int fd;
    ino_t ino; /* the socket's identity: the fd number alone could be another's by now */
    int64_t deadline_ms; /* monotonic, for the next request's headers; 0 while one is in progress */
    struct track *prev, *next;
};

static pthread_mutex_t track_lock = PTHREAD_MUTEX_INITIALIZER;
static struct track tracks = {-1, 0, 0, &tracks, &tracks};

static void
notify_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                  enum MHD_ConnectionNotificationCode toe)
{
    struct api_server *srv = cls;
    struct track *t = *socket_context;

    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        t = xcalloc(1, sizeof(*t));
        struct stat st;
        t->fd = ci != NULL ? ci->connect_fd : -1;
        t->ino = t->fd >= 0 && fstat(t->fd, &st) == 0 ? st.st_ino : 0;
        t->deadline_ms = util_mono_ms() + srv->cfg->header_timeout_ms;
        pthread_mutex_lock(&track_lock);
        t->next = tracks.next;
        t->prev = &tracks;
        tracks.next->prev = t;
        tracks.next = t;
        pthread_mutex_unlock(&track_lock);
        *socket_context = t;
    } else if (toe == MHD_CONNECTION_NOTIFY_CLOSED && t != NULL) {
        pthread_mutex_lock(&track_lock);
        t->prev->next = t->next;
        t->next->prev = t->prev;
        pthread_mutex_unlock(&track_lock);
        free(t);
        *socket_context = NULL;
    }
}

static void
track_set(struct MHD_Connection *c, int64_t deadline_ms)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    struct track *t = ci != NULL ? ci->socket_context : NULL;

    if (t == NULL)
        return;
    pthread_mutex_lock(&track_lock);
    t->deadline_ms = deadline_ms;
    pthread_mutex_unlock(&track_lock);
}

static volatile sig_atomic_t stopping;

static void *
watchdog(void *arg)
{
    (void)arg;
    while (!stopping) {
        struct timespec ts = {0, 250 * 1000 * 1000};
        int64_t now = util_mono_ms();
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&track_lock);
        for (struct track *t = tracks.next; t != &tracks; t = t->next) {
            struct stat st;
            if (t->deadline_ms != 0 && t->deadline_ms < now && t->fd >= 0 &&
                fstat(t->fd, &st) == 0 && st.st_ino == t->ino) {
                /* The connection thread sees EOF and closes; the fd stays its own. */
                shutdown(t->fd, SHUT_RDWR);
                t->deadline_ms = 0;
                log_info("closed a connection that sent no complete request in time");
            }
        }
        pthread_mutex_unlock(&track_lock);
    }
    return NULL;
}

/* ----------------------------------------------------------------- replies */

static const struct {
    enum err_code code;
    unsigned http;
    const char *status;
} err_map[] = {
    {ERR_INVALID, 400, "INVALID_ARGUMENT"}, {ERR_NOT_FOUND, 404, "NOT_FOUND"},
    {ERR_CONFLICT, 409, "ALREADY_EXISTS"},  {ERR_PERM, 403, "PERMISSION_DENIED"},
    {ERR_LIMIT, 413, "RESOURCE_EXHAUSTED"}, {ERR_IO, 500, "INTERNAL"},
    {ERR_UPSTREAM, 502, "UNAVAILABLE"},     {ERR_TIMEOUT, 504, "DEADLINE_EXCEEDED"},
    {ERR_INTERNAL, 500, "INTERNAL"},
};

enum MHD_Result
api_reply_response(struct api_req *r, unsigned status, struct MHD_Response *resp)
{
    enum MHD_Result res;

    r->status = status;
    if (r->retry_after_s > 0) {
        char ra[16];
        snprintf(ra, sizeof(ra), "%u", r->retry_after_s);
        MHD_add_response_header(resp, "Retry-After", ra);
    }
    res = MHD_queue_response(r->conn, status, resp);
    MHD_destroy_response(resp);
    return res;
}

enum MHD_Result
api_reply_json(struct api_req *r, unsigned status, json_t *j)
{
    char *text = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
    size_t len;
    struct MHD_Response *resp;

    json_decref(j);
    if (text == NULL) {
        /* An answer that could not be built (json_pack refuses a string that is not UTF-8)
         * still goes out, as an error; closing the connection would leave the client
         * guessing whether what it asked was done. */
        log_error("%s %s: could not encode the answer", r->method, r->raw_uri);
        status = 500;
        text = xstrdup("{\"error\":{\"code\":500,\"message\":\"the server could not encode "
                       "its answer (text that is not UTF-8)\",\"status\":\"INTERNAL\"}}");
    }
    len = strlen(text);
    text = xrealloc(text, len + 2);
    text[len++] = '\n';
    r->bytes_out = len;
    resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(resp, "Content-Type", "application/json; charset=UTF-8");
    return api_reply_response(r, status, resp);
}

static enum MHD_Result
reply_error_json(struct api_req *r, unsigned status, const char *gstatus, const char *msg)
{
    /* A message quoting a name that is not UTF-8 (a file's, from the sandbox) has its bytes
     * escaped: JSON cannot carry them, and the answer must go out. */
    cleanup_free char *esc =
        util_utf8_valid(msg, strlen(msg)) ? NULL : log_escape(msg, strlen(msg), 4096);

    return api_reply_json(r, status,
                          json_pack("{s:{s:i, s:s, s:s}}", "error", "code", (int)status, "message",
                                    esc != NULL ? esc : msg, "status", gstatus));
}

enum MHD_Result
api_reply_status(struct api_req *r, unsigned status, const char *gstatus, const char *fmt, ...)
{
    va_list ap;
    char *msg = NULL;
    enum MHD_Result res;

    va_start(ap, fmt);
    if (vasprintf(&msg, fmt, ap) < 0)
        msg = NULL;
    va_end(ap);
    res = reply_error_json(r, status, gstatus, msg != NULL ? msg : "error");
    free(msg);
    return res;
}

enum MHD_Result
api_reply_err(struct api_req *r, struct err *e)
{
    unsigned http = 500;
    const char *st = "INTERNAL";
    enum MHD_Result res;

    for (size_t i = 0; i < sizeof(err_map) / sizeof(err_map[0]); i++)
        if (err_map[i].code == e->code) {
            http = err_map[i].http;
            st = err_map[i].status;
        }
    if (http >= 500)
        log_error("%s %s: %s", r->method, r->raw_uri, e->msg);
    res = reply_error_json(r, http, st, e->msg);
    err_free(e);
    return res;
}

enum MHD_Result
api_reply_errf(struct api_req *r, enum err_code code, const char *fmt, ...)
{
    va_list ap;
    char *msg = NULL;
    struct err *e = NULL;

    va_start(ap, fmt);
    if (vasprintf(&msg, fmt, ap) < 0)
        msg = NULL;
    va_end(ap);
    err_set(&e, code, 0, "%s", msg != NULL ? msg : "error");
    free(msg);
    return api_reply_err(r, e);
}

/* ------------------------------------------------------------------ helpers */

size_t
api_query_count(const struct api_req *r, const char *key)
{
    size_t n = 0;

    for (size_t i = 0; i < r->nq; i++)
        n += strcmp(r->qk[i], key) == 0;
    return n;
}

const char *
api_query(const struct api_req *r, const char *key)
{
    for (size_t i = 0; i < r->nq; i++)
        if (strcmp(r->qk[i], key) == 0)
            return r->qv[i];
    return NULL;
}

bool
api_query_bool(const struct api_req *r, const char *key, bool dflt, struct err **errp)
{
    const char *v = api_query(r, key);

    if (v == NULL || v[0] == '\0')
        return dflt;
    if (strcmp(v, "true") == 0 || strcmp(v, "1") == 0)
        return true;
    if (strcmp(v, "false") == 0 || strcmp(v, "0") == 0)
        return false;
    err_set(errp, ERR_INVALID, 0, "query parameter %s must be true or false", key);
    return dflt;
}

const char *
api_header(const struct api_req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

char *
api_base_url(const struct api_req *r)
{
    const char *host = api_header(r, "Host");
    const char *pub = r->srv->cfg->public_url;

    if (pub != NULL && pub[0] != '\0') {
        size_t n = strlen(pub);
        while (n > 0 && pub[n - 1] == '/')
            n--;
        return xstrndup(pub, n);
    }
    if (host == NULL || host[0] == '\0' || strpbrk(host, " /\\\"'<>") != NULL)
        host = r->srv->cfg->listen;
    return xasprintf("http://%s", host);
}

static void
hex_sha256(const char *data, size_t len, char out[65])
{
    unsigned char md[32];
    unsigned int n = 0;

    EVP_Digest(data, len, md, &n, EVP_sha256(), NULL);
    for (unsigned i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static bool has_word(const char *list, const char *word);

bool
api_require(struct api_req *r, const char *scope, enum MHD_Result *res)
{
    if (has_word(r->auth.scopes, scope))
        return true;
    *res = api_reply_status(r, 403, "PERMISSION_DENIED", "API key '%s' lacks the scope %s",
                            r->auth.name, scope);
    return false;
}

bool
api_may_bind_credentials(struct api_req *r, json_t *spec, const char *field, enum MHD_Result *res)
{
    json_t *al = json_object_get(json_object_get(spec, "network"), "allowlist"), *e;
    size_t i;

    if (!json_is_array(al) || has_word(r->auth.scopes, "credentials.write"))
        return true;
    json_array_foreach(al, i, e) {
        const char *cred = json_string_value(json_object_get(e, "credential"));
        if (cred == NULL)
            continue;
        cleanup_free char *c = log_escape(cred, strlen(cred), 64);
        *res = api_reply_status(r, 403, "PERMISSION_DENIED",
                                "%snetwork.allowlist[%zu].credential: API key '%s' lacks the "
                                "scope credentials.write, which binding credential '%s' to a "
                                "destination needs (whoever chooses where a secret is sent can "
                                "read it there)",
                                field, i, r->auth.name, c);
        return false;
    }
    return true;
}

/* Finds the key and checks it; replies 401 and returns false when it does not pass. */
static bool
authenticate(struct api_req *r, enum MHD_Result *res)
{
    const char *key = api_header(r, "x-goog-api-key");
    const char *authz = api_header(r, "Authorization");
    struct store_key k;
    struct env_ctx *ctx;
    struct err *e = NULL;
    char hash[65];

    if ((key == NULL || key[0] == '\0') && authz != NULL && strncasecmp(authz, "Bearer ", 7) == 0)
        for (key = authz + 7; *key == ' ';)
            key++;
    if (key == NULL || key[0] == '\0') {
        *res = api_reply_status(r, 401, "UNAUTHENTICATED",
                                "missing API key: send x-goog-api-key or Authorization: Bearer");
        return false;
    }
    ctx = api_ctx(r, &e);
    if (ctx == NULL) {
        *res = api_reply_err(r, e);
        return false;
    }
    hex_sha256(key, strlen(key), hash);
    if (store_key_by_hash(env_store(ctx), hash, &k, &e) < 0) {
        bool missing = e->code == ERR_NOT_FOUND;
        if (!missing) {
            *res = api_reply_err(r, e);
            return false;
        }
        err_free(e);
        *res = api_reply_status(r, 401, "UNAUTHENTICATED", "API key not valid");
        return false;
    }
    if (k.revoked_ms != 0) {
        *res = api_reply_status(r, 401, "UNAUTHENTICATED", "API key '%s' was revoked", k.name);
        return false;
    }
    memcpy(r->auth.name, k.name, sizeof(k.name));
    memcpy(r->auth.project, k.project, sizeof(k.project));
    memcpy(r->auth.scopes, k.scopes, sizeof(k.scopes));
    r->authed = true;
    return true;
}

/* ------------------------------------------------------------------ routing */

static bool
is_version(const char *s, size_t n)
{
    if (n < 2 || n > 16 || s[0] != 'v' || s[1] < '0' || s[1] > '9')
        return false;
    for (size_t i = 2; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'z')))
            return false;
    return true;
}

static int
parse_query(struct api_req *r, const char *q)
{
    while (*q != '\0') {
        size_t n = strcspn(q, "&");
        const char *eq = memchr(q, '=', n);
        if (n > 0) {
            size_t kn = eq != NULL ? (size_t)(eq - q) : n;
            if (r->nq == API_QUERY_MAX)
                return -1;
            r->qk[r->nq] = api_pct_decode(q, kn, true);
            r->qv[r->nq] = eq != NULL ? api_pct_decode(eq + 1, n - kn - 1, true) : xstrdup("");
            if (r->qk[r->nq] == NULL || r->qv[r->nq] == NULL) {
                free(r->qk[r->nq]);
                free(r->qv[r->nq]);
                return -1;
            }
            r->nq++;
        }
        q += n;
        if (*q == '&')
            q++;
    }
    return 0;
}

/*
 * Splits the raw path after its version segment into decoded segments; after a "files"
 * segment that follows an environment id, the remainder is kept whole as r->rest.
 * Returns 0, or -1 when the path is not an API path (404), -2 when it is malformed (400).
 */
static int
parse_path(struct api_req *r)
{
    cleanup_free char *path = NULL;
    const char *p, *q = strchr(r->raw_uri, '?');
    size_t plen = q != NULL ? (size_t)(q - r->raw_uri) : strlen(r->raw_uri);
    const char *prev = NULL;
    size_t prevn = 0;

    if (q != NULL && parse_query(r, q + 1) < 0)
        return -2;
    path = xstrndup(r->raw_uri, plen);
    /* Skip any prefix up to the version segment (a base URL may carry a path). */
    for (p = path;;) {
        size_t n;
        while (*p == '/')
            p++;
        if (*p == '\0')
            return -1;
        n = strcspn(p, "/");
        if (is_version(p, n)) {
            r->upload_route = prev != NULL && prevn == 6 && strncmp(prev, "upload", 6) == 0;
            p += n;
            break;
        }
        prev = p;
        prevn = n;
        p += n;
    }
    while (*p != '\0') {
        size_t n;
        while (*p == '/')
            p++;
        if (*p == '\0')
            break;
        if (r->nsegs == 3 && strcmp(r->segs[0], "environments") == 0 &&
            strcmp(r->segs[2], "files") == 0) {
            /* The file path: the rest, slashes and all ("files//src" is "src"). */
            r->rest = api_pct_decode(p, strlen(p), false);
            r->has_rest = true;
            return r->rest == NULL ? -2 : 0;
        }
        n = strcspn(p, "/");
        if (r->nsegs == API_SEGMENTS_MAX)
            return -2;
        r->segs[r->nsegs] = api_pct_decode(p, n, false);
        if (r->segs[r->nsegs] == NULL)
            return -2;
        r->nsegs++;
        p += n;
    }
    if (r->nsegs == 3 && strcmp(r->segs[0], "environments") == 0 &&
        strcmp(r->segs[2], "files") == 0) {
        r->rest = xstrdup("");
        r->has_rest = true;
    }
    return 0;
}

static bool ready;

/* Whether the request says a body follows (a Content-Length above 0, or chunked). */
static bool
body_announced(const struct api_req *r)
{
    const char *cl = api_header(r, "Content-Length");

    return api_header(r, "Transfer-Encoding") != NULL ||
           (cl != NULL && strspn(cl, "0") != strlen(cl));
}

/*
 * The scope a request with a body needs on its route, known from the method and the first
 * segment; NULL when the route decides later (or there is none). A route checks again, with
 * what it alone knows (a credential bound in an environment spec needs credentials.write).
 */
static const struct {
    const char *seg, *read, *write;
} body_scopes[] = {
    { "environments", "environments.read", "environments.write" },
    { "credentials", "credentials.read", "credentials.write" },
    { "interactions", "interactions.read", "interactions.write" },
    { "agents", "agents.read", "agents.write" },
};

static const char *
body_scope(const struct api_req *r)
{
    bool read = strcmp(r->method, "GET") == 0 || strcmp(r->method, "HEAD") == 0;

    if (r->nsegs == 0)
        return NULL;
    for (size_t i = 0; i < sizeof(body_scopes) / sizeof(body_scopes[0]); i++)
        if (strcmp(r->segs[0], body_scopes[i].seg) == 0)
            return read ? body_scopes[i].read : body_scopes[i].write;
    return NULL;
}

static enum MHD_Result
sum_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    size_t *n = cls;

    (void)kind;
    *n += strlen(key) + (value != NULL ? strlen(value) : 0) + 4;
    return MHD_YES;
}

static enum MHD_Result
dispatch(struct api_req *r)
{
    if (r->nsegs >= 1 && strcmp(r->segs[0], "environments") == 0)
        return api_route_environments(r);
    if (r->nsegs >= 1 && strcmp(r->segs[0], "credentials") == 0)
        return api_route_credentials(r);
    if (r->nsegs == 2 && strcmp(r->segs[0], "files") == 0)
        return api_route_files_download(r);
    if (r->nsegs >= 1 &&
        (strcmp(r->segs[0], "interactions") == 0 || strcmp(r->segs[0], "agents") == 0))
        return api_route_agents(r);
    return api_reply_status(r, 404, "NOT_FOUND", "no such route: %s %s", r->method,
                            r->nsegs > 0 ? r->segs[0] : "/");
}

/* The first call of a request: its headers are complete. */
static enum MHD_Result
begin(struct api_req *r)
{
    enum MHD_Result res = MHD_YES;
    size_t plen = strcspn(r->raw_uri, "?");
    bool health = plen == 8 && strncmp(r->raw_uri, "/healthz", 8) == 0;
    bool readyz = plen == 7 && strncmp(r->raw_uri, "/readyz", 7) == 0;
    int pr;

    {
        /* The library's own cap (its pool, 512 KiB) answers in HTML; ours comes first. */
        size_t hbytes = strlen(r->raw_uri);
        MHD_get_connection_values(r->conn, MHD_HEADER_KIND, sum_header, &hbytes);
        if (hbytes > API_HEADERS_MAX)
            return api_reply_status(r, 431, "INVALID_ARGUMENT",
                                    "request headers larger than %u bytes", API_HEADERS_MAX);
    }
    if ((health || readyz) && strcmp(r->method, "GET") != 0 && strcmp(r->method, "HEAD") != 0)
        return api_reply_status(r, 405, "INVALID_ARGUMENT", "health checks are GET");
    if (health)
        return api_reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
    if (readyz)
        return ready ? api_reply_json(r, 200, json_pack("{s:s}", "status", "ready"))
                     : api_reply_status(r, 503, "UNAVAILABLE", "starting");
    pr = parse_path(r);
    if (pr == -2)
        return api_reply_status(r, 400, "INVALID_ARGUMENT",
                                "malformed path or query (bad percent-encoding, NUL, text that "
                                "is not UTF-8, or too many segments or parameters)");
    if (pr == -1)
        return api_reply_status(r, 404, "NOT_FOUND", "no such route: %s", r->method);
    if (!authenticate(r, &res))
        return res;
    buf_init(&r->body, API_BODY_MAX);
    r->body.wipe = true; /* a credential's secret arrives in one */
    /* Upload chunks are authorised before their bytes arrive, so a refused one costs no
     * staging; their data then streams to disk as it comes. */
    r->chunk = r->upload_route && strcmp(r->method, "POST") == 0;
    if (r->chunk)
        return api_route_environments(r);
    if (body_announced(r)) {
        /* Refused before a byte of the body is read: a body over the cap, or one for a
         * route the key may not use, would only be buffered to be thrown away. */
        const char *cl = api_header(r, "Content-Length");
        const char *scope = body_scope(r);
        uint64_t n = 0;
        if (cl != NULL && util_parse_u64(cl, UINT64_MAX, &n, NULL) == 0 && n > API_BODY_DRAIN_MAX)
            return api_reply_status(r, 413, "RESOURCE_EXHAUSTED",
                                    "request body larger than %u bytes", API_BODY_MAX);
        if (scope != NULL && !api_require(r, scope, &res))
            return res;
        /* The body must keep coming: see API_BODY_RATE. */
        r->body_start_ms = util_mono_ms();
        track_set(r->conn, r->body_start_ms + r->srv->cfg->header_timeout_ms);
    }
    return MHD_YES;
}

/* Bytes of JSON bodies held by all requests: see API_BODY_BUDGET. */
static _Atomic size_t bodies_held;

/* Takes len bytes of the budget for r; false when they would go over it. */
static bool
body_reserve(struct api_req *r, size_t len)
{
    size_t now = atomic_load(&bodies_held);

    do {
        if (now + len > API_BODY_BUDGET)
            return false;
    } while (!atomic_compare_exchange_weak(&bodies_held, &now, now + len));
    r->body_held += len;
    return true;
}

/* Gives back what r holds of the budget, and its body with it. */
static void
body_release(struct api_req *r)
{
    atomic_fetch_sub(&bodies_held, r->body_held);
    r->body_held = 0;
    buf_free(&r->body);
}

static enum MHD_Result
handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
        const char *version, const char *upload_data, size_t *upload_data_size, void **req_cls)
{
    struct api_req *r = *req_cls;

    (void)cls;
    (void)url;
    (void)version;
    if (r == NULL)
        return MHD_NO;
    r->conn = c;
    r->method = method;
    if (!r->started) {
        enum MHD_Result res;
        r->started = true;
        track_set(c, 0);
        res = begin(r);
        /* A reply queued already (an error, health) ends the request; the rest of a body, if
         * any, is not read: libmicrohttpd closes the connection after the reply. */
        return res;
    }
    if (r->status != 0) {
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        if (r->chunk) {
            api_upload_data(r, upload_data, *upload_data_size);
        } else if (r->body_too_large || r->body_over_budget) {
            /* read and thrown away */
        } else if (r->body.len + *upload_data_size > API_BODY_MAX) {
            r->body_too_large = true;
            body_release(r);
        } else if (!body_reserve(r, *upload_data_size)) {
            r->body_over_budget = true;
            body_release(r);
        } else if (buf_append(&r->body, upload_data, *upload_data_size, NULL) < 0) {
            r->body_too_large = true;
            body_release(r);
        } else if (r->body_start_ms != 0) {
            /* Each byte buys 1/API_BODY_RATE s: a body slower than that on average is cut
             * off by the watchdog once the grace is spent. */
            track_set(c, r->body_start_ms + r->srv->cfg->header_timeout_ms +
                             (int64_t)(r->body.len * 1000 / API_BODY_RATE));
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    track_set(c, 0); /* the body is complete: the answer may take its time */
    if (r->body_too_large)
        return api_reply_status(r, 413, "RESOURCE_EXHAUSTED", "request body larger than %u bytes",
                                API_BODY_MAX);
    if (r->body_over_budget) {
        r->retry_after_s = 1;
        return api_reply_status(r, 503, "UNAVAILABLE",
                                "the server is reading %u MiB of request bodies at once, its "
                                "limit; send this one again in a moment",
                                API_BODY_BUDGET >> 20);
    }
    return dispatch(r);
}

static void *
uri_logger(void *cls, const char *uri, struct MHD_Connection *c)
{
    struct api_req *r = xcalloc(1, sizeof(*r));

    (void)c;
    r->srv = cls;
    r->raw_uri = xstrdup(uri);
    r->start_ns = util_mono_ns();
    return r;
}

static void
completed(void *cls, struct MHD_Connection *c, void **req_cls,
          enum MHD_RequestTerminationCode toe)
{
    struct api_server *srv = cls;
    struct api_req *r = *req_cls;
    char status[16], bytes[32], ms[32];
    cleanup_free char *path = NULL;

    track_set(c, util_mono_ms() + srv->cfg->header_timeout_ms);
    if (r == NULL)
        return;
    snprintf(status, sizeof(status), "%u", r->status);
    snprintf(bytes, sizeof(bytes), "%llu", (unsigned long long)r->bytes_out);
    snprintf(ms, sizeof(ms), "%.3f", (double)(util_mono_ns() - r->start_ns) / 1e6);
    {
        const char *q = strchr(r->raw_uri, '?');
        path = xstrndup(r->raw_uri, q != NULL ? (size_t)(q - r->raw_uri) : strlen(r->raw_uri));
    }
    {
        const char *kv[] = {"method", r->method != NULL ? r->method : "-",
                            "path",   path,
                            "status", status,
                            "bytes",  bytes,
                            "ms",     ms,
                            "key",    r->authed ? r->auth.name : "-",
                            "end",    toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "ok" : "aborted"};
        log_fields(LOG_LEVEL_INFO, "request", kv, sizeof(kv) / sizeof(kv[0]));
    }
    for (size_t i = 0; i < r->nsegs; i++)
        free(r->segs[i]);
    for (size_t i = 0; i < r->nq; i++) {
        free(r->qk[i]);
        free(r->qv[i]);
    }
    free(r->rest);
    free(r->raw_uri);
    body_release(r);
    err_free(r->up_err);
    api_ctx_release(r->ctx);
    free(r);
    *req_cls = NULL;
}

static void mhd_logger(void *cls, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

static void
mhd_logger(void *cls, const char *fmt, va_list ap)
{
    char *msg = NULL;

    (void)cls;
    if (vasprintf(&msg, fmt, ap) < 0)
        return;
    for (size_t n = strlen(msg); n > 0 && msg[n - 1] == '\n'; n--)
        msg[n - 1] = '\0';
    log_warnx("http: %s", msg);
    free(msg);
}

/* ------------------------------------------------------------------ serving */

static int
parse_listen(const char *listen, struct sockaddr_in *sa, struct err **errp)
{
    cleanup_free char *host = NULL;
    const char *colon = strrchr(listen, ':');
    uint64_t port;

    if (colon == NULL)
        return err_set(errp, ERR_INVALID, 0, "--listen must be ADDR:PORT, not '%s'", listen);
    host = xstrndup(listen, (size_t)(colon - listen));
    if (util_parse_u64(colon + 1, 65535, &port, NULL) < 0)
        return err_set(errp, ERR_INVALID, 0, "--listen: bad port '%s'", colon + 1);
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, strcmp(host, "localhost") == 0 ? "127.0.0.1" : host, &sa->sin_addr) != 1)
        return err_set(errp, ERR_INVALID, 0, "--listen: '%s' is not an IPv4 address", host);
    return 0;
}

/* ------------------------------------------------------------------ egress */

static struct egress *egress;
/* Token requests (oauth.c) may outlive the quiesce at shutdown on threads of their own: they
 * reach the proxy only under this lock, and shutdown takes it to let the proxy go. */
static pthread_rwlock_t egress_lock = PTHREAD_RWLOCK_INITIALIZER;
static const struct api_config *srv_cfg;
static int64_t ca_made_ms; /* when DATA/ca/ca.pem was written */

void
api_wipe_json(json_t *j)
{
    const char *k;
    json_t *v;
    size_t i;

    if (json_is_string(j))
        explicit_bzero((char *)(uintptr_t)json_string_value(j), json_string_length(j));
    else if (json_is_object(j))
        json_object_foreach(j, k, v)
            api_wipe_json(v);
    else if (json_is_array(j))
        json_array_foreach(j, i, v)
            api_wipe_json(v);
}

/*
 * Turns the credential references of an environment's policy into what the proxy injects:
 * an allowlist entry's bearer token becomes its header; an environment variable that names a
 * credential becomes a placeholder substitution for that credential's trusted domains. What
 * cannot be resolved makes its rule refuse requests, saying why (fail closed).
 */
static void
resolve_credentials(struct env_ctx *ctx, const struct store_env *e, json_t *cfg,
                    struct egress_policy *pol, bool wait)
{
    const char *dd = srv_cfg->data_dir;

    for (size_t i = 0; i < pol->n; i++) {
        struct egress_rule *r = &pol->rules[i];
        struct store_cred meta;
        json_t *config = NULL, *secret = NULL;
        struct err *er = NULL;

        if (r->credential[0] == '\0')
            continue;
        if (api_cred_secret(dd, env_store(ctx), e->project, r->credential, &meta, &config,
                            &secret, &er) < 0) {
            snprintf(r->cred_error, sizeof(r->cred_error), "credential '%.60s' is not defined",
                     r->credential);
            err_free(er);
            continue;
        }
        if (strcmp(meta.type, "bearer_token") == 0) {
            const char *hn = json_string_value(json_object_get(config, "header_name"));
            const char *px = json_string_value(json_object_get(config, "prefix"));
            const char *tok = json_string_value(json_object_get(secret, "token"));
            char *v;
            if (px == NULL)
                px = "Bearer";
            /* Made in one allocation of its size: no copy of the token is left behind. */
            v = xasprintf_secret("%s%s%s", px, px[0] != '\0' ? " " : "", tok != NULL ? tok : "");
            /* Checked when stored; one stored before a check was tightened is refused here. */
            if (!egress_rule_add_header(r, hn != NULL ? hn : "Authorization", v))
                snprintf(r->cred_error, sizeof(r->cred_error),
                         "credential '%.40s' cannot stand in an HTTP header (a control "
                         "character)",
                         r->credential);
            free_wiped(v);
        } else if (strcmp(meta.type, "oauth2") == 0) {
            char *tok = NULL;
            if (api_oauth_token(dd, e->project, r->credential, wait, &tok, &er) < 0) {
                snprintf(r->cred_error, sizeof(r->cred_error), "%.120s", er->msg);
                if (er->code != ERR_CONFLICT) /* not "being fetched": that is no failure */
                    log_warnx("egress: %s: credential %s: %s", e->id, r->credential, er->msg);
                err_free(er);
            } else {
                char *v = xasprintf_secret("Bearer %s", tok);
                if (!egress_rule_add_header(r, "Authorization", v))
                    snprintf(r->cred_error, sizeof(r->cred_error),
                             "credential '%.40s': its access token cannot stand in an HTTP "
                             "header",
                             r->credential);
                free_wiped(v);
                free_wiped(tok);
            }
        } else {
            snprintf(r->cred_error, sizeof(r->cred_error),
                     "credential '%.40s' (%.24s) cannot be injected by an allowlist entry",
                     r->credential, meta.type);
        }
        api_wipe_json(secret);
        json_decref(secret);
        json_decref(config);
        store_cred_clear(&meta);
    }
    {
        json_t *env = json_object_get(cfg, "env"), *ph = json_object_get(cfg, "_placeholders");
        const char *k;
        json_t *v;
        json_object_foreach(env, k, v) {
            const char *cred = json_string_value(json_object_get(v, "credential"));
            const char *placeholder = json_string_value(json_object_get(ph, k));
            struct store_cred meta;
            json_t *config = NULL, *secret = NULL;
            struct egress_policy *domains = NULL;
            struct err *er = NULL;
            if (cred == NULL || placeholder == NULL ||
                api_cred_secret(dd, env_store(ctx), e->project, cred, &meta, &config, &secret,
                                &er) < 0) {
                err_free(er);
                continue;
            }
            if (strcmp(meta.type, "environment_variable") == 0 &&
                json_array_size(json_object_get(config, "trusted_domains")) > 0) {
                json_t *net = json_pack("{s:[]}", "allowlist");
                size_t i;
                json_t *d;
                json_array_foreach(json_object_get(config, "trusted_domains"), i, d)
                    json_array_append_new(json_object_get(net, "allowlist"),
                                          json_pack("{s:O}", "domain", d));
                if (egress_policy_compile(net, &domains, NULL) == 0 &&
                    !egress_policy_add_subst(
                        pol, placeholder, json_string_value(json_object_get(secret, "value")) ?: "",
                        domains))
                    log_warnx("egress: %s: credential %s: its value cannot stand in an HTTP "
                              "header; %s keeps its placeholder",
                              e->id, cred, k);
                json_decref(net);
            }
            api_wipe_json(secret);
            json_decref(secret);
            json_decref(config);
            store_cred_clear(&meta);
        }
    }
}

/*
 * Attaches the proxy to a running environment with the policy of its stored config. With wait
 * (a start hook, on the thread of the request that started it) an oauth2 token not yet in hand
 * is waited for, so the sandbox's first request has it; the reconcile pass never waits.
 */
static void
attach_egress(struct env_ctx *ctx, const struct store_env *e, bool wait)
{
    cleanup_free char *config = NULL;
    struct egress_policy *pol = NULL;
    struct sandbox_init init = {(pid_t)e->init_pid, e->init_start};
    struct err *er = NULL;
    json_t *cfg;
    int made = 0;

    if (egress == NULL || strcmp(e->network, "disabled") == 0)
        return;
    if (env_config(ctx, e->id, &config, &er) < 0) {
        log_warnx("egress: %s: %s", e->id, er->msg);
        err_free(er);
        return;
    }
    cfg = json_loads(config, 0, NULL);
    /* A CLI environment with --network open has no stored policy: open. */
    if (egress_policy_compile(json_object_get(cfg, "network"), &pol, &er) == 0) {
        if (strcmp(egress_mode_name(pol), e->network) != 0) {
            /* Fail closed: a row that says allowlist over a config without one is never
             * given an open proxy. */
            err_set(&er, ERR_INTERNAL, 0,
                    "its network is '%s' but its stored policy is '%s': "
                    "no proxy",
                    e->network, egress_mode_name(pol));
            egress_policy_free(pol);
            pol = NULL;
        } else {
            resolve_credentials(ctx, e, cfg, pol, wait);
        }
    }
    if (pol == NULL) {
        /* No policy it can be given: a listener it has keeps an older one, so it goes. */
        egress_detach(egress, e->id, &init);
        log_warnx("egress: %s: %s", e->id, er->msg);
        err_free(er);
    } else if ((made = egress_attach(egress, e->id, &init, pol, &er)) < 0) {
        log_warnx("egress: %s: %s", e->id, er->msg);
        err_free(er);
    } else if (made > 0 && e->created_ms <= ca_made_ms && env_seed_trust(ctx, e->id, &er) < 0) {
        /* Made before the installation's CA: it gets the trust files now. */
        log_warnx("egress: %s: CA files: %s", e->id, er->msg);
        err_free(er);
    }
    egress_policy_free(pol);
    json_decref(cfg);
}

static void
on_start(void *arg, struct env_ctx *ctx, const struct store_env *e)
{
    (void)arg;
    attach_egress(ctx, e, true);
}

void
api_egress_sync(void)
{
    if (egress != NULL)
        egress_sync_audit(egress);
}

const char *
api_egress_vet(const struct sockaddr *sa)
{
    const char *why;

    pthread_rwlock_rdlock(&egress_lock);
    why = egress != NULL ? egress_vet(egress, sa) : egress_addr_class(sa);
    pthread_rwlock_unlock(&egress_lock);
    return why;
}

bool
api_egress_override(const char *host, struct sockaddr_storage *out)
{
    bool r;

    pthread_rwlock_rdlock(&egress_lock);
    r = egress != NULL && egress_override(egress, host, out);
    pthread_rwlock_unlock(&egress_lock);
    return r;
}

const char *
api_egress_upstream_ca(void)
{
    return srv_cfg != NULL ? srv_cfg->egress_upstream_ca : NULL;
}

/* Whether the row of id says it should have a listener. */
static bool
wants_listener(const struct store_env *e)
{
    /* A creating environment has its listener already (attached at its start). */
    return (e->state == STORE_ENV_RUNNING || e->state == STORE_ENV_CREATING) &&
           strcmp(e->network, "disabled") != 0;
}

/*
 * Every running environment with a network has a listener, and only those. The listeners are
 * taken before the rows: a create (or a warm-pool claim, microseconds long) that attaches
 * after the rows were read is then not in the set at all, rather than in the set and missing
 * from the rows. A listener whose row the list does not show is looked up again before it goes.
 */
static void
egress_reconcile(struct env_ctx *ctx)
{
    cleanup_free struct store_env *v = NULL;
    size_t n = 0, na;
    char **ids = NULL;
    struct err *er = NULL;

    if (egress == NULL)
        return;
    na = egress_attached(egress, &ids);
    if (env_list(ctx, &v, &n, &er) < 0) {
        log_warnx("egress: %s", er->msg);
        err_free(er);
        n = 0;
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        if (v[i].state == STORE_ENV_RUNNING)
            attach_egress(ctx, &v[i], false);
    for (size_t k = 0; k < na; k++) {
        bool keep = false;
        struct store_env now;
        for (size_t i = 0; i < n && !keep; i++)
            keep = strcmp(v[i].id, ids[k]) == 0 && wants_listener(&v[i]);
        if (!keep && store_env_get(env_store(ctx), ids[k], &now, NULL) == 0)
            keep = wants_listener(&now);
        if (!keep)
            egress_detach(egress, ids[k], NULL);
    }
out:
    for (size_t k = 0; k < na; k++)
        free(ids[k]);
    free(ids);
}

static int
start_egress(const struct api_config *cfg, const struct sockaddr_in *self, struct err **errp)
{
    struct egress_config ec;
    int rc = 0;

    memset(&ec, 0, sizeof(ec));
    ec.data_dir = cfg->data_dir;
    ec.upstream_ca = cfg->egress_upstream_ca;
    ec.resolv_conf = cfg->egress_resolv_conf;
    ec.max_conns_per_env = 256;
    ec.conn_rate = cfg->egress_conn_rate != 0 ? cfg->egress_conn_rate : 100;
    ec.header_timeout_ms = cfg->egress_header_timeout_ms;
    ec.connect_timeout_ms = cfg->egress_connect_timeout_ms;
    ec.idle_timeout_ms = cfg->egress_idle_timeout_ms;
    ec.max_header_bytes = 32 * 1024;
    ec.allow = xcalloc(cfg->n_egress_allow + 1, sizeof(*ec.allow));
    for (size_t i = 0; i < cfg->n_egress_allow && rc == 0; i++)
        if (egress_cidr_parse(cfg->egress_allow[i], &ec.allow[ec.n_allow++], errp) < 0)
            rc = err_wrap(errp, "--egress-allow-cidr");
    ec.resolve = xcalloc(cfg->n_egress_resolve + 1, sizeof(*ec.resolve));
    for (size_t i = 0; i < cfg->n_egress_resolve && rc == 0; i++) {
        const char *eq = strchr(cfg->egress_resolve[i], '=');
        struct egress_dest name, addr;
        cleanup_free char *nm = NULL;
        if (eq == NULL) {
            rc = err_set(errp, ERR_INVALID, 0, "--egress-resolve wants NAME=IP, not '%s'",
                         cfg->egress_resolve[i]);
            break;
        }
        nm = xstrndup(cfg->egress_resolve[i], (size_t)(eq - cfg->egress_resolve[i]));
        if (egress_canon_host(nm, strlen(nm), &name, errp) < 0 || name.is_ip ||
            egress_canon_host(eq + 1, strlen(eq + 1), &addr, errp) < 0 || !addr.is_ip) {
            if (errp != NULL && *errp == NULL)
                err_set(errp, ERR_INVALID, 0, "'%s' is not NAME=IP", cfg->egress_resolve[i]);
            rc = err_wrap(errp, "--egress-resolve");
            break;
        }
        snprintf(ec.resolve[ec.n_resolve].name, sizeof(ec.resolve[0].name), "%s", name.host);
        ec.resolve[ec.n_resolve++].addr = addr.ip;
    }
    if (rc == 0 && cfg->egress_upstream_ca != NULL && access(cfg->egress_upstream_ca, R_OK) != 0)
        rc = err_set(errp, ERR_INVALID, errno, "--egress-upstream-ca %s", cfg->egress_upstream_ca);
    ec.self = xcalloc(1, sizeof(*ec.self));
    memcpy(&ec.self[0], self, sizeof(*self));
    ec.n_self = 1;
    if (rc == 0 && egress_start(&ec, &egress, errp) < 0)
        rc = -1;
    if (rc == 0) {
        cleanup_free char *ca = xasprintf("%s/ca/ca.pem", cfg->data_dir);
        struct stat st;
        if (stat(ca, &st) == 0)
            ca_made_ms = (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000;
    }
    free(ec.allow);
    free(ec.resolve);
    free(ec.self);
    if (rc < 0)
        return -1;
    env_set_start_hook(on_start, NULL);
    return 0;
}

/* Startup: storage ready, every row reconciled (dead sandboxes stopped, half-made ones
 * removed, running ones adopted as they are), stale upload staging removed. */
static int
recover(const struct api_config *cfg, struct err **errp)
{
    struct env_ctx *ctx = NULL;
    cleanup_free struct store_env *v = NULL;
    size_t n = 0, running = 0;

    if (env_ctx_open(cfg->data_dir, cfg->storage_size, &ctx, errp) < 0)
        return -1;
    if (env_list(ctx, &v, &n, errp) < 0) {
        env_ctx_close(ctx);
        return err_wrap(errp, "recover");
    }
    for (size_t i = 0; i < n; i++)
        running += v[i].state == STORE_ENV_RUNNING;
    log_info("recovered %zu environments, %zu running (adopted)", n, running);
    if (env_uploads_sweep(ctx, errp) < 0) {
        env_ctx_close(ctx);
        return err_wrap(errp, "recover");
    }
    env_ctx_close(ctx);
    return 0;
}

static struct agent_service *agents;
static struct model_config model_cfg;

/* The worker pool of interactions, after recovery of the sandboxes they run in. */
static int
start_agents(const struct api_config *cfg, struct err **errp)
{
    struct agent_options o;

    model_config_from_env(&model_cfg);
    if (cfg->prices_file != NULL && model_prices_load(cfg->prices_file, errp) < 0)
        return -1;
    if (cfg->default_model != NULL) {
        struct model_ref m;
        if (model_parse(cfg->default_model, &m, errp) < 0)
            return err_wrap(errp, "--model");
    }
    memset(&o, 0, sizeof(o));
    o.data_dir = cfg->data_dir;
    o.storage_size = cfg->storage_size;
    o.workers = cfg->workers;
    o.per_key_max = cfg->per_key_max;
    o.default_model = cfg->default_model;
    o.model = &model_cfg;
    o.retention_ms = cfg->retention_ms;
    o.resolve_env = api_env_resolve;
    o.resolve_arg = cfg;
    o.outbound_prepare = api_outbound_prepare;
    o.outbound_why = api_outbound_why;
    o.outbound_release = api_outbound_release;
    if (agent_service_start(&o, &agents, errp) < 0)
        return -1;
    api_set_agents(agents);
    return 0;
}

int
api_serve(const struct api_config *cfg, struct err **errp)
{
    static struct api_server srv;
    struct sockaddr_in sa;
    const union MHD_DaemonInfo *di;
    pthread_t wd;
    sigset_t set;
    struct env_ctx *jctx = NULL;
    char addr[INET_ADDRSTRLEN];
    int64_t next_janitor = 0;

    if (parse_listen(cfg->listen, &sa, errp) < 0 || api_oauth_init(errp) < 0)
        return -1;
    /* Before any thread: the spawner must be a fork of a single-threaded process. */
    if (sandbox_spawner_start(errp) < 0)
        return -1;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    srv.cfg = cfg;
    srv_cfg = cfg;
    {
        /* The data directory and its schema exist before the proxy opens its audit store. */
        struct env_ctx *ctx = NULL;
        if (env_ctx_open(cfg->data_dir, cfg->storage_size, &ctx, errp) < 0)
            return -1;
        env_ctx_close(ctx);
    }
    if (start_egress(cfg, &sa, errp) < 0)
        return -1;
    srv.daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ERROR_LOG,
        0, NULL, NULL, handler, &srv, MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, NULL,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_URI_LOG_CALLBACK, uri_logger, &srv, MHD_OPTION_NOTIFY_COMPLETED, completed,
        &srv, MHD_OPTION_NOTIFY_CONNECTION, notify_connection, &srv,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)1024, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(512 * 1024),
        MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)1024, MHD_OPTION_END);
    if (srv.daemon == NULL) {
        egress_stop(egress);
        return err_set(errp, ERR_IO, errno, "listen on %s", cfg->listen);
    }
    di = MHD_get_daemon_info(srv.daemon, MHD_DAEMON_INFO_BIND_PORT);
    if (di != NULL && sa.sin_port == 0) {
        /* The proxy must never dial the API itself: it learns the real port now. */
        sa.sin_port = htons(di->port);
        egress_set_self(egress, (struct sockaddr *)&sa);
    }
    inet_ntop(AF_INET, &sa.sin_addr, addr, sizeof(addr));
    pthread_create(&wd, NULL, watchdog, NULL);
    if (recover(cfg, errp) < 0) {
        MHD_stop_daemon(srv.daemon);
        egress_stop(egress);
        return -1;
    }
    {
        /* Re-adopted sandboxes get their proxy listeners back before the first request. */
        struct env_ctx *ctx = NULL;
        if (env_ctx_open(cfg->data_dir, cfg->storage_size, &ctx, NULL) == 0) {
            egress_reconcile(ctx);
            env_ctx_close(ctx);
        }
    }
    /* After recovery: the refiller's first pass removes pooled sandboxes that died. */
    if (env_pool_start(cfg->data_dir, cfg->storage_size, cfg->warm_pool, errp) < 0 ||
        start_agents(cfg, errp) < 0) {
        env_pool_stop();
        MHD_stop_daemon(srv.daemon);
        egress_stop(egress);
        return -1;
    }
    ready = true;
    log_fields(LOG_LEVEL_WARN, "ready", (const char *const[]){"data_dir", cfg->data_dir}, 2);
    {
        /* Always printed, whatever the log level: scripts wait for this line. */
        char url[64];
        snprintf(url, sizeof(url), "http://%s:%u", addr,
                 di != NULL ? (unsigned)di->port : (unsigned)ntohs(sa.sin_port));
        log_always("listening on %s", url);
    }
    while (!stopping) {
        struct timespec ts = {1, 0};
        int sig = sigtimedwait(&set, NULL, &ts);
        if (sig == SIGINT || sig == SIGTERM) {
            stopping = 1;
            break;
        }
        if (util_mono_ms() >= next_janitor) {
            struct err *e = NULL;
            if (jctx == NULL && env_ctx_open(cfg->data_dir, cfg->storage_size, &jctx, &e) < 0) {
                log_warnx("janitor: %s", e->msg);
                err_free(e);
            } else {
                env_janitor(jctx, &cfg->lc);
                egress_reconcile(jctx);
                agent_housekeep(agents, env_store(jctx));
            }
            next_janitor = util_mono_ms() + 1000;
        }
    }
    log_info("shutting down; sandboxes keep running");
    /* Runs end first (recorded failed: the server stopped), so that requests waiting on them
     * answer and streams close before the HTTP server waits for its connections. */
    agent_service_stop(agents);
    MHD_stop_daemon(srv.daemon);
    env_pool_stop();
    api_set_agents(NULL);
    agent_service_free(agents);
    agents = NULL;
    model_config_clear(&model_cfg);
    env_set_start_hook(NULL, NULL);
    /* Token requests under way use the proxy's address rules, and may hold a rotated refresh
     * token not yet stored: they end before the proxy goes. */
    api_oauth_quiesce(20000);
    {
        struct egress *eg;
        pthread_rwlock_wrlock(&egress_lock);
        eg = egress;
        egress = NULL; /* a request still under way now finds no proxy: the fixed rules */
        pthread_rwlock_unlock(&egress_lock);
        egress_stop(eg);
    }
    pthread_join(wd, NULL);
    env_ctx_close(jctx);
    while (npool > 0)
        env_ctx_close(pool[--npool]);
    return 0;
}

/* ------------------------------------------------------------------ keys */

static bool
valid_name(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > 63)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '-' || s[i] == '_' || s[i] == '.'))
            return false;
    return true;
}

/* True when word is one of the space-separated words of list. */
static bool
has_word(const char *list, const char *word)
{
    size_t n = strlen(word);

    if (n == 0 || strchr(word, ' ') != NULL)
        return false;
    for (const char *p = list; (p = strstr(p, word)) != NULL; p += n)
        if ((p == list || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0'))
            return true;
    return false;
}

static bool
known_scope(const char *s)
{
    return has_word(API_SCOPES, s);
}

static void
add_scope(struct buf *b, const char *s)
{
    if (!has_word(b->data != NULL ? b->data : "", s))
        buf_printf(b, NULL, "%s%s", b->len > 0 ? " " : "", s);
}

int
api_key_create(struct store *s, const char *name, const char *project,
               const char *const *scopes, size_t n_scopes, char **key_out, struct err **errp)
{
    struct store_key k;
    struct buf sc;
    char key[64], hash[65];

    if (!valid_name(name))
        return err_set(errp, ERR_INVALID, 0,
                       "key name '%s': use 1-63 letters, digits, '-', '_' or '.'", name);
    if (!valid_name(project))
        return err_set(errp, ERR_INVALID, 0,
                       "project '%s': use 1-63 letters, digits, '-', '_' or '.'", project);
    if (n_scopes == 0)
        return err_set(errp, ERR_INVALID, 0,
                       "a key needs at least one --scope (one of: environments, credentials, "
                       "interactions, agents, %s)",
                       API_SCOPES);
    buf_init(&sc, 255);
    for (size_t i = 0; i < n_scopes; i++) {
        if (strcmp(scopes[i], "environments") == 0 || strcmp(scopes[i], "credentials") == 0 ||
            strcmp(scopes[i], "interactions") == 0 || strcmp(scopes[i], "agents") == 0) {
            cleanup_free char *rd = xasprintf("%s.read", scopes[i]);
            cleanup_free char *wr = xasprintf("%s.write", scopes[i]);
            add_scope(&sc, rd);
            add_scope(&sc, wr);
        } else if (known_scope(scopes[i])) {
            add_scope(&sc, scopes[i]);
        } else {
            buf_free(&sc);
            return err_set(errp, ERR_INVALID, 0,
                           "unknown scope '%s' (known: environments, credentials, interactions, "
                           "agents, %s)",
                           scopes[i], API_SCOPES);
        }
    }
    memset(&k, 0, sizeof(k));
    snprintf(k.name, sizeof(k.name), "%s", name);
    snprintf(k.project, sizeof(k.project), "%s", project);
    snprintf(k.scopes, sizeof(k.scopes), "%s", sc.data != NULL ? sc.data : "");
    buf_free(&sc);
    k.created_ms = util_now_ms();
    if (util_id_new("pdk_", key, sizeof(key), errp) < 0)
        return -1;
    snprintf(k.prefix, sizeof(k.prefix), "%.10s", key);
    hex_sha256(key, strlen(key), hash);
    if (store_key_insert(s, &k, hash, errp) < 0) {
        explicit_bzero(key, sizeof(key));
        return -1;
    }
    *key_out = xstrdup(key);
    explicit_bzero(key, sizeof(key));
    return 0;
}
