/*
 * Tests for the address rules of src/egress/policy.c: egress_cidr_parse() and
 * egress_cidr_contains() (the operator's --egress-allow-cidr ranges) and egress_addr_class()
 * (every range docs/EGRESS.md "Addresses" lists, with the edges of each, the public addresses
 * that must pass, and the IPv6 forms that embed an IPv4 address). Attack rows 10-12 and 15-16 of
 * /work/shared/security/egress-attacks.md.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "../unit.h"

#include "egress/egress.h"
#include "suites.h"

/* Parses a strict IPv4 or IPv6 address (no brackets) into ss; fails the test otherwise. */
static void
sockaddr_of(const char *s, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (inet_pton(AF_INET, s, &((struct sockaddr_in *)ss)->sin_addr) == 1)
        ss->ss_family = AF_INET;
    else if (inet_pton(AF_INET6, s, &((struct sockaddr_in6 *)ss)->sin6_addr) == 1)
        ss->ss_family = AF_INET6;
    else
        fail_msg("test address '%s' does not parse", s);
}

/* ----------------------------------------------------------------- CIDRs */

struct cidr_parse_case {
    const char *s;
    bool ok;
    int family;
    unsigned bits;
};

static void
test_cidr_parse(void **state)
{
    static const struct cidr_parse_case cases[] = {
        { "10.0.0.0/8", true, AF_INET, 8 },
        { "0.0.0.0/0", true, AF_INET, 0 },
        { "1.2.3.4/32", true, AF_INET, 32 },
        { "1.2.3.4", true, AF_INET, 32 },
        { "172.16.0.0/12", true, AF_INET, 12 },
        { "100.64.0.0/10", true, AF_INET, 10 },
        { "198.18.0.0/15", true, AF_INET, 15 },
        { "192.168.1.0/25", true, AF_INET, 25 },
        { "::/0", true, AF_INET6, 0 },
        { "::1/128", true, AF_INET6, 128 },
        { "::1", true, AF_INET6, 128 },
        { "2001:db8::/32", true, AF_INET6, 32 },
        { "fc00::/7", true, AF_INET6, 7 },
        { "fe80::/10", true, AF_INET6, 10 },
        { "2001:DB8::/33", true, AF_INET6, 33 },
        { "::ffff:10.0.0.0/104", true, AF_INET6, 104 },
        /* Bad prefixes. */
        { "10.0.0.0/", false, 0, 0 },
        { "10.0.0.0/33", false, 0, 0 },
        { "10.0.0.0/64", false, 0, 0 },
        { "10.0.0.0/128", false, 0, 0 },
        { "::/129", false, 0, 0 },
        { "10.0.0.0/-1", false, 0, 0 },
        { "10.0.0.0/+8", false, 0, 0 },
        { "10.0.0.0/8/9", false, 0, 0 },
        { "10.0.0.0//8", false, 0, 0 },
        { "10.0.0.0/ 8", false, 0, 0 },
        { "10.0.0.0/8 ", false, 0, 0 },
        { "10.0.0.0/8a", false, 0, 0 },
        { "10.0.0.0/0x8", false, 0, 0 },
        { "10.0.0.0/4294967304", false, 0, 0 },
        { "10.0.0.0/99999999999999999999999", false, 0, 0 },
        { "::/4294967424", false, 0, 0 },
        /* Bad addresses, including the lax IPv4 forms. */
        { "", false, 0, 0 },
        { "/8", false, 0, 0 },
        { " 10.0.0.0/8", false, 0, 0 },
        { "10/8", false, 0, 0 },
        { "10.0.0/24", false, 0, 0 },
        { "127.1/8", false, 0, 0 },
        { "2130706433/32", false, 0, 0 },
        { "0x7f.0.0.1/8", false, 0, 0 },
        { "0177.0.0.1/8", false, 0, 0 },
        { "10.0.0.256/8", false, 0, 0 },
        { "[::1]/128", false, 0, 0 },
        { "fe80::1%eth0/64", false, 0, 0 },
        { "example.com/8", false, 0, 0 },
        { "1:2:3:4:5:6:7:8:9/64", false, 0, 0 },
        { "0000:0000:0000:0000:0000:0000:0000:0000:0000/64", false, 0, 0 },
    };
    int bad = 0;
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        const struct cidr_parse_case *c = &cases[i];
        struct egress_cidr cidr;
        struct err *e = NULL;
        int rc;

        memset(&cidr, 0xa5, sizeof(cidr));
        rc = egress_cidr_parse(c->s, &cidr, &e);
        if (!c->ok) {
            if (rc != -1 || e == NULL || e->code != ERR_INVALID) {
                print_error("case %zu: '%s' gave rc %d (/%u), want refused with ERR_INVALID\n", i,
                            c->s, rc, cidr.bits);
                bad++;
            }
        } else if (rc != 0 || e != NULL) {
            print_error("case %zu: '%s' refused: %s\n", i, c->s,
                        e != NULL ? e->msg : "no error set");
            bad++;
        } else if (cidr.net.ss_family != c->family || cidr.bits != c->bits) {
            print_error("case %zu: '%s' gave family %d /%u, want %d /%u\n", i, c->s,
                        (int)cidr.net.ss_family, cidr.bits, c->family, c->bits);
            bad++;
        }
        err_free(e);
    }
    if (bad > 0)
        fail_msg("%d of %zu CIDR parse cases wrong", bad, ARRAY_LEN(cases));
}

struct contains_case {
    const char *cidr;
    const char *addr;
    bool want;
};

static void
test_cidr_contains(void **state)
{
    static const struct contains_case cases[] = {
        { "10.0.0.0/8", "10.0.0.0", true },
        { "10.0.0.0/8", "10.255.255.255", true },
        { "10.0.0.0/8", "11.0.0.0", false },
        { "10.0.0.0/8", "9.255.255.255", false },
        /* Prefixes that do not end on a byte. */
        { "172.16.0.0/12", "172.16.0.0", true },
        { "172.16.0.0/12", "172.31.255.255", true },
        { "172.16.0.0/12", "172.32.0.0", false },
        { "172.16.0.0/12", "172.15.255.255", false },
        { "100.64.0.0/10", "100.64.0.1", true },
        { "100.64.0.0/10", "100.127.255.255", true },
        { "100.64.0.0/10", "100.128.0.1", false },
        { "100.64.0.0/10", "100.63.255.255", false },
        { "198.18.0.0/15", "198.19.255.255", true },
        { "198.18.0.0/15", "198.20.0.0", false },
        { "198.18.0.0/15", "198.17.255.255", false },
        { "192.168.1.0/25", "192.168.1.127", true },
        { "192.168.1.0/25", "192.168.1.128", false },
        { "192.168.1.0/31", "192.168.1.1", true },
        { "192.168.1.0/31", "192.168.1.2", false },
        { "128.0.0.0/1", "255.255.255.255", true },
        { "128.0.0.0/1", "127.255.255.255", false },
        { "224.0.0.0/4", "239.255.255.255", true },
        { "224.0.0.0/4", "240.0.0.0", false },
        /* /0, /32 and bare addresses. */
        { "0.0.0.0/0", "8.8.8.8", true },
        { "0.0.0.0/0", "255.255.255.255", true },
        { "0.0.0.0/0", "0.0.0.0", true },
        { "1.2.3.4/32", "1.2.3.4", true },
        { "1.2.3.4/32", "1.2.3.5", false },
        { "1.2.3.4/32", "1.2.3.3", false },
        { "1.2.3.4", "1.2.3.4", true },
        { "1.2.3.4", "1.2.3.5", false },
        /* IPv6. */
        { "::/0", "::1", true },
        { "::/0", "2001:db8::1", true },
        { "::/0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true },
        { "::1/128", "::1", true },
        { "::1/128", "::2", false },
        { "::1/128", "::", false },
        { "::1", "::1", true },
        { "::1", "::1:0", false },
        { "fc00::/7", "fc00::1", true },
        { "fc00::/7", "fdff:ffff::1", true },
        { "fc00::/7", "fe00::", false },
        { "fc00::/7", "fbff:ffff::", false },
        { "fe80::/10", "febf:ffff::1", true },
        { "fe80::/10", "fec0::", false },
        { "2001:db8::/32", "2001:db8:ffff::", true },
        { "2001:db8::/32", "2001:db9::", false },
        { "2001:db8::/33", "2001:db8:7fff::", true },
        { "2001:db8::/33", "2001:db8:8000::", false },
        { "2001:db8::/127", "2001:db8::1", true },
        { "2001:db8::/127", "2001:db8::2", false },
        /* Families never mix. */
        { "0.0.0.0/0", "::1", false },
        { "::/0", "8.8.8.8", false },
        { "::/0", "0.0.0.0", false },
    };
    int bad = 0;
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        const struct contains_case *c = &cases[i];
        struct egress_cidr cidr;
        struct sockaddr_storage ss;
        struct err *e = NULL;

        ASSERT_NO_ERR(egress_cidr_parse(c->cidr, &cidr, &e), &e);
        sockaddr_of(c->addr, &ss);
        if (egress_cidr_contains(&cidr, (struct sockaddr *)&ss) != c->want) {
            print_error("case %zu: %s %s %s, want the opposite\n", i, c->cidr,
                        c->want ? "does not contain" : "contains", c->addr);
            bad++;
        }
    }
    if (bad > 0)
        fail_msg("%d of %zu CIDR contains cases wrong", bad, ARRAY_LEN(cases));
}

/* -------------------------------------------------------- address classes */

struct class_case {
    const char *addr;
    const char *want; /* a word the class must contain; NULL: public, must pass */
};

#define PUBLIC(a) \
    {             \
        a, NULL   \
    }
#define REFUSED(a, w) \
    {                 \
        a, w          \
    }

/* Checks each address's class: NULL for public ones, a class naming want for refused ones. */
static void
check_class_cases(const struct class_case *cases, size_t n_cases)
{
    int bad = 0;

    for (size_t i = 0; i < n_cases; i++) {
        const struct class_case *c = &cases[i];
        struct sockaddr_storage ss;
        const char *got;

        sockaddr_of(c->addr, &ss);
        got = egress_addr_class((struct sockaddr *)&ss);
        if (c->want == NULL && got != NULL) {
            print_error("case %zu: %s refused as '%s', want public\n", i, c->addr, got);
            bad++;
        } else if (c->want != NULL && got == NULL) {
            print_error("case %zu: %s passes as public, want refused (%s)\n", i, c->addr, c->want);
            bad++;
        } else if (c->want != NULL && c->want[0] != '\0' && strstr(got, c->want) == NULL) {
            print_error("case %zu: %s refused as '%s', want a class naming '%s'\n", i, c->addr, got,
                        c->want);
            bad++;
        }
    }
    if (bad > 0)
        fail_msg("%d of %zu address class cases wrong", bad, n_cases);
}

static void
test_class_ipv4(void **state)
{
    static const struct class_case cases[] = {
        /* Public addresses that must pass. */
        PUBLIC("8.8.8.8"),
        PUBLIC("1.1.1.1"),
        PUBLIC("9.9.9.9"),
        PUBLIC("140.82.112.3"),
        PUBLIC("1.0.0.0"),
        PUBLIC("223.255.255.255"),
        /* 0/8 */
        REFUSED("0.0.0.0", "0.0.0.0"),
        REFUSED("0.255.255.255", "0.0.0.0"),
        /* 10/8 */
        PUBLIC("9.255.255.255"),
        REFUSED("10.0.0.0", "10/8"),
        REFUSED("10.0.0.1", "private"),
        REFUSED("10.255.255.255", "10/8"),
        PUBLIC("11.0.0.0"),
        /* 100.64/10 (CGNAT, and Alibaba's and Tailscale's 100.100.100.100) */
        PUBLIC("100.63.255.255"),
        REFUSED("100.64.0.0", "CGNAT"),
        REFUSED("100.64.0.1", "CGNAT"),
        REFUSED("100.100.100.100", "CGNAT"),
        REFUSED("100.127.255.255", "CGNAT"),
        PUBLIC("100.128.0.0"),
        PUBLIC("100.128.0.1"),
        /* 127/8 */
        PUBLIC("126.255.255.255"),
        REFUSED("127.0.0.1", "loopback"),
        REFUSED("127.0.0.0", "loopback"),
        REFUSED("127.255.255.255", "loopback"),
        REFUSED("127.1.2.3", "loopback"),
        PUBLIC("128.0.0.0"),
        /* 169.254/16: link-local and cloud metadata */
        PUBLIC("169.253.255.255"),
        REFUSED("169.254.0.0", "link-local"),
        REFUSED("169.254.169.254", "metadata"),
        REFUSED("169.254.255.255", "link-local"),
        PUBLIC("169.255.0.0"),
        /* 172.16/12 */
        PUBLIC("172.15.255.255"),
        REFUSED("172.16.0.0", "172.16/12"),
        REFUSED("172.20.0.1", "private"),
        REFUSED("172.31.255.255", "172.16/12"),
        PUBLIC("172.32.0.0"),
        /* 192.0.0/24 */
        PUBLIC("191.255.255.255"),
        REFUSED("192.0.0.0", "192.0.0"),
        REFUSED("192.0.0.1", "192.0.0"),
        REFUSED("192.0.0.255", "192.0.0"),
        PUBLIC("192.0.1.0"),
        /* 192.0.2/24 */
        REFUSED("192.0.2.0", "documentation"),
        REFUSED("192.0.2.255", "documentation"),
        PUBLIC("192.0.3.0"),
        /* 192.88.99/24 */
        PUBLIC("192.88.98.255"),
        REFUSED("192.88.99.1", "192.88.99"),
        PUBLIC("192.88.100.0"),
        /* 192.168/16 */
        PUBLIC("192.167.255.255"),
        REFUSED("192.168.0.0", "192.168/16"),
        REFUSED("192.168.1.1", "private"),
        REFUSED("192.168.255.255", "192.168/16"),
        PUBLIC("192.169.0.0"),
        /* 198.18/15 */
        PUBLIC("198.17.255.255"),
        REFUSED("198.18.0.0", "benchmarking"),
        REFUSED("198.19.255.255", "benchmarking"),
        PUBLIC("198.20.0.0"),
        /* 198.51.100/24 */
        PUBLIC("198.51.99.255"),
        REFUSED("198.51.100.1", "documentation"),
        PUBLIC("198.51.101.0"),
        /* 203.0.113/24 */
        PUBLIC("203.0.112.255"),
        REFUSED("203.0.113.1", "documentation"),
        PUBLIC("203.0.114.0"),
        /* 224/4 */
        REFUSED("224.0.0.0", "multicast"),
        REFUSED("224.0.0.1", "multicast"),
        REFUSED("239.255.255.255", "multicast"),
        /* 240/4 and broadcast */
        REFUSED("240.0.0.0", "reserved"),
        REFUSED("240.0.0.1", "reserved"),
        REFUSED("254.255.255.255", "reserved"),
        REFUSED("255.255.255.255", "broadcast"),
    };
    (void)state;

    check_class_cases(cases, ARRAY_LEN(cases));
}

static void
test_class_ipv6(void **state)
{
    static const struct class_case cases[] = {
        PUBLIC("2606:4700::1111"),
        PUBLIC("2606:4700:4700::1111"),
        PUBLIC("2001:4860:4860::8888"),
        PUBLIC("2a00:1450:4001:82a::200e"),
        PUBLIC("2620:fe::fe"),
        REFUSED("::", "unspecified"),
        REFUSED("::1", "loopback"),
        /* fc00::/7 */
        REFUSED("fc00::1", "unique local"),
        REFUSED("fd00::1", "unique local"),
        REFUSED("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "unique local"),
        /* fe80::/10 */
        REFUSED("fe80::1", "link-local"),
        REFUSED("fe80::", "link-local"),
        REFUSED("febf::1", "link-local"),
        REFUSED("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "link-local"),
        /* fec0::/10 */
        REFUSED("fec0::1", "site-local"),
        REFUSED("feff:ffff::1", "site-local"),
        /* ff00::/8 */
        REFUSED("ff02::1", "multicast"),
        REFUSED("ff00::", "multicast"),
        REFUSED("ff05::1:3", "multicast"),
        REFUSED("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "multicast"),
        /* 2001:db8::/32 */
        REFUSED("2001:db8::1", "documentation"),
        REFUSED("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "documentation"),
        PUBLIC("2001:db9::1"),
        PUBLIC("2001:db7:ffff::1"),
        /* Teredo 2001::/32, whatever it embeds */
        REFUSED("2001::1", "Teredo"),
        REFUSED("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
        REFUSED("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", "Teredo"),
        REFUSED("2001:0:5ef5:79fd:0:59d:f7f7:f7f7", "Teredo"),
        /* 100::/64 */
        REFUSED("100::", "100::/64"),
        REFUSED("100::1", "100::/64"),
        REFUSED("100::ffff:ffff:ffff:ffff", "100::/64"),
        PUBLIC("100:0:0:1::1"),
    };
    (void)state;

    check_class_cases(cases, ARRAY_LEN(cases));
}

/* Row 11: IPv4 inside IPv6 is classified by the IPv4 address it carries. */
static void
test_class_embedded(void **state)
{
    static const struct class_case cases[] = {
        /* IPv4-mapped ::ffff:0:0/96 */
        REFUSED("::ffff:127.0.0.1", ""),
        REFUSED("::ffff:7f00:1", ""),
        REFUSED("::ffff:169.254.169.254", ""),
        REFUSED("::ffff:10.0.0.1", ""),
        REFUSED("::ffff:172.16.0.1", ""),
        REFUSED("::ffff:192.168.0.1", ""),
        REFUSED("::ffff:100.64.0.1", ""),
        REFUSED("::ffff:0.0.0.0", ""),
        REFUSED("::ffff:224.0.0.1", ""),
        REFUSED("::ffff:255.255.255.255", ""),
        PUBLIC("::ffff:8.8.8.8"),
        PUBLIC("::ffff:1.1.1.1"),
        PUBLIC("::ffff:100.128.0.1"),
        PUBLIC("::ffff:172.32.0.0"),
        /* IPv4-compatible ::/96 */
        REFUSED("::127.0.0.1", ""),
        REFUSED("::169.254.169.254", ""),
        REFUSED("::10.0.0.1", ""),
        REFUSED("::2", ""),
        PUBLIC("::8.8.8.8"),
        /* NAT64 64:ff9b::/96 */
        REFUSED("64:ff9b::a9fe:a9fe", ""),
        REFUSED("64:ff9b::127.0.0.1", ""),
        REFUSED("64:ff9b::10.0.0.1", ""),
        REFUSED("64:ff9b::192.168.1.1", ""),
        REFUSED("64:ff9b::100.64.0.1", ""),
        PUBLIC("64:ff9b::808:808"),
        PUBLIC("64:ff9b::1.1.1.1"),
        /* NAT64 local use 64:ff9b:1::/48 (a /96 taken from it) */
        REFUSED("64:ff9b:1::a9fe:a9fe", ""),
        REFUSED("64:ff9b:1::7f00:1", ""),
        REFUSED("64:ff9b:1:ffff::10.1.2.3", ""),
        /* 6to4 2002::/16: the IPv4 address is in bits 16-47 */
        REFUSED("2002:a9fe:a9fe::", "6to4"),
        REFUSED("2002:a9fe:a9fe::1", "6to4"),
        REFUSED("2002:7f00:1::1", "6to4"),
        REFUSED("2002:a00:1::1", "6to4"),
        REFUSED("2002:c0a8:101::1", "6to4"),
        REFUSED("2002:6440:1::", "6to4"),
        REFUSED("2002:c058:6301::", "6to4"),
        REFUSED("2002::", "6to4"),
        PUBLIC("2002:808:808::1"),
        PUBLIC("2002:101:101::"),
        PUBLIC("2002:6480:1::"),
    };
    (void)state;

    check_class_cases(cases, ARRAY_LEN(cases));
}

/*
 * Regression (found by this test): NAT64 local-use prefix 64:ff9b:1::/48 (RFC 8215) is only decoded with the IPv4 address
 * in its last 32 bits (a /96 taken from it). RFC 6052 section 2.2 also defines the /48 layout,
 * the natural one for a /48 prefix: IPv4 in bits 48-63 and 72-87, octet u (bits 64-71) zero,
 * suffix after. 64:ff9b:1:a9fe:a9:fe00:808:808 is then 169.254.169.254 behind a /48 NAT64 yet
 * egress_addr_class() reads 8.8.8.8 from the last 32 bits and returns NULL (public); a hostile
 * DNS answer (row 15) can choose those bits. The IANA special-purpose registry lists
 * 64:ff9b:1::/48 as not globally reachable, so refusing the whole /48 unless an operator range
 * allows it would also fix this. Only exploitable where the proxy host routes 64:ff9b:1::/48
 * to a NAT64 that uses the /48 layout. (With a zero suffix the last 32 bits read 0.0.0.0 and
 * the address is refused by accident, which is why the suffix here is non-zero.)
 */
static void
test_class_nat64_local_48(void **state)
{
    static const struct class_case cases[] = {
        REFUSED("64:ff9b:1:a9fe:a9:fe00:808:808", ""),
        REFUSED("64:ff9b:1:7f00:0:100:101:101", ""),
        REFUSED("64:ff9b:1:a00:0:100:808:808", ""),
    };
    (void)state;

    check_class_cases(cases, ARRAY_LEN(cases));
}

/* Only AF_INET and AF_INET6 are internet addresses; anything else is refused. */
static void
test_class_other_family(void **state)
{
    struct sockaddr_un un;
    struct sockaddr_storage ss;
    (void)state;

    memset(&un, 0, sizeof(un));
    un.sun_family = AF_UNIX;
    assert_non_null(egress_addr_class((struct sockaddr *)&un));
    memset(&ss, 0, sizeof(ss));
    ss.ss_family = AF_UNSPEC;
    assert_non_null(egress_addr_class((struct sockaddr *)&ss));
}

/* The class depends on the address only: a port or scope id changes nothing. */
static void
test_class_ignores_port_and_scope(void **state)
{
    struct sockaddr_storage ss;
    (void)state;

    sockaddr_of("8.8.8.8", &ss);
    ((struct sockaddr_in *)&ss)->sin_port = htons(443);
    assert_null(egress_addr_class((struct sockaddr *)&ss));
    sockaddr_of("169.254.169.254", &ss);
    ((struct sockaddr_in *)&ss)->sin_port = htons(80);
    assert_non_null(egress_addr_class((struct sockaddr *)&ss));
    sockaddr_of("fe80::1", &ss);
    ((struct sockaddr_in6 *)&ss)->sin6_scope_id = 2;
    assert_non_null(egress_addr_class((struct sockaddr *)&ss));
    sockaddr_of("2606:4700::1111", &ss);
    ((struct sockaddr_in6 *)&ss)->sin6_port = htons(443);
    ((struct sockaddr_in6 *)&ss)->sin6_flowinfo = htonl(0x12345);
    assert_null(egress_addr_class((struct sockaddr *)&ss));
}

/*
 * The parsed IP literal of a request is what gets classified: every refused literal the canon
 * step accepts stays refused (row 10: the dotted form of 169.254.169.254 with a trailing dot).
 */
static void
test_class_of_parsed_literals(void **state)
{
    static const char *const refused[] = {
        "169.254.169.254.:80",
        "127.0.0.1:80",
        "[::1]:443",
        "[::ffff:127.0.0.1]:443",
        "[::ffff:7f00:1]:443",
        "[::127.0.0.1]:443",
        "[64:ff9b::a9fe:a9fe]:80",
        "[2002:a9fe:a9fe::]:80",
        "[fe80::1]:80",
        "0.0.0.0:80",
        "[::]:80",
        "255.255.255.255:80",
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(refused); i++) {
        struct egress_dest d;
        struct err *e = NULL;

        ASSERT_NO_ERR(egress_parse_authority(refused[i], 0, &d, &e), &e);
        assert_true(d.is_ip);
        if (egress_addr_class((struct sockaddr *)&d.ip) == NULL)
            fail_msg("%s parses to an address classified as public", refused[i]);
    }
}

int
test_addr_run(void)
{
    static const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cidr_parse),
        cmocka_unit_test(test_cidr_contains),
        cmocka_unit_test(test_class_ipv4),
        cmocka_unit_test(test_class_ipv6),
        cmocka_unit_test(test_class_embedded),
        cmocka_unit_test(test_class_nat64_local_48),
        cmocka_unit_test(test_class_other_family),
        cmocka_unit_test(test_class_ignores_port_and_scope),
        cmocka_unit_test(test_class_of_parsed_literals),
    };

    return cmocka_run_group_tests_name("egress/addr", tests, NULL, NULL);
}
