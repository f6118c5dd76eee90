// NEON micro-kernels for aarch64 (NEON, Advanced SIMD, is part of every aarch64 CPU; on x86-64 this file compiles
// to stubs that are never called).
//
// A 128-bit register holds one k word of 2 output channels. vcntq_u8 gives the popcount of each byte of
// (a XOR w) (at most 8); vpadalq_u8 adds neighbouring byte counts into 16-bit lanes, 4 per channel, each growing
// by at most 16 per k word. Per (row, activation plane) stream the 32 channels of a weight panel keep 16 such
// accumulators in registers across the k loop; every 4095 k words (4095 * 16 < 2^16, no lane overflows) the lanes
// are folded into the channel counts with vpaddlq_u16 / vpaddlq_u32. The counts are the portable path's
// integers, and the float epilogue does the portable one's operations (tile_portable.cpp) in the same order on 4
// channels at a time (vmulq_f32, then vaddq_f32: the library is built with -ffp-contract=off, so they stay separate
// instructions and are never fused into fmla), so the outputs equal the portable path's bit for bit.
#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "job.h"

namespace lsqbq {
#if LSQBQ_ARM
namespace {

constexpr int64_t kFlush = 4095;  // k words per 16-bit accumulator round

// cnt[n] = sum_k popcount(x_k XOR w_k[n]) (sign planes) or popcount((s_k XOR w_k[n]) AND m_k) (ternary: the mask
// word m_k lies ap words after s_k), n < 32, over the k words of one receptive field: x_k = row[koff[k]].
template <bool MASK>
inline __attribute__((always_inline)) void stream(const uint64_t* row, int64_t ap, const int64_t* koff,
                                                  const uint64_t* wp, int64_t KWt, int32_t* cnt) {
  for (int n = 0; n < NB; ++n) cnt[n] = 0;
  for (int64_t k0 = 0; k0 < KWt; k0 += kFlush) {
    const int64_t k1 = std::min(KWt, k0 + kFlush);
    uint16x8_t acc[16];
#pragma GCC unroll 16
    for (int g = 0; g < 16; ++g) acc[g] = vdupq_n_u16(0);
    const uint64_t* wk = wp + k0 * NB;
    for (int64_t k = k0; k < k1; ++k, wk += NB) {
      const uint64_t* at = row + koff[k];
      const uint64x2_t x = vdupq_n_u64(at[0]);
      uint64x2_t mk = vdupq_n_u64(0);
      if (MASK) mk = vdupq_n_u64(at[ap]);
#pragma GCC unroll 16
      for (int g = 0; g < 16; ++g) {
        uint64x2_t v = veorq_u64(x, vld1q_u64(wk + 2 * g));
        if (MASK) v = vandq_u64(v, mk);
        acc[g] = vpadalq_u8(acc[g], vcntq_u8(vreinterpretq_u8_u64(v)));
      }
    }
    // channel 2g + l is 64-bit lane l of group g: fold its four 16-bit lanes into one count
#pragma GCC unroll 16
    for (int g = 0; g < 16; ++g) {
      const uint64x2_t s = vpaddlq_u32(vpaddlq_u16(acc[g]));
      cnt[2 * g] += static_cast<int32_t>(vgetq_lane_u64(s, 0));
      cnt[2 * g + 1] += static_cast<int32_t>(vgetq_lane_u64(s, 1));
    }
  }
}

// 4 floats from p, of which the first nv are read (nv >= 4: a plain load), the rest 0.
inline __attribute__((always_inline)) float32x4_t load4(const float* p, int64_t nv) {
  if (nv >= 4) return vld1q_f32(p);
  float t[4] = {0.f, 0.f, 0.f, 0.f};
  for (int64_t i = 0; i < nv; ++i) t[i] = p[i];
  return vld1q_f32(t);
}

// The first min(nv, 4) lanes of y to p.
inline __attribute__((always_inline)) void store4(float* p, int64_t nv, float32x4_t y) {
  if (nv >= 4) return vst1q_f32(p, y);
  float t[4];
  vst1q_f32(t, y);
  for (int64_t i = 0; i < nv; ++i) p[i] = t[i];
}

// The tile: one stream per row and activation plane, then the epilogue of the portable path (tile_portable.cpp) in
// vectors of 4 channels, with the same operations in the same order (no FMA: a multiply, then an add):
//   d = count - 2 popcount - corr (int32);  out_i = d,  or
//   acc = 0 + s_0 d_0 (+ s_1 d_1);  out_f = (bias or 0) + sw acc  (first term)  /  out_f + sw acc.
template <int PA, bool MASK>
void tile_pa(const Job& J, const Rows& rw, int r0, int64_t m0, int rows, int64_t p, int64_t j, int64_t ig,
             bool first) {
  const uint64_t* wp = J.w + (j * J.NP + p) * J.KWt * NB;
  const int64_t n0 = p * NB;
  const int64_t nv = std::min<int64_t>(NB, J.N - n0);
  const int64_t NPNB = J.NP * NB;
  const float32x4_t zero = vdupq_n_f32(0.f);
  for (int r = 0; r < rows; ++r) {
    const int64_t m = m0 + r;
    const uint64_t* row = J.a + rw.base[r0 + r] + (MASK ? 0 : ig * J.a_plane);
    alignas(16) int32_t cnt[PA][NB];
    for (int i = 0; i < PA; ++i) stream<MASK>(row + i * J.a_plane, J.a_plane, J.koff.data(), wp, J.KWt, cnt[i]);
    int32x4_t corr[8];
#pragma GCC unroll 8
    for (int v = 0; v < 8; ++v) corr[v] = vdupq_n_s32(0);
    uint64_t inv = MASK ? 0 : rw.inv[r0 + r];
    while (inv) {
      const int t = __builtin_ctzll(inv);
      inv &= inv - 1;
      const int32_t* wt = J.wtap + (j * J.T + t) * NPNB + n0;
#pragma GCC unroll 8
      for (int v = 0; v < 8; ++v) corr[v] = vaddq_s32(corr[v], vld1q_s32(wt + 4 * v));
    }
    const int32x4_t base = vdupq_n_s32(rw.count[r0 + r]);
    int32x4_t d[PA][8];
    for (int i = 0; i < PA; ++i)
#pragma GCC unroll 8
      for (int v = 0; v < 8; ++v) {
        const int32x4_t c = vld1q_s32(cnt[i] + 4 * v);
        d[i][v] = vsubq_s32(vsubq_s32(base, vaddq_s32(c, c)), corr[v]);
      }
    if (J.out_i) {
      for (int i = 0; i < PA; ++i) {
        int32_t* o = J.out_i + (((ig + i) * J.pw + j) * J.M + m) * J.N + n0;
        if (nv == NB) {
#pragma GCC unroll 8
          for (int v = 0; v < 8; ++v) vst1q_s32(o + 4 * v, d[i][v]);
        } else {
          alignas(16) int32_t t[NB];
          for (int v = 0; v < 8; ++v) vst1q_s32(t + 4 * v, d[i][v]);
          std::memcpy(o, t, sizeof(int32_t) * nv);
        }
      }
      continue;
    }
    const int64_t b = rw.b[r0 + r];
    const int64_t pal = J.pa_logical();
    const float* sw = J.swt + j * NPNB + n0;
    float* o = J.out_f + m * J.N + n0;
    const int nvec = static_cast<int>((nv + 3) / 4);
    for (int v = 0; v < nvec; ++v) {
      const int64_t left = nv - 4 * v;
      float32x4_t acc = zero;
      for (int i = 0; i < PA; ++i)
        acc = vaddq_f32(acc, vmulq_f32(vdupq_n_f32(J.sa[b * pal + ig + i]), vcvtq_f32_s32(d[i][v])));
      const float32x4_t prev = first ? (J.bias ? load4(J.bias + n0 + 4 * v, left) : zero) : load4(o + 4 * v, left);
      store4(o + 4 * v, left, vaddq_f32(prev, vmulq_f32(vld1q_f32(sw + 4 * v), acc)));
    }
  }
}

// The fused tail (tile_portable.cpp, finish_act) in vectors of 4 channels, the same operations: y (+ res); ReLU as
// !(y <= 0) ? y : 0 (NaN stays NaN, -0.0 becomes +0.0) or PReLU as y > 0 ? y : a y; (+ res).
template <int ACT>
void finish_act(const Job& J, int64_t m0, int rows, int64_t p) {
  const int64_t n0 = p * NB;
  const int64_t nv = std::min<int64_t>(NB, J.N - n0);
  const float32x4_t zero = vdupq_n_f32(0.f);
  const int nvec = static_cast<int>((nv + 3) / 4);
  float32x4_t slope[8];
  for (int v = 0; v < nvec; ++v)
    if (ACT == 2) slope[v] = J.slope_step ? load4(J.slope + n0 + 4 * v, nv - 4 * v) : vdupq_n_f32(J.slope[0]);
  const bool pre = J.res && J.res_first, post = J.res && !J.res_first;
  for (int r = 0; r < rows; ++r) {
    const int64_t m = m0 + r;
    float* o = J.out_f + m * J.N + n0;
    const float* rs = J.res ? J.res + m * J.N + n0 : nullptr;
    for (int v = 0; v < nvec; ++v) {
      const int64_t left = nv - 4 * v;
      float32x4_t y = load4(o + 4 * v, left);
      if (pre) y = vaddq_f32(y, load4(rs + 4 * v, left));
      if (ACT == 1) y = vbslq_f32(vcleq_f32(y, zero), zero, y);
      if (ACT == 2) y = vbslq_f32(vcgtq_f32(y, zero), y, vmulq_f32(slope[v], y));
      if (post) y = vaddq_f32(y, load4(rs + 4 * v, left));
      store4(o + 4 * v, left, y);
    }
  }
}

// Register-only loop of the tile's inner step (XOR, byte popcount, pairwise widening add) on 4 independent
// accumulators, folded every 4095 steps.
int64_t peak_loop(int64_t iters) {
  constexpr int U = 4;
  uint16x8_t acc[U];
  uint64x2_t x[U], total = vdupq_n_u64(0);
  for (int u = 0; u < U; ++u) x[u] = vdupq_n_u64(0x9E3779B97F4A7C15ull * (u + 1));
  uint64x2_t w = vdupq_n_u64(0x0123456789ABCDEFull);
  for (int64_t it0 = 0; it0 < iters; it0 += kFlush) {
    for (int u = 0; u < U; ++u) acc[u] = vdupq_n_u16(0);
    const int64_t it1 = std::min(iters, it0 + kFlush);
    for (int64_t it = it0; it < it1; ++it) {
      asm volatile("" : "+w"(w));  // the weight changes as far as the compiler knows: nothing is hoisted
#pragma GCC unroll 4
      for (int u = 0; u < U; ++u) acc[u] = vpadalq_u8(acc[u], vcntq_u8(vreinterpretq_u8_u64(veorq_u64(x[u], w))));
    }
    for (int u = 0; u < U; ++u) total = vaddq_u64(total, vpaddlq_u32(vpaddlq_u16(acc[u])));
  }
  static volatile uint64_t sink;
  sink = vgetq_lane_u64(total, 0) + vgetq_lane_u64(total, 1);
  return iters * U * 128;
}

}  // namespace

void tile_neon(const Job& J, const Rows& rw, int r0, int64_t m0, int rows, int64_t p, int64_t j, int64_t ig,
               bool first, int pa, bool mask) {
  if (mask) return tile_pa<1, true>(J, rw, r0, m0, rows, p, j, ig, first);
  if (pa == 2) return tile_pa<2, false>(J, rw, r0, m0, rows, p, j, ig, first);
  tile_pa<1, false>(J, rw, r0, m0, rows, p, j, ig, first);
}

void finish_neon(const Job& J, int64_t m0, int rows, int64_t p) {
  if (J.act == 1) return finish_act<1>(J, m0, rows, p);
  if (J.act == 2) return finish_act<2>(J, m0, rows, p);
  finish_act<0>(J, m0, rows, p);
}

int64_t peak_neon(int64_t iters) { return peak_loop(iters); }

#else  // not aarch64: never called (isa_supported(kNeon) is false)

void tile_neon(const Job&, const Rows&, int, int64_t, int, int64_t, int64_t, int64_t, bool, int, bool) {
  throw std::logic_error("lsqbq: NEON kernels called on a CPU without them");
}
void finish_neon(const Job&, int64_t, int, int64_t) {
  throw std::logic_error("lsqbq: NEON kernels called on a CPU without them");
}
int64_t peak_neon(int64_t) { throw std::logic_error("lsqbq: NEON kernels called on a CPU without them"); }

#endif
}  // namespace lsqbq
