/*
 * ucx.h — one-sided reads from a peer worker's pool over UCX (the UCP API:
 * RDMA on InfiniBand/RoCE, or UCX's tcp, shared-memory and cma transports).
 *
 * Each worker opens one kvds_ucx: a UCP context and worker, its whole pool
 * registered once (ucp_mem_map), and a progress thread that sleeps on the
 * UCP worker's event fd (it serves the peers' reads on transports that
 * need the owner's CPU, and completes our own). kvds_ucx_info is what a
 * peer needs to read from this pool: the worker address, the pool's rkey
 * and base. A reader opens a kvds_ucx_ep from that blob and reads byte
 * ranges of the owner's pool (ucp_get_nbx) straight into its own memory.
 * The blob travels over the authenticated peer connection only (the rkey
 * lets its holder read the whole pool): docs/transport.md.
 *
 * Conventions: 0 or KVDS_E_* / -errno (kvds.h); deadlines are kvds_now_us()
 * values. UCX_TLS, UCX_NET_DEVICES and every other UCX_* variable of the
 * environment apply (ucp_config_read).
 *
 * Threads: every function may be called from any thread (the UCP worker is
 * opened in UCS_THREAD_MODE_MULTI). An endpoint is shared by reference
 * (kvds_ucx_ep_ref / kvds_ucx_ep_unref); a broken one stays broken.
 *
 * Built without UCX (no libucx-dev), kvds_ucx_built() is 0 and
 * kvds_ucx_open fails with KVDS_E_INVAL and a reason.
 */
#ifndef KVDS_NET_UCX_H
#define KVDS_NET_UCX_H

#include <stddef.h>
#include <stdint.h>

struct kvds_ucx;
struct kvds_ucx_ep;

/* 1 when this build has UCX. */
int kvds_ucx_built(void);

/* 1 when the machine has an RDMA device (/sys/class/infiniband: InfiniBand
 * or RoCE, what UCX's verbs transports use), its name in what[cap]; else
 * 0. `--transport auto` picks UCX only then. */
int kvds_ucx_fabric(char *what, size_t cap);

/* Opens UCX over the pool memory base[0..len) (registered once). On failure
 * err[errcap] holds one line: KVDS_E_INVAL (built without UCX), KVDS_E_PEER
 * (UCX could not start: no transport, a bad UCX_TLS), -ENOMEM. */
int kvds_ucx_open(void *base, size_t len, struct kvds_ucx **out, char *err,
                  size_t errcap);

/* Stops the progress thread, closes what is left and frees u. Every
 * endpoint must have been unreferenced. NULL is a no-op. */
void kvds_ucx_close(struct kvds_ucx *u);

/* What a peer needs to read this pool (valid until close). */
void kvds_ucx_info(const struct kvds_ucx *u, const void **blob, size_t *len);

/* The transports UCX was asked for (UCX_TLS, "all" when unset). */
const char *kvds_ucx_tls(const struct kvds_ucx *u);

/* Largest blob kvds_ucx_ep_open accepts. */
#define KVDS_UCX_INFO_MAX (64u << 10)

/* An endpoint to the peer whose kvds_ucx_info is blob[0..len) (checked:
 * KVDS_E_PROTO when it does not parse). One reference, the caller's.
 * Errors: KVDS_E_PROTO, KVDS_E_PEER (UCX refused the address or rkey),
 * -ENOMEM. */
int kvds_ucx_ep_open(struct kvds_ucx *u, const void *blob, size_t len,
                     struct kvds_ucx_ep **out);
void kvds_ucx_ep_ref(struct kvds_ucx_ep *ep);
/* Drops a reference; the last one closes the endpoint. NULL: no-op. */
void kvds_ucx_ep_unref(struct kvds_ucx_ep *ep);
/* 0 once the endpoint failed (a read's error, the peer gone, a deadline
 * passed while reading): later reads fail at once. */
int kvds_ucx_ep_ok(const struct kvds_ucx_ep *ep);

/* The UCX transports and devices the endpoint's lanes use, as
 * "tcp/lo,cma/memory" (what UCX chose once the endpoint connected; its
 * lanes before the first read may be fewer). Into buf[cap], "" if none. */
void kvds_ucx_ep_lanes(struct kvds_ucx_ep *ep, char *buf, size_t cap);

/* One range to read: len bytes at offset roff of the peer's pool into dst
 * (len >= 1; dst is this worker's pool memory or any other). */
struct kvds_ucx_read {
  uint64_t roff, len;
  void *dst;
};

/*
 * Reads rd[0..n) and waits until every byte landed or the deadline passed.
 * 0: all landed. KVDS_E_RANGE (a range lies outside the peer's pool) or
 * -ENOMEM: nothing was read and the endpoint is as it was. Else the
 * endpoint is broken (later reads fail at once) and the error is
 * KVDS_E_TIMEOUT (the deadline passed) or KVDS_E_PEER (the peer or the
 * network failed). Whatever it returns, no transfer into any dst is
 * under way any more when it returns — except with KVDS_E_STATE: UCX did
 * not give the requests back in time after the endpoint was closed, and
 * the dst memory must not be reused (the caller leaks it).
 */
int kvds_ucx_read(struct kvds_ucx_ep *ep, const struct kvds_ucx_read *rd,
                  size_t n, uint64_t deadline_us);

#endif
