/* scan.c — the scan at open: rebuilds the index from the files' headers
 * (not their values), shard directories shared out among threads, LRU
 * order from modification times; removes old temporary files and files
 * with bad headers (never in read-only mode). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/array.h"
#include "common/util.h"
#include "disk/internal.h"
#include "kvds/kvds.h"

struct found {
  struct kvds__disk_ent *e;
  int64_t mtime_ns;
  uint64_t ctime_us; /* the header's: orders files of one mtime tick */
};

struct scanner {
  struct kvds_disk *d;
  _Atomic int *next_shard;
  time_t now;
  struct found *v;
  size_t n, cap;
  int rc;
  pthread_t tid;
};

/* Reads one object file's header; 0 and a new entry in s, or an error
 * (KVDS_E_CHECKSUM: a bad file, removed unless read-only). */
static int scan_file(struct scanner *s, int dfd, const char *fname,
                     const uint8_t name[16]) {
  struct kvds_disk *d = s->d;
  int fd = openat(dfd, fname, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0)
    return errno == ENOENT ? 0 : -errno; /* raced with a remover */
  atomic_fetch_add_explicit(&d->st.scan_files, 1, memory_order_relaxed);
  uint8_t hdr[KVDS_DISK_HDR];
  struct stat st;
  struct kvds__disk_hdr h;
  int rc = 0;
  if (fstat(fd, &st) < 0) {
    rc = -errno;
    goto out;
  }
  ssize_t r = kvds__disk_pread(fd, hdr, sizeof hdr, 0);
  if (r < 0) {
    rc = (int)r;
    goto out;
  }
  uint8_t want[16];
  if (!S_ISREG(st.st_mode) || (size_t)r < sizeof hdr ||
      kvds__disk_hdr_decode(hdr, (uint64_t)st.st_size, &h) != 0 ||
      (kvds__disk_name(h.key, h.klen, want), memcmp(want, name, 16) != 0)) {
    atomic_fetch_add_explicit(&d->st.scan_bad, 1, memory_order_relaxed);
    if (!d->cfg.read_only)
      unlinkat(dfd, fname, 0);
    rc = KVDS_E_CHECKSUM;
    goto out;
  }
  if (KVDS_ARRAY_GROW(s->v, s->cap, s->n + 1, 256)) {
    rc = -ENOMEM;
    goto out;
  }
  struct kvds__disk_ent *e = kvds__disk_ent_new(name, h.key, h.klen, h.size);
  if (!e) {
    rc = -ENOMEM;
    goto out;
  }
  s->v[s->n].e = e;
  s->v[s->n].mtime_ns =
      (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
  s->v[s->n].ctime_us = h.ctime_us;
  s->n++;
out:
  close(fd);
  return rc;
}

static void scan_tmp(struct scanner *s, int dfd, const char *fname) {
  struct stat st;
  if (s->d->cfg.read_only || fstatat(dfd, fname, &st, AT_SYMLINK_NOFOLLOW) < 0)
    return;
  if (st.st_mtime < s->now - KVDS__DISK_TMP_AGE_S)
    unlinkat(dfd, fname, 0);
}

static int scan_shard(struct scanner *s, int shard) {
  char path[16];
  snprintf(path, sizeof path, "kvds/%02x", shard);
  int dfd = openat(s->d->dirfd, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0)
    return errno == ENOENT ? 0 : -errno;
  DIR *dir = fdopendir(dfd);
  if (!dir) {
    int rc = -errno;
    close(dfd);
    return rc;
  }
  int rc = 0;
  struct dirent *de;
  uint8_t name[16];
  while (rc != -ENOMEM && (de = readdir(dir)) != NULL) {
    if (kvds__disk_is_tmp(de->d_name))
      scan_tmp(s, dfd, de->d_name);
    else if (kvds__disk_parse_name(de->d_name, name) == 0 && name[0] == shard)
      rc = scan_file(s, dfd, de->d_name, name);
  }
  closedir(dir);
  return rc == -ENOMEM ? rc : 0;
}

static void *scan_main(void *arg) {
  struct scanner *s = arg;
  for (;;) {
    int shard = atomic_fetch_add(s->next_shard, 1);
    if (shard >= 256)
      break;
    int rc = scan_shard(s, shard);
    if (rc) {
      s->rc = rc;
      break;
    }
  }
  return NULL;
}

static int by_mtime(const void *a, const void *b) {
  const struct found *x = a, *y = b;
  if (x->mtime_ns != y->mtime_ns)
    return x->mtime_ns < y->mtime_ns ? -1 : 1;
  /* one timestamp tick (filesystems keep coarse times): the order the
   * headers were written in */
  if (x->ctime_us != y->ctime_us)
    return x->ctime_us < y->ctime_us ? -1 : 1;
  return memcmp(x->e->name, y->e->name, 16);
}

int kvds__disk_scan(struct kvds_disk *d) {
  uint64_t t0 = kvds_now_us();
  int nthreads = d->cfg.scan_threads > 0 ? d->cfg.scan_threads : 2;
  if (nthreads > 256)
    nthreads = 256;
  struct scanner *s = calloc((size_t)nthreads, sizeof *s);
  if (!s)
    return -ENOMEM;
  _Atomic int next_shard = 0;
  time_t now = time(NULL);
  for (int i = 0; i < nthreads; i++) {
    s[i].d = d;
    s[i].next_shard = &next_shard;
    s[i].now = now;
  }
  /* the caller's thread is scanner 0; a thread that cannot be started
   * just leaves its shards to the others */
  int started[256] = {0};
  for (int i = 1; i < nthreads; i++)
    started[i] = pthread_create(&s[i].tid, NULL, scan_main, &s[i]) == 0;
  scan_main(&s[0]);
  size_t total = 0;
  int rc = 0;
  for (int i = 0; i < nthreads; i++) {
    if (i > 0 && started[i])
      pthread_join(s[i].tid, NULL);
    total += s[i].n;
    if (s[i].rc)
      rc = s[i].rc;
  }
  struct found *all = rc ? NULL : malloc((total ? total : 1) * sizeof *all);
  if (!all)
    rc = -ENOMEM;
  size_t n = 0;
  for (int i = 0; i < nthreads; i++) {
    for (size_t j = 0; j < s[i].n; j++) {
      if (all)
        all[n++] = s[i].v[j];
      else
        free(s[i].v[j].e);
    }
    free(s[i].v);
  }
  free(s);
  if (rc)
    return rc;
  /* oldest first: each insert becomes the most recently used */
  qsort(all, n, sizeof *all, by_mtime);
  pthread_mutex_lock(&d->ix.mu);
  for (size_t i = 0; i < n; i++)
    kvds__disk_insert_locked(&d->ix, all[i].e);
  struct kvds__disk_ent *victims = kvds__disk_evict_locked(&d->ix);
  pthread_mutex_unlock(&d->ix.mu);
  free(all);
  kvds__disk_reap(d, victims);
  atomic_store(&d->st.scan_us, kvds_now_us() - t0);
  return 0;
}
