/*
 * kvds.h — the public API of libkvds, the kvds client library.
 *
 * This is the only public header. The CLI, the benchmarks, the Python
 * extension and the proxy use nothing else.
 *
 * Conventions
 *  - Every function returning int returns 0 on success, a negative errno
 *    (-ECONNREFUSED, ...) for system errors, or a KVDS_E_* code below.
 *    kvds_strerror() describes either kind.
 *  - Out-parameters are written only on success.
 *  - Keys are binary-safe byte strings of 1..KVDS_KEY_MAX bytes.
 *  - Every call that talks to the worker is bounded by one deadline: the
 *    client's I/O timeout (kvds_client_set_timeout(), default 5000 ms)
 *    counted once from the start of the call, plus wait_ms for calls that
 *    may wait for a key. It covers every request the call makes (a put is a
 *    CREATE and a SEAL on a local client; a batch over KVDS_BATCH_MAX is
 *    several requests) and every retry after a signal: the call returns by
 *    then, with KVDS_E_TIMEOUT if it is not done. No call blocks forever.
 *  - A kvds_client is NOT thread-safe: use one client per thread, or guard
 *    it with a lock. Distinct clients are independent.
 *  - The library never prints; kvds_client_errmsg() gives detail about the
 *    last failure on a client.
 */
#ifndef KVDS_KVDS_H
#define KVDS_KVDS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Marks the functions libkvds.so exports: every function declared here and
 * nothing else (the library is compiled with -fvisibility=hidden and
 * KVDS_BUILDING_LIB; tests/unit/test_exports.sh checks the exported set
 * against this header). Expands to nothing for users of the header, and for
 * code that compiles the library's sources into itself (the Python
 * extension), which so exports none of them. */
#if defined(KVDS_BUILDING_LIB) && defined(__GNUC__)
#define KVDS_API __attribute__((visibility("default")))
#else
#define KVDS_API
#endif

#define KVDS_VERSION_STRING "0.1.0"

/* Longest key, in bytes. */
#define KVDS_KEY_MAX 1024
/* Most items in one batch call (larger batches are split by the library). */
#define KVDS_BATCH_MAX 4096

/* Library error codes: a reserved negative range, far from -errno values.
 * X(NAME, value, message). */
#define KVDS_ERRNO_MAP(X)                                                      \
  X(NOTFOUND, -30001, "key not found")                                         \
  X(EXISTS, -30002, "key already exists")                                      \
  X(NOSPACE, -30003, "no space left in the pool (after eviction)")             \
  X(TIMEOUT, -30004, "deadline exceeded")                                      \
  X(PROTO, -30005, "protocol error (malformed frame)")                         \
  X(INVAL, -30006, "invalid argument")                                         \
  X(KEYLEN, -30007, "key length out of range (1..1024 bytes)")                 \
  X(TOOBIG, -30008, "value too large")                                         \
  X(STATE, -30009, "object is not in the required state")                      \
  X(PERM, -30010, "operation not permitted on this object")                    \
  X(CHECKSUM, -30011, "checksum mismatch")                                     \
  X(CLOSED, -30012, "connection closed by peer")                               \
  X(VERSION, -30013, "protocol version mismatch")                              \
  X(NOSHM, -30014, "operation needs a local shared-memory connection")         \
  X(RANGE, -30015, "byte range outside the object")                            \
  X(BADOP, -30016, "unknown operation")                                        \
  X(SHUTDOWN, -30017, "worker is shutting down")                               \
  X(LIMIT, -30018, "request exceeds a protocol limit")                         \
  X(HANDLE, -30019, "invalid or stale handle")                                 \
  X(ADDR, -30020, "invalid address")                                           \
  X(AUTH, -30021, "authentication failed or required (KVDS_AUTH_TOKEN_FILE)")  \
  X(PEER, -30022, "peer worker unreachable, or failed during the transfer")    \
  X(INTR, -30023, "interrupted while waiting for the worker")

enum kvds_errno {
#define KVDS__ERR_ENUM(name, val, msg) KVDS_E_##name = val,
  KVDS_ERRNO_MAP(KVDS__ERR_ENUM)
#undef KVDS__ERR_ENUM
};

/* Human-readable message for a KVDS_E_* code or a negative errno. Never NULL;
 * the string is static. Thread-safe. */
KVDS_API const char *kvds_strerror(int err);
/* Symbolic name ("KVDS_E_NOTFOUND", "ECONNREFUSED"); static, never NULL. */
KVDS_API const char *kvds_err_name(int err);

/* A byte range (h2o style). */
struct kvds_iov {
  void *base;
  size_t len;
};

typedef struct kvds_client kvds_client;

/* ---- Connection ---------------------------------------------------------- */

/*
 * Connects to a worker. `address` is one of
 *   "unix:/path/to.sock" or any string containing '/'  -> Unix socket
 *   "host:port", "tcp://host:port", "[v6]:port"          -> TCP
 * Over a Unix socket the worker passes its pool fd once and data moves
 * through shared memory; over TCP values travel inline.
 * `timeout_ms` bounds the whole connect — TCP connect, authentication,
 * HELLO, the switch to the Unix socket and the mapping of the pool (pages
 * not pre-faulted by the deadline fault in on first use) — and becomes the
 * client's I/O timeout (<= 0 means the default, 5000 ms).
 * Authentication: a worker started with --auth-token-file (required when it
 * listens on a non-loopback address) accepts TCP clients only after they
 * prove the shared token. Over TCP the library reads the token from the
 * file named by $KVDS_AUTH_TOKEN_FILE (private to its owner: mode 0600, at
 * least 16 bytes, trailing newline ignored) when that variable is set; the
 * worker must then prove the token too before anything else is sent, so a
 * client with a token never talks to a worker without it. Unix-socket
 * connections need no token (the socket's file permissions guard them).
 * On success *out owns a new client; free it with kvds_client_close().
 * Errors: KVDS_E_ADDR, -ECONNREFUSED, -ENOENT, KVDS_E_TIMEOUT,
 * KVDS_E_VERSION, -ENOMEM, KVDS_E_AUTH (the worker wants a token and none is
 * set, the tokens differ, the token file is unusable, or the worker does not
 * authenticate while $KVDS_AUTH_TOKEN_FILE is set).
 */
KVDS_API int kvds_client_connect(const char *address, int timeout_ms,
                                 kvds_client **out);

/* Flags for kvds_client_connect_ex. */
/* Do not map every pool page up front (saves ~70 ms per GiB of pool at
 * connect, costs a page fault per page on first use): for short-lived
 * clients such as CLI commands. */
#define KVDS_CONNECT_LAZY_MAP 0x1u
/* Stay on TCP even when the worker is on this machine. */
#define KVDS_CONNECT_TCP_ONLY 0x2u

/* kvds_client_connect with flags (KVDS_CONNECT_*). */
KVDS_API int kvds_client_connect_ex(const char *address, int timeout_ms,
                                    unsigned flags, kvds_client **out);

/* Closes the connection and frees the client. Pins and objects still being
 * written are released by the worker. Pointers obtained from the client
 * become invalid. Over TCP, the staging buffers of kvds_wbufs that were
 * neither sealed nor aborted are not freed: abort them first. NULL is a
 * no-op. */
KVDS_API void kvds_client_close(kvds_client *c);

/* Sets the I/O timeout applied to every later call (ms, > 0). */
KVDS_API void kvds_client_set_timeout(kvds_client *c, int timeout_ms);

/*
 * Interrupt check for calls that wait (for language bindings: Python runs
 * its signal handlers from it). While a call on `c` waits for a reply,
 * fn(ud) is called on the calling thread when the wait is interrupted by a
 * signal (EINTR) and at least every 100 ms. A non-zero return gives the
 * call up: it returns KVDS_E_INTR at once, and the client stays connected
 * and usable. The request is abandoned, not cancelled (the worker still
 * carries it out: a put may be stored, a waiting get still waits there);
 * its reply is read and discarded by a later call when it arrives, and
 * what the reply holds is given back (a GET's pins are released, objects a
 * CREATE made are aborted), so nothing stays pinned or half-written on the
 * worker. Only waits for a reply are interrupted — never a half-sent
 * request or a value being received. At most 64 requests may be abandoned
 * and still unanswered: an interrupt beyond that disconnects the client
 * (KVDS_E_INTR, then KVDS_E_CLOSED). fn must not call into `c`; it is not
 * called during kvds_client_connect. fn == NULL removes the check.
 */
typedef int (*kvds_interrupt_fn)(void *ud);
KVDS_API void kvds_client_set_interrupt(kvds_client *c, kvds_interrupt_fn fn,
                                        void *ud);

/* 1 when the client maps the worker's pool (Unix socket), else 0. */
KVDS_API int kvds_client_is_local(const kvds_client *c);

/* The data region of the worker's pool as this local client maps it: every
 * pointer the client hands out into object data lies in
 * [*base, *base + *size) for as long as the client is open. Meant for
 * registering the mapping once with a device runtime (cudaHostRegister), so
 * device copies to and from objects run at pinned-memory speed.
 * Errors: KVDS_E_NOSHM (not local: TCP, or not mapped). */
KVDS_API int kvds_client_pool_region(const kvds_client *c, void **base,
                                     uint64_t *size);

/* 1 while the connection is up. After an I/O error, protocol error or
 * deadline overrun the client disconnects itself (later calls fail with
 * KVDS_E_CLOSED) and the worker drops this client's pins: from then on the
 * bytes behind zero-copy views of a local client may change. A caller that
 * must not use such bytes checks this after reading a view (or compares the
 * value's checksum). */
KVDS_API int kvds_client_is_connected(const kvds_client *c);

/* Detail about the last failed call on `c` (empty string if none). The
 * string is owned by the client and valid until the next call. */
KVDS_API const char *kvds_client_errmsg(const kvds_client *c);

/* Round trip with the worker. */
KVDS_API int kvds_ping(kvds_client *c);

/* ---- Copying put / get --------------------------------------------------- */

/*
 * Stores `val` under `key` (create + write + seal in one call). The value is
 * copied; the caller keeps ownership of both buffers.
 * Values are 1 byte or more (an empty value is KVDS_E_INVAL).
 * Errors: KVDS_E_EXISTS (a sealed or in-progress object has this key),
 * KVDS_E_NOSPACE, KVDS_E_KEYLEN, KVDS_E_TOOBIG, KVDS_E_INVAL, I/O errors.
 */
KVDS_API int kvds_put(kvds_client *c, const void *key, size_t klen,
                      const void *val, size_t vlen);

/*
 * Batch put of n pairs. results[i] (optional, may be NULL) receives each
 * item's status. Returns 0 if every item succeeded, else the first failing
 * item's error, or an I/O error for the whole batch (then results[] is not
 * written).
 */
KVDS_API int kvds_mput(kvds_client *c, size_t n, const struct kvds_iov *keys,
                       const struct kvds_iov *vals, int *results);

/*
 * Copies the value of `key` into buf[0..cap). Waits up to wait_ms (0 = do
 * not wait) for a key that is absent or still being written. On success
 * *len is the value size. Errors: KVDS_E_NOTFOUND (absent, no wait),
 * KVDS_E_TIMEOUT (still absent after wait_ms), KVDS_E_TOOBIG (cap too small;
 * nothing written), KVDS_E_CHECKSUM (bytes received over TCP do not match).
 */
KVDS_API int kvds_get(kvds_client *c, const void *key, size_t klen, void *buf,
                      size_t cap, size_t *len, int wait_ms);

/*
 * Options of a read. In a cluster a worker that misses a key finds it
 * elsewhere: it asks the key's home worker where it lives and pulls it into
 * its own pool (a replica, announced like any object), then answers; a hint
 * skips the directory: the keys are pulled from that worker first (the home
 * is asked only if it does not have them).
 */
struct kvds_get_opts {
  int wait_ms;      /* as kvds_get / kvds_mget; 0 = do not wait */
  const char *hint; /* member id or data address (<= 255 bytes) of a worker
                       that holds the keys (the prefill worker, say); NULL =
                       none; one that names no live member is ignored */
  unsigned flags;   /* KVDS_GET_* */
};
/* Read this worker's own objects only (no directory, no pulls). */
#define KVDS_GET_LOCAL 0x1u
/* kvds_mget_ex: pin the values without moving their bytes (also over TCP):
 * each found vals[i] has data == NULL, its len and checksum, and a handle
 * that keeps the object from being evicted or freed until kvds_release().
 * For holding what a lookup found until it is read by another client. */
#define KVDS_GET_PIN 0x2u

/* kvds_get with options (o may be NULL). Errors as kvds_get, plus those of a
 * pull that failed (KVDS_E_CHECKSUM, KVDS_E_TIMEOUT, KVDS_E_NOTFOUND when no
 * live worker has the key); KVDS_E_INVAL for unknown flags or
 * KVDS_GET_PIN (which only kvds_mget_ex takes). */
KVDS_API int kvds_get_ex(kvds_client *c, const void *key, size_t klen,
                         void *buf, size_t cap, size_t *len,
                         const struct kvds_get_opts *o);

/* ---- Zero-copy views ----------------------------------------------------- */

/* A pinned, sealed object. */
struct kvds_value {
  const void *data;  /* valid until kvds_release() or kvds_client_close();
                        pinned while kvds_client_is_connected() */
  size_t len;        /* value size */
  uint64_t checksum; /* xxh3-64 of the value, fixed at seal */
  uint64_t handle;   /* library/worker handle; do not interpret */
};

/*
 * Gets n keys. For each found key vals[i] describes the value and the object
 * is pinned (never evicted or freed) until released. On a local client
 * data points straight into the mapped pool (zero copies); over TCP it points
 * into a buffer owned by the client. Items that are absent after wait_ms get
 * results[i] = KVDS_E_NOTFOUND (wait_ms == 0) or KVDS_E_TIMEOUT and their
 * vals[i] is zeroed. results must have n entries.
 * Returns 0 when the request was answered (check results[]), or an error
 * for the whole batch.
 * Every found vals[i] must be released with kvds_release().
 */
KVDS_API int kvds_mget(kvds_client *c, size_t n, const struct kvds_iov *keys,
                       int wait_ms, struct kvds_value *vals, int *results);
/* kvds_mget with options (o may be NULL). */
KVDS_API int kvds_mget_ex(kvds_client *c, size_t n, const struct kvds_iov *keys,
                          const struct kvds_get_opts *o,
                          struct kvds_value *vals, int *results);

/*
 * Reads n keys into the caller's buffers: value i goes to bufs[i].base, which
 * has room for bufs[i].len bytes. results[i] is 0 (lens[i] = the value's
 * size), KVDS_E_TOOBIG (lens[i] = the value's size; nothing written),
 * KVDS_E_NOTFOUND / KVDS_E_TIMEOUT as kvds_mget, or KVDS_E_CHECKSUM (over
 * TCP: the bytes received do not match; the buffer holds them). A local
 * client copies out of the pool (streaming stores for large values, which
 * beat memcpy) and leaves nothing pinned; over TCP the values are received
 * straight into the buffers and verified as they land. o as kvds_mget_ex
 * (NULL = no wait; KVDS_GET_PIN is KVDS_E_INVAL). Returns 0 when the request
 * was answered (check results[]), or an error for the whole batch. lens
 * may be NULL.
 */
KVDS_API int kvds_mget_into(kvds_client *c, size_t n,
                            const struct kvds_iov *keys,
                            const struct kvds_get_opts *o,
                            const struct kvds_iov *bufs, size_t *lens,
                            int *results);

/* Releases pins taken by kvds_mget. Entries with handle 0 are skipped and
 * each released entry is zeroed. Never blocks on the worker's reply. */
KVDS_API int kvds_release(kvds_client *c, size_t n, struct kvds_value *vals);

/* ---- Two-phase writes ---------------------------------------------------- */

/* An object being written (state WRITING). */
struct kvds_wbuf {
  void *data;        /* writable region of len bytes; see kvds_create */
  size_t len;        /* object size */
  uint64_t handle;   /* do not interpret */
  uint64_t checksum; /* set by kvds_mseal when the object is sealed */
};

/*
 * Creates n objects in state WRITING. Only this client may write them; they
 * are invisible to readers until sealed. On a local client bufs[i].data points
 * into shared memory (write there directly, in any order and ranges); over
 * TCP it is a client-owned staging buffer sent at seal.
 * results[i] gets each item's status; failed items have bufs[i] zeroed.
 * Returns 0 when answered, or a whole-batch error.
 */
KVDS_API int kvds_mcreate(kvds_client *c, size_t n, const struct kvds_iov *keys,
                          const size_t *sizes, struct kvds_wbuf *bufs,
                          int *results);

/* Single-object convenience for kvds_mcreate; returns the item's status. */
KVDS_API int kvds_create(kvds_client *c, const void *key, size_t klen,
                         size_t size, struct kvds_wbuf *buf);

/* Copies len bytes at `off` into the object (bounds-checked; KVDS_E_RANGE).
 * Equivalent to writing through buf->data. */
KVDS_API int kvds_write(kvds_client *c, const struct kvds_wbuf *buf, size_t off,
                        const void *src, size_t len);

/*
 * Seals n objects: computes each checksum, makes the objects visible and
 * wakes readers waiting for them. Sealed entries are zeroed except for
 * `checksum`, which holds the sealed value's xxh3-64 (their data pointers
 * must not be used any more): after a whole-batch error (I/O,
 * results[] not written) a zeroed handle is the sign an item was sealed.
 * results[i] (optional) gets each status; returns 0 if all were sealed,
 * else the first error.
 */
KVDS_API int kvds_mseal(kvds_client *c, size_t n, struct kvds_wbuf *bufs,
                        int *results);

/* kvds_mseal for objects whose checksums the caller already has: sums[i] is
 * the xxh3-64 of bufs[i]'s len bytes (kvds_gather returns it while filling
 * the object). Saves kvds_mseal's hashing pass over the data. The worker
 * trusts the value as it trusts kvds_mseal's: a wrong one is stored, and
 * readers over TCP then fail with KVDS_E_CHECKSUM. */
KVDS_API int kvds_mseal_sums(kvds_client *c, size_t n, struct kvds_wbuf *bufs,
                             const uint64_t *sums, int *results);
KVDS_API int kvds_seal(kvds_client *c, struct kvds_wbuf *buf);

/* Abandons objects still being written; their memory is freed. */
KVDS_API int kvds_mabort(kvds_client *c, size_t n, struct kvds_wbuf *bufs);
KVDS_API int kvds_abort(kvds_client *c, struct kvds_wbuf *buf);

/* ---- Index operations ---------------------------------------------------- */

/* Deletes keys. A pinned object disappears from the index at once and its
 * memory is freed when the last pin is released. results (optional) gets
 * each key's status (KVDS_E_NOTFOUND, KVDS_E_STATE while being written);
 * returns 0 if all were deleted, else the first item's error (every key is
 * still attempted), or an I/O error. */
KVDS_API int kvds_mdelete(kvds_client *c, size_t n, const struct kvds_iov *keys,
                          int *results);
KVDS_API int kvds_delete(kvds_client *c, const void *key, size_t klen);

/* present[i] = 1 if keys[i] is sealed, else 0. In a cluster a key the
 * worker does not hold is looked up in the directory (the worker asks each
 * key's home, all in this one round trip): present means some live worker
 * holds it. */
KVDS_API int kvds_exists(kvds_client *c, size_t n, const struct kvds_iov *keys,
                         uint8_t *present);

/* *count = number of leading keys of the chain keys[0..n) that are sealed
 * (cluster-wide, as kvds_exists). */
KVDS_API int kvds_lookup_prefix(kvds_client *c, size_t n,
                                const struct kvds_iov *keys, size_t *count);

enum kvds_state { KVDS_STATE_WRITING = 1, KVDS_STATE_SEALED = 2 };

struct kvds_object_info {
  size_t size;
  uint64_t checksum; /* 0 while writing */
  int state;         /* enum kvds_state */
  uint32_t pins;
  uint64_t ctime_us; /* creation, CLOCK_REALTIME microseconds */
  uint64_t atime_us; /* last access */
};

/* Metadata of one key. */
KVDS_API int kvds_stat(kvds_client *c, const void *key, size_t klen,
                       struct kvds_object_info *info);

struct kvds_list_entry {
  const void *key; /* owned by the list */
  size_t klen;
  struct kvds_object_info info;
};

struct kvds_list {
  size_t n;
  struct kvds_list_entry *entries; /* sorted by key */
  int more;                        /* 1 if truncated at `limit` */
};

/*
 * Lists up to `limit` keys (0 = 1000) that start with prefix (plen may be 0)
 * and sort strictly after `after` (NULL/0 = from the start), in byte order.
 * Page with after = last key returned while (*out)->more. Free the result
 * with kvds_list_free().
 */
KVDS_API int kvds_list(kvds_client *c, const void *prefix, size_t plen,
                       const void *after, size_t alen, size_t limit,
                       struct kvds_list **out);
KVDS_API void kvds_list_free(struct kvds_list *l);

/* ---- Worker ---------------------------------------------------------------*/

/* Worker counters: X(name, meaning), the one list of them. It makes the
 * struct below; the worker's STATS reply carries each as an item of that
 * name, in this order (then items of the worker's own, its limits, which
 * kvds_stats() skips); the worker's /metrics is written from the same
 * snapshot, under Prometheus names that one table of the worker maps them
 * to (src/worker/stats.c; pid and the two _ppm settings are not there); the
 * Python binding's stats() has one key per field. */
#define KVDS_STATS_FIELDS(X)                                                   \
  X(pool_capacity, "bytes usable for objects")                                 \
  X(pool_used, "bytes allocated")                                              \
  X(pool_free, "capacity - used")                                              \
  X(pool_largest_free, "largest contiguous free extent")                       \
  X(objects, "sealed + writing")                                               \
  X(objects_writing, "objects being written")                                  \
  X(pinned_objects, "objects with at least one pin")                           \
  X(evictions, "objects evicted since start")                                  \
  X(evicted_bytes, "bytes evicted since start")                                \
  X(hits, "get items found")                                                   \
  X(misses, "get items not found (after waiting)")                             \
  X(puts, "objects sealed")                                                    \
  X(nospace, "creates refused for lack of space")                              \
  X(connections, "open client connections")                                    \
  X(protocol_errors, "malformed frames received")                              \
  X(uptime_s, "seconds since start")                                           \
  X(pid, "worker process id")                                                  \
  X(high_watermark_ppm, "eviction high watermark, parts per million")          \
  X(eviction_ratio_ppm, "eviction ratio, parts per million")                   \
  X(disk_policy, "disk tier: 0 none, 1 spill, 2 write-through, 3 read-only")   \
  X(disk_objects, "objects in the disk tier's files")                          \
  X(disk_bytes, "bytes of the disk tier's files")                              \
  X(disk_capacity, "disk tier capacity in bytes (0: no limit or no tier)")     \
  X(disk_writes, "objects written to disk (spills and write-throughs)")        \
  X(disk_write_bytes, "value bytes written to disk")                           \
  X(disk_write_errors, "writes to disk that failed (full, unwritable)")        \
  X(disk_reads, "objects read back from disk into DRAM")                       \
  X(disk_read_bytes, "value bytes read back from disk")                        \
  X(disk_corrupt, "files found corrupt or truncated (never served)")           \
  X(disk_evictions, "files removed for the disk capacity")                     \
  X(disk_spills, "objects written to disk before leaving DRAM")                \
  X(disk_spill_skipped, "objects that left DRAM without a copy on disk")

struct kvds_stats {
#define KVDS__STATS_FIELD(name, doc) uint64_t name;
  KVDS_STATS_FIELDS(KVDS__STATS_FIELD)
#undef KVDS__STATS_FIELD
};

/* The worker's counters (its STATS reply, read by name: a counter the
 * worker does not send is 0). */
KVDS_API int kvds_stats(kvds_client *c, struct kvds_stats *out);

/*
 * The worker's view of the cluster as JSON text (the "cluster" object of
 * its HTTP /status): {"mode":"embedded"|"static"|"etcd","name":...,
 * "self":{"id","addr","epoch"}, "etcd":{"endpoints","state":"up"|"down"|
 * "connecting","lease_ttl_s","lease","rejoins","last_error"} (etcd mode),
 * "generation":N, "members":[{"id","addr","capacity","epoch","age_s",
 * "state":"self"|"up"|"stale"|"static","self":bool}, ...]} (sorted by id;
 * docs/cluster.md). On success *json is a malloc'd NUL-terminated string
 * owned by the caller (free() it). Errors: the usual request errors,
 * KVDS_E_BADOP from a worker older than this call, KVDS_E_PROTO.
 */
KVDS_API int kvds_cluster_status(kvds_client *c, char **json);

/* A worker that holds a sealed copy of a key. */
struct kvds_location {
  char id[256];   /* member id (see kvds_cluster_status for its address) */
  uint64_t epoch; /* that worker's incarnation */
};

/*
 * Where key lives: asks the key's home worker (through the worker this
 * client talks to; one round trip for the client). *out gets a malloc'd
 * array of *n locations (free() it; NULL when *n is 0), in the order the
 * home learned of them (the original first unless it was evicted and sealed
 * again). Absent everywhere: 0 with *n = 0. A single worker answers
 * from its own store. Errors: the usual request errors, KVDS_E_KEYLEN.
 */
KVDS_API int kvds_locate(kvds_client *c, const void *key, size_t klen,
                         struct kvds_location **out, size_t *n);

/* Asks the worker to exit cleanly; returns 0 once the worker acknowledged
 * (it then closes every connection and removes its socket). */
KVDS_API int kvds_shutdown(kvds_client *c);

/* ---- Utilities ----------------------------------------------------------- */

/* xxh3-64 of a buffer: the checksum kvds uses. */
KVDS_API uint64_t kvds_checksum(const void *data, size_t len);

/* Copies the n segments one after another to dst (which must hold their
 * total length; no overlaps) and returns the xxh3-64 of the bytes copied —
 * what kvds_checksum(dst, total) would return — computed in the same pass
 * while each segment is still in cache. Large copies use non-temporal
 * stores. For filling an object from scattered sources (the layers of a KV
 * block) and sealing it with kvds_mseal_sums. */
KVDS_API uint64_t kvds_gather(void *dst, const struct kvds_iov *segs, size_t n);

/* Parses "4GiB", "512MiB", "64KiB", "1G", "100" (bytes) into *out. */
KVDS_API int kvds_parse_size(const char *s, uint64_t *out);

#ifdef __cplusplus
}
#endif
#endif
