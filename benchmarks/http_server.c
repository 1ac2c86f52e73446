/* The HTTP server of the aiohttp client row (bench_web.py builds it with cc; never committed
 * as a binary): the same fixed server for every loop, so only the client's loop varies.
 *
 *     http_server
 *
 * Listens on 127.0.0.1 on a free port, prints the port, and answers every request (anything
 * ending in an empty line: GETs without a body) with the same keep-alive response, 13 bytes
 * of "Hello, world!" as text/plain; pipelined requests get one response each. One thread,
 * level-triggered epoll. Exits when its stdin reaches EOF (the benchmark closes it, or died),
 * and after TOTAL_TIMEOUT seconds whatever happens.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define TOTAL_TIMEOUT 110
#define MAX_FDS 4096

static const char RESPONSE[] =
    "HTTP/1.1 200 OK\r\n"
    "Content-Type: text/plain\r\n"
    "Content-Length: 13\r\n"
    "\r\n"
    "Hello, world!";
#define RESPONSE_LEN (sizeof RESPONSE - 1)

struct conn {
    int matched;     /* bytes of "\r\n\r\n" seen at the end of what was read */
    char *out;       /* responses not yet written */
    size_t out_len;
};

static struct conn conns[MAX_FDS];

static void die(const char *what) {
    fprintf(stderr, "error: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void drop(int ep, int fd) {
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    free(conns[fd].out);
    memset(&conns[fd], 0, sizeof conns[fd]);
}

/* Write the pending responses; watch for writability while some remain. 0: the peer is gone. */
static int flush(int ep, int fd) {
    struct conn *c = &conns[fd];
    size_t sent = 0;
    while (sent < c->out_len) {
        ssize_t n = send(fd, c->out + sent, c->out_len - sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) break;
            return 0;
        }
        sent += (size_t)n;
    }
    memmove(c->out, c->out + sent, c->out_len - sent);
    c->out_len -= sent;
    struct epoll_event ev = {.events = EPOLLIN | (c->out_len ? EPOLLOUT : 0), .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
    return 1;
}

/* Read what arrived; queue one response per request end. 0: the peer closed. */
static int serve(int ep, int fd) {
    static const char END[] = "\r\n\r\n";
    char buf[16384];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN)) return 0;
    if (n < 0) return 1;
    struct conn *c = &conns[fd];
    size_t requests = 0;
    for (ssize_t i = 0; i < n; i++) {
        if (buf[i] == END[c->matched]) {
            if (++c->matched == 4) {
                requests++;
                c->matched = 0;
            }
        } else {
            c->matched = buf[i] == '\r';
        }
    }
    if (!requests) return 1;
    char *out = realloc(c->out, c->out_len + requests * RESPONSE_LEN);
    if (!out) die("realloc");
    c->out = out;
    for (size_t r = 0; r < requests; r++, c->out_len += RESPONSE_LEN)
        memcpy(c->out + c->out_len, RESPONSE, RESPONSE_LEN);
    return flush(ep, fd);
}

int main(void) {
    alarm(TOTAL_TIMEOUT);
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listener < 0) die("socket");
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sin;
    if (bind(listener, (struct sockaddr *)&sin, sizeof sin) < 0) die("bind");
    if (listen(listener, 1024) < 0) die("listen");
    if (getsockname(listener, (struct sockaddr *)&sin, &len) < 0) die("getsockname");
    printf("%d\n", ntohs(sin.sin_port));
    fflush(stdout);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = listener};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev) < 0) die("epoll_ctl");
    ev.data.fd = STDIN_FILENO;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, STDIN_FILENO, &ev) < 0) die("epoll_ctl stdin");

    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int e = 0; e < n; e++) {
            int fd = events[e].data.fd;
            if (fd == STDIN_FILENO) {
                char byte;
                if (read(STDIN_FILENO, &byte, 1) <= 0) return 0;
            } else if (fd == listener) {
                int conn;
                while ((conn = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    if (conn >= MAX_FDS) {
                        close(conn);
                        continue;
                    }
                    int one = 1;
                    setsockopt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = conn};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, conn, &cev) < 0) die("epoll_ctl");
                }
            } else {
                int alive = 1;
                if (events[e].events & EPOLLOUT) alive = flush(ep, fd);
                if (alive && (events[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                    alive = serve(ep, fd);
                if (!alive) drop(ep, fd);
            }
        }
    }
}
