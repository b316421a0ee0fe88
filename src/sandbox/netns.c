/*
 * A listening socket inside a sandbox's network namespace. A socket belongs to the namespace
 * it was created in, whichever thread later accepts on it, so the egress proxy gets a
 * listener that processes in the sandbox reach at 127.0.0.1 with no relay and no veth, and
 * it knows which environment is speaking from the listener alone. The calling thread steps
 * into the namespace for the three calls that make the socket and straight back (a thread of
 * its own cost ten times as much, mostly waking it on a VM).
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sandbox_int.h"

/* Makes the socket in the namespace the calling thread is in now. */
static int
make_listener(uint16_t port, const char **what)
{
    int fd, one = 1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};

    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        *what = "socket";
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    /* Only sockets of the same host uid may join a reuseport group, so nothing inside the
     * sandbox can bind beside this one. */
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 256) < 0) {
        int e = errno;
        *what = "listen on 127.0.0.1 in the sandbox";
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int
sandbox_netns_listen(const struct sandbox_init *init, uint16_t port, struct err **errp)
{
    char path[64];
    cleanup_close int self = -1;
    cleanup_close int ns = -1;
    const char *what = NULL;
    int fd, e;

    if (!sandbox_alive(init))
        return err_set(errp, ERR_CONFLICT, 0, "sandbox is not running");
    /* The calling thread steps into the namespace and straight back: only this thread moves,
     * and nothing else runs on it in between. */
    self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    snprintf(path, sizeof(path), "/proc/%d/ns/net", (int)init->pid);
    ns = open(path, O_RDONLY | O_CLOEXEC);
    if (self < 0 || ns < 0)
        return err_set(errp, ERR_INTERNAL, errno, "open a network namespace");
    /* The pid could have been reused between the check and the open: check again with the
     * namespace in hand. */
    if (util_proc_start_time(init->pid) != init->start)
        return err_set(errp, ERR_CONFLICT, 0, "sandbox init is gone");
    /* Every sandbox has a network namespace of its own. A process in this one is no sandbox's
     * init, whatever its pid and start time say (after a reboot both can match a stored row):
     * a listener here would offer the environment's policy, credentials included, to every
     * process on this host. */
    {
        struct stat a, b;
        if (fstat(self, &a) < 0 || fstat(ns, &b) < 0)
            return err_set(errp, ERR_INTERNAL, errno, "stat a network namespace");
        if (a.st_dev == b.st_dev && a.st_ino == b.st_ino)
            return err_set(errp, ERR_CONFLICT, 0,
                           "process %d shares this host's network namespace: it is no "
                           "sandbox's init",
                           (int)init->pid);
    }
    if (setns(ns, CLONE_NEWNET) < 0)
        return err_set(errp, ERR_INTERNAL, errno, "enter the sandbox's network namespace");
    fd = make_listener(port, &what);
    e = errno;
    if (setns(self, CLONE_NEWNET) < 0) {
        /* A thread left in a sandbox's namespace would open its later sockets there. */
        log_error("cannot return to the host's network namespace: %s", strerror(errno));
        abort();
    }
    if (fd < 0)
        return err_set(errp, e == EADDRINUSE ? ERR_CONFLICT : ERR_INTERNAL, e, "%s", what);
    return fd;
}
