/*
 * py_pinned.c — kvds.Pinned: values pinned by Client.mget_views, and the
 * read-only buffers (_PinnedView) through which memoryviews reach them.
 *
 * Each memoryview of an item counts as an export of the Pinned object (and
 * of its client). While one exists, release() raises BufferError, like
 * resizing a bytearray that is exported, so no memoryview can ever reach
 * memory the worker may reuse.
 */
#include "kvdspy.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
  struct kvdspy_child head;
  Py_ssize_t n;
  int *results;   /* per-item status (0, NOTFOUND, TIMEOUT) */
  size_t *lens;   /* sizes, kept after release */
  uint64_t *sums; /* checksums, kept after release */
  int nodata;     /* Client.pin(): pinned, no bytes to view */
} PinnedObject;

typedef struct {
  PyObject ob_base;
  PinnedObject *owner;
  Py_ssize_t i;
} PinnedViewObject;

PyObject *kvdspy_pinned_new(ClientObject *cl, size_t n, struct kvds_value *vals,
                            int *results, int nodata) {
  struct kvdspy_res *res = calloc(1, sizeof *res);
  PinnedObject *p = NULL;
  if (!res) {
    PyErr_NoMemory();
    goto fail;
  }
  res->vals = vals;
  res->nvals = n;
  p = PyObject_New(PinnedObject, &KvdsPinned_Type);
  if (!p)
    goto fail;
  memset((char *)p + sizeof(PyObject), 0, sizeof *p - sizeof(PyObject));
  p->head.client = (ClientObject *)Py_NewRef((PyObject *)cl);
  p->n = (Py_ssize_t)n;
  p->nodata = nodata;
  p->results = PyMem_Malloc((n ? n : 1) * sizeof *p->results);
  p->lens = PyMem_Malloc((n ? n : 1) * sizeof *p->lens);
  p->sums = PyMem_Malloc((n ? n : 1) * sizeof *p->sums);
  if (!p->results || !p->lens || !p->sums) {
    PyErr_NoMemory();
    goto fail;
  }
  for (size_t i = 0; i < n; i++) {
    p->results[i] = results[i];
    p->lens[i] = vals[i].len;
    p->sums[i] = vals[i].checksum;
  }
  kvdspy_child_attach(cl, &p->head, res);
  return (PyObject *)p;
fail:
  Py_XDECREF(p); /* not attached: its dealloc releases nothing */
  if (res)
    kvdspy_dispose(cl, res);
  else
    free(vals); /* the pins go when the client closes */
  return NULL;
}

static void pinned_dealloc(PinnedObject *p) {
  if (p->head.client) {
    kvdspy_dispose(p->head.client, kvdspy_child_detach(&p->head));
    Py_DECREF(p->head.client);
  }
  PyMem_Free(p->results);
  PyMem_Free(p->lens);
  PyMem_Free(p->sums);
  PyObject_Free(p);
}

static PyObject *pinned_release(PinnedObject *p, PyObject *unused) {
  if (p->head.exports > 0) {
    PyErr_Format(PyExc_BufferError,
                 "cannot release: %zd memoryview(s) of these values still "
                 "exist (release them or drop them first)",
                 p->head.exports);
    return NULL;
  }
  kvdspy_dispose(p->head.client, kvdspy_child_detach(&p->head));
  Py_RETURN_NONE;
}

/* Whether item i is copied by scatter(): present, offset + want bytes
 * long, and its first hlen bytes are head's. */
static int scatter_fits(const struct kvds_value *v, int result, size_t off,
                        size_t want, const void *head, size_t hlen) {
  if (result || v->len < off || v->len - off != want)
    return 0;
  return !hlen || (v->len >= hlen && memcmp(v->data, head, hlen) == 0);
}

static PyObject *pinned_scatter(PinnedObject *p, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"segments", "offset", "head", NULL};
  PyObject *go, *ho = NULL;
  Py_ssize_t off = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O|nO:scatter", kwlist, &go, &off,
                                   &ho))
    return NULL;
  if (off < 0) {
    PyErr_SetString(PyExc_ValueError, "offset must be >= 0");
    return NULL;
  }
  Py_buffer g = {0}, h = {0};
  const uint64_t *segs;
  size_t nseg, total;
  PyObject *out = NULL;
  char *ok = NULL;
  if (ho && ho != Py_None && kvdspy_buf_get(ho, &h, 0, "head"))
    return NULL;
  if (kvdspy_segments_get(go, &g, &segs, &nseg, &total))
    goto free;
  Py_ssize_t n = p->n;
  if (n == 0 ? nseg != 0 : nseg % (size_t)n) {
    PyErr_Format(PyExc_ValueError,
                 "%zu segments do not split evenly over %zd values", nseg, n);
    goto free;
  }
  if (p->nodata) {
    PyErr_SetString(PyExc_TypeError,
                    "values pinned by Client.pin() have no bytes to copy");
    goto free;
  }
  if (!p->head.res || p->head.client->closing) {
    PyErr_SetString(PyExc_ValueError,
                    "the values were released (or their client closed)");
    goto free;
  }
  if (!(ok = PyMem_Calloc(n ? (size_t)n : 1, 1))) {
    PyErr_NoMemory();
    goto free;
  }
  size_t per = n ? nseg / (size_t)n : 0;
  const struct kvds_value *vals = p->head.res->vals;
  /* Counted as an export: the pins cannot be released meanwhile. */
  p->head.exports++;
  p->head.client->exports++;
  PyThreadState *ts = total >= KVDSPY_NOGIL_COPY ? PyEval_SaveThread() : NULL;
  for (Py_ssize_t i = 0; i < n; i++) {
    const uint64_t *sg = segs + 2 * (size_t)i * per;
    size_t want = 0;
    for (size_t j = 0; j < per; j++)
      want += (size_t)sg[2 * j + 1];
    if (!scatter_fits(&vals[i], p->results[i], (size_t)off, want, h.buf,
                      (size_t)h.len))
      continue;
    const uint8_t *from = (const uint8_t *)vals[i].data + off;
    for (size_t j = 0; j < per; j++) {
      size_t len = (size_t)sg[2 * j + 1];
      memcpy((void *)(uintptr_t)sg[2 * j], from, len);
      from += len;
    }
    ok[i] = 1;
  }
  if (ts)
    PyEval_RestoreThread(ts);
  p->head.exports--;
  p->head.client->exports--;
  if (!(out = PyList_New(0)))
    goto free;
  for (Py_ssize_t i = 0; i < n; i++) {
    if (ok[i])
      continue;
    PyObject *o = PyLong_FromSsize_t(i);
    if (!o || PyList_Append(out, o))
      Py_CLEAR(out);
    Py_XDECREF(o);
    if (!out)
      break;
  }
free:
  PyMem_Free(ok);
  PyBuffer_Release(&g);
  PyBuffer_Release(&h);
  return out;
}

static PyObject *pinned_enter(PyObject *self, PyObject *unused) {
  return Py_NewRef(self);
}

static PyObject *pinned_exit(PinnedObject *p, PyObject *args) {
  PyObject *t =
      PyTuple_GET_SIZE(args) > 0 ? PyTuple_GET_ITEM(args, 0) : Py_None;
  /* While an exception propagates, its traceback may hold the memoryviews:
   * do not mask it; the finalizer releases the pins once they are gone. */
  if (t != Py_None && p->head.exports > 0)
    Py_RETURN_FALSE;
  PyObject *r = pinned_release(p, NULL);
  if (!r)
    return NULL;
  Py_DECREF(r);
  Py_RETURN_FALSE;
}

static Py_ssize_t pinned_len(PinnedObject *p) {
  return p->n;
}

static PyObject *pinned_item(PinnedObject *p, Py_ssize_t i) {
  if (i < 0 || i >= p->n) {
    PyErr_SetString(PyExc_IndexError, "Pinned index out of range");
    return NULL;
  }
  if (p->results[i])
    Py_RETURN_NONE;
  if (p->nodata) {
    PyErr_SetString(PyExc_TypeError,
                    "values pinned by Client.pin() have no bytes to view "
                    "(use mget_views)");
    return NULL;
  }
  if (!p->head.res) {
    PyErr_SetString(PyExc_ValueError,
                    "the values were released (or their client closed)");
    return NULL;
  }
  PinnedViewObject *v = PyObject_New(PinnedViewObject, &KvdsPinnedView_Type);
  if (!v)
    return NULL;
  v->owner = (PinnedObject *)Py_NewRef((PyObject *)p);
  v->i = i;
  PyObject *mv = PyMemoryView_FromObject((PyObject *)v);
  Py_DECREF(v); /* the memoryview holds it */
  return mv;
}

static PyObject *pinned_get_checksums(PinnedObject *p, void *unused) {
  PyObject *l = PyList_New(p->n);
  for (Py_ssize_t i = 0; l && i < p->n; i++) {
    PyObject *o = p->results[i] ? Py_NewRef(Py_None)
                                : PyLong_FromUnsignedLongLong(p->sums[i]);
    if (!o) {
      Py_CLEAR(l);
      break;
    }
    PyList_SET_ITEM(l, i, o);
  }
  return l;
}

static PyObject *pinned_get_sizes(PinnedObject *p, void *unused) {
  PyObject *l = PyList_New(p->n);
  for (Py_ssize_t i = 0; l && i < p->n; i++) {
    PyObject *o =
        p->results[i] ? Py_NewRef(Py_None) : PyLong_FromSize_t(p->lens[i]);
    if (!o) {
      Py_CLEAR(l);
      break;
    }
    PyList_SET_ITEM(l, i, o);
  }
  return l;
}

static PyObject *pinned_get_missing(PinnedObject *p, void *unused) {
  PyObject *l = PyList_New(0);
  for (Py_ssize_t i = 0; l && i < p->n; i++) {
    if (!p->results[i])
      continue;
    PyObject *o = PyLong_FromSsize_t(i);
    if (!o || PyList_Append(l, o))
      Py_CLEAR(l);
    Py_XDECREF(o);
  }
  return l;
}

static PyObject *pinned_get_released(PinnedObject *p, void *unused) {
  return PyBool_FromLong(p->head.res == NULL);
}

static PyObject *pinned_repr(PinnedObject *p) {
  Py_ssize_t missing = 0;
  for (Py_ssize_t i = 0; i < p->n; i++)
    missing += p->results[i] != 0;
  return PyUnicode_FromFormat("<kvds.Pinned %zd values, %zd missing%s>", p->n,
                              missing, p->head.res ? "" : ", released");
}

static PyMethodDef pinned_methods[] = {
    {"release", (PyCFunction)pinned_release, METH_NOARGS,
     "release()\n\nReleases the pins (the worker may then evict or free the "
     "values). Raises BufferError while a memoryview from this object "
     "exists. Idempotent."},
    {"scatter", (PyCFunction)(void (*)(void))pinned_scatter,
     METH_VARARGS | METH_KEYWORDS,
     "scatter(segments, offset=0, head=None) -> list of int\n\nCopies "
     "every value's bytes from offset on to its own raw memory segments "
     "(the same number of (address, length) uint64 pairs per value, in "
     "order: e.g. a numpy array of shape (n, s, 2)) in one call, the GIL "
     "released. A value is copied only if it is present, exactly offset + "
     "its segments' length long and, when head is given, starts with "
     "head's bytes; returns the indices of the values not copied. The "
     "addresses are trusted, as by kvds.scatter()."},
    {"__enter__", pinned_enter, METH_NOARGS, "Returns self."},
    {"__exit__", (PyCFunction)pinned_exit, METH_VARARGS,
     "Releases the pins. On a normal exit a memoryview still alive raises "
     "BufferError; when an exception is propagating the release is left to "
     "the finalizer instead."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef pinned_getset[] = {
    {"checksums", (getter)pinned_get_checksums, NULL,
     "xxh3-64 checksum of each value (None for a missing key).", NULL},
    {"sizes", (getter)pinned_get_sizes, NULL,
     "Size of each value (None for a missing key).", NULL},
    {"missing", (getter)pinned_get_missing, NULL,
     "Indices of the keys that were absent (after wait_ms).", NULL},
    {"released", (getter)pinned_get_released, NULL,
     "True once the pins are released (or the client closed).", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PySequenceMethods pinned_as_seq = {
    .sq_length = (lenfunc)pinned_len,
    .sq_item = (ssizeargfunc)pinned_item,
};

PyTypeObject KvdsPinned_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kvds.Pinned",
    .tp_basicsize = sizeof(PinnedObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Values pinned by Client.mget_views() or Client.pin().\n\n"
              "p[i] is a read-only memoryview of value i (None for a missing "
              "key; TypeError for values pinned by pin(), which moved no "
              "bytes), valid as long as the memoryview lives: the pins cannot "
              "be released while one exists. Release with release(), a with "
              "block, or by dropping "
              "the object (its finalizer releases). Closing the client "
              "releases it too.",
    .tp_dealloc = (destructor)pinned_dealloc,
    .tp_repr = (reprfunc)pinned_repr,
    .tp_as_sequence = &pinned_as_seq,
    .tp_methods = pinned_methods,
    .tp_getset = pinned_getset,
};

/* ---- _PinnedView: the exporter behind each item's memoryview ---------- */

static int view_getbuffer(PinnedViewObject *v, Py_buffer *view, int flags) {
  PinnedObject *p = v->owner;
  if (flags & PyBUF_WRITABLE) {
    PyErr_SetString(PyExc_BufferError, "pinned values are read-only");
    return -1;
  }
  if (!p->head.res || p->head.client->closing) {
    PyErr_SetString(PyExc_BufferError,
                    "the values were released (or their client closed)");
    return -1;
  }
  const struct kvds_value *val = &p->head.res->vals[v->i];
  if (PyBuffer_FillInfo(view, (PyObject *)v, (void *)val->data,
                        (Py_ssize_t)val->len, 1, flags))
    return -1;
  p->head.exports++;
  p->head.client->exports++;
  return 0;
}

static void view_releasebuffer(PinnedViewObject *v, Py_buffer *view) {
  v->owner->head.exports--;
  v->owner->head.client->exports--;
}

static void view_dealloc(PinnedViewObject *v) {
  Py_DECREF(v->owner);
  PyObject_Free(v);
}

static PyBufferProcs view_as_buffer = {
    .bf_getbuffer = (getbufferproc)view_getbuffer,
    .bf_releasebuffer = (releasebufferproc)view_releasebuffer,
};

PyTypeObject KvdsPinnedView_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kvds._PinnedView",
    .tp_basicsize = sizeof(PinnedViewObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Exports one pinned value (internal).",
    .tp_dealloc = (destructor)view_dealloc,
    .tp_as_buffer = &view_as_buffer,
};
