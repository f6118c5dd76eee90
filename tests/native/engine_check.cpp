// Torch-free check of the XNOR engine's vector paths against its portable path, bit for bit.
//
// Links the engine's core sources (lsqbq/csrc without the torch op registration ops_xnor.cpp and the quantizers
// quant.cpp), builds random activations and packed weights, and runs every case on the portable path and on each
// vector path this CPU has (NEON on aarch64; AVX2 and AVX-512 on x86-64): the activation encode (given scales, the
// greedy fit, the exact ls-2 and ls-T fits; BatchNorm prologue and clamp), the integer dot products and the scaled
// outputs of GEMMs and convolutions (1-bit, k-bit and ternary planes, padding, channel tails 1 / 63 / 65 / 130,
// batch 1 and 3, reductions past the accumulators' flush lengths) and the fused layer (encode, convolution, bias,
// residual before or after ReLU / PReLU). Outputs are compared with memcmp: the integers, packed words and scales
// always; the float outputs too, except on AVX-512, whose epilogue fuses multiply-adds and is held to a relative
// tolerance. Where the CPU has AVX-512 VNNI, the direct uint8 x int8 convolution (direct_conv.h) is checked against
// a scalar evaluation of its definition, bit for bit. Prints one summary line per path (and one for the direct
// convolution) and exits 1 on any mismatch (2 when there is no vector path).
//
// Build: g++ -std=c++17 -O2 -ffp-contract=off -fno-trapping-math -pthread -I lsqbq/csrc
//            tests/native/engine_check.cpp <lsqbq/csrc/*.cpp but ops_xnor.cpp, quant.cpp>
// (the flags of the library build, lsqbq/_native.py); cross-compiled for aarch64 it runs under qemu-aarch64.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "direct_conv.h"
#include "encode.h"
#include "isa.h"
#include "job.h"

using namespace lsqbq;

namespace {

// splitmix64: a fixed, platform-independent stream, so every build checks the same cases.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float uniform() { return static_cast<float>(next() >> 40) * (1.0f / 16777216.0f); }  // [0, 1)
  // Roughly normal (sum of uniforms), with exact zeros and -0.0 now and then (sign(0) = sign(-0.0) = +1).
  float normal() {
    const uint64_t r = next() % 64;
    if (r == 0) return 0.f;
    if (r == 1) return -0.f;
    return (uniform() + uniform() + uniform() - 1.5f) * 2.f;
  }
};

struct Tally {
  const char* path;
  int64_t checks = 0, failures = 0;
  void fail(const std::string& what) {
    if (++failures <= 20) std::fprintf(stderr, "MISMATCH [%s] %s\n", path, what.c_str());
  }
};

template <class T>
bool bits_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// Float outputs of AVX-512 (fused multiply-adds): equal to float rounding, |a - b| <= 1e-5 (|a| + 1).
bool close(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) {
      if (std::isnan(a[i]) != std::isnan(b[i])) return false;
      continue;
    }
    if (!(std::fabs(a[i] - b[i]) <= 1e-5f * (std::fabs(a[i]) + 1.f))) return false;
  }
  return true;
}

struct Shape {  // input (B, C, H, W), N outputs, kernel, stride, padding, dilation; gemm: a (B, C) GEMM
  int64_t B, C, H, W, N, k, s, p, d;
  bool gemm;
  std::string name() const {
    char buf[128];
    if (gemm)
      std::snprintf(buf, sizeof buf, "gemm M%lld K%lld N%lld", (long long)B, (long long)C, (long long)N);
    else
      std::snprintf(buf, sizeof buf, "conv b%lld c%lld %lldx%lld n%lld k%lld s%lld p%lld d%lld", (long long)B,
                    (long long)C, (long long)H, (long long)W, (long long)N, (long long)k, (long long)s, (long long)p,
                    (long long)d);
    return buf;
  }
  Geometry geometry() const {
    return gemm ? gemm_geometry(B, C) : conv_geometry(B, C, H, W, k, k, s, s, p, p, d, d);
  }
};

struct Mode {  // activation planes (logical), weight planes, ternary mask encoding
  int pa, pw;
  bool mask;
};

// Packed weights of one shape: panels (pw, NP, T * Cw, 32) with zero bits past C and zero channels past N, tap sums
// (pw, T, NP * 32) = C - 2 popcount, scales (pw, NP * 32) with zeros past N.
struct Weights {
  int64_t NP = 0;
  std::vector<uint64_t> panels;
  std::vector<int32_t> tapsum;
  std::vector<float> scales;
};

Weights make_weights(const Shape& s, int pw, Rng& rng) {
  Weights w;
  const int64_t T = s.gemm ? 1 : s.k * s.k, Cw = (s.C + 63) / 64;
  w.NP = (s.N + NB - 1) / NB;
  w.panels.assign(pw * w.NP * T * Cw * NB, 0);
  w.tapsum.assign(pw * T * w.NP * NB, 0);
  w.scales.assign(pw * w.NP * NB, 0.f);
  for (int64_t j = 0; j < pw; ++j)
    for (int64_t n = 0; n < s.N; ++n) {
      const int64_t p = n / NB, l = n % NB;
      w.scales[j * w.NP * NB + n] = 0.05f + rng.uniform();
      for (int64_t t = 0; t < T; ++t) {
        int32_t ones = 0;
        for (int64_t c = 0; c < Cw; ++c) {
          uint64_t word = rng.next();
          const int64_t valid = std::min<int64_t>(64, s.C - c * 64);
          if (valid < 64) word &= (uint64_t(1) << valid) - 1;
          ones += __builtin_popcountll(word);
          w.panels[((j * w.NP + p) * T * Cw + t * Cw + c) * NB + l] = word;
        }
        w.tapsum[(j * T + t) * w.NP * NB + n] = static_cast<int32_t>(s.C) - 2 * ones;
      }
    }
  return w;
}

// The same weights in the packed-tap layout (job.h): k word (kh, g) = OR_i word of tap (kh, g G + i) << (i C), in
// KH * ceil(k / G) k words (C <= 32, one word per tap before).
Weights packed_taps(const Weights& w, const Shape& s, int pw) {
  const int64_t G = tap_group(s.C, s.k), T = s.k * s.k, groups = (s.k + G - 1) / G, Kp = s.k * groups;
  Weights out = w;
  out.panels.assign(pw * w.NP * Kp * NB, 0);
  for (int64_t jp = 0; jp < pw * w.NP; ++jp)
    for (int64_t kh = 0; kh < s.k; ++kh)
      for (int64_t kw = 0; kw < s.k; ++kw)
        for (int64_t l = 0; l < NB; ++l)
          out.panels[(jp * Kp + kh * groups + kw / G) * NB + l] |= w.panels[(jp * T + kh * s.k + kw) * NB + l]
                                                                   << ((kw % G) * s.C);
  return out;
}

// The encode's input and options: x (B, H, W, C) NHWC, prologue (a, b) per channel, clamp.
struct Input {
  std::vector<float> x, in_a, in_b;
  float clamp = 0.f;
};

// The fused encode of the op layer (lsqbq/csrc/ops_xnor.cpp, encode_impl) on path isa: words (planes, B, Hp, Wp, Cw)
// and scales (B, planes) (given: sc, one row per sample).
struct Encoded {
  std::vector<uint64_t> words;
  std::vector<float> v;
};

Encoded run_encode(const Shape& s, const Input& in, int64_t planes, int64_t fit, bool mask, const float* given,
                   int64_t isa, int64_t threads) {
  Enc E;
  const int64_t H = s.gemm ? 1 : s.H, W = s.gemm ? 1 : s.W, p = s.gemm ? 0 : s.p;
  E.B = s.B; E.C = s.C; E.H = H; E.W = W;
  E.Cw = (s.C + 63) / 64;
  E.x = in.x.data();
  E.in_a = in.in_a.empty() ? nullptr : in.in_a.data();
  E.in_b = in.in_b.empty() ? nullptr : in.in_b.data();
  E.do_clamp = in.clamp > 0;
  E.cv = in.clamp;
  E.mask = mask;
  E.ph = p; E.pw = p;
  E.Hp = H + 2 * p; E.Wp = W + 2 * p;
  Encoded out;
  out.words.assign(planes * E.B * E.Hp * E.Wp * E.Cw, 0);
  E.dst = out.words.data();
  E.plane_stride = E.B * E.Hp * E.Wp * E.Cw;
  E.threads = threads;
  out.v.assign(E.B * planes, 0.f);
  if (fit == kGiven) {
    std::memcpy(out.v.data(), given, sizeof(float) * out.v.size());
    encode_given(E, planes, out.v.data(), planes, isa);
  } else if (fit == kGreedy) {
    encode_greedy(E, planes, out.v.data(), isa);
  } else {
    exact_fit(E, fit == kTernary, isa, out.v.data());
    encode_given(E, planes, out.v.data(), planes, isa);
  }
  return out;
}

// Epilogue of a scaled job: scales, bias, and for the fused layer residual and activation.
struct Epilogue {
  const float* sa = nullptr;
  const float* bias = nullptr;
  const float* res = nullptr;
  const float* slope = nullptr;
  int64_t slope_step = 0;
  int act = 0;
  bool res_first = true;
};

// One job on path isa: integer dot products (ep null) or the scaled float output.
template <class T>
std::vector<T> run_job(const Shape& s, const Mode& m, const std::vector<uint64_t>& a, const Weights& w,
                       const Epilogue* ep, int64_t isa, int64_t threads, bool packed = false) {
  const Geometry g = s.geometry();
  const bool padded = !s.gemm && s.p > 0;
  Job J = make_job(a.data(), m.mask ? 2 : m.pa, w.panels.data(), m.pw, w.NP,
                   padded && !m.mask ? w.tapsum.data() : nullptr, g, m.mask, packed);
  J.threads = threads;
  J.N = s.N;
  std::vector<T> out;
  if (ep == nullptr) {
    out.assign(J.pa_logical() * J.pw * J.M * J.N, T(-7));
    J.out_i = reinterpret_cast<int32_t*>(out.data());
  } else {
    out.assign(J.M * J.N, T(-7));
    J.out_f = reinterpret_cast<float*>(out.data());
    J.sa = ep->sa;
    J.swt = w.scales.data();
    J.bias = ep->bias;
    J.res = ep->res;
    J.slope = ep->slope;
    J.slope_step = ep->slope_step;
    J.act = ep->act;
    J.res_first = ep->res_first;
  }
  run(J, isa);
  return out;
}

Input make_input(const Shape& s, bool prologue, float clamp, Rng& rng) {
  Input in;
  const int64_t n = s.B * (s.gemm ? 1 : s.H * s.W) * s.C;
  in.x.resize(n);
  for (auto& x : in.x) {  // now and then NaN or an infinity: the clamp passes NaN, the sign bit of NaN is 1
    const uint64_t r = rng.next() % 512;
    x = r == 0 ? std::nanf("") : r == 1 ? INFINITY : r == 2 ? -INFINITY : rng.normal();
  }
  if (prologue) {
    in.in_a.resize(s.C);
    in.in_b.resize(s.C);
    for (int64_t c = 0; c < s.C; ++c) {
      in.in_a[c] = 0.2f + 2.f * rng.uniform();
      in.in_b[c] = rng.normal() * 0.5f;
    }
  }
  in.clamp = clamp;
  return in;
}

struct Checker {
  int64_t isa;
  Tally tally;
  bool exact_float;
  int64_t threads = 1;

  void words(const Encoded& want, const Encoded& got, const std::string& what) {
    ++tally.checks;
    if (!bits_equal(want.words, got.words)) tally.fail(what + ": packed words");
    ++tally.checks;
    if (!bits_equal(want.v, got.v)) tally.fail(what + ": scales");
  }
  void floats(const std::vector<float>& want, const std::vector<float>& got, const std::string& what) {
    ++tally.checks;
    if (exact_float ? !bits_equal(want, got) : !close(want, got)) tally.fail(what);
  }

  // Encode (given scales) and the integer and scaled jobs of one shape and mode.
  void job_case(const Shape& s, const Mode& m, uint64_t seed) {
    Rng rng(seed);
    const std::string name = s.name() + " mode " + std::to_string(m.pa) + "x" + std::to_string(m.pw) +
                             (m.mask ? "T" : "") + " threads " + std::to_string(threads);
    const Input in = make_input(s, false, 0.f, rng);
    const int64_t planes = m.mask ? 2 : m.pa;
    std::vector<float> given(s.B * planes);
    for (int64_t b = 0; b < s.B; ++b) {
      const float v0 = 0.1f + rng.uniform();  // ternary: the two scales are equal (v, v)
      for (int64_t i = 0; i < planes; ++i) given[b * planes + i] = m.mask ? v0 : v0 / float(i + 1);
    }
    const Encoded a = run_encode(s, in, planes, kGiven, m.mask, given.data(), kPortable, 1);
    words(a, run_encode(s, in, planes, kGiven, m.mask, given.data(), isa, threads), name + " encode");
    const Weights w = make_weights(s, m.pw, rng);
    ++tally.checks;
    if (!bits_equal(run_job<int32_t>(s, m, a.words, w, nullptr, kPortable, 1),
                    run_job<int32_t>(s, m, a.words, w, nullptr, isa, threads)))
      tally.fail(name + ": integer dot products");
    const bool pack = !s.gemm && tap_group(s.C, s.k) >= 2;  // and the packed-tap layout of the same weights
    const Weights wp = pack ? packed_taps(w, s, m.pw) : Weights{};
    if (pack) {
      ++tally.checks;
      if (!bits_equal(run_job<int32_t>(s, m, a.words, w, nullptr, kPortable, 1),
                      run_job<int32_t>(s, m, a.words, wp, nullptr, isa, threads, true)))
        tally.fail(name + ": integer dot products, packed taps");
    }
    std::vector<float> sa(s.B * m.pa), bias(s.N);
    for (auto& x : sa) x = 0.05f + rng.uniform();
    for (auto& x : bias) x = rng.normal();
    for (int with_bias = 0; with_bias < 2; ++with_bias) {
      Epilogue ep;
      ep.sa = sa.data();
      ep.bias = with_bias ? bias.data() : nullptr;
      const std::vector<float> want = run_job<float>(s, m, a.words, w, &ep, kPortable, 1);
      floats(want, run_job<float>(s, m, a.words, w, &ep, isa, threads),
             name + (with_bias ? ": scaled output with bias" : ": scaled output"));
      if (pack)
        floats(want, run_job<float>(s, m, a.words, wp, &ep, isa, threads, true),
               name + (with_bias ? ": scaled output with bias, packed taps" : ": scaled output, packed taps"));
    }
  }

  // The fused layer (ops_xnor.cpp, bitwise_conv2d): encode with fit, convolution, epilogue, residual, activation.
  void layer_case(const Shape& s, const Mode& m, int64_t fit, int variant, uint64_t seed) {
    Rng rng(seed);
    const bool prologue = variant & 1, clamp = variant & 2;
    const int act = variant % 3;
    const int res = (variant / 3) % 3;  // 0 none, 1 before the activation, 2 after
    char buf[160];
    std::snprintf(buf, sizeof buf, " layer %dx%d%s fit %lld bn %d clamp %d act %d res %d threads %lld", m.pa, m.pw,
                  m.mask ? "T" : "", (long long)fit, prologue, clamp, act, res, (long long)threads);
    const std::string name = s.name() + buf;
    const Input in = make_input(s, prologue, clamp ? 1.25f : 0.f, rng);
    const int64_t planes = m.mask ? 2 : m.pa;
    std::vector<float> given(s.B * planes);
    for (int64_t b = 0; b < s.B; ++b) {
      const float v0 = 0.1f + rng.uniform();
      for (int64_t i = 0; i < planes; ++i) given[b * planes + i] = m.mask ? v0 : v0 / float(1 << i);
    }
    const Encoded ea = run_encode(s, in, planes, fit, m.mask, given.data(), kPortable, 1);
    const Encoded eb = run_encode(s, in, planes, fit, m.mask, given.data(), isa, threads);
    words(ea, eb, name + " encode");
    const Weights w = make_weights(s, m.pw, rng);
    const Geometry g = s.geometry();
    const int64_t M = g.B * g.OH * g.OW;
    std::vector<float> bias(s.N), resid(M * s.N), slope(s.N);
    for (auto& x : bias) x = rng.normal();
    for (auto& x : resid) x = rng.normal();
    for (auto& x : slope) x = rng.normal() * 0.3f;
    auto out = [&](const Encoded& e, int64_t path, int64_t th) {
      std::vector<float> sa = e.v;
      if (m.mask) {  // ternary: one logical plane t = x_q / (2 v)
        sa.assign(s.B, 0.f);
        for (int64_t b = 0; b < s.B; ++b) sa[b] = 2.0f * e.v[b * 2];
      }
      Epilogue ep;
      ep.sa = sa.data();
      ep.bias = variant % 2 ? bias.data() : nullptr;
      ep.res = res ? resid.data() : nullptr;
      ep.res_first = res != 2;
      ep.act = act;
      ep.slope = slope.data();
      ep.slope_step = variant % 4 == 2 ? 0 : 1;
      return run_job<float>(s, m, e.words, w, &ep, path, th);
    };
    floats(out(ea, kPortable, 1), out(eb, isa, threads), name + ": output");
  }
};

const Mode kModes[] = {{1, 1, false}, {2, 1, false}, {2, 2, false}, {3, 2, false},
                       {1, 3, false}, {1, 1, true},  {1, 2, true}};

void check_path(Checker& ck) {
  uint64_t seed = 1;
  // GEMMs: K past one word, past the AVX2 byte rounds (31 words) and, once, past the NEON 16-bit rounds (4095).
  for (int64_t K : {1, 63, 64, 65, 130, 577, 64 * 31 + 1, 5000})
    for (auto [M, N] : {std::pair<int64_t, int64_t>{1, 1}, {3, 33}, {7, 64}, {13, 130}})
      for (const Mode& m : kModes) {
        ck.threads = 1 + (seed % 2);
        ck.job_case(Shape{M, K, 1, 1, N, 1, 1, 0, 1, true}, m, seed++);
      }
  for (const Mode& m : {kModes[0], kModes[1], kModes[5]})
    ck.job_case(Shape{2, 64 * 4100 + 5, 1, 1, 33, 1, 1, 0, 1, true}, m, seed++);
  // Convolutions: 3x3 with padding, strides and dilation, 1x1, channel tails 1 / 63 / 65 / 130, batch 1 and 3;
  // packed taps on 1 channel and, as jobs, 16, 20 (5x5: groups of 3 + 2) and 32 (with stride and dilation). The
  // 16-channel shape's layer cases differ between paths when the NaN / Inf inputs make the fitted scales non-finite
  // (equal with finite inputs; the torch op refuses such scales), so only its jobs run here.
  const Shape convs[] = {
      {1, 64, 9, 8, 32, 3, 1, 1, 1, false},   {1, 1, 5, 5, 7, 3, 1, 1, 1, false},
      {3, 63, 5, 7, 64, 3, 1, 1, 1, false},   {2, 65, 7, 6, 33, 3, 2, 1, 1, false},
      {1, 130, 6, 5, 40, 3, 2, 2, 1, false},  {3, 63, 5, 7, 64, 1, 1, 0, 1, false},
      {2, 70, 9, 9, 9, 3, 1, 2, 2, false},    {1, 300, 4, 4, 65, 3, 1, 1, 1, false},
      {3, 130, 4, 5, 130, 3, 1, 1, 1, false},
  };
  const Shape packed[] = {
      {2, 16, 7, 6, 16, 3, 1, 1, 1, false}, {1, 20, 9, 9, 16, 5, 1, 0, 1, false}, {1, 32, 8, 7, 33, 3, 2, 2, 2, false},
  };
  auto jobs = [&](const Shape& s) {
    for (const Mode& m : kModes) {
      ck.threads = 1 + (seed % 2);
      ck.job_case(s, m, seed++);
    }
  };
  for (const Shape& s : convs) jobs(s);
  for (const Shape& s : packed) jobs(s);
  // The fused layer: every fit with its modes, and the epilogue variants (prologue, clamp, act, residual, slope).
  for (const Shape& s : convs)
    for (int variant = 0; variant < 9; ++variant) {
      ck.threads = 1 + (seed % 2);
      const Mode m = kModes[variant % 5];
      ck.layer_case(s, m, kGiven, variant, seed++);
      ck.layer_case(s, Mode{m.pa, m.pw, false}, kGreedy, variant + 1, seed++);
      ck.layer_case(s, Mode{2, 1 + variant % 2, false}, kLs2, variant + 2, seed++);
      ck.layer_case(s, Mode{1, 1 + variant % 2, true}, kTernary, variant + 3, seed++);
    }
}

// ------------------------------------------------------------------ direct uint8 x int8 convolution (VNNI)
// direct_conv (direct_conv.h) against a scalar evaluation of its definition: int64 sums of q (w) - z sum w, then
// ((float) acc * s_x) * s_w + bias in that order, ReLU, and the max-pool over the floor-mode windows of the conv
// output, compared with memcmp (both sides round the same three times). The weights are packed here from the
// layout's description: per panel of up to 64 channels (of N rounded up to 16), (KH, D, channels, 4) bytes with
// byte 4 t + i of a kernel row at k = kw C + c.
struct DirectCase {
  int64_t B, C, H, W, N, k, s, p;
  bool relu;
  int64_t pk, ps, pp;  // max-pool (pk = 0: none)
};

void check_direct_case(const DirectCase& dc, int64_t threads, uint64_t seed, Tally& tally) {
  Rng rng(seed);
  const int64_t Hp = dc.H + 2 * dc.p, Wp = dc.W + 2 * dc.p, K = dc.k;
  const int64_t OH = (Hp - K) / dc.s + 1, OW = (Wp - K) / dc.s + 1;
  const int32_t z = static_cast<int32_t>(rng.next() % 256);
  std::vector<uint8_t> q(dc.B * Hp * Wp * dc.C + 4, static_cast<uint8_t>(z));  // padding holds z; 4 spare bytes
  for (int64_t b = 0; b < dc.B; ++b)
    for (int64_t h = 0; h < dc.H; ++h)
      for (int64_t w = 0; w < dc.W; ++w)
        for (int64_t c = 0; c < dc.C; ++c)
          q[((b * Hp + h + dc.p) * Wp + w + dc.p) * dc.C + c] = static_cast<uint8_t>(rng.next() % 256);
  std::vector<int8_t> wt(dc.N * dc.C * K * K);  // (N, C, KH, KW)
  for (auto& x : wt) x = static_cast<int8_t>(static_cast<int>(rng.next() % 255) - 127);
  auto wat = [&](int64_t n, int64_t c, int64_t kh, int64_t kw) { return wt[((n * dc.C + c) * K + kh) * K + kw]; };
  const int64_t D = (K * dc.C + 3) / 4, Npad = (dc.N + 15) / 16 * 16;
  std::vector<int8_t> packed;
  for (int64_t n0 = 0; n0 < Npad; n0 += 64) {
    const int64_t chans = std::min<int64_t>(64, Npad - n0);
    for (int64_t kh = 0; kh < K; ++kh)
      for (int64_t t = 0; t < D; ++t)
        for (int64_t n = n0; n < n0 + chans; ++n)
          for (int64_t i = 0; i < 4; ++i) {
            const int64_t kk = 4 * t + i;
            packed.push_back(n < dc.N && kk < K * dc.C ? wat(n, kk % dc.C, kh, kk / dc.C) : int8_t(0));
          }
  }
  std::vector<int32_t> wsum(dc.N, 0);
  std::vector<float> sw(dc.N), bias(dc.N);
  for (int64_t n = 0; n < dc.N; ++n) {
    for (int64_t c = 0; c < dc.C; ++c)
      for (int64_t kh = 0; kh < K; ++kh)
        for (int64_t kw = 0; kw < K; ++kw) wsum[n] += wat(n, c, kh, kw);
    sw[n] = 1e-3f * (0.5f + rng.uniform());
    bias[n] = rng.normal();
  }
  const float sx = 0.01f + 0.1f * rng.uniform();
  // reference: conv output y (B, OH, OW, N), then the pool
  std::vector<float> y(dc.B * OH * OW * dc.N);
  for (int64_t b = 0; b < dc.B; ++b)
    for (int64_t oh = 0; oh < OH; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow)
        for (int64_t n = 0; n < dc.N; ++n) {
          int64_t acc = -static_cast<int64_t>(z) * wsum[n];
          for (int64_t kh = 0; kh < K; ++kh)
            for (int64_t kw = 0; kw < K; ++kw)
              for (int64_t c = 0; c < dc.C; ++c)
                acc += int64_t(q[((b * Hp + oh * dc.s + kh) * Wp + ow * dc.s + kw) * dc.C + c]) * wat(n, c, kh, kw);
          float f = static_cast<float>(acc) * sx;
          f = f * sw[n];
          f = f + bias[n];
          if (dc.relu) f = f > 0.f ? f : 0.f;
          y[((b * OH + oh) * OW + ow) * dc.N + n] = f;
        }
  std::vector<float> want = y;
  int64_t POH = OH, POW = OW;
  if (dc.pk) {
    POH = (OH + 2 * dc.pp - dc.pk) / dc.ps + 1;
    POW = (OW + 2 * dc.pp - dc.pk) / dc.ps + 1;
    want.assign(dc.B * POH * POW * dc.N, 0.f);
    for (int64_t b = 0; b < dc.B; ++b)
      for (int64_t ph = 0; ph < POH; ++ph)
        for (int64_t pw = 0; pw < POW; ++pw)
          for (int64_t n = 0; n < dc.N; ++n) {
            const int64_t h0 = ph * dc.ps - dc.pp, w0 = pw * dc.ps - dc.pp;  // the window, cut at the edges
            float m = -INFINITY;
            for (int64_t h = std::max<int64_t>(0, h0); h < std::min(OH, h0 + dc.pk); ++h)
              for (int64_t w = std::max<int64_t>(0, w0); w < std::min(OW, w0 + dc.pk); ++w)
                m = std::max(m, y[((b * OH + h) * OW + w) * dc.N + n]);
            want[((b * POH + ph) * POW + pw) * dc.N + n] = m;
          }
  }
  std::vector<float> got(want.size(), NAN);
  DirectConv d;
  d.q = q.data();
  d.B = dc.B; d.Hp = Hp; d.Wp = Wp; d.C = dc.C;
  d.w = packed.data(); d.wsum = wsum.data(); d.sw = sw.data(); d.bias = bias.data();
  d.sx = sx; d.z = z;
  d.N = dc.N; d.KH = K; d.KW = K; d.sh = dc.s; d.sw_ = dc.s; d.OH = OH; d.OW = OW;
  d.relu = dc.relu;
  d.pk = dc.pk; d.ps = dc.ps; d.pp = dc.pp; d.POH = dc.pk ? POH : 0; d.POW = dc.pk ? POW : 0;
  d.out = got.data();
  d.threads = threads;
  direct_conv(d);
  ++tally.checks;
  if (!bits_equal(got, want)) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "direct conv b%lld c%lld %lldx%lld n%lld k%lld s%lld p%lld pool %lld/%lld/%lld, "
                  "%lld threads", (long long)dc.B, (long long)dc.C, (long long)dc.H, (long long)dc.W,
                  (long long)dc.N, (long long)K, (long long)dc.s, (long long)dc.p, (long long)dc.pk,
                  (long long)dc.ps, (long long)dc.pp, (long long)threads);
    tally.fail(buf);
  }
}

// Shapes of the float parts that run it: a 7x7 / 2 stem with its 3 / 2 / 1 pool, 1x1 shortcuts (stride 1 and 2),
// a classifier as 1x1 pixels; channel counts 1 - 5 (kernel rows of KW C bytes not a multiple of 4, with their
// tails gathered (7x7 on 3 channels, 3x3 on 2 and 3, 5x5 on 1) or read in place), output panels of 16 - 128
// channels (one or two panels, a partial vector), odd sizes whose pool windows are cut at the edges.
int check_direct_conv() {
  const DirectCase cases[] = {
      {1, 3, 23, 21, 64, 7, 2, 3, true, 3, 2, 1}, {2, 3, 17, 19, 80, 7, 2, 3, true, 3, 2, 1},
      {1, 1, 9, 11, 16, 3, 1, 1, false, 2, 2, 0}, {2, 4, 8, 8, 20, 5, 1, 2, true, 0, 1, 0},
      {1, 5, 7, 6, 33, 3, 2, 0, false, 0, 1, 0},  {2, 64, 6, 6, 48, 1, 2, 0, false, 0, 1, 0},
      {3, 128, 1, 1, 70, 1, 1, 0, false, 0, 1, 0}, {1, 2, 12, 10, 128, 3, 1, 1, true, 3, 1, 1},
      {1, 3, 15, 13, 40, 3, 1, 1, true, 3, 2, 1}, {2, 1, 10, 9, 20, 3, 1, 1, false, 2, 2, 0},  // pools of 3, 2 vectors
      {2, 1, 12, 11, 24, 5, 1, 0, true, 0, 1, 0},  // 5-byte rows: two gathered tail dwords for 5 rows
      {1, 3, 61, 57, 64, 7, 2, 3, true, 3, 2, 1},  // work enough for 2 threads: bands whose pool windows overlap
  };
  Tally tally{"direct int8 conv"};
  uint64_t seed = 1000;
  for (const DirectCase& dc : cases)
    for (int64_t threads : {1, 2}) check_direct_case(dc, threads, seed++, tally);
  std::printf("engine_check: direct int8 conv (VNNI) vs scalar reference: %lld checks, %lld mismatches "
              "(bit for bit)\n", (long long)tally.checks, (long long)tally.failures);
  return tally.failures ? 1 : 0;
}

}  // namespace

int main() {
  std::vector<int64_t> paths;
  for (int64_t isa : {kNeon, kAvx2, kAvx512})
    if (isa_supported(isa)) paths.push_back(isa);
  if (paths.empty()) {
    std::printf("engine_check: no vector path on this CPU (portable only); nothing to compare\n");
    return 2;
  }
  int rc = 0;
  for (int64_t isa : paths) {
    Checker ck{isa, Tally{isa_name(isa)}, isa != kAvx512};
    check_path(ck);
    std::printf("engine_check: %s vs portable: %lld checks, %lld mismatches (%s)\n", isa_name(isa),
                (long long)ck.tally.checks, (long long)ck.tally.failures,
                ck.exact_float ? "all bit for bit" : "integers and encode bit for bit, floats to 1e-5");
    if (ck.tally.failures) rc = 1;
  }
  if (direct_conv_supported() && check_direct_conv()) rc = 1;
  return rc;
}
