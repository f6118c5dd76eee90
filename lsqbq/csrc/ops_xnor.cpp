// The torch ops of the XNOR engine (the only file of the engine that includes torch headers): argument checks,
// output tensors, and the registration of the ops in the namespace torch.ops.lsqbq, which the quantizers
// (quant.cpp) define; all C++ sources are compiled into one library. The work itself is in the core files, on raw
// pointers and shapes: job.h / driver.cpp (binary convolution and GEMM), tile_portable.cpp, tile_avx512.cpp,
// tile_avx2.cpp (micro-kernels), encode.h / encode*.cpp (activation encode), fit*.cpp (exact ls-2 / ls-T fits),
// maxpool.h (the stem's max-pool + ReLU), quantize.h (uint8 activations of the int8 float parts), pool.h
// (threads), isa.h (instruction-set paths, chosen per call by the `isa` argument: 0 portable, 1 AVX-512 VPOPCNTDQ,
// 2 AVX2, 3 NEON).
//
// Layer op (bitwise_conv2d): one call per layer does the fused activation encode (optional BatchNorm prologue,
// clamp, per-sample scales -- given, greedy mean|r| in float64 lanes fused with the encode passes, or the exact
// ls-2 / ls-T fit without a full sort -- sign planes and padding), the convolution on the packed NHWC words (no
// im2col copy: each output row reads its taps in place) and the float epilogue (scales, bias, BatchNorm folded by
// the caller, ReLU / PReLU, residual add before or after the activation), writing NHWC float output.
//
// Int8 ops (int8_conv2d, int8_linear): the int8 float parts' layers in one call each, uint8 activations (quantize.h)
// then oneDNN's int8 op through the dispatcher, so that a traced graph can record them.
#include <ATen/core/Tensor.h>
#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "direct_conv.h"
#include "direct_conv_f32.h"
#include "encode.h"
#include "isa.h"
#include "job.h"
#include "maxpool.h"
#include "memprobe.h"
#include "pool.h"
#include "quantize.h"

namespace lsqbq {
namespace {

void check_isa(int64_t isa) {
  TORCH_CHECK(isa_known(isa), "lsqbq: unknown kernel isa ", isa);
  TORCH_CHECK(isa_supported(isa), "lsqbq: ", isa_name(isa), " kernels requested but this CPU lacks them");
}

// Threads the engine may use: torch's count (torch.set_num_threads), one inside a torch parallel region.
int64_t torch_threads() { return at::in_parallel_region() ? 1 : at::get_num_threads(); }

// The engine's parallel loops on torch's own thread pool (pool.h, set_runner): one pool for the whole network.
void torch_runner(int64_t n, int64_t grain, const RangeFn& fn) {
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) { fn(begin, end); });
}

[[maybe_unused]] const bool runner_set = (set_runner(&torch_runner), true);

void check_words(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.scalar_type() == at::kLong, "lsqbq: ", name, " must be int64 packed words, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == dim, "lsqbq: ", name, " must be ", dim, "-D, got ", t.sizes());
  TORCH_CHECK(t.is_contiguous() && t.device().is_cpu(), "lsqbq: ", name, " must be a contiguous CPU tensor");
}

// The job of words a against panels w on geometry g, after checking every shape (core: make_job in driver.cpp).
Job checked_job(const at::Tensor& a, const at::Tensor& w, const at::Tensor& wtap, const Geometry& g, bool mask) {
  check_words(a, "a", 5);
  check_words(w, "w", 4);
  const int64_t Cw = (g.C + 63) / 64;
  const int64_t Hp = g.H + 2 * g.ph, Wp = g.W + 2 * g.pw;
  TORCH_CHECK(a.size(1) == g.B && a.size(2) == Hp && a.size(3) == Wp && a.size(4) == Cw,
              "lsqbq: activation words ", a.sizes(), " do not match the geometry (B, H + 2 ph, W + 2 pw, Cw) = (", g.B,
              ", ", Hp, ", ", Wp, ", ", Cw, ")");
  TORCH_CHECK(!mask || a.size(0) == 2, "lsqbq: ternary mask encoding needs 2 planes (sign, mask), got ", a.size(0));
  TORCH_CHECK(g.OH > 0 && g.OW > 0, "lsqbq: empty output");
  const int64_t T = g.KH * g.KW;
  TORCH_CHECK(T <= 64, "lsqbq: kernels with more than 64 taps are not supported");
  // per-tap panels (T * Cw k words), or packed-tap panels (KH * ceil(KW / G) k words, at most 32 channels)
  const int64_t Kp = packed_words(g.C, g.KH, g.KW);
  const bool can_pack = tap_group(g.C, g.KW) >= 2;  // then always fewer words than one per tap
  const bool packed = can_pack && w.size(2) == Kp;
  TORCH_CHECK((w.size(2) == T * Cw || packed) && w.size(3) == NB, "lsqbq: weight panels ", w.sizes(),
              " expected (P_w, NP, ", T * Cw, ", ", NB, ")",
              can_pack ? " or, with packed taps, (P_w, NP, " + std::to_string(Kp) + ", 32)" : "");
  const int32_t* taps = nullptr;
  if ((g.ph > 0 || g.pw > 0) && !mask) {
    TORCH_CHECK(wtap.defined() && wtap.scalar_type() == at::kInt && wtap.is_contiguous() &&
                    wtap.numel() == w.size(0) * T * w.size(1) * NB,
                "lsqbq: padded sign-plane convolution needs tap sums (P_w, T, NP * 32) int32");
    taps = wtap.data_ptr<int32_t>();
  }
  Job J = make_job(reinterpret_cast<const uint64_t*>(a.data_ptr<int64_t>()), a.size(0),
                   reinterpret_cast<const uint64_t*>(w.data_ptr<int64_t>()), w.size(0), w.size(1), taps, g, mask,
                   packed);
  J.threads = torch_threads();
  return J;
}

Geometry conv_geometry(const at::Tensor& a, int64_t C, at::IntArrayRef hw, at::IntArrayRef kernel,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(hw.size() == 2 && kernel.size() == 2 && stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "lsqbq: hw, kernel, stride, padding, dilation must have 2 entries");
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0 && dilation[0] > 0 && dilation[1] > 0 && padding[0] >= 0 &&
                  padding[1] >= 0,
              "lsqbq: bad conv geometry");
  return lsqbq::conv_geometry(a.size(1), C, hw[0], hw[1], kernel[0], kernel[1], stride[0], stride[1], padding[0],
                              padding[1], dilation[0], dilation[1]);
}

at::Tensor run_int(Job& J, int64_t N, int64_t isa) {
  TORCH_CHECK(N > 0 && N <= J.NP * NB, "lsqbq: n_out ", N, " does not fit ", J.NP, " weight panels");
  J.N = N;
  auto out = at::empty({J.pa_logical(), J.pw, J.M, N}, at::TensorOptions().dtype(at::kInt));
  J.out_i = out.data_ptr<int32_t>();
  run(J, isa);
  return out;
}

at::Tensor run_scaled(Job& J, int64_t N, const at::Tensor& sa, const at::Tensor& sw,
                      const std::optional<at::Tensor>& bias, int64_t B, int64_t isa) {
  TORCH_CHECK(N > 0 && N <= J.NP * NB, "lsqbq: n_out ", N, " does not fit ", J.NP, " weight panels");
  J.N = N;
  TORCH_CHECK(sa.scalar_type() == at::kFloat && sa.is_contiguous() && sa.dim() == 2 && sa.size(0) == B &&
                  sa.size(1) == J.pa_logical(),
              "lsqbq: activation scales must be float32 (B, P_a) = (", B, ", ", J.pa_logical(), "), got ", sa.sizes());
  TORCH_CHECK(sw.scalar_type() == at::kFloat && sw.is_contiguous() && sw.numel() == J.pw * J.NP * NB,
              "lsqbq: weight scales must be float32 (P_w, NP * 32)");
  J.sa = sa.data_ptr<float>();
  J.swt = sw.data_ptr<float>();
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == N, "lsqbq: bad bias");
    J.bias = bias->data_ptr<float>();
  }
  auto out = at::empty({J.M, N}, at::TensorOptions().dtype(at::kFloat));
  J.out_f = out.data_ptr<float>();
  run(J, isa);
  return out;
}

// ------------------------------------------------------------------------------------------------ ops

at::Tensor xnor_gemm_cpu(const at::Tensor& a, const at::Tensor& w, int64_t n_out, int64_t k, bool mask, int64_t isa) {
  check_isa(isa);
  check_words(a, "a", 3);
  auto a5 = a.view({a.size(0), a.size(1), 1, 1, a.size(2)});
  Job J = checked_job(a5, w, at::Tensor(), lsqbq::gemm_geometry(a5.size(1), k), mask);
  return run_int(J, n_out, isa);
}

at::Tensor xnor_gemm_scaled_cpu(const at::Tensor& a, const at::Tensor& w, const at::Tensor& sa, const at::Tensor& sw,
                                const std::optional<at::Tensor>& bias, int64_t n_out, int64_t k, bool mask,
                                int64_t isa) {
  check_isa(isa);
  check_words(a, "a", 3);
  auto a5 = a.view({a.size(0), a.size(1), 1, 1, a.size(2)});
  Job J = checked_job(a5, w, at::Tensor(), lsqbq::gemm_geometry(a5.size(1), k), mask);
  return run_scaled(J, n_out, sa, sw, bias, a.size(1), isa);
}

at::Tensor xnor_conv2d_cpu(const at::Tensor& a, const at::Tensor& w, const at::Tensor& wtap, int64_t n_out,
                           int64_t c_in, at::IntArrayRef hw, at::IntArrayRef kernel, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, bool mask, int64_t isa) {
  check_isa(isa);
  check_words(a, "a", 5);
  const Geometry g = conv_geometry(a, c_in, hw, kernel, stride, padding, dilation);
  Job J = checked_job(a, w, wtap, g, mask);
  auto out = run_int(J, n_out, isa);
  return out.view({out.size(0), out.size(1), g.B, g.OH, g.OW, n_out});
}

at::Tensor xnor_conv2d_scaled_cpu(const at::Tensor& a, const at::Tensor& w, const at::Tensor& wtap,
                                  const at::Tensor& sa, const at::Tensor& sw, const std::optional<at::Tensor>& bias,
                                  int64_t n_out, int64_t c_in, at::IntArrayRef hw, at::IntArrayRef kernel,
                                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool mask,
                                  int64_t isa) {
  check_isa(isa);
  check_words(a, "a", 5);
  const Geometry g = conv_geometry(a, c_in, hw, kernel, stride, padding, dilation);
  Job J = checked_job(a, w, wtap, g, mask);
  auto out = run_scaled(J, n_out, sa, sw, bias, g.B, isa);
  return out.view({g.B, g.OH, g.OW, n_out});
}

// pack_signs: (..., K) float -> (..., ceil(K / 64)) int64, bit = NOT (x >= 0).
at::Tensor pack_signs_cpu(const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 1 && x.is_floating_point(), "lsqbq: pack_signs needs a floating tensor");
  auto xf = x.to(at::kFloat).contiguous();
  const int64_t K = x.size(-1);
  const int64_t R = K ? xf.numel() / K : 0;
  const int64_t Kw = (K + 63) / 64;
  auto sizes = x.sizes().vec();
  sizes.back() = Kw;
  auto out = at::zeros(sizes, at::TensorOptions().dtype(at::kLong));
  const float* src = xf.data_ptr<float>();
  uint64_t* dst = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  at::parallel_for(0, R, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      for (int64_t c = 0; c < K; ++c)
        if (!(src[r * K + c] >= 0.f)) dst[r * Kw + c / 64] |= uint64_t(1) << (c % 64);
  });
  return out;
}

const float* opt_vector(const std::optional<at::Tensor>& t, int64_t n, const char* what, at::Tensor& keep) {
  if (!t.has_value() || !t->defined()) return nullptr;
  keep = t->to(at::kFloat).contiguous();
  TORCH_CHECK(keep.numel() == n, "lsqbq: ", what, " must hold ", n, " values, got ", keep.numel());
  return keep.data_ptr<float>();
}

// Fused activation encode. x: (B, C, H, W) float32 in any memory format (channels_last is read in place) or
// (B, n). Prologue (in_scale, in_shift: (C)) and clamp, then the scales: given (fit 0: x_scales (B | 1, planes)),
// fitted greedily in the encode passes (fit 1), or fitted exactly on the NHWC activation (fit 2 ls-2, fit 3
// ternary; sorting makes the order irrelevant, so they equal the fit of the NCHW rows bit for bit). Returns
// (words (planes, B, H + 2 ph, W + 2 pw, Cw) or (planes, B, Cw), scales (B, planes) float32).
std::tuple<at::Tensor, at::Tensor> encode_impl(const at::Tensor& x, const std::optional<at::Tensor>& in_scale,
                                               const std::optional<at::Tensor>& in_shift,
                                               const std::optional<at::Tensor>& x_scales, double clamp,
                                               int64_t planes, int64_t fit, bool mask, int64_t pad_h, int64_t pad_w,
                                               int64_t isa) {
  check_isa(isa);
  TORCH_CHECK(x.dim() == 4 || x.dim() == 2, "lsqbq: activations must be (B, C, H, W) or (B, n), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat, "lsqbq: activations must be float32, got ", x.scalar_type());
  TORCH_CHECK(planes >= 1 && planes <= 8, "lsqbq: 1..8 activation planes are supported, got ", planes);
  TORCH_CHECK(!mask || planes == 2, "lsqbq: the ternary mask encoding uses 2 scales (v, v)");
  TORCH_CHECK(fit >= kGiven && fit <= kTernary, "lsqbq: unknown fit mode ", fit);
  TORCH_CHECK(fit != kGreedy || !mask, "lsqbq: the greedy fit has no ternary encoding");
  TORCH_CHECK(fit < kLs2 || planes == 2, "lsqbq: the exact fits have 2 scales");
  TORCH_CHECK(pad_h >= 0 && pad_w >= 0, "lsqbq: negative padding");
  const bool two_d = x.dim() == 2;
  if (two_d) TORCH_CHECK(pad_h == 0 && pad_w == 0, "lsqbq: no padding for 2-D input");
  const at::Tensor x4 =
      two_d ? x.contiguous().view({x.size(0), x.size(1), 1, 1}) : x.contiguous(at::MemoryFormat::ChannelsLast);
  Enc E;
  E.B = x4.size(0); E.C = x4.size(1); E.H = x4.size(2); E.W = x4.size(3);
  TORCH_CHECK(E.B > 0 && E.C > 0 && E.H > 0 && E.W > 0, "lsqbq: empty activations ", x.sizes());
  E.Cw = (E.C + 63) / 64;
  E.x = x4.data_ptr<float>();
  at::Tensor keep_a, keep_b;
  E.in_a = opt_vector(in_scale, E.C, "in_scale", keep_a);
  E.in_b = opt_vector(in_shift, E.C, "in_shift", keep_b);
  TORCH_CHECK((E.in_a == nullptr) == (E.in_b == nullptr), "lsqbq: in_scale and in_shift go together");
  E.do_clamp = clamp > 0;
  E.cv = static_cast<float>(clamp);
  E.mask = mask;
  E.ph = pad_h; E.pw = pad_w;
  E.Hp = E.H + 2 * pad_h; E.Wp = E.W + 2 * pad_w;
  auto words = at::zeros({planes, E.B, E.Hp, E.Wp, E.Cw}, at::TensorOptions().dtype(at::kLong));
  E.dst = reinterpret_cast<uint64_t*>(words.data_ptr<int64_t>());
  E.plane_stride = E.B * E.Hp * E.Wp * E.Cw;
  E.threads = torch_threads();
  at::Tensor v;
  if (fit == kGiven) {
    TORCH_CHECK(x_scales.has_value() && x_scales->defined(), "lsqbq: given-scale encode needs x_scales");
    at::Tensor s = x_scales->to(at::kFloat);
    if (s.dim() == 1) s = s.view({1, s.size(0)});
    TORCH_CHECK(s.dim() == 2 && s.size(1) == planes && (s.size(0) == E.B || s.size(0) == 1),
                "lsqbq: scales must be (", E.B, ", ", planes, ") or (1, ", planes, "), got ", x_scales->sizes());
    v = at::empty({E.B, planes}, at::TensorOptions().dtype(at::kFloat));  // never an alias of the input
    v.copy_(s.expand({E.B, planes}));
    encode_given(E, planes, v.data_ptr<float>(), planes, isa);
  } else if (fit == kGreedy) {
    v = at::empty({E.B, planes}, at::TensorOptions().dtype(at::kFloat));
    encode_greedy(E, planes, v.data_ptr<float>(), isa);
  } else {
    TORCH_CHECK(E.C * E.H * E.W < (int64_t(1) << 29),
                "lsqbq: rows of 2^29 or more values are not supported by the exact fits");
    v = at::empty({E.B, 2}, at::TensorOptions().dtype(at::kFloat));
    exact_fit(E, fit == kTernary, isa, v.data_ptr<float>());  // the encode below applies the prologue and clamp
    encode_given(E, planes, v.data_ptr<float>(), planes, isa);
  }
  if (fit != kGiven) {
    const float* pv = v.data_ptr<float>();
    for (int64_t b = 0; b < E.B; ++b)
      for (int64_t i = 0; i < planes; ++i)
        TORCH_CHECK_VALUE(std::isfinite(pv[b * planes + i]), "lsqbq: the activation scales of sample ", b,
                          " are not finite: the input holds NaN or Inf");
  }
  if (two_d) words = words.view({planes, E.B, E.Cw});
  return {words, v};
}

at::Tensor pack_activations_cpu(const at::Tensor& x, const at::Tensor& scales, double clamp, int64_t planes, bool mask,
                                int64_t pad_h, int64_t pad_w, int64_t isa) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "lsqbq: pack_activations expects float32 activations");
  return std::get<0>(encode_impl(x, std::nullopt, std::nullopt, scales, clamp, planes, kGiven, mask, pad_h, pad_w, isa));
}

std::tuple<at::Tensor, at::Tensor> encode_fused_cpu(const at::Tensor& x, const std::optional<at::Tensor>& in_scale,
                                                    const std::optional<at::Tensor>& in_shift,
                                                    const std::optional<at::Tensor>& x_scales, double clamp,
                                                    int64_t planes, int64_t fit, bool mask, int64_t pad_h,
                                                    int64_t pad_w, int64_t isa) {
  return encode_impl(x, in_scale, in_shift, x_scales, clamp, planes, fit, mask, pad_h, pad_w, isa);
}

// The whole bitwise convolution layer in one call: fused encode (prologue, clamp, scales, planes, padding), binary
// convolution, and the float epilogue
//   y = bias + sum_ij sa_i sw_j d_ij;  (+ residual if residual_first);  act;  (+ residual otherwise)
// with act 0 none, 1 ReLU, 2 PReLU (slope (N) or (1)). x: (B, C, H, W) float32 (channels_last read in place);
// residual: (B, N, OH, OW) float32. Returns (B, OH, OW, N) float32 (NHWC memory). Ternary activations use the
// logical plane t = x_q / (2v): sa = 2 v.
at::Tensor bitwise_conv2d_cpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& wtap, const at::Tensor& sw,
                              const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& in_scale,
                              const std::optional<at::Tensor>& in_shift, const std::optional<at::Tensor>& x_scales,
                              const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& slope,
                              double clamp, int64_t planes, int64_t fit, bool mask, int64_t act, bool residual_first,
                              int64_t n_out, int64_t c_in, at::IntArrayRef kernel, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t isa) {
  TORCH_CHECK(x.dim() == 4, "lsqbq: bitwise_conv2d expects (B, C, H, W), got ", x.sizes());
  TORCH_CHECK(x.size(1) == c_in, "lsqbq: bitwise_conv2d expects ", c_in, " input channels, got ", x.size(1));
  TORCH_CHECK(act >= 0 && act <= 2, "lsqbq: unknown activation code ", act);
  TORCH_CHECK(padding.size() == 2, "lsqbq: padding must have 2 entries");
  auto [a, v] = encode_impl(x, in_scale, in_shift, x_scales, clamp, planes, fit, mask, padding[0], padding[1], isa);
  const int64_t hw[2] = {x.size(2), x.size(3)};
  const Geometry g = conv_geometry(a, c_in, hw, kernel, stride, padding, dilation);
  Job J = checked_job(a, w, wtap, g, mask);
  at::Tensor sa = v;
  if (mask) {  // ternary: one logical plane t = x_q / (2 v)
    sa = at::empty({g.B, 1}, v.options());
    for (int64_t b = 0; b < g.B; ++b) sa.data_ptr<float>()[b] = 2.0f * v.data_ptr<float>()[b * 2];
  }
  at::Tensor res;
  if (residual.has_value() && residual->defined()) {
    TORCH_CHECK(residual->scalar_type() == at::kFloat && residual->dim() == 4 && residual->size(0) == g.B &&
                    residual->size(1) == n_out && residual->size(2) == g.OH && residual->size(3) == g.OW,
                "lsqbq: residual must be float32 (", g.B, ", ", n_out, ", ", g.OH, ", ", g.OW, "), got ",
                residual->sizes(), " ", residual->scalar_type());
    res = residual->contiguous(at::MemoryFormat::ChannelsLast);
    J.res = res.data_ptr<float>();
  }
  at::Tensor keep_slope;
  if (act == 2) {
    TORCH_CHECK(slope.has_value() && slope->defined(), "lsqbq: PReLU needs slopes");
    keep_slope = slope->to(at::kFloat).contiguous();
    TORCH_CHECK(keep_slope.numel() == n_out || keep_slope.numel() == 1, "lsqbq: PReLU slopes must be (", n_out,
                ") or (1), got ", keep_slope.numel());
    J.slope = keep_slope.data_ptr<float>();
    J.slope_step = keep_slope.numel() == 1 ? 0 : 1;
  }
  J.act = static_cast<int>(act);
  J.res_first = residual_first;
  auto out = run_scaled(J, n_out, sa, sw, bias, g.B, isa);
  return out.view({g.B, g.OH, g.OW, n_out});
}


// Max-pool (+ ReLU) of a channels_last float32 (B, C, H, W) tensor (core: maxpool.cpp); channels_last output.
at::Tensor max_pool2d_nhwc_cpu(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride,
                               at::IntArrayRef padding, bool relu, int64_t isa) {
  check_isa(isa);
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 4 && x.device().is_cpu(),
              "lsqbq: max_pool2d_nhwc needs a float32 (B, C, H, W) CPU tensor, got ", x.sizes(), " ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), "lsqbq: max_pool2d_nhwc needs channels_last input");
  TORCH_CHECK(kernel.size() == 2 && stride.size() == 2 && padding.size() == 2,
              "lsqbq: max_pool2d_nhwc takes 2 values each of kernel, stride and padding");
  PoolShape s{x.size(0), x.size(2), x.size(3), x.size(1), kernel[0], kernel[1], stride[0], stride[1],
              padding[0], padding[1], 0, 0};
  for (int i = 0; i < 2; ++i)
    TORCH_CHECK(kernel[i] > 0 && stride[i] > 0 && padding[i] >= 0 && 2 * padding[i] < kernel[i],
                "lsqbq: max_pool2d_nhwc needs kernel > 0, stride > 0 and 0 <= 2 padding < kernel, got kernel ",
                kernel, ", stride ", stride, ", padding ", padding);
  s.OH = (s.H + 2 * s.ph - s.KH) / s.sh + 1;
  s.OW = (s.W + 2 * s.pw - s.KW) / s.sw + 1;
  TORCH_CHECK(s.H + 2 * s.ph >= s.KH && s.W + 2 * s.pw >= s.KW && s.B > 0 && s.C > 0,
              "lsqbq: max_pool2d_nhwc: input ", x.sizes(), " is smaller than the window ", kernel);
  auto y = at::empty({s.B, s.C, s.OH, s.OW}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  max_pool_nhwc(x.data_ptr<float>(), y.data_ptr<float>(), s, relu, isa, torch_threads());
  return y;
}

// uint8 activations of a channels_last float32 (B, C, H, W) tensor over the pixel grid of `step` (core:
// quantize.cpp): q (B, C', ceil(H / sh), ceil(W / sw)) channels_last and float64 [scale, zero, lo, hi] with
//   lo' = min(lo, 0), hi' = max(hi, 0), scale = (hi' - lo') / levels (1 when hi' == lo'),
//   zero = clamp(round_half_even(-lo' / scale), 0, levels),
// as lsqbq/kernels/float_parts.py quantize_uint8 computes them; C' = channels (0: C), the channels past C the
// quantized 0 (zero channels appended to x). A range that is not finite (NaN or inf in the grid)
// returns an empty q and the range, for the caller's error.
std::tuple<at::Tensor, at::Tensor> quantize_uint8_cpu(const at::Tensor& x, at::IntArrayRef step, int64_t levels,
                                                      int64_t channels, int64_t isa) {
  check_isa(isa);
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 4 && x.device().is_cpu(),
              "lsqbq: quantize_uint8 needs a float32 (B, C, H, W) CPU tensor, got ", x.sizes(), " ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), "lsqbq: quantize_uint8 needs channels_last input");
  TORCH_CHECK(step.size() == 2 && step[0] > 0 && step[1] > 0, "lsqbq: quantize_uint8 needs 2 positive steps, got ",
              step);
  TORCH_CHECK(levels >= 1 && levels <= 255, "lsqbq: quantize_uint8 levels must be in [1, 255], got ", levels);
  TORCH_CHECK(x.numel() > 0, "lsqbq: quantize_uint8 of an empty tensor ", x.sizes());
  TORCH_CHECK(channels == 0 || channels >= x.size(1), "lsqbq: quantize_uint8 channels must be 0 or at least C = ",
              x.size(1), ", got ", channels);
  Grid g{x.size(0), x.size(2), x.size(3), x.size(1), step[0], step[1], 0, 0, channels ? channels : x.size(1)};
  g.OH = (g.H + g.sh - 1) / g.sh;
  g.OW = (g.W + g.sw - 1) / g.sw;
  float lo = 0, hi = 0;
  range_nhwc(x.data_ptr<float>(), g, lo, hi, isa);
  auto params = at::empty({4}, x.options().dtype(at::kDouble));
  double* pr = params.data_ptr<double>();
  pr[2] = lo;
  pr[3] = hi;
  if (!std::isfinite(lo) || !std::isfinite(hi)) {
    pr[0] = pr[1] = std::nan("");
    return {at::empty({0}, x.options().dtype(at::kByte)), params};
  }
  const double lod = std::min<double>(lo, 0.0), hid = std::max<double>(hi, 0.0);
  const double scale = hid > lod ? (hid - lod) / static_cast<double>(levels) : 1.0;
  const double zero = std::min<double>(std::max<double>(std::nearbyint(-lod / scale), 0.0),
                                       static_cast<double>(levels));
  pr[0] = scale;
  pr[1] = zero;
  auto q = at::empty({g.B, g.CO, g.OH, g.OW},
                     x.options().dtype(at::kByte).memory_format(at::MemoryFormat::ChannelsLast));
  quantize_u8_nhwc(x.data_ptr<float>(), q.data_ptr<uint8_t>(), g, static_cast<float>(1.0 / scale),
                   static_cast<float>(zero + 0.5), static_cast<float>(levels), isa, torch_threads());
  return {q, params};
}

// uint8 activations of x (quantize_uint8_cpu) for oneDNN's int8 ops: the pair (q, params); a range that is not
// finite is a ValueError naming the shape `shown` (the layer's input) and the range (no uint8 grid covers it).
std::tuple<at::Tensor, at::Tensor> quantize_finite(const at::Tensor& x, at::IntArrayRef step, int64_t levels,
                                                   int64_t channels, int64_t isa, at::IntArrayRef shown) {
  auto out = quantize_uint8_cpu(x, step, levels, channels, isa);
  const double* pr = std::get<1>(out).data_ptr<double>();
  TORCH_CHECK_VALUE(std::get<0>(out).numel() > 0, "int8 float parts: activations of shape ", shown,
                    " are not finite (min ", pr[2], ", max ", pr[3], "); no uint8 grid covers them: check the input, "
                    "or convert with float_parts='fp32'");
  return out;
}

// oneDNN's int8 op `op` (torch.ops.onednn, the kernels of torch's x86 quantization), called boxed: its schema
// has a list of optional scalars, which TorchScript tracing cannot record, so the calls are recorded as this
// library's ops instead.
at::Tensor call_onednn(const c10::OperatorHandle& op, torch::jit::Stack stack) {
  op.callBoxed(&stack);
  return stack.back().toTensor();
}

// The handles, looked up once (a lookup takes the dispatcher's lock and a hash of the name).
const c10::OperatorHandle& qconv_op() {
  static const c10::OperatorHandle op = c10::Dispatcher::singleton().findSchemaOrThrow("onednn::qconv2d_pointwise", "");
  return op;
}
const c10::OperatorHandle& qlinear_op() {
  static const c10::OperatorHandle op = c10::Dispatcher::singleton().findSchemaOrThrow("onednn::qlinear_pointwise", "");
  return op;
}

// The int8 float parts' convolution (lsqbq/kernels/float_parts.py, Int8Conv2d): uint8 activations of the grid of
// `step` of x (channels past C the quantized 0), then oneDNN's qconv2d_pointwise with the prepacked int8 weights,
// per-channel weight scales, float bias and an optional ReLU; float32 NHWC (channels_last) out.
at::Tensor int8_conv2d_cpu(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& w_scale,
                           const at::Tensor& w_zero, const std::optional<at::Tensor>& bias, at::IntArrayRef step,
                           int64_t levels, int64_t channels, at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, int64_t groups, bool relu, int64_t isa) {
  auto [q, params] = quantize_finite(x, step, levels, channels, isa, x.sizes());
  const double* pr = params.data_ptr<double>();
  return call_onednn(qconv_op(),
                     {q, pr[0], static_cast<int64_t>(pr[1]), packed, w_scale, w_zero, bias, stride.vec(),
                      padding.vec(), dilation.vec(), groups, 1.0, int64_t{0}, std::optional<at::ScalarType>(at::kFloat),
                      std::string(relu ? "relu" : "none"), c10::List<std::optional<at::Scalar>>(),
                      std::optional<std::string>("")});
}

// The int8 float parts' linear layer (Int8Linear): uint8 activations of the rows x (N, F), then oneDNN's
// qlinear_pointwise; float32 (N, out) out.
at::Tensor int8_linear_cpu(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& w_scale,
                           const at::Tensor& w_zero, const std::optional<at::Tensor>& bias, int64_t levels, bool relu,
                           int64_t isa) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "lsqbq: int8_linear needs contiguous rows (N, F), got ", x.sizes());
  auto [q, params] = quantize_finite(x.view({x.size(0), x.size(1), 1, 1}), {1, 1}, levels, 0, isa, x.sizes());
  const double* pr = params.data_ptr<double>();
  return call_onednn(qlinear_op(),
                     {q.view({x.size(0), x.size(1)}), pr[0], static_cast<int64_t>(pr[1]), packed, w_scale, w_zero,
                      bias, 1.0, int64_t{0}, std::optional<at::ScalarType>(at::kFloat),
                      std::string(relu ? "relu" : "none"), c10::List<std::optional<at::Scalar>>(), std::string("")});
}

// The max-pool fused into a direct convolution d (DirectConv, DirectConvF32), from the op's `pool` = (kernel,
// stride, padding), or none for []: d's pool fields and pooled size POH x POW of its output OH x OW, checked to fit
// before anything divides by the stride.
template <class Conv>
void set_fused_pool(Conv& d, at::IntArrayRef pool, const char* op) {
  if (pool.empty()) return;
  d.pk = pool[0];
  d.ps = pool[1];
  d.pp = pool[2];
  TORCH_CHECK(d.pk > 0 && d.pk <= 16 && d.ps > 0 && d.pp >= 0 && 2 * d.pp <= d.pk && d.OH + 2 * d.pp >= d.pk &&
                  d.OW + 2 * d.pp >= d.pk,
              "lsqbq: ", op, " pool ", pool, " does not fit the output ", d.OH, "x", d.OW);
  d.POH = (d.OH + 2 * d.pp - d.pk) / d.ps + 1;
  d.POW = (d.OW + 2 * d.pp - d.pk) / d.ps + 1;
}

// The int8 float parts' direct convolution (Int8Conv2d on an input of few channels, the RGB stem, and 1x1
// convolutions): uint8 activations of the grid of `step` of x (quantize_finite), padded with their zero point, then
// direct_conv (direct_conv.h) with the max-pool `pool` = (kernel, stride, padding) fused, or none for []; float32
// NHWC (channels_last) out, equal to int8_conv2d followed by the max-pool.
at::Tensor int8_direct_conv2d_cpu(const at::Tensor& x, const at::Tensor& w_packed, const at::Tensor& w_sum,
                                  const at::Tensor& w_scale, const std::optional<at::Tensor>& bias, int64_t levels,
                                  at::IntArrayRef step, at::IntArrayRef kernel, at::IntArrayRef stride,
                                  at::IntArrayRef padding, bool relu, at::IntArrayRef pool, int64_t isa,
                                  bool fold_scales) {
  TORCH_CHECK(direct_conv_supported(), "lsqbq: int8_direct_conv2d needs a CPU with AVX-512 VNNI");
  TORCH_CHECK(x.dim() == 4, "lsqbq: int8_direct_conv2d needs a (B, C, H, W) input, got ", x.sizes());
  TORCH_CHECK(kernel.size() == 2 && stride.size() == 2 && padding.size() == 2 && (pool.empty() || pool.size() == 3),
              "lsqbq: int8_direct_conv2d needs 2 kernel sizes, strides and paddings and a pool of 0 or 3 ints");
  const int64_t N = w_sum.numel(), C = x.size(1);
  DirectConv d;
  d.B = x.size(0);
  d.C = C;
  d.N = N;
  d.KH = kernel[0];
  d.KW = kernel[1];
  d.sh = stride[0];
  d.sw_ = stride[1];
  TORCH_CHECK(w_packed.scalar_type() == at::kChar && w_packed.is_contiguous() &&
                  w_packed.numel() == (N + 15) / 16 * 16 * d.KH * d.dwords() * 4,
              "lsqbq: int8_direct_conv2d weights do not match ", N, " outputs of ", C, " x ", kernel, " taps");
  TORCH_CHECK(w_sum.scalar_type() == at::kInt && w_scale.scalar_type() == at::kFloat && w_scale.numel() == N &&
                  (!bias || (bias->scalar_type() == at::kFloat && bias->numel() == N)),
              "lsqbq: int8_direct_conv2d needs int32 weight sums and float32 scales and bias of ", N, " channels");
  TORCH_CHECK(step.size() == 2 && step[0] > 0 && step[1] > 0, "lsqbq: int8_direct_conv2d needs 2 positive steps, got ",
              step);
  const int64_t H = (x.size(2) + step[0] - 1) / step[0], W = (x.size(3) + step[1] - 1) / step[1];  // the grid
  d.Hp = H + 2 * padding[0];
  d.Wp = W + 2 * padding[1];
  TORCH_CHECK(d.KH > 0 && d.KW > 0 && d.sh > 0 && d.sw_ > 0 && d.Hp >= d.KH && d.Wp >= d.KW,
              "lsqbq: int8_direct_conv2d input ", x.sizes(), " with padding ", padding, " is smaller than the kernel ",
              kernel, " (or a stride is not positive)");
  d.OH = (d.Hp - d.KH) / d.sh + 1;
  d.OW = (d.Wp - d.KW) / d.sw_ + 1;
  set_fused_pool(d, pool, "int8_direct_conv2d");
  auto [q, params] = quantize_finite(x.contiguous(at::MemoryFormat::ChannelsLast), step, levels, 0, isa,
                                     x.sizes());
  const double* pr = params.data_ptr<double>();
  d.sx = static_cast<float>(pr[0]);
  d.z = static_cast<int32_t>(pr[1]);
  at::Tensor padded = q;  // read in place where there is no padding and no dword reads past a kernel row
  if (padding[0] || padding[1] || d.KW * C % 4) {
    // the padded activations, the zero point in the padding, and the few bytes a last dword reads past the end
    padded = at::empty({d.B * d.Hp * d.Wp * C + 4}, q.options().memory_format(at::MemoryFormat::Contiguous));
    uint8_t* pq = padded.data_ptr<uint8_t>();
    std::memset(pq, d.z, padded.numel());
    const uint8_t* src = q.data_ptr<uint8_t>();
    for (int64_t b = 0; b < d.B; ++b)
      for (int64_t h = 0; h < H; ++h)
        std::memcpy(pq + ((b * d.Hp + h + padding[0]) * d.Wp + padding[1]) * C, src + (b * H + h) * W * C, W * C);
  }
  d.q = padded.data_ptr<uint8_t>();
  d.w = w_packed.data_ptr<int8_t>();
  auto wsum = w_sum.contiguous();
  auto wscale = w_scale.contiguous();
  d.wsum = wsum.data_ptr<int32_t>();
  d.sw = wscale.data_ptr<float>();
  std::vector<float> folded;
  if (fold_scales) {  // (float) acc * (sx * sw[n]) + bias[n]: the kernel's ((float) acc * 1) * sw'[n] + bias[n]
    folded.resize(N);
    for (int64_t n = 0; n < N; ++n) folded[n] = d.sx * d.sw[n];  // float32 products, one rounding each
    d.sw = folded.data();
    d.sx = 1.f;  // multiplying by 1 is exact
  }
  at::Tensor b_;
  if (bias) {
    b_ = bias->contiguous();
    d.bias = b_.data_ptr<float>();
  }
  d.relu = relu;
  auto out = at::empty({d.B, N, d.pk ? d.POH : d.OH, d.pk ? d.POW : d.OW},
                       x.options().dtype(at::kFloat).memory_format(at::MemoryFormat::ChannelsLast));
  d.out = out.data_ptr<float>();
  d.threads = torch_threads();
  direct_conv(d);
  return out;
}

// The fp32 float parts' direct convolution of few taps (FoldedConv2d; core: direct_conv_f32.h): x channels_last
// float32 (B, C, H, W), weights (KH, KW, C, Np) from packed_f32_direct_weight, bias (N) or none; y (B, N, OH, OW)
// channels_last, relu(conv(x) + bias) with the sum in the order stated there; with `pool` = (kernel, stride,
// padding) of a max-pool, relu(maxpool(conv(x) + bias)) with the pool fused, else [].
at::Tensor f32_direct_conv2d_cpu(const at::Tensor& x, const at::Tensor& w_packed, const std::optional<at::Tensor>& bias,
                                 int64_t n_out, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                                 bool relu, at::IntArrayRef pool, int64_t isa) {
  check_isa(isa);
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 4 && x.device().is_cpu(),
              "lsqbq: f32_direct_conv2d needs a float32 (B, C, H, W) CPU tensor, got ", x.sizes(), " ",
              x.scalar_type());
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), "lsqbq: f32_direct_conv2d needs channels_last input");
  TORCH_CHECK(kernel.size() == 2 && stride.size() == 2 && padding.size() == 2 && (pool.empty() || pool.size() == 3),
              "lsqbq: f32_direct_conv2d takes 2 values each of kernel, stride and padding and a pool of 0 or 3");
  DirectConvF32 d;
  d.B = x.size(0);
  d.C = x.size(1);
  d.H = x.size(2);
  d.W = x.size(3);
  d.N = n_out;
  d.KH = kernel[0];
  d.KW = kernel[1];
  d.sh = stride[0];
  d.sw = stride[1];
  d.ph = padding[0];
  d.pw = padding[1];
  TORCH_CHECK(d.N > 0 && d.KH > 0 && d.KW > 0 && d.sh > 0 && d.sw > 0 && d.ph >= 0 && d.pw >= 0,
              "lsqbq: f32_direct_conv2d needs positive outputs, kernel and stride and padding >= 0, got ", n_out, ", ",
              kernel, ", ", stride, ", ", padding);
  TORCH_CHECK(d.H + 2 * d.ph >= d.KH && d.W + 2 * d.pw >= d.KW, "lsqbq: f32_direct_conv2d input ", x.sizes(),
              " with padding ", padding, " is smaller than the kernel ", kernel);
  TORCH_CHECK(w_packed.scalar_type() == at::kFloat && w_packed.is_contiguous() &&
                  w_packed.numel() == d.KH * d.KW * d.C * d.padded_n(),
              "lsqbq: f32_direct_conv2d weights do not match ", n_out, " outputs of ", d.C, " x ", kernel, " taps");
  TORCH_CHECK(!bias || (bias->scalar_type() == at::kFloat && bias->numel() == d.N),
              "lsqbq: f32_direct_conv2d needs a float32 bias of ", n_out, " channels");
  d.OH = (d.H + 2 * d.ph - d.KH) / d.sh + 1;
  d.OW = (d.W + 2 * d.pw - d.KW) / d.sw + 1;
  set_fused_pool(d, pool, "f32_direct_conv2d");
  d.x = x.data_ptr<float>();
  d.w = w_packed.data_ptr<float>();
  at::Tensor b_;
  if (bias) {
    b_ = bias->contiguous();
    d.bias = b_.data_ptr<float>();
  }
  d.relu = relu;
  auto out = at::empty({d.B, d.N, d.pk ? d.POH : d.OH, d.pk ? d.POW : d.OW},
                       x.options().memory_format(at::MemoryFormat::ChannelsLast));
  d.out = out.data_ptr<float>();
  d.threads = torch_threads();
  direct_conv_f32(d, isa);
  return out;
}

bool direct_conv_supported_cpu() { return direct_conv_supported(); }

int64_t popcount_peak_cpu(int64_t iters, int64_t isa) {
  check_isa(isa);
  return popcount_peak(iters, isa);
}

bool isa_supported_cpu(int64_t isa) { return isa_supported(isa); }

double memory_latency_ns_cpu(int64_t bytes, int64_t loads) {
  TORCH_CHECK_VALUE(bytes >= 128 && loads >= 1, "lsqbq: memory_latency_ns needs bytes >= 128 and loads >= 1, got ",
                    bytes, " and ", loads);
  return random_load_ns(bytes, loads);
}

}  // namespace
}  // namespace lsqbq

using namespace lsqbq;

TORCH_LIBRARY_FRAGMENT(lsqbq, m) {
  m.def("pack_signs(Tensor x) -> Tensor");
  m.def("pack_activations(Tensor x, Tensor scales, float clamp, int planes, bool mask, int pad_h, int pad_w, int isa) -> Tensor");
  m.def("xnor_gemm(Tensor a, Tensor w, int n_out, int k, bool mask, int isa) -> Tensor");
  m.def("xnor_gemm_scaled(Tensor a, Tensor w, Tensor sa, Tensor sw, Tensor? bias, int n_out, int k, bool mask, "
        "int isa) -> Tensor");
  m.def("xnor_conv2d(Tensor a, Tensor w, Tensor wtap, int n_out, int c_in, int[] hw, int[] kernel, int[] stride, "
        "int[] padding, int[] dilation, bool mask, int isa) -> Tensor");
  m.def("xnor_conv2d_scaled(Tensor a, Tensor w, Tensor wtap, Tensor sa, Tensor sw, Tensor? bias, int n_out, "
        "int c_in, int[] hw, int[] kernel, int[] stride, int[] padding, int[] dilation, bool mask, int isa) -> Tensor");
  m.def("encode_fused(Tensor x, Tensor? in_scale, Tensor? in_shift, Tensor? x_scales, float clamp, int planes, "
        "int fit, bool mask, int pad_h, int pad_w, int isa) -> (Tensor, Tensor)");
  m.def("bitwise_conv2d(Tensor x, Tensor w, Tensor wtap, Tensor sw, Tensor? bias, Tensor? in_scale, Tensor? in_shift, "
        "Tensor? x_scales, Tensor? residual, Tensor? slope, float clamp, int planes, int fit, bool mask, int act, "
        "bool residual_first, int n_out, int c_in, int[] kernel, int[] stride, int[] padding, int[] dilation, "
        "int isa) -> Tensor");
  m.def("max_pool2d_nhwc(Tensor x, int[] kernel, int[] stride, int[] padding, bool relu, int isa) -> Tensor");
  m.def("quantize_uint8(Tensor x, int[] step, int levels, int channels, int isa) -> (Tensor, Tensor)");
  m.def("int8_conv2d(Tensor x, Tensor packed, Tensor w_scale, Tensor w_zero, Tensor? bias, int[] step, int levels, "
        "int channels, int[] stride, int[] padding, int[] dilation, int groups, bool relu, int isa) -> Tensor");
  m.def("int8_linear(Tensor x, Tensor packed, Tensor w_scale, Tensor w_zero, Tensor? bias, int levels, bool relu, "
        "int isa) -> Tensor");
  m.def("int8_direct_conv2d(Tensor x, Tensor w_packed, Tensor w_sum, Tensor w_scale, Tensor? bias, int levels, "
        "int[] step, int[] kernel, int[] stride, int[] padding, bool relu, int[] pool, int isa, "
        "bool fold_scales=False) -> Tensor");
  m.def("f32_direct_conv2d(Tensor x, Tensor w_packed, Tensor? bias, int n_out, int[] kernel, int[] stride, "
        "int[] padding, bool relu, int[] pool, int isa) -> Tensor");
  m.def("direct_conv_supported() -> bool");
  m.def("popcount_peak(int iters, int isa) -> int");
  m.def("isa_supported(int isa) -> bool");
  m.def("memory_latency_ns(int bytes, int loads) -> float");
}

// No tensor arguments, hence no device to dispatch on: one kernel for every dispatch key.
TORCH_LIBRARY_IMPL(lsqbq, CompositeExplicitAutograd, m) {
  m.impl("popcount_peak", &popcount_peak_cpu);
  m.impl("memory_latency_ns", &memory_latency_ns_cpu);
  m.impl("isa_supported", &isa_supported_cpu);
  m.impl("direct_conv_supported", &direct_conv_supported_cpu);
}

// Autograd key of the kernel ops: their outputs (sign words, integer dot products, inference outputs) have no
// gradient, so the kernel runs below autograd and its outputs carry no grad_fn, as if marked non-differentiable.
// In C++ rather than a Python autograd formula, which cost about 14 us per call (most of a small layer at batch 1).
void below_autograd(const c10::OperatorHandle& op, c10::DispatchKeySet ks, torch::jit::Stack* stack) {
  at::AutoDispatchBelowADInplaceOrView guard;
  op.redispatchBoxed(ks & c10::after_ADInplaceOrView_keyset, stack);
}

TORCH_LIBRARY_IMPL(lsqbq, Autograd, m) {
  for (const char* name : {"pack_signs", "pack_activations", "encode_fused", "bitwise_conv2d", "xnor_gemm",
                           "xnor_gemm_scaled", "xnor_conv2d", "xnor_conv2d_scaled", "max_pool2d_nhwc",
                           "quantize_uint8", "int8_conv2d", "int8_linear", "int8_direct_conv2d",
                           "f32_direct_conv2d"})
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&below_autograd>());
}

TORCH_LIBRARY_IMPL(lsqbq, CPU, m) {
  m.impl("pack_signs", &pack_signs_cpu);
  m.impl("pack_activations", &pack_activations_cpu);
  m.impl("encode_fused", &encode_fused_cpu);
  m.impl("bitwise_conv2d", &bitwise_conv2d_cpu);
  m.impl("xnor_gemm", &xnor_gemm_cpu);
  m.impl("xnor_gemm_scaled", &xnor_gemm_scaled_cpu);
  m.impl("xnor_conv2d", &xnor_conv2d_cpu);
  m.impl("xnor_conv2d_scaled", &xnor_conv2d_scaled_cpu);
  m.impl("max_pool2d_nhwc", &max_pool2d_nhwc_cpu);
  m.impl("quantize_uint8", &quantize_uint8_cpu);
  m.impl("int8_conv2d", &int8_conv2d_cpu);
  m.impl("int8_linear", &int8_linear_cpu);
  m.impl("int8_direct_conv2d", &int8_direct_conv2d_cpu);
  m.impl("f32_direct_conv2d", &f32_direct_conv2d_cpu);
}

// The int8 ops also take oneDNN's packed weights (an MkldnnCPU tensor), whose dispatch key wins over the CPU one.
TORCH_LIBRARY_IMPL(lsqbq, MkldnnCPU, m) {
  m.impl("int8_conv2d", &int8_conv2d_cpu);
  m.impl("int8_linear", &int8_linear_cpu);
}
