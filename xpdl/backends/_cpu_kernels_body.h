// The fully-connected step's kernels (xpdl.backends.cpu_kernels documents each one), over
// C-contiguous arrays: `T` is the parameters' dtype (float or double), statistics are double.
// Each loop does the reference's operations in the reference's order and types: a float32
// value meets a float64 one in double, as NumPy promotes them. No include guard: the module
// includes this file once per instruction set (see _kernel_call.h).

// ReLU of one pre-activation, as `if y < 0: y = 0` (NaN and -0.0 pass).
static inline double relu(double y) { return y < 0 ? 0.0 : y; }

// Inverted dropout of one value: kept, scaled by 1/p, when its word is below `threshold`; records the bit.
static inline double dropout_one(double y, uint32_t word, uint32_t threshold, double scale, uint8_t& keep) {
    bool k = word < threshold;
    keep = k;
    return k ? y * scale : 0.0;
}

// Gradient through relu then dropout: dh passes (scaled by 1/p with dropout) exactly where h > 0.
template <bool Dropout, class T>
static inline double relu_dropout_grad(T dh, T h, double scale) {
    double g = h > 0 ? static_cast<double>(dh) : 0.0;
    if constexpr (Dropout) g = g * scale;
    return g;
}

// Row i of an (N, H) array.
template <class T>
static inline T* row_of(T* a, Py_ssize_t i, Py_ssize_t width) {
    return a + i * width;
}

template <class T>
void column_sums(const T* a, Py_ssize_t n, Py_ssize_t d, double* out, double* __restrict acc) {
    for (Py_ssize_t j = 0; j < d; ++j) acc[j] = 0.0;
    for (Py_ssize_t i = 0; i < n; ++i) {
        const T* __restrict row = row_of(a, i, d);
        for (Py_ssize_t j = 0; j < d; ++j) acc[j] += row[j];
    }
    for (Py_ssize_t j = 0; j < d; ++j) out[j] += acc[j];
}

template <class T>
void column_squared_deviations(const T* a, Py_ssize_t n, Py_ssize_t d, const double* mean, double* out,
                               double* __restrict acc) {
    for (Py_ssize_t j = 0; j < d; ++j) acc[j] = 0.0;
    for (Py_ssize_t i = 0; i < n; ++i) {
        const T* __restrict row = row_of(a, i, d);
        for (Py_ssize_t j = 0; j < d; ++j) {
            double t = row[j] - mean[j];
            acc[j] += t * t;
        }
    }
    for (Py_ssize_t j = 0; j < d; ++j) out[j] += acc[j];
}

template <class T, class R>
void bn_statistics(const double* mean, const double* sq_dev, Py_ssize_t d, double count, const T* b,
                   R* running_mean, R* running_var, double momentum, double eps, double* inv_std) {
    for (Py_ssize_t j = 0; j < d; ++j) {
        double var = sq_dev[j] / count;
        inv_std[j] = 1.0 / std::sqrt(var + eps);
        running_mean[j] = momentum * running_mean[j] + (1.0 - momentum) * (mean[j] + b[j]);
        running_var[j] = momentum * running_var[j] + (1.0 - momentum) * var;
    }
}

template <bool Dropout, class T>
void bn_normalize_relu_dropout(const T* a, Py_ssize_t n, Py_ssize_t d, const double* __restrict mean,
                               const double* __restrict inv_std, const T* __restrict gamma, const T* __restrict beta,
                               const uint32_t* words, uint32_t threshold, double scale, T* xhat, T* h,
                               uint8_t* keep) {
    for (Py_ssize_t i = 0; i < n; ++i) {
        const T* __restrict ar = row_of(a, i, d);
        T* __restrict xr = row_of(xhat, i, d);
        T* __restrict hr = row_of(h, i, d);
        const uint32_t* __restrict wr = Dropout ? row_of(words, i, d) : nullptr;
        uint8_t* __restrict kr = Dropout ? row_of(keep, i, d) : nullptr;
        for (Py_ssize_t j = 0; j < d; ++j) {
            double xh = (ar[j] - mean[j]) * inv_std[j];
            xr[j] = static_cast<T>(xh);
            double y = relu(gamma[j] * xh + beta[j]);
            if constexpr (Dropout) y = dropout_one(y, wr[j], threshold, scale, kr[j]);
            hr[j] = static_cast<T>(y);
        }
    }
}

template <bool Dropout, class T>
void relu_dropout_bn_sums(const T* dh, const T* h, const T* xhat, Py_ssize_t n, Py_ssize_t m, double scale, T* d,
                          double* sums, double* __restrict sum_d, double* __restrict sum_dx) {
    for (Py_ssize_t j = 0; j < m; ++j) sum_d[j] = sum_dx[j] = 0.0;
    for (Py_ssize_t i = 0; i < n; ++i) {
        const T* __restrict dr = row_of(dh, i, m);
        const T* __restrict hr = row_of(h, i, m);
        const T* __restrict xr = row_of(xhat, i, m);
        T* __restrict out = row_of(d, i, m);
        for (Py_ssize_t j = 0; j < m; ++j) {
            double g = relu_dropout_grad<Dropout>(dr[j], hr[j], scale);
            out[j] = static_cast<T>(g);
            sum_d[j] += g;
            sum_dx[j] += g * xr[j];
        }
    }
    for (Py_ssize_t j = 0; j < m; ++j) {
        sums[j] += sum_d[j];
        sums[m + j] += sum_dx[j];
    }
}

template <class T>
void bn_input_grad(T* d, const T* xhat, Py_ssize_t n, Py_ssize_t m, const T* gamma, const double* inv_std,
                   double count, const double* sums, double* __restrict coef) {
    const double* __restrict sum_d = sums;
    const double* __restrict sum_dx = sums + m;
    for (Py_ssize_t j = 0; j < m; ++j) coef[j] = gamma[j] * inv_std[j] / count;
    for (Py_ssize_t i = 0; i < n; ++i) {
        T* __restrict row = row_of(d, i, m);
        const T* __restrict xrow = row_of(xhat, i, m);
        for (Py_ssize_t j = 0; j < m; ++j)
            row[j] = static_cast<T>(coef[j] * (count * row[j] - sum_d[j] - xrow[j] * sum_dx[j]));
    }
}

template <bool Dropout, class T>
void bias_relu_dropout_forward(const T* a, const T* __restrict b, Py_ssize_t n, Py_ssize_t d, const uint32_t* words,
                               uint32_t threshold, double scale, T* h, uint8_t* keep) {
    for (Py_ssize_t i = 0; i < n; ++i) {
        const T* __restrict ar = row_of(a, i, d);
        T* __restrict hr = row_of(h, i, d);
        const uint32_t* __restrict wr = Dropout ? row_of(words, i, d) : nullptr;
        uint8_t* __restrict kr = Dropout ? row_of(keep, i, d) : nullptr;
        for (Py_ssize_t j = 0; j < d; ++j) {
            T sum = ar[j] + b[j];  // in T, as NumPy adds two float32 arrays
            double y = relu(sum);
            if constexpr (Dropout) y = dropout_one(y, wr[j], threshold, scale, kr[j]);
            hr[j] = static_cast<T>(y);
        }
    }
}

template <bool Dropout, class T>
void relu_dropout_backward(const T* dh, const T* h, Py_ssize_t n, Py_ssize_t m, double scale, T* da, T* db,
                           double* __restrict col) {
    for (Py_ssize_t j = 0; j < m; ++j) col[j] = 0.0;
    for (Py_ssize_t i = 0; i < n; ++i) {
        const T* __restrict dr = row_of(dh, i, m);
        const T* __restrict hr = row_of(h, i, m);
        T* __restrict out = row_of(da, i, m);
        for (Py_ssize_t j = 0; j < m; ++j) {
            double g = relu_dropout_grad<Dropout>(dr[j], hr[j], scale);
            out[j] = static_cast<T>(g);
            col[j] += g;
        }
    }
    for (Py_ssize_t j = 0; j < m; ++j) db[j] = static_cast<T>(col[j]);
}

template <bool Dropout, class T>
void ln_relu_dropout_forward(const T* a, const T* __restrict b, Py_ssize_t n, Py_ssize_t d, const T* __restrict gamma,
                             const T* __restrict beta, double eps, const uint32_t* words, uint32_t threshold,
                             double scale, T* xhat, T* h, uint8_t* keep, double* inv_std) {
    for (Py_ssize_t i = 0; i < n; ++i) {
        const T* __restrict row = row_of(a, i, d);
        T* __restrict xr = row_of(xhat, i, d);
        T* __restrict hr = row_of(h, i, d);
        const uint32_t* __restrict wr = Dropout ? row_of(words, i, d) : nullptr;
        uint8_t* __restrict kr = Dropout ? row_of(keep, i, d) : nullptr;
        double mean = 0.0;
        for (Py_ssize_t j = 0; j < d; ++j) mean += static_cast<T>(row[j] + b[j]);
        mean /= d;
        double var = 0.0;
        for (Py_ssize_t j = 0; j < d; ++j) {
            double t = static_cast<T>(row[j] + b[j]) - mean;
            var += t * t;
        }
        double r = 1.0 / std::sqrt(var / d + eps);
        inv_std[i] = r;
        for (Py_ssize_t j = 0; j < d; ++j) {
            double xh = (static_cast<T>(row[j] + b[j]) - mean) * r;
            xr[j] = static_cast<T>(xh);
            double y = relu(gamma[j] * xh + beta[j]);
            if constexpr (Dropout) y = dropout_one(y, wr[j], threshold, scale, kr[j]);
            hr[j] = static_cast<T>(y);
        }
    }
}

template <bool Dropout, class T>
void ln_relu_dropout_backward(const T* dh, const T* h, const T* xhat, Py_ssize_t n, Py_ssize_t m,
                              const T* __restrict gamma, const double* inv_std, double scale, T* da, T* dgamma,
                              T* dbeta, T* db, double* __restrict col_d, double* __restrict col_dx,
                              double* __restrict col_da) {
    for (Py_ssize_t j = 0; j < m; ++j) col_d[j] = col_dx[j] = col_da[j] = 0.0;
    for (Py_ssize_t i = 0; i < n; ++i) {
        const T* __restrict dr = row_of(dh, i, m);
        const T* __restrict hr = row_of(h, i, m);
        const T* __restrict xr = row_of(xhat, i, m);
        T* __restrict out = row_of(da, i, m);
        double sum_d = 0.0, sum_dx = 0.0;
        for (Py_ssize_t j = 0; j < m; ++j) {
            double g = relu_dropout_grad<Dropout>(dr[j], hr[j], scale);
            col_d[j] += g;
            col_dx[j] += g * xr[j];
            double dxh = g * gamma[j];
            out[j] = static_cast<T>(dxh);
            sum_d += dxh;
            sum_dx += dxh * xr[j];
        }
        double r = inv_std[i] / m;
        for (Py_ssize_t j = 0; j < m; ++j) {
            double v = r * (static_cast<double>(m) * out[j] - sum_d - xr[j] * sum_dx);
            out[j] = static_cast<T>(v);
            col_da[j] += v;
        }
    }
    for (Py_ssize_t j = 0; j < m; ++j) {
        dbeta[j] = static_cast<T>(col_d[j]);
        dgamma[j] = static_cast<T>(col_dx[j]);
        db[j] = static_cast<T>(col_da[j]);
    }
}

// The update rules, in place over flat arrays, in T arithmetic (the scalars come in T).
template <class T>
void adam_update(T* __restrict w, const T* __restrict g, T* __restrict m, T* __restrict v, Py_ssize_t size, T step, T beta1, T one_minus_beta1, T beta2,
                 T one_minus_beta2, T eps, T inv_c2) {
    for (Py_ssize_t i = 0; i < size; ++i) {
        T gi = g[i];
        T mi = beta1 * m[i] + one_minus_beta1 * gi;
        T vi = beta2 * v[i] + one_minus_beta2 * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        w[i] = w[i] - step * mi / (std::sqrt(vi * inv_c2) + eps);
    }
}

template <class T>
void adamw_update(T* __restrict w, const T* __restrict g, T* __restrict m, T* __restrict v, Py_ssize_t size, T decay, T step, T beta1, T one_minus_beta1, T beta2,
                  T one_minus_beta2, T eps, T inv_sqrt_c2) {
    for (Py_ssize_t i = 0; i < size; ++i) {
        T gi = g[i];
        T mi = beta1 * m[i] + one_minus_beta1 * gi;
        T vi = beta2 * v[i] + one_minus_beta2 * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        w[i] = w[i] * decay - step * mi / (std::sqrt(vi) * inv_sqrt_c2 + eps);
    }
}

template <class T>
void sgd_update(T* __restrict w, const T* __restrict g, Py_ssize_t size, T lr) {
    for (Py_ssize_t i = 0; i < size; ++i) w[i] = w[i] - lr * g[i];
}

template <class T>
void momentum_update(T* __restrict w, const T* __restrict g, T* __restrict vel, Py_ssize_t size, T lr, T mu) {
    for (Py_ssize_t i = 0; i < size; ++i) {
        T vi = mu * vel[i] - lr * g[i];
        vel[i] = vi;
        w[i] = w[i] + vi;
    }
}

template <class T>
void rmsprop_update(T* __restrict w, const T* __restrict g, T* __restrict cache, Py_ssize_t size, T lr, T decay, T one_minus_decay, T eps) {
    for (Py_ssize_t i = 0; i < size; ++i) {
        T gi = g[i];
        T ci = decay * cache[i] + one_minus_decay * (gi * gi);
        cache[i] = ci;
        w[i] = w[i] - lr * gi / (std::sqrt(ci) + eps);
    }
}

// The words of dropout: Philox4x64-10 (xpdl.rng.philox4x64_numpy, the same step by step) of the
// 256-bit counters counter + 1 + j (c[0] lowest), j = 0, 1, ...; block j's four 64-bit outputs give
// out[8j .. 8j+7] as (low, high) 32-bit halves, the layout of NumPy's Philox random_raw viewed as <u4.
static inline void mulhilo(uint64_t a, uint64_t b, uint64_t& lo, uint64_t& hi) {
#if defined(__SIZEOF_INT128__)
    unsigned __int128 p = static_cast<unsigned __int128>(a) * b;
    lo = static_cast<uint64_t>(p);
    hi = static_cast<uint64_t>(p >> 64);
#else  // no 128-bit integers (MSVC): four 32-bit products, as xpdl.rng._mulhilo64
    uint64_t a_lo = a & 0xFFFFFFFFu, a_hi = a >> 32, b_lo = b & 0xFFFFFFFFu, b_hi = b >> 32;
    uint64_t ll = a_lo * b_lo, lh = a_lo * b_hi, hl = a_hi * b_lo, hh = a_hi * b_hi;
    uint64_t mid = (ll >> 32) + (lh & 0xFFFFFFFFu) + (hl & 0xFFFFFFFFu);
    hi = hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
    lo = a * b;
#endif
}

// Philox4x64-10 of the counter x[0..3] under key (k0, k1), in place.
static inline void philox_rounds(uint64_t x[4], uint64_t k0, uint64_t k1) {
    for (int r = 0; r < 10; ++r) {
        if (r) {
            k0 += 0x9E3779B97F4A7C15ULL;
            k1 += 0xBB67AE8584CAA73BULL;
        }
        uint64_t lo0, hi0, lo1, hi1;
        mulhilo(0xD2E7470EE14C6C93ULL, x[0], lo0, hi0);
        mulhilo(0xCA5A826395121157ULL, x[2], lo1, hi1);
        uint64_t y0 = hi1 ^ x[1] ^ k0, y2 = hi0 ^ x[3] ^ k1;
        x[0] = y0;
        x[1] = lo1;
        x[2] = y2;
        x[3] = lo0;
    }
}

static inline void philox_words(uint64_t k0, uint64_t k1, const uint64_t counter[4], uint32_t* out, Py_ssize_t n) {
    uint64_t c[4] = {counter[0], counter[1], counter[2], counter[3]};
    for (Py_ssize_t start = 0; start < n; start += 8) {
        for (int w = 0; w < 4 && ++c[w] == 0; ++w) {  // the 256-bit counter + 1, carrying (wraps at 2**256)
        }
        uint64_t x[4] = {c[0], c[1], c[2], c[3]};
        philox_rounds(x, k0, k1);
        for (int w = 0; w < 8 && start + w < n; ++w) out[start + w] = static_cast<uint32_t>(x[w / 2] >> (32 * (w % 2)));
    }
}
