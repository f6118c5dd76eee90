// Fused CPU implementations of the foldable least-squares quantizers (float32, one row per task), and the
// definition of the op namespace torch.ops.lsqbq (the XNOR kernels of csrc/ops_xnor.cpp add to it).
//
// They compute exactly what the pure-torch functions in lsqbq/quantizers.py and lsqbq/ste.py compute, with the
// same floating-point operations in the same order (built with -ffp-contract=off; -fno-trapping-math only lets
// compares be vectorised), so both paths agree bit for
// bit; the tests check that. What changes is the cost: one pass over a row instead of a dozen tensor passes,
// and a 3-pass LSD radix sort of the magnitudes' bit patterns instead of a comparison sort.
//
//   fit_greedy(x, k)            (R, n) -> (R, k)   v_i = mean|r_i|, r_{i+1} = r_i - v_i sign(r_i)         O(k n)
//   fit_ls2(x)                  (R, n) -> (R, 2)   exact 2-level split of sorted |x| (see fit_ls2 in Python) O(n)
//   fit_ternary(x)              (R, n) -> (R, 2)   exact {0, c} split of sorted |x|, returns (c/2, c/2)     O(n)
//   quant_encode(x, s, slope)   (R, n), (R|1, k) -> x_q = sum_i v_i b_i and, if slope, the STE derivative
//                               d x_q / d x = 1 - prod_i (1 - v_i 1{|r_i| <= 1}) (else an empty tensor)  O(k n)
// sign(0) = +1 throughout. Rows with NaN/Inf produce NaN scales (fit) so the caller can report the row.
// These are the CPU kernels of the ops; inputs other than float32 go to the op's portable kernel (the pure-torch
// code, registered from Python as CompositeExplicitAutograd), as do tensors on other devices.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "sorted_fit.h"

namespace {

// The op's portable kernel (the pure-torch code, registered from Python as CompositeExplicitAutograd) on the
// given arguments: what a CPU kernel runs for inputs the fused code does not cover (dtypes other than float32).
template <class... Args>
torch::jit::Stack portable(const char* name, Args&&... args) {
  const c10::OperatorHandle op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
  TORCH_CHECK(op.hasKernelForDispatchKey(c10::DispatchKey::CompositeExplicitAutograd), name,
              ": the C++ kernel takes float32 only and no portable kernel is registered (import lsqbq first)");
  torch::jit::Stack stack;
  torch::jit::push(stack, std::forward<Args>(args)...);
  op.callBoxedForDispatchKey(c10::DispatchKey::CompositeExplicitAutograd, stack);
  return stack;
}

void check_rows(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.device().is_cpu(), op, ": expected a CPU tensor");
  TORCH_CHECK(x.dim() == 2, op, ": expected a 2-D tensor, got ", x.dim(), " dimensions");
  TORCH_CHECK(x.scalar_type() == at::kFloat, op, ": expected float32, got ", x.scalar_type());
}

at::Tensor fit_sorted(const at::Tensor& x_in, bool ternary) {
  check_rows(x_in, ternary ? "fit_ternary" : "fit_ls2");
  const at::Tensor x = x_in.contiguous();
  const int64_t rows = x.size(0), n = x.size(1);
  TORCH_CHECK(n > 0, "cannot fit scales to empty rows");
  at::Tensor out = at::empty({rows, 2}, x.options());
  const float* px = x.data_ptr<float>();
  float* po = out.data_ptr<float>();
  std::vector<double> inv(n + 1);
  inv[0] = 0.0;
  for (int64_t j = 1; j <= n; ++j) inv[j] = 1.0 / static_cast<double>(j);
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint32_t> keys(n), tmp(n);
    std::vector<float> sorted(n);
    std::vector<int64_t> count(1 << 11);
    for (int64_t r = begin; r < end; ++r) {
      if (!lsqbq::sorted_magnitudes(px + r * n, n, keys.data(), tmp.data(), count, sorted.data())) {
        po[2 * r] = po[2 * r + 1] = std::numeric_limits<float>::quiet_NaN();
        continue;
      }
      double v1, v2;
      lsqbq::scan_split(sorted.data(), n, inv.data(), ternary, &v1, &v2);
      po[2 * r] = static_cast<float>(v1);
      po[2 * r + 1] = static_cast<float>(v2);
    }
  });
  return out;
}

at::Tensor fit_ls2(const at::Tensor& x) {
  if (x.scalar_type() != at::kFloat) return portable("lsqbq::fit_ls2", x)[0].toTensor();
  return fit_sorted(x, false);
}

at::Tensor fit_ternary(const at::Tensor& x) {
  if (x.scalar_type() != at::kFloat) return portable("lsqbq::fit_ternary", x)[0].toTensor();
  return fit_sorted(x, true);
}

at::Tensor fit_greedy(const at::Tensor& x_in, int64_t k) {
  if (x_in.scalar_type() != at::kFloat) return portable("lsqbq::fit_greedy", x_in, k)[0].toTensor();
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

// One row of the foldable encoding; K > 0 is a compile-time bit count (unrolled), K == 0 means "use k".
// Branch-free selects so the compiler vectorises the element loop.
template <int K>
void encode_row(const float* __restrict__ x, const float* v_in, int64_t k, int64_t n, float* __restrict__ out,
                float* __restrict__ slope) {
  constexpr int kMax = 8;
  const int64_t kk = K > 0 ? K : k;
  float v[kMax];
  for (int64_t i = 0; i < std::min<int64_t>(kk, kMax); ++i) v[i] = v_in[i];  // scales in registers
  if (K == 0 && kk > kMax) {  // many bits: plain loop reading the scales from memory
    for (int64_t e = 0; e < n; ++e) {
      float approx = 0.0f, keep = 1.0f;
      for (int64_t i = 0; i < kk; ++i) {
        const float r = x[e] - approx;
        approx = approx + ((r >= 0.0f) ? v_in[i] : -v_in[i]);
        keep = keep * (1.0f - v_in[i] * ((std::fabs(r) <= 1.0f) ? 1.0f : 0.0f));
      }
      out[e] = approx;
      if (slope) slope[e] = 1.0f - keep;
    }
    return;
  }
  auto step = [&](float xe, float& approx, float& keep) {
    for (int64_t i = 0; i < kk; ++i) {
      const float r = xe - approx;
      approx = approx + ((r >= 0.0f) ? v[i] : -v[i]);
      const float m = (std::fabs(r) <= 1.0f) ? v[i] : 0.0f;  // v * 1{|r| <= 1}, exactly
      keep = keep * (1.0f - m);
    }
  };
  if (slope) {
    for (int64_t e = 0; e < n; ++e) {
      float approx = 0.0f, keep = 1.0f;
      step(x[e], approx, keep);
      out[e] = approx;
      slope[e] = 1.0f - keep;
    }
  } else {
    for (int64_t e = 0; e < n; ++e) {
      float approx = 0.0f, keep = 1.0f;
      step(x[e], approx, keep);
      out[e] = approx;
    }
  }
}

std::tuple<at::Tensor, at::Tensor> quant_encode(const at::Tensor& x_in, const at::Tensor& scales_in, bool with_slope) {
  if (x_in.scalar_type() != at::kFloat || scales_in.scalar_type() != at::kFloat) {
    const auto out = portable("lsqbq::quant_encode", x_in, scales_in, with_slope);
    return {out[0].toTensor(), out[1].toTensor()};
  }
  check_rows(x_in, "quant_encode");
  TORCH_CHECK(scales_in.dim() == 2, "quant_encode: scales must be (R|1, k)");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor scales = scales_in.contiguous();
  const int64_t rows = x.size(0), n = x.size(1), k = scales.size(1);
  TORCH_CHECK(scales.size(0) == rows || scales.size(0) == 1, "quant_encode: scales must have 1 or ", rows, " rows");
  const int64_t scale_stride = scales.size(0) == 1 ? 0 : k;
  at::Tensor out = at::empty_like(x);
  at::Tensor slope = with_slope ? at::empty_like(x) : at::empty({0}, x.options());
  const float* px = x.data_ptr<float>();
  const float* ps = scales.data_ptr<float>();
  float* po = out.data_ptr<float>();
  float* pd = with_slope ? slope.data_ptr<float>() : nullptr;
  // Tasks are (row, chunk) pairs of at most kChunk elements, so one long row still uses every thread.
  constexpr int64_t kChunk = 16384;
  const int64_t chunks = n == 0 ? 0 : (n + kChunk - 1) / kChunk;
  at::parallel_for(0, rows * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / chunks, c = task % chunks;
      const int64_t off = r * n + c * kChunk, len = std::min(kChunk, n - c * kChunk);
      const float* v = ps + r * scale_stride;
      float* sl = pd ? pd + off : nullptr;
      switch (k) {
        case 1: encode_row<1>(px + off, v, k, len, po + off, sl); break;
        case 2: encode_row<2>(px + off, v, k, len, po + off, sl); break;
        case 3: encode_row<3>(px + off, v, k, len, po + off, sl); break;
        default: encode_row<0>(px + off, v, k, len, po + off, sl); break;
      }
    }
  });
  return {out, slope};
}

}  // namespace

// The one definition of the namespace; every other source file adds ops with TORCH_LIBRARY_FRAGMENT.
TORCH_LIBRARY(lsqbq, m) {
  m.def("fit_greedy(Tensor x, int k) -> Tensor");
  m.def("fit_ls2(Tensor x) -> Tensor");
  m.def("fit_ternary(Tensor x) -> Tensor");
  m.def("quant_encode(Tensor x, Tensor scales, bool with_slope) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(lsqbq, CPU, m) {
  m.impl("fit_greedy", &fit_greedy);
  m.impl("fit_ls2", &fit_ls2);
  m.impl("fit_ternary", &fit_ternary);
  m.impl("quant_encode", &quant_encode);
}
