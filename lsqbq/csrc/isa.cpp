// Run-time detection of the instruction-set paths (see isa.h).
#include "isa.h"

#include <cstdlib>
#include <cstring>

namespace lsqbq {

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

bool avx2_supported() {
#if LSQBQ_X86
  static const bool ok =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("popcnt");
  return ok;
#else
  return false;
#endif
}

bool neon_supported() { return LSQBQ_ARM != 0; }

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

bool isa_known(int64_t isa) { return isa == kPortable || isa == kAvx512 || isa == kAvx2 || isa == kNeon; }

bool isa_supported(int64_t isa) {
  return isa == kPortable || (isa == kAvx512 && avx512_supported()) || (isa == kAvx2 && avx2_supported()) ||
         (isa == kNeon && neon_supported());
}

const char* isa_name(int64_t isa) {
  switch (isa) {
    case kPortable: return "portable";
    case kAvx512: return "AVX-512 VPOPCNTDQ";
    case kAvx2: return "AVX2 (with FMA and POPCNT)";
    case kNeon: return "NEON (aarch64)";
    default: return "unknown";
  }
}

}  // namespace lsqbq
