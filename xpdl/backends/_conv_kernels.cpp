// xpdl.backends._conv_kernels: the compiled kernels of xpdl.backends.conv_kernels (which documents
// them), built when xpdl is installed. Each function checks its arguments (see _kernel_call.h), so
// that no argument makes a kernel read or write outside an array, then runs the body
// (_conv_kernels_body.h) for the arrays' dtype on this CPU's instruction set.
//
// Contiguity: the arguments NumpyBackend.conv_block_forward / conv_block_backward hand over as
// views of any layout (x of im2col, dout of max_pool_relu_backward) are read through their strides;
// every other array is one of its own C-contiguous buffers (or a reshape of one) and must be
// C-contiguous.
#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>
#include <utility>
#include <vector>

#include "_kernel_call.h"

#define XK_BODY "_conv_kernels_body.h"
#include "_isa_variants.h"

namespace {

using xk::Array;
using xk::Each;
using xk::Call;
using xk::F32;
using xk::U8;


// Filter and pool sizes, strides and pads are at most this, so no size computed from them overflows.
constexpr long long kMaxGeometry = 1 << 30;

// Argument i: an integer in [lo, kMaxGeometry].
Py_ssize_t geometry(Call& c, Py_ssize_t i, const char* name, long long lo) {
    long long v = c.integer(i, name);
    c.require(v >= lo && v <= kMaxGeometry, "%s: expected an integer in [%lld, %lld], got %lld", name, lo,
              kMaxGeometry, v);
    return c.ok() ? static_cast<Py_ssize_t>(v) : 0;
}

// The product of non-negative sizes, or -1 where it overflows (so it matches no array's dimension).
Py_ssize_t product(std::initializer_list<Py_ssize_t> sizes) {
    Py_ssize_t p = 1;
    for (Py_ssize_t s : sizes)
        if (__builtin_mul_overflow(p, s, &p)) return -1;
    return p;
}

// A convolution's filter (hh, ww), stride and pad (arguments first..first+3) over an (h, w) input,
// and its output size (ho, wo), at least 1 x 1.
struct Conv {
    Py_ssize_t hh = 0, ww = 0, stride = 1, pad = 0, ho = 0, wo = 0;
};

Conv conv_geometry(Call& c, Py_ssize_t first, Py_ssize_t h, Py_ssize_t w) {
    Conv g;
    g.hh = geometry(c, first, "hh", 1);
    g.ww = geometry(c, first + 1, "ww", 1);
    g.stride = geometry(c, first + 2, "stride", 1);
    g.pad = geometry(c, first + 3, "pad", 0);
    Py_ssize_t padded_h = 0, padded_w = 0;
    bool fits = !__builtin_add_overflow(h, 2 * g.pad, &padded_h) && !__builtin_add_overflow(w, 2 * g.pad, &padded_w);
    c.require(fits && g.hh <= padded_h && g.ww <= padded_w,
              "a %zd x %zd filter does not fit the %zd x %zd input padded by %zd", g.hh, g.ww, h, w, g.pad);
    if (!c.ok()) return g;
    g.ho = (padded_h - g.hh) / g.stride + 1;
    g.wo = (padded_w - g.ww) / g.stride + 1;
    return g;
}

// cols (C·HH·WW, N·Ho·Wo): the shape im2col writes and col2im reads.
void cols_shape(Call& c, const Array& cols, const char* name, Py_ssize_t n, Py_ssize_t ch, const Conv& g) {
    c.dim(cols, name, 0, product({ch, g.hh, g.ww}), "C·HH·WW");
    c.dim(cols, name, 1, product({n, g.ho, g.wo}), "N·Ho·Wo");
}

KERNEL(im2col) {
    Call c("im2col", args, nargs, 6);
    Array x = c.array(0, "x", 4, false, /*strided=*/true);
    c.real_dtype(x, "x");
    Conv g = conv_geometry(c, 1, x.shape[2], x.shape[3]);
    Array cols = c.array(5, "cols", 2, true);
    c.dtype(cols, "cols", x.dtype);
    cols_shape(c, cols, "cols", x.shape[0], x.shape[1], g);
    if (!c.ok()) return nullptr;
    xk::Unlocked u(cols.size());
    if (x.dtype == F32)
        XK_PICK(im2col<float>)(x.ptr<float>(), x.shape, x.stride, g.hh, g.ww, g.stride, g.pad, g.ho, g.wo,
                               cols.ptr<float>());
    else
        XK_PICK(im2col<double>)(x.ptr<double>(), x.shape, x.stride, g.hh, g.ww, g.stride, g.pad, g.ho, g.wo,
                                cols.ptr<double>());
    Py_RETURN_NONE;
}

KERNEL(col2im) {
    Call c("col2im", args, nargs, 6);
    Array dcols = c.array(0, "dcols", 2, false);
    Array dxp = c.array(5, "dxp", 4, true);
    c.real_dtype(dcols, "dcols");
    c.dtype(dxp, "dxp", dcols.dtype);
    Conv g = conv_geometry(c, 1, dxp.shape[2], dxp.shape[3]);
    cols_shape(c, dcols, "dcols", dxp.shape[1], dxp.shape[0], g);  // dxp is (C, N, H, W)
    if (!c.ok()) return nullptr;
    xk::Unlocked u(dcols.size());
    if (dcols.dtype == F32)
        XK_PICK(col2im<float>)(dcols.ptr<float>(), g.hh, g.ww, g.stride, g.pad, g.ho, g.wo, dxp.shape,
                               dxp.ptr<float>());
    else
        XK_PICK(col2im<double>)(dcols.ptr<double>(), g.hh, g.ww, g.stride, g.pad, g.ho, g.wo, dxp.shape,
                                dxp.ptr<double>());
    Py_RETURN_NONE;
}

KERNEL(bias_relu) {
    Call c("bias_relu", args, nargs, 2);
    Array a = c.array(0, "a", 2, true), b = c.array(1, "b", 1, false);
    c.real_dtype(a, "a");
    c.dtype(b, "b", a.dtype);
    c.at_least(b, "b", a.shape[0], "the rows of a");
    if (!c.ok()) return nullptr;
    xk::Unlocked u(a.size());
    if (a.dtype == F32)
        XK_PICK(bias_relu<float>)(a.ptr<float>(), b.ptr<float>(), a.shape[0], a.shape[1]);
    else
        XK_PICK(bias_relu<double>)(a.ptr<double>(), b.ptr<double>(), a.shape[0], a.shape[1]);
    Py_RETURN_NONE;
}

KERNEL(bn_relu_forward) {
    Call c("bn_relu_forward", args, nargs, 8);
    Array a = c.array(0, "a", 2, true), gamma = c.array(1, "gamma", 1, false), beta = c.array(2, "beta", 1, false);
    double eps = c.real(3, "eps");
    Array xhat = c.array(4, "xhat", 2, true), mean = c.array(5, "mean", 1, true), var = c.array(6, "var", 1, true),
          inv_std = c.array(7, "inv_std", 1, true);
    c.real_dtype(a, "a");
    c.dtype(xhat, "xhat", a.dtype);
    c.same_shape(xhat, "xhat", a, "a");
    for (auto [arr, name] : Each{{&gamma, "gamma"}, {&beta, "beta"}, {&mean, "mean"}, {&var, "var"},
                                 {&inv_std, "inv_std"}}) {
        c.dtype(*arr, name, a.dtype);
        c.at_least(*arr, name, a.shape[0], "the rows of a");
    }
    if (!c.ok()) return nullptr;
    xk::Unlocked u(a.size());
    if (a.dtype == F32)
        XK_PICK(bn_relu_forward<float>)(a.ptr<float>(), gamma.ptr<float>(), beta.ptr<float>(), eps, a.shape[0],
                                        a.shape[1], xhat.ptr<float>(), mean.ptr<float>(), var.ptr<float>(),
                                        inv_std.ptr<float>());
    else
        XK_PICK(bn_relu_forward<double>)(a.ptr<double>(), gamma.ptr<double>(), beta.ptr<double>(), eps, a.shape[0],
                                         a.shape[1], xhat.ptr<double>(), mean.ptr<double>(), var.ptr<double>(),
                                         inv_std.ptr<double>());
    Py_RETURN_NONE;
}

KERNEL(bn_backward) {
    Call c("bn_backward", args, nargs, 6);
    Array da = c.array(0, "da", 2, true), xhat = c.array(1, "xhat", 2, false), gamma = c.array(2, "gamma", 1, false),
          inv_std = c.array(3, "inv_std", 1, false), dgamma = c.array(4, "dgamma", 1, true),
          dbeta = c.array(5, "dbeta", 1, true);
    c.real_dtype(da, "da");
    c.dtype(xhat, "xhat", da.dtype);
    c.same_shape(xhat, "xhat", da, "da");
    for (auto [arr, name] : Each{{&gamma, "gamma"}, {&inv_std, "inv_std"}, {&dgamma, "dgamma"}, {&dbeta, "dbeta"}}) {
        c.dtype(*arr, name, da.dtype);
        c.at_least(*arr, name, da.shape[0], "the rows of da");
    }
    if (!c.ok()) return nullptr;
    xk::Unlocked u(da.size());
    if (da.dtype == F32)
        XK_PICK(bn_backward<float>)(da.ptr<float>(), xhat.ptr<float>(), gamma.ptr<float>(), inv_std.ptr<float>(),
                                    da.shape[0], da.shape[1], dgamma.ptr<float>(), dbeta.ptr<float>());
    else
        XK_PICK(bn_backward<double>)(da.ptr<double>(), xhat.ptr<double>(), gamma.ptr<double>(), inv_std.ptr<double>(),
                                     da.shape[0], da.shape[1], dgamma.ptr<double>(), dbeta.ptr<double>());
    Py_RETURN_NONE;
}

// Windows of `size` every `stride` starting at 0, `count` of them, lie inside [0, extent).
bool windows_fit(Py_ssize_t count, Py_ssize_t stride, Py_ssize_t size, Py_ssize_t extent) {
    if (count == 0) return true;
    Py_ssize_t last = product({count - 1, stride});
    return last >= 0 && last <= extent - size;
}

KERNEL(max_pool_forward) {
    Call c("max_pool_forward", args, nargs, 6);
    Array hp = c.array(0, "hp", 4, false);
    Py_ssize_t ph = geometry(c, 1, "ph", 1), pw = geometry(c, 2, "pw", 1), stride = geometry(c, 3, "stride", 1);
    Array outp = c.array(4, "outp", 4, true), arg = c.array(5, "arg", 4, true);
    c.real_dtype(hp, "hp");
    c.require(ph * pw <= 256, "ph x pw: expected at most 256 elements (arg holds uint8 offsets), got %zd x %zd", ph,
              pw);
    c.dtype(outp, "outp", hp.dtype);
    c.dim(outp, "outp", 0, hp.shape[0], "F, hp's dimension 0");
    c.dim(outp, "outp", 1, hp.shape[1], "N, hp's dimension 1");
    c.require(windows_fit(outp.shape[2], stride, ph, hp.shape[2]) &&
                  windows_fit(outp.shape[3], stride, pw, hp.shape[3]),
              "outp: %zd x %zd windows of %zd x %zd every %zd do not fit hp's %zd x %zd", outp.shape[2], outp.shape[3],
              ph, pw, stride, hp.shape[2], hp.shape[3]);
    c.dtype(arg, "arg", U8);
    c.same_shape(arg, "arg", outp, "outp");
    if (!c.ok()) return nullptr;
    xk::Unlocked u(hp.size());
    if (hp.dtype == F32)
        XK_PICK(max_pool_forward<float>)(hp.ptr<float>(), hp.shape[2], hp.shape[3], ph, pw, stride, outp.shape,
                                         outp.ptr<float>(), arg.ptr<uint8_t>());
    else
        XK_PICK(max_pool_forward<double>)(hp.ptr<double>(), hp.shape[2], hp.shape[3], ph, pw, stride, outp.shape,
                                          outp.ptr<double>(), arg.ptr<uint8_t>());
    Py_RETURN_NONE;
}

KERNEL(max_pool_relu_backward) {
    Call c("max_pool_relu_backward", args, nargs, 6);
    Array dout = c.array(0, "dout", 4, false, /*strided=*/true), arg = c.array(1, "arg", 4, false),
          hp = c.array(2, "hp", 4, false);
    Py_ssize_t pw = geometry(c, 3, "pw", 1), stride = geometry(c, 4, "stride", 1);
    Array dap = c.array(5, "dap", 4, true);
    c.real_dtype(dout, "dout");
    c.dtype(arg, "arg", U8);
    c.dim(dout, "dout", 0, arg.shape[1], "N, arg's dimension 1");
    c.dim(dout, "dout", 1, arg.shape[0], "F, arg's dimension 0");
    c.dim(dout, "dout", 2, arg.shape[2], "arg's dimension 2");
    c.dim(dout, "dout", 3, arg.shape[3], "arg's dimension 3");
    for (auto [arr, name] : Each{{&hp, "hp"}, {&dap, "dap"}}) {
        c.dtype(*arr, name, dout.dtype);
        c.dim(*arr, name, 0, arg.shape[0], "F, arg's dimension 0");
        c.dim(*arr, name, 1, arg.shape[1], "N, arg's dimension 1");
    }
    c.same_shape(hp, "hp", dap, "dap");
    if (!c.ok()) return nullptr;
    Py_ssize_t bad;
    {
        xk::Unlocked u(dap.size());
        if (dout.dtype == F32)
            bad = XK_PICK(max_pool_relu_backward<float>)(dout.ptr<float>(), dout.stride, arg.ptr<uint8_t>(), arg.shape,
                                                         hp.ptr<float>(), dap.shape[2], dap.shape[3], pw, stride,
                                                         dap.ptr<float>());
        else
            bad = XK_PICK(max_pool_relu_backward<double>)(dout.ptr<double>(), dout.stride, arg.ptr<uint8_t>(),
                                                          arg.shape, hp.ptr<double>(), dap.shape[2], dap.shape[3], pw,
                                                          stride, dap.ptr<double>());
    }
    if (bad >= 0) {
        c.require(false, "arg: the offset %d at flat index %zd puts its element outside dap's %zd x %zd planes",
                  static_cast<int>(arg.ptr<uint8_t>()[bad]), bad, dap.shape[2], dap.shape[3]);
        return nullptr;
    }
    Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    XK_ENTRY(im2col, "im2col(x, hh, ww, stride, pad, cols): cols (C*HH*WW, N*Ho*Wo) = the taps of x (N, C, H, W)"),
    XK_ENTRY(col2im, "col2im(dcols, hh, ww, stride, pad, dxp): dxp (C, N, H, W) = the adjoint of im2col of dcols"),
    XK_ENTRY(bias_relu, "bias_relu(a, b): a = max(a + b[:, None], 0) in place"),
    XK_ENTRY(bn_relu_forward, "bn_relu_forward(a, gamma, beta, eps, xhat, mean, var, inv_std): per row of a, in place"),
    XK_ENTRY(bn_backward, "bn_backward(da, xhat, gamma, inv_std, dgamma, dbeta): per row of da, in place"),
    XK_ENTRY(max_pool_forward, "max_pool_forward(hp, ph, pw, stride, outp, arg)"),
    XK_ENTRY(max_pool_relu_backward, "max_pool_relu_backward(dout, arg, hp, pw, stride, dap)"),
    XK_INSTRUCTION_SET_ENTRY,
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_conv_kernels",
                      "Compiled kernels of xpdl.backends.conv_kernels (see there).", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__conv_kernels(void) { return PyModule_Create(&module); }
