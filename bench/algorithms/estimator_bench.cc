// krul-bench-estimator: what the similarity estimator costs generation.
//
//   build/bin/krul-bench-estimator [--json] [--threads N] [--rounds R]
//       [--prompt_tokens P] [--decode_tokens D] [--decode_head_stride S]
//       [--decode_token_stride T] [--decode_pool]
//
// For each model, one turn (prefill of P tokens, then D greedy-free decode
// steps over a fixed token sequence, so both sides do identical work) runs
// with the estimator off and on, alternating, R rounds; medians are
// reported, and the best (fastest) round of each side, which is what a
// shared, noisy machine distorts least. Overhead = time on / time off - 1,
// for decode (the design's <= 3% budget) and for the whole turn including
// Finish() (waiting for the background prefill work at turn end). A third
// side runs with an observer that does nothing: what the engine itself pays
// for handing out probabilities, apart from the estimator's own work.
//
// Models: stories260K.bin and krul12L.bin from the shared data folder when
// present, and a seeded synthetic model with more layers (32 layers, dim
// 512, 8 heads), where the L x L comparison costs the most.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "krul/base/thread_pool.h"
#include "krul/compress/similarity_estimator.h"
#include "krul/engine/engine_cpu.h"
#include "krul/engine/kv_cache.h"
#include "krul/model/model.h"
#include "util/bench_util.h"

ABSL_FLAG(bool, json, false, "Print the results as one JSON object");
ABSL_FLAG(int, threads, 0, "Engine threads (0 = all cores)");
ABSL_FLAG(int, rounds, 5, "Alternating off/on rounds per model; medians are reported");
ABSL_FLAG(int, prompt_tokens, 256, "Prefill tokens (capped at half the model's seq_len)");
ABSL_FLAG(int, decode_tokens, 128, "Decode steps after the prompt (capped by seq_len)");
ABSL_FLAG(int, decode_head_stride, 1, "Estimator: compare every n-th query head on decode");
ABSL_FLAG(int, decode_token_stride, 1, "Estimator: compare every n-th decode token");
ABSL_FLAG(bool, decode_pool, false, "Estimator: run the decode comparison on the engine's pool");
ABSL_FLAG(std::string, data_dir, "",
          "Shared data folder (default: $KRUL_DATA_DIR or ../shared/data)");
ABSL_FLAG(bool, skip_synthetic, false, "Skip the synthetic 32-layer model");

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

struct Turn {
  double prefill_s = 0;
  double decode_s = 0;
  double finish_s = 0;      // Finish(): waiting for background work at turn end
  double decode_cpu_s = 0;  // CPU time of the calling (engine) thread during decode
  krul::SimilarityEstimate estimate;
};

// CPU time of the calling thread. Unlike wall time it does not grow while
// other processes hold the core, so on a busy shared machine the engine
// thread's decode CPU time compares off and on far more steadily (with
// --threads 1 it is all of the engine's work).
double ThreadCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

// Receives the probabilities and ignores them.
class NullObserver : public krul::AttentionObserver {
 public:
  void OnAttention(const krul::AttentionWeights&) override {}
};

Turn RunTurn(krul::Engine& engine, krul::SimilarityEstimator* estimator, int prompt, int decode,
             krul::AttentionObserver* observer = nullptr) {
  const krul::ModelConfig& c = engine.config();
  auto cache = krul::KvCache::Create(c, prompt + decode);
  if (!cache.ok()) std::abort();
  std::vector<int> tokens(prompt + decode);
  tokens[0] = 1;
  for (size_t i = 1; i < tokens.size(); ++i) tokens[i] = 3 + (i * 7919) % (c.vocab_size - 3);
  std::vector<float> logits(c.vocab_size);
  if (!engine.SetAttentionObserver(estimator != nullptr ? estimator : observer).ok()) std::abort();
  Turn t;
  const auto t0 = Clock::now();
  if (!engine.Forward(*cache, std::span<const int>(tokens).first(prompt), 0, logits).ok())
    std::abort();
  const auto t1 = Clock::now();
  const double c1 = ThreadCpuSeconds();
  for (int i = 0; i < decode; ++i) {
    if (!engine
             .Forward(*cache, std::span<const int>(tokens).subspan(prompt + i, 1), prompt + i,
                      logits)
             .ok()) {
      std::abort();
    }
  }
  const auto t2 = Clock::now();
  t.decode_cpu_s = ThreadCpuSeconds() - c1;
  if (estimator != nullptr) t.estimate = estimator->Finish();
  const auto t3 = Clock::now();
  if (!engine.SetAttentionObserver(nullptr).ok()) std::abort();
  t.prefill_s = Seconds(t0, t1);
  t.decode_s = Seconds(t1, t2);
  t.finish_s = Seconds(t2, t3);
  return t;
}

// Per-token decode times with the observer rotated token by token: off,
// estimator, do-nothing observer, off, ... Neighbouring tokens do nearly the
// same work, so slow drifts of machine load cancel, and medians drop the
// tokens that were preempted. The estimator sees every third token, which
// costs per token what a full turn does.
struct Paired {
  std::vector<double> off, on, null;
};

Paired RunPaired(krul::Engine& engine, krul::SimilarityEstimator& estimator,
                 krul::AttentionObserver& null_observer, int prompt, int decode) {
  const krul::ModelConfig& c = engine.config();
  auto cache = krul::KvCache::Create(c, prompt + decode);
  if (!cache.ok()) std::abort();
  std::vector<int> tokens(prompt + decode);
  tokens[0] = 1;
  for (size_t i = 1; i < tokens.size(); ++i) tokens[i] = 3 + (i * 7919) % (c.vocab_size - 3);
  std::vector<float> logits(c.vocab_size);
  if (!engine.SetAttentionObserver(nullptr).ok()) std::abort();
  if (!engine.Forward(*cache, std::span<const int>(tokens).first(prompt), 0, logits).ok()) {
    std::abort();
  }
  Paired p;
  for (int i = 0; i < decode; ++i) {
    krul::AttentionObserver* observers[3] = {nullptr, &estimator, &null_observer};
    if (!engine.SetAttentionObserver(observers[i % 3]).ok()) std::abort();
    const auto t0 = Clock::now();
    if (!engine
             .Forward(*cache, std::span<const int>(tokens).subspan(prompt + i, 1), prompt + i,
                      logits)
             .ok()) {
      std::abort();
    }
    const double dt = Seconds(t0, Clock::now());
    (i % 3 == 0 ? p.off : i % 3 == 1 ? p.on : p.null).push_back(dt);
  }
  if (!engine.SetAttentionObserver(nullptr).ok()) std::abort();
  estimator.Finish();
  return p;
}

using krul::bench::Median;

struct Row {
  std::string name, shape;
  int prompt = 0, decode = 0;
  double decode_tps_off = 0, decode_tps_on = 0, decode_tps_null = 0;
  double best_decode_tps_off = 0, best_decode_tps_on = 0, best_decode_tps_null = 0;
  double turn_s_off = 0, turn_s_on = 0;
  double prefill_s_off = 0, prefill_s_on = 0;
  double engine_thread_s = 0, background_s = 0, finish_s = 0;
  double decode_engine_s = 0, decode_s_off = 0;
  double decode_cpu_off = 0, decode_cpu_on = 0, decode_cpu_null = 0;
  double cpu_overhead() const { return decode_cpu_on / decode_cpu_off - 1; }
  double cpu_null_overhead() const { return decode_cpu_null / decode_cpu_off - 1; }
  // Token-by-token rotation (RunPaired): medians of per-token decode time.
  double paired_off_s = 0, paired_on_s = 0, paired_null_s = 0;
  double paired_overhead() const { return paired_on_s / paired_off_s - 1; }
  double paired_null_overhead() const { return paired_null_s / paired_off_s - 1; }
  bool sampled = false;
  int64_t rows_compared = 0;
  double rows_represented = 0;
  double decode_overhead() const { return decode_tps_off / decode_tps_on - 1; }
  double best_decode_overhead() const { return best_decode_tps_off / best_decode_tps_on - 1; }
  double null_overhead() const { return best_decode_tps_off / best_decode_tps_null - 1; }
  double turn_overhead() const { return turn_s_on / turn_s_off - 1; }
  // The estimator's own time on the engine thread during decode, against
  // decode time without it: the same budget, measured without A/B noise (it
  // leaves out the engine's cost of keeping probabilities for an observer).
  double decode_direct() const { return decode_engine_s / decode_s_off; }
};

Row Measure(const std::string& name, const krul::Model& model, int threads) {
  const krul::ModelConfig& c = model.config();
  Row row;
  row.name = name;
  row.shape = c.ToString();
  row.prompt = std::min(absl::GetFlag(FLAGS_prompt_tokens), c.seq_len / 2);
  row.decode = std::min(absl::GetFlag(FLAGS_decode_tokens), c.seq_len - row.prompt);
  krul::ThreadPool pool(threads);
  krul::EngineOptions eo;
  eo.pool = &pool;
  auto engine = krul::Engine::Create(model, eo);
  krul::SimilarityEstimatorOptions so;
  so.decode_head_stride = absl::GetFlag(FLAGS_decode_head_stride);
  so.decode_token_stride = absl::GetFlag(FLAGS_decode_token_stride);
  if (absl::GetFlag(FLAGS_decode_pool)) so.decode_pool = &pool;
  auto estimator = krul::SimilarityEstimator::Create(c, so);
  if (!engine.ok() || !estimator.ok()) {
    std::fprintf(stderr, "cannot set up %s\n", name.c_str());
    std::exit(1);
  }
  RunTurn(**engine, nullptr, row.prompt, std::min(row.decode, 8));  // warm-up
  std::vector<double> d_off, d_on, d_null, t_off, t_on, p_off, p_on, eng, bg, fin, deng, ds_off;
  NullObserver null_observer;
  std::vector<double> cpu_off, cpu_on, cpu_null;
  for (int r = 0; r < absl::GetFlag(FLAGS_rounds); ++r) {
    // Alternate so that drifting machine load hits both sides alike.
    const Turn off = RunTurn(**engine, nullptr, row.prompt, row.decode);
    const Turn on = RunTurn(**engine, estimator->get(), row.prompt, row.decode);
    const Turn null = RunTurn(**engine, nullptr, row.prompt, row.decode, &null_observer);
    d_null.push_back(row.decode / null.decode_s);
    cpu_off.push_back(off.decode_cpu_s);
    cpu_on.push_back(on.decode_cpu_s);
    cpu_null.push_back(null.decode_cpu_s);
    d_off.push_back(row.decode / off.decode_s);
    d_on.push_back(row.decode / on.decode_s);
    t_off.push_back(off.prefill_s + off.decode_s);
    t_on.push_back(on.prefill_s + on.decode_s + on.finish_s);
    p_off.push_back(off.prefill_s);
    p_on.push_back(on.prefill_s);
    eng.push_back(on.estimate.engine_thread_seconds);
    bg.push_back(on.estimate.background_seconds);
    fin.push_back(on.finish_s);
    deng.push_back(on.estimate.decode_engine_seconds);
    ds_off.push_back(off.decode_s);
    row.sampled = on.estimate.sampled;
    row.rows_compared = on.estimate.rows_compared;
    row.rows_represented = on.estimate.rows_represented;
    std::fprintf(stderr, "  %s round %d: decode off %.1f on %.1f tok/s; turn off %.3f on %.3f s\n",
                 name.c_str(), r + 1, d_off.back(), d_on.back(), t_off.back(), t_on.back());
  }
  row.decode_tps_off = Median(d_off);
  row.decode_tps_on = Median(d_on);
  row.decode_tps_null = Median(d_null);
  row.decode_cpu_off = Median(cpu_off);
  row.decode_cpu_on = Median(cpu_on);
  row.decode_cpu_null = Median(cpu_null);
  row.best_decode_tps_off = krul::bench::Max(d_off);
  row.best_decode_tps_on = krul::bench::Max(d_on);
  row.best_decode_tps_null = krul::bench::Max(d_null);
  row.turn_s_off = Median(t_off);
  row.turn_s_on = Median(t_on);
  row.prefill_s_off = Median(p_off);
  row.prefill_s_on = Median(p_on);
  row.engine_thread_s = Median(eng);
  row.background_s = Median(bg);
  row.finish_s = Median(fin);
  row.decode_engine_s = krul::bench::Min(deng);
  row.decode_s_off = krul::bench::Min(ds_off);
  std::vector<double> po, pn, pu;
  for (int r = 0; r < absl::GetFlag(FLAGS_rounds); ++r) {
    const Paired p = RunPaired(**engine, **estimator, null_observer, row.prompt, row.decode);
    po.insert(po.end(), p.off.begin(), p.off.end());
    pn.insert(pn.end(), p.on.begin(), p.on.end());
    pu.insert(pu.end(), p.null.begin(), p.null.end());
  }
  row.paired_off_s = Median(po);
  row.paired_on_s = Median(pn);
  row.paired_null_s = Median(pu);
  return row;
}

std::string DataDir() { return krul::bench::DataDir(absl::GetFlag(FLAGS_data_dir)); }

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Similarity estimator overhead: generation with the estimator off vs on");
  absl::ParseCommandLine(argc, argv);
  int threads = absl::GetFlag(FLAGS_threads);
  if (threads <= 0) threads = std::max(1u, std::thread::hardware_concurrency());
  if (absl::GetFlag(FLAGS_rounds) < 1 || absl::GetFlag(FLAGS_prompt_tokens) < 2 ||
      absl::GetFlag(FLAGS_decode_tokens) < 1) {
    std::fprintf(stderr, "--rounds, --decode_tokens must be >= 1 and --prompt_tokens >= 2\n");
    return 1;
  }
  std::vector<Row> rows;
  for (const char* file : {"stories260K.bin", "krul12L.bin"}) {
    const std::string path = DataDir() + "/models/" + file;
    if (!std::filesystem::exists(path)) {
      std::fprintf(stderr, "note: %s not found; skipping it\n", path.c_str());
      continue;
    }
    auto model = krul::LoadModel(path);
    if (!model.ok()) {
      std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
      return 1;
    }
    rows.push_back(Measure(std::filesystem::path(file).stem().string(), **model, threads));
  }
  if (!absl::GetFlag(FLAGS_skip_synthetic)) {
    krul::ModelConfig shape;
    shape.dim = 512;
    shape.hidden_dim = 1376;
    shape.n_layers = 32;
    shape.n_heads = 8;
    shape.n_kv_heads = 8;
    shape.vocab_size = 4096;
    shape.seq_len = 2048;
    auto model = krul::MakeSyntheticModel(shape, 32);
    if (!model.ok()) {
      std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
      return 1;
    }
    rows.push_back(Measure("synthetic-32L", **model, threads));
  }

  if (absl::GetFlag(FLAGS_json)) {
    std::printf(
        "{\"threads\": %d, \"rounds\": %d, \"decode_head_stride\": %d, "
        "\"decode_token_stride\": %d, \"decode_pool\": %s, \"models\": [",
        threads, absl::GetFlag(FLAGS_rounds), absl::GetFlag(FLAGS_decode_head_stride),
        absl::GetFlag(FLAGS_decode_token_stride),
        absl::GetFlag(FLAGS_decode_pool) ? "true" : "false");
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      std::printf(
          "%s{\"name\": \"%s\", \"shape\": \"%s\", \"prompt_tokens\": %d, \"decode_tokens\": %d, "
          "\"decode_tps_off\": %.2f, \"decode_tps_on\": %.2f, \"decode_overhead_pct\": %.2f, "
          "\"best_decode_tps_off\": %.2f, \"best_decode_tps_on\": %.2f, "
          "\"best_decode_overhead_pct\": %.2f, "
          "\"best_decode_tps_null_observer\": %.2f, \"null_observer_overhead_pct\": %.2f, "
          "\"decode_estimator_engine_s\": %.5f, \"decode_direct_overhead_pct\": %.2f, "
          "\"decode_cpu_s_off\": %.5f, \"decode_cpu_s_on\": %.5f, \"decode_cpu_overhead_pct\": "
          "%.2f, "
          "\"decode_cpu_s_null_observer\": %.5f, \"null_observer_cpu_overhead_pct\": %.2f, "
          "\"paired_token_s_off\": %.7f, \"paired_token_s_on\": %.7f, "
          "\"paired_overhead_pct\": %.2f, \"paired_token_s_null_observer\": %.7f, "
          "\"paired_null_observer_overhead_pct\": %.2f, "
          "\"prefill_s_off\": %.5f, \"prefill_s_on\": %.5f, "
          "\"turn_s_off\": %.5f, \"turn_s_on\": %.5f, \"turn_overhead_pct\": %.2f, "
          "\"estimator_engine_thread_s\": %.5f, \"estimator_background_s\": %.5f, "
          "\"finish_wait_s\": %.5f, \"sampled\": %s, \"rows_compared\": %lld, "
          "\"rows_represented\": %.0f}",
          i ? ", " : "", r.name.c_str(), r.shape.c_str(), r.prompt, r.decode, r.decode_tps_off,
          r.decode_tps_on, 100 * r.decode_overhead(), r.best_decode_tps_off, r.best_decode_tps_on,
          100 * r.best_decode_overhead(), r.best_decode_tps_null, 100 * r.null_overhead(),
          r.decode_engine_s, 100 * r.decode_direct(), r.decode_cpu_off, r.decode_cpu_on,
          100 * r.cpu_overhead(), r.decode_cpu_null, 100 * r.cpu_null_overhead(), r.paired_off_s,
          r.paired_on_s, 100 * r.paired_overhead(), r.paired_null_s, 100 * r.paired_null_overhead(),
          r.prefill_s_off, r.prefill_s_on, r.turn_s_off, r.turn_s_on, 100 * r.turn_overhead(),
          r.engine_thread_s, r.background_s, r.finish_s, r.sampled ? "true" : "false",
          static_cast<long long>(r.rows_compared), r.rows_represented);
    }
    std::printf("]}\n");
    return 0;
  }
  std::printf(
      "Similarity estimator overhead (%d threads, %d rounds, decode head stride %d, decode token "
      "stride %d, decode pool %s)\n",
      threads, absl::GetFlag(FLAGS_rounds), absl::GetFlag(FLAGS_decode_head_stride),
      absl::GetFlag(FLAGS_decode_token_stride), absl::GetFlag(FLAGS_decode_pool) ? "on" : "off");
  std::printf("%-14s %6s %6s | %9s %9s | %8s %8s %8s %8s %8s | %8s %8s | %8s | %s\n", "model",
              "prompt", "decode", "dec off", "dec on", "paired", "wall", "best", "cpu", "direct",
              "null prd", "null cpu", "turn", "sampled");
  for (const Row& r : rows) {
    std::printf(
        "%-14s %6d %6d | %9.1f %9.1f | %7.2f%% %7.2f%% %7.2f%% %7.2f%% %7.2f%% | %7.2f%% "
        "%7.2f%% | %7.2f%% | %s\n",
        r.name.c_str(), r.prompt, r.decode, r.decode_tps_off, r.decode_tps_on,
        100 * r.paired_overhead(), 100 * r.decode_overhead(), 100 * r.best_decode_overhead(),
        100 * r.cpu_overhead(), 100 * r.decode_direct(), 100 * r.paired_null_overhead(),
        100 * r.cpu_null_overhead(), 100 * r.turn_overhead(), r.sampled ? "yes" : "no");
  }
  std::printf(
      "(decode tokens/s: medians of whole turns. Decode overhead of the estimator, five ways:\n"
      " paired = median per-token time, observer rotated token by token (off / estimator /\n"
      " do-nothing), on/off - 1: the steadiest on a busy machine; wall = median turn throughput\n"
      " off/on - 1; best = fastest turn off/on - 1; cpu = engine-thread CPU time on/off - 1;\n"
      " direct = the estimator's own time on the engine thread / decode time off (each the\n"
      " least over the rounds, the least disturbed by other load). null = the\n"
      " same with a do-nothing observer: the engine's own share. turn = prefill + decode +\n"
      " Finish wait, on/off - 1.)\n");
  return 0;
}
