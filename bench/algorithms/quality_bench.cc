// krul-bench-quality: what each restore mode's stored KV does to the next
// turns of real conversations, with real weights, through the worker's own
// turn-end code.
//
//   build/bin/krul-bench-quality --model M [--tokenizer T] --conversations FILE
//       [--json] [--ratio 1.5] [--krul_quality_budget B] [--pair_calibration FILE]
//       [--neighbours 5] [--sensitivity_quantile Q | --sensitivity 0.9]
//       [--kv_dtype f32] [--retain_angle 180] [--estimate_decay 1]
//       [--split load|planned] [--modes a,b,...] [--max_conversations N]
//       [--profile_exact_tokens] [--krul_fixed_unless_confident]
//       [--answer_tokens 64] [--krul_prior_rows auto|R] [--calibration FILE[,FILE...]]
//
// Conversations: a ShareGPT-style JSON array ({"conversations": [{"from":
// "human"|"gpt", "value": ...}]}, optionally with a "domain" field) replayed
// as is, or MT-bench JSONL ({"turns": [...]}, user turns only) whose answers
// the model generates greedily (once, on the uncompressed cache; every mode
// then replays them). A turn is one user message and its answer; the user
// message is prefilled as a block, the answer fed token by token (the
// decode path), with the similarity estimator observing, as in a live
// session.
//
// Replay: the uncompressed reference keeps its cache. Each mode, at every
// turn end, calls PlanTurnEnd (krul/restore/turn_end.h: the function the
// worker's persister calls) with the conversation's estimate so far (every
// turn's prefill and decode, carried with --estimate_decay as the worker
// carries it in its stored record), then restores the compressed KV with
// the Restorer into a fresh cache (the estimator observing the new input, as
// the worker's restore does) and teacher-forces the next turn. Pairs:
// minicache = static mid-depth; krul-fixed = chosen once from the OTHER
// conversations (leave-one-out): by their mean measured pair costs when a
// pair calibration is given, else by their mean attention distances; krul =
// chosen per conversation at every turn end: with --pair_calibration, by
// the costs predicted from the --neighbours OTHER conversations whose
// merge-error profile is nearest (leave-one-out by conversation id), else by
// its own attention distances shrunk toward the others' by
// --krul_prior_rows ("auto" fits the weight on attention statistics alone).
// With a pair calibration, krul by attention is reported beside it
// ("krul-attention"). Measured over every position of turns 2.. : top-1
// agreement with the reference, mean KL(reference || mode) of the
// next-token distributions and the perplexity of the actual next tokens;
// per mode and per domain. The mode's cache carries its losses into later
// turns, as in production.
//
// --split load (default) stores every layer's whole history for every mode
// but recompute, so minicache, krul-fixed and krul are compared at equal
// stored bytes (same number of pairs, unless krul has a quality budget);
// --split planned uses each mode's own restore split under a probed cost
// model (recomputed prefixes are exact).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "algorithms/conversations.h"
#include "krul/compress/compression_plan.h"
#include "krul/compress/compressor.h"
#include "krul/compress/estimate_codec.h"
#include "krul/compress/pair_calibration.h"
#include "krul/compress/selector.h"
#include "krul/compress/similarity_estimator.h"
#include "krul/engine/engine_cpu.h"
#include "krul/engine/kv_cache.h"
#include "krul/engine/sampler.h"
#include "krul/model/model.h"
#include "krul/model/tokenizer.h"
#include "krul/restore/cost_model.h"
#include "krul/restore/kv_source.h"
#include "krul/restore/restore_mode.h"
#include "krul/restore/restore_plan.h"
#include "krul/restore/restorer.h"
#include "krul/restore/turn_end.h"
#include "util/bench_util.h"

ABSL_FLAG(std::string, model, "", "Model file (llama2.c .bin or GGUF)");
ABSL_FLAG(std::string, tokenizer, "", "llama2.c tokenizer file (default: the model's vocabulary)");
ABSL_FLAG(std::string, conversations, "",
          "Conversations: ShareGPT JSON array or MT-bench JSONL; several files comma-separated "
          "replay as one mixed population");
ABSL_FLAG(bool, json, false, "Print the results as one JSON object");
ABSL_FLAG(double, ratio, 1.5,
          "Target compression ratio of minicache / krul-fixed / krul (krul's cap under a "
          "quality budget)");
ABSL_FLAG(double, krul_quality_budget, 0,
          "krul: > 0 picks each conversation's ratio as the largest whose predicted loss (sum "
          "of its pairs' predicted costs, mean KL per token) fits; needs --pair_calibration");
ABSL_FLAG(std::string, pair_calibration, "",
          "Reference conversations with measured pair costs (krul-bench-pair-oracle "
          "--write_calibration); a replayed conversation never uses its own reference");
ABSL_FLAG(int, neighbours, 5, "krul: nearest references its pair costs are predicted from");
ABSL_FLAG(double, sensitivity, 1.0,
          "Selector: edge mass above which a layer is never shared (1 = none); see "
          "--sensitivity_quantile");
ABSL_FLAG(double, sensitivity_quantile, -1,
          "In [0, 1]: the threshold is this quantile of the other conversations' layers' edge "
          "masses (the pair calibration's when given); < 0: use --sensitivity");
ABSL_FLAG(std::string, kv_dtype, "f32", "Stored KV type: f32, f16 or bf16");
ABSL_FLAG(double, retain_angle, 180,
          "Units of a shared pair wider than this angle (degrees) are stored unmerged");
ABSL_FLAG(double, estimate_decay, 1.0,
          "krul: weight of the turns before in the carried estimate, per turn");
ABSL_FLAG(bool, krul_fixed_unless_confident, false,
          "krul with --pair_calibration at a fixed ratio: keep krul-fixed's pairs unless the "
          "nearest references agree krul's are cheaper (TurnEndOptions::fixed_unless_confident)");
ABSL_FLAG(bool, profile_exact_tokens, false,
          "krul: measure the merge-error profile on the tokens computed since the last restore "
          "(TurnEndInput::exact_from) instead of the whole history, whose shared pairs are "
          "merged after a restore; off = the rule the worker serves");
ABSL_FLAG(std::string, split, "load",
          "load: store whole histories (equal bytes); planned: "
          "each mode's own restore split");
ABSL_FLAG(std::string, append_tsv, "",
          "Append one tab-separated row per mode (label, ratio, budget, dtype, retain angle, "
          "fewer bytes than full fp32, perplexity increase %, agreement, kl) to this file, for "
          "quality_curves.sh");
ABSL_FLAG(std::string, modes, "",
          "Modes to replay, comma-separated (default all six; load is the bytes reference)");
ABSL_FLAG(int, max_conversations, 0, "Use at most this many conversations of each file (0 = all)");
ABSL_FLAG(int, answer_tokens, 64, "Generated answer length for conversations without answers");
ABSL_FLAG(int, threads, 1, "Engine threads");
ABSL_FLAG(std::string, calibration, "",
          "Conversation files (comma-separated) that krul-fixed's attention pairs and krul's "
          "attention prior are calibrated on; empty = the replayed conversations, leave-one-out");
ABSL_FLAG(std::string, krul_prior_rows, "auto",
          "krul by attention: shrink the conversation's own similarity toward the calibration "
          "set's by adding the latter weighted as this many attention rows; 0 = the "
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
// token) with `estimator` observing.
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

  void Add(const Metrics& o) {
    positions += o.positions;
    agree += o.agree;
    kl += o.kl;
    targets += o.targets;
    nll += o.nll;
  }
  nlohmann::json Json() const {
    return {{"agreement", positions > 0 ? static_cast<double>(agree) / positions : 0.0},
            {"kl", positions > 0 ? kl / positions : 0.0},
            {"perplexity", targets > 0 ? std::exp(nll / targets) : 0.0},
            {"positions", positions}};
  }
};

// What one mode did over all conversations.
struct ModeRun {
  Metrics all;
  std::map<std::string, Metrics> by_domain;
  double stored_bytes = 0;
  double full_bytes = 0;  // fp32 K+V of the same histories, uncompressed
  int restores = 0;
  double pairs = 0;             // summed over turn ends
  double protected_layers = 0;  // summed over turn ends
  double predicted_loss = 0;    // summed over turn ends (krul with costs)
  double retained_units = 0;
  double neighbours_same_domain = 0;  // summed share over turn ends
  std::map<std::string, int> sources;
  std::vector<std::string> pair_sets;  // per (conversation, turn end)
  std::vector<std::string> first_pair_set_per_conversation;
  std::map<std::string, std::vector<std::string>> first_sets_by_domain;
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

// The q-quantile of every layer's edge mass over `estimates` but entry `skip`.
double EdgeMassQuantile(const std::vector<krul::SimilarityEstimate>& estimates, size_t skip,
                        double q) {
  std::vector<double> masses;
  for (size_t c = 0; c < estimates.size(); ++c) {
    if (c == skip && estimates.size() > 1) continue;
    for (int l = 0; l < estimates[c].n_layers; ++l) masses.push_back(estimates[c].EdgeMass(l));
  }
  if (masses.empty()) return 1.0;
  std::sort(masses.begin(), masses.end());
  const double pos = q * (masses.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(masses.size() - 1, lo + 1);
  return masses[lo] + (pos - lo) * (masses[hi] - masses[lo]);
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
  const double budget = absl::GetFlag(FLAGS_krul_quality_budget);
  const std::string split = absl::GetFlag(FLAGS_split);
  if (split != "load" && split != "planned") {
    std::fprintf(stderr, "--split must be load or planned\n");
    return 1;
  }
  const krul::DType dtype =
      ValueOrDie(krul::ParseDType(absl::GetFlag(FLAGS_kv_dtype)), "--kv_dtype");
  std::vector<RestoreMode> modes;
  if (absl::GetFlag(FLAGS_modes).empty()) {
    modes.assign(krul::kAllRestoreModes.begin(), krul::kAllRestoreModes.end());
  } else {
    for (absl::string_view name : absl::StrSplit(absl::GetFlag(FLAGS_modes), ',')) {
      modes.push_back(ValueOrDie(krul::ParseRestoreMode(std::string(name)), "--modes"));
    }
  }
  if (std::find(modes.begin(), modes.end(), RestoreMode::kLoad) == modes.end()) {
    modes.insert(modes.begin(), RestoreMode::kLoad);  // the bytes reference
  }

  auto model = ValueOrDie(krul::LoadModel(model_path), "model");
  const krul::ModelConfig& config = model->config();
  const int L = config.n_layers;
  const krul::Tokenizer tokenizer =
      ValueOrDie(krul::Tokenizer::ForModel(*model, absl::GetFlag(FLAGS_tokenizer)), "tokenizer");
  krul::EngineOptions eo;
  eo.num_threads = absl::GetFlag(FLAGS_threads);
  auto engine = ValueOrDie(krul::Engine::Create(*model, eo), "engine");
  const krul::KvShape shape = krul::KvShape::FromConfig(config);
  const int vocab = config.vocab_size;

  std::optional<krul::PairCalibration> pair_calibration;
  if (!absl::GetFlag(FLAGS_pair_calibration).empty()) {
    pair_calibration = ValueOrDie(krul::ReadPairCalibration(absl::GetFlag(FLAGS_pair_calibration)),
                                  "--pair_calibration");
    if (pair_calibration->n_layers() != L) {
      std::fprintf(stderr, "--pair_calibration is for %d layers; the model has %d\n",
                   pair_calibration->n_layers(), L);
      return 1;
    }
  }
  if (budget > 0 && !pair_calibration.has_value()) {
    std::fprintf(stderr, "--krul_quality_budget needs --pair_calibration\n");
    return 1;
  }

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
    std::map<std::string, std::pair<int64_t, double>> by_domain;  // targets, nll
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
            const double nll = -LogSoftmax(logits[i])[tokens[i + 1]];
            r.nll += nll;
            r.targets++;
            r.by_domain[conv.domain].first++;
            r.by_domain[conv.domain].second += nll;
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

  // ---- what does not depend on the conversation's own KV ----
  // Attention priors (krul-fixed by attention, krul by attention): by default
  // the replayed set itself, leave-one-out; with --calibration, other
  // conversation files, as a deployment calibrated once on a generic set.
  std::vector<krul::SimilarityEstimate> priors;
  std::vector<krul::SimilarityEstimate> edge_population;  // for the quantile
  std::vector<double> prior_fit;
  const std::string calibration_path = absl::GetFlag(FLAGS_calibration);
  if (calibration_path.empty()) {
    priors = leave_one_out(ref.estimates);
    prior_fit = PriorFitErrors(ref.turn_estimates, priors);
    edge_population = ref.estimates;
  } else {
    std::vector<Conversation> calibration =
        ValueOrDie(krul::bench::LoadConversationFiles(calibration_path,
                                                      absl::GetFlag(FLAGS_max_conversations)),
                   "calibration conversations");
    const ReferencePass cal = reference_pass(calibration, /*keep_logits=*/false);
    krul::SimilarityEstimate population = krul::SimilarityEstimate::Empty(config.n_layers);
    for (const auto& e : cal.estimates) CheckOk(population.Merge(e), "merge");
    priors.assign(convs.size(), population);
    prior_fit = PriorFitErrors(cal.turn_estimates, leave_one_out(cal.estimates));
    edge_population = cal.estimates;
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
  const double quantile = absl::GetFlag(FLAGS_sensitivity_quantile);
  // Per conversation: the selector options, krul-fixed's pairs (leave-one-out).
  std::vector<krul::SelectorOptions> selectors;
  std::vector<krul::CompressionPlan> fixed_pairs;
  for (size_t c = 0; c < convs.size(); ++c) {
    krul::SelectorOptions so;
    so.target_ratio = ratio;
    so.quality_budget = budget;
    so.sensitivity_threshold = absl::GetFlag(FLAGS_sensitivity);
    if (quantile >= 0) {
      so.sensitivity_threshold =
          pair_calibration.has_value()
              ? ValueOrDie(pair_calibration->EdgeMassQuantile(quantile, convs[c].id), "quantile")
              : EdgeMassQuantile(edge_population, calibration_path.empty() ? c : SIZE_MAX,
                                 quantile);
    }
    selectors.push_back(so);
    krul::SelectorOptions fixed = so;
    fixed.quality_budget = 0;
    if (pair_calibration.has_value()) {
      // The best fixed choice the calibration knows: its mean measured costs.
      fixed.sensitivity_threshold = 1.0;
      auto mean = pair_calibration->MeanCost(convs[c].id);
      fixed_pairs.push_back(
          ValueOrDie(krul::SelectPlanByScore(ValueOrDie(std::move(mean), "mean cost"), {}, fixed),
                     "fixed pairs"));
    } else {
      auto plan = krul::SelectPlan(priors[c], fixed);
      fixed_pairs.push_back(plan.ok() ? *plan : krul::CompressionPlan::Uncompressed(L));
    }
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
  // Replays every conversation with `mode`'s stored KV; `use_costs` lets
  // krul predict pair costs from the pair calibration.
  auto replay = [&](RestoreMode mode, bool use_costs, ModeRun& run) {
    for (size_t c = 0; c < convs.size(); ++c) {
      const Conversation& conv = convs[c];
      if (conv.turns.size() < 2) continue;
      krul::TurnEndOptions options;
      options.shape = shape;
      options.selector = selectors[c];
      if (use_costs) {
        options.calibration = &*pair_calibration;
        options.neighbours = absl::GetFlag(FLAGS_neighbours);
        options.exclude_reference = conv.id;
      } else {
        options.selector.quality_budget = 0;
      }
      options.prior = priors[c];
      options.prior_rows = prior_rows;
      options.fixed_pairs = fixed_pairs[c];
      options.fixed_unless_confident = absl::GetFlag(FLAGS_krul_fixed_unless_confident);
      options.dtype = dtype;
      options.retain_angle_degrees = absl::GetFlag(FLAGS_retain_angle);
      options.load_all = split == "load";
      options.granularity_tokens = 8;
      auto cache = std::make_unique<krul::KvCache>(
          ValueOrDie(krul::KvCache::Create(config, config.seq_len), "cache"));
      auto estimator = ValueOrDie(krul::SimilarityEstimator::Create(config), "estimator");
      std::optional<krul::SimilarityEstimate> so_far;
      std::vector<int> history;
      int pos = 0;
      int exact_from = 0;  // first token not restored from stored KV
      for (size_t t = 0; t < conv.turns.size(); ++t) {
        const Turn& turn = conv.turns[t];
        const std::vector<int> tokens = TurnTokens(turn);
        TurnLogits logits;
        int offset = 0;
        if (t > 0) {
          // Turn end of t-1: the conversation's estimate, carried as the
          // worker carries it; the worker's turn-end decision; restore.
          const krul::SimilarityEstimate turn_estimate = estimator->Finish();
          so_far = so_far.has_value()
                       ? ValueOrDie(krul::CarryEstimate(*so_far, turn_estimate,
                                                        absl::GetFlag(FLAGS_estimate_decay)),
                                    "carry")
                       : turn_estimate;
          krul::TurnEndInput input;
          input.mode = mode;
          input.cache = cache.get();
          input.num_tokens = pos;
          input.estimate = &*so_far;
          input.exact_from = absl::GetFlag(FLAGS_profile_exact_tokens) ? exact_from : 0;
          krul::TurnEnd end = ValueOrDie(krul::PlanTurnEnd(options, input, costs), "turn end");
          run.stored_bytes += static_cast<double>(end.kv.stored_bytes());
          run.full_bytes +=
              static_cast<double>(krul::PlainBytesPerToken(shape, krul::DType::kF32)) * L * pos;
          run.retained_units += static_cast<double>(end.kv.retained_units());
          run.restores++;
          run.pairs += static_cast<double>(end.storage.pairs.size());
          run.protected_layers += end.choice.protected_layers;
          run.predicted_loss += end.choice.predicted_loss;
          run.sources[end.choice.source]++;
          for (const std::string& d : end.choice.neighbour_domains) {
            run.neighbours_same_domain +=
                (d == conv.domain ? 1.0 : 0.0) / end.choice.neighbour_domains.size();
          }
          if (RestoreModePairSource(mode) != krul::PairSource::kNone) {
            run.pair_sets.push_back(PairSet(end.storage));
            if (t == 1) {
              run.first_pair_set_per_conversation.push_back(PairSet(end.storage));
              run.first_sets_by_domain[conv.domain].push_back(PairSet(end.storage));
            }
          }
          auto source = krul::MakeInProcessKvSource(
              std::make_shared<const krul::CompressedKv>(std::move(end.kv)), {});
          auto fresh = std::make_unique<krul::KvCache>(
              ValueOrDie(krul::KvCache::Create(config, config.seq_len), "cache"));
          std::vector<float> first(vocab);
          // The estimator sees the new input, not the recomputed history
          // (as the worker's restore does).
          ValueOrDie(restorer->Restore(end.restore, history, std::span(tokens).subspan(0, 1),
                                       source.get(), *fresh, first, estimator.get()),
                     "restore");
          cache = std::move(fresh);
          exact_from = pos;  // [0, pos) restored, merged where the plan shares
          logits.push_back(std::move(first));
          offset = 1;
          pos += 1;
        }
        RestOfTurn(*engine, *cache, turn, offset, pos, estimator.get(), logits);
        pos += static_cast<int>(tokens.size()) - offset;
        history.insert(history.end(), tokens.begin(), tokens.end());
        if (t > 0) {
          Metrics m;
          Score(ref_logits[c][t], logits, tokens, m);
          run.all.Add(m);
          run.by_domain[conv.domain].Add(m);
        }
      }
    }
  };
  std::map<RestoreMode, ModeRun> runs;
  for (RestoreMode mode : modes) replay(mode, pair_calibration.has_value(), runs[mode]);
  // krul by attention beside krul by predicted costs.
  std::optional<ModeRun> krul_attention;
  const bool has_krul = std::find(modes.begin(), modes.end(), RestoreMode::kKrul) != modes.end();
  if (pair_calibration.has_value() && has_krul && budget == 0) {
    krul_attention.emplace();
    replay(RestoreMode::kKrul, false, *krul_attention);
  }

  // ---- report ----
  const double load_bytes = runs[RestoreMode::kLoad].stored_bytes;
  auto spread = [&](const ModeRun& m) {
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
    for (const auto& [domain, sets] : m.first_sets_by_domain) {
      std::map<std::string, int> f;
      for (const std::string& set : sets) {
        std::istringstream in(set);
        std::string w;
        while (in >> w) f[w]++;
      }
      s["by_domain"][domain] = {
          {"conversations", sets.size()},
          {"distinct_pair_sets_first_turn", std::set<std::string>(sets.begin(), sets.end()).size()},
          {"pair_frequency", f}};
    }
    return s;
  };
  auto summary = [&](const ModeRun& m, bool with_pairs) {
    nlohmann::json j = m.all.Json();
    j["stored_bytes"] = m.stored_bytes;
    j["bytes_vs_load"] = load_bytes > 0 ? m.stored_bytes / load_bytes : 0.0;
    j["fewer_bytes_than_full_fp32"] = m.stored_bytes > 0 ? m.full_bytes / m.stored_bytes : 0.0;
    j["restores"] = m.restores;
    if (m.restores > 0) {
      j["mean_pairs"] = m.pairs / m.restores;
      j["mean_protected_layers"] = m.protected_layers / m.restores;
      j["mean_predicted_loss"] = m.predicted_loss / m.restores;
      j["retained_units"] = m.retained_units;
      j["neighbours_of_the_same_domain"] = m.neighbours_same_domain / m.restores;
    }
    j["pair_sources"] = m.sources;
    for (const auto& [domain, dm] : m.by_domain) j["by_domain"][domain] = dm.Json();
    if (with_pairs) j["pair_spread"] = spread(m);
    return j;
  };
  nlohmann::json out;
  out["bench"] = "krul-bench-quality";
  out["model"] = model_path;
  out["model_shape"] = config.ToString();
  out["conversations"] = conv_path;
  out["conversation_count"] = convs.size();
  out["target_ratio"] = ratio;
  out["krul_quality_budget"] = budget;
  out["pair_calibration"] = absl::GetFlag(FLAGS_pair_calibration);
  out["neighbours"] = absl::GetFlag(FLAGS_neighbours);
  out["sensitivity_threshold"] = absl::GetFlag(FLAGS_sensitivity);
  out["sensitivity_quantile"] = quantile;
  out["kv_dtype"] = std::string(krul::DTypeName(dtype));
  out["retain_angle"] = absl::GetFlag(FLAGS_retain_angle);
  out["estimate_decay"] = absl::GetFlag(FLAGS_estimate_decay);
  out["profile_exact_tokens"] = absl::GetFlag(FLAGS_profile_exact_tokens);
  out["krul_fixed_unless_confident"] = absl::GetFlag(FLAGS_krul_fixed_unless_confident);
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
  for (const auto& [domain, tn] : ref.by_domain) {
    out["reference_perplexity_by_domain"][domain] =
        tn.first > 0 ? std::exp(tn.second / tn.first) : 0.0;
  }
  out["calibration"] = calibration_path.empty() ? "leave-one-out" : calibration_path;
  out["static_pairs"] =
      PairSet(ValueOrDie(krul::StaticMidDepthPlan(config.n_layers, ratio), "static pairs"));
  for (const auto& [mode, m] : runs) {
    out["modes"][std::string(krul::RestoreModeName(mode))] =
        summary(m, RestoreModePairSource(mode) != krul::PairSource::kNone);
  }
  if (krul_attention.has_value()) out["krul_attention"] = summary(*krul_attention, true);
  if (!absl::GetFlag(FLAGS_append_tsv).empty()) {
    FILE* f = std::fopen(absl::GetFlag(FLAGS_append_tsv).c_str(), "a");
    if (f == nullptr) {
      std::fprintf(stderr, "cannot append to %s\n", absl::GetFlag(FLAGS_append_tsv).c_str());
      return 1;
    }
    const double ref_ppl = out["reference_perplexity"].get<double>();
    auto tsv = [&](const std::string& label, const nlohmann::json& j) {
      std::fprintf(f, "%s\t%g\t%g\t%s\t%g\t%.4f\t%.4f\t%.4f\t%.6f\n", label.c_str(), ratio, budget,
                   std::string(krul::DTypeName(dtype)).c_str(), absl::GetFlag(FLAGS_retain_angle),
                   j["fewer_bytes_than_full_fp32"].get<double>(),
                   100.0 * (j["perplexity"].get<double>() / ref_ppl - 1.0),
                   j["agreement"].get<double>(), j["kl"].get<double>());
    };
    for (const auto& [name, j] : out["modes"].items()) {
      if (name != "recompute" && name != "cake") tsv(name, j);
    }
    if (out.contains("krul_attention")) tsv("krul-attention", out["krul_attention"]);
    std::fclose(f);
  }
  if (json) {
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf(
      "krul-bench-quality: %s (%s), %zu conversations from %s, ratio %.2f, budget %g, split %s, "
      "KV %s, retain angle %g\n",
      model_path.c_str(), config.ToString().c_str(), convs.size(), conv_path.c_str(), ratio, budget,
      split.c_str(), std::string(krul::DTypeName(dtype)).c_str(),
      absl::GetFlag(FLAGS_retain_angle));
  std::printf(
      "reference perplexity %.4f; static pairs [%s]; krul %s\n",
      out["reference_perplexity"].get<double>(), out["static_pairs"].get<std::string>().c_str(),
      pair_calibration.has_value()
          ? absl::StrCat("by predicted costs (", absl::GetFlag(FLAGS_neighbours), " neighbours)")
                .c_str()
          : absl::StrCat("by attention, prior weight ", prior_rows, " rows").c_str());
  std::printf("%-15s %9s %10s %10s %12s %8s %6s %6s\n", "mode", "agreement", "kl", "perplexity",
              "stored_bytes", "vs_load", "pairs", "prot");
  auto row = [&](const std::string& name, const nlohmann::json& j) {
    std::printf("%-15s %9.4f %10.6f %10.4f %12.0f %8.3f %6.2f %6.2f\n", name.c_str(),
                j["agreement"].get<double>(), j["kl"].get<double>(), j["perplexity"].get<double>(),
                j["stored_bytes"].get<double>(), j["bytes_vs_load"].get<double>(),
                j.value("mean_pairs", 0.0), j.value("mean_protected_layers", 0.0));
  };
  for (const auto& [name, j] : out["modes"].items()) row(name, j);
  if (out.contains("krul_attention")) row("krul-attention", out["krul_attention"]);
  for (const auto& [name, j] : out["modes"].items()) {
    if (!j.contains("pair_spread")) continue;
    const auto& s = j["pair_spread"];
    std::printf("%s pairs: %d distinct sets over %d conversations (first turn end)\n", name.c_str(),
                s["distinct_pair_sets_first_turn"].get<int>(), s["conversations"].get<int>());
    if (!s.contains("by_domain")) continue;
    for (const auto& [domain, d] : s["by_domain"].items()) {
      const auto& q = j["by_domain"][domain];
      std::printf("  %-26s agreement %.4f ppl %.3f; %d sets, pairs %s\n", domain.c_str(),
                  q["agreement"].get<double>(), q["perplexity"].get<double>(),
                  d["distinct_pair_sets_first_turn"].get<int>(),
                  d["pair_frequency"].dump().c_str());
    }
  }
  return 0;
}
