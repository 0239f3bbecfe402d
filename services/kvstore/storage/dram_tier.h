// DramTier: the in-memory tier. Holds whole versions (all blocks of one
// conversation version) in a capacity-bounded LRU with watermarks.
//
// Eviction policy: the tier never evicts on its own. After an insert, the
// store asks for victims (PickVictims) whenever usage is above the high
// watermark, and removes them (after writing dirty ones to disk). Victims are
// the least recently used unpinned versions, enough to bring usage down to
// the low watermark; pinned versions are never victims. Whole versions move
// together because a restore needs every block of a version: keeping half of
// one would save no load time.
//
// Not thread-safe: the store calls it under its own mutex.
#ifndef KRUL_SERVICES_KVSTORE_STORAGE_DRAM_TIER_H_
#define KRUL_SERVICES_KVSTORE_STORAGE_DRAM_TIER_H_

#include <cstdint>
#include <list>
#include <map>
#include <vector>

#include "kvstore/storage/byte_buffer.h"
#include "kvstore/storage/version_key.h"

namespace krul::kvstore {

class DramTier {
 public:
  // high/low are fractions of capacity (validated by StoreOptions).
  DramTier(uint64_t capacity_bytes, double high_watermark, double low_watermark);

  uint64_t capacity_bytes() const { return capacity_bytes_; }
  uint64_t high_bytes() const { return high_bytes_; }
  uint64_t low_bytes() const { return low_bytes_; }
  uint64_t used_bytes() const { return used_bytes_; }
  uint64_t pinned_bytes() const { return pinned_bytes_; }
  size_t objects() const { return entries_.size(); }
  bool above_high() const { return used_bytes_ > high_bytes_; }

  // True when a version of `bytes` could be held without exceeding the high
  // watermark once every unpinned version were evicted. Versions that fail
  // this skip DRAM (or are rejected when DRAM is the only tier).
  bool CanEverHold(uint64_t bytes) const;

  // Adds (or replaces) `key` as the most recently used version. `bytes` is
  // the sum of the block sizes. Keeps the pin state of a replaced entry.
  void Insert(const VersionKey& key, std::vector<BufferPtr> blocks, uint64_t bytes);

  // Removes `key`; returns false when it was not held.
  bool Erase(const VersionKey& key);

  bool Contains(const VersionKey& key) const { return entries_.count(key) > 0; }

  // Block `index` of `key` (and marks the version most recently used), or
  // nullptr when the version is not held or the index is out of range.
  BufferPtr GetBlock(const VersionKey& key, uint32_t index);

  // All blocks of `key` (for flushing to disk), or empty when not held.
  std::vector<BufferPtr> Blocks(const VersionKey& key) const;

  // Marks `key` most recently used; false when not held.
  bool Touch(const VersionKey& key);

  // Pinned versions are never victims. No-op when `key` is not held.
  void SetPinned(const VersionKey& key, bool pinned);

  // Least recently used first: unpinned versions whose removal brings usage
  // to at most the low watermark (fewer if too much is pinned). Empty when
  // usage is at or below the high watermark.
  std::vector<VersionKey> PickVictims() const;

 private:
  struct Entry {
    std::vector<BufferPtr> blocks;
    uint64_t bytes = 0;
    bool pinned = false;
    std::list<VersionKey>::iterator lru;  // Position in lru_.
  };

  const uint64_t capacity_bytes_;
  const uint64_t high_bytes_;
  const uint64_t low_bytes_;
  uint64_t used_bytes_ = 0;
  uint64_t pinned_bytes_ = 0;
  std::map<VersionKey, Entry> entries_;
  std::list<VersionKey> lru_;  // Front: least recently used.
};

}  // namespace krul::kvstore

#endif  // KRUL_SERVICES_KVSTORE_STORAGE_DRAM_TIER_H_
