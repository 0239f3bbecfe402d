// Byte counts as people write them, for flags and configuration: "4096",
// "64K", "512M", "1G", "2T" (binary multiples: K = 1024). A trailing "B" or
// "iB" and any letter case are accepted, so "64KiB", "64kb" and "64k" all
// mean 65536; surrounding whitespace is ignored.
//
//   ABSL_FLAG(krul::ByteSize, dram_capacity, krul::ByteSize(uint64_t{1} << 30),
//             "DRAM tier capacity (K/M/G/T suffixes)");
//   uint64_t bytes = absl::GetFlag(FLAGS_dram_capacity).bytes;
//
// Pure functions; thread-safe.
#ifndef KRUL_BASE_BYTE_SIZE_H_
#define KRUL_BASE_BYTE_SIZE_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace krul {

// The number of bytes `text` names. INVALID_ARGUMENT "'<text>' is not a byte
// size" for anything else (empty, negative, fractional, unknown suffix), or
// "'<text>' overflows 64 bits".
absl::StatusOr<uint64_t> ParseByteSize(absl::string_view text);

// The shortest exact spelling ParseByteSize reads back: "1G", "512M", "4K",
// "4097", "0".
std::string FormatByteSize(uint64_t bytes);

// A byte count as a flag type (AbslParseFlag below); `bytes` is the value.
struct ByteSize {
  constexpr ByteSize() = default;
  constexpr explicit ByteSize(uint64_t n) : bytes(n) {}
  uint64_t bytes = 0;

  friend bool operator==(ByteSize a, ByteSize b) { return a.bytes == b.bytes; }
};

// Flag syntax of ParseByteSize; the error names the problem.
bool AbslParseFlag(absl::string_view text, ByteSize* size, std::string* error);
// FormatByteSize.
std::string AbslUnparseFlag(ByteSize size);

}  // namespace krul

#endif  // KRUL_BASE_BYTE_SIZE_H_
