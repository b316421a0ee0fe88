/*
 * sandbox — the isolation runtime. It executes a fully resolved spec and holds no policy:
 * namespaces, id maps, the overlay root, cgroups, seccomp, the pid-1 init, exec and file
 * operations carried out inside the sandbox, start/stop, and the storage that gives every
 * environment a persistent, size-capped directory. Every privileged operation of paddock
 * lives in this module. See docs/internals/SANDBOX.md.
 */
#ifndef PADDOCK_SANDBOX_H
#define PADDOCK_SANDBOX_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/common.h"

/** Each sandbox maps 65536 ids: sandbox id N is host id host_id + N. */
#define SANDBOX_ID_RANGE 65536u
/** The first host id of slot 0; slot s starts at SANDBOX_ID_BASE + s * SANDBOX_ID_RANGE. */
#define SANDBOX_ID_BASE 0x40000000u
/** Number of slots; they end below 2^31 so no id is ever negative as a signed int. */
#define SANDBOX_ID_SLOTS 16383u

/* ------------------------------------------------------------- storage */

/**
 * Makes sure dir/envs is the data directory's storage: a btrfs file system in the sparse
 * image dir/storage.img (created with size_if_new bytes when missing), loop-mounted with
 * quotas enabled. Every environment is a subvolume of it with a qgroup limit: the disk cap.
 * Idempotent and safe against concurrent callers (flock on dir/storage.lock).
 */
int sandbox_storage_ensure(const char *dir, uint64_t size_if_new, struct err **errp);

/** Unmounts dir/envs (the loop device detaches itself). A no-op when not mounted. */
int sandbox_storage_unmount(const char *dir, struct err **errp);

/**
 * Creates the environment's subvolume envs_dir/id capped at disk_bytes, with the overlay
 * directories owned by host_id (the sandbox's root) and /etc/hosts, /etc/hostname for id.
 */
int sandbox_volume_create(const char *envs_dir, const char *id, uint32_t host_id,
                          uint64_t disk_bytes, struct err **errp);

/**
 * Creates the volume id as a copy of src_id (a btrfs snapshot: instant, sharing blocks), with
 * every owner moved from src_host_id's range to host_id's, capped at disk_bytes. src may be
 * running: the copy is what its disk held at that instant. snapped(arg), when not NULL, is
 * called once that instant is past (the snapshot taken, or failed), before the copy's files
 * are walked: a caller that holds src still can let it go then.
 */
int sandbox_volume_fork(const char *envs_dir, const char *src_id, const char *id,
                        uint32_t src_host_id, uint32_t host_id, uint64_t disk_bytes,
                        void (*snapped)(void *arg), void *arg, struct err **errp);

/** Sets the disk cap of the volume envs_dir/id (a running sandbox's too). */
int sandbox_volume_set_disk(const char *envs_dir, const char *id, uint64_t disk_bytes,
                            struct err **errp);

/**
 * Deletes the subvolume envs_dir/id and everything in it. It never walks the tree, so no
 * symlink planted inside can redirect it. A missing volume is not an error.
 */
int sandbox_volume_destroy(const char *envs_dir, const char *id, struct err **errp);

/* --------------------------------------------------------------- image */

/**
 * Makes sure images_dir/host exists: the skeleton of the default base image (a synthesized
 * /etc, the /bin, /sbin, /lib* links and empty mount points; /usr comes from the host at
 * start). Built once into a temporary directory and renamed into place. *path_out is owned.
 */
int sandbox_image_ensure_host(const char *images_dir, char **path_out, struct err **errp);

/**
 * Puts a file into an image skeleton at rel (e.g. "etc/paddock/ca.pem"), 0644, creating its
 * directories; a no-op when the same content is there. Every sandbox sees it read-only in its
 * lower layer, so a file all environments share costs nothing per environment.
 */
int sandbox_image_put(const char *image_dir, const char *rel, const void *data, size_t len,
                      struct err **errp);

/* ----------------------------------------------------------- lifecycle */

/** The resolved spec of one sandbox start. Strings are borrowed for the call. */
struct sandbox_spec {
    const char *id;        /* environment id: hostname and cgroup name */
    const char *env_dir;   /* the volume made by sandbox_volume_create() */
    const char *image_dir; /* skeleton made by sandbox_image_ensure_host() */
    uint32_t host_id;      /* first host uid/gid of the sandbox's range */
    uint64_t memory_bytes; /* 0: no limit */
    uint32_t cpus_milli;   /* 0: no limit */
    uint64_t pids;         /* 0: no limit */
};

/*
 * The generation of the code that runs inside a sandbox: its init, the handlers init forks,
 * and what the start set up (mounts, descriptors). Init is forked, never executed afresh, so a
 * sandbox runs the code of the build that started it for as long as it runs, across upgrades
 * of paddock. Bump this with a change that closes a hole such a sandbox would keep: an
 * environment started by an older generation is stopped when a newer build next looks at it
 * (its files stay; its next use starts it with this build's code). Changes that close no
 * hole leave it alone, so that an upgrade does not end the processes of every environment.
 *   1  handlers' layer descriptors (fds 5 and 6) are detached read-only mounts: before, a
 *      path through /proc/self/fd/5/.. reached the volume's directory on the host.
 */
#define SANDBOX_INIT_GEN 1u

/** Identity of a running sandbox's init: host pid plus start time, safe against reuse. */
struct sandbox_init {
    pid_t pid;
    uint64_t start; /* field 22 of /proc/PID/stat */
};

/**
 * Starts a sandbox: creates namespaces, cgroups and the root file system, and leaves
 * paddock's init running as its pid 1, serving env_dir/ctl.sock. The init is not a child
 * of the caller (it is reparented away), so it outlives the calling process.
 * It forks: a multi-threaded process must have started the spawner first.
 */
int sandbox_start(const struct sandbox_spec *spec, struct sandbox_init *out, struct err **errp);

/**
 * Forks the spawner: a single-threaded process that performs every later sandbox_start() of
 * this process. A multi-threaded caller calls it first, before any thread exists and before
 * it holds any secret in memory. Idempotent.
 */
int sandbox_spawner_start(struct err **errp);

/**
 * The port on 127.0.0.1 that every sandbox keeps for the egress proxy. Its init binds it
 * before any of the sandbox's own code runs and holds it for the sandbox's life without
 * listening: nothing inside can take the port, whether or not a proxy is attached.
 */
#define SANDBOX_PROXY_PORT 3128

/**
 * A listening socket on 127.0.0.1:SANDBOX_PROXY_PORT in the running sandbox's network
 * namespace (non-blocking, close-on-exec): the one its init keeps, now listening. For a
 * sandbox started before inits kept one, a socket made in its namespace. Processes in the
 * sandbox connect to it; whoever holds the fd accepts, outside. Connections made while
 * nobody holds it (the server restarting) wait in its backlog. ERR_CONFLICT when the
 * sandbox is not running, or (an older sandbox) the port is taken inside.
 */
int sandbox_proxy_listen(const struct sandbox_init *init, struct err **errp);

/**
 * Makes fd, from sandbox_proxy_listen(), stop listening for every holder: waiting and new
 * connections are refused, and the port stays the sandbox's until sandbox_proxy_relisten().
 */
void sandbox_proxy_unlisten(int fd);

/** Makes fd, from sandbox_proxy_listen(), listen again after sandbox_proxy_unlisten(). */
int sandbox_proxy_relisten(int fd);

/**
 * sandbox_proxy_unlisten() on the socket init keeps, for a listener nobody holds any more
 * (a server before this one attached it). Nothing to do for a sandbox that keeps none.
 */
int sandbox_proxy_refuse(const struct sandbox_init *init, struct err **errp);

/**
 * Sets the cgroup limits of the running sandbox id (a warm one claimed for a user): memory
 * in bytes, CPU in thousandths, pids. 0 leaves that limit as it is.
 */
int sandbox_set_limits(const char *id, uint64_t memory_bytes, uint32_t cpus_milli, uint64_t pids,
                       struct err **errp);

/** True when processes other than init run in the sandbox (a command, a handler). */
bool sandbox_busy(const struct sandbox_init *init);

/** True when init is alive and is the process that was started (not a reused pid). */
bool sandbox_alive(const struct sandbox_init *init);

/**
 * Stops a sandbox: kills its pid namespace (every process in it), waits until they are gone
 * and removes its cgroups. Files are kept. Stopping a dead sandbox only removes cgroups.
 */
int sandbox_stop(const char *id, const struct sandbox_init *init, struct err **errp);

/* ------------------------------------------------------ exec and files */

/*
 * Every call below talks to the sandbox's init over its control socket. Each connect, send
 * or read that makes no progress for 10 s fails with ERR_TIMEOUT naming the operation
 * (processes of the sandbox can stop its handlers). That limit is on inactivity only: a
 * transfer of any size goes on while bytes flow, and so does a long walk (a count, a listing,
 * an extraction) whose handler sends keep-alives. A process of the sandbox that stops the
 * busy handler and lets it go again every few seconds can thus keep one call going for ever;
 * only a caller that set a deadline (sandbox_deadline_set) is bounded in total. Exec waits
 * for output as long as the command runs, and for its result at most 10 s past its timeout.
 */

/**
 * Bounds the calling thread's control-socket calls below: from now on no connect, send or
 * read of this thread waits past ms milliseconds from now in all, whatever the sandbox sends
 * (keep-alives included), and one that would fails with ERR_TIMEOUT (exec's own wait for a
 * command's output is not bounded by it). Every call started
 * until the next sandbox_deadline_set() shares the one budget; 0 removes it. Set it around
 * calls made where nobody may wait long (the server's main loop, the agent's prompt), never
 * around user-driven transfers, and remove it after them.
 */
void sandbox_deadline_set(int64_t ms);

/** Called for each chunk of output; stream is 1 (stdout) or 2 (stderr). */
typedef int sandbox_output_cb(int stream, const void *data, size_t len, void *arg);

struct sandbox_exec_opts {
    const char *const *argv; /* NULL-terminated; or NULL when shell is set */
    const char *shell;       /* run as /bin/sh -c SHELL */
    const char *const *env;  /* NULL-terminated "K=V" added to the defaults, may be NULL */
    const char *cwd;         /* NULL: /workspace */
    uint64_t timeout_ms;     /* 0: none; past it the whole process tree is killed */
    uint64_t max_output;     /* per stream; bytes past it are dropped and counted */
    int stdin_fd;            /* -1: the command's stdin is empty */
    sandbox_output_cb *on_output;
    void *arg;
    const volatile int *cancel; /* NULL, or nonzero ends the exec (the tree is killed) */
};

struct sandbox_exec_result {
    bool exited;    /* true: code is valid; false: signal is valid */
    int code;       /* exit status */
    int signal;     /* terminating signal */
    bool timed_out; /* the timeout killed the process tree */
    uint64_t dropped[3]; /* bytes dropped past max_output, [1] stdout, [2] stderr */
    int64_t duration_ms;
};

/**
 * Runs a command in the running sandbox whose volume is env_dir, streaming output to
 * opts->on_output while it runs. Several execs may run at once. ERR_CONFLICT when the
 * sandbox is not running; ERR_TIMEOUT when no result came 10 s after opts->timeout_ms.
 */
int sandbox_exec(const char *env_dir, const struct sandbox_exec_opts *opts,
                 struct sandbox_exec_result *out, struct err **errp);

enum sandbox_file_type {
    SANDBOX_FILE_REG = 0,
    SANDBOX_FILE_DIR,
    SANDBOX_FILE_LINK,
    SANDBOX_FILE_OTHER,
};

struct sandbox_file_entry {
    const char *path; /* absolute inside the sandbox; borrowed for the callback */
    enum sandbox_file_type type;
    uint64_t size;
    unsigned mode; /* permission bits */
    int64_t mtime_ms;
};

typedef int sandbox_entry_cb(const struct sandbox_file_entry *e, void *arg);

/**
 * Checks a path given by a caller: absolute inside the sandbox, or relative to /workspace;
 * no ".." component, no NUL, at most 4095 bytes. *abs_out (owned) is the absolute form.
 */
int sandbox_path_resolve(const char *path, char **abs_out, struct err **errp);

/** Reads at most max bytes of a regular file from offset, passing them to cb (stream 1). */
int sandbox_file_read(const char *env_dir, const char *path, uint64_t offset, uint64_t max,
                      sandbox_output_cb *cb, void *arg, struct err **errp);

/**
 * Replaces (atomically) or creates a file with what is read from in_fd until EOF, creating
 * missing parent directories. At most max bytes are accepted (ERR_LIMIT past them, and the
 * old file is left as it was).
 */
int sandbox_file_write(const char *env_dir, const char *path, unsigned mode, int in_fd,
                       uint64_t max, struct err **errp);

/**
 * sandbox_file_write() that never replaces: when path exists (a file, a directory, anything),
 * now or by the time the content is in, ERR_CONFLICT and nothing changes. The check is the
 * rename itself (RENAME_NOREPLACE), so a file made meanwhile is never overwritten.
 */
int sandbox_file_create(const char *env_dir, const char *path, unsigned mode, int in_fd,
                        uint64_t max, struct err **errp);

/**
 * Lists path: a directory's entries (its whole subtree when recursive, never descending into
 * /proc, /sys or /dev), or a file itself. Entries come in path order (a sorted depth-first
 * walk), starting strictly after the path after (NULL: from the start), at most limit of
 * them (0: all).
 */
int sandbox_file_list(const char *env_dir, const char *path, bool recursive, const char *after,
                      size_t limit, sandbox_entry_cb *cb, void *arg, struct err **errp);

/**
 * Streams a tar (pax) of the environment's own layer (every file it added or changed over
 * its base image, paths relative to /, owners as inside the sandbox) to cb; with count_only
 * nothing is streamed. *files_out and *bytes_out (may be NULL) receive the number of
 * non-directory entries and the bytes of regular files.
 */
int sandbox_snapshot(const char *env_dir, bool count_only, sandbox_output_cb *cb, void *arg,
                     uint64_t *files_out, uint64_t *bytes_out, struct err **errp);

/**
 * Pull-style reads for streaming to a slow consumer: a whole file, or the snapshot. Opening
 * waits for init's first answer, so a missing file fails here, before any byte is promised.
 * read returns 0 at the end of a complete stream, -1 when it broke.
 */
struct sandbox_stream;
int sandbox_stream_open_read(const char *env_dir, const char *path, struct sandbox_stream **out,
                             struct err **errp);
int sandbox_stream_open_snapshot(const char *env_dir, struct sandbox_stream **out,
                                 struct err **errp);
ssize_t sandbox_stream_read(struct sandbox_stream *s, void *buf, size_t len, struct err **errp);
void sandbox_stream_close(struct sandbox_stream *s);

/**
 * Unpacks a tar (gzip, bzip2, xz) or zip archive read from in_fd into the directory dir
 * (created when missing), inside the sandbox. Every entry is checked before anything is
 * written: absolute names, ".." and links that leave dir refuse the whole archive.
 */
int sandbox_extract(const char *env_dir, const char *dir, int in_fd, uint64_t max,
                    struct err **errp);

/** Deletes a file, or a directory when recursive is true (never following symlinks). */
int sandbox_file_delete(const char *env_dir, const char *path, bool recursive,
                        struct err **errp);

#endif
