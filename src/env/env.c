/*
 * Environment lifecycle. Every state change of one environment happens under an exclusive
 * flock on DATA/locks/<id>, so two paddock processes (two CLI calls, or the CLI and the
 * server) never start, stop or delete the same environment at once. Reads reconcile: a row
 * that says running whose init is gone is corrected to stopped, and a row left "creating"
 * by a process that died (its lock is free) is removed with its volume.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include "env_int.h"
#include "node_proxy_cjs.h" /* generated from src/env/node-proxy.cjs */

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
    c->uploads_dir = xasprintf("%s/uploads", data_dir);
    if (storage_size == 0) {
        storage_size = ENV_DEFAULT_STORAGE;
        if (statvfs(data_dir, &vfs) == 0 &&
            (uint64_t)vfs.f_bavail * vfs.f_frsize / 2 < storage_size)
            storage_size = (uint64_t)vfs.f_bavail * vfs.f_frsize / 2;
    }
    c->storage_size = storage_size;
    db = xasprintf("%s/paddock.db", data_dir);
    if (util_mkdir_p(c->locks_dir, 0700, errp) < 0 || util_mkdir_p(c->uploads_dir, 0700, errp) < 0 ||
        store_open(db, &c->store, errp) < 0) {
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
    free(c->uploads_dir);
    free(c->image_host);
    for (size_t i = 0; i < c->n_backoffs; i++)
        free(c->backoffs[i].id);
    free(c->backoffs);
    free(c);
}

static void seed_image(struct env_ctx *c);

int
env__ensure_storage(struct env_ctx *c, struct err **errp)
{
    if (c->image_host != NULL)
        return 0;
    if (sandbox_storage_ensure(c->data_dir, c->storage_size, errp) < 0 ||
        sandbox_image_ensure_host(c->images_dir, &c->image_host, errp) < 0)
        return -1;
    seed_image(c);
    return 0;
}

/* Takes the environment's lock as op says (LOCK_EX or LOCK_SH, | LOCK_NB: -2 when busy). */
static int
lock_op(struct env_ctx *c, const char *id, int op, struct err **errp)
{
    cleanup_free char *path = xasprintf("%s/%s", c->locks_dir, id);
    cleanup_close int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);

    if (fd < 0)
        return err_set(errp, ERR_IO, errno, "lock %s", id);
    if (flock(fd, op) < 0) {
        if (errno == EWOULDBLOCK)
            return -2;
        return err_set(errp, ERR_IO, errno, "lock %s", id);
    }
    return steal_fd(&fd);
}

/* Takes the environment's lock: blocking, or returns -2 when busy and !wait. */
int
env__lock(struct env_ctx *c, const char *id, bool wait, struct err **errp)
{
    return lock_op(c, id, LOCK_EX | (wait ? 0 : LOCK_NB), errp);
}

char *
env__volume_dir(struct env_ctx *c, const char *id)
{
    return xasprintf("%s/%s", c->envs_dir, id);
}

static int lock_and_load(struct env_ctx *c, const char *id, struct store_env *e,
                         struct err **errp);

struct sandbox_init
env__init_of(const struct store_env *e)
{
    struct sandbox_init i = {(pid_t)e->init_pid, e->init_start};
    return i;
}

/*
 * Removes what a create that did not finish left: its sandbox, its volume, then its row. A
 * sandbox or volume that cannot be removed keeps its row ("creating"), so that the next
 * reconcile tries again, and one log line says why: a row deleted over a volume left behind
 * would leak the volume for good (nothing looks for volumes without a row).
 */
static void
discard_unfinished(struct env_ctx *c, const struct store_env *e)
{
    struct sandbox_init init = env__init_of(e);
    struct err *er = NULL;

    if (sandbox_stop(e->id, &init, &er) < 0 || env__ensure_storage(c, &er) < 0 ||
        sandbox_volume_destroy(c->envs_dir, e->id, &er) < 0) {
        log_warnx("environment %s: removing an unfinished create: %s (kept for the next "
                  "reconcile)",
                  e->id, er->msg);
        err_free(er);
        return;
    }
    store_env_delete(c->store, e->id, NULL);
}

static int stop_locked(struct env_ctx *c, const struct store_env *e, struct err **errp);

/*
 * Brings a row in line with reality: a running row whose init is gone becomes stopped, one
 * whose sandbox runs code of an older generation (SANDBOX_INIT_GEN) is stopped, and a create
 * that did not finish is removed (ERR_NOT_FOUND).
 */
static int
reconcile(struct env_ctx *c, struct store_env *e, struct err **errp)
{
    struct sandbox_init init = env__init_of(e);
    cleanup_close int lock = -1;

    if (e->state == STORE_ENV_RUNNING &&
        (!sandbox_alive(&init) || e->init_gen < SANDBOX_INIT_GEN)) {
        lock = env__lock(c, e->id, true, errp);
        if (lock < 0 || store_env_get(c->store, e->id, e, errp) < 0)
            return -1;
        init = env__init_of(e);
        if (e->state == STORE_ENV_RUNNING && !sandbox_alive(&init)) {
            sandbox_stop(e->id, &init, NULL); /* only its cgroups are left to remove */
            if (store_env_set_state(c->store, e->id, STORE_ENV_STOPPED, 0, 0, 0, errp) < 0)
                return -1;
            e->state = STORE_ENV_STOPPED;
            e->init_pid = 0;
            e->init_start = 0;
            e->init_gen = 0;
        } else if (e->state == STORE_ENV_RUNNING && e->init_gen < SANDBOX_INIT_GEN) {
            log_warnx("environment %s: stopped: its sandbox runs code of an older paddock "
                      "(sandbox generation %u, this build's is %u) with a hole since closed; "
                      "its files are kept, and its next use starts it anew",
                      e->id, e->init_gen, SANDBOX_INIT_GEN);
            if (stop_locked(c, e, errp) < 0)
                return -1;
            e->state = STORE_ENV_STOPPED;
            e->init_pid = 0;
            e->init_start = 0;
            e->init_gen = 0;
        }
    } else if (e->state == STORE_ENV_CREATING) {
        lock = env__lock(c, e->id, false, errp);
        if (lock == -2)
            return 0; /* its creator is still at work */
        if (lock < 0)
            return -1;
        /* The row read before the lock may be stale: a creator that finished in between
         * has released the lock over a running environment, which must be left alone. */
        if (store_env_get(c->store, e->id, e, errp) < 0)
            return -1;
        if (e->state != STORE_ENV_CREATING)
            return 0;
        discard_unfinished(c, e);
        return err_set(errp, ERR_NOT_FOUND, 0, "environment %s was never finished", e->id);
    }
    return 0;
}

int
env_get(struct env_ctx *c, const char *id, struct store_env *out, struct err **errp)
{
    if (!util_id_valid("env_", id))
        return err_set(errp, ERR_NOT_FOUND, 0, "no environment '%s'", id);
    if (store_env_get(c->store, id, out, errp) < 0)
        return -1;
    /* A pooled sandbox is nobody's: it does not exist for any caller. */
    if (out->state == STORE_ENV_POOLED)
        return err_set(errp, ERR_NOT_FOUND, 0, "no environment %s", id);
    return reconcile(c, out, errp);
}

/* Reconciles rows read from the store, dropping pooled ones and those that turn out to be
 * dead creates. Takes v (owned) and hands it to *out. */
static int
reconcile_rows(struct env_ctx *c, struct store_env *v, size_t n, struct store_env **out,
               size_t *n_out, struct err **errp)
{
    size_t k = 0;

    for (size_t i = 0; i < n; i++) {
        struct err *e = NULL;
        if (v[i].state == STORE_ENV_POOLED)
            continue;
        if (reconcile(c, &v[i], &e) < 0) {
            if (e->code != ERR_NOT_FOUND) {
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

int
env_list(struct env_ctx *c, struct store_env **out, size_t *n_out, struct err **errp)
{
    struct store_env *v = NULL;
    size_t n = 0;

    if (store_env_list(c->store, &v, &n, errp) < 0)
        return -1;
    return reconcile_rows(c, v, n, out, n_out, errp);
}

static env_start_hook *start_hook;
static void *start_hook_arg;

void
env_set_start_hook(env_start_hook *fn, void *arg)
{
    start_hook = fn;
    start_hook_arg = arg;
}

/* Starts the sandbox of e and records its init with the given state. */
int
env__start_locked(struct env_ctx *c, struct store_env *e, enum store_env_state st,
                  struct err **errp)
{
    cleanup_free char *dir = env__volume_dir(c, e->id);
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

    if (env__ensure_storage(c, errp) < 0)
        return -1;
    spec.image_dir = c->image_host;
    /* Whatever still runs on this volume goes first, recorded or not (a crash between a
     * start and its record leaves a sandbox the row does not name): its cgroups are emptied.
     * Two sandboxes on one upper layer would corrupt it. */
    init = env__init_of(e);
    if (sandbox_stop(e->id, &init, errp) < 0)
        return -1;
    if (sandbox_start(&spec, &init, errp) < 0)
        return -1;
    if (store_env_set_state(c->store, e->id, st, init.pid, init.start, SANDBOX_INIT_GEN, errp) <
        0) {
        sandbox_stop(e->id, &init, NULL);
        return -1;
    }
    e->state = st;
    e->init_pid = init.pid;
    e->init_start = init.start;
    e->init_gen = SANDBOX_INIT_GEN;
    if (st != STORE_ENV_POOLED)
        env__run_start_hook(c, e);
    return 0;
}

void
env__run_start_hook(struct env_ctx *c, const struct store_env *e)
{
    if (start_hook != NULL)
        start_hook(start_hook_arg, c, e);
}

/* Whether the stored config (JSON, may be NULL) carries network.allowlist. */
static bool
config_has_allowlist(const char *config)
{
    json_t *j = config != NULL ? json_loads(config, 0, NULL) : NULL;
    bool yes = json_is_array(json_object_get(json_object_get(j, "network"), "allowlist"));

    json_decref(j);
    return yes;
}

static int
validate(const struct env_create_opts *o, struct err **errp)
{
    if (o->network != NULL && strcmp(o->network, "disabled") != 0 &&
        strcmp(o->network, "open") != 0 && strcmp(o->network, "allowlist") != 0)
        return err_set(errp, ERR_INVALID, 0, "network must be 'disabled' or 'open', not '%s'",
                       o->network);
    /* The mode alone is no policy: an allowlist without its entries would be an open proxy. */
    if (o->network != NULL && strcmp(o->network, "allowlist") == 0 &&
        !config_has_allowlist(o->config))
        return err_set(errp, ERR_INVALID, 0,
                       "network 'allowlist' needs its entries (the API's network.allowlist); "
                       "here the network is 'disabled' or 'open'");
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

/*
 * The egress proxy's trust files every environment gets, when the installation has them
 * (DATA/ca is made by the server's first start): its CA, and the system's CAs plus it.
 */
static const char *const seed_files[][2] = {
    {"ca/ca.pem", &ENV_CA_FILE[1]},
    {"ca/bundle.pem", &ENV_CA_BUNDLE[1]},
};

/* The trust files as read from DATA/ca: where each goes (relative to the root), its bytes. */
struct seed {
    const char *path;
    const char *data;
    size_t len;
};

/* The trust files, then the files paddock itself carries (ENV_NODE_PROXY). */
struct seeds {
    struct seed v[3];
    size_t n;
    char *buf[3];
};

static int place_bytes(const char *dir, const char *path, const void *data, size_t len,
                       unsigned mode, struct err **errp);

static void
load_seeds(struct env_ctx *c, struct seeds *s)
{
    for (size_t i = 0; i < 2; i++) {
        cleanup_free char *path = xasprintf("%s/%s", c->data_dir, seed_files[i][0]);
        size_t len = 0;
        if (util_read_file_at(AT_FDCWD, path, 16u << 20, &s->buf[s->n], &len, NULL) < 0)
            continue;
        s->v[s->n] = (struct seed){seed_files[i][1], s->buf[s->n], len};
        s->n++;
    }
    s->buf[s->n] = NULL;
    s->v[s->n++] = (struct seed){&ENV_NODE_PROXY[1], (const char *)node_proxy_cjs,
                                 node_proxy_cjs_len};
}

static void
seeds_free(struct seeds *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->buf[i]);
}

/*
 * The trust files live in the base image, shared read-only by every sandbox. An image built
 * before the installation had its CA gets them now (new files in a lower layer, once).
 */
static void
seed_image(struct env_ctx *c)
{
    struct seeds s = {{{0}}, 0, {0}};
    struct err *e = NULL;

    load_seeds(c, &s);
    for (size_t i = 0; i < s.n; i++)
        if (sandbox_image_put(c->image_host, s.v[i].path, s.v[i].data, s.v[i].len, &e) < 0) {
            log_warnx("base image files: %s", e->msg);
            err_free(e);
            e = NULL;
        }
    seeds_free(&s);
}

int
env_seed_trust(struct env_ctx *c, const char *id, struct err **errp)
{
    struct seeds s = {{{0}}, 0, {0}};
    cleanup_free char *dir = env__volume_dir(c, id);
    int rc = 0;

    load_seeds(c, &s);
    for (size_t i = 0; i < s.n && rc == 0; i++) {
        cleanup_free char *abs = xasprintf("/%s", s.v[i].path);
        rc = place_bytes(dir, abs, s.v[i].data, s.v[i].len, 0644, errp);
    }
    seeds_free(&s);
    return rc;
}

/* Writes len bytes of data to path inside the running sandbox at dir. */
static int
place_bytes(const char *dir, const char *path, const void *data, size_t len, unsigned mode,
            struct err **errp)
{
    cleanup_close int fd = memfd_create("paddock-source", MFD_CLOEXEC);

    if (fd < 0)
        return err_set(errp, ERR_INTERNAL, errno, "memfd");
    if (util_write_all(fd, data, len) < 0 || lseek(fd, 0, SEEK_SET) < 0)
        return err_set(errp, ERR_INTERNAL, errno, "memfd");
    return sandbox_file_write(dir, path, mode, fd, 0, errp);
}

/*
 * Copies the host directory open at dfd to target inside the sandbox, file by file through
 * the sandbox's init. Only regular files and directories are copied; symlinks and others in
 * the operator's directory are skipped, never followed.
 */
static int
place_tree(const char *dir, int dfd, const char *target, int depth, uint64_t *budget,
           struct err **errp)
{
    DIR *d = fdopendir(dfd);
    struct dirent *de;
    int rc = 0;

    if (d == NULL) {
        close(dfd);
        return err_set(errp, ERR_IO, errno, "open %s", target);
    }
    while (rc == 0 && (de = readdir(d)) != NULL) {
        struct stat st;
        cleanup_free char *child = NULL;
        int fd;

        if (de->d_name[0] == '.' &&
            (de->d_name[1] == '\0' || (de->d_name[1] == '.' && de->d_name[2] == '\0')))
            continue;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue;
        child = xasprintf("%s/%s", target, de->d_name);
        if (S_ISDIR(st.st_mode) && depth < 32) {
            fd = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            rc = fd < 0 ? err_set(errp, ERR_IO, errno, "open %s", child)
                        : place_tree(dir, fd, child, depth + 1, budget, errp);
        } else if (S_ISREG(st.st_mode)) {
            cleanup_close int ffd = -1;
            if ((uint64_t)st.st_size > *budget) {
                rc = err_set(errp, ERR_LIMIT, 0, "larger than %llu MB in all",
                             (unsigned long long)(ENV_DIR_SOURCE_MAX >> 20));
                break;
            }
            *budget -= (uint64_t)st.st_size;
            ffd = openat(dirfd(d), de->d_name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
            rc = ffd < 0 ? err_set(errp, ERR_IO, errno, "open %s", child)
                         : sandbox_file_write(dir, child, st.st_mode & 0777, ffd, 0, errp);
        }
    }
    closedir(d);
    return rc;
}

/*
 * The GCS fetcher, run by the sandbox's own python3 (from the image's /usr): lists
 * gs://bucket/prefix through the JSON API and downloads every object under the target, through
 * the proxy (HTTPS_PROXY) with the sandbox's trust bundle, refusing object names that climb
 * out and stopping past max bytes.
 */
static const char gcs_script[] =
    "import json,os,sys,urllib.parse,urllib.request\n"
    "b,pfx,dst,cap=sys.argv[1],sys.argv[2],sys.argv[3],int(sys.argv[4])\n"
    "api='https://storage.googleapis.com/storage/v1/b/'+urllib.parse.quote(b,safe='')\n"
    "tok=None;total=0;n=0\n"
    "while True:\n"
    " q={'prefix':pfx,'fields':'items(name,size),nextPageToken'}\n"
    " if tok: q['pageToken']=tok\n"
    " page=json.load(urllib.request.urlopen(api+'/o?'+urllib.parse.urlencode(q),timeout=60))\n"
    " for it in page.get('items',[]):\n"
    "  name=it['name'];rel=name[len(pfx):].lstrip('/')\n"
    "  if not rel or name.endswith('/'): continue\n"
    "  parts=rel.split('/')\n"
    "  if any(p in ('','.','..') for p in parts): sys.exit('bad object name: %r'%name)\n"
    "  path=os.path.join(dst,*parts);os.makedirs(os.path.dirname(path),exist_ok=True)\n"
    "  u=api+'/o/'+urllib.parse.quote(name,safe='')+'?alt=media'\n"
    "  with urllib.request.urlopen(u,timeout=300) as r,open(path,'wb') as f:\n"
    "   while True:\n"
    "    c=r.read(1<<20)\n"
    "    if not c: break\n"
    "    total+=len(c)\n"
    "    if total>cap: sys.exit('more than %d bytes under gs://%s/%s'%(cap,b,pfx))\n"
    "    f.write(c)\n"
    "  n+=1\n"
    " tok=page.get('nextPageToken')\n"
    " if not tok: break\n"
    "if n==0: sys.exit('no objects under gs://%s/%s'%(b,pfx))\n";

struct capture {
    struct buf err;
};

static int
capture_out(int stream, const void *data, size_t len, void *arg)
{
    struct capture *cap = arg;

    if (stream == 2)
        buf_append(&cap->err, data, len, NULL);
    return 0;
}

/* Runs argv in the sandbox with the environment's variables (the proxy, its trust). */
static int
run_in(struct env_ctx *c, const char *id, const char *dir, const char *const *argv,
       uint64_t timeout_ms, const char *what, struct err **errp)
{
    char **vars = NULL;
    struct capture cap;
    struct sandbox_exec_result res;
    struct sandbox_exec_opts o = {.argv = argv, .timeout_ms = timeout_ms, .max_output = 65536,
                                  .stdin_fd = -1, .on_output = capture_out, .arg = &cap};
    int rc;

    if (env_exec_vars(c, id, NULL, &vars, errp) < 0)
        return -1;
    o.env = (const char *const *)vars;
    buf_init(&cap.err, 4096);
    rc = sandbox_exec(dir, &o, &res, errp);
    for (size_t i = 0; vars[i] != NULL; i++)
        free(vars[i]);
    free(vars);
    if (rc == 0 && !(res.exited && res.code == 0)) {
        cleanup_free char *msg = NULL;
        size_t n = cap.err.len;
        while (n > 0 && (cap.err.data[n - 1] == '\n' || cap.err.data[n - 1] == '\r'))
            n--;
        msg = log_escape(cap.err.data != NULL ? cap.err.data : "", n, 300);
        rc = err_set(errp, ERR_INVALID, 0, "%s failed%s: %s", what,
                     res.timed_out ? " (timed out)" : "", n > 0 ? msg : "no message");
    }
    buf_free(&cap.err);
    return rc;
}

/* Fetches one network source inside the sandbox. */
static int
fetch(struct env_ctx *c, const char *id, const char *dir, const struct env_fetch *f,
      struct err **errp)
{
    char max[32];

    snprintf(max, sizeof(max), "%llu", (unsigned long long)f->max);
    if (f->kind == ENV_FETCH_GIT) {
        /* Only http(s) transports, submodules included; no prompts; then the size cap. */
        const char *const clone[] = {"git", "-c", "protocol.allow=never", "-c",
                                     "protocol.https.allow=always", "-c",
                                     "protocol.http.allow=always", "clone", "--quiet",
                                     "--depth", "1", "--", f->url, f->target, NULL};
        cleanup_free char *check = xasprintf(
            "s=$(du -sb -- \"$0\" | cut -f1); if [ \"$s\" -gt %s ]; then rm -rf -- \"$0\"; "
            "echo \"the clone is $s bytes, over the %s-byte cap\" >&2; exit 1; fi",
            max, max);
        const char *const size[] = {"/bin/sh", "-c", check, f->target, NULL};
        /* Shallow first; a server that cannot do shallow (dumb HTTP) gets a full clone. */
        const char *const full[] = {"git", "-c", "protocol.allow=never", "-c",
                                    "protocol.https.allow=always", "-c",
                                    "protocol.http.allow=always", "clone", "--quiet", "--",
                                    f->url, f->target, NULL};
        struct err *first = NULL;
        if (run_in(c, id, dir, clone, 600000, "git clone", &first) < 0) {
            bool shallow = strstr(first->msg, "shallow") != NULL;
            if (!shallow) {
                *errp = first;
                return -1;
            }
            err_free(first);
            if (run_in(c, id, dir, full, 600000, "git clone", errp) < 0)
                return -1;
        }
        if (run_in(c, id, dir, size, 60000, "size check", errp) < 0)
            return -1;
        return 0;
    }
    if (f->kind == ENV_FETCH_GCS) {
        cleanup_free char *bucket = xstrdup(f->url);
        char *slash = strchr(bucket, '/');
        const char *prefix = "";
        if (slash != NULL) {
            *slash = '\0';
            prefix = slash + 1;
        }
        {
            const char *const argv[] = {"python3", "-c", gcs_script, bucket, prefix, f->target,
                                        max, NULL};
            return run_in(c, id, dir, argv, 1800000, "gcs download", errp);
        }
    }
    {
        const char *const argv[] = {"curl", "-fsSL", "--proto", "=https,http", "--max-filesize",
                                    max, "--create-dirs", "-o", f->target, "--", f->url, NULL};
        return run_in(c, id, dir, argv, 1800000, "download", errp);
    }
}

/* Puts the sources into the freshly started sandbox. */
static int
place_sources(struct env_ctx *c, const char *id, const struct env_create_opts *o,
              struct err **errp)
{
    cleanup_free char *dir = env__volume_dir(c, id);

    for (size_t i = 0; i < o->n_files; i++)
        if (place_bytes(dir, o->files[i].target, o->files[i].data, o->files[i].len, 0644,
                        errp) < 0)
            return err_wrap(errp, "source %s", o->files[i].target);
    for (size_t i = 0; i < o->n_dirs; i++) {
        uint64_t budget = ENV_DIR_SOURCE_MAX;
        int fd = open(o->dirs[i].host_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
            return err_set(errp, ERR_NOT_FOUND, errno, "source %s", o->dirs[i].target);
        if (place_tree(dir, fd, o->dirs[i].target, 0, &budget, errp) < 0)
            return err_wrap(errp, "source %s", o->dirs[i].target);
    }
    for (size_t i = 0; i < o->n_fetches; i++)
        if (fetch(c, id, dir, &o->fetches[i], errp) < 0)
            return err_wrap(errp, "%s source %s",
                            o->fetches[i].kind == ENV_FETCH_GIT ? "repository" : "gcs",
                            o->fetches[i].target);
    return 0;
}

/* sandbox_volume_fork's snapped(): the source's lock (an fd) goes once its snapshot is taken. */
static void
release_lock(void *fdp)
{
    close_and_reset((int *)fdp);
}

/*
 * The cold path of env_create(): a new row (locked), a new volume (or a copy of src's, whose
 * lock src_lock is released once its snapshot is taken) and a new sandbox, recorded with state st.
 */
static int
create_cold(struct env_ctx *c, const struct env_create_opts *o, struct store_env *e,
            enum store_env_state st, const struct store_env *src, int *src_lock, int *lock_out,
            struct err **errp)
{
    cleanup_close int lock = -1;

    if (util_id_new("env_", e->id, sizeof(e->id), errp) < 0)
        return -1;
    /* Lock before the row exists, so no reader takes it for an abandoned create. */
    lock = env__lock(c, e->id, true, errp);
    if (lock < 0)
        return -1;
    if (env__ensure_storage(c, errp) < 0 ||
        store_env_insert(c->store, e, o->config, SANDBOX_ID_SLOTS, errp) < 0)
        return -1;
    if (o->from != NULL
            ? sandbox_volume_fork(c->envs_dir, src->id, e->id, env_host_id(src), env_host_id(e),
                                  e->disk_bytes, release_lock, src_lock, errp) < 0
            : sandbox_volume_create(c->envs_dir, e->id, env_host_id(e), e->disk_bytes, errp) < 0)
        goto rollback;
    close_and_reset(src_lock);
    if (env__start_locked(c, e, st, errp) < 0)
        goto rollback;
    *lock_out = steal_fd(&lock);
    return 0;

rollback:
    discard_unfinished(c, e);
    return -1;
}

int
env_create(struct env_ctx *c, const struct env_create_opts *o, struct store_env *out,
           struct err **errp)
{
    struct store_env e, src;
    cleanup_close int lock = -1;
    cleanup_close int src_lock = -1;
    int64_t now = util_now_ms();
    bool has_sources = o->n_files > 0 || o->n_dirs > 0 || o->n_fetches > 0;

    if (validate(o, errp) < 0)
        return -1;
    if (o->from != NULL) {
        /* The source is locked until the instant of its snapshot, so no stop or delete of it
         * runs in between; the copy's ownership shift, a walk of every file, runs after. */
        src_lock = lock_and_load(c, o->from, &src, errp);
        if (src_lock < 0)
            return err_wrap(errp, "from_environment");
        if (strcmp(src.project, o->project ? o->project : "default") != 0 ||
            src.state == STORE_ENV_EXPIRED)
            return err_set(errp, ERR_NOT_FOUND, 0, "from_environment: no environment '%s'",
                           o->from);
    }
    memset(&e, 0, sizeof(e));
    /* The row stays "creating" until the sources are in: a crash before that leaves an
     * environment that reconcile removes, never a half-filled one that looks finished. With
     * nothing to put in, the start itself is the last step, and one write says so. */
    e.state = has_sources ? STORE_ENV_CREATING : STORE_ENV_RUNNING;
    snprintf(e.network, sizeof(e.network), "%s", o->network ? o->network : "disabled");
    snprintf(e.image, sizeof(e.image), "host");
    e.memory_bytes = o->memory_bytes ? o->memory_bytes : ENV_DEFAULT_MEMORY;
    e.cpus_milli = o->cpus_milli ? o->cpus_milli : ENV_DEFAULT_CPUS_MILLI;
    e.pids = o->pids ? o->pids : ENV_DEFAULT_PIDS;
    e.disk_bytes = o->disk_bytes ? o->disk_bytes : ENV_DEFAULT_DISK;
    e.created_ms = e.updated_ms = e.last_used_ms = now;
    snprintf(e.project, sizeof(e.project), "%s", o->project ? o->project : "default");
    /* A warm sandbox when the request needs no copy of another environment's files; any
     * other setting is applied to it at the claim. */
    if (o->from != NULL || o->no_pool || env__pool_claim(c, &e, o->config, &lock) == 0) {
        enum store_env_state st = e.state;
        e.state = STORE_ENV_CREATING;
        if (create_cold(c, o, &e, st, &src, &src_lock, &lock, errp) < 0)
            return err_wrap(errp, "create environment");
    } else {
        env__run_start_hook(c, &e);
        env__pool_kick();
    }
    if (has_sources && (place_sources(c, e.id, o, errp) < 0 ||
                        store_env_set_state(c->store, e.id, STORE_ENV_RUNNING, e.init_pid,
                                            e.init_start, e.init_gen, errp) < 0)) {
        discard_unfinished(c, &e);
        return err_wrap(errp, "create environment");
    }
    e.state = STORE_ENV_RUNNING;
    *out = e;
    return 0;
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
    lock = env__lock(c, id, true, errp);
    if (lock < 0 || store_env_get(c->store, id, e, errp) < 0)
        return -1;
    /* A create holds the lock until its row is done: one still "creating" under a lock that
     * came free is a create that died (its sandbox may still run, half-filled), never one to
     * start, stop or copy. Removed, as reconcile removes it. */
    if (e->state == STORE_ENV_CREATING) {
        discard_unfinished(c, e);
        return err_set(errp, ERR_NOT_FOUND, 0, "environment %s was never finished", id);
    }
    return steal_fd(&lock);
}

/* env_start(), returning the lock it took (its fd), still held. */
static int
start_and_hold(struct env_ctx *c, const char *id, struct store_env *e, struct err **errp)
{
    cleanup_close int lock = lock_and_load(c, id, e, errp);
    struct sandbox_init init;

    if (lock < 0)
        return -1;
    if (e->state == STORE_ENV_EXPIRED)
        return err_set(errp, ERR_NOT_FOUND, 0, "environment %s has expired", id);
    init = env__init_of(e);
    /* A running row whose init is dead: env__start_locked() removes what is left of it. */
    if (!(e->state == STORE_ENV_RUNNING && sandbox_alive(&init))) {
        if (env__start_locked(c, e, STORE_ENV_RUNNING, errp) < 0)
            return -1;
    }
    return steal_fd(&lock);
}

int
env_start(struct env_ctx *c, const char *id, struct store_env *out, struct err **errp)
{
    struct store_env e;
    cleanup_close int lock = start_and_hold(c, id, &e, errp);

    if (lock < 0)
        return -1;
    if (out != NULL)
        *out = e;
    return 0;
}

/* Stops a running sandbox whose row e was read under its lock. */
static int
stop_locked(struct env_ctx *c, const struct store_env *e, struct err **errp)
{
    struct sandbox_init init = env__init_of(e);

    if (sandbox_stop(e->id, &init, errp) < 0)
        return -1;
    return store_env_set_state(c->store, e->id, STORE_ENV_STOPPED, 0, 0, 0, errp);
}

int
env_stop(struct env_ctx *c, const char *id, struct err **errp)
{
    struct store_env e;
    cleanup_close int lock = lock_and_load(c, id, &e, errp);

    if (lock < 0)
        return -1;
    if (e.state != STORE_ENV_RUNNING)
        return 0;
    return stop_locked(c, &e, errp);
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
    init = env__init_of(&e);
    if (sandbox_stop(id, &init, errp) < 0 || env__ensure_storage(c, errp) < 0 ||
        (e.state != STORE_ENV_EXPIRED && sandbox_volume_destroy(c->envs_dir, id, errp) < 0))
        return err_wrap(errp, "delete %s", id);
    if (store_env_delete(c->store, id, errp) < 0)
        return -1;
    lockpath = xasprintf("%s/%s", c->locks_dir, id);
    unlink(lockpath);
    {
        /* Its unfinished uploads go with it: nothing could finish them now. */
        cleanup_free struct store_upload *v = NULL;
        size_t n = 0;
        if (store_upload_list(c->store, &v, &n, NULL) == 0)
            for (size_t i = 0; i < n; i++)
                if (strcmp(v[i].env_id, id) == 0)
                    env_upload_abort(c, v[i].id);
    }
    return 0;
}

/*
 * A use is recorded under the environment's lock, shared with other uses; the janitor decides
 * an idle stop under it too, exclusively (stop_if_idle()). So a stop either ends before the
 * use looks at the row, and the use starts the sandbox again, or it sees the use and leaves
 * the sandbox alone. Unlocked, a stop could kill the sandbox between a use's look at the row
 * and the request it was made for (a 500 "connection reset" from a file read).
 */
int
env_use(struct env_ctx *c, const char *id, char **dir_out, struct err **errp)
{
    struct store_env e;
    cleanup_close int lock = -1;

    if (env_get(c, id, &e, errp) < 0)
        return -1;
    if (e.state == STORE_ENV_RUNNING) {
        lock = lock_op(c, id, LOCK_SH, errp);
        if (lock < 0 || store_env_get(c->store, id, &e, errp) < 0)
            return -1;
    }
    if (e.state != STORE_ENV_RUNNING) {
        close_and_reset(&lock);
        if ((lock = start_and_hold(c, id, &e, errp)) < 0)
            return -1;
    }
    store_env_touch(c->store, id, NULL);
    *dir_out = env__volume_dir(c, id);
    return 0;
}

int
env_teardown(struct env_ctx *c, struct err **errp)
{
    cleanup_free struct store_env *v = NULL;
    size_t n = 0;

    if (env__pool_drain(c, errp) < 0 || env_list(c, &v, &n, errp) < 0)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (v[i].state == STORE_ENV_RUNNING && env_stop(c, v[i].id, errp) < 0)
            return -1;
    return sandbox_storage_unmount(c->data_dir, errp);
}

/* ------------------------------------------------------------ for the API */

struct store *
env_store(struct env_ctx *c)
{
    return c->store;
}

int
env_get_owned(struct env_ctx *c, const char *project, const char *id, struct store_env *out,
              struct err **errp)
{
    struct err *e = NULL;

    if (env_get(c, id, out, &e) < 0 || strcmp(out->project, project) != 0) {
        bool internal = e != NULL && e->code != ERR_NOT_FOUND;
        if (internal) {
            *errp = e;
            return -1;
        }
        err_free(e);
        return err_set(errp, ERR_NOT_FOUND, 0, "environment %s not found", id);
    }
    return 0;
}

int
env_use_owned(struct env_ctx *c, const char *project, const char *id, char **dir_out,
              struct err **errp)
{
    struct store_env e;

    if (env_get_owned(c, project, id, &e, errp) < 0)
        return -1;
    if (e.state == STORE_ENV_EXPIRED)
        return err_set(errp, ERR_NOT_FOUND, 0, "environment %s has expired", id);
    return env_use(c, id, dir_out, errp);
}

int
env_page(struct env_ctx *c, const char *project, int64_t after_created, int64_t after_seq,
         size_t limit, struct store_env **out, size_t *n_out, struct err **errp)
{
    struct store_env *page = xcalloc(limit ? limit : 1, sizeof(*page));
    size_t have = 0;

    /* Reconciling drops dead creates: read on from the last row read until the page is full
     * or the store has no more, so a short page always means the end of the list. */
    for (;;) {
        struct store_env *v = NULL, *kept = NULL;
        size_t n = 0, k = 0, want = limit - have;

        if (store_env_page(c->store, project, after_created, after_seq, want, &v, &n, errp) < 0) {
            free(page);
            return -1;
        }
        if (n > 0) {
            after_created = v[n - 1].created_ms;
            after_seq = v[n - 1].seq;
        }
        if (reconcile_rows(c, v, n, &kept, &k, errp) < 0) {
            free(page);
            return -1;
        }
        memcpy(page + have, kept, k * sizeof(*kept));
        have += k;
        free(kept);
        if (n < want || have == limit)
            break;
    }
    *out = page;
    *n_out = have;
    return 0;
}

int
env_config(struct env_ctx *c, const char *id, char **out, struct err **errp)
{
    return store_env_config(c->store, id, out, errp);
}

/*
 * Node's built-in fetch ignores the proxy variables before Node 24: ENV_NODE_PROXY, loaded
 * with --require, routes it through the proxy. Options the environment sets itself come
 * after ours.
 */
static void
node_options(char ***arr, size_t *n)
{
    static const char key[] = "NODE_OPTIONS=";
    const char *theirs = "";
    size_t at = *n;

    for (size_t i = 0; i < *n; i++)
        if (strncmp((*arr)[i], key, sizeof(key) - 1) == 0) {
            theirs = (*arr)[i] + sizeof(key) - 1;
            at = i;
        }
    {
        char *v = xasprintf("%s--require %s%s%s", key, ENV_NODE_PROXY, *theirs ? " " : "", theirs);
        if (at < *n) {
            free((*arr)[at]);
            (*arr)[at] = v;
            return;
        }
        *arr = xrealloc(*arr, (*n + 2) * sizeof(**arr));
        (*arr)[(*n)++] = v;
        (*arr)[*n] = NULL;
    }
}

/*
 * The attribution key: DATA/egress-tag.key, 32 random bytes (0600), made by the first process
 * that needs it (util_key_file()), so the server, `paddock run` and a restarted server all
 * agree on the tags. Loaded once per process (one data directory each).
 */
#define TAG_KEY_LEN 32

static pthread_mutex_t tag_lock = PTHREAD_MUTEX_INITIALIZER;
static char *tag_dir;
static unsigned char tag_key[TAG_KEY_LEN];
static bool tag_key_ok;

/* Loads the key of data_dir (once); false when there is none to be had. Under tag_lock. */
static bool
tag_key_load(const char *data_dir)
{
    cleanup_free char *path = NULL;
    struct err *e = NULL;

    if (tag_dir != NULL && strcmp(tag_dir, data_dir) == 0)
        return tag_key_ok;
    free(tag_dir);
    tag_dir = xstrdup(data_dir);
    path = xasprintf("%s/egress-tag.key", data_dir);
    tag_key_ok = false;
    if (util_key_file(path, tag_key, TAG_KEY_LEN, &e) < 0) {
        log_warnx("egress attribution off: %s", e->msg);
        err_free(e);
        return false;
    }
    return tag_key_ok = true;
}

void
env_proxy_tag(const char *data_dir, const char *env_id, const char *interaction_id,
              char out[ENV_PROXY_TAG_LEN + 1])
{
    unsigned char mac[32];
    size_t maclen = 0;
    cleanup_free char *msg = xasprintf("%s\n%s", env_id, interaction_id);
    bool ok;

    out[0] = '\0';
    pthread_mutex_lock(&tag_lock);
    ok = tag_key_load(data_dir) &&
         EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, tag_key, sizeof(tag_key),
                   (const unsigned char *)msg, strlen(msg), mac, sizeof(mac), &maclen) != NULL &&
         maclen >= ENV_PROXY_TAG_LEN / 2;
    pthread_mutex_unlock(&tag_lock);
    if (!ok) {
        ERR_clear_error(); /* nothing of this for the caller's next TLS call to trip on */
        return;
    }
    for (size_t i = 0; i < ENV_PROXY_TAG_LEN / 2; i++)
        snprintf(out + 2 * i, 3, "%02x", mac[i]);
}

bool
env_proxy_tag_ok(const char *data_dir, const char *env_id, const char *interaction_id,
                 const char *tag)
{
    char want[ENV_PROXY_TAG_LEN + 1];

    env_proxy_tag(data_dir, env_id, interaction_id, want);
    return want[0] != '\0' && strlen(tag) == ENV_PROXY_TAG_LEN &&
           CRYPTO_memcmp(want, tag, ENV_PROXY_TAG_LEN) == 0;
}

int
env_exec_vars(struct env_ctx *c, const char *id, const char *interaction_id, char ***out,
              struct err **errp)
{
    cleanup_free char *config = NULL;
    json_t *cfg, *vars, *v;
    const char *k;
    char **arr;
    size_t n = 0;

    if (store_env_config(c->store, id, &config, errp) < 0)
        return -1;
    cfg = json_loads(config, 0, NULL);
    vars = json_object_get(cfg, "env");
    arr = xcalloc(json_object_size(vars) + 1, sizeof(*arr));
    json_object_foreach(vars, k, v) {
        const char *val = json_is_string(v) ? json_string_value(v)
                                            : json_string_value(json_object_get(v, "value"));
        /* A credential is never in the sandbox: its variable holds the placeholder the egress
         * proxy replaces in requests to the credential's trusted domains. */
        if (json_object_get(v, "credential") != NULL)
            val = json_string_value(json_object_get(json_object_get(cfg, "_placeholders"), k));
        if (val != NULL)
            arr[n++] = xasprintf("%s=%s", k, val);
    }
    json_decref(cfg);
    {
        struct store_env e;
        if (store_env_get(c->store, id, &e, NULL) == 0 && strcmp(e.network, "disabled") != 0) {
            /* Everything leaves through the proxy inside the sandbox (issue 4). */
            static const char *const names[] = {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                                                "http_proxy", "https_proxy", "all_proxy"};
            /* Trust for intercepted TLS: the system's CAs plus the installation's. */
            static const char *const bundle_vars[] = {"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE",
                                                      "PIP_CERT", "GIT_SSL_CAINFO",
                                                      "CURL_CA_BUNDLE"};
            size_t extra = sizeof(names) / sizeof(names[0]) + 2;
            arr = xrealloc(arr, (n + extra + 1) * sizeof(*arr));
            char tag[ENV_PROXY_TAG_LEN + 1] = "";
            cleanup_free char *user = NULL;
            /* Attribution, not access: the proxy never asks for these, and clients send them
             * (curl, git, pip, python, npm, node fetch through node-proxy.cjs) unasked. */
            if (interaction_id != NULL)
                env_proxy_tag(c->data_dir, id, interaction_id, tag);
            if (tag[0] != '\0')
                user = xasprintf("%s:%s@", interaction_id, tag);
            for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
                arr[n++] = xasprintf("%s=http://%s127.0.0.1:%d", names[i], user ? user : "",
                                     ENV_PROXY_PORT);
            /* git lets libcurl pick the proxy's auth method, which waits for a 407 that never
             * comes; with basic it sends the user and password unasked, as others do. */
            if (user != NULL) {
                arr = xrealloc(arr, (n + extra + 2) * sizeof(*arr));
                arr[n++] = xstrdup("GIT_HTTP_PROXY_AUTHMETHOD=basic");
            }
            arr[n++] = xstrdup("NO_PROXY=localhost,127.0.0.1,::1");
            arr[n++] = xstrdup("no_proxy=localhost,127.0.0.1,::1");
            arr = xrealloc(arr, (n + sizeof(bundle_vars) / sizeof(bundle_vars[0]) + 2) *
                                    sizeof(*arr));
            for (size_t i = 0; i < sizeof(bundle_vars) / sizeof(bundle_vars[0]); i++)
                arr[n++] = xasprintf("%s=%s", bundle_vars[i], ENV_CA_BUNDLE);
            arr[n++] = xasprintf("NODE_EXTRA_CA_CERTS=%s", ENV_CA_FILE);
            arr[n] = NULL;
            node_options(&arr, &n);
        }
    }
    *out = arr;
    return 0;
}

/*
 * A count walks every file, sending keep-alives, so the control socket's inactivity timeout
 * alone would let a process of the sandbox that stops and resumes the handler in turn keep
 * it going for ever, on the server's main thread (the janitor). The whole count gets this.
 */
#define ENV_COUNT_DEADLINE_MS (60 * 1000)

int
env_count(struct env_ctx *c, const char *id, struct err **errp)
{
    cleanup_free char *dir = env__volume_dir(c, id);
    uint64_t files = 0, bytes = 0;
    int64_t now = util_now_ms();
    int r;

    sandbox_deadline_set(ENV_COUNT_DEADLINE_MS);
    r = sandbox_snapshot(dir, true, NULL, NULL, &files, &bytes, errp);
    sandbox_deadline_set(0);
    if (r < 0)
        return -1;
    return store_env_set_counts(c->store, id, files, bytes, now, errp);
}

/* Moves a stopped or offline environment on as its inactivity says. */
static void
age(struct env_ctx *c, struct store_env *e, const struct env_lifecycle *lc, int64_t idle_for)
{
    struct err *er = NULL;
    cleanup_close int lock = -1;

    /* Each decision is taken again on the row read under the lock: a use in between (a
     * start, then a stop) has moved last_used on. */
    if (idle_for >= lc->expire_ms) {
        lock = lock_and_load(c, e->id, e, &er);
        if (lock >= 0 && e->state != STORE_ENV_RUNNING && e->state != STORE_ENV_EXPIRED &&
            util_now_ms() - e->last_used_ms >= lc->expire_ms &&
            sandbox_volume_destroy(c->envs_dir, e->id, &er) == 0 &&
            store_env_expire(c->store, e->id, &er) == 0)
            log_info("environment %s expired: files deleted", e->id);
    } else if (e->state == STORE_ENV_STOPPED && idle_for >= lc->offline_ms) {
        lock = lock_and_load(c, e->id, e, &er);
        if (lock >= 0 && e->state == STORE_ENV_STOPPED &&
            util_now_ms() - e->last_used_ms >= lc->offline_ms &&
            store_env_set_state(c->store, e->id, STORE_ENV_OFFLINE, 0, 0, 0, &er) == 0)
            log_info("environment %s offline", e->id);
    }
    if (er != NULL) {
        log_warnx("janitor: %s: %s", e->id, er->msg);
        err_free(er);
    }
}

static char *staged_path(struct env_ctx *c, const char *id);

/*
 * Ends upload sessions that are older than max_age_ms, or that nothing was sent to for
 * idle_ms (the staged file's mtime): each holds its announced size of the disk's room
 * (upload_room) until it ends, and a client that gave up never says so.
 */
static void
uploads_gc(struct env_ctx *c, int64_t max_age_ms, int64_t idle_ms)
{
    cleanup_free struct store_upload *v = NULL;
    size_t n = 0;
    int64_t now = util_now_ms();

    if (store_upload_list(c->store, &v, &n, NULL) < 0)
        return;
    for (size_t i = 0; i < n; i++) {
        cleanup_free char *path = staged_path(c, v[i].id);
        struct stat st;
        int64_t touched = stat(path, &st) == 0
                              ? (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000
                              : v[i].created_ms;
        if (now - v[i].created_ms > max_age_ms || now - touched > idle_ms) {
            log_info("upload session %s of environment %s ended: nothing sent to it for %lld s",
                     v[i].id, v[i].env_id, (long long)((now - touched) / 1000));
            env_upload_abort(c, v[i].id);
        }
    }
}

int
env_uploads_sweep(struct env_ctx *c, struct err **errp)
{
    DIR *d = opendir(c->uploads_dir);
    struct dirent *de;
    size_t removed = 0;

    if (d == NULL)
        return err_set(errp, ERR_IO, errno, "open %s", c->uploads_dir);
    while ((de = readdir(d)) != NULL) {
        struct store_upload u;
        struct err *e = NULL;

        if (de->d_name[0] == '.')
            continue;
        if (store_upload_get(c->store, de->d_name, &u, &e) == 0)
            continue;
        if (e->code == ERR_NOT_FOUND && unlinkat(dirfd(d), de->d_name, 0) == 0)
            removed++;
        err_free(e);
    }
    closedir(d);
    if (removed > 0)
        log_info("removed %zu staged uploads that no session names", removed);
    return 0;
}

/*
 * The janitor runs on the server's main thread, and a count that times out (a sandbox whose
 * handler a process inside stopped, say) holds it for the control socket's 10 s timeout, or
 * up to ENV_COUNT_DEADLINE_MS when the handler is stopped and resumed in turn. Such an
 * environment is not counted again for this long, and the warning is not repeated meanwhile.
 */
#define ENV_COUNT_BACKOFF_MS (10 * 60 * 1000LL)

static struct count_backoff *
backoff_find(struct env_ctx *c, const char *id)
{
    for (size_t i = 0; i < c->n_backoffs; i++)
        if (strcmp(c->backoffs[i].id, id) == 0)
            return &c->backoffs[i];
    return NULL;
}

static void
backoff_drop(struct env_ctx *c, struct count_backoff *b)
{
    free(b->id);
    *b = c->backoffs[--c->n_backoffs];
}

/* Forgets environments left alone for a whole period after theirs (deleted, or idle since). */
static void
backoff_prune(struct env_ctx *c)
{
    int64_t now = util_mono_ms();

    for (size_t i = 0; i < c->n_backoffs;) {
        if (now - c->backoffs[i].until_ms > ENV_COUNT_BACKOFF_MS)
            backoff_drop(c, &c->backoffs[i]); /* moves the last one to i */
        else
            i++;
    }
}

/* Counts id's files for the janitor, unless a count of it timed out not long ago. */
static void
janitor_count(struct env_ctx *c, const char *id)
{
    struct count_backoff *b = backoff_find(c, id);
    struct err *er = NULL;

    if (b != NULL && util_mono_ms() < b->until_ms)
        return;
    if (env_count(c, id, &er) == 0) {
        if (b != NULL) {
            log_info("janitor: environment %s answers again; its files are counted", id);
            backoff_drop(c, b);
        }
        return;
    }
    if (er->code != ERR_TIMEOUT) {
        log_warnx("janitor: count %s: %s", id, er->msg);
    } else if (b == NULL) {
        log_warnx("janitor: count %s: %s; not counted again for %lld min", id, er->msg,
                  ENV_COUNT_BACKOFF_MS / 60000);
        c->backoffs = xrealloc(c->backoffs, (c->n_backoffs + 1) * sizeof(*c->backoffs));
        c->backoffs[c->n_backoffs++] =
            (struct count_backoff){ xstrdup(id), util_mono_ms() + ENV_COUNT_BACKOFF_MS };
    } else {
        b->until_ms = util_mono_ms() + ENV_COUNT_BACKOFF_MS; /* still stalled; said once */
    }
    err_free(er);
}

/*
 * Stops a sandbox left idle, deciding again under the environment's lock: the count above can
 * take a while, and a use (env_use()) or a command started meanwhile must not be cut off.
 * 1 when it stopped the sandbox.
 */
static int
stop_if_idle(struct env_ctx *c, const char *id, const struct env_lifecycle *lc, struct err **errp)
{
    struct store_env e;
    struct sandbox_init init;
    cleanup_close int lock = lock_and_load(c, id, &e, errp);

    if (lock < 0)
        return -1;
    init = env__init_of(&e);
    if (e.state != STORE_ENV_RUNNING || util_now_ms() - e.last_used_ms < lc->idle_ms ||
        sandbox_busy(&init))
        return 0;
    return stop_locked(c, &e, errp) < 0 ? -1 : 1;
}

void
env_janitor(struct env_ctx *c, const struct env_lifecycle *lc)
{
    cleanup_free struct store_env *v = NULL;
    size_t n = 0;
    struct err *er = NULL;
    int64_t now = util_now_ms();

    if (env_list(c, &v, &n, &er) < 0) {
        log_warnx("janitor: %s", er->msg);
        err_free(er);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        struct store_env *e = &v[i];
        struct sandbox_init init = env__init_of(e);
        int64_t idle_for = now - e->last_used_ms;

        if (e->state == STORE_ENV_CREATING || e->state == STORE_ENV_EXPIRED)
            continue;
        if (e->state != STORE_ENV_RUNNING) {
            age(c, e, lc, idle_for);
            continue;
        }
        /* Processes still running count as activity. */
        if (sandbox_busy(&init)) {
            store_env_touch(c->store, e->id, NULL);
            idle_for = 0;
        }
        if (e->last_used_ms > e->counted_ms && now - e->counted_ms >= lc->count_ms)
            janitor_count(c, e->id);
        if (idle_for >= lc->idle_ms) {
            int r = stop_if_idle(c, e->id, lc, &er);
            if (r < 0) {
                log_warnx("janitor: idle %s: %s", e->id, er->msg);
                err_free(er);
                er = NULL;
            } else if (r > 0) {
                log_info("environment %s idle: sandbox stopped", e->id);
            }
        }
    }
    backoff_prune(c);
    uploads_gc(c, 7LL * 24 * 3600 * 1000, ENV_UPLOAD_IDLE_MS);
}

/* ------------------------------------------------------------------ uploads */

static char *
staged_path(struct env_ctx *c, const char *id)
{
    return xasprintf("%s/%s", c->uploads_dir, id);
}

/* What the open sessions may still write (announced less staged); *n how many there are. */
static uint64_t
uploads_promised(struct env_ctx *c, size_t *n)
{
    cleanup_free struct store_upload *v = NULL;
    uint64_t promised = 0;

    *n = 0;
    if (store_upload_list(c->store, &v, n, NULL) < 0)
        return 0;
    for (size_t i = 0; i < *n; i++) {
        cleanup_free char *path = staged_path(c, v[i].id);
        struct stat st;
        uint64_t have = stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
        promised += v[i].total > have ? v[i].total - have : 0;
    }
    return promised;
}

/* What the storage image may still take of its disk: a sparse file grows up to its size. */
static uint64_t
image_growth(struct env_ctx *c)
{
    cleanup_free char *path = xasprintf("%s/storage.img", c->data_dir);
    struct stat st;
    uint64_t used;

    if (stat(path, &st) < 0)
        return c->storage_size; /* made at the first create, this size */
    used = (uint64_t)st.st_blocks * 512;
    return (uint64_t)st.st_size > used ? (uint64_t)st.st_size - used : 0;
}

/*
 * Staged uploads live on the data directory's disk, outside every environment's quota and
 * beside the storage image and the database. An upload is refused at its start when its
 * announced size, what the open sessions may still write and what the image may still grow
 * by would leave less than ENV_UPLOAD_RESERVE free: unfinished uploads cannot fill the disk
 * under the image (btrfs goes read-only for every environment) or the database.
 */
static int
upload_room(struct env_ctx *c, uint64_t total, struct err **errp)
{
    struct statvfs vfs;
    size_t n;
    uint64_t avail, promised, growth;

    if (statvfs(c->uploads_dir, &vfs) < 0)
        return err_set(errp, ERR_IO, errno, "stage upload: statvfs");
    avail = (uint64_t)vfs.f_bavail * vfs.f_frsize;
    promised = uploads_promised(c, &n);
    growth = image_growth(c);
    if (total + promised + growth + ENV_UPLOAD_RESERVE > avail)
        return err_set(errp, ERR_LIMIT, 0,
                       "no room to stage an upload of %llu bytes: the data directory's disk has "
                       "%llu bytes free, %llu of them promised to %zu open uploads and %llu to "
                       "the storage image",
                       (unsigned long long)total, (unsigned long long)avail,
                       (unsigned long long)promised, n, (unsigned long long)growth);
    return 0;
}

int
env_upload_begin(struct env_ctx *c, const struct store_upload *u, struct err **errp)
{
    cleanup_free char *path = staged_path(c, u->id);
    cleanup_close int fd = -1;

    if (upload_room(c, u->total, errp) < 0)
        return -1;
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return err_set(errp, ERR_IO, errno, "stage upload");
    if (store_upload_insert(c->store, u, errp) < 0) {
        unlink(path);
        return -1;
    }
    return 0;
}

int
env_upload_get(struct env_ctx *c, const char *project, const char *id, struct store_upload *out,
               uint64_t *received, struct err **errp)
{
    cleanup_free char *path = NULL;
    struct stat st;

    if (!util_id_valid("upl_", id) || store_upload_get(c->store, id, out, NULL) < 0 ||
        strcmp(out->project, project) != 0)
        return err_set(errp, ERR_NOT_FOUND, 0, "upload session %s not found", id);
    path = staged_path(c, id);
    if (stat(path, &st) < 0)
        return err_set(errp, ERR_NOT_FOUND, errno, "upload session %s has no data", id);
    *received = (uint64_t)st.st_size;
    return 0;
}

int
env_upload_append(struct env_ctx *c, const struct store_upload *u, uint64_t offset,
                  const void *data, size_t len, struct err **errp)
{
    cleanup_free char *path = staged_path(c, u->id);
    cleanup_close int fd = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat st;

    if (fd < 0 || fstat(fd, &st) < 0)
        return err_set(errp, ERR_NOT_FOUND, errno, "upload session %s", u->id);
    if ((uint64_t)st.st_size != offset)
        return err_set(errp, ERR_INVALID, 0,
                       "X-Goog-Upload-Offset is %llu but %llu bytes were received",
                       (unsigned long long)offset, (unsigned long long)st.st_size);
    if (offset + len > u->total)
        return err_set(errp, ERR_INVALID, 0, "more bytes than the %llu announced",
                       (unsigned long long)u->total);
    if (pwrite(fd, data, len, (off_t)offset) != (ssize_t)len) {
        int en = errno;
        /* Leave the file as it was before this chunk, so the client can resend it. */
        if (ftruncate(fd, (off_t)offset) < 0)
            log_warn("truncate upload %s", u->id);
        return err_set(errp, en == ENOSPC ? ERR_LIMIT : ERR_IO, en, "stage upload");
    }
    return 0;
}

int
env_upload_finish(struct env_ctx *c, const struct store_upload *u, struct err **errp)
{
    cleanup_free char *path = staged_path(c, u->id);
    cleanup_free char *dir = NULL;
    cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat st;
    int r;

    if (fd < 0 || fstat(fd, &st) < 0)
        return err_set(errp, ERR_NOT_FOUND, errno, "upload session %s", u->id);
    if ((uint64_t)st.st_size != u->total)
        return err_set(errp, ERR_INVALID, 0, "upload ended after %llu of the %llu bytes announced",
                       (unsigned long long)st.st_size, (unsigned long long)u->total);
    if (env_use_owned(c, u->project, u->env_id, &dir, errp) < 0)
        return -1;
    if (u->extract)
        r = sandbox_extract(dir, u->path, fd, 0, errp);
    else if (!u->overwrite)
        r = sandbox_file_create(dir, u->path, 0644, fd, 0, errp);
    else
        r = sandbox_file_write(dir, u->path, 0644, fd, 0, errp);
    if (r < 0)
        return -1;
    env_upload_abort(c, u->id);
    return 0;
}

void
env_upload_abort(struct env_ctx *c, const char *id)
{
    cleanup_free char *path = staged_path(c, id);

    store_upload_delete(c->store, id, NULL);
    unlink(path);
}
