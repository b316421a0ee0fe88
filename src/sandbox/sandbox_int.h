/* Declarations shared by the files of src/sandbox/; no other module includes this. */
#ifndef PADDOCK_SANDBOX_INT_H
#define PADDOCK_SANDBOX_INT_H

#include <dirent.h>
#include <linux/filter.h>
#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "sandbox.h"

/* ------------------------------------------------ control protocol (proto.c) */

/*
 * Frames on the control socket: a 4-byte type and a 4-byte length (host byte order; both
 * ends are on one machine), then the payload. The first frame of a connection is a REQ;
 * the last one from init is a RESULT. Both sides cap every frame at PROTO_MAX_FRAME and
 * treat the other side as untrusted: init runs inside the sandbox.
 */
enum proto_type {
    PROTO_REQ = 1,   /* JSON request {"op": ...} */
    PROTO_STDIN,     /* raw bytes for the command's stdin */
    PROTO_STDIN_EOF, /* the command's stdin is closed */
    PROTO_STDOUT,    /* raw output */
    PROTO_STDERR,
    PROTO_DATA,      /* raw file content, either direction */
    PROTO_DATA_EOF,  /* end of file content */
    PROTO_ENTRY,     /* JSON file-list entry */
    PROTO_RESULT,    /* JSON {"ok":true,...} or {"ok":false,"code":..,"message":..} */
    PROTO_ALIVE,     /* empty: the handler is still at work (read past by the receiver) */
};

#define PROTO_MAX_FRAME (1u << 20)
#define PROTO_CHUNK     (64u * 1024)
#define PROTO_SOCK_NAME "ctl.sock"

/*
 * A caller waits at most this long for init at each step of a control connection: the
 * connect, each send and each read. It bounds inactivity, not the whole operation: a
 * transfer of any size goes on while bytes move, and a handler busy without sending (a
 * walk, an extraction, a recursive delete) sends PROTO_ALIVE every PROTO_ALIVE_NS. A
 * handler stopped by a process of the sandbox (SIGSTOP) then costs its caller this long
 * each time it stops, so a handler stopped and let go in turn (each keep-alive restarting the
 * timeout) can stretch an operation without end: a caller that must not wait long also sets a
 * deadline (sandbox_deadline_set), which bounds the whole operation. Exec waits for the
 * command's output without this limit (exec_client.c).
 */
#define PROTO_TIMEOUT_MS 10000
#define PROTO_ALIVE_NS   (1000 * 1000000LL)

struct proto_frame {
    uint32_t type;
    uint32_t len;
    char *data; /* owned, NUL-terminated for convenience */
};

/**
 * Writes one frame (blocking). ERR_TIMEOUT when the socket has a send timeout
 * (sandbox__proto_set_timeout) and the peer took nothing for that long.
 */
int sandbox__proto_send(int fd, uint32_t type, const void *data, size_t len, struct err **errp);
/** Writes a JSON object as one frame of the given type. */
int sandbox__proto_send_json(int fd, uint32_t type, json_t *obj, struct err **errp);
/**
 * Reads one frame header (blocking), checking type and length cap; PROTO_ALIVE frames are
 * read past. ERR_TIMEOUT when the socket has a receive timeout and nothing came for that long.
 */
int sandbox__proto_recv_header(int fd, uint32_t *type, uint32_t *len, struct err **errp);
/**
 * Reads exactly len bytes of a frame's payload; ERR_IO "truncated" when the peer closes first,
 * ERR_TIMEOUT as for sandbox__proto_recv_header().
 */
int sandbox__proto_recv_payload(int fd, void *data, size_t len, struct err **errp);
/** Reads what has come of a payload, 1 to len bytes (len > 0); errors as above. */
ssize_t sandbox__proto_recv_some(int fd, void *data, size_t len, struct err **errp);
/** Reads one frame (blocking). ERR_IO with errnum 0 and "closed" on a clean EOF. */
int sandbox__proto_recv(int fd, struct proto_frame *f, struct err **errp);
/** Makes every connect, send and receive on fd give up after timeout_ms without progress. */
int sandbox__proto_set_timeout(int fd, int timeout_ms, struct err **errp);

/*
 * In a handler: sends PROTO_ALIVE when PROTO_ALIVE_NS passed since the last, so that the
 * caller's timeout measures the handler's inactivity rather than the length of its work.
 * Called between the steps of long work that sends nothing else; next_ns starts at 0, and
 * the first call only starts the clock.
 */
struct proto_alive {
    int conn;
    int64_t next_ns;
};

void sandbox__proto_alive(struct proto_alive *a);
void sandbox__proto_frame_free(struct proto_frame *f);
/** Parses a frame's payload as a JSON object (depth and size already capped). */
json_t *sandbox__proto_parse_json(const struct proto_frame *f, struct err **errp);
/** Sends RESULT {"ok":false,"code":...,"message":...} for e. */
int sandbox__proto_send_error(int fd, const struct err *e);
/** Turns a RESULT frame into 0, or -1 with *errp rebuilt from the peer's error. */
int sandbox__proto_result(const struct proto_frame *f, json_t **obj_out, struct err **errp);

/*
 * Frames waiting to be sent on a socket without blocking (MSG_DONTWAIT), so that a side that
 * also has to read never deadlocks against a peer that is itself blocked writing.
 */
struct proto_sendq {
    struct buf b;
    size_t off;
};

void sandbox__sendq_init(struct proto_sendq *q);
/** Queues a frame. ERR_LIMIT when the queue already holds more than a few frames. */
int sandbox__sendq_push(struct proto_sendq *q, uint32_t type, const void *data, size_t len,
                        struct err **errp);
/** Sends what the socket accepts now. */
int sandbox__sendq_flush(struct proto_sendq *q, int fd, struct err **errp);
bool sandbox__sendq_pending(const struct proto_sendq *q);
void sandbox__sendq_free(struct proto_sendq *q);

/**
 * Arguments, environment values and paths are bytes, not necessarily UTF-8, while JSON
 * strings must be UTF-8: a valid string travels as itself, anything else as {"hex":"..."}.
 * Returns a new reference.
 */
json_t *sandbox__json_bytes(const char *s);
/** Decodes what sandbox__json_bytes() made. Owned; NULL when j is neither form (or holds NUL). */
char *sandbox__bytes_from_json(json_t *j);

/** Connects to env_dir/ctl.sock. ERR_CONFLICT when nothing listens (the sandbox is down). */
int sandbox__connect(const char *env_dir, struct err **errp);

/* ------------------------------------------------------- cgroups (cgroup.c) */

struct sandbox_limits {
    uint64_t memory_bytes;
    uint32_t cpus_milli;
    uint64_t pids;
};

/* One backend per cgroup version (crun's cgroup manager pattern). */
struct cgroup_ops {
    const char *name;
    int (*create)(const char *id, const struct sandbox_limits *lim, struct err **errp);
    int (*limit)(const char *id, const struct sandbox_limits *lim, struct err **errp);
    int (*attach)(const char *id, pid_t pid, struct err **errp);
    int (*destroy)(const char *id, struct err **errp);
};

/** The backend for this machine: v2 when its controllers are enabled, v1 otherwise. */
const struct cgroup_ops *sandbox__cgroup_ops(struct err **errp);

/* ----------------------------------------------------- seccomp (seccomp.c) */

/** The compiled filter, built once per process with libseccomp (in the parent). Borrowed. */
int sandbox__seccomp_program(const struct sock_fprog **prog_out, struct err **errp);
/** Loads prog into the calling process (the child); needs no_new_privs or CAP_SYS_ADMIN. */
int sandbox__seccomp_load(const struct sock_fprog *prog);

/* --------------------------------------------------------- mounts (mounts.c) */

/**
 * In the child: builds the root file system from env_dir's layers (cwd is env_dir, the two
 * idmapped lower layers arrive as detached mounts) and pivots into it.
 */
int sandbox__rootfs_setup(int skel_fd, int usr_fd, struct err **errp);

/**
 * In the child: opens the directory path beneath at (O_PATH) by a walk that passes through no
 * symbolic link and never leaves at: the volume and the sandbox's own tree are the
 * sandbox's to shape, and a link among them must not carry a mount elsewhere. ERR_INTERNAL
 * naming path otherwise.
 */
int sandbox__open_beneath(int at, const char *path, struct err **errp);

/* ---------------------------------------------------------- init (init.c) */

/** pid 1: reaps, and keeps handlers waiting for control connections (init.c). */
void sandbox__init_main(int listen_fd) __attribute__((noreturn));

/* ------------------------------------------------ handlers (exec.c, files.c) */

/** Handles one exec request on conn inside the sandbox. Returns the handler's exit status. */
int sandbox__handle_exec(int conn, json_t *req);
int sandbox__handle_read(int conn, json_t *req);
int sandbox__handle_write(int conn, json_t *req);
int sandbox__handle_list(int conn, json_t *req);
int sandbox__handle_delete(int conn, json_t *req);
int sandbox__handle_snapshot(int conn, json_t *req);
int sandbox__handle_extract(int conn, json_t *req);

/*
 * Descriptors init keeps besides the listening socket (3): O_PATH handles on the overlay's
 * upper directories, opened before pivot_root, for the operations on the environment's own
 * layer (layer_init.c). Handlers inherit them; commands never do (close_range before exec).
 */
#define SANDBOX_FD_UPPER_ROOT 5
#define SANDBOX_FD_UPPER_USR  6

/*
 * The egress proxy's port (SANDBOX_PROXY_PORT), bound in the sandbox's network namespace
 * before any of its code runs, and kept by init alone (handlers close it, commands never see
 * it). The daemon takes a copy (pidfd_getfd) and makes it listen: netns.c.
 */
#define SANDBOX_FD_PROXY 7

/** Set in a process whose exited children are reaped by the kernel (SIGCHLD ignored). */
extern bool sandbox__autoreap;

/** Starts a sandbox from this process (spawn.c); sandbox_start() may route it to a spawner. */
int sandbox__start_local(const struct sandbox_spec *spec, struct sandbox_init *out,
                         struct err **errp);

/**
 * Reads a directory's names (without ".", ".." and skip) sorted by strcmp; ERR_LIMIT past
 * max of them. Free with sandbox__names_free().
 */
int sandbox__dir_names(DIR *d, const char *skip, size_t max, char ***names_out, size_t *n_out,
                       struct err **errp);
void sandbox__names_free(char **names, size_t n);

/** The comm of a handler waiting for a connection (init.c); anything else under init is
 * activity. */
#define SANDBOX_SPARE_NAME "paddock-spare"

/** The error class of an errno met by a file operation inside the sandbox. */
enum err_code sandbox__errno_code(int e);

#endif
