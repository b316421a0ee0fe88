/*
 * CONNECT relay prototype.  relay MODE LISTEN_IP PORT UP_IP UP_PORT [options]
 * MODE: rw (read/write, 1 MiB buffers), splice (pipes, 1 MiB), sk (sockmap, SK_SKB verdict
 * without parser), skp (sockmap, stream parser + stream verdict).
 * Options: --netns PATH   create the listening socket inside that network namespace
 *          --delay MS     sleep between the CONNECT exchange and inserting (tests queued data)
 *          --no-kick      do not setsockopt(SO_RCVLOWAT) after insertion
 *          --idle S       idle timeout (sockmap: from tcpi_last_data_recv)
 *          --one-map      (sockmap) single map: attach and redirect in the same map
 * Handles one connection at a time (enough for the measurements and the caveat tests).
 */
#include "common.h"
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <linux/sockios.h>
#include "bpfprog.h"
#include <linux/capability.h>

enum { M_RW, M_SPLICE, M_SK, M_SKP };
static int ingress_peer, flowctl, sndbuf, rcvbuf, flush_timeout = 5, mode, delay_ms, no_kick, idle_s = 0, one_map, no_nodelay, no_fin_check, drop_caps;
static int redir_map = -1, attach_map = -1;
#define BUF (1 << 20)

static void nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

static int sendall(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) { if (errno == EINTR) continue; return -1; }
        p += w; n -= w;
    }
    return 0;
}

/* ---------------------------------------------------------------- rw and splice */
struct dir { int from, to; char *buf; size_t off, len; int pipe[2]; size_t queued; int eof, done; unsigned long long bytes; };

static int dir_pump(struct dir *d)
{
    /* returns -1 on error */
    for (;;) {
        if (mode == M_RW) {
            if (d->len == 0 && !d->eof) {
                ssize_t n = read(d->from, d->buf, BUF);
                if (n < 0) { if (errno == EAGAIN) break; if (errno == EINTR) continue; return -1; }
                if (n == 0) d->eof = 1;
                d->off = 0; d->len = n; d->bytes += n;
            }
            while (d->len > 0) {
                ssize_t n = send(d->to, d->buf + d->off, d->len, MSG_NOSIGNAL);
                if (n < 0) { if (errno == EAGAIN) return 0; if (errno == EINTR) continue; return -1; }
                d->off += n; d->len -= n;
            }
            if (d->eof) break;
        } else {
            if (d->queued < BUF && !d->eof) {
                ssize_t n = splice(d->from, NULL, d->pipe[1], NULL, BUF - d->queued, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
                if (n < 0 && errno == EINTR) continue;
                if (n < 0 && errno != EAGAIN) return -1;
                if (n == 0) d->eof = 1;
                if (n > 0) { d->queued += n; d->bytes += n; }
                if (n < 0 && d->queued == 0) break;
            }
            while (d->queued > 0) {
                ssize_t n = splice(d->pipe[0], NULL, d->to, NULL, d->queued, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
                if (n < 0) { if (errno == EAGAIN) return 0; if (errno == EINTR) continue; return -1; }
                d->queued -= n;
            }
            if (d->eof) break;
        }
    }
    if (d->eof && !d->done && d->len == 0 && d->queued == 0) { shutdown(d->to, SHUT_WR); d->done = 1; }
    return 0;
}

static void relay_copy(int cl, int up, unsigned long long *bup, unsigned long long *bdown)
{
    struct dir d[2] = {{.from = cl, .to = up}, {.from = up, .to = cl}};
    for (int i = 0; i < 2; i++) {
        if (mode == M_RW) d[i].buf = malloc(BUF);
        else { if (pipe2(d[i].pipe, O_CLOEXEC | O_NONBLOCK) < 0) die("pipe"); fcntl(d[i].pipe[1], F_SETPIPE_SZ, BUF); }
    }
    nonblock(cl); nonblock(up);
    while (!(d[0].done && d[1].done)) {
        struct pollfd p[2] = {{.fd = cl}, {.fd = up}};
        for (int i = 0; i < 2; i++) {
            if (d[i].done) continue;
            int pending = mode == M_RW ? d[i].len > 0 : d[i].queued > 0;
            if (pending) p[1 - i].events |= POLLOUT; /* d[i].to == p[1-i].fd */
            else if (!d[i].eof) p[i].events |= POLLIN;
        }
        if (poll(p, 2, idle_s ? idle_s * 1000 : -1) == 0) { fprintf(stderr, "idle timeout\n"); break; }
        int err = 0;
        for (int i = 0; i < 2; i++)
            if (!d[i].done && dir_pump(&d[i]) < 0) err = 1;
        if (err) { fprintf(stderr, "relay error: %s\n", strerror(errno)); break; }
    }
    for (int i = 0; i < 2; i++) {
        free(d[i].buf);
        if (mode != M_RW) { close(d[i].pipe[0]); close(d[i].pipe[1]); }
    }
    *bup = d[0].bytes; *bdown = d[1].bytes;
}

/* ---------------------------------------------------------------- sockmap */
static uint64_t cookie(int fd)
{
    uint64_t c = 0; socklen_t l = sizeof(c);
    if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &c, &l) < 0) die("SO_COOKIE");
    return c;
}

static struct tcp_info tinfo(int fd)
{
    struct tcp_info ti; socklen_t l = sizeof(ti);
    memset(&ti, 0, sizeof(ti));
    getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &l);
    return ti;
}

static int outq(int fd) { int v = 0; ioctl(fd, SIOCOUTQ, &v); return v; }
static int inq(int fd) { int v = 0; ioctl(fd, SIOCINQ, &v); return v; }

static void sockmap_setup(void)
{
    unsigned n1, n2 = 0;
    redir_map = sockhash_create(65536);
    if (redir_map < 0) die("create sockhash");
    attach_map = one_map ? redir_map : sockhash_create(65536);
    if (attach_map < 0) die("create sockhash 2");
    unsigned vtype = mode == M_SKP ? BPF_SK_SKB_STREAM_VERDICT : BPF_SK_SKB_VERDICT;
    int v = load_verdict(redir_map, vtype, &n1, !no_fin_check, ingress_peer ? BPF_F_INGRESS : 0);
    if (v < 0) die("load verdict");
    if (prog_attach(v, attach_map, vtype) < 0) die("attach verdict");
    if (mode == M_SKP) {
        int p = load_parser(&n2);
        if (p < 0) die("load parser");
        if (prog_attach(p, attach_map, BPF_SK_SKB_STREAM_PARSER) < 0) die("attach parser");
    }
    {
        struct bpf_prog_info info; union bpf_attr a;
        memset(&info, 0, sizeof(info)); memset(&a, 0, sizeof(a));
        a.info.bpf_fd = v; a.info.info_len = sizeof(info); a.info.info = (uintptr_t)&info;
        if (sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &a) == 0)
            fprintf(stderr, "verdict: xlated %u insns, jited %u bytes\n", info.xlated_prog_len / 8, info.jited_prog_len);
    }
    fprintf(stderr, "sockmap ready: verdict %u insns, parser %u insns, maps %d/%d\n", n1, n2, redir_map, attach_map);
}

/*
 * Bytes that went into fd's send queue: tcpi_bytes_acked (counts the SYN: -1) + SIOCOUTQ.
 * Bytes that came out of fd's receive side: tcpi_bytes_received (counts the FIN when seen).
 */
static unsigned long long sent_total(int fd) { struct tcp_info t = tinfo(fd); return t.tcpi_bytes_acked + outq(fd); }

static void relay_sockmap(int cl, int up, size_t user_in_cl, size_t user_out_up, size_t user_out_cl,
                          unsigned long long *bup, unsigned long long *bdown)
{
    int fds[2] = {cl, up};
    uint64_t ck[2] = {cookie(cl), cookie(up)};
    unsigned long long rx_base[2], tx_base[2]; /* counters before insertion: the kernel moves what follows */
    for (int i = 0; i < 2; i++) { rx_base[i] = tinfo(fds[i]).tcpi_bytes_received - inq(fds[i]); tx_base[i] = sent_total(fds[i]); }
    /* 1: the redirect map (no programs): cookie(x) -> peer of x */
    if (!one_map) {
        if (map_put_sock(redir_map, ck[0], up) < 0 || map_put_sock(redir_map, ck[1], cl) < 0)
            die("insert redir");
        /* 2: the attach map (programs): gives each socket the verdict program */
        if (map_put_sock(attach_map, ck[0], cl) < 0 || map_put_sock(attach_map, ck[1], up) < 0)
            die("insert attach");
    } else {
        if (map_put_sock(redir_map, ck[1], cl) < 0 || map_put_sock(redir_map, ck[0], up) < 0)
            die("insert one map");
    }
    /* 3: data that reached a receive queue before the program was there: SO_RCVLOWAT runs
     * tcp_data_ready() -> sk_data_ready -> the verdict program over the queue */
    if (!no_kick) {
        int one = 1;
        for (int i = 0; i < 2; i++) setsockopt(fds[i], SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one));
    }
    int paused[2] = {0, 0}, pauses = 0;
    unsigned long long pause_in[2] = {0, 0};
    unsigned long long max_backlog = 0;
    int rdhup[2] = {0, 0}, fin_sent[2] = {0, 0}, fin_rx[2] = {0, 0}; /* rdhup[i]: fds[i] got FIN; fin_sent[i]: shut fds[i] */
    int result = 0;
    double fin_wait_start = 0;
    for (;;) {
        struct pollfd p[2];
        for (int i = 0; i < 2; i++) { p[i].fd = fds[i]; p[i].events = rdhup[i] ? 0 : POLLRDHUP | POLLIN; p[i].revents = 0; }
        int waiting = (rdhup[0] && !fin_sent[1]) || (rdhup[1] && !fin_sent[0]);
        int r = poll(p, 2, waiting || flowctl ? (flowctl ? 2 : 10) : (idle_s ? 1000 : -1));
        if (r < 0 && errno == EINTR) continue;
        for (int i = 0; i < 2; i++) {
            if (p[i].revents & (POLLERR | POLLNVAL)) {
                int e = 0; socklen_t l = sizeof(e);
                getsockopt(fds[i], SOL_SOCKET, SO_ERROR, &e, &l);
                fprintf(stderr, "%s error: %s\n", i ? "upstream" : "client", strerror(e));
                result = -1;
            }
            if ((p[i].revents & POLLIN) && !(p[i].revents & POLLRDHUP) && inq(fds[i]) > 0)
                fprintf(stderr, "%s: %d bytes passed to userspace (no peer?)\n", i ? "upstream" : "client", inq(fds[i]));
            if (p[i].revents & (POLLRDHUP | POLLHUP)) rdhup[i] = 1;
            if ((p[i].revents & POLLRDHUP) && !(p[i].revents & POLLERR)) fin_rx[i] = 1; /* a FIN, not a reset */
        }
        if (result < 0) break;
        /* flow control (the kernel has none for egress redirects): detach a socket from the
         * verdict program while what it sent on is not yet in the peer's send queue */
        if (flowctl) {
            for (int i = 0; i < 2; i++) {
                /* SIOCINQ cannot be trusted here (tcp_bpf's ioctl reports 0 for a socket whose
                 * verdict is detached), so a paused socket is judged by what it had sent on */
                unsigned long long in = paused[i] ? pause_in[i] : tinfo(fds[i]).tcpi_bytes_received - rx_base[i];
                unsigned long long out = sent_total(fds[1 - i]) - tx_base[1 - i];
                unsigned long long backlog = in > out ? in - out : 0;
                if (!paused[i] && !rdhup[i] && backlog > (unsigned long long)flowctl) {
                    if (map_del(attach_map, ck[i]) < 0) fprintf(stderr, "pause: %s\n", strerror(errno));
                    paused[i] = 1; pauses++; pause_in[i] = in;
                } else if (paused[i] && (backlog < (unsigned long long)flowctl / 4 || rdhup[i])) {
                    if (map_put_sock(attach_map, ck[i], fds[i]) < 0) fprintf(stderr, "resume: %s\n", strerror(errno));
                    int one = 1;
                    setsockopt(fds[i], SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one));
                    paused[i] = 0;
                }
                if (backlog > max_backlog) max_backlog = backlog;
            }
        }
        /* half-close: pass fds[i]'s FIN on once everything it received is in the peer's send queue */
        for (int i = 0; i < 2; i++) {
            if (!rdhup[i] || fin_sent[1 - i] || paused[i]) continue;
            struct tcp_info ti = tinfo(fds[i]);
            unsigned long long in = ti.tcpi_bytes_received - 1 /* FIN */ - rx_base[i];
            unsigned long long out = sent_total(fds[1 - i]) - tx_base[1 - i];
            if (in == out) {
                shutdown(fds[1 - i], SHUT_WR);
                fin_sent[1 - i] = 1;
                fin_wait_start = 0;
            } else {
                /* the peer's psock backlog is still writing: give up only without progress */
                static unsigned long long last_out[2];
                if (fin_wait_start == 0 || out != last_out[i]) { fin_wait_start = now(); last_out[i] = out; }
                else if (now() - fin_wait_start > flush_timeout) { fprintf(stderr, "flush stuck: in %llu out %llu\n", in, out); result = -1; }
            }
        }
        if (result < 0) break;
        if (fin_sent[0] && fin_sent[1]) break;
        if (idle_s) {
            struct tcp_info a = tinfo(cl), b = tinfo(up);
            unsigned idle = a.tcpi_last_data_recv < b.tcpi_last_data_recv ? a.tcpi_last_data_recv : b.tcpi_last_data_recv;
            if (idle > (unsigned)idle_s * 1000) { fprintf(stderr, "idle timeout (%u ms)\n", idle); result = -1; break; }
        }
    }
    if (flowctl) fprintf(stderr, "flowctl: %d pauses, max backlog %.1f MB\n", pauses, max_backlog / 1e6);
    struct tcp_info a = tinfo(cl), b = tinfo(up);
    *bup = a.tcpi_bytes_received - user_in_cl - fin_rx[0] + user_out_up; /* bytes_received counts the FIN */
    *bdown = b.tcpi_bytes_received - fin_rx[1];
    fprintf(stderr, "segs: client data_segs_out %u (avg %.0f B), upstream data_segs_in %u (avg %.0f B)\n",
            a.tcpi_data_segs_out, (double)a.tcpi_bytes_acked / (a.tcpi_data_segs_out + 1),
            b.tcpi_data_segs_in, (double)b.tcpi_bytes_received / (b.tcpi_data_segs_in + 1));
    fprintf(stderr, "tcp_info: client rx %llu acked %llu | upstream rx %llu acked %llu | outq cl %d up %d\n",
            (unsigned long long)a.tcpi_bytes_received, (unsigned long long)a.tcpi_bytes_acked,
            (unsigned long long)b.tcpi_bytes_received, (unsigned long long)b.tcpi_bytes_acked, outq(cl), outq(up));
    if (result < 0) { /* abort: reset both */
        struct linger lg = {1, 0};
        setsockopt(cl, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        setsockopt(up, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    /* close() removes the sockets from both maps */
}

/* ---------------------------------------------------------------- main */
int main(int argc, char **argv)
{
    if (argc < 6) { fprintf(stderr, "usage: relay rw|splice|sk|skp LISTEN_IP PORT UP_IP UP_PORT [--netns P] [--delay MS] [--no-kick] [--idle S] [--one-map]\n"); return 2; }
    signal(SIGPIPE, SIG_IGN);
    const char *m = argv[1], *ns = NULL;
    mode = !strcmp(m, "rw") ? M_RW : !strcmp(m, "splice") ? M_SPLICE : !strcmp(m, "sk") ? M_SK : !strcmp(m, "skp") ? M_SKP : -1;
    if (mode < 0) { fprintf(stderr, "bad mode\n"); return 2; }
    for (int i = 6; i < argc; i++) {
        if (!strcmp(argv[i], "--netns")) ns = argv[++i];
        else if (!strcmp(argv[i], "--delay")) delay_ms = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--no-kick")) no_kick = 1;
        else if (!strcmp(argv[i], "--idle")) idle_s = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--one-map")) one_map = 1;
        else if (!strcmp(argv[i], "--no-nodelay")) no_nodelay = 1;
        else if (!strcmp(argv[i], "--no-fin-check")) no_fin_check = 1;
        else if (!strcmp(argv[i], "--drop-caps")) drop_caps = 1;
        else if (!strcmp(argv[i], "--flush-timeout")) flush_timeout = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--sndbuf")) sndbuf = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--ingress-peer")) ingress_peer = 1;
        else if (!strcmp(argv[i], "--flowctl")) flowctl = atoi(argv[++i]); /* high watermark, bytes */
        else if (!strcmp(argv[i], "--rcvbuf")) rcvbuf = atoi(argv[++i]);
    }
    int lfd;
    if (ns) { int old = enter_netns(ns); lfd = tcp_listen(argv[2], atoi(argv[3])); leave_netns(old); }
    else lfd = tcp_listen(argv[2], atoi(argv[3]));
    if (mode == M_SK || mode == M_SKP) sockmap_setup();
    if (drop_caps) { /* keep uid 0 but no capabilities at all: can the map still be fed? */
        struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
        struct __user_cap_data_struct d[2];
        memset(d, 0, sizeof(d));
        if (syscall(SYS_capset, &h, d) < 0) die("capset");
        int t = sockhash_create(4);
        fprintf(stderr, "caps dropped; creating another sockhash now: %s\n", t < 0 ? strerror(errno) : "allowed");
    }
    fprintf(stderr, "relay %s pid %d listening %s:%s%s%s\n", m, getpid(), argv[2], argv[3], ns ? " in " : "", ns ? ns : "");
    for (;;) {
        int cl = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (cl < 0) { if (errno == EINTR) continue; die("accept"); }
        /* CONNECT head: read until CRLFCRLF; keep what follows (early bytes) */
        char head[8192]; size_t hl = 0; char *end = NULL;
        while (!end && hl < sizeof(head) - 1) {
            ssize_t n = read(cl, head + hl, sizeof(head) - 1 - hl);
            if (n <= 0) break;
            hl += n; head[hl] = 0;
            end = strstr(head, "\r\n\r\n");
        }
        if (!end) { close(cl); continue; }
        size_t headlen = end + 4 - head, early = hl - headlen;
        int up = tcp_connect(argv[4], atoi(argv[5]));
        int one = 1;
        for (int k = 0; k < 2; k++) {
            int fd = k ? up : cl;
            if (sndbuf) setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof(sndbuf));
            if (rcvbuf) setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf));
        }
        if (!no_nodelay) {
            setsockopt(up, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            setsockopt(cl, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        }
        static const char ok[] = "HTTP/1.1 200 Connection established\r\n\r\n";
        if (sendall(cl, ok, sizeof(ok) - 1) < 0 || (early && sendall(up, head + headlen, early) < 0)) {
            close(cl); close(up); continue;
        }
        if (delay_ms) usleep(delay_ms * 1000);
        if (ingress_peer) {
            /* EXPERIMENT (download only): steal the sandbox client's own socket (its pid and fd are in
             * an X-Peer header) and redirect upstream skbs straight into its receive side, skipping
             * the client<->relay TCP hop. Not a design: it needs the client's fd. */
            char *x = strstr(head, "X-Peer: ");
            int pid = 0, cfd = -1;
            if (x) sscanf(x + 8, "%d %d", &pid, &cfd);
            int pfd = syscall(SYS_pidfd_open, pid, 0);
            int own = pfd >= 0 ? syscall(SYS_pidfd_getfd, pfd, cfd, 0) : -1;
            if (own < 0) { perror("pidfd_getfd"); close(cl); close(up); continue; }
            uint64_t cu = cookie(up), co = cookie(own);
            if (rcvbuf) setsockopt(own, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf));
            if (map_put_sock(redir_map, cu, own) < 0) die("insert own");
            if (map_put_sock(attach_map, cu, up) < 0) die("insert up");
            int one1 = 1; setsockopt(up, SOL_SOCKET, SO_RCVLOWAT, &one1, sizeof(one1));
            struct pollfd pp = {.fd = cl, .events = POLLRDHUP}; /* wait for the client to finish */
            poll(&pp, 1, 30000);
            fprintf(stderr, "ingress-peer conn done (cookie own %llu)\n", (unsigned long long)co);
            close(own); close(pfd); close(cl); close(up);
            continue;
        }
        unsigned long long bu = 0, bd = 0;
        double t0 = now();
        if (mode == M_RW || mode == M_SPLICE) { relay_copy(cl, up, &bu, &bd); bu += early; }
        else relay_sockmap(cl, up, hl, early, sizeof(ok) - 1, &bu, &bd);
        fprintf(stderr, "conn done: head %zu early %zu up %llu down %llu in %.3f s\n", headlen, early, bu, bd, now() - t0);
        close(cl); close(up);
    }
}
