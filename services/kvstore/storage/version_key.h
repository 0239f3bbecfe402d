// The store's name for one conversation version: (tenant, conversation, turn).
#ifndef KRUL_SERVICES_KVSTORE_STORAGE_VERSION_KEY_H_
#define KRUL_SERVICES_KVSTORE_STORAGE_VERSION_KEY_H_

#include <compare>
#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "krul/v1/common.pb.h"

namespace krul::kvstore {

// Ordered by tenant, then conversation, then turn, so the versions of one
// conversation are adjacent and the latest turn is the last of them.
struct VersionKey {
  std::string tenant;
  std::string conversation_id;
  uint32_t turn = 0;

  static VersionKey FromProto(const v1::ConversationKey& key) {
    return VersionKey{key.tenant(), key.conversation_id(), key.turn()};
  }
  v1::ConversationKey ToProto() const {
    v1::ConversationKey key;
    key.set_tenant(tenant);
    key.set_conversation_id(conversation_id);
    key.set_turn(turn);
    return key;
  }
  std::string DebugString() const { return absl::StrCat(tenant, "/", conversation_id, "@", turn); }

  auto operator<=>(const VersionKey&) const = default;
  bool operator==(const VersionKey&) const = default;
};

}  // namespace krul::kvstore

#endif  // KRUL_SERVICES_KVSTORE_STORAGE_VERSION_KEY_H_
