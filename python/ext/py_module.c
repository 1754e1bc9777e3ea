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

static PyMethodDef module_methods[] = {
    {"checksum", py_checksum, METH_O,
     "checksum(data) -> int\n\nxxh3-64 of a C-contiguous buffer: the "
     "checksum kvds keeps for every value."},
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
                           &KvdsPinnedView_Type, &KvdsWriteBuffer_Type};
  const char *names[] = {"Client", "Pinned", "_PinnedView", "WriteBuffer"};
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
