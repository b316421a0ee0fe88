/*
 * Environment lifecycle. Every state change of one environment happens under an exclusive
 * flock on DATA/locks/<id>, so two paddock processes (two CLI calls, or the CLI and the
 * server) never start, stop or delete the same environment at once. Reads reconcile: a row
 * that says running whose init is gone is corrected to stopped, and a row left "creating"
 * by a process that died (its lock is free) is removed with its volume.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "env.h"

struct env_ctx {
    char *data_dir;
    char *envs_dir;
    char *images_dir;
    char *locks_dir;
    char *image_host; /* set once storage is ready */
    uint64_t storage_size;
    struct store *store;
};

uint32_t
env_host_id(const struct store_env *e)
{
    return SANDBOX_ID_BASE + e->uid_slot * SANDBOX_ID_RANGE;
}

int
env_ctx_open(const char *data_dir, uint64_t storage_size, struct env_ctx **out,
             struct err **errp)
{
    struct env_ctx *c;
    cleanup_free char *db = NULL;
    struct statvfs vfs;

    if (util_mkdir_p(data_dir, 0700, errp) < 0)
        return err_wrap(errp, "data directory");
    c = xcalloc(1, sizeof(*c));
    c->data_dir = xstrdup(data_dir);
    c->envs_dir = xasprintf("%s/envs", data_dir);
    c->images_dir = xasprintf("%s/images", data_dir);
    c->locks_dir = xasprintf("%s/locks", data_dir);
    if (storage_size == 0) {
        storage_size = ENV_DEFAULT_STORAGE;
        if (statvfs(data_dir, &vfs) == 0 &&
            (uint64_t)vfs.f_bavail * vfs.f_frsize / 2 < storage_size)
            storage_size = (uint64_t)vfs.f_bavail * vfs.f_frsize / 2;
    }
    c->storage_size = storage_size;
    db = xasprintf("%s/paddock.db", data_dir);
    if (util_mkdir_p(c->locks_dir, 0700, errp) < 0 || store_open(db, &c->store, errp) < 0) {
        env_ctx_close(c);
        return -1;
    }
    *out = c;
    return 0;
}

void
env_ctx_close(struct env_ctx *c)
{
    if (c == NULL)
        return;
    store_close(c->store);
    free(c->data_dir);
    free(c->envs_dir);
    free(c->images_dir);
    free(c->locks_dir);
    free(c->image_host);
    free(c);
}

static int
ensure_storage(struct env_ctx *c, struct err **errp)
{
    if (c->image_host != NULL)
        return 0;
    if (sandbox_storage_ensure(c->data_dir, c->storage_size, errp) < 0 ||
        sandbox_image_ensure_host(c->images_dir, &c->image_host, errp) < 0)
        return -1;
    return 0;
}

/* Takes the environment's lock: blocking, or returns -2 when busy and !wait. */
static int
lock_env(struct env_ctx *c, const char *id, bool wait, struct err **errp)
{
    cleanup_free char *path = xasprintf("%s/%s", c->locks_dir, id);
    cleanup_close int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);

    if (fd < 0)
        return err_set(errp, ERR_IO, errno, "lock %s", id);
    if (flock(fd, LOCK_EX | (wait ? 0 : LOCK_NB)) < 0) {
        if (errno == EWOULDBLOCK)
            return -2;
        return err_set(errp, ERR_IO, errno, "lock %s", id);
    }
    return steal_fd(&fd);
}

static char *
volume_dir(struct env_ctx *c, const char *id)
{
    return xasprintf("%s/%s", c->envs_dir, id);
}

static struct sandbox_init
init_of(const struct store_env *e)
{
    struct sandbox_init i = {(pid_t)e->init_pid, e->init_start};
    return i;
}

/* Brings a row in line with reality; ERR_NOT_FOUND when it turned out to be a dead create. */
static int
reconcile(struct env_ctx *c, struct store_env *e, struct err **errp)
{
    struct sandbox_init init = init_of(e);
    cleanup_close int lock = -1;

    if (e->state == STORE_ENV_RUNNING && !sandbox_alive(&init)) {
        lock = lock_env(c, e->id, true, errp);
        if (lock < 0 || store_env_get(c->store, e->id, e, errp) < 0)
            return -1;
        init = init_of(e);
        if (e->state == STORE_ENV_RUNNING && !sandbox_alive(&init)) {
            sandbox_stop(e->id, &init, NULL); /* only its cgroups are left to remove */
            if (store_env_set_state(c->store, e->id, STORE_ENV_STOPPED, 0, 0, errp) < 0)
                return -1;
            e->state = STORE_ENV_STOPPED;
            e->init_pid = 0;
            e->init_start = 0;
        }
    } else if (e->state == STORE_ENV_CREATING) {
        lock = lock_env(c, e->id, false, errp);
        if (lock == -2)
            return 0; /* its creator is still at work */
        if (lock < 0)
            return -1;
        if (ensure_storage(c, NULL) == 0)
            sandbox_volume_destroy(c->envs_dir, e->id, NULL);
        sandbox_stop(e->id, &init, NULL);
        store_env_delete(c->store, e->id, NULL);
        return err_set(errp, ERR_NOT_FOUND, 0, "environment %s was never finished", e->id);
    }
    return 0;
}

int
env_get(struct env_ctx *c, const char *id, struct store_env *out, struct err **errp)
{
    if (!util_id_valid("env_", id))
        return err_set(errp, ERR_NOT_FOUND, 0, "no environment '%s'", id);
    if (store_env_get(c->store, id, out, errp) < 0 || reconcile(c, out, errp) < 0)
        return -1;
    return 0;
}

int
env_list(struct env_ctx *c, struct store_env **out, size_t *n_out, struct err **errp)
{
    struct store_env *v = NULL;
    size_t n = 0, k = 0;

    if (store_env_list(c->store, &v, &n, errp) < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        struct err *e = NULL;
        if (reconcile(c, &v[i], &e) < 0) {
            bool gone = e->code == ERR_NOT_FOUND;
            if (!gone) {
                free(v);
                *errp = e;
                return -1;
            }
            err_free(e);
            continue;
        }
        v[k++] = v[i];
    }
    *out = v;
    *n_out = k;
    return 0;
}

static int
start_locked(struct env_ctx *c, struct store_env *e, struct err **errp)
{
    cleanup_free char *dir = volume_dir(c, e->id);
    struct sandbox_init init;
    struct sandbox_spec spec = {
        .id = e->id,
        .env_dir = dir,
        .image_dir = NULL,
        .host_id = env_host_id(e),
        .memory_bytes = e->memory_bytes,
        .cpus_milli = e->cpus_milli,
        .pids = e->pids,
    };

    if (ensure_storage(c, errp) < 0)
        return -1;
    spec.image_dir = c->image_host;
    if (sandbox_start(&spec, &init, errp) < 0)
        return -1;
    if (store_env_set_state(c->store, e->id, STORE_ENV_RUNNING, init.pid, init.start, errp) < 0) {
        sandbox_stop(e->id, &init, NULL);
        return -1;
    }
    e->state = STORE_ENV_RUNNING;
    e->init_pid = init.pid;
    e->init_start = init.start;
    return 0;
}

static int
validate(const struct env_create_opts *o, struct err **errp)
{
    if (o->network != NULL && strcmp(o->network, "disabled") != 0 &&
        strcmp(o->network, "open") != 0)
        return err_set(errp, ERR_INVALID, 0, "network must be 'disabled' or 'open', not '%s'",
                       o->network);
    if (o->memory_bytes != 0 && o->memory_bytes < (4ULL << 20))
        return err_set(errp, ERR_INVALID, 0, "memory must be at least 4M");
    if (o->pids != 0 && o->pids < 8)
        return err_set(errp, ERR_INVALID, 0, "pids must be at least 8");
    if (o->disk_bytes != 0 && o->disk_bytes < (16ULL << 20))
        return err_set(errp, ERR_INVALID, 0, "disk must be at least 16M");
    if (o->cpus_milli != 0 && o->cpus_milli < 10)
        return err_set(errp, ERR_INVALID, 0, "cpus must be at least 0.01");
    return 0;
}

int
env_create(struct env_ctx *c, const struct env_create_opts *o, struct store_env *out,
           struct err **errp)
{
    struct store_env e;
    cleanup_close int lock = -1;
    int64_t now = util_now_ms();

    if (validate(o, errp) < 0)
        return -1;
    memset(&e, 0, sizeof(e));
    if (util_id_new("env_", e.id, sizeof(e.id), errp) < 0)
        return -1;
    e.state = STORE_ENV_CREATING;
    snprintf(e.network, sizeof(e.network), "%s", o->network ? o->network : "disabled");
    snprintf(e.image, sizeof(e.image), "host");
    e.memory_bytes = o->memory_bytes ? o->memory_bytes : ENV_DEFAULT_MEMORY;
    e.cpus_milli = o->cpus_milli ? o->cpus_milli : ENV_DEFAULT_CPUS_MILLI;
    e.pids = o->pids ? o->pids : ENV_DEFAULT_PIDS;
    e.disk_bytes = o->disk_bytes ? o->disk_bytes : ENV_DEFAULT_DISK;
    e.created_ms = e.updated_ms = e.last_used_ms = now;
    /* Lock before the row exists, so no reader takes it for an abandoned create. */
    lock = lock_env(c, e.id, true, errp);
    if (lock < 0)
        return err_wrap(errp, "create environment");
    if (ensure_storage(c, errp) < 0 || store_env_insert(c->store, &e, SANDBOX_ID_SLOTS, errp) < 0)
        return err_wrap(errp, "create environment");
    if (sandbox_volume_create(c->envs_dir, e.id, env_host_id(&e), e.disk_bytes, errp) < 0)
        goto rollback_row;
    if (start_locked(c, &e, errp) < 0)
        goto rollback_volume;
    *out = e;
    return 0;

rollback_volume:
    sandbox_volume_destroy(c->envs_dir, e.id, NULL);
rollback_row:
    store_env_delete(c->store, e.id, NULL);
    return err_wrap(errp, "create environment");
}

/*
 * Reconciles an environment, then takes its lock and reads its row again under it: the
 * start of every lifecycle change. Returns the lock's fd.
 */
static int
lock_and_load(struct env_ctx *c, const char *id, struct store_env *e, struct err **errp)
{
    cleanup_close int lock = -1;

    if (env_get(c, id, e, errp) < 0)
        return -1;
    lock = lock_env(c, id, true, errp);
    if (lock < 0 || store_env_get(c->store, id, e, errp) < 0)
        return -1;
    return steal_fd(&lock);
}

int
env_start(struct env_ctx *c, const char *id, struct store_env *out, struct err **errp)
{
    struct store_env e;
    cleanup_close int lock = lock_and_load(c, id, &e, errp);
    struct sandbox_init init;

    if (lock < 0)
        return -1;
    init = init_of(&e);
    if (!(e.state == STORE_ENV_RUNNING && sandbox_alive(&init))) {
        if (e.state == STORE_ENV_RUNNING)
            sandbox_stop(id, &init, NULL);
        if (start_locked(c, &e, errp) < 0)
            return -1;
    }
    if (out != NULL)
        *out = e;
    return 0;
}

int
env_stop(struct env_ctx *c, const char *id, struct err **errp)
{
    struct store_env e;
    cleanup_close int lock = lock_and_load(c, id, &e, errp);
    struct sandbox_init init;

    if (lock < 0)
        return -1;
    if (e.state != STORE_ENV_RUNNING)
        return 0;
    init = init_of(&e);
    if (sandbox_stop(id, &init, errp) < 0)
        return -1;
    return store_env_set_state(c->store, id, STORE_ENV_STOPPED, 0, 0, errp);
}

int
env_destroy(struct env_ctx *c, const char *id, struct err **errp)
{
    struct store_env e;
    cleanup_close int lock = lock_and_load(c, id, &e, errp);
    cleanup_free char *lockpath = NULL;
    struct sandbox_init init;

    if (lock < 0)
        return -1;
    init = init_of(&e);
    if (sandbox_stop(id, &init, errp) < 0 || ensure_storage(c, errp) < 0 ||
        sandbox_volume_destroy(c->envs_dir, id, errp) < 0)
        return err_wrap(errp, "delete %s", id);
    if (store_env_delete(c->store, id, errp) < 0)
        return -1;
    lockpath = xasprintf("%s/%s", c->locks_dir, id);
    unlink(lockpath);
    return 0;
}

int
env_use(struct env_ctx *c, const char *id, char **dir_out, struct err **errp)
{
    struct store_env e;

    if (env_get(c, id, &e, errp) < 0)
        return -1;
    if (e.state != STORE_ENV_RUNNING && env_start(c, id, &e, errp) < 0)
        return -1;
    store_env_touch(c->store, id, NULL);
    *dir_out = volume_dir(c, id);
    return 0;
}

int
env_teardown(struct env_ctx *c, struct err **errp)
{
    cleanup_free struct store_env *v = NULL;
    size_t n = 0;

    if (env_list(c, &v, &n, errp) < 0)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (v[i].state == STORE_ENV_RUNNING && env_stop(c, v[i].id, errp) < 0)
            return -1;
    return sandbox_storage_unmount(c->data_dir, errp);
}
