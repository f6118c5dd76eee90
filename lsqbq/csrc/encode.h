// Activation encode of the XNOR engine (no torch headers): prologue, clamp, per-sample scales and the packed
// sign planes with their spatial padding.
// Per element x of a pixel's channel c, the float operations of the simulated layer (BatchNorm in front, then
// QuantConv2d.quantize_input), in the same order and rounding:
//   y   = fma(x, a_c, b_c)                 optional BatchNorm: a = rsqrt(var + eps) w, b = fma(-mean, a, bias)
//   y   = min(max(y, -clamp), clamp)       optional clamp (NaN stays NaN, as torch.clamp)
//   r_1 = y, bit_i = NOT (r_i >= 0), approx_i = approx_{i-1} + (bit_i ? -v_i : v_i), r_{i+1} = y - approx_i.
// A greedy fit (ls-1 = gf-1, gf-k) needs v_i = mean |r_i| over the sample: pass i adds |r_i| (float) in float64
// to lane (c mod 16) in pixel order and channel order, so the AVX-512 path (two 8-lane double accumulators), the
// AVX2 path (four 4-lane ones), the NEON path (eight 2-lane ones) and the portable path add the same numbers in the same order and give the same
// scales bit for bit. Lanes are summed in lane order per image row, rows in order per sample: a fixed order,
// whatever the thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "isa.h"

namespace lsqbq {

struct Enc {
  const float* x = nullptr;  // (B, H, W, C) NHWC memory
  int64_t B = 0, C = 0, H = 0, W = 0, Cw = 0;
  const float* in_a = nullptr;  // (C) prologue scale, or null
  const float* in_b = nullptr;  // (C) prologue shift
  float cv = 0.f;
  bool do_clamp = false;
  bool mask = false;            // ternary: planes 0, 1 are stored as (sign, non-zero mask)
  uint64_t* dst = nullptr;      // (P, B, Hp, Wp, Cw)
  int64_t Hp = 0, Wp = 0, ph = 0, pw = 0, plane_stride = 0;
  int64_t threads = 1;         // threads the encode may use (torch's count, chosen by the op layer)
  const float* row_src(int64_t b, int64_t h) const { return x + (b * H + h) * W * C; }
  uint64_t* row_dst(int64_t b, int64_t h) const { return dst + ((b * Hp + h + ph) * Wp + pw) * Cw; }
};


// Store one 64-channel word of planes first..last: sign planes, or (mask) sign + non-zero mask of a ternary pair
// (non-zero where the two signs agree; bits past the last channel cn stay 0).
inline void store_words(const uint64_t* words, int first, int last, bool mask, int64_t cn, uint64_t* dst,
                        int64_t plane_stride) {
  if (mask) {
    const uint64_t valid = cn == 64 ? ~uint64_t(0) : ((uint64_t(1) << cn) - 1);
    dst[0] = words[0];
    dst[plane_stride] = ~(words[0] ^ words[1]) & valid;
  } else {
    for (int i = first; i <= last; ++i) dst[i * plane_stride] = words[i];
  }
}

enum Fit : int64_t { kGiven = 0, kGreedy = 1, kLs2 = 2, kTernary = 3 };

// One image row (b, h) on each path: writes planes first..last of its W pixels from the scales v (v[0..last-1]
// are read); with lanes, adds |r_last| to lanes[c mod 16] (lanes hold 0 on entry). All paths give the same bits
// and lane sums.
void enc_row_portable(const Enc& E, int64_t b, int64_t h, const float* v, int first, int last, double* lanes);
void enc_row_avx512(const Enc& E, int64_t b, int64_t h, const float* v, int first, int last, double* lanes);
void enc_row_avx2(const Enc& E, int64_t b, int64_t h, const float* v, int first, int last, double* lanes);
void enc_row_neon(const Enc& E, int64_t b, int64_t h, const float* v, int first, int last, double* lanes);
// AVX-512: the first plane of flat image rows row and row + 1 (b H + h) with their lane sums, side by side; the same
// bits and sums as enc_row_avx512(E, b, h, v, 0, 0, lanes) of each row (unmasked planes only).
void enc_first_pair_avx512(const Enc& E, int64_t row, double* lanes0, double* lanes1);

// y = clamp(fma(x, a, b)) of one image row into out (W * C floats), for the exact fits that sort y.
void prologue_row_portable(const Enc& E, int64_t b, int64_t h, float* out);
void prologue_row_avx512(const Enc& E, int64_t b, int64_t h, float* out);
void prologue_row_avx2(const Enc& E, int64_t b, int64_t h, float* out);
void prologue_row_neon(const Enc& E, int64_t b, int64_t h, float* out);

// Given scales: one pass. sc: (B, planes) with row stride sstride (0: one row for every sample).
void encode_given(const Enc& E, int64_t planes, const float* sc, int64_t sstride, int64_t isa);

// Greedy fit fused with the encode: pass i writes plane i and sums |r_i|; v_i = (float)(sum / n) per sample,
// exactly fit_greedy's formula. v: (B, planes) output. Cost: planes passes over x, O(planes^2 n) flops.
void encode_greedy(const Enc& E, int64_t planes, float* v, int64_t isa);

// Exact ls-2 (ternary false) or ls-T fit of every sample of the encode's input (fit.cpp): out (B, 2) float32.
void exact_fit(const Enc& E, bool ternary, int64_t isa, float* out);

}  // namespace lsqbq
