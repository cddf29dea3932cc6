// xpdl.backends._cpu_kernels: the compiled kernels of xpdl.backends.cpu_kernels (which documents
// them), built when xpdl is installed. Each function checks its arguments (see _kernel_call.h),
// then runs the body (_cpu_kernels_body.h) for the parameters' dtype on this CPU's instruction set.
#include <initializer_list>
#include <type_traits>
#include <utility>
#include <vector>

#include "_kernel_call.h"

#define XK_BODY "_cpu_kernels_body.h"
#include "_isa_variants.h"

namespace {

using xk::Array;
using xk::Each;
using xk::Call;
using xk::F32;
using xk::F64;
using xk::U32;
using xk::U8;


// `words` (N, H) uint32 and `keep` (N, H) uint8, or both with no rows (no dropout).
bool dropout_arrays(Call& c, const Array& words, const Array& keep, const Array& like, const char* like_name) {
    c.dtype(words, "words", U32);
    c.dtype(keep, "keep", U8);
    bool dropout = words.shape[0] > 0;
    if (dropout) {
        c.same_shape(words, "words", like, like_name);
        c.same_shape(keep, "keep", like, like_name);
    }
    return dropout;
}

// Runs body(T{}) with T the C type of a float32 or float64 array.
template <class Body>
void by_dtype(xk::Dtype dtype, Body body) {
    if (dtype == F32) body(float{});
    else body(double{});
}

// Runs body(T{}, std::bool_constant<Dropout>{}) with T the dtype's C type and the dropout flag as a constant,
// so each kernel body is compiled for float32 and float64, with and without dropout.
template <class Body>
void by_dtype_and_dropout(xk::Dtype dtype, bool dropout, Body body) {
    if (dtype == F32) {
        if (dropout) body(float{}, std::true_type{});
        else body(float{}, std::false_type{});
    } else {
        if (dropout) body(double{}, std::true_type{});
        else body(double{}, std::false_type{});
    }
}

// The dropout threshold: a uint32 word below it keeps its element.
uint32_t threshold_argument(Call& c, Py_ssize_t i) {
    long long t = c.integer(i, "threshold");
    c.require(t >= 0 && t <= 0xFFFFFFFFLL, "threshold: expected an integer in [0, 2**32), got %lld", t);
    return static_cast<uint32_t>(t);
}

// A float64 scratch vector of n elements (the column accumulators).
std::vector<double> scratch(Py_ssize_t n) { return std::vector<double>(static_cast<size_t>(n > 0 ? n : 0)); }

KERNEL(column_sums) {
    Call c("column_sums", args, nargs, 2);
    Array a = c.array(0, "a", 2, false), out = c.array(1, "out", 1, true);
    c.real_dtype(a, "a");
    c.dtype(out, "out", F64);
    c.at_least(out, "out", a.shape[1], "the columns of a");
    if (!c.ok()) return nullptr;
    auto acc = scratch(a.shape[1]);
    xk::Unlocked u(a.size());
    by_dtype(a.dtype, [&](auto t) {
        using T = decltype(t);
        XK_PICK(column_sums<T>)(a.ptr<T>(), a.shape[0], a.shape[1], out.ptr<double>(), acc.data());
    });
    Py_RETURN_NONE;
}

KERNEL(column_squared_deviations) {
    Call c("column_squared_deviations", args, nargs, 3);
    Array a = c.array(0, "a", 2, false), mean = c.array(1, "mean", 1, false), out = c.array(2, "out", 1, true);
    c.real_dtype(a, "a");
    c.dtype(mean, "mean", F64);
    c.dtype(out, "out", F64);
    c.at_least(mean, "mean", a.shape[1], "the columns of a");
    c.at_least(out, "out", a.shape[1], "the columns of a");
    if (!c.ok()) return nullptr;
    auto acc = scratch(a.shape[1]);
    xk::Unlocked u(a.size());
    by_dtype(a.dtype, [&](auto t) {
        using T = decltype(t);
        XK_PICK(column_squared_deviations<T>)(a.ptr<T>(), a.shape[0], a.shape[1], mean.ptr<double>(),
                                              out.ptr<double>(), acc.data());
    });
    Py_RETURN_NONE;
}

template <class T, class R>
void run_bn_statistics(const Array& mean, const Array& sq, Py_ssize_t d, double count, const Array& b,
                       const Array& rm, const Array& rv, double momentum, double eps, const Array& inv_std) {
    XK_PICK(bn_statistics<T, R>)(mean.ptr<double>(), sq.ptr<double>(), d, count, b.ptr<T>(), rm.ptr<R>(),
                                   rv.ptr<R>(), momentum, eps, inv_std.ptr<double>());
}

KERNEL(bn_statistics) {
    Call c("bn_statistics", args, nargs, 9);
    Array mean = c.array(0, "mean", 1, false), sq = c.array(1, "sq_dev", 1, false);
    double count = c.real(2, "count");
    Array b = c.array(3, "b", 1, false), rm = c.array(4, "running_mean", 1, true),
          rv = c.array(5, "running_var", 1, true);
    double momentum = c.real(6, "momentum"), eps = c.real(7, "eps");
    Array inv_std = c.array(8, "inv_std", 1, true);
    c.dtype(mean, "mean", F64);
    c.dtype(sq, "sq_dev", F64);
    c.real_dtype(b, "b");
    c.real_dtype(rm, "running_mean");
    c.dtype(rv, "running_var", rm.dtype);
    c.dtype(inv_std, "inv_std", F64);
    Py_ssize_t d = mean.shape[0];
    c.at_least(sq, "sq_dev", d, "the length of mean");
    c.at_least(b, "b", d, "the length of mean");
    c.at_least(rm, "running_mean", d, "the length of mean");
    c.at_least(rv, "running_var", d, "the length of mean");
    c.at_least(inv_std, "inv_std", d, "the length of mean");
    if (!c.ok()) return nullptr;
    if (b.dtype == F32 && rm.dtype == F32)
        run_bn_statistics<float, float>(mean, sq, d, count, b, rm, rv, momentum, eps, inv_std);
    else if (b.dtype == F32)
        run_bn_statistics<float, double>(mean, sq, d, count, b, rm, rv, momentum, eps, inv_std);
    else if (rm.dtype == F32)
        run_bn_statistics<double, float>(mean, sq, d, count, b, rm, rv, momentum, eps, inv_std);
    else
        run_bn_statistics<double, double>(mean, sq, d, count, b, rm, rv, momentum, eps, inv_std);
    Py_RETURN_NONE;
}

KERNEL(bn_normalize_relu_dropout) {
    Call c("bn_normalize_relu_dropout", args, nargs, 11);
    Array a = c.array(0, "a", 2, false), mean = c.array(1, "mean", 1, false), inv_std = c.array(2, "inv_std", 1, false),
          gamma = c.array(3, "gamma", 1, false), beta = c.array(4, "beta", 1, false),
          words = c.array(5, "words", 2, false);
    uint32_t threshold = threshold_argument(c, 6);
    double scale = c.real(7, "scale");
    Array xhat = c.array(8, "xhat", 2, true), h = c.array(9, "h", 2, true), keep = c.array(10, "keep", 2, true);
    c.real_dtype(a, "a");
    Py_ssize_t n = a.shape[0], d = a.shape[1];
    c.dtype(mean, "mean", F64);
    c.dtype(inv_std, "inv_std", F64);
    for (auto [arr, name] : Each{{&gamma, "gamma"}, {&beta, "beta"}}) {
        c.dtype(*arr, name, a.dtype);
        c.at_least(*arr, name, d, "the columns of a");
    }
    c.at_least(mean, "mean", d, "the columns of a");
    c.at_least(inv_std, "inv_std", d, "the columns of a");
    for (auto [arr, name] : Each{{&xhat, "xhat"}, {&h, "h"}}) {
        c.dtype(*arr, name, a.dtype);
        c.same_shape(*arr, name, a, "a");
    }
    bool dropout = dropout_arrays(c, words, keep, a, "a");
    if (!c.ok()) return nullptr;
    xk::Unlocked u(a.size());
    by_dtype_and_dropout(a.dtype, dropout, [&](auto t, auto drop) {
        using T = decltype(t);
        XK_PICK(bn_normalize_relu_dropout<decltype(drop)::value, T>)(a.ptr<T>(), n, d, mean.ptr<double>(), inv_std.ptr<double>(), gamma.ptr<T>(), beta.ptr<T>(), words.ptr<uint32_t>(), threshold, scale, xhat.ptr<T>(), h.ptr<T>(), keep.ptr<uint8_t>());
    });
    Py_RETURN_NONE;
}

KERNEL(relu_dropout_bn_sums) {
    Call c("relu_dropout_bn_sums", args, nargs, 7);
    Array dh = c.array(0, "dh", 2, false), h = c.array(1, "h", 2, false), xhat = c.array(2, "xhat", 2, false),
          keep = c.array(3, "keep", 2, false);
    double scale = c.real(4, "scale");
    Array d = c.array(5, "d", 2, true), sums = c.array(6, "sums", 1, true);
    c.real_dtype(dh, "dh");
    Py_ssize_t n = dh.shape[0], m = dh.shape[1];
    for (auto [arr, name] : Each{{&h, "h"}, {&xhat, "xhat"}, {&d, "d"}}) {
        c.dtype(*arr, name, dh.dtype);
        c.same_shape(*arr, name, dh, "dh");
    }
    c.dtype(sums, "sums", F64);
    c.at_least(sums, "sums", 2 * m, "twice the columns of dh");
    bool dropout = keep.shape[0] > 0;
    if (!c.ok()) return nullptr;
    auto sum_d = scratch(m), sum_dx = scratch(m);
    xk::Unlocked u(dh.size());
    by_dtype_and_dropout(dh.dtype, dropout, [&](auto t, auto drop) {
        using T = decltype(t);
        XK_PICK(relu_dropout_bn_sums<decltype(drop)::value, T>)(dh.ptr<T>(), h.ptr<T>(), xhat.ptr<T>(), n, m, scale, d.ptr<T>(), sums.ptr<double>(), sum_d.data(), sum_dx.data());
    });
    Py_RETURN_NONE;
}

KERNEL(bn_input_grad) {
    Call c("bn_input_grad", args, nargs, 6);
    Array d = c.array(0, "d", 2, true), xhat = c.array(1, "xhat", 2, false), gamma = c.array(2, "gamma", 1, false),
          inv_std = c.array(3, "inv_std", 1, false);
    double count = c.real(4, "count");
    Array sums = c.array(5, "sums", 1, false);
    c.real_dtype(d, "d");
    Py_ssize_t n = d.shape[0], m = d.shape[1];
    c.dtype(xhat, "xhat", d.dtype);
    c.same_shape(xhat, "xhat", d, "d");
    c.dtype(gamma, "gamma", d.dtype);
    c.at_least(gamma, "gamma", m, "the columns of d");
    c.dtype(inv_std, "inv_std", F64);
    c.at_least(inv_std, "inv_std", m, "the columns of d");
    c.dtype(sums, "sums", F64);
    c.at_least(sums, "sums", 2 * m, "twice the columns of d");
    if (!c.ok()) return nullptr;
    auto coef = scratch(m);
    xk::Unlocked u(d.size());
    by_dtype(d.dtype, [&](auto t) {
        using T = decltype(t);
        XK_PICK(bn_input_grad<T>)(d.ptr<T>(), xhat.ptr<T>(), n, m, gamma.ptr<T>(), inv_std.ptr<double>(), count,
                                  sums.ptr<double>(), coef.data());
    });
    Py_RETURN_NONE;
}

KERNEL(bias_relu_dropout_forward) {
    Call c("bias_relu_dropout_forward", args, nargs, 7);
    Array a = c.array(0, "a", 2, false), b = c.array(1, "b", 1, false), words = c.array(2, "words", 2, false);
    uint32_t threshold = threshold_argument(c, 3);
    double scale = c.real(4, "scale");
    Array h = c.array(5, "h", 2, true), keep = c.array(6, "keep", 2, true);
    c.real_dtype(a, "a");
    Py_ssize_t n = a.shape[0], d = a.shape[1];
    c.dtype(b, "b", a.dtype);
    c.at_least(b, "b", d, "the columns of a");
    c.dtype(h, "h", a.dtype);
    c.same_shape(h, "h", a, "a");
    bool dropout = dropout_arrays(c, words, keep, a, "a");
    if (!c.ok()) return nullptr;
    xk::Unlocked u(a.size());
    by_dtype_and_dropout(a.dtype, dropout, [&](auto t, auto drop) {
        using T = decltype(t);
        XK_PICK(bias_relu_dropout_forward<decltype(drop)::value, T>)(a.ptr<T>(), b.ptr<T>(), n, d, words.ptr<uint32_t>(), threshold, scale, h.ptr<T>(), keep.ptr<uint8_t>());
    });
    Py_RETURN_NONE;
}

KERNEL(relu_dropout_backward) {
    Call c("relu_dropout_backward", args, nargs, 6);
    Array dh = c.array(0, "dh", 2, false), h = c.array(1, "h", 2, false), keep = c.array(2, "keep", 2, false);
    double scale = c.real(3, "scale");
    Array da = c.array(4, "da", 2, true), db = c.array(5, "db", 1, true);
    c.real_dtype(dh, "dh");
    Py_ssize_t n = dh.shape[0], m = dh.shape[1];
    for (auto [arr, name] : Each{{&h, "h"}, {&da, "da"}}) {
        c.dtype(*arr, name, dh.dtype);
        c.same_shape(*arr, name, dh, "dh");
    }
    c.dtype(db, "db", dh.dtype);
    c.at_least(db, "db", m, "the columns of dh");
    bool dropout = keep.shape[0] > 0;
    if (!c.ok()) return nullptr;
    auto col = scratch(m);
    xk::Unlocked u(dh.size());
    by_dtype_and_dropout(dh.dtype, dropout, [&](auto t, auto drop) {
        using T = decltype(t);
        XK_PICK(relu_dropout_backward<decltype(drop)::value, T>)(dh.ptr<T>(), h.ptr<T>(), n, m, scale, da.ptr<T>(), db.ptr<T>(), col.data());
    });
    Py_RETURN_NONE;
}

KERNEL(ln_relu_dropout_forward) {
    Call c("ln_relu_dropout_forward", args, nargs, 12);
    Array a = c.array(0, "a", 2, false), b = c.array(1, "b", 1, false), gamma = c.array(2, "gamma", 1, false),
          beta = c.array(3, "beta", 1, false);
    double eps = c.real(4, "eps");
    Array words = c.array(5, "words", 2, false);
    uint32_t threshold = threshold_argument(c, 6);
    double scale = c.real(7, "scale");
    Array xhat = c.array(8, "xhat", 2, true), h = c.array(9, "h", 2, true), keep = c.array(10, "keep", 2, true),
          inv_std = c.array(11, "inv_std", 1, true);
    c.real_dtype(a, "a");
    Py_ssize_t n = a.shape[0], d = a.shape[1];
    for (auto [arr, name] : Each{{&b, "b"}, {&gamma, "gamma"}, {&beta, "beta"}}) {
        c.dtype(*arr, name, a.dtype);
        c.at_least(*arr, name, d, "the columns of a");
    }
    for (auto [arr, name] : Each{{&xhat, "xhat"}, {&h, "h"}}) {
        c.dtype(*arr, name, a.dtype);
        c.same_shape(*arr, name, a, "a");
    }
    c.dtype(inv_std, "inv_std", F64);
    c.at_least(inv_std, "inv_std", n, "the rows of a");
    bool dropout = dropout_arrays(c, words, keep, a, "a");
    if (!c.ok()) return nullptr;
    xk::Unlocked u(a.size());
    by_dtype_and_dropout(a.dtype, dropout, [&](auto t, auto drop) {
        using T = decltype(t);
        XK_PICK(ln_relu_dropout_forward<decltype(drop)::value, T>)(a.ptr<T>(), b.ptr<T>(), n, d, gamma.ptr<T>(), beta.ptr<T>(), eps, words.ptr<uint32_t>(), threshold, scale, xhat.ptr<T>(), h.ptr<T>(), keep.ptr<uint8_t>(), inv_std.ptr<double>());
    });
    Py_RETURN_NONE;
}

KERNEL(ln_relu_dropout_backward) {
    Call c("ln_relu_dropout_backward", args, nargs, 11);
    Array dh = c.array(0, "dh", 2, false), h = c.array(1, "h", 2, false), xhat = c.array(2, "xhat", 2, false),
          gamma = c.array(3, "gamma", 1, false), inv_std = c.array(4, "inv_std", 1, false),
          keep = c.array(5, "keep", 2, false);
    double scale = c.real(6, "scale");
    Array da = c.array(7, "da", 2, true), dgamma = c.array(8, "dgamma", 1, true), dbeta = c.array(9, "dbeta", 1, true),
          db = c.array(10, "db", 1, true);
    c.real_dtype(dh, "dh");
    Py_ssize_t n = dh.shape[0], m = dh.shape[1];
    for (auto [arr, name] : Each{{&h, "h"}, {&xhat, "xhat"}, {&da, "da"}}) {
        c.dtype(*arr, name, dh.dtype);
        c.same_shape(*arr, name, dh, "dh");
    }
    for (auto [arr, name] : Each{{&gamma, "gamma"}, {&dgamma, "dgamma"}, {&dbeta, "dbeta"}, {&db, "db"}}) {
        c.dtype(*arr, name, dh.dtype);
        c.at_least(*arr, name, m, "the columns of dh");
    }
    c.dtype(inv_std, "inv_std", F64);
    c.at_least(inv_std, "inv_std", n, "the rows of dh");
    bool dropout = keep.shape[0] > 0;
    if (!c.ok()) return nullptr;
    auto col_d = scratch(m), col_dx = scratch(m), col_da = scratch(m);
    xk::Unlocked u(dh.size());
    by_dtype_and_dropout(dh.dtype, dropout, [&](auto t, auto drop) {
        using T = decltype(t);
        XK_PICK(ln_relu_dropout_backward<decltype(drop)::value, T>)(dh.ptr<T>(), h.ptr<T>(), xhat.ptr<T>(), n, m, gamma.ptr<T>(), inv_std.ptr<double>(), scale, da.ptr<T>(), dgamma.ptr<T>(), dbeta.ptr<T>(), db.ptr<T>(), col_d.data(), col_dx.data(), col_da.data());
    });
    Py_RETURN_NONE;
}

// The update rules: `w`, `g` and the state, C-contiguous arrays of one dtype and size (any shape, seen
// flat), then `scalars` numbers, rounded to that dtype (as NumPy rounds a float to float32).
struct Update {
    Array arrays[4];
    double scalars[8];
};

bool update_arguments(Call& c, int n_arrays, int n_scalars, Update& u) {
    static const char* names[4] = {"w", "g", "state 1", "state 2"};
    for (int k = 0; k < n_arrays; ++k) u.arrays[k] = c.flat(k, names[k], k != 1);
    c.real_dtype(u.arrays[0], "w");
    for (int k = 1; k < n_arrays; ++k) {
        c.dtype(u.arrays[k], names[k], u.arrays[0].dtype);
        c.require(u.arrays[k].shape[0] == u.arrays[0].shape[0], "%s: expected %zd elements (the size of w), got %zd",
                  names[k], u.arrays[0].shape[0], u.arrays[k].shape[0]);
    }
    for (int k = 0; k < n_scalars; ++k) u.scalars[k] = c.real(n_arrays + k, "a scalar");
    return c.ok();
}

template <class T>
T* at(const Update& u, int k) {
    return u.arrays[k].ptr<T>();
}

template <class T>
void run_adam(const Update& u) {
    const double* s = u.scalars;
    XK_PICK(adam_update<T>)(at<T>(u, 0), at<T>(u, 1), at<T>(u, 2), at<T>(u, 3), u.arrays[0].shape[0], T(s[0]),
                            T(s[1]), T(s[2]), T(s[3]), T(s[4]), T(s[5]), T(s[6]));
}

template <class T>
void run_adamw(const Update& u) {
    const double* s = u.scalars;
    XK_PICK(adamw_update<T>)(at<T>(u, 0), at<T>(u, 1), at<T>(u, 2), at<T>(u, 3), u.arrays[0].shape[0], T(s[0]),
                             T(s[1]), T(s[2]), T(s[3]), T(s[4]), T(s[5]), T(s[6]), T(s[7]));
}

template <class T>
void run_sgd(const Update& u) {
    XK_PICK(sgd_update<T>)(at<T>(u, 0), at<T>(u, 1), u.arrays[0].shape[0], T(u.scalars[0]));
}

template <class T>
void run_momentum(const Update& u) {
    XK_PICK(momentum_update<T>)(at<T>(u, 0), at<T>(u, 1), at<T>(u, 2), u.arrays[0].shape[0], T(u.scalars[0]),
                                T(u.scalars[1]));
}

template <class T>
void run_rmsprop(const Update& u) {
    const double* s = u.scalars;
    XK_PICK(rmsprop_update<T>)(at<T>(u, 0), at<T>(u, 1), at<T>(u, 2), u.arrays[0].shape[0], T(s[0]), T(s[1]),
                               T(s[2]), T(s[3]));
}

template <void (*F32Run)(const Update&), void (*F64Run)(const Update&)>
PyObject* update(const char* name, int n_arrays, int n_scalars, PyObject* const* args, Py_ssize_t nargs) {
    Call c(name, args, nargs, n_arrays + n_scalars);
    Update u;
    if (!update_arguments(c, n_arrays, n_scalars, u)) return nullptr;
    xk::Unlocked unlocked(u.arrays[0].size());
    (u.arrays[0].dtype == F32 ? F32Run : F64Run)(u);
    Py_RETURN_NONE;
}

KERNEL(adam_update) { return update<run_adam<float>, run_adam<double>>("adam_update", 4, 7, args, nargs); }
KERNEL(adamw_update) { return update<run_adamw<float>, run_adamw<double>>("adamw_update", 4, 8, args, nargs); }
KERNEL(sgd_update) { return update<run_sgd<float>, run_sgd<double>>("sgd_update", 2, 1, args, nargs); }
KERNEL(momentum_update) {
    return update<run_momentum<float>, run_momentum<double>>("momentum_update", 3, 2, args, nargs);
}
KERNEL(rmsprop_update) { return update<run_rmsprop<float>, run_rmsprop<double>>("rmsprop_update", 3, 4, args, nargs); }

KERNEL(philox_uint32) {
    Call c("philox_uint32", args, nargs, 7);
    uint64_t k0 = c.uint64(0, "key_lo"), k1 = c.uint64(1, "key_hi");
    uint64_t counter[4] = {c.uint64(2, "counter0"), c.uint64(3, "counter1"), c.uint64(4, "counter2"),
                           c.uint64(5, "counter3")};
    Array out = c.array(6, "out", 1, true);
    c.dtype(out, "out", U32);
    if (!c.ok()) return nullptr;
    xk::Unlocked u(out.size());
    XK_PICK(philox_words)(k0, k1, counter, out.ptr<uint32_t>(), out.size());
    Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    XK_ENTRY(column_sums, "column_sums(a, out): out[j] += sum_i a[i, j]"),
    XK_ENTRY(column_squared_deviations, "column_squared_deviations(a, mean, out): out[j] += sum_i (a[i, j] - mean[j])**2"),
    XK_ENTRY(bn_statistics,
          "bn_statistics(mean, sq_dev, count, b, running_mean, running_var, momentum, eps, inv_std)"),
    XK_ENTRY(bn_normalize_relu_dropout,
          "bn_normalize_relu_dropout(a, mean, inv_std, gamma, beta, words, threshold, scale, xhat, h, keep)"),
    XK_ENTRY(relu_dropout_bn_sums, "relu_dropout_bn_sums(dh, h, xhat, keep, scale, d, sums)"),
    XK_ENTRY(bn_input_grad, "bn_input_grad(d, xhat, gamma, inv_std, count, sums)"),
    XK_ENTRY(bias_relu_dropout_forward, "bias_relu_dropout_forward(a, b, words, threshold, scale, h, keep)"),
    XK_ENTRY(relu_dropout_backward, "relu_dropout_backward(dh, h, keep, scale, da, db)"),
    XK_ENTRY(ln_relu_dropout_forward,
          "ln_relu_dropout_forward(a, b, gamma, beta, eps, words, threshold, scale, xhat, h, keep, inv_std)"),
    XK_ENTRY(ln_relu_dropout_backward,
          "ln_relu_dropout_backward(dh, h, xhat, gamma, inv_std, keep, scale, da, dgamma, dbeta, db)"),
    XK_ENTRY(adam_update, "adam_update(w, g, m, v, step, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, inv_c2)"),
    XK_ENTRY(adamw_update, "adamw_update(w, g, m, v, decay, step, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, "
                        "inv_sqrt_c2)"),
    XK_ENTRY(sgd_update, "sgd_update(w, g, lr)"),
    XK_ENTRY(momentum_update, "momentum_update(w, g, vel, lr, mu)"),
    XK_ENTRY(rmsprop_update, "rmsprop_update(w, g, cache, lr, decay, one_minus_decay, eps)"),
    XK_ENTRY(philox_uint32, "philox_uint32(key_lo, key_hi, counter0, counter1, counter2, counter3, out): dropout words"),
    XK_INSTRUCTION_SET_ENTRY,
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cpu_kernels",
                      "Compiled kernels of xpdl.backends.cpu_kernels (see there).", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__cpu_kernels(void) { return PyModule_Create(&module); }
