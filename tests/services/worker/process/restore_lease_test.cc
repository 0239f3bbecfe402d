// The lease a restore holds on the version it reads, against a real
// krul-kvstore (DRAM only, so eviction removes a version for good) over its
// UCX data plane (shared memory on loopback): other conversations fill the
// store in the middle of a restore, after its lookup and before its first
// block is read. With the lease the restore is a hit and gives the
// uninterrupted run's tokens; without it (the control) the version is gone
// and the turn is recomputed.
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "krul/kvformat/kv_block.h"
#include "krul/kvformat/manifest.h"
#include "services/worker/worker_test_util.h"
#include "test_support/child_process.h"
#include "test_support/test_data.h"
#include "worker/session/kvstore_conversation_store.h"

namespace krul::worker {
namespace {

using krul::testing::ChildProcess;
using krul::testing::PortFromLine;
using testing::ReferenceConversation;
using testing::RunTurn;
using testing::TestModelOptions;

const std::vector<std::string> kUserTurns = {
    "Tell me a story about a little dog named Max.",
    "What did Max do with the ball?",
};

// Forwards to a store; the first block read (a restore's, after its lookup
// and lease) first writes `fillers` versions of `filler_bytes` each under
// other conversation ids, more than the kvstore's DRAM holds, so its
// eviction runs while the restore is under way.
class FillingStore final : public ForwardingConversationStore {
 public:
  FillingStore(std::unique_ptr<ConversationStore> inner, int fillers, size_t filler_bytes)
      : ForwardingConversationStore(std::move(inner)),
        fillers_(fillers),
        filler_bytes_(filler_bytes) {}

  absl::Status ReadBlocks(const v1::Manifest& m, std::span<const uint32_t> indices,
                          const BlockSink& sink, absl::Time d) override {
    if (!filled_ && !m.key().conversation_id().starts_with("__krul_probe__")) {
      filled_ = true;
      for (int i = 0; i < fillers_; ++i) {
        if (absl::Status s = WriteFiller(m.key().tenant(), i); !s.ok()) return s;
      }
    }
    return inner().ReadBlocks(m, indices, sink, absl::Now() + absl::Seconds(10));
  }

  bool filled() const { return filled_; }

 private:
  absl::Status WriteFiller(const std::string& tenant, int i) {
    v1::Manifest m;
    m.mutable_key()->set_tenant(tenant);
    m.mutable_key()->set_conversation_id(absl::StrCat("filler-", i));
    m.mutable_key()->set_turn(1);
    m.set_model_id("filler");
    m.set_n_layers(1);
    auto block = EncodeRawBlock(std::string(filler_bytes_, static_cast<char>('a' + i % 26)));
    if (!block.ok()) return block.status();
    auto ref = MakeBlockRef(0, *block);
    if (!ref.ok()) return ref.status();
    *m.add_blocks() = *ref;
    std::vector<std::string> blocks;
    blocks.push_back(*std::move(block));
    return inner().Write(m, std::move(blocks), absl::Now() + absl::Seconds(10));
  }

  const int fillers_;
  const size_t filler_bytes_;
  bool filled_ = false;
};

class RestoreLeaseTest : public ::testing::TestWithParam<bool> {};

TEST_P(RestoreLeaseTest, EvictionCannotRemoveALeasedVersionMidRestore) {
#ifndef KRUL_KVSTORE_BIN
  GTEST_SKIP() << "krul-kvstore is not built";
#else
  const bool pin = GetParam();
  // 1 MiB of DRAM and nothing behind it: leaving DRAM means leaving the store.
  auto kvstore =
      ChildProcess::Start({KRUL_KVSTORE_BIN, "--host=127.0.0.1", "--port=0", "--metrics_port=-1",
                           "--tiers=dram", "--dram_capacity=1M", "--ucx"},
                          "krul-kvstore listening on");
  ASSERT_TRUE(kvstore.ok()) << kvstore.status();
  KvstoreStoreOptions kv;
  kv.addresses = {absl::StrCat("127.0.0.1:", PortFromLine((*kvstore)->ready_line()))};
  kv.restore_deadline = absl::Seconds(5);
  kv.ucx = true;  // the default: UCX over shared memory here
  auto store_a = NewKvstoreConversationStore(kv);
  auto store_b = NewKvstoreConversationStore(kv);
  ASSERT_TRUE(store_a.ok() && store_b.ok());
  // 12 x 256 KiB = 3 MiB of other conversations: every unleased version
  // older than them is evicted.
  auto filling = std::make_unique<FillingStore>(*std::move(store_b), 12, 256 << 10);
  FillingStore* filling_raw = filling.get();

  WorkerOptions o = TestModelOptions();
  o.mode = RestoreMode::kLoad;  // every block of the history is read
  o.pin_restores = pin;
  o.kvstore_deadline = absl::Seconds(5);
  auto a = WorkerCore::Create(o, *std::move(store_a));
  auto b = WorkerCore::Create(o, std::move(filling));
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ((*b)->store().data_plane(), "ucx");
  ReferenceConversation reference((*a)->model(), (*a)->tokenizer());

  std::vector<ChatMessage> messages = {{Role::kUser, kUserTurns[0]}};
  auto first = RunTurn(**a, messages, 16, "leased");
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->ids, reference.Turn(kUserTurns[0], 16));
  messages.push_back({Role::kAssistant, first->content});
  messages.push_back({Role::kUser, kUserTurns[1]});
  auto second = RunTurn(**b, messages, 16, "leased");
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_TRUE(filling_raw->filled()) << "the restore read no block";
  if (pin) {
    EXPECT_EQ(second->stats.restore, "hit");
    EXPECT_GT(second->stats.loaded_bytes, 0u);
  } else {
    // The control: without the lease the version was evicted midway.
    EXPECT_EQ(second->stats.restore, "fallback");
    EXPECT_EQ(second->stats.fallback_reason, "missing_blocks");
  }
  // Either way the answer is the uninterrupted run's: never wrong KV.
  EXPECT_EQ(second->ids, reference.Turn(kUserTurns[1], 16));
  b->reset();
  a->reset();
  EXPECT_EQ((*kvstore)->Terminate(), 0);
#endif
}

INSTANTIATE_TEST_SUITE_P(LeaseOnAndOff, RestoreLeaseTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& param_info) {
                           return param_info.param ? std::string("Leased")
                                                   : std::string("NotLeased");
                         });

}  // namespace
}  // namespace krul::worker
