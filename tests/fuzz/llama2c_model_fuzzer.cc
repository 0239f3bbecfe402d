// Fuzzes the llama2.c checkpoint loader (krul/model/model.h): a model file
// given to a worker or to krul-generate.
//
// Input: the file's bytes, read through an in-memory file with a path (the
// loaders take paths).
// Properties: nothing crashes or allocates more than the file justifies;
// errors have the documented codes; a model that loads has a valid config
// and every weight view lies inside its storage (each tensor's first and
// last element is read, so ASan checks the bounds); LoadModel's sniffing
// agrees with the llama2.c loader.
#include <cstdint>
#include <string>

#include "fuzz_util.h"
#include "krul/model/model.h"

namespace {

volatile float sink;

// Reads the first and last of `count` floats at `p`.
void Touch(const float* p, int64_t count) {
  FUZZ_CHECK(p != nullptr && count > 0);
  sink = p[0] + p[count - 1];
}

void CheckModel(const krul::Model& model) {
  const krul::ModelConfig& c = model.config();
  FUZZ_CHECK(c.Validate().ok());
  const int64_t dim = c.dim, hidden = c.hidden_dim, kv_dim = c.kv_dim();
  const int64_t q_dim = static_cast<int64_t>(c.n_heads) * c.head_size();
  Touch(model.token_embedding(), c.vocab_size * dim);
  Touch(model.classifier(), c.vocab_size * dim);
  Touch(model.rms_final(), dim);
  for (int l = 0; l < c.n_layers; ++l) {
    const krul::LayerWeights& w = model.layer(l);
    Touch(w.rms_att, dim);
    Touch(w.wq, q_dim * dim);
    Touch(w.wk, kv_dim * dim);
    Touch(w.wv, kv_dim * dim);
    Touch(w.wo, dim * q_dim);
    Touch(w.rms_ffn, dim);
    Touch(w.w1, hidden * dim);
    Touch(w.w2, dim * hidden);
    Touch(w.w3, hidden * dim);
  }
}

bool Documented(const absl::Status& s) { return absl::IsInvalidArgument(s) || absl::IsDataLoss(s); }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static krul::fuzz::MemFile* file = new krul::fuzz::MemFile();
  const std::string& path = file->Write(krul::fuzz::AsView(data, size));

  auto model = krul::LoadLlama2cModel(path);
  if (!model.ok()) {
    FUZZ_CHECK(Documented(model.status()));
  } else {
    CheckModel(**model);
  }
  // Not GGUF: LoadModel must pick the llama2.c loader and agree with it.
  if (size < 4 || std::string_view(reinterpret_cast<const char*>(data), 4) != "GGUF") {
    auto sniffed = krul::LoadModel(path);
    FUZZ_CHECK(sniffed.ok() == model.ok());
    if (sniffed.ok()) FUZZ_CHECK((*sniffed)->config().ToString() == (*model)->config().ToString());
  }
  return 0;
}
