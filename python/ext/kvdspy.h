/*
 * kvdspy.h — internals shared by the files of the kvds._kvds extension.
 *
 * The extension uses only the public libkvds API (kvds/kvds.h).
 *
 * Locking rules (they make deadlocks impossible):
 *  - Every libkvds call on a client runs with the GIL released and the
 *    client's `lock` held. The lock is only ever waited for with the GIL
 *    released, and no Python code runs while it is held.
 *  - `qlock` guards the client's pending list; it is held for a few pointer
 *    moves only and may be taken with or without the GIL.
 *  - Everything else (children list, counters, flags) is guarded by the GIL.
 *
 * Signals: a call made from the main thread of the main interpreter lets
 * libkvds interrupt its waits (kvds_client_set_interrupt): the hook takes
 * the GIL back on the calling thread, runs PyErr_CheckSignals, and when a
 * handler raised (KeyboardInterrupt) the call returns KVDS_E_INTR with that
 * exception set, which the method then raises as it is. The client lock is
 * still held meanwhile, so a handler must not use the same client: such a
 * call raises RuntimeError instead of deadlocking (hook_thread).
 *
 * Lifetime rules:
 *  - Pinned and WriteBuffer objects ("children") hold a strong reference to
 *    their Client and own a `struct kvdspy_res`: the pins to release or the
 *    object to abort. Releasing moves the res onto the client's pending list,
 *    which is drained (kvds_release / kvds_mabort) by whoever holds the lock
 *    next, so a finalizer never waits for another thread's call.
 *  - Memory that a child exports through the buffer protocol is counted in
 *    child->exports and client->exports; while it is non-zero the memory
 *    cannot be released (BufferError), so a memoryview never outlives it.
 *  - Client.close() with calls in flight in other threads is completed by the
 *    last of them (inflight counts them), after which every child is dead.
 *  - In a forked child the connection and the locks belong to the parent:
 *    calls raise RuntimeError, and finalizers and close() drop what they
 *    own without sending anything or taking a lock.
 */
#ifndef KVDSPY_H
#define KVDSPY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pythread.h>

#include <sys/types.h>

#include "kvds/kvds.h"

/* Copies shorter than this keep the GIL: releasing it costs more. */
#define KVDSPY_NOGIL_COPY (64u << 10)

/* What a child owns on the worker: pins to release or an object to abort. */
struct kvdspy_res {
  struct kvdspy_res *next; /* on the client's pending list */
  size_t nvals;
  struct kvds_value *vals; /* pins (entries with handle 0 are skipped) */
  int has_wbuf;
  struct kvds_wbuf wbuf; /* object still being written */
};

struct kvdspy_child;

typedef struct {
  PyObject ob_base;
  kvds_client *c;           /* NULL once closed */
  PyThread_type_lock lock;  /* serialises libkvds calls on c */
  PyThread_type_lock qlock; /* guards pending */
  struct kvdspy_res *pending;
  int closing;                   /* close() was called */
  int inflight;                  /* calls between op_enter and op_exit */
  Py_ssize_t exports;            /* buffers exported by all children */
  struct kvdspy_child *children; /* children that still own a res */
  PyObject *address;
  int local; /* kvds_client_is_local(), fixed at connect */
  pid_t pid; /* the process that connected */
  int timeout_ms;
  unsigned long main_thread; /* ident of the main thread; 0 = no hook */
  PyThreadState *call_ts;    /* the interruptible call's thread (lock held) */
  unsigned long hook_thread; /* running signal handlers in a call (GIL) */
} ClientObject;

/* Common head of Pinned and WriteBuffer. */
struct kvdspy_child {
  PyObject ob_base;
  ClientObject *client; /* strong reference */
  struct kvdspy_child *prev, *next;
  struct kvdspy_res *res; /* NULL once released, sealed, aborted or closed */
  Py_ssize_t exports;     /* exported buffers not yet released */
};

extern PyTypeObject KvdsClient_Type;
extern PyTypeObject KvdsPinned_Type;
extern PyTypeObject KvdsPinnedView_Type;
extern PyTypeObject KvdsWriteBuffer_Type;
extern PyTypeObject KvdsCopyGate_Type;

/* ---- errors (py_errors.c) ---- */
int kvdspy_errors_init(PyObject *module);
/* A new exception instance for a libkvds code (KvdsError subclass or
 * KvdsOSError for -errno). detail may be NULL or ""; index < 0 = none. */
PyObject *kvdspy_error_new(int code, const char *detail, Py_ssize_t index);
/* Raises it; always returns NULL. */
PyObject *kvdspy_raise(int code, const char *detail, Py_ssize_t index);
/* ValueError for a closed client; returns NULL. */
PyObject *kvdspy_raise_closed(void);

/* ---- argument conversion (py_args.c) ---- */
/* A key (bytes-like or str, encoded as UTF-8) as a held buffer. */
int kvdspy_key_get(PyObject *o, Py_buffer *view);
/* A C-contiguous buffer (TypeError otherwise); writable if asked. */
int kvdspy_buf_get(PyObject *o, Py_buffer *view, int writable,
                   const char *what);
/* Raw memory segments: a C-contiguous buffer of native uint64 (address,
 * length) pairs, e.g. a numpy uint64 array of shape (n, 2). Sets *segs (into
 * view's memory), *n and the sum of the lengths *total (ValueError on a
 * ragged buffer or an overflowing total). Release view when done. */
int kvdspy_segments_get(PyObject *o, Py_buffer *view, const uint64_t **segs,
                        size_t *n, size_t *total);

/* Keys, values or raw ranges of a batch, held for a GIL-free call. */
struct kvdspy_batch {
  Py_ssize_t n;
  struct kvds_iov *iov; /* n entries */
  Py_buffer *views;     /* n entries; views[i].obj == NULL if unused */
};
/* seq: an iterable of keys (a lone str/bytes is refused). */
int kvdspy_batch_keys(struct kvdspy_batch *b, PyObject *seq);
/* seq: an iterable of C-contiguous buffers. */
int kvdspy_batch_values(struct kvdspy_batch *b, PyObject *seq);
/* ptrs, lengths: iterables of ints of the same length. */
int kvdspy_batch_raw(struct kvdspy_batch *b, PyObject *ptrs, PyObject *lens);
void kvdspy_batch_fini(struct kvdspy_batch *b);
/* An int as a size_t / pointer. */
int kvdspy_size(PyObject *o, size_t *out, const char *what);
int kvdspy_ptr(PyObject *o, void **out);

/* ---- client internals (py_client.c) ---- */
/* Under the GIL: refuses a closed client, else counts a call in flight. */
int kvdspy_op_enter(ClientObject *cl);
/* Under the GIL: ends a call; finishes a pending close when it is the last. */
void kvdspy_op_exit(ClientObject *cl);
/* Without the GIL: takes / gives back the client lock (draining pending). */
void kvdspy_lock(ClientObject *cl);
void kvdspy_unlock(ClientObject *cl);
/* Without the GIL, lock held: lets the libkvds calls that follow (until
 * kvdspy_unlock) be interrupted by Python's signal handlers. ts: this
 * thread's state, from PyEval_SaveThread. */
void kvdspy_interruptible(ClientObject *cl, PyThreadState *ts);
/* Under the GIL: links a child that owns res. */
void kvdspy_child_attach(ClientObject *cl, struct kvdspy_child *ch,
                         struct kvdspy_res *res);
/* Under the GIL: takes the child's res (may be NULL) and unlinks it. */
struct kvdspy_res *kvdspy_child_detach(struct kvdspy_child *ch);
/* Under the GIL: hands a res to the client to release/abort, now if the lock
 * is free, else by the thread holding it. Never waits. */
void kvdspy_dispose(ClientObject *cl, struct kvdspy_res *res);
void kvdspy_res_free(struct kvdspy_res *res);
/* Copies the client's last error message into buf (lock held). */
void kvdspy_errmsg(ClientObject *cl, char *buf, size_t cap);

/* ---- children ---- */
/* Takes vals (malloc'd). nodata: pinned by Client.pin(), no bytes to view. */
PyObject *kvdspy_pinned_new(ClientObject *cl, size_t n, struct kvds_value *vals,
                            int *results, int nodata);
PyObject *kvdspy_wbuf_new(ClientObject *cl, const void *key, size_t klen,
                          const struct kvds_wbuf *wb);
/* Client.mseal: seals WriteBuffers of `cl`; returns a list of checksums. */
PyObject *kvdspy_wbuf_mseal(ClientObject *cl, PyObject *seq);
/* Client.mgather: WriteBuffer.gather over many buffers of `cl` at once. */
PyObject *kvdspy_wbuf_mgather(ClientObject *cl, PyObject *args, PyObject *kw);
/* Client.msave: create, gather + checksum and seal many objects (py_save.c). */
PyObject *kvdspy_msave(ClientObject *cl, PyObject *args, PyObject *kw);

#endif
