/*
 * The egress proxy's listening socket inside a sandbox's network namespace. A socket belongs
 * to the namespace it was created in, whichever process later accepts on it, so the proxy
 * gets a listener that processes in the sandbox reach at 127.0.0.1 with no relay and no veth,
 * and it knows which environment is speaking from the listener alone.
 *
 * The socket is made and bound by the sandbox's start, before any of the sandbox's own code
 * runs, and kept by its init (spawn.c, SANDBOX_FD_PROXY); the daemon takes a copy with
 * pidfd_getfd() and makes it listen. The port is never free inside, so no process of the
 * sandbox can take it while the server restarts, and connections made meanwhile wait in the
 * backlog rather than fail. A sandbox started before inits kept the socket gets one made in
 * its namespace: the calling thread steps in for the three calls that make it and straight
 * back (a thread of its own cost ten times as much, mostly waking it on a VM).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
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

/* Whether namespace handles a and b name the same namespace: 1 yes, 0 no, -1 cannot tell. */
static int
same_ns(int a, int b)
{
    struct stat sa, sb;

    if (a < 0 || b < 0 || fstat(a, &sa) < 0 || fstat(b, &sb) < 0)
        return -1;
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/* A socket made in the namespace of a sandbox that keeps none (started by an older build). */
static int
listen_in_netns(const struct sandbox_init *init, uint16_t port, struct err **errp)
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
    switch (same_ns(self, ns)) {
    case -1:
        return err_set(errp, ERR_INTERNAL, errno, "stat a network namespace");
    case 1:
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

#define PROXY_BACKLOG 256

/*
 * The socket init keeps (SANDBOX_FD_PROXY), copied out of it and checked: a TCP socket bound
 * to 127.0.0.1:SANDBOX_PROXY_PORT in init's own network namespace, which is not this host's.
 * 0 and *fd -1 when init keeps none: a sandbox started before inits kept one, whose fd 7 is
 * empty or something else of its init's (its message pipe).
 */
static int
take_kept(const struct sandbox_init *init, int *fd, struct err **errp)
{
    cleanup_close int pidfd = -1;
    cleanup_close int self = -1;
    cleanup_close int ns = -1;
    cleanup_close int sock = -1;
    cleanup_close int sns = -1;
    struct sockaddr_in sa;
    socklen_t sl = sizeof(sa);
    int type = 0, proto = 0;
    socklen_t tl = sizeof(type), pl = sizeof(proto);
    char path[64];

    *fd = -1;
    if (!sandbox_alive(init))
        return err_set(errp, ERR_CONFLICT, 0, "sandbox is not running");
    pidfd = (int)syscall(SYS_pidfd_open, init->pid, 0);
    snprintf(path, sizeof(path), "/proc/%d/ns/net", (int)init->pid);
    ns = open(path, O_RDONLY | O_CLOEXEC);
    /* The pid could have been reused before these were opened: check again with them held. */
    if (pidfd < 0 || ns < 0 || !sandbox_alive(init))
        return err_set(errp, ERR_CONFLICT, 0, "sandbox init is gone");
    sock = (int)syscall(SYS_pidfd_getfd, pidfd, SANDBOX_FD_PROXY, 0); /* close-on-exec */
    if (sock < 0 && errno == EBADF)
        return 0;
    if (sock < 0)
        return err_set(errp, ERR_INTERNAL, errno, "take the proxy's socket from init %d",
                       (int)init->pid);
    if (getsockopt(sock, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 && errno == ENOTSOCK)
        return 0;
    if (type != SOCK_STREAM || getsockopt(sock, SOL_SOCKET, SO_PROTOCOL, &proto, &pl) < 0 ||
        proto != IPPROTO_TCP || getsockname(sock, (struct sockaddr *)&sa, &sl) < 0 ||
        sl != sizeof(sa) || sa.sin_family != AF_INET ||
        sa.sin_addr.s_addr != htonl(INADDR_LOOPBACK) || sa.sin_port != htons(SANDBOX_PROXY_PORT))
        return err_set(errp, ERR_CONFLICT, 0, "init %d keeps no proxy socket of a sandbox",
                       (int)init->pid);
    /* In init's own namespace, and that one not this host's (where the listener would serve
     * every process of the host). Either unknown: refused. */
    sns = ioctl(sock, SIOCGSKNS);
    self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (same_ns(sns, ns) != 1 || same_ns(ns, self) != 0)
        return err_set(errp, ERR_CONFLICT, 0,
                       "init %d keeps no proxy socket of a network namespace of its own",
                       (int)init->pid);
    *fd = sock;
    sock = -1;
    return 0;
}

int
sandbox_proxy_listen(const struct sandbox_init *init, struct err **errp)
{
    int fd, fl;

    if (take_kept(init, &fd, errp) < 0)
        return -1;
    if (fd < 0)
        return listen_in_netns(init, SANDBOX_PROXY_PORT, errp);
    fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || sandbox_proxy_relisten(fd) < 0) {
        int e = errno;
        close(fd);
        return err_set(errp, e == EADDRINUSE ? ERR_CONFLICT : ERR_INTERNAL, e,
                       "listen on the sandbox's proxy socket");
    }
    return fd;
}

/*
 * SO_REUSEADDR is on exactly while the socket listens. On, because listen() checks the port
 * again, and the connections accepted before an unlisten (closed ones in TIME_WAIT for a
 * minute) would otherwise make it fail with EADDRINUSE; they were made while it was on, so
 * they do not count. Off while it does not listen, because a socket that is bound, not
 * listening and has it on lets another with it on bind the same address: a process inside
 * could then listen there first. It is turned off before the listening ends and on just
 * before it starts, so neither state is ever exposed the other way for longer than that.
 */
int
sandbox_proxy_relisten(int fd)
{
    int one = 1, zero = 0, e;

    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0 &&
        listen(fd, PROXY_BACKLOG) == 0)
        return 0;
    e = errno;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &zero, sizeof(zero)); /* not listening: off */
    errno = e;
    return -1;
}

void
sandbox_proxy_unlisten(int fd)
{
    struct sockaddr unspec = { .sa_family = AF_UNSPEC };
    int zero = 0;

    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &zero, sizeof(zero));
    /* connect(AF_UNSPEC) disconnects the socket whatever its state: a listening one stops
     * (waiting connections are reset), and it stays bound, since its port was bound by name,
     * so sandbox_proxy_relisten() serves again. Not shutdown(): on a socket that does not
     * listen (already unlistened, or never listened) it marks the socket shut for good, and
     * every connection a later listen accepts inherits that: it reads EOF and cannot write. */
    (void)connect(fd, &unspec, sizeof(unspec));
}

int
sandbox_proxy_refuse(const struct sandbox_init *init, struct err **errp)
{
    int fd;

    if (take_kept(init, &fd, errp) < 0)
        return -1;
    if (fd >= 0) {
        sandbox_proxy_unlisten(fd);
        close(fd);
    }
    return 0;
}
