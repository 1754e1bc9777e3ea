/*
 * proxy.h — `kvds proxy`: the HTTP front end of a PD-disaggregated (or
 * colocated) vLLM fleet (docs/proxy.md).
 *
 * One process, one libevent loop. A completion request goes to a prefill
 * instance with max_tokens 1 and do_remote_decode, then with the returned
 * kv_transfer_params to a decode instance whose answer is streamed back
 * unchanged. Without decoders every request goes unchanged to one instance.
 * Backends are health-checked; failed hops are retried on other instances;
 * every hop has a deadline; a client that goes away cancels its hops.
 *
 * Ownership: kvds_proxy_new copies everything it keeps from the config.
 */
#ifndef KVDS_PROXY_H
#define KVDS_PROXY_H

#include <stddef.h>
#include <stdint.h>

#include "proxy/route.h"

struct kvds_proxy_config {
  const char *host; /* listen address */
  uint16_t port;    /* 0: any free port (kvds_proxy_port tells which) */
  const char *const *prefill; /* "host:port"; colocated instances when no
                                 decoders are given */
  size_t nprefill;
  const char *const *decode; /* "host:port" */
  size_t ndecode;
  enum kvds_route_policy policy;
  uint32_t affinity_block; /* prefix-affinity block, bytes or token ids */
  uint32_t affinity_slack; /* in-flight excess tolerated for affinity */
  uint32_t prefill_timeout_ms;
  uint32_t decode_timeout_ms;
  uint32_t connect_timeout_ms;
  uint32_t health_interval_ms;
  uint32_t retries;    /* more tries per role after the first */
  uint64_t max_body;   /* request body limit, bytes */
  const char *api_key; /* NULL: forward the client's Authorization */
  int verbose;         /* one stderr line per request */
};

typedef struct kvds_proxy kvds_proxy;

/* Validates the config, resolves the backends and binds the listening
 * socket. Returns 0, or -1 with a one-line reason in err. */
int kvds_proxy_new(const struct kvds_proxy_config *cfg, kvds_proxy **out,
                   char *err, size_t ecap);

/* The bound port. */
uint16_t kvds_proxy_port(const kvds_proxy *px);

/* Serves until SIGINT or SIGTERM: the first stops accepting and lets
 * in-flight requests finish for up to 10 s, a second exits at once.
 * Returns 0, or -1 when the event loop failed. */
int kvds_proxy_run(kvds_proxy *px);

/* Cancels whatever is still in flight and frees everything. */
void kvds_proxy_free(kvds_proxy *px);

#endif
