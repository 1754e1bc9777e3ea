/*
 * etcd.h — a small etcd v3 client over etcd's JSON gateway (HTTP POST to
 * /v3/kv/..., /v3/lease/..., /v3/watch; keys and values base64, int64s as
 * JSON strings), built on libcurl and jansson.
 *
 * Used by the cluster membership: a worker registers its key under a lease,
 * keeps the lease alive and watches the member prefix.
 *
 * Conventions (the house ones)
 *  - int returns: 0 on success, -errno for connection failures
 *    (-ECONNREFUSED, -EHOSTUNREACH, -ECONNRESET, ...), or a KVDS_E_* code:
 *    KVDS_E_TIMEOUT (deadline passed), KVDS_E_NOTFOUND (no such key, or a
 *    lease that is gone), KVDS_E_PROTO (malformed reply), KVDS_E_ADDR (bad
 *    endpoint string), KVDS_E_INVAL (bad argument, or etcd said
 *    INVALID_ARGUMENT), KVDS_E_PERM (etcd refused: auth), KVDS_E_LIMIT (reply
 *    larger than KVDS_ETCD_REPLY_MAX), -EAGAIN (etcd unavailable: no leader),
 *    -EIO (any other etcd error), -ENOMEM.
 *  - Out-parameters are written only on success.
 *  - Keys and values are binary-safe byte strings.
 *  - Deadlines: every call on a kvds_etcd finishes within the handle's
 *    timeout_ms (all endpoints tried included), whatever etcd does. Nothing
 *    here installs signal handlers or uses signals (CURLOPT_NOSIGNAL).
 *  - Thread-safety: a kvds_etcd has a mutex inside; calls from several
 *    threads are serialised. A kvds_etcd_watch runs its own thread and its
 *    own connections and is independent of the kvds_etcd it was opened from.
 *  - Never prints. kvds_etcd_errmsg() tells what the last failure was.
 */
#ifndef KVDS_CLUSTER_ETCD_H
#define KVDS_CLUSTER_ETCD_H

#include <stddef.h>
#include <stdint.h>

#include "kvds/kvds.h"

/* Largest reply body (or watch message) accepted; larger is KVDS_E_LIMIT. */
#define KVDS_ETCD_REPLY_MAX (64u << 20)
/* Most endpoints in one list. */
#define KVDS_ETCD_MAX_ENDPOINTS 16

typedef struct kvds_etcd kvds_etcd;
typedef struct kvds_etcd_watch kvds_etcd_watch;

/* One key-value pair. key/value point into memory owned by whatever holds
 * the pair (a kvds_etcd_range, or a watch note during its callback). */
struct kvds_etcd_kv {
  struct kvds_iov key;
  struct kvds_iov value; /* len 0 (base may be NULL) for an empty value */
  int64_t create_revision;
  int64_t mod_revision;
  int64_t version;
  int64_t lease; /* 0: none */
};

/* The result of a get or range: kvs[0..n) in key order, and the store's
 * revision when the read was served. Owned by the caller; release with
 * kvds_etcd_range_free(). */
struct kvds_etcd_range {
  struct kvds_etcd_kv *kvs;
  size_t n;
  int64_t revision;
};

/* Frees what a range holds (not the struct itself) and zeroes it; a zeroed
 * range and NULL are fine. */
void kvds_etcd_range_free(struct kvds_etcd_range *r);

/*
 * Parses `endpoints` ("host:port[,host:port...]"; each item may also be
 * "etcd://host:port" or "http://host:port", IPv6 as "[addr]:port") and
 * returns a handle in *out. Connects to nothing yet: the first call does.
 * timeout_ms (> 0) bounds every later call.
 * Errors: KVDS_E_ADDR (empty list, bad item, "https://", more than
 * KVDS_ETCD_MAX_ENDPOINTS), KVDS_E_INVAL (timeout_ms <= 0), -ENOMEM.
 */
int kvds_etcd_open(const char *endpoints, int timeout_ms, kvds_etcd **out);
/* Frees the handle and its connection; no other thread may be using it.
 * Watches opened from it are unaffected. NULL is a no-op. */
void kvds_etcd_close(kvds_etcd *e);

/* A description of the last failure on e ("" if none). Valid until the next
 * call on e; with several threads on one handle it may describe another
 * thread's call. */
const char *kvds_etcd_errmsg(kvds_etcd *e);
/* "http://host:port" of the endpoint in use: the first of the list until a
 * call fails to connect and another one answers; it then stays with the one
 * that answered. Valid until the next call on e. */
const char *kvds_etcd_endpoint(kvds_etcd *e);

/* ---- leases ------------------------------------------------------------- */

/* Grants a lease of ttl_s seconds (> 0); *id gets its id (etcd may grant a
 * longer TTL than asked; *ttl_out, if not NULL, gets what was granted). */
int kvds_etcd_lease_grant(kvds_etcd *e, int64_t ttl_s, int64_t *id,
                          int64_t *ttl_out);
/* Renews lease `id` once (one request, one reply); *ttl_s (may be NULL) gets
 * its fresh TTL. Errors: KVDS_E_NOTFOUND if the lease expired or was
 * revoked. Call it every TTL/3 or so. */
int kvds_etcd_lease_keepalive(kvds_etcd *e, int64_t id, int64_t *ttl_s);
/* Revokes lease `id`, deleting every key attached to it.
 * Errors: KVDS_E_NOTFOUND if it is already gone. */
int kvds_etcd_lease_revoke(kvds_etcd *e, int64_t id);

/* ---- keys --------------------------------------------------------------- */

/* Puts key (klen >= 1) = value (vlen may be 0), attached to `lease` (0 for
 * none). *revision (may be NULL) gets the revision of the write.
 * Errors: KVDS_E_NOTFOUND if the lease does not exist. */
int kvds_etcd_put(kvds_etcd *e, const void *key, size_t klen, const void *val,
                  size_t vlen, int64_t lease, int64_t *revision);
/* Reads one key into *out (n == 1; free with kvds_etcd_range_free).
 * Errors: KVDS_E_NOTFOUND if absent. */
int kvds_etcd_get(kvds_etcd *e, const void *key, size_t klen,
                  struct kvds_etcd_range *out);
/* Reads every key that starts with prefix (plen 0: every key) into *out,
 * with the header revision (use revision + 1 to start a watch that misses
 * nothing). An empty result is success with n == 0. */
int kvds_etcd_range_prefix(kvds_etcd *e, const void *prefix, size_t plen,
                           struct kvds_etcd_range *out);
/* Deletes one key; *deleted (may be NULL) gets 0 or 1. Deleting an absent
 * key is success. */
int kvds_etcd_delete(kvds_etcd *e, const void *key, size_t klen,
                     int64_t *deleted);

/* Compacts the history up to `revision` (watches that would start before
 * it get a RESYNC). Errors: KVDS_E_RANGE if revision is already compacted
 * or in the future. */
int kvds_etcd_compact(kvds_etcd *e, int64_t revision);

/* ---- watch -------------------------------------------------------------- */

enum kvds_etcd_event_type { KVDS_ETCD_PUT = 0, KVDS_ETCD_DELETE = 1 };

struct kvds_etcd_event {
  enum kvds_etcd_event_type type;
  struct kvds_etcd_kv kv; /* a DELETE has the key and mod_revision only */
};

enum kvds_etcd_note_kind {
  /* events[0..n): changes in revision order, each delivered exactly once
   * (also across reconnects). */
  KVDS_ETCD_NOTE_EVENTS = 1,
  /* The revision to resume from was compacted away: kvs[0..n) is the whole
   * prefix as of `revision` and replaces what the callback knew; events
   * after `revision` follow. */
  KVDS_ETCD_NOTE_RESYNC = 2,
  /* The stream broke (err says why); the watch retries with bounded backoff
   * and resumes where it stopped. Sent once per outage. */
  KVDS_ETCD_NOTE_DOWN = 3,
  /* The stream is (re)established after a DOWN; revision is the store's. */
  KVDS_ETCD_NOTE_UP = 4,
};

/* What a watch callback receives. Everything it points to is owned by the
 * watch and valid only during the callback. */
struct kvds_etcd_note {
  enum kvds_etcd_note_kind kind;
  const struct kvds_etcd_event *events; /* EVENTS */
  const struct kvds_etcd_kv *kvs;       /* RESYNC */
  size_t n;
  int64_t revision; /* EVENTS: of the last event; RESYNC/UP: the store's */
  int err;          /* DOWN: the error that broke the stream */
};

/* Called on the watch's own thread, one note at a time. It may call
 * functions of other handles; it must not call kvds_etcd_watch_close on its
 * own watch (that returns KVDS_E_INVAL and leaves the thread to end by
 * itself), and should return promptly (it delays close()). */
typedef void (*kvds_etcd_watch_fn)(void *arg, const struct kvds_etcd_note *n);

/*
 * Starts watching every key that starts with prefix (plen >= 1), from
 * start_revision (0: from when the stream is first set up; else from that
 * revision, e.g. a range's revision + 1, which misses nothing). Copies the
 * endpoints and timeout of e and the prefix; e may be closed afterwards. The
 * thread connects, calls fn with the changes, reconnects after a failure
 * (backoff 50 ms doubling to 2 s, resuming at the last delivered revision + 1;
 * RESYNC if that was compacted), until kvds_etcd_watch_close. Errors:
 * KVDS_E_INVAL, -ENOMEM, thread creation failures (-EAGAIN). A watch that
 * cannot reach etcd is not an error here: it is a DOWN note, as is an HTTP
 * error reply (its err mapped as a call's: KVDS_E_PERM, KVDS_E_INVAL, ...,
 * -EIO). A broken connection or a dead host (TCP keepalive: 10 s idle, then
 * 3 probes 5 s apart, so ~25 s) ends the stream; an etcd that is alive but
 * stalled leaves it silent (no events, no DOWN) until it recovers, while
 * calls on a kvds_etcd time out.
 */
int kvds_etcd_watch_open(kvds_etcd *e, const void *prefix, size_t plen,
                         int64_t start_revision, kvds_etcd_watch_fn fn,
                         void *arg, kvds_etcd_watch **out);
/* Stops the thread and frees the watch. Returns within the handle's
 * timeout_ms + 1 s even if a callback is stuck (then the thread is left to
 * finish on its own and cleans up after itself); no callback starts after
 * this returns 0. Returns 0, or KVDS_E_TIMEOUT if the thread was left
 * running. NULL is a no-op. */
int kvds_etcd_watch_close(kvds_etcd_watch *w);
/* Asks the watch to read the whole prefix again (a RESYNC note) and resume
 * after it, as soon as its thread can: the owner learned that etcd may
 * have lost or rewritten its history (e.g. our lease vanished). A stream in
 * progress is broken off. Callable from any thread, also from the
 * callback; never blocks. */
void kvds_etcd_watch_resync(kvds_etcd_watch *w);

/* ---- building blocks (pure functions; tested on their own) -------------- */

struct kvds__etcd_ep {
  char url[300]; /* "http://host:port" ("http://[v6]:port") */
};

/* Parses an endpoint list as kvds_etcd_open does: *eps (malloc'd, caller
 * frees) gets *n >= 1 entries. Errors: KVDS_E_ADDR, -ENOMEM. */
int kvds__etcd_parse_endpoints(const char *s, struct kvds__etcd_ep **eps,
                               size_t *n);

/* Standard base64 with padding. Encoding writes b64_len(n) chars plus a NUL
 * into out (cap must be larger than b64_len(n); else KVDS_E_INVAL).
 * Decoding accepts exactly canonical padded input, writes at most cap bytes
 * and sets *outlen; errors: KVDS_E_PROTO (bad input), KVDS_E_INVAL (cap). */
size_t kvds__etcd_b64_len(size_t n);
int kvds__etcd_b64_encode(const void *in, size_t n, char *out, size_t cap);
int kvds__etcd_b64_decode(const char *in, size_t n, void *out, size_t cap,
                          size_t *outlen);

/* The end of the range of keys that start with prefix (etcd's range_end):
 * the prefix with its last byte below 0xff incremented and the rest cut; a
 * prefix of only 0xff bytes (or empty) gives "\0" (to the end). Writes at
 * most plen bytes into end (sized >= max(plen, 1)); returns its length. */
size_t kvds__etcd_prefix_end(const void *prefix, size_t plen, uint8_t *end);

/* Parses a JSON int64 the gateway's way: a decimal string ("123") or a JSON
 * integer; an absent field (j == NULL) is 0. Errors: KVDS_E_PROTO. */
struct json_t;
int kvds__etcd_json_i64(const struct json_t *j, int64_t *out);

/* Reply parsers. body[0..len) is an HTTP body from etcd (not NUL-terminated
 * and never trusted). On error, msg (cap bytes, may be NULL) gets a
 * description. */
/* A non-2xx reply or one with an "error" field: maps the gRPC code
 * (5 -> KVDS_E_NOTFOUND, 3 -> KVDS_E_INVAL, 4 -> KVDS_E_TIMEOUT,
 * 7/16 -> KVDS_E_PERM, 11 -> KVDS_E_RANGE, 14 -> -EAGAIN, else -EIO);
 * KVDS_E_PROTO if body is
 * not such an object. */
int kvds__etcd_parse_error(const char *body, size_t len, char *msg, size_t cap);
/* /v3/kv/range reply -> *out (caller frees with kvds_etcd_range_free). */
int kvds__etcd_parse_range(const char *body, size_t len,
                           struct kvds_etcd_range *out, char *msg, size_t cap);
/* Replies with a header: *revision (may be NULL) and, for deleterange,
 * *deleted (may be NULL). */
int kvds__etcd_parse_header(const char *body, size_t len, int64_t *revision,
                            int64_t *deleted, char *msg, size_t cap);
/* /v3/lease/grant reply. */
int kvds__etcd_parse_grant(const char *body, size_t len, int64_t *id,
                           int64_t *ttl, char *msg, size_t cap);
/* /v3/lease/keepalive reply ({"result":{...,"TTL":"n"}}); a TTL of 0 or
 * absent is KVDS_E_NOTFOUND (the lease is gone). */
int kvds__etcd_parse_keepalive(const char *body, size_t len, int64_t *ttl,
                               char *msg, size_t cap);

/* One message of the watch stream. */
struct kvds__etcd_watch_msg {
  int created;                    /* the watch was set up */
  int canceled;                   /* etcd cancelled it (see compact_revision) */
  int64_t compact_revision;       /* > 0: the start revision was compacted */
  int64_t revision;               /* header revision (0 if absent) */
  char cluster_id[24];            /* header cluster_id ("" if absent) */
  struct kvds_etcd_event *events; /* malloc'd; the keys/values in it too */
  size_t n;
};
/* Parses one watch-stream line ({"result":{...}} or {"error":{...}}).
 * An "error" message returns -ECONNRESET (the stream must be restarted).
 * Free with kvds__etcd_watch_msg_free. */
int kvds__etcd_parse_watch(const char *body, size_t len,
                           struct kvds__etcd_watch_msg *m, char *msg,
                           size_t cap);
void kvds__etcd_watch_msg_free(struct kvds__etcd_watch_msg *m);

#endif
