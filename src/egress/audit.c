/*
 * The egress audit trail's writer: a thread of its own that owns the proxy's database
 * connection, so the proxy's loop never waits for SQLite (an insert is 10-40 us, but every
 * ~450 of them one runs the WAL checkpoint and its fsync, milliseconds during which every
 * tunnel of every environment stood still; a writer that holds the lock stalled it for as long).
 *
 * The loop hands over records; the writer takes everything queued at once and writes it in
 * one transaction. An allowed connection gets its record when it is allowed (egress_audit_open)
 * and that record is completed when it ends (egress_audit_close): a daemon that dies holds on
 * to no decision, an open tunnel is visible while it lasts, and records are in the order the
 * decisions were made. The queue has a cap: past it the proxy refuses new connections rather
 * than let traffic through that it cannot record.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "egress_int.h"
#include "store/store.h"

#define AUDIT_QUEUE_MAX 65536 /* records waiting; past it, new connections are refused */
#define AUDIT_DROPS_NAMED 20    /* records dropped at shutdown that are logged one by one */
#define OPEN_BUCKETS    1024  /* hash of the open records' keys to their row ids */

struct op {
    struct op *next;
    uint64_t key; /* an open record's key; 0 for a record written whole */
    bool open;    /* the record of an allowed connection: completed later by its key */
    struct store_egress r;
};

struct open_row {
    struct open_row *next;
    uint64_t key;
    int64_t id;
};

/* A change to the open-record table made inside a batch's transaction: undone if the
 * transaction is not committed, so no id of a rolled-back row is ever completed. */
struct undo {
    struct undo *next;
    bool added; /* key was added (undo: remove it); else removed (undo: add it back) */
    uint64_t key;
    int64_t id;
};

struct egress_audit {
    struct store *store;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t more;
    struct op *head, *tail;              /* under lock */
    size_t queued;                       /* under lock */
    bool stop;                           /* under lock */
    _Atomic int64_t stop_by_ns;          /* stopping: write until then (monotonic ns); else 0 */
    int64_t busy_since_ns;               /* writer's: when its statement found a lock taken */
    uint64_t enqueued, written;          /* under lock: records handed over, and dealt with */
    pthread_cond_t drained;              /* written moved */
    uint64_t next_key;                   /* the loop's */
    uint64_t lost;                       /* writer's: records that could not be written */
    uint64_t dropped;                    /* writer's: of those, left when the stop's time ran out */
    struct open_row *open[OPEN_BUCKETS]; /* writer's */
    struct undo *undo;                   /* writer's: this batch's changes to open */
};

static struct open_row **
open_slot(struct egress_audit *a, uint64_t key)
{
    struct open_row **pp = &a->open[key % OPEN_BUCKETS];

    while (*pp != NULL && (*pp)->key != key)
        pp = &(*pp)->next;
    return pp;
}

static void
open_add(struct egress_audit *a, uint64_t key, int64_t id)
{
    struct open_row *row = xcalloc(1, sizeof(*row));
    struct open_row **pp = open_slot(a, key);

    row->key = key;
    row->id = id;
    row->next = *pp;
    *pp = row;
}

/* Takes key's row out of the table: its id, or 0 when there is none. */
static int64_t
open_take(struct egress_audit *a, uint64_t key)
{
    struct open_row **pp = open_slot(a, key), *row = *pp;
    int64_t id;

    if (row == NULL)
        return 0;
    *pp = row->next;
    id = row->id;
    free(row);
    return id;
}

static void
log_change(struct egress_audit *a, bool in_tx, bool added, uint64_t key, int64_t id)
{
    struct undo *u;

    if (!in_tx)
        return;
    u = xmalloc(sizeof(*u));
    u->added = added;
    u->key = key;
    u->id = id;
    u->next = a->undo;
    a->undo = u;
}

/* The batch's changes to the table stand (commit) or are undone, newest first (rollback). */
static void
end_changes(struct egress_audit *a, bool keep)
{
    while (a->undo != NULL) {
        struct undo *u = a->undo;
        a->undo = u->next;
        if (!keep) {
            if (u->added)
                (void)open_take(a, u->key);
            else
                open_add(a, u->key, u->id);
        }
        free(u);
    }
}

/* Writes one record; false when the database refused it. */
static bool
write_one(struct egress_audit *a, const struct op *o, bool in_tx)
{
    struct err *e = NULL;
    int64_t id = 0;
    bool found = false;

    if (!o->open && o->key != 0 && (id = open_take(a, o->key)) != 0) {
        /* The end of an allowed connection: complete its record, or write it whole if that
         * record has been purged (a connection past the retention). */
        log_change(a, in_tx, false, o->key, id);
        if (store_egress_update(a->store, id, &o->r, &found, &e) < 0)
            goto fail;
        if (found)
            return true;
    }
    if (store_egress_insert(a->store, &o->r, &id, &e) < 0)
        goto fail;
    if (o->open) {
        open_add(a, o->key, id);
        log_change(a, in_tx, true, o->key, id);
    }
    return true;
fail:
    if (!in_tx) {
        cleanup_free char *host = log_escape(o->r.host, strlen(o->r.host), 300);
        a->lost++;
        log_warnx("egress: audit record of %s:%d lost (%llu so far): %s", host, o->r.port,
                  (unsigned long long)a->lost, e->msg);
    }
    err_free(e);
    return false;
}

/* Whether the writer may still write: always, or when stopping, until the stop's deadline. */
static bool
in_time(struct egress_audit *a)
{
    int64_t by = atomic_load(&a->stop_by_ns);

    return by == 0 || util_mono_ns() < by;
}

/*
 * The writer's connection waits for a lock another process holds as long as any connection
 * of the store does (STORE_BUSY_MS), but never past the stop's deadline. Otherwise a database
 * locked by another process kept the daemon from exiting for the busy timeout once for every
 * record left.
 */
static int
busy(void *arg, int count)
{
    struct egress_audit *a = arg;
    int64_t now = util_mono_ns();
    struct timespec pause = { 0, (count < 24 ? count + 1 : 25) * 1000000L }; /* as SQLite's own */

    if (count == 0)
        a->busy_since_ns = now;
    if (now - a->busy_since_ns >= (int64_t)STORE_BUSY_MS * 1000000 || !in_time(a))
        return 0;
    nanosleep(&pause, NULL);
    return 1;
}

static void *
writer(void *arg)
{
    struct egress_audit *a = arg;

    for (;;) {
        struct op *list;
        bool stop, ok = true;
        uint64_t n = 0;

        pthread_mutex_lock(&a->lock);
        while (a->head == NULL && !a->stop)
            pthread_cond_wait(&a->more, &a->lock);
        list = a->head;
        stop = a->stop;
        a->head = a->tail = NULL;
        a->queued = 0;
        pthread_mutex_unlock(&a->lock);
        if (list == NULL && stop)
            break;
        /*
         * One transaction for the batch: one WAL commit, not one per record. If any record
         * is refused, or the commit, the whole transaction is rolled back, with the table's
         * changes, and the batch is written again a record at a time, so one bad record (or a
         * full disk for a moment) costs only what cannot be written.
         */
        if (list->next != NULL && in_time(a) && store_begin(a->store, NULL) == 0) {
            for (struct op *o = list; o != NULL && ok; o = o->next)
                ok = write_one(a, o, true);
            ok = ok && store_commit(a->store, NULL) == 0;
            if (!ok)
                store_rollback(a->store);
            end_changes(a, ok);
        } else {
            ok = false;
        }
        for (struct op *o = list, *next; o != NULL; o = next) {
            next = o->next;
            if (!ok && in_time(a)) {
                (void)write_one(a, o, false);
            } else if (!ok) {
                a->lost++;
                /* Each by name, as a record the database refuses is, up to a point: a
                 * full queue would be 65536 lines. */
                if (a->dropped++ < AUDIT_DROPS_NAMED) {
                    cleanup_free char *host = log_escape(o->r.host, strlen(o->r.host), 300);
                    log_warnx("egress: audit record of %s:%d (%s, %s) not written by the "
                              "shutdown's deadline",
                              host, o->r.port, o->r.env_id, o->r.decision);
                }
            }
            free(o);
            n++;
        }
        pthread_mutex_lock(&a->lock);
        a->written += n;
        pthread_cond_broadcast(&a->drained);
        pthread_mutex_unlock(&a->lock);
    }
    if (a->dropped > 0)
        log_warnx("egress: %llu audit records not written by the shutdown's deadline: the "
                  "database was locked by another process, or slow",
                  (unsigned long long)a->dropped);
    return NULL;
}

int
egress_audit_start(struct store *store, struct egress_audit **out, struct err **errp)
{
    struct egress_audit *a = xcalloc(1, sizeof(*a));
    int rc;

    a->store = store;
    a->next_key = 1;
    store_busy_handler(store, busy, a);
    pthread_mutex_init(&a->lock, NULL);
    pthread_cond_init(&a->more, NULL);
    pthread_cond_init(&a->drained, NULL);
    if ((rc = pthread_create(&a->thread, NULL, writer, a)) != 0) {
        store_busy_handler(store, NULL, NULL); /* the store outlives a, in the caller's hands */
        pthread_mutex_destroy(&a->lock);
        pthread_cond_destroy(&a->more);
        pthread_cond_destroy(&a->drained);
        free(a);
        return err_set(errp, ERR_INTERNAL, rc, "start the audit writer");
    }
    *out = a;
    return 0;
}

/* Queues a record; false (and nothing queued) when the queue is full. */
static bool
push(struct egress_audit *a, const struct store_egress *r, uint64_t key, bool open, bool force)
{
    struct op *o;

    pthread_mutex_lock(&a->lock);
    if (a->queued >= AUDIT_QUEUE_MAX && !force) {
        pthread_mutex_unlock(&a->lock);
        return false;
    }
    o = xmalloc(sizeof(*o));
    o->next = NULL;
    o->key = key;
    o->open = open;
    o->r = *r;
    if (a->tail != NULL)
        a->tail->next = o;
    else
        a->head = o;
    a->tail = o;
    a->queued++;
    a->enqueued++;
    pthread_cond_signal(&a->more);
    pthread_mutex_unlock(&a->lock);
    return true;
}

uint64_t
egress_audit_open(struct egress_audit *a, const struct store_egress *r)
{
    uint64_t key = a->next_key++;

    return push(a, r, key, true, false) ? key : 0;
}

void
egress_audit_close(struct egress_audit *a, uint64_t key, const struct store_egress *r)
{
    /* The end of a connection whose start is queued or written is always taken: its record
     * must not stay "open". A record of its own waits for room like a new connection. */
    if (!push(a, r, key, false, key != 0))
        log_warnx("egress: audit queue full (%d records): a record of %s:%d lost", AUDIT_QUEUE_MAX,
                  r->host, r->port);
}

void
egress_audit_sync(struct egress_audit *a, int timeout_ms)
{
    struct timespec until = util_deadline(timeout_ms);

    pthread_mutex_lock(&a->lock);
    /* Every record handed over before now, not an empty queue: under steady traffic the
     * queue is never empty, and a listing would always wait the whole timeout. */
    for (uint64_t target = a->enqueued; a->written < target;)
        if (pthread_cond_clockwait(&a->drained, &a->lock, CLOCK_MONOTONIC, &until) != 0)
            break;
    pthread_mutex_unlock(&a->lock);
}

size_t
egress_audit_queued(struct egress_audit *a)
{
    size_t n;

    pthread_mutex_lock(&a->lock);
    n = a->queued;
    pthread_mutex_unlock(&a->lock);
    return n;
}

void
egress_audit_stop(struct egress_audit *a, int timeout_ms)
{
    if (a == NULL)
        return;
    pthread_mutex_lock(&a->lock);
    a->stop = true;
    atomic_store(&a->stop_by_ns, util_mono_ns() + (int64_t)timeout_ms * 1000000 + 1);
    pthread_cond_signal(&a->more);
    pthread_mutex_unlock(&a->lock);
    pthread_join(a->thread, NULL);
    for (size_t i = 0; i < OPEN_BUCKETS; i++)
        while (a->open[i] != NULL) {
            struct open_row *row = a->open[i];
            a->open[i] = row->next;
            free(row);
        }
    pthread_mutex_destroy(&a->lock);
    pthread_cond_destroy(&a->more);
    pthread_cond_destroy(&a->drained);
    store_close(a->store);
    free(a);
}
