#include "krul/model/gguf_reader.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "krul/base/dtype.h"

namespace krul::internal {
namespace {

// GGUF is little-endian and we read it with memcpy.
static_assert(std::endian::native == std::endian::little, "GGUF reader assumes little-endian");

constexpr char kMagic[4] = {'G', 'G', 'U', 'F'};
constexpr uint64_t kQ8_0BlockValues = 32;
constexpr uint64_t kQ8_0BlockBytes = 2 + kQ8_0BlockValues;  // fp16 scale + 32 int8
constexpr uint64_t kMaxAlignment = 1 << 20;
// Raw bytes converted per read, so a large quantized tensor needs only this
// much scratch on top of its fp32 destination.
constexpr uint64_t kReadChunkBytes = 1 << 20;

// Bytes of one element of a scalar metadata type; 0 for strings, arrays and
// unknown numbers.
uint64_t ValueSize(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
      return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32:
      return 4;
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64:
      return 8;
    case GgufValueType::kString:
    case GgufValueType::kArray:
      return 0;
  }
  return 0;
}

bool IsKnownValueType(uint32_t raw) {
  return raw <= static_cast<uint32_t>(GgufValueType::kFloat64);
}

template <typename T>
absl::Status ReadPod(InputFile& file, T* value, const std::string& what) {
  return file.Read(value, sizeof(T), what.c_str());
}

// Widens `count` little-endian values of type T from `raw` and appends them.
template <typename T, typename Out>
void Widen(const uint8_t* raw, uint64_t count, std::vector<Out>* out) {
  out->reserve(count);
  for (uint64_t i = 0; i < count; ++i) {
    T v;
    std::memcpy(&v, raw + i * sizeof(T), sizeof(T));
    out->push_back(static_cast<Out>(v));
  }
}

}  // namespace

std::string GgufValueTypeName(GgufValueType type) {
  static constexpr const char* kNames[] = {"uint8",  "int8",    "uint16", "int16",  "uint32",
                                           "int32",  "float32", "bool",   "string", "array",
                                           "uint64", "int64",   "float64"};
  const auto raw = static_cast<uint32_t>(type);
  if (raw < std::size(kNames)) return kNames[raw];
  return absl::StrCat("type(", raw, ")");
}

std::string GgmlTypeName(uint32_t type) {
  // Names of the ggml types a GGUF file may hold, for error messages.
  static constexpr std::pair<uint32_t, const char*> kNames[] = {
      {0, "F32"},   {1, "F16"},   {2, "Q4_0"},  {3, "Q4_1"},  {6, "Q5_0"},
      {7, "Q5_1"},  {8, "Q8_0"},  {9, "Q8_1"},  {10, "Q2_K"}, {11, "Q3_K"},
      {12, "Q4_K"}, {13, "Q5_K"}, {14, "Q6_K"}, {15, "Q8_K"}, {24, "I8"},
      {25, "I16"},  {26, "I32"},  {27, "I64"},  {28, "F64"},  {30, "BF16"}};
  for (const auto& [number, name] : kNames) {
    if (number == type) return name;
  }
  return absl::StrCat("type(", type, ")");
}

bool GgufValue::is_integer() const {
  return element_type != GgufValueType::kFloat32 && element_type != GgufValueType::kFloat64 &&
         element_type != GgufValueType::kString && element_type != GgufValueType::kArray;
}

bool GgufValue::is_float() const {
  return element_type == GgufValueType::kFloat32 || element_type == GgufValueType::kFloat64;
}

size_t GgufValue::size() const {
  if (is_string()) return strings.size();
  if (is_float()) return floats.size();
  return ints.size();
}

absl::StatusOr<GgufFile> GgufFile::Open(const std::string& path) {
  auto input = InputFile::Open(path);
  if (!input.ok()) return input.status();
  GgufFile file(*std::move(input));
  if (auto s = file.Parse(); !s.ok()) return s;
  return file;
}

absl::Status GgufFile::ReadString(uint64_t max_length, const char* what, std::string* out) {
  uint64_t length = 0;
  if (auto s = ReadPod(file_, &length, absl::StrCat("length of ", what)); !s.ok()) return s;
  if (length > max_length) {
    return absl::InvalidArgumentError(absl::StrCat(path(), ": ", what, " has length ", length,
                                                   " at offset ", file_.position() - 8,
                                                   ", over the limit of ", max_length));
  }
  // Checked before resizing so a lying length cannot make us allocate.
  if (length > file_.remaining()) {
    return absl::DataLossError(absl::StrCat(path(), ": truncated: ", what, " needs ", length,
                                            " bytes but only ", file_.remaining(), " remain"));
  }
  out->resize(length);
  return file_.Read(out->data(), length, what);
}

absl::Status GgufFile::ReadValue(GgufValueType type, const std::string& key, GgufValue* out) {
  const std::string what = absl::StrCat("value of '", key, "'");
  out->type = type;
  GgufValueType element = type;
  uint64_t count = 1;
  if (type == GgufValueType::kArray) {
    uint32_t raw_element = 0;
    if (auto s = ReadPod(file_, &raw_element, what); !s.ok()) return s;
    if (!IsKnownValueType(raw_element)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path(), ": key '", key, "' is an array of unknown type ", raw_element));
    }
    element = static_cast<GgufValueType>(raw_element);
    if (element == GgufValueType::kArray) {
      // The format allows nested arrays but no model key uses them.
      return absl::InvalidArgumentError(
          absl::StrCat(path(), ": key '", key, "' is a nested array, which is not supported"));
    }
    if (auto s = ReadPod(file_, &count, what); !s.ok()) return s;
    if (count > kGgufMaxArrayLength) {
      return absl::InvalidArgumentError(absl::StrCat(path(), ": key '", key, "' has array length ",
                                                     count, ", over the limit of ",
                                                     kGgufMaxArrayLength));
    }
    // A string takes at least its 8-byte length, so this bounds all arrays.
    const uint64_t min_bytes =
        element == GgufValueType::kString ? sizeof(uint64_t) : ValueSize(element);
    if (count * min_bytes > file_.remaining()) {
      return absl::DataLossError(absl::StrCat(path(), ": truncated: key '", key, "' has ", count,
                                              " elements of ", GgufValueTypeName(element),
                                              " but only ", file_.remaining(), " bytes remain"));
    }
  }
  out->element_type = element;

  if (element == GgufValueType::kString) {
    out->strings.resize(count);
    for (uint64_t i = 0; i < count; ++i) {
      if (auto s = ReadString(kGgufMaxStringLength, what.c_str(), &out->strings[i]); !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }

  // Fixed-size elements: one read, then widen.
  std::vector<uint8_t> raw(count * ValueSize(element));
  if (auto s = file_.Read(raw.data(), raw.size(), what.c_str()); !s.ok()) return s;
  const uint8_t* p = raw.data();
  switch (element) {
    case GgufValueType::kUint8:
      Widen<uint8_t>(p, count, &out->ints);
      break;
    case GgufValueType::kInt8:
      Widen<int8_t>(p, count, &out->ints);
      break;
    case GgufValueType::kUint16:
      Widen<uint16_t>(p, count, &out->ints);
      break;
    case GgufValueType::kInt16:
      Widen<int16_t>(p, count, &out->ints);
      break;
    case GgufValueType::kUint32:
      Widen<uint32_t>(p, count, &out->ints);
      break;
    case GgufValueType::kInt32:
      Widen<int32_t>(p, count, &out->ints);
      break;
    case GgufValueType::kUint64:
      Widen<uint64_t>(p, count, &out->ints);
      break;
    case GgufValueType::kInt64:
      Widen<int64_t>(p, count, &out->ints);
      break;
    case GgufValueType::kBool:
      // Normalized so that GetInt on a bool yields 0 or 1.
      out->ints.reserve(count);
      for (uint64_t i = 0; i < count; ++i) out->ints.push_back(p[i] != 0);
      break;
    case GgufValueType::kFloat32:
      Widen<float>(p, count, &out->floats);
      break;
    case GgufValueType::kFloat64:
      Widen<double>(p, count, &out->floats);
      break;
    case GgufValueType::kString:
    case GgufValueType::kArray:
      break;  // handled above
  }
  return absl::OkStatus();
}

absl::Status GgufFile::ReadTensorInfo(GgufTensorInfo* info) {
  const std::string index = absl::StrCat("tensor info #", tensors_.size());
  if (auto s = ReadString(kGgufMaxKeyLength, absl::StrCat("name of ", index).c_str(), &info->name);
      !s.ok()) {
    return s;
  }
  const std::string what = absl::StrCat("tensor '", info->name, "'");
  uint32_t n_dims = 0;
  if (auto s = ReadPod(file_, &n_dims, what); !s.ok()) return s;
  if (n_dims < 1 || n_dims > info->ne.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path(), ": ", what, " has n_dims=", n_dims, ", expected 1..4"));
  }
  info->n_dims = static_cast<int>(n_dims);
  for (uint32_t d = 0; d < n_dims; ++d) {
    if (auto s = ReadPod(file_, &info->ne[d], what); !s.ok()) return s;
  }
  if (auto s = ReadPod(file_, &info->type, what); !s.ok()) return s;
  return ReadPod(file_, &info->offset, what);
}

// Checks the shape and type of `info`, sets element_count and byte_size, and
// checks that the bytes lie inside the file (data_offset_ must be known).
absl::Status GgufFile::CheckTensor(GgufTensorInfo* info) const {
  const std::string what = absl::StrCat(path(), ": tensor '", info->name, "'");
  uint64_t elements = 1;
  for (int d = 0; d < info->n_dims; ++d) {
    const uint64_t n = info->ne[d];
    // Dividing first keeps the product check itself from overflowing.
    if (n == 0) {
      return absl::InvalidArgumentError(absl::StrCat(what, " has dimension ne[", d, "]=0"));
    }
    if (n > kGgufMaxTensorElements / elements) {
      return absl::InvalidArgumentError(absl::StrCat(what, " has dimension ne[", d, "]=", n,
                                                     ": the element count exceeds the limit of ",
                                                     kGgufMaxTensorElements));
    }
    elements *= n;
  }
  info->element_count = elements;
  switch (static_cast<GgmlType>(info->type)) {
    case GgmlType::kF32:
      info->byte_size = elements * 4;
      break;
    case GgmlType::kF16:
    case GgmlType::kBF16:
      info->byte_size = elements * 2;
      break;
    case GgmlType::kQ8_0:
      if (info->ne[0] % kQ8_0BlockValues != 0) {
        return absl::InvalidArgumentError(absl::StrCat(what, " is Q8_0 but its row length ",
                                                       info->ne[0], " is not a multiple of ",
                                                       kQ8_0BlockValues));
      }
      info->byte_size = elements / kQ8_0BlockValues * kQ8_0BlockBytes;
      break;
    default:
      // Unknown to us: its size cannot be checked, and ReadTensorF32 refuses it.
      info->byte_size = 0;
      break;
  }
  if (info->offset % alignment_ != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " has offset ", info->offset, ", not a multiple of the alignment ", alignment_));
  }
  // data_offset_ <= size was checked by the caller; written to avoid overflow.
  const uint64_t data_bytes = file_.size() - data_offset_;
  if (info->offset > data_bytes || info->byte_size > data_bytes - info->offset) {
    return absl::DataLossError(
        absl::StrCat(path(), ": truncated: tensor '", info->name, "' (", GgmlTypeName(info->type),
                     ", ", elements, " elements) needs ", info->byte_size, " bytes at data offset ",
                     info->offset, " but the data section has only ", data_bytes, " bytes"));
  }
  return absl::OkStatus();
}

absl::Status GgufFile::Parse() {
  if (file_.size() == 0) return absl::InvalidArgumentError(absl::StrCat(path(), ": empty file"));
  char magic[4];
  if (auto s = file_.Read(magic, sizeof(magic), "GGUF magic"); !s.ok()) return s;
  if (std::memcmp(magic, kMagic, sizeof(magic)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path(), ": not a GGUF file (bad magic)"));
  }
  if (auto s = ReadPod(file_, &version_, "GGUF version"); !s.ok()) return s;
  // Version 1 used 32-bit counts and lengths. Version 3 added big-endian
  // files; those fail here too, as their version reads byte-swapped.
  if (version_ != 2 && version_ != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat(path(), ": unsupported GGUF version ", version_, " (expected 2 or 3)"));
  }
  uint64_t tensor_count = 0, kv_count = 0;
  if (auto s = ReadPod(file_, &tensor_count, "tensor count"); !s.ok()) return s;
  if (auto s = ReadPod(file_, &kv_count, "metadata count"); !s.ok()) return s;
  if (tensor_count > kGgufMaxTensors) {
    return absl::InvalidArgumentError(absl::StrCat(path(), ": tensor count ", tensor_count,
                                                   " is over the limit of ", kGgufMaxTensors));
  }
  if (kv_count > kGgufMaxKeyValues) {
    return absl::InvalidArgumentError(absl::StrCat(path(), ": metadata count ", kv_count,
                                                   " is over the limit of ", kGgufMaxKeyValues));
  }

  for (uint64_t i = 0; i < kv_count; ++i) {
    std::string key;
    const std::string what = absl::StrCat("metadata key #", i);
    if (auto s = ReadString(kGgufMaxKeyLength, what.c_str(), &key); !s.ok()) return s;
    uint32_t raw_type = 0;
    if (auto s = ReadPod(file_, &raw_type, absl::StrCat("type of '", key, "'")); !s.ok()) return s;
    if (!IsKnownValueType(raw_type)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path(), ": metadata '", key, "' has unknown value type ", raw_type));
    }
    if (values_.contains(key)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path(), ": duplicate metadata key '", key, "'"));
    }
    GgufValue value;
    if (auto s = ReadValue(static_cast<GgufValueType>(raw_type), key, &value); !s.ok()) return s;
    values_.emplace(std::move(key), std::move(value));
  }

  if (const GgufValue* v = FindValue("general.alignment"); v != nullptr) {
    if (v->type != GgufValueType::kUint32 || v->ints[0] == 0 ||
        static_cast<uint64_t>(v->ints[0]) > kMaxAlignment ||
        !std::has_single_bit(static_cast<uint64_t>(v->ints[0]))) {
      return absl::InvalidArgumentError(absl::StrCat(
          path(), ": general.alignment must be a uint32 power of two up to ", kMaxAlignment));
    }
    alignment_ = static_cast<uint64_t>(v->ints[0]);
  }

  for (uint64_t i = 0; i < tensor_count; ++i) {
    GgufTensorInfo info;
    if (auto s = ReadTensorInfo(&info); !s.ok()) return s;
    if (tensor_index_.contains(info.name)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path(), ": duplicate tensor name '", info.name, "'"));
    }
    tensor_index_.emplace(info.name, tensors_.size());
    tensors_.push_back(std::move(info));
  }

  // The data section starts at the next multiple of the alignment; a file
  // with no tensors may end before it.
  data_offset_ = (file_.position() + alignment_ - 1) / alignment_ * alignment_;
  if (tensors_.empty()) return absl::OkStatus();
  if (data_offset_ > file_.size()) {
    return absl::DataLossError(absl::StrCat(path(), ": truncated: the data section starts at ",
                                            data_offset_, " but the file has ", file_.size(),
                                            " bytes"));
  }
  for (GgufTensorInfo& info : tensors_) {
    if (auto s = CheckTensor(&info); !s.ok()) return s;
  }
  return absl::OkStatus();
}

const GgufValue* GgufFile::FindValue(absl::string_view key) const {
  auto it = values_.find(key);
  return it == values_.end() ? nullptr : &it->second;
}

const GgufTensorInfo* GgufFile::FindTensor(absl::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<int64_t> GgufFile::GetInt(absl::string_view key) const {
  const GgufValue* v = FindValue(key);
  if (v == nullptr) return absl::NotFoundError(absl::StrCat(path(), ": no metadata '", key, "'"));
  if (v->is_array() || !v->is_integer()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path(), ": metadata '", key, "' is ", GgufValueTypeName(v->type), ", expected an integer"));
  }
  if (v->type == GgufValueType::kUint64 && v->ints[0] < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        path(), ": metadata '", key, "' = ", static_cast<uint64_t>(v->ints[0]), " is too large"));
  }
  return v->ints[0];
}

absl::StatusOr<double> GgufFile::GetFloat(absl::string_view key) const {
  const GgufValue* v = FindValue(key);
  if (v == nullptr) return absl::NotFoundError(absl::StrCat(path(), ": no metadata '", key, "'"));
  if (!v->is_array() && v->is_float()) return v->floats[0];
  if (!v->is_array() && v->is_integer()) return static_cast<double>(v->ints[0]);
  return absl::InvalidArgumentError(absl::StrCat(
      path(), ": metadata '", key, "' is ", GgufValueTypeName(v->type), ", expected a number"));
}

absl::StatusOr<std::string> GgufFile::GetString(absl::string_view key) const {
  const GgufValue* v = FindValue(key);
  if (v == nullptr) return absl::NotFoundError(absl::StrCat(path(), ": no metadata '", key, "'"));
  if (v->type != GgufValueType::kString) {
    return absl::InvalidArgumentError(absl::StrCat(
        path(), ": metadata '", key, "' is ", GgufValueTypeName(v->type), ", expected a string"));
  }
  return v->strings[0];
}

absl::Status GgufFile::CheckReadable(const GgufTensorInfo& tensor) const {
  switch (static_cast<GgmlType>(tensor.type)) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
    case GgmlType::kQ8_0:
      return absl::OkStatus();
  }
  return absl::UnimplementedError(
      absl::StrCat(path(), ": tensor '", tensor.name, "' has ggml type ", GgmlTypeName(tensor.type),
                   " (", tensor.type, "); only F32, F16, BF16 and Q8_0 are supported"));
}

absl::Status GgufFile::ReadTensorF32(const GgufTensorInfo& tensor, float* dst) {
  if (auto s = CheckReadable(tensor); !s.ok()) return s;
  const std::string what = absl::StrCat("tensor '", tensor.name, "'");
  const auto type = static_cast<GgmlType>(tensor.type);
  if (auto s = file_.Seek(data_offset_ + tensor.offset, what.c_str()); !s.ok()) return s;
  if (type == GgmlType::kF32) return file_.Read(dst, tensor.byte_size, what.c_str());

  // Converted in chunks of whole elements (or whole Q8_0 blocks).
  const uint64_t unit_bytes = type == GgmlType::kQ8_0 ? kQ8_0BlockBytes : 2;
  const uint64_t unit_values = type == GgmlType::kQ8_0 ? kQ8_0BlockValues : 1;
  const uint64_t units_per_chunk = kReadChunkBytes / unit_bytes;
  const uint64_t total_units = tensor.byte_size / unit_bytes;
  std::vector<uint8_t> chunk(std::min(total_units, units_per_chunk) * unit_bytes);
  for (uint64_t done = 0; done < total_units;) {
    const uint64_t units = std::min(units_per_chunk, total_units - done);
    if (auto s = file_.Read(chunk.data(), units * unit_bytes, what.c_str()); !s.ok()) return s;
    float* out = dst + done * unit_values;
    switch (type) {
      case GgmlType::kF16:
        ConvertToFp32(DType::kF16, chunk.data(), out, units);
        break;
      case GgmlType::kBF16:
        ConvertToFp32(DType::kBF16, chunk.data(), out, units);
        break;
      case GgmlType::kQ8_0:
        for (uint64_t b = 0; b < units; ++b) {
          const uint8_t* block = chunk.data() + b * kQ8_0BlockBytes;
          uint16_t scale_bits;
          std::memcpy(&scale_bits, block, sizeof(scale_bits));
          const float scale = Fp16ToFp32(scale_bits);
          const auto* q = reinterpret_cast<const int8_t*>(block + 2);
          for (uint64_t j = 0; j < kQ8_0BlockValues; ++j) {
            out[b * kQ8_0BlockValues + j] = scale * static_cast<float>(q[j]);
          }
        }
        break;
      case GgmlType::kF32:
        break;  // read directly above
    }
    done += units;
  }
  return absl::OkStatus();
}

}  // namespace krul::internal
