// Max-pool (+ ReLU) over NHWC float32 (maxpool.h): one output pixel at a time, its channels in vectors, up to four
// updated side by side (one running maximum at a time waited on the max's latency at every window pixel: the
// 64-channel ImageNet stem pool took 1.3x as long on AVX-512, 1.4x on AVX2); the window's pixels are contiguous
// channel rows, so every load is a dense run of C floats.
#include "maxpool.h"

#include <algorithm>

#include "isa.h"
#include "pool.h"

namespace lsqbq {
namespace {

// Window bounds of output index o along one dimension: [lo, hi) of input indices inside the image.
inline void window(int64_t o, int64_t s, int64_t p, int64_t k, int64_t n, int64_t& lo, int64_t& hi) {
  lo = std::max<int64_t>(0, o * s - p);
  hi = std::min<int64_t>(n, o * s - p + k);
}

// Scalar, channels c0 .. C - 1: m stays NaN once it is (v > NaN is false), and takes a NaN v (v != v).
void pixel_portable(const float* x, float* y, const PoolShape& s, int64_t h0, int64_t h1, int64_t w0, int64_t w1,
                    int64_t b, bool relu, int64_t c0 = 0) {
  const int64_t C = s.C;
  const float* first = x + ((b * s.H + h0) * s.W + w0) * C;
  for (int64_t c = c0; c < C; ++c) y[c] = first[c];
  for (int64_t ih = h0; ih < h1; ++ih)
    for (int64_t iw = (ih == h0 ? w0 + 1 : w0); iw < w1; ++iw) {
      const float* v = x + ((b * s.H + ih) * s.W + iw) * C;
      for (int64_t c = c0; c < C; ++c) y[c] = (v[c] > y[c] || v[c] != v[c]) ? v[c] : y[c];
    }
  if (relu)
    for (int64_t c = c0; c < C; ++c) y[c] = (y[c] > 0.0f || y[c] != y[c]) ? y[c] : 0.0f;
}

#if LSQBQ_X86
// Channels c .. c + 16 V - 1 of one output pixel: V running maxima updated side by side, so a load waits on its own
// vector's previous max only. max_ps(v, m) returns m when either is NaN (m stays NaN once it is); a NaN v is then
// blended in.
template <int V>
LSQBQ_AVX512 void window_avx512(const float* x, float* y, const PoolShape& s, int64_t h0, int64_t h1, int64_t w0,
                                int64_t w1, int64_t b, bool relu, int64_t c) {
  const int64_t C = s.C;
  __mmask16 lm[V];
  __m512 m[V];
  const float* first = x + ((b * s.H + h0) * s.W + w0) * C + c;
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) {
    lm[v] = first_lanes(C - c - 16 * v);
    m[v] = _mm512_maskz_loadu_ps(lm[v], first + 16 * v);
  }
  for (int64_t ih = h0; ih < h1; ++ih)
    for (int64_t iw = (ih == h0 ? w0 + 1 : w0); iw < w1; ++iw) {
      const float* p = x + ((b * s.H + ih) * s.W + iw) * C + c;
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) {
        const __m512 e = _mm512_maskz_loadu_ps(lm[v], p + 16 * v);
        m[v] = _mm512_mask_mov_ps(_mm512_max_ps(e, m[v]), _mm512_cmp_ps_mask(e, e, _CMP_UNORD_Q), e);
      }
    }
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) {
    if (relu) m[v] = _mm512_max_ps(_mm512_setzero_ps(), m[v]);  // NaN (second operand) passes through
    _mm512_mask_storeu_ps(y + c + 16 * v, lm[v], m[v]);
  }
}

LSQBQ_AVX512 void pixel_avx512(const float* x, float* y, const PoolShape& s, int64_t h0, int64_t h1, int64_t w0,
                               int64_t w1, int64_t b, bool relu) {
  for (int64_t c = 0; c < s.C; c += 64) {
    switch (std::min<int64_t>(4, (s.C - c + 15) / 16)) {
      case 4: window_avx512<4>(x, y, s, h0, h1, w0, w1, b, relu, c); break;
      case 3: window_avx512<3>(x, y, s, h0, h1, w0, w1, b, relu, c); break;
      case 2: window_avx512<2>(x, y, s, h0, h1, w0, w1, b, relu, c); break;
      default: window_avx512<1>(x, y, s, h0, h1, w0, w1, b, relu, c); break;
    }
  }
}

// As window_avx512, on V vectors of 8 channels.
template <int V>
LSQBQ_AVX2 void window_avx2(const float* x, float* y, const PoolShape& s, int64_t h0, int64_t h1, int64_t w0,
                            int64_t w1, int64_t b, bool relu, int64_t c) {
  const int64_t C = s.C;
  __m256 m[V];
  const float* first = x + ((b * s.H + h0) * s.W + w0) * C + c;
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) m[v] = _mm256_loadu_ps(first + 8 * v);
  for (int64_t ih = h0; ih < h1; ++ih)
    for (int64_t iw = (ih == h0 ? w0 + 1 : w0); iw < w1; ++iw) {
      const float* p = x + ((b * s.H + ih) * s.W + iw) * C + c;
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) {
        const __m256 e = _mm256_loadu_ps(p + 8 * v);
        m[v] = _mm256_blendv_ps(_mm256_max_ps(e, m[v]), e, _mm256_cmp_ps(e, e, _CMP_UNORD_Q));
      }
    }
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) {
    if (relu) m[v] = _mm256_max_ps(_mm256_setzero_ps(), m[v]);
    _mm256_storeu_ps(y + c + 8 * v, m[v]);
  }
}

LSQBQ_AVX2 void pixel_avx2(const float* x, float* y, const PoolShape& s, int64_t h0, int64_t h1, int64_t w0,
                           int64_t w1, int64_t b, bool relu) {
  const int64_t C8 = s.C - s.C % 8;
  for (int64_t c = 0; c < C8; c += 32) {
    switch (std::min<int64_t>(4, (C8 - c) / 8)) {
      case 4: window_avx2<4>(x, y, s, h0, h1, w0, w1, b, relu, c); break;
      case 3: window_avx2<3>(x, y, s, h0, h1, w0, w1, b, relu, c); break;
      case 2: window_avx2<2>(x, y, s, h0, h1, w0, w1, b, relu, c); break;
      default: window_avx2<1>(x, y, s, h0, h1, w0, w1, b, relu, c); break;
    }
  }
  if (C8 < s.C) pixel_portable(x, y, s, h0, h1, w0, w1, b, relu, C8);  // the channel tail
}
#endif

}  // namespace

void max_pool_nhwc(const float* x, float* y, const PoolShape& s, bool relu, int64_t isa, int64_t threads) {
  const int64_t rows = s.B * s.OH;
  const int64_t per_row = s.OW * s.KH * s.KW * s.C;  // element comparisons
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, per_row));
  // below ~0.5M comparisons (tens of microseconds) one thread is faster than waking another
  parallel(rows, grain, rows * per_row, int64_t(1) << 19, threads, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / s.OH, oh = r % s.OH;
      int64_t h0, h1;
      window(oh, s.sh, s.ph, s.KH, s.H, h0, h1);
      for (int64_t ow = 0; ow < s.OW; ++ow) {
        int64_t w0, w1;
        window(ow, s.sw, s.pw, s.KW, s.W, w0, w1);
        float* out = y + (r * s.OW + ow) * s.C;
#if LSQBQ_X86
        if (isa == kAvx512) { pixel_avx512(x, out, s, h0, h1, w0, w1, b, relu); continue; }
        if (isa == kAvx2) { pixel_avx2(x, out, s, h0, h1, w0, w1, b, relu); continue; }
#endif
        pixel_portable(x, out, s, h0, h1, w0, w1, b, relu);
      }
    }
  });
}

}  // namespace lsqbq
