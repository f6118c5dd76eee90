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
// Layer op (bitwise_conv2d): one call per layer does the fused activation encode (optional BatchNorm prologue,
// clamp, per-sample scales -- given, greedy mean|r| in float64 lanes fused with the encode passes, or the exact
// ls-2 / ls-T fit without a full sort -- sign planes and padding), the convolution on the packed NHWC words (no
// im2col copy: each output row reads its taps in place) and the float epilogue (scales, bias, BatchNorm folded by
// the caller, ReLU / PReLU, residual add before or after the activation), writing NHWC float output.
//
// Back ends in this one file: a portable C++ path, and AVX-512 VPOPCNTDQ micro-kernels compiled with function
// target attributes and chosen at run time (__builtin_cpu_supports); no -march flags are needed. Threads come
// from a small work-claiming pool (see Pool): tiles of output rows x 32 channels, so batch 1 uses every thread.
// The ops join the namespace torch.ops.lsqbq defined with the quantizers (lsqbq/csrc/quant.cpp), in one library.
#include <ATen/core/Tensor.h>
#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <mutex>
#include <thread>
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

// The portable kernels come in two builds: generic x86-64 (software popcount, a libgcc call per word) and, chosen
// at run time on every CPU with the POPCNT instruction (x86-64-v2 and later), the same code compiled for it.
// LSQBQ_POPCNT=0 forces the generic build (so tests cover it on any CPU).
bool popcnt_supported() {
#if LSQBQ_X86
  static const bool ok = __builtin_cpu_supports("popcnt") && [] {
    const char* env = std::getenv("LSQBQ_POPCNT");
    return env == nullptr || std::strcmp(env, "0") != 0;
  }();
  return ok;
#else
  return false;
#endif
}

void check_isa(int64_t isa) {
  TORCH_CHECK(isa == kPortable || isa == kAvx512, "lsqbq: unknown kernel isa ", isa);
  TORCH_CHECK(isa != kAvx512 || avx512_supported(), "lsqbq: AVX-512 VPOPCNTDQ kernels requested but this CPU lacks them");
}

inline __attribute__((always_inline)) int popcount64(uint64_t x) { return __builtin_popcountll(x); }

#if LSQBQ_X86
// Mask of the first min(k, 16) of 16 lanes (k >= 0): the tail of a row in 16-float vectors.
inline __mmask16 first_lanes(int64_t k) { return static_cast<__mmask16>(k >= 16 ? 0xffffu : (1u << k) - 1); }
#endif

// ------------------------------------------------------------------------------------------- threads
// Work-claiming pool: a call is split into chunks of `grain` indices that threads claim from an atomic counter.
// The calling thread always works too and waits only for workers that actually claimed a chunk, so a worker that
// is descheduled (a loaded machine) or still asleep costs nothing: with T threads a call is never slower than the
// calling thread alone plus one chunk. (OpenMP's static split waits at the join for every thread.) Workers spin
// briefly after a job, so back-to-back layers find them awake, then sleep. Chunks are fixed ranges, and every
// output is computed by exactly one chunk, so results do not depend on the thread count.
class Pool {
 public:
  static Pool& get() {
    static Pool* pool = [] {
      pthread_atfork(nullptr, nullptr, [] { fork_child = true; });  // a forked child runs calls inline
      return new Pool();  // never destroyed: workers live as long as the process
    }();
    return *pool;
  }

  // fn(begin, end) over [0, n) in chunks of grain, on up to `threads` threads (the caller included).
  template <class F>
  void run(int64_t n, int64_t grain, int64_t threads, const F& fn) {
    grain = std::max<int64_t>(1, grain);
    if (threads <= 1 || n <= grain || in_worker || fork_child || at::in_parallel_region()) {
      if (n > 0) fn(0, n);
      return;
    }
    if (backoff_left_.load(std::memory_order_relaxed) > 0) {  // workers were late recently: stay inline a while
      backoff_left_.fetch_sub(1, std::memory_order_relaxed);
      fn(0, n);
      return;
    }
    std::unique_lock<std::mutex> serial(run_mutex_, std::try_to_lock);  // one pooled call at a time
    if (!serial.owns_lock()) {
      fn(0, n);
      return;
    }
    Task t;
    t.fn = [&fn](int64_t b, int64_t e) { fn(b, e); };
    t.n = n;
    t.grain = grain;
    t.slots = static_cast<int>(std::min<int64_t>(threads - 1, (n + grain - 1) / grain - 1));
    if (t.slots <= 0) {
      fn(0, n);
      return;
    }
    {
      std::lock_guard<std::mutex> lk(m_);
      while (static_cast<int64_t>(workers_.size()) < t.slots) workers_.emplace_back([this] { loop(); });
      task_ = &t;
      gen_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    const auto t0 = std::chrono::steady_clock::now();
    work(t);
    {
      std::lock_guard<std::mutex> lk(m_);
      task_ = nullptr;  // late workers find nothing to join
    }
    const auto t1 = std::chrono::steady_clock::now();
    while (t.active.load(std::memory_order_acquire) != 0) cpu_relax();
    const auto t2 = std::chrono::steady_clock::now();
    // A worker that claimed a chunk and was then descheduled (a loaded machine) makes the caller wait; when the
    // wait exceeds a quarter of the caller's own work, run the next calls inline (8, 16, ... up to 4096 of them,
    // doubling while it keeps happening), so more threads cost little where they cannot help.
    if (t2 - t1 > (t1 - t0) / 4 + std::chrono::microseconds(20)) {
      backoff_len_ = std::min(backoff_len_ * 2, 4096);
      backoff_left_.store(backoff_len_, std::memory_order_relaxed);
    } else {
      backoff_len_ = 4;
    }
    if (t.error) std::rethrow_exception(t.error);
  }

 private:
  struct Task {
    std::function<void(int64_t, int64_t)> fn;
    int64_t n = 0, grain = 1;
    std::atomic<int64_t> next{0};
    std::atomic<int> active{0};
    int slots = 0;  // workers that may still join (guarded by m_)
    std::exception_ptr error;
    std::mutex error_m;
  };

  static void cpu_relax() {
#if LSQBQ_X86
    __builtin_ia32_pause();
#endif
  }

  static void work(Task& t) {
    for (;;) {
      const int64_t b = t.next.fetch_add(t.grain, std::memory_order_relaxed);
      if (b >= t.n) return;
      try {
        t.fn(b, std::min(t.n, b + t.grain));
      } catch (...) {
        std::lock_guard<std::mutex> lk(t.error_m);
        if (!t.error) t.error = std::current_exception();
        t.next.store(t.n, std::memory_order_relaxed);
      }
    }
  }

  void loop() {
    in_worker = true;
    uint64_t seen = gen_.load(std::memory_order_acquire);
    for (;;) {
      for (int spin = 0; spin < kSpin && gen_.load(std::memory_order_acquire) == seen; ++spin) cpu_relax();
      Task* t = nullptr;
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return gen_.load(std::memory_order_acquire) != seen; });
        seen = gen_.load(std::memory_order_acquire);
        if (task_ && task_->slots > 0) {
          t = task_;
          --t->slots;
          t->active.fetch_add(1, std::memory_order_acq_rel);
        }
      }
      if (t) {
        work(*t);
        t->active.fetch_sub(1, std::memory_order_acq_rel);
      }
    }
  }

  static constexpr int kSpin = 1 << 10;  // ~10-20 us of pause instructions before sleeping
  static inline thread_local bool in_worker = false;
  static inline bool fork_child = false;
  std::atomic<int> backoff_left_{0};
  int backoff_len_ = 4;  // guarded by run_mutex_
  std::mutex run_mutex_, m_;
  std::condition_variable cv_;
  std::atomic<uint64_t> gen_{0};
  Task* task_ = nullptr;
  std::vector<std::thread> workers_;
};

// fn(begin, end) over [0, n) on torch's thread count (torch.set_num_threads).
// fn(begin, end) over [0, n) in chunks of grain, on torch's thread count (torch.set_num_threads); calls whose whole
// work (`work`, in the caller's units) is below `min_work` run on the calling thread, as waking a thread costs more.
template <class F>
void parallel(int64_t n, int64_t grain, int64_t work, int64_t min_work, const F& fn) {
  Pool::get().run(n, grain, work < min_work ? 1 : at::get_num_threads(), fn);
}

// ------------------------------------------------------------------------------------------------ job

#if LSQBQ_X86
__attribute__((target("popcnt"))) int32_t mask_count_hw(const uint64_t* mp, const int64_t* koff, int64_t n) {
  int64_t s = 0;
  for (int64_t k = 0; k < n; ++k) s += _mm_popcnt_u64(mp[koff[k]]);
  return static_cast<int32_t>(s);
}
#endif

// Number of set mask bits over a row's receptive field (the length of a ternary dot product).
inline int32_t mask_count(const uint64_t* mp, const int64_t* koff, int64_t n, bool hw) {
#if LSQBQ_X86
  if (hw) return mask_count_hw(mp, koff, n);
#endif
  int32_t s = 0;
  for (int64_t k = 0; k < n; ++k) s += popcount64(mp[koff[k]]);
  return s;
}

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
  int64_t pa_logical() const { return mask ? 1 : pa; }

  std::vector<int64_t> koff;       // (KWt) word offset of k word (tap t, word c) from a row's base: tap_off[t] + c
  bool hw_popcnt = false;          // the CPU has POPCNT (the AVX-512 path): count mask bits with it

  // Rows m0 .. m0 + n - 1 of a tile: word offset of each receptive field (top-left tap) in a plane, taps falling
  // into the zero padding (sign planes; the mask encoding pads with mask 0 and needs no correction), dot-product
  // length (K, or the popcount of the ternary mask over the window) and sample. Three divisions per tile; the rows
  // are stepped in (b, oh, ow) order.
  struct Rows {
    int64_t base[RMAX], b[RMAX];
    uint64_t inv[RMAX];
    int32_t count[RMAX];
  };
  void rows(int64_t m0, int n, Rows& out) const {
    int64_t b = m0 / rows_per_sample;
    const int64_t r = m0 - b * rows_per_sample;
    int64_t oh = r / OW, ow = r - (r / OW) * OW;
    for (int i = 0; i < n; ++i) {
      const int64_t base = ((b * Hp + oh * sh) * Wp + ow * sw) * Cw;
      out.base[i] = base;
      out.b[i] = b;
      out.inv[i] = (padded && !mask) ? (inv_h[oh] | inv_w[ow]) : 0;
      int32_t cnt = K;
      if (mask) cnt = mask_count(a + a_plane + base, koff.data(), KWt, hw_popcnt);
      out.count[i] = cnt;
      if (++ow == OW) {
        ow = 0;
        if (++oh == OH) {
          oh = 0;
          ++b;
        }
      }
    }
  }
};
using Rows = Job::Rows;

// ------------------------------------------------------------------------------------------- epilogue
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
  epilogue<PA>(J, rw, r0, m0, rows, p, j, ig, cnt, first);
}

#if LSQBQ_X86
template <int PA, bool MASK>
__attribute__((target("popcnt"))) void tile_portable_hw(const Job& J, const Rows& rw, int r0, int64_t m0, int rows,
                                                        int64_t p, int64_t j, int64_t ig, bool first) {
  tile_portable_body<PA, MASK>(J, rw, r0, m0, rows, p, j, ig, first);
}
#endif

template <int PA, bool MASK>
void tile_portable(const Job& J, const Rows& rw, int r0, int64_t m0, int rows, int64_t p, int64_t j, int64_t ig,
                   bool first) {
#if LSQBQ_X86
  if (J.hw_popcnt) return tile_portable_hw<PA, MASK>(J, rw, r0, m0, rows, p, j, ig, first);
#endif
  tile_portable_body<PA, MASK>(J, rw, r0, m0, rows, p, j, ig, first);  // generic x86-64 build
}

// ------------------------------------------------------------------------------- AVX-512 micro-kernel
#if LSQBQ_X86
// R rows x 32 output channels x PA activation planes, weights loaded once per k word and shared by all rows
// and planes. Accumulators: R * PA * 4 zmm (<= 24), + 4 weight registers + broadcasts.
template <int R, int PA, bool MASK>
LSQBQ_AVX512 void tile_avx512_r(const Job& J, const Rows& rw, int r0, int64_t m0, int64_t p, int64_t j, int64_t ig,
                                bool first) {
  __m512i acc[R][PA][4];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
    for (int i = 0; i < PA; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) acc[r][i][v] = _mm512_setzero_si512();
  const uint64_t* rowp[R];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) rowp[r] = J.a + rw.base[r0 + r] + (MASK ? 0 : ig * J.a_plane);
  const int64_t ap = J.a_plane;
  const int64_t* koff = J.koff.data();
  const uint64_t* wk = J.w + (j * J.NP + p) * J.KWt * NB;
  for (int64_t k = 0; k < J.KWt; ++k, wk += NB) {
    const int64_t off = koff[k];
    {
      const __m512i w0 = _mm512_loadu_si512(wk), w1 = _mm512_loadu_si512(wk + 8);
      const __m512i w2 = _mm512_loadu_si512(wk + 16), w3 = _mm512_loadu_si512(wk + 24);
#pragma GCC unroll 32
      for (int r = 0; r < R; ++r) {
        const uint64_t* at = rowp[r] + off;
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
    const __m512i basev = _mm512_set1_epi64(rw.count[r0 + r]);
    __m256i corr[4];
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) corr[v] = _mm256_setzero_si256();
    uint64_t inv = MASK ? 0 : rw.inv[r0 + r];
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
      // d = count - 2 popcount - corr in float: every term is an integer below 2^24, so each step is exact and
      // d equals the integer path's value; then accf = sum_i sa_i d_i (one rounding per plane, as before).
      const int64_t b = rw.b[r0 + r];
      const int64_t pal = J.pa_logical();
      const bool corrected = !MASK && rw.inv[r0 + r] != 0;
      const __m256 basef = _mm256_set1_ps(static_cast<float>(rw.count[r0 + r]));
      const __m256 minus2 = _mm256_set1_ps(-2.0f);
      __m256 accf[4];
#pragma GCC unroll 4
      for (int i = 0; i < PA; ++i) {
        const __m256 s = _mm256_set1_ps(J.sa[b * pal + ig + i]);
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) {
          __m256 df = _mm256_fmadd_ps(_mm512_cvtepi64_ps(acc[r][i][v]), minus2, basef);
          if (corrected) df = _mm256_sub_ps(df, _mm256_cvtepi32_ps(corr[v]));
          accf[v] = i == 0 ? _mm256_mul_ps(s, df) : _mm256_fmadd_ps(s, df, accf[v]);
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
LSQBQ_AVX512 void tile_avx512(const Job& J, const Rows& rw, int r0, int64_t m0, int rows, int64_t p, int64_t j,
                              int64_t ig, bool first) {
  switch (rows) {
    case 1: tile_avx512_r<1, PA, MASK>(J, rw, r0, m0, p, j, ig, first); break;
    case 2: tile_avx512_r<2, PA, MASK>(J, rw, r0, m0, p, j, ig, first); break;
    case 3: tile_avx512_r<3, PA, MASK>(J, rw, r0, m0, p, j, ig, first); break;
    case 4: if constexpr (PA == 1) { tile_avx512_r<4, PA, MASK>(J, rw, r0, m0, p, j, ig, first); } break;
    case 5: if constexpr (PA == 1) { tile_avx512_r<5, PA, MASK>(J, rw, r0, m0, p, j, ig, first); } break;
    case 6: if constexpr (PA == 1) { tile_avx512_r<6, PA, MASK>(J, rw, r0, m0, p, j, ig, first); } break;
    default: TORCH_CHECK(false, "lsqbq: bad tile height ", rows);
  }
}
#endif

template <int PA, bool MASK>
void tile(const Job& J, const Rows& rw, int r0, int64_t isa, int64_t m0, int rows, int64_t p, int64_t j, int64_t ig,
          bool first) {
#if LSQBQ_X86
  if (isa == kAvx512) return tile_avx512<PA, MASK>(J, rw, r0, m0, rows, p, j, ig, first);
#endif
  tile_portable<PA, MASK>(J, rw, r0, m0, rows, p, j, ig, first);
}

// Fused tail of the float epilogue on one finished tile (R rows x 32 channels, still in cache):
//   y = out (+ res if res_first);  y = act(y) (ReLU: NaN stays NaN as torch.relu; PReLU: y > 0 ? y : a_n y);
//   y (+ res otherwise).  Branch-free, the activation chosen once per tile.
template <int ACT>
void finish_portable(const Job& J, int64_t m0, int rows, int64_t p) {
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

#if LSQBQ_X86
template <int ACT>
LSQBQ_AVX512 void finish_avx512(const Job& J, int64_t m0, int rows, int64_t p) {
  const int64_t n0 = p * NB;
  const __m512 zero = _mm512_setzero_ps();
  __mmask16 lm[2];
  __m512 slope[2];
  for (int v = 0; v < 2; ++v) {
    const int64_t left = std::max<int64_t>(0, std::min<int64_t>(16, J.N - n0 - 16 * v));
    lm[v] = static_cast<__mmask16>((1u << left) - 1);
    if (ACT == 2)
      slope[v] = J.slope_step ? _mm512_maskz_loadu_ps(lm[v], J.slope + n0 + 16 * v) : _mm512_set1_ps(J.slope[0]);
  }
  const bool pre = J.res && J.res_first, post = J.res && !J.res_first;
  for (int r = 0; r < rows; ++r) {
    const int64_t m = m0 + r;
    float* o = J.out_f + m * J.N + n0;
    const float* rs = J.res ? J.res + m * J.N + n0 : nullptr;
    for (int v = 0; v < 2; ++v) {
      if (!lm[v]) break;
      __m512 y = _mm512_maskz_loadu_ps(lm[v], o + 16 * v);
      if (pre) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(lm[v], rs + 16 * v));
      if (ACT == 1) y = _mm512_max_ps(zero, y);  // NaN (second operand) passes through
      if (ACT == 2) y = _mm512_mask_mul_ps(y, _mm512_cmp_ps_mask(y, zero, _CMP_NGT_UQ), slope[v], y);
      if (post) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(lm[v], rs + 16 * v));
      _mm512_mask_storeu_ps(o + 16 * v, lm[v], y);
    }
  }
}
#endif

void finish(const Job& J, int64_t isa, int64_t m0, int rows, int64_t p) {
#if LSQBQ_X86
  if (isa == kAvx512) {
    if (J.act == 1) return finish_avx512<1>(J, m0, rows, p);
    if (J.act == 2) return finish_avx512<2>(J, m0, rows, p);
    return finish_avx512<0>(J, m0, rows, p);
  }
#endif
  if (J.act == 1) return finish_portable<1>(J, m0, rows, p);
  if (J.act == 2) return finish_portable<2>(J, m0, rows, p);
  finish_portable<0>(J, m0, rows, p);
}

// Tiles: (row block, weight panel); per tile all weight planes j and activation plane groups, so a tile owns its
// output block and the float epilogue can accumulate sum_ij without races. Threads split the tiles (not the
// batch), so batch 1 uses every thread; the grain keeps at least ~64k word ops per task so that small layers do
// not pay for waking threads they cannot use. Every output element is computed by one task in a fixed order, so
// results do not depend on the thread count.
void run(const Job& J, int64_t isa) {
  const int64_t R = (J.mask || J.pa == 1) ? RMAX : RMAX / 2;
  const int64_t ntiles = (J.M + R - 1) / R;
  const int64_t total = ntiles * J.NP;
  const int64_t work = R * NB * J.KWt * J.pw * J.pa;  // word ops per task
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, work));
  const bool fused = J.out_f && (J.act != 0 || J.res != nullptr);
  // below ~1M word ops (tens of microseconds) one thread is faster than waking another
  parallel(total, grain, total * work, int64_t(1) << 20, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      // panels outer: a weight panel stays in cache while the row tiles stream past it (panels inner made the
      // portable 2x1 / 2x2 GEMMs 1.7-1.9x slower where L2 cannot hold all panels: 512 KB against 590 KB at 512@7x7)
      const int64_t p = idx / ntiles, tl = idx % ntiles;
      const int64_t m0 = tl * R;
      const int rows = static_cast<int>(std::min<int64_t>(R, J.M - m0));
      Rows rw;
      J.rows(m0, rows, rw);
      for (int64_t j = 0; j < J.pw; ++j) {
        if (J.mask) {
          tile<1, true>(J, rw, 0, isa, m0, rows, p, j, 0, j == 0);
          continue;
        }
        int64_t ig = 0;
        for (; ig + 2 <= J.pa; ig += 2) {
          // two activation planes share every weight load; tiles of up to 3 rows
          for (int r0 = 0; r0 < rows; r0 += 3)
            tile<2, false>(J, rw, r0, isa, m0 + r0, std::min(3, rows - r0), p, j, ig, j == 0 && ig == 0);
        }
        if (ig < J.pa) tile<1, false>(J, rw, 0, isa, m0, rows, p, j, ig, j == 0 && ig == 0);
      }
      if (fused) finish(J, isa, m0, rows, p);
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
    TORCH_CHECK(wtap.defined() && wtap.scalar_type() == at::kInt && wtap.is_contiguous() &&
                    wtap.numel() == J.pw * J.T * J.NP * NB,
                "lsqbq: padded sign-plane convolution needs tap sums (P_w, T, NP * 32) int32");
    J.wtap = wtap.data_ptr<int32_t>();
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

// Store one 64-channel word of planes first..last: sign planes, or (mask) sign + non-zero mask of a ternary pair
// (non-zero where the two signs agree; bits past the last channel cn stay 0).
inline void store_words(const uint64_t* words, int first, int last, bool mask, int64_t cn, uint64_t* dst,
                        int64_t plane_stride) {
  if (mask) {
    const uint64_t valid = cn == 64 ? ~uint64_t(0) : ((uint64_t(1) << cn) - 1);
    dst[0] = words[0];
    dst[plane_stride] = ~(words[0] ^ words[1]) & valid;
  } else {
    for (int i = first; i <= last; ++i) dst[i * plane_stride] = words[i];
  }
}

// ------------------------------------------------------------------------------------- activation encode
// Per element x of a pixel's channel c, the float operations of the simulated layer (BatchNorm in front, then
// QuantConv2d.quantize_input), in the same order and rounding:
//   y   = fma(x, a_c, b_c)                 optional BatchNorm: a = rsqrt(var + eps) w, b = fma(-mean, a, bias)
//   y   = min(max(y, -clamp), clamp)       optional clamp (NaN stays NaN, as torch.clamp)
//   r_1 = y, bit_i = NOT (r_i >= 0), approx_i = approx_{i-1} + (bit_i ? -v_i : v_i), r_{i+1} = y - approx_i.
// A greedy fit (ls-1 = gf-1, gf-k) needs v_i = mean |r_i| over the sample: pass i adds |r_i| (float) in float64
// to lane (c mod 16) in pixel order and channel order, so the AVX-512 path (two 8-lane double accumulators) and
// the portable path add the same numbers in the same order and give the same scales bit for bit. Lanes are
// summed in lane order per image row, rows in order per sample: a fixed order, whatever the thread count.
struct Enc {
  const float* x = nullptr;  // (B, H, W, C) NHWC memory
  int64_t B = 0, C = 0, H = 0, W = 0, Cw = 0;
  const float* in_a = nullptr;  // (C) prologue scale, or null
  const float* in_b = nullptr;  // (C) prologue shift
  float cv = 0.f;
  bool do_clamp = false;
  bool mask = false;            // ternary: planes 0, 1 are stored as (sign, non-zero mask)
  uint64_t* dst = nullptr;      // (P, B, Hp, Wp, Cw)
  int64_t Hp = 0, Wp = 0, ph = 0, pw = 0, plane_stride = 0;
  const float* row_src(int64_t b, int64_t h) const { return x + (b * H + h) * W * C; }
  uint64_t* row_dst(int64_t b, int64_t h) const { return dst + ((b * Hp + h + ph) * Wp + pw) * Cw; }
};

inline float prologue(const Enc& E, float y, int64_t c) {
  if (E.in_a) y = std::fma(y, E.in_a[c], E.in_b[c]);
  if (E.do_clamp) y = std::min(std::max(y, -E.cv), E.cv);
  return y;
}

// One image row (b, h): writes planes first..last of its W pixels from the scales v (v[0..last-1] are read);
// with lanes, adds |r_last| to lanes[c mod 16] (lanes hold 0 on entry).
template <bool AVX>
void enc_row(const Enc& E, int64_t b, int64_t h, const float* v, int first, int last, double* lanes);

template <>
void enc_row<false>(const Enc& E, int64_t b, int64_t h, const float* v, int first, int last, double* lanes) {
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

#if LSQBQ_X86
// The first plane (sign of y; no scales needed) and, with lanes, the sum of |y|: ls-1 in one pass, and the first
// pass of a greedy fit. Same operations and lane order as the general row below.
LSQBQ_AVX512 void enc_row_first(const Enc& E, int64_t b, int64_t h, double* lanes) {
  const float* src = E.row_src(b, h);
  uint64_t* d = E.row_dst(b, h);
  const __m512 zero = _mm512_setzero_ps();
  const __m512 lo = _mm512_set1_ps(-E.cv), hi = _mm512_set1_ps(E.cv);
  __m512d acc_lo = _mm512_setzero_pd(), acc_hi = _mm512_setzero_pd();
  const int64_t C = E.C, Cw = E.Cw;
  for (int64_t w = 0; w < E.W; ++w) {
    const float* px = src + w * C;
    for (int64_t q = 0; q < Cw; ++q) {
      uint64_t word = 0;
#pragma GCC unroll 4
      for (int g = 0; g < 4; ++g) {
        const int64_t c0 = q * 64 + g * 16;
        const int64_t cn = std::min<int64_t>(16, C - c0);
        if (cn <= 0) break;
        const __mmask16 ld = first_lanes(cn);
        __m512 y = _mm512_maskz_loadu_ps(ld, px + c0);
        if (E.in_a)
          y = _mm512_fmadd_ps(y, _mm512_maskz_loadu_ps(ld, E.in_a + c0), _mm512_maskz_loadu_ps(ld, E.in_b + c0));
        if (E.do_clamp) y = _mm512_min_ps(hi, _mm512_max_ps(lo, y));
        word |= uint64_t(_mm512_cmp_ps_mask(y, zero, _CMP_NGE_UQ) & ld) << (16 * g);
        if (lanes) {
          const __m512 ar = _mm512_maskz_mov_ps(ld, _mm512_abs_ps(y));
          acc_lo = _mm512_add_pd(acc_lo, _mm512_cvtps_pd(_mm512_castps512_ps256(ar)));
          acc_hi = _mm512_add_pd(acc_hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(ar), 1))));
        }
      }
      d[w * Cw + q] = word;
    }
  }
  if (lanes) {
    _mm512_storeu_pd(lanes, acc_lo);
    _mm512_storeu_pd(lanes + 8, acc_hi);
  }
}

template <>
LSQBQ_AVX512 void enc_row<true>(const Enc& E, int64_t b, int64_t h, const float* v, int first, int last,
                                double* lanes) {
  if (last == 0 && !E.mask) return enc_row_first(E, b, h, lanes);
  const float* src = E.row_src(b, h);
  uint64_t* d = E.row_dst(b, h);
  const __m512 zero = _mm512_setzero_ps();
  const __m512 lo = _mm512_set1_ps(-E.cv), hi = _mm512_set1_ps(E.cv);
  __m512 vp[8], vn[8];
  for (int i = 0; i < last; ++i) {
    vp[i] = _mm512_set1_ps(v[i]);
    vn[i] = _mm512_sub_ps(zero, vp[i]);
  }
  __m512d acc_lo = _mm512_setzero_pd(), acc_hi = _mm512_setzero_pd();
  for (int64_t w = 0; w < E.W; ++w) {
    const float* px = src + w * E.C;
    for (int64_t q = 0; q < E.Cw; ++q) {
      uint64_t words[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int g = 0; g < 4; ++g) {
        const int64_t c0 = q * 64 + g * 16;
        const int64_t cn = std::min<int64_t>(16, E.C - c0);
        if (cn <= 0) break;
        const __mmask16 ld = first_lanes(cn);
        __m512 y = _mm512_maskz_loadu_ps(ld, px + c0);
        if (E.in_a)
          y = _mm512_fmadd_ps(y, _mm512_maskz_loadu_ps(ld, E.in_a + c0), _mm512_maskz_loadu_ps(ld, E.in_b + c0));
        if (E.do_clamp) y = _mm512_min_ps(hi, _mm512_max_ps(lo, y));  // NaN (second operand) passes through
        __m512 approx = zero, r = y;
        for (int i = 0; i <= last; ++i) {
          r = _mm512_sub_ps(y, approx);
          const __mmask16 neg = _mm512_cmp_ps_mask(r, zero, _CMP_NGE_UQ) & ld;
          if (i >= first) words[i] |= uint64_t(neg) << (16 * g);
          if (i < last) approx = _mm512_add_ps(approx, _mm512_mask_blend_ps(neg, vp[i], vn[i]));
        }
        if (lanes) {
          const __m512 ar = _mm512_maskz_mov_ps(ld, _mm512_abs_ps(r));
          acc_lo = _mm512_add_pd(acc_lo, _mm512_cvtps_pd(_mm512_castps512_ps256(ar)));
          acc_hi = _mm512_add_pd(acc_hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(ar), 1))));
        }
      }
      store_words(words, first, last, E.mask, std::min<int64_t>(64, E.C - q * 64), d + w * E.Cw + q, E.plane_stride);
    }
  }
  if (lanes) {
    _mm512_storeu_pd(lanes, acc_lo);
    _mm512_storeu_pd(lanes + 8, acc_hi);
  }
}

// y = clamp(fma(x, a, b)) of one image row into out (W * C floats), for the exact fits that sort y.
LSQBQ_AVX512 void prologue_row_avx512(const Enc& E, int64_t b, int64_t h, float* out) {
  const float* src = E.row_src(b, h);
  const __m512 lo = _mm512_set1_ps(-E.cv), hi = _mm512_set1_ps(E.cv);
  for (int64_t w = 0; w < E.W; ++w)
    for (int64_t c0 = 0; c0 < E.C; c0 += 16) {
      const int64_t cn = std::min<int64_t>(16, E.C - c0);
      const __mmask16 ld = first_lanes(cn);
      __m512 y = _mm512_maskz_loadu_ps(ld, src + w * E.C + c0);
      if (E.in_a)
        y = _mm512_fmadd_ps(y, _mm512_maskz_loadu_ps(ld, E.in_a + c0), _mm512_maskz_loadu_ps(ld, E.in_b + c0));
      if (E.do_clamp) y = _mm512_min_ps(hi, _mm512_max_ps(lo, y));
      _mm512_mask_storeu_ps(out + w * E.C + c0, ld, y);
    }
}
#endif

void prologue_row(const Enc& E, int64_t b, int64_t h, float* out, bool avx) {
#if LSQBQ_X86
  if (avx) return prologue_row_avx512(E, b, h, out);
#endif
  const float* src = E.row_src(b, h);
  for (int64_t e = 0; e < E.W * E.C; ++e) out[e] = prologue(E, src[e], e % E.C);
}

void enc_row_isa(const Enc& E, int64_t b, int64_t h, const float* v, int first, int last, double* lanes, bool avx) {
#if LSQBQ_X86
  if (avx) return enc_row<true>(E, b, h, v, first, last, lanes);
#endif
  enc_row<false>(E, b, h, v, first, last, lanes);
}

// Image rows per task: at least ~16k elements; activations under kMinEncodeWork elements stay on one thread.
inline int64_t row_grain(const Enc& E) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, E.W * E.C)); }
constexpr int64_t kMinEncodeWork = int64_t(1) << 16;

enum Fit : int64_t { kGiven = 0, kGreedy = 1, kLs2 = 2, kTernary = 3 };

// Given scales: one pass. sc: (B, planes) with row stride sstride (0: one row for every sample).
void encode_given(const Enc& E, int64_t planes, const float* sc, int64_t sstride, bool avx) {
  parallel(E.B * E.H, row_grain(E), E.B * E.H * E.W * E.C, kMinEncodeWork, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh)
      enc_row_isa(E, bh / E.H, bh % E.H, sc + (bh / E.H) * sstride, 0, static_cast<int>(planes - 1), nullptr, avx);
  });
}

// Greedy fit fused with the encode: pass i writes plane i and sums |r_i|; v_i = (float)(sum / n) per sample,
// exactly fit_greedy's formula. v: (B, planes) output. Cost: planes passes over x, O(planes^2 n) flops.
void encode_greedy(const Enc& E, int64_t planes, float* v, bool avx) {
  const int64_t rows = E.B * E.H;
  const double n = static_cast<double>(E.C * E.H * E.W);
  std::vector<double> partial(rows);
  for (int64_t i = 0; i < planes; ++i) {
    parallel(rows, row_grain(E), rows * E.W * E.C, kMinEncodeWork, [&](int64_t begin, int64_t end) {
      for (int64_t bh = begin; bh < end; ++bh) {
        double lanes[16] = {0};
        enc_row_isa(E, bh / E.H, bh % E.H, v + (bh / E.H) * planes, static_cast<int>(i), static_cast<int>(i), lanes,
                    avx);
        double s = 0.0;
        for (int l = 0; l < 16; ++l) s += lanes[l];
        partial[bh] = s;
      }
    });
    for (int64_t b = 0; b < E.B; ++b) {
      double total = 0.0;
      for (int64_t h = 0; h < E.H; ++h) total += partial[b * E.H + h];
      v[b * planes + i] = static_cast<float>(total / n);
    }
  }
}

// ------------------------------------------------------------------------------ exact fits without a full sort
// The exact ls-2 / ls-T fits of the quantizer library (lsqbq/csrc/quant.cpp, the simulated layers' fit) sort the
// magnitudes a_(1) <= ... <= a_(n), take float64 prefix sums S_j and scan every split j = 0..n-1 for the first
// maximiser of  ternary: (S_n - S_j)^2 / (n - j),  ls-2: S_j^2 / j + (S_n - S_j)^2 / (n - j).
// Fact used here: in ascending order every float64 addition is exact. Adding a_(j) to S_{j-1} <= (j-1) a_(j), the
// sum's exponent exceeds a_(j)'s by at most log2(j) < 29 bits, and a float32 carries 24, so nothing is rounded
// (n < 2^29). Hence S_j is the exact sum of the j smallest magnitudes whatever the order of additions, and
// sums over value buckets are exact too. So: one pass buckets the magnitudes by exponent and up to 6 significand
// bits (a bucket's values lie within a factor 1 + 2^-m), with exact bucket counts and sums; the exact S_j at
// every bucket boundary gives exact gains there (a lower bound on the best); an upper bound of the gain inside each
// bucket (from its value range) discards buckets that cannot hold the maximiser; a large surviving bucket is split
// once more by the next 6 significand bits and bounded the same way; what survives is sorted and scanned with the
// scan's own float64 expressions. The result equals the full-sort fit bit for bit.
// Cost: O(n) plus sorting the surviving values (typically tens) instead of O(n) radix passes.
// Three passes over the row: the key range (vectorised); the bucket histogram (one packed 64-bit add per value,
// interleaved over four copies, two in the portable path, so that runs of values in one bucket, such as the zeros
// after a ReLU, do not wait on each other's stores); the gather of the surviving buckets' values, pre-filtered by
// the key interval that holds them (vectorised).

// Keys (bit patterns of |y|, ordered like the magnitudes) of a float row: min and max.
void key_range_portable(const float* y, int64_t n, uint32_t& kmin, uint32_t& kmax) {
  kmin = 0x7fffffffu;
  kmax = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t k;
    std::memcpy(&k, y + i, 4);
    k &= 0x7fffffffu;
    kmin = std::min(kmin, k);
    kmax = std::max(kmax, k);
  }
}

// The keys k of y[0..n) with klo <= k < khi, in element order, into out (room for n values). Returns their number.
int64_t keys_in_portable(const float* y, int64_t n, uint32_t klo, uint32_t khi, uint32_t* out) {
  int64_t c = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t k;
    std::memcpy(&k, y + i, 4);
    k &= 0x7fffffffu;
    if (k - klo < khi - klo) out[c++] = k;
  }
  return c;
}

#if LSQBQ_X86
LSQBQ_AVX512 void key_range_avx512(const float* y, int64_t n, uint32_t& kmin, uint32_t& kmax) {
  const __m512i abs = _mm512_set1_epi32(0x7fffffff);
  __m512i lo = abs, hi = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i k = _mm512_and_si512(_mm512_loadu_si512(y + i), abs);
    lo = _mm512_min_epu32(lo, k);
    hi = _mm512_max_epu32(hi, k);
  }
  if (i < n) {
    const __mmask16 m = first_lanes(n - i);
    const __m512i k = _mm512_and_si512(_mm512_maskz_loadu_epi32(m, y + i), abs);
    lo = _mm512_mask_min_epu32(lo, m, lo, k);
    hi = _mm512_mask_max_epu32(hi, m, hi, k);
  }
  kmin = _mm512_reduce_min_epu32(lo);
  kmax = _mm512_reduce_max_epu32(hi);
}

// As keys_in_portable; out needs room for n + 16 values (full vectors are stored, then the count advances).
LSQBQ_AVX512 int64_t keys_in_avx512(const float* y, int64_t n, uint32_t klo, uint32_t khi, uint32_t* out) {
  const __m512i abs = _mm512_set1_epi32(0x7fffffff), vlo = _mm512_set1_epi32(static_cast<int>(klo));
  const __m512i span = _mm512_set1_epi32(static_cast<int>(khi - klo));
  int64_t c = 0;
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 tail = first_lanes(n - i);
    const __m512i k = _mm512_and_si512(_mm512_maskz_loadu_epi32(tail, y + i), abs);
    const __mmask16 m = _mm512_mask_cmplt_epu32_mask(tail, _mm512_sub_epi32(k, vlo), span);
    if (m) {  // register compress, then a plain store (a compressing store to memory is slow on some CPUs)
      _mm512_storeu_si512(out + c, _mm512_maskz_compress_epi32(m, k));
      c += __builtin_popcount(m);
    }
  }
  return c;
}

// The packed histogram of FastFit (h[(k >> shift) - base] += one + fraction(k), value i into copy i mod 4) with
// the bucket indices and increments computed 16 at a time: the scalar loop is left with the adds.
LSQBQ_AVX512 void histogram_packed_avx512(const float* y, int64_t n, int shift, int64_t base, uint64_t one_count,
                                          uint64_t* h0, uint64_t* h1, uint64_t* h2, uint64_t* h3) {
  alignas(64) uint32_t idx[256];
  alignas(64) uint64_t inc[256];
  const __m512i abs = _mm512_set1_epi32(0x7fffffff), frac = _mm512_set1_epi32(0x7fffff);
  const __m512i vbase = _mm512_set1_epi32(static_cast<int>(base));
  const __m512i one = _mm512_set1_epi64(static_cast<long long>(one_count));
  const __m128i sh = _mm_cvtsi32_si128(shift);
  for (int64_t i0 = 0; i0 < n; i0 += 256) {
    const int64_t len = std::min<int64_t>(256, n - i0);
    for (int64_t q = 0; q < len; q += 16) {
      const __mmask16 tail = first_lanes(len - q);
      const __m512i k = _mm512_and_si512(_mm512_maskz_loadu_epi32(tail, y + i0 + q), abs);
      _mm512_store_si512(idx + q, _mm512_sub_epi32(_mm512_srl_epi32(k, sh), vbase));
      const __m512i f = _mm512_and_si512(k, frac);
      _mm512_store_si512(inc + q, _mm512_add_epi64(one, _mm512_cvtepu32_epi64(_mm512_castsi512_si256(f))));
      _mm512_store_si512(inc + q + 8, _mm512_add_epi64(one, _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(f, 1))));
    }
    int64_t q = 0;
    for (; q + 4 <= len; q += 4) {
      h0[idx[q]] += inc[q];
      h1[idx[q + 1]] += inc[q + 1];
      h2[idx[q + 2]] += inc[q + 2];
      h3[idx[q + 3]] += inc[q + 3];
    }
    for (; q < len; ++q) h0[idx[q]] += inc[q];
  }
}
#endif

struct FastFit {
  int kShift = 17;    // bucket = (key >> kShift) - kBase, kShift >= 17: one exponent per bucket
  int64_t kBase = 0;  // first occupied exponent, in bucket units
  int kBuckets = 0;
  std::vector<int64_t> count, isum;  // per bucket: values, and the exact sum of their 24-bit significands
  std::vector<double> sums;          // per bucket: the exact sum of its values
  std::vector<uint32_t> keys, cand, sub;
  std::vector<int32_t> slot;
  std::vector<uint64_t> packed;      // histogram entries: count << kCountShift | sum of significands
  static constexpr int kCountShift = 44;  // rows of n < 2^20 values: sums < 2^44, counts < 2^20
  static constexpr int64_t kChunk = 4096;  // values filtered per gather step
  static constexpr int64_t kSortMax = 64;  // kept buckets up to this size are sorted whole, larger ones refined

  // Buckets cover the row's exponents [e_min, e_max] with 2^m significand slices each (values within 1 + 2^-m),
  // m <= 6 chosen so that there are at most max(64, n / 16) buckets: the per-bucket passes (bounds, sums) stay
  // well below the per-value ones, and the one or two buckets that survive still hold few values.
  void layout(uint32_t kmin, uint32_t kmax, int64_t n) {
    const int64_t emin = kmin >> 23, emax = kmax >> 23, nexp = emax - emin + 1;
    int m = 6;
    while (m > 0 && (nexp << m) > std::max<int64_t>(64, n / 16)) --m;
    kShift = 23 - m;
    kBase = emin << m;
    kBuckets = static_cast<int>(nexp << m);
    count.assign(kBuckets, 0);
    isum.assign(kBuckets, 0);
    slot.assign(kBuckets, -1);
  }
  uint32_t bucket_key(int b) const { return static_cast<uint32_t>(b + kBase) << kShift; }  // first key of b
  static float key_value(uint32_t k) {
    float f;
    std::memcpy(&f, &k, 4);
    return f;
  }
  // 2^(max(e, 1) - 150) for the exponent e of key k: a value with that exponent is its 24-bit significand times it.
  static double ulp_scale(uint32_t k) {
    const int64_t e = std::max<int64_t>(k >> 23, 1);
    const uint64_t bits = static_cast<uint64_t>(e - 150 + 1023) << 52;
    double scale;
    std::memcpy(&scale, &bits, 8);
    return scale;
  }
  static double inv(int64_t j) { return j > 0 ? 1.0 / static_cast<double>(j) : 0.0; }  // = the scan's table

  // count[b], isum[b] over y[0..n): integer sums, so any order gives the same values. A bucket holds one
  // exponent, so its values' implicit leading bits (normal numbers) are added once per bucket at the end.
  void histogram(const float* y, int64_t n, bool avx) {
    const int shift = kShift;
    const int64_t base = kBase;
    if (n >= (int64_t(1) << (64 - kCountShift))) {
      for (int64_t i = 0; i < n; ++i) {
        uint32_t k;
        std::memcpy(&k, y + i, 4);
        k &= 0x7fffffffu;
        const int64_t b = static_cast<int64_t>(k >> shift) - base;
        count[b] += 1;
        isum[b] += k & 0x7fffffu;
      }
    } else {
      packed.assign(4 * static_cast<size_t>(kBuckets), 0);
      uint64_t* h0 = packed.data();
      uint64_t* h1 = h0 + kBuckets;
      uint64_t* h2 = h1 + kBuckets;
      uint64_t* h3 = h2 + kBuckets;
      const uint64_t one = uint64_t(1) << kCountShift;
      int64_t i = 0;
#if LSQBQ_X86
      if (avx) {
        histogram_packed_avx512(y, n, shift, base, one, h0, h1, h2, h3);
        i = n;
      }
#endif
      for (; i + 2 <= n; i += 2) {
        uint32_t k0, k1;
        std::memcpy(&k0, y + i, 4);
        std::memcpy(&k1, y + i + 1, 4);
        k0 &= 0x7fffffffu;
        k1 &= 0x7fffffffu;
        h0[static_cast<int64_t>(k0 >> shift) - base] += one + (k0 & 0x7fffffu);
        h1[static_cast<int64_t>(k1 >> shift) - base] += one + (k1 & 0x7fffffu);
      }
      if (i < n) {
        uint32_t k;
        std::memcpy(&k, y + i, 4);
        k &= 0x7fffffffu;
        h0[static_cast<int64_t>(k >> shift) - base] += one + (k & 0x7fffffu);
      }
      for (int b = 0; b < kBuckets; ++b) {  // n < 2^20: neither field overflows into the other
        const uint64_t v = h0[b] + h1[b] + h2[b] + h3[b];
        count[b] = static_cast<int64_t>(v >> kCountShift);
        isum[b] = static_cast<int64_t>(v & (one - 1));
      }
    }
    for (int b = 0; b < kBuckets; ++b)
      if (bucket_key(b) >> 23) isum[b] += count[b] << 23;  // normal numbers: 2^23 + fraction
  }

  // (v1, v2) of one row y[0..n) (any order); NaN when the row is not finite.
  void fit(const float* y, int64_t n, bool ternary, bool avx, float* out) {
    uint32_t kmin, kmax;
#if LSQBQ_X86
    if (avx) key_range_avx512(y, n, kmin, kmax);
    else
#endif
      key_range_portable(y, n, kmin, kmax);
    if (kmax >= 0x7f800000u) {  // NaN or Inf
      out[0] = out[1] = std::numeric_limits<float>::quiet_NaN();
      return;
    }
    layout(kmin, kmax, n);
    histogram(y, n, avx);
    // exact bucket sums: isum < 2^53 times the power of two 2^(max(e, 1) - 150), built from its bits
    sums.assign(kBuckets, 0.0);
    for (int b = 0; b < kBuckets; ++b) {
      if (!count[b]) continue;
      sums[b] = static_cast<double>(isum[b]) * ulp_scale(bucket_key(b));
    }
    auto bucket_sum = [&](int b) { return sums[b]; };
    // exact totals and gains at bucket boundaries (the same float64 expressions as the scan)
    double total = 0.0;
    for (int b = 0; b < kBuckets; ++b)
      if (count[b]) total += bucket_sum(b);
    auto gain = [&](int64_t j, double low) {
      const double high = total - low;
      const double g = (high * high) * inv(n - j);
      return ternary ? g : (low * low) * inv(j) + g;
    };
    double best_lb = -1.0, low = 0.0;
    int64_t j0 = 0;
    for (int b = 0; b < kBuckets; ++b) {
      if (!count[b]) continue;
      best_lb = std::max(best_lb, gain(j0, low));
      low += bucket_sum(b);
      j0 += count[b];
    }
    // Keep the buckets whose gain bound reaches best_lb. The splits j = j0 + k, k = 0 .. c - 1, of a bucket with
    // value range [lo, hi], c values and exact sums S_j0 = low, S_end = low + (bucket sum) have
    //   max(low + k lo, S_end - (c - k) hi) <= S_j <= min(low + k hi, S_end - (c - k) lo)
    // (the k smallest values, or the c - k largest, each within [lo, hi]). The gain, a sum of terms s^2 / t with
    // s linear in S and t > 0 linear in j, is jointly convex in (j, S), so over this polygon it is largest at a
    // vertex: k = 0, the two ends at k = c - 1, and where the two upper and the two lower lines cross. A bucket of
    // equal values (a clamp, ties) collapses to its exact line and survives only if it can hold the best split.
    std::vector<int> keep;
    std::vector<int64_t> start;
    std::vector<double> base;
    low = 0.0;
    j0 = 0;
    // reaches(j, s, t): gain(j, s) (1 + 1e-9) >= t, multiplied out (no divisions; all terms >= 0).
    const double nd = static_cast<double>(n);
    auto reaches = [&](double j, double s, double t) {
      const double h = total - s;
      if (ternary || j <= 0) return h * h * (1.0 + 1e-9) >= t * (nd - j);
      return (s * s * (nd - j) + h * h * j) * (1.0 + 1e-9) >= t * j * (nd - j);
    };
    // Can a group of cnt values in [lo, hi] with sum `sum`, its splits starting at js with S_js = s0, reach t?
    auto may_reach = [&](int64_t js, double s0, int64_t cnt, double lo, double hi, double sum, double t) {
      const double c = static_cast<double>(cnt), c1 = c - 1, end = s0 + sum, d = hi - lo;
      const double jf = static_cast<double>(js), jl = static_cast<double>(js + cnt - 1);
      if (reaches(jf, s0, t)) return true;
      if (c1 <= 0) return false;
      if (reaches(jl, std::min(s0 + c1 * hi, end - lo), t) || reaches(jl, std::max(s0 + c1 * lo, end - hi), t))
        return true;
      const double ku = (end - c * lo - s0) / d, kl = (s0 + c * hi - end) / d;  // upper / lower lines cross
      return (ku > 0 && ku < c1 && reaches(jf + ku, s0 + ku * hi, t)) ||
             (kl > 0 && kl < c1 && reaches(jf + kl, s0 + kl * lo, t));
    };
    for (int b = 0; b < kBuckets; ++b) {
      if (!count[b]) continue;
      const bool ub = may_reach(j0, low, count[b], key_value(bucket_key(b)), key_value(bucket_key(b + 1) - 1),
                                bucket_sum(b), best_lb);
      if (ub) {
        keep.push_back(b);
        start.push_back(j0);
        base.push_back(low);
      }
      low += bucket_sum(b);
      j0 += count[b];
    }
    // gather and sort the surviving buckets' magnitudes, then scan them in split order
    std::vector<int64_t> offset(keep.size() + 1, 0);
    for (size_t i = 0; i < keep.size(); ++i) offset[i + 1] = offset[i] + count[keep[i]];
    keys.resize(offset.back());
    for (size_t i = 0; i < keep.size(); ++i) slot[keep[i]] = static_cast<int32_t>(i);
    std::vector<int64_t> fill(offset.begin(), offset.end() - 1);
    // the kept buckets lie in [klo, khi): filter a chunk by that interval, then place its keys by bucket
    const uint32_t klo = keep.empty() ? 0 : bucket_key(keep.front());
    const uint32_t khi = keep.empty() ? 0 : bucket_key(keep.back() + 1);
    cand.resize(kChunk + 16);
    for (int64_t c0 = 0; c0 < n && !keep.empty(); c0 += kChunk) {
      const int64_t len = std::min(kChunk, n - c0);
      int64_t got;
#if LSQBQ_X86
      if (avx) got = keys_in_avx512(y + c0, len, klo, khi, cand.data());
      else
#endif
        got = keys_in_portable(y + c0, len, klo, khi, cand.data());
      for (int64_t e = 0; e < got; ++e) {
        const uint32_t k = cand[e];
        const int32_t s = slot[static_cast<int64_t>(k >> kShift) - kBase];
        if (s >= 0) keys[fill[s]++] = k;
      }
    }
    double best_gain = -1.0, best_low = 0.0, best_high = 0.0;
    int64_t best = 0;
    // ascending keys ks[0..len), the splits j .. j + len - 1 from the exact S_j = lw: the scan's own expressions
    auto scan = [&](uint32_t* ks, int64_t len, int64_t j, double lw) {
      std::sort(ks, ks + len);
      for (int64_t e = 0; e < len; ++e, ++j) {
        const double g = gain(j, lw);
        if (g > best_gain) {
          best_gain = g;
          best = j;
          best_low = lw;
          best_high = total - lw;
        }
        lw += static_cast<double>(key_value(ks[e]));
      }
    };
    for (size_t i = 0; i < keep.size(); ++i) {
      uint32_t* ks = keys.data() + offset[i];
      const int64_t len = offset[i + 1] - offset[i];
      if (len <= kSortMax) {
        scan(ks, len, start[i], base[i]);
        continue;
      }
      // A large bucket: 64 sub-buckets of the next 6 significand bits (one exponent, so exact integer sums),
      // their boundary gains raise the lower bound, the same bound discards sub-buckets, the rest are sorted.
      const uint32_t first = bucket_key(keep[i]);
      const int sub_shift = kShift - 6;
      const double scale = ulp_scale(first);
      const int64_t implicit = (first >> 23) ? (int64_t(1) << 23) : 0;
      int64_t sc[64] = {}, ss[64] = {};
      for (int64_t q = 0; q < len; ++q) {
        const int sb = static_cast<int>((ks[q] >> sub_shift) & 63);
        sc[sb] += 1;
        ss[sb] += ks[q] & 0x7fffffu;
      }
      double sub_sum[64], sub_low[64];
      int64_t sub_j[64];
      double lw = base[i];
      int64_t j = start[i];
      for (int sb = 0; sb < 64; ++sb) {
        sub_sum[sb] = static_cast<double>(ss[sb] + sc[sb] * implicit) * scale;
        sub_low[sb] = lw;
        sub_j[sb] = j;
        if (sc[sb]) best_lb = std::max(best_lb, gain(j, lw));
        lw += sub_sum[sb];
        j += sc[sb];
      }
      int64_t pos[64];
      bool kept[64];
      int64_t total_kept = 0;
      for (int sb = 0; sb < 64; ++sb) {
        const uint32_t k0 = first + (static_cast<uint32_t>(sb) << sub_shift);
        kept[sb] = sc[sb] > 0 && may_reach(sub_j[sb], sub_low[sb], sc[sb], key_value(k0),
                                          key_value(k0 + (1u << sub_shift) - 1), sub_sum[sb], best_lb);
        pos[sb] = total_kept;
        if (kept[sb]) total_kept += sc[sb];
      }
      sub.resize(static_cast<size_t>(total_kept));
      for (int64_t q = 0; q < len; ++q) {
        const int sb = static_cast<int>((ks[q] >> sub_shift) & 63);
        if (kept[sb]) sub[pos[sb]++] = ks[q];
      }
      for (int sb = 0; sb < 64; ++sb)
        if (kept[sb]) scan(sub.data() + pos[sb] - sc[sb], sc[sb], sub_j[sb], sub_low[sb]);
    }
    const double hi_mean = best_high * inv(n - best);
    if (ternary) {
      out[0] = out[1] = static_cast<float>(hi_mean / 2);
      return;
    }
    const double lo_mean = best > 0 ? best_low * inv(best) : hi_mean;
    out[0] = static_cast<float>((hi_mean + lo_mean) / 2);
    out[1] = static_cast<float>((hi_mean - lo_mean) / 2);
  }
};

// Exact fit of every sample of the encode's input with FastFit, samples in parallel. Returns (B, 2) float32.
// The fit sorts y = clamp(prologue(x)) (order is irrelevant); with a prologue or a clamp, each sample's y is
// written into a scratch row of C * H * W floats that stays in cache for the fit's passes (no batch-sized copy).
at::Tensor exact_fit(const Enc& E, bool ternary, bool avx) {
  const int64_t n = E.C * E.H * E.W;
  TORCH_CHECK(n < (int64_t(1) << 29), "lsqbq: rows of 2^29 or more values are not supported by the exact fits");
  auto out = at::empty({E.B, 2}, at::TensorOptions().dtype(at::kFloat));
  float* po = out.data_ptr<float>();
  const bool scratch = E.in_a || E.do_clamp;
  parallel(E.B, 1, E.B * n, int64_t(1) << 16, [&](int64_t begin, int64_t end) {
    FastFit f;
    std::vector<float> row(scratch ? n : 0);
    for (int64_t b = begin; b < end; ++b) {
      const float* y = E.x + b * n;  // channels_last: sample b's NHWC values
      if (scratch) {
        for (int64_t h = 0; h < E.H; ++h) prologue_row(E, b, h, row.data() + h * E.W * E.C, avx);
        y = row.data();
      }
      f.fit(y, n, ternary, avx, po + 2 * b);
    }
  });
  return out;
}

const float* opt_vector(const std::optional<at::Tensor>& t, int64_t n, const char* what, at::Tensor& keep) {
  if (!t.has_value() || !t->defined()) return nullptr;
  keep = t->to(at::kFloat).contiguous();
  TORCH_CHECK(keep.numel() == n, "lsqbq: ", what, " must hold ", n, " values, got ", keep.numel());
  return keep.data_ptr<float>();
}

// Fused activation encode. x: (B, C, H, W) float32 in any memory format (channels_last is read in place) or
// (B, n). Prologue (in_scale, in_shift: (C)) and clamp, then the scales: given (fit 0: x_scales (B | 1, planes)),
// fitted greedily in the encode passes (fit 1), or fitted exactly on the NHWC activation (fit 2 ls-2, fit 3
// ternary; sorting makes the order irrelevant, so they equal the fit of the NCHW rows bit for bit). Returns
// (words (planes, B, H + 2 ph, W + 2 pw, Cw) or (planes, B, Cw), scales (B, planes) float32).
std::tuple<at::Tensor, at::Tensor> encode_impl(const at::Tensor& x, const std::optional<at::Tensor>& in_scale,
                                               const std::optional<at::Tensor>& in_shift,
                                               const std::optional<at::Tensor>& x_scales, double clamp,
                                               int64_t planes, int64_t fit, bool mask, int64_t pad_h, int64_t pad_w,
                                               int64_t isa) {
  check_isa(isa);
  TORCH_CHECK(x.dim() == 4 || x.dim() == 2, "lsqbq: activations must be (B, C, H, W) or (B, n), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat, "lsqbq: activations must be float32, got ", x.scalar_type());
  TORCH_CHECK(planes >= 1 && planes <= 8, "lsqbq: 1..8 activation planes are supported, got ", planes);
  TORCH_CHECK(!mask || planes == 2, "lsqbq: the ternary mask encoding uses 2 scales (v, v)");
  TORCH_CHECK(fit >= kGiven && fit <= kTernary, "lsqbq: unknown fit mode ", fit);
  TORCH_CHECK(fit != kGreedy || !mask, "lsqbq: the greedy fit has no ternary encoding");
  TORCH_CHECK(fit < kLs2 || planes == 2, "lsqbq: the exact fits have 2 scales");
  TORCH_CHECK(pad_h >= 0 && pad_w >= 0, "lsqbq: negative padding");
  const bool two_d = x.dim() == 2;
  if (two_d) TORCH_CHECK(pad_h == 0 && pad_w == 0, "lsqbq: no padding for 2-D input");
  const at::Tensor x4 =
      two_d ? x.contiguous().view({x.size(0), x.size(1), 1, 1}) : x.contiguous(at::MemoryFormat::ChannelsLast);
  Enc E;
  E.B = x4.size(0); E.C = x4.size(1); E.H = x4.size(2); E.W = x4.size(3);
  TORCH_CHECK(E.B > 0 && E.C > 0 && E.H > 0 && E.W > 0, "lsqbq: empty activations ", x.sizes());
  E.Cw = (E.C + 63) / 64;
  E.x = x4.data_ptr<float>();
  at::Tensor keep_a, keep_b;
  E.in_a = opt_vector(in_scale, E.C, "in_scale", keep_a);
  E.in_b = opt_vector(in_shift, E.C, "in_shift", keep_b);
  TORCH_CHECK((E.in_a == nullptr) == (E.in_b == nullptr), "lsqbq: in_scale and in_shift go together");
  E.do_clamp = clamp > 0;
  E.cv = static_cast<float>(clamp);
  E.mask = mask;
  E.ph = pad_h; E.pw = pad_w;
  E.Hp = E.H + 2 * pad_h; E.Wp = E.W + 2 * pad_w;
  auto words = at::zeros({planes, E.B, E.Hp, E.Wp, E.Cw}, at::TensorOptions().dtype(at::kLong));
  E.dst = reinterpret_cast<uint64_t*>(words.data_ptr<int64_t>());
  E.plane_stride = E.B * E.Hp * E.Wp * E.Cw;
  const bool avx = isa == kAvx512;
  at::Tensor v;
  if (fit == kGiven) {
    TORCH_CHECK(x_scales.has_value() && x_scales->defined(), "lsqbq: given-scale encode needs x_scales");
    at::Tensor s = x_scales->to(at::kFloat);
    if (s.dim() == 1) s = s.view({1, s.size(0)});
    TORCH_CHECK(s.dim() == 2 && s.size(1) == planes && (s.size(0) == E.B || s.size(0) == 1),
                "lsqbq: scales must be (", E.B, ", ", planes, ") or (1, ", planes, "), got ", x_scales->sizes());
    v = at::empty({E.B, planes}, at::TensorOptions().dtype(at::kFloat));  // never an alias of the input
    v.copy_(s.expand({E.B, planes}));
    encode_given(E, planes, v.data_ptr<float>(), planes, avx);
  } else if (fit == kGreedy) {
    v = at::empty({E.B, planes}, at::TensorOptions().dtype(at::kFloat));
    encode_greedy(E, planes, v.data_ptr<float>(), avx);
  } else {
    v = exact_fit(E, fit == kTernary, avx);  // the encode below applies the prologue and clamp itself
    encode_given(E, planes, v.data_ptr<float>(), planes, avx);
  }
  if (fit != kGiven) {
    const float* pv = v.data_ptr<float>();
    for (int64_t b = 0; b < E.B; ++b)
      for (int64_t i = 0; i < planes; ++i)
        TORCH_CHECK_VALUE(std::isfinite(pv[b * planes + i]), "lsqbq: the activation scales of sample ", b,
                          " are not finite: the input holds NaN or Inf");
  }
  if (two_d) words = words.view({planes, E.B, E.Cw});
  return {words, v};
}

at::Tensor pack_activations_cpu(const at::Tensor& x, const at::Tensor& scales, double clamp, int64_t planes, bool mask,
                                int64_t pad_h, int64_t pad_w, int64_t isa) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "lsqbq: pack_activations expects float32 activations");
  return std::get<0>(encode_impl(x, std::nullopt, std::nullopt, scales, clamp, planes, kGiven, mask, pad_h, pad_w, isa));
}

std::tuple<at::Tensor, at::Tensor> encode_fused_cpu(const at::Tensor& x, const std::optional<at::Tensor>& in_scale,
                                                    const std::optional<at::Tensor>& in_shift,
                                                    const std::optional<at::Tensor>& x_scales, double clamp,
                                                    int64_t planes, int64_t fit, bool mask, int64_t pad_h,
                                                    int64_t pad_w, int64_t isa) {
  return encode_impl(x, in_scale, in_shift, x_scales, clamp, planes, fit, mask, pad_h, pad_w, isa);
}

// The whole bitwise convolution layer in one call: fused encode (prologue, clamp, scales, planes, padding), binary
// convolution, and the float epilogue
//   y = bias + sum_ij sa_i sw_j d_ij;  (+ residual if residual_first);  act;  (+ residual otherwise)
// with act 0 none, 1 ReLU, 2 PReLU (slope (N) or (1)). x: (B, C, H, W) float32 (channels_last read in place);
// residual: (B, N, OH, OW) float32. Returns (B, OH, OW, N) float32 (NHWC memory). Ternary activations use the
// logical plane t = x_q / (2v): sa = 2 v.
at::Tensor bitwise_conv2d_cpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& wtap, const at::Tensor& sw,
                              const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& in_scale,
                              const std::optional<at::Tensor>& in_shift, const std::optional<at::Tensor>& x_scales,
                              const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& slope,
                              double clamp, int64_t planes, int64_t fit, bool mask, int64_t act, bool residual_first,
                              int64_t n_out, int64_t c_in, at::IntArrayRef kernel, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t isa) {
  TORCH_CHECK(x.dim() == 4, "lsqbq: bitwise_conv2d expects (B, C, H, W), got ", x.sizes());
  TORCH_CHECK(x.size(1) == c_in, "lsqbq: bitwise_conv2d expects ", c_in, " input channels, got ", x.size(1));
  TORCH_CHECK(act >= 0 && act <= 2, "lsqbq: unknown activation code ", act);
  TORCH_CHECK(padding.size() == 2, "lsqbq: padding must have 2 entries");
  auto [a, v] = encode_impl(x, in_scale, in_shift, x_scales, clamp, planes, fit, mask, padding[0], padding[1], isa);
  const int64_t hw[2] = {x.size(2), x.size(3)};
  const Geometry g = conv_geometry(a, c_in, hw, kernel, stride, padding, dilation);
  Job J = make_job(a, w, wtap, g, mask);
  at::Tensor sa = v;
  if (mask) {  // ternary: one logical plane t = x_q / (2 v)
    sa = at::empty({g.B, 1}, v.options());
    for (int64_t b = 0; b < g.B; ++b) sa.data_ptr<float>()[b] = 2.0f * v.data_ptr<float>()[b * 2];
  }
  at::Tensor res;
  if (residual.has_value() && residual->defined()) {
    TORCH_CHECK(residual->scalar_type() == at::kFloat && residual->dim() == 4 && residual->size(0) == g.B &&
                    residual->size(1) == n_out && residual->size(2) == g.OH && residual->size(3) == g.OW,
                "lsqbq: residual must be float32 (", g.B, ", ", n_out, ", ", g.OH, ", ", g.OW, "), got ",
                residual->sizes(), " ", residual->scalar_type());
    res = residual->contiguous(at::MemoryFormat::ChannelsLast);
    J.res = res.data_ptr<float>();
  }
  at::Tensor keep_slope;
  if (act == 2) {
    TORCH_CHECK(slope.has_value() && slope->defined(), "lsqbq: PReLU needs slopes");
    keep_slope = slope->to(at::kFloat).contiguous();
    TORCH_CHECK(keep_slope.numel() == n_out || keep_slope.numel() == 1, "lsqbq: PReLU slopes must be (", n_out,
                ") or (1), got ", keep_slope.numel());
    J.slope = keep_slope.data_ptr<float>();
    J.slope_step = keep_slope.numel() == 1 ? 0 : 1;
  }
  J.act = static_cast<int>(act);
  J.res_first = residual_first;
  auto out = run_scaled(J, n_out, sa, sw, bias, g.B, isa);
  return out.view({g.B, g.OH, g.OW, n_out});
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
__attribute__((target("popcnt"))) int64_t peak_portable_hw(int64_t iters) { return peak_portable_body(iters); }
#endif

int64_t peak_portable(int64_t iters) {
#if LSQBQ_X86
  if (popcnt_supported()) return peak_portable_hw(iters);
#endif
  return peak_portable_body(iters);
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

TORCH_LIBRARY_FRAGMENT(lsqbq, m) {
  m.def("pack_signs(Tensor x) -> Tensor");
  m.def("pack_activations(Tensor x, Tensor scales, float clamp, int planes, bool mask, int pad_h, int pad_w, int isa) -> Tensor");
  m.def("xnor_gemm(Tensor a, Tensor w, int n_out, int k, bool mask, int isa) -> Tensor");
  m.def("xnor_gemm_scaled(Tensor a, Tensor w, Tensor sa, Tensor sw, Tensor? bias, int n_out, int k, bool mask, "
        "int isa) -> Tensor");
  m.def("xnor_conv2d(Tensor a, Tensor w, Tensor wtap, int n_out, int c_in, int[] hw, int[] kernel, int[] stride, "
        "int[] padding, int[] dilation, bool mask, int isa) -> Tensor");
  m.def("xnor_conv2d_scaled(Tensor a, Tensor w, Tensor wtap, Tensor sa, Tensor sw, Tensor? bias, int n_out, "
        "int c_in, int[] hw, int[] kernel, int[] stride, int[] padding, int[] dilation, bool mask, int isa) -> Tensor");
  m.def("encode_fused(Tensor x, Tensor? in_scale, Tensor? in_shift, Tensor? x_scales, float clamp, int planes, "
        "int fit, bool mask, int pad_h, int pad_w, int isa) -> (Tensor, Tensor)");
  m.def("bitwise_conv2d(Tensor x, Tensor w, Tensor wtap, Tensor sw, Tensor? bias, Tensor? in_scale, Tensor? in_shift, "
        "Tensor? x_scales, Tensor? residual, Tensor? slope, float clamp, int planes, int fit, bool mask, int act, "
        "bool residual_first, int n_out, int c_in, int[] kernel, int[] stride, int[] padding, int[] dilation, "
        "int isa) -> Tensor");
  m.def("popcount_peak(int iters, int isa) -> int");
  m.def("isa_supported(int isa) -> bool");
}

// No tensor arguments, hence no device to dispatch on: one kernel for every dispatch key.
TORCH_LIBRARY_IMPL(lsqbq, CompositeExplicitAutograd, m) {
  m.impl("popcount_peak", &popcount_peak_cpu);
  m.impl("isa_supported", &isa_supported_cpu);
}

// Autograd key of the kernel ops: their outputs (sign words, integer dot products, inference outputs) have no
// gradient, so the kernel runs below autograd and its outputs carry no grad_fn, as if marked non-differentiable.
// In C++ rather than a Python autograd formula, which cost about 14 us per call (most of a small layer at batch 1).
void below_autograd(const c10::OperatorHandle& op, c10::DispatchKeySet ks, torch::jit::Stack* stack) {
  at::AutoDispatchBelowADInplaceOrView guard;
  op.redispatchBoxed(ks & c10::after_ADInplaceOrView_keyset, stack);
}

TORCH_LIBRARY_IMPL(lsqbq, Autograd, m) {
  for (const char* name : {"pack_signs", "pack_activations", "encode_fused", "bitwise_conv2d", "xnor_gemm",
                           "xnor_gemm_scaled", "xnor_conv2d", "xnor_conv2d_scaled"})
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&below_autograd>());
}

TORCH_LIBRARY_IMPL(lsqbq, CPU, m) {
  m.impl("pack_signs", &pack_signs_cpu);
  m.impl("pack_activations", &pack_activations_cpu);
  m.impl("encode_fused", &encode_fused_cpu);
  m.impl("bitwise_conv2d", &bitwise_conv2d_cpu);
  m.impl("xnor_gemm", &xnor_gemm_cpu);
  m.impl("xnor_gemm_scaled", &xnor_gemm_scaled_cpu);
  m.impl("xnor_conv2d", &xnor_conv2d_cpu);
  m.impl("xnor_conv2d_scaled", &xnor_conv2d_scaled_cpu);
}
