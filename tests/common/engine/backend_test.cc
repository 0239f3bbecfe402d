// The compute-backend interface on the CPU backend, and the factory that
// picks a backend by device: device names, "auto" falling back to the CPU,
// "cuda" refused with a clear error where no GPU is usable (this CI), the
// pieces of the interface adding up to Forward, and the cache's write and
// read paths.
#include "krul/engine/backend.h"

#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "krul/engine/backend_factory.h"
#include "krul/engine/engine_cpu.h"
#include "krul/engine/kv_cache.h"
#include "krul/model/model.h"

namespace krul {
namespace {

using ::testing::HasSubstr;

ModelConfig SmallConfig() {
  ModelConfig c;
  c.dim = 32;
  c.hidden_dim = 48;
  c.n_layers = 3;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 64;
  c.seq_len = 64;
  return c;
}

std::vector<int> Tokens(int n, int vocab) {
  std::vector<int> t(n);
  for (int i = 0; i < n; ++i) t[i] = (i * 13 + 5) % vocab;
  return t;
}

TEST(BackendFactoryTest, DeviceNamesRoundTrip) {
  for (Device d : {Device::kAuto, Device::kCpu, Device::kCuda}) {
    auto parsed = ParseDevice(DeviceName(d));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, d);
  }
  auto bad = ParseDevice("gpu");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("auto, cpu or cuda"));
}

TEST(BackendFactoryTest, CpuStaysCpuAndAutoPicksWhatIsThere) {
  auto cpu = ResolveDevice(Device::kCpu);
  ASSERT_TRUE(cpu.ok());
  EXPECT_EQ(*cpu, Device::kCpu);
  auto resolved = ResolveDevice(Device::kAuto);
  ASSERT_TRUE(resolved.ok());
  // Auto is CUDA exactly when an explicit request for CUDA succeeds.
  auto cuda = ResolveDevice(Device::kCuda);
  EXPECT_EQ(*resolved == Device::kCuda, cuda.ok());
  if (!BuildHasCuda()) {
    EXPECT_EQ(*resolved, Device::kCpu);
  }
}

TEST(BackendFactoryTest, CudaWithoutAUsableGpuIsAClearError) {
  if (ResolveDevice(Device::kAuto).value_or(Device::kCpu) == Device::kCuda) {
    GTEST_SKIP() << "a CUDA device is usable here";
  }
  auto model = MakeSyntheticModel(SmallConfig(), 3);
  ASSERT_TRUE(model.ok());
  BackendOptions options;
  options.device = Device::kCuda;
  auto backend = CreateBackend(**model, options);
  ASSERT_FALSE(backend.ok());
  EXPECT_EQ(backend.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(backend.status().message()), HasSubstr("CUDA was requested"));
  EXPECT_THAT(std::string(backend.status().message()),
              HasSubstr(BuildHasCuda() ? "no CUDA device is usable" : "no CUDA backend"));
  // Auto falls back to the CPU.
  options.device = Device::kAuto;
  auto fallback = CreateBackend(**model, options);
  ASSERT_TRUE(fallback.ok()) << fallback.status();
  EXPECT_EQ((*fallback)->name(), "cpu");
}

TEST(BackendFactoryTest, TheCpuBackendComputesAsTheEngine) {
  auto model = MakeSyntheticModel(SmallConfig(), 4);
  ASSERT_TRUE(model.ok());
  BackendOptions options;
  options.device = Device::kCpu;
  options.cpu.num_threads = 1;
  auto backend = CreateBackend(**model, options);
  ASSERT_TRUE(backend.ok()) << backend.status();
  EXPECT_EQ((*backend)->name(), "cpu");
  auto engine = Engine::Create(**model, options.cpu);
  ASSERT_TRUE(engine.ok());
  const std::vector<int> tokens = Tokens(9, 64);
  std::vector<float> want(64), got(64);
  auto a = KvCache::Create(SmallConfig(), 16);
  auto b = (*backend)->CreateKvCache(16);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE((*engine)->Forward(*a, tokens, 0, want).ok());
  ASSERT_TRUE((*backend)->Forward(**b, tokens, 0, got).ok());
  EXPECT_EQ(got, want);
}

class CpuBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = MakeSyntheticModel(SmallConfig(), 5);
    ASSERT_TRUE(model.ok());
    model_ = std::move(*model);
    auto engine = Engine::Create(*model_, EngineOptions{.num_threads = 2});
    ASSERT_TRUE(engine.ok());
    engine_ = std::move(*engine);
  }
  std::unique_ptr<Model> model_;
  std::unique_ptr<Engine> engine_;
};

// Embed + ComputeLayer per layer + ComputeLogits, through the interface,
// give what Forward gives (the restore path's pieces).
TEST_F(CpuBackendTest, PiecesAddUpToForward) {
  ComputeBackend& backend = *engine_;
  const ModelConfig& c = backend.config();
  const std::vector<int> tokens = Tokens(11, c.vocab_size);
  auto a = backend.CreateKvCache(16), b = backend.CreateKvCache(16);
  ASSERT_TRUE(a.ok() && b.ok());
  std::vector<float> want(c.vocab_size), got(c.vocab_size), both(2 * c.vocab_size);
  ASSERT_TRUE(backend.Forward(**a, tokens, 0, want).ok());
  auto hidden = backend.CreateActivations(static_cast<int>(tokens.size()));
  ASSERT_TRUE(hidden.ok());
  EXPECT_EQ((*hidden)->rows(), 11);
  float* x = (*hidden)->data();
  ASSERT_TRUE(backend.Embed(tokens, x).ok());
  for (int l = 0; l < c.n_layers; ++l) {
    ASSERT_TRUE(backend.AwaitWrites(**b, l).ok());
    ASSERT_TRUE(backend.ComputeLayer(l, **b, 0, 11, x).ok());
  }
  ASSERT_TRUE(backend.ComputeLogits(x + 10 * c.dim, 1, got).ok());
  ASSERT_TRUE(backend.Synchronize().ok());
  EXPECT_EQ(got, want);
  // Two rows at once: the second is the last token's.
  ASSERT_TRUE(backend.ComputeLogits(x + 9 * c.dim, 2, both).ok());
  EXPECT_EQ(std::vector<float>(both.begin() + c.vocab_size, both.end()), want);
}

TEST_F(CpuBackendTest, BadArgumentsAreInvalidArgument) {
  ComputeBackend& backend = *engine_;
  const ModelConfig& c = backend.config();
  auto cache = backend.CreateKvCache(8);
  ASSERT_TRUE(cache.ok());
  std::vector<float> logits(c.vocab_size), row(c.dim);
  EXPECT_EQ(backend.CreateKvCache(0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(backend.CreateKvCache(c.seq_len + 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(backend.CreateActivations(0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(backend.Embed({}, row.data()).code(), absl::StatusCode::kInvalidArgument);
  const std::vector<int> one = {1};
  EXPECT_EQ(backend.Embed(one, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(backend.ComputeLayer(0, **cache, 0, 1, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(backend.ComputeLogits(row.data(), 2, logits).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(backend.AwaitWrites(**cache, c.n_layers).code(), absl::StatusCode::kInvalidArgument);
  // A cache of another shape.
  auto other = KvCache::Create(c.n_layers, c.kv_dim() * 2, 8);
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(backend.Forward(*other, one, 0, logits).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CpuBackendTest, MarksMeasureTheWorkBetweenThem) {
  ComputeBackend& backend = *engine_;
  auto cache = backend.CreateKvCache(32);
  ASSERT_TRUE(cache.ok());
  auto before = backend.RecordMark();
  ASSERT_TRUE(before.ok());
  ASSERT_TRUE(backend.Forward(**cache, Tokens(32, 64), 0, {}).ok());
  auto after = backend.RecordMark();
  ASSERT_TRUE(after.ok());
  auto seconds = backend.SecondsBetween(**before, **after);
  ASSERT_TRUE(seconds.ok());
  EXPECT_GT(*seconds, 0);
  EXPECT_LE(*backend.SecondsBetween(**before, **before), 0.0);
}

// The CPU cache's write paths land in its rows at once, and read back.
TEST(KvCacheBackendTest, WritesLandInTheRowsAndReadBack) {
  auto cache = KvCache::Create(2, 4, 8);
  ASSERT_TRUE(cache.ok());
  BackendKvCache& backend_cache = *cache;
  EXPECT_EQ(backend_cache.host_cache(), &*cache);
  auto staged = backend_cache.StageRows(1, 2, 3);
  ASSERT_TRUE(staged.ok());
  EXPECT_EQ(staged->keys, cache->key(1, 2));  // straight into host memory
  for (int i = 0; i < 12; ++i) {
    staged->keys[i] = static_cast<float>(i);
    staged->values[i] = static_cast<float>(-i);
  }
  ASSERT_TRUE(backend_cache.CommitRows(*staged).ok());
  const std::vector<float> k = {0.5f, 1.5f, 2.5f, 3.5f}, v = {-1, -2, -3, -4};
  std::vector<uint16_t> k16(4), v16(4);
  ConvertFromFp32(k.data(), DType::kF16, k16.data(), 4);
  ConvertFromFp32(v.data(), DType::kF16, v16.data(), 4);
  ASSERT_TRUE(backend_cache.WriteRows(0, 7, 1, DType::kF16, k16.data(), v16.data()).ok());
  ASSERT_TRUE(backend_cache.WaitForWrites().ok());
  std::vector<float> rk(4), rv(4);
  ASSERT_TRUE(backend_cache.ReadRows(0, 7, 1, rk.data(), rv.data()).ok());
  EXPECT_EQ(rk, k);
  EXPECT_EQ(rv, v);
  auto copy = CopyToHost(backend_cache, 5);
  ASSERT_TRUE(copy.ok());
  EXPECT_EQ(copy->capacity(), 5);
  EXPECT_EQ(*copy->key(1, 4), 8.0f);  // token 4 = staged row 2, element 0
  EXPECT_EQ(*copy->value(1, 3), -4.0f);
  // No merged-row fast path on the CPU; ranges outside the cache refused.
  EXPECT_EQ(backend_cache.WriteMergedRows(MergedKvRows{}).code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(backend_cache.StageRows(2, 0, 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(backend_cache.ReadRows(0, 6, 3, rk.data(), rv.data()).code(),
            absl::StatusCode::kInvalidArgument);
  KvLayerView foreign = *staged;
  foreign.keys = rk.data();
  EXPECT_EQ(backend_cache.CommitRows(foreign).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CopyToHost(backend_cache, 9).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace krul
