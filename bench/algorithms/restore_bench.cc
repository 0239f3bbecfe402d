// krul-bench-restore: time to first token of a returning conversation under
// every restore mode, side by side in one run.
//
//   build/bin/krul-bench-restore [--json] [--histories 512,1024,...]
//       [--model_shape dim=256,hidden=688,layers=12,heads=8,kv_heads=8]
//       [--new_tokens 128] [--load_gbps G] [--load_latency_us U]
//       [--ratio 1.5] [--kv_dtype f32|f16|bf16] [--rounds R] [--threads T]
//       [--store auto|kvstore|in-process] [--ucx_tcp]
//
// For each history length N: a conversation of N tokens is prefilled (its
// last `turn_tokens` with the similarity estimator on, as the turn that just
// ended); at turn end every mode plans its restore with the cost model,
// compresses and stores the KV; then each mode restores it with the same
// executor and prefills the same 128 new tokens. TTFT = restore + prefill +
// logits, the median of R rounds. Printed per length: ttft_<mode>/ttft_krul,
// stored bytes per mode, and Krul's scheduler efficiency (ideal lower bound
// under the cost model / achieved).
//
// The store (--store): `kvstore` starts one krul-kvstore server in this
// process (127.0.0.1, ephemeral port, DRAM tier only, UCX data plane: shared
// memory, or TCP over loopback with --ucx_tcp) and stores each mode's KV as
// a real version (manifest + one block per segment, as the worker's
// persister does); a restore reads it through the worker's KvSource
// (gRPC lookup before the timed restore, then one streamed UCX read of the
// blocks the plan loads, prefetched as the worker does). `in-process`
// keeps the CompressedKv in memory (InProcessKvStore). `auto` (default) is
// kvstore when the bench was built with the services (not with
// KRUL_ENGINE_ONLY) and UCX starts, else in-process. Either way every fetch
// is paced by an emulated link on top of the real work
// (MakeLinkPacedKvSource: a fetch takes max(real, latency + bytes /
// bandwidth)), because on one host the real store is much faster than CPU
// recompute; the real (unpaced) time the store took is printed per length.
//
// The cost model is calibrated at start-up by the probe (ComputeLayer on a
// few token counts; fetches of two sizes through the store) and refreshed
// from every restore. With --load_gbps 0 (default) the link bandwidth is set
// so that loading a full `balance_tokens`-token history takes as long as
// recomputing it under the probed compute speed: the regime where neither
// classic approach wins outright (recompute grows quadratically, load
// linearly, so short histories favour recompute and long ones load). The
// value used is printed.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
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
#include "algorithms/restore_bench_store.h"
#include "krul/compress/compression_plan.h"
#include "krul/compress/compressor.h"
#include "krul/compress/selector.h"
#include "krul/compress/similarity_estimator.h"
#include "krul/engine/engine_cpu.h"
#include "krul/engine/kv_cache.h"
#include "krul/model/model.h"
#include "krul/restore/cost_model.h"
#include "krul/restore/kv_source.h"
#include "krul/restore/restore_mode.h"
#include "krul/restore/restore_plan.h"
#include "krul/restore/restorer.h"
#include "util/bench_util.h"

ABSL_FLAG(bool, json, false, "Print the results as one JSON object");
ABSL_FLAG(std::string, histories, "512,1024,2048,4096,8192", "History lengths (tokens)");
ABSL_FLAG(std::string, model_shape, "dim=128,hidden=344,layers=12,heads=2,kv_heads=2,vocab=512",
          "Synthetic model shape: comma-separated key=value (dim, hidden, layers, heads, "
          "kv_heads, vocab)");
ABSL_FLAG(int, new_tokens, 128, "New input tokens prefilled after the restore");
ABSL_FLAG(int, turn_tokens, 128, "Last tokens of the history observed by the estimator");
ABSL_FLAG(double, load_gbps, 0, "Emulated link bandwidth in GB/s (0 = balance, see above)");
ABSL_FLAG(int, balance_tokens, 2048, "History length where load and recompute balance");
ABSL_FLAG(double, load_latency_us, 20, "Emulated per-request latency in microseconds");
ABSL_FLAG(double, ratio, 1.5, "Target compression ratio of minicache / krul-fixed / krul");
ABSL_FLAG(std::string, kv_dtype, "f32", "Stored KV type: f32, f16 or bf16 (all modes)");
ABSL_FLAG(int, rounds, 1,
          "Restores per mode and length; the median counts. Histories up to 1024 tokens "
          "always get at least 3 (they are cheap and noisy)");
ABSL_FLAG(int, threads, 0, "Engine threads (0 = all cores)");
ABSL_FLAG(int, calibration_conversations, 3, "Conversations for krul-fixed's pairs");
ABSL_FLAG(int, granularity, 32, "Split granularity of the planner (tokens)");
ABSL_FLAG(uint64_t, seed, 7, "Seed of the synthetic model and the token streams");
ABSL_FLAG(std::string, store, "auto",
          "Where loads come from: kvstore (in-process krul-kvstore over UCX), in-process "
          "(InProcessKvStore), or auto (kvstore when built with the services)");
ABSL_FLAG(bool, ucx_tcp, false, "With the kvstore: UCX over TCP on loopback, not shared memory");

namespace {

using Clock = std::chrono::steady_clock;
using krul::RestoreMode;
using krul::bench::Median;
using krul::bench::PairsString;
using krul::bench::SelectOrNone;
using krul::bench::Tokens;
using krul::bench::ValueOrDie;

#define CHECK_OK(expr)                                        \
  do {                                                        \
    const absl::Status check_ok_status_ = (expr);             \
    if (!check_ok_status_.ok()) {                             \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, \
                   check_ok_status_.ToString().c_str());      \
      std::exit(1);                                           \
    }                                                         \
  } while (0)

// The default --model_shape, before the flag's items.
krul::ModelConfig DefaultShape() {
  krul::ModelConfig c;
  c.dim = 128;
  c.hidden_dim = 344;
  c.n_layers = 12;
  c.n_heads = 2;
  c.n_kv_heads = 2;
  c.vocab_size = 512;
  return c;
}

// Prefills `tokens` into `cache`, the last `turn` of them with the estimator
// observing (the turn that just ended), and returns the estimate.
krul::SimilarityEstimate PrefillWithEstimate(krul::Engine& engine, krul::KvCache& cache,
                                             const std::vector<int>& tokens, int turn) {
  const int n = static_cast<int>(tokens.size());
  turn = std::clamp(turn, 1, n);
  if (n - turn > 0) {
    CHECK_OK(engine.Forward(cache, std::span(tokens).subspan(0, n - turn), 0, {}));
  }
  krul::SimilarityEstimatorOptions eo;
  auto estimator = ValueOrDie(krul::SimilarityEstimator::Create(engine.config(), eo), "estimator");
  krul::bench::CheckOk(engine.SetAttentionObserver(estimator.get()), "observer");
  CHECK_OK(engine.Forward(cache, std::span(tokens).subspan(n - turn), n - turn, {}));
  krul::bench::CheckOk(engine.SetAttentionObserver(nullptr), "observer");
  return estimator->Finish();
}

std::string Key(int history, RestoreMode mode) {
  return absl::StrCat("conv-", history, "-", std::string(krul::RestoreModeName(mode)));
}

// The store --store asks for; exits when it cannot be had.
std::unique_ptr<krul::bench::BenchStore> OpenBenchStore(const krul::KvShape& shape,
                                                        uint64_t capacity_bytes) {
  const std::string which = absl::GetFlag(FLAGS_store);
  if (which != "auto" && which != "kvstore" && which != "in-process") {
    std::fprintf(stderr, "--store must be auto, kvstore or in-process\n");
    std::exit(1);
  }
  if (which != "in-process") {
    auto store =
        krul::bench::StartKvstoreBenchStore(shape, absl::GetFlag(FLAGS_ucx_tcp), capacity_bytes);
    if (store.ok()) return *std::move(store);
    std::fprintf(stderr, "kvstore: %s\n", store.status().ToString().c_str());
    if (which == "kvstore") std::exit(1);
    std::fprintf(stderr, "--store auto: using the in-process store\n");
  }
  return krul::bench::NewInProcessBenchStore();
}

// A source over `key` for `loads`, paced by `link`; `stats` collects the
// real and paced time of its fetches.
std::unique_ptr<krul::KvSource> OpenPaced(krul::bench::BenchStore& store, const std::string& key,
                                          const std::vector<krul::LoadStep>& loads,
                                          const krul::LinkModel& link,
                                          krul::LinkPacingStats* stats) {
  return ValueOrDie(
      krul::MakeLinkPacedKvSource(ValueOrDie(store.Open(key, loads), "open"), link, stats),
      "paced source");
}

struct ModeResult {
  double ttft_s = 0;
  double predicted_s = 0;
  double lower_bound_s = 0;
  double efficiency = 0;
  double stream_efficiency = 0;
  double stored_bytes = 0;
  double max_logit_diff = 0;  // vs the recompute mode's logits
  int64_t recomputed_token_layers = 0;
  bool replanned = false;
  std::vector<int> split;
  std::string pairs;
  krul::LinkPacingStats store;  // the fetches of the last round
};

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Restore TTFT of every mode over history lengths");
  absl::ParseCommandLine(argc, argv);
  const bool json = absl::GetFlag(FLAGS_json);
  auto parsed_histories = krul::bench::ParseHistories(absl::GetFlag(FLAGS_histories));
  if (!parsed_histories.ok()) {
    std::fprintf(stderr, "%s\n", std::string(parsed_histories.status().message()).c_str());
    return 1;
  }
  const std::vector<int> histories = *std::move(parsed_histories);
  if (histories.empty()) {
    std::fprintf(stderr, "--histories is empty\n");
    return 1;
  }
  const int new_tokens = absl::GetFlag(FLAGS_new_tokens);
  if (new_tokens < 1) {
    std::fprintf(stderr, "--new_tokens must be >= 1\n");
    return 1;
  }
  const int max_history = *std::max_element(histories.begin(), histories.end());
  const int seq_len = std::max(max_history + new_tokens, 4096);
  const krul::ModelConfig config =
      ValueOrDie(krul::bench::ParseShape(absl::GetFlag(FLAGS_model_shape), seq_len, DefaultShape()),
                 "model shape");
  const krul::DType dtype =
      ValueOrDie(krul::ParseDType(absl::GetFlag(FLAGS_kv_dtype)), "--kv_dtype");
  const uint64_t seed = absl::GetFlag(FLAGS_seed);
  const double ratio = absl::GetFlag(FLAGS_ratio);
  const int rounds = std::max(1, absl::GetFlag(FLAGS_rounds));

  auto model = ValueOrDie(krul::MakeSyntheticModel(config, seed), "model");
  krul::EngineOptions eo;
  eo.num_threads = absl::GetFlag(FLAGS_threads);
  auto engine = ValueOrDie(krul::Engine::Create(*model, eo), "engine");
  const krul::KvShape shape = krul::KvShape::FromConfig(config);

  // ---- start-up probe: compute ----
  const auto probe_start = Clock::now();
  const krul::ComputeCoefficients compute =
      ValueOrDie(krul::ProbeCompute(*engine, krul::bench::RestoreComputeProbeOptions(seq_len)),
                 "compute probe");

  // ---- the link ----
  krul::LinkModel link;
  link.latency_s = absl::GetFlag(FLAGS_load_latency_us) * 1e-6;
  link.bytes_per_second = absl::GetFlag(FLAGS_load_gbps) * 1e9;
  if (link.bytes_per_second <= 0) {
    const int b = absl::GetFlag(FLAGS_balance_tokens);
    const double recompute_s = config.n_layers * compute.LayerSeconds(0, b);
    const double bytes =
        static_cast<double>(krul::PlainBytesPerToken(shape, dtype)) * config.n_layers * b;
    link.bytes_per_second = bytes / std::max(1e-9, recompute_s - config.n_layers * link.latency_s);
  }
  // Room for every mode's KV of the longest history at once (at most the
  // uncompressed size each), plus slack.
  const uint64_t capacity = static_cast<uint64_t>(krul::kAllRestoreModes.size()) *
                                krul::PlainBytesPerToken(shape, dtype) *
                                static_cast<uint64_t>(config.n_layers) *
                                static_cast<uint64_t>(max_history) +
                            (uint64_t{256} << 20);
  std::unique_ptr<krul::bench::BenchStore> store = OpenBenchStore(shape, capacity);

  // ---- start-up probe: load, through the store and the link ----
  // Two stored histories, one of `small` tokens and one of `large`, so each
  // probe fetch reads one whole block (the kvstore moves whole blocks).
  krul::LoadCoefficients load;
  {
    krul::LoadProbeOptions lpo;
    lpo.small_tokens = 1;
    lpo.large_tokens = 256;
    auto cache = ValueOrDie(krul::KvCache::Create(config, lpo.large_tokens), "probe cache");
    CHECK_OK(engine->Forward(cache, Tokens(lpo.large_tokens, config.vocab_size, seed + 99), 0, {}));
    krul::CompressorOptions co;
    co.dtype = dtype;
    for (int tokens : {lpo.small_tokens, lpo.large_tokens}) {
      auto kv = ValueOrDie(
          krul::CompressKv(cache, shape, krul::CompressionPlan::Uncompressed(config.n_layers),
                           tokens, {}, co),
          "probe compress");
      CHECK_OK(store->Put(absl::StrCat("probe-", tokens), std::move(kv)));
    }
    // No prefetch: each probe fetch is one request to the store.
    auto small = OpenPaced(*store, absl::StrCat("probe-", lpo.small_tokens), {}, link, nullptr);
    auto large = OpenPaced(*store, absl::StrCat("probe-", lpo.large_tokens), {}, link, nullptr);
    const std::vector<int> layer0 = {0};
    krul::LoadProbeFn fetch = [&](int tokens) {
      krul::KvSource& source = tokens == lpo.large_tokens ? *large : *small;
      return source.Fetch(layer0, 0, tokens, cache);
    };
    load = ValueOrDie(krul::ProbeLoad(fetch, lpo), "load probe");
    small.reset();
    large.reset();
    CHECK_OK(store->Erase(absl::StrCat("probe-", lpo.small_tokens)));
    CHECK_OK(store->Erase(absl::StrCat("probe-", lpo.large_tokens)));
  }
  auto cost_model = ValueOrDie(krul::CostModel::Create({compute, load}), "cost model");
  const double probe_s = std::chrono::duration<double>(Clock::now() - probe_start).count();

  // ---- krul-fixed: pairs from the average similarity of a calibration set ----
  krul::CompressionPlan fixed_pairs = krul::CompressionPlan::Uncompressed(config.n_layers);
  {
    krul::SimilarityEstimate merged = krul::SimilarityEstimate::Empty(config.n_layers);
    const int calib_tokens = 512;
    for (int c = 0; c < absl::GetFlag(FLAGS_calibration_conversations); ++c) {
      auto cache = ValueOrDie(krul::KvCache::Create(config, calib_tokens), "calibration cache");
      const auto tokens = Tokens(calib_tokens, config.vocab_size, seed * 1000 + 500 + c);
      CHECK_OK(merged.Merge(
          PrefillWithEstimate(*engine, cache, tokens, absl::GetFlag(FLAGS_turn_tokens))));
    }
    fixed_pairs = SelectOrNone(merged, config.n_layers, ratio);
  }
  const krul::CompressionPlan static_pairs =
      ValueOrDie(krul::StaticMidDepthPlan(config.n_layers, ratio), "static pairs");

  krul::RestorerOptions ro;
  ro.cost_model = cost_model.get();
  auto restorer = ValueOrDie(krul::Restorer::Create(*engine, ro), "restorer");
  krul::ModePlanOptions mpo;
  mpo.dtype = dtype;
  mpo.granularity_tokens = absl::GetFlag(FLAGS_granularity);

  // Other processes on the machine distort wall-clock timings: say how busy
  // it was.
  double load_average[1] = {-1};
  if (getloadavg(load_average, 1) != 1) load_average[0] = -1;
  if (!json) {
    std::printf(
        "krul-bench-restore: %s, new input %d tokens, KV %s, ratio %.2f, %u cores, "
        "load average %.2f, store %s\n",
        config.ToString().c_str(), new_tokens, std::string(krul::DTypeName(dtype)).c_str(), ratio,
        std::thread::hardware_concurrency(), load_average[0], store->Name().c_str());
    std::printf(
        "probe (%.2fs): compute fixed=%.3gs per_token=%.3gs per_pair=%.3gs; "
        "load latency=%.3gs bandwidth=%.3f GB/s (link: %.1f us, %.3f GB/s)\n",
        probe_s, compute.fixed_s, compute.per_token_s, compute.per_attention_pair_s, load.latency_s,
        load.bytes_per_second / 1e9, link.latency_s * 1e6, link.bytes_per_second / 1e9);
    std::printf("pairs: minicache [%s]  krul-fixed [%s]\n", PairsString(static_pairs).c_str(),
                PairsString(fixed_pairs).c_str());
    std::printf("%s %5s\n", krul::bench::ModeTableHeader().c_str(), "s_eff");
  }

  // Warm-up: the first restore pays for page faults, thread start-up and
  // cold caches; keep it out of the numbers.
  {
    const int n = std::min(256, histories.front());
    const auto tokens = Tokens(n, config.vocab_size, seed + 5);
    auto cache = ValueOrDie(krul::KvCache::Create(config, n + new_tokens), "cache");
    krul::RestoreProblem p;
    p.n_layers = config.n_layers;
    p.history_tokens = n;
    p.new_tokens = new_tokens;
    p.layout = krul::UncompressedLayout(config.n_layers, 1);
    p.policy = krul::SplitPolicy::kRecomputeAll;
    const auto plan = ValueOrDie(krul::PlanRestore(p, cost_model->Snapshot()), "warm-up plan");
    std::vector<float> logits(config.vocab_size);
    ValueOrDie(restorer->Restore(plan, tokens, Tokens(new_tokens, config.vocab_size, seed + 6),
                                 nullptr, cache, logits),
               "warm-up restore");
  }

  std::vector<std::map<RestoreMode, ModeResult>> all;
  for (int history : histories) {
    const std::vector<int> tokens = Tokens(history, config.vocab_size, seed * 7919 + history);
    const std::vector<int> input = Tokens(new_tokens, config.vocab_size, seed * 31 + history);
    auto full = ValueOrDie(krul::KvCache::Create(config, history + new_tokens), "cache");
    const krul::SimilarityEstimate estimate =
        PrefillWithEstimate(*engine, full, tokens, absl::GetFlag(FLAGS_turn_tokens));
    const krul::CompressionPlan own_pairs = SelectOrNone(estimate, config.n_layers, ratio);
    auto restored = ValueOrDie(krul::KvCache::Create(config, history + new_tokens), "cache");
    std::vector<float> logits(config.vocab_size), reference(config.vocab_size);

    // Every mode plans at turn end from the same costs.
    const krul::CostCoefficients turn_end_costs = cost_model->Snapshot();
    const int length_rounds = history <= 1024 ? std::max(rounds, 3) : rounds;
    std::map<RestoreMode, ModeResult> results;
    std::map<RestoreMode, krul::RestorePlan> plans;
    std::map<RestoreMode, std::vector<double>> ttft;
    std::map<RestoreMode, krul::RestoreStats> last;
    // Turn end: every mode plans with the same costs, compresses, stores.
    for (RestoreMode mode : krul::kAllRestoreModes) {
      const krul::CompressionPlan& pairs =
          krul::bench::PairsForMode(mode, static_pairs, fixed_pairs, own_pairs);
      plans[mode] = ValueOrDie(
          krul::PlanForMode(mode, pairs, shape, history, new_tokens, turn_end_costs, mpo), "plan");
      const krul::CompressionPlan storage = krul::StoragePlanForMode(mode, pairs, config.n_layers);
      krul::CompressorOptions co;
      co.dtype = dtype;
      auto kv = ValueOrDie(
          krul::CompressKv(full, shape, storage, history, plans[mode].recompute_tokens, co),
          "compress");
      ModeResult& r = results[mode];
      r.stored_bytes = static_cast<double>(kv.stored_bytes());
      r.pairs = PairsString(storage);
      CHECK_OK(store->Put(Key(history, mode), std::move(kv)));
    }
    // Turn start: restore + prefill. Rounds go over all modes in turn so
    // that load from other processes hits every mode alike.
    for (int round = 0; round < length_rounds; ++round) {
      for (RestoreMode mode : krul::kAllRestoreModes) {
        krul::LinkPacingStats pacing;
        auto source = OpenPaced(*store, Key(history, mode), plans[mode].loads, link, &pacing);
        last[mode] = ValueOrDie(
            restorer->Restore(plans[mode], tokens, input, source.get(), restored, logits),
            "restore");
        ttft[mode].push_back(last[mode].total_seconds);
        source.reset();  // ends the source's background read before the next restore
        results[mode].store = pacing;
        if (mode == RestoreMode::kRecompute) reference = logits;
        for (size_t i = 0; i < logits.size(); ++i) {
          results[mode].max_logit_diff =
              std::max(results[mode].max_logit_diff,
                       static_cast<double>(std::abs(logits[i] - reference[i])));
        }
      }
    }
    for (RestoreMode mode : krul::kAllRestoreModes) {
      CHECK_OK(store->Erase(Key(history, mode)));
      ModeResult& r = results[mode];
      const krul::RestoreStats& st = last[mode];
      r.ttft_s = Median(ttft[mode]);
      r.predicted_s = st.plan.predicted_seconds;
      r.lower_bound_s = st.plan.lower_bound_seconds;
      r.efficiency = r.lower_bound_s / r.ttft_s;
      r.stream_efficiency = st.stream_efficiency;
      r.recomputed_token_layers = st.recomputed_token_layers;
      r.replanned = st.replanned;
      r.split = st.plan.recompute_tokens;
    }
    const ModeResult& k = results[RestoreMode::kKrul];
    if (!json) {
      std::printf("%s %5.2f\n",
                  krul::bench::ModeTableRow(history, krul::bench::CompareModes(results)).c_str(),
                  k.stream_efficiency);
      std::printf("        krul split [%s] pairs [%s]%s predicted %.1fms ideal %.1fms; stored MB:",
                  absl::StrJoin(k.split, ",").c_str(), k.pairs.c_str(),
                  k.replanned ? " (re-planned)" : "", k.predicted_s * 1e3, k.lower_bound_s * 1e3);
      for (RestoreMode m : krul::kAllRestoreModes) {
        std::printf(" %s=%.2f", std::string(krul::RestoreModeName(m)).c_str(),
                    results[m].stored_bytes / 1e6);
      }
      std::printf("; cake split %d\n", results[RestoreMode::kCake].split.empty()
                                           ? 0
                                           : results[RestoreMode::kCake].split[0]);
      // The real store's share: time in the store's source (transfer,
      // verification, decoding) against the paced fetch time.
      std::printf("        %s, real (unpaced) / paced fetch time:", store->Name().c_str());
      for (RestoreMode m : {RestoreMode::kLoad, RestoreMode::kCake, RestoreMode::kKrul}) {
        const krul::LinkPacingStats& p = results[m].store;
        std::printf(" %s %.2f MB %.1f / %.1f ms (%.2f GB/s real);",
                    std::string(krul::RestoreModeName(m)).c_str(), p.bytes / 1e6,
                    p.inner_seconds * 1e3, p.paced_seconds * 1e3,
                    p.inner_seconds > 0 ? p.bytes / p.inner_seconds / 1e9 : 0.0);
      }
      std::printf("\n");
      std::fflush(stdout);
    }
    all.push_back(std::move(results));
  }

  if (json) {
    std::printf("{\n  \"bench\": \"krul-bench-restore\",\n");
    std::printf("  \"model\": \"%s\",\n  \"new_tokens\": %d,\n  \"kv_dtype\": \"%s\",\n",
                config.ToString().c_str(), new_tokens, std::string(krul::DTypeName(dtype)).c_str());
    std::printf("  \"target_ratio\": %.4f,\n  \"rounds\": %d,\n", ratio, rounds);
    std::printf("  \"cores\": %u,\n  \"load_average_at_start\": %.2f,\n",
                std::thread::hardware_concurrency(), load_average[0]);
    std::printf("  \"store\": \"%s\",\n", store->Name().c_str());
    std::printf("  \"link\": {\"latency_s\": %.6g, \"bytes_per_second\": %.6g},\n", link.latency_s,
                link.bytes_per_second);
    std::fputs(krul::bench::ProbeJson(probe_s, compute, load).c_str(), stdout);
    std::fputs(krul::bench::PairsJson(static_pairs, fixed_pairs).c_str(), stdout);
    std::printf("  \"results\": [\n");
    for (size_t i = 0; i < all.size(); ++i) {
      auto& results = all[i];
      const ModeResult& k = results[RestoreMode::kKrul];
      std::printf(
          "%s, \"stream_efficiency\": %.4f,\n",
          krul::bench::ModeRatiosJson(histories[i], krul::bench::CompareModes(results)).c_str(),
          k.stream_efficiency);
      std::printf("     \"krul_split\": [%s], \"krul_pairs\": \"%s\", \"krul_replanned\": %s,\n",
                  absl::StrJoin(k.split, ",").c_str(), k.pairs.c_str(),
                  k.replanned ? "true" : "false");
      const krul::LinkPacingStats& lp = results[RestoreMode::kLoad].store;
      std::printf(
          "     \"load_store_real_s\": %.6g, \"load_store_paced_s\": %.6g, "
          "\"load_store_real_bytes_per_second\": %.6g,\n",
          lp.inner_seconds, lp.paced_seconds,
          lp.inner_seconds > 0 ? lp.bytes / lp.inner_seconds : 0.0);
      std::printf("     \"modes\": {");
      bool first = true;
      for (RestoreMode m : krul::kAllRestoreModes) {
        const ModeResult& r = results[m];
        std::printf(
            "%s\n       \"%s\": {\"ttft_s\": %.6g, \"predicted_s\": %.6g, "
            "\"lower_bound_s\": %.6g, \"efficiency\": %.4f, \"stream_efficiency\": %.4f, "
            "\"stored_bytes\": %.0f, "
            "\"recomputed_token_layers\": %lld, \"max_logit_diff_vs_recompute\": %.3g, "
            "\"store_fetches\": %d, \"store_fetched_bytes\": %zu, \"store_real_s\": %.6g, "
            "\"store_paced_s\": %.6g}",
            first ? "" : ",", std::string(krul::RestoreModeName(m)).c_str(), r.ttft_s,
            r.predicted_s, r.lower_bound_s, r.efficiency, r.stream_efficiency, r.stored_bytes,
            static_cast<long long>(r.recomputed_token_layers), r.max_logit_diff, r.store.fetches,
            r.store.bytes, r.store.inner_seconds, r.store.paced_seconds);
        first = false;
      }
      std::printf("}}%s\n", i + 1 < all.size() ? "," : "");
    }
    std::printf("  ]\n}\n");
  }
  return 0;
}
