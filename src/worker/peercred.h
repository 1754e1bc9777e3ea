/*
 * peercred.h — who is on the other end of an accepted connection, and
 * whether that user may use this worker (docs/worker.md, "Local access").
 *
 * A worker belongs to the user who runs it. A connection on its Unix socket
 * tells its user through SO_PEERCRED; a TCP connection from a loopback
 * address is looked up in the kernel's socket table (NETLINK_SOCK_DIAG, as
 * `ss -e` does: the client's socket is the one whose source is our peer
 * address and whose destination is our local address). Allowed: the
 * owner, root, and the members of the --allow-group group. Connections
 * that prove the auth token (TCP, or Unix when a token is set) are allowed
 * whoever they are.
 */
#ifndef KVDS_WORKER_PEERCRED_H
#define KVDS_WORKER_PEERCRED_H

#include <sys/types.h>

struct kvds_access {
  uid_t owner; /* the worker's effective uid */
  gid_t group; /* --allow-group, when has_group */
  int has_group;
};

/* The uid of the process on the other end of fd (an accepted Unix or
 * loopback TCP socket). Returns 0, -ENOTSUP for a TCP peer that is not on
 * a loopback address (nothing to ask), or -errno. */
int kvds__peer_uid(int fd, int is_unix, uid_t *uid);

/* 1 iff uid may use a worker with access rules a (the owner, root, or a
 * member of a->group: primary or supplementary, from the user database). */
int kvds__uid_allowed(const struct kvds_access *a, uid_t uid);

/* Resolves a group given by name or number; 0 or KVDS_E_INVAL. */
int kvds__group_lookup(const char *name, gid_t *gid);

#endif
