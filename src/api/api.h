/*
 * api — the HTTP server: routing, auth, request decoding and validation, response encoding,
 * pagination and error mapping for the environments and files surface of the Managed Agents
 * REST API (docs/API.md). It drives environments through env/ only.
 */
#ifndef PADDOCK_API_H
#define PADDOCK_API_H

#include <stdint.h>

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
    size_t warm_pool;               /* sandboxes kept started for creates to claim; 0: none */
};

/** Serves until SIGINT or SIGTERM. Must be called before the process starts any thread. */
int api_serve(const struct api_config *cfg, struct err **errp);

/* ------------------------------------------------------------------ keys */

/** Scopes a key may carry. */
#define API_SCOPES                                                                                  \
    "environments.read environments.write credentials.read credentials.write"

/**
 * Makes a key: checks name, project and scopes (a bare "environments" means both of its
 * scopes), stores its hash, and returns the secret in *key_out (owned; shown once).
 */
int api_key_create(struct store *s, const char *name, const char *project,
                   const char *const *scopes, size_t n_scopes, char **key_out,
                   struct err **errp);

#endif
