// The latency of dependent random loads over a working set: how much of the shared cache this process gets
// (no torch headers). A benchmark records it before and after its timings, beside the load and the steal share.
#pragma once

#include <cstdint>

namespace lsqbq {

// Nanoseconds per load of a pointer chase through one random cycle over the 64-byte lines of `bytes` bytes
// (Sattolo's shuffle, a fixed seed): every load waits for the one before, so the time is the latency of the level
// of the memory hierarchy that holds the set. bytes >= 128 and loads >= 1, else std::invalid_argument.
double random_load_ns(int64_t bytes, int64_t loads);

}  // namespace lsqbq
