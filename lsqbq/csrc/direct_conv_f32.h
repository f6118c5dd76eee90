// Direct float32 convolution for few taps per output (the one-channel and RGB stems of small networks, 1x1
// convolutions of few input channels), its bias and ReLU fused (no torch headers).
//
//   acc[b, oh, ow, n] = sum over (kh, kw, c), taps inside the image only, in this order, of
//                       x[b, oh sh - ph + kh, ow sw - pw + kw, c] * w[n, c, kh, kw]
//                       (from 0, one fused multiply-add per tap: one rounding each),
//   y = acc + bias[n]   (after the sum),   y = relu?(y)   (NaN stays NaN);
// with a pool, out[b, ph, pw, n] = relu?(max of y over the window) (maxpool.h: floor mode, padding adds no value,
// NaN propagates): the maximum of the same floats, so it equals the unfused pool's output. The conv rows live in
// a ring of pk rows per task and never reach memory: the 7x7 ImageNet stem's output is 3.2 MB per image, written
// and read again by an unfused pool.
//
// Every instruction-set path sums in this order, so they agree bit for bit. oneDNN's order depends on the kernel it
// picks for a shape and its strides ((kw, kh) in some), so torch's convolution can differ in the last bits.
// Why: with C KH KW taps small (9 for a 3x3 kernel over one channel), oneDNN's convolution is far below the
// machine's multiply-add rate (LeNet-5's 5x5 conv1 of 20 filters at batch 256 on one Zen 4 core: 5.0 ms, 2.6 here).
// Here each output pixel's N channels are N/16 vectors (N/8 on AVX2), a block of pixels shares every weight load,
// and each input value is one broadcast.
//
// Layouts: x (B, H, W, C) and y (B, OH, OW, N) dense NHWC; weights (KH, KW, C, Np), Np = N rounded up to 16, the
// padded channels zero (packed_f32_direct_weight in lsqbq/kernels/float_parts.py).
#pragma once

#include <cstdint>

namespace lsqbq {

struct DirectConvF32 {
  const float* x = nullptr;
  int64_t B = 0, H = 0, W = 0, C = 0;
  const float* w = nullptr;     // (KH, KW, C, Np)
  const float* bias = nullptr;  // (N) or null
  int64_t N = 0, KH = 1, KW = 1, sh = 1, sw = 1, ph = 0, pw = 0, OH = 0, OW = 0;
  bool relu = false;
  int64_t pk = 0, ps = 1, pp = 0, POH = 0, POW = 0;  // max-pool (pk = 0: none; at most 16), floor mode
  float* out = nullptr;  // (B, POH, POW, N) with a pool, else (B, OH, OW, N)
  int64_t threads = 1;
  int64_t padded_n() const { return (N + 15) / 16 * 16; }
};

// out of d, on the instruction path `isa` (isa.h: kAvx512 or kAvx2, else the portable code, which rounds the
// same); rows (b, oh) split over up to d.threads threads (with a pool: bands of pooled rows, maxpool.h
// pooled_band).
void direct_conv_f32(const DirectConvF32& d, int64_t isa);

}  // namespace lsqbq
