// The pointer chase of memprobe.h.
#include "memprobe.h"

#include <chrono>
#include <stdexcept>
#include <vector>

namespace lsqbq {

double random_load_ns(int64_t bytes, int64_t loads) {
  if (bytes < 128 || loads < 1) throw std::invalid_argument("lsqbq: random_load_ns needs bytes >= 128, loads >= 1");
  struct alignas(64) Line {
    const Line* next;
  };
  const int64_t n = bytes / 64;
  std::vector<Line> lines(n);
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  uint64_t s = 0x9E3779B97F4A7C15ull;  // xorshift64
  for (int64_t i = n - 1; i > 0; --i) {  // Sattolo: a uniform random permutation with a single cycle
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    std::swap(order[i], order[s % static_cast<uint64_t>(i)]);
  }
  for (int64_t i = 0; i < n; ++i) lines[order[i]].next = &lines[order[(i + 1) % n]];
  const Line* p = &lines[order[0]];
  for (int64_t i = 0; i < n; ++i) p = p->next;  // one lap first: the set as cached as it will get
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < loads; ++i) p = p->next;
  const auto t1 = std::chrono::steady_clock::now();
  asm volatile("" : : "r"(p));  // the chase is used
  return std::chrono::duration<double, std::nano>(t1 - t0).count() / static_cast<double>(loads);
}

}  // namespace lsqbq
