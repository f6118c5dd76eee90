// The portable activation encode and the encode passes (given scales, greedy fit), on any path.
#include <vector>

#include "encode.h"
#include "pool.h"

namespace lsqbq {

namespace {
inline float prologue(const Enc& E, float y, int64_t c) {
  if (E.in_a) y = std::fma(y, E.in_a[c], E.in_b[c]);
  if (E.do_clamp) y = std::min(std::max(y, -E.cv), E.cv);
  return y;
}

void enc_row_isa(const Enc& E, int64_t b, int64_t h, const float* v, int first, int last, double* lanes,
                 int64_t isa) {
  if (isa == kAvx512) return enc_row_avx512(E, b, h, v, first, last, lanes);
  if (isa == kAvx2) return enc_row_avx2(E, b, h, v, first, last, lanes);
  if (isa == kNeon) return enc_row_neon(E, b, h, v, first, last, lanes);
  enc_row_portable(E, b, h, v, first, last, lanes);
}
}  // namespace

void enc_row_portable(const Enc& E, int64_t b, int64_t h, const float* v, int first, int last, double* lanes) {
  const float* src = E.row_src(b, h);
  uint64_t* d = E.row_dst(b, h);
  for (int64_t w = 0; w < E.W; ++w) {
    const float* px = src + w * E.C;
    for (int64_t q = 0; q < E.Cw; ++q) {
      uint64_t words[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      const int64_t cn = std::min<int64_t>(64, E.C - q * 64);
      for (int64_t c = 0; c < cn; ++c) {
        const int64_t ch = q * 64 + c;
        const float y = prologue(E, px[ch], ch);
        float approx = 0.f, r = y;
        for (int i = 0; i <= last; ++i) {
          r = y - approx;
          const bool neg = !(r >= 0.f);
          if (neg && i >= first) words[i] |= uint64_t(1) << c;
          if (i < last) approx = approx + (neg ? -v[i] : v[i]);
        }
        if (lanes) lanes[ch & 15] += static_cast<double>(std::fabs(r));
      }
      store_words(words, first, last, E.mask, cn, d + w * E.Cw + q, E.plane_stride);
    }
  }
}

void prologue_row_portable(const Enc& E, int64_t b, int64_t h, float* out) {
  const float* src = E.row_src(b, h);
  for (int64_t e = 0; e < E.W * E.C; ++e) out[e] = prologue(E, src[e], e % E.C);
}

namespace {
// Image rows per task: at least ~16k elements; activations under kMinEncodeWork elements stay on one thread.
inline int64_t row_grain(const Enc& E) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, E.W * E.C)); }
constexpr int64_t kMinEncodeWork = int64_t(1) << 16;
}  // namespace

void encode_given(const Enc& E, int64_t planes, const float* sc, int64_t sstride, int64_t isa) {
  const int64_t rows = E.B * E.H;
  parallel(rows, row_grain(E), rows * E.W * E.C, kMinEncodeWork, E.threads, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh)
      enc_row_isa(E, bh / E.H, bh % E.H, sc + (bh / E.H) * sstride, 0, static_cast<int>(planes - 1), nullptr, isa);
  });
}

void encode_greedy(const Enc& E, int64_t planes, float* v, int64_t isa) {
  const int64_t rows = E.B * E.H;
  const double n = static_cast<double>(E.C * E.H * E.W);
  std::vector<double> partial(rows);
  for (int64_t i = 0; i < planes; ++i) {
    const bool pairs = i == 0 && !E.mask && isa == kAvx512;  // two rows' sums side by side (encode.h)
    parallel(rows, row_grain(E), rows * E.W * E.C, kMinEncodeWork, E.threads, [&](int64_t begin, int64_t end) {
      for (int64_t bh = begin; bh < end; ++bh) {
        double lanes[2][16] = {};
        const int n = pairs && bh + 1 < end ? 2 : 1;
        if (n == 2)
          enc_first_pair_avx512(E, bh, lanes[0], lanes[1]);
        else
          enc_row_isa(E, bh / E.H, bh % E.H, v + (bh / E.H) * planes, static_cast<int>(i), static_cast<int>(i),
                      lanes[0], isa);
        for (int r = 0; r < n; ++r) {
          double s = 0.0;
          for (int l = 0; l < 16; ++l) s += lanes[r][l];
          partial[bh + r] = s;
        }
        bh += n - 1;
      }
    });
    for (int64_t b = 0; b < E.B; ++b) {
      double total = 0.0;
      for (int64_t h = 0; h < E.H; ++h) total += partial[b * E.H + h];
      v[b * planes + i] = static_cast<float>(total / n);
    }
  }
}

}  // namespace lsqbq
