// Minimal line logging to stderr for the KV store (Debian's Abseil predates
// absl/log). One line per statement, written with a single fwrite so lines
// from concurrent threads do not interleave:
//   KV_LOG(WARNING) << "put " << id << " expired";
#ifndef KRUL_SERVICES_KVSTORE_LOG_H_
#define KRUL_SERVICES_KVSTORE_LOG_H_

#include <cstdio>
#include <sstream>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace krul::kvstore {

class LogLine {
 public:
  explicit LogLine(const char* level) {
    os_ << absl::FormatTime("%Y-%m-%dT%H:%M:%E3S", absl::Now(), absl::UTCTimeZone()) << " " << level
        << " ";
  }
  ~LogLine() {
    os_ << "\n";
    std::string line = os_.str();
    std::fwrite(line.data(), 1, line.size(), stderr);
  }
  LogLine(const LogLine&) = delete;
  LogLine& operator=(const LogLine&) = delete;
  std::ostream& stream() { return os_; }

 private:
  std::ostringstream os_;
};

}  // namespace krul::kvstore

#define KV_LOG(level) ::krul::kvstore::LogLine(#level).stream()

#endif  // KRUL_SERVICES_KVSTORE_LOG_H_
