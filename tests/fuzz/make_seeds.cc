// Writes the binary seed inputs of the fuzz targets (tests/fuzz/corpus/):
// KV blocks, stored manifests, tiny llama2.c and GGUF models (seeded
// synthetic weights) and a tiny tokenizer, each valid plus a few broken
// variants. The text seeds (JSON, CSV) are written by hand. Rerun after a
// format changes:
//   build/fuzz/bin/krul_fuzz_make_seeds tests/fuzz/corpus
// Deterministic: the same build writes the same bytes.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "krul/kvformat/kv_block.h"
#include "krul/kvformat/manifest.h"
#include "krul/model/model.h"

namespace {

std::string g_root;

void Write(const std::string& target, const std::string& name, const std::string& bytes) {
  const std::filesystem::path dir = std::filesystem::path(g_root) / target;
  std::filesystem::create_directories(dir);
  std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) {
    std::fprintf(stderr, "cannot write %s\n", (dir / name).c_str());
    std::exit(1);
  }
}

template <typename T>
T OrDie(absl::StatusOr<T> v) {
  if (!v.ok()) {
    std::fprintf(stderr, "make_seeds: %s\n", std::string(v.status().message()).c_str());
    std::exit(1);
  }
  return *std::move(v);
}

template <typename T>
void Put(std::string* out, T value) {
  out->append(reinterpret_cast<const char*>(&value), sizeof(value));
}
void PutString(std::string* out, const std::string& s) {
  Put<uint64_t>(out, s.size());
  out->append(s);
}

// ---- kv blocks (mode byte + block) ----------------------------------------

std::string FloatBytes(size_t count, float scale) {
  std::string out;
  for (size_t i = 0; i < count; ++i) Put(&out, scale * static_cast<float>(i % 7));
  return out;
}

void KvBlocks() {
  const std::string raw = OrDie(krul::EncodeRawBlock("hello, kv"));
  Write("kv_block", "raw_valid", std::string(1, '\0') + raw);

  krul::BlockHeader kv;
  kv.dtype = krul::BlockDType::kF32;
  kv.layout = krul::BlockLayout::kKvTokenMajor;
  kv.rank = 3;
  kv.layer = 2;
  kv.token_begin = 16;
  kv.num_tokens = 3;
  kv.dims = {2, 3, 4, 0};
  const std::string kv_block = OrDie(krul::EncodeBlock(kv, FloatBytes(2 * 3 * 4, 0.5f)));
  Write("kv_block", "kv_f32_valid", std::string(1, '\0') + kv_block);
  Write("kv_block", "kv_f32_stamped", std::string(1, '\3') + kv_block);

  krul::BlockHeader pair;
  pair.dtype = krul::BlockDType::kBF16;
  pair.layout = krul::BlockLayout::kMergedPair;
  pair.rank = 2;
  pair.layer = 4;
  pair.layer_pair = 5;
  pair.num_tokens = 2;
  pair.dims = {2, 8, 0, 0};
  const std::string pair_block = OrDie(krul::EncodeBlock(pair, std::string(32, '\x3f')));
  Write("kv_block", "pair_bf16_valid", std::string(1, '\0') + pair_block);

  Write("kv_block", "truncated", std::string(1, '\0') + kv_block.substr(0, kv_block.size() - 5));
  std::string flipped = kv_block;
  flipped[70] ^= 1;
  Write("kv_block", "payload_flipped", std::string(1, '\0') + flipped);
  std::string bad_rank = raw;
  bad_rank[10] = 9;  // stamped: reaches the rank check
  Write("kv_block", "bad_rank_stamped", std::string(1, '\1') + bad_rank);
}

// ---- manifests (mode byte + frame or proto) --------------------------------

krul::v1::Manifest ValidManifest() {
  krul::v1::Manifest m;
  m.mutable_key()->set_tenant("acme");
  m.mutable_key()->set_conversation_id("conv-42");
  m.mutable_key()->set_turn(3);
  m.set_model_id("stories260K");
  m.set_n_layers(5);
  m.set_plan(std::string("\x01\x02\x03\x04", 4));
  for (uint32_t l = 0; l < 3; ++l) {
    krul::v1::LayerRange* r = m.add_stored_ranges();
    r->set_layer(l);
    r->set_token_begin(0);
    r->set_token_end(10 + l);
  }
  for (uint32_t i = 0; i < 3; ++i) {
    krul::v1::BlockRef* b = m.add_blocks();
    b->set_index(i);
    b->set_layer(i);
    b->set_layer_pair(i == 1 ? 3 : krul::kNoLayerPair);
    b->set_token_begin(0);
    b->set_num_tokens(10);
    b->set_encoded_bytes(64 + 40 * (i + 1));
    b->set_payload_xxh3(0x1234567890ABCDEFull + i);
  }
  m.set_history_tokens(10);
  m.set_created_unix_micros(1700000000000000);
  m.set_ttl_seconds(86400);
  return m;
}

void Manifests() {
  const krul::v1::Manifest m = ValidManifest();
  const std::string frame = krul::EncodeStoredManifest(m);
  Write("manifest", "frame_valid", std::string(1, '\0') + frame);
  Write("manifest", "frame_stamped", std::string(1, '\1') + frame);
  Write("manifest", "proto_valid", std::string(1, '\2') + m.SerializeAsString());

  krul::v1::Manifest bad = m;
  bad.mutable_blocks(1)->set_index(7);
  Write("manifest", "frame_bad_index", std::string(1, '\1') + krul::EncodeStoredManifest(bad));
  bad = m;
  bad.set_n_layers(0);
  Write("manifest", "proto_no_layers", std::string(1, '\2') + bad.SerializeAsString());
  bad = m;
  bad.mutable_stored_ranges(2)->set_layer(0);
  Write("manifest", "proto_repeated_layer", std::string(1, '\2') + bad.SerializeAsString());
  Write("manifest", "frame_truncated", std::string(1, '\0') + frame.substr(0, frame.size() - 3));
}

// ---- llama2.c checkpoints --------------------------------------------------

krul::ModelConfig TinyConfig(bool shared) {
  krul::ModelConfig c;
  c.dim = 8;
  c.hidden_dim = 12;
  c.n_layers = 2;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.vocab_size = 6;
  c.seq_len = 4;
  c.shared_classifier = shared;
  return c;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string Llama2cBytes(bool shared) {
  auto model = OrDie(krul::MakeSyntheticModel(TinyConfig(shared), /*seed=*/7));
  const std::string path = std::filesystem::temp_directory_path() / "krul_fuzz_seed.bin";
  if (!krul::WriteLlama2cCheckpoint(*model, path).ok()) std::exit(1);
  std::string bytes = ReadFile(path);
  std::filesystem::remove(path);
  return bytes;
}

void Llama2cModels() {
  const std::string shared = Llama2cBytes(true);
  Write("llama2c_model", "shared_valid", shared);
  Write("llama2c_model", "unshared_valid", Llama2cBytes(false));
  Write("llama2c_model", "truncated", shared.substr(0, shared.size() - 4));
  Write("llama2c_model", "header_only", shared.substr(0, 28));
  std::string bad_heads = shared;
  int32_t three = 3;
  std::memcpy(bad_heads.data() + 12, &three, 4);  // n_heads 3 does not divide dim 8
  Write("llama2c_model", "bad_heads", bad_heads);
}

// ---- GGUF ------------------------------------------------------------------

enum : uint32_t { kU32 = 4, kI32 = 5, kF32v = 6, kStr = 8, kArr = 9 };
enum : uint32_t { kTF32 = 0, kTF16 = 1, kTQ8_0 = 8, kTBF16 = 30 };

class Gguf {
 public:
  Gguf& U32(const std::string& key, uint32_t v) {
    Key(key, kU32);
    Put(&kv_, v);
    return *this;
  }
  Gguf& F32(const std::string& key, float v) {
    Key(key, kF32v);
    Put(&kv_, v);
    return *this;
  }
  Gguf& Str(const std::string& key, const std::string& v) {
    Key(key, kStr);
    PutString(&kv_, v);
    return *this;
  }
  Gguf& Strs(const std::string& key, const std::vector<std::string>& v) {
    Key(key, kArr);
    Put(&kv_, kStr);
    Put<uint64_t>(&kv_, v.size());
    for (const auto& s : v) PutString(&kv_, s);
    return *this;
  }
  template <typename T>
  Gguf& Array(const std::string& key, uint32_t type, const std::vector<T>& v) {
    Key(key, kArr);
    Put(&kv_, type);
    Put<uint64_t>(&kv_, v.size());
    for (T x : v) Put(&kv_, x);
    return *this;
  }
  Gguf& Tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type) {
    ++tensors_;
    PutString(&infos_, name);
    Put<uint32_t>(&infos_, ne.size());
    uint64_t count = 1;
    for (uint64_t n : ne) {
      Put(&infos_, n);
      count *= n;
    }
    Put(&infos_, type);
    Put<uint64_t>(&infos_, data_.size());
    for (uint64_t i = 0; i < count; ++i) {
      const float v = static_cast<float>(static_cast<int>(i % 9) - 4) / 8.0f;
      if (type == kTF32) Put(&data_, v);
      if (type == kTF16 || type == kTBF16) Put<uint16_t>(&data_, type == kTF16 ? 0x3000 : 0x3e00);
      if (type == kTQ8_0) {
        if (i % 32 == 0) Put<uint16_t>(&data_, 0x3000);  // fp16 0.125
        Put<int8_t>(&data_, static_cast<int8_t>(i % 9) - 4);
      }
    }
    data_.resize((data_.size() + 31) / 32 * 32, '\0');
    return *this;
  }
  std::string Build() const {
    std::string out("GGUF");
    Put<uint32_t>(&out, 3);
    Put<uint64_t>(&out, tensors_);
    Put<uint64_t>(&out, kvs_);
    out += kv_ + infos_;
    out.resize((out.size() + 31) / 32 * 32, '\0');
    return out + data_;
  }

 private:
  void Key(const std::string& key, uint32_t type) {
    ++kvs_;
    PutString(&kv_, key);
    Put(&kv_, type);
  }
  uint64_t kvs_ = 0, tensors_ = 0;
  std::string kv_, infos_, data_;
};

// dim = hidden = 8 (32 for Q8_0, whose rows are blocks of 32), 1 layer,
// 2 heads, 1 KV head, vocab 6, context 8.
std::string TinyGguf(uint32_t matrix_type, bool with_output, bool with_vocab) {
  const uint64_t kDim = matrix_type == kTQ8_0 ? 32 : 8, kHidden = kDim, kKv = kDim / 2, kVocab = 6;
  Gguf g;
  g.Str("general.architecture", "llama")
      .U32("llama.context_length", 8)
      .U32("llama.embedding_length", kDim)
      .U32("llama.feed_forward_length", kHidden)
      .U32("llama.block_count", 1)
      .U32("llama.attention.head_count", 2)
      .U32("llama.attention.head_count_kv", 1)
      .F32("llama.attention.layer_norm_rms_epsilon", 1e-5f)
      .F32("llama.rope.freq_base", 10000.0f)
      .U32("general.alignment", 32);
  if (with_vocab) {
    g.Strs("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>", "\xE2\x96\x81hi", "h", "<0x41>"})
        .Array("tokenizer.ggml.scores", kF32v, std::vector<float>{0, 0, 0, -1, -2, -3})
        .Array("tokenizer.ggml.token_type", kI32, std::vector<int32_t>{2, 3, 3, 1, 1, 6})
        .U32("tokenizer.ggml.bos_token_id", 1)
        .U32("tokenizer.ggml.eos_token_id", 2);
  }
  g.Tensor("token_embd.weight", {kDim, kVocab}, matrix_type)
      .Tensor("output_norm.weight", {kDim}, kTF32);
  if (with_output) g.Tensor("output.weight", {kDim, kVocab}, matrix_type);
  g.Tensor("blk.0.attn_q.weight", {kDim, kDim}, matrix_type)
      .Tensor("blk.0.attn_k.weight", {kDim, kKv}, matrix_type)
      .Tensor("blk.0.attn_v.weight", {kDim, kKv}, matrix_type)
      .Tensor("blk.0.attn_output.weight", {kDim, kDim}, matrix_type)
      .Tensor("blk.0.attn_norm.weight", {kDim}, kTF32)
      .Tensor("blk.0.ffn_gate.weight", {kDim, kHidden}, matrix_type)
      .Tensor("blk.0.ffn_down.weight", {kHidden, kDim}, matrix_type)
      .Tensor("blk.0.ffn_up.weight", {kDim, kHidden}, matrix_type)
      .Tensor("blk.0.ffn_norm.weight", {kDim}, kTF32);
  return g.Build();
}

void GgufModels() {
  const std::string f32 = TinyGguf(kTF32, false, true);
  Write("gguf_model", "f32_vocab_valid", f32);
  Write("gguf_model", "q8_0_output_valid", TinyGguf(kTQ8_0, true, true));
  Write("gguf_model", "f16_novocab_valid", TinyGguf(kTF16, false, false));
  Write("gguf_model", "bf16_valid", TinyGguf(kTBF16, true, true));
  Write("gguf_model", "truncated", f32.substr(0, f32.size() - 40));
  Write("gguf_model", "metadata_only", Gguf().Str("general.architecture", "llama").Build());
  std::string v2 = f32;
  v2[4] = 2;  // GGUF v2: same layout
  Write("gguf_model", "version2", v2);
}

// ---- tokenizer (u8 vocab_size, u8 flags, u16 text length, text, file) ------

std::string TokenizerFile() {
  const std::vector<std::pair<std::string, float>> vocab = {
      {"<unk>", 0},  {"<s>", 0},    {"</s>", 0},  {"<0x0A>", 0},  {"<0x41>", 0},
      {"<0xC3>", 0}, {"<0xA9>", 0}, {" ", -1},    {"h", -2},      {"e", -2},
      {"l", -2},     {"o", -2},     {"w", -2},    {"r", -2},      {"d", -2},
      {"he", -3},    {"ll", -3},    {"llo", -4},  {"hello", -5},  {" hello", -6},
      {" w", -3},    {"or", -3},    {" wor", -4}, {" world", -7}, {"\xC3\xA9", -2},
  };
  std::string out;
  Put<int32_t>(&out, 6);
  for (const auto& [piece, score] : vocab) {
    Put<float>(&out, score);
    Put<int32_t>(&out, static_cast<int32_t>(piece.size()));
    out += piece;
  }
  return out;
}

std::string TokenizerInput(uint8_t vocab_size, uint8_t flags, const std::string& text,
                           const std::string& file) {
  std::string out;
  out.push_back(static_cast<char>(vocab_size));
  out.push_back(static_cast<char>(flags));
  Put<uint16_t>(&out, static_cast<uint16_t>(text.size()));
  return out + text + file;
}

void Tokenizers() {
  const std::string file = TokenizerFile();
  Write("tokenizer", "hello_world", TokenizerInput(0, 3, "hello world", file));
  Write("tokenizer", "bytes_and_utf8",
        TokenizerInput(25, 1, "caf\xC3\xA9\nA\xF0\x9F\x98\x80 \xFF", file));
  Write("tokenizer", "empty_text", TokenizerInput(0, 2, "", file));
  Write("tokenizer", "vocab_too_big", TokenizerInput(200, 0, "hello", file));
  Write("tokenizer", "truncated", TokenizerInput(0, 0, "hello", file.substr(0, file.size() - 3)));
  std::string bad_len = file;
  bad_len[0] = 0;  // max_token_length 0
  Write("tokenizer", "bad_max_len", TokenizerInput(0, 0, "x", bad_len));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR (tests/fuzz/corpus)\n", argv[0]);
    return 2;
  }
  g_root = argv[1];
  KvBlocks();
  Manifests();
  Llama2cModels();
  GgufModels();
  Tokenizers();
  return 0;
}
