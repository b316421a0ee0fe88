/* client: [--netns PATH] [--connect] IP PORT : optional CONNECT exchange, then recv into a
 * 1 MiB buffer until EOF; prints "bytes seconds GB/s" */
#include "common.h"

int main(int argc, char **argv)
{
    const char *ns = NULL;
    int do_connect = 0, verify = 0, peer = 0, i = 1;
    unsigned long long want = 0;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "--netns")) ns = argv[++i];
        else if (!strcmp(argv[i], "--connect")) do_connect = 1;
        else if (!strcmp(argv[i], "--verify")) verify = 1;
        else if (!strcmp(argv[i], "--peer")) peer = 1; /* experiment: tell the relay our pid and fd */
        else if (!strcmp(argv[i], "--bytes")) want = strtoull(argv[++i], NULL, 0);
    }
    if (argc - i < 2) { fprintf(stderr, "usage: cli [--netns P] [--connect] IP PORT\n"); return 2; }
    if (ns) enter_netns(ns); /* stay there */
    size_t bsz = 1 << 20;
    char *buf = malloc(bsz);
    double t0 = now();
    int fd = tcp_connect(argv[i], atoi(argv[i + 1]));
    unsigned long long got = 0;
    if (do_connect) {
        char req[256];
        int rl = snprintf(req, sizeof(req), "CONNECT 127.0.0.2:9000 HTTP/1.1\r\nHost: 127.0.0.2:9000\r\n");
        if (peer) rl += snprintf(req + rl, sizeof(req) - rl, "X-Peer: %d %d\r\n", getpid(), fd);
        rl += snprintf(req + rl, sizeof(req) - rl, "\r\n");
        if (write(fd, req, rl) != rl) die("write req");
        /* read the answer head byte by byte (tiny) so no payload is swallowed */
        char h[512]; size_t hl = 0;
        while (hl < sizeof(h) - 1) {
            ssize_t n = read(fd, h + hl, 1);
            if (n <= 0) die("read head");
            hl++;
            if (hl >= 4 && !memcmp(h + hl - 4, "\r\n\r\n", 4)) break;
        }
        h[hl] = 0;
        if (strncmp(h, "HTTP/1.1 200", 12)) { fprintf(stderr, "bad answer: %s\n", h); return 1; }
    }
    if (peer) usleep(300000); /* experiment: be out of recv() while the relay inserts our socket */
    t0 = now();
    for (;;) {
        ssize_t n = recv(fd, buf, bsz, 0);
        if (n < 0) { if (errno == EINTR) continue; die("recv"); }
        if (n == 0) break;
        if (verify)
            for (ssize_t k = 0; k < n; k++)
                if ((unsigned char)buf[k] != (got + k) % 251) { fprintf(stderr, "CORRUPT at offset %llu\n", got + k); return 3; }
        got += n;
        if (want && got >= want) break;
    }
    double dt = now() - t0;
    close(fd);
    printf("%llu %.4f %.3f\n", got, dt, got / dt / 1e9);
    return 0;
}
