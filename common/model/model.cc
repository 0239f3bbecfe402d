#include "krul/model/model.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "krul/base/file_util.h"

namespace krul {
namespace {

// Limits that no Llama we serve comes near; they keep a corrupt header from
// turning into a multi-terabyte allocation.
constexpr int kMaxDim = 1 << 16;
constexpr int kMaxHiddenDim = 1 << 18;
constexpr int kMaxLayers = 1024;
constexpr int kMaxHeads = 1024;
constexpr int kMaxVocab = 1 << 22;
constexpr int kMaxSeqLen = 1 << 22;
constexpr int64_t kMaxParameters = int64_t{1} << 37;  // 512 GiB of fp32

}  // namespace

int64_t ModelConfig::ParameterCount() const { return Llama2cWeightCount(*this); }

absl::Status ModelConfig::Validate() const {
  auto check = [](const char* field, int64_t value, int64_t max) -> absl::Status {
    if (value <= 0 || value > max) {
      return absl::InvalidArgumentError(
          absl::StrCat("model config: ", field, "=", value, " is out of range [1, ", max, "]"));
    }
    return absl::OkStatus();
  };
  if (auto s = check("dim", dim, kMaxDim); !s.ok()) return s;
  if (auto s = check("hidden_dim", hidden_dim, kMaxHiddenDim); !s.ok()) return s;
  if (auto s = check("n_layers", n_layers, kMaxLayers); !s.ok()) return s;
  if (auto s = check("n_heads", n_heads, kMaxHeads); !s.ok()) return s;
  if (auto s = check("n_kv_heads", n_kv_heads, kMaxHeads); !s.ok()) return s;
  if (auto s = check("vocab_size", vocab_size, kMaxVocab); !s.ok()) return s;
  if (auto s = check("seq_len", seq_len, kMaxSeqLen); !s.ok()) return s;
  if (dim % n_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config: dim=", dim, " is not a multiple of n_heads=", n_heads));
  }
  if (n_kv_heads > n_heads || n_heads % n_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model config: n_heads=", n_heads, " is not a multiple of n_kv_heads=", n_kv_heads));
  }
  if (head_size() % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config: head_size=", head_size(), " must be even for RoPE"));
  }
  if (rope_dim < 0 || rope_dim > head_size() || rope_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config: rope_dim=", rope_dim,
                     " must be even and in [0, head_size=", head_size(), "]"));
  }
  if (!(norm_eps > 0.0f && norm_eps < 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config: norm_eps=", norm_eps, " is out of range (0, 1)"));
  }
  if (!(rope_theta > 1.0f && rope_theta < 1e12f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config: rope_theta=", rope_theta, " is out of range (1, 1e12)"));
  }
  if (ParameterCount() > kMaxParameters) {
    return absl::InvalidArgumentError(absl::StrCat("model config: ", ParameterCount(),
                                                   " parameters is more than the limit of ",
                                                   kMaxParameters));
  }
  return absl::OkStatus();
}

std::string ModelConfig::ToString() const {
  return absl::StrFormat("dim=%d hidden=%d layers=%d heads=%d kv_heads=%d vocab=%d seq_len=%d%s",
                         dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len,
                         shared_classifier ? "" : " (separate classifier)");
}

int64_t Llama2cWeightCount(const ModelConfig& c) {
  const int64_t dim = c.dim, hidden = c.hidden_dim, layers = c.n_layers, vocab = c.vocab_size;
  const int64_t q_dim = static_cast<int64_t>(c.n_heads) * c.head_size();
  const int64_t kv_dim = static_cast<int64_t>(c.n_kv_heads) * c.head_size();
  int64_t n = vocab * dim;                     // token_embedding
  n += layers * dim;                           // rms_att
  n += layers * q_dim * dim;                   // wq
  n += 2 * layers * kv_dim * dim;              // wk, wv
  n += layers * dim * q_dim;                   // wo
  n += layers * dim;                           // rms_ffn
  n += 3 * layers * hidden * dim;              // w1, w2, w3
  n += dim;                                    // rms_final
  if (!c.shared_classifier) n += vocab * dim;  // classifier
  return n;
}

WeightViews MapLlama2cLayout(const ModelConfig& config, const float* data,
                             int64_t gap_before_classifier) {
  const size_t dim = config.dim, hidden = config.hidden_dim, layers = config.n_layers;
  const size_t q_dim = static_cast<size_t>(config.n_heads) * config.head_size();
  const size_t kv_dim = config.kv_dim();
  const float* p = data;
  auto take = [&p](size_t count) {
    const float* at = p;
    p += count;
    return at;
  };
  WeightViews v;
  v.token_embedding = take(config.vocab_size * dim);
  const float* rms_att = take(layers * dim);
  const float* wq = take(layers * q_dim * dim);
  const float* wk = take(layers * kv_dim * dim);
  const float* wv = take(layers * kv_dim * dim);
  const float* wo = take(layers * dim * q_dim);
  const float* rms_ffn = take(layers * dim);
  const float* w1 = take(layers * hidden * dim);
  const float* w2 = take(layers * dim * hidden);
  const float* w3 = take(layers * hidden * dim);
  v.rms_final = take(dim);
  take(static_cast<size_t>(gap_before_classifier));
  v.classifier = config.shared_classifier ? v.token_embedding : p;
  v.layers.resize(layers);
  for (size_t l = 0; l < layers; ++l) {
    LayerWeights& w = v.layers[l];
    w.rms_att = rms_att + l * dim;
    w.wq = wq + l * q_dim * dim;
    w.wk = wk + l * kv_dim * dim;
    w.wv = wv + l * kv_dim * dim;
    w.wo = wo + l * dim * q_dim;
    w.rms_ffn = rms_ffn + l * dim;
    w.w1 = w1 + l * hidden * dim;
    w.w2 = w2 + l * dim * hidden;
    w.w3 = w3 + l * hidden * dim;
  }
  return v;
}

absl::StatusOr<std::unique_ptr<Model>> Model::FromLlama2cLayout(
    const ModelConfig& config, AlignedBuffer<float> weights, std::string source,
    std::optional<Vocabulary> vocabulary) {
  if (auto s = config.Validate(); !s.ok()) return s;
  const int64_t expected = Llama2cWeightCount(config);
  if (static_cast<int64_t>(weights.size()) != expected) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": weight buffer holds ", weights.size(),
                                                   " floats, the config needs ", expected));
  }
  std::unique_ptr<Model> model(new Model());
  model->config_ = config;
  model->storage_ = std::move(weights);
  model->source_ = std::move(source);
  model->vocabulary_ = std::move(vocabulary);

  model->weights_ = MapLlama2cLayout(config, model->storage_.data());
  return model;
}

absl::StatusOr<std::unique_ptr<Model>> LoadModel(const std::string& path) {
  auto file = internal::InputFile::Open(path);
  if (!file.ok()) return file.status();
  char magic[4] = {};
  if (file->size() >= 4) {
    if (auto s = file->Read(magic, 4, "magic"); !s.ok()) return s;
    if (std::memcmp(magic, "GGUF", 4) == 0) return LoadGgufModel(path);
  }
  return LoadLlama2cModel(path);
}

}  // namespace krul
