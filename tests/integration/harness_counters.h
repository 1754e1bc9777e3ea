/*
 * harness_counters.h — a worker's counters by name, for the integration
 * tests of its limits: the items of a STATS reply read over a connection the
 * test already holds (so that asking opens no new connection, which would
 * count against --max-connections), and the samples of /metrics
 * (--http-port, served apart from the data connections).
 *
 * Both fail the test (KVH_CHECK) when the answer does not come or the
 * counter is missing.
 */
#ifndef KVDS_TEST_HARNESS_COUNTERS_H
#define KVDS_TEST_HARNESS_COUNTERS_H

#include <stdint.h>

/* Sends a STATS request on the raw connection fd (kvh_raw_tcp /
 * kvh_raw_unix, nothing else in flight on it) and returns the value of the
 * item called `name`. */
uint64_t kvh_stats_item(int fd, const char *name);

/* GET /metrics from 127.0.0.1:http_port and returns the value of the
 * sample `name` (a line "name value"). */
uint64_t kvh_metric(int http_port, const char *name);

#endif
