/*
 * The spawner: a small single-threaded process forked by a multi-threaded caller (the API
 * server) before it starts any thread or loads any secret. sandbox_start() hands the spec
 * to it and gets the init's identity back, so the fork that becomes a sandbox's pid 1 is
 * always taken from a process that holds no other thread's locks and no key in memory.
 * Without a spawner (the CLI), sandbox_start() starts the sandbox itself.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sandbox_int.h"

#define SPAWN_MSG_MAX (64 * 1024)

static int spawner_fd = -1;
static pid_t spawner_pid;
static pthread_mutex_t spawner_lock = PTHREAD_MUTEX_INITIALIZER;

static json_t *
spec_to_json(const struct sandbox_spec *s)
{
    return json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:I}", "id", s->id, "env_dir", s->env_dir,
                     "image_dir", s->image_dir, "host_id", (json_int_t)s->host_id, "memory",
                     (json_int_t)s->memory_bytes, "cpus", (json_int_t)s->cpus_milli, "pids",
                     (json_int_t)s->pids);
}

static int
send_json(int fd, json_t *j)
{
    char *text = json_dumps(j, JSON_COMPACT);
    ssize_t n;

    if (text == NULL)
        return -1;
    n = send(fd, text, strlen(text), MSG_NOSIGNAL);
    free(text);
    return n < 0 ? -1 : 0;
}

static json_t *
recv_json(int fd)
{
    cleanup_free char *buf = xmalloc(SPAWN_MSG_MAX + 1);
    ssize_t n;

    do
        n = recv(fd, buf, SPAWN_MSG_MAX, 0);
    while (n < 0 && errno == EINTR);
    if (n <= 0)
        return NULL;
    buf[n] = '\0';
    return json_loads(buf, JSON_REJECT_DUPLICATES, NULL);
}

static void __attribute__((noreturn))
spawner_main(int fd)
{
    prctl(PR_SET_NAME, "paddock-spawner", 0, 0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    /* Launchers are reaped by the kernel: a start answers as soon as the sandbox reports,
     * without waiting for its launcher to finish exiting (about 0.25 ms on this VM). */
    signal(SIGCHLD, SIG_IGN);
    sandbox__autoreap = true;
    if (getppid() == 1)
        _exit(0);
    for (;;) {
        json_t *req = recv_json(fd);
        struct sandbox_spec spec;
        struct sandbox_init init = {0, 0};
        struct err *e = NULL;
        json_t *res;

        if (req == NULL)
            _exit(0); /* the server closed its end or died */
        memset(&spec, 0, sizeof(spec));
        spec.id = json_string_value(json_object_get(req, "id"));
        spec.env_dir = json_string_value(json_object_get(req, "env_dir"));
        spec.image_dir = json_string_value(json_object_get(req, "image_dir"));
        spec.host_id = (uint32_t)json_integer_value(json_object_get(req, "host_id"));
        spec.memory_bytes = (uint64_t)json_integer_value(json_object_get(req, "memory"));
        spec.cpus_milli = (uint32_t)json_integer_value(json_object_get(req, "cpus"));
        spec.pids = (uint64_t)json_integer_value(json_object_get(req, "pids"));
        if (spec.id == NULL || spec.env_dir == NULL || spec.image_dir == NULL)
            err_set(&e, ERR_INTERNAL, 0, "spawner: bad request");
        else
            sandbox__start_local(&spec, &init, &e);
        if (e != NULL)
            res = json_pack("{s:b, s:s, s:s}", "ok", 0, "code", err_code_name(e->code),
                            "message", e->msg);
        else
            res = json_pack("{s:b, s:I, s:I}", "ok", 1, "pid", (json_int_t)init.pid, "start",
                            (json_int_t)init.start);
        err_free(e);
        json_decref(req);
        if (res == NULL || send_json(fd, res) < 0)
            _exit(1);
        json_decref(res);
    }
}

int
sandbox_spawner_start(struct err **errp)
{
    int sp[2];
    pid_t pid;

    if (spawner_fd >= 0)
        return 0;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0)
        return err_set(errp, ERR_INTERNAL, errno, "spawner socketpair");
    pid = fork();
    if (pid < 0) {
        close(sp[0]);
        close(sp[1]);
        return err_set(errp, ERR_INTERNAL, errno, "fork the spawner");
    }
    if (pid == 0) {
        close(sp[0]);
        spawner_main(sp[1]);
    }
    close(sp[1]);
    spawner_fd = sp[0];
    spawner_pid = pid;
    return 0;
}

int
sandbox_start(const struct sandbox_spec *spec, struct sandbox_init *out, struct err **errp)
{
    json_t *req, *res;
    int rc = 0;

    if (spawner_fd < 0)
        return sandbox__start_local(spec, out, errp);
    req = spec_to_json(spec);
    pthread_mutex_lock(&spawner_lock);
    if (req == NULL || send_json(spawner_fd, req) < 0)
        rc = err_set(errp, ERR_INTERNAL, errno, "send to the spawner");
    json_decref(req);
    res = rc == 0 ? recv_json(spawner_fd) : NULL;
    pthread_mutex_unlock(&spawner_lock);
    if (rc < 0)
        return -1;
    if (res == NULL)
        return err_set(errp, ERR_INTERNAL, 0, "the spawner (pid %d) went away", (int)spawner_pid);
    if (!json_is_true(json_object_get(res, "ok"))) {
        const char *msg = json_string_value(json_object_get(res, "message"));
        rc = err_set(errp, err_code_from_name(json_string_value(json_object_get(res, "code"))),
                     0, "%s", msg != NULL ? msg : "the spawner failed");
    } else {
        out->pid = (pid_t)json_integer_value(json_object_get(res, "pid"));
        out->start = (uint64_t)json_integer_value(json_object_get(res, "start"));
    }
    json_decref(res);
    return rc;
}

/* True when pid's comm is the idle spare's. */
static bool
is_spare(long pid)
{
    char path[64], comm[32];
    cleanup_close int fd = -1;
    ssize_t n;

    snprintf(path, sizeof(path), "/proc/%ld/comm", pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    n = read(fd, comm, sizeof(comm) - 1);
    if (n <= 0)
        return false;
    comm[n] = '\0';
    comm[strcspn(comm, "\n")] = '\0';
    return strcmp(comm, SANDBOX_SPARE_NAME) == 0;
}

bool
sandbox_busy(const struct sandbox_init *init)
{
    char path[64], buf[4096];
    cleanup_close int fd = -1;
    ssize_t n;

    if (!sandbox_alive(init))
        return false;
    snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)init->pid, (int)init->pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    n = read(fd, buf, sizeof(buf) - 1);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    /* Init's children: its spare handler, working handlers, and whatever was reparented to
     * it (a daemonized process). Any but the spare is activity. */
    for (char *p = buf; *p != '\0';) {
        char *end;
        long pid = strtol(p, &end, 10);
        if (end == p)
            break;
        if (!is_spare(pid))
            return true;
        p = end;
        while (*p == ' ')
            p++;
    }
    return n == (ssize_t)sizeof(buf) - 1; /* more children than fit: surely busy */
}
