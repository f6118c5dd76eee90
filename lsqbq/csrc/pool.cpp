// The work-claiming thread pool (see pool.h).
#include "pool.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "isa.h"

namespace lsqbq {
namespace {

class Pool {
 public:
  static Pool& get() {
    static Pool* pool = [] {
      pthread_atfork(nullptr, nullptr, [] { fork_child = true; });  // a forked child runs calls inline
      return new Pool();  // never destroyed: workers live as long as the process
    }();
    return *pool;
  }

  void run(int64_t n, int64_t grain, int64_t threads, const RangeFn& fn) {
    grain = std::max<int64_t>(1, grain);
    if (threads <= 1 || n <= grain || in_worker || fork_child) {
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
    t.fn = &fn;
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
    const RangeFn* fn = nullptr;
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
        (*t.fn)(b, std::min(t.n, b + t.grain));
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

}  // namespace

namespace {
std::atomic<Runner> host_runner{nullptr};
}  // namespace

void set_runner(Runner runner) { host_runner.store(runner, std::memory_order_release); }

void pool_run(int64_t n, int64_t grain, int64_t threads, const RangeFn& fn) {
  const Runner runner = host_runner.load(std::memory_order_acquire);
  grain = std::max<int64_t>(1, grain);
  if (runner != nullptr && threads > 1 && n > grain) return runner(n, grain, fn);
  Pool::get().run(n, grain, threads, fn);
}

}  // namespace lsqbq
