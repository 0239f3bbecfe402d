#include "kvstore/storage/lease.h"

#include "absl/strings/str_cat.h"

namespace krul::kvstore {

uint64_t LeaseTable::Grant(const VersionKey& key, absl::Time expires) {
  uint64_t id = next_id_++;
  if (next_id_ == 0) next_id_ = 1;  // 0 never names a lease.
  leases_[id] = Lease{key, expires};
  ++pins_[key];
  return id;
}

absl::StatusOr<VersionKey> LeaseTable::Release(uint64_t id) {
  auto it = leases_.find(id);
  if (it == leases_.end()) {
    return absl::NotFoundError(absl::StrCat("lease ", id, " is not active"));
  }
  VersionKey key = std::move(it->second.key);
  leases_.erase(it);
  if (--pins_[key] == 0) pins_.erase(key);
  return key;
}

std::vector<VersionKey> LeaseTable::CollectExpired(absl::Time now) {
  std::vector<uint64_t> expired;
  for (const auto& [id, lease] : leases_) {
    if (lease.expires <= now) expired.push_back(id);
  }
  std::vector<VersionKey> keys;
  for (uint64_t id : expired) {
    absl::StatusOr<VersionKey> key = Release(id);
    if (key.ok()) keys.push_back(*std::move(key));
  }
  return keys;
}

int LeaseTable::PinCount(const VersionKey& key) const {
  auto it = pins_.find(key);
  return it == pins_.end() ? 0 : it->second;
}

const VersionKey* LeaseTable::Find(uint64_t id) const {
  auto it = leases_.find(id);
  return it == leases_.end() ? nullptr : &it->second.key;
}

}  // namespace krul::kvstore
