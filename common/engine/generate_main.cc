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
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "krul/engine/engine_cpu.h"
#include "krul/engine/generator.h"
#include "krul/model/model.h"
#include "krul/model/tokenizer.h"

ABSL_FLAG(std::string, model, "", "Model file: llama2.c checkpoint (.bin) or GGUF (.gguf)");
ABSL_FLAG(std::string, tokenizer, "",
          "llama2.c tokenizer file; defaults to the vocabulary embedded in the model (GGUF)");
ABSL_FLAG(bool, synthetic, false,
          "Use a seeded random model (--synthetic_shape) instead of --model");
ABSL_FLAG(std::string, synthetic_shape, "64,172,5,8,4,512,512",
          "dim,hidden_dim,layers,heads,kv_heads,vocab,seq_len of the synthetic model");
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

absl::StatusOr<krul::ModelConfig> ParseShape(const std::string& text) {
  krul::ModelConfig c;
  int* fields[] = {&c.dim, &c.hidden_dim, &c.n_layers, &c.n_heads, &c.n_kv_heads, &c.vocab_size,
                   &c.seq_len};
  size_t begin = 0;
  for (int i = 0; i < 7; ++i) {
    size_t end = text.find(',', begin);
    std::string part = text.substr(begin, end == std::string::npos ? end : end - begin);
    try {
      *fields[i] = std::stoi(part);
    } catch (...) {
      return absl::InvalidArgumentError(absl::StrCat("--synthetic_shape: '", part, "' is not a number"));
    }
    if ((end == std::string::npos) != (i == 6)) {
      return absl::InvalidArgumentError("--synthetic_shape needs exactly 7 comma-separated numbers");
    }
    begin = end + 1;
  }
  if (auto s = c.Validate(); !s.ok()) return s;
  return c;
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
    auto shape = ParseShape(absl::GetFlag(FLAGS_synthetic_shape));
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
