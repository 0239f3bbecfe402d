// The template that turns chat messages (worker/api/chat_message.h) into
// prompt tokens.
//
// Every message is tokenized on its own and the pieces are concatenated after
// one BOS, so the tokens of a conversation's first k messages never change
// when more messages follow: a stored KV prefix stays valid for the next
// turn. (Tokenizing the joined text instead would let BPE merge across a
// message boundary.) Templates (docs/worker.md):
//
//   plain (default; for TinyStories-style story models that know no roles):
//     system, user : Encode(content + "\n")
//     assistant    : EncodeAsIs(content)       generation prompt: nothing
//   roles:
//     system       : Encode("System: " + content + "\n")
//     user         : Encode("User: " + content + "\n")
//     assistant    : Encode("Assistant:") + Encode(content), where content's
//                    own leading space, if any, is the dummy one
//                                               generation prompt: Encode("Assistant:")
//
// Encode adds SentencePiece's dummy leading space to each piece, which is
// what separates consecutive messages; EncodeAsIs does not (Tokenizer's
// dummy_prefix = false). Answers are encoded the way the model writes
// them: after the plain template's newline it starts a word with no space
// ("T" "he", not "▁The"), after "Assistant:" with one ("▁Once", which a
// second dummy space would turn into "▁" "▁Once").
//
// These tokens are the canonical form of a history: a turn whose history is
// restored from the store and the same turn recomputed from the messages'
// text prefill the same ids (HistoryTokens / PromptTokens, used by both
// paths), so greedy answers do not depend on the cache. The ids the model
// sampled for an answer may still split the same text otherwise (rarely;
// docs/worker.md); the stored version holds the canonical ones and the KV
// of what both share (session.cc).
//
// Thread-safe (immutable after construction).
#ifndef KRUL_SERVICES_WORKER_CORE_CHAT_TEMPLATE_H_
#define KRUL_SERVICES_WORKER_CORE_CHAT_TEMPLATE_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "krul/model/tokenizer.h"
#include "worker/api/chat_message.h"
#include "worker/core/options.h"

namespace krul::worker {

// Digest of the conversation up to and including `message`, chained from
// the digest of everything before it (kEmptyDigest for the first message).
// Stable across processes and machines (XXH3-64), so any worker recognizes
// a history another worker stored.
inline constexpr uint64_t kEmptyDigest = 0x6b72756c2d636874ull;  // "krul-cht"
uint64_t ChainDigest(uint64_t previous, const ChatMessage& message);
// Digest of messages[0, count).
uint64_t PrefixDigest(const std::vector<ChatMessage>& messages, size_t count);

class ChatTemplate {
 public:
  // `tokenizer` is borrowed and must outlive the template.
  ChatTemplate(ChatTemplateKind kind, const Tokenizer& tokenizer)
      : kind_(kind), tokenizer_(tokenizer) {}

  ChatTemplateKind kind() const { return kind_; }
  int bos_id() const { return tokenizer_.bos_id(); }

  // Tokens of one complete message (no BOS).
  std::vector<int> MessageTokens(const ChatMessage& message) const;
  // Tokens that precede the assistant's answer (appended after the last
  // message before generation starts).
  std::vector<int> GenerationPrompt() const;
  // BOS + messages[0, count): the canonical tokens of a history (what a
  // stored version holds and a recompute prefills).
  std::vector<int> HistoryTokens(const std::vector<ChatMessage>& messages, size_t count) const;
  // HistoryTokens of every message + the generation prompt.
  std::vector<int> PromptTokens(const std::vector<ChatMessage>& messages) const;

 private:
  ChatTemplateKind kind_;
  const Tokenizer& tokenizer_;
};

}  // namespace krul::worker

#endif  // KRUL_SERVICES_WORKER_CORE_CHAT_TEMPLATE_H_
