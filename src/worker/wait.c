/*
 * wait.c — requests answered later (wait.h): their keys, the store waiters
 * of a GET, the holders that keep a cancelled wait alive, the per-thread
 * inbox of completed waits and the deadline timers.
 */
#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kvds/kvds.h"
#include "store/store.h"
#include "worker/wait.h"

struct kvds_waitbox {
  pthread_mutex_t lock; /* the bookkeeping of this box's waits */
  struct event_base *base;
  struct event *inbox_ev;
  struct kvds_wait *inbox; /* lock: completed, not answered yet */
  struct kvds_store *store;
  kvds_wait_answer_fn answer;
  kvds_wait_after_fn after;
};

struct kvds_wait {
  struct kvds_waitbox *box;
  void *owner;                   /* NULL once cancelled */
  struct kvds_wait **list;       /* the owner's list */
  struct kvds_wait *prev, *next; /* in it */
  struct kvds_wait *inbox_next;  /* box lock */
  uint8_t in_inbox;              /* box lock */
  uint8_t dead;     /* box lock: answered or cancelled; only holders keep it */
  uint8_t frozen;   /* box lock: being answered; results are ignored */
  uint8_t answered; /* box lock: finds: kvds_wait_answer came */
  uint8_t kind;
  uint16_t flags;
  uint32_t holds;  /* box lock */
  uint8_t overdue; /* box lock: its deadline passed while a resolver held it */
  uint64_t req_id;
  uint32_t n, remaining; /* remaining: box lock */
  struct event *timer;
  uint8_t *keybuf;           /* the keys, back to back */
  const uint8_t **keys;      /* n, into keybuf */
  uint32_t *klens;           /* n */
  struct kvds_object **objs; /* GET: pinned results (box lock) */
  int32_t *status;           /* per key (box lock once armed) */
  int32_t *local;            /* finds: the local answers */
  struct kvds_waiter *sw;    /* GET: a store waiter per key */
  uint8_t *open;             /* GET: key i still waited for (box lock; what
                                sw[i].armed says, without the store lock) */
  uint8_t *out;              /* LOOKUP / LOCATE: the answer (box lock) */
  size_t out_len;
  uint32_t out_count;
};

#define BOX_LOCK(b) pthread_mutex_lock(&(b)->lock)
#define BOX_UNLOCK(b) pthread_mutex_unlock(&(b)->lock)

static void on_inbox(evutil_socket_t fd, short what, void *arg);
static void on_timeout(evutil_socket_t fd, short what, void *arg);

/* ---- boxes ---------------------------------------------------------------*/

int kvds_waitbox_create(struct event_base *base, struct kvds_store *store,
                        kvds_wait_answer_fn answer, kvds_wait_after_fn after,
                        struct kvds_waitbox **out) {
  struct kvds_waitbox *b = calloc(1, sizeof *b);
  if (!b)
    return -ENOMEM;
  b->base = base;
  b->store = store;
  b->answer = answer;
  b->after = after;
  b->inbox_ev = event_new(base, -1, 0, on_inbox, b);
  if (!b->inbox_ev) {
    free(b);
    return -ENOMEM;
  }
  pthread_mutex_init(&b->lock, NULL);
  *out = b;
  return 0;
}

void kvds_waitbox_destroy(struct kvds_waitbox *b) {
  if (!b)
    return;
  event_free(b->inbox_ev);
  pthread_mutex_destroy(&b->lock);
  free(b);
}

/* ---- life of a wait ------------------------------------------------------*/

static void wait_free(struct kvds_wait *w) {
  if (w->timer)
    event_free(w->timer);
  free(w->keybuf);
  free(w->keys);
  free(w->klens);
  free(w->objs);
  free(w->status);
  free(w->local);
  free(w->sw);
  free(w->open);
  free(w->out);
  free(w);
}

struct kvds_wait *kvds_wait_create(struct kvds_waitbox *b, void *owner,
                                   struct kvds_wait **list, int kind,
                                   uint64_t req_id, uint16_t flags, uint32_t n,
                                   const uint8_t *const *keys,
                                   const uint32_t *klens,
                                   struct kvds_object **objs, int32_t *status) {
  struct kvds_wait *w = calloc(1, sizeof *w);
  if (!w)
    return NULL;
  size_t m = n ? n : 1, total = 1;
  for (uint32_t i = 0; i < n; i++)
    total += klens[i];
  w->keybuf = malloc(total);
  w->keys = calloc(m, sizeof *w->keys);
  w->klens = calloc(m, sizeof *w->klens);
  int objs_kind = kind == KVDS_WAIT_GET || kind == KVDS_WAIT_SEAL;
  if (kind == KVDS_WAIT_GET) {
    w->sw = calloc(m, sizeof *w->sw);
    w->open = calloc(m, 1);
  } else if (kind != KVDS_WAIT_SEAL) {
    w->local = calloc(m, sizeof *w->local);
  }
  w->timer = evtimer_new(b->base, on_timeout, w);
  if (!w->keybuf || !w->keys || !w->klens || !w->timer ||
      (kind == KVDS_WAIT_GET ? !w->sw || !w->open
                             : kind != KVDS_WAIT_SEAL && !w->local)) {
    wait_free(w);
    return NULL;
  }
  if (!objs_kind) {
    if (!(w->status = calloc(m, sizeof *w->status))) {
      wait_free(w);
      return NULL;
    }
    memcpy(w->local, status, n * sizeof *status);
    memcpy(w->status, status, n * sizeof *status);
  } else {
    w->objs = objs;
    w->status = status;
  }
  size_t off = 0;
  for (uint32_t i = 0; i < n; i++) {
    if (klens[i])
      memcpy(w->keybuf + off, keys[i], klens[i]);
    w->keys[i] = w->keybuf + off;
    w->klens[i] = klens[i];
    off += klens[i];
  }
  w->box = b;
  w->owner = owner;
  w->list = list;
  w->kind = (uint8_t)kind;
  w->flags = flags;
  w->req_id = req_id;
  w->n = n;
  w->remaining = kind == KVDS_WAIT_GET ? 0 : 1;
  return w;
}

uint32_t kvds_wait_watch_locked(struct kvds_wait *w) {
  uint32_t k = 0;
  for (uint32_t i = 0; w->kind == KVDS_WAIT_GET && i < w->n; i++) {
    if (w->objs[i] || w->status[i] != KVDS_E_NOTFOUND)
      continue;
    struct kvds_waiter *sw = &w->sw[i];
    sw->key = w->keys[i];
    sw->klen = w->klens[i];
    sw->hash = kvds_index_hash(sw->key, sw->klen);
    sw->req = w;
    sw->idx = i;
    kvds_store_wait_add(w->box->store, sw);
    w->open[i] = 1;
    k++;
  }
  BOX_LOCK(w->box);
  w->remaining = k;
  BOX_UNLOCK(w->box);
  return k;
}

void kvds_wait_arm(struct kvds_wait *w, uint32_t ms) {
  struct kvds_wait **list = w->list;
  w->prev = NULL;
  w->next = *list;
  if (*list)
    (*list)->prev = w;
  *list = w;
  struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
  evtimer_add(w->timer, &tv);
}

static void unlink_owner(struct kvds_wait *w) {
  if (w->prev)
    w->prev->next = w->next;
  else
    *w->list = w->next;
  if (w->next)
    w->next->prev = w->prev;
  w->prev = w->next = NULL;
}

/* Box lock held. */
static void inbox_push_locked(struct kvds_wait *w) {
  struct kvds_waitbox *b = w->box;
  if (w->in_inbox || w->dead || w->frozen)
    return;
  w->inbox_next = b->inbox;
  b->inbox = w;
  w->in_inbox = 1;
  event_active(b->inbox_ev, EV_READ, 0);
}

static void inbox_remove_locked(struct kvds_wait *w) {
  if (!w->in_inbox)
    return;
  struct kvds_wait **p = &w->box->inbox;
  while (*p && *p != w)
    p = &(*p)->inbox_next;
  if (*p)
    *p = w->inbox_next;
  w->in_inbox = 0;
}

/* The owner is done with w (box lock held): freed now (returns 1), or left
 * to its holders (0). Its timer goes now (owner thread). */
static int release_locked(struct kvds_wait *w) {
  w->dead = 1;
  w->owner = NULL;
  if (w->timer) {
    event_free(w->timer);
    w->timer = NULL;
  }
  return w->holds == 0;
}

void kvds_wait_cancel_all_locked(struct kvds_store *st,
                                 struct kvds_wait **list) {
  struct kvds_wait *w = *list, *next;
  for (; w; w = next) {
    next = w->next;
    struct kvds_waitbox *b = w->box;
    for (uint32_t i = 0; w->kind == KVDS_WAIT_GET && i < w->n; i++)
      kvds_store_wait_remove(st, &w->sw[i]);
    BOX_LOCK(b);
    for (uint32_t i = 0; w->objs && i < w->n; i++)
      if (w->objs[i]) {
        kvds_store_unpin(st, w->objs[i]);
        w->objs[i] = NULL;
      }
    inbox_remove_locked(w);
    int last = release_locked(w);
    BOX_UNLOCK(b);
    if (last)
      wait_free(w);
  }
  *list = NULL;
}

/* Answers w on its owner thread (frozen: its waiters removed or fired, no
 * lock held), then lets it go. */
static void complete(struct kvds_wait *w) {
  struct kvds_waitbox *b = w->box;
  void *owner = w->owner;
  int taken = 0;
  struct kvds_wait_answer a = {.kind = w->kind,
                               .req_id = w->req_id,
                               .flags = w->flags,
                               .n = w->n,
                               .objs = w->objs,
                               .status = w->status,
                               .timed_out =
                                   w->kind != KVDS_WAIT_GET && !w->answered,
                               .out = w->out,
                               .out_len = w->out_len,
                               .out_count = w->out_count,
                               .out_taken = &taken};
  b->answer(owner, &a);
  if (taken)
    w->out = NULL;
  if (w->objs) /* the pins went with the answer */
    memset(w->objs, 0, w->n * sizeof *w->objs);
  unlink_owner(w);
  BOX_LOCK(b);
  int last = release_locked(w);
  BOX_UNLOCK(b);
  if (last)
    wait_free(w);
  b->after(owner);
}

/* How long an answer waits past its deadline for a resolver still working
 * on it (a pull that is aborting its object, a disk read finishing): the
 * resolver's own deadline is the same, so it settles the keys itself a
 * moment later, and the reader is never answered while an object it asked
 * for is still being written here. */
#define OVERDUE_GRACE_MS 200

static void on_timeout(evutil_socket_t fd, short what, void *arg) {
  struct kvds_wait *w = arg;
  struct kvds_waitbox *b = w->box;
  (void)fd;
  (void)what;
  BOX_LOCK(b);
  if (w->holds && !w->overdue) {
    w->overdue = 1; /* kvds_wait_unhold fires the timer when the last goes */
    BOX_UNLOCK(b);
    struct timeval tv = {.tv_sec = OVERDUE_GRACE_MS / 1000,
                         .tv_usec = (OVERDUE_GRACE_MS % 1000) * 1000};
    evtimer_add(w->timer, &tv);
    return;
  }
  BOX_UNLOCK(b);
  int get = w->kind == KVDS_WAIT_GET; /* only a GET has store waiters */
  if (get)
    pthread_mutex_lock(&b->store->lock);
  BOX_LOCK(b);
  for (uint32_t i = 0; get && i < w->n; i++)
    if (w->sw[i].armed) { /* still waiting: that is the answer */
      kvds_store_wait_remove(b->store, &w->sw[i]);
      w->status[i] = KVDS_E_TIMEOUT;
      w->open[i] = 0;
    }
  inbox_remove_locked(w);
  w->frozen = 1; /* results that come now are ignored */
  BOX_UNLOCK(b);
  if (get)
    pthread_mutex_unlock(&b->store->lock);
  complete(w);
}

static void on_inbox(evutil_socket_t fd, short what, void *arg) {
  struct kvds_waitbox *b = arg;
  (void)fd;
  (void)what;
  /* One at a time: answering may close an owner, which cancels its other
   * waits — they must not sit in a list of ours meanwhile. */
  for (;;) {
    BOX_LOCK(b);
    struct kvds_wait *w = b->inbox;
    if (w) {
      b->inbox = w->inbox_next;
      w->in_inbox = 0;
      w->frozen = 1;
    }
    BOX_UNLOCK(b);
    if (!w)
      break;
    complete(w);
  }
}

void kvds_wait_on_seal(struct kvds_waiter *sw, struct kvds_object *obj,
                       void *ud) {
  struct kvds_wait *w = sw->req;
  (void)ud;
  BOX_LOCK(w->box);
  w->objs[sw->idx] = obj; /* the pin taken by the store is ours now */
  w->status[sw->idx] = 0;
  w->open[sw->idx] = 0;
  if (--w->remaining == 0)
    inbox_push_locked(w);
  BOX_UNLOCK(w->box);
}

/* ---- resolvers -----------------------------------------------------------*/

void kvds_wait_hold(struct kvds_wait *w) {
  BOX_LOCK(w->box);
  w->holds++;
  BOX_UNLOCK(w->box);
}

void kvds_wait_unhold(struct kvds_wait *w) {
  BOX_LOCK(w->box);
  int last = --w->holds == 0 && w->dead;
  if (!w->holds && w->overdue && !w->dead && !w->frozen && w->timer)
    event_active(w->timer, EV_TIMEOUT, 0); /* answer now (owner thread) */
  BOX_UNLOCK(w->box);
  if (last)
    wait_free(w);
}

int kvds_wait_kind(const struct kvds_wait *w) {
  return w->kind;
}

uint32_t kvds_wait_count(const struct kvds_wait *w) {
  return w->n;
}

const uint8_t *kvds_wait_key(const struct kvds_wait *w, uint32_t i,
                             uint32_t *klen) {
  *klen = w->klens[i];
  return w->keys[i];
}

int32_t kvds_wait_local(const struct kvds_wait *w, uint32_t i) {
  return w->local ? w->local[i] : KVDS_E_NOTFOUND;
}

void kvds_wait_set_local(struct kvds_wait *w, uint32_t i, int32_t status) {
  if (w->local && i < w->n)
    w->local[i] = status;
}

uint32_t kvds_wait_open(struct kvds_wait *w, uint32_t *idx) {
  struct kvds_waitbox *b = w->box;
  uint32_t m = 0;
  BOX_LOCK(b);
  if (!w->dead && !w->frozen && !w->answered && w->kind != KVDS_WAIT_SEAL)
    for (uint32_t i = 0; i < w->n; i++)
      if (w->kind != KVDS_WAIT_GET || w->open[i])
        idx[m++] = i;
  BOX_UNLOCK(b);
  return m;
}

void kvds_wait_fail(struct kvds_wait *w, uint32_t n, const uint32_t *idx,
                    const int32_t *status) {
  struct kvds_waitbox *b = w->box;
  if (w->kind != KVDS_WAIT_GET || !n)
    return;
  pthread_mutex_lock(&b->store->lock);
  BOX_LOCK(b);
  for (uint32_t k = 0; k < n && !w->dead && !w->frozen; k++) {
    uint32_t i = idx[k];
    if (i >= w->n || !w->sw[i].armed)
      continue;
    kvds_store_wait_remove(b->store, &w->sw[i]);
    w->open[i] = 0;
    w->status[i] = status[k];
    if (--w->remaining == 0)
      inbox_push_locked(w);
  }
  BOX_UNLOCK(b);
  pthread_mutex_unlock(&b->store->lock);
}

void kvds_wait_answer(struct kvds_wait *w, const int32_t *status, uint8_t *buf,
                      size_t len, uint32_t count) {
  struct kvds_waitbox *b = w->box;
  BOX_LOCK(b);
  if (w->kind == KVDS_WAIT_GET || w->dead || w->frozen || w->answered) {
    BOX_UNLOCK(b);
    free(buf);
    return;
  }
  if (status && w->kind == KVDS_WAIT_SEAL) {
    for (uint32_t i = 0; i < w->n; i++)
      if (w->objs[i])
        w->status[i] = status[i];
  } else if (status) {
    memcpy(w->status, status, w->n * sizeof *status);
  }
  free(w->out);
  w->out = buf;
  w->out_len = len;
  w->out_count = count;
  w->answered = 1;
  w->remaining = 0;
  inbox_push_locked(w);
  BOX_UNLOCK(b);
}
