// A Llama-architecture model: its shape (ModelConfig) and fp32 weights.
//
// Models come from llama2.c checkpoints (LoadLlama2cModel), GGUF v3 files
// (LoadGgufModel), either by sniffing the file (LoadModel), or from a seeded
// random generator of any shape (MakeSyntheticModel). Loaders never crash on
// bad bytes: a missing, truncated, wrong-magic or inconsistent file yields a
// non-OK status that names the file and the problem, and no allocation is
// made before the sizes have been checked against the file's length.
//
// A Model is immutable after loading and safe to share between threads.
#ifndef KRUL_MODEL_MODEL_H_
#define KRUL_MODEL_MODEL_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "krul/base/aligned_buffer.h"

namespace krul {

// Shape and hyper-parameters. head_size = dim / n_heads; kv_dim =
// n_kv_heads * head_size. Query head h reads KV head h / (n_heads / n_kv_heads).
struct ModelConfig {
  int dim = 0;         // residual stream width
  int hidden_dim = 0;  // SwiGLU inner width
  int n_layers = 0;
  int n_heads = 0;     // query heads
  int n_kv_heads = 0;  // key/value heads (grouped-query attention when < n_heads)
  int vocab_size = 0;
  int seq_len = 0;         // maximum context length
  float norm_eps = 1e-5f;  // RMSNorm epsilon
  float rope_theta = 10000.0f;
  int rope_dim = 0;               // rotated dims per head; 0 means head_size
  bool shared_classifier = true;  // output projection == token embedding

  int head_size() const { return n_heads > 0 ? dim / n_heads : 0; }
  int kv_dim() const { return n_kv_heads * head_size(); }
  int rotary_dim() const { return rope_dim > 0 ? rope_dim : head_size(); }

  // Number of fp32 parameters (classifier counted once when shared).
  int64_t ParameterCount() const;

  // OK when every field is positive, heads divide evenly, head_size is even
  // and nothing is absurdly large; INVALID_ARGUMENT naming the field otherwise.
  absl::Status Validate() const;

  // "dim=64 hidden=172 layers=5 heads=8 kv_heads=4 vocab=512 seq_len=512".
  std::string ToString() const;
};

// Weights of one transformer block, each a view into Model storage.
// Matrices are row-major (out_features, in_features).
struct LayerWeights {
  const float* rms_att = nullptr;  // (dim)
  const float* wq = nullptr;       // (n_heads * head_size, dim)
  const float* wk = nullptr;       // (kv_dim, dim)
  const float* wv = nullptr;       // (kv_dim, dim)
  const float* wo = nullptr;       // (dim, n_heads * head_size)
  const float* rms_ffn = nullptr;  // (dim)
  const float* w1 = nullptr;       // (hidden_dim, dim)  gate
  const float* w2 = nullptr;       // (dim, hidden_dim)  down
  const float* w3 = nullptr;       // (hidden_dim, dim)  up
};

// Views of every tensor of a model laid out as in a llama2.c checkpoint.
struct WeightViews {
  const float* token_embedding = nullptr;  // (vocab, dim)
  std::vector<LayerWeights> layers;
  const float* rms_final = nullptr;   // (dim)
  const float* classifier = nullptr;  // (vocab, dim); == token_embedding when shared
};

// Points WeightViews into `data`, which holds the tensors in llama2.c order
// (see Llama2cWeightCount). `gap_before_classifier` floats are skipped after
// rms_final: a legacy checkpoint stores its unused RoPE tables there
// (seq_len * head_size floats), an in-memory layout nothing. The caller
// guarantees `data` is large enough.
WeightViews MapLlama2cLayout(const ModelConfig& config, const float* data,
                             int64_t gap_before_classifier = 0);

// A vocabulary carried inside a model file (GGUF). Pieces use plain spaces
// (SentencePiece's U+2581 is translated on load).
struct Vocabulary {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<int32_t> token_types;  // GGUF token types; empty when unknown
  int bos_id = 1;
  int eos_id = 2;
};

class Model {
 public:
  const ModelConfig& config() const { return config_; }
  const float* token_embedding() const { return weights_.token_embedding; }  // (vocab, dim)
  const LayerWeights& layer(int l) const { return weights_.layers[l]; }
  const float* rms_final() const { return weights_.rms_final; }    // (dim)
  const float* classifier() const { return weights_.classifier; }  // (vocab, dim)
  // The vocabulary stored in the model file, if it had one.
  const std::optional<Vocabulary>& vocabulary() const { return vocabulary_; }
  // Where the weights came from: a path or "synthetic(seed=...)".
  const std::string& source() const { return source_; }

  // Builds a model from fp32 tensors laid out as in a llama2.c checkpoint
  // (token_embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3,
  // rms_final, then the classifier when not shared). `weights` must hold
  // exactly Llama2cWeightCount(config) floats; INVALID_ARGUMENT otherwise.
  static absl::StatusOr<std::unique_ptr<Model>> FromLlama2cLayout(
      const ModelConfig& config, AlignedBuffer<float> weights, std::string source,
      std::optional<Vocabulary> vocabulary = std::nullopt);

 private:
  Model() = default;
  ModelConfig config_;
  AlignedBuffer<float> storage_;
  WeightViews weights_;
  std::optional<Vocabulary> vocabulary_;
  std::string source_;
};

// Number of floats in the llama2.c weight layout of `config` (without the
// unused RoPE tables a legacy checkpoint stores after rms_final).
int64_t Llama2cWeightCount(const ModelConfig& config);

// Loads a llama2.c legacy (version 0) checkpoint: 7 int32 (dim, hidden_dim,
// n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab_size
// means the classifier is stored separately) followed by fp32 weights.
// NOT_FOUND if the file is missing; INVALID_ARGUMENT (DATA_LOSS for a
// truncated file) naming the problem otherwise.
absl::StatusOr<std::unique_ptr<Model>> LoadLlama2cModel(const std::string& path);

// Loads a GGUF v3 file of architecture "llama" with F32, F16, BF16 or Q8_0
// tensors (converted to fp32), and its embedded vocabulary if present.
absl::StatusOr<std::unique_ptr<Model>> LoadGgufModel(const std::string& path);

// Picks the loader by the file's magic ("GGUF" or a llama2.c header).
absl::StatusOr<std::unique_ptr<Model>> LoadModel(const std::string& path);

// A model of the given shape with seeded random weights (same seed, same
// weights on every machine). INVALID_ARGUMENT if the config is invalid.
absl::StatusOr<std::unique_ptr<Model>> MakeSyntheticModel(const ModelConfig& config, uint64_t seed);

// Writes `model` as a llama2.c legacy checkpoint (with zeroed RoPE tables, as
// llama2.c's export does not need them), so synthetic shapes can be loaded by
// any llama2.c-compatible program. Overwrites `path`.
absl::Status WriteLlama2cCheckpoint(const Model& model, const std::string& path);

}  // namespace krul

#endif  // KRUL_MODEL_MODEL_H_
