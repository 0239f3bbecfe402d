// krul-bench-pair-oracle: is there a per-conversation choice of shared layer
// pairs to be found at all, and does krul's rule find it? Krul's premise is
// that different conversations are best served by different pairs. This
// program measures that premise directly, with real weights, and every
// selection rule against it.
//
//   build/bin/krul-bench-pair-oracle --model M [--tokenizer T]
//       --conversations FILE[,FILE...] [--ratio 1.5] [--max_conversations N]
//       [--answer_tokens 64] [--neighbours 5] [--sensitivity_quantile 0.9]
//       [--write_calibration FILE] [--dump FILE] [--self_probe] [--json]
//
// For every conversation with a second turn: the first turn runs with the
// similarity estimator observing; its merge errors (merge_error.h) are
// measured on its cache; then, for EVERY layer pair (a, b), the first turn's
// KV is stored with only that pair shared (SLERP, as the compressor does),
// restored, and the second turn teacher-forced (PlanProbe, pair_costs.h);
// its mean KL against the uncompressed cache is the pair's measured *cost*
// for this conversation. From these:
//  - consistency: Spearman correlation between a conversation's pair costs
//    and the average of the other conversations' (1 = every conversation
//    ranks the pairs the same way: nothing to gain from choosing per
//    conversation);
//  - how well each score predicts the costs (Spearman): the conversation's
//    own attention distances, the others' average, and krul's predicted
//    costs (the mean cost of the `neighbours` other conversations nearest by
//    merge-error profile, PairCalibration::Predict);
//  - selections at the target ratio, each measured for real (all pairs
//    shared at once) on the second turn. krul's is made by the product's
//    own code (ChooseTurnEndPairs, turn_end.h) with the other conversations
//    as its calibration set (leave-one-out); the others by the product's
//    selector (SelectPlanByScore) on a score: own attention (the paper's
//    rule, without and with edge-mass protection at the calibration's
//    quantile), the others' attention (krul-fixed by attention), the
//    others' mean measured costs (krul-fixed by measured costs: the best
//    fixed choice) and this conversation's own measured costs (an oracle no
//    online rule can beat with single-pair information);
//  - per domain (the records' "domain" field, else the file name), the pairs
//    each rule picks.
// --write_calibration writes every conversation as a reference (its merge
// errors, edge masses and measured costs) for krul-bench-quality
// --pair_calibration and krul-worker --krul_calibration.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "algorithms/conversations.h"
#include "krul/compress/compression_plan.h"
#include "krul/compress/compressor.h"
#include "krul/compress/merge_error.h"
#include "krul/compress/pair_calibration.h"
#include "krul/compress/pair_costs.h"
#include "krul/compress/selector.h"
#include "krul/compress/similarity_estimator.h"
#include "krul/engine/engine_cpu.h"
#include "krul/engine/kv_cache.h"
#include "krul/engine/sampler.h"
#include "krul/model/model.h"
#include "krul/model/tokenizer.h"
#include "krul/restore/turn_end.h"
#include "util/bench_util.h"

ABSL_FLAG(std::string, model, "", "Model file (llama2.c .bin or GGUF)");
ABSL_FLAG(std::string, tokenizer, "", "llama2.c tokenizer file (default: the model's vocabulary)");
ABSL_FLAG(std::string, conversations, "",
          "Conversations: ShareGPT JSON array or MT-bench JSONL; several files comma-separated");
ABSL_FLAG(double, ratio, 1.5, "Target compression ratio of the selections");
ABSL_FLAG(int, max_conversations, 0, "Use at most this many conversations of each file (0 = all)");
ABSL_FLAG(int, answer_tokens, 64, "Generated answer length for conversations without answers");
ABSL_FLAG(int, neighbours, 5, "krul: nearest calibration conversations its costs come from");
ABSL_FLAG(double, sensitivity_quantile, 0.9,
          "Edge-mass quantile (over the other conversations' layers) above which a layer is "
          "protected, for the protected attention rule");
ABSL_FLAG(bool, json, false, "Print the results as one JSON object");
ABSL_FLAG(std::string, write_calibration, "",
          "Write every conversation as a pair-calibration reference to this file");
ABSL_FLAG(std::string, dump, "",
          "Write every case's per-pair scores and measured costs to this JSON file");
ABSL_FLAG(bool, self_probe, false,
          "Also measure each pair's cost on the second half of turn 1 with the first half "
          "stored (a probe of the conversation's own past; doubles the run time)");
ABSL_FLAG(int, recent_queries, 32,
          "Attention-weighted merge errors in --dump: the last this many history queries");

namespace {

using krul::bench::CheckOk;
using krul::bench::Conversation;
using krul::bench::Turn;
using krul::bench::ValueOrDie;

// Ranks (0 = smallest; ties in index order) of `v`.
std::vector<double> Ranks(const std::vector<double>& v) {
  std::vector<size_t> order(v.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return v[a] < v[b]; });
  std::vector<double> rank(v.size());
  for (size_t i = 0; i < order.size(); ++i) rank[order[i]] = static_cast<double>(i);
  return rank;
}

double Spearman(const std::vector<double>& x, const std::vector<double>& y) {
  const std::vector<double> rx = Ranks(x), ry = Ranks(y);
  const double mean = (static_cast<double>(x.size()) - 1) / 2;
  double sxy = 0, sxx = 0, syy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    sxy += (rx[i] - mean) * (ry[i] - mean);
    sxx += (rx[i] - mean) * (rx[i] - mean);
    syy += (ry[i] - mean) * (ry[i] - mean);
  }
  return sxx > 0 && syy > 0 ? sxy / std::sqrt(sxx * syy) : 0.0;
}

// One conversation's first turn, ready for the pair experiments.
struct Case {
  explicit Case(krul::KvCache c) : cache(std::move(c)) {}
  std::string id;
  std::string domain;
  krul::KvCache cache;  // after turn 1 (uncompressed)
  int history = 0;      // its tokens
  krul::SimilarityEstimate estimate;
  krul::MergeErrors merge;
  std::unique_ptr<krul::PlanProbe> probe;  // turn 2, teacher-forced
  // Per pair (a < b in row order): own MeanDistance (turn 1), measured KL
  // on turn 2.
  std::vector<double> attention;
  std::vector<double> cost;
  // --dump only: merge errors weighted by the attention each key received
  // from all of turn 1's queries and from its last ones; --self_probe.
  std::vector<double> merge_key_all, merge_value_all, merge_key_recent, merge_value_recent;
  std::vector<double> self_probe;
};

// Forwards to the estimator and keeps, per layer, the attention every
// query gave every key (summed over heads): (layer, query, key).
class ReceivedAttention : public krul::AttentionObserver {
 public:
  ReceivedAttention(krul::AttentionObserver* inner, int n_layers, int capacity)
      : inner_(inner),
        capacity_(capacity),
        mass_(static_cast<size_t>(n_layers) * capacity * capacity, 0.0f) {}
  void OnAttention(const krul::AttentionWeights& w) override {
    for (int q = 0; q < w.num_queries; ++q) {
      const int pos = w.query_begin + q;
      float* to = mass_.data() + (static_cast<size_t>(w.layer) * capacity_ + pos) * capacity_;
      for (int h = 0; h < w.n_heads; ++h) {
        const float* row = w.row(h, q);
        for (int k = 0; k <= pos; ++k) to[k] += row[k];
      }
    }
    inner_->OnAttention(w);
  }
  float* DecodeBuffer(int layer, int position, int n_heads, int context_len) override {
    return inner_->DecodeBuffer(layer, position, n_heads, context_len);
  }
  // (n_layers, n) weights of keys [0, n) from queries [q_begin, n).
  std::vector<double> KeyWeights(int n_layers, int n, int q_begin) const {
    std::vector<double> w(static_cast<size_t>(n_layers) * n, 0.0);
    for (int l = 0; l < n_layers; ++l) {
      for (int q = std::max(0, q_begin); q < n; ++q) {
        const float* from = mass_.data() + (static_cast<size_t>(l) * capacity_ + q) * capacity_;
        for (int k = 0; k <= q; ++k) w[static_cast<size_t>(l) * n + k] += from[k];
      }
    }
    return w;
  }

 private:
  krul::AttentionObserver* inner_;
  int capacity_;
  std::vector<float> mass_;
};

// Runs `tokens` from `pos` (the first `block` as one block, the rest token
// by token, as a live turn) and returns every position's logits.
std::vector<std::vector<float>> RunTurn(krul::Engine& engine, krul::KvCache& cache,
                                        const std::vector<int>& tokens, int block, int pos) {
  const int vocab = engine.config().vocab_size;
  std::vector<std::vector<float>> out;
  std::vector<float> logits(static_cast<size_t>(std::max(block, 1)) * vocab);
  if (block > 0) {
    CheckOk(engine.Forward(cache, std::span(tokens).subspan(0, block), pos, logits), "forward");
    for (int t = 0; t < block; ++t) {
      out.emplace_back(logits.begin() + t * vocab, logits.begin() + (t + 1) * vocab);
    }
  }
  for (size_t i = block; i < tokens.size(); ++i) {
    CheckOk(engine.Forward(cache, std::span(tokens).subspan(i, 1), pos + static_cast<int>(i),
                           std::span(logits).subspan(0, vocab)),
            "forward");
    out.emplace_back(logits.begin(), logits.begin() + vocab);
  }
  return out;
}

// A copy of tokens [0, n) of `cache`.
krul::KvCache Prefix(const krul::ModelConfig& config, const krul::KvCache& cache, int n) {
  auto copy = ValueOrDie(krul::KvCache::Create(config, config.seq_len), "cache");
  for (int l = 0; l < config.n_layers; ++l) {
    std::memcpy(copy.key(l, 0), cache.key(l, 0), cache.LayerBytes(n) / 2);
    std::memcpy(copy.value(l, 0), cache.value(l, 0), cache.LayerBytes(n) / 2);
  }
  return copy;
}

std::string PairKey(const krul::CompressionPlan& plan) {
  std::vector<std::string> parts;
  for (const krul::LayerPair& p : plan.pairs) parts.push_back(absl::StrCat(p.first, "-", p.second));
  std::sort(parts.begin(), parts.end());
  return absl::StrJoin(parts, " ");
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Measured per-conversation cost of sharing every layer pair");
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_model).empty() || absl::GetFlag(FLAGS_conversations).empty()) {
    std::fprintf(stderr, "--model and --conversations are required\n");
    return 1;
  }
  const bool json = absl::GetFlag(FLAGS_json);
  auto model = ValueOrDie(krul::LoadModel(absl::GetFlag(FLAGS_model)), "model");
  const krul::ModelConfig& config = model->config();
  const krul::Tokenizer tokenizer =
      ValueOrDie(krul::Tokenizer::ForModel(*model, absl::GetFlag(FLAGS_tokenizer)), "tokenizer");
  auto engine = ValueOrDie(krul::Engine::Create(*model, {}), "engine");
  const krul::KvShape shape = krul::KvShape::FromConfig(config);
  const int L = config.n_layers;
  std::vector<krul::LayerPair> pairs;
  for (int a = 0; a < L; ++a) {
    for (int b = a + 1; b < L; ++b) pairs.push_back({a, b, 0});
  }
  const int P = static_cast<int>(pairs.size());
  auto per_pair = [&](const std::vector<double>& m) {
    std::vector<double> v;
    for (const krul::LayerPair& p : pairs)
      v.push_back(m[static_cast<size_t>(p.first) * L + p.second]);
    return v;
  };
  auto matrix = [&](const std::vector<double>& v) {
    std::vector<double> m(static_cast<size_t>(L) * L, 0.0);
    for (int p = 0; p < P; ++p) {
      m[static_cast<size_t>(pairs[p].first) * L + pairs[p].second] = v[p];
      m[static_cast<size_t>(pairs[p].second) * L + pairs[p].first] = v[p];
    }
    return m;
  };
  const std::vector<Conversation> convs =
      ValueOrDie(krul::bench::LoadConversationFiles(absl::GetFlag(FLAGS_conversations),
                                                    absl::GetFlag(FLAGS_max_conversations)),
                 "conversations");

  // ---- first turns and every pair's measured cost ----
  std::vector<std::unique_ptr<Case>> cases;
  std::set<std::string> ids;
  for (const Conversation& conv : convs) {
    if (conv.turns.size() < 2) continue;
    std::vector<int> turn_tokens[2];
    int prompt_len[2];
    for (int t = 0; t < 2; ++t) {
      const Turn& turn = conv.turns[t];
      turn_tokens[t] = tokenizer.Encode(turn.user, /*bos=*/t == 0, false);
      prompt_len[t] = static_cast<int>(turn_tokens[t].size());
      if (!turn.answer.empty()) {
        const auto answer = tokenizer.Encode(turn.answer, false, false);
        turn_tokens[t].insert(turn_tokens[t].end(), answer.begin(), answer.end());
      }
    }
    const bool generate = conv.turns[0].answer.empty() || conv.turns[1].answer.empty();
    const int extra = generate ? 2 * absl::GetFlag(FLAGS_answer_tokens) : 0;
    if (static_cast<int>(turn_tokens[0].size() + turn_tokens[1].size()) + extra + 1 >
        config.seq_len) {
      continue;  // the two turns do not fit the context
    }
    auto c =
        std::make_unique<Case>(ValueOrDie(krul::KvCache::Create(config, config.seq_len), "cache"));
    // Reference ids must be unique words.
    c->id = conv.id;
    std::replace_if(
        c->id.begin(), c->id.end(), [](char ch) { return std::isspace(ch); }, '_');
    while (!ids.insert(c->id).second) c->id += "+";
    c->domain = conv.domain;
    auto estimator = ValueOrDie(krul::SimilarityEstimator::Create(config), "estimator");
    ReceivedAttention received(estimator.get(), L, config.seq_len);
    CheckOk(engine->SetAttentionObserver(&received), "observer");
    auto logits = RunTurn(*engine, c->cache, turn_tokens[0], prompt_len[0], 0);
    if (conv.turns[0].answer.empty()) {  // greedy answer, fed back as in a live turn
      int pos = static_cast<int>(turn_tokens[0].size());
      for (int i = 0; i < absl::GetFlag(FLAGS_answer_tokens); ++i) {
        turn_tokens[0].push_back(krul::ArgMax(logits.back()));
        logits = RunTurn(*engine, c->cache, {turn_tokens[0].back()}, 0, pos++);
      }
    }
    CheckOk(engine->SetAttentionObserver(nullptr), "observer");
    c->estimate = estimator->Finish();
    c->history = static_cast<int>(turn_tokens[0].size());
    c->merge = ValueOrDie(krul::MeasureMergeErrors(c->cache, shape, 0, c->history), "merge errors");
    if (!absl::GetFlag(FLAGS_dump).empty()) {
      const std::vector<double> w_all = received.KeyWeights(L, c->history, 0);
      const std::vector<double> w_recent =
          received.KeyWeights(L, c->history, c->history - absl::GetFlag(FLAGS_recent_queries));
      krul::MergeErrorOptions weighted;
      weighted.token_weights = w_all;
      const krul::MergeErrors all = ValueOrDie(
          krul::MeasureMergeErrors(c->cache, shape, 0, c->history, weighted), "merge errors");
      weighted.token_weights = w_recent;
      const krul::MergeErrors recent = ValueOrDie(
          krul::MeasureMergeErrors(c->cache, shape, 0, c->history, weighted), "merge errors");
      c->merge_key_all = per_pair(all.key);
      c->merge_value_all = per_pair(all.value);
      c->merge_key_recent = per_pair(recent.key);
      c->merge_value_recent = per_pair(recent.value);
    }
    if (absl::GetFlag(FLAGS_self_probe)) {
      // The first half of turn 1 stored with each pair, the second half
      // teacher-forced against the uncompressed cache.
      const int half = c->history / 2;
      const std::vector<int> rest(turn_tokens[0].begin() + half, turn_tokens[0].end());
      auto probe = ValueOrDie(krul::PlanProbe::Create(*engine, c->cache, half, rest), "probe");
      c->self_probe = per_pair(ValueOrDie(probe.MeasureEveryPair(), "self probe"));
    }
    // Turn 2: the greedy answer on the uncompressed cache where the file has
    // none, then teacher-forced as one block against every stored plan.
    std::vector<int> next = turn_tokens[1];
    if (conv.turns[1].answer.empty()) {
      krul::KvCache copy = Prefix(config, c->cache, c->history);
      auto out = RunTurn(*engine, copy, next, prompt_len[1], c->history);
      int pos = c->history + static_cast<int>(next.size());
      for (int i = 0; i < absl::GetFlag(FLAGS_answer_tokens); ++i) {
        next.push_back(krul::ArgMax(out.back()));
        out = RunTurn(*engine, copy, {next.back()}, 0, pos++);
      }
    }
    c->probe = std::make_unique<krul::PlanProbe>(
        ValueOrDie(krul::PlanProbe::Create(*engine, c->cache, c->history, next), "probe"));
    c->cost = per_pair(ValueOrDie(c->probe->MeasureEveryPair(), "pair costs"));
    for (const krul::LayerPair& p : pairs) {
      c->attention.push_back(c->estimate.MeanDistance(p.first, p.second));
    }
    cases.push_back(std::move(c));
    if (!json) std::fprintf(stderr, ".");
  }
  if (!json) std::fprintf(stderr, "\n");
  const int n = static_cast<int>(cases.size());
  if (n < 2) {
    std::fprintf(stderr, "need at least two conversations with a second turn that fits\n");
    return 1;
  }

  // ---- every conversation as a calibration reference ----
  krul::PairCalibration calibration(L);
  for (const auto& c : cases) {
    krul::PairReference r;
    r.id = c->id;
    r.domain = c->domain;
    r.merge_key = c->merge.key;
    r.merge_value = c->merge.value;
    r.cost = matrix(c->cost);
    for (int l = 0; l < L; ++l) r.edge_mass.push_back(c->estimate.EdgeMass(l));
    CheckOk(calibration.Add(std::move(r)), "reference");
  }
  if (!absl::GetFlag(FLAGS_write_calibration).empty()) {
    CheckOk(krul::WritePairCalibration(calibration, absl::GetFlag(FLAGS_write_calibration)),
            "write calibration");
  }

  // ---- consistency and prediction ----
  auto others_mean = [&](int skip, std::vector<double> Case::*member) {
    std::vector<double> mean(P, 0.0);
    for (int j = 0; j < n; ++j) {
      if (j == skip) continue;
      for (int p = 0; p < P; ++p) mean[p] += ((*cases[j]).*member)[p] / (n - 1);
    }
    return mean;
  };
  const int neighbours = absl::GetFlag(FLAGS_neighbours);
  std::vector<std::vector<double>> predicted(n);
  double consistency = 0, own_attention = 0, others_attention = 0, krul_predicted = 0;
  for (int i = 0; i < n; ++i) {
    const Case& c = *cases[i];
    predicted[i] =
        per_pair(ValueOrDie(calibration.Predict(c.merge, neighbours, c.id), "predict").cost);
    consistency += Spearman(c.cost, others_mean(i, &Case::cost)) / n;
    own_attention += Spearman(c.attention, c.cost) / n;
    others_attention += Spearman(others_mean(i, &Case::attention), c.cost) / n;
    krul_predicted += Spearman(predicted[i], c.cost) / n;
  }

  // ---- selections, measured with all their pairs shared ----
  const double ratio = absl::GetFlag(FLAGS_ratio);
  auto select = [&](const std::vector<double>& score, const std::vector<uint8_t>& protect) {
    krul::SelectorOptions so;
    so.target_ratio = ratio;
    so.sensitivity_threshold = 1.0;
    return ValueOrDie(krul::SelectPlanByScore(matrix(score), protect, so), "select");
  };
  struct Rule {
    std::string name;
    std::string what;
  };
  const std::vector<Rule> rules = {
      {"krul",
       "krul (served rule): costs of the nearest other conversations by merge-error "
       "profile (turn_end.h, leave-one-out)"},
      {"own_attention", "the paper's rule: this conversation's attention distances"},
      {"own_attention_protected", "the same with layers above the edge-mass quantile protected"},
      {"others_attention", "krul-fixed by attention: the other conversations' mean distances"},
      {"others_cost", "krul-fixed by measured costs: the other conversations' mean costs"},
      {"own_cost", "oracle: this conversation's own measured pair costs"},
  };
  nlohmann::json out;
  out["bench"] = "krul-bench-pair-oracle";
  out["model"] = absl::GetFlag(FLAGS_model);
  out["model_shape"] = config.ToString();
  out["conversations"] = absl::GetFlag(FLAGS_conversations);
  out["cases"] = n;
  out["pairs"] = P;
  out["target_ratio"] = ratio;
  out["neighbours"] = neighbours;
  out["cost_consistency_spearman"] = consistency;
  out["own_attention_vs_cost_spearman"] = own_attention;
  out["others_attention_vs_cost_spearman"] = others_attention;
  out["krul_predicted_vs_cost_spearman"] = krul_predicted;
  std::map<std::string, std::vector<std::string>> domain_ids;
  for (const auto& c : cases) domain_ids[c->domain].push_back(c->id);
  for (const Rule& rule : rules) {
    krul::PlanQuality sum;
    std::set<std::string> distinct;
    std::map<std::string, std::map<std::string, int>> by_domain;  // domain -> pair -> count
    std::map<std::string, std::set<std::string>> sets_by_domain;
    double protected_layers = 0, neighbours_same_domain = 0;
    for (int i = 0; i < n; ++i) {
      const Case& c = *cases[i];
      krul::CompressionPlan plan;
      if (rule.name == "krul") {
        krul::TurnEndOptions to;
        to.shape = shape;
        to.selector.target_ratio = ratio;
        to.selector.sensitivity_threshold = 1.0;
        to.calibration = &calibration;
        to.neighbours = neighbours;
        to.exclude_reference = c.id;
        krul::TurnEndInput in;
        in.cache = &c.cache;
        in.num_tokens = c.history;
        in.estimate = &c.estimate;
        const krul::PairChoice choice = ValueOrDie(krul::ChooseTurnEndPairs(to, in), "krul");
        plan = choice.pairs;
        for (const std::string& d : choice.neighbour_domains) {
          neighbours_same_domain +=
              (d == c.domain ? 1.0 : 0.0) / choice.neighbour_domains.size() / n;
        }
      } else if (rule.name == "own_attention") {
        plan = select(c.attention, {});
      } else if (rule.name == "own_attention_protected") {
        const double threshold = ValueOrDie(
            calibration.EdgeMassQuantile(absl::GetFlag(FLAGS_sensitivity_quantile), c.id),
            "quantile");
        const std::vector<uint8_t> protect = krul::SensitiveLayers(c.estimate, threshold);
        for (uint8_t p : protect) protected_layers += static_cast<double>(p) / n;
        plan = select(c.attention, protect);
      } else if (rule.name == "others_attention") {
        plan = select(others_mean(i, &Case::attention), {});
      } else if (rule.name == "others_cost") {
        plan = select(others_mean(i, &Case::cost), {});
      } else {
        plan = select(c.cost, {});
      }
      const std::string key = PairKey(plan);
      distinct.insert(key);
      sets_by_domain[c.domain].insert(key);
      for (const krul::LayerPair& p : plan.pairs) {
        by_domain[c.domain][absl::StrCat(p.first, "-", p.second)]++;
      }
      const krul::PlanQuality q = ValueOrDie(c.probe->Measure(plan), "measure");
      sum.kl += q.kl / n;
      sum.agreement += q.agreement / n;
    }
    nlohmann::json j = {{"what", rule.what},
                        {"kl", sum.kl},
                        {"agreement", sum.agreement},
                        {"distinct_pair_sets", distinct.size()}};
    for (const auto& [domain, freq] : by_domain) {
      j["by_domain"][domain] = {{"conversations", domain_ids[domain].size()},
                                {"distinct_pair_sets", sets_by_domain[domain].size()},
                                {"pair_frequency", freq}};
    }
    if (rule.name == "own_attention_protected")
      j["protected_layers_per_conversation"] = protected_layers;
    if (rule.name == "krul") j["neighbours_of_the_same_domain"] = neighbours_same_domain;
    out["selections"][rule.name] = j;
  }
  if (!absl::GetFlag(FLAGS_dump).empty()) {
    nlohmann::json dump;
    for (const krul::LayerPair& p : pairs) dump["pairs"].push_back({p.first, p.second});
    for (int i = 0; i < n; ++i) {
      const Case& c = *cases[i];
      std::vector<double> edge;
      for (int l = 0; l < L; ++l) edge.push_back(c.estimate.EdgeMass(l));
      dump["cases"].push_back({{"id", c.id},
                               {"domain", c.domain},
                               {"history", c.history},
                               {"cost", c.cost},
                               {"attention", c.attention},
                               {"predicted", predicted[i]},
                               {"merge_key", per_pair(c.merge.key)},
                               {"merge_value", per_pair(c.merge.value)},
                               {"merge_key_all", c.merge_key_all},
                               {"merge_value_all", c.merge_value_all},
                               {"merge_key_recent", c.merge_key_recent},
                               {"merge_value_recent", c.merge_value_recent},
                               {"edge_mass", edge},
                               {"self_probe", c.self_probe}});
    }
    FILE* f = std::fopen(absl::GetFlag(FLAGS_dump).c_str(), "w");
    if (f == nullptr) {
      std::fprintf(stderr, "cannot write %s\n", absl::GetFlag(FLAGS_dump).c_str());
      return 1;
    }
    std::fprintf(f, "%s\n", dump.dump().c_str());
    std::fclose(f);
  }
  if (json) {
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("krul-bench-pair-oracle: %s (%s), %d conversations, %d pairs, ratio %.2f\n",
              absl::GetFlag(FLAGS_model).c_str(), config.ToString().c_str(), n, P, ratio);
  std::printf("pair-cost consistency across conversations (Spearman, own vs others' mean): %.3f\n",
              consistency);
  std::printf(
      "vs measured cost (Spearman): own attention %.3f, others' attention %.3f, krul's "
      "predicted cost (%d neighbours) %.3f\n",
      own_attention, others_attention, neighbours, krul_predicted);
  std::printf("%-24s %9s %9s %9s  %s\n", "selection by", "agreement", "kl", "distinct", "");
  for (const Rule& rule : rules) {
    const auto& j = out["selections"][rule.name];
    std::printf("%-24s %9.4f %9.5f %9d  %s\n", rule.name.c_str(), j["agreement"].get<double>(),
                j["kl"].get<double>(), j["distinct_pair_sets"].get<int>(), rule.what.c_str());
  }
  std::printf(
      "krul's neighbours of the conversation's own domain: %.2f; protected layers per "
      "conversation (own_attention_protected): %.2f\n",
      out["selections"]["krul"]["neighbours_of_the_same_domain"].get<double>(),
      out["selections"]["own_attention_protected"]["protected_layers_per_conversation"]
          .get<double>());
  for (const char* rule : {"krul", "own_cost", "others_cost"}) {
    for (const auto& [domain, j] : out["selections"][rule]["by_domain"].items()) {
      std::printf("%-11s %-26s %2d conversations, %2d distinct sets, pairs %s\n", rule,
                  domain.c_str(), j["conversations"].get<int>(), j["distinct_pair_sets"].get<int>(),
                  j["pair_frequency"].dump().c_str());
    }
  }
  return 0;
}
