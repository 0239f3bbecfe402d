#include "worker/core/chat_template.h"

#include <xxhash.h>

namespace krul::worker {

uint64_t ChainDigest(uint64_t previous, const ChatMessage& message) {
  // The role and the content length go in front so that ("ab", "c") and
  // ("a", "bc") chain to different digests.
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset_withSeed(state, previous);
  const uint8_t role = static_cast<uint8_t>(message.role);
  const uint64_t length = message.content.size();
  XXH3_64bits_update(state, &role, sizeof(role));
  XXH3_64bits_update(state, &length, sizeof(length));
  XXH3_64bits_update(state, message.content.data(), message.content.size());
  const uint64_t digest = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  return digest;
}

uint64_t PrefixDigest(const std::vector<ChatMessage>& messages, size_t count) {
  uint64_t digest = kEmptyDigest;
  for (size_t i = 0; i < count && i < messages.size(); ++i)
    digest = ChainDigest(digest, messages[i]);
  return digest;
}

std::vector<int> ChatTemplate::MessageTokens(const ChatMessage& message) const {
  if (kind_ == ChatTemplateKind::kPlain) {
    // An answer continues the line after the newline as the model wrote
    // it: no dummy space in front.
    if (message.role == Role::kAssistant)
      return tokenizer_.Encode(message.content, false, false, false);
    return tokenizer_.Encode(message.content + "\n", false, false);
  }
  switch (message.role) {
    case Role::kSystem:
      return tokenizer_.Encode("System: " + message.content + "\n", false, false);
    case Role::kUser:
      return tokenizer_.Encode("User: " + message.content + "\n", false, false);
    case Role::kAssistant: {
      std::vector<int> tokens = GenerationPrompt();
      // "Assistant:" then the answer; its own leading space, when it has
      // one (the worker's answers do), stands for the dummy one.
      const bool spaced = !message.content.empty() && message.content.front() == ' ';
      std::vector<int> content = tokenizer_.Encode(message.content, false, false, !spaced);
      tokens.insert(tokens.end(), content.begin(), content.end());
      return tokens;
    }
  }
  return {};
}

std::vector<int> ChatTemplate::GenerationPrompt() const {
  if (kind_ == ChatTemplateKind::kPlain) return {};
  return tokenizer_.Encode("Assistant:", false, false);
}

std::vector<int> ChatTemplate::HistoryTokens(const std::vector<ChatMessage>& messages,
                                             size_t count) const {
  std::vector<int> tokens = {tokenizer_.bos_id()};
  for (size_t i = 0; i < count && i < messages.size(); ++i) {
    std::vector<int> piece = MessageTokens(messages[i]);
    tokens.insert(tokens.end(), piece.begin(), piece.end());
  }
  return tokens;
}

std::vector<int> ChatTemplate::PromptTokens(const std::vector<ChatMessage>& messages) const {
  std::vector<int> tokens = HistoryTokens(messages, messages.size());
  std::vector<int> prompt = GenerationPrompt();
  tokens.insert(tokens.end(), prompt.begin(), prompt.end());
  return tokens;
}

}  // namespace krul::worker
