/*
 * harness_cluster.h — the integration tests' view of a cluster: each
 * worker's CLUSTER object (kvds_cluster_status, parsed with jansson), the
 * members and epochs in it, and a bounded wait until every worker sees the
 * wanted members. Shared by test_cluster and test_membership.
 */
#ifndef KVDS_TEST_HARNESS_CLUSTER_H
#define KVDS_TEST_HARNESS_CLUSTER_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "harness.h"

/* The worker's cluster object (the caller json_decref's it), or NULL if
 * the worker does not answer. Fails the test if the reply is not JSON. */
json_t *kvh_cluster_of(const char *addr);
/* The member with this id in a cluster object (borrowed from cl), or
 * NULL. */
json_t *kvh_member(json_t *cl, const char *id);
/* The epoch of member id in cl (0: not in it). */
uint64_t kvh_epoch_of(json_t *cl, const char *id);
/* The epoch of member id in the view of viewer (0: not in it / no
 * answer). */
uint64_t kvh_view_epoch(const char *viewer, const char *id);
/* 1 iff the view of addr holds exactly the ids in want[0..n). */
int kvh_view_is(const char *addr, const char *const *want, size_t n);
/* Prints the view of addr (compact JSON) to stderr. */
void kvh_dump_view(const char *addr);
/* Waits until every worker in who[0..nw) sees exactly want[0..n); returns
 * the ms it took; prints every view and fails the test after timeout_ms. */
uint64_t kvh_await_views(struct kvh_worker *const *who, size_t nw,
                         const char *const *want, size_t n, int timeout_ms,
                         const char *what);

#endif
