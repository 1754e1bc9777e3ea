/*
 * py_save.c — Client.msave (create, gather + checksum and seal many objects
 * of one size in one GIL-free call) and kvds.CopyGate, which lets another
 * thread stop msave's copies of some items and wait for the one running.
 *
 * msave is what a saver otherwise does in Python round by round (mcreate,
 * mgather in chunks, mseal): the same libkvds calls, without the GIL and
 * without Python between them. The client lock is held for each call to the
 * worker only, never while copying.
 */
#include "kvdspy.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---- CopyGate ----------------------------------------------------------- */

typedef struct {
  PyObject ob_base;
  PyThread_type_lock lock; /* held by msave while it copies a chunk */
  Py_ssize_t n;
  unsigned char *cancelled; /* n flags, written and read with lock held */
} CopyGateObject;

static PyObject *gate_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"n", NULL};
  Py_ssize_t n;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "n:CopyGate", kwlist, &n))
    return NULL;
  if (n < 0) {
    PyErr_SetString(PyExc_ValueError, "CopyGate: n must be >= 0");
    return NULL;
  }
  CopyGateObject *g = (CopyGateObject *)type->tp_alloc(type, 0);
  if (!g)
    return NULL;
  g->n = n;
  g->lock = PyThread_allocate_lock();
  g->cancelled = PyMem_Calloc(n ? (size_t)n : 1, 1);
  if (!g->lock || !g->cancelled) {
    Py_DECREF(g);
    return PyErr_NoMemory();
  }
  return (PyObject *)g;
}

static void gate_dealloc(CopyGateObject *g) {
  if (g->lock)
    PyThread_free_lock(g->lock);
  PyMem_Free(g->cancelled);
  Py_TYPE(g)->tp_free((PyObject *)g);
}

/* Takes the gate's lock, waiting (GIL released) for a chunk being copied. */
static void gate_lock(CopyGateObject *g) {
  if (PyThread_acquire_lock(g->lock, NOWAIT_LOCK))
    return;
  Py_BEGIN_ALLOW_THREADS PyThread_acquire_lock(g->lock, WAIT_LOCK);
  Py_END_ALLOW_THREADS
}

static PyObject *gate_cancel(CopyGateObject *g, PyObject *seq) {
  PyObject *fast = PySequence_Fast(seq, "cancel takes a sequence of indices");
  if (!fast)
    return NULL;
  Py_ssize_t m = PySequence_Fast_GET_SIZE(fast);
  Py_ssize_t *idx = PyMem_Malloc((m ? (size_t)m : 1) * sizeof *idx);
  if (!idx) {
    Py_DECREF(fast);
    return PyErr_NoMemory();
  }
  for (Py_ssize_t i = 0; i < m; i++) {
    idx[i] =
        PyNumber_AsSsize_t(PySequence_Fast_GET_ITEM(fast, i), PyExc_IndexError);
    if (idx[i] == -1 && PyErr_Occurred())
      goto bad;
    if (idx[i] < 0 || idx[i] >= g->n) {
      PyErr_Format(PyExc_IndexError, "index %zd outside CopyGate(%zd)", idx[i],
                   g->n);
      goto bad;
    }
  }
  gate_lock(g);
  for (Py_ssize_t i = 0; i < m; i++)
    g->cancelled[idx[i]] = 1;
  PyThread_release_lock(g->lock);
  PyMem_Free(idx);
  Py_DECREF(fast);
  Py_RETURN_NONE;
bad:
  PyMem_Free(idx);
  Py_DECREF(fast);
  return NULL;
}

static PyObject *gate_is_cancelled(CopyGateObject *g, PyObject *io) {
  Py_ssize_t i = PyNumber_AsSsize_t(io, PyExc_IndexError);
  if (i == -1 && PyErr_Occurred())
    return NULL;
  if (i < 0 || i >= g->n) {
    PyErr_Format(PyExc_IndexError, "index %zd outside CopyGate(%zd)", i, g->n);
    return NULL;
  }
  gate_lock(g);
  int c = g->cancelled[i];
  PyThread_release_lock(g->lock);
  return PyBool_FromLong(c);
}

static Py_ssize_t gate_len(CopyGateObject *g) {
  return g->n;
}

static PyMethodDef gate_methods[] = {
    {"cancel", (PyCFunction)gate_cancel, METH_O,
     "cancel(indices)\n\nMarks these items cancelled: once this returns, "
     "no Client.msave call given this gate copies them (a chunk being "
     "copied is waited for, without the GIL) or seals them."},
    {"is_cancelled", (PyCFunction)gate_is_cancelled, METH_O,
     "is_cancelled(i) -> bool"},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods gate_as_sequence = {
    .sq_length = (lenfunc)gate_len,
};

PyTypeObject KvdsCopyGate_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kvds.CopyGate",
    .tp_basicsize = sizeof(CopyGateObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "CopyGate(n)\n\nCancellation flags for the n items of a "
              "Client.msave call, with a lock msave holds while it copies "
              "a chunk: cancel() from another thread stops the copies of "
              "those items and returns once none of them is being read.",
    .tp_new = gate_new,
    .tp_dealloc = (destructor)gate_dealloc,
    .tp_methods = gate_methods,
    .tp_as_sequence = &gate_as_sequence,
};

/* ---- msave -------------------------------------------------------------- */

/* Everything msave works on, built under the GIL, used without it. */
struct save {
  ClientObject *cl;
  size_t n, size, per; /* items, their size, segments per item */
  const uint64_t *segs;
  const void *prefix;
  size_t plen;
  size_t per_round, per_copy;
  CopyGateObject *gate; /* may be NULL */
  const struct kvds_iov *keys;
  int *status;   /* per item: 0 sealed, else why not (out) */
  size_t *queue; /* item indices still to create; NoSpace ones go back */
  struct kvds_iov *rkeys;
  size_t *sizes, *idx, *made;
  struct kvds_wbuf *bufs, *abufs;
  uint64_t *sums;
  int *res;
  struct kvds_iov *iov; /* one item's prefix + segments */
  int rc;               /* whole-call error */
  char msg[256];
};

static int cancelled(const struct save *s, size_t i) {
  return s->gate && s->gate->cancelled[i];
}

enum save_op { SAVE_CREATE, SAVE_SEAL, SAVE_ABORT };

/* One libkvds call on m entries, client lock held: create rkeys into bufs,
 * seal bufs with sums, or abort abufs (its error ignored). A failed create
 * or seal leaves its message in s->msg. */
static int save_call(struct save *s, PyThreadState *ts, enum save_op op,
                     size_t m) {
  int rc;
  kvdspy_lock(s->cl);
  kvdspy_interruptible(s->cl, ts);
  if (!s->cl->c)
    rc = -ENOTCONN;
  else if (op == SAVE_CREATE)
    rc = kvds_mcreate(s->cl->c, m, s->rkeys, s->sizes, s->bufs, s->res);
  else if (op == SAVE_SEAL)
    rc = kvds_mseal_sums(s->cl->c, m, s->bufs, s->sums, s->res);
  else
    rc = kvds_mabort(s->cl->c, m, s->abufs);
  if (rc && op != SAVE_ABORT && s->cl->c)
    kvdspy_errmsg(s->cl, s->msg, sizeof s->msg);
  kvdspy_unlock(s->cl);
  return rc;
}

/* The GIL-free body: rounds of at most per_round items created at once,
 * filled per_copy items per gate hold, sealed in one call. */
static void save_run(struct save *s, PyThreadState *ts) {
  size_t head = 0, tail = s->n;
  for (size_t i = 0; i < s->n; i++)
    s->queue[i] = i;
  while (head < tail) {
    /* The round: items not cancelled yet. */
    size_t m = 0;
    if (s->gate)
      PyThread_acquire_lock(s->gate->lock, WAIT_LOCK);
    while (head < tail && m < s->per_round) {
      size_t i = s->queue[head++];
      if (cancelled(s, i)) {
        s->status[i] = -ECANCELED;
        continue;
      }
      s->idx[m] = i;
      s->rkeys[m] = s->keys[i];
      s->sizes[m] = s->size;
      m++;
    }
    if (s->gate)
      PyThread_release_lock(s->gate->lock);
    if (!m)
      continue;
    int rc = save_call(s, ts, SAVE_CREATE, m);
    if (rc) { /* kvds_mcreate gave back what it created */
      s->rc = rc;
      for (size_t j = 0; j < m; j++)
        s->status[s->idx[j]] = rc;
      break;
    }
    /* Created ones to fill; NoSpace ones back in the queue when others
     * were created (the connection's cap, not a full pool), else given up;
     * any other error (stored already, too big) is the item's status. */
    size_t k = 0, nospace = 0;
    for (size_t j = 0; j < m; j++) {
      size_t i = s->idx[j];
      if (!s->res[j]) {
        s->made[k] = i;
        s->bufs[k] = s->bufs[j];
        k++;
      } else if (s->res[j] == KVDS_E_NOSPACE) {
        s->idx[nospace++] = i;
        s->status[i] = KVDS_E_NOSPACE;
      } else {
        s->status[i] = s->res[j];
      }
    }
    if (k && nospace) {
      head -= nospace;
      memcpy(&s->queue[head], s->idx, nospace * sizeof *s->idx);
    }
    if (!k)
      continue;
    for (size_t j = 0; j < k; j += s->per_copy) {
      size_t end = j + s->per_copy < k ? j + s->per_copy : k;
      if (s->gate)
        PyThread_acquire_lock(s->gate->lock, WAIT_LOCK);
      for (size_t q = j; q < end; q++) {
        size_t i = s->made[q], c = 0;
        if (cancelled(s, i))
          continue;
        if (s->plen) {
          s->iov[c].base = (void *)s->prefix;
          s->iov[c++].len = s->plen;
        }
        for (size_t g = 0; g < s->per; g++, c++) {
          s->iov[c].base = (void *)(uintptr_t)s->segs[2 * (i * s->per + g)];
          s->iov[c].len = (size_t)s->segs[2 * (i * s->per + g) + 1];
        }
        s->sums[q] = kvds_gather(s->bufs[q].data, s->iov, c);
      }
      if (s->gate)
        PyThread_release_lock(s->gate->lock);
    }
    /* Cancelled meanwhile: aborted, not sealed. */
    size_t keep = 0, drop = 0;
    if (s->gate)
      PyThread_acquire_lock(s->gate->lock, WAIT_LOCK);
    for (size_t q = 0; q < k; q++) {
      if (cancelled(s, s->made[q])) {
        s->status[s->made[q]] = -ECANCELED;
        s->abufs[drop++] = s->bufs[q];
        continue;
      }
      s->made[keep] = s->made[q];
      s->bufs[keep] = s->bufs[q];
      s->sums[keep] = s->sums[q];
      keep++;
    }
    if (s->gate)
      PyThread_release_lock(s->gate->lock);
    if (drop)
      save_call(s, ts, SAVE_ABORT, drop);
    if (!keep)
      continue;
    memset(s->res, 0, keep * sizeof *s->res);
    rc = save_call(s, ts, SAVE_SEAL, keep);
    /* kvds_mseal_sums zeroes the entries it sealed; one it did not seal
     * has the worker's answer for it, or none (0) when the call failed. */
    size_t u = 0;
    int whole = 0;
    for (size_t q = 0; q < keep; q++) {
      size_t i = s->made[q];
      if (!s->bufs[q].handle) {
        s->status[i] = 0;
        continue;
      }
      s->status[i] = s->res[q] ? s->res[q] : rc;
      whole |= !s->res[q];
      s->abufs[u++] = s->bufs[q];
    }
    if (u) /* over TCP this also frees their staging */
      save_call(s, ts, SAVE_ABORT, u);
    if (whole && rc) {
      s->rc = rc;
      break;
    }
  }
  /* Items never reached after a whole-call error. */
  if (s->rc)
    while (head < tail)
      s->status[s->queue[head++]] = s->rc;
}

PyObject *kvdspy_msave(ClientObject *cl, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"keys",        "size",        "segments", "prefix",
                           "round_bytes", "chunk_bytes", "gate",     NULL};
  PyObject *ko, *so, *go, *po = NULL, *gateo = NULL;
  Py_ssize_t round_bytes = 0, chunk_bytes = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|O$nnO:msave", kwlist, &ko,
                                   &so, &go, &po, &round_bytes, &chunk_bytes,
                                   &gateo))
    return NULL;
  struct save s = {.cl = cl};
  struct kvdspy_batch keys = {0};
  Py_buffer g = {0}, p = {0};
  size_t nseg, total;
  PyObject *ret = NULL;
  int entered = 0;
  if (round_bytes < 0 || chunk_bytes < 0) {
    PyErr_SetString(PyExc_ValueError,
                    "round_bytes and chunk_bytes must be >= 0");
    return NULL;
  }
  if (gateo == Py_None)
    gateo = NULL;
  if (gateo && !PyObject_TypeCheck(gateo, &KvdsCopyGate_Type)) {
    PyErr_SetString(PyExc_TypeError, "gate must be a kvds.CopyGate or None");
    return NULL;
  }
  s.gate = (CopyGateObject *)gateo;
  if (kvdspy_size(so, &s.size, "size"))
    return NULL;
  if (kvdspy_batch_keys(&keys, ko))
    return NULL;
  s.n = (size_t)keys.n;
  s.keys = keys.iov;
  if (po && po != Py_None && kvdspy_buf_get(po, &p, 0, "prefix"))
    goto out;
  s.prefix = p.buf;
  s.plen = (size_t)p.len;
  if (kvdspy_segments_get(go, &g, &s.segs, &nseg, &total))
    goto out;
  if (s.n == 0 ? nseg != 0 : nseg % s.n) {
    PyErr_Format(PyExc_ValueError,
                 "%zu segments do not split evenly over %zu keys", nseg, s.n);
    goto out;
  }
  if (s.gate && (size_t)s.gate->n != s.n) {
    PyErr_Format(PyExc_ValueError, "CopyGate(%zd) for %zu keys", s.gate->n,
                 s.n);
    goto out;
  }
  s.per = s.n ? nseg / s.n : 0;
  for (size_t i = 0; i < s.n; i++) {
    size_t len = s.plen;
    for (size_t j = 0; j < s.per; j++)
      len += (size_t)s.segs[2 * (i * s.per + j) + 1];
    if (len != s.size || s.size == 0) {
      char msg[160];
      snprintf(msg, sizeof msg,
               "each object is filled whole: %zu + %zu bytes for %zu", s.plen,
               len - s.plen, s.size);
      kvdspy_raise(KVDS_E_RANGE, msg, (Py_ssize_t)i);
      goto out;
    }
  }
  s.per_round = round_bytes ? (size_t)round_bytes / s.size : s.n;
  s.per_round = s.per_round ? s.per_round : 1;
  s.per_copy = chunk_bytes ? (size_t)chunk_bytes / s.size : s.n;
  s.per_copy = s.per_copy ? s.per_copy : 1;
  size_t r = s.per_round < s.n ? s.per_round : s.n;
  r = r ? r : 1;
  s.status = PyMem_Calloc(s.n ? s.n : 1, sizeof *s.status);
  s.queue = PyMem_Malloc((s.n ? s.n : 1) * sizeof *s.queue);
  s.rkeys = PyMem_Malloc(r * sizeof *s.rkeys);
  s.sizes = PyMem_Malloc(r * sizeof *s.sizes);
  s.idx = PyMem_Malloc(r * sizeof *s.idx);
  s.made = PyMem_Malloc(r * sizeof *s.made);
  s.bufs = PyMem_Calloc(r, sizeof *s.bufs);
  s.abufs = PyMem_Calloc(r, sizeof *s.abufs);
  s.sums = PyMem_Calloc(r, sizeof *s.sums);
  s.res = PyMem_Calloc(r, sizeof *s.res);
  s.iov = PyMem_Malloc((s.per + 1) * sizeof *s.iov);
  if (!s.status || !s.queue || !s.rkeys || !s.sizes || !s.idx || !s.made ||
      !s.bufs || !s.abufs || !s.sums || !s.res || !s.iov) {
    PyErr_NoMemory();
    goto out;
  }
  if (kvdspy_op_enter(cl))
    goto out;
  entered = 1;
  if (s.n) {
    PyThreadState *ts = PyEval_SaveThread();
    save_run(&s, ts);
    PyEval_RestoreThread(ts);
  }
  if (PyErr_Occurred()) /* a signal handler raised during a call */
    goto out;
  PyObject *list = PyList_New((Py_ssize_t)s.n);
  if (!list)
    goto out;
  for (size_t i = 0; i < s.n; i++) {
    PyObject *v = PyLong_FromLong(s.status[i]);
    if (!v) {
      Py_DECREF(list);
      goto out;
    }
    PyList_SET_ITEM(list, (Py_ssize_t)i, v);
  }
  PyObject *err = s.rc ? kvdspy_error_new(s.rc, s.msg, -1) : Py_NewRef(Py_None);
  if (!err) {
    Py_DECREF(list);
    goto out;
  }
  ret = Py_BuildValue("(NN)", list, err);
out:
  if (entered)
    kvdspy_op_exit(cl);
  PyMem_Free(s.status);
  PyMem_Free(s.queue);
  PyMem_Free(s.rkeys);
  PyMem_Free(s.sizes);
  PyMem_Free(s.idx);
  PyMem_Free(s.made);
  PyMem_Free(s.bufs);
  PyMem_Free(s.abufs);
  PyMem_Free(s.sums);
  PyMem_Free(s.res);
  PyMem_Free(s.iov);
  PyBuffer_Release(&g);
  PyBuffer_Release(&p);
  kvdspy_batch_fini(&keys);
  return ret;
}
