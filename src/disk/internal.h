/*
 * internal.h — what the files of src/disk/ share (not a public header):
 * the file format (file.c), the index with its LRU list and capacity
 * (index.c), the scan at open (scan.c) and the handle (disk.c).
 *
 * Lock: d->ix.mu guards the index (entries, LRU list, byte total) and
 * nothing else. It is never held across file I/O or a callback other than
 * kvds_disk_foreach's. Counters are atomics.
 */
#ifndef KVDS_DISK_INTERNAL_H
#define KVDS_DISK_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "disk/disk.h"

/* ---- File format (file.c) ---------------------------------------------- */

/* Header fields (offsets into the KVDS_DISK_HDR bytes, little-endian):
 *   0  magic "KVDSOBJ\0"     8  u32 version      12 u32 header length
 *  16  u32 key length       20  u32 reserved (0) 24 u64 value size
 *  32  u64 value checksum   40  u64 creation time (wall clock, us)
 *  48  u64 header checksum: xxh3-64 of bytes [0, 56 + key length) with
 *      this field zeroed
 *  56  the key; the rest of the header is zero. */
#define KVDS__DISK_MAGIC "KVDSOBJ"
#define KVDS__DISK_VERSION 1u
#define KVDS__DISK_KEYOFF 56u
#define KVDS__DISK_MAXKEY (KVDS_DISK_HDR - KVDS__DISK_KEYOFF)
/* "kvds/xx/" + 32 hex + ".kv" (paths are relative to the directory's fd) */
#define KVDS__DISK_PATH 64
/* "kvds/xx/.<32 hex>.<pid>.<n>.tmp" */
#define KVDS__DISK_TMP 96
/* Temporary files older than this are removed by the scan. */
#define KVDS__DISK_TMP_AGE_S 3600

/* A decoded header; key points into the header buffer. */
struct kvds__disk_hdr {
  uint32_t klen;
  uint64_t size, checksum, ctime_us;
  const uint8_t *key;
};

/* The 128-bit xxh3 of key, in its canonical (big-endian) byte order. */
void kvds__disk_name(const void *key, uint32_t klen, uint8_t name[16]);
/* "kvds/xx/<32 hex>.kv" into path[KVDS__DISK_PATH]. */
void kvds__disk_path(const uint8_t name[16], char *path);
/* "kvds/xx" (the shard directory) into path[16]. */
void kvds__disk_shard_path(const uint8_t name[16], char *path);
/* Parses "<32 hex>.kv" into name; 0 or -1 (not an object file's name). */
int kvds__disk_parse_name(const char *s, uint8_t name[16]);
/* 1 when s is a temporary file's name (".<...>.tmp"). */
int kvds__disk_is_tmp(const char *s);

/* Fills hdr[KVDS_DISK_HDR]. */
void kvds__disk_hdr_encode(uint8_t *hdr, const void *key, uint32_t klen,
                           uint64_t size, uint64_t sum, uint64_t ctime_us);
/* Checks hdr (magic, version, length, key length, header checksum) and
 * that a file of file_size bytes holds the whole value; 0 and *out, or
 * KVDS_E_CHECKSUM. */
int kvds__disk_hdr_decode(const uint8_t *hdr, uint64_t file_size,
                          struct kvds__disk_hdr *out);

/* pread/pwrite of exactly len bytes (EINTR and short transfers retried).
 * pread: the bytes read (fewer at end of file) or -errno. pwrite: 0 or
 * -errno. */
ssize_t kvds__disk_pread(int fd, void *buf, size_t len, uint64_t off);
int kvds__disk_pwrite(int fd, const void *buf, size_t len, uint64_t off);

/* ---- Index (index.c) ---------------------------------------------------- */

struct kvds__disk_ent {
  uint8_t name[16];
  uint32_t klen;
  uint64_t size;                      /* value bytes */
  uint64_t fbytes;                    /* file bytes (header + value) */
  struct kvds__disk_ent *prev, *next; /* LRU list: head = most recent */
  struct kvds__disk_ent *hnext;       /* hash chain */
  uint8_t key[];
};

struct kvds__disk_index {
  pthread_mutex_t mu;
  struct kvds__disk_ent **tab; /* buckets by name */
  size_t nbuckets, n;
  struct kvds__disk_ent *head, *tail;
  uint64_t bytes;
  uint64_t capacity; /* 0 = no limit */
};

int kvds__disk_index_init(struct kvds__disk_index *ix, uint64_t capacity);
void kvds__disk_index_fini(struct kvds__disk_index *ix);
/* A new entry (not linked); NULL when out of memory. Free with free(). */
struct kvds__disk_ent *kvds__disk_ent_new(const uint8_t name[16],
                                          const void *key, uint32_t klen,
                                          uint64_t size);
/* The entry of (name, key), or NULL. */
struct kvds__disk_ent *kvds__disk_find_locked(struct kvds__disk_index *ix,
                                              const uint8_t name[16],
                                              const void *key, uint32_t klen);
/* Links e as the most recently used entry, replacing (and freeing) the
 * entry of the same name if any. */
void kvds__disk_insert_locked(struct kvds__disk_index *ix,
                              struct kvds__disk_ent *e);
/* Moves e to the head of the LRU list. */
void kvds__disk_touch_locked(struct kvds__disk_index *ix,
                             struct kvds__disk_ent *e);
/* Unlinks e from the index (the caller frees it). */
void kvds__disk_unlink_locked(struct kvds__disk_index *ix,
                              struct kvds__disk_ent *e);
/* Unlinks least recently used entries until the bytes fit the capacity
 * and chains them through ->hnext, least recent first; returns the chain
 * (NULL: none). */
struct kvds__disk_ent *kvds__disk_evict_locked(struct kvds__disk_index *ix);

/* ---- The handle (disk.c) ------------------------------------------------ */

struct kvds__disk_stats {
  _Atomic uint64_t writes, write_bytes, write_errors;
  _Atomic uint64_t reads, read_bytes, read_errors, corrupt;
  _Atomic uint64_t evictions, evicted_bytes;
  _Atomic uint64_t probes, probe_hits, removed;
  _Atomic uint64_t scan_files, scan_us, scan_bad;
};

struct kvds_disk {
  struct kvds_disk_config cfg; /* cfg.dir points at dir */
  char *dir;
  int dirfd; /* cfg.dir, O_DIRECTORY; object paths are relative to it */
  _Atomic int direct;   /* O_DIRECT still worth trying */
  _Atomic uint64_t seq; /* temporary file names */
  struct kvds__disk_index ix;
  struct kvds__disk_stats st;
};

/* Removes the entries chained by kvds__disk_evict_locked: their files
 * (unless read-only), counters, on_evict, free. Call with no lock held. */
void kvds__disk_reap(struct kvds_disk *d, struct kvds__disk_ent *chain);

/* ---- Scan (scan.c) ------------------------------------------------------ */

/* Rebuilds d's (empty) index from the files' headers with
 * cfg.scan_threads threads; removes old temporary files and bad files
 * (unless read-only). 0 or -ENOMEM. */
int kvds__disk_scan(struct kvds_disk *d);

#endif
