/*
 * Tests for the allowlist of src/egress/policy.c: egress_policy_compile() (the `network` setting
 * of an environment, each pattern checked when the environment is created) and
 * egress_policy_allows() (one canonical destination against the compiled rules). The contract
 * is docs/EGRESS.md "Policy"; the attack rows are 4, 5, 9 and 26 of
 * /work/shared/security/egress-attacks.md.
 */
#include <jansson.h>

#include "../unit.h"

#include "egress/egress.h"
#include "suites.h"

/* A pointer compile must leave alone when it fails. */
#define POLICY_SENTINEL ((struct egress_policy *)(uintptr_t)0x5a5a5a5a)

/* {"allowlist": [{"domain": dom}]}, with dom taken as raw bytes (it may not be UTF-8). */
static json_t *
network_with_domain(const char *dom)
{
    json_t *entry = json_object();
    json_t *list = json_array();
    json_t *net = json_object();

    json_object_set_new(entry, "domain", json_string_nocheck(dom));
    json_array_append_new(list, entry);
    json_object_set_new(net, "allowlist", list);
    return net;
}

static json_t *
load_json(const char *text)
{
    json_error_t jerr;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &jerr);

    if (j == NULL)
        fail_msg("test JSON does not parse: %s: %s", text, jerr.text);
    return j;
}

static const char *
kind_name(enum egress_rule_kind k)
{
    switch (k) {
    case EGRESS_RULE_EXACT:
        return "exact";
    case EGRESS_RULE_SUFFIX:
        return "suffix";
    case EGRESS_RULE_ANY:
        return "any";
    case EGRESS_RULE_IP:
        return "ip";
    }
    return "?";
}

/* ------------------------------------------------------------- patterns */

struct pat_case {
    const char *dom;
    bool ok;
    enum egress_rule_kind kind;
    const char *host; /* the compiled rule's host (suffix without "*.") */
    uint16_t port;
};

#define P_OK(dom, kind, host, port) \
    {                               \
        dom, true, kind, host, port \
    }
#define P_BAD(dom)                             \
    {                                          \
        dom, false, EGRESS_RULE_EXACT, NULL, 0 \
    }

/* Compiles each pattern as a one-entry allowlist and checks the rule or the refusal. */
static void
check_pat_cases(const struct pat_case *cases, size_t n_cases)
{
    int bad = 0;

    for (size_t i = 0; i < n_cases; i++) {
        const struct pat_case *c = &cases[i];
        json_t *net = network_with_domain(c->dom);
        struct egress_policy *p = POLICY_SENTINEL;
        struct err *e = NULL;
        cleanup_free char *shown = log_escape(c->dom, strlen(c->dom), 80);
        int rc = egress_policy_compile(net, &p, &e);

        if (!c->ok) {
            if (rc != -1 || e == NULL) {
                print_error("case %zu: '%s' compiled, want refused\n", i, shown);
                bad++;
            } else if (e->code != ERR_INVALID || strstr(e->msg, "allowlist[0]") == NULL) {
                print_error("case %zu: '%s' refused with code %d '%s', want ERR_INVALID naming "
                            "allowlist[0]\n",
                            i, shown, (int)e->code, e->msg);
                bad++;
            } else if (p != POLICY_SENTINEL) {
                print_error("case %zu: '%s' refused but *out was written\n", i, shown);
                bad++;
            }
        } else if (rc != 0 || e != NULL) {
            print_error("case %zu: '%s' refused (%s), want a %s rule\n", i, shown,
                        e != NULL ? e->msg : "no error set", kind_name(c->kind));
            bad++;
        } else if (p->mode != EGRESS_ALLOWLIST || p->n != 1 || p->rules[0].kind != c->kind ||
                   strcmp(p->rules[0].host, c->host) != 0 || p->rules[0].port != c->port) {
            print_error("case %zu: '%s' gave mode %d n %zu %s '%s' port %u, want allowlist of one "
                        "%s '%s' port %u\n",
                        i, shown, (int)p->mode, p->n, p->n > 0 ? kind_name(p->rules[0].kind) : "-",
                        p->n > 0 ? p->rules[0].host : "", p->n > 0 ? p->rules[0].port : 0,
                        kind_name(c->kind), c->host, c->port);
            bad++;
        }
        if (rc == 0)
            egress_policy_free(p);
        err_free(e);
        json_decref(net);
    }
    if (bad > 0)
        fail_msg("%d of %zu pattern cases wrong", bad, n_cases);
}

static void
test_pattern_good(void **state)
{
    static const struct pat_case cases[] = {
        P_OK("*", EGRESS_RULE_ANY, "", 0),
        P_OK("*:8080", EGRESS_RULE_ANY, "", 8080),
        P_OK("*.example.com", EGRESS_RULE_SUFFIX, "example.com", 0),
        P_OK("*.Example.COM", EGRESS_RULE_SUFFIX, "example.com", 0),
        P_OK("*.example.com.", EGRESS_RULE_SUFFIX, "example.com", 0),
        P_OK("*.example.com:8443", EGRESS_RULE_SUFFIX, "example.com", 8443),
        P_OK("*.a.b.example.com", EGRESS_RULE_SUFFIX, "a.b.example.com", 0),
        P_OK("*.example.co.uk", EGRESS_RULE_SUFFIX, "example.co.uk", 0),
        P_OK("*.xn--bcher-kva.example", EGRESS_RULE_SUFFIX, "xn--bcher-kva.example", 0),
        P_OK("api.github.com", EGRESS_RULE_EXACT, "api.github.com", 0),
        P_OK("API.GitHub.COM.", EGRESS_RULE_EXACT, "api.github.com", 0),
        P_OK("api.github.com:8443", EGRESS_RULE_EXACT, "api.github.com", 8443),
        P_OK("api.github.com:443", EGRESS_RULE_EXACT, "api.github.com", 443),
        P_OK("example.com", EGRESS_RULE_EXACT, "example.com", 0),
        P_OK("xn--bcher-kva.example", EGRESS_RULE_EXACT, "xn--bcher-kva.example", 0),
        P_OK("10.0.0.1", EGRESS_RULE_IP, "10.0.0.1", 0),
        P_OK("10.0.0.1:8080", EGRESS_RULE_IP, "10.0.0.1", 8080),
        P_OK("169.254.169.254.", EGRESS_RULE_IP, "169.254.169.254", 0),
        P_OK("[::1]", EGRESS_RULE_IP, "[::1]", 0),
        P_OK("[::1]:443", EGRESS_RULE_IP, "[::1]", 443),
        P_OK("[0:0::1]:443", EGRESS_RULE_IP, "[::1]", 443),
        P_OK("[2001:DB8::1]", EGRESS_RULE_IP, "[2001:db8::1]", 0),
    };
    (void)state;

    check_pat_cases(cases, ARRAY_LEN(cases));
}

static void
test_pattern_bad(void **state)
{
    static const struct pat_case cases[] = {
        /* Row 5: over-broad or misplaced wildcards. */
        P_BAD("*.com"),
        P_BAD("*.COM."),
        P_BAD("*.co.uk"),
        P_BAD("*.CO.UK"),
        P_BAD("*.co.uk."),
        P_BAD("*.co.uk:443"),
        P_BAD("*.com.au"),
        P_BAD("*.co.jp"),
        P_BAD("*.uk"),
        P_BAD("*.localhost"),
        P_BAD("*.xn--p1ai"),
        P_BAD("ex*ample.com"),
        P_BAD("api.*.x.com"),
        P_BAD("**.a.com"),
        P_BAD("*.*.a.com"),
        P_BAD("*.a.*.com"),
        P_BAD("*example.com"),
        P_BAD("example.*"),
        P_BAD("example.com*"),
        P_BAD("a.*"),
        P_BAD("*."),
        P_BAD("*.."),
        P_BAD("*..com"),
        P_BAD("**"),
        P_BAD("*:"),
        P_BAD("*:0"),
        P_BAD("*:65536"),
        P_BAD(".*.example.com"),
        P_BAD(" *.example.com"),
        /* Wildcards on IP literals. */
        P_BAD("*.10.0.0.1"),
        P_BAD("*.0.0.1"),
        P_BAD("*.[::1]"),
        P_BAD("10.0.0.*"),
        /* Row 3: Unicode, with or without a wildcard. */
        P_BAD("\xc3\xa9xample.com"),
        P_BAD("*.\xc3\xa9xample.com"),
        P_BAD("\xd0\xb0pple.com"),
        P_BAD("b\xc3\xbc"
              "cher.example"),
        /* Bad labels and names. */
        P_BAD(""),
        P_BAD("."),
        P_BAD("a..b.com"),
        P_BAD("-a.com"),
        P_BAD("a-.com"),
        P_BAD("a.123"),
        P_BAD("exa mple.com"),
        P_BAD("a%2eb.com"),
        P_BAD("[example.com]"),
        P_BAD("[example.com]:443"),
        P_BAD("example.com/path"),
        P_BAD("http://example.com"),
        P_BAD("user@example.com"),
        P_BAD("example.com\r\n"),
        /* Bad ports; row 7: ports smuggled into the pattern. */
        P_BAD("example.com:"),
        P_BAD("example.com:0"),
        P_BAD("example.com:65536"),
        P_BAD("example.com:http"),
        P_BAD("example.com:+443"),
        P_BAD("example.com:80:443"),
        P_BAD("evil.com:443.allowed.com"),
        P_BAD("allowed.com:443@evil.com"),
        /* Non-canonical IPv4, unbracketed or zoned IPv6. */
        P_BAD("2130706433"),
        P_BAD("0x7f.1"),
        P_BAD("0177.0.0.1"),
        P_BAD("127.1"),
        P_BAD("169.254.43518"),
        P_BAD("::1"),
        P_BAD("::1:443"),
        P_BAD("[::1]:"),
        P_BAD("[::1]x"),
        P_BAD("[::1"),
        P_BAD("[fe80::1%eth0]"),
        P_BAD("[fe80::1%25eth0]:80"),
        P_BAD("[127.0.0.1]"),
    };
    (void)state;

    check_pat_cases(cases, ARRAY_LEN(cases));
}

/* 64-byte labels and 254-byte names are refused in patterns as in requests. */
static void
test_pattern_lengths(void **state)
{
    char dom[400];
    struct pat_case c[1];
    (void)state;

    memcpy(dom, "*.", 2);
    memset(dom + 2, 'a', 63);
    memcpy(dom + 65, ".com", 5);
    c[0] = (struct pat_case)P_OK(dom, EGRESS_RULE_SUFFIX, dom + 2, 0);
    check_pat_cases(c, 1);
    memset(dom + 2, 'a', 64);
    memcpy(dom + 66, ".com", 5);
    c[0] = (struct pat_case)P_BAD(dom);
    check_pat_cases(c, 1);

    for (size_t i = 0; i < 253; i++)
        dom[i] = i % 64 == 63 ? '.' : 'a';
    dom[253] = '\0';
    c[0] = (struct pat_case)P_OK(dom, EGRESS_RULE_EXACT, dom, 0);
    check_pat_cases(c, 1);
    memcpy(dom + 253, "a", 2);
    c[0] = (struct pat_case)P_BAD(dom);
    check_pat_cases(c, 1);
}

/* ------------------------------------------------------------- `network` */

struct net_case {
    const char *json; /* NULL: the setting is absent (a NULL json_t) */
    bool ok;
    enum egress_mode mode;
    size_t n;
};

static void
test_network_setting(void **state)
{
    static const struct net_case cases[] = {
        { NULL, true, EGRESS_OPEN, 0 },
        { "null", true, EGRESS_OPEN, 0 },
        { "{}", true, EGRESS_OPEN, 0 },
        { "\"disabled\"", true, EGRESS_DISABLED, 0 },
        { "{\"allowlist\": \"disabled\"}", true, EGRESS_DISABLED, 0 },
        { "{\"allowlist\": []}", true, EGRESS_ALLOWLIST, 0 },
        { "{\"allowlist\": [{\"domain\": \"a.com\"}]}", true, EGRESS_ALLOWLIST, 1 },
        { "{\"allowlist\": [{\"domain\": \"a.com\"}, {\"domain\": \"*.b.com:8443\"}, "
          "{\"domain\": \"*\"}]}",
          true, EGRESS_ALLOWLIST, 3 },
        /* Anything else is refused, never read as open. */
        { "\"open\"", false, 0, 0 },
        { "\"Disabled\"", false, 0, 0 },
        { "\"\"", false, 0, 0 },
        { "true", false, 0, 0 },
        { "false", false, 0, 0 },
        { "0", false, 0, 0 },
        { "[]", false, 0, 0 },
        { "[{\"domain\": \"a.com\"}]", false, 0, 0 },
        { "{\"allowlist\": \"open\"}", false, 0, 0 },
        { "{\"allowlist\": \"\"}", false, 0, 0 },
        { "{\"allowlist\": {}}", false, 0, 0 },
        { "{\"allowlist\": {\"domain\": \"a.com\"}}", false, 0, 0 },
        { "{\"allowlist\": true}", false, 0, 0 },
        { "{\"allowlist\": 1}", false, 0, 0 },
        /* Entries must be objects with a string domain. */
        { "{\"allowlist\": [\"a.com\"]}", false, 0, 0 },
        { "{\"allowlist\": [null]}", false, 0, 0 },
        { "{\"allowlist\": [[]]}", false, 0, 0 },
        { "{\"allowlist\": [{}]}", false, 0, 0 },
        { "{\"allowlist\": [{\"domain\": null}]}", false, 0, 0 },
        { "{\"allowlist\": [{\"domain\": 5}]}", false, 0, 0 },
        { "{\"allowlist\": [{\"domain\": [\"a.com\"]}]}", false, 0, 0 },
        { "{\"allowlist\": [{\"host\": \"a.com\"}]}", false, 0, 0 },
        /* One bad entry refuses the whole setting. */
        { "{\"allowlist\": [{\"domain\": \"a.com\"}, {\"domain\": \"*.com\"}]}", false, 0, 0 },
        { "{\"allowlist\": [{\"domain\": \"a.com\"}, 7]}", false, 0, 0 },
    };
    int bad = 0;
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        const struct net_case *c = &cases[i];
        json_t *net = c->json != NULL ? load_json(c->json) : NULL;
        struct egress_policy *p = POLICY_SENTINEL;
        struct err *e = NULL;
        int rc = egress_policy_compile(net, &p, &e);

        if (!c->ok) {
            if (rc != -1 || e == NULL || e->code != ERR_INVALID || p != POLICY_SENTINEL) {
                print_error("case %zu: %s gave rc %d, want refused with ERR_INVALID and *out "
                            "untouched\n",
                            i, c->json, rc);
                bad++;
            }
        } else if (rc != 0 || e != NULL) {
            print_error("case %zu: %s refused: %s\n", i, c->json != NULL ? c->json : "(absent)",
                        e != NULL ? e->msg : "no error set");
            bad++;
        } else if (p == NULL || p == POLICY_SENTINEL || p->mode != c->mode || p->n != c->n) {
            print_error("case %zu: %s gave mode %d n %zu, want mode %d n %zu\n", i,
                        c->json != NULL ? c->json : "(absent)",
                        p != NULL && p != POLICY_SENTINEL ? (int)p->mode : -1,
                        p != NULL && p != POLICY_SENTINEL ? p->n : 0, (int)c->mode, c->n);
            bad++;
        }
        if (rc == 0 && p != POLICY_SENTINEL)
            egress_policy_free(p);
        err_free(e);
        json_decref(net);
    }
    if (bad > 0)
        fail_msg("%d of %zu network cases wrong", bad, ARRAY_LEN(cases));
}

/* A refusal names the offending entry by index and by text (docs/EGRESS.md). */
static void
test_network_errors_name_entry(void **state)
{
    struct egress_policy *p = POLICY_SENTINEL;
    struct err *e = NULL;
    json_t *net;
    (void)state;

    net = load_json("{\"allowlist\": [{\"domain\": \"a.com\"}, {\"domain\": \"b.com\"}, "
                    "{\"domain\": \"ex*ample.com\"}]}");
    assert_int_equal(egress_policy_compile(net, &p, &e), -1);
    assert_ptr_equal(p, POLICY_SENTINEL);
    assert_non_null(e);
    assert_non_null(strstr(e->msg, "allowlist[2]"));
    ASSERT_ERR_CONTAINS(&e, ERR_INVALID, "ex*ample.com");
    json_decref(net);

    net = load_json("{\"allowlist\": [{\"domain\": \"a.com\"}, {\"domain\": \"a.com:99999\"}]}");
    assert_int_equal(egress_policy_compile(net, &p, &e), -1);
    assert_non_null(e);
    assert_non_null(strstr(e->msg, "allowlist[1]"));
    ASSERT_ERR_CONTAINS(&e, ERR_INVALID, "a.com:99999");
    json_decref(net);

    net = load_json("{\"allowlist\": [{\"domain\": \"a.com\"}, \"b.com\"]}");
    assert_int_equal(egress_policy_compile(net, &p, &e), -1);
    ASSERT_ERR_CONTAINS(&e, ERR_INVALID, "allowlist[1]");
    json_decref(net);

    net = load_json("{\"allowlist\": [{\"domain\": \"\xc3\xa9xample.com\"}]}");
    assert_int_equal(egress_policy_compile(net, &p, &e), -1);
    ASSERT_ERR_CONTAINS(&e, ERR_INVALID, "A-label");
    json_decref(net);
    assert_ptr_equal(p, POLICY_SENTINEL);
}

/* Builds {"allowlist": [{"domain": "h0.example.com"}, …]} with n entries. */
static json_t *
network_of_n(size_t n)
{
    json_t *list = json_array();
    json_t *net = json_object();

    for (size_t i = 0; i < n; i++) {
        char dom[64];
        snprintf(dom, sizeof(dom), "h%zu.example.com", i);
        json_array_append_new(list, json_pack("{s:s}", "domain", dom));
    }
    json_object_set_new(net, "allowlist", list);
    return net;
}

static void
test_network_entry_limit(void **state)
{
    struct egress_policy *p = NULL;
    struct err *e = NULL;
    struct egress_dest d;
    const char *reason = NULL;
    const struct egress_rule *rule = NULL;
    json_t *net;
    (void)state;

    net = network_of_n(256);
    ASSERT_NO_ERR(egress_policy_compile(net, &p, &e), &e);
    assert_int_equal(p->mode, EGRESS_ALLOWLIST);
    assert_int_equal(p->n, 256);
    ASSERT_NO_ERR(egress_parse_authority("h255.example.com:443", 0, &d, &e), &e);
    assert_true(egress_policy_allows(p, &d, &reason, &rule));
    assert_ptr_equal(rule, &p->rules[255]);
    ASSERT_NO_ERR(egress_parse_authority("h256.example.com:443", 0, &d, &e), &e);
    assert_false(egress_policy_allows(p, &d, &reason, &rule));
    assert_null(rule);
    egress_policy_free(p);
    json_decref(net);

    p = POLICY_SENTINEL;
    net = network_of_n(257);
    assert_int_equal(egress_policy_compile(net, &p, &e), -1);
    assert_ptr_equal(p, POLICY_SENTINEL);
    ASSERT_ERR(&e, ERR_INVALID);
    json_decref(net);

    net = network_of_n(10000);
    assert_int_equal(egress_policy_compile(net, &p, &e), -1);
    ASSERT_ERR(&e, ERR_INVALID);
    json_decref(net);

    egress_policy_free(NULL);
}

/* -------------------------------------------------------------- matching */

enum verdict {
    V_ALLOW = 0,
    V_HOST, /* denied: no entry names the host */
    V_PORT, /* denied: an entry names the host, none its port */
    V_IP,   /* denied: an IP literal no entry names */
};

struct match_case {
    const char *authority; /* parsed with egress_parse_authority(…, 0, …) */
    enum verdict want;
};

static const char *const verdict_names[] = { "allow", "deny (host)", "deny (port)", "deny (IP)" };

/* The reason each denial class gave, to check that one class always gives one reason. */
static const char *seen_reason[4];

/*
 * Compiles policy_json, then checks every destination's verdict and reason: a port denial
 * says "port", an IP literal denial says "IP", a host denial says neither, and the three
 * classes give three different reasons.
 */
static void
check_match_cases(const char *policy_json, const struct match_case *cases, size_t n_cases)
{
    json_t *net = load_json(policy_json);
    struct egress_policy *p = NULL;
    struct err *e = NULL;
    int bad = 0;

    ASSERT_NO_ERR(egress_policy_compile(net, &p, &e), &e);
    for (size_t i = 0; i < n_cases; i++) {
        const struct match_case *c = &cases[i];
        struct egress_dest d;
        const char *reason = NULL;
        const struct egress_rule *rule = (const struct egress_rule *)(uintptr_t)1;
        const char *why = NULL;
        bool allowed;

        if (egress_parse_authority(c->authority, 0, &d, &e) < 0) {
            print_error("case %zu: %s does not parse: %s\n", i, c->authority, e->msg);
            err_free(e);
            e = NULL;
            bad++;
            continue;
        }
        allowed = egress_policy_allows(p, &d, &reason, &rule);
        if (allowed != (c->want == V_ALLOW))
            why = allowed ? "allowed" : "denied";
        else if (allowed && (rule == NULL || (uintptr_t)rule < (uintptr_t)p->rules ||
                             (uintptr_t)rule >= (uintptr_t)(p->rules + p->n)))
            why = "allowed without naming the rule that matched";
        else if (!allowed && rule != NULL)
            why = "denied but names a matching rule";
        else if (!allowed && (reason == NULL || reason[0] == '\0'))
            why = "denied without a reason";
        else if (c->want == V_PORT && strstr(reason, "port") == NULL)
            why = "port denial does not say 'port'";
        else if (c->want == V_IP && strstr(reason, "IP") == NULL)
            why = "IP denial does not say 'IP'";
        else if (c->want == V_HOST &&
                 (strstr(reason, "port") != NULL || strstr(reason, "IP") != NULL))
            why = "host denial reads like a port or IP denial";
        else if (!allowed && seen_reason[c->want] != NULL &&
                 strcmp(seen_reason[c->want], reason) != 0)
            why = "same class, different reason";
        if (why != NULL) {
            print_error("case %zu: %s under %s: %s (reason '%s'), want %s\n", i, c->authority,
                        policy_json, why, allowed ? "-" : reason, verdict_names[c->want]);
            bad++;
        } else if (!allowed) {
            seen_reason[c->want] = reason;
        }
    }
    egress_policy_free(p);
    json_decref(net);
    if (bad > 0)
        fail_msg("%d of %zu match cases wrong under %s", bad, n_cases, policy_json);
}

static void
test_match_suffix(void **state)
{
    static const struct match_case cases[] = {
        /* Row 4: subdomains only, label-aligned, any depth. */
        { "a.example.com:443", V_ALLOW },
        { "a.b.example.com:443", V_ALLOW },
        { "x.y.z.example.com:80", V_ALLOW },
        { "A.Example.COM.:443", V_ALLOW },
        { "1.example.com:443", V_ALLOW },
        { "example.com:443", V_HOST },
        { "EXAMPLE.COM.:443", V_HOST },
        { "evilexample.com:443", V_HOST },
        { "xexample.com:443", V_HOST },
        { "a.evilexample.com:443", V_HOST },
        { "example.com.evil.com:443", V_HOST },
        { "a.example.com.evil.com:443", V_HOST },
        { "a.example.co:443", V_HOST },
        { "a.example.comm:443", V_HOST },
        { "com:443", V_HOST },
        /* Default ports only: 80 and 443. */
        { "a.example.com:80", V_ALLOW },
        { "a.example.com:8080", V_PORT },
        { "a.example.com:22", V_PORT },
        { "a.example.com:8443", V_PORT },
        { "a.example.com:444", V_PORT },
        { "a.example.com:1", V_PORT },
        { "a.example.com:65535", V_PORT },
        { "example.com:22", V_HOST },
        { "10.0.0.1:443", V_IP },
    };
    (void)state;

    check_match_cases("{\"allowlist\": [{\"domain\": \"*.example.com\"}]}", cases,
                      ARRAY_LEN(cases));
}

static void
test_match_exact(void **state)
{
    static const struct match_case cases[] = {
        { "api.github.com:443", V_ALLOW },
        { "api.github.com:80", V_ALLOW },
        { "API.GitHub.COM:443", V_ALLOW },
        { "api.github.com.:443", V_ALLOW },
        /* Row 26: other ports are denied. */
        { "api.github.com:22", V_PORT },
        { "api.github.com:25", V_PORT },
        { "api.github.com:6379", V_PORT },
        { "api.github.com:8443", V_PORT },
        { "api.github.com:8080", V_PORT },
        { "github.com:443", V_HOST },
        { "x.api.github.com:443", V_HOST },
        { "api.github.com.evil.com:443", V_HOST },
        { "api.github.co:443", V_HOST },
        { "apigithub.com:443", V_HOST },
        /* Row 9: IP literals only when named, whatever the name resolves to. */
        { "140.82.112.3:443", V_IP },
        { "[::1]:443", V_IP },
        { "[2606:4700::1111]:443", V_IP },
    };
    (void)state;

    check_match_cases("{\"allowlist\": [{\"domain\": \"api.github.com\"}]}", cases,
                      ARRAY_LEN(cases));
}

static void
test_match_explicit_port(void **state)
{
    static const struct match_case cases[] = {
        { "api.example.com:8443", V_ALLOW },  { "API.EXAMPLE.COM.:8443", V_ALLOW },
        { "api.example.com:443", V_PORT },    { "api.example.com:80", V_PORT },
        { "api.example.com:8444", V_PORT },   { "x.api.example.com:8443", V_HOST },
        { "other.example.com:8443", V_HOST }, { "w.cdn.example.net:9000", V_ALLOW },
        { "cdn.example.net:9000", V_HOST },   { "w.cdn.example.net:443", V_PORT },
    };
    (void)state;

    check_match_cases("{\"allowlist\": [{\"domain\": \"api.example.com:8443\"}, "
                      "{\"domain\": \"*.cdn.example.net:9000\"}]}",
                      cases, ARRAY_LEN(cases));
}

static void
test_match_any(void **state)
{
    static const struct match_case cases[] = {
        { "anything.com:443", V_ALLOW },
        { "a.b.c.d.e:80", V_ALLOW },
        { "localhost:443", V_ALLOW },
        { "xn--bcher-kva.example:443", V_ALLOW },
        { "anything.com:22", V_PORT },
        { "anything.com:8080", V_PORT },
        /* "*" is every name, never an IP literal. */
        { "127.0.0.1:443", V_IP },
        { "169.254.169.254:80", V_IP },
        { "169.254.169.254.:80", V_IP },
        { "8.8.8.8:443", V_IP },
        { "[::1]:443", V_IP },
        { "[::ffff:127.0.0.1]:443", V_IP },
        { "[2606:4700::1111]:443", V_IP },
    };
    static const struct match_case any_port[] = {
        { "anything.com:8080", V_ALLOW }, { "anything.com:443", V_PORT },
        { "anything.com:80", V_PORT },    { "1.2.3.4:8080", V_IP },
        { "[::1]:8080", V_IP },
    };
    (void)state;

    check_match_cases("{\"allowlist\": [{\"domain\": \"*\"}]}", cases, ARRAY_LEN(cases));
    check_match_cases("{\"allowlist\": [{\"domain\": \"*:8080\"}]}", any_port, ARRAY_LEN(any_port));
}

static void
test_match_ip(void **state)
{
    static const struct match_case cases[] = {
        { "10.0.0.1:443", V_ALLOW },
        { "10.0.0.1:80", V_ALLOW },
        { "10.0.0.1.:443", V_ALLOW },
        { "10.0.0.1:22", V_PORT },
        { "10.0.0.2:443", V_IP },
        { "10.0.0.10:443", V_IP },
        { "110.0.0.1:443", V_IP },
        { "[::ffff:10.0.0.1]:443", V_IP },
        { "[::ffff:a00:1]:443", V_IP },
        /* The same literal however it is spelt; only that literal. */
        { "[2001:db8::1]:8443", V_ALLOW },
        { "[2001:DB8:0:0:0:0:0:1]:8443", V_ALLOW },
        { "[2001:0db8::0001]:8443", V_ALLOW },
        { "[2001:db8::1]:443", V_PORT },
        { "[2001:db8::2]:8443", V_IP },
        { "[2001:db8::1:0]:8443", V_IP },
        /* An IP rule is no name rule, and the other way round. */
        { "a.com:443", V_HOST },
        { "10.0.0.1.nip.io:443", V_HOST },
    };
    (void)state;

    check_match_cases("{\"allowlist\": [{\"domain\": \"10.0.0.1\"}, "
                      "{\"domain\": \"[2001:db8::1]:8443\"}]}",
                      cases, ARRAY_LEN(cases));
}

/* Rules are alternatives: a name matched on the wrong port may still pass by another rule. */
static void
test_match_several_rules(void **state)
{
    static const struct match_case cases[] = {
        { "api.x.com:8443", V_ALLOW }, { "api.x.com:443", V_ALLOW },   { "api.x.com:80", V_ALLOW },
        { "api.x.com:22", V_PORT },    { "other.x.com:8443", V_PORT }, { "x.com:443", V_ALLOW },
        { "x.com:8443", V_PORT },      { "y.com:443", V_HOST },
    };
    (void)state;

    check_match_cases("{\"allowlist\": [{\"domain\": \"api.x.com:8443\"}, "
                      "{\"domain\": \"*.x.com\"}, {\"domain\": \"x.com\"}]}",
                      cases, ARRAY_LEN(cases));
}

/* Every class of denial has its own reason. */
static void
test_match_reasons_distinct(void **state)
{
    (void)state;

    memset(seen_reason, 0, sizeof(seen_reason));
    test_match_suffix(state);
    assert_non_null(seen_reason[V_HOST]);
    assert_non_null(seen_reason[V_PORT]);
    assert_non_null(seen_reason[V_IP]);
    assert_string_not_equal(seen_reason[V_HOST], seen_reason[V_PORT]);
    assert_string_not_equal(seen_reason[V_HOST], seen_reason[V_IP]);
    assert_string_not_equal(seen_reason[V_PORT], seen_reason[V_IP]);
}

/* An empty allowlist denies everything; open allows everything; disabled denies everything. */
static void
test_match_modes(void **state)
{
    static const char *const dests[] = {
        "a.com:443", "a.com:22", "127.0.0.1:80", "[::1]:443", "169.254.169.254:80",
    };
    struct egress_policy *open = NULL, *off = NULL, *empty = NULL;
    struct err *e = NULL;
    json_t *j;
    (void)state;

    ASSERT_NO_ERR(egress_policy_compile(NULL, &open, &e), &e);
    j = load_json("\"disabled\"");
    ASSERT_NO_ERR(egress_policy_compile(j, &off, &e), &e);
    json_decref(j);
    j = load_json("{\"allowlist\": []}");
    ASSERT_NO_ERR(egress_policy_compile(j, &empty, &e), &e);
    json_decref(j);

    for (size_t i = 0; i < ARRAY_LEN(dests); i++) {
        struct egress_dest d;
        const char *reason = NULL;
        const struct egress_rule *rule = (const struct egress_rule *)(uintptr_t)1;

        ASSERT_NO_ERR(egress_parse_authority(dests[i], 0, &d, &e), &e);
        /* Open: the name is not the question, address rules decide later; no rule matched. */
        assert_true(egress_policy_allows(open, &d, &reason, &rule));
        assert_null(reason);
        assert_null(rule);
        assert_false(egress_policy_allows(off, &d, &reason, &rule));
        assert_non_null(reason);
        assert_non_null(strstr(reason, "disabled"));
        assert_null(rule);
        reason = NULL;
        assert_false(egress_policy_allows(empty, &d, &reason, NULL));
        assert_non_null(reason);
        assert_null(strstr(reason, "disabled"));
    }
    egress_policy_free(open);
    egress_policy_free(off);
    egress_policy_free(empty);
}

/* What the server injects (a credential's header, a placeholder's value) is checked where it is
 * added: nothing with a control character but tab gets into a rule. */
static void
test_injected_headers_checked(void **state)
{
    static const char *const bad_values[] = {
        "a\r\nX-Evil: 1",
        "a\nb",
        "a\rb",
        "a\x01",
        "\x7f",
        "a\vb",
        "a\x1b[0m",
    };
    static const char *const bad_names[] = { "", "X A", "X:A", "X\x01", "X\xc3\xa9", "(x)" };
    struct egress_policy *p = NULL;
    struct err *e = NULL;
    json_t *j = load_json("{\"allowlist\": [{\"domain\": \"a.com\", \"credential\": \"c\"}]}");
    struct egress_rule *r;
    (void)state;

    ASSERT_NO_ERR(egress_policy_compile(j, &p, &e), &e);
    json_decref(j);
    r = &p->rules[0];
    for (size_t i = 0; i < ARRAY_LEN(bad_values); i++) {
        assert_false(egress_header_value_ok(bad_values[i]));
        assert_false(egress_rule_add_header(r, "Authorization", bad_values[i]));
    }
    for (size_t i = 0; i < ARRAY_LEN(bad_names); i++) {
        assert_false(egress_header_name_ok(bad_names[i]));
        assert_false(egress_rule_add_header(r, bad_names[i], "v"));
    }
    assert_int_equal(r->n_headers, 0);
    /* Tab, spaces, printable and non-ASCII bytes stand in a field value. */
    assert_true(egress_rule_add_header(r, "Authorization", "Bearer a\tb c~\xc3\xa9"));
    assert_true(egress_rule_add_header(r, "authorization", "Bearer 2"));
    assert_int_equal(r->n_headers, 1);
    assert_string_equal(r->headers[0].value, "Bearer 2");
    assert_false(egress_policy_add_subst(p, "ph-1", "v\r\n", NULL));
    assert_int_equal(p->n_subst, 0);
    assert_true(egress_policy_add_subst(p, "ph-1", "value", NULL));
    assert_int_equal(p->n_subst, 1);
    egress_policy_free(p);
}

/* Fields that frame, route or belong to one hop are never set by the proxy: not by a transform
 * (refused at compile time, naming the field) and not by a credential's header_name (refused
 * when injected, for one stored before the rule). Ordinary fields still are. */
static void
test_framing_headers_not_injectable(void **state)
{
    static const char *const framing[] = {
        "Host",       "content-length",      "Transfer-Encoding", "TE",
        "Connection", "Keep-Alive",          "Trailer",           "Upgrade",
        "Expect",     "Proxy-Authorization", "proxy-connection"
    };
    struct egress_policy *p = NULL;
    struct err *e = NULL;
    json_t *j = load_json("{\"allowlist\": [{\"domain\": \"a.com\", \"credential\": \"c\"}]}");
    (void)state;

    ASSERT_NO_ERR(egress_policy_compile(j, &p, &e), &e);
    json_decref(j);
    for (size_t i = 0; i < ARRAY_LEN(framing); i++) {
        char net[256];
        struct egress_policy *q = NULL;
        assert_true(egress_header_name_ok(framing[i]));
        assert_false(egress_header_injectable(framing[i]));
        assert_false(egress_rule_add_header(&p->rules[0], framing[i], "1"));
        snprintf(net, sizeof(net),
                 "{\"allowlist\": [{\"domain\": \"a.com\", \"transform\": {\"%s\": \"1\"}}]}",
                 framing[i]);
        j = load_json(net);
        assert_int_equal(egress_policy_compile(j, &q, &e), -1);
        assert_non_null(strstr(e->msg, framing[i]));
        err_free(e);
        e = NULL;
        json_decref(j);
    }
    assert_int_equal(p->rules[0].n_headers, 0);
    for (size_t i = 0; i < 4; i++) {
        static const char *const fine[] = { "Authorization", "X-Api-Key", "Hosts", "TEx" };
        assert_true(egress_header_injectable(fine[i]));
        assert_true(egress_rule_add_header(&p->rules[0], fine[i], "1"));
    }
    egress_policy_free(p);
}

static struct egress_policy *
compiled(const char *network)
{
    struct egress_policy *p = NULL;
    struct err *e = NULL;
    json_t *j = network != NULL ? load_json(network) : NULL; /* NULL: open */

    ASSERT_NO_ERR(egress_policy_compile(j, &p, &e), &e);
    json_decref(j);
    return p;
}

/* The fingerprint decides whether a running environment's proxy gets a changed policy: every
 * part of what is allowed and injected must move it. */
static void
test_fingerprint_covers_everything(void **state)
{
    static const char *const nets[] = {
        "{\"allowlist\": [{\"domain\": \"a.com\"}]}",
        "{\"allowlist\": [{\"domain\": \"b.com\"}]}",
        "{\"allowlist\": [{\"domain\": \"a.com:8443\"}]}",
        "{\"allowlist\": [{\"domain\": \"*.a.com\"}]}",
        "{\"allowlist\": [{\"domain\": \"a.com\", \"credential\": \"c\"}]}",
        "{\"allowlist\": [{\"domain\": \"a.com\", \"credential\": \"d\"}]}",
        "{\"allowlist\": [{\"domain\": \"a.com\", \"transform\": {\"X-A\": \"1\"}}]}",
        "{\"allowlist\": [{\"domain\": \"a.com\", \"transform\": {\"X-A\": \"2\"}}]}",
        "{\"allowlist\": []}",
        "\"disabled\"",
    };
    uint64_t prints[ARRAY_LEN(nets)];
    struct egress_policy *x, *y;
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(nets); i++) {
        struct egress_policy *p = compiled(nets[i]);
        prints[i] = egress_policy_print(p);
        egress_policy_free(p);
        for (size_t k = 0; k < i; k++)
            assert_true(prints[k] != prints[i]);
    }
    /* A placeholder's trusted domains, even when their number stays the same. */
    x = compiled(NULL);
    y = compiled(NULL);
    assert_true(egress_policy_add_subst(
        x, "ph", "v",
        compiled("{\"allowlist\": [{\"domain\": \"a.com\"}, {\"domain\": \"b.com\"}]}")));
    assert_true(egress_policy_add_subst(
        y, "ph", "v",
        compiled("{\"allowlist\": [{\"domain\": \"a.com\"}, {\"domain\": \"c.com\"}]}")));
    assert_true(egress_policy_print(x) != egress_policy_print(y));
    egress_policy_free(y);
    y = egress_policy_dup(x);
    assert_true(egress_policy_print(x) == egress_policy_print(y));
    egress_policy_free(x);
    egress_policy_free(y);
}

int
test_policy_run(void)
{
    static const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pattern_good),
        cmocka_unit_test(test_pattern_bad),
        cmocka_unit_test(test_pattern_lengths),
        cmocka_unit_test(test_network_setting),
        cmocka_unit_test(test_network_errors_name_entry),
        cmocka_unit_test(test_network_entry_limit),
        cmocka_unit_test(test_match_suffix),
        cmocka_unit_test(test_match_exact),
        cmocka_unit_test(test_match_explicit_port),
        cmocka_unit_test(test_match_any),
        cmocka_unit_test(test_match_ip),
        cmocka_unit_test(test_match_several_rules),
        cmocka_unit_test(test_match_reasons_distinct),
        cmocka_unit_test(test_match_modes),
        cmocka_unit_test(test_injected_headers_checked),
        cmocka_unit_test(test_framing_headers_not_injectable),
        cmocka_unit_test(test_fingerprint_covers_everything),
    };

    return cmocka_run_group_tests_name("egress/policy", tests, NULL, NULL);
}
