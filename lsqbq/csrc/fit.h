// Vector versions of the exact fit's passes over a row (fit.cpp, FastFit), one file per instruction set: they
// compute the same integers as the portable loops in fit.cpp (no torch headers).
#pragma once

#include <cstdint>

namespace lsqbq {

// Keys (bit patterns of |y|, ordered like the magnitudes) of y[0..n), n >= 1: their min and max.
void key_range_avx512(const float* y, int64_t n, uint32_t& kmin, uint32_t& kmax);
void key_range_avx2(const float* y, int64_t n, uint32_t& kmin, uint32_t& kmax);

// The keys k of y[0..n) with klo <= k < khi, in element order, into out (room for n + 16 values: whole vectors
// are stored, then the count advances). Returns their number.
int64_t keys_in_avx512(const float* y, int64_t n, uint32_t klo, uint32_t khi, uint32_t* out);
int64_t keys_in_avx2(const float* y, int64_t n, uint32_t klo, uint32_t khi, uint32_t* out);

// The packed histogram h[(k >> shift) - base] += one_count + fraction(k) of the keys of y[0..n), value i into copy
// h_(i mod 4): bucket indices and increments in vectors, the adds scalar.
void histogram_packed_avx512(const float* y, int64_t n, int shift, int64_t base, uint64_t one_count, uint64_t* h0,
                             uint64_t* h1, uint64_t* h2, uint64_t* h3);
void histogram_packed_avx2(const float* y, int64_t n, int shift, int64_t base, uint64_t one_count, uint64_t* h0,
                           uint64_t* h1, uint64_t* h2, uint64_t* h3);

}  // namespace lsqbq
