// The portable micro-kernel: scalar popcount per 64-bit word, in a generic x86-64 build (software popcount) and,
// chosen at run time on CPUs with the POPCNT instruction, the same code compiled for it; and its scalar epilogue.
// The AVX2 tile (tile_avx2.cpp) does the epilogue's integer and float operations in the same order on 8 channels
// at a time, so their outputs are equal bit for bit: a change here must be made there too
// (tests/kernels/test_avx2.py compares the bits).
#include <algorithm>
#include <cstring>

#include "job.h"

namespace lsqbq {
namespace {

// cnt: (rows, PA, NB) popcounts of one weight plane j for activation planes ig .. ig + PA - 1.
template <int PA>
inline __attribute__((always_inline)) void epilogue(const Job& J, const Rows& rw, int r0, int64_t m0, int rows,
                                                    int64_t p, int64_t j, int64_t ig, const int64_t* cnt, bool first) {
  const int64_t n0 = p * NB;
  const int64_t nv = std::min<int64_t>(NB, J.N - n0);
  const int64_t NPNB = J.NP * NB;
  for (int r = 0; r < rows; ++r) {
    const int64_t m = m0 + r;
    alignas(64) int32_t corr[NB];
    for (int n = 0; n < NB; ++n) corr[n] = 0;
    uint64_t inv = rw.inv[r0 + r];
    while (inv) {
      const int t = __builtin_ctzll(inv);
      inv &= inv - 1;
      const int32_t* wt = J.wtap + (j * J.T + t) * NPNB + n0;
      for (int n = 0; n < NB; ++n) corr[n] += wt[n];
    }
    const int32_t base = rw.count[r0 + r];
    if (J.out_i) {
      for (int i = 0; i < PA; ++i) {
        const int64_t* c = cnt + (r * PA + i) * NB;
        int32_t* o = J.out_i + (((ig + i) * J.pw + j) * J.M + m) * J.N + n0;
        alignas(64) int32_t d[NB];
        for (int n = 0; n < NB; ++n) d[n] = base - 2 * static_cast<int32_t>(c[n]) - corr[n];
        for (int64_t n = 0; n < nv; ++n) o[n] = d[n];
      }
    } else {
      const int64_t b = rw.b[r0 + r];
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

// Fused tail of the float epilogue on one finished tile (R rows x 32 channels, still in cache; see job.h):
//   y = out (+ res if res_first);  y = act(y) (ReLU: NaN stays NaN as torch.relu; PReLU: y > 0 ? y : a_n y);
//   y (+ res otherwise).  Branch-free, the activation chosen once per tile.
template <int ACT>
void finish_act(const Job& J, int64_t m0, int rows, int64_t p) {
  const int64_t n0 = p * NB;
  const int64_t nv = std::min<int64_t>(NB, J.N - n0);
  const bool pre = J.res && J.res_first, post = J.res && !J.res_first;
  for (int r = 0; r < rows; ++r) {
    const int64_t m = m0 + r;
    float* o = J.out_f + m * J.N + n0;
    const float* rs = J.res ? J.res + m * J.N + n0 : nullptr;
    for (int64_t n = 0; n < nv; ++n) {
      float y = o[n];
      if (pre) y = y + rs[n];
      if (ACT == 1) y = !(y <= 0.f) ? y : 0.f;
      if (ACT == 2) y = y > 0.f ? y : J.slope[(n0 + n) * J.slope_step] * y;
      if (post) y = y + rs[n];
      o[n] = y;
    }
  }
}


// ------------------------------------------------------------------------------- portable micro-kernel
template <int PA, bool MASK>
inline __attribute__((always_inline)) void tile_portable_body(const Job& J, const Rows& rw, int r0, int64_t m0,
                                                              int rows, int64_t p, int64_t j, int64_t ig, bool first) {
  alignas(64) int64_t cnt[RMAX * 2 * NB];
  std::memset(cnt, 0, sizeof(cnt));
  const uint64_t* wp = J.w + (j * J.NP + p) * J.KWt * NB;
  for (int r = 0; r < rows; ++r) {
    const uint64_t* row = J.a + rw.base[r0 + r] + (MASK ? 0 : ig * J.a_plane);
    const uint64_t* wk = wp;
    for (int64_t k = 0; k < J.KWt; ++k, wk += NB) {
      const uint64_t* at = row + J.koff[k];
      for (int i = 0; i < PA; ++i) {
        int64_t* cr = cnt + (r * PA + i) * NB;
        if (MASK) {
          const uint64_t s = at[0], mk = at[J.a_plane];
          for (int n = 0; n < NB; ++n) cr[n] += popcount64((s ^ wk[n]) & mk);
        } else {
          const uint64_t x = at[i * J.a_plane];
          for (int n = 0; n < NB; ++n) cr[n] += popcount64(x ^ wk[n]);
        }
      }
    }
  }
  epilogue<PA>(J, rw, r0, m0, rows, p, j, ig, cnt, first);
}

#if LSQBQ_X86
template <int PA, bool MASK>
LSQBQ_POPCNT void tile_portable_hw(const Job& J, const Rows& rw, int r0, int64_t m0, int rows, int64_t p, int64_t j,
                                   int64_t ig, bool first) {
  tile_portable_body<PA, MASK>(J, rw, r0, m0, rows, p, j, ig, first);
}
#endif

template <int PA, bool MASK>
void tile_pa(const Job& J, const Rows& rw, int r0, int64_t m0, int rows, int64_t p, int64_t j, int64_t ig,
             bool first) {
#if LSQBQ_X86
  if (J.hw_popcnt) return tile_portable_hw<PA, MASK>(J, rw, r0, m0, rows, p, j, ig, first);
#endif
  tile_portable_body<PA, MASK>(J, rw, r0, m0, rows, p, j, ig, first);  // generic x86-64 build
}

inline __attribute__((always_inline)) int64_t peak_portable_body(int64_t iters) {
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

#if LSQBQ_X86
LSQBQ_POPCNT int64_t peak_portable_hw(int64_t iters) { return peak_portable_body(iters); }
#endif

}  // namespace

void tile_portable(const Job& J, const Rows& rw, int r0, int64_t m0, int rows, int64_t p, int64_t j, int64_t ig,
                   bool first, int pa, bool mask) {
  if (mask) return tile_pa<1, true>(J, rw, r0, m0, rows, p, j, ig, first);
  if (pa == 2) return tile_pa<2, false>(J, rw, r0, m0, rows, p, j, ig, first);
  tile_pa<1, false>(J, rw, r0, m0, rows, p, j, ig, first);
}

void finish_portable(const Job& J, int64_t m0, int rows, int64_t p) {
  if (J.act == 1) return finish_act<1>(J, m0, rows, p);
  if (J.act == 2) return finish_act<2>(J, m0, rows, p);
  finish_act<0>(J, m0, rows, p);
}

int64_t peak_portable(int64_t iters) {
#if LSQBQ_X86
  if (popcnt_supported()) return peak_portable_hw(iters);
#endif
  return peak_portable_body(iters);
}

}  // namespace lsqbq
