/*
 * Egress policy: one canonical destination per connection, strict parsing of names, ports and
 * IP literals, allowlist matching, and the classes of addresses a sandbox never reaches unless
 * the operator allows them. Everything here is pure: no I/O, so every rule is unit-testable.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "egress.h"

#define NAME_MAX_LEN 253
#define LABEL_MAX_LEN 63
#define RULES_MAX 256

/* Second-level public suffixes under which a "*.x.y" pattern would still span strangers. */
static const char *const public_2ld[] = {
    "co.uk", "org.uk", "ac.uk", "gov.uk", "ltd.uk", "plc.uk", "me.uk", "net.uk", "com.au",
    "net.au", "org.au", "edu.au", "gov.au", "co.nz", "org.nz", "co.jp", "ne.jp", "or.jp",
    "ac.jp", "com.br", "net.br", "org.br", "com.cn", "net.cn", "org.cn", "co.in", "net.in",
    "org.in", "co.za", "org.za", "com.mx", "com.ar", "com.tr", "com.tw", "co.kr", "or.kr",
    "com.sg", "com.hk", "co.il", "com.ua", "com.pl", "co.id", "com.my", "com.ph", "com.vn",
};

static bool
is_digits(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

/*
 * Looks numeric the way inet_aton's lax forms are: every dot-separated part a C integer
 * literal (decimal, 0-octal or 0x-hex), like 2130706433, 0x7f.1 or 127.1. "a1.de" is a name.
 */
static bool
numeric_looking(const char *s)
{
    for (const char *p = s;;) {
        size_t n = strcspn(p, ".");
        bool hex = n >= 2 && p[0] == '0' && p[1] == 'x';
        if (n == 0)
            return false;
        for (size_t i = hex ? 2 : 0; i < n; i++)
            if (!((p[i] >= '0' && p[i] <= '9') || (hex && p[i] >= 'a' && p[i] <= 'f')))
                return false;
        p += n;
        if (*p == '\0')
            return true;
        p++;
    }
}

int
egress_canon_host(const char *in, size_t len, struct egress_dest *d, struct err **errp)
{
    char h[NAME_MAX_LEN + 3];
    size_t n = len;

    memset(d, 0, sizeof(*d));
    if (n == 0)
        return err_set(errp, ERR_INVALID, 0, "empty host");
    if (memchr(in, '\0', n) != NULL)
        return err_set(errp, ERR_INVALID, 0, "NUL in host");
    if (in[0] == '[') {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&d->ip;
        char a[INET6_ADDRSTRLEN + 1];
        if (n < 3 || in[n - 1] != ']' || n - 2 > INET6_ADDRSTRLEN)
            return err_set(errp, ERR_INVALID, 0, "malformed IPv6 literal");
        memcpy(a, in + 1, n - 2);
        a[n - 2] = '\0';
        if (strchr(a, '%') != NULL)
            return err_set(errp, ERR_INVALID, 0, "IPv6 zone ids are not accepted");
        if (inet_pton(AF_INET6, a, &s6->sin6_addr) != 1)
            return err_set(errp, ERR_INVALID, 0, "malformed IPv6 literal");
        s6->sin6_family = AF_INET6;
        inet_ntop(AF_INET6, &s6->sin6_addr, a, sizeof(a));
        snprintf(d->host, sizeof(d->host), "[%s]", a);
        d->is_ip = true;
        return 0;
    }
    if (n > NAME_MAX_LEN + 1)
        return err_set(errp, ERR_INVALID, 0, "host name longer than %d bytes", NAME_MAX_LEN);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c - 'A' + 'a');
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.'))
            return err_set(errp, ERR_INVALID, 0,
                           c >= 0x80 ? "host names must be IDNA A-labels (xn--...), not Unicode"
                                     : "host name holds a character not allowed in DNS names");
        h[i] = (char)c;
    }
    h[n] = '\0';
    if (n > 1 && h[n - 1] == '.')
        h[--n] = '\0'; /* the root label: "a.com." is "a.com" */
    if (n > 0 && h[n - 1] == '.')
        return err_set(errp, ERR_INVALID, 0, "empty label in host name");
    if (n == 0 || n > NAME_MAX_LEN)
        return err_set(errp, ERR_INVALID, 0, "bad host name length");
    {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&d->ip;
        if (inet_pton(AF_INET, h, &s4->sin_addr) == 1) {
            s4->sin_family = AF_INET;
            snprintf(d->host, sizeof(d->host), "%s", h);
            d->is_ip = true;
            return 0;
        }
    }
    if (numeric_looking(h))
        return err_set(errp, ERR_INVALID, 0,
                       "'%s' is neither a dotted-quad address nor a host name", h);
    for (const char *p = h; *p != '\0';) {
        size_t l = strcspn(p, ".");
        if (l == 0 || l > LABEL_MAX_LEN || p[0] == '-' || p[l - 1] == '-')
            return err_set(errp, ERR_INVALID, 0, "bad label in host name '%s'", h);
        p += l;
        if (*p == '.')
            p++;
    }
    /* All-numeric last label: not a name (and not an address either). */
    {
        const char *last = strrchr(h, '.');
        last = last != NULL ? last + 1 : h;
        if (is_digits(last, strlen(last)))
            return err_set(errp, ERR_INVALID, 0, "'%s' is not a valid host name", h);
    }
    snprintf(d->host, sizeof(d->host), "%s", h);
    return 0;
}

static int
parse_port(const char *s, size_t n, uint16_t *out)
{
    unsigned long v = 0;

    if (!is_digits(s, n) || n > 5)
        return -1;
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (unsigned long)(s[i] - '0');
    if (v == 0 || v > 65535)
        return -1;
    *out = (uint16_t)v;
    return 0;
}

int
egress_parse_authority(const char *in, uint16_t default_port, struct egress_dest *d,
                       struct err **errp)
{
    size_t n = strlen(in);
    const char *colon;
    size_t hlen;
    uint16_t port = default_port;

    if (n == 0 || n > NAME_MAX_LEN + 10)
        return err_set(errp, ERR_INVALID, 0, "bad authority length");
    if (strpbrk(in, "@/\\?#% \t\r\n") != NULL)
        return err_set(errp, ERR_INVALID, 0, "authority holds a character it must not");
    if (in[0] == '[') {
        const char *close = strchr(in, ']');
        if (close == NULL)
            return err_set(errp, ERR_INVALID, 0, "unterminated IPv6 literal");
        hlen = (size_t)(close - in) + 1;
        if (close[1] == ':')
            colon = close + 1;
        else if (close[1] == '\0')
            colon = NULL;
        else
            return err_set(errp, ERR_INVALID, 0, "junk after IPv6 literal");
    } else {
        colon = strchr(in, ':');
        if (colon != NULL && strchr(colon + 1, ':') != NULL)
            return err_set(errp, ERR_INVALID, 0, "more than one ':' in authority");
        hlen = colon != NULL ? (size_t)(colon - in) : n;
    }
    if (colon != NULL && parse_port(colon + 1, strlen(colon + 1), &port) < 0)
        return err_set(errp, ERR_INVALID, 0, "bad port in authority");
    if (port == 0)
        return err_set(errp, ERR_INVALID, 0, "authority needs a port");
    if (egress_canon_host(in, hlen, d, errp) < 0)
        return -1;
    d->port = port;
    return 0;
}

/* ------------------------------------------------------------------ policy */

#define HEADERS_PER_RULE 32

const char *
egress_mode_name(const struct egress_policy *p)
{
    return p->mode == EGRESS_DISABLED ? "disabled" : p->mode == EGRESS_OPEN ? "open" : "allowlist";
}

bool
egress_header_name_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || strchr("!#$%&'*+-.^_`|~", s[i]) != NULL))
            return false;
    return true;
}

bool
egress_header_injectable(const char *name)
{
    /* The fields that frame a message, route it or belong to one hop: a value the proxy set
     * for them would disagree with the bytes the client sends (a Content-Length that is not
     * the body's, a Transfer-Encoding over a body framed by length) or duplicate the one Host
     * the destination checks were made against. */
    static const char *const framing[] = { "host",       "content-length", "transfer-encoding",
                                           "connection", "keep-alive",     "te",
                                           "trailer",    "upgrade",        "expect",
                                           NULL };

    if (!egress_header_name_ok(name) || strncasecmp(name, "proxy-", 6) == 0)
        return false;
    for (size_t i = 0; framing[i] != NULL; i++)
        if (strcasecmp(name, framing[i]) == 0)
            return false;
    return true;
}

bool
egress_header_value_ok(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++)
        if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
            return false;
    return true;
}

bool
egress_rule_add_header(struct egress_rule *r, const char *name, const char *value)
{
    if (!egress_header_injectable(name) || !egress_header_value_ok(value))
        return false;
    /* Replace: one value per header name, the last one given wins. */
    for (size_t i = 0; i < r->n_headers; i++)
        if (strcasecmp(r->headers[i].name, name) == 0) {
            explicit_bzero(r->headers[i].value, strlen(r->headers[i].value));
            free(r->headers[i].value);
            r->headers[i].value = xstrdup(value);
            return true;
        }
    r->headers = xrealloc(r->headers, (r->n_headers + 1) * sizeof(*r->headers));
    r->headers[r->n_headers].name = xstrdup(name);
    r->headers[r->n_headers].value = xstrdup(value);
    r->n_headers++;
    return true;
}

/* transform: {"Header": "value", ...} or a list of such maps. */
static int
compile_transform(json_t *tr, size_t i, struct egress_rule *r, struct err **errp)
{
    json_t *maps = json_is_array(tr) ? tr : NULL;
    size_t k, count = json_is_array(tr) ? json_array_size(tr) : 1;

    for (k = 0; k < count; k++) {
        json_t *m = maps != NULL ? json_array_get(maps, k) : tr;
        const char *name;
        json_t *v;
        if (!json_is_object(m))
            return err_set(errp, ERR_INVALID, 0,
                           "network.allowlist[%zu].transform must map header names to values", i);
        json_object_foreach(m, name, v) {
            const char *val = json_string_value(v);
            if (!egress_header_name_ok(name))
                return err_set(errp, ERR_INVALID, 0,
                               "network.allowlist[%zu].transform: bad header name", i);
            if (!egress_header_injectable(name))
                return err_set(errp, ERR_INVALID, 0,
                               "network.allowlist[%zu].transform.%s: this header frames, "
                               "routes or belongs to one hop of a request; it cannot be set",
                               i, name);
            if (val == NULL || !egress_header_value_ok(val) ||
                strlen(val) != json_string_length(v) || json_string_length(v) > 8192)
                return err_set(errp, ERR_INVALID, 0,
                               "network.allowlist[%zu].transform.%s: the value must be a string "
                               "without control characters (CR, LF, NUL...; tab is allowed), "
                               "at most 8192 bytes",
                               i, name);
            if (r->n_headers == HEADERS_PER_RULE)
                return err_set(errp, ERR_INVALID, 0,
                               "network.allowlist[%zu].transform: more than %d headers", i,
                               HEADERS_PER_RULE);
            (void)egress_rule_add_header(r, name, val); /* checked above */
        }
    }
    r->intercept = true;
    return 0;
}

static int
compile_entry(json_t *e, size_t i, struct egress_rule *r, struct err **errp)
{
    const char *dom = json_string_value(json_object_get(e, "domain"));
    struct egress_dest d;
    const char *colon;
    size_t hlen;
    struct err *inner = NULL;

    if (dom == NULL)
        return err_set(errp, ERR_INVALID, 0, "network.allowlist[%zu].domain is required", i);
    memset(r, 0, sizeof(*r));
    /* "host:port", "[v6]:port", "*", "*:port", "*.suffix[:port]" */
    if (dom[0] == '[') {
        const char *close = strchr(dom, ']');
        colon = close != NULL && close[1] == ':' ? close + 1 : NULL;
    } else {
        colon = strrchr(dom, ':');
    }
    hlen = colon != NULL ? (size_t)(colon - dom) : strlen(dom);
    if (colon != NULL && parse_port(colon + 1, strlen(colon + 1), &r->port) < 0)
        return err_set(errp, ERR_INVALID, 0, "network.allowlist[%zu]: bad port in '%s'", i, dom);
    if (json_object_get(e, "transform") != NULL &&
        compile_transform(json_object_get(e, "transform"), i, r, errp) < 0)
        return -1;
    if (json_object_get(e, "credential") != NULL) {
        const char *cred = json_string_value(json_object_get(e, "credential"));
        if (cred == NULL || cred[0] == '\0' || strlen(cred) >= sizeof(r->credential))
            return err_set(errp, ERR_INVALID, 0,
                           "network.allowlist[%zu].credential must be a credential id", i);
        snprintf(r->credential, sizeof(r->credential), "%s", cred);
        r->intercept = true;
    }
    if (hlen == 1 && dom[0] == '*') {
        if (r->credential[0] != '\0')
            return err_set(errp, ERR_INVALID, 0,
                           "network.allowlist[%zu]: a credential on \"*\" would be sent to "
                           "every host; name the domains it is for",
                           i);
        r->kind = EGRESS_RULE_ANY;
        return 0;
    }
    if (hlen > 2 && dom[0] == '*' && dom[1] == '.') {
        size_t labels = 1;
        if (memchr(dom + 2, '*', hlen - 2) != NULL)
            goto broad;
        if (egress_canon_host(dom + 2, hlen - 2, &d, &inner) < 0 || d.is_ip)
            goto bad;
        for (const char *p = d.host; *p != '\0'; p++)
            labels += *p == '.';
        if (labels < 2)
            goto broad;
        for (size_t k = 0; k < sizeof(public_2ld) / sizeof(public_2ld[0]); k++)
            if (strcmp(d.host, public_2ld[k]) == 0)
                goto broad;
        r->kind = EGRESS_RULE_SUFFIX;
        snprintf(r->host, sizeof(r->host), "%s", d.host);
        return 0;
    }
    if (memchr(dom, '*', hlen) != NULL)
        goto broad;
    if (egress_canon_host(dom, hlen, &d, &inner) < 0)
        goto bad;
    r->kind = d.is_ip ? EGRESS_RULE_IP : EGRESS_RULE_EXACT;
    snprintf(r->host, sizeof(r->host), "%s", d.host);
    return 0;

broad:
    return err_set(errp, ERR_INVALID, 0,
                   "network.allowlist[%zu]: '%s' is too broad or malformed: use a host, "
                   "\"*.example.com\" (subdomains of a registrable domain) or \"*\"",
                   i, dom);
bad:
    err_set(errp, ERR_INVALID, 0, "network.allowlist[%zu]: '%s': %s", i, dom,
            inner != NULL ? inner->msg : "an IP literal cannot take a wildcard");
    err_free(inner);
    return -1;
}

int
egress_policy_compile(json_t *net, struct egress_policy **out, struct err **errp)
{
    struct egress_policy *p = xcalloc(1, sizeof(*p));
    json_t *al, *e;
    size_t i;

    p->mode = EGRESS_OPEN;
    if (net == NULL || json_is_null(net)) {
        *out = p;
        return 0;
    }
    if (json_is_string(net) && strcmp(json_string_value(net), "disabled") == 0) {
        p->mode = EGRESS_DISABLED;
        *out = p;
        return 0;
    }
    al = json_object_get(net, "allowlist");
    if (!json_is_object(net) ||
        (al != NULL && !json_is_array(al) &&
         !(json_is_string(al) && strcmp(json_string_value(al), "disabled") == 0))) {
        free(p);
        return err_set(errp, ERR_INVALID, 0,
                       "network must be \"disabled\" or {\"allowlist\": [...]}");
    }
    if (json_is_string(al)) {
        p->mode = EGRESS_DISABLED;
        *out = p;
        return 0;
    }
    if (al == NULL) {
        *out = p;
        return 0;
    }
    if (json_array_size(al) > RULES_MAX) {
        free(p);
        return err_set(errp, ERR_INVALID, 0, "network.allowlist: more than %d entries", RULES_MAX);
    }
    p->mode = EGRESS_ALLOWLIST;
    p->rules = xcalloc(json_array_size(al) + 1, sizeof(*p->rules));
    json_array_foreach(al, i, e) {
        p->n++; /* counted before compiling, so a half-compiled rule is freed too */
        if (!json_is_object(e) || compile_entry(e, i, &p->rules[p->n - 1], errp) < 0) {
            if (!json_is_object(e))
                err_set(errp, ERR_INVALID, 0, "network.allowlist[%zu] must be an object", i);
            egress_policy_free(p);
            return -1;
        }
    }
    *out = p;
    return 0;
}

void
egress_policy_free(struct egress_policy *p)
{
    if (p == NULL)
        return;
    for (size_t i = 0; i < p->n; i++) {
        for (size_t k = 0; k < p->rules[i].n_headers; k++) {
            struct egress_header *h = &p->rules[i].headers[k];
            explicit_bzero(h->value, strlen(h->value)); /* it may be a secret */
            free(h->value);
            free(h->name);
        }
        free(p->rules[i].headers);
    }
    for (size_t i = 0; i < p->n_subst; i++) {
        explicit_bzero(p->subst[i].value, strlen(p->subst[i].value));
        free(p->subst[i].value);
        free(p->subst[i].placeholder);
        egress_policy_free(p->subst[i].domains);
    }
    free(p->subst);
    free(p->rules);
    free(p);
}

bool
egress_policy_add_subst(struct egress_policy *p, const char *placeholder, const char *value,
                        struct egress_policy *domains)
{
    if (!egress_header_value_ok(value)) {
        egress_policy_free(domains);
        return false;
    }
    p->subst = xrealloc(p->subst, (p->n_subst + 1) * sizeof(*p->subst));
    p->subst[p->n_subst].placeholder = xstrdup(placeholder);
    p->subst[p->n_subst].value = xstrdup(value);
    p->subst[p->n_subst].domains = domains;
    p->n_subst++;
    return true;
}

struct egress_policy *
egress_policy_dup(const struct egress_policy *p)
{
    struct egress_policy *d = xcalloc(1, sizeof(*d));

    d->mode = p->mode;
    d->n = p->n;
    d->rules = xcalloc(p->n + 1, sizeof(*d->rules));
    for (size_t i = 0; i < p->n; i++) {
        d->rules[i] = p->rules[i];
        d->rules[i].headers = NULL;
        d->rules[i].n_headers = 0;
        for (size_t k = 0; k < p->rules[i].n_headers; k++)
            (void)egress_rule_add_header(&d->rules[i], p->rules[i].headers[k].name,
                                         p->rules[i].headers[k].value);
    }
    for (size_t i = 0; i < p->n_subst; i++)
        (void)egress_policy_add_subst(d, p->subst[i].placeholder, p->subst[i].value,
                                      egress_policy_dup(p->subst[i].domains));
    return d;
}

static bool
port_ok(const struct egress_rule *r, uint16_t port)
{
    return r->port != 0 ? r->port == port : port == 80 || port == 443;
}

bool
egress_policy_allows(const struct egress_policy *p, const struct egress_dest *d,
                     const char **reason, const struct egress_rule **rule_out)
{
    bool name_matched = false;
    const struct egress_rule *best = NULL;
    size_t best_score = 0;

    if (rule_out != NULL)
        *rule_out = NULL;
    if (p->mode == EGRESS_DISABLED) {
        *reason = "the environment's network is disabled";
        return false;
    }
    if (p->mode == EGRESS_OPEN)
        return true;
    for (size_t i = 0; i < p->n; i++) {
        const struct egress_rule *r = &p->rules[i];
        bool m = false;
        size_t hl = strlen(d->host), sl = strlen(r->host);
        switch (r->kind) {
        case EGRESS_RULE_ANY:
            m = !d->is_ip; /* "*" is every name; IP literals pass only when a rule names them */
            break;
        case EGRESS_RULE_EXACT:
        case EGRESS_RULE_IP:
            m = strcmp(d->host, r->host) == 0;
            break;
        case EGRESS_RULE_SUFFIX:
            m = !d->is_ip && hl > sl + 1 && d->host[hl - sl - 1] == '.' &&
                strcmp(d->host + hl - sl, r->host) == 0;
            break;
        }
        if (m) {
            name_matched = true;
            if (port_ok(r, d->port)) {
                /* The most specific entry decides (its credential, its transform): an exact
                 * host over any suffix, a longer suffix over a shorter, either over "*". */
                size_t score = r->kind == EGRESS_RULE_ANY      ? 1
                               : r->kind == EGRESS_RULE_SUFFIX ? 2 + strlen(r->host)
                                                               : 1000;
                if (score > best_score) {
                    best = r;
                    best_score = score;
                }
            }
        }
    }
    if (best != NULL) {
        if (rule_out != NULL)
            *rule_out = best;
        return true;
    }
    if (name_matched)
        *reason = "the port is not allowed for this host by the environment's allowlist";
    else if (d->is_ip)
        *reason = "IP literals pass only when an allowlist entry names them";
    else
        *reason = "the host is not on the environment's allowlist";
    return false;
}

/* --------------------------------------------------------------- addresses */

int
egress_cidr_parse(const char *s, struct egress_cidr *out, struct err **errp)
{
    char a[INET6_ADDRSTRLEN + 1];
    const char *slash = strchr(s, '/');
    size_t n = slash != NULL ? (size_t)(slash - s) : strlen(s);
    unsigned maxbits;

    memset(out, 0, sizeof(*out));
    if (n == 0 || n > INET6_ADDRSTRLEN)
        return err_set(errp, ERR_INVALID, 0, "bad CIDR '%s'", s);
    memcpy(a, s, n);
    a[n] = '\0';
    if (inet_pton(AF_INET, a, &((struct sockaddr_in *)&out->net)->sin_addr) == 1) {
        out->net.ss_family = AF_INET;
        maxbits = 32;
    } else if (inet_pton(AF_INET6, a, &((struct sockaddr_in6 *)&out->net)->sin6_addr) == 1) {
        out->net.ss_family = AF_INET6;
        maxbits = 128;
    } else {
        return err_set(errp, ERR_INVALID, 0, "bad CIDR '%s': not an address", s);
    }
    out->bits = maxbits;
    if (slash != NULL) {
        uint64_t bits;
        if (util_parse_u64(slash + 1, maxbits, &bits, NULL) < 0)
            return err_set(errp, ERR_INVALID, 0, "bad CIDR '%s': bad prefix length", s);
        out->bits = (unsigned)bits;
    }
    return 0;
}

static bool
prefix_match(const unsigned char *a, const unsigned char *b, unsigned bits)
{
    unsigned full = bits / 8, rest = bits % 8;

    if (memcmp(a, b, full) != 0)
        return false;
    if (rest == 0)
        return true;
    return ((a[full] ^ b[full]) & (0xff00u >> rest) & 0xff) == 0;
}

bool
egress_cidr_contains(const struct egress_cidr *c, const struct sockaddr *sa)
{
    if (c->net.ss_family != sa->sa_family)
        return false;
    if (sa->sa_family == AF_INET)
        return prefix_match((const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr,
                            (const unsigned char *)&((const struct sockaddr_in *)&c->net)->sin_addr,
                            c->bits);
    return prefix_match((const unsigned char *)&((const struct sockaddr_in6 *)sa)->sin6_addr,
                        (const unsigned char *)&((const struct sockaddr_in6 *)&c->net)->sin6_addr,
                        c->bits);
}

struct range4 {
    uint32_t net;
    unsigned bits;
    const char *what;
};

static const struct range4 special4[] = {
    {0x00000000, 8, "unspecified (0.0.0.0/8)"},
    {0x0a000000, 8, "private (10/8)"},
    {0x64400000, 10, "shared CGNAT (100.64/10)"},
    {0x7f000000, 8, "loopback (127/8)"},
    {0xa9fe0000, 16, "link-local / cloud metadata (169.254/16)"},
    {0xac100000, 12, "private (172.16/12)"},
    {0xc0000000, 24, "IETF protocol assignments (192.0.0/24)"},
    {0xc0000200, 24, "documentation (192.0.2/24)"},
    {0xc0586300, 24, "6to4 relay anycast (192.88.99/24)"},
    {0xc0a80000, 16, "private (192.168/16)"},
    {0xc6120000, 15, "benchmarking (198.18/15)"},
    {0xc6336400, 24, "documentation (198.51.100/24)"},
    {0xcb007100, 24, "documentation (203.0.113/24)"},
    {0xe0000000, 4, "multicast (224/4)"},
    {0xf0000000, 4, "reserved (240/4) or broadcast"},
};

static const char *
class4(uint32_t a)
{
    for (size_t i = 0; i < sizeof(special4) / sizeof(special4[0]); i++) {
        uint32_t mask = special4[i].bits == 0 ? 0 : 0xffffffffu << (32 - special4[i].bits);
        if ((a & mask) == special4[i].net)
            return special4[i].what;
    }
    return NULL;
}

const char *
egress_addr_class(const struct sockaddr *sa)
{
    const unsigned char *b;
    uint32_t v4;

    if (sa->sa_family == AF_INET)
        return class4(ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr));
    if (sa->sa_family != AF_INET6)
        return "not an internet address";
    b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    {
        static const unsigned char zero[16];
        if (memcmp(b, zero, 15) == 0 && (b[15] == 0 || b[15] == 1))
            return b[15] == 0 ? "unspecified (::)" : "loopback (::1)";
    }
    /* IPv4 inside IPv6: mapped ::ffff:0:0/96, SIIT's translated ::ffff:0:0:0/96, compatible
     * ::/96, NAT64 64:ff9b::/96 and 64:ff9b:1::/48, 6to4 2002::/16. The embedded address
     * decides; Teredo is refused. */
    {
        static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        static const unsigned char siit[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0 };
        static const unsigned char compat[12] = {0};
        static const unsigned char nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
        const char *c;
        /* NAT64 local use: where the IPv4 address sits depends on the prefix length the
         * network chose, so no single reading is safe; refused whole. */
        if (b[0] == 0 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && b[4] == 0 && b[5] == 1)
            return "NAT64 local use (64:ff9b:1::/48)";
        if (memcmp(b, mapped, 12) == 0 || memcmp(b, siit, 12) == 0 || memcmp(b, compat, 12) == 0 ||
            memcmp(b, nat64, 12) == 0) {
            memcpy(&v4, b + 12, 4);
            c = class4(ntohl(v4));
            return c != NULL ? "IPv4 inside IPv6 (mapped, translated, compatible or NAT64) of "
                               "a refused address"
                             : NULL;
        }
        if (b[0] == 0x20 && b[1] == 0x02) {
            memcpy(&v4, b + 2, 4);
            return class4(ntohl(v4)) != NULL ? "6to4 (2002::/16) of a refused address" : NULL;
        }
    }
    if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0 && b[3] == 0)
        return "Teredo (2001::/32)";
    if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0 && b[3] == 0x02 && b[4] == 0 && b[5] == 0)
        return "benchmarking (2001:2::/48)";
    if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0 && (b[3] & 0xf0) == 0x10)
        return "ORCHID (2001:10::/28)";
    if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0 && (b[3] & 0xf0) == 0x20)
        return "ORCHIDv2 (2001:20::/28)";
    if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8)
        return "documentation (2001:db8::/32)";
    if (b[0] == 0x3f && b[1] == 0xff && (b[2] & 0xf0) == 0)
        return "documentation (3fff::/20)";
    if (b[0] == 0x5f && b[1] == 0)
        return "segment routing SIDs (5f00::/16)";
    if ((b[0] & 0xfe) == 0xfc)
        return "unique local (fc00::/7)";
    if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80)
        return "link-local (fe80::/10)";
    if (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0)
        return "site-local (fec0::/10)";
    if (b[0] == 0xff)
        return "multicast (ff00::/8)";
    if (b[0] == 0x01 && b[1] == 0 && memcmp(b + 2, "\0\0\0\0\0\0", 6) == 0)
        return "discard (100::/64)";
    return NULL;
}

/* FNV-1a over everything a listener's behaviour depends on. */
static uint64_t
fnv(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;

    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

uint64_t
egress_policy_print(const struct egress_policy *p)
{
    uint64_t h = fnv(0xcbf29ce484222325ULL, &p->mode, sizeof(p->mode));

    for (size_t i = 0; i < p->n; i++) {
        const struct egress_rule *r = &p->rules[i];
        h = fnv(h, &r->kind, sizeof(r->kind));
        h = fnv(h, r->host, strlen(r->host) + 1);
        h = fnv(h, &r->port, sizeof(r->port));
        h = fnv(h, &r->intercept, sizeof(r->intercept));
        h = fnv(h, r->credential, strlen(r->credential) + 1);
        h = fnv(h, r->cred_error, strlen(r->cred_error) + 1);
        for (size_t k = 0; k < r->n_headers; k++) {
            h = fnv(h, r->headers[k].name, strlen(r->headers[k].name) + 1);
            h = fnv(h, r->headers[k].value, strlen(r->headers[k].value) + 1);
        }
    }
    for (size_t i = 0; i < p->n_subst; i++) {
        h = fnv(h, p->subst[i].placeholder, strlen(p->subst[i].placeholder) + 1);
        h = fnv(h, p->subst[i].value, strlen(p->subst[i].value) + 1);
        /* Where a placeholder is replaced is as much the policy as what it is replaced by:
         * narrowing a credential's trusted_domains must reach running environments. */
        uint64_t d = egress_policy_print(p->subst[i].domains);
        h = fnv(h, &d, sizeof(d));
    }
    return h;
}
