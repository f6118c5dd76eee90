// The exact ls-2 / ls-T fits by a full sort (no torch headers): the quantizer ops' fit (quant.cpp) and the fused
// encode's fallback (fit.cpp) for rows whose float64 prefix sums round.
#pragma once

#include <cstdint>
#include <vector>

namespace lsqbq {

// LSD radix sort of non-negative float bit patterns keys[0..n) (sign bit clear), tmp: room for n keys.
void radix_sort(uint32_t* keys, uint32_t* tmp, int64_t n, std::vector<int64_t>& count);

// Sorted magnitudes of row[0..n) into out (ascending; NaN/Inf last). Returns false if the row is not finite.
bool sorted_magnitudes(const float* row, int64_t n, uint32_t* keys, uint32_t* tmp, std::vector<int64_t>& count,
                       float* out);

// (v1, v2) of the sorted magnitudes a[0..n) by the scan of every split (float64 prefix sums in ascending order);
// inv[j] = 1/j for j = 1..n, inv[0] = 0.
void scan_split(const float* a, int64_t n, const double* inv, bool ternary, double* v1, double* v2);

}  // namespace lsqbq
