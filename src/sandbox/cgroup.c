/*
 * cgroup backends. v2 is used where /sys/fs/cgroup is a cgroup2 mount with the memory and
 * pids controllers available; otherwise v1 with the memory, cpu and pids hierarchies
 * (this is how a hybrid host such as this one is set up: controllers on v1, an empty v2).
 * Every sandbox gets <root>/paddock/<id> in each hierarchy.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/magic.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

#include "sandbox_int.h"

#define CG_ROOT   "/sys/fs/cgroup"
#define CG_PARENT "paddock"
#define CPU_PERIOD_US 100000u

static const char *const v1_ctrls[] = {"memory", "cpu", "pids"};

static int
write_str(const char *path, const char *val, struct err **errp)
{
    cleanup_close int fd = open(path, O_WRONLY | O_CLOEXEC);

    if (fd < 0)
        return err_set(errp, ERR_IO, errno, "open %s", path);
    if (util_write_all(fd, val, strlen(val)) < 0)
        return err_set(errp, ERR_IO, errno, "write '%s' to %s", val, path);
    return 0;
}

static int
mkdir_ok(const char *path, struct err **errp)
{
    if (mkdir(path, 0755) < 0 && errno != EEXIST)
        return err_set(errp, ERR_IO, errno, "mkdir %s", path);
    return 0;
}

/* rmdir that waits (up to about a second) for exiting tasks to leave the cgroup. */
static int
rmdir_wait(const char *path, struct err **errp)
{
    for (int i = 0; i < 200; i++) {
        if (rmdir(path) == 0 || errno == ENOENT)
            return 0;
        if (errno != EBUSY)
            return err_set(errp, ERR_IO, errno, "rmdir %s", path);
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return err_set(errp, ERR_IO, EBUSY, "rmdir %s", path);
}

/* Writes the limits into the sandbox's existing v1 groups (0 fields are left alone). */
static int
v1_limit(const char *id, const struct sandbox_limits *lim, struct err **errp)
{
    char path[256], val[64];

    if (lim->memory_bytes > 0) {
        snprintf(path, sizeof(path), CG_ROOT "/memory/" CG_PARENT "/%s/memory.limit_in_bytes", id);
        snprintf(val, sizeof(val), "%" PRIu64, lim->memory_bytes);
        if (write_str(path, val, errp) < 0)
            return -1;
    }
    if (lim->cpus_milli > 0) {
        snprintf(path, sizeof(path), CG_ROOT "/cpu/" CG_PARENT "/%s/cpu.cfs_period_us", id);
        snprintf(val, sizeof(val), "%u", CPU_PERIOD_US);
        if (write_str(path, val, errp) < 0)
            return -1;
        snprintf(path, sizeof(path), CG_ROOT "/cpu/" CG_PARENT "/%s/cpu.cfs_quota_us", id);
        snprintf(val, sizeof(val), "%" PRIu64, (uint64_t)lim->cpus_milli * CPU_PERIOD_US / 1000);
        if (write_str(path, val, errp) < 0)
            return -1;
    }
    if (lim->pids > 0) {
        snprintf(path, sizeof(path), CG_ROOT "/pids/" CG_PARENT "/%s/pids.max", id);
        snprintf(val, sizeof(val), "%" PRIu64, lim->pids);
        if (write_str(path, val, errp) < 0)
            return -1;
    }
    return 0;
}

static int
v1_create(const char *id, const struct sandbox_limits *lim, struct err **errp)
{
    char path[256];

    for (size_t i = 0; i < sizeof(v1_ctrls) / sizeof(v1_ctrls[0]); i++) {
        snprintf(path, sizeof(path), CG_ROOT "/%s/" CG_PARENT, v1_ctrls[i]);
        if (mkdir_ok(path, errp) < 0)
            return -1;
        snprintf(path, sizeof(path), CG_ROOT "/%s/" CG_PARENT "/%s", v1_ctrls[i], id);
        if (mkdir_ok(path, errp) < 0)
            return -1;
    }
    return v1_limit(id, lim, errp);
}

static int
v1_attach(const char *id, pid_t pid, struct err **errp)
{
    char path[256], val[32];

    snprintf(val, sizeof(val), "%d", (int)pid);
    for (size_t i = 0; i < sizeof(v1_ctrls) / sizeof(v1_ctrls[0]); i++) {
        snprintf(path, sizeof(path), CG_ROOT "/%s/" CG_PARENT "/%s/cgroup.procs", v1_ctrls[i], id);
        if (write_str(path, val, errp) < 0)
            return -1;
    }
    return 0;
}

/* Kills whatever is still listed in a cgroup (v1 has no cgroup.kill). */
static void
kill_procs(const char *procs_path)
{
    cleanup_fclose FILE *f = fopen(procs_path, "re");
    char line[32];

    if (f == NULL)
        return;
    while (fgets(line, sizeof(line), f) != NULL) {
        long pid = strtol(line, NULL, 10);
        if (pid > 1)
            kill((pid_t)pid, SIGKILL);
    }
}

static int
v1_destroy(const char *id, struct err **errp)
{
    char path[256];
    int rc = 0;

    for (size_t i = 0; i < sizeof(v1_ctrls) / sizeof(v1_ctrls[0]); i++) {
        snprintf(path, sizeof(path), CG_ROOT "/%s/" CG_PARENT "/%s/cgroup.procs", v1_ctrls[i], id);
        kill_procs(path);
        snprintf(path, sizeof(path), CG_ROOT "/%s/" CG_PARENT "/%s", v1_ctrls[i], id);
        if (rc == 0 && rmdir_wait(path, errp) < 0)
            rc = -1;
    }
    return rc;
}

static const struct cgroup_ops v1_ops = {
    .name = "v1",
    .create = v1_create,
    .limit = v1_limit,
    .attach = v1_attach,
    .destroy = v1_destroy,
};

/* Writes the limits into the sandbox's existing v2 group (0 fields are left alone). */
static int
v2_limit(const char *id, const struct sandbox_limits *lim, struct err **errp)
{
    char path[256], val[64];

    if (lim->memory_bytes > 0) {
        snprintf(path, sizeof(path), CG_ROOT "/" CG_PARENT "/%s/memory.max", id);
        snprintf(val, sizeof(val), "%" PRIu64, lim->memory_bytes);
        if (write_str(path, val, errp) < 0)
            return -1;
        snprintf(path, sizeof(path), CG_ROOT "/" CG_PARENT "/%s/memory.swap.max", id);
        write_str(path, "0", NULL);
    }
    if (lim->cpus_milli > 0) {
        snprintf(path, sizeof(path), CG_ROOT "/" CG_PARENT "/%s/cpu.max", id);
        snprintf(val, sizeof(val), "%" PRIu64 " %u",
                 (uint64_t)lim->cpus_milli * CPU_PERIOD_US / 1000, CPU_PERIOD_US);
        if (write_str(path, val, errp) < 0)
            return -1;
    }
    if (lim->pids > 0) {
        snprintf(path, sizeof(path), CG_ROOT "/" CG_PARENT "/%s/pids.max", id);
        snprintf(val, sizeof(val), "%" PRIu64, lim->pids);
        if (write_str(path, val, errp) < 0)
            return -1;
    }
    return 0;
}

static int
v2_create(const char *id, const struct sandbox_limits *lim, struct err **errp)
{
    char path[256];

    /* Enabling controllers that are already enabled is harmless. */
    if (write_str(CG_ROOT "/cgroup.subtree_control", "+memory +cpu +pids", errp) < 0)
        return -1;
    if (mkdir_ok(CG_ROOT "/" CG_PARENT, errp) < 0)
        return -1;
    if (write_str(CG_ROOT "/" CG_PARENT "/cgroup.subtree_control", "+memory +cpu +pids", errp) <
        0)
        return -1;
    snprintf(path, sizeof(path), CG_ROOT "/" CG_PARENT "/%s", id);
    if (mkdir_ok(path, errp) < 0)
        return -1;
    return v2_limit(id, lim, errp);
}

static int
v2_attach(const char *id, pid_t pid, struct err **errp)
{
    char path[256], val[32];

    snprintf(val, sizeof(val), "%d", (int)pid);
    snprintf(path, sizeof(path), CG_ROOT "/" CG_PARENT "/%s/cgroup.procs", id);
    return write_str(path, val, errp);
}

static int
v2_destroy(const char *id, struct err **errp)
{
    char path[256];

    snprintf(path, sizeof(path), CG_ROOT "/" CG_PARENT "/%s/cgroup.kill", id);
    if (write_str(path, "1", NULL) < 0) {
        snprintf(path, sizeof(path), CG_ROOT "/" CG_PARENT "/%s/cgroup.procs", id);
        kill_procs(path);
    }
    snprintf(path, sizeof(path), CG_ROOT "/" CG_PARENT "/%s", id);
    return rmdir_wait(path, errp);
}

static const struct cgroup_ops v2_ops = {
    .name = "v2",
    .create = v2_create,
    .limit = v2_limit,
    .attach = v2_attach,
    .destroy = v2_destroy,
};

/* True when the v2 hierarchy at CG_ROOT offers the controllers paddock needs. */
static bool
v2_usable(void)
{
    struct statfs sfs;
    cleanup_free char *ctrls = NULL;

    if (statfs(CG_ROOT, &sfs) < 0 || sfs.f_type != CGROUP2_SUPER_MAGIC)
        return false;
    if (util_read_file_at(AT_FDCWD, CG_ROOT "/cgroup.controllers", 4096, &ctrls, NULL, NULL) < 0)
        return false;
    return strstr(ctrls, "memory") != NULL && strstr(ctrls, "pids") != NULL &&
           strstr(ctrls, "cpu") != NULL;
}

const struct cgroup_ops *
sandbox__cgroup_ops(struct err **errp)
{
    struct statfs sfs;

    if (v2_usable())
        return &v2_ops;
    for (size_t i = 0; i < sizeof(v1_ctrls) / sizeof(v1_ctrls[0]); i++) {
        char path[128];
        snprintf(path, sizeof(path), CG_ROOT "/%s", v1_ctrls[i]);
        if (statfs(path, &sfs) < 0 || sfs.f_type != CGROUP_SUPER_MAGIC) {
            err_set(errp, ERR_INTERNAL, 0,
                    "no usable cgroups: %s is not a v1 hierarchy and the v2 hierarchy at %s "
                    "lacks the memory, cpu and pids controllers",
                    path, CG_ROOT);
            return NULL;
        }
    }
    return &v1_ops;
}

int
sandbox_set_limits(const char *id, uint64_t memory_bytes, uint32_t cpus_milli, uint64_t pids,
                   struct err **errp)
{
    const struct cgroup_ops *cg = sandbox__cgroup_ops(errp);
    struct sandbox_limits lim = {memory_bytes, cpus_milli, pids};

    if (cg == NULL || cg->limit(id, &lim, errp) < 0)
        return err_wrap(errp, "limits of sandbox %s", id);
    return 0;
}
