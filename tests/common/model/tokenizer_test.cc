#include "krul/model/tokenizer.h"

#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_support/test_data.h"

namespace krul {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

struct Entry {
  std::string piece;
  float score;
};

// Serializes a llama2.c tokenizer file: int32 max_token_length, then per
// token float score, int32 length, bytes.
std::string Llama2cTokenizerBytes(const std::vector<Entry>& entries, int32_t max_len = 16) {
  std::string out(reinterpret_cast<const char*>(&max_len), 4);
  for (const Entry& e : entries) {
    int32_t len = static_cast<int32_t>(e.piece.size());
    out.append(reinterpret_cast<const char*>(&e.score), 4);
    out.append(reinterpret_cast<const char*>(&len), 4);
    out.append(e.piece);
  }
  return out;
}

// <unk>, BOS, EOS, 256 byte tokens (ids 3..258), then merges.
std::vector<Entry> ByteVocabulary(const std::vector<Entry>& merges) {
  std::vector<Entry> v = {{"<unk>", 0}, {"\n<s>\n", 0}, {"\n</s>\n", 0}};
  for (int b = 0; b < 256; ++b) v.push_back({absl::StrFormat("<0x%02X>", b), 0});
  v.insert(v.end(), merges.begin(), merges.end());
  return v;
}

Tokenizer WriteAndLoad(const std::vector<Entry>& entries) {
  std::string path = testing::ScratchDir() + "/tok.bin";
  testing::WriteFileOrDie(path, Llama2cTokenizerBytes(entries));
  auto tok = Tokenizer::FromLlama2cFile(path, static_cast<int>(entries.size()));
  EXPECT_TRUE(tok.ok()) << tok.status();
  return std::move(*tok);
}

TEST(TokenizerTest, MergesHighestScoreFirstAndLeftmostOnTies) {
  // ids: 259 " ", 260 "a", 261 "b", 262 "ab" (score 1), 263 "ba" (score 1),
  // 264 " a" (score 0.5), 265 "abab" (score 2)
  Tokenizer tok = WriteAndLoad(ByteVocabulary(
      {{" ", -10}, {"a", -10}, {"b", -10}, {"ab", 1}, {"ba", 1}, {" a", 0.5}, {"abab", 2}}));
  // " abab": pairs " a"(0.5) ab(1) ba(1) ab(1): leftmost "ab" first -> " " ab ab,
  // then "abab"(2) -> " " abab. " abab" is not a token, so it stops.
  EXPECT_THAT(tok.Encode("abab", false, false), ElementsAre(259, 265));
  // "ba": dummy space, "b","a" -> " " "ba" (1 beats nothing else).
  EXPECT_THAT(tok.Encode("ba", true, true), ElementsAre(1, 259, 263, 2));
  EXPECT_THAT(tok.Encode("", true, false), ElementsAre(1));  // no dummy prefix for empty text
}

TEST(TokenizerTest, WithoutDummyPrefixTheTextIsSplitAsItReads) {
  // ids: 259 " ", 260 "a", 261 "b", 262 "ab", 263 " a" (the highest score).
  Tokenizer tok =
      WriteAndLoad(ByteVocabulary({{" ", -10}, {"a", -10}, {"b", -10}, {"ab", 1}, {" a", 2}}));
  EXPECT_THAT(tok.Encode("ab", false, false), ElementsAre(263, 261));  // " a" "b"
  EXPECT_THAT(tok.Encode("ab", false, false, /*dummy_prefix=*/false), ElementsAre(262));
  // A text's own leading space is kept: " ab" without a dummy is "ab" with one.
  EXPECT_EQ(tok.Encode(" ab", false, false, false), tok.Encode("ab", false, false));
  EXPECT_THAT(tok.Encode("", true, true, false), ElementsAre(1, 2));
}

TEST(TokenizerTest, UnknownCodePointsFallBackToByteTokens) {
  Tokenizer tok = WriteAndLoad(ByteVocabulary({{" ", -1}}));
  // U+00E9 is 0xC3 0xA9 in UTF-8; byte token of b is 3 + b.
  EXPECT_THAT(tok.Encode("\xC3\xA9", false, false), ElementsAre(259, 3 + 0xC3, 3 + 0xA9));
  EXPECT_EQ(tok.Decode(259, 3 + 0xC3), "\xC3");
  EXPECT_EQ(tok.Decode(1, 3 + 'A'), "A");
}

TEST(TokenizerTest, DecodeDropsTheSpaceAfterBosAndHidesControlBytes) {
  Tokenizer tok = WriteAndLoad(ByteVocabulary({{" hi", -1}}));
  EXPECT_EQ(tok.Decode(tok.bos_id(), 259), "hi");
  EXPECT_EQ(tok.Decode(42, 259), " hi");
  EXPECT_EQ(tok.DecodeForDisplay(5, 3 + 0x07), "");  // BEL is not printable
  EXPECT_EQ(tok.DecodeForDisplay(5, 3 + '\n'), "\n");
  EXPECT_EQ(tok.DecodeSequence({1, 259, 259}), "hi hi");
}

TEST(TokenizerTest, Tok512EncodesTheReferencePromptIds) {
  KRUL_REQUIRE_DATA_FILE(path, "models/tok512.bin");
  auto tok = Tokenizer::FromLlama2cFile(path, 512);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(tok->vocab_size(), 512);
  // prompt_ids from models/stories260K.greedy64.ref.txt (llama2.c's encode()).
  EXPECT_THAT(tok->Encode("Once upon a time", true, false), ElementsAre(1, 403, 407, 261, 378));
  EXPECT_THAT(tok->Encode("Lily and Tom went to the park", true, false),
              ElementsAre(1, 317, 269, 274, 287, 263, 377, 267, 265, 282, 295, 433));
  // Reading to the end of the file finds the same 512 tokens.
  auto whole = Tokenizer::FromLlama2cFile(path);
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(whole->vocab_size(), 512);
}

TEST(TokenizerTest, VocabularyFromAModelFile) {
  Vocabulary v;
  v.pieces = {"<unk>", "<s>", "</s>", " ", "x", " x"};
  v.scores = {0, 0, 0, -1, -1, 3};
  auto tok = Tokenizer::FromVocabulary(v);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_THAT(tok->Encode("x", true, false), ElementsAre(1, 5));
  // "y" has neither a token nor byte tokens: <unk>.
  EXPECT_THAT(tok->Encode("y", false, false), ElementsAre(3, 0));
  v.scores.pop_back();
  EXPECT_EQ(Tokenizer::FromVocabulary(v).status().code(), absl::StatusCode::kInvalidArgument);
  v.scores.push_back(0);
  v.bos_id = 99;
  EXPECT_EQ(Tokenizer::FromVocabulary(v).status().code(), absl::StatusCode::kInvalidArgument);
}

ModelConfig TinyConfig(int vocab_size) {
  ModelConfig c;
  c.dim = 16;
  c.hidden_dim = 32;
  c.n_layers = 1;
  c.n_heads = 2;
  c.n_kv_heads = 2;
  c.vocab_size = vocab_size;
  c.seq_len = 8;
  return c;
}

TEST(TokenizerTest, ForModelTakesTheFileElseTheEmbeddedVocabulary) {
  // Synthetic models below 259 tokens carry no vocabulary: without a file
  // there is no tokenizer.
  auto bare = MakeSyntheticModel(TinyConfig(200), 1);
  ASSERT_TRUE(bare.ok()) << bare.status();
  auto none = Tokenizer::ForModel(**bare, "");
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(none.status().message()), HasSubstr("no embedded vocabulary"));
  // A file: the model's vocab_size tokens are read from it (200 of 259).
  const std::string path = testing::ScratchDir() + "/for_model.bin";
  testing::WriteFileOrDie(path, Llama2cTokenizerBytes(ByteVocabulary({})));
  auto from_file = Tokenizer::ForModel(**bare, path);
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  EXPECT_EQ(from_file->vocab_size(), 200);
  EXPECT_EQ(Tokenizer::ForModel(**bare, path + ".missing").status().code(),
            absl::StatusCode::kNotFound);
  // Embedded: used when no file is given.
  auto with_vocab = MakeSyntheticModel(TinyConfig(262), 1);
  ASSERT_TRUE(with_vocab.ok()) << with_vocab.status();
  auto embedded = Tokenizer::ForModel(**with_vocab, "");
  ASSERT_TRUE(embedded.ok()) << embedded.status();
  EXPECT_EQ(embedded->vocab_size(), 262);
  // An embedded vocabulary larger than the model's classifier is refused.
  Vocabulary big;
  big.pieces = {"<unk>", "<s>", "</s>", "a", "b", "c", "d"};
  big.scores.assign(big.pieces.size(), 0.0f);
  const ModelConfig six = TinyConfig(6);
  AlignedBuffer<float> weights(Llama2cWeightCount(six));
  auto oversized = Model::FromLlama2cLayout(six, std::move(weights), "test", big);
  ASSERT_TRUE(oversized.ok()) << oversized.status();
  auto refused = Tokenizer::ForModel(**oversized, "");
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("7 tokens but the model only 6"));
}

TEST(TokenizerTest, BadFilesGiveClearErrors) {
  const std::string dir = testing::ScratchDir();
  auto load = [&](const std::string& bytes, int vocab) {
    const std::string path = dir + "/bad.bin";
    testing::WriteFileOrDie(path, bytes);
    return Tokenizer::FromLlama2cFile(path, vocab).status();
  };
  const std::string good = Llama2cTokenizerBytes(ByteVocabulary({}));

  EXPECT_EQ(Tokenizer::FromLlama2cFile(dir + "/missing.bin").status().code(),
            absl::StatusCode::kNotFound);
  absl::Status empty = load("", 0);
  EXPECT_EQ(empty.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(empty.message()), HasSubstr("empty"));
  // Truncated in the middle of a token: DATA_LOSS naming the token.
  absl::Status truncated = load(good.substr(0, good.size() - 3), 259);
  EXPECT_EQ(truncated.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(truncated.message()), HasSubstr("token 258"));
  // Asking for more tokens than the file has.
  EXPECT_EQ(load(good, 300).code(), absl::StatusCode::kDataLoss);
  // A model file is not a tokenizer ("wrong magic"): absurd max_token_length.
  std::string model_like(64, '\0');
  int32_t dim = 288 * 1000 * 1000;
  std::memcpy(model_like.data(), &dim, 4);
  EXPECT_EQ(load(model_like, 0).code(), absl::StatusCode::kInvalidArgument);
  // A token length beyond max_token_length, and an absurd one (no 2 GiB allocation).
  testing::ScopedAddressSpaceCap cap(size_t{256} << 20);
  for (int32_t len : {17, -1, 0x7fffffff}) {
    std::string bad = Llama2cTokenizerBytes({{"<unk>", 0}});
    std::memcpy(bad.data() + 8, &len, 4);
    EXPECT_EQ(load(bad, 1).code(), absl::StatusCode::kInvalidArgument) << len;
  }
  EXPECT_EQ(load(good, -5).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(load(Llama2cTokenizerBytes({{"<unk>", 0}}), 0).code(),
            absl::StatusCode::kInvalidArgument);  // fewer than 3 tokens
}

}  // namespace
}  // namespace krul
