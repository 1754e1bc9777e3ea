/*
 * socket.c — the TCP and Unix-socket transports (transport.h). Both are
 * non-blocking sockets driven by poll(2); they differ in how they connect
 * and in the Unix socket's passing of file descriptors (the worker sends
 * its pool's memfd with the HELLO reply).
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/util.h"
#include "kvds/kvds.h"
#include "net/transport.h"

/* Longest single poll (a deadline far away is waited for in pieces). */
#define POLL_MAX_MS 3600000

/* poll(2) on fd until the deadline (a signal does not restart the clock);
 * see the wait operation in transport.h. */
static int wait_fd(int fd, short ev, uint64_t deadline, int (*intr)(void *),
                   void *ud) {
  for (;;) {
    uint64_t now = kvds_now_us();
    if (now >= deadline)
      return KVDS_E_TIMEOUT;
    uint64_t left_ms = (uint64_t)kvds_deadline_left_ms(deadline, now);
    if (left_ms > POLL_MAX_MS)
      left_ms = POLL_MAX_MS;
    if (intr && left_ms > KVDS_TRANSPORT_INTR_POLL_MS)
      left_ms = KVDS_TRANSPORT_INTR_POLL_MS;
    struct pollfd p = {.fd = fd, .events = ev};
    int n = poll(&p, 1, (int)left_ms);
    if (n > 0)
      return 0;
    if (n < 0 && errno != EINTR)
      return -errno;
    if (intr && intr(ud))
      return KVDS_E_INTR;
  }
}

static int sock_wait(struct kvds_transport *t, short events, uint64_t deadline,
                     int (*intr)(void *), void *ud) {
  return wait_fd(t->fd, events, deadline, intr, ud);
}

static int sock_pending(const struct kvds_transport *t) {
  struct pollfd p = {.fd = t->fd, .events = POLLIN};
  return poll(&p, 1, 0) != 0; /* input, hang-up or error (or poll failed) */
}

static ssize_t sock_send(struct kvds_transport *t, const struct iovec *iov,
                         int n) {
  for (;;) {
    struct msghdr mh = {.msg_iov = (struct iovec *)iov,
                        .msg_iovlen = (size_t)(n > 64 ? 64 : n)};
    ssize_t w = sendmsg(t->fd, &mh, MSG_NOSIGNAL);
    if (w >= 0)
      return w;
    if (errno == EINTR)
      continue;
    return errno == EWOULDBLOCK ? -EAGAIN : -errno;
  }
}

/* recvmsg, with room for passed descriptors when with_fds. */
static ssize_t sock_recvmsg(struct kvds_transport *t, struct iovec *iov, int n,
                            int with_fds) {
  for (;;) {
    union {
      char buf[CMSG_SPACE(4 * sizeof(int))];
      struct cmsghdr align;
    } u;
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
    if (with_fds) {
      mh.msg_control = u.buf;
      mh.msg_controllen = sizeof u.buf;
    }
    ssize_t r = recvmsg(t->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (r > 0) {
      /* Keep the first descriptor passed, close any other. */
      for (struct cmsghdr *cm = with_fds ? CMSG_FIRSTHDR(&mh) : NULL; cm;
           cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
          continue;
        size_t nfd = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < nfd; i++) {
          int fd;
          memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
          if (t->recv_fd < 0)
            t->recv_fd = fd;
          else
            close(fd);
        }
      }
      return r;
    }
    if (r == 0)
      return KVDS_E_CLOSED;
    if (errno == EINTR)
      continue;
    return errno == EWOULDBLOCK ? -EAGAIN : -errno;
  }
}

static ssize_t tcp_recv(struct kvds_transport *t, struct iovec *iov, int n) {
  return sock_recvmsg(t, iov, n, 0);
}

static ssize_t unix_recv(struct kvds_transport *t, struct iovec *iov, int n) {
  return sock_recvmsg(t, iov, n, 1);
}

static void sock_shutdown(struct kvds_transport *t) {
  if (t->fd >= 0)
    shutdown(t->fd, SHUT_RDWR);
}

static void sock_close(struct kvds_transport *t) {
  if (t->fd >= 0)
    close(t->fd);
  if (t->recv_fd >= 0)
    close(t->recv_fd);
  t->fd = -1;
  t->recv_fd = -1;
}

static int unix_take_fd(struct kvds_transport *t) {
  int fd = t->recv_fd;
  t->recv_fd = -1;
  return fd;
}

/* A Unix-socket connect waits while the worker's accept queue is full (a
 * non-blocking one would fail with EAGAIN at once): blocking, bounded by
 * SO_SNDTIMEO set to what is left of the deadline, then non-blocking. */
static int unix_connect(struct kvds_transport *t, const char *path,
                        uint64_t deadline) {
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  size_t pl = strlen(path);
  if (pl == 0 || pl >= sizeof sa.sun_path)
    return KVDS_E_ADDR;
  memcpy(sa.sun_path, path, pl + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -errno;
  int e = 0;
  for (;;) {
    uint64_t now = kvds_now_us();
    if (now >= deadline) {
      e = KVDS_E_TIMEOUT;
      break;
    }
    uint64_t left = deadline - now; /* > 0: a zero timeout never expires */
    struct timeval tv = {.tv_sec = (time_t)(left / 1000000),
                         .tv_usec = (suseconds_t)(left % 1000000)};
    if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv)) {
      e = -errno;
      break;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
      break;
    if (errno == EINTR)
      continue;
    e = errno == EAGAIN ? KVDS_E_TIMEOUT : -errno;
    break;
  }
  struct timeval none = {0, 0};
  if (!e && (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &none, sizeof none) ||
             fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)))
    e = -errno;
  if (e) {
    close(fd);
    return e;
  }
  t->fd = fd;
  return 0;
}

static int tcp_connect(struct kvds_transport *t, const char *addr,
                       uint64_t deadline) {
  char host[256], port_s[8];
  uint16_t port;
  if (kvds_split_hostport(addr, host, sizeof host, &port))
    return KVDS_E_ADDR;
  snprintf(port_s, sizeof port_s, "%u", (unsigned)port);
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_NUMERICSERV};
  struct addrinfo *ai, *p;
  if (getaddrinfo(host, port_s, &hints, &ai))
    return KVDS_E_ADDR;
  int rc = -ECONNREFUSED;
  for (p = ai; p; p = p->ai_next) {
    int fd =
        socket(p->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
      rc = -errno;
      continue;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, p->ai_addr, p->ai_addrlen) == 0) {
      rc = 0;
    } else if (errno == EINPROGRESS) {
      rc = wait_fd(fd, POLLOUT, deadline, NULL, NULL);
      if (!rc) {
        int e = 0;
        socklen_t l = sizeof e;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &l);
        rc = -e;
      }
    } else {
      rc = -errno;
    }
    if (!rc) {
      t->fd = fd;
      break;
    }
    close(fd);
  }
  freeaddrinfo(ai);
  return rc;
}

const struct kvds_transport_ops kvds_transport_tcp = {
    .version = KVDS_TRANSPORT_OPS_V1,
    .name = "tcp",
    .connect = tcp_connect,
    .send = sock_send,
    .recv = tcp_recv,
    .wait = sock_wait,
    .pending = sock_pending,
    .shutdown = sock_shutdown,
    .close = sock_close,
    .take_fd = NULL,
};

const struct kvds_transport_ops kvds_transport_unix = {
    .version = KVDS_TRANSPORT_OPS_V1,
    .name = "unix",
    .connect = unix_connect,
    .send = sock_send,
    .recv = unix_recv,
    .wait = sock_wait,
    .pending = sock_pending,
    .shutdown = sock_shutdown,
    .close = sock_close,
    .take_fd = unix_take_fd,
};

int kvds_transport_adopt(struct kvds_transport *t,
                         const struct kvds_transport_ops *ops, int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK))
    return -errno;
  kvds_transport_init(t);
  t->ops = ops;
  t->fd = fd;
  return 0;
}
