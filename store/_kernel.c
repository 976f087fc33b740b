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

/* --- request parsing and input assembly (serving's per-request path) -------------------------------------------
 * These take the Python lists orjson made and write numpy buffers in one C pass each, instead of numpy inferring
 * a dtype element by element and Python scanning for booleans. They hold the GIL (they read Python objects). */

static Py_ssize_t store_int_ids(PyObject *list, uint64_t *out, Py_ssize_t n) {
    /* out[i] = list[i] for exact ints in 0..2**64-1; -1 if all are, else the index of the first that is not
     * (bool, float, str, negative, too large...). A Python error is never left set. */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyList_GET_ITEM(list, i);
        if (!PyLong_CheckExact(v)) return i; /* bool is a subclass of int: excluded here */
        /* PyLong_AsLongLongAndOverflow reads the digits directly; PyLong_AsUnsignedLongLong goes through
         * _PyLong_AsByteArray, about 4x slower (perf: 2.5 % of a worker's CPU under load). Ids at or above 2**63
         * (overflow 1) take that slower call, which also refuses what does not fit 64 bits. */
        int overflow;
        long long s = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow == 0 && s >= 0) {
            out[i] = (uint64_t)s;
            continue;
        }
        if (overflow < 0 || (overflow == 0 && s < 0)) {
            PyErr_Clear(); /* -1 with no error set for -1 itself; nothing to clear otherwise */
            return i;
        }
        unsigned long long x = PyLong_AsUnsignedLongLong(v);
        if (x == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            return i;
        }
        out[i] = (uint64_t)x;
    }
    return -1;
}

static PyObject *int_ids(PyObject *self, PyObject *args) {
    PyObject *list;
    Py_buffer out;
    if (!PyArg_ParseTuple(args, "O!w*", &PyList_Type, &list, &out)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = PyList_GET_SIZE(list);
    if (out.len != n * 8) {
        PyErr_SetString(PyExc_ValueError, "int_ids: out must hold one uint64 per list element");
        goto done;
    }
    result = PyLong_FromSsize_t(store_int_ids(list, out.buf, n));
done:
    PyBuffer_Release(&out);
    return result;
}

static PyObject *list_lengths(PyObject *self, PyObject *args) {
    /* out[i] = len(rows[i]); returns the total, or -1 - i if rows[i] is not a list. */
    PyObject *rows;
    Py_buffer out;
    if (!PyArg_ParseTuple(args, "O!w*", &PyList_Type, &rows, &out)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = PyList_GET_SIZE(rows);
    if (out.len != n * 8) {
        PyErr_SetString(PyExc_ValueError, "list_lengths: out must hold one int64 per row");
        goto done;
    }
    int64_t *o = out.buf;
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        if (!PyList_Check(row)) {
            total = -1 - i;
            break;
        }
        o[i] = PyList_GET_SIZE(row);
        total += o[i];
    }
    result = PyLong_FromSsize_t(total);
done:
    PyBuffer_Release(&out);
    return result;
}

static PyObject *int_id_lists(PyObject *self, PyObject *args) {
    /* All rows' ids, flattened, into out (sized by list_lengths); -1, or the flat index of the first bad id. */
    PyObject *rows;
    Py_buffer out;
    if (!PyArg_ParseTuple(args, "O!w*", &PyList_Type, &rows, &out)) return NULL;
    PyObject *result = NULL;
    uint64_t *o = out.buf;
    Py_ssize_t n = PyList_GET_SIZE(rows), at = 0, cap = out.len / 8, bad = -1;
    for (Py_ssize_t i = 0; i < n && bad < 0; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        if (!PyList_Check(row) || at + PyList_GET_SIZE(row) > cap) {
            PyErr_SetString(PyExc_ValueError, "int_id_lists: rows changed since list_lengths, or out too small");
            goto done;
        }
        Py_ssize_t m = PyList_GET_SIZE(row), j = store_int_ids(row, o + at, m);
        if (j >= 0) bad = at + j;
        at += m;
    }
    if (bad < 0 && at != cap) {
        PyErr_SetString(PyExc_ValueError, "int_id_lists: out is larger than the rows' ids");
        goto done;
    }
    result = PyLong_FromSsize_t(bad);
done:
    PyBuffer_Release(&out);
    return result;
}

static float pairwise_sum(const float *a, Py_ssize_t n, Py_ssize_t stride) {
    /* numpy's pairwise summation (loops_utils.h), step for step, so that pooled rows are bit-identical to
     * add.reduceat's: under 8 terms in order from -0.0, up to 128 in 8 interleaved partial sums, above that split
     * in halves (multiples of 8). */
    if (n < 8) {
        float res = -0.0f;
        for (Py_ssize_t i = 0; i < n; i++) res += a[i * stride];
        return res;
    }
    if (n <= 128) {
        float r[8];
        for (int j = 0; j < 8; j++) r[j] = a[j * stride];
        Py_ssize_t i;
        for (i = 8; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; j++) r[j] += a[(i + j) * stride];
        float res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res += a[i * stride];
        return res;
    }
    Py_ssize_t n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_sum(a, n2, stride) + pairwise_sum(a + n2 * stride, n - n2, stride);
}

static void pool_run(const float *src, Py_ssize_t len, Py_ssize_t dim, float *o, int mean) {
    /* One run of `len` float32 rows (dim wide) into o: per column, the first row plus the pairwise sum of the rest
     * (numpy's add.reduceat), divided by the count if `mean`; zeros for an empty run. Short runs (the usual id
     * lists: under 9 rows) add row by row across all columns at once, in the very order pairwise_sum adds each
     * column (from -0.0, one row after the other), so the result is the same to the bit, but vectorised. */
    if (len == 0) {
        memset(o, 0, (size_t)dim * sizeof(float));
        return;
    }
    if (len - 1 < 8) {
        for (Py_ssize_t d = 0; d < dim; d++) o[d] = -0.0f;
        for (Py_ssize_t k = 1; k < len; k++) {
            const float *row = src + k * dim;
            for (Py_ssize_t d = 0; d < dim; d++) o[d] += row[d];
        }
        for (Py_ssize_t d = 0; d < dim; d++) o[d] = src[d] + o[d];
    } else {
        for (Py_ssize_t d = 0; d < dim; d++) o[d] = src[d] + pairwise_sum(src + dim + d, len - 1, dim);
    }
    if (mean) {
        float count = (float)len;
        for (Py_ssize_t d = 0; d < dim; d++) o[d] /= count;
    }
}

static PyObject *pool_into(PyObject *self, PyObject *args) {
    /* Sum (mean: then divide by the count, in float32) of consecutive runs of float32 rows (m, dim), one run per
     * length, written into columns [col, col + dim) of the float32 matrix out (n, width). An empty run gives
     * zeros. Each column of a run is summed as numpy's add.reduceat does (first row + pairwise sum of the rest),
     * so the network's input is bit-identical to the numpy path's. */
    Py_buffer rows, lengths, out;
    Py_ssize_t dim, width, col;
    int mean;
    if (!PyArg_ParseTuple(args, "y*y*w*nnnp", &rows, &lengths, &out, &dim, &width, &col, &mean)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = lengths.len / 8;
    if (dim <= 0 || width <= 0 || col < 0 || col + dim > width || lengths.len % 8 != 0 ||
        rows.len % (dim * 4) != 0 || out.len != n * width * 4) {
        PyErr_SetString(PyExc_ValueError, "pool_into: buffer sizes do not fit (rows, lengths, out, dim, width, col)");
        goto done;
    }
    const int64_t *len = lengths.buf;
    Py_ssize_t m = rows.len / (dim * 4), total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (len[i] < 0) {
            PyErr_SetString(PyExc_ValueError, "pool_into: negative length");
            goto done;
        }
        total += len[i];
    }
    if (total != m) {
        PyErr_SetString(PyExc_ValueError, "pool_into: lengths do not add up to the rows given");
        goto done;
    }
    const float *src = rows.buf;
    float *dst = out.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        pool_run(src, len[i], dim, dst + i * width + col, mean);
        src += len[i] * dim;
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&rows); PyBuffer_Release(&lengths); PyBuffer_Release(&out);
    return result;
}

/* --- one request's features straight from the shared tier into the dense network's input (issue 11) -----------
 * gather_into probes one feature's ids in a slot's index copy and writes each row (id feature) or the pooled rows
 * of each list (id-list feature) into its columns of the float32 input matrix, with the semantics of the path it
 * replaces (gather, then the store's _finish, then the ranker's assembly): a row is unseen when its id is missing,
 * deleted (time INT64_MIN) or older than the slot's TTL (time < cutoff), and then reads as the slot's default;
 * float16 rows are widened exactly; lists pool as pool_into does (bit-identical). The event times of seen rows are
 * appended to one int64 buffer, so the answer's ages need no masking or concatenation afterwards.
 * It holds the GIL throughout: the scratch buffer for list rows is static, and the call is short. */

static int get_view(PyObject *obj, Py_buffer *view, int writable, const char *kinds, Py_ssize_t itemsize, int ndim,
                    const char *what) {
    /* A C-contiguous buffer of `ndim` dimensions whose items are `itemsize` bytes (0: any) of one of the struct
     * codes in `kinds` (native byte order); ValueError naming `what` otherwise. */
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_Format(PyExc_ValueError, "gather_into: %s must be a C-contiguous%s buffer (%S)", what,
                     writable ? " writable" : "", value ? value : Py_None);
        Py_XDECREF(type); Py_XDECREF(value); Py_XDECREF(tb);
        return -1;
    }
    const char *f = view->format ? view->format : "B";
    if (*f == '@' || *f == '=' || *f == '<') f++;
    if ((itemsize && view->itemsize != itemsize) || f[0] == '\0' || f[1] != '\0' || strchr(kinds, f[0]) == NULL ||
        view->ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "gather_into: %s has the wrong dtype or shape (format %s, %d dimensions)", what,
                     view->format ? view->format : "B", view->ndim);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static inline float half_to_float(uint16_t h) {
    /* IEEE binary16 -> binary32, exact (numpy's npy_halfbits_to_floatbits): subnormals normalised, inf/NaN kept. */
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {
            exp = 127 - 15 + 1;
            while (!(man & 0x400u)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

#define AHEAD 12
#define RING 32 /* a power of two above 2 * AHEAD */

static float *scratch = NULL; /* list rows of one call, float32; grows, never shrinks (GIL held: one user) */
static Py_ssize_t scratch_floats = 0;

static PyObject *gather_into(PyObject *self, PyObject *args) {
    PyObject *o_keys, *o_rows, *o_ids, *o_vec, *o_upd, *o_default, *o_out, *o_lengths, *o_seen;
    long long cutoff;
    Py_ssize_t col, seen_at;
    int mean;
    if (!PyArg_ParseTuple(args, "OOOOOOLOnOpOn", &o_keys, &o_rows, &o_ids, &o_vec, &o_upd, &o_default, &cutoff,
                          &o_out, &col, &o_lengths, &mean, &o_seen, &seen_at))
        return NULL;
    Py_buffer keys = {0}, rows = {0}, ids = {0}, vec = {0}, upd = {0}, def = {0}, out = {0}, lens = {0}, seen = {0};
    int have_lengths = o_lengths != Py_None, vec_half = 0;
    PyObject *result = NULL;
    if (get_view(o_keys, &keys, 0, "LQ", 8, 1, "keys") || get_view(o_rows, &rows, 0, "lq", 8, 1, "rows") ||
        get_view(o_ids, &ids, 0, "LQ", 8, 1, "ids") || get_view(o_upd, &upd, 0, "lq", 8, 1, "updated") ||
        get_view(o_default, &def, 0, "f", 4, 1, "default") || get_view(o_out, &out, 1, "f", 4, 2, "out") ||
        get_view(o_seen, &seen, 1, "lq", 8, 1, "seen"))
        goto done;
    if (get_view(o_vec, &vec, 0, "fe", 0, 2, "vectors (float32 or float16)")) goto done;
    vec_half = vec.itemsize == 2;
    if (have_lengths && get_view(o_lengths, &lens, 0, "lq", 8, 1, "lengths")) goto done;
    Py_ssize_t cap = keys.shape[0], n_ids = ids.shape[0], dim = vec.shape[1], n_out = out.shape[0],
               width = out.shape[1];
    Py_ssize_t n_rows = vec.shape[0] < upd.shape[0] ? vec.shape[0] : upd.shape[0];
    if (cap == 0 || (cap & (cap - 1)) != 0 || rows.shape[0] != cap) {
        PyErr_SetString(PyExc_ValueError, "gather_into: keys and rows must be one power-of-two index");
        goto done;
    }
    if (dim <= 0 || def.shape[0] != dim || col < 0 || col > width - dim) {
        PyErr_Format(PyExc_ValueError,
                     "gather_into: columns [%zd, %zd + dim %zd) do not fit out's width %zd, or default is not dim long",
                     col, col, dim, width);
        goto done;
    }
    if (seen_at < 0 || seen_at > seen.shape[0] - n_ids) {
        PyErr_SetString(PyExc_ValueError, "gather_into: seen has no room for one time per id from seen_at on");
        goto done;
    }
    const int64_t *len = have_lengths ? lens.buf : NULL;
    if (have_lengths) {
        Py_ssize_t total = 0;
        if (lens.shape[0] != n_out) {
            PyErr_SetString(PyExc_ValueError, "gather_into: one length per output row is needed");
            goto done;
        }
        for (Py_ssize_t i = 0; i < n_out; i++) {
            if (len[i] < 0 || len[i] > n_ids) {
                PyErr_SetString(PyExc_ValueError, "gather_into: a length is negative or past the ids");
                goto done;
            }
            total += len[i];
        }
        if (total != n_ids) {
            PyErr_SetString(PyExc_ValueError, "gather_into: the lengths do not add up to the ids given");
            goto done;
        }
        if (n_ids * dim > scratch_floats) {
            Py_ssize_t want = n_ids * dim > 2 * scratch_floats ? n_ids * dim : 2 * scratch_floats;
            float *grown = PyMem_RawRealloc(scratch, (size_t)want * sizeof(float));
            if (grown == NULL) {
                PyErr_NoMemory();
                goto done;
            }
            scratch = grown;
            scratch_floats = want;
        }
    } else if (n_ids != n_out) {
        PyErr_SetString(PyExc_ValueError, "gather_into: an id feature needs one id per output row");
        goto done;
    }

    const uint64_t *tk = keys.buf, *q = ids.buf;
    const int64_t *tr = rows.buf, *times = upd.buf;
    const char *vbase = vec.buf;
    const float *dflt = def.buf;
    float *dst = out.buf;
    int64_t *seen_out = (int64_t *)seen.buf + seen_at;
    Py_ssize_t row_bytes = dim * (vec_half ? 2 : 4), n_seen = 0, n_unseen = 0, n_missing = 0;
    int64_t oldest = INT64_MAX;
    uint64_t mask = (uint64_t)cap - 1;
    /* A software pipeline over the ids, AHEAD apart: hash id i and prefetch its index place; probe id i - AHEAD
     * (its place has arrived meanwhile) and prefetch its row, time and output; write id i - 2 * AHEAD. Memory stays
     * busy with about 2 * AHEAD misses in flight instead of stalling once per block. */
    uint64_t start[RING];
    int64_t found[RING];
    for (Py_ssize_t i = 0; i < n_ids + 2 * AHEAD; i++) {
        if (i < n_ids) {
            start[i & (RING - 1)] = mix64(q[i]) & mask;
            __builtin_prefetch(&tr[start[i & (RING - 1)]]);
            __builtin_prefetch(&tk[start[i & (RING - 1)]]);
        }
        Py_ssize_t b = i - AHEAD;
        if (b >= 0 && b < n_ids) {
            int64_t r = find_row(tk, tr, mask, q[b], start[b & (RING - 1)]);
            if (r >= n_rows) r = -1; /* an index ahead of these arrays: torn by a publish, discarded by the caller */
            found[b & (RING - 1)] = r;
            if (r >= 0) {
                const char *row = vbase + r * row_bytes;
                for (Py_ssize_t at = 0; at < row_bytes; at += 64) __builtin_prefetch(row + at);
                __builtin_prefetch(&times[r]);
            }
            if (!have_lengths) __builtin_prefetch(dst + b * width + col, 1);
        }
        Py_ssize_t c = i - 2 * AHEAD;
        if (c < 0) continue;
        int64_t r = found[c & (RING - 1)];
        float *o = have_lengths ? scratch + c * dim : dst + c * width + col;
        int64_t t = r >= 0 ? times[r] : INT64_MIN;
        n_missing += r < 0;
        if (t == INT64_MIN || t < cutoff) {
            memcpy(o, dflt, (size_t)dim * sizeof(float));
            n_unseen++;
            continue;
        }
        seen_out[n_seen++] = t;
        if (t < oldest) oldest = t;
        if (vec_half) {
            const uint16_t *h = (const uint16_t *)(vbase + r * row_bytes);
            for (Py_ssize_t d = 0; d < dim; d++) o[d] = half_to_float(h[d]);
        } else {
            memcpy(o, vbase + r * row_bytes, (size_t)row_bytes);
        }
    }
    if (have_lengths) {
        const float *src = scratch;
        for (Py_ssize_t i = 0; i < n_out; i++) {
            pool_run(src, len[i], dim, dst + i * width + col, mean);
            src += len[i] * dim;
        }
    }
    result = Py_BuildValue("(nLnn)", n_seen, (long long)oldest, n_unseen, n_missing);
done:
    PyBuffer_Release(&keys); PyBuffer_Release(&rows); PyBuffer_Release(&ids); PyBuffer_Release(&vec);
    PyBuffer_Release(&upd); PyBuffer_Release(&def); PyBuffer_Release(&out); PyBuffer_Release(&seen);
    if (have_lengths) PyBuffer_Release(&lens);
    return result;
}

static PyMethodDef methods[] = {
    {"probe", probe, METH_VARARGS, "probe(keys, rows, ids, out) -> misses: out[i] = row of ids[i], or -1."},
    {"gather", gather, METH_VARARGS,
     "gather(keys, rows, ids, vectors, updated, row_bytes, out_vectors, out_updated, out_rows) -> misses."},
    {"insert", insert, METH_VARARGS, "insert(keys, rows, ids, new_rows) -> added: set ids[i] -> new_rows[i]."},
    {"int_ids", int_ids, METH_VARARGS, "int_ids(list, out) -> -1, or the index of the first non-uint64 element."},
    {"list_lengths", list_lengths, METH_VARARGS, "list_lengths(rows, out) -> total, or -1 - i if rows[i] is no list."},
    {"int_id_lists", int_id_lists, METH_VARARGS, "int_id_lists(rows, out) -> -1, or the flat index of a bad id."},
    {"pool_into", pool_into, METH_VARARGS, "pool_into(rows, lengths, out, dim, width, col, mean) -> None."},
    {"gather_into", gather_into, METH_VARARGS,
     "gather_into(keys, rows, ids, vectors, updated, default, cutoff_ms, out, col, lengths, mean, seen, seen_at)"
     " -> (n_seen, oldest_seen_ms, n_unseen, n_missing)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "liverank.store._kernel", NULL, -1, methods};

PyMODINIT_FUNC PyInit__kernel(void) { return PyModule_Create(&module); }
