/* The floor under "CPU per delivery": what one loopback send() costs on this machine.
 *
 * One sender process holds N accepted TCP connections (TCP_NODELAY, non-blocking, registered
 * in an epoll for the client's bytes as an edge's parked streams, each opened with a request
 * and a response head as an HTTP stream is) and, every tick, writes one small message to each
 * with send(MSG_DONTWAIT | MSG_NOSIGNAL), as an edge's send_batch does; R reader processes
 * hold the other ends on one epoll each and read everything (epoll_wait blocking, as a
 * client's event loop). The sender's CPU (getrusage, user + system) over the send loops only,
 * divided by the sends, is the cost of one delivery with nothing around it: no parsing, no
 * Python, no broker. On loopback the kernel runs the receiver's TCP path and wakes its reader
 * inside the sender's send(), so the figure depends on how the readers wait; the last
 * argument "batch" puts them in SCHED_BATCH (a woken reader does not preempt the sender:
 * closer to clients on other hosts).
 *
 * Usage: sendfloor CONNS READERS TICKS_PER_S SECONDS PAYLOAD_BYTES normal|batch
 * Prints one line of JSON. Built and run by bench/sendfloor.py.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_self(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static double sys_self(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *what) {
    fprintf(stderr, "sendfloor: %s: %s\n", what, strerror(errno));
    exit(2);
}

/* A reader: connect `n` sockets to `port`, write one byte on a pipe when all are up, then read
 * everything until the sender closes them all (or the parent kills us). */
static void reader(int port, int n, int batch, int ready_fd) {
    if (batch) {
        struct sched_param sp = {0};
        if (sched_setscheduler(0, SCHED_BATCH, &sp) != 0) die("sched_setscheduler");
    }
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(0x7f000001);
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) die("socket");
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) die("connect");
        {   /* an HTTP stream's start: the request, then the response head */
            static const char req[] = "GET /stream/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
            if (write(fd, req, sizeof req - 1) != (ssize_t)(sizeof req - 1)) die("request");
            char head[512];
            if (read(fd, head, sizeof head) <= 0) die("head");
        }
        fcntl(fd, F_SETFL, O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) die("epoll_ctl");
    }
    char one = 1;
    if (write(ready_fd, &one, 1) != 1) die("ready");
    close(ready_fd);
    static char buf[65536];
    struct epoll_event evs[256];
    int open_ = n;
    while (open_ > 0) {
        int k = epoll_wait(ep, evs, 256, -1);
        if (k < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < k; i++) {
            int fd = evs[i].data.fd;
            for (;;) {
                ssize_t r = recv(fd, buf, sizeof buf, 0);
                if (r > 0) continue;
                if (r == 0) {
                    close(fd);
                    open_--;
                }
                break;
            }
        }
    }
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr,
                "usage: sendfloor CONNS READERS TICKS_PER_S SECONDS PAYLOAD_BYTES normal|batch\n");
        return 2;
    }
    int conns = atoi(argv[1]), readers = atoi(argv[2]);
    double tps = atof(argv[3]), secs = atof(argv[4]);
    int size = atoi(argv[5]);
    int batch = strcmp(argv[6], "batch") == 0;
    if (conns < 1 || readers < 1 || readers > conns || tps <= 0 || secs <= 0 || size < 1) {
        fprintf(stderr, "sendfloor: bad arguments\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (lfd < 0) die("socket");
    int on = 1;
    setsockopt(lfd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(0x7f000001);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0) die("bind");
    if (listen(lfd, 4096) != 0) die("listen");
    socklen_t sl = sizeof sa;
    getsockname(lfd, (struct sockaddr *)&sa, &sl);
    int port = ntohs(sa.sin_port);

    int pipefd[2];
    if (pipe(pipefd) != 0) die("pipe");
    pid_t *kids = calloc(readers, sizeof(pid_t));
    for (int r = 0; r < readers; r++) {
        int n = conns / readers + (r < conns % readers ? 1 : 0);
        pid_t p = fork();
        if (p < 0) die("fork");
        if (p == 0) {
            close(pipefd[0]);
            close(lfd);
            reader(port, n, batch, pipefd[1]);
        }
        kids[r] = p;
    }
    close(pipefd[1]);
    int *fds = malloc(sizeof(int) * conns);
    int watch = epoll_create1(0); /* as an edge's parked sockets: watched for the client */
    for (int i = 0; i < conns; i++) {
        fds[i] = accept(lfd, NULL, NULL);
        if (fds[i] < 0) die("accept");
        {
            char req[512];
            if (read(fds[i], req, sizeof req) <= 0) die("request");
            static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
            if (write(fds[i], head, sizeof head - 1) != (ssize_t)(sizeof head - 1)) die("head");
        }
        fcntl(fds[i], F_SETFL, O_NONBLOCK);
        struct epoll_event wev = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = fds[i]};
        if (epoll_ctl(watch, EPOLL_CTL_ADD, fds[i], &wev) != 0) die("epoll_ctl");
    }
    for (int r = 0; r < readers; r++) {
        char c;
        if (read(pipefd[0], &c, 1) != 1) die("reader not ready");
    }
    char *msg = malloc(size);
    memset(msg, 'x', size);
    if (size >= 2) {
        msg[size - 2] = '\n';
        msg[size - 1] = '\n';
    }
    usleep(200000); /* let the handshakes' ACKs settle */

    double interval = 1.0 / tps, t_end = now() + secs, next = now();
    double cpu = 0, sys = 0;
    long sends = 0, short_ = 0, failed = 0;
    while (now() < t_end) {
        double c0 = cpu_self(), s0 = sys_self();
        for (int i = 0; i < conns; i++) {
            ssize_t r = send(fds[i], msg, size, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (r == size)
                sends++;
            else if (r >= 0 || errno == EAGAIN)
                short_++;
            else
                failed++;
        }
        cpu += cpu_self() - c0;
        sys += sys_self() - s0;
        next += interval;
        double wait = next - now();
        if (wait > 0) usleep((useconds_t)(wait * 1e6));
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    for (int i = 0; i < conns; i++) close(fds[i]);
    for (int r = 0; r < readers; r++) waitpid(kids[r], NULL, 0);
    printf("{\"conns\": %d, \"readers\": %d, \"ticks_per_s\": %g, \"seconds\": %g, "
           "\"payload_bytes\": %d, \"reader_sched\": \"%s\", \"sends\": %ld, \"short\": %ld, "
           "\"failed\": %ld, \"cpu_s\": %.4f, \"sys_s\": %.4f, \"us_per_send\": %.3f, \"nvcsw\": %ld, \"nivcsw\": %ld}\n",
           conns, readers, tps, secs, size, batch ? "batch" : "normal", sends, short_, failed,
           cpu, sys, sends ? cpu / sends * 1e6 : 0.0, ru.ru_nvcsw, ru.ru_nivcsw);
    return 0;
}
