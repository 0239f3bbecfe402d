#include "trace/prompt_synth.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <string_view>

namespace krul::loadtest {
namespace {

// Frequent words that are one token each even in a 512-token vocabulary
// (checked on tok512 through the worker's prompt_tokens), so that on most
// tokenizers a word is a token and a message's length holds word by word,
// not only on average. Never reorder: the text of every block depends on it.
constexpr std::array<std::string_view, 32> kWords = {
    "the", "a",      "and",  "to",   "of",  "in",   "it",    "was",    "he",   "she", "they",
    "we",  "you",    "said", "big",  "day", "time", "happy", "little", "play", "saw", "had",
    "mom", "friend", "up",   "very", "on",  "with", "his",   "her",    "that", "for"};

// splitmix64: a small, well-mixed generator; the text must be the same on
// every machine and in every version.
uint64_t Next(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

int PromptSynth::ScaledTokens(int trace_tokens) const {
  if (trace_tokens <= 0) return 0;
  const double scaled = std::round(trace_tokens * options_.length_scale);
  return std::max(1, static_cast<int>(std::min(scaled, 1e9)));
}

int PromptSynth::WordsFor(int tokens) const {
  const double words = std::round(tokens / std::max(options_.tokens_per_word, 1e-3));
  return std::max(1, static_cast<int>(std::min(words, 1e9)));
}

std::string PromptSynth::BlockText(uint64_t id, int words) const {
  std::string text;
  uint64_t state = id ^ 0x6b72756c2d6c7421ull;  // "krul-lt!"
  uint64_t bits = 0;
  int left = 0;
  for (int w = 0; w < words; ++w) {
    if (left == 0) {
      bits = Next(state);
      left = 12;  // 12 words of 5 bits per draw
    }
    if (w > 0) text += ' ';
    text += kWords[bits & 31];
    bits >>= 5;
    --left;
  }
  return text;
}

std::string PromptSynth::MessageText(const Turn& turn, int max_tokens) const {
  int tokens = ScaledTokens(turn.message_tokens);
  if (max_tokens > 0) tokens = std::min(tokens, max_tokens);
  int words_left = WordsFor(std::max(tokens, 1));
  std::string text;
  for (const PromptBlock& block : turn.blocks) {
    if (words_left <= 0) break;
    const int words = std::min(words_left, WordsFor(ScaledTokens(block.tokens)));
    if (!text.empty()) text += ' ';
    text += BlockText(block.id, words);
    words_left -= words;
  }
  return text;
}

}  // namespace krul::loadtest
