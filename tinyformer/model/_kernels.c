/* GPT-2's tanh-approximation GELU for contiguous bfloat16 CPU tensors, forward and backward.
 *
 * torch's CPU kernel for F.gelu(approximate="tanh") runs its tanh at scalar speed (about 3x its exact
 * GELU on the machines we measured). This one evaluates the same function in its sigmoid form,
 *
 *     gelu(x) = 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)),   u = sqrt(2/pi) (x + 0.044715 x^3),
 *
 * with a branch-free exp the compiler vectorizes, always in float32 arithmetic (bfloat16 is widened on load
 * and rounded to nearest-even once on store, as torch does), in one pass over memory. The sigmoid form has no
 * cancellation for negative x, where 1 + tanh(u) loses the low bits.
 *
 * Python sees raw pointers: the caller (tinyformer/model/kernels.py) checks device, dtype, contiguity and
 * sizes. The GIL is released while a kernel runs; a large tensor is cut into slices run on up to `threads`
 * OpenMP threads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* One build, each machine's widest vectors: x86-64-v4 (AVX-512), v3 (AVX2+FMA) or the baseline, chosen
   when the module loads (GCC's function multi-versioning; needs glibc's ifunc). */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__x86_64__) && defined(__GLIBC__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

#define SQRT_2_OVER_PI 0.7978845608028654f
#define CUBIC 0.044715f

static inline float from_bits(uint32_t u) { float f; memcpy(&f, &u, sizeof f); return f; }
static inline uint32_t to_bits(float f) { uint32_t u; memcpy(&u, &f, sizeof u); return u; }

static inline float from_bf16(uint16_t h) { return from_bits((uint32_t)h << 16); }

static inline uint16_t to_bf16(float f) {  /* round to nearest, ties to even; NaN stays a (quiet) NaN */
    uint32_t u = to_bits(f);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return f != f ? (uint16_t)((u >> 16) | 0x40u) : (uint16_t)rounded;
}

/* e^z for z clamped to [-87, 87] (so 2^n below stays a normal float): z = n ln2 + r with |r| <= ln2/2,
   ln2 split in two so that n * LN2_HI is exact; e^r by Taylor to degree 7, relative error under 1e-8. */
static inline float exp_clamped(float z) {
    const float shift = 12582912.0f;  /* 1.5 * 2^23: adding it leaves round(z / ln2) in the low bits */
    z = z < -87.0f ? -87.0f : z;
    z = z > 87.0f ? 87.0f : z;
    float t = z * 1.4426950408889634f + shift;
    float n = t - shift;
    int32_t ni = (int32_t)(to_bits(t) - to_bits(shift));
    float r = z - n * 0.693145751953125f;
    r = r - n * 1.4286068203094173e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    return p * from_bits((uint32_t)(ni + 127) << 23);
}

static inline float gelu(float x) {
    float u = SQRT_2_OVER_PI * x * (1.0f + CUBIC * x * x);
    return x / (1.0f + exp_clamped(-2.0f * u));
}

/* d gelu / dx = s + 2 x s (1 - s) sqrt(2/pi) (1 + 3 * 0.044715 x^2), s = sigmoid(2u) = 1 / (1 + e),
   e = exp(-2u); 1 - s is taken as e s, which keeps its low bits where s is close to 1. */
static inline float gelu_slope(float x) {
    float x2 = x * x;
    float u = SQRT_2_OVER_PI * x * (1.0f + CUBIC * x2);
    float e = exp_clamped(-2.0f * u);
    float s = 1.0f / (1.0f + e);
    return s + 2.0f * SQRT_2_OVER_PI * x * (e * s * s) * (1.0f + 3.0f * CUBIC * x2);
}

CLONES static void forward_bf16(const uint16_t *restrict x, uint16_t *restrict y, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) y[i] = to_bf16(gelu(from_bf16(x[i])));
}

CLONES static void backward_bf16(const uint16_t *restrict g, const uint16_t *restrict x, uint16_t *restrict out,
                                 Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) out[i] = to_bf16(from_bf16(g[i]) * gelu_slope(from_bf16(x[i])));
}

/* One slice of a call's work: the backward pass when `g` (the output's gradient) is given. */
static void run_slice(const uint16_t *g, const uint16_t *x, uint16_t *out, Py_ssize_t start, Py_ssize_t stop) {
    if (stop <= start) return;
    if (g) backward_bf16(g + start, x + start, out + start, stop - start);
    else forward_bf16(x + start, out + start, stop - start);
}

#define MIN_SLICE 32768  /* elements below which another thread costs more than it saves */

/* Slices run on OpenMP threads: in a process that has loaded torch, the same libgomp (and so the same, already
   running thread pool) as torch's own kernels, so the two never compete for cores. */
static void run(const uint16_t *g, const uint16_t *x, uint16_t *out, Py_ssize_t n, int threads) {
    if (threads > n / MIN_SLICE) threads = (int)(n / MIN_SLICE);
    if (threads < 1) threads = 1;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static, 1) if (threads > 1)
#endif
    for (int t = 0; t < threads; t++) {
        /* slice bounds on 64-element (one or two cache lines) boundaries */
        Py_ssize_t start = (n * t / threads) & ~(Py_ssize_t)63;
        Py_ssize_t stop = t == threads - 1 ? n : (n * (t + 1) / threads) & ~(Py_ssize_t)63;
        run_slice(g, x, out, start, stop);
    }
}

static PyObject *gelu_tanh(PyObject *self, PyObject *args) {
    unsigned long long x, y;
    Py_ssize_t n;
    int threads;
    if (!PyArg_ParseTuple(args, "KKni", &x, &y, &n, &threads)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    run(NULL, (const uint16_t *)(uintptr_t)x, (uint16_t *)(uintptr_t)y, n, threads);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *gelu_tanh_backward(PyObject *self, PyObject *args) {
    unsigned long long g, x, out;
    Py_ssize_t n;
    int threads;
    if (!PyArg_ParseTuple(args, "KKKni", &g, &x, &out, &n, &threads)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    run((const uint16_t *)(uintptr_t)g, (const uint16_t *)(uintptr_t)x, (uint16_t *)(uintptr_t)out, n, threads);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"gelu_tanh", gelu_tanh, METH_VARARGS,
     "gelu_tanh(x_ptr, y_ptr, n, threads): y = gelu(x), tanh approximation, over n contiguous bfloat16 elements"},
    {"gelu_tanh_backward", gelu_tanh_backward, METH_VARARGS,
     "gelu_tanh_backward(g_ptr, x_ptr, out_ptr, n, threads): out = g * gelu'(x) over n contiguous bfloat16 elements"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels",
                                    "CPU kernels for tinyformer's model (see tinyformer/model/kernels.py)",
                                    -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
