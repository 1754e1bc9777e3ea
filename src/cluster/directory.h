/*
 * directory.h — the object directory a home worker keeps: for each key, which
 * workers (owners) hold a sealed copy of it.
 *
 * An owner is a worker incarnation: its member id (1..255 bytes, no NUL) and
 * its epoch (see membership.h). A key lists at most one location per id: a
 * newer incarnation's announcement replaces the older one's, and a late
 * announcement from an older incarnation is ignored. A key lists at most
 * KVDS_DIR_MAX_OWNERS owners; further announcements are ignored.
 *
 * Keys are binary byte strings of 1..KVDS_KEY_MAX bytes (NUL bytes allowed).
 * The directory copies every key and id it keeps: the caller's buffers are
 * only read during the call.
 *
 * When workers leave, kvds_dir_retain_owners drops their locations; when
 * homes move (a worker joined), kvds_dir_retain_keys drops the keys this
 * worker is no longer home of. A key with no owner left is removed.
 *
 * Thread-safety: one mutex inside; every function may be called from any
 * thread, except kvds_dir_free, which must be the last call. The retain
 * callbacks run with that mutex held and must not call back into the
 * directory (it would deadlock).
 *
 * Errors: KVDS_E_KEYLEN (key length not in 1..KVDS_KEY_MAX), KVDS_E_INVAL
 * (id empty, NULL or longer than 255 bytes), -ENOMEM. A call that fails
 * changes nothing.
 */
#ifndef KVDS_CLUSTER_DIRECTORY_H
#define KVDS_CLUSTER_DIRECTORY_H

#include <stddef.h>
#include <stdint.h>

#define KVDS_DIR_MAX_OWNERS 16 /* per key; more announcements are ignored */

typedef struct kvds_directory kvds_directory;

/* One location of a key, as kvds_dir_lookup copies it out. */
struct kvds_dir_owner {
  char id[256];   /* member id, NUL-terminated */
  uint64_t epoch; /* the incarnation that announced the copy */
};

struct kvds_dir_stats {
  uint64_t keys;      /* keys with at least one owner */
  uint64_t locations; /* (key, owner) pairs */
  uint64_t owners;    /* distinct (id, epoch) owners with a location */
};

/* Creates an empty directory into *out (written only on success); free it
 * with kvds_dir_free. Errors: -ENOMEM, or the -errno of pthread_mutex_init. */
int kvds_dir_new(kvds_directory **out);

/* Frees the directory and everything it holds. NULL is a no-op. No other
 * call may be running or come after. */
void kvds_dir_free(kvds_directory *d);

/* Records that owner (id, epoch) holds a sealed copy of key. Idempotent.
 * If the key already lists the same id with an older epoch, that location is
 * replaced in place (it keeps its position in the lookup order); with a newer
 * epoch, the call is ignored. key and id are copied.
 * Returns 1 if the location was added (or replaced an older one), 0 if it was
 * already there, ignored (newer epoch listed) or the key already has
 * KVDS_DIR_MAX_OWNERS owners; KVDS_E_KEYLEN, KVDS_E_INVAL, -ENOMEM (nothing
 * changed). */
int kvds_dir_add(kvds_directory *d, const void *key, size_t klen,
                 const char *id, uint64_t epoch);

/* Removes owner (id, epoch)'s location of key: both must match exactly.
 * The key's entry is freed when it has no owners left.
 * Returns 1 if removed, 0 if it was not there; KVDS_E_KEYLEN, KVDS_E_INVAL. */
int kvds_dir_remove(kvds_directory *d, const void *key, size_t klen,
                    const char *id, uint64_t epoch);

/* Copies up to max owners of key into out[0..max) (out may be NULL when max
 * is 0), in the order they were added; the copies are the caller's.
 * Returns the total number of owners of key, which may exceed max; 0 for an
 * unknown key or a key length out of range. */
size_t kvds_dir_lookup(kvds_directory *d, const void *key, size_t klen,
                       struct kvds_dir_owner *out, size_t max);

/* Calls keep(id, epoch, ud) once per distinct owner and drops every location
 * of each owner for which it returned 0 (departed workers), then removes
 * keys left with no owner. id is valid during the call only. keep runs with
 * the directory's lock held: it must not call into d.
 * Returns the number of locations dropped. O(owners + keys) when something
 * is dropped, O(owners) otherwise. */
size_t kvds_dir_retain_owners(kvds_directory *d,
                              int (*keep)(const char *id, uint64_t epoch,
                                          void *ud),
                              void *ud);

/* Calls keep(key, klen, ud) once per key and drops every key (with all its
 * locations) for which it returned 0 (keys whose home moved elsewhere).
 * key is valid during the call only; same locking rule as above.
 * Returns the number of keys dropped. */
size_t kvds_dir_retain_keys(kvds_directory *d,
                            int (*keep)(const uint8_t *key, size_t klen,
                                        void *ud),
                            void *ud);

/* Current counts into *out. */
void kvds_dir_stats(kvds_directory *d, struct kvds_dir_stats *out);

#endif
