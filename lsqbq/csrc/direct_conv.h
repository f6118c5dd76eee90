// Direct uint8 x int8 convolution for inputs of few channels (an RGB stem), with the max-pool after it fused in
// (no torch headers). AVX-512 VNNI only: callers check direct_conv_supported() first.
//
// Input: uint8 activations q with zero point z, NHWC and already padded, (B, Hp, Wp, C), filled with z in the
// padding and followed by at least 4 readable bytes. A kernel row of the NHWC input is KW C contiguous bytes; it is
// read as D = ceil(KW C / 4) dwords (the bytes past KW C, of the next pixel, meet zero weights), so a 7x7 kernel on
// 3 channels takes 7 * 6 = 42 dword steps per output pixel instead of the 49 of a 4-channel layout; where it pays,
// the rows' last KW C mod 4 bytes are gathered per call into fewer dwords (7 * 5 + 2 = 37 steps for that kernel;
// direct_conv_vnni.cpp, Plan). The packed weights keep the layout below either way.
//   acc[m, n]  = sum_k q[m, k] w[n, k] - z sum_k w[n, k]         (int32, exact: the sum over (q - z) w)
//   y[m, n]    = ((float) acc * sx) * sw[n] + bias[n]            (three roundings, in this order, as oneDNN's VNNI
//                                                                 int8 convolution rounds, so the outputs equal; its
//                                                                 AMX one rounds (float) acc * (sx * sw[n]) + bias[n],
//                                                                 which the op computes by passing sx * sw and 1)
//   y          = max(y, 0) with relu;
// then, with a pool, out[b, ph, pw, n] = max of y over the window (floor mode, padding never chosen): the maximum
// of the same floats, so the result equals the unfused max-pool's. The conv rows live in a ring of pk rows per
// task and never reach memory.
//
// Weights: packed_direct_weight (lsqbq/kernels/float_parts.py) -- per panel of up to 64 output channels,
// (KH, D, Vp * 16, 4) int8 with Vp = min(4, vectors left), output channels padded to a multiple of 16 with zeros.
#pragma once

#include <cstdint>

namespace lsqbq {

struct DirectConv {
  const uint8_t* q = nullptr;  // (B, Hp, Wp, C) padded uint8 activations
  int64_t B = 0, Hp = 0, Wp = 0, C = 0;
  const int8_t* w = nullptr;   // packed weights (header)
  const int32_t* wsum = nullptr;  // (N) sum_k w[n, k]
  const float* sw = nullptr;      // (N) weight scales
  const float* bias = nullptr;    // (N) or null
  float sx = 1.f;                 // activation scale
  int32_t z = 0;                  // activation zero point
  int64_t N = 0, KH = 1, KW = 1, sh = 1, sw_ = 1, OH = 0, OW = 0;
  bool relu = false;
  int64_t pk = 0, ps = 1, pp = 0, POH = 0, POW = 0;  // max-pool (pk = 0: none; at most 16), floor mode
  float* out = nullptr;  // (B, POH, POW, N) with a pool, else (B, OH, OW, N)
  int64_t threads = 1;
  int64_t dwords() const { return (KW * C + 3) / 4; }
};

// The CPU has AVX-512 F, BW, DQ, VL and VNNI.
bool direct_conv_supported();

// Runs the convolution (and pool) of d; throws std::logic_error where direct_conv_supported() is false.
void direct_conv(const DirectConv& d);

}  // namespace lsqbq
