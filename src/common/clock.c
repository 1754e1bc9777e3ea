/* clock.c — monotonic condition variables and sleeps (clock.h). */
#include "common/clock.h"

#include <errno.h>

int kvds_cond_init_mono(pthread_cond_t *cv) {
  pthread_condattr_t ca;
  int rc = pthread_condattr_init(&ca);
  if (rc)
    return -rc;
  rc = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  if (!rc)
    rc = pthread_cond_init(cv, &ca);
  pthread_condattr_destroy(&ca);
  return -rc;
}

int kvds_cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu,
                         uint64_t deadline_us) {
  if (deadline_us == UINT64_MAX)
    return -pthread_cond_wait(cv, mu);
  struct timespec ts = kvds_mono_timespec(deadline_us);
  return -pthread_cond_timedwait(cv, mu, &ts);
}

void kvds_sleep_ms(int ms) {
  if (ms <= 0)
    return;
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
    ;
}
