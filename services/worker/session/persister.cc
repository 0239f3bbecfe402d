#include "worker/session/persister.h"

#include <chrono>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "krul/compress/compressor.h"
#include "krul/engine/kv_cache.h"
#include "krul/restore/restore_mode.h"
#include "krul/compress/selector.h"
#include "worker/session/kv_blocks.h"

namespace krul::worker {

Persister::Persister(const PersisterOptions& options, ConversationStore* store,
                     CostModel* cost_model, WorkerMetrics* metrics)
    : options_(options), store_(store), cost_model_(cost_model), metrics_(metrics) {
  thread_ = std::thread([this] { Loop(); });
}

Persister::~Persister() {
  Drain(options_.deadline);
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

bool Persister::Submit(PersistJob job) {
  absl::MutexLock lock(&mu_);
  if (stop_ || static_cast<int>(queue_.size()) >= options_.max_pending) {
    metrics_->CountPersist("dropped");
    return false;
  }
  queue_.push_back(std::move(job));
  return true;
}

bool Persister::Drain(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return queue_.empty() && !busy_; };
  return mu_.AwaitWithTimeout(absl::Condition(&idle), timeout);
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

CompressionPlan Persister::PairsFor(RestoreMode mode,
                                    std::optional<SimilarityEstimate>& estimate) const {
  const int L = options_.shape.n_layers;
  switch (RestoreModePairSource(mode)) {
    case PairSource::kNone:
      return CompressionPlan::Uncompressed(L);
    case PairSource::kStaticMidDepth: {
      auto plan = StaticMidDepthPlan(L, options_.selector.target_ratio);
      return plan.ok() ? *plan : CompressionPlan::Uncompressed(L);
    }
    case PairSource::kCalibration:
      return options_.fixed_pairs.n_layers == L ? options_.fixed_pairs
                                                : CompressionPlan::Uncompressed(L);
    case PairSource::kPerConversation: {
      if (!estimate.has_value()) return CompressionPlan::Uncompressed(L);
      absl::StatusOr<CompressionPlan> plan;
      if (options_.krul_prior.has_value() && options_.krul_prior_rows > 0) {
        auto shrunk = ShrinkToward(*estimate, *options_.krul_prior, options_.krul_prior_rows);
        plan = shrunk.ok() ? SelectPlan(*shrunk, options_.selector) : shrunk.status();
      } else {
        plan = SelectPlan(*estimate, options_.selector);
      }
      // FAILED_PRECONDITION: nothing observed, no basis for sharing.
      return plan.ok() ? *plan : CompressionPlan::Uncompressed(L);
    }
  }
  return CompressionPlan::Uncompressed(L);
}

absl::Status Persister::Run(PersistJob& job) {
  SessionRecord& record = job.record;
  const int N = record.kv_tokens;
  std::optional<SimilarityEstimate> estimate;
  if (job.estimator != nullptr) {
    absl::StatusOr<SimilarityEstimate> finished = job.estimator->Finish();
    job.estimator.reset();
    if (!finished.ok()) return finished.status();  // a device error (CUDA)
    estimate = *std::move(finished);
    metrics_->estimator_seconds().Increment(estimate->engine_thread_seconds);
  }
  if (job.cache == nullptr) return absl::InvalidArgumentError("persist job without a KV cache");
  const CompressionPlan pairs = PairsFor(record.mode, estimate);

  ModePlanOptions plan_options;
  plan_options.dtype = options_.dtype;
  plan_options.granularity_tokens = options_.granularity_tokens;
  auto restore_plan =
      PlanForMode(record.mode, pairs, options_.shape, N, options_.expected_new_tokens,
                  cost_model_->Snapshot(), plan_options);
  if (!restore_plan.ok()) return restore_plan.status();

  record.plan = StoragePlanForMode(record.mode, pairs, options_.shape.n_layers);
  record.dtype = options_.dtype;
  record.policy = restore_plan->policy;
  record.recompute_tokens = restore_plan->recompute_tokens;
  record.predicted_seconds = restore_plan->predicted_seconds;
  record.expected_new_tokens = options_.expected_new_tokens;
  record.granularity_tokens = options_.granularity_tokens;

  CompressorOptions compressor;
  compressor.dtype = options_.dtype;
  compressor.chunk_tokens = options_.chunk_tokens;
  // The compressor reads host rows: the CPU backend's cache as it is, a
  // device cache copied to the host first.
  std::optional<KvCache> host_copy;
  const KvCache* host = job.cache->host_cache();
  if (host == nullptr) {
    auto copy = CopyToHost(*job.cache, N);
    if (!copy.ok()) return copy.status();
    host_copy = *std::move(copy);
    host = &*host_copy;
  }
  auto kv = CompressKv(*host, options_.shape, record.plan, N, record.recompute_tokens, compressor);
  if (!kv.ok()) return kv.status();

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
