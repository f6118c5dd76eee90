// Max-pool of an NHWC float32 tensor with the ReLU that follows it in a ResNet stem, in one pass (no torch headers).
//
//   y[b, oh, ow, c] = relu?( max_{(ih, iw) in window(oh, ow) within the image} x[b, ih, iw, c] ),
//   window(oh, ow) = [oh sh - ph, oh sh - ph + KH) x [ow sw - pw, ow sw - pw + KW)   (padding adds no value).
//
// NaN propagates as in torch's pool: an output is NaN when its window holds one. The maximum is exact, so every
// instruction-set path returns the same values as torch.max_pool2d (only the sign of a zero may differ). The
// caller guarantees that no window is empty (2 p < k, no ceil mode) and that the output geometry is
// OH = (H + 2 ph - KH) / sh + 1, OW likewise.
#pragma once

#include <cstdint>

namespace lsqbq {

struct PoolShape {
  int64_t B, H, W, C, KH, KW, sh, sw, ph, pw, OH, OW;
};

// y (B, OH, OW, C) from x (B, H, W, C), both dense NHWC; rows (b, oh) split over up to `threads` threads.
void max_pool_nhwc(const float* x, float* y, const PoolShape& s, bool relu, int64_t isa, int64_t threads);

}  // namespace lsqbq
