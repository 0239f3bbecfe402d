// Fuzzes the GGUF reader and model loader (krul/model/gguf_reader.h,
// LoadGgufModel): a model file given to a worker or to krul-generate.
//
// Input: the file's bytes, read through an in-memory file with a path.
// Properties: nothing crashes or allocates more than the file justifies;
// errors have the documented codes; every tensor GgufFile::Open accepts as
// readable can be read (it was checked to lie inside the file); the typed
// getters never fail on the value kinds they promise to take; a model that
// loads has a valid config, and its vocabulary, when present, either builds
// a tokenizer that encodes and decodes or is refused with INVALID_ARGUMENT.
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "krul/model/gguf_reader.h"
#include "krul/model/model.h"
#include "krul/model/tokenizer.h"

namespace {

using krul::internal::GgufFile;
using krul::internal::GgufTensorInfo;

// Tensors beyond this many floats are left unread to keep each input fast.
constexpr uint64_t kMaxReadFloats = uint64_t{1} << 22;

void ReadAll(GgufFile& file) {
  for (const char* key : {"general.architecture", "llama.embedding_length", "llama.rope.freq_base",
                          "tokenizer.ggml.tokens"}) {
    const krul::internal::GgufValue* v = file.FindValue(key);
    if (v == nullptr) {
      FUZZ_CHECK(absl::IsNotFound(file.GetInt(key).status()));
      continue;
    }
    FUZZ_CHECK(v->size() == v->ints.size() + v->floats.size() + v->strings.size());
    if (!v->is_array() && v->is_string()) FUZZ_CHECK(file.GetString(key).ok());
    if (!v->is_array() && v->is_float()) FUZZ_CHECK(file.GetFloat(key).ok());
  }
  std::vector<float> dst;
  for (const GgufTensorInfo& t : file.tensors()) {
    FUZZ_CHECK(file.FindTensor(t.name) != nullptr);
    if (!file.CheckReadable(t).ok()) continue;
    FUZZ_CHECK(t.byte_size > 0 && t.offset + t.byte_size <= file.size() - file.data_offset());
    if (t.element_count > kMaxReadFloats) continue;
    dst.assign(t.element_count, 0.0f);
    FUZZ_CHECK(file.ReadTensorF32(t, dst.data()).ok());
  }
}

void CheckVocabulary(const krul::Model& model) {
  if (!model.vocabulary().has_value()) return;
  auto tokenizer = krul::Tokenizer::FromVocabulary(*model.vocabulary());
  if (!tokenizer.ok()) {
    FUZZ_CHECK(absl::IsInvalidArgument(tokenizer.status()));
    return;
  }
  std::vector<int> tokens =
      tokenizer->Encode("Hello, world! \xE2\x96\x81\xF0\x9F\x98\x80", true, true);
  for (int t : tokens) FUZZ_CHECK(t >= 0 && t < tokenizer->vocab_size());
  (void)tokenizer->DecodeSequence(tokens);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static krul::fuzz::MemFile* mem = new krul::fuzz::MemFile();
  const std::string& path = mem->Write(krul::fuzz::AsView(data, size));

  auto file = GgufFile::Open(path);
  if (!file.ok()) {
    FUZZ_CHECK(absl::IsDataLoss(file.status()) || absl::IsInvalidArgument(file.status()));
  } else {
    ReadAll(*file);
  }

  auto model = krul::LoadGgufModel(path);
  if (!model.ok()) {
    const absl::Status& s = model.status();
    FUZZ_CHECK(absl::IsDataLoss(s) || absl::IsInvalidArgument(s) || absl::IsUnimplemented(s) ||
               absl::IsResourceExhausted(s));
    // The model loader parses with GgufFile: it cannot succeed where that fails.
    return 0;
  }
  FUZZ_CHECK(file.ok());
  FUZZ_CHECK((*model)->config().Validate().ok());
  CheckVocabulary(**model);
  return 0;
}
