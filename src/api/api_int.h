/* Declarations shared by the files of src/api/; no other module includes this. */
#ifndef PADDOCK_API_INT_H
#define PADDOCK_API_INT_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>
#include <microhttpd.h>

#include "api.h"
#include "egress/egress.h"

/* Caps on what a client may send. */
#define API_BODY_MAX      (8u << 20) /* a JSON request body */
/* A body over API_BODY_MAX but within this is read and thrown away, then answered 413: a client
 * that writes its whole body before it reads (most do) gets the 413, not a broken pipe. One
 * announced longer is answered 413 at once, unread. */
#define API_BODY_DRAIN_MAX (32u << 20)
/* A JSON body must arrive at this average rate, after a grace of --header-timeout: at most
 * that plus 128 s for API_BODY_MAX. (Uploads stream to disk and have their own rules.) */
#define API_BODY_RATE        (64u << 10) /* bytes per second */
/* What all JSON bodies being read at once may hold together. Each may be API_BODY_MAX and the
 * server takes 1024 connections: without this, slow senders with a key could make it hold 8
 * GiB. A body that would go over it is read to its end and thrown away, and answered 503 with
 * a Retry-After (the SDK waits and sends it again). */
#define API_BODY_BUDGET      (256u << 20)
#define API_HEADERS_MAX   (64u * 1024) /* request line and headers */
#define API_SEGMENTS_MAX  64
#define API_QUERY_MAX     32
#define API_PAGE_DEFAULT  50
#define API_PAGE_MAX      1000
#define API_FILES_DEFAULT 100
#define API_INLINE_FILE_MAX  (1u << 20)
#define API_INLINE_TOTAL_MAX (2u << 20)

struct api_server;

/** The key that authenticated a request. */
struct api_auth {
    char name[64];
    char project[64];
    char scopes[256];
};

/** One request, from its request line to its completion. */
struct api_req {
    struct api_server *srv;
    struct MHD_Connection *conn;
    char *raw_uri;          /* as sent, percent-encoding intact */
    const char *method;     /* borrowed from MHD */
    int64_t start_ns;
    bool upload_route;      /* under /upload/ */
    char *segs[API_SEGMENTS_MAX]; /* decoded path segments after the version */
    size_t nsegs;
    char *rest;             /* the decoded remainder after ".../files/" (files routes) */
    bool has_rest;
    char *qk[API_QUERY_MAX], *qv[API_QUERY_MAX];
    size_t nq;
    struct api_auth auth;
    bool authed;
    struct buf body;        /* JSON bodies */
    bool body_too_large;
    bool body_over_budget;  /* refused for API_BODY_BUDGET: the rest is thrown away */
    size_t body_held;       /* bytes of the budget this request holds */
    unsigned retry_after_s; /* a Retry-After for the answer, 0 for none */
    int64_t body_start_ms;  /* monotonic: when the headers were complete */
    bool started;           /* the handler ran once (headers complete) */
    /* upload chunks stream to the staging file as they arrive */
    bool chunk;
    struct store_upload up;
    uint64_t up_offset;
    struct err *up_err;
    unsigned status;        /* for the log line */
    uint64_t bytes_out;
    struct env_ctx *ctx;    /* borrowed from the pool for the request */
};

struct api_server {
    const struct api_config *cfg;
    struct MHD_Daemon *daemon;
};

/* http.c */
/** How many times the query parameter key is given. */
size_t api_query_count(const struct api_req *r, const char *key);
const char *api_query(const struct api_req *r, const char *key);
bool api_query_bool(const struct api_req *r, const char *key, bool dflt, struct err **errp);
const char *api_header(const struct api_req *r, const char *name);
enum MHD_Result api_reply_json(struct api_req *r, unsigned status, json_t *j);
enum MHD_Result api_reply_err(struct api_req *r, struct err *e);
enum MHD_Result api_reply_errf(struct api_req *r, enum err_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
enum MHD_Result api_reply_status(struct api_req *r, unsigned status, const char *gstatus,
                                 const char *fmt, ...) __attribute__((format(printf, 4, 5)));
enum MHD_Result api_reply_response(struct api_req *r, unsigned status,
                                   struct MHD_Response *resp);
/** Checks the request's key has scope; replies 403 and returns false when not. */
bool api_require(struct api_req *r, const char *scope, enum MHD_Result *res);
/*
 * An environment spec whose allowlist entries name a credential decides where that secret is
 * sent (a bearer_token or oauth2 credential has no domains of its own): only a key that may
 * write credentials may do that. True when spec names none or the key may; else replies 403
 * naming the entry (field prefixes it, e.g. "environment.") and returns false.
 */
bool api_may_bind_credentials(struct api_req *r, json_t *spec, const char *field,
                              enum MHD_Result *res);
/** The base URL clients reach this server at ("http://host:port"). Owned. */
char *api_base_url(const struct api_req *r);
struct env_ctx *api_ctx(struct api_req *r, struct err **errp);
/**
 * Gives a context back to the pool (or closes it). A request's own goes back when the request
 * completes; a response that outlives its request (a stream whose free callback still reads
 * the store) takes the context from the request and gives it back itself.
 */
void api_ctx_release(struct env_ctx *c);
/** The page_size query parameter: dflt when absent, capped at API_PAGE_MAX; ERR_INVALID when
 * it is not a non-negative integer. */
int api_page_size(struct api_req *r, size_t dflt, size_t *out, struct err **errp);

/* codec.c */
/**
 * Why a body is not JSON, for its 400: jansson's reason without the text it quotes from near
 * the error (up to 20 bytes of the body, maybe of a secret), then line and column. Owned.
 */
char *api_json_error(const json_error_t *je);
int api_b64_decode(const char *in, size_t len, char **out, size_t *out_len);
char *api_b64_encode(const void *data, size_t len);
/**
 * Percent-decodes len bytes of s; NULL when an escape is malformed or decodes to NUL, or when
 * the result is not UTF-8.
 */
char *api_pct_decode(const char *s, size_t len, bool plus_is_space);
const char *api_mime_type(const char *path);
/** "environments/ID" or "ID" → ID (borrowed from s). */
const char *api_strip_prefix(const char *s, const char *prefix);

/* creds.c */
/** Seals plain (AES-256-GCM, DATA/secret.key) bound to aad; *out owned. */
int api_seal(const char *data_dir, const char *aad, const char *plain, void **out,
             size_t *out_len, struct err **errp);
int api_unseal(const char *data_dir, const char *aad, const void *blob, size_t len, char **plain,
               struct err **errp);
enum MHD_Result api_route_credentials(struct api_req *r);
/** The proxy's address rules, for the daemon's own outbound requests (oauth.c). */
const char *api_egress_vet(const struct sockaddr *sa);
/** Waits until this server's proxy has written the records of the connections that ended. */
void api_egress_sync(void);
bool api_egress_override(const char *host, struct sockaddr_storage *out);
const char *api_egress_upstream_ca(void);

/* oauth.c */
/**
 * Applies the proxy's outbound rules to a libcurl easy handle about to fetch url: names
 * resolve with --egress-resolve, every address is vetted before connect, no redirect, the
 * system CAs plus --egress-upstream-ca. Returns the state to release after the transfer.
 */
void *api_outbound_prepare(void *curl, const char *url);
/** What refused an address (NULL: nothing). */
const char *api_outbound_why(void *state);
void api_outbound_release(void *state);
/**
 * Whether url may be a token_url: https only, since the token request carries the client
 * secret and the refresh token (RFC 6749 §2.3.1, §3.2 require TLS).
 */
bool api_oauth_url_ok(const char *url);
/**
 * The lifetime in seconds a token answer's expires_in gives: a JSON integer, a real, or a
 * string of a decimal number ("3599"); 300 when it is missing or anything else; always
 * taken as at least 10 s and at most a day.
 */
int64_t api_oauth_lifetime_s(const json_t *expires_in);

/**
 * Sets up libcurl for the daemon's own requests, before any thread starts: libcurl's blocks
 * are wiped when it frees or moves them (its request buffer holds the token form, its
 * download buffer the answer), and TLS plain text is wiped by OpenSSL (oauth.c). 0, or -1.
 */
int api_oauth_init(struct err **errp);
/** Wipes every string of a JSON value that held secrets, before it is freed. */
void api_wipe_json(json_t *j);
/**
 * Replaces a secret field of a stored credential by new_value, in one transaction, if it
 * still holds old_value (else leaves it: it was changed meanwhile). 0 either way.
 */
int api_cred_rotate(const char *data_dir, struct store *s, const char *project, const char *id,
                    const char *field, const char *old_value, const char *new_value,
                    struct err **errp);
/**
 * An access token for the oauth2 credential, cached until shortly before it expires; one
 * request per credential at a time. A refresh token the endpoint rotates is stored (sealed
 * under data_dir) before the access token is handed out. With wait false the caller never
 * waits for the endpoint: a request that is due runs on a thread of its own, the token in hand
 * is used while it lasts, and without one the answer is an error saying it is being fetched
 * (the next call, once it is in, gets it).
 */
int api_oauth_token(const char *data_dir, const char *project, const char *id, bool wait,
                    char **token, struct err **errp);
/** At shutdown: starts no new token request and waits (at most timeout_ms) for those under
 * way, which use the proxy's address rules and may store a rotated refresh token. */
void api_oauth_quiesce(int timeout_ms);
/** Drops a cached token (its credential changed or went). */
void api_oauth_forget(const char *project, const char *id);


/** A credential with its secret opened: *config and *secret are JSON objects (owned). */
int api_cred_secret(const char *data_dir, struct store *s, const char *project, const char *id,
                    struct store_cred *meta, json_t **config, json_t **secret,
                    struct err **errp);

/* routes_agent.c */
struct agent_service;
/** The pool interactions run on (set once at start). */
void api_set_agents(struct agent_service *svc);
enum MHD_Result api_route_agents(struct api_req *r);

/* routes_env.c */
/** Creates (or with check_only, validates) an environment from its JSON config. */
int api_env_create_json(const struct api_config *cfg, struct env_ctx *ctx, const char *project,
                        json_t *body, bool inline_form, bool check_only, struct store_env *out,
                        struct err **errp);

json_t *api_egress_json(const struct store_egress *x);
enum MHD_Result api_route_environments(struct api_req *r);
enum MHD_Result api_route_files_download(struct api_req *r);
/** Upload chunk data as it arrives (called for every piece of the body). */
void api_upload_data(struct api_req *r, const char *data, size_t len);

#endif
