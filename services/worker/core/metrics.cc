#include "worker/core/metrics.h"

#include <prometheus/text_serializer.h>

namespace krul::worker {
namespace {

using prometheus::Histogram;

// Latencies from 0.5 ms to ~16 s, doubling.
Histogram::BucketBoundaries LatencyBuckets() {
  Histogram::BucketBoundaries b;
  for (double v = 0.0005; v < 20; v *= 2) b.push_back(v);
  return b;
}

prometheus::Counter& MakeCounter(prometheus::Registry& r, const std::string& name,
                                 const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(r).Add({});
}

}  // namespace

WorkerMetrics::WorkerMetrics() : registry_(std::make_shared<prometheus::Registry>()) {
  prometheus::Registry& r = *registry_;
  ttft_ = &prometheus::BuildHistogram()
               .Name("krul_worker_ttft_seconds")
               .Help("Time from accepting a request to its first generated token")
               .Register(r);
  restore_ = &prometheus::BuildHistogram()
                  .Name("krul_worker_restore_seconds")
                  .Help("Restore time of a conversation's history KV, by stage")
                  .Register(r);
  requests_ = &prometheus::BuildCounter()
                   .Name("krul_worker_requests_total")
                   .Help("HTTP and gRPC chat requests by response code")
                   .Register(r);
  fallbacks_ = &prometheus::BuildCounter()
                    .Name("krul_worker_fallbacks_total")
                    .Help("Restores that fell back to full recompute, by reason")
                    .Register(r);
  restores_ = &prometheus::BuildCounter()
                   .Name("krul_worker_restores_total")
                   .Help("Conversation lookups by result (hit, miss, fallback)")
                   .Register(r);
  persists_ = &prometheus::BuildCounter()
                   .Name("krul_worker_persists_total")
                   .Help("Background persists of a turn's KV by result")
                   .Register(r);
  recomputed_tokens_ = &MakeCounter(r, "krul_worker_recomputed_tokens_total",
                                    "History tokens recomputed at restore (mean over layers)");
  loaded_tokens_ = &MakeCounter(r, "krul_worker_loaded_tokens_total",
                                "History tokens loaded at restore (mean over layers)");
  restored_tokens_ =
      &MakeCounter(r, "krul_worker_restored_tokens_total", "History tokens whose KV was restored");
  loaded_bytes_ = &MakeCounter(r, "krul_worker_loaded_bytes_total",
                               "Encoded KV bytes loaded from the KV store");
  stored_bytes_ = &MakeCounter(r, "krul_worker_stored_bytes_total",
                               "Encoded KV bytes persisted to the KV store");
  estimator_seconds_ = &MakeCounter(r, "krul_worker_estimator_seconds_total",
                                    "Engine-thread time spent in the similarity estimator");
  prompt_tokens_ = &MakeCounter(r, "krul_worker_prompt_tokens_total", "Prompt tokens served");
  generated_tokens_ = &MakeCounter(r, "krul_worker_generated_tokens_total", "Tokens generated");
  generation_seconds_ =
      &MakeCounter(r, "krul_worker_generation_seconds_total",
                   "Engine time of prefill and decode, estimator included (restore excluded)");
  compression_ratio_ =
      &prometheus::BuildHistogram()
           .Name("krul_worker_kv_compression_ratio")
           .Help("Uncompressed fp32 / stored bytes of each persisted turn")
           .Register(r)
           .Add({}, Histogram::BucketBoundaries{1.0, 1.1, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0});
  scheduler_efficiency_ = &prometheus::BuildHistogram()
                               .Name("krul_worker_scheduler_efficiency")
                               .Help("Ideal (lower-bound) / achieved restore time")
                               .Register(r)
                               .Add({}, Histogram::BucketBoundaries{0.1, 0.2, 0.3, 0.4, 0.5, 0.6,
                                                                    0.7, 0.8, 0.9, 0.95, 1.0});
  persist_seconds_ = &prometheus::BuildHistogram()
                          .Name("krul_worker_persist_seconds")
                          .Help("Background select + compress + store time of one turn")
                          .Register(r)
                          .Add({}, LatencyBuckets());
  active_requests_ = &prometheus::BuildGauge()
                          .Name("krul_worker_active_requests")
                          .Help("Requests holding an engine")
                          .Register(r)
                          .Add({});
  queued_requests_ = &prometheus::BuildGauge()
                          .Name("krul_worker_queued_requests")
                          .Help("Requests waiting for an engine")
                          .Register(r)
                          .Add({});
  http_connection_events_ = &prometheus::BuildCounter()
                                 .Name("krul_worker_http_connections_total")
                                 .Help(
                                     "HTTP connections by event: accepted, evicted, rejected, "
                                     "read_timeout")
                                 .Register(r);
  http_connections_ = &prometheus::BuildGauge()
                           .Name("krul_worker_http_connections")
                           .Help("Open HTTP connections")
                           .Register(r)
                           .Add({});
}

std::string WorkerMetrics::Serialize() const {
  prometheus::TextSerializer serializer;
  return serializer.Serialize(registry_->Collect());
}

void WorkerMetrics::ObserveTtft(std::string_view mode, double seconds) {
  ttft_->Add({{"mode", std::string(mode)}}, LatencyBuckets()).Observe(seconds);
}

void WorkerMetrics::ObserveRestore(std::string_view stage, double seconds) {
  restore_->Add({{"stage", std::string(stage)}}, LatencyBuckets()).Observe(seconds);
}

void WorkerMetrics::CountRequest(int http_status) {
  requests_->Add({{"code", std::to_string(http_status)}}).Increment();
}

void WorkerMetrics::CountFallback(std::string_view reason) {
  fallbacks_->Add({{"reason", std::string(reason)}}).Increment();
}

void WorkerMetrics::CountRestore(std::string_view result) {
  restores_->Add({{"result", std::string(result)}}).Increment();
}

void WorkerMetrics::CountPersist(std::string_view result) {
  persists_->Add({{"result", std::string(result)}}).Increment();
}

void WorkerMetrics::CountHttpConnection(std::string_view event) {
  http_connection_events_->Add({{"event", std::string(event)}}).Increment();
}

}  // namespace krul::worker
