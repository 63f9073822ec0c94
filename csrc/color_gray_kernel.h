// Per-image CG chain (colour jitter in the image's own order, then grayscale) on float planes.
//
// Included twice by color_gray.cpp: once inside `#pragma GCC target("avx2,fma")` and once for
// the baseline ISA, each copy in its own namespace (CG_NS); the caller picks one at run time.
// Every per-pixel loop is a plain counted loop over __restrict planes with branch-free selects,
// so gcc -O3 vectorises it (-fno-trapping-math lets it compute both sides of a select). The
// file must be compiled with -ffp-contract=off: torchvision rounds
// `a * b + c` twice except where it calls add_(alpha=...) / addcmul_ (an fma), and a rounding
// that differs flips a uint8 truncation now and then, which later ops amplify. The fmas below
// are written out, the rest must stay as written.
//
// The arithmetic mirrors kernels/color_gray.py `color_gray_torch` step by step.

namespace st_fast_cg {
namespace CG_NS {

// Each pass stays a function of its own: inlined into the image loop, where the planes are
// offsets of one buffer, gcc loses the __restrict facts and leaves some loops scalar.
#ifndef NOINLINE
#define NOINLINE __attribute__((noinline))
#endif

constexpr float kLumaR = 0.2989f, kLumaG = 0.587f, kLumaB = 0.114f;
// The scalars torch multiplies by, rounded to float32 as torch rounds a Python float.
constexpr float kInv255 = static_cast<float>(1.0 / 255.0);
constexpr float kInv6 = static_cast<float>(1.0 / 6.0);
constexpr float kToUint8 = 255.999f;  // torchvision's float -> uint8 scale (then truncation)

// clamp_(lo, hi) without branches; a NaN stays NaN, as in torch.
static inline float clamp(float v, float lo, float hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

template <bool U8>
static inline float luma(float r, float g, float b) {
  // r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114): each add_ is one fma.
  const float l = __builtin_fmaf(b, kLumaB, __builtin_fmaf(g, kLumaG, r * kLumaR));
  return U8 ? __builtin_floorf(l) : l;  // torchvision floors the gray image of integer inputs
}

// clamp(f * x + (1 - f) * target): brightness (target 0) and contrast (target the mean).
template <bool U8>
static NOINLINE void blend_constant(float* __restrict x, int64_t n, float ratio, float target) {
  const float keep = 1.0f - ratio, bound = U8 ? 255.0f : 1.0f;
  for (int64_t p = 0; p < n; ++p) {
    const float v = clamp(__builtin_fmaf(target, keep, x[p] * ratio), 0.0f, bound);
    x[p] = U8 ? __builtin_floorf(v) : v;
  }
}

// Saturation: the same blend towards each pixel's own luma.
template <bool U8>
static NOINLINE void saturation(float* __restrict r, float* __restrict g, float* __restrict b,
                                int64_t n, float ratio) {
  const float keep = 1.0f - ratio, bound = U8 ? 255.0f : 1.0f;
  for (int64_t p = 0; p < n; ++p) {
    const float l = luma<U8>(r[p], g[p], b[p]);
    const float vr = clamp(__builtin_fmaf(l, keep, r[p] * ratio), 0.0f, bound);
    const float vg = clamp(__builtin_fmaf(l, keep, g[p] * ratio), 0.0f, bound);
    const float vb = clamp(__builtin_fmaf(l, keep, b[p] * ratio), 0.0f, bound);
    r[p] = U8 ? __builtin_floorf(vr) : vr;
    g[p] = U8 ? __builtin_floorf(vg) : vg;
    b[p] = U8 ? __builtin_floorf(vb) : vb;
  }
}

// Sum of a plane, for contrast's mean. torch sums in float32 and divides by the count. Summing
// in double instead is exact for uint8 images (integer lumas, sums below 2^24 up to ~256x256
// pixels), so the float32 mean equals torch's bit for bit there; for float images it can differ
// from torch's by an ulp. Eight independent accumulators: the loop vectorises without
// reassociating the sum.
static NOINLINE double plane_sum(const float* __restrict x, int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t p = 0;
  for (; p + 8 <= n; p += 8) {
    for (int k = 0; k < 8; ++k) acc[k] += x[p + k];
  }
  for (; p < n; ++p) acc[0] += x[p];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Mean luma (3 channels; `scratch` holds the luma plane) or mean value (1 channel) of the image
// as it is now.
template <bool U8, int C>
static NOINLINE float image_mean(const float* __restrict r, const float* __restrict g,
                                 const float* __restrict b, float* __restrict scratch, int64_t n) {
  if (C == 3) {
    for (int64_t p = 0; p < n; ++p) scratch[p] = luma<U8>(r[p], g[p], b[p]);
  }
  const double sum = plane_sum(C == 3 ? scratch : r, n);
  return static_cast<float>(sum) / static_cast<float>(n);
}

// The value for `sector` (0..5) out of six, one plain select per line: gcc turns these into
// vector blends, where it left a ?: chain with || in it as branches (no vectorised loop).
static inline float by_sector(float sector, float v0, float v1, float v2, float v3, float v4,
                              float v5) {
  float out = v5;
  out = sector == 4.0f ? v4 : out;
  out = sector == 3.0f ? v3 : out;
  out = sector == 2.0f ? v2 : out;
  out = sector == 1.0f ? v1 : out;
  return sector == 0.0f ? v0 : out;
}

// Hue shift through HSV (Pillow's algorithm, as torchvision's _rgb_to_hsv / _hsv_to_rgb).
template <bool U8>
static NOINLINE void hue(float* __restrict r, float* __restrict g, float* __restrict b, int64_t n,
                         float factor) {
  for (int64_t p = 0; p < n; ++p) {
    const float rr = U8 ? r[p] * kInv255 : r[p];
    const float gg = U8 ? g[p] * kInv255 : g[p];
    const float bb = U8 ? b[p] * kInv255 : b[p];
    const float maxc = std::max(std::max(rr, gg), bb);
    const float minc = std::min(std::min(rr, gg), bb);
    const float delta = maxc - minc;
    const bool flat = delta == 0.0f;  // gray pixel: hue and saturation 0, no division by 0
    const float sat = delta / (flat ? 1.0f : maxc);
    const float d = flat ? 1.0f : delta;
    const float rc = (maxc - rr) / d, gc = (maxc - gg) / d, bc = (maxc - bb) / d;
    // all three candidates, then selects: no branch in the loop
    const float h_r = bc - gc, h_g = (rc + 2.0f) - bc, h_b = (gc + 4.0f) - rc;
    float h = maxc == rr ? h_r : (maxc == gg ? h_g : h_b);
    h = h * kInv6 + 1.0f;  // two roundings, as torch's mul_ then add_
    h = h - __builtin_floorf(h);
    h = h + factor;
    h = h - __builtin_floorf(h);
    const float h6 = h * 6.0f;
    float sector = __builtin_floorf(h6);
    const float frac = h6 - sector;
    sector = sector == 6.0f ? 0.0f : sector;  // h * 6 may round up to 6
    const float s_frac = frac * sat, one_minus_s = 1.0f - sat, v = maxc;
    const float q = clamp((1.0f - s_frac) * v, 0.0f, 1.0f);
    const float t = clamp((s_frac + one_minus_s) * v, 0.0f, 1.0f);
    const float pp = clamp(one_minus_s * v, 0.0f, 1.0f);
    // sector: 0 -> (v, t, p), 1 -> (q, v, p), 2 -> (p, v, t), 3 -> (p, q, v), 4 -> (t, p, v),
    // 5 -> (v, p, q)
    const float nr = by_sector(sector, v, q, pp, pp, t, v);
    const float ng = by_sector(sector, t, v, v, q, pp, pp);
    const float nb = by_sector(sector, pp, pp, t, v, v, q);
    r[p] = U8 ? __builtin_floorf(nr * kToUint8) : nr;
    g[p] = U8 ? __builtin_floorf(ng * kToUint8) : ng;
    b[p] = U8 ? __builtin_floorf(nb * kToUint8) : nb;
  }
}

template <bool U8>
static NOINLINE void grayscale(float* __restrict r, float* __restrict g, float* __restrict b,
                               int64_t n) {
  for (int64_t p = 0; p < n; ++p) {
    const float l = luma<U8>(r[p], g[p], b[p]);
    r[p] = l;
    g[p] = l;
    b[p] = l;
  }
}

template <typename T>
static NOINLINE void load(const T* __restrict src, float* __restrict dst, int64_t n) {
  for (int64_t p = 0; p < n; ++p) dst[p] = static_cast<float>(src[p]);
}

template <typename T>
static NOINLINE void store(const float* __restrict src, T* __restrict dst, int64_t n) {
  // uint8 planes hold whole numbers in [0, 255] here, so the cast is exact
  for (int64_t p = 0; p < n; ++p) dst[p] = static_cast<T>(src[p]);
}

// Images [begin, end) of a contiguous (N, C, H, W) batch; `work` holds (C + 1) * hw floats.
template <typename T, int C>
static void run_images(const T* x, T* out, const float* factors, const int32_t* order,
                       const bool* gray, int64_t hw, int64_t begin, int64_t end, float* work) {
  constexpr bool U8 = std::is_same<T, uint8_t>::value;
  float* r = work;
  float* g = C == 3 ? work + hw : work;
  float* b = C == 3 ? work + 2 * hw : work;
  for (int64_t i = begin; i < end; ++i) {
    load(x + i * C * hw, work, C * hw);
    const float* f = factors + 4 * i;
    for (int step = 0; step < 4; ++step) {
      switch (order[4 * i + step]) {
        case BRIGHTNESS:
          for (int c = 0; c < C; ++c) blend_constant<U8>(work + c * hw, hw, f[BRIGHTNESS], 0.0f);
          break;
        case CONTRAST: {
          const float mean = image_mean<U8, C>(r, g, b, work + C * hw, hw);
          for (int c = 0; c < C; ++c) blend_constant<U8>(work + c * hw, hw, f[CONTRAST], mean);
          break;
        }
        case SATURATION:  // one channel: a no-op, as in torchvision
          if (C == 3) saturation<U8>(r, g, b, hw, f[SATURATION]);
          break;
        case HUE:
          if (C == 3) hue<U8>(r, g, b, hw, f[HUE]);
          break;
        default:  // NOOP
          break;
      }
    }
    if (C == 3 && gray[i]) grayscale<U8>(r, g, b, hw);
    store(work, out + i * C * hw, C * hw);
  }
}

template <typename T>
static void run_typed(const void* x, void* out, int channels, const float* factors,
                      const int32_t* order, const bool* gray, int64_t hw, int64_t begin,
                      int64_t end, float* work) {
  const T* src = static_cast<const T*>(x);
  T* dst = static_cast<T*>(out);
  if (channels == 3) {
    run_images<T, 3>(src, dst, factors, order, gray, hw, begin, end, work);
  } else {
    run_images<T, 1>(src, dst, factors, order, gray, hw, begin, end, work);
  }
}

// Entry point of this copy: dispatch on dtype (uint8 / float32) and channels (1 / 3).
static void run(const void* x, void* out, bool is_uint8, int channels, const float* factors,
                const int32_t* order, const bool* gray, int64_t hw, int64_t begin, int64_t end,
                float* work) {
  auto typed = is_uint8 ? &run_typed<uint8_t> : &run_typed<float>;
  typed(x, out, channels, factors, order, gray, hw, begin, end, work);
}

}  // namespace CG_NS
}  // namespace st_fast_cg
