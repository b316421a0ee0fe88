/*
 * store — paddock's state in one SQLite database (WAL) under the data directory. It knows
 * neither HTTP nor sandboxes: it records what the other modules tell it, transactionally.
 * One connection per thread; several processes (CLI invocations, the server) may share the
 * file, so writers wait up to a busy timeout.
 */
#ifndef PADDOCK_STORE_H
#define PADDOCK_STORE_H

#include <stdint.h>

#include "common/common.h"

struct store;

enum store_env_state {
    STORE_ENV_CREATING = 0, /* row exists, the sandbox is being set up */
    STORE_ENV_RUNNING,      /* an init was started; liveness is checked by env/ */
    STORE_ENV_STOPPED,      /* no processes; files kept */
};

/** One environment row. Strings are fixed-size so the struct copies by value. */
struct store_env {
    char id[40];
    enum store_env_state state;
    char network[16];      /* "disabled" or "open" */
    char image[32];        /* base image name, "host" */
    uint64_t memory_bytes; /* cgroup memory limit */
    uint32_t cpus_milli;   /* CPU quota in thousandths of a CPU */
    uint64_t pids;         /* pids cap */
    uint64_t disk_bytes;   /* disk cap */
    uint32_t uid_slot;     /* index of the env's 65536-id host range */
    int64_t init_pid;      /* host pid of the sandbox's init, 0 when none */
    uint64_t init_start;   /* its start time in clock ticks (guards against pid reuse) */
    int64_t created_ms;
    int64_t updated_ms;
    int64_t last_used_ms;
};

/**
 * Opens (creating when missing) the database at path, sets WAL, foreign keys and a busy
 * timeout, and runs pending migrations. *out is owned; free with store_close().
 */
int store_open(const char *path, struct store **out, struct err **errp);

/** Closes the database; accepts NULL. */
void store_close(struct store *s);

/** The printable name of a state ("creating", "running", "stopped"). Borrowed. */
const char *store_env_state_name(enum store_env_state st);

/**
 * Inserts env (state, limits, times as given) and picks a uid slot below max_slots that no
 * other environment holds, chosen at random; the slot is written back to env->uid_slot.
 * ERR_CONFLICT when the id exists, ERR_LIMIT when every slot is taken.
 */
int store_env_insert(struct store *s, struct store_env *env, uint32_t max_slots,
                     struct err **errp);

/** Reads one environment. ERR_NOT_FOUND when there is none with that id. */
int store_env_get(struct store *s, const char *id, struct store_env *out, struct err **errp);

/** Lists every environment, oldest first. *out is owned (free()); *n_out its length. */
int store_env_list(struct store *s, struct store_env **out, size_t *n_out, struct err **errp);

/** Records a new state and init identity (pid 0 when none). ERR_NOT_FOUND when missing. */
int store_env_set_state(struct store *s, const char *id, enum store_env_state st, int64_t init_pid,
                        uint64_t init_start, struct err **errp);

/** Records activity now. ERR_NOT_FOUND when missing. */
int store_env_touch(struct store *s, const char *id, struct err **errp);

/** Deletes one environment row. ERR_NOT_FOUND when missing. */
int store_env_delete(struct store *s, const char *id, struct err **errp);

#endif
