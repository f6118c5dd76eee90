// Direct uint8 x int8 convolution with a fused max-pool on AVX-512 VNNI (direct_conv.h): tiles of R output pixels
// of one row x 16 V output channels, one vpdpbusd per (pixel, 16 channels, dword of a kernel row).
#include "direct_conv.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "isa.h"
#include "maxpool.h"
#include "pool.h"

namespace lsqbq {

bool direct_conv_supported() {
#if LSQBQ_X86
  static const bool ok = avx512_supported() && __builtin_cpu_supports("avx512vnni");
  return ok;
#else
  return false;
#endif
}

#if LSQBQ_X86
#define LSQBQ_VNNI __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")))
namespace {

constexpr int kTile = 6;  // output pixels per tile: 6 x 4 accumulators + 4 weight registers + broadcasts

// The dword steps of an output pixel. Where a kernel row's KW C bytes are not a multiple of 4 (tb = KW C mod 4
// bytes left after `full` whole dwords), the packed layout's last dword of every row reads tb bytes of the row and
// 4 - tb of the next pixel, against zero weights: KH steps for KH tb bytes. Gathered, the tails of all KH rows take
// td = ceil(KH tb / 4) steps (the 7x7 RGB stem: 21 bytes a row, 7 x 5 + 2 = 37 steps instead of 7 x 6 = 42), which
// pays where td < KH. The gathers, made per call: the tail bytes of every input row per output column, rows
// adjacent (B, OW, Hp, tb), so a pixel's KH tails are one run of KH tb bytes; and per panel the tail weights,
// (td, channels, 4) with byte 4 u + j holding row kh = (4 u + j) / tb, byte (4 u + j) % tb of its last packed
// dword (zero past KH tb).
struct Plan : DirectConv {
  int64_t packed_dwords = 0;  // D of the packed layout (direct_conv.h)
  int64_t row_dwords = 0;     // dwords read in place per kernel row: D, or `full` with tails
  int64_t tb = 0, td = 0;     // tail bytes per kernel row and tail dwords (0: no tails)
  const uint8_t* tail_act = nullptr;
  const int8_t* tail_w = nullptr;
};

// One dword step of R pixels x 16 V channels: acc[r][v] += the 4 bytes at a + r stride (broadcast) . the 4 weight
// bytes of each channel at wk.
template <int R, int V>
LSQBQ_VNNI inline __attribute__((always_inline)) void dword_step(__m512i (&acc)[R][V], const int8_t* wk,
                                                                  const uint8_t* a, int64_t stride) {
  __m512i wv[V];
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) wv[v] = _mm512_loadu_si512(wk + 64 * v);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    int32_t x;
    std::memcpy(&x, a + r * stride, 4);
    const __m512i xv = _mm512_set1_epi32(x);
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], xv, wv[v]);
  }
}

// Output pixels ow0 .. ow0 + R - 1 of conv row (b, oh), channels n0 .. n0 + 16 V - 1 of the panel at wp, into
// y (row of OW pixels x N floats).
template <int R, int V>
LSQBQ_VNNI void tile(const Plan& d, int64_t b, int64_t oh, int64_t ow0, const int8_t* wp, const int8_t* twp,
                     int64_t n0, float* y) {
  __m512i acc[R][V];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_si512();
  const int64_t D = d.row_dwords, step = d.sw_ * d.C;
  for (int64_t kh = 0; kh < d.KH; ++kh) {
    const uint8_t* row = d.q + ((b * d.Hp + oh * d.sh + kh) * d.Wp + ow0 * d.sw_) * d.C;
    const int8_t* wk = wp + kh * d.packed_dwords * V * 64;
    for (int64_t t = 0; t < D; ++t, wk += V * 64) dword_step<R, V>(acc, wk, row + 4 * t, step);
  }
  if (d.td) {  // the gathered row tails (Plan)
    const uint8_t* tails = d.tail_act + ((b * d.OW + ow0) * d.Hp + oh * d.sh) * d.tb;
    const int64_t tstep = d.Hp * d.tb;
    const int8_t* wk = twp;
    for (int64_t u = 0; u < d.td; ++u, wk += V * 64) dword_step<R, V>(acc, wk, tails + 4 * u, tstep);
  }
  const __m512 sx = _mm512_set1_ps(d.sx), zero = _mm512_setzero_ps();
  const __m512i z = _mm512_set1_epi32(d.z);
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) {
    const int64_t n = n0 + 16 * v;
    const __mmask16 lm = first_lanes(d.N - n);
    const __m512i comp = _mm512_mullo_epi32(z, _mm512_maskz_loadu_epi32(lm, d.wsum + n));
    const __m512 s = _mm512_maskz_loadu_ps(lm, d.sw + n);
    const __m512 bias = d.bias ? _mm512_maskz_loadu_ps(lm, d.bias + n) : zero;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][v], comp));
      f = _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(f, sx), s), bias);
      if (d.relu) f = _mm512_max_ps(f, zero);
      _mm512_mask_storeu_ps(y + (ow0 + r) * d.N + n, lm, f);
    }
  }
}

template <int V>
LSQBQ_VNNI void tile_rows(const Plan& d, int64_t b, int64_t oh, int64_t ow0, int rows, const int8_t* wp,
                          const int8_t* twp, int64_t n0, float* y) {
  switch (rows) {
    case 6: return tile<6, V>(d, b, oh, ow0, wp, twp, n0, y);
    case 5: return tile<5, V>(d, b, oh, ow0, wp, twp, n0, y);
    case 4: return tile<4, V>(d, b, oh, ow0, wp, twp, n0, y);
    case 3: return tile<3, V>(d, b, oh, ow0, wp, twp, n0, y);
    case 2: return tile<2, V>(d, b, oh, ow0, wp, twp, n0, y);
    default: return tile<1, V>(d, b, oh, ow0, wp, twp, n0, y);
  }
}

// Conv row (b, oh), every output channel, into y (OW x N floats).
LSQBQ_VNNI void conv_row(const Plan& d, int64_t b, int64_t oh, float* y) {
  const int64_t panel = d.KH * d.packed_dwords * 64, tail_panel = d.td * 64;  // bytes per 16 channels of a panel
  for (int64_t ow0 = 0; ow0 < d.OW; ow0 += kTile) {
    const int rows = static_cast<int>(std::min<int64_t>(kTile, d.OW - ow0));
    for (int64_t n0 = 0; n0 < d.N; n0 += 64) {
      const int64_t vectors = std::min<int64_t>(4, (d.N - n0 + 15) / 16);
      const int8_t* wp = d.w + (n0 / 16) * panel;
      const int8_t* twp = d.tail_w + (n0 / 16) * tail_panel;
      switch (vectors) {
        case 4: tile_rows<4>(d, b, oh, ow0, rows, wp, twp, n0, y); break;
        case 3: tile_rows<3>(d, b, oh, ow0, rows, wp, twp, n0, y); break;
        case 2: tile_rows<2>(d, b, oh, ow0, rows, wp, twp, n0, y); break;
        default: tile_rows<1>(d, b, oh, ow0, rows, wp, twp, n0, y); break;
      }
    }
  }
}

// The plan of d (Plan): its step counts and, where tails pay, the two gathers into tail_act and tail_w.
Plan make_plan(const DirectConv& dc, std::vector<uint8_t>& tail_act, std::vector<int8_t>& tail_w) {
  Plan d;
  static_cast<DirectConv&>(d) = dc;
  const int64_t row_bytes = d.KW * d.C, full = row_bytes / 4, tb = row_bytes % 4, td = (d.KH * tb + 3) / 4;
  d.packed_dwords = d.row_dwords = dc.dwords();
  if (tb == 0 || td >= d.KH) return d;
  d.row_dwords = full;
  d.tb = tb;
  d.td = td;
  tail_act.assign(d.B * d.OW * d.Hp * tb + 4, 0);  // + 4: a last dword may read past the last run
  const int64_t moves = d.B * d.Hp * d.OW * tb;  // one byte each; a batch of 16 stems: 0.4 M, split
  // Written in order, one output column (b, ow) at a time: its Hp rows' tails read one byte run from each of Hp
  // input rows, lines that the next columns read again (Hp lines: 15 KB for the 224x224 stem, in L1). Input rows
  // outer instead wrote every byte to another line (a stride of Hp tb bytes): 0.9 % of the int8 ResNet-18 at batch 1.
  parallel(d.B * d.OW, 16, moves, int64_t(1) << 17, d.threads, [&](int64_t begin, int64_t end) {
    for (int64_t bw = begin; bw < end; ++bw) {  // output column bw = b OW + ow
      const int64_t b = bw / d.OW, ow = bw % d.OW;
      const uint8_t* col = d.q + (b * d.Hp * d.Wp + ow * d.sw_) * d.C + 4 * full;
      uint8_t* out = tail_act.data() + bw * d.Hp * tb;
      for (int64_t r = 0; r < d.Hp; ++r)
        for (int64_t t = 0; t < tb; ++t) out[r * tb + t] = col[r * d.Wp * d.C + t];
    }
  });
  const int64_t Npad = (d.N + 15) / 16 * 16;
  tail_w.assign(Npad / 16 * td * 64, 0);
  for (int64_t n0 = 0; n0 < Npad; n0 += 64) {
    const int64_t chans = std::min<int64_t>(64, Npad - n0);
    const int8_t* panel = d.w + (n0 / 16) * d.KH * d.packed_dwords * 64;  // (KH, full + 1, chans, 4)
    int8_t* out = tail_w.data() + (n0 / 16) * td * 64;                     // (td, chans, 4)
    for (int64_t u = 0; u < td; ++u)
      for (int64_t ch = 0; ch < chans; ++ch)
        for (int64_t j = 0; j < 4 && 4 * u + j < d.KH * tb; ++j) {
          const int64_t kh = (4 * u + j) / tb, t = (4 * u + j) % tb;
          out[(u * chans + ch) * 4 + j] = panel[((kh * (full + 1) + full) * chans + ch) * 4 + t];
        }
  }
  d.tail_act = tail_act.data();
  d.tail_w = tail_w.data();
  return d;
}
}  // namespace

void direct_conv(const DirectConv& dc) {
  if (!direct_conv_supported()) throw std::logic_error("lsqbq: direct_conv needs AVX-512 VNNI");
  std::vector<uint8_t> tail_act;
  std::vector<int8_t> tail_w;
  const Plan d = make_plan(dc, tail_act, tail_w);
  const int64_t work = d.B * d.OH * d.OW * d.N * (d.KH * d.row_dwords + d.td);
  if (d.pk) {  // ReLU (with the conv rows) before the pool equals ReLU after it
    pooled_images([&](int64_t b, int64_t h, float* row) { conv_row(d, b, h, row); }, d.B, d.OH, d.pk, d.ps, d.pp,
                  d.POH, PoolColumns{d.OW, d.N, d.pk, d.ps, d.pp, d.POW}, d.out, false, kAvx512, work,
                  int64_t(1) << 20, d.threads);
    return;
  }
  // Bands of output rows, as a pool's (row_bands)
  const int64_t bands = row_bands(d.OH, d.B, d.threads), per_band = (d.OH + bands - 1) / bands;
  parallel(d.B * bands, 1, work, int64_t(1) << 20, d.threads, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / bands, r0 = (task % bands) * per_band, r1 = std::min(d.OH, r0 + per_band);
      for (int64_t oh = r0; oh < r1; ++oh) conv_row(d, b, oh, d.out + (b * d.OH + oh) * d.OW * d.N);
    }
  });
}

#else  // not x86-64: never called (direct_conv_supported() is false)

void direct_conv(const DirectConv&) { throw std::logic_error("lsqbq: direct_conv needs AVX-512 VNNI"); }

#endif
}  // namespace lsqbq
