// Text generation with llama2.c's semantics (run.c generate()): the prompt is
// encoded with BOS and no EOS; positions [0, steps) are forwarded, where
// steps counts prompt positions too; prompt tokens are forced until the
// prompt is used up, then the sampler picks; generation stops early when BOS
// is picked. The prompt (all but its last token) is prefilled in one block.
#ifndef KRUL_ENGINE_GENERATOR_H_
#define KRUL_ENGINE_GENERATOR_H_

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "krul/engine/engine_cpu.h"
#include "krul/engine/sampler.h"
#include "krul/model/tokenizer.h"

namespace krul {

struct GenerationOptions {
  int steps = 256;  // positions forwarded, prompt included; capped at seq_len
  SamplerOptions sampler;
};

struct GenerationResult {
  // BOS followed by every "next" token (the layout of the reference files'
  // `ids:` lines): tokens[k] is the input at position k.
  std::vector<int> tokens;
  int prompt_tokens = 0;  // length of the encoded prompt, BOS included
  std::string text;       // what llama2.c prints, without its final newline
  int prefill_tokens = 0;
  double prefill_seconds = 0;
  int decode_tokens = 0;
  double decode_seconds = 0;
};

// Generates from `prompt`. `on_text`, when set, receives each printed piece
// as soon as it is known. INVALID_ARGUMENT for steps < 1 or an empty
// encoding; errors from the engine are passed through.
absl::StatusOr<GenerationResult> Generate(
    Engine& engine, const Tokenizer& tokenizer, std::string_view prompt,
    const GenerationOptions& options,
    const std::function<void(std::string_view)>& on_text = nullptr);

}  // namespace krul

#endif  // KRUL_ENGINE_GENERATOR_H_
