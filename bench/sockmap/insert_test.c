/* Which TCP states can be inserted into a SOCKHASH? (a peer that already sent FIN, etc.) */
#include "common.h"
#include "bpfprog.h"
static uint64_t cookie(int fd) { uint64_t c = 0; socklen_t l = sizeof(c); getsockopt(fd, SOL_SOCKET, SO_COOKIE, &c, &l); return c; }
int main(void)
{
    int m = sockhash_create(16);
    if (m < 0) die("map");
    int l = tcp_listen("127.0.0.1", 7990);
    int c = tcp_connect("127.0.0.1", 7990), s = accept(l, NULL, NULL);
    printf("established: %s\n", map_put_sock(m, cookie(s), s) < 0 ? strerror(errno) : "ok");
    int c2 = tcp_connect("127.0.0.1", 7990), s2 = accept(l, NULL, NULL);
    shutdown(c2, SHUT_WR); usleep(100000);
    printf("after the peer's FIN (CLOSE_WAIT): %s\n", map_put_sock(m, cookie(s2), s2) < 0 ? strerror(errno) : "ok");
    int c3 = tcp_connect("127.0.0.1", 7990), s3 = accept(l, NULL, NULL);
    shutdown(s3, SHUT_WR); usleep(100000);
    printf("after our own FIN (FIN_WAIT2): %s\n", map_put_sock(m, cookie(s3), s3) < 0 ? strerror(errno) : "ok");
    int u = socket(AF_INET, SOCK_STREAM, 0);
    printf("unconnected: %s\n", map_put_sock(m, cookie(u), u) < 0 ? strerror(errno) : "ok");
    (void)c; (void)c3;
    return 0;
}
