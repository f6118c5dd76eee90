// The NEON activation encode (aarch64): 4 channels per vector, the same float operations as the portable rows
// (encode.cpp; the prologue a true fma, vfmaq_f32 as std::fma; the clamp as compare-and-select, std::max / std::min
// exactly, so NaN passes through with its bits), the same sign bits and the same float64 lane sums (encode.h):
// lane c mod 16 accumulates |r| of its channels in pixel and channel order, held as eight 2-lane double vectors.
// On x86-64 this file compiles to stubs that are never called.
#include <stdexcept>

#include "encode.h"

namespace lsqbq {
#if LSQBQ_ARM
namespace {

// 4 floats from p, of which the first n are read (n >= 4: a plain load), the rest 0.
inline __attribute__((always_inline)) float32x4_t load4(const float* p, int64_t n) {
  if (n >= 4) return vld1q_f32(p);
  float t[4] = {0.f, 0.f, 0.f, 0.f};
  for (int64_t i = 0; i < n; ++i) t[i] = p[i];
  return vld1q_f32(t);
}

// y = clamp(fma(x, a, b)) of channels c0 .. c0 + 3 of pixel px (lanes past cn read as 0):
// std::max(y, lo) = y < lo ? lo : y, then std::min(., hi) = hi < . ? hi : . (NaN fails both compares and stays).
inline __attribute__((always_inline)) float32x4_t load_y(const Enc& E, const float* px, int64_t c0, int64_t cn,
                                                         float32x4_t lo, float32x4_t hi) {
  float32x4_t y = load4(px + c0, cn);
  if (E.in_a) y = vfmaq_f32(load4(E.in_b + c0, cn), y, load4(E.in_a + c0, cn));
  if (E.do_clamp) {
    y = vbslq_f32(vcltq_f32(y, lo), lo, y);
    y = vbslq_f32(vcltq_f32(hi, y), hi, y);
  }
  return y;
}

void enc_row_vec(const Enc& E, int64_t b, int64_t h, const float* v, int first, int last, double* lanes) {
  const float* src = E.row_src(b, h);
  uint64_t* d = E.row_dst(b, h);
  const float32x4_t zero = vdupq_n_f32(0.f);
  const float32x4_t lo = vdupq_n_f32(-E.cv), hi = vdupq_n_f32(E.cv);
  const uint32_t bit_init[4] = {1u, 2u, 4u, 8u};
  const uint32x4_t bit = vld1q_u32(bit_init);
  float32x4_t vp[8], vn[8];
  for (int i = 0; i < last; ++i) {
    vp[i] = vdupq_n_f32(v[i]);
    vn[i] = vnegq_f32(vp[i]);  // -v exactly, as the portable row's -v[i]
  }
  float64x2_t acc[8];
  for (int l = 0; l < 8; ++l) acc[l] = vdupq_n_f64(0.0);
  for (int64_t w = 0; w < E.W; ++w) {
    const float* px = src + w * E.C;
    for (int64_t q = 0; q < E.Cw; ++q) {
      uint64_t words[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int g = 0; g < 16; ++g) {
        const int64_t c0 = q * 64 + g * 4;
        const int64_t cn = std::min<int64_t>(4, E.C - c0);
        if (cn <= 0) break;
        const uint32_t valid = (1u << cn) - 1;
        const float32x4_t y = load_y(E, px, c0, cn, lo, hi);
        float32x4_t approx = zero, r = y;
        for (int i = 0; i <= last; ++i) {
          r = vsubq_f32(y, approx);
          const uint32x4_t neg = vmvnq_u32(vcgeq_f32(r, zero));  // NOT (r >= 0): NaN is negative
          if (i >= first) words[i] |= uint64_t(vaddvq_u32(vandq_u32(neg, bit)) & valid) << (4 * g);
          if (i < last) approx = vaddq_f32(approx, vbslq_f32(neg, vn[i], vp[i]));
        }
        if (lanes) {
          // lanes past cn hold |0| = 0; channels c0 .. c0 + 3 are lanes 4 (g mod 4) .. + 3 of c mod 16
          float32x4_t ar = vabsq_f32(r);
          if (cn < 4) {
            const uint32_t keep_init[4] = {0u, 1u, 2u, 3u};
            ar = vbslq_f32(vcltq_u32(vld1q_u32(keep_init), vdupq_n_u32(static_cast<uint32_t>(cn))), ar, zero);
          }
          const int l = (g & 3) * 2;
          acc[l] = vaddq_f64(acc[l], vcvt_f64_f32(vget_low_f32(ar)));
          acc[l + 1] = vaddq_f64(acc[l + 1], vcvt_high_f64_f32(ar));
        }
      }
      store_words(words, first, last, E.mask, std::min<int64_t>(64, E.C - q * 64), d + w * E.Cw + q, E.plane_stride);
    }
  }
  if (lanes)
    for (int l = 0; l < 8; ++l) vst1q_f64(lanes + 2 * l, acc[l]);
}

void prologue_row_vec(const Enc& E, int64_t b, int64_t h, float* out) {
  const float* src = E.row_src(b, h);
  const float32x4_t lo = vdupq_n_f32(-E.cv), hi = vdupq_n_f32(E.cv);
  for (int64_t w = 0; w < E.W; ++w)
    for (int64_t c0 = 0; c0 < E.C; c0 += 4) {
      const int64_t cn = std::min<int64_t>(4, E.C - c0);
      const float32x4_t y = load_y(E, src + w * E.C, c0, cn, lo, hi);
      float* o = out + w * E.C + c0;
      if (cn == 4) {
        vst1q_f32(o, y);
      } else {
        float t[4];
        vst1q_f32(t, y);
        for (int64_t i = 0; i < cn; ++i) o[i] = t[i];
      }
    }
}

}  // namespace

void enc_row_neon(const Enc& E, int64_t b, int64_t h, const float* v, int first, int last, double* lanes) {
  enc_row_vec(E, b, h, v, first, last, lanes);
}

void prologue_row_neon(const Enc& E, int64_t b, int64_t h, float* out) { prologue_row_vec(E, b, h, out); }

#else  // not aarch64: never called (isa_supported(kNeon) is false)

void enc_row_neon(const Enc&, int64_t, int64_t, const float*, int, int, double*) {
  throw std::logic_error("lsqbq: NEON kernels called on a CPU without them");
}
void prologue_row_neon(const Enc&, int64_t, int64_t, float*) {
  throw std::logic_error("lsqbq: NEON kernels called on a CPU without them");
}

#endif
}  // namespace lsqbq
