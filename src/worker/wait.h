/*
 * wait.h — requests the worker answers later: a GET waiting for keys to be
 * sealed (by local writers, or by a resolver that fetches them), and an
 * EXISTS / LOOKUP_PREFIX / LOCATE a resolver completes.
 *
 * A wait is opaque outside wait.c. Its owner is one I/O thread (the thread
 * of the connection that sent the request): only that thread creates,
 * arms, cancels and answers it, through its wait box (one per I/O thread:
 * the inbox of completed waits and the lock of their bookkeeping). Other
 * threads — the store's seal hook and resolvers — only report results
 * through the narrow calls below; a resolver holds the wait while it works
 * on it (kvds_wait_hold / kvds_wait_unhold), so a wait whose connection
 * went away stays valid for it and is freed by the last holder.
 *
 * Locks: the store lock guards the store (its waiter registrations
 * included); a box's lock guards its waits' bookkeeping (holders, state,
 * results, the inbox). Order: store lock before box lock; nothing here
 * takes the store lock while holding a box lock.
 *
 * How a resolver reports:
 *  - GET, key found: it seals the object into the store; the store's wake
 *    hook (kvds_wait_on_seal) hands the pin to the wait.
 *  - GET, key absent or failed: kvds_wait_fail(w, i, status).
 *  - EXISTS / LOOKUP_PREFIX / LOCATE: kvds_wait_answer() once.
 * The wait is answered when every key is settled, or at its deadline
 * (KVDS_E_TIMEOUT for what is still open); results that come later are
 * ignored.
 */
#ifndef KVDS_WORKER_WAIT_H
#define KVDS_WORKER_WAIT_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct kvds_store;
struct kvds_object;
struct kvds_waiter;
struct kvds_wait;
struct kvds_waitbox;

enum kvds_wait_kind {
  KVDS_WAIT_GET = 0,
  KVDS_WAIT_EXISTS,
  KVDS_WAIT_LOOKUP,
  KVDS_WAIT_LOCATE,
  KVDS_WAIT_SEAL /* seals (SEAL, PUT) answered once their objects are
                    persisted (a write-through disk tier) */
};

/* What the owner thread gets when a wait is answered (borrowed for the
 * call). GET: objs[i] pinned (the pins are the callee's now) or NULL with
 * status[i] saying why. SEAL: the same objs[] as created (pins the
 * callee's now), status[i] the resolver's (timed_out: it did not answer).
 * EXISTS: status[i] (0 = present somewhere). LOOKUP_PREFIX / LOCATE: the
 * resolver's answer in out[out_len] (reply items after a header's room,
 * out_count of them; the callee may take the buffer by setting *out_taken = 1,
 * then frees it). timed_out: a find the resolver did not answer in time
 * (nothing else is valid then). */
struct kvds_wait_answer {
  int kind;
  uint64_t req_id;
  uint16_t flags;
  uint32_t n;
  struct kvds_object **objs;
  const int32_t *status;
  int timed_out;
  uint8_t *out;
  size_t out_len;
  uint32_t out_count;
  int *out_taken;
};

/* Answers a wait on its owner thread (no lock held). `owner` is what
 * kvds_wait_create was given. */
typedef void (*kvds_wait_answer_fn)(void *owner,
                                    const struct kvds_wait_answer *a);
/* Called on the owner thread after a batch of answers from the inbox (for
 * each owner answered, once per answer): flush its output, which may close
 * it and cancel its other waits. */
typedef void (*kvds_wait_after_fn)(void *owner);

/* ---- boxes (one per I/O thread) ----------------------------------------- */

/* A box on `base` (its inbox event). store: the store the waits' keys are
 * watched in. 0, or -ENOMEM. */
int kvds_waitbox_create(struct event_base *base, struct kvds_store *store,
                        kvds_wait_answer_fn answer, kvds_wait_after_fn after,
                        struct kvds_waitbox **out);
/* After every wait of the box was cancelled. NULL is a no-op. */
void kvds_waitbox_destroy(struct kvds_waitbox *b);

/* ---- the owner thread --------------------------------------------------- */

/*
 * A wait for n keys (key i: keys[i], klens[i] bytes, copied) of request
 * req_id, answered through the box's answer function with `owner`, linked
 * into *list (the owner's list of its waits, which it passes back to
 * kvds_wait_cancel_all). GET: objs[n] and status[n] become the wait's (it
 * frees them): objs[i] already pinned, or NULL with status[i] —
 * KVDS_E_NOTFOUND marks a key to wait for. SEAL: the same, objs[i]
 * the sealed objects (pinned for the answer; status[i] 0) or NULL with
 * the seal's error in status[i]; the resolver gets the objects (and pins
 * of its own) from the server, not from the wait. Finds: status[i] is the local
 * answer (0 = sealed here), copied. Not armed yet. NULL on -ENOMEM (GET: objs
 * and status stay the caller's).
 */
struct kvds_wait *kvds_wait_create(struct kvds_waitbox *b, void *owner,
                                   struct kvds_wait **list, int kind,
                                   uint64_t req_id, uint16_t flags, uint32_t n,
                                   const uint8_t *const *keys,
                                   const uint32_t *klens,
                                   struct kvds_object **objs, int32_t *status);
/* GET: registers a store waiter for each key whose status is
 * KVDS_E_NOTFOUND (the store lock held, the same hold under which the
 * objects were looked up). Returns how many keys it waits for. */
uint32_t kvds_wait_watch_locked(struct kvds_wait *w);
/* Links the wait into its owner's list and answers it after ms at the
 * latest. */
void kvds_wait_arm(struct kvds_wait *w, uint32_t ms);
/* Cancels every wait of a list (the owner goes away; the store lock held):
 * waiters removed, pins given back, the waits freed or left to their
 * holders. *list becomes NULL. */
void kvds_wait_cancel_all_locked(struct kvds_store *st,
                                 struct kvds_wait **list);

/* The store's wake hook (store lock held, any thread): a watched key was
 * sealed; the pin on obj is the wait's now. */
void kvds_wait_on_seal(struct kvds_waiter *sw, struct kvds_object *obj,
                       void *ud);

/* ---- resolvers (any thread) --------------------------------------------- */

/* Keep w valid while working on it / done with it (the last holder of a
 * cancelled wait frees it). */
void kvds_wait_hold(struct kvds_wait *w);
void kvds_wait_unhold(struct kvds_wait *w);

/* Immutable facts of the wait (valid while held). */
int kvds_wait_kind(const struct kvds_wait *w);
uint32_t kvds_wait_count(const struct kvds_wait *w);
const uint8_t *kvds_wait_key(const struct kvds_wait *w, uint32_t i,
                             uint32_t *klen);
/* Finds: the local answer for key i (0 = sealed on this worker). */
int32_t kvds_wait_local(const struct kvds_wait *w, uint32_t i);
/* Finds: a resolver in front of another (the disk tier before the
 * cluster) marks key i as found here (status 0) before it hands the wait
 * on. Only before the hand-over. */
void kvds_wait_set_local(struct kvds_wait *w, uint32_t i, int32_t status);

/* The keys still open, their indexes into idx[] (room for count): GET,
 * those still waited for; finds: all of them, unless answered. Returns how
 * many (0 once the wait was answered or cancelled). Takes the box lock
 * only. */
uint32_t kvds_wait_open(struct kvds_wait *w, uint32_t *idx);
/* GET: keys idx[0..n) could not be supplied, key idx[k] for the reason
 * status[k] (KVDS_E_NOTFOUND, KVDS_E_PEER, KVDS_E_TIMEOUT, ...). A no-op
 * for a key already settled or a wait already answered. Takes the store
 * lock (once). */
void kvds_wait_fail(struct kvds_wait *w, uint32_t n, const uint32_t *idx,
                    const int32_t *status);
/* Finds: the answer. EXISTS: status[n] (0 = present somewhere); LOOKUP /
 * LOCATE: buf[len] (reply items after a header's room, count of them;
 * NULL / 0 for none), owned by the wait from now on (freed with free()).
 * SEAL: status[n], one per object (entries without an object keep theirs).
 * Ignored (buf freed) when the wait was answered or cancelled already. */
void kvds_wait_answer(struct kvds_wait *w, const int32_t *status, uint8_t *buf,
                      size_t len, uint32_t count);

#endif
