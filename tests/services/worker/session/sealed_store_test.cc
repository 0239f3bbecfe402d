// The sealed store: what the worker writes through it verifies; what a
// writer without the key puts in the store (forged, foreign, unsealed,
// another conversation's) is an integrity error before the worker uses any
// of it. A writer who crafts a block with a colliding XXH3 is simulated by a
// store that swaps a block's bytes behind the checksum check.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "krul/kvformat/kv_block.h"
#include "krul/kvformat/kv_mac.h"
#include "krul/kvformat/manifest.h"
#include "services/worker/worker_test_util.h"
#include "worker/core/worker_core.h"
#include "worker/session/kv_blocks.h"
#include "worker/session/sealed_conversation_store.h"

namespace krul::worker {
namespace {

const char kMasterHex[] = "8f1c2a3b4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
const char kOtherHex[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const absl::Time kNoDeadline = absl::InfiniteFuture();

KvMacKeyring Ring(const char* hex) { return KvMacKeyring::FromMasterKey(*KvMacKey::FromHex(hex)); }

std::string Block(uint32_t layer, char fill) {
  BlockHeader h;
  h.dtype = BlockDType::kF32;
  h.layout = BlockLayout::kKvTokenMajor;
  h.rank = 3;
  h.layer = layer;
  h.num_tokens = 4;
  h.dims = {2, 4, 8, 0};
  std::string payload(2 * 4 * 8 * 4, '\0');
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>(fill + i % 13);
  return *EncodeBlock(h, payload);
}

StoredVersion Version(const std::string& tenant, const std::string& id, uint32_t turn) {
  StoredVersion v;
  v.blocks = {Block(0, 'a'), Block(1, 'b')};
  v1::Manifest& m = v.manifest;
  m.mutable_key()->set_tenant(tenant);
  m.mutable_key()->set_conversation_id(id);
  m.mutable_key()->set_turn(turn);
  m.set_model_id("m");
  m.set_n_layers(2);
  m.set_plan("record");
  m.set_history_tokens(4);
  for (uint32_t i = 0; i < 2; ++i) *m.add_blocks() = *MakeBlockRef(i, v.blocks[i]);
  return v;
}

// Every block's payload zeroed, re-encoded with valid checksums, the refs
// updated and the victim's seal and tags copied: issue 17's forgery.
StoredVersion ZeroedCopy(const v1::Manifest& victim, const std::vector<std::string>& blocks,
                         uint32_t turn) {
  StoredVersion v;
  v.manifest = victim;
  v.manifest.mutable_key()->set_turn(turn);
  for (int i = 0; i < victim.blocks_size(); ++i) {
    BlockHeader h = *DecodeBlockHeader(blocks[i]);
    std::string zeroed = *EncodeBlock(h, std::string(h.payload_bytes, '\0'));
    v1::BlockRef ref = *MakeBlockRef(i, zeroed);
    ref.set_mac(victim.blocks(i).mac());
    *v.manifest.mutable_blocks(i) = ref;
    v.blocks.push_back(zeroed);
  }
  return v;
}

std::vector<std::string> ReadAll(ConversationStore& store, const v1::Manifest& m,
                                 absl::Status* status) {
  std::vector<std::string> out;
  std::vector<uint32_t> indices;
  for (int i = 0; i < m.blocks_size(); ++i) indices.push_back(i);
  *status = store.ReadBlocks(
      m, indices,
      [&out](uint32_t, std::string encoded) {
        out.push_back(std::move(encoded));
        return absl::OkStatus();
      },
      kNoDeadline);
  return out;
}

struct Fixture {
  std::shared_ptr<MemoryConversationStore> memory = std::make_shared<MemoryConversationStore>();
  std::unique_ptr<ConversationStore> sealed =
      NewSealedConversationStore(std::make_unique<testing::SharedStore>(memory), Ring(kMasterHex));
};

TEST(SealedStoreTest, WhatItWritesVerifies) {
  Fixture f;
  StoredVersion v = Version("alice", "c1", 1);
  ASSERT_TRUE(f.sealed->Write(v.manifest, v.blocks, kNoDeadline).ok());
  // In the store: sealed, with a tag per block.
  auto raw = f.memory->LookupLatest("alice", "c1", kNoDeadline);
  ASSERT_TRUE(raw.ok());
  EXPECT_TRUE(raw->has_seal());
  EXPECT_EQ(raw->blocks(1).mac().size(), kBlockMacBytes);
  auto m = f.sealed->LookupLatest("alice", "c1", kNoDeadline);
  ASSERT_TRUE(m.ok()) << m.status();
  absl::Status read;
  EXPECT_EQ(ReadAll(*f.sealed, *m, &read), v.blocks);
  EXPECT_TRUE(read.ok()) << read;
}

TEST(SealedStoreTest, ZeroedBlocksWithValidChecksumsAreAnIntegrityError) {
  Fixture f;
  StoredVersion v = Version("alice", "c1", 1);
  ASSERT_TRUE(f.sealed->Write(v.manifest, v.blocks, kNoDeadline).ok());
  auto sealed_manifest = f.memory->LookupLatest("alice", "c1", kNoDeadline);
  ASSERT_TRUE(sealed_manifest.ok());
  StoredVersion forged = ZeroedCopy(*sealed_manifest, v.blocks, 2);
  // The attacker writes straight into the store, as the next version; the
  // store accepts it (its checksums are valid) ...
  ASSERT_TRUE(f.memory->Write(forged.manifest, forged.blocks, kNoDeadline).ok());
  absl::Status unchecked;
  EXPECT_EQ(ReadAll(*f.memory, forged.manifest, &unchecked), forged.blocks);
  EXPECT_TRUE(unchecked.ok());
  // ... the worker does not.
  auto m = f.sealed->LookupLatest("alice", "c1", kNoDeadline);
  EXPECT_TRUE(IsKvIntegrityError(m.status())) << m.status();
  absl::Status read;
  EXPECT_TRUE(ReadAll(*f.sealed, forged.manifest, &read).empty());
  EXPECT_TRUE(IsKvIntegrityError(read)) << read;
}

// Forwards to the memory store but hands out `replacement` for block
// `index`, as if its XXH3 matched: the checksum check cannot see it.
class CollidingStore final : public ForwardingConversationStore {
 public:
  CollidingStore(std::shared_ptr<MemoryConversationStore> inner, uint32_t index,
                 std::string replacement)
      : ForwardingConversationStore(std::move(inner)),
        index_(index),
        replacement_(std::move(replacement)) {}
  absl::Status ReadBlocks(const v1::Manifest& m, std::span<const uint32_t> indices,
                          const BlockSink& sink, absl::Time d) override {
    return inner().ReadBlocks(
        m, indices,
        [&](uint32_t index, std::string encoded) {
          return sink(index, index == index_ ? replacement_ : std::move(encoded));
        },
        d);
  }

 private:
  const uint32_t index_;
  const std::string replacement_;
};

TEST(SealedStoreTest, ABlockBehindACollidingChecksumIsRejectedBeforeTheSinkSeesIt) {
  auto memory = std::make_shared<MemoryConversationStore>();
  StoredVersion v = Version("alice", "c1", 1);
  auto writer =
      NewSealedConversationStore(std::make_unique<testing::SharedStore>(memory), Ring(kMasterHex));
  ASSERT_TRUE(writer->Write(v.manifest, v.blocks, kNoDeadline).ok());
  std::string forged = v.blocks[1];
  forged.back() ^= 0x40;
  // Tags checked inline, and on verify threads while the read goes on.
  for (int threads : {0, 1, 3}) {
    auto reader = NewSealedConversationStore(std::make_unique<CollidingStore>(memory, 1, forged),
                                             Ring(kMasterHex), threads);
    auto m = reader->LookupLatest("alice", "c1", kNoDeadline);
    ASSERT_TRUE(m.ok()) << m.status();  // the manifest is the genuine one
    absl::Status read;
    std::vector<std::string> got = ReadAll(*reader, *m, &read);
    EXPECT_TRUE(IsKvIntegrityError(read)) << threads << ": " << read;
    ASSERT_EQ(got.size(), 1u) << threads;  // block 0 only; the forged block 1 never
    EXPECT_EQ(got[0], v.blocks[0]);
    // The genuine blocks, in order, on the same reader.
    auto genuine = NewSealedConversationStore(std::make_unique<testing::SharedStore>(memory),
                                              Ring(kMasterHex), threads);
    EXPECT_EQ(ReadAll(*genuine, *m, &read), v.blocks);
    EXPECT_TRUE(read.ok()) << read;
  }
}

// The worker's start-up load probe writes two versions and reads them back
// through the store it serves from: behind a sealing store it must read the
// sealed copy (it read its own unsealed manifest, every probe failed with an
// integrity error, and the cost model silently kept the flag values).
TEST(SealedStoreTest, TheWorkersLoadProbeWorksThroughIt) {
  auto memory = std::make_shared<MemoryConversationStore>();
  WorkerOptions o = testing::TestModelOptions();
  o.probe_load = true;
  o.load_gbps = 1e-4;  // a flag value no in-process read is as slow as
  auto core = WorkerCore::Create(
      o,
      NewSealedConversationStore(std::make_unique<testing::SharedStore>(memory), Ring(kMasterHex)));
  ASSERT_TRUE(core.ok()) << core.status();
  EXPECT_GT((*core)->cost_model().Snapshot().load.bytes_per_second, 100 * o.load_gbps * 1e9)
      << "the load cost is still the flag value: the probe failed";
}

TEST(SealedStoreTest, AnotherKeyOrAnotherTenantsVersionIsRejected) {
  auto memory = std::make_shared<MemoryConversationStore>();
  auto other_key =
      NewSealedConversationStore(std::make_unique<testing::SharedStore>(memory), Ring(kOtherHex));
  auto ours =
      NewSealedConversationStore(std::make_unique<testing::SharedStore>(memory), Ring(kMasterHex));
  // Sealed under a key this worker does not hold (another deployment's,
  // or one before a key change).
  StoredVersion v = Version("alice", "c1", 1);
  ASSERT_TRUE(other_key->Write(v.manifest, v.blocks, kNoDeadline).ok());
  EXPECT_TRUE(other_key->LookupLatest("alice", "c1", kNoDeadline).ok());
  EXPECT_TRUE(IsKvIntegrityError(ours->LookupLatest("alice", "c1", kNoDeadline).status()));
  // Bob's version, sealed with bob's key, moved under alice's name.
  StoredVersion b = Version("bob", "c2", 1);
  ASSERT_TRUE(ours->Write(b.manifest, b.blocks, kNoDeadline).ok());
  v1::Manifest moved = *memory->LookupLatest("bob", "c2", kNoDeadline);
  moved.mutable_key()->set_tenant("alice");
  ASSERT_TRUE(memory->Write(moved, b.blocks, kNoDeadline).ok());
  EXPECT_TRUE(IsKvIntegrityError(ours->LookupLatest("alice", "c2", kNoDeadline).status()));
}

TEST(SealedStoreTest, UnsealedVersionsAndTenantsWithoutAKeyAreRejected) {
  auto memory = std::make_shared<MemoryConversationStore>();
  auto sealed =
      NewSealedConversationStore(std::make_unique<testing::SharedStore>(memory), Ring(kMasterHex));
  // Written by a worker without a key (or before the key was configured).
  StoredVersion v = Version("alice", "c1", 1);
  ASSERT_TRUE(memory->Write(v.manifest, v.blocks, kNoDeadline).ok());
  EXPECT_TRUE(IsKvIntegrityError(sealed->LookupLatest("alice", "c1", kNoDeadline).status()));
  // Only bob has a key in this ring.
  KvMacKeyring bob_only;
  bob_only.SetTenantKey("bob", *KvMacKey::FromHex(kOtherHex));
  auto bob_store = NewSealedConversationStore(std::make_unique<testing::SharedStore>(memory),
                                              std::move(bob_only));
  EXPECT_EQ(bob_store->Write(v.manifest, v.blocks, kNoDeadline).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(IsKvIntegrityError(bob_store->LookupLatest("alice", "c1", kNoDeadline).status()));
}

// A store that answers every lookup with one fixed (genuine, sealed)
// manifest, whatever conversation was asked for.
class OneAnswerStore final : public ConversationStore {
 public:
  explicit OneAnswerStore(v1::Manifest m) : m_(std::move(m)) {}
  absl::StatusOr<v1::Manifest> LookupLatest(const std::string&, const std::string&,
                                            absl::Time) override {
    return m_;
  }
  absl::Status ReadBlocks(const v1::Manifest&, std::span<const uint32_t>, const BlockSink&,
                          absl::Time) override {
    return absl::OkStatus();
  }
  absl::Status Write(const v1::Manifest&, std::vector<std::string>, absl::Time) override {
    return absl::OkStatus();
  }
  absl::Status Delete(const std::string&, const std::string&, absl::Time) override {
    return absl::OkStatus();
  }
  absl::Status Health(absl::Time) override { return absl::OkStatus(); }

 private:
  v1::Manifest m_;
};

TEST(SealedStoreTest, AnotherConversationsGenuineVersionIsRejected) {
  Fixture f;
  StoredVersion v = Version("alice", "c1", 1);
  ASSERT_TRUE(f.sealed->Write(v.manifest, v.blocks, kNoDeadline).ok());
  auto genuine = f.memory->LookupLatest("alice", "c1", kNoDeadline);
  ASSERT_TRUE(genuine.ok());
  auto store =
      NewSealedConversationStore(std::make_unique<OneAnswerStore>(*genuine), Ring(kMasterHex));
  EXPECT_TRUE(store->LookupLatest("alice", "c1", kNoDeadline).ok());
  EXPECT_TRUE(IsKvIntegrityError(store->LookupLatest("alice", "c9", kNoDeadline).status()));
  EXPECT_TRUE(IsKvIntegrityError(store->LookupLatest("carol", "c1", kNoDeadline).status()));
}

// The worker's --kv_mac_key_file rule: a key file seals (and a bad one is
// an error at start-up); without one the store is used as it is.
TEST(SealedStoreTest, KeyFileFlagSealsAndABadFileIsAnError) {
  const std::string dir = ::testing::TempDir();
  const std::string good = dir + "/kv_mac_good.key";
  const std::string bad = dir + "/kv_mac_bad.key";
  {
    std::ofstream(good) << "# test key\n" << kMasterHex << "\n";
    std::ofstream(bad) << "not a key\n";
  }
  std::filesystem::permissions(
      good, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  auto memory = std::make_shared<MemoryConversationStore>();
  StoredVersion v = Version("alice", "c1", 1);

  auto plain = ProtectConversationStore(std::make_unique<testing::SharedStore>(memory), "",
                                        {"10.0.0.7:7070"});
  ASSERT_TRUE(plain.ok());
  ASSERT_TRUE((*plain)->Write(v.manifest, v.blocks, kNoDeadline).ok());
  EXPECT_FALSE(memory->LookupLatest("alice", "c1", kNoDeadline)->has_seal());

  auto sealed = ProtectConversationStore(std::make_unique<testing::SharedStore>(memory), good,
                                         {"127.0.0.1:7070"});
  ASSERT_TRUE(sealed.ok()) << sealed.status();
  // The unsealed version above is not used; what it writes is sealed with
  // the file's key.
  EXPECT_TRUE(IsKvIntegrityError((*sealed)->LookupLatest("alice", "c1", kNoDeadline).status()));
  ASSERT_TRUE((*sealed)->Write(v.manifest, v.blocks, kNoDeadline).ok());
  auto m = memory->LookupLatest("alice", "c1", kNoDeadline);
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE(VerifyManifestSeal(*Ring(kMasterHex).ForTenant("alice"), *m).ok());
  EXPECT_TRUE((*sealed)->LookupLatest("alice", "c1", kNoDeadline).ok());

  EXPECT_EQ(ProtectConversationStore(std::make_unique<testing::SharedStore>(memory), bad, {})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(ProtectConversationStore(std::make_unique<testing::SharedStore>(memory),
                                        dir + "/kv_mac_missing.key", {})
                   .ok());
  std::remove(good.c_str());
  std::remove(bad.c_str());
}

}  // namespace
}  // namespace krul::worker
