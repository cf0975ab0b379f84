/* connload: new connections per second against one port, plain or TLS (bench/connload.py).
 *
 * One process, one epoll loop, `--concurrency` connections in flight.  Each connection:
 * a non-blocking TCP connect (from the next `--src` address, if any), the TLS handshake
 * (OpenSSL on the socket, no verification: the bench measures the server), then either
 *   - `--request` given: the request is sent (a "%d" in it becomes n % `--channels`) and
 *     the response is read until `--until` is seen (the response head, or a stream's
 *     first bytes), then the connection is closed;
 *   - no request, plain: the client half-closes and reads until the server closes;
 *   - no request, TLS: closed as soon as the client's side of the handshake is complete.
 * `--max-errors N` stops the run after N failed connections (a refused protocol version
 * would otherwise fail as fast as the loop goes, burning the CPU being measured).
 * A connection that completes starts the next one in its slot, until `--duration` seconds
 * (or `--conns` connections) have passed.  With `--resume`, each slot offers the session
 * (ticket) its previous connection got.
 *
 * `--hold` (plain, with `--request` and `--conns`): a connection that saw `--until` is kept
 * open instead of closed, and the run ends once `--conns` were held (or failed, or
 * `--duration` passed).  The process first waits for a byte (or EOF) on stdin, so that
 * several copies start together, and after printing its report it keeps every held
 * connection open until stdin reaches EOF (bench/connrate.py: the held count rises to its
 * target across all copies before any is closed); the report then also lists each held
 * connection's CLOCK_MONOTONIC time of completion ("held_at").
 *
 * Output: one JSON object on stdout: completed connections, errors by kind (with the first
 * message of each), resumed handshakes, the process's own CPU (getrusage), and two latency
 * histograms in 10-microsecond buckets ("handshake": from connect() to the end of the TLS
 * handshake, or of the TCP connect for plain; "total": to the response, or to the close).
 * The percentiles are computed by bench/connload.py.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define BUCKET_US 10
#define NBUCKETS 1000000 /* 10 s */
#define HEAD_MAX 16384

enum { M_PLAIN, M_TLS12, M_TLS13 };
enum { S_FREE, S_CONNECT, S_HS, S_WRITE, S_READ, S_DRAIN };
enum { E_CONNECT, E_HANDSHAKE, E_WRITE, E_READ, E_CLOSED, E_TIMEOUT, E_KINDS };
static const char *E_NAMES[E_KINDS] = {"connect", "handshake", "write", "read", "closed", "timeout"};

struct conn {
    int fd;
    int state;
    unsigned events;
    SSL *ssl;
    SSL_SESSION *sess; /* the slot's session to offer next (--resume) */
    double t0;
    char req[2048];
    int reqlen, sent;
    char head[HEAD_MAX];
    int headlen;
};

static int mode = M_PLAIN, resume = 0, concurrency = 64, channels = 50, port = 0;
static double duration = 5.0, timeout_s = 10.0;
static long max_conns = 0, max_errors = 0;
static const char *host = "127.0.0.1", *request = NULL, *until = "\r\n\r\n", *sni = NULL;
static struct in_addr srcs[256];
static int nsrc = 0, next_src = 0;
static struct sockaddr_in dest;
static SSL_CTX *ctx;
static int ep;
static struct conn *conns;
static uint32_t *hist_hs, *hist_total;
static long started = 0, completed = 0, resumed = 0, errors[E_KINDS];
static char first_error[E_KINDS][200];
static double deadline;
static int stopping = 0;
static int hold = 0;
static int *held_fds;
static double *held_at;
static long nheld = 0;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void record(uint32_t *hist, double seconds) {
    long b = (long)(seconds * 1e6 / BUCKET_US);
    if (b < 0) b = 0;
    if (b >= NBUCKETS) b = NBUCKETS - 1;
    hist[b]++;
}

static void set_events(struct conn *c, unsigned events) {
    if (events == c->events) return;
    struct epoll_event ev = {.events = events, .data.u32 = (uint32_t)(c - conns)};
    epoll_ctl(ep, c->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &ev);
    c->events = events;
}

static void finish(struct conn *c) {
    if (c->ssl) {
        /* no close_notify (as browsers end HTTPS connections), yet the session stays
         * resumable: OpenSSL marks a session not resumable when freed unshut */
        SSL_set_shutdown(c->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) close(c->fd); /* (closing removes it from the epoll set) */
    c->fd = -1;
    c->events = 0;
    c->state = S_FREE;
}

static void fail(struct conn *c, int kind, const char *what) {
    errors[kind]++;
    if (!first_error[kind][0]) {
        unsigned long e = ERR_peek_last_error();
        char ebuf[120] = "";
        if (e) ERR_error_string_n(e, ebuf, sizeof ebuf);
        snprintf(first_error[kind], sizeof first_error[kind], "%s%s%s", what, ebuf[0] ? ": " : "",
                 ebuf);
    }
    ERR_clear_error();
    if (c->sess && kind == E_HANDSHAKE) { /* do not offer a session that failed again */
        SSL_SESSION_free(c->sess);
        c->sess = NULL;
    }
    finish(c);
}

static void done(struct conn *c) {
    double t = now();
    if (t <= deadline) {
        completed++;
        record(hist_total, t - c->t0);
    }
    if (hold && c->fd >= 0 && !c->ssl && t <= deadline) { /* kept open, out of the loop */
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        held_fds[nheld] = c->fd;
        held_at[nheld++] = t;
        c->fd = -1;
    }
    finish(c);
}

static int new_session(SSL *ssl, SSL_SESSION *sess) {
    struct conn *c = SSL_get_app_data(ssl);
    if (!resume || !c) return 0;
    if (c->sess) SSL_SESSION_free(c->sess);
    c->sess = sess; /* ours now (returning 1) */
    return 1;
}

static void step(struct conn *c);

static void start(struct conn *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    c->events = 0;
    c->headlen = 0;
    c->sent = 0;
    c->ssl = NULL;
    started++;
    c->t0 = now();
    if (c->fd < 0) {
        fail(c, E_CONNECT, strerror(errno));
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (nsrc) {
        struct sockaddr_in src = {.sin_family = AF_INET, .sin_addr = srcs[next_src]};
        next_src = (next_src + 1) % nsrc;
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(c->fd, (struct sockaddr *)&src, sizeof src) < 0) {
            fail(c, E_CONNECT, strerror(errno));
            return;
        }
    }
    if (request) {
        c->reqlen = snprintf(c->req, sizeof c->req, request, (int)(started % channels));
        if (c->reqlen >= (int)sizeof c->req) c->reqlen = sizeof c->req - 1;
    }
    if (connect(c->fd, (struct sockaddr *)&dest, sizeof dest) < 0 && errno != EINPROGRESS) {
        fail(c, E_CONNECT, strerror(errno));
        return;
    }
    c->state = S_CONNECT;
    if (mode == M_PLAIN && request) {
        /* on loopback the handshake is usually over when connect() returns: the request goes
         * now, without a wait for writability (a write before the connection is up fails
         * with EAGAIN or ENOTCONN: then as before) */
        int n = (int)write(c->fd, c->req, c->reqlen);
        if (n > 0) {
            record(hist_hs, now() - c->t0);
            c->sent = n;
            c->state = n >= c->reqlen ? S_READ : S_WRITE;
            set_events(c, c->state == S_READ ? EPOLLIN : EPOLLOUT);
            return;
        }
        if (errno != EAGAIN && errno != ENOTCONN) {
            fail(c, E_CONNECT, strerror(errno));
            return;
        }
    }
    set_events(c, EPOLLOUT);
}

static void after_handshake(struct conn *c) {
    record(hist_hs, now() - c->t0);
    if (c->ssl && SSL_session_reused(c->ssl)) resumed++;
    if (request) {
        c->state = S_WRITE;
        step(c);
    } else if (c->ssl) {
        done(c);
    } else {
        shutdown(c->fd, SHUT_WR);
        c->state = S_DRAIN;
        set_events(c, EPOLLIN);
    }
}

/* whether `until` is in what was read so far (keeping only a tail across reads) */
static int seen(struct conn *c, const char *buf, int n) {
    int ulen = (int)strlen(until);
    if (c->headlen + n > HEAD_MAX) {
        int keep = c->headlen < ulen ? c->headlen : ulen;
        memmove(c->head, c->head + c->headlen - keep, keep);
        c->headlen = keep;
        if (n > HEAD_MAX - keep) {
            buf += n - (HEAD_MAX - keep);
            n = HEAD_MAX - keep;
        }
    }
    memcpy(c->head + c->headlen, buf, n);
    c->headlen += n;
    return memmem(c->head, c->headlen, until, ulen) != NULL;
}

static void step(struct conn *c) {
    char buf[65536];
    for (;;) {
        switch (c->state) {
        case S_CONNECT: {
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err) {
                fail(c, E_CONNECT, strerror(err));
                return;
            }
            if (mode == M_PLAIN) {
                after_handshake(c);
                return;
            }
            c->ssl = SSL_new(ctx);
            SSL_set_fd(c->ssl, c->fd);
            SSL_set_connect_state(c->ssl);
            SSL_set_app_data(c->ssl, c);
            if (sni) SSL_set_tlsext_host_name(c->ssl, sni);
            if (resume && c->sess) SSL_set_session(c->ssl, c->sess);
            c->state = S_HS;
            continue;
        }
        case S_HS: {
            int r = SSL_do_handshake(c->ssl);
            if (r == 1) {
                after_handshake(c);
                return;
            }
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ) {
                set_events(c, EPOLLIN);
                return;
            }
            if (e == SSL_ERROR_WANT_WRITE) {
                set_events(c, EPOLLOUT);
                return;
            }
            fail(c, E_HANDSHAKE, e == SSL_ERROR_SYSCALL ? "closed or reset" : "refused");
            return;
        }
        case S_WRITE: {
            int n;
            if (c->ssl) {
                n = SSL_write(c->ssl, c->req + c->sent, c->reqlen - c->sent);
                if (n <= 0) {
                    int e = SSL_get_error(c->ssl, n);
                    if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
                        set_events(c, e == SSL_ERROR_WANT_WRITE ? EPOLLOUT : EPOLLIN);
                        return;
                    }
                    fail(c, E_WRITE, "SSL_write");
                    return;
                }
            } else {
                n = (int)write(c->fd, c->req + c->sent, c->reqlen - c->sent);
                if (n < 0) {
                    if (errno == EAGAIN) {
                        set_events(c, EPOLLOUT);
                        return;
                    }
                    fail(c, E_WRITE, strerror(errno));
                    return;
                }
            }
            c->sent += n;
            if (c->sent >= c->reqlen) c->state = S_READ;
            continue;
        }
        case S_READ:
        case S_DRAIN: {
            int n;
            if (c->ssl) {
                n = SSL_read(c->ssl, buf, sizeof buf);
                if (n <= 0) {
                    int e = SSL_get_error(c->ssl, n);
                    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                        set_events(c, e == SSL_ERROR_WANT_WRITE ? EPOLLOUT : EPOLLIN);
                        return;
                    }
                    if (e == SSL_ERROR_ZERO_RETURN) n = 0;
                    else {
                        fail(c, E_READ, "SSL_read");
                        return;
                    }
                }
            } else {
                n = (int)read(c->fd, buf, sizeof buf);
                if (n < 0) {
                    if (errno == EAGAIN) {
                        set_events(c, EPOLLIN);
                        return;
                    }
                    fail(c, E_READ, strerror(errno));
                    return;
                }
            }
            if (c->state == S_DRAIN) {
                if (n == 0) {
                    done(c);
                    return;
                }
                continue;
            }
            if (n == 0) {
                fail(c, E_CLOSED, "closed before the response");
                return;
            }
            if (seen(c, buf, n)) {
                done(c);
                return;
            }
            continue;
        }
        default:
            return;
        }
    }
}

static void usage(void) {
    fprintf(stderr,
            "usage: connload --port P [--host A] [--mode plain|tls1.2|tls1.3] [--resume]\n"
            "  [--concurrency C] [--duration S] [--conns N] [--request R] [--until U]\n"
            "  [--channels K] [--src A,B,...] [--sni NAME] [--timeout S] [--max-errors N]\n"
            "  [--hold]\n");
    exit(2);
}

/* C-style escapes in --request / --until: \r \n \t \\ */
static char *unescape(const char *s) {
    char *out = malloc(strlen(s) + 1), *o = out;
    for (; *s; s++) {
        if (*s == '\\' && s[1]) {
            s++;
            *o++ = *s == 'r' ? '\r' : *s == 'n' ? '\n' : *s == 't' ? '\t' : *s;
        } else {
            *o++ = *s;
        }
    }
    *o = 0;
    return out;
}

int main(int argc, char **argv) {
    static struct option opts[] = {
        {"host", 1, 0, 'h'},     {"port", 1, 0, 'p'},    {"mode", 1, 0, 'm'},
        {"resume", 0, 0, 'R'},   {"concurrency", 1, 0, 'c'}, {"duration", 1, 0, 'd'},
        {"conns", 1, 0, 'n'},    {"request", 1, 0, 'r'}, {"until", 1, 0, 'u'},
        {"channels", 1, 0, 'k'}, {"src", 1, 0, 's'},     {"sni", 1, 0, 'S'},
        {"timeout", 1, 0, 't'},  {"max-errors", 1, 0, 'e'}, {"hold", 0, 0, 'H'},
        {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'h': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'm':
            if (!strcmp(optarg, "plain")) mode = M_PLAIN;
            else if (!strcmp(optarg, "tls1.2")) mode = M_TLS12;
            else if (!strcmp(optarg, "tls1.3")) mode = M_TLS13;
            else usage();
            break;
        case 'R': resume = 1; break;
        case 'c': concurrency = atoi(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'n': max_conns = atol(optarg); break;
        case 'r': request = unescape(optarg); break;
        case 'u': until = unescape(optarg); break;
        case 'k': channels = atoi(optarg); break;
        case 'S': sni = optarg; break;
        case 't': timeout_s = atof(optarg); break;
        case 'e': max_errors = atol(optarg); break;
        case 'H': hold = 1; break;
        case 's': {
            char *list = strdup(optarg), *save = NULL;
            for (char *a = strtok_r(list, ",", &save); a && nsrc < 256; a = strtok_r(NULL, ",", &save)) {
                if (inet_pton(AF_INET, a, &srcs[nsrc]) != 1) {
                    fprintf(stderr, "connload: bad --src address %s\n", a);
                    return 2;
                }
                nsrc++;
            }
            break;
        }
        default: usage();
        }
    }
    if (port <= 0 || concurrency <= 0 || channels <= 0 || duration <= 0 || !*until) usage();
    if (hold && (mode != M_PLAIN || !request || max_conns <= 0)) {
        fprintf(stderr, "connload: --hold needs --mode plain, --request and --conns\n");
        return 2;
    }
    dest.sin_family = AF_INET;
    dest.sin_port = htons(port);
    if (inet_pton(AF_INET, host, &dest.sin_addr) != 1) {
        fprintf(stderr, "connload: --host must be an IPv4 address\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (mode != M_PLAIN) {
        ctx = SSL_CTX_new(TLS_client_method());
        int v = mode == M_TLS12 ? TLS1_2_VERSION : TLS1_3_VERSION;
        SSL_CTX_set_min_proto_version(ctx, v);
        SSL_CTX_set_max_proto_version(ctx, v);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        static const unsigned char alpn[] = "\x08http/1.1";
        SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn - 1);
        if (resume) {
            SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
            SSL_CTX_sess_set_new_cb(ctx, new_session);
        } else {
            SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
            SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
        }
    }
    hist_hs = calloc(NBUCKETS, sizeof *hist_hs);
    hist_total = calloc(NBUCKETS, sizeof *hist_total);
    conns = calloc(concurrency, sizeof *conns);
    ep = epoll_create1(EPOLL_CLOEXEC);
    for (int i = 0; i < concurrency; i++) conns[i].fd = -1;
    if (hold) {
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
            rl.rlim_cur = rl.rlim_max;
            setrlimit(RLIMIT_NOFILE, &rl);
        }
        held_fds = calloc(max_conns, sizeof *held_fds);
        held_at = calloc(max_conns, sizeof *held_at);
        char go;
        if (read(0, &go, 1) < 0) return 1; /* the start signal (a byte, or EOF) */
    }

    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    double t_start = now(), last_sweep = t_start;
    deadline = t_start + duration;
    struct epoll_event evs[512];
    for (;;) {
        double t = now();
        if (t >= deadline || (max_conns && completed >= max_conns)) break;
        if (max_errors) {
            long errs = 0;
            for (int k = 0; k < E_KINDS; k++) errs += errors[k];
            if (errs >= max_errors) break;
        }
        for (int i = 0; i < concurrency; i++) {
            if (conns[i].state == S_FREE && (!max_conns || started < max_conns)) start(&conns[i]);
        }
        int n = epoll_wait(ep, evs, 512, 20);
        for (int i = 0; i < n; i++) {
            struct conn *c = &conns[evs[i].data.u32];
            if (c->state != S_FREE) step(c);
        }
        t = now();
        if (t - last_sweep > 0.1) {
            last_sweep = t;
            for (int i = 0; i < concurrency; i++) {
                if (conns[i].state != S_FREE && t - conns[i].t0 > timeout_s)
                    fail(&conns[i], E_TIMEOUT, "no answer within --timeout");
            }
        }
        if (hold && nheld >= max_conns) break;
        if (max_conns && started >= max_conns) {
            int busy = 0;
            for (int i = 0; i < concurrency; i++) busy |= conns[i].state != S_FREE;
            if (!busy) break;
        }
    }
    double wall = now() - t_start;
    if (wall > duration) wall = duration;
    getrusage(RUSAGE_SELF, &ru1);
    stopping = 1;
    long in_flight = 0;
    for (int i = 0; i < concurrency; i++) {
        if (conns[i].state != S_FREE) {
            in_flight++;
            finish(&conns[i]);
        }
    }

    printf("{\"mode\": \"%s\", \"resume\": %s, \"concurrency\": %d, \"started\": %ld, "
           "\"completed\": %ld, \"in_flight_at_end\": %ld, \"resumed\": %ld, \"wall_s\": %.6f, "
           "\"cpu_user_s\": %.6f, \"cpu_sys_s\": %.6f, \"bucket_us\": %d, \"errors\": {",
           mode == M_PLAIN ? "plain" : mode == M_TLS12 ? "tls1.2" : "tls1.3",
           resume ? "true" : "false", concurrency, started, completed, in_flight, resumed, wall,
           (ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) + (ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6,
           (ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) + (ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6,
           BUCKET_US);
    for (int k = 0; k < E_KINDS; k++) printf("%s\"%s\": %ld", k ? ", " : "", E_NAMES[k], errors[k]);
    printf("}, \"first_error\": {");
    int first = 1;
    for (int k = 0; k < E_KINDS; k++) {
        if (!first_error[k][0]) continue;
        printf("%s\"%s\": \"", first ? "" : ", ", E_NAMES[k]);
        for (char *p = first_error[k]; *p; p++) {
            if (*p == '"' || *p == '\\') putchar('\\');
            putchar((unsigned char)*p >= 32 ? *p : ' ');
        }
        putchar('"');
        first = 0;
    }
    printf("}");
    if (hold) {
        printf(", \"held\": %ld, \"held_at\": [", nheld);
        for (long i = 0; i < nheld; i++) printf("%s%.6f", i ? ", " : "", held_at[i]);
        printf("]");
    }
    uint32_t *hists[2] = {hist_hs, hist_total};
    const char *names[2] = {"handshake", "total"};
    for (int h = 0; h < 2; h++) {
        printf(", \"%s_hist\": [", names[h]);
        first = 1;
        for (long b = 0; b < NBUCKETS; b++) {
            if (!hists[h][b]) continue;
            printf("%s[%ld, %u]", first ? "" : ", ", b, hists[h][b]);
            first = 0;
        }
        printf("]");
    }
    printf("}\n");
    if (hold) { /* every held connection stays open until stdin ends */
        fflush(stdout);
        char b[64];
        while (read(0, b, sizeof b) > 0) {
        }
        for (long i = 0; i < nheld; i++) close(held_fds[i]);
    }
    return 0;
}
