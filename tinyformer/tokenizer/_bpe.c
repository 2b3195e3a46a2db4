/* The C accelerator for byte-level BPE: the training merge loop and the encoding of pre-tokens.
 *
 * train_merges(words, counts, num_merges, progress) applies the same rule as train.train_merges_python
 * (most frequent pair; ties to the greater (left bytes, right bytes); then smaller ids) with incremental
 * pair counts, a pair -> words index and a max-heap with lazy invalidation.
 * Encoder(ranks).encode_piece(bytes) / .encode_pieces(list[str], cache, cache_limit) apply merges by rank
 * (tiktoken's rule: the leftmost adjacent pair with the lowest merged id, one at a time);
 * for the GPT-2, GPT-4 and o200k patterns, Encoder.encode_fast and count_fast also pre-tokenize ASCII text in C
 * (other text goes back to the regex module), exactly as the regex would.
 * Plain CPython C API, no other dependencies.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ a pair -> int32 hash map */

typedef struct {
    uint64_t *keys;
    int32_t *vals; /* -1 = empty slot */
    size_t cap;    /* power of two */
    size_t used;
} PairMap;

static inline uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

static inline size_t hash_key(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return (size_t)k;
}

static int map_init(PairMap *m, size_t cap) {
    size_t c = 1024;
    while (c < cap * 2) c <<= 1;
    m->keys = malloc(c * sizeof(uint64_t));
    m->vals = malloc(c * sizeof(int32_t));
    if (!m->keys || !m->vals) return -1;
    memset(m->vals, 0xff, c * sizeof(int32_t));
    m->cap = c;
    m->used = 0;
    return 0;
}

static void map_free(PairMap *m) {
    free(m->keys);
    free(m->vals);
    m->keys = NULL;
    m->vals = NULL;
}

static inline int32_t map_get(const PairMap *m, uint64_t key) {
    size_t mask = m->cap - 1, i = hash_key(key) & mask;
    while (m->vals[i] != -1) {
        if (m->keys[i] == key) return m->vals[i];
        i = (i + 1) & mask;
    }
    return -1;
}

static int map_grow(PairMap *m) {
    PairMap bigger;
    if (map_init(&bigger, m->cap) < 0) return -1; /* map_init doubles: cap*2 slots */
    for (size_t i = 0; i < m->cap; i++) {
        if (m->vals[i] == -1) continue;
        size_t mask = bigger.cap - 1, j = hash_key(m->keys[i]) & mask;
        while (bigger.vals[j] != -1) j = (j + 1) & mask;
        bigger.keys[j] = m->keys[i];
        bigger.vals[j] = m->vals[i];
        bigger.used++;
    }
    map_free(m);
    *m = bigger;
    return 0;
}

/* Insert key -> val (key must be absent). */
static int map_put(PairMap *m, uint64_t key, int32_t val) {
    if ((m->used + 1) * 2 > m->cap && map_grow(m) < 0) return -1;
    size_t mask = m->cap - 1, i = hash_key(key) & mask;
    while (m->vals[i] != -1) i = (i + 1) & mask;
    m->keys[i] = key;
    m->vals[i] = val;
    m->used++;
    return 0;
}

/* ------------------------------------------------------------------ training state */

typedef struct {
    int32_t a, b;
    int64_t count;
    int64_t before; /* count when first touched in the current merge */
    int32_t stamp;  /* merge index of that touch */
    int32_t *words; /* indices of words that contain (or once contained) the pair */
    int32_t n_words, cap_words;
} Pair;

typedef struct {
    int64_t count;
    int32_t pair;
} HeapEntry;

typedef struct {
    /* tokens */
    const uint8_t **tok;
    int32_t *tok_len;
    /* words: symbols of word w are sym[start[w] .. start[w]+len[w]) */
    int32_t *sym;
    int64_t *start;
    int32_t *len;
    int64_t *freq;
    int32_t *wstamp;
    Py_ssize_t n_words;
    /* pairs */
    Pair *pairs;
    int32_t n_pairs, cap_pairs;
    PairMap map;
    /* heap */
    HeapEntry *heap;
    size_t heap_len, heap_cap;
    /* pairs touched in the current merge */
    int32_t *touched;
    size_t n_touched, cap_touched;
    int32_t stamp;
} State;

static inline int bytes_cmp(const uint8_t *x, int32_t nx, const uint8_t *y, int32_t ny) {
    int32_t n = nx < ny ? nx : ny;
    int c = memcmp(x, y, (size_t)n);
    if (c) return c;
    return (nx > ny) - (nx < ny);
}

/* 1 if heap entry x must come out before y. */
static inline int entry_before(const State *s, const HeapEntry *x, const HeapEntry *y) {
    if (x->count != y->count) return x->count > y->count;
    const Pair *p = &s->pairs[x->pair], *q = &s->pairs[y->pair];
    int c = bytes_cmp(s->tok[p->a], s->tok_len[p->a], s->tok[q->a], s->tok_len[q->a]);
    if (c) return c > 0;
    c = bytes_cmp(s->tok[p->b], s->tok_len[p->b], s->tok[q->b], s->tok_len[q->b]);
    if (c) return c > 0;
    if (p->a != q->a) return p->a < q->a;
    return p->b < q->b;
}

static int heap_push(State *s, int64_t count, int32_t pair) {
    if (s->heap_len == s->heap_cap) {
        size_t cap = s->heap_cap ? s->heap_cap * 2 : 1024;
        HeapEntry *h = realloc(s->heap, cap * sizeof(HeapEntry));
        if (!h) return -1;
        s->heap = h;
        s->heap_cap = cap;
    }
    size_t i = s->heap_len++;
    HeapEntry e = {count, pair};
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!entry_before(s, &e, &s->heap[parent])) break;
        s->heap[i] = s->heap[parent];
        i = parent;
    }
    s->heap[i] = e;
    return 0;
}

static HeapEntry heap_pop(State *s) {
    HeapEntry top = s->heap[0];
    HeapEntry last = s->heap[--s->heap_len];
    size_t i = 0, n = s->heap_len;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, best = i;
        const HeapEntry *bestp = &last;
        if (l < n && entry_before(s, &s->heap[l], bestp)) {
            best = l;
            bestp = &s->heap[l];
        }
        if (r < n && entry_before(s, &s->heap[r], bestp)) {
            best = r;
        }
        if (best == i) break;
        s->heap[i] = s->heap[best];
        i = best;
    }
    if (n > 0) s->heap[i] = last;
    return top;
}

/* The pair (a, b), created with count 0 if new; -1 on memory error. */
static int32_t get_pair(State *s, int32_t a, int32_t b) {
    uint64_t key = pair_key(a, b);
    int32_t idx = map_get(&s->map, key);
    if (idx >= 0) return idx;
    if (s->n_pairs == s->cap_pairs) {
        int32_t cap = s->cap_pairs ? s->cap_pairs * 2 : 4096;
        Pair *p = realloc(s->pairs, (size_t)cap * sizeof(Pair));
        if (!p) return -1;
        s->pairs = p;
        s->cap_pairs = cap;
    }
    idx = s->n_pairs++;
    Pair *p = &s->pairs[idx];
    p->a = a;
    p->b = b;
    p->count = 0;
    p->before = 0;
    p->stamp = -1;
    p->words = NULL;
    p->n_words = p->cap_words = 0;
    if (map_put(&s->map, key, idx) < 0) return -1;
    return idx;
}

static int add_word_to_pair(Pair *p, int32_t w) {
    if (p->n_words && p->words[p->n_words - 1] == w) return 0;
    if (p->n_words == p->cap_words) {
        int32_t cap = p->cap_words ? p->cap_words * 2 : 4;
        int32_t *ws = realloc(p->words, (size_t)cap * sizeof(int32_t));
        if (!ws) return -1;
        p->words = ws;
        p->cap_words = cap;
    }
    p->words[p->n_words++] = w;
    return 0;
}

/* count(a, b) += delta, remembering the count before this merge; optionally index word w under the pair. */
static int change_pair(State *s, int32_t a, int32_t b, int64_t delta, int32_t index_word) {
    int32_t idx = get_pair(s, a, b);
    if (idx < 0) return -1;
    Pair *p = &s->pairs[idx];
    if (p->stamp != s->stamp) {
        p->stamp = s->stamp;
        p->before = p->count;
        if (s->n_touched == s->cap_touched) {
            size_t cap = s->cap_touched ? s->cap_touched * 2 : 1024;
            int32_t *t = realloc(s->touched, cap * sizeof(int32_t));
            if (!t) return -1;
            s->touched = t;
            s->cap_touched = cap;
        }
        s->touched[s->n_touched++] = idx;
    }
    p->count += delta;
    if (index_word >= 0 && add_word_to_pair(p, index_word) < 0) return -1;
    return 0;
}

static void state_free(State *s) {
    if (s->pairs) {
        for (int32_t i = 0; i < s->n_pairs; i++) free(s->pairs[i].words);
    }
    free(s->pairs);
    map_free(&s->map);
    free(s->heap);
    free(s->touched);
    free(s->sym);
    free(s->start);
    free(s->len);
    free(s->freq);
    free(s->wstamp);
    if (s->tok) {
        /* ids >= 256 own their bytes; ids < 256 point into a static table */
        for (int32_t i = 256; s->tok_len && s->tok[i]; i++) free((void *)s->tok[i]);
    }
    free((void *)s->tok);
    free(s->tok_len);
}

static uint8_t BYTE_TABLE[256];

/* Merge pair `pi` into new id z in every word that holds it, updating counts, index and heap. */
static int apply_merge(State *s, int32_t pi, int32_t z) {
    const int32_t a = s->pairs[pi].a, b = s->pairs[pi].b;
    int32_t *words = s->pairs[pi].words;
    const int32_t n_words = s->pairs[pi].n_words;
    s->pairs[pi].words = NULL; /* taken: the merged pair no longer occurs anywhere after this */
    s->pairs[pi].n_words = s->pairs[pi].cap_words = 0;
    s->n_touched = 0;
    for (int32_t k = 0; k < n_words; k++) {
        const int32_t w = words[k];
        if (s->wstamp[w] == s->stamp) continue;
        s->wstamp[w] = s->stamp;
        int32_t *sym = s->sym + s->start[w];
        const int32_t n = s->len[w];
        int found = 0;
        for (int32_t i = 0; i + 1 < n; i++) {
            if (sym[i] == a && sym[i + 1] == b) {
                found = 1;
                break;
            }
        }
        if (!found) continue; /* stale index entry */
        const int64_t c = s->freq[w];
        for (int32_t i = 0; i + 1 < n; i++) {
            if (change_pair(s, sym[i], sym[i + 1], -c, -1) < 0) goto fail;
        }
        int32_t j = 0;
        for (int32_t i = 0; i < n;) {
            if (i + 1 < n && sym[i] == a && sym[i + 1] == b) {
                sym[j++] = z;
                i += 2;
            } else {
                sym[j++] = sym[i++];
            }
        }
        s->len[w] = j;
        for (int32_t i = 0; i + 1 < j; i++) {
            int has_new = sym[i] == z || sym[i + 1] == z;
            if (change_pair(s, sym[i], sym[i + 1], c, has_new ? w : -1) < 0) goto fail;
        }
    }
    free(words);
    for (size_t t = 0; t < s->n_touched; t++) {
        Pair *p = &s->pairs[s->touched[t]];
        if (p->count <= 0) {
            p->count = 0;
            free(p->words);
            p->words = NULL;
            p->n_words = p->cap_words = 0;
        } else if (p->count > p->before) {
            if (heap_push(s, p->count, s->touched[t]) < 0) return -1;
        }
    }
    return 0;
fail:
    free(words);
    return -1;
}

static PyObject *train_merges(PyObject *self, PyObject *args) {
    PyObject *words_obj, *counts_obj, *progress = Py_None;
    Py_ssize_t num_merges;
    if (!PyArg_ParseTuple(args, "O!O!n|O", &PyList_Type, &words_obj, &PyList_Type, &counts_obj, &num_merges,
                          &progress))
        return NULL;
    Py_ssize_t n_words = PyList_GET_SIZE(words_obj);
    if (PyList_GET_SIZE(counts_obj) != n_words) {
        PyErr_SetString(PyExc_ValueError, "words and counts differ in length");
        return NULL;
    }
    if (n_words >= INT32_MAX || num_merges < 0 || num_merges > INT32_MAX - 256) {
        PyErr_SetString(PyExc_ValueError, "too many words or merges");
        return NULL;
    }
    State s;
    memset(&s, 0, sizeof(s));
    PyObject *result = NULL;
    int64_t total = 0;
    for (Py_ssize_t w = 0; w < n_words; w++) {
        PyObject *item = PyList_GET_ITEM(words_obj, w);
        if (!PyBytes_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "words must be bytes");
            return NULL;
        }
        total += PyBytes_GET_SIZE(item);
    }
    s.n_words = n_words;
    s.sym = malloc((size_t)(total ? total : 1) * sizeof(int32_t));
    s.start = malloc((size_t)(n_words ? n_words : 1) * sizeof(int64_t));
    s.len = malloc((size_t)(n_words ? n_words : 1) * sizeof(int32_t));
    s.freq = malloc((size_t)(n_words ? n_words : 1) * sizeof(int64_t));
    s.wstamp = malloc((size_t)(n_words ? n_words : 1) * sizeof(int32_t));
    s.tok = calloc((size_t)num_merges + 257, sizeof(uint8_t *));
    s.tok_len = calloc((size_t)num_merges + 257, sizeof(int32_t));
    if (!s.sym || !s.start || !s.len || !s.freq || !s.wstamp || !s.tok || !s.tok_len ||
        map_init(&s.map, 1 << 16) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    for (int i = 0; i < 256; i++) {
        BYTE_TABLE[i] = (uint8_t)i;
        s.tok[i] = &BYTE_TABLE[i];
        s.tok_len[i] = 1;
    }
    int64_t pos = 0;
    for (Py_ssize_t w = 0; w < n_words; w++) {
        PyObject *item = PyList_GET_ITEM(words_obj, w);
        const uint8_t *data = (const uint8_t *)PyBytes_AS_STRING(item);
        Py_ssize_t n = PyBytes_GET_SIZE(item);
        long long c = PyLong_AsLongLong(PyList_GET_ITEM(counts_obj, w));
        if (c == -1 && PyErr_Occurred()) goto done;
        s.start[w] = pos;
        s.len[w] = (int32_t)n;
        s.freq[w] = c;
        s.wstamp[w] = -1;
        for (Py_ssize_t i = 0; i < n; i++) s.sym[pos + i] = data[i];
        pos += n;
    }
    /* initial counts: new pairs carry stamp -1 too, so nothing is recorded as touched */
    s.stamp = -1;
    for (Py_ssize_t w = 0; w < n_words; w++) {
        int32_t *sym = s.sym + s.start[w];
        for (int32_t i = 0; i + 1 < s.len[w]; i++) {
            if (change_pair(&s, sym[i], sym[i + 1], s.freq[w], (int32_t)w) < 0) {
                PyErr_NoMemory();
                goto done;
            }
        }
    }
    for (int32_t i = 0; i < s.n_pairs; i++) {
        if (s.pairs[i].count > 0 && heap_push(&s, s.pairs[i].count, i) < 0) {
            PyErr_NoMemory();
            goto done;
        }
    }
    result = PyList_New(0);
    if (!result) goto done;
    int32_t done_merges = 0, reported = 0;
    while (done_merges < num_merges && s.heap_len > 0) {
        HeapEntry e = heap_pop(&s);
        int64_t current = s.pairs[e.pair].count;
        if (e.count != current) {
            if (current > 0 && current < e.count && heap_push(&s, current, e.pair) < 0) {
                PyErr_NoMemory();
                goto fail;
            }
            continue;
        }
        int32_t z = 256 + done_merges;
        int32_t a = s.pairs[e.pair].a, b = s.pairs[e.pair].b;
        uint8_t *joined = malloc((size_t)(s.tok_len[a] + s.tok_len[b]));
        if (!joined) {
            PyErr_NoMemory();
            goto fail;
        }
        memcpy(joined, s.tok[a], (size_t)s.tok_len[a]);
        memcpy(joined + s.tok_len[a], s.tok[b], (size_t)s.tok_len[b]);
        s.tok[z] = joined;
        s.tok_len[z] = s.tok_len[a] + s.tok_len[b];
        PyObject *pair = Py_BuildValue("(ii)", a, b);
        if (!pair || PyList_Append(result, pair) < 0) {
            Py_XDECREF(pair);
            goto fail;
        }
        Py_DECREF(pair);
        s.stamp = done_merges;
        if (apply_merge(&s, e.pair, z) < 0) {
            PyErr_NoMemory();
            goto fail;
        }
        done_merges++;
        if (done_merges - reported >= 200 || done_merges == num_merges) {
            if (PyErr_CheckSignals() < 0) goto fail;
            if (progress != Py_None) {
                PyObject *r = PyObject_CallFunction(progress, "i", done_merges - reported);
                if (!r) goto fail;
                Py_DECREF(r);
            }
            reported = done_merges;
        }
    }
    goto done;
fail:
    Py_CLEAR(result);
done:
    state_free(&s);
    return result;
}

/* ------------------------------------------------------------------ encoding */

/* A bounded cache of pre-token bytes -> ids, inside the encoder: no Python object per lookup. */
typedef struct {
    uint64_t hash;
    uint32_t key_off, key_len, ids_off, n_ids;
} CacheEntry;

#define CACHE_MIN_SLOTS (1u << 12)
#define CACHE_MAX_SLOTS (1u << 18) /* at most half full: 131072 pre-tokens, then it starts over */

typedef struct {
    uint8_t *data;
    size_t len, cap;
} ByteBuf;

typedef struct {
    int32_t *data;
    size_t len, cap;
} IntBuf;

static int bytebuf_reserve(ByteBuf *b, size_t extra) {
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    uint8_t *d = realloc(b->data, cap);
    if (!d) return -1;
    b->data = d;
    b->cap = cap;
    return 0;
}

static int intbuf_reserve(IntBuf *b, size_t extra) {
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    int32_t *d = realloc(b->data, cap * sizeof(int32_t));
    if (!d) return -1;
    b->data = d;
    b->cap = cap;
    return 0;
}

typedef struct {
    PyObject_HEAD PairMap ranks; /* (left id, right id) -> merged id; a lower id is an earlier merge */
    int32_t byte_id[256];        /* the id of each single byte (its value, unless the ids came from elsewhere) */
    uint8_t ascii_class[128];    /* fast path: CLS_* bits per ASCII character, from the regex module */
    int pattern_kind;            /* KIND_GPT2 / KIND_GPT4 / KIND_O200K: the pattern the fast path scans; 0 = none */
    int release_gil;             /* a private encoder: encode_fast lets other threads run while it scans */
    CacheEntry *cache;           /* cache_slots entries; n_ids == UINT32_MAX marks an empty slot */
    size_t cache_slots, cache_used;
    ByteBuf cache_keys;
    IntBuf cache_ids;
    PyObject **id_objs;          /* interned Python ints for ids, built on demand */
    int32_t n_id_objs;
    PyObject *unicode_classes;   /* bytes: CLS_* bits of every code point (set_unicode); NULL = regex for non-ASCII */
    uint32_t fold_from[8];       /* non-ASCII code points that (?i) matches to an ASCII letter ... */
    uint8_t fold_to[8];          /* ... and that letter (for the GPT-4/o200k contractions) */
    int n_folds;
} Encoder;

/* CLS_UPPER: [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}], CLS_LOWER: [\p{Ll}\p{Lm}\p{Lo}\p{M}] (o200k's two letter sets) */
enum { CLS_SPACE = 1, CLS_LETTER = 2, CLS_NUMBER = 4, CLS_UPPER = 8, CLS_LOWER = 16 };
enum { KIND_NONE = 0, KIND_GPT2 = 2, KIND_GPT4 = 4, KIND_O200K = 200 };

static inline int known_kind(int kind) { return kind == KIND_GPT2 || kind == KIND_GPT4 || kind == KIND_O200K; }

static void cache_clear(Encoder *self) {
    for (size_t i = 0; i < self->cache_slots; i++) self->cache[i].n_ids = UINT32_MAX;
    self->cache_used = 0;
    self->cache_keys.len = 0;
    self->cache_ids.len = 0;
}

static inline size_t cache_slot(uint64_t h, size_t slots) { return (size_t)(h ^ (h >> 29)) & (slots - 1); }

/* Double the slot table (the key and id arenas stay as they are). */
static int cache_grow(Encoder *self) {
    size_t slots = self->cache_slots * 2;
    CacheEntry *table = malloc(slots * sizeof(CacheEntry));
    if (!table) return -1;
    for (size_t i = 0; i < slots; i++) table[i].n_ids = UINT32_MAX;
    for (size_t i = 0; i < self->cache_slots; i++) {
        CacheEntry *e = &self->cache[i];
        if (e->n_ids == UINT32_MAX) continue;
        size_t j = cache_slot(e->hash, slots);
        while (table[j].n_ids != UINT32_MAX) j = (j + 1) & (slots - 1);
        table[j] = *e;
    }
    free(self->cache);
    self->cache = table;
    self->cache_slots = slots;
    return 0;
}

static void Encoder_dealloc(Encoder *self) {
    map_free(&self->ranks);
    Py_XDECREF(self->unicode_classes);
    free(self->cache);
    free(self->cache_keys.data);
    free(self->cache_ids.data);
    if (self->id_objs) {
        for (int32_t i = 0; i < self->n_id_objs; i++) Py_XDECREF(self->id_objs[i]);
        free(self->id_objs);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Encoder_init(Encoder *self, PyObject *args, PyObject *kwds) {
    PyObject *ranks, *classes = Py_None, *byte_ids = Py_None;
    int release_gil = 0, kind = 0;
    if (!PyArg_ParseTuple(args, "O!|OpiO", &PyDict_Type, &ranks, &classes, &release_gil, &kind, &byte_ids))
        return -1;
    self->release_gil = release_gil;
    int32_t max_id = 255;
    for (int b = 0; b < 256; b++) self->byte_id[b] = b;
    if (byte_ids != Py_None) {
        if (!PyList_Check(byte_ids) || PyList_GET_SIZE(byte_ids) != 256) {
            PyErr_SetString(PyExc_TypeError, "byte_ids must be a list of 256 ints");
            return -1;
        }
        for (int b = 0; b < 256; b++) {
            long v = PyLong_AsLong(PyList_GET_ITEM(byte_ids, b));
            if (v == -1 && PyErr_Occurred()) return -1;
            if (v < 0 || v >= INT32_MAX) {
                PyErr_SetString(PyExc_ValueError, "byte ids must be non-negative 32-bit ints");
                return -1;
            }
            self->byte_id[b] = (int32_t)v;
            if (v > max_id) max_id = (int32_t)v;
        }
    }
    if (self->ranks.keys) {
        PyErr_SetString(PyExc_RuntimeError, "Encoder is already initialised");
        return -1;
    }
    if (map_init(&self->ranks, (size_t)PyDict_Size(ranks) + 16) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(ranks, &pos, &key, &value)) {
        int a, b;
        if (!PyTuple_Check(key) || !PyArg_ParseTuple(key, "ii", &a, &b)) {
            PyErr_SetString(PyExc_TypeError, "ranks keys must be (int, int)");
            return -1;
        }
        long v = PyLong_AsLong(value);
        if (v == -1 && PyErr_Occurred()) return -1;
        if (v > max_id) max_id = (int32_t)v;
        if (map_get(&self->ranks, pair_key(a, b)) < 0 && map_put(&self->ranks, pair_key(a, b), (int32_t)v) < 0) {
            PyErr_NoMemory();
            return -1;
        }
    }
    if (classes != Py_None) {
        if (!PyBytes_Check(classes) || PyBytes_GET_SIZE(classes) != 128) {
            PyErr_SetString(PyExc_TypeError, "ascii classes must be 128 bytes");
            return -1;
        }
        if (!known_kind(kind)) {
            PyErr_SetString(PyExc_ValueError, "pattern kind must be 2 (GPT-2), 4 (GPT-4) or 200 (o200k)");
            return -1;
        }
        memcpy(self->ascii_class, PyBytes_AS_STRING(classes), 128);
        self->pattern_kind = kind;
    }
    self->cache_slots = CACHE_MIN_SLOTS;
    self->cache = malloc(CACHE_MIN_SLOTS * sizeof(CacheEntry));
    self->n_id_objs = max_id + 1;
    self->id_objs = calloc((size_t)self->n_id_objs, sizeof(PyObject *));
    if (!self->cache || !self->id_objs) {
        PyErr_NoMemory();
        return -1;
    }
    cache_clear(self);
    return 0;
}

/* The merged id of the pair (a, b), or INT32_MAX when they do not merge (or merge only into an id >= limit). */
static inline int32_t merged_id(const PairMap *ranks, int32_t a, int32_t b, int32_t limit) {
    int32_t r = map_get(ranks, pair_key(a, b));
    return r >= 0 && r < limit ? r : INT32_MAX;
}

#define LONG_PIECE 64

/* BPE on ids[0..n), n <= LONG_PIECE: merge the leftmost adjacent pair with the lowest merged id, one at a time
 * (tiktoken's rule), until no pair merges; returns the new n. Quadratic, but the fastest for short pieces. */
static Py_ssize_t bpe_ids_short(const PairMap *ranks, int32_t *ids, Py_ssize_t n, int32_t limit) {
    int32_t r[LONG_PIECE]; /* r[i]: merged id of (ids[i], ids[i + 1]) */
    for (Py_ssize_t i = 0; i + 1 < n; i++) r[i] = merged_id(ranks, ids[i], ids[i + 1], limit);
    while (n >= 2) {
        int32_t best = INT32_MAX;
        Py_ssize_t at = -1;
        for (Py_ssize_t i = 0; i + 1 < n; i++) {
            if (r[i] < best) {
                best = r[i];
                at = i;
            }
        }
        if (at < 0) break;
        ids[at] = best;
        memmove(ids + at + 1, ids + at + 2, (size_t)(n - at - 2) * sizeof(int32_t));
        if (n - at - 3 > 0) memmove(r + at + 1, r + at + 2, (size_t)(n - at - 3) * sizeof(int32_t));
        n--;
        if (at + 1 < n) r[at] = merged_id(ranks, ids[at], ids[at + 1], limit);
        if (at > 0) r[at - 1] = merged_id(ranks, ids[at - 1], ids[at], limit);
    }
    return n;
}

typedef struct {
    int32_t rank, pos;
} RankPos;

static inline int rp_less(RankPos x, RankPos y) { return x.rank < y.rank || (x.rank == y.rank && x.pos < y.pos); }

static void rp_push(RankPos *heap, Py_ssize_t *len, RankPos e) {
    Py_ssize_t i = (*len)++;
    while (i > 0 && rp_less(e, heap[(i - 1) / 2])) {
        heap[i] = heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    heap[i] = e;
}

static RankPos rp_pop(RankPos *heap, Py_ssize_t *len) {
    RankPos top = heap[0], last = heap[--(*len)];
    Py_ssize_t i = 0, n = *len;
    for (;;) {
        Py_ssize_t l = 2 * i + 1, best = i;
        RankPos b = last;
        if (l < n && rp_less(heap[l], b)) {
            best = l;
            b = heap[l];
        }
        if (l + 1 < n && rp_less(heap[l + 1], b)) best = l + 1;
        if (best == i) break;
        heap[i] = heap[best];
        i = best;
    }
    if (n > 0) heap[i] = last;
    return top;
}

/* The same result for long pieces in O(n log n): a linked list of symbols and a min-heap of (rank, position).
 * Each pop is the leftmost pair with the lowest merged id, as in the short version (stale entries, whose
 * pair has changed since, are skipped). Returns the new n, or -1 when out of memory. */
static Py_ssize_t bpe_ids_long(const PairMap *ranks, int32_t *ids, Py_ssize_t n, int32_t limit) {
    Py_ssize_t *next = malloc((size_t)n * sizeof(Py_ssize_t)), *prev = malloc((size_t)n * sizeof(Py_ssize_t));
    RankPos *heap = malloc((size_t)(n + 2 * n) * sizeof(RankPos)); /* n initial + at most 2 pushes per merge */
    if (!next || !prev || !heap) {
        free(next);
        free(prev);
        free(heap);
        return -1;
    }
    Py_ssize_t heap_len = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        next[i] = i + 1 < n ? i + 1 : -1;
        prev[i] = i - 1;
        if (i + 1 < n) {
            int32_t r = merged_id(ranks, ids[i], ids[i + 1], limit);
            if (r != INT32_MAX) rp_push(heap, &heap_len, (RankPos){r, (int32_t)i});
        }
    }
    while (heap_len > 0) {
        RankPos e = rp_pop(heap, &heap_len);
        Py_ssize_t p = e.pos, q = next[p];
        if (ids[p] < 0 || q < 0 || merged_id(ranks, ids[p], ids[q], limit) != e.rank) continue; /* stale */
        ids[p] = e.rank;
        ids[q] = -1; /* removed */
        next[p] = next[q];
        if (next[q] >= 0) prev[next[q]] = p;
        if (prev[p] >= 0) {
            int32_t r = merged_id(ranks, ids[prev[p]], ids[p], limit);
            if (r != INT32_MAX) rp_push(heap, &heap_len, (RankPos){r, (int32_t)prev[p]});
        }
        if (next[p] >= 0) {
            int32_t r = merged_id(ranks, ids[p], ids[next[p]], limit);
            if (r != INT32_MAX) rp_push(heap, &heap_len, (RankPos){r, (int32_t)p});
        }
    }
    Py_ssize_t m = 0;
    for (Py_ssize_t i = 0; i >= 0 && i < n; i = next[i]) ids[m++] = ids[i];
    free(next);
    free(prev);
    free(heap);
    return m;
}

static Py_ssize_t bpe_ids(const PairMap *ranks, int32_t *ids, Py_ssize_t n, int32_t limit) {
    return n > LONG_PIECE ? bpe_ids_long(ranks, ids, n, limit) : bpe_ids_short(ranks, ids, n, limit);
}

static PyObject *id_object(Encoder *self, int32_t id) {
    if (id < 0 || id >= self->n_id_objs) return PyLong_FromLong(id);
    if (!self->id_objs[id]) {
        self->id_objs[id] = PyLong_FromLong(id);
        if (!self->id_objs[id]) return NULL;
    }
    Py_INCREF(self->id_objs[id]);
    return self->id_objs[id];
}

static PyObject *ids_to_list(Encoder *self, const int32_t *ids, size_t n) {
    PyObject *out = PyList_New((Py_ssize_t)n);
    if (!out) return NULL;
    for (size_t i = 0; i < n; i++) {
        PyObject *v = id_object(self, ids[i]);
        if (!v) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, (Py_ssize_t)i, v);
    }
    return out;
}

/* Append the ids of one pre-token's bytes to `out`, through the cache. */
static int encode_piece_cached(Encoder *self, const uint8_t *data, size_t n, IntBuf *out) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ data[i]) * 1099511628211ULL;
    size_t mask = self->cache_slots - 1, slot = cache_slot(h, self->cache_slots);
    for (;;) {
        CacheEntry *e = &self->cache[slot];
        if (e->n_ids == UINT32_MAX) break;
        if (e->hash == h && e->key_len == n && memcmp(self->cache_keys.data + e->key_off, data, n) == 0) {
            if (intbuf_reserve(out, e->n_ids) < 0) return -1;
            memcpy(out->data + out->len, self->cache_ids.data + e->ids_off, e->n_ids * sizeof(int32_t));
            out->len += e->n_ids;
            return 0;
        }
        slot = (slot + 1) & mask;
    }
    /* miss: run BPE straight into `out`, then remember the result */
    if (intbuf_reserve(out, n) < 0) return -1;
    int32_t *ids = out->data + out->len;
    for (size_t i = 0; i < n; i++) ids[i] = self->byte_id[data[i]];
    Py_ssize_t merged = bpe_ids(&self->ranks, ids, (Py_ssize_t)n, INT32_MAX);
    if (merged < 0) return -1;
    size_t m = (size_t)merged;
    out->len += m;
    if (n > 256) return 0; /* long runs (e.g. whitespace) are rare: not worth the space */
    if ((self->cache_used + 1) * 2 > self->cache_slots) {
        if (self->cache_slots < CACHE_MAX_SLOTS) {
            if (cache_grow(self) < 0) return -1;
        } else {
            cache_clear(self);
        }
        mask = self->cache_slots - 1;
        slot = cache_slot(h, self->cache_slots);
        while (self->cache[slot].n_ids != UINT32_MAX) slot = (slot + 1) & mask;
    }
    if (bytebuf_reserve(&self->cache_keys, n) < 0 || intbuf_reserve(&self->cache_ids, m) < 0) return -1;
    CacheEntry *e = &self->cache[slot];
    e->hash = h;
    e->key_off = (uint32_t)self->cache_keys.len;
    e->key_len = (uint32_t)n;
    e->ids_off = (uint32_t)self->cache_ids.len;
    e->n_ids = (uint32_t)m;
    memcpy(self->cache_keys.data + self->cache_keys.len, data, n);
    self->cache_keys.len += n;
    memcpy(self->cache_ids.data + self->cache_ids.len, out->data + out->len - m, m * sizeof(int32_t));
    self->cache_ids.len += m;
    self->cache_used++;
    return 0;
}

/* End of the GPT-2 pre-token starting at i in ASCII text s[0..n); mirrors the regex alternatives in order:
 * '(?:[sdmt]|ll|ve|re) | ?\p{L}+ | ?\p{N}+ | ?[^\s\p{L}\p{N}]+ | \s+(?!\S) | \s+ */
static inline size_t gpt2_piece_end(const uint8_t *cls, const uint8_t *s, size_t i, size_t n) {
    uint8_t c = s[i];
    if (c == '\'' && i + 1 < n) {
        uint8_t d = s[i + 1];
        if (d == 's' || d == 'd' || d == 'm' || d == 't') return i + 2;
        if (i + 2 < n) {
            uint8_t e = s[i + 2];
            if ((d == 'l' && e == 'l') || (d == 'v' && e == 'e') || (d == 'r' && e == 'e')) return i + 3;
        }
    }
    size_t j = (c == ' ' && i + 1 < n && !(cls[s[i + 1]] & CLS_SPACE)) ? i + 1 : i;
    uint8_t k = cls[s[j]];
    if (!(k & CLS_SPACE)) {
        /* letters, numbers, or other (neither space, letter nor number): a run of the same class */
        uint8_t want = k & (CLS_LETTER | CLS_NUMBER);
        size_t e = j + 1;
        while (e < n && (cls[s[e]] & (CLS_SPACE | CLS_LETTER | CLS_NUMBER)) == want) e++;
        return e;
    }
    size_t e = i + 1;
    while (e < n && (cls[s[e]] & CLS_SPACE)) e++;
    if (e < n && e - i >= 2) return e - 1; /* leave the last space to start the next pre-token */
    return e;
}

static inline int is_crlf(uint8_t c) { return c == '\r' || c == '\n'; }
static inline uint8_t ascii_lower(uint8_t c) { return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c; }

/* End of the GPT-4 (cl100k) pre-token starting at i in ASCII text s[0..n); mirrors the alternatives in order:
 * '(?i:[sdmt]|ll|ve|re) | [^\r\n\p{L}\p{N}]?+\p{L}+ | \p{N}{1,3} | ?[^\s\p{L}\p{N}]++[\r\n]* | \s++$ |
 * \s*[\r\n] | \s+(?!\S) | \s+ */
static inline size_t gpt4_piece_end(const uint8_t *cls, const uint8_t *s, size_t i, size_t n) {
    const uint8_t ANY = CLS_SPACE | CLS_LETTER | CLS_NUMBER;
    uint8_t c = s[i], k = cls[c];
    if (c == '\'' && i + 1 < n) {
        uint8_t d = ascii_lower(s[i + 1]);
        if (d == 's' || d == 'd' || d == 'm' || d == 't') return i + 2;
        if (i + 2 < n) {
            uint8_t e = ascii_lower(s[i + 2]);
            if ((d == 'l' && e == 'l') || (d == 'v' && e == 'e') || (d == 'r' && e == 'e')) return i + 3;
        }
    }
    size_t start = i;
    if (!(k & (CLS_LETTER | CLS_NUMBER)) && !is_crlf(c) && i + 1 < n && (cls[s[i + 1]] & CLS_LETTER)) start = i + 1;
    if (cls[s[start]] & CLS_LETTER) { /* one optional leading character, then letters */
        size_t e = start + 1;
        while (e < n && (cls[s[e]] & CLS_LETTER)) e++;
        return e;
    }
    if (k & CLS_NUMBER) { /* at most three digits */
        size_t e = i + 1;
        while (e < n && e - i < 3 && (cls[s[e]] & CLS_NUMBER)) e++;
        return e;
    }
    size_t j = (c == ' ' && i + 1 < n && !(cls[s[i + 1]] & ANY)) ? i + 1 : i;
    if (!(cls[s[j]] & ANY)) { /* other characters, then any line ends */
        size_t e = j + 1;
        while (e < n && !(cls[s[e]] & ANY)) e++;
        while (e < n && is_crlf(s[e])) e++;
        return e;
    }
    size_t e = i + 1; /* whitespace: the run is [i, e) */
    while (e < n && (cls[s[e]] & CLS_SPACE)) e++;
    if (e == n) return n;                             /* \s++$ */
    for (size_t p = e; p > i; p--)                    /* \s*[\r\n]: up to the run's last line end */
        if (is_crlf(s[p - 1])) return p;
    if (e - i >= 2) return e - 1;                     /* \s+(?!\S) */
    return e;                                         /* \s+ */
}

/* o200k's optional contraction (?i:'s|'t|'re|'ve|'m|'ll|'d) at e: the end after it. */
static inline size_t o200k_contraction(const uint8_t *s, size_t e, size_t n) {
    if (e + 1 >= n || s[e] != '\'') return e;
    uint8_t d = ascii_lower(s[e + 1]);
    if (d == 's' || d == 't' || d == 'm' || d == 'd') return e + 2;
    if (e + 2 < n) {
        uint8_t f = ascii_lower(s[e + 2]);
        if ((d == 'r' && f == 'e') || (d == 'v' && f == 'e') || (d == 'l' && f == 'l')) return e + 3;
    }
    return e;
}

/* End of the o200k pre-token starting at i in ASCII text s[0..n); mirrors the alternatives in order:
 * [^\r\n\p{L}\p{N}]?UPPER*LOWER+C? | [^\r\n\p{L}\p{N}]?UPPER+LOWER*C? | \p{N}{1,3} | ?[^\s\p{L}\p{N}]+[\r\n/]* |
 * \s*[\r\n]+ | \s+(?!\S) | \s+   (UPPER, LOWER: the CLS_UPPER / CLS_LOWER sets; C: the contraction). Each letter
 * alternative first tries with the optional leading character, then without. In ASCII UPPER and LOWER are
 * disjoint (checked where the classes are made), so the runs need no backtracking. */
static inline size_t o200k_piece_end(const uint8_t *cls, const uint8_t *s, size_t i, size_t n) {
    const uint8_t ANY = CLS_SPACE | CLS_LETTER | CLS_NUMBER;
    uint8_t c = s[i], k = cls[c];
    size_t starts[2];
    int n_starts = 0;
    if (!(k & (CLS_LETTER | CLS_NUMBER)) && !is_crlf(c)) starts[n_starts++] = i + 1;
    starts[n_starts++] = i;
    for (int t = 0; t < n_starts; t++) { /* UPPER* LOWER+ */
        size_t u = starts[t];
        while (u < n && (cls[s[u]] & CLS_UPPER)) u++;
        if (u < n && (cls[s[u]] & CLS_LOWER)) {
            size_t e = u + 1;
            while (e < n && (cls[s[e]] & CLS_LOWER)) e++;
            return o200k_contraction(s, e, n);
        }
    }
    for (int t = 0; t < n_starts; t++) { /* UPPER+ LOWER* (LOWER* is empty here, or the first loop matched) */
        size_t u = starts[t];
        if (u < n && (cls[s[u]] & CLS_UPPER)) {
            while (u < n && (cls[s[u]] & CLS_UPPER)) u++;
            return o200k_contraction(s, u, n);
        }
    }
    if (k & CLS_NUMBER) { /* at most three digits */
        size_t e = i + 1;
        while (e < n && e - i < 3 && (cls[s[e]] & CLS_NUMBER)) e++;
        return e;
    }
    size_t j = (c == ' ' && i + 1 < n && !(cls[s[i + 1]] & ANY)) ? i + 1 : i;
    if (!(cls[s[j]] & ANY)) { /* other characters, then any line ends and slashes */
        size_t e = j + 1;
        while (e < n && !(cls[s[e]] & ANY)) e++;
        while (e < n && (is_crlf(s[e]) || s[e] == '/')) e++;
        return e;
    }
    size_t e = i + 1; /* whitespace: the run is [i, e) */
    while (e < n && (cls[s[e]] & CLS_SPACE)) e++;
    for (size_t p = e; p > i; p--)                    /* \s*[\r\n]+: up to the run's last line end */
        if (is_crlf(s[p - 1])) return p;
    if (e == n) return n;                             /* \s+(?!\S) at the end of the text */
    if (e - i >= 2) return e - 1;                     /* \s+(?!\S) */
    return e;                                         /* \s+ */
}

static inline size_t piece_end(int kind, const uint8_t *cls, const uint8_t *s, size_t i, size_t n) {
    if (kind == KIND_O200K) return o200k_piece_end(cls, s, i, n);
    return kind == KIND_GPT4 ? gpt4_piece_end(cls, s, i, n) : gpt2_piece_end(cls, s, i, n);
}

/* ------------------------------------------------------------------ the same pre-tokenizers for any text
 * The three functions above, for code points: classes from the table of all code points (cls), and what ASCII
 * did not need: letters (?i)-matched by non-ASCII characters in contractions, and o200k's two letter sets,
 * which share the modifier and other letters and the marks, so its letter runs may backtrack. */

typedef struct {
    const uint8_t *cls; /* CLS_* bits of every code point */
    const uint32_t *fold_from;
    const uint8_t *fold_to;
    int n_folds;
} UClasses;

/* The ASCII letter c stands for in a case-insensitive contraction, else 0. */
static inline uint8_t u_fold(const UClasses *u, uint32_t c) {
    if (c < 128) return ascii_lower((uint8_t)c);
    for (int k = 0; k < u->n_folds; k++)
        if (u->fold_from[k] == c) return u->fold_to[k];
    return 0;
}

static inline int u_crlf(uint32_t c) { return c == '\r' || c == '\n'; }

static size_t gpt2_piece_end_u(const UClasses *u, const uint32_t *s, size_t i, size_t n) {
    const uint8_t *cls = u->cls;
    uint32_t c = s[i];
    if (c == '\'' && i + 1 < n) {
        uint32_t d = s[i + 1];
        if (d == 's' || d == 'd' || d == 'm' || d == 't') return i + 2;
        if (i + 2 < n) {
            uint32_t e = s[i + 2];
            if ((d == 'l' && e == 'l') || (d == 'v' && e == 'e') || (d == 'r' && e == 'e')) return i + 3;
        }
    }
    size_t j = (c == ' ' && i + 1 < n && !(cls[s[i + 1]] & CLS_SPACE)) ? i + 1 : i;
    uint8_t k = cls[s[j]];
    if (!(k & CLS_SPACE)) {
        uint8_t want = k & (CLS_LETTER | CLS_NUMBER);
        size_t e = j + 1;
        while (e < n && (cls[s[e]] & (CLS_SPACE | CLS_LETTER | CLS_NUMBER)) == want) e++;
        return e;
    }
    size_t e = i + 1;
    while (e < n && (cls[s[e]] & CLS_SPACE)) e++;
    if (e < n && e - i >= 2) return e - 1;
    return e;
}

static size_t gpt4_piece_end_u(const UClasses *u, const uint32_t *s, size_t i, size_t n) {
    const uint8_t *cls = u->cls;
    const uint8_t ANY = CLS_SPACE | CLS_LETTER | CLS_NUMBER;
    uint32_t c = s[i];
    uint8_t k = cls[c];
    if (c == '\'' && i + 1 < n) {
        uint8_t d = u_fold(u, s[i + 1]);
        if (d == 's' || d == 'd' || d == 'm' || d == 't') return i + 2;
        if (i + 2 < n) {
            uint8_t e = u_fold(u, s[i + 2]);
            if ((d == 'l' && e == 'l') || (d == 'v' && e == 'e') || (d == 'r' && e == 'e')) return i + 3;
        }
    }
    size_t start = i;
    if (!(k & (CLS_LETTER | CLS_NUMBER)) && !u_crlf(c) && i + 1 < n && (cls[s[i + 1]] & CLS_LETTER)) start = i + 1;
    if (cls[s[start]] & CLS_LETTER) {
        size_t e = start + 1;
        while (e < n && (cls[s[e]] & CLS_LETTER)) e++;
        return e;
    }
    if (k & CLS_NUMBER) {
        size_t e = i + 1;
        while (e < n && e - i < 3 && (cls[s[e]] & CLS_NUMBER)) e++;
        return e;
    }
    size_t j = (c == ' ' && i + 1 < n && !(cls[s[i + 1]] & ANY)) ? i + 1 : i;
    if (!(cls[s[j]] & ANY)) {
        size_t e = j + 1;
        while (e < n && !(cls[s[e]] & ANY)) e++;
        while (e < n && u_crlf(s[e])) e++;
        return e;
    }
    size_t e = i + 1;
    while (e < n && (cls[s[e]] & CLS_SPACE)) e++;
    if (e == n) return n;
    for (size_t p = e; p > i; p--)
        if (u_crlf(s[p - 1])) return p;
    if (e - i >= 2) return e - 1;
    return e;
}

static size_t o200k_contraction_u(const UClasses *u, const uint32_t *s, size_t e, size_t n) {
    if (e + 1 >= n || s[e] != '\'') return e;
    uint8_t d = u_fold(u, s[e + 1]);
    if (d == 's' || d == 't' || d == 'm' || d == 'd') return e + 2;
    if (e + 2 < n) {
        uint8_t f = u_fold(u, s[e + 2]);
        if ((d == 'r' && f == 'e') || (d == 'v' && f == 'e') || (d == 'l' && f == 'l')) return e + 3;
    }
    return e;
}

static size_t o200k_piece_end_u(const UClasses *u, const uint32_t *s, size_t i, size_t n) {
    const uint8_t *cls = u->cls;
    const uint8_t ANY = CLS_SPACE | CLS_LETTER | CLS_NUMBER;
    uint32_t c = s[i];
    uint8_t k = cls[c];
    size_t starts[2];
    int n_starts = 0;
    if (!(k & (CLS_LETTER | CLS_NUMBER)) && !u_crlf(c)) starts[n_starts++] = i + 1;
    starts[n_starts++] = i;
    for (int t = 0; t < n_starts; t++) { /* UPPER* LOWER+: the UPPER run gives back characters until one is LOWER */
        size_t a = starts[t], up = a;
        while (up < n && (cls[s[up]] & CLS_UPPER)) up++;
        if (up < n && (cls[s[up]] & CLS_LOWER)) {
            size_t e = up + 1;
            while (e < n && (cls[s[e]] & CLS_LOWER)) e++;
            return o200k_contraction_u(u, s, e, n);
        }
        for (size_t j = up; j > a; j--) /* the last character of the run that is LOWER too ends the match */
            if (cls[s[j - 1]] & CLS_LOWER) return o200k_contraction_u(u, s, j, n);
    }
    for (int t = 0; t < n_starts; t++) { /* UPPER+ LOWER* */
        size_t a = starts[t];
        if (a < n && (cls[s[a]] & CLS_UPPER)) {
            size_t e = a;
            while (e < n && (cls[s[e]] & CLS_UPPER)) e++;
            while (e < n && (cls[s[e]] & CLS_LOWER)) e++;
            return o200k_contraction_u(u, s, e, n);
        }
    }
    if (k & CLS_NUMBER) {
        size_t e = i + 1;
        while (e < n && e - i < 3 && (cls[s[e]] & CLS_NUMBER)) e++;
        return e;
    }
    size_t j = (c == ' ' && i + 1 < n && !(cls[s[i + 1]] & ANY)) ? i + 1 : i;
    if (!(cls[s[j]] & ANY)) {
        size_t e = j + 1;
        while (e < n && !(cls[s[e]] & ANY)) e++;
        while (e < n && (u_crlf(s[e]) || s[e] == '/')) e++;
        return e;
    }
    size_t e = i + 1;
    while (e < n && (cls[s[e]] & CLS_SPACE)) e++;
    for (size_t p = e; p > i; p--)
        if (u_crlf(s[p - 1])) return p;
    if (e == n) return n;
    if (e - i >= 2) return e - 1;
    return e;
}

/* UTF-8 of code points (a lone surrogate as its 3 bytes, as Python's surrogatepass writes it). */
static size_t utf8_encode(const uint32_t *s, size_t n, uint8_t *out) {
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = s[i];
        if (c < 0x80) {
            out[m++] = (uint8_t)c;
        } else if (c < 0x800) {
            out[m++] = (uint8_t)(0xC0 | (c >> 6));
            out[m++] = (uint8_t)(0x80 | (c & 0x3F));
        } else if (c < 0x10000) {
            out[m++] = (uint8_t)(0xE0 | (c >> 12));
            out[m++] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
            out[m++] = (uint8_t)(0x80 | (c & 0x3F));
        } else {
            out[m++] = (uint8_t)(0xF0 | (c >> 18));
            out[m++] = (uint8_t)(0x80 | ((c >> 12) & 0x3F));
            out[m++] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
            out[m++] = (uint8_t)(0x80 | (c & 0x3F));
        }
    }
    return m;
}

/* Pre-tokenize and encode text[start..end) of any characters in C (needs the code point table). */
static int encode_any(Encoder *self, const void *data, int kind, Py_ssize_t start, Py_ssize_t end, IntBuf *out,
                      ByteBuf *tmp) {
    size_t n = (size_t)(end - start);
    UClasses u = {(const uint8_t *)PyBytes_AS_STRING(self->unicode_classes), self->fold_from, self->fold_to,
                  self->n_folds};
    /* tmp holds the code points, then room for the UTF-8 of the longest piece (at most 4 bytes each) */
    tmp->len = 0;
    if (bytebuf_reserve(tmp, n * 4 + n * 4) < 0) return -1;
    uint32_t *cps = (uint32_t *)tmp->data;
    uint8_t *utf8 = tmp->data + n * 4;
    for (size_t k = 0; k < n; k++) cps[k] = PyUnicode_READ(kind, data, start + (Py_ssize_t)k);
    size_t i = 0;
    while (i < n) {
        size_t e = self->pattern_kind == KIND_O200K ? o200k_piece_end_u(&u, cps, i, n)
                   : self->pattern_kind == KIND_GPT4 ? gpt4_piece_end_u(&u, cps, i, n)
                                                     : gpt2_piece_end_u(&u, cps, i, n);
        size_t m = utf8_encode(cps + i, e - i, utf8);
        if (encode_piece_cached(self, utf8, m, out) < 0) return -1;
        i = e;
    }
    return 0;
}

/* set_unicode(classes: bytes of 0x110000 CLS_* bit sets, folds: list[(code point, ASCII letter)]): from now on
 * encode_fast pre-tokenizes text of any characters in C, without calling the fallback. */
static PyObject *Encoder_set_unicode(Encoder *self, PyObject *args) {
    PyObject *classes, *folds;
    if (!PyArg_ParseTuple(args, "O!O!", &PyBytes_Type, &classes, &PyList_Type, &folds)) return NULL;
    if (PyBytes_GET_SIZE(classes) != 0x110000 || PyList_GET_SIZE(folds) > 8) {
        PyErr_SetString(PyExc_ValueError, "classes must be 0x110000 bytes and folds at most 8 pairs");
        return NULL;
    }
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(folds); k++) {
        unsigned int cp;
        int letter;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(folds, k), "IC", &cp, &letter)) return NULL;
        self->fold_from[k] = cp;
        self->fold_to[k] = (uint8_t)letter;
    }
    self->n_folds = (int)PyList_GET_SIZE(folds);
    Py_INCREF(classes);
    Py_XSETREF(self->unicode_classes, classes);
    Py_RETURN_NONE;
}

static int encode_ascii(Encoder *self, const uint8_t *s, size_t n, IntBuf *out) {
    size_t i = 0;
    while (i < n) {
        size_t e = piece_end(self->pattern_kind, self->ascii_class, s, i, n);
        if (encode_piece_cached(self, s + i, e - i, out) < 0) return -1;
        i = e;
    }
    return 0;
}

static int append_list_ids(IntBuf *out, PyObject *list) {
    if (!PyList_Check(list)) {
        PyErr_SetString(PyExc_TypeError, "fallback must return a list of ints");
        return -1;
    }
    Py_ssize_t m = PyList_GET_SIZE(list);
    if (intbuf_reserve(out, (size_t)m) < 0) return -1;
    for (Py_ssize_t k = 0; k < m; k++) {
        long v = PyLong_AsLong(PyList_GET_ITEM(list, k));
        if (v == -1 && PyErr_Occurred()) return -1;
        out->data[out->len++] = (int32_t)v;
    }
    return 0;
}

static inline int visible_ascii(Py_UCS4 c) { return c >= 0x21 && c < 0x7F; }

/* The end of the stretch of text[i..n) up to the next place where the GPT-2, GPT-4 and o200k patterns always
 * split, and whether the stretch is all ASCII. Those places: before a space that follows a visible ASCII
 * character (no pre-token goes on over such a space), and after a line end between two visible ASCII
 * characters, the second not '/' (o200k's punctuation pre-tokens take line ends and slashes after them). */
static Py_ssize_t stretch_end(int kind, const void *data, Py_ssize_t i, Py_ssize_t n, int *ascii) {
    *ascii = 1;
    for (Py_ssize_t k = i; k < n; k++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, k);
        if (c >= 128) {
            *ascii = 0;
        } else if (c == ' ') {
            if (k > i && visible_ascii(PyUnicode_READ(kind, data, k - 1))) return k;
        } else if (c == '\n' && k >= 1 && k + 1 < n) {
            Py_UCS4 next = PyUnicode_READ(kind, data, k + 1);
            if (visible_ascii(PyUnicode_READ(kind, data, k - 1)) && visible_ascii(next) && next != '/') return k + 1;
        }
    }
    return n;
}

/* Walks a text as ASCII stretches, for the C pre-tokenizer, and runs of stretches holding other characters,
 * for the regex: text[start..end) is the next piece of work, ascii says which. Runs are as long as they can be,
 * so the regex is called once per run, not once per word. */
typedef struct {
    const void *data;
    int kind, all_ascii;
    Py_ssize_t n, pos;
} Stretches;

static int next_stretch(Stretches *w, Py_ssize_t *start, Py_ssize_t *end, int *ascii) {
    if (w->pos >= w->n) return 0;
    *start = w->pos;
    if (w->all_ascii) {
        *end = w->n;
        *ascii = 1;
    } else {
        *end = stretch_end(w->kind, w->data, w->pos, w->n, ascii);
        if (!*ascii) { /* join the following non-ASCII stretches; an ASCII one is scanned again next time */
            int next_ascii = 0;
            Py_ssize_t e;
            while (*end < w->n && (e = stretch_end(w->kind, w->data, *end, w->n, &next_ascii), !next_ascii)) *end = e;
        }
    }
    w->pos = *end;
    return 1;
}

/* An ASCII stretch as bytes: the text's own buffer when it is all ASCII, else copied into tmp. */
static const uint8_t *ascii_bytes(const Stretches *w, Py_ssize_t start, Py_ssize_t end, ByteBuf *tmp) {
    if (w->all_ascii) return (const uint8_t *)w->data + start;
    tmp->len = 0;
    if (bytebuf_reserve(tmp, (size_t)(end - start)) < 0) return NULL;
    for (Py_ssize_t k = start; k < end; k++) tmp->data[k - start] = (uint8_t)PyUnicode_READ(w->kind, w->data, k);
    return tmp->data;
}

/* Append the ids of `text` to `out`. Called without the GIL when *released is set (a private encoder): it is
 * taken back only around the fallback, and *released updated. Returns -1 with an exception set (and the GIL
 * held, *released cleared) when the fallback fails, -2 when out of memory (GIL state unchanged). */
static int encode_text(Encoder *self, PyObject *text, PyObject *fallback, IntBuf *out, ByteBuf *tmp,
                       PyThreadState **released) {
    Stretches w = {PyUnicode_DATA(text), PyUnicode_KIND(text), PyUnicode_IS_ASCII(text), PyUnicode_GET_LENGTH(text), 0};
    int ascii;
    Py_ssize_t start, end;
    while (next_stretch(&w, &start, &end, &ascii)) {
        if (ascii) {
            const uint8_t *s = ascii_bytes(&w, start, end, tmp);
            if (!s || encode_ascii(self, s, (size_t)(end - start), out) < 0) return -2;
            continue;
        }
        if (self->unicode_classes) {
            if (encode_any(self, w.data, w.kind, start, end, out, tmp) < 0) return -2;
            continue;
        }
        if (*released) PyEval_RestoreThread(*released);
        int rc = -1;
        PyObject *part = PyUnicode_Substring(text, start, end);
        if (part) {
            PyObject *ids = PyObject_CallOneArg(fallback, part);
            Py_DECREF(part);
            if (ids) {
                rc = append_list_ids(out, ids);
                Py_DECREF(ids);
            }
        }
        if (rc < 0) {
            *released = NULL;
            return -1;
        }
        if (*released) *released = PyEval_SaveThread();
    }
    return 0;
}

/* encode_fast(text, fallback) -> list[int]: the ids of `text` under the GPT-2/GPT-4/o200k pattern. ASCII
 * stretches are pre-tokenized and encoded here; runs holding other characters go to fallback(str) -> list[int],
 * the regex path. */
static PyObject *Encoder_encode_fast(Encoder *self, PyObject *args) {
    PyObject *text, *fallback;
    if (!PyArg_ParseTuple(args, "UO", &text, &fallback)) return NULL;
    if (!self->pattern_kind) {
        PyErr_SetString(PyExc_RuntimeError, "Encoder built without a fast pre-tokenizer");
        return NULL;
    }
    IntBuf out = {0};
    ByteBuf tmp = {0};
    PyObject *result = NULL;
    /* A private encoder (one thread only) lets other threads run while it scans: the GIL is taken back
     * only to call the fallback and to build the result. */
    PyThreadState *released = self->release_gil ? PyEval_SaveThread() : NULL;
    int rc = encode_text(self, text, fallback, &out, &tmp, &released);
    if (released) PyEval_RestoreThread(released);
    if (rc == -2) PyErr_NoMemory();
    if (rc == 0) result = ids_to_list(self, out.data, out.len);
    free(out.data);
    free(tmp.data);
    return result;
}

/* encode_fast_batch(texts: list[str], fallback) -> list[list[int]]: encode_fast of each text, with the GIL let go
 * once for the whole batch (not once per text), so threads encoding many short texts do not queue for it. */
static PyObject *Encoder_encode_fast_batch(Encoder *self, PyObject *args) {
    PyObject *texts, *fallback;
    if (!PyArg_ParseTuple(args, "O!O", &PyList_Type, &texts, &fallback)) return NULL;
    if (!self->pattern_kind) {
        PyErr_SetString(PyExc_RuntimeError, "Encoder built without a fast pre-tokenizer");
        return NULL;
    }
    /* The texts are held in an array of our own: the list may change while the GIL is let go. */
    Py_ssize_t n = PyList_GET_SIZE(texts);
    PyObject **items = malloc((size_t)(n ? n : 1) * sizeof(PyObject *));
    size_t *ends = malloc((size_t)(n ? n : 1) * sizeof(size_t));
    if (!items || !ends) {
        free(items);
        free(ends);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        items[k] = PyList_GET_ITEM(texts, k);
        Py_INCREF(items[k]);
    }
    IntBuf out = {0};
    ByteBuf tmp = {0};
    PyObject *result = NULL;
    int rc = 0;
    for (Py_ssize_t k = 0; k < n && rc == 0; k++) {
        if (!PyUnicode_Check(items[k])) {
            PyErr_SetString(PyExc_TypeError, "texts must be str");
            rc = -1;
        }
    }
    if (rc == 0) {
        PyThreadState *released = self->release_gil ? PyEval_SaveThread() : NULL;
        for (Py_ssize_t k = 0; k < n && rc == 0; k++) {
            rc = encode_text(self, items[k], fallback, &out, &tmp, &released);
            ends[k] = out.len;
        }
        if (released) PyEval_RestoreThread(released);
        if (rc == -2) PyErr_NoMemory();
    }
    if (rc == 0 && (result = PyList_New(n)) != NULL) {
        for (Py_ssize_t k = 0; k < n; k++) {
            size_t first = k ? ends[k - 1] : 0;
            PyObject *ids = ids_to_list(self, out.data + first, ends[k] - first);
            if (!ids) {
                Py_CLEAR(result);
                break;
            }
            PyList_SET_ITEM(result, k, ids);
        }
    }
    for (Py_ssize_t k = 0; k < n; k++) Py_DECREF(items[k]);
    free(items);
    free(ends);
    free(out.data);
    free(tmp.data);
    return result;
}

static PyObject *encode_bytes(Encoder *self, const uint8_t *data, Py_ssize_t n) {
    IntBuf out = {0};
    if (encode_piece_cached(self, data, (size_t)n, &out) < 0) {
        free(out.data);
        return PyErr_NoMemory();
    }
    PyObject *list = ids_to_list(self, out.data, out.len);
    free(out.data);
    return list;
}

static PyObject *Encoder_encode_piece(Encoder *self, PyObject *arg) {
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "encode_piece expects bytes");
        return NULL;
    }
    return encode_bytes(self, (const uint8_t *)PyBytes_AS_STRING(arg), PyBytes_GET_SIZE(arg));
}

/* split(token: bytes, below: int) -> list[int]: BPE of the bytes using only merged ids < below, no cache
 * (a token's two parts, when its id is `below`: how merges are recovered from a rank file). */
static PyObject *Encoder_split(Encoder *self, PyObject *args) {
    const char *data;
    Py_ssize_t n;
    int below;
    if (!PyArg_ParseTuple(args, "y#i", &data, &n, &below)) return NULL;
    int32_t *ids = malloc((size_t)(n ? n : 1) * sizeof(int32_t));
    if (!ids) return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++) ids[i] = self->byte_id[(uint8_t)data[i]];
    Py_ssize_t m = bpe_ids(&self->ranks, ids, n, below);
    PyObject *list = m < 0 ? PyErr_NoMemory() : ids_to_list(self, ids, (size_t)m);
    free(ids);
    return list;
}

/* copy(release_gil: bool) -> Encoder: the same ranks, byte ids and fast path, with an empty cache of its own;
 * copies the tables in C, so a copy per thread is cheap even for a large vocab. */
static PyObject *Encoder_copy(Encoder *self, PyObject *args) {
    int release_gil = 0;
    if (!PyArg_ParseTuple(args, "|p", &release_gil)) return NULL;
    Encoder *other = (Encoder *)Py_TYPE(self)->tp_alloc(Py_TYPE(self), 0);
    if (!other) return NULL;
    other->ranks.keys = malloc(self->ranks.cap * sizeof(uint64_t));
    other->ranks.vals = malloc(self->ranks.cap * sizeof(int32_t));
    other->cache = malloc(CACHE_MIN_SLOTS * sizeof(CacheEntry));
    other->id_objs = calloc((size_t)self->n_id_objs, sizeof(PyObject *));
    if (!other->ranks.keys || !other->ranks.vals || !other->cache || !other->id_objs) {
        Py_DECREF(other);
        return PyErr_NoMemory();
    }
    memcpy(other->ranks.keys, self->ranks.keys, self->ranks.cap * sizeof(uint64_t));
    memcpy(other->ranks.vals, self->ranks.vals, self->ranks.cap * sizeof(int32_t));
    other->ranks.cap = self->ranks.cap;
    other->ranks.used = self->ranks.used;
    memcpy(other->byte_id, self->byte_id, sizeof(self->byte_id));
    memcpy(other->ascii_class, self->ascii_class, sizeof(self->ascii_class));
    other->pattern_kind = self->pattern_kind;
    other->release_gil = release_gil;
    other->n_id_objs = self->n_id_objs;
    Py_XINCREF(self->unicode_classes);
    other->unicode_classes = self->unicode_classes;
    memcpy(other->fold_from, self->fold_from, sizeof(self->fold_from));
    memcpy(other->fold_to, self->fold_to, sizeof(self->fold_to));
    other->n_folds = self->n_folds;
    other->cache_slots = CACHE_MIN_SLOTS;
    cache_clear(other);
    return (PyObject *)other;
}

/* encode_pieces(pieces: list[str], cache: dict[str, list[int]], cache_limit: int) -> list[int] */
static PyObject *Encoder_encode_pieces(Encoder *self, PyObject *args) {
    PyObject *pieces, *cache;
    Py_ssize_t cache_limit;
    if (!PyArg_ParseTuple(args, "O!O!n", &PyList_Type, &pieces, &PyDict_Type, &cache, &cache_limit)) return NULL;
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(pieces);
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *piece = PyList_GET_ITEM(pieces, k);
        PyObject *ids = PyDict_GetItemWithError(cache, piece); /* borrowed */
        if (!ids) {
            if (PyErr_Occurred()) goto fail;
            if (!PyUnicode_Check(piece)) {
                PyErr_SetString(PyExc_TypeError, "pieces must be str");
                goto fail;
            }
            Py_ssize_t len;
            const char *data = PyUnicode_AsUTF8AndSize(piece, &len);
            PyObject *encoded = NULL;
            if (!data) { /* lone surrogates: the same bytes Python's surrogatepass gives */
                PyErr_Clear();
                encoded = PyUnicode_AsEncodedString(piece, "utf-8", "surrogatepass");
                if (!encoded) goto fail;
                data = PyBytes_AS_STRING(encoded);
                len = PyBytes_GET_SIZE(encoded);
            }
            PyObject *fresh = encode_bytes(self, (const uint8_t *)data, len);
            Py_XDECREF(encoded);
            if (!fresh) goto fail;
            if (PyDict_GET_SIZE(cache) >= cache_limit) PyDict_Clear(cache);
            if (PyDict_SetItem(cache, piece, fresh) < 0) {
                Py_DECREF(fresh);
                goto fail;
            }
            Py_DECREF(fresh);
            ids = fresh; /* still alive: the cache holds it */
        }
        Py_ssize_t m = PyList_GET_SIZE(ids);
        if (m == 1) {
            if (PyList_Append(out, PyList_GET_ITEM(ids, 0)) < 0) goto fail;
        } else if (PyList_SetSlice(out, PY_SSIZE_T_MAX, PY_SSIZE_T_MAX, ids) < 0) {
            goto fail;
        }
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

/* ------------------------------------------------------------------ pre-token counting for training */

typedef struct {
    uint64_t hash;
    uint32_t off, len;
    int64_t count; /* 0 marks an empty slot */
} CountEntry;

typedef struct {
    CountEntry *slots;
    size_t cap, used;
    ByteBuf keys;
} CountTable;

static int count_table_grow(CountTable *t) {
    size_t cap = t->cap ? t->cap * 2 : (1u << 16);
    CountEntry *slots = calloc(cap, sizeof(CountEntry));
    if (!slots) return -1;
    for (size_t i = 0; i < t->cap; i++) {
        if (!t->slots[i].count) continue;
        size_t j = (size_t)(t->slots[i].hash ^ (t->slots[i].hash >> 29)) & (cap - 1);
        while (slots[j].count) j = (j + 1) & (cap - 1);
        slots[j] = t->slots[i];
    }
    free(t->slots);
    t->slots = slots;
    t->cap = cap;
    return 0;
}

static int count_piece(CountTable *t, const uint8_t *data, size_t n) {
    if ((t->used + 1) * 2 > t->cap && count_table_grow(t) < 0) return -1;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ data[i]) * 1099511628211ULL;
    size_t mask = t->cap - 1, j = (size_t)(h ^ (h >> 29)) & mask;
    while (t->slots[j].count) {
        CountEntry *e = &t->slots[j];
        if (e->hash == h && e->len == n && memcmp(t->keys.data + e->off, data, n) == 0) {
            e->count++;
            return 0;
        }
        j = (j + 1) & mask;
    }
    if (bytebuf_reserve(&t->keys, n) < 0) return -1;
    CountEntry *e = &t->slots[j];
    e->hash = h;
    e->off = (uint32_t)t->keys.len;
    e->len = (uint32_t)n;
    e->count = 1;
    memcpy(t->keys.data + t->keys.len, data, n);
    t->keys.len += n;
    t->used++;
    return 0;
}

/* count_fast(text, ascii_classes, kind, counts: dict[str, int], fallback) -> None: add the GPT-2 (kind 2),
 * GPT-4 (kind 4) or o200k (kind 200) pre-token counts of `text` to `counts`. ASCII stretches are split and counted here; others go
 * to fallback(str), which must add their counts to `counts` itself (the regex path). Stretches are cut as in
 * Encoder.encode_fast. */
static PyObject *count_fast(PyObject *module, PyObject *args) {
    PyObject *text, *classes, *counts, *fallback;
    int kind;
    if (!PyArg_ParseTuple(args, "USiO!O", &text, &classes, &kind, &PyDict_Type, &counts, &fallback)) return NULL;
    if (PyBytes_GET_SIZE(classes) != 128 || !known_kind(kind)) {
        PyErr_SetString(PyExc_ValueError, "ascii classes must be 128 bytes and kind 2, 4 or 200");
        return NULL;
    }
    const uint8_t *cls = (const uint8_t *)PyBytes_AS_STRING(classes);
    CountTable table = {0};
    ByteBuf tmp = {0};
    PyObject *result = NULL;
    if (count_table_grow(&table) < 0) goto nomem;
    Stretches w = {PyUnicode_DATA(text), PyUnicode_KIND(text), PyUnicode_IS_ASCII(text), PyUnicode_GET_LENGTH(text), 0};
    int ascii;
    Py_ssize_t start, end;
    while (next_stretch(&w, &start, &end, &ascii)) {
        if (ascii) {
            const uint8_t *s = ascii_bytes(&w, start, end, &tmp);
            if (!s) goto nomem;
            size_t len = (size_t)(end - start), p = 0;
            while (p < len) {
                size_t e = piece_end(kind, cls, s, p, len);
                if (count_piece(&table, s + p, e - p) < 0) goto nomem;
                p = e;
            }
        } else {
            PyObject *part = PyUnicode_Substring(text, start, end);
            if (!part) goto fail;
            PyObject *r = PyObject_CallOneArg(fallback, part);
            Py_DECREF(part);
            if (!r) goto fail;
            Py_DECREF(r);
        }
    }
    for (size_t j = 0; j < table.cap; j++) {
        CountEntry *e = &table.slots[j];
        if (!e->count) continue;
        PyObject *key = PyUnicode_DecodeASCII((const char *)table.keys.data + e->off, e->len, NULL);
        if (!key) goto fail;
        PyObject *old = PyDict_GetItemWithError(counts, key);
        if (!old && PyErr_Occurred()) {
            Py_DECREF(key);
            goto fail;
        }
        long long total = e->count + (old ? PyLong_AsLongLong(old) : 0);
        PyObject *value = PyLong_FromLongLong(total);
        int rc = value ? PyDict_SetItem(counts, key, value) : -1;
        Py_DECREF(key);
        Py_XDECREF(value);
        if (rc < 0) goto fail;
    }
    Py_INCREF(Py_None);
    result = Py_None;
    goto done;
nomem:
    if (!PyErr_Occurred()) PyErr_NoMemory();
fail:
    result = NULL;
done:
    free(table.slots);
    free(table.keys.data);
    free(tmp.data);
    return result;
}

static PyMethodDef Encoder_methods[] = {
    {"encode_piece", (PyCFunction)Encoder_encode_piece, METH_O, "ids of one pre-token's bytes"},
    {"encode_pieces", (PyCFunction)Encoder_encode_pieces, METH_VARARGS,
     "ids of a list of pre-tokens (str), using and filling a cache dict"},
    {"encode_fast", (PyCFunction)Encoder_encode_fast, METH_VARARGS,
     "ids of a text under the GPT-2/GPT-4/o200k pattern; non-ASCII stretches go to fallback(str) -> list[int]"},
    {"encode_fast_batch", (PyCFunction)Encoder_encode_fast_batch, METH_VARARGS,
     "encode_fast of each text in a list, the GIL let go once for all of them"},
    {"split", (PyCFunction)Encoder_split, METH_VARARGS, "split(token, below): BPE of bytes with merged ids < below"},
    {"copy", (PyCFunction)Encoder_copy, METH_VARARGS, "copy(release_gil=False): a new encoder, empty cache"},
    {"set_unicode", (PyCFunction)Encoder_set_unicode, METH_VARARGS,
     "set_unicode(classes, folds): pre-tokenize text of any characters in C from now on"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tinyformer.tokenizer._bpe.Encoder",
    .tp_basicsize = sizeof(Encoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Encoder(ranks, ascii_classes=None, release_gil=False, pattern_kind=0, byte_ids=None): applies BPE "
              "merges by rank; pattern_kind 2/4/200 adds the GPT-2/GPT-4/o200k fast path; release_gil only for an "
              "encoder one thread uses; byte_ids: the id of each byte (default: its value)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Encoder_init,
    .tp_dealloc = (destructor)Encoder_dealloc,
    .tp_methods = Encoder_methods,
};

static PyMethodDef module_methods[] = {
    {"count_fast", count_fast, METH_VARARGS,
     "count_fast(text, ascii_classes, kind, counts, fallback): add GPT-2/GPT-4/o200k pre-token counts to counts"},
    {"train_merges", train_merges, METH_VARARGS,
     "train_merges(words: list[bytes], counts: list[int], num_merges: int, progress=None) -> list[(int, int)]"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef bpe_module = {
    PyModuleDef_HEAD_INIT, "_bpe", "C accelerator for byte-level BPE training and encoding.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__bpe(void) {
    if (PyType_Ready(&EncoderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&bpe_module);
    if (!m) return NULL;
    Py_INCREF(&EncoderType);
    if (PyModule_AddObject(m, "Encoder", (PyObject *)&EncoderType) < 0) {
        Py_DECREF(&EncoderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
