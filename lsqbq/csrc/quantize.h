// uint8 activations for the int8 float parts (lsqbq/kernels/float_parts.py): the range of an NHWC float32 tensor
// and its asymmetric quantization, in two passes (no torch headers).
//
// Grid: the pixels (b, i sh, j sw) for i < ceil(H / sh), j < ceil(W / sw) (a strided 1x1 convolution reads only
// those), all C channels of each.
//   range:    lo = min over the grid, hi = max (NaN when the grid holds one);
//   quantize: q = (uint8) min(max(x * inv + add, 0), levels)   in float32, each step rounded as torch's
//             mul, add_, clamp_ and .to(torch.uint8) round it (truncation; no fused multiply-add), so the result
//             equals the torch expression of quantize_uint8 element for element.
#pragma once

#include <cstdint>

namespace lsqbq {

struct Grid {
  int64_t B, H, W, C, sh, sw, OH, OW;
  int64_t CO;  // channels of q, >= C: channels C .. CO - 1 hold the quantized 0 (a zero channel appended to x)
};

// (lo, hi) over the grid of x (B, H, W, C); NaN in either when the grid holds a NaN.
void range_nhwc(const float* x, const Grid& g, float& lo, float& hi, int64_t isa);

// q (B, OH, OW, CO) from the grid of x; rows (b, i) split over up to `threads` threads.
void quantize_u8_nhwc(const float* x, uint8_t* q, const Grid& g, float inv, float add, float levels, int64_t isa,
                      int64_t threads);

}  // namespace lsqbq
