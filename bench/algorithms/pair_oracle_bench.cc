// krul-bench-pair-oracle: is there a per-conversation choice of shared layer
// pairs to be found at all? Krul's premise is that different conversations
// are best served by different pairs. This program measures that premise
// directly, with real weights, instead of through a selection rule.
//
//   build/bin/krul-bench-pair-oracle --model M [--tokenizer T]
//       --conversations FILE[,FILE...] [--ratio 1.5] [--max_conversations N]
//       [--answer_tokens 64] [--json]
//
// For every conversation with a second turn: the first turn runs with the
// similarity estimator observing; then, for EVERY layer pair (a, b), the
// first turn's KV is stored with only that pair shared (SLERP, as the
// compressor does), restored, and the second turn teacher-forced; its mean
// KL against the uncompressed cache is the pair's measured *cost* for this
// conversation. From these:
//  - consistency: Spearman correlation between a conversation's pair costs
//    and the average of the other conversations' (1 = every conversation
//    ranks the pairs the same way: nothing to gain from choosing per
//    conversation);
//  - how well attention distance predicts the costs: Spearman of the
//    conversation's own distances, and of the others' average, against its
//    costs;
//  - four selections at the target ratio, each made by the product's
//    selector (SelectPlan) on a different score and then measured for real
//    (all pairs shared at once) on the second turn: own attention (krul),
//    the others' attention (krul-fixed), own measured costs (an oracle no
//    online method can beat with single-pair information) and the others'
//    measured costs (the best fixed choice).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
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
#include "util/bench_util.h"
#include "algorithms/conversations.h"
#include "krul/compress/compression_plan.h"
#include "krul/compress/compressor.h"
#include "krul/engine/engine_cpu.h"
#include "krul/engine/kv_cache.h"
#include "krul/model/model.h"
#include "krul/engine/sampler.h"
#include "krul/compress/selector.h"
#include "krul/compress/similarity_estimator.h"
#include "krul/model/tokenizer.h"

ABSL_FLAG(std::string, model, "", "Model file (llama2.c .bin or GGUF)");
ABSL_FLAG(std::string, tokenizer, "", "llama2.c tokenizer file (default: the model's vocabulary)");
ABSL_FLAG(std::string, conversations, "",
          "Conversations: ShareGPT JSON array or MT-bench JSONL; several files comma-separated");
ABSL_FLAG(double, ratio, 1.5, "Target compression ratio of the four selections");
ABSL_FLAG(int, max_conversations, 0, "Use at most this many conversations of each file (0 = all)");
ABSL_FLAG(int, answer_tokens, 64, "Generated answer length for conversations without answers");
ABSL_FLAG(bool, json, false, "Print the results as one JSON object");

namespace {

using krul::bench::CheckOk;
using krul::bench::Conversation;
using krul::bench::LogSoftmax;
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
  krul::KvCache cache;           // after turn 1 (uncompressed)
  int history = 0;               // its tokens
  std::vector<int> next_tokens;  // turn 2, teacher-forced
  std::vector<std::vector<float>> reference;  // turn 2's logits on `cache`
  std::vector<double> attention;              // per pair: own MeanDistance (turn 1)
  std::vector<double> cost;                   // per pair: measured KL on turn 2
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

struct TurnQuality {
  double kl = 0;
  double agreement = 0;
};

// Stores `c`'s first turn with `plan`, restores it and teacher-forces turn 2.
TurnQuality Measure(krul::Engine& engine, const krul::KvShape& shape, const Case& c,
                    const krul::CompressionPlan& plan) {
  const krul::ModelConfig& config = engine.config();
  auto kv = ValueOrDie(krul::CompressKv(c.cache, shape, plan, c.history, {}), "compress");
  auto fresh = ValueOrDie(krul::KvCache::Create(config, config.seq_len), "cache");
  CheckOk(kv.DecompressAll(fresh), "decompress");
  const auto got = RunTurn(engine, fresh, c.next_tokens, static_cast<int>(c.next_tokens.size()),
                          c.history);
  TurnQuality q;
  for (size_t i = 0; i < got.size(); ++i) {
    q.kl += krul::bench::KlDivergence(LogSoftmax(c.reference[i]), LogSoftmax(got[i]));
    q.agreement += krul::ArgMax(c.reference[i]) == krul::ArgMax(got[i]);
  }
  q.kl /= static_cast<double>(got.size());
  q.agreement /= static_cast<double>(got.size());
  return q;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Measured per-conversation cost of sharing every layer pair");
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_model).empty() || absl::GetFlag(FLAGS_conversations).empty()) {
    std::fprintf(stderr, "--model and --conversations are required\n");
    return 1;
  }
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
  const std::vector<Conversation> convs =
      ValueOrDie(krul::bench::LoadConversationFiles(absl::GetFlag(FLAGS_conversations),
                                                    absl::GetFlag(FLAGS_max_conversations)),
                 "conversations");

  // ---- first turns and every pair's measured cost ----
  std::vector<Case> cases;
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
    Case c(ValueOrDie(krul::KvCache::Create(config, config.seq_len), "cache"));
    auto estimator = ValueOrDie(krul::SimilarityEstimator::Create(config), "estimator");
    CheckOk(engine->SetAttentionObserver(estimator.get()), "observer");
    auto logits = RunTurn(*engine, c.cache, turn_tokens[0], prompt_len[0], 0);
    if (conv.turns[0].answer.empty()) {  // greedy answer, fed back as in a live turn
      std::vector<float> one(config.vocab_size);
      int pos = static_cast<int>(turn_tokens[0].size());
      for (int i = 0; i < absl::GetFlag(FLAGS_answer_tokens); ++i) {
        turn_tokens[0].push_back(krul::ArgMax(logits.back()));
        logits = RunTurn(*engine, c.cache, {turn_tokens[0].back()}, 0, pos++);
      }
    }
    CheckOk(engine->SetAttentionObserver(nullptr), "observer");
    const krul::SimilarityEstimate estimate = estimator->Finish();
    c.history = static_cast<int>(turn_tokens[0].size());
    // Turn 2 on a copy of the uncompressed cache: the reference.
    auto copy = ValueOrDie(krul::KvCache::Create(config, config.seq_len), "cache");
    for (int l = 0; l < L; ++l) {
      std::memcpy(copy.key(l, 0), c.cache.key(l, 0), c.cache.LayerBytes(c.history) / 2);
      std::memcpy(copy.value(l, 0), c.cache.value(l, 0), c.cache.LayerBytes(c.history) / 2);
    }
    c.next_tokens = turn_tokens[1];
    if (conv.turns[1].answer.empty()) {  // the greedy answer on the uncompressed cache
      auto next = RunTurn(*engine, copy, c.next_tokens, prompt_len[1], c.history);
      int pos = c.history + static_cast<int>(c.next_tokens.size());
      for (int i = 0; i < absl::GetFlag(FLAGS_answer_tokens); ++i) {
        c.next_tokens.push_back(krul::ArgMax(next.back()));
        next = RunTurn(*engine, copy, {c.next_tokens.back()}, 0, pos++);
      }
    }
    // Turn 2 is teacher-forced as one block, here and in Measure, so the
    // reference and every restored cache see the same arithmetic (the block
    // rewrites whatever generating the answer left past the history).
    c.reference =
        RunTurn(*engine, copy, c.next_tokens, static_cast<int>(c.next_tokens.size()), c.history);
    for (const krul::LayerPair& p : pairs) {
      c.attention.push_back(estimate.MeanDistance(p.first, p.second));
      krul::CompressionPlan one = krul::CompressionPlan::Uncompressed(L);
      one.pairs.push_back(p);
      one.target_ratio = one.ratio();
      c.cost.push_back(Measure(*engine, shape, c, one).kl);
    }
    cases.push_back(std::move(c));
    if (!absl::GetFlag(FLAGS_json)) std::fprintf(stderr, ".");
  }
  if (!absl::GetFlag(FLAGS_json)) std::fprintf(stderr, "\n");
  const int n = static_cast<int>(cases.size());
  if (n < 2) {
    std::fprintf(stderr, "need at least two conversations with a second turn that fits\n");
    return 1;
  }

  // ---- consistency and prediction ----
  auto others_mean = [&](size_t skip, auto member) {
    std::vector<double> mean(P, 0.0);
    for (size_t j = 0; j < cases.size(); ++j) {
      if (j == skip) continue;
      for (int p = 0; p < P; ++p) mean[p] += (cases[j].*member)[p] / (n - 1);
    }
    return mean;
  };
  double consistency = 0, own_attention = 0, others_attention = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    consistency += Spearman(cases[i].cost, others_mean(i, &Case::cost)) / n;
    own_attention += Spearman(cases[i].attention, cases[i].cost) / n;
    others_attention += Spearman(others_mean(i, &Case::attention), cases[i].cost) / n;
  }

  // ---- four selections, measured with all their pairs shared ----
  // A score per pair becomes an estimate whose MeanDistance is that score, so
  // the product's selector makes every choice the same way.
  auto select = [&](const std::vector<double>& score) {
    krul::SimilarityEstimate e = krul::SimilarityEstimate::Empty(L);
    for (int p = 0; p < P; ++p) {
      e.distance[pairs[p].first * L + pairs[p].second] = score[p];
      e.distance[pairs[p].second * L + pairs[p].first] = score[p];
    }
    e.rows_represented = 1;
    krul::SelectorOptions so;
    so.target_ratio = absl::GetFlag(FLAGS_ratio);
    so.sensitivity_threshold = 1.0;
    return ValueOrDie(krul::SelectPlan(e, so), "select");
  };
  struct Rule {
    const char* name;
    const char* what;
    std::vector<double> (*score)(const std::vector<Case>&, size_t, decltype(others_mean)&);
  };
  const Rule rules[] = {
      {"own_attention", "krul: this conversation's attention distances",
       [](const std::vector<Case>& cs, size_t i, decltype(others_mean)&) { return cs[i].attention; }},
      {"others_attention", "krul-fixed: the other conversations' mean attention distances",
       [](const std::vector<Case>&, size_t i, decltype(others_mean)& m) {
         return m(i, &Case::attention);
       }},
      {"own_cost", "oracle: this conversation's measured pair costs",
       [](const std::vector<Case>& cs, size_t i, decltype(others_mean)&) { return cs[i].cost; }},
      {"others_cost", "the other conversations' mean measured pair costs",
       [](const std::vector<Case>&, size_t i, decltype(others_mean)& m) {
         return m(i, &Case::cost);
       }},
  };
  nlohmann::json out;
  out["bench"] = "krul-bench-pair-oracle";
  out["model"] = absl::GetFlag(FLAGS_model);
  out["model_shape"] = config.ToString();
  out["conversations"] = absl::GetFlag(FLAGS_conversations);
  out["cases"] = n;
  out["pairs"] = P;
  out["target_ratio"] = absl::GetFlag(FLAGS_ratio);
  out["cost_consistency_spearman"] = consistency;
  out["own_attention_vs_cost_spearman"] = own_attention;
  out["others_attention_vs_cost_spearman"] = others_attention;
  for (const Rule& rule : rules) {
    TurnQuality sum;
    std::set<std::string> distinct;
    for (size_t i = 0; i < cases.size(); ++i) {
      const krul::CompressionPlan plan = select(rule.score(cases, i, others_mean));
      std::string key;
      for (const krul::LayerPair& p : plan.pairs) absl::StrAppend(&key, p.first, "-", p.second, " ");
      distinct.insert(key);
      const TurnQuality q = Measure(*engine, shape, cases[i], plan);
      sum.kl += q.kl / n;
      sum.agreement += q.agreement / n;
    }
    out["selections"][rule.name] = {{"what", rule.what},
                                    {"kl", sum.kl},
                                    {"agreement", sum.agreement},
                                    {"distinct_pair_sets", distinct.size()}};
  }
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("krul-bench-pair-oracle: %s (%s), %d conversations, %d pairs, ratio %.2f\n",
              absl::GetFlag(FLAGS_model).c_str(), config.ToString().c_str(), n, P,
              absl::GetFlag(FLAGS_ratio));
  std::printf("pair-cost consistency across conversations (Spearman, own vs others' mean): %.3f\n",
              consistency);
  std::printf("attention distance vs measured cost (Spearman): own %.3f, others' mean %.3f\n",
              own_attention, others_attention);
  std::printf("%-17s %9s %9s %9s  %s\n", "selection by", "agreement", "kl", "distinct", "");
  for (const Rule& rule : rules) {
    const auto& j = out["selections"][rule.name];
    std::printf("%-17s %9.4f %9.5f %9d  %s\n", rule.name, j["agreement"].get<double>(),
                j["kl"].get<double>(), j["distinct_pair_sets"].get<int>(), rule.what);
  }
  return 0;
}
