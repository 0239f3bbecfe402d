// The worker's Prometheus metrics (names fixed by DESIGN.md "Metrics"; the
// dashboards and alert rules use them). /metrics on the HTTP port serves
// Serialize(); no separate exposer port is opened.
//
//   krul_worker_ttft_seconds{mode}                 histogram
//   krul_worker_restore_seconds{stage}             histogram, stage = recompute|load|total
//   krul_worker_recomputed_tokens_total            counter (history tokens recomputed,
//                                                  mean over layers)
//   krul_worker_loaded_bytes_total                 counter (KV bytes loaded from the store)
//   krul_worker_kv_compression_ratio               histogram (uncompressed / stored bytes)
//   krul_worker_estimator_seconds_total            counter (engine-thread estimator time)
//   krul_worker_scheduler_efficiency               histogram (ideal / achieved restore)
//   krul_worker_requests_total{code}               counter (HTTP status)
//   krul_worker_active_requests                    gauge
//   krul_worker_fallbacks_total{reason}            counter
// and, beyond the design's list:
//   krul_worker_restores_total{result}             hit | miss | fallback
//   krul_worker_restored_tokens_total              history tokens restored
//   krul_worker_loaded_tokens_total                of those loaded (mean over layers)
//   krul_worker_stored_bytes_total                 KV bytes persisted
//   krul_worker_persists_total{result}             ok | error | dropped
//   krul_worker_persist_seconds                    histogram
//   krul_worker_prompt_tokens_total, krul_worker_generated_tokens_total
//   krul_worker_generation_seconds_total           engine time of prefill + decode (the
//                                                  estimator's share: estimator_seconds)
//   krul_worker_queued_requests                    gauge
//   krul_worker_http_connections_total{event}      accepted | evicted (slot given to a newer
//                                                  one) | rejected (503, every slot busy) |
//                                                  read_timeout
//   krul_worker_http_connections                   gauge (open HTTP connections)
//
// Thread-safe (prometheus-cpp metrics are).
#ifndef KRUL_SERVICES_WORKER_CORE_METRICS_H_
#define KRUL_SERVICES_WORKER_CORE_METRICS_H_

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>
#include <string_view>

namespace krul::worker {

// Fallback reasons (label values of krul_worker_fallbacks_total).
inline constexpr std::string_view kFallbackUnavailable = "store_unavailable";
inline constexpr std::string_view kFallbackDeadline = "deadline";
inline constexpr std::string_view kFallbackMissingBlocks = "missing_blocks";
inline constexpr std::string_view kFallbackChecksum = "checksum";
// A version that fails its KV MAC seal (forged, foreign, unsealed; kv_mac.h).
inline constexpr std::string_view kFallbackIntegrity = "integrity";
inline constexpr std::string_view kFallbackMismatch = "mismatch";  // stored state unusable
inline constexpr std::string_view kFallbackError = "error";

class WorkerMetrics {
 public:
  WorkerMetrics();

  // The Prometheus text exposition of every metric.
  std::string Serialize() const;

  void ObserveTtft(std::string_view mode, double seconds);
  void ObserveRestore(std::string_view stage, double seconds);
  void CountRequest(int http_status);
  void CountFallback(std::string_view reason);
  void CountRestore(std::string_view result);
  void CountPersist(std::string_view result);
  void CountHttpConnection(std::string_view event);

  prometheus::Counter& recomputed_tokens() { return *recomputed_tokens_; }
  prometheus::Counter& loaded_tokens() { return *loaded_tokens_; }
  prometheus::Counter& restored_tokens() { return *restored_tokens_; }
  prometheus::Counter& loaded_bytes() { return *loaded_bytes_; }
  prometheus::Counter& stored_bytes() { return *stored_bytes_; }
  prometheus::Counter& estimator_seconds() { return *estimator_seconds_; }
  prometheus::Counter& prompt_tokens() { return *prompt_tokens_; }
  prometheus::Counter& generated_tokens() { return *generated_tokens_; }
  prometheus::Counter& generation_seconds() { return *generation_seconds_; }
  prometheus::Histogram& compression_ratio() { return *compression_ratio_; }
  prometheus::Histogram& scheduler_efficiency() { return *scheduler_efficiency_; }
  prometheus::Histogram& persist_seconds() { return *persist_seconds_; }
  prometheus::Gauge& active_requests() { return *active_requests_; }
  prometheus::Gauge& queued_requests() { return *queued_requests_; }
  prometheus::Gauge& http_connections() { return *http_connections_; }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Histogram>* ttft_;
  prometheus::Family<prometheus::Histogram>* restore_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Counter>* fallbacks_;
  prometheus::Family<prometheus::Counter>* restores_;
  prometheus::Family<prometheus::Counter>* persists_;
  prometheus::Family<prometheus::Counter>* http_connection_events_;
  prometheus::Counter* recomputed_tokens_;
  prometheus::Counter* loaded_tokens_;
  prometheus::Counter* restored_tokens_;
  prometheus::Counter* loaded_bytes_;
  prometheus::Counter* stored_bytes_;
  prometheus::Counter* estimator_seconds_;
  prometheus::Counter* prompt_tokens_;
  prometheus::Counter* generated_tokens_;
  prometheus::Counter* generation_seconds_;
  prometheus::Histogram* compression_ratio_;
  prometheus::Histogram* scheduler_efficiency_;
  prometheus::Histogram* persist_seconds_;
  prometheus::Gauge* active_requests_;
  prometheus::Gauge* queued_requests_;
  prometheus::Gauge* http_connections_;
};

}  // namespace krul::worker

#endif  // KRUL_SERVICES_WORKER_CORE_METRICS_H_
