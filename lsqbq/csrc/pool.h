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
// An exception of fn is rethrown on the calling thread. With a runner set (set_runner), calls of more than one
// thread go to the runner instead of this pool.
void pool_run(int64_t n, int64_t grain, int64_t threads, const RangeFn& fn);

// The host's own parallel loop, to use instead of this pool: runner(n, grain, fn) calls fn over [0, n) in ranges
// of at least grain indices, each index once, on the host's threads. The torch op layer sets torch's
// (at::parallel_for on its OpenMP pool): the oneDNN layers between the XNOR layers run on that pool, whose idle
// workers spin for a while after each op; a second pool's workers then competed with them for the same cores, and
// on 2 cores a whole network ran slower with 2 threads than with 1. nullptr: this pool (the C++ test binaries).
using Runner = void (*)(int64_t n, int64_t grain, const RangeFn& fn);
void set_runner(Runner runner);

// As pool_run, but calls whose whole work (`work`, in the caller's units) is below `min_work` run on the calling
// thread, as waking a thread costs more.
inline void parallel(int64_t n, int64_t grain, int64_t work, int64_t min_work, int64_t threads, const RangeFn& fn) {
  pool_run(n, grain, work < min_work ? 1 : threads, fn);
}

}  // namespace lsqbq
