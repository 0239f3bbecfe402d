// The chat template's token layout and the conversation digests.
#include "worker/core/chat_template.h"

#include "gtest/gtest.h"
#include "krul/model/model.h"
#include "test_support/test_data.h"

namespace krul::worker {
namespace {

// The byte-level vocabulary of a synthetic model: every character is its
// own byte token, so expected ids are computable by hand.
Tokenizer ByteTokenizer() {
  ModelConfig c;
  c.dim = 16;
  c.hidden_dim = 32;
  c.n_layers = 1;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.vocab_size = 259;  // only <unk>, BOS, EOS and the 256 byte tokens: no merges
  c.seq_len = 64;
  auto model = MakeSyntheticModel(c, 1);
  return *Tokenizer::FromVocabulary(*(*model)->vocabulary());
}

// Byte tokens as the synthetic vocabulary numbers them (<unk>, BOS, EOS,
// then byte b at 3 + b), with the encoder's dummy leading space.
std::vector<int> Bytes(const std::string& text) {
  std::vector<int> ids = {3 + ' '};
  for (unsigned char ch : text) ids.push_back(3 + ch);
  return ids;
}

// The same without the dummy space.
std::vector<int> AsIs(const std::string& text) {
  std::vector<int> ids;
  for (unsigned char ch : text) ids.push_back(3 + ch);
  return ids;
}

std::vector<int> Concat(std::initializer_list<std::vector<int>> parts) {
  std::vector<int> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

TEST(ChatTemplateTest, SyntheticVocabularyIsByteLevel) {
  // Guards the assumption the other expectations are built on.
  Tokenizer tok = ByteTokenizer();
  ASSERT_EQ(tok.Encode("ab", false, false), (std::vector<int>{3 + ' ', 3 + 'a', 3 + 'b'}));
}

TEST(ChatTemplateTest, PlainTemplateConcatenatesMessageTexts) {
  Tokenizer tok = ByteTokenizer();
  ChatTemplate t(ChatTemplateKind::kPlain, tok);
  std::vector<ChatMessage> messages = {
      {Role::kSystem, "S"}, {Role::kUser, "hi"}, {Role::kAssistant, "yo"}, {Role::kUser, "ok"}};
  EXPECT_TRUE(t.GenerationPrompt().empty());
  // The answer as the model writes it after the newline: no dummy space.
  EXPECT_EQ(t.PromptTokens(messages),
            Concat({{tok.bos_id()}, Bytes("S\n"), Bytes("hi\n"), AsIs("yo"), Bytes("ok\n")}));
  EXPECT_EQ(t.MessageTokens({Role::kAssistant, " yo"}), AsIs(" yo"));
}

// What the worker stores and what a recompute prefills: BOS and the first
// `count` messages, the prompt's prefix.
TEST(ChatTemplateTest, HistoryTokensArePromptTokensWithoutTheGenerationPrompt) {
  Tokenizer tok = ByteTokenizer();
  for (ChatTemplateKind kind : {ChatTemplateKind::kPlain, ChatTemplateKind::kRoles}) {
    ChatTemplate t(kind, tok);
    std::vector<ChatMessage> messages = {
        {Role::kUser, "hi"}, {Role::kAssistant, " yo"}, {Role::kUser, "ok"}};
    EXPECT_EQ(t.HistoryTokens(messages, 0), std::vector<int>{tok.bos_id()});
    std::vector<int> prompt = t.PromptTokens(messages);
    std::vector<int> all = t.HistoryTokens(messages, messages.size());
    const std::vector<int> generation = t.GenerationPrompt();
    all.insert(all.end(), generation.begin(), generation.end());
    EXPECT_EQ(all, prompt);
    std::vector<ChatMessage> two(messages.begin(), messages.begin() + 2);
    EXPECT_EQ(t.HistoryTokens(messages, 2), t.HistoryTokens(two, 2));
  }
}

TEST(ChatTemplateTest, RolesTemplateTagsEachMessage) {
  Tokenizer tok = ByteTokenizer();
  ChatTemplate t(ChatTemplateKind::kRoles, tok);
  std::vector<ChatMessage> messages = {
      {Role::kSystem, "S"}, {Role::kUser, "hi"}, {Role::kAssistant, "yo"}, {Role::kUser, "ok"}};
  EXPECT_EQ(t.GenerationPrompt(), Bytes("Assistant:"));
  EXPECT_EQ(t.PromptTokens(messages), Concat({{tok.bos_id()},
                                              Bytes("System: S\n"),
                                              Bytes("User: hi\n"),
                                              Bytes("Assistant:"),
                                              Bytes("yo"),  // a dummy space: it has none
                                              Bytes("User: ok\n"),
                                              Bytes("Assistant:")}));
  // An answer's own leading space stands for the dummy one (not "  yo").
  EXPECT_EQ(t.MessageTokens({Role::kAssistant, " yo"}), Concat({Bytes("Assistant:"), Bytes("yo")}));
}

TEST(ChatTemplateTest, APrefixOfMessagesIsAPrefixOfTokens) {
  KRUL_REQUIRE_DATA_FILE(path, "models/tok512.bin");
  auto tok = Tokenizer::FromLlama2cFile(path);
  ASSERT_TRUE(tok.ok());
  ChatTemplate t(ChatTemplateKind::kPlain, *tok);
  std::vector<ChatMessage> messages = {{Role::kUser, "Tell me a story."},
                                       {Role::kAssistant, "Once there was a cat"},
                                       {Role::kUser, "and then?"}};
  const std::vector<int> all = t.PromptTokens(messages);
  for (size_t k = 1; k < messages.size(); ++k) {
    std::vector<ChatMessage> prefix(messages.begin(), messages.begin() + k);
    const std::vector<int> part = t.PromptTokens(prefix);
    ASSERT_LE(part.size(), all.size());
    EXPECT_TRUE(std::equal(part.begin(), part.end(), all.begin())) << k;
  }
}

TEST(DigestTest, DependsOnRoleContentAndOrder) {
  const ChatMessage u{Role::kUser, "ab"};
  const ChatMessage a{Role::kAssistant, "ab"};
  EXPECT_NE(ChainDigest(kEmptyDigest, u), ChainDigest(kEmptyDigest, a));
  // ("ab","c") and ("a","bc") must differ although the bytes concatenate equally.
  const uint64_t x =
      ChainDigest(ChainDigest(kEmptyDigest, {Role::kUser, "ab"}), {Role::kUser, "c"});
  const uint64_t y =
      ChainDigest(ChainDigest(kEmptyDigest, {Role::kUser, "a"}), {Role::kUser, "bc"});
  EXPECT_NE(x, y);
  std::vector<ChatMessage> m = {u, a};
  EXPECT_EQ(PrefixDigest(m, 0), kEmptyDigest);
  EXPECT_EQ(PrefixDigest(m, 2), ChainDigest(ChainDigest(kEmptyDigest, u), a));
  // Stable across processes and builds: a fixed value.
  EXPECT_EQ(PrefixDigest(m, 2), PrefixDigest(std::vector<ChatMessage>{u, a}, 2));
}

}  // namespace
}  // namespace krul::worker
