/*
 * clock.h — deadlines on the monotonic clock, timed waits, sleeps (leaf).
 *
 * A deadline is an absolute time in microseconds on the clock of
 * kvds_now_us() (CLOCK_MONOTONIC). A call that waits fixes its deadline
 * once, when it starts, and asks "how long is left" before each wait, so a
 * wait cut short (a signal, a spurious wake-up) does not restart the clock.
 *
 * The arithmetic saturates instead of wrapping: a timeout too large to add
 * gives UINT64_MAX (never), a deadline in the past leaves 0. The functions
 * that take `now` read no clock, so their edge cases can be tested exactly.
 *
 * Condition variables that are waited on with a deadline must be
 * initialised with kvds_cond_init_mono(): pthread's default clock is the
 * wall clock, which jumps when the time is set.
 */
#ifndef KVDS_CLOCK_H
#define KVDS_CLOCK_H

#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <time.h>

#include "common/util.h" /* kvds_now_us */

/* The deadline `ms` milliseconds after `base_us`: base_us for ms <= 0,
 * UINT64_MAX when the sum does not fit. */
static inline uint64_t kvds_deadline_after(uint64_t base_us, int64_t ms) {
  if (ms <= 0)
    return base_us;
  if ((uint64_t)ms > (UINT64_MAX - base_us) / 1000u)
    return UINT64_MAX;
  return base_us + (uint64_t)ms * 1000u;
}

/* The deadline `ms` milliseconds from now (kvds_deadline_after on
 * kvds_now_us()). */
static inline uint64_t kvds_deadline_ms(int64_t ms) {
  return kvds_deadline_after(kvds_now_us(), ms);
}

/* Microseconds from now_us until deadline_us; 0 once it has passed. */
static inline uint64_t kvds_deadline_left_us(uint64_t deadline_us,
                                             uint64_t now_us) {
  return deadline_us > now_us ? deadline_us - now_us : 0;
}

/* Milliseconds from now_us until deadline_us, rounded up — a poll() or a
 * timer of that many ms does not end before the deadline — and at most
 * INT_MAX; 0 once it has passed. */
static inline int kvds_deadline_left_ms(uint64_t deadline_us, uint64_t now_us) {
  uint64_t us = kvds_deadline_left_us(deadline_us, now_us);
  uint64_t ms = us / 1000u + (us % 1000u != 0);
  return ms > (uint64_t)INT_MAX ? INT_MAX : (int)ms;
}

/* A monotonic time in microseconds as a struct timespec, the form
 * pthread_cond_timedwait (on a kvds_cond_init_mono condition variable) and
 * clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) take. */
static inline struct timespec kvds_mono_timespec(uint64_t us) {
  struct timespec ts;
  ts.tv_sec = (time_t)(us / 1000000u);
  ts.tv_nsec = (long)(us % 1000000u) * 1000;
  return ts;
}

/* Initialises *cv to time its waits on CLOCK_MONOTONIC (the clock of
 * kvds_now_us and of the deadlines above). 0 or -errno (nothing to destroy
 * then). Destroy it with pthread_cond_destroy. */
int kvds_cond_init_mono(pthread_cond_t *cv);

/* pthread_cond_timedwait on a kvds_cond_init_mono cv until the monotonic
 * deadline_us (UINT64_MAX: no deadline). The caller holds mu, as for any
 * condition wait, and holds it again on return. Returns 0 when woken (by a
 * signal or spuriously: check the condition again), -ETIMEDOUT once the
 * deadline has passed (at once for one already past), or another -errno. */
int kvds_cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu,
                         uint64_t deadline_us);

/* Sleeps at least ms milliseconds (none for ms <= 0), carrying on after a
 * signal handler ran. Not a way to wait for another thread: use a condition
 * variable for that. */
void kvds_sleep_ms(int ms);

#endif
