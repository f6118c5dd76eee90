// AVX2 micro-kernels for CPUs without AVX-512 (most laptops and desktops: Intel client cores, AMD Zen 2 / 3),
// compiled with function target attributes and called only where the CPU has AVX2, FMA and POPCNT (isa.h).
//
// AVX2 has no vector popcount. A 256-bit register holds one k word of 4 output channels; the popcount of each
// byte of (a XOR w) is the sum of two 16-entry table lookups (vpshufb on the low and the high nibble), at most 8.
// Per (row, activation plane) stream the 32 channels of a weight panel keep 8 byte accumulators in registers
// across the k loop; every 31 k words (31 * 8 = 248 < 256, no byte overflows) vpsadbw sums each 64-bit lane's 8
// bytes -- the channel's popcount -- and the counts, packed to int32, stay in registers for the epilogue. The
// counts are the portable path's integers, and the float epilogue does the portable one's operations
// (tile_portable.cpp) in the same order on 8 channels at a time (no FMA), so the outputs equal the portable
// path's bit for bit.
#include <algorithm>
#include <stdexcept>

#include "job.h"

namespace lsqbq {
#if LSQBQ_X86
namespace {

constexpr int64_t kFlush = 31;  // k words per byte-accumulator round

// Popcount of every byte of v: lut[v & 15] + lut[v >> 4] (lut: the popcounts of 0..15 in each 128-bit half).
LSQBQ_AVX2 inline __attribute__((always_inline)) __m256i popcount_bytes(__m256i v, __m256i lut, __m256i low) {
  const __m256i lo = _mm256_and_si256(v, low);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
  return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

LSQBQ_AVX2 inline __attribute__((always_inline)) __m256i nibble_table() {
  return _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3,
                          3, 4);
}

// cnt[n] = sum_k popcount(x_k XOR w_k[n]) (sign planes) or popcount((s_k XOR w_k[n]) AND m_k) (ternary: the mask
// word m_k lies ap words after s_k), n < 32, over the k words of one receptive field: x_k = row[koff[k]]. Returns
// the 32 counts as 4 vectors of 8 int32 (channels 8v .. 8v + 7). G = 8 groups of 4 channels; G = 4 counts the
// first 16 channels only (a panel with no more left) and returns zeros for the others.
template <bool MASK, int G>
LSQBQ_AVX2 inline __attribute__((always_inline)) void stream(const uint64_t* row, int64_t ap, const int64_t* koff,
                                                             const uint64_t* wp, int64_t KWt, __m256i* cnt) {
  const __m256i lut = nibble_table(), low = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
  for (int64_t k0 = 0; k0 < KWt; k0 += kFlush) {
    const int64_t k1 = std::min(KWt, k0 + kFlush);
    __m256i acc[G];
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) acc[g] = zero;
    const uint64_t* wk = wp + k0 * NB;
    for (int64_t k = k0; k < k1; ++k, wk += NB) {
      const uint64_t* at = row + koff[k];
      const __m256i x = _mm256_set1_epi64x(static_cast<long long>(at[0]));
      __m256i mk = zero;
      if (MASK) mk = _mm256_set1_epi64x(static_cast<long long>(at[ap]));
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g) {
        __m256i v = _mm256_xor_si256(x, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wk + 4 * g)));
        if (MASK) v = _mm256_and_si256(v, mk);
        acc[g] = _mm256_add_epi8(acc[g], popcount_bytes(v, lut, low));
      }
    }
    // vpsadbw: the channel counts of groups 2v, 2v + 1 as 4 + 4 int64 (< 2^31), packed into 8 int32 in order
#pragma GCC unroll 4
    for (int v = 0; v < G / 2; ++v) {
      const __m256 lo = _mm256_castsi256_ps(_mm256_sad_epu8(acc[2 * v], zero));
      const __m256 hi = _mm256_castsi256_ps(_mm256_sad_epu8(acc[2 * v + 1], zero));
      const __m256i sum = _mm256_permute4x64_epi64(_mm256_castps_si256(_mm256_shuffle_ps(lo, hi, 0x88)), 0xd8);
      cnt[v] = k0 == 0 ? sum : _mm256_add_epi32(cnt[v], sum);
    }
  }
  for (int v = G / 2; v < 4; ++v) cnt[v] = zero;
}

// Lanes n < left of 8 (all-ones), for the channel tail of a panel.
LSQBQ_AVX2 inline __attribute__((always_inline)) __m256i first_lanes8(int64_t left) {
  const int n = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(8, left)));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// The tile: one stream per row and activation plane, then the epilogue of the portable path (tile_portable.cpp) in
// vectors of 8 channels, with the same operations in the same order (no FMA: a multiply, then an add):
//   d = count - 2 popcount - corr (int32);  out_i = d,  or
//   acc = 0 + s_0 d_0 (+ s_1 d_1);  out_f = (bias or 0) + sw acc  (first term)  /  out_f + sw acc.
template <int PA, bool MASK>
LSQBQ_AVX2 void tile_pa(const Job& J, const Rows& rw, int r0, int64_t m0, int rows, int64_t p, int64_t j, int64_t ig,
                        bool first) {
  const uint64_t* wp = J.w + (j * J.NP + p) * J.KWt * NB;
  const int64_t n0 = p * NB;
  const int64_t NPNB = J.NP * NB;
  __m256i lm[4];
#pragma GCC unroll 4
  for (int v = 0; v < 4; ++v) lm[v] = first_lanes8(J.N - n0 - 8 * v);
  const bool half = J.N - n0 <= 16;  // the panel's first 16 channels are all it has left
  const __m256 zero = _mm256_setzero_ps();
  for (int r = 0; r < rows; ++r) {
    const int64_t m = m0 + r;
    const uint64_t* row = J.a + rw.base[r0 + r] + (MASK ? 0 : ig * J.a_plane);
    __m256i cnt[PA][4];
#pragma GCC unroll 2
    for (int i = 0; i < PA; ++i) {
      if (half) stream<MASK, 4>(row + i * J.a_plane, J.a_plane, J.koff.data(), wp, J.KWt, cnt[i]);
      else stream<MASK, 8>(row + i * J.a_plane, J.a_plane, J.koff.data(), wp, J.KWt, cnt[i]);
    }
    __m256i corr[4];
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) corr[v] = _mm256_setzero_si256();
    uint64_t inv = MASK ? 0 : rw.inv[r0 + r];
    while (inv) {
      const int t = __builtin_ctzll(inv);
      inv &= inv - 1;
      const int32_t* wt = J.wtap + (j * J.T + t) * NPNB + n0;
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v)
        corr[v] = _mm256_add_epi32(corr[v], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wt + 8 * v)));
    }
    const __m256i base = _mm256_set1_epi32(rw.count[r0 + r]);
    __m256i d[PA][4];
#pragma GCC unroll 2
    for (int i = 0; i < PA; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v)
        d[i][v] = _mm256_sub_epi32(_mm256_sub_epi32(base, _mm256_add_epi32(cnt[i][v], cnt[i][v])), corr[v]);
    if (J.out_i) {
#pragma GCC unroll 2
      for (int i = 0; i < PA; ++i) {
        int32_t* o = J.out_i + (((ig + i) * J.pw + j) * J.M + m) * J.N + n0;
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) _mm256_maskstore_epi32(o + 8 * v, lm[v], d[i][v]);
      }
      continue;
    }
    const int64_t b = rw.b[r0 + r];
    const int64_t pal = J.pa_logical();
    const float* sw = J.swt + j * NPNB + n0;
    float* o = J.out_f + m * J.N + n0;
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      __m256 acc = zero;
#pragma GCC unroll 2
      for (int i = 0; i < PA; ++i)
        acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(J.sa[b * pal + ig + i]), _mm256_cvtepi32_ps(d[i][v])));
      const __m256 prev = first ? (J.bias ? _mm256_maskload_ps(J.bias + n0 + 8 * v, lm[v]) : zero)
                                : _mm256_maskload_ps(o + 8 * v, lm[v]);
      _mm256_maskstore_ps(o + 8 * v, lm[v], _mm256_add_ps(prev, _mm256_mul_ps(_mm256_loadu_ps(sw + 8 * v), acc)));
    }
  }
}

// The fused tail (tile_portable.cpp, finish_act) in vectors of 8 channels, the same operations: y (+ res); ReLU as
// !(y <= 0) ? y : 0 (NaN stays NaN, -0.0 becomes +0.0) or PReLU as y > 0 ? y : a y; (+ res).
template <int ACT>
LSQBQ_AVX2 void finish_act(const Job& J, int64_t m0, int rows, int64_t p) {
  const int64_t n0 = p * NB;
  const __m256 zero = _mm256_setzero_ps();
  __m256i lm[4];
  __m256 slope[4];
  for (int v = 0; v < 4; ++v) {
    lm[v] = first_lanes8(J.N - n0 - 8 * v);
    if (ACT == 2)
      slope[v] = J.slope_step ? _mm256_maskload_ps(J.slope + n0 + 8 * v, lm[v]) : _mm256_set1_ps(J.slope[0]);
  }
  const int nvec = static_cast<int>((std::min<int64_t>(NB, J.N - n0) + 7) / 8);
  const bool pre = J.res && J.res_first, post = J.res && !J.res_first;
  for (int r = 0; r < rows; ++r) {
    const int64_t m = m0 + r;
    float* o = J.out_f + m * J.N + n0;
    const float* rs = J.res ? J.res + m * J.N + n0 : nullptr;
    for (int v = 0; v < nvec; ++v) {
      __m256 y = _mm256_maskload_ps(o + 8 * v, lm[v]);
      if (pre) y = _mm256_add_ps(y, _mm256_maskload_ps(rs + 8 * v, lm[v]));
      if (ACT == 1) y = _mm256_blendv_ps(y, zero, _mm256_cmp_ps(y, zero, _CMP_LE_OQ));
      if (ACT == 2) y = _mm256_blendv_ps(_mm256_mul_ps(slope[v], y), y, _mm256_cmp_ps(y, zero, _CMP_GT_OQ));
      if (post) y = _mm256_add_ps(y, _mm256_maskload_ps(rs + 8 * v, lm[v]));
      _mm256_maskstore_ps(o + 8 * v, lm[v], y);
    }
  }
}

// Register-only loop of the tile's inner step (XOR, nibble-lookup popcount, byte add) on 4 independent
// accumulators, flushed with vpsadbw every 31 steps.
LSQBQ_AVX2 int64_t peak_loop(int64_t iters) {
  constexpr int U = 4;
  const __m256i lut = nibble_table(), low = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
  __m256i x[U], acc[U], total = zero;
  for (int u = 0; u < U; ++u) x[u] = _mm256_set1_epi64x(static_cast<long long>(0x9E3779B97F4A7C15ull * (u + 1)));
  __m256i w = _mm256_set1_epi64x(0x0123456789ABCDEFll);
  for (int64_t it0 = 0; it0 < iters; it0 += kFlush) {
    for (int u = 0; u < U; ++u) acc[u] = zero;
    const int64_t it1 = std::min(iters, it0 + kFlush);
    for (int64_t it = it0; it < it1; ++it) {
      asm volatile("" : "+x"(w));  // the weight changes as far as the compiler knows: nothing is hoisted
#pragma GCC unroll 4
      for (int u = 0; u < U; ++u) acc[u] = _mm256_add_epi8(acc[u], popcount_bytes(_mm256_xor_si256(x[u], w), lut, low));
    }
    for (int u = 0; u < U; ++u) total = _mm256_add_epi64(total, _mm256_sad_epu8(acc[u], zero));
  }
  alignas(32) int64_t t[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(t), total);
  static volatile int64_t sink;
  sink = t[0] + t[1] + t[2] + t[3];
  return iters * U * 256;
}

}  // namespace

void tile_avx2(const Job& J, const Rows& rw, int r0, int64_t m0, int rows, int64_t p, int64_t j, int64_t ig,
               bool first, int pa, bool mask) {
  if (mask) return tile_pa<1, true>(J, rw, r0, m0, rows, p, j, ig, first);
  if (pa == 2) return tile_pa<2, false>(J, rw, r0, m0, rows, p, j, ig, first);
  tile_pa<1, false>(J, rw, r0, m0, rows, p, j, ig, first);
}

void finish_avx2(const Job& J, int64_t m0, int rows, int64_t p) {
  if (J.act == 1) return finish_act<1>(J, m0, rows, p);
  if (J.act == 2) return finish_act<2>(J, m0, rows, p);
  finish_act<0>(J, m0, rows, p);
}

int64_t peak_avx2(int64_t iters) { return peak_loop(iters); }

#else  // not x86-64: never called (isa_supported(kAvx2) is false)

void tile_avx2(const Job&, const Rows&, int, int64_t, int, int64_t, int64_t, int64_t, bool, int, bool) {
  throw std::logic_error("lsqbq: AVX2 kernels called on a CPU without them");
}
void finish_avx2(const Job&, int64_t, int, int64_t) {
  throw std::logic_error("lsqbq: AVX2 kernels called on a CPU without them");
}
int64_t peak_avx2(int64_t) { throw std::logic_error("lsqbq: AVX2 kernels called on a CPU without them"); }

#endif
}  // namespace lsqbq
