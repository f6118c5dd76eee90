// The exact ls-2 / ls-T fits by a full sort of the magnitudes (no torch headers): see sorted_fit.h.
#include "sorted_fit.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace lsqbq {

// LSD radix sort of non-negative float bit patterns (sign bit clear, 31 significant bits). Short rows use
// 8-bit digits (4 passes over 256 buckets), long rows 11/11/9-bit digits (3 passes over 2048 buckets), so the
// bucket bookkeeping stays small next to n. A pass whose digit is the same for every key is skipped.
void radix_sort(uint32_t* keys, uint32_t* tmp, int64_t n, std::vector<int64_t>& count) {
  static constexpr int kShort[4] = {8, 8, 8, 7}, kLong[3] = {11, 11, 9};
  const bool is_long = n >= 32768;
  const int* bits = is_long ? kLong : kShort;
  const int passes = is_long ? 3 : 4;
  if (count.size() < 2048) count.resize(2048);
  int shift = 0;
  uint32_t* src = keys;
  uint32_t* dst = tmp;
  for (int pass = 0; pass < passes; ++pass) {
    const uint32_t mask = (1u << bits[pass]) - 1;
    std::fill(count.begin(), count.begin() + (mask + 1), 0);
    for (int64_t i = 0; i < n; ++i) ++count[(src[i] >> shift) & mask];
    if (count[(src[0] >> shift) & mask] != n) {  // else every key has this digit: order unchanged
      int64_t sum = 0;
      for (uint32_t b = 0; b <= mask; ++b) {
        const int64_t c = count[b];
        count[b] = sum;
        sum += c;
      }
      for (int64_t i = 0; i < n; ++i) dst[count[(src[i] >> shift) & mask]++] = src[i];
      std::swap(src, dst);
    }
    shift += bits[pass];
  }
  if (src != keys) std::memcpy(keys, src, n * sizeof(uint32_t));
}

// Sorted magnitudes of one row as floats (ascending; NaN/Inf last). Returns false if the row is not finite.
bool sorted_magnitudes(const float* row, int64_t n, uint32_t* keys, uint32_t* tmp, std::vector<int64_t>& count,
                       float* out) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, row + i, 4);
    keys[i] = bits & 0x7fffffffu;  // |x|
  }
  radix_sort(keys, tmp, n, count);
  std::memcpy(out, keys, n * sizeof(float));
  return std::isfinite(out[n - 1]);
}

// Scan of every split j = 0..n-1 of the sorted magnitudes a (float64 prefix sums, as torch.cumsum does).
// ls-2 maximises S_j^2/j + (S_n - S_j)^2/(n - j); ternary maximises (S_n - S_j)^2/(n - j). First maximiser wins.
// inv[j] = 1/j (inv[0] = 0), shared by all rows of a call.
void scan_split(const float* a, int64_t n, const double* inv, bool ternary, double* v1, double* v2) {
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) total += static_cast<double>(a[i]);
  double low = 0.0, best_gain = -1.0, best_low = 0.0, best_high = 0.0;
  int64_t best = 0;
  for (int64_t j = 0; j < n; ++j) {
    const double high = total - low;
    const double inv_high = inv[n - j];
    double gain;
    if (ternary) {
      gain = (high * high) * inv_high;
    } else {
      const double inv_low = inv[j];
      gain = (low * low) * inv_low + (high * high) * inv_high;
    }
    if (gain > best_gain) {
      best_gain = gain;
      best = j;
      best_low = low;
      best_high = high;
    }
    low += static_cast<double>(a[j]);
  }
  const double hi_mean = best_high * inv[n - best];
  if (ternary) {
    *v1 = *v2 = hi_mean / 2;
    return;
  }
  const double lo_mean = best > 0 ? best_low * inv[best] : hi_mean;
  *v1 = (hi_mean + lo_mean) / 2;
  *v2 = (hi_mean - lo_mean) / 2;
}

}  // namespace lsqbq
