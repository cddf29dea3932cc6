// Compiles the kernel body header named by XK_BODY once per instruction set (no include guard: a
// kernel module defines XK_BODY, then includes this file once):
//   namespace generic  the baseline of the target (x86-64: SSE2);
//   namespace avx2     AVX2, with GCC on x86-64;
//   namespace avx512   AVX-512 (F, VL, BW, DQ) with 512-bit vectors, with GCC on x86-64.
// XK_PICK(f) (in _kernel_call.h) calls the variant this CPU runs. Contraction into fused
// multiply-adds is off in all of them (setup.py's -ffp-contract=off), so all give the same bits.
namespace generic {
#include XK_BODY
}
#if XK_HAVE_ISA_VARIANTS
#pragma GCC push_options
#pragma GCC target("avx2")
namespace avx2 {
#include XK_BODY
}
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,prefer-vector-width=512")
namespace avx512 {
#include XK_BODY
}
#pragma GCC pop_options
#endif
