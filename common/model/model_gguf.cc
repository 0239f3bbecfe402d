// GGUF files of architecture "llama" (as written by llama.cpp's converters)
// mapped onto the llama2.c weight layout.
//
// GGUF stores a row-major (out, in) matrix with ne = {in, out}, which is the
// same bytes as our (out, in), so tensors are copied without transposing. Nor
// are Q and K permuted: llama.cpp's converters already reorder Hugging Face
// Q/K rows into the interleaved-pair RoPE layout that llama2.c also uses
// (stories260K.gguf and stories260K.bin hold bit-identical wq and wk).
//
// Error codes: NOT_FOUND (no file), DATA_LOSS (truncated), UNIMPLEMENTED (an
// architecture other than llama, a tensor type other than F32/F16/BF16/Q8_0),
// RESOURCE_EXHAUSTED (the weights cannot be allocated), INVALID_ARGUMENT for
// everything else (bad metadata, missing tensor, shape mismatch, bad config).
#include <cstdint>
#include <limits>
#include <new>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "krul/model/gguf_reader.h"
#include "krul/model/model.h"

namespace krul {
namespace {

using internal::GgufFile;
using internal::GgufTensorInfo;
using internal::GgufValue;

// An int config field from metadata `key`; `fallback` when the key is absent
// (INVALID_ARGUMENT when there is none). Validate() checks the range later;
// here we only make sure the value fits an int.
absl::StatusOr<int> GetIntField(const GgufFile& file, const std::string& key,
                                std::optional<int> fallback) {
  auto value = file.GetInt(key);
  if (absl::IsNotFound(value.status())) {
    if (fallback) return *fallback;
    return absl::InvalidArgumentError(
        absl::StrCat(file.path(), ": required metadata '", key, "' is missing"));
  }
  if (!value.ok()) return value.status();
  if (*value < 0 || *value > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.path(), ": metadata '", key, "' = ", *value, " is out of range"));
  }
  return static_cast<int>(*value);
}

absl::StatusOr<float> GetFloatField(const GgufFile& file, const std::string& key, float fallback) {
  auto value = file.GetFloat(key);
  if (absl::IsNotFound(value.status())) return fallback;
  if (!value.ok()) return value.status();
  return static_cast<float>(*value);
}

absl::StatusOr<ModelConfig> ReadConfig(const GgufFile& file) {
  auto arch = file.GetString("general.architecture");
  if (!arch.ok()) return absl::InvalidArgumentError(arch.status().message());
  if (*arch != "llama") {
    return absl::UnimplementedError(absl::StrCat(file.path(), ": general.architecture is '", *arch,
                                                 "'; only 'llama' is supported"));
  }
  ModelConfig c;
  auto set_int = [&file](int* field, const char* key, std::optional<int> fallback) {
    auto v = GetIntField(file, absl::StrCat("llama.", key), fallback);
    if (v.ok()) *field = *v;
    return v.status();
  };
  auto set_float = [&file](float* field, const char* key, float fallback) {
    auto v = GetFloatField(file, absl::StrCat("llama.", key), fallback);
    if (v.ok()) *field = *v;
    return v.status();
  };
  if (auto s = set_int(&c.dim, "embedding_length", std::nullopt); !s.ok()) return s;
  if (auto s = set_int(&c.hidden_dim, "feed_forward_length", std::nullopt); !s.ok()) return s;
  if (auto s = set_int(&c.n_layers, "block_count", std::nullopt); !s.ok()) return s;
  if (auto s = set_int(&c.n_heads, "attention.head_count", std::nullopt); !s.ok()) return s;
  if (auto s = set_int(&c.n_kv_heads, "attention.head_count_kv", c.n_heads); !s.ok()) return s;
  if (auto s = set_int(&c.seq_len, "context_length", std::nullopt); !s.ok()) return s;
  if (auto s = set_int(&c.rope_dim, "rope.dimension_count", 0); !s.ok()) return s;
  if (auto s = set_float(&c.norm_eps, "attention.layer_norm_rms_epsilon", c.norm_eps); !s.ok()) {
    return s;
  }
  if (auto s = set_float(&c.rope_theta, "rope.freq_base", 10000.0f); !s.ok()) return s;

  // The vocabulary size is the embedding's row count; its shape is checked
  // against dim with the other tensors.
  const GgufTensorInfo* embedding = file.FindTensor("token_embd.weight");
  if (embedding == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.path(), ": missing tensor 'token_embd.weight'"));
  }
  if (embedding->n_dims != 2 || embedding->ne[1] > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(
        file.path(),
        ": tensor 'token_embd.weight' must be 2-D (dim, vocab) with vocab fitting int"));
  }
  c.vocab_size = static_cast<int>(embedding->ne[1]);
  c.shared_classifier = file.FindTensor("output.weight") == nullptr;
  if (auto s = c.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": ", s.message()));
  }
  return c;
}

// A tensor to copy into the weight buffer, and where it goes.
struct Placement {
  const GgufTensorInfo* tensor;
  int64_t offset;  // in floats, into the weight buffer
};

// Looks up every tensor the model needs, checks its shape and type, and
// assigns its place in the llama2.c layout. Nothing is read or allocated.
absl::StatusOr<std::vector<Placement>> PlanLayout(const GgufFile& file, const ModelConfig& c) {
  const int64_t dim = c.dim, hidden = c.hidden_dim;
  const int64_t q_dim = static_cast<int64_t>(c.n_heads) * c.head_size(), kv_dim = c.kv_dim();
  std::vector<Placement> plan;
  int64_t offset = 0;
  // Adds tensor `name` of row-major shape (rows, cols), or (cols) when rows
  // is 0, i.e. GGUF ne = {cols, rows}.
  auto add = [&](const std::string& name, int64_t rows, int64_t cols) -> absl::Status {
    const GgufTensorInfo* t = file.FindTensor(name);
    if (t == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(file.path(), ": missing tensor '", name, "' (config ", c.ToString(), ")"));
    }
    const int want_dims = rows == 0 ? 1 : 2;
    const bool same = t->n_dims == want_dims && t->ne[0] == static_cast<uint64_t>(cols) &&
                      (rows == 0 || t->ne[1] == static_cast<uint64_t>(rows));
    if (!same) {
      std::string got = absl::StrCat(t->ne[0]);
      for (int d = 1; d < t->n_dims; ++d) absl::StrAppend(&got, ", ", t->ne[d]);
      return absl::InvalidArgumentError(
          absl::StrCat(file.path(), ": tensor '", name, "' has ne [", got, "], expected [", cols,
                       rows == 0 ? "" : absl::StrCat(", ", rows), "] for config ", c.ToString()));
    }
    if (auto s = file.CheckReadable(*t); !s.ok()) return s;
    plan.push_back({t, offset});
    offset += static_cast<int64_t>(t->element_count);
    return absl::OkStatus();
  };
  // Adds blk.N.<suffix> for every layer, contiguously as llama2.c stores them.
  auto add_layers = [&](const char* suffix, int64_t rows, int64_t cols) -> absl::Status {
    for (int l = 0; l < c.n_layers; ++l) {
      if (auto s = add(absl::StrCat("blk.", l, ".", suffix), rows, cols); !s.ok()) return s;
    }
    return absl::OkStatus();
  };
  if (auto s = add("token_embd.weight", c.vocab_size, dim); !s.ok()) return s;
  if (auto s = add_layers("attn_norm.weight", 0, dim); !s.ok()) return s;
  if (auto s = add_layers("attn_q.weight", q_dim, dim); !s.ok()) return s;
  if (auto s = add_layers("attn_k.weight", kv_dim, dim); !s.ok()) return s;
  if (auto s = add_layers("attn_v.weight", kv_dim, dim); !s.ok()) return s;
  if (auto s = add_layers("attn_output.weight", dim, q_dim); !s.ok()) return s;
  if (auto s = add_layers("ffn_norm.weight", 0, dim); !s.ok()) return s;
  if (auto s = add_layers("ffn_gate.weight", hidden, dim); !s.ok()) return s;  // w1
  if (auto s = add_layers("ffn_down.weight", dim, hidden); !s.ok()) return s;  // w2
  if (auto s = add_layers("ffn_up.weight", hidden, dim); !s.ok()) return s;    // w3
  if (auto s = add("output_norm.weight", 0, dim); !s.ok()) return s;
  if (!c.shared_classifier) {
    if (auto s = add("output.weight", c.vocab_size, dim); !s.ok()) return s;
  }
  if (offset != Llama2cWeightCount(c)) {
    return absl::InternalError(absl::StrCat(file.path(), ": GGUF layout has ", offset,
                                            " floats but Llama2cWeightCount says ",
                                            Llama2cWeightCount(c)));
  }
  // Each tensor lies inside the file (GgufFile::Open checked), but tensors
  // could overlap; requiring the sum to fit too bounds the allocation by the
  // file's length.
  uint64_t total_bytes = 0;
  for (const Placement& p : plan) total_bytes += p.tensor->byte_size;
  if (total_bytes > file.size() - file.data_offset()) {
    return absl::InvalidArgumentError(absl::StrCat(
        file.path(), ": the model's tensors need ", total_bytes, " bytes but the data section has ",
        file.size() - file.data_offset(), "; tensors overlap"));
  }
  return plan;
}

// The vocabulary in tokenizer.ggml.*, nullopt if the file has none.
absl::StatusOr<std::optional<Vocabulary>> ReadVocabulary(const GgufFile& file, int vocab_size) {
  const GgufValue* tokens = file.FindValue("tokenizer.ggml.tokens");
  if (tokens == nullptr) return std::nullopt;
  auto bad = [&file](const char* key, const std::string& problem) {
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": ", key, " ", problem));
  };
  if (!tokens->is_array() || !tokens->is_string()) {
    return bad("tokenizer.ggml.tokens", "is not an array of strings");
  }
  if (tokens->size() != static_cast<size_t>(vocab_size)) {
    return bad("tokenizer.ggml.tokens",
               absl::StrCat("has ", tokens->size(), " entries but token_embd.weight has ",
                            vocab_size, " rows"));
  }
  Vocabulary vocab;
  vocab.pieces.reserve(vocab_size);
  // SentencePiece marks a word boundary with U+2581; our tokenizer uses spaces.
  for (const std::string& piece : tokens->strings) {
    vocab.pieces.push_back(absl::StrReplaceAll(piece, {{"\xE2\x96\x81", " "}}));
  }
  if (const GgufValue* scores = file.FindValue("tokenizer.ggml.scores"); scores != nullptr) {
    if (!scores->is_array() || !scores->is_float() || scores->size() != tokens->size()) {
      return bad("tokenizer.ggml.scores",
                 absl::StrCat("must be an array of ", tokens->size(), " floats"));
    }
    vocab.scores.assign(scores->floats.begin(), scores->floats.end());
  } else {
    vocab.scores.assign(tokens->size(), 0.0f);
  }
  if (const GgufValue* types = file.FindValue("tokenizer.ggml.token_type"); types != nullptr) {
    if (!types->is_array() || !types->is_integer() || types->size() != tokens->size()) {
      return bad("tokenizer.ggml.token_type",
                 absl::StrCat("must be an array of ", tokens->size(), " integers"));
    }
    for (int64_t t : types->ints) {
      if (t < std::numeric_limits<int32_t>::min() || t > std::numeric_limits<int32_t>::max()) {
        return bad("tokenizer.ggml.token_type", absl::StrCat("holds ", t, ", not an int32"));
      }
      vocab.token_types.push_back(static_cast<int32_t>(t));
    }
  }
  auto id = [&](const char* key, int fallback, int* out) -> absl::Status {
    auto v = GetIntField(file, key, fallback);
    if (!v.ok()) return v.status();
    if (*v >= vocab_size) return bad(key, absl::StrCat("= ", *v, " is not a token id"));
    *out = *v;
    return absl::OkStatus();
  };
  if (auto s = id("tokenizer.ggml.bos_token_id", 1, &vocab.bos_id); !s.ok()) return s;
  if (auto s = id("tokenizer.ggml.eos_token_id", 2, &vocab.eos_id); !s.ok()) return s;
  return vocab;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> LoadGgufModel(const std::string& path) {
  auto file = internal::GgufFile::Open(path);
  if (!file.ok()) return file.status();
  auto config = ReadConfig(*file);
  if (!config.ok()) return config.status();
  auto plan = PlanLayout(*file, *config);
  if (!plan.ok()) return plan.status();
  auto vocabulary = ReadVocabulary(*file, config->vocab_size);
  if (!vocabulary.ok()) return vocabulary.status();

  AlignedBuffer<float> weights;
  try {
    weights.Resize(static_cast<size_t>(Llama2cWeightCount(*config)));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(
        path, ": cannot allocate ", Llama2cWeightCount(*config), " floats for the weights"));
  }
  for (const Placement& p : *plan) {
    if (auto s = file->ReadTensorF32(*p.tensor, weights.data() + p.offset); !s.ok()) return s;
  }
  return Model::FromLlama2cLayout(*config, std::move(weights), path, *std::move(vocabulary));
}

}  // namespace krul
