#include "kvstore/storage/dram_tier.h"

#include <cmath>
#include <utility>

namespace krul::kvstore {

DramTier::DramTier(uint64_t capacity_bytes, double high_watermark, double low_watermark)
    : capacity_bytes_(capacity_bytes),
      high_bytes_(static_cast<uint64_t>(std::floor(capacity_bytes * high_watermark))),
      low_bytes_(static_cast<uint64_t>(std::floor(capacity_bytes * low_watermark))) {}

bool DramTier::CanEverHold(uint64_t bytes) const {
  return pinned_bytes_ <= high_bytes_ && bytes <= high_bytes_ - pinned_bytes_;
}

void DramTier::Insert(const VersionKey& key, std::vector<BufferPtr> blocks, uint64_t bytes) {
  bool pinned = false;
  if (auto it = entries_.find(key); it != entries_.end()) {
    pinned = it->second.pinned;
    Erase(key);
  }
  lru_.push_back(key);
  Entry& e = entries_[key];
  e.blocks = std::move(blocks);
  e.bytes = bytes;
  e.pinned = pinned;
  e.lru = std::prev(lru_.end());
  used_bytes_ += bytes;
  if (pinned) pinned_bytes_ += bytes;
}

bool DramTier::Erase(const VersionKey& key) {
  auto it = entries_.find(key);
  if (it == entries_.end()) return false;
  used_bytes_ -= it->second.bytes;
  if (it->second.pinned) pinned_bytes_ -= it->second.bytes;
  lru_.erase(it->second.lru);
  entries_.erase(it);
  return true;
}

BufferPtr DramTier::GetBlock(const VersionKey& key, uint32_t index) {
  auto it = entries_.find(key);
  if (it == entries_.end() || index >= it->second.blocks.size()) return nullptr;
  lru_.splice(lru_.end(), lru_, it->second.lru);
  return it->second.blocks[index];
}

std::vector<BufferPtr> DramTier::Blocks(const VersionKey& key) const {
  auto it = entries_.find(key);
  if (it == entries_.end()) return {};
  return it->second.blocks;
}

bool DramTier::Touch(const VersionKey& key) {
  auto it = entries_.find(key);
  if (it == entries_.end()) return false;
  lru_.splice(lru_.end(), lru_, it->second.lru);
  return true;
}

void DramTier::SetPinned(const VersionKey& key, bool pinned) {
  auto it = entries_.find(key);
  if (it == entries_.end() || it->second.pinned == pinned) return;
  it->second.pinned = pinned;
  if (pinned) {
    pinned_bytes_ += it->second.bytes;
  } else {
    pinned_bytes_ -= it->second.bytes;
  }
}

std::vector<VersionKey> DramTier::PickVictims() const {
  std::vector<VersionKey> victims;
  if (!above_high()) return victims;
  uint64_t projected = used_bytes_;
  for (const VersionKey& key : lru_) {
    if (projected <= low_bytes_) break;
    const Entry& e = entries_.at(key);
    if (e.pinned) continue;
    victims.push_back(key);
    projected -= e.bytes;
  }
  return victims;
}

}  // namespace krul::kvstore
