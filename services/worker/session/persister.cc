#include "worker/session/persister.h"

#include <chrono>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "krul/compress/compressor.h"
#include "krul/compress/estimate_codec.h"
#include "krul/compress/selector.h"
#include "krul/engine/kv_cache.h"
#include "krul/restore/restore_mode.h"
#include "worker/session/kv_blocks.h"

namespace krul::worker {

namespace {

TurnEndOptions TurnEndOf(const PersisterOptions& o) {
  TurnEndOptions t;
  t.shape = o.shape;
  t.selector = o.selector;
  t.calibration = o.calibration;
  t.neighbours = o.neighbours;
  t.prior = o.krul_prior;
  t.prior_rows = o.krul_prior_rows;
  t.fixed_pairs = o.fixed_pairs;
  t.dtype = o.dtype;
  t.chunk_tokens = o.chunk_tokens;
  t.retain_angle_degrees = o.retain_angle_degrees;
  t.expected_new_tokens = o.expected_new_tokens;
  t.granularity_tokens = o.granularity_tokens;
  return t;
}

}  // namespace

Persister::Persister(const PersisterOptions& options, ConversationStore* store,
                     CostModel* cost_model, WorkerMetrics* metrics)
    : options_(options),
      turn_end_(TurnEndOf(options)),
      store_(store),
      cost_model_(cost_model),
      metrics_(metrics) {
  rewrite_thread_ = std::thread([this] { RewriteLoop(); });
  thread_ = std::thread([this] { Loop(); });
}

Persister::~Persister() {
  Drain(options_.deadline);
  // Rewrites first: what they finish still goes to the main queue.
  {
    absl::MutexLock lock(&mu_);
    stop_rewrites_ = true;
  }
  rewrite_thread_.join();
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

bool Persister::Submit(PersistJob job) {
  absl::MutexLock lock(&mu_);
  if (stop_ || stop_rewrites_ ||
      static_cast<int>(queue_.size() + rewrites_.size()) >= options_.max_pending) {
    metrics_->CountPersist("dropped");
    return false;
  }
  (job.rewrite ? rewrites_ : queue_).push_back(std::move(job));
  return true;
}

bool Persister::Drain(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return queue_.empty() && !busy_ && rewrites_.empty() && !rewriting_;
  };
  return mu_.AwaitWithTimeout(absl::Condition(&idle), timeout);
}

void Persister::RewriteLoop() {
  while (true) {
    PersistJob job;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stop_rewrites_ || !rewrites_.empty();
      };
      mu_.Await(absl::Condition(&ready));
      if (rewrites_.empty()) return;  // stop_rewrites_ with nothing left
      job = std::move(rewrites_.front());
      rewrites_.pop_front();
      rewriting_ = true;
    }
    absl::Status status = job.cache == nullptr
                              ? absl::InvalidArgumentError("persist job without a KV cache")
                              : job.rewrite(*job.cache);
    job.rewrite = nullptr;  // releases what it held (the engine slot)
    if (!status.ok()) {
      metrics_->CountPersist("error");
      std::fprintf(
          stderr, "krul-worker: rewriting the KV of conversation '%s' turn %u failed: %s\n",
          job.key.conversation_id().c_str(), job.key.turn(), std::string(status.message()).c_str());
      job = PersistJob();  // free the KV before reporting idle
    }
    absl::MutexLock lock(&mu_);
    if (status.ok()) queue_.push_back(std::move(job));
    rewriting_ = false;
  }
}

void Persister::Loop() {
  while (true) {
    PersistJob job;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || !queue_.empty(); };
      mu_.Await(absl::Condition(&ready));
      if (queue_.empty()) return;  // stop_ with nothing left
      job = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
    }
    const auto start = std::chrono::steady_clock::now();
    absl::Status status = Run(job);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    metrics_->persist_seconds().Observe(seconds);
    metrics_->CountPersist(status.ok() ? "ok" : "error");
    if (!status.ok()) {
      std::fprintf(stderr, "krul-worker: persisting conversation '%s' turn %u failed: %s\n",
                   job.key.conversation_id().c_str(), job.key.turn(),
                   std::string(status.message()).c_str());
    }
    job = PersistJob();  // free the KV before reporting idle
    absl::MutexLock lock(&mu_);
    busy_ = false;
  }
}

PairChoice Persister::ChoosePairs(RestoreMode mode,
                                  const std::optional<SimilarityEstimate>& estimate,
                                  const KvCache* cache, int num_tokens) const {
  TurnEndInput input;
  input.mode = mode;
  input.cache = cache;
  input.num_tokens = num_tokens;
  input.estimate = estimate.has_value() ? &*estimate : nullptr;
  auto choice = ChooseTurnEndPairs(turn_end_, input);
  if (choice.ok()) return *std::move(choice);
  // No basis for sharing (bad options were refused at start-up).
  PairChoice none;
  none.pairs = CompressionPlan::Uncompressed(options_.shape.n_layers);
  none.source = "uncompressed";
  return none;
}

absl::Status Persister::Run(PersistJob& job) {
  if (job.rewrite) {  // a caller of Run itself (the threads rewrite first)
    if (job.cache == nullptr) return absl::InvalidArgumentError("persist job without a KV cache");
    absl::Status rewritten = job.rewrite(*job.cache);
    job.rewrite = nullptr;
    if (!rewritten.ok()) return rewritten;
  }
  SessionRecord& record = job.record;
  const int N = record.kv_tokens;
  std::optional<SimilarityEstimate> estimate;
  if (job.estimator != nullptr) {
    absl::StatusOr<SimilarityEstimate> finished = job.estimator->Finish();
    job.estimator.reset();
    if (!finished.ok()) return finished.status();  // a device error (CUDA)
    estimate = *std::move(finished);
    metrics_->estimator_seconds().Increment(estimate->engine_thread_seconds);
    // The conversation's estimate: the turns before (as stored) decayed,
    // plus this turn's.
    if (job.carried_estimate.has_value()) {
      auto carried = CarryEstimate(*job.carried_estimate, *estimate, options_.estimate_decay);
      if (carried.ok()) estimate = *std::move(carried);
    }
  }
  if (job.cache == nullptr) return absl::InvalidArgumentError("persist job without a KV cache");
  // The compressor and the merge errors read host rows: the CPU backend's
  // cache as it is, a device cache copied to the host first.
  std::optional<KvCache> host_copy;
  const KvCache* host = job.cache->host_cache();
  if (host == nullptr) {
    auto copy = CopyToHost(*job.cache, N);
    if (!copy.ok()) return copy.status();
    host_copy = *std::move(copy);
    host = &*host_copy;
  }
  TurnEndInput input;
  input.mode = record.mode;
  input.cache = host;
  input.num_tokens = N;
  input.estimate = estimate.has_value() ? &*estimate : nullptr;
  auto turn_end = PlanTurnEnd(turn_end_, input, cost_model_->Snapshot());
  if (!turn_end.ok()) return turn_end.status();
  const CompressedKv* kv = &turn_end->kv;

  record.plan = turn_end->storage;
  record.dtype = options_.dtype;
  record.policy = turn_end->restore.policy;
  record.recompute_tokens = turn_end->restore.recompute_tokens;
  record.predicted_seconds = turn_end->restore.predicted_seconds;
  record.expected_new_tokens = options_.expected_new_tokens;
  record.granularity_tokens = options_.granularity_tokens;
  if (RestoreModePairSource(record.mode) == PairSource::kPerConversation) {
    record.estimate = std::move(estimate);
  }

  auto version = BuildStoredVersion(job.key, options_.model_id, EncodeSessionRecord(record), *kv);
  if (!version.ok()) return version.status();
  size_t bytes = 0;
  for (const std::string& b : version->blocks) bytes += b.size();
  if (auto s = store_->Write(version->manifest, std::move(version->blocks),
                             absl::Now() + options_.deadline);
      !s.ok()) {
    return s;
  }
  metrics_->stored_bytes().Increment(static_cast<double>(bytes));
  if (kv->stored_bytes() > 0) {
    metrics_->compression_ratio().Observe(static_cast<double>(kv->uncompressed_bytes()) /
                                          static_cast<double>(kv->stored_bytes()));
  }
  return absl::OkStatus();
}

}  // namespace krul::worker
