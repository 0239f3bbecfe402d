// The CUDA backend's KV cache through the BackendKvCache interface, against
// the CPU backend's KvCache: staged rows, rows of another dtype, the
// merged-pair fast path, reads back to the host, ordering of load-thread
// writes before compute (AwaitWrites), and refused ranges.
#include <algorithm>
#include <cmath>
#include <memory>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "krul/base/dtype.h"
#include "krul/engine/backend.h"
#include "krul/engine/cuda/engine_cuda.h"
#include "krul/engine/cuda/kv_cache_cuda.h"
#include "krul/engine/engine_cpu.h"
#include "krul/engine/kv_cache.h"
#include "test_support/cuda_test_util.h"

namespace krul {
namespace {

using testing::RandomVector;
using testing::RelativeError;

// Relative error of rows that went through `dtype` storage.
double Tolerance(DType dtype) { return dtype == DType::kF32 ? 0.0 : 1e-2; }

class CudaKvCacheTest : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    KRUL_REQUIRE_CUDA_DEVICE();
    config_ = testing::SmallConfig(64);
    auto model = MakeSyntheticModel(config_, 21);
    ASSERT_TRUE(model.ok());
    model_ = std::move(*model);
    CudaEngineOptions go;
    go.dtype = GetParam();
    auto engine = CudaEngine::Create(*model_, go);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
  }

  ModelConfig config_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<CudaEngine> engine_;
};

TEST_P(CudaKvCacheTest, WrittenRowsReadBackAsTheCpuCacheHoldsThem) {
  const DType dtype = GetParam();
  ComputeBackend& backend = *engine_;
  auto gpu = backend.CreateKvCache(32);
  auto cpu = KvCache::Create(config_, 32);
  ASSERT_TRUE(gpu.ok() && cpu.ok());
  const int kv = config_.kv_dim();
  // Staged fp32 rows of layer 1, [5, 12).
  const std::vector<float> k1 = RandomVector(7 * kv, -1, 1, 1), v1 = RandomVector(7 * kv, -1, 1, 2);
  for (BackendKvCache* cache : {gpu->get(), static_cast<BackendKvCache*>(&*cpu)}) {
    auto staged = cache->StageRows(1, 5, 7);
    ASSERT_TRUE(staged.ok()) << staged.status();
    std::copy(k1.begin(), k1.end(), staged->keys);
    std::copy(v1.begin(), v1.end(), staged->values);
    ASSERT_TRUE(cache->CommitRows(*staged).ok());
  }
  // Rows of layer 2, [0, 10), given in bf16 (converted by the cache).
  const std::vector<float> k2 = RandomVector(10 * kv, -1, 1, 3);
  const std::vector<float> v2 = RandomVector(10 * kv, -1, 1, 4);
  std::vector<uint16_t> k2b(k2.size()), v2b(v2.size());
  ConvertFromFp32(k2.data(), DType::kBF16, k2b.data(), k2.size());
  ConvertFromFp32(v2.data(), DType::kBF16, v2b.data(), v2.size());
  ASSERT_TRUE((*gpu)->WriteRows(2, 0, 10, DType::kBF16, k2b.data(), v2b.data()).ok());
  ASSERT_TRUE(cpu->WriteRows(2, 0, 10, DType::kBF16, k2b.data(), v2b.data()).ok());
  ASSERT_TRUE((*gpu)->WaitForWrites().ok());
  for (int layer : {1, 2}) {
    SCOPED_TRACE(layer);
    std::vector<float> gk(12 * kv), gv(12 * kv), ck(12 * kv), cv(12 * kv);
    ASSERT_TRUE((*gpu)->ReadRows(layer, 0, 12, gk.data(), gv.data()).ok());
    ASSERT_TRUE(cpu->ReadRows(layer, 0, 12, ck.data(), cv.data()).ok());
    EXPECT_LE(RelativeError(gk, ck), Tolerance(dtype) + 1e-7);
    EXPECT_LE(RelativeError(gv, cv), Tolerance(dtype) + 1e-7);
  }
  // The host copy of the whole cache.
  auto copy = CopyToHost(**gpu, 12);
  ASSERT_TRUE(copy.ok()) << copy.status();
  EXPECT_LE(RelativeError(std::span<const float>(copy->key(1, 5), 7 * kv), k1),
            Tolerance(dtype) + 1e-7);
}

// Merged rows expanded on the device equal the expansion by hand: layer a
// gets |x_a| * dir / |dir| per (token, head, K|V).
TEST_P(CudaKvCacheTest, MergedRowsExpandIntoBothLayers) {
  const DType dtype = GetParam();
  auto cache = engine_->CreateKvCache(16);
  ASSERT_TRUE(cache.ok());
  const int n = 5, heads = engine_->local_kv_heads(), kv = engine_->local_kv_dim();
  const int d = kv / heads;
  const std::vector<float> kdir = RandomVector(n * kv, -1, 1, 5);
  const std::vector<float> vdir = RandomVector(n * kv, -1, 1, 6);
  const std::vector<float> norms = RandomVector(n * heads * 4, 0.5f, 1.5f, 7);
  std::vector<uint8_t> kd(kdir.size() * DTypeSize(dtype)), vd(vdir.size() * DTypeSize(dtype));
  ConvertFromFp32(kdir.data(), dtype, kd.data(), kdir.size());
  ConvertFromFp32(vdir.data(), dtype, vd.data(), vdir.size());
  MergedKvRows rows;
  rows.first = 0;
  rows.second = 2;
  rows.begin = 3;
  rows.num_tokens = n;
  rows.n_kv_heads = heads;
  rows.dtype = dtype;
  rows.key_dirs = kd.data();
  rows.value_dirs = vd.data();
  rows.norms = norms.data();
  ASSERT_TRUE((*cache)->WriteMergedRows(rows).ok());
  ASSERT_TRUE((*cache)->WaitForWrites().ok());
  for (int which = 0; which < 2; ++which) {
    SCOPED_TRACE(which);
    std::vector<float> k(n * kv), v(n * kv), want_k(n * kv), want_v(n * kv);
    ASSERT_TRUE((*cache)->ReadRows(which == 0 ? 0 : 2, 3, n, k.data(), v.data()).ok());
    for (int t = 0; t < n; ++t) {
      for (int h = 0; h < heads; ++h) {
        for (int kvi = 0; kvi < 2; ++kvi) {
          const float* dir = (kvi == 0 ? kdir : vdir).data() + t * kv + h * d;
          double ss = 0;
          for (int i = 0; i < d; ++i) ss += static_cast<double>(dir[i]) * dir[i];
          const double scale = norms[(t * heads + h) * 4 + 2 * kvi + which] / std::sqrt(ss);
          float* out = (kvi == 0 ? want_k : want_v).data() + t * kv + h * d;
          for (int i = 0; i < d; ++i) out[i] = static_cast<float>(dir[i] * scale);
        }
      }
    }
    EXPECT_LE(RelativeError(k, want_k), Tolerance(dtype) + 1e-6);
    EXPECT_LE(RelativeError(v, want_v), Tolerance(dtype) + 1e-6);
  }
  // Another dtype than the cache's has no fast path.
  rows.dtype = dtype == DType::kF32 ? DType::kF16 : DType::kF32;
  EXPECT_EQ((*cache)->WriteMergedRows(rows).code(), absl::StatusCode::kUnimplemented);
}

// History rows written from another thread, then AwaitWrites, then the
// new tokens' compute: the logits are those of a plain forward pass.
TEST_P(CudaKvCacheTest, WritesFromTheLoadThreadAreOrderedBeforeCompute) {
  ComputeBackend& backend = *engine_;
  const std::vector<int> history = testing::RandomTokens(24, config_.vocab_size, 8);
  const std::vector<int> input = testing::RandomTokens(4, config_.vocab_size, 9);
  auto full = backend.CreateKvCache(28);
  ASSERT_TRUE(full.ok());
  std::vector<float> want(config_.vocab_size), got(config_.vocab_size);
  ASSERT_TRUE(backend.Forward(**full, history, 0, {}).ok());
  auto host = CopyToHost(**full, 24);
  ASSERT_TRUE(host.ok());
  ASSERT_TRUE(backend.Forward(**full, input, 24, want).ok());

  auto cache = backend.CreateKvCache(28);
  ASSERT_TRUE(cache.ok());
  absl::Status written;
  std::thread loader([&] {
    for (int l = 0; l < config_.n_layers && written.ok(); ++l) {
      written = (*cache)->WriteRows(l, 0, 24, DType::kF32, host->key(l, 0), host->value(l, 0));
    }
  });
  loader.join();  // the writes may still be in flight on the transfer stream
  ASSERT_TRUE(written.ok()) << written;
  for (int l = 0; l < config_.n_layers; ++l) ASSERT_TRUE(backend.AwaitWrites(**cache, l).ok());
  ASSERT_TRUE(backend.Forward(**cache, input, 24, got).ok());
  ASSERT_TRUE((*cache)->WaitForWrites().ok());
  EXPECT_LE(RelativeError(got, want), GetParam() == DType::kF32 ? 1e-5 : 2e-2);
}

TEST_P(CudaKvCacheTest, RangesOutsideTheCacheAreInvalidArgument) {
  auto cache = engine_->CreateKvCache(8);
  ASSERT_TRUE(cache.ok());
  float rows[1] = {0};
  EXPECT_EQ((*cache)->StageRows(config_.n_layers, 0, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*cache)->StageRows(0, 4, 5).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*cache)->WriteRows(0, -1, 1, DType::kF32, rows, rows).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*cache)->ReadRows(0, 7, 2, rows, rows).code(), absl::StatusCode::kInvalidArgument);
  KvLayerView foreign;
  foreign.layer = 0;
  foreign.num_tokens = 1;
  foreign.keys = rows;
  foreign.values = rows;
  EXPECT_EQ((*cache)->CommitRows(foreign).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine_->AwaitWrites(**cache, config_.n_layers).code(),
            absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(DTypes, CudaKvCacheTest,
                         ::testing::Values(DType::kF32, DType::kF16, DType::kBF16),
                         [](const ::testing::TestParamInfo<DType>& param_info) {
                           return std::string(DTypeName(param_info.param));
                         });

}  // namespace
}  // namespace krul
