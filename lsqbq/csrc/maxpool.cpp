// Max-pool (+ ReLU) over NHWC float32 (maxpool.h): one output pixel at a time, its channels in vectors, up to four
// updated side by side (one running maximum at a time waited on the max's latency at every window pixel: the
// 64-channel ImageNet stem pool took 1.3x as long on AVX-512, 1.4x on AVX2); the window's pixels are contiguous
// channel rows, so every load is a dense run of C floats. Every output row is pooled from pointers to the input
// rows of its windows, so a whole tensor and rows made on the fly (pooled_band) share one code.
#include "maxpool.h"

#include <algorithm>
#include <vector>

#include "isa.h"
#include "pool.h"

namespace lsqbq {
namespace {

// Window bounds of output index o along one dimension: [lo, hi) of input indices inside the image.
inline void window(int64_t o, int64_t s, int64_t p, int64_t k, int64_t n, int64_t& lo, int64_t& hi) {
  lo = std::max<int64_t>(0, o * s - p);
  hi = std::min<int64_t>(n, o * s - p + k);
}

// Scalar, channels c0 .. C - 1 of the window rows[0 .. nr) x [w0, w1): m stays NaN once it is (v > NaN is false),
// and takes a NaN v (v != v).
void pixel_portable(const float* const* rows, int64_t nr, int64_t w0, int64_t w1, int64_t C, float* y, bool relu,
                    int64_t c0 = 0) {
  const float* first = rows[0] + w0 * C;
  for (int64_t c = c0; c < C; ++c) y[c] = first[c];
  for (int64_t i = 0; i < nr; ++i)
    for (int64_t iw = (i == 0 ? w0 + 1 : w0); iw < w1; ++iw) {
      const float* v = rows[i] + iw * C;
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
LSQBQ_AVX512 void window_avx512(const float* const* rows, int64_t nr, int64_t w0, int64_t w1, int64_t C, float* y,
                                bool relu, int64_t c) {
  __mmask16 lm[V];
  __m512 m[V];
  const float* first = rows[0] + w0 * C + c;
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) {
    lm[v] = first_lanes(C - c - 16 * v);
    m[v] = _mm512_maskz_loadu_ps(lm[v], first + 16 * v);
  }
  for (int64_t i = 0; i < nr; ++i)
    for (int64_t iw = (i == 0 ? w0 + 1 : w0); iw < w1; ++iw) {
      const float* p = rows[i] + iw * C + c;
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

LSQBQ_AVX512 void pixel_avx512(const float* const* rows, int64_t nr, int64_t w0, int64_t w1, int64_t C, float* y,
                               bool relu) {
  for (int64_t c = 0; c < C; c += 64) {
    switch (std::min<int64_t>(4, (C - c + 15) / 16)) {
      case 4: window_avx512<4>(rows, nr, w0, w1, C, y, relu, c); break;
      case 3: window_avx512<3>(rows, nr, w0, w1, C, y, relu, c); break;
      case 2: window_avx512<2>(rows, nr, w0, w1, C, y, relu, c); break;
      default: window_avx512<1>(rows, nr, w0, w1, C, y, relu, c); break;
    }
  }
}

// As window_avx512, on V vectors of 8 channels.
template <int V>
LSQBQ_AVX2 void window_avx2(const float* const* rows, int64_t nr, int64_t w0, int64_t w1, int64_t C, float* y,
                            bool relu, int64_t c) {
  __m256 m[V];
  const float* first = rows[0] + w0 * C + c;
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) m[v] = _mm256_loadu_ps(first + 8 * v);
  for (int64_t i = 0; i < nr; ++i)
    for (int64_t iw = (i == 0 ? w0 + 1 : w0); iw < w1; ++iw) {
      const float* p = rows[i] + iw * C + c;
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

LSQBQ_AVX2 void pixel_avx2(const float* const* rows, int64_t nr, int64_t w0, int64_t w1, int64_t C, float* y,
                           bool relu) {
  const int64_t C8 = C - C % 8;
  for (int64_t c = 0; c < C8; c += 32) {
    switch (std::min<int64_t>(4, (C8 - c) / 8)) {
      case 4: window_avx2<4>(rows, nr, w0, w1, C, y, relu, c); break;
      case 3: window_avx2<3>(rows, nr, w0, w1, C, y, relu, c); break;
      case 2: window_avx2<2>(rows, nr, w0, w1, C, y, relu, c); break;
      default: window_avx2<1>(rows, nr, w0, w1, C, y, relu, c); break;
    }
  }
  if (C8 < C) pixel_portable(rows, nr, w0, w1, C, y, relu, C8);  // the channel tail
}
#endif

}  // namespace

void max_pool_row(const float* const* rows, int64_t nr, float* y, const PoolColumns& s, bool relu, int64_t isa) {
  for (int64_t ow = 0; ow < s.OW; ++ow) {
    int64_t w0, w1;
    window(ow, s.sw, s.pw, s.KW, s.W, w0, w1);
    float* out = y + ow * s.C;
#if LSQBQ_X86
    if (isa == kAvx512) { pixel_avx512(rows, nr, w0, w1, s.C, out, relu); continue; }
    if (isa == kAvx2) { pixel_avx2(rows, nr, w0, w1, s.C, out, relu); continue; }
#endif
    pixel_portable(rows, nr, w0, w1, s.C, out, relu);
  }
}

void max_pool_nhwc(const float* x, float* y, const PoolShape& s, bool relu, int64_t isa, int64_t threads) {
  const int64_t rows = s.B * s.OH;
  const int64_t per_row = s.OW * s.KH * s.KW * s.C;  // element comparisons
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, per_row));
  const PoolColumns cols{s.W, s.C, s.KW, s.sw, s.pw, s.OW};
  // below ~0.5M comparisons (tens of microseconds) one thread is faster than waking another
  parallel(rows, grain, rows * per_row, int64_t(1) << 19, threads, [&](int64_t begin, int64_t end) {
    std::vector<const float*> in(s.KH);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / s.OH, oh = r % s.OH;
      int64_t h0, h1;
      window(oh, s.sh, s.ph, s.KH, s.H, h0, h1);
      for (int64_t h = h0; h < h1; ++h) in[h - h0] = x + (b * s.H + h) * s.W * s.C;
      max_pool_row(in.data(), h1 - h0, y + r * s.OW * s.C, cols, relu, isa);
    }
  });
}

}  // namespace lsqbq
