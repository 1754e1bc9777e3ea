/*
 * internal.h — the worker's cluster part (docs/cluster.md), shared by its
 * files, one per subsystem:
 *
 *  - cluster.c   life cycle (threads, store hook) and the resolver ops the
 *                server asks for misses (resolver.h);
 *  - peers.c     every other member, with up to `pull_threads` + 1
 *                persistent connections each (proving the cluster's
 *                token), opened when the member joins and kept while it
 *                lives;
 *  - announce.c  the directory shard (which workers hold the keys this
 *                worker is home of) and announcements: every seal and
 *                every eviction/deletion here is told to the key's home,
 *                batched, by the maintenance thread; when the view
 *                changes, the keys whose home changed are announced again;
 *  - view.c      view changes and the maintenance thread;
 *  - jobs.c      a GET that misses here asks the keys' homes (or goes
 *                straight to a hinted worker) and pulls each value from an
 *                owner straight into a new object of this pool, sealed as
 *                a replica once its checksum matched; EXISTS /
 *                LOOKUP_PREFIX / LOCATE ask the homes;
 *  - split.c     a large value pulled in ranges over several connections
 *                at once (the puller and idle job threads), hashed in
 *                order as its bytes land;
 *  - replicate.c background copies (--replicas);
 *  - metrics.c   per-peer counters, pull latency, /status and /metrics.
 * The pure parts (a key's home, views, next owner) are src/cluster/view.h.
 *
 * Threads: `pull_threads` job threads, one maintenance thread, the
 * replicator's; the I/O threads only queue jobs and answer ANNOUNCE /
 * local LOCATE. Lock order: store.lock before cl->lock; nothing here takes
 * store.lock while holding cl->lock. Blocking network calls are made with
 * no lock held, each with a deadline; stopping shuts the sockets of calls
 * in flight.
 */
#ifndef KVDS_WORKER_CLUSTER_INTERNAL_H
#define KVDS_WORKER_CLUSTER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "net/peer.h"
#include "net/ucx.h"
#include "cluster/directory.h"
#include "cluster/view.h"
#include "worker/cluster/cluster.h"
#include "worker/server.h"

#define CONNECT_MS 1000
#define LOCATE_MAX_OWNERS 8
#define LAT_BUCKETS 15

/* A connection of ours to a peer. */
struct pconn {
  struct kvds_peerconn *c;
  uint64_t gen; /* peer->gen when opened */
};

struct kvds_peer {
  char id[KVDS_MEMBER_ID_MAX], addr[KVDS_MEMBER_ID_MAX];
  uint64_t epoch; /* cl->lock */
  int live;       /* cl->lock: in the current view */
  uint64_t gen;   /* cl->lock: bumped when its incarnation changes */
  uint64_t nonce; /* cl->lock: its HELLO nonce, new on every start */
  struct pconn *idle;
  int nidle, nopen; /* cl->lock */
  struct kvds_peerconn **busy;
  int nbusy; /* cl->lock: in use (shut down at stop) */
  atomic_uint_fast64_t bytes_in, bytes_out, objects_in, pulls, pull_errors;
  atomic_uint_fast64_t ranged_in; /* of objects_in: came in ranges (split.c) */
  /* UCX (ucx.c, jobs.c): the endpoint to its pool, for the incarnation
   * with HELLO nonce ucx_nonce (cl->lock; a reader holds a reference);
   * after an endpoint error, TCP until ucx_off_until_us or its next
   * incarnation. */
  struct kvds_ucx_ep *uep;
  uint64_t ucx_nonce, ucx_off_nonce, ucx_off_until_us;
  char ucx_lanes[96]; /* cl->lock: what UCX chose, for /status */
  atomic_uint_fast64_t ucx_in, ucx_errors; /* objects read; endpoint errors */
  atomic_uint_fast64_t lat_sum_us, lat[LAT_BUCKETS + 1];
};

/* The peer of view member i (NULL: this worker). */
static inline struct kvds_peer *vpeer(const struct kvds_view *v, size_t i) {
  return v->m[i].ud;
}

/* A queued location change of one of our keys. */
struct ann {
  struct ann *next;
  uint8_t add;
  uint32_t klen;
  uint8_t key[];
};

struct split;

/* Some keys of a wait, for one job thread; or help with a split. */
struct job {
  struct job *next;
  struct split *split; /* a helper job (w NULL): holds a reference */
  struct kvds_wait *w; /* held until the job is done */
  uint32_t n;
  uint32_t *idx; /* which of w's keys (GET) */
  uint64_t deadline_us;
  int wait_ms;
  uint32_t hlen;
  uint8_t hint[KVDS_MEMBER_ID_MAX];
};

struct kvds_cluster {
  struct kvds_server *s;
  pthread_mutex_t lock;
  pthread_cond_t job_cv, conn_cv, maint_cv;
  struct kvds_peer **peers;
  size_t npeers, cappeers;
  struct kvds_view view; /* cl->lock: live members, this worker included */
  char self_id[KVDS_MEMBER_ID_MAX];
  uint64_t self_epoch;
  int conns_per_peer;
  kvds_directory *dir;
  struct job *jhead, *jtail;
  int nqueued, nbusy; /* cl->lock: jobs queued, job threads at work */
  struct ann *ahead, *atail;
  size_t nann;
  int view_dirty;     /* cl->lock: the membership changed */
  int reannounce_all; /* cl->lock: announce every key again (lost batch) */
  uint64_t rejoins;   /* maintenance thread: the membership's, last seen */
  int stopping;
  pthread_t *pullers;
  int npullers;
  pthread_t maint;
  int maint_started;
  struct kvds_replicator *repl; /* --replicas > 1, else NULL */
  atomic_size_t nlive; /* cl->view.n, read without the lock (GET path) */
  atomic_uint_fast64_t announced, announce_errors, remote_found, remote_missed;
};

/* A copy of the current view (takes cl->lock). 0 or -ENOMEM. */
int kvds__cluster_view(struct kvds_cluster *cl, struct kvds_view *out);
/* Sets cl->reannounce_all (takes cl->lock). */
void kvds__cluster_reannounce_all(struct kvds_cluster *cl);

/* ---- peers.c ------------------------------------------------------------ */
struct kvds_peer *kvds__peer_find_locked(struct kvds_cluster *cl,
                                         const char *id, size_t len);
/* A new peer for member m with room for `conns` connections, or NULL. */
struct kvds_peer *kvds__peer_new(const struct kvds_member *m, int conns);
/* Closes p's connections and frees it (stopping: nothing in use). */
void kvds__peer_free(struct kvds_peer *p);
/* A connection to p, or NULL with *err set (KVDS_E_PEER when it cannot be
 * reached or stopped living, KVDS_E_TIMEOUT when all stayed busy,
 * KVDS_E_SHUTDOWN when stopping); give it back with kvds__pconn_put. */
struct kvds_peerconn *kvds__pconn_get(struct kvds_cluster *cl,
                                      struct kvds_peer *p, uint64_t deadline_us,
                                      uint64_t *gen, int *err);
/* Gives a connection back: kept if it still works and the peer is the
 * same incarnation, else closed. */
void kvds__pconn_put(struct kvds_cluster *cl, struct kvds_peer *p,
                     struct kvds_peerconn *c, uint64_t gen);
/* Closes p's idle connections (cl->lock held). */
void kvds__pconn_drop_idle_locked(struct kvds_peer *p);
/* Opens the connections live peers do not have yet (maintenance thread),
 * so the first request finds them ready. */
void kvds__peers_connect(struct kvds_cluster *cl);
/* Shuts down the connections in use (stopping, cl->lock held): calls in
 * flight fail now instead of at their deadlines. */
void kvds__peers_shutdown_locked(struct kvds_cluster *cl);

/* ---- announce.c --------------------------------------------------------- */
/* The store's notify hook (store lock held): queue the change for the
 * key's home (and the replicator). */
void kvds__announce_on_store(const uint8_t *key, uint32_t klen, int sealed,
                             void *ud);
/* Sends what the store queued since the last call. */
void kvds__announce_queued(struct kvds_cluster *cl);
/* Announces our keys whose home differs between old and nv (all of them
 * when old is NULL) to their home in nv. 0 or -ENOMEM (some were lost). */
int kvds__announce_moved(struct kvds_cluster *cl, const struct kvds_view *old,
                         const struct kvds_view *nv);
/* Incoming ANNOUNCE and local LOCATE (the resolver ops, resolver.h). */
int kvds__shard_announce(void *self, const char *owner, uint64_t epoch,
                         uint32_t n, const struct kvds_proto_item *it,
                         const uint8_t *const *keys);
void kvds__shard_locate_local(void *self, struct reply *r, uint32_t n,
                              const uint8_t *const *keys,
                              const uint32_t *klens);

/* ---- view.c ------------------------------------------------------------- */
/* The maintenance thread: view changes, announcements, reconnections. */
void *kvds__maint_main(void *arg);

/* ---- jobs.c ------------------------------------------------------------- */
/* The resolver's submit (resolver.h). */
int kvds__jobs_submit(void *self, const struct kvds_miss *m);
/* A job thread. */
void *kvds__jobs_main(void *arg);
/* Frees a job that never ran (stopping). */
void kvds__job_drop(struct job *j);

/* ---- split.c ------------------------------------------------------------ */
/* A pull asks for the first SPLIT_HEAD bytes of a value larger than
 * SPLIT_WHOLE_MAX, when job threads are idle; the rest comes in chunks. */
#define SPLIT_HEAD ((uint64_t)1 << 20)
#define SPLIT_WHOLE_MAX ((uint64_t)2 << 20)
/* A split of the value of `key` (size bytes, checksum) from p into base,
 * whose head the pull under way is receiving, with helper jobs queued for
 * the idle job threads; NULL when size <= SPLIT_WHOLE_MAX or out of memory
 * (the value then fails here). The caller owns the object, passes the
 * head's bytes to kvds__split_head_landed as they land, ends the head with
 * kvds__split_head_done and then calls kvds__split_finish exactly once. */
struct split *kvds__split_new(struct kvds_cluster *cl, struct kvds_peer *p,
                              const uint8_t *key, uint32_t klen, uint8_t *base,
                              uint64_t size, uint64_t checksum,
                              uint64_t deadline_us);
void kvds__split_head_landed(struct split *sp, size_t n);
/* The head's pull is over: 0 (all of it landed) or its error. */
void kvds__split_head_done(struct split *sp, int rc);
/* Pulls what is left over c (NULL: c broke), waits for the helpers' chunks
 * (by the split's deadline; past it their connections are shut down) and
 * drops sp; *checksum is the value's. 0: every byte landed and the xxh3 of the
 * whole value matches; else the first error, KVDS_E_PEER (chunks nobody pulled)
 * or KVDS_E_CHECKSUM: the caller aborts the object. */
int kvds__split_finish(struct split *sp, struct kvds_peerconn *c,
                       uint64_t *checksum);
/* A job thread runs a helper job: claims chunks over a connection of its
 * own, then drops its reference. */
void kvds__split_help(struct kvds_cluster *cl, struct split *sp);
/* Drops a helper job's reference without running it (stopping). */
void kvds__split_unref(struct split *sp);

/* ---- metrics.c ---------------------------------------------------------- */
/* Records a pull's latency for p. */
void kvds__peer_lat_record(struct kvds_peer *p, uint64_t us);

#endif
