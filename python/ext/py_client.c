/*
 * py_client.c — kvds.Client: one libkvds connection guarded by a lock.
 *
 * Every method that talks to the worker follows the same pattern: convert
 * the arguments into held buffers (GIL), kvdspy_op_enter (GIL), then
 * release the GIL, take the client lock, make the libkvds call, copy the
 * error message, give the lock back and take the GIL again, build the
 * result, kvdspy_op_exit. See kvdspy.h for the locking and lifetime rules.
 */
#include "kvdspy.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_ADDRESS "127.0.0.1:31501"
#define LIST_PAGE 1000

/* Runs `stmt` on the client with the GIL released and the lock held; its
 * waits wake for signal handlers. */
#define KVDSPY_CALL(cl, stmt)                                                  \
  do {                                                                         \
    PyThreadState *ts_ = PyEval_SaveThread();                                  \
    kvdspy_lock(cl);                                                           \
    kvdspy_interruptible(cl, ts_);                                             \
    stmt;                                                                      \
    kvdspy_unlock(cl);                                                         \
    PyEval_RestoreThread(ts_);                                                 \
  } while (0)

/* rc = call, on the client as above; msg (a char array) gets the client's
 * error message when rc != 0. */
#define KVDSPY_CALL_RC(cl, rc, msg, call)                                      \
  KVDSPY_CALL(cl, (rc) = (call); if (rc) kvdspy_errmsg(cl, msg, sizeof msg))

/* ---- locking, pending releases, children ---------------------------------*/

void kvdspy_res_free(struct kvdspy_res *res) {
  if (!res)
    return;
  free(res->vals);
  free(res);
}

/* Releases or aborts everything on the pending list (lock held). */
static void drain_locked(ClientObject *cl) {
  PyThread_acquire_lock(cl->qlock, WAIT_LOCK);
  struct kvdspy_res *list = cl->pending;
  cl->pending = NULL;
  PyThread_release_lock(cl->qlock);
  while (list) {
    struct kvdspy_res *r = list;
    list = r->next;
    if (cl->c) {
      if (r->nvals)
        kvds_release(cl->c, r->nvals, r->vals);
      if (r->has_wbuf)
        kvds_abort(cl->c, &r->wbuf);
    }
    kvdspy_res_free(r);
  }
}

static int pending_nonempty(ClientObject *cl) {
  PyThread_acquire_lock(cl->qlock, WAIT_LOCK);
  int r = cl->pending != NULL;
  PyThread_release_lock(cl->qlock);
  return r;
}

void kvdspy_lock(ClientObject *cl) {
  PyThread_acquire_lock(cl->lock, WAIT_LOCK);
  /* Releases queued by finalizers go out before this call's request. */
  drain_locked(cl);
}

/* libkvds's interrupt check, called on the thread of a waiting call (GIL
 * released, lock held): runs Python's signal handlers there. A handler that
 * raised gives the call up (KVDS_E_INTR), its exception left set for the
 * method to raise. Once one is set, later checks of the same call (the
 * clean-up of a batch) let it finish. */
static int check_signals(void *ud) {
  ClientObject *cl = ud;
  int stop = 0;
  PyEval_RestoreThread(cl->call_ts);
  if (!PyErr_Occurred()) {
    cl->hook_thread = PyThread_get_thread_ident();
    stop = PyErr_CheckSignals() < 0;
    cl->hook_thread = 0;
  }
  cl->call_ts = PyEval_SaveThread();
  return stop;
}

void kvdspy_interruptible(ClientObject *cl, PyThreadState *ts) {
  /* Signal handlers run only in the main thread of the main interpreter:
   * elsewhere the check would only take the GIL for nothing. */
  if (!cl->c || !cl->main_thread ||
      PyThread_get_thread_ident() != cl->main_thread)
    return;
  cl->call_ts = ts;
  kvds_client_set_interrupt(cl->c, check_signals, cl);
}

void kvdspy_unlock(ClientObject *cl) {
  if (cl->c)
    kvds_client_set_interrupt(cl->c, NULL, NULL);
  for (;;) {
    drain_locked(cl);
    PyThread_release_lock(cl->lock);
    /* A finalizer that found the lock taken left its res for us: if one
     * arrived after the drain, take the lock back for it (unless another
     * thread holds it now, which then does the same). */
    if (!pending_nonempty(cl) || !PyThread_acquire_lock(cl->lock, NOWAIT_LOCK))
      return;
  }
}

/* A forked child must not use the parent's connection or its locks. */
static int forked(const ClientObject *cl) {
  return getpid() != cl->pid;
}

void kvdspy_dispose(ClientObject *cl, struct kvdspy_res *res) {
  if (!res)
    return;
  if (forked(cl)) {
    kvdspy_res_free(res);
    return;
  }
  PyThread_acquire_lock(cl->qlock, WAIT_LOCK);
  res->next = cl->pending;
  cl->pending = res;
  PyThread_release_lock(cl->qlock);
  if (PyThread_acquire_lock(cl->lock, NOWAIT_LOCK)) {
    PyThreadState *ts = PyEval_SaveThread();
    kvdspy_unlock(cl);
    PyEval_RestoreThread(ts);
  }
}

void kvdspy_child_attach(ClientObject *cl, struct kvdspy_child *ch,
                         struct kvdspy_res *res) {
  ch->res = res;
  ch->prev = NULL;
  ch->next = cl->children;
  if (cl->children)
    cl->children->prev = ch;
  cl->children = ch;
}

struct kvdspy_res *kvdspy_child_detach(struct kvdspy_child *ch) {
  struct kvdspy_res *res = ch->res;
  if (!res)
    return NULL;
  if (ch->prev)
    ch->prev->next = ch->next;
  else
    ch->client->children = ch->next;
  if (ch->next)
    ch->next->prev = ch->prev;
  ch->prev = ch->next = NULL;
  ch->res = NULL;
  return res;
}

void kvdspy_errmsg(ClientObject *cl, char *buf, size_t cap) {
  snprintf(buf, cap, "%s", cl->c ? kvds_client_errmsg(cl->c) : "");
}

/* Closes the connection (GIL held, no call in flight): every child loses
 * its memory first (no buffer is exported: close() checked, and exports are
 * refused once closing is set). */
static void real_close(ClientObject *cl) {
  if (forked(cl)) {
    while (cl->children)
      kvdspy_res_free(kvdspy_child_detach(cl->children));
    cl->c = NULL; /* the parent's: left alone */
    return;
  }
  while (cl->children) {
    struct kvdspy_res *r = kvdspy_child_detach(cl->children);
    PyThread_acquire_lock(cl->qlock, WAIT_LOCK);
    r->next = cl->pending;
    cl->pending = r;
    PyThread_release_lock(cl->qlock);
  }
  PyThreadState *ts = PyEval_SaveThread();
  PyThread_acquire_lock(cl->lock, WAIT_LOCK);
  drain_locked(cl);
  kvds_client_close(cl->c);
  cl->c = NULL;
  PyThread_release_lock(cl->lock);
  PyEval_RestoreThread(ts);
}

int kvdspy_op_enter(ClientObject *cl) {
  if (cl->closing) {
    kvdspy_raise_closed();
    return -1;
  }
  if (cl->hook_thread && cl->hook_thread == PyThread_get_thread_ident()) {
    PyErr_SetString(PyExc_RuntimeError,
                    "a signal handler cannot use the kvds.Client whose call "
                    "it interrupted");
    return -1;
  }
  if (forked(cl)) {
    PyErr_SetString(PyExc_RuntimeError,
                    "a kvds.Client cannot be used in a forked child process; "
                    "connect a new one there");
    return -1;
  }
  cl->inflight++;
  return 0;
}

void kvdspy_op_exit(ClientObject *cl) {
  if (--cl->inflight == 0 && cl->closing && cl->c)
    real_close(cl);
}

/* Raises for rc (a whole-call error) with the message captured. */
static PyObject *fail(int rc, const char *msg) {
  return kvdspy_raise(rc, msg, -1);
}

static void copy_bytes(void *dst, const void *src, size_t n) {
  if (n >= KVDSPY_NOGIL_COPY) {
    PyThreadState *ts = PyEval_SaveThread();
    memcpy(dst, src, n);
    PyEval_RestoreThread(ts);
  } else {
    memcpy(dst, src, n);
  }
}

/* Index of the first item whose status is rc (the one a batch call reports),
 * or -1 (a whole-batch error). */
static Py_ssize_t first_item(const int *results, Py_ssize_t n, int rc) {
  for (Py_ssize_t i = 0; i < n; i++)
    if (results[i])
      return results[i] == rc ? i : -1;
  return -1;
}

static int is_missing(int st) {
  return st == KVDS_E_NOTFOUND || st == KVDS_E_TIMEOUT;
}

/* ---- construction -------------------------------------------------------*/

static PyObject *client_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
  ClientObject *cl = (ClientObject *)type->tp_alloc(type, 0);
  if (!cl)
    return NULL;
  cl->closing = 1; /* until __init__ connects */
  cl->lock = PyThread_allocate_lock();
  cl->qlock = PyThread_allocate_lock();
  if (!cl->lock || !cl->qlock) {
    Py_DECREF(cl);
    return PyErr_NoMemory();
  }
  return (PyObject *)cl;
}

/* The ident of the thread that runs signal handlers (the main thread), when
 * this is the main interpreter; else 0 (calls are never interrupted). */
static unsigned long main_thread_ident(void) {
  if (PyThreadState_GetInterpreter(PyThreadState_Get()) !=
      PyInterpreterState_Main())
    return 0;
  unsigned long id = 0;
  PyObject *mod = PyImport_ImportModule("threading");
  PyObject *t = mod ? PyObject_CallMethod(mod, "main_thread", NULL) : NULL;
  PyObject *v = t ? PyObject_GetAttrString(t, "ident") : NULL;
  if (v && PyLong_Check(v))
    id = PyLong_AsUnsignedLong(v);
  Py_XDECREF(v);
  Py_XDECREF(t);
  Py_XDECREF(mod);
  if (PyErr_Occurred()) { /* no interrupts then; the client still works */
    PyErr_Clear();
    id = 0;
  }
  return id;
}

static int client_init(ClientObject *cl, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"address", "timeout_ms", "lazy_map", "tcp_only",
                           NULL};
  PyObject *addr = Py_None;
  int timeout_ms = 5000, lazy = 0, tcp_only = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|Oipp:Client", kwlist, &addr,
                                   &timeout_ms, &lazy, &tcp_only))
    return -1;
  if (cl->c || cl->address) {
    PyErr_SetString(PyExc_TypeError, "kvds.Client is already initialised");
    return -1;
  }
  if (addr == Py_None) {
    const char *env = getenv("DS_WORKER_ADDR");
    addr = PyUnicode_FromString(env && *env ? env : DEFAULT_ADDRESS);
  } else if (PyUnicode_Check(addr)) {
    Py_INCREF(addr);
  } else {
    PyErr_Format(PyExc_TypeError, "address must be str or None, not %.100s",
                 Py_TYPE(addr)->tp_name);
    return -1;
  }
  if (!addr)
    return -1;
  const char *a = PyUnicode_AsUTF8(addr);
  if (!a) {
    Py_DECREF(addr);
    return -1;
  }
  unsigned flags = (lazy ? KVDS_CONNECT_LAZY_MAP : 0) |
                   (tcp_only ? KVDS_CONNECT_TCP_ONLY : 0);
  kvds_client *c = NULL;
  int rc;
  PyThreadState *ts = PyEval_SaveThread();
  rc = kvds_client_connect_ex(a, timeout_ms, flags, &c);
  PyEval_RestoreThread(ts);
  if (rc) {
    char msg[300];
    snprintf(msg, sizeof msg, "cannot connect to %s", a);
    Py_DECREF(addr);
    kvdspy_raise(rc, msg, -1);
    return -1;
  }
  cl->c = c;
  cl->local = kvds_client_is_local(c);
  cl->pid = getpid();
  cl->address = addr;
  cl->timeout_ms = timeout_ms > 0 ? timeout_ms : 5000;
  cl->main_thread = main_thread_ident();
  cl->closing = 0;
  return 0;
}

static void client_dealloc(ClientObject *cl) {
  /* No child is alive (each holds a reference) and no call is in flight. */
  if (cl->c && forked(cl)) {
    /* The parent's connection and locks (maybe held by a parent thread at
     * the fork): leave them; the fds are close-on-exec. */
    cl->c = NULL;
    cl->lock = cl->qlock = NULL;
  }
  if (cl->c) {
    PyThreadState *ts = PyEval_SaveThread();
    PyThread_acquire_lock(cl->lock, WAIT_LOCK);
    drain_locked(cl);
    kvds_client_close(cl->c);
    cl->c = NULL;
    PyThread_release_lock(cl->lock);
    PyEval_RestoreThread(ts);
  }
  while (cl->pending) {
    struct kvdspy_res *r = cl->pending;
    cl->pending = r->next;
    kvdspy_res_free(r);
  }
  if (cl->lock)
    PyThread_free_lock(cl->lock);
  if (cl->qlock)
    PyThread_free_lock(cl->qlock);
  Py_XDECREF(cl->address);
  Py_TYPE(cl)->tp_free((PyObject *)cl);
}

static PyObject *client_close(ClientObject *cl, PyObject *unused) {
  if (cl->closing)
    Py_RETURN_NONE;
  if (cl->exports > 0) {
    PyErr_Format(PyExc_BufferError,
                 "cannot close: %zd memoryview(s) of pinned values or write "
                 "buffers still exist (release them first)",
                 cl->exports);
    return NULL;
  }
  cl->closing = 1;
  if (cl->inflight == 0 && cl->c)
    real_close(cl);
  Py_RETURN_NONE;
}

static PyObject *client_enter(PyObject *self, PyObject *unused) {
  return Py_NewRef(self);
}

static PyObject *client_exit(ClientObject *cl, PyObject *args) {
  PyObject *t =
      PyTuple_GET_SIZE(args) > 0 ? PyTuple_GET_ITEM(args, 0) : Py_None;
  if (t != Py_None && cl->exports > 0)
    Py_RETURN_FALSE; /* keep the exception; closed when collected */
  PyObject *r = client_close(cl, NULL);
  if (!r)
    return NULL;
  Py_DECREF(r);
  Py_RETURN_FALSE;
}

static PyObject *client_repr(ClientObject *cl) {
  return PyUnicode_FromFormat("<kvds.Client address=%R%s>",
                              cl->address ? cl->address : Py_None,
                              cl->closing ? " closed" : "");
}

/* ---- simple calls ------------------------------------------------------- */

static PyObject *client_ping(ClientObject *cl, PyObject *unused) {
  if (kvdspy_op_enter(cl))
    return NULL;
  int rc;
  char msg[256];
  KVDSPY_CALL_RC(cl, rc, msg, kvds_ping(cl->c));
  kvdspy_op_exit(cl);
  if (rc)
    return fail(rc, msg);
  Py_RETURN_NONE;
}

static PyObject *client_set_timeout(ClientObject *cl, PyObject *arg) {
  long ms = PyLong_AsLong(arg);
  if (ms == -1 && PyErr_Occurred())
    return NULL;
  if (ms <= 0 || ms > INT32_MAX) {
    PyErr_SetString(PyExc_ValueError, "timeout_ms must be in 1..2**31-1");
    return NULL;
  }
  if (kvdspy_op_enter(cl))
    return NULL;
  KVDSPY_CALL(cl, kvds_client_set_timeout(cl->c, (int)ms));
  cl->timeout_ms = (int)ms;
  kvdspy_op_exit(cl);
  Py_RETURN_NONE;
}

static PyObject *client_shutdown(ClientObject *cl, PyObject *unused) {
  if (kvdspy_op_enter(cl))
    return NULL;
  int rc;
  char msg[256];
  KVDSPY_CALL_RC(cl, rc, msg, kvds_shutdown(cl->c));
  kvdspy_op_exit(cl);
  if (rc)
    return fail(rc, msg);
  Py_RETURN_NONE;
}

/* ---- put ---------------------------------------------------------------- */

static PyObject *do_put(ClientObject *cl, Py_buffer *k, const void *val,
                        size_t vlen) {
  if (kvdspy_op_enter(cl))
    return NULL;
  int rc;
  char msg[256];
  KVDSPY_CALL_RC(cl, rc, msg,
                 kvds_put(cl->c, k->buf, (size_t)k->len, val, vlen));
  kvdspy_op_exit(cl);
  if (rc)
    return fail(rc, msg);
  Py_RETURN_NONE;
}

static PyObject *client_put(ClientObject *cl, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"key", "value", NULL};
  PyObject *ko, *vo;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "OO:put", kwlist, &ko, &vo))
    return NULL;
  Py_buffer k, v;
  if (kvdspy_key_get(ko, &k))
    return NULL;
  if (kvdspy_buf_get(vo, &v, 0, "value")) {
    PyBuffer_Release(&k);
    return NULL;
  }
  PyObject *r = do_put(cl, &k, v.buf, (size_t)v.len);
  PyBuffer_Release(&v);
  PyBuffer_Release(&k);
  return r;
}

static PyObject *client_put_raw(ClientObject *cl, PyObject *args,
                                PyObject *kw) {
  static char *kwlist[] = {"key", "ptr", "length", NULL};
  PyObject *ko, *po, *lo;
  void *ptr;
  size_t len;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO:put_raw", kwlist, &ko, &po,
                                   &lo))
    return NULL;
  if (kvdspy_ptr(po, &ptr) || kvdspy_size(lo, &len, "length"))
    return NULL;
  Py_buffer k;
  if (kvdspy_key_get(ko, &k))
    return NULL;
  PyObject *r = do_put(cl, &k, ptr, len);
  PyBuffer_Release(&k);
  return r;
}

static PyObject *do_mput(ClientObject *cl, struct kvdspy_batch *keys,
                         struct kvdspy_batch *vals) {
  if (keys->n != vals->n) {
    PyErr_Format(PyExc_ValueError, "%zd keys but %zd values", keys->n, vals->n);
    return NULL;
  }
  Py_ssize_t n = keys->n;
  if (n == 0)
    Py_RETURN_NONE;
  int *results = PyMem_Calloc((size_t)n, sizeof *results);
  if (!results)
    return PyErr_NoMemory();
  if (kvdspy_op_enter(cl)) {
    PyMem_Free(results);
    return NULL;
  }
  int rc;
  char msg[256];
  KVDSPY_CALL_RC(cl, rc, msg,
                 kvds_mput(cl->c, (size_t)n, keys->iov, vals->iov, results));
  kvdspy_op_exit(cl);
  Py_ssize_t idx = rc ? first_item(results, n, rc) : -1;
  PyMem_Free(results);
  if (rc)
    return kvdspy_raise(rc, msg, idx);
  Py_RETURN_NONE;
}

static PyObject *client_mput(ClientObject *cl, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"keys", "values", NULL};
  PyObject *ko, *vo;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "OO:mput", kwlist, &ko, &vo))
    return NULL;
  struct kvdspy_batch keys = {0}, vals = {0};
  if (kvdspy_batch_keys(&keys, ko))
    return NULL;
  if (kvdspy_batch_values(&vals, vo)) {
    kvdspy_batch_fini(&keys);
    return NULL;
  }
  PyObject *r = do_mput(cl, &keys, &vals);
  kvdspy_batch_fini(&vals);
  kvdspy_batch_fini(&keys);
  return r;
}

static PyObject *client_mput_raw(ClientObject *cl, PyObject *args,
                                 PyObject *kw) {
  static char *kwlist[] = {"keys", "ptrs", "lengths", NULL};
  PyObject *ko, *po, *lo;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO:mput_raw", kwlist, &ko, &po,
                                   &lo))
    return NULL;
  struct kvdspy_batch keys = {0}, vals = {0};
  if (kvdspy_batch_keys(&keys, ko))
    return NULL;
  if (kvdspy_batch_raw(&vals, po, lo)) {
    kvdspy_batch_fini(&keys);
    return NULL;
  }
  PyObject *r = do_mput(cl, &keys, &vals);
  kvdspy_batch_fini(&vals);
  kvdspy_batch_fini(&keys);
  return r;
}

/* ---- get ---------------------------------------------------------------- */

/* Pins n keys. On success (0) vals[] and results[] are filled and the caller
 * owns the pins; else raises (nothing is pinned). Call between op_enter and
 * op_exit. */
static int pin_keys(ClientObject *cl, size_t n, const struct kvds_iov *keys,
                    const struct kvds_get_opts *o, struct kvds_value *vals,
                    int *results) {
  int rc;
  char msg[256];
  KVDSPY_CALL_RC(cl, rc, msg, kvds_mget_ex(cl->c, n, keys, o, vals, results));
  if (rc) {
    fail(rc, msg);
    return -1;
  }
  return 0;
}

static PyObject *client_get(ClientObject *cl, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"key", "wait_ms", "hint", "local", NULL};
  PyObject *ko;
  struct kvds_get_opts o = {0};
  int local = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O|i$zp:get", kwlist, &ko,
                                   &o.wait_ms, &o.hint, &local))
    return NULL;
  o.flags = local ? KVDS_GET_LOCAL : 0;
  Py_buffer k;
  if (kvdspy_key_get(ko, &k))
    return NULL;
  if (kvdspy_op_enter(cl)) {
    PyBuffer_Release(&k);
    return NULL;
  }
  struct kvds_iov key = {k.buf, (size_t)k.len};
  struct kvds_value v;
  int res;
  PyObject *out = NULL;
  if (pin_keys(cl, 1, &key, &o, &v, &res))
    goto out;
  if (res) {
    kvdspy_raise(res, NULL, -1);
    goto out;
  }
  out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)v.len);
  if (out)
    copy_bytes(PyBytes_AS_STRING(out), v.data, v.len);
  KVDSPY_CALL(cl, kvds_release(cl->c, 1, &v));
out:
  kvdspy_op_exit(cl);
  PyBuffer_Release(&k);
  return out;
}

static PyObject *client_mget(ClientObject *cl, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"keys", "wait_ms", "hint", "local", NULL};
  PyObject *ko;
  struct kvds_get_opts o = {0};
  int local = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O|i$zp:mget", kwlist, &ko,
                                   &o.wait_ms, &o.hint, &local))
    return NULL;
  o.flags = local ? KVDS_GET_LOCAL : 0;
  struct kvdspy_batch keys = {0};
  if (kvdspy_batch_keys(&keys, ko))
    return NULL;
  size_t n = (size_t)keys.n;
  PyObject *out = NULL;
  struct kvds_value *vals = PyMem_Calloc(n ? n : 1, sizeof *vals);
  int *results = PyMem_Calloc(n ? n : 1, sizeof *results);
  if (!vals || !results) {
    PyErr_NoMemory();
    goto free;
  }
  if (n == 0) {
    out = PyList_New(0);
    goto free;
  }
  if (kvdspy_op_enter(cl))
    goto free;
  if (pin_keys(cl, n, keys.iov, &o, vals, results))
    goto exit;
  Py_ssize_t bad = -1;
  size_t total = 0;
  out = PyList_New((Py_ssize_t)n);
  for (size_t i = 0; out && i < n; i++) {
    PyObject *item;
    if (results[i]) {
      if (!is_missing(results[i]) && bad < 0)
        bad = (Py_ssize_t)i;
      item = Py_NewRef(Py_None);
    } else if (!(item = PyBytes_FromStringAndSize(NULL,
                                                  (Py_ssize_t)vals[i].len))) {
      Py_CLEAR(out);
      break;
    } else {
      total += vals[i].len;
    }
    PyList_SET_ITEM(out, (Py_ssize_t)i, item);
  }
  if (out && bad < 0) {
    /* The byte objects are private to this call: fill them without the GIL
     * when there is enough to copy. */
    char **dst = PyMem_Malloc(n * sizeof *dst);
    if (!dst) {
      Py_CLEAR(out);
      PyErr_NoMemory();
    } else {
      for (size_t i = 0; i < n; i++)
        dst[i] = results[i]
                     ? NULL
                     : PyBytes_AS_STRING(PyList_GET_ITEM(out, (Py_ssize_t)i));
      PyThreadState *ts =
          total >= KVDSPY_NOGIL_COPY ? PyEval_SaveThread() : NULL;
      for (size_t i = 0; i < n; i++)
        if (dst[i])
          memcpy(dst[i], vals[i].data, vals[i].len);
      if (ts)
        PyEval_RestoreThread(ts);
      PyMem_Free(dst);
    }
  }
  KVDSPY_CALL(cl, kvds_release(cl->c, n, vals));
  if (out && bad >= 0) {
    Py_CLEAR(out);
    kvdspy_raise(results[bad], NULL, bad);
  }
exit:
  kvdspy_op_exit(cl);
free:
  PyMem_Free(vals);
  PyMem_Free(results);
  kvdspy_batch_fini(&keys);
  return out;
}

static PyObject *do_get_into(ClientObject *cl, PyObject *ko, void *buf,
                             size_t cap, const struct kvds_get_opts *o) {
  Py_buffer k;
  if (kvdspy_key_get(ko, &k))
    return NULL;
  if (kvdspy_op_enter(cl)) {
    PyBuffer_Release(&k);
    return NULL;
  }
  int rc;
  size_t len = 0;
  char msg[256];
  KVDSPY_CALL_RC(cl, rc, msg,
                 kvds_get_ex(cl->c, k.buf, (size_t)k.len, buf, cap, &len, o));
  kvdspy_op_exit(cl);
  PyBuffer_Release(&k);
  if (rc)
    return fail(rc, msg);
  return PyLong_FromSize_t(len);
}

static PyObject *client_get_into(ClientObject *cl, PyObject *args,
                                 PyObject *kw) {
  static char *kwlist[] = {"key", "buffer", "wait_ms", "hint", "local", NULL};
  PyObject *ko, *bo;
  struct kvds_get_opts o = {0};
  int local = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|i$zp:get_into", kwlist, &ko,
                                   &bo, &o.wait_ms, &o.hint, &local))
    return NULL;
  o.flags = local ? KVDS_GET_LOCAL : 0;
  Py_buffer b;
  if (kvdspy_buf_get(bo, &b, 1, "buffer"))
    return NULL;
  PyObject *r = do_get_into(cl, ko, b.buf, (size_t)b.len, &o);
  PyBuffer_Release(&b);
  return r;
}

static PyObject *client_get_into_raw(ClientObject *cl, PyObject *args,
                                     PyObject *kw) {
  static char *kwlist[] = {"key",  "ptr",   "capacity", "wait_ms",
                           "hint", "local", NULL};
  PyObject *ko, *po, *co;
  struct kvds_get_opts o = {0};
  int local = 0;
  void *ptr;
  size_t cap;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|i$zp:get_into_raw", kwlist,
                                   &ko, &po, &co, &o.wait_ms, &o.hint, &local))
    return NULL;
  o.flags = local ? KVDS_GET_LOCAL : 0;
  if (kvdspy_ptr(po, &ptr) || kvdspy_size(co, &cap, "capacity"))
    return NULL;
  return do_get_into(cl, ko, ptr, cap, &o);
}

/* mget_views and pin: pin_flag is 0 or KVDS_GET_PIN. */
static PyObject *pin_many(ClientObject *cl, PyObject *args, PyObject *kw,
                          const char *fmt, unsigned pin_flag) {
  static char *kwlist[] = {"keys", "wait_ms", "hint", "local", NULL};
  PyObject *ko;
  struct kvds_get_opts o = {0};
  int local = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, fmt, kwlist, &ko, &o.wait_ms,
                                   &o.hint, &local))
    return NULL;
  o.flags = (local ? KVDS_GET_LOCAL : 0) | pin_flag;
  struct kvdspy_batch keys = {0};
  if (kvdspy_batch_keys(&keys, ko))
    return NULL;
  size_t n = (size_t)keys.n;
  PyObject *out = NULL;
  /* malloc: the array ends up on the pending list, freed without the GIL. */
  struct kvds_value *vals = calloc(n ? n : 1, sizeof *vals);
  int *results = PyMem_Calloc(n ? n : 1, sizeof *results);
  if (!vals || !results) {
    PyErr_NoMemory();
    goto free;
  }
  if (kvdspy_op_enter(cl))
    goto free;
  if (n && pin_keys(cl, n, keys.iov, &o, vals, results))
    goto exit;
  Py_ssize_t bad = -1;
  for (size_t i = 0; i < n && bad < 0; i++)
    if (results[i] && !is_missing(results[i]))
      bad = (Py_ssize_t)i;
  if (bad >= 0) {
    KVDSPY_CALL(cl, kvds_release(cl->c, n, vals));
    kvdspy_raise(results[bad], NULL, bad);
    goto exit;
  }
  out = kvdspy_pinned_new(cl, n, vals, results, pin_flag != 0);
  vals = NULL; /* the Pinned object (or, on failure, the client) owns it */
exit:
  kvdspy_op_exit(cl);
free:
  free(vals);
  PyMem_Free(results);
  kvdspy_batch_fini(&keys);
  return out;
}

static PyObject *client_mget_views(ClientObject *cl, PyObject *args,
                                   PyObject *kw) {
  return pin_many(cl, args, kw, "O|i$zp:mget_views", 0);
}

static PyObject *client_pin(ClientObject *cl, PyObject *args, PyObject *kw) {
  return pin_many(cl, args, kw, "O|i$zp:pin", KVDS_GET_PIN);
}

/* ---- two-phase writes --------------------------------------------------- */

static PyObject *client_create(ClientObject *cl, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"key", "size", NULL};
  PyObject *ko, *so;
  size_t size;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "OO:create", kwlist, &ko, &so))
    return NULL;
  if (kvdspy_size(so, &size, "size"))
    return NULL;
  Py_buffer k;
  if (kvdspy_key_get(ko, &k))
    return NULL;
  if (kvdspy_op_enter(cl)) {
    PyBuffer_Release(&k);
    return NULL;
  }
  struct kvds_wbuf wb;
  int rc;
  char msg[256];
  PyObject *out = NULL;
  KVDSPY_CALL_RC(cl, rc, msg,
                 kvds_create(cl->c, k.buf, (size_t)k.len, size, &wb));
  if (rc)
    fail(rc, msg);
  else
    out = kvdspy_wbuf_new(cl, k.buf, (size_t)k.len, &wb);
  kvdspy_op_exit(cl);
  PyBuffer_Release(&k);
  return out;
}

static PyObject *client_mcreate(ClientObject *cl, PyObject *args,
                                PyObject *kw) {
  static char *kwlist[] = {"keys", "sizes", "partial", NULL};
  PyObject *ko, *so;
  int partial = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|$p:mcreate", kwlist, &ko, &so,
                                   &partial))
    return NULL;
  struct kvdspy_batch keys = {0};
  if (kvdspy_batch_keys(&keys, ko))
    return NULL;
  size_t n = (size_t)keys.n;
  PyObject *out = NULL, *sf = NULL;
  size_t *sizes = PyMem_Calloc(n ? n : 1, sizeof *sizes);
  struct kvds_wbuf *bufs = PyMem_Calloc(n ? n : 1, sizeof *bufs);
  int *results = PyMem_Calloc(n ? n : 1, sizeof *results);
  if (!sizes || !bufs || !results) {
    PyErr_NoMemory();
    goto free;
  }
  if (!(sf = PySequence_Fast(so, "sizes must be a sequence")))
    goto free;
  if ((size_t)PySequence_Fast_GET_SIZE(sf) != n) {
    PyErr_Format(PyExc_ValueError, "%zd keys but %zd sizes", keys.n,
                 PySequence_Fast_GET_SIZE(sf));
    goto free;
  }
  for (size_t i = 0; i < n; i++)
    if (kvdspy_size(PySequence_Fast_GET_ITEM(sf, (Py_ssize_t)i), &sizes[i],
                    "a size"))
      goto free;
  if (kvdspy_op_enter(cl))
    goto free;
  int rc = 0;
  char msg[256];
  if (n)
    KVDSPY_CALL_RC(cl, rc, msg,
                   kvds_mcreate(cl->c, n, keys.iov, sizes, bufs, results));
  if (rc) {
    fail(rc, msg);
    goto exit;
  }
  Py_ssize_t bad = -1;
  for (size_t i = 0; i < n && bad < 0 && !partial; i++)
    if (results[i])
      bad = (Py_ssize_t)i;
  if (bad >= 0) {
    KVDSPY_CALL(cl, kvds_mabort(cl->c, n, bufs));
    kvdspy_raise(results[bad], NULL, bad);
    goto exit;
  }
  out = PyList_New((Py_ssize_t)n);
  for (size_t i = 0; i < n; i++) {
    if (results[i]) { /* partial: the item's error in its place */
      PyObject *e =
          out ? kvdspy_error_new(results[i], NULL, (Py_ssize_t)i) : NULL;
      if (e)
        PyList_SET_ITEM(out, (Py_ssize_t)i, e);
      else
        Py_CLEAR(out);
      continue;
    }
    PyObject *w =
        out ? kvdspy_wbuf_new(cl, keys.iov[i].base, keys.iov[i].len, &bufs[i])
            : NULL;
    if (!w) {
      /* Objects not handed to a WriteBuffer are aborted. */
      Py_CLEAR(out);
      struct kvdspy_res *r = calloc(1, sizeof *r);
      if (r) {
        r->has_wbuf = 1;
        r->wbuf = bufs[i];
        kvdspy_dispose(cl, r);
      }
      continue;
    }
    PyList_SET_ITEM(out, (Py_ssize_t)i, w);
  }
exit:
  kvdspy_op_exit(cl);
free:
  Py_XDECREF(sf);
  PyMem_Free(sizes);
  PyMem_Free(bufs);
  PyMem_Free(results);
  kvdspy_batch_fini(&keys);
  return out;
}

static PyObject *client_mgather(ClientObject *cl, PyObject *args,
                                PyObject *kw) {
  return kvdspy_wbuf_mgather(cl, args, kw);
}

static PyObject *client_mseal(ClientObject *cl, PyObject *seq) {
  return kvdspy_wbuf_mseal(cl, seq);
}

static PyObject *client_msave(ClientObject *cl, PyObject *args, PyObject *kw) {
  return kvdspy_msave(cl, args, kw);
}

/* ---- index operations --------------------------------------------------- */

static PyObject *client_exists(ClientObject *cl, PyObject *ko) {
  struct kvdspy_batch keys = {0};
  if (kvdspy_batch_keys(&keys, ko))
    return NULL;
  size_t n = (size_t)keys.n;
  PyObject *out = NULL;
  uint8_t *present = PyMem_Calloc(n ? n : 1, 1);
  if (!present) {
    PyErr_NoMemory();
    goto free;
  }
  if (kvdspy_op_enter(cl))
    goto free;
  int rc = 0;
  char msg[256];
  if (n)
    KVDSPY_CALL_RC(cl, rc, msg, kvds_exists(cl->c, n, keys.iov, present));
  kvdspy_op_exit(cl);
  if (rc) {
    fail(rc, msg);
    goto free;
  }
  if (!(out = PyList_New((Py_ssize_t)n)))
    goto free;
  for (size_t i = 0; i < n; i++)
    PyList_SET_ITEM(out, (Py_ssize_t)i, PyBool_FromLong(present[i]));
free:
  PyMem_Free(present);
  kvdspy_batch_fini(&keys);
  return out;
}

static PyObject *client_lookup_prefix(ClientObject *cl, PyObject *ko) {
  struct kvdspy_batch keys = {0};
  if (kvdspy_batch_keys(&keys, ko))
    return NULL;
  size_t n = (size_t)keys.n, count = 0;
  int rc = 0;
  char msg[256];
  if (kvdspy_op_enter(cl)) {
    kvdspy_batch_fini(&keys);
    return NULL;
  }
  if (n)
    KVDSPY_CALL_RC(cl, rc, msg, kvds_lookup_prefix(cl->c, n, keys.iov, &count));
  kvdspy_op_exit(cl);
  kvdspy_batch_fini(&keys);
  if (rc)
    return fail(rc, msg);
  return PyLong_FromSize_t(count);
}

static PyObject *client_delete(ClientObject *cl, PyObject *ko) {
  Py_buffer k;
  if (kvdspy_key_get(ko, &k))
    return NULL;
  if (kvdspy_op_enter(cl)) {
    PyBuffer_Release(&k);
    return NULL;
  }
  int rc;
  char msg[256];
  KVDSPY_CALL_RC(cl, rc, msg, kvds_delete(cl->c, k.buf, (size_t)k.len));
  kvdspy_op_exit(cl);
  PyBuffer_Release(&k);
  if (rc)
    return fail(rc, msg);
  Py_RETURN_NONE;
}

static PyObject *client_mdelete(ClientObject *cl, PyObject *ko) {
  struct kvdspy_batch keys = {0};
  if (kvdspy_batch_keys(&keys, ko))
    return NULL;
  size_t n = (size_t)keys.n;
  PyObject *out = NULL;
  int *results = PyMem_Calloc(n ? n : 1, sizeof *results);
  if (!results) {
    PyErr_NoMemory();
    goto free;
  }
  if (kvdspy_op_enter(cl))
    goto free;
  int rc = 0;
  char msg[256];
  if (n)
    KVDSPY_CALL_RC(cl, rc, msg, kvds_mdelete(cl->c, n, keys.iov, results));
  kvdspy_op_exit(cl);
  if (!rc) {
    out = Py_NewRef(Py_None);
    goto free;
  }
  if (first_item(results, (Py_ssize_t)n, rc) < 0) {
    fail(rc, msg); /* the batch failed as a whole */
    goto free;
  }
  if (!(out = PyList_New((Py_ssize_t)n)))
    goto free;
  for (size_t i = 0; i < n; i++) {
    PyObject *e = results[i] ? kvdspy_error_new(results[i], NULL, (Py_ssize_t)i)
                             : Py_NewRef(Py_None);
    if (!e) {
      Py_CLEAR(out);
      break;
    }
    PyList_SET_ITEM(out, (Py_ssize_t)i, e);
  }
free:
  PyMem_Free(results);
  kvdspy_batch_fini(&keys);
  return out;
}

static PyObject *info_dict(const struct kvds_object_info *in) {
  const char *state = in->state == KVDS_STATE_SEALED    ? "sealed"
                      : in->state == KVDS_STATE_WRITING ? "writing"
                                                        : "unknown";
  return Py_BuildValue(
      "{s:n,s:K,s:s,s:I,s:K,s:K}", "size", (Py_ssize_t)in->size, "checksum",
      (unsigned long long)in->checksum, "state", state, "pins",
      (unsigned)in->pins, "ctime_us", (unsigned long long)in->ctime_us,
      "atime_us", (unsigned long long)in->atime_us);
}

static PyObject *client_stat(ClientObject *cl, PyObject *ko) {
  Py_buffer k;
  if (kvdspy_key_get(ko, &k))
    return NULL;
  if (kvdspy_op_enter(cl)) {
    PyBuffer_Release(&k);
    return NULL;
  }
  struct kvds_object_info info;
  int rc;
  char msg[256];
  KVDSPY_CALL_RC(cl, rc, msg, kvds_stat(cl->c, k.buf, (size_t)k.len, &info));
  kvdspy_op_exit(cl);
  PyBuffer_Release(&k);
  if (rc)
    return fail(rc, msg);
  return info_dict(&info);
}

static PyObject *client_list(ClientObject *cl, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"prefix", "limit", NULL};
  PyObject *po = NULL, *lo = NULL;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|OO:list", kwlist, &po, &lo))
    return NULL;
  size_t limit = LIST_PAGE; /* 0: no limit */
  if (lo == Py_None)
    limit = 0;
  else if (lo && kvdspy_size(lo, &limit, "limit"))
    return NULL;
  Py_buffer p = {0};
  if (po && kvdspy_key_get(po, &p))
    return NULL;
  PyObject *out = PyList_New(0);
  if (!out || kvdspy_op_enter(cl)) {
    Py_CLEAR(out);
    PyBuffer_Release(&p);
    return NULL;
  }
  uint8_t after[KVDS_KEY_MAX];
  size_t alen = 0;
  for (;;) {
    size_t want = (size_t)PyList_GET_SIZE(out);
    want = limit ? limit - want : LIST_PAGE;
    if (want > LIST_PAGE)
      want = LIST_PAGE;
    if (want == 0)
      break;
    struct kvds_list *l = NULL;
    int rc;
    char msg[256];
    KVDSPY_CALL_RC(
        cl, rc, msg,
        kvds_list(cl->c, p.buf, (size_t)p.len, after, alen, want, &l));
    if (rc) {
      fail(rc, msg);
      Py_CLEAR(out);
      break;
    }
    int bad = 0;
    for (size_t i = 0; i < l->n && !bad; i++) {
      const struct kvds_list_entry *e = &l->entries[i];
      PyObject *t =
          Py_BuildValue("(y#n)", (const char *)e->key, (Py_ssize_t)e->klen,
                        (Py_ssize_t)e->info.size);
      bad = !t || PyList_Append(out, t);
      Py_XDECREF(t);
    }
    int more = l->more && l->n > 0;
    if (l->n) {
      const struct kvds_list_entry *last = &l->entries[l->n - 1];
      alen = last->klen <= sizeof after ? last->klen : 0;
      memcpy(after, last->key, alen);
    }
    kvds_list_free(l);
    if (bad) {
      Py_CLEAR(out);
      break;
    }
    if (!more)
      break;
  }
  kvdspy_op_exit(cl);
  PyBuffer_Release(&p);
  return out;
}

static PyObject *client_cluster_status(ClientObject *cl, PyObject *unused) {
  if (kvdspy_op_enter(cl))
    return NULL;
  char *json = NULL;
  int rc;
  char msg[256];
  KVDSPY_CALL_RC(cl, rc, msg, kvds_cluster_status(cl->c, &json));
  kvdspy_op_exit(cl);
  if (rc)
    return fail(rc, msg);
  PyObject *s = PyUnicode_FromString(json);
  free(json);
  return s;
}

static PyObject *client_locate(ClientObject *cl, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"key", NULL};
  PyObject *ko;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O:locate", kwlist, &ko))
    return NULL;
  Py_buffer k;
  if (kvdspy_key_get(ko, &k))
    return NULL;
  if (kvdspy_op_enter(cl)) {
    PyBuffer_Release(&k);
    return NULL;
  }
  struct kvds_location *loc = NULL;
  size_t n = 0;
  int rc;
  char msg[256];
  KVDSPY_CALL_RC(cl, rc, msg,
                 kvds_locate(cl->c, k.buf, (size_t)k.len, &loc, &n));
  kvdspy_op_exit(cl);
  PyBuffer_Release(&k);
  if (rc)
    return fail(rc, msg);
  PyObject *out = PyList_New((Py_ssize_t)n);
  for (size_t i = 0; out && i < n; i++) {
    PyObject *t =
        Py_BuildValue("(sK)", loc[i].id, (unsigned long long)loc[i].epoch);
    if (!t) {
      Py_CLEAR(out);
      break;
    }
    PyList_SET_ITEM(out, (Py_ssize_t)i, t);
  }
  free(loc);
  return out;
}

static PyObject *client_pool_region(ClientObject *cl, PyObject *unused) {
  if (kvdspy_op_enter(cl))
    return NULL;
  void *base = NULL;
  uint64_t size = 0;
  int rc = kvds_client_pool_region(cl->c, &base, &size);
  kvdspy_op_exit(cl);
  if (rc)
    return kvdspy_raise(rc, "pool_region() needs a local shared-memory client",
                        -1);
  return Py_BuildValue("(KK)", (unsigned long long)(uintptr_t)base,
                       (unsigned long long)size);
}

static PyObject *client_stats(ClientObject *cl, PyObject *unused) {
  if (kvdspy_op_enter(cl))
    return NULL;
  struct kvds_stats s;
  int rc;
  char msg[256];
  KVDSPY_CALL_RC(cl, rc, msg, kvds_stats(cl->c, &s));
  kvdspy_op_exit(cl);
  if (rc)
    return fail(rc, msg);
  static const struct {
    const char *name;
    size_t off;
  } fields[] = {
#define F(x, doc) {#x, offsetof(struct kvds_stats, x)},
      KVDS_STATS_FIELDS(F)
#undef F
  };
  _Static_assert(sizeof fields / sizeof fields[0] ==
                     sizeof(struct kvds_stats) / sizeof(uint64_t),
                 "stats(): a field of struct kvds_stats is missing");
  PyObject *d = PyDict_New();
  for (size_t i = 0; d && i < sizeof fields / sizeof fields[0]; i++) {
    uint64_t v;
    memcpy(&v, (const uint8_t *)&s + fields[i].off, sizeof v);
    PyObject *o = PyLong_FromUnsignedLongLong(v);
    if (!o || PyDict_SetItemString(d, fields[i].name, o))
      Py_CLEAR(d);
    Py_XDECREF(o);
  }
  return d;
}

/* ---- properties ---------------------------------------------------------- */

static PyObject *client_get_is_local(ClientObject *cl, void *unused) {
  return PyBool_FromLong(cl->local);
}

static PyObject *client_get_connected(ClientObject *cl, void *unused) {
  if (cl->closing)
    Py_RETURN_FALSE;
  if (kvdspy_op_enter(cl))
    return NULL;
  int up;
  KVDSPY_CALL(cl, up = kvds_client_is_connected(cl->c));
  kvdspy_op_exit(cl);
  return PyBool_FromLong(up);
}

static PyObject *client_get_closed(ClientObject *cl, void *unused) {
  return PyBool_FromLong(cl->closing);
}

static PyObject *client_get_address(ClientObject *cl, void *unused) {
  return Py_NewRef(cl->address ? cl->address : Py_None);
}

static PyObject *client_get_timeout(ClientObject *cl, void *unused) {
  return PyLong_FromLong(cl->timeout_ms);
}

static PyGetSetDef client_getset[] = {
    {"is_local", (getter)client_get_is_local, NULL,
     "True when the client maps the worker's pool (Unix socket, zero-copy); "
     "False over TCP.",
     NULL},
    {"closed", (getter)client_get_closed, NULL, "True once close() was called.",
     NULL},
    {"connected", (getter)client_get_connected, NULL,
     "True while the connection is up. After an I/O error, protocol error or "
     "timeout the client disconnects itself (later calls raise "
     "ConnectionClosed) and the worker drops its pins: the bytes behind "
     "zero-copy views of a local client may then change. Check this after "
     "reading a view, or compare kvds.checksum(view) with Pinned.checksums.",
     NULL},
    {"address", (getter)client_get_address, NULL,
     "The address given to the constructor (after defaults).", NULL},
    {"timeout_ms", (getter)client_get_timeout, NULL,
     "The I/O timeout of every call, in milliseconds.", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

#define KW (METH_VARARGS | METH_KEYWORDS)
static PyMethodDef client_methods[] = {
    {"close", (PyCFunction)client_close, METH_NOARGS,
     "close()\n\nCloses the connection. Pins still held by Pinned objects are "
     "released and objects of unsealed WriteBuffers are aborted; those "
     "objects become unusable. Raises BufferError (and stays open) while a "
     "memoryview of a pinned value or write buffer exists. If another "
     "thread is inside a call on this client, the connection is closed when "
     "that call returns. Idempotent."},
    {"__enter__", client_enter, METH_NOARGS, "Returns the client."},
    {"__exit__", (PyCFunction)client_exit, METH_VARARGS,
     "Closes the client (see close())."},
    {"ping", (PyCFunction)client_ping, METH_NOARGS,
     "ping()\n\nOne round trip with the worker."},
    {"set_timeout", (PyCFunction)client_set_timeout, METH_O,
     "set_timeout(ms)\n\nSets the I/O timeout of later calls (ms > 0)."},
    {"shutdown", (PyCFunction)client_shutdown, METH_NOARGS,
     "shutdown()\n\nAsks the worker to exit cleanly; returns once it "
     "acknowledged. Later calls fail with ConnectionClosed."},
    {"put", (PyCFunction)(void (*)(void))client_put, KW,
     "put(key, value)\n\nStores a copy of value (any C-contiguous buffer: "
     "bytes, bytearray, memoryview, numpy array) under key (bytes-like or "
     "str, UTF-8). The value is only read during the call; the caller keeps "
     "it. Raises Exists, NoSpace, KeyLength, TooBig, InvalidArgument (empty "
     "value), TypeError (not C-contiguous)."},
    {"put_raw", (PyCFunction)(void (*)(void))client_put_raw, KW,
     "put_raw(key, ptr, length)\n\nLike put() from `length` bytes at address "
     "`ptr` (e.g. tensor.data_ptr()). The memory must stay valid and "
     "unchanged for the duration of the call; nothing checks it."},
    {"mput", (PyCFunction)(void (*)(void))client_mput, KW,
     "mput(keys, values)\n\nBatch put. Returns None when every item was "
     "stored; else raises the first failing item's error with .index set "
     "(the other items may have been stored)."},
    {"mput_raw", (PyCFunction)(void (*)(void))client_mput_raw, KW,
     "mput_raw(keys, ptrs, lengths)\n\nmput() from raw (address, length) "
     "pairs; see put_raw()."},
    {"get", (PyCFunction)(void (*)(void))client_get, KW,
     "get(key, wait_ms=0, *, hint=None, local=False) -> bytes\n\nA copy of "
     "the value (owned by the caller). With wait_ms > 0 waits that long for "
     "an absent or unsealed key. In a cluster a key this worker lacks is "
     "pulled from the worker holding it (found through the key's home, or "
     "straight from `hint`, a member id or data address); local=True reads "
     "this worker only. Every get method takes hint and local. Raises "
     "NotFound (no wait), Timeout (still absent), ChecksumError (bytes "
     "corrupted in transit), PeerError (the holder died or stalled)."},
    {"mget", (PyCFunction)(void (*)(void))client_mget, KW,
     "mget(keys, wait_ms=0, *, hint=None, local=False) -> list\n\nCopies of "
     "the values: bytes, or None "
     "for a key still absent after wait_ms. Other item errors raise with "
     ".index set."},
    {"get_into", (PyCFunction)(void (*)(void))client_get_into, KW,
     "get_into(key, buffer, wait_ms=0, *, hint=None, local=False) -> "
     "int\n\nCopies the value into the "
     "start of a writable C-contiguous buffer and returns its size. Raises "
     "TooBig (nothing written) when the buffer is too small."},
    {"get_into_raw", (PyCFunction)(void (*)(void))client_get_into_raw, KW,
     "get_into_raw(key, ptr, capacity, wait_ms=0, *, hint=None, local=False) "
     "-> int\n\nget_into() to "
     "raw memory at address ptr, which must be writable for capacity bytes "
     "during the call."},
    {"mget_views", (PyCFunction)(void (*)(void))client_mget_views, KW,
     "mget_views(keys, wait_ms=0, *, hint=None, local=False) -> "
     "Pinned\n\nZero-copy batch get: the "
     "values stay pinned (never evicted or freed) until the Pinned object is "
     "released (release(), its context manager, or garbage collection). On a "
     "local client its memoryviews point straight into the worker's pool, "
     "over TCP into a buffer owned by the client. Keys still absent after "
     "wait_ms are None in it; other item errors raise with .index set."},
    {"pin", (PyCFunction)(void (*)(void))client_pin, KW,
     "pin(keys, wait_ms=0, *, hint=None, local=False) -> Pinned\n\nLike "
     "mget_views, but no bytes move (also over TCP): the values found are "
     "pinned — never evicted or freed — until the Pinned object is released; "
     "its sizes, checksums and missing tell what was there. For holding a "
     "lookup's hits until another client reads them."},
    {"create", (PyCFunction)(void (*)(void))client_create, KW,
     "create(key, size) -> WriteBuffer\n\nStarts a two-phase write of `size` "
     "bytes: fill the WriteBuffer (view / write), then seal() it. The object "
     "is invisible to readers until sealed; it is aborted if the "
     "WriteBuffer is garbage-collected unsealed."},
    {"mcreate", (PyCFunction)(void (*)(void))client_mcreate, KW,
     "mcreate(keys, sizes, *, partial=False) -> list\n\nBatch create: a "
     "WriteBuffer per key. If any item fails, the ones created are aborted "
     "and the first error is raised with .index set; with partial=True each "
     "failed item's error (a KvdsError instance: Exists, NoSpace, TooBig, "
     "...) takes its place in the list instead, and the others stay created. "
     "A whole-batch error (I/O) raises either way."},
    {"mgather", (PyCFunction)(void (*)(void))client_mgather, KW,
     "mgather(buffers, segments, prefix=None)\n\nbuffers[i].gather(...) for "
     "every WriteBuffer of this client in one call, the GIL released once: "
     "segments holds the same number of (address, length) uint64 pairs for "
     "each buffer, in order (e.g. a numpy array of shape (n, s, 2)), and "
     "each buffer is filled with prefix followed by its own segments, its "
     "checksum computed on the way. Checks every buffer (writable, filled "
     "exactly) before copying any."},
    {"mseal", (PyCFunction)client_mseal, METH_O,
     "mseal(buffers) -> list of int\n\nSeals WriteBuffers of this client "
     "and returns their checksums. If an item fails, the first error is "
     "raised with .index set; the other items are sealed, the failed ones "
     "stay open (abort them)."},
    {"msave", (PyCFunction)(void (*)(void))client_msave, KW,
     "msave(keys, size, segments, prefix=None, *, round_bytes=0, "
     "chunk_bytes=0, gate=None) -> (statuses, error)\n\nStores one object "
     "of `size` bytes per key, filled as mgather() fills a buffer (prefix, "
     "then the key's own segments: (address, length) uint64 pairs, the same "
     "number per key, e.g. a numpy array of shape (n, s, 2)), checksummed "
     "while copying, in one call without the GIL: rounds of at most "
     "round_bytes of objects (0: all) are created at once (as mcreate "
     "partial=True: a key stored already is skipped; NoSpace items go to "
     "the next round when others of the round were created, else are "
     "skipped), filled chunk_bytes at a time (0: a round) and sealed in one "
     "call. The segments' memory must stay valid and unchanged for the "
     "call, except items cancelled through gate (a CopyGate(len(keys))): "
     "those are neither copied nor sealed once gate.cancel() returns. "
     "statuses[i] is 0 for a sealed object, else the item's error code "
     "(kvds.E_EXISTS, E_NOSPACE, ..., -errno.ECANCELED when cancelled); "
     "error is None, or the KvdsError that ended the call (a lost "
     "connection), after which the items not sealed carry its code and "
     "nothing of them is left open on the worker."},
    {"exists", (PyCFunction)client_exists, METH_O,
     "exists(keys) -> list of bool\n\nTrue for each key that is sealed."},
    {"lookup_prefix", (PyCFunction)client_lookup_prefix, METH_O,
     "lookup_prefix(keys) -> int\n\nHow many leading keys of the chain are "
     "sealed."},
    {"delete", (PyCFunction)client_delete, METH_O,
     "delete(key)\n\nDeletes a key (a pinned value stays readable until its "
     "pins are released). Raises NotFound, or KvdsError "
     "(KVDS_E_STATE) while it is being written."},
    {"mdelete", (PyCFunction)client_mdelete, METH_O,
     "mdelete(keys) -> None or list\n\nDeletes every key. None if all were "
     "deleted, else a list with None for each deleted key and a KvdsError "
     "instance (not raised) for each other one. Raises only when the batch "
     "failed as a whole."},
    {"stat", (PyCFunction)client_stat, METH_O,
     "stat(key) -> dict\n\nsize, checksum, state ('sealed' or 'writing'), "
     "pins, ctime_us, atime_us. Raises NotFound."},
    {"list", (PyCFunction)(void (*)(void))client_list, KW,
     "list(prefix=b'', limit=1000) -> list of (key, size)\n\nKeys starting "
     "with prefix (including objects being written), in byte order, at most "
     "`limit` (None or 0: all), fetched in pages of 1000."},
    {"locate", (PyCFunction)(void (*)(void))client_locate, KW,
     "locate(key) -> list\n\nThe workers that hold a sealed copy of key, "
     "as (member id, epoch) tuples in the order the key's home worker "
     "learned of them ([] when no live worker has it)."},
    {"cluster_status", (PyCFunction)client_cluster_status, METH_NOARGS,
     "cluster_status() -> str\n\nThe worker's view of the cluster as JSON "
     "text (mode, self, etcd state, members with state): "
     "json.loads(c.cluster_status()). See docs/cluster.md."},
    {"pool_region", (PyCFunction)client_pool_region, METH_NOARGS,
     "pool_region() -> (address, size): the worker's pool data as this local "
     "client maps it; every zero-copy view and write buffer lies inside it "
     "while the client is open (e.g. to register it once with "
     "cudaHostRegister). Raises KvdsError over TCP."},
    {"stats", (PyCFunction)client_stats, METH_NOARGS,
     "stats() -> dict\n\nEvery field of the worker's struct kvds_stats."},
    {NULL, NULL, 0, NULL}};

PyTypeObject KvdsClient_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kvds.Client",
    .tp_basicsize = sizeof(ClientObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc =
        "Client(address=None, timeout_ms=5000, lazy_map=False, "
        "tcp_only=False)\n\nA connection to a kvds worker. address: "
        "'host:port' (switches to shared memory when the worker is local), "
        "'tcp://host:port' (TCP only), 'unix:/path'; default $DS_WORKER_ADDR, "
        "then '127.0.0.1:31501'. timeout_ms bounds the connect and every "
        "later call. lazy_map maps pool pages on first use; tcp_only stays on "
        "TCP. Safe to share between threads (calls are serialised); the GIL "
        "is released while a call blocks, and a call in the main thread "
        "wakes for signal handlers (Ctrl-C raises KeyboardInterrupt at once; "
        "the client stays usable). Raises KvdsOSError "
        "(ECONNREFUSED...), Timeout, InvalidArgument (bad address).",
    .tp_new = client_new,
    .tp_init = (initproc)client_init,
    .tp_dealloc = (destructor)client_dealloc,
    .tp_repr = (reprfunc)client_repr,
    .tp_methods = client_methods,
    .tp_getset = client_getset,
};
