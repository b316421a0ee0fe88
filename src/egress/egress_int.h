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

#endif
