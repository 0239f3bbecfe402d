// krul-bench-quality: what each restore mode's stored KV does to the next
// turns of real conversations, with real weights.
//
//   build/bin/krul-bench-quality --model M [--tokenizer T] --conversations FILE
//       [--json] [--ratio 1.5] [--sensitivity 0.9] [--kv_dtype f32]
//       [--split load|planned] [--max_conversations N] [--answer_tokens 64]
//       [--krul_prior_rows auto|R] [--calibration FILE[,FILE...]]
//
// Conversations: a ShareGPT-style JSON array ({"conversations": [{"from":
// "human"|"gpt", "value": ...}]}) replayed as is, or MT-bench JSONL
// ({"turns": [...]}, user turns only) whose answers the model generates
// greedily (once, on the uncompressed cache; every mode then replays them).
// A turn is one user message and its answer; the user message is prefilled
// as a block, the answer fed token by token (the decode path), with the
// similarity estimator observing, as in a live session.
//
// Replay: the uncompressed reference keeps its cache. Each mode, at every
// turn end, plans its restore, compresses and stores its cache (pairs:
// minicache = static mid-depth, krul-fixed = chosen once from the average
// similarity of the OTHER conversations (leave-one-out calibration), krul =
// chosen from this conversation's own similarity so far, shrunk toward that
// same calibration average by --krul_prior_rows; with the default "auto" the
// weight is fitted on the attention statistics alone, before any quality is
// measured, and krul with weight 0 is reported beside it), restores it with
// the restore executor into a fresh cache and teacher-forces the next turn.
// Measured over every position of turns 2.. : top-1 agreement with the
// reference, mean KL(reference || mode) of the next-token distributions, and
// the perplexity of the actual next tokens. The mode's cache carries its
// losses into later turns, as in production.
//
// --split load (default) stores every layer's whole history for every mode
// but recompute, so minicache, krul-fixed and krul are compared at equal
// stored bytes (same number of pairs); --split planned uses each mode's own
// restore split under a probed cost model (recomputed prefixes are exact).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "util/bench_util.h"
#include "algorithms/conversations.h"
#include "krul/compress/compression_plan.h"
#include "krul/compress/compressor.h"
#include "krul/restore/cost_model.h"
#include "krul/engine/engine_cpu.h"
#include "krul/engine/kv_cache.h"
#include "krul/restore/kv_source.h"
#include "krul/model/model.h"
#include "krul/restore/restore_mode.h"
#include "krul/restore/restore_plan.h"
#include "krul/restore/restorer.h"
#include "krul/engine/sampler.h"
#include "krul/compress/selector.h"
#include "krul/compress/similarity_estimator.h"
#include "krul/model/tokenizer.h"

ABSL_FLAG(std::string, model, "", "Model file (llama2.c .bin or GGUF)");
ABSL_FLAG(std::string, tokenizer, "", "llama2.c tokenizer file (default: the model's vocabulary)");
ABSL_FLAG(std::string, conversations, "",
          "Conversations: ShareGPT JSON array or MT-bench JSONL; several files comma-separated "
          "replay as one mixed population");
ABSL_FLAG(bool, json, false, "Print the results as one JSON object");
ABSL_FLAG(double, ratio, 1.5, "Target compression ratio of minicache / krul-fixed / krul");
ABSL_FLAG(double, sensitivity, 0.9, "Selector: edge mass above which a layer is never shared");
ABSL_FLAG(std::string, kv_dtype, "f32", "Stored KV type: f32, f16 or bf16");
ABSL_FLAG(std::string, split, "load",
          "load: store whole histories (equal bytes); planned: "
          "each mode's own restore split");
ABSL_FLAG(int, max_conversations, 0, "Use at most this many conversations of each file (0 = all)");
ABSL_FLAG(int, answer_tokens, 64, "Generated answer length for conversations without answers");
ABSL_FLAG(int, threads, 1, "Engine threads");
ABSL_FLAG(std::string, calibration, "",
          "Conversation files (comma-separated) that krul-fixed's pairs and krul's prior are "
          "calibrated on; empty = the replayed conversations, leave-one-out");
ABSL_FLAG(std::string, krul_prior_rows, "auto",
          "krul: shrink the conversation's own similarity toward the calibration set's "
          "(krul-fixed's) by adding the latter weighted as this many attention rows; 0 = the "
          "conversation's own only; auto = the weight that best predicts each next turn's "
          "distances on the calibration set (leave-one-out), chosen before any quality is "
          "measured");

namespace {

using krul::RestoreMode;
using krul::bench::CheckOk;
using krul::bench::Conversation;
using krul::bench::LogSoftmax;
using krul::bench::Turn;
using krul::bench::TurnTokens;
using krul::bench::ValueOrDie;

// ---- replay -------------------------------------------------------------------

// Logits (rows of vocab floats) of every position of one turn.
using TurnLogits = std::vector<std::vector<float>>;

// Runs `tokens` at `pos` as one block and appends every position's logits.
void Block(krul::Engine& engine, krul::KvCache& cache, std::span<const int> tokens, int pos,
           TurnLogits& out) {
  if (tokens.empty()) return;
  const int vocab = engine.config().vocab_size;
  std::vector<float> logits(tokens.size() * vocab);
  CheckOk(engine.Forward(cache, tokens, pos, logits), "forward");
  for (size_t t = 0; t < tokens.size(); ++t) {
    out.emplace_back(logits.begin() + t * vocab, logits.begin() + (t + 1) * vocab);
  }
}

// Runs the rest of a turn from `offset` (prompt as a block, answer token by
// token) with `estimator` observing. Returns the positions consumed.
void RestOfTurn(krul::Engine& engine, krul::KvCache& cache, const Turn& turn, int offset, int pos,
                krul::SimilarityEstimator* estimator, TurnLogits& out) {
  CheckOk(engine.SetAttentionObserver(estimator), "observer");
  const int np = static_cast<int>(turn.prompt_tokens.size());
  if (offset < np) {
    Block(engine, cache, std::span(turn.prompt_tokens).subspan(offset), pos, out);
    pos += np - offset;
    offset = np;
  }
  for (size_t i = offset - np; i < turn.answer_tokens.size(); ++i) {
    Block(engine, cache, std::span(turn.answer_tokens).subspan(i, 1), pos++, out);
  }
  CheckOk(engine.SetAttentionObserver(nullptr), "observer");
}


struct Metrics {
  int64_t positions = 0;
  int64_t agree = 0;
  double kl = 0;
  int64_t targets = 0;
  double nll = 0;
  double stored_bytes = 0;
  int restores = 0;
  std::vector<std::string> pair_sets;  // per (conversation, turn end)
  std::vector<std::string> first_pair_set_per_conversation;
};

void Score(const TurnLogits& ref, const TurnLogits& got, const std::vector<int>& tokens,
           Metrics& m) {
  for (size_t i = 0; i < ref.size() && i < got.size(); ++i) {
    const std::vector<double> lp = LogSoftmax(ref[i]), lq = LogSoftmax(got[i]);
    m.kl += krul::bench::KlDivergence(lp, lq);
    m.agree += krul::ArgMax(ref[i]) == krul::ArgMax(got[i]);
    m.positions++;
    if (i + 1 < tokens.size()) {
      m.nll -= lq[tokens[i + 1]];
      m.targets++;
    }
  }
}

std::string PairSet(const krul::CompressionPlan& plan) {
  std::vector<std::string> parts;
  for (const krul::LayerPair& p : plan.pairs) parts.push_back(absl::StrCat(p.first, "-", p.second));
  std::sort(parts.begin(), parts.end());
  return absl::StrJoin(parts, " ");
}

double Jaccard(const std::string& a, const std::string& b) {
  auto split = [](const std::string& s) {
    std::set<std::string> out;
    std::istringstream in(s);
    std::string w;
    while (in >> w) out.insert(w);
    return out;
  };
  const auto x = split(a), y = split(b);
  if (x.empty() && y.empty()) return 0;
  int inter = 0;
  for (const auto& w : x) inter += y.count(w);
  const int uni = static_cast<int>(x.size() + y.size()) - inter;
  return 1.0 - static_cast<double>(inter) / uni;
}

// Squared error of `predicted`'s mean pair distances against `actual`'s.
double PairDistanceError(const krul::SimilarityEstimate& predicted,
                         const krul::SimilarityEstimate& actual) {
  double err = 0;
  for (int a = 0; a < actual.n_layers; ++a) {
    for (int b = a + 1; b < actual.n_layers; ++b) {
      const double d = predicted.MeanDistance(a, b) - actual.MeanDistance(a, b);
      err += d * d;
    }
  }
  return err;
}

// The prior weights tried by --krul_prior_rows auto (attention rows; the
// last stands for "the population only").
constexpr double kPriorRowGrid[] = {0,    125,  250,   500,   1000,  2000,
                                    4000, 8000, 16000, 32000, 64000, 1e9};

// For each prior weight: the mean over (conversation, turn >= 1) of the
// squared error of predicting that turn's pair distances from the turns
// before it shrunk toward the conversation's leave-one-out prior. Uses only
// attention statistics, never the quality metrics reported.
std::vector<double> PriorFitErrors(
    const std::vector<std::vector<krul::SimilarityEstimate>>& turn_estimates,
    const std::vector<krul::SimilarityEstimate>& priors) {
  std::vector<double> errors;
  for (double rows : kPriorRowGrid) {
    double err = 0;
    int n = 0;
    for (size_t c = 0; c < turn_estimates.size(); ++c) {
      const auto& turns = turn_estimates[c];
      if (turns.empty()) continue;
      krul::SimilarityEstimate so_far = krul::SimilarityEstimate::Empty(turns[0].n_layers);
      for (size_t t = 0; t + 1 < turns.size(); ++t) {
        CheckOk(so_far.Merge(turns[t]), "merge");
        if (turns[t + 1].rows_represented <= 0) continue;
        auto predicted = krul::ShrinkToward(so_far, priors[c], rows);
        CheckOk(predicted.status(), "shrink");
        err += PairDistanceError(*predicted, turns[t + 1]);
        ++n;
      }
    }
    errors.push_back(n > 0 ? err / n : 0.0);
  }
  return errors;
}

krul::CompressionPlan Select(const krul::SimilarityEstimate& e, int n_layers, double ratio,
                             double sensitivity) {
  krul::SelectorOptions so;
  so.target_ratio = ratio;
  so.sensitivity_threshold = sensitivity;
  auto plan = krul::SelectPlan(e, so);
  if (!plan.ok()) return krul::CompressionPlan::Uncompressed(n_layers);
  return *plan;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Quality of each restore mode's stored KV on real conversations");
  absl::ParseCommandLine(argc, argv);
  const std::string model_path = absl::GetFlag(FLAGS_model);
  const std::string conv_path = absl::GetFlag(FLAGS_conversations);
  if (model_path.empty() || conv_path.empty()) {
    std::fprintf(stderr, "--model and --conversations are required\n");
    return 1;
  }
  const bool json = absl::GetFlag(FLAGS_json);
  const double ratio = absl::GetFlag(FLAGS_ratio);
  const double sensitivity = absl::GetFlag(FLAGS_sensitivity);
  const std::string split = absl::GetFlag(FLAGS_split);
  if (split != "load" && split != "planned") {
    std::fprintf(stderr, "--split must be load or planned\n");
    return 1;
  }
  const krul::DType dtype =
      ValueOrDie(krul::ParseDType(absl::GetFlag(FLAGS_kv_dtype)), "--kv_dtype");

  auto model = ValueOrDie(krul::LoadModel(model_path), "model");
  const krul::ModelConfig& config = model->config();
  const krul::Tokenizer tokenizer =
      ValueOrDie(krul::Tokenizer::ForModel(*model, absl::GetFlag(FLAGS_tokenizer)), "tokenizer");
  krul::EngineOptions eo;
  eo.num_threads = absl::GetFlag(FLAGS_threads);
  auto engine = ValueOrDie(krul::Engine::Create(*model, eo), "engine");
  const krul::KvShape shape = krul::KvShape::FromConfig(config);
  const int vocab = config.vocab_size;

  // Several files replay as one mixed population (krul-fixed's calibration
  // and krul's prior then span every kind of conversation, as in a worker
  // that serves them all).
  std::vector<Conversation> convs = ValueOrDie(
      krul::bench::LoadConversationFiles(conv_path, absl::GetFlag(FLAGS_max_conversations)),
      "conversations");

  // ---- reference pass: tokenize, generate missing answers, keep logits ----
  struct ReferencePass {
    std::vector<std::vector<TurnLogits>> logits;  // per conversation, per turn
    std::vector<std::vector<krul::SimilarityEstimate>> turn_estimates;
    std::vector<krul::SimilarityEstimate> estimates;  // whole conversations
    int64_t targets = 0;
    double nll = 0;
  };
  // Drops the turns that do not fit the context from `list`.
  auto reference_pass = [&](std::vector<Conversation>& list, bool keep_logits) {
    ReferencePass r;
    r.logits.resize(list.size());
    r.turn_estimates.resize(list.size());
    for (size_t c = 0; c < list.size(); ++c) {
      Conversation& conv = list[c];
      auto cache = ValueOrDie(krul::KvCache::Create(config, config.seq_len), "cache");
      auto estimator = ValueOrDie(krul::SimilarityEstimator::Create(config), "estimator");
      int pos = 0;
      std::vector<Turn> kept;
      for (size_t t = 0; t < conv.turns.size(); ++t) {
        Turn turn = conv.turns[t];
        turn.prompt_tokens = tokenizer.Encode(turn.user, /*bos=*/t == 0, false);
        const bool generate = turn.answer.empty();
        if (!generate) turn.answer_tokens = tokenizer.Encode(turn.answer, false, false);
        const int answer_len = generate ? absl::GetFlag(FLAGS_answer_tokens)
                                        : static_cast<int>(turn.answer_tokens.size());
        // Turns that would not fit the context end the conversation.
        if (pos + static_cast<int>(turn.prompt_tokens.size()) + answer_len + 1 > config.seq_len)
          break;
        TurnLogits logits;
        CheckOk(engine->SetAttentionObserver(estimator.get()), "observer");
        Block(*engine, cache, turn.prompt_tokens, pos, logits);
        pos += static_cast<int>(turn.prompt_tokens.size());
        if (generate) {
          // Greedy answer from the uncompressed model, fed back token by token.
          for (int i = 0; i < answer_len; ++i) {
            const int next = krul::ArgMax(logits.back());
            turn.answer_tokens.push_back(next);
            Block(*engine, cache, std::span(turn.answer_tokens).subspan(i, 1), pos++, logits);
          }
        } else {
          for (size_t i = 0; i < turn.answer_tokens.size(); ++i) {
            Block(*engine, cache, std::span(turn.answer_tokens).subspan(i, 1), pos++, logits);
          }
        }
        CheckOk(engine->SetAttentionObserver(nullptr), "observer");
        r.turn_estimates[c].push_back(estimator->Finish());
        const std::vector<int> tokens = TurnTokens(turn);
        if (t > 0) {
          for (size_t i = 0; i + 1 < tokens.size(); ++i) {
            r.nll -= LogSoftmax(logits[i])[tokens[i + 1]];
            r.targets++;
          }
        }
        if (keep_logits) r.logits[c].push_back(std::move(logits));
        kept.push_back(std::move(turn));
      }
      conv.turns = std::move(kept);
      krul::SimilarityEstimate whole = krul::SimilarityEstimate::Empty(config.n_layers);
      for (const auto& e : r.turn_estimates[c]) CheckOk(whole.Merge(e), "merge");
      r.estimates.push_back(std::move(whole));
    }
    return r;
  };
  const ReferencePass ref = reference_pass(convs, /*keep_logits=*/true);
  const auto& ref_logits = ref.logits;

  // Leave-one-out populations: entry c merges every estimate but c's.
  auto leave_one_out = [&](const std::vector<krul::SimilarityEstimate>& all) {
    std::vector<krul::SimilarityEstimate> out;
    for (size_t c = 0; c < all.size(); ++c) {
      krul::SimilarityEstimate merged = krul::SimilarityEstimate::Empty(config.n_layers);
      for (size_t j = 0; j < all.size(); ++j) {
        if (j != c || all.size() == 1) CheckOk(merged.Merge(all[j]), "merge");
      }
      out.push_back(std::move(merged));
    }
    return out;
  };

  // ---- pairs that do not depend on the conversation ----
  const krul::CompressionPlan static_pairs =
      ValueOrDie(krul::StaticMidDepthPlan(config.n_layers, ratio), "static pairs");
  // krul-fixed's pairs and krul's prior: by default the replayed set itself,
  // leave-one-out (the calibration set is drawn from the same traffic); with
  // --calibration, other conversation files, as a deployment calibrated once
  // on a generic set would be.
  std::vector<krul::CompressionPlan> fixed_pairs;
  std::vector<krul::SimilarityEstimate> priors;  // krul's shrinkage target, the same set
  std::vector<double> prior_fit;
  const std::string calibration_path = absl::GetFlag(FLAGS_calibration);
  if (calibration_path.empty()) {
    priors = leave_one_out(ref.estimates);
    prior_fit = PriorFitErrors(ref.turn_estimates, priors);
  } else {
    std::vector<Conversation> calibration = ValueOrDie(
        krul::bench::LoadConversationFiles(calibration_path,
                                           absl::GetFlag(FLAGS_max_conversations)),
        "calibration conversations");
    const ReferencePass cal = reference_pass(calibration, /*keep_logits=*/false);
    krul::SimilarityEstimate population = krul::SimilarityEstimate::Empty(config.n_layers);
    for (const auto& e : cal.estimates) CheckOk(population.Merge(e), "merge");
    priors.assign(convs.size(), population);
    prior_fit = PriorFitErrors(cal.turn_estimates, leave_one_out(cal.estimates));
  }
  for (const krul::SimilarityEstimate& prior : priors) {
    fixed_pairs.push_back(Select(prior, config.n_layers, ratio, sensitivity));
  }
  const std::string prior_flag = absl::GetFlag(FLAGS_krul_prior_rows);
  double prior_rows = 0;
  if (prior_flag == "auto") {
    const size_t best = std::min_element(prior_fit.begin(), prior_fit.end()) - prior_fit.begin();
    prior_rows = kPriorRowGrid[best];
  } else if (!absl::SimpleAtod(prior_flag, &prior_rows) || !std::isfinite(prior_rows) ||
             prior_rows < 0) {
    std::fprintf(stderr, "--krul_prior_rows must be auto or a number >= 0\n");
    return 1;
  }

  // Costs for --split planned: a quick probe of this engine and a link that
  // balances load and recompute at the context length.
  krul::CostCoefficients costs;
  if (split == "planned") {
    krul::ComputeProbeOptions cpo;
    cpo.token_counts = {16, 64, std::max(65, config.seq_len / 2)};
    costs.compute = ValueOrDie(krul::ProbeCompute(*engine, cpo), "probe");
    costs.load.latency_s = 20e-6;
    costs.load.bytes_per_second = static_cast<double>(krul::PlainBytesPerToken(shape, dtype)) *
                                  config.seq_len /
                                  std::max(1e-9, costs.compute.LayerSeconds(0, config.seq_len));
  } else {
    costs.compute.per_token_s = 1e-6;
    costs.load.bytes_per_second = 1e9;
  }

  auto restorer = ValueOrDie(krul::Restorer::Create(*engine), "restorer");
  std::map<RestoreMode, Metrics> metrics;
  // Replays every conversation with `mode`'s stored KV; krul's pairs come
  // from its own estimate shrunk toward the prior by `krul_prior_rows`.
  auto replay = [&](RestoreMode mode, double krul_prior_rows, Metrics& m) {
    for (size_t c = 0; c < convs.size(); ++c) {
      const Conversation& conv = convs[c];
      if (conv.turns.size() < 2) continue;
      auto cache = std::make_unique<krul::KvCache>(
          ValueOrDie(krul::KvCache::Create(config, config.seq_len), "cache"));
      auto estimator = ValueOrDie(krul::SimilarityEstimator::Create(config), "estimator");
      krul::SimilarityEstimate so_far = krul::SimilarityEstimate::Empty(config.n_layers);
      std::vector<int> history;
      int pos = 0;
      for (size_t t = 0; t < conv.turns.size(); ++t) {
        const Turn& turn = conv.turns[t];
        const std::vector<int> tokens = TurnTokens(turn);
        TurnLogits logits;
        int offset = 0;
        if (t > 0) {
          // Turn end of t-1: plan, compress, store; turn start: restore.
          CheckOk(so_far.Merge(estimator->Finish()), "merge");
          const krul::CompressionPlan& pairs =
              mode == RestoreMode::kMiniCache ? static_pairs
              : mode == RestoreMode::kKrulFixed
                  ? fixed_pairs[c]
                  : [&] {
                      return Select(
                          ValueOrDie(krul::ShrinkToward(so_far, priors[c], krul_prior_rows), "prior"),
                          config.n_layers, ratio, sensitivity);
                    }();
          const krul::CompressionPlan storage =
              krul::StoragePlanForMode(mode, pairs, config.n_layers);
          krul::RestoreProblem problem;
          problem.n_layers = config.n_layers;
          problem.history_tokens = pos;
          problem.new_tokens = static_cast<int>(tokens.size());
          problem.layout = krul::LayoutForPlan(shape, storage, dtype);
          problem.policy = split == "planned" || mode == RestoreMode::kRecompute
                               ? krul::RestoreModeSplitPolicy(mode)
                               : krul::SplitPolicy::kLoadAll;
          problem.granularity_tokens = 8;
          const krul::RestorePlan plan = ValueOrDie(krul::PlanRestore(problem, costs), "plan");
          krul::CompressorOptions co;
          co.dtype = dtype;
          auto kv = ValueOrDie(
              krul::CompressKv(*cache, shape, storage, pos, plan.recompute_tokens, co), "compress");
          m.stored_bytes += static_cast<double>(kv.stored_bytes());
          m.restores++;
          if (RestoreModePairSource(mode) != krul::PairSource::kNone) {
            m.pair_sets.push_back(PairSet(storage));
            if (t == 1) m.first_pair_set_per_conversation.push_back(PairSet(storage));
          }
          auto source = krul::MakeInProcessKvSource(
              std::make_shared<const krul::CompressedKv>(std::move(kv)), {});
          auto fresh = std::make_unique<krul::KvCache>(
              ValueOrDie(krul::KvCache::Create(config, config.seq_len), "cache"));
          std::vector<float> first(vocab);
          ValueOrDie(restorer->Restore(plan, history, std::span(tokens).subspan(0, 1), source.get(),
                                       *fresh, first),
                     "restore");
          cache = std::move(fresh);
          logits.push_back(std::move(first));
          offset = 1;
          pos += 1;
        }
        RestOfTurn(*engine, *cache, turn, offset, pos, estimator.get(), logits);
        pos += static_cast<int>(tokens.size()) - offset;
        history.insert(history.end(), tokens.begin(), tokens.end());
        if (t > 0) Score(ref_logits[c][t], logits, tokens, m);
      }
    }
  };
  for (RestoreMode mode : krul::kAllRestoreModes) replay(mode, prior_rows, metrics[mode]);
  // The paper's rule as is (the conversation's own estimate only), for
  // comparison whenever krul itself leans on the prior.
  Metrics own_only;
  if (prior_rows > 0) replay(RestoreMode::kKrul, 0, own_only);

  // ---- report ----
  auto spread = [&](const Metrics& m) {
    nlohmann::json s;
    std::map<std::string, int> freq;
    for (const std::string& set : m.first_pair_set_per_conversation) {
      std::istringstream in(set);
      std::string w;
      while (in >> w) freq[w]++;
    }
    std::set<std::string> distinct(m.first_pair_set_per_conversation.begin(),
                                   m.first_pair_set_per_conversation.end());
    std::set<std::string> distinct_all(m.pair_sets.begin(), m.pair_sets.end());
    double jd = 0;
    int n = 0;
    const auto& v = m.first_pair_set_per_conversation;
    for (size_t i = 0; i < v.size(); ++i) {
      for (size_t j = i + 1; j < v.size(); ++j) {
        jd += Jaccard(v[i], v[j]);
        ++n;
      }
    }
    s["conversations"] = v.size();
    s["distinct_pair_sets_first_turn"] = distinct.size();
    s["distinct_pair_sets_all_turns"] = distinct_all.size();
    s["turn_ends"] = m.pair_sets.size();
    s["mean_jaccard_distance"] = n > 0 ? jd / n : 0.0;
    s["pair_frequency"] = freq;
    s["per_conversation"] = v;
    return s;
  };
  nlohmann::json out;
  out["bench"] = "krul-bench-quality";
  out["model"] = model_path;
  out["model_shape"] = config.ToString();
  out["conversations"] = conv_path;
  out["conversation_count"] = convs.size();
  out["target_ratio"] = ratio;
  out["sensitivity_threshold"] = sensitivity;
  out["kv_dtype"] = std::string(krul::DTypeName(dtype));
  out["split"] = split;
  out["krul_prior_rows"] = prior_rows;
  out["krul_prior_rows_fitted"] = prior_flag == "auto";
  {
    nlohmann::json fit = nlohmann::json::array();
    for (size_t i = 0; i < prior_fit.size(); ++i) {
      fit.push_back({{"rows", kPriorRowGrid[i]}, {"next_turn_distance_error", prior_fit[i]}});
    }
    out["krul_prior_fit"] = fit;
  }
  out["reference_perplexity"] = ref.targets > 0 ? std::exp(ref.nll / ref.targets) : 0.0;
  out["calibration"] = calibration_path.empty() ? "leave-one-out" : calibration_path;
  out["static_pairs"] = PairSet(static_pairs);
  auto summary = [&](const Metrics& m, bool with_pairs) {
    nlohmann::json j;
    j["agreement"] = m.positions > 0 ? static_cast<double>(m.agree) / m.positions : 0.0;
    j["kl"] = m.positions > 0 ? m.kl / m.positions : 0.0;
    j["perplexity"] = m.targets > 0 ? std::exp(m.nll / m.targets) : 0.0;
    j["stored_bytes"] = m.stored_bytes;
    j["positions"] = m.positions;
    j["restores"] = m.restores;
    if (with_pairs) j["pair_spread"] = spread(m);
    return j;
  };
  for (auto& [mode, m] : metrics) {
    out["modes"][std::string(krul::RestoreModeName(mode))] =
        summary(m, RestoreModePairSource(mode) != krul::PairSource::kNone);
  }
  // Outside "modes": the same krul mode with the prior weight 0.
  if (prior_rows > 0) out["krul_own_estimate_only"] = summary(own_only, true);
  if (json) {
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf(
      "krul-bench-quality: %s (%s), %zu conversations from %s, ratio %.2f, split %s, KV %s\n",
      model_path.c_str(), config.ToString().c_str(), convs.size(), conv_path.c_str(), ratio,
      split.c_str(), std::string(krul::DTypeName(dtype)).c_str());
  std::printf("reference perplexity %.4f; static pairs [%s]\n",
              out["reference_perplexity"].get<double>(), PairSet(static_pairs).c_str());
  std::printf("krul prior weight %g rows (%s)\n", prior_rows,
              prior_flag == "auto" ? "fitted: best next-turn distance prediction" : "given");
  std::printf("%-11s %9s %10s %10s %12s\n", "mode", "agreement", "kl", "perplexity",
              "stored_bytes");
  for (RestoreMode mode : krul::kAllRestoreModes) {
    const auto& j = out["modes"][std::string(krul::RestoreModeName(mode))];
    std::printf("%-11s %9.4f %10.6f %10.4f %12.0f\n",
                std::string(krul::RestoreModeName(mode)).c_str(), j["agreement"].get<double>(),
                j["kl"].get<double>(), j["perplexity"].get<double>(),
                j["stored_bytes"].get<double>());
  }
  if (out.contains("krul_own_estimate_only")) {
    const auto& j = out["krul_own_estimate_only"];
    std::printf("%-11s %9.4f %10.6f %10.4f %12.0f  (krul with prior weight 0: own estimate only)\n",
                "krul-own", j["agreement"].get<double>(), j["kl"].get<double>(),
                j["perplexity"].get<double>(), j["stored_bytes"].get<double>());
  }
  for (RestoreMode mode : {RestoreMode::kMiniCache, RestoreMode::kKrulFixed, RestoreMode::kKrul}) {
    const auto& s = out["modes"][std::string(krul::RestoreModeName(mode))]["pair_spread"];
    std::printf(
        "%s pairs: %d distinct sets over %d conversations (first turn end), mean Jaccard "
        "distance %.3f; frequency %s\n",
        std::string(krul::RestoreModeName(mode)).c_str(),
        s["distinct_pair_sets_first_turn"].get<int>(), s["conversations"].get<int>(),
        s["mean_jaccard_distance"].get<double>(), s["pair_frequency"].dump().c_str());
  }
  if (out.contains("krul_own_estimate_only")) {
    const auto& s = out["krul_own_estimate_only"]["pair_spread"];
    std::printf("krul-own pairs: %d distinct sets over %d conversations (first turn end), mean "
                "Jaccard distance %.3f\n",
                s["distinct_pair_sets_first_turn"].get<int>(), s["conversations"].get<int>(),
                s["mean_jaccard_distance"].get<double>());
  }
  std::printf("prior fit (rows: mean squared error predicting the next turn's pair distances):");
  for (size_t i = 0; i < prior_fit.size(); ++i) {
    std::printf(" %g: %.4f", kPriorRowGrid[i], prior_fit[i]);
  }
  std::printf("\n");
  return 0;
}
