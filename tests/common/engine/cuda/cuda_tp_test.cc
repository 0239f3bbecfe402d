// Tensor parallelism: world size 1 is exactly the plain engine; with two or
// more GPUs (and NCCL), world size 2 gives the same logits.
#include <vector>

#include "gtest/gtest.h"
#include "krul/engine/cuda/engine_cuda.h"
#include "krul/engine/cuda/tensor_parallel.h"
#include "test_support/cuda_test_util.h"

namespace krul {
namespace {

TEST(CudaTpTest, DeviceListsAreValidated) {
  // No GPU needed: the list is checked before anything is opened.
  EXPECT_EQ(CudaTpGroup::Create({}).status().code(), absl::StatusCode::kInvalidArgument);
  const std::vector<int> twice = {0, 0};
  EXPECT_EQ(CudaTpGroup::Create(twice).status().code(), absl::StatusCode::kInvalidArgument);
  const std::vector<int> negative = {-1};
  EXPECT_EQ(CudaTpGroup::Create(negative).status().code(), absl::StatusCode::kInvalidArgument);
}

std::vector<float> TpLogits(CudaTpEngine& tp, const std::vector<int>& prompt, int vocab) {
  auto caches = tp.CreateCaches(64);
  EXPECT_TRUE(caches.ok()) << caches.status();
  std::vector<float> logits(vocab);
  if (!caches.ok()) return logits;
  EXPECT_TRUE(tp.Forward(*caches, prompt, 0, {}).ok());
  const int token = 7;
  const absl::Status s =
      tp.Forward(*caches, std::span<const int>(&token, 1), static_cast<int>(prompt.size()), logits);
  EXPECT_TRUE(s.ok()) << s;
  return logits;
}

TEST(CudaTpTest, WorldSizeOneIsThePlainEngine) {
  KRUL_REQUIRE_CUDA_DEVICE();
  const ModelConfig config = testing::SmallConfig(64);
  auto model = MakeSyntheticModel(config, 51);
  ASSERT_TRUE(model.ok());
  CudaEngineOptions go;
  go.dtype = DType::kF32;
  const std::vector<int> devices = {0};
  auto tp = CudaTpEngine::Create(**model, devices, go);
  ASSERT_TRUE(tp.ok()) << tp.status();
  EXPECT_EQ((*tp)->world(), 1);
  EXPECT_EQ((*tp)->rank_engine(0).tp_world(), 1);
  auto plain = CudaEngine::Create(**model, go);
  ASSERT_TRUE(plain.ok());
  auto cache = CudaKvCache::Create(**plain, 64);
  ASSERT_TRUE(cache.ok());
  const auto prompt = testing::RandomTokens(20, config.vocab_size, 52);
  std::vector<float> want(config.vocab_size);
  ASSERT_TRUE((*plain)->Forward(*cache, prompt, 0, {}).ok());
  const int token = 7;
  ASSERT_TRUE((*plain)->Forward(*cache, std::span<const int>(&token, 1), 20, want).ok());
  EXPECT_EQ(testing::MaxAbsDiff(TpLogits(**tp, prompt, config.vocab_size), want), 0.0);
}

TEST(CudaTpTest, WorldSizeTwoMatchesWorldSizeOne) {
  KRUL_REQUIRE_CUDA_DEVICE();
  auto count = CudaDeviceCount();
  if (*count < 2) GTEST_SKIP() << "tensor parallelism needs two GPUs; this machine has " << *count;
  const ModelConfig config = testing::SmallConfig(64);  // 4 heads, 2 KV heads, 256 hidden
  auto model = MakeSyntheticModel(config, 53);
  ASSERT_TRUE(model.ok());
  CudaEngineOptions go;
  go.dtype = DType::kF32;
  const std::vector<int> one = {0}, two = {0, 1};
  auto tp1 = CudaTpEngine::Create(**model, one, go);
  ASSERT_TRUE(tp1.ok()) << tp1.status();
  auto tp2 = CudaTpEngine::Create(**model, two, go);
  if (tp2.status().code() == absl::StatusCode::kUnavailable) {
    GTEST_SKIP() << tp2.status().message();
  }
  ASSERT_TRUE(tp2.ok()) << tp2.status();
  EXPECT_EQ((*tp2)->rank_engine(1).local_heads(), 2);
  const auto prompt = testing::RandomTokens(20, config.vocab_size, 54);
  const auto want = TpLogits(**tp1, prompt, config.vocab_size);
  const auto got = TpLogits(**tp2, prompt, config.vocab_size);
  EXPECT_LT(testing::RelativeError(got, want), 1e-5);
}

}  // namespace
}  // namespace krul
