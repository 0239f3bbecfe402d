#include "krul/kvformat/manifest.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace krul {
namespace {

std::string KvBlock(uint32_t layer, uint32_t begin, uint32_t tokens, char fill) {
  BlockHeader h;
  h.dtype = BlockDType::kF32;
  h.layout = BlockLayout::kKvTokenMajor;
  h.rank = 3;
  h.layer = layer;
  h.token_begin = begin;
  h.num_tokens = tokens;
  h.dims = {2, tokens, 4, 0};
  std::string payload(2 * tokens * 4 * 4, fill);
  absl::StatusOr<std::string> enc = EncodeBlock(h, payload);
  EXPECT_TRUE(enc.ok());
  return *enc;
}

v1::Manifest GoodManifest(const std::vector<std::string>& blocks) {
  v1::Manifest m;
  m.mutable_key()->set_tenant("acme");
  m.mutable_key()->set_conversation_id("conv-1");
  m.mutable_key()->set_turn(3);
  m.set_model_id("llama-7b");
  m.set_n_layers(4);
  m.set_plan("pairs:1-2");
  for (uint32_t l = 0; l < 4; ++l) {
    v1::LayerRange* r = m.add_stored_ranges();
    r->set_layer(l);
    r->set_token_begin(8);
    r->set_token_end(16);
  }
  for (size_t i = 0; i < blocks.size(); ++i) {
    absl::StatusOr<v1::BlockRef> ref = MakeBlockRef(static_cast<uint32_t>(i), blocks[i]);
    EXPECT_TRUE(ref.ok()) << ref.status();
    *m.add_blocks() = *ref;
  }
  return m;
}

TEST(ManifestTest, GoodManifestValidates) {
  std::vector<std::string> blocks = {KvBlock(0, 8, 8, 'a'), KvBlock(1, 8, 8, 'b')};
  v1::Manifest m = GoodManifest(blocks);
  EXPECT_TRUE(ValidateManifest(m).ok()) << ValidateManifest(m);
  EXPECT_EQ(ManifestBlockBytes(m), blocks[0].size() + blocks[1].size());
  EXPECT_EQ(m.blocks(1).encoded_bytes(), 64u + 2 * 8 * 4 * 4);
  EXPECT_EQ(m.blocks(1).layer(), 1u);
}

TEST(ManifestTest, InvalidFieldsAreNamed) {
  std::vector<std::string> blocks = {KvBlock(0, 8, 8, 'a')};
  struct Case {
    const char* field;
    void (*mutate)(v1::Manifest&);
  };
  const Case cases[] = {
      {"key", [](v1::Manifest& m) { m.clear_key(); }},
      {"tenant", [](v1::Manifest& m) { m.mutable_key()->clear_tenant(); }},
      {"tenant", [](v1::Manifest& m) { m.mutable_key()->set_tenant(std::string(129, 't')); }},
      {"conversation_id", [](v1::Manifest& m) { m.mutable_key()->clear_conversation_id(); }},
      {"model_id", [](v1::Manifest& m) { m.clear_model_id(); }},
      {"n_layers", [](v1::Manifest& m) { m.set_n_layers(0); }},
      {"n_layers", [](v1::Manifest& m) { m.set_n_layers(100000); }},
      {"plan", [](v1::Manifest& m) { m.set_plan(std::string((1 << 20) + 1, 'p')); }},
      {"stored_ranges[1]", [](v1::Manifest& m) { m.mutable_stored_ranges(1)->set_layer(0); }},
      {"stored_ranges[2]", [](v1::Manifest& m) { m.mutable_stored_ranges(2)->set_layer(4); }},
      {"stored_ranges[0]", [](v1::Manifest& m) { m.mutable_stored_ranges(0)->set_token_end(1); }},
      {"blocks[0]", [](v1::Manifest& m) { m.mutable_blocks(0)->set_index(1); }},
      {"blocks[0]", [](v1::Manifest& m) { m.mutable_blocks(0)->set_layer(4); }},
      {"blocks[0]", [](v1::Manifest& m) { m.mutable_blocks(0)->set_layer_pair(0); }},
      {"blocks[0]", [](v1::Manifest& m) { m.mutable_blocks(0)->set_encoded_bytes(10); }},
  };
  for (const Case& c : cases) {
    v1::Manifest m = GoodManifest(blocks);
    c.mutate(m);
    absl::Status s = ValidateManifest(m);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_NE(s.message().find(c.field), std::string::npos) << s << " should name " << c.field;
  }
}

TEST(ManifestTest, VerifyBlockAcceptsTheRightBlockOnly) {
  std::vector<std::string> blocks = {KvBlock(0, 8, 8, 'a'), KvBlock(1, 8, 8, 'b')};
  v1::Manifest m = GoodManifest(blocks);
  absl::StatusOr<DecodedBlock> ok = VerifyBlock(m.blocks(0), blocks[0]);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->payload, std::string(2 * 8 * 4 * 4, 'a'));
  // Block 1 has the same size but a different layer and checksum.
  EXPECT_EQ(VerifyBlock(m.blocks(0), blocks[1]).status().code(), absl::StatusCode::kDataLoss);
  // Same layer, different bytes: a valid block, but not this one.
  EXPECT_EQ(VerifyBlock(m.blocks(0), KvBlock(0, 8, 8, 'z')).status().code(),
            absl::StatusCode::kDataLoss);
  // Truncated.
  EXPECT_EQ(VerifyBlock(m.blocks(0), blocks[0].substr(0, 100)).status().code(),
            absl::StatusCode::kDataLoss);
  std::string flipped = blocks[0];
  flipped[200] ^= 1;
  EXPECT_EQ(VerifyBlock(m.blocks(0), flipped).status().code(), absl::StatusCode::kDataLoss);
}

TEST(ManifestTest, StoredFrameRoundTripsAndRejectsCorruption) {
  std::vector<std::string> blocks = {KvBlock(0, 8, 8, 'a')};
  v1::Manifest m = GoodManifest(blocks);
  std::string stored = EncodeStoredManifest(m);
  ASSERT_EQ(stored.substr(0, 4), "KRMF");
  absl::StatusOr<v1::Manifest> back = DecodeStoredManifest(stored);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->SerializeAsString(), m.SerializeAsString());

  for (size_t i = 0; i < stored.size(); ++i) {
    std::string bad = stored;
    bad[i] = static_cast<char>(bad[i] ^ 0x01);
    absl::StatusCode code = DecodeStoredManifest(bad).status().code();
    ASSERT_EQ(code, absl::StatusCode::kDataLoss) << "byte " << i;
  }
  for (size_t n = 0; n < stored.size(); ++n) {
    ASSERT_EQ(DecodeStoredManifest(std::string_view(stored).substr(0, n)).status().code(),
              absl::StatusCode::kDataLoss);
  }
}

}  // namespace
}  // namespace krul
