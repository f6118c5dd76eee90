// Direct float32 convolution of few taps (direct_conv_f32.h). One output row (b, oh) at a time: its taps' rows
// are clipped to the image once; the columns whose taps all lie inside run in blocks of P pixels (the weights of a
// tap loaded once per block, P V accumulators), the few border columns one pixel at a time with their taps clipped.
// An output row goes to memory, or to a pooled band's ring (maxpool.h).
#include "direct_conv_f32.h"

#include <algorithm>
#include <cmath>
#include <memory>

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

// Output channels n0 .. n0 + 16 V - 1 of row (b, oh): inner columns in blocks of P, then of 4 and 2, the rest one
// at a time.
template <int V, int P>
LSQBQ_AVX512 void panel_avx512(const DirectConvF32& d, int64_t b, int64_t oh, int64_t n0, int64_t lo, int64_t hi,
                               float* y) {
  int64_t kh0, kh1;
  clip(oh, d.sh, d.ph, d.KH, d.H, kh0, kh1);
  auto one = [&](int64_t ow) {
    int64_t kw0, kw1;
    clip(ow, d.sw, d.pw, d.KW, d.W, kw0, kw1);
    block_avx512<V, 1>(d, b, oh, ow, kh0, kh1, kw0, kw1, n0, y);
  };
  for (int64_t ow = 0; ow < lo; ++ow) one(ow);
  int64_t ow = lo;
  for (; ow + P <= hi; ow += P) block_avx512<V, P>(d, b, oh, ow, kh0, kh1, 0, d.KW, n0, y);
  if (P > 4 && ow + 4 <= hi) {  // the rest of the inner run in smaller blocks: fewer loads of the same weights
    block_avx512<V, (P > 4 ? 4 : 1)>(d, b, oh, ow, kh0, kh1, 0, d.KW, n0, y);
    ow += 4;
  }
  if (P > 2 && ow + 2 <= hi) {
    block_avx512<V, (P > 2 ? 2 : 1)>(d, b, oh, ow, kh0, kh1, 0, d.KW, n0, y);
    ow += 2;
  }
  for (; ow < d.OW; ++ow) one(ow);
}

LSQBQ_AVX512 void row_avx512(const DirectConvF32& d, int64_t b, int64_t oh, int64_t lo, int64_t hi, float* y) {
  for (int64_t n0 = 0; n0 < d.N; n0 += 64) {
    switch (std::min<int64_t>(4, (d.N - n0 + 15) / 16)) {  // P V accumulators and V weights in 32 registers
      case 1: panel_avx512<1, 12>(d, b, oh, n0, lo, hi, y); break;
      case 2: panel_avx512<2, 12>(d, b, oh, n0, lo, hi, y); break;
      case 3: panel_avx512<3, 8>(d, b, oh, n0, lo, hi, y); break;
      default: panel_avx512<4, 6>(d, b, oh, n0, lo, hi, y); break;
    }
  }
}
#endif

}  // namespace

void direct_conv_f32(const DirectConvF32& d, int64_t isa) {
  if (d.B <= 0 || d.OH <= 0 || d.OW <= 0 || d.N <= 0) return;
  int64_t lo, hi;
  inner_columns(d, lo, hi);
  const bool vector = LSQBQ_X86 && isa == kAvx512 && avx512_supported();
  auto conv_row = [&](int64_t b, int64_t oh, float* y) {
#if LSQBQ_X86
    if (vector) return row_avx512(d, b, oh, lo, hi, y);
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
  // Bands of pooled rows: one per image on one thread (no conv row made twice); else about two per thread, the
  // pool's overlapping conv rows made by both bands they border.
  const int64_t bands = d.threads <= 1 ? 1 : std::min<int64_t>(d.POH, (2 * d.threads + d.B - 1) / d.B);
  const int64_t per_band = (d.POH + bands - 1) / bands;
  const PoolColumns cols{d.OW, d.N, d.pk, d.ps, d.pp, d.POW};
  const int64_t pool_isa = vector ? kAvx512 : kPortable;
  parallel(d.B * bands, 1, work, int64_t(1) << 20, d.threads, [&](int64_t begin, int64_t end) {
    std::unique_ptr<float[]> ring(new float[d.pk * d.OW * d.N]);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / bands, p0 = (task % bands) * per_band, p1 = std::min(d.POH, p0 + per_band);
      pooled_band([&](int64_t h, float* row) { conv_row(b, h, row); }, d.OH, d.pk, d.ps, d.pp, cols, p0, p1,
                  ring.get(), d.out + (b * d.POH + p0) * d.POW * d.N, d.relu, pool_isa);
    }
  });
}

}  // namespace lsqbq
