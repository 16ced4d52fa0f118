/* Echo load generator in C: one thread, epoll, non-blocking sockets.

   Why C: the figures must measure the server. The Python load generator (loadgen.py) spends
   about as much CPU per round trip as the fastest server it loads, so a bare server's figure was
   partly the client's. This one spends a small fraction of that. Built by the bench with the
   machine's `cc` into bench/.build/ (harness/cbuild.py); the bench falls back to loadgen.py
   when there is no compiler, and says so in the report.

   Modes (every echoed byte is checked against what was sent):
     pingpong  each connection sends one SIZE-byte line and waits for its whole echo
     pipeline  each connection sends DEPTH lines in one write and waits for all of them
     flood     one connection sends SIZE-byte blocks of "\n" as fast as the server takes them,
               reading and discarding the replies, for WARMUP+SECONDS (bystander benchmark)

   Output: one JSON object on stdout with lines/s, MiB/s, and the CPU share of this process and
   of the server (SERVER_PID plus its live children, from /proc) over the counted window.

     loadgen MODE PORT CONNS SIZE DEPTH WARMUP SECONDS SERVER_PID
*/
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct conn {
    int fd;
    size_t sent;      /* bytes of the current burst written so far */
    size_t received;  /* bytes of the current burst's echo read so far */
};

static char *burst;       /* what one connection sends per turn: DEPTH lines of SIZE bytes */
static size_t burst_len;
static char *scratch;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double self_sys(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static double self_cpu(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + self_sys();
}

/* utime+stime of pid and, recursively, of its live children (the supervisor's workers). */
static double proc_cpu(int pid) {
    char path[96], buf[4096];
    double total = 0;
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (p) {
        unsigned long utime = 0, stime = 0;
        /* after ")": state(3) ... utime is field 14, stime 15 (1-based, counting pid as 1) */
        if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime,
                   &stime) == 2)
            total += (double)(utime + stime) / sysconf(_SC_CLK_TCK);
    }
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", pid, pid);
    f = fopen(path, "r");
    if (f) {
        int kid;
        while (fscanf(f, "%d", &kid) == 1) total += proc_cpu(kid);
        fclose(f);
    }
    return total;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static int dial(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) die("fcntl");
    return fd;
}

/* Write what is left of the burst; returns -1 on a broken connection. */
static int push(struct conn *c) {
    while (c->sent < burst_len) {
        ssize_t n = write(c->fd, burst + c->sent, burst_len - c->sent);
        if (n < 0) return errno == EAGAIN ? 0 : -1;
        c->sent += (size_t)n;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: loadgen pingpong|pipeline|flood PORT CONNS SIZE DEPTH WARMUP "
                        "SECONDS SERVER_PID\n");
        return 2;
    }
    const char *mode = argv[1];
    int port = atoi(argv[2]), nconns = atoi(argv[3]);
    size_t size = (size_t)atol(argv[4]), depth = (size_t)atol(argv[5]);
    double warmup = atof(argv[6]), seconds = atof(argv[7]);
    int server_pid = atoi(argv[8]);
    int flood = strcmp(mode, "flood") == 0;
    if (strcmp(mode, "pingpong") == 0) depth = 1;
    if (flood) nconns = 1;
    if (size < 1 || depth < 1 || nconns < 1) return 2;

    burst_len = size * depth;
    burst = malloc(burst_len);
    scratch = malloc(burst_len > 65536 ? burst_len : 65536);
    if (flood) {
        memset(burst, '\n', burst_len);
    } else {
        for (size_t i = 0; i < depth; i++) {
            memset(burst + i * size, 'x', size - 1);
            burst[i * size + size - 1] = '\n';
        }
    }

    int ep = epoll_create1(0);
    struct conn *conns = calloc((size_t)nconns, sizeof *conns);
    for (int i = 0; i < nconns; i++) {
        conns[i].fd = dial(port);
        struct epoll_event ev = {.events = EPOLLIN | (flood ? EPOLLOUT : 0), .data.u32 = i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev) < 0) die("epoll_ctl");
        if (!flood && push(&conns[i]) < 0) die("write");
    }

    double start = now(), counted_from = start + warmup, end = counted_from + seconds;
    double c0 = 0, s0 = 0, k0 = 0;
    int counting = 0;
    unsigned long long lines = 0, received_bytes = 0;
    struct epoll_event events[256];
    for (;;) {
        double t = now();
        if (!counting && t >= counted_from) {
            counting = 1;
            lines = 0;
            received_bytes = 0;
            c0 = self_cpu();
            k0 = self_sys();
            s0 = server_pid ? proc_cpu(server_pid) : 0;
            counted_from = t;
        }
        if (t >= end) break;
        int n = epoll_wait(ep, events, 256, 50);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int k = 0; k < n; k++) {
            struct conn *c = &conns[events[k].data.u32];
            if (flood) {
                if (events[k].events & EPOLLOUT) {
                    ssize_t w = write(c->fd, burst, burst_len);
                    if (w < 0 && errno != EAGAIN) die("flood write");
                }
                if (events[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                    ssize_t r = read(c->fd, scratch, 65536);
                    if (r == 0 || (r < 0 && errno != EAGAIN)) {
                        fprintf(stderr, "loadgen: the server closed the flood connection\n");
                        return 1;
                    }
                    if (r > 0) received_bytes += (size_t)r;
                }
                continue;
            }
            if (events[k].events & EPOLLOUT) {
                if (push(c) < 0) die("write");
                if (c->sent == burst_len) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = events[k].data.u32};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            }
            if (!(events[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
            for (;;) {
                ssize_t r = read(c->fd, scratch, burst_len - c->received);
                if (r < 0 && errno == EAGAIN) break;
                if (r <= 0) {
                    fprintf(stderr, "loadgen: the server closed a connection mid-run\n");
                    return 1;
                }
                if (memcmp(scratch, burst + c->received, (size_t)r) != 0) {
                    fprintf(stderr, "loadgen: bad echo at byte %zu\n", c->received);
                    return 1;
                }
                c->received += (size_t)r;
                if (c->received < burst_len) continue;
                lines += depth;
                c->received = 0;
                c->sent = 0;
                if (push(c) < 0) die("write");
                if (c->sent < burst_len) {  /* a pipelined burst may not fit the socket buffer */
                    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT,
                                             .data.u32 = events[k].data.u32};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
                break;
            }
        }
    }
    double wall = now() - counted_from;
    double client = (self_cpu() - c0) / wall;
    double client_sys = (self_sys() - k0) / wall;
    double server = server_pid ? (proc_cpu(server_pid) - s0) / wall : -1;
    if (flood) lines = received_bytes; /* each reply to an empty line is one "\n" byte */
    printf("{\"lines_per_s\": %.1f, \"roundtrips_per_s\": %.1f, \"mib_per_s\": %.3f, "
           "\"client_cpu\": %.4f, \"client_sys\": %.4f, \"server_cpu\": %.4f, \"seconds\": %.4f, \"client\": \"c\"}\n",
           lines / wall, lines / wall, (double)lines * size * 2 / wall / 1048576.0, client, client_sys,
           server, wall);
    return 0;
}
