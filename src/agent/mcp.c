/*
 * MCP servers over the streamable HTTP transport (MCP 2025-03-26): initialize, tools/list
 * and tools/call as JSON-RPC POSTs, answered with JSON or with an SSE stream that carries
 * the response. The server's configured headers go to its own URL only: no redirect is
 * followed, and the operator's outbound rules (address vetting, name overrides, CAs) apply
 * to every connection, because the URL comes from an API caller.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "agent_int.h"

#define MCP_BODY_MAX   (8u << 20)
#define MCP_TIMEOUT_MS 60000L
#define MCP_TOOLS_MAX  256
#define MCP_PROTOCOL   "2025-03-26"

struct mcp_server {
    char *name;
    char *url;
    json_t *headers; /* object name → value */
    const char **secrets; /* the header values, and each one's part after its scheme ("Bearer
                             x": x), for redaction; NULL-terminated, pointing into headers */
    json_t *allowed; /* array of tool names, or NULL: all */
    char *session;   /* Mcp-Session-Id, once the server gave one */
    json_t *tools;   /* [{name, description, inputSchema}] */
    int64_t next_id;
};

struct reply {
    struct buf body;
    char ctype[128];
    char session[256];
};

static size_t
on_body(char *data, size_t size, size_t n, void *arg)
{
    struct reply *r = arg;

    return buf_append(&r->body, data, size * n, NULL) < 0 ? 0 : size * n;
}

static size_t
on_header(char *data, size_t size, size_t n, void *arg)
{
    struct reply *r = arg;
    size_t len = size * n;

    if (len > 13 && strncasecmp(data, "Content-Type:", 13) == 0)
        snprintf(r->ctype, sizeof(r->ctype), "%.*s", (int)(len - 13), data + 13);
    else if (len > 15 && strncasecmp(data, "Mcp-Session-Id:", 15) == 0) {
        const char *v = data + 15;
        size_t vn = len - 15;
        while (vn > 0 && (*v == ' ' || *v == '\t'))
            v++, vn--;
        while (vn > 0 && (v[vn - 1] == '\r' || v[vn - 1] == '\n' || v[vn - 1] == ' '))
            vn--;
        snprintf(r->session, sizeof(r->session), "%.*s", (int)vn, v);
    }
    return len;
}

/* The event's data when it is the JSON-RPC message with that id, or NULL. */
static json_t *
event_answer(const struct buf *ev, int64_t id)
{
    json_t *j;

    if (ev->len == 0)
        return NULL;
    j = util_json_values_within(ev->data, ev->len, UTIL_JSON_VALUES_MAX)
            ? json_loadb(ev->data, ev->len, 0, NULL)
            : NULL;
    if (json_is_integer(json_object_get(j, "id")) &&
        json_integer_value(json_object_get(j, "id")) == id)
        return j;
    json_decref(j);
    return NULL;
}

/* The JSON-RPC message with that id in an SSE body ("data:" lines, events split by blank
 * lines), or NULL. */
static json_t *
from_sse(const char *body, size_t len, int64_t id)
{
    struct buf ev;
    const char *p = body, *end = body + len;
    json_t *found = NULL;

    buf_init(&ev, MCP_BODY_MAX);
    while (p < end && found == NULL) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);
        if (n > 0 && p[n - 1] == '\r')
            n--;
        if (n == 0) {
            found = event_answer(&ev, id);
            buf_free(&ev);
            buf_init(&ev, MCP_BODY_MAX);
        } else if (n >= 5 && strncmp(p, "data:", 5) == 0) {
            const char *d = p + 5;
            size_t dn = n - 5;
            if (dn > 0 && *d == ' ')
                d++, dn--;
            if (ev.len > 0)
                buf_append(&ev, "\n", 1, NULL);
            buf_append(&ev, d, dn, NULL);
        }
        p = nl != NULL ? nl + 1 : end;
    }
    if (found == NULL)
        found = event_answer(&ev, id); /* the last event needs no blank line after it */
    buf_free(&ev);
    return found;
}

/* libcurl's progress callback (at least once a second, and on every chunk): a set cancel flag
 * ends the transfer. */
static int
on_progress(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    const volatile int *cancel = arg;

    (void)dt;
    (void)dn;
    (void)ut;
    (void)un;
    return *cancel != 0;
}

/* One JSON-RPC call (id > 0) or notification (id 0); params (may be NULL) is stolen. *result
 * owned (NULL for notifications). A set *cancel (may be NULL) ends it, ERR_CONFLICT. */
static int
rpc(const struct agent_options *o, struct mcp_server *m, const char *method, json_t *params,
    json_t **result, const volatile int *cancel, struct err **errp)
{
    CURL *c = curl_easy_init();
    struct curl_slist *hdrs = NULL;
    struct reply rep;
    json_t *msg, *ans = NULL;
    cleanup_free char *text = NULL;
    void *out_state = NULL;
    int64_t id = result != NULL ? ++m->next_id : 0;
    long status = 0;
    CURLcode rc;
    int ret = -1;
    const char *k;
    json_t *v;

    if (c == NULL) {
        json_decref(params);
        return err_set(errp, ERR_INTERNAL, 0, "mcp: no curl handle");
    }
    memset(&rep, 0, sizeof(rep));
    buf_init(&rep.body, MCP_BODY_MAX);
    msg = json_pack("{s:s, s:s}", "jsonrpc", "2.0", "method", method);
    if (id > 0)
        json_object_set_new(msg, "id", json_integer(id));
    if (params != NULL)
        json_object_set_new(msg, "params", params); /* stolen */
    text = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
    hdrs = curl_slist_append(hdrs, "Accept: application/json, text/event-stream");
    hdrs = curl_slist_append(hdrs, "MCP-Protocol-Version: " MCP_PROTOCOL);
    if (m->session != NULL) {
        cleanup_free char *h = xasprintf("Mcp-Session-Id: %s", m->session);
        hdrs = curl_slist_append(hdrs, h);
    }
    json_object_foreach(m->headers, k, v) {
        /* Built in one allocation of its size and wiped, as the list is (model_headers_free):
         * a configured header is usually a token. */
        char *h = xasprintf_secret("%s: %s", k, json_string_value(v));
        hdrs = curl_slist_append(hdrs, h);
        free_wiped(h);
    }
    curl_easy_setopt(c, CURLOPT_URL, m->url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https,http");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L); /* the headers are for this URL only */
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, MCP_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, text);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &rep);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &rep);
    if (cancel != NULL) {
        curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, (void *)(uintptr_t)cancel);
    }
    if (o->outbound_prepare != NULL)
        out_state = o->outbound_prepare(c, m->url);
    rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (rc == CURLE_ABORTED_BY_CALLBACK) {
        err_set(errp, ERR_CONFLICT, 0, "mcp server %s: %s: cancelled", m->name, method);
        goto out;
    }
    if (rc != CURLE_OK) {
        const char *why =
            out_state != NULL && o->outbound_why != NULL ? o->outbound_why(out_state) : NULL;
        err_set(errp, rc == CURLE_OPERATION_TIMEDOUT ? ERR_TIMEOUT : ERR_UPSTREAM, 0,
                "mcp server %s: %s failed: %s", m->name, method,
                why != NULL ? why : curl_easy_strerror(rc));
        goto out;
    }
    if (rep.session[0] != '\0' && m->session == NULL)
        m->session = xstrdup(rep.session);
    if (id == 0) {
        ret = status >= 200 && status < 300
                  ? 0
                  : err_set(errp, ERR_UPSTREAM, 0, "mcp server %s: %s answered %ld", m->name,
                            method, status);
        goto out;
    }
    if (status < 200 || status >= 300) {
        err_set(errp, ERR_UPSTREAM, 0, "mcp server %s: %s answered HTTP %ld", m->name, method,
                status);
        goto out;
    }
    if (strstr(rep.ctype, "text/event-stream") != NULL)
        ans = from_sse(rep.body.data != NULL ? rep.body.data : "", rep.body.len, id);
    else
        ans = util_json_values_within(rep.body.data, rep.body.len, UTIL_JSON_VALUES_MAX)
                  ? json_loadb(rep.body.data != NULL ? rep.body.data : "", rep.body.len, 0, NULL)
                  : NULL;
    if (!json_is_object(ans)) {
        err_set(errp, ERR_UPSTREAM, 0, "mcp server %s: %s: no JSON-RPC answer", m->name, method);
        goto out;
    }
    if (json_is_object(json_object_get(ans, "error"))) {
        const char *em =
            json_string_value(json_object_get(json_object_get(ans, "error"), "message"));
        /* The server's words, without the secrets it was sent (a server may echo them). */
        cleanup_free char *esc = log_escape_redact(em != NULL ? em : "error",
                                                   em != NULL ? strlen(em) : 5, 300, m->secrets);
        err_set(errp, ERR_UPSTREAM, 0, "mcp server %s: %s: %s", m->name, method, esc);
        goto out;
    }
    *result = json_incref(json_object_get(ans, "result"));
    if (*result == NULL) {
        err_set(errp, ERR_UPSTREAM, 0, "mcp server %s: %s: no result", m->name, method);
        goto out;
    }
    ret = 0;
out:
    json_decref(ans);
    if (out_state != NULL && o->outbound_release != NULL)
        o->outbound_release(out_state);
    model_headers_free(hdrs);
    curl_easy_cleanup(c);
    buf_free(&rep.body);
    return ret;
}

void
agent__mcp_free(struct mcp_server *m)
{
    if (m == NULL)
        return;
    free(m->name);
    free(m->url);
    free(m->secrets);
    json_decref(m->headers);
    json_decref(m->allowed);
    free(m->session);
    json_decref(m->tools);
    free(m);
}

int
agent__mcp_open(const struct agent_options *o, json_t *cfg, const volatile int *cancel,
                struct mcp_server **out, struct err **errp)
{
    struct mcp_server *m = xcalloc(1, sizeof(*m));
    json_t *res = NULL, *tools;
    json_t *allowed = json_object_get(cfg, "allowed_tools");
    size_t i;
    json_t *t;

    m->name = xstrdup(json_is_string(json_object_get(cfg, "name"))
                          ? json_string_value(json_object_get(cfg, "name"))
                          : "mcp");
    m->url = xstrdup(json_string_value(json_object_get(cfg, "url")));
    m->headers = json_is_object(json_object_get(cfg, "headers"))
                     ? json_incref(json_object_get(cfg, "headers"))
                     : json_object();
    {
        const char *k;
        json_t *v;
        size_t n = 0;
        m->secrets = xcalloc(2 * json_object_size(m->headers) + 1, sizeof(*m->secrets));
        json_object_foreach(m->headers, k, v) {
            const char *s = json_string_value(v), *sp;
            if (s == NULL)
                continue;
            m->secrets[n++] = s;
            if ((sp = strchr(s, ' ')) != NULL) {
                sp += strspn(sp, " ");
                if (*sp != '\0')
                    m->secrets[n++] = sp;
            }
        }
    }
    /* allowed_tools: [{mode, tools: [...]}]; the names of every entry together */
    if (json_is_array(allowed) && json_array_size(allowed) > 0) {
        m->allowed = json_array();
        json_array_foreach(allowed, i, t)
            json_array_extend(m->allowed, json_object_get(t, "tools"));
    }
    if (rpc(o, m, "initialize",
            json_pack("{s:s, s:{}, s:{s:s, s:s}}", "protocolVersion", MCP_PROTOCOL, "capabilities",
                      "clientInfo", "name", "paddock", "version", "1"),
            &res, cancel, errp) < 0)
        goto fail;
    json_decref(res);
    res = NULL;
    if (rpc(o, m, "notifications/initialized", NULL, NULL, cancel, errp) < 0)
        goto fail;
    if (rpc(o, m, "tools/list", json_object(), &res, cancel, errp) < 0)
        goto fail;
    tools = json_object_get(res, "tools");
    m->tools = json_array();
    json_array_foreach(tools, i, t) {
        const char *name = json_string_value(json_object_get(t, "name"));
        bool ok = m->allowed == NULL;
        size_t k;
        json_t *a;
        if (name == NULL || json_array_size(m->tools) >= MCP_TOOLS_MAX)
            continue;
        json_array_foreach(m->allowed, k, a)
            if (json_is_string(a) && strcmp(json_string_value(a), name) == 0)
                ok = true;
        if (ok)
            json_array_append(m->tools, t);
    }
    json_decref(res);
    *out = m;
    return 0;
fail:
    json_decref(res);
    agent__mcp_free(m);
    return -1;
}

const char *
agent__mcp_name(const struct mcp_server *m)
{
    return m->name;
}

void
agent__mcp_declare(const struct mcp_server *m, json_t *decls)
{
    size_t i;
    json_t *t;

    json_array_foreach(m->tools, i, t) {
        json_t *schema = json_object_get(t, "inputSchema");
        json_array_append_new(
            decls, json_pack("{s:O, s:s, s:o}", "name", json_object_get(t, "name"), "description",
                             json_is_string(json_object_get(t, "description"))
                                 ? json_string_value(json_object_get(t, "description"))
                                 : "",
                             "parameters",
                             json_is_object(schema) ? json_incref(schema)
                                                    : json_pack("{s:s}", "type", "object")));
    }
}

bool
agent__mcp_has(const struct mcp_server *m, const char *tool)
{
    size_t i;
    json_t *t;

    json_array_foreach(m->tools, i, t)
        if (strcmp(json_string_value(json_object_get(t, "name")), tool) == 0)
            return true;
    return false;
}

/* Appends s (len bytes) to b, behind a newline if b has something; what does not fit in
 * AGENT_TOOL_KEEP_MAX bytes is counted in dropped. */
static void
keep_part(struct buf *b, const char *s, size_t len, uint64_t *dropped)
{
    size_t room = AGENT_TOOL_KEEP_MAX - b->len, n;

    if (b->len > 0) {
        if (room == 0) {
            *dropped += len + 1;
            return;
        }
        buf_append(b, "\n", 1, NULL);
        room--;
    }
    n = len < room ? len : room;
    buf_append(b, s, n, NULL);
    *dropped += len - n;
}

int
agent__mcp_call(const struct agent_options *o, struct mcp_server *m, const char *tool, json_t *args,
                const volatile int *cancel, char **text, bool *is_error, struct err **errp)
{
    json_t *res = NULL, *content;
    uint64_t dropped = 0;
    struct buf b;
    size_t i;
    json_t *c;

    if (rpc(o, m, "tools/call", json_pack("{s:s, s:O}", "name", tool, "arguments", args), &res,
            cancel, errp) < 0)
        return -1;
    /* Up to the cap a bash result has, and a note of what was left out (never a silent cut). */
    buf_init(&b, AGENT_TOOL_KEEP_MAX + 64);
    content = json_object_get(res, "content");
    json_array_foreach(content, i, c) {
        const char *type = json_string_value(json_object_get(c, "type"));
        const char *t = json_string_value(json_object_get(c, "text"));
        if (type != NULL && strcmp(type, "text") == 0 && t != NULL) {
            keep_part(&b, t, json_string_length(json_object_get(c, "text")), &dropped);
        } else {
            cleanup_free char *j = json_dumps(c, JSON_COMPACT);
            keep_part(&b, j != NULL ? j : "", j != NULL ? strlen(j) : 0, &dropped);
        }
    }
    if (json_is_object(json_object_get(res, "structuredContent")) && b.len == 0) {
        cleanup_free char *j = json_dumps(json_object_get(res, "structuredContent"), JSON_COMPACT);
        keep_part(&b, j != NULL ? j : "", j != NULL ? strlen(j) : 0, &dropped);
    }
    if (dropped > 0)
        buf_printf(&b, NULL, "\n[%llu bytes of the result not kept]", (unsigned long long)dropped);
    *is_error = json_is_true(json_object_get(res, "isError"));
    *text = agent__utf8(b.data != NULL ? b.data : "", b.len);
    buf_free(&b);
    json_decref(res);
    return 0;
}
