/*
 * ucxperf.c — ucx_perftest (Debian's ucx-utils) as the ceiling of reads
 * over UCX: a server and a ucp_get client on loopback, both children of
 * the bench in the bench's environment (UCX_TLS and every UCX_* variable
 * apply to them as to the workers), and the client's final bandwidth
 * (bench.h).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/bench/bench.h"
#include "common/clock.h"
#include "common/util.h"

#define UP_START_MS 10000 /* the server listens by then */

/* Whether something listens on TCP port `port` of this host: the socket
 * tables of /proc (the server's own output is buffered until it exits, so
 * it cannot say it is ready). */
static int port_listening(int port) {
  static const char *const tables[] = {"/proc/net/tcp", "/proc/net/tcp6"};
  int found = 0;
  for (int t = 0; t < 2 && !found; t++) {
    FILE *f = fopen(tables[t], "r");
    if (!f)
      continue;
    char line[512];
    while (!found && fgets(line, sizeof line, f)) {
      char local[80];
      unsigned st;
      unsigned p;
      char *colon;
      if (sscanf(line, " %*s %79s %*s %x", local, &st) != 2 ||
          !(colon = strrchr(local, ':')) || sscanf(colon + 1, "%x", &p) != 1)
        continue;
      found = st == 0x0A /* TCP_LISTEN */ && (int)p == port;
    }
    fclose(f);
  }
  return found;
}

/* Waits up to deadline_ns for *pid to exit: its status (128 + signal),
 * -ETIMEDOUT, or -EINTR when the bench was stopped. */
static int wait_until(pid_t *pid, uint64_t deadline_ns) {
  for (;;) {
    int st;
    pid_t p = waitpid(*pid, &st, WNOHANG);
    if (p == *pid) {
      *pid = 0;
      return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    if (p < 0 && errno != EINTR)
      return -errno;
    if (bench_stopped())
      return -EINTR;
    if (kvds_now_ns() > deadline_ns)
      return -ETIMEDOUT;
    kvds_sleep_ms(10);
  }
}

/* The client's result line "Final: iters p50 avg overall bw_avg
 * bw_overall rate_avg rate_overall" (latencies in us, bandwidth in
 * MiB/s): the overall bandwidth in GB/s, and the lanes its endpoint used
 * (UCX's "ep_cfg[N]: ..." info line; "" when absent). 0 or -ENOENT. */
static int parse_client(const char *path, double *gbps, char *lanes,
                        size_t lcap) {
  FILE *f = fopen(path, "r");
  if (!f)
    return -errno;
  char line[1024];
  int rc = -ENOENT;
  lanes[0] = '\0';
  while (fgets(line, sizeof line, f)) {
    double v[8];
    const char *ep = strstr(line, "ep_cfg[");
    if (ep && !lanes[0] && (ep = strstr(ep, "]: "))) {
      snprintf(lanes, lcap, "%s", ep + 3);
      lanes[strcspn(lanes, "\n")] = '\0';
    }
    if (strncmp(line, "Final:", 6) == 0 &&
        sscanf(line + 6, "%lf %lf %lf %lf %lf %lf %lf %lf", &v[0], &v[1], &v[2],
               &v[3], &v[4], &v[5], &v[6], &v[7]) == 8 &&
        v[5] > 0) {
      *gbps = v[5] * 1048576.0 / 1e9;
      rc = 0;
    }
  }
  fclose(f);
  return rc;
}

int bench_ucxperf_get(const char *exe, const char *dir, size_t size,
                      uint64_t outstanding, uint64_t iters, double *gbps,
                      char *lanes, size_t lcap, char *why, size_t cap) {
  char slog[PATH_MAX + 32], clog[PATH_MAX + 32], tail[256];
  char port_s[16], size_s[24], iters_s[24], warm_s[24], out_s[24];
  pid_t srv = 0, cli = 0;
  int ret = CLI_FAIL, port = bench_free_port();
  why[0] = '\0';
  if (port <= 0) {
    snprintf(why, cap, "no free loopback port");
    return CLI_FAIL;
  }
  snprintf(slog, sizeof slog, "%s/ucx_perftest-server.log", dir);
  snprintf(clog, sizeof clog, "%s/ucx_perftest-client.log", dir);
  snprintf(port_s, sizeof port_s, "%d", port);
  snprintf(size_s, sizeof size_s, "%zu", size);
  snprintf(iters_s, sizeof iters_s, "%llu", (unsigned long long)iters);
  snprintf(warm_s, sizeof warm_s, "%llu",
           (unsigned long long)(iters / 10 > outstanding ? iters / 10
                                                         : outstanding));
  snprintf(out_s, sizeof out_s, "%llu", (unsigned long long)outstanding);
  /* -e: endpoints with error handling, as the workers' (UCX then offers
   * only the transports that can report a dead peer, as it does to them) */
  const char *sargv[] = {exe, "-p", port_s, "-e", NULL};
  const char *cargv[] = {exe,  "127.0.0.1", "-p", port_s,  "-t", "ucp_get",
                         "-s", size_s,      "-n", iters_s, "-w", warm_s,
                         "-O", out_s,       "-e", NULL};
  /* info level names the lanes the client's endpoint uses */
  const char *cenv[] = {"UCX_LOG_LEVEL", "info", NULL};
  int rc = bench_spawn(&srv, sargv, slog, NULL, NULL);
  if (rc) {
    snprintf(why, cap, "cannot start %s: %s", exe, kvds_strerror(rc));
    goto out;
  }
  uint64_t deadline = kvds_now_ns() + UP_START_MS * 1000000ull;
  while (!port_listening(port)) {
    int st;
    if (waitpid(srv, &st, WNOHANG) == srv) {
      srv = 0;
      snprintf(why, cap, "the server exited (%s %d) before listening: %s",
               WIFEXITED(st) ? "status" : "signal",
               WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st),
               cli_log_tail(slog, 0, tail, sizeof tail));
      goto out;
    }
    if (bench_stopped())
      goto out;
    if (kvds_now_ns() > deadline) {
      snprintf(why, cap, "the server did not listen on port %d in %d s", port,
               UP_START_MS / 1000);
      goto out;
    }
    kvds_sleep_ms(10);
  }
  if ((rc = bench_spawn(&cli, cargv, clog, NULL, cenv))) {
    snprintf(why, cap, "cannot start %s: %s", exe, kvds_strerror(rc));
    goto out;
  }
  /* 30 s, plus the bytes at 20 MB/s: far slower than any working path */
  double limit_s = 30 + (double)size * (double)iters / 20e6;
  rc = wait_until(&cli, kvds_now_ns() + (uint64_t)(limit_s * 1e9));
  if (rc == -EINTR)
    goto out;
  if (rc == -ETIMEDOUT) {
    snprintf(why, cap, "the ucp_get client did not finish in %.0f s", limit_s);
    goto out;
  }
  if (rc) {
    snprintf(why, cap, "the ucp_get client exited with %s %d: %s",
             rc > 128 ? "signal" : "status", rc > 128 ? rc - 128 : rc,
             cli_log_tail(clog, 0, tail, sizeof tail));
    goto out;
  }
  if (parse_client(clog, gbps, lanes, lcap)) {
    snprintf(why, cap, "no \"Final:\" bandwidth in its output: %s",
             cli_log_tail(clog, 0, tail, sizeof tail));
    goto out;
  }
  ret = CLI_OK;
out:
  bench_proc_stop(&cli, SIGTERM, 2);
  /* the server exits after its one test; after a failure it may wait on */
  if (srv > 0 && ret == CLI_OK)
    wait_until(&srv, kvds_now_ns() + 5000000000ull);
  bench_proc_stop(&srv, SIGTERM, 2);
  unlink(slog);
  unlink(clog);
  return ret;
}
