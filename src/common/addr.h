/*
 * addr.h — what counts as a loopback address (leaf).
 *
 * One definition, on socket addresses: IPv4 127.0.0.0/8, IPv6 ::1, and
 * IPv4 loopback written as an IPv4-mapped IPv6 address (::ffff:127.x.y.z,
 * how a dual-stack socket sees a connection from 127.0.0.1). Host names
 * are judged by the addresses they resolve to, with the same rule.
 */
#ifndef KVDS_ADDR_H
#define KVDS_ADDR_H

#include <sys/socket.h>

/* 1 if sa is a loopback address (see above), 0 for any other address,
 * family (AF_UNIX included) or NULL. sa points to a socket address of its
 * family's full size (a sockaddr_storage always is). */
int kvds_sockaddr_is_loopback(const struct sockaddr *sa);

/* 1 if host — a numeric IPv4/IPv6 address or a name — resolves
 * (getaddrinfo, which may ask DNS) to at least one address and every
 * address it resolves to is loopback ("localhost" naming both 127.0.0.1 and
 * ::1 is); 0 otherwise, for NULL, "" and names that do not resolve. */
int kvds_host_is_loopback(const char *host);

#endif
