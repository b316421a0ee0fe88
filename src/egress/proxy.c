/*
 * The egress proxy: one libevent loop on a thread of its own, one listener per environment
 * (created inside the sandbox's network namespace, so the listener names the environment and
 * nothing the sandbox says is trusted), explicit-proxy HTTP/1.1: CONNECT tunnels and
 * absolute-form forwarding.
 *
 * A connection's life: read the request head (capped, under a deadline), parse it strictly
 * into one canonical destination, decide by the environment's policy, resolve the name here
 * (operator overrides first, then DNS), classify every address and dial only a vetted one,
 * then relay. A denial is a 403 whose body names the destination, the environment and the
 * reason, and the connection is closed with nothing forwarded. Every decision becomes one
 * audit record when the connection ends.
 *
 * Forwarded plain HTTP requests go upstream in origin form with hop-by-hop and proxy headers
 * removed and "Connection: close"; request bodies must have a Content-Length (chunked request
 * bodies and ambiguous framing are refused).
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sockios.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <event2/util.h>

#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include "egress_int.h"
#include "env/env.h"
#include "store/store.h"

#define RELAY_HIGH (1u << 20) /* stop reading a side while the other has this much queued */
#define HEADERS_MAX 100
#define AUDIT_DRAIN_MS 5000 /* at shutdown, how long the audit writer may wait for the database */

/*
 * A policy shared by a listener and the connections it accepted: a changed policy (a new
 * token, a changed credential) replaces the listener's, while connections in flight finish
 * under the one they began with. The listening socket never changes.
 */
struct pref {
    struct egress_policy *p;
    int refs; /* loop thread only */
};

static struct pref *
pref_new(const struct egress_policy *p)
{
    struct pref *r = xcalloc(1, sizeof(*r));

    r->p = egress_policy_dup(p);
    r->refs = 1;
    return r;
}

static void
pref_unref(struct pref *r)
{
    if (r != NULL && --r->refs == 0) {
        egress_policy_free(r->p);
        free(r);
    }
}

struct listener {
    struct egress *eg;
    char id[40];
    struct sandbox_init init;
    struct pref *pol;
    struct evconnlistener *l;
    int fd;
    unsigned conns;
    int refs; /* the listener list and every connection */
    double tokens;       /* new connections it may open now (a bucket filled at conn_rate/s) */
    int64_t tokens_ms;   /* when the bucket was last filled (monotonic) */
    unsigned unrecorded; /* connections refused over the rate since the last summary record */
    /* The last refusal recorded one by one, and how many identical ones followed it within a
     * second: a sandbox retrying a refused host in a loop costs two rows a second, not one
     * per attempt (audit_repeats()). */
    struct store_egress last_deny;
    int64_t last_deny_ms; /* monotonic; 0: none */
    unsigned repeats;
    struct listener *next;
};

enum conn_state { C_HEAD, C_RESOLVE, C_CONNECT, C_RELAY, C_DONE };

struct conn {
    struct egress *eg;
    struct listener *ls;
    struct pref *pol; /* the policy in force when it was accepted */
    struct bufferevent *cl, *up;
    enum conn_state st;
    bool is_connect;
    bool cl_eof, up_eof;
    char method[16];
    char interaction[40]; /* attributed by a verified tag in Proxy-Authorization, or "" */
    struct egress_dest dest;
    char *path;       /* origin-form target of a forwarded request */
    struct evbuffer *head_out; /* the forwarded request head */
    uint64_t body_left; /* request body bytes still to forward (plain HTTP) */
    uint64_t bytes_up, bytes_down;
    const char *decision;
    char reason[160];
    int64_t start_ms; /* wall clock: the record's time */
    int64_t last_ms;  /* monotonic, as every other time of the loop: last traffic */
    int64_t head_ms;  /* monotonic: when the head now awaited began (the connection, or TLS) */
    struct evdns_getaddrinfo_request *dns;
    struct event *flush;    /* while a closing connection's last bytes drain (TLS) */
    int64_t flush_deadline; /* monotonic: dropped unless the client reads by then */
    size_t flush_left;      /* bytes still queued for it when it last read */
    unsigned flush_ms;      /* the TLS poll's interval: 2 ms, backing off while it is stalled */
    const struct egress_rule *rule; /* the rule that allowed it (NULL: open policy) */
    bool mitm;                      /* TLS terminated here to set the rule's headers */
    struct sockaddr_storage addr;   /* the vetted upstream address */
    socklen_t addrlen;
    struct tunnel *t;               /* a plain CONNECT tunnel, relayed by tunnel_move() */
    /* An intercepted tunnel keeps both connections across requests: the response is framed
     * (its length known from its head) so the next request can follow. */
    struct {
        enum {
            RS_HEAD,
            RS_LENGTH,
            RS_CHUNK_SIZE,
            RS_CHUNK_DATA,
            RS_CHUNK_END,
            RS_TRAILER,
            RS_CLOSE,
            RS_DONE } st;
        uint64_t left;
        size_t scanned;   /* bytes of the head searched for its end so far */
        bool close_after; /* the response or request said Connection: close (or HTTP/1.0) */
        bool head_req;
    } resp;
    bool up_ready; /* the upstream TLS connection is up and idle between responses */
    unsigned served; /* requests answered on this intercepted tunnel */
    bool req_close; /* the current inner request asked for Connection: close */
    size_t head_scanned; /* bytes of the request head searched for its end so far */
    bool revised;        /* the policy changed while a response was relayed: end after it */
    bool unrecorded;     /* refused over the environment's rate: counted, not recorded alone */
    uint64_t audit_key;  /* its record, written when it was allowed (audit.c); 0 none yet */
    struct conn *prev, *next;
};

enum cmd_kind { CMD_ATTACH, CMD_DETACH, CMD_UPDATE, CMD_STOP };

struct cmd {
    enum cmd_kind kind;
    struct listener *ls; /* attach */
    char id[40];         /* detach, update */
    struct pref *pol;    /* update */
    struct cmd *next;
};

/*
 * This host's own addresses but loopback, kept current by a netlink watch (and the sweep);
 * read by any thread through egress_vet(). Apart from struct egress so that a const egress
 * can still take the lock, which also guards cfg.self (egress_set_self()).
 */
struct local_addrs {
    pthread_mutex_t lock;
    struct sockaddr_storage *a;
    size_t n;
    int64_t ms; /* when the list was last read (monotonic) */
};

/* The ids with listeners, as the command queue will leave them (the caller's view). */
struct attached {
    char id[40];
    struct sandbox_init init;
    uint64_t print; /* the policy's fingerprint: a changed policy gets a new listener */
    const struct listener *ls; /* which attach made it (compared, never followed) */
};

struct egress {
    struct egress_config cfg;
    struct event_base *base;
    struct evdns_base *dns;
    struct event *wake, *sweep;
    pthread_t thread;
    pthread_mutex_t lock; /* cmds, and the id list for egress_attached() */
    struct cmd *cmds;
    struct listener *listeners; /* loop thread only */
    struct conn conns;          /* list head, loop thread only */
    struct egress_audit *audit; /* the audit trail's writer (audit.c) */
    struct egress_tls *tls;
    unsigned char *relay_buf; /* tunnels' copy buffer, loop thread only (TUNNEL_CHUNK) */
    char *data_dir;           /* for the attribution key (env_proxy_tag_ok()) */
    struct local_addrs *local; /* this host's addresses, kept current by a netlink watch */
    /*
     * The listeners as callers see them. att_lock is held across a whole attach or detach:
     * the look-up, the new listening socket, the update of att and the command pushed. Two
     * threads attaching the same environment at once (a start hook and the reconcile pass)
     * would otherwise both find nothing, and both bind (the listener is SO_REUSEPORT): two
     * listeners, of which a policy update reaches only the first, so a revoked credential
     * stayed injected on the other's connections. It also keeps the commands in the order att
     * records: two updates pushed the other way round would leave the loop with the older
     * policy while att says the newer one.
     */
    pthread_mutex_t att_lock;
    struct attached *att;
    size_t natt;
    int nl_fd;
    struct event *nl_ev;
};

/* --------------------------------------------------------------- helpers */

static void
record(struct egress *eg, const struct store_egress *r)
{
    egress_audit_close(eg->audit, 0, r);
}

/*
 * One record for the connections of ls refused over its rate since the last one: a sandbox
 * that opens connections in a loop costs the audit a row a second, not one per attempt. Only
 * refusals over the rate are summed up; whatever was let through has a record of its own.
 */
static void
audit_unrecorded(struct listener *ls)
{
    struct store_egress r;

    if (ls->unrecorded == 0 || ls->eg->audit == NULL)
        return;
    memset(&r, 0, sizeof(r));
    snprintf(r.env_id, sizeof(r.env_id), "%s", ls->id);
    r.ts_ms = util_now_ms();
    snprintf(r.decision, sizeof(r.decision), "deny");
    snprintf(r.reason, sizeof(r.reason),
             "%u more connections refused (429), not recorded one by one: over %u new "
             "connections a second",
             ls->unrecorded, ls->eg->cfg.conn_rate);
    record(ls->eg, &r);
    ls->unrecorded = 0;
}

/* One record for the refusals identical to ls->last_deny that followed it. */
static void
audit_repeats(struct listener *ls)
{
    struct store_egress r;

    if (ls->repeats == 0 || ls->eg->audit == NULL)
        return;
    r = ls->last_deny;
    r.ts_ms = util_now_ms();
    snprintf(r.reason, sizeof(r.reason),
             "%u more refused like the record before, within a second "
             "of it: %.80s",
             ls->repeats, ls->last_deny.reason);
    record(ls->eg, &r);
    ls->repeats = 0;
}

static void
listener_unref(struct listener *ls)
{
    if (--ls->refs > 0)
        return;
    audit_repeats(ls);
    audit_unrecorded(ls);
    if (ls->l != NULL)
        evconnlistener_free(ls->l); /* closes the fd */
    else if (ls->fd >= 0)
        close(ls->fd);
    pref_unref(ls->pol);
    free(ls);
}

/* The connection's record as it stands. */
static void
fill_record(const struct conn *c, struct store_egress *r)
{
    memset(r, 0, sizeof(*r));
    snprintf(r->env_id, sizeof(r->env_id), "%s", c->ls->id);
    snprintf(r->interaction_id, sizeof(r->interaction_id), "%s", c->interaction);
    r->ts_ms = c->start_ms;
    snprintf(r->host, sizeof(r->host), "%s", c->dest.host);
    r->port = c->dest.port;
    snprintf(r->method, sizeof(r->method), "%s", c->method);
    snprintf(r->decision, sizeof(r->decision), "%s", c->decision);
    snprintf(r->reason, sizeof(r->reason), "%s", c->reason);
    /* A record is text a terminal shows and JSON carries: whatever a reason quoted from a
     * client, no control character or byte past ASCII gets into it. */
    util_printable(r->reason);
    r->bytes_up = c->bytes_up;
    r->bytes_down = c->bytes_down;
}

/* The connection's record, at its end: completes the one written when it was allowed. */
static void
audit(struct conn *c)
{
    struct store_egress r;

    if (c->decision == NULL || c->eg->audit == NULL)
        return;
    if (c->unrecorded) {
        c->ls->unrecorded++;
        return;
    }
    fill_record(c, &r);
    if (c->audit_key == 0 && strcmp(r.decision, "deny") == 0) {
        struct listener *ls = c->ls;
        int64_t now = util_mono_ms();
        if (ls->last_deny_ms != 0 && now - ls->last_deny_ms < 1000 &&
            strcmp(r.host, ls->last_deny.host) == 0 && r.port == ls->last_deny.port &&
            strcmp(r.method, ls->last_deny.method) == 0 &&
            strcmp(r.reason, ls->last_deny.reason) == 0 &&
            strcmp(r.interaction_id, ls->last_deny.interaction_id) == 0) {
            ls->repeats++;
            return;
        }
        audit_repeats(ls);
        ls->last_deny = r;
        ls->last_deny_ms = now;
    }
    egress_audit_close(c->eg->audit, c->audit_key, &r);
}

static void tunnel_free(struct tunnel *t);

static void
conn_free(struct conn *c)
{
    audit(c);
    tunnel_free(c->t);
    if (c->dns != NULL)
        evdns_getaddrinfo_cancel(c->dns);
    if (c->cl != NULL)
        bufferevent_free(c->cl);
    if (c->up != NULL)
        bufferevent_free(c->up);
    if (c->head_out != NULL)
        evbuffer_free(c->head_out);
    if (c->flush != NULL)
        event_free(c->flush);
    c->prev->next = c->next;
    c->next->prev = c->prev;
    c->ls->conns--;
    pref_unref(c->pol);
    listener_unref(c->ls);
    free(c->path);
    free(c);
}

/* Bytes still queued for the client, including under a TLS filter (already encrypted). */
static size_t
pending_out(struct conn *c)
{
    struct bufferevent *under = bufferevent_get_underlying(c->cl);

    return evbuffer_get_length(bufferevent_get_output(c->cl)) +
           (under != NULL ? evbuffer_get_length(bufferevent_get_output(under)) : 0);
}

static struct timeval ms_tv(int64_t ms);

/*
 * A closing connection (C_DONE) is freed once what is queued for the client has been written, or
 * when the client has read nothing of it for the idle timeout: one that stops reading must not
 * hold its socket, its buffers and a place under the environment's cap forever. Called when the
 * output drains, by the TLS poll, and by the sweep (a plain socket's stall calls nobody).
 */
static bool
flush_check(struct conn *c)
{
    size_t left = pending_out(c);
    int64_t now = util_mono_ms();

    if (left < c->flush_left) {
        c->flush_left = left;
        c->flush_deadline = now + c->eg->cfg.idle_timeout_ms;
    }
    if (left != 0 && now <= c->flush_deadline)
        return false;
    if (left != 0 && strlen(c->reason) + 40 < sizeof(c->reason))
        snprintf(c->reason + strlen(c->reason), sizeof(c->reason) - strlen(c->reason),
                 "%sthe client stopped reading", c->reason[0] != '\0' ? "; " : "");
    conn_free(c);
    return true;
}

static void
close_after_flush(struct bufferevent *bev, void *arg)
{
    (void)bev;
    flush_check(arg);
}

/* The client went away (or failed) while its last bytes were queued: nothing left to do. */
static void
flush_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    (void)what;
    conn_free(arg);
}

static void
flush_tick(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    size_t before = c->flush_left;
    struct timeval tv;

    (void)fd;
    (void)what;
    if (flush_check(c))
        return;
    /* Poll again soon while it drains, less and less often while it does not. */
    if (c->flush_left < before)
        c->flush_ms = 2;
    else if (c->flush_ms < 500)
        c->flush_ms *= 2;
    tv = ms_tv(c->flush_ms);
    event_add(c->flush, &tv);
}

static void
finish(struct conn *c)
{
    struct timeval tick = {0, 2 * 1000};

    c->st = C_DONE;
    if (c->t != NULL) {
        conn_free(c); /* a tunnel never holds bytes of its own */
        return;
    }
    if (c->up != NULL) {
        bufferevent_free(c->up);
        c->up = NULL;
    }
    bufferevent_disable(c->cl, EV_READ);
    c->flush_left = pending_out(c);
    if (c->flush_left == 0) {
        conn_free(c);
        return;
    }
    c->flush_deadline = util_mono_ms() + c->eg->cfg.idle_timeout_ms;
    bufferevent_setcb(c->cl, NULL, close_after_flush, flush_event, c);
    bufferevent_enable(c->cl, EV_WRITE);
    /* A TLS filter drains into its socket's own buffer, whose emptying calls nobody here. */
    if (bufferevent_get_underlying(c->cl) != NULL && c->flush == NULL) {
        c->flush_ms = 2;
        c->flush = event_new(c->eg->base, -1, 0, flush_tick, c);
        event_add(c->flush, &tick);
    }
}

/* Answers the client with an error and closes; nothing was or will be forwarded. */
static void
refuse(struct conn *c, int status, const char *decision, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void
refuse(struct conn *c, int status, const char *decision, const char *fmt, ...)
{
    va_list ap;
    char reason[160];
    const char *text = status == 403   ? "Forbidden"
                       : status == 400 ? "Bad Request"
                       : status == 431 ? "Request Header Fields Too Large"
                       : status == 429 ? "Too Many Requests"
                       : status == 502 ? "Bad Gateway"
                       : status == 503 ? "Service Unavailable"
                       : status == 504 ? "Gateway Timeout"
                                       : "Error";
    struct evbuffer *out = bufferevent_get_output(c->cl);
    char body[512];
    int n;

    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    snprintf(c->reason, sizeof(c->reason), "%s", reason);
    c->decision = decision;
    n = snprintf(body, sizeof(body), "paddock egress: %s%s%s%u denied for environment %s: %s\n",
                 c->dest.host[0] ? "" : "(unparsed request)", c->dest.host,
                 c->dest.host[0] ? ":" : "", c->dest.host[0] ? c->dest.port : 0u, c->ls->id,
                 reason);
    if (status != 403)
        n = snprintf(body, sizeof(body), "paddock egress (environment %s): %s\n", c->ls->id,
                     reason);
    evbuffer_add_printf(out,
                        "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                        "Content-Length: %d\r\nConnection: close\r\n"
                        "X-Paddock-Egress: %s\r\n\r\n",
                        status, text, n, decision);
    evbuffer_add(out, body, (size_t)n);
    finish(c);
}

static void
touch(struct conn *c)
{
    c->last_ms = util_mono_ms();
}

static struct timeval
ms_tv(int64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};

    return tv;
}

/*
 * Small writes go out at once: with Nagle, an intercepted response queued behind the TLS
 * session tickets waited for the client's delayed ACK (about 20 ms).
 */
static void
nodelay(evutil_socket_t fd)
{
    int one = 1;

    if (fd >= 0)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* ----------------------------------------------------------------- relay */

static void relay_read(struct bufferevent *bev, void *arg);
static void resp_read(struct bufferevent *bev, void *arg);

/* The side that was paused for backpressure may read again once the other drained. */
static void
relay_drained(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    struct bufferevent *other = bev == c->cl ? c->up : c->cl;

    if (c->st == C_DONE)
        return;
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
        /* The peer of an ended side has everything: finish the half-close. */
        if ((bev == c->cl && c->up_eof) || (bev == c->up && c->cl_eof && c->up_eof)) {
            finish(c);
            return;
        }
        if (bev == c->up && c->cl_eof)
            shutdown(bufferevent_getfd(c->up), SHUT_WR);
    }
    if (other != NULL && !(other == c->cl ? c->cl_eof : c->up_eof) &&
        !(other == c->cl && !c->is_connect && c->body_left == 0))
        bufferevent_enable(other, EV_READ);
}

static void
relay_read(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    bool from_client = bev == c->cl;
    struct bufferevent *to = from_client ? c->up : c->cl;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t n = evbuffer_get_length(in);

    touch(c);
    if (from_client && !c->is_connect) {
        /* A request's body is exactly Content-Length bytes. What follows it is the next
         * request, pipelined: inside interception it waits, unread, for this one's answer
         * (resp_done); a forwarded request is its connection's only one. */
        if (n > c->body_left)
            n = (size_t)c->body_left;
        evbuffer_remove_buffer(in, bufferevent_get_output(to), n);
        c->body_left -= n;
        if (!c->mitm)
            evbuffer_drain(in, evbuffer_get_length(in));
        if (c->body_left == 0)
            bufferevent_disable(bev, EV_READ);
    } else {
        evbuffer_add_buffer(bufferevent_get_output(to), in);
    }
    if (from_client)
        c->bytes_up += n;
    else
        c->bytes_down += n;
    if (evbuffer_get_length(bufferevent_get_output(to)) > RELAY_HIGH)
        bufferevent_disable(bev, EV_READ);
}

/* An intercepted tunnel's idle upstream is gone or unusable: the next request dials anew. */
static void
drop_upstream(struct conn *c)
{
    bufferevent_free(c->up);
    c->up = NULL;
    c->up_ready = false;
    c->up_eof = false;
}

static void
relay_event(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;
    bool from_client = bev == c->cl;

    if (what & BEV_EVENT_EOF) {
        if (from_client) {
            c->cl_eof = true;
            bufferevent_disable(bev, EV_READ);
            if (c->up != NULL &&
                evbuffer_get_length(bufferevent_get_output(c->up)) == 0)
                shutdown(bufferevent_getfd(c->up), SHUT_WR);
            if (c->up_eof)
                finish(c);
        } else if (c->mitm && c->st == C_HEAD) {
            /* The upstream closed an idle keep-alive connection: the next request dials. */
            drop_upstream(c);
        } else {
            c->up_eof = true;
            if (c->mitm) {
                /* Frames what is left and then ends or goes on; c may be gone after. */
                resp_read(bev, c);
                return;
            }
            relay_read(bev, c); /* whatever was still buffered */
            if (c->st != C_DONE)
                finish(c);
        }
        return;
    }
    if (what & (BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
        if (!from_client && c->mitm && c->st == C_HEAD) {
            drop_upstream(c);
            return;
        }
        if (from_client) {
            if (c->up != NULL) {
                bufferevent_free(c->up);
                c->up = NULL;
            }
            conn_free(c);
        } else {
            finish(c);
        }
    }
}

/*
 * A plain CONNECT tunnel copies bytes between the two sockets through one buffer the loop
 * thread owns. Before each read it asks the far socket how much room it has (SO_SNDBUF less
 * SIOCOUTQ) and reads no more than that, so what it reads is normally all sent at once. The
 * rare rest (the kernel counts buffer overhead the estimate does not) is kept for that side
 * alone, and its socket is not read again until the far one has taken it. A far socket
 * without room is waited for, unread: the bytes stay in the near socket's receive buffer and
 * TCP's window pushes back on the sender. So a slow end costs the proxy its sockets' kernel
 * buffers, not memory of its own. An end that closes is passed on as a half-close; an error
 * or a reset on one side is passed on as a reset, so a cut-off transfer never looks complete.
 * Urgent data is kept in line (SO_OOBINLINE): the stream arrives byte for byte.
 *
 * Reading consumes as it goes. Peeking first (and consuming only what was sent) needs no rest
 * buffer, but the kernel walks the receive queue from its head for every segment it peeks
 * at, quadratic in the segments queued behind a stalled far end, which a sandbox can make
 * small and many.
 *
 * Copying beat splice(2) here once the sandbox's loopback takes large segments (spawn.c):
 * spliced data goes out as one 4 KiB page per fragment, which keeps segments small and makes
 * the receiver's copy dearer. Through paddock (bench/egress_bench.py, medians of interleaved
 * runs) splice gave 0.40x direct, copying 0.55x through a 1 MiB buffer and 0.66x through
 * 256 KiB, which also cost the proxy the least CPU per byte (0.20 s/GB; bench/README.md).
 */
#define TUNNEL_CHUNK (256u << 10) /* bytes per read */
#define TUNNEL_BURST (4u << 20) /* bytes moved per wake-up before others get a turn */

struct tunnel;

struct side {
    struct tunnel *t;
    int idx;
    int fd;
    bool eof;            /* fd sent its last byte (and the close was passed on) */
    bool blocked;        /* waiting for the other side to take more: rd off, wr on */
    unsigned char *rest; /* read from fd, not yet taken by the other side */
    size_t rest_off, rest_len;
    struct event *rd;    /* fd readable */
    struct event *wr;    /* the other side writable again */
};

struct tunnel {
    struct conn *c;
    bool abort; /* ended by an error: reset both sockets rather than close them cleanly */
    struct side s[2]; /* [0] client, [1] upstream */
};

static void
tunnel_free(struct tunnel *t)
{
    if (t == NULL)
        return;
    for (int i = 0; i < 2; i++) {
        if (t->s[i].rd != NULL)
            event_free(t->s[i].rd);
        if (t->s[i].wr != NULL)
            event_free(t->s[i].wr);
        if (t->s[i].fd >= 0) {
            if (t->abort) {
                struct linger lg = {1, 0}; /* close sends RST */
                setsockopt(t->s[i].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
            }
            close(t->s[i].fd);
        }
        free(t->s[i].rest);
    }
    free(t);
}

/* Sends up to len bytes to fd without blocking: how many went, 0 if none fit, -1 on error. */
static ssize_t
send_some(int fd, const unsigned char *p, size_t len)
{
    ssize_t w;

    do
        w = send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (w < 0 && errno == EINTR);
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return 0;
    return w;
}

/* How much the socket fd would take now, by its send buffer's size and what it holds. */
static size_t
send_room(int fd)
{
    int sndbuf, outq;
    socklen_t sl = sizeof(sndbuf);

    if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, &sl) < 0 || ioctl(fd, SIOCOUTQ, &outq) < 0)
        return TUNNEL_CHUNK; /* no estimate: a read's rest is kept all the same */
    return sndbuf > outq ? (size_t)(sndbuf - outq) : 0;
}

static void
side_block(struct side *s)
{
    if (!s->blocked) {
        s->blocked = true;
        event_del(s->rd);
        event_add(s->wr, NULL);
    }
}

static void
tunnel_count(struct tunnel *t, int i, size_t n)
{
    if (i == 0)
        t->c->bytes_up += n;
    else
        t->c->bytes_down += n;
}

/* Moves what side i's socket holds to the other side; false when the tunnel must end. */
static bool
tunnel_move(struct tunnel *t, int i)
{
    struct side *s = &t->s[i], *o = &t->s[1 - i];
    struct egress *eg = t->c->eg;
    size_t moved = 0;
    ssize_t n, w;

    if (s->rest_len > 0) {
        if ((w = send_some(o->fd, s->rest + s->rest_off, s->rest_len)) < 0)
            return false;
        tunnel_count(t, i, (size_t)w);
        s->rest_off += (size_t)w;
        s->rest_len -= (size_t)w;
        if (s->rest_len > 0)
            return true; /* still blocked */
        free(s->rest);
        s->rest = NULL;
        s->rest_off = 0;
    }
    if (eg->relay_buf == NULL)
        eg->relay_buf = xmalloc(TUNNEL_CHUNK);
    while (moved < TUNNEL_BURST) {
        size_t room = send_room(o->fd);
        if (room == 0) {
            side_block(s); /* read nothing until the far side has room */
            return true;
        }
        if (room > TUNNEL_CHUNK)
            room = TUNNEL_CHUNK;
        do
            n = recv(s->fd, eg->relay_buf, room, MSG_DONTWAIT);
        while (n < 0 && errno == EINTR);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n < 0)
            return false;
        if (n == 0) {
            s->eof = true;
            event_del(s->rd);
            shutdown(o->fd, SHUT_WR); /* everything passed on: pass the close on too */
            break;
        }
        if ((w = send_some(o->fd, eg->relay_buf, (size_t)n)) < 0)
            return false;
        tunnel_count(t, i, (size_t)w);
        moved += (size_t)w;
        if (w < n) { /* keep the rest; read no more from here until it is taken */
            s->rest_len = (size_t)(n - w);
            s->rest = xmalloc(s->rest_len);
            memcpy(s->rest, eg->relay_buf + w, s->rest_len);
            side_block(s);
            return true;
        }
        if ((size_t)n < room)
            break; /* most likely all there was; level-triggered polling calls again if not */
    }
    if (s->blocked) {
        s->blocked = false;
        event_del(s->wr);
        if (!s->eof)
            event_add(s->rd, NULL);
    }
    return true;
}

/* Side i's socket is readable, or (blocked) the other side writable again. */
static void
tunnel_ready(evutil_socket_t fd, short what, void *arg)
{
    struct side *s = arg;
    struct tunnel *t = s->t;
    struct conn *c = t->c;

    (void)fd;
    (void)what;
    touch(c);
    if (!tunnel_move(t, s->idx))
        t->abort = true;
    else if (!(t->s[0].eof && t->s[1].eof))
        return;
    c->st = C_DONE;
    conn_free(c);
}

/*
 * Turns an allowed CONNECT into a tunnel: answers 200, passes on what the client
 * sent behind its head, and takes the sockets over from their bufferevents.
 */
static bool
start_tunnel(struct conn *c)
{
    static const char ok[] = "HTTP/1.1 200 Connection established\r\n\r\n";
    struct evbuffer *cin = bufferevent_get_input(c->cl);
    struct tunnel *t = xcalloc(1, sizeof(*t));
    size_t early = evbuffer_get_length(cin);
    int fds[2] = {dup(bufferevent_getfd(c->cl)), dup(bufferevent_getfd(c->up))};

    for (int i = 0; i < 2; i++) {
        t->s[i].fd = fds[i];
        t->s[i].t = t;
        t->s[i].idx = i;
    }
    t->c = c;
    if (fds[0] < 0 || fds[1] < 0) {
        tunnel_free(t);
        return false;
    }
    for (int i = 0; i < 2; i++) {
        int one = 1;
        fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
        setsockopt(fds[i], SOL_SOCKET, SO_OOBINLINE, &one, sizeof(one));
    }
    /* The answer and the client's early bytes are tiny and the sockets fresh: they go now. */
    if (send(fds[0], ok, sizeof(ok) - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof(ok) - 1)) {
        tunnel_free(t);
        return false;
    }
    if (early > 0) {
        unsigned char *p = evbuffer_pullup(cin, (ssize_t)early);
        if (send(fds[1], p, early, MSG_NOSIGNAL) != (ssize_t)early) {
            tunnel_free(t);
            return false;
        }
        c->bytes_up += early;
    }
    bufferevent_free(c->cl);
    bufferevent_free(c->up);
    c->cl = c->up = NULL;
    c->t = t;
    c->st = C_RELAY;
    touch(c);
    for (int i = 0; i < 2; i++) {
        t->s[i].rd = event_new(c->eg->base, fds[i], EV_READ | EV_PERSIST, tunnel_ready,
                               &t->s[i]);
        t->s[i].wr = event_new(c->eg->base, fds[1 - i], EV_WRITE | EV_PERSIST, tunnel_ready,
                               &t->s[i]);
        event_add(t->s[i].rd, NULL);
    }
    return true;
}

/*
 * Where a head in `in` ends (the "\r\n\r\n"), searching on from where the last search of the
 * same head stopped: a head that arrives a byte at a time costs one pass, not one per byte
 * (32 KiB of it, a byte per read, would be half a billion comparisons on the loop thread).
 * *scanned is reset once the end is found: the head is then taken out.
 */
static struct evbuffer_ptr
head_end(struct evbuffer *in, size_t *scanned)
{
    struct evbuffer_ptr from, end;
    size_t len = evbuffer_get_length(in);

    if (*scanned > len)
        *scanned = 0;
    evbuffer_ptr_set(in, &from, *scanned > 3 ? *scanned - 3 : 0, EVBUFFER_PTR_SET);
    end = evbuffer_search(in, "\r\n\r\n", 4, &from);
    *scanned = end.pos < 0 ? len : 0;
    return end;
}

/* ------------------------------------------------ keep-alive inside interception */

#define RESP_HEAD_MAX (64u * 1024)

static void head_read(struct bufferevent *bev, void *arg);
static void head_event(struct bufferevent *bev, short what, void *arg);

/*
 * The next member of the comma-separated list [*v, end) (RFC 9110 §5.6.1), without the
 * whitespace around it, at *tok for *len bytes; empty members are skipped, as a recipient
 * must. False when none is left.
 */
static bool
list_next(const char **v, const char *end, const char **tok, size_t *len)
{
    while (*v < end) {
        const char *comma = memchr(*v, ',', (size_t)(end - *v));
        const char *a = *v, *b = comma != NULL ? comma : end;
        *v = comma != NULL ? comma + 1 : end;
        while (a < b && (*a == ' ' || *a == '\t'))
            a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
            b--;
        if (b > a) {
            *tok = a;
            *len = (size_t)(b - a);
            return true;
        }
    }
    return false;
}

/* Whether the comma-separated list v[0..n) holds tok (case-insensitive); *last_out (may be
 * NULL) says whether it is the last member. */
static bool
list_has(const char *v, size_t n, const char *tok, bool *last_out)
{
    size_t tl = strlen(tok), ml;
    const char *end = v + n, *m;
    bool found = false, last = false;

    while (list_next(&v, end, &m, &ml)) {
        last = ml == tl && strncasecmp(m, tok, tl) == 0;
        found = found || last;
    }
    if (last_out != NULL)
        *last_out = last;
    return found;
}

/*
 * Parses a response head (NUL-terminated) and decides how its body is framed (RFC 9112 §6.3):
 * chunked only when it is the last transfer coding; any Transfer-Encoding overrides a
 * Content-Length and the connection closes after such a response; a Content-Length that is not
 * one plain number, or a coding other than chunked last, makes the body run to the close.
 */
static void
resp_head(struct conn *c, const char *head, int *status)
{
    const char *line = strstr(head, "\r\n");
    bool chunked = false, have_te = false, have_len = false, bad_len = false;
    uint64_t len = 0;

    *status = 0;
    if (strncmp(head, "HTTP/1.", 7) != 0 || strlen(head) < 12 || !isdigit((unsigned char)head[9]) ||
        !isdigit((unsigned char)head[10]) || !isdigit((unsigned char)head[11]))
        c->resp.close_after = true;
    else {
        *status = (head[9] - '0') * 100 + (head[10] - '0') * 10 + (head[11] - '0');
        if (head[7] == '0')
            c->resp.close_after = true; /* HTTP/1.0 */
    }
    for (; line != NULL && line[2] != '\0'; line = strstr(line + 2, "\r\n")) {
        const char *h = line + 2, *colon = strchr(h, ':');
        const char *eol = strstr(h, "\r\n");
        const char *v;
        size_t nl, vl;
        if (colon == NULL || eol == NULL || colon > eol)
            continue;
        nl = (size_t)(colon - h);
        v = colon + 1;
        vl = (size_t)(eol - v);
        if (nl == 14 && strncasecmp(h, "content-length", 14) == 0) {
            char num[24];
            uint64_t n = 0;
            while (vl > 0 && (*v == ' ' || *v == '\t'))
                v++, vl--;
            while (vl > 0 && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
                vl--;
            while (vl > 1 && *v == '0') /* 1*DIGIT: leading zeros are digits too */
                v++, vl--;
            if (have_len || vl == 0 || vl >= sizeof(num))
                bad_len = true;
            else {
                memcpy(num, v, vl);
                num[vl] = '\0';
                if (util_parse_u64(num, UINT64_MAX / 2, &n, NULL) < 0)
                    bad_len = true;
            }
            have_len = true;
            len = n;
        } else if (nl == 17 && strncasecmp(h, "transfer-encoding", 17) == 0) {
            bool last = false;
            if (have_te) /* codings over several fields: keep it simple, read to the close */
                chunked = false, bad_len = true;
            else
                list_has(v, vl, "chunked", &last), chunked = last;
            have_te = true;
        } else if (nl == 10 && strncasecmp(h, "connection", 10) == 0 &&
                   list_has(v, vl, "close", NULL)) {
            c->resp.close_after = true;
        }
    }
    if (have_te && (have_len || !chunked))
        c->resp.close_after = true; /* ambiguous, or a body that runs to the close */
    if (c->resp.head_req || *status == 204 || *status == 304 || (*status >= 100 && *status < 200))
        c->resp.st = RS_DONE;
    else if (chunked)
        c->resp.st = RS_CHUNK_SIZE;
    else if (!have_te && have_len && !bad_len) {
        c->resp.st = len > 0 ? RS_LENGTH : RS_DONE;
        c->resp.left = len;
    } else {
        c->resp.st = RS_CLOSE; /* no usable length: the body ends with the connection */
        c->resp.close_after = true;
    }
}

/*
 * A chunk-size line (RFC 9112 §7.1): hex digits, then optionally whitespace and a
 * ";"-extension. False for anything else, and for sizes past 2^60 (no sign, no "0x", no
 * leading space: each is a way two parsers disagree on where the body ends).
 */
static bool
chunk_size(const char *line, uint64_t *size)
{
    uint64_t v = 0;
    size_t i = 0;

    for (; isxdigit((unsigned char)line[i]); i++) {
        if (v >> 56 != 0)
            return false;
        v = v * 16 + (uint64_t)(isdigit((unsigned char)line[i])
                                    ? line[i] - '0'
                                    : (tolower((unsigned char)line[i]) - 'a' + 10));
    }
    if (i == 0)
        return false;
    while (line[i] == ' ' || line[i] == '\t')
        i++;
    if (line[i] != '\0' && line[i] != ';')
        return false;
    *size = v;
    return true;
}

static void end_revised(struct conn *c, const char *why);

/* One response relayed: go on with the client's next request, or end. */
static void
resp_done(struct conn *c)
{
    struct timeval tv = ms_tv(c->eg->cfg.header_timeout_ms);

    /* A response that came before all of its request's body (an early 401, 413...) leaves the
     * rest of that body on the way: what follows from the client is not a new request. */
    if (c->revised) {
        end_revised(c, NULL); /* the policy changed while the response was relayed */
        return;
    }
    if (c->resp.close_after || c->req_close || c->cl_eof || c->body_left > 0) {
        finish(c);
        return;
    }
    c->up_ready = true;
    /* Bytes past the end of the response are no answer to anything: never keep them for the
     * next request. An upstream that closed with its response is not kept either. */
    if (c->up_eof || evbuffer_get_length(bufferevent_get_input(c->up)) > 0)
        drop_upstream(c);
    c->served++;
    c->st = C_HEAD;
    c->head_ms = util_mono_ms();
    c->body_left = 0;
    free(c->path);
    c->path = NULL;
    bufferevent_setcb(c->cl, head_read, NULL, head_event, c);
    bufferevent_set_timeouts(c->cl, &tv, NULL);
    bufferevent_enable(c->cl, EV_READ);
    if (evbuffer_get_length(bufferevent_get_input(c->cl)) > 0)
        head_read(c->cl, c); /* the next request was already there */
}

/* The upstream's answer to an intercepted request, relayed as it is framed. */
static void
resp_read(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    struct evbuffer *out = bufferevent_get_output(c->cl);

    if (c->resp.st == RS_DONE) {
        /* Between responses the upstream has nothing to say; one that talks is dropped (and
         * never buffered without bound). */
        if (c->st == C_HEAD && c->up == bev)
            drop_upstream(c);
        return;
    }
    touch(c);
    while (evbuffer_get_length(in) > 0 && c->resp.st != RS_DONE) {
        size_t avail = evbuffer_get_length(in);
        if (c->resp.st == RS_HEAD) {
            struct evbuffer_ptr end = head_end(in, &c->resp.scanned);
            char *head;
            int status;
            if (end.pos < 0) {
                if (avail > RESP_HEAD_MAX) {
                    finish(c);
                    return;
                }
                break;
            }
            head = xmalloc((size_t)end.pos + 5);
            evbuffer_remove(in, head, (size_t)end.pos + 4);
            head[end.pos + 4] = '\0';
            resp_head(c, head, &status);
            if (status >= 200 &&
                (c->resp.close_after || c->req_close || c->revised || c->body_left > 0)) {
                /* The tunnel ends after this response: the client hears it from the head,
                 * rather than racing the close with its next request. */
                evbuffer_add(out, head, (size_t)end.pos + 2);
                evbuffer_add_printf(out, "Connection: close\r\n\r\n");
                c->bytes_down += 19;
            } else {
                evbuffer_add(out, head, (size_t)end.pos + 4);
            }
            c->bytes_down += (uint64_t)end.pos + 4;
            free(head);
            if (status >= 100 && status < 200 && status != 101)
                c->resp.st = RS_HEAD; /* an interim answer: the real one follows */
            else if (status == 101)
                c->resp.st = RS_CLOSE, c->resp.close_after = true;
        } else if (c->resp.st == RS_LENGTH || c->resp.st == RS_CHUNK_DATA) {
            size_t n = avail < c->resp.left ? avail : (size_t)c->resp.left;
            evbuffer_remove_buffer(in, out, n);
            c->bytes_down += n;
            c->resp.left -= n;
            if (c->resp.left == 0)
                c->resp.st = c->resp.st == RS_LENGTH ? RS_DONE : RS_CHUNK_END;
        } else if (c->resp.st == RS_CHUNK_END) {
            char crlf[2];
            if (avail < 2)
                break;
            evbuffer_copyout(in, crlf, 2);
            if (crlf[0] != '\r' || crlf[1] != '\n') {
                snprintf(c->reason, sizeof(c->reason),
                         "the upstream's chunk data did not end where its size said; closed");
                finish(c);
                return;
            }
            evbuffer_remove_buffer(in, out, 2);
            c->bytes_down += 2;
            c->resp.st = RS_CHUNK_SIZE;
        } else if (c->resp.st == RS_CHUNK_SIZE || c->resp.st == RS_TRAILER) {
            size_t n;
            char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF_STRICT);
            if (line == NULL) {
                if (avail > 4096) {
                    finish(c);
                    return;
                }
                break;
            }
            if (c->resp.st == RS_TRAILER) {
                evbuffer_add_printf(out, "%s\r\n", line);
                c->bytes_down += n + 2;
                if (n == 0)
                    c->resp.st = RS_DONE;
            } else {
                uint64_t size;
                if (!chunk_size(line, &size)) {
                    /* Not passed on: the client's parser must not get to guess either. */
                    snprintf(c->reason, sizeof(c->reason),
                             "the upstream sent a malformed chunk size; closed");
                    free(line);
                    finish(c);
                    return;
                }
                evbuffer_add_printf(out, "%s\r\n", line);
                c->bytes_down += n + 2;
                if (size == 0) {
                    c->resp.st = RS_TRAILER;
                } else {
                    c->resp.st = RS_CHUNK_DATA;
                    c->resp.left = size; /* then its CRLF (RS_CHUNK_END) */
                }
            }
            free(line);
        } else { /* RS_CLOSE */
            c->bytes_down += avail;
            evbuffer_add_buffer(out, in);
        }
    }
    if (evbuffer_get_length(out) > RELAY_HIGH)
        bufferevent_disable(bev, EV_READ);
    if (c->resp.st == RS_DONE)
        resp_done(c);
    else if (c->up_eof)
        finish(c); /* the body ran to the close (RS_CLOSE), or the upstream cut it short */
}

static void
start_relay(struct conn *c)
{
    struct evbuffer *cin = bufferevent_get_input(c->cl);

    if (c->is_connect && !c->mitm) {
        if (!start_tunnel(c))
            refuse(c, 502, "allow", "could not set up the tunnel to %s:%u", c->dest.host,
                   c->dest.port);
        return;
    }
    c->st = C_RELAY;
    touch(c);
    bufferevent_setcb(c->cl, relay_read, relay_drained, relay_event, c);
    bufferevent_setcb(c->up, c->mitm ? resp_read : relay_read, relay_drained, relay_event, c);
    if (c->mitm) {
        memset(&c->resp, 0, sizeof(c->resp));
        c->resp.head_req = strcmp(c->method, "HEAD") == 0;
        c->up_ready = false;
    }
    bufferevent_setwatermark(c->cl, EV_WRITE, RELAY_HIGH / 4, 0);
    bufferevent_setwatermark(c->up, EV_WRITE, RELAY_HIGH / 4, 0);
    bufferevent_set_timeouts(c->cl, NULL, NULL);
    {
        /* From here the idle sweep governs reads; an upstream that takes none of the bytes
         * waiting for it for as long as the idle timeout is gone, even while it sends. */
        struct timeval stall = ms_tv(c->eg->cfg.idle_timeout_ms);
        bufferevent_set_timeouts(c->up, NULL, &stall);
    }
    if (c->is_connect) {
        evbuffer_add_printf(bufferevent_get_output(c->cl),
                            "HTTP/1.1 200 Connection established\r\n\r\n");
    } else {
        c->bytes_up += evbuffer_get_length(c->head_out);
        evbuffer_add_buffer(bufferevent_get_output(c->up), c->head_out);
    }
    bufferevent_enable(c->up, EV_READ | EV_WRITE);
    if (!c->is_connect && c->body_left == 0) {
        if (!c->mitm) /* see relay_read */
            evbuffer_drain(cin, evbuffer_get_length(cin));
        bufferevent_disable(c->cl, EV_READ);
    } else {
        bufferevent_enable(c->cl, EV_READ | EV_WRITE);
        if (evbuffer_get_length(cin) > 0)
            relay_read(c->cl, c); /* bytes the client sent right behind its head */
    }
    bufferevent_enable(c->cl, EV_WRITE);
}

/* ------------------------------------------------------------ connecting */

static void
connect_event(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;

    (void)bev;
    if (what & BEV_EVENT_CONNECTED) {
        nodelay(bufferevent_getfd(c->up));
        start_relay(c);
        return;
    }
    if (what & BEV_EVENT_TIMEOUT) {
        /* Which step stalled: a socket still in SYN_SENT has no peer name. */
        struct sockaddr_storage peer;
        socklen_t plen = sizeof(peer);
        evutil_socket_t fd = bufferevent_getfd(c->up);
        bool connected = fd >= 0 && getpeername(fd, (struct sockaddr *)&peer, &plen) == 0;
        bufferevent_free(c->up);
        c->up = NULL;
        refuse(c, 504, "allow", "%s:%u did not answer within %g s (%s)", c->dest.host,
               c->dest.port, (double)c->eg->cfg.connect_timeout_ms / 1000.0,
               connected ? "TLS handshake" : "TCP connect");
        return;
    }
    {
        int e = EVUTIL_SOCKET_ERROR();
        unsigned long tls = c->mitm ? bufferevent_get_openssl_error(c->up) : 0;
        char tbuf[200];
        bufferevent_free(c->up);
        c->up = NULL;
        if (tls != 0) {
            ERR_error_string_n(tls, tbuf, sizeof(tbuf));
            refuse(c, 502, "allow", "TLS to %s:%u failed (upstream not verified): %s",
                   c->dest.host, c->dest.port, tbuf);
        } else {
            refuse(c, 502, "allow", "could not connect to %s:%u: %s", c->dest.host,
                   c->dest.port, evutil_socket_error_to_string(e));
        }
    }
}

/*
 * The IPv4 address an address really reaches, for the self check: an IPv4-mapped IPv6 address
 * is its IPv4 address; *port_out is the port. False for other IPv6 addresses.
 */
static bool
as_v4(const struct sockaddr *sa, uint32_t *addr, uint16_t *port)
{
    if (sa->sa_family == AF_INET) {
        *addr = ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr);
        *port = ntohs(((const struct sockaddr_in *)sa)->sin_port);
        return true;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
            memcpy(addr, s6->sin6_addr.s6_addr + 12, 4);
            *addr = ntohl(*addr);
            *port = ntohs(s6->sin6_port);
            return true;
        }
    }
    return false;
}

/*
 * True when dialling sa could reach paddock's own server: the unspecified addresses (which
 * mean this host), its listening address in any spelling, and, when it listens on loopback or
 * on every address, any loopback address on its port.
 */
static bool
is_self(const struct egress *eg, const struct sockaddr *sa)
{
    uint32_t a;
    uint16_t port;
    bool hit = false;

    if (sa->sa_family == AF_INET6 &&
        IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)sa)->sin6_addr)) {
        a = 0x7f000001; /* ::1 reaches what 127.0.0.1 reaches when listening on any */
        port = ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
    } else if (!as_v4(sa, &a, &port)) {
        return false;
    }
    pthread_mutex_lock(&eg->local->lock); /* egress_set_self() may be writing */
    for (size_t i = 0; i < eg->cfg.n_self && !hit; i++) {
        uint32_t s;
        uint16_t sp;
        if (!as_v4((const struct sockaddr *)&eg->cfg.self[i], &s, &sp) || sp != port)
            continue;
        hit = s == a || s == INADDR_ANY || ((s >> 24) == 127 && (a >> 24) == 127);
    }
    pthread_mutex_unlock(&eg->local->lock);
    return hit;
}

/* Reads this host's addresses (getifaddrs: the proxy's own network namespace), loopback left
 * out (a refused class of its own). On failure the previous list stays. */
static void
local_refresh(struct egress *eg)
{
    struct ifaddrs *ifa;
    struct sockaddr_storage *v = NULL;
    size_t n = 0;

    if (getifaddrs(&ifa) < 0) {
        log_warnx("egress: cannot list this host's addresses: %s", strerror(errno));
        return;
    }
    for (struct ifaddrs *i = ifa; i != NULL; i = i->ifa_next) {
        const struct sockaddr *a = i->ifa_addr;
        uint32_t v4;
        uint16_t port;
        if (a == NULL || (a->sa_family != AF_INET && a->sa_family != AF_INET6))
            continue;
        if ((as_v4(a, &v4, &port) && v4 >> 24 == 127) ||
            (a->sa_family == AF_INET6 &&
             IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)a)->sin6_addr)))
            continue;
        v = xrealloc(v, (n + 1) * sizeof(*v));
        memset(&v[n], 0, sizeof(v[n]));
        memcpy(&v[n], a,
               a->sa_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
        n++;
    }
    freeifaddrs(ifa);
    pthread_mutex_lock(&eg->local->lock);
    free(eg->local->a);
    eg->local->a = v;
    eg->local->n = n;
    eg->local->ms = util_mono_ms();
    pthread_mutex_unlock(&eg->local->lock);
}

/* Undoes the watch of this host's addresses. */
static void
local_stop(struct egress *eg)
{
    if (eg->nl_ev != NULL)
        event_free(eg->nl_ev);
    if (eg->nl_fd >= 0)
        close(eg->nl_fd);
    if (eg->local != NULL) {
        pthread_mutex_destroy(&eg->local->lock);
        free(eg->local->a);
        free(eg->local);
    }
    eg->nl_ev = NULL;
    eg->nl_fd = -1;
    eg->local = NULL;
}

/* An address was added or removed somewhere on this host: read them all again. */
static void
local_changed(evutil_socket_t fd, short what, void *arg)
{
    char buf[8192];

    (void)what;
    while (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) > 0 || errno == ENOBUFS)
        ;
    local_refresh(arg);
}

static bool
is_local(const struct egress *eg, const struct sockaddr *sa)
{
    struct local_addrs *la = eg->local;
    uint32_t a, b;
    uint16_t port;
    bool v4 = as_v4(sa, &a, &port), hit = false;

    pthread_mutex_lock(&la->lock);
    for (size_t i = 0; i < la->n && !hit; i++) {
        const struct sockaddr *l = (const struct sockaddr *)&la->a[i];
        if (v4)
            hit = as_v4(l, &b, &port) && a == b;
        else if (sa->sa_family == AF_INET6 && l->sa_family == AF_INET6)
            hit =
                memcmp(&((const struct sockaddr_in6 *)sa)->sin6_addr,
                       &((const struct sockaddr_in6 *)l)->sin6_addr, sizeof(struct in6_addr)) == 0;
    }
    pthread_mutex_unlock(&la->lock);
    return hit;
}

/* True for the addresses that mean "this host" when dialled: 0.0.0.0/8 and :: (any spelling). */
static bool
unspecified(const struct sockaddr *sa)
{
    uint32_t a;
    uint16_t port;

    if (sa->sa_family == AF_INET6 &&
        IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)sa)->sin6_addr))
        return true;
    return as_v4(sa, &a, &port) && (a >> 24) == 0;
}

const char *
egress_vet(const struct egress *eg, const struct sockaddr *sa)
{
    bool local;

    /* Never dialled, whatever the operator's ranges say: they reach this host itself. */
    if (unspecified(sa))
        return "unspecified (0.0.0.0/8 or ::): this host itself";
    if (is_self(eg, sa))
        return "the address is paddock's own";
    /* This host's own addresses reach its services (sshd, a database on 0.0.0.0, a container
     * runtime's API) from the inside, past any firewall in front of it: only a range that is
     * that one address opens one, not a range it happens to be in. */
    local = is_local(eg, sa);
    for (size_t i = 0; i < eg->cfg.n_allow; i++) {
        const struct egress_cidr *r = &eg->cfg.allow[i];
        if (egress_cidr_contains(r, sa) &&
            (!local || r->bits == (r->net.ss_family == AF_INET ? 32u : 128u)))
            return NULL;
    }
    if (local)
        return "one of this host's own addresses (opened only by --egress-allow-cidr naming "
               "it alone)";
    return egress_addr_class(sa);
}

static void start_mitm(struct conn *c);

static void
dial(struct conn *c, const struct sockaddr *sa, socklen_t len)
{
    c->decision = "allow";
    snprintf(c->reason, sizeof(c->reason), "%s",
             c->mitm ? "allowed; intercepted to set headers" : "allowed by the environment's policy");
    if (c->audit_key == 0 && c->eg->audit != NULL && !c->unrecorded) {
        /* The record of an allowed connection is written now, and completed at its end. */
        struct store_egress r;
        fill_record(c, &r);
        snprintf(r.reason, sizeof(r.reason), "%.150s; open", c->reason);
        if ((c->audit_key = egress_audit_open(c->eg->audit, &r)) == 0) {
            refuse(c, 503, "deny",
                   "the audit trail is not being written (its queue is full): "
                   "nothing goes out unrecorded");
            return;
        }
    }
    if ((const void *)sa != (const void *)&c->addr)
        memcpy(&c->addr, sa, len);
    c->addrlen = len;
    if (c->mitm && c->is_connect) {
        start_mitm(c); /* the upstream is dialled once the inner request is read */
        return;
    }
    if (c->mitm)
        snprintf(c->reason, sizeof(c->reason), "%s", "allowed; intercepted and headers set");
    if (c->mitm && c->up != NULL && c->up_ready) {
        start_relay(c); /* the upstream connection of the previous request */
        return;
    }
    if (c->up != NULL) {
        bufferevent_free(c->up);
        c->up = NULL;
    }
    c->st = C_CONNECT;
    if (c->mitm) {
        SSL *ssl = egress_tls_connect_ssl(c->eg->tls, c->dest.host, c->dest.is_ip);
        c->up = ssl == NULL ? NULL
                            : bufferevent_openssl_socket_new(c->eg->base, -1, ssl,
                                                             BUFFEREVENT_SSL_CONNECTING,
                                                             BEV_OPT_CLOSE_ON_FREE);
        if (c->up == NULL) {
            if (ssl != NULL)
                SSL_free(ssl);
            refuse(c, 502, "allow", "TLS towards %s failed to start", c->dest.host);
            return;
        }
    } else {
        c->up = bufferevent_socket_new(c->eg->base, -1, BEV_OPT_CLOSE_ON_FREE);
    }
    bufferevent_setcb(c->up, NULL, NULL, connect_event, c);
    {
        /* Both directions: a TLS handshake waits on reads, a TCP connect on a write. */
        struct timeval tv = ms_tv(c->eg->cfg.connect_timeout_ms);
        bufferevent_set_timeouts(c->up, &tv, &tv);
    }
    if (bufferevent_socket_connect(c->up, (struct sockaddr *)&c->addr, (int)len) < 0) {
        bufferevent_free(c->up);
        c->up = NULL;
        refuse(c, 502, "allow", "could not connect to %s:%u", c->dest.host, c->dest.port);
    }
}

/* Picks the first vetted address of a resolution; denies when none passes. */
static void
choose(struct conn *c, const struct evutil_addrinfo *ai)
{
    const char *why = "the name has no address";

    for (; ai != NULL; ai = ai->ai_next) {
        struct sockaddr_storage ss;
        const char *w;
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
            continue;
        memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
        if (ai->ai_family == AF_INET)
            ((struct sockaddr_in *)&ss)->sin_port = htons(c->dest.port);
        else
            ((struct sockaddr_in6 *)&ss)->sin6_port = htons(c->dest.port);
        w = egress_vet(c->eg, (struct sockaddr *)&ss);
        if (w == NULL) {
            dial(c, (struct sockaddr *)&ss, ai->ai_addrlen);
            return;
        }
        why = w;
    }
    refuse(c, 403, "deny", "%s resolves only to refused addresses: %s", c->dest.host, why);
}

static void
resolved(int result, struct evutil_addrinfo *res, void *arg)
{
    struct conn *c = arg;

    /* A cancelled lookup reports later, after conn_free() cancelled it: c is gone. */
    if (result == EVUTIL_EAI_CANCEL)
        return;
    c->dns = NULL;
    if (result != 0) {
        refuse(c, 502, "deny", "cannot resolve %s: %s", c->dest.host, evutil_gai_strerror(result));
        return;
    }
    choose(c, res);
    evutil_freeaddrinfo(res);
}

/* A destination with one address known already (a literal, an operator override). */
static void
choose_one(struct conn *c, const struct sockaddr_storage *addr)
{
    struct sockaddr_storage ss;
    struct evutil_addrinfo one;

    memcpy(&ss, addr, sizeof(ss));
    memset(&one, 0, sizeof(one));
    one.ai_family = ss.ss_family;
    one.ai_addr = (struct sockaddr *)&ss;
    one.ai_addrlen =
        ss.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    choose(c, &one);
}

static void
resolve(struct conn *c)
{
    struct evutil_addrinfo hints;

    c->st = C_RESOLVE;
    if (c->dest.is_ip) {
        choose_one(c, &c->dest.ip);
        return;
    }
    for (size_t i = 0; i < c->eg->cfg.n_resolve; i++) {
        if (strcmp(c->eg->cfg.resolve[i].name, c->dest.host) == 0) {
            choose_one(c, &c->eg->cfg.resolve[i].addr);
            return;
        }
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = EVUTIL_AI_ADDRCONFIG;
    c->dns = evdns_getaddrinfo(c->eg->dns, c->dest.host, NULL, &hints, resolved, c);
}

/* ------------------------------------------------------------ the request */

/* Request headers that never travel upstream: hop-by-hop and the proxy's own. */
static bool
dropped_header(const char *name, size_t n)
{
    static const char *const drop[] = { "connection",
                                        "keep-alive",
                                        "proxy-connection",
                                        "proxy-authorization",
                                        "proxy-authenticate",
                                        "te",
                                        "trailer",
                                        "upgrade",
                                        "host",
                                        "x-forwarded-for",
                                        "forwarded",
                                        "via",
                                        "x-paddock-egress" };

    for (size_t i = 0; i < sizeof(drop) / sizeof(drop[0]); i++)
        if (strlen(drop[i]) == n && strncasecmp(name, drop[i], n) == 0)
            return true;
    return false;
}

static bool
token_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

#define CONN_NAMES 16

/*
 * The field names a request's Connection headers list (RFC 9110 §7.6.1: each is hop-by-hop,
 * for this hop only, and a proxy removes it), lower-cased, up to CONN_NAMES of them. Never
 * Content-Length or Host: the request's framing and destination are not the client's to take
 * away from what the upstream sees.
 */
static size_t
connection_names(const char *head, char names[][65])
{
    size_t n = 0;
    const char *line = strstr(head, "\r\n");

    for (; line != NULL && line[2] != '\r' && line[2] != '\0'; line = strstr(line + 2, "\r\n")) {
        const char *v = line + 2, *eol = strstr(v, "\r\n"), *a;
        size_t len;
        if (eol == NULL || (size_t)(eol - v) < 11 || strncasecmp(v, "connection:", 11) != 0)
            continue;
        for (v += 11; n < CONN_NAMES && list_next(&v, eol, &a, &len);)
            if (len <= 64 && !(len == 14 && strncasecmp(a, "content-length", 14) == 0) &&
                !(len == 4 && strncasecmp(a, "host", 4) == 0)) {
                for (size_t i = 0; i < len; i++)
                    names[n][i] = (char)tolower((unsigned char)a[i]);
                names[n++][len] = '\0';
            }
    }
    return n;
}

static bool
named_by_connection(char names[][65], size_t n, const char *name, size_t len)
{
    for (size_t i = 0; i < n; i++)
        if (strlen(names[i]) == len && strncasecmp(names[i], name, len) == 0)
            return true;
    return false;
}

/*
 * Parses the head (NUL-terminated, ending with the empty line) and decides. Returns false
 * when the connection was refused.
 */
/* True when a credential placeholder is to be replaced in requests to this destination. */
static bool
substitutes(const struct conn *c)
{
    const struct egress_policy *p = c->pol->p;

    for (size_t i = 0; i < p->n_subst; i++) {
        const char *why;
        if (egress_policy_allows(p->subst[i].domains, &c->dest, &why, NULL))
            return true;
    }
    return false;
}

/*
 * A header line with every placeholder whose trusted domains include the destination replaced
 * by its secret; NULL when there is none in it. Owned (wipe and free).
 */
static char *
substitute(const struct conn *c, const char *line, bool *too_long)
{
    const struct egress_policy *p = c->pol->p;
    char *cur = NULL;
    bool ok = true;

    for (size_t i = 0; i < p->n_subst; i++) {
        const struct egress_subst *s = &p->subst[i];
        const char *why, *src = cur != NULL ? cur : line, *hit;
        struct buf b;
        if (strstr(src, s->placeholder) == NULL ||
            !egress_policy_allows(s->domains, &c->dest, &why, NULL))
            continue;
        buf_init(&b, 64 * 1024);
        while ((hit = strstr(src, s->placeholder)) != NULL && ok) {
            ok = buf_append(&b, src, (size_t)(hit - src), NULL) == 0 &&
                 buf_append(&b, s->value, strlen(s->value), NULL) == 0;
            src = hit + strlen(s->placeholder);
        }
        ok = ok && buf_append(&b, src, strlen(src), NULL) == 0;
        if (cur != NULL) {
            explicit_bzero(cur, strlen(cur));
            free(cur);
            cur = NULL;
        }
        if (!ok) {
            /* Past the cap the buffer was already dropped (wiped below if not): refuse the
             * request rather than send any part of the line. */
            if (b.data != NULL)
                explicit_bzero(b.data, b.len);
            buf_free(&b);
            *too_long = true;
            return NULL;
        }
        cur = buf_steal(&b, NULL);
    }
    return cur;
}

/* True when the matched rule sets a header of this name (the client's copy is dropped). */
static bool
injected_header(const struct conn *c, const char *name, size_t n)
{
    if (!c->mitm || c->rule == NULL)
        return false;
    for (size_t i = 0; i < c->rule->n_headers; i++)
        if (strlen(c->rule->headers[i].name) == n &&
            strncasecmp(c->rule->headers[i].name, name, n) == 0)
            return true;
    return false;
}

/*
 * Attribution: an interaction's commands get a proxy URL whose user is the interaction and
 * whose password is its tag for this environment (env_proxy_tag()), and clients send them as
 * "Proxy-Authorization: Basic base64(user:password)". A verified pair names the interaction
 * in the audit record; anything else (absent, malformed, another environment's tag) names
 * none and changes nothing else: the proxy asks no one to authenticate. The header is never
 * forwarded (dropped_header()).
 */
static void
attribute(struct conn *c, const char *v)
{
    unsigned char dec[160];
    size_t len = strlen(v), pad = 0;
    char *user, *tag;
    int n;

    if (c->interaction[0] != '\0' || strncasecmp(v, "basic ", 6) != 0)
        return;
    for (v += 6, len -= 6; *v == ' '; v++, len--)
        ;
    while (len > 0 && (v[len - 1] == ' ' || v[len - 1] == '\t'))
        len--;
    if (len == 0 || len % 4 != 0 || len / 4 * 3 >= sizeof(dec))
        return;
    pad = (v[len - 1] == '=') + (len > 1 && v[len - 2] == '=');
    n = EVP_DecodeBlock(dec, (const unsigned char *)v, (int)len);
    if (n < 0 || (size_t)n < pad)
        return;
    dec[(size_t)n - pad] = '\0';
    user = (char *)dec;
    if (strlen(user) != (size_t)n - pad || (tag = strchr(user, ':')) == NULL)
        return;
    *tag++ = '\0';
    if (strlen(user) < sizeof(c->interaction) && env_proxy_tag_ok(c->eg->data_dir, c->ls->id, user, tag))
        snprintf(c->interaction, sizeof(c->interaction), "%s", user);
}

/*
 * Parses a request head (NUL-terminated, ending with the empty line). With inner false it is
 * a proxy request (CONNECT or absolute form) and the policy decides; with inner true it is the
 * request inside an intercepted tunnel (origin form), whose Host must name the tunnel's
 * destination. Returns false when the connection was refused.
 */
/* libevent's cleanup for a piece of a request head that holds a secret (arg: the same
 * memory, writable): wiped, then freed. */
static void
wipe_piece(const void *data, size_t len, void *arg)
{
    (void)data;
    explicit_bzero(arg, len);
    free(arg);
}

/*
 * Appends "name: value\r\n" (value NULL: "name\r\n") to out in an allocation of its own, which
 * is wiped when out lets it go: once written to the upstream's TLS, or with the connection.
 * Written with evbuffer_add_printf, a credential stays in buffer memory freed unwiped.
 */
static void
add_secret_line(struct evbuffer *out, const char *name, const char *value)
{
    size_t ln = strlen(name), lv = value != NULL ? strlen(value) : 0;
    size_t n = ln + (value != NULL ? 2 + lv : 0) + 2;
    char *p = xmalloc(n);

    memcpy(p, name, ln);
    if (value != NULL) {
        memcpy(p + ln, ": ", 2);
        memcpy(p + ln + 2, value, lv);
    }
    memcpy(p + n - 2, "\r\n", 2);
    if (evbuffer_add_reference(out, p, n, wipe_piece, p) < 0)
        wipe_piece(p, n, p); /* out of memory: the head goes out short and is refused */
}

static bool
parse_head(struct conn *c, char *head, bool inner)
{
    char *line = head, *eol, *sp1, *sp2, *target;
    bool have_host = false;
    bool have_cl = false;
    uint64_t cl = 0;
    unsigned nh = 0;
    const char *why = NULL;
    char hop[CONN_NAMES][65];
    size_t nhop = connection_names(head, hop);

    eol = strstr(line, "\r\n");
    *eol = '\0';
    sp1 = strchr(line, ' ');
    sp2 = sp1 != NULL ? strchr(sp1 + 1, ' ') : NULL;
    if (sp1 == NULL || sp2 == NULL || strchr(sp2 + 1, ' ') != NULL || sp1 - line >= 15 ||
        sp1 == line) {
        refuse(c, 400, "deny", "malformed request line");
        return false;
    }
    *sp1 = *sp2 = '\0';
    for (char *p = line; *p; p++)
        if (!token_char(*p)) {
            refuse(c, 400, "deny", "malformed method");
            return false;
        }
    snprintf(c->method, sizeof(c->method), "%s", line);
    target = sp1 + 1;
    for (const char *p = target; *p != '\0'; p++) {
        if ((unsigned char)*p >= 0x80) {
            refuse(c, 400, "deny", "non-ASCII byte in the target: host names must be IDNA "
                                   "A-labels (xn--...) and paths percent-encoded");
            return false;
        }
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p == 0x7f) {
            refuse(c, 400, "deny", "control character or space in the target");
            return false;
        }
    }
    if (strcmp(sp2 + 1, "HTTP/1.1") != 0 && strcmp(sp2 + 1, "HTTP/1.0") != 0) {
        refuse(c, 400, "deny", "only HTTP/1.0 and HTTP/1.1 are spoken here");
        return false;
    }
    c->is_connect = !inner && strcmp(c->method, "CONNECT") == 0;
    c->req_close = strcmp(sp2 + 1, "HTTP/1.0") == 0;
    {
        struct err *e = NULL;
        if (inner) {
            if (target[0] != '/')
                why = "inside the tunnel, requests are in origin form (GET /path)";
            else if (strcmp(c->method, "CONNECT") == 0)
                why = "no CONNECT inside a tunnel";
            else
                c->path = xstrdup(target);
        } else if (c->is_connect) {
            if (egress_parse_authority(target, 0, &c->dest, &e) < 0)
                why = e->msg;
        } else if (strncasecmp(target, "http://", 7) == 0) {
            char *slash = strpbrk(target + 7, "/?#");
            char auth[300];
            size_t al = slash != NULL ? (size_t)(slash - target - 7) : strlen(target + 7);
            if (al >= sizeof(auth)) {
                why = "request target too long";
            } else {
                memcpy(auth, target + 7, al);
                auth[al] = '\0';
                if (egress_parse_authority(auth, 80, &c->dest, &e) < 0)
                    why = e->msg;
                else if (slash != NULL && *slash == '#')
                    why = "fragment in request target";
                else
                    c->path = xasprintf("%s%s", slash != NULL && *slash == '?' ? "/" : "",
                                        slash != NULL ? slash : "/");
            }
        } else if (strncasecmp(target, "https://", 8) == 0) {
            why = "https goes through CONNECT, not as an absolute URL";
        } else {
            why = "this is a proxy: send absolute-form requests (http://host/path) or CONNECT";
        }
        if (why != NULL) {
            refuse(c, 400, "deny", "%s", why);
            err_free(e);
            return false;
        }
    }
    if (c->head_out != NULL)
        evbuffer_free(c->head_out);
    c->head_out = evbuffer_new();
    if (!c->is_connect)
        evbuffer_add_printf(c->head_out, "%s %s HTTP/1.1\r\nHost: %s", c->method, c->path,
                            c->dest.host);
    if (!c->is_connect && c->dest.port != 80)
        evbuffer_add_printf(c->head_out, ":%u", c->dest.port);
    if (!c->is_connect)
        evbuffer_add_printf(c->head_out, "\r\n");
    /* Headers: strict framing, one Content-Length, no Transfer-Encoding. */
    for (line = eol + 2; *line != '\0'; line = eol + 2) {
        char *colon, *v;
        size_t nl;
        eol = strstr(line, "\r\n");
        if (eol == line)
            break;
        *eol = '\0';
        if (++nh > HEADERS_MAX) {
            refuse(c, 431, "deny", "more than %d header fields", HEADERS_MAX);
            return false;
        }
        colon = strchr(line, ':');
        if (line[0] == ' ' || line[0] == '\t' || colon == NULL || colon == line) {
            refuse(c, 400, "deny", "malformed header field (folded or without a name)");
            return false;
        }
        nl = (size_t)(colon - line);
        for (size_t i = 0; i < nl; i++)
            if (!token_char(line[i])) {
                refuse(c, 400, "deny", "malformed header name");
                return false;
            }
        for (v = colon + 1; *v == ' ' || *v == '\t';)
            v++;
        for (char *p = v; *p; p++)
            if ((unsigned char)*p < 0x20 && *p != '\t') {
                refuse(c, 400, "deny", "control character in a header value");
                return false;
            }
        if (nl == 10 && strncasecmp(line, "connection", 10) == 0 &&
            list_has(v, strlen(v), "close", NULL))
            c->req_close = true;
        if (!inner && nl == 19 && strncasecmp(line, "proxy-authorization", 19) == 0)
            attribute(c, v);
        if (nl == 17 && strncasecmp(line, "transfer-encoding", 17) == 0) {
            refuse(c, 400, "deny", "Transfer-Encoding in a request is not accepted here "
                                   "(send a Content-Length)");
            return false;
        }
        if (nl == 14 && strncasecmp(line, "content-length", 14) == 0) {
            uint64_t v64;
            if (have_cl || util_parse_u64(v, UINT64_MAX / 2, &v64, NULL) < 0) {
                refuse(c, 400, "deny", "duplicate or malformed Content-Length");
                return false;
            }
            have_cl = true;
            cl = v64;
        }
        if (nl == 4 && strncasecmp(line, "host", 4) == 0 && !c->is_connect) {
            struct egress_dest h;
            struct err *e = NULL;
            /* Inside a tunnel to port 443 a Host without a port means 443. */
            if (have_host ||
                egress_parse_authority(v, inner ? c->dest.port : 80, &h, &e) < 0 ||
                strcmp(h.host, c->dest.host) != 0 || h.port != c->dest.port) {
                err_free(e);
                refuse(c, inner ? 421 : 400, "deny",
                       inner ? "the Host header does not name the tunnel's destination; "
                               "nothing is injected"
                             : "the Host header does not match the request target");
                return false;
            }
            have_host = true;
        }
        if (!c->is_connect && !dropped_header(line, nl) && !injected_header(c, line, nl) &&
            !named_by_connection(hop, nhop, line, nl)) {
            bool too_long = false;
            char *swapped = inner ? substitute(c, line, &too_long) : NULL;
            if (too_long) {
                refuse(c, 431, "deny", "a header line is longer than 64 KiB once its credential "
                                       "placeholders are replaced");
                return false;
            }
            if (swapped != NULL)
                add_secret_line(c->head_out, swapped, NULL);
            else
                evbuffer_add_printf(c->head_out, "%s\r\n", line);
            if (swapped != NULL) {
                explicit_bzero(swapped, strlen(swapped));
                free(swapped);
            }
        }
    }
    if (inner && !have_host) {
        refuse(c, 400, "deny", "a request inside a tunnel needs a Host header");
        return false;
    }
    if (inner && c->rule != NULL) {
        /* The rule's headers replace whatever the client sent under those names. */
        for (size_t i = 0; i < c->rule->n_headers; i++)
            add_secret_line(c->head_out, c->rule->headers[i].name, c->rule->headers[i].value);
    }
    if (c->is_connect && have_cl && cl > 0) {
        refuse(c, 400, "deny", "a CONNECT request has no body");
        return false;
    }
    if (!c->is_connect)
        evbuffer_add_printf(c->head_out, inner && !c->req_close ? "\r\n"
                                                                : "Connection: close\r\n\r\n");
    c->body_left = cl;
    if (inner)
        return true;
    if (!egress_policy_allows(c->pol->p, &c->dest, &why, &c->rule)) {
        refuse(c, 403, "deny", "%s", why);
        return false;
    }
    if (c->is_connect && ((c->rule != NULL && c->rule->intercept) || substitutes(c))) {
        if (c->rule != NULL && c->rule->cred_error[0] != '\0') {
            refuse(c, 403, "deny", "%s", c->rule->cred_error);
            return false;
        }
        if (c->eg->tls == NULL) {
            refuse(c, 403, "deny", "interception is unavailable (no CA); nothing injected");
            return false;
        }
        c->mitm = true;
    }
    return true;
}

static void dial_inner(struct conn *c);

static void
head_read(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    bool inner = c->mitm;
    struct evbuffer *in = bufferevent_get_input(bev);
    struct evbuffer_ptr end = head_end(in, &c->head_scanned);
    size_t len;
    char *head;

    touch(c);
    if (end.pos < 0) {
        if (evbuffer_get_length(in) > c->eg->cfg.max_header_bytes)
            refuse(c, 431, "deny", "request head larger than %zu bytes",
                   c->eg->cfg.max_header_bytes);
        return;
    }
    len = (size_t)end.pos + 4;
    if (len > c->eg->cfg.max_header_bytes) {
        refuse(c, 431, "deny", "request head larger than %zu bytes", c->eg->cfg.max_header_bytes);
        return;
    }
    head = xmalloc(len + 1);
    evbuffer_remove(in, head, len);
    head[len] = '\0';
    if (memchr(head, '\0', len) != NULL) {
        free(head);
        refuse(c, 400, "deny", "NUL in request head");
        return;
    }
    /* Nothing more is read until the decision: bytes pipelined behind a refused head are
     * never forwarded. */
    bufferevent_disable(bev, EV_READ);
    if (parse_head(c, head, inner)) {
        if (inner)
            dial_inner(c);
        else
            resolve(c);
    }
    free(head);
}

static void
head_event(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;

    (void)bev;
    if (what & BEV_EVENT_CONNECTED)
        return; /* the TLS handshake with the client completed; the head comes next */
    if (c->mitm && c->decision != NULL && strcmp(c->decision, "deny") != 0 && c->served == 0) {
        unsigned long e = (what & BEV_EVENT_ERROR) ? bufferevent_get_openssl_error(c->cl) : 0;
        char buf[160];
        if (e != 0) {
            ERR_error_string_n(e, buf, sizeof(buf));
            snprintf(c->reason, sizeof(c->reason), "TLS with the client failed: %.100s", buf);
        } else {
            snprintf(c->reason, sizeof(c->reason), "the client left before its request (%s)",
                     (what & BEV_EVENT_TIMEOUT) ? "timeout"
                     : (what & BEV_EVENT_EOF)   ? "EOF"
                                                : "error");
        }
    }
    conn_free(c); /* EOF, error or the header timeout before a complete head */
}

/* The SNI of an intercepted tunnel must name the CONNECT destination, or nothing goes on. */
static int
sni_check(SSL *ssl, int *alert, void *arg)
{
    struct conn *c = SSL_get_app_data(ssl);
    const char *sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    struct egress_dest d;

    (void)arg;
    if (c == NULL)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    if (sni == NULL) {
        if (c->dest.is_ip)
            return SSL_TLSEXT_ERR_OK;
        c->decision = "deny";
        snprintf(c->reason, sizeof(c->reason), "no SNI in the TLS handshake for %.100s",
                 c->dest.host);
        *alert = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    if (egress_canon_host(sni, strlen(sni), &d, NULL) < 0 || strcmp(d.host, c->dest.host) != 0) {
        /* The client's bytes, which may be anything but NUL: escaped for the record. */
        cleanup_free char *esc = log_escape(sni, strlen(sni), 60);
        c->decision = "deny";
        snprintf(c->reason, sizeof(c->reason), "SNI '%.64s' does not match CONNECT %.60s", esc,
                 c->dest.host);
        *alert = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK;
}

/* An allowed CONNECT whose rule sets headers: answer 200, then speak TLS as the destination. */
static void
start_mitm(struct conn *c)
{
    SSL *ssl = egress_tls_accept_ssl(c->eg->tls, c->dest.host, c->dest.is_ip);
    struct bufferevent *tls;
    struct timeval tv = ms_tv(c->eg->cfg.header_timeout_ms);

    if (ssl == NULL) {
        refuse(c, 502, "deny", "could not mint a certificate for %s", c->dest.host);
        return;
    }
    SSL_set_app_data(ssl, c);
    evbuffer_add_printf(bufferevent_get_output(c->cl), "HTTP/1.1 200 Connection established\r\n\r\n");
    tls = bufferevent_openssl_filter_new(c->eg->base, c->cl, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                         BEV_OPT_CLOSE_ON_FREE);
    if (tls == NULL) {
        SSL_free(ssl);
        refuse(c, 502, "deny", "TLS with the client failed to start");
        return;
    }
    /* The filter hands what it encrypts straight to the socket's buffer, unless that has a
     * high watermark: without one, the checks on the filter's own output (RELAY_HIGH) would
     * never see a client that stopped reading, and an intercepted download would pile up
     * here at the upstream's speed. */
    bufferevent_setwatermark(c->cl, EV_WRITE, 0, RELAY_HIGH);
    c->cl = tls;
    c->is_connect = false;
    c->st = C_HEAD;
    c->head_ms = util_mono_ms();
    bufferevent_setcb(c->cl, head_read, NULL, head_event, c);
    bufferevent_set_timeouts(c->cl, &tv, NULL);
    bufferevent_enable(c->cl, EV_READ | EV_WRITE);
}

/* The inner request is read and rewritten: dial the destination over verified TLS. */
static void
dial_inner(struct conn *c)
{
    snprintf(c->reason, sizeof(c->reason), "%s", "allowed; intercepted and headers set");
    dial(c, (struct sockaddr *)&c->addr, c->addrlen);
}

/*
 * A token bucket per environment for new connections: conn_rate a second, after a burst of as
 * many as it may hold at once plus a second's worth (an environment can always fill its cap).
 * A new connection takes a token or is refused (429).
 */
static bool
rate_take(struct listener *ls, int64_t now)
{
    double rate = ls->eg->cfg.conn_rate, burst = ls->eg->cfg.max_conns_per_env + rate;

    if (ls->tokens_ms == 0)
        ls->tokens = burst;
    else if (now > ls->tokens_ms)
        ls->tokens += (double)(now - ls->tokens_ms) * rate / 1000.0;
    if (ls->tokens > burst)
        ls->tokens = burst;
    ls->tokens_ms = now;
    if (ls->tokens < 1.0)
        return false;
    ls->tokens -= 1.0;
    return true;
}

static void
accepted(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
    struct listener *ls = arg;
    struct egress *eg = ls->eg;
    struct conn *c = xcalloc(1, sizeof(*c));
    struct timeval tv = ms_tv(eg->cfg.header_timeout_ms);

    (void)l;
    (void)sa;
    (void)salen;
    c->eg = eg;
    c->ls = ls;
    c->pol = ls->pol;
    c->pol->refs++;
    ls->refs++;
    ls->conns++;
    c->start_ms = util_now_ms(); /* the record's time */
    c->last_ms = c->head_ms = util_mono_ms();
    c->next = eg->conns.next;
    c->prev = &eg->conns;
    eg->conns.next->prev = c;
    eg->conns.next = c;
    nodelay(fd);
    c->cl = bufferevent_socket_new(eg->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!rate_take(ls, c->last_ms)) {
        c->unrecorded = true;
        refuse(c, 429, "deny", "more than %u new connections a second from this environment",
               eg->cfg.conn_rate);
        return;
    }
    if (ls->conns > eg->cfg.max_conns_per_env) {
        refuse(c, 429, "deny", "more than %u connections of this environment at once",
               eg->cfg.max_conns_per_env);
        return;
    }
    bufferevent_setcb(c->cl, head_read, NULL, head_event, c);
    bufferevent_set_timeouts(c->cl, &tv, NULL);
    bufferevent_enable(c->cl, EV_READ);
}

/* ------------------------------------------------------------- the loop */

static void
sweep(evutil_socket_t fd, short what, void *arg)
{
    struct egress *eg = arg;
    int64_t now = util_mono_ms();

    (void)fd;
    (void)what;
    if (eg->nl_ev == NULL && now - eg->local->ms >= 10000)
        local_refresh(eg);
    for (struct listener *ls = eg->listeners; ls != NULL; ls = ls->next) {
        if (now - ls->last_deny_ms >= 1000)
            audit_repeats(ls);
        audit_unrecorded(ls);
    }
    for (struct conn *c = eg->conns.next, *next; c != &eg->conns; c = next) {
        next = c->next;
        /* A deadline for the whole head, not an idle timer a byte a second would reset. */
        if (c->st == C_HEAD && c->dns == NULL && now - c->head_ms > eg->cfg.header_timeout_ms) {
            snprintf(c->reason, sizeof(c->reason), "no complete request within %g s",
                     (double)eg->cfg.header_timeout_ms / 1000.0);
            conn_free(c);
            continue;
        }
        if (c->st == C_RELAY && now - c->last_ms > eg->cfg.idle_timeout_ms) {
            snprintf(c->reason, sizeof(c->reason), "idle for %g s; closed",
                     (double)eg->cfg.idle_timeout_ms / 1000.0);
            finish(c);
            continue;
        }
        if (c->st == C_DONE && c->flush == NULL)
            (void)flush_check(c);
    }
}

/* Whether two rules decide and inject the same for a destination. */
static bool
same_rule(const struct egress_rule *a, const struct egress_rule *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    if (a->kind != b->kind || a->port != b->port || a->intercept != b->intercept ||
        strcmp(a->host, b->host) != 0 || strcmp(a->credential, b->credential) != 0 ||
        strcmp(a->cred_error, b->cred_error) != 0 || a->n_headers != b->n_headers)
        return false;
    for (size_t i = 0; i < a->n_headers; i++)
        if (strcmp(a->headers[i].name, b->headers[i].name) != 0 ||
            strcmp(a->headers[i].value, b->headers[i].value) != 0)
            return false;
    return true;
}

/* Whether two policies replace the same placeholders by the same values for the same domains. */
static bool
same_substs(const struct egress_policy *a, const struct egress_policy *b)
{
    if (a->n_subst != b->n_subst)
        return false;
    for (size_t i = 0; i < a->n_subst; i++)
        if (strcmp(a->subst[i].placeholder, b->subst[i].placeholder) != 0 ||
            strcmp(a->subst[i].value, b->subst[i].value) != 0 ||
            egress_policy_print(a->subst[i].domains) != egress_policy_print(b->subst[i].domains))
            return false;
    return true;
}

/* Ends a connection because the environment's policy changed (why: the new policy's word). */
static void
end_revised(struct conn *c, const char *why)
{
    snprintf(c->reason, sizeof(c->reason), "closed: the environment's policy changed%s%.100s",
             why != NULL ? ": " : "", why != NULL ? why : "");
    finish(c);
}

/*
 * A listener's policy changed (or went: pol NULL): its connections are held to the new one.
 * - Still reading its first request head: decided by the new policy.
 * - Going to a destination the new policy refuses: closed now, whatever its state.
 * - Intercepted, or decided to be, where what applies to its destination changed (the rule,
 *   its headers or credential, the placeholders): closed now unless a response is being
 *   relayed, then after it. A revoked or rotated credential is never injected again on a
 *   connection kept alive.
 * Anything else the new policy still allows goes on untouched: a credential refreshed for one
 * host does not cut the environment's other connections.
 */
static void
revise(struct egress *eg, struct listener *ls)
{
    for (struct conn *c = eg->conns.next, *next; c != &eg->conns; c = next) {
        const struct egress_rule *nr = NULL;
        const char *why = NULL;
        next = c->next;
        if (c->ls != ls || c->st == C_DONE || c->pol == ls->pol)
            continue;
        if (ls->pol == NULL) {
            end_revised(c, "the network is disabled");
            continue;
        }
        if (c->st == C_HEAD && !c->mitm && c->decision == NULL) {
            pref_unref(c->pol);
            c->pol = ls->pol;
            c->pol->refs++;
            continue;
        }
        if (!egress_policy_allows(ls->pol->p, &c->dest, &why, &nr)) {
            end_revised(c, why);
            continue;
        }
        if (!c->mitm || (same_rule(c->rule, nr) && same_substs(c->pol->p, ls->pol->p)))
            continue;
        if (c->st == C_RELAY)
            c->revised = true; /* after the response in progress */
        else
            end_revised(c, NULL);
    }
}

static void att_forget(struct egress *eg, const struct listener *ls);

static void
run_cmds(evutil_socket_t fd, short what, void *arg)
{
    struct egress *eg = arg;
    struct cmd *list;

    (void)fd;
    (void)what;
    pthread_mutex_lock(&eg->lock);
    list = eg->cmds;
    eg->cmds = NULL;
    pthread_mutex_unlock(&eg->lock);
    /* Oldest first. */
    {
        struct cmd *rev = NULL;
        while (list != NULL) {
            struct cmd *n = list->next;
            list->next = rev;
            rev = list;
            list = n;
        }
        list = rev;
    }
    while (list != NULL) {
        struct cmd *cm = list;
        list = cm->next;
        if (cm->kind == CMD_STOP) {
            event_base_loopbreak(eg->base);
        } else if (cm->kind == CMD_ATTACH) {
            struct listener *ls = cm->ls;
            /* A detach of the same sandbox queued before this attach has ended the listening
             * of the socket both share (sandbox_proxy_unlisten): listen again. */
            if (sandbox_proxy_relisten(ls->fd) < 0 ||
                (ls->l = evconnlistener_new(eg->base, accepted, ls,
                                            LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0,
                                            ls->fd)) == NULL) {
                /* Forgotten, so that the next reconcile pass attaches it again. */
                log_warnx("egress: %s: cannot listen: %s", ls->id, strerror(errno));
                att_forget(eg, ls);
                listener_unref(ls);
            } else {
                ls->next = eg->listeners;
                eg->listeners = ls;
            }
        } else if (cm->kind == CMD_UPDATE) {
            for (struct listener *ls = eg->listeners; ls != NULL; ls = ls->next)
                if (strcmp(ls->id, cm->id) == 0) {
                    pref_unref(ls->pol);
                    ls->pol = cm->pol;
                    cm->pol = NULL;
                    revise(eg, ls);
                    break;
                }
            pref_unref(cm->pol); /* no listener any more */
        } else {
            for (struct listener **pp = &eg->listeners; *pp != NULL;) {
                struct listener *ls = *pp;
                if (strcmp(ls->id, cm->id) == 0) {
                    *pp = ls->next;
                    evconnlistener_disable(ls->l);
                    /* The sandbox's init keeps the socket: stop its listening, or connections
                     * would wait in the backlog for a proxy that is not coming. */
                    sandbox_proxy_unlisten(ls->fd);
                    /* Detached (stopped, deleted, or its network disabled): nothing of it
                     * goes on, an intercepted tunnel least of all. */
                    pref_unref(ls->pol);
                    ls->pol = NULL;
                    revise(eg, ls);
                    listener_unref(ls);
                } else {
                    pp = &ls->next;
                }
            }
        }
        free(cm);
    }
}

static void *
loop(void *arg)
{
    struct egress *eg = arg;

    event_base_dispatch(eg->base);
    return NULL;
}

static void
push(struct egress *eg, struct cmd *cm)
{
    pthread_mutex_lock(&eg->lock);
    cm->next = eg->cmds;
    eg->cmds = cm;
    pthread_mutex_unlock(&eg->lock);
    event_active(eg->wake, EV_READ, 0);
}

static void
free_cfg(struct egress *eg)
{
    free(eg->data_dir);
    free(eg->cfg.allow);
    free(eg->cfg.resolve);
    free(eg->cfg.self);
}

/*
 * The proxy's resolver: nameservers, options and hosts file as path (default /etc/resolv.conf)
 * says, but never its search list. A name is looked up exactly as the policy decided on it:
 * with "search corp.example" (or a domain derived from the host's name, or ndots:5) a name
 * that does not exist would be retried as NAME.corp.example and that host dialled instead.
 */
static int
dns_new(struct egress *eg, const char *path, struct err **errp)
{
    int r;

    eg->dns = evdns_base_new(eg->base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    if (eg->dns == NULL)
        return err_set(errp, ERR_INTERNAL, 0, "egress: DNS resolver");
    r = evdns_base_resolv_conf_parse(eg->dns, DNS_OPTIONS_ALL & ~DNS_OPTION_SEARCH,
                                     path != NULL ? path : "/etc/resolv.conf");
    if (r == 0)
        return 0;
    if (path != NULL) {
        evdns_base_free(eg->dns, 0);
        return err_set(errp, ERR_INVALID, 0, "--egress-resolv-conf %s: %s", path,
                       r == 6 ? "names no nameserver" : "cannot be read");
    }
    /* As the C library does without one: a nameserver on 127.0.0.1, and /etc/hosts. */
    log_warnx("egress: /etc/resolv.conf %s; asking 127.0.0.1",
              r == 6 ? "names no nameserver" : "cannot be read");
    return 0;
}

int
egress_start(const struct egress_config *cfg, struct egress **out, struct err **errp)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    struct egress *eg = xcalloc(1, sizeof(*eg));
    struct timeval sec = {1, 0};
    cleanup_free char *db = xasprintf("%s/paddock.db", cfg->data_dir);
    struct store *store = NULL;

    pthread_once(&once, (void (*)(void))evthread_use_pthreads);
    eg->cfg = *cfg;
    /* Own copies of the arrays: the caller's may go. */
    eg->cfg.allow = xcalloc(cfg->n_allow + 1, sizeof(*cfg->allow));
    eg->cfg.resolve = xcalloc(cfg->n_resolve + 1, sizeof(*cfg->resolve));
    eg->cfg.self = xcalloc(cfg->n_self + 1, sizeof(*cfg->self));
    /* memcpy from NULL is undefined even for 0 bytes. */
    if (cfg->n_allow > 0)
        memcpy(eg->cfg.allow, cfg->allow, cfg->n_allow * sizeof(*cfg->allow));
    if (cfg->n_resolve > 0)
        memcpy(eg->cfg.resolve, cfg->resolve, cfg->n_resolve * sizeof(*cfg->resolve));
    if (cfg->n_self > 0)
        memcpy(eg->cfg.self, cfg->self, cfg->n_self * sizeof(*cfg->self));
    eg->cfg.data_dir = NULL;
    eg->data_dir = xstrdup(cfg->data_dir);
    pthread_mutex_init(&eg->lock, NULL);
    pthread_mutex_init(&eg->att_lock, NULL);
    eg->local = xcalloc(1, sizeof(*eg->local));
    pthread_mutex_init(&eg->local->lock, NULL);
    eg->conns.next = eg->conns.prev = &eg->conns;
    eg->nl_fd = -1;
    eg->base = event_base_new();
    if (eg->base == NULL) {
        local_stop(eg);
        free_cfg(eg);
        free(eg);
        return err_set(errp, ERR_INTERNAL, 0, "egress: event base");
    }
    {
        /* Watch this host's addresses change (a DHCP lease, an interface brought up): the
         * kernel tells a netlink socket, and the list is read again at once. */
        struct sockaddr_nl snl = { .nl_family = AF_NETLINK,
                                   .nl_groups = RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR };
        eg->nl_fd = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, NETLINK_ROUTE);
        if (eg->nl_fd >= 0 && bind(eg->nl_fd, (struct sockaddr *)&snl, sizeof(snl)) == 0) {
            eg->nl_ev = event_new(eg->base, eg->nl_fd, EV_READ | EV_PERSIST, local_changed, eg);
            event_add(eg->nl_ev, NULL);
        } else {
            log_warnx("egress: no netlink watch of this host's addresses (%s); they are read "
                      "again every 10 s",
                      strerror(errno));
        }
        local_refresh(eg);
    }
    if (dns_new(eg, cfg->resolv_conf, errp) < 0) {
        local_stop(eg);
        event_base_free(eg->base);
        free_cfg(eg);
        free(eg);
        return -1;
    }
    if (store_open(db, &store, errp) < 0 || egress_audit_start(store, &eg->audit, errp) < 0) {
        store_close(store);
        evdns_base_free(eg->dns, 0);
        local_stop(eg);
        event_base_free(eg->base);
        free_cfg(eg);
        free(eg);
        return err_wrap(errp, "egress audit");
    }
    {
        /* Interception needs the installation's CA; without it, rules that would intercept
         * are refused (fail closed) while everything else works. */
        struct err *te = NULL;
        if (egress_ca_ensure(cfg->data_dir, &te) < 0 ||
            egress_tls_new(cfg->data_dir, cfg->upstream_ca, &eg->tls, &te) < 0) {
            log_warnx("egress: no TLS interception: %s", te->msg);
            err_free(te);
            eg->tls = NULL;
        } else {
            SSL_CTX_set_tlsext_servername_callback(egress_tls_server_ctx(eg->tls), sni_check);
        }
    }
    eg->wake = event_new(eg->base, -1, EV_PERSIST, run_cmds, eg);
    eg->sweep = event_new(eg->base, -1, EV_PERSIST, sweep, eg);
    event_add(eg->wake, NULL);
    event_add(eg->sweep, &sec);
    if (pthread_create(&eg->thread, NULL, loop, eg) != 0) {
        egress_audit_stop(eg->audit, AUDIT_DRAIN_MS);
        event_free(eg->wake);
        event_free(eg->sweep);
        evdns_base_free(eg->dns, 0);
        local_stop(eg);
        event_base_free(eg->base);
        free_cfg(eg);
        free(eg);
        return err_set(errp, ERR_INTERNAL, 0, "egress: thread");
    }
    *out = eg;
    return 0;
}

void
egress_set_self(struct egress *eg, const struct sockaddr *sa)
{
    pthread_mutex_lock(&eg->local->lock); /* is_self() reads it from any thread */
    if (eg->cfg.n_self > 0)
        memcpy(&eg->cfg.self[0], sa,
               sa->sa_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
    pthread_mutex_unlock(&eg->local->lock);
}

void
egress_stop(struct egress *eg)
{
    struct cmd *cm = xcalloc(1, sizeof(*cm));

    if (eg == NULL)
        return;
    cm->kind = CMD_STOP;
    push(eg, cm);
    pthread_join(eg->thread, NULL);
    while (eg->conns.next != &eg->conns)
        conn_free(eg->conns.next);
    while (eg->listeners != NULL) {
        struct listener *ls = eg->listeners;
        eg->listeners = ls->next;
        listener_unref(ls);
    }
    while (eg->cmds != NULL) {
        struct cmd *c = eg->cmds;
        eg->cmds = c->next;
        if (c->ls != NULL)
            listener_unref(c->ls);
        pref_unref(c->pol);
        free(c);
    }
    event_free(eg->wake);
    event_free(eg->sweep);
    local_stop(eg);
    evdns_base_free(eg->dns, 0);
    event_base_free(eg->base);
    egress_audit_stop(eg->audit, AUDIT_DRAIN_MS); /* after every connection's record is queued */
    egress_tls_free(eg->tls);
    free(eg->relay_buf);
    free(eg->att);
    pthread_mutex_destroy(&eg->att_lock);
    free_cfg(eg);
    free(eg);
}

static bool detach_locked(struct egress *eg, const char *id);

int
egress_attach(struct egress *eg, const char *id, const struct sandbox_init *init,
              const struct egress_policy *policy, struct err **errp)
{
    struct listener *ls;
    struct cmd *cm;
    int fd;

    uint64_t print = egress_policy_print(policy);

    pthread_mutex_lock(&eg->att_lock);
    for (size_t i = 0; i < eg->natt; i++)
        if (strcmp(eg->att[i].id, id) == 0 && eg->att[i].init.pid == init->pid &&
            eg->att[i].init.start == init->start) {
            bool same = eg->att[i].print == print;
            eg->att[i].print = print;
            if (!same && policy->mode != EGRESS_DISABLED) {
                /* Same sandbox, new policy: swap it under the same listening socket. */
                cm = xcalloc(1, sizeof(*cm));
                cm->kind = CMD_UPDATE;
                snprintf(cm->id, sizeof(cm->id), "%s", id);
                cm->pol = pref_new(policy);
                push(eg, cm);
            } else if (!same) {
                detach_locked(eg, id);
            }
            pthread_mutex_unlock(&eg->att_lock);
            return 0;
        }
    if (policy->mode == EGRESS_DISABLED) {
        detach_locked(eg, id);
        pthread_mutex_unlock(&eg->att_lock);
        return 0;
    }
    /* Another sandbox's listener for this id goes only once this one listens: an attach from
     * a stale view (an init that has since died and been replaced) fails here and leaves the
     * current sandbox's listener alone. */
    fd = sandbox_proxy_listen(init, errp);
    if (fd < 0) {
        pthread_mutex_unlock(&eg->att_lock);
        return err_wrap(errp, "egress listener for %s", id);
    }
    detach_locked(eg, id);
    ls = xcalloc(1, sizeof(*ls));
    ls->eg = eg;
    ls->fd = fd;
    ls->refs = 1;
    ls->init = *init;
    snprintf(ls->id, sizeof(ls->id), "%s", id);
    ls->pol = pref_new(policy);
    cm = xcalloc(1, sizeof(*cm));
    cm->kind = CMD_ATTACH;
    cm->ls = ls;
    eg->att = xrealloc(eg->att, (eg->natt + 1) * sizeof(*eg->att));
    snprintf(eg->att[eg->natt].id, sizeof(eg->att[eg->natt].id), "%s", id);
    eg->att[eg->natt].init = *init;
    eg->att[eg->natt].print = print;
    eg->att[eg->natt].ls = ls;
    eg->natt++;
    push(eg, cm);
    pthread_mutex_unlock(&eg->att_lock);
    return 1;
}

/* Takes the entry of the attach that made ls off the attached table, if it is still there:
 * a later attach of the same sandbox (same id and init) has an entry of its own. */
static void
att_forget(struct egress *eg, const struct listener *ls)
{
    pthread_mutex_lock(&eg->att_lock);
    for (size_t i = 0; i < eg->natt; i++)
        if (eg->att[i].ls == ls) {
            eg->att[i] = eg->att[--eg->natt];
            break;
        }
    pthread_mutex_unlock(&eg->att_lock);
}

/* egress_detach() with eg->att_lock held. */
static bool
detach_locked(struct egress *eg, const char *id)
{
    struct cmd *cm;
    bool had = false;

    for (size_t i = 0; i < eg->natt; i++)
        if (strcmp(eg->att[i].id, id) == 0) {
            eg->att[i] = eg->att[--eg->natt];
            had = true;
            break;
        }
    if (!had)
        return false;
    cm = xcalloc(1, sizeof(*cm));
    cm->kind = CMD_DETACH;
    snprintf(cm->id, sizeof(cm->id), "%s", id);
    push(eg, cm);
    return true;
}

void
egress_detach(struct egress *eg, const char *id, const struct sandbox_init *init)
{
    struct err *e = NULL;

    pthread_mutex_lock(&eg->att_lock);
    /* Nothing attached here, but the socket may still listen for a server before this one
     * (killed while it was attached): it must refuse, not hold connections. */
    if (!detach_locked(eg, id) && init != NULL && sandbox_proxy_refuse(init, &e) < 0) {
        log_warnx("egress: %s: %s", id, e->msg);
        err_free(e);
    }
    pthread_mutex_unlock(&eg->att_lock);
}

size_t
egress_attached(struct egress *eg, char ***out)
{
    char **v;
    size_t n;

    (void)eg;
    pthread_mutex_lock(&eg->att_lock);
    n = eg->natt;
    v = xcalloc(n + 1, sizeof(*v));
    for (size_t i = 0; i < n; i++)
        v[i] = xstrdup(eg->att[i].id);
    pthread_mutex_unlock(&eg->att_lock);
    *out = v;
    return n;
}

bool
egress_override(const struct egress *eg, const char *host, struct sockaddr_storage *out)
{
    for (size_t i = 0; i < eg->cfg.n_resolve; i++)
        if (strcmp(eg->cfg.resolve[i].name, host) == 0) {
            *out = eg->cfg.resolve[i].addr;
            return true;
        }
    return false;
}

void
egress_sync_audit(struct egress *eg)
{
    if (eg->audit != NULL)
        egress_audit_sync(eg->audit, 2000);
}
