// The fully-connected step's kernels (xpdl.backends.cpu_kernels documents each one), over
// C-contiguous arrays: `T` is the parameters' dtype (float or double), statistics are double.
// Each loop does the reference's operations in the reference's order and types: a float32
// value meets a float64 one in double, as NumPy promotes them. No include guard: the module
// includes this file once per instruction set (see _kernel_call.h).

// ReLU, then inverted dropout, of one pre-activation y; records the keep bit.
static inline double relu_dropout(double y, Py_ssize_t at, bool dropout, const uint32_t* words, long long threshold,
                                  double scale, uint8_t* keep) {
    if (y < 0) y = 0.0;
    if (dropout) {
        bool k = words[at] < threshold;
        keep[at] = k;
        y = k ? y * scale : 0.0;
    }
    return y;
}

// Gradient through relu_dropout: dh passes (scaled by 1/p) exactly where h > 0.
template <class T>
static inline double relu_dropout_grad(T dh, T h, bool dropout, double scale) {
    double g = h > 0 ? static_cast<double>(dh) : 0.0;
    if (dropout) g = g * scale;
    return g;
}

template <class T>
void column_sums(const T* a, Py_ssize_t n, Py_ssize_t d, double* out, double* acc) {
    for (Py_ssize_t j = 0; j < d; ++j) acc[j] = 0.0;
    for (Py_ssize_t i = 0; i < n; ++i) {
        const T* row = a + i * d;
        for (Py_ssize_t j = 0; j < d; ++j) acc[j] += row[j];
    }
    for (Py_ssize_t j = 0; j < d; ++j) out[j] += acc[j];
}

template <class T>
void column_squared_deviations(const T* a, Py_ssize_t n, Py_ssize_t d, const double* mean, double* out,
                               double* acc) {
    for (Py_ssize_t j = 0; j < d; ++j) acc[j] = 0.0;
    for (Py_ssize_t i = 0; i < n; ++i) {
        const T* row = a + i * d;
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

template <class T>
void bn_normalize_relu_dropout(const T* a, Py_ssize_t n, Py_ssize_t d, const double* mean, const double* inv_std,
                               const T* gamma, const T* beta, const uint32_t* words, long long threshold,
                               double scale, T* xhat, T* h, uint8_t* keep, bool dropout) {
    for (Py_ssize_t i = 0; i < n; ++i) {
        for (Py_ssize_t j = 0; j < d; ++j) {
            Py_ssize_t at = i * d + j;
            double xh = (a[at] - mean[j]) * inv_std[j];
            xhat[at] = static_cast<T>(xh);
            h[at] = static_cast<T>(relu_dropout(gamma[j] * xh + beta[j], at, dropout, words, threshold, scale, keep));
        }
    }
}

template <class T>
void relu_dropout_bn_sums(const T* dh, const T* h, const T* xhat, Py_ssize_t n, Py_ssize_t m, bool dropout,
                          double scale, T* d, double* sums, double* sum_d, double* sum_dx) {
    for (Py_ssize_t j = 0; j < m; ++j) sum_d[j] = sum_dx[j] = 0.0;
    for (Py_ssize_t i = 0; i < n; ++i) {
        for (Py_ssize_t j = 0; j < m; ++j) {
            Py_ssize_t at = i * m + j;
            double g = relu_dropout_grad(dh[at], h[at], dropout, scale);
            d[at] = static_cast<T>(g);
            sum_d[j] += g;
            sum_dx[j] += g * xhat[at];
        }
    }
    for (Py_ssize_t j = 0; j < m; ++j) {
        sums[j] += sum_d[j];
        sums[m + j] += sum_dx[j];
    }
}

template <class T>
void bn_input_grad(T* d, const T* xhat, Py_ssize_t n, Py_ssize_t m, const T* gamma, const double* inv_std,
                   double count, const double* sums, double* coef) {
    const double* sum_d = sums;
    const double* sum_dx = sums + m;
    for (Py_ssize_t j = 0; j < m; ++j) coef[j] = gamma[j] * inv_std[j] / count;
    for (Py_ssize_t i = 0; i < n; ++i) {
        T* row = d + i * m;
        const T* xrow = xhat + i * m;
        for (Py_ssize_t j = 0; j < m; ++j)
            row[j] = static_cast<T>(coef[j] * (count * row[j] - sum_d[j] - xrow[j] * sum_dx[j]));
    }
}

template <class T>
void bias_relu_dropout_forward(const T* a, const T* b, Py_ssize_t n, Py_ssize_t d, const uint32_t* words,
                               long long threshold, double scale, T* h, uint8_t* keep, bool dropout) {
    for (Py_ssize_t i = 0; i < n; ++i) {
        for (Py_ssize_t j = 0; j < d; ++j) {
            Py_ssize_t at = i * d + j;
            T y = a[at] + b[j];  // in T, as NumPy adds two float32 arrays
            h[at] = static_cast<T>(relu_dropout(y, at, dropout, words, threshold, scale, keep));
        }
    }
}

template <class T>
void relu_dropout_backward(const T* dh, const T* h, Py_ssize_t n, Py_ssize_t m, bool dropout, double scale, T* da,
                           T* db, double* col) {
    for (Py_ssize_t j = 0; j < m; ++j) col[j] = 0.0;
    for (Py_ssize_t i = 0; i < n; ++i) {
        for (Py_ssize_t j = 0; j < m; ++j) {
            Py_ssize_t at = i * m + j;
            double g = relu_dropout_grad(dh[at], h[at], dropout, scale);
            da[at] = static_cast<T>(g);
            col[j] += g;
        }
    }
    for (Py_ssize_t j = 0; j < m; ++j) db[j] = static_cast<T>(col[j]);
}

template <class T>
void ln_relu_dropout_forward(const T* a, const T* b, Py_ssize_t n, Py_ssize_t d, const T* gamma, const T* beta,
                             double eps, const uint32_t* words, long long threshold, double scale, T* xhat, T* h,
                             uint8_t* keep, double* inv_std, bool dropout) {
    for (Py_ssize_t i = 0; i < n; ++i) {
        const T* row = a + i * d;
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
            Py_ssize_t at = i * d + j;
            double xh = (static_cast<T>(row[j] + b[j]) - mean) * r;
            xhat[at] = static_cast<T>(xh);
            h[at] = static_cast<T>(relu_dropout(gamma[j] * xh + beta[j], at, dropout, words, threshold, scale, keep));
        }
    }
}

template <class T>
void ln_relu_dropout_backward(const T* dh, const T* h, const T* xhat, Py_ssize_t n, Py_ssize_t m, const T* gamma,
                              const double* inv_std, bool dropout, double scale, T* da, T* dgamma, T* dbeta, T* db,
                              double* col_d, double* col_dx, double* col_da) {
    for (Py_ssize_t j = 0; j < m; ++j) col_d[j] = col_dx[j] = col_da[j] = 0.0;
    for (Py_ssize_t i = 0; i < n; ++i) {
        double sum_d = 0.0, sum_dx = 0.0;
        for (Py_ssize_t j = 0; j < m; ++j) {
            Py_ssize_t at = i * m + j;
            double g = relu_dropout_grad(dh[at], h[at], dropout, scale);
            col_d[j] += g;
            col_dx[j] += g * xhat[at];
            double dxh = g * gamma[j];
            da[at] = static_cast<T>(dxh);
            sum_d += dxh;
            sum_dx += dxh * xhat[at];
        }
        double r = inv_std[i] / m;
        for (Py_ssize_t j = 0; j < m; ++j) {
            Py_ssize_t at = i * m + j;
            double v = r * (static_cast<double>(m) * da[at] - sum_d - xhat[at] * sum_dx);
            da[at] = static_cast<T>(v);
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
void adam_update(T* w, const T* g, T* m, T* v, Py_ssize_t size, T step, T beta1, T one_minus_beta1, T beta2,
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
void adamw_update(T* w, const T* g, T* m, T* v, Py_ssize_t size, T decay, T step, T beta1, T one_minus_beta1, T beta2,
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
void sgd_update(T* w, const T* g, Py_ssize_t size, T lr) {
    for (Py_ssize_t i = 0; i < size; ++i) w[i] = w[i] - lr * g[i];
}

template <class T>
void momentum_update(T* w, const T* g, T* vel, Py_ssize_t size, T lr, T mu) {
    for (Py_ssize_t i = 0; i < size; ++i) {
        T vi = mu * vel[i] - lr * g[i];
        vel[i] = vi;
        w[i] = w[i] + vi;
    }
}

template <class T>
void rmsprop_update(T* w, const T* g, T* cache, Py_ssize_t size, T lr, T decay, T one_minus_decay, T eps) {
    for (Py_ssize_t i = 0; i < size; ++i) {
        T gi = g[i];
        T ci = decay * cache[i] + one_minus_decay * (gi * gi);
        cache[i] = ci;
        w[i] = w[i] - lr * gi / (std::sqrt(ci) + eps);
    }
}
