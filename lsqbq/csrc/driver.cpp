// The driver of a binary convolution / GEMM: the job's geometry (receptive fields, padded taps) and the split of
// its output tiles over threads, each tile on the chosen instruction-set path (no torch headers).
#include <algorithm>
#include <cstring>
#include <memory>
#include <stdexcept>

#include "job.h"
#include "pool.h"

namespace lsqbq {

#if LSQBQ_X86
namespace {
LSQBQ_POPCNT int32_t mask_count_hw(const uint64_t* mp, const int64_t* koff, int64_t n) {
  int64_t s = 0;
  for (int64_t k = 0; k < n; ++k) s += _mm_popcnt_u64(mp[koff[k]]);
  return static_cast<int32_t>(s);
}
}  // namespace
#endif

int32_t mask_count(const uint64_t* mp, const int64_t* koff, int64_t n, bool hw) {
#if LSQBQ_X86
  if (hw) return mask_count_hw(mp, koff, n);
#endif
  int32_t s = 0;
  for (int64_t k = 0; k < n; ++k) s += popcount64(mp[koff[k]]);
  return s;
}

namespace {

inline void tile(const Job& J, const Rows& rw, int r0, int64_t isa, int64_t m0, int rows, int64_t p, int64_t j,
                 int64_t ig, bool first, int pa, bool mask) {
  if (isa == kAvx512) return tile_avx512(J, rw, r0, m0, rows, p, j, ig, first, pa, mask);
  if (isa == kAvx2) return tile_avx2(J, rw, r0, m0, rows, p, j, ig, first, pa, mask);
  if (isa == kNeon) return tile_neon(J, rw, r0, m0, rows, p, j, ig, first, pa, mask);
  tile_portable(J, rw, r0, m0, rows, p, j, ig, first, pa, mask);
}

inline void finish(const Job& J, int64_t isa, int64_t m0, int rows, int64_t p) {
  if (isa == kAvx512) return finish_avx512(J, m0, rows, p);
  if (isa == kAvx2) return finish_avx2(J, m0, rows, p);
  if (isa == kNeon) return finish_neon(J, m0, rows, p);
  finish_portable(J, m0, rows, p);
}

// Group sizes of a kernel row in the packed-tap layout: G, ..., G, KW mod G (if not 0).
std::vector<int64_t> group_sizes(int64_t G, int64_t KW) {
  std::vector<int64_t> s(KW / G, G);
  if (KW % G) s.push_back(KW % G);
  return s;
}

// The activation words of J packed for the packed-tap layout, into buf: per plane, one region of (B, Hp, Wp)
// words for each distinct group size s in `sizes`, word (h, w) = OR_i a(h, w + i dw) << (i C) over i < s with
// w + i dw < Wp (positions past the row are never part of a receptive field). Rows of planes in parallel.
void pack_taps(const Job& J, const std::vector<int64_t>& sizes, uint64_t* buf) {
  const int64_t B = J.geo.B, pixels = B * J.Hp * J.Wp, rows = J.pa * B * J.Hp;
  const int64_t nreg = static_cast<int64_t>(sizes.size());
  parallel(rows, std::max<int64_t>(1, 4096 / J.Wp), rows * J.Wp * nreg, int64_t(1) << 16, J.threads,
           [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t i = row / (B * J.Hp), rest = row - i * B * J.Hp;
      const uint64_t* src = J.a + i * J.a_plane + rest * J.Wp;
      for (int64_t q = 0; q < nreg; ++q) {
        uint64_t* dst = buf + (i * nreg + q) * pixels + rest * J.Wp;
        // tap by tap over the row: a copy, then one shift-or per further tap (loops the compiler vectorises)
        std::memcpy(dst, src, J.Wp * sizeof(uint64_t));
        for (int64_t t = 1; t < sizes[q]; ++t) {
          const int64_t off = t * J.geo.dw, shift = t * J.geo.C;
          for (int64_t w = 0; w + off < J.Wp; ++w) dst[w] |= src[w + off] << shift;
        }
      }
    }
  });
}

void run_tiles(const Job& J, int64_t isa);

}  // namespace

// Packed taps: the activation words packed once (pack_taps) into a buffer the tiles read as the job's words, with
// k word (kh, group g) at the region of its group size, offset kh dh Wp + g G dw.
void run(const Job& J, int64_t isa) {
  if (J.group < 2) return run_tiles(J, isa);
  const Geometry& g = J.geo;
  std::vector<int64_t> per_row = group_sizes(J.group, g.KW), sizes = per_row;
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  const int64_t pixels = g.B * J.Hp * J.Wp, nreg = static_cast<int64_t>(sizes.size());
  std::unique_ptr<uint64_t[]> buf(new uint64_t[J.pa * nreg * pixels]);
  pack_taps(J, sizes, buf.get());
  Job P = J;
  P.a = buf.get();
  P.a_plane = nreg * pixels;
  P.koff.clear();
  for (int64_t kh = 0; kh < g.KH; ++kh)
    for (size_t i = 0; i < per_row.size(); ++i) {
      const int64_t q = std::find(sizes.begin(), sizes.end(), per_row[i]) - sizes.begin();
      P.koff.push_back(q * pixels + kh * g.dh * J.Wp + static_cast<int64_t>(i) * J.group * g.dw);
    }
  P.KWt = static_cast<int64_t>(P.koff.size());
  run_tiles(P, isa);
}

namespace {

// Tiles: (row block, weight panel); per tile all weight planes j and activation plane groups, so a tile owns its
// output block and the float epilogue can accumulate sum_ij without races. Threads split the tiles (not the
// batch), so batch 1 uses every thread; the grain keeps at least ~64k word ops per task so that small layers do
// not pay for waking threads they cannot use. Every output element is computed by one task in a fixed order, so
// results do not depend on the thread count.
constexpr int64_t kRowsOuterBytes = int64_t(128) << 10;  // weight panels of a job that all stay in L2 (run_tiles)

// Asks for the cache line at p for writing (x86 PREFETCHW; a hint: it never faults and changes no value).
inline void prefetch_write(const void* p) {
#if LSQBQ_X86
  asm volatile("prefetchw %0" : : "m"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p, 1, 3);
#endif
}

void run_tiles(const Job& J, int64_t isa) {
  const int64_t R = (J.mask || J.pa == 1) ? RMAX : RMAX / 2;
  const int64_t ntiles = (J.M + R - 1) / R;
  const int64_t total = ntiles * J.NP;
  const int64_t work = R * NB * J.KWt * J.pw * J.pa;  // word ops per task
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, work));
  const bool fused = J.out_f && (J.act != 0 || J.res != nullptr);
  // Which tiles a thread gets: contiguous index ranges (the torch runner splits [0, total) into one range per
  // thread). Panels outer keeps a weight panel in cache while the row tiles stream past it (panels inner made the
  // portable 2x1 / 2x2 GEMMs 1.7-1.9x slower where L2 cannot hold all panels: 512 KB against 590 KB at 512@7x7).
  // Where all panels fit in kRowsOuterBytes, rows outer instead: each thread then writes every channel of a block
  // of output rows, the rows the next layer's encode (split by rows the same way) reads on that thread, rather
  // than some channels of every row, half of which the next layer must fetch from the other core's cache.
  const bool rows_outer = J.NP * J.KWt * NB * J.pw * static_cast<int64_t>(sizeof(uint64_t)) <= kRowsOuterBytes;
  // Every tile's rows (Job::rows: offsets, padding taps, ternary counts) are computed once per call. Rows outer, a
  // task's consecutive indices share a row tile across its panels, then step to the next tile without a division.
  // Panels outer, every panel visits every tile, so the row tiles are tabulated first (ntiles x 168 bytes; the
  // panels-outer layers have big weights and few rows).
  std::vector<Rows> table(rows_outer ? 0 : ntiles);
  if (!table.empty()) {
    // in the tiles' word ops (8 to a 512-bit popcount): a row is ~16 scalar instructions, plus a POPCNT per mask word
    const int64_t row_ops = 8 * (2 + (J.mask ? J.KWt : 0));
    parallel(ntiles, 64, ntiles * R * row_ops, int64_t(1) << 19, J.threads, [&](int64_t begin, int64_t end) {
      Job::RowPos at = J.row_pos(begin * R);
      for (int64_t tl = begin; tl < end; ++tl)
        J.rows(at, static_cast<int>(std::min<int64_t>(R, J.M - tl * R)), table[tl]);
    });
  }
  // below 2^19 word ops (tens of microseconds) one thread is faster than waking another; the stride-2 layers of the
  // ImageNet ResNet-18 at batch 1 (0.9M word ops) stayed on one thread under 2^20 and ran 1.2-1.6x faster split
  // With a fused tail (finish), the tile's stores of its float outputs are read back at once. Where those lines
  // are not in cache (the output buffer was last touched a network ago), the loads wait for the stores' lines:
  // perf put half of the residual tail's samples at those loads. So a task asks for the next tile's output lines
  // while it computes the current one (and for its first tile's on entry). In-process A/B on a 2-core Zen 4, the
  // frozen ResNet-18 with int8 float parts: 0.99-1.05x at batch 1 on one thread (the low end in runs where the
  // network stayed in cache), 1.00-1.07x beside a memory-heavy process, 1.08x on two threads, 1.02x at batch 16.
  auto prefetch_outputs = [&](int64_t p, int64_t tl) {
    const int64_t n0 = p * NB, m0 = tl * R, rows = std::min<int64_t>(R, J.M - m0);
    for (int64_t r = 0; r < rows; ++r) {
      const float* o = J.out_f + (m0 + r) * J.N + n0;
      for (int64_t c = 0; c < std::min<int64_t>(NB, J.N - n0); c += 16) prefetch_write(o + c);  // 64-byte lines
    }
  };
  parallel(total, grain, total * work, int64_t(1) << 19, J.threads, [&](int64_t begin, int64_t end) {
    Rows own;
    int64_t have = -1;
    Job::RowPos at{};  // row 0's position, where a task's first tile is tile 0
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t p = rows_outer ? idx % J.NP : idx / ntiles, tl = rows_outer ? idx / J.NP : idx % ntiles;
      const int64_t m0 = tl * R;
      const int rows = static_cast<int>(std::min<int64_t>(R, J.M - m0));
      if (table.empty() && tl != have) {
        if (tl != have + 1) at = J.row_pos(m0);
        J.rows(at, rows, own);
        have = tl;
      }
      const Rows& rw = table.empty() ? own : table[tl];
      if (fused) {
        if (idx == begin) prefetch_outputs(p, tl);
        if (idx + 1 < end) {  // the next index's tile, stepped as the index is split above
          const bool wrap = rows_outer ? p + 1 == J.NP : tl + 1 == ntiles;
          if (rows_outer) prefetch_outputs(wrap ? 0 : p + 1, wrap ? tl + 1 : tl);
          else prefetch_outputs(wrap ? p + 1 : p, wrap ? 0 : tl + 1);
        }
      }
      for (int64_t j = 0; j < J.pw; ++j) {
        if (J.mask) {
          tile(J, rw, 0, isa, m0, rows, p, j, 0, j == 0, 1, true);
          continue;
        }
        int64_t ig = 0;
        for (; ig + 2 <= J.pa; ig += 2) {
          // two activation planes share every weight load; tiles of up to 3 rows
          for (int r0 = 0; r0 < rows; r0 += 3)
            tile(J, rw, r0, isa, m0 + r0, std::min(3, rows - r0), p, j, ig, j == 0 && ig == 0, 2, false);
        }
        if (ig < J.pa) tile(J, rw, 0, isa, m0, rows, p, j, ig, j == 0 && ig == 0, 1, false);
      }
      if (fused) finish(J, isa, m0, rows, p);
    }
  });
}

}  // namespace

Geometry conv_geometry(int64_t B, int64_t C, int64_t H, int64_t W, int64_t KH, int64_t KW, int64_t sh, int64_t sw,
                       int64_t ph, int64_t pw, int64_t dh, int64_t dw) {
  Geometry g;
  g.B = B; g.H = H; g.W = W; g.C = C;
  g.KH = KH; g.KW = KW;
  g.sh = sh; g.sw = sw;
  g.ph = ph; g.pw = pw;
  g.dh = dh; g.dw = dw;
  g.OH = (g.H + 2 * g.ph - g.dh * (g.KH - 1) - 1) / g.sh + 1;
  g.OW = (g.W + 2 * g.pw - g.dw * (g.KW - 1) - 1) / g.sw + 1;
  return g;
}

Geometry gemm_geometry(int64_t B, int64_t K) {
  Geometry g{};
  g.B = B; g.H = 1; g.W = 1; g.C = K;
  g.KH = g.KW = g.sh = g.sw = g.dh = g.dw = 1;
  g.ph = g.pw = 0;
  g.OH = g.OW = 1;
  return g;
}

Job make_job(const uint64_t* a, int64_t pa, const uint64_t* w, int64_t pw, int64_t NP, const int32_t* wtap,
             const Geometry& g, bool mask, bool packed) {
  Job J;
  if (packed) {
    if (tap_group(g.C, g.KW) < 2)
      throw std::invalid_argument("lsqbq: packed taps need at most 32 input channels and a kernel wider than 1");
    J.group = tap_group(g.C, g.KW);
  }
  J.geo = g;
  const int64_t Cw = (g.C + 63) / 64;
  const int64_t Hp = g.H + 2 * g.ph, Wp = g.W + 2 * g.pw;
  J.T = g.KH * g.KW;
  J.a = a;
  J.a_plane = g.B * Hp * Wp * Cw;
  J.pa = pa;
  J.mask = mask;
  J.Cw = Cw;
  J.KWt = J.T * Cw;
  J.w = w;
  J.pw = pw;
  J.NP = NP;
  J.tap_off.resize(J.T);
  for (int64_t kh = 0; kh < g.KH; ++kh)
    for (int64_t kw = 0; kw < g.KW; ++kw) J.tap_off[kh * g.KW + kw] = (kh * g.dh * Wp + kw * g.dw) * Cw;
  J.hw_popcnt = popcnt_supported();
  J.koff.resize(J.KWt);
  for (int64_t t = 0; t < J.T; ++t)
    for (int64_t c = 0; c < Cw; ++c) J.koff[t * Cw + c] = J.tap_off[t] + c;
  J.M = g.B * g.OH * g.OW;
  J.rows_per_sample = g.OH * g.OW;
  J.OH = g.OH; J.OW = g.OW; J.Hp = Hp; J.Wp = Wp; J.sh = g.sh; J.sw = g.sw;
  J.K = static_cast<int32_t>(g.C * J.T);
  J.padded = g.ph > 0 || g.pw > 0;
  if (J.padded && !mask) {
    J.wtap = wtap;
    // Tap t = (kh, kw) of output (oh, ow) reads input (oh sh - ph + kh dh, ow sw - pw + kw dw); it is padding when
    // either coordinate leaves the image, so the row's invalid taps are inv_h[oh] | inv_w[ow].
    J.inv_h.assign(g.OH, 0);
    J.inv_w.assign(g.OW, 0);
    for (int64_t oh = 0; oh < g.OH; ++oh)
      for (int64_t kh = 0; kh < g.KH; ++kh) {
        const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
        if (ih < 0 || ih >= g.H)
          for (int64_t kw = 0; kw < g.KW; ++kw) J.inv_h[oh] |= uint64_t(1) << (kh * g.KW + kw);
      }
    for (int64_t ow = 0; ow < g.OW; ++ow)
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        const int64_t iw = ow * g.sw - g.pw + kw * g.dw;
        if (iw < 0 || iw >= g.W)
          for (int64_t kh = 0; kh < g.KH; ++kh) J.inv_w[ow] |= uint64_t(1) << (kh * g.KW + kw);
      }
  }
  return J;
}

int64_t popcount_peak(int64_t iters, int64_t isa) {
  if (isa == kAvx512) return peak_avx512(iters);
  if (isa == kAvx2) return peak_avx2(iters);
  if (isa == kNeon) return peak_neon(iters);
  return peak_portable(iters);
}

}  // namespace lsqbq
