// The load stream of one restore (restorer.h): a thread that runs a plan's
// LoadSteps in order, each a KvSource::Fetch into the cache followed by
// cache.WaitForWrites() (so a step counts as done, and is timed, when its
// rows have landed, also on a device), and publishes up to which layer
// every load step is done. The steps are one streamed request (the source
// reads ahead), so the stream is measured as a whole: the restorer reports
// it to the cost model once. Internal to krul_restore.
//
// Thread safety: WaitForLayer and Join are called by the restore's compute
// thread; the load thread is internal. Destroying the stream cancels the
// steps not yet started and joins the thread, so an early return of the
// restore never leaves the thread writing into a cache that goes away.
#ifndef KRUL_RESTORE_LOAD_STREAM_H_
#define KRUL_RESTORE_LOAD_STREAM_H_

#include <chrono>
#include <cstddef>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "krul/engine/backend_kv_cache.h"
#include "krul/restore/kv_source.h"
#include "krul/restore/restore_plan.h"

namespace krul {

class LoadStream {
 public:
  using Clock = std::chrono::steady_clock;

  // What the load thread did, read after Join().
  struct Totals {
    double busy_seconds = 0;   // summed over steps: fetch + writes landed
    size_t bytes = 0;          // as the source reported
    double planned_bytes = 0;  // the plan's bytes of the steps done
    int requests = 0;          // load steps done
    // The first step: seconds to it (the stream's latency + its own bytes)
    // and its bytes as the source reported.
    double first_seconds = 0;
    size_t first_bytes = 0;
    Clock::time_point finished;  // the last step done (`start` when none)
  };

  // Starts the thread over `plan`'s loads (none: every layer is loaded
  // from the start). `source` may be null only when the plan loads nothing.
  // `plan`, `source` and `cache` must outlive the stream.
  LoadStream(const RestorePlan& plan, KvSource* source, BackendKvCache& cache,
             Clock::time_point start);
  ~LoadStream();
  LoadStream(const LoadStream&) = delete;
  LoadStream& operator=(const LoadStream&) = delete;

  // Blocks until every load step of layers <= `layer` is done; the first
  // fetch or write error instead.
  absl::Status WaitForLayer(int layer);

  // Joins the thread once every step is done (WaitForLayer of the last
  // layer returned OK) and returns what it did.
  Totals Join();

 private:
  void Run();

  const RestorePlan& plan_;
  KvSource* const source_;
  BackendKvCache& cache_;

  absl::Mutex mu_;
  // Every load step of layers <= loaded_through_ is done.
  int loaded_through_ ABSL_GUARDED_BY(mu_) = -1;
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  // Written by the load thread only; read after the join.
  Totals totals_;
  std::thread thread_;
};

}  // namespace krul

#endif  // KRUL_RESTORE_LOAD_STREAM_H_
