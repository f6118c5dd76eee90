// XNOR/popcount kernels for foldable binary quantization (CPU).
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
//
// Back ends in this one file: a portable C++ path, and AVX-512 VPOPCNTDQ micro-kernels compiled with function
// target attributes and chosen at run time (__builtin_cpu_supports); no -march flags are needed.
#include <ATen/core/Tensor.h>
#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LSQBQ_X86 1
#define LSQBQ_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vpopcntdq,popcnt,avx2,fma")))
#else
#define LSQBQ_X86 0
#endif

namespace lsqbq {
namespace {

constexpr int64_t NB = 32;  // output channels per weight panel
constexpr int RMAX = 6;     // rows per micro-kernel tile (1 plane)
enum Isa : int64_t { kPortable = 0, kAvx512 = 1 };

bool avx512_supported() {
#if LSQBQ_X86
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                         __builtin_cpu_supports("avx512vpopcntdq");
  return ok;
#else
  return false;
#endif
}

void check_isa(int64_t isa) {
  TORCH_CHECK(isa == kPortable || isa == kAvx512, "lsqbq: unknown kernel isa ", isa);
  TORCH_CHECK(isa != kAvx512 || avx512_supported(), "lsqbq: AVX-512 VPOPCNTDQ kernels requested but this CPU lacks them");
}

inline int popcount64(uint64_t x) { return __builtin_popcountll(x); }

// ------------------------------------------------------------------------------------------------ job

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
  int64_t M = 0;
  std::vector<int64_t> row_base;     // (M) word offset of each output row's window
  std::vector<uint64_t> row_invalid; // (M) taps that fall into the padding (bit t), sign planes only
  std::vector<int32_t> row_count;    // (M) K, or popcount of the mask over the window (mask mode)
  int32_t* out_i = nullptr;          // (P_a', P_w, M, N) integer dot products
  float* out_f = nullptr;            // (M, N) scaled output
  const float* sa = nullptr;         // (B, P_a') activation scales
  const float* swt = nullptr;        // (P_w, NP * NB) weight scales
  const float* bias = nullptr;       // (N)
  int64_t rows_per_sample = 1;
  int64_t pa_logical() const { return mask ? 1 : pa; }
};

// ------------------------------------------------------------------------------------------- epilogue
// cnt: (rows, PA, NB) popcounts of one weight plane j for activation planes ig .. ig + PA - 1.
template <int PA>
inline __attribute__((always_inline)) void epilogue(const Job& J, int64_t m0, int rows, int64_t p, int64_t j,
                                                    int64_t ig, const int64_t* cnt, bool first) {
  const int64_t n0 = p * NB;
  const int64_t nv = std::min<int64_t>(NB, J.N - n0);
  const int64_t NPNB = J.NP * NB;
  for (int r = 0; r < rows; ++r) {
    const int64_t m = m0 + r;
    alignas(64) int32_t corr[NB];
    for (int n = 0; n < NB; ++n) corr[n] = 0;
    uint64_t inv = J.mask ? 0 : J.row_invalid[m];
    while (inv) {
      const int t = __builtin_ctzll(inv);
      inv &= inv - 1;
      const int32_t* wt = J.wtap + (j * J.T + t) * NPNB + n0;
      for (int n = 0; n < NB; ++n) corr[n] += wt[n];
    }
    const int32_t base = J.row_count[m];
    if (J.out_i) {
      for (int i = 0; i < PA; ++i) {
        const int64_t* c = cnt + (r * PA + i) * NB;
        int32_t* o = J.out_i + (((ig + i) * J.pw + j) * J.M + m) * J.N + n0;
        alignas(64) int32_t d[NB];
        for (int n = 0; n < NB; ++n) d[n] = base - 2 * static_cast<int32_t>(c[n]) - corr[n];
        for (int64_t n = 0; n < nv; ++n) o[n] = d[n];
      }
    } else {
      const int64_t b = m / J.rows_per_sample;
      const int64_t pal = J.pa_logical();
      alignas(64) float acc[NB];
      for (int n = 0; n < NB; ++n) acc[n] = 0.f;
      for (int i = 0; i < PA; ++i) {
        const int64_t* c = cnt + (r * PA + i) * NB;
        const float s = J.sa[b * pal + ig + i];
        for (int n = 0; n < NB; ++n) acc[n] += s * static_cast<float>(base - 2 * static_cast<int32_t>(c[n]) - corr[n]);
      }
      const float* sw = J.swt + j * NPNB + n0;
      float* o = J.out_f + m * J.N + n0;
      if (first) {
        for (int64_t n = 0; n < nv; ++n) o[n] = (J.bias ? J.bias[n0 + n] : 0.f) + sw[n] * acc[n];
      } else {
        for (int64_t n = 0; n < nv; ++n) o[n] += sw[n] * acc[n];
      }
    }
  }
}

// ------------------------------------------------------------------------------- portable micro-kernel
template <int PA, bool MASK>
void tile_portable(const Job& J, int64_t m0, int rows, int64_t p, int64_t j, int64_t ig, bool first) {
  alignas(64) int64_t cnt[RMAX * 2 * NB];
  std::memset(cnt, 0, sizeof(cnt));
  const uint64_t* wp = J.w + (j * J.NP + p) * J.KWt * NB;
  for (int r = 0; r < rows; ++r) {
    const uint64_t* row = J.a + J.row_base[m0 + r] + (MASK ? 0 : ig * J.a_plane);
    const uint64_t* wk = wp;
    for (int64_t t = 0; t < J.T; ++t) {
      const uint64_t* at = row + J.tap_off[t];
      for (int64_t c = 0; c < J.Cw; ++c, wk += NB) {
        for (int i = 0; i < PA; ++i) {
          int64_t* cr = cnt + (r * PA + i) * NB;
          if (MASK) {
            const uint64_t s = at[c], mk = at[c + J.a_plane];
            for (int n = 0; n < NB; ++n) cr[n] += popcount64((s ^ wk[n]) & mk);
          } else {
            const uint64_t x = at[c + i * J.a_plane];
            for (int n = 0; n < NB; ++n) cr[n] += popcount64(x ^ wk[n]);
          }
        }
      }
    }
  }
  epilogue<PA>(J, m0, rows, p, j, ig, cnt, first);
}

// ------------------------------------------------------------------------------- AVX-512 micro-kernel
#if LSQBQ_X86
// R rows x 32 output channels x PA activation planes, weights loaded once per k word and shared by all rows
// and planes. Accumulators: R * PA * 4 zmm (<= 24), + 4 weight registers + broadcasts.
template <int R, int PA, bool MASK>
LSQBQ_AVX512 void tile_avx512_r(const Job& J, int64_t m0, int64_t p, int64_t j, int64_t ig, bool first) {
  __m512i acc[R][PA][4];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
    for (int i = 0; i < PA; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) acc[r][i][v] = _mm512_setzero_si512();
  const uint64_t* rowp[R];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) rowp[r] = J.a + J.row_base[m0 + r] + (MASK ? 0 : ig * J.a_plane);
  const int64_t ap = J.a_plane;
  const int64_t Cw = J.Cw;
  const uint64_t* wk = J.w + (j * J.NP + p) * J.KWt * NB;
  for (int64_t t = 0; t < J.T; ++t) {
    const int64_t off = J.tap_off[t];
    for (int64_t c = 0; c < Cw; ++c, wk += NB) {
      const __m512i w0 = _mm512_loadu_si512(wk), w1 = _mm512_loadu_si512(wk + 8);
      const __m512i w2 = _mm512_loadu_si512(wk + 16), w3 = _mm512_loadu_si512(wk + 24);
#pragma GCC unroll 32
      for (int r = 0; r < R; ++r) {
        const uint64_t* at = rowp[r] + off + c;
        if (MASK) {
          const __m512i s = _mm512_set1_epi64(static_cast<long long>(at[0]));
          const __m512i mk = _mm512_set1_epi64(static_cast<long long>(at[ap]));
          // (s ^ w) & m: truth table of A ^ B & C with A = 0xF0, B = 0xCC, C = 0xAA is 0x28.
          acc[r][0][0] = _mm512_add_epi64(acc[r][0][0], _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(s, w0, mk, 0x28)));
          acc[r][0][1] = _mm512_add_epi64(acc[r][0][1], _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(s, w1, mk, 0x28)));
          acc[r][0][2] = _mm512_add_epi64(acc[r][0][2], _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(s, w2, mk, 0x28)));
          acc[r][0][3] = _mm512_add_epi64(acc[r][0][3], _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(s, w3, mk, 0x28)));
        } else {
#pragma GCC unroll 4
          for (int i = 0; i < PA; ++i) {
            const __m512i x = _mm512_set1_epi64(static_cast<long long>(at[i * ap]));
            acc[r][i][0] = _mm512_add_epi64(acc[r][i][0], _mm512_popcnt_epi64(_mm512_xor_si512(x, w0)));
            acc[r][i][1] = _mm512_add_epi64(acc[r][i][1], _mm512_popcnt_epi64(_mm512_xor_si512(x, w1)));
            acc[r][i][2] = _mm512_add_epi64(acc[r][i][2], _mm512_popcnt_epi64(_mm512_xor_si512(x, w2)));
            acc[r][i][3] = _mm512_add_epi64(acc[r][i][3], _mm512_popcnt_epi64(_mm512_xor_si512(x, w3)));
          }
        }
      }
    }
  }
  // Epilogue on the accumulators: d = count_row - 2 popcount - padding correction; int32 store, or the scaled
  // float sum over planes (fma) into the NHWC output.
  const int64_t n0 = p * NB;
  const int64_t NPNB = J.NP * NB;
  __mmask8 lm[4];
#pragma GCC unroll 4
  for (int v = 0; v < 4; ++v) {
    const int64_t left = std::max<int64_t>(0, std::min<int64_t>(8, J.N - n0 - 8 * v));
    lm[v] = static_cast<__mmask8>((1u << left) - 1);
  }
  const float* sw = J.swt ? J.swt + j * NPNB + n0 : nullptr;
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) {
    const int64_t m = m0 + r;
    const __m512i basev = _mm512_set1_epi64(J.row_count[m]);
    __m256i corr[4];
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) corr[v] = _mm256_setzero_si256();
    uint64_t inv = MASK ? 0 : J.row_invalid[m];
    while (inv) {
      const int t = __builtin_ctzll(inv);
      inv &= inv - 1;
      const int32_t* wt = J.wtap + (j * J.T + t) * NPNB + n0;
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v)
        corr[v] = _mm256_add_epi32(corr[v], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wt + 8 * v)));
    }
    if (J.out_i) {
#pragma GCC unroll 4
      for (int i = 0; i < PA; ++i) {
        int32_t* o = J.out_i + (((ig + i) * J.pw + j) * J.M + m) * J.N + n0;
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) {
          const __m256i d = _mm256_sub_epi32(
              _mm512_cvtepi64_epi32(_mm512_sub_epi64(basev, _mm512_add_epi64(acc[r][i][v], acc[r][i][v]))), corr[v]);
          _mm256_mask_storeu_epi32(o + 8 * v, lm[v], d);
        }
      }
    } else {
      const int64_t b = m / J.rows_per_sample;
      const int64_t pal = J.pa_logical();
      __m256 accf[4];
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) accf[v] = _mm256_setzero_ps();
#pragma GCC unroll 4
      for (int i = 0; i < PA; ++i) {
        const __m256 s = _mm256_set1_ps(J.sa[b * pal + ig + i]);
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) {
          const __m256i d = _mm256_sub_epi32(
              _mm512_cvtepi64_epi32(_mm512_sub_epi64(basev, _mm512_add_epi64(acc[r][i][v], acc[r][i][v]))), corr[v]);
          accf[v] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(d), accf[v]);
        }
      }
      float* o = J.out_f + m * J.N + n0;
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) {
        __m256 prev;
        if (first) prev = J.bias ? _mm256_maskz_loadu_ps(lm[v], J.bias + n0 + 8 * v) : _mm256_setzero_ps();
        else prev = _mm256_maskz_loadu_ps(lm[v], o + 8 * v);
        _mm256_mask_storeu_ps(o + 8 * v, lm[v], _mm256_fmadd_ps(_mm256_loadu_ps(sw + 8 * v), accf[v], prev));
      }
    }
  }
}

template <int PA, bool MASK>
LSQBQ_AVX512 void tile_avx512(const Job& J, int64_t m0, int rows, int64_t p, int64_t j, int64_t ig, bool first) {
  switch (rows) {
    case 1: tile_avx512_r<1, PA, MASK>(J, m0, p, j, ig, first); break;
    case 2: tile_avx512_r<2, PA, MASK>(J, m0, p, j, ig, first); break;
    case 3: tile_avx512_r<3, PA, MASK>(J, m0, p, j, ig, first); break;
    case 4: if constexpr (PA == 1) { tile_avx512_r<4, PA, MASK>(J, m0, p, j, ig, first); } break;
    case 5: if constexpr (PA == 1) { tile_avx512_r<5, PA, MASK>(J, m0, p, j, ig, first); } break;
    case 6: if constexpr (PA == 1) { tile_avx512_r<6, PA, MASK>(J, m0, p, j, ig, first); } break;
    default: TORCH_CHECK(false, "lsqbq: bad tile height ", rows);
  }
}
#endif

template <int PA, bool MASK>
void tile(const Job& J, int64_t isa, int64_t m0, int rows, int64_t p, int64_t j, int64_t ig, bool first) {
#if LSQBQ_X86
  if (isa == kAvx512) return tile_avx512<PA, MASK>(J, m0, rows, p, j, ig, first);
#endif
  tile_portable<PA, MASK>(J, m0, rows, p, j, ig, first);
}

// Tiles: (row block, weight panel); per tile all weight planes j and activation plane groups, so a tile owns its
// output block and the float epilogue can accumulate sum_ij without races.
void run(const Job& J, int64_t isa) {
  const int64_t R = (J.mask || J.pa == 1) ? RMAX : RMAX / 2;
  const int64_t ntiles = (J.M + R - 1) / R;
  const int64_t total = ntiles * J.NP;
  at::parallel_for(0, total, 1, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t p = idx / ntiles, tl = idx % ntiles;
      const int64_t m0 = tl * R;
      const int rows = static_cast<int>(std::min<int64_t>(R, J.M - m0));
      for (int64_t j = 0; j < J.pw; ++j) {
        if (J.mask) {
          tile<1, true>(J, isa, m0, rows, p, j, 0, j == 0);
          continue;
        }
        int64_t ig = 0;
        for (; ig + 2 <= J.pa; ig += 2) {
          // two activation planes share every weight load; tiles of up to 3 rows
          for (int64_t r0 = 0; r0 < rows; r0 += 3)
            tile<2, false>(J, isa, m0 + r0, static_cast<int>(std::min<int64_t>(3, rows - r0)), p, j, ig, j == 0 && ig == 0);
        }
        if (ig < J.pa) tile<1, false>(J, isa, m0, rows, p, j, ig, j == 0 && ig == 0);
      }
    }
  });
}

// ------------------------------------------------------------------------------------------ set-up

struct Geometry {
  int64_t B, H, W, C, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW;
};

void check_words(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.scalar_type() == at::kLong, "lsqbq: ", name, " must be int64 packed words, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == dim, "lsqbq: ", name, " must be ", dim, "-D, got ", t.sizes());
  TORCH_CHECK(t.is_contiguous() && t.device().is_cpu(), "lsqbq: ", name, " must be a contiguous CPU tensor");
}

Job make_job(const at::Tensor& a, const at::Tensor& w, const at::Tensor& wtap, const Geometry& g, bool mask) {
  check_words(a, "a", 5);
  check_words(w, "w", 4);
  Job J;
  const int64_t Cw = (g.C + 63) / 64;
  const int64_t Hp = g.H + 2 * g.ph, Wp = g.W + 2 * g.pw;
  TORCH_CHECK(a.size(1) == g.B && a.size(2) == Hp && a.size(3) == Wp && a.size(4) == Cw,
              "lsqbq: activation words ", a.sizes(), " do not match the geometry (B, H + 2 ph, W + 2 pw, Cw) = (", g.B,
              ", ", Hp, ", ", Wp, ", ", Cw, ")");
  TORCH_CHECK(!mask || a.size(0) == 2, "lsqbq: ternary mask encoding needs 2 planes (sign, mask), got ", a.size(0));
  TORCH_CHECK(g.OH > 0 && g.OW > 0, "lsqbq: empty output");
  J.T = g.KH * g.KW;
  TORCH_CHECK(J.T <= 64, "lsqbq: kernels with more than 64 taps are not supported");
  J.a = reinterpret_cast<const uint64_t*>(a.data_ptr<int64_t>());
  J.a_plane = g.B * Hp * Wp * Cw;
  J.pa = a.size(0);
  J.mask = mask;
  J.Cw = Cw;
  J.KWt = J.T * Cw;
  TORCH_CHECK(w.size(2) == J.KWt && w.size(3) == NB, "lsqbq: weight panels ", w.sizes(), " expected (P_w, NP, ", J.KWt,
              ", ", NB, ")");
  J.w = reinterpret_cast<const uint64_t*>(w.data_ptr<int64_t>());
  J.pw = w.size(0);
  J.NP = w.size(1);
  J.tap_off.resize(J.T);
  for (int64_t kh = 0; kh < g.KH; ++kh)
    for (int64_t kw = 0; kw < g.KW; ++kw) J.tap_off[kh * g.KW + kw] = (kh * g.dh * Wp + kw * g.dw) * Cw;
  J.M = g.B * g.OH * g.OW;
  J.rows_per_sample = g.OH * g.OW;
  J.row_base.resize(J.M);
  J.row_invalid.assign(J.M, 0);
  J.row_count.resize(J.M);
  const bool padded = g.ph > 0 || g.pw > 0;
  if (padded && !mask) {
    TORCH_CHECK(wtap.defined() && wtap.scalar_type() == at::kInt && wtap.is_contiguous() &&
                    wtap.numel() == J.pw * J.T * J.NP * NB,
                "lsqbq: padded sign-plane convolution needs tap sums (P_w, T, NP * 32) int32");
    J.wtap = wtap.data_ptr<int32_t>();
  }
  const int32_t K = static_cast<int32_t>(g.C * J.T);
  at::parallel_for(0, J.M, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const int64_t b = m / (g.OH * g.OW), oh = (m / g.OW) % g.OH, ow = m % g.OW;
      const int64_t base = ((b * Hp + oh * g.sh) * Wp + ow * g.sw) * Cw;
      J.row_base[m] = base;
      uint64_t inv = 0;
      if (padded) {
        for (int64_t kh = 0; kh < g.KH; ++kh) {
          const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
          for (int64_t kw = 0; kw < g.KW; ++kw) {
            const int64_t iw = ow * g.sw - g.pw + kw * g.dw;
            if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) inv |= uint64_t(1) << (kh * g.KW + kw);
          }
        }
      }
      if (mask) {
        const uint64_t* mp = J.a + J.a_plane + base;
        int32_t s = 0;
        for (int64_t t = 0; t < J.T; ++t)
          for (int64_t c = 0; c < Cw; ++c) s += popcount64(mp[J.tap_off[t] + c]);
        J.row_count[m] = s;
      } else {
        J.row_invalid[m] = inv;
        J.row_count[m] = K;
      }
    }
  });
  return J;
}

Geometry conv_geometry(const at::Tensor& a, int64_t C, at::IntArrayRef hw, at::IntArrayRef kernel,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(hw.size() == 2 && kernel.size() == 2 && stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "lsqbq: hw, kernel, stride, padding, dilation must have 2 entries");
  Geometry g;
  g.B = a.size(1);
  g.H = hw[0]; g.W = hw[1]; g.C = C;
  g.KH = kernel[0]; g.KW = kernel[1];
  g.sh = stride[0]; g.sw = stride[1];
  g.ph = padding[0]; g.pw = padding[1];
  g.dh = dilation[0]; g.dw = dilation[1];
  TORCH_CHECK(g.sh > 0 && g.sw > 0 && g.dh > 0 && g.dw > 0 && g.ph >= 0 && g.pw >= 0, "lsqbq: bad conv geometry");
  g.OH = (g.H + 2 * g.ph - g.dh * (g.KH - 1) - 1) / g.sh + 1;
  g.OW = (g.W + 2 * g.pw - g.dw * (g.KW - 1) - 1) / g.sw + 1;
  return g;
}

Geometry gemm_geometry(const at::Tensor& a, int64_t K) {
  Geometry g{};
  g.B = a.size(1); g.H = 1; g.W = 1; g.C = K;
  g.KH = g.KW = g.sh = g.sw = g.dh = g.dw = 1;
  g.ph = g.pw = 0;
  g.OH = g.OW = 1;
  return g;
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
  Job J = make_job(a5, w, at::Tensor(), gemm_geometry(a5, k), mask);
  return run_int(J, n_out, isa);
}

at::Tensor xnor_gemm_scaled_cpu(const at::Tensor& a, const at::Tensor& w, const at::Tensor& sa, const at::Tensor& sw,
                                const std::optional<at::Tensor>& bias, int64_t n_out, int64_t k, bool mask,
                                int64_t isa) {
  check_isa(isa);
  check_words(a, "a", 3);
  auto a5 = a.view({a.size(0), a.size(1), 1, 1, a.size(2)});
  Job J = make_job(a5, w, at::Tensor(), gemm_geometry(a5, k), mask);
  return run_scaled(J, n_out, sa, sw, bias, a.size(1), isa);
}

at::Tensor xnor_conv2d_cpu(const at::Tensor& a, const at::Tensor& w, const at::Tensor& wtap, int64_t n_out,
                           int64_t c_in, at::IntArrayRef hw, at::IntArrayRef kernel, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, bool mask, int64_t isa) {
  check_isa(isa);
  check_words(a, "a", 5);
  const Geometry g = conv_geometry(a, c_in, hw, kernel, stride, padding, dilation);
  Job J = make_job(a, w, wtap, g, mask);
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
  Job J = make_job(a, w, wtap, g, mask);
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

// Store one 64-channel word of every plane: k sign planes, or (mask) sign + non-zero mask of a ternary pair
// (non-zero where the two signs agree; bits past the last channel cn stay 0).
inline void store_words(const uint64_t* words, int64_t k, bool mask, int64_t cn, uint64_t* dst, int64_t plane_stride) {
  if (mask) {
    const uint64_t valid = cn == 64 ? ~uint64_t(0) : ((uint64_t(1) << cn) - 1);
    dst[0] = words[0];
    dst[plane_stride] = ~(words[0] ^ words[1]) & valid;
  } else {
    for (int64_t i = 0; i < k; ++i) dst[i * plane_stride] = words[i];
  }
}

// encode: quantize activations per sample with fixed scales into packed planes (foldable residual signs).
//   r_1 = clamp(x), b_i = sign(r_i), approx += v_i b_i, r_{i+1} = clamp(x) - approx     (same float ops as the layer)
// x: (B, C, H, W) float (any memory format; channels_last is read without a copy) or (B, n).
// Returns (P, B, H + 2 ph, W + 2 pw, Cw) int64 (4-D input) or (P, B, Cw) (2-D input); P = k planes, or 2 (sign,
// mask) for the ternary mask encoding (scales (v, v)).
template <bool AVX>
void encode_pixel(const float* src, int64_t C, const float* v, int64_t k, bool mask, float clampv, bool do_clamp,
                  uint64_t* dst, int64_t plane_stride);

template <>
void encode_pixel<false>(const float* src, int64_t C, const float* v, int64_t k, bool mask, float clampv, bool do_clamp,
                         uint64_t* dst, int64_t plane_stride) {
  const int64_t Cw = (C + 63) / 64;
  for (int64_t q = 0; q < Cw; ++q) {
    uint64_t words[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const int64_t cn = std::min<int64_t>(64, C - q * 64);
    for (int64_t c = 0; c < cn; ++c) {
      float x = src[q * 64 + c];
      if (do_clamp) x = std::min(std::max(x, -clampv), clampv);
      float approx = 0.f;
      for (int64_t i = 0; i < k; ++i) {
        const float r = x - approx;
        const bool neg = !(r >= 0.f);
        if (neg) words[i] |= uint64_t(1) << c;
        approx = approx + (neg ? -v[i] : v[i]);
      }
    }
    store_words(words, k, mask, cn, dst + q, plane_stride);
  }
}

#if LSQBQ_X86
template <>
LSQBQ_AVX512 inline __attribute__((always_inline)) void encode_pixel<true>(const float* src, int64_t C, const float* v, int64_t k, bool mask, float clampv,
                                     bool do_clamp, uint64_t* dst, int64_t plane_stride) {
  const int64_t Cw = (C + 63) / 64;
  const __m512 zero = _mm512_setzero_ps();
  const __m512 lo = _mm512_set1_ps(-clampv), hi = _mm512_set1_ps(clampv);
  for (int64_t q = 0; q < Cw; ++q) {
    uint64_t words[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int h = 0; h < 4; ++h) {
      const int64_t c0 = q * 64 + h * 16;
      const int64_t cn = std::min<int64_t>(16, C - c0);
      if (cn <= 0) break;
      const __mmask16 ld = cn == 16 ? __mmask16(0xFFFF) : __mmask16((1u << cn) - 1);
      __m512 x = _mm512_maskz_loadu_ps(ld, src + c0);
      if (do_clamp) x = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
      __m512 approx = zero;
      for (int64_t i = 0; i < k; ++i) {
        const __m512 r = _mm512_sub_ps(x, approx);
        const __mmask16 neg = _mm512_cmp_ps_mask(r, zero, _CMP_NGE_UQ) & ld;
        words[i] |= uint64_t(neg) << (16 * h);
        if (i + 1 < k) {
          const __m512 vi = _mm512_set1_ps(v[i]);
          approx = _mm512_add_ps(approx, _mm512_mask_blend_ps(neg, vi, _mm512_sub_ps(zero, vi)));
        }
      }
    }
    const int64_t cn = std::min<int64_t>(64, C - q * 64);
    store_words(words, k, mask, cn, dst + q, plane_stride);
  }
}
#endif

// One image row of W pixels (NHWC source, C floats per pixel) into W * Cw words per plane.
template <bool AVX>
void encode_row(const float* src, int64_t W, int64_t C, const float* v, int64_t k, bool mask, float clampv,
                bool do_clamp, uint64_t* dst, int64_t plane_stride) {
  const int64_t Cw = (C + 63) / 64;
  for (int64_t w = 0; w < W; ++w)
    encode_pixel<false>(src + w * C, C, v, k, mask, clampv, do_clamp, dst + w * Cw, plane_stride);
}

#if LSQBQ_X86
template <>
LSQBQ_AVX512 void encode_row<true>(const float* src, int64_t W, int64_t C, const float* v, int64_t k, bool mask,
                                   float clampv, bool do_clamp, uint64_t* dst, int64_t plane_stride) {
  const int64_t Cw = (C + 63) / 64;
  for (int64_t w = 0; w < W; ++w)
    encode_pixel<true>(src + w * C, C, v, k, mask, clampv, do_clamp, dst + w * Cw, plane_stride);
}
#endif

at::Tensor encode_cpu(const at::Tensor& x, const at::Tensor& scales, double clamp, int64_t planes, bool mask,
                      int64_t pad_h, int64_t pad_w, int64_t isa) {
  check_isa(isa);
  TORCH_CHECK(x.dim() == 4 || x.dim() == 2, "lsqbq: encode expects (B, C, H, W) or (B, n), got ", x.sizes());
  TORCH_CHECK(planes >= 1 && planes <= 8, "lsqbq: encode supports 1..8 planes, got ", planes);
  TORCH_CHECK(!mask || planes == 2, "lsqbq: the ternary mask encoding uses 2 scales (v, v)");
  TORCH_CHECK(x.scalar_type() == at::kFloat, "lsqbq: encode expects float32 activations");
  const bool two_d = x.dim() == 2;
  if (two_d) TORCH_CHECK(pad_h == 0 && pad_w == 0, "lsqbq: no padding for 2-D input");
  auto x4 = two_d ? x.contiguous().view({x.size(0), x.size(1), 1, 1}) : x.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t B = x4.size(0), C = x4.size(1), H = x4.size(2), W = x4.size(3);
  auto sc = scales.to(at::kFloat).contiguous();
  TORCH_CHECK(sc.dim() == 2 && sc.size(0) == B && sc.size(1) == planes, "lsqbq: scales must be (B, ", planes, "), got ",
              sc.sizes());
  const int64_t Cw = (C + 63) / 64, Hp = H + 2 * pad_h, Wp = W + 2 * pad_w;
  auto out = at::zeros({planes, B, Hp, Wp, Cw}, at::TensorOptions().dtype(at::kLong));
  const float* src = x4.data_ptr<float>();  // NHWC memory
  const float* v = sc.data_ptr<float>();
  uint64_t* dst = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  const int64_t plane_stride = B * Hp * Wp * Cw;
  const bool do_clamp = clamp > 0;
  const float cv = static_cast<float>(clamp);
  const bool use_avx = isa == kAvx512;
  at::parallel_for(0, B * H, 16, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const float* s = src + (b * H + h) * W * C;
      uint64_t* d = dst + ((b * Hp + h + pad_h) * Wp + pad_w) * Cw;
#if LSQBQ_X86
      if (use_avx) {
        encode_row<true>(s, W, C, v + b * planes, planes, mask, cv, do_clamp, d, plane_stride);
        continue;
      }
#endif
      encode_row<false>(s, W, C, v + b * planes, planes, mask, cv, do_clamp, d, plane_stride);
    }
  });
  return two_d ? out.view({planes, B, Cw}) : out;
}

// Register-only throughput of the binary inner loop (XOR, popcount, add on 512 or 64 bits), for the
// "fraction of peak" of the benchmark. Returns the number of binary multiply-accumulates performed
// (bits); a checksum feeds a volatile sink so nothing is optimised away.
#if LSQBQ_X86
LSQBQ_AVX512 int64_t peak_avx512(int64_t iters) {
  constexpr int U = 12;
  __m512i x[U], acc[U];
  for (int u = 0; u < U; ++u) {
    x[u] = _mm512_set1_epi64(0x9E3779B97F4A7C15ull * (u + 1));
    acc[u] = _mm512_setzero_si512();
  }
  __m512i w = _mm512_set1_epi64(0x0123456789ABCDEFll);
  for (int64_t it = 0; it < iters; ++it) {
    asm volatile("" : "+v"(w));  // the weight changes as far as the compiler knows: nothing is hoisted
#pragma GCC unroll 12
    for (int u = 0; u < U; ++u) acc[u] = _mm512_add_epi64(acc[u], _mm512_popcnt_epi64(_mm512_xor_si512(x[u], w)));
  }
  __m512i s = acc[0];
  for (int u = 1; u < U; ++u) s = _mm512_add_epi64(s, acc[u]);
  static volatile int64_t sink;
  sink = _mm512_reduce_add_epi64(s);
  return iters * U * 512;
}
#endif

int64_t peak_portable(int64_t iters) {
  constexpr int U = 8;
  uint64_t x[U], acc[U];
  for (int u = 0; u < U; ++u) { x[u] = 0x9E3779B97F4A7C15ull * (u + 1); acc[u] = 0; }
  uint64_t w = 0x0123456789ABCDEFull;
  for (int64_t it = 0; it < iters; ++it) {
    asm volatile("" : "+r"(w));
    for (int u = 0; u < U; ++u) acc[u] += popcount64(x[u] ^ w);
  }
  static volatile uint64_t sink;
  uint64_t s = 0;
  for (int u = 0; u < U; ++u) s += acc[u];
  sink = s;
  return iters * U * 64;
}

int64_t popcount_peak_cpu(int64_t iters, int64_t isa) {
  check_isa(isa);
#if LSQBQ_X86
  if (isa == kAvx512) return peak_avx512(iters);
#endif
  return peak_portable(iters);
}

bool isa_supported_cpu(int64_t isa) { return isa == kPortable || (isa == kAvx512 && avx512_supported()); }

}  // namespace
}  // namespace lsqbq

using namespace lsqbq;

TORCH_LIBRARY(lsqbq, m) {
  m.def("pack_signs(Tensor x) -> Tensor");
  m.def("encode(Tensor x, Tensor scales, float clamp, int planes, bool mask, int pad_h, int pad_w, int isa) -> Tensor");
  m.def("xnor_gemm(Tensor a, Tensor w, int n_out, int k, bool mask, int isa) -> Tensor");
  m.def("xnor_gemm_scaled(Tensor a, Tensor w, Tensor sa, Tensor sw, Tensor? bias, int n_out, int k, bool mask, "
        "int isa) -> Tensor");
  m.def("xnor_conv2d(Tensor a, Tensor w, Tensor wtap, int n_out, int c_in, int[] hw, int[] kernel, int[] stride, "
        "int[] padding, int[] dilation, bool mask, int isa) -> Tensor");
  m.def("xnor_conv2d_scaled(Tensor a, Tensor w, Tensor wtap, Tensor sa, Tensor sw, Tensor? bias, int n_out, "
        "int c_in, int[] hw, int[] kernel, int[] stride, int[] padding, int[] dilation, bool mask, int isa) -> Tensor");
  m.def("popcount_peak(int iters, int isa) -> int", &popcount_peak_cpu);
  m.def("isa_supported(int isa) -> bool", &isa_supported_cpu);
}

TORCH_LIBRARY_IMPL(lsqbq, CPU, m) {
  m.impl("pack_signs", &pack_signs_cpu);
  m.impl("encode", &encode_cpu);
  m.impl("xnor_gemm", &xnor_gemm_cpu);
  m.impl("xnor_gemm_scaled", &xnor_gemm_scaled_cpu);
  m.impl("xnor_conv2d", &xnor_conv2d_cpu);
  m.impl("xnor_conv2d_scaled", &xnor_conv2d_scaled_cpu);
}
