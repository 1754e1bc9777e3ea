/*
 * py_errors.c — libkvds error codes as Python exceptions.
 *
 * KvdsError(Exception) carries .code (the negative int), .name
 * (kvds_err_name), .index (the failing item of a batch, or None) and .detail
 * (the client's message, or ""). One table maps every KVDS_E_* code to its
 * class; a negative errno becomes KvdsOSError(KvdsError, OSError) with
 * .errno and .strerror set as OSError does.
 */
#include "kvdspy.h"

#include <limits.h>
#include <string.h>

enum cls {
  CLS_BASE,
  CLS_NOTFOUND,
  CLS_EXISTS,
  CLS_NOSPACE,
  CLS_TIMEOUT,
  CLS_KEYLEN,
  CLS_TOOBIG,
  CLS_CHECKSUM,
  CLS_CLOSED,
  CLS_PROTO,
  CLS_INVAL,
  CLS_AUTH,
  CLS_PEER,
  CLS_OS,
  CLS_COUNT
};

static const struct {
  const char *name;
  const char *doc;
} cls_info[CLS_COUNT] = {
    [CLS_BASE] = {"KvdsError", "A libkvds call failed. Attributes: code (the "
                               "negative error code), name (e.g. "
                               "'KVDS_E_NOTFOUND'), index (failing item of a "
                               "batch or None), detail (client message)."},
    [CLS_NOTFOUND] = {"NotFound", "KVDS_E_NOTFOUND: the key is absent."},
    [CLS_EXISTS] = {"Exists", "KVDS_E_EXISTS: the key already exists."},
    [CLS_NOSPACE] = {"NoSpace",
                     "KVDS_E_NOSPACE: the pool is full even after eviction."},
    [CLS_TIMEOUT] = {"Timeout", "KVDS_E_TIMEOUT: a deadline passed (I/O "
                                "timeout, or wait_ms for an absent key)."},
    [CLS_KEYLEN] = {"KeyLength", "KVDS_E_KEYLEN: key not 1..1024 bytes."},
    [CLS_TOOBIG] = {"TooBig", "KVDS_E_TOOBIG: value larger than the worker's "
                              "limit, or than the destination buffer."},
    [CLS_CHECKSUM] = {"ChecksumError",
                      "KVDS_E_CHECKSUM: received bytes do not match."},
    [CLS_CLOSED] = {"ConnectionClosed", "KVDS_E_CLOSED / KVDS_E_SHUTDOWN: the "
                                        "connection is gone; the client "
                                        "cannot be used any more."},
    [CLS_PROTO] = {"ProtocolError", "KVDS_E_PROTO, _VERSION, _BADOP, _LIMIT: "
                                    "the peer sent or refused a frame."},
    [CLS_INVAL] = {"InvalidArgument", "KVDS_E_INVAL, _RANGE, _ADDR: a bad "
                                      "argument (also a ValueError)."},
    [CLS_AUTH] = {"AuthError",
                  "KVDS_E_AUTH: the worker wants a token and none was given "
                  "($KVDS_AUTH_TOKEN_FILE), the tokens differ, the token "
                  "file is unusable, or the worker does not authenticate."},
    [CLS_PEER] = {"PeerError",
                  "KVDS_E_PEER: in a cluster, the worker holding the data "
                  "could not be reached, or died or stalled during the "
                  "transfer (recompute, or try again)."},
    [CLS_OS] = {"KvdsOSError", "A system error (negative errno, e.g. "
                               "ECONNREFUSED); also an OSError with errno."},
};

/* Every KVDS_E_* code and its class. */
static const struct {
  int code;
  enum cls cls;
} code_cls[] = {
    {KVDS_E_NOTFOUND, CLS_NOTFOUND}, {KVDS_E_EXISTS, CLS_EXISTS},
    {KVDS_E_NOSPACE, CLS_NOSPACE},   {KVDS_E_TIMEOUT, CLS_TIMEOUT},
    {KVDS_E_PROTO, CLS_PROTO},       {KVDS_E_INVAL, CLS_INVAL},
    {KVDS_E_KEYLEN, CLS_KEYLEN},     {KVDS_E_TOOBIG, CLS_TOOBIG},
    {KVDS_E_STATE, CLS_BASE},        {KVDS_E_PERM, CLS_BASE},
    {KVDS_E_CHECKSUM, CLS_CHECKSUM}, {KVDS_E_CLOSED, CLS_CLOSED},
    {KVDS_E_VERSION, CLS_PROTO},     {KVDS_E_NOSHM, CLS_BASE},
    {KVDS_E_RANGE, CLS_INVAL},       {KVDS_E_BADOP, CLS_PROTO},
    {KVDS_E_SHUTDOWN, CLS_CLOSED},   {KVDS_E_LIMIT, CLS_PROTO},
    {KVDS_E_HANDLE, CLS_BASE},       {KVDS_E_ADDR, CLS_INVAL},
    {KVDS_E_AUTH, CLS_AUTH},         {KVDS_E_PEER, CLS_PEER},
    {KVDS_E_INTR, CLS_BASE},
};

#define COUNT_CODE(name, val, msg) +1
enum { N_CODES = 0 KVDS_ERRNO_MAP(COUNT_CODE) };
#undef COUNT_CODE
_Static_assert(sizeof code_cls / sizeof code_cls[0] == N_CODES,
               "every KVDS_E_* code needs a class in code_cls[]");

/* Set once at module init; read-only afterwards. */
static PyObject *classes[CLS_COUNT];

static enum cls cls_of(int code) {
  if (code < 0 && code > -4096)
    return CLS_OS;
  for (size_t i = 0; i < sizeof code_cls / sizeof code_cls[0]; i++)
    if (code_cls[i].code == code)
      return code_cls[i].cls;
  return CLS_BASE;
}

/* An int argument as a C int (OverflowError outside its range). */
static int code_arg(PyObject *arg, int *out) {
  long v = PyLong_AsLong(arg);
  if (v == -1 && PyErr_Occurred())
    return -1;
  if (v < INT_MIN || v > INT_MAX) {
    PyErr_SetString(PyExc_OverflowError, "error code out of range");
    return -1;
  }
  *out = (int)v;
  return 0;
}

static PyObject *error_class(PyObject *mod, PyObject *arg) {
  int code;
  if (code_arg(arg, &code))
    return NULL;
  PyObject *c = classes[cls_of(code)];
  Py_INCREF(c);
  return c;
}

static PyObject *py_strerror(PyObject *mod, PyObject *arg) {
  int code;
  if (code_arg(arg, &code))
    return NULL;
  return PyUnicode_FromString(kvds_strerror(code));
}

static PyObject *py_err_name(PyObject *mod, PyObject *arg) {
  int code;
  if (code_arg(arg, &code))
    return NULL;
  return PyUnicode_FromString(kvds_err_name(code));
}

static PyMethodDef err_methods[] = {
    {"error_class", error_class, METH_O,
     "error_class(code) -> the exception class raised for a libkvds code."},
    {"strerror", py_strerror, METH_O,
     "strerror(code) -> message for a KVDS_E_* code or a negative errno."},
    {"err_name", py_err_name, METH_O,
     "err_name(code) -> symbolic name ('KVDS_E_NOTFOUND', 'ECONNREFUSED')."},
    {NULL, NULL, 0, NULL}};

int kvdspy_errors_init(PyObject *module) {
  for (int i = 0; i < CLS_COUNT; i++) {
    PyObject *bases;
    if (i == CLS_BASE)
      bases = Py_NewRef(PyExc_Exception);
    else if (i == CLS_INVAL)
      bases = PyTuple_Pack(2, classes[CLS_BASE], PyExc_ValueError);
    else if (i == CLS_OS)
      bases = PyTuple_Pack(2, classes[CLS_BASE], PyExc_OSError);
    else
      bases = Py_NewRef(classes[CLS_BASE]);
    if (!bases)
      return -1;
    char qual[64];
    snprintf(qual, sizeof qual, "kvds.%s", cls_info[i].name);
    classes[i] = PyErr_NewExceptionWithDoc(qual, cls_info[i].doc, bases, NULL);
    Py_DECREF(bases);
    if (!classes[i])
      return -1;
    /* Class-level defaults, so the attributes exist on any instance. */
    if (PyObject_SetAttrString(classes[i], "code", Py_None) ||
        PyObject_SetAttrString(classes[i], "name", Py_None) ||
        PyObject_SetAttrString(classes[i], "index", Py_None) ||
        PyObject_SetAttrString(classes[i], "detail", Py_None))
      return -1;
    if (PyModule_AddObjectRef(module, cls_info[i].name, classes[i]))
      return -1;
  }
#define ADD_CODE(name, val, msg)                                               \
  if (PyModule_AddIntConstant(module, "E_" #name, val))                        \
    return -1;
  KVDS_ERRNO_MAP(ADD_CODE)
#undef ADD_CODE
  return PyModule_AddFunctions(module, err_methods);
}

PyObject *kvdspy_error_new(int code, const char *detail, Py_ssize_t index) {
  enum cls k = cls_of(code);
  const char *msg = kvds_strerror(code);
  const char *name = kvds_err_name(code);
  PyObject *exc;
  if (!detail)
    detail = "";
  if (k == CLS_OS) {
    exc = PyObject_CallFunction(classes[k], "is", -code, msg);
  } else {
    char text[512];
    int w = 0;
    if (index >= 0)
      w = snprintf(text, sizeof text, "item %zd: ", index);
    w += snprintf(text + w, sizeof text - (size_t)w, "%s [%s]", msg, name);
    /* The client's detail often repeats the message; add it when not. */
    if (*detail && !strstr(detail, msg) && (size_t)w < sizeof text)
      snprintf(text + w, sizeof text - (size_t)w, " (%s)", detail);
    exc = PyObject_CallFunction(classes[k], "s", text);
  }
  if (!exc)
    return NULL;
  PyObject *v_code = PyLong_FromLong(code);
  PyObject *v_name = PyUnicode_FromString(name);
  PyObject *v_index =
      index >= 0 ? PyLong_FromSsize_t(index) : Py_NewRef(Py_None);
  PyObject *v_detail =
      PyUnicode_DecodeUTF8(detail, (Py_ssize_t)strlen(detail), "replace");
  int bad = !v_code || !v_name || !v_index || !v_detail ||
            PyObject_SetAttrString(exc, "code", v_code) ||
            PyObject_SetAttrString(exc, "name", v_name) ||
            PyObject_SetAttrString(exc, "index", v_index) ||
            PyObject_SetAttrString(exc, "detail", v_detail);
  Py_XDECREF(v_code);
  Py_XDECREF(v_name);
  Py_XDECREF(v_index);
  Py_XDECREF(v_detail);
  if (bad) {
    Py_DECREF(exc);
    return NULL;
  }
  return exc;
}

PyObject *kvdspy_raise(int code, const char *detail, Py_ssize_t index) {
  /* A signal handler's exception (KeyboardInterrupt) gave the call up: it
   * is what the call raises. */
  if (code == KVDS_E_INTR && PyErr_Occurred())
    return NULL;
  PyObject *exc = kvdspy_error_new(code, detail, index);
  if (exc) {
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
  }
  return NULL;
}

PyObject *kvdspy_raise_closed(void) {
  PyErr_SetString(PyExc_ValueError, "operation on a closed kvds.Client");
  return NULL;
}
