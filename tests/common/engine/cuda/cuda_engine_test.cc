// The CUDA engine against the CPU engine (the reference), on synthetic
// shapes in every dtype and attention implementation, and against
// llama2.c's greedy outputs for stories260K. Both engines are driven
// through the one ComputeBackend interface (krul/engine/backend.h).
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "krul/engine/backend.h"
#include "krul/engine/cuda/engine_cuda.h"
#include "krul/engine/engine_cpu.h"
#include "krul/engine/kv_cache.h"
#include "krul/engine/sampler.h"
#include "krul/model/model.h"
#include "test_support/cuda_test_util.h"
#include "test_support/test_data.h"

namespace krul {
namespace {

using testing::RandomTokens;
using testing::RelativeError;

struct EngineCase {
  DType dtype;
  CudaAttentionImpl attention;
};

void PrintTo(const EngineCase& c, std::ostream* os) {
  *os << DTypeName(c.dtype) << (c.attention == CudaAttentionImpl::kFused ? "/fused" : "/gemm");
}

std::string CaseName(const ::testing::TestParamInfo<EngineCase>& info) {
  return absl::StrCat(std::string(DTypeName(info.param.dtype)),
                      info.param.attention == CudaAttentionImpl::kFused ? "_fused" : "_gemm");
}

// Relative L2 error of logits allowed per dtype: fp32 is the CPU engine up to
// summation order; fp16/bf16 round every GEMM input and the KV cache.
double LogitTolerance(DType dtype) {
  return dtype == DType::kF32 ? 1e-4 : (dtype == DType::kF16 ? 1e-2 : 5e-2);
}

class CudaEngineParityTest : public ::testing::TestWithParam<EngineCase> {};

// A prefill (every token's logits) and a few decode steps on both engines;
// the CPU engine runs the weights rounded to the GPU's dtype.
TEST_P(CudaEngineParityTest, LogitsMatchTheCpuEngine) {
  KRUL_REQUIRE_CUDA_DEVICE();
  const EngineCase param = GetParam();
  const ModelConfig config = testing::SmallConfig(128);
  auto model = MakeSyntheticModel(config, 11);
  ASSERT_TRUE(model.ok());
  auto reference_model = testing::RoundedModel(**model, param.dtype);
  EngineOptions eo;
  eo.num_threads = 2;
  auto cpu = Engine::Create(*reference_model, eo);
  ASSERT_TRUE(cpu.ok());
  CudaEngineOptions go;
  go.dtype = param.dtype;
  go.attention = param.attention;
  go.max_block_tokens = 16;  // several blocks per prefill
  auto gpu = CudaEngine::Create(**model, go);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  ComputeBackend& cpu_backend = **cpu;
  ComputeBackend& gpu_backend = **gpu;
  auto cpu_cache = cpu_backend.CreateKvCache(64);
  auto gpu_cache = gpu_backend.CreateKvCache(64);
  ASSERT_TRUE(cpu_cache.ok());
  ASSERT_TRUE(gpu_cache.ok()) << gpu_cache.status();

  const std::vector<int> prompt = RandomTokens(37, config.vocab_size, 5);
  const size_t vocab = config.vocab_size;
  std::vector<float> want(prompt.size() * vocab), got(prompt.size() * vocab);
  ASSERT_TRUE(cpu_backend.Forward(**cpu_cache, prompt, 0, want).ok());
  ASSERT_TRUE(gpu_backend.Forward(**gpu_cache, prompt, 0, got).ok());
  EXPECT_LT(RelativeError(got, want), LogitTolerance(param.dtype));
  int agree = 0;
  for (size_t t = 0; t < prompt.size(); ++t) {
    agree += ArgMax(std::span<const float>(got).subspan(t * vocab, vocab)) ==
             ArgMax(std::span<const float>(want).subspan(t * vocab, vocab));
  }
  if (param.dtype == DType::kF32) {
    EXPECT_EQ(agree, static_cast<int>(prompt.size()));
  }
  RecordProperty("prefill_argmax_agreement", agree);

  std::vector<float> w(vocab), g(vocab);
  for (int step = 0; step < 5; ++step) {
    const int pos = static_cast<int>(prompt.size()) + step;
    const int token = 3 + (step * 37) % (config.vocab_size - 3);
    ASSERT_TRUE(cpu_backend.Forward(**cpu_cache, std::span<const int>(&token, 1), pos, w).ok());
    ASSERT_TRUE(gpu_backend.Forward(**gpu_cache, std::span<const int>(&token, 1), pos, g).ok());
    EXPECT_LT(RelativeError(g, w), LogitTolerance(param.dtype)) << "decode step " << step;
    // CUDA only: the next token picked on the device.
    auto next = (*gpu)->ForwardNext(**gpu_cache, std::span<const int>(&token, 1), pos);
    ASSERT_TRUE(next.ok()) << next.status();
    EXPECT_EQ(*next, ArgMax(g));  // same position again: same logits
  }
}

INSTANTIATE_TEST_SUITE_P(DTypesAndAttention, CudaEngineParityTest,
                         ::testing::Values(EngineCase{DType::kF32, CudaAttentionImpl::kAuto},
                                           EngineCase{DType::kF32, CudaAttentionImpl::kFused},
                                           EngineCase{DType::kF16, CudaAttentionImpl::kAuto},
                                           EngineCase{DType::kF16, CudaAttentionImpl::kFused},
                                           EngineCase{DType::kBF16, CudaAttentionImpl::kAuto},
                                           EngineCase{DType::kBF16, CudaAttentionImpl::kFused}),
                         CaseName);

// A prefill long enough that the cuBLAS attention path splits its queries
// into chunks (1 MiB of scores), checked against the CPU engine.
TEST(CudaEngineTest, ChunkedPrefillAttentionMatchesTheCpuEngine) {
  KRUL_REQUIRE_CUDA_DEVICE();
  ModelConfig config = testing::SmallConfig(1100);
  config.n_heads = 8;  // head_size 16, 4 query heads per KV head
  auto model = MakeSyntheticModel(config, 12);
  ASSERT_TRUE(model.ok());
  EngineOptions eo;
  eo.num_threads = 2;
  auto cpu = Engine::Create(**model, eo);
  CudaEngineOptions go;
  go.dtype = DType::kF32;
  go.attention_scratch_bytes = size_t{1} << 20;  // 32 queries per chunk at 1024 keys
  go.max_block_tokens = 512;
  auto gpu = CudaEngine::Create(**model, go);
  ASSERT_TRUE(cpu.ok());
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  ComputeBackend& cpu_backend = **cpu;
  ComputeBackend& gpu_backend = **gpu;
  auto cpu_cache = cpu_backend.CreateKvCache(1100);
  auto gpu_cache = gpu_backend.CreateKvCache(1100);
  ASSERT_TRUE(cpu_cache.ok() && gpu_cache.ok());
  const auto prompt = RandomTokens(1030, config.vocab_size, 6);
  std::vector<float> want(config.vocab_size), got(config.vocab_size);
  ASSERT_TRUE(cpu_backend.Forward(**cpu_cache, prompt, 0, want).ok());
  ASSERT_TRUE(gpu_backend.Forward(**gpu_cache, prompt, 0, got).ok());
  EXPECT_LT(RelativeError(got, want), 1e-4);
  // The cache itself: layer 2's keys of every position, read back to the host.
  std::vector<float> keys(1030 * config.kv_dim()), values(keys.size());
  std::vector<float> want_keys(keys.size()), want_values(keys.size());
  ASSERT_TRUE((*gpu_cache)->ReadRows(2, 0, 1030, keys.data(), values.data()).ok());
  ASSERT_TRUE((*cpu_cache)->ReadRows(2, 0, 1030, want_keys.data(), want_values.data()).ok());
  EXPECT_LT(RelativeError(keys, want_keys), 1e-4);
  EXPECT_LT(RelativeError(values, want_values), 1e-4);
}

// The per-layer pieces give what Forward gives.
TEST(CudaEngineTest, EmbedComputeLayerComputeLogitsEqualForward) {
  KRUL_REQUIRE_CUDA_DEVICE();
  const ModelConfig config = testing::SmallConfig(64);
  auto model = MakeSyntheticModel(config, 13);
  ASSERT_TRUE(model.ok());
  CudaEngineOptions go;
  go.dtype = DType::kF32;
  auto gpu = CudaEngine::Create(**model, go);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  ComputeBackend& backend = **gpu;
  auto a = backend.CreateKvCache(64), b = backend.CreateKvCache(64);
  ASSERT_TRUE(a.ok() && b.ok());
  const auto tokens = RandomTokens(20, config.vocab_size, 7);
  std::vector<float> want(config.vocab_size), got(config.vocab_size);
  ASSERT_TRUE(backend.Forward(**a, tokens, 0, want).ok());

  auto hidden = backend.CreateActivations(static_cast<int>(tokens.size()));
  ASSERT_TRUE(hidden.ok());
  float* x = (*hidden)->data();  // device memory
  ASSERT_TRUE(backend.Embed(tokens, x).ok());
  // Two halves: the second block's attention reads the first's cache rows.
  for (int l = 0; l < config.n_layers; ++l) {
    ASSERT_TRUE(backend.ComputeLayer(l, **b, 0, 12, x).ok());
  }
  for (int l = 0; l < config.n_layers; ++l) {
    ASSERT_TRUE(backend.ComputeLayer(l, **b, 12, 8, x + 12 * config.dim).ok());
  }
  ASSERT_TRUE(backend.ComputeLogits(x + 19 * config.dim, 1, got).ok());
  ASSERT_TRUE(backend.Synchronize().ok());
  EXPECT_LT(RelativeError(got, want), 1e-5);
}

TEST(CudaEngineTest, BadInputsAreInvalidArgument) {
  KRUL_REQUIRE_CUDA_DEVICE();
  const ModelConfig config = testing::SmallConfig(64);
  auto model = MakeSyntheticModel(config, 14);
  ASSERT_TRUE(model.ok());
  CudaEngineOptions go;
  go.dtype = DType::kBF16;
  auto gpu = CudaEngine::Create(**model, go);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  ComputeBackend& backend = **gpu;
  auto cache = backend.CreateKvCache(16);
  ASSERT_TRUE(cache.ok());
  std::vector<float> logits(config.vocab_size);
  const std::vector<int> bad = {1, config.vocab_size};
  EXPECT_EQ(backend.Forward(**cache, bad, 0, logits).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(backend.Forward(**cache, {}, 0, logits).code(), absl::StatusCode::kInvalidArgument);
  const std::vector<int> ok = {1, 2, 3};
  EXPECT_EQ(backend.Forward(**cache, ok, 14, logits).code(), absl::StatusCode::kInvalidArgument);
  std::vector<float> wrong(7);
  EXPECT_EQ(backend.Forward(**cache, ok, 0, wrong).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(backend.ComputeLayer(config.n_layers, **cache, 0, 1, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(backend.CreateKvCache(config.seq_len + 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  CudaSampling sampling;
  sampling.temperature = 1.0f;
  sampling.uniform = 1.5f;
  EXPECT_EQ((*gpu)->ForwardNext(**cache, ok, 0, sampling).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A cache of another dtype.
  go.dtype = DType::kF32;
  auto other = CudaEngine::Create(**model, go);
  ASSERT_TRUE(other.ok());
  auto other_cache = (*other)->CreateKvCache(16);
  ASSERT_TRUE(other_cache.ok());
  EXPECT_EQ(backend.Forward(**other_cache, ok, 0, logits).code(),
            absl::StatusCode::kInvalidArgument);
  // A cache of another backend (the CPU's).
  auto host_cache = KvCache::Create(config, 16);
  ASSERT_TRUE(host_cache.ok());
  EXPECT_EQ(backend.Forward(*host_cache, ok, 0, logits).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(backend.AwaitWrites(*host_cache, 0).code(), absl::StatusCode::kInvalidArgument);
  // After all that, the engine still works.
  EXPECT_TRUE(backend.Forward(**cache, ok, 0, logits).ok());
  CudaEngineOptions bad_options;
  bad_options.max_block_tokens = 0;
  EXPECT_EQ(CudaEngine::Create(**model, bad_options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Records every block an observer gets (copies the probabilities).
class Recorder : public AttentionObserver {
 public:
  struct Block {
    AttentionWeights meta;
    std::vector<float> probs;
  };
  void OnAttention(const AttentionWeights& w) override {
    Block b{w, std::vector<float>(w.probs, w.probs + static_cast<size_t>(w.n_heads) *
                                                         w.num_queries * w.context_len)};
    b.meta.probs = nullptr;
    blocks.push_back(std::move(b));
  }
  std::vector<Block> blocks;
};

TEST(CudaEngineTest, HostObserverGetsTheCpuEnginesBlocks) {
  KRUL_REQUIRE_CUDA_DEVICE();
  const ModelConfig config = testing::SmallConfig(128);
  auto model = MakeSyntheticModel(config, 15);
  ASSERT_TRUE(model.ok());
  EngineOptions eo;
  eo.num_threads = 2;
  eo.observer_query_block = 16;
  auto cpu = Engine::Create(**model, eo);
  CudaEngineOptions go;
  go.dtype = DType::kF32;
  go.observer_query_block = 16;
  auto gpu = CudaEngine::Create(**model, go);
  ASSERT_TRUE(cpu.ok());
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  ComputeBackend& cpu_backend = **cpu;
  ComputeBackend& gpu_backend = **gpu;
  auto cpu_cache = cpu_backend.CreateKvCache(64);
  auto gpu_cache = gpu_backend.CreateKvCache(64);
  ASSERT_TRUE(cpu_cache.ok() && gpu_cache.ok());
  Recorder want, got;
  ASSERT_TRUE(cpu_backend.SetAttentionObserver(&want).ok());
  ASSERT_TRUE(gpu_backend.SetAttentionObserver(&got).ok());
  const auto prompt = RandomTokens(40, config.vocab_size, 8);  // blocks of 16, 16, 8
  ASSERT_TRUE(cpu_backend.Forward(**cpu_cache, prompt, 0, {}).ok());
  ASSERT_TRUE(gpu_backend.Forward(**gpu_cache, prompt, 0, {}).ok());
  const int token = 9;
  ASSERT_TRUE(cpu_backend.Forward(**cpu_cache, std::span<const int>(&token, 1), 40, {}).ok());
  ASSERT_TRUE(gpu_backend.Forward(**gpu_cache, std::span<const int>(&token, 1), 40, {}).ok());
  ASSERT_TRUE(gpu_backend.SetAttentionObserver(nullptr).ok());
  ASSERT_TRUE(cpu_backend.SetAttentionObserver(nullptr).ok());
  ASSERT_EQ(got.blocks.size(), want.blocks.size());
  ASSERT_EQ(want.blocks.size(), static_cast<size_t>(4 * config.n_layers));
  for (size_t i = 0; i < want.blocks.size(); ++i) {
    const auto& w = want.blocks[i].meta;
    const auto& g = got.blocks[i].meta;
    SCOPED_TRACE(i);
    EXPECT_EQ(g.layer, w.layer);
    EXPECT_EQ(g.n_heads, w.n_heads);
    EXPECT_EQ(g.query_begin, w.query_begin);
    EXPECT_EQ(g.num_queries, w.num_queries);
    EXPECT_EQ(g.context_len, w.context_len);
    EXPECT_LT(testing::MaxAbsDiff(got.blocks[i].probs, want.blocks[i].probs), 1e-5);
  }
}

// ---- llama2.c reference outputs -----------------------------------------

struct Reference {
  std::vector<int> prompt_ids;
  std::vector<int> ids;
};

// The records of a *.greedy64.ref.txt file (format in its header).
std::vector<Reference> ParseReference(const std::string& path, int& steps) {
  std::vector<Reference> records;
  std::ifstream in(path);
  std::string line;
  auto ids = [](const std::string& text) {
    std::vector<int> v;
    std::istringstream s(text);
    for (int id; s >> id;) v.push_back(id);
    return v;
  };
  while (std::getline(in, line)) {
    if (line.rfind("# Command per record:", 0) == 0) {
      const size_t n = line.find(" -n ");
      if (n != std::string::npos) steps = std::stoi(line.substr(n + 4));
    } else if (line.rfind("prompt: ", 0) == 0) {
      records.emplace_back();
    } else if (!records.empty() && line.rfind("prompt_ids: ", 0) == 0) {
      records.back().prompt_ids = ids(line.substr(12));
    } else if (!records.empty() && line.rfind("ids: ", 0) == 0) {
      records.back().ids = ids(line.substr(5));
    }
  }
  return records;
}

// run.c's generate() with greedy picking on the device (as generator.cc):
// the prompt but its last token prefilled in one block, then one token per
// step until `steps` positions, stopping at BOS.
std::vector<int> GreedyGenerate(CudaEngine& engine, const std::vector<int>& prompt, int steps) {
  auto cache = CudaKvCache::Create(engine, steps);
  EXPECT_TRUE(cache.ok());
  std::vector<int> out = {prompt[0]};
  const int forced = std::min(static_cast<int>(prompt.size()) - 1, steps);
  if (forced > 0) {
    EXPECT_TRUE(engine.Forward(*cache, std::span<const int>(prompt.data(), forced), 0, {}).ok());
    for (int pos = 0; pos < forced; ++pos) {
      if (prompt[pos + 1] == 1) return out;
      out.push_back(prompt[pos + 1]);
    }
  }
  int token = prompt[forced];
  for (int pos = forced; pos < steps; ++pos) {
    auto next = engine.ForwardNext(*cache, std::span<const int>(&token, 1), pos);
    EXPECT_TRUE(next.ok()) << next.status();
    if (!next.ok() || *next == 1) break;
    out.push_back(*next);
    token = *next;
  }
  return out;
}

TEST(CudaEngineTest, Stories260KGreedyOutputEqualsTheReference) {
  KRUL_REQUIRE_CUDA_DEVICE();
  KRUL_REQUIRE_DATA_FILE(ref_path, "models/stories260K.greedy64.ref.txt");
  KRUL_REQUIRE_DATA_FILE(model_path, "models/stories260K.bin");
  int steps = 0;
  const auto records = ParseReference(ref_path, steps);
  ASSERT_EQ(steps, 64);
  ASSERT_FALSE(records.empty());
  auto model = LoadModel(model_path);
  ASSERT_TRUE(model.ok()) << model.status();
  for (CudaAttentionImpl impl : {CudaAttentionImpl::kAuto, CudaAttentionImpl::kFused}) {
    for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
      CudaEngineOptions go;
      go.dtype = dtype;
      go.attention = impl;
      auto engine = CudaEngine::Create(**model, go);
      ASSERT_TRUE(engine.ok()) << engine.status();
      int same = 0, total = 0;
      for (const Reference& r : records) {
        const auto ids = GreedyGenerate(**engine, r.prompt_ids, steps);
        if (dtype == DType::kF32) {
          EXPECT_EQ(ids, r.ids) << "fp32, attention " << static_cast<int>(impl);
        }
        // Reduced precision: how long the outputs stay identical (reported).
        size_t k = 0;
        while (k < ids.size() && k < r.ids.size() && ids[k] == r.ids[k]) ++k;
        same += static_cast<int>(k);
        total += static_cast<int>(r.ids.size());
      }
      RecordProperty(absl::StrCat("identical_prefix_", std::string(DTypeName(dtype)), "_",
                                  static_cast<int>(impl)),
                     absl::StrCat(same, "/", total));
      std::printf("stories260K %s attention=%d: identical prefix %d of %d reference tokens\n",
                  std::string(DTypeName(dtype)).c_str(), static_cast<int>(impl), same, total);
    }
  }
}

}  // namespace
}  // namespace krul
