// One binary convolution / GEMM call of the XNOR engine: the Job (raw pointers and shapes, no torch headers), the
// micro-kernel tiles of each instruction-set path and the driver that runs them.
//
// Identity: for a, w in {-1,+1}^K stored as sign bits (bit = 1 <=> value -1),
//     <a, w> = K - 2 * popcount(a XOR w).
// Foldable k-bit values x_q = sum_i v_i b_i and w_q = sum_j u_j c_j give
//     <x_q, w_q> = sum_i sum_j v_i u_j <b_i, c_j>                    (k_a * k_w binary dot products).
// Ternary activations (ls-T, x_q = v (b_1 + b_2) in {-2v, 0, 2v}) are stored as a sign plane s = b_1 and a
// non-zero mask m = [b_1 == b_2]; with t = x_q / (2v) in {-1, 0, 1},
//     <t, c> = popcount(m) - 2 * popcount((s XOR c) AND m)         (one ternary-logic op per word).
//
// Bit packing: bit (c mod 64) of word c / 64 holds channel c; bit = 1 iff NOT (x >= 0), so sign(0) = sign(-0.0)
// = +1. Tail bits beyond the channel count are 0 in activations and weights, so XOR leaves them 0.
// Activations are NHWC, packed along channels, zero words at the spatial padding: (P, B, H + 2 ph, W + 2 pw, Cw).
// A zero word is +1 in a sign plane, so 1-bit / k-bit convolutions subtract a per-tap correction
// (sum_c w_c = C - 2 popcount(w_tap)) for every tap that falls into the padding; in the ternary encoding the
// padding has mask 0 and is exactly zero without correction. Weights are panels of NB = 32 output channels:
// (P_w, N_pad / 32, T * Cw, 32), k index = tap * Cw + word, so one 512-bit load holds 8 output channels.
// Packed taps: with C <= 32 input channels a word per tap leaves most of its bits empty, so weights may come with
// the taps of a kernel row in groups of G = min(64 / C, KW) side by side instead: k word (kh, g) holds tap
// (kh, g G + i), channel c at bit i C + c (a last group may have fewer taps; the rest of its bits are 0), in
// KH * ceil(KW / G) k words ((P_w, N_pad / 32, KH * ceil(KW / G), 32); 3 instead of 9 for a 3x3 kernel on 16
// channels). The driver then packs the activation words alike once per call, word (h, w) of group size s holding
// the pixels (h, w + i dw), i < s, and the tiles run unchanged on that buffer: every popcount covers the same bits,
// so the integer results are identical.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "isa.h"

namespace lsqbq {

constexpr int64_t NB = 32;  // output channels per weight panel
constexpr int RMAX = 6;     // rows per micro-kernel tile (1 plane)

// Number of set mask bits over a row's receptive field (the length of a ternary dot product); hw: use POPCNT.
int32_t mask_count(const uint64_t* mp, const int64_t* koff, int64_t n, bool hw);

// A convolution's shape: batch, input, kernel, stride, padding, dilation and output.
struct Geometry {
  int64_t B, H, W, C, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW;
};

struct Job {
  const uint64_t* a = nullptr;  // (P_a, B, Hp, Wp, Cw)
  int64_t a_plane = 0;          // words per activation plane
  int64_t pa = 1;               // activation planes (mask mode: 2 stored = sign, mask; 1 logical)
  bool mask = false;
  int64_t T = 1, Cw = 1, KWt = 1;  // taps, words per tap, words per row (T * Cw)
  std::vector<int64_t> tap_off;    // word offset of each tap from a row's base
  const uint64_t* w = nullptr;     // (P_w, NP, KWt, NB)
  int64_t pw = 1, N = 0, NP = 0;
  const int32_t* wtap = nullptr;   // (P_w, T, NP * NB): C - 2 popcount(w_tap), for padding correction
  int64_t M = 0;                   // output rows m = (b, oh, ow)
  // Output-row geometry, evaluated per row inside the tiles (no per-call tables of size M):
  int64_t OH = 1, OW = 1, Hp = 1, Wp = 1, sh = 1, sw = 1;
  int32_t K = 0;                   // C * T: the dot-product length of a sign plane
  bool padded = false;
  std::vector<uint64_t> inv_h, inv_w;  // (OH), (OW): taps (bit t) whose input row / column is padding
  int32_t* out_i = nullptr;          // (P_a', P_w, M, N) integer dot products
  float* out_f = nullptr;            // (M, N) scaled output
  const float* sa = nullptr;         // (B, P_a') activation scales
  const float* swt = nullptr;        // (P_w, NP * NB) weight scales
  const float* bias = nullptr;       // (N)
  int64_t rows_per_sample = 1;       // OH * OW
  // Fused epilogue after the scaled sum: y (+ res if res_first), act, (+ res otherwise).
  const float* res = nullptr;        // (M, N) residual, NHWC like the output
  const float* slope = nullptr;      // PReLU slopes, (N) or (1)
  int64_t slope_step = 0;            // 1 for per-channel slopes, 0 for one shared slope
  int act = 0;                       // 0 none, 1 ReLU, 2 PReLU
  bool res_first = true;
  int64_t threads = 1;               // threads the driver may use (torch's count, chosen by the op layer)
  int64_t pa_logical() const { return mask ? 1 : pa; }

  std::vector<int64_t> koff;       // (KWt) word offset of k word (tap t, word c) from a row's base: tap_off[t] + c
  // Packed taps (header; 0: off): taps per group G; geo: the geometry the driver packs the activation words with.
  int64_t group = 0;
  Geometry geo{};
  bool hw_popcnt = false;          // the CPU has POPCNT: count mask bits with it

  // Rows m0 .. m0 + n - 1 of a tile: word offset of each receptive field (top-left tap) in a plane, taps falling
  // into the zero padding (sign planes; the mask encoding pads with mask 0 and needs no correction), dot-product
  // length (K, or the popcount of the ternary mask over the window) and sample. The rows are stepped in
  // (b, oh, ow) order from `at`, row m0's position, which is left at row m0 + n (the next tile's first row).
  struct Rows {
    int64_t base[RMAX], b[RMAX];
    uint64_t inv[RMAX];
    int32_t count[RMAX];
  };
  struct RowPos {
    int64_t b, oh, ow;
  };
  RowPos row_pos(int64_t m) const {  // (b, oh, ow) of output row m
    const int64_t b = m / rows_per_sample, r = m - b * rows_per_sample;
    return {b, r / OW, r % OW};
  }
  void rows(RowPos& at, int n, Rows& out) const {
    // the fields in locals: the stores to out would otherwise make the compiler reload them per row
    const int64_t oh_n = OH, ow_n = OW, hp = Hp, wp = Wp, cw = Cw, s_h = sh, s_w = sw;
    const bool corr = padded && !mask;
    int64_t b = at.b, oh = at.oh, ow = at.ow;
    for (int i = 0; i < n; ++i) {
      const int64_t base = ((b * hp + oh * s_h) * wp + ow * s_w) * cw;
      out.base[i] = base;
      out.b[i] = b;
      out.inv[i] = corr ? (inv_h[oh] | inv_w[ow]) : 0;
      out.count[i] = mask ? mask_count(a + a_plane + base, koff.data(), KWt, hw_popcnt) : K;
      if (++ow == ow_n) {
        ow = 0;
        if (++oh == oh_n) {
          oh = 0;
          ++b;
        }
      }
    }
    at = {b, oh, ow};
  }
};
using Rows = Job::Rows;

// Convolution geometry: input (B, C, H, W), kernel (KH, KW), stride, padding, dilation, output (OH, OW).
Geometry conv_geometry(int64_t B, int64_t C, int64_t H, int64_t W, int64_t KH, int64_t KW, int64_t sh, int64_t sw,
                       int64_t ph, int64_t pw, int64_t dh, int64_t dw);
Geometry gemm_geometry(int64_t B, int64_t K);

// The job of activation words a ((P_a, B, Hp, Wp, Cw), pa planes) against weight panels w ((pw, NP, T * Cw, 32))
// with tap sums wtap ((pw, T, NP * 32), needed for padded sign planes) on geometry g. The caller has checked the
// shapes; outputs, scales and the epilogue are set on the returned job before run().
// packed: w is in the packed-tap layout (header; needs tap_group(C, KW) >= 2).
Job make_job(const uint64_t* a, int64_t pa, const uint64_t* w, int64_t pw, int64_t NP, const int32_t* wtap,
             const Geometry& g, bool mask, bool packed = false);

// Taps per group of the packed-tap layout: min(64 / C, KW) for C < 64, else 1 (no packing).
inline int64_t tap_group(int64_t channels, int64_t kw) {
  return channels < 64 ? std::min<int64_t>(64 / channels, kw) : 1;
}
// k words per row of the packed-tap layout: KH * ceil(KW / G).
inline int64_t packed_words(int64_t channels, int64_t kh, int64_t kw) {
  const int64_t G = tap_group(channels, kw);
  return kh * ((kw + G - 1) / G);
}

// Every output tile of J on the path isa (out_i: integer dot products; out_f: the scaled float epilogue).
void run(const Job& J, int64_t isa);

// One tile: rows r0 .. r0 + rows - 1 of rw (output rows m0 ..) x the 32 channels of weight panel p, weight plane
// j, activation planes ig .. ig + pa - 1 (pa 1 or 2; mask: the ternary pair, pa 1); first: the first (i, j) term.
void tile_portable(const Job& J, const Rows& rw, int r0, int64_t m0, int rows, int64_t p, int64_t j, int64_t ig,
                   bool first, int pa, bool mask);
void tile_avx512(const Job& J, const Rows& rw, int r0, int64_t m0, int rows, int64_t p, int64_t j, int64_t ig,
                 bool first, int pa, bool mask);
void tile_avx2(const Job& J, const Rows& rw, int r0, int64_t m0, int rows, int64_t p, int64_t j, int64_t ig,
               bool first, int pa, bool mask);
void tile_neon(const Job& J, const Rows& rw, int r0, int64_t m0, int rows, int64_t p, int64_t j, int64_t ig,
               bool first, int pa, bool mask);

// Fused tail of the float epilogue on one finished tile (rows x 32 channels, still in cache):
//   y = out (+ res if res_first);  y = act(y) (ReLU: NaN stays NaN as torch.relu; PReLU: y > 0 ? y : a_n y);
//   y (+ res otherwise).
void finish_portable(const Job& J, int64_t m0, int rows, int64_t p);
void finish_avx512(const Job& J, int64_t m0, int rows, int64_t p);
void finish_avx2(const Job& J, int64_t m0, int rows, int64_t p);
void finish_neon(const Job& J, int64_t m0, int rows, int64_t p);

// Register-only throughput of the binary inner loop (XOR, popcount, add), for the "fraction of peak" of the
// benchmark: the number of binary multiply-accumulates performed (bits).
int64_t peak_portable(int64_t iters);
int64_t peak_avx512(int64_t iters);
int64_t peak_avx2(int64_t iters);
int64_t peak_neon(int64_t iters);
int64_t popcount_peak(int64_t iters, int64_t isa);

}  // namespace lsqbq
