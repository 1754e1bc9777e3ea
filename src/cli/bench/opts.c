/*
 * opts.c — option values of `kvds bench`: numbers and sizes within a range,
 * the comma-separated --sizes / --batch lists, and the options every mode
 * has (bench.h).
 */
#include <stdio.h>
#include <string.h>

#include "cli/bench/bench.h"
#include "common/util.h"

int bench_parse_u64_in(const char *opt, const char *arg, int size, uint64_t lo,
                       uint64_t hi, uint64_t *out) {
  uint64_t v;
  int rc = size ? cli_parse_size_opt("bench", opt, arg, &v)
                : cli_parse_u64_opt("bench", opt, arg, &v);
  if (rc)
    return rc;
  if (v < lo || v > hi) {
    char a[32], b[32];
    if (size)
      cli_err("bench", "%s %s is out of range (%s..%s)", opt, arg,
              kvds_fmt_bytes(lo, a, sizeof a), kvds_fmt_bytes(hi, b, sizeof b));
    else
      cli_err("bench", "%s %s is out of range (%llu..%llu)", opt, arg,
              (unsigned long long)lo, (unsigned long long)hi);
    return CLI_USAGE;
  }
  *out = v;
  return CLI_OK;
}

int bench_parse_double_in(const char *opt, const char *arg, double lo,
                          double hi, double *out) {
  double v;
  int rc = cli_parse_double_opt("bench", opt, arg, &v);
  if (rc)
    return rc;
  if (v < lo || v > hi) {
    cli_err("bench", "%s %s is out of range (%g..%g)", opt, arg, lo, hi);
    return CLI_USAGE;
  }
  *out = v;
  return CLI_OK;
}

int bench_parse_list(const char *opt, const char *s, int sizes, uint64_t *out,
                     int *n) {
  char buf[512];
  snprintf(buf, sizeof buf, "%s", s);
  *n = 0;
  char *save = NULL;
  for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    if (*n == BENCH_LIST_MAX) {
      cli_err("bench", "%s: at most %d values", opt, BENCH_LIST_MAX);
      return CLI_USAGE;
    }
    int rc = bench_parse_u64_in(
        opt, t, sizes, 1, sizes ? (1ull << 30) : KVDS_BATCH_MAX, &out[*n]);
    if (rc)
      return rc;
    (*n)++;
  }
  if (*n == 0) {
    cli_err("bench", "%s: empty list", opt);
    return CLI_USAGE;
  }
  return CLI_OK;
}

int bench_parse_common(int c, int *quick, int *json) {
  switch (c) {
  case 'q':
    *quick = 1;
    return CLI_OK;
  case 'j':
    *json = 1;
    return CLI_OK;
  case 'h':
    bench_print_help();
    return -1;
  default:
    return CLI_USAGE;
  }
}

int bench_parse_end(const char *mode, int argc, char **argv) {
  if (optind == argc)
    return CLI_OK;
  cli_err("bench", "%s: unexpected argument '%s'", mode, argv[optind]);
  return CLI_USAGE;
}
