// The CUDA backend's own kernels, each against a naive double-precision
// host computation written from the definition.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels.h"
#include "krul/compress/compression_plan.h"
#include "krul/compress/compressor.h"
#include "krul/engine/kv_cache.h"
#include "test_support/cuda_test_util.h"

namespace krul {
namespace {

namespace kern = cuda_kernels;
using testing::DeviceZeros;
using testing::RandomVector;
using testing::ToDevice;
using testing::ToDeviceBytes;
using testing::ToHost;
using testing::ToHostAs;

std::vector<uint8_t> AsDType(DType dtype, const std::vector<float>& v) {
  std::vector<uint8_t> out(v.size() * DTypeSize(dtype));
  ConvertFromFp32(v.data(), dtype, out.data(), v.size());
  return out;
}

// Values rounded through `dtype` (what the kernel actually reads).
std::vector<float> Rounded(DType dtype, const std::vector<float>& v) {
  std::vector<float> out(v.size());
  const std::vector<uint8_t> raw = AsDType(dtype, v);
  ConvertToFp32(dtype, raw.data(), out.data(), v.size());
  return out;
}

double Tolerance(DType dtype) {
  return dtype == DType::kF32 ? 1e-5 : (dtype == DType::kF16 ? 2e-3 : 1.6e-2);
}

class KernelDTypeTest : public ::testing::TestWithParam<DType> {};

TEST_P(KernelDTypeTest, RmsNormMatchesDefinition) {
  KRUL_REQUIRE_CUDA_DEVICE();
  const DType dt = GetParam();
  const int rows = 5, dim = 300;
  const auto x = RandomVector(rows * dim, -2, 2, 1);
  const auto w = RandomVector(dim, 0.5, 1.5, 2);
  auto dx = ToDevice(x);
  auto dw = ToDevice(w);
  auto out = DeviceZeros(rows * dim * DTypeSize(dt));
  ASSERT_EQ(kern::RmsNorm(dt, dx.as<float>(), dw.as<float>(), rows, dim, 1e-5f, out.data(), 0),
            cudaSuccess);
  const auto got = ToHostAs(dt, out.data(), rows * dim);
  std::vector<float> want(rows * dim);
  for (int r = 0; r < rows; ++r) {
    double ss = 0;
    for (int i = 0; i < dim; ++i) ss += static_cast<double>(x[r * dim + i]) * x[r * dim + i];
    const double inv = 1.0 / std::sqrt(ss / dim + 1e-5);
    for (int i = 0; i < dim; ++i)
      want[r * dim + i] = static_cast<float>(w[i] * x[r * dim + i] * inv);
  }
  EXPECT_LT(testing::RelativeError(got, want), Tolerance(dt));
}

TEST_P(KernelDTypeTest, RopeScatterRotatesAdjacentPairs) {
  KRUL_REQUIRE_CUDA_DEVICE();
  const DType dt = GetParam();
  const int n = 3, heads = 4, kv_heads = 2, hs = 16, rotary = 12, half = rotary / 2;
  const int q_dim = heads * hs, kv_dim = kv_heads * hs, ld = q_dim + 2 * kv_dim;
  const auto qkv = Rounded(dt, RandomVector(n * ld, -1, 1, 3));
  const auto cos = RandomVector(n * half, -1, 1, 4);
  const auto sin = RandomVector(n * half, -1, 1, 5);
  auto dqkv = ToDeviceBytes(AsDType(dt, qkv).data(), qkv.size() * DTypeSize(dt));
  auto dcos = ToDevice(cos), dsin = ToDevice(sin);
  auto q = DeviceZeros(n * q_dim * DTypeSize(dt));
  auto k = DeviceZeros(n * kv_dim * DTypeSize(dt));
  auto v = DeviceZeros(n * kv_dim * DTypeSize(dt));
  ASSERT_EQ(kern::RopeScatter(dt, dqkv.data(), ld, n, heads, kv_heads, hs, rotary, dcos.as<float>(),
                              dsin.as<float>(), q.data(), k.data(), v.data(), 0),
            cudaSuccess);
  // Naive: per token, rotate pairs (2i, 2i+1) of each head for i < rotary/2.
  std::vector<float> wq(n * q_dim), wk(n * kv_dim), wv(n * kv_dim);
  for (int t = 0; t < n; ++t) {
    const float* row = qkv.data() + t * ld;
    auto rotate = [&](const float* src, float* dst, int nh) {
      for (int h = 0; h < nh; ++h) {
        for (int i = 0; i < hs; i += 2) {
          const double a = src[h * hs + i], b = src[h * hs + i + 1];
          if (i < rotary) {
            const double c = cos[t * half + i / 2], s = sin[t * half + i / 2];
            dst[h * hs + i] = static_cast<float>(a * c - b * s);
            dst[h * hs + i + 1] = static_cast<float>(a * s + b * c);
          } else {
            dst[h * hs + i] = static_cast<float>(a);
            dst[h * hs + i + 1] = static_cast<float>(b);
          }
        }
      }
    };
    rotate(row, wq.data() + t * q_dim, heads);
    rotate(row + q_dim, wk.data() + t * kv_dim, kv_heads);
    std::copy(row + q_dim + kv_dim, row + ld, wv.data() + t * kv_dim);
  }
  EXPECT_LT(testing::RelativeError(ToHostAs(dt, q.data(), n * q_dim), wq), Tolerance(dt));
  EXPECT_LT(testing::RelativeError(ToHostAs(dt, k.data(), n * kv_dim), wk), Tolerance(dt));
  EXPECT_EQ(testing::MaxAbsDiff(ToHostAs(dt, v.data(), n * kv_dim), wv), 0.0);
}

TEST_P(KernelDTypeTest, SwiGluMatchesDefinition) {
  KRUL_REQUIRE_CUDA_DEVICE();
  const DType dt = GetParam();
  const int n = 4, hidden = 77;
  const auto gu = Rounded(dt, RandomVector(n * 2 * hidden, -4, 4, 6));
  auto dgu = ToDeviceBytes(AsDType(dt, gu).data(), gu.size() * DTypeSize(dt));
  auto out = DeviceZeros(n * hidden * DTypeSize(dt));
  ASSERT_EQ(kern::SwiGlu(dt, dgu.data(), n, hidden, out.data(), 0), cudaSuccess);
  std::vector<float> want(n * hidden);
  for (int t = 0; t < n; ++t) {
    for (int j = 0; j < hidden; ++j) {
      const double g = gu[t * 2 * hidden + j], u = gu[t * 2 * hidden + hidden + j];
      want[t * hidden + j] = static_cast<float>(g / (1 + std::exp(-g)) * u);
    }
  }
  EXPECT_LT(testing::RelativeError(ToHostAs(dt, out.data(), n * hidden), want), Tolerance(dt));
}

// Causal GQA attention written out for one query at a time.
std::vector<float> NaiveAttention(const std::vector<float>& q, const std::vector<float>& keys,
                                  const std::vector<float>& values, int n, int pos0, int heads,
                                  int kv_heads, int hs, std::vector<float>* probs_out = nullptr) {
  const int q_dim = heads * hs, kv_dim = kv_heads * hs, group = heads / kv_heads;
  const int ctx_end = pos0 + n;
  std::vector<float> out(static_cast<size_t>(n) * q_dim);
  if (probs_out != nullptr) probs_out->assign(static_cast<size_t>(heads) * n * ctx_end, 0.0f);
  const double scale = 1.0 / std::sqrt(static_cast<double>(hs));
  for (int t = 0; t < n; ++t) {
    for (int h = 0; h < heads; ++h) {
      const int g = h / group, ctx = pos0 + t + 1;
      std::vector<double> s(ctx);
      double mx = -INFINITY;
      for (int j = 0; j < ctx; ++j) {
        double dot = 0;
        for (int i = 0; i < hs; ++i)
          dot += static_cast<double>(q[t * q_dim + h * hs + i]) * keys[j * kv_dim + g * hs + i];
        s[j] = dot * scale;
        mx = std::max(mx, s[j]);
      }
      double sum = 0;
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (int i = 0; i < hs; ++i) {
        double acc = 0;
        for (int j = 0; j < ctx; ++j) acc += s[j] / sum * values[j * kv_dim + g * hs + i];
        out[t * q_dim + h * hs + i] = static_cast<float>(acc);
      }
      if (probs_out != nullptr) {
        for (int j = 0; j < ctx; ++j)
          (*probs_out)[(static_cast<size_t>(h) * n + t) * ctx_end + j] =
              static_cast<float>(s[j] / sum);
      }
    }
  }
  return out;
}

TEST_P(KernelDTypeTest, FusedAttentionMatchesNaiveForEveryHeadSize) {
  KRUL_REQUIRE_CUDA_DEVICE();
  const DType dt = GetParam();
  for (int hs : {8, 16, 32, 64, 128}) {
    SCOPED_TRACE(hs);
    ASSERT_TRUE(kern::FusedAttentionSupports(hs));
    const int heads = 4, kv_heads = 2, n = 45, pos0 = 37, ctx_end = pos0 + n;
    const int q_dim = heads * hs, kv_dim = kv_heads * hs;
    const auto q = Rounded(dt, RandomVector(n * q_dim, -1, 1, 10 + hs));
    const auto keys = Rounded(dt, RandomVector(ctx_end * kv_dim, -1, 1, 20 + hs));
    const auto values = Rounded(dt, RandomVector(ctx_end * kv_dim, -1, 1, 30 + hs));
    auto dq = ToDeviceBytes(AsDType(dt, q).data(), q.size() * DTypeSize(dt));
    auto dk = ToDeviceBytes(AsDType(dt, keys).data(), keys.size() * DTypeSize(dt));
    auto dv = ToDeviceBytes(AsDType(dt, values).data(), values.size() * DTypeSize(dt));
    auto out = DeviceZeros(n * q_dim * DTypeSize(dt));
    ASSERT_EQ(kern::FusedAttention(dt, dq.data(), q_dim, dk.data(), dv.data(), kv_dim, n, pos0,
                                   heads, kv_heads, hs, 1.0f / std::sqrt(static_cast<float>(hs)),
                                   out.data(), q_dim, 0),
              cudaSuccess);
    const auto want = NaiveAttention(q, keys, values, n, pos0, heads, kv_heads, hs);
    EXPECT_LT(testing::RelativeError(ToHostAs(dt, out.data(), n * q_dim), want), Tolerance(dt));
  }
  EXPECT_FALSE(kern::FusedAttentionSupports(48));
}

TEST_P(KernelDTypeTest, CausalSoftmaxNormalizesVisibleKeysAndZeroesTheRest) {
  KRUL_REQUIRE_CUDA_DEVICE();
  const DType dt = GetParam();
  const int heads = 3, nq = 5, query_begin = 20, ctx = query_begin + nq;
  const auto scores = RandomVector(heads * nq * ctx, -8, 8, 40);
  auto ds = ToDevice(scores);
  auto probs = DeviceZeros(scores.size() * DTypeSize(dt));
  ASSERT_EQ(kern::CausalSoftmax(dt, ds.as<float>(), heads, nq, ctx, query_begin,
                                dt == DType::kF32 ? nullptr : probs.data(), 0),
            cudaSuccess);
  std::vector<float> want(scores.size(), 0.0f);
  for (int r = 0; r < heads * nq; ++r) {
    const int limit = query_begin + r % nq + 1;
    double mx = -INFINITY, sum = 0;
    for (int k = 0; k < limit; ++k) mx = std::max(mx, static_cast<double>(scores[r * ctx + k]));
    for (int k = 0; k < limit; ++k) sum += std::exp(scores[r * ctx + k] - mx);
    for (int k = 0; k < limit; ++k)
      want[r * ctx + k] = static_cast<float>(std::exp(scores[r * ctx + k] - mx) / sum);
  }
  const auto got = ToHost(ds, scores.size());
  EXPECT_LT(testing::MaxAbsDiff(got, want), 1e-6);
  for (int r = 0; r < heads * nq; ++r) {
    for (int k = query_begin + r % nq + 1; k < ctx; ++k) ASSERT_EQ(got[r * ctx + k], 0.0f);
  }
  if (dt != DType::kF32) {
    EXPECT_LT(testing::RelativeError(ToHostAs(dt, probs.data(), scores.size()), want),
              Tolerance(dt));
  }
}

INSTANTIATE_TEST_SUITE_P(AllDTypes, KernelDTypeTest,
                         ::testing::Values(DType::kF32, DType::kF16, DType::kBF16),
                         [](const auto& param_info) {
                           return std::string(DTypeName(param_info.param));
                         });

TEST(KernelTest, ArgmaxTakesTheFirstMaximumAndSkipsNaN) {
  KRUL_REQUIRE_CUDA_DEVICE();
  for (int n : {1, 7, 1000, 32000, 150001}) {
    SCOPED_TRACE(n);
    auto v = RandomVector(n, -5, 5, n);
    const int a = n / 3, b = (2 * n) / 3;
    v[a] = 9.0f;
    v[b] = 9.0f;  // a tie: the first index wins
    if (n > 2) v[n - 1] = NAN;
    auto dv = ToDevice(v);
    auto out = DeviceZeros(sizeof(int));
    ASSERT_EQ(kern::Argmax(dv.as<float>(), n, out.as<int>(), 0), cudaSuccess);
    int got = -1;
    ASSERT_EQ(cudaMemcpy(&got, out.data(), sizeof(int), cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(got, a);
  }
}

TEST(KernelTest, SamplingInvertsTheCumulativeDistribution) {
  KRUL_REQUIRE_CUDA_DEVICE();
  const int n = 5000;
  const auto logits = RandomVector(n, -3, 3, 77);
  auto dl = ToDevice(logits);
  auto out = DeviceZeros(sizeof(int));
  for (float temperature : {0.5f, 1.0f, 2.0f}) {
    double mx = -INFINITY;
    for (float x : logits) mx = std::max(mx, static_cast<double>(x));
    std::vector<double> cdf(n);
    double total = 0;
    for (int i = 0; i < n; ++i) cdf[i] = (total += std::exp((logits[i] - mx) / temperature));
    for (float u : {0.0f, 0.1f, 0.37f, 0.5f, 0.9f, 0.999f}) {
      ASSERT_EQ(kern::SampleFromLogits(dl.as<float>(), n, temperature, u, out.as<int>(), 0),
                cudaSuccess);
      int got = -1;
      ASSERT_EQ(cudaMemcpy(&got, out.data(), sizeof(int), cudaMemcpyDeviceToHost), cudaSuccess);
      ASSERT_GE(got, 0);
      ASSERT_LT(got, n);
      // The pick's CDF interval contains u (up to fp32 summation error).
      const double lo = got > 0 ? cdf[got - 1] / total : 0.0, hi = cdf[got] / total;
      EXPECT_LE(lo, u + 1e-4) << "T=" << temperature << " u=" << u;
      EXPECT_GE(hi, u - 1e-4) << "T=" << temperature << " u=" << u;
    }
  }
  EXPECT_EQ(kern::SampleFromLogits(dl.as<float>(), n, 0.0f, 0.5f, out.as<int>(), 0),
            cudaErrorInvalidValue);
}

TEST(KernelTest, DecodeDistancesAndEdgeMassMatchBruteForce) {
  KRUL_REQUIRE_CUDA_DEVICE();
  const int layers = 6, rows = 5, cap = 300, ctx = 257;
  auto values = RandomVector(layers * rows * cap, 0, 1, 91);
  const std::vector<float> weights = {1, 2, 1, 3, 0.5};
  std::vector<int> pairs;
  const std::vector<int> list = {0, 2, 3, 5};  // layers 1 and 4 did not report
  for (size_t i = 0; i < list.size(); ++i) {
    for (size_t j = i + 1; j < list.size(); ++j) {
      pairs.push_back(list[i]);
      pairs.push_back(list[j]);
    }
  }
  const int n_pairs = static_cast<int>(pairs.size() / 2);
  auto drows = ToDevice(values);
  auto dw = ToDevice(weights);
  auto dpairs = ToDeviceBytes(pairs.data(), pairs.size() * sizeof(int));
  auto dlist = ToDeviceBytes(list.data(), list.size() * sizeof(int));
  const int blocks = 7;
  auto partial = DeviceZeros(blocks * n_pairs * sizeof(float));
  auto distance = DeviceZeros(layers * layers * sizeof(double));
  auto first = DeviceZeros(layers * sizeof(double)), last = DeviceZeros(layers * sizeof(double));
  const int first_end = 26, last_begin = 231;
  for (int rep = 0; rep < 2; ++rep) {  // accumulates
    ASSERT_EQ(kern::DecodePairDistances(drows.as<float>(), layers, rows, cap, ctx, dw.as<float>(),
                                        dpairs.as<int>(), n_pairs, partial.as<float>(), blocks,
                                        distance.as<double>(), 0),
              cudaSuccess);
    ASSERT_EQ(
        kern::DecodeEdgeMass(drows.as<float>(), dlist.as<int>(), 4, rows, cap, ctx, first_end,
                             last_begin, dw.as<float>(), first.as<double>(), last.as<double>(), 0),
        cudaSuccess);
  }
  std::vector<double> d(layers * layers), f(layers), l(layers);
  ASSERT_EQ(cudaMemcpy(d.data(), distance.data(), d.size() * 8, cudaMemcpyDeviceToHost),
            cudaSuccess);
  ASSERT_EQ(cudaMemcpy(f.data(), first.data(), f.size() * 8, cudaMemcpyDeviceToHost), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(l.data(), last.data(), l.size() * 8, cudaMemcpyDeviceToHost), cudaSuccess);
  auto at = [&](int layer, int r, int k) {
    return static_cast<double>(values[(layer * rows + r) * cap + k]);
  };
  for (int a = 0; a < layers; ++a) {
    for (int b = 0; b < layers; ++b) {
      const bool reported = a != b && std::count(list.begin(), list.end(), a) &&
                            std::count(list.begin(), list.end(), b);
      double want = 0;
      if (reported) {
        for (int r = 0; r < rows; ++r) {
          for (int k = 0; k < ctx; ++k)
            want += weights[r] * (at(a, r, k) - at(b, r, k)) * (at(a, r, k) - at(b, r, k));
        }
      }
      EXPECT_NEAR(d[a * layers + b], 2 * want, 1e-4 * (1 + want)) << a << "," << b;
    }
    double wf = 0, wl = 0;
    if (std::count(list.begin(), list.end(), a)) {
      for (int r = 0; r < rows; ++r) {
        for (int k = 0; k < first_end; ++k) wf += weights[r] * at(a, r, k);
        for (int k = last_begin; k < ctx; ++k) wl += weights[r] * at(a, r, k);
      }
    }
    EXPECT_NEAR(f[a], 2 * wf, 1e-4 * (1 + wf)) << a;
    EXPECT_NEAR(l[a], 2 * wl, 1e-4 * (1 + wl)) << a;
  }
  EXPECT_GE(kern::DecodeEstimatorMaxLayers(), 80);  // a 70B Llama has 80 layers
}

// The restore kernel against the compressor's own decoder: a merged segment
// written by CompressKv expands on the GPU to what DecompressLayer gives.
TEST(KernelTest, ExpandMergedPairMatchesTheCompressorsDecoder) {
  KRUL_REQUIRE_CUDA_DEVICE();
  ModelConfig c = testing::SmallConfig(64);
  c.n_layers = 2;
  const int n = 40;
  const KvShape shape = KvShape::FromConfig(c);
  auto cache = KvCache::Create(c, n);
  ASSERT_TRUE(cache.ok());
  const auto k0 = RandomVector(n * c.kv_dim(), -1, 1, 101),
             k1 = RandomVector(n * c.kv_dim(), -1, 1, 102);
  const auto v0 = RandomVector(n * c.kv_dim(), -1, 1, 103),
             v1 = RandomVector(n * c.kv_dim(), -1, 1, 104);
  std::copy(k0.begin(), k0.end(), cache->key(0, 0));
  std::copy(k1.begin(), k1.end(), cache->key(1, 0));
  std::copy(v0.begin(), v0.end(), cache->value(0, 0));
  std::copy(v1.begin(), v1.end(), cache->value(1, 0));
  CompressionPlan plan = CompressionPlan::Uncompressed(2);
  plan.pairs.push_back({0, 1, 0.0});
  for (DType dt : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(dt));
    CompressorOptions co;
    co.dtype = dt;
    co.chunk_tokens = 0;  // one segment
    auto kv = CompressKv(*cache, shape, plan, n, {}, co);
    ASSERT_TRUE(kv.ok()) << kv.status();
    ASSERT_EQ(kv->segments.size(), 1u);
    const KvSegment& seg = kv->segments[0];
    ASSERT_EQ(seg.kind, SegmentKind::kMerged);
    ASSERT_EQ(seg.payload.size(), MergedBytesPerToken(shape, dt) * n);  // nothing retained
    auto reference = KvCache::Create(c, n);
    ASSERT_TRUE(reference.ok());
    ASSERT_TRUE(kv->DecompressAll(*reference).ok());

    const size_t row = c.kv_dim() * DTypeSize(dt);
    auto payload = ToDeviceBytes(seg.payload.data(), seg.payload.size());
    const uint8_t* base = payload.as<uint8_t>();
    auto out = DeviceZeros(4 * n * row);
    uint8_t* o = out.as<uint8_t>();
    ASSERT_EQ(kern::ExpandMergedPair(
                  dt, base, base + n * row, reinterpret_cast<const float*>(base + 2 * n * row), n,
                  c.n_kv_heads, c.head_size(), o, o + n * row, o + 2 * n * row, o + 3 * n * row, 0),
              cudaSuccess);
    const auto got = ToHostAs(dt, o, 4 * n * c.kv_dim());
    const size_t m = static_cast<size_t>(n) * c.kv_dim();
    auto part = [&](int i) { return std::span<const float>(got).subspan(i * m, m); };
    const double tol = dt == DType::kF32 ? 1e-6 : 8e-3;
    EXPECT_LT(testing::RelativeError(part(0), std::span<const float>(reference->key(0, 0), m)),
              tol);
    EXPECT_LT(testing::RelativeError(part(1), std::span<const float>(reference->value(0, 0), m)),
              tol);
    EXPECT_LT(testing::RelativeError(part(2), std::span<const float>(reference->key(1, 0), m)),
              tol);
    EXPECT_LT(testing::RelativeError(part(3), std::span<const float>(reference->value(1, 0), m)),
              tol);
  }
}

}  // namespace
}  // namespace krul
