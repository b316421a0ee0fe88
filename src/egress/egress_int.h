/* Declarations shared by the files of src/egress/; no other module includes this. */
#ifndef PADDOCK_EGRESS_INT_H
#define PADDOCK_EGRESS_INT_H

#include <time.h>

#include <openssl/ssl.h>

#include "egress.h"

struct egress_tls;

/** Loads the CA made by egress_ca_ensure() and builds both TLS contexts. */
int egress_tls_new(const char *data_dir, const char *upstream_ca, struct egress_tls **out,
                   struct err **errp);
void egress_tls_free(struct egress_tls *t);
/** The server side of an intercepted tunnel: presents a leaf for host. NULL on failure. */
SSL *egress_tls_accept_ssl(struct egress_tls *t, const char *host, bool is_ip);
/** The leaf certificate presented for host at time now (the cache's; do not free). NULL on
 * failure. Exposed for tests, which move the clock. */
X509 *egress_tls_leaf(struct egress_tls *t, const char *host, bool is_ip, time_t now);
/** The client side towards the upstream: SNI, and the peer verified as host. */
SSL *egress_tls_connect_ssl(struct egress_tls *t, const char *host, bool is_ip);
/** The server context, for its SNI callback. */
SSL_CTX *egress_tls_server_ctx(struct egress_tls *t);

/* audit.c: the audit trail's writer thread. */
struct egress_audit;
struct store;
struct store_egress;

/** Starts the writer; it owns store from now on (closed by egress_audit_stop()). */
int egress_audit_start(struct store *store, struct egress_audit **out, struct err **errp);
/** Queues the record of a connection just allowed; its key, or 0 (nothing queued) when the
 * queue is full. Loop thread only. */
uint64_t egress_audit_open(struct egress_audit *a, const struct store_egress *r);
/** Queues a connection's final record: completes the one of key, or (key 0) a record of its
 * own. */
void egress_audit_close(struct egress_audit *a, uint64_t key, const struct store_egress *r);
/** Waits (at most timeout_ms) until every record queued so far is written. */
void egress_audit_sync(struct egress_audit *a, int timeout_ms);
/** Records queued and not yet taken by the writer. */
size_t egress_audit_queued(struct egress_audit *a);
/**
 * Writes what is queued, waiting for the database at most timeout_ms in all (what it cannot
 * write by then is counted in one log line), then stops the writer and closes its store.
 */
void egress_audit_stop(struct egress_audit *a, int timeout_ms);

#endif
