/*
 * Tests for the canonical destination of src/egress/policy.c: egress_canon_host() (case folding,
 * one trailing dot, label and length rules, A-labels only, IP literals in strict form) and
 * egress_parse_authority() (one port of digits, no userinfo, IPv6 only in brackets and without a
 * zone id). Every byte here comes from a sandbox, so most cases are hostile: see
 * /work/shared/security/egress-attacks.md rows 1-3 and 6-11.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "../unit.h"

#include "egress/egress.h"
#include "suites.h"

#define S(lit) lit, sizeof(lit) - 1

/* ------------------------------------------------------------- canon_host */

struct canon_case {
    const char *in;
    size_t len;
    const char *want; /* the canonical host; NULL: must be refused */
    int family;       /* AF_INET or AF_INET6 for an IP literal, 0 for a name */
};

#define C_NAME(in, want) \
    {                    \
        S(in), want, 0   \
    }
#define C_IP4(in, want)      \
    {                        \
        S(in), want, AF_INET \
    }
#define C_IP6(in, want)       \
    {                         \
        S(in), want, AF_INET6 \
    }
#define C_BAD(in)      \
    {                  \
        S(in), NULL, 0 \
    }

/* Renders the address an accepted IP literal was parsed into, the way the proxy would dial it. */
static void
render_ip(const struct egress_dest *d, char *buf, size_t size)
{
    char a[INET6_ADDRSTRLEN];

    buf[0] = '\0';
    if (d->ip.ss_family == AF_INET &&
        inet_ntop(AF_INET, &((const struct sockaddr_in *)&d->ip)->sin_addr, a, sizeof(a)) != NULL)
        snprintf(buf, size, "%s", a);
    else if (d->ip.ss_family == AF_INET6 &&
             inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)&d->ip)->sin6_addr, a, sizeof(a)) !=
                 NULL)
        snprintf(buf, size, "[%s]", a);
}

/*
 * Checks an accepted destination against the expected host and family: the canonical string,
 * is_ip, and for IP literals the parsed address itself (so the host string and the address the
 * proxy dials cannot disagree). Returns a description of the first mismatch, or NULL.
 */
static const char *
dest_mismatch(const struct egress_dest *d, const char *want, int family)
{
    char ip[INET6_ADDRSTRLEN + 3];

    if (strcmp(d->host, want) != 0)
        return "canonical host differs";
    if (d->is_ip != (family != 0))
        return "is_ip differs";
    if (family == 0)
        return NULL;
    if (d->ip.ss_family != family)
        return "address family differs";
    render_ip(d, ip, sizeof(ip));
    if (strcmp(ip, want) != 0)
        return "parsed address differs from the canonical host";
    return NULL;
}

/* Checks every case, printing each mismatch, then fails once if any did not match. */
static void
check_canon_cases(const struct canon_case *cases, size_t n_cases)
{
    int bad = 0;

    for (size_t i = 0; i < n_cases; i++) {
        const struct canon_case *c = &cases[i];
        struct egress_dest d;
        struct err *e = NULL;
        cleanup_free char *shown = log_escape(c->in, c->len, 80);
        int rc;

        memset(&d, 0xa5, sizeof(d));
        rc = egress_canon_host(c->in, c->len, &d, &e);
        if (c->want == NULL) {
            if (rc != -1 || e == NULL) {
                print_error("case %zu: \"%s\" accepted as \"%s\", want refused\n", i, shown,
                            rc == 0 ? d.host : "?");
                bad++;
            } else if (e->code != ERR_INVALID || e->msg == NULL) {
                print_error("case %zu: \"%s\" refused with code %d, want ERR_INVALID\n", i, shown,
                            (int)e->code);
                bad++;
            }
        } else if (rc != 0 || e != NULL) {
            print_error("case %zu: \"%s\" refused (%s), want \"%s\"\n", i, shown,
                        e != NULL ? e->msg : "no error set", c->want);
            bad++;
        } else {
            const char *why = dest_mismatch(&d, c->want, c->family);
            if (why != NULL) {
                print_error("case %zu: \"%s\" gave \"%s\" (is_ip %d), want \"%s\": %s\n", i, shown,
                            d.host, (int)d.is_ip, c->want, why);
                bad++;
            }
        }
        err_free(e);
    }
    if (bad > 0)
        fail_msg("%d of %zu canon_host cases wrong", bad, n_cases);
}

static void
test_canon_names(void **state)
{
    static const struct canon_case cases[] = {
        /* Row 1: case folding; the canonical form is what is matched, dialled and logged. */
        C_NAME("api.github.com", "api.github.com"),
        C_NAME("API.GitHub.COM", "api.github.com"),
        C_NAME("API.GITHUB.COM", "api.github.com"),
        /* Row 2: one trailing dot is the root label and is dropped. */
        C_NAME("api.github.com.", "api.github.com"),
        C_NAME("API.GitHub.COM.", "api.github.com"),
        C_NAME("localhost", "localhost"),
        C_NAME("localhost.", "localhost"),
        C_NAME("a", "a"),
        /* Row 3: A-labels are plain LDH names. */
        C_NAME("xn--bcher-kva.example", "xn--bcher-kva.example"),
        C_NAME("XN--BCHER-KVA.EXAMPLE", "xn--bcher-kva.example"),
        C_NAME("xn--80ak6aa92e.com", "xn--80ak6aa92e.com"),
        /* Label rules: hyphens inside a label, digits anywhere but an all-digit last label. */
        C_NAME("a-b.com", "a-b.com"),
        C_NAME("a--b.com", "a--b.com"),
        C_NAME("1password.com", "1password.com"),
        C_NAME("123.example.com", "123.example.com"),
        C_NAME("10.0.0.1.nip.io", "10.0.0.1.nip.io"),
        C_NAME("beef.cafe", "beef.cafe"),
        C_NAME("x.y.z.example.org", "x.y.z.example.org"),
    };
    (void)state;

    check_canon_cases(cases, ARRAY_LEN(cases));
}

static void
test_canon_bad_names(void **state)
{
    static const struct canon_case cases[] = {
        /* Empty names and empty labels. */
        C_BAD(""),
        C_BAD("."),
        C_BAD(".."),
        C_BAD(".a.com"),
        C_BAD("a..b"),
        C_BAD("a..b.com"),
        C_BAD("a.b..."),
        C_BAD("a.b..c"),
        /* Hyphens at either end of a label. */
        C_BAD("-a.com"),
        C_BAD("a-.com"),
        C_BAD("a.-b.com"),
        C_BAD("a.b-.com"),
        C_BAD("a.com-"),
        C_BAD("-"),
        C_BAD("xn--.com"),
        /* An all-digit last label is neither a name nor an address. */
        C_BAD("a.123"),
        C_BAD("example.1"),
        /* Row 6: brackets and junk. */
        C_BAD("[example.com]"),
        C_BAD("[[example.com]]"),
        C_BAD("exa mple.com"),
        C_BAD("a%2eb.com"),
        C_BAD("a_b.com"),
        C_BAD("a\0b.com"),
        C_BAD("a.com\0"),
        C_BAD("\0"),
        C_BAD("a.com\r\n"),
        C_BAD("a.com\n"),
        C_BAD("a.com\r\nHost: evil.com"),
        C_BAD("\ta.com"),
        C_BAD("a.com "),
        C_BAD("a.com:443"),
        C_BAD("a.com/"),
        C_BAD("user@a.com"),
        C_BAD("a.com\\"),
        C_BAD("a*.com"),
        C_BAD("*.a.com"),
        C_BAD("example.com]"),
        /* Row 3: Unicode is refused, never compared (é, Cyrillic а, ideographic full stop). */
        C_BAD("\xc3\xa9xample.com"),
        C_BAD("\xd0\xb0pple.com"),
        C_BAD("a\xe3\x80\x82"
              "com"),
        C_BAD("a.com\xff"),
        C_BAD("\x80"),
        /* IPv6 only in brackets. */
        C_BAD("::1"),
        C_BAD("fe80::1"),
        C_BAD("[::1]."),
        C_BAD("[]"),
        C_BAD("["),
        C_BAD("]"),
        C_BAD("[::1"),
        C_BAD("[[::1]]"),
        C_BAD("[::1]x"),
        C_BAD("[127.0.0.1]"),
        C_BAD("[::g]"),
        C_BAD("[1:2:3:4:5:6:7:8:9]"),
        /* Row 11: zone ids, raw and percent-encoded. */
        C_BAD("[fe80::1%eth0]"),
        C_BAD("[fe80::1%25eth0]"),
        C_BAD("[fe80::1%1]"),
    };
    (void)state;

    check_canon_cases(cases, ARRAY_LEN(cases));
}

static void
test_canon_ipv4(void **state)
{
    static const struct canon_case cases[] = {
        C_IP4("127.0.0.1", "127.0.0.1"),
        C_IP4("8.8.8.8", "8.8.8.8"),
        C_IP4("0.0.0.0", "0.0.0.0"),
        C_IP4("255.255.255.255", "255.255.255.255"),
        /* Row 2: the trailing dot is dropped for addresses too. */
        C_IP4("169.254.169.254.", "169.254.169.254"),
        C_IP4("140.82.112.3.", "140.82.112.3"),
        /* Row 10: numeric forms glibc's getaddrinfo would guess at are refused. */
        C_BAD("2130706433"),
        C_BAD("2130706433."),
        C_BAD("0x7f000001"),
        C_BAD("0x7f.1"),
        C_BAD("0X7F.1"),
        C_BAD("0x7f.0x0.0x0.0x1"),
        C_BAD("0177.0.0.1"),
        C_BAD("017700000001"),
        C_BAD("127.1"),
        C_BAD("127.0.1"),
        C_BAD("169.254.43518"),
        C_BAD("1.2.3"),
        C_BAD("127.0.0.01"),
        C_BAD("127.000.000.001"),
        C_BAD("1.2.3.4.5"),
        C_BAD("256.1.1.1"),
        C_BAD("4294967296"),
        C_BAD("4294967295"),
        C_BAD("0"),
        C_BAD("0x0"),
        C_BAD("127.0.0.1.."),
        C_BAD("1.2.3.4/32"),
        C_BAD("+1.2.3.4"),
    };
    (void)state;

    check_canon_cases(cases, ARRAY_LEN(cases));
}

static void
test_canon_ipv6(void **state)
{
    static const struct canon_case cases[] = {
        /* Canonical rendering (RFC 5952): lower case, shortest, first longest zero run. */
        C_IP6("[::1]", "[::1]"),
        C_IP6("[0:0:0:0:0:0:0:1]", "[::1]"),
        C_IP6("[0000:0000:0000:0000:0000:0000:0000:0001]", "[::1]"),
        C_IP6("[::]", "[::]"),
        C_IP6("[0::0]", "[::]"),
        C_IP6("[FE80::1]", "[fe80::1]"),
        C_IP6("[fe80:0000::0001]", "[fe80::1]"),
        C_IP6("[2001:0DB8::0001]", "[2001:db8::1]"),
        C_IP6("[2001:db8:0:0:1:0:0:1]", "[2001:db8::1:0:0:1]"),
        C_IP6("[2001:db8:0:1:1:1:1:1]", "[2001:db8:0:1:1:1:1:1]"),
        C_IP6("[2606:4700:0:0:0:0:0:1111]", "[2606:4700::1111]"),
        /* Row 11: embedded IPv4 forms keep one rendering whichever way they were written. */
        C_IP6("[::ffff:127.0.0.1]", "[::ffff:127.0.0.1]"),
        C_IP6("[::ffff:7f00:1]", "[::ffff:127.0.0.1]"),
        C_IP6("[::FFFF:A9FE:A9FE]", "[::ffff:169.254.169.254]"),
        C_IP6("[64:ff9b::a9fe:a9fe]", "[64:ff9b::a9fe:a9fe]"),
        C_IP6("[2002:a9fe:a9fe::]", "[2002:a9fe:a9fe::]"),
    };
    (void)state;

    check_canon_cases(cases, ARRAY_LEN(cases));
}

/* Fills buf with n bytes of 63-byte 'a' labels joined by dots (never ending in a dot). */
static void
fill_name(char *buf, size_t n, char label_char)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = i % 64 == 63 ? '.' : label_char;
    buf[n] = '\0';
}

static void
test_canon_lengths(void **state)
{
    char in[400], want[400];
    struct egress_dest d;
    struct err *e = NULL;
    (void)state;

    /* 63-byte labels pass, 64-byte labels do not. */
    memset(in, 'a', 63);
    memcpy(in + 63, ".com", 5);
    ASSERT_NO_ERR(egress_canon_host(in, strlen(in), &d, &e), &e);
    assert_string_equal(d.host, in);
    memset(in, 'a', 64);
    memcpy(in + 64, ".com", 5);
    assert_int_equal(egress_canon_host(in, strlen(in), &d, &e), -1);
    ASSERT_ERR(&e, ERR_INVALID);
    memcpy(in, "x.", 2);
    memset(in + 2, 'b', 64);
    in[66] = '\0';
    assert_int_equal(egress_canon_host(in, strlen(in), &d, &e), -1);
    ASSERT_ERR(&e, ERR_INVALID);

    /* 253 bytes of name pass, with or without the root dot; 254 do not. */
    fill_name(in, 253, 'a');
    assert_int_equal(strlen(in), 253);
    ASSERT_NO_ERR(egress_canon_host(in, 253, &d, &e), &e);
    assert_string_equal(d.host, in);
    assert_false(d.is_ip);
    snprintf(want, sizeof(want), "%s", in);
    memcpy(in + 253, ".", 2);
    ASSERT_NO_ERR(egress_canon_host(in, 254, &d, &e), &e);
    assert_string_equal(d.host, want);

    fill_name(in, 254, 'a');
    assert_int_equal(egress_canon_host(in, 254, &d, &e), -1);
    ASSERT_ERR(&e, ERR_INVALID);
    memcpy(in + 254, ".", 2);
    assert_int_equal(egress_canon_host(in, 255, &d, &e), -1);
    ASSERT_ERR(&e, ERR_INVALID);

    /* Row 8: a 300-byte label chain is refused before anything else looks at it. */
    fill_name(in, 300, 'a');
    assert_int_equal(egress_canon_host(in, 300, &d, &e), -1);
    ASSERT_ERR(&e, ERR_INVALID);
    fill_name(in, 399, 'a');
    assert_int_equal(egress_canon_host(in, 399, &d, &e), -1);
    ASSERT_ERR(&e, ERR_INVALID);

    /* Upper case at full length folds to the same canonical name. */
    fill_name(in, 253, 'A');
    ASSERT_NO_ERR(egress_canon_host(in, 253, &d, &e), &e);
    assert_string_equal(d.host, want);
}

/* The length is what counts: bytes past it are never read into the host, NULs within it are. */
static void
test_canon_uses_len(void **state)
{
    static const char buf[] = "example.comEVIL.attacker.net";
    struct egress_dest d;
    struct err *e = NULL;
    (void)state;

    ASSERT_NO_ERR(egress_canon_host(buf, 11, &d, &e), &e);
    assert_string_equal(d.host, "example.com");
    ASSERT_NO_ERR(egress_canon_host("10.0.0.1junk", 8, &d, &e), &e);
    assert_string_equal(d.host, "10.0.0.1");
    assert_true(d.is_ip);
    ASSERT_NO_ERR(egress_canon_host("[::1]junk", 5, &d, &e), &e);
    assert_string_equal(d.host, "[::1]");

    /* A NUL inside the length: "allowed.com\0.evil.com" must not read as "allowed.com". */
    assert_int_equal(egress_canon_host(S("allowed.com\0.evil.com"), &d, &e), -1);
    ASSERT_ERR(&e, ERR_INVALID);
    assert_int_equal(egress_canon_host(S("[::1]\0"), &d, &e), -1);
    ASSERT_ERR(&e, ERR_INVALID);
}

/*
 * Regression (found by this test): inside brackets egress_canon_host copies len bytes and hands them to inet_pton as a C
 * string, so a NUL within the length silently truncates the literal: "[::1\0]" (len 6) and
 * "[::1\0.evil.com]" are accepted as "[::1]". Outside brackets a NUL is refused. Not reachable
 * today (every caller passes strlen()), but the (ptr,len) contract is the one a fuzzer and
 * future slice-based callers rely on.
 */
static void
test_canon_nul_in_brackets(void **state)
{
    static const struct canon_case cases[] = {
        C_BAD("[::1\0]"),
        C_BAD("[::1\0.evil.com]"),
        C_BAD("[fe80::1\0%eth0]"),
    };
    (void)state;

    check_canon_cases(cases, ARRAY_LEN(cases));
}

/* Refusals say why, in terms the user can act on (docs/EGRESS.md). */
static void
test_canon_messages(void **state)
{
    struct egress_dest d;
    struct err *e = NULL;
    (void)state;

    assert_int_equal(egress_canon_host(S("\xc3\xa9xample.com"), &d, &e), -1);
    ASSERT_ERR_CONTAINS(&e, ERR_INVALID, "A-label");
    assert_int_equal(egress_canon_host(S("[fe80::1%eth0]"), &d, &e), -1);
    ASSERT_ERR_CONTAINS(&e, ERR_INVALID, "zone");
}

/* -------------------------------------------------------------- authority */

struct auth_case {
    const char *in;
    uint16_t def;          /* default port; 0: the authority must name one */
    const char *want_host; /* NULL: must be refused */
    uint16_t want_port;
    int family; /* AF_INET or AF_INET6 for an IP literal, 0 for a name */
};

#define A_OK(in, def, host, port) \
    {                             \
        in, def, host, port, 0    \
    }
#define A_IP(in, def, host, port, fam) \
    {                                  \
        in, def, host, port, fam       \
    }
#define A_BAD(in, def)      \
    {                       \
        in, def, NULL, 0, 0 \
    }

static void
check_auth_cases(const struct auth_case *cases, size_t n_cases)
{
    int bad = 0;

    for (size_t i = 0; i < n_cases; i++) {
        const struct auth_case *c = &cases[i];
        struct egress_dest d;
        struct err *e = NULL;
        cleanup_free char *shown = log_escape(c->in, strlen(c->in), 80);
        int rc;

        memset(&d, 0xa5, sizeof(d));
        rc = egress_parse_authority(c->in, c->def, &d, &e);
        if (c->want_host == NULL) {
            if (rc != -1 || e == NULL || e->code != ERR_INVALID) {
                print_error("case %zu: \"%s\" (default %u) gave rc %d host \"%s\" port %u, want "
                            "refused with ERR_INVALID\n",
                            i, shown, c->def, rc, rc == 0 ? d.host : "?", rc == 0 ? d.port : 0);
                bad++;
            }
        } else if (rc != 0 || e != NULL) {
            print_error("case %zu: \"%s\" refused (%s), want %s port %u\n", i, shown,
                        e != NULL ? e->msg : "no error set", c->want_host, c->want_port);
            bad++;
        } else {
            const char *why = dest_mismatch(&d, c->want_host, c->family);
            if (why == NULL && d.port != c->want_port)
                why = "port differs";
            if (why != NULL) {
                print_error("case %zu: \"%s\" gave \"%s\" port %u (is_ip %d), want \"%s\" port "
                            "%u: %s\n",
                            i, shown, d.host, d.port, (int)d.is_ip, c->want_host, c->want_port,
                            why);
                bad++;
            }
        }
        err_free(e);
    }
    if (bad > 0)
        fail_msg("%d of %zu authority cases wrong", bad, n_cases);
}

static void
test_authority_good(void **state)
{
    static const struct auth_case cases[] = {
        A_OK("api.github.com:443", 0, "api.github.com", 443),
        A_OK("API.GitHub.COM:443", 0, "api.github.com", 443),
        A_OK("api.github.com.:443", 0, "api.github.com", 443),
        A_OK("API.GitHub.COM.:8443", 0, "api.github.com", 8443),
        A_OK("example.com:1", 0, "example.com", 1),
        A_OK("example.com:65535", 0, "example.com", 65535),
        A_OK("example.com", 80, "example.com", 80),
        A_OK("example.com", 443, "example.com", 443),
        A_OK("example.com:8080", 80, "example.com", 8080),
        /* Leading zeros are decimal digits, never octal: 08080 is 8080, 0443 is 443. */
        A_OK("example.com:08080", 0, "example.com", 8080),
        A_OK("example.com:0443", 0, "example.com", 443),
        A_IP("169.254.169.254.:80", 0, "169.254.169.254", 80, AF_INET),
        A_IP("140.82.112.3:443", 0, "140.82.112.3", 443, AF_INET),
        A_IP("[::1]:443", 0, "[::1]", 443, AF_INET6),
        A_IP("[::1]", 443, "[::1]", 443, AF_INET6),
        A_IP("[0:0::1]:80", 0, "[::1]", 80, AF_INET6),
        A_IP("[::FFFF:7F00:1]:443", 0, "[::ffff:127.0.0.1]", 443, AF_INET6),
        A_IP("[2001:DB8::1]:8443", 0, "[2001:db8::1]", 8443, AF_INET6),
    };
    (void)state;

    check_auth_cases(cases, ARRAY_LEN(cases));
}

static void
test_authority_bad(void **state)
{
    static const struct auth_case cases[] = {
        /* Row 7: ports smuggled into the host, userinfo. */
        A_BAD("evil.com:443.allowed.com", 0),
        A_BAD("evil.com:443.allowed.com", 443),
        A_BAD("allowed.com:443@evil.com", 0),
        A_BAD("allowed.com:443@evil.com", 443),
        A_BAD("user@allowed.com:443", 0),
        A_BAD("user:pass@allowed.com:443", 0),
        A_BAD("@allowed.com:443", 0),
        /* Ports: missing, empty, zero, too large, not digits, more than one. */
        A_BAD("example.com", 0),
        A_BAD("example.com:", 0),
        A_BAD("example.com:", 443),
        A_BAD("example.com:0", 0),
        A_BAD("example.com:00", 443),
        A_BAD("example.com:65536", 0),
        A_BAD("example.com:99999", 0),
        A_BAD("example.com:123456", 0),
        A_BAD("example.com:4294967377", 0),
        A_BAD("example.com:18446744073709552059", 0), /* 2^64 + 443 */
        A_BAD("example.com:65979", 0),                /* 2^16 + 443 */
        A_BAD("example.com:+80", 0),
        A_BAD("example.com:-1", 0),
        A_BAD("example.com: 80", 0),
        A_BAD("example.com:80 ", 0),
        A_BAD("example.com:0x50", 0),
        A_BAD("example.com:80a", 0),
        A_BAD("example.com:80:443", 0),
        A_BAD("example.com:443:", 0),
        A_BAD("example.com::443", 0),
        A_BAD(":443", 0),
        A_BAD(":", 443),
        A_BAD("", 443),
        /* IPv6: brackets required, no zone id, nothing after the port. */
        A_BAD("[::1]", 0),
        A_BAD("::1", 443),
        A_BAD("::1:443", 0),
        A_BAD("::1:443", 443),
        A_BAD("fe80::1", 443),
        A_BAD("[fe80::1%25eth0]:80", 0),
        A_BAD("[fe80::1%eth0]:80", 0),
        A_BAD("[::1]:443:80", 0),
        A_BAD("[::1]:", 0),
        A_BAD("[::1]443", 0),
        A_BAD("[::1]x:443", 0),
        A_BAD("[::1", 443),
        A_BAD("[::1:443", 0),
        A_BAD("::1]:443", 0),
        A_BAD("[]:80", 0),
        A_BAD("[[::1]]:80", 0),
        A_BAD("[127.0.0.1]:80", 0),
        /* Row 6: brackets and junk. */
        A_BAD("[example.com]:80", 0),
        A_BAD("[example.com]", 443),
        A_BAD("[[example.com]]:80", 0),
        A_BAD("exa mple.com:80", 0),
        A_BAD("a%2eb.com:80", 0),
        A_BAD("a.com:80\r\n", 0),
        A_BAD("a.com\r\nHost: evil.com:80", 0),
        A_BAD("a.com:80\n", 0),
        A_BAD("a.com\t:80", 0),
        A_BAD("a.com/path:80", 0),
        A_BAD("a.com:80/path", 0),
        A_BAD("a.com?:80", 0),
        A_BAD("a.com#:80", 0),
        A_BAD("a.com\\@evil.com:80", 0),
        A_BAD("http://a.com:80", 0),
        A_BAD("\xc3\xa9xample.com:443", 0),
        A_BAD("a..b:443", 0),
        A_BAD("-a.com:443", 0),
        /* Row 10: non-canonical IPv4. */
        A_BAD("2130706433:80", 0),
        A_BAD("0x7f.1:80", 0),
        A_BAD("0177.0.0.1:80", 0),
        A_BAD("127.1:80", 0),
        A_BAD("169.254.43518:80", 0),
        A_BAD("1.2.3:80", 0),
        A_BAD("2130706433", 80),
    };
    (void)state;

    check_auth_cases(cases, ARRAY_LEN(cases));
}

static void
test_authority_lengths(void **state)
{
    char in[400], want[400];
    struct egress_dest d;
    struct err *e = NULL;
    (void)state;

    /* The longest name, its root dot and the longest port fit in one authority. */
    fill_name(in, 253, 'a');
    snprintf(want, sizeof(want), "%s", in);
    memcpy(in + 253, ".:65535", 8);
    ASSERT_NO_ERR(egress_parse_authority(in, 0, &d, &e), &e);
    assert_string_equal(d.host, want);
    assert_int_equal(d.port, 65535);

    fill_name(in, 254, 'a');
    memcpy(in + 254, ":443", 5);
    assert_int_equal(egress_parse_authority(in, 0, &d, &e), -1);
    ASSERT_ERR(&e, ERR_INVALID);

    fill_name(in, 300, 'a');
    assert_int_equal(egress_parse_authority(in, 443, &d, &e), -1);
    ASSERT_ERR(&e, ERR_INVALID);
}

/*
 * Regression (found by this test): egress_canon_host drops one trailing dot, then its label loop accepts the second one:
 * "a.com.." is accepted as "a.com." (and "localhost.." as "localhost."). docs/EGRESS.md says
 * "one trailing dot dropped", so a name ending in two dots (an empty label) must be refused.
 * No allowlist bypass follows ("a.com." matches no exact or suffix rule), but "*" lets it
 * through and the proxy then resolves and logs a second spelling of the same name.
 */
static void
test_canon_double_trailing_dot(void **state)
{
    static const struct canon_case cases[] = {
        C_BAD("a.com.."),
        C_BAD("api.github.com.."),
        C_BAD("localhost.."),
    };
    static const struct auth_case auth[] = {
        { "a.com..:443", 0, NULL, 0, 0 },
        { "api.github.com..", 443, NULL, 0, 0 },
    };
    (void)state;

    check_canon_cases(cases, ARRAY_LEN(cases));
    check_auth_cases(auth, ARRAY_LEN(auth));
}

/*
 * Regression (found by this test): numeric_looking() treats any name made only of hex letters, digits, dots and 'x' that
 * holds one digit as a lax IPv4 form, so ordinary names are refused: "a1.de", "1.cafe",
 * "abc1.be", "db1.ca", "ad2.fab" ("'a1.de' is neither a dotted-quad address nor a host
 * name"). inet_aton only reads labels that are all decimal, 0-octal or 0x-hex numbers; the
 * WHATWG "ends in a number" rule looks only at the last label. These are valid host names.
 */
static void
test_canon_hexish_names(void **state)
{
    static const struct canon_case cases[] = {
        C_NAME("a1.de", "a1.de"),     C_NAME("1.cafe", "1.cafe"),
        C_NAME("abc1.be", "abc1.be"), C_NAME("db1.ca", "db1.ca"),
        C_NAME("ad2.fab", "ad2.fab"), C_NAME("face.b00c.de", "face.b00c.de"),
    };
    (void)state;

    check_canon_cases(cases, ARRAY_LEN(cases));
}

int
test_host_run(void)
{
    static const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_canon_names),
        cmocka_unit_test(test_canon_bad_names),
        cmocka_unit_test(test_canon_ipv4),
        cmocka_unit_test(test_canon_ipv6),
        cmocka_unit_test(test_canon_lengths),
        cmocka_unit_test(test_canon_uses_len),
        cmocka_unit_test(test_canon_nul_in_brackets),
        cmocka_unit_test(test_canon_messages),
        cmocka_unit_test(test_canon_double_trailing_dot),
        cmocka_unit_test(test_canon_hexish_names),
        cmocka_unit_test(test_authority_good),
        cmocka_unit_test(test_authority_bad),
        cmocka_unit_test(test_authority_lengths),
    };

    return cmocka_run_group_tests_name("egress/host", tests, NULL, NULL);
}
