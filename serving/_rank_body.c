/* The candidates' integer id columns of a ranking request's JSON body, read into uint64 buffers in one C pass; the
 * rest of the body is handed back, with each such column replaced by the number 0, for orjson to parse.
 *
 * Why, and why the answer is the one orjson would give: serving/rank_body.py (its docstring). In short: a column is
 * taken only when it is, token for token, a flat JSON array of integers in 0..2**64-1 under a unique key of a unique
 * top-level "candidates" object, keys without escapes; then the body with the array and the body with a 0 in its place
 * are valid or invalid together (the rest is byte for byte the same), and their documents differ only in that value.
 * Anything else (another shape, a repeated key, an escaped key, a number orjson would read otherwise) returns None:
 * the caller parses the whole body with orjson. This scanner never needs to find errors: orjson still parses every
 * byte it does not take.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_COLUMNS 64

typedef struct {
    uint64_t *ids; /* the column being read; grows, freed at the end of the call */
    Py_ssize_t cap;
} Scratch;

/* Bytes that end a run of ignorable bytes inside a skipped value: quotes and brackets. */
static unsigned char structural[256];

static inline int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static inline const char *skip_ws(const char *p, const char *end) {
    while (p < end && is_ws(*p)) p++;
    return p;
}

/* p at an opening quote: one past the closing quote, or NULL. *escaped is set if the string holds a backslash. */
static const char *skip_string(const char *p, const char *end, int *escaped) {
    p++;
    while (p < end) {
        const char *q = memchr(p, '"', (size_t)(end - p));
        const char *b = memchr(p, '\\', (size_t)((q ? q : end) - p));
        if (b == NULL) return q ? q + 1 : NULL;
        *escaped = 1;
        p = b + 2; /* the escaped character can be a quote */
    }
    return NULL;
}

/* p at any value: one past its end, or NULL. Lax (brackets are matched by count, literals run to a delimiter):
 * orjson parses these bytes. */
static const char *skip_value(const char *p, const char *end) {
    int escaped = 0;
    if (p >= end) return NULL;
    if (*p == '"') return skip_string(p, end, &escaped);
    if (*p == '{' || *p == '[') {
        Py_ssize_t depth = 0;
        while (p < end) {
            while (p < end && !structural[(unsigned char)*p]) p++;
            if (p >= end) return NULL;
            char c = *p;
            if (c == '"') {
                p = skip_string(p, end, &escaped);
                if (p == NULL) return NULL;
                continue;
            }
            if (c == '{' || c == '[') {
                depth++;
            } else if (--depth == 0) {
                return p + 1;
            }
            p++;
        }
        return NULL;
    }
    while (p < end && *p != ',' && *p != '}' && *p != ']' && !is_ws(*p)) p++;
    return p;
}

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define SWAR 1
/* Eight ASCII digits at once (D. Lemire, "Fast float parsing", simdjson's parse_eight_digits_unrolled). */
static inline int eight_digits(uint64_t v) {
    return (((v & 0xF0F0F0F0F0F0F0F0ULL) | (((v + 0x0606060606060606ULL) & 0xF0F0F0F0F0F0F0F0ULL) >> 4)) ==
            0x3333333333333333ULL);
}

static inline uint64_t parse_eight(uint64_t v) {
    v -= 0x3030303030303030ULL;
    v = (v * 10) + (v >> 8);
    return (((v & 0x000000FF000000FFULL) * 0x000F424000000064ULL) +
            (((v >> 16) & 0x000000FF000000FFULL) * 0x0000271000000001ULL)) >> 32;
}
#endif

static inline int is_digit(char c) { return c >= '0' && c <= '9'; }

/* A JSON number that orjson reads as an int in 0..2**64-1 (no sign, no fraction or exponent, no leading zero):
 * its value into *out and the position after it into *pp; 0 for anything else. */
static int parse_uint(const char **pp, const char *end, uint64_t *out) {
    const char *p = *pp, *q = p;
    if (p >= end || !is_digit(*p)) return 0;
#ifdef SWAR
    while (end - q >= 8) {
        uint64_t chunk;
        memcpy(&chunk, q, 8);
        if (!eight_digits(chunk)) break;
        q += 8;
    }
#endif
    while (q < end && is_digit(*q)) q++;
    Py_ssize_t n = q - p;
    if (n > 20 || (n > 1 && *p == '0')) return 0;
    if (q < end && (*q == '.' || *q == 'e' || *q == 'E')) return 0;
    uint64_t v = 0;
#ifdef SWAR
    for (Py_ssize_t lead = n % 8; lead > 0; lead--, p++) v = v * 10 + (uint64_t)(*p - '0');
    for (; p < q; p += 8) {
        uint64_t chunk;
        memcpy(&chunk, p, 8);
        if (__builtin_mul_overflow(v, 100000000ULL, &v) || __builtin_add_overflow(v, parse_eight(chunk), &v)) return 0;
    }
#else
    for (; p < q; p++) {
        if (__builtin_mul_overflow(v, 10ULL, &v) || __builtin_add_overflow(v, (uint64_t)(*p - '0'), &v)) return 0;
    }
#endif
    *out = v;
    *pp = q;
    return 1;
}

/* p at '[': a flat array of such ints into the scratch; the count, or -1 (not such an array), -2 (no memory). */
static Py_ssize_t read_ids(const char **pp, const char *end, Scratch *scratch) {
    const char *p = skip_ws(*pp + 1, end);
    Py_ssize_t n = 0;
    if (p < end && *p == ']') {
        *pp = p + 1;
        return 0;
    }
    for (;;) {
        if (n == scratch->cap) {
            Py_ssize_t cap = scratch->cap ? 2 * scratch->cap : 1024;
            uint64_t *grown = PyMem_Realloc(scratch->ids, (size_t)cap * sizeof(uint64_t));
            if (grown == NULL) return -2;
            scratch->ids = grown;
            scratch->cap = cap;
        }
        if (!parse_uint(&p, end, &scratch->ids[n])) return -1;
        n++;
        p = skip_ws(p, end);
        if (p >= end) return -1;
        if (*p == ']') {
            *pp = p + 1;
            return n;
        }
        if (*p != ',') return -1;
        p = skip_ws(p + 1, end);
    }
}

/* p at a key's opening quote: the key's bytes (between the quotes) and the position after the colon; 0 if the key
 * holds an escape or no colon follows. */
static int read_key(const char **pp, const char *end, const char **key, Py_ssize_t *key_len) {
    int escaped = 0;
    const char *p = *pp;
    if (p >= end || *p != '"') return 0;
    const char *after = skip_string(p, end, &escaped);
    if (after == NULL || escaped) return 0;
    *key = p + 1;
    *key_len = after - p - 2;
    p = skip_ws(after, end);
    if (p >= end || *p != ':') return 0;
    *pp = skip_ws(p + 1, end);
    return 1;
}

static Py_ssize_t find_name(PyObject *names, const char *key, Py_ssize_t key_len) {
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        if (PyBytes_GET_SIZE(name) == key_len && memcmp(PyBytes_AS_STRING(name), key, (size_t)key_len) == 0) return i;
    }
    return -1;
}

typedef struct {
    Py_ssize_t start, stop; /* the array's bytes in the body */
} Span;

/* split_id_columns(body, names) -> (rest, {name: ids}) or None. */
static PyObject *split_id_columns(PyObject *self, PyObject *args) {
    const char *body;
    Py_ssize_t body_len;
    PyObject *names;
    if (!PyArg_ParseTuple(args, "y#O!", &body, &body_len, &PyTuple_Type, &names)) return NULL;
    Py_ssize_t n_names = PyTuple_GET_SIZE(names);
    if (n_names > MAX_COLUMNS) Py_RETURN_NONE;
    for (Py_ssize_t i = 0; i < n_names; i++) {
        if (!PyBytes_Check(PyTuple_GET_ITEM(names, i))) {
            PyErr_SetString(PyExc_TypeError, "names must be bytes");
            return NULL;
        }
    }
    const char *end = body + body_len, *p = skip_ws(body, end);
    Span spans[MAX_COLUMNS];
    Py_ssize_t n_spans = 0;
    int seen[MAX_COLUMNS] = {0}, seen_candidates = 0;
    Scratch scratch = {NULL, 0};
    PyObject *result = NULL;
    PyObject *columns = PyDict_New();
    if (columns == NULL) return NULL;

    if (p >= end || *p != '{') goto decline;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}') goto decline; /* no candidates at all: orjson and validation say so */
    for (;;) {
        const char *key;
        Py_ssize_t key_len;
        if (!read_key(&p, end, &key, &key_len)) goto decline;
        if (key_len == 10 && memcmp(key, "candidates", 10) == 0) {
            if (seen_candidates++ || p >= end || *p != '{') goto decline;
            p = skip_ws(p + 1, end);
            if (p < end && *p == '}') {
                p++;
            } else {
                for (;;) {
                    const char *column;
                    Py_ssize_t column_len;
                    if (!read_key(&p, end, &column, &column_len)) goto decline;
                    Py_ssize_t which = find_name(names, column, column_len);
                    if (which >= 0) {
                        if (seen[which]++ || p >= end || *p != '[') goto decline;
                        const char *start = p;
                        Py_ssize_t n = read_ids(&p, end, &scratch);
                        if (n == -2) {
                            PyErr_NoMemory();
                            goto fail;
                        }
                        if (n < 0) goto decline;
                        PyObject *ids = PyByteArray_FromStringAndSize((const char *)scratch.ids, n * 8);
                        if (ids == NULL) goto fail;
                        int failed = PyDict_SetItem(columns, PyTuple_GET_ITEM(names, which), ids);
                        Py_DECREF(ids);
                        if (failed) goto fail;
                        spans[n_spans].start = start - body;
                        spans[n_spans].stop = p - body;
                        n_spans++;
                    } else {
                        p = skip_value(p, end);
                        if (p == NULL) goto decline;
                    }
                    p = skip_ws(p, end);
                    if (p >= end) goto decline;
                    if (*p == '}') {
                        p++;
                        break;
                    }
                    if (*p != ',') goto decline;
                    p = skip_ws(p + 1, end);
                }
            }
        } else {
            p = skip_value(p, end);
            if (p == NULL) goto decline;
        }
        p = skip_ws(p, end);
        if (p >= end) goto decline;
        if (*p == '}') break;
        if (*p != ',') goto decline;
        p = skip_ws(p + 1, end);
    }
    if (skip_ws(p + 1, end) != end || n_spans == 0) goto decline;

    /* The rest: the body with each span replaced by "0". */
    Py_ssize_t rest_len = body_len;
    for (Py_ssize_t i = 0; i < n_spans; i++) rest_len -= spans[i].stop - spans[i].start - 1;
    PyObject *rest = PyBytes_FromStringAndSize(NULL, rest_len);
    if (rest == NULL) goto fail;
    char *out = PyBytes_AS_STRING(rest);
    Py_ssize_t from = 0;
    for (Py_ssize_t i = 0; i < n_spans; i++) {
        memcpy(out, body + from, (size_t)(spans[i].start - from));
        out += spans[i].start - from;
        *out++ = '0';
        from = spans[i].stop;
    }
    memcpy(out, body + from, (size_t)(body_len - from));
    result = PyTuple_Pack(2, rest, columns);
    Py_DECREF(rest);
    goto done;

decline:
    result = Py_NewRef(Py_None);
    goto done;
fail:
    result = NULL;
done:
    Py_DECREF(columns);
    PyMem_Free(scratch.ids);
    return result;
}

static PyMethodDef methods[] = {
    {"split_id_columns", split_id_columns, METH_VARARGS,
     "split_id_columns(body, names) -> (rest, {name: uint64 bytes}) or None (see serving/rank_body.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rank_body", NULL, -1, methods};

PyMODINIT_FUNC PyInit__rank_body(void) {
    structural[(unsigned char)'"'] = 1;
    structural[(unsigned char)'['] = 1;
    structural[(unsigned char)']'] = 1;
    structural[(unsigned char)'{'] = 1;
    structural[(unsigned char)'}'] = 1;
    return PyModule_Create(&module);
}
