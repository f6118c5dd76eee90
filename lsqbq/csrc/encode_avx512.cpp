// The AVX-512 activation encode: 16 channels per vector, the same float operations and lane sums as the
// portable rows (encode.h).
#include <stdexcept>

#include "encode.h"

namespace lsqbq {
#if LSQBQ_X86
namespace {

// The first plane (sign of y; no scales needed) of NR image rows side by side (flat indices rows[r] = b H + h) and,
// with LANES, each row's sums of |y| into lanes[r]: ls-1 in one pass, and the first pass of a greedy fit. Same
// operations and lane order as the general row below. A row's lane sums are one chain of dependent double adds
// (two per 16 channels), which bounds a lone row; the rows' chains are independent, so two rows side by side run
// in about the time of one. Lanes past the last channel load as 0 (prologue and clamp keep them 0), so they add 0.
template <int NR, bool LANES, bool PRO, bool CLAMP>
LSQBQ_AVX512 void enc_rows_first(const Enc& E, const int64_t* rows, double* const* lanes) {
  const float* src[NR];
  uint64_t* d[NR];
  __m512d acc_lo[NR], acc_hi[NR];
#pragma GCC unroll 2
  for (int r = 0; r < NR; ++r) {
    src[r] = E.row_src(rows[r] / E.H, rows[r] % E.H);
    d[r] = E.row_dst(rows[r] / E.H, rows[r] % E.H);
    acc_lo[r] = acc_hi[r] = _mm512_setzero_pd();
  }
  const __m512 zero = _mm512_setzero_ps();
  const __m512 lo = _mm512_set1_ps(-E.cv), hi = _mm512_set1_ps(E.cv);
  const int64_t C = E.C, Cw = E.Cw;
  for (int64_t w = 0; w < E.W; ++w) {
    for (int64_t q = 0; q < Cw; ++q) {
      uint64_t word[NR] = {};
#pragma GCC unroll 4
      for (int g = 0; g < 4; ++g) {
        const int64_t c0 = q * 64 + g * 16;
        const int64_t cn = std::min<int64_t>(16, C - c0);
        if (cn <= 0) break;
        const __mmask16 ld = first_lanes(cn);
        __m512 a = zero, sh = zero;
        if (PRO) {
          a = _mm512_maskz_loadu_ps(ld, E.in_a + c0);
          sh = _mm512_maskz_loadu_ps(ld, E.in_b + c0);
        }
#pragma GCC unroll 2
        for (int r = 0; r < NR; ++r) {
          __m512 y = _mm512_maskz_loadu_ps(ld, src[r] + w * C + c0);
          if (PRO) y = _mm512_fmadd_ps(y, a, sh);
          if (CLAMP) y = _mm512_min_ps(hi, _mm512_max_ps(lo, y));  // NaN (second operand) passes through
          word[r] |= uint64_t(_mm512_cmp_ps_mask(y, zero, _CMP_NGE_UQ) & ld) << (16 * g);
          if (LANES) {
            const __m512 ar = _mm512_abs_ps(y);
            acc_lo[r] = _mm512_add_pd(acc_lo[r], _mm512_cvtps_pd(_mm512_castps512_ps256(ar)));
            acc_hi[r] = _mm512_add_pd(
                acc_hi[r], _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(ar), 1))));
          }
        }
      }
#pragma GCC unroll 2
      for (int r = 0; r < NR; ++r) d[r][w * Cw + q] = word[r];
    }
  }
  if (LANES)
#pragma GCC unroll 2
    for (int r = 0; r < NR; ++r) {
      _mm512_storeu_pd(lanes[r], acc_lo[r]);
      _mm512_storeu_pd(lanes[r] + 8, acc_hi[r]);
    }
}

template <int NR, bool LANES>
LSQBQ_AVX512 void enc_rows_first(const Enc& E, const int64_t* rows, double* const* lanes) {
  if (E.in_a)
    return E.do_clamp ? enc_rows_first<NR, LANES, true, true>(E, rows, lanes)
                      : enc_rows_first<NR, LANES, true, false>(E, rows, lanes);
  return E.do_clamp ? enc_rows_first<NR, LANES, false, true>(E, rows, lanes)
                    : enc_rows_first<NR, LANES, false, false>(E, rows, lanes);
}

LSQBQ_AVX512 void enc_row_vec(const Enc& E, int64_t b, int64_t h, const float* v, int first, int last,
                              double* lanes) {
  if (last == 0 && !E.mask) {
    const int64_t row = b * E.H + h;
    return lanes ? enc_rows_first<1, true>(E, &row, &lanes) : enc_rows_first<1, false>(E, &row, &lanes);
  }
  const float* src = E.row_src(b, h);
  uint64_t* d = E.row_dst(b, h);
  const __m512 zero = _mm512_setzero_ps();
  const __m512 lo = _mm512_set1_ps(-E.cv), hi = _mm512_set1_ps(E.cv);
  __m512 vp[8], vn[8];
  for (int i = 0; i < last; ++i) {
    vp[i] = _mm512_set1_ps(v[i]);
    vn[i] = _mm512_sub_ps(zero, vp[i]);
  }
  __m512d acc_lo = _mm512_setzero_pd(), acc_hi = _mm512_setzero_pd();
  for (int64_t w = 0; w < E.W; ++w) {
    const float* px = src + w * E.C;
    for (int64_t q = 0; q < E.Cw; ++q) {
      uint64_t words[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int g = 0; g < 4; ++g) {
        const int64_t c0 = q * 64 + g * 16;
        const int64_t cn = std::min<int64_t>(16, E.C - c0);
        if (cn <= 0) break;
        const __mmask16 ld = first_lanes(cn);
        __m512 y = _mm512_maskz_loadu_ps(ld, px + c0);
        if (E.in_a)
          y = _mm512_fmadd_ps(y, _mm512_maskz_loadu_ps(ld, E.in_a + c0), _mm512_maskz_loadu_ps(ld, E.in_b + c0));
        if (E.do_clamp) y = _mm512_min_ps(hi, _mm512_max_ps(lo, y));  // NaN (second operand) passes through
        __m512 approx = zero, r = y;
        for (int i = 0; i <= last; ++i) {
          r = _mm512_sub_ps(y, approx);
          const __mmask16 neg = _mm512_cmp_ps_mask(r, zero, _CMP_NGE_UQ) & ld;
          if (i >= first) words[i] |= uint64_t(neg) << (16 * g);
          if (i < last) approx = _mm512_add_ps(approx, _mm512_mask_blend_ps(neg, vp[i], vn[i]));
        }
        if (lanes) {
          const __m512 ar = _mm512_maskz_mov_ps(ld, _mm512_abs_ps(r));
          acc_lo = _mm512_add_pd(acc_lo, _mm512_cvtps_pd(_mm512_castps512_ps256(ar)));
          acc_hi = _mm512_add_pd(acc_hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(ar), 1))));
        }
      }
      store_words(words, first, last, E.mask, std::min<int64_t>(64, E.C - q * 64), d + w * E.Cw + q, E.plane_stride);
    }
  }
  if (lanes) {
    _mm512_storeu_pd(lanes, acc_lo);
    _mm512_storeu_pd(lanes + 8, acc_hi);
  }
}

LSQBQ_AVX512 void prologue_row_vec(const Enc& E, int64_t b, int64_t h, float* out) {
  const float* src = E.row_src(b, h);
  const __m512 lo = _mm512_set1_ps(-E.cv), hi = _mm512_set1_ps(E.cv);
  for (int64_t w = 0; w < E.W; ++w)
    for (int64_t c0 = 0; c0 < E.C; c0 += 16) {
      const int64_t cn = std::min<int64_t>(16, E.C - c0);
      const __mmask16 ld = first_lanes(cn);
      __m512 y = _mm512_maskz_loadu_ps(ld, src + w * E.C + c0);
      if (E.in_a)
        y = _mm512_fmadd_ps(y, _mm512_maskz_loadu_ps(ld, E.in_a + c0), _mm512_maskz_loadu_ps(ld, E.in_b + c0));
      if (E.do_clamp) y = _mm512_min_ps(hi, _mm512_max_ps(lo, y));
      _mm512_mask_storeu_ps(out + w * E.C + c0, ld, y);
    }
}

}  // namespace

void enc_row_avx512(const Enc& E, int64_t b, int64_t h, const float* v, int first, int last, double* lanes) {
  enc_row_vec(E, b, h, v, first, last, lanes);
}

void prologue_row_avx512(const Enc& E, int64_t b, int64_t h, float* out) { prologue_row_vec(E, b, h, out); }

void enc_first_pair_avx512(const Enc& E, int64_t row, double* lanes0, double* lanes1) {
  const int64_t rows[2] = {row, row + 1};
  double* const lanes[2] = {lanes0, lanes1};
  enc_rows_first<2, true>(E, rows, lanes);
}

#else  // not x86-64: never called (isa_supported(kAvx512) is false)

void enc_row_avx512(const Enc&, int64_t, int64_t, const float*, int, int, double*) {
  throw std::logic_error("lsqbq: AVX-512 kernels called on a CPU without them");
}
void prologue_row_avx512(const Enc&, int64_t, int64_t, float*) {
  throw std::logic_error("lsqbq: AVX-512 kernels called on a CPU without them");
}
void enc_first_pair_avx512(const Enc&, int64_t, double*, double*) {
  throw std::logic_error("lsqbq: AVX-512 kernels called on a CPU without them");
}

#endif
}  // namespace lsqbq
