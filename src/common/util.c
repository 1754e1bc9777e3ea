/* util.c — size/number parsing, error texts, address splitting. */
#include "common/util.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "kvds/kvds.h"

int kvds_parse_u64(const char *s, uint64_t *out) {
  if (!s || !isdigit((unsigned char)*s))
    return KVDS_E_INVAL;
  errno = 0;
  char *end;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || *end)
    return KVDS_E_INVAL;
  *out = v;
  return 0;
}

int kvds_parse_ratio(const char *s, double *out) {
  if (!s || !*s)
    return KVDS_E_INVAL;
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || *end || !(v >= 0.0 && v <= 1.0))
    return KVDS_E_INVAL;
  *out = v;
  return 0;
}

int kvds_parse_size(const char *s, uint64_t *out) {
  if (!s || !isdigit((unsigned char)*s))
    return KVDS_E_INVAL;
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || v < 0)
    return KVDS_E_INVAL;
  static const struct {
    const char *suffix;
    uint64_t mult;
  } units[] = {
      {"", 1},
      {"B", 1},
      {"K", 1ull << 10},
      {"KB", 1000},
      {"KiB", 1ull << 10},
      {"M", 1ull << 20},
      {"MB", 1000000},
      {"MiB", 1ull << 20},
      {"G", 1ull << 30},
      {"GB", 1000000000},
      {"GiB", 1ull << 30},
      {"T", 1ull << 40},
      {"TB", 1000000000000ull},
      {"TiB", 1ull << 40},
  };
  for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
    if (strcasecmp(end, units[i].suffix) == 0 &&
        (strcmp(end, units[i].suffix) == 0 || units[i].mult != 1000)) {
      double bytes = v * (double)units[i].mult;
      if (bytes >= 18446744073709551615.0)
        return KVDS_E_INVAL;
      *out = (uint64_t)bytes;
      return 0;
    }
  }
  return KVDS_E_INVAL;
}

char *kvds_fmt_bytes(uint64_t n, char *buf, size_t cap) {
  static const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = (double)n;
  size_t i = 0;
  while (v >= 1024 && i < 4) {
    v /= 1024;
    i++;
  }
  if (i == 0)
    snprintf(buf, cap, "%llu B", (unsigned long long)n);
  else
    snprintf(buf, cap, "%.1f %s", v, u[i]);
  return buf;
}

int kvds_verrf(char *err, size_t cap, int rc, const char *fmt, va_list ap) {
  if (err && cap)
    vsnprintf(err, cap, fmt, ap);
  return rc;
}

int kvds_errf(char *err, size_t cap, int rc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  kvds_verrf(err, cap, rc, fmt, ap);
  va_end(ap);
  return rc;
}

int kvds_split_hostport(const char *addr, char *host, size_t hcap,
                        uint16_t *port) {
  if (!addr)
    return KVDS_E_ADDR;
  if (strncmp(addr, "tcp://", 6) == 0)
    addr += 6;
  const char *colon, *hs = addr, *he;
  if (*addr == '[') {
    he = strchr(addr, ']');
    if (!he || he[1] != ':')
      return KVDS_E_ADDR;
    hs = addr + 1;
    colon = he + 1;
  } else {
    colon = strrchr(addr, ':');
    if (!colon)
      return KVDS_E_ADDR;
    he = colon;
  }
  size_t hl = (size_t)(he - hs);
  if (hl == 0 || hl >= hcap)
    return KVDS_E_ADDR;
  uint64_t p;
  if (kvds_parse_u64(colon + 1, &p) || p == 0 || p > 65535)
    return KVDS_E_ADDR;
  memcpy(host, hs, hl);
  host[hl] = 0;
  *port = (uint16_t)p;
  return 0;
}
