#include "krul/base/byte_size.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace krul {
namespace {

// The binary multiples, largest first (FormatByteSize picks the largest that
// divides evenly).
struct Suffix {
  char letter;
  int shift;
};
constexpr Suffix kSuffixes[] = {{'T', 40}, {'G', 30}, {'M', 20}, {'K', 10}};

}  // namespace

absl::StatusOr<uint64_t> ParseByteSize(absl::string_view text) {
  std::string t = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(text));
  // "64K", "64KB" and "64KiB" all mean 64 * 1024; "64B" and "64" mean 64.
  if (absl::EndsWith(t, "IB") && t.size() > 2) {
    t.resize(t.size() - 2);
  } else if (absl::EndsWith(t, "B")) {
    t.pop_back();
  }
  int shift = 0;
  if (!t.empty()) {
    for (const Suffix& s : kSuffixes) {
      if (t.back() == s.letter) {
        shift = s.shift;
        t.pop_back();
        break;
      }
    }
  }
  uint64_t value = 0;
  if (t.empty() || !absl::SimpleAtoi(t, &value)) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not a byte size"));
  }
  if (shift > 0 && value > (UINT64_MAX >> shift)) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' overflows 64 bits"));
  }
  return value << shift;
}

std::string FormatByteSize(uint64_t bytes) {
  if (bytes != 0) {
    for (const Suffix& s : kSuffixes) {
      const uint64_t unit = uint64_t{1} << s.shift;
      if (bytes % unit == 0) return absl::StrCat(bytes / unit, std::string(1, s.letter));
    }
  }
  return absl::StrCat(bytes);
}

bool AbslParseFlag(absl::string_view text, ByteSize* size, std::string* error) {
  absl::StatusOr<uint64_t> bytes = ParseByteSize(text);
  if (!bytes.ok()) {
    *error = std::string(bytes.status().message());
    return false;
  }
  size->bytes = *bytes;
  return true;
}

std::string AbslUnparseFlag(ByteSize size) { return FormatByteSize(size.bytes); }

}  // namespace krul
