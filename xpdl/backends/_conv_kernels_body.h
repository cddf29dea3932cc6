// The conv blocks' kernels (xpdl.backends.conv_kernels documents each one). `T` is the activations'
// dtype (float or double). Each loop does the former numba kernel's operations in its order and
// its types: T op T stays in T; a T meeting a double, or an integer meeting a float, is computed in
// double (numba promotes as NumPy does), and sums start at 0.0 in double. No include guard: the
// module includes this file once per instruction set (see _kernel_call.h).
//
// Shapes (logical; "physical" means the memory order, C-contiguous): x (N, C, H, W) with element
// strides xs[4]; cols (C·HH·WW, M), M = N·Ho·Wo, row (c·HH + i)·WW + j, column (n·Ho + oh)·Wo + ow;
// a, xhat, da (F, M); hp, dap (F, N, H, W) physical; pooled outp, arg (F, N, Po, Qo) physical.

// Python's a // b for b > 0 (rounds toward minus infinity, where C++ rounds toward zero).
static inline Py_ssize_t floor_div(Py_ssize_t a, Py_ssize_t b) {
    Py_ssize_t q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

// The output columns [lo, hi), 0 <= lo <= hi <= wo, whose tap ow·stride - pad + j falls inside [0, w).
struct Span {
    Py_ssize_t lo, hi;
};

static inline Span valid_columns(Py_ssize_t j, Py_ssize_t pad, Py_ssize_t stride, Py_ssize_t w, Py_ssize_t wo) {
    Py_ssize_t lo = j >= pad ? 0 : floor_div(pad - j + stride - 1, stride);
    Py_ssize_t hi = floor_div(w + pad - j + stride - 1, stride);
    hi = std::min(std::max(hi, lo), wo);
    return {std::min(lo, wo), hi};
}

// One output row of im2col: out[ow] = src[ow·step] for ow in [lo, hi), zeros around.
template <class T>
static inline void copy_taps(T* out, const T* src, Py_ssize_t step, Span s, Py_ssize_t wo) {
    for (Py_ssize_t ow = 0; ow < s.lo; ++ow) out[ow] = T(0);
    if (step == 1) {  // stride 1 over a unit-stride row: a plain copy
        for (Py_ssize_t ow = s.lo; ow < s.hi; ++ow) out[ow] = src[ow - s.lo];
    } else {
        for (Py_ssize_t ow = s.lo; ow < s.hi; ++ow) out[ow] = src[(ow - s.lo) * step];
    }
    for (Py_ssize_t ow = s.hi; ow < wo; ++ow) out[ow] = T(0);
}

// cols (C·HH·WW, N·Ho·Wo) = the taps of x (N, C, H, W), element strides xs, zero-padded by pad.
template <class T>
void im2col(const T* x, const Py_ssize_t* shape, const Py_ssize_t* xs, Py_ssize_t hh, Py_ssize_t ww,
            Py_ssize_t stride, Py_ssize_t pad, Py_ssize_t ho, Py_ssize_t wo, T* cols) {
    const Py_ssize_t n_ = shape[0], c_ = shape[1], h_ = shape[2], w_ = shape[3];
    const Py_ssize_t p = ho * wo, m = n_ * p;
    for (Py_ssize_t c = 0; c < c_; ++c)
        for (Py_ssize_t i = 0; i < hh; ++i)
            for (Py_ssize_t j = 0; j < ww; ++j) {
                T* row = cols + ((c * hh + i) * ww + j) * m;
                const Span s = valid_columns(j, pad, stride, w_, wo);
                for (Py_ssize_t n = 0; n < n_; ++n)
                    for (Py_ssize_t oh = 0; oh < ho; ++oh) {
                        T* out = row + n * p + oh * wo;
                        const Py_ssize_t ih = oh * stride - pad + i;
                        if (ih < 0 || ih >= h_ || s.lo == s.hi) {
                            for (Py_ssize_t ow = 0; ow < wo; ++ow) out[ow] = T(0);
                            continue;
                        }
                        // the tap of column lo: x[n, c, ih, lo·stride - pad + j], inside the row
                        const T* src = x + n * xs[0] + c * xs[1] + ih * xs[2] + (s.lo * stride - pad + j) * xs[3];
                        copy_taps(out, src, stride * xs[3], s, wo);
                    }
            }
}

// dxp (C, N, H, W) physical = the sum over taps of dcols (C·HH·WW, N·Ho·Wo), im2col's adjoint.
template <class T>
void col2im(const T* dcols, Py_ssize_t hh, Py_ssize_t ww, Py_ssize_t stride, Py_ssize_t pad, Py_ssize_t ho,
            Py_ssize_t wo, const Py_ssize_t* shape, T* dxp) {
    const Py_ssize_t c_ = shape[0], n_ = shape[1], h_ = shape[2], w_ = shape[3];
    const Py_ssize_t p = ho * wo, m = n_ * p;
    for (Py_ssize_t q = 0, size = c_ * n_ * h_ * w_; q < size; ++q) dxp[q] = T(0);
    for (Py_ssize_t c = 0; c < c_; ++c)
        for (Py_ssize_t i = 0; i < hh; ++i)
            for (Py_ssize_t j = 0; j < ww; ++j) {
                const T* row = dcols + ((c * hh + i) * ww + j) * m;
                const Span s = valid_columns(j, pad, stride, w_, wo);
                for (Py_ssize_t n = 0; n < n_; ++n)
                    for (Py_ssize_t oh = 0; oh < ho; ++oh) {
                        const Py_ssize_t ih = oh * stride - pad + i;
                        if (ih < 0 || ih >= h_ || s.lo == s.hi) continue;
                        const T* in = row + n * p + oh * wo;
                        // column lo's tap: dxp[c, n, ih, lo·stride - pad + j]; column ow's is (ow - lo)·stride further
                        T* dst = dxp + ((c * n_ + n) * h_ + ih) * w_ + s.lo * stride - pad + j;
                        for (Py_ssize_t ow = s.lo; ow < s.hi; ++ow) dst[(ow - s.lo) * stride] += in[ow];
                    }
            }
}

// a (F, M) = max(a + b[:, None], 0) in place, the sum in T.
template <class T>
void bias_relu(T* a, const T* b, Py_ssize_t f_, Py_ssize_t m_) {
    for (Py_ssize_t f = 0; f < f_; ++f) {
        T* row = a + f * m_;
        const T bf = b[f];
        for (Py_ssize_t m = 0; m < m_; ++m) {
            const T y = row[m] + bf;
            row[m] = y > 0 ? y : T(0);
        }
    }
}

// The row sums below add each row's values in index order, one chain of double additions per
// row, as numba's loops do; K rows go at once so that their chains overlap (a chain is bound by
// the latency of its additions), which changes no row's bits. K = 1 does the leftover rows.
constexpr Py_ssize_t kRows = 4;

// Rows f..f+K-1 of a (F, M): mean, biased var and 1/sqrt(var + eps), each in double.
template <int K, class T>
static inline void bn_row_statistics(const T* a, Py_ssize_t m_, double eps, double* mu, double* v, double* inv) {
    double s[K], ss[K];
    for (int k = 0; k < K; ++k) s[k] = ss[k] = 0.0;
    for (Py_ssize_t m = 0; m < m_; ++m)
        for (int k = 0; k < K; ++k) s[k] += a[k * m_ + m];
    for (int k = 0; k < K; ++k) mu[k] = s[k] / static_cast<double>(m_);
    for (Py_ssize_t m = 0; m < m_; ++m)
        for (int k = 0; k < K; ++k) {
            const double d = a[k * m_ + m] - mu[k];
            ss[k] += d * d;
        }
    for (int k = 0; k < K; ++k) {
        v[k] = ss[k] / static_cast<double>(m_);
        inv[k] = 1.0 / std::sqrt(v[k] + eps);
    }
}

// One row of M values: xhat = (a - mu)·inv, a = max(g·xhat + bt, 0), in double, stored in T.
template <class T>
static inline void bn_relu_row(T* row, T* xrow, Py_ssize_t m_, double mu, double inv, double g, double bt) {
    for (Py_ssize_t m = 0; m < m_; ++m) {
        const double xh = (row[m] - mu) * inv;
        xrow[m] = static_cast<T>(xh);
        const double y = g * xh + bt;
        row[m] = static_cast<T>(y > 0 ? y : 0.0);
    }
}

// K rows from row f of the batch norm + ReLU below.
template <int K, class T>
static inline void bn_relu_rows(T* a, const T* gamma, const T* beta, double eps, Py_ssize_t f, Py_ssize_t m_, T* xhat,
                                T* mean, T* var, T* inv_std) {
    double mu[K], v[K], inv[K];
    bn_row_statistics<K>(a + f * m_, m_, eps, mu, v, inv);
    for (int k = 0; k < K; ++k) {
        mean[f + k] = static_cast<T>(mu[k]);
        var[f + k] = static_cast<T>(v[k]);
        inv_std[f + k] = static_cast<T>(inv[k]);
        bn_relu_row(a + (f + k) * m_, xhat + (f + k) * m_, m_, mu[k], inv[k], gamma[f + k], beta[f + k]);
    }
}

// Batch norm of each row of a (F, M) over its M values (statistics in double), then ReLU, into a;
// writes xhat (F, M) and the rows' mean, biased var and inv_std (F,), rounded to T.
template <class T>
void bn_relu_forward(T* a, const T* gamma, const T* beta, double eps, Py_ssize_t f_, Py_ssize_t m_, T* xhat, T* mean,
                     T* var, T* inv_std) {
    Py_ssize_t f = 0;
    for (; f + kRows <= f_; f += kRows) bn_relu_rows<kRows>(a, gamma, beta, eps, f, m_, xhat, mean, var, inv_std);
    for (; f < f_; ++f) bn_relu_rows<1>(a, gamma, beta, eps, f, m_, xhat, mean, var, inv_std);
}

// K rows from row f of the batch-norm backward below.
template <int K, class T>
static inline void bn_backward_rows(T* da, const T* xhat, const T* gamma, const T* inv_std, Py_ssize_t f,
                                    Py_ssize_t m_, T* dgamma, T* dbeta) {
    T* rows = da + f * m_;
    const T* xrows = xhat + f * m_;
    double sd[K], sdx[K];
    for (int k = 0; k < K; ++k) sd[k] = sdx[k] = 0.0;
    for (Py_ssize_t m = 0; m < m_; ++m)
        for (int k = 0; k < K; ++k) {
            sd[k] += rows[k * m_ + m];
            sdx[k] += static_cast<T>(rows[k * m_ + m] * xrows[k * m_ + m]);  // the product in T, as numba's
        }
    const double count = static_cast<double>(m_);
    for (int k = 0; k < K; ++k) {
        dgamma[f + k] = static_cast<T>(sdx[k]);
        dbeta[f + k] = static_cast<T>(sd[k]);
        const double scale = static_cast<T>(gamma[f + k] * inv_std[f + k]) / count;  // the product in T
        T* row = rows + k * m_;
        const T* xrow = xrows + k * m_;
        for (Py_ssize_t m = 0; m < m_; ++m)
            row[m] = static_cast<T>(scale * (count * row[m] - sd[k] - xrow[m] * sdx[k]));
    }
}

// Batch-norm backward of each row of da (F, M), in place:
// da = gamma·inv_std / M · (M·da - sum(da) - xhat·sum(da·xhat)); dgamma = sum(da·xhat), dbeta = sum(da).
template <class T>
void bn_backward(T* da, const T* xhat, const T* gamma, const T* inv_std, Py_ssize_t f_, Py_ssize_t m_, T* dgamma,
                 T* dbeta) {
    Py_ssize_t f = 0;
    for (; f + kRows <= f_; f += kRows) bn_backward_rows<kRows>(da, xhat, gamma, inv_std, f, m_, dgamma, dbeta);
    for (; f < f_; ++f) bn_backward_rows<1>(da, xhat, gamma, inv_std, f, m_, dgamma, dbeta);
}

// best, t = v, tv where v > best (as selects, not branches, so that the loops vectorize).
template <class T, class I>
static inline void take_greater(T& best, I& t, T v, I tv) {
    const bool greater = v > best;
    best = greater ? v : best;
    t = greater ? tv : t;
}

// The offsets of the 2x2 pool's argmax, as wide as T, so that its loop vectorizes with T's lanes (a
// uint8 store in the loop would make it wait for 32 outputs); narrowed to uint8 once per plane.
template <class T>
using Offset = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;

// One row of the 2x2, stride 2 pool, unrolled (the general loop's order): out[ow] and t[ow],
// ow < qo, from the input rows r0 and r1.
template <class T>
static inline void max_pool_2x2_row(const T* r0, const T* r1, Py_ssize_t qo, T* out, Offset<T>* t) {
    for (Py_ssize_t ow = 0; ow < qo; ++ow) {
        const Py_ssize_t w0 = 2 * ow;
        T best = r0[w0];
        Offset<T> tk = 0;
        take_greater(best, tk, r0[w0 + 1], Offset<T>(1));
        take_greater(best, tk, r1[w0], Offset<T>(2));
        take_greater(best, tk, r1[w0 + 1], Offset<T>(3));
        out[ow] = best;
        t[ow] = tk;
    }
}

// Max pool of hp (F, N, H, W) into outp (F, N, Po, Qo), window ph x pw every stride; arg gets the
// offset di·pw + dj of each window's first maximum (a later element must be greater to win).
template <class T>
void max_pool_forward(const T* hp, Py_ssize_t h_, Py_ssize_t w_, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t stride,
                      const Py_ssize_t* out_shape, T* outp, uint8_t* arg) {
    const Py_ssize_t planes = out_shape[0] * out_shape[1], po = out_shape[2], qo = out_shape[3];
    const bool two_by_two = ph == 2 && pw == 2 && stride == 2;  // the pool of every ConvNet block
    std::vector<Offset<T>> t(two_by_two ? static_cast<size_t>(po * qo) : 0);  // one plane's offsets
    for (Py_ssize_t fn = 0; fn < planes; ++fn) {  // one (f, n) plane at a time
        const T* in = hp + fn * h_ * w_;
        T* out = outp + fn * po * qo;
        uint8_t* at = arg + fn * po * qo;
        if (two_by_two) {
            for (Py_ssize_t oh = 0; oh < po; ++oh)
                max_pool_2x2_row(in + 2 * oh * w_, in + (2 * oh + 1) * w_, qo, out + oh * qo, t.data() + oh * qo);
            for (Py_ssize_t q = 0; q < po * qo; ++q) at[q] = static_cast<uint8_t>(t[q]);
            continue;
        }
        for (Py_ssize_t oh = 0; oh < po; ++oh)
            for (Py_ssize_t ow = 0; ow < qo; ++ow) {
                const T* window = in + oh * stride * w_ + ow * stride;
                T best = window[0];
                Py_ssize_t t = 0;
                for (Py_ssize_t di = 0; di < ph; ++di)
                    for (Py_ssize_t dj = 0; dj < pw; ++dj) {
                        take_greater(best, t, window[di * w_ + dj], di * pw + dj);
                    }
                out[oh * qo + ow] = best;
                at[oh * qo + ow] = static_cast<uint8_t>(t);
            }
    }
}

// Pool, then ReLU, backward: dap (F, N, H, W) gets dout (N, F, Po, Qo), element strides ds, at each
// window's argmax (arg (F, N, Po, Qo), window width pw, every stride) where hp (F, N, H, W) > 0, and 0
// elsewhere. Returns -1, or the flat index into arg of an offset whose element falls outside
// (H, W) (then dap is partly written).
template <class T>
Py_ssize_t max_pool_relu_backward(const T* dout, const Py_ssize_t* ds, const uint8_t* arg, const Py_ssize_t* shape,
                                  const T* hp, Py_ssize_t h_, Py_ssize_t w_, Py_ssize_t pw, Py_ssize_t stride, T* dap) {
    const Py_ssize_t f_ = shape[0], n_ = shape[1], po = shape[2], qo = shape[3];
    // 2x2 windows, stride 2, tiling the input (H = 2 Po holds only for a pool height of 2): every
    // input element is written once, so no zeroing pass
    if (pw == 2 && stride == 2 && h_ == 2 * po && w_ == 2 * qo) {
        for (Py_ssize_t f = 0; f < f_; ++f)
            for (Py_ssize_t n = 0; n < n_; ++n) {
                const Py_ssize_t plane = (f * n_ + n) * h_ * w_;
                const uint8_t* at = arg + (f * n_ + n) * po * qo;
                const T* g_plane = dout + n * ds[0] + f * ds[1];
                for (Py_ssize_t oh = 0; oh < po; ++oh)
                    for (Py_ssize_t ow = 0; ow < qo; ++ow) {
                        const uint8_t t = at[oh * qo + ow];
                        const T g = g_plane[oh * ds[2] + ow * ds[3]];
                        for (int q = 0; q < 4; ++q) {
                            const Py_ssize_t e = plane + (2 * oh + q / 2) * w_ + 2 * ow + q % 2;
                            dap[e] = q == t && hp[e] > 0 ? g : T(0);
                        }
                    }
            }
        return -1;
    }
    for (Py_ssize_t e = 0, size = f_ * n_ * h_ * w_; e < size; ++e) dap[e] = T(0);
    for (Py_ssize_t f = 0; f < f_; ++f)
        for (Py_ssize_t n = 0; n < n_; ++n) {
            const Py_ssize_t plane = (f * n_ + n) * h_ * w_;
            const Py_ssize_t first = (f * n_ + n) * po * qo;
            const T* g_plane = dout + n * ds[0] + f * ds[1];
            for (Py_ssize_t oh = 0; oh < po; ++oh)
                for (Py_ssize_t ow = 0; ow < qo; ++ow) {
                    const Py_ssize_t t = arg[first + oh * qo + ow];
                    const Py_ssize_t ih = oh * stride + t / pw, iw = ow * stride + t % pw;
                    if (ih >= h_ || iw >= w_) return first + oh * qo + ow;
                    const Py_ssize_t e = plane + ih * w_ + iw;
                    if (hp[e] > 0) dap[e] += g_plane[oh * ds[2] + ow * ds[3]];
                }
        }
    return -1;
}
