// krul-generate: prints a prompt followed by generated text, like llama2.c's
// `run` (tokens/s go to stderr).
//
//   krul-generate --model stories260K.bin --tokenizer tok512.bin
//                 --prompt "Once upon a time" --steps 64  (one line)
//   krul-generate --synthetic --prompt "hello" --steps 32
#include <cstdio>
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "krul/engine/engine_cpu.h"
#include "krul/engine/generator.h"
#include "krul/model/model.h"
#include "krul/model/model_shape.h"
#include "krul/model/tokenizer.h"

ABSL_FLAG(std::string, model, "", "Model file: llama2.c checkpoint (.bin) or GGUF (.gguf)");
ABSL_FLAG(std::string, tokenizer, "",
          "llama2.c tokenizer file; defaults to the vocabulary embedded in the model (GGUF)");
ABSL_FLAG(bool, synthetic, false,
          "Use a seeded random model (--synthetic_shape) instead of --model");
ABSL_FLAG(std::string, synthetic_shape, "64,172,5,8,4,512,512",
          "Synthetic model shape: dim,hidden_dim,layers,heads,kv_heads,vocab,seq_len, or "
          "key=value items (dim=64,hidden=172,layers=5,heads=8,kv_heads=4,vocab=512,seq_len=512)");
ABSL_FLAG(std::string, prompt, "", "Prompt text");
ABSL_FLAG(int, steps, 256, "Positions to run, prompt included (llama2.c -n); capped at seq_len");
ABSL_FLAG(float, temperature, 0.0f, "Sampling temperature; 0 = greedy");
ABSL_FLAG(float, top_p, 0.9f, "Nucleus sampling threshold in (0, 1]");
ABSL_FLAG(uint64_t, seed, 42, "Random seed for sampling and for the synthetic model");
ABSL_FLAG(int, threads, 0, "Worker threads (0 = all cores)");

namespace {

int Fail(const absl::Status& status) {
  std::cerr << "krul-generate: " << status << "\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Generates text with the Krul CPU engine.\n"
      "  krul-generate --model FILE [--tokenizer FILE] --prompt TEXT --steps N\n"
      "                [--temperature T] [--top_p P] [--seed S] [--threads N]\n"
      "  krul-generate --synthetic --prompt TEXT --steps N");
  absl::ParseCommandLine(argc, argv);

  absl::StatusOr<std::unique_ptr<krul::Model>> model;
  if (absl::GetFlag(FLAGS_synthetic)) {
    auto shape = krul::ParseModelShape(absl::GetFlag(FLAGS_synthetic_shape));
    if (!shape.ok()) return Fail(shape.status());
    model = krul::MakeSyntheticModel(*shape, absl::GetFlag(FLAGS_seed));
  } else if (absl::GetFlag(FLAGS_model).empty()) {
    return Fail(absl::InvalidArgumentError("--model FILE (or --synthetic) is required"));
  } else {
    model = krul::LoadModel(absl::GetFlag(FLAGS_model));
  }
  if (!model.ok()) return Fail(model.status());
  const krul::ModelConfig& config = (*model)->config();

  absl::StatusOr<krul::Tokenizer> tokenizer =
      krul::Tokenizer::ForModel(**model, absl::GetFlag(FLAGS_tokenizer));
  if (!tokenizer.ok()) return Fail(tokenizer.status());

  krul::EngineOptions engine_options;
  engine_options.num_threads = absl::GetFlag(FLAGS_threads);
  auto engine = krul::Engine::Create(**model, engine_options);
  if (!engine.ok()) return Fail(engine.status());

  std::cerr << "model: " << (*model)->source() << " (" << config.ToString() << ")\n";
  krul::GenerationOptions options;
  options.steps = absl::GetFlag(FLAGS_steps);
  options.sampler.temperature = absl::GetFlag(FLAGS_temperature);
  options.sampler.top_p = absl::GetFlag(FLAGS_top_p);
  options.sampler.seed = absl::GetFlag(FLAGS_seed);
  auto result = krul::Generate(**engine, *tokenizer, absl::GetFlag(FLAGS_prompt), options,
                               [](std::string_view piece) {
                                 std::fwrite(piece.data(), 1, piece.size(), stdout);
                                 std::fflush(stdout);
                               });
  if (!result.ok()) return Fail(result.status());
  std::printf("\n");
  const double total = result->prefill_seconds + result->decode_seconds;
  std::cerr << absl::StrFormat(
      "achieved tok/s: %.1f (prefill %d tokens at %.1f tok/s, decode %d tokens at %.1f tok/s)\n",
      total > 0 ? (result->prefill_tokens + result->decode_tokens) / total : 0.0,
      result->prefill_tokens,
      result->prefill_seconds > 0 ? result->prefill_tokens / result->prefill_seconds : 0.0,
      result->decode_tokens,
      result->decode_seconds > 0 ? result->decode_tokens / result->decode_seconds : 0.0);
  return 0;
}
