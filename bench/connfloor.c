/* The floor under "new connections/s" (issue 16): the least work any GRIP proxy does to accept
 * a client and hold it, in C, with nothing around it (bench/connfloor.py).
 *
 * usage: connfloor LISTEN_PORT ORIGIN_PORT WORKERS
 *
 * WORKERS processes (forked; the parent waits for them and stops them on SIGTERM) each listen
 * on 127.0.0.1:LISTEN_PORT with SO_REUSEPORT, as gripcast's edges do, and run one epoll loop.
 * Per client: accept4, read the request head, send "GET <path>" to the origin over a kept-alive
 * connection from the worker's pool (a new one only when none is idle), read the origin's whole
 * answer (head and Content-Length body), refuse it unless it says Grip-Hold: stream, write the
 * client a chunked stream head with the origin's body as the first chunk, and hold the client
 * (closed when the client closes).  No channel subscription, no publishing, no limits, no
 * Grip-Sig, no header filtering: a real proxy does all of that on top.  Not a server: a
 * measuring tool for the bench's connrate (--target floor).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

enum kind { LISTENER, CLIENT, ORIGIN };
enum state { READING, WAITING, HELD, IDLE, CONNECTING, ANSWERING };

#define BUF 4096

struct conn {
    int fd; /* -1 once dropped: freed after the epoll batch it was dropped in */
    enum kind kind;
    enum state state;
    struct conn *peer;   /* a client's origin connection while it waits, and back */
    struct conn *next;   /* the idle pool's list */
    size_t len;
    char buf[BUF];
};

static int ep, origin_port;
static struct conn *pool, *graveyard;
static const char HEAD[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
    "Connection: Transfer-Encoding\r\n\r\n";

static void drop(struct conn *c) {
    close(c->fd); /* also leaves the epoll */
    c->fd = -1;   /* a later event of the same batch may still point here */
    c->next = graveyard;
    graveyard = c;
}

static struct conn *fresh(int fd, enum kind kind, enum state state) {
    struct conn *c = malloc(sizeof *c);
    if (!c) {
        close(fd);
        return NULL;
    }
    c->fd = fd;
    c->kind = kind;
    c->state = state;
    c->peer = c->next = NULL;
    c->len = 0;
    return c;
}

static int watch(struct conn *c, int op, unsigned events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    return epoll_ctl(ep, op, c->fd, &ev);
}

static void fail_client(struct conn *cl) {
    static const char bad[] = "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n";
    (void)!write(cl->fd, bad, sizeof bad - 1);
    drop(cl);
}

/* Send the client's request to origin connection o (idle or just connected). */
static void forward(struct conn *cl, struct conn *o) {
    char *sp1 = memchr(cl->buf, ' ', cl->len);
    char *sp2 = sp1 ? memchr(sp1 + 1, ' ', cl->len - (size_t)(sp1 + 1 - cl->buf)) : NULL;
    if (!sp2) {
        fail_client(cl);
        o->state = IDLE;
        o->next = pool;
        pool = o;
        return;
    }
    int n = snprintf(o->buf, BUF, "GET %.*s HTTP/1.1\r\nHost: bench\r\n\r\n",
                     (int)(sp2 - sp1 - 1), sp1 + 1);
    cl->peer = o;
    cl->state = WAITING;
    o->peer = cl;
    o->state = ANSWERING;
    o->len = 0;
    if (write(o->fd, o->buf, (size_t)n) != n) {
        cl->peer = NULL;
        drop(o);
        fail_client(cl);
    }
}

static void origin_for(struct conn *cl) {
    struct conn *o = pool;
    if (o) {
        pool = o->next;
        forward(cl, o);
        return;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(origin_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) {
        close(fd);
        fail_client(cl);
        return;
    }
    o = fresh(fd, ORIGIN, CONNECTING);
    if (!o) {
        fail_client(cl);
        return;
    }
    o->peer = cl;
    cl->peer = o;
    cl->state = WAITING;
    watch(o, EPOLL_CTL_ADD, EPOLLOUT | EPOLLIN);
}

static void on_client(struct conn *cl) {
    for (;;) {
        if (cl->state != READING) { /* held or waiting: only a close (or stray bytes) comes */
            char sink[512];
            ssize_t n = read(cl->fd, sink, sizeof sink);
            if (n > 0) continue;
            if (n < 0 && errno == EAGAIN) return;
            if (cl->peer) cl->peer->peer = NULL; /* the origin's answer goes nowhere */
            drop(cl);
            return;
        }
        ssize_t n = read(cl->fd, cl->buf + cl->len, BUF - 1 - cl->len);
        if (n < 0 && errno == EAGAIN) return;
        if (n <= 0) {
            drop(cl);
            return;
        }
        cl->len += (size_t)n;
        cl->buf[cl->len] = 0;
        if (strstr(cl->buf, "\r\n\r\n")) {
            origin_for(cl);
            return;
        }
        if (cl->len >= BUF - 1) {
            fail_client(cl);
            return;
        }
    }
}

static void answer(struct conn *o) {
    struct conn *cl = o->peer;
    char *end = strstr(o->buf, "\r\n\r\n");
    char *cl_h = strcasestr(o->buf, "\r\nContent-Length:");
    size_t body = cl_h && cl_h < end ? (size_t)atol(cl_h + 17) : 0;
    if ((size_t)(end + 4 - o->buf) + body > o->len) return; /* the body is not all in */
    int held = strcasestr(o->buf, "\r\nGrip-Hold: stream") != NULL;
    o->peer = NULL;
    o->state = IDLE;
    o->len = 0;
    o->next = pool;
    pool = o;
    if (!cl) return;
    cl->peer = NULL;
    if (!held) {
        fail_client(cl);
        return;
    }
    char out[BUF + 256];
    size_t n = sizeof HEAD - 1;
    memcpy(out, HEAD, n);
    n += (size_t)snprintf(out + n, sizeof out - n, "%zx\r\n", body);
    memcpy(out + n, end + 4, body);
    n += body;
    memcpy(out + n, "\r\n", 2);
    n += 2;
    if (write(cl->fd, out, n) != (ssize_t)n) {
        drop(cl);
        return;
    }
    cl->state = HELD;
}

static void on_origin(struct conn *o, unsigned events) {
    if (o->state == CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(o->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        struct conn *cl = o->peer;
        if (err || (events & (EPOLLERR | EPOLLHUP))) {
            if (cl) {
                cl->peer = NULL;
                fail_client(cl);
            }
            drop(o);
            return;
        }
        watch(o, EPOLL_CTL_MOD, EPOLLIN);
        if (!cl) { /* the client left while connecting */
            o->state = IDLE;
            o->next = pool;
            pool = o;
            return;
        }
        forward(cl, o);
        return;
    }
    if (o->state == IDLE) { /* an idle connection the origin closed (or stray bytes) */
        struct conn **p = &pool;
        while (*p && *p != o) p = &(*p)->next;
        if (*p) *p = o->next;
        drop(o);
        return;
    }
    for (;;) {
        ssize_t n = read(o->fd, o->buf + o->len, BUF - 1 - o->len);
        if (n < 0 && errno == EAGAIN) return;
        if (n <= 0 || o->len + (size_t)n >= BUF - 1) {
            if (o->peer) {
                o->peer->peer = NULL;
                fail_client(o->peer);
            }
            drop(o);
            return;
        }
        o->len += (size_t)n;
        o->buf[o->len] = 0;
        if (strstr(o->buf, "\r\n\r\n")) {
            answer(o);
            return;
        }
    }
}

static void on_listener(struct conn *l) {
    for (;;) {
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK);
        if (fd < 0) return; /* EAGAIN, or out of files: the next wake tries again */
        struct conn *c = fresh(fd, CLIENT, READING);
        if (!c) continue;
        /* the request is usually in by now: read before asking the epoll */
        watch(c, EPOLL_CTL_ADD, EPOLLIN);
        on_client(c);
    }
}

static int worker(int port) {
    int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(l, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 4096) < 0) {
        perror("connfloor: listen");
        return 1;
    }
    ep = epoll_create1(0);
    struct conn *lc = fresh(l, LISTENER, READING);
    watch(lc, EPOLL_CTL_ADD, EPOLLIN);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0 && errno != EINTR) return 1;
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->fd < 0) continue; /* dropped by an earlier event of this batch */
            if (c->kind == LISTENER)
                on_listener(c);
            else if (c->kind == CLIENT)
                on_client(c);
            else
                on_origin(c, evs[i].events);
        }
        while (graveyard) {
            struct conn *c = graveyard;
            graveyard = c->next;
            free(c);
        }
    }
}

static volatile sig_atomic_t stopping;
static void on_term(int sig) {
    (void)sig;
    stopping = 1;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: connfloor LISTEN_PORT ORIGIN_PORT WORKERS\n");
        return 2;
    }
    int port = atoi(argv[1]), workers = atoi(argv[3]);
    origin_port = atoi(argv[2]);
    if (port <= 0 || origin_port <= 0 || workers < 1) {
        fprintf(stderr, "connfloor: bad arguments\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    pid_t kids[64];
    if (workers > 64) workers = 64;
    for (int i = 0; i < workers; i++) {
        kids[i] = fork();
        if (kids[i] == 0) return worker(port);
    }
    signal(SIGTERM, on_term);
    while (!stopping && wait(NULL) > 0) {
    }
    for (int i = 0; i < workers; i++) kill(kids[i], SIGKILL);
    while (wait(NULL) > 0) {
    }
    return 0;
}
