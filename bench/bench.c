/*
 * paddock-bench: the sandbox runtime's figures, side by side with bubblewrap in the same run.
 * It drives the same library calls the CLI and the server use (env/ over sandbox/), in a
 * data directory of its own, and prints medians and p99 of each phase, the ratio to bwrap,
 * and the host memory that idle running environments cost.
 *
 * Creates are measured twice: cold (a new sandbox: no_pool) and pooled (a claim from the warm
 * pool, which a refiller thread keeps at --pool N between iterations, as `paddock serve`
 * does). As in the server, every sandbox start goes through the spawner.
 *
 *   paddock-bench [--data-dir DIR] [--iterations N] [--idle N] [--pool N]
 */
#include <errno.h>
#include <getopt.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "env/env.h"

static int
cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void
report(const char *name, int64_t *v, size_t n, double ref_p50)
{
    double p50, p99;

    qsort(v, n, sizeof(*v), cmp_i64);
    p50 = v[n / 2] / 1e6;
    p99 = v[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1] / 1e6;
    if (ref_p50 > 0)
        printf("%-34s p50 %8.3f ms   p99 %8.3f ms   (%.2fx bwrap)\n", name, p50, p99,
               p50 / ref_p50);
    else
        printf("%-34s p50 %8.3f ms   p99 %8.3f ms\n", name, p50, p99);
}

static int
discard(int stream, const void *data, size_t len, void *arg)
{
    (void)stream, (void)data, (void)len, (void)arg;
    return 0;
}

static int
run_true(const char *dir, struct err **errp)
{
    static const char *const argv[] = {"/bin/true", NULL};
    struct sandbox_exec_opts o = {.argv = argv, .stdin_fd = -1, .on_output = discard,
                                  .max_output = 1 << 20};
    struct sandbox_exec_result r;

    if (sandbox_exec(dir, &o, &r, errp) < 0)
        return -1;
    if (!r.exited || r.code != 0)
        return err_set(errp, ERR_INTERNAL, 0, "/bin/true failed in the sandbox");
    return 0;
}

/* One bwrap run of /bin/true; -1 when bwrap is missing or fails. */
static int64_t
bwrap_once(void)
{
    extern char **environ;
    static char a0[] = "bwrap", a1[] = "--unshare-all", a2[] = "--die-with-parent",
                a3[] = "--ro-bind", a4[] = "/", a5[] = "--proc", a6[] = "/proc", a7[] = "--dev",
                a8[] = "/dev", a9[] = "/bin/true";
    char *const argv[] = {a0, a1, a2, a3, a4, a4, a5, a6, a7, a8, a9, NULL};
    int64_t t0 = util_mono_ns();
    pid_t pid;
    int st;

    if (posix_spawnp(&pid, "bwrap", NULL, NULL, argv, environ) != 0)
        return -1;
    if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        return -1;
    return util_mono_ns() - t0;
}

static long
mem_available_kb(void)
{
    FILE *f = fopen("/proc/meminfo", "re");
    char line[256];
    long kb = -1;

    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "MemAvailable: %ld kB", &kb) == 1)
            break;
    if (f != NULL)
        fclose(f);
    return kb;
}

/* Captures a command's stdout (up to 4 KiB). */
struct outbuf {
    char b[4096];
    size_t n;
};

static int
keep_out(int stream, const void *data, size_t len, void *arg)
{
    struct outbuf *o = arg;

    if (stream == 1 && o->n + len < sizeof(o->b)) {
        memcpy(o->b + o->n, data, len);
        o->n += len;
        o->b[o->n] = '\0';
    }
    return 0;
}

/*
 * The exec round trip's floor, measured inside the sandbox in the same run: posix_spawn +
 * waitpid of /bin/true from a process already running there (python3's os.posix_spawn is
 * glibc's, a vfork-style clone as the handler's). Prints one number: the median in ns.
 */
static const char floor_script[] =
    "import os,sys,time\n"
    "v=[]\n"
    "for i in range(int(sys.argv[1])):\n"
    " t=time.monotonic_ns();p=os.posix_spawn('/bin/true',['/bin/true'],{});os.waitpid(p,0)\n"
    " v.append(time.monotonic_ns()-t)\n"
    "v.sort();print(v[len(v)//2])\n";

/* Tight loop of n execs into one environment, and the floor beside it. */
static int
exec_loop(const char *dir, size_t n, int64_t *t, int64_t *floor_ns, struct err **errp)
{
    char niter[32];
    const char *argv[] = {"/usr/bin/python3", "-c", floor_script, niter, NULL};
    struct outbuf out = {.n = 0};
    struct sandbox_exec_opts o = {.argv = argv, .stdin_fd = -1, .on_output = keep_out,
                                  .arg = &out, .max_output = 4096};
    struct sandbox_exec_result r;

    for (size_t i = 0; i < n; i++) {
        int64_t t0 = util_mono_ns();
        if (run_true(dir, errp) < 0)
            return -1;
        t[i] = util_mono_ns() - t0;
    }
    snprintf(niter, sizeof(niter), "%zu", n);
    if (sandbox_exec(dir, &o, &r, errp) < 0)
        return -1;
    *floor_ns = strtoll(out.b, NULL, 10);
    return 0;
}

/* Waits (up to 10 s) until the refiller has filled the pool again. */
static void
wait_pool_full(void)
{
    struct timespec ts = {0, 200 * 1000};

    for (int i = 0; i < 50000 && !env_pool_full(); i++)
        nanosleep(&ts, NULL);
}

static int
fail(struct err *e)
{
    fprintf(stderr, "paddock-bench: %s\n", e->msg);
    err_free(e);
    return 1;
}

int
main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"data-dir", required_argument, NULL, 'd'},
        {"iterations", required_argument, NULL, 'n'},
        {"idle", required_argument, NULL, 'i'},
        {"pool", required_argument, NULL, 'p'},
        {NULL, 0, NULL, 0},
    };
    char tmpl[] = "/tmp/paddock-bench.XXXXXX";
    const char *dir = NULL;
    size_t n = 200, idle = 200, pool = 2;
    struct env_ctx *ctx = NULL;
    struct env_create_opts co = {0};
    struct err *e = NULL;
    int c;

    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'd')
            dir = optarg;
        else if (c == 'n')
            n = strtoul(optarg, NULL, 10);
        else if (c == 'i')
            idle = strtoul(optarg, NULL, 10);
        else if (c == 'p')
            pool = strtoul(optarg, NULL, 10);
        else
            return 2;
    }
    if (n < 10)
        n = 10;
    if (pool < 1)
        pool = 1;
    if (dir == NULL && (dir = mkdtemp(tmpl)) == NULL)
        return perror("mkdtemp"), 1;
    /* Before any thread, as the server does. */
    if (sandbox_spawner_start(&e) < 0 || env_ctx_open(dir, 8ULL << 30, &ctx, &e) < 0)
        return fail(e);
    co.no_pool = true;

    int64_t *t_bwrap = calloc(n, sizeof(int64_t)), *t_create = calloc(n, sizeof(int64_t));
    int64_t *t_exec = calloc(n, sizeof(int64_t)), *t_restart = calloc(n, sizeof(int64_t));
    int64_t *t_destroy = calloc(n, sizeof(int64_t)), *t_pooled = calloc(n, sizeof(int64_t));
    struct env_create_opts po = {0};
    struct store_env env;
    char *edir = NULL;
    bool have_bwrap = bwrap_once() > 0;

    /* Warm up: storage mount, image build, seccomp compilation happen once. */
    if (env_create(ctx, &co, &env, &e) < 0 || env_destroy(ctx, env.id, &e) < 0 ||
        env_pool_start(dir, 8ULL << 30, pool, &e) < 0)
        return fail(e);
    printf("paddock-bench: %zu iterations, %zu idle environments, warm pool of %zu, data dir %s\n",
           n, idle, pool, dir);
    for (size_t i = 0; i < n; i++) {
        /* Pooled: the claim, then the first exec. The refiller makes the next one while this
         * loop waits, never while it measures. */
        wait_pool_full();
        int64_t t0 = util_mono_ns();
        if (env_create(ctx, &po, &env, &e) < 0 || env_use(ctx, env.id, &edir, &e) < 0 ||
            run_true(edir, &e) < 0)
            return fail(e);
        t_pooled[i] = util_mono_ns() - t0;
        free(edir);
        edir = NULL;
        if (env_destroy(ctx, env.id, &e) < 0)
            return fail(e);
        wait_pool_full();
        /* Interleaved, so both see the same machine state. */
        if (have_bwrap)
            t_bwrap[i] = bwrap_once();
        t0 = util_mono_ns();
        if (env_create(ctx, &co, &env, &e) < 0 || env_use(ctx, env.id, &edir, &e) < 0 ||
            run_true(edir, &e) < 0)
            return fail(e);
        t_create[i] = util_mono_ns() - t0;
        for (int k = 0; k < 1; k++) {
            t0 = util_mono_ns();
            if (run_true(edir, &e) < 0)
                return fail(e);
            t_exec[i] = util_mono_ns() - t0;
        }
        t0 = util_mono_ns();
        if (env_stop(ctx, env.id, &e) < 0 || env_start(ctx, env.id, NULL, &e) < 0)
            return fail(e);
        t_restart[i] = util_mono_ns() - t0;
        t0 = util_mono_ns();
        if (env_destroy(ctx, env.id, &e) < 0)
            return fail(e);
        t_destroy[i] = util_mono_ns() - t0;
        free(edir);
        edir = NULL;
    }
    double ref = 0;
    if (have_bwrap) {
        qsort(t_bwrap, n, sizeof(int64_t), cmp_i64);
        ref = t_bwrap[n / 2] / 1e6;
        report("bwrap /bin/true (peer)", t_bwrap, n, 0);
    } else {
        printf("bwrap: not installed, no peer figure (apt-get install bubblewrap)\n");
    }
    report("create -> first exec (cold)", t_create, n, ref);
    report("create -> first exec (warm pool)", t_pooled, n, ref);
    report("exec round trip /bin/true", t_exec, n, 0);
    report("stop -> start", t_restart, n, 0);
    report("destroy", t_destroy, n, 0);
    {
        int64_t floor_ns = 0;
        if (env_create(ctx, &co, &env, &e) < 0 || env_use(ctx, env.id, &edir, &e) < 0 ||
            exec_loop(edir, n, t_exec, &floor_ns, &e) < 0 || env_destroy(ctx, env.id, &e) < 0)
            return fail(e);
        free(edir);
        edir = NULL;
        printf("%-34s p50 %8.3f ms   (in-sandbox floor)\n", "posix_spawn+wait /bin/true",
               floor_ns / 1e6);
        qsort(t_exec, n, sizeof(int64_t), cmp_i64);
        printf("%-34s p50 %8.3f ms   p99 %8.3f ms   (%.2fx the floor)\n",
               "exec round trip, tight loop", t_exec[n / 2] / 1e6,
               t_exec[(n * 99) / 100] / 1e6, (double)t_exec[n / 2] / (double)floor_ns);
    }

    /* Memory: MemAvailable before and after starting idle environments. */
    char (*ids)[40] = calloc(idle, 40);
    sync();
    long before = mem_available_kb();
    for (size_t i = 0; i < idle; i++) {
        if (env_create(ctx, &co, &env, &e) < 0)
            return fail(e);
        memcpy(ids[i], env.id, sizeof(env.id));
    }
    sleep(1);
    long after = mem_available_kb();
    printf("%-34s %.2f MiB per environment (%zu running, MemAvailable %ld -> %ld MiB)\n",
           "host memory per idle environment", (before - after) / 1024.0 / (double)idle, idle,
           before / 1024, after / 1024);
    for (size_t i = 0; i < idle; i++)
        if (env_destroy(ctx, ids[i], &e) < 0)
            return fail(e);
    env_pool_stop();
    if (env_teardown(ctx, &e) < 0)
        return fail(e);
    env_ctx_close(ctx);
    return 0;
}
