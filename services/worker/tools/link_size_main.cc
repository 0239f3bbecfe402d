// krul-link-size: the link rate at which fully loading a conversation's
// history from the kvstore takes a chosen fraction of recomputing it here.
//
// A GPU node sees a balance between the two ways back: LLaMA-7B on an H100
// with an 8K-token history recomputes in about 212 ms and loads its 4.3 GB
// of fp16 KV over a 400 Gbit/s link in about 86 ms (load = 0.4 x
// recompute). On a CPU with a small model both sides shrink by different
// factors, so a testbed that wants the same balance sizes its link from a
// measurement: this tool measures the recompute of a history of N tokens on
// this machine with the worker's own compute probe (ProbeCompute, as
// krul-worker runs it at start-up: per-layer timings of the worker's engine
// at --threads, each the fastest of a few runs, fitted to the cost model's
// curve; recompute = layers x the curve at N), also times --repeats full
// prefills of N tokens for comparison (printed), computes the bytes a
// full load of that history moves (every layer's K and V, as the worker
// stores them: --kv_dtype, one 64-byte block header per --chunk_tokens
// tokens), and prints the rate that makes
//
//   full-load bytes / rate = ratio x recompute time
//
// Presets name links of the reference setup (7B, fp16, 8K tokens, H100);
// each gives the ratio that link has there, and the rate printed here is
// the testbed's equivalent of that link:
//   ib400 (default)  400 Gbit/s  ratio 0.40
//   ib200            200 Gbit/s  ratio 0.81
//   eth100           100 Gbit/s  ratio 1.62
//   eth25             25 Gbit/s  ratio 6.48
// --ratio overrides the preset. Only the transfer is sized: the link's
// latency and the store's per-restore overheads come on top.
//
// Output: shell assignments on stdout (KRUL_LINK_*; `eval` them), a
// sentence on stderr. The measurement is real; the rate is derived.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "krul/base/dtype.h"
#include "krul/engine/backend.h"
#include "krul/engine/backend_factory.h"
#include "krul/kvformat/kv_block.h"
#include "krul/model/model.h"
#include "krul/model/model_shape.h"
#include "krul/restore/cost_model.h"

ABSL_FLAG(std::string, model, "", "Model file (llama2.c .bin or GGUF)");
ABSL_FLAG(bool, synthetic, false, "Use a seeded random model of --synthetic_shape");
ABSL_FLAG(std::string, synthetic_shape, "64,172,5,8,4,512,512",
          "Synthetic model shape (as krul-worker's)");
ABSL_FLAG(uint64_t, seed, 42, "Seed of the synthetic model's weights");
ABSL_FLAG(int, history_tokens, 0, "History length N to size for (0: half the model's context)");
ABSL_FLAG(int, threads, 1, "Engine threads, as the workers run (krul-worker --threads)");
ABSL_FLAG(std::string, device, "auto", "Compute device: auto, cpu or cuda (as krul-worker's)");
ABSL_FLAG(std::string, kv_dtype, "f32", "Storage type of the KV (as krul-worker's --kv_dtype)");
ABSL_FLAG(int, chunk_tokens, 256, "Tokens per stored block (as krul-worker's --chunk_tokens)");
ABSL_FLAG(std::string, preset, "ib400",
          "Named link of the reference setup: ib400, ib200, eth100, eth25");
ABSL_FLAG(double, ratio, 0, "Full-load time / recompute time wanted (0: the preset's)");
ABSL_FLAG(int, repeats, 5, "Full prefills timed for comparison");

namespace {

struct Preset {
  const char* name;
  double gbit_per_s;  // the link in the reference setup
};

// LLaMA-7B, fp16, 8K-token history on an H100: 32 layers x 2 (K, V) x
// 4096 x 2 bytes per token, recomputed in about 212 ms.
constexpr double kReferenceBytes = 8192.0 * 32 * 2 * 4096 * 2;
constexpr double kReferenceRecomputeSeconds = 0.212;
constexpr Preset kPresets[] = {{"ib400", 400}, {"ib200", 200}, {"eth100", 100}, {"eth25", 25}};

double PresetRatio(const Preset& p) {
  return kReferenceBytes * 8 / (p.gbit_per_s * 1e9) / kReferenceRecomputeSeconds;
}

int Fail(const std::string& message) {
  std::cerr << "krul-link-size: " << message << "\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Prints the link rate at which fully loading a history takes a chosen fraction of\n"
      "recomputing it on this machine (measured).\n"
      "  krul-link-size --model FILE [--history_tokens N] [--preset ib400 | --ratio R]");
  absl::ParseCommandLine(argc, argv);

  const Preset* preset = nullptr;
  for (const Preset& p : kPresets) {
    if (absl::GetFlag(FLAGS_preset) == p.name) preset = &p;
  }
  if (preset == nullptr) return Fail("--preset: not one of ib400, ib200, eth100, eth25");
  const double ratio =
      absl::GetFlag(FLAGS_ratio) > 0 ? absl::GetFlag(FLAGS_ratio) : PresetRatio(*preset);
  auto dtype = krul::ParseDType(absl::GetFlag(FLAGS_kv_dtype));
  if (!dtype.ok()) return Fail(std::string(dtype.status().message()));
  if (absl::GetFlag(FLAGS_chunk_tokens) < 1) return Fail("--chunk_tokens must be >= 1");
  if (absl::GetFlag(FLAGS_repeats) < 1) return Fail("--repeats must be >= 1");

  absl::StatusOr<std::unique_ptr<krul::Model>> model;
  if (absl::GetFlag(FLAGS_synthetic)) {
    auto shape = krul::ParseModelShape(absl::GetFlag(FLAGS_synthetic_shape));
    if (!shape.ok()) return Fail(std::string(shape.status().message()));
    model = krul::MakeSyntheticModel(*shape, absl::GetFlag(FLAGS_seed));
  } else {
    if (absl::GetFlag(FLAGS_model).empty()) return Fail("give --model FILE or --synthetic");
    model = krul::LoadModel(absl::GetFlag(FLAGS_model));
  }
  if (!model.ok()) return Fail(std::string(model.status().message()));
  const krul::ModelConfig& config = (*model)->config();
  int n = absl::GetFlag(FLAGS_history_tokens);
  if (n == 0) n = config.seq_len / 2;
  if (n < 1 || n > config.seq_len) {
    return Fail(absl::StrFormat("--history_tokens must be in [1, %d]", config.seq_len));
  }

  auto device = krul::ParseDevice(absl::GetFlag(FLAGS_device));
  if (!device.ok()) return Fail(std::string(device.status().message()));
  krul::BackendOptions options;
  options.device = *device;
  options.cpu.num_threads = absl::GetFlag(FLAGS_threads);
  auto backend = krul::CreateBackend(**model, options);
  if (!backend.ok()) return Fail(std::string(backend.status().message()));
  auto cache = (*backend)->CreateKvCache(n);
  if (!cache.ok()) return Fail(std::string(cache.status().message()));

  // The recompute of the history: every layer over tokens [0, N), as a
  // restore that recomputes everything does (plus the one logits row).
  std::mt19937 rng(7);
  std::vector<int> tokens(n);
  for (int& t : tokens) t = std::uniform_int_distribution<int>(0, config.vocab_size - 1)(rng);
  std::vector<float> logits(config.vocab_size);
  std::vector<double> seconds;
  for (int r = 0; r <= absl::GetFlag(FLAGS_repeats); ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    if (auto s = (*backend)->Forward(**cache, tokens, 0, logits); !s.ok()) {
      return Fail(std::string(s.message()));
    }
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r > 0) seconds.push_back(t);  // the first run warms caches and allocations
  }
  std::sort(seconds.begin(), seconds.end());
  const double prefill_fastest_s = seconds.front();
  const double prefill_median_s = seconds[seconds.size() / 2];

  // The worker's probe (worker_core.cc's settings for the model's context):
  // what its cost model plans with, and what its restores measured here.
  krul::ComputeProbeOptions probe;
  const int ctx = config.seq_len;
  if (ctx < 600) {
    probe.token_counts = {std::max(2, ctx / 16), std::max(4, ctx / 4), std::max(8, ctx / 2)};
    probe.late_start = ctx / 2;
    probe.late_tokens = std::max(1, std::min(32, ctx / 8));
  }
  auto fit = krul::ProbeCompute(**backend, probe);
  if (!fit.ok()) return Fail(std::string(fit.status().message()));
  const double recompute_s = config.n_layers * fit->LayerSeconds(0, n);

  // A full load: every layer's K and V rows of N tokens, in blocks of
  // chunk_tokens tokens with a header each.
  const int chunk = absl::GetFlag(FLAGS_chunk_tokens);
  const double blocks_per_layer = std::ceil(static_cast<double>(n) / chunk);
  const double bytes = static_cast<double>(config.n_layers) *
                       (static_cast<double>(n) * 2 * config.kv_dim() * krul::DTypeSize(*dtype) +
                        blocks_per_layer * krul::kBlockHeaderBytes);
  const double load_s = ratio * recompute_s;
  const double bits_per_second = bytes * 8 / load_s;
  // tc takes integer rates; kbit keeps three digits for the slow links.
  const long long rate_kbit = std::max(1LL, std::llround(bits_per_second / 1e3));

  std::printf("KRUL_LINK_PRESET=%s\n", absl::GetFlag(FLAGS_ratio) > 0 ? "custom" : preset->name);
  std::printf("KRUL_LINK_RATIO=%.4f\n", ratio);
  std::printf("KRUL_LINK_HISTORY_TOKENS=%d\n", n);
  std::printf("KRUL_LINK_RECOMPUTE_MS=%.3f\n", recompute_s * 1e3);
  std::printf("KRUL_LINK_PREFILL_FASTEST_MS=%.3f\n", prefill_fastest_s * 1e3);
  std::printf("KRUL_LINK_PREFILL_MEDIAN_MS=%.3f\n", prefill_median_s * 1e3);
  std::printf("KRUL_LINK_FULL_LOAD_BYTES=%.0f\n", bytes);
  std::printf("KRUL_LINK_FULL_LOAD_MS=%.3f\n", load_s * 1e3);
  std::printf("KRUL_LINK_RATE=%lldkbit\n", rate_kbit);
  std::printf("KRUL_LINK_GBIT_PER_S=%.6f\n", rate_kbit / 1e6);
  std::fflush(stdout);
  std::cerr << absl::StrFormat(
      "krul-link-size: recomputing a %d-token history takes %.2f ms here (the worker's compute "
      "probe, %d thread(s); %d full prefills: fastest %.2f ms, median %.2f ms); loading it fully "
      "moves %.0f KB, so a %.1f Mbit/s link loads it in %.2f ms = %.2f x recompute (preset %s: "
      "%.0f Gbit/s for 7B/fp16/8K on an H100)\n",
      n, recompute_s * 1e3, absl::GetFlag(FLAGS_threads), static_cast<int>(seconds.size()),
      prefill_fastest_s * 1e3, prefill_median_s * 1e3, bytes / 1e3, rate_kbit / 1e3, load_s * 1e3,
      ratio, absl::GetFlag(FLAGS_ratio) > 0 ? "custom ratio" : preset->name, preset->gbit_per_s);
  return 0;
}
