/*
 * tcp.c — the raw loopback TCP ceiling of `kvds bench remote` and `kvds
 * bench peers`: the same bytes as the kvds call moved over as many
 * loopback streams, answered from a source buffer and received straight
 * into a destination buffer (bench.h).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <semaphore.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "cli/bench/bench.h"
#include "common/clock.h"

/* A timeout (SO_RCVTIMEO / SO_SNDTIMEO) reads as KVDS_E_TIMEOUT. */
static int send_all(int fd, const void *buf, size_t len) {
  const uint8_t *p = buf;
  while (len) {
    ssize_t w = send(fd, p, len, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return KVDS_E_TIMEOUT;
    if (w <= 0)
      return w < 0 ? -errno : KVDS_E_CLOSED;
    p += w;
    len -= (size_t)w;
  }
  return 0;
}

static int recv_all(int fd, void *buf, size_t len) {
  uint8_t *p = buf;
  while (len) {
    ssize_t n = recv(fd, p, len, 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return KVDS_E_TIMEOUT;
    if (n <= 0)
      return n < 0 ? -errno : KVDS_E_CLOSED;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

/* Answers requests {len, src_off} from the source buffer until EOF. On
 * leaving (EOF, a bad request, a stalled peer) it shuts its end down, so
 * the receiver fails at once instead of waiting for bytes. */
static void *tcp_sender(void *arg) {
  struct bench_tcp_stream *s = arg;
  uint64_t req[2];
  while (recv_all(s->sfd, req, sizeof req) == 0) {
    if (req[0] > s->t->region || req[1] > s->t->region - req[0])
      break;
    if (send_all(s->sfd, s->t->src + req[1], (size_t)req[0]))
      break;
  }
  shutdown(s->sfd, SHUT_RDWR);
  return NULL;
}

/* Per post of its go semaphore: asks for its share and receives it straight
 * into dst. */
static void *tcp_receiver(void *arg) {
  struct bench_tcp_stream *s = arg;
  struct bench_tcp *t = s->t;
  for (;;) {
    while (sem_wait(&s->go) && errno == EINTR)
      ;
    if (t->quit)
      break;
    uint64_t req[2] = {s->len, s->src_off};
    int err = send_all(s->rfd, req, sizeof req);
    if (!err)
      err = recv_all(s->rfd, t->dst + s->dst_off, (size_t)req[0]);
    pthread_mutex_lock(&t->lock);
    if (err && !t->err)
      t->err = err;
    t->ndone++;
    pthread_cond_signal(&t->done);
    pthread_mutex_unlock(&t->lock);
  }
  return NULL;
}

void bench_tcp_teardown(struct bench_tcp *t) {
  t->quit = 1;
  for (int i = 0; i < t->n; i++) {
    struct bench_tcp_stream *s = &t->s[i];
    if (s->rfd >= 0)
      shutdown(s->rfd, SHUT_RDWR); /* the sender sees EOF; a busy receiver
                                      fails at once */
    if (s->have_go)
      sem_post(&s->go);
  }
  for (int i = 0; i < t->n; i++) {
    struct bench_tcp_stream *s = &t->s[i];
    if (s->have_receiver)
      pthread_join(s->receiver, NULL);
    if (s->have_sender)
      pthread_join(s->sender, NULL);
    if (s->rfd >= 0)
      close(s->rfd);
    if (s->sfd >= 0)
      close(s->sfd);
    if (s->have_go)
      sem_destroy(&s->go);
  }
  pthread_cond_destroy(&t->done);
  pthread_mutex_destroy(&t->lock);
  t->n = 0;
}

/* n connected loopback streams with their threads. Every socket gets
 * BENCH_TCP_IO_TIMEOUT_S send and receive timeouts (the senders' ends a send
 * timeout only: they wait for requests between cases). */
int bench_tcp_setup(struct bench_tcp *t, int n, const uint8_t *src,
                    uint8_t *dst, size_t region) {
  pthread_mutex_init(&t->lock, NULL);
  kvds_cond_init_mono(&t->done);
  t->src = src;
  t->dst = dst;
  t->region = region;
  int rc = 0, one = 1;
  struct timeval tv = {.tv_sec = BENCH_TCP_IO_TIMEOUT_S};
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof sa;
  if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) ||
      getsockname(lfd, (struct sockaddr *)&sa, &len) || listen(lfd, n))
    rc = -errno;
  for (int i = 0; rc == 0 && i < n; i++) {
    struct bench_tcp_stream *s = &t->s[i];
    *s = (struct bench_tcp_stream){.t = t, .sfd = -1, .rfd = -1};
    t->n = i + 1;
    s->rfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s->rfd < 0 || connect(s->rfd, (struct sockaddr *)&sa, sizeof sa) ||
        (s->sfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC)) < 0) {
      rc = -errno;
      break;
    }
    /* as the kvds client and worker set theirs */
    if (setsockopt(s->rfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) ||
        setsockopt(s->sfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) ||
        setsockopt(s->rfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) ||
        setsockopt(s->rfd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) ||
        setsockopt(s->sfd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv)) {
      rc = -errno;
      break;
    }
    if (sem_init(&s->go, 0, 0)) {
      rc = -errno;
      break;
    }
    s->have_go = 1;
    if ((rc = -pthread_create(&s->sender, NULL, tcp_sender, s)))
      break;
    s->have_sender = 1;
    if ((rc = -pthread_create(&s->receiver, NULL, tcp_receiver, s)))
      break;
    s->have_receiver = 1;
  }
  if (lfd >= 0)
    close(lfd);
  if (rc)
    bench_tcp_teardown(t);
  return rc;
}

/* `calls` calls of per_call bytes, walking span bytes of src/dst from *pos
 * like the kvds reads walk their keys, each call's bytes split evenly over
 * the streams (as the worker splits a batch over its pull jobs and a large
 * value over its ranges). Only the streams a call uses are woken. *ns:
 * time of all calls. A call that has not finished within
 * 2 x BENCH_TCP_IO_TIMEOUT_S plus its bytes at 100 MB/s fails with
 * KVDS_E_TIMEOUT (the sockets' own timeouts normally report a stall
 * first). */
int bench_tcp_run(struct bench_tcp *t, int streams, size_t per_call,
                  size_t span, uint64_t calls, uint64_t *pos, uint64_t *ns) {
  size_t j = (size_t)*pos;
  int rc = 0;
  uint64_t limit_ns = 2ull * BENCH_TCP_IO_TIMEOUT_S * 1000000000ull +
                      (uint64_t)per_call * 10; /* 100 MB/s */
  uint64_t t0 = kvds_now_ns();
  for (uint64_t c = 0; c < calls && rc == 0 && !bench_stopped(); c++) {
    for (int k = 0; k < streams; k++) {
      size_t lo = per_call * (size_t)k / (size_t)streams;
      size_t hi = per_call * (size_t)(k + 1) / (size_t)streams;
      t->s[k].len = hi - lo;
      t->s[k].src_off = t->s[k].dst_off = j + lo;
    }
    pthread_mutex_lock(&t->lock);
    t->ndone = 0;
    pthread_mutex_unlock(&t->lock);
    for (int k = 0; k < streams; k++)
      sem_post(&t->s[k].go);
    uint64_t dl = kvds_now_us() + limit_ns / 1000;
    pthread_mutex_lock(&t->lock);
    while (t->ndone < streams && rc == 0)
      if (kvds_cond_wait_until(&t->done, &t->lock, dl) == -ETIMEDOUT &&
          t->ndone < streams)
        rc = KVDS_E_TIMEOUT;
    if (rc == 0)
      rc = t->err;
    pthread_mutex_unlock(&t->lock);
    j += per_call;
    if (j + per_call > span)
      j = 0;
  }
  *pos = j;
  *ns = kvds_now_ns() - t0;
  return rc;
}
