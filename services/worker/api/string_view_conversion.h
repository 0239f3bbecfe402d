// Conversions between absl::string_view and std::string_view.
//
// Debian's Abseil is built without std::string_view aliasing, so the two
// are distinct types: the worker converts explicitly where an Abseil call
// (absl::StrCat, absl::StrSplit, ...) meets its std::string_view API. Both
// views alias the caller's bytes; nothing is copied.
#ifndef KRUL_SERVICES_WORKER_API_STRING_VIEW_CONVERSION_H_
#define KRUL_SERVICES_WORKER_API_STRING_VIEW_CONVERSION_H_

#include <string>
#include <string_view>

#include "absl/strings/string_view.h"

namespace krul::worker {

inline absl::string_view ToAbslStringView(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}
inline std::string_view ToStdStringView(absl::string_view s) {
  return std::string_view(s.data(), s.size());
}

}  // namespace krul::worker

#endif  // KRUL_SERVICES_WORKER_API_STRING_VIEW_CONVERSION_H_
