/*
 * server.h — internals of the worker daemon shared by its files: worker.c
 * (start-up, threads, listeners), server.c (request dispatch, replies),
 * conn.c (one client connection: framing, buffers, output queue, handle
 * table) and http.c. Waits are wait.h's, the seam to whatever resolves
 * misses (the cluster) is resolver.h.
 *
 * Threading: `threads` I/O threads, each with its own event_base, accept from
 * the shared listening sockets and own the connections they accepted. The
 * object store is shared and guarded by store.lock; a connection is touched
 * only by its own thread, except that a seal or a resolver on another thread
 * may complete one of its waits, through the thread's wait box (wait.h).
 */
#ifndef KVDS_SERVER_H
#define KVDS_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/uio.h>

#include "cluster/auth.h"
#include "cluster/membership.h"
#include "pool/pool.h"
#include "proto/proto.h"
#include "store/store.h"
#include "worker/peercred.h"
#include "worker/resolver.h"
#include "worker/wait.h"
#include "worker/worker.h"

struct event_base;
struct event;
struct conn;
struct kvds_cluster;
struct kvds_peer;
struct kvds_tier;

/* A connection accepted by one thread at --max-connections and handed to
 * another that has an idle connection to close for it. */
struct handoff {
  int fd;
  uint8_t is_unix;
};
#define HANDOFF_MAX 64

struct io_thread {
  struct kvds_server *srv;
  int idx;
  pthread_t tid;
  struct event_base *base;
  struct event *listen_ev[2];
  struct event *wake_ev;      /* activated to wake the loop (stop) */
  struct event *sweep_ev;     /* periodic: closes connections stuck mid-frame */
  struct event *resume_ev;    /* re-arms the listeners after accept failed */
  uint64_t accept_log_us;     /* last "accept failed" log line */
  uint8_t *discard;           /* sink for bulk bytes that have nowhere to go */
  struct kvds_waitbox *waits; /* its connections' waits */
  /* This thread's connections, most recently active first. */
  struct conn *conns, *conns_tail;
  uint64_t last_activity_us;
  /* Its connections that hold nothing (no pins, writes or waits), read by
   * other threads at --max-connections: ones that never sent a request,
   * and the others (conn.c keeps them current). */
  atomic_uint idle_fresh, idle_used;
  /* Its TCP connections (peers' pulls among them), read by the thread that
   * accepts a new one to give it to the thread with the fewest. */
  atomic_uint ntcp;
  atomic_uint nhanded; /* connections in handoff[] (handoff_lock) */
  pthread_mutex_t handoff_lock;
  struct handoff handoff[HANDOFF_MAX]; /* handoff_lock */
  int nhandoff;                        /* handoff_lock */
  struct event *handoff_ev;            /* activated by other threads */
  uint64_t limit_log_us;               /* last log line about a limit */
};

struct kvds_server {
  struct kvds_worker_config cfg;
  struct kvds_pool pool;
  struct kvds_store store;
  int tcp_fd, unix_fd;
  char socket_path[256];
  struct io_thread *threads;
  int nthreads;
  atomic_int stopping;
  uint64_t nonce;
  uint64_t start_us;
  atomic_uint_fast64_t connections, connections_total, protocol_errors;
  atomic_uint_fast64_t bytes_in, bytes_out, requests;
  /* TCP connections closed before they authenticated (refused, wrong or
   * missing proof, garbage, silence) */
  atomic_uint_fast64_t auth_failures;
  /* Connections from users other than the owner, root and --allow-group
   * (they may still prove the token, if there is one) */
  atomic_uint_fast64_t access_refused;
  /* Limits (docs/worker.md): the effective --max-connections and
   * --max-writing-per-conn; connections closed for being idle, to make room
   * at the cap, or for stalling or moving slower than --min-rate; new ones
   * refused at the cap (of which `refusing` are still being answered);
   * creates refused by --max-writing-per-conn. */
  int max_conns;
  uint64_t max_writing;
  atomic_uint_fast64_t closed_idle, closed_for_room, closed_slow, refused;
  atomic_uint_fast64_t writing_refused;
  atomic_int refusing;
  struct kvds_access access;
  int auth;                     /* TCP connections must authenticate */
  struct kvds_auth_token token; /* when auth */
  struct kvds_http *http;
  kvds_membership *members; /* always set once serving (embedded: just me) */
  struct kvds_cluster *cluster;  /* NULL on a single embedded worker */
  struct kvds_resolver resolver; /* misses: the cluster's, or none */
  struct kvds_tier *tier;        /* the disk tier (tier/), or NULL */
  /* UCX over the pool (--transport, docs/transport.md), or NULL: peers
   * then read this pool, and this worker reads theirs, over TCP. */
  struct kvds_ucx *ucx;
  char transport_why[320]; /* why UCX is on or off, for /status */
};

/* ---- conn.c --------------------------------------------------------------*/

/* Output chunk: bytes to send, owned (freed when sent) and/or pinned. */
struct ochunk {
  struct ochunk *next;
  const uint8_t *p;
  size_t len, off;
  uint8_t *own;            /* freed once sent, may be NULL */
  struct kvds_object *pin; /* unpinned once sent, may be NULL */
  int send_fd;             /* -1, or an fd to pass with the first byte */
};

enum { REF_NONE = 0, REF_PIN = 1, REF_WRITER = 2 };

struct ref {
  struct kvds_object *obj;
  uint32_t gen;
  uint8_t kind;
  uint32_t next_free;
};

/* Where incoming bulk bytes go: a pool range, or nowhere (p == NULL). With
 * the connection's rx_hash on (PUT), a range is hashed piece by piece as it
 * lands, still in cache: `summed` is set and `sum` is its xxh3-64 once the
 * last byte has arrived. */
struct rx_seg {
  uint8_t *p;
  uint64_t len;
  uint64_t sum;
  uint8_t summed;
};

struct conn {
  struct io_thread *th;
  struct conn *prev, *next;
  int fd;
  uint8_t is_unix;
  uint8_t closing;           /* flush what is queued, then close */
  uint8_t reading;           /* read event armed */
  uint8_t writing;           /* write event armed */
  uint8_t authed;            /* may send requests (Unix, or proved the token) */
  struct kvds_peer *peer;    /* a peer worker's connection (HELLO named it) */
  char *peer_name;           /* the member id its HELLO gave, or NULL */
  uint8_t auth_step;         /* 1: challenge sent, client proof expected */
  uint64_t auth_deadline_us; /* close if not authenticated by then */
  uint8_t auth_wn[KVDS_AUTH_NONCE_LEN], auth_cn[KVDS_AUTH_NONCE_LEN];
  uint8_t refusing;     /* over --max-connections: answer KVDS_E_LIMIT, close */
  uint8_t idle_class;   /* IDLE_* it is counted under in th->idle_* */
  uint64_t rx_since_us; /* last progress while a frame is incomplete, else 0 */
  uint64_t tx_since_us; /* last output progress while output waits, else 0 */
  /* --min-rate windows: since when (0 = no transfer in progress) and how
   * many bytes moved since then, for input and output. */
  uint64_t rx_win_us, rx_win_bytes, tx_win_us, tx_win_bytes;
  uint64_t active_us; /* last byte read or written (idle timeout) */
  uint64_t nreq;      /* request frames received */
  struct event *rev, *wev;
  /* input buffer: bytes [ipos, ilen) not consumed yet */
  uint8_t *ib;
  size_t icap, ilen, ipos;
  int rx; /* RX_* in conn.c */
  struct kvds_proto_hdr h;
  uint8_t hraw[KVDS_PROTO_HDR_LEN];
  uint8_t *meta; /* owned copy of meta for data ops */
  /* bulk data being received for the current frame */
  struct rx_seg *segs;
  uint32_t nsegs, seg;
  uint64_t seg_off, data_left;
  uint8_t hash_rx;              /* hash the segments as they land (PUT) */
  struct kvds_hash *rx_hash;    /* the current segment's state (owned) */
  struct kvds_object **pending; /* objects created by a PUT in flight */
  int32_t *pstatus;
  uint32_t npending;
  /* output */
  struct ochunk *oq_head, *oq_tail;
  uint64_t oq_bytes;
  /* handle table */
  struct ref *refs;
  uint32_t nrefs, caprefs, free_ref;
  uint32_t nheld;         /* entries in use (pins, objects being written) */
  uint64_t writing_bytes; /* bytes of its WRITING objects (and PUT's) */
  /* its requests answered later (wait.h) */
  struct kvds_wait *waits;
};

/* A new connection on fd, owned by th. With `refuse` it is over
 * --max-connections: its first request is answered KVDS_E_LIMIT and it is
 * closed (within a second if it sends none); it is not counted in
 * srv->connections but in srv->refusing. */
struct conn *kvds__conn_new(struct io_thread *th, int fd, int is_unix,
                            int refuse);
/* Closes now: aborts its writes, releases its pins, cancels its waits. */
void kvds__conn_close(struct conn *c);
/* The connection of th to close to make room for a new one: the least
 * recently active one that holds nothing and has nothing in progress,
 * preferring one that never sent a request; NULL if there is none. */
struct conn *kvds__conn_victim(struct io_thread *th);

/* Queues bytes, taking ownership of `own` (freed once sent) and of the pin
 * on `pin` (dropped once sent). On -ENOMEM both are given up and the
 * connection is marked closing: a reply is missing, the stream is lost. */
int kvds__conn_queue(struct conn *c, const uint8_t *p, size_t len, uint8_t *own,
                     struct kvds_object *pin, int send_fd);
/* Writes as much as the socket takes; arms the write event if needed. */
void kvds__conn_flush(struct conn *c);
/* Closes this thread's connections that made no progress on an incomplete
 * frame (or on output they are owed) for the frame timeout, that moved less
 * than --min-rate over a frame-timeout window of such a transfer, and
 * those idle for --idle-timeout-s. */
void kvds__conn_sweep(struct io_thread *th, uint64_t now_us);

/* Handle table. */
uint64_t kvds__ref_add(struct conn *c, struct kvds_object *o, int kind);
struct ref *kvds__ref_get(struct conn *c, uint64_t handle, int kind);
void kvds__ref_drop(struct conn *c, struct ref *r);

/* ---- server.c ------------------------------------------------------------*/

/* The answer to a find from what this worker holds, st[i] = 0 when key i
 * is here: EXISTS, the statuses; LOOKUP_PREFIX, how many leading keys are
 * here; LOCATE (a worker without a directory), per key whether it is here
 * and, if so, this worker as its one owner (an empty id). */
void kvds__reply_find(struct reply *r, int kind, uint32_t n, const int32_t *st);
/* A reply being built: header + meta in one owned buffer, by the shared
 * frame builder (proto.h). */
struct reply {
  struct kvds_proto_builder b;
};

void kvds__reply_init(struct reply *r);
void kvds__reply_item(struct reply *r, int32_t status, uint64_t a, uint64_t b,
                      uint64_t c, uint64_t d, const void *key, uint32_t klen);
/* Finishes the header and queues it on c, followed by nothing else; the
 * caller queues data chunks after it when data_len > 0. */
int kvds__reply_send(struct conn *c, struct reply *r, uint8_t op,
                     uint64_t req_id, uint16_t flags, int32_t status,
                     uint64_t data_len, int send_fd);
/* Queues a reply with no items. */
void kvds__reply_status(struct conn *c, uint8_t op, uint64_t req_id,
                        int32_t status);

/*
 * Called by conn.c when a frame's header and meta are in: returns 0 when the
 * request is done, 1 when it expects data_len bulk bytes (conn.c fills the
 * segs set up by this call and then calls kvds__server_data_done), or a
 * negative error after which the connection is closed.
 */
int kvds__server_request(struct conn *c, const uint8_t *meta);
void kvds__server_data_done(struct conn *c);
void kvds__server_stop(struct kvds_server *s);
/* The wait boxes' hooks (wait.h): answer a wait on its connection, then
 * flush the connection. */
void kvds__server_on_answer(void *owner, const struct kvds_wait_answer *a);
void kvds__server_after_answer(void *owner);

/* ---- worker.c
 * --------------------------------------------------------------*/

/* One log line on stderr ("kvds worker [LEVEL] ..."), if level <= the
 * worker's --log-level (0 error, 1 warn, 2 info, 3 debug). */
void kvds__logf(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ---- http.c --------------------------------------------------------------*/
struct kvds_http;
/* Serves /health, /status and /metrics on host:port. need_token (a
 * listener that is not on a loopback address, with a token set): /status
 * and /metrics answer 401 unless the request carries "Authorization:
 * Bearer <token>" (/health stays open for liveness probes). */
int kvds__http_start(struct kvds_server *s, const char *host, int port,
                     int need_token, struct kvds_http **out);
void kvds__http_stop(struct kvds_http *h);
/* JSON / Prometheus snapshots, malloc'd strings (NULL on -ENOMEM). */
char *kvds__server_status_json(struct kvds_server *s);
char *kvds__server_metrics_text(struct kvds_server *s);

#endif
