/*
 * membership.h — who is in the cluster (built on the etcd client).
 *
 * Three modes:
 *  - embedded: no etcd, no peers; the view is just this worker;
 *  - static:   this worker plus a fixed --peers list;
 *  - etcd:     each worker registers /kvds/<cluster>/workers/<id> under a
 *              lease that a background thread keeps alive, and watches the
 *              prefix; the view is every record there (plus this worker).
 *
 * The member record (the value of the key) is one JSON object:
 *   {"id":"10.0.0.5:31501","addr":"10.0.0.5:31501","capacity":4294967296,
 *    "epoch":1763740000000000,"cluster":"kvds"}
 * id equals the key's last component; epoch is the incarnation's start time
 * (µs since 1970): a restarted worker has a newer one and its record replaces
 * the old. Records that do not parse, or whose id or cluster disagree with
 * the key, are ignored.
 *
 * etcd down: the view stays what it was last seen (nobody is dropped for
 * lack of news), calls are retried with bounded backoff, and the lease is
 * granted again and the record re-put when the old lease turned out to be
 * gone. docs/cluster.md has the whole story.
 *
 * Thread-safety: every function may be called from any thread once
 * kvds_membership_start returned; the object has a mutex inside. Never
 * prints: messages go to the config's log callback.
 */
#ifndef KVDS_CLUSTER_MEMBERSHIP_H
#define KVDS_CLUSTER_MEMBERSHIP_H

#include <stddef.h>
#include <stdint.h>

#define KVDS_MEMBER_ID_MAX 256
#define KVDS_CLUSTER_NAME_MAX 64
#define KVDS_MEMBERSHIP_DEFAULT_TTL_S 10
#define KVDS_MEMBERSHIP_DEFAULT_CLUSTER "kvds"
/* The lease TTLs (--lease-ttl, seconds) a member may ask for. */
#define KVDS_MEMBERSHIP_TTL_MIN_S 1
#define KVDS_MEMBERSHIP_TTL_MAX_S 3600

/* 1 if ttl_s is a lease TTL a member may ask for (MIN_S..MAX_S), else 0. */
static inline int kvds_membership_ttl_ok(int ttl_s) {
  return ttl_s >= KVDS_MEMBERSHIP_TTL_MIN_S &&
         ttl_s <= KVDS_MEMBERSHIP_TTL_MAX_S;
}

enum kvds_membership_mode {
  KVDS_MEMBERSHIP_EMBEDDED = 0,
  KVDS_MEMBERSHIP_STATIC = 1,
  KVDS_MEMBERSHIP_ETCD = 2,
};

/* One member as the view holds it. */
struct kvds_member {
  char id[KVDS_MEMBER_ID_MAX];   /* unique per node and port */
  char addr[KVDS_MEMBER_ID_MAX]; /* data address peers connect to */
  uint64_t capacity;             /* pool bytes (0: unknown, static peers) */
  uint64_t epoch;                /* incarnation start, µs since 1970 */
  int self;                      /* 1 for this worker's own entry */
};

typedef struct kvds_membership kvds_membership;

/* Log callback: level 0 error, 1 warn, 2 info, 3 debug; msg is one line,
 * valid during the call. Called from the membership's threads. */
typedef void (*kvds_membership_log_fn)(void *arg, int level, const char *msg);
/* Called (on a membership thread, without the membership's lock held) after
 * the view changed; read it with kvds_membership_view. */
typedef void (*kvds_membership_change_fn)(void *arg, uint64_t generation);

struct kvds_membership_config {
  enum kvds_membership_mode mode;
  char cluster[KVDS_CLUSTER_NAME_MAX]; /* "" = "kvds" */
  char self_id[KVDS_MEMBER_ID_MAX];    /* "" = self_addr */
  char self_addr[KVDS_MEMBER_ID_MAX];  /* host:port */
  uint64_t capacity;
  uint64_t epoch;      /* 0 = now */
  const char *etcd;    /* ETCD: endpoint list (kvds_etcd_open's form) */
  const char *peers;   /* STATIC: "host:port[,host:port...]" */
  int lease_ttl_s;     /* ETCD: 0 = KVDS_MEMBERSHIP_DEFAULT_TTL_S */
  int etcd_timeout_ms; /* ETCD: per call; 0 = TTL/3 within [300, 2000] */
  kvds_membership_log_fn log;
  void *log_arg;
  kvds_membership_change_fn on_change;
  void *change_arg;
};

/*
 * Checks cfg (cluster name [A-Za-z0-9._-]{1,63}, addresses, endpoint list,
 * TTL kvds_membership_ttl_ok, peers) and creates the membership; nothing is
 * contacted yet. Errors: KVDS_E_INVAL / KVDS_E_ADDR with a one-line reason in
 * err[errcap], -ENOMEM. The strings of cfg are copied.
 */
int kvds_membership_create(const struct kvds_membership_config *cfg,
                           kvds_membership **out, char *err, size_t errcap);
/* Starts the background work (etcd mode: a keeper thread that joins, renews
 * and rejoins, and a watch). Returns at once: an unreachable etcd is not an
 * error (it is retried; the view is just this worker until etcd answers).
 * Errors: thread creation (-EAGAIN), -ENOMEM. */
int kvds_membership_start(kvds_membership *m);
/* Stops the threads and, in etcd mode, revokes the lease so that the others
 * drop this worker at once. Bounded: about 2 x the etcd call timeout + 1 s
 * whatever etcd does (the keeper finishes the call it is in, the revoke is
 * the second; the watch closes at once unless a callback is stuck, see
 * destroy). Idempotent. */
void kvds_membership_stop(kvds_membership *m);
/* Stops (if needed) and frees. NULL is a no-op. If the watch did not stop in
 * time (its thread is inside a callback, e.g. a stuck on_change), the watch
 * thread is turned away from the membership and, if a callback is inside it
 * right now, that callback frees the membership when it returns (so
 * on_change and log may still be called once after destroy returned, in
 * that case only); a few bytes of watch context are then never freed. */
void kvds_membership_destroy(kvds_membership *m);

/* A copy of the view, sorted by id (this worker included, self = 1):
 * *out is malloc'd (free() it), *n entries; *generation (may be NULL) gets
 * the view's generation, which grows on every change. Errors: -ENOMEM. */
int kvds_membership_view(kvds_membership *m, struct kvds_member **out,
                         size_t *n, uint64_t *generation);
uint64_t kvds_membership_generation(kvds_membership *m);
/* How often this worker joined again after its lease vanished (a stall
 * past the TTL, etcd rebuilt). Each rejoin also calls on_change (with a
 * new generation) and re-reads the whole member prefix: whoever keeps
 * state in other workers about this one (the directory) tells it again. */
uint64_t kvds_membership_rejoins(kvds_membership *m);
enum kvds_membership_mode kvds_membership_mode(const kvds_membership *m);
/* 1 when etcd answered the last call and the watch is connected (etcd mode
 * only; 0 otherwise). */
int kvds_membership_etcd_up(kvds_membership *m);
/* Number of members in the view (this worker included). */
size_t kvds_membership_size(kvds_membership *m);

/*
 * The membership as a JSON object (the "cluster" object of /status and of
 * the CLUSTER request): mode, name, self {id, addr, epoch}, etcd {endpoints,
 * state, lease_ttl_s, lease, rejoins, last_error} in etcd mode, and members
 * [{id, addr, capacity, epoch, age_s, state, self}]. A new jansson reference
 * (struct json_t *), NULL on -ENOMEM.
 */
struct json_t;
struct json_t *kvds_membership_json(kvds_membership *m);
/* The same, serialised: a malloc'd NUL-terminated string or NULL. */
char *kvds_membership_json_string(kvds_membership *m);

/* ---- building blocks (pure; tested on their own) ------------------------ */

/* "/kvds/<cluster>/workers/" into out[cap]; returns its length, or 0 if it
 * does not fit. */
size_t kvds__member_prefix(const char *cluster, char *out, size_t cap);
/* 1 iff name is a valid cluster name. */
int kvds__cluster_name_ok(const char *name);
/* 1 iff s is valid UTF-8 (as jansson wants it: no overlong forms, no
 * surrogates, nothing above U+10FFFF). */
int kvds__utf8_ok(const char *s);
/* Replaces, in place, every byte of s that is not part of a valid UTF-8
 * character by '?' (a character cut off at the end included), so that s
 * can go into JSON. The length does not change. */
void kvds__utf8_scrub(char *s);

/* The record of m as malloc'd JSON text (NULL on -ENOMEM). */
char *kvds__member_encode(const struct kvds_member *m, const char *cluster);
/*
 * Decodes a record: key[0..klen) must be prefix + id, value[0..vlen) the
 * JSON object with that id, this cluster, a non-empty addr, capacity >= 0
 * and epoch > 0 (unknown fields are ignored). Fills *out (self = 0).
 * Errors: KVDS_E_PROTO (never trusts the bytes).
 */
int kvds__member_decode(const char *prefix, const char *cluster,
                        const void *key, size_t klen, const void *val,
                        size_t vlen, struct kvds_member *out);
/* The id named by key (prefix + id) into id[cap]; KVDS_E_PROTO if key does
 * not start with prefix, the id is empty, too long or holds a '/' or NUL. */
int kvds__member_key_id(const char *prefix, const void *key, size_t klen,
                        char *id, size_t cap);

/* A view: members sorted by id, no duplicates. */
struct kvds__member_view {
  struct kvds_member *m;
  size_t n, cap;
};
void kvds__view_free(struct kvds__member_view *v);
/* Adds or replaces m: a member with the same id is replaced unless its
 * epoch is newer than m's (an old incarnation's record never hides a new
 * one). Returns 1 if the view changed, 0 if not, -ENOMEM. */
int kvds__view_put(struct kvds__member_view *v, const struct kvds_member *m);
/* Removes the member with this id; 1 if it was there, else 0. */
int kvds__view_delete(struct kvds__member_view *v, const char *id);
/* Index of id, or -1. */
long kvds__view_find(const struct kvds__member_view *v, const char *id);

#endif
