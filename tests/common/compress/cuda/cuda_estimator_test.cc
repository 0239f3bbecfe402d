// The estimator on the GPU: the device decode accumulation against a brute
// force over random attention rows, and the whole estimator on a CUDA
// engine against the CPU estimator on the CPU engine.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "krul/compress/backend_estimator.h"
#include "krul/compress/cuda/estimator_cuda.h"
#include "krul/compress/similarity_estimator.h"
#include "krul/engine/cuda/engine_cuda.h"
#include "krul/engine/engine_cpu.h"
#include "krul/engine/kv_cache.h"
#include "test_support/cuda_test_util.h"

namespace krul {
namespace {

// The edge windows as similarity_estimator.h defines them.
void EdgeWindows(double fraction, int ctx, int& first_end, int& last_begin) {
  const int w = std::min(ctx, std::max(1, static_cast<int>(std::ceil(fraction * ctx - 1e-9))));
  first_end = w;
  last_begin = std::max(w, ctx - w);
}

class DecodeStrideTest : public ::testing::TestWithParam<int> {};

TEST_P(DecodeStrideTest, DeviceDecodeAccumulationMatchesBruteForce) {
  KRUL_REQUIRE_CUDA_DEVICE();
  const int stride = GetParam();
  ModelConfig config = testing::SmallConfig(64);
  config.n_layers = 5;
  CudaEngineOptions go;
  go.dtype = DType::kF32;
  auto engine = CudaEngine::CreateSynthetic(config, 1, go);
  ASSERT_TRUE(engine.ok()) << engine.status();
  SimilarityEstimatorOptions so;
  so.decode_head_stride = stride;
  auto estimator = CudaSimilarityEstimator::Create(**engine, 64, so);
  ASSERT_TRUE(estimator.ok()) << estimator.status();
  const int L = config.n_layers, H = config.n_heads;

  std::vector<double> d(L * L, 0.0), first(L, 0.0), last(L, 0.0), weight(L, 0.0);
  std::vector<CudaDeviceBuffer> keep;  // rows must live until Finish
  const int first_pos = 10, tokens = 5;
  for (int pos = first_pos; pos < first_pos + tokens; ++pos) {
    const int ctx = pos + 1;
    // The last token is cut short: only layers 0..2 report.
    const int reporting = pos + 1 == first_pos + tokens ? 3 : L;
    std::vector<std::vector<float>> rows(reporting);
    for (int l = 0; l < reporting; ++l) {
      rows[l] = testing::RandomVector(H * ctx, 0, 1, pos * 100 + l);
      for (int h = 0; h < H; ++h) {  // a probability row per head
        double s = 0;
        for (int k = 0; k < ctx; ++k) s += rows[l][h * ctx + k];
        for (int k = 0; k < ctx; ++k) rows[l][h * ctx + k] /= s;
      }
      keep.push_back(testing::ToDevice(rows[l]));
      AttentionWeights w;
      w.layer = l;
      w.n_heads = H;
      w.query_begin = pos;
      w.num_queries = 1;
      w.context_len = ctx;
      w.probs = keep.back().as<float>();
      ASSERT_TRUE((*estimator)->OnDeviceAttention(w, nullptr));
    }
    // Brute force over the sampled heads h = 0, stride, ..., each standing
    // for min(stride, H - h) heads.
    int fe = 0, lb = 0;
    EdgeWindows(so.edge_fraction, ctx, fe, lb);
    for (int h = 0; h < H; h += stride) {
      const double wh = std::min(stride, H - h);
      for (int a = 0; a < reporting; ++a) {
        for (int b = 0; b < reporting; ++b) {
          if (a == b) continue;
          double s = 0;
          for (int k = 0; k < ctx; ++k) {
            const double x = rows[a][h * ctx + k] - rows[b][h * ctx + k];
            s += x * x;
          }
          d[a * L + b] += wh * s;
        }
        for (int k = 0; k < fe; ++k) first[a] += wh * rows[a][h * ctx + k];
        for (int k = lb; k < ctx; ++k) last[a] += wh * rows[a][h * ctx + k];
      }
    }
    for (int a = 0; a < reporting; ++a) weight[a] += H;
  }
  // A prefill block is not the device's business.
  AttentionWeights prefill;
  prefill.layer = 0;
  prefill.n_heads = H;
  prefill.query_begin = 0;
  prefill.num_queries = 2;
  prefill.context_len = 2;
  prefill.probs = keep.front().as<float>();
  EXPECT_FALSE((*estimator)->OnDeviceAttention(prefill, nullptr));

  auto e = (*estimator)->Finish();
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->decode_tokens, tokens);
  EXPECT_EQ(e->prefill_tokens, 0);
  EXPECT_EQ(e->rows_represented, tokens * H);
  EXPECT_EQ(e->rows_compared, tokens * ((H + stride - 1) / stride));
  EXPECT_EQ(e->sampled, stride > 1);
  for (int i = 0; i < L * L; ++i) {
    EXPECT_NEAR(e->decode_distance[i], d[i], 1e-5 * (1 + d[i])) << i;
    EXPECT_NEAR(e->distance[i], d[i], 1e-5 * (1 + d[i])) << i;
    EXPECT_EQ(e->prefill_distance[i], 0.0);
  }
  for (int l = 0; l < L; ++l) {
    EXPECT_NEAR(e->first_mass_sum[l], first[l], 1e-5 * (1 + first[l]));
    EXPECT_NEAR(e->last_mass_sum[l], last[l], 1e-5 * (1 + last[l]));
    EXPECT_EQ(e->mass_weight[l], weight[l]);
  }
  // Finish starts afresh.
  auto again = (*estimator)->Finish();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->decode_tokens, 0);
  for (double x : again->distance) EXPECT_EQ(x, 0.0);
}

INSTANTIATE_TEST_SUITE_P(HeadStrides, DecodeStrideTest, ::testing::Values(1, 3));

// Prefill (host path, CPU estimator) and decode (device path) on the CUDA
// engine give the CPU engine + CPU estimator's estimate.
TEST(CudaEstimatorTest, EstimateMatchesTheCpuEstimatorOnTheCpuEngine) {
  KRUL_REQUIRE_CUDA_DEVICE();
  const ModelConfig config = testing::SmallConfig(128);
  auto model = MakeSyntheticModel(config, 21);
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
  // Both through the one interface: each backend gets its estimator from
  // the factory (the CPU estimator, the CUDA one).
  ComputeBackend& cpu_backend = **cpu;
  ComputeBackend& gpu_backend = **gpu;
  auto cpu_estimator = CreateBackendEstimator(cpu_backend, 64);
  auto gpu_estimator = CreateBackendEstimator(gpu_backend, 128);
  ASSERT_TRUE(cpu_estimator.ok());
  ASSERT_TRUE(gpu_estimator.ok()) << gpu_estimator.status();
  ASSERT_NE(dynamic_cast<CudaSimilarityEstimator*>((*gpu_estimator)->observer()), nullptr);
  auto cpu_cache = cpu_backend.CreateKvCache(64);
  auto gpu_cache = gpu_backend.CreateKvCache(64);
  ASSERT_TRUE(cpu_cache.ok() && gpu_cache.ok());
  ASSERT_TRUE(cpu_backend.SetAttentionObserver((*cpu_estimator)->observer()).ok());
  ASSERT_TRUE(gpu_backend.SetAttentionObserver((*gpu_estimator)->observer()).ok());

  const auto prompt = testing::RandomTokens(40, config.vocab_size, 9);
  ASSERT_TRUE(cpu_backend.Forward(**cpu_cache, prompt, 0, {}).ok());
  ASSERT_TRUE(gpu_backend.Forward(**gpu_cache, prompt, 0, {}).ok());
  for (int step = 0; step < 6; ++step) {
    const int token = 3 + step * 11;
    const int pos = 40 + step;
    ASSERT_TRUE(cpu_backend.Forward(**cpu_cache, std::span<const int>(&token, 1), pos, {}).ok());
    ASSERT_TRUE(gpu_backend.Forward(**gpu_cache, std::span<const int>(&token, 1), pos, {}).ok());
  }
  ASSERT_TRUE(cpu_backend.SetAttentionObserver(nullptr).ok());
  ASSERT_TRUE(gpu_backend.SetAttentionObserver(nullptr).ok());
  auto cpu_estimate = (*cpu_estimator)->Finish();
  ASSERT_TRUE(cpu_estimate.ok());
  const SimilarityEstimate want = *std::move(cpu_estimate);
  auto got = (*gpu_estimator)->Finish();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->prefill_tokens, want.prefill_tokens);
  EXPECT_EQ(got->decode_tokens, want.decode_tokens);
  EXPECT_EQ(got->decode_tokens, 6);
  EXPECT_EQ(got->rows_represented, want.rows_represented);
  auto close = [](const std::vector<double>& a, const std::vector<double>& b, const char* what) {
    ASSERT_EQ(a.size(), b.size()) << what;
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      num += (a[i] - b[i]) * (a[i] - b[i]);
      den += b[i] * b[i];
    }
    EXPECT_GT(den, 0) << what;
    EXPECT_LT(std::sqrt(num / den), 1e-4) << what;
  };
  close(got->prefill_distance, want.prefill_distance, "prefill distance");
  close(got->decode_distance, want.decode_distance, "decode distance");
  close(got->distance, want.distance, "distance");
  close(got->first_mass_sum, want.first_mass_sum, "first mass");
  close(got->last_mass_sum, want.last_mass_sum, "last mass");
  close(got->mass_weight, want.mass_weight, "mass weight");
}

TEST(CudaEstimatorTest, RejectsBadArguments) {
  KRUL_REQUIRE_CUDA_DEVICE();
  const ModelConfig config = testing::SmallConfig(64);
  CudaEngineOptions go;
  auto engine = CudaEngine::CreateSynthetic(config, 2, go);
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_EQ(CudaSimilarityEstimator::Create(**engine, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  SimilarityEstimatorOptions so;
  so.decode_head_stride = 0;
  EXPECT_EQ(CudaSimilarityEstimator::Create(**engine, 64, so).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A context beyond max_context is consumed, dropped, and reported by Finish.
  auto estimator = CudaSimilarityEstimator::Create(**engine, 8);
  ASSERT_TRUE(estimator.ok());
  auto rows = testing::DeviceZeros(config.n_heads * 20 * sizeof(float));
  AttentionWeights w;
  w.layer = 0;
  w.n_heads = config.n_heads;
  w.query_begin = 19;
  w.num_queries = 1;
  w.context_len = 20;
  w.probs = rows.as<float>();
  EXPECT_TRUE((*estimator)->OnDeviceAttention(w, nullptr));
  EXPECT_EQ((*estimator)->Finish().status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE((*estimator)->Finish().ok());  // the error was reported once
}

}  // namespace
}  // namespace krul
