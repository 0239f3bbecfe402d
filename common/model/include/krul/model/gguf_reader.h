// A parser for GGUF (versions 2 and 3), the llama.cpp model file format.
// Internal to krul_engine; LoadGgufModel (model_gguf.cc) maps its contents to
// a krul::Model.
//
// File layout (all integers little-endian):
//   header   "GGUF", uint32 version, uint64 tensor_count, uint64 kv_count
//   metadata kv_count × {string key, uint32 value_type, value}
//   tensors  tensor_count × {string name, uint32 n_dims, uint64 ne[n_dims],
//                            uint32 ggml_type, uint64 offset}
//   padding  to general.alignment (default 32)
//   data     tensor bytes; each tensor at data_offset + offset
// A string is a uint64 length followed by that many bytes (no terminator). An
// array value is {uint32 element_type, uint64 count, count elements}. ne[0] is
// the innermost (fastest varying) dimension, so a row-major (out, in) matrix
// has ne = {in, out}.
//
// Every byte is untrusted: lengths and counts are capped and checked against
// the bytes left in the file before anything is allocated for them, and every
// tensor is checked to lie inside the file when the file is opened.
#ifndef KRUL_MODEL_GGUF_READER_H_
#define KRUL_MODEL_GGUF_READER_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "krul/base/file_util.h"

namespace krul::internal {

// Metadata value types, numbered as in the file.
enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// "uint32", "string", "array", ...; "type(N)" for an unknown number.
std::string GgufValueTypeName(GgufValueType type);

// Tensor element types (ggml_type numbers). Only these four can be read; the
// others are named in errors.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ8_0 = 8,  // blocks of 32: fp16 scale d, then 32 int8 q; value = d * q
  kBF16 = 30,
};

// "F32", "Q4_K", ...; "type(N)" for a number we do not know.
std::string GgmlTypeName(uint32_t type);

// One metadata value. A scalar is stored as a one-element array of its kind,
// so scalars and arrays share the accessors. Integers of every width and
// bools widen to int64 (a uint64 above INT64_MAX wraps; see
// GgufFile::GetInt), float32 and float64 to double.
struct GgufValue {
  GgufValueType type = GgufValueType::kUint8;          // kArray for arrays
  GgufValueType element_type = GgufValueType::kUint8;  // the scalar type, or the array's

  std::vector<int64_t> ints;         // integer and bool elements
  std::vector<double> floats;        // float elements
  std::vector<std::string> strings;  // string elements

  bool is_array() const { return type == GgufValueType::kArray; }
  bool is_integer() const;  // element_type is an integer type or bool
  bool is_float() const;
  bool is_string() const { return element_type == GgufValueType::kString; }
  // Number of elements (1 for a scalar).
  size_t size() const;
};

struct GgufTensorInfo {
  std::string name;
  int n_dims = 0;                          // 1..4
  std::array<uint64_t, 4> ne{1, 1, 1, 1};  // ne[0] innermost; unused dims are 1
  uint32_t type = 0;                       // ggml_type number (see GgmlType)
  uint64_t offset = 0;                     // bytes from the start of the data section
  uint64_t element_count = 0;              // product of ne
  // Bytes in the file; 0 when `type` is not one we can read (then the tensor
  // was not bounds-checked and ReadTensorF32 returns UNIMPLEMENTED).
  uint64_t byte_size = 0;
};

// Caps on values read from a file. Real models are far below them; a file
// above them is rejected with INVALID_ARGUMENT rather than allocated for.
inline constexpr uint64_t kGgufMaxTensors = 1 << 20;
inline constexpr uint64_t kGgufMaxKeyValues = 1 << 20;
inline constexpr uint64_t kGgufMaxKeyLength = 1 << 16;     // keys and tensor names
inline constexpr uint64_t kGgufMaxStringLength = 1 << 24;  // string values
inline constexpr uint64_t kGgufMaxArrayLength = 1 << 24;   // array elements
inline constexpr uint64_t kGgufMaxTensorElements = uint64_t{1} << 48;

// A parsed GGUF file: metadata and tensor directory in memory, tensor data
// read on demand. Movable, not copyable; not thread-safe (reads move the file
// position).
class GgufFile {
 public:
  // Opens and parses `path`. NOT_FOUND if it does not exist; DATA_LOSS if it
  // ends early (in the header, metadata, tensor directory or any tensor's
  // data); INVALID_ARGUMENT for a wrong magic, an unsupported version, a
  // value over the caps above, an unknown value type, a duplicate key or
  // tensor name, a bad general.alignment, a tensor with n_dims outside 1..4,
  // a zero or overflowing dimension, a misaligned offset, or a Q8_0 tensor
  // whose rows are not whole blocks. Every message starts with the path.
  static absl::StatusOr<GgufFile> Open(const std::string& path);

  const std::string& path() const { return file_.path(); }
  uint64_t size() const { return file_.size(); }  // bytes
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  // Absolute file offset of the data section.
  uint64_t data_offset() const { return data_offset_; }
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }

  // nullptr when absent.
  const GgufValue* FindValue(absl::string_view key) const;
  const GgufTensorInfo* FindTensor(absl::string_view name) const;

  // Typed scalar getters. NOT_FOUND if `key` is absent; INVALID_ARGUMENT if
  // it is an array or of another kind (GetInt: an integer type or bool, with
  // uint64 values above INT64_MAX rejected; GetFloat: a float type or an
  // integer; GetString: a string).
  absl::StatusOr<int64_t> GetInt(absl::string_view key) const;
  absl::StatusOr<double> GetFloat(absl::string_view key) const;
  absl::StatusOr<std::string> GetString(absl::string_view key) const;

  // OK if ReadTensorF32 can convert `tensor`'s type (F32, F16, BF16, Q8_0);
  // UNIMPLEMENTED naming the tensor and its type otherwise.
  absl::Status CheckReadable(const GgufTensorInfo& tensor) const;

  // Reads `tensor` and converts it to fp32 into `dst`, which must hold
  // tensor.element_count floats. UNIMPLEMENTED as CheckReadable; DATA_LOSS
  // if the read fails.
  absl::Status ReadTensorF32(const GgufTensorInfo& tensor, float* dst);

 private:
  explicit GgufFile(InputFile file) : file_(std::move(file)) {}

  absl::Status Parse();
  absl::Status ReadString(uint64_t max_length, const char* what, std::string* out);
  absl::Status ReadValue(GgufValueType type, const std::string& key, GgufValue* out);
  absl::Status ReadTensorInfo(GgufTensorInfo* info);
  absl::Status CheckTensor(GgufTensorInfo* info) const;

  InputFile file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  absl::flat_hash_map<std::string, GgufValue> values_;
  std::vector<GgufTensorInfo> tensors_;
  absl::flat_hash_map<std::string, size_t> tensor_index_;  // name -> tensors_ index
};

}  // namespace krul::internal

#endif  // KRUL_MODEL_GGUF_READER_H_
