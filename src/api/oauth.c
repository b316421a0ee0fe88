/*
 * OAuth2 credentials: the server exchanges the refresh token at token_url for an access token
 * (RFC 6749 §6), keeps it in memory until shortly before it expires, and hands the proxy
 * "Authorization: Bearer <access token>". The request is made by the daemon with libcurl, so
 * the same address rules as the proxy's apply to token_url: the name is resolved with the
 * operator's overrides, every address is vetted before connect (CURLOPT_OPENSOCKETFUNCTION),
 * no redirect is followed, the answer is capped, and TLS is verified (system CAs plus
 * --egress-upstream-ca).
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <arpa/inet.h>
#include <curl/curl.h>
#include <malloc.h>
#include <openssl/ssl.h>

#include "api_int.h"

#define TOKEN_BODY_MAX (64u * 1024)
#define EARLY_MS       60000 /* refresh this long before expiry (at most half the lifetime) */
/* An expires_in outside these is taken as the nearer one: a token said to live a second (or
 * not at all) is not fetched again on every reconcile, and one said to live for years is
 * still asked for again daily. */
#define LIFETIME_MIN_S 10
#define LIFETIME_MAX_S 86400
/* When expires_in is missing or not a number: short, so a token that dies sooner is not
 * injected long after (RFC 6749 §5.1 makes expires_in only RECOMMENDED). */
#define LIFETIME_DEFAULT_S 300

#define RETRY_MS 30000 /* after a failed token request, the next one waits this long */

struct cached {
    char key[200]; /* project/id */
    char *token;
    int64_t refresh_ms; /* when to ask again: before it expires (monotonic) */
    int64_t expires_ms; /* until when it may still be used, while its successor is fetched
                           (monotonic: a wall clock set back does not stretch it) */
    int64_t failed_ms; /* the last failure (monotonic), 0 none: the IdP is not asked every second */
    char why[200];
    uint64_t gen; /* bumped when the credential changes: a fetch begun before is not kept */
    bool fetching; /* a token request is under way: others wait for its answer */
};

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cache_cond = PTHREAD_COND_INITIALIZER; /* a fetch ended */
static unsigned inflight; /* token requests under way, under cache_lock */
static bool stopping;     /* the server is stopping: no new request starts */
static struct cached *cache;
static size_t ncache;

/* The slot for key, made when missing; under cache_lock. */
static struct cached *
slot(const char *key)
{
    size_t i;

    for (i = 0; i < ncache && strcmp(cache[i].key, key) != 0; i++)
        ;
    if (i == ncache) {
        cache = xrealloc(cache, (ncache + 1) * sizeof(*cache));
        memset(&cache[ncache], 0, sizeof(*cache));
        snprintf(cache[ncache].key, sizeof(cache[ncache].key), "%s", key);
        ncache++;
    }
    return &cache[i];
}

/* Appends to a buffer made whole at its cap (no realloc leaves a copy of the answer, which
 * holds a token, behind); past the cap libcurl aborts the transfer. */
static size_t
collect(char *data, size_t size, size_t n, void *arg)
{
    struct buf *b = arg;

    if (size * n > b->max - b->len || buf_append(b, data, size * n, NULL) < 0)
        return 0;
    return size * n;
}

/*
 * libcurl's allocator, wiping: the token form sits in its request buffer, the answer (an
 * access token, maybe a new refresh token) in its download buffer, and neither is wiped by
 * libcurl. A block is wiped whole (malloc_usable_size) when freed, and when it moves.
 */
static void
curl_free_wiped(void *p)
{
    if (p != NULL) {
        explicit_bzero(p, malloc_usable_size(p));
        free(p);
    }
}

static void *
curl_realloc_wiped(void *p, size_t n)
{
    size_t old;
    void *q;

    if (p == NULL)
        return malloc(n);
    if (n == 0) {
        curl_free_wiped(p);
        return NULL;
    }
    old = malloc_usable_size(p);
    if (n <= old)
        return p; /* it fits: glibc would keep the block too */
    q = malloc(n);
    if (q == NULL)
        return NULL;
    memcpy(q, p, old);
    curl_free_wiped(p);
    return q;
}

int
api_oauth_init(struct err **errp)
{
    CURLcode rc = curl_global_init_mem(CURL_GLOBAL_DEFAULT, malloc, curl_free_wiped,
                                       curl_realloc_wiped, strdup, calloc);

    if (rc != CURLE_OK)
        return err_set(errp, ERR_INTERNAL, 0, "libcurl: %s", curl_easy_strerror(rc));
    return 0;
}

/* OpenSSL wipes the plain text it decrypted (the answer) when it frees its buffers. */
static CURLcode
tls_cleanse(CURL *c, void *ssl_ctx, void *arg)
{
    (void)c;
    (void)arg;
    SSL_CTX_set_options(ssl_ctx, SSL_OP_CLEANSE_PLAINTEXT);
    return CURLE_OK;
}

/* The proxy's rules for a request the daemon makes itself. */
struct outbound {
    const char *why; /* what refused an address, NULL: nothing */
    struct curl_slist *resolve;
};

/* Vets the address libcurl is about to connect to, as the proxy would. */
static curl_socket_t
open_vetted(void *arg, curlsocktype purpose, struct curl_sockaddr *a)
{
    struct outbound *o = arg;
    const char *w;

    (void)purpose;
    w = api_egress_vet(&a->addr);
    if (w != NULL) {
        o->why = w;
        return CURL_SOCKET_BAD;
    }
    return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

void *
api_outbound_prepare(void *curl, const char *url)
{
    CURL *c = curl;
    struct outbound *o = xcalloc(1, sizeof(*o));
    CURLU *u = curl_url();
    char *host = NULL, *port = NULL;
    struct sockaddr_storage ss;

    /* The operator's --egress-resolve applies here too. */
    if (u != NULL && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK &&
        api_egress_override(host, &ss)) {
        char ip[INET6_ADDRSTRLEN], line[400];
        const void *a = ss.ss_family == AF_INET
                            ? (const void *)&((struct sockaddr_in *)&ss)->sin_addr
                            : (const void *)&((struct sockaddr_in6 *)&ss)->sin6_addr;
        inet_ntop(ss.ss_family, a, ip, sizeof(ip));
        snprintf(line, sizeof(line), "%s:%s:%s%s%s", host, port,
                 ss.ss_family == AF_INET6 ? "[" : "", ip, ss.ss_family == AF_INET6 ? "]" : "");
        o->resolve = curl_slist_append(NULL, line);
    }
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(u);
    curl_easy_setopt(c, CURLOPT_OPENSOCKETFUNCTION, open_vetted);
    curl_easy_setopt(c, CURLOPT_OPENSOCKETDATA, o);
    curl_easy_setopt(c, CURLOPT_RESOLVE, o->resolve);
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_CAPATH, "/etc/ssl/certs");
    if (api_egress_upstream_ca() != NULL)
        curl_easy_setopt(c, CURLOPT_CAINFO, api_egress_upstream_ca());
    return o;
}

const char *
api_outbound_why(void *state)
{
    return state != NULL ? ((struct outbound *)state)->why : NULL;
}

void
api_outbound_release(void *state)
{
    struct outbound *o = state;

    if (o == NULL)
        return;
    curl_slist_free_all(o->resolve);
    free(o);
}

/* s form-encoded (RFC 6749 appendix B), or NULL when there is no s. */
static char *
form_value(const char *s)
{
    return s != NULL ? pct_encode_secret(s, strlen(s)) : NULL;
}

/*
 * The token request's form (RFC 6749 §6). Each piece is encoded into a buffer of its final
 * size made up front, and the form is measured and then written once into an allocation of
 * its own size: no grown-and-freed intermediate buffer (curl_easy_escape's, vasprintf's) is
 * left holding the refresh token or the client secret. NULL when a field is missing. The
 * caller wipes and frees it.
 */
static char *
token_form(const char *rt, const char *cid, const char *csec, json_t *scopes)
{
    char *a = form_value(rt), *b = form_value(cid), *d = form_value(csec);
    char *sc = NULL, *e = NULL, *form = NULL;
    size_t n = 0, off = 0, i;
    json_t *v;

    json_array_foreach(scopes, i, v)
        n += json_string_length(v) + 1;
    if (n > 0) {
        sc = xmalloc(n);
        json_array_foreach(scopes, i, v) {
            if (off > 0)
                sc[off++] = ' ';
            memcpy(sc + off, json_string_value(v) != NULL ? json_string_value(v) : "",
                   json_string_length(v));
            off += json_string_length(v);
        }
        sc[off] = '\0';
        e = form_value(sc);
    }
    if (a != NULL && b != NULL && d != NULL)
        form = xasprintf_secret("grant_type=refresh_token&refresh_token=%s&client_id=%s"
                                "&client_secret=%s%s%s",
                                a, b, d, e != NULL ? "&scope=" : "", e != NULL ? e : "");
    free_wiped(a);
    free_wiped(b);
    free_wiped(d);
    free(sc);
    free(e);
    return form;
}

/* The token URL as errors and logs show it: scheme, host and path; a query, which may carry
 * something secret, is left out. */
static void
url_shown(const char *url, char *out, size_t n)
{
    size_t len = strcspn(url, "?#");

    snprintf(out, n, "%.*s%s", (int)(len > 200 ? 200 : len), url, url[len] != '\0' ? "?..." : "");
}

bool
api_oauth_url_ok(const char *url)
{
    size_t auth;

    if (strncasecmp(url, "https://", 8) != 0 || url[8] == '\0')
        return false;
    /* No user:password@ in the authority: it would be sent as Basic auth, and shown. */
    auth = strcspn(url + 8, "/?#");
    return auth > 0 && memchr(url + 8, '@', auth) == NULL;
}

int64_t
api_oauth_lifetime_s(const json_t *expires_in)
{
    double secs = LIFETIME_DEFAULT_S;

    if (json_is_integer(expires_in)) {
        json_int_t v = json_integer_value(expires_in);
        secs = v < LIFETIME_MIN_S ? LIFETIME_MIN_S : v > LIFETIME_MAX_S ? LIFETIME_MAX_S : v;
    } else if (json_is_real(expires_in)) {
        secs = json_real_value(expires_in);
    } else if (json_is_string(expires_in)) {
        /* Some endpoints (Azure AD v1) send "3599": a decimal number, nothing around it. */
        const char *v = json_string_value(expires_in);
        char *end = NULL;
        double d;
        errno = 0;
        if (v[0] >= '0' && v[0] <= '9' &&
            strspn(v, "0123456789.") == json_string_length(expires_in)) {
            d = strtod(v, &end);
            if (*end == '\0' && errno == 0)
                secs = d;
        }
    }
    if (!(secs == secs)) /* NaN */
        secs = LIFETIME_DEFAULT_S;
    if (secs < LIFETIME_MIN_S)
        secs = LIFETIME_MIN_S;
    if (secs > LIFETIME_MAX_S)
        secs = LIFETIME_MAX_S;
    return (int64_t)secs;
}

/* What one token request brought. */
struct answer {
    char *token;        /* the access token */
    int64_t refresh_ms; /* when to ask again (monotonic) */
    int64_t expires_ms; /* when it expires (monotonic) */
    char *rotated;      /* a new refresh token the endpoint issued, or NULL */
};

/* One token request. */
static int
fetch_token(json_t *config, json_t *secret, struct answer *out, struct err **errp)
{
    const char *url = json_string_value(json_object_get(config, "token_url"));
    const char *cid = json_string_value(json_object_get(config, "client_id"));
    const char *csec = json_string_value(json_object_get(secret, "client_secret"));
    const char *rt = json_string_value(json_object_get(secret, "refresh_token"));
    CURL *c = curl_easy_init();
    void *state = NULL;
    struct buf body;
    char *form = NULL, shown[256];
    const char *why = NULL;
    long status = 0;
    CURLcode rc;
    json_t *ans = NULL, *at, *nrt;
    int ret = -1;

    if (c == NULL || url == NULL || cid == NULL || csec == NULL || rt == NULL) {
        if (c != NULL)
            curl_easy_cleanup(c);
        return err_set(errp, ERR_INVALID, 0, "oauth2 credential is incomplete");
    }
    url_shown(url, shown, sizeof(shown));
    if (!api_oauth_url_ok(url)) { /* stored before token_url had to be https, without userinfo */
        curl_easy_cleanup(c);
        return err_set(errp, ERR_INVALID, 0,
                       "oauth2 token_url %s is not an https:// URL without user:password@: the "
                       "client secret is sent only in the request body, encrypted",
                       strchr(url, '@') != NULL ? "(with userinfo, not shown)" : shown);
    }
    form = token_form(rt, cid, csec, json_object_get(config, "scopes"));
    if (form == NULL) {
        curl_easy_cleanup(c);
        return err_set(errp, ERR_INTERNAL, 0, "oauth2 token request to %s: cannot encode it",
                       shown);
    }
    /* Whole at its cap from the start: growing it would leave copies of the answer. */
    buf_init(&body, TOKEN_BODY_MAX);
    body.wipe = true;
    body.data = xmalloc(TOKEN_BODY_MAX + 1);
    body.cap = TOKEN_BODY_MAX + 1;
    body.data[0] = '\0';
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 15000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, form);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(c, CURLOPT_SSL_CTX_FUNCTION, tls_cleanse);
    state = api_outbound_prepare(c, url);
    rc = curl_easy_perform(c);
    why = api_outbound_why(state);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    free_wiped(form);
    if (rc != CURLE_OK) {
        err_set(errp, ERR_UPSTREAM, 0, "oauth2 token request to %s failed: %s", shown,
                why != NULL ? why : curl_easy_strerror(rc));
        goto out;
    }
    if (status != 200) {
        err_set(errp, ERR_UPSTREAM, 0, "oauth2 token endpoint %s answered %ld", shown, status);
        goto out;
    }
    ans = json_loadb(body.data, body.len, 0, NULL);
    at = json_object_get(ans, "access_token");
    if (!json_is_string(at)) {
        err_set(errp, ERR_UPSTREAM, 0, "oauth2 token endpoint %s sent no access_token", shown);
        goto out;
    }
    /* It goes into a request head: RFC 6749 allows printable ASCII only (VSCHAR). */
    {
        const char *v = json_string_value(at);
        bool ok = json_string_length(at) > 0 && json_string_length(at) <= 16384;
        for (size_t i = 0; ok && i < json_string_length(at); i++)
            ok = v[i] >= 0x20 && v[i] <= 0x7e;
        if (!ok) {
            err_set(errp, ERR_UPSTREAM, 0,
                    "oauth2 token endpoint %s sent an access_token that is not printable ASCII "
                    "(1 to 16384 bytes); it cannot go into a request header",
                    shown);
            goto out;
        }
    }
    /* A new refresh token replaces the one just used (RFC 6749 §6): the old one may already
     * be dead at an endpoint that rotates them. Kept only if it could be stored as given. */
    nrt = json_object_get(ans, "refresh_token");
    if (json_is_string(nrt) && json_string_length(nrt) > 0 && json_string_length(nrt) <= 16384 &&
        strlen(json_string_value(nrt)) == json_string_length(nrt) &&
        strcmp(json_string_value(nrt), rt) != 0)
        out->rotated = xstrdup(json_string_value(nrt));
    out->token = xstrdup(json_string_value(at));
    {
        int64_t life = api_oauth_lifetime_s(json_object_get(ans, "expires_in")) * 1000;
        out->expires_ms = util_mono_ms() + life;
        out->refresh_ms = out->expires_ms - (EARLY_MS < life / 2 ? EARLY_MS : life / 2);
    }
    ret = 0;
out:
    api_wipe_json(ans);
    json_decref(ans);
    explicit_bzero(body.data, body.cap);
    buf_free(&body);
    api_outbound_release(state);
    curl_easy_cleanup(c);
    return ret;
}

/*
 * One token request for a credential whose slot the caller marked fetching (taking its gen),
 * and what follows: a rotated refresh token stored, the answer cached unless the credential
 * changed meanwhile, the slot released and waiters woken. The credential is read here, after
 * the slot was taken, on a database connection of its own (this may run on a thread of its
 * own): a secret read before another fetch or a PATCH is never sent. *token (may be NULL)
 * gets a copy.
 */
struct job {
    char *data_dir;
    char key[200], project[128], id[128];
    uint64_t gen;
};

static int
run_fetch(const struct job *j, char **token, struct err **errp)
{
    struct answer a = { NULL, 0, 0, NULL };
    cleanup_free char *db = xasprintf("%s/paddock.db", j->data_dir);
    struct store *st = NULL;
    struct store_cred meta;
    json_t *config = NULL, *secret = NULL;
    struct err *e = NULL;
    struct cached *s;
    int rc = 0;

    if (store_open(db, &st, &e) < 0 ||
        api_cred_secret(j->data_dir, st, j->project, j->id, &meta, &config, &secret, &e) < 0) {
        err_wrap(&e, "oauth2 credential %s", j->id);
    } else {
        store_cred_clear(&meta);
        if (fetch_token(config, secret, &a, &e) == 0 && a.rotated != NULL) {
            /* Stored before the token is handed out; only over the refresh token this
             * request spent, never over one an operator has put there meanwhile. */
            struct err *re = NULL;
            const char *used = json_string_value(json_object_get(secret, "refresh_token"));
            if (api_cred_rotate(j->data_dir, st, j->project, j->id, "refresh_token", used,
                                a.rotated, &re) < 0) {
                log_warnx("oauth2 credential %s: the token endpoint issued a new refresh token "
                          "that could not be stored (%s); the next refresh may be refused",
                          j->id, re->msg);
                err_free(re);
            }
        }
        free_wiped(a.rotated);
        api_wipe_json(secret);
        json_decref(secret);
        json_decref(config);
    }
    store_close(st);
    pthread_mutex_lock(&cache_lock);
    s = slot(j->key);
    s->fetching = false;
    inflight--;
    pthread_cond_broadcast(&cache_cond);
    if (e != NULL) {
        if (s->gen == j->gen) {
            s->failed_ms = util_mono_ms();
            snprintf(s->why, sizeof(s->why), "%s", e->msg);
        }
        rc = -1;
    } else if (s->gen != j->gen) {
        /* The credential changed while we asked: this answer is for the old one. */
        rc = err_set(&e, ERR_UPSTREAM, 0, "the credential changed during its token request");
    } else {
        free_wiped(s->token);
        s->token = xstrdup(a.token);
        s->refresh_ms = a.refresh_ms;
        s->expires_ms = a.expires_ms;
        s->failed_ms = 0;
        if (token != NULL)
            *token = xstrdup(a.token);
    }
    pthread_mutex_unlock(&cache_lock);
    free_wiped(a.token);
    if (e != NULL) {
        if (errp != NULL)
            *errp = e;
        else
            err_free(e);
    }
    return rc;
}

static void *
fetch_thread(void *arg)
{
    struct job *j = arg;

    (void)run_fetch(j, NULL, NULL); /* a failure is kept in the slot, for the next ask */
    free(j->data_dir);
    free(j);
    return NULL;
}

/* A copy of the slot's token (under cache_lock), 0. */
static int
hand_out(const struct cached *s, char **token)
{
    *token = xstrdup(s->token);
    pthread_mutex_unlock(&cache_lock);
    return 0;
}

int
api_oauth_token(const char *data_dir, const char *project, const char *id, bool wait, char **token,
                struct err **errp)
{
    struct job j;
    struct cached *s;
    bool usable = false;

    memset(&j, 0, sizeof(j));
    snprintf(j.key, sizeof(j.key), "%s/%s", project, id);
    snprintf(j.project, sizeof(j.project), "%s", project);
    snprintf(j.id, sizeof(j.id), "%s", id);
    pthread_mutex_lock(&cache_lock);
    for (;;) {
        int64_t now = util_mono_ms();
        s = slot(j.key);
        usable = s->token != NULL && s->expires_ms > now;
        if (usable && s->refresh_ms > now)
            return hand_out(s, token);
        if (s->failed_ms != 0 && util_mono_ms() - s->failed_ms < RETRY_MS) {
            char why[sizeof(s->why)];
            if (usable) /* the last one still works; ask again after the wait */
                return hand_out(s, token);
            snprintf(why, sizeof(why), "%s", s->why); /* the slot may move once unlocked */
            pthread_mutex_unlock(&cache_lock);
            /* The same words each time: the proxy's policy (and its listener) stays put. */
            return err_set(errp, ERR_UPSTREAM, 0, "%s", why);
        }
        if (!s->fetching && !stopping)
            break;
        if (!wait || usable || stopping) {
            /* Another request is under way (or the server is stopping): the token it brings
             * is installed by a later ask; meanwhile the one in hand is used while it lasts. */
            if (usable)
                return hand_out(s, token);
            pthread_mutex_unlock(&cache_lock);
            return err_set(errp, ERR_CONFLICT, 0,
                           "an access token is being fetched for credential '%s'", id);
        }
        /* One request per credential at a time: another thread's answer serves this one
         * too, and a refresh token that rotates is never spent twice. */
        pthread_cond_wait(&cache_cond, &cache_lock);
    }
    s->fetching = true;
    inflight++;
    j.gen = s->gen;
    pthread_mutex_unlock(&cache_lock);
    if (wait && !usable) {
        j.data_dir = (char *)(uintptr_t)data_dir;
        return run_fetch(&j, token, errp);
    }
    {
        /* The caller must not wait (the server's main loop, which also answers signals and
         * runs the janitor): the request runs on a thread of its own, and its token is
         * installed by the next ask, within a second. A token still in hand is used. */
        struct job *bg = xmalloc(sizeof(*bg));
        pthread_t t;
        pthread_attr_t at;
        int rc;
        *bg = j;
        bg->data_dir = xstrdup(data_dir);
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        rc = pthread_create(&t, &at, fetch_thread, bg);
        pthread_attr_destroy(&at);
        if (rc != 0) {
            pthread_mutex_lock(&cache_lock);
            slot(j.key)->fetching = false;
            inflight--;
            pthread_cond_broadcast(&cache_cond);
            pthread_mutex_unlock(&cache_lock);
            free(bg->data_dir);
            free(bg);
            return err_set(errp, ERR_INTERNAL, rc, "start a token request");
        }
    }
    pthread_mutex_lock(&cache_lock);
    s = slot(j.key);
    if (usable && s->token != NULL)
        return hand_out(s, token);
    pthread_mutex_unlock(&cache_lock);
    return err_set(errp, ERR_CONFLICT, 0, "an access token is being fetched for credential '%s'",
                   id);
}

void
api_oauth_quiesce(int timeout_ms)
{
    struct timespec until = util_deadline(timeout_ms);

    pthread_mutex_lock(&cache_lock);
    stopping = true;
    while (inflight > 0)
        if (pthread_cond_clockwait(&cache_cond, &cache_lock, CLOCK_MONOTONIC, &until) == ETIMEDOUT)
            break;
    if (inflight > 0)
        log_warnx("oauth2: %u token requests still under way at shutdown", inflight);
    pthread_mutex_unlock(&cache_lock);
}

void
api_oauth_forget(const char *project, const char *id)
{
    char key[200];

    snprintf(key, sizeof(key), "%s/%s", project, id);
    pthread_mutex_lock(&cache_lock);
    for (size_t i = 0; i < ncache; i++)
        if (strcmp(cache[i].key, key) == 0) {
            free_wiped(cache[i].token);
            cache[i].token = NULL;
            cache[i].refresh_ms = 0;
            cache[i].expires_ms = 0;
            cache[i].failed_ms = 0;
            cache[i].gen++;
        }
    pthread_mutex_unlock(&cache_lock);
}
