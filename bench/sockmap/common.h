/* shared helpers for the sockmap relay prototype */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <linux/tcp.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define die(...) do { fprintf(stderr, __VA_ARGS__); fprintf(stderr, ": %s\n", strerror(errno)); exit(1); } while (0)

static inline double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static inline struct sockaddr_in mkaddr(const char *ip, int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) { errno = EINVAL; die("bad ip %s", ip); }
    return a;
}

static inline int tcp_listen(const char *ip, int port)
{
    struct sockaddr_in a = mkaddr(ip, port);
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0) die("bind %s:%d", ip, port);
    if (listen(fd, 128) < 0) die("listen");
    return fd;
}

static inline int tcp_connect(const char *ip, int port)
{
    struct sockaddr_in a = mkaddr(ip, port);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) die("connect %s:%d", ip, port);
    return fd;
}

/* enter the netns at path (e.g. /var/run/netns/sbx); returns an fd of the previous netns */
static inline int enter_netns(const char *path)
{
    int old = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    int nfd = open(path, O_RDONLY | O_CLOEXEC);
    if (old < 0 || nfd < 0) die("open netns %s", path);
    if (setns(nfd, CLONE_NEWNET) < 0) die("setns %s", path);
    close(nfd);
    return old;
}

static inline void leave_netns(int old)
{
    if (setns(old, CLONE_NEWNET) < 0) die("setns back");
    close(old);
}
