// The exact fit's passes over a row in AVX-512, 16 keys per vector (fit.h).
#include <algorithm>
#include <stdexcept>

#include "fit.h"
#include "isa.h"

namespace lsqbq {
#if LSQBQ_X86
namespace {

LSQBQ_AVX512 void key_range_vec(const float* y, int64_t n, uint32_t& kmin, uint32_t& kmax) {
  const __m512i abs = _mm512_set1_epi32(0x7fffffff);
  __m512i lo = abs, hi = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i k = _mm512_and_si512(_mm512_loadu_si512(y + i), abs);
    lo = _mm512_min_epu32(lo, k);
    hi = _mm512_max_epu32(hi, k);
  }
  if (i < n) {
    const __mmask16 m = first_lanes(n - i);
    const __m512i k = _mm512_and_si512(_mm512_maskz_loadu_epi32(m, y + i), abs);
    lo = _mm512_mask_min_epu32(lo, m, lo, k);
    hi = _mm512_mask_max_epu32(hi, m, hi, k);
  }
  kmin = _mm512_reduce_min_epu32(lo);
  kmax = _mm512_reduce_max_epu32(hi);
}

LSQBQ_AVX512 int64_t keys_in_vec(const float* y, int64_t n, uint32_t klo, uint32_t khi, uint32_t* out) {
  const __m512i abs = _mm512_set1_epi32(0x7fffffff), vlo = _mm512_set1_epi32(static_cast<int>(klo));
  const __m512i span = _mm512_set1_epi32(static_cast<int>(khi - klo));
  int64_t c = 0;
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 tail = first_lanes(n - i);
    const __m512i k = _mm512_and_si512(_mm512_maskz_loadu_epi32(tail, y + i), abs);
    const __mmask16 m = _mm512_mask_cmplt_epu32_mask(tail, _mm512_sub_epi32(k, vlo), span);
    // register compress, then a plain store (a compressing store to memory is slow on some CPUs); stored whatever
    // the mask: a branch on it mispredicts on rows that straddle the interval
    _mm512_storeu_si512(out + c, _mm512_maskz_compress_epi32(m, k));
    c += __builtin_popcount(m);
  }
  return c;
}

LSQBQ_AVX512 void histogram_vec(const float* y, int64_t n, int shift, int64_t base, uint64_t one_count,
                               uint64_t* h0, uint64_t* h1, uint64_t* h2, uint64_t* h3) {
  alignas(64) uint32_t idx[256];
  alignas(64) uint64_t inc[256];
  const __m512i abs = _mm512_set1_epi32(0x7fffffff), frac = _mm512_set1_epi32(0x7fffff);
  const __m512i vbase = _mm512_set1_epi32(static_cast<int>(base));
  const __m512i one = _mm512_set1_epi64(static_cast<long long>(one_count));
  const __m128i sh = _mm_cvtsi32_si128(shift);
  for (int64_t i0 = 0; i0 < n; i0 += 256) {
    const int64_t len = std::min<int64_t>(256, n - i0);
    for (int64_t q = 0; q < len; q += 16) {
      const __mmask16 tail = first_lanes(len - q);
      const __m512i k = _mm512_and_si512(_mm512_maskz_loadu_epi32(tail, y + i0 + q), abs);
      _mm512_store_si512(idx + q, _mm512_sub_epi32(_mm512_srl_epi32(k, sh), vbase));
      const __m512i f = _mm512_and_si512(k, frac);
      _mm512_store_si512(inc + q, _mm512_add_epi64(one, _mm512_cvtepu32_epi64(_mm512_castsi512_si256(f))));
      _mm512_store_si512(inc + q + 8, _mm512_add_epi64(one, _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(f, 1))));
    }
    int64_t q = 0;
    for (; q + 4 <= len; q += 4) {
      h0[idx[q]] += inc[q];
      h1[idx[q + 1]] += inc[q + 1];
      h2[idx[q + 2]] += inc[q + 2];
      h3[idx[q + 3]] += inc[q + 3];
    }
    for (; q < len; ++q) h0[idx[q]] += inc[q];
  }
}

}  // namespace

void key_range_avx512(const float* y, int64_t n, uint32_t& kmin, uint32_t& kmax) { key_range_vec(y, n, kmin, kmax); }

int64_t keys_in_avx512(const float* y, int64_t n, uint32_t klo, uint32_t khi, uint32_t* out) {
  return keys_in_vec(y, n, klo, khi, out);
}

void histogram_packed_avx512(const float* y, int64_t n, int shift, int64_t base, uint64_t one_count, uint64_t* h0,
                             uint64_t* h1, uint64_t* h2, uint64_t* h3) {
  histogram_vec(y, n, shift, base, one_count, h0, h1, h2, h3);
}

#else  // not x86-64: never called (isa_supported(kAvx512) is false)

void key_range_avx512(const float*, int64_t, uint32_t&, uint32_t&) {
  throw std::logic_error("lsqbq: AVX-512 kernels called on a CPU without them");
}
int64_t keys_in_avx512(const float*, int64_t, uint32_t, uint32_t, uint32_t*) {
  throw std::logic_error("lsqbq: AVX-512 kernels called on a CPU without them");
}
void histogram_packed_avx512(const float*, int64_t, int, int64_t, uint64_t, uint64_t*, uint64_t*, uint64_t*,
                             uint64_t*) {
  throw std::logic_error("lsqbq: AVX-512 kernels called on a CPU without them");
}

#endif
}  // namespace lsqbq
