// LeaseTable: pins with an expiry. A pinned version stays in DRAM and is
// neither evicted, expired by TTL nor deleted; the pin ends when its holder
// unpins or when the lease runs out (a crashed worker cannot pin forever).
//
// Not thread-safe: the store calls it under its own mutex.
#ifndef KRUL_SERVICES_KVSTORE_STORAGE_LEASE_H_
#define KRUL_SERVICES_KVSTORE_STORAGE_LEASE_H_

#include <cstdint>
#include <map>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kvstore/storage/version_key.h"

namespace krul::kvstore {

class LeaseTable {
 public:
  // `first_id` seeds lease ids (random per process, so a lease id from
  // before a restart does not name a new lease).
  explicit LeaseTable(uint64_t first_id) : next_id_(first_id == 0 ? 1 : first_id) {}

  // Pins `key` until `expires`; returns the lease id.
  uint64_t Grant(const VersionKey& key, absl::Time expires);

  // Ends lease `id` and returns its key; NOT_FOUND when no such lease is
  // active (never granted, released, or expired and collected).
  absl::StatusOr<VersionKey> Release(uint64_t id);

  // Removes the leases that expired at or before `now` and returns the key
  // of each (one entry per lease).
  std::vector<VersionKey> CollectExpired(absl::Time now);

  // Active (uncollected) leases on `key`.
  int PinCount(const VersionKey& key) const;

  // The key lease `id` pins, or null when no such lease is active.
  const VersionKey* Find(uint64_t id) const;

  size_t size() const { return leases_.size(); }

 private:
  struct Lease {
    VersionKey key;
    absl::Time expires;
  };
  uint64_t next_id_;
  absl::flat_hash_map<uint64_t, Lease> leases_;
  std::map<VersionKey, int> pins_;
};

}  // namespace krul::kvstore

#endif  // KRUL_SERVICES_KVSTORE_STORAGE_LEASE_H_
