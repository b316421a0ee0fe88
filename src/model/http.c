/*
 * The transport of model calls: libcurl, driven through a multi handle so that the cancel flag
 * is looked at every POLL_MS even while the upstream is silent. Each thread keeps its multi
 * and easy handle between calls, so the connection to a model server is kept alive: a loop
 * makes many calls to one upstream, and a new TLS handshake with a hosted API costs more than
 * a local model's answer.
 * No redirect is followed (the key goes to the configured host only), no proxy from the
 * environment is used, HTTP/1.1 only, and the body is capped at max_response.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "model_int.h"

#define POLL_MS 20

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;

static void
curl_init(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* The state of one transfer, shared with libcurl's callbacks. */
struct xfer {
    struct buf body;
    bool over; /* the body passed its cap */
    int64_t retry_after_ms;
};

static size_t
on_body(char *data, size_t size, size_t n, void *arg)
{
    struct xfer *x = arg;

    if (buf_append(&x->body, data, size * n, NULL) < 0) {
        x->over = true;
        return 0; /* libcurl aborts the transfer with CURLE_WRITE_ERROR */
    }
    return size * n;
}

int64_t
model__parse_retry_after(const char *value, size_t len, bool in_ms)
{
    int64_t v = 0;
    size_t i = 0;

    while (i < len && (value[i] == ' ' || value[i] == '\t'))
        i++;
    if (i == len || value[i] < '0' || value[i] > '9')
        return -1;
    for (; i < len && value[i] >= '0' && value[i] <= '9'; i++) {
        if (v > 1000000000)
            return -1;
        v = v * 10 + (value[i] - '0');
    }
    /* A fraction of retry-after-ms is dropped; an HTTP date is not understood (-1). */
    if (in_ms && i < len && value[i] == '.')
        for (i++; i < len && value[i] >= '0' && value[i] <= '9'; i++)
            ;
    while (i < len && (value[i] == ' ' || value[i] == '\t' || value[i] == '\r' || value[i] == '\n'))
        i++;
    if (i != len)
        return -1;
    return in_ms ? v : v * 1000;
}

/* Picks Retry-After (seconds) or retry-after-ms out of the header lines; the latter wins. */
static size_t
on_header(char *data, size_t size, size_t n, void *arg)
{
    struct xfer *x = arg;
    size_t len = size * n;
    int64_t v;

    if (len > 5 && strncmp(data, "HTTP/", 5) == 0) {
        x->retry_after_ms = -1; /* a new response (after a 100 Continue) */
    } else if (len > 15 && strncasecmp(data, "retry-after-ms:", 15) == 0) {
        v = model__parse_retry_after(data + 15, len - 15, true);
        if (v >= 0)
            x->retry_after_ms = v;
    } else if (len > 12 && strncasecmp(data, "retry-after:", 12) == 0 && x->retry_after_ms < 0) {
        x->retry_after_ms = model__parse_retry_after(data + 12, len - 12, false);
    }
    return len;
}

/* The URL without user info and query, for messages: either could hold a secret. */
static char *
display_url(const char *url)
{
    const char *scheme_end = strstr(url, "://");
    const char *host = scheme_end != NULL ? scheme_end + 3 : url;
    size_t hlen = strcspn(host, "/?#");
    const char *at = memchr(host, '@', hlen);
    const char *from = at != NULL ? at + 1 : host;
    size_t rest = strcspn(from, "?#");

    return xasprintf("%.*s%.*s", (int)(host - url), url, (int)rest, from);
}

void
model_headers_free(struct curl_slist *h)
{
    for (struct curl_slist *p = h; p != NULL; p = p->next)
        explicit_bzero(p->data, strlen(p->data));
    curl_slist_free_all(h);
}

static struct curl_slist *
headers_make(const struct model_http_req *r)
{
    struct curl_slist *h = NULL;

    h = curl_slist_append(h, "Content-Type: application/json");
    h = curl_slist_append(h, "Accept: application/json");
    h = curl_slist_append(h, "Expect:"); /* no 100-continue round trip for large bodies */
    if (r->extra != NULL)
        h = curl_slist_append(h, r->extra);
    if (r->auth_name != NULL && r->auth_value != NULL) {
        char *line = xasprintf("%s: %s", r->auth_name, r->auth_value);
        h = curl_slist_append(h, line);
        explicit_bzero(line, strlen(line));
        free(line);
    }
    ASSERT(h != NULL);
    return h;
}

/* This thread's handles, kept for its next call. */
struct handles {
    CURLM *multi;
    CURL *easy;
};

static pthread_key_t handles_key;
static pthread_once_t handles_once = PTHREAD_ONCE_INIT;

static void
handles_free(void *p)
{
    struct handles *h = p;

    curl_easy_cleanup(h->easy);
    curl_multi_cleanup(h->multi);
    free(h);
}

static void
handles_init(void)
{
    ASSERT(pthread_key_create(&handles_key, handles_free) == 0);
}

static struct handles *
handles(void)
{
    struct handles *h;

    pthread_once(&handles_once, handles_init);
    h = pthread_getspecific(handles_key);
    if (h == NULL) {
        h = xcalloc(1, sizeof(*h));
        h->multi = curl_multi_init();
        h->easy = curl_easy_init();
        ASSERT(h->multi != NULL && h->easy != NULL);
        pthread_setspecific(handles_key, h);
    } else {
        curl_easy_reset(h->easy); /* options go; live connections stay in the multi's cache */
    }
    return h;
}

/* Runs the transfer, polling the cancel flag; the easy handle's result or -1 when cancelled. */
static int
perform(CURLM *mh, CURL *c, const volatile int *cancel, CURLcode *rc_out)
{
    int running = 1, ret = 0;
    CURLMsg *msg;
    int left;

    ASSERT(mh != NULL);
    curl_multi_add_handle(mh, c);
    *rc_out = CURLE_FAILED_INIT;
    for (;;) {
        if (curl_multi_perform(mh, &running) != CURLM_OK)
            break;
        if (running == 0)
            break;
        if (cancel != NULL && *cancel != 0) {
            ret = -1;
            break;
        }
        if (curl_multi_poll(mh, NULL, 0, POLL_MS, NULL) != CURLM_OK)
            break;
    }
    while ((msg = curl_multi_info_read(mh, &left)) != NULL)
        if (msg->msg == CURLMSG_DONE && msg->easy_handle == c)
            *rc_out = msg->data.result;
    curl_multi_remove_handle(mh, c);
    return ret;
}

static void
setup(CURL *c, const struct model_http_req *r, struct curl_slist *h, struct xfer *x, char *errbuf)
{
    curl_easy_setopt(c, CURLOPT_URL, r->url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)(r->timeout_ms > 0 ? r->timeout_ms : 1));
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "paddock");
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, r->body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)r->max_response);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
}

int
model__http_post(const struct model_http_req *r, struct model_http_resp *out, struct err **errp)
{
    char errbuf[CURL_ERROR_SIZE] = "";
    struct xfer x = { .retry_after_ms = -1 };
    struct curl_slist *h;
    cleanup_free char *shown = display_url(r->url);
    CURLcode rc;
    struct handles *hs;
    CURL *c;
    int cancelled;

    memset(out, 0, sizeof(*out));
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK)
        return err_set(errp, ERR_INTERNAL, 0, "libcurl: %s", curl_easy_strerror(curl_init_rc));
    hs = handles();
    c = hs->easy;
    buf_init(&x.body, r->max_response);
    h = headers_make(r);
    setup(c, r, h, &x, errbuf);
    cancelled = perform(hs->multi, c, r->cancel, &rc);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
    /* Nothing of this call stays on the handle: not its headers (the key), not its buffers. */
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, NULL);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, NULL);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, NULL);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, NULL);
    model_headers_free(h);
    if (cancelled < 0 || rc != CURLE_OK)
        buf_free(&x.body);
    if (cancelled < 0)
        return err_set(errp, ERR_CONFLICT, 0, "cancelled");
    if (x.over || rc == CURLE_FILESIZE_EXCEEDED)
        return err_set(errp, ERR_LIMIT, 0, "the answer of %s is larger than %llu bytes", shown,
                       (unsigned long long)r->max_response);
    if (rc == CURLE_OPERATION_TIMEDOUT)
        return err_set(errp, ERR_TIMEOUT, 0, "no answer from %s within %lld ms", shown,
                       (long long)r->timeout_ms);
    if (rc != CURLE_OK) {
        cleanup_free char *why =
            model__escape(errbuf[0] != '\0' ? errbuf : curl_easy_strerror(rc),
                          strlen(errbuf[0] != '\0' ? errbuf : curl_easy_strerror(rc)));
        return err_set(errp, ERR_UPSTREAM, 0, "request to %s failed: %s", shown, why);
    }
    out->retry_after_ms = x.retry_after_ms;
    out->body = buf_steal(&x.body, &out->len);
    if (out->body == NULL)
        out->body = xstrdup("");
    return 0;
}

void
model__http_resp_clear(struct model_http_resp *r)
{
    free(r->body);
    memset(r, 0, sizeof(*r));
}
