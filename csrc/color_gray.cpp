// Fused CPU kernel behind ColorGray's "cpp" backend (st_fast/augment/color_gray.py).
//
// torch.ops.st_fast_cg.color_gray(x, factors, order, gray) -> out: x is a CPU (N, C, H, W)
// uint8 or float32 batch, C = 1 or 3; factors float32 (N, 4), order int32 (N, 4) and gray bool
// (N,) as kernels/color_gray.py describes them. Each image is copied into float planes, runs its
// four jitters in its own order and then the grayscale there (color_gray_kernel.h), and is
// written out once. Images are split over torch's intra-op threads with at::parallel_for.
//
// Registered with TORCH_LIBRARY rather than through pybind11 and torch/extension.h: fewer headers
// to compile (the build takes ~20 s on two cores), and a torch.ops call releases the GIL while
// the kernel runs.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace st_fast_cg {
// Op ids, as kernels/color_gray.py numbers them.
enum Op : int32_t { BRIGHTNESS = 0, CONTRAST = 1, SATURATION = 2, HUE = 3, NOOP = 4 };
}  // namespace st_fast_cg

// The same per-image code twice: for AVX2 + FMA (one instruction per fma, 8 floats per
// vector), and for the baseline ISA the compiler targets; run time picks one per call. On an
// x86 CPU without AVX2/FMA the baseline copy calls libm for fma and floor: the same results,
// but about 10x slower (measured: 44 ms per 512 images 3x32x32, the torch backend's speed).
// Elsewhere (e.g. aarch64) the baseline ISA has both, and the baseline copy vectorises.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define ST_FAST_CG_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define CG_NS avx2
#include "color_gray_kernel.h"
#undef CG_NS
#pragma GCC pop_options
#endif
#define CG_NS baseline
#include "color_gray_kernel.h"
#undef CG_NS

namespace {

using RunFn = decltype(&st_fast_cg::baseline::run);

RunFn pick_kernel() {
#ifdef ST_FAST_CG_AVX2
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return &st_fast_cg::avx2::run;
  }
#endif
  return &st_fast_cg::baseline::run;
}

at::Tensor color_gray(const at::Tensor& x_in, const at::Tensor& factors_in,
                      const at::Tensor& order_in, const at::Tensor& gray_in) {
  TORCH_CHECK(x_in.device().is_cpu(), "color_gray: images must be on the CPU, got ", x_in.device());
  TORCH_CHECK(x_in.dim() == 4 && (x_in.size(1) == 1 || x_in.size(1) == 3),
              "color_gray: images must be (N, C, H, W) with C = 1 or 3, got ", x_in.sizes());
  TORCH_CHECK(x_in.scalar_type() == at::kByte || x_in.scalar_type() == at::kFloat,
              "color_gray: images must be uint8 or float32, got ", x_in.scalar_type());
  const int64_t n = x_in.size(0), channels = x_in.size(1), hw = x_in.size(2) * x_in.size(3);
  TORCH_CHECK(factors_in.sizes() == at::IntArrayRef({n, 4}) &&
                  order_in.sizes() == at::IntArrayRef({n, 4}) &&
                  gray_in.sizes() == at::IntArrayRef({n}),
              "color_gray: parameters do not match a batch of ", n, ": factors ",
              factors_in.sizes(), ", order ", order_in.sizes(), ", gray ", gray_in.sizes());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor factors = factors_in.to(at::kCPU, at::kFloat).contiguous();
  const at::Tensor order = order_in.to(at::kCPU, at::kInt).contiguous();
  const at::Tensor gray = gray_in.to(at::kCPU, at::kBool).contiguous();
  const int32_t* order_ptr = order.data_ptr<int32_t>();
  for (int64_t k = 0; k < 4 * n; ++k) {
    TORCH_CHECK(order_ptr[k] >= st_fast_cg::BRIGHTNESS && order_ptr[k] <= st_fast_cg::NOOP,
                "color_gray: order holds op ids 0..4, got ", order_ptr[k]);
  }
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (n == 0 || hw == 0) return out;

  static const RunFn kernel = pick_kernel();
  const bool is_uint8 = x.scalar_type() == at::kByte;
  const void* src = x.data_ptr();
  void* dst = out.data_ptr();
  const float* factor_ptr = factors.data_ptr<float>();
  const bool* gray_ptr = gray.data_ptr<bool>();
  // Chunks of at least ~32k values: a thread's share must outweigh waking it.
  const int64_t grain = std::max<int64_t>(1, 32768 / (channels * hw));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> work((channels + 1) * hw);  // this chunk's image as float planes + 1 spare
    kernel(src, dst, is_uint8, static_cast<int>(channels), factor_ptr, order_ptr, gray_ptr, hw,
           begin, end, work.data());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(st_fast_cg, m) {
  m.def("color_gray(Tensor x, Tensor factors, Tensor order, Tensor gray) -> Tensor");
  m.impl("color_gray", c10::DispatchKey::CPU, TORCH_FN(color_gray));
}
