#include "test_support/cuda_test_util.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <random>

namespace krul::testing {

double RelativeError(std::span<const float> a, std::span<const float> b) {
  EXPECT_EQ(a.size(), b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
  }
  if (!std::isfinite(num)) return INFINITY;
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

double MaxAbsDiff(std::span<const float> a, std::span<const float> b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    const double d = std::abs(static_cast<double>(a[i]) - b[i]);
    if (!(d <= m)) m = d;  // NaN wins
  }
  return m;
}

CudaDeviceBuffer ToDeviceBytes(const void* data, size_t bytes) {
  auto buffer = CudaDeviceBuffer::Allocate(bytes);
  EXPECT_TRUE(buffer.ok()) << buffer.status();
  if (!buffer.ok()) return CudaDeviceBuffer();
  EXPECT_EQ(cudaMemcpy(buffer->data(), data, bytes, cudaMemcpyHostToDevice), cudaSuccess);
  return std::move(*buffer);
}

CudaDeviceBuffer ToDevice(std::span<const float> values) {
  return ToDeviceBytes(values.data(), values.size() * sizeof(float));
}

CudaDeviceBuffer DeviceZeros(size_t bytes) {
  auto buffer = CudaDeviceBuffer::Allocate(bytes);
  EXPECT_TRUE(buffer.ok()) << buffer.status();
  if (!buffer.ok()) return CudaDeviceBuffer();
  EXPECT_EQ(cudaMemset(buffer->data(), 0, bytes), cudaSuccess);
  return std::move(*buffer);
}

std::vector<float> ToHost(const CudaDeviceBuffer& buffer, size_t count) {
  return ToHostAs(DType::kF32, buffer.data(), count);
}

std::vector<float> ToHostAs(DType dtype, const void* device, size_t count) {
  std::vector<uint8_t> raw(count * DTypeSize(dtype));
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(raw.data(), device, raw.size(), cudaMemcpyDeviceToHost), cudaSuccess);
  std::vector<float> out(count);
  ConvertToFp32(dtype, raw.data(), out.data(), count);
  return out;
}

std::vector<float> RandomVector(size_t n, float lo, float hi, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

std::unique_ptr<Model> RoundedModel(const Model& model, DType dtype) {
  const ModelConfig& c = model.config();
  AlignedBuffer<float> weights(Llama2cWeightCount(c));
  float* p = weights.data();
  // Appends `count` floats, rounded through `dtype` unless keep_fp32.
  auto put = [&](const float* src, size_t count, bool keep_fp32) {
    if (keep_fp32 || dtype == DType::kF32) {
      std::copy(src, src + count, p);
    } else {
      std::vector<uint8_t> tmp(count * DTypeSize(dtype));
      ConvertFromFp32(src, dtype, tmp.data(), count);
      ConvertToFp32(dtype, tmp.data(), p, count);
    }
    p += count;
  };
  const size_t dim = c.dim, q = static_cast<size_t>(c.n_heads) * c.head_size(), kv = c.kv_dim();
  const size_t hidden = c.hidden_dim, vocab = c.vocab_size;
  put(model.token_embedding(), vocab * dim, false);
  for (int l = 0; l < c.n_layers; ++l) put(model.layer(l).rms_att, dim, true);
  for (int l = 0; l < c.n_layers; ++l) put(model.layer(l).wq, q * dim, false);
  for (int l = 0; l < c.n_layers; ++l) put(model.layer(l).wk, kv * dim, false);
  for (int l = 0; l < c.n_layers; ++l) put(model.layer(l).wv, kv * dim, false);
  for (int l = 0; l < c.n_layers; ++l) put(model.layer(l).wo, dim * q, false);
  for (int l = 0; l < c.n_layers; ++l) put(model.layer(l).rms_ffn, dim, true);
  for (int l = 0; l < c.n_layers; ++l) put(model.layer(l).w1, hidden * dim, false);
  for (int l = 0; l < c.n_layers; ++l) put(model.layer(l).w2, dim * hidden, false);
  for (int l = 0; l < c.n_layers; ++l) put(model.layer(l).w3, hidden * dim, false);
  put(model.rms_final(), dim, true);
  if (!c.shared_classifier) put(model.classifier(), vocab * dim, false);
  auto rounded = Model::FromLlama2cLayout(c, std::move(weights), "rounded");
  EXPECT_TRUE(rounded.ok()) << rounded.status();
  return rounded.ok() ? std::move(*rounded) : nullptr;
}

ModelConfig SmallConfig(int seq_len) {
  ModelConfig c;
  c.dim = 128;
  c.hidden_dim = 256;
  c.n_layers = 3;
  c.n_heads = 4;
  c.n_kv_heads = 2;  // grouped-query attention, head_size 32
  c.vocab_size = 320;
  c.seq_len = seq_len;
  return c;
}

std::vector<int> RandomTokens(int n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int> t(n);
  for (int& v : t) v = std::uniform_int_distribution<int>(3, vocab - 1)(rng);
  return t;
}

}  // namespace krul::testing
