// The calling side of xpdl's compiled CPU kernels: arguments from Python, checked, with clear errors.
//
// A kernel module's functions are METH_FASTCALL functions that take NumPy arrays (through the
// buffer protocol, so no NumPy headers are needed to build) and Python numbers. `Call` holds one
// call's arguments: each `array()` / `real()` / `integer()` reads one of them, and the first thing
// that does not fit (wrong count, wrong dtype, wrong rank, read-only output, too small) sets a
// TypeError or ValueError naming the kernel, the argument, what was expected and what came. Later
// reads then return empty values, so a wrapper reads every argument and checks `ok()` once.
//
// The kernels' bodies live in `*_body.h` files included once per instruction set (see XK_PICK
// below): the baseline, AVX2 and AVX-512, chosen once per process by `xk::isa()`. Floating-point
// contraction (FMA) stays off in all of them, so all give the same bits, the bits of the
// reference NumPy code's operations in the same order.
#pragma once
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <utility>

namespace xk {

enum Dtype { F32, F64, U32, U8, OTHER };

inline const char* dtype_name(Dtype d) {
    switch (d) {
        case F32: return "float32";
        case F64: return "float64";
        case U32: return "uint32";
        case U8: return "uint8";
        default: return "another dtype";
    }
}

// One array argument: its data, shape and strides (in elements, not bytes).
struct Array {
    char* data = nullptr;
    int ndim = 0;
    Py_ssize_t shape[4] = {0, 0, 0, 0};
    Py_ssize_t stride[4] = {0, 0, 0, 0};
    Dtype dtype = OTHER;
    Py_ssize_t size() const {
        Py_ssize_t s = 1;
        for (int k = 0; k < ndim; ++k) s *= shape[k];
        return s;
    }
    template <class T>
    T* ptr() const { return reinterpret_cast<T*>(data); }
};

inline Dtype dtype_of(const Py_buffer& v) {
    const char* f = v.format ? v.format : "B";
    if (*f == '@' || *f == '=' || *f == '<') ++f;
    switch (*f) {
        case 'f': return v.itemsize == 4 ? F32 : OTHER;
        case 'd': return v.itemsize == 8 ? F64 : OTHER;
        case 'I':
        case 'L': return v.itemsize == 4 ? U32 : OTHER;
        case 'B': return v.itemsize == 1 ? U8 : OTHER;
        default: return OTHER;
    }
}

class Call {
  public:
    Call(const char* kernel, PyObject* const* args, Py_ssize_t nargs, Py_ssize_t want)
        : kernel_(kernel), args_(args), nargs_(nargs) {
        if (nargs != want)
            fail(PyExc_TypeError, "expected %zd arguments, got %zd", want, nargs);
    }
    ~Call() {
        for (int k = 0; k < held_; ++k) PyBuffer_Release(&views_[k]);
    }
    Call(const Call&) = delete;
    Call& operator=(const Call&) = delete;

    bool ok() const { return !failed_; }

    // Argument i: an array of `ndim` dimensions (at most 4); C-contiguous unless `strided`; writable if `out`.
    Array array(Py_ssize_t i, const char* name, int ndim, bool out, bool strided = false) {
        Array a;
        if (failed_) return a;
        if (held_ == kMaxArrays) {
            fail(PyExc_RuntimeError, "too many array arguments");
            return a;
        }
        Py_buffer& v = views_[held_];
        int flags = (strided ? PyBUF_STRIDES : PyBUF_C_CONTIGUOUS) | PyBUF_FORMAT | (out ? PyBUF_WRITABLE : 0);
        if (PyObject_GetBuffer(args_[i], &v, flags) != 0) {
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            PyObject* why = value ? PyObject_Str(value) : nullptr;
            const char* text = why ? PyUnicode_AsUTF8(why) : "";
            fail(out ? PyExc_ValueError : PyExc_TypeError, "%s: expected a %s%sarray, got %s (%s)", name,
                 out ? "writable " : "", strided ? "" : "C-contiguous ", Py_TYPE(args_[i])->tp_name, text ? text : "");
            Py_XDECREF(why);
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(tb);
            return a;
        }
        ++held_;
        if (ndim == kAnyRank) {  // C-contiguous (asked for above): one flat run of elements
            a.data = static_cast<char*>(v.buf);
            a.dtype = dtype_of(v);
            a.ndim = 1;
            a.shape[0] = v.len / v.itemsize;
            a.stride[0] = 1;
            return a;
        }
        if (v.ndim != ndim) {
            fail(PyExc_ValueError, "%s: expected %d dimensions, got %d", name, ndim, v.ndim);
            return a;
        }
        a.data = static_cast<char*>(v.buf);
        a.ndim = ndim;
        a.dtype = dtype_of(v);
        Py_ssize_t step = 1;
        for (int k = ndim - 1; k >= 0; --k) {
            a.shape[k] = v.shape[k];
            if (v.strides) {
                if (v.strides[k] % v.itemsize != 0) {
                    fail(PyExc_ValueError, "%s: expected strides that are whole elements", name);
                    return a;
                }
                a.stride[k] = v.strides[k] / v.itemsize;
            } else {
                a.stride[k] = step;
            }
            step *= v.shape[k];
        }
        return a;
    }

    // Argument i: a C-contiguous array of any rank, seen flat (ndim 1, shape[0] its size).
    Array flat(Py_ssize_t i, const char* name, bool out) { return array(i, name, kAnyRank, out); }

    // Argument i as a C double (a Python or NumPy number).
    double real(Py_ssize_t i, const char* name) {
        if (failed_) return 0.0;
        double x = PyFloat_AsDouble(args_[i]);
        if (x == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            fail(PyExc_TypeError, "%s: expected a real number, got %s", name, Py_TYPE(args_[i])->tp_name);
        }
        return x;
    }

    // Argument i as a 64-bit integer.
    long long integer(Py_ssize_t i, const char* name) {
        if (failed_) return 0;
        long long x = PyLong_AsLongLong(args_[i]);
        if (x == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            fail(PyExc_TypeError, "%s: expected an integer, got %s", name, Py_TYPE(args_[i])->tp_name);
        }
        return x;
    }

    // Argument i as an unsigned 64-bit integer.
    uint64_t uint64(Py_ssize_t i, const char* name) {
        if (failed_) return 0;
        unsigned long long x = PyLong_AsUnsignedLongLong(args_[i]);
        if (x == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
            PyErr_Clear();
            fail(PyExc_TypeError, "%s: expected an integer in [0, 2**64), got %s", name, Py_TYPE(args_[i])->tp_name);
        }
        return x;
    }

    // `a` has dtype `want`.
    void dtype(const Array& a, const char* name, Dtype want) {
        if (!failed_ && a.dtype != want)
            fail(PyExc_TypeError, "%s: expected %s, got %s", name, dtype_name(want), dtype_name(a.dtype));
    }

    // `a` is float32 or float64 (the parameters' dtype, which picks the kernel's specialization).
    void real_dtype(const Array& a, const char* name) {
        if (!failed_ && a.dtype != F32 && a.dtype != F64)
            fail(PyExc_TypeError, "%s: expected float32 or float64, got %s", name, dtype_name(a.dtype));
    }

    // Dimension k of `a` is `n` (`what` says where n comes from, e.g. "the columns of a").
    void dim(const Array& a, const char* name, int k, Py_ssize_t n, const char* what) {
        if (!failed_ && a.shape[k] != n)
            fail(PyExc_ValueError, "%s: expected %zd (%s) in dimension %d, got %zd", name, n, what, k, a.shape[k]);
    }

    // `a` holds at least n elements.
    void at_least(const Array& a, const char* name, Py_ssize_t n, const char* what) {
        if (!failed_ && a.size() < n)
            fail(PyExc_ValueError, "%s: expected at least %zd elements (%s), got %zd", name, n, what, a.size());
    }

    // `a` has the shape of `like`.
    void same_shape(const Array& a, const char* name, const Array& like, const char* like_name) {
        for (int k = 0; k < like.ndim && !failed_; ++k)
            if (a.shape[k] != like.shape[k])
                fail(PyExc_ValueError, "%s: expected the shape of %s, got %zd instead of %zd in dimension %d", name,
                     like_name, a.shape[k], like.shape[k], k);
    }

    // A ValueError "kernel: <message>" unless `condition` holds.
    template <class... A>
    void require(bool condition, const char* format, A... values) {
        if (!failed_ && !condition) fail(PyExc_ValueError, format, values...);
    }

  private:
    template <class... A>
    void fail(PyObject* type, const char* format, A... values) {
        char message[512];
        std::snprintf(message, sizeof message, format, values...);
        PyErr_Format(type, "%s: %s", kernel_, message);
        failed_ = true;
    }

    static constexpr int kMaxArrays = 16;
    static constexpr int kAnyRank = -1;
    const char* kernel_;
    PyObject* const* args_;
    Py_ssize_t nargs_;
    Py_buffer views_[kMaxArrays];
    int held_ = 0;
    bool failed_ = false;
};

// Releases the GIL while a kernel runs over at least `kMinElements` elements (below that the
// release and the re-acquisition cost more than the other threads gain).
class Unlocked {
  public:
    static constexpr Py_ssize_t kMinElements = 1 << 15;
    explicit Unlocked(Py_ssize_t elements) : state_(elements >= kMinElements ? PyEval_SaveThread() : nullptr) {}
    ~Unlocked() {
        if (state_) PyEval_RestoreThread(state_);
    }
    Unlocked(const Unlocked&) = delete;
    Unlocked& operator=(const Unlocked&) = delete;

  private:
    PyThreadState* state_;
};

// The instruction sets a kernel module is compiled for, from the baseline up.
enum Isa { BASELINE = 0, AVX2 = 1, AVX512 = 2 };

inline const char* isa_name(Isa isa) {
    static const char* names[] = {"baseline", "avx2", "avx512"};
    return names[isa];
}

// The variant that runs: the best this CPU has, capped by XPDL_KERNEL_ISA ("baseline", "avx2" or
// "avx512"; the tests cap it to check that every variant gives the same bits). Decided once per process.
inline Isa isa() {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 8
    static const Isa chosen = [] {
        Isa best = BASELINE;
        if (__builtin_cpu_supports("avx2")) best = AVX2;
        if (best == AVX2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
            __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
            best = AVX512;
        const char* cap = std::getenv("XPDL_KERNEL_ISA");
        for (int k = BASELINE; cap && k <= AVX512; ++k)
            if (std::strcmp(cap, isa_name(static_cast<Isa>(k))) == 0 && k < best) best = static_cast<Isa>(k);
        return best;
    }();
    return chosen;
#else
    return BASELINE;
#endif
}

// A kernel's argument checks name arrays in lists: for (auto [arr, name] : Each{{&a, "a"}, {&b, "b"}}).
using Named = std::pair<Array*, const char*>;
using Each = std::initializer_list<Named>;

// instruction_set(): the variant this CPU runs ("baseline", "avx2" or "avx512"), for a module's table.
inline PyObject* instruction_set(PyObject*, PyObject*) { return PyUnicode_FromString(isa_name(isa())); }

}  // namespace xk

// A kernel module's function: KERNEL(name) { ... } defines py_name, called with the fast-call convention.
#define KERNEL(name) PyObject* py_##name(PyObject*, PyObject* const* args, Py_ssize_t nargs)

// A method-table entry for KERNEL(name), with its one-line doc.
#define XK_ENTRY(name, doc) \
    { #name, reinterpret_cast<PyCFunction>(reinterpret_cast<void*>(py_##name)), METH_FASTCALL, doc }

#define XK_INSTRUCTION_SET_ENTRY \
    { "instruction_set", xk::instruction_set, METH_NOARGS, "instruction_set(): the variant this CPU runs" }

// A kernel module compiles its body header once per instruction set through _isa_variants.h;
// XK_PICK(f) names the variant this CPU runs.
// (GCC 8 or newer on x86-64: the AVX-512 variant asks for prefer-vector-width)
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 8
#define XK_HAVE_ISA_VARIANTS 1
#define XK_PICK(...)                                                                 \
    (xk::isa() == xk::AVX512 ? avx512::__VA_ARGS__                                   \
                             : xk::isa() == xk::AVX2 ? avx2::__VA_ARGS__ : generic::__VA_ARGS__)
#else
#define XK_HAVE_ISA_VARIANTS 0
#define XK_PICK(...) (generic::__VA_ARGS__)
#endif
