/* metrics.c — histograms and Prometheus text (metrics.h). */
#include "proxy/metrics.h"

const double KVDS_HIST_BOUNDS[KVDS_HIST_NBOUNDS] = {
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};

void kvds_hist_observe(struct kvds_hist *h, double s) {
  int i = 0;
  while (i < KVDS_HIST_NBOUNDS && s > KVDS_HIST_BOUNDS[i])
    i++;
  h->count[i]++;
  h->total++;
  h->sum += s;
}

void kvds_metric_head(struct evbuffer *b, const char *name, const char *type,
                      const char *help) {
  evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name,
                      type);
}

void kvds_hist_print(struct evbuffer *b, const char *name, const char *labels,
                     const struct kvds_hist *h) {
  const char *sep = labels[0] ? "," : "";
  uint64_t cum = 0;
  for (int i = 0; i < KVDS_HIST_NBOUNDS; i++) {
    cum += h->count[i];
    evbuffer_add_printf(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep,
                        KVDS_HIST_BOUNDS[i], (unsigned long long)cum);
  }
  evbuffer_add_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep,
                      (unsigned long long)h->total);
  if (labels[0]) {
    evbuffer_add_printf(b, "%s_sum{%s} %.6f\n%s_count{%s} %llu\n", name, labels,
                        h->sum, name, labels, (unsigned long long)h->total);
  } else {
    evbuffer_add_printf(b, "%s_sum %.6f\n%s_count %llu\n", name, h->sum, name,
                        (unsigned long long)h->total);
  }
}
