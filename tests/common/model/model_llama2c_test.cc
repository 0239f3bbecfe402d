#include <cstring>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "krul/model/model.h"
#include "test_support/test_data.h"

namespace krul {
namespace {

using ::testing::HasSubstr;

ModelConfig SmallConfig(bool shared) {
  ModelConfig c;
  c.dim = 32;
  c.hidden_dim = 48;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 40;
  c.seq_len = 16;
  c.shared_classifier = shared;
  return c;
}

void ExpectSameWeights(const Model& a, const Model& b) {
  const ModelConfig& c = a.config();
  auto same = [](const float* x, const float* y, size_t n) {
    return std::memcmp(x, y, n * 4) == 0;
  };
  const size_t dim = c.dim, hidden = c.hidden_dim, kv = c.kv_dim();
  EXPECT_TRUE(same(a.token_embedding(), b.token_embedding(), c.vocab_size * dim));
  EXPECT_TRUE(same(a.classifier(), b.classifier(), c.vocab_size * dim));
  EXPECT_TRUE(same(a.rms_final(), b.rms_final(), dim));
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights &x = a.layer(l), &y = b.layer(l);
    EXPECT_TRUE(same(x.rms_att, y.rms_att, dim)) << l;
    EXPECT_TRUE(same(x.wq, y.wq, dim * dim)) << l;
    EXPECT_TRUE(same(x.wk, y.wk, kv * dim)) << l;
    EXPECT_TRUE(same(x.wv, y.wv, kv * dim)) << l;
    EXPECT_TRUE(same(x.wo, y.wo, dim * dim)) << l;
    EXPECT_TRUE(same(x.rms_ffn, y.rms_ffn, dim)) << l;
    EXPECT_TRUE(same(x.w1, y.w1, hidden * dim)) << l;
    EXPECT_TRUE(same(x.w2, y.w2, dim * hidden)) << l;
    EXPECT_TRUE(same(x.w3, y.w3, hidden * dim)) << l;
  }
}

TEST(Llama2cModelTest, LoadsStories260K) {
  KRUL_REQUIRE_DATA_FILE(path, "models/stories260K.bin");
  auto model = LoadLlama2cModel(path);
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelConfig& c = (*model)->config();
  // The header values listed in shared/data/MANIFEST.md.
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.hidden_dim, 172);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.seq_len, 512);
  EXPECT_TRUE(c.shared_classifier);
  EXPECT_EQ((*model)->classifier(), (*model)->token_embedding());
  // The first float after the header is token_embedding[0][0].
  std::string bytes = testing::ReadFileOrDie(path);
  float first;
  std::memcpy(&first, bytes.data() + 28, 4);
  EXPECT_EQ((*model)->token_embedding()[0], first);
}

TEST(Llama2cModelTest, WriteThenLoadRoundTripsSharedAndSeparateClassifiers) {
  for (bool shared : {true, false}) {
    auto model = MakeSyntheticModel(SmallConfig(shared), 3);
    ASSERT_TRUE(model.ok()) << model.status();
    const std::string path = testing::ScratchDir() + "/m.bin";
    ASSERT_TRUE(WriteLlama2cCheckpoint(**model, path).ok());
    // A negative vocab_size in the header signals a separate classifier.
    std::string bytes = testing::ReadFileOrDie(path);
    int32_t vocab;
    std::memcpy(&vocab, bytes.data() + 20, 4);
    EXPECT_EQ(vocab, shared ? 40 : -40);
    auto loaded = LoadModel(path);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ((*loaded)->config().shared_classifier, shared);
    ExpectSameWeights(**model, **loaded);
  }
}

TEST(Llama2cModelTest, SyntheticModelsAreSeeded) {
  auto a = MakeSyntheticModel(SmallConfig(true), 1);
  auto b = MakeSyntheticModel(SmallConfig(true), 1);
  auto c = MakeSyntheticModel(SmallConfig(true), 2);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  ExpectSameWeights(**a, **b);
  EXPECT_NE((*a)->layer(0).wq[5], (*c)->layer(0).wq[5]);
  EXPECT_EQ(MakeSyntheticModel(ModelConfig{}, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
}

class Llama2cBadInputTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::ScratchDir();
    auto model = MakeSyntheticModel(SmallConfig(true), 3);
    ASSERT_TRUE(model.ok());
    good_path_ = dir_ + "/good.bin";
    ASSERT_TRUE(WriteLlama2cCheckpoint(**model, good_path_).ok());
    good_ = testing::ReadFileOrDie(good_path_);
  }
  absl::Status Load(const std::string& bytes) {
    const std::string path = dir_ + "/bad.bin";
    testing::WriteFileOrDie(path, bytes);
    return LoadLlama2cModel(path).status();
  }
  std::string WithHeaderField(int index, int32_t value) {
    std::string bytes = good_;
    std::memcpy(bytes.data() + 4 * index, &value, 4);
    return bytes;
  }
  std::string dir_, good_path_, good_;
};

TEST_F(Llama2cBadInputTest, MissingFile) {
  absl::Status s = LoadLlama2cModel(dir_ + "/nope.bin").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()), HasSubstr("nope.bin"));
}

TEST_F(Llama2cBadInputTest, ZeroLengthFile) {
  absl::Status s = Load("");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("empty"));
}

TEST_F(Llama2cBadInputTest, TruncatedAnywhere) {
  for (size_t keep : {size_t{3}, size_t{27}, size_t{28}, good_.size() / 2, good_.size() - 1}) {
    absl::Status s = Load(good_.substr(0, keep));
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << keep << ": " << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("truncated"));
  }
}

TEST_F(Llama2cBadInputTest, TrailingBytes) {
  EXPECT_EQ(Load(good_ + "xx").code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(Llama2cBadInputTest, WrongMagic) {
  absl::Status gguf = Load("GGUF" + good_.substr(4));
  EXPECT_EQ(gguf.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(gguf.message()), HasSubstr("GGUF"));
  // A text file read as a header gives absurd dimensions.
  absl::Status text =
      Load(std::string("this is not a model, just some text\n") + std::string(200, 'x'));
  EXPECT_EQ(text.code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(Llama2cBadInputTest, AbsurdDimensionsAreRejectedBeforeAllocating) {
  // Each would ask for terabytes if believed; the loader must refuse quickly.
  const std::pair<int, int32_t> cases[] = {
      {0, 1 << 30},                  // dim
      {0, -64},                      // negative dim
      {1, 1 << 30},                  // hidden_dim
      {2, 100000},                   // n_layers
      {3, 5},                        // n_heads not dividing dim
      {4, 3},                        // n_kv_heads not dividing n_heads
      {5, 0},                        // vocab_size
      {5, INT32_MIN}, {6, 1 << 30},  // seq_len
  };
  // 256 MiB of headroom: far below what any of these headers asks for.
  testing::ScopedAddressSpaceCap cap(size_t{256} << 20);
  for (auto [field, value] : cases) {
    absl::Status s = Load(WithHeaderField(field, value));
    EXPECT_FALSE(s.ok()) << "field " << field << "=" << value;
    EXPECT_TRUE(s.code() == absl::StatusCode::kInvalidArgument ||
                s.code() == absl::StatusCode::kDataLoss)
        << s;
  }
  // Plausible each, but together far larger than the file: truncated.
  std::string big = WithHeaderField(0, 4096);
  int32_t heads = 32;
  std::memcpy(big.data() + 12, &heads, 4);
  std::memcpy(big.data() + 16, &heads, 4);
  EXPECT_EQ(Load(big).code(), absl::StatusCode::kDataLoss);
}

TEST(ModelConfigTest, ValidateNamesTheField) {
  ModelConfig c = SmallConfig(true);
  EXPECT_TRUE(c.Validate().ok());
  c.n_kv_heads = 3;
  EXPECT_THAT(std::string(c.Validate().message()), HasSubstr("n_kv_heads"));
  c = SmallConfig(true);
  c.rope_dim = 3;
  EXPECT_THAT(std::string(c.Validate().message()), HasSubstr("rope_dim"));
  c = SmallConfig(true);
  c.norm_eps = 0;
  EXPECT_THAT(std::string(c.Validate().message()), HasSubstr("norm_eps"));
}

}  // namespace
}  // namespace krul
