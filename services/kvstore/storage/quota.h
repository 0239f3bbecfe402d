// QuotaTable: per-tenant byte accounting. A tenant's bytes are what its
// committed versions occupy (in any tier) plus what its open puts reserved;
// a reservation that would take the sum above the tenant's limit is refused.
//
// Not thread-safe: the store calls it under its own mutex.
#ifndef KRUL_SERVICES_KVSTORE_STORAGE_QUOTA_H_
#define KRUL_SERVICES_KVSTORE_STORAGE_QUOTA_H_

#include <cstdint>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"

namespace krul::kvstore {

class QuotaTable {
 public:
  // default_limit applies to tenants not in `limits`; 0 = unlimited.
  QuotaTable(uint64_t default_limit, absl::flat_hash_map<std::string, uint64_t> limits)
      : default_limit_(default_limit), limits_(std::move(limits)) {}

  // The tenant's limit in bytes; 0 = unlimited.
  uint64_t Limit(const std::string& tenant) const;

  // Reserves `bytes` for an open put. RESOURCE_EXHAUSTED (naming the tenant,
  // its usage and limit) when used + reserved + bytes would exceed the limit;
  // nothing changes then.
  absl::Status Reserve(const std::string& tenant, uint64_t bytes);
  // Returns a reservation (abort, failed commit).
  void Unreserve(const std::string& tenant, uint64_t bytes);
  // Turns a reservation into stored bytes (commit).
  void Commit(const std::string& tenant, uint64_t reserved_bytes, uint64_t stored_bytes);
  // Adds stored bytes without a reservation (index reload at start).
  void AddStored(const std::string& tenant, uint64_t bytes);
  // Removes stored bytes (delete, TTL expiry, eviction in DRAM-only mode).
  void Release(const std::string& tenant, uint64_t bytes);

  uint64_t Stored(const std::string& tenant) const;
  uint64_t Reserved(const std::string& tenant) const;

 private:
  struct Usage {
    uint64_t stored = 0;
    uint64_t reserved = 0;
  };
  const uint64_t default_limit_;
  const absl::flat_hash_map<std::string, uint64_t> limits_;
  absl::flat_hash_map<std::string, Usage> usage_;
};

}  // namespace krul::kvstore

#endif  // KRUL_SERVICES_KVSTORE_STORAGE_QUOTA_H_
