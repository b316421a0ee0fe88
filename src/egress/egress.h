/*
 * egress — the proxy through which every byte leaves a sandbox. It sees only resolved
 * per-environment policies: allowlist matching on one canonical destination, name resolution
 * in the proxy with every address classified before it is dialled, CONNECT tunnels and
 * absolute-form HTTP forwarding, loud denials, and an audit record of every decision.
 * See docs/EGRESS.md.
 */
#ifndef PADDOCK_EGRESS_H
#define PADDOCK_EGRESS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <jansson.h>

#include "common/common.h"
#include "env/env.h"
#include "sandbox/sandbox.h"

/* ------------------------------------------------------------------ policy */

enum egress_mode {
    EGRESS_DISABLED = 0, /* loopback only; no proxy */
    EGRESS_OPEN,         /* everything, still through the proxy and its address rules */
    EGRESS_ALLOWLIST,
};

enum egress_rule_kind {
    EGRESS_RULE_EXACT = 0, /* host equals */
    EGRESS_RULE_SUFFIX,    /* "*.example.com": subdomains only, never the apex */
    EGRESS_RULE_ANY,       /* "*" */
    EGRESS_RULE_IP,        /* an IP literal, matched only by the same literal */
};

/** A header the proxy sets on every request of an intercepted rule (replacing the client's). */
struct egress_header {
    char *name;
    char *value; /* may be a secret: wiped when the policy is freed */
};

struct egress_rule {
    enum egress_rule_kind kind;
    char host[256]; /* canonical: lower case, no trailing dot, A-labels; suffix without "*." */
    uint16_t port;  /* 0: 80 and 443 */
    bool intercept; /* TLS is terminated to set headers (a transform or a credential) */
    char credential[128]; /* credential id whose headers the server adds; "" none */
    char cred_error[128]; /* why the server could not resolve it; requests are then refused */
    struct egress_header *headers;
    size_t n_headers;
};

/**
 * A credential placeholder: inside the sandbox an environment variable holds placeholder; in
 * the headers of requests to one of domains (and only there) the proxy replaces it by value.
 */
struct egress_subst {
    char *placeholder;
    char *value; /* a secret: wiped when the policy is freed */
    struct egress_policy *domains;
};

struct egress_policy {
    enum egress_mode mode;
    size_t n;
    struct egress_rule *rules;
    size_t n_subst;
    struct egress_subst *subst;
};

/**
 * Compiles an environment's `network` setting (NULL: open). Every allowlist entry is checked:
 * over-broad or malformed patterns are ERR_INVALID naming the entry. *out is owned; free with
 * egress_policy_free().
 */
int egress_policy_compile(json_t *network, struct egress_policy **out, struct err **errp);
void egress_policy_free(struct egress_policy *p);

/** A parsed destination: canonical host (or IP literal) and port. */
struct egress_dest {
    char host[256];
    uint16_t port;
    bool is_ip;
    struct sockaddr_storage ip; /* when is_ip */
};

/**
 * Canonicalises a host name or IP literal: lower case, one trailing dot dropped, length and
 * label checks, A-labels only; numeric forms that inet_pton does not accept as an address
 * (2130706433, 0x7f.1, 127.1) are refused rather than guessed at; IPv6 only in brackets and
 * without a zone id.
 */
int egress_canon_host(const char *in, size_t len, struct egress_dest *d, struct err **errp);

/**
 * Parses an authority "host[:port]" strictly (no userinfo, one port of digits); a missing
 * port is default_port (0: required).
 */
int egress_parse_authority(const char *in, uint16_t default_port, struct egress_dest *d,
                           struct err **errp);

/**
 * True when the policy lets d through; *rule_out (may be NULL) is the rule that matched (NULL
 * for an open policy). Otherwise *reason says why.
 */
bool egress_policy_allows(const struct egress_policy *p, const struct egress_dest *d,
                          const char **reason, const struct egress_rule **rule_out);

/** A fingerprint of everything the policy decides and injects. */
uint64_t egress_policy_print(const struct egress_policy *p);

/** A deep copy. */
struct egress_policy *egress_policy_dup(const struct egress_policy *p);

/** The mode's name as an environment's row stores it: "disabled", "open" or "allowlist". */
const char *egress_mode_name(const struct egress_policy *p);

/** True when s is an HTTP field name (a token) of at most 64 bytes. */
bool egress_header_name_ok(const char *s);
/** True when name is a field the proxy may set on a request: a field name, and none that
 * frames, routes or belongs to one hop (Host, Content-Length, Transfer-Encoding, Connection,
 * Keep-Alive, TE, Trailer, Upgrade, Expect, Proxy-*). */
bool egress_header_injectable(const char *name);
/** True when s may stand in an HTTP field value: no control character but tab (no CR, LF, DEL),
 * so nothing put into a header can end it or start another. */
bool egress_header_value_ok(const char *s);

/**
 * Adds a placeholder substitution (copies the strings; takes domains). False, and nothing added,
 * when value could not stand in a header (egress_header_value_ok()).
 */
bool egress_policy_add_subst(struct egress_policy *p, const char *placeholder, const char *value,
                             struct egress_policy *domains);

/**
 * Adds a header to a rule (the server's credential injection); copies both strings. False, and
 * nothing added, when name or value is not fit for a header.
 */
bool egress_rule_add_header(struct egress_rule *r, const char *name, const char *value);

/**
 * Makes sure DATA/ca holds the installation's CA (ca.key 0600, ca.pem) and bundle.pem (the
 * system's CAs plus this one), the trust store every sandbox with a network gets.
 */
int egress_ca_ensure(const char *data_dir, struct err **errp);

/* --------------------------------------------------------------- addresses */

/** An address range: a network address and a prefix length. */
struct egress_cidr {
    struct sockaddr_storage net;
    unsigned bits;
};

/** Parses "A.B.C.D/N" or "X::Y/N" (a bare address is a /32 or /128). */
int egress_cidr_parse(const char *s, struct egress_cidr *out, struct err **errp);
bool egress_cidr_contains(const struct egress_cidr *c, const struct sockaddr *sa);

/**
 * Classifies an address a sandbox must not reach without an operator's say-so: loopback,
 * private, CGNAT, link-local (and so cloud metadata), multicast, broadcast, unspecified,
 * reserved, unique- and site-local IPv6, and IPv4-mapped, -compatible, NAT64, 6to4 and
 * Teredo forms of them. Returns NULL for an ordinary public address, else the class.
 */
const char *egress_addr_class(const struct sockaddr *sa);

/* ------------------------------------------------------------------- proxy */

struct egress_config {
    struct egress_cidr *allow;    /* ranges allowed although special */
    size_t n_allow;
    struct { char name[256]; struct sockaddr_storage addr; } *resolve; /* NAME=IP overrides */
    size_t n_resolve;
    struct sockaddr_storage *self; /* paddock's own listening addresses: never dialled */
    size_t n_self;
    const char *data_dir;          /* for the audit records and the CA */
    const char *upstream_ca;       /* an extra CA trusted for intercepted upstreams */
    const char *resolv_conf;       /* nameservers and options; NULL: /etc/resolv.conf */
    unsigned max_conns_per_env;    /* concurrent connections of one environment */
    unsigned conn_rate;            /* new connections a second of one environment, after a burst */
    int64_t header_timeout_ms;     /* the whole request head, a deadline not an idle timer */
    int64_t idle_timeout_ms;       /* a relay with no byte either way is closed */
    int64_t connect_timeout_ms;    /* dial to a connected socket (and verified TLS when
                                      intercepting); a stalled upstream gets a 504 */
    size_t max_header_bytes;
};

struct egress;

/** Starts the proxy's event loop on a thread of its own. *out is owned. */
int egress_start(const struct egress_config *cfg, struct egress **out, struct err **errp);
/** Waits (up to 2 s) until every record of a connection that has ended is written: a listing
 * made after a connection ended shows it. */
void egress_sync_audit(struct egress *eg);
/** Vets an address as the proxy does before dialling: NULL when allowed, else why not. */
const char *egress_vet(const struct egress *eg, const struct sockaddr *sa);
/** The operator's --egress-resolve address for host, if any. */
bool egress_override(const struct egress *eg, const char *host, struct sockaddr_storage *out);

/** Replaces the first "self" address (the API's, once its port is known). */
void egress_set_self(struct egress *eg, const struct sockaddr *sa);

/** Stops the loop and closes every listener and connection. */
void egress_stop(struct egress *eg);

/**
 * Makes sure the environment's running sandbox has a proxy listener, and that it applies
 * policy (copied). Idempotent per (id, init): a new init (a restart) gets a new listener.
 * Returns 1 when it made a listener, 0 when one was there (or the policy is disabled).
 */
int egress_attach(struct egress *eg, const char *id, const struct sandbox_init *init,
                  const struct egress_policy *policy, struct err **errp);
/**
 * Drops the environment's listener (stopped, deleted, or with no policy it can be given).
 * With init, when this proxy has none for it, the socket init keeps is made to refuse
 * connections all the same: a proxy before this one may have left it listening.
 */
void egress_detach(struct egress *eg, const char *id, const struct sandbox_init *init);
/** Ids of the environments that have a listener; *out owned (free each, then the array). */
size_t egress_attached(struct egress *eg, char ***out);

#endif
