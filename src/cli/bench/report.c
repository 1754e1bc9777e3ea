/*
 * report.c — how `kvds bench` prints figures: numbers to about three
 * significant digits, the JSON document of --json, and progress lines
 * (bench.h).
 */
#include <stdarg.h>
#include <stdio.h>

#include "cli/bench/bench.h"

char *bench_fmt3(double v, char *buf, size_t cap) {
  snprintf(buf, cap, v < 10 ? "%.2f" : v < 100 ? "%.1f" : "%.0f", v);
  return buf;
}

int bench_print_json(json_t *root) {
  int rc =
      json_dumpf(root, stdout,
                 JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
  putchar('\n');
  json_decref(root);
  return rc ? CLI_FAIL : CLI_OK;
}

void bench_progress(const char *mode, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  flockfile(stderr); /* one line, also when threads print */
  fprintf(stderr, "kvds bench %s: ", mode);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  funlockfile(stderr);
  va_end(ap);
}
