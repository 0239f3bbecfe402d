// llama2.c legacy (version 0) checkpoints: a header of 7 int32 followed by
// fp32 tensors in a fixed order (see Llama2cWeightCount). The format has no
// magic number, so the only defence against a wrong file is checking that the
// header is plausible and that the file is exactly as long as it implies.
#include <cstdint>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "krul/base/file_util.h"
#include "krul/model/model.h"

namespace krul {
namespace {

constexpr uint64_t kHeaderBytes = 7 * sizeof(int32_t);

// Floats of the two RoPE tables (freq_cis_real, freq_cis_imag) that legacy
// checkpoints store after rms_final; the engine computes RoPE itself.
int64_t RopeTableFloats(const ModelConfig& c) {
  return static_cast<int64_t>(c.seq_len) * c.head_size();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> LoadLlama2cModel(const std::string& path) {
  auto file = internal::InputFile::Open(path);
  if (!file.ok()) return file.status();
  if (file->size() == 0) return absl::InvalidArgumentError(absl::StrCat(path, ": empty file"));
  if (file->size() >= 4) {
    char magic[4];
    if (auto s = file->Read(magic, 4, "header"); !s.ok()) return s;
    if (std::string_view(magic, 4) == "GGUF") {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": is a GGUF file, not a llama2.c checkpoint"));
    }
    if (auto s = file->Seek(0, "header"); !s.ok()) return s;
  }
  int32_t header[7];
  if (auto s = file->Read(header, kHeaderBytes, "llama2.c header (7 int32)"); !s.ok()) return s;

  ModelConfig config;
  config.dim = header[0];
  config.hidden_dim = header[1];
  config.n_layers = header[2];
  config.n_heads = header[3];
  config.n_kv_heads = header[4];
  // "negative vocab size is hacky way of signaling unshared weights" (llama2.c).
  config.shared_classifier = header[5] > 0;
  config.vocab_size = header[5] == INT32_MIN ? 0 : (header[5] > 0 ? header[5] : -header[5]);
  config.seq_len = header[6];
  if (auto s = config.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a valid llama2.c checkpoint header: ", s.message()));
  }

  // Weights up to rms_final, the RoPE tables, then the classifier if unshared.
  ModelConfig shared = config;
  shared.shared_classifier = true;
  const int64_t body = Llama2cWeightCount(shared);
  const int64_t rope = RopeTableFloats(config);
  const int64_t classifier =
      config.shared_classifier ? 0 : static_cast<int64_t>(config.vocab_size) * config.dim;
  const uint64_t expected_bytes = kHeaderBytes + sizeof(float) * (body + rope + classifier);
  if (file->size() < expected_bytes) {
    return absl::DataLossError(absl::StrCat(path, ": truncated: the header (", config.ToString(),
                                            ") implies ", expected_bytes,
                                            " bytes but the file has ", file->size()));
  }
  if (file->size() > expected_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": has ", file->size() - expected_bytes, " bytes more than the header (",
                     config.ToString(), ") implies; not a llama2.c legacy checkpoint?"));
  }

  AlignedBuffer<float> weights(body + classifier);
  if (auto s = file->Read(weights.data(), sizeof(float) * body, "weights"); !s.ok()) return s;
  if (classifier > 0) {
    if (auto s = file->Seek(file->position() + sizeof(float) * rope, "classifier"); !s.ok()) {
      return s;
    }
    if (auto s = file->Read(weights.data() + body, sizeof(float) * classifier, "classifier");
        !s.ok()) {
      return s;
    }
  }
  return Model::FromLlama2cLayout(config, std::move(weights), path);
}

absl::Status WriteLlama2cCheckpoint(const Model& model, const std::string& path) {
  const ModelConfig& c = model.config();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::FailedPreconditionError(absl::StrCat(path, ": cannot create"));
  int32_t header[7] = {c.dim,     c.hidden_dim, c.n_layers,
                       c.n_heads, c.n_kv_heads, c.shared_classifier ? c.vocab_size : -c.vocab_size,
                       c.seq_len};
  out.write(reinterpret_cast<const char*>(header), sizeof(header));
  auto write = [&out](const float* p, size_t count) {
    out.write(reinterpret_cast<const char*>(p),
              static_cast<std::streamsize>(count * sizeof(float)));
  };
  const size_t dim = c.dim, hidden = c.hidden_dim, q_dim = dim, kv_dim = c.kv_dim();
  write(model.token_embedding(), static_cast<size_t>(c.vocab_size) * dim);
  // Per-layer tensors are written tensor-major, as llama2.c expects.
  auto for_layers = [&](auto member, size_t count) {
    for (int l = 0; l < c.n_layers; ++l) write(model.layer(l).*member, count);
  };
  for_layers(&LayerWeights::rms_att, dim);
  for_layers(&LayerWeights::wq, q_dim * dim);
  for_layers(&LayerWeights::wk, kv_dim * dim);
  for_layers(&LayerWeights::wv, kv_dim * dim);
  for_layers(&LayerWeights::wo, dim * q_dim);
  for_layers(&LayerWeights::rms_ffn, dim);
  for_layers(&LayerWeights::w1, hidden * dim);
  for_layers(&LayerWeights::w2, dim * hidden);
  for_layers(&LayerWeights::w3, hidden * dim);
  write(model.rms_final(), dim);
  // RoPE tables: unused by llama2.c's run.c and by Krul; zeros keep the layout.
  std::vector<float> zeros(static_cast<size_t>(c.seq_len) * c.head_size(), 0.0f);
  write(zeros.data(), zeros.size());
  if (!c.shared_classifier) write(model.classifier(), static_cast<size_t>(c.vocab_size) * dim);
  out.flush();
  if (!out) return absl::DataLossError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

}  // namespace krul
