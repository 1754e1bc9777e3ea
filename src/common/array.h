/*
 * array.h — growing a heap array by doubling (leaf).
 *
 * The shape it serves: a pointer, a count and a capacity, as in
 *
 *   struct ints { int *v; size_t n, cap; };
 *   if (KVDS_ARRAY_GROW(s->v, s->cap, s->n + 1, 64))
 *     return -ENOMEM;
 *   s->v[s->n++] = x;
 *
 * and byte buffers (an element of 1 byte). Every size computation is
 * checked: a request whose byte count does not fit in size_t is refused
 * like a failed allocation, never wrapped into a small one.
 */
#ifndef KVDS_ARRAY_H
#define KVDS_ARRAY_H

#include <stddef.h>

/* Makes room for at least `need` elements of `size` bytes in the heap
 * array whose pointer is at `ptrp` (the address of any object pointer,
 * T **) and whose capacity in elements is *cap. When need > *cap the
 * capacity doubles — starting from `first` (1 when 0) if *cap is 0 — until
 * it holds need, and the array is realloc()ed: its contents are kept, its
 * address may change. Returns 0 (also when it had room already), or -ENOMEM
 * when out of memory or when the new capacity in bytes would not fit in
 * size_t; the pointer and *cap are then unchanged (and the array still the
 * caller's to free). */
int kvds_array_grow(void *ptrp, size_t *cap, size_t need, size_t size,
                    size_t first);

/* kvds_array_grow with the element size taken from the pointer's type:
 * arr is an lvalue of type T *, cap an lvalue of type size_t. */
#define KVDS_ARRAY_GROW(arr, cap, need, first)                                 \
  kvds_array_grow(&(arr), &(cap), (need), sizeof *(arr), (first))

#endif
