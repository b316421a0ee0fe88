/*
 * Starting and stopping sandboxes.
 *
 *   caller ──fork──▶ launcher ──clone(NEWUSER|NEWNS|NEWPID|NEWNET|NEWUTS|NEWIPC)──▶ init
 *
 * The launcher does the host-side work that needs the child to exist (id maps, cgroup
 * membership, idmapped mounts bound to the child's user namespace), reports the init's
 * identity to the caller and exits, so the init is reparented away from the caller and
 * outlives it. The child waits on a sync socket for each step; a failure in the child is
 * sent back as an error message and rebuilt in the parent (STYLE R-17).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/capability.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <grp.h>
#include <unistd.h>

#include "sandbox_int.h"

#define SPAWN_NS_FLAGS                                                                              \
    (CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC)

/* What the launcher reports to the caller, and the child to the launcher. */
struct spawn_msg {
    int32_t ok;
    int32_t code;
    int32_t errnum;
    int32_t pid;
    uint64_t start;
    char msg[1024];
};

/*
 * Capabilities kept inside the sandbox: docker's default set without CAP_NET_RAW, which
 * podman's default set leaves out too. Raw and packet sockets serve nothing in a network
 * namespace whose only way out is the proxy, and AF_PACKET has been the way in of kernel
 * privilege escalations from unprivileged user namespaces (CVE-2016-8655, CVE-2017-7308,
 * CVE-2020-14386).
 */
static const int keep_caps[] = {
    CAP_CHOWN,  CAP_DAC_OVERRIDE, CAP_FSETID, CAP_FOWNER,     CAP_MKNOD,
    CAP_SETGID, CAP_SETUID,       CAP_SETFCAP, CAP_SETPCAP,   CAP_NET_BIND_SERVICE,
    CAP_SYS_CHROOT, CAP_KILL,     CAP_AUDIT_WRITE,
};

static void
msg_from_err(struct spawn_msg *m, const struct err *e)
{
    memset(m, 0, sizeof(*m));
    m->code = (int32_t)e->code;
    m->errnum = e->errnum;
    snprintf(m->msg, sizeof(m->msg), "%s", e->msg);
}

static int
err_from_msg(const struct spawn_msg *m, struct err **errp)
{
    char text[sizeof(m->msg)];

    memcpy(text, m->msg, sizeof(text));
    text[sizeof(text) - 1] = '\0';
    return err_set(errp, (enum err_code)m->code, 0, "%s", text);
}

/*
 * Whether pid is in this process's pid namespace. Every sandbox's init is the first process of
 * a pid namespace of its own; after a reboot a stored pid and start time (ticks since boot) can
 * match a process of the host, which is then none of ours: not to adopt, not to give a proxy
 * listener to, and not to kill. When it cannot be told, the answer is yes (not a sandbox).
 */
static bool
in_our_pid_ns(pid_t pid)
{
    char path[64];
    struct stat a, b;

    snprintf(path, sizeof(path), "/proc/%d/ns/pid", (int)pid);
    if (stat("/proc/self/ns/pid", &a) < 0 || stat(path, &b) < 0)
        return true;
    return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

bool
sandbox_alive(const struct sandbox_init *init)
{
    if (init->pid <= 0 || init->start == 0 || util_proc_start_time(init->pid) != init->start)
        return false;
    return !in_our_pid_ns(init->pid);
}

/* ------------------------------------------------------------------ child */

static void
child_fail(int sync_fd, struct err *e)
{
    struct spawn_msg m;

    msg_from_err(&m, e);
    (void)!write(sync_fd, &m, sizeof(m));
    _exit(1);
}

static int
loopback_up(struct err **errp)
{
    cleanup_close int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq ifr;

    if (s < 0)
        return err_set(errp, ERR_INTERNAL, errno, "socket");
    memset(&ifr, 0, sizeof(ifr));
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
        return err_set(errp, ERR_INTERNAL, errno, "get lo flags");
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
        return err_set(errp, ERR_INTERNAL, errno, "bring lo up");
    return 0;
}

/*
 * The sandbox's loopback carries all of its traffic out: every byte to or from the network
 * crosses it between the sandbox's programs and the egress proxy's listener. On loopback a
 * TCP segment is handed to the receiver whole, so the stack's cost goes per segment, and by
 * default a segment is at most 64 KiB. Since Linux 6.3 loopback takes "BIG TCP" segments over
 * IPv4 too, up to its tso_max_size (512 KiB): with the proxy copying, a tunnel moved 0.51x ->
 * 0.66x of a direct connection's bytes per second (bench/sockmap's read/write relay, the same
 * runs) when only the sandbox's side took them.
 *
 * Raised only where the kernel reports the IPv4 limit (6.3+): the tunnels are IPv4, and an
 * older kernel would gain nothing but open its IPv6 jumbogram path to the sandbox. It is a
 * speed-up, so any failure leaves lo as it was and the sandbox starts all the same. Attribute
 * numbers are from linux/if_link.h (6.3), stable ABI; Debian 12's headers predate the IPv4 one.
 */
enum {
    LO_IFINDEX = 1, /* loopback is always ifindex 1 in its namespace */
    NL_IFLA_GSO_MAX_SIZE = 41,
    NL_IFLA_TSO_MAX_SIZE = 59,
    NL_IFLA_GSO_IPV4_MAX_SIZE = 63,
    LO_SEG_MAX = 8 * 65535, /* the kernel's GSO_MAX_SIZE */
};

struct nlreq {
    struct nlmsghdr nh;
    struct ifinfomsg ifi;
    unsigned char attrs[64];
};

static void
nl_req(struct nlreq *r, unsigned short type, unsigned short flags, unsigned seq)
{
    memset(r, 0, sizeof(*r));
    r->nh.nlmsg_len = NLMSG_LENGTH(sizeof(r->ifi));
    r->nh.nlmsg_type = type;
    r->nh.nlmsg_flags = NLM_F_REQUEST | flags;
    r->nh.nlmsg_seq = seq;
    r->ifi.ifi_family = AF_UNSPEC;
    r->ifi.ifi_index = LO_IFINDEX;
}

static void
nl_put_u32(struct nlreq *r, unsigned short type, uint32_t v)
{
    struct rtattr *a = (struct rtattr *)((char *)r + NLMSG_ALIGN(r->nh.nlmsg_len));

    a->rta_type = type;
    a->rta_len = RTA_LENGTH(sizeof(v));
    memcpy(RTA_DATA(a), &v, sizeof(v));
    r->nh.nlmsg_len = NLMSG_ALIGN(r->nh.nlmsg_len) + RTA_ALIGN(a->rta_len);
}

/* Sends one request and reads its one answer into buf; -1 when none came or it is an error. */
static int
nl_call(int s, struct nlreq *r, unsigned char *buf, size_t cap)
{
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    struct nlmsghdr *h = (struct nlmsghdr *)buf;
    ssize_t n;

    if (sendto(s, r, r->nh.nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0)
        return -1;
    do
        n = recv(s, buf, cap, 0);
    while (n < 0 && errno == EINTR);
    if (n < (ssize_t)(sizeof(struct nlmsghdr) + sizeof(struct nlmsgerr)) ||
        !NLMSG_OK(h, (unsigned)n))
        return -1;
    if (h->nlmsg_type == NLMSG_ERROR && ((struct nlmsgerr *)NLMSG_DATA(h))->error != 0)
        return -1;
    return 0;
}

static void
loopback_segments(void)
{
    cleanup_close int s = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    unsigned char buf[16384];
    struct nlmsghdr *h = (struct nlmsghdr *)buf;
    struct nlreq r;
    uint32_t tso_max = 0;
    bool ipv4_big = false;

    if (s < 0)
        return;
    nl_req(&r, RTM_GETLINK, 0, 1);
    if (nl_call(s, &r, buf, sizeof(buf)) < 0 || h->nlmsg_type != RTM_NEWLINK)
        return;
    int len = (int)IFLA_PAYLOAD(h);
    for (struct rtattr *a = IFLA_RTA(NLMSG_DATA(h)); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
        if (a->rta_type == NL_IFLA_TSO_MAX_SIZE && RTA_PAYLOAD(a) == sizeof(uint32_t))
            memcpy(&tso_max, RTA_DATA(a), sizeof(tso_max));
        else if (a->rta_type == NL_IFLA_GSO_IPV4_MAX_SIZE)
            ipv4_big = true;
    }
    if (!ipv4_big || tso_max <= 65536)
        return;
    uint32_t seg = tso_max < LO_SEG_MAX ? tso_max : LO_SEG_MAX;
    nl_req(&r, RTM_NEWLINK, NLM_F_ACK, 2);
    nl_put_u32(&r, NL_IFLA_GSO_MAX_SIZE, seg);
    nl_put_u32(&r, NL_IFLA_GSO_IPV4_MAX_SIZE, seg);
    (void)nl_call(s, &r, buf, sizeof(buf));
}

static int
drop_caps(struct err **errp)
{
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    uint64_t keep = 0;

    for (size_t i = 0; i < sizeof(keep_caps) / sizeof(keep_caps[0]); i++)
        keep |= 1ULL << keep_caps[i];
    for (int cap = 0; cap <= 63; cap++) {
        if (keep & (1ULL << cap))
            continue;
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL)
            return err_set(errp, ERR_INTERNAL, errno, "drop capability %d", cap);
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0)
        return err_set(errp, ERR_INTERNAL, errno, "clear ambient capabilities");
    memset(data, 0, sizeof(data));
    data[0].effective = data[0].permitted = data[0].inheritable = (uint32_t)keep;
    data[1].effective = data[1].permitted = data[1].inheritable = (uint32_t)(keep >> 32);
    if (syscall(SYS_capset, &hdr, data) < 0)
        return err_set(errp, ERR_INTERNAL, errno, "capset");
    return 0;
}

/* Gets the two idmapped layers from the launcher: the signal to go on. */
static int
recv_layers(int sync_fd, int *skel_fd, int *usr_fd, struct err **errp)
{
    char byte;
    struct iovec iov = {&byte, 1};
    union {
        char buf[CMSG_SPACE(2 * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                        .msg_controllen = sizeof(u.buf)};
    struct cmsghdr *c;
    ssize_t r;

    do {
        r = recvmsg(sync_fd, &mh, MSG_CMSG_CLOEXEC);
    } while (r < 0 && errno == EINTR);
    if (r <= 0)
        return err_set(errp, ERR_INTERNAL, r < 0 ? errno : 0, "launcher went away");
    c = CMSG_FIRSTHDR(&mh);
    if (c == NULL || c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(2 * sizeof(int)))
        return err_set(errp, ERR_INTERNAL, 0, "launcher sent no layers");
    memcpy(skel_fd, CMSG_DATA(c), sizeof(int));
    memcpy(usr_fd, (char *)CMSG_DATA(c) + sizeof(int), sizeof(int));
    return 0;
}

/*
 * Binds the egress proxy's port on the new loopback and keeps it at SANDBOX_FD_PROXY, before
 * any of the sandbox's own code runs. A proxy listener made later, from outside, found the
 * port free whenever no proxy held it (the server restarting, or not yet attached), and a
 * process inside could take it and with it the sandbox's egress. No SO_REUSEADDR and no
 * SO_REUSEPORT: either would let a socket inside bind beside this one.
 */
static int
reserve_proxy_port(struct err **errp)
{
    struct sockaddr_in sa = { .sin_family = AF_INET,
                              .sin_port = htons(SANDBOX_PROXY_PORT),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return err_set(errp, ERR_INTERNAL, errno, "socket for the proxy's port");
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        (fd != SANDBOX_FD_PROXY && dup3(fd, SANDBOX_FD_PROXY, O_CLOEXEC) < 0)) {
        int e = errno;
        close(fd);
        return err_set(errp, ERR_INTERNAL, e, "keep 127.0.0.1:%d for the proxy",
                       SANDBOX_PROXY_PORT);
    }
    if (fd != SANDBOX_FD_PROXY)
        close(fd);
    return 0;
}

/* The child's stdio must not hold the caller's terminal or pipes open: /dev/null it is. */
static int
null_stdio(struct err **errp)
{
    int fd = open("/dev/null", O_RDWR | O_CLOEXEC);

    if (fd < 0)
        return err_set(errp, ERR_INTERNAL, errno, "open /dev/null");
    for (int i = 0; i < 3; i++)
        if (dup2(fd, i) < 0)
            return err_set(errp, ERR_INTERNAL, errno, "dup2");
    close(fd);
    return 0;
}

struct child_args {
    const struct sandbox_spec *spec;
    const struct sock_fprog *prog;
    int env_fd;
    int listen_fd;
    int sync_fd;
};

/*
 * The init is a copy of the process that started it, so its command line and environment
 * (readable by every process in the sandbox through /proc/1) are the caller's: the data
 * directory, and possibly secrets in environment variables. Wipe both memory areas.
 */
static void
scrub_cmdline(void)
{
    cleanup_free char *stat = NULL;
    unsigned long long v[4];
    const char *p;

    if (util_read_file_at(AT_FDCWD, "/proc/self/stat", 4096, &stat, NULL, NULL) < 0)
        return;
    p = strrchr(stat, ')');
    /* arg_start, arg_end, env_start, env_end are fields 48 to 51. */
    for (int field = 2; field < 48 && p != NULL; field++)
        p = strchr(p + 1, ' ');
    if (p == NULL || sscanf(p + 1, "%llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3]) != 4)
        return;
    if (v[1] > v[0] && v[1] - v[0] < (1u << 20)) {
        memset((void *)(uintptr_t)v[0], 0, v[1] - v[0]);
        if (v[1] - v[0] > 13)
            memcpy((void *)(uintptr_t)v[0], "paddock-init", 13);
    }
    if (v[3] > v[2] && v[3] - v[2] < (1u << 20))
        explicit_bzero((void *)(uintptr_t)v[2], v[3] - v[2]);
}

/*
 * Keeps an upper directory of the volume (the cwd) at a fixed descriptor, for the snapshot:
 * as the root of a detached, read-only clone of its mount, never as a plain descriptor of
 * the directory. Every handler holds it, and a handler follows /proc/self/fd/N like any
 * path a caller names; from a plain descriptor, /proc/self/fd/5/.. is the volume's own
 * directory on the host (ctl.sock, work/, upper/), a symlink away from any sandbox process.
 * At the root of a detached mount ".." stays where it is: the way leads nowhere but into
 * this layer, and the layer cannot be written through it.
 */
static int
keep_upper(const char *path, int at, struct err **errp)
{
    struct mount_attr attr = {
        .attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC,
    };
    cleanup_close int dir = sandbox__open_beneath(AT_FDCWD, path, errp);
    int fd;

    if (dir < 0)
        return -1;
    fd = open_tree(dir, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH);
    /* Closed now: it may hold the number at, which dup3() below is to take. */
    close_and_reset(&dir);
    if (fd < 0)
        return err_set(errp, ERR_INTERNAL, errno, "clone mount of %s", path);
    if (mount_setattr(fd, "", AT_EMPTY_PATH, &attr, sizeof(attr)) < 0) {
        int e = errno;
        close(fd);
        return err_set(errp, ERR_INTERNAL, e, "make %s read-only", path);
    }
    if (fd != at && (dup3(fd, at, O_CLOEXEC) < 0 || close(fd) < 0))
        return err_set(errp, ERR_INTERNAL, errno, "dup3 %s", path);
    return 0;
}

static int
move_fd_above(int *fd, int floor, struct err **errp)
{
    int n;

    if (*fd > floor)
        return 0;
    n = fcntl(*fd, F_DUPFD_CLOEXEC, floor + 1);
    if (n < 0)
        return err_set(errp, ERR_INTERNAL, errno, "move a descriptor");
    close(*fd);
    *fd = n;
    return 0;
}

static int
child_setup(const struct child_args *a, struct err **errp)
{
    int skel_fd = -1, usr_fd = -1;
    struct spawn_msg ok = {.ok = 1};

    umask(022);
    scrub_cmdline();
    if (recv_layers(a->sync_fd, &skel_fd, &usr_fd, errp) < 0)
        return -1;
    /* The layers arrived at the lowest free numbers; move them clear of the fixed ones. */
    if (move_fd_above(&skel_fd, SANDBOX_FD_UPPER_USR, errp) < 0 ||
        move_fd_above(&usr_fd, SANDBOX_FD_UPPER_USR, errp) < 0)
        return -1;
    /* The id maps are written now. Until this process switches ids it still carries the
     * host's root ids, which are unmapped here; files it created would be refused. */
    if (setresgid(0, 0, 0) < 0 || setgroups(0, NULL) < 0 || setresuid(0, 0, 0) < 0)
        return err_set(errp, ERR_INTERNAL, errno, "become root of the user namespace");
    /* Joined the cgroups already (the launcher did it): they become this namespace's root. */
    if (unshare(CLONE_NEWCGROUP) < 0)
        return err_set(errp, ERR_INTERNAL, errno, "unshare cgroup namespace");
    if (keep_upper("upper/root", SANDBOX_FD_UPPER_ROOT, errp) < 0 ||
        keep_upper("upper/usr", SANDBOX_FD_UPPER_USR, errp) < 0)
        return -1;
    if (sandbox__rootfs_setup(skel_fd, usr_fd, errp) < 0)
        return err_wrap(errp, "root file system");
    close(skel_fd);
    close(usr_fd);
    if (sethostname(a->spec->id, strlen(a->spec->id)) < 0)
        return err_set(errp, ERR_INTERNAL, errno, "sethostname");
    if (loopback_up(errp) < 0 || null_stdio(errp) < 0)
        return -1;
    loopback_segments();
    if (reserve_proxy_port(errp) < 0)
        return -1;
    if (setsid() < 0)
        return err_set(errp, ERR_INTERNAL, errno, "setsid");
    if (drop_caps(errp) < 0)
        return -1;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return err_set(errp, ERR_INTERNAL, errno, "no_new_privs");
    if (sandbox__seccomp_load(a->prog) < 0)
        return err_set(errp, ERR_INTERNAL, errno, "load seccomp filter");
    /* From here on the launcher may exit without taking this process with it. */
    prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0);
    if (util_write_all(a->sync_fd, &ok, sizeof(ok)) < 0)
        return err_set(errp, ERR_INTERNAL, errno, "report ready");
    return 0;
}

static void __attribute__((noreturn))
child_main(const struct child_args *a)
{
    struct err *e = NULL;

    struct child_args moved = *a;

    /* Die with the launcher until setup is done, so a failed start leaves nothing behind. */
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    /* Nothing of the caller's may leak in (database, locks, pipes): keep only the listening
     * socket and the sync socket, as fds 3 and 4, and close every other. */
    {
        int l = fcntl(a->listen_fd, F_DUPFD_CLOEXEC, 1000);
        int s = fcntl(a->sync_fd, F_DUPFD_CLOEXEC, 1000);
        if (l < 0 || s < 0 || dup3(l, 3, O_CLOEXEC) < 0 || dup3(s, 4, O_CLOEXEC) < 0) {
            err_set(&e, ERR_INTERNAL, errno, "dup3");
            child_fail(a->sync_fd, e);
        }
    }
    moved.listen_fd = 3;
    moved.sync_fd = 4;
    moved.env_fd = -1;
    syscall(SYS_close_range, 5, ~0U, 0);
    a = &moved;
    if (child_setup(a, &e) < 0)
        child_fail(a->sync_fd, e);
    close(a->sync_fd);
    /* Only the listening socket remains besides 0, 1 and 2. */
    sandbox__init_main(a->listen_fd);
}

/* --------------------------------------------------------------- launcher */

static int
write_map(pid_t pid, const char *which, uint32_t host_id, struct err **errp)
{
    char path[64], map[64];
    cleanup_close int fd = -1;

    snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, which);
    snprintf(map, sizeof(map), "0 %u %u\n", host_id, SANDBOX_ID_RANGE);
    fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, map, strlen(map)) != (ssize_t)strlen(map))
        return err_set(errp, ERR_INTERNAL, errno, "write %s", which);
    return 0;
}

/* Clones path as a detached, read-only mount whose ids are shifted into the user namespace. */
static int
idmapped_clone(const char *path, int userns_fd, struct err **errp)
{
    struct mount_attr attr = {
        .attr_set = MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID,
        .userns_fd = (uint64_t)userns_fd,
    };
    int fd = open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);

    if (fd < 0)
        return err_set(errp, ERR_INTERNAL, errno, "clone mount of %s", path);
    if (mount_setattr(fd, "", AT_EMPTY_PATH, &attr, sizeof(attr)) < 0) {
        int e = errno;
        close(fd);
        return err_set(errp, ERR_INTERNAL, e, "idmap %s", path);
    }
    return fd;
}

static int
send_layers(int sync_fd, int skel_fd, int usr_fd, struct err **errp)
{
    char byte = 'g';
    struct iovec iov = {&byte, 1};
    union {
        char buf[CMSG_SPACE(2 * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                        .msg_controllen = sizeof(u.buf)};
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    int fds[2] = {skel_fd, usr_fd};

    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(fds));
    memcpy(CMSG_DATA(c), fds, sizeof(fds));
    if (sendmsg(sync_fd, &mh, MSG_NOSIGNAL) < 0)
        return err_set(errp, ERR_INTERNAL, errno, "send layers to the sandbox");
    return 0;
}

/* Host-side steps once the child exists; on success the child reports itself ready. */
static int
launcher_prepare(const struct sandbox_spec *spec, const struct cgroup_ops *cg, pid_t child,
                 int sync_fd, struct err **errp)
{
    char path[64];
    cleanup_close int userns_fd = -1;
    cleanup_close int skel_fd = -1;
    cleanup_close int usr_fd = -1;
    struct spawn_msg m;

    if (write_map(child, "uid_map", spec->host_id, errp) < 0 ||
        write_map(child, "gid_map", spec->host_id, errp) < 0)
        return -1;
    if (cg->attach(spec->id, child, errp) < 0)
        return err_wrap(errp, "join cgroups");
    snprintf(path, sizeof(path), "/proc/%d/ns/user", (int)child);
    userns_fd = open(path, O_RDONLY | O_CLOEXEC);
    if (userns_fd < 0)
        return err_set(errp, ERR_INTERNAL, errno, "open %s", path);
    skel_fd = idmapped_clone(spec->image_dir, userns_fd, errp);
    if (skel_fd < 0)
        return -1;
    usr_fd = idmapped_clone("/usr", userns_fd, errp);
    if (usr_fd < 0)
        return -1;
    if (send_layers(sync_fd, skel_fd, usr_fd, errp) < 0)
        return -1;
    if (util_read_exact(sync_fd, &m, sizeof(m)) < 0)
        return err_set(errp, ERR_INTERNAL, errno, "sandbox init died during setup");
    if (!m.ok)
        return err_from_msg(&m, errp);
    return 0;
}

static void __attribute__((noreturn))
launcher_main(const struct sandbox_spec *spec, const struct cgroup_ops *cg,
              const struct sock_fprog *prog, int env_fd, int listen_fd, int report_fd)
{
    struct err *e = NULL;
    struct spawn_msg m;
    int sp[2];
    pid_t child;

    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0) {
        err_set(&e, ERR_INTERNAL, errno, "socketpair");
        goto fail;
    }
    /* The child's working directory must be its own namespace's view of the volume: the
     * kernel translates the cwd into the new mount namespace at clone time, whereas an
     * fchdir() there to an fd from this namespace would point at a foreign mount. */
    if (fchdir(env_fd) < 0) {
        err_set(&e, ERR_INTERNAL, errno, "chdir to the environment");
        goto fail;
    }
    /* A fork-like clone: the child continues on a copy of this stack. */
    child = (pid_t)syscall(SYS_clone, SPAWN_NS_FLAGS | SIGCHLD, NULL, NULL, NULL, 0);
    if (child < 0) {
        err_set(&e, ERR_INTERNAL, errno, "clone namespaces");
        goto fail;
    }
    if (child == 0) {
        struct child_args a = {spec, prog, env_fd, listen_fd, sp[1]};
        close(sp[0]);
        close(report_fd);
        child_main(&a);
    }
    close(sp[1]);
    if (launcher_prepare(spec, cg, child, sp[0], &e) < 0) {
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
        goto fail;
    }
    memset(&m, 0, sizeof(m));
    m.ok = 1;
    m.pid = child;
    m.start = util_proc_start_time(child);
    (void)!write(report_fd, &m, sizeof(m));
    _exit(0);

fail:
    msg_from_err(&m, e);
    (void)!write(report_fd, &m, sizeof(m));
    _exit(1);
}

/* Binds env_dir/ctl.sock (root-only) for the init to serve. */
static int
listen_socket(int env_fd, struct err **errp)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    cleanup_close int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return err_set(errp, ERR_INTERNAL, errno, "socket");
    if (unlinkat(env_fd, PROTO_SOCK_NAME, 0) < 0 && errno != ENOENT)
        return err_set(errp, ERR_IO, errno, "remove stale %s", PROTO_SOCK_NAME);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "/proc/self/fd/%d/%s", env_fd, PROTO_SOCK_NAME);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        return err_set(errp, ERR_IO, errno, "bind %s", PROTO_SOCK_NAME);
    if (fchmodat(env_fd, PROTO_SOCK_NAME, 0600, 0) < 0)
        return err_set(errp, ERR_IO, errno, "chmod %s", PROTO_SOCK_NAME);
    if (listen(fd, 128) < 0)
        return err_set(errp, ERR_IO, errno, "listen");
    return steal_fd(&fd);
}

bool sandbox__autoreap;

int
sandbox__start_local(const struct sandbox_spec *spec, struct sandbox_init *out, struct err **errp)
{
    const struct cgroup_ops *cg;
    const struct sock_fprog *prog;
    struct sandbox_limits lim = {spec->memory_bytes, spec->cpus_milli, spec->pids};
    cleanup_close int env_fd = -1;
    cleanup_close int listen_fd = -1;
    int rp[2];
    struct spawn_msg m;
    pid_t launcher;
    ssize_t r;

    cg = sandbox__cgroup_ops(errp);
    if (cg == NULL || sandbox__seccomp_program(&prog, errp) < 0)
        return err_wrap(errp, "start sandbox %s", spec->id);
    env_fd = open(spec->env_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (env_fd < 0)
        return err_set(errp, ERR_IO, errno, "start sandbox %s: open %s", spec->id, spec->env_dir);
    listen_fd = listen_socket(env_fd, errp);
    if (listen_fd < 0)
        return err_wrap(errp, "start sandbox %s", spec->id);
    if (cg->create(spec->id, &lim, errp) < 0)
        return err_wrap(errp, "start sandbox %s: cgroups (%s)", spec->id, cg->name);
    if (pipe2(rp, O_CLOEXEC) < 0) {
        err_set(errp, ERR_INTERNAL, errno, "pipe");
        goto out_cgroup;
    }
    launcher = fork();
    if (launcher < 0) {
        err_set(errp, ERR_INTERNAL, errno, "fork");
        close(rp[0]);
        close(rp[1]);
        goto out_cgroup;
    }
    if (launcher == 0) {
        close(rp[0]);
        launcher_main(spec, cg, prog, env_fd, listen_fd, rp[1]);
    }
    close(rp[1]);
    r = read(rp[0], &m, sizeof(m));
    close(rp[0]);
    /* The report is all we need; a caller that reaps its children itself (the spawner,
     * with SIGCHLD ignored) does not wait for the launcher's exit. */
    if (!sandbox__autoreap)
        waitpid(launcher, NULL, 0);
    if (r != (ssize_t)sizeof(m)) {
        err_set(errp, ERR_INTERNAL, 0, "sandbox launcher died");
        goto out_cgroup;
    }
    if (!m.ok) {
        err_from_msg(&m, errp);
        goto out_cgroup;
    }
    out->pid = m.pid;
    out->start = m.start;
    return 0;

out_cgroup:
    cg->destroy(spec->id, NULL);
    unlinkat(env_fd, PROTO_SOCK_NAME, 0);
    return err_wrap(errp, "start sandbox %s", spec->id);
}

int
sandbox_stop(const char *id, const struct sandbox_init *init, struct err **errp)
{
    const struct cgroup_ops *cg = sandbox__cgroup_ops(errp);
    cleanup_close int pidfd = -1;

    if (cg == NULL)
        return err_wrap(errp, "stop sandbox %s", id);
    if (init->pid > 0) {
        pidfd = (int)syscall(SYS_pidfd_open, init->pid, 0);
        /* Check identity after opening the pidfd, so the pid cannot be reused in between. */
        if (pidfd >= 0 && sandbox_alive(init)) {
            struct pollfd p = {pidfd, POLLIN, 0};
            /* Killing pid 1 of the namespace kills every process in it. */
            syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
            while (poll(&p, 1, 5000) < 0 && errno == EINTR)
                ;
        }
    }
    if (cg->destroy(id, errp) < 0)
        return err_wrap(errp, "stop sandbox %s", id);
    return 0;
}
