/*
 * transport.h — the byte stream under a framed-RPC connection (rpc.h): a
 * small table of operations per kind of connection, as Redis's
 * ConnectionType does for tcp/unix/tls. TCP and Unix sockets are here; a
 * UCX/RDMA transport is one more table beside them.
 *
 * Conventions: deadlines are kvds_now_us() values; every operation that can
 * wait takes one and returns KVDS_E_TIMEOUT when it passes. Errors are
 * KVDS_E_* or -errno (kvds.h). A transport is used by one thread at a time,
 * except kvds_transport_shutdown, which any thread may call while the
 * owner is blocked in it (see there).
 */
#ifndef KVDS_NET_TRANSPORT_H
#define KVDS_NET_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

/* The version of struct kvds_transport_ops below. */
#define KVDS_TRANSPORT_OPS_V1 1u

/* Readiness asked of kvds_transport_wait (poll(2)'s values). */
#define KVDS_TRANSPORT_IN 0x001  /* POLLIN */
#define KVDS_TRANSPORT_OUT 0x004 /* POLLOUT */

/* With an interrupt hook, a wait asks it at least this often (ms). */
#define KVDS_TRANSPORT_INTR_POLL_MS 100

struct kvds_transport;

struct kvds_transport_ops {
  unsigned version; /* KVDS_TRANSPORT_OPS_V1 */
  const char *name; /* "tcp", "unix" */
  /* Opens a connection to addr (host:port or tcp://host:port for TCP, a
   * socket path for Unix) before the deadline. 0, KVDS_E_ADDR,
   * KVDS_E_TIMEOUT or -errno; nothing is left open on failure. */
  int (*connect)(struct kvds_transport *t, const char *addr, uint64_t deadline);
  /* Writes some bytes of iov[0..n) without blocking: the count (> 0),
   * -EAGAIN when none can go now, or -errno. */
  ssize_t (*send)(struct kvds_transport *t, const struct iovec *iov, int n);
  /* Reads some bytes into iov[0..n) without blocking: the count (> 0),
   * -EAGAIN when none are there, KVDS_E_CLOSED at the end of the stream,
   * or -errno. File descriptors passed along (Unix) are kept for take_fd. */
  ssize_t (*recv)(struct kvds_transport *t, struct iovec *iov, int n);
  /* Waits until `events` (KVDS_TRANSPORT_IN / _OUT) are possible or the
   * deadline passes. With intr, intr(ud) is asked after a signal and at
   * least every KVDS_TRANSPORT_INTR_POLL_MS; non-zero gives up. 0,
   * KVDS_E_TIMEOUT, KVDS_E_INTR or -errno. */
  int (*wait)(struct kvds_transport *t, short events, uint64_t deadline,
              int (*intr)(void *ud), void *ud);
  /* 1 when input, a hang-up or an error is pending right now, else 0.
   * Never blocks. */
  int (*pending)(const struct kvds_transport *t);
  /* Ends the stream both ways without releasing the connection: a call
   * blocked in another thread fails at once. Safe from any thread until
   * close. */
  void (*shutdown)(struct kvds_transport *t);
  /* Releases the connection (and any received fd not taken). The
   * transport is then closed; closing again is a no-op. */
  void (*close)(struct kvds_transport *t);
  /* The first file descriptor received since the last call (the caller
   * owns it), or -1. NULL where the transport cannot pass descriptors. */
  int (*take_fd)(struct kvds_transport *t);
};

/* One connection. Embed it; ops is NULL until a connect succeeded. */
struct kvds_transport {
  const struct kvds_transport_ops *ops;
  int fd;      /* sockets: the socket, -1 when closed */
  int recv_fd; /* Unix: a descriptor received and not taken yet, or -1 */
};

extern const struct kvds_transport_ops kvds_transport_tcp;
extern const struct kvds_transport_ops kvds_transport_unix;

/* A closed transport (no ops, no descriptors). */
static inline void kvds_transport_init(struct kvds_transport *t) {
  t->ops = NULL;
  t->fd = -1;
  t->recv_fd = -1;
}

/* Connects t with `ops`; on failure t stays closed. */
static inline int kvds_transport_connect(struct kvds_transport *t,
                                         const struct kvds_transport_ops *ops,
                                         const char *addr, uint64_t deadline) {
  kvds_transport_init(t);
  int rc = ops->connect(t, addr, deadline);
  if (rc == 0)
    t->ops = ops;
  return rc;
}

/* Makes t the owner of fd, an already connected socket of the kind `ops`
 * handles (a socketpair end, say), switched to non-blocking mode. 0 or
 * -errno (fd is then still the caller's). */
int kvds_transport_adopt(struct kvds_transport *t,
                         const struct kvds_transport_ops *ops, int fd);

static inline ssize_t kvds_transport_send(struct kvds_transport *t,
                                          const struct iovec *iov, int n) {
  return t->ops->send(t, iov, n);
}

static inline ssize_t kvds_transport_recv(struct kvds_transport *t,
                                          struct iovec *iov, int n) {
  return t->ops->recv(t, iov, n);
}

static inline int kvds_transport_wait(struct kvds_transport *t, short events,
                                      uint64_t deadline, int (*intr)(void *),
                                      void *ud) {
  return t->ops->wait(t, events, deadline, intr, ud);
}

static inline int kvds_transport_pending(const struct kvds_transport *t) {
  return t->ops->pending(t);
}

static inline void kvds_transport_shutdown(struct kvds_transport *t) {
  if (t->ops)
    t->ops->shutdown(t);
}

static inline void kvds_transport_close(struct kvds_transport *t) {
  if (t->ops)
    t->ops->close(t);
}

static inline int kvds_transport_take_fd(struct kvds_transport *t) {
  return t->ops && t->ops->take_fd ? t->ops->take_fd(t) : -1;
}

#endif
