// The AVX2 activation encode: 8 channels per vector, the same float operations (the prologue a true fma, as
// std::fma in the portable rows), the same sign bits and the same float64 lane sums as the portable rows
// (encode.h): lane c mod 16 accumulates |r| of its channels in pixel and channel order, held as four 4-lane
// double vectors.
#include <stdexcept>

#include "encode.h"

namespace lsqbq {
#if LSQBQ_X86
namespace {

// All-ones in the first min(k, 8) of 8 lanes (k >= 0).
LSQBQ_AVX2_FMA inline __attribute__((always_inline)) __m256i first_lanes8(int64_t k) {
  const int n = static_cast<int>(k >= 8 ? 8 : k);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// y = clamp(fma(x, a, b)) of channels c0 .. c0 + 7 of pixel px (lanes outside ld read as 0).
LSQBQ_AVX2_FMA inline __attribute__((always_inline)) __m256 load_y(const Enc& E, const float* px, int64_t c0,
                                                                   __m256i ld, bool full, __m256 lo, __m256 hi) {
  __m256 y = full ? _mm256_loadu_ps(px + c0) : _mm256_maskload_ps(px + c0, ld);
  if (E.in_a) {
    const __m256 a = full ? _mm256_loadu_ps(E.in_a + c0) : _mm256_maskload_ps(E.in_a + c0, ld);
    const __m256 b = full ? _mm256_loadu_ps(E.in_b + c0) : _mm256_maskload_ps(E.in_b + c0, ld);
    y = _mm256_fmadd_ps(y, a, b);
  }
  if (E.do_clamp) y = _mm256_min_ps(hi, _mm256_max_ps(lo, y));  // NaN (second operand) passes through
  return y;
}

LSQBQ_AVX2_FMA void enc_row_vec(const Enc& E, int64_t b, int64_t h, const float* v, int first, int last,
                                double* lanes) {
  const float* src = E.row_src(b, h);
  uint64_t* d = E.row_dst(b, h);
  const __m256 zero = _mm256_setzero_ps();
  const __m256 lo = _mm256_set1_ps(-E.cv), hi = _mm256_set1_ps(E.cv);
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 vp[8], vn[8];
  for (int i = 0; i < last; ++i) {
    vp[i] = _mm256_set1_ps(v[i]);
    vn[i] = _mm256_sub_ps(zero, vp[i]);
  }
  __m256d acc[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()};
  for (int64_t w = 0; w < E.W; ++w) {
    const float* px = src + w * E.C;
    for (int64_t q = 0; q < E.Cw; ++q) {
      uint64_t words[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int g = 0; g < 8; ++g) {
        const int64_t c0 = q * 64 + g * 8;
        const int64_t cn = std::min<int64_t>(8, E.C - c0);
        if (cn <= 0) break;
        const __m256i ld = first_lanes8(cn);
        const int valid = (1 << cn) - 1;
        const __m256 y = load_y(E, px, c0, ld, cn == 8, lo, hi);
        __m256 approx = zero, r = y;
        for (int i = 0; i <= last; ++i) {
          r = _mm256_sub_ps(y, approx);
          const __m256 neg = _mm256_cmp_ps(r, zero, _CMP_NGE_UQ);
          if (i >= first) words[i] |= uint64_t(_mm256_movemask_ps(neg) & valid) << (8 * g);
          if (i < last) approx = _mm256_add_ps(approx, _mm256_blendv_ps(vp[i], vn[i], neg));
        }
        if (lanes) {
          const __m256 ar = _mm256_and_ps(_mm256_and_ps(r, magnitude), _mm256_castsi256_ps(ld));
          const int l = (g & 1) * 2;  // channels c0 .. c0 + 7 are lanes 0..7 or 8..15 of c mod 16
          acc[l] = _mm256_add_pd(acc[l], _mm256_cvtps_pd(_mm256_castps256_ps128(ar)));
          acc[l + 1] = _mm256_add_pd(acc[l + 1], _mm256_cvtps_pd(_mm256_extractf128_ps(ar, 1)));
        }
      }
      store_words(words, first, last, E.mask, std::min<int64_t>(64, E.C - q * 64), d + w * E.Cw + q, E.plane_stride);
    }
  }
  if (lanes)
    for (int l = 0; l < 4; ++l) _mm256_storeu_pd(lanes + 4 * l, acc[l]);
}

LSQBQ_AVX2_FMA void prologue_row_vec(const Enc& E, int64_t b, int64_t h, float* out) {
  const float* src = E.row_src(b, h);
  const __m256 lo = _mm256_set1_ps(-E.cv), hi = _mm256_set1_ps(E.cv);
  for (int64_t w = 0; w < E.W; ++w)
    for (int64_t c0 = 0; c0 < E.C; c0 += 8) {
      const int64_t cn = std::min<int64_t>(8, E.C - c0);
      const __m256i ld = first_lanes8(cn);
      const __m256 y = load_y(E, src + w * E.C, c0, ld, cn == 8, lo, hi);
      if (cn == 8) _mm256_storeu_ps(out + w * E.C + c0, y);
      else _mm256_maskstore_ps(out + w * E.C + c0, ld, y);
    }
}

}  // namespace

void enc_row_avx2(const Enc& E, int64_t b, int64_t h, const float* v, int first, int last, double* lanes) {
  enc_row_vec(E, b, h, v, first, last, lanes);
}

void prologue_row_avx2(const Enc& E, int64_t b, int64_t h, float* out) { prologue_row_vec(E, b, h, out); }

#else  // not x86-64: never called (isa_supported(kAvx2) is false)

void enc_row_avx2(const Enc&, int64_t, int64_t, const float*, int, int, double*) {
  throw std::logic_error("lsqbq: AVX2 kernels called on a CPU without them");
}
void prologue_row_avx2(const Enc&, int64_t, int64_t, float*) {
  throw std::logic_error("lsqbq: AVX2 kernels called on a CPU without them");
}

#endif
}  // namespace lsqbq
