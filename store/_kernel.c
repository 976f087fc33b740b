/*
 * The RAM read tier's hash kernel: an open-addressing (linear probing) index from 64-bit ids to row numbers.
 *
 * Collisionless: the table stores every full 64-bit id and compares it exactly; a hash only picks where probing
 * starts. Empty places have row < 0. The caller keeps the load factor at or under 1/2, so probes stay short and a
 * probe always reaches an empty place.
 *
 * Why C: a vectorised numpy probe costs ~130-200 ns per key on the target machine (several passes over temporary
 * arrays); this loop, with prefetching a block ahead, costs a few tens of ns. numpy stays the reference
 * implementation (store/ram_tier.py) and the tests check the two agree.
 *
 * Buffers come through the buffer protocol (numpy arrays, contiguous), so no numpy headers are needed to build.
 * probe releases the GIL: readers in several threads run in parallel, and the tier's version counter (a seqlock)
 * tells a reader whether a writer changed anything under it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static inline uint64_t mix64(uint64_t x) {
    /* splitmix64's finaliser: sequential ids spread over the whole table. */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

#define BLOCK 16

static inline int64_t find_row(const uint64_t *tk, const int64_t *tr, uint64_t mask, uint64_t id, uint64_t at) {
    /* Linear probing from `at`: the id's row, or -1 once an empty place ends the run. */
    for (;;) {
        int64_t r = tr[at];
        if (r < 0) return -1;
        if (tk[at] == id) return r;
        at = (at + 1) & mask;
    }
}

static int check(Py_buffer *b, Py_ssize_t itemsize, const char *what) {
    if (b->len % itemsize != 0) {
        PyErr_Format(PyExc_ValueError, "%s: buffer length is not a multiple of %zd", what, itemsize);
        return -1;
    }
    return 0;
}

static PyObject *probe(PyObject *self, PyObject *args) {
    Py_buffer keys, rows, ids, out;
    if (!PyArg_ParseTuple(args, "y*y*y*w*", &keys, &rows, &ids, &out)) return NULL;
    PyObject *result = NULL;
    if (check(&keys, 8, "keys") || check(&rows, 8, "rows") || check(&ids, 8, "ids") || check(&out, 8, "out"))
        goto done;
    Py_ssize_t cap = keys.len / 8, n = ids.len / 8;
    if (cap == 0 || (cap & (cap - 1)) != 0 || rows.len != keys.len || out.len != ids.len) {
        PyErr_SetString(PyExc_ValueError, "probe: capacity must be a power of two, keys/rows and ids/out alike");
        goto done;
    }
    const uint64_t *tk = keys.buf, *q = ids.buf;
    const int64_t *tr = rows.buf;
    int64_t *o = out.buf;
    uint64_t mask = (uint64_t)cap - 1;
    Py_ssize_t misses = 0;
    Py_BEGIN_ALLOW_THREADS
    uint64_t start[BLOCK];
    for (Py_ssize_t base = 0; base < n; base += BLOCK) {
        Py_ssize_t m = n - base < BLOCK ? n - base : BLOCK;
        for (Py_ssize_t j = 0; j < m; j++) {
            start[j] = mix64(q[base + j]) & mask;
            __builtin_prefetch(&tr[start[j]]);
            __builtin_prefetch(&tk[start[j]]);
        }
        for (Py_ssize_t j = 0; j < m; j++) {
            int64_t found = find_row(tk, tr, mask, q[base + j], start[j]);
            o[base + j] = found;
            misses += found < 0;
        }
    }
    Py_END_ALLOW_THREADS
    result = PyLong_FromSsize_t(misses);
done:
    PyBuffer_Release(&keys); PyBuffer_Release(&rows); PyBuffer_Release(&ids); PyBuffer_Release(&out);
    return result;
}

static PyObject *insert(PyObject *self, PyObject *args) {
    /* Writer side (holds the GIL): set id -> row, overwriting the row of an id already present. */
    Py_buffer keys, rows, ids, new_rows;
    if (!PyArg_ParseTuple(args, "w*w*y*y*", &keys, &rows, &ids, &new_rows)) return NULL;
    PyObject *result = NULL;
    if (check(&keys, 8, "keys") || check(&rows, 8, "rows") || check(&ids, 8, "ids") || check(&new_rows, 8, "rows"))
        goto done;
    Py_ssize_t cap = keys.len / 8, n = ids.len / 8;
    if (cap == 0 || (cap & (cap - 1)) != 0 || rows.len != keys.len || new_rows.len != ids.len) {
        PyErr_SetString(PyExc_ValueError, "insert: capacity must be a power of two, keys/rows and ids/rows alike");
        goto done;
    }
    uint64_t *tk = keys.buf;
    int64_t *tr = rows.buf;
    const uint64_t *q = ids.buf;
    const int64_t *nr = new_rows.buf;
    uint64_t mask = (uint64_t)cap - 1;
    Py_ssize_t added = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t id = q[i], at = mix64(id) & mask;
        for (;;) {
            if (tr[at] < 0) { tk[at] = id; tr[at] = nr[i]; added++; break; }
            if (tk[at] == id) { tr[at] = nr[i]; break; }
            at = (at + 1) & mask;
        }
    }
    result = PyLong_FromSsize_t(added);
done:
    PyBuffer_Release(&keys); PyBuffer_Release(&rows); PyBuffer_Release(&ids); PyBuffer_Release(&new_rows);
    return result;
}

static PyObject *gather(PyObject *self, PyObject *args) {
    /* probe, then copy each found row's vector and event time into the outputs, in one pass over the ids.
     * Missing ids get a zero vector, time INT64_MIN and row -1. A row number past the vectors given (a writer
     * grew the index under this reader; the caller's version check discards such a read) is treated as missing. */
    Py_buffer keys, rows, ids, vectors, updated, out_vec, out_upd, out_rows;
    Py_ssize_t row_bytes;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*nw*w*w*", &keys, &rows, &ids, &vectors, &updated, &row_bytes, &out_vec,
                          &out_upd, &out_rows))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t cap = keys.len / 8, n = ids.len / 8;
    if (row_bytes <= 0 || cap == 0 || (cap & (cap - 1)) != 0 || rows.len != keys.len || ids.len % 8 != 0 ||
        vectors.len % row_bytes != 0 || out_vec.len != n * row_bytes || out_upd.len != n * 8 || out_rows.len != n * 8 ||
        updated.len % 8 != 0) {
        PyErr_SetString(PyExc_ValueError, "gather: buffer sizes do not fit (capacity, ids, row_bytes, outputs)");
        goto done;
    }
    const uint64_t *tk = keys.buf, *q = ids.buf;
    const int64_t *tr = rows.buf, *upd = updated.buf;
    const char *vec = vectors.buf;
    char *ov = out_vec.buf;
    int64_t *ou = out_upd.buf, *orow = out_rows.buf;
    Py_ssize_t n_rows = vectors.len / row_bytes;
    if (updated.len / 8 < n_rows) n_rows = updated.len / 8;
    uint64_t mask = (uint64_t)cap - 1;
    Py_ssize_t misses = 0;
    Py_BEGIN_ALLOW_THREADS
    uint64_t start[BLOCK];
    int64_t found[BLOCK];
    for (Py_ssize_t base = 0; base < n; base += BLOCK) {
        Py_ssize_t m = n - base < BLOCK ? n - base : BLOCK;
        for (Py_ssize_t j = 0; j < m; j++) {
            start[j] = mix64(q[base + j]) & mask;
            __builtin_prefetch(&tr[start[j]]);
            __builtin_prefetch(&tk[start[j]]);
        }
        for (Py_ssize_t j = 0; j < m; j++) {
            int64_t r = find_row(tk, tr, mask, q[base + j], start[j]);
            if (r >= n_rows) r = -1;
            found[j] = r;
            if (r >= 0) {
                __builtin_prefetch(vec + r * row_bytes);
                __builtin_prefetch(&upd[r]);
            }
        }
        for (Py_ssize_t j = 0; j < m; j++) {
            Py_ssize_t i = base + j;
            int64_t r = found[j];
            orow[i] = r;
            if (r >= 0) {
                memcpy(ov + i * row_bytes, vec + r * row_bytes, (size_t)row_bytes);
                ou[i] = upd[r];
            } else {
                memset(ov + i * row_bytes, 0, (size_t)row_bytes);
                ou[i] = INT64_MIN;
                misses++;
            }
        }
    }
    Py_END_ALLOW_THREADS
    result = PyLong_FromSsize_t(misses);
done:
    PyBuffer_Release(&keys); PyBuffer_Release(&rows); PyBuffer_Release(&ids); PyBuffer_Release(&vectors);
    PyBuffer_Release(&updated); PyBuffer_Release(&out_vec); PyBuffer_Release(&out_upd); PyBuffer_Release(&out_rows);
    return result;
}

static PyMethodDef methods[] = {
    {"probe", probe, METH_VARARGS, "probe(keys, rows, ids, out) -> misses: out[i] = row of ids[i], or -1."},
    {"gather", gather, METH_VARARGS,
     "gather(keys, rows, ids, vectors, updated, row_bytes, out_vectors, out_updated, out_rows) -> misses."},
    {"insert", insert, METH_VARARGS, "insert(keys, rows, ids, new_rows) -> added: set ids[i] -> new_rows[i]."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "liverank.store._kernel", NULL, -1, methods};

PyMODINIT_FUNC PyInit__kernel(void) { return PyModule_Create(&module); }
