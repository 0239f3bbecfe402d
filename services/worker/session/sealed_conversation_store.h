// A ConversationStore that seals every version it writes and verifies every
// version it reads with the tenants' KV MAC keys (krul/kvformat/kv_mac.h),
// around any other store (in practice the kvstore-backed one).
//
// The kvstore, and anyone who can write to it, holds no key: it can lose or
// withhold a version, but cannot make the worker use KV (or token ids, or a
// plan) that a key holder did not write for that conversation. The inner
// store still verifies the XXH3 checksums against accidents; this layer
// adds what a writer cannot forge:
//
//   LookupLatest  the manifest must be the asked conversation's (tenant and
//                 id) and carry a seal that verifies under the tenant's key;
//   ReadBlocks    the manifest's seal again (it may come from anywhere),
//                 then each block's tag before the sink sees the block;
//   Write         seals the version (fresh salt, block tags, manifest MAC)
//                 before the inner store commits it.
//
// Errors: the inner store's, plus an integrity error (DATA_LOSS that
// IsKvIntegrityError recognises; the worker counts it as fallback reason
// "integrity" and recomputes) for an unsealed, forged or foreign version or
// block, or a tenant the keyring has no key for; Write returns
// FAILED_PRECONDITION for a tenant without a key. Unsealed versions (written
// before the key was configured) are rejected like forged ones: a writer
// could otherwise strip the seal.
//
// Thread-safe (the inner store must be).
#ifndef KRUL_SERVICES_WORKER_SESSION_SEALED_CONVERSATION_STORE_H_
#define KRUL_SERVICES_WORKER_SESSION_SEALED_CONVERSATION_STORE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "krul/kvformat/kv_mac.h"
#include "worker/session/conversation_store.h"

namespace krul::worker {

// Takes ownership of `inner`. Block tags are checked on `verify_threads`
// threads of the store's own, in parallel with each other and with the rest
// of the read (blocks still reach the sink in arrival order, each only once
// it and all before it verified); 0 checks them inline on the reading
// thread; negative: min(4, the machine's cores).
std::unique_ptr<ConversationStore> NewSealedConversationStore(
    std::unique_ptr<ConversationStore> inner, KvMacKeyring keys, int verify_threads = -1);

// The worker's --kv_mac_key_file rule for the kvstore at `addresses`: with a
// key file, `store` sealed with its keys (KvMacKeyring::ReadFile's errors
// otherwise; a warning when the file is readable by group or others);
// without one, `store` as it is and a warning that stored KV is protected
// by checksums only, which a writer defeats (a louder one when an address
// is not loopback).
absl::StatusOr<std::unique_ptr<ConversationStore>> ProtectConversationStore(
    std::unique_ptr<ConversationStore> store, const std::string& key_file,
    const std::vector<std::string>& addresses);

}  // namespace krul::worker

#endif  // KRUL_SERVICES_WORKER_SESSION_SEALED_CONVERSATION_STORE_H_
