#include "krul/base/thread_pool.h"

#include <algorithm>

namespace krul {
namespace {

// Spin iterations before a worker sleeps; covers the gap between the many
// short loops of one decode step without burning a core while idle.
constexpr int kSpinIterations = 20000;

// Set while a thread runs a ParallelFor body, so nested calls run serially
// instead of deadlocking.
thread_local bool in_parallel_region = false;

}  // namespace

ThreadPool::ThreadPool(int num_threads)
    : num_threads_(num_threads > 0
                       ? num_threads
                       : std::max(1, static_cast<int>(std::thread::hardware_concurrency()))) {
  for (int i = 1; i < num_threads_; ++i) {
    workers_.emplace_back([this, i] { WorkerLoop(i); });
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::RunChunks() {
  const int64_t num_chunks = (n_ + chunk_ - 1) / chunk_;
  for (;;) {
    int64_t c = next_chunk_.fetch_add(1, std::memory_order_relaxed);
    if (c >= num_chunks) break;
    int64_t begin = c * chunk_;
    (*body_)(begin, std::min(n_, begin + chunk_));
  }
}

void ThreadPool::WorkerLoop(int worker_index) {
  uint64_t seen = 0;
  for (;;) {
    // Wait for a new generation: spin first, then sleep.
    int spins = 0;
    while (generation_.load(std::memory_order_acquire) == seen && spins < kSpinIterations) {
      ++spins;
#if defined(__x86_64__)
      __builtin_ia32_pause();
#endif
    }
    if (generation_.load(std::memory_order_acquire) == seen) {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock,
                 [&] { return generation_.load(std::memory_order_acquire) != seen || stop_; });
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) return;
    }
    seen = generation_.load(std::memory_order_acquire);
    in_parallel_region = true;
    RunChunks();
    in_parallel_region = false;
    pending_workers_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::ParallelFor(int64_t n, const std::function<void(int64_t, int64_t)>& body,
                             int64_t min_chunk) {
  if (n <= 0) return;
  min_chunk = std::max<int64_t>(1, min_chunk);
  if (num_threads_ == 1 || n <= min_chunk || in_parallel_region) {
    body(0, n);
    return;
  }
  std::lock_guard<std::mutex> call_lock(call_mu_);
  // A few chunks per thread balance uneven work (causal attention rows).
  int64_t chunk = std::max(min_chunk, (n + 4 * num_threads_ - 1) / (4 * num_threads_));
  {
    std::lock_guard<std::mutex> lock(mu_);
    body_ = &body;
    n_ = n;
    chunk_ = chunk;
    next_chunk_.store(0, std::memory_order_relaxed);
    pending_workers_.store(num_threads_ - 1, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  in_parallel_region = true;
  RunChunks();
  in_parallel_region = false;
  // Workers finish their last chunk; spin since that is usually microseconds.
  while (pending_workers_.load(std::memory_order_acquire) != 0) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
  }
  body_ = nullptr;
}

}  // namespace krul
