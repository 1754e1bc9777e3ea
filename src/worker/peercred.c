/*
 * peercred.c — the user behind a connection (peercred.h).
 */
#include "worker/peercred.h"

#include <errno.h>
#include <grp.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "common/addr.h"
#include "kvds/kvds.h"

/* Fills one side of the diag id from a socket address. */
static void diag_side(const struct sockaddr_storage *a, __be16 *port,
                      __be32 addr[4]) {
  memset(addr, 0, 16);
  if (a->ss_family == AF_INET) {
    const struct sockaddr_in *v4 = (const struct sockaddr_in *)a;
    *port = v4->sin_port;
    addr[0] = v4->sin_addr.s_addr;
  } else {
    const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)a;
    *port = v6->sin6_port;
    memcpy(addr, &v6->sin6_addr, 16);
  }
}

/* The uid owning the TCP socket whose (source, destination) are (src,
 * dst): one exact-match SOCK_DIAG_BY_FAMILY request. */
static int tcp_owner(const struct sockaddr_storage *src,
                     const struct sockaddr_storage *dst, uid_t *uid) {
  int nl = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (nl < 0)
    return -errno;
  struct timeval tv = {.tv_sec = 0, .tv_usec = 200000};
  setsockopt(nl, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  struct {
    struct nlmsghdr nlh;
    struct inet_diag_req_v2 r;
  } req;
  memset(&req, 0, sizeof req);
  req.nlh.nlmsg_len = sizeof req;
  req.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  req.nlh.nlmsg_flags = NLM_F_REQUEST;
  req.nlh.nlmsg_seq = 1;
  req.r.sdiag_family = (__u8)src->ss_family;
  req.r.sdiag_protocol = IPPROTO_TCP;
  req.r.idiag_states = ~0u;
  diag_side(src, &req.r.id.idiag_sport, req.r.id.idiag_src);
  diag_side(dst, &req.r.id.idiag_dport, req.r.id.idiag_dst);
  req.r.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
  req.r.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
  struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
  int rc = -EIO;
  if (sendto(nl, &req, sizeof req, 0, (struct sockaddr *)&kernel,
             sizeof kernel) != (ssize_t)sizeof req) {
    rc = -errno;
    goto out;
  }
  union {
    struct nlmsghdr h;
    char b[8192];
  } buf;
  ssize_t got = recv(nl, buf.b, sizeof buf.b, 0);
  if (got < 0) {
    rc = -errno;
    goto out;
  }
  int n = (int)got;
  for (struct nlmsghdr *h = &buf.h; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
    if (h->nlmsg_type == NLMSG_ERROR) {
      const struct nlmsgerr *e = NLMSG_DATA(h);
      rc =
          h->nlmsg_len >= NLMSG_LENGTH(sizeof *e) && e->error ? e->error : -EIO;
      goto out;
    }
    if (h->nlmsg_type == SOCK_DIAG_BY_FAMILY &&
        h->nlmsg_len >= NLMSG_LENGTH(sizeof(struct inet_diag_msg))) {
      const struct inet_diag_msg *m = NLMSG_DATA(h);
      *uid = (uid_t)m->idiag_uid;
      rc = 0;
      goto out;
    }
  }
out:
  close(nl);
  return rc;
}

int kvds__peer_uid(int fd, int is_unix, uid_t *uid) {
  if (is_unix) {
    struct ucred cr;
    socklen_t len = sizeof cr;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len))
      return -errno;
    *uid = cr.uid;
    return 0;
  }
  struct sockaddr_storage peer, self;
  socklen_t pl = sizeof peer, sl = sizeof self;
  if (getpeername(fd, (struct sockaddr *)&peer, &pl) ||
      getsockname(fd, (struct sockaddr *)&self, &sl))
    return -errno;
  if (!kvds_sockaddr_is_loopback((const struct sockaddr *)&peer) ||
      peer.ss_family != self.ss_family)
    return -ENOTSUP;
  /* The client's socket: from its address (our peer) to ours. */
  return tcp_owner(&peer, &self, uid);
}

int kvds__uid_allowed(const struct kvds_access *a, uid_t uid) {
  if (uid == a->owner || uid == 0)
    return 1;
  if (!a->has_group)
    return 0;
  struct passwd pw, *pp = NULL;
  char pbuf[4096];
  if (getpwuid_r(uid, &pw, pbuf, sizeof pbuf, &pp) || !pp)
    return 0;
  if (pw.pw_gid == a->group)
    return 1;
  gid_t groups[256];
  int ng = (int)(sizeof groups / sizeof groups[0]);
  if (getgrouplist(pw.pw_name, pw.pw_gid, groups, &ng) < 0)
    ng = (int)(sizeof groups / sizeof groups[0]); /* the first ones */
  for (int i = 0; i < ng; i++)
    if (groups[i] == a->group)
      return 1;
  return 0;
}

int kvds__group_lookup(const char *name, gid_t *gid) {
  struct group gr, *gp = NULL;
  char buf[8192];
  if (!getgrnam_r(name, &gr, buf, sizeof buf, &gp) && gp) {
    *gid = gr.gr_gid;
    return 0;
  }
  char *end;
  errno = 0;
  unsigned long v = strtoul(name, &end, 10);
  if (*name && !*end && !errno && v < (unsigned long)(gid_t)-1) {
    *gid = (gid_t)v;
    return 0;
  }
  return KVDS_E_INVAL;
}
