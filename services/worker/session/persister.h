// Turn-end work, off the response path: select the layer pairs (from the
// turn's similarity estimate for krul, fixed pairs for the baselines),
// choose the restore split the next turn will use, compress the KV and
// commit it to the store as a new conversation version.
//
// Jobs run on one background thread in submission order. The queue is
// bounded: when it is full a turn is dropped (counted in
// krul_worker_persists_total{result="dropped"}), so a slow store costs the
// next turn a recompute, never the worker its memory.
//
// Thread-safe.
#ifndef KRUL_SERVICES_WORKER_SESSION_PERSISTER_H_
#define KRUL_SERVICES_WORKER_SESSION_PERSISTER_H_

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "worker/session/conversation_store.h"
#include "krul/compress/compression_plan.h"
#include "krul/restore/cost_model.h"
#include "krul/compress/backend_estimator.h"
#include "krul/compress/selector.h"
#include "krul/compress/similarity_estimator.h"
#include "krul/engine/backend_kv_cache.h"
#include "krul/v1/kvstore.pb.h"
#include "worker/core/metrics.h"
#include "worker/core/options.h"
#include "worker/session/session_record.h"

namespace krul::worker {

struct PersistJob {
  v1::ConversationKey key;
  // Filled by the session: model_id, chat_template, mode, message_count,
  // digest, tokens, kv_tokens. The persister fills the rest.
  SessionRecord record;
  // Holds [0, record.kv_tokens) of every layer; the backend's cache (a
  // device cache is copied to the host here, off the response path). The
  // backend's enqueued work on it must be complete (its Forward was).
  std::unique_ptr<BackendKvCache> cache;
  // The turn's estimator (krul mode only); Finish() is called here, so the
  // response never waits for its background thread.
  std::unique_ptr<BackendEstimator> estimator;
};

struct PersisterOptions {
  std::string model_id;
  KvShape shape;
  // The pairing modes' target ratio and krul's selection (sensitivity).
  SelectorOptions selector;
  int expected_new_tokens = 64;
  int granularity_tokens = 16;
  int chunk_tokens = 256;
  DType dtype = DType::kF32;
  int max_pending = 16;
  absl::Duration deadline = absl::Seconds(10);
  // krul-fixed's pairs (from calibration or flags).
  CompressionPlan fixed_pairs;
  // krul: the calibration estimate each conversation's estimate is shrunk
  // toward, weighing as krul_prior_rows rows (none or 0: own only).
  std::optional<SimilarityEstimate> krul_prior;
  double krul_prior_rows = 0;
};

class Persister {
 public:
  // `store`, `cost_model` and `metrics` are borrowed and must outlive it.
  Persister(const PersisterOptions& options, ConversationStore* store, CostModel* cost_model,
            WorkerMetrics* metrics);
  ~Persister();  // Drain(), then stops the thread

  // Queues `job`; false (and the job dropped) when the queue is full or the
  // persister is shut down.
  bool Submit(PersistJob job);

  // Waits until every queued job is done or `timeout` passed; true when
  // the queue is empty.
  bool Drain(absl::Duration timeout);

  // Runs one job on the calling thread (what the background thread does).
  // Errors of the selector, planner, compressor and store.
  absl::Status Run(PersistJob& job);

  // The layer pairs `job`'s mode stores with. Exposed for tests.
  CompressionPlan PairsFor(RestoreMode mode, std::optional<SimilarityEstimate>& estimate) const;

 private:
  void Loop();

  const PersisterOptions options_;
  ConversationStore* const store_;
  CostModel* const cost_model_;
  WorkerMetrics* const metrics_;

  absl::Mutex mu_;
  std::deque<PersistJob> queue_ ABSL_GUARDED_BY(mu_);
  bool busy_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace krul::worker

#endif  // KRUL_SERVICES_WORKER_SESSION_PERSISTER_H_
