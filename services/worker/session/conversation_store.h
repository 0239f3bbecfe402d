// Where the worker keeps conversations between turns: committed versions
// (a manifest + encoded KV blocks, krul.v1.Manifest / kv_block.h), addressed
// by (tenant, conversation id). The worker holds no conversation state of
// its own, so every worker sharing a store can continue every conversation.
//
// Two implementations: MemoryConversationStore (one process; tests and a
// worker started without --kvstore) and the kvstore-backed one in
// kvstore_conversation_store.h.
//
// Error codes (all implementations):
//   NOT_FOUND          no committed version of the conversation, or a block
//                      listed by the manifest is gone
//   UNAVAILABLE        the store cannot be reached
//   DEADLINE_EXCEEDED  the call did not finish before its deadline
//   DATA_LOSS          a block failed its checksum against the manifest
//   INVALID_ARGUMENT   a malformed manifest or block index
//   RESOURCE_EXHAUSTED the store is out of space or over quota (writes)
//
// Thread-safe.
#ifndef KRUL_SERVICES_WORKER_SESSION_CONVERSATION_STORE_H_
#define KRUL_SERVICES_WORKER_SESSION_CONVERSATION_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "krul/v1/kvstore.pb.h"

namespace krul::worker {

// Receives one verified encoded block. A non-OK return stops the read and is
// returned by it.
using BlockSink = std::function<absl::Status(uint32_t index, std::string encoded)>;

// A lease on one committed version (ConversationStore::Pin).
struct StorePin {
  std::string address;    // the shard holding it (empty: a store without leases)
  uint64_t lease_id = 0;  // 0: nothing to release
  absl::Time expires = absl::InfiniteFuture();
};

class ConversationStore {
 public:
  virtual ~ConversationStore() = default;

  // The manifest of the newest committed version of `conversation_id`.
  virtual absl::StatusOr<v1::Manifest> LookupLatest(const std::string& tenant,
                                                    const std::string& conversation_id,
                                                    absl::Time deadline) = 0;

  // Streams encoded blocks `indices` of the version `manifest` names to
  // `sink`, in the order asked, each verified against its BlockRef
  // (VerifyBlock) first: a corrupted block is DATA_LOSS, never handed over.
  // Blocks are handed over as they arrive, so a reader can use the first
  // while later ones are in flight.
  virtual absl::Status ReadBlocks(const v1::Manifest& manifest, std::span<const uint32_t> indices,
                                  const BlockSink& sink, absl::Time deadline) = 0;

  // Commits a new version: blocks[i] is the encoded block the manifest's
  // blocks[i] describes. Readers see all of it or nothing.
  virtual absl::Status Write(const v1::Manifest& manifest, std::vector<std::string> blocks,
                             absl::Time deadline) = 0;

  // Deletes every version of `conversation_id`. NOT_FOUND when none.
  virtual absl::Status Delete(const std::string& tenant, const std::string& conversation_id,
                              absl::Time deadline) = 0;

  // OK when the store answers.
  virtual absl::Status Health(absl::Time deadline) = 0;

  // Pins the committed version `key` (tenant, conversation id, turn) for
  // `lease`: until Unpin or the lease runs out the store neither evicts,
  // expires nor deletes it, so a restore reading it cannot lose it midway.
  // NOT_FOUND when the version is gone. The default is a store without
  // eviction: a handle with nothing to release.
  virtual absl::StatusOr<StorePin> Pin(const v1::ConversationKey& key, absl::Duration lease,
                                       absl::Time deadline);

  // Ends a lease from Pin (a handle with lease_id 0: nothing to do).
  // NOT_FOUND when it already expired.
  virtual absl::Status Unpin(const StorePin& pin, absl::Time deadline);

  // How blocks move, for logs: "ucx", "grpc", "in-process".
  virtual std::string data_plane() const { return "in-process"; }
};

// Hands every call to `inner`: the base of a store that changes a few calls
// (the sealing store; spies and fault injectors in tests) and forwards the
// rest. Thread-safe when `inner` is.
class ForwardingConversationStore : public ConversationStore {
 public:
  explicit ForwardingConversationStore(std::shared_ptr<ConversationStore> inner);

  absl::StatusOr<v1::Manifest> LookupLatest(const std::string& tenant,
                                            const std::string& conversation_id,
                                            absl::Time deadline) override;
  absl::Status ReadBlocks(const v1::Manifest& manifest, std::span<const uint32_t> indices,
                          const BlockSink& sink, absl::Time deadline) override;
  absl::Status Write(const v1::Manifest& manifest, std::vector<std::string> blocks,
                     absl::Time deadline) override;
  absl::Status Delete(const std::string& tenant, const std::string& conversation_id,
                      absl::Time deadline) override;
  absl::Status Health(absl::Time deadline) override;
  absl::StatusOr<StorePin> Pin(const v1::ConversationKey& key, absl::Duration lease,
                               absl::Time deadline) override;
  absl::Status Unpin(const StorePin& pin, absl::Time deadline) override;
  std::string data_plane() const override;

 protected:
  ConversationStore& inner() const { return *inner_; }

 private:
  const std::shared_ptr<ConversationStore> inner_;  // never null
};

// Versions in this process's memory; only the newest version of a
// conversation is kept. Faults can be injected for tests.
class MemoryConversationStore final : public ConversationStore {
 public:
  absl::StatusOr<v1::Manifest> LookupLatest(const std::string& tenant,
                                            const std::string& conversation_id,
                                            absl::Time deadline) override;
  absl::Status ReadBlocks(const v1::Manifest& manifest, std::span<const uint32_t> indices,
                          const BlockSink& sink, absl::Time deadline) override;
  absl::Status Write(const v1::Manifest& manifest, std::vector<std::string> blocks,
                     absl::Time deadline) override;
  absl::Status Delete(const std::string& tenant, const std::string& conversation_id,
                      absl::Time deadline) override;
  absl::Status Health(absl::Time deadline) override;

  // Never evicts; Pin counts the leases it hands out so tests can see that
  // restores pin and release what they read.
  absl::StatusOr<StorePin> Pin(const v1::ConversationKey& key, absl::Duration lease,
                               absl::Time deadline) override;
  absl::Status Unpin(const StorePin& pin, absl::Time deadline) override;

  // Test hooks: every call fails with `status` (OK clears it); flip one
  // byte of every stored block's payload; drop the stored blocks.
  void InjectFailure(absl::Status status);
  void CorruptBlocks();
  void DropBlocks();
  size_t versions() const;
  // Leases handed out by Pin and not yet released.
  int active_pins() const;
  int pins_granted() const;

 private:
  struct Version {
    v1::Manifest manifest;
    std::vector<std::string> blocks;
  };
  mutable absl::Mutex mu_;
  absl::Status failure_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, std::string> pins_ ABSL_GUARDED_BY(mu_);
  uint64_t next_lease_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<std::string, Version> versions_ ABSL_GUARDED_BY(mu_);
};

}  // namespace krul::worker

#endif  // KRUL_SERVICES_WORKER_SESSION_CONVERSATION_STORE_H_
