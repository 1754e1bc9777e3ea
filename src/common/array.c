/* array.c — growing a heap array by doubling (array.h). */
#include "common/array.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int kvds_array_grow(void *ptrp, size_t *cap, size_t need, size_t size,
                    size_t first) {
  if (need <= *cap)
    return 0;
  if (size == 0)
    size = 1;
  size_t nc = *cap ? *cap : (first ? first : 1);
  while (nc < need) {
    if (nc > SIZE_MAX / 2)
      return -ENOMEM;
    nc *= 2;
  }
  if (nc > SIZE_MAX / size)
    return -ENOMEM;
  /* The pointer is read and written as bytes: ptrp may point to any object
   * pointer type, which all share void *'s representation on the systems
   * we build for. */
  void *old;
  memcpy(&old, ptrp, sizeof old);
  void *nb = realloc(old, nc * size);
  if (!nb)
    return -ENOMEM;
  memcpy(ptrp, &nb, sizeof nb);
  *cap = nc;
  return 0;
}
