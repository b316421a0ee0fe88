/*
 * OAuth2 credentials: the server exchanges the refresh token at token_url for an access token
 * (RFC 6749 §6), keeps it in memory until shortly before it expires, and hands the proxy
 * "Authorization: Bearer <access token>". The request is made by the daemon with libcurl, so
 * the same address rules as the proxy's apply to token_url: the name is resolved with the
 * operator's overrides, every address is vetted before connect (CURLOPT_OPENSOCKETFUNCTION),
 * no redirect is followed, the answer is capped, and TLS is verified (system CAs plus
 * --egress-upstream-ca).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <arpa/inet.h>
#include <curl/curl.h>

#include "api_int.h"

#define TOKEN_BODY_MAX (64u * 1024)
#define EARLY_MS       60000 /* refresh this long before expiry */

#define RETRY_MS 30000 /* after a failed token request, the next one waits this long */

struct cached {
    char key[200]; /* project/id */
    char *token;
    int64_t expires_ms;
    int64_t failed_ms; /* the last failure, 0 none: the IdP is not asked every second */
    char why[200];
    uint64_t gen; /* bumped when the credential changes: a fetch begun before is not kept */
};

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
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


static size_t
collect(char *data, size_t size, size_t n, void *arg)
{
    struct buf *b = arg;

    if (buf_append(b, data, size * n, NULL) < 0)
        return 0; /* over the cap: libcurl aborts the transfer */
    return size * n;
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

static char *
form_value(CURL *c, const char *s)
{
    char *e = curl_easy_escape(c, s, 0);
    char *out = xstrdup(e != NULL ? e : "");

    curl_free(e);
    return out;
}

bool
api_oauth_url_ok(const char *url)
{
    return strncasecmp(url, "https://", 8) == 0 && url[8] != '\0';
}

/* One token request. */
static int
fetch_token(json_t *config, json_t *secret, char **token, int64_t *expires_ms, struct err **errp)
{
    const char *url = json_string_value(json_object_get(config, "token_url"));
    const char *cid = json_string_value(json_object_get(config, "client_id"));
    const char *csec = json_string_value(json_object_get(secret, "client_secret"));
    const char *rt = json_string_value(json_object_get(secret, "refresh_token"));
    json_t *scopes = json_object_get(config, "scopes");
    CURL *c = curl_easy_init();
    void *state = NULL;
    struct buf body, form;
    const char *why = NULL;
    long status = 0;
    CURLcode rc;
    json_t *ans;
    int ret = -1;

    if (c == NULL || url == NULL || cid == NULL || csec == NULL || rt == NULL) {
        if (c != NULL)
            curl_easy_cleanup(c);
        return err_set(errp, ERR_INVALID, 0, "oauth2 credential is incomplete");
    }
    if (!api_oauth_url_ok(url)) { /* stored before token_url had to be https */
        curl_easy_cleanup(c);
        return err_set(errp, ERR_INVALID, 0,
                       "oauth2 token_url %s is not https: the client secret is not sent in clear",
                       url);
    }
    buf_init(&body, TOKEN_BODY_MAX);
    buf_init(&form, 64 * 1024);
    {
        cleanup_free char *a = form_value(c, rt), *b = form_value(c, cid), *d = form_value(c, csec);
        buf_printf(&form, NULL, "grant_type=refresh_token&refresh_token=%s&client_id=%s"
                   "&client_secret=%s", a, b, d);
        explicit_bzero(a, strlen(a));
        explicit_bzero(d, strlen(d));
    }
    if (json_array_size(scopes) > 0) {
        struct buf sc;
        size_t i;
        json_t *s;
        buf_init(&sc, 8192);
        json_array_foreach(scopes, i, s)
            buf_printf(&sc, NULL, "%s%s", i ? " " : "", json_string_value(s));
        {
            cleanup_free char *e = form_value(c, sc.data != NULL ? sc.data : "");
            buf_printf(&form, NULL, "&scope=%s", e);
        }
        buf_free(&sc);
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 15000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, form.data);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    state = api_outbound_prepare(c, url);
    rc = curl_easy_perform(c);
    why = api_outbound_why(state);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    explicit_bzero(form.data, form.len);
    buf_free(&form);
    if (rc != CURLE_OK) {
        err_set(errp, ERR_UPSTREAM, 0, "oauth2 token request to %s failed: %s", url,
                why != NULL ? why : curl_easy_strerror(rc));
        goto out;
    }
    if (status != 200) {
        err_set(errp, ERR_UPSTREAM, 0, "oauth2 token endpoint %s answered %ld", url, status);
        goto out;
    }
    ans = json_loadb(body.data != NULL ? body.data : "", body.len, 0, NULL);
    if (!json_is_string(json_object_get(ans, "access_token"))) {
        json_decref(ans);
        err_set(errp, ERR_UPSTREAM, 0, "oauth2 token endpoint %s sent no access_token", url);
        goto out;
    }
    /* It goes into a request head: RFC 6749 allows printable ASCII only (VSCHAR). */
    {
        json_t *at = json_object_get(ans, "access_token");
        const char *s = json_string_value(at);
        bool ok = json_string_length(at) > 0 && json_string_length(at) <= 16384;
        for (size_t i = 0; ok && i < json_string_length(at); i++)
            ok = s[i] >= 0x20 && s[i] <= 0x7e;
        if (!ok) {
            explicit_bzero((char *)(uintptr_t)s, json_string_length(at));
            json_decref(ans);
            err_set(errp, ERR_UPSTREAM, 0,
                    "oauth2 token endpoint %s sent an access_token that is not printable ASCII "
                    "(1 to 16384 bytes); it cannot go into a request header",
                    url);
            goto out;
        }
    }
    *token = xstrdup(json_string_value(json_object_get(ans, "access_token")));
    {
        json_t *ex = json_object_get(ans, "expires_in");
        int64_t secs = json_is_integer(ex) ? json_integer_value(ex) : 3600;
        *expires_ms = util_now_ms() + (secs > 0 ? secs : 60) * 1000;
    }
    explicit_bzero((char *)(uintptr_t)json_string_value(json_object_get(ans, "access_token")),
                   strlen(*token));
    json_decref(ans);
    ret = 0;
out:
    if (body.data != NULL)
        explicit_bzero(body.data, body.len);
    buf_free(&body);
    api_outbound_release(state);
    curl_easy_cleanup(c);
    return ret;
}

int
api_oauth_token(const char *project, const char *id, json_t *config, json_t *secret,
                char **token, struct err **errp)
{
    char key[200];
    int64_t now = util_now_ms(), exp = 0;
    char *fresh = NULL;

    struct cached *s;
    struct err *e = NULL;
    uint64_t gen;

    snprintf(key, sizeof(key), "%s/%s", project, id);
    pthread_mutex_lock(&cache_lock);
    s = slot(key);
    if (s->token != NULL && s->expires_ms - EARLY_MS > now) {
        *token = xstrdup(s->token);
        pthread_mutex_unlock(&cache_lock);
        return 0;
    }
    if (s->failed_ms != 0 && now - s->failed_ms < RETRY_MS) {
        pthread_mutex_unlock(&cache_lock);
        /* The same words each time: the proxy's policy (and its listener) stays put. */
        return err_set(errp, ERR_UPSTREAM, 0, "%s", s->why);
    }
    gen = s->gen;
    pthread_mutex_unlock(&cache_lock);
    if (fetch_token(config, secret, &fresh, &exp, &e) < 0) {
        pthread_mutex_lock(&cache_lock);
        s = slot(key);
        if (s->gen == gen) {
            s->failed_ms = util_now_ms();
            snprintf(s->why, sizeof(s->why), "%s", e->msg);
        }
        pthread_mutex_unlock(&cache_lock);
        *errp = e;
        return -1;
    }
    pthread_mutex_lock(&cache_lock);
    s = slot(key);
    if (s->gen != gen) {
        /* The credential changed while we asked: this answer is for the old one. */
        pthread_mutex_unlock(&cache_lock);
        explicit_bzero(fresh, strlen(fresh));
        free(fresh);
        return err_set(errp, ERR_UPSTREAM, 0, "the credential changed during its token request");
    }
    if (s->token != NULL) {
        explicit_bzero(s->token, strlen(s->token));
        free(s->token);
    }
    s->token = xstrdup(fresh);
    s->expires_ms = exp;
    s->failed_ms = 0;
    pthread_mutex_unlock(&cache_lock);
    *token = fresh;
    return 0;
}

void
api_oauth_forget(const char *project, const char *id)
{
    char key[200];

    snprintf(key, sizeof(key), "%s/%s", project, id);
    pthread_mutex_lock(&cache_lock);
    for (size_t i = 0; i < ncache; i++)
        if (strcmp(cache[i].key, key) == 0) {
            if (cache[i].token != NULL) {
                explicit_bzero(cache[i].token, strlen(cache[i].token));
                free(cache[i].token);
            }
            cache[i].token = NULL;
            cache[i].expires_ms = 0;
            cache[i].failed_ms = 0;
            cache[i].gen++;
        }
    pthread_mutex_unlock(&cache_lock);
}
