// Direct float32 convolution of few taps (direct_conv_f32.h). One output row (b, oh) at a time: its taps' rows
// are clipped to the image once; the columns whose taps all lie inside run in blocks of P pixels (the weights of a
// tap loaded once per block, P V accumulators), the few border columns one pixel at a time with their taps clipped.
// An output row goes to memory, or to a pooled band's ring (maxpool.h).
#include "direct_conv_f32.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "isa.h"
#include "maxpool.h"
#include "pool.h"

namespace lsqbq {
namespace {

// Columns [lo, hi) whose taps kw = 0 .. KW - 1 all lie inside the row: 0 <= ow sw - pw, ow sw - pw + KW <= W.
void inner_columns(const DirectConvF32& d, int64_t& lo, int64_t& hi) {
  lo = std::min<int64_t>(d.OW, (d.pw + d.sw - 1) / d.sw);
  hi = d.W + d.pw - d.KW < 0 ? 0 : std::min<int64_t>(d.OW, (d.W + d.pw - d.KW) / d.sw + 1);
  hi = std::max(lo, hi);
}

// Taps of one output index along a dimension: [k0, k1) of k with 0 <= o s - p + k < n.
inline void clip(int64_t o, int64_t s, int64_t p, int64_t k, int64_t n, int64_t& k0, int64_t& k1) {
  k0 = std::max<int64_t>(0, p - o * s);
  k1 = std::min<int64_t>(k, n + p - o * s);
}

inline float relu_keep_nan(float v) { return (v > 0.0f || v != v) ? v : 0.0f; }

// ReLU with the conv rows only without a pool (with one, after it).
inline bool row_relu(const DirectConvF32& d) { return d.relu && d.pk == 0; }

// Conv row (b, oh) into out (OW x N floats).
void row_portable(const DirectConvF32& d, int64_t b, int64_t oh, float* out) {
  const int64_t Np = d.padded_n();
  int64_t kh0, kh1;
  clip(oh, d.sh, d.ph, d.KH, d.H, kh0, kh1);
  for (int64_t ow = 0; ow < d.OW; ++ow) {
    int64_t kw0, kw1;
    clip(ow, d.sw, d.pw, d.KW, d.W, kw0, kw1);
    float* y = out + ow * d.N;
    for (int64_t n = 0; n < d.N; ++n) {
      float acc = 0.0f;
      for (int64_t kh = kh0; kh < kh1; ++kh)
        for (int64_t kw = kw0; kw < kw1; ++kw) {
          const float* xp = d.x + ((b * d.H + oh * d.sh - d.ph + kh) * d.W + ow * d.sw - d.pw + kw) * d.C;
          const float* wp = d.w + (kh * d.KW + kw) * d.C * Np + n;
          for (int64_t c = 0; c < d.C; ++c) acc = std::fma(xp[c], wp[c * Np], acc);
        }
      const float v = d.bias ? acc + d.bias[n] : acc;
      y[n] = row_relu(d) ? relu_keep_nan(v) : v;
    }
  }
}

#if LSQBQ_X86
// P pixels from column ow0 (taps kw0 .. kw1 - 1, rows kh0 .. kh1 - 1) of output channels n0 .. n0 + 16 V - 1, into
// the row y.
template <int V, int P>
LSQBQ_AVX512 void block_avx512(const DirectConvF32& d, int64_t b, int64_t oh, int64_t ow0, int64_t kh0, int64_t kh1,
                               int64_t kw0, int64_t kw1, int64_t n0, float* y) {
  const int64_t Np = d.padded_n(), C = d.C, step = d.sw * C;
  __m512 acc[P][V];
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[p][v] = _mm512_setzero_ps();
  for (int64_t kh = kh0; kh < kh1; ++kh) {
    const int64_t row = ((b * d.H + oh * d.sh - d.ph + kh) * d.W + ow0 * d.sw - d.pw) * C;  // tap kw = 0
    for (int64_t kw = kw0; kw < kw1; ++kw) {
      const float* xp = d.x + (row + kw * C);
      const float* wp = d.w + (kh * d.KW + kw) * C * Np + n0;
      for (int64_t c = 0; c < C; ++c, wp += Np) {
        __m512 wv[V];
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) wv[v] = _mm512_loadu_ps(wp + 16 * v);
#pragma GCC unroll 16
        for (int p = 0; p < P; ++p) {
          const __m512 xv = _mm512_set1_ps(xp[p * step + c]);
#pragma GCC unroll 4
          for (int v = 0; v < V; ++v) acc[p][v] = _mm512_fmadd_ps(xv, wv[v], acc[p][v]);
        }
      }
    }
  }
  const __m512 zero = _mm512_setzero_ps();
  const bool relu = row_relu(d);
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) {
    const int64_t n = n0 + 16 * v;
    const __mmask16 m = first_lanes(d.N - n);
    const __m512 bv = d.bias ? _mm512_maskz_loadu_ps(m, d.bias + n) : zero;
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) {
      __m512 r = d.bias ? _mm512_add_ps(acc[p][v], bv) : acc[p][v];
      if (relu) r = _mm512_max_ps(zero, r);  // max_ps returns its second operand when one is NaN: NaN stays
      _mm512_mask_storeu_ps(y + (ow0 + p) * d.N + n, m, r);
    }
  }
}

// Row (b, oh) of one panel of output channels: the inner columns [lo, hi) in blocks of P pixels, then of 4 and 2,
// the rest and the border columns (their taps clipped) one at a time; block(Pixels<Q>{}, ow, kh0, kh1, kw0, kw1)
// makes Q pixels from column ow.
template <int P>
using Pixels = std::integral_constant<int, P>;

template <int P, class Block>
inline void panel(const DirectConvF32& d, int64_t oh, int64_t lo, int64_t hi, Block&& block) {
  int64_t kh0, kh1;
  clip(oh, d.sh, d.ph, d.KH, d.H, kh0, kh1);
  auto one = [&](int64_t ow) {
    int64_t kw0, kw1;
    clip(ow, d.sw, d.pw, d.KW, d.W, kw0, kw1);
    block(Pixels<1>{}, ow, kh0, kh1, kw0, kw1);
  };
  for (int64_t ow = 0; ow < lo; ++ow) one(ow);
  int64_t ow = lo;
  for (; ow + P <= hi; ow += P) block(Pixels<P>{}, ow, kh0, kh1, int64_t(0), d.KW);
  if (P > 4 && ow + 4 <= hi) {  // the rest of the inner run in smaller blocks: fewer loads of the same weights
    block(Pixels<(P > 4 ? 4 : 1)>{}, ow, kh0, kh1, int64_t(0), d.KW);
    ow += 4;
  }
  if (P > 2 && ow + 2 <= hi) {
    block(Pixels<(P > 2 ? 2 : 1)>{}, ow, kh0, kh1, int64_t(0), d.KW);
    ow += 2;
  }
  for (; ow < d.OW; ++ow) one(ow);
}

LSQBQ_AVX512 void row_avx512(const DirectConvF32& d, int64_t b, int64_t oh, int64_t lo, int64_t hi, float* y) {
  for (int64_t n0 = 0; n0 < d.N; n0 += 64) {
    auto run = [&](auto v, auto p) {  // V = v vectors of 16 channels, blocks of P = p pixels
      panel<decltype(p)::value>(d, oh, lo, hi, [&](auto q, int64_t ow, int64_t kh0, int64_t kh1, int64_t kw0,
                                                   int64_t kw1) {
        block_avx512<decltype(v)::value, decltype(q)::value>(d, b, oh, ow, kh0, kh1, kw0, kw1, n0, y);
      });
    };
    switch (std::min<int64_t>(4, (d.N - n0 + 15) / 16)) {  // P V accumulators and V weights in 32 registers
      case 1: run(Pixels<1>{}, Pixels<12>{}); break;
      case 2: run(Pixels<2>{}, Pixels<12>{}); break;
      case 3: run(Pixels<3>{}, Pixels<8>{}); break;
      default: run(Pixels<4>{}, Pixels<6>{}); break;
    }
  }
}

// As block_avx512, on V vectors of 8 channels (16 registers: P V accumulators, V weights, one broadcast); the
// same fused multiply-adds in the same order, so the same bits.
template <int V, int P>
LSQBQ_AVX2_FMA void block_avx2(const DirectConvF32& d, int64_t b, int64_t oh, int64_t ow0, int64_t kh0, int64_t kh1,
                               int64_t kw0, int64_t kw1, int64_t n0, float* y) {
  const int64_t Np = d.padded_n(), C = d.C, step = d.sw * C;
  __m256 acc[P][V];
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) acc[p][v] = _mm256_setzero_ps();
  for (int64_t kh = kh0; kh < kh1; ++kh) {
    const int64_t row = ((b * d.H + oh * d.sh - d.ph + kh) * d.W + ow0 * d.sw - d.pw) * C;  // tap kw = 0
    for (int64_t kw = kw0; kw < kw1; ++kw) {
      const float* xp = d.x + (row + kw * C);
      const float* wp = d.w + (kh * d.KW + kw) * C * Np + n0;
      for (int64_t c = 0; c < C; ++c, wp += Np) {
        __m256 wv[V];
#pragma GCC unroll 2
        for (int v = 0; v < V; ++v) wv[v] = _mm256_loadu_ps(wp + 8 * v);  // Np: within the zero padding
#pragma GCC unroll 16
        for (int p = 0; p < P; ++p) {
          const __m256 xv = _mm256_broadcast_ss(xp + p * step + c);
#pragma GCC unroll 2
          for (int v = 0; v < V; ++v) acc[p][v] = _mm256_fmadd_ps(xv, wv[v], acc[p][v]);
        }
      }
    }
  }
  const __m256 zero = _mm256_setzero_ps();
  const bool relu = row_relu(d);
#pragma GCC unroll 2
  for (int v = 0; v < V; ++v) {
    const int64_t n = n0 + 8 * v, k = std::min<int64_t>(8, d.N - n);
    if (k <= 0) break;
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(k)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5,
                                                                                                    6, 7));
    const __m256 bv = d.bias ? _mm256_maskload_ps(d.bias + n, m) : zero;
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) {
      __m256 r = d.bias ? _mm256_add_ps(acc[p][v], bv) : acc[p][v];
      if (relu) r = _mm256_max_ps(zero, r);  // NaN (second operand) stays
      float* out = y + (ow0 + p) * d.N + n;
      if (k == 8) {
        _mm256_storeu_ps(out, r);
      } else {
        _mm256_maskstore_ps(out, m, r);
      }
    }
  }
}

LSQBQ_AVX2_FMA void row_avx2(const DirectConvF32& d, int64_t b, int64_t oh, int64_t lo, int64_t hi, float* y) {
  for (int64_t n0 = 0; n0 < d.N; n0 += 16) {
    auto run = [&](auto v, auto p) {
      panel<decltype(p)::value>(d, oh, lo, hi, [&](auto q, int64_t ow, int64_t kh0, int64_t kh1, int64_t kw0,
                                                   int64_t kw1) {
        block_avx2<decltype(v)::value, decltype(q)::value>(d, b, oh, ow, kh0, kh1, kw0, kw1, n0, y);
      });
    };
    if (d.N - n0 <= 8) {
      run(Pixels<1>{}, Pixels<12>{});
    } else {
      run(Pixels<2>{}, Pixels<6>{});
    }
  }
}
#endif

}  // namespace

void direct_conv_f32(const DirectConvF32& d, int64_t isa) {
  if (d.B <= 0 || d.OH <= 0 || d.OW <= 0 || d.N <= 0) return;
  int64_t lo, hi;
  inner_columns(d, lo, hi);
  const int64_t path = !LSQBQ_X86 ? kPortable
                       : isa == kAvx512 && avx512_supported() ? kAvx512
                       : isa == kAvx2 && avx2_supported()     ? kAvx2
                                                               : kPortable;
  auto conv_row = [&](int64_t b, int64_t oh, float* y) {
#if LSQBQ_X86
    if (path == kAvx512) return row_avx512(d, b, oh, lo, hi, y);
    if (path == kAvx2) return row_avx2(d, b, oh, lo, hi, y);
#endif
    row_portable(d, b, oh, y);
  };
  const int64_t work = d.B * d.OH * d.OW * d.N * d.KH * d.KW * d.C;
  if (d.pk == 0) {
    parallel(d.B * d.OH, 1, work, int64_t(1) << 20, d.threads, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) conv_row(r / d.OH, r % d.OH, d.out + r * d.OW * d.N);
    });
    return;
  }
  pooled_images(conv_row, d.B, d.OH, d.pk, d.ps, d.pp, d.POH, PoolColumns{d.OW, d.N, d.pk, d.ps, d.pp, d.POW}, d.out,
                d.relu, path, work, int64_t(1) << 20, d.threads);
}

}  // namespace lsqbq
