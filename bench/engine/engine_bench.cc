// krul-bench-engine: CPU prefill and decode throughput of the Krul engine
// next to a llama2.c-style forward pass (token at a time, OpenMP matvec,
// built with -Ofast) in the same run, on the same weights.
//
//   build/bin/krul-bench-engine [--json] [--threads N] [--rounds R]
//
// The baseline memory-maps the checkpoint file as run.c does, so each side
// reads weights from its own memory (Krul: its loaded, huge-page-backed
// buffers).
//
// Models: stories260K.bin from the shared data folder when present, and a
// seeded synthetic checkpoint of the stories110M shape (dim 768, 12 layers,
// 12 heads, hidden 2048, vocab 32000) written as a llama2.c file and loaded
// back through the same loader users run.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "engine/llama2c_style_forward.h"
#include "krul/engine/engine_cpu.h"
#include "krul/engine/sampler.h"
#include "krul/model/model.h"
#include "util/bench_util.h"

ABSL_FLAG(bool, json, false, "Print the results as one JSON object");
ABSL_FLAG(int, threads, 0, "Threads for both engines (0 = all cores)");
ABSL_FLAG(int, rounds, 3, "Alternating rounds per model; the median is reported");
ABSL_FLAG(int, decode_tokens, 64, "Tokens decoded after the prompt");
ABSL_FLAG(std::string, data_dir, "",
          "Shared data folder (default: $KRUL_DATA_DIR or ../shared/data)");
ABSL_FLAG(bool, skip_110m, false, "Skip the synthetic stories110M-shaped checkpoint");

namespace {

using Clock = std::chrono::steady_clock;

struct Throughput {
  double prefill_tps = 0;
  double decode_tps = 0;
  std::vector<int> tokens;  // greedy continuation, to check both agree
};

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::vector<int> Prompt(int n, int vocab) {
  std::vector<int> p(n);
  p[0] = 1;
  for (int i = 1; i < n; ++i) p[i] = 3 + (i * 7919) % (vocab - 3);
  return p;
}

Throughput RunKrul(krul::Engine& engine, const std::vector<int>& prompt, int decode) {
  const krul::ModelConfig& c = engine.config();
  auto cache = krul::KvCache::Create(c, static_cast<int>(prompt.size()) + decode);
  std::vector<float> logits(c.vocab_size);
  Throughput r;
  auto t0 = Clock::now();
  if (!engine.Forward(*cache, prompt, 0, logits).ok()) std::abort();
  auto t1 = Clock::now();
  int token = krul::ArgMax(logits);
  for (int i = 0; i < decode; ++i) {
    r.tokens.push_back(token);
    if (!engine
             .Forward(*cache, std::span<const int>(&token, 1), static_cast<int>(prompt.size()) + i,
                      logits)
             .ok()) {
      std::abort();
    }
    token = krul::ArgMax(logits);
  }
  auto t2 = Clock::now();
  r.prefill_tps = prompt.size() / Seconds(t0, t1);
  r.decode_tps = decode / Seconds(t1, t2);
  return r;
}

Throughput RunBaseline(const std::string& path, const krul::Model& model, int threads,
                       const std::vector<int>& prompt, int decode) {
  auto opened = krul::bench::Llama2cStyleForward::Open(path, model, threads);
  if (!opened.ok()) {
    std::fprintf(stderr, "%s\n", opened.status().ToString().c_str());
    std::exit(1);
  }
  krul::bench::Llama2cStyleForward& forward = **opened;
  const int vocab = model.config().vocab_size;
  Throughput r;
  auto t0 = Clock::now();
  const float* logits = nullptr;
  for (size_t pos = 0; pos < prompt.size(); ++pos)
    logits = forward.Forward(prompt[pos], static_cast<int>(pos));
  auto t1 = Clock::now();
  int token = krul::ArgMax(std::span<const float>(logits, vocab));
  for (int i = 0; i < decode; ++i) {
    r.tokens.push_back(token);
    logits = forward.Forward(token, static_cast<int>(prompt.size()) + i);
    token = krul::ArgMax(std::span<const float>(logits, vocab));
  }
  auto t2 = Clock::now();
  r.prefill_tps = prompt.size() / Seconds(t0, t1);
  r.decode_tps = decode / Seconds(t1, t2);
  return r;
}

using krul::bench::Median;

struct Row {
  std::string name;
  std::string shape;
  int prompt_tokens = 0;
  double krul_prefill = 0, base_prefill = 0, krul_decode = 0, base_decode = 0;
  bool agree = false;
};

// `path` is the llama2.c checkpoint `model` was loaded from; the baseline
// maps it itself, as run.c does.
Row Measure(const std::string& name, const std::string& path, const krul::Model& model,
            int prompt_tokens, int threads) {
  const int decode = absl::GetFlag(FLAGS_decode_tokens);
  krul::EngineOptions options;
  options.num_threads = threads;
  auto engine = krul::Engine::Create(model, options);
  if (!engine.ok()) {
    std::fprintf(stderr, "%s\n", engine.status().ToString().c_str());
    std::exit(1);
  }
  const std::vector<int> prompt = Prompt(prompt_tokens, model.config().vocab_size);
  std::vector<double> kp, kd, bp, bd;
  Row row{name, model.config().ToString(), prompt_tokens};
  row.agree = true;
  for (int round = 0; round < absl::GetFlag(FLAGS_rounds); ++round) {
    // Alternate so that drifting machine load hits both sides alike.
    Throughput k = RunKrul(**engine, prompt, decode);
    Throughput b = RunBaseline(path, model, threads, prompt, decode);
    kp.push_back(k.prefill_tps);
    kd.push_back(k.decode_tps);
    bp.push_back(b.prefill_tps);
    bd.push_back(b.decode_tps);
    // Greedy continuations agree unless fp summation order flips a near-tie.
    row.agree = row.agree && k.tokens == b.tokens;
    std::fprintf(stderr,
                 "  %s round %d: krul prefill %.1f decode %.1f | llama2.c-style prefill %.1f "
                 "decode %.1f tok/s\n",
                 name.c_str(), round + 1, k.prefill_tps, k.decode_tps, b.prefill_tps, b.decode_tps);
  }
  row.krul_prefill = Median(kp);
  row.krul_decode = Median(kd);
  row.base_prefill = Median(bp);
  row.base_decode = Median(bd);
  return row;
}

std::string DataDir() { return krul::bench::DataDir(absl::GetFlag(FLAGS_data_dir)); }

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "CPU prefill/decode throughput: Krul engine vs a llama2.c-style baseline");
  absl::ParseCommandLine(argc, argv);
  int threads = absl::GetFlag(FLAGS_threads);
  if (threads <= 0) threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<Row> rows;

  const std::string stories = DataDir() + "/models/stories260K.bin";
  if (std::filesystem::exists(stories)) {
    auto model = krul::LoadModel(stories);
    if (!model.ok()) {
      std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
      return 1;
    }
    rows.push_back(Measure("stories260K", stories, **model, 256, threads));
  } else {
    std::fprintf(stderr, "note: %s not found; skipping the real stories260K model\n",
                 stories.c_str());
  }

  if (!absl::GetFlag(FLAGS_skip_110m)) {
    krul::ModelConfig shape;
    shape.dim = 768;
    shape.hidden_dim = 2048;
    shape.n_layers = 12;
    shape.n_heads = 12;
    shape.n_kv_heads = 12;
    shape.vocab_size = 32000;
    shape.seq_len = 1024;
    auto synthetic = krul::MakeSyntheticModel(shape, 110);
    const std::string path = (std::filesystem::temp_directory_path() /
                              ("krul-bench-stories110M-" + std::to_string(::getpid()) + ".bin"))
                                 .string();
    if (!synthetic.ok() || !krul::WriteLlama2cCheckpoint(**synthetic, path).ok()) {
      std::fprintf(stderr, "cannot write the synthetic checkpoint to %s\n", path.c_str());
      return 1;
    }
    synthetic->reset();
    auto model = krul::LoadLlama2cModel(path);
    if (!model.ok()) {
      std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
      return 1;
    }
    rows.push_back(Measure("synthetic-stories110M", path, **model, 128, threads));
    std::filesystem::remove(path);
  }

  if (absl::GetFlag(FLAGS_json)) {
    std::printf("{\"threads\": %d, \"decode_tokens\": %d, \"models\": [", threads,
                absl::GetFlag(FLAGS_decode_tokens));
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      std::printf(
          "%s{\"name\": \"%s\", \"shape\": \"%s\", \"prompt_tokens\": %d, "
          "\"krul_prefill_tps\": %.2f, \"baseline_prefill_tps\": %.2f, \"prefill_ratio\": %.3f, "
          "\"krul_decode_tps\": %.2f, \"baseline_decode_tps\": %.2f, \"decode_ratio\": %.3f, "
          "\"greedy_tokens_agree\": %s}",
          i ? ", " : "", r.name.c_str(), r.shape.c_str(), r.prompt_tokens, r.krul_prefill,
          r.base_prefill, r.krul_prefill / r.base_prefill, r.krul_decode, r.base_decode,
          r.krul_decode / r.base_decode, r.agree ? "true" : "false");
    }
    std::printf("]}\n");
    return 0;
  }
  std::printf(
      "Krul engine vs llama2.c-style baseline (%d threads, median of %d rounds, %d decode "
      "tokens)\n",
      threads, absl::GetFlag(FLAGS_rounds), absl::GetFlag(FLAGS_decode_tokens));
  std::printf("%-22s %7s | %12s %12s %7s | %12s %12s %7s | %s\n", "model", "prompt", "prefill krul",
              "baseline", "ratio", "decode krul", "baseline", "ratio", "same tokens");
  for (const Row& r : rows) {
    std::printf("%-22s %7d | %12.1f %12.1f %6.2fx | %12.1f %12.1f %6.2fx | %s\n", r.name.c_str(),
                r.prompt_tokens, r.krul_prefill, r.base_prefill, r.krul_prefill / r.base_prefill,
                r.krul_decode, r.base_decode, r.krul_decode / r.base_decode,
                r.agree ? "yes" : "no");
  }
  std::printf("(tokens/s; ratio = krul / baseline)\n");
  return 0;
}
