/*
 * keys.c — the keys a bench writes: generated key sets, and deleting them
 * again on a worker (bench.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/bench/bench.h"

#define KEY_STRIDE 64 /* bytes per generated key */

void bench_keyset_free(struct bench_keyset *ks) {
  free(ks->buf);
  free(ks->iov);
  *ks = (struct bench_keyset){0};
}

int bench_keyset_make(struct bench_keyset *ks, const char *prefix,
                      const char *tag, size_t n) {
  bench_keyset_free(ks);
  ks->buf = malloc(n * KEY_STRIDE);
  ks->iov = malloc(n * sizeof *ks->iov);
  if (!ks->buf || !ks->iov) {
    bench_keyset_free(ks);
    return -ENOMEM;
  }
  for (size_t i = 0; i < n; i++) {
    char *k = ks->buf + i * KEY_STRIDE;
    int len = snprintf(k, KEY_STRIDE, "%s%s/%zu", prefix, tag, i);
    ks->iov[i] = (struct kvds_iov){k, (size_t)len};
  }
  ks->n = n;
  return 0;
}

int bench_delete_keys(kvds_client *c, const struct kvds_iov *keys, size_t n) {
  for (size_t i = 0; i < n; i += KVDS_BATCH_MAX) {
    size_t m = n - i < KVDS_BATCH_MAX ? n - i : KVDS_BATCH_MAX;
    int rc = kvds_mdelete(c, m, keys + i, NULL);
    if (rc && rc != KVDS_E_NOTFOUND)
      return rc;
  }
  return 0;
}

void bench_sweep(kvds_client *c, const char *prefix) {
  for (int pass = 0; c && pass < 100; pass++) {
    struct kvds_list *l;
    if (kvds_list(c, prefix, strlen(prefix), NULL, 0, 1000, &l))
      return;
    size_t n = l->n;
    for (size_t i = 0; i < l->n; i++)
      kvds_delete(c, l->entries[i].key, l->entries[i].klen);
    kvds_list_free(l);
    if (n == 0)
      return;
  }
}
