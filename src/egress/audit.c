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
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "egress_int.h"
#include "store/store.h"

#define AUDIT_QUEUE_MAX 65536 /* records waiting; past it, new connections are refused */
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

struct egress_audit {
    struct store *store;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t more;
    struct op *head, *tail;              /* under lock */
    size_t queued;                       /* under lock */
    bool stop;                           /* under lock */
    bool writing;                        /* under lock: the writer has a batch in hand */
    pthread_cond_t drained;              /* nothing queued and nothing in hand */
    uint64_t next_key;                   /* the loop's */
    uint64_t lost;                       /* writer's: records that could not be written */
    struct open_row *open[OPEN_BUCKETS]; /* writer's */
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
write_one(struct egress_audit *a, struct op *o)
{
    struct err *e = NULL;
    int64_t id = 0;
    bool found = false;

    if (!o->open && o->key != 0) {
        /* The end of an allowed connection: complete its record, or write it whole if that
         * record could not be written or has been purged (a connection past the retention). */
        struct open_row **pp = open_slot(a, o->key), *row = *pp;
        if (row != NULL) {
            *pp = row->next;
            id = row->id;
            free(row);
            if (store_egress_update(a->store, id, &o->r, &found, &e) == 0 && found)
                return;
            if (e != NULL) {
                a->lost++;
                log_warnx("egress: audit record %lld not completed: %s", (long long)id, e->msg);
                err_free(e);
                return;
            }
        }
    }
    if (store_egress_insert(a->store, &o->r, &id, &e) < 0) {
        a->lost++;
        log_warnx("egress: audit record lost (%llu so far): %s", (unsigned long long)a->lost,
                  e->msg);
        err_free(e);
        return;
    }
    if (o->open) {
        struct open_row *row = xcalloc(1, sizeof(*row));
        struct open_row **pp = open_slot(a, o->key);
        row->key = o->key;
        row->id = id;
        row->next = *pp;
        *pp = row;
    }
}

static void *
writer(void *arg)
{
    struct egress_audit *a = arg;

    for (;;) {
        struct op *list;
        bool stop, tx;

        pthread_mutex_lock(&a->lock);
        while (a->head == NULL && !a->stop)
            pthread_cond_wait(&a->more, &a->lock);
        list = a->head;
        stop = a->stop;
        a->head = a->tail = NULL;
        a->queued = 0;
        a->writing = list != NULL;
        pthread_mutex_unlock(&a->lock);
        if (list == NULL && stop)
            break;
        /* One transaction for the batch: one WAL commit, not one per record. Without it
         * (the database busy past its timeout) each record commits alone. */
        tx = list != NULL && list->next != NULL && store_begin(a->store, NULL) == 0;
        for (struct op *o = list, *n; o != NULL; o = n) {
            n = o->next;
            write_one(a, o);
            free(o);
        }
        if (tx && store_commit(a->store, NULL) < 0) {
            log_warnx("egress: a batch of audit records could not be committed");
            a->lost++;
        }
        pthread_mutex_lock(&a->lock);
        a->writing = false;
        if (a->head == NULL)
            pthread_cond_broadcast(&a->drained);
        pthread_mutex_unlock(&a->lock);
    }
    return NULL;
}

int
egress_audit_start(struct store *store, struct egress_audit **out, struct err **errp)
{
    struct egress_audit *a = xcalloc(1, sizeof(*a));
    int rc;

    a->store = store;
    a->next_key = 1;
    pthread_mutex_init(&a->lock, NULL);
    pthread_cond_init(&a->more, NULL);
    pthread_cond_init(&a->drained, NULL);
    if ((rc = pthread_create(&a->thread, NULL, writer, a)) != 0) {
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
    struct timespec until;

    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&a->lock);
    while ((a->head != NULL || a->writing) &&
           pthread_cond_timedwait(&a->drained, &a->lock, &until) == 0)
        ;
    pthread_mutex_unlock(&a->lock);
}

void
egress_audit_stop(struct egress_audit *a)
{
    if (a == NULL)
        return;
    pthread_mutex_lock(&a->lock);
    a->stop = true;
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
