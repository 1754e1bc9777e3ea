/* util.h — small helpers shared by every module (leaf). */
#ifndef KVDS_UTIL_H
#define KVDS_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

/* Monotonic clock in microseconds / nanoseconds. */
static inline uint64_t kvds_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}
static inline uint64_t kvds_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
/* Wall clock in microseconds (for timestamps shown to users). */
static inline uint64_t kvds_wall_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Little-endian loads and stores: the wire format's integers (proto.h,
 * docs/protocol.md) on any host, and on a little-endian one a plain copy.
 * (The pool header is not among them: it is in host order, as a pool is
 * only ever mapped by processes of one host; see pool.h.) */
#if !defined(__BYTE_ORDER__) || !defined(__ORDER_LITTLE_ENDIAN__) ||           \
    !defined(__ORDER_BIG_ENDIAN__)
#error "kvds needs a compiler that defines __BYTE_ORDER__ (GCC, clang)"
#elif __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define KVDS_LE16(v) __builtin_bswap16(v)
#define KVDS_LE32(v) __builtin_bswap32(v)
#define KVDS_LE64(v) __builtin_bswap64(v)
#elif __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define KVDS_LE16(v) (v)
#define KVDS_LE32(v) (v)
#define KVDS_LE64(v) (v)
#else
#error "kvds supports little- and big-endian hosts only"
#endif

static inline void kvds_put_u16(uint8_t *p, uint16_t v) {
  v = KVDS_LE16(v);
  memcpy(p, &v, 2);
}
static inline void kvds_put_u32(uint8_t *p, uint32_t v) {
  v = KVDS_LE32(v);
  memcpy(p, &v, 4);
}
static inline void kvds_put_u64(uint8_t *p, uint64_t v) {
  v = KVDS_LE64(v);
  memcpy(p, &v, 8);
}
static inline uint16_t kvds_get_u16(const uint8_t *p) {
  uint16_t v;
  memcpy(&v, p, 2);
  return KVDS_LE16(v);
}
static inline uint32_t kvds_get_u32(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return KVDS_LE32(v);
}
static inline uint64_t kvds_get_u64(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return KVDS_LE64(v);
}
#undef KVDS_LE16
#undef KVDS_LE32
#undef KVDS_LE64

/* Parses a decimal unsigned integer that must fill the whole string.
 * Returns 0 or KVDS_E_INVAL. */
int kvds_parse_u64(const char *s, uint64_t *out);
/* Parses a ratio in [0, 1]. Returns 0 or KVDS_E_INVAL. */
int kvds_parse_ratio(const char *s, double *out);
/* Formats a byte count as "1.5 GiB" into buf. Returns buf. */
char *kvds_fmt_bytes(uint64_t n, char *buf, size_t cap);

/* Writes the formatted error text into err[cap] (cut to fit, always
 * terminated) and returns rc, so that one line both explains and fails:
 *   return kvds_errf(err, errcap, KVDS_E_INVAL, "--threads must be 1..64");
 * err may be NULL or cap 0: then nothing is written. */
int kvds_errf(char *err, size_t cap, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* kvds_errf with a va_list (ap is used up, as by vsnprintf). */
int kvds_verrf(char *err, size_t cap, int rc, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));

/* Splits "host:port" / "[v6]:port" / "tcp://host:port". host gets at most
 * hcap-1 bytes. Returns 0 or KVDS_E_ADDR. */
int kvds_split_hostport(const char *addr, char *host, size_t hcap,
                        uint16_t *port);

#endif
