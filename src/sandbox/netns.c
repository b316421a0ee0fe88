/*
 * A listening socket inside a sandbox's network namespace. A socket belongs to the namespace
 * it was created in, whichever thread later accepts on it, so the egress proxy gets a
 * listener that processes in the sandbox reach at 127.0.0.1 with no relay and no veth, and
 * it knows which environment is speaking from the listener alone. The namespace switch
 * happens on a short-lived thread of its own; no other thread of the caller ever changes
 * namespace.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sandbox_int.h"

struct listen_job {
    pid_t pid;
    uint64_t start;
    uint16_t port;
    int fd;
    int err;
    const char *what;
};

static void *
listen_thread(void *arg)
{
    struct listen_job *j = arg;
    char path[64];
    int nsfd, fd, one = 1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(j->port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};

    snprintf(path, sizeof(path), "/proc/%d/ns/net", (int)j->pid);
    nsfd = open(path, O_RDONLY | O_CLOEXEC);
    if (nsfd < 0) {
        j->err = errno;
        j->what = "open the sandbox's network namespace";
        return NULL;
    }
    /* The pid could have been reused between the caller's check and the open: check again
     * with the namespace fd in hand. */
    if (sandbox__proc_start_time(j->pid) != j->start) {
        close(nsfd);
        j->err = ESRCH;
        j->what = "sandbox init is gone";
        return NULL;
    }
    if (setns(nsfd, CLONE_NEWNET) < 0) {
        j->err = errno;
        j->what = "enter the sandbox's network namespace";
        close(nsfd);
        return NULL;
    }
    close(nsfd);
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        j->err = errno;
        j->what = "socket";
        return NULL;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    /* A changed policy gets a new listener before the old one goes. Only sockets of the same
     * host uid join the group, so nothing inside the sandbox can bind beside them. */
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 256) < 0) {
        j->err = errno;
        j->what = "listen on 127.0.0.1 in the sandbox";
        close(fd);
        return NULL;
    }
    j->fd = fd;
    return NULL;
}

int
sandbox_netns_listen(const struct sandbox_init *init, uint16_t port, struct err **errp)
{
    struct listen_job j = {init->pid, init->start, port, -1, 0, NULL};
    pthread_t t;
    int r;

    if (!sandbox_alive(init))
        return err_set(errp, ERR_CONFLICT, 0, "sandbox is not running");
    r = pthread_create(&t, NULL, listen_thread, &j);
    if (r != 0)
        return err_set(errp, ERR_INTERNAL, r, "thread");
    pthread_join(t, NULL);
    if (j.fd < 0)
        return err_set(errp, j.err == EADDRINUSE ? ERR_CONFLICT : ERR_INTERNAL, j.err, "%s",
                       j.what);
    return j.fd;
}
