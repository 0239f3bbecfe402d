// Prometheus metrics of the KV store (names from docs/DESIGN.md, "Metrics"):
//   krul_kvstore_bytes{tier}, krul_kvstore_objects{tier}            gauges
//   krul_kvstore_requests_total{op,code}                           counter
//   krul_kvstore_op_seconds{op}                                    histogram
//   krul_kvstore_transfer_bytes_total{transport,dir}               counter
//   krul_kvstore_hits_total{tier}, krul_kvstore_misses_total       counters
//   krul_kvstore_evictions_total{tier}                             counter
//   krul_kvstore_checksum_failures_total                           counter
//   krul_kvstore_quota_rejections_total{tenant}                    counter
//   krul_kvstore_version_gc_total     versions deleted by --keep_versions
//   krul_kvstore_quarantined_total    corrupt RocksDB directories moved aside
//   krul_kvstore_recovered_versions_total / _lost_versions_total
//                                     versions salvaged from / lost with them
// The registry is served on /metrics by the server (prometheus::Exposer).
//
// Thread-safe.
#ifndef KRUL_SERVICES_KVSTORE_METRICS_H_
#define KRUL_SERVICES_KVSTORE_METRICS_H_

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace krul::kvstore {

class KvStoreMetrics {
 public:
  KvStoreMetrics();

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // tier: "dram" or "rocksdb".
  void SetTier(absl::string_view tier, uint64_t bytes, uint64_t objects);
  void Hit(absl::string_view tier);
  void Miss();
  void Eviction(absl::string_view tier);
  void ChecksumFailure();
  void QuotaRejection(absl::string_view tenant);
  void VersionCollected();
  // One corrupt database quarantined at start-up, with what was salvaged.
  void Recovery(uint64_t recovered_versions, uint64_t lost_versions);
  // op: the RPC name ("BeginPut", ...); code: the status it returned.
  void Request(absl::string_view op, absl::StatusCode code, double seconds);
  // transport: "grpc" or "ucx"; dir: "in" (puts) or "out" (gets).
  void Transfer(absl::string_view transport, absl::string_view dir, uint64_t bytes);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Gauge>& bytes_;
  prometheus::Family<prometheus::Gauge>& objects_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& op_seconds_;
  prometheus::Family<prometheus::Counter>& transfer_bytes_;
  prometheus::Family<prometheus::Counter>& hits_;
  prometheus::Counter& misses_;
  prometheus::Family<prometheus::Counter>& evictions_;
  prometheus::Counter& checksum_failures_;
  prometheus::Family<prometheus::Counter>& quota_rejections_;
  prometheus::Counter& version_gc_;
  prometheus::Counter& quarantined_;
  prometheus::Counter& recovered_versions_;
  prometheus::Counter& lost_versions_;
};

}  // namespace krul::kvstore

#endif  // KRUL_SERVICES_KVSTORE_METRICS_H_
