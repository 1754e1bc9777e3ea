/*
 * metrics.h — the proxy's latency histograms and Prometheus text output
 * (pure; the caller owns the buffer).
 *
 * A histogram has the fixed buckets KVDS_HIST_BOUNDS (seconds); observing
 * is two additions. Output follows the Prometheus text format 0.0.4:
 * cumulative `_bucket{le=...}` lines, `_sum` and `_count`.
 */
#ifndef KVDS_PROXY_METRICS_H
#define KVDS_PROXY_METRICS_H

#include <event2/buffer.h>
#include <stdint.h>

#define KVDS_HIST_NBOUNDS 13

struct kvds_hist {
  uint64_t count[KVDS_HIST_NBOUNDS + 1]; /* last: above every bound */
  uint64_t total;
  double sum;
};

/* The upper bounds in seconds, ascending. */
extern const double KVDS_HIST_BOUNDS[KVDS_HIST_NBOUNDS];

void kvds_hist_observe(struct kvds_hist *h, double seconds);

/* Appends "# HELP name help\n# TYPE name type\n". */
void kvds_metric_head(struct evbuffer *b, const char *name, const char *type,
                      const char *help);

/* Appends the bucket, sum and count lines of h; `labels` is "" or
 * `k="v",k2="v2"` (no braces), already escaped. */
void kvds_hist_print(struct evbuffer *b, const char *name, const char *labels,
                     const struct kvds_hist *h);

#endif
