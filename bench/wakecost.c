/* What one loopback write costs the writer when it wakes a reader that sleeps (bench/wakecost.py).
 *
 * usage: wakecost ITERATIONS GAP_US WRITER_CPU READER_CPU [busy]
 *   WRITER_CPU / READER_CPU: a CPU number to pin that side to, or -1 to leave it to the kernel.
 *   busy: a third process spins on READER_CPU under SCHED_IDLE (it yields to the reader at
 *   once), so that CPU is never idle: the wake-up of a reader whose CPU is running something.
 *
 * Two processes hold the two ends of one loopback TCP connection (TCP_NODELAY).  ITERATIONS
 * times, the writer sleeps GAP_US (so the reader is asleep in read() again, and its CPU idle
 * when nothing else runs there), writes one byte and reads the reader's one-byte answer.  The
 * figure is the writer's own CPU time inside write() (CLOCK_THREAD_CPUTIME_ID around the call:
 * the kernel's TCP path for both ends, which loopback runs inside the writer's write(), and the
 * wake-up of the reader, but not the time the writer spends preempted by the reader it woke),
 * and the wall time of the same call.  Prints one JSON object.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double ns(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static int pin(int cpu) {
    if (cpu < 0) return 0;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set);
}

static int fail(const char *what) {
    fprintf(stderr, "wakecost: %s: %s\n", what, strerror(errno));
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 5 && !(argc == 6 && strcmp(argv[5], "busy") == 0)) {
        fprintf(stderr, "usage: wakecost ITERATIONS GAP_US WRITER_CPU READER_CPU [busy]\n");
        return 2;
    }
    int busy = argc == 6;
    long n = atol(argv[1]);
    long gap = atol(argv[2]);
    int wcpu = atoi(argv[3]), rcpu = atoi(argv[4]);
    if (n < 1 || gap < 0 || (busy && rcpu < 0)) {
        fprintf(stderr, "wakecost: ITERATIONS >= 1, GAP_US >= 0, busy needs a READER_CPU\n");
        return 2;
    }
    pid_t spinner = -1;
    int one = 1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1) ||
        getsockname(l, (struct sockaddr *)&a, &al))
        return fail("listen");
    int w = socket(AF_INET, SOCK_STREAM, 0);
    if (w < 0 || connect(w, (struct sockaddr *)&a, sizeof a)) return fail("connect");
    int r = accept(l, NULL, NULL);
    if (r < 0) return fail("accept");
    close(l);
    setsockopt(w, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(r, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    pid_t child = fork();
    if (child < 0) return fail("fork");
    if (child == 0) {  /* the reader: answer every byte, until the writer closes */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(w);
        if (pin(rcpu)) _exit(3);
        char b[64];
        for (;;) {
            ssize_t k = read(r, b, sizeof b);
            if (k <= 0 || write(r, b, 1) != 1) break;
        }
        _exit(0);
    }
    close(r);
    if (busy) { /* after every step that can fail, and it dies with this process */
        spinner = fork();
        if (spinner < 0) {
            kill(child, SIGKILL);
            return fail("fork");
        }
        if (spinner == 0) {
            struct sched_param sp = {0};
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            close(w); /* (held here, the reader would never see the writer's end) */
            if (getppid() == 1 || pin(rcpu) || sched_setscheduler(0, SCHED_IDLE, &sp)) _exit(3);
            for (;;) {
            }
        }
    }
    if (pin(wcpu)) {
        kill(child, SIGKILL);
        if (spinner > 0) kill(spinner, SIGKILL);
        return fail("sched_setaffinity (writer)");
    }
    char b[64];
    double cpu = 0, wall = 0, worst = 0;
    struct timespec g = {gap / 1000000, (gap % 1000000) * 1000};
    long done = 0;
    for (long i = 0; i < n; i++) {
        if (gap) nanosleep(&g, NULL);
        double c0 = ns(CLOCK_THREAD_CPUTIME_ID), w0 = ns(CLOCK_MONOTONIC);
        ssize_t k = write(w, "x", 1);
        double w1 = ns(CLOCK_MONOTONIC), c1 = ns(CLOCK_THREAD_CPUTIME_ID);
        if (k != 1 || read(w, b, sizeof b) != 1) break;
        cpu += c1 - c0;
        wall += w1 - w0;
        if (c1 - c0 > worst) worst = c1 - c0;
        done++;
    }
    close(w);
    int status = 0;
    waitpid(child, &status, 0);
    if (spinner > 0) {
        int ss = 0;
        pid_t gone = waitpid(spinner, &ss, WNOHANG);
        kill(spinner, SIGKILL);
        waitpid(spinner, NULL, 0);
        if (gone == spinner) {
            errno = EPERM;
            return fail("the busy process (pin or SCHED_IDLE)");
        }
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 3) {
        errno = EINVAL;
        return fail("sched_setaffinity (reader)");
    }
    if (done == 0) return fail("write/read");
    printf("{\"iterations\": %ld, \"gap_us\": %ld, \"writer_cpu\": %d, \"reader_cpu\": %d, "
           "\"busy\": %s, "
           "\"cpu_us_per_write\": %.3f, \"wall_us_per_write\": %.3f, \"worst_cpu_us\": %.3f}\n",
           done, gap, wcpu, rcpu, busy ? "true" : "false", cpu / done / 1000, wall / done / 1000, worst / 1000);
    return 0;
}
