/*
 * worker.h — the kvds worker daemon (top of the dependency graph).
 *
 * kvds_worker_run() owns the process while it runs: it creates the pool,
 * binds the Unix socket, the TCP listener and the HTTP endpoint, serves until
 * SIGINT/SIGTERM or a SHUTDOWN request, then removes its socket and exits the
 * loop. Daemonizing and pidfiles are the caller's business (see the CLI).
 */
#ifndef KVDS_WORKER_H
#define KVDS_WORKER_H

#include <stddef.h>
#include <stdint.h>

#define KVDS_DEFAULT_ADDR "127.0.0.1:31501"
/* Most copies of an object --replicas keeps (this one included). */
#define KVDS_REPLICAS_MAX 8

struct kvds_worker_config {
  char listen[256];      /* TCP "host:port"; "" = no TCP listener */
  char socket_path[256]; /* Unix socket; "" = derived from listen port */
  uint64_t memory;       /* pool bytes for objects */
  int threads;           /* I/O threads (>= 1) */
  int http_port;         /* 0 = no HTTP endpoint */
  double high_watermark; /* evict when used > high * capacity */
  double eviction_ratio; /* ... down to (high - ratio) * capacity */
  int huge_pages;        /* 0 off, 1 try, 2 on (enum kvds_pool_huge) */
  int busy_poll_us;      /* spin this long for more requests before sleeping */
  int frame_timeout_ms;  /* close a connection stuck mid-frame this long */
  /* Limits per connection (docs/worker.md "Limits"). A transfer in
   * progress (a frame coming in, or output it is owed) must move min_rate
   * bytes/s over every frame-timeout window (0 = no minimum). A connection
   * may hold max_writing bytes in objects being written (0 = a quarter of
   * the pool; one object of any size when it writes nothing else). One
   * holding nothing is closed after idle_timeout_s without traffic (0 =
   * never). At most max_connections (0 = from RLIMIT_NOFILE) are open. */
  uint64_t min_rate;
  uint64_t max_writing;
  int idle_timeout_s;
  int max_connections;
  uint64_t max_object; /* largest value accepted (0 = pool size) */
  int ready_fd;        /* >= 0: write "1" here once serving, then close */
  int log_level;       /* 0 error, 1 warn, 2 info, 3 debug */
  /* Shared secret TCP clients and peers must prove ("" = none; then the
   * TCP listener must be on a loopback address). */
  char auth_token_file[256];
  /* Cluster membership (docs/cluster.md): etcd endpoints ("" = none), or a
   * static peer list ("" = none); neither = the embedded single node. */
  char etcd_address[1024];
  char peers[4096];
  char cluster[64];    /* "" = "kvds" */
  int lease_ttl_s;     /* etcd lease TTL (default 10) */
  char advertise[256]; /* data address peers use; "" = listen */
  int pull_threads;    /* threads that pull from peers (default 4) */
  int pull_timeout_ms; /* deadline of a read resolved by the cluster */
  int replicas;        /* copies of each object sealed here (1 = none) */
  /* Local access (docs/worker.md): besides the owner and root, members of
   * this group (name or number; "" = none) may use the Unix socket and
   * token-less loopback TCP. */
  char allow_group[64];
  /* Disk tier (docs/tiers.md): tier KVDS_TIER_POSIX puts the objects'
   * files under disk_dir, at most disk_capacity bytes of them (0 = no
   * limit), written as disk_policy says, fsync'd per disk_fsync (enum
   * kvds_disk_fsync), by disk_threads threads (default 2). */
  int tier; /* enum kvds_tier_kind (default DRAM) */
  char disk_dir[1024];
  uint64_t disk_capacity;
  int disk_policy; /* enum kvds_disk_policy (default SPILL) */
  int disk_fsync;
  int disk_threads;
  /* How peers' pools are read (docs/transport.md): enum
   * kvds_transport_kind (default AUTO: UCX when this machine has an RDMA
   * device and this build has UCX, else TCP). */
  int transport;
};

enum kvds_transport_kind {
  KVDS_TRANSPORT_AUTO = 0,
  KVDS_TRANSPORT_TCP = 1,
  KVDS_TRANSPORT_UCX = 2
};

enum kvds_tier_kind { KVDS_TIER_DRAM = 0, KVDS_TIER_POSIX = 1 };
enum kvds_disk_policy {
  KVDS_DISK_SPILL = 0,         /* objects leaving DRAM are written */
  KVDS_DISK_WRITE_THROUGH = 1, /* every seal is persisted before it returns */
  KVDS_DISK_READ_ONLY = 2      /* serve what is there, never write */
};

/* Fills the defaults: listen 127.0.0.1:31501, 4 GiB, 1 thread, no HTTP,
 * watermark 0.95, ratio 0.05, huge pages off, busy poll 200 us,
 * frame timeout 30 s, min rate 1 MiB/s, idle timeout 300 s, max writing
 * and max connections derived at start (0); tier DRAM (disk settings:
 * no directory, no capacity limit, policy spill, fsync none, 2 threads). */
void kvds_worker_config_default(struct kvds_worker_config *cfg);

/* The names of the tier settings' values, as the command line and /status
 * spell them: tier "dram", "posix"; policy "spill", "write-through",
 * "read-only"; fsync "none", "object". NULL for a value out of range (so
 * a caller can list them all by counting up from 0). Static strings. */
const char *kvds_worker_tier_name(int tier);
const char *kvds_worker_disk_policy_name(int policy);
const char *kvds_worker_disk_fsync_name(int fsync);
/* "auto", "tcp", "ucx" (as above). */
const char *kvds_worker_transport_name(int transport);

/* Default socket path for a TCP listen address: $KVDS_RUN_DIR (or /tmp) +
 * "/kvds-<port>.sock". Writes into out[cap]. Returns 0 or KVDS_E_ADDR. */
int kvds_worker_socket_path(const char *listen, char *out, size_t cap);

/* Validates cfg (ranges, addresses; loads the auth token file to check it).
 * Tier KVDS_TIER_POSIX needs disk_dir; tier DRAM refuses any disk setting
 * other than its default (it would be ignored); disk_threads is 1..64.
 * A TCP listener on anything but a loopback address needs an auth token
 * file. --etcd_address and --peers exclude each other; either needs a data
 * address others can use (--listen, or --advertise-address when listening
 * on a wildcard address). Returns 0 or KVDS_E_INVAL, with a one-line reason in
 * err[errcap]. */
int kvds_worker_config_check(const struct kvds_worker_config *cfg, char *err,
                             size_t errcap);

/* Runs the worker until it is told to stop. Returns 0 on a clean stop, or a
 * negative error if start-up failed (the reason is logged to stderr). */
int kvds_worker_run(const struct kvds_worker_config *cfg);

#endif
