// The exact fit's passes over a row in AVX2, 8 keys per vector (fit.h). AVX2 has no compress instruction: the
// gather of the keys in an interval packs each vector's selected lanes with a permutation looked up by the
// 8-bit lane mask (a 256-entry table built once).
#include <algorithm>
#include <array>
#include <cstring>
#include <stdexcept>

#include "fit.h"
#include "isa.h"

namespace lsqbq {
#if LSQBQ_X86
namespace {

using PackTable = std::array<std::array<int32_t, 8>, 256>;

// Entry m: the lanes whose bit is set in m, in order, then zeros.
const PackTable& pack_table() {
  static const PackTable table = [] {
    PackTable t{};
    for (int m = 0; m < 256; ++m) {
      int c = 0;
      for (int l = 0; l < 8; ++l)
        if (m >> l & 1) t[m][c++] = l;
    }
    return t;
  }();
  return table;
}

// All-ones in the first min(k, 8) of 8 lanes (k >= 0).
LSQBQ_AVX2 inline __attribute__((always_inline)) __m256i first_lanes8(int64_t k) {
  const int n = static_cast<int>(k >= 8 ? 8 : k);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// The keys |y| of y[i .. i + 8) (lanes past n read as 0).
LSQBQ_AVX2 inline __attribute__((always_inline)) __m256i keys8(const float* y, int64_t i, int64_t n, __m256i abs) {
  const __m256i v = i + 8 <= n ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y + i))
                               : _mm256_maskload_epi32(reinterpret_cast<const int*>(y + i), first_lanes8(n - i));
  return _mm256_and_si256(v, abs);
}

LSQBQ_AVX2 void key_range_vec(const float* y, int64_t n, uint32_t& kmin, uint32_t& kmax) {
  const __m256i abs = _mm256_set1_epi32(0x7fffffff);
  __m256i lo = abs, hi = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i k = keys8(y, i, n, abs);
    lo = _mm256_min_epu32(lo, k);
    hi = _mm256_max_epu32(hi, k);
  }
  alignas(32) uint32_t l[8], h[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(l), lo);
  _mm256_store_si256(reinterpret_cast<__m256i*>(h), hi);
  kmin = *std::min_element(l, l + 8);
  kmax = *std::max_element(h, h + 8);
  for (; i < n; ++i) {
    uint32_t k;
    std::memcpy(&k, y + i, 4);
    k &= 0x7fffffffu;
    kmin = std::min(kmin, k);
    kmax = std::max(kmax, k);
  }
}

LSQBQ_AVX2 int64_t keys_in_vec(const float* y, int64_t n, uint32_t klo, uint32_t khi, uint32_t* out) {
  const PackTable& table = pack_table();
  const __m256i abs = _mm256_set1_epi32(0x7fffffff), vlo = _mm256_set1_epi32(static_cast<int>(klo));
  // k - klo < khi - klo unsigned: flip the sign bits and compare signed
  const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const __m256i span = _mm256_xor_si256(_mm256_set1_epi32(static_cast<int>(khi - klo)), sign);
  int64_t c = 0;
  for (int64_t i = 0; i < n; i += 8) {
    const __m256i k = keys8(y, i, n, abs);
    const __m256i below = _mm256_cmpgt_epi32(span, _mm256_xor_si256(_mm256_sub_epi32(k, vlo), sign));
    const int valid = n - i >= 8 ? 0xff : (1 << (n - i)) - 1;
    const int m = _mm256_movemask_ps(_mm256_castsi256_ps(below)) & valid;
    const __m256i perm = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table[m].data()));  // no branch on m
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + c), _mm256_permutevar8x32_epi32(k, perm));
    c += __builtin_popcount(static_cast<unsigned>(m));
  }
  return c;
}

LSQBQ_AVX2 void histogram_vec(const float* y, int64_t n, int shift, int64_t base, uint64_t one_count, uint64_t* h0,
                              uint64_t* h1, uint64_t* h2, uint64_t* h3) {
  alignas(32) uint32_t idx[256];
  alignas(32) uint64_t inc[256];
  const __m256i abs = _mm256_set1_epi32(0x7fffffff), frac = _mm256_set1_epi32(0x7fffff);
  const __m256i vbase = _mm256_set1_epi32(static_cast<int>(base));
  const __m256i one = _mm256_set1_epi64x(static_cast<long long>(one_count));
  const __m128i sh = _mm_cvtsi32_si128(shift);
  for (int64_t i0 = 0; i0 < n; i0 += 256) {
    const int64_t len = std::min<int64_t>(256, n - i0);
    for (int64_t q = 0; q < len; q += 8) {
      const __m256i k = keys8(y + i0, q, len, abs);
      _mm256_store_si256(reinterpret_cast<__m256i*>(idx + q), _mm256_sub_epi32(_mm256_srl_epi32(k, sh), vbase));
      const __m256i f = _mm256_and_si256(k, frac);
      _mm256_store_si256(reinterpret_cast<__m256i*>(inc + q),
                         _mm256_add_epi64(one, _mm256_cvtepu32_epi64(_mm256_castsi256_si128(f))));
      _mm256_store_si256(reinterpret_cast<__m256i*>(inc + q + 4),
                         _mm256_add_epi64(one, _mm256_cvtepu32_epi64(_mm256_extracti128_si256(f, 1))));
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

void key_range_avx2(const float* y, int64_t n, uint32_t& kmin, uint32_t& kmax) { key_range_vec(y, n, kmin, kmax); }

int64_t keys_in_avx2(const float* y, int64_t n, uint32_t klo, uint32_t khi, uint32_t* out) {
  return keys_in_vec(y, n, klo, khi, out);
}

void histogram_packed_avx2(const float* y, int64_t n, int shift, int64_t base, uint64_t one_count, uint64_t* h0,
                           uint64_t* h1, uint64_t* h2, uint64_t* h3) {
  histogram_vec(y, n, shift, base, one_count, h0, h1, h2, h3);
}

#else  // not x86-64: never called (isa_supported(kAvx2) is false)

void key_range_avx2(const float*, int64_t, uint32_t&, uint32_t&) {
  throw std::logic_error("lsqbq: AVX2 kernels called on a CPU without them");
}
int64_t keys_in_avx2(const float*, int64_t, uint32_t, uint32_t, uint32_t*) {
  throw std::logic_error("lsqbq: AVX2 kernels called on a CPU without them");
}
void histogram_packed_avx2(const float*, int64_t, int, int64_t, uint64_t, uint64_t*, uint64_t*, uint64_t*,
                           uint64_t*) {
  throw std::logic_error("lsqbq: AVX2 kernels called on a CPU without them");
}

#endif
}  // namespace lsqbq
