// Work-claiming thread pool of the XNOR engine (no torch headers; the op layer passes torch's thread count).
//
// A call is split into chunks of `grain` indices that threads claim from an atomic counter. The calling thread
// always works too and waits only for workers that actually claimed a chunk, so a worker that is descheduled (a
// loaded machine) or still asleep costs nothing: with T threads a call is never slower than the calling thread
// alone plus one chunk. (OpenMP's static split waits at the join for every thread.) Workers spin briefly after a
// job, so back-to-back layers find them awake, then sleep. Chunks are fixed ranges, and every output is computed
// by exactly one chunk, so results do not depend on the thread count.
#pragma once

#include <cstdint>
#include <functional>

namespace lsqbq {

using RangeFn = std::function<void(int64_t, int64_t)>;

// fn(begin, end) over [0, n) in chunks of grain on up to `threads` threads (the caller included); inline on the
// calling thread for threads <= 1, inside a worker, in a forked child, or while another pooled call runs.
// An exception of fn is rethrown on the calling thread.
void pool_run(int64_t n, int64_t grain, int64_t threads, const RangeFn& fn);

// As pool_run, but calls whose whole work (`work`, in the caller's units) is below `min_work` run on the calling
// thread, as waking a thread costs more.
inline void parallel(int64_t n, int64_t grain, int64_t work, int64_t min_work, int64_t threads, const RangeFn& fn) {
  pool_run(n, grain, work < min_work ? 1 : threads, fn);
}

}  // namespace lsqbq
