/* The bench origin in C (bench/corigin.py): the same answers as bench/origin.py's
 * ``respond(path, None, resume=False, body)`` for /stream/<ch>, /sse/<ch>, /lp/<ch> and
 * /ws/<ch> (WebSocket-over-HTTP), a 404 for anything else, on HTTP/1.1 keep-alive
 * connections, from one epoll loop and no Python per request, so that the origin takes
 * less of the shared machine (bench connrate --origin c).
 *
 * usage: corigin <listening fd>   (inherited, already bound and listening)
 * Prints "ready\n" on stdout once it serves; SIGTERM or SIGINT stop it.
 * A request head over 64 KiB, or a body over 1 MiB, closes its connection.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_HEAD (64 * 1024)
#define MAX_BODY (1024 * 1024)
#define MAX_EVENTS 512

typedef struct {
    char *in;
    size_t in_len, in_cap;
    char *out;
    size_t out_len, out_off, out_cap;
} conn_t;

static volatile sig_atomic_t stopping = 0;
static conn_t **conns;
static size_t nconns;
static int ep;

static void on_signal(int sig) { (void)sig; stopping = 1; }

static void die(const char *what) { perror(what); exit(1); }

static int grow(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap : 4096;
    while (n < need) n *= 2;
    char *p = realloc(*buf, n);
    if (!p) return -1;
    *buf = p;
    *cap = n;
    return 0;
}

static int append(conn_t *c, const char *data, size_t len) {
    if (grow(&c->out, &c->out_cap, c->out_len + len)) return -1;
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
    return 0;
}

static void close_conn(int fd) {
    conn_t *c = conns[fd];
    if (c) {
        free(c->in);
        free(c->out);
        free(c);
        conns[fd] = NULL;
    }
    close(fd);
}

static const char *HEAD_STREAM =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nGrip-Hold: stream\r\n";
static const char *HEAD_SSE =
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    "Grip-Hold: stream\r\n";
static const char *HEAD_LP =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nGrip-Hold: response\r\n"
    "Grip-Timeout: 30\r\n";
static const char *HEAD_WOH =
    "HTTP/1.1 200 OK\r\nContent-Type: application/websocket-events\r\n"
    "Sec-WebSocket-Extensions: grip\r\n";
static const char *R404 =
    "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\n"
    "not found\n";

/* bench/origin.py respond_woh: an OPEN is accepted with a subscribe control message for the
 * channel (prev-id from ?prev=), a CLOSE is echoed, anything else gets an empty body */
static int respond_woh(conn_t *c, const char *ch, size_t ch_len, const char *prev,
                       size_t prev_len, const char *body, size_t body_len) {
    char msg[4096], out[4300], head[256];
    size_t out_len = 0;
    if (ch_len + prev_len > 2048) return -1;
    if (body_len >= 4 && memcmp(body, "OPEN", 4) == 0) {
        int n;
        if (prev_len)
            n = snprintf(msg, sizeof msg,
                         "c:{\"type\": \"subscribe\", \"channel\": \"%.*s\", \"prev-id\": \"%.*s\"}",
                         (int)ch_len, ch, (int)prev_len, prev);
        else
            n = snprintf(msg, sizeof msg, "c:{\"type\": \"subscribe\", \"channel\": \"%.*s\"}",
                         (int)ch_len, ch);
        out_len = (size_t)snprintf(out, sizeof out, "OPEN\r\nTEXT %x\r\n%.*s\r\n", n, n, msg);
    } else if (memmem(body, body_len, "CLOSE", 5) != NULL) {
        out_len = (size_t)snprintf(out, sizeof out, "CLOSE\r\n");
    }
    int h = snprintf(head, sizeof head, "%sContent-Length: %zu\r\n\r\n", HEAD_WOH, out_len);
    if (append(c, head, (size_t)h)) return -1;
    return append(c, out, out_len);
}

/* one request: its target and body; the answer appended to c->out */
static int respond(conn_t *c, const char *target, size_t target_len, const char *body,
                   size_t body_len) {
    const char *q = memchr(target, '?', target_len);
    size_t path_len = q ? (size_t)(q - target) : target_len;
    const char *query = q ? q + 1 : target + target_len;
    size_t query_len = target_len - (size_t)(query - target);
    /* exactly three parts split on '/': "", kind, channel (non-empty) */
    if (path_len < 1 || target[0] != '/') return append(c, R404, strlen(R404));
    const char *kind = target + 1;
    const char *slash = memchr(kind, '/', path_len - 1);
    if (!slash) return append(c, R404, strlen(R404));
    size_t kind_len = (size_t)(slash - kind);
    const char *ch = slash + 1;
    size_t ch_len = path_len - (size_t)(ch - target);
    if (ch_len == 0 || memchr(ch, '/', ch_len)) return append(c, R404, strlen(R404));
    if (kind_len == 2 && memcmp(kind, "ws", 2) == 0) {
        const char *prev = "";
        size_t prev_len = 0;
        if (query_len >= 5 && memcmp(query, "prev=", 5) == 0) {
            prev = query + 5;
            const char *amp = memchr(prev, '&', query_len - 5);
            prev_len = amp ? (size_t)(amp - prev) : query_len - 5;
        }
        return respond_woh(c, ch, ch_len, prev, prev_len, body, body_len);
    }
    const char *head, *first;
    if (kind_len == 6 && memcmp(kind, "stream", 6) == 0) {
        head = HEAD_STREAM;
        first = "[open]\n";
    } else if (kind_len == 3 && memcmp(kind, "sse", 3) == 0) {
        head = HEAD_SSE;
        first = ":open\n\n";
    } else if (kind_len == 2 && memcmp(kind, "lp", 2) == 0) {
        head = HEAD_LP;
        first = "T\n";
    } else {
        return append(c, R404, strlen(R404));
    }
    if (append(c, head, strlen(head)) || append(c, "Grip-Channel: ", 14) ||
        append(c, ch, ch_len))
        return -1;
    char tail[64];
    int n = snprintf(tail, sizeof tail, "\r\nContent-Length: %zu\r\n\r\n%s", strlen(first), first);
    return append(c, tail, (size_t)n);
}

/* Content-Length of a head (0 when none), -1 when unreadable or too large */
static long content_length(const char *head, size_t len) {
    const char *p = memchr(head, '\n', len);
    while (p && (size_t)(p - head) + 1 < len) {
        const char *line = p + 1;
        size_t left = len - (size_t)(line - head);
        const char *eol = memchr(line, '\n', left);
        size_t ll = eol ? (size_t)(eol - line) : left;
        if (ll > 15 && strncasecmp(line, "content-length:", 15) == 0) {
            char num[32];
            size_t k = 0;
            for (size_t i = 15; i < ll && k + 1 < sizeof num; i++)
                if (line[i] >= '0' && line[i] <= '9') num[k++] = line[i];
                else if (line[i] != ' ' && line[i] != '\t' && line[i] != '\r') return -1;
            num[k] = 0;
            long v = k ? strtol(num, NULL, 10) : 0;
            return v > MAX_BODY ? -1 : v;
        }
        p = eol;
    }
    return 0;
}

/* answer every complete request buffered on c; -1: close the connection */
static int serve_buffered(conn_t *c) {
    size_t used = 0;
    while (1) {
        char *start = c->in + used;
        size_t left = c->in_len - used;
        char *end = memmem(start, left, "\r\n\r\n", 4);
        if (!end) {
            if (left > MAX_HEAD) return -1;
            break;
        }
        size_t head_len = (size_t)(end - start);
        long clen = content_length(start, head_len);
        if (clen < 0) return -1;
        if (left < head_len + 4 + (size_t)clen) break; /* the body is not all in yet */
        /* the target: between the request line's first and second space */
        char *eol = memchr(start, '\r', head_len + 1);
        char *sp1 = memchr(start, ' ', (size_t)(eol - start));
        if (!sp1) return -1;
        char *sp2 = memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1));
        size_t tlen = sp2 ? (size_t)(sp2 - sp1 - 1) : (size_t)(eol - sp1 - 1);
        if (respond(c, sp1 + 1, tlen, end + 4, (size_t)clen)) return -1;
        used += head_len + 4 + (size_t)clen;
    }
    if (used) {
        memmove(c->in, c->in + used, c->in_len - used);
        c->in_len -= used;
    }
    return 0;
}

/* write what is queued; 1: all of it, 0: the rest waits for EPOLLOUT, -1: failed */
static int flush_out(int fd, conn_t *c) {
    while (c->out_off < c->out_len) {
        ssize_t n = write(fd, c->out + c->out_off, c->out_len - c->out_off);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            if (errno == EINTR) continue;
            return -1;
        }
        c->out_off += (size_t)n;
    }
    c->out_off = c->out_len = 0;
    return 1;
}

static void on_readable(int fd) {
    conn_t *c = conns[fd];
    while (1) {
        if (grow(&c->in, &c->in_cap, c->in_len + 16384)) {
            close_conn(fd);
            return;
        }
        ssize_t n = read(fd, c->in + c->in_len, c->in_cap - c->in_len);
        if (n == 0) {
            close_conn(fd);
            return;
        }
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            close_conn(fd);
            return;
        }
        c->in_len += (size_t)n;
        if ((size_t)n < c->in_cap - (c->in_len - (size_t)n)) break; /* drained */
    }
    if (serve_buffered(c)) {
        close_conn(fd);
        return;
    }
    int r = flush_out(fd, c);
    if (r < 0) {
        close_conn(fd);
    } else if (r == 0) {
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.fd = fd};
        epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
    }
}

static void on_writable(int fd) {
    conn_t *c = conns[fd];
    int r = flush_out(fd, c);
    if (r < 0) {
        close_conn(fd);
    } else if (r == 1) {
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
    }
}

static void accept_all(int lfd) {
    while (1) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            return; /* EAGAIN, or out of descriptors: the backlog waits */
        }
        if ((size_t)fd >= nconns) {
            close(fd);
            continue;
        }
        conns[fd] = calloc(1, sizeof(conn_t));
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        if (!conns[fd] || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev)) close_conn(fd);
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: corigin <listening fd>\n");
        return 2;
    }
    int lfd = atoi(argv[1]);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    getrlimit(RLIMIT_NOFILE, &rl);
    nconns = rl.rlim_cur > 1 << 20 ? 1 << 20 : (size_t)rl.rlim_cur;
    conns = calloc(nconns, sizeof(conn_t *));
    if (!conns) die("calloc");
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct epoll_event lev = {.events = EPOLLIN, .data.fd = lfd};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev)) die("epoll_ctl listener");
    printf("ready\n");
    fflush(stdout);
    struct epoll_event evs[MAX_EVENTS];
    while (!stopping) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                accept_all(lfd);
                continue;
            }
            if (!conns[fd]) continue;
            if (evs[i].events & EPOLLOUT) on_writable(fd);
            if (conns[fd] && (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) on_readable(fd);
        }
    }
    return 0;
}
