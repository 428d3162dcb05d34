/* Whether the running kernel offers TLS offload (kTLS), asked the only way that answers
 * for this kernel and this container: attaching the "tls" upper-layer protocol to a
 * connected TCP socket, a loopback pair made for the purpose. Kernels built without it,
 * or without the module loaded, refuse with ENOENT. Asked once per process. */
#include <pier/tls.h>

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef TCP_ULP
#define TCP_ULP 31
#endif

static int ktls_answer;
static pthread_once_t ktls_once = PTHREAD_ONCE_INIT;

/* A connected loopback TCP pair: *a the connecting end, *b the accepted one. */
static int loopback_pair(int *a, int *b) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    *a = *b = -1;
    if (l < 0)
        return -errno;
    int err = 0;
    if (bind(l, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(l, 1) < 0 ||
        getsockname(l, (struct sockaddr *)&sa, &len) < 0 || (*a = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
        connect(*a, (struct sockaddr *)&sa, sizeof sa) < 0 || (*b = accept4(l, NULL, NULL, SOCK_CLOEXEC)) < 0)
        err = -errno;
    close(l);
    return err;
}

static void ktls_probe(void) {
    int a, b;
    int err = loopback_pair(&a, &b);
    if (err == 0 && setsockopt(a, IPPROTO_TCP, TCP_ULP, "tls", sizeof "tls") < 0)
        err = -errno;
    if (a >= 0)
        close(a);
    if (b >= 0)
        close(b);
    ktls_answer = err;
}

int pier_tls_ktls_check(void) {
    if (pthread_once(&ktls_once, ktls_probe) != 0)
        return -EAGAIN;
    return ktls_answer;
}
