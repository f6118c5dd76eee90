// Range and uint8 quantization of NHWC float32 activations over a pixel grid (quantize.h): a pixel's C channels
// are one contiguous run, a whole grid row (OW pixels) when the grid takes every column; runs are read in vectors.
#include "quantize.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "isa.h"
#include "pool.h"

namespace lsqbq {
namespace {

inline const float* pixel(const float* x, const Grid& g, int64_t b, int64_t i, int64_t j) {
  return x + ((b * g.H + i * g.sh) * g.W + j * g.sw) * g.C;
}

// A grid row is one contiguous run of OW * C floats when sw == 1 (else OW runs of C): (runs per row, run length).
inline int64_t runs(const Grid& g) { return g.sw == 1 ? 1 : g.OW; }
inline int64_t run_length(const Grid& g) { return g.sw == 1 ? g.OW * g.C : g.C; }

void range_portable(const float* x, const Grid& g, float& lo, float& hi, bool& nan) {
  const int64_t n = run_length(g);
  for (int64_t b = 0; b < g.B; ++b)
    for (int64_t i = 0; i < g.OH; ++i)
      for (int64_t j = 0; j < runs(g); ++j) {
        const float* p = pixel(x, g, b, i, j);
        for (int64_t c = 0; c < n; ++c) {
          nan |= p[c] != p[c];
          lo = std::min(lo, p[c]);
          hi = std::max(hi, p[c]);
        }
      }
}

inline uint8_t quantize_one(float v, float inv, float add, float levels) {
  float t = v * inv;
  t = t + add;
  t = std::min(std::max(t, 0.0f), levels);
  return static_cast<uint8_t>(t);
}

void quantize_row_portable(const float* x, uint8_t* q, const Grid& g, int64_t b, int64_t i, float inv, float add,
                           float levels) {
  if (g.CO != g.C) {  // pixel by pixel, the appended channels set to the quantized 0
    const uint8_t z = quantize_one(0.0f, inv, add, levels);
    for (int64_t j = 0; j < g.OW; ++j) {
      const float* p = pixel(x, g, b, i, j);
      uint8_t* o = q + ((b * g.OH + i) * g.OW + j) * g.CO;
      for (int64_t c = 0; c < g.C; ++c) o[c] = quantize_one(p[c], inv, add, levels);
      for (int64_t c = g.C; c < g.CO; ++c) o[c] = z;
    }
    return;
  }
  const int64_t n = run_length(g);
  for (int64_t j = 0; j < runs(g); ++j) {
    const float* p = pixel(x, g, b, i, j);
    uint8_t* o = q + ((b * g.OH + i) * g.OW + j) * g.C;
    for (int64_t c = 0; c < n; ++c) o[c] = quantize_one(p[c], inv, add, levels);
  }
}

#if LSQBQ_X86
LSQBQ_AVX512 void range_avx512(const float* x, const Grid& g, float& lo, float& hi, bool& nan) {
  __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
  __mmask16 bad = 0;
  const int64_t n = run_length(g);
  for (int64_t b = 0; b < g.B; ++b)
    for (int64_t i = 0; i < g.OH; ++i)
      for (int64_t j = 0; j < runs(g); ++j) {
        const float* p = pixel(x, g, b, i, j);
        for (int64_t c = 0; c < n; c += 16) {
          const __mmask16 lm = first_lanes(n - c);
          const __m512 v = _mm512_maskz_loadu_ps(lm, p + c);
          bad |= _mm512_mask_cmp_ps_mask(lm, v, v, _CMP_UNORD_Q);
          vlo = _mm512_mask_min_ps(vlo, lm, vlo, v);
          vhi = _mm512_mask_max_ps(vhi, lm, vhi, v);
        }
      }
  lo = _mm512_reduce_min_ps(vlo);
  hi = _mm512_reduce_max_ps(vhi);
  nan |= bad != 0;
}

// Separate mul and add (no fma), clamp by max then min, truncating conversion: the portable steps in 16 lanes.
LSQBQ_AVX512 void quantize_row_avx512(const float* x, uint8_t* q, const Grid& g, int64_t b, int64_t i, float inv,
                                      float add, float levels) {
  const __m512 vinv = _mm512_set1_ps(inv), vadd = _mm512_set1_ps(add), vlev = _mm512_set1_ps(levels);
  const __m512 zero = _mm512_setzero_ps();
  if (g.CO != g.C) {
    if (g.C != 3 || g.CO != 4 || g.sw != 1) return quantize_row_portable(x, q, g, b, i, inv, add, levels);
    // RGB to 4 channels: 4 pixels (12 floats) spread over lanes 0-2, 4-6, 8-10, 12-14; the zero lanes give the
    // quantized 0, as the appended channel must
    const float* p = pixel(x, g, b, i, 0);
    uint8_t* o = q + (b * g.OH + i) * g.OW * 4;
    int64_t j = 0;
    const __m512i spread = _mm512_setr_epi32(0, 1, 2, 0, 3, 4, 5, 0, 6, 7, 8, 0, 9, 10, 11, 0);
    for (; j + 4 <= g.OW; j += 4) {
      const __m512 v = _mm512_maskz_permutexvar_ps(0x7777, spread, _mm512_maskz_loadu_ps(0x0fff, p + 3 * j));
      __m512 t = _mm512_mul_ps(v, vinv);
      t = _mm512_add_ps(t, vadd);
      t = _mm512_min_ps(_mm512_max_ps(t, zero), vlev);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 4 * j), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(t)));
    }
    const uint8_t z = quantize_one(0.0f, inv, add, levels);
    for (; j < g.OW; ++j) {
      for (int64_t c = 0; c < 3; ++c) o[4 * j + c] = quantize_one(p[3 * j + c], inv, add, levels);
      o[4 * j + 3] = z;
    }
    return;
  }
  const int64_t n = run_length(g);
  for (int64_t j = 0; j < runs(g); ++j) {
    const float* p = pixel(x, g, b, i, j);
    uint8_t* o = q + ((b * g.OH + i) * g.OW + j) * g.C;
    for (int64_t c = 0; c < n; c += 16) {
      const __mmask16 lm = first_lanes(n - c);
      __m512 t = _mm512_mul_ps(_mm512_maskz_loadu_ps(lm, p + c), vinv);
      t = _mm512_add_ps(t, vadd);
      t = _mm512_min_ps(_mm512_max_ps(t, zero), vlev);
      _mm_mask_storeu_epi8(o + c, lm, _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(t)));
    }
  }
}
#endif

}  // namespace

void range_nhwc(const float* x, const Grid& g, float& lo, float& hi, int64_t isa) {
  lo = std::numeric_limits<float>::infinity();
  hi = -std::numeric_limits<float>::infinity();
  bool nan = false;
#if LSQBQ_X86
  if (isa == kAvx512) range_avx512(x, g, lo, hi, nan);
  else range_portable(x, g, lo, hi, nan);
#else
  (void)isa;
  range_portable(x, g, lo, hi, nan);
#endif
  if (nan) lo = hi = std::numeric_limits<float>::quiet_NaN();
}

void quantize_u8_nhwc(const float* x, uint8_t* q, const Grid& g, float inv, float add, float levels, int64_t isa,
                      int64_t threads) {
  const int64_t rows = g.B * g.OH, per_row = g.OW * g.CO;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(1, per_row));
  // below ~0.5M elements (tens of microseconds) one thread is faster than waking another
  parallel(rows, grain, rows * per_row, int64_t(1) << 19, threads, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / g.OH, i = r % g.OH;
#if LSQBQ_X86
      if (isa == kAvx512) {
        quantize_row_avx512(x, q, g, b, i, inv, add, levels);
        continue;
      }
#endif
      (void)isa;
      quantize_row_portable(x, q, g, b, i, inv, add, levels);
    }
  });
}

}  // namespace lsqbq
