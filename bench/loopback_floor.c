/* The kernel's floor for fan-out on this machine: what a write to a loopback TCP connection
 * costs the writer, and what reading it costs the reader, with no server in between.
 * A writer makes ROUNDS passes writing one SIZE-byte buffer to each of N connections (pausing
 * GAP µs between passes); a child process reads them all through one level-triggered epoll set,
 * pausing PACE µs between rounds as roomcast-bench's subscribers do. Prints the writer's CPU
 * per write, a pass's wall time and the reader's CPU per frame read (its connection set-up
 * included; it reads each frame with one read when the passes are GAP apart).
 *
 *   cc -O2 -o /tmp/loopback_floor bench/loopback_floor.c
 *   /tmp/loopback_floor 5000 40 1000 2000 50000      # N ROUNDS SIZE PACE GAP
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double cpu_of(int who) {
    struct rusage r;
    getrusage(who, &r);
    return r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 + r.ru_stime.tv_sec + r.ru_stime.tv_usec / 1e6;
}

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s N ROUNDS SIZE PACE_US GAP_US\n", argv[0]);
        return 2;
    }
    int n = atoi(argv[1]), rounds = atoi(argv[2]), size = atoi(argv[3]);
    int pace = atoi(argv[4]), gap = atoi(argv[5]), one = 1;
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t alen = sizeof a;
    if (bind(ls, (void *)&a, sizeof a) || listen(ls, 8192) || getsockname(ls, (void *)&a, &alen)) {
        perror("listen");
        return 1;
    }
    int ready[2];
    if (pipe(ready)) return 1;
    pid_t pid = fork();
    if (pid == 0) {
        int ep = epoll_create1(0), *fds = malloc(n * sizeof(int));
        for (int i = 0; i < n; i++) {
            fds[i] = socket(AF_INET, SOCK_STREAM, 0);
            if (fds[i] < 0 || connect(fds[i], (void *)&a, sizeof a)) {
                perror("connect");
                exit(1);
            }
            fcntl(fds[i], F_SETFL, O_NONBLOCK);
            struct epoll_event e = {.events = EPOLLIN, .data.u32 = i};
            epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &e);
        }
        if (write(ready[1], "x", 1) != 1) exit(1);
        long want = (long)n * rounds * size, got = 0;
        static struct epoll_event ev[1024];
        static char buf[65536];
        int idle = 0;
        while (got < want) {
            int k = epoll_wait(ep, ev, 1024, 1000);
            if (k <= 0 && ++idle > 10) exit(1); /* the writer is gone */
            if (k > 0) idle = 0;
            for (int j = 0; j < k; j++) {
                long r = read(fds[ev[j].data.u32], buf, sizeof buf);
                if (r > 0) got += r;
            }
            if (pace && k < 1024) usleep(pace);
        }
        exit(0);
    }
    int *ss = malloc(n * sizeof(int));
    for (int i = 0; i < n; i++) {
        ss[i] = accept(ls, 0, 0);
        if (ss[i] < 0) {
            perror("accept");
            return 1;
        }
        setsockopt(ss[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    char c;
    if (read(ready[0], &c, 1) != 1) return 1;
    char *data = malloc(size);
    memset(data, 'x', size);
    double cpu0 = cpu_of(RUSAGE_SELF), pass_ms = 0;
    for (int r = 0; r < rounds; r++) {
        double t0 = now_ms();
        for (int i = 0; i < n; i++)
            if (send(ss[i], data, size, 0) != size) fprintf(stderr, "short write\n");
        pass_ms += now_ms() - t0;
        if (gap) usleep(gap);
    }
    double cpu1 = cpu_of(RUSAGE_SELF);
    waitpid(pid, 0, 0);
    double writes = (double)n * rounds;
    printf("N=%d size=%d pace=%dus: writer %.2f us/write, pass %.1f ms, reader %.2f us/frame\n",
           n, size, pace, (cpu1 - cpu0) / writes * 1e6, pass_ms / rounds,
           cpu_of(RUSAGE_CHILDREN) / writes * 1e6);
    return 0;
}
