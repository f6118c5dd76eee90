// Instruction-set paths of the XNOR engine and their run-time detection (no torch headers).
//
// One build runs on every x86-64 CPU: no -march flag is used. The vector code carries function target attributes
// (LSQBQ_AVX512, LSQBQ_AVX2) and is called only where the CPU reports the instructions (__builtin_cpu_supports):
//   kPortable  scalar C++ (the POPCNT instruction where the CPU has it, else a software popcount);
//   kAvx512    AVX-512 VPOPCNTDQ micro-kernels (512-bit popcount per 64-bit lane);
//   kAvx2      AVX2 micro-kernels (nibble-lookup popcount on 256-bit registers), for CPUs without AVX-512;
//   kNeon      aarch64 Advanced SIMD micro-kernels (vcntq_u8 byte popcount, pairwise widening adds); NEON is part
//              of every aarch64 CPU, so an aarch64 build always has it and an x86-64 build never does.
// The codes are the `isa` argument of the ops (lsqbq/kernels/ops.py, _ISA).
#pragma once

#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LSQBQ_X86 1
#define LSQBQ_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vpopcntdq,popcnt,avx2,fma")))
// No "fma" here: the AVX2 tiles and epilogue keep every float multiply and add separate, as the portable code
// does, so the compiler cannot fuse them (the encode's prologue, a true fma in both paths, uses LSQBQ_AVX2_FMA).
#define LSQBQ_AVX2 __attribute__((target("avx2,popcnt")))
#define LSQBQ_AVX2_FMA __attribute__((target("avx2,fma,popcnt")))
#define LSQBQ_POPCNT __attribute__((target("popcnt")))
#else
#define LSQBQ_X86 0
#endif

#if defined(__aarch64__)
#include <arm_neon.h>
#define LSQBQ_ARM 1
#else
#define LSQBQ_ARM 0
#endif

namespace lsqbq {

enum Isa : int64_t { kPortable = 0, kAvx512 = 1, kAvx2 = 2, kNeon = 3 };

bool avx512_supported();  // AVX-512 F, BW, DQ, VL and VPOPCNTDQ
bool avx2_supported();    // AVX2, FMA and POPCNT
bool neon_supported();    // an aarch64 build (NEON is mandatory there)
// POPCNT present and not switched off (LSQBQ_POPCNT=0 forces the portable kernels' generic build).
bool popcnt_supported();
bool isa_known(int64_t isa);      // one of the codes above
bool isa_supported(int64_t isa);  // a known code whose instructions this CPU has
const char* isa_name(int64_t isa);

inline __attribute__((always_inline)) int popcount64(uint64_t x) { return __builtin_popcountll(x); }

#if LSQBQ_X86
// Mask of the first min(k, 16) of 16 lanes (k >= 0): the tail of a row in 16-float vectors.
inline __mmask16 first_lanes(int64_t k) { return static_cast<__mmask16>(k >= 16 ? 0xffffu : (1u << k) - 1); }
#endif

}  // namespace lsqbq
