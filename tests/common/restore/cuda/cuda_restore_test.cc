// Restore on the GPU with the one Restorer (restorer.h) over the CUDA
// backend: every split of recompute and load rebuilds the cache a full
// forward pass builds, merged pairs come back as the compressor's decoder
// says (the CUDA cache's expand fast path), KV decoded on the host through
// the cache's staged rows restores as on the CPU backend, bad plans are
// refused, and the probes give usable costs.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "krul/compress/compression_plan.h"
#include "krul/compress/compressor.h"
#include "krul/engine/backend.h"
#include "krul/engine/cuda/engine_cuda.h"
#include "krul/engine/engine_cpu.h"
#include "krul/engine/kv_cache.h"
#include "krul/restore/cost_model.h"
#include "krul/restore/cuda/host_kv_store_cuda.h"
#include "krul/restore/cuda/load_probe_cuda.h"
#include "krul/restore/kv_source.h"
#include "krul/restore/restore_mode.h"
#include "krul/restore/restore_plan.h"
#include "krul/restore/restorer.h"
#include "test_support/cuda_test_util.h"

namespace krul {
namespace {

RestorePlan HandPlan(const KvLayout& layout, int n_layers, int history, int new_tokens,
                     std::vector<int> recompute) {
  RestorePlan plan;
  plan.n_layers = n_layers;
  plan.history_tokens = history;
  plan.new_tokens = new_tokens;
  plan.layout = layout;
  plan.loads = MakeLoadSteps(layout, n_layers, history, recompute);
  plan.recompute_tokens = std::move(recompute);
  return plan;
}

class CudaRestoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto count = CudaDeviceCount();
    if (!count.ok()) GTEST_SKIP() << "no usable CUDA GPU (" << count.status().message() << ")";
    config_ = testing::SmallConfig(128);
    config_.n_layers = 4;
    auto model = MakeSyntheticModel(config_, 31);
    ASSERT_TRUE(model.ok());
    model_ = std::move(*model);
    CudaEngineOptions go;
    go.dtype = DType::kF32;
    auto engine = CudaEngine::Create(*model_, go);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
    history_ = testing::RandomTokens(kHistory, config_.vocab_size, 41);
    input_ = testing::RandomTokens(kNew, config_.vocab_size, 42);
    // The reference: history then the new input through a plain forward.
    auto full = engine_->CreateKvCache(kHistory + kNew);
    ASSERT_TRUE(full.ok());
    full_ = std::move(*full);
    reference_.resize(config_.vocab_size);
    ASSERT_TRUE(engine_->Forward(*full_, history_, 0, {}).ok());
    ASSERT_TRUE(engine_->Forward(*full_, input_, kHistory, reference_).ok());
  }

  // Rows [0, n) of every layer's K and V of `cache`.
  std::vector<float> Rows(const BackendKvCache& cache, int n) {
    std::vector<float> out;
    const size_t m = static_cast<size_t>(n) * cache.kv_dim();
    std::vector<float> k(m), v(m);
    for (int l = 0; l < cache.n_layers(); ++l) {
      EXPECT_TRUE(cache.ReadRows(l, 0, n, k.data(), v.data()).ok());
      out.insert(out.end(), k.begin(), k.end());
      out.insert(out.end(), v.begin(), v.end());
    }
    return out;
  }

  static constexpr int kHistory = 48;
  static constexpr int kNew = 6;
  ModelConfig config_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<CudaEngine> engine_;
  std::vector<int> history_, input_;
  std::unique_ptr<BackendKvCache> full_;
  std::vector<float> reference_;
};

TEST_F(CudaRestoreTest, EverySplitRebuildsTheCacheOfAFullForward) {
  const int L = config_.n_layers;
  auto store = CudaHostKvStore::Create(*engine_, kHistory, {});
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_TRUE((*store)->CopyPlainFromCache(*full_, kHistory).ok());
  auto restorer = Restorer::Create(*engine_);
  ASSERT_TRUE(restorer.ok()) << restorer.status();
  const KvLayout layout = UncompressedLayout(L, 1);
  const std::vector<std::vector<int>> splits = {
      {kHistory, kHistory, kHistory, kHistory},  // full recompute
      {0, 0, 0, 0},                              // full load
      {32, 16, 16, 0},                           // a pyramid
      {kHistory, 20, 3, 3},
  };
  const std::vector<float> want = Rows(*full_, kHistory + kNew);
  for (const auto& split : splits) {
    SCOPED_TRACE(::testing::PrintToString(split));
    auto cache = engine_->CreateKvCache(kHistory + kNew);
    ASSERT_TRUE(cache.ok());
    std::unique_ptr<KvSource> source = (*store)->NewSource();
    std::vector<float> logits(config_.vocab_size);
    auto result = (*restorer)->Restore(HandPlan(layout, L, kHistory, kNew, split), history_, input_,
                                       source.get(), **cache, logits);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_LT(testing::RelativeError(logits, reference_), 1e-5);
    EXPECT_LT(testing::RelativeError(Rows(**cache, kHistory + kNew), want), 1e-5);
    int64_t recomputed = 0;
    size_t loaded = 0;
    for (int n : split) {
      recomputed += n;
      loaded += static_cast<size_t>(kHistory - n) * 2 * (*store)->row_bytes();
    }
    EXPECT_EQ(result->recomputed_token_layers, recomputed);
    EXPECT_EQ(result->loaded_bytes, loaded);
    EXPECT_GT(result->total_seconds, 0);
    // Host time to the logits covers the device's prefill.
    EXPECT_GE(result->total_seconds, result->prefill_seconds * 0.5);
  }
}

// A shared pair restores as the compressor's decoder restores it, through
// the CUDA cache's merged-row fast path (WriteMergedRows).
TEST_F(CudaRestoreTest, MergedPairRestoresAsTheCompressorDecodes) {
  const int L = config_.n_layers;
  const KvShape shape = KvShape::FromConfig(config_);
  // The history's KV on the CPU, compressed with layers (1, 2) shared.
  auto cpu = CopyToHost(*full_, kHistory);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  CompressionPlan pairs = CompressionPlan::Uncompressed(L);
  pairs.pairs.push_back({1, 2, 0.0});
  CompressorOptions co;
  co.chunk_tokens = 0;
  auto kv = CompressKv(*cpu, shape, pairs, kHistory, {}, co);
  ASSERT_TRUE(kv.ok()) << kv.status();
  auto decoded = KvCache::Create(config_, kHistory);
  ASSERT_TRUE(decoded.ok());
  ASSERT_TRUE(kv->DecompressAll(*decoded).ok());

  // The same bytes in the pinned store: plain layers and the merged pair.
  const std::vector<int> firsts = {1};
  auto store = CudaHostKvStore::Create(*engine_, kHistory, firsts);
  ASSERT_TRUE(store.ok());
  const size_t row = (*store)->row_bytes();
  for (const KvSegment& seg : kv->segments) {
    ASSERT_EQ(seg.begin, 0);
    ASSERT_EQ(seg.end, kHistory);
    const uint8_t* p = seg.payload.data();
    if (seg.kind == SegmentKind::kPlain) {
      std::memcpy((*store)->plain_key(seg.layer, 0), p, row * kHistory);
      std::memcpy((*store)->plain_value(seg.layer, 0), p + row * kHistory, row * kHistory);
    } else {
      ASSERT_EQ(seg.payload.size(), MergedBytesPerToken(shape, DType::kF32) * kHistory);
      std::memcpy((*store)->merged_key_dirs(1, 0), p, row * kHistory);
      std::memcpy((*store)->merged_value_dirs(1, 0), p + row * kHistory, row * kHistory);
      std::memcpy((*store)->merged_norms(1, 0), p + 2 * row * kHistory,
                  seg.payload.size() - 2 * row * kHistory);
    }
  }
  auto restorer = Restorer::Create(*engine_);
  ASSERT_TRUE(restorer.ok());
  auto cache = engine_->CreateKvCache(kHistory + kNew);
  ASSERT_TRUE(cache.ok());
  std::unique_ptr<KvSource> source = (*store)->NewSource();
  std::vector<float> logits(config_.vocab_size);
  const KvLayout layout = LayoutForPlan(shape, pairs, DType::kF32);
  auto result = (*restorer)->Restore(HandPlan(layout, L, kHistory, kNew, {0, 0, 0, 0}), history_,
                                     input_, source.get(), **cache, logits);
  ASSERT_TRUE(result.ok()) << result.status();
  const size_t m = static_cast<size_t>(kHistory) * config_.kv_dim();
  std::vector<float> k(m), v(m);
  for (int l = 0; l < L; ++l) {
    SCOPED_TRACE(l);
    ASSERT_TRUE((*cache)->ReadRows(l, 0, kHistory, k.data(), v.data()).ok());
    EXPECT_LT(testing::RelativeError(k, std::span<const float>(decoded->key(l, 0), m)), 1e-6);
    EXPECT_LT(testing::RelativeError(v, std::span<const float>(decoded->value(l, 0), m)), 1e-6);
  }
}

// KV decoded on the host (the worker's and the in-process store's path:
// StageRows, decode, CommitRows) restores on the GPU as on the CPU backend:
// the same Restorer, the same plan and source, two backends.
TEST_F(CudaRestoreTest, StagedRowsRestoreLikeTheCpuBackend) {
  const int L = config_.n_layers;
  const KvShape shape = KvShape::FromConfig(config_);
  auto cpu_engine = Engine::Create(*model_, EngineOptions{.num_threads = 2});
  ASSERT_TRUE(cpu_engine.ok());
  // The CPU backend's own history KV, compressed with a shared pair and
  // stored in bf16.
  auto history_cache = KvCache::Create(config_, kHistory);
  ASSERT_TRUE(history_cache.ok());
  ASSERT_TRUE((*cpu_engine)->Forward(*history_cache, history_, 0, {}).ok());
  CompressionPlan pairs = CompressionPlan::Uncompressed(L);
  pairs.pairs.push_back({1, 3, 0.0});
  CompressorOptions co;
  co.dtype = DType::kBF16;
  co.chunk_tokens = 16;
  const std::vector<int> split = {24, 16, 16, 8};
  auto kv = CompressKv(*history_cache, shape, pairs, kHistory, split, co);
  ASSERT_TRUE(kv.ok()) << kv.status();
  auto store = InProcessKvStore::Create();
  ASSERT_TRUE(store.ok());
  (*store)->Put("c", *std::move(kv));
  const RestorePlan plan =
      HandPlan(LayoutForPlan(shape, pairs, DType::kBF16), L, kHistory, kNew, split);

  std::vector<std::vector<float>> logits;
  std::vector<std::vector<float>> rows;
  for (ComputeBackend* backend : {static_cast<ComputeBackend*>(cpu_engine->get()),
                                  static_cast<ComputeBackend*>(engine_.get())}) {
    SCOPED_TRACE(std::string(backend->name()));
    auto restorer = Restorer::Create(*backend);
    auto cache = backend->CreateKvCache(kHistory + kNew);
    auto source = (*store)->Open("c");
    ASSERT_TRUE(restorer.ok() && cache.ok() && source.ok());
    logits.emplace_back(config_.vocab_size);
    auto result =
        (*restorer)->Restore(plan, history_, input_, source->get(), **cache, logits.back());
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_GT(result->load_requests, 0);
    rows.push_back(Rows(**cache, kHistory + kNew));
  }
  EXPECT_LT(testing::RelativeError(logits[1], logits[0]), 1e-4);
  EXPECT_LT(testing::RelativeError(rows[1], rows[0]), 1e-4);
}

TEST_F(CudaRestoreTest, InconsistentPlansAreRefused) {
  const int L = config_.n_layers;
  auto store = CudaHostKvStore::Create(*engine_, kHistory, {});
  auto restorer = Restorer::Create(*engine_);
  auto cache = engine_->CreateKvCache(kHistory + kNew);
  ASSERT_TRUE(store.ok() && restorer.ok() && cache.ok());
  std::unique_ptr<KvSource> source = (*store)->NewSource();
  const KvLayout layout = UncompressedLayout(L, 1);
  std::vector<float> logits(config_.vocab_size);
  auto restore = [&](const RestorePlan& plan, std::span<const int> history) {
    return (*restorer)
        ->Restore(plan, history, input_, source.get(), **cache, logits)
        .status()
        .code();
  };
  // Not a pyramid.
  EXPECT_EQ(restore(HandPlan(layout, L, kHistory, kNew, {0, 8, 0, 0}), history_),
            absl::StatusCode::kInvalidArgument);
  // A layer whose tail nobody loads.
  RestorePlan missing = HandPlan(layout, L, kHistory, kNew, {8, 8, 8, 8});
  missing.loads.pop_back();
  EXPECT_EQ(restore(missing, history_), absl::StatusCode::kInvalidArgument);
  // A merged step the store has no rows for.
  const KvLayout paired = PairedLayout(L, {{0, 1}}, 1, 1);
  EXPECT_EQ(restore(HandPlan(paired, L, kHistory, kNew, {0, 0, 0, 0}), history_),
            absl::StatusCode::kInvalidArgument);
  // History of the wrong length.
  EXPECT_EQ(restore(HandPlan(layout, L, kHistory, kNew, {0, 0, 0, 0}),
                    std::span<const int>(history_).first(10)),
            absl::StatusCode::kInvalidArgument);
  // A cache too small for history + input.
  auto small = engine_->CreateKvCache(kHistory);
  ASSERT_TRUE(small.ok());
  EXPECT_EQ((*restorer)
                ->Restore(HandPlan(layout, L, kHistory, kNew, {0, 0, 0, 0}), history_, input_,
                          source.get(), **small, logits)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(CudaRestoreTest, ProbesFitTheMeasuredCosts) {
  ComputeProbeOptions cpo;
  cpo.token_counts = {8, 32, 96};
  cpo.late_start = 64;
  cpo.late_tokens = 16;
  cpo.repeats = 3;
  // The backend-generic probe, timed between device events.
  auto compute = ProbeCompute(*engine_, cpo);
  ASSERT_TRUE(compute.ok()) << compute.status();
  EXPECT_GT(compute->LayerSeconds(0, 64), 0);
  EXPECT_GE(compute->LayerSeconds(0, 96), compute->LayerSeconds(0, 8));
  LoadProbeOptions lpo;
  lpo.small_tokens = 1;
  lpo.large_tokens = 4096;
  auto load = ProbeCudaLoad(*engine_, 64 * 1024, lpo);
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_GT(load->bytes_per_second, 1e8);  // any PCIe / NVLink-C2C link moves > 0.1 GB/s
  EXPECT_LT(load->bytes_per_second, 1e12);
  ComputeProbeOptions bad;
  bad.token_counts = {8, 4096};
  EXPECT_EQ(ProbeCompute(*engine_, bad).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ProbeCudaLoad(*engine_, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace krul
