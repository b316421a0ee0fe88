/*
 * The warm pool: sandboxes started ahead of demand, so that creating an environment is a
 * claim (limits written, one UPDATE) instead of namespaces, mounts and a new init.
 *
 * A pooled sandbox is an ordinary row in state "pooled", with its own id, uid range, volume
 * and cgroups, started with neutral settings (the default limits, no network policy, no
 * project, no files of anyone). No list and no lookup shows it. env_create() claims one
 * when the request copies no other environment: under the sandbox's lock it writes the
 * requested cgroup and disk limits, then one UPDATE makes the row the user's (network,
 * limits, project, config, times); the start hook then gives it its egress listener, as
 * for any start. A pooled sandbox has run no command, so nothing of one user can reach
 * another through it; once claimed it is that user's environment and is never pooled again.
 *
 * Who refills: only a process that asked for it with env_pool_start() (`paddock serve`),
 * from a thread of its own; every sandbox start of a server goes through its spawner.
 * A CLI process claims from the pool a server keeps but never refills it.
 *
 * Crashes: a pooled row whose lock is free and whose init is dead is removed (sandbox,
 * volume, row) by the next refill pass, claim or teardown; one being made holds its lock.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "env_int.h"

static void
unlink_lock(struct env_ctx *c, const char *id)
{
    cleanup_free char *lockpath = xasprintf("%s/%s", c->locks_dir, id);

    unlink(lockpath);
}

/*
 * Removes the pooled sandbox e, whose lock the caller holds: its processes (by cgroup, so an
 * init the row never recorded goes too), cgroups, volume, then the row. When the sandbox or
 * its volume cannot be removed, the row stays (and with it the uid range, which no new
 * sandbox may get while processes of the old one may live) for the next pass to retry.
 */
static int
remove_locked(struct env_ctx *c, const struct store_env *e, struct err **errp)
{
    struct sandbox_init init = env__init_of(e);

    if (sandbox_stop(e->id, &init, errp) < 0 || env__ensure_storage(c, errp) < 0 ||
        sandbox_volume_destroy(c->envs_dir, e->id, errp) < 0 ||
        store_env_delete(c->store, e->id, errp) < 0)
        return err_wrap(errp, "remove pooled sandbox %s", e->id);
    unlink_lock(c, e->id);
    return 0;
}

/* remove_locked() for the passes that go on: a failure is logged and retried next time. */
static void
discard_locked(struct env_ctx *c, const struct store_env *e)
{
    struct err *er = NULL;

    if (remove_locked(c, e, &er) < 0) {
        log_warnx("warm pool: %s (kept for the next pass)", er->msg);
        err_free(er);
    }
}

/*
 * Whether the pooled row id was started by this build of paddock. A sandbox carries the
 * seccomp filter, mounts and init of the binary that started it: after an upgrade, the
 * sandboxes the old binary pooled are removed rather than handed to a user.
 */
static bool
same_build(struct env_ctx *c, const char *id)
{
    cleanup_free char *config = NULL;
    json_t *j;
    bool same;

    if (store_env_config(c->store, id, &config, NULL) < 0)
        return false;
    j = json_loads(config, 0, NULL);
    same = j != NULL &&
           strcmp(json_string_value(json_object_get(j, "_pool_build")) ?: "", util_build_id()) == 0;
    json_decref(j);
    return same;
}

/*
 * Locks the pooled row id without waiting and reads it again. Returns the lock, -2 when the
 * row is busy (being made or claimed) or no longer pooled, -1 on error.
 */
static int
lock_pooled(struct env_ctx *c, const char *id, struct store_env *e, struct err **errp)
{
    cleanup_close int lock = env__lock(c, id, false, errp);

    struct err *er = NULL;

    if (lock < 0)
        return lock;
    if (store_env_get(c->store, id, e, &er) < 0) {
        /* Removed since the list was read: the lock file taken just now is litter. */
        if (er->code == ERR_NOT_FOUND)
            unlink_lock(c, id);
        err_free(er);
        return -2;
    }
    if (e->state != STORE_ENV_POOLED)
        return -2;
    return steal_fd(&lock);
}

/* Gives the locked, live pooled sandbox cand to want: limits first, then the row. */
static int
claim_locked(struct env_ctx *c, const struct store_env *cand, struct store_env *want,
             const char *config, struct err **errp)
{
    /* Every limit is written, whatever the pooled sandbox had: a claim that failed half-way
     * (or a crash after the writes) leaves nothing a later claim would inherit. */
    if (sandbox_set_limits(cand->id, want->memory_bytes, want->cpus_milli, want->pids, errp) < 0 ||
        env__ensure_storage(c, errp) < 0 ||
        sandbox_volume_set_disk(c->envs_dir, cand->id, want->disk_bytes, errp) < 0)
        return -1;
    if (store_env_claim(c->store, cand->id, want, config, errp) < 0)
        return -1;
    memcpy(want->id, cand->id, sizeof(want->id));
    want->uid_slot = cand->uid_slot;
    want->init_pid = cand->init_pid;
    want->init_start = cand->init_start;
    want->init_gen = cand->init_gen;
    return 0;
}

int
env__pool_claim(struct env_ctx *c, struct store_env *want, const char *config, int *lock_out)
{
    cleanup_free struct store_env *v = NULL;
    size_t n = 0;
    struct err *er = NULL;

    if (store_env_list_pooled(c->store, &v, &n, NULL) < 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        struct store_env e;
        struct sandbox_init init;
        cleanup_close int lock = lock_pooled(c, v[i].id, &e, NULL);

        if (lock < 0)
            continue;
        init = env__init_of(&e);
        if (!sandbox_alive(&init) || !same_build(c, e.id)) {
            discard_locked(c, &e);
            continue;
        }
        if (claim_locked(c, &e, want, config, &er) < 0) {
            /* A row that is no longer pooled (ERR_CONFLICT) is someone's: left alone, and
             * the next one is tried. Any other failure (limits refused, the database busy)
             * may be the machine's rather than this sandbox's: this one leaves the pool,
             * the others are not tried, and the caller starts a new sandbox. */
            bool gone = er->code == ERR_CONFLICT;
            log_debug("%s: %s: %s", __func__, e.id, er->msg);
            err_free(er);
            er = NULL;
            if (gone)
                continue;
            discard_locked(c, &e);
            return 0;
        }
        *lock_out = steal_fd(&lock);
        return 1;
    }
    return 0;
}

/* Starts one pooled sandbox with neutral settings. */
static int
make_one(struct env_ctx *c, struct err **errp)
{
    struct store_env e;
    cleanup_close int lock = -1;
    cleanup_free char *config = NULL;
    int64_t now = util_now_ms();

    memset(&e, 0, sizeof(e));
    if (util_id_new("env_", e.id, sizeof(e.id), errp) < 0)
        return -1;
    e.state = STORE_ENV_POOLED;
    snprintf(e.network, sizeof(e.network), "disabled");
    snprintf(e.image, sizeof(e.image), "host");
    e.memory_bytes = ENV_DEFAULT_MEMORY;
    e.cpus_milli = ENV_DEFAULT_CPUS_MILLI;
    e.pids = ENV_DEFAULT_PIDS;
    e.disk_bytes = ENV_DEFAULT_DISK;
    e.created_ms = e.updated_ms = e.last_used_ms = now;
    snprintf(e.project, sizeof(e.project), "default");
    /* Locked from before the row exists until it runs: claimers skip it, and a crash in
     * between leaves a row with a free lock and no init, which the next pass removes. */
    lock = env__lock(c, e.id, true, errp);
    if (lock < 0)
        return -1;
    config = xasprintf("{\"_pool_build\": \"%s\"}", util_build_id());
    if (env__ensure_storage(c, errp) < 0 ||
        store_env_insert(c->store, &e, config, SANDBOX_ID_SLOTS, errp) < 0) {
        unlink_lock(c, e.id); /* no row: the lock file would be left behind every retry */
        return -1;
    }
    if (sandbox_volume_create(c->envs_dir, e.id, env_host_id(&e), e.disk_bytes, errp) < 0 ||
        env__start_locked(c, &e, STORE_ENV_POOLED, errp) < 0) {
        discard_locked(c, &e);
        return -1;
    }
    return 0;
}

int
env_pool_fill(struct env_ctx *c, size_t size, size_t max_new, size_t *made, struct err **errp)
{
    cleanup_free struct store_env *v = NULL;
    size_t n = 0, ready = 0;

    if (made != NULL)
        *made = 0;
    if (store_env_list_pooled(c->store, &v, &n, errp) < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        struct store_env e;
        struct sandbox_init init = env__init_of(&v[i]);
        cleanup_close int lock = -1;

        /* A live one of this build is counted without its lock, which a claim racing this
         * pass would otherwise find taken (and fall back to a cold start for). */
        if (sandbox_alive(&init) && same_build(c, v[i].id)) {
            ready++;
            continue;
        }
        lock = lock_pooled(c, v[i].id, &e, NULL);
        if (lock == -2) {
            ready++; /* being made by another process, or being claimed */
            continue;
        }
        if (lock < 0)
            continue;
        init = env__init_of(&e);
        if (sandbox_alive(&init) && same_build(c, e.id))
            ready++;
        else
            discard_locked(c, &e);
    }
    for (size_t k = 0; ready < size && k < max_new; ready++, k++) {
        if (make_one(c, errp) < 0)
            return err_wrap(errp, "warm pool");
        if (made != NULL)
            (*made)++;
    }
    return 0;
}

int
env__pool_drain(struct env_ctx *c, struct err **errp)
{
    cleanup_free struct store_env *v = NULL;
    size_t n = 0;

    if (store_env_list_pooled(c->store, &v, &n, errp) < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        struct store_env e;
        cleanup_close int lock = env__lock(c, v[i].id, true, errp);

        if (lock < 0)
            return -1;
        if (store_env_get(c->store, v[i].id, &e, NULL) == 0 && e.state == STORE_ENV_POOLED &&
            remove_locked(c, &e, errp) < 0)
            return -1;
    }
    return 0;
}

/* ------------------------------------------------------------- the refiller */

#define REFILL_DELAY_MS 20

struct refiller {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    bool kicked;
    bool full;
    size_t size;
    char *data_dir;
    uint64_t storage_size;
};

static struct refiller *refiller;
static pthread_mutex_t refiller_mu = PTHREAD_MUTEX_INITIALIZER;

/*
 * Waits until kicked, stopped or ms pass; after a kick, REFILL_DELAY_MS more, so that the
 * claimer's first commands do not share the CPUs with a sandbox start (a start is ~5 ms of
 * work for two or three processes; on a 2-core machine it doubles the first exec's time).
 * Returns false when stopping.
 */
static bool
refiller_wait(struct refiller *r, int64_t ms)
{
    struct timespec ts = util_deadline(ms);
    bool kicked;

    pthread_mutex_lock(&r->mu);
    while (!r->stop && !r->kicked)
        if (pthread_cond_clockwait(&r->cv, &r->mu, CLOCK_MONOTONIC, &ts) == ETIMEDOUT)
            break;
    kicked = r->kicked;
    r->kicked = false;
    if (kicked && !r->stop) {
        ts = util_deadline(REFILL_DELAY_MS);
        while (!r->stop &&
               pthread_cond_clockwait(&r->cv, &r->mu, CLOCK_MONOTONIC, &ts) != ETIMEDOUT)
            ;
        r->kicked = false;
    }
    kicked = !r->stop;
    pthread_mutex_unlock(&r->mu);
    return kicked;
}

static void *
refiller_main(void *arg)
{
    struct refiller *r = arg;
    struct env_ctx *ctx = NULL;
    struct err *e = NULL;
    int64_t wait_ms = 1000;

    do {
        size_t made = 0;
        bool failed = false;
        if (ctx == NULL && env_ctx_open(r->data_dir, r->storage_size, &ctx, &e) < 0) {
            log_warnx("%s: %s", __func__, e->msg);
            err_free(e);
            e = NULL;
            continue;
        }
        /* After a failure (no uid range left, storage full), wait for the next tick rather
         * than retrying at once. */
        wait_ms = 1000;
        /* One start per pass: a stop waits for one sandbox start at most. */
        if (env_pool_fill(ctx, r->size, 1, &made, &e) < 0) {
            failed = true;
            log_warnx("%s: %s", __func__, e->msg);
            err_free(e);
            e = NULL;
        }
        pthread_mutex_lock(&r->mu);
        r->full = !failed && made == 0;
        pthread_mutex_unlock(&r->mu);
        if (made > 0)
            wait_ms = 0; /* a claim may have come in meanwhile: check again */
    } while (refiller_wait(r, wait_ms));
    env_ctx_close(ctx);
    return NULL;
}

int
env_pool_start(const char *data_dir, uint64_t storage_size, size_t size, struct err **errp)
{
    struct refiller *r;

    if (size == 0)
        return 0;
    r = xcalloc(1, sizeof(*r));
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL); /* waited on by the monotonic clock: util_deadline() */
    r->size = size;
    r->data_dir = xstrdup(data_dir);
    r->storage_size = storage_size;
    pthread_mutex_lock(&refiller_mu);
    if (refiller != NULL || pthread_create(&r->thread, NULL, refiller_main, r) != 0) {
        bool running = refiller != NULL;
        pthread_mutex_unlock(&refiller_mu);
        free(r->data_dir);
        free(r);
        return err_set(errp, running ? ERR_CONFLICT : ERR_INTERNAL, running ? 0 : errno,
                       "start the warm pool's refiller");
    }
    refiller = r;
    pthread_mutex_unlock(&refiller_mu);
    return 0;
}

void
env_pool_stop(void)
{
    struct refiller *r;

    pthread_mutex_lock(&refiller_mu);
    r = refiller;
    refiller = NULL;
    pthread_mutex_unlock(&refiller_mu);
    if (r == NULL)
        return;
    pthread_mutex_lock(&r->mu);
    r->stop = true;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r->data_dir);
    free(r);
}

void
env__pool_kick(void)
{
    pthread_mutex_lock(&refiller_mu);
    if (refiller != NULL) {
        pthread_mutex_lock(&refiller->mu);
        refiller->kicked = true;
        refiller->full = false;
        pthread_cond_signal(&refiller->cv);
        pthread_mutex_unlock(&refiller->mu);
    }
    pthread_mutex_unlock(&refiller_mu);
}

bool
env_pool_full(void)
{
    bool full = false;

    pthread_mutex_lock(&refiller_mu);
    if (refiller != NULL) {
        pthread_mutex_lock(&refiller->mu);
        full = refiller->full && !refiller->kicked;
        pthread_mutex_unlock(&refiller->mu);
    }
    pthread_mutex_unlock(&refiller_mu);
    return full;
}
