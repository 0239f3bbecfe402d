#include "krul/compress/pair_costs.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "krul/base/status_macros.h"

namespace krul {
namespace {

// Log-softmax of each vocab-sized row of `logits`, in double precision.
std::vector<std::vector<double>> LogSoftmaxRows(const std::vector<float>& logits, int vocab) {
  std::vector<std::vector<double>> out;
  for (size_t r = 0; r + vocab <= logits.size(); r += vocab) {
    double mx = -INFINITY;
    for (int v = 0; v < vocab; ++v) mx = std::max(mx, static_cast<double>(logits[r + v]));
    double sum = 0;
    for (int v = 0; v < vocab; ++v) sum += std::exp(logits[r + v] - mx);
    const double lse = mx + std::log(sum);
    std::vector<double> row(vocab);
    for (int v = 0; v < vocab; ++v) row[v] = logits[r + v] - lse;
    out.push_back(std::move(row));
  }
  return out;
}

size_t ArgMaxOf(const std::vector<double>& v) {
  return static_cast<size_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

}  // namespace

absl::StatusOr<PlanProbe> PlanProbe::Create(ComputeBackend& backend, const KvCache& cache,
                                            int history, std::span<const int> continuation) {
  const ModelConfig& config = backend.config();
  const int m = static_cast<int>(continuation.size());
  if (history < 1 || m < 1) {
    return absl::InvalidArgumentError("a plan probe needs a history and a continuation");
  }
  if (cache.n_layers() != config.n_layers || cache.kv_dim() != config.kv_dim() ||
      cache.capacity() < history) {
    return absl::InvalidArgumentError("the history cache does not fit the model");
  }
  if (history + m > config.seq_len) {
    return absl::InvalidArgumentError(absl::StrCat("history ", history, " + continuation ", m,
                                                   " exceed the context of ", config.seq_len));
  }
  KRUL_ASSIGN_OR_RETURN(std::unique_ptr<BackendKvCache> ref, backend.CreateKvCache(history + m));
  for (int l = 0; l < config.n_layers; ++l) {
    KRUL_RETURN_IF_ERROR(
        ref->WriteRows(l, 0, history, DType::kF32, cache.key(l, 0), cache.value(l, 0)));
  }
  KRUL_RETURN_IF_ERROR(ref->WaitForWrites());
  std::vector<float> logits(static_cast<size_t>(m) * config.vocab_size);
  KRUL_RETURN_IF_ERROR(backend.Forward(*ref, continuation, history, logits));
  return PlanProbe(&backend, &cache, history,
                   std::vector<int>(continuation.begin(), continuation.end()),
                   LogSoftmaxRows(logits, config.vocab_size));
}

absl::StatusOr<PlanQuality> PlanProbe::Measure(const CompressionPlan& plan,
                                               const CompressorOptions& options) const {
  const ModelConfig& config = backend_->config();
  const KvShape shape = KvShape::FromConfig(config);
  KRUL_ASSIGN_OR_RETURN(CompressedKv kv, CompressKv(*cache_, shape, plan, history_, {}, options));
  const int m = static_cast<int>(continuation_.size());
  KRUL_ASSIGN_OR_RETURN(std::unique_ptr<BackendKvCache> fresh,
                        backend_->CreateKvCache(history_ + m));
  KRUL_RETURN_IF_ERROR(kv.DecompressAll(*fresh));
  KRUL_RETURN_IF_ERROR(fresh->WaitForWrites());
  std::vector<float> logits(static_cast<size_t>(m) * config.vocab_size);
  KRUL_RETURN_IF_ERROR(backend_->Forward(*fresh, continuation_, history_, logits));
  const auto got = LogSoftmaxRows(logits, config.vocab_size);
  PlanQuality q;
  for (int i = 0; i < m; ++i) {
    double kl = 0;
    for (int v = 0; v < config.vocab_size; ++v) {
      kl += std::exp(reference_[i][v]) * (reference_[i][v] - got[i][v]);
    }
    q.kl += std::max(0.0, kl);
    q.agreement += ArgMaxOf(reference_[i]) == ArgMaxOf(got[i]);
  }
  q.kl /= m;
  q.agreement /= m;
  return q;
}

absl::StatusOr<std::vector<double>> PlanProbe::MeasureEveryPair(
    const CompressorOptions& options) const {
  const int L = backend_->config().n_layers;
  std::vector<double> cost(static_cast<size_t>(L) * L, 0.0);
  for (int a = 0; a < L; ++a) {
    for (int b = a + 1; b < L; ++b) {
      CompressionPlan one = CompressionPlan::Uncompressed(L);
      one.pairs.push_back({a, b, 0});
      one.target_ratio = one.ratio();
      KRUL_ASSIGN_OR_RETURN(const PlanQuality q, Measure(one, options));
      cost[static_cast<size_t>(a) * L + b] = cost[static_cast<size_t>(b) * L + a] = q.kl;
    }
  }
  return cost;
}

}  // namespace krul
