/*
 * The worker's wait module (src/worker/wait.h) over a real store and a real
 * event loop: a GET answered by a seal on another thread, by its deadline,
 * by a resolver's failure; finds answered or timed out; a wait cancelled
 * while a resolver holds it; results that come too late; seals answered
 * once persisted (KVDS_WAIT_SEAL), timed out or cancelled.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <pthread.h>

#include "common/util.h"
#include "kvds/kvds.h"
#include "pool/pool.h"
#include "proto/proto.h"
#include "store/store.h"
#include "worker/wait.h"

#define POOL_SIZE (8u << 20)

struct fx {
  struct kvds_pool pool;
  struct kvds_store st;
  struct event_base *base;
  struct kvds_waitbox *box;
  struct kvds_wait *list; /* the owner's waits */
  /* the last answer */
  int answers, afters;
  int kind, timed_out;
  uint64_t req_id;
  uint32_t n;
  struct kvds_object *objs[4];
  int32_t status[4];
  uint8_t out[256];
  size_t out_len;
  uint32_t out_count;
};

static void on_answer(void *owner, const struct kvds_wait_answer *a) {
  struct fx *f = owner;
  f->answers++;
  f->kind = a->kind;
  f->timed_out = a->timed_out;
  f->req_id = a->req_id;
  f->n = a->n;
  for (uint32_t i = 0; i < a->n && i < 4; i++) {
    f->objs[i] = a->objs ? a->objs[i] : NULL;
    f->status[i] = a->status[i];
  }
  f->out_len = a->out_len;
  f->out_count = a->out_count;
  if (a->out && a->out_len <= sizeof f->out)
    memcpy(f->out, a->out, a->out_len);
}

static void on_after(void *owner) {
  ((struct fx *)owner)->afters++;
}

static int setup(void **state) {
  struct fx *f = calloc(1, sizeof *f);
  struct kvds_evict_policy p = {.high_watermark = 0.95, .eviction_ratio = 0.05};
  if (!f || kvds_pool_create(&f->pool, "kvds-test-wait", POOL_SIZE,
                             KVDS_POOL_HUGE_OFF))
    return -1;
  if (kvds_store_init(&f->st, &f->pool, &p, 0, kvds_wait_on_seal, NULL) ||
      !(f->base = event_base_new()) ||
      kvds_waitbox_create(f->base, &f->st, on_answer, on_after, &f->box))
    return -1;
  *state = f;
  return 0;
}

static int teardown(void **state) {
  struct fx *f = *state;
  pthread_mutex_lock(&f->st.lock);
  kvds_wait_cancel_all_locked(&f->st, &f->list);
  pthread_mutex_unlock(&f->st.lock);
  kvds_waitbox_destroy(f->box);
  event_base_free(f->base);
  kvds_store_fini(&f->st);
  kvds_pool_destroy(&f->pool);
  free(f);
  return 0;
}

/* Runs the loop until an answer came (at most ~5 s of events). */
static void run_until_answer(struct fx *f) {
  int before = f->answers;
  struct timeval tick = {0, 10000};
  for (int i = 0; i < 500 && f->answers == before; i++) {
    event_base_loopexit(f->base, &tick);
    event_base_dispatch(f->base);
  }
  assert_int_equal(f->answers, before + 1);
  assert_int_equal(f->afters, f->answers);
}

/* Seals key with 8 bytes of `fill`. */
static void seal(struct fx *f, const char *key, uint8_t fill) {
  struct kvds_object *o;
  pthread_mutex_lock(&f->st.lock);
  assert_int_equal(kvds_store_create(&f->st, key, strlen(key), 8, &o), 0);
  memset(kvds_store_data(&f->st, o), fill, 8);
  kvds_store_seal(&f->st, o, kvds_checksum(kvds_store_data(&f->st, o), 8));
  pthread_mutex_unlock(&f->st.lock);
}

/* A GET wait for keys[0..n): present ones pinned, the others watched. */
static struct kvds_wait *get_wait(struct fx *f, const char **keys, uint32_t n,
                                  uint32_t ms, uint32_t *watched) {
  struct kvds_object **objs = calloc(n, sizeof *objs);
  int32_t *status = calloc(n, sizeof *status);
  const uint8_t *k[4];
  uint32_t kl[4];
  assert_non_null(objs);
  assert_non_null(status);
  pthread_mutex_lock(&f->st.lock);
  for (uint32_t i = 0; i < n; i++) {
    k[i] = (const uint8_t *)keys[i];
    kl[i] = (uint32_t)strlen(keys[i]);
    objs[i] = kvds_store_get(&f->st, keys[i], kl[i]);
    status[i] = objs[i] ? 0 : KVDS_E_NOTFOUND;
  }
  struct kvds_wait *w = kvds_wait_create(f->box, f, &f->list, KVDS_WAIT_GET, 42,
                                         0, n, k, kl, objs, status);
  assert_non_null(w);
  *watched = kvds_wait_watch_locked(w);
  pthread_mutex_unlock(&f->st.lock);
  kvds_wait_arm(w, ms);
  return w;
}

static void unpin_answer(struct fx *f) {
  pthread_mutex_lock(&f->st.lock);
  for (uint32_t i = 0; i < f->n; i++)
    if (f->objs[i])
      kvds_store_unpin(&f->st, f->objs[i]);
  pthread_mutex_unlock(&f->st.lock);
}

struct sealer {
  struct fx *f;
  const char *key;
};

static void *seal_main(void *arg) {
  struct sealer *s = arg;
  seal(s->f, s->key, 7);
  return NULL;
}

/* One key here, one sealed later by another thread: answered with both,
 * the sealed value pinned for the answer. */
static void test_get_woken_by_seal(void **state) {
  struct fx *f = *state;
  seal(f, "here", 1);
  const char *keys[] = {"here", "later"};
  uint32_t watched;
  get_wait(f, keys, 2, 5000, &watched);
  assert_int_equal(watched, 1);
  assert_ptr_equal(f->list != NULL, 1);
  pthread_t t;
  struct sealer s = {f, "later"};
  assert_int_equal(pthread_create(&t, NULL, seal_main, &s), 0);
  run_until_answer(f);
  pthread_join(t, NULL);
  assert_int_equal(f->kind, KVDS_WAIT_GET);
  assert_int_equal(f->req_id, 42);
  assert_int_equal(f->status[0], 0);
  assert_int_equal(f->status[1], 0);
  assert_non_null(f->objs[1]);
  assert_int_equal(kvds_store_data(&f->st, f->objs[1])[0], 7);
  assert_int_equal(f->objs[1]->pins, 1); /* the answer's pin */
  assert_null(f->list);                  /* unlinked once answered */
  unpin_answer(f);
}

/* Nobody seals it: the deadline answers KVDS_E_TIMEOUT, and a seal after
 * that wakes nothing. */
static void test_get_deadline(void **state) {
  struct fx *f = *state;
  const char *keys[] = {"never"};
  uint32_t watched;
  get_wait(f, keys, 1, 30, &watched);
  run_until_answer(f);
  assert_int_equal(f->status[0], KVDS_E_TIMEOUT);
  assert_null(f->objs[0]);
  seal(f, "never", 3);
  assert_int_equal(f->st.n_waiters, 0);
}

/* Runs the loop for about ms milliseconds. */
static void run_for(struct fx *f, int ms) {
  struct timeval tick = {0, ms * 1000};
  event_base_loopexit(f->base, &tick);
  event_base_dispatch(f->base);
}

/* The deadline passes while a resolver still holds the wait (a pull
 * aborting its object): no answer until the resolver lets go, then one at
 * once, KVDS_E_TIMEOUT; a holder that never lets go delays it by the grace
 * only (200 ms), never forever. */
static void test_get_overdue_waits_for_resolver(void **state) {
  struct fx *f = *state;
  const char *keys[] = {"slow"};
  uint32_t watched;
  struct kvds_wait *w = get_wait(f, keys, 1, 20, &watched);
  kvds_wait_hold(w);
  run_for(f, 80);
  assert_int_equal(f->answers, 0); /* past its deadline, but held */
  kvds_wait_unhold(w);
  run_until_answer(f);
  assert_int_equal(f->status[0], KVDS_E_TIMEOUT);
  assert_null(f->objs[0]);

  w = get_wait(f, keys, 1, 20, &watched);
  kvds_wait_hold(w); /* never let go before the answer */
  uint64_t t0 = kvds_now_us();
  run_until_answer(f);
  uint64_t took = kvds_now_us() - t0;
  assert_true(took >= 200000); /* the deadline + the grace */
  assert_int_equal(f->status[0], KVDS_E_TIMEOUT);
  kvds_wait_unhold(w); /* answered: the last holder frees it */
}

/* A resolver that cannot supply a key fails it: answered at once with its
 * reason; the holder's later calls are no-ops; unhold frees it. */
static void test_get_failed_by_resolver(void **state) {
  struct fx *f = *state;
  seal(f, "a", 1);
  const char *keys[] = {"a", "b", "c"};
  uint32_t watched, idx[3];
  struct kvds_wait *w = get_wait(f, keys, 3, 5000, &watched);
  assert_int_equal(watched, 2);
  kvds_wait_hold(w);
  assert_int_equal(kvds_wait_kind(w), KVDS_WAIT_GET);
  assert_int_equal(kvds_wait_count(w), 3);
  uint32_t kl;
  assert_memory_equal(kvds_wait_key(w, 2, &kl), "c", 1);
  assert_int_equal(kl, 1);
  assert_int_equal(kvds_wait_open(w, idx), 2);
  assert_int_equal(idx[0], 1);
  assert_int_equal(idx[1], 2);
  uint32_t one = 1, two = 2;
  int32_t peer = KVDS_E_PEER;
  kvds_wait_fail(w, 1, &one, &peer);
  assert_int_equal(kvds_wait_open(w, idx), 1);
  uint32_t both[2] = {1, 2};
  int32_t why[2] = {KVDS_E_NOTFOUND, KVDS_E_NOTFOUND};
  kvds_wait_fail(w, 2, both, why); /* key 1 settled already: ignored */
  run_until_answer(f);
  assert_int_equal(f->status[0], 0);
  assert_int_equal(f->status[1], KVDS_E_PEER);
  assert_int_equal(f->status[2], KVDS_E_NOTFOUND);
  assert_int_equal(kvds_wait_open(w, idx), 0);
  kvds_wait_fail(w, 1, &two, &peer); /* answered: ignored */
  kvds_wait_unhold(w);               /* the last holder frees it */
  unpin_answer(f);
}

/* The owner goes away while a resolver holds the wait: nothing is
 * answered, its pins are given back, the holder's results are ignored and
 * its unhold frees the wait (ASan: no leak, no use after free). */
static void test_cancel_while_held(void **state) {
  struct fx *f = *state;
  seal(f, "x", 1);
  const char *keys[] = {"x", "y"};
  uint32_t watched, idx[2];
  struct kvds_wait *w = get_wait(f, keys, 2, 5000, &watched);
  kvds_wait_hold(w);
  struct kvds_object *x = kvds_store_find(&f->st, "x", 1);
  assert_int_equal(x->pins, 1);
  pthread_mutex_lock(&f->st.lock);
  kvds_wait_cancel_all_locked(&f->st, &f->list);
  pthread_mutex_unlock(&f->st.lock);
  assert_null(f->list);
  assert_int_equal(x->pins, 0);
  assert_int_equal(f->st.n_waiters, 0);
  assert_int_equal(kvds_wait_open(w, idx), 0);
  uint32_t one = 1;
  int32_t peer = KVDS_E_PEER;
  kvds_wait_fail(w, 1, &one, &peer);
  seal(f, "y", 2); /* wakes nothing */
  kvds_wait_unhold(w);
  struct timeval tick = {0, 20000};
  event_base_loopexit(f->base, &tick);
  event_base_dispatch(f->base);
  assert_int_equal(f->answers, 0);
}

static struct kvds_wait *find_wait(struct fx *f, int kind, uint32_t ms) {
  const uint8_t *k[2] = {(const uint8_t *)"p", (const uint8_t *)"q"};
  uint32_t kl[2] = {1, 1};
  int32_t local[2] = {0, KVDS_E_NOTFOUND};
  struct kvds_wait *w =
      kvds_wait_create(f->box, f, &f->list, kind, 7, 0, 2, k, kl, NULL, local);
  assert_non_null(w);
  kvds_wait_arm(w, ms);
  return w;
}

/* EXISTS: the resolver's statuses are the answer; the local ones are what
 * it was given. */
static void test_exists_answered(void **state) {
  struct fx *f = *state;
  struct kvds_wait *w = find_wait(f, KVDS_WAIT_EXISTS, 5000);
  kvds_wait_hold(w);
  assert_int_equal(kvds_wait_local(w, 0), 0);
  assert_int_equal(kvds_wait_local(w, 1), KVDS_E_NOTFOUND);
  uint32_t idx[2];
  assert_int_equal(kvds_wait_open(w, idx), 2);
  int32_t st[2] = {0, 0};
  kvds_wait_answer(w, st, NULL, 0, 0);
  kvds_wait_answer(w, st, malloc(8), 8, 1); /* a second answer: dropped */
  kvds_wait_unhold(w);
  run_until_answer(f);
  assert_int_equal(f->kind, KVDS_WAIT_EXISTS);
  assert_false(f->timed_out);
  assert_int_equal(f->status[0], 0);
  assert_int_equal(f->status[1], 0);
  struct timeval tick = {0, 20000}; /* nothing more comes */
  event_base_loopexit(f->base, &tick);
  event_base_dispatch(f->base);
  assert_int_equal(f->answers, 1);
}

/* A LOOKUP answered with no bytes still gets its (empty) answer. */
static void test_lookup_answered_empty(void **state) {
  struct fx *f = *state;
  struct kvds_wait *w = find_wait(f, KVDS_WAIT_LOOKUP, 5000);
  kvds_wait_answer(w, NULL, NULL, 0, 0);
  run_until_answer(f);
  assert_false(f->timed_out);
  assert_int_equal(f->out_count, 0);
}

/* Completed (in the inbox) but cancelled before the loop ran: never
 * answered, its pins given back. */
static void test_cancel_in_inbox(void **state) {
  struct fx *f = *state;
  const char *keys[] = {"soon"};
  uint32_t watched;
  get_wait(f, keys, 1, 5000, &watched);
  seal(f, "soon", 4); /* completes it: queued on the inbox */
  struct kvds_object *o = kvds_store_find(&f->st, "soon", 4);
  assert_int_equal(o->pins, 1);
  pthread_mutex_lock(&f->st.lock);
  kvds_wait_cancel_all_locked(&f->st, &f->list);
  pthread_mutex_unlock(&f->st.lock);
  assert_int_equal(o->pins, 0);
  struct timeval tick = {0, 20000};
  event_base_loopexit(f->base, &tick);
  event_base_dispatch(f->base);
  assert_int_equal(f->answers, 0);
}

/* LOOKUP / LOCATE: the resolver's reply bytes reach the owner. */
static void test_locate_answered(void **state) {
  struct fx *f = *state;
  struct kvds_wait *w = find_wait(f, KVDS_WAIT_LOCATE, 5000);
  kvds_wait_hold(w);
  uint8_t *buf = malloc(KVDS_PROTO_HDR_LEN + 4);
  assert_non_null(buf);
  memcpy(buf + KVDS_PROTO_HDR_LEN, "abcd", 4);
  kvds_wait_answer(w, NULL, buf, KVDS_PROTO_HDR_LEN + 4, 3);
  kvds_wait_unhold(w);
  run_until_answer(f);
  assert_int_equal(f->kind, KVDS_WAIT_LOCATE);
  assert_false(f->timed_out);
  assert_int_equal(f->out_count, 3);
  assert_int_equal(f->out_len, KVDS_PROTO_HDR_LEN + 4);
  assert_memory_equal(f->out + KVDS_PROTO_HDR_LEN, "abcd", 4);
}

/* A find nobody answers times out; an answer after that is dropped. */
static void test_find_times_out(void **state) {
  struct fx *f = *state;
  struct kvds_wait *w = find_wait(f, KVDS_WAIT_LOOKUP, 30);
  kvds_wait_hold(w);
  run_until_answer(f);
  assert_int_equal(f->kind, KVDS_WAIT_LOOKUP);
  assert_true(f->timed_out);
  uint32_t idx[2];
  assert_int_equal(kvds_wait_open(w, idx), 0);
  kvds_wait_answer(w, NULL, malloc(16), 16, 1); /* freed, not answered */
  kvds_wait_unhold(w);
  struct timeval tick = {0, 20000};
  event_base_loopexit(f->base, &tick);
  event_base_dispatch(f->base);
  assert_int_equal(f->answers, 1);
}

/* A SEAL wait (write-through): two sealed objects pinned for the answer
 * and one seal that failed before; the resolver answers a status per
 * object from another thread; the failed entry keeps its own. */
struct seal_fx {
  struct kvds_wait *w;
  int32_t st[3];
};

static void *answer_main(void *arg) {
  struct seal_fx *sf = arg;
  kvds_wait_answer(sf->w, sf->st, NULL, 0, 0);
  kvds_wait_unhold(sf->w);
  return NULL;
}

static struct kvds_wait *seal_wait(struct fx *f, uint32_t ms) {
  seal(f, "a", 1);
  seal(f, "b", 2);
  struct kvds_object **objs = calloc(3, sizeof *objs);
  int32_t *status = calloc(3, sizeof *status);
  assert_non_null(objs);
  assert_non_null(status);
  pthread_mutex_lock(&f->st.lock);
  objs[0] = kvds_store_find(&f->st, "a", 1);
  objs[1] = kvds_store_find(&f->st, "b", 1);
  kvds_store_pin(&f->st, objs[0]);
  kvds_store_pin(&f->st, objs[1]);
  pthread_mutex_unlock(&f->st.lock);
  status[2] = KVDS_E_CHECKSUM;
  const uint8_t *k[3] = {(const uint8_t *)"a", (const uint8_t *)"b", NULL};
  uint32_t kl[3] = {1, 1, 0};
  struct kvds_wait *w = kvds_wait_create(f->box, f, &f->list, KVDS_WAIT_SEAL, 9,
                                         KVDS_OP_SEAL, 3, k, kl, objs, status);
  assert_non_null(w);
  kvds_wait_arm(w, ms);
  return w;
}

static void test_seal_answered(void **state) {
  struct fx *f = *state;
  struct kvds_wait *w = seal_wait(f, 5000);
  uint32_t idx[3];
  assert_int_equal(kvds_wait_open(w, idx), 0); /* no keys to resolve */
  struct seal_fx sf = {w, {0, -28 /* ENOSPC */, 0}};
  kvds_wait_hold(w);
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, answer_main, &sf), 0);
  run_until_answer(f);
  pthread_join(t, NULL);
  assert_int_equal(f->kind, KVDS_WAIT_SEAL);
  assert_int_equal(f->timed_out, 0);
  assert_non_null(f->objs[0]);
  assert_non_null(f->objs[1]);
  assert_null(f->objs[2]);
  assert_int_equal(f->status[0], 0);
  assert_int_equal(f->status[1], -28);
  assert_int_equal(f->status[2], KVDS_E_CHECKSUM); /* its own */
  assert_int_equal(f->objs[0]->pins, 1); /* the answer's, given to it */
  unpin_answer(f);
}

static void test_seal_times_out(void **state) {
  struct fx *f = *state;
  seal_wait(f, 30);
  run_until_answer(f);
  assert_int_equal(f->kind, KVDS_WAIT_SEAL);
  assert_int_equal(f->timed_out, 1);
  assert_non_null(f->objs[0]);
  unpin_answer(f);
}

static void test_seal_cancelled(void **state) {
  struct fx *f = *state;
  struct kvds_wait *w = seal_wait(f, 5000);
  kvds_wait_hold(w);
  struct kvds_object *a = kvds_store_find(&f->st, "a", 1);
  pthread_mutex_lock(&f->st.lock);
  kvds_wait_cancel_all_locked(&f->st, &f->list);
  pthread_mutex_unlock(&f->st.lock);
  assert_int_equal(a->pins, 0); /* the wait's pins went with it */
  int32_t st[3] = {0, 0, 0};
  kvds_wait_answer(w, st, NULL, 0, 0); /* too late: ignored */
  kvds_wait_unhold(w);
  struct timeval tick = {0, 20000};
  event_base_loopexit(f->base, &tick);
  event_base_dispatch(f->base);
  assert_int_equal(f->answers, 0);
}

int main(void) {
  evthread_use_pthreads();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_get_woken_by_seal, setup, teardown),
      cmocka_unit_test_setup_teardown(test_get_deadline, setup, teardown),
      cmocka_unit_test_setup_teardown(test_get_overdue_waits_for_resolver,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_get_failed_by_resolver, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_cancel_while_held, setup, teardown),
      cmocka_unit_test_setup_teardown(test_exists_answered, setup, teardown),
      cmocka_unit_test_setup_teardown(test_locate_answered, setup, teardown),
      cmocka_unit_test_setup_teardown(test_find_times_out, setup, teardown),
      cmocka_unit_test_setup_teardown(test_lookup_answered_empty, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_cancel_in_inbox, setup, teardown),
      cmocka_unit_test_setup_teardown(test_seal_answered, setup, teardown),
      cmocka_unit_test_setup_teardown(test_seal_times_out, setup, teardown),
      cmocka_unit_test_setup_teardown(test_seal_cancelled, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
