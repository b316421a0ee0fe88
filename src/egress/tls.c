/*
 * TLS for the egress proxy: the installation's CA (made at first start, its key readable only
 * by root), leaf certificates minted per host from one shared leaf key with a short validity
 * and a bounded cache, the server-side context that presents them to sandboxes, and the
 * client-side context that verifies upstreams against the system's CAs (plus an operator's
 * extra CA), never insecurely.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "egress_int.h"

#define LEAF_CACHE 256
/* A leaf is valid from an hour before it was minted (clock skew) to a day after, and served from
 * the cache for half a day, so a leaf handed out always has at least 12 hours left. */
#define LEAF_VALID    (24 * 3600)
#define LEAF_REUSE    (12 * 3600)
#define SYSTEM_BUNDLE "/etc/ssl/certs/ca-certificates.crt"

struct leaf {
    char host[256];
    X509 *cert;
    uint64_t used;
    time_t minted;
};

struct egress_tls {
    X509 *ca;
    EVP_PKEY *ca_key;
    EVP_PKEY *leaf_key;
    SSL_CTX *server;
    SSL_CTX *client;
    struct leaf cache[LEAF_CACHE];
    uint64_t tick;
};

static int
ssl_err(struct err **errp, const char *what)
{
    char buf[256];
    unsigned long e = ERR_get_error();

    ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    return err_set(errp, ERR_INTERNAL, 0, "%s: %s", what, e != 0 ? buf : "failed");
}

static int
add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509_EXTENSION *ex;

    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    ex = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (ex == NULL)
        return -1;
    X509_add_ext(cert, ex, -1);
    X509_EXTENSION_free(ex);
    return 0;
}

static int
random_serial(X509 *cert)
{
    unsigned char b[16];
    BIGNUM *bn;

    if (RAND_bytes(b, sizeof(b)) != 1)
        return -1;
    b[0] &= 0x7f;
    bn = BN_bin2bn(b, sizeof(b), NULL);
    if (bn == NULL)
        return -1;
    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert));
    BN_free(bn);
    return 0;
}

/* Writes data to dir/name atomically with the given mode. */
static int
write_file(const char *dir, const char *name, const void *data, size_t len, unsigned mode,
           struct err **errp)
{
    cleanup_close int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    if (dfd < 0)
        return err_set(errp, ERR_IO, errno, "open %s", dir);
    return util_write_file_at(dfd, name, data, len, mode, errp);
}

static char *
pem_of(int (*w)(BIO *, void *), void *obj, size_t *len)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *p = NULL, *out;
    long n;

    if (b == NULL || !w(b, obj)) {
        BIO_free(b);
        return NULL;
    }
    n = BIO_get_mem_data(b, &p);
    out = xmalloc((size_t)n + 1);
    memcpy(out, p, (size_t)n);
    out[n] = '\0';
    *len = (size_t)n;
    BIO_free(b);
    return out;
}

static int
w_cert(BIO *b, void *x)
{
    return PEM_write_bio_X509(b, x);
}

static int
w_key(BIO *b, void *k)
{
    return PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL);
}

/* Makes the CA: an EC P-256 key and a self-signed certificate valid for ten years. */
static int
make_ca(const char *dir, struct err **errp)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *ca = X509_new();
    X509_NAME *name;
    char cn[96], host[64] = "paddock";
    unsigned char r[4];
    cleanup_free char *kp = NULL;
    cleanup_free char *cp = NULL;
    size_t kl = 0, cl = 0;
    int rc = -1;

    if (key == NULL || ca == NULL || RAND_bytes(r, sizeof(r)) != 1) {
        ssl_err(errp, "make the egress CA");
        goto out;
    }
    gethostname(host, sizeof(host) - 1);
    snprintf(cn, sizeof(cn), "paddock egress CA %.40s %02x%02x%02x%02x", host, r[0], r[1], r[2],
             r[3]);
    X509_set_version(ca, 2);
    random_serial(ca);
    X509_gmtime_adj(X509_getm_notBefore(ca), -3600);
    X509_gmtime_adj(X509_getm_notAfter(ca), 10L * 365 * 24 * 3600);
    X509_set_pubkey(ca, key);
    name = X509_get_subject_name(ca);
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"paddock", -1, -1,
                               0);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(ca, name);
    if (add_ext(ca, ca, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") < 0 ||
        add_ext(ca, ca, NID_key_usage, "critical,keyCertSign,cRLSign") < 0 ||
        add_ext(ca, ca, NID_subject_key_identifier, "hash") < 0 ||
        X509_sign(ca, key, EVP_sha256()) == 0) {
        ssl_err(errp, "sign the egress CA");
        goto out;
    }
    kp = pem_of(w_key, key, &kl);
    cp = pem_of(w_cert, ca, &cl);
    if (kp == NULL || cp == NULL) {
        ssl_err(errp, "encode the egress CA");
        goto out;
    }
    /* The key first: a CA certificate is never published without its key kept. */
    if (write_file(dir, "ca.key", kp, kl, 0600, errp) < 0 ||
        write_file(dir, "ca.pem", cp, cl, 0644, errp) < 0)
        goto out;
    rc = 0;
out:
    if (kp != NULL)
        explicit_bzero(kp, kl);
    EVP_PKEY_free(key);
    X509_free(ca);
    return rc;
}

int
egress_ca_ensure(const char *data_dir, struct err **errp)
{
    cleanup_free char *dir = xasprintf("%s/ca", data_dir);
    cleanup_free char *key = xasprintf("%s/ca.key", dir);
    cleanup_free char *bundle = NULL;
    cleanup_free char *sys = NULL;
    cleanup_free char *ca = NULL;
    size_t syslen = 0, calen = 0;
    struct stat st;

    if (util_mkdir_p(dir, 0700, errp) < 0)
        return err_wrap(errp, "egress CA");
    if (stat(key, &st) < 0 && make_ca(dir, errp) < 0)
        return err_wrap(errp, "egress CA");
    /* The trust bundle sandboxes get: the system's CAs and this installation's. */
    if (util_read_file_at(AT_FDCWD, SYSTEM_BUNDLE, 16u << 20, &sys, &syslen, NULL) < 0)
        sys = xstrdup(""), syslen = 0;
    {
        cleanup_free char *cap = xasprintf("%s/ca.pem", dir);
        if (util_read_file_at(AT_FDCWD, cap, 1u << 20, &ca, &calen, errp) < 0)
            return err_wrap(errp, "egress CA");
    }
    bundle = xasprintf("%s%s%s", sys, syslen > 0 && sys[syslen - 1] != '\n' ? "\n" : "", ca);
    return write_file(dir, "bundle.pem", bundle, strlen(bundle), 0644, errp);
}

static EVP_PKEY *
load_key(const char *path)
{
    FILE *f = fopen(path, "re");
    EVP_PKEY *k;

    if (f == NULL)
        return NULL;
    k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    return k;
}

static X509 *
load_cert(const char *path)
{
    FILE *f = fopen(path, "re");
    X509 *x;

    if (f == NULL)
        return NULL;
    x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    return x;
}

int
egress_tls_new(const char *data_dir, const char *upstream_ca, struct egress_tls **out,
               struct err **errp)
{
    struct egress_tls *t = xcalloc(1, sizeof(*t));
    cleanup_free char *kp = xasprintf("%s/ca/ca.key", data_dir);
    cleanup_free char *cp = xasprintf("%s/ca/ca.pem", data_dir);

    t->ca_key = load_key(kp);
    t->ca = load_cert(cp);
    t->leaf_key = EVP_EC_gen("P-256");
    t->server = SSL_CTX_new(TLS_server_method());
    t->client = SSL_CTX_new(TLS_client_method());
    if (t->ca_key == NULL || t->ca == NULL || t->leaf_key == NULL || t->server == NULL ||
        t->client == NULL) {
        ssl_err(errp, "egress TLS");
        egress_tls_free(t);
        return -1;
    }
    SSL_CTX_set_min_proto_version(t->server, TLS1_2_VERSION);
    /* One request per intercepted tunnel: session tickets would only cost bytes and CPU. */
    SSL_CTX_set_num_tickets(t->server, 0);
    SSL_CTX_set_session_cache_mode(t->server, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_min_proto_version(t->client, TLS1_2_VERSION);
    SSL_CTX_set_verify(t->client, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_load_verify_locations(t->client, SYSTEM_BUNDLE, NULL) != 1)
        ERR_clear_error(); /* a machine without the bundle verifies against the extra CA only */
    if (upstream_ca != NULL && SSL_CTX_load_verify_locations(t->client, upstream_ca, NULL) != 1) {
        ssl_err(errp, "--egress-upstream-ca");
        egress_tls_free(t);
        return -1;
    }
    /* HTTP/1.1 only inside the tunnel: the proxy parses what it forwards. */
    {
        static const unsigned char alpn[] = "\x08http/1.1";
        SSL_CTX_set_alpn_protos(t->client, alpn, sizeof(alpn) - 1);
    }
    *out = t;
    return 0;
}

void
egress_tls_free(struct egress_tls *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < LEAF_CACHE; i++)
        X509_free(t->cache[i].cert);
    X509_free(t->ca);
    EVP_PKEY_free(t->ca_key);
    EVP_PKEY_free(t->leaf_key);
    SSL_CTX_free(t->server);
    SSL_CTX_free(t->client);
    free(t);
}

/*
 * A leaf for host at time now: from the cache while it has LEAF_REUSE left to run, else newly
 * minted into host's slot or the least recently used one. The cache owns the certificate; an SSL
 * that uses it holds its own reference, so replacing a slot never pulls one from a handshake.
 */
X509 *
egress_tls_leaf(struct egress_tls *t, const char *host, bool is_ip, time_t now)
{
    struct leaf *slot = &t->cache[0];
    X509 *x;
    X509_NAME *name;
    char san[300];

    for (size_t i = 0; i < LEAF_CACHE; i++) {
        struct leaf *l = &t->cache[i];
        if (l->cert != NULL && strcmp(l->host, host) == 0) {
            /* A clock set back past minting would make the leaf not yet valid: mint again. */
            if (now >= l->minted && now - l->minted < LEAF_REUSE) {
                l->used = ++t->tick;
                return l->cert;
            }
            slot = l;
            break;
        }
        if (l->used < slot->used)
            slot = l;
    }
    x = X509_new();
    if (x == NULL)
        return NULL;
    X509_set_version(x, 2);
    random_serial(x);
    if (X509_time_adj_ex(X509_getm_notBefore(x), 0, -3600, &now) == NULL ||
        X509_time_adj_ex(X509_getm_notAfter(x), 0, LEAF_VALID, &now) == NULL) {
        ERR_clear_error();
        X509_free(x);
        return NULL;
    }
    X509_set_pubkey(x, t->leaf_key);
    name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)host, -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(t->ca));
    if (is_ip) {
        char ip[64];
        size_t n = strlen(host);
        snprintf(ip, sizeof(ip), "%.*s", host[0] == '[' ? (int)n - 2 : (int)n,
                 host[0] == '[' ? host + 1 : host);
        snprintf(san, sizeof(san), "IP:%s", ip);
    } else {
        snprintf(san, sizeof(san), "DNS:%s", host);
    }
    if (add_ext(x, t->ca, NID_basic_constraints, "critical,CA:FALSE") < 0 ||
        add_ext(x, t->ca, NID_key_usage, "critical,digitalSignature,keyEncipherment") < 0 ||
        add_ext(x, t->ca, NID_ext_key_usage, "serverAuth") < 0 ||
        add_ext(x, t->ca, NID_subject_alt_name, san) < 0 ||
        add_ext(x, t->ca, NID_authority_key_identifier, "keyid:always") < 0 ||
        X509_sign(x, t->ca_key, EVP_sha256()) == 0) {
        ERR_clear_error();
        X509_free(x);
        return NULL;
    }
    X509_free(slot->cert);
    snprintf(slot->host, sizeof(slot->host), "%s", host);
    slot->cert = x;
    slot->used = ++t->tick;
    slot->minted = now;
    return x;
}

SSL *
egress_tls_accept_ssl(struct egress_tls *t, const char *host, bool is_ip)
{
    X509 *leaf = egress_tls_leaf(t, host, is_ip, time(NULL));
    SSL *ssl;

    if (leaf == NULL)
        return NULL;
    ssl = SSL_new(t->server);
    if (ssl == NULL)
        return NULL;
    if (SSL_use_certificate(ssl, leaf) != 1 || SSL_use_PrivateKey(ssl, t->leaf_key) != 1) {
        SSL_free(ssl);
        ERR_clear_error();
        return NULL;
    }
    return ssl;
}

SSL *
egress_tls_connect_ssl(struct egress_tls *t, const char *host, bool is_ip)
{
    SSL *ssl = SSL_new(t->client);

    if (ssl == NULL)
        return NULL;
    if (!is_ip) {
        /* The macro casts away const; a copy keeps the warning honest. */
        char name[256];
        snprintf(name, sizeof(name), "%s", host);
        SSL_set_tlsext_host_name(ssl, name);
    }
    /* The upstream must prove it is host: name (or address) checked, chain verified. */
    if (is_ip) {
        char ip[64];
        size_t n = strlen(host);
        snprintf(ip, sizeof(ip), "%.*s", host[0] == '[' ? (int)n - 2 : (int)n,
                 host[0] == '[' ? host + 1 : host);
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), ip);
    } else {
        SSL_set1_host(ssl, host);
    }
    return ssl;
}

SSL_CTX *
egress_tls_server_ctx(struct egress_tls *t)
{
    return t->server;
}
