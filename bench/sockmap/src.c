/* source server: for each accepted connection write N bytes as fast as possible, then close */
#include "common.h"
#include <signal.h>

int main(int argc, char **argv)
{
    if (argc < 4) { fprintf(stderr, "usage: src IP PORT BYTES\n"); return 2; }
    signal(SIGPIPE, SIG_IGN);
    int lfd = tcp_listen(argv[1], atoi(argv[2]));
    unsigned long long total = strtoull(argv[3], NULL, 0);
    size_t bsz = 251 * 4096; /* pattern: byte at stream offset o is o % 251 */
    unsigned char *buf = malloc(bsz);
    for (size_t i = 0; i < bsz; i++) buf[i] = i % 251;
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) { if (errno == EINTR) continue; die("accept"); }
        unsigned long long left = total;
        unsigned long long pos = 0;
        while (left > 0) {
            size_t off = pos % bsz, chunk = bsz - off;
            ssize_t n = write(fd, buf + off, left < chunk ? left : chunk);
            if (n < 0) { if (errno == EINTR) continue; perror("src write"); break; }
            left -= n; pos += n;
        }
        shutdown(fd, SHUT_WR);
        /* wait for the peer to close so the relay sees an orderly end */
        char tmp[256];
        while (read(fd, tmp, sizeof(tmp)) > 0) ;
        close(fd);
    }
}
