/*
 * split.c — one large value pulled over several peer connections at once.
 *
 * A pull asks for the first SPLIT_HEAD bytes of each value larger than
 * SPLIT_WHOLE_MAX (KVDS_PF_RANGE); when such a head comes, the value's
 * object is created here at its full size and the rest is cut into chunks
 * that any thread with a connection to the same peer may claim: the
 * puller itself once its request is over, and helper jobs that idle job
 * threads run (queued before the waits' jobs). Each chunk is a ranged GET
 * that names the value's checksum, so that a value replaced on the peer
 * meanwhile is refused there rather than mixed.
 *
 * The object's xxh3 is over the whole value, so its bytes are hashed in
 * order: whichever thread lands bytes at the hashed frontier hashes them
 * at once (still in cache) and goes on with whatever landed after them
 * (chunks that came in early). The value is sealed only after every byte
 * landed and the digest matches the peer's checksum; a failed chunk (the
 * peer gone, a deadline, a refusal) closes the split and the object is
 * aborted, never visible.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/hash.h"
#include "common/util.h"
#include "worker/cluster/internal.h"

/* At its deadline a split shuts the connections of its chunks still in
 * flight down (they fail at once: the request's answer waits for the
 * abort only a little longer, server.c's JOB_GRACE_MS), and again every
 * SPLIT_GRACE_MS while any is left. */
#define SPLIT_GRACE_MS 20
/* A helper waits at most this long for a connection to the peer. */
#define SPLIT_CONN_MS 50

struct split {
  struct kvds_peer *peer;
  uint8_t *key;
  uint32_t klen;
  uint8_t *base; /* the object's bytes (the puller owns the object) */
  uint64_t size, checksum, chunk;
  uint64_t deadline_us;
  pthread_mutex_t lock;
  pthread_cond_t cv; /* active or hashing dropped */
  uint32_t nchunks;  /* chunk 0: [0, SPLIT_HEAD); k: SPLIT_HEAD + (k-1) *
                        chunk on */
  uint32_t next;     /* the next chunk to claim */
  uint64_t *landed;  /* per chunk: bytes landed from its start */
  int active;        /* chunks in flight (the head until its pull ends) */
  int closed;        /* no more claims: failed or finished */
  int err;           /* the first error */
  int refs;          /* the puller + queued helper jobs */
  int hashing;       /* a thread is hashing (outside the lock) */
  uint64_t hashed;   /* bytes [0, hashed) are in hs */
  struct kvds_hash hs;
  int nconn;
  struct kvds_peerconn **conns; /* of the chunks in flight */
};

static uint64_t chunk_start(const struct split *sp, uint32_t k) {
  return k ? SPLIT_HEAD + (uint64_t)(k - 1) * sp->chunk : 0;
}

static uint64_t chunk_len(const struct split *sp, uint32_t k) {
  uint64_t s = chunk_start(sp, k);
  uint64_t l = k ? sp->chunk : SPLIT_HEAD;
  return l < sp->size - s ? l : sp->size - s;
}

void kvds__split_unref(struct split *sp) {
  pthread_mutex_lock(&sp->lock);
  int last = --sp->refs == 0;
  pthread_mutex_unlock(&sp->lock);
  if (!last)
    return;
  pthread_cond_destroy(&sp->cv);
  pthread_mutex_destroy(&sp->lock);
  free(sp->landed);
  free(sp->conns);
  free(sp->key);
  free(sp);
}

/* Bytes p[0..n) of chunk k landed: hash what is at the frontier now. */
static void split_landed(struct split *sp, uint32_t k, size_t n) {
  pthread_mutex_lock(&sp->lock);
  sp->landed[k] += n;
  if (!sp->hashing) {
    sp->hashing = 1;
    for (;;) {
      uint32_t c = 0;
      while (c + 1 < sp->nchunks && chunk_start(sp, c + 1) <= sp->hashed)
        c++;
      uint64_t upto = chunk_start(sp, c) + sp->landed[c];
      if (upto <= sp->hashed)
        break;
      uint64_t from = sp->hashed;
      pthread_mutex_unlock(&sp->lock);
      kvds_hash_update(&sp->hs, sp->base + from, (size_t)(upto - from));
      pthread_mutex_lock(&sp->lock);
      sp->hashed = upto;
    }
    sp->hashing = 0;
    pthread_cond_broadcast(&sp->cv);
  }
  pthread_mutex_unlock(&sp->lock);
}

void kvds__split_head_landed(struct split *sp, size_t n) {
  split_landed(sp, 0, n);
}

/* A claim (or the head) is over with status rc. */
static void claim_end(struct split *sp, struct kvds_peerconn *c, int rc) {
  pthread_mutex_lock(&sp->lock);
  for (int i = 0; c && i < sp->nconn; i++)
    if (sp->conns[i] == c) {
      sp->conns[i] = sp->conns[--sp->nconn];
      break;
    }
  if (rc && !sp->err)
    sp->err = rc;
  if (rc)
    sp->closed = 1;
  sp->active--;
  pthread_cond_broadcast(&sp->cv);
  pthread_mutex_unlock(&sp->lock);
}

void kvds__split_head_done(struct split *sp, int rc) {
  claim_end(sp, NULL, rc);
}

/* The pull of one chunk. */
struct chunk_ctx {
  struct split *sp;
  uint32_t k;
  int rc;
};

static void *chunk_dst(void *ud, size_t i, uint64_t size, uint64_t off,
                       uint64_t len, uint64_t checksum) {
  struct chunk_ctx *cc = ud;
  struct split *sp = cc->sp;
  (void)i;
  /* the peer checked the checksum, the pull the offset and length */
  if (size != sp->size || checksum != sp->checksum ||
      off != chunk_start(sp, cc->k) || len != chunk_len(sp, cc->k)) {
    cc->rc = KVDS_E_PROTO;
    return NULL;
  }
  return sp->base + off;
}

static void chunk_part(void *ud, size_t i, const void *p, size_t n) {
  struct chunk_ctx *cc = ud;
  (void)i;
  (void)p;
  split_landed(cc->sp, cc->k, n);
}

static void chunk_done(void *ud, size_t i, int status, uint64_t checksum) {
  struct chunk_ctx *cc = ud;
  (void)i;
  (void)checksum;
  if (status && !cc->rc)
    cc->rc = status == KVDS_E_STATE ? KVDS_E_PROTO : status;
}

/* Claims and pulls chunks over c until none is left or one failed. */
static void split_work(struct split *sp, struct kvds_peerconn *c) {
  for (;;) {
    pthread_mutex_lock(&sp->lock);
    if (sp->closed || sp->next >= sp->nchunks) {
      pthread_mutex_unlock(&sp->lock);
      return;
    }
    uint32_t k = sp->next++;
    sp->active++;
    sp->conns[sp->nconn++] = c;
    pthread_mutex_unlock(&sp->lock);
    struct chunk_ctx cc = {sp, k, 0};
    struct kvds_peerconn_range rg = {chunk_start(sp, k), chunk_len(sp, k),
                                     sp->checksum, 0};
    struct kvds_peerconn_pull_ops ops = {chunk_dst, chunk_part, chunk_done,
                                         &cc};
    struct kvds_iov key = {sp->key, sp->klen};
    uint64_t now = kvds_now_us();
    int ms = kvds_deadline_left_ms(sp->deadline_us, now);
    kvds_peerconn_set_timeout(c, ms > 0 ? ms : 1);
    int rc = now >= sp->deadline_us
                 ? KVDS_E_TIMEOUT
                 : kvds_peerconn_pull(c, 1, &key, 0, &rg, &ops);
    if (!rc)
      rc = cc.rc;
    if (!rc && sp->landed[k] != chunk_len(sp, k)) /* only this thread adds */
      rc = KVDS_E_PROTO;
    claim_end(sp, c, rc);
    if (rc)
      return;
  }
}

struct split *kvds__split_new(struct kvds_cluster *cl, struct kvds_peer *p,
                              const uint8_t *key, uint32_t klen, uint8_t *base,
                              uint64_t size, uint64_t checksum,
                              uint64_t deadline_us) {
  if (size <= SPLIT_WHOLE_MAX)
    return NULL;
  /* the hash state wants its vector alignment */
  size_t bytes = (sizeof(struct split) + 63) & ~(size_t)63;
  struct split *sp = aligned_alloc(64, bytes);
  if (!sp)
    return NULL;
  memset(sp, 0, bytes);
  int np = cl->npullers > 0 ? cl->npullers : 1;
  uint64_t rest = size - SPLIT_HEAD;
  uint64_t chunk = (rest + (uint64_t)np - 1) / (uint64_t)np;
  chunk = (chunk + 65535) & ~(uint64_t)65535;
  if (chunk < SPLIT_HEAD)
    chunk = SPLIT_HEAD;
  sp->peer = p;
  sp->klen = klen;
  sp->base = base;
  sp->size = size;
  sp->checksum = checksum;
  sp->chunk = chunk;
  sp->deadline_us = deadline_us;
  sp->nchunks = (uint32_t)(1 + (rest + chunk - 1) / chunk);
  sp->next = 1;
  sp->active = 1; /* the head */
  sp->refs = 1;
  sp->key = malloc(klen);
  sp->landed = calloc(sp->nchunks, sizeof *sp->landed);
  sp->conns = calloc(sp->nchunks, sizeof *sp->conns);
  if (!sp->key || !sp->landed || !sp->conns) {
    free(sp->key);
    free(sp->landed);
    free(sp->conns);
    free(sp);
    return NULL;
  }
  memcpy(sp->key, key, klen);
  kvds_hash_reset(&sp->hs);
  pthread_mutex_init(&sp->lock, NULL);
  kvds_cond_init_mono(&sp->cv);
  /* helpers for the idle job threads only (the puller works on it too):
   * queued ahead of the waits' jobs, they must not crowd out other
   * readers' pulls */
  pthread_mutex_lock(&cl->lock);
  int idle = cl->npullers - cl->nbusy - cl->nqueued;
  pthread_mutex_unlock(&cl->lock);
  uint32_t nh = sp->nchunks - 1;
  if (nh > (uint32_t)np - 1)
    nh = (uint32_t)np - 1;
  if (nh > (uint32_t)(idle > 0 ? idle : 0))
    nh = (uint32_t)(idle > 0 ? idle : 0);
  struct job *hj[64];
  uint32_t made = 0;
  for (uint32_t h = 0; h < nh && h < 64; h++) {
    struct job *j = calloc(1, sizeof *j);
    if (!j)
      break;
    j->split = sp;
    j->deadline_us = deadline_us;
    hj[made++] = j;
  }
  sp->refs += (int)made;
  if (made) {
    pthread_mutex_lock(&cl->lock);
    cl->nqueued += (int)made;
    for (uint32_t h = 0; h < made; h++) { /* before the waits' jobs */
      hj[h]->next = cl->jhead;
      cl->jhead = hj[h];
      if (!cl->jtail)
        cl->jtail = hj[h];
    }
    pthread_cond_broadcast(&cl->job_cv);
    pthread_mutex_unlock(&cl->lock);
  }
  return sp;
}

void kvds__split_help(struct kvds_cluster *cl, struct split *sp) {
  pthread_mutex_lock(&sp->lock);
  int idle = sp->closed || sp->next >= sp->nchunks;
  pthread_mutex_unlock(&sp->lock);
  if (!idle) {
    int err = 0;
    uint64_t gen, cap = kvds_deadline_ms(SPLIT_CONN_MS);
    struct kvds_peerconn *c = kvds__pconn_get(
        cl, sp->peer, cap < sp->deadline_us ? cap : sp->deadline_us, &gen,
        &err);
    if (c) {
      split_work(sp, c);
      kvds__pconn_put(cl, sp->peer, c, gen);
    }
  }
  kvds__split_unref(sp);
}

int kvds__split_finish(struct split *sp, struct kvds_peerconn *c,
                       uint64_t *checksum) {
  *checksum = sp->checksum;
  if (c)
    split_work(sp, c);
  pthread_mutex_lock(&sp->lock);
  sp->closed = 1; /* nobody claims what is left: it fails below */
  uint64_t until = sp->deadline_us;
  while (sp->active || sp->hashing) {
    if (kvds_cond_wait_until(&sp->cv, &sp->lock, until) == -ETIMEDOUT) {
      /* chunks still in flight past the deadline: end their calls */
      for (int i = 0; i < sp->nconn; i++)
        kvds_peerconn_shutdown(sp->conns[i]);
      if (!sp->err)
        sp->err = KVDS_E_TIMEOUT;
      until = kvds_deadline_ms(SPLIT_GRACE_MS);
    }
  }
  int rc = sp->err;
  if (!rc && (sp->next < sp->nchunks || sp->hashed != sp->size))
    rc = KVDS_E_PEER; /* chunks nobody could pull */
  /* Past the deadline, whatever broke first (a chunk's connection shut
   * down at it, say) failed because of it. */
  if (rc && rc != KVDS_E_CHECKSUM && kvds_now_us() >= sp->deadline_us)
    rc = KVDS_E_TIMEOUT;
  if (!rc && kvds_hash_digest(&sp->hs) != sp->checksum)
    rc = KVDS_E_CHECKSUM;
  pthread_mutex_unlock(&sp->lock);
  kvds__split_unref(sp);
  return rc;
}
