// The similarity estimator on a CUDA engine (see krul/compress/cuda/estimator_cuda.h).
//
// Decode bookkeeping mirrors the CPU estimator: a token is "open" from its
// first reporting layer until every layer has reported (or the same layer
// reports again, or another position arrives, or Finish()); closing it runs
// the distance and edge-mass kernels over the layers that reported.
#include "krul/compress/cuda/estimator_cuda.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels.h"
#include "krul/engine/cuda/cuda_util.h"

namespace krul {
namespace {

namespace kern = cuda_kernels;
using Clock = std::chrono::steady_clock;

// Width of the "first" / "last" window over ctx keys: as the CPU estimator
// (similarity_estimator.cc EdgeWindow), ceil(fraction * ctx) with a slack so
// 0.1 * 10 counts as exactly 1.
int EdgeWindow(double fraction, int ctx) {
  return std::max(1, static_cast<int>(std::ceil(fraction * ctx - 1e-9)));
}

}  // namespace

class CudaSimilarityEstimator::Impl {
 public:
  Impl(int device, int n_layers, int n_heads, int cap, const SimilarityEstimatorOptions& options,
       std::unique_ptr<SimilarityEstimator> host)
      : device_(device),
        n_layers_(n_layers),
        n_heads_(n_heads),
        cap_(cap),
        options_(options),
        host_(std::move(host)),
        reported_(n_layers, 0),
        mass_weight_(n_layers, 0.0) {
    for (int h = 0; h < n_heads; h += options.decode_head_stride) {
      head_index_.push_back(h);
      head_weight_.push_back(static_cast<float>(std::min(options.decode_head_stride, n_heads - h)));
    }
  }

  absl::Status Init() {
    KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    int sms = 0;
    KRUL_CUDA_RETURN_IF_ERROR(
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device_));
    num_blocks_ = std::max(1, 2 * sms);
    const size_t l = n_layers_, s = head_index_.size();
    const size_t max_pairs = l * (l - 1) / 2;
    KRUL_ASSIGN_OR_RETURN(rows_, CudaDeviceBuffer::Allocate(l * s * cap_ * sizeof(float)));
    KRUL_ASSIGN_OR_RETURN(weights_, CudaDeviceBuffer::Allocate(s * sizeof(float)));
    KRUL_ASSIGN_OR_RETURN(distance_, CudaDeviceBuffer::Allocate(l * l * sizeof(double)));
    KRUL_ASSIGN_OR_RETURN(first_, CudaDeviceBuffer::Allocate(l * sizeof(double)));
    KRUL_ASSIGN_OR_RETURN(last_, CudaDeviceBuffer::Allocate(l * sizeof(double)));
    KRUL_ASSIGN_OR_RETURN(
        partial_,
        CudaDeviceBuffer::Allocate(std::max<size_t>(1, num_blocks_ * max_pairs) * sizeof(float)));
    KRUL_ASSIGN_OR_RETURN(
        pairs_, CudaDeviceBuffer::Allocate(std::max<size_t>(1, 2 * max_pairs) * sizeof(int)));
    KRUL_ASSIGN_OR_RETURN(list_, CudaDeviceBuffer::Allocate(l * sizeof(int)));
    KRUL_CUDA_RETURN_IF_ERROR(cudaMemcpy(weights_.data(), head_weight_.data(), s * sizeof(float),
                                         cudaMemcpyHostToDevice));
    return ZeroDevice();
  }

  bool OnDevice(const AttentionWeights& w, cudaStream_t stream) {
    if (w.num_queries != 1) return false;  // prefill: the host path
    if (w.layer < 0 || w.layer >= n_layers_ || w.n_heads != n_heads_ || w.query_begin < 0 ||
        w.context_len != w.query_begin + 1 || w.probs == nullptr) {
      return false;  // the CPU estimator counts it as ignored
    }
    const Clock::time_point t0 = Clock::now();
    if (w.context_len > cap_) {
      Keep(absl::InvalidArgumentError(absl::StrCat("decode context ", w.context_len,
                                                   " exceeds the estimator's max_context ", cap_)));
      return true;
    }
    const int l = w.layer;
    if (w.query_begin != cur_pos_ || reported_[l]) {
      CloseToken();
      cur_pos_ = w.query_begin;
      cur_ctx_ = w.context_len;
      ++decode_tokens_;
      rows_represented_ += n_heads_;
      rows_compared_ += static_cast<int64_t>(head_index_.size());
    }
    stream_ = stream;
    const size_t ctx = w.context_len, s = head_index_.size();
    // Sampled heads h = i * stride are rows i * stride of the block.
    Keep(CudaStatus(cudaMemcpy2DAsync(rows_.as<float>() + static_cast<size_t>(l) * s * cap_,
                                      cap_ * sizeof(float), w.probs,
                                      options_.decode_head_stride * ctx * sizeof(float),
                                      ctx * sizeof(float), s, cudaMemcpyDeviceToDevice, stream),
                    "copying decode attention rows"));
    reported_[l] = 1;
    ++reported_count_;
    mass_weight_[l] += n_heads_;
    if (reported_count_ == n_layers_) CloseToken();
    engine_seconds_ += std::chrono::duration<double>(Clock::now() - t0).count();
    return true;
  }

  void OnHost(const AttentionWeights& w) { host_->OnAttention(w); }

  absl::StatusOr<SimilarityEstimate> Finish() {
    CloseToken();
    SimilarityEstimate e = host_->Finish();
    std::vector<double> d(static_cast<size_t>(n_layers_) * n_layers_), first(n_layers_),
        last(n_layers_);
    absl::Status s = CopyOut(d, first, last);
    if (s.ok()) s = ZeroDevice();
    // Sum of the host (prefill) part and the device (decode) part.
    e.decode_distance = d;
    for (size_t i = 0; i < d.size(); ++i) e.distance[i] = e.prefill_distance[i] + d[i];
    for (int l = 0; l < n_layers_; ++l) {
      e.first_mass_sum[l] += first[l];
      e.last_mass_sum[l] += last[l];
      e.mass_weight[l] += mass_weight_[l];
    }
    e.decode_tokens = decode_tokens_;
    e.rows_represented += rows_represented_;
    e.rows_compared += rows_compared_;
    if (decode_tokens_ > 0 && head_index_.size() < static_cast<size_t>(n_heads_)) e.sampled = true;
    e.engine_thread_seconds += engine_seconds_;
    ResetCounters();
    if (!error_.ok()) {
      absl::Status kept = error_;
      error_ = absl::OkStatus();
      return kept;
    }
    if (!s.ok()) return s;
    return e;
  }

  absl::Status Reset() {
    cur_pos_ = -1;
    reported_count_ = 0;
    std::fill(reported_.begin(), reported_.end(), 0);
    host_->Reset();
    absl::Status s = ZeroDevice();
    ResetCounters();
    error_ = absl::OkStatus();
    return s;
  }

  int64_t decode_tokens() const { return decode_tokens_; }

 private:
  void Keep(absl::Status s) {
    if (error_.ok() && !s.ok()) error_ = std::move(s);
  }

  // Adds the open token's contribution (layers that reported) on the device.
  void CloseToken() {
    if (reported_count_ == 0) {
      cur_pos_ = -1;
      return;
    }
    std::vector<int> layers;
    for (int l = 0; l < n_layers_; ++l) {
      if (reported_[l]) layers.push_back(l);
    }
    const bool full = static_cast<int>(layers.size()) == n_layers_;
    if (!full || !table_full_) {
      std::vector<int> pairs;
      for (size_t i = 0; i < layers.size(); ++i) {
        for (size_t j = i + 1; j < layers.size(); ++j) {
          pairs.push_back(layers[i]);
          pairs.push_back(layers[j]);
        }
      }
      // From pageable memory: staged before the call returns.
      Keep(CudaStatus(cudaMemcpyAsync(list_.data(), layers.data(), layers.size() * sizeof(int),
                                      cudaMemcpyHostToDevice, stream_),
                      "uploading the layer list"));
      if (!pairs.empty()) {
        Keep(CudaStatus(cudaMemcpyAsync(pairs_.data(), pairs.data(), pairs.size() * sizeof(int),
                                        cudaMemcpyHostToDevice, stream_),
                        "uploading the pair table"));
      }
      table_full_ = full;
    }
    const int ctx = cur_ctx_;
    const int w = std::min(ctx, EdgeWindow(options_.edge_fraction, ctx));
    const int last_begin = std::max(w, ctx - w);
    const int n_rows = static_cast<int>(head_index_.size());
    const int n_list = static_cast<int>(layers.size());
    Keep(CudaStatus(kern::DecodeEdgeMass(rows_.as<float>(), list_.as<int>(), n_list, n_rows, cap_,
                                         ctx, w, last_begin, weights_.as<float>(),
                                         first_.as<double>(), last_.as<double>(), stream_),
                    "decode edge-mass kernel"));
    const int n_pairs = n_list * (n_list - 1) / 2;
    Keep(CudaStatus(kern::DecodePairDistances(rows_.as<float>(), n_layers_, n_rows, cap_, ctx,
                                              weights_.as<float>(), pairs_.as<int>(), n_pairs,
                                              partial_.as<float>(), num_blocks_,
                                              distance_.as<double>(), stream_),
                    "decode distance kernel"));
    std::fill(reported_.begin(), reported_.end(), 0);
    reported_count_ = 0;
    cur_pos_ = -1;
  }

  absl::Status CopyOut(std::vector<double>& d, std::vector<double>& first,
                       std::vector<double>& last) {
    KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    if (stream_ != nullptr) KRUL_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    KRUL_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(d.data(), distance_.data(), d.size() * sizeof(double), cudaMemcpyDeviceToHost));
    KRUL_CUDA_RETURN_IF_ERROR(cudaMemcpy(first.data(), first_.data(), first.size() * sizeof(double),
                                         cudaMemcpyDeviceToHost));
    KRUL_CUDA_RETURN_IF_ERROR(cudaMemcpy(last.data(), last_.data(), last.size() * sizeof(double),
                                         cudaMemcpyDeviceToHost));
    return absl::OkStatus();
  }

  absl::Status ZeroDevice() {
    KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    if (stream_ != nullptr) KRUL_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    KRUL_CUDA_RETURN_IF_ERROR(cudaMemset(distance_.data(), 0, distance_.bytes()));
    KRUL_CUDA_RETURN_IF_ERROR(cudaMemset(first_.data(), 0, first_.bytes()));
    KRUL_CUDA_RETURN_IF_ERROR(cudaMemset(last_.data(), 0, last_.bytes()));
    KRUL_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
    return absl::OkStatus();
  }

  void ResetCounters() {
    decode_tokens_ = 0;
    rows_represented_ = 0;
    rows_compared_ = 0;
    engine_seconds_ = 0;
    std::fill(mass_weight_.begin(), mass_weight_.end(), 0.0);
  }

  const int device_;
  const int n_layers_;
  const int n_heads_;  // heads the engine reports (its local heads)
  const int cap_;      // longest context
  const SimilarityEstimatorOptions options_;
  std::unique_ptr<SimilarityEstimator> host_;  // the prefill part
  std::vector<int> head_index_;                // decode heads compared
  std::vector<float> head_weight_;             // heads each one stands for
  int num_blocks_ = 1;

  CudaDeviceBuffer rows_;      // (L, sampled heads, cap) fp32
  CudaDeviceBuffer weights_;   // (sampled heads) fp32
  CudaDeviceBuffer distance_;  // (L, L) fp64: decode part of D
  CudaDeviceBuffer first_;     // (L) fp64
  CudaDeviceBuffer last_;      // (L) fp64
  CudaDeviceBuffer partial_;   // (blocks, pairs) fp32 scratch
  CudaDeviceBuffer pairs_;     // (pairs, 2) int
  CudaDeviceBuffer list_;      // (L) int: reported layers
  bool table_full_ = false;    // pairs_/list_ hold the all-layers table

  cudaStream_t stream_ = nullptr;  // the engine's, from the last decode block
  int cur_pos_ = -1;
  int cur_ctx_ = 0;
  std::vector<uint8_t> reported_;
  int reported_count_ = 0;

  int64_t decode_tokens_ = 0;
  double rows_represented_ = 0;
  int64_t rows_compared_ = 0;
  std::vector<double> mass_weight_;
  double engine_seconds_ = 0;
  absl::Status error_;
};

absl::StatusOr<std::unique_ptr<CudaSimilarityEstimator>> CudaSimilarityEstimator::Create(
    const CudaEngine& engine, int max_context, const SimilarityEstimatorOptions& options) {
  KRUL_RETURN_IF_ERROR(options.Validate());
  if (max_context < 1) return absl::InvalidArgumentError("max_context must be >= 1");
  const ModelConfig& c = engine.config();
  if (c.n_layers > kern::DecodeEstimatorMaxLayers()) {
    return absl::InvalidArgumentError(absl::StrCat("the decode estimator supports up to ",
                                                   kern::DecodeEstimatorMaxLayers(),
                                                   " layers; the model has ", c.n_layers));
  }
  // The CPU estimator sees the heads this rank's engine reports.
  ModelConfig local = c;
  local.n_heads = engine.local_heads();
  local.n_kv_heads = engine.local_kv_heads();
  local.dim = local.n_heads * c.head_size();
  auto host = SimilarityEstimator::Create(local, options);
  if (!host.ok()) return host.status();
  auto impl = std::make_unique<Impl>(engine.device(), c.n_layers, engine.local_heads(), max_context,
                                     options, std::move(*host));
  KRUL_RETURN_IF_ERROR(impl->Init());
  return std::unique_ptr<CudaSimilarityEstimator>(new CudaSimilarityEstimator(std::move(impl)));
}

CudaSimilarityEstimator::CudaSimilarityEstimator(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}
CudaSimilarityEstimator::~CudaSimilarityEstimator() = default;

bool CudaSimilarityEstimator::OnDeviceAttention(const AttentionWeights& weights,
                                                cudaStream_t stream) {
  return impl_->OnDevice(weights, stream);
}

void CudaSimilarityEstimator::OnAttention(const AttentionWeights& weights) {
  impl_->OnHost(weights);
}

absl::StatusOr<SimilarityEstimate> CudaSimilarityEstimator::Finish() { return impl_->Finish(); }
absl::Status CudaSimilarityEstimator::Reset() { return impl_->Reset(); }
int64_t CudaSimilarityEstimator::decode_tokens() const { return impl_->decode_tokens(); }

}  // namespace krul
