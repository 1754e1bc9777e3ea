/* errors.c — kvds_strerror() and kvds_err_name() from the X-macro table. */
#include <errno.h>
#include <string.h>

#include "kvds/kvds.h"

const char *kvds_strerror(int err) {
  switch (err) {
  case 0:
    return "success";
#define KVDS__ERR_MSG(name, val, msg)                                          \
  case val:                                                                    \
    return msg;
    KVDS_ERRNO_MAP(KVDS__ERR_MSG)
#undef KVDS__ERR_MSG
  default:
    break;
  }
  if (err < 0 && err > -4096) {
    const char *s = strerrordesc_np(-err);
    if (s)
      return s;
  }
  return "unknown error";
}

const char *kvds_err_name(int err) {
  switch (err) {
  case 0:
    return "OK";
#define KVDS__ERR_NAME(name, val, msg)                                         \
  case val:                                                                    \
    return "KVDS_E_" #name;
    KVDS_ERRNO_MAP(KVDS__ERR_NAME)
#undef KVDS__ERR_NAME
  default:
    break;
  }
  if (err < 0 && err > -4096) {
    const char *s = strerrorname_np(-err);
    if (s)
      return s;
  }
  return "UNKNOWN";
}
