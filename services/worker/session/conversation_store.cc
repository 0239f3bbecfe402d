#include "worker/session/conversation_store.h"

#include "absl/strings/str_cat.h"
#include "krul/kvformat/manifest.h"

namespace krul::worker {
namespace {

std::string MapKey(const std::string& tenant, const std::string& conversation_id) {
  return absl::StrCat(tenant.size(), ":", tenant, "/", conversation_id);
}

}  // namespace

absl::StatusOr<StorePin> ConversationStore::Pin(const v1::ConversationKey&, absl::Duration,
                                                absl::Time) {
  return StorePin{};
}

absl::Status ConversationStore::Unpin(const StorePin&, absl::Time) { return absl::OkStatus(); }

absl::StatusOr<v1::Manifest> MemoryConversationStore::LookupLatest(
    const std::string& tenant, const std::string& conversation_id, absl::Time) {
  absl::MutexLock lock(&mu_);
  if (!failure_.ok()) return failure_;
  auto it = versions_.find(MapKey(tenant, conversation_id));
  if (it == versions_.end()) {
    return absl::NotFoundError(
        absl::StrCat("no stored version of conversation '", conversation_id, "'"));
  }
  return it->second.manifest;
}

absl::Status MemoryConversationStore::ReadBlocks(const v1::Manifest& manifest,
                                                 std::span<const uint32_t> indices,
                                                 const BlockSink& sink, absl::Time) {
  // Copies under the lock, hands over outside it (the sink may be slow).
  std::vector<std::pair<uint32_t, std::string>> copies;
  {
    absl::MutexLock lock(&mu_);
    if (!failure_.ok()) return failure_;
    auto it = versions_.find(MapKey(manifest.key().tenant(), manifest.key().conversation_id()));
    if (it == versions_.end() || it->second.manifest.key().turn() != manifest.key().turn()) {
      return absl::NotFoundError("the conversation version is gone");
    }
    for (uint32_t index : indices) {
      if (index >= static_cast<uint32_t>(manifest.blocks_size())) {
        return absl::InvalidArgumentError(absl::StrCat("block index ", index, " out of range"));
      }
      if (index >= it->second.blocks.size()) {
        return absl::NotFoundError(absl::StrCat("block ", index, " is missing"));
      }
      copies.emplace_back(index, it->second.blocks[index]);
    }
  }
  for (auto& [index, encoded] : copies) {
    if (auto v = VerifyBlock(manifest.blocks(index), encoded); !v.ok()) return v.status();
    if (auto s = sink(index, std::move(encoded)); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status MemoryConversationStore::Write(const v1::Manifest& manifest,
                                            std::vector<std::string> blocks, absl::Time) {
  if (auto s = ValidateManifest(manifest); !s.ok()) return s;
  if (blocks.size() != static_cast<size_t>(manifest.blocks_size())) {
    return absl::InvalidArgumentError("block count differs from the manifest's");
  }
  absl::MutexLock lock(&mu_);
  if (!failure_.ok()) return failure_;
  Version& v = versions_[MapKey(manifest.key().tenant(), manifest.key().conversation_id())];
  v.manifest = manifest;
  v.blocks = std::move(blocks);
  return absl::OkStatus();
}

absl::Status MemoryConversationStore::Delete(const std::string& tenant,
                                             const std::string& conversation_id, absl::Time) {
  absl::MutexLock lock(&mu_);
  if (!failure_.ok()) return failure_;
  if (versions_.erase(MapKey(tenant, conversation_id)) == 0) {
    return absl::NotFoundError(absl::StrCat("no stored version of '", conversation_id, "'"));
  }
  return absl::OkStatus();
}

absl::Status MemoryConversationStore::Health(absl::Time) {
  absl::MutexLock lock(&mu_);
  return failure_;
}

ForwardingConversationStore::ForwardingConversationStore(std::shared_ptr<ConversationStore> inner)
    : inner_(std::move(inner)) {}

absl::StatusOr<v1::Manifest> ForwardingConversationStore::LookupLatest(
    const std::string& tenant, const std::string& conversation_id, absl::Time deadline) {
  return inner_->LookupLatest(tenant, conversation_id, deadline);
}

absl::Status ForwardingConversationStore::ReadBlocks(const v1::Manifest& manifest,
                                                     std::span<const uint32_t> indices,
                                                     const BlockSink& sink, absl::Time deadline) {
  return inner_->ReadBlocks(manifest, indices, sink, deadline);
}

absl::Status ForwardingConversationStore::Write(const v1::Manifest& manifest,
                                                std::vector<std::string> blocks,
                                                absl::Time deadline) {
  return inner_->Write(manifest, std::move(blocks), deadline);
}

absl::Status ForwardingConversationStore::Delete(const std::string& tenant,
                                                 const std::string& conversation_id,
                                                 absl::Time deadline) {
  return inner_->Delete(tenant, conversation_id, deadline);
}

absl::Status ForwardingConversationStore::Health(absl::Time deadline) {
  return inner_->Health(deadline);
}

absl::StatusOr<StorePin> ForwardingConversationStore::Pin(const v1::ConversationKey& key,
                                                          absl::Duration lease,
                                                          absl::Time deadline) {
  return inner_->Pin(key, lease, deadline);
}

absl::Status ForwardingConversationStore::Unpin(const StorePin& pin, absl::Time deadline) {
  return inner_->Unpin(pin, deadline);
}

std::string ForwardingConversationStore::data_plane() const { return inner_->data_plane(); }

absl::StatusOr<StorePin> MemoryConversationStore::Pin(const v1::ConversationKey& key,
                                                      absl::Duration lease, absl::Time) {
  absl::MutexLock lock(&mu_);
  if (!failure_.ok()) return failure_;
  auto it = versions_.find(MapKey(key.tenant(), key.conversation_id()));
  if (it == versions_.end() || it->second.manifest.key().turn() != key.turn()) {
    return absl::NotFoundError("the conversation version is gone");
  }
  StorePin pin;
  pin.address = "memory";
  pin.lease_id = next_lease_++;
  pin.expires = absl::Now() + lease;
  pins_[pin.lease_id] = it->first;
  return pin;
}

absl::Status MemoryConversationStore::Unpin(const StorePin& pin, absl::Time) {
  if (pin.lease_id == 0) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  if (pins_.erase(pin.lease_id) == 0) {
    return absl::NotFoundError(absl::StrCat("lease ", pin.lease_id, " is not active"));
  }
  return absl::OkStatus();
}

int MemoryConversationStore::active_pins() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(pins_.size());
}

int MemoryConversationStore::pins_granted() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(next_lease_ - 1);
}

void MemoryConversationStore::InjectFailure(absl::Status status) {
  absl::MutexLock lock(&mu_);
  failure_ = std::move(status);
}

void MemoryConversationStore::CorruptBlocks() {
  absl::MutexLock lock(&mu_);
  for (auto& [key, version] : versions_) {
    for (std::string& block : version.blocks) {
      if (!block.empty()) block.back() ^= 0x5A;
    }
  }
}

void MemoryConversationStore::DropBlocks() {
  absl::MutexLock lock(&mu_);
  for (auto& [key, version] : versions_) version.blocks.clear();
}

size_t MemoryConversationStore::versions() const {
  absl::MutexLock lock(&mu_);
  return versions_.size();
}

}  // namespace krul::worker
