// Turn-end work, off the response path: the conversation's similarity
// estimate (krul: the turns before, carried in the version this turn
// continued and decayed by estimate_decay, plus this turn's prefill and
// decode), then PlanTurnEnd (krul/restore/turn_end.h, the same function the
// quality benchmarks measure): the layer pairs, the restore split the next
// turn will use and the compressed KV, committed to the store as a new
// conversation version whose record carries the estimate on.
//
// A job may first rewrite its KV on the engine slot it holds (the
// session's re-prefill of its answer, PersistJob::rewrite): that runs on a
// thread of its own, so the slot is free again without waiting for other
// jobs' store writes. Jobs run on one background thread in submission order
// (a rewritten job when its rewrite is done). The queue is bounded: when it is full a turn is
// dropped (counted in krul_worker_persists_total{result="dropped"}), so a slow store costs the next
// turn a recompute, never the worker its memory.
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
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "krul/compress/backend_estimator.h"
#include "krul/compress/compression_plan.h"
#include "krul/compress/pair_calibration.h"
#include "krul/compress/selector.h"
#include "krul/compress/similarity_estimator.h"
#include "krul/engine/backend_kv_cache.h"
#include "krul/restore/cost_model.h"
#include "krul/restore/turn_end.h"
#include "krul/v1/kvstore.pb.h"
#include "worker/core/metrics.h"
#include "worker/core/options.h"
#include "worker/session/conversation_store.h"
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
  // The estimate stored with the version this turn continued (its record's),
  // when the turn restored that version; the estimator then saw only this
  // turn's new input and answer. Absent after a miss or a fallback, where
  // the estimator saw the whole history prefilled.
  std::optional<SimilarityEstimate> carried_estimate;
  // When set, run first (on the rewrite thread), then destroyed: it makes
  // `cache` hold the KV of record.tokens[0, record.kv_tokens). It owns what
  // it needs (the session's engine slot, released when it is destroyed). A
  // failure drops the job (counted as an error).
  absl::AnyInvocable<absl::Status(BackendKvCache&)> rewrite;
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
  // toward, weighing as krul_prior_rows rows (none or 0: own only); used
  // when there is no pair calibration.
  std::optional<SimilarityEstimate> krul_prior;
  double krul_prior_rows = 0;
  // krul: reference conversations with measured pair costs (not owned;
  // must outlive the persister; nullptr = none) and how many nearest ones
  // predict a conversation's pair costs (turn_end.h).
  const PairCalibration* calibration = nullptr;
  int neighbours = 5;
  // krul: weight of the turns before in a conversation's carried estimate,
  // per turn (estimate_codec.h's CarryEstimate): 1 = every turn alike.
  double estimate_decay = 1.0;
  // Units of a shared pair wider than this angle are stored unmerged
  // (compressor.h); 180 = never.
  double retain_angle_degrees = 180;
};

class Persister {
 public:
  // `store`, `cost_model` and `metrics` are borrowed and must outlive it.
  Persister(const PersisterOptions& options, ConversationStore* store, CostModel* cost_model,
            WorkerMetrics* metrics);
  ~Persister();  // Drain(), then stops the threads

  // Queues `job`; false (and the job dropped) when the queue is full or the
  // persister is shut down.
  bool Submit(PersistJob job);

  // Waits until every queued job (rewrites included) is done or `timeout`
  // passed; true when the queues are empty.
  bool Drain(absl::Duration timeout);

  // Runs one job on the calling thread (what the background threads do,
  // its rewrite included). Errors of the rewrite, selector, planner,
  // compressor and store.
  absl::Status Run(PersistJob& job);

  // The layer pairs `mode` stores with for a conversation whose estimate
  // (so far) is `estimate`, and `cache` ([0, num_tokens) of every layer;
  // may be null without a pair calibration). Exposed for tests.
  PairChoice ChoosePairs(RestoreMode mode, const std::optional<SimilarityEstimate>& estimate,
                         const KvCache* cache = nullptr, int num_tokens = 0) const;
  CompressionPlan PairsFor(RestoreMode mode,
                           const std::optional<SimilarityEstimate>& estimate) const {
    return ChoosePairs(mode, estimate).pairs;
  }

  // What PlanTurnEnd is given (from the options).
  const TurnEndOptions& turn_end_options() const { return turn_end_; }

 private:
  void Loop();
  void RewriteLoop();

  const PersisterOptions options_;
  const TurnEndOptions turn_end_;
  ConversationStore* const store_;
  CostModel* const cost_model_;
  WorkerMetrics* const metrics_;

  absl::Mutex mu_;
  std::deque<PersistJob> queue_ ABSL_GUARDED_BY(mu_);
  std::deque<PersistJob> rewrites_ ABSL_GUARDED_BY(mu_);  // before queue_
  bool busy_ ABSL_GUARDED_BY(mu_) = false;
  bool rewriting_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_rewrites_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread rewrite_thread_;
  std::thread thread_;
};

}  // namespace krul::worker

#endif  // KRUL_SERVICES_WORKER_SESSION_PERSISTER_H_
