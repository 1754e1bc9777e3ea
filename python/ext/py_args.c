/*
 * py_args.c — keys, values and raw ranges as held buffers.
 *
 * Every byte range handed to libkvds while the GIL is released is held
 * through a Py_buffer, so its exporter keeps it alive and (bytearray) cannot
 * resize it, whatever other threads do to the containers it came from.
 */
#include "kvdspy.h"

#include <stdint.h>
#include <string.h>

int kvdspy_key_get(PyObject *o, Py_buffer *view) {
  if (PyUnicode_Check(o)) {
    PyObject *b = PyUnicode_AsUTF8String(o);
    if (!b)
      return -1;
    int rc = PyObject_GetBuffer(b, view, PyBUF_SIMPLE);
    Py_DECREF(b); /* the view holds its own reference */
    return rc;
  }
  if (!PyObject_CheckBuffer(o)) {
    PyErr_Format(PyExc_TypeError, "a key must be bytes-like or str, not %.100s",
                 Py_TYPE(o)->tp_name);
    return -1;
  }
  return PyObject_GetBuffer(o, view, PyBUF_SIMPLE);
}

int kvdspy_buf_get(PyObject *o, Py_buffer *view, int writable,
                   const char *what) {
  if (!PyObject_CheckBuffer(o)) {
    PyErr_Format(PyExc_TypeError,
                 "%s must support the buffer protocol, not %.100s", what,
                 Py_TYPE(o)->tp_name);
    return -1;
  }
  /* Ask with strides and without WRITABLE so that every exporter answers
   * and the refusals below are TypeErrors, whatever the exporter does. */
  if (PyObject_GetBuffer(o, view, PyBUF_STRIDES))
    return -1;
  if (!PyBuffer_IsContiguous(view, 'C')) {
    PyBuffer_Release(view);
    PyErr_Format(PyExc_TypeError, "%s must be C-contiguous", what);
    return -1;
  }
  if (writable && view->readonly) {
    PyBuffer_Release(view);
    PyErr_Format(PyExc_TypeError, "%s must be writable", what);
    return -1;
  }
  return 0;
}

static int is_single_key(PyObject *o) {
  return PyUnicode_Check(o) || PyBytes_Check(o) || PyByteArray_Check(o) ||
         PyMemoryView_Check(o);
}

static int batch_alloc(struct kvdspy_batch *b, Py_ssize_t n) {
  b->n = 0;
  b->iov = PyMem_Calloc(n ? (size_t)n : 1, sizeof *b->iov);
  b->views = PyMem_Calloc(n ? (size_t)n : 1, sizeof *b->views);
  if (!b->iov || !b->views) {
    PyMem_Free(b->iov);
    PyMem_Free(b->views);
    b->iov = NULL;
    b->views = NULL;
    PyErr_NoMemory();
    return -1;
  }
  return 0;
}

void kvdspy_batch_fini(struct kvdspy_batch *b) {
  if (b->views)
    for (Py_ssize_t i = 0; i < b->n; i++)
      if (b->views[i].obj)
        PyBuffer_Release(&b->views[i]);
  PyMem_Free(b->iov);
  PyMem_Free(b->views);
  b->iov = NULL;
  b->views = NULL;
  b->n = 0;
}

/* Fills b from the items of seq with get(item, view). */
static int batch_fill(struct kvdspy_batch *b, PyObject *seq, const char *what,
                      int (*get)(PyObject *, Py_buffer *, const char *)) {
  if (is_single_key(seq)) {
    PyErr_Format(PyExc_TypeError,
                 "%s must be a sequence (list, tuple), not a single %.100s",
                 what, Py_TYPE(seq)->tp_name);
    return -1;
  }
  PyObject *fast = PySequence_Fast(seq, "expected a sequence");
  if (!fast)
    return -1;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
  if (batch_alloc(b, n)) {
    Py_DECREF(fast);
    return -1;
  }
  PyObject **items = PySequence_Fast_ITEMS(fast);
  for (Py_ssize_t i = 0; i < n; i++) {
    if (get(items[i], &b->views[i], what)) {
      b->views[i].obj = NULL;
      kvdspy_batch_fini(b);
      Py_DECREF(fast);
      return -1;
    }
    b->n = i + 1;
    b->iov[i].base = b->views[i].buf;
    b->iov[i].len = (size_t)b->views[i].len;
  }
  Py_DECREF(fast);
  return 0;
}

static int get_key(PyObject *o, Py_buffer *view, const char *what) {
  return kvdspy_key_get(o, view);
}

static int get_value(PyObject *o, Py_buffer *view, const char *what) {
  return kvdspy_buf_get(o, view, 0, "a value");
}

int kvdspy_batch_keys(struct kvdspy_batch *b, PyObject *seq) {
  return batch_fill(b, seq, "keys", get_key);
}

int kvdspy_batch_values(struct kvdspy_batch *b, PyObject *seq) {
  return batch_fill(b, seq, "values", get_value);
}

int kvdspy_size(PyObject *o, size_t *out, const char *what) {
  PyObject *i = PyNumber_Index(o);
  if (!i)
    return -1;
  if (PyLong_AsLong(i) < 0 && !PyErr_Occurred()) {
    Py_DECREF(i);
    PyErr_Format(PyExc_ValueError, "%s must be >= 0", what);
    return -1;
  }
  PyErr_Clear();
  size_t v = PyLong_AsSize_t(i);
  Py_DECREF(i);
  if (v == (size_t)-1 && PyErr_Occurred())
    return -1;
  *out = v;
  return 0;
}

int kvdspy_ptr(PyObject *o, void **out) {
  PyObject *i = PyNumber_Index(o);
  if (!i)
    return -1;
  unsigned long long v = PyLong_AsUnsignedLongLong(i);
  Py_DECREF(i);
  if (v == (unsigned long long)-1 && PyErr_Occurred())
    return -1;
  if (v > UINTPTR_MAX) {
    PyErr_SetString(PyExc_OverflowError, "address out of range");
    return -1;
  }
  *out = (void *)(uintptr_t)v;
  return 0;
}

int kvdspy_batch_raw(struct kvdspy_batch *b, PyObject *ptrs, PyObject *lens) {
  PyObject *fp = PySequence_Fast(ptrs, "ptrs must be a sequence");
  if (!fp)
    return -1;
  PyObject *fl = PySequence_Fast(lens, "lengths must be a sequence");
  if (!fl) {
    Py_DECREF(fp);
    return -1;
  }
  int rc = -1;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(fp);
  if (PySequence_Fast_GET_SIZE(fl) != n) {
    PyErr_SetString(PyExc_ValueError, "ptrs and lengths differ in length");
    goto out;
  }
  if (batch_alloc(b, n))
    goto out;
  b->n = n; /* views stay empty (obj == NULL) */
  for (Py_ssize_t i = 0; i < n; i++) {
    if (kvdspy_ptr(PySequence_Fast_GET_ITEM(fp, i), &b->iov[i].base) ||
        kvdspy_size(PySequence_Fast_GET_ITEM(fl, i), &b->iov[i].len,
                    "a length")) {
      kvdspy_batch_fini(b);
      goto out;
    }
  }
  rc = 0;
out:
  Py_DECREF(fp);
  Py_DECREF(fl);
  return rc;
}
