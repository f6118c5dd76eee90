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

#include <algorithm>
#include <cstdint>
#include <memory>

#include "pool.h"

namespace lsqbq {

struct PoolShape {
  int64_t B, H, W, C, KH, KW, sh, sw, ph, pw, OH, OW;
};

// y (B, OH, OW, C) from x (B, H, W, C), both dense NHWC; rows (b, oh) split over up to `threads` threads.
void max_pool_nhwc(const float* x, float* y, const PoolShape& s, bool relu, int64_t isa, int64_t threads);

// The columns of a pool: input rows of W pixels x C floats, windows [ow sw - pw, ow sw - pw + KW) within [0, W),
// OW outputs.
struct PoolColumns {
  int64_t W, C, KW, sw, pw, OW;
};

// One output row from the nr >= 1 input rows of its windows (any order: the maximum is commutative):
//   y[ow, c] = relu?( max over i < nr and the window's columns w of rows[i][w C + c] ),   ow = 0 .. OW - 1.
void max_pool_row(const float* const* rows, int64_t nr, float* y, const PoolColumns& s, bool relu, int64_t isa);

// Pooled rows [p0, p1) of one image whose pool input is made on the fly, row by row, and never reaches memory:
// make_row(h, dst) writes input row h (0 <= h < H, W C floats) to dst, a slot of `ring` (pk rows of W C floats,
// row h in slot h mod pk); each row is made once, in increasing h, and pooled row p goes to out + (p - p0) OW C as
// soon as its last input row is made. Rows pool with kernel pk, stride ps, padding pp (2 pp <= pk, at most 16).
template <class MakeRow>
void pooled_band(MakeRow&& make_row, int64_t H, int64_t pk, int64_t ps, int64_t pp, const PoolColumns& s, int64_t p0,
                 int64_t p1, float* ring, float* out, bool relu, int64_t isa) {
  const float* rows[16];
  const int64_t row = s.W * s.C;
  int64_t next = p0 * ps - pp < 0 ? 0 : p0 * ps - pp;  // the next input row to make
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t h0 = p * ps - pp < 0 ? 0 : p * ps - pp, h1 = p * ps - pp + pk < H ? p * ps - pp + pk : H;
    if (next < h0) next = h0;
    for (; next < h1; ++next) make_row(next, ring + (next % pk) * row);
    for (int64_t h = h0; h < h1; ++h) rows[h - h0] = ring + (h % pk) * row;
    max_pool_row(rows, h1 - h0, out + (p - p0) * s.OW * s.C, s, relu, isa);
  }
}

// Bands of an image's `rows` output rows for a call over B images on `threads` threads: one band per image on one
// thread (no input row of a pool made twice); else about two bands per thread, a pool's overlapping input rows
// then made by both bands they border.
inline int64_t row_bands(int64_t rows, int64_t B, int64_t threads) {
  return threads <= 1 ? 1 : std::min<int64_t>(rows, (2 * threads + B - 1) / B);
}

// out (B, POH, POW, C): the pool of B images whose input rows are made on the fly, make_row(b, h, dst), by bands
// of pooled rows (row_bands, pooled_band: one ring per task) on up to `threads` threads, or on the calling thread
// when `work` (the caller's units) is below `min_work` (pool.h parallel).
template <class MakeRow>
void pooled_images(MakeRow&& make_row, int64_t B, int64_t H, int64_t pk, int64_t ps, int64_t pp, int64_t POH,
                   const PoolColumns& s, float* out, bool relu, int64_t isa, int64_t work, int64_t min_work,
                   int64_t threads) {
  const int64_t bands = row_bands(POH, B, threads), per_band = (POH + bands - 1) / bands;
  parallel(B * bands, 1, work, min_work, threads, [&](int64_t begin, int64_t end) {
    std::unique_ptr<float[]> ring(new float[pk * s.W * s.C]);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / bands, p0 = (task % bands) * per_band, p1 = std::min(POH, p0 + per_band);
      pooled_band([&](int64_t h, float* row) { make_row(b, h, row); }, H, pk, ps, pp, s, p0, p1, ring.get(),
                  out + (b * POH + p0) * s.OW * s.C, relu, isa);
    }
  });
}

}  // namespace lsqbq
