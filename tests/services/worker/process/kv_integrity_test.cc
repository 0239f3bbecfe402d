// Issue 17, finding 2, against a real krul-kvstore: someone who can write to
// the store (and nothing else) zeroes the victim's KV blocks, recomputes
// their XXH3 checksums and Puts them as the conversation's next version.
// A worker with a KV MAC key rejects the version (fallback reason
// "integrity", counted) and recomputes: its answer is the one it gives the
// same messages with nothing stored, and the uninterrupted run's wherever
// recomputing from the text reproduces that (finding 8, re-tokenization, is
// separate work; the test says when it compared with the recompute only).
// So it does when the forger seals with a key of its own (another tenant's
// or another deployment's), or fills the blocks with large values instead
// of zeros. The controls, a worker without a key, restore the forged
// versions as hits; the large values change its answer: the attack is real
// and the test can tell.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "krul/kvformat/kv_block.h"
#include "krul/kvformat/kv_mac.h"
#include "krul/kvformat/manifest.h"
#include "services/worker/worker_test_util.h"
#include "test_support/child_process.h"
#include "worker/session/kvstore_conversation_store.h"
#include "worker/session/sealed_conversation_store.h"

namespace krul::worker {
namespace {

using krul::testing::ChildProcess;
using krul::testing::PortFromLine;
using testing::ReferenceConversation;
using testing::RunTurn;
using testing::TestModelOptions;

const char kVictimKeyHex[] = "5a1d8c3e7b2f90a4c6e8d1b3f5a7092c4e6f8a1b3d5c7e9f0a2b4c6d8e0f1a3b";
const char kForgerKeyHex[] = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";

const int kFirstTokens = 16;  // answers are cut at this length
const std::vector<std::string> kUserTurns = {
    "Tell me a story about a little dog named Max.",
    "What did Max do with the ball?",
};

// Below the worker's sealing layer, where the store sits: remembers the key
// of the last version written, which is all the forger needs to know.
class KeySpy final : public ForwardingConversationStore {
 public:
  explicit KeySpy(std::unique_ptr<ConversationStore> inner)
      : ForwardingConversationStore(std::move(inner)) {}
  absl::Status Write(const v1::Manifest& m, std::vector<std::string> b, absl::Time d) override {
    {
      absl::MutexLock lock(&mu_);
      last_key_ = m.key();
    }
    return ForwardingConversationStore::Write(m, std::move(b), d);
  }

  v1::ConversationKey last_key() const {
    absl::MutexLock lock(&mu_);
    return last_key_;
  }

 private:
  mutable absl::Mutex mu_;
  v1::ConversationKey last_key_ ABSL_GUARDED_BY(mu_);
};

enum class Attack {
  kZeroedCopy,   // the victim's seal and tags copied over, unchanged
  kForeignSeal,  // sealed anew with the forger's own key
  kNoiseCopy,    // as kZeroedCopy, payloads filled with 0x47 bytes instead
};

struct Case {
  std::string name;
  bool victim_has_key;
  Attack attack;
};

// The forger: reads the victim's newest version through its own kvstore
// client, zeroes every payload, re-encodes (valid XXH3 in each header and
// BlockRef) and Puts it as the next version.
absl::Status Forge(const KvstoreStoreOptions& kv, const v1::ConversationKey& key, Attack attack) {
  auto plain = NewKvstoreConversationStore(kv);
  if (!plain.ok()) return plain.status();
  std::unique_ptr<ConversationStore> writer = *std::move(plain);
  auto victim =
      writer->LookupLatest(key.tenant(), key.conversation_id(), absl::Now() + absl::Seconds(10));
  if (!victim.ok()) return victim.status();
  std::vector<uint32_t> all;
  for (int i = 0; i < victim->blocks_size(); ++i) all.push_back(static_cast<uint32_t>(i));
  std::vector<std::string> blocks(all.size());
  if (absl::Status s = writer->ReadBlocks(
          *victim, all,
          [&blocks](uint32_t index, std::string encoded) {
            blocks[index] = std::move(encoded);
            return absl::OkStatus();
          },
          absl::Now() + absl::Seconds(10));
      !s.ok()) {
    return s;
  }
  v1::Manifest forged = *victim;
  forged.mutable_key()->set_turn(victim->key().turn() + 1);
  forged.clear_created_unix_micros();
  forged.clear_ttl_seconds();
  std::vector<std::string> forged_blocks;
  for (int i = 0; i < victim->blocks_size(); ++i) {
    auto header = DecodeBlockHeader(blocks[i]);
    if (!header.ok()) return header.status();
    const char fill = attack == Attack::kNoiseCopy ? '\x47' : '\0';
    auto zeroed = EncodeBlock(*header, std::string(header->payload_bytes, fill));
    if (!zeroed.ok()) return zeroed.status();
    auto ref = MakeBlockRef(static_cast<uint32_t>(i), *zeroed);
    if (!ref.ok()) return ref.status();
    ref->set_mac(victim->blocks(i).mac());
    *forged.mutable_blocks(i) = *std::move(ref);
    forged_blocks.push_back(*std::move(zeroed));
  }
  if (attack == Attack::kForeignSeal) {
    writer = NewSealedConversationStore(
        std::move(writer), KvMacKeyring::FromMasterKey(*KvMacKey::FromHex(kForgerKeyHex)));
  }
  return writer->Write(forged, std::move(forged_blocks), absl::Now() + absl::Seconds(10));
}

class KvIntegrityTest : public ::testing::TestWithParam<Case> {};

TEST_P(KvIntegrityTest, ForgedNextVersionWithValidChecksums) {
#ifndef KRUL_KVSTORE_BIN
  GTEST_SKIP() << "krul-kvstore is not built";
#else
  const Case& c = GetParam();
  auto kvstore = ChildProcess::Start(
      {KRUL_KVSTORE_BIN, "--host=127.0.0.1", "--port=0", "--metrics_port=-1", "--tiers=dram"},
      "krul-kvstore listening on");
  ASSERT_TRUE(kvstore.ok()) << kvstore.status();
  KvstoreStoreOptions kv;
  kv.addresses = {absl::StrCat("127.0.0.1:", PortFromLine((*kvstore)->ready_line()))};
  kv.restore_deadline = absl::Seconds(5);
  kv.ucx = false;  // inline gRPC: the forger needs nothing more than Put
  auto remote = NewKvstoreConversationStore(kv);
  ASSERT_TRUE(remote.ok()) << remote.status();
  auto spy_owned = std::make_unique<KeySpy>(*std::move(remote));
  KeySpy* spy = spy_owned.get();
  std::unique_ptr<ConversationStore> store = std::move(spy_owned);
  if (c.victim_has_key) {
    store = NewSealedConversationStore(
        std::move(store), KvMacKeyring::FromMasterKey(*KvMacKey::FromHex(kVictimKeyHex)));
  }

  WorkerOptions o = TestModelOptions();
  o.mode = RestoreMode::kLoad;  // the whole history comes from the store
  o.kvstore_deadline = absl::Seconds(5);
  auto core = WorkerCore::Create(o, std::move(store));
  ASSERT_TRUE(core.ok()) << core.status();
  ReferenceConversation reference((*core)->model(), (*core)->tokenizer());

  std::vector<ChatMessage> messages = {{Role::kUser, kUserTurns[0]}};
  auto first = RunTurn(**core, messages, kFirstTokens, "victim");
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(first->ids, reference.Turn(kUserTurns[0], kFirstTokens));
  ASSERT_FALSE(spy->last_key().conversation_id().empty()) << "the first turn was not stored";

  ASSERT_TRUE(Forge(kv, spy->last_key(), c.attack).ok());

  messages.push_back({Role::kAssistant, first->content});
  messages.push_back({Role::kUser, kUserTurns[1]});
  auto second = RunTurn(**core, messages, 16, "victim");
  ASSERT_TRUE(second.ok()) << second.status();
  const std::vector<int> uninterrupted = reference.Turn(kUserTurns[1], 16);
  const std::string metrics = (*core)->metrics().Serialize();
  // What this worker answers from the messages alone (no stored version:
  // a miss, everything prefilled): the answer a rejected version must get.
  auto recomputed = RunTurn(**core, messages, 16, "never-stored");
  ASSERT_TRUE(recomputed.ok()) << recomputed.status();
  ASSERT_EQ(recomputed->stats.restore, "miss");
  if (c.victim_has_key) {
    EXPECT_EQ(second->stats.restore, "fallback");
    EXPECT_EQ(second->stats.fallback_reason, "integrity");
    EXPECT_NE(metrics.find("krul_worker_fallbacks_total{reason=\"integrity\"} 1"),
              std::string::npos)
        << metrics;
    EXPECT_EQ(second->ids, recomputed->ids);
    // The uninterrupted run's answer too, where recomputing from the text
    // gives the restored history's tokens (issue 17 finding 8: until the
    // worker's re-tokenization is canonical, a recompute of a turn that
    // follows a truncated answer may differ from it, attacked or not).
    if (recomputed->ids == uninterrupted) {
      EXPECT_EQ(second->ids, uninterrupted);
    }
    if (recomputed->ids != uninterrupted) {
      std::fprintf(stderr,
                   "note: this worker's recompute of the turn from its messages differs from the "
                   "uninterrupted reference run here (restore vs recompute agreement is issue 17 "
                   "finding 8's work); the attacked turn was compared with the recompute only\n");
    }
  } else {
    // The control: checksums only, the forged KV is used. Zeroed KV may or
    // may not change a short greedy answer; KV of large values does.
    EXPECT_EQ(second->stats.restore, "hit");
    EXPECT_GT(second->stats.loaded_bytes, 0u);
    if (c.attack == Attack::kNoiseCopy) {
      EXPECT_NE(second->ids, uninterrupted);
      EXPECT_NE(second->ids, recomputed->ids);
    }
  }
  core->reset();
  EXPECT_EQ((*kvstore)->Terminate(), 0);
#endif
}

INSTANTIATE_TEST_SUITE_P(Attacks, KvIntegrityTest,
                         ::testing::Values(Case{"SealedZeroedCopy", true, Attack::kZeroedCopy},
                                           Case{"SealedForeignKey", true, Attack::kForeignSeal},
                                           Case{"SealedNoise", true, Attack::kNoiseCopy},
                                           Case{"NoKeyControl", false, Attack::kZeroedCopy},
                                           Case{"NoKeyControlNoise", false, Attack::kNoiseCopy}),
                         [](const ::testing::TestParamInfo<Case>& param) {
                           return param.param.name;
                         });

}  // namespace
}  // namespace krul::worker
