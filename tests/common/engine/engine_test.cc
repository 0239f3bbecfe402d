#include <cmath>
#include <numeric>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "krul/engine/engine_cpu.h"
#include "krul/engine/kv_cache.h"
#include "krul/model/model.h"
#include "test_support/naive_llama.h"

namespace krul {
namespace {

// A tiny grouped-query model: 8 query heads share 2 KV heads.
ModelConfig TinyGqaConfig() {
  ModelConfig c;
  c.dim = 64;
  c.hidden_dim = 96;
  c.n_layers = 3;
  c.n_heads = 8;
  c.n_kv_heads = 2;
  c.vocab_size = 300;
  c.seq_len = 600;
  return c;
}

std::vector<int> Tokens(int n, int vocab, int salt = 0) {
  std::vector<int> t(n);
  for (int i = 0; i < n; ++i) t[i] = (i * 37 + 11 + salt * 101) % vocab;
  return t;
}

double MaxRelativeError(const float* got, const std::vector<double>& want) {
  double scale = 0, err = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    scale = std::max(scale, std::abs(want[i]));
    err = std::max(err, std::abs(got[i] - want[i]));
  }
  return err / std::max(scale, 1e-12);
}

struct Fixture {
  std::unique_ptr<Model> model;
  std::unique_ptr<Engine> engine;
};

Fixture Make(const ModelConfig& config, uint64_t seed = 7, int threads = 2) {
  Fixture f;
  auto model = MakeSyntheticModel(config, seed);
  EXPECT_TRUE(model.ok()) << model.status();
  f.model = std::move(*model);
  EngineOptions options;
  options.num_threads = threads;
  auto engine = Engine::Create(*f.model, options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  f.engine = std::move(*engine);
  return f;
}

TEST(EngineTest, DecodeMatchesNaiveDoublePrecisionForward) {
  for (int rope_dim : {0, 4}) {  // full and partial rotary embedding
    SCOPED_TRACE(rope_dim);
    ModelConfig config = TinyGqaConfig();
    config.rope_dim = rope_dim;
    Fixture f = Make(config);
    testing::NaiveLlama naive(*f.model);
    auto cache = KvCache::Create(config, 20);
    ASSERT_TRUE(cache.ok());
    std::vector<float> logits(config.vocab_size);
    const std::vector<int> tokens = Tokens(20, config.vocab_size);
    for (int pos = 0; pos < 20; ++pos) {
      ASSERT_TRUE(
          f.engine->Forward(*cache, std::span<const int>(&tokens[pos], 1), pos, logits).ok());
      std::vector<double> want = naive.Forward(tokens[pos], pos);
      EXPECT_LT(MaxRelativeError(logits.data(), want), 1e-4) << "pos " << pos;
    }
  }
}

TEST(EngineTest, PrefillEqualsTokenByTokenDecode) {
  ModelConfig config = TinyGqaConfig();
  Fixture f = Make(config);
  // 300 tokens cross the engine's internal block of 256 tokens.
  const int n = 300;
  const std::vector<int> tokens = Tokens(n, config.vocab_size);
  auto prefill_cache = KvCache::Create(config, n);
  auto decode_cache = KvCache::Create(config, n);
  ASSERT_TRUE(prefill_cache.ok() && decode_cache.ok());
  std::vector<float> all_logits(static_cast<size_t>(n) * config.vocab_size);
  ASSERT_TRUE(f.engine->Forward(*prefill_cache, tokens, 0, all_logits).ok());
  std::vector<float> logits(config.vocab_size);
  double worst = 0;
  for (int pos = 0; pos < n; ++pos) {
    ASSERT_TRUE(
        f.engine->Forward(*decode_cache, std::span<const int>(&tokens[pos], 1), pos, logits).ok());
    for (int i = 0; i < config.vocab_size; ++i) {
      worst = std::max<double>(
          worst,
          std::abs(logits[i] - all_logits[static_cast<size_t>(pos) * config.vocab_size + i]));
    }
  }
  EXPECT_LT(worst, 1e-3);
  // The caches agree too.
  for (int l = 0; l < config.n_layers; ++l) {
    for (int pos = 0; pos < n; pos += 37) {
      for (int i = 0; i < config.kv_dim(); ++i) {
        ASSERT_NEAR(prefill_cache->key(l, pos)[i], decode_cache->key(l, pos)[i], 1e-4);
        ASSERT_NEAR(prefill_cache->value(l, pos)[i], decode_cache->value(l, pos)[i], 1e-4);
      }
    }
  }
}

TEST(EngineTest, LayerByLayerPiecesEqualForward) {
  ModelConfig config = TinyGqaConfig();
  Fixture f = Make(config);
  const int history = 40, fresh = 9;
  const std::vector<int> tokens = Tokens(history + fresh, config.vocab_size, 3);
  auto reference = KvCache::Create(config, history + fresh);
  auto pieces = KvCache::Create(config, history + fresh);
  ASSERT_TRUE(reference.ok() && pieces.ok());
  std::vector<float> want(config.vocab_size), got(config.vocab_size);
  ASSERT_TRUE(f.engine->Forward(*reference, tokens, 0, want).ok());

  // Restore-style: the history's layers are computed for a token range from
  // given hidden states, then the new tokens are prefilled on top.
  std::vector<float> hidden(static_cast<size_t>(history) * config.dim);
  ASSERT_TRUE(f.engine->Embed(std::span<const int>(tokens.data(), history), hidden.data()).ok());
  for (int l = 0; l < config.n_layers; ++l) {
    ASSERT_TRUE(f.engine->ComputeLayer(l, *pieces, 0, history, hidden.data()).ok());
  }
  ASSERT_TRUE(
      f.engine->Forward(*pieces, std::span<const int>(tokens.data() + history, fresh), history, got)
          .ok());
  for (int i = 0; i < config.vocab_size; ++i) EXPECT_NEAR(got[i], want[i], 1e-4);
}

class RecordingObserver : public AttentionObserver {
 public:
  void OnAttention(const AttentionWeights& w) override {
    calls.push_back(w);
    // Copy the probabilities: the pointer dies after the call.
    blocks.emplace_back(w.probs,
                        w.probs + static_cast<size_t>(w.n_heads) * w.num_queries * w.context_len);
  }
  std::vector<AttentionWeights> calls;
  std::vector<std::vector<float>> blocks;
};

TEST(EngineTest, ObserverSeesCausalProbabilitiesThatMatchNaiveAttention) {
  ModelConfig config = TinyGqaConfig();
  Fixture f = Make(config);
  testing::NaiveLlama naive(*f.model);
  const int n = 12;
  const std::vector<int> tokens = Tokens(n, config.vocab_size, 5);
  std::vector<std::vector<std::vector<std::vector<double>>>>
      naive_probs;  // [pos][layer][head][key]
  for (int pos = 0; pos < n; ++pos) {
    naive.Forward(tokens[pos], pos);
    naive_probs.push_back(naive.last_attention());
  }
  EngineOptions options;
  options.num_threads = 2;
  options.observer_query_block = 5;  // 12 queries -> blocks of 5, 5, 2
  auto engine = Engine::Create(*f.model, options);
  ASSERT_TRUE(engine.ok());
  RecordingObserver observer;
  EXPECT_TRUE((*engine)->SetAttentionObserver(&observer).ok());
  auto cache = KvCache::Create(config, n);
  std::vector<float> observed_logits(config.vocab_size), plain_logits(config.vocab_size);
  ASSERT_TRUE((*engine)->Forward(*cache, tokens, 0, observed_logits).ok());
  ASSERT_EQ(observer.calls.size(), static_cast<size_t>(config.n_layers * 3));
  for (size_t c = 0; c < observer.calls.size(); ++c) {
    AttentionWeights w = observer.calls[c];
    w.probs = observer.blocks[c].data();
    EXPECT_EQ(w.context_len, w.query_begin + w.num_queries);
    for (int h = 0; h < w.n_heads; ++h) {
      for (int q = 0; q < w.num_queries; ++q) {
        const int pos = w.query_begin + q;
        const float* row = w.row(h, q);
        double sum = 0;
        for (int k = 0; k < w.context_len; ++k) {
          if (k > pos) {
            ASSERT_EQ(row[k], 0.0f) << "probability beyond the causal mask";
          } else {
            sum += row[k];
            ASSERT_NEAR(row[k], naive_probs[pos][w.layer][h][k], 1e-4);
          }
        }
        EXPECT_NEAR(sum, 1.0, 1e-5);
      }
    }
  }
  // Observing does not change the result.
  EXPECT_TRUE((*engine)->SetAttentionObserver(nullptr).ok());
  auto cache2 = KvCache::Create(config, n);
  ASSERT_TRUE((*engine)->Forward(*cache2, tokens, 0, plain_logits).ok());
  EXPECT_EQ(observed_logits, plain_logits);
}

// Hands out its own memory for decode blocks (filled with NaN, so a float
// the engine does not write shows) and checks that OnAttention gets it.
class BufferObserver : public AttentionObserver {
 public:
  float* DecodeBuffer(int layer, int position, int n_heads, int context_len) override {
    requests.push_back({layer, position, n_heads, context_len});
    buffer.assign(static_cast<size_t>(n_heads) * context_len + 16, std::nanf(""));
    return buffer.data();
  }
  void OnAttention(const AttentionWeights& w) override {
    calls.push_back(w);
    in_buffer.push_back(w.probs == buffer.data());
    blocks.emplace_back(w.probs,
                        w.probs + static_cast<size_t>(w.n_heads) * w.num_queries * w.context_len);
  }
  struct Request {
    int layer, position, n_heads, context_len;
  };
  std::vector<Request> requests;
  std::vector<float> buffer;
  std::vector<AttentionWeights> calls;
  std::vector<bool> in_buffer;
  std::vector<std::vector<float>> blocks;
};

TEST(EngineTest, DecodeBlocksGoIntoTheObserversBuffer) {
  ModelConfig config = TinyGqaConfig();
  Fixture f = Make(config);
  testing::NaiveLlama naive(*f.model);
  const int prompt = 7, n = 11;
  const std::vector<int> tokens = Tokens(n, config.vocab_size, 3);
  std::vector<std::vector<std::vector<std::vector<double>>>>
      naive_probs;  // [pos][layer][head][key]
  for (int pos = 0; pos < n; ++pos) {
    naive.Forward(tokens[pos], pos);
    naive_probs.push_back(naive.last_attention());
  }
  BufferObserver observer;
  EXPECT_TRUE(f.engine->SetAttentionObserver(&observer).ok());
  auto cache = KvCache::Create(config, n);
  ASSERT_TRUE(cache.ok());
  std::vector<float> logits(config.vocab_size);
  ASSERT_TRUE(
      f.engine->Forward(*cache, std::span<const int>(tokens).first(prompt), 0, logits).ok());
  EXPECT_TRUE(observer.requests.empty()) << "asked for a buffer for a prefill block";
  for (int pos = prompt; pos < n; ++pos) {
    ASSERT_TRUE(
        f.engine->Forward(*cache, std::span<const int>(tokens).subspan(pos, 1), pos, logits).ok());
  }
  // One request per layer per decode token, just before its block.
  ASSERT_EQ(observer.requests.size(), static_cast<size_t>((n - prompt) * config.n_layers));
  ASSERT_EQ(observer.calls.size(), static_cast<size_t>(config.n_layers * (1 + n - prompt)));
  for (size_t i = 0; i < observer.requests.size(); ++i) {
    const BufferObserver::Request& r = observer.requests[i];
    const AttentionWeights& w = observer.calls[config.n_layers + i];  // after the prefill's
    EXPECT_TRUE(observer.in_buffer[config.n_layers + i]);
    EXPECT_EQ(r.layer, w.layer);
    EXPECT_EQ(r.position, w.query_begin);
    EXPECT_EQ(r.n_heads, config.n_heads);
    EXPECT_EQ(r.context_len, w.context_len);
    EXPECT_EQ(w.context_len, w.query_begin + 1);
    const std::vector<float>& block = observer.blocks[config.n_layers + i];
    for (int h = 0; h < w.n_heads; ++h) {
      double sum = 0;
      for (int k = 0; k < w.context_len; ++k) {
        const float p = block[static_cast<size_t>(h) * w.context_len + k];
        ASSERT_TRUE(std::isfinite(p)) << "unwritten probability";
        ASSERT_NEAR(p, naive_probs[w.query_begin][w.layer][h][k], 1e-4);
        sum += p;
      }
      EXPECT_NEAR(sum, 1.0, 1e-5);
    }
  }
  EXPECT_FALSE(observer.in_buffer[0]);  // prefill: the engine's own buffer
}

TEST(EngineTest, SingleAndMultiThreadedAgree) {
  ModelConfig config = TinyGqaConfig();
  Fixture one = Make(config, 9, 1);
  Fixture two = Make(config, 9, 2);
  const std::vector<int> tokens = Tokens(33, config.vocab_size);
  auto c1 = KvCache::Create(config, 33);
  auto c2 = KvCache::Create(config, 33);
  std::vector<float> l1(config.vocab_size), l2(config.vocab_size);
  ASSERT_TRUE(one.engine->Forward(*c1, tokens, 0, l1).ok());
  ASSERT_TRUE(two.engine->Forward(*c2, tokens, 0, l2).ok());
  EXPECT_EQ(l1, l2);  // same arithmetic, only the split of rows differs
}

TEST(EngineTest, RejectsBadArguments) {
  ModelConfig config = TinyGqaConfig();
  Fixture f = Make(config);
  auto cache = KvCache::Create(config, 8);
  ASSERT_TRUE(cache.ok());
  std::vector<float> logits(config.vocab_size);
  const int bad_token = config.vocab_size;
  EXPECT_EQ(f.engine->Forward(*cache, std::span<const int>(&bad_token, 1), 0, logits).code(),
            absl::StatusCode::kInvalidArgument);
  const int negative = -1;
  EXPECT_EQ(f.engine->Forward(*cache, std::span<const int>(&negative, 1), 0, logits).code(),
            absl::StatusCode::kInvalidArgument);
  const std::vector<int> tokens = Tokens(4, config.vocab_size);
  auto beyond = f.engine->Forward(*cache, tokens, 6, logits);
  EXPECT_EQ(beyond.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(beyond.message()), ::testing::HasSubstr("capacity"));
  EXPECT_EQ(f.engine->Forward(*cache, {}, 0, logits).code(), absl::StatusCode::kInvalidArgument);
  std::vector<float> wrong(config.vocab_size + 1);
  EXPECT_EQ(f.engine->Forward(*cache, tokens, 0, wrong).code(), absl::StatusCode::kInvalidArgument);
  std::vector<float> hidden(config.dim);
  EXPECT_EQ(f.engine->ComputeLayer(config.n_layers, *cache, 0, 1, hidden.data()).code(),
            absl::StatusCode::kInvalidArgument);
  ModelConfig other = config;
  other.n_layers = 2;
  auto other_cache = KvCache::Create(other, 8);
  EXPECT_EQ(f.engine->Forward(*other_cache, tokens, 0, logits).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KvCache::Create(config, config.seq_len + 1).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(KvCacheTest, ViewsAddressLayerAndTokenRanges) {
  ModelConfig config = TinyGqaConfig();
  auto cache = KvCache::Create(config, 10);
  ASSERT_TRUE(cache.ok());
  cache->key(1, 4)[3] = 42.0f;
  cache->value(2, 9)[0] = 7.0f;
  KvLayerView view = cache->View(1, 3, 5);
  EXPECT_EQ(view.key(1)[3], 42.0f);
  EXPECT_EQ(view.bytes(), 2 * sizeof(float) * 5 * config.kv_dim());
  EXPECT_EQ(cache->View(2, 9, 1).value(0)[0], 7.0f);
  EXPECT_EQ(cache->LayerBytes(3), 2 * sizeof(float) * 3 * config.kv_dim());
}

}  // namespace
}  // namespace krul
