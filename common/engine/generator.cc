#include "krul/engine/generator.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"

namespace krul {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

absl::StatusOr<GenerationResult> Generate(Engine& engine, const Tokenizer& tokenizer,
                                          std::string_view prompt, const GenerationOptions& options,
                                          const std::function<void(std::string_view)>& on_text) {
  const ModelConfig& config = engine.config();
  if (options.steps < 1) {
    return absl::InvalidArgumentError(absl::StrCat("steps=", options.steps, " must be >= 1"));
  }
  if (tokenizer.vocab_size() > config.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer has ", tokenizer.vocab_size(),
                                                   " tokens, the model only ", config.vocab_size));
  }
  auto sampler = Sampler::Create(options.sampler);
  if (!sampler.ok()) return sampler.status();
  const int steps = std::min(options.steps, config.seq_len);

  GenerationResult result;
  const std::vector<int> prompt_ids = tokenizer.Encode(prompt, /*bos=*/true, /*eos=*/false);
  result.prompt_tokens = static_cast<int>(prompt_ids.size());
  auto cache = KvCache::Create(config, steps);
  if (!cache.ok()) return cache.status();

  auto emit = [&](int prev, int next) {
    std::string piece = tokenizer.DecodeForDisplay(prev, next);
    result.text += piece;
    if (on_text && !piece.empty()) on_text(piece);
  };
  result.tokens.push_back(prompt_ids[0]);

  // Positions [0, forced) have their next token given by the prompt: run them
  // as one prefill block; their logits are never needed.
  const int forced = std::min(static_cast<int>(prompt_ids.size()) - 1, steps);
  if (forced > 0) {
    auto start = std::chrono::steady_clock::now();
    if (auto s = engine.Forward(*cache, std::span<const int>(prompt_ids.data(), forced), 0, {});
        !s.ok()) {
      return s;
    }
    result.prefill_seconds = SecondsSince(start);
    result.prefill_tokens = forced;
    for (int pos = 0; pos < forced; ++pos) {
      const int next = prompt_ids[pos + 1];
      if (next == tokenizer.bos_id()) return result;
      emit(prompt_ids[pos], next);
      result.tokens.push_back(next);
    }
  }

  std::vector<float> logits(config.vocab_size);
  int token = prompt_ids[forced];
  auto start = std::chrono::steady_clock::now();
  for (int pos = forced; pos < steps; ++pos) {
    const int input = token;
    if (auto s = engine.Forward(*cache, std::span<const int>(&input, 1), pos, logits); !s.ok()) {
      return s;
    }
    ++result.decode_tokens;
    const int next = sampler->Sample(logits);
    if (next == tokenizer.bos_id()) break;
    emit(token, next);
    result.tokens.push_back(next);
    token = next;
  }
  result.decode_seconds = SecondsSince(start);
  return result;
}

}  // namespace krul
