/* disk.c — the disk tier's public calls (disk.h): open and close, writes
 * (temporary file, fsync, rename, fsync of the shard directory), opens and
 * verified reads, probes of keys the index lacks, removal. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "disk/internal.h"
#include "kvds/kvds.h"

#define ADD(d, field, v)                                                       \
  atomic_fetch_add_explicit(&(d)->st.field, (v), memory_order_relaxed)

/* ---- Index helpers (lock taken here, never across I/O) ----------------- */

/* Drops key's entry, if indexed; 1 when it was. */
static int index_drop(struct kvds_disk *d, const uint8_t name[16],
                      const void *key, uint32_t klen) {
  pthread_mutex_lock(&d->ix.mu);
  struct kvds__disk_ent *e = kvds__disk_find_locked(&d->ix, name, key, klen);
  if (e)
    kvds__disk_unlink_locked(&d->ix, e);
  pthread_mutex_unlock(&d->ix.mu);
  free(e);
  return e != NULL;
}

/* Indexes e (replacing the key's older entry) as the most recently used
 * entry, then evicts over capacity. */
static void index_put(struct kvds_disk *d, struct kvds__disk_ent *e) {
  pthread_mutex_lock(&d->ix.mu);
  kvds__disk_insert_locked(&d->ix, e);
  struct kvds__disk_ent *victims = kvds__disk_evict_locked(&d->ix);
  pthread_mutex_unlock(&d->ix.mu);
  kvds__disk_reap(d, victims);
}

void kvds__disk_reap(struct kvds_disk *d, struct kvds__disk_ent *chain) {
  char path[KVDS__DISK_PATH];
  while (chain) {
    struct kvds__disk_ent *next = chain->hnext;
    if (!d->cfg.read_only) {
      kvds__disk_path(chain->name, path);
      unlinkat(d->dirfd, path, 0);
    }
    ADD(d, evictions, 1);
    ADD(d, evicted_bytes, chain->fbytes);
    if (d->cfg.on_evict)
      d->cfg.on_evict(chain->key, chain->klen, d->cfg.ud);
    free(chain);
    chain = next;
  }
}

/* Removes path if it is still the file open as fd (another writer may have
 * renamed a new file over it since), unless read-only. */
static void unlink_same(struct kvds_disk *d, const char *path, int fd) {
  struct stat a, b;
  if (d->cfg.read_only || fstat(fd, &a) < 0 ||
      fstatat(d->dirfd, path, &b, AT_SYMLINK_NOFOLLOW) < 0)
    return;
  if (a.st_dev == b.st_dev && a.st_ino == b.st_ino)
    unlinkat(d->dirfd, path, 0);
}

/* A corrupt file: counted, removed unless read-only, key dropped. */
static int corrupt(struct kvds_disk *d, const char *path, int fd,
                   const uint8_t name[16], const void *key, uint32_t klen) {
  ADD(d, corrupt, 1);
  unlink_same(d, path, fd);
  index_drop(d, name, key, klen);
  return KVDS_E_CHECKSUM;
}

/* ---- Open and close ----------------------------------------------------- */

/* mkdir -p */
static int make_dirs(const char *dir) {
  char p[4096];
  size_t n = strlen(dir);
  if (n >= sizeof p)
    return -ENAMETOOLONG;
  memcpy(p, dir, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (p[i] != '/' && p[i] != '\0')
      continue;
    char c = p[i];
    p[i] = '\0';
    if (mkdir(p, 0755) < 0 && errno != EEXIST)
      return -errno;
    p[i] = c;
  }
  return 0;
}

/* Creates DIR/kvds and its shards and proves them writable. */
static int prepare(struct kvds_disk *d, char *err, size_t errcap) {
  char path[64];
  if (mkdirat(d->dirfd, "kvds", 0755) < 0 && errno != EEXIST)
    return kvds_errf(err, errcap, -errno, "disk: cannot create %s/kvds: %s",
                     d->dir, strerror(errno));
  for (int i = 0; i < 256; i++) {
    snprintf(path, sizeof path, "kvds/%02x", i);
    if (mkdirat(d->dirfd, path, 0755) < 0 && errno != EEXIST)
      return kvds_errf(err, errcap, -errno, "disk: cannot create %s/%s: %s",
                       d->dir, path, strerror(errno));
  }
  /* mkdir of an existing directory says nothing about a read-only mount */
  snprintf(path, sizeof path, "kvds/.open.%ld.tmp", (long)getpid());
  int fd =
      openat(d->dirfd, path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0)
    return kvds_errf(err, errcap, -errno, "disk: %s is not writable: %s",
                     d->dir, strerror(errno));
  close(fd);
  unlinkat(d->dirfd, path, 0);
  return 0;
}

int kvds_disk_open(const struct kvds_disk_config *cfg, struct kvds_disk **out,
                   char *err, size_t errcap) {
  if (!cfg || !cfg->dir || !*cfg->dir || !out)
    return kvds_errf(err, errcap, KVDS_E_INVAL, "disk: no directory");
  struct kvds_disk *d = calloc(1, sizeof *d);
  if (!d)
    return kvds_errf(err, errcap, -ENOMEM, "disk: out of memory");
  d->dirfd = -1;
  int rc;
  d->dir = strdup(cfg->dir);
  if (!d->dir ||
      kvds__disk_index_init(&d->ix, cfg->read_only ? 0 : cfg->capacity) != 0) {
    free(d->dir);
    free(d);
    return kvds_errf(err, errcap, -ENOMEM, "disk: out of memory");
  }
  d->cfg = *cfg;
  d->cfg.dir = d->dir;
  atomic_init(&d->direct, cfg->direct != 0);
  /* temporary names differ between handles of one process too */
  atomic_init(&d->seq, kvds_now_ns());
  if (!cfg->read_only && (rc = make_dirs(d->dir)) != 0) {
    rc = kvds_errf(err, errcap, rc, "disk: cannot create %s: %s", d->dir,
                   strerror(-rc));
    goto fail;
  }
  d->dirfd = open(d->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d->dirfd < 0) {
    rc = kvds_errf(err, errcap, -errno, "disk: cannot open directory %s: %s",
                   d->dir, strerror(errno));
    goto fail;
  }
  if (!cfg->read_only && (rc = prepare(d, err, errcap)) != 0)
    goto fail;
  if ((rc = kvds__disk_scan(d)) != 0) {
    rc = kvds_errf(err, errcap, rc, "disk: scanning %s: %s", d->dir,
                   kvds_strerror(rc));
    goto fail;
  }
  *out = d;
  return 0;
fail:
  kvds_disk_close(d);
  return rc;
}

void kvds_disk_close(struct kvds_disk *d) {
  if (!d)
    return;
  kvds__disk_index_fini(&d->ix);
  if (d->dirfd >= 0)
    close(d->dirfd);
  free(d->dir);
  free(d);
}

/* ---- Index queries ------------------------------------------------------ */

int kvds_disk_has(struct kvds_disk *d, const void *key, uint32_t klen,
                  uint64_t *size) {
  uint8_t name[16];
  kvds__disk_name(key, klen, name);
  pthread_mutex_lock(&d->ix.mu);
  struct kvds__disk_ent *e = kvds__disk_find_locked(&d->ix, name, key, klen);
  if (e && size)
    *size = e->size;
  pthread_mutex_unlock(&d->ix.mu);
  return e != NULL;
}

void kvds_disk_foreach(struct kvds_disk *d,
                       void (*fn)(const uint8_t *key, uint32_t klen,
                                  uint64_t size, void *ud),
                       void *ud) {
  pthread_mutex_lock(&d->ix.mu);
  for (struct kvds__disk_ent *e = d->ix.head; e; e = e->next)
    fn(e->key, e->klen, e->size, ud);
  pthread_mutex_unlock(&d->ix.mu);
}

void kvds_disk_counters(struct kvds_disk *d, struct kvds_disk_counters *out) {
  memset(out, 0, sizeof *out);
  pthread_mutex_lock(&d->ix.mu);
  out->objects = d->ix.n;
  out->bytes = d->ix.bytes;
  pthread_mutex_unlock(&d->ix.mu);
  out->capacity = d->cfg.capacity;
#define GET(f) out->f = atomic_load_explicit(&d->st.f, memory_order_relaxed)
  GET(writes);
  GET(write_bytes);
  GET(write_errors);
  GET(reads);
  GET(read_bytes);
  GET(read_errors);
  GET(corrupt);
  GET(evictions);
  GET(evicted_bytes);
  GET(probes);
  GET(probe_hits);
  GET(removed);
  GET(scan_files);
  GET(scan_us);
  GET(scan_bad);
#undef GET
}

/* ---- Writes ------------------------------------------------------------- */

/* Creates a temporary file for path, kvds/xx/.<32 hex>.<pid>.<n>.tmp, its
 * name in tmp[KVDS__DISK_TMP]; the fd or -errno. */
static int create_tmp(struct kvds_disk *d, const char *path, const char *shard,
                      char *tmp) {
  int flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC;
  for (int tries = 0; tries < 16; tries++) {
    snprintf(tmp, KVDS__DISK_TMP, "%s/.%.32s.%ld.%llu.tmp", shard, path + 8,
             (long)getpid(), (unsigned long long)atomic_fetch_add(&d->seq, 1));
    int fd = openat(d->dirfd, tmp, flags, 0644);
    if (fd >= 0)
      return fd;
    int err = errno;
    tmp[0] = '\0'; /* not ours: never to be removed */
    if (err == ENOENT) {
      /* the shard directory went away (removed by hand): make it again */
      mkdirat(d->dirfd, "kvds", 0755);
      if (mkdirat(d->dirfd, shard, 0755) < 0 && errno != EEXIST)
        return -errno;
    } else if (err != EEXIST) {
      /* EEXIST: another handle of this process, or a file left by an
       * earlier process of the same pid; take the next number */
      return -err;
    }
  }
  return -EEXIST;
}

/* Writes key's temporary file (its name in tmp[KVDS__DISK_TMP]); 0 or
 * -errno (a file may be left). */
static int write_tmp(struct kvds_disk *d, const char *path, const char *shard,
                     char *tmp, const void *key, uint32_t klen, const void *buf,
                     uint64_t len, uint64_t sum) {
  int fd = create_tmp(d, path, shard, tmp);
  if (fd < 0)
    return fd;
  uint8_t hdr[KVDS_DISK_HDR];
  kvds__disk_hdr_encode(hdr, key, klen, len, sum, kvds_wall_us());
  int rc = kvds__disk_pwrite(fd, hdr, sizeof hdr, 0);
  if (!rc)
    rc = kvds__disk_pwrite(fd, buf, (size_t)len, KVDS_DISK_HDR);
  if (!rc && d->cfg.fsync == KVDS_DISK_FSYNC_OBJECT && fdatasync(fd) < 0)
    rc = -errno;
  /* NFS reports write-back errors at close */
  if (close(fd) < 0 && !rc && errno != EINTR)
    rc = -errno;
  return rc;
}

static int fsync_dir(struct kvds_disk *d, const char *shard) {
  int fd = openat(d->dirfd, shard, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  int rc = fsync(fd) < 0 ? -errno : 0;
  close(fd);
  return rc;
}

int kvds_disk_write(struct kvds_disk *d, const void *key, uint32_t klen,
                    const void *buf, uint64_t len, uint64_t sum) {
  if (d->cfg.read_only)
    return KVDS_E_STATE;
  if (klen == 0 || klen > KVDS__DISK_MAXKEY)
    return KVDS_E_KEYLEN;
  if (len > SIZE_MAX - KVDS_DISK_HDR ||
      (d->cfg.capacity &&
       (len > d->cfg.capacity || len + KVDS_DISK_HDR > d->cfg.capacity)))
    return KVDS_E_TOOBIG;
  uint8_t name[16];
  char path[KVDS__DISK_PATH], shard[16], tmp[KVDS__DISK_TMP] = "";
  kvds__disk_name(key, klen, name);
  kvds__disk_path(name, path);
  kvds__disk_shard_path(name, shard);
  struct kvds__disk_ent *e = kvds__disk_ent_new(name, key, klen, len);
  if (!e)
    return -ENOMEM;
  int rc = write_tmp(d, path, shard, tmp, key, klen, buf, len, sum);
  if (!rc && renameat(d->dirfd, tmp, d->dirfd, path) < 0)
    rc = -errno;
  if (rc) {
    if (tmp[0])
      unlinkat(d->dirfd, tmp, 0);
    goto fail;
  }
  if (d->cfg.fsync == KVDS_DISK_FSYNC_OBJECT && (rc = fsync_dir(d, shard))) {
    /* the write as a whole failed: do not leave a file that may vanish
     * (it replaced the key's older file, if any) */
    unlinkat(d->dirfd, path, 0);
    index_drop(d, name, key, klen);
    goto fail;
  }
  ADD(d, writes, 1);
  ADD(d, write_bytes, len);
  index_put(d, e);
  return 0;
fail:
  free(e);
  ADD(d, write_errors, 1);
  return rc;
}

/* ---- Reads -------------------------------------------------------------- */

static int clear_direct(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_DIRECT) < 0)
    return -errno;
  return 0;
}

/* Reads up to `want` bytes at off into buf, stopping once `need` are in
 * (or at end of file). A read O_DIRECT refuses (alignment, a short read
 * before) carries on buffered. Bytes read, or -errno. */
static ssize_t read_at(int fd, int *direct, void *buf, uint64_t need,
                       uint64_t want, uint64_t off) {
  uint64_t done = 0;
  while (done < need) {
    ssize_t r = pread(fd, (char *)buf + done, (size_t)(want - done),
                      (off_t)(off + done));
    if (r < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EINVAL && *direct && clear_direct(fd) == 0) {
        *direct = 0;
        want = need;
        continue;
      }
      return -errno;
    }
    if (r == 0)
      break;
    done += (uint64_t)r;
  }
  return (ssize_t)done;
}

int kvds_disk_open_obj(struct kvds_disk *d, const void *key, uint32_t klen,
                       struct kvds_disk_obj *o) {
  if (klen == 0 || klen > KVDS__DISK_MAXKEY)
    return KVDS_E_KEYLEN;
  uint8_t name[16];
  char path[KVDS__DISK_PATH];
  kvds__disk_name(key, klen, name);
  kvds__disk_path(name, path);

  pthread_mutex_lock(&d->ix.mu);
  struct kvds__disk_ent *e = kvds__disk_find_locked(&d->ix, name, key, klen);
  int indexed = e != NULL;
  uint64_t isize = e ? e->size : 0;
  if (e)
    kvds__disk_touch_locked(&d->ix, e);
  pthread_mutex_unlock(&d->ix.mu);
  if (!indexed)
    ADD(d, probes, 1);

  int flags = O_RDONLY | O_CLOEXEC | O_NOFOLLOW;
  int direct = atomic_load(&d->direct);
  int fd = openat(d->dirfd, path, flags | (direct ? O_DIRECT : 0));
  if (fd < 0 && direct && errno == EINVAL) {
    atomic_store(&d->direct, 0); /* tmpfs and friends */
    direct = 0;
    fd = openat(d->dirfd, path, flags);
  }
  if (fd < 0) {
    if (errno == ENOENT) {
      if (indexed)
        index_drop(d, name, key, klen);
      return KVDS_E_NOTFOUND;
    }
    ADD(d, read_errors, 1);
    return -errno;
  }
  _Alignas(4096) uint8_t hdr[KVDS_DISK_HDR];
  struct stat st;
  struct kvds__disk_hdr h;
  int rc;
  if (fstat(fd, &st) < 0) {
    rc = -errno;
    ADD(d, read_errors, 1);
    goto fail;
  }
  ssize_t r = read_at(fd, &direct, hdr, sizeof hdr, sizeof hdr, 0);
  if (r < 0) {
    rc = (int)r;
    ADD(d, read_errors, 1);
    goto fail;
  }
  if ((size_t)r < sizeof hdr || !S_ISREG(st.st_mode) ||
      kvds__disk_hdr_decode(hdr, (uint64_t)st.st_size, &h) != 0) {
    rc = corrupt(d, path, fd, name, key, klen);
    goto fail;
  }
  if (h.klen != klen || memcmp(h.key, key, klen) != 0) {
    /* a sound file of another key with the same 128-bit name */
    rc = KVDS_E_NOTFOUND;
    if (indexed)
      index_drop(d, name, key, klen);
    goto fail;
  }
  if (!indexed || isize != h.size) {
    /* another process wrote it (or rewrote it with another size) */
    struct kvds__disk_ent *ne = kvds__disk_ent_new(name, key, klen, h.size);
    if (!ne) {
      rc = -ENOMEM;
      goto fail;
    }
    index_put(d, ne);
    if (!indexed)
      ADD(d, probe_hits, 1);
  }
  o->fd = fd;
  o->direct = direct;
  o->size = h.size;
  o->checksum = h.checksum;
  memcpy(o->name, name, 16);
  return 0;
fail:
  close(fd);
  return rc;
}

int kvds_disk_read_obj(struct kvds_disk *d, const void *key, uint32_t klen,
                       struct kvds_disk_obj *o, void *dst, uint64_t room) {
  int rc = 0;
  if (o->fd < 0)
    return KVDS_E_INVAL;
  if (room < o->size) {
    rc = KVDS_E_INVAL;
    goto out;
  }
  uint64_t blocks = (o->size + 4095u) & ~(uint64_t)4095u;
  int direct = o->direct;
  uint64_t want = o->size;
  if (direct && ((uintptr_t)dst % 4096u == 0 && room >= blocks))
    want = blocks;
  else if (direct && clear_direct(o->fd) == 0)
    direct = 0;
  ssize_t r = read_at(o->fd, &direct, dst, o->size, want, KVDS_DISK_HDR);
  if (r < 0) {
    ADD(d, read_errors, 1);
    rc = (int)r;
    goto out;
  }
  char path[KVDS__DISK_PATH];
  kvds__disk_path(o->name, path);
  if ((uint64_t)r != o->size || kvds_checksum(dst, o->size) != o->checksum) {
    rc = corrupt(d, path, o->fd, o->name, key, klen);
    goto out;
  }
  ADD(d, reads, 1);
  ADD(d, read_bytes, o->size);
out:
  kvds_disk_close_obj(o);
  return rc;
}

void kvds_disk_close_obj(struct kvds_disk_obj *o) {
  if (o && o->fd >= 0) {
    close(o->fd);
    o->fd = -1;
  }
}

/* ---- Removal ------------------------------------------------------------ */

int kvds_disk_remove(struct kvds_disk *d, const void *key, uint32_t klen) {
  if (d->cfg.read_only)
    return KVDS_E_STATE;
  if (klen == 0 || klen > KVDS__DISK_MAXKEY)
    return KVDS_E_KEYLEN;
  uint8_t name[16];
  char path[KVDS__DISK_PATH];
  kvds__disk_name(key, klen, name);
  kvds__disk_path(name, path);
  index_drop(d, name, key, klen);
  if (unlinkat(d->dirfd, path, 0) < 0)
    return errno == ENOENT ? KVDS_E_NOTFOUND : -errno;
  ADD(d, removed, 1);
  return 0;
}
