/* The client of the network benchmarks (bench_net.py builds it with cc; never committed as a
 * binary). One program for every loop, in its own process, so only the server's loop varies
 * between measurements and the client never competes for the server's GIL.
 *
 *     echo_client tcp HOST PORT SIZE CONNS WARMUP N
 *     echo_client unix PATH SIZE CONNS WARMUP N
 *     echo_client sink HOST PORT WARMUP_BYTES BYTES
 *     echo_client source HOST PORT WARMUP_BYTES BYTES
 *     echo_client udp HOST PORT SIZE WINDOW WARMUP N
 *     echo_client churn tcp HOST PORT | churn unix PATH, then SIZE BATCH WARMUP N
 *
 * Echo (tcp, unix): two phases, each on its own CONNS fresh connections: a warm-up of WARMUP
 * round trips, then the timed phase of N round trips. A round trip sends SIZE bytes on a
 * connection and reads exactly SIZE bytes back, checking they are the bytes sent; each
 * connection has one message in flight. The connections of a phase are all open before it
 * starts and are closed after it (the server sees the timed phase as connections
 * CONNS+1 .. 2*CONNS). Prints the seconds the timed round trips took (CLOCK_MONOTONIC,
 * connects and closes excluded).
 *   CONNS == 1: blocking socket, send() then recv() until the echo is complete.
 *   CONNS > 1: non-blocking sockets driven by one epoll instance.
 *
 * Bulk (sink, source): one connection for the warm-up, then one for the timed phase. sink:
 * sends the count (8 bytes, little-endian) of bytes it wants, then reads and discards that
 * many; the seconds run from sending the count to the last byte. source: sends the bytes,
 * shuts down its side and waits for the server's answer to the EOF (one byte, or its close),
 * so every byte was consumed; the seconds run from the first send to that answer. Prints
 * the seconds.
 *
 * UDP: sends WARMUP datagrams of SIZE bytes, then a 1-byte "S" (retried until echoed; the
 * server starts its CPU clock), then N datagrams, then a 1-byte "E" (the server stops). The
 * datagrams go in windows of WINDOW: send them all, then collect their echoes until all came
 * back or WINDOW_TIMEOUT passed; only echoes of the current window count (lost ones are
 * lost). Prints "SECONDS ECHOED" for the timed datagrams.
 *
 * Churn: connections, not round trips. WARMUP connections, then the timed N, opened BATCH at
 * a time: connect all of a batch, send SIZE bytes on each, read each echo back (checked),
 * close them all, next batch. Prints the seconds the timed connections took (the server sees
 * them as connections WARMUP+1 .. WARMUP+N).
 *
 * On any error prints "error: ..." to stderr and exits 1. Never waits for longer than TIMEOUT
 * seconds for the server, and ends itself after TOTAL_TIMEOUT seconds in all.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define TIMEOUT 20         /* seconds without progress before giving up */
#define TOTAL_TIMEOUT 110  /* seconds before SIGALRM ends the process, whatever it does */
#define BULK_BUF (256 * 1024)  /* bytes per send/recv call of the bulk modes */
#define WINDOW_TIMEOUT 100 /* ms to wait for a UDP window's echoes before counting them lost */

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static struct sockaddr_storage addr;
static socklen_t addr_len;
static int family;
static size_t size;

static void resolve_inet(const char *host, const char *port, int socktype) {
    struct addrinfo hints = {.ai_socktype = socktype, .ai_flags = AI_NUMERICHOST};
    struct addrinfo *res;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc) die("getaddrinfo %s %s: %s", host, port, gai_strerror(rc));
    memcpy(&addr, res->ai_addr, res->ai_addrlen);
    addr_len = res->ai_addrlen;
    family = res->ai_family;
    freeaddrinfo(res);
}

static void resolve(int argc, char **argv, int *next) {
    if (argc > 2 && strcmp(argv[1], "unix") == 0) {
        struct sockaddr_un *un = (struct sockaddr_un *)&addr;
        if (strlen(argv[2]) >= sizeof un->sun_path) die("socket path too long");
        un->sun_family = AF_UNIX;
        strcpy(un->sun_path, argv[2]);
        addr_len = sizeof *un;
        family = AF_UNIX;
        *next = 3;
    } else if (argc > 3 && strcmp(argv[1], "tcp") == 0) {
        resolve_inet(argv[2], argv[3], SOCK_STREAM);
        *next = 4;
    } else {
        die("usage: echo_client tcp HOST PORT | unix PATH, then SIZE CONNS WARMUP N");
    }
}

/* 1000 connections need more fds than a default soft limit of 1024. */
static void raise_fd_limit(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int open_connection(void) {
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket: %s", strerror(errno));
    struct timeval tv = {.tv_sec = TIMEOUT};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (family != AF_UNIX) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    if (connect(fd, (struct sockaddr *)&addr, addr_len) < 0) die("connect: %s", strerror(errno));
    return fd;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Every message starts with its sequence number, so a stale or repeated echo is caught. */
static void stamp(unsigned char *msg, uint64_t seq) { memcpy(msg, &seq, sizeof seq); }

static void check(const unsigned char *sent, const unsigned char *got) {
    if (memcmp(sent, got, size) != 0) die("the echo differs from the message sent");
}

/* ------------------------------------------------------------------ one blocking connection */

static double run_single(long rounds, unsigned char *msg, unsigned char *buf) {
    int fd = open_connection();
    double start = now();
    for (long i = 0; i < rounds; i++) {
        stamp(msg, (uint64_t)i);
        for (size_t sent = 0; sent < size;) {
            ssize_t n = send(fd, msg + sent, size - sent, MSG_NOSIGNAL);
            if (n < 0) die("send: %s", errno == EAGAIN ? "timed out" : strerror(errno));
            sent += (size_t)n;
        }
        for (size_t got = 0; got < size;) {
            ssize_t n = recv(fd, buf + got, size - got, 0);
            if (n == 0) die("the server closed the connection");
            if (n < 0) die("recv: %s", errno == EAGAIN ? "timed out" : strerror(errno));
            got += (size_t)n;
        }
        check(msg, buf);
    }
    double elapsed = now() - start;
    close(fd);
    return elapsed;
}

/* ------------------------------------------------------ churn: connect, echo once, close */

static void run_churn_phase(long n, long batch, unsigned char *msg, unsigned char *buf) {
    int *fds = malloc((size_t)batch * sizeof *fds);
    if (!fds) die("out of memory");
    for (long done = 0; done < n; done += batch) {
        long b = n - done < batch ? n - done : batch;
        for (long i = 0; i < b; i++) fds[i] = open_connection();
        for (long i = 0; i < b; i++) {
            stamp(msg, (uint64_t)(done + i));
            if (send(fds[i], msg, size, MSG_NOSIGNAL) != (ssize_t)size)
                die("send: %s", strerror(errno));
        }
        for (long i = 0; i < b; i++) {
            for (size_t got = 0; got < size;) {
                ssize_t r = recv(fds[i], buf + got, size - got, 0);
                if (r == 0) die("the server closed a connection");
                if (r < 0) die("recv: %s", errno == EAGAIN ? "timed out" : strerror(errno));
                got += (size_t)r;
            }
            stamp(msg, (uint64_t)(done + i));
            check(msg, buf);
        }
        for (long i = 0; i < b; i++) close(fds[i]);
    }
    free(fds);
}

static int run_churn(int argc, char **argv) {
    int next;
    resolve(argc - 1, argv + 1, &next);
    next += 1;
    if (argc != next + 4) die("usage: echo_client churn tcp HOST PORT SIZE BATCH WARMUP N");
    long s = atol(argv[next]), batch = atol(argv[next + 1]);
    long warmup = atol(argv[next + 2]), n = atol(argv[next + 3]);
    if (s < 8 || s > 65000 || batch < 1 || batch > 1000 || warmup < 0 || n < 1)
        die("bad SIZE/BATCH/WARMUP/N");
    size = (size_t)s;
    unsigned char *msg = malloc(size), *buf = malloc(size);
    if (!msg || !buf) die("out of memory");
    for (size_t i = 0; i < size; i++) msg[i] = (unsigned char)(i * 131 + 7);
    if (batch > 100) raise_fd_limit();
    run_churn_phase(warmup, batch, msg, buf);
    double start = now();
    run_churn_phase(n, batch, msg, buf);
    printf("%.9f\n", now() - start);
    return 0;
}

/* --------------------------------------------------- many non-blocking connections, epoll */

struct conn {
    int fd;
    size_t sent, got;  /* of the message in flight */
    uint64_t seq;
    unsigned char *msg, *buf;
};

/* Send what the socket takes; 1 when the whole message is out. */
static int pump_send(struct conn *c) {
    while (c->sent < size) {
        ssize_t n = send(c->fd, c->msg + c->sent, size - c->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) return 0;
            die("send: %s", strerror(errno));
        }
        c->sent += (size_t)n;
    }
    return 1;
}

static double run_many(int conns, long rounds, unsigned char *pattern) {
    struct conn *cs = calloc((size_t)conns, sizeof *cs);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (!cs || ep < 0) die("setup: %s", strerror(errno));
    for (int i = 0; i < conns; i++) {
        cs[i].fd = open_connection();
        cs[i].msg = malloc(size);
        cs[i].buf = malloc(size);
        if (!cs[i].msg || !cs[i].buf) die("out of memory");
        memcpy(cs[i].msg, pattern, size);
        if (fcntl(cs[i].fd, F_SETFL, fcntl(cs[i].fd, F_GETFL) | O_NONBLOCK) < 0)
            die("fcntl: %s", strerror(errno));
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
    }
    long issued = 0, done = 0;
    double start = now();
    /* One message in flight per connection, as long as there are round trips left to issue. */
    for (int i = 0; i < conns && issued < rounds; i++, issued++) {
        stamp(cs[i].msg, cs[i].seq);
        if (!pump_send(&cs[i])) {
            struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)i};
            epoll_ctl(ep, EPOLL_CTL_MOD, cs[i].fd, &ev);
        }
    }
    struct epoll_event events[256];
    while (done < rounds) {
        int n = epoll_wait(ep, events, 256, TIMEOUT * 1000);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait: %s", strerror(errno));
        }
        if (n == 0) die("no progress for %d s (%ld of %ld round trips done)", TIMEOUT, done, rounds);
        for (int e = 0; e < n; e++) {
            struct conn *c = &cs[events[e].data.u32];
            if (c->sent < size && pump_send(c)) {
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = events[e].data.u32};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            }
            if (!(events[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
            for (;;) {
                ssize_t r = recv(c->fd, c->buf + c->got, size - c->got, 0);
                if (r == 0) die("the server closed a connection");
                if (r < 0) {
                    if (errno == EAGAIN) break;
                    die("recv: %s", strerror(errno));
                }
                c->got += (size_t)r;
                if (c->got < size) continue;
                check(c->msg, c->buf);
                done++;
                c->got = c->sent = 0;
                if (issued < rounds) {
                    issued++;
                    stamp(c->msg, ++c->seq);
                    if (!pump_send(c)) {
                        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT,
                                                 .data.u32 = events[e].data.u32};
                        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                    }
                }
                break;
            }
        }
    }
    double elapsed = now() - start;
    for (int i = 0; i < conns; i++) {
        close(cs[i].fd);
        free(cs[i].msg);
        free(cs[i].buf);
    }
    close(ep);
    free(cs);
    return elapsed;
}

/* ------------------------------------------------------------------------- bulk transfer */

static void send_all(int fd, const unsigned char *data, size_t len) {
    for (size_t sent = 0; sent < len;) {
        ssize_t n = send(fd, data + sent, len - sent, MSG_NOSIGNAL);
        if (n < 0) die("send: %s", errno == EAGAIN ? "timed out" : strerror(errno));
        sent += (size_t)n;
    }
}

/* The server sends `bytes`; read and discard them. */
static double sink(uint64_t bytes, unsigned char *buf) {
    int fd = open_connection();
    double start = now();
    unsigned char count[8];
    memcpy(count, &bytes, sizeof count); /* little-endian on every platform this runs on */
    send_all(fd, count, sizeof count);
    for (uint64_t got = 0; got < bytes;) {
        size_t want = bytes - got < BULK_BUF ? (size_t)(bytes - got) : BULK_BUF;
        ssize_t n = recv(fd, buf, want, 0);
        if (n == 0) die("the server closed after %llu of %llu bytes", (unsigned long long)got,
                        (unsigned long long)bytes);
        if (n < 0) die("recv: %s", errno == EAGAIN ? "timed out" : strerror(errno));
        got += (uint64_t)n;
    }
    double elapsed = now() - start;
    close(fd);
    return elapsed;
}

/* Send `bytes` to the server, then wait for its answer to the EOF. */
static double source(uint64_t bytes, unsigned char *buf) {
    int fd = open_connection();
    double start = now();
    for (uint64_t sent = 0; sent < bytes;) {
        size_t len = bytes - sent < BULK_BUF ? (size_t)(bytes - sent) : BULK_BUF;
        send_all(fd, buf, len);
        sent += len;
    }
    shutdown(fd, SHUT_WR);
    if (recv(fd, buf, 1, 0) < 0) die("recv: %s", errno == EAGAIN ? "timed out" : strerror(errno));
    double elapsed = now() - start;
    close(fd);
    return elapsed;
}

static int run_bulk(int argc, char **argv) {
    if (argc != 6) die("usage: echo_client sink|source HOST PORT WARMUP_BYTES BYTES");
    resolve_inet(argv[2], argv[3], SOCK_STREAM);
    long long warmup = atoll(argv[4]), bytes = atoll(argv[5]);
    if (warmup < 1 || bytes < 1) die("bad WARMUP_BYTES/BYTES: %s %s", argv[4], argv[5]);
    unsigned char *buf = malloc(BULK_BUF);
    if (!buf) die("out of memory");
    memset(buf, 'x', BULK_BUF);
    double (*phase)(uint64_t, unsigned char *) = strcmp(argv[1], "sink") == 0 ? sink : source;
    phase((uint64_t)warmup, buf);
    printf("%.9f\n", phase((uint64_t)bytes, buf));
    return 0;
}

/* --------------------------------------------------------------------------------- UDP */

static int udp_socket(void) {
    int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&addr, addr_len) < 0) die("connect: %s", strerror(errno));
    return fd;
}

/* Send a 1-byte marker until its echo comes back (or give up after `tries`); 1 if it did. */
static int udp_marker(int fd, char marker, int tries) {
    for (int i = 0; i < tries; i++) {
        if (send(fd, &marker, 1, 0) < 0) die("send: %s", strerror(errno));
        double deadline = now() + WINDOW_TIMEOUT / 1e3;
        for (double left; (left = deadline - now()) > 0;) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (poll(&p, 1, (int)(left * 1e3) + 1) <= 0) break;
            char got[2048];
            ssize_t n = recv(fd, got, sizeof got, MSG_DONTWAIT);
            if (n == 1 && got[0] == marker) return 1;
        }
    }
    return 0;
}

/* Send `count` datagrams in windows; returns how many were echoed. */
static long udp_phase(int fd, long count, long window, uint64_t *seq, unsigned char *msg) {
    long echoed = 0;
    unsigned char *seen = malloc((size_t)window);
    unsigned char *got = malloc(size + 1);
    if (!seen || !got) die("out of memory");
    for (long done = 0; done < count;) {
        size_t w = (size_t)(count - done < window ? count - done : window);
        uint64_t first = *seq;
        for (size_t i = 0; i < w; i++) {
            stamp(msg, first + (uint64_t)i);
            if (send(fd, msg, size, 0) < 0 && errno != ENOBUFS && errno != ECONNREFUSED)
                die("send: %s", strerror(errno));
        }
        memset(seen, 0, w);
        size_t back = 0;
        double deadline = now() + WINDOW_TIMEOUT / 1e3;
        for (double left; back < w && (left = deadline - now()) > 0;) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (poll(&p, 1, (int)(left * 1e3) + 1) <= 0) break;
            ssize_t n;
            while ((n = recv(fd, got, size + 1, MSG_DONTWAIT)) >= 0) {
                if ((size_t)n != size) continue; /* a late marker */
                uint64_t s;
                memcpy(&s, got, sizeof s);
                if (s < first || s >= first + (uint64_t)w || seen[s - first]) continue;
                seen[s - first] = 1;
                back++;
            }
        }
        echoed += (long)back;
        done += (long)w;
        *seq += (uint64_t)w;
    }
    free(seen);
    free(got);
    return echoed;
}

static int run_udp(int argc, char **argv) {
    if (argc != 8) die("usage: echo_client udp HOST PORT SIZE WINDOW WARMUP N");
    resolve_inet(argv[2], argv[3], SOCK_DGRAM);
    long s = atol(argv[4]), window = atol(argv[5]), warmup = atol(argv[6]), n = atol(argv[7]);
    if (s < 8 || s > 65000 || window < 1 || warmup < 0 || n < 1)
        die("bad SIZE/WINDOW/WARMUP/N: %s %s %s %s", argv[4], argv[5], argv[6], argv[7]);
    size = (size_t)s;
    unsigned char *msg = malloc(size);
    if (!msg) die("out of memory");
    memset(msg, 'u', size);
    int fd = udp_socket();
    uint64_t seq = 0;
    udp_phase(fd, warmup, window, &seq, msg);
    if (!udp_marker(fd, 'S', TIMEOUT * 10)) die("the server never echoed the start marker");
    double start = now();
    long echoed = udp_phase(fd, n, window, &seq, msg);
    double elapsed = now() - start;
    udp_marker(fd, 'E', 20); /* the server may stop before echoing it: not an error */
    if (echoed == 0) die("no datagram of %ld came back", n);
    printf("%.9f %ld\n", elapsed, echoed);
    return 0;
}

int main(int argc, char **argv) {
    alarm(TOTAL_TIMEOUT);
    if (argc > 1 && (strcmp(argv[1], "sink") == 0 || strcmp(argv[1], "source") == 0))
        return run_bulk(argc, argv);
    if (argc > 1 && strcmp(argv[1], "udp") == 0) return run_udp(argc, argv);
    if (argc > 1 && strcmp(argv[1], "churn") == 0) return run_churn(argc, argv);
    int next;
    resolve(argc, argv, &next);
    if (argc != next + 4) die("expected SIZE CONNS WARMUP N after the address");
    long s = atol(argv[next]), conns = atol(argv[next + 1]);
    long warmup = atol(argv[next + 2]), rounds = atol(argv[next + 3]);
    if (s < 8 || conns < 1 || conns > 10000 || warmup < 0 || rounds < 1)
        die("bad SIZE/CONNS/WARMUP/N: %s %s %s %s", argv[next], argv[next + 1], argv[next + 2],
            argv[next + 3]);
    size = (size_t)s;
    unsigned char *msg = malloc(size), *buf = malloc(size);
    if (!msg || !buf) die("out of memory");
    for (size_t i = 0; i < size; i++) msg[i] = (unsigned char)(i * 131 + 7);
    double elapsed;
    if (conns > 100) raise_fd_limit();
    if (conns == 1) {
        run_single(warmup > 0 ? warmup : 1, msg, buf);
        elapsed = run_single(rounds, msg, buf);
    } else {
        run_many((int)conns, warmup > conns ? warmup : conns, msg);
        elapsed = run_many((int)conns, rounds, msg);
    }
    printf("%.9f\n", elapsed);
    return 0;
}
