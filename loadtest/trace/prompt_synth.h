// Text for prompts that a trace gives only as lengths and block ids
// (Mooncake, Azure). Every block is a deterministic run of common English
// words (each one token even in a 512-token vocabulary) drawn from its id, so equal ids give equal
// text, and fewer words of a block are a prefix of more: requests sharing a hash_ids prefix send
// identical text for it, which the worker tokenizes to identical tokens
// (each message is tokenized on its own and the words are whole).
//
// Lengths: a trace's token counts are first multiplied by `length_scale`
// (so a 512-token block becomes 512 * length_scale tokens: how a trace made
// for 32k-context models is mapped onto a small one), then turned into words
// with `tokens_per_word`, which krul-loadtest measures on the target's own
// tokenizer (the worker reports prompt_tokens) unless it is given.
//
// Thread-safe (immutable).
#ifndef KRUL_LOADTEST_TRACE_PROMPT_SYNTH_H_
#define KRUL_LOADTEST_TRACE_PROMPT_SYNTH_H_

#include <cstdint>
#include <string>

#include "trace/trace.h"

namespace krul::loadtest {

struct SynthOptions {
  double length_scale = 1.0;     // trace tokens -> sent tokens
  double tokens_per_word = 1.0;  // the target tokenizer's, for our words
};

class PromptSynth {
 public:
  explicit PromptSynth(const SynthOptions& options) : options_(options) {}

  const SynthOptions& options() const { return options_; }

  // round(trace_tokens * length_scale), at least 1 (0 stays 0).
  int ScaledTokens(int trace_tokens) const;
  // Words for `tokens` target tokens: round(tokens / tokens_per_word), at
  // least 1.
  int WordsFor(int tokens) const;

  // The first `words` words of block `id`, separated by single spaces.
  std::string BlockText(uint64_t id, int words) const;

  // The message of a synthesized `turn`: its blocks in order, each scaled
  // on its own, until ScaledTokens(turn.message_tokens) tokens (and at most
  // `max_tokens` when > 0) are filled; at least one word.
  std::string MessageText(const Turn& turn, int max_tokens = 0) const;

 private:
  SynthOptions options_;
};

}  // namespace krul::loadtest

#endif  // KRUL_LOADTEST_TRACE_PROMPT_SYNTH_H_
