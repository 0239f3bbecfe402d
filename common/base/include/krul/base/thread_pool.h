// A fixed-size pool of worker threads for data-parallel loops.
//
// ParallelFor splits [0, n) into contiguous chunks, runs them on the workers
// and the calling thread, and returns when all are done. Workers spin briefly
// before sleeping, because the engine issues many short loops per token.
//
// Thread-safety: ParallelFor may be called from several threads at once; the
// calls are serialized. Do not call ParallelFor from inside a ParallelFor body
// of the same pool (it would deadlock); such a nested call runs serially.
#ifndef KRUL_BASE_THREAD_POOL_H_
#define KRUL_BASE_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"

namespace krul {

class ThreadPool {
 public:
  // `num_threads` counts the caller: 1 runs everything on the calling thread.
  // 0 picks std::thread::hardware_concurrency().
  explicit ThreadPool(int num_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }

  // Calls body(begin, end) over disjoint ranges covering [0, n). Each range
  // holds at least `min_chunk` items (except possibly the last).
  void ParallelFor(int64_t n, const std::function<void(int64_t, int64_t)>& body,
                   int64_t min_chunk = 1);

 private:
  void WorkerLoop(int worker_index);
  void RunChunks();

  const int num_threads_;
  std::vector<std::thread> workers_;
  std::mutex call_mu_;  // serializes ParallelFor callers

  std::mutex mu_;
  std::condition_variable wake_;
  // Job state, published by ParallelFor under mu_ and by `generation_`.
  const std::function<void(int64_t, int64_t)>* body_ = nullptr;
  int64_t n_ = 0;
  int64_t chunk_ = 1;
  std::atomic<int64_t> next_chunk_{0};
  std::atomic<int> pending_workers_{0};
  std::atomic<uint64_t> generation_{0};
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace krul

#endif  // KRUL_BASE_THREAD_POOL_H_
