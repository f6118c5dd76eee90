// AVX-512 VPOPCNTDQ micro-kernels: R rows x 32 (or 16) output channels per tile, 4 (2) zmm accumulators per row
// and plane, compiled with function target attributes and called only where the CPU has the instructions (isa.h).
#include <algorithm>
#include <stdexcept>

#include "job.h"

namespace lsqbq {
#if LSQBQ_X86
namespace {

// R rows x 8 V output channels x PA activation planes, weights loaded once per k word and shared by all rows
// and planes. Accumulators: R * PA * V zmm (<= 24), + V weight registers + broadcasts. V = 4 covers the panel's
// 32 channels; V = 2 its first 16, for a panel with at most 16 channels left (the rest are zero weights whose
// sums no output reads), which halves the work of layers with 16 output channels.
template <int R, int PA, bool MASK, int V>
LSQBQ_AVX512 void tile_avx512_r(const Job& J, const Rows& rw, int r0, int64_t m0, int64_t p, int64_t j, int64_t ig,
                                bool first) {
  __m512i acc[R][PA][V];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
    for (int i = 0; i < PA; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[r][i][v] = _mm512_setzero_si512();
  const uint64_t* rowp[R];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) rowp[r] = J.a + rw.base[r0 + r] + (MASK ? 0 : ig * J.a_plane);
  const int64_t ap = J.a_plane;
  const int64_t* koff = J.koff.data();
  const uint64_t* wk = J.w + (j * J.NP + p) * J.KWt * NB;
  for (int64_t k = 0; k < J.KWt; ++k, wk += NB) {
    const int64_t off = koff[k];
    {
      __m512i wv[V];
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) wv[v] = _mm512_loadu_si512(wk + 8 * v);
#pragma GCC unroll 32
      for (int r = 0; r < R; ++r) {
        const uint64_t* at = rowp[r] + off;
        if (MASK) {
          const __m512i s = _mm512_set1_epi64(static_cast<long long>(at[0]));
          const __m512i mk = _mm512_set1_epi64(static_cast<long long>(at[ap]));
          // (s ^ w) & m: truth table of A ^ B & C with A = 0xF0, B = 0xCC, C = 0xAA is 0x28.
#pragma GCC unroll 4
          for (int v = 0; v < V; ++v)
            acc[r][0][v] =
                _mm512_add_epi64(acc[r][0][v], _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(s, wv[v], mk, 0x28)));
        } else {
#pragma GCC unroll 4
          for (int i = 0; i < PA; ++i) {
            const __m512i x = _mm512_set1_epi64(static_cast<long long>(at[i * ap]));
#pragma GCC unroll 4
            for (int v = 0; v < V; ++v)
              acc[r][i][v] = _mm512_add_epi64(acc[r][i][v], _mm512_popcnt_epi64(_mm512_xor_si512(x, wv[v])));
          }
        }
      }
    }
  }
  // Epilogue on the accumulators: d = count_row - 2 popcount - padding correction; int32 store, or the scaled
  // float sum over planes (fma) into the NHWC output.
  const int64_t n0 = p * NB;
  const int64_t NPNB = J.NP * NB;
  __mmask8 lm[4];
#pragma GCC unroll 4
  for (int v = 0; v < 4; ++v) {
    const int64_t left = std::max<int64_t>(0, std::min<int64_t>(8, J.N - n0 - 8 * v));
    lm[v] = static_cast<__mmask8>((1u << left) - 1);
  }
  const float* sw = J.swt ? J.swt + j * NPNB + n0 : nullptr;
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) {
    const int64_t m = m0 + r;
    const __m512i basev = _mm512_set1_epi64(rw.count[r0 + r]);
    __m256i corr[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) corr[v] = _mm256_setzero_si256();
    uint64_t inv = MASK ? 0 : rw.inv[r0 + r];
    while (inv) {
      const int t = __builtin_ctzll(inv);
      inv &= inv - 1;
      const int32_t* wt = J.wtap + (j * J.T + t) * NPNB + n0;
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v)
        corr[v] = _mm256_add_epi32(corr[v], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wt + 8 * v)));
    }
    if (J.out_i) {
#pragma GCC unroll 4
      for (int i = 0; i < PA; ++i) {
        int32_t* o = J.out_i + (((ig + i) * J.pw + j) * J.M + m) * J.N + n0;
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) {
          const __m256i d = _mm256_sub_epi32(
              _mm512_cvtepi64_epi32(_mm512_sub_epi64(basev, _mm512_add_epi64(acc[r][i][v], acc[r][i][v]))), corr[v]);
          _mm256_mask_storeu_epi32(o + 8 * v, lm[v], d);
        }
      }
    } else {
      // d = count - 2 popcount - corr in float: every term is an integer below 2^24, so each step is exact and
      // d equals the integer path's value; then accf = sum_i sa_i d_i (one rounding per plane, as before).
      const int64_t b = rw.b[r0 + r];
      const int64_t pal = J.pa_logical();
      const bool corrected = !MASK && rw.inv[r0 + r] != 0;
      const __m256 basef = _mm256_set1_ps(static_cast<float>(rw.count[r0 + r]));
      const __m256 minus2 = _mm256_set1_ps(-2.0f);
      __m256 accf[V];
#pragma GCC unroll 4
      for (int i = 0; i < PA; ++i) {
        const __m256 s = _mm256_set1_ps(J.sa[b * pal + ig + i]);
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) {
          __m256 df = _mm256_fmadd_ps(_mm512_cvtepi64_ps(acc[r][i][v]), minus2, basef);
          if (corrected) df = _mm256_sub_ps(df, _mm256_cvtepi32_ps(corr[v]));
          accf[v] = i == 0 ? _mm256_mul_ps(s, df) : _mm256_fmadd_ps(s, df, accf[v]);
        }
      }
      float* o = J.out_f + m * J.N + n0;
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) {
        __m256 prev;
        if (first) prev = J.bias ? _mm256_maskz_loadu_ps(lm[v], J.bias + n0 + 8 * v) : _mm256_setzero_ps();
        else prev = _mm256_maskz_loadu_ps(lm[v], o + 8 * v);
        _mm256_mask_storeu_ps(o + 8 * v, lm[v], _mm256_fmadd_ps(_mm256_loadu_ps(sw + 8 * v), accf[v], prev));
      }
    }
  }
}

template <int PA, bool MASK, int V>
LSQBQ_AVX512 void tile_pv(const Job& J, const Rows& rw, int r0, int64_t m0, int rows, int64_t p, int64_t j,
                          int64_t ig, bool first) {
  switch (rows) {
    case 1: tile_avx512_r<1, PA, MASK, V>(J, rw, r0, m0, p, j, ig, first); break;
    case 2: tile_avx512_r<2, PA, MASK, V>(J, rw, r0, m0, p, j, ig, first); break;
    case 3: tile_avx512_r<3, PA, MASK, V>(J, rw, r0, m0, p, j, ig, first); break;
    case 4: if constexpr (PA == 1) { tile_avx512_r<4, PA, MASK, V>(J, rw, r0, m0, p, j, ig, first); } break;
    case 5: if constexpr (PA == 1) { tile_avx512_r<5, PA, MASK, V>(J, rw, r0, m0, p, j, ig, first); } break;
    case 6: if constexpr (PA == 1) { tile_avx512_r<6, PA, MASK, V>(J, rw, r0, m0, p, j, ig, first); } break;
    default: throw std::logic_error("lsqbq: bad tile height");
  }
}

// The panel's first 16 channels only where no more are left in it (V = 2), else all 32.
template <int PA, bool MASK>
LSQBQ_AVX512 void tile_pa(const Job& J, const Rows& rw, int r0, int64_t m0, int rows, int64_t p, int64_t j,
                          int64_t ig, bool first) {
  if (J.N - p * NB <= 16) return tile_pv<PA, MASK, 2>(J, rw, r0, m0, rows, p, j, ig, first);
  tile_pv<PA, MASK, 4>(J, rw, r0, m0, rows, p, j, ig, first);
}

template <int ACT>
LSQBQ_AVX512 void finish_act(const Job& J, int64_t m0, int rows, int64_t p) {
  const int64_t n0 = p * NB;
  const __m512 zero = _mm512_setzero_ps();
  __mmask16 lm[2];
  __m512 slope[2];
  for (int v = 0; v < 2; ++v) {
    const int64_t left = std::max<int64_t>(0, std::min<int64_t>(16, J.N - n0 - 16 * v));
    lm[v] = static_cast<__mmask16>((1u << left) - 1);
    if (ACT == 2)
      slope[v] = J.slope_step ? _mm512_maskz_loadu_ps(lm[v], J.slope + n0 + 16 * v) : _mm512_set1_ps(J.slope[0]);
  }
  const bool pre = J.res && J.res_first, post = J.res && !J.res_first;
  for (int r = 0; r < rows; ++r) {
    const int64_t m = m0 + r;
    float* o = J.out_f + m * J.N + n0;
    const float* rs = J.res ? J.res + m * J.N + n0 : nullptr;
    for (int v = 0; v < 2; ++v) {
      if (!lm[v]) break;
      __m512 y = _mm512_maskz_loadu_ps(lm[v], o + 16 * v);
      if (pre) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(lm[v], rs + 16 * v));
      if (ACT == 1) y = _mm512_max_ps(zero, y);  // NaN (second operand) passes through
      if (ACT == 2) y = _mm512_mask_mul_ps(y, _mm512_cmp_ps_mask(y, zero, _CMP_NGT_UQ), slope[v], y);
      if (post) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(lm[v], rs + 16 * v));
      _mm512_mask_storeu_ps(o + 16 * v, lm[v], y);
    }
  }
}

LSQBQ_AVX512 int64_t peak_avx512_loop(int64_t iters) {
  constexpr int U = 12;
  __m512i x[U], acc[U];
  for (int u = 0; u < U; ++u) {
    x[u] = _mm512_set1_epi64(0x9E3779B97F4A7C15ull * (u + 1));
    acc[u] = _mm512_setzero_si512();
  }
  __m512i w = _mm512_set1_epi64(0x0123456789ABCDEFll);
  for (int64_t it = 0; it < iters; ++it) {
    asm volatile("" : "+v"(w));  // the weight changes as far as the compiler knows: nothing is hoisted
#pragma GCC unroll 12
    for (int u = 0; u < U; ++u) acc[u] = _mm512_add_epi64(acc[u], _mm512_popcnt_epi64(_mm512_xor_si512(x[u], w)));
  }
  __m512i s = acc[0];
  for (int u = 1; u < U; ++u) s = _mm512_add_epi64(s, acc[u]);
  static volatile int64_t sink;
  sink = _mm512_reduce_add_epi64(s);
  return iters * U * 512;
}

}  // namespace

void tile_avx512(const Job& J, const Rows& rw, int r0, int64_t m0, int rows, int64_t p, int64_t j, int64_t ig,
                 bool first, int pa, bool mask) {
  if (mask) return tile_pa<1, true>(J, rw, r0, m0, rows, p, j, ig, first);
  if (pa == 2) return tile_pa<2, false>(J, rw, r0, m0, rows, p, j, ig, first);
  tile_pa<1, false>(J, rw, r0, m0, rows, p, j, ig, first);
}

void finish_avx512(const Job& J, int64_t m0, int rows, int64_t p) {
  if (J.act == 1) return finish_act<1>(J, m0, rows, p);
  if (J.act == 2) return finish_act<2>(J, m0, rows, p);
  finish_act<0>(J, m0, rows, p);
}

int64_t peak_avx512(int64_t iters) { return peak_avx512_loop(iters); }

#else  // not x86-64: never called (isa_supported(kAvx512) is false)

void tile_avx512(const Job&, const Rows&, int, int64_t, int, int64_t, int64_t, int64_t, bool, int, bool) {
  throw std::logic_error("lsqbq: AVX-512 kernels called on a CPU without them");
}
void finish_avx512(const Job&, int64_t, int, int64_t) {
  throw std::logic_error("lsqbq: AVX-512 kernels called on a CPU without them");
}
int64_t peak_avx512(int64_t) { throw std::logic_error("lsqbq: AVX-512 kernels called on a CPU without them"); }

#endif
}  // namespace lsqbq
