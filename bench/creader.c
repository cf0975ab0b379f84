/* The bench's C reader: the body-reading half of a client worker (bench/swarm.py), for plain
 * HTTP-stream, SSE and WebSocket clients whose response head (101 for WebSocket) was read.
 * Built at run time by bench/creader.py (gcc), used through ctypes.
 *
 * A worker hands an established client over (cr_adopt: its socket, its framing: raw, chunked
 * or WebSocket, its cursor); the reader keeps the socket in an epoll of its own, which also
 * polls the worker's epoll, and the worker's loop waits in cr_run.  cr_run reads each ready
 * socket (one recv), undoes the framing, splits lines and, per line "M<seq> <time>" (or
 * "data: M<seq> <time>"), counts the delivery exactly as swarm.Worker.consume does: the
 * client's seen[seq - base] byte, the latency histogram keyed (second since t0, log bucket),
 * late and stale deliveries; a probe line "P<k>" before any message is the client's cursor and
 * marks it probed.  A socket the server closed (EOF, error, the last chunk, a WebSocket close
 * frame) is left out of the epoll and reported back, and the worker reconnects it.  Only the
 * first LINE_KEEP bytes of a line are kept (padded large messages carry their number and time
 * at the start).
 *
 * WebSocket framing is undone as swarm.deframe does: the payloads of text, binary and
 * continuation frames are the message text, a frame with FIN ends its message as a newline
 * would (the server's messages carry none), a masked server frame has its mask skipped (not
 * applied), a ping is answered with a pong of the same payload (a client frame: masked), a
 * close frame ends the stream, other frames are skipped.  Frames may be split anywhere: the
 * header is kept in the client's sz[] until it is whole, the payload is read as it comes.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define LINE_KEEP 96
#define HSEC 2048 /* histogram seconds kept (later ones go in the last) */
#define HB 512    /* log buckets per second (bucket 414 is 1,000 s) */
#define BUCKETS_PER_E 20.0
#define READ_SIZE 262144
#define MAX_EVENTS 1024
#define PY_TAG 0xFFFFFFFFu /* the worker's own epoll fd, polled among the sockets */

enum { M_RAW = 0, M_CHUNKED = 1, M_WS = 2 }; /* a client's framing (cr_adopt's mode) */

#define WS_FIN 0x80
#define PONG_HEAD 0x80 /* client_t.pong: the pong's header is not sent yet */
#define PONG_CHUNK 4096
static const unsigned char PONG_MASK[4] = {0x37, 0xfa, 0x21, 0x3d}; /* any mask will do */

/* 160 bytes a client (a worker holds ~15,000 of a 100,000-client run). */
typedef struct {
    int64_t left;        /* chunked: bytes left in the chunk; ws: payload bytes left in the frame */
    int64_t last;        /* the highest seq seen (the cursor) */
    int64_t probe;       /* the last probe seen before any message */
    int fd;
    int linelen;         /* bytes of the current line seen (only LINE_KEEP kept) */
    unsigned char mode;  /* M_RAW, M_CHUNKED or M_WS */
    unsigned char skip;  /* chunked: CR LF after a chunk still to skip */
    unsigned char szlen; /* bytes kept in sz */
    unsigned char op;    /* ws: the frame's FIN bit and opcode */
    unsigned char pong;  /* ws, a ping's payload: PONG_HEAD | pong payload bytes sent, mod 4 */
    unsigned char probed;
    unsigned char closed;
    char sz[24];         /* chunked: the chunk-size line; ws: the frame header (<= 14 bytes) */
    char line[LINE_KEEP];
} client_t;
_Static_assert(sizeof(client_t) <= 160, "keep the per-client state small");

typedef struct {
    int64_t deliveries;
    int64_t stale;
    int64_t late;
    int64_t probed; /* clients newly probed */
    double max_lat;
    double last_rx;
    int64_t rx_bytes; /* bytes read from the sockets (keep-alives, heads of frames included) */
} stats_t;

static client_t *cl;
static int ncl;
static int epfd = -1;
static unsigned char *seen; /* ncl x stride counts */
static int64_t stride;
static int64_t base;
static double t0;
static double late_s = 5.0;
static uint32_t *hist; /* HSEC x HB */
static int hist_max_sec = -1;
static uint32_t late_hist[HB];
static stats_t st;
static int *closed_q;
static int nclosed;
static char *rbuf;
static int py_added;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int cr_init(int n, double late) {
    free(cl);
    free(closed_q);
    free(hist);
    free(rbuf);
    free(seen);
    seen = NULL;
    stride = 0;
    if (epfd >= 0) close(epfd);
    py_added = 0;
    memset(&st, 0, sizeof st);
    memset(late_hist, 0, sizeof late_hist);
    hist_max_sec = -1;
    ncl = n;
    late_s = late;
    cl = calloc((size_t)n, sizeof(client_t));
    closed_q = calloc((size_t)n + 1, sizeof(int));
    hist = calloc((size_t)HSEC * HB, sizeof(uint32_t));
    rbuf = malloc(READ_SIZE);
    if (!cl || !closed_q || !hist || !rbuf) return -1;
    for (int i = 0; i < n; i++) cl[i].fd = -1;
    epfd = epoll_create1(EPOLL_CLOEXEC);
    return epfd;
}

/* A new step: seqs base+1 .. base+count, counted in seen[slot][seq - base]. */
int cr_step(int64_t b, int64_t count) {
    free(seen);
    stride = count + 2;
    seen = calloc((size_t)ncl, (size_t)stride);
    if (!seen) return -1;
    base = b;
    t0 = 0.0;
    memset(hist, 0, sizeof(uint32_t) * HSEC * HB);
    hist_max_sec = -1;
    memset(late_hist, 0, sizeof late_hist);
    memset(&st, 0, sizeof st);
    return 0;
}

void cr_t0(double t) { t0 = t; }

unsigned char *cr_seen(int slot) { return seen ? seen + (size_t)slot * stride : NULL; }
int64_t cr_stride(void) { return stride; }

static void line_done(client_t *c, double now) {
    const char *s = c->line;
    int n = c->linelen < LINE_KEEP ? c->linelen : LINE_KEEP;
    if (n >= 6 && memcmp(s, "data: ", 6) == 0) {
        s += 6;
        n -= 6;
    }
    if (n < 2) return;
    if (s[0] == 'P') {
        if (c->last) return; /* a probe after a message does not move the cursor */
        int64_t k = 0;
        int i = 1;
        for (; i < n && s[i] >= '0' && s[i] <= '9'; i++) k = k * 10 + (s[i] - '0');
        if (i == 1) return;
        c->probe = k;
        if (!c->probed) {
            c->probed = 1;
            st.probed++;
        }
        return;
    }
    if (s[0] != 'M') return;
    int64_t seq = 0;
    int i = 1;
    for (; i < n && s[i] >= '0' && s[i] <= '9'; i++) seq = seq * 10 + (s[i] - '0');
    if (i == 1 || i >= n || s[i] != ' ') return;
    i++;
    /* the send time: digits '.' digits */
    double t = 0.0, scale = 0.1;
    int j = i;
    for (; j < n && s[j] >= '0' && s[j] <= '9'; j++) t = t * 10 + (s[j] - '0');
    if (j == i || j >= n || s[j] != '.') return;
    int k = ++j;
    for (; j < n && s[j] >= '0' && s[j] <= '9'; j++, scale *= 0.1) t += (s[j] - '0') * scale;
    if (j == k) return;
    if (seq > c->last) c->last = seq;
    int64_t idx = seq - base;
    if (idx < 1) {
        st.stale++;
        return;
    }
    if (seen && idx < stride) {
        unsigned char *v = seen + (size_t)(c - cl) * stride + idx;
        if (*v < 255) (*v)++;
    }
    double lat = now - t;
    if (lat > st.max_lat) st.max_lat = lat;
    double us = lat * 1e6;
    int b = us > 1.0 ? (int)(log(us) * BUCKETS_PER_E) : 0;
    if (b >= HB) b = HB - 1;
    int sec = t0 != 0.0 ? (int)(now - t0) : 0;
    if (sec < 0) sec = 0;
    if (sec >= HSEC) sec = HSEC - 1;
    hist[(size_t)sec * HB + b]++;
    if (sec > hist_max_sec) hist_max_sec = sec;
    if (lat > late_s) {
        st.late++;
        late_hist[b]++;
    }
    st.deliveries++;
    st.last_rx = now;
}

static void payload(client_t *c, const char *p, int64_t n, double now) {
    while (n > 0) {
        const char *nl = memchr(p, '\n', (size_t)n);
        int64_t take = nl ? nl - p : n;
        if (c->linelen < LINE_KEEP) {
            int64_t room = LINE_KEEP - c->linelen;
            memcpy(c->line + c->linelen, p, (size_t)(take < room ? take : room));
        }
        c->linelen += take < (1 << 30) ? (int)take : (1 << 30);
        if (c->linelen > (1 << 30)) c->linelen = 1 << 30;
        if (!nl) return;
        line_done(c, now);
        c->linelen = 0;
        p = nl + 1;
        n -= take + 1;
    }
}

/* ``n`` bytes of a ping's payload, echoed in the pong (its first: the pong's header first, for
 * a ping of c->left bytes).  -1 when the socket took less than all (the client is closed:
 * nothing else is ever sent on it, so its send buffer is not full unless the peer is gone). */
static int pong(client_t *c, const char *p, int64_t n) {
    unsigned char buf[PONG_CHUNK + 16];
    int w = 0;
    if (c->pong & PONG_HEAD) {
        uint64_t size = (uint64_t)c->left;
        buf[w++] = 0x80 | 10; /* FIN, pong */
        if (size < 126) {
            buf[w++] = (unsigned char)(0x80 | size);
        } else if (size < 65536) {
            buf[w++] = 0x80 | 126;
            buf[w++] = (unsigned char)(size >> 8);
            buf[w++] = (unsigned char)size;
        } else {
            buf[w++] = 0x80 | 127;
            for (int i = 7; i >= 0; i--) buf[w++] = (unsigned char)(size >> (8 * i));
        }
        memcpy(buf + w, PONG_MASK, 4);
        w += 4;
        c->pong = 0;
    }
    do {
        int take = n < PONG_CHUNK ? (int)n : PONG_CHUNK;
        for (int i = 0; i < take; i++)
            buf[w + i] = (unsigned char)p[i] ^ PONG_MASK[(c->pong + i) & 3];
        c->pong = (unsigned char)((c->pong + take) & 3);
        w += take;
        p += take;
        n -= take;
        if (c->fd >= 0 && send(c->fd, buf, (size_t)w, MSG_NOSIGNAL | MSG_DONTWAIT) != w) return -1;
        w = 0;
    } while (n > 0);
    return 0;
}

/* WebSocket frames from the server, as swarm.deframe reads them: 1 at a close frame, -1 when a
 * pong could not be sent or a length is not one (the 64-bit length's top bit set). */
static int ws_body(client_t *c, const char *p, int64_t n, double now) {
    unsigned char *h = (unsigned char *)c->sz;
    while (n > 0) {
        if (c->left) {
            int64_t take = c->left < n ? c->left : n;
            int op = c->op & 0x0F;
            if (op <= 2)
                payload(c, p, take, now);
            else if (op == 9 && pong(c, p, take) < 0)
                return -1;
            p += take;
            n -= take;
            c->left -= take;
            if (!c->left && op <= 2 && (c->op & WS_FIN)) payload(c, "\n", 1, now);
            continue;
        }
        /* a frame header: kept in sz until it is whole */
        int need = 2;
        for (;;) {
            if (c->szlen >= 2) {
                int l7 = h[1] & 0x7F;
                need = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0) + (h[1] & 0x80 ? 4 : 0);
            }
            if (c->szlen >= need || n == 0) break;
            h[c->szlen++] = (unsigned char)*p++;
            n--;
        }
        if (c->szlen < need) return 0;
        c->szlen = 0;
        uint64_t size = h[1] & 0x7F;
        if (size == 126) {
            size = (uint64_t)h[2] << 8 | h[3];
        } else if (size == 127) {
            size = 0;
            for (int i = 2; i < 10; i++) size = size << 8 | h[i];
            if (size >> 63) return -1;
        }
        int op = h[0] & 0x0F;
        if (op == 8) return 1;
        c->op = h[0] & (WS_FIN | 0x0F);
        c->left = (int64_t)size;
        if (op == 9) {
            c->pong = PONG_HEAD;
            if (!size && pong(c, p, 0) < 0) return -1;
        } else if (!size && op <= 2 && (c->op & WS_FIN)) {
            payload(c, "\n", 1, now); /* an empty message, or the empty end of one */
        }
    }
    return 0;
}

/* Bytes of the response body: returns 1 when the stream ended (the last chunk, a close frame),
 * 0 when not, -1 on a framing error. */
static int body(client_t *c, const char *p, int64_t n, double now) {
    if (c->mode == M_WS) return ws_body(c, p, n, now);
    if (c->mode != M_CHUNKED) {
        payload(c, p, n, now);
        return 0;
    }
    while (n > 0) {
        if (c->left) {
            int64_t take = c->left < n ? c->left : n;
            payload(c, p, take, now);
            p += take;
            n -= take;
            c->left -= take;
            if (!c->left) c->skip = 2;
        } else if (c->skip) {
            int take = c->skip < n ? c->skip : (int)n;
            p += take;
            n -= take;
            c->skip = (unsigned char)(c->skip - take);
        } else {
            const char *nl = memchr(p, '\n', (size_t)n);
            int64_t take = nl ? nl - p + 1 : n;
            for (int64_t i = 0; i < take; i++) {
                if (c->szlen < (int)sizeof c->sz - 1) c->sz[c->szlen++] = p[i];
            }
            p += take;
            n -= take;
            if (!nl) return 0;
            c->sz[c->szlen] = 0;
            c->szlen = 0;
            char *end;
            long long size = strtoll(c->sz, &end, 16);
            if (end == c->sz || size < 0) return -1;
            if (size == 0) return 1;
            c->left = size;
        }
    }
    return 0;
}

/* Take client ``slot`` over (fd < 0: no socket, only cr_feed; tests): its framing ``mode``
 * (M_RAW, M_CHUNKED, M_WS) and cursor. */
int cr_adopt(int slot, int fd, int mode, int64_t last, int64_t probe, int probed) {
    client_t *c = &cl[slot];
    if (mode < M_RAW || mode > M_WS) return -1;
    memset(c, 0, sizeof *c);
    c->fd = fd;
    c->mode = (unsigned char)mode;
    c->last = last;
    c->probe = probe;
    c->probed = probed != 0;
    if (fd >= 0) {
        struct epoll_event ev = {.events = EPOLLIN, .data = {.u32 = (uint32_t)slot}};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) return -1;
    }
    return 0;
}

/* Give client ``slot`` back: its socket leaves the epoll (the caller closes it). */
void cr_release(int slot) {
    client_t *c = &cl[slot];
    if (c->fd >= 0 && !c->closed) epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    c->fd = -1;
}

int64_t cr_last(int slot) { return cl[slot].last; }
int64_t cr_probe(int slot) { return cl[slot].probe; }
int cr_probed(int slot) { return cl[slot].probed; }

static void close_slot(int slot) {
    client_t *c = &cl[slot];
    if (c->closed) return;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    c->closed = 1;
    closed_q[nclosed++] = slot;
}

/* Body bytes read elsewhere (the rest of the read that held the response head; tests): 1 when
 * the stream ended, -1 on a framing error or a pong not sent (the caller gives the client
 * back). */
int cr_feed(int slot, const char *p, int64_t n, double now) { return body(&cl[slot], p, n, now); }

static void read_ready(struct epoll_event *evs, int n, int *py) {
    for (int e = 0; e < n; e++) {
        if (evs[e].data.u32 == PY_TAG) {
            *py = 1;
            continue;
        }
        int slot = (int)evs[e].data.u32;
        client_t *c = &cl[slot];
        if (c->fd < 0 || c->closed) continue;
        ssize_t got = recv(c->fd, rbuf, READ_SIZE, 0);
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) continue;
        if (got <= 0) {
            close_slot(slot);
            continue;
        }
        st.rx_bytes += got;
        if (body(c, rbuf, got, now_s()) != 0) close_slot(slot);
    }
}

/* Read the sockets as they become ready, for at most ``ms`` milliseconds: return early when
 * the worker's own epoll ``pyfd`` has an event (a handshake, a command) or a socket was
 * closed.  Returns how many were closed (cr_closed lists them).  The worker's loop blocks
 * here, not in Python, so a busy worker costs no Python call per wake-up. */
int cr_run(int pyfd, int ms) {
    struct epoll_event evs[MAX_EVENTS];
    if (!py_added) {
        struct epoll_event ev = {.events = EPOLLIN, .data = {.u32 = PY_TAG}};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, pyfd, &ev) < 0) return -1;
        py_added = 1;
    }
    nclosed = 0;
    double end = now_s() + ms / 1000.0;
    for (;;) {
        int left = (int)((end - now_s()) * 1000.0);
        if (left < 0) left = 0;
        int n = epoll_wait(epfd, evs, MAX_EVENTS, left);
        int py = 0;
        if (n > 0) read_ready(evs, n, &py);
        if (py || nclosed || n <= 0 || left == 0) return nclosed;
    }
}

int cr_closed(int i) { return closed_q[i]; }

/* The counters since the last call (zeroed); the histograms stay until cr_take_hist. */
void cr_take_stats(stats_t *out) {
    *out = st;
    st.deliveries = st.stale = st.late = st.probed = 0;
    st.max_lat = 0.0;
    st.last_rx = 0.0;
    st.rx_bytes = 0;
}

/* Nonzero histogram cells as (second << 10 | bucket, count), zeroed; late buckets as
 * (-1 - bucket, count).  Returns how many were written (at most ``cap``; call again when
 * it is ``cap``). */
int cr_take_hist(int64_t *keys, int64_t *counts, int cap) {
    int w = 0;
    for (int s = 0; s <= hist_max_sec && w < cap; s++) {
        uint32_t *row = hist + (size_t)s * HB;
        for (int b = 0; b < HB && w < cap; b++) {
            if (row[b]) {
                keys[w] = ((int64_t)s << 10) | b;
                counts[w++] = row[b];
                row[b] = 0;
            }
        }
    }
    for (int b = 0; b < HB && w < cap; b++) {
        if (late_hist[b]) {
            keys[w] = -1 - b;
            counts[w++] = late_hist[b];
            late_hist[b] = 0;
        }
    }
    return w;
}
