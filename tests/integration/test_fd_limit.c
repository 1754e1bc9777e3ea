/*
 * test_fd_limit — a worker that runs out of file descriptors (RLIMIT_NOFILE
 * of 48, then more connections than that) keeps serving the clients it
 * has, does not flood its log (one failed accept per wakeup of a listener
 * that stays readable would write megabytes per second), and accepts new
 * clients again once connections close.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

#define WORKER_NOFILE 48
#define EXTRA 80
#define LOG_MAX (64u << 10)

static long long file_size(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

int main(int argc, char **argv) {
  kvh_init(argc, argv, "fd_limit");
  struct rlimit old, low;
  KVH_CHECK(getrlimit(RLIMIT_NOFILE, &old) == 0, "getrlimit");
  KVH_CHECK(old.rlim_cur >= 2 * EXTRA, "this test needs %d fds", 2 * EXTRA);
  low = old;
  low.rlim_cur = WORKER_NOFILE; /* inherited by the worker only */
  KVH_CHECK(setrlimit(RLIMIT_NOFILE, &low) == 0, "setrlimit: %s",
            strerror(errno));
  struct kvh_worker w;
  /* A cap above the descriptors it has: accept itself must fail (the
   * default cap, from RLIMIT_NOFILE, is test_conn_limits' business). */
  kvh_worker_start(&w, "8MiB",
                   (const char *const[]){"--max-connections", "1000", NULL});
  KVH_CHECK(setrlimit(RLIMIT_NOFILE, &old) == 0, "setrlimit: %s",
            strerror(errno));

  kvds_client *c = kvh_connect(w.tcp);
  KVH_OK(kvds_put(c, "k", 1, "v", 1));
  long long log0 = file_size(w.log);

  /* More connections than the worker has descriptors for. */
  int fds[EXTRA];
  for (int i = 0; i < EXTRA; i++)
    fds[i] = kvh_raw_tcp(w.port); /* the kernel's backlog takes them */
  for (int i = 0; i < 20; i++) {
    KVH_OK(kvds_ping(c));
    kvh_sleep_ms(25);
  }
  uint8_t b[2];
  size_t len;
  KVH_OK(kvds_get(c, "k", 1, b, sizeof b, &len, 0));
  long long grew = file_size(w.log) - log0;
  KVH_CHECK(grew < LOG_MAX,
            "the worker wrote %lld bytes of log in 0.5 s while out of file "
            "descriptors",
            grew);

  /* Room again: new clients get in. */
  for (int i = 0; i < EXTRA; i++)
    close(fds[i]);
  uint64_t deadline = kvh_now_ms() + 10000;
  int rc;
  for (;;) {
    kvds_client *n = NULL;
    rc = kvds_client_connect(w.tcp, 1000, &n);
    if (rc == 0)
      rc = kvds_ping(n);
    kvds_client_close(n);
    if (rc == 0 || kvh_now_ms() > deadline)
      break;
    kvh_sleep_ms(20);
  }
  KVH_CHECK(rc == 0, "no new client served after the connections closed: %s",
            kvds_err_name(rc));
  KVH_OK(kvds_ping(c));
  kvds_client_close(c);
  kvh_worker_stop(&w);
  return kvh_finish();
}
