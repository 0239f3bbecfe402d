// Small helpers shared by the worker's files.
//
// Debian's Abseil is built without std::string_view aliasing, so
// absl::string_view and std::string_view are distinct types: convert
// explicitly at the seams.
#ifndef KRUL_SERVICES_WORKER_API_STRING_VIEW_CONVERSION_H_
#define KRUL_SERVICES_WORKER_API_STRING_VIEW_CONVERSION_H_

#include <string>
#include <string_view>

#include "absl/strings/string_view.h"

namespace krul::worker {

inline absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }
inline std::string_view SV(absl::string_view s) { return std::string_view(s.data(), s.size()); }

}  // namespace krul::worker

#endif  // KRUL_SERVICES_WORKER_API_STRING_VIEW_CONVERSION_H_
