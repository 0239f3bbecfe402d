#include "kvstore/metrics.h"

#include "absl/status/status.h"

namespace krul::kvstore {
namespace {

// 50 us .. ~13 s in x2 steps: local DRAM gets are tens of microseconds,
// durable 64 MiB puts take seconds.
prometheus::Histogram::BucketBoundaries OpBuckets() {
  prometheus::Histogram::BucketBoundaries b;
  for (double v = 50e-6; v < 15.0; v *= 2) b.push_back(v);
  return b;
}

std::string S(absl::string_view v) { return std::string(v.data(), v.size()); }

}  // namespace

KvStoreMetrics::KvStoreMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      bytes_(prometheus::BuildGauge()
                 .Name("krul_kvstore_bytes")
                 .Help("Bytes of committed versions held per tier")
                 .Register(*registry_)),
      objects_(prometheus::BuildGauge()
                   .Name("krul_kvstore_objects")
                   .Help("Committed versions held per tier")
                   .Register(*registry_)),
      requests_(prometheus::BuildCounter()
                    .Name("krul_kvstore_requests_total")
                    .Help("RPCs handled, by method and status code")
                    .Register(*registry_)),
      op_seconds_(prometheus::BuildHistogram()
                      .Name("krul_kvstore_op_seconds")
                      .Help("RPC latency in seconds, by method")
                      .Register(*registry_)),
      transfer_bytes_(prometheus::BuildCounter()
                          .Name("krul_kvstore_transfer_bytes_total")
                          .Help("Block bytes moved, by data plane and direction")
                          .Register(*registry_)),
      hits_(prometheus::BuildCounter()
                .Name("krul_kvstore_hits_total")
                .Help("Block reads served, by tier")
                .Register(*registry_)),
      misses_(prometheus::BuildCounter()
                  .Name("krul_kvstore_misses_total")
                  .Help("Lookups and reads of versions that do not exist")
                  .Register(*registry_)
                  .Add({})),
      evictions_(prometheus::BuildCounter()
                     .Name("krul_kvstore_evictions_total")
                     .Help("Versions evicted, by the tier they left")
                     .Register(*registry_)),
      checksum_failures_(prometheus::BuildCounter()
                             .Name("krul_kvstore_checksum_failures_total")
                             .Help("Blocks or manifests that failed their checksum")
                             .Register(*registry_)
                             .Add({})),
      quota_rejections_(prometheus::BuildCounter()
                            .Name("krul_kvstore_quota_rejections_total")
                            .Help("Puts refused because the tenant's quota was full")
                            .Register(*registry_)),
      version_gc_(prometheus::BuildCounter()
                      .Name("krul_kvstore_version_gc_total")
                      .Help("Older versions deleted because a newer one committed "
                            "(--keep_versions)")
                      .Register(*registry_)
                      .Add({})),
      quarantined_(prometheus::BuildCounter()
                       .Name("krul_kvstore_quarantined_total")
                       .Help("Corrupt RocksDB directories moved aside at start-up")
                       .Register(*registry_)
                       .Add({})),
      recovered_versions_(prometheus::BuildCounter()
                              .Name("krul_kvstore_recovered_versions_total")
                              .Help("Versions salvaged from a quarantined RocksDB directory")
                              .Register(*registry_)
                              .Add({})),
      lost_versions_(prometheus::BuildCounter()
                         .Name("krul_kvstore_lost_versions_total")
                         .Help("Versions of a quarantined RocksDB directory that could not "
                               "be salvaged")
                         .Register(*registry_)
                         .Add({})) {
  // Export the tier gauges from the start, so dashboards see zeros rather
  // than gaps.
  for (const char* tier : {"dram", "rocksdb"}) {
    bytes_.Add({{"tier", tier}}).Set(0);
    objects_.Add({{"tier", tier}}).Set(0);
  }
}

void KvStoreMetrics::SetTier(absl::string_view tier, uint64_t bytes, uint64_t objects) {
  bytes_.Add({{"tier", S(tier)}}).Set(static_cast<double>(bytes));
  objects_.Add({{"tier", S(tier)}}).Set(static_cast<double>(objects));
}

void KvStoreMetrics::Hit(absl::string_view tier) { hits_.Add({{"tier", S(tier)}}).Increment(); }

void KvStoreMetrics::Miss() { misses_.Increment(); }

void KvStoreMetrics::Eviction(absl::string_view tier) {
  evictions_.Add({{"tier", S(tier)}}).Increment();
}

void KvStoreMetrics::ChecksumFailure() { checksum_failures_.Increment(); }

void KvStoreMetrics::VersionCollected() { version_gc_.Increment(); }

void KvStoreMetrics::Recovery(uint64_t recovered_versions, uint64_t lost_versions) {
  quarantined_.Increment();
  recovered_versions_.Increment(static_cast<double>(recovered_versions));
  lost_versions_.Increment(static_cast<double>(lost_versions));
}

void KvStoreMetrics::QuotaRejection(absl::string_view tenant) {
  quota_rejections_.Add({{"tenant", S(tenant)}}).Increment();
}

void KvStoreMetrics::Request(absl::string_view op, absl::StatusCode code, double seconds) {
  requests_.Add({{"op", S(op)}, {"code", absl::StatusCodeToString(code)}}).Increment();
  op_seconds_.Add({{"op", S(op)}}, OpBuckets()).Observe(seconds);
}

void KvStoreMetrics::Transfer(absl::string_view transport, absl::string_view dir, uint64_t bytes) {
  transfer_bytes_.Add({{"transport", S(transport)}, {"dir", S(dir)}})
      .Increment(static_cast<double>(bytes));
}

}  // namespace krul::kvstore
