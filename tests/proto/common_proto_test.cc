// Checks that the generated krul.v1 common messages round-trip through the
// wire format and that malformed bytes are rejected, not half-parsed.
#include <string>

#include "gtest/gtest.h"
#include "krul/v1/common.pb.h"

namespace krul {
namespace {

TEST(CommonProtoTest, ConversationKeyRoundTrips) {
  v1::ConversationKey key;
  key.set_tenant("acme");
  key.set_conversation_id("conv-0042");
  key.set_turn(3);

  std::string bytes;
  ASSERT_TRUE(key.SerializeToString(&bytes));

  v1::ConversationKey parsed;
  ASSERT_TRUE(parsed.ParseFromString(bytes));
  EXPECT_EQ(parsed.tenant(), "acme");
  EXPECT_EQ(parsed.conversation_id(), "conv-0042");
  EXPECT_EQ(parsed.turn(), 3u);
}

TEST(CommonProtoTest, ModelShapeRoundTrips) {
  // The 7B Llama shape with grouped-query attention.
  v1::ModelShape shape;
  shape.set_dim(4096);
  shape.set_hidden_dim(11008);
  shape.set_n_layers(32);
  shape.set_n_heads(32);
  shape.set_n_kv_heads(8);
  shape.set_vocab_size(32000);
  shape.set_seq_len(4096);
  shape.set_rope_theta(10000.0f);
  shape.set_norm_eps(1e-5f);

  std::string bytes;
  ASSERT_TRUE(shape.SerializeToString(&bytes));

  v1::ModelShape parsed;
  ASSERT_TRUE(parsed.ParseFromString(bytes));
  EXPECT_EQ(parsed.dim(), 4096u);
  EXPECT_EQ(parsed.hidden_dim(), 11008u);
  EXPECT_EQ(parsed.n_layers(), 32u);
  EXPECT_EQ(parsed.n_heads(), 32u);
  EXPECT_EQ(parsed.n_kv_heads(), 8u);
  EXPECT_EQ(parsed.vocab_size(), 32000u);
  EXPECT_EQ(parsed.seq_len(), 4096u);
  // Floats travel as their exact 32-bit patterns.
  EXPECT_EQ(parsed.rope_theta(), 10000.0f);
  EXPECT_EQ(parsed.norm_eps(), 1e-5f);
}

TEST(CommonProtoTest, EmptyMessageParsesToDefaults) {
  v1::ModelShape shape;
  ASSERT_TRUE(shape.ParseFromString(std::string()));
  EXPECT_EQ(shape.n_layers(), 0u);
  EXPECT_EQ(v1::DType_Name(v1::DTYPE_UNSPECIFIED), "DTYPE_UNSPECIFIED");
  EXPECT_EQ(static_cast<int>(v1::DTYPE_UNSPECIFIED), 0);
}

TEST(CommonProtoTest, GarbageBytesAreRejected) {
  // Each input breaks the wire format in a different way. Arbitrary random
  // bytes are not used because many of them happen to be valid unknown fields.
  const std::string garbage[] = {
      std::string("\x00", 1),  // Tag with field number 0.
      std::string("\x80", 1),  // Varint tag cut off mid-way.
      std::string("\x0a\x10"
                  "ab"),            // Field 1, length 16, only 2 bytes follow.
      std::string("\x18\xff\xff"),  // Field 3 varint value cut off.
      std::string("\x0f"),          // Wire type 7 does not exist.
      std::string("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"),  // Varint > 10 bytes.
  };
  for (const std::string& bytes : garbage) {
    v1::ConversationKey key;
    EXPECT_FALSE(key.ParseFromString(bytes)) << "parsed " << ::testing::PrintToString(bytes);
    v1::ModelShape shape;
    EXPECT_FALSE(shape.ParseFromString(bytes)) << "parsed " << ::testing::PrintToString(bytes);
  }
}

}  // namespace
}  // namespace krul
