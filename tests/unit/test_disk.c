/*
 * test_disk.c — the disk tier's files and index (src/disk/), on real files
 * in a fresh directory per test. File names and the header layout are
 * checked against this file's own reading of docs/tiers.md, not the
 * module's helpers.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include <cmocka.h>

#include "disk/disk.h"
#include "kvds/kvds.h"

static char g_dir[256];

static int setup(void **state) {
  (void)state;
  snprintf(g_dir, sizeof g_dir, "/tmp/kvds-test-disk-XXXXXX");
  return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  return system(cmd) == 0 ? 0 : -1;
}

/* ---- helpers ------------------------------------------------------------ */

static struct kvds_disk_config base_cfg(void) {
  struct kvds_disk_config c;
  memset(&c, 0, sizeof c);
  c.dir = g_dir;
  c.fsync = KVDS_DISK_FSYNC_OBJECT;
  return c;
}

static struct kvds_disk *open_cfg(const struct kvds_disk_config *c) {
  struct kvds_disk *d = NULL;
  char err[256] = "";
  int rc = kvds_disk_open(c, &d, err, sizeof err);
  if (rc)
    fprintf(stderr, "kvds_disk_open: %s (%s)\n", err, kvds_err_name(rc));
  assert_int_equal(rc, 0);
  return d;
}

static struct kvds_disk *open_dir(void) {
  struct kvds_disk_config c = base_cfg();
  return open_cfg(&c);
}

static const char *key(int i) {
  static char k[64];
  snprintf(k, sizeof k, "key-%d", i);
  return k;
}

static void fill(uint8_t *p, size_t n, unsigned seed) {
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; i++) {
    x = x * 1103515245u + 12345u;
    p[i] = (uint8_t)(x >> 16);
  }
}

static int put(struct kvds_disk *d, const char *k, size_t n, unsigned seed) {
  uint8_t *b = malloc(n ? n : 1);
  assert_non_null(b);
  fill(b, n, seed);
  int rc =
      kvds_disk_write(d, k, (uint32_t)strlen(k), b, n, kvds_checksum(b, n));
  free(b);
  return rc;
}

/* Opens and reads k; the value is checked against fill(seed) when
 * seed >= 0. Returns the first error. */
static int get(struct kvds_disk *d, const char *k, long seed) {
  struct kvds_disk_obj o;
  uint32_t kl = (uint32_t)strlen(k);
  int rc = kvds_disk_open_obj(d, k, kl, &o);
  if (rc)
    return rc;
  uint8_t *b = malloc(o.size + 1);
  assert_non_null(b);
  rc = kvds_disk_read_obj(d, k, kl, &o, b, o.size);
  if (!rc && seed >= 0) {
    uint8_t *w = malloc(o.size + 1);
    fill(w, o.size, (unsigned)seed);
    assert_memory_equal(b, w, o.size);
    free(w);
  }
  free(b);
  return rc;
}

/* The file of key k, named as the docs say: DIR/kvds/<xx>/<32 hex>.kv. */
static const char *fpath(const char *k) {
  static char p[512];
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, XXH3_128bits(k, strlen(k)));
  char hex[33];
  for (int i = 0; i < 16; i++)
    snprintf(hex + 2 * i, 3, "%02x", c.digest[i]);
  snprintf(p, sizeof p, "%s/kvds/%.2s/%s.kv", g_dir, hex, hex);
  return p;
}

static int exists(const char *p) {
  struct stat st;
  return stat(p, &st) == 0;
}

static void flip(const char *p, off_t off) {
  int fd = open(p, O_RDWR);
  assert_true(fd >= 0);
  uint8_t c;
  assert_int_equal(pread(fd, &c, 1, off), 1);
  c ^= 0x5a;
  assert_int_equal(pwrite(fd, &c, 1, off), 1);
  close(fd);
}

static void set_mtime(const char *p, time_t t) {
  struct timespec ts[2] = {{t, 0}, {t, 0}};
  assert_int_equal(utimensat(AT_FDCWD, p, ts, 0), 0);
}

static uint64_t le64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--)
    v = v << 8 | p[i];
  return v;
}
static uint32_t le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
}

/* Files under g_dir (recursively) whose name ends with suffix. */
static int count_files(const char *sub, const char *suffix) {
  char cmd[600];
  snprintf(cmd, sizeof cmd,
           "find '%s/%s' -type f -name '*%s' 2>/dev/null | wc -l", g_dir, sub,
           suffix);
  FILE *f = popen(cmd, "r");
  assert_non_null(f);
  int n = -1;
  assert_int_equal(fscanf(f, "%d", &n), 1);
  pclose(f);
  return n;
}

/* A listing of every file under g_dir: path, size, mtime, content hash. */
static char *snapshot(void) {
  char cmd[600];
  snprintf(cmd, sizeof cmd,
           "cd '%s' && find . -printf '%%p %%s %%T@ %%m\\n' | sort && "
           "find . -type f -exec md5sum {} + | sort",
           g_dir);
  FILE *f = popen(cmd, "r");
  assert_non_null(f);
  size_t cap = 1 << 20, n = 0;
  char *s = malloc(cap);
  assert_non_null(s);
  size_t r;
  while ((r = fread(s + n, 1, cap - 1 - n, f)) > 0)
    n += r;
  s[n] = '\0';
  pclose(f);
  return s;
}

/* ---- round trip --------------------------------------------------------- */

static void test_roundtrip(void **state) {
  (void)state;
  static const size_t sizes[] = {1, 4095, 4096, 4097, (1u << 20) + 7};
  for (int direct = 0; direct <= 1; direct++) {
    struct kvds_disk_config c = base_cfg();
    c.direct = direct;
    struct kvds_disk *d = open_cfg(&c);
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
      size_t n = sizes[i];
      const char *k = key((int)i);
      assert_int_equal(put(d, k, n, (unsigned)(i + 7 * direct)), 0);
      uint64_t sz = 0;
      assert_int_equal(kvds_disk_has(d, k, (uint32_t)strlen(k), &sz), 1);
      assert_int_equal(sz, n);

      /* the header, read independently */
      int fd = open(fpath(k), O_RDONLY);
      assert_true(fd >= 0);
      struct stat st;
      assert_int_equal(fstat(fd, &st), 0);
      assert_int_equal(st.st_size, KVDS_DISK_HDR + n);
      uint8_t *file = malloc(st.st_size);
      assert_int_equal(pread(fd, file, st.st_size, 0), st.st_size);
      close(fd);
      assert_memory_equal(file, "KVDSOBJ", 8);
      assert_int_equal(le32(file + 8), 1);
      assert_int_equal(le32(file + 12), KVDS_DISK_HDR);
      assert_int_equal(le32(file + 16), strlen(k));
      assert_int_equal(le64(file + 24), n);
      assert_int_equal(le64(file + 32), XXH3_64bits(file + KVDS_DISK_HDR, n));
      assert_memory_equal(file + 56, k, strlen(k));
      uint64_t hsum = le64(file + 48);
      memset(file + 48, 0, 8);
      assert_int_equal(hsum, XXH3_64bits(file, 56 + strlen(k)));
      free(file);

      /* reads into aligned and unaligned buffers */
      for (int aligned = 0; aligned <= 1; aligned++) {
        struct kvds_disk_obj o;
        assert_int_equal(kvds_disk_open_obj(d, k, (uint32_t)strlen(k), &o), 0);
        assert_int_equal(o.size, n);
        size_t room = (n + 4095) & ~(size_t)4095;
        uint8_t *mem = NULL, *dst;
        if (aligned) {
          assert_int_equal(posix_memalign((void **)&mem, 4096, room), 0);
          dst = mem;
        } else {
          mem = malloc(n + 1);
          dst = mem + 1;
          room = n;
        }
        assert_int_equal(
            kvds_disk_read_obj(d, k, (uint32_t)strlen(k), &o, dst, room), 0);
        uint8_t *w = malloc(n);
        fill(w, n, (unsigned)(i + 7 * direct));
        assert_memory_equal(dst, w, n);
        free(w);
        free(mem);
      }
    }
    struct kvds_disk_counters ct;
    kvds_disk_counters(d, &ct);
    assert_int_equal(ct.objects, 5);
    assert_int_equal(ct.writes, 5);
    assert_int_equal(ct.reads, 10);
    assert_int_equal(ct.corrupt, 0);
    assert_int_equal(count_files("kvds", ".tmp"), 0);
    kvds_disk_close(d);
  }
}

/* A second write of a key replaces the first (one file, new size). */
static void test_rewrite(void **state) {
  (void)state;
  struct kvds_disk *d = open_dir();
  assert_int_equal(put(d, "k", 10, 1), 0);
  assert_int_equal(put(d, "k", 20, 2), 0);
  uint64_t sz;
  assert_int_equal(kvds_disk_has(d, "k", 1, &sz), 1);
  assert_int_equal(sz, 20);
  struct kvds_disk_counters ct;
  kvds_disk_counters(d, &ct);
  assert_int_equal(ct.objects, 1);
  assert_int_equal(ct.bytes, KVDS_DISK_HDR + 20);
  assert_int_equal(get(d, "k", 2), 0);
  assert_int_equal(count_files("kvds", ".kv"), 1);
  assert_int_equal(kvds_disk_write(d, "", 0, "x", 1, 0), KVDS_E_KEYLEN);
  kvds_disk_close(d);
}

/* ---- corruption --------------------------------------------------------- */

static void test_value_corrupt(void **state) {
  (void)state;
  struct kvds_disk *d = open_dir();
  assert_int_equal(put(d, "v", 10000, 3), 0);
  flip(fpath("v"), KVDS_DISK_HDR + 5000);
  assert_int_equal(get(d, "v", 3), KVDS_E_CHECKSUM);
  struct kvds_disk_counters ct;
  kvds_disk_counters(d, &ct);
  assert_int_equal(ct.corrupt, 1);
  assert_int_equal(ct.reads, 0);
  assert_int_equal(ct.objects, 0);
  assert_false(exists(fpath("v")));
  assert_int_equal(kvds_disk_has(d, "v", 1, NULL), 0);
  assert_int_equal(get(d, "v", 3), KVDS_E_NOTFOUND);
  kvds_disk_close(d);
}

static void test_header_corrupt(void **state) {
  (void)state;
  struct kvds_disk *d = open_dir();
  /* a byte of the key, of the size, of the magic */
  static const off_t offs[] = {57, 25, 0, 13};
  for (int i = 0; i < 4; i++) {
    assert_int_equal(put(d, key(i), 100, 1), 0);
    flip(fpath(key(i)), offs[i]);
    assert_int_equal(get(d, key(i), 1), KVDS_E_CHECKSUM);
    assert_false(exists(fpath(key(i))));
    assert_int_equal(kvds_disk_has(d, key(i), (uint32_t)strlen(key(i)), NULL),
                     0);
  }
  /* truncated before the open (the size does not match the header) */
  assert_int_equal(put(d, "t", 9000, 1), 0);
  assert_int_equal(truncate(fpath("t"), KVDS_DISK_HDR + 8999), 0);
  assert_int_equal(get(d, "t", 1), KVDS_E_CHECKSUM);
  assert_false(exists(fpath("t")));
  /* truncated into the header */
  assert_int_equal(put(d, "h", 10, 1), 0);
  assert_int_equal(truncate(fpath("h"), 100), 0);
  assert_int_equal(get(d, "h", 1), KVDS_E_CHECKSUM);
  /* truncated between the open and the read (buffered and O_DIRECT) */
  for (int direct = 0; direct <= 1; direct++) {
    assert_int_equal(put(d, "u", 9000, 1), 0);
    struct kvds_disk_obj o;
    assert_int_equal(kvds_disk_open_obj(d, "u", 1, &o), 0);
    o.direct = o.direct && direct;
    assert_int_equal(truncate(fpath("u"), KVDS_DISK_HDR + 4096), 0);
    uint8_t *b = NULL;
    assert_int_equal(posix_memalign((void **)&b, 4096, 12288), 0);
    assert_int_equal(kvds_disk_read_obj(d, "u", 1, &o, b, 12288),
                     KVDS_E_CHECKSUM);
    free(b);
    assert_false(exists(fpath("u")));
    assert_int_equal(kvds_disk_has(d, "u", 1, NULL), 0);
  }
  struct kvds_disk_counters ct;
  kvds_disk_counters(d, &ct);
  assert_int_equal(ct.corrupt, 8);
  assert_int_equal(ct.objects, 0);
  kvds_disk_close(d);
}

/* A sound file at key A's name holding key B is not served as A. */
static void test_collision(void **state) {
  (void)state;
  struct kvds_disk *d = open_dir();
  assert_int_equal(put(d, "A", 10, 1), 0);
  assert_int_equal(put(d, "B", 10, 2), 0);
  char pa[512];
  snprintf(pa, sizeof pa, "%s", fpath("A"));
  assert_int_equal(rename(fpath("B"), pa), 0);
  assert_int_equal(get(d, "A", -1), KVDS_E_NOTFOUND);
  assert_int_equal(kvds_disk_has(d, "A", 1, NULL), 0);
  struct kvds_disk_counters ct;
  kvds_disk_counters(d, &ct);
  assert_int_equal(ct.corrupt, 0);
  assert_true(exists(pa)); /* not ours to judge: left alone */
  kvds_disk_close(d);
}

/* ---- capacity ----------------------------------------------------------- */

struct evicted {
  char keys[16][32];
  int n;
};

static void on_evict(const uint8_t *k, uint32_t klen, void *ud) {
  struct evicted *ev = ud;
  assert_true(ev->n < 16 && klen < 32);
  memcpy(ev->keys[ev->n], k, klen);
  ev->keys[ev->n][klen] = '\0';
  ev->n++;
}

static void test_evict(void **state) {
  (void)state;
  struct evicted ev = {.n = 0};
  struct kvds_disk_config c = base_cfg();
  c.capacity = 3 * (KVDS_DISK_HDR + 4096);
  c.on_evict = on_evict;
  c.ud = &ev;
  struct kvds_disk *d = open_cfg(&c);
  for (int i = 0; i < 3; i++)
    assert_int_equal(put(d, key(i), 4096, (unsigned)i), 0);
  assert_int_equal(ev.n, 0);
  /* key-0 used: key-1 is now the least recently used */
  struct kvds_disk_obj o;
  assert_int_equal(kvds_disk_open_obj(d, key(0), 5, &o), 0);
  kvds_disk_close_obj(&o);
  assert_int_equal(put(d, key(3), 4096, 3), 0);
  assert_int_equal(ev.n, 1);
  assert_string_equal(ev.keys[0], "key-1");
  assert_false(exists(fpath("key-1")));
  assert_true(exists(fpath("key-0")));
  assert_int_equal(kvds_disk_has(d, "key-1", 5, NULL), 0);
  /* a bigger value pushes out two */
  assert_int_equal(put(d, key(4), 2 * 4096 + KVDS_DISK_HDR, 4), 0);
  assert_int_equal(ev.n, 3);
  assert_string_equal(ev.keys[1], "key-2");
  assert_string_equal(ev.keys[2], "key-0");
  struct kvds_disk_counters ct;
  kvds_disk_counters(d, &ct);
  assert_int_equal(ct.evictions, 3);
  assert_int_equal(ct.evicted_bytes, 3 * (KVDS_DISK_HDR + 4096));
  assert_true(ct.bytes <= c.capacity);
  assert_int_equal(count_files("kvds", ".kv"), 2);
  /* more than the capacity on its own */
  assert_int_equal(put(d, "big", 3 * 4096 + 2 * KVDS_DISK_HDR + 1, 0),
                   KVDS_E_TOOBIG);
  assert_int_equal(count_files("kvds", ".tmp"), 0);
  kvds_disk_close(d);
}

/* ---- scan at open ------------------------------------------------------- */

struct order {
  char keys[8][32];
  uint64_t sizes[8];
  int n;
};

static void collect(const uint8_t *k, uint32_t klen, uint64_t size, void *ud) {
  struct order *o = ud;
  assert_true(o->n < 8 && klen < 32);
  memcpy(o->keys[o->n], k, klen);
  o->keys[o->n][klen] = '\0';
  o->sizes[o->n++] = size;
}

static void test_reopen(void **state) {
  (void)state;
  struct kvds_disk *d = open_dir();
  for (int i = 0; i < 5; i++)
    assert_int_equal(put(d, key(i), 100 * (size_t)(i + 1), (unsigned)i), 0);
  kvds_disk_close(d);
  /* modification times: key-3 oldest, then 0, 4, 1, 2 newest */
  static const int age_order[] = {3, 0, 4, 1, 2};
  time_t t = time(NULL) - 1000;
  for (int i = 0; i < 5; i++)
    set_mtime(fpath(key(age_order[i])), t + 10 * i);

  struct evicted ev = {.n = 0};
  struct kvds_disk_config c = base_cfg();
  c.capacity = 5 * KVDS_DISK_HDR + 1500; /* exactly the five */
  c.on_evict = on_evict;
  c.ud = &ev;
  c.scan_threads = 3;
  d = open_cfg(&c);
  struct kvds_disk_counters ct;
  kvds_disk_counters(d, &ct);
  assert_int_equal(ct.objects, 5);
  assert_int_equal(ct.scan_files, 5);
  assert_int_equal(ct.scan_bad, 0);
  assert_int_equal(ev.n, 0);
  struct order o = {.n = 0};
  kvds_disk_foreach(d, collect, &o);
  assert_int_equal(o.n, 5);
  for (int i = 0; i < 5; i++) {
    /* most recent first */
    int k = age_order[4 - i];
    assert_string_equal(o.keys[i], key(k));
    assert_int_equal(o.sizes[i], 100 * (k + 1));
    uint64_t sz;
    assert_int_equal(kvds_disk_has(d, key(i), 5, &sz), 1);
    assert_int_equal(sz, 100 * (i + 1));
  }
  assert_int_equal(get(d, key(2), 2), 0);
  /* one more pushes out the oldest by mtime */
  assert_int_equal(put(d, "new", 50, 9), 0);
  assert_int_equal(ev.n, 1);
  assert_string_equal(ev.keys[0], "key-3");
  kvds_disk_close(d);
}

/* A directory without kvds/ yet, and one written with many keys. */
static void test_scan_many(void **state) {
  (void)state;
  struct kvds_disk_config c = base_cfg();
  c.fsync = KVDS_DISK_FSYNC_NONE;
  struct kvds_disk *d = open_cfg(&c);
  for (int i = 0; i < 2000; i++)
    assert_int_equal(put(d, key(i), 64 + (size_t)(i % 100), (unsigned)i), 0);
  kvds_disk_close(d);
  /* a file with a bad header under an object file's name */
  char bad[600];
  snprintf(bad, sizeof bad, "%s/kvds/ab/%s.kv", g_dir,
           "ab000000000000000000000000000000");
  FILE *f = fopen(bad, "w");
  assert_non_null(f);
  fputs("not a kvds file", f);
  fclose(f);
  for (int threads = 1; threads <= 4; threads += 3) {
    c.scan_threads = threads;
    d = open_cfg(&c);
    struct kvds_disk_counters ct;
    kvds_disk_counters(d, &ct);
    assert_int_equal(ct.objects, 2000);
    assert_int_equal(ct.bytes,
                     2000ull * KVDS_DISK_HDR + 2000 * 64 + 20 * (99 * 100 / 2));
    assert_int_equal(ct.scan_files, threads == 1 ? 2001 : 2000);
    assert_int_equal(ct.scan_bad, threads == 1 ? 1 : 0);
    for (int i = 0; i < 2000; i += 97) {
      uint64_t sz;
      assert_int_equal(kvds_disk_has(d, key(i), (uint32_t)strlen(key(i)), &sz),
                       1);
      assert_int_equal(sz, 64 + i % 100);
    }
    assert_int_equal(get(d, key(1999), 1999), 0);
    kvds_disk_close(d);
    assert_false(exists(bad));
  }
}

static void test_stale_tmp(void **state) {
  (void)state;
  struct kvds_disk *d = open_dir();
  kvds_disk_close(d);
  char old[600], young[600];
  snprintf(old, sizeof old, "%s/kvds/3c/.3c00.1.1.tmp", g_dir);
  snprintf(young, sizeof young, "%s/kvds/3c/.3c01.1.2.tmp", g_dir);
  fclose(fopen(old, "w"));
  fclose(fopen(young, "w"));
  set_mtime(old, time(NULL) - 2 * 3600);
  set_mtime(young, time(NULL) - 1800);
  d = open_dir();
  assert_false(exists(old));
  assert_true(exists(young));
  struct kvds_disk_counters ct;
  kvds_disk_counters(d, &ct);
  assert_int_equal(ct.objects, 0);
  assert_int_equal(ct.scan_bad, 0);
  kvds_disk_close(d);
}

/* ---- read-only ---------------------------------------------------------- */

static void test_read_only(void **state) {
  (void)state;
  /* nothing there yet: opens, creates nothing */
  struct kvds_disk_config c = base_cfg();
  c.read_only = 1;
  struct kvds_disk *d = open_cfg(&c);
  kvds_disk_close(d);
  assert_int_equal(count_files(".", ""), 0);
  char kd[300];
  snprintf(kd, sizeof kd, "%s/kvds", g_dir);
  assert_false(exists(kd));

  d = open_dir();
  for (int i = 0; i < 4; i++)
    assert_int_equal(put(d, key(i), 5000, (unsigned)i), 0);
  kvds_disk_close(d);
  flip(fpath(key(1)), KVDS_DISK_HDR + 1); /* value */
  flip(fpath(key(2)), 60);                /* header */
  char old[600];
  snprintf(old, sizeof old, "%s/kvds/00/.00.1.1.tmp", g_dir);
  fclose(fopen(old, "w"));
  set_mtime(old, time(NULL) - 3 * 3600);
  char *before = snapshot();

  struct evicted ev = {.n = 0};
  c.capacity = KVDS_DISK_HDR + 100; /* not enforced read-only */
  c.on_evict = on_evict;
  c.ud = &ev;
  c.direct = 1;
  d = open_cfg(&c);
  struct kvds_disk_counters ct;
  kvds_disk_counters(d, &ct);
  assert_int_equal(ct.objects, 3);
  assert_int_equal(ct.scan_bad, 1);
  assert_int_equal(put(d, "x", 10, 1), KVDS_E_STATE);
  assert_int_equal(kvds_disk_remove(d, key(0), 5), KVDS_E_STATE);
  assert_int_equal(get(d, key(0), 0), 0);
  assert_int_equal(get(d, key(3), 3), 0);
  assert_int_equal(get(d, key(1), 1), KVDS_E_CHECKSUM);
  assert_int_equal(get(d, key(2), 2), KVDS_E_CHECKSUM);
  assert_int_equal(get(d, "absent", -1), KVDS_E_NOTFOUND);
  kvds_disk_counters(d, &ct);
  assert_int_equal(ct.corrupt, 2);
  assert_int_equal(ct.reads, 2);
  assert_int_equal(ct.evictions, 0);
  assert_int_equal(ev.n, 0);
  kvds_disk_close(d);

  char *after = snapshot();
  assert_string_equal(before, after);
  free(before);
  free(after);
}

/* ---- two handles on one directory --------------------------------------- */

static void test_shared_dir(void **state) {
  (void)state;
  struct kvds_disk *a = open_dir(), *b = open_dir();
  assert_int_equal(put(a, "s", 3000, 5), 0);
  assert_int_equal(kvds_disk_has(b, "s", 1, NULL), 0);
  assert_int_equal(get(b, "s", 5), 0);
  uint64_t sz;
  assert_int_equal(kvds_disk_has(b, "s", 1, &sz), 1);
  assert_int_equal(sz, 3000);
  assert_int_equal(get(b, "nope", -1), KVDS_E_NOTFOUND);
  struct kvds_disk_counters ct;
  kvds_disk_counters(b, &ct);
  assert_int_equal(ct.probes, 2);
  assert_int_equal(ct.probe_hits, 1);
  assert_int_equal(ct.objects, 1);
  /* rewritten by a with another size: b follows the file */
  assert_int_equal(put(a, "s", 4000, 6), 0);
  assert_int_equal(get(b, "s", 6), 0);
  assert_int_equal(kvds_disk_has(b, "s", 1, &sz), 1);
  assert_int_equal(sz, 4000);
  /* removed by a: b's entry is dropped */
  assert_int_equal(kvds_disk_remove(a, "s", 1), 0);
  assert_int_equal(kvds_disk_remove(a, "s", 1), KVDS_E_NOTFOUND);
  assert_int_equal(get(b, "s", -1), KVDS_E_NOTFOUND);
  assert_int_equal(kvds_disk_has(b, "s", 1, NULL), 0);
  kvds_disk_counters(b, &ct);
  assert_int_equal(ct.objects, 0);
  kvds_disk_close(a);
  kvds_disk_close(b);
}

struct racer {
  struct kvds_disk *d;
  unsigned seed;
};

static void *race_main(void *arg) {
  struct racer *r = arg;
  uint8_t *b = malloc(20000);
  for (int i = 0; i < 200; i++) {
    size_t n = 10000 + r->seed * 1000;
    fill(b, n, r->seed);
    int rc = kvds_disk_write(r->d, "same", 4, b, n, kvds_checksum(b, n));
    if (rc != 0) {
      fprintf(stderr, "race write: %s\n", kvds_err_name(rc));
      abort();
    }
  }
  free(b);
  return NULL;
}

/* Two handles write one key at once: every file a reader sees is whole. */
static void test_concurrent_writers(void **state) {
  (void)state;
  /* no fsync: atomicity comes from the rename, not from the flushes */
  struct kvds_disk_config c = base_cfg();
  c.fsync = KVDS_DISK_FSYNC_NONE;
  struct racer r[2] = {{open_cfg(&c), 1}, {open_cfg(&c), 2}};
  pthread_t t[2];
  for (int i = 0; i < 2; i++)
    assert_int_equal(pthread_create(&t[i], NULL, race_main, &r[i]), 0);
  struct kvds_disk *rd = open_dir();
  int ok = 0;
  for (int i = 0; i < 200; i++) {
    struct kvds_disk_obj o;
    int rc = kvds_disk_open_obj(rd, "same", 4, &o);
    if (rc == KVDS_E_NOTFOUND)
      continue;
    assert_int_equal(rc, 0);
    uint8_t b[20000];
    assert_int_equal(kvds_disk_read_obj(rd, "same", 4, &o, b, sizeof b), 0);
    ok++;
  }
  for (int i = 0; i < 2; i++)
    assert_int_equal(pthread_join(t[i], NULL), 0);
  long seed = -1;
  for (unsigned s = 1; s <= 2; s++) {
    struct kvds_disk_obj o;
    assert_int_equal(kvds_disk_open_obj(rd, "same", 4, &o), 0);
    if (o.size == 10000 + s * 1000)
      seed = s;
    kvds_disk_close_obj(&o);
  }
  assert_true(seed > 0);
  assert_int_equal(get(rd, "same", seed), 0);
  struct kvds_disk_counters ct;
  kvds_disk_counters(rd, &ct);
  assert_int_equal(ct.corrupt, 0);
  assert_int_equal(count_files("kvds", ".tmp"), 0);
  assert_int_equal(count_files("kvds", ".kv"), 1);
  (void)ok;
  for (int i = 0; i < 2; i++)
    kvds_disk_close(r[i].d);
  kvds_disk_close(rd);
}

/* ---- errors at open and on write ---------------------------------------- */

static void test_bad_dir(void **state) {
  (void)state;
  char file[300], under[320];
  snprintf(file, sizeof file, "%s/plain", g_dir);
  snprintf(under, sizeof under, "%s/sub", file);
  fclose(fopen(file, "w"));
  const char *dirs[] = {file, under};
  for (int ro = 0; ro <= 1; ro++) {
    for (int i = 0; i < 2; i++) {
      struct kvds_disk_config c = base_cfg();
      c.dir = dirs[i];
      c.read_only = ro;
      struct kvds_disk *d = (struct kvds_disk *)1;
      char err[256] = "";
      int rc = kvds_disk_open(&c, &d, err, sizeof err);
      assert_int_equal(rc, -ENOTDIR);
      assert_true(strstr(err, dirs[i]) != NULL);
      assert_true(d == (struct kvds_disk *)1);
    }
  }
  struct kvds_disk_config c = base_cfg();
  char missing[300];
  snprintf(missing, sizeof missing, "%s/missing", g_dir);
  c.dir = missing;
  c.read_only = 1;
  struct kvds_disk *d = NULL;
  char err[256] = "";
  assert_int_equal(kvds_disk_open(&c, &d, err, sizeof err), -ENOENT);
  assert_false(exists(missing));
  /* created, with its parents, when writable */
  snprintf(missing, sizeof missing, "%s/a/b/c", g_dir);
  c.read_only = 0;
  d = open_cfg(&c);
  kvds_disk_close(d);
  kvds_disk_close(NULL);
}

#define CHECK(x)                                                               \
  do {                                                                         \
    if (!(x)) {                                                                \
      fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #x);                  \
      _exit(1);                                                                \
    }                                                                          \
  } while (0)

/* In a child, in a mount namespace of its own, on a 1 MiB tmpfs. */
static int enospc_child(void) {
  if (unshare(CLONE_NEWNS) < 0 ||
      mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
    return 77;
  char small[300];
  snprintf(small, sizeof small, "%s/small", g_dir);
  CHECK(mkdir(small, 0755) == 0);
  if (mount("tmpfs", small, "tmpfs", 0, "size=1m") < 0)
    return 77;
  struct kvds_disk_config c = base_cfg();
  c.dir = small;
  c.direct = 1; /* tmpfs may refuse O_DIRECT: buffered then */
  struct kvds_disk *d = NULL;
  char err[256];
  CHECK(kvds_disk_open(&c, &d, err, sizeof err) == 0);
  static uint8_t big[2u << 20];
  fill(big, sizeof big, 1);
  CHECK(kvds_disk_write(d, "a", 1, big, 256 * 1024,
                        kvds_checksum(big, 256 * 1024)) == 0);
  int rc = kvds_disk_write(d, "b", 1, big, sizeof big,
                           kvds_checksum(big, sizeof big));
  CHECK(rc == -ENOSPC);
  CHECK(kvds_disk_has(d, "b", 1, NULL) == 0);
  struct kvds_disk_counters ct;
  kvds_disk_counters(d, &ct);
  CHECK(ct.write_errors == 1 && ct.writes == 1 && ct.objects == 1);
  char cmd[400];
  snprintf(cmd, sizeof cmd, "test -z \"$(find '%s' -name '*.tmp')\"", small);
  CHECK(system(cmd) == 0);
  struct kvds_disk_obj o;
  CHECK(kvds_disk_open_obj(d, "a", 1, &o) == 0);
  uint8_t *dst = NULL;
  CHECK(posix_memalign((void **)&dst, 4096, 256 * 1024) == 0);
  CHECK(kvds_disk_read_obj(d, "a", 1, &o, dst, 256 * 1024) == 0);
  CHECK(memcmp(dst, big, 256 * 1024) == 0);
  free(dst);
  kvds_disk_close(d);
  umount(small);
  return 0;
}

static void test_enospc(void **state) {
  (void)state;
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0)
    _exit(enospc_child());
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status));
  if (WEXITSTATUS(status) == 77)
    skip(); /* no mount namespace here (not root) */
  assert_int_equal(WEXITSTATUS(status), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_roundtrip, setup, teardown),
      cmocka_unit_test_setup_teardown(test_rewrite, setup, teardown),
      cmocka_unit_test_setup_teardown(test_value_corrupt, setup, teardown),
      cmocka_unit_test_setup_teardown(test_header_corrupt, setup, teardown),
      cmocka_unit_test_setup_teardown(test_collision, setup, teardown),
      cmocka_unit_test_setup_teardown(test_evict, setup, teardown),
      cmocka_unit_test_setup_teardown(test_reopen, setup, teardown),
      cmocka_unit_test_setup_teardown(test_scan_many, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stale_tmp, setup, teardown),
      cmocka_unit_test_setup_teardown(test_read_only, setup, teardown),
      cmocka_unit_test_setup_teardown(test_shared_dir, setup, teardown),
      cmocka_unit_test_setup_teardown(test_concurrent_writers, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_dir, setup, teardown),
      cmocka_unit_test_setup_teardown(test_enospc, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
