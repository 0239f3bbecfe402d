// krul-bench-restore-gpu: krul-bench-restore on a CUDA GPU. Time to first
// token of a returning conversation under every restore mode, side by side
// in one run, on a synthetic LLaMA-7B shape in bf16 by default; plus the
// device's measured peaks, the prefill and copy rates as fractions of them,
// and the estimator's overhead on decode.
//
//   build/bin/krul-bench-restore-gpu [--json] [--histories 1024,4096,8192,16384]
//       [--model_shape dim=4096,hidden=11008,layers=32,heads=32,kv_heads=32,vocab=32000]
//       [--new_tokens 128] [--dtype bf16] [--ratio 1.5] [--rounds 3]
//       [--attention auto|fused|gemm] [--decode_context 4096] [--decode_tokens 64]
//
// Setting: the paper's, KV in host DRAM. The history's KV waits in pinned
// host memory (CudaHostKvStore, filled with a seeded pattern: timing does
// not depend on the values); the one Restorer (krul/restore/restorer.h)
// drives the CUDA backend: its load thread copies each step over PCIe / C2C
// into the cache's transfer stream (a DMA per plain step, a copy and an
// expand kernel per shared pair) while the engine recomputes on its compute
// stream, and each layer's prefill waits for that layer's copies (an event).
// The cost model is calibrated on the device at start-up (ProbeCompute
// between device events, ProbeCudaLoad); every mode plans with PlanForMode
// from the same costs, as krul-bench-restore does. Pairs: minicache =
// StaticMidDepthPlan; krul-fixed = the selector on the merged estimate of
// --calibration_conversations synthetic turns; krul = the selector on the
// estimate of the conversation's own last turn (CudaSimilarityEstimator:
// prefill on the host, decode on the device). TTFT (the restore's
// total_seconds: start to logits on the host) is the median of --rounds
// restores after a warm-up.
//
// JSON keys follow krul-bench-restore's ("results"[i].modes.<mode>.ttft_s,
// ratio_vs_*, efficiency, ...), with GPU additions: "device", "peak",
// "prefill_tflops", "h2d_gbps", "estimator".
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "algorithms/restore_bench_common.h"
#include "krul/compress/compression_plan.h"
#include "krul/compress/compressor.h"
#include "krul/compress/cuda/estimator_cuda.h"
#include "krul/compress/selector.h"
#include "krul/compress/similarity_estimator.h"
#include "krul/engine/cuda/cuda_memory.h"
#include "krul/engine/cuda/engine_cuda.h"
#include "krul/restore/cost_model.h"
#include "krul/restore/cuda/host_kv_store_cuda.h"
#include "krul/restore/cuda/load_probe_cuda.h"
#include "krul/restore/restore_mode.h"
#include "krul/restore/restore_plan.h"
#include "krul/restore/restorer.h"
#include "util/bench_util.h"

ABSL_FLAG(bool, json, false, "Print the results as one JSON object on stdout (progress on stderr)");
ABSL_FLAG(std::string, histories, "1024,4096,8192,16384", "History lengths (tokens)");
ABSL_FLAG(std::string, model_shape,
          "dim=4096,hidden=11008,layers=32,heads=32,kv_heads=32,vocab=32000",
          "Synthetic model shape: comma-separated key=value (dim, hidden, layers, heads, "
          "kv_heads, vocab); default LLaMA-7B");
ABSL_FLAG(int, new_tokens, 128, "New input tokens prefilled after the restore");
ABSL_FLAG(std::string, dtype, "bf16", "Weights and KV type: f32, f16 or bf16");
ABSL_FLAG(double, ratio, 1.5, "Target compression ratio of minicache / krul-fixed / krul");
ABSL_FLAG(int, rounds, 3, "Timed restores per mode and length (median); one warm-up before");
ABSL_FLAG(std::string, attention, "auto", "Prefill attention: auto, fused or gemm");
ABSL_FLAG(int, turn_context, 512,
          "Tokens of the turn the estimator observes (its last 128 "
          "prefill tokens and --turn_decode decoded tokens)");
ABSL_FLAG(int, turn_decode, 16, "Decoded tokens of the estimated turn");
ABSL_FLAG(int, calibration_conversations, 2, "Conversations for krul-fixed's pairs");
ABSL_FLAG(int, granularity, 32, "Split granularity of the planner (tokens)");
ABSL_FLAG(int, decode_context, 4096, "Context of the estimator-overhead decode run");
ABSL_FLAG(int, decode_tokens, 64, "Decoded tokens per estimator-overhead run");
ABSL_FLAG(uint64_t, seed, 7, "Seed of the synthetic model and the token streams");

namespace {

using Clock = std::chrono::steady_clock;
using krul::RestoreMode;
using krul::bench::CheckOk;
using krul::bench::Median;
using krul::bench::PairsString;
using krul::bench::SelectOrNone;
using krul::bench::Tokens;
using krul::bench::ValueOrDie;

bool g_json = false;

// Progress goes to stderr in --json mode, stdout otherwise.
template <typename... Args>
void Say(const absl::FormatSpec<Args...>& format, const Args&... args) {
  std::fputs(absl::StrFormat(format, args...).c_str(), g_json ? stderr : stdout);
  std::fflush(g_json ? stderr : stdout);
}

void CheckCuda(cudaError_t e, const std::string& what) {
  if (e != cudaSuccess) CheckOk(krul::CudaStatus(e, what), what);
}

// The default --model_shape (LLaMA-7B), before the flag's items.
krul::ModelConfig DefaultShape() {
  krul::ModelConfig c;
  c.dim = 4096;
  c.hidden_dim = 11008;
  c.n_layers = 32;
  c.n_heads = 32;
  c.n_kv_heads = 32;
  c.vocab_size = 32000;
  return c;
}

absl::StatusOr<krul::CudaAttentionImpl> ParseAttention(const std::string& s) {
  if (s == "auto") return krul::CudaAttentionImpl::kAuto;
  if (s == "fused") return krul::CudaAttentionImpl::kFused;
  if (s == "gemm") return krul::CudaAttentionImpl::kGemm;
  return absl::InvalidArgumentError("--attention must be auto, fused or gemm");
}

// ---- device peaks --------------------------------------------------------

// Dense GEMM rate of cuBLAS at n x n x n on random data (never zeros), in
// TFLOP/s: the ceiling the engine's prefill is compared with.
double MeasureGemmTflops(krul::DType dtype, int n) {
  const cudaDataType_t t = dtype == krul::DType::kF32   ? CUDA_R_32F
                           : dtype == krul::DType::kF16 ? CUDA_R_16F
                                                        : CUDA_R_16BF;
  const size_t elems = static_cast<size_t>(n) * n, bytes = elems * krul::DTypeSize(dtype);
  auto a = ValueOrDie(krul::CudaDeviceBuffer::Allocate(bytes), "gemm A");
  auto b = ValueOrDie(krul::CudaDeviceBuffer::Allocate(bytes), "gemm B");
  auto c = ValueOrDie(krul::CudaDeviceBuffer::Allocate(bytes), "gemm C");
  {
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> d(-1, 1);
    std::vector<float> tile(1 << 18);
    for (float& x : tile) x = d(rng);
    std::vector<uint8_t> raw(tile.size() * krul::DTypeSize(dtype));
    krul::ConvertFromFp32(tile.data(), dtype, raw.data(), tile.size());
    for (size_t off = 0; off < bytes; off += raw.size()) {
      const size_t len = std::min(raw.size(), bytes - off);
      CheckCuda(cudaMemcpy(a.as<uint8_t>() + off, raw.data(), len, cudaMemcpyHostToDevice),
                "fill A");
      CheckCuda(cudaMemcpy(b.as<uint8_t>() + off, raw.data(), len, cudaMemcpyHostToDevice),
                "fill B");
    }
  }
  cublasHandle_t handle = nullptr;
  if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS)
    CheckOk(absl::InternalError("failed"), "cublasCreate");
  const float alpha = 1.0f, beta = 0.0f;
  auto gemm = [&] {
    if (cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &alpha, a.data(), t, n, b.data(), t,
                     n, &beta, c.data(), t, n, CUBLAS_COMPUTE_32F,
                     CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS) {
      CheckOk(absl::InternalError("failed"), "cublasGemmEx");
    }
  };
  cudaEvent_t e0, e1;
  CheckCuda(cudaEventCreate(&e0), "event");
  CheckCuda(cudaEventCreate(&e1), "event");
  for (int i = 0; i < 3; ++i) gemm();
  const int reps = 10;
  CheckCuda(cudaEventRecord(e0, 0), "record");
  for (int i = 0; i < reps; ++i) gemm();
  CheckCuda(cudaEventRecord(e1, 0), "record");
  CheckCuda(cudaEventSynchronize(e1), "sync");
  float ms = 0;
  CheckCuda(cudaEventElapsedTime(&ms, e0, e1), "elapsed");
  cublasDestroy(handle);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return 2.0 * n * static_cast<double>(n) * n * reps / (ms * 1e-3) / 1e12;
}

// Host pinned -> device copy rate in GB/s (best of several 1 GiB copies).
double MeasureH2DGbps() {
  const size_t bytes = size_t{1} << 30;
  auto host = ValueOrDie(krul::CudaPinnedBuffer::Allocate(bytes), "pinned");
  auto dev = ValueOrDie(krul::CudaDeviceBuffer::Allocate(bytes), "device");
  std::memset(host.data(), 0x5a, bytes);
  cudaEvent_t e0, e1;
  CheckCuda(cudaEventCreate(&e0), "event");
  CheckCuda(cudaEventCreate(&e1), "event");
  double best = 0;
  for (int i = 0; i < 6; ++i) {
    CheckCuda(cudaEventRecord(e0, 0), "record");
    CheckCuda(cudaMemcpyAsync(dev.data(), host.data(), bytes, cudaMemcpyHostToDevice, 0), "copy");
    CheckCuda(cudaEventRecord(e1, 0), "record");
    CheckCuda(cudaEventSynchronize(e1), "sync");
    float ms = 0;
    CheckCuda(cudaEventElapsedTime(&ms, e0, e1), "elapsed");
    if (i > 0) best = std::max(best, bytes / (ms * 1e-3) / 1e9);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return best;
}

// FLOPs of a prefill of n tokens from position 0 through every layer
// (projections, feed-forward, and causal attention's two products).
double PrefillFlops(const krul::ModelConfig& c, double n) {
  const double dim = c.dim, q = static_cast<double>(c.n_heads) * c.head_size(), kv = c.kv_dim();
  const double per_token = 2.0 * (dim * (q + 2 * kv) + q * dim + 3.0 * dim * c.hidden_dim);
  const double attention = 2.0 * 2.0 * q * n * (n + 1) / 2.0;
  return c.n_layers * (per_token * n + attention);
}

// ---- pairs from estimated turns --------------------------------------------

// One synthetic turn on the GPU: `context` tokens, the last 128 of the
// prefill and `decode` decoded tokens observed by the estimator.
krul::SimilarityEstimate EstimateTurn(krul::CudaEngine& engine, int context, int decode,
                                      uint64_t seed) {
  const krul::ModelConfig& c = engine.config();
  const std::vector<int> tokens = Tokens(context, c.vocab_size, seed);
  auto cache = ValueOrDie(krul::CudaKvCache::Create(engine, context + decode), "turn cache");
  auto estimator =
      ValueOrDie(krul::CudaSimilarityEstimator::Create(engine, context + decode), "estimator");
  const int observed = std::min(128, context);
  if (context > observed) {
    CheckOk(engine.Forward(cache, std::span(tokens).first(context - observed), 0, {}),
            "turn prefill");
  }
  CheckOk(engine.SetAttentionObserver(estimator.get()), "observer");
  CheckOk(
      engine.Forward(cache, std::span(tokens).subspan(context - observed), context - observed, {}),
      "turn prefill");
  int token = tokens.back();
  for (int i = 0; i < decode; ++i) {
    token = ValueOrDie(engine.ForwardNext(cache, std::span<const int>(&token, 1), context + i),
                       "turn decode");
  }
  CheckOk(engine.SetAttentionObserver(nullptr), "observer");
  return ValueOrDie(estimator->Finish(), "estimate");
}

struct ModeResult {
  double ttft_s = 0;
  double predicted_s = 0;
  double lower_bound_s = 0;
  double efficiency = 0;
  double stored_bytes = 0;
  double recompute_s = 0;
  double load_s = 0;
  int64_t loaded_bytes = 0;
  int64_t recomputed_token_layers = 0;
  bool finite_logits = true;
  std::vector<int> split;
  std::string pairs;
};

struct EstimatorResult {
  double off_s = 0;  // median seconds of one decode run without the estimator
  double on_s = 0;   // with it (and its Finish)
  double overhead = 0;
};

// Decode `tokens` tokens at context `context`, with and without the
// estimator (alternating, median of 3 each after a warm-up of each).
EstimatorResult MeasureEstimatorOverhead(krul::CudaEngine& engine, int context, int tokens,
                                         uint64_t seed) {
  const krul::ModelConfig& c = engine.config();
  auto cache = ValueOrDie(krul::CudaKvCache::Create(engine, context + tokens), "decode cache");
  const std::vector<int> prompt = Tokens(context, c.vocab_size, seed);
  CheckOk(engine.Forward(cache, prompt, 0, {}), "decode prefill");
  const std::vector<int> inputs = Tokens(tokens, c.vocab_size, seed + 1);
  auto estimator =
      ValueOrDie(krul::CudaSimilarityEstimator::Create(engine, context + tokens), "estimator");
  auto run = [&](bool with_estimator) {
    const auto t0 = Clock::now();
    if (with_estimator) CheckOk(engine.SetAttentionObserver(estimator.get()), "observer");
    for (int i = 0; i < tokens; ++i) {
      ValueOrDie(engine.ForwardNext(cache, std::span<const int>(&inputs[i], 1), context + i),
                 "decode");
    }
    if (with_estimator) {
      CheckOk(engine.SetAttentionObserver(nullptr), "observer");
      ValueOrDie(estimator->Finish(), "estimate");
    }
    return std::chrono::duration<double>(Clock::now() - t0).count();
  };
  run(false);
  run(true);
  std::vector<double> off, on;
  for (int r = 0; r < 3; ++r) {
    off.push_back(run(false));
    on.push_back(run(true));
  }
  EstimatorResult e;
  e.off_s = Median(off);
  e.on_s = Median(on);
  e.overhead = e.on_s / e.off_s - 1.0;
  return e;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Restore TTFT of every mode on a CUDA GPU");
  absl::ParseCommandLine(argc, argv);
  g_json = absl::GetFlag(FLAGS_json);
  const auto bench_start = Clock::now();

  auto device_count = krul::CudaDeviceCount();
  if (!device_count.ok()) {
    std::fprintf(stderr, "krul-bench-restore-gpu: %s\n", device_count.status().ToString().c_str());
    return 2;
  }
  auto parsed_histories = krul::bench::ParseHistories(absl::GetFlag(FLAGS_histories));
  if (!parsed_histories.ok()) {
    std::fprintf(stderr, "%s\n", std::string(parsed_histories.status().message()).c_str());
    return 1;
  }
  const std::vector<int> histories = *std::move(parsed_histories);
  const int new_tokens = absl::GetFlag(FLAGS_new_tokens);
  if (histories.empty() || new_tokens < 1) {
    std::fprintf(stderr, "--histories must be non-empty and --new_tokens >= 1\n");
    return 1;
  }
  const int max_history = *std::max_element(histories.begin(), histories.end());
  const int turn_context = std::max(2, absl::GetFlag(FLAGS_turn_context));
  const int turn_decode = std::max(1, absl::GetFlag(FLAGS_turn_decode));
  const int decode_context = std::max(1, absl::GetFlag(FLAGS_decode_context));
  const int decode_tokens = std::max(1, absl::GetFlag(FLAGS_decode_tokens));
  const int seq_len = std::max(
      {max_history + new_tokens, turn_context + turn_decode, decode_context + decode_tokens, 640});
  const krul::ModelConfig config =
      ValueOrDie(krul::bench::ParseShape(absl::GetFlag(FLAGS_model_shape), seq_len, DefaultShape()),
                 "model shape");
  const krul::DType dtype = ValueOrDie(krul::ParseDType(absl::GetFlag(FLAGS_dtype)), "--dtype");
  const uint64_t seed = absl::GetFlag(FLAGS_seed);
  const double ratio = absl::GetFlag(FLAGS_ratio);
  const int rounds = std::max(1, absl::GetFlag(FLAGS_rounds));
  const krul::KvShape shape = krul::KvShape::FromConfig(config);

  cudaDeviceProp prop{};
  CheckCuda(cudaGetDeviceProperties(&prop, 0), "device properties");
  int runtime = 0, driver = 0;
  cudaRuntimeGetVersion(&runtime);
  cudaDriverGetVersion(&driver);
  Say("krul-bench-restore-gpu: %s (%d SMs, %.1f GiB), CUDA runtime %d driver %d\n", prop.name,
      prop.multiProcessorCount, prop.totalGlobalMem / double(1 << 30), runtime, driver);
  Say("model %s, %s, new input %d tokens, ratio %.2f, rounds %d\n", config.ToString(),
      std::string(krul::DTypeName(dtype)), new_tokens, ratio, rounds);

  // ---- measured ceilings ----
  const double gemm_tflops = MeasureGemmTflops(dtype, 8192);
  const double h2d_gbps = MeasureH2DGbps();
  Say("peaks: cuBLAS %s GEMM 8192^3 %.1f TFLOP/s; pinned H2D %.2f GB/s\n",
      std::string(krul::DTypeName(dtype)), gemm_tflops, h2d_gbps);

  // ---- engine, on-device synthetic weights ----
  krul::CudaEngineOptions eo;
  eo.dtype = dtype;
  eo.attention = ValueOrDie(ParseAttention(absl::GetFlag(FLAGS_attention)), "attention");
  const auto t_engine = Clock::now();
  auto engine = ValueOrDie(krul::CudaEngine::CreateSynthetic(config, seed, eo), "engine");
  Say("engine: %.2f GB of weights drawn in %.1fs\n", engine->weight_bytes() / 1e9,
      std::chrono::duration<double>(Clock::now() - t_engine).count());

  // ---- the cost model, calibrated on the device ----
  const auto t_probe = Clock::now();
  const krul::ComputeCoefficients compute =
      ValueOrDie(krul::ProbeCompute(*engine, krul::bench::RestoreComputeProbeOptions(seq_len)),
                 "compute probe");
  krul::LoadProbeOptions lpo;
  lpo.small_tokens = 1;
  lpo.large_tokens = 4096;
  const krul::LoadCoefficients load = ValueOrDie(
      krul::ProbeCudaLoad(*engine, krul::PlainBytesPerToken(shape, dtype), lpo), "load probe");
  const krul::CostCoefficients costs{compute, load};
  const double probe_s = std::chrono::duration<double>(Clock::now() - t_probe).count();
  Say("probe (%.2fs): compute fixed=%.3gs per_token=%.3gs per_pair=%.3gs; load latency=%.3gs "
      "bandwidth=%.2f GB/s\n",
      probe_s, compute.fixed_s, compute.per_token_s, compute.per_attention_pair_s, load.latency_s,
      load.bytes_per_second / 1e9);

  // ---- pairs ----
  const auto t_pairs = Clock::now();
  const krul::CompressionPlan static_pairs =
      ValueOrDie(krul::StaticMidDepthPlan(config.n_layers, ratio), "static pairs");
  krul::SimilarityEstimate calibration = krul::SimilarityEstimate::Empty(config.n_layers);
  for (int c = 0; c < absl::GetFlag(FLAGS_calibration_conversations); ++c) {
    CheckOk(
        calibration.Merge(EstimateTurn(*engine, turn_context, turn_decode, seed * 1000 + 500 + c)),
        "merge");
  }
  const krul::CompressionPlan fixed_pairs = SelectOrNone(calibration, config.n_layers, ratio);
  std::map<int, krul::CompressionPlan> own_pairs;
  for (int history : histories) {
    own_pairs[history] =
        SelectOrNone(EstimateTurn(*engine, turn_context, turn_decode, seed * 7919 + history),
                     config.n_layers, ratio);
  }
  Say("pairs (%.1fs): minicache [%s]  krul-fixed [%s]\n",
      std::chrono::duration<double>(Clock::now() - t_pairs).count(), PairsString(static_pairs),
      PairsString(fixed_pairs));

  // ---- plans: every mode at turn end, from the same costs ----
  krul::ModePlanOptions mpo;
  mpo.dtype = dtype;
  mpo.granularity_tokens = absl::GetFlag(FLAGS_granularity);
  std::map<std::pair<int, RestoreMode>, krul::RestorePlan> plans;
  std::map<std::pair<int, RestoreMode>, std::string> plan_pairs;
  std::vector<int> merged_layers;
  for (int history : histories) {
    for (RestoreMode mode : krul::kAllRestoreModes) {
      const krul::CompressionPlan& pairs =
          krul::bench::PairsForMode(mode, static_pairs, fixed_pairs, own_pairs[history]);
      plans[{history, mode}] = ValueOrDie(
          krul::PlanForMode(mode, pairs, shape, history, new_tokens, costs, mpo), "plan");
      const krul::CompressionPlan storage = krul::StoragePlanForMode(mode, pairs, config.n_layers);
      plan_pairs[{history, mode}] = PairsString(storage);
      for (const krul::LayerPair& p : storage.pairs)
        merged_layers.push_back(std::min(p.first, p.second));
    }
  }

  // ---- the stored KV in pinned host memory ----
  const auto t_store = Clock::now();
  auto store =
      ValueOrDie(krul::CudaHostKvStore::Create(*engine, max_history, merged_layers), "store");
  store->FillPattern(seed, std::max(1u, std::thread::hardware_concurrency()));
  Say("store: %.2f GB pinned in %.1fs\n", store->pinned_bytes() / 1e9,
      std::chrono::duration<double>(Clock::now() - t_store).count());

  // No cost model: every mode executes its plan as made (no re-plan).
  auto restorer = ValueOrDie(krul::Restorer::Create(*engine), "restorer");
  auto cache = ValueOrDie(engine->CreateKvCache(max_history + new_tokens), "cache");
  const std::unique_ptr<krul::KvSource> source = store->NewSource();
  std::vector<float> logits(config.vocab_size);

  Say("%s\n", krul::bench::ModeTableHeader());
  std::vector<std::map<RestoreMode, ModeResult>> all;
  for (int history : histories) {
    const std::vector<int> tokens = Tokens(history, config.vocab_size, seed * 7919 + history);
    const std::vector<int> input = Tokens(new_tokens, config.vocab_size, seed * 31 + history);
    std::map<RestoreMode, ModeResult> results;
    for (RestoreMode mode : krul::kAllRestoreModes) {
      const krul::RestorePlan& plan = plans[{history, mode}];
      ModeResult r;
      r.stored_bytes = plan.stored_bytes;
      r.pairs = plan_pairs[{history, mode}];
      r.split = plan.recompute_tokens;
      std::vector<double> ttft;
      krul::RestoreStats last;
      for (int round = 0; round <= rounds; ++round) {  // round 0: warm-up
        last = ValueOrDie(restorer->Restore(plan, tokens, input, source.get(), *cache, logits),
                          "restore");
        if (round > 0) ttft.push_back(last.total_seconds);
      }
      for (float x : logits) r.finite_logits = r.finite_logits && std::isfinite(x);
      r.ttft_s = Median(ttft);
      r.predicted_s = plan.predicted_seconds;
      r.lower_bound_s = plan.lower_bound_seconds;
      r.efficiency = r.lower_bound_s / r.ttft_s;
      r.recompute_s = last.recompute_seconds;
      r.load_s = last.load_seconds;
      r.loaded_bytes = static_cast<int64_t>(last.loaded_bytes);
      r.recomputed_token_layers = last.recomputed_token_layers;
      results[mode] = r;
    }
    const ModeResult& k = results[RestoreMode::kKrul];
    Say("%s\n", krul::bench::ModeTableRow(history, krul::bench::CompareModes(results)));
    Say("        krul split [%s] pairs [%s] predicted %.1fms ideal %.1fms; cake split %d\n",
        absl::StrJoin(k.split, ","), k.pairs, k.predicted_s * 1e3, k.lower_bound_s * 1e3,
        results[RestoreMode::kCake].split.empty() ? 0 : results[RestoreMode::kCake].split[0]);
    all.push_back(std::move(results));
  }

  // ---- estimator overhead on decode ----
  const EstimatorResult est =
      MeasureEstimatorOverhead(*engine, decode_context, decode_tokens, seed + 77);
  Say("estimator on decode (context %d, %d tokens): %.2f ms/token off, %.2f on: overhead %.2f%%\n",
      decode_context, decode_tokens, est.off_s / decode_tokens * 1e3,
      est.on_s / decode_tokens * 1e3, est.overhead * 100);

  // ---- rates vs ceilings ----
  std::vector<double> prefill_tflops, load_gbps;
  for (size_t i = 0; i < histories.size(); ++i) {
    const ModeResult& rec = all[i][RestoreMode::kRecompute];
    const ModeResult& ld = all[i][RestoreMode::kLoad];
    prefill_tflops.push_back(
        rec.recompute_s > 0 ? PrefillFlops(config, histories[i]) / rec.recompute_s / 1e12 : 0);
    load_gbps.push_back(ld.load_s > 0 ? ld.loaded_bytes / ld.load_s / 1e9 : 0);
    Say("history %6d: prefill %.1f TFLOP/s (%.0f%% of GEMM peak); load %.2f GB/s (%.0f%% of H2D "
        "peak)\n",
        histories[i], prefill_tflops.back(), 100 * prefill_tflops.back() / gemm_tflops,
        load_gbps.back(), 100 * load_gbps.back() / h2d_gbps);
  }
  const double total_s = std::chrono::duration<double>(Clock::now() - bench_start).count();
  Say("total %.1fs\n", total_s);

  if (g_json) {
    std::string j = "{\n  \"bench\": \"krul-bench-restore-gpu\",\n";
    absl::StrAppendFormat(&j,
                          "  \"device\": {\"name\": \"%s\", \"sms\": %d, \"memory_bytes\": %d, "
                          "\"cuda_runtime\": %d, \"cuda_driver\": %d},\n",
                          prop.name, prop.multiProcessorCount,
                          static_cast<int64_t>(prop.totalGlobalMem), runtime, driver);
    absl::StrAppendFormat(&j,
                          "  \"model\": \"%s\",\n  \"new_tokens\": %d,\n  \"kv_dtype\": \"%s\",\n",
                          config.ToString(), new_tokens, std::string(krul::DTypeName(dtype)));
    absl::StrAppendFormat(
        &j, "  \"attention\": \"%s\",\n  \"target_ratio\": %.4f,\n  \"rounds\": %d,\n",
        absl::GetFlag(FLAGS_attention), ratio, rounds);
    absl::StrAppendFormat(&j, "  \"peak\": {\"gemm_tflops\": %.6g, \"h2d_gbps\": %.6g},\n",
                          gemm_tflops, h2d_gbps);
    j += krul::bench::ProbeJson(probe_s, compute, load);
    j += krul::bench::PairsJson(static_pairs, fixed_pairs);
    absl::StrAppendFormat(&j,
                          "  \"estimator\": {\"decode_context\": %d, \"decode_tokens\": %d, "
                          "\"seconds_off\": %.6g, \"seconds_on\": %.6g, \"overhead\": %.6g},\n",
                          decode_context, decode_tokens, est.off_s, est.on_s, est.overhead);
    absl::StrAppendFormat(&j,
                          "  \"goals\": {\"ratio_vs_recompute\": 3.0, \"ratio_vs_load\": 2.5, "
                          "\"ratio_vs_cake\": 1.6, \"efficiency\": 0.9, "
                          "\"estimator_overhead\": 0.03},\n");
    j += "  \"results\": [\n";
    for (size_t i = 0; i < all.size(); ++i) {
      auto& results = all[i];
      const ModeResult& k = results[RestoreMode::kKrul];
      j += krul::bench::ModeRatiosJson(histories[i], krul::bench::CompareModes(results));
      j += ",\n";
      absl::StrAppendFormat(&j,
                            "     \"prefill_tflops\": %.6g, \"prefill_fraction_of_peak\": %.4f, "
                            "\"h2d_gbps\": %.6g, \"h2d_fraction_of_peak\": %.4f,\n",
                            prefill_tflops[i], prefill_tflops[i] / gemm_tflops, load_gbps[i],
                            load_gbps[i] / h2d_gbps);
      absl::StrAppendFormat(&j, "     \"krul_split\": [%s], \"krul_pairs\": \"%s\",\n",
                            absl::StrJoin(k.split, ","), k.pairs);
      j += "     \"modes\": {";
      bool first = true;
      for (RestoreMode m : krul::kAllRestoreModes) {
        const ModeResult& r = results[m];
        absl::StrAppendFormat(
            &j,
            "%s\n       \"%s\": {\"ttft_s\": %.6g, \"predicted_s\": %.6g, \"lower_bound_s\": %.6g, "
            "\"efficiency\": %.4f, \"stored_bytes\": %.0f, \"loaded_bytes\": %d, "
            "\"recompute_s\": %.6g, \"load_s\": %.6g, \"recomputed_token_layers\": %d, "
            "\"finite_logits\": %s}",
            first ? "" : ",", std::string(krul::RestoreModeName(m)), r.ttft_s, r.predicted_s,
            r.lower_bound_s, r.efficiency, r.stored_bytes, r.loaded_bytes, r.recompute_s, r.load_s,
            r.recomputed_token_layers, r.finite_logits ? "true" : "false");
        first = false;
      }
      absl::StrAppendFormat(&j, "}}%s\n", i + 1 < all.size() ? "," : "");
    }
    absl::StrAppendFormat(&j, "  ],\n  \"total_seconds\": %.3f\n}\n", total_s);
    std::fputs(j.c_str(), stdout);
  }
  return 0;
}
