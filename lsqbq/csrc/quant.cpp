// Fused CPU implementations of the foldable least-squares quantizers (float32, one row per task).
//
// They compute exactly what the pure-torch functions in lsqbq/quantizers.py and lsqbq/ste.py compute, with the
// same floating-point operations in the same order (built with -ffp-contract=off), so both paths agree bit for
// bit; the tests check that. What changes is the cost: one pass over a row instead of a dozen tensor passes,
// and a 3-pass LSD radix sort of the magnitudes' bit patterns instead of a comparison sort.
//
//   fit_greedy(x, k)      (R, n) -> (R, k)   v_i = mean|r_i|, r_{i+1} = r_i - v_i sign(r_i)          O(k n)
//   fit_ls2(x)            (R, n) -> (R, 2)   exact 2-level split of sorted |x| (see fit_ls2 in Python)  O(n)
//   fit_ternary(x)        (R, n) -> (R, 2)   exact {0, c} split of sorted |x|, returns (c/2, c/2)      O(n)
//   encode(x, s, slope)   (R, n), (R|1, k) -> x_q = sum_i v_i b_i and, if slope, the STE derivative
//                         d x_q / d x = 1 - prod_i (1 - v_i 1{|r_i| <= 1})                               O(k n)
// sign(0) = +1 throughout. Rows with NaN/Inf produce NaN scales (fit) so the caller can report the row.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

void check_rows(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.device().is_cpu(), op, ": expected a CPU tensor");
  TORCH_CHECK(x.dim() == 2, op, ": expected a 2-D tensor, got ", x.dim(), " dimensions");
  TORCH_CHECK(x.scalar_type() == at::kFloat, op, ": expected float32, got ", x.scalar_type());
}

// LSD radix sort of non-negative float bit patterns (sign bit clear): 11 + 11 + 9 bits.
void radix_sort(uint32_t* keys, uint32_t* tmp, int64_t n) {
  constexpr int kBits[3] = {11, 11, 9};
  int shift = 0;
  uint32_t* src = keys;
  uint32_t* dst = tmp;
  std::vector<int64_t> count(1 << 11);
  for (int pass = 0; pass < 3; ++pass) {
    const uint32_t mask = (1u << kBits[pass]) - 1;
    std::fill(count.begin(), count.begin() + (mask + 1), 0);
    for (int64_t i = 0; i < n; ++i) ++count[(src[i] >> shift) & mask];
    int64_t sum = 0;
    for (uint32_t b = 0; b <= mask; ++b) {
      const int64_t c = count[b];
      count[b] = sum;
      sum += c;
    }
    for (int64_t i = 0; i < n; ++i) dst[count[(src[i] >> shift) & mask]++] = src[i];
    std::swap(src, dst);
    shift += kBits[pass];
  }
  if (src != keys) std::memcpy(keys, src, n * sizeof(uint32_t));  // odd number of passes: copy back
}

// Sorted magnitudes of one row as floats (ascending; NaN/Inf last). Returns false if the row is not finite.
bool sorted_magnitudes(const float* row, int64_t n, uint32_t* keys, uint32_t* tmp, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, row + i, 4);
    keys[i] = bits & 0x7fffffffu;  // |x|
  }
  radix_sort(keys, tmp, n);
  std::memcpy(out, keys, n * sizeof(float));
  return std::isfinite(out[n - 1]);
}

// Scan of every split j = 0..n-1 of the sorted magnitudes a (float64 prefix sums, as torch.cumsum does).
// ls-2 maximises S_j^2/j + (S_n - S_j)^2/(n - j); ternary maximises (S_n - S_j)^2/(n - j). First maximiser wins.
void scan_split(const float* a, int64_t n, bool ternary, double* v1, double* v2) {
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) total += static_cast<double>(a[i]);
  double low = 0.0, best_gain = -1.0, best_low = 0.0, best_high = 0.0;
  int64_t best = 0;
  for (int64_t j = 0; j < n; ++j) {
    const double high = total - low;
    const double inv_high = 1.0 / static_cast<double>(n - j);
    double gain;
    if (ternary) {
      gain = (high * high) * inv_high;
    } else {
      const double inv_low = j > 0 ? 1.0 / static_cast<double>(j) : 0.0;
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
  const double hi_mean = best_high * (1.0 / static_cast<double>(n - best));
  if (ternary) {
    *v1 = *v2 = hi_mean / 2;
    return;
  }
  const double lo_mean = best > 0 ? best_low * (1.0 / static_cast<double>(best)) : hi_mean;
  *v1 = (hi_mean + lo_mean) / 2;
  *v2 = (hi_mean - lo_mean) / 2;
}

at::Tensor fit_sorted(const at::Tensor& x_in, bool ternary) {
  check_rows(x_in, ternary ? "fit_ternary" : "fit_ls2");
  const at::Tensor x = x_in.contiguous();
  const int64_t rows = x.size(0), n = x.size(1);
  TORCH_CHECK(n > 0, "cannot fit scales to empty rows");
  at::Tensor out = at::empty({rows, 2}, x.options());
  const float* px = x.data_ptr<float>();
  float* po = out.data_ptr<float>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint32_t> keys(n), tmp(n);
    std::vector<float> sorted(n);
    for (int64_t r = begin; r < end; ++r) {
      if (!sorted_magnitudes(px + r * n, n, keys.data(), tmp.data(), sorted.data())) {
        po[2 * r] = po[2 * r + 1] = std::numeric_limits<float>::quiet_NaN();
        continue;
      }
      double v1, v2;
      scan_split(sorted.data(), n, ternary, &v1, &v2);
      po[2 * r] = static_cast<float>(v1);
      po[2 * r + 1] = static_cast<float>(v2);
    }
  });
  return out;
}

at::Tensor fit_ls2(const at::Tensor& x) { return fit_sorted(x, false); }
at::Tensor fit_ternary(const at::Tensor& x) { return fit_sorted(x, true); }

at::Tensor fit_greedy(const at::Tensor& x_in, int64_t k) {
  check_rows(x_in, "fit_greedy");
  TORCH_CHECK(k >= 1, "fit_greedy: k must be >= 1");
  const at::Tensor x = x_in.contiguous();
  const int64_t rows = x.size(0), n = x.size(1);
  TORCH_CHECK(n > 0, "cannot fit scales to empty rows");
  at::Tensor out = at::empty({rows, k}, x.options());
  const float* px = x.data_ptr<float>();
  float* po = out.data_ptr<float>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> approx(n);
    for (int64_t r = begin; r < end; ++r) {
      const float* row = px + r * n;
      std::fill(approx.begin(), approx.end(), 0.0f);
      for (int64_t i = 0; i < k; ++i) {
        double sum = 0.0;
        for (int64_t e = 0; e < n; ++e) sum += std::fabs(row[e] - approx[e]);
        const float v = static_cast<float>(sum / static_cast<double>(n));
        po[r * k + i] = v;
        if (i + 1 < k)
          for (int64_t e = 0; e < n; ++e) approx[e] += (row[e] - approx[e] >= 0.0f) ? v : -v;
      }
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> encode(const at::Tensor& x_in, const at::Tensor& scales_in, bool with_slope) {
  check_rows(x_in, "encode");
  TORCH_CHECK(scales_in.dim() == 2 && scales_in.scalar_type() == at::kFloat, "encode: scales must be (R|1, k) float32");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor scales = scales_in.contiguous();
  const int64_t rows = x.size(0), n = x.size(1), k = scales.size(1);
  TORCH_CHECK(scales.size(0) == rows || scales.size(0) == 1, "encode: scales must have 1 or ", rows, " rows");
  const int64_t scale_stride = scales.size(0) == 1 ? 0 : k;
  at::Tensor out = at::empty_like(x);
  at::Tensor slope = with_slope ? at::empty_like(x) : at::Tensor();
  const float* px = x.data_ptr<float>();
  const float* ps = scales.data_ptr<float>();
  float* po = out.data_ptr<float>();
  float* pd = with_slope ? slope.data_ptr<float>() : nullptr;
  at::parallel_for(0, rows * n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const float* v = ps + (idx / n) * scale_stride;
      const float xe = px[idx];
      float approx = 0.0f, keep = 1.0f;
      for (int64_t i = 0; i < k; ++i) {
        const float r = xe - approx;
        approx = approx + ((r >= 0.0f) ? v[i] : -v[i]);
        keep = keep * (1.0f - v[i] * (std::fabs(r) <= 1.0f ? 1.0f : 0.0f));
      }
      po[idx] = approx;
      if (pd) pd[idx] = 1.0f - keep;
    }
  });
  return {out, slope};
}

}  // namespace

TORCH_LIBRARY(lsqbq_quant, m) {
  m.def("fit_greedy(Tensor x, int k) -> Tensor");
  m.def("fit_ls2(Tensor x) -> Tensor");
  m.def("fit_ternary(Tensor x) -> Tensor");
  m.def("encode(Tensor x, Tensor scales, bool with_slope) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(lsqbq_quant, CPU, m) {
  m.impl("fit_greedy", &fit_greedy);
  m.impl("fit_ls2", &fit_ls2);
  m.impl("fit_ternary", &fit_ternary);
  m.impl("encode", &encode);
}
