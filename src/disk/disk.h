/*
 * disk.h — the disk tier's files: one file per object under a directory,
 * and the in-memory index of them (key -> size, LRU order, capacity).
 *
 * Layout: DIR/kvds/<xx>/<32 hex>.kv, where the 32 hex digits are the
 * 128-bit xxh3 of the key and <xx> its first two (256 shard directories).
 * A file is a header (KVDS_DISK_HDR bytes: magic, version, header length,
 * key length, value size, value checksum (xxh3-64, as the store's),
 * creation time, the header's own checksum, then the key) followed by the
 * value. All integers little-endian. A writer writes DIR/kvds/<xx>/
 * .<32 hex>.<pid>.<n>.tmp, fsyncs it (fsync = object), renames it over the
 * final name and fsyncs the shard directory: a reader never sees a partial
 * file, whatever happens to the writer. Temporary files older than an hour
 * are removed by the scan at open (never in read-only mode; younger ones
 * may belong to a live writer on a shared directory).
 *
 * Several processes (even on several hosts, NFS) may use one directory: a
 * key whose file another process wrote is found by kvds_disk_open_obj even
 * when this index does not know it (it is indexed then), and an indexed key
 * whose file went away is dropped from the index when opened.
 *
 * Thread-safety: every call is safe from any thread (the index has its own
 * lock, never held across file I/O or callbacks). The file calls block on
 * the disk: call them off event loops.
 *
 * Errors: KVDS_E_* or a negative errno (-ENOSPC, -EROFS, -EACCES, ...).
 */
#ifndef KVDS_DISK_H
#define KVDS_DISK_H

#include <stddef.h>
#include <stdint.h>

/* Bytes of a file before the value (the value starts block-aligned, so a
 * reader can use O_DIRECT). */
#define KVDS_DISK_HDR 4096u

enum kvds_disk_fsync { KVDS_DISK_FSYNC_NONE = 0, KVDS_DISK_FSYNC_OBJECT = 1 };

struct kvds_disk_config {
  const char *dir;   /* the directory (created, with DIR/kvds, unless
                        read_only) */
  uint64_t capacity; /* most value+header bytes indexed; over it, the
                        least recently used files are removed (0 = no
                        limit) */
  int fsync;         /* enum kvds_disk_fsync */
  int read_only;     /* never create, write or remove anything */
  int direct;        /* read values with O_DIRECT where the filesystem
                        allows it (else buffered) */
  int scan_threads;  /* threads for the scan at open (0 = 2) */
  /* Called (no lock held, on the thread that caused it) for each key
   * removed by capacity eviction, so the caller can tell others that this
   * node no longer holds it. May be NULL. */
  void (*on_evict)(const uint8_t *key, uint32_t klen, void *ud);
  void *ud;
};

struct kvds_disk_counters {
  uint64_t objects, bytes;           /* indexed now (bytes: file sizes) */
  uint64_t capacity;                 /* as configured (0 = no limit) */
  uint64_t writes, write_bytes;      /* files written (value bytes) */
  uint64_t write_errors;             /* writes that failed (ENOSPC, ...) */
  uint64_t reads, read_bytes;        /* values read and verified */
  uint64_t read_errors;              /* I/O errors reading (not corrupt) */
  uint64_t corrupt;                  /* bad header/checksum/size: not served */
  uint64_t evictions, evicted_bytes; /* removed for capacity */
  uint64_t probes, probe_hits;       /* opens of keys the index lacked */
  uint64_t removed;                  /* kvds_disk_remove that found a file */
  uint64_t scan_files, scan_us;      /* the scan at open */
  uint64_t scan_bad;                 /* files the scan skipped (bad header) */
};

struct kvds_disk;

/* Opens (creating unless read_only) cfg->dir, scans it and builds the index
 * (LRU order from the files' modification times). cfg->dir is copied.
 * Returns 0, or an error with a one-line reason in err[errcap] (dir not a
 * directory, not writable, ...). Read-only, cfg->dir must exist (DIR/kvds
 * need not: an empty tier), and the capacity is not enforced (the files
 * are not this process's to remove). */
int kvds_disk_open(const struct kvds_disk_config *cfg, struct kvds_disk **out,
                   char *err, size_t errcap);
/* Frees the index; the files stay. NULL is a no-op. */
void kvds_disk_close(struct kvds_disk *d);

/* 1 when key is indexed (its value size in *size if not NULL), else 0.
 * Memory only; does not touch the LRU order. */
int kvds_disk_has(struct kvds_disk *d, const void *key, uint32_t klen,
                  uint64_t *size);

/* Persists key -> buf[len] (sum = kvds_checksum(buf, len), trusted) as
 * described above and indexes it (replacing an older file of the key),
 * then evicts over capacity. 0, or an error (KVDS_E_STATE when read-only,
 * KVDS_E_TOOBIG when len + header exceeds the capacity, KVDS_E_KEYLEN
 * when klen is 0 or over 4040 (what the header holds), -ENOSPC, ...):
 * nothing is indexed then and no temporary file is left. */
int kvds_disk_write(struct kvds_disk *d, const void *key, uint32_t klen,
                    const void *buf, uint64_t len, uint64_t sum);

/* An object being read. */
struct kvds_disk_obj {
  int fd;
  int direct;        /* fd was opened with O_DIRECT */
  uint64_t size;     /* value bytes */
  uint64_t checksum; /* the header's */
  uint8_t name[16];  /* 128-bit hash of the key */
};

/* Opens key's file and checks its header (magic, version, header checksum,
 * the key itself, file size = header + value). Found through the index or,
 * when the index lacks it, by looking for the file (counted as a probe;
 * indexed when found). 0 and *o filled; KVDS_E_NOTFOUND (no such file; an
 * index entry without a file is dropped); KVDS_E_CHECKSUM (bad header or
 * truncated: counted corrupt, removed unless read-only); -errno. A sound
 * file of another key under the same name (a 128-bit hash collision) is
 * KVDS_E_NOTFOUND and left alone. Marks the key most recently used. On
 * success the caller owns o->fd: pass o to kvds_disk_read_obj or
 * kvds_disk_close_obj. */
int kvds_disk_open_obj(struct kvds_disk *d, const void *key, uint32_t klen,
                       struct kvds_disk_obj *o);
/* Reads the value into dst (o->size bytes) and verifies it against the
 * header's checksum. dst has room for `room` bytes (>= o->size): with
 * O_DIRECT the value is read straight into dst in whole 4 KiB blocks when
 * dst is 4 KiB-aligned and room >= o->size rounded up to 4 KiB, else the
 * read is buffered. 0; KVDS_E_CHECKSUM (bad checksum, or the file shorter
 * than its header says: counted corrupt, the file removed unless
 * read-only, the key dropped from the index); KVDS_E_INVAL (room <
 * o->size); -errno. Closes o either way. */
int kvds_disk_read_obj(struct kvds_disk *d, const void *key, uint32_t klen,
                       struct kvds_disk_obj *o, void *dst, uint64_t room);
/* Closes an object not read. */
void kvds_disk_close_obj(struct kvds_disk_obj *o);

/* Removes key's file and index entry: 0, KVDS_E_NOTFOUND, KVDS_E_STATE
 * (read-only), -errno. */
int kvds_disk_remove(struct kvds_disk *d, const void *key, uint32_t klen);

/* Calls fn for every indexed key, most recently used first (under the
 * index lock: fn must not call into d; key is valid during the call). */
void kvds_disk_foreach(struct kvds_disk *d,
                       void (*fn)(const uint8_t *key, uint32_t klen,
                                  uint64_t size, void *ud),
                       void *ud);

void kvds_disk_counters(struct kvds_disk *d, struct kvds_disk_counters *out);

#endif
