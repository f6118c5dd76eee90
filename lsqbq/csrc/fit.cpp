// The exact ls-2 / ls-T activation fits of the fused encode, without a full sort (no torch headers).
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#include "encode.h"
#include "fit.h"
#include "pool.h"
#include "sorted_fit.h"

namespace lsqbq {
namespace {

// ------------------------------------------------------------------------------ exact fits without a full sort
// The exact ls-2 / ls-T fits of the quantizer library (lsqbq/csrc/quant.cpp, the simulated layers' fit) sort the
// magnitudes a_(1) <= ... <= a_(n), take float64 prefix sums S_j and scan every split j = 0..n-1 for the first
// maximiser of  ternary: (S_n - S_j)^2 / (n - j),  ls-2: S_j^2 / j + (S_n - S_j)^2 / (n - j).
// Fact used here: let u = 2^(e_lo - 150) be the unit of the smallest nonzero magnitude's exponent e_lo (denormals:
// e_lo = 1). Every magnitude of the row is a multiple of u, so every sum of some of them is a multiple of u of at
// most S_n; when S_n < 2^53 u each such sum is a float64 and is computed exactly, whatever the order of additions.
// Then S_j is the exact sum of the j smallest magnitudes, and sums over value buckets are exact too. So: one pass
// buckets the magnitudes by exponent and up to 6 significand bits (a bucket's values lie within a factor
// 1 + 2^-m), with exact bucket counts and sums; the exact S_j at every bucket boundary gives exact gains there (a
// lower bound on the best); an upper bound of the gain inside each run of buckets (from its value range) discards
// the runs, halved until single buckets, that cannot hold the maximiser; a large surviving bucket is split once
// more by the next 6 significand bits and bounded the same way; what survives is sorted and scanned with the
// scan's own float64 expressions. The result equals the full-sort fit bit for bit. A row with S_n >= 2^52 u (a
// magnitude tiny next to the row's sum: most rows of 10^5 values, under 1 % of the 3,136-value BatchNorm-output
// rows of a checkpoint) has prefix sums that round, and the bucket boundaries get the full-sort scan's rounded
// sums instead (rounded_prefix: exact where no rounding can happen, the rounding emulated where it depends on
// no value, the values added one by one elsewhere); should that fail, the row takes the full-sort scan itself
// (sorted_fit.cpp, the quantizer ops' own fit).
// Cost: O(n) plus sorting the surviving values (typically tens) instead of O(n) radix passes.
// Three passes over the row: the key range (vectorised); the bucket histogram (one packed 64-bit add per value,
// interleaved over four copies, two in the portable path, so that runs of values in one bucket, such as the zeros
// after a ReLU, do not wait on each other's stores); the gather of the surviving buckets' values, pre-filtered by
// the key interval that holds them (vectorised). The vector versions of the three passes are in fit_avx512.cpp and
// fit_avx2.cpp (fit.h); the NEON path runs the portable passes (only its prologue row is vectorised); every path
// gives the same integers, so the same fit.

// Keys (bit patterns of |y|, ordered like the magnitudes) of a float row: min and max.
void key_range_portable(const float* y, int64_t n, uint32_t& kmin, uint32_t& kmax) {
  kmin = 0x7fffffffu;
  kmax = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t k;
    std::memcpy(&k, y + i, 4);
    k &= 0x7fffffffu;
    kmin = std::min(kmin, k);
    kmax = std::max(kmax, k);
  }
}

// The keys k of y[0..n) with klo <= k < khi, in element order, into out (room for n values). Returns their number.
int64_t keys_in_portable(const float* y, int64_t n, uint32_t klo, uint32_t khi, uint32_t* out) {
  int64_t c = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t k;
    std::memcpy(&k, y + i, 4);
    k &= 0x7fffffffu;
    if (k - klo < khi - klo) out[c++] = k;
  }
  return c;
}

struct FastFit {
  int kShift = 17;    // bucket = (key >> kShift) - kBase, kShift >= 17: one exponent per bucket
  int64_t kBase = 0;  // first occupied exponent, in bucket units
  int kBuckets = 0;
  std::vector<int64_t> count, isum;  // per bucket: values, and the exact sum of their 24-bit significands
  std::vector<double> sums;          // per bucket: the exact sum of its values
  std::vector<uint32_t> keys, cand, sub;
  std::vector<int32_t> slot;
  std::vector<int> keep, sub_keep;   // buckets (sub-buckets) that may hold the best split, ascending
  std::vector<int64_t> jb;           // per bucket boundary: values below it
  std::vector<double> pb;            // per bucket boundary: their exact sum
  std::vector<float> sorted;         // the fallback's sorted magnitudes
  std::vector<double> inv_table;     // the fallback's 1/j, j = 0 .. n
  std::vector<int64_t> radix_count;
  std::vector<int32_t> is_marked;    // per bucket: 1 if its sum rounds inside it (rows whose sums round), else -1
  std::vector<uint32_t> mkeys;       // the sorted keys of the buckets that rounded_prefix adds value by value
  std::vector<uint64_t> packed;      // histogram entries: count << kCountShift | sum of significands
  static constexpr int kCountShift = 44;  // rows of n < 2^20 values: sums < 2^44, counts < 2^20
  static constexpr int64_t kChunk = 4096;  // values filtered per gather step
  static constexpr int64_t kSortMax = 32;  // kept buckets up to this size are sorted whole, larger ones refined

  // Buckets cover the row's exponents [e_min, e_max] with 2^m significand slices each (values within 1 + 2^-m),
  // m <= 6 chosen so that there are at most max(64, n / 16) buckets: the per-bucket passes (bounds, sums) stay
  // well below the per-value ones, and the one or two buckets that survive still hold few values.
  void layout(uint32_t kmin, uint32_t kmax, int64_t n) {
    const int64_t emin = kmin >> 23, emax = kmax >> 23, nexp = emax - emin + 1;
    int m = 6;
    while (m > 0 && (nexp << m) > std::max<int64_t>(64, n / 16)) --m;
    kShift = 23 - m;
    kBase = emin << m;
    kBuckets = static_cast<int>(nexp << m);
    count.assign(kBuckets, 0);
    isum.assign(kBuckets, 0);
    slot.assign(kBuckets, -1);
  }
  uint32_t bucket_key(int b) const { return static_cast<uint32_t>(b + kBase) << kShift; }  // first key of b
  static float key_value(uint32_t k) {
    float f;
    std::memcpy(&f, &k, 4);
    return f;
  }
  // 2^(max(e, 1) - 150) for the exponent e of key k: a value with that exponent is its 24-bit significand times it.
  static double ulp_scale(uint32_t k) {
    const int64_t e = std::max<int64_t>(k >> 23, 1);
    const uint64_t bits = static_cast<uint64_t>(e - 150 + 1023) << 52;
    double scale;
    std::memcpy(&scale, &bits, 8);
    return scale;
  }
  static double inv(int64_t j) { return j > 0 ? 1.0 / static_cast<double>(j) : 0.0; }  // = the scan's table

  // count[b], isum[b] over y[0..n): integer sums, so any order gives the same values. A bucket holds one
  // exponent, so its values' implicit leading bits (normal numbers) are added once per bucket at the end.
  void histogram(const float* y, int64_t n, int64_t isa) {
    const int shift = kShift;
    const int64_t base = kBase;
    if (n >= (int64_t(1) << (64 - kCountShift))) {
      for (int64_t i = 0; i < n; ++i) {
        uint32_t k;
        std::memcpy(&k, y + i, 4);
        k &= 0x7fffffffu;
        const int64_t b = static_cast<int64_t>(k >> shift) - base;
        count[b] += 1;
        isum[b] += k & 0x7fffffu;
      }
    } else {
      packed.assign(4 * static_cast<size_t>(kBuckets), 0);
      uint64_t* h0 = packed.data();
      uint64_t* h1 = h0 + kBuckets;
      uint64_t* h2 = h1 + kBuckets;
      uint64_t* h3 = h2 + kBuckets;
      const uint64_t one = uint64_t(1) << kCountShift;
      int64_t i = 0;
      if (isa == kAvx512) {
        histogram_packed_avx512(y, n, shift, base, one, h0, h1, h2, h3);
        i = n;
      } else if (isa == kAvx2) {
        histogram_packed_avx2(y, n, shift, base, one, h0, h1, h2, h3);
        i = n;
      }
      for (; i + 2 <= n; i += 2) {
        uint32_t k0, k1;
        std::memcpy(&k0, y + i, 4);
        std::memcpy(&k1, y + i + 1, 4);
        k0 &= 0x7fffffffu;
        k1 &= 0x7fffffffu;
        h0[static_cast<int64_t>(k0 >> shift) - base] += one + (k0 & 0x7fffffu);
        h1[static_cast<int64_t>(k1 >> shift) - base] += one + (k1 & 0x7fffffu);
      }
      if (i < n) {
        uint32_t k;
        std::memcpy(&k, y + i, 4);
        k &= 0x7fffffffu;
        h0[static_cast<int64_t>(k >> shift) - base] += one + (k & 0x7fffffu);
      }
      for (int b = 0; b < kBuckets; ++b) {  // n < 2^20: neither field overflows into the other
        const uint64_t v = h0[b] + h1[b] + h2[b] + h3[b];
        count[b] = static_cast<int64_t>(v >> kCountShift);
        isum[b] = static_cast<int64_t>(v & (one - 1));
      }
    }
    for (int b = 0; b < kBuckets; ++b)
      if (bucket_key(b) >> 23) isum[b] += count[b] << 23;  // normal numbers: 2^23 + fraction
  }

  // Appends to out, ascending, the b in [lo, hi) that survive may(b, b + 1), testing may(b, e) on halves first:
  // a failed run is not split further. may must be a valid bound for every run (true where any member can be).
  template <class May>
  static void bisect(int lo, int hi, const May& may, std::vector<int>& out) {
    int stack[2 * 64];  // [lo, hi) runs, right half pushed first; depth <= log2(2^31)
    int top = 0;
    stack[top++] = lo;
    stack[top++] = hi;
    while (top) {
      const int e = stack[--top], b = stack[--top];
      if (!may(b, e)) continue;
      if (e - b == 1) {
        out.push_back(b);
        continue;
      }
      const int mid = b + (e - b) / 2;
      stack[top++] = mid;
      stack[top++] = e;
      stack[top++] = b;
      stack[top++] = mid;
    }
  }

  // The unit u = 2^(e_lo - 150) of the row's smallest nonzero magnitude's exponent e_lo (after histogram; an
  // exponent-0 bucket holds zeros and denormals, whose unit is that of e_lo = 1); 0 for a row of zeros.
  double unit() const {
    int b = 0;
    while (b < kBuckets && !(count[b] && ((bucket_key(b) >> 23) || isum[b]))) ++b;
    return b == kBuckets ? 0.0 : ulp_scale(bucket_key(b));
  }

  // The full-sort fit of a finite row (sorted_fit.cpp): what the fast path equals where its sums are exact.
  void fit_by_sorting(const float* y, int64_t n, bool ternary, float* out) {
    keys.resize(n);
    sub.resize(n);
    sorted.resize(n);
    sorted_magnitudes(y, n, keys.data(), sub.data(), radix_count, sorted.data());
    if (static_cast<int64_t>(inv_table.size()) != n + 1) {
      inv_table.resize(n + 1);
      for (int64_t j = 0; j <= n; ++j) inv_table[j] = inv(j);
    }
    double v1, v2;
    scan_split(sorted.data(), n, inv_table.data(), ternary, &v1, &v2);
    out[0] = static_cast<float>(v1);
    out[1] = static_cast<float>(v2);
  }

  // The keys of the buckets bs (ascending) into out, bucket i's at out[offset[i] .. offset[i + 1]), element order.
  // The buckets lie in [klo, khi): a chunk is filtered by that interval (vectorised), then placed by bucket.
  void gather(const float* y, int64_t n, int64_t isa, const std::vector<int>& bs, std::vector<uint32_t>& out,
              std::vector<int64_t>& offset) {
    offset.assign(bs.size() + 1, 0);
    for (size_t i = 0; i < bs.size(); ++i) offset[i + 1] = offset[i] + count[bs[i]];
    out.resize(offset.back());
    if (bs.empty()) return;
    for (size_t i = 0; i < bs.size(); ++i) slot[bs[i]] = static_cast<int32_t>(i);
    std::vector<int64_t> fill(offset.begin(), offset.end() - 1);
    const uint32_t klo = bucket_key(bs.front()), khi = bucket_key(bs.back() + 1);
    cand.resize(kChunk + 16);
    for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
      const int64_t len = std::min(kChunk, n - c0);
      int64_t got;
      if (isa == kAvx512) got = keys_in_avx512(y + c0, len, klo, khi, cand.data());
      else if (isa == kAvx2) got = keys_in_avx2(y + c0, len, klo, khi, cand.data());
      else got = keys_in_portable(y + c0, len, klo, khi, cand.data());
      for (int64_t e = 0; e < got; ++e) {
        const uint32_t k = cand[e];
        const int32_t sl = slot[static_cast<int64_t>(k >> kShift) - kBase];
        if (sl >= 0) out[fill[sl]++] = k;
      }
    }
    for (int b : bs) slot[b] = -1;
  }

  // The value of the last set bit of a positive finite double s (s is a multiple of it).
  static double last_bit(double s) {
    uint64_t bits;
    std::memcpy(&bits, &s, 8);
    const int64_t e = static_cast<int64_t>(bits >> 52);  // s > 0: sign 0; sums of floats are normal doubles
    const uint64_t m = (bits & ((uint64_t(1) << 52) - 1)) | (uint64_t(1) << 52);
    const uint64_t out = static_cast<uint64_t>(e - 52 + __builtin_ctzll(m)) << 52;
    double v;
    std::memcpy(&v, &out, 8);
    return v;
  }
  // 2^(exponent of s - 52), s > 0: the unit of s's last significand bit, at most last_bit(s).
  static double ulp_of(double s) {
    uint64_t bits;
    std::memcpy(&bits, &s, 8);
    const uint64_t out = ((bits >> 52) - 52) << 52;
    double v;
    std::memcpy(&v, &out, 8);
    return v;
  }
  // Whether s plus every partial sum of bucket b's values, added in any order, is exact: all are multiples of
  // u = min(unit(s), the bucket's unit) and at most s + sums[b], so they are when s + sums[b] < 2^53 u (the
  // computed sum is below the power of two 2^53 u only if the exact one is: rounding is monotonic). unit(s) is
  // last_bit(s), or ulp_of(s) for a guess that holds for any s of the same binade.
  bool adds_exactly(double s, int b, bool guess) const {
    double u = ulp_scale(bucket_key(b));
    if (s > 0) u = std::min(u, guess ? ulp_of(s) : last_bit(s));
    return s + sums[b] < 0x1p53 * u;
  }

  // s plus bucket b's values in ascending order, when that needs no values (returns false otherwise). The values
  // are multiples of the bucket's unit w; the part L of s below w (s mod w) is the only part that rounds. Each time
  // the running sum enters a new binade, the sum is rounded to that binade's unit G (round half to even); if
  // 2 G <= w the rounding (and its tie's parity bit) sees only L, and if no value exceeds s, no addition skips a
  // binade. Then the binades entered are those between s and s + (bucket sum), whatever the order within the
  // bucket, and the result is (s - L + bucket sum) + L rounded to each of their units in turn: the scan's own sum.
  // A sum within 2 w of a power of two is left to the values (the crossing is not certain).
  bool add_rounded(double& s, int b) const {
    const double w = ulp_scale(bucket_key(b));
    if (!(s > 0) || static_cast<double>(key_value(bucket_key(b + 1) - 1)) > s) return false;
    const double end = s + sums[b];
    const double p = binade_floor(end);
    if (end - p <= 2 * w || 2 * p - end <= 2 * w || 2 * ulp_of(end) > w) return false;
    double low = std::fmod(s, w);
    const double high = s - low;
    for (double g = 2 * ulp_of(s); g <= ulp_of(end); g *= 2) {  // the units of the binades entered
      const double q = std::floor(low / g), r = low - q * g;
      low = (r > g / 2 || (r == g / 2 && std::fmod(q, 2.0) != 0.0)) ? (q + 1) * g : q * g;
    }
    s = (high + sums[b]) + low;
    return true;
  }
  static double binade_floor(double s) {  // the power of two 2^floor(log2 s), s > 0
    uint64_t bits;
    std::memcpy(&bits, &s, 8);
    bits &= ~((uint64_t(1) << 52) - 1);
    double v;
    std::memcpy(&v, &bits, 8);
    return v;
  }

  // pb[b], jb[b] for a row whose sums may round: pb[b] is the full-sort scan's own float64 prefix sum below
  // bucket b (its ascending additions, one value at a time). A bucket whose additions are all exact
  // (adds_exactly) adds its exact sum at once; one whose roundings need no values (add_rounded) adds its rounded
  // sum; the others (where the running sum is small next to the bucket's values: the first values of a row that
  // starts with tiny magnitudes) are gathered, sorted and added value by value, as the scan adds them. Which
  // buckets need values is guessed on a first walk that carries on from the first such bucket with its exact sum;
  // if the second walk meets another one, it returns false and the caller takes the full sort. Marks the buckets
  // not added exactly (is_marked >= 0): their sums round inside them.
  bool rounded_prefix(const float* y, int64_t n, int64_t isa) {
    is_marked.assign(kBuckets, -1);
    std::vector<int> need;
    double s = 0.0;  // the scan's sum up to the first bucket that needs values, then a guess (sums not rounded)
    for (int b = 0; b < kBuckets; ++b) {
      if (!count[b]) continue;
      if (adds_exactly(s, b, !need.empty())) {
        s += sums[b];
      } else if (!add_rounded(s, b)) {
        need.push_back(b);
        s += sums[b];
      }
    }
    std::vector<int64_t> noff;
    gather(y, n, isa, need, mkeys, noff);
    std::vector<int32_t> needed(kBuckets, -1);
    for (size_t i = 0; i < need.size(); ++i) {
      needed[need[i]] = static_cast<int32_t>(i);
      std::sort(mkeys.begin() + noff[i], mkeys.begin() + noff[i + 1]);
    }
    s = 0.0;
    int64_t j = 0;
    for (int b = 0; b < kBuckets; ++b) {
      jb[b] = j;
      pb[b] = s;
      if (!count[b]) continue;
      j += count[b];
      if (adds_exactly(s, b, false)) {
        s += sums[b];
        continue;
      }
      is_marked[b] = 1;
      if (needed[b] >= 0) {
        for (int64_t q = noff[needed[b]]; q < noff[needed[b] + 1]; ++q) s += static_cast<double>(key_value(mkeys[q]));
      } else if (!add_rounded(s, b)) {
        return false;
      }
    }
    jb[kBuckets] = j;
    pb[kBuckets] = s;
    return true;
  }

  // (v1, v2) of one row y[0..n) (any order); NaN when the row is not finite.
  void fit(const float* y, int64_t n, bool ternary, int64_t isa, float* out) {
    uint32_t kmin, kmax;
    if (isa == kAvx512) key_range_avx512(y, n, kmin, kmax);
    else if (isa == kAvx2) key_range_avx2(y, n, kmin, kmax);
    else key_range_portable(y, n, kmin, kmax);
    if (kmax >= 0x7f800000u) {  // NaN or Inf
      out[0] = out[1] = std::numeric_limits<float>::quiet_NaN();
      return;
    }
    layout(kmin, kmax, n);
    histogram(y, n, isa);
    // exact bucket sums: isum < 2^53 times the power of two 2^(max(e, 1) - 150), built from its bits
    sums.assign(kBuckets, 0.0);
    for (int b = 0; b < kBuckets; ++b) {
      if (!count[b]) continue;
      sums[b] = static_cast<double>(isum[b]) * ulp_scale(bucket_key(b));
    }
    auto bucket_sum = [&](int b) { return sums[b]; };
    // totals and gains at bucket boundaries (the same float64 expressions as the scan)
    double total = 0.0;
    for (int b = 0; b < kBuckets; ++b)
      if (count[b]) total += bucket_sum(b);
    // jb[b] values lie below bucket b, with the full-sort scan's prefix sum pb[b] (b = 0 .. kBuckets). Every sum of
    // the magnitudes is at most S_n and a multiple of u: exact if S_n < 2^53 u. total is S_n up to a relative
    // 2^-40 at worst, so total < 2^52 u proves it: then pb adds exact bucket sums. Otherwise rounded_prefix.
    jb.resize(kBuckets + 1);
    pb.resize(kBuckets + 1);
    const bool rounds = !(total < 0x1p52 * unit() || total == 0.0);
    if (rounds) {
      if (!rounded_prefix(y, n, isa)) return fit_by_sorting(y, n, ternary, out);
      total = pb[kBuckets];
    } else {
      double low = 0.0;
      int64_t j0 = 0;
      for (int b = 0; b < kBuckets; ++b) {
        jb[b] = j0;
        pb[b] = low;
        low += bucket_sum(b);
        j0 += count[b];
      }
      jb[kBuckets] = j0;
      pb[kBuckets] = low;
    }
    auto gain = [&](int64_t j, double low) {
      const double high = total - low;
      const double g = (high * high) * inv(n - j);
      return ternary ? g : (low * low) * inv(j) + g;
    };
    double best_lb = -1.0;
    for (int b = 0; b < kBuckets; ++b)
      if (count[b]) best_lb = std::max(best_lb, gain(jb[b], pb[b]));
    // Keep the buckets whose gain bound reaches best_lb. The splits j = j0 + k, k = 0 .. c - 1, of a bucket with
    // value range [lo, hi], c values and exact sums S_j0 = low, S_end = low + (bucket sum) have
    //   max(low + k lo, S_end - (c - k) hi) <= S_j <= min(low + k hi, S_end - (c - k) lo)
    // (the k smallest values, or the c - k largest, each within [lo, hi]). The gain, a sum of terms s^2 / t with
    // s linear in S and t > 0 linear in j, is jointly convex in (j, S), so over this polygon it is largest at a
    // vertex: k = 0, the two ends at k = c - 1, and where the two upper and the two lower lines cross. A bucket of
    // equal values (a clamp, ties) collapses to its exact line and survives only if it can hold the best split.
    keep.clear();
    // reaches(j, s, t): gain(j, s) (1 + 1e-9) >= t, multiplied out (no divisions; all terms >= 0).
    const double nd = static_cast<double>(n);
    auto reaches = [&](double j, double s, double t) {
      const double h = total - s;
      if (ternary || j <= 0) return h * h * (1.0 + 1e-9) >= t * (nd - j);
      return (s * s * (nd - j) + h * h * j) * (1.0 + 1e-9) >= t * j * (nd - j);
    };
    // Can a group of cnt values in [lo, hi] with sum `sum`, its splits starting at js with S_js = s0, reach t?
    auto may_reach = [&](int64_t js, double s0, int64_t cnt, double lo, double hi, double sum, double t) {
      const double c = static_cast<double>(cnt), c1 = c - 1, end = s0 + sum, d = hi - lo;
      const double jf = static_cast<double>(js), jl = static_cast<double>(js + cnt - 1);
      if (reaches(jf, s0, t)) return true;
      if (c1 <= 0) return false;
      if (reaches(jl, std::min(s0 + c1 * hi, end - lo), t) || reaches(jl, std::max(s0 + c1 * lo, end - hi), t))
        return true;
      const double ku = (end - c * lo - s0) / d, kl = (s0 + c * hi - end) / d;  // upper / lower lines cross
      return (ku > 0 && ku < c1 && reaches(jf + ku, s0 + ku * hi, t)) ||
             (kl > 0 && kl < c1 && reaches(jf + kl, s0 + kl * lo, t));
    };
    // The bound holds for any run of consecutive buckets [b, e) (its values lie in [first key of b, last key of
    // e - 1]), so runs are bisected: a run that cannot reach best_lb is dropped whole, and only the buckets next to
    // the best splits are bounded one by one. Left halves first: keep comes out ascending.
    auto run_may_reach = [&](int b, int e) {
      const int64_t cnt = jb[e] - jb[b];
      return cnt > 0 && may_reach(jb[b], pb[b], cnt, key_value(bucket_key(b)), key_value(bucket_key(e) - 1),
                                  pb[e] - pb[b], best_lb);
    };
    bisect(0, kBuckets, run_may_reach, keep);
    // gather the surviving buckets' magnitudes, then sort and scan them in split order
    std::vector<int64_t> offset;
    gather(y, n, isa, keep, keys, offset);
    double best_gain = -1.0, best_low = 0.0, best_high = 0.0;
    int64_t best = 0;
    // ascending keys ks[0..len), the splits j .. j + len - 1 from the exact S_j = lw: the scan's own expressions
    auto scan = [&](uint32_t* ks, int64_t len, int64_t j, double lw) {
      std::sort(ks, ks + len);
      for (int64_t e = 0; e < len; ++e, ++j) {
        const double g = gain(j, lw);
        if (g > best_gain) {
          best_gain = g;
          best = j;
          best_low = lw;
          best_high = total - lw;
        }
        lw += static_cast<double>(key_value(ks[e]));
      }
    };
    for (size_t i = 0; i < keep.size(); ++i) {
      uint32_t* ks = keys.data() + offset[i];
      const int64_t len = offset[i + 1] - offset[i];
      if (len <= kSortMax || (rounds && is_marked[keep[i]] >= 0)) {  // a marked bucket's sums round inside it
        scan(ks, len, jb[keep[i]], pb[keep[i]]);
        continue;
      }
      // A large bucket: 64 sub-buckets of the next 6 significand bits (one exponent, so exact integer sums),
      // their boundary gains raise the lower bound, the same bound discards sub-buckets, the rest are sorted.
      const uint32_t first = bucket_key(keep[i]);
      const int sub_shift = kShift - 6;
      const double scale = ulp_scale(first);
      const int64_t implicit = (first >> 23) ? (int64_t(1) << 23) : 0;
      int64_t sc[64] = {}, ss[64] = {};
      for (int64_t q = 0; q < len; ++q) {
        const int sb = static_cast<int>((ks[q] >> sub_shift) & 63);
        sc[sb] += 1;
        ss[sb] += ks[q] & 0x7fffffu;
      }
      double sub_low[65];
      int64_t sub_j[65];
      double lw = pb[keep[i]];
      int64_t j = jb[keep[i]];
      for (int sb = 0; sb < 64; ++sb) {
        sub_low[sb] = lw;
        sub_j[sb] = j;
        if (sc[sb]) best_lb = std::max(best_lb, gain(j, lw));
        lw += static_cast<double>(ss[sb] + sc[sb] * implicit) * scale;
        j += sc[sb];
      }
      sub_low[64] = lw;
      sub_j[64] = j;
      auto sub_may_reach = [&](int b, int e) {
        const int64_t cnt = sub_j[e] - sub_j[b];
        const uint32_t k0 = first + (static_cast<uint32_t>(b) << sub_shift);
        const uint32_t k1 = first + (static_cast<uint32_t>(e) << sub_shift) - 1;
        return cnt > 0 && may_reach(sub_j[b], sub_low[b], cnt, key_value(k0), key_value(k1), sub_low[e] - sub_low[b],
                                    best_lb);
      };
      sub_keep.clear();
      bisect(0, 64, sub_may_reach, sub_keep);
      int64_t pos[64];
      bool kept[64] = {};
      int64_t total_kept = 0;
      for (int sb : sub_keep) {
        kept[sb] = true;
        pos[sb] = total_kept;
        total_kept += sc[sb];
      }
      sub.resize(static_cast<size_t>(total_kept));
      for (int64_t q = 0; q < len; ++q) {
        const int sb = static_cast<int>((ks[q] >> sub_shift) & 63);
        if (kept[sb]) sub[pos[sb]++] = ks[q];
      }
      for (int sb : sub_keep) scan(sub.data() + pos[sb] - sc[sb], sc[sb], sub_j[sb], sub_low[sb]);
    }
    const double hi_mean = best_high * inv(n - best);
    if (ternary) {
      out[0] = out[1] = static_cast<float>(hi_mean / 2);
      return;
    }
    const double lo_mean = best > 0 ? best_low * inv(best) : hi_mean;
    out[0] = static_cast<float>((hi_mean + lo_mean) / 2);
    out[1] = static_cast<float>((hi_mean - lo_mean) / 2);
  }
};

void prologue_row(const Enc& E, int64_t b, int64_t h, float* out, int64_t isa) {
  if (isa == kAvx512) return prologue_row_avx512(E, b, h, out);
  if (isa == kAvx2) return prologue_row_avx2(E, b, h, out);
  if (isa == kNeon) return prologue_row_neon(E, b, h, out);
  prologue_row_portable(E, b, h, out);
}

}  // namespace

// Exact fit of every sample of the encode's input with FastFit, samples in parallel. Writes (B, 2) float32 into po.
// The fit sorts y = clamp(prologue(x)) (order is irrelevant); with a prologue or a clamp, each sample's y is
// written into a scratch row of C * H * W floats that stays in cache for the fit's passes (no batch-sized copy).
void exact_fit(const Enc& E, bool ternary, int64_t isa, float* po) {
  const int64_t n = E.C * E.H * E.W;
  if (n >= (int64_t(1) << 29))  // checked by the op layer first
    throw std::invalid_argument("lsqbq: rows of 2^29 or more values are not supported by the exact fits");
  const bool scratch = E.in_a || E.do_clamp;
  parallel(E.B, 1, E.B * n, int64_t(1) << 16, E.threads, [&](int64_t begin, int64_t end) {
    FastFit f;
    std::vector<float> row(scratch ? n : 0);
    for (int64_t b = begin; b < end; ++b) {
      const float* y = E.x + b * n;  // channels_last: sample b's NHWC values
      if (scratch) {
        for (int64_t h = 0; h < E.H; ++h) prologue_row(E, b, h, row.data() + h * E.W * E.C, isa);
        y = row.data();
      }
      f.fit(y, n, ternary, isa, po + 2 * b);
    }
  });
}

}  // namespace lsqbq
