/*
 * test_mixed_clients — four client processes (two on the Unix socket with
 * shared memory, two forced onto TCP) run thousands of mixed operations
 * against one worker with two I/O threads: each on its own key space, whose
 * state it tracks exactly, and all on a shared key space where they race.
 * Every value read is checked byte for byte against the value derived from
 * its key. The parent then checks the final state with list + get.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

#define NCHILD 4
#define OWN_KEYS 256
#define SHARED_KEYS 64
#define OPS 4000
#define MAXVAL (256u << 10)
#define CHILD_TIMEOUT_MS 60000

struct kbuf {
  char s[32];
  size_t n;
};

static void own_key(struct kbuf *k, int child, int j) {
  k->n = (size_t)snprintf(k->s, sizeof k->s, "c%d/k%03d", child, j);
}

static void shared_key(struct kbuf *k, int j) {
  k->n = (size_t)snprintf(k->s, sizeof k->s, "s/%02d", j);
}

struct child {
  int idx;
  kvds_client *c;
  uint64_t rng;
  uint8_t present[OWN_KEYS];
  uint8_t *buf; /* MAXVAL bytes */
  unsigned long ops[32];
};

static size_t vsize(const struct kbuf *k) {
  return kvh_val_size(k->s, k->n, MAXVAL);
}

static void check_value(const struct kbuf *k, const void *data, size_t len,
                        const char *how) {
  KVH_CHECK(kvh_val_ok(k->s, k->n, vsize(k), data, len),
            "%s: value of '%s' is wrong (len %zu, want %zu)", how, k->s, len,
            vsize(k));
}

/* create + write in 1..4 ranges, in random order, through kvds_write or the
 * data pointer + seal. Returns the create status. */
static int create_write_seal(struct child *ch, const struct kbuf *k) {
  size_t len = vsize(k);
  struct kvds_wbuf wb;
  int rc = kvds_create(ch->c, k->s, k->n, len, &wb);
  if (rc)
    return rc;
  KVH_CHECK(wb.len == len && wb.data && wb.handle,
            "create '%s': bad wbuf (len %zu)", k->s, wb.len);
  kvh_val_fill(k->s, k->n, ch->buf, len);
  size_t nr = 1 + kvh_rand(&ch->rng) % 4;
  size_t cut[5] = {0};
  for (size_t i = 1; i < nr; i++)
    cut[i] = len * i / nr;
  cut[nr] = len;
  size_t first = kvh_rand(&ch->rng) % nr;
  for (size_t i = 0; i < nr; i++) {
    size_t r = (first + i) % nr;
    size_t off = cut[r], n = cut[r + 1] - cut[r];
    if (n == 0)
      continue;
    if (kvh_rand(&ch->rng) & 1)
      KVH_OK(kvds_write(ch->c, &wb, off, ch->buf + off, n));
    else
      memcpy((uint8_t *)wb.data + off, ch->buf + off, n);
  }
  /* A range past the end is refused and changes nothing. */
  KVH_EXPECT_RC(kvds_write(ch->c, &wb, len, ch->buf, 1), KVDS_E_RANGE);
  KVH_OK(kvds_seal(ch->c, &wb));
  KVH_CHECK(wb.handle == 0 && wb.data == NULL, "seal did not clear the wbuf");
  return 0;
}

static void verify_get(struct child *ch, const struct kbuf *k, int expect) {
  size_t len = 0;
  int rc = kvds_get(ch->c, k->s, k->n, ch->buf, MAXVAL, &len, 0);
  KVH_CHECK(rc == expect, "get '%s': %s, want %s (%s)", k->s, kvds_err_name(rc),
            kvds_err_name(expect), kvds_client_errmsg(ch->c));
  if (rc == 0)
    check_value(k, ch->buf, len, "get");
}

static void op_own(struct child *ch, int op) {
  struct kbuf k;
  int j = (int)(kvh_rand(&ch->rng) % OWN_KEYS);
  own_key(&k, ch->idx, j);
  kvds_client *c = ch->c;
  ch->ops[op]++;
  switch (op) {
  case 0: { /* put */
    size_t len = vsize(&k);
    kvh_val_fill(k.s, k.n, ch->buf, len);
    int rc = kvds_put(c, k.s, k.n, ch->buf, len);
    KVH_CHECK(rc == (ch->present[j] ? KVDS_E_EXISTS : 0), "put '%s': %s", k.s,
              kvds_err_name(rc));
    ch->present[j] = 1;
    break;
  }
  case 1: { /* mput of up to 8 consecutive keys */
    int n = 1 + (int)(kvh_rand(&ch->rng) % 8);
    struct kbuf ks[8];
    struct kvds_iov keys[8], vals[8];
    int res[8], want_rc = 0;
    for (int i = 0; i < n; i++) {
      own_key(&ks[i], ch->idx, (j + i) % OWN_KEYS);
      keys[i] = (struct kvds_iov){ks[i].s, ks[i].n};
      size_t len = vsize(&ks[i]);
      vals[i] = (struct kvds_iov){kvh_val_new(ks[i].s, ks[i].n, len), len};
      if (!want_rc && ch->present[(j + i) % OWN_KEYS])
        want_rc = KVDS_E_EXISTS;
    }
    int rc = kvds_mput(c, (size_t)n, keys, vals, res);
    KVH_CHECK(rc == want_rc, "mput: %s, want %s", kvds_err_name(rc),
              kvds_err_name(want_rc));
    for (int i = 0; i < n; i++) {
      int jj = (j + i) % OWN_KEYS;
      KVH_CHECK(res[i] == (ch->present[jj] ? KVDS_E_EXISTS : 0),
                "mput item '%s': %s", ks[i].s, kvds_err_name(res[i]));
      ch->present[jj] = 1;
      free(vals[i].base);
    }
    break;
  }
  case 2: /* get */
    verify_get(ch, &k, ch->present[j] ? 0 : KVDS_E_NOTFOUND);
    break;
  case 3: { /* mget + release */
    int n = 1 + (int)(kvh_rand(&ch->rng) % 8);
    struct kbuf ks[8];
    struct kvds_iov keys[8];
    struct kvds_value vals[8];
    int res[8];
    for (int i = 0; i < n; i++) {
      own_key(&ks[i], ch->idx, (j + i * 3) % OWN_KEYS);
      keys[i] = (struct kvds_iov){ks[i].s, ks[i].n};
    }
    KVH_OK(kvds_mget(c, (size_t)n, keys, 0, vals, res));
    for (int i = 0; i < n; i++) {
      int jj = (j + i * 3) % OWN_KEYS;
      if (!ch->present[jj]) {
        KVH_CHECK(res[i] == KVDS_E_NOTFOUND && vals[i].handle == 0,
                  "mget '%s' (absent): %s", ks[i].s, kvds_err_name(res[i]));
        continue;
      }
      KVH_CHECK(res[i] == 0, "mget '%s': %s", ks[i].s, kvds_err_name(res[i]));
      check_value(&ks[i], vals[i].data, vals[i].len, "mget");
      KVH_CHECK(vals[i].checksum == kvds_checksum(vals[i].data, vals[i].len),
                "mget '%s': checksum field wrong", ks[i].s);
    }
    KVH_OK(kvds_release(c, (size_t)n, vals));
    for (int i = 0; i < n; i++)
      KVH_CHECK(vals[i].handle == 0 && vals[i].data == NULL,
                "release did not clear entry %d", i);
    break;
  }
  case 4: { /* create / write ranges / seal */
    int rc = create_write_seal(ch, &k);
    KVH_CHECK(rc == (ch->present[j] ? KVDS_E_EXISTS : 0), "create '%s': %s",
              k.s, kvds_err_name(rc));
    ch->present[j] = 1;
    break;
  }
  case 5: { /* create, half write, abort: never visible */
    if (ch->present[j])
      break;
    size_t len = vsize(&k);
    struct kvds_wbuf wb;
    KVH_OK(kvds_create(c, k.s, k.n, len, &wb));
    kvh_val_fill(k.s, k.n, ch->buf, len);
    KVH_OK(kvds_write(c, &wb, 0, ch->buf, len / 2));
    struct kvds_iov ki = {k.s, k.n};
    uint8_t pr = 9;
    KVH_OK(kvds_exists(c, 1, &ki, &pr));
    KVH_CHECK(pr == 0, "a WRITING object is visible to exists");
    verify_get(ch, &k, KVDS_E_NOTFOUND);
    struct kvds_object_info info;
    KVH_OK(kvds_stat(c, k.s, k.n, &info));
    KVH_CHECK(info.state == KVDS_STATE_WRITING && info.size == len,
              "stat of a WRITING object: state %d size %zu", info.state,
              info.size);
    KVH_EXPECT_RC(kvds_delete(c, k.s, k.n), KVDS_E_STATE);
    KVH_OK(kvds_abort(c, &wb));
    KVH_EXPECT_RC(kvds_stat(c, k.s, k.n, &info), KVDS_E_NOTFOUND);
    break;
  }
  case 6: { /* delete */
    int rc = kvds_delete(c, k.s, k.n);
    KVH_CHECK(rc == (ch->present[j] ? 0 : KVDS_E_NOTFOUND), "delete '%s': %s",
              k.s, kvds_err_name(rc));
    ch->present[j] = 0;
    break;
  }
  case 7: { /* exists on 16 keys */
    struct kbuf ks[16];
    struct kvds_iov keys[16];
    uint8_t pr[16];
    for (int i = 0; i < 16; i++) {
      own_key(&ks[i], ch->idx, (j + i * 7) % OWN_KEYS);
      keys[i] = (struct kvds_iov){ks[i].s, ks[i].n};
    }
    KVH_OK(kvds_exists(c, 16, keys, pr));
    for (int i = 0; i < 16; i++)
      KVH_CHECK(pr[i] == ch->present[(j + i * 7) % OWN_KEYS],
                "exists '%s' = %d, want %d", ks[i].s, pr[i],
                ch->present[(j + i * 7) % OWN_KEYS]);
    break;
  }
  case 8: { /* lookup_prefix over a chain of 8 */
    struct kbuf ks[8];
    struct kvds_iov keys[8];
    size_t want = 0, got = 99;
    int gap = 0;
    for (int i = 0; i < 8; i++) {
      int jj = (j + i) % OWN_KEYS;
      own_key(&ks[i], ch->idx, jj);
      keys[i] = (struct kvds_iov){ks[i].s, ks[i].n};
      if (!gap && ch->present[jj])
        want++;
      else
        gap = 1;
    }
    KVH_OK(kvds_lookup_prefix(c, 8, keys, &got));
    KVH_CHECK(got == want, "lookup_prefix from '%s' = %zu, want %zu", ks[0].s,
              got, want);
    break;
  }
  case 9: { /* list own prefix, paged */
    char prefix[16];
    size_t plen = (size_t)snprintf(prefix, sizeof prefix, "c%d/", ch->idx);
    uint8_t seen[OWN_KEYS] = {0};
    char after[32];
    size_t alen = 0, total = 0;
    for (int page = 0; page < OWN_KEYS + 2; page++) {
      struct kvds_list *l;
      KVH_OK(kvds_list(c, prefix, plen, alen ? after : NULL, alen, 50, &l));
      for (size_t i = 0; i < l->n; i++) {
        const struct kvds_list_entry *e = &l->entries[i];
        int jj;
        char ks[32];
        KVH_CHECK(e->klen > plen && e->klen < sizeof ks,
                  "list returned a foreign key (%zu bytes)", e->klen);
        memcpy(ks, e->key, e->klen);
        ks[e->klen] = 0;
        KVH_CHECK(sscanf(ks + plen, "k%3d", &jj) == 1 && jj >= 0 &&
                      jj < OWN_KEYS,
                  "list returned a foreign key '%s'", ks);
        struct kbuf ek;
        own_key(&ek, ch->idx, jj);
        KVH_CHECK(ek.n == e->klen && memcmp(ek.s, e->key, ek.n) == 0 &&
                      !seen[jj],
                  "list: bad or repeated key '%.*s'", (int)e->klen,
                  (const char *)e->key);
        KVH_CHECK(
            e->info.state == KVDS_STATE_SEALED && e->info.size == vsize(&ek),
            "list '%s': state %d size %zu", ek.s, e->info.state, e->info.size);
        if (i > 0) {
          const struct kvds_list_entry *p = &l->entries[i - 1];
          KVH_CHECK(p->klen == e->klen && memcmp(p->key, e->key, e->klen) < 0,
                    "list not sorted");
        }
        seen[jj] = 1;
        total++;
      }
      int more = l->more;
      if (l->n) {
        alen = l->entries[l->n - 1].klen;
        memcpy(after, l->entries[l->n - 1].key, alen);
      }
      KVH_CHECK(!more || l->n == 50, "list: more set on a short page");
      kvds_list_free(l);
      if (!more)
        break;
    }
    for (int i = 0; i < OWN_KEYS; i++)
      KVH_CHECK(seen[i] == ch->present[i], "list: key %d seen %d present %d", i,
                seen[i], ch->present[i]);
    (void)total;
    break;
  }
  case 10: { /* stat */
    struct kvds_object_info info;
    int rc = kvds_stat(c, k.s, k.n, &info);
    KVH_CHECK(rc == (ch->present[j] ? 0 : KVDS_E_NOTFOUND), "stat '%s': %s",
              k.s, kvds_err_name(rc));
    if (rc)
      break;
    size_t len = vsize(&k);
    kvh_val_fill(k.s, k.n, ch->buf, len);
    KVH_CHECK(info.size == len && info.state == KVDS_STATE_SEALED &&
                  info.checksum == kvds_checksum(ch->buf, len) &&
                  info.pins == 0 && info.ctime_us > 0 &&
                  info.atime_us >= info.ctime_us,
              "stat '%s': size %zu state %d pins %u", k.s, info.size,
              info.state, info.pins);
    break;
  }
  }
}

static void op_shared(struct child *ch) {
  struct kbuf k;
  shared_key(&k, (int)(kvh_rand(&ch->rng) % SHARED_KEYS));
  kvds_client *c = ch->c;
  int op = (int)(kvh_rand(&ch->rng) % 6);
  ch->ops[16 + op]++;
  int rc;
  switch (op) {
  case 0: {
    size_t len = vsize(&k);
    kvh_val_fill(k.s, k.n, ch->buf, len);
    rc = kvds_put(c, k.s, k.n, ch->buf, len);
    KVH_CHECK(rc == 0 || rc == KVDS_E_EXISTS, "shared put '%s': %s", k.s,
              kvds_err_name(rc));
    break;
  }
  case 1: {
    size_t len = 0;
    rc = kvds_get(c, k.s, k.n, ch->buf, MAXVAL, &len, 0);
    KVH_CHECK(rc == 0 || rc == KVDS_E_NOTFOUND, "shared get '%s': %s", k.s,
              kvds_err_name(rc));
    if (rc == 0)
      check_value(&k, ch->buf, len, "shared get");
    break;
  }
  case 2: {
    struct kbuf ks[4];
    struct kvds_iov keys[4];
    struct kvds_value vals[4];
    int res[4];
    for (int i = 0; i < 4; i++) {
      shared_key(&ks[i], (int)(kvh_rand(&ch->rng) % SHARED_KEYS));
      keys[i] = (struct kvds_iov){ks[i].s, ks[i].n};
    }
    KVH_OK(kvds_mget(c, 4, keys, 0, vals, res));
    for (int i = 0; i < 4; i++) {
      KVH_CHECK(res[i] == 0 || res[i] == KVDS_E_NOTFOUND,
                "shared mget '%s': %s", ks[i].s, kvds_err_name(res[i]));
      if (res[i] == 0)
        check_value(&ks[i], vals[i].data, vals[i].len, "shared mget");
    }
    KVH_OK(kvds_release(c, 4, vals));
    break;
  }
  case 3:
    rc = create_write_seal(ch, &k);
    KVH_CHECK(rc == 0 || rc == KVDS_E_EXISTS, "shared create '%s': %s", k.s,
              kvds_err_name(rc));
    break;
  case 4:
    rc = kvds_delete(c, k.s, k.n);
    KVH_CHECK(rc == 0 || rc == KVDS_E_NOTFOUND || rc == KVDS_E_STATE,
              "shared delete '%s': %s", k.s, kvds_err_name(rc));
    break;
  case 5: {
    struct kvds_iov ki = {k.s, k.n};
    uint8_t pr;
    KVH_OK(kvds_exists(c, 1, &ki, &pr));
    break;
  }
  }
}

static void child_main(int idx, const char *addr, int want_local, int out_fd) {
  struct child ch = {.idx = idx, .rng = 0x1234567u + (uint64_t)idx * 7919u};
  ch.buf = malloc(MAXVAL);
  KVH_CHECK(ch.buf, "out of memory");
  ch.c = kvh_connect(addr);
  KVH_CHECK(kvds_client_is_local(ch.c) == want_local,
            "client %d via %s: is_local %d, want %d", idx, addr,
            kvds_client_is_local(ch.c), want_local);
  for (int i = 0; i < OPS; i++) {
    int r = (int)(kvh_rand(&ch.rng) % 100);
    static const int cum[] = {14, 22, 34, 42, 50, 55, 65, 70, 74, 76, 80};
    int op = 0;
    while (op < 11 && r >= cum[op])
      op++;
    if (op == 11)
      op_shared(&ch);
    else
      op_own(&ch, op);
  }
  KVH_CHECK(kvh_write_all(out_fd, ch.present, OWN_KEYS) == 0, "pipe write");
  kvds_client_close(ch.c);
  free(ch.buf);
  fprintf(stderr,
          "client %d (%s): put %lu mput %lu get %lu mget %lu "
          "create %lu abort %lu del %lu exists %lu prefix %lu list "
          "%lu stat %lu shared %lu\n",
          idx, want_local ? "shm" : "tcp", ch.ops[0], ch.ops[1], ch.ops[2],
          ch.ops[3], ch.ops[4], ch.ops[5], ch.ops[6], ch.ops[7], ch.ops[8],
          ch.ops[9], ch.ops[10],
          ch.ops[16] + ch.ops[17] + ch.ops[18] + ch.ops[19] + ch.ops[20] +
              ch.ops[21]);
  _exit(0);
}

/* Lists every key under prefix (paged) into a malloc'd array of kbufs. */
static size_t list_all(kvds_client *c, const char *prefix, struct kbuf *out,
                       size_t cap) {
  size_t n = 0, alen = 0;
  char after[32];
  for (int page = 0; page < 1000; page++) {
    struct kvds_list *l;
    KVH_OK(kvds_list(c, prefix, strlen(prefix), alen ? after : NULL, alen, 64,
                     &l));
    for (size_t i = 0; i < l->n; i++) {
      const struct kvds_list_entry *e = &l->entries[i];
      KVH_CHECK(n < cap && e->klen < sizeof out[n].s, "list: too many keys");
      KVH_CHECK(e->info.state == KVDS_STATE_SEALED,
                "final list: '%.*s' is not sealed", (int)e->klen,
                (const char *)e->key);
      memcpy(out[n].s, e->key, e->klen);
      out[n].s[e->klen] = 0;
      out[n].n = e->klen;
      n++;
    }
    if (l->n) {
      alen = l->entries[l->n - 1].klen;
      memcpy(after, l->entries[l->n - 1].key, alen);
    }
    int more = l->more;
    kvds_list_free(l);
    if (!more)
      return n;
  }
  KVH_CHECK(0, "list never ended");
  return 0;
}

int main(int argc, char **argv) {
  kvh_init(argc, argv, "mixed_clients");
  struct kvh_worker w;
  kvh_worker_start(&w, "256MiB", (const char *const[]){"--threads", "2", NULL});

  pid_t pids[NCHILD];
  int fds[NCHILD];
  for (int i = 0; i < NCHILD; i++) {
    int p[2];
    KVH_CHECK(pipe(p) == 0, "pipe");
    pid_t pid = kvh_fork();
    if (pid == 0) {
      close(p[0]);
      int local = i < 2;
      child_main(i, local ? w.addr : w.tcp, local, p[1]);
    }
    close(p[1]);
    pids[i] = pid;
    fds[i] = p[0];
  }
  uint8_t present[NCHILD][OWN_KEYS];
  for (int i = 0; i < NCHILD; i++) {
    char what[32];
    snprintf(what, sizeof what, "client %d", i);
    kvh_wait_child_ok(pids[i], CHILD_TIMEOUT_MS, what);
    KVH_CHECK(kvh_read_all(fds[i], present[i], OWN_KEYS, 1000) == 0,
              "client %d sent no final state", i);
    close(fds[i]);
  }

  /* Final state, checked from a fresh TCP client and a fresh local one. */
  const char *addrs[2] = {w.tcp, w.addr};
  struct kbuf *keys = calloc(NCHILD * OWN_KEYS + SHARED_KEYS, sizeof *keys);
  uint8_t *buf = malloc(MAXVAL);
  KVH_CHECK(keys && buf, "out of memory");
  for (int a = 0; a < 2; a++) {
    kvds_client *c = kvh_connect(addrs[a]);
    for (int i = 0; i < NCHILD; i++) {
      char prefix[8];
      snprintf(prefix, sizeof prefix, "c%d/", i);
      size_t n = list_all(c, prefix, keys, OWN_KEYS);
      size_t want = 0;
      for (int j = 0; j < OWN_KEYS; j++)
        want += present[i][j];
      KVH_CHECK(n == want, "client %d: %zu keys listed, %zu expected", i, n,
                want);
      for (size_t k = 0; k < n; k++) {
        int j = (int)strtol(keys[k].s + 4, NULL, 10);
        KVH_CHECK(j >= 0 && j < OWN_KEYS && present[i][j],
                  "'%s' listed but deleted by its owner", keys[k].s);
        size_t len = 0;
        KVH_OK(kvds_get(c, keys[k].s, keys[k].n, buf, MAXVAL, &len, 0));
        check_value(&keys[k], buf, len, "final get");
      }
    }
    size_t n = list_all(c, "s/", keys, SHARED_KEYS);
    for (size_t k = 0; k < n; k++) {
      size_t len = 0;
      KVH_OK(kvds_get(c, keys[k].s, keys[k].n, buf, MAXVAL, &len, 0));
      check_value(&keys[k], buf, len, "final shared get");
    }
    /* Everything at once (empty prefix): the same keys, no others. */
    size_t total = n;
    for (int i = 0; i < NCHILD; i++)
      for (int j = 0; j < OWN_KEYS; j++)
        total += present[i][j];
    size_t all = list_all(c, "", keys, NCHILD * OWN_KEYS + SHARED_KEYS);
    KVH_CHECK(all == total, "list of all keys: %zu, want %zu", all, total);
    kvds_client_close(c);
  }

  /* Nothing leaked: no pins, no half-written objects, no evictions (so the
   * exact final state above was meaningful). */
  kvds_client *c = kvh_connect(w.addr);
  struct kvds_stats st;
  uint64_t deadline = kvh_now_ms() + 5000;
  for (;;) {
    kvh_stats(c, &st);
    if ((st.pinned_objects == 0 && st.objects_writing == 0 &&
         st.connections == 1) ||
        kvh_now_ms() > deadline)
      break;
    kvh_sleep_ms(10);
  }
  KVH_CHECK(st.pinned_objects == 0 && st.objects_writing == 0,
            "after all clients left: %llu pinned, %llu writing",
            (unsigned long long)st.pinned_objects,
            (unsigned long long)st.objects_writing);
  KVH_CHECK(st.connections == 1, "%llu connections open, want 1",
            (unsigned long long)st.connections);
  KVH_CHECK(st.evictions == 0 && st.nospace == 0,
            "unexpected evictions (%llu) / nospace (%llu)",
            (unsigned long long)st.evictions, (unsigned long long)st.nospace);
  KVH_CHECK(st.protocol_errors == 0, "%llu protocol errors",
            (unsigned long long)st.protocol_errors);
  KVH_CHECK(st.pool_used <= st.pool_capacity, "pool over capacity");
  kvds_client_close(c);
  free(keys);
  free(buf);
  kvh_worker_stop(&w);
  return kvh_finish();
}
