/* addr.c — loopback addresses (addr.h). */
#include "common/addr.h"

#include <netdb.h>
#include <netinet/in.h>
#include <stddef.h>

int kvds_sockaddr_is_loopback(const struct sockaddr *sa) {
  if (!sa)
    return 0;
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *v4 = (const struct sockaddr_in *)(const void *)sa;
    return (ntohl(v4->sin_addr.s_addr) >> 24) == 127;
  }
  if (sa->sa_family == AF_INET6) {
    const struct in6_addr *v6 =
        &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(v6) ||
           (IN6_IS_ADDR_V4MAPPED(v6) && v6->s6_addr[12] == 127);
  }
  return 0;
}

int kvds_host_is_loopback(const char *host) {
  if (!host || !*host)
    return 0;
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  struct addrinfo *ai;
  if (getaddrinfo(host, NULL, &hints, &ai))
    return 0;
  int loop = ai != NULL;
  for (const struct addrinfo *p = ai; p && loop; p = p->ai_next)
    loop = kvds_sockaddr_is_loopback(p->ai_addr);
  freeaddrinfo(ai);
  return loop;
}
