// Seeded random models of any Llama shape, for benchmarks, tests and the demo
// when no real weights are at hand. The generator is a fixed splitmix64 so a
// seed names the same weights on every machine and compiler.
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "krul/model/model.h"

namespace krul {
namespace {

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [-1, 1).
  float NextSigned() { return static_cast<float>(Next() >> 40) * (2.0f / 16777216.0f) - 1.0f; }

 private:
  uint64_t state_;
};

// A byte-level vocabulary: <unk>, BOS, EOS, the 256 byte tokens, then
// two-letter lowercase pieces so that random models print readable junk.
Vocabulary SyntheticVocabulary(int vocab_size) {
  Vocabulary v;
  v.pieces.reserve(vocab_size);
  for (int id = 0; id < vocab_size; ++id) {
    std::string piece;
    if (id == 0) {
      piece = "<unk>";
    } else if (id == 1) {
      piece = "<s>";
    } else if (id == 2) {
      piece = "</s>";
    } else if (id < 259) {
      piece = absl::StrFormat("<0x%02X>", id - 3);
    } else {
      int k = id - 259;
      piece = absl::StrCat(k % 3 == 0 ? " " : "", std::string(1, static_cast<char>('a' + k % 26)),
                           std::string(1, static_cast<char>('a' + (k / 26) % 26)));
      if (k >= 26 * 26 * 3) piece = absl::StrCat("<tok", id, ">");
    }
    v.pieces.push_back(std::move(piece));
    v.scores.push_back(id < 259 ? 0.0f : -static_cast<float>(id));
  }
  return v;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> MakeSyntheticModel(const ModelConfig& config,
                                                          uint64_t seed) {
  if (auto s = config.Validate(); !s.ok()) return s;
  AlignedBuffer<float> weights(Llama2cWeightCount(config));
  SplitMix64 rng(seed);
  const size_t dim = config.dim, hidden = config.hidden_dim, layers = config.n_layers;
  const size_t kv_dim = config.kv_dim();
  float* p = weights.data();
  // Uniform weights scaled by 1/sqrt(fan_in) keep activations of order one
  // through any depth; norm weights start at one, as after initialization.
  auto fill = [&](size_t count, size_t fan_in) {
    const float scale = fan_in == 0 ? 1.0f : std::sqrt(3.0f / static_cast<float>(fan_in));
    for (size_t i = 0; i < count; ++i) *p++ = fan_in == 0 ? 1.0f : scale * rng.NextSigned();
  };
  fill(config.vocab_size * dim, 3);     // embeddings of magnitude ~1
  fill(layers * dim, 0);                // rms_att
  fill(layers * dim * dim, dim);        // wq
  fill(layers * kv_dim * dim, dim);     // wk
  fill(layers * kv_dim * dim, dim);     // wv
  fill(layers * dim * dim, dim);        // wo
  fill(layers * dim, 0);                // rms_ffn
  fill(layers * hidden * dim, dim);     // w1
  fill(layers * dim * hidden, hidden);  // w2
  fill(layers * hidden * dim, dim);     // w3
  fill(dim, 0);                         // rms_final
  if (!config.shared_classifier) fill(config.vocab_size * dim, dim);
  std::optional<Vocabulary> vocab;
  if (config.vocab_size >= 259) vocab = SyntheticVocabulary(config.vocab_size);
  return Model::FromLlama2cLayout(config, std::move(weights),
                                  absl::StrCat("synthetic(seed=", seed, ")"), std::move(vocab));
}

}  // namespace krul
