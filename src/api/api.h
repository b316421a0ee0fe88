/*
 * api — the HTTP server: routing, auth, request decoding and validation, response encoding,
 * pagination and error mapping for the environments and files surface of the Managed Agents
 * REST API (docs/API.md). It drives environments through env/ only.
 */
#ifndef PADDOCK_API_H
#define PADDOCK_API_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "common/common.h"
#include "env/env.h"

struct api_config {
    const char *data_dir;
    uint64_t storage_size;   /* of a new storage image; 0: the default */
    const char *listen;      /* "ADDR:PORT"; port 0 picks one */
    const char *skills_dir;  /* NULL: skill_registry sources are refused */
    const char *public_url;  /* base of upload URLs; NULL: from the Host header */
    struct env_lifecycle lc; /* janitor timings */
    uint64_t max_upload;     /* largest upload */
    int64_t header_timeout_ms; /* a request's headers must arrive within this */
    /* egress proxy settings (docs/EGRESS.md) */
    const char *const *egress_resolve; /* "NAME=IP" */
    size_t n_egress_resolve;
    const char *const *egress_allow; /* CIDRs */
    size_t n_egress_allow;
    const char *egress_upstream_ca; /* extra CA for intercepted upstreams */
    const char *egress_resolv_conf; /* the proxy's resolver configuration; NULL: the system's */
    int64_t egress_connect_timeout_ms; /* dial + upstream TLS handshake; then a 504 */
    int64_t egress_header_timeout_ms;  /* a client's whole request head; then closed */
    int64_t egress_idle_timeout_ms;    /* a relay with no byte either way; then closed */
    unsigned egress_conn_rate;         /* new connections a second of one environment */
    size_t warm_pool;               /* sandboxes kept started for creates to claim; 0: none */
    /* interactions (docs/AGENTS.md) */
    const char *default_model;  /* --model / PADDOCK_MODEL */
    unsigned workers;           /* concurrent runs */
    unsigned per_key_max;       /* queued + running interactions per key */
    int64_t retention_ms;       /* stored interactions */
    const char *prices_file;    /* the operator's price table; NULL: built-in only */
};

/** Serves until SIGINT or SIGTERM. Must be called before the process starts any thread. */
int api_serve(const struct api_config *cfg, struct err **errp);

/**
 * Resolves an interaction's environment as the environments API describes one (an agent_env_fn
 * of agent/): "remote" or NULL makes a new one, an id resumes that one, an Environment object
 * is created. arg is the server's struct api_config, or NULL outside a server (then
 * skill_registry sources are refused).
 */
int api_env_resolve(const void *arg, struct env_ctx *ctx, const char *project, json_t *spec,
                    bool check_only, char *env_id, struct err **errp);

/* ------------------------------------------------------------------ keys */

/** Scopes a key may carry. */
#define API_SCOPES                                                                                  \
    "environments.read environments.write credentials.read credentials.write interactions.read "  \
    "interactions.write agents.read agents.write"

/**
 * Makes a key: checks name, project and scopes (a bare "environments" means both of its
 * scopes), stores its hash, and returns the secret in *key_out (owned; shown once).
 */
int api_key_create(struct store *s, const char *name, const char *project,
                   const char *const *scopes, size_t n_scopes, char **key_out,
                   struct err **errp);

#endif
