/*
 * py_module.c — the kvds._kvds module: types, constants, utilities.
 */
#include "kvdspy.h"

static PyObject *py_checksum(PyObject *mod, PyObject *arg) {
  Py_buffer b;
  if (kvdspy_buf_get(arg, &b, 0, "data"))
    return NULL;
  uint64_t sum;
  PyThreadState *ts =
      (size_t)b.len >= KVDSPY_NOGIL_COPY ? PyEval_SaveThread() : NULL;
  sum = kvds_checksum(b.buf, (size_t)b.len);
  if (ts)
    PyEval_RestoreThread(ts);
  PyBuffer_Release(&b);
  return PyLong_FromUnsignedLongLong(sum);
}

int kvdspy_segments_get(PyObject *o, Py_buffer *view, const uint64_t **segs,
                        size_t *n, size_t *total) {
  if (kvdspy_buf_get(o, view, 0, "segments"))
    return -1;
  if (view->len % (2 * sizeof(uint64_t))) {
    PyErr_Format(PyExc_ValueError,
                 "segments must be (address, length) pairs of uint64: %zd "
                 "bytes is not a multiple of 16",
                 view->len);
    PyBuffer_Release(view);
    return -1;
  }
  *segs = view->buf;
  *n = (size_t)view->len / (2 * sizeof(uint64_t));
  *total = 0;
  for (size_t i = 0; i < *n; i++) {
    uint64_t len = (*segs)[2 * i + 1];
    if (len > SIZE_MAX - *total || (len && !(*segs)[2 * i])) {
      PyErr_Format(PyExc_ValueError, "segment %zu: %s", i,
                   len && !(*segs)[2 * i] ? "NULL address"
                                          : "lengths overflow");
      PyBuffer_Release(view);
      return -1;
    }
    *total += (size_t)len;
  }
  return 0;
}

static PyObject *py_scatter(PyObject *mod, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"src", "segments", "offset", NULL};
  PyObject *so, *go;
  Py_ssize_t off = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|n:scatter", kwlist, &so, &go,
                                   &off))
    return NULL;
  Py_buffer s, g;
  const uint64_t *segs;
  size_t n, total;
  if (kvdspy_buf_get(so, &s, 0, "src"))
    return NULL;
  if (kvdspy_segments_get(go, &g, &segs, &n, &total)) {
    PyBuffer_Release(&s);
    return NULL;
  }
  if (off < 0 || off > s.len || total > (size_t)(s.len - off)) {
    PyErr_Format(PyExc_ValueError,
                 "scatter of %zu bytes at offset %zd of a %zd-byte source",
                 total, off, s.len);
    PyBuffer_Release(&g);
    PyBuffer_Release(&s);
    return NULL;
  }
  const uint8_t *from = (const uint8_t *)s.buf + off;
  PyThreadState *ts = total >= KVDSPY_NOGIL_COPY ? PyEval_SaveThread() : NULL;
  for (size_t i = 0; i < n; i++) {
    size_t len = (size_t)segs[2 * i + 1];
    memcpy((void *)(uintptr_t)segs[2 * i], from, len);
    from += len;
  }
  if (ts)
    PyEval_RestoreThread(ts);
  PyBuffer_Release(&g);
  PyBuffer_Release(&s);
  Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"checksum", py_checksum, METH_O,
     "checksum(data) -> int\n\nxxh3-64 of a C-contiguous buffer: the "
     "checksum kvds keeps for every value."},
    {"scatter", (PyCFunction)(void (*)(void))py_scatter,
     METH_VARARGS | METH_KEYWORDS,
     "scatter(src, segments, offset=0)\n\nCopies src's bytes from offset on, "
     "in order, to the raw memory segments ((address, length) pairs of "
     "uint64, e.g. a numpy array of shape (n, 2)); the GIL is released. Like "
     "the *_raw calls, the addresses are trusted: they must be writable "
     "memory of at least that length."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef kvds_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "kvds._kvds",
    .m_doc = "CPython binding of libkvds, the kvds client library. Use it "
             "through the kvds package.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__kvds(void);
PyMODINIT_FUNC PyInit__kvds(void) {
  PyObject *m = PyModule_Create(&kvds_module);
  if (!m)
    return NULL;
  PyTypeObject *types[] = {&KvdsClient_Type, &KvdsPinned_Type,
                           &KvdsPinnedView_Type, &KvdsWriteBuffer_Type,
                           &KvdsCopyGate_Type};
  const char *names[] = {"Client", "Pinned", "_PinnedView", "WriteBuffer",
                         "CopyGate"};
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
    if (PyType_Ready(types[i]) ||
        PyModule_AddObjectRef(m, names[i], (PyObject *)types[i]))
      goto fail;
  if (kvdspy_errors_init(m) ||
      PyModule_AddIntConstant(m, "KEY_MAX", KVDS_KEY_MAX) ||
      PyModule_AddIntConstant(m, "BATCH_MAX", KVDS_BATCH_MAX) ||
      PyModule_AddStringConstant(m, "LIBKVDS_VERSION", KVDS_VERSION_STRING))
    goto fail;
  return m;
fail:
  Py_DECREF(m);
  return NULL;
}
