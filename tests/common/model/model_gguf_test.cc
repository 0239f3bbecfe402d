// LoadGgufModel and the GGUF parser: the real stories260K.gguf against the
// llama2.c checkpoint of the same weights, small files written here (one per
// tensor type and metadata type), and corrupt or hostile files.
#include <bit>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "krul/model/gguf_reader.h"  // internal; tested directly
#include "krul/model/model.h"
#include "test_support/test_data.h"

namespace krul {
namespace {

using ::testing::HasSubstr;

// ---- a minimal GGUF writer (tests only) -----------------------------------

template <typename T>
void Put(std::string* out, T value) {
  out->append(reinterpret_cast<const char*>(&value), sizeof(value));
}
void PutString(std::string* out, const std::string& s) {
  Put<uint64_t>(out, s.size());
  out->append(s);
}

// Value type numbers of the GGUF format.
enum : uint32_t { kU8, kI8, kU16, kI16, kU32, kI32, kF32v, kBool, kStr, kArr, kU64, kI64, kF64 };
// ggml tensor types.
enum : uint32_t { kTF32 = 0, kTF16 = 1, kTQ8_0 = 8, kTQ4_K = 12, kTBF16 = 30 };

// The fixed header: magic, version, tensor count, metadata count.
std::string Header(uint64_t tensors, uint64_t kvs, uint32_t version = 3) {
  std::string out("GGUF");
  Put(&out, version);
  Put(&out, tensors);
  Put(&out, kvs);
  return out;
}

class GgufWriter {
 public:
  template <typename T>
  GgufWriter& Scalar(const std::string& key, uint32_t type, T value) {
    Key(key, type);
    Put(&kv_, value);
    return *this;
  }
  GgufWriter& U32(const std::string& key, uint32_t v) { return Scalar(key, kU32, v); }
  GgufWriter& Str(const std::string& key, const std::string& v) {
    Key(key, kStr);
    PutString(&kv_, v);
    return *this;
  }
  GgufWriter& StrArray(const std::string& key, const std::vector<std::string>& v) {
    ArrayHeader(key, kStr, v.size());
    for (const auto& s : v) PutString(&kv_, s);
    return *this;
  }
  template <typename T>
  GgufWriter& Array(const std::string& key, uint32_t type, const std::vector<T>& v) {
    ArrayHeader(key, type, v.size());
    for (T x : v) Put(&kv_, x);
    return *this;
  }
  // Each tensor's data starts at a multiple of 32 (the default alignment).
  GgufWriter& Tensor(const std::string& name, const std::vector<uint64_t>& ne, uint32_t type,
                     const std::string& data) {
    ++tensor_count_;
    PutString(&infos_, name);
    Put<uint32_t>(&infos_, ne.size());
    for (uint64_t n : ne) Put(&infos_, n);
    Put(&infos_, type);
    Put<uint64_t>(&infos_, data_.size());
    data_ += data;
    data_.resize((data_.size() + 31) / 32 * 32, '\0');
    return *this;
  }
  std::string Build() const {
    std::string out = Header(tensor_count_, kv_count_) + kv_ + infos_;
    out.resize((out.size() + 31) / 32 * 32, '\0');
    return out + data_;
  }

 private:
  void Key(const std::string& key, uint32_t type) {
    ++kv_count_;
    PutString(&kv_, key);
    Put(&kv_, type);
  }
  void ArrayHeader(const std::string& key, uint32_t type, uint64_t n) {
    Key(key, kArr);
    Put(&kv_, type);
    Put(&kv_, n);
  }
  uint64_t kv_count_ = 0, tensor_count_ = 0;
  std::string kv_, infos_, data_;
};

// Encodes values exactly representable in the target type; the encoders are
// deliberately independent of krul/dtype.h, which the loader uses.
uint16_t ExactBf16(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  EXPECT_EQ(bits & 0xFFFF, 0u) << f << " is not exact in bf16";
  return static_cast<uint16_t>(bits >> 16);
}
uint16_t ExactFp16(float f) {
  if (f == 0.0f) return 0;
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  const int exponent = static_cast<int>((bits >> 23) & 0xFF) - 127 + 15;
  EXPECT_TRUE(exponent > 0 && exponent < 31 && (bits & 0x1FFF) == 0) << f << " not exact in fp16";
  return static_cast<uint16_t>(((bits >> 16) & 0x8000) | (exponent << 10) | ((bits >> 13) & 0x3FF));
}

// Multiples of 1/8 in [-1, 1]: exact in F32, F16, BF16 and Q8_0 with scale 1/8.
int TinyQuant(size_t i, int salt) { return static_cast<int>((i * 7 + salt) % 17) - 8; }
float TinyValue(size_t i, int salt) { return TinyQuant(i, salt) * 0.125f; }

std::string Encode(uint32_t type, size_t count, int salt) {
  std::string out;
  for (size_t i = 0; i < count; ++i) {
    if (type == kTF32) Put(&out, TinyValue(i, salt));
    if (type == kTF16) Put(&out, ExactFp16(TinyValue(i, salt)));
    if (type == kTBF16) Put(&out, ExactBf16(TinyValue(i, salt)));
    if (type == kTQ8_0 || type == kTQ4_K) {  // Q4_K: any bytes, it must be refused
      if (i % 32 == 0) Put(&out, ExactFp16(0.125f));
      Put(&out, static_cast<int8_t>(TinyQuant(i, salt)));
    }
  }
  return out;
}

// ---- a synthetic tiny llama -------------------------------------------------
struct TinyLlama {
  std::string arch = "llama";
  std::map<std::string, uint32_t> types;                // default F32
  std::map<std::string, std::vector<uint64_t>> shapes;  // override ne
  std::string skip;                                     // tensor left out
  bool with_output = true;
  uint32_t heads = 4, bos = 1;
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>", "\xE2\x96\x81the", "a", "b", "c", "d"};
};

// dim 32, hidden 64, 2 layers, 4 heads, 2 KV heads (head size 8), vocab 8.
constexpr int kDim = 32, kHidden = 64, kLayers = 2, kKvDim = 16, kVocab = 8;

// Tensor names and row-major (rows, cols) shapes, in the order written
// (GGUF's per-layer order, unlike llama2.c's per-kind order).
using NamedShapes = std::vector<std::pair<std::string, std::pair<uint64_t, uint64_t>>>;
NamedShapes TinyTensors(bool output) {
  NamedShapes t = {{"token_embd.weight", {kVocab, kDim}}, {"output_norm.weight", {0, kDim}}};
  if (output) t.push_back({"output.weight", {kVocab, kDim}});
  for (int l = 0; l < kLayers; ++l) {
    const std::string b = absl::StrCat("blk.", l, ".");
    t.push_back({b + "attn_q.weight", {kDim, kDim}});
    t.push_back({b + "attn_k.weight", {kKvDim, kDim}});
    t.push_back({b + "attn_v.weight", {kKvDim, kDim}});
    t.push_back({b + "attn_output.weight", {kDim, kDim}});
    t.push_back({b + "attn_norm.weight", {0, kDim}});
    t.push_back({b + "ffn_gate.weight", {kHidden, kDim}});
    t.push_back({b + "ffn_down.weight", {kDim, kHidden}});
    t.push_back({b + "ffn_up.weight", {kHidden, kDim}});
    t.push_back({b + "ffn_norm.weight", {0, kDim}});
  }
  return t;
}

std::string BuildTinyLlama(const TinyLlama& m) {
  GgufWriter w;
  w.Str("general.architecture", m.arch)
      .U32("llama.context_length", 16)
      .U32("llama.embedding_length", kDim)
      .U32("llama.feed_forward_length", kHidden)
      .U32("llama.block_count", kLayers)
      .U32("llama.attention.head_count", m.heads)
      .U32("llama.attention.head_count_kv", 2)
      .Scalar("llama.attention.layer_norm_rms_epsilon", kF32v, 1e-6f)
      .Scalar("llama.rope.freq_base", kF32v, 500000.0f)
      .U32("general.alignment", 32)
      .StrArray("tokenizer.ggml.tokens", m.tokens)
      .Array("tokenizer.ggml.scores", kF32v, std::vector<float>{0, 0, 0, -1, -2, -3, -4, -5})
      .Array("tokenizer.ggml.token_type", kI32, std::vector<int32_t>{2, 3, 3, 1, 1, 1, 1, 1})
      .U32("tokenizer.ggml.bos_token_id", m.bos)
      .U32("tokenizer.ggml.eos_token_id", 2);
  int salt = 0;
  for (const auto& [name, shape] : TinyTensors(m.with_output)) {
    ++salt;
    if (name == m.skip) continue;
    const auto [rows, cols] = shape;
    std::vector<uint64_t> ne = rows == 0 ? std::vector<uint64_t>{cols} : std::vector{cols, rows};
    if (auto it = m.shapes.find(name); it != m.shapes.end()) ne = it->second;
    const uint32_t type = m.types.count(name) ? m.types.at(name) : kTF32;
    w.Tensor(name, ne, type, Encode(type, (rows == 0 ? 1 : rows) * cols, salt));
  }
  return w.Build();
}

std::string WriteScratch(const std::string& bytes) {
  const std::string path = testing::ScratchDir() + "/model.gguf";
  testing::WriteFileOrDie(path, bytes);
  return path;
}

// The model's view of tensor `name`, for comparing against TinyValue.
const float* ModelTensor(const Model& model, const std::string& name) {
  if (name == "token_embd.weight") return model.token_embedding();
  if (name == "output.weight") return model.classifier();
  if (name == "output_norm.weight") return model.rms_final();
  const LayerWeights& w = model.layer(name[4] - '0');
  const std::map<std::string, const float*> by_suffix = {
      {"attn_q.weight", w.wq},         {"attn_k.weight", w.wk},
      {"attn_v.weight", w.wv},         {"attn_output.weight", w.wo},
      {"attn_norm.weight", w.rms_att}, {"ffn_gate.weight", w.w1},
      {"ffn_down.weight", w.w2},       {"ffn_up.weight", w.w3},
      {"ffn_norm.weight", w.rms_ffn}};
  return by_suffix.at(name.substr(6));
}

TEST(GgufModelTest, TinyLlamaRoundTripsWithMixedTypes) {
  TinyLlama m;
  m.types = {{"token_embd.weight", kTQ8_0},
             {"blk.0.attn_q.weight", kTF16},
             {"blk.1.attn_k.weight", kTBF16},
             {"blk.1.ffn_down.weight", kTQ8_0},
             {"output.weight", kTF16}};
  auto model = LoadGgufModel(WriteScratch(BuildTinyLlama(m)));
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelConfig& c = (*model)->config();
  EXPECT_EQ(
      c.ToString(),
      "dim=32 hidden=64 layers=2 heads=4 kv_heads=2 vocab=8 seq_len=16 (separate classifier)");
  EXPECT_EQ(c.norm_eps, 1e-6f);
  EXPECT_EQ(c.rope_theta, 500000.0f);
  EXPECT_EQ(c.rotary_dim(), 8);
  int salt = 0;
  for (const auto& [name, shape] : TinyTensors(true)) {
    ++salt;
    const size_t count = (shape.first == 0 ? 1 : shape.first) * shape.second;
    const float* got = ModelTensor(**model, name);
    for (size_t i = 0; i < count; ++i) {
      ASSERT_EQ(got[i], TinyValue(i, salt)) << name << "[" << i << "]";
    }
  }
  const Vocabulary& v = (*model)->vocabulary().value();
  EXPECT_EQ(v.pieces,
            (std::vector<std::string>{"<unk>", "<s>", "</s>", " the", "a", "b", "c", "d"}));
  EXPECT_EQ(v.scores, (std::vector<float>{0, 0, 0, -1, -2, -3, -4, -5}));
  EXPECT_EQ(v.token_types, (std::vector<int32_t>{2, 3, 3, 1, 1, 1, 1, 1}));
  EXPECT_EQ(v.bos_id, 1);
  EXPECT_EQ(v.eos_id, 2);

  // Without output.weight the classifier is the embedding.
  m.with_output = false;
  model = LoadGgufModel(WriteScratch(BuildTinyLlama(m)));
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_TRUE((*model)->config().shared_classifier);
  EXPECT_EQ((*model)->classifier(), (*model)->token_embedding());
}

TEST(GgufReaderTest, DequantizesF16Bf16AndQ8_0) {
  GgufWriter w;
  std::string f16, bf16, q8;
  for (uint16_t h : {0x3C00, 0xC000, 0x3800, 0x7BFF, 0x0001, 0x8000}) Put(&f16, h);
  for (uint16_t b : {0x3F80, 0xC040, 0x3E00, 0x4780}) Put(&bf16, b);
  const float kF16Want[] = {1.0f, -2.0f, 0.5f, 65504.0f, 1.0f / (1 << 24), -0.0f};
  const float kBf16Want[] = {1.0f, -3.0f, 0.125f, 65536.0f};
  // Two Q8_0 blocks: scale 0.5 then 2; q = j - 16 then 127 - j.
  std::vector<float> q8_want;
  for (int j = 0; j < 64; ++j) {
    if (j % 32 == 0) Put<uint16_t>(&q8, j == 0 ? 0x3800 : 0x4000);
    const int q = j < 32 ? j - 16 : 127 - (j - 32);
    Put<int8_t>(&q8, q);
    q8_want.push_back((j < 32 ? 0.5f : 2.0f) * q);
  }
  w.Tensor("f16", {3, 2}, kTF16, f16)
      .Tensor("bf16", {4}, kTBF16, bf16)
      .Tensor("q8", {32, 2}, kTQ8_0, q8);
  auto file = internal::GgufFile::Open(WriteScratch(w.Build()));
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<float> got(64);
  ASSERT_TRUE(file->ReadTensorF32(*file->FindTensor("f16"), got.data()).ok());
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(kF16Want[i])) << i;
  }
  ASSERT_TRUE(file->ReadTensorF32(*file->FindTensor("bf16"), got.data()).ok());
  for (int i = 0; i < 4; ++i) EXPECT_EQ(got[i], kBf16Want[i]) << i;
  ASSERT_TRUE(file->ReadTensorF32(*file->FindTensor("q8"), got.data()).ok());
  EXPECT_EQ(got, q8_want);
}

TEST(GgufReaderTest, ParsesEveryMetadataType) {
  GgufWriter w;
  // clang-format off
  w.Scalar("u8", kU8, uint8_t{200}).Scalar("i8", kI8, int8_t{-100})
      .Scalar("u16", kU16, uint16_t{60000}).Scalar("i16", kI16, int16_t{-30000})
      .Scalar("u32", kU32, uint32_t{4000000000u}).Scalar("i32", kI32, int32_t{-2000000000})
      .Scalar("u64", kU64, uint64_t{1} << 40).Scalar("i64", kI64, -(int64_t{1} << 40))
      .Scalar("huge", kU64, ~uint64_t{0}).Scalar("f32", kF32v, 1.5f).Scalar("f64", kF64, -0.25)
      .Scalar("yes", kBool, uint8_t{1}).Str("s", "hello").StrArray("sa", {"x", "", "yz"})
      .Array("u8a", kU8, std::vector<uint8_t>{1, 2, 255})
      .Array("f64a", kF64, std::vector<double>{0.5});
  // clang-format on
  auto file = internal::GgufFile::Open(WriteScratch(w.Build()));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->version(), 3u);
  // clang-format off
  const std::pair<const char*, int64_t> kInts[] = {
      {"u8", 200}, {"i8", -100}, {"u16", 60000}, {"i16", -30000}, {"u32", 4000000000},
      {"i32", -2000000000}, {"u64", int64_t{1} << 40}, {"i64", -(int64_t{1} << 40)}, {"yes", 1}};
  // clang-format on
  for (const auto& [key, want] : kInts) {
    EXPECT_EQ(file->GetInt(key).value_or(0), want) << key;
  }
  EXPECT_EQ(file->GetInt("huge").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*file->GetFloat("f32"), 1.5);
  EXPECT_EQ(*file->GetFloat("f64"), -0.25);
  EXPECT_EQ(*file->GetString("s"), "hello");
  EXPECT_EQ(file->FindValue("sa")->strings, (std::vector<std::string>{"x", "", "yz"}));
  EXPECT_EQ(file->FindValue("u8a")->ints, (std::vector<int64_t>{1, 2, 255}));
  EXPECT_EQ(file->FindValue("f64a")->floats, (std::vector<double>{0.5}));
  EXPECT_EQ(file->GetString("u8").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(file->GetInt("sa").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(file->GetInt("absent").status().code(), absl::StatusCode::kNotFound);
}

// ---- the real stories260K.gguf ----------------------------------------------

bool SameFloats(const float* a, const float* b, size_t n) {
  return std::memcmp(a, b, n * sizeof(float)) == 0;
}

TEST(GgufModelTest, Stories260KEqualsLlama2cCheckpoint) {
  KRUL_REQUIRE_DATA_FILE(gguf_path, "models/stories260K.gguf");
  KRUL_REQUIRE_DATA_FILE(bin_path, "models/stories260K.bin");
  auto gguf = LoadGgufModel(gguf_path);
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  auto bin = LoadLlama2cModel(bin_path);
  ASSERT_TRUE(bin.ok()) << bin.status();
  const ModelConfig& c = (*gguf)->config();
  // seq_len is llama.context_length; the .bin header says 512. output.weight
  // is stored (an untied copy of the embedding), so the classifier is separate.
  EXPECT_EQ(c.ToString(),
            "dim=64 hidden=172 layers=5 heads=8 kv_heads=4 vocab=512 seq_len=2048"
            " (separate classifier)");
  EXPECT_EQ(c.norm_eps, 1e-5f);
  EXPECT_EQ(c.rope_theta, 10000.0f);
  EXPECT_EQ(c.rotary_dim(), 8);
  ModelConfig b = (*bin)->config();
  b.seq_len = c.seq_len;
  b.shared_classifier = false;
  EXPECT_EQ(b.ToString(), c.ToString());
  EXPECT_EQ(b.rotary_dim(), c.rotary_dim());

  const Model& g = **gguf;
  const Model& r = **bin;
  const size_t dim = c.dim, hidden = c.hidden_dim, kv = c.kv_dim(), vocab = c.vocab_size;
  EXPECT_TRUE(SameFloats(g.token_embedding(), r.token_embedding(), vocab * dim));
  EXPECT_TRUE(SameFloats(g.classifier(), r.classifier(), vocab * dim));
  EXPECT_TRUE(SameFloats(g.rms_final(), r.rms_final(), dim));
  for (int l = 0; l < c.n_layers; ++l) {
    SCOPED_TRACE(absl::StrCat("layer ", l));
    using W = LayerWeights;
    // clang-format off
    const std::pair<const float* W::*, size_t> kFields[] = {
        {&W::rms_att, dim}, {&W::wq, dim * dim}, {&W::wk, kv * dim}, {&W::wv, kv * dim},
        {&W::wo, dim * dim}, {&W::rms_ffn, dim}, {&W::w1, hidden * dim}, {&W::w2, dim * hidden},
        {&W::w3, hidden * dim}};
    // clang-format on
    for (const auto& [field, count] : kFields) {
      EXPECT_TRUE(SameFloats(g.layer(l).*field, r.layer(l).*field, count));
    }
  }

  const Vocabulary& v = g.vocabulary().value();
  ASSERT_EQ(v.pieces.size(), 512u);
  ASSERT_EQ(v.scores.size(), 512u);
  ASSERT_EQ(v.token_types.size(), 512u);
  EXPECT_EQ(v.bos_id, 1);
  EXPECT_EQ(v.eos_id, 2);
  EXPECT_EQ(v.pieces[1], "<s>");
  EXPECT_EQ(v.pieces[265], " the");  // "\u2581the" in the file
  EXPECT_EQ(v.scores[260], -1.0f);   // as in tok512.bin: score = -merge rank
  EXPECT_EQ(v.token_types[3], 6);    // <0x00>: a byte token
}

// ---- bad input ----------------------------------------------------------------

// Loads `bytes` and expects `code` with a message naming the file and `needle`.
void ExpectLoadError(const std::string& bytes, absl::StatusCode code, const std::string& needle) {
  const std::string path = WriteScratch(bytes);
  auto model = LoadGgufModel(path);
  ASSERT_FALSE(model.ok()) << "loaded although " << needle;
  EXPECT_EQ(model.status().code(), code) << model.status();
  EXPECT_THAT(std::string(model.status().message()), HasSubstr(needle));
  EXPECT_THAT(std::string(model.status().message()), HasSubstr(path));
}

constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
constexpr auto kDataLoss = absl::StatusCode::kDataLoss;
constexpr auto kUnimplemented = absl::StatusCode::kUnimplemented;

TEST(GgufModelTest, RejectsBadHeaders) {
  ExpectLoadError("", kInvalid, "empty");
  ExpectLoadError("GGML" + BuildTinyLlama({}).substr(4), kInvalid, "magic");
  ExpectLoadError(Header(0, 0, 1), kInvalid, "version 1");
  ExpectLoadError(Header(0, 0).substr(0, 13), kDataLoss, "truncated");
  ExpectLoadError(Header(uint64_t{1} << 40, 0), kInvalid, "tensor count");
  ExpectLoadError(Header(0, uint64_t{1} << 60), kInvalid, "metadata count");
  ExpectLoadError(Header(1000, 0), kDataLoss, "truncated");
}

TEST(GgufModelTest, RejectsHostileMetadata) {
  auto kv = [](uint32_t type, auto... fields) {
    std::string out;
    PutString(&out, "key");
    Put(&out, type);
    (Put(&out, fields), ...);
    return out;
  };
  const std::string key_length_2_62("\0\0\0\0\0\0\0\x40", 8);
  ExpectLoadError(Header(0, 1) + key_length_2_62, kInvalid, "length");
  ExpectLoadError(Header(0, 1) + kv(kStr, uint64_t{1} << 40), kInvalid, "length");
  ExpectLoadError(Header(0, 1) + kv(kStr, uint64_t{1} << 20), kDataLoss, "truncated");
  ExpectLoadError(Header(0, 1) + kv(kArr, kU8, uint64_t{1} << 40), kInvalid, "array length");
  ExpectLoadError(Header(0, 1) + kv(kArr, kStr, uint64_t{1} << 20), kDataLoss, "truncated");
  ExpectLoadError(Header(0, 1) + kv(kArr, kU32, uint64_t{1} << 20), kDataLoss, "truncated");
  ExpectLoadError(Header(0, 1) + kv(kArr, kArr, kU8, uint64_t{0}), kInvalid, "nested");
  ExpectLoadError(Header(0, 1) + kv(13u, uint64_t{0}), kInvalid, "unknown value type 13");
  ExpectLoadError(Header(0, 2) + kv(kU8, uint8_t{1}) + kv(kU8, uint8_t{1}), kInvalid,
                  "duplicate metadata key 'key'");
  ExpectLoadError(GgufWriter().U32("general.alignment", 24).Build(), kInvalid, "alignment");
  ExpectLoadError(GgufWriter().Str("general.name", "x").Build(), kInvalid, "general.architecture");
}

TEST(GgufModelTest, RejectsHostileTensorInfos) {
  auto one = [](std::vector<uint64_t> ne, uint32_t type, const std::string& data) {
    return GgufWriter().Str("general.architecture", "llama").Tensor("t", ne, type, data).Build();
  };
  ExpectLoadError(one({1, 1, 1, 1, 1}, kTF32, "abcd"), kInvalid, "n_dims=5");
  ExpectLoadError(one({4, 0}, kTF32, ""), kInvalid, "ne[1]=0");
  ExpectLoadError(one({1u << 30, 1u << 30, 1u << 30}, kTF32, ""), kInvalid, "element count");
  // 2^40 floats (4 TiB) in a tiny file: refused before any allocation.
  ExpectLoadError(one({1u << 20, 1u << 20}, kTF32, ""), kDataLoss, "tensor 't'");
  ExpectLoadError(one({16}, kTQ8_0, std::string(18, '\0')), kInvalid, "multiple of 32");
  ExpectLoadError(GgufWriter().Tensor("t", {1}, 0, "abcd").Tensor("t", {1}, 0, "abcd").Build(),
                  kInvalid, "duplicate tensor name 't'");
}

TEST(GgufModelTest, RejectsModelsThatDoNotFit) {
  auto tiny = [](auto edit) {
    TinyLlama m;
    edit(m);
    return BuildTinyLlama(m);
  };
  ExpectLoadError(tiny([](TinyLlama& m) { m.arch = "gpt2"; }), kUnimplemented, "'gpt2'");
  ExpectLoadError(tiny([](TinyLlama& m) { m.types["blk.1.attn_q.weight"] = kTQ4_K; }),
                  kUnimplemented, "'blk.1.attn_q.weight' has ggml type Q4_K");
  ExpectLoadError(tiny([](TinyLlama& m) { m.skip = "blk.1.ffn_up.weight"; }), kInvalid,
                  "missing tensor 'blk.1.ffn_up.weight'");
  ExpectLoadError(tiny([](TinyLlama& m) { m.skip = "token_embd.weight"; }), kInvalid,
                  "token_embd.weight");
  ExpectLoadError(tiny([](TinyLlama& m) {
                    m.shapes["blk.0.attn_k.weight"] = {kDim, kDim};
                  }),
                  kInvalid, "'blk.0.attn_k.weight' has ne [32, 32], expected [32, 16]");
  ExpectLoadError(tiny([](TinyLlama& m) { m.tokens.pop_back(); }), kInvalid,
                  "tokenizer.ggml.tokens has 7 entries");
  ExpectLoadError(tiny([](TinyLlama& m) { m.bos = 8; }), kInvalid,
                  "tokenizer.ggml.bos_token_id = 8 is not a token id");
  ExpectLoadError(tiny([](TinyLlama& m) { m.heads = 3; }), kInvalid, "n_heads");
}

TEST(GgufModelTest, RejectsTruncatedStories260K) {
  KRUL_REQUIRE_DATA_FILE(path, "models/stories260K.gguf");
  const std::string bytes = testing::ReadFileOrDie(path);
  // Inside the magic, header, metadata, tensor infos, alignment padding, at
  // the data section's start, inside the data, and one byte short.
  for (size_t cut : {3, 20, 100, 5000, 14000, 14160, 14176, 600000, 1185375}) {
    SCOPED_TRACE(absl::StrCat("cut at ", cut));
    ExpectLoadError(bytes.substr(0, cut), kDataLoss, "truncated");
  }
}

TEST(GgufModelTest, MissingFileIsNotFound) {
  const std::string path = testing::ScratchDir() + "/absent.gguf";
  auto model = LoadGgufModel(path);
  EXPECT_EQ(model.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(model.status().message()), HasSubstr(path));
}

}  // namespace
}  // namespace krul
