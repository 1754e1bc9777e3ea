/*
 * py_wbuf.c — kvds.WriteBuffer: an object being written (two-phase put).
 *
 * The buffer protocol exposes the object's bytes writable: on a local client
 * they are in the worker's pool, over TCP in a staging buffer sent at seal.
 * While a memoryview of it exists (or a write() copies into it), seal() and
 * abort() raise BufferError, so no view can outlive the memory.
 */
#include "kvdspy.h"

#include <stdlib.h>
#include <string.h>

enum { WB_WRITING, WB_SEALED, WB_ABORTED };

typedef struct {
  struct kvdspy_child head;
  PyObject *key; /* bytes */
  size_t size;
  int state;
  uint64_t checksum; /* once sealed */
  uint64_t sum;      /* of the contents, valid while has_sum */
  int has_sum;       /* set by gather(), cleared by any other write */
  uint64_t wgen;     /* bumped by every write path and memoryview export */
  int writers;       /* write() calls copying without the GIL */
  int sealing;       /* in an mseal() call */
} WriteBufferObject;

PyObject *kvdspy_wbuf_new(ClientObject *cl, const void *key, size_t klen,
                          const struct kvds_wbuf *wb) {
  struct kvdspy_res *res = calloc(1, sizeof *res);
  WriteBufferObject *w = NULL;
  if (!res) {
    PyErr_NoMemory();
    return NULL; /* the object is aborted when the client closes */
  }
  res->has_wbuf = 1;
  res->wbuf = *wb;
  w = PyObject_New(WriteBufferObject, &KvdsWriteBuffer_Type);
  if (!w)
    goto fail;
  memset((char *)w + sizeof(PyObject), 0, sizeof *w - sizeof(PyObject));
  w->head.client = (ClientObject *)Py_NewRef((PyObject *)cl);
  w->size = wb->len;
  w->state = WB_WRITING;
  if (!(w->key = PyBytes_FromStringAndSize(key, (Py_ssize_t)klen)))
    goto fail;
  kvdspy_child_attach(cl, &w->head, res);
  return (PyObject *)w;
fail:
  Py_XDECREF(w);
  kvdspy_dispose(cl, res);
  return NULL;
}

static void wbuf_dealloc(WriteBufferObject *w) {
  if (w->head.client) {
    /* Unsealed: the object is aborted. */
    kvdspy_dispose(w->head.client, kvdspy_child_detach(&w->head));
    Py_DECREF(w->head.client);
  }
  Py_XDECREF(w->key);
  PyObject_Free(w);
}

/* Whether the memory may be handed over (sealed or aborted) now. */
static int check_idle(WriteBufferObject *w, const char *what) {
  if (w->head.exports > 0 || w->writers > 0) {
    PyErr_Format(PyExc_BufferError,
                 "cannot %s: %zd memoryview(s) of this buffer still exist or "
                 "a write() is in progress",
                 what, w->head.exports + w->writers);
    return -1;
  }
  if (w->sealing) {
    PyErr_Format(PyExc_ValueError, "cannot %s: the buffer is being sealed",
                 what);
    return -1;
  }
  return 0;
}

static const char *state_name(const WriteBufferObject *w) {
  if (w->state == WB_SEALED)
    return "sealed";
  if (w->state == WB_ABORTED)
    return "aborted";
  return w->head.res ? "writing" : "closed";
}

static int check_writing(WriteBufferObject *w) {
  if (w->head.res)
    return 0;
  PyErr_Format(PyExc_ValueError, "the WriteBuffer is %s", state_name(w));
  return -1;
}

/* Whether bytes may be written now. Call after kvdspy_op_enter (and after
 * every argument conversion, which can run Python code that seals or
 * aborts the buffer); on failure the caller leaves with kvdspy_op_exit. */
static int check_writable(WriteBufferObject *w) {
  if (check_writing(w))
    return -1;
  if (w->sealing) {
    PyErr_SetString(PyExc_ValueError, "the buffer is being sealed");
    return -1;
  }
  return 0;
}

static PyObject *wbuf_write(WriteBufferObject *w, PyObject *args,
                            PyObject *kw) {
  static char *kwlist[] = {"offset", "data", NULL};
  PyObject *oo, *dobj;
  size_t off;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "OO:write", kwlist, &oo, &dobj))
    return NULL;
  if (kvdspy_size(oo, &off, "offset"))
    return NULL;
  Py_buffer d;
  if (kvdspy_buf_get(dobj, &d, 0, "data"))
    return NULL;
  size_t len = (size_t)d.len;
  if (off > w->size || len > w->size - off) {
    char msg[128];
    snprintf(msg, sizeof msg, "write of %zu bytes at %zu outside %zu", len, off,
             w->size);
    PyBuffer_Release(&d);
    return kvdspy_raise(KVDS_E_RANGE, msg, -1);
  }
  ClientObject *cl = w->head.client;
  if (kvdspy_op_enter(cl)) {
    PyBuffer_Release(&d);
    return NULL;
  }
  if (check_writable(w)) {
    kvdspy_op_exit(cl);
    PyBuffer_Release(&d);
    return NULL;
  }
  /* Copying into data is what kvds_write does; the range is checked above,
   * so no client state (not even its error text) is touched and the client
   * lock is not needed (writes to disjoint ranges may run at once). */
  uint8_t *dst = (uint8_t *)w->head.res->wbuf.data + off;
  w->has_sum = 0;
  w->wgen++;
  w->writers++;
  PyThreadState *ts = len >= KVDSPY_NOGIL_COPY ? PyEval_SaveThread() : NULL;
  memcpy(dst, d.buf, len);
  if (ts)
    PyEval_RestoreThread(ts);
  w->writers--;
  kvdspy_op_exit(cl);
  PyBuffer_Release(&d);
  Py_RETURN_NONE;
}

static PyObject *wbuf_gather(WriteBufferObject *w, PyObject *args,
                             PyObject *kw) {
  static char *kwlist[] = {"segments", "prefix", NULL};
  PyObject *go, *po = NULL;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O:gather", kwlist, &go, &po))
    return NULL;
  Py_buffer g, p = {0};
  const uint64_t *segs;
  size_t n, total;
  if (po && po != Py_None && kvdspy_buf_get(po, &p, 0, "prefix"))
    return NULL;
  if (kvdspy_segments_get(go, &g, &segs, &n, &total)) {
    PyBuffer_Release(&p);
    return NULL;
  }
  PyObject *ret = NULL;
  struct kvds_iov *iov = NULL;
  if ((size_t)p.len > SIZE_MAX - total || (size_t)p.len + total != w->size) {
    char msg[160];
    snprintf(msg, sizeof msg,
             "gather fills the whole object: %zd + %zu bytes for %zu", p.len,
             total, w->size);
    kvdspy_raise(KVDS_E_RANGE, msg, -1);
    goto out;
  }
  if (!(iov = PyMem_Malloc((n + 1) * sizeof *iov))) {
    PyErr_NoMemory();
    goto out;
  }
  size_t k = 0; /* the prefix only when there is one (no NULL base) */
  if (p.len) {
    iov[k].base = p.buf;
    iov[k++].len = (size_t)p.len;
  }
  for (size_t i = 0; i < n; i++) {
    iov[k].base = (void *)(uintptr_t)segs[2 * i];
    iov[k++].len = (size_t)segs[2 * i + 1];
  }
  ClientObject *cl = w->head.client;
  if (kvdspy_op_enter(cl))
    goto out;
  if (check_writable(w)) {
    kvdspy_op_exit(cl);
    goto out;
  }
  void *dst = w->head.res->wbuf.data;
  /* The checksum stands for the bytes only if nothing else wrote while
   * we copied: no other write() running, no memoryview alive, no write or
   * export meanwhile (wgen). */
  int alone = w->writers == 0 && w->head.exports == 0;
  uint64_t gen = ++w->wgen;
  w->writers++;
  PyThreadState *ts = w->size >= KVDSPY_NOGIL_COPY ? PyEval_SaveThread() : NULL;
  uint64_t sum = kvds_gather(dst, iov, k);
  if (ts)
    PyEval_RestoreThread(ts);
  w->writers--;
  w->sum = sum;
  w->has_sum =
      alone && w->wgen == gen && w->writers == 0 && w->head.exports == 0;
  kvdspy_op_exit(cl);
  ret = Py_NewRef(Py_None);
out:
  PyMem_Free(iov);
  PyBuffer_Release(&g);
  PyBuffer_Release(&p);
  return ret;
}

PyObject *kvdspy_wbuf_mgather(ClientObject *cl, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"buffers", "segments", "prefix", NULL};
  PyObject *bo, *go, *po = NULL;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O:mgather", kwlist, &bo, &go,
                                   &po))
    return NULL;
  /* A tuple: the items stay referenced while the GIL is released. */
  PyObject *fast = PySequence_Tuple(bo);
  if (!fast)
    return NULL;
  Py_buffer g = {0}, p = {0};
  const uint64_t *segs;
  size_t nseg, total;
  struct kvds_iov *iov = NULL;
  uint64_t *sums = NULL, *gens = NULL;
  Py_ssize_t n = PyTuple_GET_SIZE(fast), marked = 0;
  PyObject *ret = NULL;
  int entered = 0;
  if (po && po != Py_None && kvdspy_buf_get(po, &p, 0, "prefix"))
    goto out;
  if (kvdspy_segments_get(go, &g, &segs, &nseg, &total))
    goto out;
  if (n == 0 ? nseg != 0 : nseg % (size_t)n) {
    PyErr_Format(PyExc_ValueError,
                 "%zu segments do not split evenly over %zd buffers", nseg, n);
    goto out;
  }
  size_t per = n ? nseg / (size_t)n : 0;
  size_t k = per + (p.len > 0); /* iovecs of one buffer */
  iov = PyMem_Malloc((k ? k : 1) * sizeof *iov);
  sums = PyMem_Malloc((n ? (size_t)n : 1) * sizeof *sums);
  gens = PyMem_Malloc((n ? (size_t)n : 1) * sizeof *gens);
  if (!iov || !sums || !gens) {
    PyErr_NoMemory();
    goto out;
  }
  if (kvdspy_op_enter(cl))
    goto out;
  entered = 1;
  /* Check every buffer (after all conversions, which may run Python code),
   * then count each as a writer so none can be sealed, aborted or exported
   * while the GIL is released. */
  for (Py_ssize_t i = 0; i < n; i++) {
    WriteBufferObject *w = (WriteBufferObject *)PyTuple_GET_ITEM(fast, i);
    if (!PyObject_TypeCheck((PyObject *)w, &KvdsWriteBuffer_Type)) {
      PyErr_Format(PyExc_TypeError, "item %zd is not a WriteBuffer", i);
      goto out;
    }
    if (w->head.client != cl) {
      PyErr_Format(PyExc_ValueError, "item %zd belongs to another client", i);
      goto out;
    }
    if (check_writable(w))
      goto out;
    size_t len = 0;
    for (size_t j = 0; j < per; j++)
      len += (size_t)segs[2 * (i * per + j) + 1];
    if ((size_t)p.len + len != w->size) {
      char msg[160];
      snprintf(msg, sizeof msg,
               "gather fills the whole object: %zd + %zu bytes for %zu", p.len,
               len, w->size);
      kvdspy_raise(KVDS_E_RANGE, msg, i);
      goto out;
    }
  }
  for (; marked < n; marked++) {
    WriteBufferObject *w = (WriteBufferObject *)PyTuple_GET_ITEM(fast, marked);
    int alone = w->writers == 0 && w->head.exports == 0;
    uint64_t gen = ++w->wgen;
    gens[marked] = alone ? gen : 0; /* 0: the sum cannot stand */
    w->writers++;
  }
  PyThreadState *ts = total >= KVDSPY_NOGIL_COPY ? PyEval_SaveThread() : NULL;
  for (Py_ssize_t i = 0; i < n; i++) {
    WriteBufferObject *w = (WriteBufferObject *)PyTuple_GET_ITEM(fast, i);
    size_t m = 0;
    if (p.len) {
      iov[m].base = p.buf;
      iov[m++].len = (size_t)p.len;
    }
    for (size_t j = 0; j < per; j++, m++) {
      iov[m].base = (void *)(uintptr_t)segs[2 * (i * per + j)];
      iov[m].len = (size_t)segs[2 * (i * per + j) + 1];
    }
    sums[i] = kvds_gather(w->head.res->wbuf.data, iov, m);
  }
  if (ts)
    PyEval_RestoreThread(ts);
  ret = Py_NewRef(Py_None);
out:
  /* As gather(): a sum stands only if no other write or export came. */
  for (Py_ssize_t i = 0; i < marked; i++) {
    WriteBufferObject *w = (WriteBufferObject *)PyTuple_GET_ITEM(fast, i);
    w->writers--;
    w->sum = sums[i];
    w->has_sum = gens[i] && w->wgen == gens[i] && w->writers == 0 &&
                 w->head.exports == 0;
  }
  if (entered)
    kvdspy_op_exit(cl);
  PyMem_Free(iov);
  PyMem_Free(sums);
  PyMem_Free(gens);
  PyBuffer_Release(&g);
  PyBuffer_Release(&p);
  Py_DECREF(fast);
  return ret;
}

PyObject *kvdspy_wbuf_mseal(ClientObject *cl, PyObject *seq) {
  if (PyObject_TypeCheck(seq, &KvdsWriteBuffer_Type)) {
    PyErr_SetString(PyExc_TypeError, "mseal takes a sequence of WriteBuffers");
    return NULL;
  }
  /* A tuple: the items stay referenced (and in place) while the GIL is
   * released, whatever other threads do to the caller's list. */
  PyObject *fast = PySequence_Tuple(seq);
  if (!fast)
    return NULL;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(fast), marked = 0;
  PyObject **items = PySequence_Fast_ITEMS(fast);
  PyObject *out = NULL;
  struct kvds_wbuf *bufs = PyMem_Calloc(n ? (size_t)n : 1, sizeof *bufs);
  int *results = PyMem_Calloc(n ? (size_t)n : 1, sizeof *results);
  uint64_t *sums = PyMem_Calloc(n ? (size_t)n : 1, sizeof *sums);
  if (!bufs || !results || !sums) {
    PyErr_NoMemory();
    goto free;
  }
  /* Check every item and mark it (which also catches duplicates). */
  for (; marked < n; marked++) {
    WriteBufferObject *w = (WriteBufferObject *)items[marked];
    if (!PyObject_TypeCheck(items[marked], &KvdsWriteBuffer_Type)) {
      PyErr_Format(PyExc_TypeError, "item %zd is not a WriteBuffer", marked);
      goto unmark;
    }
    if (w->head.client != cl) {
      PyErr_Format(PyExc_ValueError, "item %zd belongs to another client",
                   marked);
      goto unmark;
    }
    if (check_writing(w) || check_idle(w, "seal"))
      goto unmark;
    w->sealing = 1;
    bufs[marked] = w->head.res->wbuf;
    sums[marked] = w->sum;
    results[marked] = w->has_sum; /* which sums are known (reset below) */
  }
  if (kvdspy_op_enter(cl))
    goto unmark;
  int rc = 0;
  char msg[256] = "";
  if (n) {
    PyThreadState *ts = PyEval_SaveThread();
    /* Objects filled by gather() bring their checksum; hash the others. */
    for (Py_ssize_t i = 0; i < n; i++) {
      if (!results[i])
        sums[i] = kvds_checksum(bufs[i].data, bufs[i].len);
      results[i] = 0;
    }
    kvdspy_lock(cl);
    kvdspy_interruptible(cl, ts);
    rc = kvds_mseal_sums(cl->c, (size_t)n, bufs, sums, results);
    if (rc)
      kvdspy_errmsg(cl, msg, sizeof msg);
    kvdspy_unlock(cl);
    PyEval_RestoreThread(ts);
  }
  /* kvds_mseal zeroes exactly the entries it sealed. */
  Py_ssize_t bad = -1;
  for (Py_ssize_t i = 0; i < n; i++) {
    WriteBufferObject *w = (WriteBufferObject *)items[i];
    w->sealing = 0;
    if (bufs[i].handle == 0) {
      /* kvds_mseal leaves the sealed checksum in the zeroed entry. */
      sums[i] = bufs[i].checksum;
      w->state = WB_SEALED;
      w->checksum = sums[i];
      /* The library freed or handed over the memory: nothing to release. */
      struct kvdspy_res *r = kvdspy_child_detach(&w->head);
      r->has_wbuf = 0;
      kvdspy_res_free(r);
    } else if (bad < 0) {
      bad = i;
    }
  }
  marked = 0;
  kvdspy_op_exit(cl);
  if (bad >= 0) {
    /* An item's own status has no detail text (msg would be stale); a
     * whole-batch error belongs to no item. */
    if (results[bad])
      kvdspy_raise(results[bad], NULL, bad);
    else
      kvdspy_raise(rc, msg, -1);
    goto free;
  }
  out = PyList_New(n);
  for (Py_ssize_t i = 0; out && i < n; i++) {
    PyObject *o = PyLong_FromUnsignedLongLong(sums[i]);
    if (!o)
      Py_CLEAR(out);
    else
      PyList_SET_ITEM(out, i, o);
  }
  goto free;
unmark:
  for (Py_ssize_t i = 0; i < marked; i++)
    ((WriteBufferObject *)items[i])->sealing = 0;
free:
  PyMem_Free(bufs);
  PyMem_Free(results);
  PyMem_Free(sums);
  Py_DECREF(fast);
  return out;
}

static PyObject *wbuf_seal(WriteBufferObject *w, PyObject *unused) {
  PyObject *one = PyTuple_Pack(1, (PyObject *)w);
  if (!one)
    return NULL;
  PyObject *sums = kvdspy_wbuf_mseal(w->head.client, one);
  Py_DECREF(one);
  if (!sums)
    return NULL;
  PyObject *r = Py_NewRef(PyList_GET_ITEM(sums, 0));
  Py_DECREF(sums);
  return r;
}

static PyObject *wbuf_abort(WriteBufferObject *w, PyObject *unused) {
  if (w->state != WB_WRITING || !w->head.res)
    Py_RETURN_NONE; /* sealed, aborted or closed: nothing left to abort */
  if (check_idle(w, "abort"))
    return NULL;
  ClientObject *cl = w->head.client;
  if (kvdspy_op_enter(cl))
    return NULL;
  struct kvdspy_res *r = kvdspy_child_detach(&w->head);
  w->state = WB_ABORTED;
  int rc;
  char msg[256] = "";
  PyThreadState *ts = PyEval_SaveThread();
  kvdspy_lock(cl);
  kvdspy_interruptible(cl, ts);
  rc = kvds_abort(cl->c, &r->wbuf);
  if (rc)
    kvdspy_errmsg(cl, msg, sizeof msg);
  kvdspy_unlock(cl);
  kvdspy_res_free(r);
  PyEval_RestoreThread(ts);
  kvdspy_op_exit(cl);
  if (rc)
    return kvdspy_raise(rc, msg, -1);
  Py_RETURN_NONE;
}

static PyObject *wbuf_enter(PyObject *self, PyObject *unused) {
  return Py_NewRef(self);
}

static PyObject *wbuf_exit(WriteBufferObject *w, PyObject *args) {
  PyObject *t =
      PyTuple_GET_SIZE(args) > 0 ? PyTuple_GET_ITEM(args, 0) : Py_None;
  if (w->state != WB_WRITING || !w->head.res)
    Py_RETURN_FALSE;
  if (t != Py_None && (w->head.exports > 0 || w->writers > 0))
    Py_RETURN_FALSE; /* the finalizer aborts it once the views are gone */
  PyObject *r = wbuf_abort(w, NULL);
  if (!r)
    return NULL;
  Py_DECREF(r);
  Py_RETURN_FALSE;
}

static PyObject *wbuf_get_view(WriteBufferObject *w, void *unused) {
  return PyMemoryView_FromObject((PyObject *)w);
}

static PyObject *wbuf_get_key(WriteBufferObject *w, void *unused) {
  return Py_NewRef(w->key);
}

static PyObject *wbuf_get_size(WriteBufferObject *w, void *unused) {
  return PyLong_FromSize_t(w->size);
}

static PyObject *wbuf_get_state(WriteBufferObject *w, void *unused) {
  return PyUnicode_FromString(state_name(w));
}

static PyObject *wbuf_get_checksum(WriteBufferObject *w, void *unused) {
  if (w->state != WB_SEALED)
    Py_RETURN_NONE;
  return PyLong_FromUnsignedLongLong(w->checksum);
}

static PyObject *wbuf_repr(WriteBufferObject *w) {
  return PyUnicode_FromFormat("<kvds.WriteBuffer key=%R size=%zu %s>", w->key,
                              w->size, state_name(w));
}

static int wbuf_getbuffer(WriteBufferObject *w, Py_buffer *view, int flags) {
  if (!w->head.res || w->sealing || w->head.client->closing) {
    PyErr_Format(PyExc_BufferError, "the WriteBuffer is %s",
                 w->sealing ? "being sealed" : state_name(w));
    return -1;
  }
  if (PyBuffer_FillInfo(view, (PyObject *)w, w->head.res->wbuf.data,
                        (Py_ssize_t)w->size, 0, flags))
    return -1;
  w->has_sum = 0; /* the view may write */
  w->wgen++;
  w->head.exports++;
  w->head.client->exports++;
  return 0;
}

static void wbuf_releasebuffer(WriteBufferObject *w, Py_buffer *view) {
  w->head.exports--;
  w->head.client->exports--;
}

static PyBufferProcs wbuf_as_buffer = {
    .bf_getbuffer = (getbufferproc)wbuf_getbuffer,
    .bf_releasebuffer = (releasebufferproc)wbuf_releasebuffer,
};

static PyMethodDef wbuf_methods[] = {
    {"gather", (PyCFunction)(void (*)(void))wbuf_gather,
     METH_VARARGS | METH_KEYWORDS,
     "gather(segments, prefix=None)\n\nFills the whole object with prefix's "
     "bytes followed by those of the raw memory segments ((address, length) "
     "pairs of uint64, e.g. a numpy array of shape (n, 2)), in one pass that "
     "also computes the checksum, so seal() does not read the object again "
     "(any later write or memoryview makes seal() hash it). The addresses are "
     "trusted, like those of the *_raw calls. The GIL is released."},
    {"write", (PyCFunction)(void (*)(void))wbuf_write,
     METH_VARARGS | METH_KEYWORDS,
     "write(offset, data)\n\nCopies a C-contiguous buffer into the object at "
     "offset. Raises InvalidArgument (KVDS_E_RANGE) outside the object. "
     "Writes may come in any order and ranges."},
    {"seal", (PyCFunction)wbuf_seal, METH_NOARGS,
     "seal() -> int\n\nMakes the object visible to readers (waking those "
     "waiting for it) and returns its xxh3-64 checksum. The buffer is "
     "unusable afterwards. Raises BufferError while a memoryview of it "
     "exists."},
    {"abort", (PyCFunction)wbuf_abort, METH_NOARGS,
     "abort()\n\nAbandons the object; its memory is freed. No-op once "
     "sealed or aborted. Raises BufferError while a memoryview exists."},
    {"__enter__", wbuf_enter, METH_NOARGS, "Returns self."},
    {"__exit__", (PyCFunction)wbuf_exit, METH_VARARGS,
     "Aborts the object unless it was sealed inside the block."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef wbuf_getset[] = {
    {"view", (getter)wbuf_get_view, NULL,
     "A new writable memoryview of the object's bytes (each access makes "
     "one). It must be released (or dropped) before seal()/abort().",
     NULL},
    {"key", (getter)wbuf_get_key, NULL, "The key (bytes).", NULL},
    {"size", (getter)wbuf_get_size, NULL, "The object size in bytes.", NULL},
    {"state", (getter)wbuf_get_state, NULL,
     "'writing', 'sealed', 'aborted' or 'closed' (client closed first).", NULL},
    {"checksum", (getter)wbuf_get_checksum, NULL,
     "The checksum once sealed, else None.", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

PyTypeObject KvdsWriteBuffer_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kvds.WriteBuffer",
    .tp_basicsize = sizeof(WriteBufferObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "An object being written, from Client.create()/mcreate().\n\n"
              "Fill it through the buffer protocol (memoryview(w), w.view, "
              "numpy.frombuffer(w, ...)) or write(), then seal() or "
              "abort(). Dropping it unsealed aborts the object; closing the "
              "client aborts it too.",
    .tp_dealloc = (destructor)wbuf_dealloc,
    .tp_repr = (reprfunc)wbuf_repr,
    .tp_as_buffer = &wbuf_as_buffer,
    .tp_methods = wbuf_methods,
    .tp_getset = wbuf_getset,
};
