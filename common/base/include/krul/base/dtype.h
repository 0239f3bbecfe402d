// Element types of Krul tensors and conversions between them.
//
// Weights and KV on the CPU are fp32; fp16 and bf16 are storage formats (the
// KV store, the CUDA backend). Conversions round to nearest even and keep
// infinities and NaNs. All functions are thread-safe; only ParseDType's errors
// allocate.
#ifndef KRUL_BASE_DTYPE_H_
#define KRUL_BASE_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"

namespace krul {

enum class DType : uint8_t {
  kF32 = 0,
  kF16 = 1,
  kBF16 = 2,
};

// Bytes of one element of `dtype`.
size_t DTypeSize(DType dtype);

// "f32", "f16" or "bf16".
std::string_view DTypeName(DType dtype);

// The inverse of DTypeName: "f32", "f16" or "bf16" (exactly). INVALID_ARGUMENT
// "unknown dtype '<name>'; expected f32, f16 or bf16" otherwise.
absl::StatusOr<DType> ParseDType(std::string_view name);

// IEEE 754 binary16 <-> binary32.
float Fp16ToFp32(uint16_t h);
uint16_t Fp32ToFp16(float f);

// bfloat16 (the upper half of a binary32) <-> binary32.
float Bf16ToFp32(uint16_t b);
uint16_t Fp32ToBf16(float f);

// Converts `count` elements from `src` (of type `src_type`) into fp32 `dst`.
void ConvertToFp32(DType src_type, const void* src, float* dst, size_t count);

// Converts `count` fp32 elements into `dst` of type `dst_type`.
void ConvertFromFp32(const float* src, DType dst_type, void* dst, size_t count);

}  // namespace krul

#endif  // KRUL_BASE_DTYPE_H_
