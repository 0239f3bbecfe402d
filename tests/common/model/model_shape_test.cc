#include "krul/model/model_shape.h"

#include <string>

#include "gtest/gtest.h"

namespace krul {
namespace {

ModelConfig Shape(int dim, int hidden, int layers, int heads, int kv_heads, int vocab,
                  int seq_len) {
  ModelConfig c;
  c.dim = dim;
  c.hidden_dim = hidden;
  c.n_layers = layers;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.vocab_size = vocab;
  c.seq_len = seq_len;
  return c;
}

void ExpectShape(const ModelConfig& c, int dim, int hidden, int layers, int heads, int kv_heads,
                 int vocab, int seq_len) {
  EXPECT_EQ(c.dim, dim);
  EXPECT_EQ(c.hidden_dim, hidden);
  EXPECT_EQ(c.n_layers, layers);
  EXPECT_EQ(c.n_heads, heads);
  EXPECT_EQ(c.n_kv_heads, kv_heads);
  EXPECT_EQ(c.vocab_size, vocab);
  EXPECT_EQ(c.seq_len, seq_len);
}

TEST(ModelShapeTest, Positional) {
  absl::StatusOr<ModelConfig> c = ParseModelShape("128,352,12,8,2,512,256");
  ASSERT_TRUE(c.ok()) << c.status();
  ExpectShape(*c, 128, 352, 12, 8, 2, 512, 256);
  ASSERT_TRUE(ParseModelShape(" 64, 172,5,8,4,512,512 ").ok());
}

TEST(ModelShapeTest, KeyedOverridesTheBase) {
  ModelConfig base = Shape(128, 344, 12, 2, 2, 512, 4096);
  base.rope_theta = 500000.0f;
  absl::StatusOr<ModelConfig> c = ParseModelShape("dim=256,hidden=688,heads=8", base);
  ASSERT_TRUE(c.ok()) << c.status();
  ExpectShape(*c, 256, 688, 12, 8, 2, 512, 4096);
  EXPECT_EQ(c->rope_theta, 500000.0f);  // fields the text does not name stay

  // The benches' full form, and ModelConfig::ToString's spaces.
  c = ParseModelShape("dim=4096,hidden=11008,layers=32,heads=32,kv_heads=32,vocab=32000", base);
  ASSERT_TRUE(c.ok()) << c.status();
  ExpectShape(*c, 4096, 11008, 32, 32, 32, 32000, 4096);
  c = ParseModelShape("dim=64 hidden=172 layers=5 heads=8 kv_heads=4 vocab=512 seq_len=512");
  ASSERT_TRUE(c.ok()) << c.status();
  ExpectShape(*c, 64, 172, 5, 8, 4, 512, 512);
}

TEST(ModelShapeTest, EmptyTextIsTheBase) {
  absl::StatusOr<ModelConfig> c = ParseModelShape("  ", Shape(64, 172, 5, 8, 4, 512, 512));
  ASSERT_TRUE(c.ok()) << c.status();
  ExpectShape(*c, 64, 172, 5, 8, 4, 512, 512);
  EXPECT_FALSE(ParseModelShape("").ok());  // the default base is not a model
}

TEST(ModelShapeTest, RejectsMalformedText) {
  auto expect_invalid = [](const std::string& text, const std::string& mentions) {
    absl::StatusOr<ModelConfig> c = ParseModelShape(text);
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_NE(c.status().message().find(mentions), std::string::npos)
        << text << ": " << c.status().message();
  };
  expect_invalid("1,2,3", "7 comma-separated");
  expect_invalid("64,172,5,8,4,512,512,9", "7 comma-separated");
  expect_invalid("64,172,5,8,x,512,512", "'x' is not a number");
  expect_invalid("64,172,5,8,3,512,512", "n_kv_heads");  // 8 heads over 3 KV heads
  expect_invalid("dim=64,hidden", "not key=value");
  expect_invalid("dim=64,depth=3", "unknown key 'depth'");
  expect_invalid("dim=64,dim=128", "given twice");
  expect_invalid("dim=6.5", "not a number");
  expect_invalid("dim=64,hidden=172,layers=5,heads=8,kv_heads=4,vocab=512", "seq_len");
}

}  // namespace
}  // namespace krul
