#include "krul/compress/similarity_estimator.h"

#include <cmath>
#include <memory>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "krul/engine/engine_cpu.h"
#include "krul/engine/kv_cache.h"
#include "krul/model/model.h"
#include "test_support/naive_llama.h"

namespace krul {
namespace {

// Four layers, grouped-query attention (4 query heads on 2 KV heads).
ModelConfig SmallConfig() {
  ModelConfig c;
  c.dim = 32;
  c.hidden_dim = 64;
  c.n_layers = 4;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 64;
  c.seq_len = 640;
  return c;
}

std::vector<int> Tokens(int n, int vocab) {
  std::vector<int> t(n);
  for (int i = 0; i < n; ++i) t[i] = (i * 29 + 7) % vocab;
  return t;
}

// One observed attention row, as plain doubles.
struct Row {
  int layer, head, pos;
  std::vector<double> probs;  // keys [0, pos]
};

// Keeps a copy of every row the engine reports and forwards the call.
class Recorder : public AttentionObserver {
 public:
  explicit Recorder(AttentionObserver* next) : next_(next) {}
  void OnAttention(const AttentionWeights& w) override {
    for (int h = 0; h < w.n_heads; ++h) {
      for (int q = 0; q < w.num_queries; ++q) {
        const int pos = w.query_begin + q;
        const float* r = w.row(h, q);
        rows.push_back(Row{w.layer, h, pos, std::vector<double>(r, r + pos + 1)});
      }
    }
    if (next_ != nullptr) next_->OnAttention(w);
  }
  std::vector<Row> rows;

 private:
  AttentionObserver* next_;
};

// D[a][b] = sum over (head, pos) of ||A_a - A_b||^2, straight from the
// definition; each (head, pos) must have been reported once per layer. With
// a head stride s, only heads h % s == 0 count, each weighing
// min(s, n_heads - h) (the heads it stands for).
std::vector<double> NaiveDistance(const std::vector<Row>& rows, int n_layers, int head_stride = 1,
                                  int n_heads = 0) {
  std::vector<double> d(static_cast<size_t>(n_layers) * n_layers, 0.0);
  for (const Row& x : rows) {
    if (x.head % head_stride != 0) continue;
    const double weight = head_stride == 1 ? 1.0 : std::min(head_stride, n_heads - x.head);
    for (const Row& y : rows) {
      if (x.head != y.head || x.pos != y.pos || x.layer == y.layer) continue;
      double s = 0;
      for (size_t k = 0; k < x.probs.size(); ++k)
        s += (x.probs[k] - y.probs[k]) * (x.probs[k] - y.probs[k]);
      d[static_cast<size_t>(x.layer) * n_layers + y.layer] += weight * s;
    }
  }
  return d;
}

// Mean mass of each layer on the first / last ceil(0.1 * ctx) keys (the last
// window starting no earlier than the first one ends).
void NaiveEdgeMass(const std::vector<Row>& rows, int n_layers, std::vector<double>& first,
                   std::vector<double>& last) {
  first.assign(n_layers, 0.0);
  last.assign(n_layers, 0.0);
  std::vector<double> count(n_layers, 0.0);
  for (const Row& r : rows) {
    const int ctx = static_cast<int>(r.probs.size());
    int w = 1;
    while (w * 10 < ctx) ++w;  // smallest w with w >= 0.1 * ctx
    const int last_begin = std::max(w, ctx - w);
    for (int k = 0; k < w; ++k) first[r.layer] += r.probs[k];
    for (int k = last_begin; k < ctx; ++k) last[r.layer] += r.probs[k];
    count[r.layer] += 1;
  }
  for (int l = 0; l < n_layers; ++l) {
    first[l] /= count[l];
    last[l] /= count[l];
  }
}

void ExpectMatrixNear(const std::vector<double>& got, const std::vector<double>& want, double rel) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(got[i], want[i], rel * std::abs(want[i]) + 1e-9) << "entry " << i;
  }
}

struct Rig {
  std::unique_ptr<Model> model;
  std::unique_ptr<Engine> engine;
  std::unique_ptr<SimilarityEstimator> estimator;
};

Rig MakeRig(const ModelConfig& config, const SimilarityEstimatorOptions& options = {},
            int query_block = 64) {
  Rig s;
  auto model = MakeSyntheticModel(config, 11);
  EXPECT_TRUE(model.ok()) << model.status();
  s.model = std::move(*model);
  EngineOptions eo;
  eo.num_threads = 2;
  eo.observer_query_block = query_block;
  auto engine = Engine::Create(*s.model, eo);
  EXPECT_TRUE(engine.ok()) << engine.status();
  s.engine = std::move(*engine);
  auto est = SimilarityEstimator::Create(config, options);
  EXPECT_TRUE(est.ok()) << est.status();
  s.estimator = std::move(*est);
  return s;
}

// Prefill of `prompt` tokens (several engine token blocks and observer
// query blocks) then `decode` single tokens.
void RunTurn(Engine& engine, KvCache& cache, int prompt, int decode) {
  const auto tokens = Tokens(prompt + decode, engine.config().vocab_size);
  ASSERT_TRUE(engine.Forward(cache, std::span<const int>(tokens).first(prompt), 0, {}).ok());
  for (int i = 0; i < decode; ++i) {
    ASSERT_TRUE(
        engine.Forward(cache, std::span<const int>(tokens).subspan(prompt + i, 1), prompt + i, {})
            .ok());
  }
}

TEST(SimilarityEstimatorTest, DistanceEqualsNaiveOverEngineWeights) {
  const ModelConfig config = SmallConfig();
  // 300 prompt tokens: two engine blocks (256 + 44), observer blocks of 48.
  Rig s = MakeRig(config, {}, /*query_block=*/48);
  Recorder recorder(s.estimator.get());
  EXPECT_TRUE(s.engine->SetAttentionObserver(&recorder).ok());
  auto cache = KvCache::Create(config, 320);
  ASSERT_TRUE(cache.ok());
  RunTurn(*s.engine, *cache, 300, 12);
  const SimilarityEstimate e = s.estimator->Finish();

  ExpectMatrixNear(e.distance, NaiveDistance(recorder.rows, config.n_layers), 1e-5);
  // The two paths are reported apart and add up.
  std::vector<Row> prefill, decode;
  for (const Row& r : recorder.rows) (r.pos < 300 ? prefill : decode).push_back(r);
  ExpectMatrixNear(e.prefill_distance, NaiveDistance(prefill, config.n_layers), 1e-5);
  ExpectMatrixNear(e.decode_distance, NaiveDistance(decode, config.n_layers), 1e-5);
  EXPECT_EQ(e.prefill_tokens, 300);
  EXPECT_EQ(e.decode_tokens, 12);
  EXPECT_DOUBLE_EQ(e.rows_represented, 312.0 * config.n_heads);
  EXPECT_EQ(e.rows_compared, 312 * config.n_heads);
  EXPECT_FALSE(e.sampled);
  for (int a = 0; a < config.n_layers; ++a) {
    EXPECT_EQ(e.Distance(a, a), 0.0);
    for (int b = 0; b < config.n_layers; ++b) {
      EXPECT_EQ(e.Distance(a, b), e.Distance(b, a));
      if (a != b) {
        EXPECT_GT(e.Distance(a, b), 0.0);
      }
    }
  }
  std::vector<double> first, last;
  NaiveEdgeMass(recorder.rows, config.n_layers, first, last);
  for (int l = 0; l < config.n_layers; ++l) {
    EXPECT_NEAR(e.FirstMass(l), first[l], 1e-5) << "layer " << l;
    EXPECT_NEAR(e.LastMass(l), last[l], 1e-5) << "layer " << l;
  }
  EXPECT_EQ(s.estimator->ignored_blocks(), 0);
}

// Independent of the engine's probabilities: a double-precision reference
// model's attention, token by token (the decode path).
TEST(SimilarityEstimatorTest, DecodeDistanceMatchesNaiveLlama) {
  ModelConfig config = SmallConfig();
  config.seq_len = 64;
  Rig s = MakeRig(config);
  EXPECT_TRUE(s.engine->SetAttentionObserver(s.estimator.get()).ok());
  testing::NaiveLlama naive(*s.model);
  auto cache = KvCache::Create(config, 40);
  ASSERT_TRUE(cache.ok());
  const auto tokens = Tokens(40, config.vocab_size);
  const int L = config.n_layers;
  std::vector<double> want(static_cast<size_t>(L) * L, 0.0);
  for (int pos = 0; pos < 40; ++pos) {
    ASSERT_TRUE(
        s.engine->Forward(*cache, std::span<const int>(tokens).subspan(pos, 1), pos, {}).ok());
    naive.Forward(tokens[pos], pos);
    const auto& att = naive.last_attention();  // [layer][head][key]
    for (int a = 0; a < L; ++a) {
      for (int b = 0; b < L; ++b) {
        for (int h = 0; h < config.n_heads; ++h) {
          for (int k = 0; k <= pos; ++k) {
            const double diff = att[a][h][k] - att[b][h][k];
            want[static_cast<size_t>(a) * L + b] += diff * diff;
          }
        }
      }
    }
  }
  const SimilarityEstimate e = s.estimator->Finish();
  EXPECT_EQ(e.decode_tokens, 40);
  EXPECT_EQ(e.prefill_tokens, 0);
  // fp32 engine against a double reference: agreement to ~1e-3 relative.
  ExpectMatrixNear(e.distance, want, 2e-3);
}

TEST(SimilarityEstimatorTest, HandComputedRows) {
  ModelConfig config = SmallConfig();
  config.n_layers = 3;
  config.n_heads = 1;
  config.n_kv_heads = 1;
  auto est = SimilarityEstimator::Create(config);
  ASSERT_TRUE(est.ok());
  // One decode token at position 9 (10 keys): layer 0 all on key 0, layer 1
  // all on key 9, layer 2 uniform.
  std::vector<float> r0(10, 0.0f), r1(10, 0.0f), r2(10, 0.1f);
  r0[0] = 1.0f;
  r1[9] = 1.0f;
  const std::vector<float>* rows[3] = {&r0, &r1, &r2};
  for (int l = 0; l < 3; ++l) {
    AttentionWeights w;
    w.layer = l;
    w.n_heads = 1;
    w.query_begin = 9;
    w.num_queries = 1;
    w.context_len = 10;
    w.probs = rows[l]->data();
    (*est)->OnAttention(w);
  }
  const SimilarityEstimate e = (*est)->Finish();
  EXPECT_NEAR(e.Distance(0, 1), 2.0, 1e-6);              // 1 + 1
  EXPECT_NEAR(e.Distance(0, 2), 0.81 + 9 * 0.01, 1e-6);  // 0.9^2 + 9 * 0.1^2
  EXPECT_NEAR(e.Distance(1, 2), 0.9, 1e-6);
  EXPECT_NEAR(e.MeanDistance(0, 1), 2.0, 1e-6);  // one row
  // Windows of ceil(0.1 * 10) = 1 key: first = key 0, last = key 9.
  EXPECT_NEAR(e.FirstMass(0), 1.0, 1e-6);
  EXPECT_NEAR(e.LastMass(0), 0.0, 1e-6);
  EXPECT_NEAR(e.LastMass(1), 1.0, 1e-6);
  EXPECT_NEAR(e.EdgeMass(2), 0.2, 1e-6);
  EXPECT_EQ(e.decode_tokens, 1);

  // Finish started a fresh accumulation.
  const SimilarityEstimate again = (*est)->Finish();
  EXPECT_EQ(again.Distance(0, 1), 0.0);
  EXPECT_EQ(again.decode_tokens, 0);
  EXPECT_EQ(again.rows_represented, 0.0);
}

// Synthetic decode rows, fed straight to the estimator: long contexts (rows
// of several kernel chunks and float-lane groups, lengths not a multiple of
// the vector width), layer counts that leave partial register tiles, rows
// of different layers close to each other (small distances between large
// rows: where cancellation would show), against a double computation.
struct SyntheticDecode {
  ModelConfig config;
  std::vector<Row> rows;  // what was reported, for the naive computation
};

// Reports `positions` decode tokens of `layers` (default: all) through
// OnAttention; with `use_decode_buffer`, rows go where DecodeBuffer says, as
// the engine does.
SyntheticDecode FeedDecodeRows(SimilarityEstimator& est, const ModelConfig& config,
                               const std::vector<int>& positions, const std::vector<int>& layers,
                               bool use_decode_buffer, uint32_t seed) {
  SyntheticDecode out;
  out.config = config;
  uint32_t state = seed;
  auto uniform = [&]() {  // deterministic, in (0, 1]
    state = state * 1664525u + 1013904223u;
    return static_cast<double>((state >> 8) + 1) / 16777216.0;
  };
  std::vector<float> own;
  for (int pos : positions) {
    const int ctx = pos + 1;
    std::vector<double> base(static_cast<size_t>(config.n_heads) * ctx);
    for (double& v : base) v = uniform();
    for (int l : layers) {
      std::vector<float> probs(static_cast<size_t>(config.n_heads) * ctx);
      for (int h = 0; h < config.n_heads; ++h) {
        double sum = 0;
        std::vector<double> r(ctx);
        for (int k = 0; k < ctx; ++k) {
          r[k] = base[static_cast<size_t>(h) * ctx + k] * (1.0 + 0.01 * l * uniform());
          sum += r[k];
        }
        for (int k = 0; k < ctx; ++k) {
          probs[static_cast<size_t>(h) * ctx + k] = static_cast<float>(r[k] / sum);
        }
      }
      float* dst = use_decode_buffer ? est.DecodeBuffer(l, pos, config.n_heads, ctx) : nullptr;
      if (dst == nullptr) {
        own.assign(probs.size(), std::nanf(""));
        dst = own.data();
      }
      std::copy(probs.begin(), probs.end(), dst);
      AttentionWeights w;
      w.layer = l;
      w.n_heads = config.n_heads;
      w.query_begin = pos;
      w.num_queries = 1;
      w.context_len = ctx;
      w.probs = dst;
      for (int h = 0; h < config.n_heads; ++h) {
        const float* r = w.row(h, 0);
        out.rows.push_back(Row{l, h, pos, std::vector<double>(r, r + ctx)});
      }
      est.OnAttention(w);
    }
  }
  return out;
}

std::vector<int> AllLayers(int n) {
  std::vector<int> v(n);
  for (int i = 0; i < n; ++i) v[i] = i;
  return v;
}

TEST(SimilarityEstimatorTest, LongContextDecodeMatchesDoubleComputation) {
  ModelConfig config = SmallConfig();
  config.n_heads = 8;
  config.n_kv_heads = 2;
  config.seq_len = 2048;
  const std::vector<int> positions = {1200, 1201, 1202, 1537, 2046};
  for (int n_layers : {2, 5, 7, 12}) {
    config.n_layers = n_layers;
    std::vector<double> results[2];
    for (int use_buffer = 0; use_buffer < 2; ++use_buffer) {
      auto est = SimilarityEstimator::Create(config);
      ASSERT_TRUE(est.ok());
      const SyntheticDecode fed = FeedDecodeRows(**est, config, positions, AllLayers(n_layers),
                                                 use_buffer == 1, 7 + n_layers);
      const SimilarityEstimate e = (*est)->Finish();
      EXPECT_EQ(e.decode_tokens, static_cast<int64_t>(positions.size()));
      EXPECT_FALSE(e.sampled);
      const std::vector<double> want = NaiveDistance(fed.rows, n_layers);
      // Distances here are ~1e-4 of the rows' squared norms.
      ExpectMatrixNear(e.decode_distance, want, 1e-5);
      for (int a = 0; a < n_layers; ++a) {
        EXPECT_EQ(e.Distance(a, a), 0.0);
        for (int b = a + 1; b < n_layers; ++b) {
          EXPECT_GT(e.Distance(a, b), 0.0) << a << "," << b;
        }
      }
      std::vector<double> first, last;
      NaiveEdgeMass(fed.rows, n_layers, first, last);
      for (int l = 0; l < n_layers; ++l) {
        EXPECT_NEAR(e.FirstMass(l), first[l], 1e-6) << "layer " << l;
        EXPECT_NEAR(e.LastMass(l), last[l], 1e-6) << "layer " << l;
      }
      results[use_buffer] = e.decode_distance;
    }
    // Writing into the estimator's buffer or handing over a copy: same D.
    EXPECT_EQ(results[0], results[1]) << n_layers << " layers";
  }
}

// A decode token whose later layers never come (a partial pass, then the
// next token; or the turn ends) is compared among the layers that came.
TEST(SimilarityEstimatorTest, PartialDecodeTokensCompareTheLayersReported) {
  ModelConfig config = SmallConfig();
  config.n_layers = 6;
  config.seq_len = 400;
  auto est = SimilarityEstimator::Create(config);
  ASSERT_TRUE(est.ok());
  std::vector<Row> rows;
  auto feed = [&](std::vector<int> positions, std::vector<int> layers, bool buffer) {
    const SyntheticDecode fed =
        FeedDecodeRows(**est, config, positions, layers, buffer, 100 + rows.size());
    rows.insert(rows.end(), fed.rows.begin(), fed.rows.end());
  };
  feed({300}, {0, 1, 2}, true);     // cut short: compared when 301 starts
  feed({301}, AllLayers(6), true);  // whole
  feed({302}, {0, 1, 2, 3, 4, 5}, false);
  feed({303}, {0, 1, 3}, false);  // cut short: compared by Finish
  const SimilarityEstimate e = (*est)->Finish();
  EXPECT_EQ(e.decode_tokens, 4);
  ExpectMatrixNear(e.decode_distance, NaiveDistance(rows, config.n_layers), 1e-5);
  // Layers 4 and 5 met only in tokens 301 and 302, layer 3 also in 303.
  EXPECT_GT(e.Distance(0, 3), 0.0);
  EXPECT_EQ((*est)->Finish().decode_tokens, 0);
}

// With decode head sampling the engine keeps its own buffer (only some
// heads are kept), and unequal head weights are compared head by head.
TEST(SimilarityEstimatorTest, DecodeBufferOnlyWhereRowsAreKeptWhole) {
  ModelConfig config = SmallConfig();
  config.n_heads = 8;
  config.n_kv_heads = 2;
  config.n_layers = 5;
  config.seq_len = 2048;
  SimilarityEstimatorOptions options;
  options.decode_head_stride = 3;  // heads 0, 3, 6 standing for 3, 3, 2
  auto sampled = SimilarityEstimator::Create(config, options);
  auto exact = SimilarityEstimator::Create(config);
  ASSERT_TRUE(sampled.ok() && exact.ok());
  EXPECT_EQ((*sampled)->DecodeBuffer(0, 10, 8, 11), nullptr);
  EXPECT_NE((*exact)->DecodeBuffer(0, 10, 8, 11), nullptr);
  EXPECT_EQ((*exact)->DecodeBuffer(4, 10, 8, 11), nullptr);      // last layer: compared in place
  EXPECT_EQ((*exact)->DecodeBuffer(0, 10, 7, 11), nullptr);      // wrong head count
  EXPECT_EQ((*exact)->DecodeBuffer(0, 10, 8, 12), nullptr);      // not a decode block
  EXPECT_EQ((*exact)->DecodeBuffer(0, 2048, 8, 2049), nullptr);  // beyond seq_len
  (*exact)->Reset();

  const SyntheticDecode fed =
      FeedDecodeRows(**sampled, config, {1500, 1501}, AllLayers(5), /*use_decode_buffer=*/true, 3);
  const SimilarityEstimate e = (*sampled)->Finish();
  EXPECT_TRUE(e.sampled);
  EXPECT_EQ(e.rows_compared, 2 * 3);
  ExpectMatrixNear(e.distance, NaiveDistance(fed.rows, config.n_layers, 3, config.n_heads), 1e-5);
}

TEST(SimilarityEstimatorTest, MalformedBlocksAreIgnored) {
  const ModelConfig config = SmallConfig();
  auto est = SimilarityEstimator::Create(config);
  ASSERT_TRUE(est.ok());
  std::vector<float> probs(64, 0.1f);
  AttentionWeights w;
  w.layer = 0;
  w.n_heads = config.n_heads + 1;  // wrong head count
  w.query_begin = 0;
  w.num_queries = 1;
  w.context_len = 1;
  w.probs = probs.data();
  (*est)->OnAttention(w);
  w.n_heads = config.n_heads;
  w.layer = config.n_layers;  // out of range
  (*est)->OnAttention(w);
  w.layer = 0;
  w.context_len = 5;  // != query_begin + num_queries
  (*est)->OnAttention(w);
  w.context_len = 1;
  w.probs = nullptr;
  (*est)->OnAttention(w);
  w.probs = probs.data();
  w.query_begin = config.seq_len;  // beyond the model's context
  w.context_len = config.seq_len + 1;
  (*est)->OnAttention(w);
  EXPECT_EQ((*est)->ignored_blocks(), 5);
  EXPECT_EQ((*est)->Finish().rows_represented, 0.0);
}

TEST(SimilarityEstimatorTest, QueryAndHeadSamplingIsWeightedAndReported) {
  const ModelConfig config = SmallConfig();
  SimilarityEstimatorOptions options;
  options.prefill_query_stride = 3;
  options.prefill_head_stride = 2;
  Rig s = MakeRig(config, options, /*query_block=*/40);
  Recorder recorder(s.estimator.get());
  EXPECT_TRUE(s.engine->SetAttentionObserver(&recorder).ok());
  auto cache = KvCache::Create(config, 100);
  ASSERT_TRUE(cache.ok());
  RunTurn(*s.engine, *cache, 100, 0);
  const SimilarityEstimate e = s.estimator->Finish();
  EXPECT_TRUE(e.sampled);
  EXPECT_EQ(e.prefill_tokens, 100);
  EXPECT_DOUBLE_EQ(e.rows_represented, 100.0 * config.n_heads);
  // Observer blocks [0,40) [40,80) [80,100): queries 0,3,..,39 (14), 14, and
  // 0,3,..,18 (7) of each block; heads 0 and 2.
  EXPECT_EQ(e.rows_compared, (14 + 14 + 7) * 2);

  // Naive: only sampled (head, query) rows, each weighted by the heads and
  // queries it stands for.
  const int L = config.n_layers;
  std::vector<Row> sampled;
  for (const Row& r : recorder.rows) {
    const int q = r.pos % 40;
    if (r.head % 2 == 0 && q % 3 == 0) sampled.push_back(r);
  }
  std::vector<double> want(static_cast<size_t>(L) * L, 0.0);
  for (const Row& x : sampled) {
    for (const Row& y : sampled) {
      if (x.head != y.head || x.pos != y.pos || x.layer == y.layer) continue;
      const int q = x.pos % 40, block_len = x.pos < 80 ? 40 : 20;
      const double weight = 2.0 * std::min(3, block_len - q);
      double d = 0;
      for (size_t k = 0; k < x.probs.size(); ++k)
        d += (x.probs[k] - y.probs[k]) * (x.probs[k] - y.probs[k]);
      want[static_cast<size_t>(x.layer) * L + y.layer] += weight * d;
    }
  }
  ExpectMatrixNear(e.distance, want, 1e-5);
}

// Decode head sampling: stride 2 of 4 heads (equal weights 2, 2) and
// stride 3 (heads 0 and 3 standing for 3 and 1 heads).
TEST(SimilarityEstimatorTest, DecodeHeadSamplingIsWeighted) {
  const ModelConfig config = SmallConfig();
  for (int stride : {2, 3}) {
    SimilarityEstimatorOptions options;
    options.decode_head_stride = stride;
    Rig s = MakeRig(config, options);
    Recorder recorder(s.estimator.get());
    EXPECT_TRUE(s.engine->SetAttentionObserver(&recorder).ok());
    auto cache = KvCache::Create(config, 80);
    ASSERT_TRUE(cache.ok());
    const auto tokens = Tokens(70, config.vocab_size);
    for (int pos = 0; pos < 70; ++pos) {
      ASSERT_TRUE(
          s.engine->Forward(*cache, std::span<const int>(tokens).subspan(pos, 1), pos, {}).ok());
    }
    const SimilarityEstimate e = s.estimator->Finish();
    EXPECT_TRUE(e.sampled);
    EXPECT_EQ(e.rows_compared, 70 * 2);
    EXPECT_DOUBLE_EQ(e.rows_represented, 70.0 * config.n_heads);
    ExpectMatrixNear(e.distance,
                     NaiveDistance(recorder.rows, config.n_layers, stride, config.n_heads), 1e-5);
  }
}

// Decode token sampling: only even positions, each counted twice.
TEST(SimilarityEstimatorTest, DecodeTokenSamplingIsWeighted) {
  const ModelConfig config = SmallConfig();
  SimilarityEstimatorOptions options;
  options.decode_token_stride = 2;
  Rig s = MakeRig(config, options);
  Recorder recorder(s.estimator.get());
  EXPECT_TRUE(s.engine->SetAttentionObserver(&recorder).ok());
  auto cache = KvCache::Create(config, 80);
  ASSERT_TRUE(cache.ok());
  const auto tokens = Tokens(41, config.vocab_size);
  for (int pos = 0; pos < 41; ++pos) {
    ASSERT_TRUE(
        s.engine->Forward(*cache, std::span<const int>(tokens).subspan(pos, 1), pos, {}).ok());
  }
  const SimilarityEstimate e = s.estimator->Finish();
  EXPECT_TRUE(e.sampled);
  EXPECT_EQ(e.decode_tokens, 41);
  EXPECT_DOUBLE_EQ(e.rows_represented, 41.0 * config.n_heads);
  EXPECT_EQ(e.rows_compared, 21 * config.n_heads);  // positions 0, 2, ..., 40
  std::vector<Row> even;
  for (const Row& r : recorder.rows) {
    if (r.pos % 2 == 0) even.push_back(r);
  }
  std::vector<double> want = NaiveDistance(even, config.n_layers);
  for (double& v : want) v *= 2;
  ExpectMatrixNear(e.distance, want, 1e-5);
}

TEST(SimilarityEstimatorTest, SlotBudgetForcesDeterministicSampling) {
  const ModelConfig config = SmallConfig();
  SimilarityEstimatorOptions options;
  // One 64-query block of 3 stored layers x 4 heads x ~64 keys is ~200 KB;
  // 16 KB forces a query stride.
  options.max_slot_bytes = 16 << 10;
  options.max_pending_bytes = 16 << 10;
  double first_d01 = -1;
  for (int run = 0; run < 2; ++run) {
    Rig s = MakeRig(config, options);
    EXPECT_TRUE(s.engine->SetAttentionObserver(s.estimator.get()).ok());
    auto cache = KvCache::Create(config, 210);
    ASSERT_TRUE(cache.ok());
    RunTurn(*s.engine, *cache, 200, 4);
    const SimilarityEstimate e = s.estimator->Finish();
    EXPECT_TRUE(e.sampled);
    EXPECT_LT(e.rows_compared, static_cast<int64_t>(e.rows_represented));
    EXPECT_GT(e.Distance(0, 1), 0.0);
    if (run == 0)
      first_d01 = e.Distance(0, 1);
    else
      EXPECT_EQ(e.Distance(0, 1), first_d01);  // same sample every run
  }
}

TEST(SimilarityEstimatorTest, DecodePoolGivesTheSameResult) {
  ModelConfig config = SmallConfig();
  config.n_layers = 12;
  ThreadPool pool(2);
  SimilarityEstimatorOptions with_pool;
  with_pool.decode_pool = &pool;
  std::vector<double> results[2];
  for (int run = 0; run < 2; ++run) {
    Rig s = MakeRig(config, run == 0 ? SimilarityEstimatorOptions{} : with_pool);
    EXPECT_TRUE(s.engine->SetAttentionObserver(s.estimator.get()).ok());
    auto cache = KvCache::Create(config, 600);
    ASSERT_TRUE(cache.ok());
    // Long enough that a decode token crosses the parallel threshold.
    RunTurn(*s.engine, *cache, 560, 8);
    results[run] = s.estimator->Finish().decode_distance;
  }
  ExpectMatrixNear(results[1], results[0], 1e-12);
}

TEST(SimilarityEstimatorTest, MergeAddsAndChecksShape) {
  SimilarityEstimate a = SimilarityEstimate::Empty(3), b = SimilarityEstimate::Empty(3);
  a.distance[1] = a.distance[3] = 2;
  b.distance[1] = b.distance[3] = 3;
  a.rows_represented = 1;
  b.rows_represented = 4;
  ASSERT_TRUE(a.Merge(b).ok());
  EXPECT_EQ(a.Distance(0, 1), 5);
  EXPECT_EQ(a.MeanDistance(0, 1), 1);
  EXPECT_EQ(a.Merge(SimilarityEstimate::Empty(4)).code(), absl::StatusCode::kInvalidArgument);
}

TEST(SimilarityEstimatorTest, OptionsAreValidated) {
  const ModelConfig config = SmallConfig();
  SimilarityEstimatorOptions o;
  o.edge_fraction = 0;
  EXPECT_EQ(SimilarityEstimator::Create(config, o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = {};
  o.prefill_query_stride = 0;
  EXPECT_EQ(SimilarityEstimator::Create(config, o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = {};
  o.max_pending_bytes = o.max_slot_bytes - 1;
  EXPECT_EQ(SimilarityEstimator::Create(config, o).status().code(),
            absl::StatusCode::kInvalidArgument);
  ModelConfig bad = config;
  bad.n_layers = 0;
  EXPECT_EQ(SimilarityEstimator::Create(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace krul
